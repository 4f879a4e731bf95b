//! The driver task: owns the [`Replica`], and after every burst of inputs persists, syncs,
//! sends and answers, in the order the crate docs' driver contract requires.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::ballot::Slot;
use crate::core::{Metrics, Mode, Observation, ProposeError, ReadResult, Replica};
use crate::messages::Envelope;
use crate::storage::Storage;
use crate::transfer::Peer;
use crate::wire::{EntriesReply, ProposeReply, ReadIndexReply, StatusReply, answers};

pub(super) enum LocalRequest {
    Propose {
        commands: Vec<Bytes>,
        /// The proposing request's trace, when sampled.
        trace: Option<telemetry::trace::Context>,
        reply: oneshot::Sender<Vec<ProposeReply>>,
    },
    Entries {
        from: Slot,
        max: usize,
        wait: bool,
        reply: oneshot::Sender<EntriesReply>,
    },
    ReadIndex {
        reply: oneshot::Sender<ReadIndexReply>,
    },
    Compact {
        slot: Slot,
        data: Bytes,
    },
    Status {
        reply: oneshot::Sender<StatusReply>,
    },
    Elect {
        reply: oneshot::Sender<StatusReply>,
    },
}

/// Most long polls of `/local/entries` waiting at once (one node normally keeps one open).
const MAX_ENTRY_WAITERS: usize = 64;

struct BatchWaiter {
    replies: Vec<Option<ProposeReply>>,
    remaining: usize,
    reply: oneshot::Sender<Vec<ProposeReply>>,
    /// `paxos.commit`, open from propose until every command is decided (or handed back), when
    /// the proposing request is sampled: the Paxos round of that request's trace.
    span: Option<tracing::Span>,
    /// When the node proposed it (for `paxos_commit_latency_seconds`).
    proposed_at: std::time::Instant,
}

pub(super) struct Driver {
    /// Counters already exported (the core's are cumulative).
    exported: Metrics,
    /// Where they are exported.
    series: crate::metrics::DriverMetrics,
    messages: crate::metrics::MessageCounters,
    replica: Replica,
    storage: Box<dyn Storage + Send>,
    outbound: Vec<Option<Peer>>,
    /// Shared with the HTTP handlers: the contiguous decided index.
    decided: Arc<std::sync::atomic::AtomicU64>,
    mode: Mode,
    /// Batches whose `span` is set (accepts for their commands carry the trace to peers).
    traced_batches: usize,
    /// When the election in progress started (for `paxos_phase1_duration_seconds`).
    election_started: Option<std::time::Instant>,
    /// Command -> (batch, position in it).
    proposals: HashMap<Bytes, (u64, usize)>,
    batches: HashMap<u64, BatchWaiter>,
    next_batch: u64,
    entry_waiters: Vec<(Slot, usize, oneshot::Sender<EntriesReply>)>,
    read_waiters: HashMap<u64, oneshot::Sender<ReadIndexReply>>,
    next_read: u64,
    /// The runtime has a single worker: writes run on it (see `persist`).
    one_worker: bool,
    /// Milliseconds a core tick stands for (the ticker's period; elections' causes are logged
    /// in milliseconds).
    tick_ms: u64,
}

impl Driver {
    /// A driver for `replica` on `storage`, sending through `outbound` (one entry a replica,
    /// `None` for this one) and publishing its decided index in `decided`.
    pub(super) fn new(
        replica: Replica,
        storage: Box<dyn Storage + Send>,
        outbound: Vec<Option<Peer>>,
        decided: Arc<std::sync::atomic::AtomicU64>,
        tick_ms: u64,
    ) -> Driver {
        Driver {
            decided,
            exported: Metrics::default(),
            series: crate::metrics::DriverMetrics::new(),
            messages: crate::metrics::MessageCounters::new(),
            mode: replica.config().mode,
            replica,
            storage,
            outbound,
            traced_batches: 0,
            election_started: None,
            proposals: HashMap::new(),
            batches: HashMap::new(),
            next_batch: 0,
            entry_waiters: Vec::new(),
            read_waiters: HashMap::new(),
            next_read: 1,
            one_worker: false,
            tick_ms: tick_ms.max(1),
        }
    }

