//! `testbed up`: ports, data folders, the token, children, the front door, `cluster.json`.

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::cli::UpArgs;
use crate::frontdoor::{self, FrontDoor, NodeHandle};
use crate::supervisor::Child;

/// A port that is free now, picked below Linux's ephemeral range (32768 and up) so that no
/// outgoing connection can take it before the child binds it; random, so that testbeds started
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

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

fn prepare_data_dir(args: &UpArgs) -> anyhow::Result<PathBuf> {
    let dir = match &args.data_dir {
        Some(dir) => dir.clone(),
        None => {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis();
            std::env::temp_dir().join(format!("paxos-bank-{stamp}-{}", std::process::id()))
        }
    };
    if dir.exists() && !args.keep_data && std::fs::read_dir(&dir)?.next().is_some() {
        anyhow::bail!(
            "--data-dir {} is not empty: add --keep-data to reuse its data, or choose an empty folder",
            dir.display()
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(std::fs::canonicalize(&dir)?)
}

/// Runs the testbed until Ctrl-C or SIGTERM.
pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    args.validate()?;
    let prometheus_binary = match (args.prometheus, crate::prometheus::find_binary()) {
        (false, _) => None,
        (true, Some(binary)) => Some(binary),
        (true, None) => anyhow::bail!(
            "--prometheus: no `prometheus` on PATH (apt-get install prometheus), or run without \
             --prometheus and point your own Prometheus at <data-dir>/prometheus.yml"
        ),
    };
    let data_dir = prepare_data_dir(&args)?;
    let firestore = match args.store.as_str() {
        "firestore" => Some(prepare_firestore(&args, &data_dir)?),
        _ => None,
    };
    let (token, token_file) = match std::env::var("BANK_CLUSTER_TOKEN") {
        Ok(token) if !token.trim().is_empty() => (token.trim().to_owned(), None),
        _ => {
            let path = data_dir.join("cluster-token");
            let token = match std::fs::read_to_string(&path) {
                Ok(existing) if args.keep_data && !existing.trim().is_empty() => {
                    existing.trim().to_owned()
                }
                _ => {
                    let token = format!(
                        "{}{}",
                        uuid::Uuid::new_v4().simple(),
                        uuid::Uuid::new_v4().simple()
                    );
                    write_private(&path, &token)?;
                    token
                }
            };
            (token, Some(path))
        }
    };
    // Prometheus scrapes with its own read-only token: it reads `/metrics` and nothing else.
    let metrics_token_file = data_dir.join("metrics-token");
    let reuse = args.keep_data
        && std::fs::read_to_string(&metrics_token_file).is_ok_and(|t| t.trim().len() >= 16);
    if !reuse {
        let token = uuid::Uuid::new_v4().simple().to_string();
        write_private(&metrics_token_file, &token)?;
    }
    let exe = std::env::current_exe().context("finding the testbed binary")?;
    let n = args.nodes as usize;
    let mut taken = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..n {
        ports.push((
            free_port(&mut taken)?,
            free_port(&mut taken)?,
            free_port(&mut taken)?,
        ));
    }
    let public: Vec<String> = ports
        .iter()
        .map(|(p, _, _)| format!("http://127.0.0.1:{p}"))
        .collect();
    let paxos: Vec<String> = ports
        .iter()
        .map(|(_, _, x)| format!("http://127.0.0.1:{x}"))
        .collect();
    let restart = !args.no_restart;
    let mut nodes = Vec::new();
    for (i, (public_port, internal_port, paxos_port)) in ports.iter().enumerate() {
        let dir = data_dir.join(format!("node-{i}"));
        std::fs::create_dir_all(&dir)?;
        let paxos_args = vec![
            "paxos".to_owned(),
            "--id".to_owned(),
            i.to_string(),
            "--peers".to_owned(),
            paxos.join(","),
            "--mode".to_owned(),
            args.mode.clone(),
            "--listen".to_owned(),
            format!("127.0.0.1:{paxos_port}"),
            "--data-dir".to_owned(),
            dir.join("paxos").display().to_string(),
            "--tick-ms".to_owned(),
            args.tick_ms.to_string(),
            // Only read while the data dir is empty: the first start of this cluster. A wipe
            // (see the front door) appends `existing`, which overrides it.
            "--initial-cluster-state=new".to_owned(),
            format!("--metrics-token-file={}", metrics_token_file.display()),
        ];
        let mut node_args = vec![
            "node".to_owned(),
            "--node-id".to_owned(),
            i.to_string(),
            "--mode".to_owned(),
            args.mode.clone(),
            "--paxos-url".to_owned(),
            paxos[i].clone(),
            "--peers-public".to_owned(),
            public.join(","),
            "--listen".to_owned(),
            format!("127.0.0.1:{public_port}"),
            "--internal-listen".to_owned(),
            format!("127.0.0.1:{internal_port}"),
            "--data-dir".to_owned(),
            dir.join("bank").display().to_string(),
            "--compact-every".to_owned(),
            args.compact_every.to_string(),
            format!("--metrics-token-file={}", metrics_token_file.display()),
        ];
        if let Some(firestore) = &firestore {
            node_args.extend([
                "--store".to_owned(),
                "firestore".to_owned(),
                "--firestore-project".to_owned(),
                firestore.project.clone(),
                "--firestore-collection-prefix".to_owned(),
                firestore.prefix.clone(),
            ]);
        }
        nodes.push(NodeHandle {
            id: i as u32,
            public_url: public[i].clone(),
            internal_url: format!("http://127.0.0.1:{internal_port}"),
            paxos_url: paxos[i].clone(),
            paxos: Child::new(
                format!("paxos-{i}"),
                exe.clone(),
                paxos_args,
                dir.join("paxos.log"),
                restart,
            ),
            node: Child::new(
                format!("node-{i}"),
                exe.clone(),
                node_args,
                dir.join("node.log"),
                restart,
            ),
            data_dirs: vec![dir.join("paxos"), dir.join("bank")],
            role: std::sync::Mutex::new("down".to_owned()),
            ready: AtomicBool::new(false),
        });
    }
    // Children read the token from the environment they inherit.
    // SAFETY: set before any child is spawned and while no other thread reads the environment.
    unsafe {
        std::env::set_var("BANK_CLUSTER_TOKEN", &token);
    }
    let door = Arc::new(FrontDoor {
        mode: args.mode.clone(),
        nodes,
        target: AtomicUsize::new(0),
        auto_target: AtomicBool::new(!args.manual_target),
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
    });
    telemetry::install_prometheus();
    telemetry::set_build_info("testbed", &args.mode, "front-door");
    node::api::describe_metrics();
    let shutdown = CancellationToken::new();
    let mut tasks = Vec::new();
    for node in &door.nodes {
        tasks.push(tokio::spawn(node.paxos.clone().supervise(shutdown.clone())));
        tasks.push(tokio::spawn(node.node.clone().supervise(shutdown.clone())));
    }
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port))
        .await
        .with_context(|| {
            format!(
                "binding the front door on 127.0.0.1:{} (try --port 0)",
                args.port
            )
        })?;
    let front = format!("http://{}", listener.local_addr()?);
    *door.url.lock().expect("url lock") = front.clone();
    let prometheus_config = data_dir.join("prometheus.yml");
    std::fs::write(
        &prometheus_config,
        crate::prometheus::scrape_config(&door.nodes, &front, &args.mode, &metrics_token_file),
    )
    .with_context(|| format!("writing {}", prometheus_config.display()))?;
    let prometheus_url = match prometheus_binary {
        Some(binary) => {
            let port = match args.prometheus_port {
                0 => free_port(&mut taken)?,
                port => port,
            };
            let child = Child::new(
                "prometheus".to_owned(),
                binary,
                crate::prometheus::server_args(
                    &prometheus_config,
                    &data_dir.join("prometheus"),
                    port,
                ),
                data_dir.join("prometheus.log"),
                restart,
            );
            tasks.push(tokio::spawn(child.supervise(shutdown.clone())));
            Some(format!("http://127.0.0.1:{port}"))
        }
        None => None,
    };
    tokio::spawn(door.clone().poll(shutdown.clone()));
    tokio::spawn(write_cluster_json(door.clone(), shutdown.clone()));
    let server = plumbing::serve(
        listener,
        frontdoor::router(door.clone()),
        plumbing::Limits::DEFAULT,
        shutdown.clone().cancelled_owned(),
    );
    let server = tokio::spawn(server);

    println!(
        "testbed: {} nodes, {} mode, {} store, data in {}",
        args.nodes,
        args.mode,
        args.store,
        data_dir.display()
    );
    for node in &door.nodes {
        println!(
            "  node {}: public {}  internal {}  paxos {}",
            node.id, node.public_url, node.internal_url, node.paxos_url
        );
    }
    if let Some(firestore) = &firestore {
        let collections = if args.mode == "leader" {
            format!("{} (shared, written by the leader)", firestore.prefix)
        } else {
            format!("{}-<node id> (one per node)", firestore.prefix)
        };
        println!(
            "  firestore: {}, project {}, collections {collections}",
            firestore.location, firestore.project
        );
    }
    match &token_file {
        Some(path) => println!("  cluster token: {} (mode 0600)", path.display()),
        None => println!("  cluster token: from BANK_CLUSTER_TOKEN"),
    }
    println!(
        "front door: {front}/ (the web page of all accounts; the banking API is on the same address)"
    );
    println!(
        "cluster status: {front}/_testbed/cluster (also {}/cluster.json)",
        data_dir.display()
    );
    println!(
        "metrics: {front}/_testbed/metrics and every process's /metrics (bearer token); \
         scrape config {}",
        prometheus_config.display()
    );
    if let Some(url) = &prometheus_url {
        println!(
            "prometheus: {url}/ (targets: {url}/targets; log {}/prometheus.log)",
            data_dir.display()
        );
    }
    if telemetry::trace::otlp_configured() {
        println!(
            "traces: exported over OTLP to OTEL_EXPORTER_OTLP_ENDPOINT by every process, sampled \
             at OTEL_TRACES_SAMPLER_ARG (default {})",
            telemetry::trace::DEFAULT_SAMPLE_RATIO
        );
    }
    println!(
        "logs: {}/node-*/{{node,paxos}}.log; Ctrl-C stops everything",
        data_dir.display()
    );

    let started = Instant::now();
    let ready = wait_ready(&door, Duration::from_secs(60), &shutdown).await;
    if ready {
        println!(
            "ready: the cluster answers at {front}/ ({} ms)",
            started.elapsed().as_millis()
        );
    } else if !shutdown.is_cancelled() {
        println!("not ready after 60 s: see the logs above");
    }
    tokio::select! {
        () = paxos::runtime::wait_for_signal() => {}
        () = shutdown.cancelled() => {}
    }
    println!("testbed: stopping every process");
    shutdown.cancel();
    for task in tasks {
        let _ = task.await;
    }
    let _ = server.await;
    // The emulator (if this testbed started one) stops last, after the nodes that used it.
    drop(firestore);
    Ok(())
}

