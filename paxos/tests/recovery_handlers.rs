//! Exact outputs of the recovery handlers: a replica that lost its state asks a majority what it
//! may have promised and how far the log went, and does not vote until it has learned it.

use paxos::NodeId;
use paxos::core::{Config, Mode, Replica};
use paxos::messages::*;
use paxos::storage::{PersistOp, PersistentState};

#[path = "support/replicas.rs"]
mod replicas;

use replicas::*;

fn rejoining(id: NodeId) -> Replica {
    let mut cfg = Config::new(id, 3, Mode::Leader);
    cfg.rejoin = true;
    Replica::new(cfg, PersistentState::default())
}

/// The first round of a recovery: replicas 0 and 1 report the incarnation of replica 2 they
/// know; the second round's queries (returned) carry the incarnation replica 2 then wants.
fn first_round(r: &mut Replica, known: [u64; 2]) -> Vec<Envelope> {
    for (from, known) in [(0, known[0]), (1, known[1])] {
        let reply = RecoveryReply {
            known,
            promised: vec![b(0, 0)],
            decided: 0,
            frontier: 0,
        };
        r.handle(Envelope {
            incarnations: vec![0, 0, known],
            ..env(from, 2, Message::RecoveryReply(reply))
        });
    }
    r.take_ready()
        .messages
        .into_iter()
        .filter(|m| m.msg == Message::RecoveryQuery)
        .collect()
}

/// A replica that lost its state asks the others and does not vote until it knows enough.
#[test]
fn rejoining_replica_does_not_vote_until_it_recovered() {
    let mut r = rejoining(2);
    let ready = r.take_ready();
    let asked: Vec<NodeId> = ready
        .messages
        .iter()
        .filter(|m| m.msg == Message::RecoveryQuery && m.incarnation_of(2) == 0)
        .map(|m| m.to)
        .collect();
    assert_eq!(asked, vec![0, 1], "first it asks which incarnation it had");
    assert!(r.is_recovering());
    let second: Vec<(NodeId, u64)> = first_round(&mut r, [0, 0])
        .iter()
        .map(|m| (m.to, m.incarnation_of(2)))
        .collect();
    assert_eq!(
        second,
        vec![(0, 1), (1, 1)],
        "then it asks as incarnation 1"
    );
    // No promise while recovering: it may have promised something higher before it lost it.
    r.handle(env_to_rejoined_2(
        1,
        Message::Prepare(Prepare {
            lane: 0,
            ballot: b(4, 1),
            from_slot: 1,
        }),
    ));
    let ready = r.take_ready();
    assert!(ready.messages.is_empty() && ready.early.is_empty() && ready.persist.is_empty());
    let reply = |round| RecoveryReply {
        known: 0,
        promised: vec![b(round, 1)],
        decided: 2,
        frontier: 2,
    };
    // A late answer to the first round (its sender did not record incarnation 1 before it
    // answered) does not count in the second.
    // (Were they counted, recovery would end at once: they report nothing decided.)
    let stale = RecoveryReply {
        known: 0,
        promised: vec![b(0, 0)],
        decided: 0,
        frontier: 0,
    };
    r.handle(env(0, 2, Message::RecoveryReply(stale.clone())));
    r.handle(env(1, 2, Message::RecoveryReply(stale)));
    assert!(
        r.is_recovering(),
        "first-round answers are not second-round answers"
    );
    r.handle(env_to_rejoined_2(0, Message::RecoveryReply(reply(5))));
    assert!(
        r.is_recovering(),
        "one reply of the two others is not a majority of them"
    );
    r.handle(env_to_rejoined_2(1, Message::RecoveryReply(reply(3))));
    let ready = r.take_ready();
    assert!(
        ready.persist.is_empty(),
        "nothing is written before recovery completes"
    );
    assert!(
        ready
            .messages
            .iter()
            .any(|m| matches!(m.msg, Message::CatchUp(CatchUp { from_slot: 1 })))
    );
    // It learns every slot the others reported, then votes again, above what they promised.
    let entries = vec![(1, batch(&["a"])), (2, batch(&["b"]))];
    r.handle(env_to_rejoined_2(
        0,
        Message::CatchUpReply(CatchUpReply {
            snapshot: None,
            entries,
        }),
    ));
    assert!(!r.is_recovering());
    let ready = r.take_ready();
    assert_eq!(ready.decided, vec![(1, batch(&["a"])), (2, batch(&["b"]))]);
    assert!(ready.persist.contains(&PersistOp::Promise {
        lane: 0,
        ballot: b(5, 1)
    }));
    assert!(ready.persist.contains(&PersistOp::Decide {
        slot: 2,
        value: batch(&["b"])
    }));
    assert!(
        ready.persist.contains(&PersistOp::Incarnation {
            node: 2,
            incarnation: 1
        }),
        "its new incarnation is recorded with the recovered state"
    );
    r.handle(env_to_rejoined_2(
        1,
        Message::Prepare(Prepare {
            lane: 0,
            ballot: b(4, 1),
            from_slot: 3,
        }),
    ));
    assert!(
        matches!(only_message(&r.take_ready()).msg, Message::Nack(_)),
        "below the recovered promise"
    );
    // A message addressed to its earlier life (the sender does not know incarnation 1) is
    // dropped: it may answer something that life sent.
    r.handle(env(
        1,
        2,
        Message::Prepare(Prepare {
            lane: 0,
            ballot: b(6, 1),
            from_slot: 3,
        }),
    ));
    assert!(r.take_ready().messages.is_empty());
    r.handle(env_to_rejoined_2(
        1,
        Message::Prepare(Prepare {
            lane: 0,
            ballot: b(6, 1),
            from_slot: 3,
        }),
    ));
    assert!(matches!(
        only_message(&r.take_ready()).msg,
        Message::Promise(_)
    ));
}

