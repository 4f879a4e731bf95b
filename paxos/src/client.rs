//! The one way to call a `paxos` process: its node-facing calls (propose, entries, read index,
//! compact) and its operator calls (status, elect, metrics), over the wire types of
//! [`crate::wire`]. Used by the node, the testbed's front door, the load test and the tests.
//!
//! ```no_run
//! # async fn example() -> Result<(), paxos::client::ClientError> {
//! use paxos::client::PaxosClient;
//!
//! let paxos = PaxosClient::new("http://127.0.0.1:7001", "the-cluster-token-0123")?;
//! let status = paxos.status().await?;
//! println!("replica {} of a {} cluster: leader {:?}", status.status.id, status.mode, status.status.leader);
//! if !status.status.is_leader {
//!     let after = paxos.elect().await?; // leader mode: start an election here
//!     println!("ballot now {}", after.status.ballot);
//! }
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::ballot::Slot;
use crate::wire::{EntriesReply, ProposeReply, ReadIndexReply, StatusReply};

/// How a call failed. The three kinds matter to a caller that proposed something: only
/// [`ClientError::NotSent`] and [`ClientError::Refused`] mean the process did nothing.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The request never left (no connection, a bad URL): the process did nothing.
    #[error("paxos at {url} is unreachable: {reason}")]
    NotSent {
        /// The URL called.
        url: String,
        /// Why.
        reason: String,
    },
    /// The process answered with an error status before acting on the request (every route
    /// checks the token and the body before it proposes anything).
    #[error("paxos at {url} answered {status}: {body}")]
    Refused {
        /// The URL called.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The start of the answer's body.
        body: String,
    },
    /// The request may have been handled, but its answer was lost, cut short or garbled.
    #[error("paxos at {url}: the answer was lost: {detail}")]
    AnswerLost {
        /// The URL called.
        url: String,
        /// What went wrong.
        detail: String,
    },
}

impl ClientError {
    /// True if the process certainly did nothing with the request.
    pub fn nothing_happened(&self) -> bool {
        !matches!(self, ClientError::AnswerLost { .. })
    }
}

/// A client of one paxos process. Cheap to clone (the connection pool is shared).
#[derive(Clone, Debug)]
pub struct PaxosClient {
    http: reqwest::Client,
    base: Arc<str>,
    token: Arc<str>,
}

/// The longest any call waits unless the caller bounds it (a long poll of entries waits at most
/// its `wait_ms` on the server, well below this).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

impl PaxosClient {
    /// A client of the process at `base` (`http://host:port`), carrying the cluster `token`,
    /// with its own connection pool.
    pub fn new(base: &str, token: impl Into<Arc<str>>) -> Result<PaxosClient, ClientError> {
        let http = reqwest::Client::builder()
            .pool_idle_timeout(plumbing::CLIENT_POOL_IDLE)
            .pool_max_idle_per_host(64)
            .timeout(DEFAULT_TIMEOUT)
            .build()
            .map_err(|err| ClientError::NotSent {
                url: base.to_owned(),
                reason: err.to_string(),
            })?;
        Ok(PaxosClient::with_http(http, base, token))
    }

    /// A client sharing an existing connection pool.
    pub fn with_http(http: reqwest::Client, base: &str, token: impl Into<Arc<str>>) -> PaxosClient {
        PaxosClient {
            http,
            base: base.trim_end_matches('/').into(),
            token: token.into(),
        }
    }

    /// The process's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `GET /status`: role, leader, ballot, decided index and counters.
    pub async fn status(&self) -> Result<StatusReply, ClientError> {
        let url = self.url("/status");
        self.json(self.http.get(&url), &url).await
    }

    /// `POST /elect`: leader mode, start an election at this replica now (what the prober does
    /// when the leader is sick); answers the status right after.
    pub async fn elect(&self) -> Result<StatusReply, ClientError> {
        let url = self.url("/elect");
        self.json(self.http.post(&url), &url).await
    }

    /// `GET /metrics`: the Prometheus text.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let url = self.url("/metrics");
        let bytes = self.bytes(self.http.get(&url), &url).await?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// `POST /local/propose`: proposes `commands` (opaque bytes) and answers one
    /// [`ProposeReply`] each, once every one is decided here, handed back or refused. Carries
    /// the current trace.
    pub async fn propose(&self, commands: &[Bytes]) -> Result<Vec<ProposeReply>, ClientError> {
        let body = encode(&self.url("/local/propose"), &commands)?;
        self.postcard_call("/local/propose", body).await
    }

