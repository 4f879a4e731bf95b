//! The proposer: phase 1 (PMS 2.2 and 3; M 4.3 revocation) and phase 2 (PMS 3; M 4.2 skips),
//! pipelined and batched.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::ballot::{Ballot, NodeId, Slot};
use crate::messages::{
    Accept, Accepted, Command, Decide, Message, Nack, NackReason, Prepare, Promise, PromiseEntry,
    Value,
};
use crate::storage::PersistOp;

use super::{
    CampaignCause, Entry, Inflight, Mode, Observation, ReadResult, Replica, Role, StepDownCause,
    Votes,
};

impl Replica {
    // ----- phase 1 (PMS 2.2 and 3; M 4.3 revocation) -----

    pub(super) fn observe_ballot(&mut self, lane: u32, ballot: Ballot) {
        let l = &mut self.lanes[lane as usize];
        if ballot > l.highest_seen {
            if ballot.node != l.highest_seen.node {
                self.metrics.leader_changes += 1;
            }
            l.highest_seen = ballot;
        }
        let holds_lower = match &self.lanes[lane as usize].role {
            Role::Leading { ballot: mine, .. } | Role::Preparing { ballot: mine, .. } => {
                *mine < ballot
            }
            Role::Follower => false,
        };
        if holds_lower {
            self.step_down(lane, StepDownCause::HigherBallot);
        }
    }

    pub(super) fn step_down(&mut self, lane: u32, cause: StepDownCause) {
        self.ready
            .observations
            .push(Observation::StepDown { lane, cause });
        let l = &mut self.lanes[lane as usize];
        l.role = Role::Follower;
        let deadline = self.randomized_deadline();
        self.lanes[lane as usize].deadline = deadline;
        if self.cfg.mode == Mode::Leader {
            // Queued commands never got a slot: hand them back for the new leader.
            self.ready.dropped.extend(self.pending.drain(..));
            for read in self.reads.drain(..) {
                self.ready.reads.push(ReadResult::Failed { id: read.id });
            }
        }
    }

    pub(super) fn start_prepare(&mut self, lane: u32, cause: CampaignCause) {
        self.ready
            .observations
            .push(Observation::Campaign { lane, cause });
        let max_round = self
            .promised
            .iter()
            .chain(self.lanes.iter().map(|l| &l.highest_seen))
            .map(|b| b.round)
            .max()
            .unwrap_or(0);
        let ballot = Ballot {
            incarnation: self.incarnations[self.cfg.id as usize],
            ..Ballot::new(max_round + 1, self.cfg.id)
        };
        self.promise(lane, ballot);
        self.lanes[lane as usize].highest_seen = ballot;
        let from_slot =
            self.lane_slot_at_or_after(lane, self.lanes[lane as usize].decided_prefix + 1);
        let own: Vec<PromiseEntry> = self
            .log
            .range(from_slot..)
            .filter(|(slot, _)| self.lane_of(**slot) == lane)
            .map(|(slot, e)| PromiseEntry {
                slot: *slot,
                ballot: e.ballot,
                value: e.value.clone(),
                decided: e.decided,
            })
            .collect();
        let mut promises = BTreeMap::new();
        promises.insert(self.cfg.id, own);
        self.lanes[lane as usize].role = Role::Preparing {
            ballot,
            from_slot,
            promises,
            started: self.tick,
            sent_at: self.tick,
        };
        self.metrics.elections_started += 1;
        self.metrics.phase1_rounds += 1;
        self.broadcast(Message::Prepare(Prepare {
            lane,
            ballot,
            from_slot,
        }));
        self.try_win(lane);
    }

    pub(super) fn on_promise(&mut self, from: NodeId, m: Promise) {
        let lane = m.lane;
        if lane >= self.lanes_n {
            return;
        }
        if let Role::Preparing {
            ballot, promises, ..
        } = &mut self.lanes[lane as usize].role
            && *ballot == m.ballot
        {
            promises.insert(from, m.entries);
        }
        if m.decided > self.decided_index {
            self.request_catch_up(from);
        }
        self.try_win(lane);
    }

