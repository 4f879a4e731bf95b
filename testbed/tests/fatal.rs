//! A full disk ends the cluster's processes and the testbed restarts them, like a kubelet
//! restarts a crashed container (review item 5); once there is space again the cluster serves.

mod common;
#[path = "../../paxos/tests/support/small_disk.rs"]
mod small_disk;

use std::time::{Duration, Instant};

use common::{Testbed, open_account, uuid_key};
use serde_json::json;

fn restarts(cluster: &serde_json::Value) -> u64 {
    cluster["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node_restarts"].as_u64().unwrap() + n["paxos_restarts"].as_u64().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_that_hit_a_full_disk_exit_and_the_testbed_restarts_them() {
    let Some(disk) = small_disk::SmallDisk::mount(64) else {
        return;
    };
    let tb = Testbed::up_in("leader", &[], &[], Some(&disk.path.join("data")));
    let account = open_account(&tb.client, &tb.url).await;
    assert_eq!(restarts(&tb.cluster().await), 0);

    disk.fill();
    let deadline = Instant::now() + Duration::from_secs(60);
    while restarts(&tb.cluster().await) == 0 {
        assert!(
            Instant::now() < deadline,
            "no process exited on a full disk"
        );
        let _ = tb
            .client
            .post(format!("{}/deposit_money", tb.url))
            .json(&json!({"account_id": account, "amount": 1}))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    eprintln!(
        "restarts after the disk filled: {}",
        restarts(&tb.cluster().await)
    );
    disk.free();
    let key = uuid_key();
    let answer = common::send_retrying(
        &tb.client,
        reqwest::Method::POST,
        &format!("{}/deposit_money", tb.url),
        Some(json!({"account_id": account, "amount": 5})),
        Some(&key),
        Instant::now() + Duration::from_secs(90),
    )
    .await
    .expect("the restarted cluster serves once the disk has space");
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    drop(tb);
}
