use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use http_body_util::BodyExt as _;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower_http::add_extension::AddExtension;
use tower_http::timeout::RequestBodyTimeoutLayer;

/// What one listener allows a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest wait for a request's headers, from the first byte read (or from the end of the
    /// previous response on a kept-alive connection); then the connection is closed.
    pub header_read_timeout: Duration,
    /// Longest pause while reading a request body; then the request fails (4xx).
    pub body_read_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Longest wait for requests in flight once shutdown begins.
    pub shutdown_grace: Duration,
}

impl Limits {
    /// Every listener of the bank: 30 s to send a request's headers (hyper's own default, once
    /// a timer is set: `axum::serve` sets none, so a slow client held its socket forever), 30 s
    /// of body silence, 4,096 connections. Clients of these ports keep idle pooled connections
    /// for less than 30 s, so the server never closes one they are about to reuse.
    pub const DEFAULT: Limits = Limits {
        header_read_timeout: Duration::from_secs(30),
        body_read_timeout: Duration::from_secs(30),
        max_connections: 4_096,
        shutdown_grace: Duration::from_secs(10),
    };
}

/// The client connection a request came on: a request extension on every request [`serve`]
/// hands its router (a load balancer that keeps each connection on one backend reads it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connection {
    /// 1 for the listener's first connection, then counting up.
    pub id: u64,
}

/// Serves `app` on `listener` with `limits` until `shutdown` completes, then waits (at most
/// `limits.shutdown_grace`) for the requests in flight.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = app.layer(RequestBodyTimeoutLayer::new(limits.body_read_timeout));
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let builder = Arc::new(builder);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut next_connection = 0;
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, _remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        next_connection += 1;
        let connection = Connection {
            id: next_connection,
        };
        let service = TowerToHyperService::new(AddExtension::new(app.clone(), connection));
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after the shutdown grace period");
    }
    Ok(())
}

/// Bytes of an oversized body read and thrown away before answering 413 (nginx's lingering
/// close does the same), so a client that sends the whole body first can read the answer.
pub const LINGER_BYTES: u64 = 16 << 20;

/// Longest time spent reading an oversized body before answering 413 anyway.
pub const LINGER_TIME: Duration = Duration::from_secs(5);

/// The state of [`reject_oversized`]: the largest body accepted and the 413 to answer.
#[derive(Clone)]
pub struct Oversized {
    /// Largest accepted `Content-Length`.
    pub max_body_bytes: u64,
    /// The answer, given the limit.
    pub respond: fn(u64) -> Response,
}

/// Middleware: a request whose `Content-Length` exceeds the limit is answered by
/// `Oversized::respond` after its body has been read and dropped (up to [`LINGER_BYTES`] or
/// [`LINGER_TIME`], whichever comes first; a larger body then gets the answer and a closed
/// connection). Bodies without a length are left to the handler's own limit.
pub async fn reject_oversized(
    State(limit): State<Oversized>,
    request: Request,
    next: Next,
) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let Some(declared) = declared.filter(|d| *d > limit.max_body_bytes) else {
        return next.run(request).await;
    };
    let mut body = request.into_body();
    let mut drained: u64 = 0;
    let drain = async {
        while drained < LINGER_BYTES.min(declared) {
            match body.frame().await {
                Some(Ok(frame)) => {
                    drained += frame.data_ref().map_or(0, |d| d.len() as u64);
                }
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
    let mut response = (limit.respond)(limit.max_body_bytes);
    if drained < declared {
        // The rest is still coming: the connection cannot be reused.
        response.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    response
}
