//! Crash vectors and the recovery of a replica that lost its state: votes of a replica's
//! earlier lives are never counted again, and a rejoining replica votes only once it has
//! learned everything it may have accepted before.

use crate::ballot::NodeId;
use crate::messages::{Envelope, Message, RecoveryReply};
use crate::storage::PersistOp;

use super::{Replica, Role};

impl Replica {
    /// The crash-vector checks every message but a recovery query passes; false: drop it.
    /// Merges what the sender knows of every replica's incarnation.
    pub(super) fn admit(&mut self, envelope: &Envelope) -> bool {
        let (me, from) = (self.cfg.id, envelope.from);
        if envelope.incarnation_of(from) < self.incarnations[from as usize] {
            // Sent by an earlier life of the sender, before it lost its storage.
            return false;
        }
        let mine = self.incarnations[me as usize];
        let theirs = envelope.incarnation_of(me);
        if theirs > mine {
            // The sender knows a later life of this replica: an abandoned recovery attempt of
            // ours used that number (start over above it, unless still in the first round,
            // which learns it anyway), or this process is the stale one.
            if self.recovery.is_some() && mine > 0 {
                self.restart_recovery(theirs + 1);
            }
            return false;
        }
        self.merge_incarnations(&envelope.incarnations);
        // Below ours: addressed to an earlier life of this replica (a reply to what it sent).
        // A catch-up reply is still welcome: it carries only decided entries and snapshots,
        // facts whichever life asked (a snapshot may take long to arrive, see `transfer`).
        theirs == mine || matches!(envelope.msg, Message::CatchUpReply(_))
    }

    /// Raises the known incarnation of every other replica to what `vector` says, durably, and
    /// forgets every vote counted from an earlier life of a replica whose entry rose.
    pub(super) fn merge_incarnations(&mut self, vector: &[u64]) {
        let me = self.cfg.id as usize;
        for (node, &theirs) in vector.iter().enumerate().take(self.cfg.nodes as usize) {
            if node == me || theirs <= self.incarnations[node] {
                continue;
            }
            self.incarnations[node] = theirs;
            self.ready.persist.push(PersistOp::Incarnation {
                node: node as NodeId,
                incarnation: theirs,
            });
            for lane in &mut self.lanes {
                match &mut lane.role {
                    Role::Preparing { promises, .. } => {
                        promises.remove(&(node as NodeId));
                    }
                    Role::Leading { inflight, .. } => {
                        for f in inflight.values_mut() {
                            f.acks.remove(node as NodeId);
                        }
                    }
                    Role::Follower => {}
                }
            }
            self.read_acks[node] = 0;
        }
    }

    /// What every message carries: the crash vector, without trailing zeros.
    pub(super) fn wire_incarnations(&self) -> Vec<u64> {
        let len = self
            .incarnations
            .iter()
            .rposition(|i| *i > 0)
            .map_or(0, |i| i + 1);
        self.incarnations[..len].to_vec()
    }

    // ----- recovery of a replica that lost its state -----
    //
    // A replica that lost its storage forgot the promises and accepts of its earlier life. Some
    // of them may still count: a vote it sent just before the wipe can reach a proposer later,
    // and votes of other acceptors that went into the same quorum can arrive later still. Waiting
    // for a majority of the others to answer is not enough on its own (review item 1: with
    // N = 5 the pre-wipe vote of r1 and the post-wipe vote of r1 each completed a quorum, for
    // two values of one slot). The protocol is the crash-vector recovery of Michael, Ports,
    // Sharma and Szekeres, "Recovering Shared Objects Without Stable Storage" (DISC 2017):
    //
    // 1. The rejoining replica R first asks every other replica which incarnation of R it
    //    knows, and takes i = 1 + the highest a majority reports: every earlier life that
    //    voted finished its own recovery with a majority knowing it, so i is above them all.
    //    Then R asks again with i in the query. An answering replica first raises (durably) its
    //    known incarnation of R to i, then answers with its promises, decided index and frontier.
    //    (A replica that knows more than i saw an abandoned attempt: R starts over above it.)
    // 2. Every message carries the sender's crash vector. A receiver drops messages from an
    //    earlier incarnation of their sender, drops replies addressed to an earlier incarnation
    //    of itself, and when it learns a newer incarnation of R it forgets every promise, accept
    //    acknowledgement and read acknowledgement it counted from R.
    // 3. R votes only after a majority M of the others answered, and after it promised the
    //    highest ballot they reported and learned every slot decided up to the highest slot they
    //    reported.
    //
    // Why no quorum can count R's old vote against R's new ones: let Q be a quorum counted by a
    // proposer P with R's old vote in it. Every other vote in Q reached P carrying a vector in
    // which R was still old (had one carried i, P would have merged it and dropped or forgotten
    // R's old vote), so each was cast before its sender answered R's query (answering raises R
    // to i first). |M| >= majority and |Q \ {R}| >= majority - 1 among the N - 1 others, so some
    // m in M voted in Q before answering R: R's promise is then at least the ballot Q promised,
    // and R has learned the decided value of every slot Q accepted. R's new votes are those of
    // an acceptor that kept its state. A quorum with R's new votes and a quorum with its old
    // ones therefore behave like two quorums of one acceptor. Ballots carry the incarnation too
    // (`Ballot::incarnation`), so R never reuses a ballot its earlier life proposed with.
    //
    // Read index (review item 2): a recovering replica acknowledges no heartbeat; a recovered
    // one promised at least what M promised, so it never confirms a leader that M deposed.

