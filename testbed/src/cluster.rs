//! The cluster API: what `testbed up`, the end-to-end tests, the load test's `--compare` and the
//! experiments use to run a local cluster.
//!
//! A [`ClusterSpec`] says what to run; [`Cluster::start`] starts it (every child's command line
//! comes from the same clap structs the `node` and `paxos` binaries parse, see
//! [`ClusterSpec::paxos_cli`] and [`ClusterSpec::node_config`]); a [`ClusterHandle`] gives typed
//! access to the nodes, their processes, URLs, the leader and readiness, and stops, kills,
//! restarts or wipes one node. [`ClusterThread`] runs a cluster on a thread of its own, for
//! callers that are not async (tests, the load test).
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use testbed::cluster::{Cluster, ClusterSpec};
//!
//! let spec = ClusterSpec::new("target/debug/testbed".into(), 3, paxos::Mode::Leader);
//! let cluster = Cluster::start(spec).await?;
//! let handle = cluster.handle();
//! anyhow::ensure!(handle.wait_ready(std::time::Duration::from_secs(60)).await, "not ready");
//! let leader = handle.leader().expect("a ready leader-mode cluster has a leader");
//! handle.kill(leader, testbed::cluster::Process::Paxos); // a crash; the supervisor restarts it
//! cluster.stop().await;
//! # Ok(())
//! # }
//! ```

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use paxos::Mode;
use tokio_util::sync::CancellationToken;

use crate::frontdoor::{self, ClusterInfo, FrontDoor, NodeHandle, Outlier};
use crate::supervisor::Child;
use node::store::StoreKind;

/// What to run.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// The binary that plays `node` and `paxos` (`testbed`, or a binary embedding it such as
    /// `loadtest`): it is started as `<exe> node ...` and `<exe> paxos ...`.
    pub exe: PathBuf,
    /// Node+paxos pairs, 1 to 7.
    pub nodes: u32,
    /// Leader or leaderless.
    pub mode: Mode,
    /// The nodes' store.
    pub store: StoreKind,
    /// Where the data lives (default: a fresh folder under the system temp dir).
    pub data_dir: Option<PathBuf>,
    /// Reuse the data already in `data_dir` (without it, a non-empty folder is refused).
    pub keep_data: bool,
    /// The cluster token (default: generated into `<data-dir>/cluster-token`, mode 0600).
    pub token: Option<String>,
    /// Front door port on 127.0.0.1 (0: any free port).
    pub port: u16,
    /// Restart processes that die, like a kubelet.
    pub restart: bool,
    /// Leader mode: the front door follows the leader by itself (false: it stays on its target
    /// until `POST /_testbed/target`, which the prober calls).
    pub follow_leader: bool,
    /// Nodes hand paxos a snapshot every this many applied slots.
    pub compact_every: u64,
    /// Milliseconds per Paxos tick.
    pub tick_ms: u64,
    /// Firestore project (with `store` Firestore); without it and without
    /// `FIRESTORE_EMULATOR_HOST`, the cluster starts an emulator.
    pub firestore_project: Option<String>,
    /// Base name of the Firestore collections (default: `accounts-<random>`).
    pub firestore_collection_prefix: Option<String>,
    /// Start a Prometheus (the binary at this path) on this port (0: any free port).
    pub prometheus: Option<(PathBuf, u16)>,
    /// Start the prober.
    pub prober: Option<ProberSpec>,
    /// Start chaos.
    pub chaos: Option<ChaosSpec>,
    /// Every node in a network namespace of its own (root; see [`crate::netns`]).
    pub netns: bool,
    /// A link proxy per node between its paxos process and its peers ([`crate::linkproxy`]).
    pub proxies: bool,
    /// Environment added to every child (`RUST_LOG`, `OTEL_*`, ...).
    pub env: Vec<(String, String)>,
}

impl ClusterSpec {
    /// `nodes` pairs in `mode` on the embedded store, run by `exe`, with the defaults of
    /// `testbed up` (restarts on, the front door follows the leader, any free port).
    pub fn new(exe: PathBuf, nodes: u32, mode: Mode) -> ClusterSpec {
        ClusterSpec {
            exe,
            nodes,
            mode,
            store: StoreKind::Embedded,
            data_dir: None,
            keep_data: false,
            token: None,
            port: 0,
            restart: true,
            follow_leader: true,
            compact_every: 10_000,
            tick_ms: 10,
            firestore_project: None,
            firestore_collection_prefix: None,
            prometheus: None,
            prober: None,
            chaos: None,
            netns: false,
            proxies: false,
            env: Vec::new(),
        }
    }