    pub(super) fn try_win(&mut self, lane: u32) {
        let Role::Preparing {
            ballot,
            from_slot,
            promises,
            ..
        } = &self.lanes[lane as usize].role
        else {
            return;
        };
        if !self.quorum().is_reached_by(promises.len()) {
            return;
        }
        let (ballot, from_slot) = (*ballot, *from_slot);
        // For every slot any promiser reported: a decided value wins; otherwise the value
        // accepted at the highest ballot (PMS 2.2, P2c). Unreported slots below the highest
        // reported one become no-ops.
        let mut chosen: BTreeMap<Slot, (bool, Ballot, Value)> = BTreeMap::new();
        for entry in promises.values().flatten() {
            let candidate = (entry.decided, entry.ballot, entry.value.clone());
            match chosen.get(&entry.slot) {
                Some((true, _, _)) => {}
                Some((false, b, _)) if !entry.decided && *b >= entry.ballot => {}
                _ => {
                    chosen.insert(entry.slot, candidate);
                }
            }
        }
        let step = self.step();
        let last = chosen.keys().next_back().copied().unwrap_or(0);
        let next_slot = if last >= from_slot {
            last + step
        } else {
            from_slot
        };
        self.lanes[lane as usize].role = Role::Leading {
            ballot,
            next_slot,
            inflight: BTreeMap::new(),
        };
        self.metrics.elections_won += 1;
        let mut entries = Vec::new();
        let mut slot = from_slot;
        while slot < next_slot {
            let known_decided =
                slot <= self.compacted || self.log.get(&slot).is_some_and(|e| e.decided);
            match chosen.remove(&slot) {
                _ if known_decided => {}
                Some((true, _, value)) => self.decide(slot, value),
                Some((false, _, value)) => {
                    entries.push(self.propose_slot(lane, ballot, slot, value))
                }
                None => entries.push(self.propose_slot(lane, ballot, slot, Value::Noop)),
            }
            slot += step;
        }
        self.refresh_lane_prefix(lane);
        self.send_accepts(lane, ballot, entries);
    }

    pub(super) fn on_nack(&mut self, from: NodeId, m: Nack) {
        let lane = m.lane;
        if lane >= self.lanes_n {
            return;
        }
        match m.reason {
            NackReason::HigherBallot => self.observe_ballot(lane, m.promised),
            NackReason::Behind => self.request_catch_up(from),
        }
        if m.decided > self.decided_index {
            self.request_catch_up(from);
        }
    }

    // ----- phase 2 (PMS 3; M 4.2 skips) -----

    /// Accepts `value` locally at `slot` (the leader is also an acceptor) and tracks it.
    pub(super) fn propose_slot(
        &mut self,
        lane: u32,
        ballot: Ballot,
        slot: Slot,
        value: Value,
    ) -> (Slot, Value) {
        self.log.insert(
            slot,
            Entry {
                ballot,
                value: value.clone(),
                decided: false,
            },
        );
        self.ready.persist.push(PersistOp::Accept {
            slot,
            ballot,
            value: value.clone(),
        });
        self.frontier = self.frontier.max(slot);
        self.note_command_at(slot, &value);
        self.metrics.slots_proposed += 1;
        if value == Value::Noop {
            self.metrics.noops_proposed += 1;
        }
        if let Role::Leading { inflight, .. } = &mut self.lanes[lane as usize].role {
            inflight.insert(
                slot,
                Inflight {
                    value: value.clone(),
                    acks: Votes::of(self.cfg.id),
                    sent_at: self.tick,
                },
            );
        }
        (slot, value)
    }

    pub(super) fn send_accepts(&mut self, lane: u32, ballot: Ballot, entries: Vec<(Slot, Value)>) {
        if entries.is_empty() {
            return;
        }
        self.metrics.phase2_messages += u64::from(self.cfg.nodes - 1);
        let decided_up_to = self.lanes[lane as usize].decided_prefix;
        // The accept tells every peer the decided prefix: no separate `Decide` is due.
        self.lanes[lane as usize].decide_due = false;
        self.broadcast(Message::Accept(Accept {
            lane,
            ballot,
            entries,
            decided_up_to,
        }));
        if self.quorum().majority() == 1 {
            self.check_quorums(lane);
        }
    }

    pub(super) fn on_accepted(&mut self, from: NodeId, m: Accepted) {
        let lane = m.lane;
        if lane >= self.lanes_n {
            return;
        }
        if let Role::Leading {
            ballot, inflight, ..
        } = &mut self.lanes[lane as usize].role
            && *ballot == m.ballot
        {
            for slot in &m.slots {
                if let Some(f) = inflight.get_mut(slot) {
                    f.acks.insert(from);
                }
            }
        }
        self.check_quorums(lane);
    }