    /// Starts (or restarts) recovery as `incarnation`.
    pub(super) fn restart_recovery(&mut self, incarnation: u64) {
        let me = self.cfg.id as usize;
        self.incarnations[me] = incarnation;
        if let Some(recovery) = &mut self.recovery {
            recovery.replies.clear();
            recovery.target = None;
            recovery.max_promised.clear();
            recovery.last_query = self.tick;
        }
        self.broadcast(Message::RecoveryQuery);
        self.check_recovered();
    }

    pub(super) fn on_recovery_query(&mut self, envelope: &Envelope) {
        let (me, from) = (self.cfg.id, envelope.from);
        if envelope.incarnation_of(me) > self.incarnations[me as usize] {
            return; // the asker knows a later life of this replica: this one is stale
        }
        let known = self.incarnations[from as usize];
        // Raise the asker to the incarnation it wants (persisted before the reply is sent, by
        // the driver contract) and forget what its earlier life voted.
        self.merge_incarnations(&envelope.incarnations);
        let reply = RecoveryReply {
            known,
            promised: self.promised.clone(),
            decided: self.decided_index,
            frontier: self.frontier,
        };
        self.send(from, Message::RecoveryReply(reply));
    }

    /// `view`: the incarnation of this replica the responder held when it answered.
    pub(super) fn on_recovery_reply(&mut self, from: NodeId, view: u64, m: RecoveryReply) {
        let mine = self.incarnations[self.cfg.id as usize];
        if mine > 0 && m.known > mine {
            // An abandoned attempt of ours went higher (a finished life would have been seen by
            // the majority that answered the first round): go above it.
            return self.restart_recovery(m.known + 1);
        }
        if mine > 0 && view != mine {
            // An answer to the first round or to an abandoned attempt: its sender did not record
            // this incarnation before answering, so it may still count votes of the earlier
            // life. Only answers given as `mine` count (the query is resent to the missing).
            return;
        }
        if mine > 0 && m.decided > self.decided_index {
            self.request_catch_up(from);
        }
        if let Some(recovery) = &mut self.recovery {
            recovery.replies.insert(from, m);
        }
    }

    pub(super) fn tick_recovery(&mut self) {
        let (tick, resend) = (self.tick, self.cfg.resend_ticks);
        let Some(recovery) = &mut self.recovery else {
            return;
        };
        if recovery.last_query + resend <= tick {
            recovery.last_query = tick;
            let missing: Vec<NodeId> = (0..self.cfg.nodes)
                .filter(|n| *n != self.cfg.id && !recovery.replies.contains_key(n))
                .collect();
            // Ask the most advanced responder for what is still missing.
            let best = recovery
                .replies
                .iter()
                .max_by_key(|(_, r)| r.decided)
                .map(|(n, _)| *n);
            let target = recovery.target;
            for to in missing {
                self.send(to, Message::RecoveryQuery);
            }
            if let (Some(best), Some(target)) = (best, target)
                && self.decided_index < target
            {
                self.request_catch_up(best);
            }
        }
        self.check_recovered();
    }

    /// Completes recovery once a majority of the *other* replicas answered the current attempt
    /// and this replica has learned every slot up to the highest one they reported (see the
    /// section comment above for why this is enough).
    pub(super) fn check_recovered(&mut self) {
        let needed = if self.cfg.nodes == 1 {
            0
        } else {
            self.quorum().majority()
        };
        let lanes_n = self.lanes_n as usize;
        let Some(recovery) = &mut self.recovery else {
            return;
        };
        if self.incarnations[self.cfg.id as usize] == 0 {
            // First round: learn the highest incarnation of this replica that a majority knows.
            if recovery.replies.len() >= needed {
                let known = recovery.replies.values().map(|r| r.known).max();
                self.restart_recovery(known.unwrap_or(0) + 1);
            }
            return;
        }
        if recovery.target.is_none() && recovery.replies.len() >= needed {
            let target = recovery
                .replies
                .values()
                .map(|r| r.decided.max(r.frontier))
                .max()
                .unwrap_or(0);
            let mut max_promised = self.promised.clone();
            for reply in recovery.replies.values() {
                for (lane, ballot) in reply.promised.iter().enumerate().take(lanes_n) {
                    max_promised[lane] = max_promised[lane].max(*ballot);
                }
            }
            recovery.target = Some(target);
            recovery.max_promised = max_promised;
            self.frontier = self.frontier.max(target);
        }
        let Some(target) = recovery.target else {
            return;
        };
        if self.decided_index < target {
            return;
        }
        let recovery = self.recovery.take().expect("recovering");
        self.ready.persist.extend(recovery.deferred);
        let me = self.cfg.id;
        self.ready.persist.push(PersistOp::Incarnation {
            node: me,
            incarnation: self.incarnations[me as usize],
        });
        for lane in 0..self.lanes_n {
            let ballot = recovery.max_promised[lane as usize];
            if ballot > self.promised[lane as usize] {
                self.promise(lane, ballot);
            }
            self.lanes[lane as usize].highest_seen =
                self.lanes[lane as usize].highest_seen.max(ballot);
            let deadline = self.randomized_deadline();
            self.lanes[lane as usize].deadline = deadline;
        }
    }
}
