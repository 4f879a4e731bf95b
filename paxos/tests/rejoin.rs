//! Replicas that lost their durable state and rejoin, driven by hand message by message.
//!
//! Each test replays a schedule found by a review of the recovery protocol: the messages that
//! reach a replica are chosen one by one, so the interleaving that breaks safety is explicit.
//! Both schedules decided two values for one slot, or answered a read without a decided write,
//! before the crash-vector recovery (see `paxos::core` "Recovery of a replica that lost its
//! state").

use std::sync::Arc;

use bytes::Bytes;
use paxos::NodeId;
use paxos::core::{Config, Mode, ReadResult, Replica};
use paxos::messages::{Envelope, Value};
use paxos::storage::PersistentState;

/// N replicas and the messages they sent that were not delivered yet.
struct Net {
    replicas: Vec<Replica>,
    pending: Vec<Envelope>,
    decided: Vec<Vec<(u64, Value)>>,
    reads: Vec<Vec<ReadResult>>,
}

impl Net {
    fn new(nodes: u32, mode: Mode) -> Net {
        let replicas = (0..nodes)
            .map(|id| Replica::new(Config::new(id, nodes, mode), PersistentState::default()))
            .collect();
        let mut net = Net {
            replicas,
            pending: Vec::new(),
            decided: vec![Vec::new(); nodes as usize],
            reads: vec![Vec::new(); nodes as usize],
        };
        for id in 0..nodes {
            net.collect(id);
        }
        net
    }

    /// Moves `id`'s outputs into the network and its decisions into the record.
    fn collect(&mut self, id: NodeId) {
        let ready = self.replicas[id as usize].take_ready();
        self.pending.extend(ready.early);
        self.pending.extend(ready.messages);
        self.decided[id as usize].extend(ready.decided);
        self.reads[id as usize].extend(ready.reads);
    }

    /// Delivers (and removes) every pending message that `pick` selects, in order.
    fn deliver(&mut self, pick: impl Fn(&Envelope) -> bool) -> usize {
        let (now, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|e| pick(e));
        self.pending = later;
        let count = now.len();
        for envelope in now {
            let to = envelope.to;
            self.replicas[to as usize].handle(envelope);
            self.collect(to);
        }
        count
    }

    /// Loses every pending message.
    fn drop_all(&mut self) {
        self.pending.clear();
    }

    /// Erases `id`'s durable state and restarts it with the rejoin setting.
    fn wipe(&mut self, id: NodeId, nodes: u32, mode: Mode) {
        let mut cfg = Config::new(id, nodes, mode);
        cfg.rejoin = true;
        self.replicas[id as usize] = Replica::new(cfg, PersistentState::default());
        self.pending.retain(|e| e.to != id);
        self.decided[id as usize].clear();
        self.collect(id);
    }

    fn tick(&mut self, id: NodeId) {
        self.replicas[id as usize].tick();
        self.collect(id);
    }

    fn value_at(&self, id: NodeId, slot: u64) -> Option<&Value> {
        self.decided[id as usize]
            .iter()
            .find(|(s, _)| *s == slot)
            .map(|(_, v)| v)
    }
}

fn is(kind: &'static str, from: NodeId, to: &'static [NodeId]) -> impl Fn(&Envelope) -> bool {
    move |e| e.msg.kind() == kind && e.from == from && to.contains(&e.to)
}

fn to(id: NodeId, kind: &'static str) -> impl Fn(&Envelope) -> bool {
    move |e| e.msg.kind() == kind && e.to == id
}

fn batch(text: &str) -> Value {
    Value::Batch(Arc::new(vec![Bytes::copy_from_slice(text.as_bytes())]))
}

