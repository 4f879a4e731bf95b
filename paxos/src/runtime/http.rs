//! The paxos process's HTTP routes: peers' messages and snapshots, the node's local calls, and
//! status, elect, shutdown, metrics and health.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes as BodyBytes;
use axum::extract::{Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::MAX_BODY_BYTES;
use super::driver::LocalRequest;
use crate::ballot::{NodeId, Slot};
use crate::messages::{Envelope, Message};
use crate::transfer::{Chunk, Received};
use crate::wire::{EntriesReply, MAX_PROPOSE_COMMANDS, ProposeReply};

#[derive(Clone)]
pub(super) struct HttpState {
    pub(super) requests: mpsc::Sender<LocalRequest>,
    pub(super) inbound: mpsc::Sender<Vec<Envelope>>,
    pub(super) tokens: plumbing::Tokens,
    pub(super) shutdown: CancellationToken,
    pub(super) metrics: Option<Arc<dyn Fn() -> String + Send + Sync>>,
    /// Where snapshots are staged before the driver records them.
    pub(super) snapshots: Arc<std::path::Path>,
    /// Cancelled the moment the driver task ends: `/healthz` fails from then on.
    pub(super) driver_gone: CancellationToken,
    /// This replica.
    pub(super) me: NodeId,
    /// The replica's contiguous decided index, as of the driver's last step.
    pub(super) decided: Arc<std::sync::atomic::AtomicU64>,
    /// Where snapshot chunks from peers are assembled.
    pub(super) incoming: Arc<std::path::Path>,
    /// The open inbound stream of each peer (by its `x-paxos-from`): a newer one cancels it.
    pub(super) streams:
        Arc<std::sync::Mutex<std::collections::HashMap<NodeId, (u64, CancellationToken)>>>,
    /// Largest frame of a peer stream.
    pub(super) max_frame: usize,
}

/// Liveness: false from the moment the driver is gone (the process is exiting).
async fn healthz(State(state): State<HttpState>) -> Response {
    if state.driver_gone.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "the paxos driver stopped").into_response();
    }
    "ok".into_response()
}

pub(super) fn router(state: HttpState, peer_body: usize) -> Router {
    Router::new()
        .route(
            "/peer/messages",
            post(peer_messages).layer(axum::extract::DefaultBodyLimit::max(peer_body)),
        )
        .route(
            "/peer/snapshot",
            post(peer_snapshot).layer(axum::extract::DefaultBodyLimit::max(peer_body)),
        )
        .route("/peer/stream", get(peer_stream))
        .route("/local/propose", post(propose))
        .route("/local/propose/stream", get(propose_stream))
        .route("/local/entries", get(entries))
        .route("/local/entries/stream", get(entries_stream))
        .route("/local/read_index", post(read_index))
        .route("/local/compact", post(compact))
        .route("/status", get(status))
        .route("/elect", post(elect))
        .route("/shutdown", post(shutdown))
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(
            state.tokens.clone(),
            plumbing::require_token,
        ))
        .layer(middleware::from_fn(trace_http))
        .with_state(state)
}

/// A server span for requests that are part of a trace (they carry `traceparent`): the node's
/// proposals and reads, a peer's messages for a traced slot. Polls and peer traffic of untraced
/// work start no traces of their own.
async fn trace_http(mut request: Request, next: Next) -> Response {
    use tracing::Instrument as _;
    if !request.headers().contains_key("traceparent") {
        return next.run(request).await;
    }
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(
            || request.uri().path().to_owned(),
            |p| p.as_str().to_owned(),
        );
    let method = request.method().as_str().to_owned();
    let span = telemetry::trace::http_server_span(&method, &route, request.headers_mut());
    let response = next.run(request).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    response
}

fn postcard_response<T: Serialize>(value: &T) -> Response {
    match postcard::to_stdvec(value) {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response(),
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response(),
    }
}

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "the paxos driver is not running",
    )
        .into_response()
}

async fn ask<T>(
    state: &HttpState,
    make: impl FnOnce(oneshot::Sender<T>) -> LocalRequest,
) -> Option<oneshot::Receiver<T>> {
    let (tx, rx) = oneshot::channel();
    state.requests.send(make(tx)).await.ok()?;
    Some(rx)
}

