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

/// Handles of the HTTP series by route, method and status, each made on its first request. A
/// request otherwise builds two keys from owned labels (the status formatted), hashes them and
/// looks both up under the registry's lock: twice per operation on its way through the front
/// door and the node.
#[derive(Default)]
pub struct HttpSeries {
    by_route: std::sync::RwLock<std::collections::HashMap<String, Vec<HttpEntry>>>,
}

struct HttpEntry {
    method: &'static str,
    status: u16,
    requests: metrics::Counter,
    duration: metrics::Histogram,
}

impl HttpEntry {
    fn record(&self, seconds: f64) {
        self.requests.increment(1);
        self.duration.record(seconds);
    }
}

/// The `method` label: the method, or `OTHER` for one HTTP does not define (a client's made-up
/// method must not make a series of its own).
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

impl HttpEntry {
    /// The series of `route`, `method` and `status` on the recorder installed now.
    fn new(route: &str, method: &'static str, status: u16) -> HttpEntry {
        HttpEntry {
            method,
            status,
            requests: metrics::counter!(HTTP_REQUESTS, "route" => route.to_owned(), "method" => method, "status" => status.to_string()),
            duration: metrics::histogram!(HTTP_REQUEST_DURATION, "route" => route.to_owned(), "method" => method),
        }
    }
}

impl HttpSeries {
    /// Counts one request to `route` by `method` (a [`method_label`]) answered with `status`
    /// after `seconds`.
    pub fn record(&self, route: &str, method: &'static str, status: u16, seconds: f64) {
        if !telemetry::recorder_installed() {
            // No recorder of ours (a test, or metrics off): whatever is global gets it, and no
            // handle is kept that would stay bound to nothing once one is installed.
            HttpEntry::new(route, method, status).record(seconds);
            return;
        }
        let find = |entries: &[HttpEntry]| {
            entries
                .iter()
                .position(|e| e.status == status && e.method == method)
        };
        {
            let by_route = self.by_route.read().expect("http series lock");
            if let Some(entries) = by_route.get(route)
                && let Some(at) = find(entries)
            {
                entries[at].record(seconds);
                return;
            }
        }
        let mut by_route = self.by_route.write().expect("http series lock");
        let entries = by_route.entry(route.to_owned()).or_default();
        let at = find(entries).unwrap_or_else(|| {
            entries.push(HttpEntry::new(route, method, status));
            entries.len() - 1
        });
        entries[at].record(seconds);
    }
}

#[cfg(test)]
mod tests {
    use axum::http::Method;

    use super::*;

    #[test]
    fn a_made_up_method_is_labelled_other() {
        assert_eq!(method_label(&Method::POST), "POST");
        assert_eq!(method_label(&Method::GET), "GET");
        let brew = Method::from_bytes(b"BREW").expect("an extension method");
        assert_eq!(method_label(&brew), "OTHER");
    }

    #[tokio::test]
    async fn requests_are_counted_by_route_method_and_status() {
        telemetry::install_prometheus();
        if !telemetry::recorder_installed() {
            eprintln!("metrics are off (BANK_METRICS=off): nothing to count");
            return;
        }
        let series = HttpSeries::default();
        let route = format!("/series-test-{}", uuid::Uuid::new_v4().simple());
        series.record(&route, method_label(&Method::POST), 200, 0.001);
        series.record(&route, method_label(&Method::POST), 200, 0.002);
        series.record(&route, method_label(&Method::POST), 503, 0.003);
        let brew = Method::from_bytes(b"BREW").unwrap();
        series.record(&route, method_label(&brew), 200, 0.004);
        let text = telemetry::render();
        let count = |method: &str, status: &str| {
            let series = format!(
                "{HTTP_REQUESTS}{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} "
            );
            text.lines()
                .find_map(|line| line.strip_prefix(&series))
                .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
                .to_owned()
        };
        assert_eq!(count("POST", "200"), "2");
        assert_eq!(count("POST", "503"), "1");
        assert_eq!(count("OTHER", "200"), "1");
        let durations =
            format!("{HTTP_REQUEST_DURATION}_count{{route=\"{route}\",method=\"POST\"}} 3");
        assert!(
            text.lines().any(|l| l == durations),
            "no {durations} in:\n{text}"
        );
    }
}