    /// The spec `testbed up` runs for these arguments; `token` is `BANK_CLUSTER_TOKEN`, if set.
    pub fn from_up_args(
        args: &crate::cli::UpArgs,
        exe: PathBuf,
        token: Option<String>,
    ) -> anyhow::Result<ClusterSpec> {
        args.validate()?;
        let prometheus = match (args.prometheus, crate::prometheus::find_binary()) {
            (false, _) => None,
            (true, Some(binary)) => Some((binary, args.prometheus_port)),
            (true, None) => anyhow::bail!(
                "--prometheus: no `prometheus` on PATH (apt-get install prometheus), or run \
                 without --prometheus and point your own Prometheus at <data-dir>/prometheus.yml"
            ),
        };
        Ok(ClusterSpec {
            exe,
            nodes: args.nodes,
            mode: args.mode,
            store: args.store,
            data_dir: args.data_dir.clone(),
            keep_data: args.keep_data,
            token: token.filter(|t| !t.trim().is_empty()),
            port: args.port,
            restart: !args.no_restart,
            follow_leader: !args.manual_target,
            compact_every: args.compact_every,
            tick_ms: args.tick_ms,
            firestore_project: args.firestore_project.clone(),
            firestore_collection_prefix: args.firestore_collection_prefix.clone(),
            prometheus,
            prober: (!args.no_prober).then_some(ProberSpec {
                port: args.prober_port,
                interval_ms: args.prober_interval_ms,
                probe_log: None,
            }),
            chaos: args.chaos.clone().map(|faults| ChaosSpec {
                port: args.chaos_port,
                faults,
                every: args.chaos_every,
                target: args.chaos_target,
                min_age: args.chaos_min_age,
                pause: args.chaos_pause,
                dry_run: args.chaos_dry_run,
                seed: args.chaos_seed,
            }),
            netns: args.netns,
            proxies: args.proxies,
            env: Vec::new(),
        })
    }

    /// The `paxos` process of node `id`, as the `paxos` binary parses it.
    pub fn paxos_cli(&self, layout: &Layout, id: u32) -> paxos::runtime::Cli {
        use clap::Parser as _;
        let mut cli = paxos::runtime::Cli::parse_from(["paxos", "--id=0", "--peers=http://x"]);
        cli.id = id;
        cli.peers = layout.nodes.iter().map(|n| n.paxos_url()).collect();
        cli.mode = self.mode;
        let ports = &layout.nodes[id as usize];
        cli.listen = (ports.host, ports.paxos_port).into();
        // Through the link proxy: peer j is its listener for j, on loopback in this node's
        // network namespace.
        for (peer, port) in ports.proxy_ports.iter().enumerate() {
            if peer as u32 != id {
                cli.peers[peer] = format!("http://127.0.0.1:{port}");
            }
        }
        cli.data_dir = layout.node_dir(id).join("paxos");
        cli.tick_ms = self.tick_ms;
        // Only read while the data dir is empty: the first start of this cluster. A wipe (see
        // `ClusterHandle::wipe`) appends `existing`, which overrides it.
        cli.initial_cluster_state = Some(paxos::runtime::InitialClusterState::New);
        cli.metrics_token_file = Some(layout.metrics_token_file());
        cli.cluster_token_file = None;
        cli
    }

    /// Node `id`'s link proxy, with `proxies`.
    pub fn proxy_args(&self, layout: &Layout, id: u32) -> Option<crate::linkproxy::Args> {
        let ports = &layout.nodes[id as usize];
        let admin = (ports.host, ports.proxy_admin_port?).into();
        let links = (ports.proxy_ports.iter().enumerate())
            .filter(|(peer, _)| *peer as u32 != id)
            .map(|(peer, port)| crate::linkproxy::Link {
                to: peer as u32,
                listen: ([127, 0, 0, 1], *port).into(),
                upstream: (layout.nodes[peer].host, layout.nodes[peer].paxos_port).into(),
            })
            .collect();
        Some(crate::linkproxy::Args { admin, links })
    }

    /// The prober, probing the front door at `front` and serving on `port`.
    pub fn prober_config(&self, front: &str, port: u16) -> prober::Config {
        use clap::Parser as _;
        let mut config = prober::Config::parse_from(["prober", "--target=http://x"]);
        config.target = front.to_owned();
        config.testbed = Some(front.to_owned());
        config.listen = ([127, 0, 0, 1], port).into();
        if let Some(spec) = &self.prober {
            config.interval_ms = spec.interval_ms;
            config.probe_log = spec.probe_log.clone();
        }
        config
    }

    /// The `node` process of node `id`, as the `node` binary parses it.
    pub fn node_config(&self, layout: &Layout, id: u32) -> node::config::Config {
        use clap::Parser as _;
        let ports = &layout.nodes[id as usize];
        let mut config = node::config::Config::parse_from(["node"]);
        config.node_id = id;
        config.mode = self.mode;
        config.paxos_url = Some(ports.paxos_url());
        config.peers_public = layout.nodes.iter().map(|n| n.public_url()).collect();
        config.listen = (ports.host, ports.public_port).into();
        config.internal_listen = (ports.host, ports.internal_port).into();
        config.data_dir = layout.node_dir(id).join("bank");
        config.compact_every = self.compact_every;
        config.metrics_token_file = Some(layout.metrics_token_file());
        config.cluster_token_file = None;
        config.store = self.store;
        if let Some(firestore) = &layout.firestore {
            config.firestore_project = Some(firestore.project.clone());
            config.firestore_collection_prefix = firestore.prefix.clone();
        }
        config
    }
}