    /// `GET /local/entries`: up to `max` decided entries from slot `from`, waiting up to `wait`
    /// for the first one; or the snapshot that replaced those slots.
    pub async fn entries(
        &self,
        from: Slot,
        max: usize,
        wait: Duration,
    ) -> Result<EntriesReply, ClientError> {
        let url = self.url(&format!(
            "/local/entries?from={from}&max={max}&wait_ms={}",
            wait.as_millis()
        ));
        let bytes = self.bytes(self.http.get(&url), &url).await?;
        decode(&url, &bytes)
    }

    /// `GET /local/entries/stream`: the decided log from slot `from` on, pushed as it grows
    /// (batches of at most `max` entries, or the snapshot that replaced the slots asked for;
    /// an empty batch now and then when nothing was decided). The stream ends (`None` or an
    /// error) when the process goes away or stays silent for three keepalive periods; open a
    /// new one from where the application got to.
    pub async fn entries_stream(
        &self,
        from: Slot,
        max: usize,
    ) -> Result<EntriesStream, ClientError> {
        use crate::wire::ENTRIES_STREAM_PROTOCOL;
        let url = self.url(&format!("/local/entries/stream?from={from}&max={max}"));
        let upgraded = self.upgrade(&url, ENTRIES_STREAM_PROTOCOL).await?;
        Ok(EntriesStream {
            frames: tokio_util::codec::FramedRead::new(
                upgraded,
                crate::transfer::stream_codec(crate::runtime::MAX_BODY_BYTES),
            ),
            url,
        })
    }

    /// `GET /local/propose/stream`: a connection that carries proposals as frames instead of a
    /// `POST /local/propose` each (see [`ProposeStream`]). A process that does not serve it
    /// refuses (`ClientError::Refused`, 404).
    pub async fn propose_stream(&self) -> Result<ProposeStream, ClientError> {
        use crate::wire::PROPOSE_STREAM_PROTOCOL;
        let url = self.url("/local/propose/stream");
        let upgraded = self.upgrade(&url, PROPOSE_STREAM_PROTOCOL).await?;
        let (requests, queued) = tokio::sync::mpsc::channel(64);
        tokio::spawn(run_propose_stream(upgraded, queued));
        Ok(ProposeStream {
            requests,
            url: url.into(),
        })
    }

    /// A `GET` of `url` upgraded to `protocol`.
    async fn upgrade(&self, url: &str, protocol: &str) -> Result<reqwest::Upgraded, ClientError> {
        let request = self
            .http
            .get(url)
            .header(reqwest::header::CONNECTION, "upgrade")
            .header(reqwest::header::UPGRADE, protocol);
        let response = self.send(request, url).await?;
        let status = response.status();
        if status != reqwest::StatusCode::SWITCHING_PROTOCOLS {
            let body = response.text().await.unwrap_or_default();
            return Err(ClientError::Refused {
                url: url.to_owned(),
                status: status.as_u16(),
                body: body.chars().take(200).collect(),
            });
        }
        response
            .upgrade()
            .await
            .map_err(|err| ClientError::AnswerLost {
                url: url.to_owned(),
                detail: err.to_string(),
            })
    }

    /// `POST /local/read_index`: a linearizable read point (leader mode, at the leader).
    pub async fn read_index(&self) -> Result<ReadIndexReply, ClientError> {
        self.postcard_call("/local/read_index", Vec::new()).await
    }

