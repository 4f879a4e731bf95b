//! The node process: open the store, start the log, serve both ports, stop gracefully.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState, InternalState};
use crate::cluster::{ClusterLog, ClusterOptions};
use crate::config::Config;
use crate::log::{LocalLogOptions, Log, spawn_local_log};
use crate::store::{EmbeddedStore, FirestoreStore, Store, StoreOptions};

/// File name of a generated cluster token inside the data directory.
pub const TOKEN_FILE_NAME: &str = "cluster-token";

/// Finds the cluster token: `BANK_CLUSTER_TOKEN`, else `--cluster-token-file`, else a token
/// generated into `<data-dir>/cluster-token` (created with mode 0600, reused on restart).
pub fn resolve_token(config: &Config, env_token: Option<String>) -> anyhow::Result<String> {
    let env_token = env_token.filter(|t| !t.trim().is_empty());
    if env_token.is_some() || config.cluster_token_file.is_some() {
        return plumbing::read_cluster_token(env_token, config.cluster_token_file.as_deref());
    }
    let path = config.data_dir.join(TOKEN_FILE_NAME);
    let (token, generated) = plumbing::read_or_generate_token(&path)?;
    if generated {
        tracing::info!(path = %path.display(), "generated a cluster token");
    }
    Ok(token)
}

/// How long requests in flight may take to finish after a fatal error before the node exits.
const FATAL_GRACE: Duration = Duration::from_secs(2);

/// Runs a standalone node on the given listeners until `shutdown` completes, `POST /shutdown`
/// is called, or the store fails fatally (then it returns an error).
pub async fn run(
    config: Config,
    token: String,
    public: TcpListener,
    internal: TcpListener,
    metrics: Option<api::metrics_render::Render>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let options = StoreOptions {
        idempotency_retention: config.idempotency_retention,
        // In a cluster the Paxos log is the commit point (see StoreOptions::sync_commits).
        sync_commits: config.paxos_url.is_none(),
    };
    let store: Arc<dyn Store> = match config.firestore() {
        None => Arc::new(
            EmbeddedStore::open_in_dir(&config.data_dir, options)
                .with_context(|| format!("opening the store in {}", config.data_dir.display()))?,
        ),
        Some(firestore) => {
            let store = FirestoreStore::connect(&firestore, options)
                .await
                .context("opening the Firestore store")?;
            tracing::info!(
                project = %firestore.project,
                database = %firestore.database,
                collection = %firestore.collection,
                shared = firestore.shared,
                "using Firestore"
            );
            Arc::new(store)
        }
    };
    let fatal = CancellationToken::new();
    let stop = CancellationToken::new();
    let (log, writer): (Arc<dyn Log>, Option<tokio::task::JoinHandle<()>>) = match &config.paxos_url
    {
        None => {
            let log_options = LocalLogOptions {
                queue_capacity: config.queue_capacity,
                max_batch: config.max_batch,
            };
            let (log, writer) = spawn_local_log(store.clone(), log_options, fatal.clone()).await?;
            (Arc::new(log), Some(writer))
        }
        Some(paxos_url) => {
            let options = ClusterOptions {
                node_id: config.node_id,
                mode: config.mode,
                paxos_url: paxos_url.clone(),
                peers_public: config.peers_public.clone(),
                token: token.clone(),
                max_waiting: config.queue_capacity,
                proposals_in_flight: config.proposals_in_flight,
                propose_linger: config.propose_linger(),
                compact_every: config.compact_every,
            };
            let log =
                ClusterLog::start(options, store.clone(), stop.clone(), fatal.clone()).await?;
            (log, None)
        }
    };
    let app = AppState {
        store,
        log,
        forwarder: reqwest::Client::builder()
            .pool_idle_timeout(plumbing::CLIENT_POOL_IDLE)
            .pool_max_idle_per_host(64)
            .build()
            .context("building the forwarding client")?,
        request_timeout: Duration::from_millis(config.request_timeout_ms),
        max_body_bytes: config.max_body_bytes,
    };
    let internal_state = InternalState {
        app: app.clone(),
        tokens: plumbing::Tokens::new(
            token,
            match &config.metrics_token_file {
                Some(path) => Some(plumbing::read_token_file(path)?),
                None => None,
            },
        ),
        shutdown: stop.clone(),
        metrics,
    };
    {
        let stop = stop.clone();
        let fatal = fatal.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown => {}
                () = fatal.cancelled() => {}
            }
            stop.cancel();
        });
    }
    let limits = plumbing::Limits::DEFAULT;
    let public_server = plumbing::serve(
        public,
        api::public_router(app),
        limits,
        stop.clone().cancelled_owned(),
    );
    let internal_server = plumbing::serve(
        internal,
        api::internal_router(internal_state),
        limits,
        stop.clone().cancelled_owned(),
    );
    let servers = async {
        let (a, b) = tokio::join!(public_server, internal_server);
        a.context("public server")?;
        b.context("internal server")
    };
    // After a fatal error the process must end promptly (its supervisor restarts it), so
    // requests still in flight get at most `FATAL_GRACE` to finish.
    let fatal_deadline = async {
        fatal.cancelled().await;
        tokio::time::sleep(FATAL_GRACE).await;
    };
    tokio::select! {
        served = servers => served?,
        () = fatal_deadline => {}
    }
    stop.cancel();
    if fatal.is_cancelled() {
        anyhow::bail!("stopped after a fatal error (see the log above)");
    }
    // The servers dropped their submitters; the writer finishes what was queued and stops.
    if let Some(writer) = writer {
        let _ = tokio::time::timeout(Duration::from_secs(10), writer).await;
    }
    Ok(())
}

/// The `node` binary's main, also used by the testbed when it re-executes itself.
pub async fn main_with_args(args: Vec<String>) -> anyhow::Result<()> {
    use clap::Parser as _;
    let config = Config::try_parse_from(args)?;
    let mode = if config.paxos_url.is_some() {
        config.mode.as_str()
    } else {
        "standalone"
    };
    let identity = telemetry::Identity::new("node", mode, &config.node_id.to_string());
    let telemetry = telemetry::init(&identity, config.log_format);
    config.validate()?;
    let token = resolve_token(&config, plumbing::token_from_env())?;
    let public = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding --listen {}", config.listen))?;
    let internal = TcpListener::bind(config.internal_listen)
        .await
        .with_context(|| format!("binding --internal-listen {}", config.internal_listen))?;
    let public_addr = public.local_addr()?;
    let internal_addr = internal.local_addr()?;
    telemetry::install_prometheus();
    telemetry::set_build_info("node", &identity.mode, &identity.node);
    crate::metrics::describe();
    crate::metrics::register(config.store);
    let render: api::metrics_render::Render = Arc::new(telemetry::render);
    println!(
        "bank node ready: open http://{public_addr}/ (API docs: http://{public_addr}/openapi.json)"
    );
    println!(
        "internal port: http://{internal_addr}/ (/metrics, /shutdown; needs the cluster token)"
    );
    let result = run(
        config,
        token,
        public,
        internal,
        Some(render),
        shutdown_signal(),
    )
    .await;
    telemetry.shutdown().await;
    result
}

async fn shutdown_signal() {
    plumbing::shutdown_signal().await;
    tracing::info!("signal received; shutting down");
}
