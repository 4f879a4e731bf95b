//! Every public endpoint and every error code, through the real router and an embedded store.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{METRICS_TOKEN, TOKEN, TestNode, get, json_post};
use serde_json::json;
use tower::ServiceExt as _;

#[tokio::test]
async fn open_account_returns_a_fresh_uuid() {
    let node = TestNode::start().await;
    let a = node.open().await;
    let b = node.open().await;
    assert_ne!(a, b);
    assert_eq!(uuid::Uuid::parse_str(&a).unwrap().get_version_num(), 4);
    assert_eq!(node.balance(&a).await, json!(0));
}

#[tokio::test]
async fn deposit_withdraw_move_and_check_use_the_original_texts() {
    let node = TestNode::start().await;
    let (a, b) = (node.open().await, node.open().await);
    let (status, body) = node.deposit(&a, json!(12.5)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"result": "Money added successfully.", "account_id": a, "balance": 12.5})
    );
    let (status, body) = node
        .post(
            "/withdraw_money",
            json!({"account_id": a, "amount": "2.25"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"result": "Withdrawal successful.", "account_id": a, "balance": 10.25})
    );
    let (status, body) = node
        .post(
            "/move_money",
            json!({"source": {"account_id": a}, "destination": {"account_id": b}, "amount": 0.25}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"result": "Money moved successfully.", "source_balance": 10, "destination_balance": 0.25})
    );
    assert_eq!(node.balance(&a).await, json!(10));
    assert_eq!(node.balance(&b).await, json!(0.25));
}

#[tokio::test]
async fn check_account_reads_the_id_from_a_json_body_like_the_original() {
    let node = TestNode::start().await;
    let a = node.open().await;
    node.deposit(&a, json!(3)).await;
    let request = Request::get("/check_account")
        .header("content-type", "application/json")
        .body(Body::from(json!({"account_id": a}).to_string()))
        .unwrap();
    assert_eq!(
        node.call(request).await,
        (StatusCode::OK, json!({"balance": 3}))
    );
    let (status, body) = node.call(get("/check_account")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_request"))
    );
}

#[tokio::test]
async fn point_one_plus_point_two_is_point_three() {
    let node = TestNode::start().await;
    let a = node.open().await;
    node.deposit(&a, json!(0.1)).await;
    node.deposit(&a, json!(0.2)).await;
    assert_eq!(node.balance(&a).await, json!(0.3));
}

