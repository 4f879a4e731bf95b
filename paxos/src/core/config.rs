//! The static configuration of a replica, and its mode.

use crate::ballot::NodeId;

/// Leader or leaderless: the one type every binary, flag, file and label names a mode with
/// (`leader` and `leaderless` on the command line, in JSON and in metric labels).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "runtime", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One elected leader proposes every command.
    Leader,
    /// Every replica proposes in its own lane (Mencius).
    Leaderless,
}

impl Mode {
    /// Both modes, leader first.
    pub const ALL: [Mode; 2] = [Mode::Leader, Mode::Leaderless];

    /// `leader` or `leaderless`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Leader => "leader",
            Mode::Leaderless => "leaderless",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(text: &str) -> Result<Mode, String> {
        Mode::ALL
            .into_iter()
            .find(|mode| mode.as_str() == text)
            .ok_or_else(|| format!("mode must be leader or leaderless, got {text:?}"))
    }
}

/// Static configuration of one replica. Every limit is here.
#[derive(Clone, Debug)]
pub struct Config {
    /// This replica, `0..nodes`.
    pub id: NodeId,
    /// Cluster size N.
    pub nodes: u32,
    /// Leader or leaderless.
    pub mode: Mode,
    /// Ticks between heartbeats.
    pub heartbeat_ticks: u64,
    /// Ticks of silence before a leader (or a lane's holder) is presumed dead; the actual
    /// timeout is randomized in `[election_ticks, 2 * election_ticks)`.
    pub election_ticks: u64,
    /// Ticks before unacknowledged accepts and prepares are sent again.
    pub resend_ticks: u64,
    /// Most undecided slots a lane's leader has in flight (the pipeline window).
    pub window: usize,
    /// Most commands in one slot.
    pub max_batch_commands: usize,
    /// Most command bytes in one slot.
    pub max_batch_bytes: usize,
    /// Most commands waiting for a slot; `propose` refuses beyond it.
    pub max_pending_commands: usize,
    /// Most entries in one promise or catch-up reply.
    pub max_entries_per_message: usize,
    /// Decided entries kept before the core asks the application for a snapshot.
    pub max_retained_log: u64,
    /// Seed of the replica's only source of randomness (election jitter).
    pub seed: u64,
    /// This replica lost its durable state and rejoins an existing cluster: with empty storage it
    /// does not vote until it has learned, from a majority of the others, every ballot it may
    /// have promised and every slot it may have accepted (see [`Replica`](super::Replica)). Never set it for the
    /// first start of a new cluster.
    pub rejoin: bool,
}

impl Config {
    /// Defaults for replica `id` of `nodes` in `mode`.
    pub fn new(id: NodeId, nodes: u32, mode: Mode) -> Config {
        Config {
            id,
            nodes,
            mode,
            heartbeat_ticks: 2,
            election_ticks: 10,
            resend_ticks: 4,
            window: 64,
            max_batch_commands: 4_096,
            max_batch_bytes: 1 << 20,
            max_pending_commands: 65_536,
            max_entries_per_message: 1_024,
            max_retained_log: 100_000,
            seed: u64::from(id),
            rejoin: false,
        }
    }

    /// Checks ranges; the message names the field and the value.
    pub fn validate(&self) -> Result<(), String> {
        let checks: [(bool, String); 8] = [
            (
                (1..=64).contains(&self.nodes),
                format!("nodes must be 1..=64, got {}", self.nodes),
            ),
            (
                self.id < self.nodes,
                format!("id must be below nodes ({}), got {}", self.nodes, self.id),
            ),
            (
                self.heartbeat_ticks >= 1,
                format!("heartbeat_ticks must be >= 1, got {}", self.heartbeat_ticks),
            ),
            (
                self.election_ticks > self.heartbeat_ticks,
                format!(
                    "election_ticks ({}) must exceed heartbeat_ticks ({})",
                    self.election_ticks, self.heartbeat_ticks
                ),
            ),
            (
                self.resend_ticks >= 1,
                format!("resend_ticks must be >= 1, got {}", self.resend_ticks),
            ),
            (
                self.window >= 1,
                format!("window must be >= 1, got {}", self.window),
            ),
            (
                self.max_batch_commands >= 1 && self.max_batch_bytes >= 1,
                "max_batch_commands and max_batch_bytes must be >= 1".to_owned(),
            ),
            (
                self.max_entries_per_message >= 1 && self.max_retained_log >= 1,
                "max_entries_per_message and max_retained_log must be >= 1".to_owned(),
            ),
        ];
        checks
            .into_iter()
            .find(|(ok, _)| !ok)
            .map_or(Ok(()), |(_, msg)| Err(msg))
    }

    pub(super) fn lanes(&self) -> u32 {
        match self.mode {
            Mode::Leader => 1,
            Mode::Leaderless => self.nodes,
        }
    }
}
