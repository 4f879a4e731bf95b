//! The deterministic simulator over many seeds, both modes, N = 3, 5 and 7.
//!
//! `PAXOS_SIM_SEEDS` sets seeds per configuration (default 2,500 for N = 3 and 5, a fifth of it
//! for N = 7, whose runs cost about three times as much);
//! `PAXOS_SIM_FIRST_SEED` the first seed. `replay` runs one seed from `PAXOS_SIM_SEED`,
//! `PAXOS_SIM_NODES` and `PAXOS_SIM_MODE`, as printed by a failure.

use paxos::core::Mode;
use paxos::sim::{SimConfig, run, run_seeds};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn seeds(nodes: u32, mode: Mode) {
    let count = env_u64("PAXOS_SIM_SEEDS", 2_500);
    let count = if nodes >= 7 { count.div_ceil(5) } else { count };
    let first = env_u64("PAXOS_SIM_FIRST_SEED", 1);
    match run_seeds(first, count, nodes, mode) {
        Ok(reports) => {
            let commands: u64 = reports.iter().map(|r| r.commands_decided).sum();
            let crashes: u64 = reports.iter().map(|r| r.crashes).sum();
            let partitions: u64 = reports.iter().map(|r| r.partitions).sum();
            let wipes: u64 = reports.iter().map(|r| r.wipes).sum();
            let reads: u64 = reports.iter().map(|r| r.reads_checked).sum();
            let early: u64 = reports.iter().map(|r| r.early_accepts).sum();
            let early_crashes: u64 = reports.iter().map(|r| r.early_crashes).sum();
            let settle = reports
                .iter()
                .map(|r| r.settle_ticks_used)
                .max()
                .unwrap_or(0);
            println!(
                "{count} seeds ({mode:?}, N={nodes}): {commands} commands decided, {reads} reads checked, {crashes} crashes ({early_crashes} between early accepts and their sync; {early} accepts sent early), {wipes} wipes, {partitions} partitions, slowest settle {settle} ticks"
            );
            assert!(commands > count, "the simulations decided almost nothing");
            // The hazard the early accepts bring (a crash before their step is synced) is
            // exercised, not just allowed.
            assert!(
                early_crashes > 0 && early > count,
                "early accepts or crashes after them never happened"
            );
        }
        Err(failure) => panic!("{failure}"),
    }
}

#[test]
fn leader_mode_3_replicas() {
    seeds(3, Mode::Leader);
}

#[test]
fn leader_mode_5_replicas() {
    seeds(5, Mode::Leader);
}

#[test]
fn leaderless_mode_3_replicas() {
    seeds(3, Mode::Leaderless);
}

#[test]
fn leaderless_mode_5_replicas() {
    seeds(5, Mode::Leaderless);
}

#[test]
fn leader_mode_7_replicas() {
    seeds(7, Mode::Leader);
}

#[test]
fn leaderless_mode_7_replicas() {
    seeds(7, Mode::Leaderless);
}

#[test]
fn replay() {
    let Ok(seed) = std::env::var("PAXOS_SIM_SEED") else {
        println!("0 seeds (set PAXOS_SIM_SEED to replay one)");
        return;
    };
    let seed: u64 = seed.parse().expect("PAXOS_SIM_SEED is a number");
    let nodes = env_u64("PAXOS_SIM_NODES", 3) as u32;
    let mode: Mode = std::env::var("PAXOS_SIM_MODE").map_or(Mode::Leader, |mode| {
        mode.parse()
            .expect("PAXOS_SIM_MODE is leader or leaderless")
    });
    match run(SimConfig::standard(seed, nodes, mode)) {
        Ok(report) => println!("1 seeds: seed {seed} passed: {report:?}"),
        Err(failure) => panic!("{failure}"),
    }
}
