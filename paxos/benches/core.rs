//! In-process throughput of the core: 3 replicas, no I/O, messages handed over in memory.
//! `cargo bench -p paxos --bench core`.

use std::collections::VecDeque;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use paxos::core::{Config, Mode, Replica};
use paxos::storage::PersistentState;

const NODES: u32 = 3;
const ROUNDS: usize = 16;

struct Cluster {
    replicas: Vec<Replica>,
    queue: VecDeque<paxos::Envelope>,
    decided_at_0: usize,
}

impl Cluster {
    fn new(mode: Mode, batch: usize) -> Cluster {
        let replicas = (0..NODES)
            .map(|id| {
                let mut cfg = Config::new(id, NODES, mode);
                cfg.max_batch_commands = batch;
                Replica::new(cfg, PersistentState::default())
            })
            .collect();
        let mut c = Cluster {
            replicas,
            queue: VecDeque::new(),
            decided_at_0: 0,
        };
        c.drain_all();
        c
    }

    fn drain(&mut self, id: usize) {
        let ready = self.replicas[id].take_ready();
        if id == 0 {
            self.decided_at_0 += ready
                .decided
                .iter()
                .map(|(_, v)| v.commands().len())
                .sum::<usize>();
        }
        self.queue.extend(ready.early);
        self.queue.extend(ready.messages);
    }

    fn drain_all(&mut self) {
        for id in 0..NODES as usize {
            self.drain(id);
        }
    }

    fn run_until_quiet(&mut self) {
        while let Some(envelope) = self.queue.pop_front() {
            let to = envelope.to as usize;
            self.replicas[to].handle(envelope);
            self.drain(to);
        }
    }
}

fn commands(n: usize) -> Vec<Bytes> {
    (0..n)
        .map(|i| Bytes::from((i as u128).to_le_bytes().to_vec()))
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("decided_commands");
    for batch_size in [16usize, 1_024] {
        let per_iter = (batch_size * ROUNDS) as u64;
        group.throughput(Throughput::Elements(per_iter));
        let batch = commands(batch_size);
        group.bench_function(format!("leader_3_replicas_batch_{batch_size}"), |b| {
            let mut cluster = Cluster::new(Mode::Leader, batch_size);
            b.iter(|| {
                let start = cluster.decided_at_0;
                for _ in 0..ROUNDS {
                    cluster.replicas[0].propose(batch.clone()).unwrap();
                    cluster.drain(0);
                }
                cluster.run_until_quiet();
                assert_eq!(cluster.decided_at_0 - start, batch_size * ROUNDS);
                black_box(cluster.decided_at_0)
            });
        });
        // Every replica proposes a third, as clients spread over all nodes.
        let third = commands(batch_size.div_ceil(NODES as usize));
        let per_iter = (third.len() * NODES as usize * ROUNDS) as u64;
        group.throughput(Throughput::Elements(per_iter));
        group.bench_function(format!("leaderless_3_replicas_batch_{batch_size}"), |b| {
            let mut cluster = Cluster::new(Mode::Leaderless, third.len());
            b.iter(|| {
                let start = cluster.decided_at_0;
                for _ in 0..ROUNDS {
                    for id in 0..NODES as usize {
                        cluster.replicas[id].propose(third.clone()).unwrap();
                        cluster.drain(id);
                    }
                }
                cluster.run_until_quiet();
                assert_eq!(cluster.decided_at_0 - start, per_iter as usize);
                black_box(cluster.decided_at_0)
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
