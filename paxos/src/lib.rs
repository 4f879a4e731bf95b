//! Multi-Paxos for the paxos bank: one ordered log of command batches across N replicas.
//!
//! Layout:
//! - [`ballot`]: ballots `(round, node)` and log positions;
//! - [`messages`]: one struct per protocol message, in an [`messages::Envelope`];
//! - [`core`]: the sans-IO replica ([`core::Replica`]): inputs `handle`, `propose`, `tick`;
//!   outputs drained with [`core::Replica::take_ready`];
//! - [`storage`]: durable acceptor state ([`storage::Storage`]), in memory and in a redb file;
//! - [`sim`]: the deterministic simulator that checks safety on every step;
//! - [`model`]: a bounded exhaustive search of few-round schedules (rejoin, read index);
//! - [`wire`]: the types of the process's local HTTP API; [`client`]: the typed client of it;
//! - [`runtime`]: the `paxos` process (driver, HTTP routes, flags); [`metrics`]: its metrics;
//! - [`transfer`]: the transport between processes (byte-bounded queues and bodies, chunked
//!   resumable snapshot transfer).
//!
//! # Driver contract
//!
//! The core does no I/O, reads no clock and draws randomness only from the seed in its config.
//! Whoever drives it (the runtime, the simulator, a test) must, after every input or burst of
//! inputs (`handle`, `propose`, `tick`, `read_index`, `compact`; the proposals and replies of one
//! burst are flushed together at `take_ready`, so they share slots and one accept per peer):
//!
//! 1. call [`core::Replica::take_ready`]; `ready.early` (accepts of a proposer whose ballot is
//!    already durable) may be sent right away, before step 2, so the acceptors' syncs overlap
//!    this replica's; no input (a reply among them) may reach the core before step 2 is done;
//! 2. write `ready.persist` atomically to storage and **sync it** — before anything else (a batch
//!    made only of `PersistOp::Decide` may skip the sync, and may be written after steps 3-6:
//!    it gates no message, and a replica that loses a decision relearns it from its peers);
//! 3. only then send `ready.messages` (they may promise or acknowledge what step 2 wrote);
//! 4. install `ready.snapshot` into the application, if any;
//! 5. apply `ready.decided` to the application in order (slots are consecutive);
//! 6. tell clients about `ready.dropped` commands (not decided; safe to retry elsewhere) and
//!    `ready.reads` (linearizable read points).
//!
//! A storage error in step 2 is fatal: the replica must stop, not go on with state it cannot
//! trust. Time is a count of `tick()` calls; the runtime maps ticks to milliseconds.
//!
//! # Modes
//!
//! **Leader mode** is classic Multi-Paxos: one lane of slots; the elected leader runs phase 1
//! once for all open slots, then only phase 2, pipelined (a window of slots in flight) and
//! batched (many commands per slot). **Leaderless mode** splits the log into N interleaved lanes
//! (slot `s` belongs to lane `(s - 1) % N`), each its own Multi-Paxos instance whose default
//! leader is the replica with that number (Mencius). Every replica proposes its own clients'
//! commands in its own lane at ballot `(0, id)`, which every acceptor has implicitly promised, so
//! a command commits in one round trip and proposers never duel. A replica that sees a slot
//! proposed further on fills its own earlier empty slots with no-ops (skips), and the replicas
//! revoke a silent replica's lane with phase 1 at a higher ballot and fill it with no-ops.
#![deny(missing_docs)]

pub mod ballot;
#[cfg(feature = "runtime")]
pub mod client;
pub mod core;
pub mod messages;
#[cfg(feature = "runtime")]
pub mod metrics;
pub mod model;
#[cfg(feature = "runtime")]
pub mod runtime;
pub mod sim;
pub mod storage;
#[cfg(feature = "runtime")]
pub mod transfer;
pub mod wire;

pub use ballot::{Ballot, NodeId, Slot};
pub use core::{Config, Mode, Ready, Replica};
pub use messages::{Command, Envelope, Message, Value};
