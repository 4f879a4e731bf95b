//! The web page rendered by a real headless Chromium (Debian's `chromium`).
//!
//! Outside CI the test skips loudly when Chromium is missing; under `CI=true` it fails instead.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::NodeProcess;
use serde_json::{Value, json};

fn headless(
    browser: &std::path::Path,
    profile: &std::path::Path,
    extra: &[&str],
    url: &str,
) -> std::process::Output {
    testkit::browser::headless(browser, profile)
        .args(extra)
        .arg(url)
        .output()
        .expect("running chromium")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_page_renders_in_headless_chromium() {
    let Some(browser) =
        testkit::browser::chromium_or_skip("accounts_page_renders_in_headless_chromium")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::spawn(&dir.path().join("data"));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let amounts = [
        ("12.5", "12.50"),
        ("0.01", "0.01"),
        ("1000000", "1000000.00"),
        ("7", "7.00"),
    ];
    let mut expected = Vec::new();
    for (amount, shown) in amounts {
        let opened: Value = client
            .post(format!("{}/open_account", node.public_url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = opened["account_id"].as_str().unwrap().to_owned();
        let response = client
            .post(format!("{}/deposit_money", node.public_url))
            .json(&json!({"account_id": id, "amount": amount}))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
        expected.push((id, shown));
    }
    expected.sort();

    let profile = tempfile::tempdir().unwrap();
    let url = format!("{}/?limit=3", node.public_url);
    let out = headless(&browser, profile.path(), &["--dump-dom"], &url);
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(dom.contains("<title>paxos bank: accounts</title>"), "{dom}");
    assert!(
        dom.contains(r#"<span id="account-count">4</span>"#),
        "{dom}"
    );
    assert!(
        dom.contains(r#"<span id="total">1000019.51</span>"#),
        "{dom}"
    );
    // The browser's DOM has exactly the first page: three rows, in id order, exact balances.
    let rows: Vec<&str> = dom.split("<tr>").skip(2).collect();
    assert_eq!(rows.len(), 3, "{dom}");
    for ((id, amount), row) in expected.iter().zip(&rows) {
        assert!(row.contains(&format!("<code>{id}</code>")), "{row}");
        assert!(
            row.contains(&format!(r#"<td class="balance">{amount}</td>"#)),
            "{row}"
        );
    }
    let next = format!(r#"href="/?after={}&amp;limit=3""#, expected[2].0);
    assert!(dom.contains(&next), "the next-page link is missing: {dom}");

    // Follow the link as the browser would and find the last account alone on page two.
    let page_two = format!("{}/?after={}&limit=3", node.public_url, expected[2].0);
    let out = headless(&browser, profile.path(), &["--dump-dom"], &page_two);
    let dom = String::from_utf8_lossy(&out.stdout);
    assert_eq!(dom.matches("<tr>").count(), 2, "header + one row: {dom}");
    assert!(dom.contains(&expected[3].0));

    // A screenshot for people (kept in target/ for a look); it must be a real PNG.
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("accounts-page.png");
    let out = headless(
        &browser,
        profile.path(),
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1100,600",
        ],
        &url,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 2_000,
        "not a screenshot"
    );
}