    /// `POST /local/compact` with a body made by [`encode_compact`]: every slot up to the
    /// body's slot is replaced by the application snapshot it carries.
    pub async fn compact(&self, body: Vec<u8>) -> Result<(), ClientError> {
        let url = self.url("/local/compact");
        let request = self
            .http
            .post(&url)
            .header("content-type", "application/octet-stream")
            .body(body);
        self.bytes(request, &url).await.map(drop)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn postcard_call<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: Vec<u8>,
    ) -> Result<T, ClientError> {
        let url = self.url(path);
        let request = self
            .http
            .post(&url)
            .header("content-type", "application/octet-stream")
            .headers(telemetry::trace::current_headers())
            .body(body);
        let bytes = self.bytes(request, &url).await?;
        decode(&url, &bytes)
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<T, ClientError> {
        let bytes = self.bytes(request, url).await?;
        serde_json::from_slice(&bytes).map_err(|err| ClientError::AnswerLost {
            url: url.to_owned(),
            detail: err.to_string(),
        })
    }

    async fn bytes(
        &self,
        request: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<Bytes, ClientError> {
        let response = self.send(request, url).await?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(ClientError::Refused {
                url: url.to_owned(),
                status: status.as_u16(),
                body: body.chars().take(200).collect(),
            });
        }
        response
            .bytes()
            .await
            .map_err(|err| ClientError::AnswerLost {
                url: url.to_owned(),
                detail: err.to_string(),
            })
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<reqwest::Response, ClientError> {
        request
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|err| {
                let (url, reason) = (url.to_owned(), err.to_string());
                if err.is_connect() || err.is_builder() {
                    ClientError::NotSent { url, reason }
                } else {
                    ClientError::AnswerLost {
                        url,
                        detail: reason,
                    }
                }
            })
    }
}

/// The decided log pushed by a paxos process (see [`PaxosClient::entries_stream`]).
pub struct EntriesStream {
    frames:
        tokio_util::codec::FramedRead<reqwest::Upgraded, tokio_util::codec::LengthDelimitedCodec>,
    url: String,
}

impl EntriesStream {
    /// The next batch; `Ok(None)` when the process closed the stream; an error when a frame
    /// does not decode or nothing came for three keepalive periods.
    pub async fn next(&mut self) -> Result<Option<EntriesReply>, ClientError> {
        use futures::StreamExt as _;
        let silence = crate::wire::ENTRIES_KEEPALIVE * 3;
        let frame = tokio::time::timeout(silence, self.frames.next())
            .await
            .map_err(|_| ClientError::AnswerLost {
                url: self.url.clone(),
                detail: format!("nothing for {} ms", silence.as_millis()),
            })?;
        match frame {
            None => Ok(None),
            Some(Err(err)) => Err(ClientError::AnswerLost {
                url: self.url.clone(),
                detail: err.to_string(),
            }),
            Some(Ok(frame)) => decode(&self.url, &frame).map(Some),
        }
    }

    /// The next batch if one has already arrived, without waiting (`None`: nothing yet).
    pub fn ready(&mut self) -> Option<Result<Option<EntriesReply>, ClientError>> {
        use futures::FutureExt as _;
        self.next().now_or_never()
    }
}

type Proposal = (Vec<Bytes>, tokio::sync::oneshot::Sender<Vec<ProposeReply>>);

/// Proposals on one upgraded connection to a paxos process (see
/// [`PaxosClient::propose_stream`]); cheap to clone, every clone on the same connection.
#[derive(Clone)]
pub struct ProposeStream {
    requests: tokio::sync::mpsc::Sender<Proposal>,
    url: Arc<str>,
}

impl ProposeStream {
    /// Proposes `commands` (1 to [`MAX_PROPOSE_COMMANDS`](crate::wire::MAX_PROPOSE_COMMANDS))
    /// and answers one [`ProposeReply`] each, as `POST /local/propose` does.
    /// `ClientError::NotSent` if the connection had already ended (nothing was sent: propose
    /// another way); `ClientError::AnswerLost` if it ended once the commands may have left, or
    /// no answer came within [`DEFAULT_TIMEOUT`].
    pub async fn propose(&self, commands: Vec<Bytes>) -> Result<Vec<ProposeReply>, ClientError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        if self.requests.send((commands, reply)).await.is_err() {
            return Err(ClientError::NotSent {
                url: self.url.to_string(),
                reason: "the propose stream has ended".into(),
            });
        }
        match tokio::time::timeout(DEFAULT_TIMEOUT, answer).await {
            Ok(Ok(replies)) => Ok(replies),
            Ok(Err(_)) => Err(ClientError::AnswerLost {
                url: self.url.to_string(),
                detail: "the propose stream ended before the answer".into(),
            }),
            Err(_) => Err(ClientError::AnswerLost {
                url: self.url.to_string(),
                detail: format!("no answer in {} s", DEFAULT_TIMEOUT.as_secs()),
            }),
        }
    }

    /// The connection has ended: proposals would be `NotSent`.
    pub fn is_closed(&self) -> bool {
        self.requests.is_closed()
    }
}

