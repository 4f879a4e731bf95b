//! The bounded exhaustive search of `paxos::model` for N = 3 and N = 5, leader mode: every
//! schedule of a few rounds (two proposers, one wipe, one read) is safe.
//!
//! `PAXOS_MODEL_EXTRA_DEPTH=k` searches k rounds deeper than the CI bounds below
//! (`scripts/model-soak` does); every extra round multiplied the time by about 10 where
//! measured.

use paxos::core::Mode;
use paxos::model::{ModelConfig, check};

fn depth(ci: usize) -> usize {
    let extra: usize = std::env::var("PAXOS_MODEL_EXTRA_DEPTH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    ci + extra
}

fn search(cfg: ModelConfig) {
    let start = std::time::Instant::now();
    match check(&cfg) {
        Ok(report) => println!(
            "model N={} {:?} depth {}: {} states, {} rounds run, {:.1} s",
            cfg.nodes,
            cfg.mode,
            report.depth,
            report.states,
            report.transitions,
            start.elapsed().as_secs_f64()
        ),
        Err(violation) => panic!("N={} {:?}: {violation}", cfg.nodes, cfg.mode),
    }
}

#[test]
fn three_replicas_two_proposers_one_wipe_one_read() {
    search(ModelConfig {
        nodes: 3,
        mode: Mode::Leader,
        proposers: vec![0, 1],
        wiped: vec![2],
        reads: true,
        max_with: 2,
        max_depth: depth(6),
        max_states: 50_000_000,
    });
}

#[test]
fn five_replicas_two_proposers_one_wipe() {
    search(ModelConfig {
        nodes: 5,
        mode: Mode::Leader,
        proposers: vec![0, 4],
        wiped: vec![1],
        reads: false,
        max_with: 2,
        max_depth: depth(5),
        max_states: 50_000_000,
    });
}

#[test]
fn three_replicas_leaderless_two_proposers_one_wipe() {
    search(ModelConfig {
        nodes: 3,
        mode: Mode::Leaderless,
        proposers: vec![0, 1],
        wiped: vec![2],
        reads: false,
        max_with: 2,
        max_depth: depth(7),
        max_states: 50_000_000,
    });
}
