//! The HTTP API: the original system's public banking endpoints and the internal admin port.
//!
//! [`public_router`] serves clients (the original paths and JSON, plus `/healthz`, `/readyz`,
//! `/openapi.json` and the web page); [`internal_router`] serves operators and peers and needs
//! the cluster token on every route.

pub mod error;
mod page;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{FromRequest, MatchedPath, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;
use utoipa::{OpenApi, ToSchema};

use crate::command::{AccountId, Command, IdempotencyKey, Operation, Outcome};
use crate::log::{Log, Route};
use crate::money::{JsonMoney, Money};
use crate::store::Store;
pub use error::{AppError, ErrorBody};

/// Everything the public handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The node's store (reads).
    pub store: Arc<dyn Store>,
    /// The way into the log (writes).
    pub log: Arc<dyn Log>,
    /// Forwards requests to the leader (leader mode followers).
    pub forwarder: reqwest::Client,
    /// How long a write waits for its outcome before answering `outcome_unknown`.
    pub request_timeout: Duration,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
}

/// Everything the internal handlers share.
#[derive(Clone)]
pub struct InternalState {
    /// The public state (for readiness).
    pub app: AppState,
    /// The cluster token every internal request must carry, and the read-only metrics token.
    pub tokens: plumbing::Tokens,
    /// Cancelled by `POST /shutdown`.
    pub shutdown: CancellationToken,
    /// Renders `/metrics`.
    pub metrics: Option<metrics_render::Render>,
}

/// Renders the Prometheus text exposition.
pub mod metrics_render {
    /// A function producing the current metrics text.
    pub type Render = std::sync::Arc<dyn Fn() -> String + Send + Sync>;
}

/// The public (client) router.
pub fn public_router(state: AppState) -> Router {
    let limit = state.max_body_bytes;
    // Shared behind one `Arc`: axum clones the state for every request and middleware layer,
    // and a clone of the fields themselves is an atomic increment (and, dropped, a decrement) on
    // every `Arc` inside, some of whose counters other threads touch too.
    let state = Arc::new(state);
    Router::new()
        .route("/", get(page::accounts_page))
        .route("/open_account", post(open_account))
        .route("/deposit_money", post(deposit_money))
        .route("/withdraw_money", post(withdraw_money))
        .route("/move_money", post(move_money))
        .route("/check_account", get(check_account))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi_json))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            forward_to_leader,
        ))
        .layer(middleware::from_fn_with_state(
            plumbing::Oversized {
                max_body_bytes: limit as u64,
                respond: |_| AppError::PayloadTooLarge.into_response(),
            },
            plumbing::reject_oversized,
        ))
        .layer(middleware::from_fn(track_http))
        .with_state(state)
}

/// The public routes of the bank, as metric and span labels.
pub const API_ROUTES: [&str; 9] = [
    "/",
    "/open_account",
    "/deposit_money",
    "/withdraw_money",
    "/move_money",
    "/check_account",
    "/healthz",
    "/readyz",
    "/openapi.json",
];

/// The method of a bank route (the writes are POSTs, the rest GETs), for metric labels.
pub fn route_method(route: &str) -> &'static str {
    match route {
        "/open_account" | "/deposit_money" | "/withdraw_money" | "/move_money" => "POST",
        _ => "GET",
    }
}

/// Marks a request forwarded by a follower, so it is never forwarded twice.
pub const FORWARDED_HEADER: &str = "x-bank-forwarded-by";

const FORWARDED_ROUTES: [&str; 5] = [
    "/open_account",
    "/deposit_money",
    "/withdraw_money",
    "/move_money",
    "/check_account",
];

