//! When faults happen: every `every`, less up to `jitter` of it, drawn from a seeded generator,
//! so a run is replayed by giving its seed again (the same seed against the same cluster states
//! picks the same faults, targets and times), or at the times of a cron expression (UTC); never
//! in an excluded window of the day (UTC).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::fault::Fault;

/// A window of the day, UTC, in which nothing is injected (`09:00-17:00`; `22:00-06:00` wraps
/// past midnight).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Minutes after midnight it starts.
    pub start: u32,
    /// Minutes after midnight it ends (exclusive).
    pub end: u32,
}

fn minutes(text: &str) -> Option<u32> {
    let (h, m) = text.split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60 && text.len() == 5).then_some(h * 60 + m)
}

impl FromStr for Window {
    type Err = String;

    fn from_str(text: &str) -> Result<Window, String> {
        let bad = || format!("a window is HH:MM-HH:MM (UTC), not {text:?}");
        let (start, end) = text.split_once('-').ok_or_else(bad)?;
        let (start, end) = (
            minutes(start).ok_or_else(bad)?,
            minutes(end).ok_or_else(bad)?,
        );
        if start == end {
            return Err(format!("the window {text:?} is empty"));
        }
        Ok(Window { start, end })
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (s, e) = (self.start, self.end);
        write!(f, "{:02}:{:02}-{:02}:{:02}", s / 60, s % 60, e / 60, e % 60)
    }
}

impl Window {
    /// True if `minute` (after midnight, UTC) is inside.
    pub fn contains(&self, minute: u32) -> bool {
        if self.start < self.end {
            (self.start..self.end).contains(&minute)
        } else {
            minute >= self.start || minute < self.end
        }
    }
}

/// Minutes after midnight, UTC, now.
pub fn minute_of_day_utc() -> u32 {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    ((seconds % 86_400) / 60) as u32
}

/// A cron expression, seconds first (`0 */5 * * * *`: every five minutes), read by the `cron`
/// crate; its times are UTC.
#[derive(Clone, Debug)]
pub struct CronExpr {
    source: String,
    schedule: cron::Schedule,
}

impl FromStr for CronExpr {
    type Err = String;

    fn from_str(text: &str) -> Result<CronExpr, String> {
        let schedule = cron::Schedule::from_str(text).map_err(|err| {
            format!(
                "{text:?} is not a cron expression (sec min hour day month weekday [year]): {err}"
            )
        })?;
        if schedule.upcoming(chrono::Utc).next().is_none() {
            return Err(format!("the cron expression {text:?} never fires again"));
        }
        Ok(CronExpr {
            source: text.to_owned(),
            schedule,
        })
    }
}

impl PartialEq for CronExpr {
    fn eq(&self, other: &CronExpr) -> bool {
        self.source == other.source
    }
}

impl fmt::Display for CronExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl CronExpr {
    /// How long from `now` to its next time (`None`: it never fires again).
    pub fn until_next(&self, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
        let next = self.schedule.after(&now).next()?;
        Some((next - now).to_std().unwrap_or_default())
    }
}

/// One step of a plan: wait, then inject this fault with this draw for the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// How long after the previous step.
    pub delay: Duration,
    /// The fault.
    pub fault: Fault,
    /// The seed of the target's choice.
    pub target_seed: u64,
}

/// The seeded sequence of steps.
#[derive(Clone, Debug)]
pub struct Plan {
    every: Duration,
    jitter: f64,
    faults: Vec<Fault>,
    cycle: bool,
    steps: usize,
    cron: Option<CronExpr>,
    rng: ChaCha8Rng,
}

