//! Test doubles shared by the paxos bank's tests (a dev-dependency only):
//!
//! - [`FakeApiServer`]: `kube::Client` over a `tower-test` mock that records every request
//!   (method, URI, content type, JSON body) and answers with what the test's handler returns:
//!   the exact calls a Kubernetes-facing component makes can be asserted, which is also the
//!   RBAC it needs;
//! - [`StubPaxos`]: three stub paxos processes on 127.0.0.2, .3 and .4 sharing one port, as
//!   pods do: `GET /status` names the leader, `POST /elect` makes the asked one lead at once;
//! - [`browser`]: headless Chromium, rendering a page and collecting its console.
#![deny(missing_docs)]

pub mod browser;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use axum::routing::{get, post};
use paxos::Mode;
use paxos::ballot::Ballot;
use paxos::core::{Metrics, Status};
use paxos::wire::StatusReply;

type Body = kube::client::Body;

/// One request the fake API server received.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    /// `GET`, `POST`, ...
    pub method: String,
    /// Path and query (an empty query's `?` removed).
    pub uri: String,
    /// The `content-type` header.
    pub content_type: Option<String>,
    /// The body, as JSON.
    pub body: Option<serde_json::Value>,
}

impl Call {
    /// The path, without the query.
    pub fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or(&self.uri)
    }

    /// `"METHOD uri"`: what a test compares against.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.uri)
    }
}

/// A Kubernetes `Status` object for an error answer.
pub fn status(code: u16, reason: &str, message: &str) -> serde_json::Value {
    serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "reason": reason, "code": code, "message": message,
    })
}

/// The fake API server: every request recorded, answered by the handler.
#[derive(Clone, Default)]
pub struct FakeApiServer {
    calls: Arc<Mutex<Vec<Call>>>,
}

impl FakeApiServer {
    /// Serves `handler`'s answers (status code, JSON body) until the client is dropped; the
    /// client's default namespace is `namespace`.
    pub fn start(
        namespace: &str,
        handler: impl Fn(&Call) -> (u16, serde_json::Value) + Send + 'static,
    ) -> (kube::Client, FakeApiServer) {
        let (service, mut handle) =
            tower_test::mock::pair::<http::Request<Body>, http::Response<Body>>();
        let fake = FakeApiServer::default();
        let calls = fake.calls.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.expect("request body");
                let call = Call {
                    method: parts.method.to_string(),
                    // kube writes `?` before an empty query on some verbs: not part of it.
                    uri: parts.uri.to_string().trim_end_matches('?').to_owned(),
                    content_type: (parts.headers.get(http::header::CONTENT_TYPE))
                        .map(|v| v.to_str().expect("content type").to_owned()),
                    body: (!bytes.is_empty())
                        .then(|| serde_json::from_slice(&bytes).expect("a JSON body")),
                };
                calls.lock().expect("calls").push(call.clone());
                let (status, reply) = handler(&call);
                let response = http::Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&reply).expect("JSON")))
                    .expect("a response");
                send.send_response(response);
            }
        });
        (kube::Client::new(service, namespace.to_owned()), fake)
    }

    /// Every request so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("calls").clone()
    }

    /// `"METHOD uri"` of every request so far.
    pub fn lines(&self) -> Vec<String> {
        self.calls().iter().map(Call::line).collect()
    }

    /// Forgets the requests so far.
    pub fn clear(&self) {
        self.calls.lock().expect("calls").clear();
    }
}

/// Stub paxos processes of three pods (ids 0, 1, 2 on 127.0.0.2, .3, .4), on one port.
pub struct StubPaxos {
    /// Their port.
    pub port: u16,
    /// Who leads now.
    pub leader: Arc<AtomicU32>,
    /// Every `POST /elect`, by id.
    pub elections: Arc<Mutex<Vec<u32>>>,
}

/// The pod IPs of the stub processes, by id.
pub const STUB_IPS: [&str; 3] = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];

/// What stub `id` answers to `GET /status` while `leader` leads.
pub fn status_reply(id: u32, leader: u32) -> StatusReply {
    StatusReply {
        mode: Mode::Leader,
        status: Status {
            id,
            leader: Some(leader),
            is_leader: id == leader,
            leading: Vec::new(),
            ballot: Ballot::new(7, leader),
            decided: 10,
            frontier: 10,
            compacted: 0,
            pending: 0,
            incarnation: 0,
        },
        metrics: Metrics::default(),
    }
}

impl StubPaxos {
    /// Starts the three, `leader` leading.
    pub async fn start(leader: u32) -> StubPaxos {
        let leader = Arc::new(AtomicU32::new(leader));
        let elections = Arc::new(Mutex::new(Vec::new()));
        'port: for _ in 0..20 {
            let first = tokio::net::TcpListener::bind((STUB_IPS[0], 0))
                .await
                .expect("binding 127.0.0.2");
            let port = first.local_addr().expect("address").port();
            let mut listeners = vec![first];
            for ip in &STUB_IPS[1..] {
                let ip: IpAddr = ip.parse().expect("an IP");
                match tokio::net::TcpListener::bind((ip, port)).await {
                    Ok(listener) => listeners.push(listener),
                    Err(_) => continue 'port,
                }
            }
            for (id, listener) in listeners.into_iter().enumerate() {
                let id = id as u32;
                let (lead, elect) = (leader.clone(), elections.clone());
                let app = axum::Router::new()
                    .route(
                        "/status",
                        get({
                            let lead = lead.clone();
                            move || async move {
                                axum::Json(status_reply(id, lead.load(Ordering::SeqCst)))
                            }
                        }),
                    )
                    .route(
                        "/elect",
                        post(move || async move {
                            elect.lock().expect("elections").push(id);
                            lead.store(id, Ordering::SeqCst);
                            axum::Json(status_reply(id, id))
                        }),
                    );
                tokio::spawn(async move { axum::serve(listener, app).await });
            }
            return StubPaxos {
                port,
                leader,
                elections,
            };
        }
        panic!("no port free on 127.0.0.2-4");
    }
}