/// Leader mode: a follower hands banking requests to the leader unchanged and relays the answer,
/// so any node is a valid entry point. Local reads (`consistency=local`) stay here.
async fn forward_to_leader(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    let local_read = request
        .uri()
        .query()
        .is_some_and(|q| q.contains("consistency=local"));
    if !FORWARDED_ROUTES.contains(&path) || local_read {
        return next.run(request).await;
    }
    match state.log.route() {
        Route::Here => next.run(request).await,
        Route::NoLeader => AppError::NoLeader.into_response(),
        Route::Forward(_) if request.headers().contains_key(FORWARDED_HEADER) => {
            // The sender thought we lead; we think otherwise. Let the client retry.
            AppError::NoLeader.into_response()
        }
        Route::Forward(leader) => {
            let write = request.method() != axum::http::Method::GET;
            match forward(&state, &leader, request).await {
                Ok(response) => response,
                Err(err) => {
                    tracing::debug!(err = %err.error, %leader, "forwarding to the leader failed");
                    // A write the leader may have received may have been applied: only "retry
                    // with the same key" is safe advice then.
                    if err.sent && write {
                        AppError::OutcomeUnknown.into_response()
                    } else {
                        AppError::Unavailable.into_response()
                    }
                }
            }
        }
    }
}

/// Why forwarding failed, and whether the request may have reached the leader.
struct ForwardError {
    error: anyhow::Error,
    sent: bool,
}

fn not_sent(error: impl Into<anyhow::Error>) -> ForwardError {
    ForwardError {
        error: error.into(),
        sent: false,
    }
}

/// A failure of a request that left: `sent` unless the connection was never made.
fn maybe_sent(error: reqwest::Error) -> ForwardError {
    ForwardError {
        sent: !error.is_connect() && !error.is_builder(),
        error: error.into(),
    }
}

async fn forward(
    state: &AppState,
    leader: &str,
    request: Request,
) -> Result<Response, ForwardError> {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, state.max_body_bytes)
        .await
        .map_err(|_| not_sent(anyhow::anyhow!("body too large")))?;
    let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let url = format!("{}{}", leader.trim_end_matches('/'), path_and_query);
    let mut outgoing = state
        .forwarder
        .request(parts.method.clone(), url)
        .header(FORWARDED_HEADER, "1")
        .body(body);
    for name in [
        header::CONTENT_TYPE,
        header::HeaderName::from_static("idempotency-key"),
        header::HeaderName::from_static("traceparent"),
        header::HeaderName::from_static("tracestate"),
    ] {
        if let Some(value) = parts.headers.get(&name) {
            outgoing = outgoing.header(name, value.clone());
        }
    }
    // When this process traces, the leader's span becomes a child of this follower's span
    // (replacing the client's traceparent copied above); otherwise the client's passes through.
    outgoing = outgoing.headers(telemetry::trace::current_headers());
    let reply = outgoing
        .timeout(state.request_timeout + Duration::from_secs(1))
        .send()
        .await
        .map_err(maybe_sent)?;
    let status = reply.status();
    let content_type = reply.headers().get(header::CONTENT_TYPE).cloned();
    let retry_after = reply.headers().get(header::RETRY_AFTER).cloned();
    let bytes = reply.bytes().await.map_err(|error| ForwardError {
        error: error.into(),
        sent: true,
    })?;
    let mut response = (status, bytes).into_response();
    if let Some(ct) = content_type {
        response.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    if let Some(ra) = retry_after {
        response.headers_mut().insert(header::RETRY_AFTER, ra);
    }
    Ok(response)
}

/// The internal (admin) router; every route needs `Authorization: Bearer <cluster token>`.
pub fn internal_router(state: InternalState) -> Router {
    Router::new()
        .route("/shutdown", post(shutdown))
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(internal_healthz))
        .route("/readyz", get(internal_readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.tokens.clone(),
            plumbing::require_token,
        ))
        .layer(middleware::from_fn(track_internal_http))
        .with_state(state)
}

/// HTTP RED metrics (requests by route, method and status, and their durations) and the
/// request's server span, a child of the caller's `traceparent` when it sent one (also used by
/// the testbed's front door).
pub async fn track_http(request: Request, next: Next) -> Response {
    track(request, next, true).await
}

/// [`track_http`] for internal ports: the same metrics, but a span only for requests that are
/// already part of a trace (scrapes and health checks would otherwise start traces of their own).
pub async fn track_internal_http(request: Request, next: Next) -> Response {
    track(request, next, false).await
}

