//! Cluster mode: the node's log is the replicated Paxos log of its local `paxos` process.
//!
//! Writes: the node tags the command with a request id, registers a waiter, proposes it to its
//! paxos process (`/local/propose`), and the client gets the outcome when this node's applier
//! has applied the decided slot. The applier long-polls `/local/entries` from its applied index,
//! applies each batch through the store (one transaction per batch, the applied index inside it),
//! installs a snapshot when the slots it needs were compacted, and hands paxos a snapshot of the
//! store every `compact_every` slots so the Paxos log stays bounded. A poller keeps the view of
//! who leads, for forwarding and readiness.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use paxos::client::{ClientError, PaxosClient, encode_compact};
use paxos::wire::{EntriesReply, ProposeReply, ReadIndexReply};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::command::{Command, Entry, Operation, Outcome};
use crate::log::{Log, Route, SubmitError};
use crate::store::{Snapshot, Store};

/// How the node reaches its paxos process and its peers.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// This node's id (the same as its paxos replica's).
    pub node_id: u32,
    /// Leader mode (followers forward) or leaderless.
    pub mode: paxos::Mode,
    /// Base URL of the local paxos process.
    pub paxos_url: String,
    /// Public base URLs of every node, indexed by id (for forwarding to the leader).
    pub peers_public: Vec<String>,
    /// The cluster token.
    pub token: String,
    /// Most client commands waiting for their outcome at once.
    pub max_waiting: usize,
    /// Most proposal batches out to paxos at once (at least 1).
    pub proposals_in_flight: usize,
    /// Under load, how long a batch may wait to grow as large as the last one (see
    /// [`linger_target`]); zero sends every batch at once.
    pub propose_linger: Duration,
    /// Hand paxos a store snapshot every this many applied slots (at least; see
    /// [`compaction_interval`]).
    pub compact_every: u64,
}

/// A snapshot holds every account and retained idempotency record, so its cost grows with the
/// state, not with the log it replaces. Compacting every `compact_every` slots whatever the
/// snapshot's size would make a large state (a million retained keys: hundreds of megabytes)
/// rewrite itself every few seconds; waiting until the log since the last snapshot holds at
/// least 1/`SNAPSHOT_AMORTIZATION` of that snapshot's records bounds the work per applied slot
/// to about `SNAPSHOT_AMORTIZATION` records, whatever the retention.
pub const SNAPSHOT_AMORTIZATION: u64 = 8;

/// Slots to apply after a snapshot of `last_records` records (accounts and idempotency records)
/// before the next one.
pub fn compaction_interval(compact_every: u64, last_records: u64) -> u64 {
    compact_every.max(last_records / SNAPSHOT_AMORTIZATION)
}

/// Most commands in one proposal batch.
const MAX_PROPOSE_BATCH: usize = 512;

/// Past this many commands a batch's share of a slot's fixed cost (the accepts, the fsync on
/// every replica, the bank transaction) is small: lingering waits for at most this many.
pub const LINGER_BATCH: usize = 24;

/// A batch lingers only after one of at least this many commands. Below it the node is not
/// loaded enough for waiting to pay: at 4 and 16 clients in leaderless mode (batches of 1-5,
/// the clients' next requests going to any node) lingering after batches of 2 and more cost
/// 28% and 6% of the throughput in one pair of runs each (docs/performance.md, tenth round).
pub const LINGER_FROM: usize = 6;

/// How many commands a batch that holds `len` should wait for (at most the linger), given that
/// the last batch held `last`: as many as the last (at most [`LINGER_BATCH`]) when it held
/// [`LINGER_FROM`] or more, since in a loaded cluster the clients whose commands the last batch
/// carried come back with their next ones within a round trip; none at lower load, so a lone
/// command leaves at once. `None`: send now.
pub fn linger_target(len: usize, last: usize) -> Option<usize> {
    let target = last.min(LINGER_BATCH);
    (last >= LINGER_FROM && len < target).then_some(target)
}

/// A lingering batch leaves as soon as no command came for this fraction of the linger: it
/// waits for commands that are coming, not for ones that may never come.
pub const LINGER_GAP_DIVISOR: u32 = 4;

