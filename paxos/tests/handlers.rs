//! Exact outputs of each message handler. "PMS" is Lamport's "Paxos Made Simple" (2001);
//! "M" is the Mencius paper (Mao, Junqueira, Marzullo, OSDI 2008).

use bytes::Bytes;
use paxos::core::{
    CampaignCause, Config, Mode, Observation, ProposeError, ReadResult, Replica, StepDownCause,
};
use paxos::messages::*;
use paxos::storage::{MemStorage, PersistOp, PersistentState, Storage};

#[path = "support/replicas.rs"]
mod replicas;

use replicas::*;

/// PMS 2.2, phase 1b: a prepare above every earlier promise is promised (durably first).
#[test]
fn acceptor_promises_a_higher_ballot() {
    let mut r = replica(2, 3, Mode::Leader);
    r.take_ready();
    r.handle(env(
        1,
        2,
        Message::Prepare(Prepare {
            lane: 0,
            ballot: b(1, 1),
            from_slot: 1,
        }),
    ));
    let ready = r.take_ready();
    assert_eq!(
        ready.persist,
        vec![PersistOp::Promise {
            lane: 0,
            ballot: b(1, 1)
        }]
    );
    assert_eq!(
        only_message(&ready),
        &env(
            2,
            1,
            Message::Promise(Promise {
                lane: 0,
                ballot: b(1, 1),
                entries: vec![],
                decided: 0
            })
        )
    );
}

/// PMS 2.2: an acceptor never answers a prepare or accept below its promise.
#[test]
fn acceptor_rejects_lower_ballots() {
    let mut r = replica(2, 3, Mode::Leader);
    r.handle(env(
        1,
        2,
        Message::Prepare(Prepare {
            lane: 0,
            ballot: b(2, 1),
            from_slot: 1,
        }),
    ));
    r.take_ready();
    r.handle(env(
        0,
        2,
        Message::Prepare(Prepare {
            lane: 0,
            ballot: b(1, 0),
            from_slot: 1,
        }),
    ));
    let ready = r.take_ready();
    assert!(ready.persist.is_empty());
    let nack = Nack {
        lane: 0,
        ballot: b(1, 0),
        promised: b(2, 1),
        reason: NackReason::HigherBallot,
        decided: 0,
    };
    assert_eq!(
        only_message(&ready),
        &env(2, 0, Message::Nack(nack.clone()))
    );
    let accept = Accept {
        lane: 0,
        ballot: b(1, 0),
        entries: vec![(1, batch(&["x"]))],
        decided_up_to: 0,
    };
    r.handle(env(0, 2, Message::Accept(accept)));
    let ready = r.take_ready();
    assert!(
        ready.persist.is_empty(),
        "nothing accepted below the promise"
    );
    assert_eq!(only_message(&ready), &env(2, 0, Message::Nack(nack)));
}

/// PMS 2.2, phase 2b: accept at or above the promise, durably, and acknowledge.
#[test]
fn acceptor_accepts_and_acknowledges() {
    let mut r = replica(1, 3, Mode::Leader);
    r.take_ready();
    let v = batch(&["a", "b"]);
    let accept = Accept {
        lane: 0,
        ballot: b(0, 0),
        entries: vec![(1, v.clone())],
        decided_up_to: 0,
    };
    r.handle(env(0, 1, Message::Accept(accept)));
    let ready = r.take_ready();
    assert_eq!(
        ready.persist,
        vec![PersistOp::Accept {
            slot: 1,
            ballot: b(0, 0),
            value: v
        }]
    );
    assert_eq!(
        only_message(&ready),
        &env(
            1,
            0,
            Message::Accepted(Accepted {
                lane: 0,
                ballot: b(0, 0),
                slots: vec![1]
            })
        )
    );
}