async fn track(mut request: Request, next: Next, always_trace: bool) -> Response {
    use tracing::Instrument as _;
    static SERIES: std::sync::LazyLock<crate::metrics::HttpSeries> =
        std::sync::LazyLock::new(Default::default);
    let started = Instant::now();
    let matched = request.extensions().get::<MatchedPath>().cloned();
    let route = match &matched {
        Some(matched) => matched.as_str(),
        // A proxy's fallback (the front door): name the bank's routes, lump the rest together
        // so the label stays low-cardinality.
        None => API_ROUTES
            .iter()
            .find(|r| **r == request.uri().path())
            .copied()
            .unwrap_or("unmatched"),
    };
    let method = crate::metrics::method_label(request.method());
    // Probes (the front door polls readiness every 100 ms) start no traces of their own.
    let probe = matches!(route, "/healthz" | "/readyz" | "/metrics");
    let span = ((always_trace && !probe) || request.headers().contains_key("traceparent"))
        .then(|| telemetry::trace::http_server_span(method, route, request.headers_mut()));
    let response = match &span {
        Some(span) => next.run(request).instrument(span.clone()).await,
        None => next.run(request).await,
    };
    let status = response.status().as_u16();
    if let Some(span) = span {
        span.record("http.response.status_code", status);
    }
    SERIES.record(route, method, status, started.elapsed().as_secs_f64());
    response
}

async fn not_found() -> AppError {
    AppError::NotFound
}

async fn method_not_allowed() -> AppError {
    AppError::MethodNotAllowed
}

/// A JSON request body: checks the content type, the size and the shape, with clear errors.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = AppError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(request.headers()) {
            return Err(AppError::UnsupportedMediaType);
        }
        let bytes = read_body(request, state).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|mime| {
            let mime = mime.trim().to_ascii_lowercase();
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        })
        .unwrap_or(false)
}

async fn read_body<S: Send + Sync>(request: Request, state: &S) -> Result<Bytes, AppError> {
    Bytes::from_request(request, state)
        .await
        .map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                AppError::PayloadTooLarge
            } else {
                AppError::InvalidRequest("could not read the request body".to_owned())
            }
        })
}

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, AppError> {
    serde_json::from_slice(bytes).map_err(|err| match err.classify() {
        serde_json::error::Category::Data => AppError::InvalidRequest(err.to_string()),
        _ => AppError::MalformedJson(err.to_string()),
    })
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, AppError> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(IdempotencyKey::parse)
            .map(Some)
            .ok_or(AppError::InvalidIdempotencyKey),
    }
}

fn parse_account(field: &'static str, text: &str) -> Result<AccountId, AppError> {
    text.parse()
        .map_err(|_| AppError::InvalidAccountId { field })
}

/// Runs one write: answers a known idempotency key from the store, otherwise goes through the
/// log and waits (bounded) for the outcome.
async fn execute(
    state: &AppState,
    op: Operation,
    key: Option<IdempotencyKey>,
) -> Result<Outcome, AppError> {
    if let Some(key) = &key
        && let Some(record) = state.store.idempotency(key).await?
    {
        if record.request != op.fingerprint() {
            return Err(AppError::Rejected(
                crate::command::Rejection::IdempotencyKeyReused,
            ));
        }
        return Ok(record.outcome);
    }
    let command = Command {
        op,
        idempotency_key: key,
        request_id: None,
    };
    match tokio::time::timeout(state.request_timeout, state.log.submit(command)).await {
        Ok(result) => Ok(result?),
        Err(_elapsed) => Err(AppError::OutcomeUnknown),
    }
}

/// `{"account_id": ...}` from `open_account`.
#[derive(Serialize, ToSchema)]
pub struct OpenedResponse {
    /// The new account.
    #[schema(value_type = String, format = Uuid)]
    pub account_id: AccountId,
}

