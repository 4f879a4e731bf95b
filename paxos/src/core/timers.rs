//! Time: resends, elections, takeovers and lane revocation, driven by `tick()`.

use crate::ballot::{NodeId, Slot};
use crate::messages::{Accept, Message, Prepare, Value};

use super::{CampaignCause, Mode, Replica, Role, StepDownCause, Votes};

impl Replica {
    pub(super) fn tick_lane(&mut self, lane: u32) {
        let tick = self.tick;
        // Check-quorum (leader mode): a leader that has heard no majority's heartbeats for two
        // election timeouts is cut off; it steps down rather than go on claiming the lead (and
        // taking writes it cannot commit) while the majority elects another. Safe: stepping
        // down only stops proposing.
        if self.cfg.mode == Mode::Leader
            && matches!(self.lanes[lane as usize].role, Role::Leading { .. })
            && !self.hears_majority(2 * self.cfg.election_ticks)
        {
            let ticks = 2 * self.cfg.election_ticks;
            self.step_down(lane, StepDownCause::NoMajorityHeard { ticks });
            return;
        }
        match &mut self.lanes[lane as usize].role {
            Role::Leading {
                ballot, inflight, ..
            } => {
                // Resend what a peer has not acknowledged (message loss).
                let ballot = *ballot;
                let due: Vec<(Slot, Value, Votes)> = inflight
                    .iter_mut()
                    .filter(|(_, f)| f.sent_at + self.cfg.resend_ticks <= tick)
                    .map(|(slot, f)| {
                        f.sent_at = tick;
                        (*slot, f.value.clone(), f.acks)
                    })
                    .collect();
                if due.is_empty() {
                    return;
                }
                let decided_up_to = self.lanes[lane as usize].decided_prefix;
                let (me, nodes) = (self.cfg.id, self.cfg.nodes);
                for to in (0..nodes).filter(|n| *n != me) {
                    let entries: Vec<(Slot, Value)> = due
                        .iter()
                        .filter(|(_, _, acks)| !acks.contains(to))
                        .map(|(slot, value, _)| (*slot, value.clone()))
                        .collect();
                    if !entries.is_empty() {
                        self.metrics.phase2_messages += 1;
                        self.send(
                            to,
                            Message::Accept(Accept {
                                lane,
                                ballot,
                                entries,
                                decided_up_to,
                            }),
                        );
                    }
                }
            }
            Role::Preparing {
                ballot,
                from_slot,
                promises,
                started,
                sent_at,
            } => {
                if tick >= *started + self.cfg.election_ticks * 2 {
                    // No majority in time: try again later with a higher ballot.
                    self.lanes[lane as usize].role = Role::Follower;
                    self.lanes[lane as usize].deadline =
                        tick + self.rng.below(self.cfg.election_ticks) + 1;
                    return;
                }
                if *sent_at + self.cfg.resend_ticks <= tick {
                    *sent_at = tick;
                    let (ballot, from_slot) = (*ballot, *from_slot);
                    let missing: Vec<NodeId> = (0..self.cfg.nodes)
                        .filter(|n| !promises.contains_key(n))
                        .collect();
                    for to in missing {
                        self.send(
                            to,
                            Message::Prepare(Prepare {
                                lane,
                                ballot,
                                from_slot,
                            }),
                        );
                    }
                }
            }
            Role::Follower => {
                if tick < self.lanes[lane as usize].deadline {
                    return;
                }
                if self.should_campaign(lane) {
                    let holder = self.lanes[lane as usize].highest_seen.node;
                    let cause = if holder == self.cfg.id
                        || self.cfg.mode == Mode::Leaderless && lane == self.cfg.id
                    {
                        CampaignCause::Reclaim
                    } else {
                        CampaignCause::HolderSilent {
                            holder,
                            ticks: tick.saturating_sub(self.last_heard[holder as usize]),
                        }
                    };
                    self.start_prepare(lane, cause);
                } else {
                    self.lanes[lane as usize].deadline = tick + self.cfg.heartbeat_ticks;
                }
            }
        }
    }

    /// True if this replica and the peers it heard a heartbeat from within `ticks` make a
    /// majority.
    fn hears_majority(&self, ticks: u64) -> bool {
        let heard = (0..self.cfg.nodes)
            .filter(|&node| {
                node == self.cfg.id
                    || self.tick.saturating_sub(self.last_heard[node as usize]) <= ticks
            })
            .count();
        self.quorum().is_reached_by(heard)
    }

    pub(super) fn should_campaign(&self, lane: u32) -> bool {
        let holder = self.lanes[lane as usize].highest_seen.node;
        let silent = |node: NodeId| {
            node != self.cfg.id
                && self.tick.saturating_sub(self.last_heard[node as usize])
                    > self.cfg.election_ticks
        };
        match self.cfg.mode {
            // Leader mode: the leader went quiet (or this replica was the leader and lost it).
            Mode::Leader => holder == self.cfg.id || silent(holder),
            // Leaderless, own lane: always take it back (after the randomized deadline).
            Mode::Leaderless if lane == self.cfg.id => true,
            // Leaderless, another lane: revoke only if its holder is silent and the log is
            // stuck on one of its slots (M 4.3).
            Mode::Leaderless => {
                let stuck = self.decided_index + 1;
                (holder == self.cfg.id || silent(holder))
                    && self.frontier >= stuck
                    && self.lane_of(stuck) == lane
            }
        }
    }
}