async fn assert_error(
    node: &TestNode,
    request: Request<Body>,
    status: StatusCode,
    code: &str,
) -> serde_json::Value {
    let (got, body) = node.call(request).await;
    assert_eq!(got, status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
    body
}

#[tokio::test]
async fn bad_amounts_are_422() {
    let node = TestNode::start().await;
    let a = node.open().await;
    for amount in [
        "12.345",
        "1e-3",
        "1e20",
        "-0",
        "0",
        "-5",
        "\"NaN\"",
        "\"Infinity\"",
        "\"abc\"",
        "true",
        "null",
        "0.30000000000000004",
        "\"1e400\"",
    ] {
        let body = format!(r#"{{"account_id":"{a}","amount":{amount}}}"#);
        assert_error(
            &node,
            json_post("/deposit_money", &body, None),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_amount",
        )
        .await;
    }
    let body = format!(r#"{{"account_id":"{a}","amount":"12.50"}}"#);
    let (status, out) = node.call(json_post("/deposit_money", &body, None)).await;
    assert_eq!((status, &out["balance"]), (StatusCode::OK, &json!(12.5)));
}

#[tokio::test]
async fn malformed_and_misshapen_requests() {
    let node = TestNode::start().await;
    let a = node.open().await;
    assert_error(
        &node,
        json_post("/deposit_money", "{nope", None),
        StatusCode::BAD_REQUEST,
        "malformed_json",
    )
    .await;
    assert_error(
        &node,
        json_post("/deposit_money", "", None),
        StatusCode::BAD_REQUEST,
        "malformed_json",
    )
    .await;
    assert_error(
        &node,
        json_post("/deposit_money", r#"{"amount": 1}"#, None),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    )
    .await;
    assert_error(
        &node,
        json_post("/deposit_money", r#"{"account_id": 5, "amount": 1}"#, None),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    )
    .await;
    assert_error(
        &node,
        json_post(
            "/deposit_money",
            r#"{"account_id": "not-a-uuid", "amount": 1}"#,
            None,
        ),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_account_id",
    )
    .await;
    let same = format!(
        r#"{{"source":{{"account_id":"{a}"}},"destination":{{"account_id":"{a}"}},"amount":1}}"#
    );
    assert_error(
        &node,
        json_post("/move_money", &same, None),
        StatusCode::UNPROCESSABLE_ENTITY,
        "same_account",
    )
    .await;
    let plain = Request::post("/deposit_money")
        .header("content-type", "text/plain")
        .body(Body::from(format!(r#"{{"account_id":"{a}","amount":1}}"#)))
        .unwrap();
    assert_error(
        &node,
        plain,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    let huge = format!(
        r#"{{"account_id":"{a}","amount":1,"pad":"{}"}}"#,
        "x".repeat(64 * 1024)
    );
    assert_error(
        &node,
        json_post("/deposit_money", &huge, None),
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;
    assert_error(
        &node,
        get("/no_such_thing"),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_error(
        &node,
        Request::delete("/open_account")
            .body(Body::empty())
            .unwrap(),
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
    assert_error(
        &node,
        get("/check_account?account_id=xyz"),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_account_id",
    )
    .await;
}

#[tokio::test]
async fn business_errors_carry_the_original_result_text() {
    let node = TestNode::start().await;
    let a = node.open().await;
    let ghost = uuid::Uuid::new_v4().to_string();
    let body = assert_error(
        &node,
        json_post(
            "/deposit_money",
            &json!({"account_id": ghost, "amount": 1}).to_string(),
            None,
        ),
        StatusCode::NOT_FOUND,
        "account_not_found",
    )
    .await;
    assert_eq!(body["result"], "Account not found.");
    let body = assert_error(
        &node,
        get(&format!("/check_account?account_id={ghost}")),
        StatusCode::NOT_FOUND,
        "account_not_found",
    )
    .await;
    assert_eq!(body["result"], "Account not found.");
    let body = assert_error(
        &node,
        json_post(
            "/withdraw_money",
            &json!({"account_id": a, "amount": 1}).to_string(),
            None,
        ),
        StatusCode::CONFLICT,
        "insufficient_funds",
    )
    .await;
    assert_eq!(body["result"], "Insufficient funds.");
    let mv =
        json!({"source": {"account_id": a}, "destination": {"account_id": ghost}, "amount": 1})
            .to_string();
    let body = assert_error(
        &node,
        json_post("/move_money", &mv, None),
        StatusCode::NOT_FOUND,
        "accounts_not_found",
    )
    .await;
    assert_eq!(body["result"], "One or more accounts not found.");
    node.deposit(&a, json!(1)).await;
    let b = node.open().await;
    let mv = json!({"source": {"account_id": a}, "destination": {"account_id": b}, "amount": 2})
        .to_string();
    let body = assert_error(
        &node,
        json_post("/move_money", &mv, None),
        StatusCode::CONFLICT,
        "insufficient_funds",
    )
    .await;
    assert_eq!(body["result"], "Insufficient funds.");
    assert_eq!(node.balance(&a).await, json!(1));
    assert_eq!(node.balance(&b).await, json!(0));
}

#[tokio::test]
async fn balance_limit_is_409() {
    let node = TestNode::start().await;
    let a = node.open().await;
    for _ in 0..100 {
        let (status, _) = node.deposit(&a, json!(1_000_000_000_000u64)).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_error(
        &node,
        json_post(
            "/deposit_money",
            &json!({"account_id": a, "amount": 0.01}).to_string(),
            None,
        ),
        StatusCode::CONFLICT,
        "balance_limit",
    )
    .await;
    assert_eq!(node.balance(&a).await.to_string(), "100000000000000");
}

#[tokio::test]
async fn idempotent_retry_returns_the_first_response_and_applies_once() {
    let node = TestNode::start().await;
    let a = node.open().await;
    let body = json!({"account_id": a, "amount": 5}).to_string();
    let first = node
        .call(json_post("/deposit_money", &body, Some("dep-7")))
        .await;
    let retry = node
        .call(json_post("/deposit_money", &body, Some("dep-7")))
        .await;
    assert_eq!(first.0, StatusCode::OK);
    assert_eq!(first, retry);
    assert_eq!(node.balance(&a).await, json!(5));
    // The same key with another body is refused and changes nothing.
    let other = json!({"account_id": a, "amount": 6}).to_string();
    assert_error(
        &node,
        json_post("/deposit_money", &other, Some("dep-7")),
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    )
    .await;
    assert_eq!(node.balance(&a).await, json!(5));
    // A retried open_account returns the first account instead of opening another.
    let o1 = node
        .call(json_post("/open_account", "", Some("open-1")))
        .await;
    let o2 = node
        .call(json_post("/open_account", "", Some("open-1")))
        .await;
    assert_eq!(o1, o2);
    assert_eq!(node.store_summary().await.accounts, 2);
    // Business rejections are remembered too: the retry does not withdraw later.
    let w = json!({"account_id": a, "amount": 50}).to_string();
    let r1 = node
        .call(json_post("/withdraw_money", &w, Some("w-1")))
        .await;
    node.deposit(&a, json!(100)).await;
    let r2 = node
        .call(json_post("/withdraw_money", &w, Some("w-1")))
        .await;
    assert_eq!(r1.0, StatusCode::CONFLICT);
    assert_eq!(r1, r2);
    assert_eq!(node.balance(&a).await, json!(105));
    // A malformed key is refused.
    assert_error(
        &node,
        json_post("/deposit_money", &body, Some(&"k".repeat(200))),
        StatusCode::BAD_REQUEST,
        "invalid_idempotency_key",
    )
    .await;
}

#[tokio::test]
async fn concurrent_retries_with_one_key_apply_once() {
    let node = TestNode::start().await;
    let a = node.open().await;
    let body = json!({"account_id": a, "amount": 1}).to_string();
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let router = node.public.clone();
            let body = body.clone();
            tokio::spawn(async move {
                router
                    .oneshot(json_post("/deposit_money", &body, Some("same-key")))
                    .await
                    .unwrap()
                    .status()
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(node.balance(&a).await, json!(1));
}

#[tokio::test]
async fn health_readiness_and_openapi() {
    let node = TestNode::start().await;
    assert_eq!(node.call(get("/healthz")).await.0, StatusCode::OK);
    assert_eq!(node.call(get("/readyz")).await.0, StatusCode::OK);
    let (status, doc) = node.call(get("/openapi.json")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/open_account",
        "/deposit_money",
        "/withdraw_money",
        "/move_money",
        "/check_account",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
}

/// Review item 7: Prometheus's token reads metrics and nothing else; the cluster token still
/// reads them too.
#[tokio::test]
async fn the_metrics_token_reads_metrics_only() {
    let node = TestNode::start().await;
    let call = |method: &str, path: &str, token: &str| {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        let internal = node.internal.clone();
        async move { internal.oneshot(request).await.unwrap().status() }
    };
    assert_eq!(call("GET", "/metrics", METRICS_TOKEN).await, StatusCode::OK);
    assert_eq!(call("GET", "/metrics", TOKEN).await, StatusCode::OK);
    for (method, path) in [
        ("POST", "/shutdown"),
        ("GET", "/readyz"),
        ("GET", "/healthz"),
    ] {
        assert_eq!(
            call(method, path, METRICS_TOKEN).await,
            StatusCode::UNAUTHORIZED,
            "{method} {path} with the metrics token"
        );
    }
    assert!(!node.shutdown.is_cancelled());
}

#[tokio::test]
async fn internal_port_needs_the_token_and_shutdown_stops_the_node() {
    let node = TestNode::start().await;
    let call = |req: Request<Body>| node.internal.clone().oneshot(req);
    let no_token = call(Request::post("/shutdown").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(no_token.status(), StatusCode::UNAUTHORIZED);
    let wrong = call(
        Request::get("/metrics")
            .header("authorization", "Bearer wrong")
            .body(Body::empty())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let auth = format!("Bearer {TOKEN}");
    let metrics = call(
        Request::get("/metrics")
            .header("authorization", &auth)
            .body(Body::empty())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
    assert!(!node.shutdown.is_cancelled());
    let response = call(
        Request::post("/shutdown")
            .header("authorization", &auth)
            .body(Body::empty())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&text[..], b"Server shut down...");
    assert!(
        node.shutdown.is_cancelled(),
        "shutdown must trigger the graceful stop"
    );
}

#[test]
fn token_comparison_rejects_prefixes_and_empty_tokens() {
    assert!(plumbing::token_matches("abc", "abc"));
    assert!(!plumbing::token_matches("ab", "abc"));
    assert!(!plumbing::token_matches("abcd", "abc"));
    assert!(!plumbing::token_matches("", ""));
}

#[tokio::test]
async fn web_page_lists_accounts_and_pages_through_them() {
    let node = TestNode::start().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let id = node.open().await;
        node.deposit(&id, json!(i + 1)).await;
        ids.push(id);
    }
    ids.sort();
    let (status, page) = node.call(get("/?limit=2")).await;
    assert_eq!(status, StatusCode::OK);
    let html = page.as_str().unwrap();
    assert!(html.contains(&ids[0]) && html.contains(&ids[1]) && !html.contains(&ids[2]));
    assert!(html.contains(&format!("/?after={}&amp;limit=2", ids[1])));
    let (_, page) = node.call(get(&format!("/?after={}&limit=2", ids[3]))).await;
    let html = page.as_str().unwrap();
    assert!(html.contains(&ids[4]) && !html.contains(&ids[3]));
    assert!(!html.contains("id=\"next\""));
    assert_error(
        &node,
        get("/?limit=100000"),
        StatusCode::BAD_REQUEST,
        "invalid_query",
    )
    .await;
    assert_error(
        &node,
        get("/?after=%3Cscript%3E"),
        StatusCode::BAD_REQUEST,
        "invalid_query",
    )
    .await;
}
