//! The node's way into the log: submit a command, wait for its outcome.
//!
//! A standalone node is a log of one: [`spawn_local_log`] starts the single writer that gives
//! commands consecutive indexes and applies them through the store. It drains whatever queued up
//! while the previous batch was being committed and applies all of it in one transaction with one
//! fsync (group commit), so 64 concurrent clients share syncs instead of paying one each. The
//! replicated log will sit behind the same [`Submitter`], with the batch coming from Paxos.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::command::{Command, Entry, Outcome};
use crate::store::Store;

/// Why a command got no outcome.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The queue is full; nothing was applied. Safe to retry.
    #[error("the node is overloaded")]
    Overloaded,
    /// The log or its store cannot apply commands now, and this command was not handed to it
    /// (or was handed back undecided): nothing was applied, a retry is safe.
    #[error("the log is unavailable")]
    Unavailable,
    /// The command may have been applied (it reached the log and then its answer was lost):
    /// retry only with the same idempotency key, which returns the first outcome.
    #[error("the outcome is unknown")]
    OutcomeUnknown,
    /// Leader mode: this node does not lead (any more).
    #[error("not the leader")]
    NotLeader,
    /// No outcome in time: the command may still be applied.
    #[error("no outcome in time")]
    Timeout,
}

/// Where a client request should be served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// Here.
    Here,
    /// At the leader, whose public base URL this is.
    Forward(String),
    /// Nowhere right now: no leader is known.
    NoLeader,
}

/// The node's way into the replicated log (or the standalone log of one).
#[async_trait::async_trait]
pub trait Log: Send + Sync + 'static {
    /// Gets `command` into the log and returns its outcome once this node has applied it.
    async fn submit(&self, command: Command) -> Result<Outcome, SubmitError>;
    /// Returns once a read of the local store is linearizable.
    async fn read_barrier(&self) -> Result<(), SubmitError>;
    /// False when the log cannot serve (its writer stopped, or the paxos process is unreachable).
    fn is_healthy(&self) -> bool;
    /// False once a vital part of the log is gone for good (a fatal store error, a task that
    /// ended): the process is exiting and `/healthz` says so. Unlike `is_healthy`, never false
    /// for a passing trouble such as a paxos process that does not answer for a moment.
    fn is_alive(&self) -> bool;
    /// Where client requests should go (leader mode followers forward to the leader).
    fn route(&self) -> Route;
}

#[async_trait::async_trait]
impl Log for Submitter {
    async fn submit(&self, command: Command) -> Result<Outcome, SubmitError> {
        let pending = Submitter::submit(self, command)?;
        // The writer took the command and then stopped: it may have applied it.
        pending.await.map_err(|_| SubmitError::OutcomeUnknown)?
    }

    async fn read_barrier(&self) -> Result<(), SubmitError> {
        // A log of one: every acknowledged write is already in the store.
        Ok(())
    }

    fn is_healthy(&self) -> bool {
        Submitter::is_healthy(self)
    }

    fn is_alive(&self) -> bool {
        // The single writer stopped (a fatal store error, or it panicked).
        Submitter::is_healthy(self)
    }

    fn route(&self) -> Route {
        Route::Here
    }
}

/// Limits of the local log.
#[derive(Clone, Copy, Debug)]
pub struct LocalLogOptions {
    /// Commands waiting to be applied before new ones are refused with `Overloaded`.
    pub queue_capacity: usize,
    /// Most commands applied in one transaction.
    pub max_batch: usize,
}

impl Default for LocalLogOptions {
    fn default() -> Self {
        LocalLogOptions {
            queue_capacity: 16_384,
            max_batch: 1_024,
        }
    }
}

type Reply = oneshot::Sender<Result<Outcome, SubmitError>>;

/// A handle to submit commands; cheap to clone.
#[derive(Clone)]
pub struct Submitter {
    queue: mpsc::Sender<(Command, Reply)>,
    healthy: Arc<AtomicBool>,
}

impl Submitter {
    /// Queues a command; the receiver yields its outcome once it is applied and durable.
    pub fn submit(
        &self,
        command: Command,
    ) -> Result<oneshot::Receiver<Result<Outcome, SubmitError>>, SubmitError> {
        if !self.is_healthy() {
            return Err(SubmitError::Unavailable);
        }
        let (reply, outcome) = oneshot::channel();
        self.queue
            .try_send((command, reply))
            .map_err(|err| match err {
                mpsc::error::TrySendError::Full(_) => SubmitError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => SubmitError::Unavailable,
            })?;
        Ok(outcome)
    }

    /// False once the writer stopped (a fatal store error or shutdown).
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed) && !self.queue.is_closed()
    }
}

/// Starts the single writer of a standalone node. A fatal store error stops it and cancels
/// `fatal`, so the process exits instead of serving from a state it cannot trust.
pub async fn spawn_local_log(
    store: Arc<dyn Store>,
    options: LocalLogOptions,
    fatal: CancellationToken,
) -> Result<(Submitter, tokio::task::JoinHandle<()>), crate::store::StoreError> {
    let applied = store.summary().await?.applied_index;
    let (queue, mut inbox) = mpsc::channel::<(Command, Reply)>(options.queue_capacity.max(1));
    let healthy = Arc::new(AtomicBool::new(true));
    let submitter = Submitter {
        queue,
        healthy: healthy.clone(),
    };
    metrics::gauge!(crate::metrics::APPLIED_INDEX).set(applied as f64);
    let writer = tokio::spawn(async move {
        let mut next_index = applied + 1;
        let mut batch = Vec::with_capacity(options.max_batch);
        while inbox.recv_many(&mut batch, options.max_batch.max(1)).await > 0 {
            let (commands, replies): (Vec<_>, Vec<_>) = batch.drain(..).unzip();
            // The whole group is one log entry: one index, one transaction, one fsync.
            let entry = Entry {
                index: next_index,
                commands,
            };
            match store.apply(std::slice::from_ref(&entry)).await {
                Ok(mut outcomes) => {
                    next_index += 1;
                    metrics::gauge!(crate::metrics::APPLIED_INDEX).set(entry.index as f64);
                    // This writer is the store's only writer, so the entry is new.
                    let outcomes = outcomes
                        .pop()
                        .flatten()
                        .expect("the local log is the store's only writer");
                    for (reply, outcome) in replies.into_iter().zip(outcomes) {
                        let _ = reply.send(Ok(outcome));
                    }
                }
                Err(err) if err.is_retryable() => {
                    tracing::warn!(error = %err, "store unavailable; batch refused");
                    for reply in replies {
                        let _ = reply.send(Err(SubmitError::Unavailable));
                    }
                }
                Err(err) => {
                    tracing::error!(error = %err, "fatal store error; the node stops");
                    healthy.store(false, Ordering::Relaxed);
                    for reply in replies {
                        let _ = reply.send(Err(SubmitError::Unavailable));
                    }
                    fatal.cancel();
                    break;
                }
            }
        }
    });
    Ok((submitter, writer))
}
