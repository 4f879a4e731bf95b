//! A bounded exhaustive search of the real core: every interleaving of a few protocol rounds,
//! for a small cluster, checked for agreement and for linearizable read points.
//!
//! The simulator samples schedules at random; the schedules that break a recovery protocol are
//! too specific for it to find (review item 1 needs five chosen rounds in one order). This
//! checker enumerates them instead. Its unit is a *round*: one replica `p` acts (proposes,
//! starts an election, lets its resend timer fire, is wiped and rejoins, or asks for a read
//! point) and then exchanges messages with a chosen subset `S` of the others until nothing more
//! passes between `p` and `S`; every other message of the round is lost. A schedule is a
//! sequence of rounds, each with its own `S`, so partial delivery, late delivery (a resend is
//! the late copy of a lost message) and a wipe between a vote and the votes that complete its
//! quorum are all in the search. States are deduplicated by the replicas' digests.
//!
//! The bound: one command per proposer, one election per proposer, two resend rounds per
//! proposer, one wipe (of the replicas in `wiped`; by symmetry one stands for all replicas that
//! start alike), one read. Ticks other than the resend rounds' are not modelled (no election
//! timeouts: elections are explicit), and crash-restarts with intact storage are the
//! simulator's job.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::hash::{Hash, Hasher};

use bytes::Bytes;

use crate::ballot::{NodeId, Slot};
use crate::core::{Config, Mode, ReadResult, Replica};
use crate::messages::{Envelope, Value};
use crate::storage::PersistentState;

/// What to search.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    /// Replicas.
    pub nodes: u32,
    /// Leader or leaderless.
    pub mode: Mode,
    /// Replicas that propose a command and may start an election (leader mode: the first is
    /// the initial leader).
    pub proposers: Vec<NodeId>,
    /// Replicas that may be wiped (at most one wipe per schedule).
    pub wiped: Vec<NodeId>,
    /// Whether a schedule may contain a `read_index` round (leader mode).
    pub reads: bool,
    /// Most replicas that talk with the actor in one round (`nodes - 1`: no limit). With
    /// `majority - 1` a round reaches at most a bare quorum, which is where quorums can fail
    /// to intersect; a recovery round may still reach a majority of the others.
    pub max_with: u32,
    /// Longest schedule, in rounds.
    pub max_depth: usize,
    /// Give up (an error) beyond this many distinct states.
    pub max_states: usize,
}

/// One round of a schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Round {
    /// `p` proposes its command.
    Propose(NodeId),
    /// `p` starts an election.
    Elect(NodeId),
    /// `p`'s resend timer fires (resends unacknowledged accepts, heartbeats).
    Resend(NodeId),
    /// `p` loses its storage and rejoins.
    Wipe(NodeId),
    /// `p` (the leader) asks for a read point.
    Read(NodeId),
}

/// A round and the replicas that exchange messages with its actor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// What happens.
    pub round: Round,
    /// Bit `i`: replica `i` talks with the actor in this round.
    pub with: u64,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let with: Vec<String> = (0..64)
            .filter(|i| self.with & (1 << i) != 0)
            .map(|i| format!("r{i}"))
            .collect();
        let (what, p) = match self.round {
            Round::Propose(p) => ("proposes", p),
            Round::Elect(p) => ("starts an election", p),
            Round::Resend(p) => ("resends", p),
            Round::Wipe(p) => ("is wiped and rejoins", p),
            Round::Read(p) => ("asks for a read point", p),
        };
        write!(f, "r{p} {what}; messages pass with {{{}}}", with.join(", "))
    }
}

/// What a successful search covered.
#[derive(Clone, Debug, Default)]
pub struct ModelReport {
    /// Distinct states reached.
    pub states: usize,
    /// Rounds executed (transitions, duplicates included).
    pub transitions: usize,
    /// Depth reached.
    pub depth: usize,
}

/// A violated property and the shortest schedule that reaches it.
#[derive(Clone, Debug)]
pub struct Violation {
    /// What broke.
    pub message: String,
    /// The schedule.
    pub schedule: Vec<Step>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.message)?;
        for (i, step) in self.schedule.iter().enumerate() {
            writeln!(f, "  {}. {step}", i + 1)?;
        }
        Ok(())
    }
}

#[derive(Clone)]
struct State {
    replicas: Vec<Replica>,
    /// Per proposer index: proposed, elected, resends used.
    proposed: u64,
    elected: u64,
    resends: Vec<u8>,
    wiped: bool,
    /// The read round's id and the highest slot decided anywhere when it began.
    read: Option<Slot>,
    chosen: BTreeMap<Slot, Value>,
    schedule: Vec<Step>,
}

const RESENDS: u8 = 2;
const READ_ID: u64 = 1;