/// The chaos a cluster runs (`chaos run` against its front door).
#[derive(Clone, Debug)]
pub struct ChaosSpec {
    /// Port of its `/status`, `/metrics` and `/kill-switch` on 127.0.0.1 (0: any free port).
    pub port: u16,
    /// The faults it draws from.
    pub faults: Vec<chaos::fault::Fault>,
    /// A fault every this long (less up to a quarter).
    pub every: std::time::Duration,
    /// Which node.
    pub target: chaos::target::Target,
    /// Spare nodes younger than this.
    pub min_age: std::time::Duration,
    /// How long a pause lasts.
    pub pause: std::time::Duration,
    /// Inject nothing, say what it would do.
    pub dry_run: bool,
    /// The schedule's seed (default: from the clock).
    pub seed: Option<u64>,
}

impl ClusterSpec {
    /// `chaos run` against the front door at `front`, serving on `port`.
    pub fn chaos_args(&self, front: &str, port: u16) -> Option<chaos::RunArgs> {
        use clap::Parser as _;
        let spec = self.chaos.as_ref()?;
        let chaos::Command::Run(mut args) =
            chaos::Cli::parse_from(["chaos", "run", "--cluster=http://x"]).command
        else {
            unreachable!("parsed as run");
        };
        args.common.cluster = Some(front.to_owned());
        args.common.target = spec.target;
        args.common.dry_run = spec.dry_run;
        args.faults = spec.faults.clone();
        args.every = spec.every;
        args.min_age = spec.min_age;
        args.duration = spec.pause;
        args.seed = spec.seed;
        args.listen = ([127, 0, 0, 1], port).into();
        Some(args)
    }
}

/// The prober a cluster runs.
#[derive(Clone, Debug)]
pub struct ProberSpec {
    /// Port of its `/status` and `/metrics` on 127.0.0.1 (0: any free port).
    pub port: u16,
    /// Milliseconds between probe rounds.
    pub interval_ms: u64,
    /// Where it appends every probe (`prober --probe-log`).
    pub probe_log: Option<PathBuf>,
}

/// The ports of one node's three listeners.
#[derive(Clone, Debug)]
pub struct NodePorts {
    /// The node's address: 127.0.0.1, or its namespace's address with `--netns`.
    pub host: std::net::Ipv4Addr,
    /// The node's public (banking API) port.
    pub public_port: u16,
    /// The node's internal (token) port.
    pub internal_port: u16,
    /// The paxos process's port.
    pub paxos_port: u16,
    /// With `--proxies`: its link proxy's admin port.
    pub proxy_admin_port: Option<u16>,
    /// With `--proxies`: the proxy's listener for each peer, by peer id (its own is unused).
    pub proxy_ports: Vec<u16>,
}

impl NodePorts {
    /// `http://<host>:<public>`.
    pub fn public_url(&self) -> String {
        format!("http://{}:{}", self.host, self.public_port)
    }

    /// `http://<host>:<internal>`.
    pub fn internal_url(&self) -> String {
        format!("http://{}:{}", self.host, self.internal_port)
    }

    /// `http://<host>:<paxos>`.
    pub fn paxos_url(&self) -> String {
        format!("http://{}:{}", self.host, self.paxos_port)
    }
}

/// Where a started cluster put everything: its data folder, the ports of every node, and its
/// Firestore location.
#[derive(Clone, Debug)]
pub struct Layout {
    /// The data folder (`node-N/`, `cluster-token`, `metrics-token`, `cluster.json`, ...).
    pub data_dir: PathBuf,
    /// Every node's ports, in id order.
    pub nodes: Vec<NodePorts>,
    /// Firestore project and collection prefix, with the Firestore store.
    pub firestore: Option<FirestoreLocation>,
}

impl Layout {
    /// `<data-dir>/node-<id>`.
    pub fn node_dir(&self, id: u32) -> PathBuf {
        self.data_dir.join(format!("node-{id}"))
    }

    /// The read-only token Prometheus scrapes with.
    pub fn metrics_token_file(&self) -> PathBuf {
        self.data_dir.join("metrics-token")
    }
}

/// Where the nodes' Firestore state lives.
#[derive(Clone, Debug)]
pub struct FirestoreLocation {
    /// Google Cloud project.
    pub project: String,
    /// Base name of the collections.
    pub prefix: String,
    /// For people: the emulator's address or "Google Cloud Firestore".
    pub description: String,
}

/// One of a node's two processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Process {
    /// The `node` process (the bank).
    Node,
    /// The `paxos` process (the replica).
    Paxos,
}

/// Typed access to a running cluster. Cheap to clone; usable from any tokio runtime.
#[derive(Clone)]
pub struct ClusterHandle {
    door: Arc<FrontDoor>,
    front: String,
    token: Arc<str>,
    layout: Arc<Layout>,
}

impl ClusterHandle {
    /// The front door's base URL (the banking API and `/_testbed/...`).
    pub fn front_door(&self) -> &str {
        &self.front
    }