/// Success of a deposit or withdrawal.
#[derive(Serialize, ToSchema)]
pub struct BalanceChangedResponse {
    /// The original system's text.
    pub result: &'static str,
    /// The account.
    #[schema(value_type = String, format = Uuid)]
    pub account_id: AccountId,
    /// Its balance afterwards.
    #[schema(value_type = f64, example = 12.5)]
    pub balance: JsonMoney,
}

/// Success of a transfer.
#[derive(Serialize, ToSchema)]
pub struct MovedResponse {
    /// The original system's text.
    pub result: &'static str,
    /// Source balance afterwards.
    #[schema(value_type = f64)]
    pub source_balance: JsonMoney,
    /// Destination balance afterwards.
    #[schema(value_type = f64)]
    pub destination_balance: JsonMoney,
}

/// `{"balance": ...}` from `check_account`.
#[derive(Serialize, ToSchema)]
pub struct BalanceResponse {
    /// The balance.
    #[schema(value_type = f64, example = 12.5)]
    pub balance: JsonMoney,
}

/// The body of `deposit_money` and `withdraw_money`.
#[derive(Deserialize, ToSchema)]
pub struct AccountAmountRequest {
    /// The account.
    #[schema(format = Uuid)]
    pub account_id: String,
    /// A positive amount with at most two decimals, as a number or a numeric string.
    #[schema(schema_with = amount_schema)]
    pub amount: Box<RawValue>,
}

impl AccountAmountRequest {
    /// The account and the amount, validated.
    fn parse(&self) -> Result<(AccountId, Money), AppError> {
        Ok((
            parse_account("account_id", &self.account_id)?,
            Money::parse_json_amount(self.amount.get())?,
        ))
    }
}

/// An account reference, `{"account_id": ...}`.
#[derive(Deserialize, ToSchema)]
pub struct AccountRef {
    /// The account.
    #[schema(format = Uuid)]
    pub account_id: String,
}

/// The body of `move_money`.
#[derive(Deserialize, ToSchema)]
pub struct MoveRequest {
    /// Debited account.
    pub source: AccountRef,
    /// Credited account.
    pub destination: AccountRef,
    /// A positive amount with at most two decimals, as a number or a numeric string.
    #[schema(schema_with = amount_schema)]
    pub amount: Box<RawValue>,
}

fn amount_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Number)
                .exclusive_minimum(Some(0.0))
                .maximum(Some(1_000_000_000_000.0))
                .multiple_of(Some(0.01)),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(r"^[0-9]{1,13}(\.[0-9]{1,2})?$")),
        )
        .description(Some(
            "A positive amount with at most two decimals: 12.5 or \"12.50\"",
        ))
        .build()
        .into()
}

fn balance_changed(result: &'static str, account_id: AccountId, balance: Money) -> Response {
    Json(BalanceChangedResponse {
        result,
        account_id,
        balance: JsonMoney(balance),
    })
    .into_response()
}

fn render(outcome: Outcome) -> Result<Response, AppError> {
    Ok(match outcome {
        Outcome::Opened { account_id } => Json(OpenedResponse { account_id }).into_response(),
        Outcome::Deposited {
            account_id,
            balance,
        } => balance_changed("Money added successfully.", account_id, balance),
        Outcome::Withdrawn {
            account_id,
            balance,
        } => balance_changed("Withdrawal successful.", account_id, balance),
        Outcome::Moved {
            source_balance,
            destination_balance,
            ..
        } => Json(MovedResponse {
            result: "Money moved successfully.",
            source_balance: JsonMoney(source_balance),
            destination_balance: JsonMoney(destination_balance),
        })
        .into_response(),
        Outcome::Rejected { reason } => return Err(AppError::Rejected(reason)),
        Outcome::Barrier => {
            return Err(AppError::Internal(
                "a barrier outcome for a client request".to_owned(),
            ));
        }
    })
}

/// Creates a new account with a zero balance.
#[utoipa::path(post, path = "/open_account", tag = "bank",
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retry return the first result")),
    responses(
        (status = 200, description = "Account created", body = OpenedResponse),
        (status = 400, description = "Bad Idempotency-Key", body = ErrorBody),
        (status = 409, description = "Id collision", body = ErrorBody),
        (status = 422, description = "Idempotency-Key reused for another request", body = ErrorBody),
        (status = 503, description = "Unavailable or overloaded; retry", body = ErrorBody),
    ))]