impl Plan {
    /// A fault every `every` less up to `jitter` (0 to 1) of it, each a uniform choice among
    /// `faults` (or, with `cycle`, each in turn: a turn passes only when its fault was
    /// injected, see [`Plan::injected`]), drawn from `seed`.
    pub fn new(every: Duration, jitter: f64, faults: Vec<Fault>, cycle: bool, seed: u64) -> Plan {
        assert!(!faults.is_empty(), "a plan needs a fault");
        Plan {
            every,
            jitter: jitter.clamp(0.0, 1.0),
            faults,
            cycle,
            steps: 0,
            cron: None,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// The last step's fault was injected: with `cycle`, the next step takes the next fault (a
    /// step that was skipped, say while another fault was in flight, is tried again).
    pub fn injected(&mut self) {
        self.steps += 1;
    }

    /// Steps at the times of `cron` instead of every `every` (the jitter is not used).
    pub fn with_cron(mut self, cron: Option<CronExpr>) -> Plan {
        self.cron = cron;
        self
    }

    /// The next step.
    pub fn next_step(&mut self) -> Step {
        let cut = self.every.mul_f64(self.jitter * self.rng.random::<f64>());
        let drawn = self.rng.random_range(0..self.faults.len());
        let fault = self.faults[if self.cycle {
            self.steps % self.faults.len()
        } else {
            drawn
        }];
        let delay = match &self.cron {
            // An expression that stops firing (a year in the past) waits a day at a time.
            Some(cron) => {
                (cron.until_next(chrono::Utc::now())).unwrap_or(Duration::from_secs(86_400))
            }
            None => self.every.saturating_sub(cut),
        };
        Step {
            delay,
            fault,
            target_seed: self.rng.random(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_replays_the_same_plan_and_another_seed_does_not() {
        let plan = |seed| {
            let mut plan = Plan::new(
                Duration::from_secs(60),
                0.5,
                vec![Fault::Kill, Fault::Pause, Fault::Shutdown],
                false,
                seed,
            );
            (0..50).map(|_| plan.next_step()).collect::<Vec<_>>()
        };
        assert_eq!(plan(42), plan(42));
        assert_ne!(plan(42), plan(43));
        for step in plan(42) {
            assert!(
                step.delay >= Duration::from_secs(30) && step.delay <= Duration::from_secs(60),
                "{step:?}"
            );
        }
        let faults: std::collections::BTreeSet<_> =
            plan(42).iter().map(|s| s.fault.as_str()).collect();
        assert_eq!(faults.len(), 3, "every fault is drawn");
    }

    #[test]
    fn no_jitter_is_a_fixed_interval() {
        let mut plan = Plan::new(Duration::from_secs(10), 0.0, vec![Fault::Kill], false, 1);
        for _ in 0..10 {
            assert_eq!(plan.next_step().delay, Duration::from_secs(10));
        }
    }

    #[test]
    fn a_cycle_takes_the_faults_in_turn() {
        let faults = vec![Fault::Kill, Fault::Pause, Fault::Partition];
        let mut plan = Plan::new(Duration::from_secs(1), 0.5, faults.clone(), true, 9);
        let drawn: Vec<Fault> = (0..7)
            .map(|_| {
                let fault = plan.next_step().fault;
                plan.injected();
                fault
            })
            .collect();
        assert_eq!(drawn, [0, 1, 2, 0, 1, 2, 0].map(|i| faults[i]));
        // A step that was skipped (nothing injected) keeps its fault for the next one: no fault
        // is passed over because it always comes after a slow one.
        let skipped = plan.next_step().fault;
        assert_eq!(plan.next_step().fault, skipped);
        plan.injected();
        assert_ne!(plan.next_step().fault, skipped);
    }

    #[test]
    fn a_cron_expression_sets_the_times_and_a_bad_one_is_refused() {
        let every_second: CronExpr = "* * * * * *".parse().unwrap();
        let now = chrono::Utc::now();
        assert!(every_second.until_next(now).unwrap() <= Duration::from_secs(1));
        let hourly: CronExpr = "0 0 * * * *".parse().unwrap();
        assert_eq!(hourly.to_string(), "0 0 * * * *");
        let at = chrono::DateTime::parse_from_rfc3339("2026-11-30T14:59:30Z").unwrap();
        assert_eq!(
            hourly.until_next(at.with_timezone(&chrono::Utc)),
            Some(Duration::from_secs(30))
        );
        let mut plan = Plan::new(Duration::from_secs(3600), 0.5, vec![Fault::Kill], false, 1)
            .with_cron(Some(every_second));
        assert!(
            plan.next_step().delay <= Duration::from_secs(1),
            "the cron's times, not --every"
        );
        let err = "every tuesday".parse::<CronExpr>().unwrap_err();
        assert!(err.contains("not a cron expression"), "{err}");
        let err = "0 0 0 1 1 * 2001".parse::<CronExpr>().unwrap_err();
        assert!(err.contains("never fires again"), "{err}");
    }

    #[test]
    fn windows_parse_and_contain_their_minutes_even_past_midnight() {
        let day: Window = "09:00-17:30".parse().unwrap();
        assert_eq!(day.to_string(), "09:00-17:30");
        assert!(day.contains(9 * 60) && day.contains(17 * 60 + 29));
        assert!(!day.contains(17 * 60 + 30) && !day.contains(8 * 60 + 59));
        let night: Window = "22:00-06:00".parse().unwrap();
        assert!(night.contains(23 * 60) && night.contains(0) && night.contains(5 * 60 + 59));
        assert!(!night.contains(6 * 60) && !night.contains(12 * 60));
        for bad in ["9-17", "09:00", "25:00-01:00", "09:00-09:00", "09:60-10:00"] {
            assert!(bad.parse::<Window>().is_err(), "{bad}");
        }
    }
}