    /// The cluster token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Where everything is.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.door.mode
    }

    /// What `/_testbed/cluster` answers: nodes, roles, PIDs, restarts, the leader, readiness.
    pub fn info(&self) -> ClusterInfo {
        self.door.info()
    }

    /// True once every node answers `/readyz` and, in leader mode, a leader is known.
    pub fn is_ready(&self) -> bool {
        self.door.is_ready()
    }

    /// The leader's id (leader mode, when one is known).
    pub fn leader(&self) -> Option<u32> {
        self.door.info().leader
    }

    /// The public URLs of every node, in id order.
    pub fn public_urls(&self) -> Vec<String> {
        self.layout
            .nodes
            .iter()
            .map(NodePorts::public_url)
            .collect()
    }

    /// A typed client of the bank through the front door.
    pub fn bank(&self) -> node::client::BankClient {
        node::client::BankClient::with_http(self.door.client.clone(), &self.front)
    }

    /// A typed client of node `id`'s paxos process.
    pub fn paxos(&self, id: u32) -> paxos::client::PaxosClient {
        paxos::client::PaxosClient::with_http(
            self.door.client.clone(),
            &self.layout.nodes[id as usize].paxos_url(),
            self.token.clone(),
        )
    }

    /// The PID of one process of node `id`, if it runs.
    pub fn pid(&self, id: u32, process: Process) -> Option<u32> {
        self.child(id, process).pid()
    }

    /// `kill -9` of one process of node `id` (a crash: it is restarted unless restarts are
    /// off). False if it was not running.
    pub fn kill(&self, id: u32, process: Process) -> bool {
        self.child(id, process).kill()
    }

    /// Stops one process of node `id` (SIGKILL) and keeps it down until
    /// [`ClusterHandle::start_process`].
    pub fn stop_process(&self, id: u32, process: Process) {
        self.child(id, process).stop();
    }

    /// Lets a stopped process of node `id` run again.
    pub fn start_process(&self, id: u32, process: Process) {
        self.child(id, process).start();
    }

    /// Stops one process of node `id`, waits until it is gone (at most 10 s), and starts it
    /// again: a restart by the operator, not a crash (it does not count as a restart in
    /// [`ClusterHandle::info`]). Returns the new PID once it runs (at most 10 s more).
    pub async fn restart(&self, id: u32, process: Process) -> Option<u32> {
        let child = self.child(id, process);
        child.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.pid().is_some() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        child.start();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(pid) = child.pid() {
                return Some(pid);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops both processes of node `id` and keeps them down until [`ClusterHandle::start`].
    pub fn stop(&self, id: u32) {
        let node = &self.door.nodes[id as usize];
        node.node.stop();
        node.paxos.stop();
    }

    /// Lets both processes of a stopped node `id` run again.
    pub fn start(&self, id: u32) {
        let node = &self.door.nodes[id as usize];
        node.paxos.start();
        node.node.start();
    }

    /// Restarts every node in turn without failing a request ([`crate::rolling`]); `progress`
    /// hears a line per step.
    pub async fn rolling_restart(
        &self,
        progress: impl FnMut(String),
    ) -> anyhow::Result<Vec<crate::rolling::NodeReport>> {
        crate::rolling::rolling_restart(&self.door, progress).await
    }

    /// A lost disk: both processes of node `id` down, both data folders deleted, then back;
    /// the paxos process rejoins as `--initial-cluster-state existing`.
    pub async fn wipe(&self, id: u32) {
        self.door.wipe(id as usize).await;
    }

    /// Waits until [`ClusterHandle::is_ready`], at most `limit`.
    pub async fn wait_ready(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.is_ready() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.is_ready()
    }

    /// Waits until a leader other than `not` is known (leader mode), at most `limit`.
    pub async fn wait_leader(&self, not: Option<u32>, limit: Duration) -> Option<u32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(leader) = self.leader().filter(|l| Some(*l) != not) {
                return Some(leader);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn child(&self, id: u32, process: Process) -> &Arc<Child> {
        let node = &self.door.nodes[id as usize];
        match process {
            Process::Node => &node.node,
            Process::Paxos => &node.paxos,
        }
    }
}

/// A running cluster: its processes, the front door, `cluster.json`. Stop it with
/// [`Cluster::stop`]; dropping it stops it too (without waiting).
pub struct Cluster {
    handle: ClusterHandle,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The Prometheus this cluster started, if any.
    pub prometheus_url: Option<String>,
    /// Where the token came from: the generated file, or `None` (given in the spec).
    pub token_file: Option<PathBuf>,
    /// An emulator this cluster started (stopped after the nodes).
    emulator: Option<node::store::firestore_emulator::Emulator>,
    /// The network namespaces of `--netns` (removed after the processes stop).
    netns: crate::netns::Owned,
}

/// Tokio worker threads per child process of a cluster of `nodes` pairs: the machine's cores
/// shared among its `2 * nodes` processes and the front door, at least one. Tokio's default (a
/// worker per core in every process) put 14 workers on 2 cores for 3 nodes: more thread
/// hand-offs and scheduler wake-ups per operation for no parallelism (the one-client transfer
/// took 20% less CPU with one worker; docs/measurements/2026-11-30-performance.md).
pub fn worker_threads(nodes: u32) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / (2 * nodes as usize + 1)).max(1)
}

