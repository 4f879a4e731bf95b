//! `--probe-log FILE`: every probe as one CSV line, `unix_s,target,outcome,latency_ms`, and every
//! recovery the prober ended as a line whose target is `recovery` and whose outcome is what it did
//! (`retargeted`, `no_healthy_node`, ...; its latency is the recovery's length, first failed
//! probe to first passing one). The raw record behind the SLO numbers: the experiments
//! (`testbed experiment`) read it back into their `probes.csv`.
//!
//! Appends (a restarted prober continues the file) and writes the header only into an empty
//! file. A write error is logged once and ends the log, never the probing.

use std::io::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;

use crate::probe::Outcome;

/// The first line of a probe log.
pub const HEADER: &str = "unix_s,target,outcome,latency_ms";

/// A shared handle on the log (cheap to clone); a disabled one writes nothing.
#[derive(Clone, Debug, Default)]
pub struct ProbeLog(Option<Arc<Mutex<Option<std::io::BufWriter<std::fs::File>>>>>);

impl ProbeLog {
    /// Opens (or creates) `path` for appending.
    pub fn open(path: &Path) -> anyhow::Result<ProbeLog> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening the probe log {}", path.display()))?;
        let empty = file.metadata().map(|m| m.len() == 0).unwrap_or(true);
        let mut writer = std::io::BufWriter::new(file);
        if empty {
            writeln!(writer, "{HEADER}")?;
            writer.flush()?;
        }
        Ok(ProbeLog(Some(Arc::new(Mutex::new(Some(writer))))))
    }

    /// A log that writes nothing.
    pub fn disabled() -> ProbeLog {
        ProbeLog(None)
    }

    /// One probe of `target`, ended now.
    pub fn probe(&self, target: &str, outcome: &Outcome) {
        let what = outcome.failure.map_or("ok", |f| f.as_str());
        self.line(now(), target, what, outcome.latency);
    }

    /// A recovery that ended: `action` and how long it took.
    pub fn recovery(&self, at: f64, action: &str, took: Duration) {
        self.line(at, "recovery", action, took);
    }

    fn line(&self, at: f64, target: &str, outcome: &str, latency: Duration) {
        let Some(shared) = &self.0 else { return };
        let mut guard = shared.lock().expect("probe log lock");
        let Some(writer) = guard.as_mut() else { return };
        let written = writeln!(
            writer,
            "{at:.3},{target},{outcome},{:.3}",
            latency.as_secs_f64() * 1e3
        )
        .and_then(|()| writer.flush());
        if let Err(err) = written {
            tracing::error!(error = %err, "writing the probe log failed: no more lines go to it");
            *guard = None;
        }
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::Failure;

    #[test]
    fn probes_and_recoveries_are_lines_and_a_reopened_log_continues() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("probes.csv");
        let log = ProbeLog::open(&path).unwrap();
        log.probe(
            "entry",
            &Outcome {
                latency: Duration::from_micros(1_500),
                failure: None,
                detail: None,
            },
        );
        log.probe(
            "node-2",
            &Outcome {
                latency: Duration::from_secs(2),
                failure: Some(Failure::Timeout),
                detail: Some("timed out".into()),
            },
        );
        log.recovery(1_000.5, "retargeted", Duration::from_millis(2_250));
        drop(log);
        ProbeLog::open(&path)
            .unwrap()
            .recovery(1_001.0, "failed", Duration::ZERO);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert_eq!(lines[0], HEADER);
        assert!(lines[1].ends_with(",entry,ok,1.500"), "{text}");
        assert!(lines[2].ends_with(",node-2,timeout,2000.000"), "{text}");
        assert_eq!(lines[3], "1000.500,recovery,retargeted,2250.000");
        assert_eq!(lines[4], "1001.000,recovery,failed,0.000");
        let at: f64 = lines[1].split(',').next().unwrap().parse().unwrap();
        assert!((at - now()).abs() < 60.0, "unix seconds: {at}");
        ProbeLog::disabled().probe(
            "entry",
            &Outcome {
                latency: Duration::ZERO,
                failure: None,
                detail: None,
            },
        );
    }
}