    pub(super) async fn run(
        mut self,
        mut requests: mpsc::Receiver<LocalRequest>,
        mut inbound: mpsc::Receiver<Vec<Envelope>>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut ticker = tokio::time::interval(Duration::from_millis(self.tick_ms));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks: u64 = 0;
        self.one_worker = tokio::runtime::Handle::current().metrics().num_workers() == 1;
        self.after_inputs().await?;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                _ = ticker.tick() => {
                    self.replica.tick();
                    ticks += 1;
                    if ticks.is_multiple_of(100) {
                        self.batches.retain(|_, batch| !batch.reply.is_closed());
                        self.traced_batches =
                            self.batches.values().filter(|b| b.span.is_some()).count();
                        self.read_waiters.retain(|_, reply| !reply.is_closed());
                        let batches = &self.batches;
                        self.proposals.retain(|_, (batch, _)| batches.contains_key(batch));
                        self.entry_waiters.retain(|(_, _, reply)| !reply.is_closed());
                    }
                }
                Some(envelopes) = inbound.recv() => {
                    for envelope in envelopes {
                        self.messages.received(&envelope);
                        self.replica.handle(envelope);
                    }
                }
                Some(request) = requests.recv() => self.local(request),
            }
            // Take whatever else is already waiting, so one fsync covers the whole burst.
            self.take_waiting(&mut inbound, &mut requests);
            if self.one_worker {
                // The stream reader that woke this task is followed at once by this task (tokio
                // runs a task woken by the running one next), so a second peer's frames, read in
                // the same poll of the sockets, would wait for a step and an fsync of their own.
                // Readers already woken run first; what they bring shares this step's fsync.
                tokio::task::yield_now().await;
                self.take_waiting(&mut inbound, &mut requests);
            }
            self.after_inputs().await?;
        }
    }

    /// Hands the core every message batch and local request already waiting (bounded).
    fn take_waiting(
        &mut self,
        inbound: &mut mpsc::Receiver<Vec<Envelope>>,
        requests: &mut mpsc::Receiver<LocalRequest>,
    ) {
        for _ in 0..64 {
            match inbound.try_recv() {
                Ok(envelopes) => envelopes.into_iter().for_each(|e| {
                    self.messages.received(&e);
                    self.replica.handle(e);
                }),
                Err(_) => break,
            }
        }
        for _ in 0..1_024 {
            match requests.try_recv() {
                Ok(request) => self.local(request),
                Err(_) => break,
            }
        }
    }

    fn local(&mut self, request: LocalRequest) {
        match request {
            LocalRequest::Propose {
                commands,
                trace,
                reply,
            } => {
                let count = commands.len();
                match self.replica.propose(commands.clone()) {
                    Ok(()) => {
                        let batch = self.next_batch;
                        self.next_batch += 1;
                        for (position, command) in commands.into_iter().enumerate() {
                            self.proposals.insert(command, (batch, position));
                        }
                        let span = trace
                            .and_then(|cx| telemetry::trace::batch_span("paxos.commit", [&cx]));
                        self.traced_batches += usize::from(span.is_some());
                        let waiter = BatchWaiter {
                            replies: vec![None; count],
                            remaining: count,
                            reply,
                            span,
                            proposed_at: std::time::Instant::now(),
                        };
                        self.batches.insert(batch, waiter);
                    }
                    Err(ProposeError::NotLeader { leader }) => {
                        let _ = reply.send(vec![ProposeReply::NotLeader { leader }; count]);
                    }
                    Err(ProposeError::Overloaded) => {
                        let _ = reply.send(vec![ProposeReply::Overloaded; count]);
                    }
                }
            }
            LocalRequest::Entries {
                from,
                max,
                wait,
                reply,
            } => {
                if let Some(answer) = self.entries_for(from, max) {
                    let _ = reply.send(answer);
                } else if wait && self.entry_waiters.len() < MAX_ENTRY_WAITERS {
                    self.entry_waiters.push((from, max, reply));
                } else {
                    // Nothing yet (or too many long polls already waiting): answer empty now.
                    let _ = reply.send(EntriesReply::Entries(Vec::new()));
                }
            }
            LocalRequest::ReadIndex { reply } => {
                let id = self.next_read;
                self.next_read += 1;
                match self.replica.read_index(id) {
                    Ok(()) => {
                        self.read_waiters.insert(id, reply);
                    }
                    Err(ProposeError::NotLeader { leader }) => {
                        let _ = reply.send(ReadIndexReply::NotLeader { leader });
                    }
                    Err(ProposeError::Overloaded) => {
                        let _ = reply.send(ReadIndexReply::NotLeader { leader: None });
                    }
                }
            }
            LocalRequest::Compact { slot, data } => self.replica.compact(slot, data),
            LocalRequest::Status { reply } => {
                let _ = reply.send(self.status());
            }
            LocalRequest::Elect { reply } => {
                self.replica.start_election();
                let _ = reply.send(self.status());
            }
        }
    }

    fn resolve(&mut self, command: &Bytes, answer: ProposeReply) {
        let Some((batch, position)) = self.proposals.remove(command) else {
            return;
        };
        let Some(waiter) = self.batches.get_mut(&batch) else {
            return;
        };
        if waiter.replies[position].is_none() {
            waiter.replies[position] = Some(answer);
            waiter.remaining -= 1;
        }
        if waiter.remaining == 0 {
            let waiter = self.batches.remove(&batch).expect("present");
            if waiter
                .replies
                .iter()
                .all(|r| matches!(r, Some(ProposeReply::Decided { .. })))
            {
                self.series
                    .commit_latency
                    .record(waiter.proposed_at.elapsed().as_secs_f64());
            }
            if waiter.span.is_some() {
                self.traced_batches -= 1;
            }
            let replies = waiter
                .replies
                .into_iter()
                .map(|r| r.expect("all resolved"))
                .collect();
            let _ = waiter.reply.send(replies);
        }
    }

    /// The trace of a traced proposal whose commands this accept carries. Only looked for while
    /// some proposal is traced, so unsampled traffic pays one comparison.
    fn trace_of(&self, envelope: &Envelope) -> Option<telemetry::trace::Context> {
        if self.traced_batches == 0 {
            return None;
        }
        let crate::messages::Message::Accept(accept) = &envelope.msg else {
            return None;
        };
        accept
            .entries
            .iter()
            .flat_map(|(_, value)| value.commands())
            .find_map(|command| {
                let (batch, _) = self.proposals.get(command)?;
                let span = self.batches.get(batch)?.span.as_ref()?;
                telemetry::trace::sampled_context(span)
            })
    }

    fn status(&self) -> StatusReply {
        StatusReply {
            mode: self.mode,
            status: self.replica.status(),
            metrics: self.replica.metrics().clone(),
        }
    }

    /// Entries from `from`, the snapshot if they were compacted, or `None` if nothing yet.
    fn entries_for(&self, from: Slot, max: usize) -> Option<EntriesReply> {
        if let Some((slot, data)) = self.replica.snapshot()
            && from <= slot
        {
            return Some(EntriesReply::Snapshot { slot, data });
        }
        let entries = self.replica.decided_entries(from, max);
        (!entries.is_empty()).then_some(EntriesReply::Entries(entries))
    }

    async fn after_inputs(&mut self) -> anyhow::Result<()> {
        let mut ready = self.replica.take_ready();
        if ready.is_empty() {
            return Ok(());
        }
        // 0: accepts whose ballot is durable leave first, so the followers' syncs overlap ours.
        for envelope in std::mem::take(&mut ready.early) {
            self.messages.sent(&envelope);
            let trace = self.trace_of(&envelope);
            if let Some(Some(peer)) = self.outbound.get(envelope.to as usize) {
                peer.send(envelope, trace);
            }
        }
        // 1-2: persist and sync before anything else leaves. A storage error is fatal. A step
        // that only records decisions gates nothing (peers re-teach a lost decision), so it is
        // written last, after the node has heard of them, and waits in memory for the next
        // synced step (storage::DeferredDecisions).
        let decisions_only = ready
            .persist
            .iter()
            .all(|op| matches!(op, crate::storage::PersistOp::Decide { .. }));
        let persist = std::mem::take(&mut ready.persist);
        if !decisions_only {
            self.persist(&persist).await?;
        }
        // 3: send.
        for envelope in std::mem::take(&mut ready.messages) {
            self.messages.sent(&envelope);
            let trace = self.trace_of(&envelope);
            if let Some(Some(peer)) = self.outbound.get(envelope.to as usize) {
                peer.send(envelope, trace);
            }
        }
        // 4-6: tell the local node.
        if !self.proposals.is_empty() {
            for (command, answer) in answers(&ready) {
                self.resolve(command, answer);
            }
        }
        for read in ready.reads {
            match read {
                ReadResult::Ready { id, index } => {
                    if let Some(reply) = self.read_waiters.remove(&id) {
                        let _ = reply.send(ReadIndexReply::Ready { index });
                    }
                }
                ReadResult::Failed { id } => {
                    if let Some(reply) = self.read_waiters.remove(&id) {
                        let _ = reply.send(ReadIndexReply::NotLeader { leader: None });
                    }
                }
            }
        }
        if !self.entry_waiters.is_empty() && (!ready.decided.is_empty() || ready.snapshot.is_some())
        {
            let waiters = std::mem::take(&mut self.entry_waiters);
            for (from, max, reply) in waiters {
                match self.entries_for(from, max) {
                    Some(answer) => {
                        let _ = reply.send(answer);
                    }
                    None => self.entry_waiters.push((from, max, reply)),
                }
            }
        }
        for observation in &ready.observations {
            match observation {
                Observation::BatchSize(n) => self.series.batch_size.record(*n as f64),
                Observation::CommitTicks(t) => self.series.slot_commit_ticks.record(*t as f64),
                Observation::Campaign { lane, cause } => {
                    log_campaign(self.mode, *lane, *cause, self.tick_ms)
                }
                Observation::StepDown { lane, cause } => {
                    log_step_down(self.mode, *lane, *cause, self.tick_ms)
                }
            }
        }
        if decisions_only && !persist.is_empty() {
            // Held in memory until the next synced step (storage::DeferredDecisions): no
            // transaction, so no reason to leave the runtime for it.
            self.storage
                .write(&persist)
                .context("paxos storage failed; stopping")?;
        }
        self.export_metrics();
        Ok(())
    }

    /// Writes (and, unless they are only decisions, syncs) one step's state.
    async fn persist(&mut self, ops: &[crate::storage::PersistOp]) -> anyhow::Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let written = if self.one_worker {
            // One worker (the testbed's size on two cores): leaving the runtime would wake a
            // second thread to take it over, and back, several context switches a step. The
            // tasks already woken (the early accepts' stream writers) run first, then the
            // write blocks the runtime for the length of one append and fdatasync.
            tokio::task::yield_now().await;
            self.storage.write(ops)
        } else {
            tokio::task::block_in_place(|| self.storage.write(ops))
        };
        written.context("paxos storage failed; stopping")?;
        self.series
            .persist_duration
            .record(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Exports the core's counters (as deltas) and its view as gauges.
    fn export_metrics(&mut self) {
        let now = self.replica.metrics().clone();
        let before = std::mem::replace(&mut self.exported, now.clone());
        if now.elections_started > before.elections_started {
            self.election_started = Some(std::time::Instant::now());
        }
        if now.elections_won > before.elections_won
            && let Some(started) = self.election_started.take()
        {
            self.series
                .phase1_duration
                .record(started.elapsed().as_secs_f64());
        }
        let series = &self.series;
        let add = |counter: &metrics::Counter, new: u64, old: u64| {
            counter.increment(new.saturating_sub(old));
        };
        add(
            &series.commands_proposed,
            now.commands_proposed,
            before.commands_proposed,
        );
        add(
            &series.slots_proposed,
            now.slots_proposed,
            before.slots_proposed,
        );
        add(
            &series.noops_proposed,
            now.noops_proposed,
            before.noops_proposed,
        );
        add(
            &series.phase1_rounds,
            now.phase1_rounds,
            before.phase1_rounds,
        );
        add(
            &series.phase2_messages,
            now.phase2_messages,
            before.phase2_messages,
        );
        add(
            &series.elections_started,
            now.elections_started,
            before.elections_started,
        );
        add(
            &series.elections_won,
            now.elections_won,
            before.elections_won,
        );
        add(
            &series.leader_changes,
            now.leader_changes,
            before.leader_changes,
        );
        add(
            &series.slots_decided,
            now.slots_decided,
            before.slots_decided,
        );
        let status = self.replica.status();
        self.decided
            .store(status.decided, std::sync::atomic::Ordering::Relaxed);
        let series = &self.series;
        series.decided_index.set(status.decided as f64);
        series.frontier_slot.set(status.frontier as f64);
        series.compacted_index.set(status.compacted as f64);
        series.ballot_round.set(status.ballot.round as f64);
        series.pending_commands.set(status.pending as f64);
        series
            .is_leader
            .set(if status.is_leader { 1.0 } else { 0.0 });
        series.lanes_led.set(status.leading.len() as f64);
        series.leader_id.set(status.leader.map_or(-1.0, f64::from));
        series.recovering.set(if self.replica.is_recovering() {
            1.0
        } else {
            0.0
        });
    }
}