impl Cluster {
    /// Starts every process and the front door. Returns at once: wait for readiness with
    /// [`ClusterHandle::wait_ready`].
    ///
    /// On the embedded store each child's tokio runtime gets [`worker_threads`] workers unless
    /// the environment sets `TOKIO_WORKER_THREADS` (on Firestore, whose client waits on many
    /// calls at once, tokio's default of a worker per core served a leaderless cluster under
    /// kills 30% more operations than one worker).
    pub async fn start(spec: ClusterSpec) -> anyhow::Result<Cluster> {
        anyhow::ensure!(
            (1..=7).contains(&spec.nodes),
            "nodes must be 1 to 7, got {}",
            spec.nodes
        );
        let data_dir = prepare_data_dir(spec.data_dir.as_deref(), spec.keep_data)?;
        let mut env = spec.env.clone();
        if spec.store == StoreKind::Embedded
            && std::env::var_os("TOKIO_WORKER_THREADS").is_none()
            && !env.iter().any(|(k, _)| k == "TOKIO_WORKER_THREADS")
        {
            env.push((
                "TOKIO_WORKER_THREADS".to_owned(),
                worker_threads(spec.nodes).to_string(),
            ));
        }
        let (firestore, emulator) = match spec.store {
            StoreKind::Firestore => {
                let (location, emulator, host) = prepare_firestore(&spec, &data_dir)?;
                if let Some(host) = host {
                    env.push(("FIRESTORE_EMULATOR_HOST".to_owned(), host));
                }
                (Some(location), emulator)
            }
            StoreKind::Embedded => (None, None),
        };
        let (token, token_file) = match &spec.token {
            Some(token) => (token.trim().to_owned(), None),
            None => {
                // A fresh data dir has none; with --keep-data the cluster keeps its token.
                let path = data_dir.join(node::server::TOKEN_FILE_NAME);
                (plumbing::read_or_generate_token(&path)?.0, Some(path))
            }
        };
        // The children read the token from their own environment, set for them alone.
        env.push((plumbing::TOKEN_ENV.to_owned(), token.clone()));
        let owned_netns = crate::netns::Owned::new(match spec.netns {
            true => Some(crate::netns::Netns::create(spec.nodes)?),
            false => None,
        });
        let netns = owned_netns.get();
        let mut taken = Vec::new();
        let mut nodes = Vec::new();
        for id in 0..spec.nodes {
            nodes.push(NodePorts {
                host: netns.map_or(std::net::Ipv4Addr::LOCALHOST, |n| n.node_ip(id)),
                public_port: free_port(&mut taken)?,
                internal_port: free_port(&mut taken)?,
                paxos_port: free_port(&mut taken)?,
                proxy_admin_port: None,
                proxy_ports: Vec::new(),
            });
        }
        if spec.proxies {
            for ports in &mut nodes {
                ports.proxy_admin_port = Some(free_port(&mut taken)?);
                ports.proxy_ports = (0..spec.nodes)
                    .map(|_| free_port(&mut taken))
                    .collect::<anyhow::Result<_>>()?;
            }
        }
        let layout = Layout {
            data_dir: data_dir.clone(),
            nodes,
            firestore,
        };
        // Prometheus scrapes with its own read-only token: it reads `/metrics` and nothing else.
        let metrics_token_file = layout.metrics_token_file();
        plumbing::read_or_generate_token(&metrics_token_file)?;
        let mut handles = Vec::new();
        for id in 0..spec.nodes {
            let dir = layout.node_dir(id);
            std::fs::create_dir_all(&dir)?;
            let ports = &layout.nodes[id as usize];
            let child = |name: &str, role: &str, args: Vec<String>| {
                let args: Vec<String> = std::iter::once(role.to_owned()).chain(args).collect();
                let (program, args) = match netns {
                    Some(netns) => netns.wrap(id, &spec.exe, args),
                    None => (spec.exe.clone(), args),
                };
                Child::new(
                    format!("{name}-{id}"),
                    program,
                    args,
                    env.clone(),
                    dir.join(format!("{name}.log")),
                    spec.restart,
                )
            };
            handles.push(NodeHandle {
                id,
                public_url: ports.public_url(),
                internal_url: ports.internal_url(),
                paxos_url: ports.paxos_url(),
                paxos: child("paxos", "paxos", spec.paxos_cli(&layout, id).to_args()),
                node: child("node", "node", spec.node_config(&layout, id).to_args()),
                data_dirs: vec![dir.join("paxos"), dir.join("bank")],
                role: std::sync::Mutex::new("down".to_owned()),
                ready: AtomicBool::new(false),
                outlier: Outlier::default(),
                netns: netns.map(|n| n.namespace(id)),
                ip: ports.host.to_string(),
                proxy_url: ports
                    .proxy_admin_port
                    .map(|p| format!("http://{}:{p}", ports.host)),
                proxy: (spec.proxy_args(&layout, id))
                    .map(|args| child("proxy", "linkproxy", args.to_args())),
                draining: AtomicBool::new(false),
                in_flight: AtomicUsize::new(0),
            });
        }
        let door = Arc::new(FrontDoor {
            mode: spec.mode,
            nodes: handles,
            target: AtomicUsize::new(0),
            auto_target: AtomicBool::new(spec.follow_leader),
            next: AtomicUsize::new(0),
            leader: AtomicUsize::new(usize::MAX),
            token: token.clone(),
            data_dir: data_dir.clone(),
            token_file: token_file.clone(),
            url: std::sync::Mutex::new(String::new()),
            client: reqwest::Client::builder()
                .pool_idle_timeout(plumbing::CLIENT_POOL_IDLE)
                .pool_max_idle_per_host(128)
                .build()?,
            proxy_client: crate::frontdoor::proxy_client(),
            prober: std::sync::OnceLock::new(),
            chaos: std::sync::OnceLock::new(),
            prometheus: std::sync::OnceLock::new(),
            request_timeout: crate::frontdoor::REQUEST_TIMEOUT,
            restarting: AtomicBool::new(false),
        });
        // The front door's own metrics (`/_testbed/metrics`), at zero from the start.
        telemetry::install_prometheus();
        telemetry::set_build_info("testbed", spec.mode.as_str(), "front-door");
        node::metrics::describe();
        node::metrics::register_http(&node::api::API_ROUTES);
        door.register_metrics();
        let shutdown = CancellationToken::new();
        let mut tasks = Vec::new();
        for node in &door.nodes {
            tasks.push(tokio::spawn(node.paxos.clone().supervise(shutdown.clone())));
            tasks.push(tokio::spawn(node.node.clone().supervise(shutdown.clone())));
            if let Some(proxy) = &node.proxy {
                tasks.push(tokio::spawn(proxy.clone().supervise(shutdown.clone())));
            }
        }
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", spec.port))
            .await
            .with_context(|| {
                format!(
                    "binding the front door on 127.0.0.1:{} (try --port 0)",
                    spec.port
                )
            })?;
        let front = format!("http://{}", listener.local_addr()?);
        *door.url.lock().expect("url lock") = front.clone();
        let prober_url = match &spec.prober {
            Some(prober) => {
                let port = match prober.port {
                    0 => free_port(&mut taken)?,
                    port => port,
                };
                let cli = spec.prober_config(&front, port);
                let child = Child::new(
                    "prober".to_owned(),
                    spec.exe.clone(),
                    std::iter::once("prober".to_owned())
                        .chain(cli.to_args())
                        .collect(),
                    env.clone(),
                    data_dir.join("prober.log"),
                    spec.restart,
                );
                tasks.push(tokio::spawn(child.clone().supervise(shutdown.clone())));
                let url = format!("http://127.0.0.1:{port}");
                let _ = door.prober.set((url.clone(), child));
                Some(url)
            }
            None => None,
        };
        let chaos_port = match spec.chaos.as_ref().map(|c| c.port) {
            Some(0) => Some(free_port(&mut taken)?),
            port => port,
        };
        let chaos_url = match (
            chaos_port,
            chaos_port.and_then(|p| spec.chaos_args(&front, p)),
        ) {
            (Some(port), Some(args)) => {
                let child = Child::new(
                    "chaos".to_owned(),
                    spec.exe.clone(),
                    ["chaos".to_owned(), "run".to_owned()]
                        .into_iter()
                        .chain(args.to_args())
                        .collect(),
                    env.clone(),
                    data_dir.join("chaos.log"),
                    spec.restart,
                );
                tasks.push(tokio::spawn(child.clone().supervise(shutdown.clone())));
                let url = format!("http://127.0.0.1:{port}");
                let _ = door.chaos.set((url.clone(), child));
                Some(url)
            }
            _ => None,
        };
        let services: Vec<(&str, &str)> = [("prober", &prober_url), ("chaos", &chaos_url)]
            .into_iter()
            .filter_map(|(job, url)| Some((job, url.as_deref()?)))
            .collect();
        let prometheus_config = data_dir.join("prometheus.yml");
        std::fs::write(
            &prometheus_config,
            crate::prometheus::scrape_config(
                &door.nodes,
                &front,
                &services,
                spec.mode.as_str(),
                &metrics_token_file,
                &data_dir,
            ),
        )
        .with_context(|| format!("writing {}", prometheus_config.display()))?;
        crate::prometheus::write_rules(&data_dir)
            .with_context(|| format!("writing {}", data_dir.join("rules").display()))?;
        let prometheus_url = match &spec.prometheus {
            Some((binary, port)) => {
                let port = match port {
                    0 => free_port(&mut taken)?,
                    port => *port,
                };
                let child = Child::new(
                    "prometheus".to_owned(),
                    binary.clone(),
                    crate::prometheus::server_args(
                        &prometheus_config,
                        &data_dir.join("prometheus"),
                        port,
                    ),
                    Vec::new(),
                    data_dir.join("prometheus.log"),
                    spec.restart,
                );
                tasks.push(tokio::spawn(child.clone().supervise(shutdown.clone())));
                let url = format!("http://127.0.0.1:{port}");
                let _ = door.prometheus.set((url.clone(), child));
                Some(url)
            }
            None => None,
        };
        tasks.push(tokio::spawn(door.clone().poll(shutdown.clone())));
        tasks.push(tokio::spawn(write_cluster_json(
            door.clone(),
            shutdown.clone(),
        )));
        let server = plumbing::serve(
            listener,
            frontdoor::router(door.clone()),
            plumbing::Limits::DEFAULT,
            shutdown.clone().cancelled_owned(),
        );
        tasks.push(tokio::spawn(async move {
            if let Err(err) = server.await {
                tracing::error!(%err, "the front door stopped");
            }
        }));
        Ok(Cluster {
            handle: ClusterHandle {
                door,
                front,
                token: token.into(),
                layout: Arc::new(layout),
            },
            shutdown,
            tasks,
            prometheus_url,
            token_file,
            emulator,
            netns: owned_netns,
        })
    }

