//! Catch-up: a replica that is behind asks a peer for decided entries or its snapshot.

use bytes::Bytes;

use crate::ballot::{NodeId, Slot};
use crate::messages::{CatchUp, CatchUpReply, Message};
use crate::storage::PersistOp;

use super::{Replica, Role, StepDownCause};

impl Replica {
    pub(super) fn request_catch_up(&mut self, peer: NodeId) {
        if self.tick < self.catchup_after {
            return;
        }
        self.catchup_after = self.tick + self.cfg.resend_ticks;
        let from_slot = self.decided_index + 1;
        self.send(peer, Message::CatchUp(CatchUp { from_slot }));
    }

    pub(super) fn on_catch_up(&mut self, from: NodeId, m: CatchUp) {
        let snapshot = match &self.snapshot {
            Some((slot, data)) if m.from_slot <= *slot => Some((*slot, data.clone())),
            _ => None,
        };
        let start = snapshot.as_ref().map_or(m.from_slot, |(slot, _)| slot + 1);
        // Every decided entry from there, past undecided slots too: in leaderless mode each
        // replica may know its own lanes decided far past the slot it waits for, while the
        // peer asking lacks their values (it missed the accepts) and holds the decisions this
        // replica waits for in turn; entries up to the decided index alone left both waiting.
        let entries: Vec<(Slot, crate::messages::Value)> = self
            .log
            .range(start.max(self.compacted + 1)..)
            .filter(|(_, e)| e.decided)
            .take(self.cfg.max_entries_per_message)
            .map(|(slot, e)| (*slot, e.value.clone()))
            .collect();
        if snapshot.is_some() || !entries.is_empty() {
            self.send(
                from,
                Message::CatchUpReply(CatchUpReply { snapshot, entries }),
            );
        }
    }

    pub(super) fn on_catch_up_reply(&mut self, m: CatchUpReply) {
        if let Some((slot, data)) = m.snapshot
            && slot > self.decided_index
        {
            self.install_snapshot(slot, data);
        }
        for (slot, value) in m.entries {
            self.decide(slot, value);
        }
        for lane in 0..self.lanes_n {
            self.refresh_lane_prefix(lane);
        }
        self.catchup_after = 0;
    }

    pub(super) fn install_snapshot(&mut self, slot: Slot, data: Bytes) {
        self.log = self.log.split_off(&(slot + 1));
        self.compacted = slot;
        self.decided_index = slot;
        self.frontier = self.frontier.max(slot);
        self.command_frontier = self.command_frontier.max(slot);
        self.snapshot = Some((slot, data.clone()));
        self.ready.persist.push(PersistOp::Snapshot {
            slot,
            data: data.clone(),
        });
        self.ready.snapshot = Some((slot, data));
        // Anything of ours up to the snapshot was decided one way or the other; we no longer
        // know which.
        let rest = self.my_proposals.split_off(&(slot + 1));
        for (value, _) in std::mem::replace(&mut self.my_proposals, rest).into_values() {
            self.ready
                .outcome_unknown
                .extend(value.commands().iter().cloned());
        }
        for lane in 0..self.lanes_n {
            let first_free = self.lane_slot_at_or_after(lane, slot + 1);
            let mut lost_track = false;
            if let Role::Leading {
                inflight,
                next_slot,
                ..
            } = &mut self.lanes[lane as usize].role
            {
                // Proposals of ours that the snapshot covers were decided, but maybe with other
                // values (at a higher ballot we never saw): this ballot can no longer vouch for
                // its slots, so give the lane up and win it back with phase 1 if needed.
                lost_track = inflight.range(..=slot).next().is_some();
                *inflight = inflight.split_off(&(slot + 1));
                *next_slot = (*next_slot).max(first_free);
            }
            if lost_track {
                self.step_down(lane, StepDownCause::CaughtUp);
            }
        }
    }
}
