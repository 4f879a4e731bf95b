//! Child processes, restarted like a kubelet restarts a crashed container.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// One supervised process.
pub struct Child {
    /// `node-0`, `paxos-2`, ...
    pub name: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    extra_args: std::sync::Mutex<Vec<String>>,
    log: PathBuf,
    restart: bool,
    /// Current PID (0: not running).
    pub pid: AtomicU32,
    /// Restarts after a crash.
    pub restarts: AtomicU64,
    /// Held down by the operator (`stop`): not restarted until `start`.
    pub held: AtomicBool,
    wake: Notify,
    kill_now: Notify,
    /// The next exit was asked for ([`Child::terminate_and_restart`]): start again at once.
    planned: AtomicBool,
}

impl Child {
    /// A child that is not started yet; `env` is added to the environment it inherits (the
    /// cluster token travels this way, never through this process's own environment).
    pub fn new(
        name: String,
        program: PathBuf,
        args: Vec<String>,
        env: Vec<(String, String)>,
        log: PathBuf,
        restart: bool,
    ) -> Arc<Child> {
        Arc::new(Child {
            name,
            program,
            args,
            env,
            extra_args: std::sync::Mutex::new(Vec::new()),
            log,
            restart,
            pid: AtomicU32::new(0),
            restarts: AtomicU64::new(0),
            held: AtomicBool::new(false),
            wake: Notify::new(),
            planned: AtomicBool::new(false),
            kill_now: Notify::new(),
        })
    }

    /// Stops the process (SIGKILL) and keeps it down until [`Child::start`].
    pub fn stop(&self) {
        self.held.store(true, Ordering::SeqCst);
        self.kill_now.notify_one();
    }

    /// The running process's PID.
    pub fn pid(&self) -> Option<u32> {
        Some(self.pid.load(Ordering::SeqCst)).filter(|pid| *pid != 0)
    }

    /// `kill -9` of the running process, as a crash: the supervisor restarts it (unless
    /// restarts are off). Returns false if it was not running.
    pub fn kill(&self) -> bool {
        let Some(pid) = self.pid() else {
            return false;
        };
        // SAFETY: kill(2) of a process this supervisor started and still tracks.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) == 0 }
    }

    /// Adds an argument for every later start.
    pub fn add_arg(&self, arg: &str) {
        let mut extra = self.extra_args.lock().expect("args lock");
        if !extra.iter().any(|a| a == arg) {
            extra.push(arg.to_owned());
        }
    }

    /// Lets a stopped process run again.
    pub fn start(&self) {
        self.held.store(false, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// SIGTERM to the running process (a graceful stop: the node drains its requests, a
    /// leading paxos process hands its lead over); the supervisor starts it again at once,
    /// without counting a restart or backing off. Returns the PID signalled.
    pub fn terminate_and_restart(&self) -> Option<u32> {
        let pid = self.pid()?;
        self.planned.store(true, Ordering::SeqCst);
        // SAFETY: a signal to our own child.
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
        Some(pid)
    }

    /// Keeps the process running until `shutdown`; restarts it when it dies (unless disabled).
    pub async fn supervise(self: Arc<Self>, shutdown: CancellationToken) {
        let mut failures: u32 = 0;
        while !shutdown.is_cancelled() {
            if self.held.load(Ordering::SeqCst) {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = self.wake.notified() => continue,
                }
            }
            let started = Instant::now();
            let mut child = match self.spawn() {
                Ok(child) => child,
                Err(err) => {
                    tracing::error!(name = %self.name, %err, "cannot start");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            self.pid.store(child.id().unwrap_or(0), Ordering::SeqCst);
            let status = tokio::select! {
                status = child.wait() => status.ok(),
                () = self.kill_now.notified() => {
                    let _ = child.kill().await;
                    None
                }
                () = shutdown.cancelled() => {
                    terminate(&mut child).await;
                    self.pid.store(0, Ordering::SeqCst);
                    return;
                }
            };
            self.pid.store(0, Ordering::SeqCst);
            if self.held.load(Ordering::SeqCst) {
                continue;
            }
            if self.planned.swap(false, Ordering::SeqCst) {
                tracing::info!(name = %self.name, ?status, "stopped for a restart: starting again");
                continue;
            }
            tracing::warn!(name = %self.name, ?status, "process exited");
            if !self.restart {
                self.held.store(true, Ordering::SeqCst);
                continue;
            }
            self.restarts.fetch_add(1, Ordering::SeqCst);
            // Capped exponential backoff, reset after a healthy run (as a kubelet does).
            failures = if started.elapsed() > Duration::from_secs(10) {
                0
            } else {
                failures + 1
            };
            let backoff = Duration::from_millis((50u64 << failures.min(7)).min(5_000));
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
        }
    }

    fn spawn(&self) -> std::io::Result<tokio::process::Child> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut command = tokio::process::Command::new(&self.program);
        command
            .args(&self.args)
            .args(self.extra_args.lock().expect("args lock").iter())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        // If the testbed itself dies (even by SIGKILL), the kernel kills its children: no orphans.
        plumbing::DieWithParent::die_with_parent(&mut command);
        command.spawn()
    }
}

/// SIGTERM, then SIGKILL after 3 seconds.
async fn terminate(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        // SAFETY: sending a signal to our own child.
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(3), child.wait())
            .await
            .is_ok()
        {
            return;
        }
    }
    let _ = child.kill().await;
}