/// PMS 2.2 (P2c): a promise reports what the acceptor accepted, with its ballot.
#[test]
fn promise_reports_accepted_values() {
    let mut r = replica(1, 3, Mode::Leader);
    let v = batch(&["a"]);
    let accept = Accept {
        lane: 0,
        ballot: b(0, 0),
        entries: vec![(1, v.clone())],
        decided_up_to: 0,
    };
    r.handle(env(0, 1, Message::Accept(accept)));
    r.take_ready();
    r.handle(env(
        2,
        1,
        Message::Prepare(Prepare {
            lane: 0,
            ballot: b(1, 2),
            from_slot: 1,
        }),
    ));
    let ready = r.take_ready();
    let entries = vec![PromiseEntry {
        slot: 1,
        ballot: b(0, 0),
        value: v,
        decided: false,
    }];
    assert_eq!(
        only_message(&ready),
        &env(
            1,
            2,
            Message::Promise(Promise {
                lane: 0,
                ballot: b(1, 2),
                entries,
                decided: 0
            })
        )
    );
}

/// PMS 3: a learner that accepted a slot at the deciding ballot learns it from a Decide.
#[test]
fn decide_delivers_accepted_values_in_order() {
    let mut r = replica(1, 3, Mode::Leader);
    let (v1, v2) = (batch(&["1"]), batch(&["2"]));
    let accept = Accept {
        lane: 0,
        ballot: b(0, 0),
        entries: vec![(1, v1.clone()), (2, v2.clone())],
        decided_up_to: 0,
    };
    r.handle(env(0, 1, Message::Accept(accept)));
    r.take_ready();
    r.handle(env(
        0,
        1,
        Message::Decide(Decide {
            lane: 0,
            ballot: b(0, 0),
            up_to: 2,
        }),
    ));
    let ready = r.take_ready();
    assert_eq!(ready.decided, vec![(1, v1.clone()), (2, v2.clone())]);
    assert_eq!(
        ready.persist,
        vec![
            PersistOp::Decide { slot: 1, value: v1 },
            PersistOp::Decide { slot: 2, value: v2 }
        ]
    );
}

/// A Decide for a ballot this replica did not accept at means it may hold a stale value: it
/// asks for the decided entries instead of guessing.
#[test]
fn decide_at_another_ballot_triggers_catch_up() {
    let mut r = replica(1, 3, Mode::Leader);
    let accept = Accept {
        lane: 0,
        ballot: b(0, 0),
        entries: vec![(1, batch(&["old"]))],
        decided_up_to: 0,
    };
    r.handle(env(0, 1, Message::Accept(accept)));
    r.take_ready();
    r.handle(env(
        2,
        1,
        Message::Decide(Decide {
            lane: 0,
            ballot: b(3, 2),
            up_to: 1,
        }),
    ));
    let ready = r.take_ready();
    assert!(ready.decided.is_empty());
    assert_eq!(
        only_message(&ready),
        &env(1, 2, Message::CatchUp(CatchUp { from_slot: 1 }))
    );
    let reply = CatchUpReply {
        snapshot: None,
        entries: vec![(1, batch(&["new"]))],
    };
    r.handle(env(2, 1, Message::CatchUpReply(reply)));
    assert_eq!(r.take_ready().decided, vec![(1, batch(&["new"]))]);
}

