//! `--probe-log FILE`: every probe as one CSV line, `unix_s,target,outcome,latency_ms`, and every
//! recovery the prober ended as a line whose target is `recovery` and whose outcome is what it did
//! (`retargeted`, `no_healthy_node`, ...; its latency is the recovery's length, first failed
//! probe to first passing one). The raw record behind the SLO numbers: the experiments
//! (`testbed experiment`) read it back into their `probes.csv`.
//!
//! Appends (a restarted prober continues the file) and writes the header only into an empty
//! file. Bounded: the file stops growing at [`MAX_BYTES`] (about a month of probes at the
//! default intervals). A write error, or the bound, is logged once and ends the log, never the
//! probing.

use std::io::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;

use crate::probe::Outcome;

/// The first line of a probe log.
pub const HEADER: &str = "unix_s,target,outcome,latency_ms";

/// The most a probe log grows to.
pub const MAX_BYTES: u64 = 1 << 30;

/// The open file and how large it is.
#[derive(Debug)]
struct Writer {
    file: std::io::BufWriter<std::fs::File>,
    bytes: u64,
    limit: u64,
}

/// A shared handle on the log (cheap to clone); a disabled one writes nothing.
#[derive(Clone, Debug, Default)]
pub struct ProbeLog(Option<Arc<Mutex<Option<Writer>>>>);

impl ProbeLog {
    /// Opens (or creates) `path` for appending, up to [`MAX_BYTES`].
    pub fn open(path: &Path) -> anyhow::Result<ProbeLog> {
        ProbeLog::open_with_limit(path, MAX_BYTES)
    }

    /// Opens (or creates) `path` for appending, up to `limit` bytes.
    pub fn open_with_limit(path: &Path, limit: u64) -> anyhow::Result<ProbeLog> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening the probe log {}", path.display()))?;
        let mut bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut writer = std::io::BufWriter::new(file);
        if bytes == 0 {
            writeln!(writer, "{HEADER}")?;
            writer.flush()?;
            bytes = HEADER.len() as u64 + 1;
        }
        let writer = Writer {
            file: writer,
            bytes,
            limit,
        };
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
        let line = format!(
            "{at:.3},{target},{outcome},{:.3}\n",
            latency.as_secs_f64() * 1e3
        );
        if writer.bytes + line.len() as u64 > writer.limit {
            tracing::error!(
                limit = writer.limit,
                "the probe log reached its size limit: no more lines go to it"
            );
            *guard = None;
            return;
        }
        let written = (writer.file.write_all(line.as_bytes())).and_then(|()| writer.file.flush());
        match written {
            Ok(()) => writer.bytes += line.len() as u64,
            Err(err) => {
                tracing::error!(error = %err, "writing the probe log failed: no more lines go to it");
                *guard = None;
            }
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
        // The bound: a reopened log counts what is already there, and stops before it.
        let before = std::fs::metadata(&path).unwrap().len();
        let full = ProbeLog::open_with_limit(&path, before + 70).unwrap();
        full.recovery(1_002.0, "retargeted", Duration::ZERO);
        full.recovery(1_003.0, "retargeted", Duration::ZERO);
        full.recovery(1_004.0, "retargeted", Duration::ZERO);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text.lines().count(),
            7,
            "two more lines fit in 70 bytes: {text}"
        );
        assert!(std::fs::metadata(&path).unwrap().len() <= before + 70);
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
