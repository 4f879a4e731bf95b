//! A storage failure is fatal for a replica (review item 5): the process must end, non-zero,
//! with a clear log line, instead of serving `/healthz` while nothing is decided any more.

#[path = "support/small_disk.rs"]
mod small_disk;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser as _;
use paxos::runtime::{Cli, run_with_storage};
use paxos::storage::{MemStorage, PersistOp, PersistentState, Storage, StorageError};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "fatal-test-token";

/// Writes succeed until `ok_writes` have been made, then every write fails.
struct FailingStorage {
    inner: MemStorage,
    ok_writes: usize,
}

impl Storage for FailingStorage {
    fn load(&self) -> Result<PersistentState, StorageError> {
        self.inner.load()
    }
    fn write(&mut self, ops: &[PersistOp]) -> Result<(), StorageError> {
        if self.ok_writes == 0 {
            return Err(StorageError("injected: the disk refuses writes".into()));
        }
        self.ok_writes -= 1;
        self.inner.write(ops)
    }
}

fn single_replica_config(url: &str, dir: &std::path::Path) -> paxos::runtime::RuntimeConfig {
    let cli = Cli::try_parse_from([
        "paxos".to_owned(),
        "--id=0".to_owned(),
        format!("--peers={url}"),
        "--mode=leader".to_owned(),
        "--initial-cluster-state=new".to_owned(),
        format!("--data-dir={}", dir.display()),
    ])
    .expect("paxos flags");
    cli.into_config(TOKEN.to_owned()).expect("paxos config")
}

async fn status(client: &reqwest::Client, url: &str) -> Option<paxos::wire::StatusReply> {
    let reply = client
        .get(format!("{url}/status"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .ok()?;
    reply.json().await.ok()
}

async fn propose(client: &reqwest::Client, url: &str) {
    let body = postcard::to_stdvec(&vec![Bytes::from_static(b"a command")]).unwrap();
    // The answer does not matter: the write behind it fails.
    let _ = client
        .post(format!("{url}/local/propose"))
        .bearer_auth(TOKEN)
        .body(body)
        .timeout(Duration::from_secs(2))
        .send()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_that_fails_its_writes_ends_the_replica() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let cfg = single_replica_config(&url, dir.path());
    let storage = FailingStorage {
        inner: MemStorage::default(),
        ok_writes: 0,
    };
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let running = tokio::spawn(run_with_storage(
        cfg,
        Box::new(storage),
        listener,
        None,
        shutdown.clone(),
    ));
    let client = reqwest::Client::new();
    propose(&client, &url).await;
    let ended = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the replica must stop when its storage fails, not keep serving")
        .unwrap();
    let err = ended.expect_err("a storage failure is an error exit");
    let text = format!("{err:#}");
    assert!(
        text.contains("paxos storage failed") && text.contains("injected"),
        "the error names the cause: {text}"
    );
    assert!(
        client
            .get(format!("{url}/healthz"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .is_err(),
        "nothing answers /healthz any more"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_ends_the_paxos_process_with_a_clear_error() {
    let Some(disk) = small_disk::SmallDisk::mount(8) else {
        return;
    };
    let port = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let token_file = disk.beside("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_paxos"))
        .args([
            "--id=0",
            &format!("--peers={url}"),
            &format!("--listen=127.0.0.1:{port}"),
            "--mode=leader",
            "--initial-cluster-state=new",
        ])
        .arg(format!("--data-dir={}", disk.path.join("paxos").display()))
        .arg(format!("--cluster-token-file={}", token_file.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let up = Instant::now();
    while client
        .get(format!("{url}/healthz"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .is_err()
    {
        assert!(
            up.elapsed() < Duration::from_secs(20),
            "paxos did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, stderr) =
        small_disk::fill_until_exit(&disk, &mut child, async || propose(&client, &url).await).await;
    eprintln!("paxos exited with {status}; stderr: {stderr}");
    assert!(!status.success(), "a non-zero exit: {status}");
    assert!(
        stderr.contains("paxos storage failed"),
        "the last words name the storage: {stderr}"
    );
}

/// Review item 7: a replica with an empty data dir never guesses whether it is new.
#[tokio::test]
async fn an_empty_data_dir_needs_an_explicit_initial_cluster_state() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let cli = Cli::try_parse_from([
        "paxos".to_owned(),
        "--id=0".to_owned(),
        format!("--peers={url}"),
        format!("--data-dir={}", dir.path().display()),
    ])
    .unwrap();
    let cfg = cli.into_config(TOKEN.to_owned()).unwrap();
    let err = paxos::runtime::run(cfg, listener, None, CancellationToken::new())
        .await
        .expect_err("no silent default");
    assert!(
        format!("{err:#}").contains("--initial-cluster-state new"),
        "the error says what to do: {err:#}"
    );
}

/// Review item 7: `new` with an empty data dir in a cluster that already decided slots is
/// refused (the data was lost; voting as new would break safety), and `existing` rejoins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_is_refused_where_the_cluster_already_decided_and_existing_rejoins() {
    let dir = tempfile::tempdir().unwrap();
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let urls: Vec<String> = listeners
        .iter()
        .map(|l| format!("http://{}", l.local_addr().unwrap()))
        .collect();
    let config = |id: usize, initial: &str| {
        Cli::try_parse_from([
            "paxos".to_owned(),
            format!("--id={id}"),
            format!("--peers={}", urls.join(",")),
            format!("--initial-cluster-state={initial}"),
            format!("--data-dir={}", dir.path().join(id.to_string()).display()),
        ])
        .unwrap()
        .into_config(TOKEN.to_owned())
        .unwrap()
    };
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let late = listeners.pop().unwrap();
    for (id, listener) in listeners.into_iter().enumerate() {
        tokio::spawn(paxos::runtime::run(
            config(id, "new"),
            listener,
            None,
            shutdown.clone(),
        ));
    }
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "nothing decided");
        propose(&client, &urls[0]).await;
        if status(&client, &urls[0])
            .await
            .is_some_and(|s| s.status.decided > 0)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let late_addr = late.local_addr().unwrap();
    let err = paxos::runtime::run(config(2, "new"), late, None, shutdown.clone())
        .await
        .expect_err("a lost disk restarted as new is refused");
    assert!(
        format!("{err:#}").contains("--initial-cluster-state existing"),
        "{err:#}"
    );
    let late = tokio::net::TcpListener::bind(late_addr).await.unwrap();
    let rejoined = tokio::spawn(paxos::runtime::run(
        config(2, "existing"),
        late,
        None,
        shutdown.clone(),
    ));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(!rejoined.is_finished(), "existing starts");
        assert!(
            Instant::now() < deadline,
            "the rejoined replica did not catch up"
        );
        if status(&client, &urls[2])
            .await
            .is_some_and(|s| s.status.decided > 0 && s.status.incarnation == 1)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
