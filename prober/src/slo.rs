//! Availability arithmetic: probe outcomes in one-minute buckets, availability over any window,
//! the error budget left and the burn rate, against an objective. Pure: the caller says what time
//! it is, so tests work sequences out by hand.
//!
//! Definitions (the Google SRE workbook's): availability over a window is good probes / all probes
//! in it; the error budget of the SLO period is `(1 - objective) * probes` failures; the budget
//! remaining is `1 - failures / budget` (negative once overspent); the burn rate over a window is
//! `(1 - availability) / (1 - objective)`: 1 spends the budget exactly over the period, 14.4 spends
//! 2% of a 30-day budget in an hour.

use std::collections::VecDeque;
use std::time::Duration;

/// Seconds per bucket.
pub const BUCKET_SECONDS: u64 = 60;

/// The windows the prober reports, with their labels.
pub const WINDOWS: [(&str, Duration); 7] = [
    ("5m", Duration::from_secs(5 * 60)),
    ("30m", Duration::from_secs(30 * 60)),
    ("1h", Duration::from_secs(60 * 60)),
    ("6h", Duration::from_secs(6 * 60 * 60)),
    ("1d", Duration::from_secs(24 * 60 * 60)),
    ("3d", Duration::from_secs(3 * 24 * 60 * 60)),
    ("30d", Duration::from_secs(30 * 24 * 60 * 60)),
];

/// Probes of one minute.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Bucket {
    minute: u64,
    total: u64,
    good: u64,
}

/// The record of one target's probes over the SLO period, bounded: one bucket per minute.
#[derive(Clone, Debug)]
pub struct Slo {
    objective: f64,
    period: Duration,
    buckets: VecDeque<Bucket>,
}

/// What [`Slo::report`] computes for one window.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct WindowReport {
    /// `5m`, `30m`, ...
    pub window: &'static str,
    /// Probes in the window.
    pub probes: u64,
    /// Good probes / probes; `None` without probes.
    pub availability: Option<f64>,
    /// `(1 - availability) / (1 - objective)`; `None` without probes.
    pub burn_rate: Option<f64>,
}

impl Slo {
    /// An objective (0.999) over a period (30 days). Panics unless `0 < objective < 1`.
    pub fn new(objective: f64, period: Duration) -> Slo {
        assert!(
            objective > 0.0 && objective < 1.0,
            "objective must be between 0 and 1, got {objective}"
        );
        Slo {
            objective,
            period,
            buckets: VecDeque::new(),
        }
    }

    /// The objective.
    pub fn objective(&self) -> f64 {
        self.objective
    }

    /// Records one probe at `now` (seconds since an epoch of the caller's choosing; never going
    /// backwards).
    pub fn record(&mut self, now: u64, good: bool) {
        let minute = now / BUCKET_SECONDS;
        match self.buckets.back_mut() {
            Some(last) if last.minute == minute => {
                last.total += 1;
                last.good += u64::from(good);
            }
            _ => self.buckets.push_back(Bucket {
                minute,
                total: 1,
                good: u64::from(good),
            }),
        }
        let keep = self.period.as_secs().div_ceil(BUCKET_SECONDS);
        while let Some(first) = self.buckets.front()
            && first.minute + keep <= minute
        {
            self.buckets.pop_front();
        }
    }

    /// Probes and good probes in the `window` ending at `now` (whole minutes: the current minute
    /// and the ones before it, `window / 60` in all).
    pub fn counts(&self, now: u64, window: Duration) -> (u64, u64) {
        let minute = now / BUCKET_SECONDS;
        let span = window.as_secs().div_ceil(BUCKET_SECONDS).max(1);
        let first = (minute + 1).saturating_sub(span);
        self.buckets
            .iter()
            .filter(|b| b.minute >= first && b.minute <= minute)
            .fold((0, 0), |(t, g), b| (t + b.total, g + b.good))
    }

    /// Good probes / probes in the window; `None` without probes.
    pub fn availability(&self, now: u64, window: Duration) -> Option<f64> {
        let (total, good) = self.counts(now, window);
        (total > 0).then(|| good as f64 / total as f64)
    }