impl State {
    fn digest(&self) -> u64 {
        let mut h = DefaultHasher::new();
        for r in &self.replicas {
            r.state_digest().hash(&mut h);
        }
        (self.proposed, self.elected, &self.resends, self.wiped).hash(&mut h);
        self.read.hash(&mut h);
        format!("{:?}", self.chosen).hash(&mut h);
        h.finish()
    }

    /// Drains `id`'s outputs, checks them, returns its messages.
    fn collect(&mut self, id: NodeId) -> Result<Vec<Envelope>, String> {
        let ready = self.replicas[id as usize].take_ready();
        for (slot, value) in ready.decided {
            match self.chosen.get(&slot) {
                Some(first) if *first != value => {
                    return Err(format!(
                        "agreement: slot {slot} decided as {first:?} and as {value:?} (at r{id})"
                    ));
                }
                Some(_) => {}
                None => {
                    self.chosen.insert(slot, value);
                }
            }
        }
        for read in ready.reads {
            if let (ReadResult::Ready { index, .. }, Some(bound)) = (read, self.read)
                && index < bound
            {
                return Err(format!(
                    "linearizability: r{id} answered a read at index {index}, but slot {bound} \
                     was decided before the read began"
                ));
            }
        }
        // Early accepts leave first; this model does not crash between them and the sync (the
        // simulator does).
        let mut messages = ready.early;
        messages.extend(ready.messages);
        Ok(messages)
    }

    /// `p` and the replicas of `with` exchange messages until none is left between them;
    /// every other message is lost.
    fn talk(&mut self, p: NodeId, with: u64, first: Vec<Envelope>) -> Result<(), String> {
        let mut queue: VecDeque<Envelope> = first.into();
        let mut budget = 100_000;
        while let Some(e) = queue.pop_front() {
            budget -= 1;
            if budget == 0 {
                return Err(format!("r{p}'s round did not quiesce"));
            }
            let passes = (e.from == p && with & (1 << e.to) != 0)
                || (e.to == p && with & (1 << e.from) != 0);
            if !passes {
                continue;
            }
            let to = e.to;
            self.replicas[to as usize].handle(e);
            queue.extend(self.collect(to)?);
        }
        Ok(())
    }
}

fn replica_config(cfg: &ModelConfig, id: NodeId, rejoin: bool) -> Config {
    let mut c = Config::new(id, cfg.nodes, cfg.mode);
    c.rejoin = rejoin;
    c
}

fn command(p: NodeId) -> Bytes {
    Bytes::from(format!("command of r{p}"))
}

/// Runs one step on a copy of `state`; `None` when the step is not possible there.
fn run(cfg: &ModelConfig, state: &State, step: Step) -> Option<Result<State, String>> {
    let mut s = state.clone();
    let index = |p: NodeId| cfg.proposers.iter().position(|x| *x == p).unwrap_or(0);
    let first = match step.round {
        Round::Propose(p) => {
            let bit = 1 << index(p);
            if s.proposed & bit != 0 {
                return None;
            }
            s.replicas[p as usize].propose(vec![command(p)]).ok()?;
            s.proposed |= bit;
            p
        }
        Round::Elect(p) => {
            let bit = 1 << index(p);
            if s.elected & bit != 0 || s.replicas[p as usize].status().is_leader {
                return None;
            }
            s.replicas[p as usize].start_election();
            s.elected |= bit;
            p
        }
        Round::Resend(p) => {
            let i = index(p);
            if s.resends[i] >= RESENDS {
                return None;
            }
            s.resends[i] += 1;
            for _ in 0..replica_config(cfg, p, false).resend_ticks {
                s.replicas[p as usize].tick();
            }
            p
        }
        Round::Wipe(p) => {
            if s.wiped {
                return None;
            }
            s.wiped = true;
            s.replicas[p as usize] =
                Replica::new(replica_config(cfg, p, true), PersistentState::default());
            p
        }
        Round::Read(p) => {
            if s.read.is_some() {
                return None;
            }
            s.replicas[p as usize].read_index(READ_ID).ok()?;
            s.read = Some(s.chosen.keys().next_back().copied().unwrap_or(0));
            p
        }
    };
    let outcome = s
        .collect(first)
        .and_then(|messages| s.talk(first, step.with, messages));
    s.schedule.push(step);
    Some(outcome.map(|()| s))
}

