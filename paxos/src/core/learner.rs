//! The learner: decided prefixes per lane, the decided index, and what is handed to the
//! application.

use crate::ballot::{Ballot, NodeId, Slot};
use crate::messages::Value;
use crate::storage::PersistOp;

use super::{Entry, Observation, Replica, Role, StepDownCause};

impl Replica {
    /// A leader of `lane` at `ballot` says every lane slot up to `up_to` is decided.
    pub(super) fn learn_lane_prefix(
        &mut self,
        from: NodeId,
        lane: u32,
        ballot: Ballot,
        up_to: Slot,
    ) {
        if up_to == 0 || lane >= self.lanes_n || self.lane_of(up_to) != lane {
            return;
        }
        self.frontier = self.frontier.max(up_to);
        let step = self.step();
        let mut slot =
            self.lane_slot_at_or_after(lane, self.lanes[lane as usize].decided_prefix + 1);
        let mut missing = false;
        let mut budget = self.cfg.max_entries_per_message;
        while slot <= up_to {
            if budget == 0 {
                missing = true;
                break;
            }
            budget -= 1;
            if slot > self.compacted {
                match self.log.get(&slot) {
                    Some(e) if e.decided => {}
                    // Accepted at the deciding leader's ballot: the leader proposed exactly one
                    // value per slot at that ballot, so this is the chosen one.
                    Some(e) if e.ballot == ballot => {
                        let value = e.value.clone();
                        self.decide(slot, value);
                    }
                    _ => missing = true,
                }
            }
            slot += step;
        }
        self.refresh_lane_prefix(lane);
        if missing {
            self.request_catch_up(from);
        }
    }

    pub(super) fn decide(&mut self, slot: Slot, value: Value) {
        if slot <= self.compacted {
            return;
        }
        let entry = self.log.entry(slot).or_insert_with(|| Entry {
            ballot: Ballot::default(),
            value: value.clone(),
            decided: false,
        });
        if entry.decided {
            assert_eq!(
                entry.value, value,
                "slot {slot} decided twice with different values"
            );
            return;
        }
        entry.decided = true;
        entry.value = value.clone();
        self.note_command_at(slot, &value);
        self.metrics.slots_decided += 1;
        self.ready.persist.push(PersistOp::Decide {
            slot,
            value: value.clone(),
        });
        if let Some((mine, at)) = self.my_proposals.remove(&slot) {
            if mine == value {
                self.ready
                    .observations
                    .push(Observation::CommitTicks(self.tick - at));
            } else {
                self.ready.dropped.extend(mine.commands().iter().cloned());
            }
        }
        let lane = self.lane_of(slot);
        if let Role::Leading { inflight, .. } = &mut self.lanes[lane as usize].role
            && let Some(mine) = inflight.remove(&slot)
            && mine.value != value
        {
            // Another value was chosen in a slot this leader proposed: a higher ballot
            // decided it, so this ballot is stale. Stepping down keeps the rule that a
            // leader's decided prefix at its ballot only covers slots where what it
            // proposed at that ballot is what was chosen.
            self.step_down(lane, StepDownCause::Overtaken);
        }
    }

    pub(super) fn refresh_lane_prefix(&mut self, lane: u32) {
        let step = self.step();
        let mut prefix = self.lanes[lane as usize].decided_prefix;
        let mut next = self.lane_slot_at_or_after(lane, prefix + 1);
        while next <= self.compacted || self.log.get(&next).is_some_and(|e| e.decided) {
            prefix = next;
            next += step;
        }
        self.lanes[lane as usize].decided_prefix = prefix;
    }

    pub(super) fn advance_decided(&mut self) {
        let before = self.decided_index;
        while let Some(e) = self
            .log
            .get(&(self.decided_index + 1))
            .filter(|e| e.decided)
        {
            let slot = self.decided_index + 1;
            self.ready.decided.push((slot, e.value.clone()));
            self.decided_index = slot;
        }
        debug_assert!(self.decided_index >= before);
        let retained = self.decided_index - self.compacted;
        if retained > self.cfg.max_retained_log {
            self.ready.snapshot_wanted = Some(self.decided_index);
        }
    }
}