/// Where the nodes' Firestore state lives for this cluster.
struct FirestoreSetup {
    project: String,
    prefix: String,
    /// For people: the emulator's address or "Google Cloud Firestore".
    location: String,
    /// An emulator this testbed started (stopped when the testbed stops).
    _emulator: Option<node::store::firestore_emulator::Emulator>,
}

/// Uses `FIRESTORE_EMULATOR_HOST` or the given project, or else starts an emulator.
fn prepare_firestore(args: &UpArgs, data_dir: &Path) -> anyhow::Result<FirestoreSetup> {
    use node::store::firestore_emulator::{self, Emulator};
    let prefix = args.firestore_collection_prefix.clone().unwrap_or_else(|| {
        format!(
            "accounts-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        )
    });
    let emulator_host = std::env::var("FIRESTORE_EMULATOR_HOST")
        .ok()
        .filter(|h| !h.trim().is_empty());
    let (location, emulator) = match (&emulator_host, &args.firestore_project) {
        (Some(host), _) => (format!("the emulator at {host}"), None),
        (None, Some(_)) => ("Google Cloud Firestore".to_owned(), None),
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
            // SAFETY: set before any child is spawned and while no other thread reads it.
            unsafe {
                std::env::set_var("FIRESTORE_EMULATOR_HOST", &emulator.host);
            }
            (
                format!("the emulator at {} (started by the testbed)", emulator.host),
                Some(emulator),
            )
        }
    };
    Ok(FirestoreSetup {
        project: args
            .firestore_project
            .clone()
            .unwrap_or_else(|| "paxos-bank-testbed".to_owned()),
        prefix,
        location,
        _emulator: emulator,
    })
}

async fn wait_ready(door: &Arc<FrontDoor>, limit: Duration, shutdown: &CancellationToken) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline && !shutdown.is_cancelled() {
        let all_ready = door.nodes.iter().all(|n| n.ready.load(Ordering::SeqCst));
        let leader_known =
            door.mode != "leader" || door.leader.load(Ordering::SeqCst) != usize::MAX;
        if all_ready && leader_known {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
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
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