async fn open_account(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let key = idempotency_key(&headers)?;
    let op = Operation::OpenAccount {
        account_id: AccountId::random(),
    };
    render(execute(&state, op, key).await?)
}

/// Adds money to an account.
#[utoipa::path(post, path = "/deposit_money", tag = "bank", request_body = AccountAmountRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retry return the first result")),
    responses(
        (status = 200, description = "Money added successfully.", body = BalanceChangedResponse),
        (status = 400, description = "Malformed JSON or bad Idempotency-Key", body = ErrorBody),
        (status = 404, description = "Account not found.", body = ErrorBody),
        (status = 409, description = "Balance limit", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Invalid field", body = ErrorBody),
        (status = 503, description = "Unavailable or overloaded; retry", body = ErrorBody),
    ))]
async fn deposit_money(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<AccountAmountRequest>,
) -> Result<Response, AppError> {
    let key = idempotency_key(&headers)?;
    let (account_id, amount) = body.parse()?;
    let op = Operation::Deposit { account_id, amount };
    render(execute(&state, op, key).await?)
}

/// Takes money from an account that holds enough.
#[utoipa::path(post, path = "/withdraw_money", tag = "bank", request_body = AccountAmountRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retry return the first result")),
    responses(
        (status = 200, description = "Withdrawal successful.", body = BalanceChangedResponse),
        (status = 400, description = "Malformed JSON or bad Idempotency-Key", body = ErrorBody),
        (status = 404, description = "Account not found.", body = ErrorBody),
        (status = 409, description = "Insufficient funds.", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Invalid field", body = ErrorBody),
        (status = 503, description = "Unavailable or overloaded; retry", body = ErrorBody),
    ))]
async fn withdraw_money(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<AccountAmountRequest>,
) -> Result<Response, AppError> {
    let key = idempotency_key(&headers)?;
    let (account_id, amount) = body.parse()?;
    let op = Operation::Withdraw { account_id, amount };
    render(execute(&state, op, key).await?)
}

/// Moves money between two different accounts, atomically.
#[utoipa::path(post, path = "/move_money", tag = "bank", request_body = MoveRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retry return the first result")),
    responses(
        (status = 200, description = "Money moved successfully.", body = MovedResponse),
        (status = 400, description = "Malformed JSON or bad Idempotency-Key", body = ErrorBody),
        (status = 404, description = "One or more accounts not found.", body = ErrorBody),
        (status = 409, description = "Insufficient funds or balance limit", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Invalid field or same account", body = ErrorBody),
        (status = 503, description = "Unavailable or overloaded; retry", body = ErrorBody),
    ))]
async fn move_money(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<MoveRequest>,
) -> Result<Response, AppError> {
    let key = idempotency_key(&headers)?;
    let source = parse_account("source.account_id", &body.source.account_id)?;
    let destination = parse_account("destination.account_id", &body.destination.account_id)?;
    let amount = Money::parse_json_amount(body.amount.get())?;
    if source == destination {
        return Err(AppError::Rejected(crate::command::Rejection::SameAccount));
    }
    let op = Operation::Move {
        source,
        destination,
        amount,
    };
    render(execute(&state, op, key).await?)
}

/// `account_id` of `check_account`, from the query string, and the read's consistency.
#[derive(Deserialize)]
struct CheckQuery {
    account_id: Option<String>,
    consistency: Option<String>,
}

/// The JSON body the original clients send with `check_account`.
#[derive(Deserialize)]
struct CheckBody {
    account_id: String,
}

