//! Every listener's limits (review item 7), against raw sockets that misbehave on purpose.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse as _;
use axum::routing::{get, post};
use plumbing::{Limits, Oversized, reject_oversized, serve};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const TEST_LIMITS: Limits = Limits {
    header_read_timeout: Duration::from_millis(300),
    body_read_timeout: Duration::from_millis(300),
    max_connections: 2,
    shutdown_grace: Duration::from_secs(1),
};

async fn start(limits: Limits, max_body_bytes: u64) -> SocketAddr {
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .route(
            "/upload",
            post(|body: axum::body::Bytes| async move { body.len().to_string() }),
        )
        .layer(axum::middleware::from_fn_with_state(
            Oversized {
                max_body_bytes,
                respond: |limit| {
                    (StatusCode::PAYLOAD_TOO_LARGE, format!("over {limit} bytes")).into_response()
                },
            },
            reject_oversized,
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, app, limits, std::future::pending()));
    addr
}

/// Reads until the peer closes or `limit` passes; the bytes read and whether it closed.
async fn read_all(stream: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), false),
        }
    }
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let addr = start(TEST_LIMITS, 1 << 20).await;
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let (_, closed) = read_all(&mut slow, Duration::from_secs(5)).await;
    assert!(closed, "slowloris still connected after 5 s");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_too() {
    let addr = start(TEST_LIMITS, 1 << 20).await;
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (text, closed) = read_all(&mut idle, Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(closed, "an idle connection holds its socket forever");
}

#[tokio::test]
async fn a_body_that_stops_coming_fails_the_request() {
    let addr = start(TEST_LIMITS, 1 << 20).await;
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        .await
        .unwrap();
    let (text, _) = read_all(&mut stalled, Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 4"), "{text}");
    assert!(text.contains("timeout"), "{text}");
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_until_one_closes() {
    let addr = start(
        Limits {
            header_read_timeout: Duration::from_secs(30),
            ..TEST_LIMITS
        },
        1 << 20,
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = TcpStream::connect(addr).await.unwrap();
    third
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (text, _) = read_all(&mut third, Duration::from_millis(500)).await;
    assert!(
        text.is_empty(),
        "served beyond the connection limit: {text}"
    );
    drop(held.pop());
    let (text, _) = read_all(&mut third, Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

/// A client that sends a 5 MiB body whole before it reads (Python's urllib does) reads its
/// 413; without the lingering read it got a connection reset.
#[tokio::test]
async fn a_large_body_sent_whole_reads_its_413() {
    let addr = start(Limits::DEFAULT, 16 * 1024).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    let body = vec![b'x'; 5 << 20];
    client
        .write_all(
            format!(
                "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    client
        .write_all(&body)
        .await
        .expect("the whole body is taken, not reset");
    let (text, _) = read_all(&mut client, Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("over 16384 bytes"), "{text}");
}

#[tokio::test]
async fn small_bodies_pass() {
    let addr = start(Limits::DEFAULT, 16 * 1024).await;
    let reply = reqwest::Client::new()
        .post(format!("http://{addr}/upload"))
        .body(vec![0u8; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    assert_eq!(reply.text().await.unwrap(), "1000");
}