/// PMS 3: the leader skips phase 1 while its ballot holds; a majority of acks decides.
#[test]
fn leader_proposes_batches_and_decides_on_a_majority() {
    let mut r = replica(0, 3, Mode::Leader);
    r.take_ready();
    r.propose(vec![cmd("a"), cmd("b")]).unwrap();
    let ready = r.take_ready();
    let v = batch(&["a", "b"]);
    assert_eq!(
        ready.persist,
        vec![PersistOp::Accept {
            slot: 1,
            ballot: b(0, 0),
            value: v.clone()
        }]
    );
    let accept = Accept {
        lane: 0,
        ballot: b(0, 0),
        entries: vec![(1, v.clone())],
        decided_up_to: 0,
    };
    // A fresh leader has synced nothing yet: its first accepts at the default ballot wait for
    // the sync (sent early, a crash could let its next life reuse (0, 0) for another value).
    assert!(ready.early.is_empty(), "{:?}", ready.early);
    assert_eq!(
        ready.messages,
        vec![
            env(0, 1, Message::Accept(accept.clone())),
            env(0, 2, Message::Accept(accept))
        ]
    );
    r.handle(env(
        2,
        0,
        Message::Accepted(Accepted {
            lane: 0,
            ballot: b(0, 0),
            slots: vec![1],
        }),
    ));
    let ready = r.take_ready();
    assert_eq!(ready.decided, vec![(1, v)]);
    // The followers are told on the next tick (or by the next accept), not by a message per
    // round: only the leader's node answers clients.
    assert!(ready.messages.is_empty(), "{:?}", ready.messages);
    r.tick();
    let ready = r.take_ready();
    let decide = Decide {
        lane: 0,
        ballot: b(0, 0),
        up_to: 1,
    };
    let decides: Vec<&Envelope> = ready
        .messages
        .iter()
        .filter(|m| matches!(m.msg, Message::Decide(_)))
        .collect();
    assert_eq!(
        decides,
        vec![
            &env(0, 1, Message::Decide(decide.clone())),
            &env(0, 2, Message::Decide(decide))
        ]
    );
    r.tick();
    let ready = r.take_ready();
    assert!(
        ready
            .messages
            .iter()
            .all(|m| !matches!(m.msg, Message::Decide(_))),
        "told once"
    );
}

/// Leader mode: an accept carries the decided prefix, so no `Decide` follows it.
#[test]
fn an_accept_carries_the_decided_prefix_instead_of_a_decide() {
    let mut r = replica(0, 3, Mode::Leader);
    r.propose(vec![cmd("first")]).unwrap();
    r.take_ready();
    r.handle(env(
        1,
        0,
        Message::Accepted(Accepted {
            lane: 0,
            ballot: b(0, 0),
            slots: vec![1],
        }),
    ));
    r.propose(vec![cmd("second")]).unwrap();
    let ready = r.take_ready();
    let accepts: Vec<u64> = ready
        .early
        .iter()
        .chain(&ready.messages)
        .filter_map(|m| match &m.msg {
            Message::Accept(a) => Some(a.decided_up_to),
            _ => None,
        })
        .collect();
    assert_eq!(
        accepts,
        vec![1, 1],
        "both followers learn slot 1 from the accept of slot 2"
    );
    r.tick();
    let ready = r.take_ready();
    assert!(
        ready
            .messages
            .iter()
            .all(|m| !matches!(m.msg, Message::Decide(_))),
        "{:?}",
        ready.messages
    );
}

/// A leader that hears of a higher ballot steps down and hands back queued commands.
#[test]
fn leader_steps_down_on_a_higher_ballot() {
    let mut cfg = Config::new(0, 3, Mode::Leader);
    cfg.window = 1;
    let mut r = Replica::new(cfg, PersistentState::default());
    r.propose(vec![cmd("in-flight")]).unwrap();
    r.take_ready();
    r.propose(vec![cmd("queued")]).unwrap();
    r.take_ready();
    let nack = Nack {
        lane: 0,
        ballot: b(0, 0),
        promised: b(1, 2),
        reason: NackReason::HigherBallot,
        decided: 0,
    };
    r.handle(env(1, 0, Message::Nack(nack)));
    let ready = r.take_ready();
    assert_eq!(ready.dropped, vec![cmd("queued")]);
    assert!(
        ready.observations.contains(&Observation::StepDown {
            lane: 0,
            cause: StepDownCause::HigherBallot
        }),
        "the step-down says why: {:?}",
        ready.observations
    );
    assert!(!r.status().is_leader);
    assert_eq!(
        r.propose(vec![cmd("c")]),
        Err(ProposeError::NotLeader { leader: Some(2) })
    );
}

