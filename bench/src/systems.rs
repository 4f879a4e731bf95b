//! The two systems under test, started fresh on loopback ports and stopped after their runs:
//! a testbed (`<this binary> up`, a child process that runs the node and paxos processes and
//! the front door) and an etcd cluster (one `etcd` process per member). Both die with this
//! process, whatever kills it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use plumbing::DieWithParent as _;

/// One process whose CPU time counts, by role.
#[derive(Clone, Debug)]
pub struct Process {
    /// `front-door`, `node-0`, `paxos-0`, `etcd-0`, ...
    pub role: String,
    /// Its PID.
    pub pid: u32,
}

pub use chaos::cluster::cpu_seconds;

/// CPU seconds (user + system, every thread) this process has used so far, to the microsecond
/// (`getrusage`). `/proc/<pid>/stat`, all there is for other processes, counts in clock ticks
/// (10 ms): the load generator's share of a one-second run could read as zero.
pub fn own_cpu_seconds() -> Option<f64> {
    // SAFETY: an all-zero `rusage` is a valid value for getrusage to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer to a `rusage`.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return None;
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(seconds(usage.ru_utime) + seconds(usage.ru_stime))
}

/// A free TCP port on 127.0.0.1 (bound, then released: another process could take it first,
/// which makes the system under test fail to start with a clear error).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Stops a child: SIGTERM, then SIGKILL after `grace`.
async fn stop_child(child: &mut Child, grace: Duration) {
    // SAFETY: kill has no memory preconditions; the PID is our own unreaped child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A testbed: `<exe> up` on a free front door port with its data in a folder of its own.
pub struct Testbed {
    child: Child,
    /// The front door.
    pub url: String,
    /// The front door (the `up` process) and every node and paxos process.
    pub processes: Vec<Process>,
    log: PathBuf,
}

impl Testbed {
    /// Starts `exe up` (the binary plays the testbed) in `mode` with `nodes` nodes, its data in
    /// `dir`, without the prober (its writes are not the benchmark's), and waits until ready.
    pub async fn start(
        exe: &Path,
        mode: paxos::Mode,
        nodes: u32,
        dir: &Path,
    ) -> anyhow::Result<Testbed> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let data = dir.join("data");
        let log = dir.join("testbed.log");
        let out = std::fs::File::create(&log)?;
        let child = Command::new(exe)
            .args(["up", "--port", "0", "--no-prober", "--mode", mode.as_str()])
            .args(["--nodes", &nodes.to_string()])
            .arg("--data-dir")
            .arg(&data)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .die_with_parent()
            .spawn()
            .with_context(|| format!("starting {} up", exe.display()))?;
        let mut testbed = Testbed {
            child,
            url: String::new(),
            processes: Vec::new(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(Some(status)) = testbed.child.try_wait() {
                anyhow::bail!("the testbed exited ({status}): {}", testbed.log_tail());
            }
            if let Ok(text) = std::fs::read(data.join("cluster.json"))
                && let Ok(info) = serde_json::from_slice::<testbed::frontdoor::ClusterInfo>(&text)
                && info.ready
                && info
                    .nodes
                    .iter()
                    .all(|n| n.node_pid != 0 && n.paxos_pid != 0)
            {
                testbed.url = info.front_door.clone();
                testbed.processes.push(Process {
                    role: "front-door".to_owned(),
                    pid: testbed.child.id(),
                });
                for node in &info.nodes {
                    testbed.processes.push(Process {
                        role: format!("node-{}", node.id),
                        pid: node.node_pid,
                    });
                    testbed.processes.push(Process {
                        role: format!("paxos-{}", node.id),
                        pid: node.paxos_pid,
                    });
                }
                return Ok(testbed);
            }
            if Instant::now() > deadline {
                anyhow::bail!("the testbed was not ready in 120 s: {}", testbed.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The role of the node the front door sends to now (leader mode), from the testbed's
    /// cluster API; `None` in leaderless mode or when unknown.
    pub async fn leader(&self) -> Option<u32> {
        let info: testbed::frontdoor::ClusterInfo =
            reqwest::get(format!("{}/_testbed/cluster", self.url))
                .await
                .ok()?
                .json()
                .await
                .ok()?;
        info.leader
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(2000);
        let start = (start..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len());
        format!("{} (log {})", &text[start..], self.log.display())
    }

    /// Stops the testbed and its processes.
    pub async fn stop(mut self) {
        stop_child(&mut self.child, Duration::from_secs(30)).await;
    }
}

/// An etcd cluster of `members` processes on loopback ports.
pub struct Etcd {
    children: Vec<Child>,
    /// Client URL of every member.
    pub endpoints: Vec<String>,
    /// Every member's process.
    pub processes: Vec<Process>,
    /// etcd's version line.
    pub version: String,
}

impl Etcd {
    /// Starts `members` etcd processes (`binary`), their data in `dir`, and waits until the
    /// cluster takes a write.
    pub async fn start(binary: &Path, members: u32, dir: &Path) -> anyhow::Result<Etcd> {
        let version = Command::new(binary)
            .arg("--version")
            .output()
            .with_context(|| {
                format!(
                    "running {} (Debian: apt-get install etcd-server; or --no-etcd)",
                    binary.display()
                )
            })?;
        let version = String::from_utf8_lossy(&version.stdout)
            .lines()
            .next()
            .unwrap_or("etcd")
            .to_owned();
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut ports = Vec::new();
        for _ in 0..members {
            ports.push((free_port()?, free_port()?));
        }
        let initial_cluster: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect();
        let mut etcd = Etcd {
            children: Vec::new(),
            endpoints: Vec::new(),
            processes: Vec::new(),
            version,
        };
        for (i, (client, peer)) in ports.iter().enumerate() {
            let client_url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let log = std::fs::File::create(dir.join(format!("m{i}.log")))?;
            let child = Command::new(binary)
                .arg(format!("--name=m{i}"))
                .arg(format!(
                    "--data-dir={}",
                    dir.join(format!("m{i}")).display()
                ))
                .arg(format!("--listen-client-urls={client_url}"))
                .arg(format!("--advertise-client-urls={client_url}"))
                .arg(format!("--listen-peer-urls={peer_url}"))
                .arg(format!("--initial-advertise-peer-urls={peer_url}"))
                .arg(format!("--initial-cluster={}", initial_cluster.join(",")))
                .args([
                    "--initial-cluster-state=new",
                    "--initial-cluster-token=bench",
                ])
                .args(["--logger=zap", "--log-level=warn", "--log-outputs=stderr"])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .die_with_parent()
                .spawn()
                .with_context(|| format!("starting {}", binary.display()))?;
            etcd.processes.push(Process {
                role: format!("etcd-{i}"),
                pid: child.id(),
            });
            etcd.children.push(child);
            etcd.endpoints.push(client_url);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            for (i, child) in etcd.children.iter_mut().enumerate() {
                if let Ok(Some(status)) = child.try_wait() {
                    let log =
                        std::fs::read_to_string(dir.join(format!("m{i}.log"))).unwrap_or_default();
                    anyhow::bail!("etcd member {i} exited ({status}): {log}");
                }
            }
            if let Ok(mut client) = etcd_client::Client::connect(&etcd.endpoints, None).await
                && client.put("bench/ready", "1", None).await.is_ok()
            {
                return Ok(etcd);
            }
            if Instant::now() > deadline {
                anyhow::bail!("etcd took no write in 60 s (logs in {})", dir.display());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The leader's client URL (clients that talk to the leader skip a forwarding hop: the
    /// fastest way to run etcd, so the ratios are against etcd at its best).
    pub async fn leader_endpoint(&self) -> anyhow::Result<String> {
        for endpoint in &self.endpoints {
            let mut client = etcd_client::Client::connect([endpoint], None).await?;
            let status = client.status().await?;
            if status.header().map(|h| h.member_id()) == Some(status.leader()) {
                return Ok(endpoint.clone());
            }
        }
        anyhow::bail!("no etcd member says it leads")
    }

    /// Stops every member.
    pub async fn stop(mut self) {
        for child in &mut self.children {
            stop_child(child, Duration::from_secs(10)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    /// The CI run of 9bea6b9 failed `rounds_alternate_their_order_and_end_with_medians`: a
    /// one-second run of 11 operations on a slow host read the clients' CPU as 0.0 (ticks of
    /// `/proc/self/stat`). Read to the microsecond, a few milliseconds of work show, and not as
    /// a whole number of ticks.
    #[test]
    fn the_load_generator_s_own_cpu_is_read_finer_than_a_clock_tick() {
        let read = super::own_cpu_seconds;
        let before = read().expect("getrusage works");
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < std::time::Duration::from_millis(3) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let used = read().expect("getrusage works") - before;
        assert!(used > 0.0, "{used}");
        let ticks = used / 0.01;
        assert!(
            (ticks - ticks.round()).abs() > 1e-6,
            "{used} s is a whole number of 10 ms ticks"
        );
    }
}
