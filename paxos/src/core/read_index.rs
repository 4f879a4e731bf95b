//! Heartbeats and the read index: a leader confirms with a majority that it still leads before
//! it answers a linearizable read.

use crate::ballot::NodeId;
use crate::messages::{Heartbeat, HeartbeatAck, LaneClaim, Message};

use super::{Mode, PendingRead, ProposeError, ReadResult, Replica, Role};

impl Replica {
    /// Leader mode: ask for a linearizable read point for request `id`. Answered in
    /// `Ready::reads` once a majority confirmed this replica still leads.
    pub fn read_index(&mut self, id: u64) -> Result<(), ProposeError> {
        if self.recovery.is_some() {
            return Err(ProposeError::NotLeader { leader: None });
        }
        if self.cfg.mode != Mode::Leader {
            return Err(ProposeError::NotLeader { leader: None });
        }
        let Role::Leading { next_slot, .. } = &self.lanes[0].role else {
            return Err(ProposeError::NotLeader {
                leader: self.leader_hint(),
            });
        };
        // Everything chosen before now is at or below the last slot this leader proposed: its
        // phase 1 re-proposed every value an earlier ballot could have chosen.
        let index = next_slot.saturating_sub(1).max(self.decided_index);
        if self.reads.len() >= self.cfg.max_pending_commands {
            return Err(ProposeError::Overloaded);
        }
        // The confirmation round starts at the next `take_ready`, so every read that arrives in
        // one burst shares one round of heartbeats.
        self.reads.push(PendingRead { id, seq: 0, index });
        Ok(())
    }

    /// Starts one confirmation round for every read still waiting for one.
    pub(super) fn start_read_round(&mut self) {
        if !self.reads.iter().any(|r| r.seq == 0) || !self.is_leading(0) {
            return;
        }
        self.read_seq += 1;
        let seq = self.read_seq;
        for read in self.reads.iter_mut().filter(|r| r.seq == 0) {
            read.seq = seq;
        }
        self.read_acks[self.cfg.id as usize] = seq;
        self.broadcast_heartbeat(seq);
        self.complete_reads();
    }

    // ----- heartbeats -----

    pub(super) fn broadcast_heartbeat(&mut self, read_seq: u64) {
        let leading = (0..self.lanes_n)
            .filter_map(|lane| match &self.lanes[lane as usize].role {
                Role::Leading { ballot, .. } => Some(LaneClaim {
                    lane,
                    ballot: *ballot,
                    decided_up_to: self.lanes[lane as usize].decided_prefix,
                }),
                _ => None,
            })
            .collect();
        let hb = Heartbeat {
            leading,
            decided: self.decided_index,
            frontier: self.frontier,
            read_seq,
        };
        self.broadcast(Message::Heartbeat(hb));
    }

    pub(super) fn on_heartbeat(&mut self, from: NodeId, m: Heartbeat) {
        for claim in &m.leading {
            if claim.lane >= self.lanes_n {
                continue;
            }
            if claim.ballot >= self.lanes[claim.lane as usize].highest_seen {
                self.observe_ballot(claim.lane, claim.ballot);
                // A live leader postpones elections. (A leaderless replica's claim on its own
                // lane is never postponed by whoever holds it meanwhile.)
                if self.cfg.mode == Mode::Leader {
                    let deadline = self.randomized_deadline();
                    self.lanes[claim.lane as usize].deadline = deadline;
                }
            }
            self.learn_lane_prefix(from, claim.lane, claim.ballot, claim.decided_up_to);
            // A recovering replica confirms nobody: its promise may be below one it forgot.
            if m.read_seq > 0
                && self.recovery.is_none()
                && claim.ballot >= self.promised[claim.lane as usize]
            {
                let ack = HeartbeatAck {
                    lane: claim.lane,
                    ballot: claim.ballot,
                    read_seq: m.read_seq,
                };
                self.send(from, Message::HeartbeatAck(ack));
            }
        }
        self.frontier = self.frontier.max(m.frontier);
        if m.decided > self.decided_index {
            self.request_catch_up(from);
        }
    }

    pub(super) fn on_heartbeat_ack(&mut self, from: NodeId, m: HeartbeatAck) {
        if m.lane != 0 || self.cfg.mode != Mode::Leader {
            return;
        }
        if let Role::Leading { ballot, .. } = &self.lanes[0].role
            && *ballot == m.ballot
        {
            let seen = &mut self.read_acks[from as usize];
            *seen = (*seen).max(m.read_seq);
            self.complete_reads();
        }
    }

    pub(super) fn complete_reads(&mut self) {
        let quorum = self.quorum();
        let acks = &self.read_acks;
        let mut done = Vec::new();
        self.reads.retain(|read| {
            let confirmed =
                quorum.is_reached_by(acks.iter().filter(|seq| **seq >= read.seq).count());
            if confirmed {
                done.push(ReadResult::Ready {
                    id: read.id,
                    index: read.index,
                });
            }
            !confirmed
        });
        self.ready.reads.extend(done);
    }
}