/// The balance of an account. `account_id` comes from the query string or, as in the original
/// system, from a JSON body.
#[utoipa::path(get, path = "/check_account", tag = "bank",
    params(
        ("account_id" = Option<String>, Query, format = Uuid, description = "The account (or send {\"account_id\": ...} as a JSON body)"),
        ("consistency" = Option<String>, Query, description = "linearizable (default) or local: a possibly stale read of this node's replica"),
    ),
    responses(
        (status = 200, description = "The balance", body = BalanceResponse),
        (status = 400, description = "Malformed JSON or query", body = ErrorBody),
        (status = 404, description = "Account not found.", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Missing or invalid account_id", body = ErrorBody),
        (status = 503, description = "Unavailable or no leader", body = ErrorBody),
    ))]
async fn check_account(
    State(state): State<Arc<AppState>>,
    query: Result<Query<CheckQuery>, axum::extract::rejection::QueryRejection>,
    request: Request,
) -> Result<Response, AppError> {
    let Query(query) = query.map_err(|e| AppError::InvalidQuery(e.body_text()))?;
    let text = match query.account_id {
        Some(id) => id,
        None => {
            let bytes = read_body(request, &state).await?;
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Err(AppError::InvalidRequest(
                    "account_id is required, in the query string or a JSON body".to_owned(),
                ));
            }
            parse_json::<CheckBody>(&bytes)?.account_id
        }
    };
    let id = parse_account("account_id", &text)?;
    match query.consistency.as_deref() {
        None | Some("linearizable") => {
            match tokio::time::timeout(state.request_timeout, state.log.read_barrier()).await {
                Ok(result) => result?,
                Err(_) => return Err(AppError::Unavailable),
            }
        }
        Some("local") => {}
        Some(_) => {
            return Err(AppError::InvalidQuery(
                "consistency must be linearizable (default) or local".to_owned(),
            ));
        }
    }
    match state.store.balance(id).await? {
        Some(balance) => Ok(Json(BalanceResponse {
            balance: JsonMoney(balance),
        })
        .into_response()),
        None => Err(AppError::Rejected(
            crate::command::Rejection::AccountNotFound,
        )),
    }
}

/// Liveness: the process is up.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses(
    (status = 200, description = "Alive", body = String),
    (status = 503, description = "A vital task stopped: the process is exiting", body = String),
))]
async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    alive_response(&state)
}

async fn internal_healthz(State(state): State<InternalState>) -> Response {
    alive_response(&state.app)
}

fn alive_response(state: &AppState) -> Response {
    if !state.log.is_alive() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "a vital task stopped; the node is exiting",
        )
            .into_response();
    }
    "ok".into_response()
}

/// Readiness: the node can apply commands and read its store.
#[utoipa::path(get, path = "/readyz", tag = "ops", responses(
    (status = 200, description = "Ready", body = String),
    (status = 503, description = "Not ready", body = String),
))]
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    ready_response(&state).await
}

async fn ready_response(state: &AppState) -> Response {
    if !state.log.is_healthy() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the log is stopped",
        )
            .into_response();
    }
    match state.store.ready().await {
        Ok(()) => "ready".into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the store is unavailable",
        )
            .into_response(),
    }
}

async fn internal_readyz(State(state): State<InternalState>) -> Response {
    ready_response(&state.app).await
}

async fn shutdown(State(state): State<InternalState>) -> &'static str {
    tracing::info!("shutdown requested over the internal API");
    // Graceful: servers stop accepting, in-flight requests (this answer too) complete.
    state.shutdown.cancel();
    "Server shut down..."
}

async fn metrics_text(State(state): State<InternalState>) -> Response {
    plumbing::metrics_response(state.metrics.as_deref())
}

/// The OpenAPI description of the public API, generated from the handlers above.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "paxos bank",
        description = "A replicated bank: the original system's REST API with exact money and real HTTP errors."
    ),
    paths(
        open_account,
        deposit_money,
        withdraw_money,
        move_money,
        check_account,
        healthz,
        readyz
    ),
    components(schemas(
        ErrorBody,
        OpenedResponse,
        BalanceChangedResponse,
        MovedResponse,
        BalanceResponse,
        AccountAmountRequest,
        MoveRequest,
        AccountRef
    ))
)]
pub struct ApiDoc;

async fn openapi_json() -> Response {
    Json(ApiDoc::openapi()).into_response()
}
