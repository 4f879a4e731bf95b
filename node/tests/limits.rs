//! The node's public port has limits on what a client controls (review item 7): a client that
//! sends a body over the limit whole before reading reads its 413, and one that never finishes
//! its headers is disconnected.

use std::time::Duration;

use clap::Parser as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

async fn standalone_node() -> (std::net::SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = node::config::Config::try_parse_from([
        "node".to_owned(),
        format!("--data-dir={}", dir.path().display()),
    ])
    .unwrap();
    let public = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let internal = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = public.local_addr().unwrap();
    tokio::spawn(node::server::run(
        config,
        "limits-test-token".into(),
        public,
        internal,
        None,
        std::future::pending(),
    ));
    (addr, dir)
}

#[tokio::test]
async fn a_5_mib_body_sent_whole_reads_its_413() {
    let (addr, _dir) = standalone_node().await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    let body = vec![b' '; 5 << 20];
    let head = format!(
        "POST /deposit_money HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    client.write_all(head.as_bytes()).await.unwrap();
    client
        .write_all(&body)
        .await
        .expect("the node takes the whole body instead of resetting the connection");
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), client.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("payload_too_large"), "{text}");
}