    /// Typed access to the cluster.
    pub fn handle(&self) -> ClusterHandle {
        self.handle.clone()
    }

    /// Stops every process (SIGTERM, then SIGKILL after 3 s), the front door, then the
    /// Firestore emulator if this cluster started one.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
        drop(self.emulator.take());
        self.netns.destroy();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Supervisors kill their children when cancelled (and children die with this process).
        self.shutdown.cancel();
        // The namespaces go now (the field's drop); a process still inside keeps its own
        // until it exits.
    }
}

/// A cluster on a thread of its own (with its own tokio runtime), for callers that are not
/// async or must not share their runtime with it. Started ready; stopped when dropped.
pub struct ClusterThread {
    handle: ClusterHandle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The Prometheus the cluster started, if any.
    pub prometheus_url: Option<String>,
}

impl ClusterThread {
    /// Starts `spec` and waits up to `ready_within` for it to be ready.
    pub fn start(spec: ClusterSpec, ready_within: Duration) -> anyhow::Result<ClusterThread> {
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("cluster".to_owned())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(err) => {
                        let _ = started_tx.send(Err(anyhow::Error::from(err)));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let cluster = match Cluster::start(spec).await {
                        Ok(cluster) => cluster,
                        Err(err) => {
                            let _ = started_tx.send(Err(err));
                            return;
                        }
                    };
                    let prometheus = cluster.prometheus_url.clone();
                    let _ = started_tx.send(Ok((cluster.handle(), prometheus)));
                    let _ = stop_rx.await;
                    cluster.stop().await;
                });
            })
            .context("starting the cluster thread")?;
        let (handle, prometheus_url) = started_rx
            .recv()
            .context("the cluster thread ended before the cluster started")??;
        let started = ClusterThread {
            handle,
            stop: Some(stop_tx),
            thread: Some(thread),
            prometheus_url,
        };
        let deadline = Instant::now() + ready_within;
        while !started.handle.is_ready() {
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "the cluster was not ready within {ready_within:?}: {}",
                    serde_json::to_string(&started.handle.info()).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(started)
    }

    /// Typed access to the cluster.
    pub fn handle(&self) -> &ClusterHandle {
        &self.handle
    }
}

