//! `testbed up --netns`: every node (its `node` and `paxos` processes) in a network namespace of
//! its own, joined by veth pairs to a bridge in the host's namespace, so that chaos can cut real
//! links between nodes (nftables rules inside a namespace drop what it receives) while the front
//! door, the prober and chaos on the host still reach every node.
//!
//! Each testbed instance has its own names (`pb<tag>-br`, `pb<tag>-n<id>`, `pb<tag>-v<id>`) and a
//! private /24, `10.213.<k>.0/24`, that no interface on the machine uses and no other live
//! instance has claimed: it claims it by creating `/run/paxos-bank-testbed/10.213.<k>.json`
//! (create-new is atomic) with its PID and start time. The host's end of the bridge is
//! `10.213.<k>.1`, node `id` is `10.213.<k>.<10 + id>`. Everything is removed when the cluster
//! stops, and at every start what a dead owner left (a testbed killed with kill -9) is removed.
//! Needs root (CAP_NET_ADMIN) and iproute2.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// Where instances claim their subnets.
pub const STATE_DIR: &str = "/run/paxos-bank-testbed";

/// The second octet of every subnet: `10.213.<k>.0/24`.
const SECOND_OCTET: u8 = 213;

/// What one instance created: enough to remove it, by it or by a later instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Netns {
    /// Name prefix of everything it created (`pb1a2b`).
    pub tag: String,
    /// The third octet of its subnet.
    pub subnet: u8,
    /// Its nodes.
    pub nodes: u32,
    /// PID of the owner.
    pub owner_pid: u32,
    /// Start time of the owner (clock ticks after boot): with the PID, its identity.
    pub owner_start: u64,
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program} (apt-get install iproute2)"))?;
    anyhow::ensure!(
        output.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

/// Start time of process `pid` in clock ticks after boot, if it runs.
fn start_ticks(pid: u32) -> Option<u64> {
    chaos::cluster::proc_stat(pid).map(|stat| stat.start_ticks)
}

/// IPv4 subnets (`10.213.k`) some interface on the machine uses.
fn used_subnets() -> anyhow::Result<Vec<u8>> {
    let output = Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .context("running ip (apt-get install iproute2)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let prefix = format!("10.{SECOND_OCTET}.");
    Ok(text
        .split_whitespace()
        .filter_map(|word| word.strip_prefix(&prefix))
        .filter_map(|rest| rest.split('.').next()?.parse().ok())
        .collect())
}

impl Netns {
    fn state_file(subnet: u8) -> PathBuf {
        Path::new(STATE_DIR).join(format!("10.{SECOND_OCTET}.{subnet}.json"))
    }

    /// The bridge.
    pub fn bridge(&self) -> String {
        format!("{}-br", self.tag)
    }

    /// The namespace of node `id`.
    pub fn namespace(&self, id: u32) -> String {
        format!("{}-n{id}", self.tag)
    }

    fn veth(&self, id: u32) -> String {
        format!("{}-v{id}", self.tag)
    }

    /// The host's address on the bridge.
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, SECOND_OCTET, self.subnet, 1)
    }

    /// Node `id`'s address.
    pub fn node_ip(&self, id: u32) -> Ipv4Addr {
        Ipv4Addr::new(10, SECOND_OCTET, self.subnet, 10 + id as u8)
    }

    /// Claims a free subnet and creates the bridge and one namespace per node (after removing
    /// what dead owners left).
    pub fn create(nodes: u32) -> anyhow::Result<Netns> {
        // SAFETY: geteuid has no preconditions.
        anyhow::ensure!(
            unsafe { libc::geteuid() } == 0,
            "--netns needs root (it creates network namespaces, veth pairs and a bridge)"
        );
        anyhow::ensure!(nodes <= 200, "--netns supports up to 200 nodes");
        std::fs::create_dir_all(STATE_DIR).with_context(|| format!("creating {STATE_DIR}"))?;
        clean_leftovers();
        let used = used_subnets()?;
        let me = std::process::id();
        let owner_start = start_ticks(me).unwrap_or(0);
        for subnet in 0..=255u8 {
            if used.contains(&subnet) {
                continue;
            }
            let file = Self::state_file(subnet);
            let claim = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&file);
            let Ok(claim) = claim else {
                continue;
            };
            let netns = Netns {
                tag: format!("pb{subnet:02x}{:02x}", me & 0xff),
                subnet,
                nodes,
                owner_pid: me,
                owner_start,
            };
            serde_json::to_writer(claim, &netns)?;
            if let Err(err) = netns.build() {
                netns.destroy();
                return Err(err);
            }
            return Ok(netns);
        }
        anyhow::bail!("no free subnet 10.{SECOND_OCTET}.0-255.0/24")
    }

    fn build(&self) -> anyhow::Result<()> {
        let bridge = self.bridge();
        let host = format!("{}/24", self.host_ip());
        run("ip", &["link", "add", &bridge, "type", "bridge"])?;
        run("ip", &["addr", "add", &host, "dev", &bridge])?;
        run("ip", &["link", "set", &bridge, "up"])?;
        for id in 0..self.nodes {
            let (ns, veth) = (self.namespace(id), self.veth(id));
            let address = format!("{}/24", self.node_ip(id));
            let gateway = self.host_ip().to_string();
            run("ip", &["netns", "add", &ns])?;
            run(
                "ip",
                &[
                    "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
                ],
            )?;
            run("ip", &["link", "set", &veth, "master", &bridge, "up"])?;
            run("ip", &["-n", &ns, "addr", "add", &address, "dev", "eth0"])?;
            run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
            run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
            run(
                "ip",
                &["-n", &ns, "route", "add", "default", "via", &gateway],
            )?;
        }
        Ok(())
    }

    /// Removes the namespaces (their veth ends go with them), the bridge and the claim. Best
    /// effort: what is already gone is skipped.
    pub fn destroy(&self) {
        for id in 0..self.nodes {
            let _ = run("ip", &["netns", "del", &self.namespace(id)]);
            let _ = run("ip", &["link", "del", &self.veth(id)]);
        }
        let _ = run("ip", &["link", "del", &self.bridge()]);
        let _ = std::fs::remove_file(Self::state_file(self.subnet));
    }

    /// The command line that runs `program args` inside node `id`'s namespace (`ip netns exec`
    /// execs it: the PID is the program's).
    pub fn wrap(&self, id: u32, program: &Path, args: Vec<String>) -> (PathBuf, Vec<String>) {
        let mut wrapped = vec![
            "netns".to_owned(),
            "exec".to_owned(),
            self.namespace(id),
            program.display().to_string(),
        ];
        wrapped.extend(args);
        (PathBuf::from("ip"), wrapped)
    }
}

