//! The per-tick cost of a 10 000-hive, 100 000-worker snapshot, piece by piece: serializing
//! it whole, the diff to the next one, serializing that delta, and applying it — next to
//! the baseline of serializing the same number of node ids alone (the floor of any JSON
//! that names every node), measured in one run.
//!
//! `cargo bench -p contract --features openapi`

use std::collections::BTreeMap;

use contract::{
    Capacity, Epoch, HiveStatus, HiveSummary, LoadAverage, NodeId, Resources, Snapshot, WorkerStatus, WorkerSummary,
    ago_ms,
};
use criterion::{Criterion, criterion_group, criterion_main};
use time::OffsetDateTime;

const HIVES: usize = 10_000;
const WORKERS_PER_HIVE: usize = 10;

fn id(s: String) -> NodeId {
    NodeId::new(s).expect("valid id")
}

/// A snapshot at `at_s` seconds in which nodes with `index % 2 == parity` have just beaten.
fn snapshot(seq: u64, at_s: i64, parity: usize) -> Snapshot {
    let timestamp = OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(at_s);
    let seen = |i: usize| if i % 2 == parity { timestamp } else { timestamp - time::Duration::seconds(5) };
    let hives: Vec<HiveSummary> = (0..HIVES)
        .map(|h| HiveSummary {
            id: id(format!("hive-{h:05}")),
            liveness: contract::Liveness::Online,
            eligible: true,
            available: true,
            flapping: false,
            status: HiveStatus::Ready,
            epoch: Epoch(1),
            last_seen: seen(h),
            last_seen_ago_ms: ago_ms(timestamp, seen(h)),
            address: "http://10.0.0.1:7000".into(),
            hostname: format!("hive-{h:05}"),
            version: "0.1.0".into(),
            resources: Resources {
                cpu_percent: (h % 100) as f32,
                memory_used_bytes: 4 << 30,
                memory_total_bytes: 16 << 30,
                disk_used_bytes: 100 << 30,
                disk_total_bytes: 500 << 30,
                load_average: LoadAverage { one: 0.5, five: 0.5, fifteen: 0.5 },
            },
            capacity: Capacity { max_workers: 20, running_workers: WORKERS_PER_HIVE as u32, ..Default::default() },
            labels: BTreeMap::new(),
            services: vec![],
            workers: vec![],
        })
        .collect();
    let workers: Vec<WorkerSummary> = (0..HIVES * WORKERS_PER_HIVE)
        .map(|w| WorkerSummary {
            id: id(format!("worker-{w:06}")),
            hive_id: id(format!("hive-{:05}", w / WORKERS_PER_HIVE)),
            liveness: contract::Liveness::Online,
            available: true,
            flapping: false,
            status: WorkerStatus::Ready,
            epoch: Epoch(1),
            last_seen: seen(w),
            last_seen_ago_ms: ago_ms(timestamp, seen(w)),
            version: "0.1.0".into(),
            kind: "reference".into(),
            address: "http://10.0.0.1:7001".into(),
            in_flight: 0,
            max_concurrent: 4,
        })
        .collect();
    Snapshot {
        timestamp,
        workers_online: workers.len(),
        workers_available: workers.len(),
        hives_online: hives.len(),
        hives_available: hives.len(),
        worker_ids: workers.iter().map(|w| w.id.clone()).collect(),
        hive_ids: hives.iter().map(|h| h.id.clone()).collect(),
        seq,
        hives_total: hives.len(),
        workers_total: workers.len(),
        jobs_in_flight: 0,
        hives,
        workers,
        events: vec![],
        deployments: vec![],
        placement_brake: false,
        warnings: Vec::new(),
        shutdown: None,
        drains: vec![],
    }
}

fn per_tick(c: &mut Criterion) {
    let a = snapshot(1, 100, 0);
    let b = snapshot(2, 105, 1);
    let mut group = c.benchmark_group("snapshot_110k_nodes");
    group.sample_size(10);
    let ids: Vec<&NodeId> = a.hives.iter().map(|h| &h.id).chain(a.workers.iter().map(|w| &w.id)).collect();
    group.bench_function("baseline_serialize_ids_only", |bench| bench.iter(|| serde_json::to_string(&ids)));
    group.bench_function("serialize_whole", |bench| bench.iter(|| serde_json::to_string(&b)));
    group.bench_function("summary_serialize", |bench| bench.iter(|| serde_json::to_string(&b.summary())));
    group.bench_function("delta_to", |bench| bench.iter(|| a.delta_to(&b)));
    let delta = a.delta_to(&b);
    group.bench_function("delta_serialize", |bench| bench.iter(|| serde_json::to_string(&delta)));
    group.bench_function("apply_delta", |bench| {
        bench.iter(|| {
            let mut s = a.clone();
            s.apply(&delta)
        })
    });
    group.finish();
}

criterion_group!(benches, per_tick);
criterion_main!(benches);
