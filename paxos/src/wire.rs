//! The wire types of the paxos process's local HTTP API, shared by the server
//! ([`crate::runtime`]) and the client ([`crate::client`]): postcard bodies for the node's calls,
//! JSON for status.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::ballot::{NodeId, Slot};
use crate::core::{Metrics, Mode, Ready, Status};
use crate::messages::Value;

/// Answer to `POST /local/propose`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProposeReply {
    /// Decided at this slot (this replica has it; apply up to here to see the outcome).
    Decided {
        /// The slot.
        slot: Slot,
    },
    /// Leader mode and this replica does not lead: send it to `leader`.
    NotLeader {
        /// Best guess.
        leader: Option<NodeId>,
    },
    /// Handed back, never decided (it never got a slot, or another value took its slot): safe
    /// to retry.
    Dropped,
    /// Too many pending commands.
    Overloaded,
    /// No decision in time: it may still be decided.
    Timeout,
    /// Its fate was lost (a snapshot from a peer replaced the slots it was proposed in): it may
    /// have been decided. Retry only with the same idempotency key, to learn the outcome.
    OutcomeUnknown,
}

/// What each command the core reported on is told: decided, handed back (never decided, safe
/// to retry), or of unknown fate (it may have been decided: only a retry with its idempotency
/// key is safe).
pub fn answers(ready: &Ready) -> impl Iterator<Item = (&Bytes, ProposeReply)> {
    let decided = ready.decided.iter().flat_map(|(slot, value)| {
        value
            .commands()
            .iter()
            .map(|c| (c, ProposeReply::Decided { slot: *slot }))
    });
    let dropped = ready.dropped.iter().map(|c| (c, ProposeReply::Dropped));
    let unknown = (ready.outcome_unknown.iter()).map(|c| (c, ProposeReply::OutcomeUnknown));
    decided.chain(dropped).chain(unknown)
}

/// The `Upgrade` protocol of `GET /local/propose/stream`: after the switch the node writes one
/// length-delimited postcard [`ProposeFrame`] per batch, and the process answers each with a
/// [`ProposeAnswer`] of the same id once every command is decided, handed back or refused (in
/// the order they are, not the order they came).
pub const PROPOSE_STREAM_PROTOCOL: &str = "paxos-propose/1";

/// Most commands in one proposal, on the stream as in `POST /local/propose`.
pub const MAX_PROPOSE_COMMANDS: usize = 4_096;

/// One batch of commands on a propose stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposeFrame {
    /// Chosen by the node; unique on the stream.
    pub id: u64,
    /// 1 to [`MAX_PROPOSE_COMMANDS`] opaque commands.
    pub commands: Vec<Bytes>,
}

/// The answer to a [`ProposeFrame`]: one reply per command, in the frame's order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposeAnswer {
    /// The frame's id.
    pub id: u64,
    /// One per command.
    pub replies: Vec<ProposeReply>,
}

/// The `Upgrade` protocol of `GET /local/entries/stream`: after the switch the process writes
/// one length-delimited postcard [`EntriesReply`] per frame, each continuing where the last one
/// ended (an empty one every [`ENTRIES_KEEPALIVE`] when nothing was decided).
pub const ENTRIES_STREAM_PROTOCOL: &str = "paxos-entries/1";

/// How often an entries stream says "nothing new" (its reader takes silence for three times
/// as long as a dead stream).
pub const ENTRIES_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(1);

/// Answer to `GET /local/entries`, and each frame of `GET /local/entries/stream`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntriesReply {
    /// Consecutive decided entries from the requested slot (empty: none yet).
    Entries(Vec<(Slot, Value)>),
    /// The requested slots were compacted: install this application snapshot first.
    Snapshot {
        /// Last slot it covers.
        slot: Slot,
        /// The application's bytes.
        data: Bytes,
    },
}

/// Answer to `POST /local/read_index`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadIndexReply {
    /// Apply up to `index`, then read.
    Ready {
        /// The read point.
        index: Slot,
    },
    /// Not the leader (or leaderless mode).
    NotLeader {
        /// Best guess.
        leader: Option<NodeId>,
    },
}

/// `GET /status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReply {
    /// `leader` or `leaderless`.
    pub mode: Mode,
    /// The core's view.
    #[serde(flatten)]
    pub status: Status,
    /// Counters.
    pub metrics: Metrics,
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// Review item 4: a command whose fate the core lost (a snapshot replaced its slot) must not
    /// be reported as handed back, which the node turns into "safe to retry".
    #[test]
    fn lost_commands_are_outcome_unknown_and_only_handed_back_ones_are_dropped() {
        let command = |s: &'static str| Bytes::from_static(s.as_bytes());
        let ready = Ready {
            decided: vec![(7, Value::Batch(Arc::new(vec![command("a")])))],
            dropped: vec![command("b")],
            outcome_unknown: vec![command("c")],
            ..Ready::default()
        };
        let got: Vec<(&Bytes, ProposeReply)> = answers(&ready).collect();
        assert_eq!(
            got,
            vec![
                (&command("a"), ProposeReply::Decided { slot: 7 }),
                (&command("b"), ProposeReply::Dropped),
                (&command("c"), ProposeReply::OutcomeUnknown),
            ]
        );
    }
}
