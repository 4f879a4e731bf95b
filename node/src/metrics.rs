//! Every metric the node exports (and the testbed's front door, which shares the HTTP ones): its
//! name, kind, unit and HELP text, in one table ([`METRICS`]). [`describe`] gives Prometheus the
//! HELP texts; [`register`] creates every series at zero at start-up, so a dashboard or an alert
//! never sees a missing series where there were simply no events yet (no 5xx yet is `0`, not
//! "no data").

use metrics::Unit;
use telemetry::catalog::{Metric, counter, describe_all, gauge, histogram};

use crate::store::StoreKind;

/// `http_requests_total{route,method,status}`.
pub const HTTP_REQUESTS: &str = "http_requests_total";
/// `http_request_duration_seconds{route,method}`.
pub const HTTP_REQUEST_DURATION: &str = "http_request_duration_seconds";
/// `store_operation_duration_seconds{backend,op}`.
pub const STORE_OPERATION_DURATION: &str = "store_operation_duration_seconds";
/// `store_commit_batch_size{backend}`.
pub const STORE_COMMIT_BATCH_SIZE: &str = "store_commit_batch_size";
/// `store_errors_total{backend,kind}`.
pub const STORE_ERRORS: &str = "store_errors_total";
/// `store_transaction_retries_total{backend}`.
pub const STORE_TRANSACTION_RETRIES: &str = "store_transaction_retries_total";
/// `bank_applied_index`.
pub const APPLIED_INDEX: &str = "bank_applied_index";
/// `bank_snapshot_records`.
pub const SNAPSHOT_RECORDS: &str = "bank_snapshot_records";
/// `bank_snapshot_bytes`.
pub const SNAPSHOT_BYTES: &str = "bank_snapshot_bytes";
/// `bank_compaction_duration_seconds`.
pub const COMPACTION_DURATION: &str = "bank_compaction_duration_seconds";

/// The kinds of `store_errors_total{kind}`.
pub const STORE_ERROR_KINDS: [&str; 2] = ["unavailable", "fatal"];

/// The operations of `store_operation_duration_seconds{op}`, per backend.
pub fn store_ops(store: StoreKind) -> &'static [&'static str] {
    match store {
        StoreKind::Embedded => &["apply"],
        StoreKind::Firestore => &[
            "get",
            "batch_get",
            "commit",
            "transaction",
            "apply",
            "query",
            "list",
            "write",
        ],
    }
}

/// Every metric of the node.
pub const METRICS: &[Metric] = &[
    counter(HTTP_REQUESTS, "HTTP requests by route, method and status"),
    histogram(
        HTTP_REQUEST_DURATION,
        Some(Unit::Seconds),
        "HTTP request duration by route and method",
    ),
    histogram(
        STORE_OPERATION_DURATION,
        Some(Unit::Seconds),
        "Store operation latency by backend and op",
    ),
    histogram(
        STORE_COMMIT_BATCH_SIZE,
        None,
        "Commands applied per store transaction",
    ),
    counter(
        STORE_ERRORS,
        "Store calls that failed, by backend and kind (unavailable: retryable; fatal: the node exits)",
    ),
    counter(
        STORE_TRANSACTION_RETRIES,
        "Store transactions retried after a contention abort, by backend",
    ),
    gauge(APPLIED_INDEX, "Last log index applied to the store"),
    gauge(
        SNAPSHOT_RECORDS,
        "Accounts and idempotency records in the last snapshot handed to paxos",
    ),
    Metric {
        unit: Some(Unit::Bytes),
        ..gauge(SNAPSHOT_BYTES, "Size of the last snapshot handed to paxos")
    },
    histogram(
        COMPACTION_DURATION,
        Some(Unit::Seconds),
        "Building, encoding and handing paxos one snapshot",
    ),
];

/// HELP texts of every metric of the node.
pub fn describe() {
    describe_all(METRICS);
}

/// Every series of a node on `store` at zero: the HTTP series of every bank route (status 200
/// and 503, the two an availability SLO divides), the store's series of its backend, and the
/// bank's gauges.
pub fn register(store: StoreKind) {
    register_http(&crate::api::API_ROUTES);
    let backend = store.as_str();
    for op in store_ops(store) {
        drop(metrics::histogram!(STORE_OPERATION_DURATION, "backend" => backend, "op" => *op));
    }
    drop(metrics::histogram!(STORE_COMMIT_BATCH_SIZE, "backend" => backend));
    for kind in STORE_ERROR_KINDS {
        metrics::counter!(STORE_ERRORS, "backend" => backend, "kind" => kind).increment(0);
    }
    metrics::counter!(STORE_TRANSACTION_RETRIES, "backend" => backend).increment(0);
    for name in [APPLIED_INDEX, SNAPSHOT_RECORDS, SNAPSHOT_BYTES] {
        metrics::gauge!(name).increment(0.0);
    }
    drop(metrics::histogram!(COMPACTION_DURATION));
}

/// The HTTP series of `routes` at zero (the front door registers the bank's routes too).
pub fn register_http(routes: &[&'static str]) {
    for route in routes {
        let method = crate::api::route_method(route);
        for status in ["200", "503"] {
            metrics::counter!(HTTP_REQUESTS, "route" => *route, "method" => method, "status" => status)
                .increment(0);
        }
        drop(metrics::histogram!(HTTP_REQUEST_DURATION, "route" => *route, "method" => method));
    }
}