#[derive(Debug, Default)]
struct LeaderView {
    is_leader: bool,
    leader: Option<u32>,
}

/// A command on its way to paxos, the request's trace (when sampled) and where its answer goes.
type ProposeSlot = (
    Bytes,
    Option<telemetry::trace::Context>,
    oneshot::Sender<Result<ProposeReply, SubmitError>>,
);

/// A read waiting for a read point: the log index to have applied before reading.
type ReadSlot = oneshot::Sender<Result<u64, SubmitError>>;

/// Read points being taken at once; reads that arrive meanwhile share the next.
const READ_CALLS_IN_FLIGHT: usize = 4;

/// A client request waiting for its command's outcome, and its trace when sampled.
type Waiter = (oneshot::Sender<Outcome>, Option<telemetry::trace::Context>);

/// The replicated log, seen from one node.
pub struct ClusterLog {
    options: ClusterOptions,
    proposer: tokio::sync::mpsc::Sender<ProposeSlot>,
    readers: tokio::sync::mpsc::Sender<ReadSlot>,
    paxos: PaxosClient,
    waiters: Mutex<HashMap<Uuid, Waiter>>,
    /// How many waiters carry a sampled trace: the applier looks for them only when some do.
    traced_waiters: AtomicU64,
    /// A snapshot is being built and handed to paxos.
    compacting: AtomicBool,
    /// Records (accounts and idempotency records) in the last snapshot handed to paxos.
    snapshot_records: AtomicU64,
    applied: watch::Sender<u64>,
    view: Mutex<LeaderView>,
    last_contact_ms: AtomicU64,
    started: Instant,
    fatal: AtomicBool,
}

/// The proposer's stream to paxos (`GET /local/propose/stream`), opened on first use and again
/// after it ends; when paxos refuses or cannot be reached, batches go over `POST
/// /local/propose` and the stream is tried again a second later.
#[derive(Default)]
struct StreamSlot {
    stream: Option<paxos::client::ProposeStream>,
    retry_at: Option<tokio::time::Instant>,
}

impl StreamSlot {
    async fn get(&mut self, paxos: &PaxosClient) -> Option<paxos::client::ProposeStream> {
        if let Some(stream) = &self.stream
            && !stream.is_closed()
        {
            return Some(stream.clone());
        }
        self.stream = None;
        if self
            .retry_at
            .is_some_and(|at| tokio::time::Instant::now() < at)
        {
            return None;
        }
        match tokio::time::timeout(Duration::from_secs(1), paxos.propose_stream()).await {
            Ok(Ok(stream)) => {
                self.retry_at = None;
                self.stream = Some(stream.clone());
                Some(stream)
            }
            failed => {
                if let Ok(Err(err)) = failed {
                    tracing::debug!(%err, "no propose stream; proposing over HTTP");
                }
                self.retry_at = Some(tokio::time::Instant::now() + Duration::from_secs(1));
                None
            }
        }
    }
}

impl ClusterLog {
    /// Starts the applier and the status poller; they stop with `shutdown`. A fatal store
    /// error cancels `fatal`.
    pub async fn start(
        options: ClusterOptions,
        store: Arc<dyn Store>,
        shutdown: CancellationToken,
        fatal: CancellationToken,
    ) -> Result<Arc<ClusterLog>, crate::store::StoreError> {
        let applied = store.summary().await?.applied_index;
        let paxos = PaxosClient::new(&options.paxos_url, options.token.as_str())
            .map_err(|e| crate::store::StoreError::Fatal(e.to_string()))?;
        let (proposer, proposals) = tokio::sync::mpsc::channel(options.max_waiting.max(1));
        let (readers, reads) = tokio::sync::mpsc::channel(options.max_waiting.max(1));
        let log = Arc::new(ClusterLog {
            proposer,
            readers,
            options,
            paxos,
            waiters: Mutex::new(HashMap::new()),
            traced_waiters: AtomicU64::new(0),
            compacting: AtomicBool::new(false),
            snapshot_records: AtomicU64::new(0),
            applied: watch::Sender::new(applied),
            view: Mutex::new(LeaderView::default()),
            last_contact_ms: AtomicU64::new(0),
            started: Instant::now(),
            fatal: AtomicBool::new(false),
        });
        let tasks = [
            (
                "applier",
                tokio::spawn(log.clone().applier(store, shutdown.clone(), fatal.clone())),
            ),
            (
                "status poller",
                tokio::spawn(log.clone().poll_status(shutdown.clone())),
            ),
            (
                "proposer",
                tokio::spawn(log.clone().propose_batches(proposals, shutdown.clone())),
            ),
            (
                "read batcher",
                tokio::spawn(log.clone().read_batches(reads, shutdown.clone())),
            ),
        ];
        for (name, task) in tasks {
            log.watch_vital(name, task, shutdown.clone(), fatal.clone());
        }
        Ok(log)
    }

