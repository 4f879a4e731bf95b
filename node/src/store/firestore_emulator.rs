//! The Cloud Firestore emulator as a child process, for tests and local runs.
//!
//! `gcloud emulators firestore start` runs a Java server under a Python launcher; killing the
//! launcher leaves Java running. So the emulator is started by a small watcher shell in a process
//! group of its own: [`Emulator`]'s drop kills the whole group, and the watcher kills it too as
//! soon as the process that started it is gone (even after a `kill -9` of a test run), so no
//! emulator outlives its owner. [`Emulator::pause`] and [`Emulator::resume`] stop and continue
//! the group (SIGSTOP/SIGCONT): a Firestore that stops answering without losing its data.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A running emulator.
pub struct Emulator {
    /// `127.0.0.1:PORT`, the value for `FIRESTORE_EMULATOR_HOST`.
    pub host: String,
    child: std::process::Child,
    /// Pid of the gcloud launcher, leader of the emulator's own process group.
    gcloud: Option<libc::pid_t>,
}

/// Whether `gcloud` is on `PATH`.
pub fn gcloud_installed() -> bool {
    std::process::Command::new("gcloud")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Whether the emulator at `host` answers its root URL with `Ok`.
pub fn answers(host: &str) -> bool {
    let Ok(addr) = host.parse() else {
        return false;
    };
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    reply.starts_with("HTTP/1.1 200") || reply.starts_with("HTTP/1.0 200")
}

impl Emulator {
    /// Starts an emulator on a free port, its output in `log`, and waits (up to `limit`) until
    /// it answers.
    pub fn start(log: &Path, limit: Duration) -> std::io::Result<Emulator> {
        use std::os::unix::process::CommandExt as _;
        let port = free_port()?;
        let host = format!("127.0.0.1:{port}");
        let log_file = std::fs::File::create(log)?;
        // gcloud puts itself in a process group of its own: the watcher records its pid (the
        // group's id) and kills that group as well as its own.
        let pid_file = log.with_extension("pid");
        let _ = std::fs::remove_file(&pid_file);
        let script = format!(
            "gcloud emulators firestore start --host-port={host} --quiet & g=$!; \
             echo $g > '{pid_file}'; \
             while kill -0 {owner} 2>/dev/null; do sleep 1; done; \
             kill -9 -$g $g 2>/dev/null; kill -9 0",
            owner = std::process::id(),
            pid_file = pid_file.display()
        );
        let child = std::process::Command::new("sh")
            .args(["-c", &script])
            .stdin(std::process::Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .process_group(0)
            .spawn()?;
        let mut emulator = Emulator {
            host,
            child,
            gcloud: None,
        };
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if emulator.gcloud.is_none() {
                emulator.gcloud = std::fs::read_to_string(&pid_file)
                    .ok()
                    .and_then(|text| text.trim().parse().ok());
            }
            if emulator.gcloud.is_some() && answers(&emulator.host) {
                return Ok(emulator);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "the Firestore emulator did not answer on {} within {limit:?} (log: {})",
                emulator.host,
                log.display()
            ),
        ))
    }

    fn signal_group(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on the process groups we started: the watcher's and gcloud's (each
        // group's id is its leader's pid).
        unsafe {
            if let Some(gcloud) = self.gcloud {
                libc::kill(-gcloud, signal);
            }
            libc::kill(-(self.child.id() as libc::pid_t), signal);
        }
    }

    /// Stops every process of the emulator (it keeps its data but answers nothing).
    pub fn pause(&self) {
        self.signal_group(libc::SIGSTOP);
    }

    /// Lets a paused emulator run again.
    pub fn resume(&self) {
        self.signal_group(libc::SIGCONT);
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.signal_group(libc::SIGKILL);
        let _ = self.child.wait();
    }
}

/// For tests: the emulator host to use, from `FIRESTORE_EMULATOR_HOST` or one emulator started
/// for this process (and set in `FIRESTORE_EMULATOR_HOST`). `None` when `gcloud` is missing
/// outside CI (a loud SKIPPED line is printed); under `CI=true` a missing `gcloud` panics.
pub fn for_tests() -> Option<&'static str> {
    static HOST: OnceLock<Option<String>> = OnceLock::new();
    HOST.get_or_init(|| {
        if let Ok(host) = std::env::var("FIRESTORE_EMULATOR_HOST")
            && !host.trim().is_empty()
        {
            return Some(host);
        }
        if !gcloud_installed() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but gcloud (with the Firestore emulator) is missing"
            );
            eprintln!(
                "\n*** SKIPPED Firestore tests: gcloud not found and FIRESTORE_EMULATOR_HOST not set ***\n"
            );
            return None;
        }
        let log = std::env::temp_dir().join(format!(
            "firestore-emulator-{}.log",
            std::process::id()
        ));
        let emulator =
            Emulator::start(&log, Duration::from_secs(90)).expect("starting the Firestore emulator");
        let host = emulator.host.clone();
        // The emulator lives as long as this process; its watcher kills it when we exit.
        std::mem::forget(emulator);
        // SAFETY: set once, before any Firestore client of this process is created.
        unsafe {
            std::env::set_var("FIRESTORE_EMULATOR_HOST", &host);
        }
        Some(host)
    })
    .as_deref()
}