/// A chunk of a snapshot a peer sends this lagging replica (see [`crate::transfer`]): answers
/// the offset to send next; the last chunk hands the whole snapshot to the driver.
async fn peer_snapshot(
    State(state): State<HttpState>,
    headers: axum::http::HeaderMap,
    body: BodyBytes,
) -> Response {
    let Some(chunk) = Chunk::from_headers(&headers) else {
        return (StatusCode::BAD_REQUEST, "missing snapshot chunk headers").into_response();
    };
    if chunk.slot <= state.decided.load(std::sync::atomic::Ordering::Relaxed) {
        // Already past it (another peer's copy arrived first): the sender may stop.
        return chunk.total.to_string().into_response();
    }
    let (dir, me) = (state.incoming.clone(), state.me);
    let received =
        tokio::task::spawn_blocking(move || crate::transfer::receive(&dir, me, &chunk, &body))
            .await;
    match received {
        Ok(Ok(Received::Next(offset))) => offset.to_string().into_response(),
        Ok(Ok(Received::Complete(envelope))) => {
            let Message::CatchUpReply(reply) = &envelope.msg else {
                unreachable!("receive completes a catch-up reply")
            };
            let total = reply.snapshot.as_ref().map_or(0, |(_, d)| d.len());
            // Unlike ordinary messages this one is not dropped when the driver is busy: it is
            // the end of a long transfer.
            if state.inbound.send(vec![envelope]).await.is_err() {
                return unavailable();
            }
            metrics::counter!(crate::metrics::SNAPSHOTS_RECEIVED).increment(1);
            total.to_string().into_response()
        }
        Ok(Err(err)) => {
            tracing::warn!(error = %format!("{err:#}"), "snapshot chunk refused");
            (StatusCode::BAD_REQUEST, err.to_string()).into_response()
        }
        Err(_) => unavailable(),
    }
}

/// 400 unless `request` asks to upgrade to `protocol` (the one protocol of `route`).
fn refuse_other_upgrades(request: &Request, route: &str, protocol: &str) -> Option<Response> {
    let wanted = request
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes() == protocol.as_bytes());
    (!wanted).then(|| {
        (
            StatusCode::BAD_REQUEST,
            format!("GET {route} upgrades to {protocol} only"),
        )
            .into_response()
    })
}

/// The 101 answer that hands the connection over to `protocol`.
fn switching_to(protocol: &'static str) -> Response {
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, protocol)
        .body(axum::body::Body::empty())
        .expect("a valid response")
}

/// A peer's long-lived message stream: the request upgrades to
/// [`STREAM_PROTOCOL`](crate::transfer::STREAM_PROTOCOL), then carries length-delimited
/// frames of messages (see [`crate::transfer`]) until the peer closes it, it stays silent for
/// [`STREAM_IDLE`](crate::transfer::STREAM_IDLE), the same peer opens a newer one, or the
/// driver stops. Frames are handed to the driver in order; when it is behind, reading waits
/// (TCP pushes back on the sender) instead of dropping.
async fn peer_stream(State(state): State<HttpState>, mut request: Request) -> Response {
    use crate::transfer::{STREAM_FROM, STREAM_PROTOCOL};
    if let Some(refused) = refuse_other_upgrades(&request, "/peer/stream", STREAM_PROTOCOL) {
        return refused;
    }
    let from = request
        .headers()
        .get(STREAM_FROM)
        .and_then(|v| v.to_str().ok()?.parse::<NodeId>().ok());
    let upgrade = hyper::upgrade::on(&mut request);
    static STREAMS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let id = STREAMS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let stop = CancellationToken::new();
    if let Some(from) = from {
        let mut streams = state.streams.lock().expect("streams lock");
        if let Some((_, older)) = streams.insert(from, (id, stop.clone())) {
            older.cancel();
        }
    }
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else {
            return;
        };
        receive_stream(&state, hyper_util::rt::TokioIo::new(upgraded), &stop).await;
        if let Some(from) = from {
            let mut streams = state.streams.lock().expect("streams lock");
            if streams
                .get(&from)
                .is_some_and(|(current, _)| *current == id)
            {
                streams.remove(&from);
            }
        }
    });
    switching_to(STREAM_PROTOCOL)
}