    pub(super) fn check_quorums(&mut self, lane: u32) {
        let quorum = self.quorum();
        let Role::Leading { inflight, .. } = &self.lanes[lane as usize].role else {
            return;
        };
        let chosen: Vec<(Slot, Value)> = inflight
            .iter()
            .filter(|(_, f)| f.acks.reach(quorum))
            .map(|(slot, f)| (*slot, f.value.clone()))
            .collect();
        if chosen.is_empty() {
            return;
        }
        let before = self.lanes[lane as usize].decided_prefix;
        for (slot, value) in chosen {
            self.decide(slot, value);
        }
        self.refresh_lane_prefix(lane);
        let up_to = self.lanes[lane as usize].decided_prefix;
        if up_to > before {
            // Not a message per round. Leader mode: only the leader's node answers clients, and
            // it hears of decisions from this replica directly, so the followers learn them from
            // the next accept (at once under load) or a `Decide` on the next tick. Leaderless:
            // every replica's clients wait for every lane, so the `Decide` leaves with this very
            // step, unless an accept of the step already carries the prefix (see
            // `Replica::take_ready`).
            self.lanes[lane as usize].decide_due = true;
        }
    }

    /// Leader mode: sends the `Decide` that no accept carried since the prefix grew.
    pub(super) fn send_due_decide(&mut self, lane: u32) {
        let l = &mut self.lanes[lane as usize];
        if !std::mem::take(&mut l.decide_due) {
            return;
        }
        if let Role::Leading { ballot, .. } = &l.role {
            let (ballot, up_to) = (*ballot, l.decided_prefix);
            self.broadcast(Message::Decide(Decide {
                lane,
                ballot,
                up_to,
            }));
        }
    }

    pub(super) fn on_decide(&mut self, from: NodeId, m: Decide) {
        if m.lane >= self.lanes_n {
            return;
        }
        self.observe_ballot(m.lane, m.ballot);
        self.learn_lane_prefix(from, m.lane, m.ballot, m.up_to);
    }

    /// Assigns queued commands and needed no-ops to slots in every lane this replica leads.
    pub(super) fn flush(&mut self) {
        for lane in 0..self.lanes_n {
            let Role::Leading { ballot, .. } = &self.lanes[lane as usize].role else {
                continue;
            };
            let ballot = *ballot;
            let may_propose_commands = self.cfg.mode == Mode::Leader || lane == self.cfg.id;
            let step = self.step();
            let skip_to = self.skip_to(lane);
            let mut entries = Vec::new();
            while let Role::Leading {
                next_slot,
                inflight,
                ..
            } = &self.lanes[lane as usize].role
            {
                let (slot, in_flight) = (*next_slot, inflight.len());
                if in_flight >= self.cfg.window {
                    break;
                }
                let value = if may_propose_commands && !self.pending.is_empty() {
                    Value::Batch(Arc::new(self.take_batch()))
                } else if slot <= skip_to {
                    // This slot or a later one is in use elsewhere (another lane's proposal, or
                    // a deposed proposer's value that phase 1 proved unchosen): fill it with a
                    // no-op so the log can be applied past it (M 4.2, skips).
                    Value::Noop
                } else {
                    break;
                };
                if let Role::Leading { next_slot, .. } = &mut self.lanes[lane as usize].role {
                    *next_slot += step;
                }
                if let Value::Batch(commands) = &value {
                    self.ready
                        .observations
                        .push(Observation::BatchSize(commands.len()));
                    self.my_proposals.insert(slot, (value.clone(), self.tick));
                }
                entries.push(self.propose_slot(lane, ballot, slot, value));
            }
            self.send_accepts(lane, ballot, entries);
        }
        self.advance_decided();
    }

    /// Raises the command frontier if `value`, seen at `slot`, holds commands.
    pub(super) fn note_command_at(&mut self, slot: Slot, value: &Value) {
        if matches!(value, Value::Batch(_)) {
            self.command_frontier = self.command_frontier.max(slot);
        }
    }

    /// The highest slot of `lane` that [`Replica::flush`] may fill with a no-op now.
    ///
    /// Leader mode, and lanes this replica took over: the frontier, on ticks only, so commands
    /// that arrive meanwhile take the slots instead and one accept carries a tick's skips.
    ///
    /// Leaderless, own lane (Mencius's rule, M 4.2): also every empty slot below a slot that
    /// holds a command, at once, not on the next tick: the command waits for every lower slot,
    /// and a replica that waited for its tick made it wait up to a tick (with a client's
    /// connection kept on one node, every command of a lone busy replica did).
    pub(super) fn skip_to(&self, lane: u32) -> Slot {
        let tick_fill = if self.fill_noops { self.frontier } else { 0 };
        if self.cfg.mode == Mode::Leaderless && lane == self.cfg.id {
            tick_fill.max(self.command_frontier)
        } else {
            tick_fill
        }
    }

    pub(super) fn take_batch(&mut self) -> Vec<Command> {
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some(next) = self.pending.front() {
            let full = batch.len() >= self.cfg.max_batch_commands
                || (!batch.is_empty() && bytes + next.len() > self.cfg.max_batch_bytes);
            if full {
                break;
            }
            bytes += next.len();
            batch.extend(self.pending.pop_front());
        }
        batch
    }
}