/// Every election is logged with its cause: after an unexpected one, an operator's first
/// question is who went quiet, and for how long. Leader-mode elections and takeovers of another
/// replica's lane are warnings; a leaderless replica taking its own lane back (at every restart)
/// and requested elections are routine.
fn log_campaign(mode: Mode, lane: u32, cause: crate::core::CampaignCause, tick_ms: u64) {
    use crate::core::CampaignCause;
    match cause {
        CampaignCause::Reclaim if mode == Mode::Leader => tracing::warn!(
            mode = mode.as_str(),
            lane,
            "starting an election to take back the lead this replica held"
        ),
        CampaignCause::HolderSilent { holder, ticks } => tracing::warn!(
            mode = mode.as_str(),
            lane,
            holder,
            silent_ms = ticks * tick_ms,
            "starting an election: no heartbeat from the lane's holder"
        ),
        CampaignCause::Reclaim => tracing::info!(
            mode = mode.as_str(),
            lane,
            "starting an election to take back a lane this replica held"
        ),
        CampaignCause::Requested => {
            tracing::info!(mode = mode.as_str(), lane, "starting a requested election")
        }
    }
}

/// A step-down with its cause; see [`log_campaign`].
fn log_step_down(mode: Mode, lane: u32, cause: crate::core::StepDownCause, tick_ms: u64) {
    use crate::core::StepDownCause;
    match cause {
        StepDownCause::HigherBallot => tracing::info!(
            mode = mode.as_str(),
            lane,
            "stepping down: another replica holds a higher ballot"
        ),
        StepDownCause::NoMajorityHeard { ticks } => tracing::warn!(
            mode = mode.as_str(),
            lane,
            window_ms = ticks * tick_ms,
            "stepping down: no heartbeat from a majority (check-quorum)"
        ),
        StepDownCause::Overtaken => tracing::warn!(
            mode = mode.as_str(),
            lane,
            "stepping down: a higher ballot decided a slot this replica proposed"
        ),
        StepDownCause::CaughtUp => tracing::warn!(
            mode = mode.as_str(),
            lane,
            "stepping down: a catch-up moved the log past this replica's proposals"
        ),
    }
}