/// Reads frames from `io` into the driver until the stream ends (see [`peer_stream`]).
async fn receive_stream(
    state: &HttpState,
    io: impl tokio::io::AsyncRead + Unpin,
    stop: &CancellationToken,
) {
    use futures::StreamExt as _;
    use tracing::Instrument as _;
    let mut frames =
        tokio_util::codec::FramedRead::new(io, crate::transfer::stream_codec(state.max_frame));
    loop {
        let frame = tokio::select! {
            () = stop.cancelled() => return,
            () = state.driver_gone.cancelled() => return,
            frame = tokio::time::timeout(crate::transfer::STREAM_IDLE, frames.next()) => frame,
        };
        let frame = match frame {
            Ok(Some(Ok(frame))) => frame,
            Ok(Some(Err(err))) => {
                tracing::debug!(error = %err, "peer stream broken");
                return;
            }
            Ok(None) => return,
            Err(_) => {
                tracing::debug!("peer stream silent too long; closed");
                return;
            }
        };
        let Some((trace, envelopes)) = crate::transfer::decode_frame(&frame) else {
            tracing::warn!("a peer stream frame that does not decode; stream closed");
            return;
        };
        if envelopes.is_empty() {
            continue;
        }
        let hand_over = state.inbound.send(envelopes);
        let handed = if trace.is_empty() {
            hand_over.await
        } else {
            let mut headers = axum::http::HeaderMap::new();
            for (name, value) in &trace {
                if let (Ok(name), Ok(value)) = (
                    axum::http::HeaderName::from_bytes(name.as_bytes()),
                    axum::http::HeaderValue::from_str(value),
                ) {
                    headers.insert(name, value);
                }
            }
            let parent = telemetry::trace::extract(&headers);
            match telemetry::trace::batch_span("paxos.peer_receive", [&parent]) {
                Some(span) => hand_over.instrument(span).await,
                None => hand_over.await,
            }
        };
        if handed.is_err() {
            return;
        }
    }
}