/// Review item 1. N = 5, leader mode, r0 leads at ballot (0, 0).
/// 1. r0 proposes v for slot 1; only r1 accepts; r0 counts r0 and r1.
/// 2. r1 is wiped and rejoins; its recovery query reaches r2, r3, r4, which report nothing for
///    slot 1, so r1 recovers with an empty log.
/// 3. r3 is elected with r1 and r4; it proposes w for slot 1, r1 and r4 accept: w is chosen.
/// 4. r0 resends its accept for v to r2, which promised only (0, 0) and accepts it.
///
/// r0 must not count r1's vote from before the wipe together with r2's: that would decide v in
/// a slot where w is chosen.
#[test]
fn a_vote_from_before_a_wipe_is_not_counted_with_votes_cast_after_it() {
    const N: u32 = 5;
    let mut net = Net::new(N, Mode::Leader);
    net.replicas[0]
        .propose(vec![Bytes::from_static(b"v")])
        .unwrap();
    net.collect(0);
    assert_eq!(net.deliver(is("accept", 0, &[1])), 1);
    assert_eq!(net.deliver(is("accepted", 1, &[0])), 1);
    net.drop_all();

    net.wipe(1, N, Mode::Leader);
    assert!(net.replicas[1].is_recovering());
    // Two rounds: which incarnation was r1's, then the query as the new incarnation.
    for _ in 0..2 {
        assert_eq!(net.deliver(is("recovery_query", 1, &[2, 3, 4])), 3);
        net.deliver(to(1, "recovery_reply"));
    }
    assert!(
        !net.replicas[1].is_recovering(),
        "r1 recovers from r2, r3, r4"
    );
    net.drop_all();

    net.replicas[3].start_election();
    net.collect(3);
    assert_eq!(net.deliver(is("prepare", 3, &[1, 4])), 2);
    assert_eq!(
        net.deliver(is("promise", 1, &[3])) + net.deliver(is("promise", 4, &[3])),
        2
    );
    assert!(net.replicas[3].status().is_leader);
    net.replicas[3]
        .propose(vec![Bytes::from_static(b"w")])
        .unwrap();
    net.collect(3);
    net.deliver(is("accept", 3, &[1, 4]));
    net.deliver(is("accepted", 1, &[3]));
    net.deliver(is("accepted", 4, &[3]));
    assert_eq!(
        net.value_at(3, 1),
        Some(&batch("w")),
        "w is chosen for slot 1"
    );
    net.drop_all();

    // r0 has heard nothing of this; it resends the accept that r2, r3 and r4 never acknowledged.
    for _ in 0..8 {
        net.tick(0);
    }
    assert!(net.deliver(is("accept", 0, &[2])) >= 1);
    net.deliver(is("accepted", 2, &[0]));
    assert_ne!(
        net.value_at(0, 1),
        Some(&batch("v")),
        "slot 1 decided as v at r0 and as w at r3"
    );
}

/// Review item 2. N = 3: r1 is elected at (1, 1) with r2's promise and commits W with r2's
/// accept; r0 heard nothing and still believes it leads at (0, 0). r2 is wiped and rejoins.
/// r0's read-index heartbeat reaches r2 while r2 recovers: r2 must not confirm it, or r0 serves
/// a read at index 0 that misses W.
#[test]
fn a_recovering_replica_does_not_confirm_a_deposed_leader() {
    const N: u32 = 3;
    let mut net = Net::new(N, Mode::Leader);
    net.drop_all();
    net.replicas[1].start_election();
    net.collect(1);
    net.deliver(is("prepare", 1, &[2]));
    net.deliver(is("promise", 2, &[1]));
    assert!(net.replicas[1].status().is_leader);
    net.replicas[1]
        .propose(vec![Bytes::from_static(b"W")])
        .unwrap();
    net.collect(1);
    net.deliver(is("accept", 1, &[2]));
    net.deliver(is("accepted", 2, &[1]));
    assert_eq!(net.value_at(1, 1), Some(&batch("W")));
    net.drop_all();

    net.wipe(2, N, Mode::Leader);
    assert!(net.replicas[2].is_recovering());
    net.drop_all(); // its recovery queries are lost: it stays in recovery

    net.replicas[0].read_index(7).unwrap();
    net.collect(0);
    net.deliver(is("heartbeat", 0, &[2]));
    net.deliver(is("heartbeat_ack", 2, &[0]));
    let stale = net.reads[0]
        .iter()
        .any(|r| matches!(r, ReadResult::Ready { id: 7, index } if *index < 1));
    assert!(
        !stale,
        "r0 answered a read at an index below W's slot: {:?}",
        net.reads[0]
    );
}