/// The namespaces of a running cluster: removed when dropped (also when the cluster fails to
/// start after creating them).
#[derive(Debug, Default)]
pub struct Owned(Option<Netns>);

impl Owned {
    /// Owns `netns`, if any.
    pub fn new(netns: Option<Netns>) -> Owned {
        Owned(netns)
    }

    /// The namespaces, if the cluster has them.
    pub fn get(&self) -> Option<&Netns> {
        self.0.as_ref()
    }

    /// Removes them now.
    pub fn destroy(&mut self) {
        if let Some(netns) = self.0.take() {
            netns.destroy();
        }
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        self.destroy();
    }
}

/// Removes what instances whose owner is dead left behind; returns their tags.
pub fn clean_leftovers() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(STATE_DIR) else {
        return Vec::new();
    };
    let mut cleaned = Vec::new();
    for entry in entries.flatten() {
        let Ok(bytes) = std::fs::read(entry.path()) else {
            continue;
        };
        let Ok(netns) = serde_json::from_slice::<Netns>(&bytes) else {
            // A claim being written this instant, or garbage: only remove it when old.
            let old = (entry.metadata().and_then(|m| m.modified()).ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age.as_secs() > 60);
            if old {
                let _ = std::fs::remove_file(entry.path());
            }
            continue;
        };
        let alive = start_ticks(netns.owner_pid) == Some(netns.owner_start);
        if !alive {
            tracing::warn!(
                tag = netns.tag,
                subnet = netns.subnet,
                "removing network namespaces a dead testbed left"
            );
            netns.destroy();
            cleaned.push(netns.tag);
        }
    }
    cleaned
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_linux_interface_names_and_addresses_follow_ids() {
        let netns = Netns {
            tag: "pb1a2b".into(),
            subnet: 7,
            nodes: 7,
            owner_pid: 1,
            owner_start: 0,
        };
        for name in [netns.bridge(), netns.veth(6)] {
            assert!(name.len() <= 15, "{name}");
        }
        assert_eq!(netns.host_ip().to_string(), "10.213.7.1");
        assert_eq!(netns.node_ip(2).to_string(), "10.213.7.12");
        let (program, args) = netns.wrap(1, Path::new("/bin/testbed"), vec!["paxos".into()]);
        assert_eq!(program, PathBuf::from("ip"));
        assert_eq!(
            args,
            ["netns", "exec", "pb1a2b-n1", "/bin/testbed", "paxos"]
        );
    }
}
