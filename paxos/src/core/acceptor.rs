//! The acceptor (PMS 2.2, phases 1b and 2b): promises and accepts, persisted before they are
//! sent.

use crate::ballot::{Ballot, NodeId};
use crate::messages::{
    Accept, Accepted, Message, Nack, NackReason, Prepare, Promise, PromiseEntry,
};
use crate::storage::PersistOp;

use super::{Entry, Replica};

impl Replica {
    pub(super) fn promise(&mut self, lane: u32, ballot: Ballot) {
        let current = self.promised[lane as usize];
        assert!(ballot >= current, "promises never go backwards");
        if ballot > current {
            self.promised[lane as usize] = ballot;
            self.ready.persist.push(PersistOp::Promise { lane, ballot });
        }
    }

    pub(super) fn on_prepare(&mut self, from: NodeId, m: Prepare) {
        let lane = m.lane;
        if lane >= self.lanes_n {
            return;
        }
        if m.ballot < self.promised[lane as usize] {
            return self.nack(from, lane, m.ballot, NackReason::HigherBallot);
        }
        let start = self.lane_slot_at_or_after(lane, m.from_slot);
        if start <= self.compacted {
            return self.nack(from, lane, m.ballot, NackReason::Behind);
        }
        let entries: Vec<PromiseEntry> = self
            .log
            .range(start..)
            .filter(|(slot, _)| self.lane_of(**slot) == lane)
            .take(self.cfg.max_entries_per_message + 1)
            .map(|(slot, e)| PromiseEntry {
                slot: *slot,
                ballot: e.ballot,
                value: e.value.clone(),
                decided: e.decided,
            })
            .collect();
        if entries.len() > self.cfg.max_entries_per_message {
            return self.nack(from, lane, m.ballot, NackReason::Behind);
        }
        self.observe_ballot(lane, m.ballot);
        self.promise(lane, m.ballot);
        let decided = self.decided_index;
        self.send(
            from,
            Message::Promise(Promise {
                lane,
                ballot: m.ballot,
                entries,
                decided,
            }),
        );
    }

    pub(super) fn nack(&mut self, to: NodeId, lane: u32, ballot: Ballot, reason: NackReason) {
        let msg = Nack {
            lane,
            ballot,
            promised: self.promised[lane as usize],
            reason,
            decided: self.decided_index,
        };
        self.send(to, Message::Nack(msg));
    }

    pub(super) fn on_accept(&mut self, from: NodeId, m: Accept) {
        let lane = m.lane;
        if lane >= self.lanes_n {
            return;
        }
        if m.ballot < self.promised[lane as usize] {
            return self.nack(from, lane, m.ballot, NackReason::HigherBallot);
        }
        self.observe_ballot(lane, m.ballot);
        self.promise(lane, m.ballot);
        let mut slots = Vec::with_capacity(m.entries.len());
        for (slot, value) in m.entries {
            if slot == 0 || self.lane_of(slot) != lane {
                continue;
            }
            self.frontier = self.frontier.max(slot);
            self.note_command_at(slot, &value);
            slots.push(slot);
            if slot <= self.compacted || self.log.get(&slot).is_some_and(|e| e.decided) {
                continue;
            }
            self.log.insert(
                slot,
                Entry {
                    ballot: m.ballot,
                    value: value.clone(),
                    decided: false,
                },
            );
            self.ready.persist.push(PersistOp::Accept {
                slot,
                ballot: m.ballot,
                value,
            });
        }
        if !slots.is_empty() {
            self.send(
                from,
                Message::Accepted(Accepted {
                    lane,
                    ballot: m.ballot,
                    slots,
                }),
            );
        }
        self.learn_lane_prefix(from, lane, m.ballot, m.decided_up_to);
    }
}