/// PMS 2.2 + 3: a follower that stops hearing the leader runs phase 1 at a new ballot, and
/// re-proposes the value accepted at the highest ballot it was told about.
#[test]
fn silent_leader_is_replaced_and_accepted_values_survive() {
    let mut r = replica(1, 3, Mode::Leader);
    let ready = tick_until(&mut r, |ready| {
        ready
            .messages
            .iter()
            .any(|m| matches!(m.msg, Message::Prepare(_)))
    });
    assert!(
        ready.persist.contains(&PersistOp::Promise {
            lane: 0,
            ballot: b(1, 1)
        }),
        "own promise first"
    );
    // The election says whom it replaces and how long that replica was silent (the leader never
    // sent a heartbeat here: every tick so far).
    let election_ticks = Config::new(1, 3, Mode::Leader).election_ticks;
    let campaign = ready.observations.iter().find_map(|o| match o {
        Observation::Campaign { lane: 0, cause } => Some(*cause),
        _ => None,
    });
    match campaign {
        Some(CampaignCause::HolderSilent { holder: 0, ticks }) => {
            assert!(ticks > election_ticks, "silent {ticks} ticks");
        }
        other => panic!("expected the silent leader 0 as the cause, got {other:?}"),
    }
    let v = batch(&["survivor"]);
    let entries = vec![PromiseEntry {
        slot: 1,
        ballot: b(0, 0),
        value: v.clone(),
        decided: false,
    }];
    r.handle(env(
        2,
        1,
        Message::Promise(Promise {
            lane: 0,
            ballot: b(1, 1),
            entries,
            decided: 0,
        }),
    ));
    let ready = r.take_ready();
    assert!(r.status().is_leader);
    assert_eq!(
        ready.persist,
        vec![PersistOp::Accept {
            slot: 1,
            ballot: b(1, 1),
            value: v.clone()
        }]
    );
    let accept = Accept {
        lane: 0,
        ballot: b(1, 1),
        entries: vec![(1, v)],
        decided_up_to: 0,
    };
    // Its ballot's promise was synced before its prepare went out: the accept may leave
    // before this step's write is synced.
    assert_eq!(ready.early[0], env(1, 0, Message::Accept(accept)));
    assert!(
        ready
            .messages
            .iter()
            .all(|m| !matches!(m.msg, Message::Accept(_))),
        "every accept is early"
    );
}

/// A restarted replica keeps its promises and never reuses a ballot.
#[test]
fn restart_keeps_promises_and_never_reuses_a_ballot() {
    let mut storage = MemStorage::default();
    let mut r = replica(1, 3, Mode::Leader);
    r.handle(env(
        2,
        1,
        Message::Prepare(Prepare {
            lane: 0,
            ballot: b(5, 2),
            from_slot: 1,
        }),
    ));
    storage.write(&r.take_ready().persist).unwrap();
    let mut r = Replica::new(Config::new(1, 3, Mode::Leader), storage.load().unwrap());
    r.take_ready();
    r.handle(env(
        0,
        1,
        Message::Prepare(Prepare {
            lane: 0,
            ballot: b(4, 0),
            from_slot: 1,
        }),
    ));
    let ready = r.take_ready();
    assert!(
        matches!(only_message(&ready).msg, Message::Nack(Nack { promised, .. }) if promised == b(5, 2))
    );
    r.start_election();
    let ready = r.take_ready();
    storage.write(&ready.persist).unwrap();
    assert!(ready.persist.contains(&PersistOp::Promise {
        lane: 0,
        ballot: b(6, 1)
    }));
    let mut r = Replica::new(Config::new(1, 3, Mode::Leader), storage.load().unwrap());
    r.start_election();
    assert!(r.take_ready().persist.contains(&PersistOp::Promise {
        lane: 0,
        ballot: b(7, 1)
    }));
}

/// M 4.1: in leaderless mode a replica proposes in its own lane at (0, id) with no phase 1:
/// one round trip.
#[test]
fn leaderless_replica_proposes_in_its_own_lane_without_phase_1() {
    let mut r = replica(1, 3, Mode::Leaderless);
    r.take_ready();
    r.propose(vec![cmd("x")]).unwrap();
    let ready = r.take_ready();
    assert_eq!(
        ready.persist,
        vec![PersistOp::Accept {
            slot: 2,
            ballot: b(0, 1),
            value: batch(&["x"])
        }]
    );
    assert!(
        ready
            .messages
            .iter()
            .all(|m| matches!(&m.msg, Message::Accept(a) if a.lane == 1))
    );
    r.handle(env(
        0,
        1,
        Message::Accepted(Accepted {
            lane: 1,
            ballot: b(0, 1),
            slots: vec![2],
        }),
    ));
    assert!(r.take_ready().persist.contains(&PersistOp::Decide {
        slot: 2,
        value: batch(&["x"])
    }));
}

