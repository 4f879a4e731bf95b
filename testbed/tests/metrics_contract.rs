//! The metric contract: a fresh cluster, scraped before any client traffic, exports every
//! metric of every process's catalogue (`node::metrics::METRICS`, `paxos::metrics::METRICS`,
//! `telemetry::catalog::EVERY_PROCESS`), so dashboards and alerts never see a missing series
//! where there were simply no events yet.

mod common;

use common::*;
use telemetry::catalog::{EVERY_PROCESS, has_series};

fn missing<'a>(text: &str, names: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    names
        .into_iter()
        .filter(|name| !has_series(text, name))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_cluster_exports_every_metric_of_the_contract_before_any_traffic() {
    let tb = Testbed::up("leader", &[]);
    let handle = tb.handle();
    let info = handle.info();
    assert!(info.ready, "the cluster API starts a cluster ready");
    for node in &info.nodes {
        let text = scrape(&format!("{}/metrics", node.internal_url)).await;
        let names = EVERY_PROCESS
            .into_iter()
            .chain(node::metrics::METRICS.iter().map(|m| m.name));
        assert_eq!(
            missing(&text, names),
            Vec::<&str>::new(),
            "node {}",
            node.id
        );
        // The availability SLO's series exist at zero for every bank route.
        for route in node::api::API_ROUTES {
            let series = format!("route=\"{route}\"");
            assert!(
                text.lines()
                    .any(|l| l.starts_with("http_requests_total{") && l.contains(&series)),
                "node {}: no http_requests_total for {route}",
                node.id
            );
        }
        let text = handle.paxos(node.id).metrics().await.unwrap();
        let names = EVERY_PROCESS
            .into_iter()
            .chain(paxos::metrics::METRICS.iter().map(|m| m.name));
        assert_eq!(
            missing(&text, names),
            Vec::<&str>::new(),
            "paxos {}",
            node.id
        );
    }
    let text = scrape(&format!("{}/_testbed/metrics", tb.url)).await;
    let names = [
        "build_info",
        node::metrics::HTTP_REQUESTS,
        node::metrics::HTTP_REQUEST_DURATION,
        testbed::frontdoor::EJECTIONS,
    ];
    assert_eq!(missing(&text, names), Vec::<&str>::new(), "front door");
}