async fn peer_messages(State(state): State<HttpState>, body: BodyBytes) -> Response {
    let Ok(envelopes) = postcard::from_bytes::<Vec<Envelope>>(&body) else {
        return (StatusCode::BAD_REQUEST, "not a postcard Vec<Envelope>").into_response();
    };
    // Paxos tolerates loss: when the driver is behind, drop rather than queue without bound.
    if state.inbound.try_send(envelopes).is_err() {
        metrics::counter!(crate::metrics::MESSAGES_DROPPED, "reason" => "inbound_full")
            .increment(1);
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn propose(State(state): State<HttpState>, body: BodyBytes) -> Response {
    let Ok(commands) = postcard::from_bytes::<Vec<Bytes>>(&body) else {
        return (StatusCode::BAD_REQUEST, "not a postcard Vec<Bytes>").into_response();
    };
    if commands.is_empty() || commands.len() > MAX_PROPOSE_COMMANDS {
        return (StatusCode::BAD_REQUEST, "1 to 4096 commands per call").into_response();
    }
    let trace = telemetry::trace::current_sampled();
    metrics::counter!(crate::metrics::PROPOSALS, "via" => "http").increment(1);
    let Some(replies) = propose_and_wait(&state, commands, trace).await else {
        return unavailable();
    };
    postcard_response(&replies)
}

/// Hands `commands` to the driver and waits for their replies (`None`: the driver is gone and
/// nothing was proposed).
async fn propose_and_wait(
    state: &HttpState,
    commands: Vec<Bytes>,
    trace: Option<telemetry::trace::Context>,
) -> Option<Vec<ProposeReply>> {
    let count = commands.len();
    let rx = ask(state, |reply| LocalRequest::Propose {
        commands,
        trace,
        reply,
    })
    .await?;
    Some(replies_of(rx, count).await)
}

/// The replies to a proposal the driver holds: every answer is a reply, and a lost one is an
/// unknown outcome; after 5 s they are `Timeout` (the node learns the outcome from the log).
async fn replies_of(rx: oneshot::Receiver<Vec<ProposeReply>>, count: usize) -> Vec<ProposeReply> {
    match tokio::time::timeout(Duration::from_secs(5), rx).await {
        Ok(Ok(replies)) => replies,
        Ok(Err(_)) => vec![ProposeReply::OutcomeUnknown; count],
        Err(_) => vec![ProposeReply::Timeout; count],
    }
}

/// Frames of one propose stream waiting for their answers at once (a node keeps at most 32).
const MAX_PROPOSE_FRAMES_OUT: usize = 256;

/// `GET /local/propose/stream`, upgraded to
/// [`PROPOSE_STREAM_PROTOCOL`](crate::wire::PROPOSE_STREAM_PROTOCOL): the node's proposals as
/// frames on one connection instead of a `POST /local/propose` per batch. Each frame is
/// answered when its commands are (answers can overtake each other); a frame that does not
/// decode or holds no or too many commands ends the stream (the node then proposes over HTTP).
/// Unsampled work only: a sampled proposal keeps its `POST` and so its span.
async fn propose_stream(State(state): State<HttpState>, mut request: Request) -> Response {
    use crate::wire::{PROPOSE_STREAM_PROTOCOL, ProposeAnswer, ProposeFrame};
    if let Some(refused) =
        refuse_other_upgrades(&request, "/local/propose/stream", PROPOSE_STREAM_PROTOCOL)
    {
        return refused;
    }
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        use futures::{SinkExt, StreamExt as _};
        let Ok(upgraded) = upgrade.await else {
            return;
        };
        let (read, write) = tokio::io::split(hyper_util::rt::TokioIo::new(upgraded));
        let codec = || crate::transfer::stream_codec(MAX_BODY_BYTES);
        let mut frames = tokio_util::codec::FramedRead::new(read, codec());
        let mut answers = tokio_util::codec::FramedWrite::new(write, codec());
        // Answers queue here (bounded: a node that stops reading stops being answered, then
        // stops being read) and one writer sends them, several per flush when they pile up.
        // A step decides many frames' commands at once and each frame's answer comes from a
        // task of its own: `recv_burst` lets them all queue before one write carries them.
        let (queue, mut queued) = tokio::sync::mpsc::channel::<Bytes>(256);
        let writer = tokio::spawn(async move {
            let mut burst = Vec::with_capacity(256);
            while plumbing::recv_burst(&mut queued, &mut burst, 256).await > 0 {
                for answer in burst.drain(..) {
                    if answers.feed(answer).await.is_err() {
                        return;
                    }
                }
                if SinkExt::<Bytes>::flush(&mut answers).await.is_err() {
                    return;
                }
            }
        });
        // Frames being decided at once: past this the stream is not read until some are.
        let outstanding = Arc::new(tokio::sync::Semaphore::new(MAX_PROPOSE_FRAMES_OUT));
        let proposals = metrics::counter!(crate::metrics::PROPOSALS, "via" => "stream");
        loop {
            let Ok(permit) = outstanding.clone().acquire_owned().await else {
                break;
            };
            let frame = tokio::select! {
                () = state.driver_gone.cancelled() => break,
                frame = frames.next() => frame,
            };
            let Some(Ok(frame)) = frame else {
                break;
            };
            let Ok(ProposeFrame { id, commands }) = postcard::from_bytes(&frame) else {
                break;
            };
            if commands.is_empty() || commands.len() > MAX_PROPOSE_COMMANDS {
                break;
            }
            let count = commands.len();
            proposals.increment(1);
            // Asked here, in the order the frames came; answered from a task of its own.
            let Some(rx) = ask(&state, |reply| LocalRequest::Propose {
                commands,
                trace: None,
                reply,
            })
            .await
            else {
                break;
            };
            let queue = queue.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let replies = replies_of(rx, count).await;
                if let Ok(bytes) = postcard::to_stdvec(&ProposeAnswer { id, replies }) {
                    let _ = queue.send(Bytes::from(bytes)).await;
                }
            });
        }
        // Answers still owed are written as they come; the writer ends with the last of them.
        drop(queue);
        let _ = writer.await;
    });
    switching_to(PROPOSE_STREAM_PROTOCOL)
}

#[derive(Deserialize)]
struct EntriesQuery {
    from: Slot,
    max: Option<usize>,
    wait_ms: Option<u64>,
}

async fn entries(State(state): State<HttpState>, Query(q): Query<EntriesQuery>) -> Response {
    let max = q.max.unwrap_or(1_024).clamp(1, 16_384);
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(0).min(30_000));
    let from = q.from.max(1);
    let Some(rx) = ask(&state, |reply| LocalRequest::Entries {
        from,
        max,
        wait: !wait.is_zero(),
        reply,
    })
    .await
    else {
        return unavailable();
    };
    let reply = match tokio::time::timeout(wait.max(Duration::from_millis(1)), rx).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(_)) => return unavailable(),
        Err(_) => EntriesReply::Entries(Vec::new()),
    };
    postcard_response(&reply)
}

