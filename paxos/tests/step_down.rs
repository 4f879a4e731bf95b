//! Leader mode: a leader that stops hearing a majority steps down (check-quorum), so a leader
//! cut off from the others by a partition does not go on claiming the lead (and the load
//! balancer in front of it does not go on sending it writes it cannot commit). One that hears a
//! majority keeps it.

#[path = "support/replicas.rs"]
mod replicas;

use paxos::core::Mode;
use paxos::messages::{Heartbeat, Message};
use replicas::*;

fn heartbeat() -> Message {
    Message::Heartbeat(Heartbeat {
        leading: Vec::new(),
        decided: 0,
        frontier: 0,
        read_seq: 0,
    })
}

#[test]
fn a_leader_that_hears_no_majority_steps_down() {
    let mut leader = replica(0, 3, Mode::Leader);
    assert!(leader.status().is_leader, "a fresh node 0 leads lane 0");
    let election = leader.config().election_ticks;
    let mut stepped_down_at = None;
    for tick in 1..=10 * election {
        leader.tick();
        leader.take_ready();
        if !leader.status().is_leader {
            stepped_down_at = Some(tick);
            break;
        }
    }
    let at = stepped_down_at.expect("an isolated leader steps down");
    assert!(
        at <= 2 * election + 1,
        "it steps down within two election timeouts of silence, not {at} ticks"
    );
}

#[test]
fn a_leader_that_hears_a_majority_keeps_the_lead() {
    let mut leader = replica(0, 3, Mode::Leader);
    let config = leader.config().clone();
    for tick in 1..=20 * config.election_ticks {
        leader.tick();
        leader.take_ready();
        // Node 1's heartbeats: with the leader itself, a majority of three.
        if tick % config.heartbeat_ticks == 0 {
            leader.handle(env(1, 0, heartbeat()));
            leader.take_ready();
        }
        assert!(leader.status().is_leader, "lost the lead at tick {tick}");
    }
}