/// The entries of every accept of `lane` that `ready` sends to replica `to`.
fn accepts_of(ready: &paxos::core::Ready, lane: u32, to: u32) -> Vec<Vec<(u64, Value)>> {
    ready
        .early
        .iter()
        .chain(&ready.messages)
        .filter_map(|m| match &m.msg {
            Message::Accept(a) if a.lane == lane && m.to == to => Some(a.entries.clone()),
            _ => None,
        })
        .collect()
}

/// Replica 2's accept of `entries` in its own lane, at its default ballot, to replica 0.
fn from_lane_2(entries: Vec<(u64, Value)>) -> Envelope {
    let accept = Accept {
        lane: 2,
        ballot: b(0, 2),
        entries,
        decided_up_to: 0,
    };
    env(2, 0, Message::Accept(accept))
}

/// No-ops at `slots`.
fn noops(slots: impl IntoIterator<Item = u64>) -> Vec<(u64, Value)> {
    slots.into_iter().map(|slot| (slot, Value::Noop)).collect()
}

/// M 4.2: a replica that sees a command proposed at a later slot skips its own earlier slots
/// with no-ops at once, in one accept (the command waits for them; a skip on the next tick
/// made it wait up to a tick).
#[test]
fn leaderless_replica_skips_its_slots_below_a_command_at_once() {
    let mut r = replica(0, 3, Mode::Leaderless);
    r.take_ready();
    r.handle(from_lane_2(vec![(6, batch(&["y"]))]));
    let ready = r.take_ready();
    assert_eq!(accepts_of(&ready, 0, 1), vec![noops([1, 4])]);
}

/// Only commands make a replica skip at once: other replicas' no-ops (a revoked lane's fill)
/// wait for the tick, so commands that arrive meanwhile take the slots.
#[test]
fn no_ops_elsewhere_do_not_make_a_leaderless_replica_skip_at_once() {
    let mut r = replica(0, 3, Mode::Leaderless);
    r.take_ready();
    r.propose(vec![cmd("x")]).unwrap();
    assert_eq!(
        accepts_of(&r.take_ready(), 0, 1),
        vec![vec![(1, batch(&["x"]))]]
    );
    r.handle(from_lane_2(noops((1..=4).map(|round| 3 * round))));
    assert!(accepts_of(&r.take_ready(), 0, 1).is_empty());
    r.propose(vec![cmd("z")]).unwrap();
    assert_eq!(
        accepts_of(&r.take_ready(), 0, 1),
        vec![vec![(4, batch(&["z"]))]]
    );
    r.handle(from_lane_2(vec![(15, batch(&["y"]))]));
    assert_eq!(accepts_of(&r.take_ready(), 0, 1), vec![noops([7, 10, 13])]);
}