/// `GET /local/entries/stream?from=&max=`, upgraded to
/// [`ENTRIES_STREAM_PROTOCOL`](crate::wire::ENTRIES_STREAM_PROTOCOL): the decided log pushed to
/// the node as it grows, one frame per batch of entries (or the snapshot that replaced the
/// slots asked for), instead of a long poll per batch. A frame is written only once the last
/// one was taken by the socket, so a slow reader holds the stream back, not memory.
async fn entries_stream(
    State(state): State<HttpState>,
    Query(q): Query<EntriesQuery>,
    mut request: Request,
) -> Response {
    use crate::wire::{ENTRIES_KEEPALIVE, ENTRIES_STREAM_PROTOCOL};
    if let Some(refused) =
        refuse_other_upgrades(&request, "/local/entries/stream", ENTRIES_STREAM_PROTOCOL)
    {
        return refused;
    }
    let max = q.max.unwrap_or(4_096).clamp(1, 16_384);
    let mut from = q.from.max(1);
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        use futures::SinkExt as _;
        let Ok(upgraded) = upgrade.await else {
            return;
        };
        let mut frames = tokio_util::codec::FramedWrite::new(
            hyper_util::rt::TokioIo::new(upgraded),
            crate::transfer::stream_codec(MAX_BODY_BYTES),
        );
        loop {
            let Some(rx) = ask(&state, |reply| LocalRequest::Entries {
                from,
                max,
                wait: true,
                reply,
            })
            .await
            else {
                return;
            };
            let reply = tokio::select! {
                () = state.driver_gone.cancelled() => return,
                reply = tokio::time::timeout(ENTRIES_KEEPALIVE, rx) => match reply {
                    Ok(Ok(reply)) => reply,
                    Ok(Err(_)) => return,
                    Err(_) => EntriesReply::Entries(Vec::new()),
                },
            };
            let next = match &reply {
                EntriesReply::Entries(entries) => entries.last().map_or(from, |(slot, _)| slot + 1),
                EntriesReply::Snapshot { slot, .. } => slot + 1,
            };
            let Ok(bytes) = postcard::to_stdvec(&reply) else {
                return;
            };
            let timeout = super::peer_timeout(bytes.len()) + ENTRIES_KEEPALIVE;
            match tokio::time::timeout(timeout, frames.send(Bytes::from(bytes))).await {
                Ok(Ok(())) => from = next,
                // The node went away or stopped reading: it opens a new stream from its
                // applied index.
                _ => return,
            }
        }
    });
    switching_to(ENTRIES_STREAM_PROTOCOL)
}

async fn read_index(State(state): State<HttpState>) -> Response {
    let Some(rx) = ask(&state, |reply| LocalRequest::ReadIndex { reply }).await else {
        return unavailable();
    };
    match tokio::time::timeout(Duration::from_secs(2), rx).await {
        Ok(Ok(reply)) => postcard_response(&reply),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "no read point in time").into_response(),
    }
}

async fn compact(State(state): State<HttpState>, body: BodyBytes) -> Response {
    let Ok((slot, data)) = postcard::from_bytes::<(Slot, Bytes)>(&body) else {
        return (StatusCode::BAD_REQUEST, "not a postcard (Slot, Bytes)").into_response();
    };
    // Write and sync the snapshot here, beside the driver: the driver then only records it.
    let dir = state.snapshots.clone();
    let staged = {
        let data = data.clone();
        tokio::task::spawn_blocking(move || crate::storage::stage_snapshot(&dir, slot, &data)).await
    };
    match staged {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(slot, error = %e, "staging a snapshot failed");
            return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
        }
        Err(_) => return unavailable(),
    }
    match state
        .requests
        .send(LocalRequest::Compact { slot, data })
        .await
    {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(_) => unavailable(),
    }
}

async fn status(State(state): State<HttpState>) -> Response {
    let Some(rx) = ask(&state, |reply| LocalRequest::Status { reply }).await else {
        return unavailable();
    };
    match rx.await {
        Ok(reply) => Json(reply).into_response(),
        Err(_) => unavailable(),
    }
}

async fn elect(State(state): State<HttpState>) -> Response {
    let Some(rx) = ask(&state, |reply| LocalRequest::Elect { reply }).await else {
        return unavailable();
    };
    match rx.await {
        Ok(reply) => Json(reply).into_response(),
        Err(_) => unavailable(),
    }
}

async fn shutdown(State(state): State<HttpState>) -> &'static str {
    state.shutdown.cancel();
    "Server shut down..."
}

async fn metrics_text(State(state): State<HttpState>) -> Response {
    plumbing::metrics_response(state.metrics.as_deref())
}