fn steps(cfg: &ModelConfig) -> Vec<Step> {
    let all = (1u64 << cfg.nodes) - 1;
    let majority_of_others = (cfg.nodes - 1) / 2 + 1;
    let subsets = |p: NodeId, max: u32| {
        let others = all & !(1 << p);
        // Every non-empty subset of the others, up to `max` of them.
        (1..=others)
            .filter(move |m| m & !others == 0 && m.count_ones() <= max)
            .collect::<Vec<u64>>()
    };
    let mut out = Vec::new();
    for &p in &cfg.proposers {
        for with in subsets(p, cfg.max_with) {
            out.push(Step {
                round: Round::Propose(p),
                with,
            });
            out.push(Step {
                round: Round::Elect(p),
                with,
            });
            out.push(Step {
                round: Round::Resend(p),
                with,
            });
            if cfg.reads && cfg.mode == Mode::Leader {
                out.push(Step {
                    round: Round::Read(p),
                    with,
                });
            }
        }
    }
    for &w in &cfg.wiped {
        for with in subsets(w, cfg.max_with.max(majority_of_others)) {
            out.push(Step {
                round: Round::Wipe(w),
                with,
            });
        }
    }
    out
}

/// Searches every schedule of up to `cfg.max_depth` rounds: a depth-first search that skips a
/// state already explored with at least as many rounds left, its first rounds shared out over
/// the machine's cores. When it finds a violation it searches again by iterative deepening, so
/// the schedule reported is a shortest one. A panic inside the core (one of its production
/// assertions) is a violation too.
pub fn check(cfg: &ModelConfig) -> Result<ModelReport, Violation> {
    let mut init = State {
        replicas: (0..cfg.nodes)
            .map(|id| Replica::new(replica_config(cfg, id, false), PersistentState::default()))
            .collect(),
        proposed: 0,
        elected: 0,
        resends: vec![0; cfg.proposers.len()],
        wiped: false,
        read: None,
        chosen: BTreeMap::new(),
        schedule: Vec::new(),
    };
    for id in 0..cfg.nodes {
        // Start-up messages are lost: rounds drive everything.
        init.collect(id).map_err(|message| Violation {
            message,
            schedule: Vec::new(),
        })?;
    }
    let search = Search {
        cfg,
        steps: steps(cfg),
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    let outcomes: Vec<Result<ModelReport, Violation>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|part| {
                let (search, init) = (&search, &init);
                scope.spawn(move || search.run(init, cfg.max_depth, Some((part, threads))))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a search thread panicked"))
            .collect()
    });
    let mut report = ModelReport {
        depth: cfg.max_depth,
        ..ModelReport::default()
    };
    for outcome in outcomes {
        match outcome {
            Ok(part) => {
                report.states += part.states;
                report.transitions += part.transitions;
            }
            Err(violation) if violation.schedule.is_empty() => return Err(violation),
            Err(violation) => {
                // A shortest schedule: deepen one round at a time up to the one found.
                for depth in 1..=violation.schedule.len() {
                    search.run(&init, depth, None)?;
                }
                return Err(violation);
            }
        }
    }
    Ok(report)
}

struct Search<'a> {
    cfg: &'a ModelConfig,
    steps: Vec<Step>,
}

impl Search<'_> {
    /// A depth-first search of `depth` rounds from `init`; with `part = (i, n)`, only of the
    /// first rounds whose index is `i` modulo `n`.
    fn run(
        &self,
        init: &State,
        depth: usize,
        part: Option<(usize, usize)>,
    ) -> Result<ModelReport, Violation> {
        let mut seen = HashMap::from([(init.digest(), depth)]);
        let mut report = ModelReport {
            depth,
            ..ModelReport::default()
        };
        self.dfs(init, depth, part, &mut seen, &mut report)?;
        report.states = seen.len();
        Ok(report)
    }

    fn dfs(
        &self,
        state: &State,
        left: usize,
        part: Option<(usize, usize)>,
        seen: &mut HashMap<u64, usize>,
        report: &mut ModelReport,
    ) -> Result<(), Violation> {
        if left == 0 {
            return Ok(());
        }
        for (i, &step) in self.steps.iter().enumerate() {
            if part.is_some_and(|(part, parts)| i % parts != part) {
                continue;
            }
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run(self.cfg, state, step)
            }))
            .unwrap_or_else(|panic| {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "panic".to_owned());
                Some(Err(format!("assertion in the core: {message}")))
            });
            let Some(outcome) = outcome else { continue };
            report.transitions += 1;
            let next = outcome.map_err(|message| {
                let mut schedule = state.schedule.clone();
                schedule.push(step);
                Violation { message, schedule }
            })?;
            let digest = next.digest();
            if seen.get(&digest).is_some_and(|l| *l >= left - 1) {
                continue;
            }
            seen.insert(digest, left - 1);
            if seen.len() > self.cfg.max_states {
                return Err(Violation {
                    message: format!("gave up: more than {} states", self.cfg.max_states),
                    schedule: Vec::new(),
                });
            }
            self.dfs(&next, left - 1, None, seen, report)?;
        }
        Ok(())
    }
}