/// A replica with intact state answers a recovery query with its promises and progress.
#[test]
fn intact_replica_answers_recovery_queries() {
    let mut r = replica(0, 3, Mode::Leader);
    r.propose(vec![cmd("x")]).unwrap();
    r.take_ready();
    r.handle(Envelope {
        incarnations: vec![0, 0, 1],
        ..env(2, 0, Message::RecoveryQuery)
    });
    let ready = r.take_ready();
    assert_eq!(
        ready.persist,
        vec![PersistOp::Incarnation {
            node: 2,
            incarnation: 1
        }],
        "the asker's new incarnation is durable before the reply leaves"
    );
    let expected = RecoveryReply {
        known: 0,
        promised: vec![b(0, 0)],
        decided: 0,
        frontier: 1,
    };
    assert_eq!(
        only_message(&ready),
        &Envelope {
            incarnations: vec![0, 0, 1],
            ..env(0, 2, Message::RecoveryReply(expected))
        }
    );
    // An accept acknowledgement from replica 2's earlier life is now dropped.
    r.handle(env(
        2,
        0,
        Message::Accepted(Accepted {
            lane: 0,
            ballot: b(0, 0),
            slots: vec![1],
        }),
    ));
    assert!(r.take_ready().decided.is_empty());
}

/// A rejoining replica whose incarnation number was already used (an earlier life or an
/// abandoned attempt) starts over above it, and only counts replies to the new attempt.
#[test]
fn recovery_starts_over_above_an_incarnation_already_known() {
    let mut r = rejoining(2);
    r.take_ready();
    // An earlier life was incarnation 1, known to replica 0.
    let asked = first_round(&mut r, [1, 0]);
    assert_eq!(r.status().incarnation, 2);
    assert!(asked.iter().all(|m| m.incarnation_of(2) == 2) && asked.len() == 2);
    let reply = |from: NodeId, known: u64| Envelope {
        incarnations: vec![0, 0, known.max(2)],
        ..env(
            from,
            2,
            Message::RecoveryReply(RecoveryReply {
                known,
                promised: vec![b(1, 1)],
                decided: 0,
                frontier: 0,
            }),
        )
    };
    // Replica 1 saw an abandoned attempt at 3 that replica 0 never heard of.
    r.handle(reply(0, 1));
    r.handle(reply(1, 3));
    assert!(r.is_recovering());
    assert_eq!(r.status().incarnation, 4);
    let at_4 = |from| Envelope {
        incarnations: vec![0, 0, 4],
        ..reply(from, 2)
    };
    r.handle(at_4(0));
    assert!(
        r.is_recovering(),
        "the round at 2 was abandoned: one reply of two"
    );
    // A duplicate of its own query answered twice is not an abandoned attempt.
    r.handle(Envelope {
        incarnations: vec![0, 0, 4],
        ..reply(1, 4)
    });
    assert!(!r.is_recovering());
    assert!(r.take_ready().persist.contains(&PersistOp::Incarnation {
        node: 2,
        incarnation: 4
    }));
}