/// Catch-up serves every decided entry past the asker's index, past the responder's own
/// undecided slots too: in leaderless mode each replica may know its own lane decided far past
/// the slot it waits for, and the asker may hold that slot's decision in turn.
#[test]
fn catch_up_serves_decided_entries_past_an_undecided_slot() {
    let mut r = replica(0, 3, Mode::Leaderless);
    r.take_ready();
    for (what, slot) in [("a", 1), ("b", 4)] {
        r.propose(vec![cmd(what)]).unwrap();
        r.take_ready();
        let accepted = Accepted {
            lane: 0,
            ballot: b(0, 0),
            slots: vec![slot],
        };
        r.handle(env(1, 0, Message::Accepted(accepted)));
        r.take_ready();
    }
    // Slots 2 and 3 (lanes 1 and 2) are unknown here: the decided index is 1.
    r.handle(env(2, 0, Message::CatchUp(CatchUp { from_slot: 2 })));
    let ready = r.take_ready();
    let replies: Vec<_> = ready
        .messages
        .iter()
        .filter_map(|m| match &m.msg {
            Message::CatchUpReply(reply) if m.to == 2 => Some(reply.entries.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(replies, vec![vec![(4, batch(&["b"]))]]);
}

/// M 4.3: when a silent replica's slot blocks the log, another revokes its lane with phase 1
/// at a higher ballot and fills the slot with a no-op.
#[test]
fn leaderless_replicas_revoke_a_silent_lane() {
    let mut r = replica(0, 3, Mode::Leaderless);
    // Replica 1 proposes slots 2 and 5 (lane 1) and slot 2 is decided; replica 0 skips its
    // slots 1 and 4, which replica 1 accepts. Replica 2 (lane 2, slot 3) is never heard from.
    let entries = vec![(2, batch(&["y"])), (5, batch(&["z"]))];
    r.handle(env(
        1,
        0,
        Message::Accept(Accept {
            lane: 1,
            ballot: b(0, 1),
            entries,
            decided_up_to: 0,
        }),
    ));
    r.handle(env(
        1,
        0,
        Message::Decide(Decide {
            lane: 1,
            ballot: b(0, 1),
            up_to: 2,
        }),
    ));
    r.tick();
    r.handle(env(
        1,
        0,
        Message::Accepted(Accepted {
            lane: 0,
            ballot: b(0, 0),
            slots: vec![1, 4],
        }),
    ));
    assert_eq!(
        r.take_ready().decided,
        vec![(1, Value::Noop), (2, batch(&["y"]))]
    );
    let ready = tick_until(&mut r, |ready| {
        ready
            .messages
            .iter()
            .any(|m| matches!(&m.msg, Message::Prepare(p) if p.lane == 2))
    });
    let prepare = ready
        .messages
        .iter()
        .find_map(|m| match &m.msg {
            Message::Prepare(p) if m.to == 1 => Some(p.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        prepare,
        Prepare {
            lane: 2,
            ballot: b(1, 0),
            from_slot: 3
        }
    );
    r.handle(env(
        1,
        0,
        Message::Promise(Promise {
            lane: 2,
            ballot: b(1, 0),
            entries: vec![],
            decided: 0,
        }),
    ));
    r.take_ready();
    // The revoked slot is filled with a no-op at the next tick, with every other skip.
    r.tick();
    let ready = r.take_ready();
    assert!(ready.persist.contains(&PersistOp::Accept {
        slot: 3,
        ballot: b(1, 0),
        value: Value::Noop
    }));
}

/// Read index: a leader answers a read point only after a majority confirms its ballot.
#[test]
fn read_index_waits_for_a_majority() {
    let mut r = replica(0, 3, Mode::Leader);
    r.take_ready();
    r.read_index(7).unwrap();
    let ready = r.take_ready();
    assert!(ready.reads.is_empty());
    let seq = ready
        .messages
        .iter()
        .find_map(|m| match &m.msg {
            Message::Heartbeat(h) => Some(h.read_seq),
            _ => None,
        })
        .unwrap();
    r.handle(env(
        1,
        0,
        Message::HeartbeatAck(HeartbeatAck {
            lane: 0,
            ballot: b(0, 0),
            read_seq: seq,
        }),
    ));
    assert_eq!(
        r.take_ready().reads,
        vec![ReadResult::Ready { id: 7, index: 0 }]
    );
    let mut follower = replica(1, 3, Mode::Leader);
    assert!(follower.read_index(1).is_err());
}

/// Compaction: the log keeps only entries after the snapshot, and a lagging replica gets the
/// snapshot through catch-up.
#[test]
fn compacted_entries_are_served_as_a_snapshot() {
    let mut r = Replica::new(Config::new(0, 1, Mode::Leader), PersistentState::default());
    let mut decided = 0;
    for i in 0..5 {
        r.propose(vec![cmd(&format!("c{i}"))]).unwrap();
        decided += r.take_ready().decided.len();
    }
    assert_eq!(decided, 5);
    r.compact(3, Bytes::from_static(b"state@3"));
    assert_eq!(
        r.take_ready().persist,
        vec![PersistOp::Snapshot {
            slot: 3,
            data: Bytes::from_static(b"state@3")
        }]
    );
    assert_eq!(
        r.decided_entries(1, 10).len(),
        2,
        "only slots 4 and 5 remain"
    );
}

#[test]
fn snapshot_is_served_to_a_replica_that_is_behind() {
    let mut cfg = Config::new(0, 3, Mode::Leader);
    cfg.max_retained_log = 2;
    let mut r = Replica::new(cfg, PersistentState::default());
    r.propose(vec![cmd("a")]).unwrap();
    r.take_ready();
    r.handle(env(
        1,
        0,
        Message::Accepted(Accepted {
            lane: 0,
            ballot: b(0, 0),
            slots: vec![1],
        }),
    ));
    let ready = r.take_ready();
    assert_eq!(ready.decided.len(), 1);
    r.compact(1, Bytes::from_static(b"snap"));
    r.take_ready();
    r.handle(env(2, 0, Message::CatchUp(CatchUp { from_slot: 1 })));
    let ready = r.take_ready();
    let reply = CatchUpReply {
        snapshot: Some((1, Bytes::from_static(b"snap"))),
        entries: vec![],
    };
    assert_eq!(
        only_message(&ready),
        &env(0, 2, Message::CatchUpReply(reply.clone()))
    );
    let mut lagging = replica(2, 3, Mode::Leader);
    lagging.handle(env(0, 2, Message::CatchUpReply(reply)));
    let ready = lagging.take_ready();
    assert_eq!(ready.snapshot, Some((1, Bytes::from_static(b"snap"))));
    assert_eq!(lagging.status().decided, 1);
}

#[test]
fn config_validation_names_the_bad_value() {
    let mut cfg = Config::new(3, 3, Mode::Leader);
    assert!(cfg.validate().unwrap_err().contains("got 3"));
    cfg.id = 0;
    cfg.election_ticks = 1;
    assert!(cfg.validate().unwrap_err().contains("election_ticks (1)"));
}

#[test]
fn proposals_beyond_the_pending_limit_are_refused() {
    let mut cfg = Config::new(0, 3, Mode::Leader);
    cfg.max_pending_commands = 2;
    cfg.window = 1;
    let mut r = Replica::new(cfg, PersistentState::default());
    r.propose(vec![cmd("1")]).unwrap();
    r.take_ready(); // "1" takes the one window slot
    r.propose(vec![cmd("2"), cmd("3")]).unwrap();
    assert_eq!(r.propose(vec![cmd("4")]), Err(ProposeError::Overloaded));
}

#[test]
fn reads_beyond_the_pending_limit_are_refused() {
    let mut cfg = Config::new(0, 3, Mode::Leader);
    cfg.max_pending_commands = 1;
    let mut r = Replica::new(cfg, PersistentState::default());
    r.read_index(1).unwrap();
    assert_eq!(r.read_index(2), Err(ProposeError::Overloaded));
    // One confirmation round serves the waiting read; then there is room again.
    let seq = r
        .take_ready()
        .messages
        .iter()
        .find_map(|m| match &m.msg {
            Message::Heartbeat(h) => Some(h.read_seq),
            _ => None,
        })
        .unwrap();
    r.handle(env(
        2,
        0,
        Message::HeartbeatAck(HeartbeatAck {
            lane: 0,
            ballot: b(0, 0),
            read_seq: seq,
        }),
    ));
    assert_eq!(
        r.take_ready().reads,
        vec![ReadResult::Ready { id: 1, index: 0 }]
    );
    r.read_index(3).unwrap();
}

/// Proposals that arrive together (one burst of the driver's inputs, between two
/// `take_ready`s) share a slot: one accept per peer carries all of them, not one a proposal.
#[test]
fn a_burst_of_proposals_shares_one_slot_in_both_modes() {
    for mode in [Mode::Leader, Mode::Leaderless] {
        let mut r = replica(0, 3, mode);
        r.take_ready();
        r.propose(vec![cmd("a")]).unwrap();
        r.propose(vec![cmd("b"), cmd("c")]).unwrap();
        r.propose(vec![cmd("d")]).unwrap();
        let ready = r.take_ready();
        let accepts: Vec<&PersistOp> = ready
            .persist
            .iter()
            .filter(|op| matches!(op, PersistOp::Accept { .. }))
            .collect();
        assert_eq!(
            accepts,
            vec![&PersistOp::Accept {
                slot: 1,
                ballot: b(0, 0),
                value: batch(&["a", "b", "c", "d"])
            }],
            "{mode}"
        );
        let sent: Vec<u32> = ready
            .messages
            .iter()
            .chain(&ready.early)
            .filter(|e| matches!(e.msg, Message::Accept(_)))
            .map(|e| e.to)
            .collect();
        assert_eq!(sent, vec![1, 2], "{mode}: one accept per peer");
    }
}

/// Leaderless, under load: a step that both accepts a peer's slots and proposes this replica's
/// own commands sends its accept to that peer together with its `Accepted` (which waits for
/// the sync anyway): one frame instead of two, and one step fewer for the peer. An accept to a
/// peer this step does not answer still leaves early.
#[test]
fn an_accept_of_commands_rides_with_the_answer_to_the_same_peer() {
    let mut r = replica(0, 3, Mode::Leaderless);
    r.take_ready();
    // A first synced step (before it, no accept may leave early at all).
    r.propose(vec![cmd("a")]).unwrap();
    r.take_ready();
    r.handle(env(
        2,
        0,
        Message::Accept(Accept {
            lane: 2,
            ballot: b(0, 2),
            entries: vec![(3, batch(&["y"]))],
            decided_up_to: 0,
        }),
    ));
    r.propose(vec![cmd("b")]).unwrap();
    let ready = r.take_ready();
    let kinds = |envelopes: &[Envelope], to: u32| -> Vec<&'static str> {
        envelopes
            .iter()
            .filter(|e| e.to == to)
            .map(|e| match &e.msg {
                Message::Accept(_) => "accept",
                Message::Accepted(_) => "accepted",
                _ => "other",
            })
            .filter(|kind| *kind != "other")
            .collect()
    };
    assert_eq!(
        kinds(&ready.early, 2),
        Vec::<&str>::new(),
        "held for the answer"
    );
    assert_eq!(kinds(&ready.messages, 2), vec!["accept", "accepted"]);
    assert_eq!(
        kinds(&ready.early, 1),
        vec!["accept"],
        "peer 1 is not answered"
    );
    assert_eq!(kinds(&ready.messages, 1), Vec::<&str>::new());
}

/// Check-quorum: a leader that hears no majority for two election timeouts steps down, and says
/// so (the log line an operator reads after an unexpected election).
#[test]
fn a_leader_cut_off_from_a_majority_steps_down_and_says_why() {
    let mut r = replica(0, 3, Mode::Leader);
    assert!(r.status().is_leader, "a fresh replica 0 leads at (0, 0)");
    let election_ticks = Config::new(0, 3, Mode::Leader).election_ticks;
    let ready = tick_until(&mut r, |ready| {
        ready
            .observations
            .iter()
            .any(|o| matches!(o, Observation::StepDown { .. }))
    });
    assert!(!r.status().is_leader);
    assert!(
        ready.observations.contains(&Observation::StepDown {
            lane: 0,
            cause: StepDownCause::NoMajorityHeard {
                ticks: 2 * election_ticks
            }
        }),
        "{:?}",
        ready.observations
    );
}

/// An election asked for (the prober's `POST /elect`) is told apart from one a silence caused.
#[test]
fn a_requested_election_says_it_was_requested() {
    let mut r = replica(1, 3, Mode::Leader);
    r.take_ready();
    r.start_election();
    let ready = r.take_ready();
    assert_eq!(
        ready.observations,
        vec![Observation::Campaign {
            lane: 0,
            cause: CampaignCause::Requested
        }]
    );
}
