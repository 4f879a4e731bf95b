//! `testbed up`: a [`Cluster`] from the arguments, the printed URLs, and Ctrl-C.

use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::cli::UpArgs;
use crate::cluster::{Cluster, ClusterSpec};

/// Runs the testbed until Ctrl-C or SIGTERM.
pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding the testbed binary")?;
    let spec = ClusterSpec::from_up_args(&args, exe, plumbing::token_from_env())?;
    let cluster = Cluster::start(spec).await?;
    let handle = cluster.handle();
    let layout = handle.layout();
    let data_dir = &layout.data_dir;
    let front = handle.front_door();
    let prometheus_config = data_dir.join("prometheus.yml");
    println!(
        "testbed: {} nodes, {} mode, {} store, data in {}",
        args.nodes,
        args.mode,
        args.store,
        data_dir.display()
    );
    for (id, node) in layout.nodes.iter().enumerate() {
        println!(
            "  node {id}: public {}  internal {}  paxos {}",
            node.public_url(),
            node.internal_url(),
            node.paxos_url()
        );
    }
    if let Some(firestore) = &layout.firestore {
        let collections = if args.mode == paxos::Mode::Leader {
            format!("{} (shared, written by the leader)", firestore.prefix)
        } else {
            format!("{}-<node id> (one per node)", firestore.prefix)
        };
        println!(
            "  firestore: {}, project {}, collections {collections}",
            firestore.description, firestore.project
        );
    }
    match &cluster.token_file {
        Some(path) => println!("  cluster token: {} (mode 0600)", path.display()),
        None => println!("  cluster token: from BANK_CLUSTER_TOKEN"),
    }
    println!(
        "front door: {front}/ (the web page of all accounts; the banking API is on the same address)"
    );
    println!(
        "cluster status: {front}/_testbed/ (a page) and {front}/_testbed/cluster (JSON, also {}/cluster.json)",
        data_dir.display()
    );
    if let Some(prober) = handle.info().prober {
        println!(
            "prober: {}/status (availability SLOs, failures, recoveries; metrics at {}/metrics)",
            prober.url, prober.url
        );
    }
    if let Some(chaos) = handle.info().chaos {
        println!(
            "chaos: {}/status (faults so far; POST {}/kill-switch with the cluster token stops it)",
            chaos.url, chaos.url
        );
    }
    println!(
        "metrics: {front}/_testbed/metrics and every process's /metrics (bearer token); \
         scrape config {}",
        prometheus_config.display()
    );
    if let Some(url) = &cluster.prometheus_url {
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
    let ready = tokio::select! {
        ready = handle.wait_ready(Duration::from_secs(60)) => ready,
        () = plumbing::shutdown_signal() => {
            println!("testbed: stopping every process");
            cluster.stop().await;
            return Ok(());
        }
    };
    if ready {
        println!(
            "ready: the cluster answers at {front}/ ({} ms)",
            started.elapsed().as_millis()
        );
    } else {
        println!("not ready after 60 s: see the logs above");
    }
    plumbing::shutdown_signal().await;
    println!("testbed: stopping every process");
    cluster.stop().await;
    Ok(())
}