/// Writes the proposals queued on `queued` as frames (several per flush when they pile up) and
/// hands each answer to its proposer, until the connection or every handle goes away; the
/// proposals then waiting are dropped (their proposers learn `AnswerLost`).
async fn run_propose_stream(
    upgraded: reqwest::Upgraded,
    mut queued: tokio::sync::mpsc::Receiver<Proposal>,
) {
    use crate::wire::{ProposeAnswer, ProposeFrame};
    use futures::{SinkExt, StreamExt as _};
    let (read, write) = tokio::io::split(upgraded);
    let codec = || crate::transfer::stream_codec(crate::runtime::MAX_BODY_BYTES);
    let mut answers = tokio_util::codec::FramedRead::new(read, codec());
    let mut frames = tokio_util::codec::FramedWrite::new(write, codec());
    let mut waiting = std::collections::HashMap::new();
    let mut next_id: u64 = 0;
    loop {
        tokio::select! {
            proposal = queued.recv() => {
                let Some(first) = proposal else { return };
                // Batches that became ready together all go in one write (see `plumbing::burst`).
                let mut burst = vec![first];
                plumbing::take_the_rest(&mut queued, &mut burst, 255).await;
                for (commands, reply) in burst {
                    let id = next_id;
                    next_id += 1;
                    let Ok(frame) = postcard::to_stdvec(&ProposeFrame { id, commands }) else {
                        return;
                    };
                    waiting.insert(id, reply);
                    if frames.feed(Bytes::from(frame)).await.is_err() {
                        return;
                    }
                }
                if SinkExt::<Bytes>::flush(&mut frames).await.is_err() {
                    return;
                }
                if waiting.len() > 1_024 {
                    // Proposers that gave up (timed out) no longer wait.
                    waiting.retain(|_, reply: &mut tokio::sync::oneshot::Sender<_>| !reply.is_closed());
                }
            }
            answer = answers.next() => {
                let Some(Ok(answer)) = answer else { return };
                let Ok(ProposeAnswer { id, replies }) = postcard::from_bytes(&answer) else {
                    return;
                };
                if let Some(reply) = waiting.remove(&id) {
                    let _ = reply.send(replies);
                }
            }
        }
    }
}

/// Asks every paxos process in `urls` for its status at once, each given `timeout`: the
/// replies of those that answered. How the prober and chaos find the leader of a cluster whose
/// processes they reach directly (Kubernetes pods); see [`leader_of`].
pub async fn survey(
    http: &reqwest::Client,
    token: &str,
    urls: &[String],
    timeout: Duration,
) -> Vec<StatusReply> {
    let token: Arc<str> = Arc::from(token);
    let mut asks = tokio::task::JoinSet::new();
    for url in urls {
        let paxos = PaxosClient::with_http(http.clone(), url, token.clone());
        asks.spawn(async move { tokio::time::timeout(timeout, paxos.status()).await });
    }
    let mut replies = Vec::new();
    while let Some(answer) = asks.join_next().await {
        if let Ok(Ok(Ok(reply))) = answer {
            replies.push(reply);
        }
    }
    replies
}

/// The leader among `replies`: a process that says it leads; if several do, a stale one has not
/// heard of the newer ballot yet, so the one with the highest ballot.
pub fn leader_of(replies: &[StatusReply]) -> Option<u32> {
    (replies.iter())
        .filter(|r| r.status.is_leader)
        .max_by_key(|r| r.status.ballot)
        .map(|r| r.status.id)
}

/// The body of `POST /local/compact`: the last slot the snapshot covers and the application's
/// bytes. Encoding a large snapshot is CPU work: call it off the async workers.
pub fn encode_compact(slot: Slot, data: &Bytes) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_stdvec(&(slot, data))
}

fn encode<T: serde::Serialize>(url: &str, value: &T) -> Result<Vec<u8>, ClientError> {
    postcard::to_stdvec(value).map_err(|err| ClientError::NotSent {
        url: url.to_owned(),
        reason: format!("encoding the request: {err}"),
    })
}

fn decode<T: serde::de::DeserializeOwned>(url: &str, bytes: &[u8]) -> Result<T, ClientError> {
    postcard::from_bytes(bytes).map_err(|err| ClientError::AnswerLost {
        url: url.to_owned(),
        detail: format!("decoding the answer: {err}"),
    })
}