impl Drop for ClusterThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A port that is free now, picked below Linux's ephemeral range (32768 and up) so that no
/// outgoing connection can take it before the child binds it; random, so that clusters started
/// at the same moment rarely pick the same one; checked by binding it. The ports are fixed for
/// the cluster's life because the processes find each other by them.
fn free_port(taken: &mut Vec<u16>) -> anyhow::Result<u16> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .subsec_nanos();
    let mut x = u64::from(seed) ^ (u64::from(std::process::id()) << 20);
    for _ in 0..1_000 {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let port = 20_000 + ((x >> 33) % 12_000) as u16;
        if !taken.contains(&port) && StdListener::bind(("127.0.0.1", port)).is_ok() {
            taken.push(port);
            return Ok(port);
        }
    }
    anyhow::bail!("no free port found in 20000-31999")
}

fn prepare_data_dir(dir: Option<&Path>, keep_data: bool) -> anyhow::Result<PathBuf> {
    let dir = match dir {
        Some(dir) => dir.to_owned(),
        None => {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis();
            std::env::temp_dir().join(format!("paxos-bank-{stamp}-{}", std::process::id()))
        }
    };
    if dir.exists() && !keep_data && std::fs::read_dir(&dir)?.next().is_some() {
        anyhow::bail!(
            "--data-dir {} is not empty: add --keep-data to reuse its data, or choose an empty folder",
            dir.display()
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(std::fs::canonicalize(&dir)?)
}

/// Uses `FIRESTORE_EMULATOR_HOST` or the given project, or else starts an emulator. Returns
/// the location, the emulator it started and the emulator host the children must use.
fn prepare_firestore(
    spec: &ClusterSpec,
    data_dir: &Path,
) -> anyhow::Result<(
    FirestoreLocation,
    Option<node::store::firestore_emulator::Emulator>,
    Option<String>,
)> {
    use node::store::firestore_emulator::{self, Emulator};
    let prefix = spec.firestore_collection_prefix.clone().unwrap_or_else(|| {
        format!(
            "accounts-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        )
    });
    // The children's environment wins over this process's.
    let emulator_host = (spec.env.iter())
        .find(|(key, _)| key == "FIRESTORE_EMULATOR_HOST")
        .map(|(_, host)| host.clone())
        .or_else(|| std::env::var("FIRESTORE_EMULATOR_HOST").ok())
        .filter(|h| !h.trim().is_empty());
    let (description, emulator, host) = match (&emulator_host, &spec.firestore_project) {
        (Some(host), _) => (format!("the emulator at {host}"), None, None),
        (None, Some(_)) => ("Google Cloud Firestore".to_owned(), None, None),
        (None, None) => {
            anyhow::ensure!(
                firestore_emulator::gcloud_installed(),
                "--store firestore: set FIRESTORE_EMULATOR_HOST or --firestore-project, or \
                 install gcloud with the Firestore emulator so the testbed can start one"
            );
            let log = data_dir.join("firestore-emulator.log");
            println!(
                "starting a Firestore emulator (about 10-20 s; log {})",
                log.display()
            );
            let emulator = Emulator::start(&log, Duration::from_secs(90))
                .context("starting the Firestore emulator")?;
            let host = emulator.host.clone();
            (
                format!("the emulator at {host} (started by the testbed)"),
                Some(emulator),
                Some(host),
            )
        }
    };
    let location = FirestoreLocation {
        project: spec
            .firestore_project
            .clone()
            .unwrap_or_else(|| "paxos-bank-testbed".to_owned()),
        prefix,
        description,
    };
    Ok((location, emulator, host))
}

async fn write_cluster_json(door: Arc<FrontDoor>, shutdown: CancellationToken) {
    let path = door.data_dir.join("cluster.json");
    let mut last = String::new();
    while !shutdown.is_cancelled() {
        if let Ok(text) = serde_json::to_string_pretty(&door.info())
            && text != last
        {
            let tmp = path.with_extension("json.tmp");
            if std::fs::write(&tmp, &text).is_ok() && std::fs::rename(&tmp, &path).is_ok() {
                last = text;
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn layout(nodes: u16) -> Layout {
        Layout {
            data_dir: "/data".into(),
            nodes: (0..nodes)
                .map(|i| NodePorts {
                    host: std::net::Ipv4Addr::LOCALHOST,
                    public_port: 1000 + i,
                    internal_port: 2000 + i,
                    paxos_port: 3000 + i,
                    proxy_admin_port: None,
                    proxy_ports: Vec::new(),
                })
                .collect(),
            firestore: Some(FirestoreLocation {
                project: "p".into(),
                prefix: "accounts-x".into(),
                description: "the emulator".into(),
            }),
        }
    }

    /// Every child's command line parses, with the binary's own parser, into what the spec says.
    #[test]
    fn children_are_started_with_what_the_spec_says() {
        let mut spec = ClusterSpec::new("/bin/testbed".into(), 3, Mode::Leaderless);
        spec.store = StoreKind::Firestore;
        spec.tick_ms = 7;
        spec.compact_every = 20;
        let layout = layout(3);
        let paxos_args = spec.paxos_cli(&layout, 2).to_args();
        let paxos =
            paxos::runtime::Cli::parse_from(std::iter::once("paxos".into()).chain(paxos_args));
        assert_eq!(paxos.id, 2);
        assert_eq!(paxos.mode, Mode::Leaderless);
        assert_eq!(paxos.tick_ms, 7);
        assert_eq!(paxos.listen.port(), 3002);
        assert_eq!(paxos.peers[1], "http://127.0.0.1:3001");
        assert_eq!(paxos.data_dir, Path::new("/data/node-2/paxos"));
        assert_eq!(
            paxos.initial_cluster_state,
            Some(paxos::runtime::InitialClusterState::New)
        );
        assert_eq!(
            paxos.metrics_token_file.as_deref(),
            Some(Path::new("/data/metrics-token"))
        );
        let node_args = spec.node_config(&layout, 1).to_args();
        let config =
            node::config::Config::parse_from(std::iter::once("node".into()).chain(node_args));
        assert_eq!(config.node_id, 1);
        assert_eq!(config.mode, Mode::Leaderless);
        assert_eq!(config.store, StoreKind::Firestore);
        assert_eq!(config.firestore_project.as_deref(), Some("p"));
        assert_eq!(config.firestore_collection_prefix, "accounts-x");
        assert_eq!(config.paxos_url.as_deref(), Some("http://127.0.0.1:3001"));
        assert_eq!(config.peers_public.len(), 3);
        assert_eq!(config.listen.port(), 1001);
        assert_eq!(config.internal_listen.port(), 2001);
        assert_eq!(config.compact_every, 20);
        config.validate().unwrap();
    }
}
