//! Helpers of the handler tests (`handlers.rs`, `recovery_handlers.rs`): replicas, envelopes,
//! commands and ballots in one line each.
#![allow(dead_code)]

use std::sync::Arc;

use bytes::Bytes;
use paxos::core::{Config, Mode, Ready, Replica};
use paxos::messages::*;
use paxos::storage::PersistentState;
use paxos::{Ballot, NodeId};

pub fn replica(id: NodeId, nodes: u32, mode: Mode) -> Replica {
    Replica::new(Config::new(id, nodes, mode), PersistentState::default())
}

pub fn env(from: NodeId, to: NodeId, msg: Message) -> Envelope {
    Envelope::new(from, to, msg)
}

/// A message from a replica that knows replica 2 in its first rejoined incarnation.
pub fn env_to_rejoined_2(from: NodeId, msg: Message) -> Envelope {
    Envelope {
        incarnations: vec![0, 0, 1],
        ..env(from, 2, msg)
    }
}

pub fn cmd(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

pub fn batch(texts: &[&str]) -> Value {
    Value::Batch(Arc::new(texts.iter().map(|t| cmd(t)).collect()))
}

pub fn b(round: u64, node: NodeId) -> Ballot {
    Ballot::new(round, node)
}

/// The one message of a step, early or not.
pub fn only_message(ready: &Ready) -> &Envelope {
    let all: Vec<&Envelope> = ready.early.iter().chain(&ready.messages).collect();
    assert_eq!(all.len(), 1, "{all:?}");
    all[0]
}

pub fn tick_until(r: &mut Replica, mut done: impl FnMut(&Ready) -> bool) -> Ready {
    for _ in 0..200 {
        r.tick();
        let ready = r.take_ready();
        if done(&ready) {
            return ready;
        }
    }
    panic!("condition not reached in 200 ticks");
}