    /// `(1 - availability) / (1 - objective)` over the window; `None` without probes.
    pub fn burn_rate(&self, now: u64, window: Duration) -> Option<f64> {
        self.availability(now, window)
            .map(|a| (1.0 - a) / (1.0 - self.objective))
    }

    /// The share of the period's error budget left: `1 - failures / ((1 - objective) * probes)`
    /// over the period; 1 without probes, negative once overspent.
    pub fn budget_remaining(&self, now: u64) -> f64 {
        let (total, good) = self.counts(now, self.period);
        if total == 0 {
            return 1.0;
        }
        let allowed = (1.0 - self.objective) * total as f64;
        1.0 - (total - good) as f64 / allowed
    }

    /// Every window of [`WINDOWS`] that fits in the period.
    pub fn report(&self, now: u64) -> Vec<WindowReport> {
        WINDOWS
            .iter()
            .filter(|(_, window)| *window <= self.period)
            .map(|(label, window)| {
                let (probes, _) = self.counts(now, *window);
                WindowReport {
                    window: label,
                    probes,
                    availability: self.availability(now, *window),
                    burn_rate: self.burn_rate(now, *window),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60;
    const DAY: Duration = Duration::from_secs(24 * 60 * 60);

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    /// 1,000 probes, one per second over 16 min 40 s, the 10 at seconds 100-109 failing:
    /// availability 99.0% overall; the budget at 99.9% allows 1 failure, so 10 overspend it
    /// tenfold (remaining 1 - 10/1 = -9); the burn rate over the whole run is 1% / 0.1% = 10.
    #[test]
    fn availability_budget_and_burn_rate_of_a_worked_example() {
        let mut slo = Slo::new(0.999, 30 * DAY);
        for second in 0..1_000 {
            slo.record(second, !(100..110).contains(&second));
        }
        let now = 999;
        assert_eq!(slo.counts(now, Duration::from_secs(3600)), (1_000, 990));
        assert!(close(
            slo.availability(now, Duration::from_secs(3600)).unwrap(),
            0.99
        ));
        assert!(close(
            slo.burn_rate(now, Duration::from_secs(3600)).unwrap(),
            10.0
        ));
        assert!(close(slo.budget_remaining(now), -9.0));
        // The 5-minute window is minutes 12-16 (seconds 720-999): 280 probes, all good.
        assert_eq!(slo.counts(now, Duration::from_secs(300)), (280, 280));
        assert!(close(
            slo.burn_rate(now, Duration::from_secs(300)).unwrap(),
            0.0
        ));
    }

    /// 2,000 good probes and 1 bad one at 99.9%: 2.001 failures allowed, 1 spent, so 1 - 1/2.001
    /// of the budget is left.
    #[test]
    fn one_failure_spends_its_share_of_the_budget() {
        let mut slo = Slo::new(0.999, 30 * DAY);
        for second in 0..2_001 {
            slo.record(second, second != 5);
        }
        assert!(close(slo.budget_remaining(2_000), 1.0 - 1.0 / 2.001));
        assert_eq!(Slo::new(0.999, DAY).budget_remaining(0), 1.0);
        assert_eq!(Slo::new(0.999, DAY).availability(0, DAY), None);
    }

    /// Buckets older than the period are dropped; windows count whole minutes.
    #[test]
    fn old_probes_leave_the_period_and_the_windows() {
        let mut slo = Slo::new(0.99, Duration::from_secs(10 * MIN));
        slo.record(0, false);
        slo.record(5 * MIN, true);
        assert_eq!(slo.counts(5 * MIN, Duration::from_secs(10 * MIN)), (2, 1));
        assert_eq!(slo.counts(5 * MIN, Duration::from_secs(5 * MIN)), (1, 1));
        slo.record(10 * MIN, true);
        assert_eq!(
            slo.counts(10 * MIN, Duration::from_secs(10 * MIN)),
            (2, 2),
            "the failure of minute 0 left the 10-minute period"
        );
        assert_eq!(slo.buckets.len(), 2);
        let report = slo.report(10 * MIN);
        assert_eq!(report.len(), 1, "only the windows that fit in the period");
        assert_eq!(report[0].window, "5m");
        assert_eq!(report[0].probes, 1, "minutes 6-10: the probe of minute 10");
    }
}