    /// A vital task that ends before `shutdown` (it panicked, or returned) is fatal: the log
    /// stops being alive and `fatal` makes the process exit.
    fn watch_vital(
        self: &Arc<Self>,
        name: &'static str,
        task: tokio::task::JoinHandle<()>,
        shutdown: CancellationToken,
        fatal: CancellationToken,
    ) {
        let log = self.clone();
        tokio::spawn(async move {
            let result = task.await;
            if shutdown.is_cancelled() || fatal.is_cancelled() {
                return;
            }
            match result {
                Err(err) => {
                    tracing::error!(task = name, %err, "a vital task failed; the node stops")
                }
                Ok(()) => tracing::error!(task = name, "a vital task ended; the node stops"),
            }
            log.fatal.store(true, Ordering::Relaxed);
            fatal.cancel();
        });
    }

    /// Sends waiting proposals to paxos many per call, at most
    /// [`ClusterOptions::proposals_in_flight`] calls out at once (each answered when its
    /// commands are decided), so the node and paxos pay one round per batch instead of per
    /// client request, and the batches grow with the load: with one call out, every command
    /// that arrives during a consensus round leaves in the next batch. At 64 clients on two
    /// cores, 1 call out against 32 gave 1.03-1.21x the transfers in leader mode and
    /// 1.04-1.16x in leaderless mode, at less CPU per operation (docs/performance.md).
    ///
    /// Under load a batch also lingers (at most [`ClusterOptions::propose_linger`], and only
    /// while commands keep coming: [`LINGER_GAP_DIVISOR`]) until it is as large as the last one
    /// ([`linger_target`]): without it a batch left with the first few commands that came back
    /// after a decision, and the rest made a slot of their own.
    async fn propose_batches(
        self: Arc<Self>,
        mut queue: tokio::sync::mpsc::Receiver<ProposeSlot>,
        shutdown: CancellationToken,
    ) {
        let in_flight = Arc::new(tokio::sync::Semaphore::new(
            self.options.proposals_in_flight.max(1),
        ));
        let mut batch = Vec::with_capacity(MAX_PROPOSE_BATCH);
        let mut stream = StreamSlot::default();
        let mut last_len = 0;
        loop {
            // The permit first: commands that arrive while every permit is out wait in the
            // queue and leave together in the next batch.
            let permit = tokio::select! {
                () = shutdown.cancelled() => return,
                permit = in_flight.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            };
            let received = tokio::select! {
                () = shutdown.cancelled() => return,
                // Handlers a step woke together all queue first (see `plumbing::burst`).
                n = plumbing::recv_burst(&mut queue, &mut batch, MAX_PROPOSE_BATCH) => n,
            };
            if received == 0 {
                return;
            }
            if !self.options.propose_linger.is_zero()
                && let Some(target) = linger_target(batch.len(), last_len)
            {
                let linger = self.options.propose_linger;
                let deadline = tokio::time::Instant::now() + linger;
                let gap = linger / LINGER_GAP_DIVISOR;
                while batch.len() < target {
                    let room = MAX_PROPOSE_BATCH - batch.len();
                    let until = deadline.min(tokio::time::Instant::now() + gap);
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep_until(until) => break,
                        n = plumbing::recv_burst(&mut queue, &mut batch, room) => if n == 0 {
                            break;
                        },
                    }
                }
            }
            last_len = batch.len();
            let mut commands = Vec::with_capacity(batch.len());
            let mut traces = Vec::new();
            let mut replies = Vec::with_capacity(batch.len());
            for (command, trace, reply) in batch.drain(..) {
                commands.push(command);
                traces.extend(trace);
                replies.push(reply);
            }
            // One HTTP call carries many requests: its span (only if one of them is sampled)
            // continues the first sampled request's trace and links the others.
            let span = telemetry::trace::batch_span("node.propose_batch", &traces)
                .unwrap_or_else(tracing::Span::none);
            // Sampled batches keep their `POST /local/propose` (and so its span in the trace);
            // the others go on the propose stream while paxos keeps one open.
            let stream = if traces.is_empty() {
                stream.get(&self.paxos).await
            } else {
                None
            };
            let log = self.clone();
            tokio::spawn(
                async move {
                    let _permit = permit;
                    let sent = match stream {
                        Some(stream) => match stream.propose(commands.clone()).await {
                            // The stream had ended before: nothing left, so propose again.
                            Err(ClientError::NotSent { .. }) => log.paxos.propose(&commands).await,
                            other => other,
                        },
                        None => log.paxos.propose(&commands).await,
                    };
                    let answers = log.answered(sent);
                    let answers = match answers {
                        Ok(answers) if answers.len() == replies.len() => Ok(answers),
                        // Paxos took the commands but its answer makes no sense.
                        Ok(_) => Err(SubmitError::OutcomeUnknown),
                        Err(err) => Err(err),
                    };
                    match answers {
                        Ok(answers) => {
                            for (reply, answer) in replies.into_iter().zip(answers) {
                                let _ = reply.send(Ok(answer));
                            }
                        }
                        Err(err) => {
                            for reply in replies {
                                let _ = reply.send(Err(err.clone()));
                            }
                        }
                    }
                }
                .instrument(span),
            );
        }
    }

    /// Takes one read point for all the reads waiting (at most [`READ_CALLS_IN_FLIGHT`] at
    /// once). Linearizable: every read in a batch was waiting before its read point was asked
    /// for, so the point covers everything decided before the read began.
    async fn read_batches(
        self: Arc<Self>,
        mut queue: tokio::sync::mpsc::Receiver<ReadSlot>,
        shutdown: CancellationToken,
    ) {
        let in_flight = Arc::new(tokio::sync::Semaphore::new(READ_CALLS_IN_FLIGHT));
        let mut batch = Vec::with_capacity(256);
        loop {
            // A permit first: reads keep arriving while every call is out, and go together.
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                return;
            };
            let received = tokio::select! {
                () = shutdown.cancelled() => return,
                n = plumbing::recv_burst(&mut queue, &mut batch, 1_024) => n,
            };
            if received == 0 {
                return;
            }
            let readers = std::mem::replace(&mut batch, Vec::with_capacity(64));
            let log = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let reply = log.read_point().await;
                for reader in readers {
                    let _ = reader.send(reply.clone());
                }
            });
        }
    }

    /// A read point: the log index after which a read sees every write decided before this
    /// call.
    async fn read_point(&self) -> Result<u64, SubmitError> {
        if self.options.mode == paxos::Mode::Leader {
            // A read changes nothing: whatever went wrong, retrying it is safe.
            let reply = self
                .answered(self.paxos.read_index().await)
                .map_err(|_| SubmitError::Unavailable)?;
            match reply {
                ReadIndexReply::Ready { index } => Ok(index),
                ReadIndexReply::NotLeader { .. } => Err(SubmitError::NotLeader),
            }
        } else {
            // Leaderless: a no-op through the log; once it is applied here, so is everything
            // decided before it was proposed.
            let barrier = Command {
                op: Operation::Barrier,
                idempotency_key: None,
                request_id: None,
            };
            self.propose_and_wait(barrier).await.map(|_| 0)
        }
    }

    fn touch(&self) {
        self.last_contact_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// A call to the local paxos process, as the log's error: only a failure before the request
    /// left (no connection) or a refusal (an error status: paxos answers those before it
    /// proposes anything) is `Unavailable`; once the request may have been handled, a lost or
    /// garbled answer is `OutcomeUnknown`.
    fn answered<T>(&self, result: Result<T, ClientError>) -> Result<T, SubmitError> {
        match result {
            Ok(answer) => {
                self.touch();
                Ok(answer)
            }
            Err(err) if err.nothing_happened() => Err(SubmitError::Unavailable),
            Err(_) => Err(SubmitError::OutcomeUnknown),
        }
    }

    async fn propose_and_wait(&self, mut command: Command) -> Result<Outcome, SubmitError> {
        let id = Uuid::new_v4();
        command.request_id = Some(id);
        let bytes =
            Bytes::from(serde_json::to_vec(&command).map_err(|_| SubmitError::Unavailable)?);
        let (tx, rx) = oneshot::channel();
        let trace = telemetry::trace::current_sampled();
        {
            let mut waiters = self.waiters.lock().expect("waiters lock");
            if waiters.len() >= self.options.max_waiting {
                return Err(SubmitError::Overloaded);
            }
            if trace.is_some() {
                self.traced_waiters.fetch_add(1, Ordering::Relaxed);
            }
            waiters.insert(id, (tx, trace.clone()));
        }
        // However this call ends (an answer, an error, or the client's timeout dropping this
        // future), the waiter goes: the map stays bounded by the requests really waiting.
        let _guard = WaiterGuard { log: self, id };
        let (answer_tx, answer_rx) = oneshot::channel();
        if self.proposer.try_send((bytes, trace, answer_tx)).is_err() {
            return Err(SubmitError::Overloaded);
        }
        let reply = match answer_rx.await {
            Ok(Ok(reply)) => reply,
            Ok(Err(err)) => return Err(err),
            // The proposing task went away with the command: it may have been sent.
            Err(_) => return Err(SubmitError::OutcomeUnknown),
        };
        match reply {
            // Decided: this node's applier delivers the outcome once it applied the slot.
            ProposeReply::Decided { .. } | ProposeReply::Timeout => {
                rx.await.map_err(|_| SubmitError::OutcomeUnknown)
            }
            ProposeReply::NotLeader { leader } => {
                self.view.lock().expect("view lock").leader = leader;
                Err(SubmitError::NotLeader)
            }
            ProposeReply::Dropped => Err(SubmitError::Unavailable),
            ProposeReply::OutcomeUnknown => Err(SubmitError::OutcomeUnknown),
            ProposeReply::Overloaded => Err(SubmitError::Overloaded),
        }
    }

    async fn wait_applied(&self, index: u64) -> Result<(), SubmitError> {
        let mut applied = self.applied.subscribe();
        applied
            .wait_for(|a| *a >= index)
            .await
            .map(|_| ())
            .map_err(|_| SubmitError::Unavailable)
    }

    async fn applier(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        shutdown: CancellationToken,
        fatal: CancellationToken,
    ) {
        let mut failures: u32 = 0;
        let mut last_compacted = *self.applied.borrow();
        // The decided log, pushed by paxos as it grows; reopened from the applied index
        // whenever it breaks or the applier did not take all of a batch.
        // A paxos process that does not serve the stream (an older version) is long-polled.
        let mut stream: Option<paxos::client::EntriesStream> = None;
        let mut long_poll = false;
        // A frame read while merging that could not join the batch (a snapshot).
        let mut stashed: Option<EntriesReply> = None;
        while !shutdown.is_cancelled() {
            let from = *self.applied.borrow() + 1;
            if stream.is_none() && !long_poll {
                let opened = tokio::select! {
                    () = shutdown.cancelled() => return,
                    r = self.paxos.entries_stream(from, 4096) => r,
                };
                match opened {
                    Ok(opened) => stream = Some(opened),
                    Err(ClientError::Refused { status, .. }) if status != 401 && status < 500 => {
                        tracing::info!(status, "paxos has no entries stream; long-polling");
                        long_poll = true;
                    }
                    Err(err) => {
                        tracing::debug!(%err, "no entries stream from paxos");
                        failures = failures.saturating_add(1);
                        tokio::time::sleep(Duration::from_millis(
                            (20u64 << failures.min(5)).min(500),
                        ))
                        .await;
                        continue;
                    }
                }
            }
            let next = match (stashed.take(), stream.as_mut()) {
                (Some(frame), _) => Ok(Some(frame)),
                (None, Some(open)) => tokio::select! {
                    () = shutdown.cancelled() => return,
                    r = open.next() => r,
                },
                (None, None) => tokio::select! {
                    () = shutdown.cancelled() => return,
                    r = self.paxos.entries(from, 4096, Duration::from_secs(1)) => r.map(Some),
                },
            };
            let mut reply = match next {
                Ok(Some(reply)) => reply,
                Ok(None) | Err(_) => {
                    stream = None;
                    failures = failures.saturating_add(1);
                    tokio::time::sleep(Duration::from_millis((20u64 << failures.min(5)).min(500)))
                        .await;
                    continue;
                }
            };
            failures = 0;
            self.touch();
            // Frames that arrived while the last batch was being applied join this one: one
            // store transaction for all of them (a slow store, Firestore, would otherwise fall
            // behind one small transaction per frame).
            if let (EntriesReply::Entries(entries), Some(open)) = (&mut reply, stream.as_mut()) {
                while entries.len() < 4096 {
                    match open.ready() {
                        Some(Ok(Some(EntriesReply::Entries(more)))) => entries.extend(more),
                        Some(Ok(Some(other))) => {
                            stashed = Some(other);
                            break;
                        }
                        Some(Ok(None) | Err(_)) => {
                            // Broken: what was read is applied, then the stream reopens.
                            stream = None;
                            break;
                        }
                        None => break,
                    }
                }
            }
            let last = match &reply {
                EntriesReply::Entries(entries) => entries.last().map(|(slot, _)| *slot),
                EntriesReply::Snapshot { slot, .. } => Some(*slot),
            };
            // A store shared by the whole cluster (leader mode on Firestore) is written by the
            // leader only; the others follow its applied index (and so never install snapshots
            // into it: it is ahead of any snapshot already).
            let follow = store.is_shared() && !self.view.lock().expect("view lock").is_leader;
            let result = match reply {
                EntriesReply::Entries(entries) if entries.is_empty() => Ok(()),
                EntriesReply::Entries(entries) if follow => {
                    let last = entries.last().map_or(0, |(slot, _)| *slot);
                    self.follow(&store, last).await
                }
                EntriesReply::Snapshot { slot, .. } if follow => self.follow(&store, slot).await,
                EntriesReply::Entries(entries) => self.apply(&store, entries).await,
                EntriesReply::Snapshot { slot, data } => self.install(&store, slot, &data).await,
            };
            if result.is_err() || last.is_some_and(|last| *self.applied.borrow() < last) {
                // The stream moved past what was applied: start it again from the applied index.
                stream = None;
                stashed = None;
            }
            if let Err(err) = result {
                if err.is_retryable() {
                    tracing::warn!(%err, "store unavailable; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                tracing::error!(%err, "fatal store error; the node stops");
                self.fatal.store(true, Ordering::Relaxed);
                fatal.cancel();
                return;
            }
            let applied = *self.applied.borrow();
            // Off the applier's path: a snapshot of a large store (every retained idempotency
            // record included) takes hundreds of milliseconds to build and send, and writes
            // would wait behind it. It reads a consistent view of the store at its own applied
            // index, so applying can go on meanwhile; one compaction at a time.
            let interval = compaction_interval(
                self.options.compact_every,
                self.snapshot_records.load(Ordering::Relaxed),
            );
            if applied >= last_compacted + interval && !self.compacting.swap(true, Ordering::AcqRel)
            {
                last_compacted = applied;
                let (log, store) = (self.clone(), store.clone());
                tokio::spawn(async move {
                    if let Err(err) = log.compact(&store).await {
                        tracing::warn!(%err, "handing paxos a snapshot failed");
                    }
                    log.compacting.store(false, Ordering::Release);
                });
            }
        }
    }

    async fn apply(
        &self,
        store: &Arc<dyn Store>,
        decided: Vec<(u64, paxos::Value)>,
    ) -> Result<(), crate::store::StoreError> {
        let entries: Vec<Entry> = decided
            .iter()
            .map(|(slot, value)| Entry {
                index: *slot,
                commands: value
                    .commands()
                    .iter()
                    .filter_map(|bytes| match serde_json::from_slice::<Command>(bytes) {
                        Ok(command) => Some(command),
                        Err(err) => {
                            // Every replica skips the same bytes the same way: still deterministic.
                            tracing::error!(%err, slot, "undecodable command in the log; skipped");
                            None
                        }
                    })
                    .collect(),
            })
            .collect();
        // The apply (and the store's work inside it) joins the traces of the sampled requests
        // whose commands it carries; with none sampled there is no span to build.
        let span = if self.traced_waiters.load(Ordering::Relaxed) > 0 {
            let waiters = self.waiters.lock().expect("waiters lock");
            let traces: Vec<_> = entries
                .iter()
                .flat_map(|entry| &entry.commands)
                .filter_map(|command| waiters.get(&command.request_id?)?.1.clone())
                .collect();
            drop(waiters);
            telemetry::trace::batch_span("node.apply", &traces)
        } else {
            None
        };
        let span = span.unwrap_or_else(tracing::Span::none);
        let outcomes = store.apply(&entries).instrument(span).await?;
        let mut waiters = self.waiters.lock().expect("waiters lock");
        for (entry, outcome) in entries.iter().zip(outcomes) {
            let Some(outcome) = outcome else { continue };
            for (command, outcome) in entry.commands.iter().zip(outcome) {
                if let Some((waiter, trace)) = command.request_id.and_then(|id| waiters.remove(&id))
                {
                    if trace.is_some() {
                        self.traced_waiters.fetch_sub(1, Ordering::Relaxed);
                    }
                    let _ = waiter.send(outcome);
                }
            }
        }
        drop(waiters);
        if let Some((last, _)) = decided.last() {
            self.applied.send_replace(*last);
            metrics::gauge!(crate::metrics::APPLIED_INDEX).set(*last as f64);
        }
        Ok(())
    }

    /// A follower of a shared store: the entries up to `last` are applied once the store's
    /// applied index (advanced by the leader) reaches them. Returns after some progress or a
    /// short wait, so the caller re-checks leadership between calls.
    async fn follow(
        &self,
        store: &Arc<dyn Store>,
        last: u64,
    ) -> Result<(), crate::store::StoreError> {
        let shared = store.summary().await?.applied_index.min(last);
        if shared > *self.applied.borrow() {
            self.applied.send_replace(shared);
            metrics::gauge!(crate::metrics::APPLIED_INDEX).set(shared as f64);
        }
        if shared < last {
            // Followers forward reads and writes to the leader, so their view of the shared
            // store may lag a little: polling every 200 ms keeps it to 5 reads/s per follower.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    async fn install(
        &self,
        store: &Arc<dyn Store>,
        slot: u64,
        data: &[u8],
    ) -> Result<(), crate::store::StoreError> {
        if slot <= *self.applied.borrow() {
            return Ok(());
        }
        let snapshot = Snapshot::decode(data)?;
        tracing::info!(
            slot,
            accounts = snapshot.accounts.len(),
            "installing a snapshot from the cluster"
        );
        store.install_snapshot(&snapshot).await?;
        self.applied.send_replace(slot);
        Ok(())
    }

    async fn compact(&self, store: &Arc<dyn Store>) -> anyhow::Result<()> {
        let started = Instant::now();
        let snapshot = store.snapshot().await?;
        let records = (snapshot.accounts.len() + snapshot.keys.len()) as u64;
        // Encoding a large snapshot is CPU work: off the async workers.
        let body = tokio::task::spawn_blocking(move || {
            encode_compact(snapshot.applied_index, &Bytes::from(snapshot.encode()))
        })
        .await??;
        let bytes = body.len();
        self.paxos.compact(body).await?;
        self.snapshot_records.store(records, Ordering::Relaxed);
        metrics::gauge!(crate::metrics::SNAPSHOT_RECORDS).set(records as f64);
        metrics::gauge!(crate::metrics::SNAPSHOT_BYTES).set(bytes as f64);
        metrics::histogram!(crate::metrics::COMPACTION_DURATION)
            .record(started.elapsed().as_secs_f64());
        tracing::debug!(records, bytes, "handed paxos a snapshot");
        Ok(())
    }

    async fn poll_status(self: Arc<Self>, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(Duration::from_millis(50));
        while !shutdown.is_cancelled() {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = every.tick() => {}
            }
            let status = tokio::time::timeout(Duration::from_millis(500), self.paxos.status());
            let Ok(Ok(status)) = status.await else {
                continue;
            };
            self.touch();
            let mut view = self.view.lock().expect("view lock");
            view.is_leader = status.status.is_leader;
            view.leader = status.status.leader;
        }
    }
}

struct WaiterGuard<'a> {
    log: &'a ClusterLog,
    id: Uuid,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut waiters) = self.log.waiters.lock()
            && let Some((_, Some(_))) = waiters.remove(&self.id)
        {
            self.log.traced_waiters.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[async_trait::async_trait]
impl Log for ClusterLog {
    async fn submit(&self, command: Command) -> Result<Outcome, SubmitError> {
        self.propose_and_wait(command).await
    }

    async fn read_barrier(&self) -> Result<(), SubmitError> {
        let index = if telemetry::trace::current_sampled().is_some() {
            // A sampled read takes its own read point, and so keeps its spans in the trace.
            self.read_point().await?
        } else {
            let (tx, rx) = oneshot::channel();
            if self.readers.try_send(tx).is_err() {
                return Err(SubmitError::Overloaded);
            }
            rx.await.map_err(|_| SubmitError::Unavailable)??
        };
        self.wait_applied(index).await
    }

    fn is_healthy(&self) -> bool {
        let last = self.last_contact_ms.load(Ordering::Relaxed);
        let now = self.started.elapsed().as_millis() as u64;
        !self.fatal.load(Ordering::Relaxed) && last > 0 && now.saturating_sub(last) < 2_000
    }

    fn is_alive(&self) -> bool {
        !self.fatal.load(Ordering::Relaxed)
    }

    fn route(&self) -> Route {
        if self.options.mode == paxos::Mode::Leaderless {
            return Route::Here;
        }
        let view = self.view.lock().expect("view lock");
        if view.is_leader {
            return Route::Here;
        }
        match view.leader {
            Some(id) if id != self.options.node_id => self
                .options
                .peers_public
                .get(id as usize)
                .map_or(Route::NoLeader, |url| Route::Forward(url.clone())),
            _ => Route::NoLeader,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{
        LINGER_BATCH, LINGER_FROM, SNAPSHOT_AMORTIZATION, compaction_interval, linger_target,
    };

    #[test]
    fn a_batch_lingers_only_after_a_batch_of_several_and_only_up_to_its_size() {
        assert_eq!(linger_target(1, 0), None, "the first batch leaves at once");
        assert_eq!(
            linger_target(1, 1),
            None,
            "low load: a lone command leaves at once"
        );
        assert_eq!(
            linger_target(1, LINGER_FROM - 1),
            None,
            "a few commands a batch: not loaded enough to wait"
        );
        assert_eq!(linger_target(1, LINGER_FROM), Some(LINGER_FROM));
        assert_eq!(linger_target(1, 10), Some(10), "after 10, wait for 10");
        assert_eq!(linger_target(10, 10), None, "as large as the last: leave");
        assert_eq!(linger_target(12, 10), None);
        assert_eq!(
            linger_target(3, 400),
            Some(LINGER_BATCH),
            "a large last batch asks for at most LINGER_BATCH"
        );
        assert_eq!(linger_target(LINGER_BATCH, 400), None);
    }

    #[test]
    fn compaction_waits_longer_as_snapshots_grow() {
        assert_eq!(
            compaction_interval(10_000, 0),
            10_000,
            "never snapshotted yet"
        );
        assert_eq!(
            compaction_interval(10_000, 50_000),
            10_000,
            "small state: the floor"
        );
        assert_eq!(
            compaction_interval(10_000, 1_000_000),
            1_000_000 / SNAPSHOT_AMORTIZATION,
            "a million records: one snapshot per 125,000 slots, not per 10,000"
        );
    }
}
