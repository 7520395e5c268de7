//! Upsert throughput of the registry, next to a bare `DashMap::insert` of the same
//! payloads as the baseline (the cost floor of any sharded map), measured in one run.
//!
//! `cargo bench -p heartbeat-registry`

use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use dashmap::DashMap;
use heartbeat_registry::{HeartbeatPayload, HeartbeatRegistry, Thresholds};

#[derive(Clone)]
struct Beat {
    id: u64,
    seq: u64,
}

impl HeartbeatPayload for Beat {
    type Id = u64;
    fn id(&self) -> &u64 {
        &self.id
    }
    fn epoch(&self) -> u64 {
        1
    }
    fn seq(&self) -> u64 {
        self.seq
    }
    fn accepts_work(&self) -> bool {
        true
    }
    fn is_final(&self) -> bool {
        false
    }
}

const NODES: u64 = 100_000;

fn single_thread(c: &mut Criterion) {
    let mut group = c.benchmark_group("upsert_1_thread");
    group.throughput(Throughput::Elements(NODES));
    let thresholds = Thresholds::for_interval(Duration::from_secs(10), None).expect("valid");

    let registry = HeartbeatRegistry::new(thresholds.clone());
    let mut seq = 0;
    group.bench_function(BenchmarkId::new("registry", NODES), |b| {
        b.iter(|| {
            seq += 1;
            for id in 0..NODES {
                registry.upsert(Beat { id, seq });
            }
        })
    });

    let baseline: DashMap<u64, Beat> = DashMap::new();
    let mut seq = 0;
    group.bench_function(BenchmarkId::new("dashmap_insert_baseline", NODES), |b| {
        b.iter(|| {
            seq += 1;
            for id in 0..NODES {
                baseline.insert(id, Beat { id, seq });
            }
        })
    });
    group.finish();
}

fn many_threads(c: &mut Criterion) {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2) as u64;
    let mut group = c.benchmark_group(format!("upsert_{threads}_threads"));
    group.throughput(Throughput::Elements(NODES));
    let registry =
        Arc::new(HeartbeatRegistry::new(Thresholds::for_interval(Duration::from_secs(10), None).expect("valid")));
    let mut seq = 0;
    group.bench_function(BenchmarkId::new("registry", NODES), |b| {
        b.iter(|| {
            seq += 1;
            std::thread::scope(|s| {
                for t in 0..threads {
                    let registry = &registry;
                    s.spawn(move || {
                        for id in (0..NODES).filter(|id| id % threads == t) {
                            registry.upsert(Beat { id, seq });
                        }
                    });
                }
            });
        })
    });
    group.finish();
}

criterion_group!(benches, single_thread, many_threads);
criterion_main!(benches);
