//! Errors as HTTP responses: a status, a stable machine code and a human text, never internals.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::command::Rejection;
use crate::log::SubmitError;
use crate::money::AmountError;
use crate::store::StoreError;

/// The JSON body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for people.
    pub error: String,
    /// What went wrong, for programs: stable across versions.
    pub code: &'static str,
    /// The original system's answer text, where it had one (old clients read this field).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<&'static str>,
}

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The body is not JSON.
    #[error("request body is not valid JSON: {0}")]
    MalformedJson(String),
    /// JSON of the wrong shape (missing field, wrong type).
    #[error("{0}")]
    InvalidRequest(String),
    /// An account id that is not a UUID.
    #[error("{field} must be a UUID, such as 3f2b8f0e-6c1d-4b8e-9a53-0c6f1e9a2d41")]
    InvalidAccountId {
        /// Which field.
        field: &'static str,
    },
    /// A bad amount.
    #[error(transparent)]
    InvalidAmount(#[from] AmountError),
    /// A malformed `Idempotency-Key` header.
    #[error("Idempotency-Key must be 1 to 128 visible ASCII characters")]
    InvalidIdempotencyKey,
    /// A bad query parameter.
    #[error("{0}")]
    InvalidQuery(String),
    /// The body is larger than the limit.
    #[error("request body is too large")]
    PayloadTooLarge,
    /// Not `Content-Type: application/json`.
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    /// A business rule refused the command.
    #[error("{}", rejection_text(*.0))]
    Rejected(Rejection),
    /// Unknown path.
    #[error("no such endpoint")]
    NotFound,
    /// Known path, other method.
    #[error("method not allowed on this endpoint")]
    MethodNotAllowed,
    /// Too many queued commands.
    #[error("the node is overloaded; retry later")]
    Overloaded,
    /// The log or store cannot serve now.
    #[error("the service is temporarily unavailable; retry later")]
    Unavailable,
    /// Leader mode and no leader is known (an election is running).
    #[error("no leader is known right now (an election may be running); retry shortly")]
    NoLeader,
    /// No answer in time: the command may or may not have been applied.
    #[error(
        "no outcome within the time limit; the operation may still apply: retry with the same Idempotency-Key to learn its outcome"
    )]
    OutcomeUnknown,
    /// A failure of ours. The detail goes to the log, never to the client.
    #[error("internal error")]
    Internal(String),
}

fn rejection_text(rejection: Rejection) -> &'static str {
    match rejection {
        Rejection::AccountNotFound => "account not found",
        Rejection::AccountsNotFound => "one or more accounts not found",
        Rejection::InsufficientFunds => "insufficient funds",
        Rejection::BalanceLimit => "the balance would exceed 100000000000000",
        Rejection::SameAccount => "source and destination must be different accounts",
        Rejection::AccountExists => "account id already taken; retry",
        Rejection::IdempotencyKeyReused => {
            "this Idempotency-Key was already used for a different request"
        }
    }
}

impl AppError {
    /// Status and stable code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        use StatusCode as S;
        match self {
            AppError::MalformedJson(_) => (S::BAD_REQUEST, "malformed_json"),
            AppError::InvalidRequest(_) => (S::UNPROCESSABLE_ENTITY, "invalid_request"),
            AppError::InvalidAccountId { .. } => (S::UNPROCESSABLE_ENTITY, "invalid_account_id"),
            AppError::InvalidAmount(_) => (S::UNPROCESSABLE_ENTITY, "invalid_amount"),
            AppError::InvalidIdempotencyKey => (S::BAD_REQUEST, "invalid_idempotency_key"),
            AppError::InvalidQuery(_) => (S::BAD_REQUEST, "invalid_query"),
            AppError::PayloadTooLarge => (S::PAYLOAD_TOO_LARGE, "payload_too_large"),
            AppError::UnsupportedMediaType => (S::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            AppError::Rejected(r) => match r {
                Rejection::AccountNotFound => (S::NOT_FOUND, "account_not_found"),
                Rejection::AccountsNotFound => (S::NOT_FOUND, "accounts_not_found"),
                Rejection::InsufficientFunds => (S::CONFLICT, "insufficient_funds"),
                Rejection::BalanceLimit => (S::CONFLICT, "balance_limit"),
                Rejection::SameAccount => (S::UNPROCESSABLE_ENTITY, "same_account"),
                Rejection::AccountExists => (S::CONFLICT, "account_exists"),
                Rejection::IdempotencyKeyReused => {
                    (S::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
                }
            },
            AppError::NotFound => (S::NOT_FOUND, "not_found"),
            AppError::MethodNotAllowed => (S::METHOD_NOT_ALLOWED, "method_not_allowed"),
            AppError::Overloaded => (S::SERVICE_UNAVAILABLE, "overloaded"),
            AppError::Unavailable => (S::SERVICE_UNAVAILABLE, "unavailable"),
            AppError::NoLeader => (S::SERVICE_UNAVAILABLE, "no_leader"),
            AppError::OutcomeUnknown => (S::SERVICE_UNAVAILABLE, "outcome_unknown"),
            AppError::Internal(_) => (S::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// The original system's text for this error, if it had one.
    fn original_text(&self) -> Option<&'static str> {
        match self {
            AppError::Rejected(Rejection::AccountNotFound) => Some("Account not found."),
            AppError::Rejected(Rejection::AccountsNotFound) => {
                Some("One or more accounts not found.")
            }
            AppError::Rejected(Rejection::InsufficientFunds) => Some("Insufficient funds."),
            _ => None,
        }
    }
}

impl From<SubmitError> for AppError {
    fn from(err: SubmitError) -> Self {
        match err {
            SubmitError::Overloaded => AppError::Overloaded,
            SubmitError::Unavailable => AppError::Unavailable,
            SubmitError::NotLeader => AppError::NoLeader,
            SubmitError::Timeout | SubmitError::OutcomeUnknown => AppError::OutcomeUnknown,
        }
    }
}

impl From<StoreError> for AppError {
    fn from(err: StoreError) -> Self {
        if err.is_retryable() {
            AppError::Unavailable
        } else {
            AppError::Internal(err.to_string())
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if let AppError::Internal(detail) = &self {
            tracing::error!(%detail, "internal error");
        }
        let body = ErrorBody {
            error: self.to_string(),
            code,
            result: self.original_text(),
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
