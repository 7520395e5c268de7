//! The queen's Prometheus metrics: what an operator graphs and alerts on.

use contract::NodeKind;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HeartbeatLabels {
    /// hive | worker
    pub kind: &'static str,
    /// accepted | stale | rejected
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    pub kind: &'static str,
    pub liveness: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub kind: &'static str,
    pub event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    /// done | rejected | rerun | worker_failed | worker_unreachable | no_worker | refused_shutdown
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// placed | orphaned | pending | retired
    pub decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    /// snapshots | commands
    pub stream: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// applied | rejected
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: &'static str,
}

#[derive(Clone)]
pub struct Metrics {
    pub phase_seconds: Family<PhaseLabels, Histogram>,
    pub ack_failures: Family<PhaseLabels, Counter>,
    pub jobs: Family<JobLabels, Counter>,
    pub heartbeats: Family<HeartbeatLabels, Counter>,
    pub ingest_seconds: Family<KindLabels, Histogram>,
    /// The hive and worker series of `ingest_seconds`, looked up once rather than on every
    /// heartbeat.
    ingest_by_kind: [Histogram; 2],
    pub sse_bytes: Family<StreamLabels, Counter>,
    pub config_reloads: Family<OutcomeLabels, Counter>,
    pub nodes: Family<NodeLabels, Gauge>,
    pub events: Family<EventLabels, Counter>,
    pub sse_clients: Gauge,
    pub snapshot_build_seconds: Histogram,
    pub snapshot_bytes: Gauge,
    /// 1 while this queen leads (always, alone), 0 while it follows.
    pub leader: Gauge,
    /// Times this queen became the leader.
    pub elected: Counter,
    /// Time the queen could not hear its nodes (the listening clock's stalls).
    pub deaf_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    pub deaf_stalls: Counter,
    /// Clients of the whole snapshot on the stream now, and those turned away past the
    /// byte budget.
    pub full_stream_clients: Gauge,
    pub streams_shed: Counter,
}

impl Metrics {
    /// Registers every metric; `decisions` is the orchestrator's own counter family.
    pub fn register(registry: &mut Registry, decisions: Family<DecisionLabels, Counter>) -> Self {
        let ingest_seconds: Family<KindLabels, Histogram> =
            // 50 µs to about 3 s: an ingest is normally well under a millisecond.
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.00005, 3.0, 11)));
        let ingest_by_kind = [NodeKind::Hive, NodeKind::Worker]
            .map(|kind| ingest_seconds.get_or_create(&KindLabels { kind: kind.as_str() }).clone());
        let m = Self {
            phase_seconds: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.01, 2.0, 14))),
            ack_failures: Family::default(),
            jobs: Family::default(),
            heartbeats: Family::default(),
            ingest_seconds,
            ingest_by_kind,
            sse_bytes: Family::default(),
            config_reloads: Family::default(),
            nodes: Family::default(),
            events: Family::default(),
            sse_clients: Gauge::default(),
            snapshot_build_seconds: Histogram::new(exponential_buckets(0.0001, 4.0, 10)),
            snapshot_bytes: Gauge::default(),
            leader: Gauge::default(),
            elected: Counter::default(),
            deaf_seconds: Counter::default(),
            deaf_stalls: Counter::default(),
            full_stream_clients: Gauge::default(),
            streams_shed: Counter::default(),
        };
        registry.register(
            "apiary_heartbeats_received",
            "Heartbeats received, by node kind and outcome",
            m.heartbeats.clone(),
        );
        registry.register("apiary_nodes", "Known nodes by kind and liveness, as of the last snapshot", m.nodes.clone());
        registry.register(
            "apiary_heartbeat_ingest_seconds",
            "Time from a heartbeat request's arrival to its answer, by node kind",
            m.ingest_seconds.clone(),
        );
        registry.register("apiary_liveness_transitions", "Liveness changes by node kind and event", m.events.clone());
        registry.register("apiary_sse_bytes_sent", "Bytes of SSE frames sent, by stream", m.sse_bytes.clone());
        registry.register(
            "apiary_config_reloads",
            "Config file reloads, by outcome (a rejected file leaves the running config as it was)",
            m.config_reloads.clone(),
        );
        registry.register(
            "apiary_shutdown_phase_seconds",
            "Duration of cluster shutdown phases",
            m.phase_seconds.clone(),
        );
        registry.register(
            "apiary_shutdown_ack_failures",
            "Hives that failed or did not ACK a shutdown phase",
            m.ack_failures.clone(),
        );
        registry.register("apiary_placement_decisions", "Peer placement decisions, by decision", decisions);
        registry.register("apiary_jobs_routed", "Jobs routed through the queen, by outcome", m.jobs.clone());
        registry.register("apiary_sse_clients", "Clients connected to the heartbeat stream", m.sse_clients.clone());
        registry.register(
            "apiary_snapshot_build_seconds",
            "Time to build and serialize one cluster snapshot",
            m.snapshot_build_seconds.clone(),
        );
        registry.register("apiary_snapshot_bytes", "Size of the last serialized snapshot", m.snapshot_bytes.clone());
        registry.register(
            "apiary_leader",
            "1 while this queen leads the cluster, 0 while it follows",
            m.leader.clone(),
        );
        registry.register("apiary_elected", "Times this queen was elected leader", m.elected.clone());
        registry.register(
            "apiary_queen_deaf_seconds",
            "Time this queen could not hear its nodes (paused or starved); node deadlines were extended by it",
            m.deaf_seconds.clone(),
        );
        registry.register(
            "apiary_full_stream_clients",
            "Clients of the whole snapshot on the stream (not delta, not summary)",
            m.full_stream_clients.clone(),
        );
        registry.register(
            "apiary_stream_clients_shed",
            "Full-snapshot stream clients turned away past --max-full-stream-bytes (told to read ?delta=true)",
            m.streams_shed.clone(),
        );
        registry.register(
            "apiary_queen_deaf_stalls",
            "Stalls of this queen past the probe's allowance",
            m.deaf_stalls.clone(),
        );
        m
    }

    /// The ingest-latency histogram of hives or of workers.
    pub fn ingest(&self, kind: NodeKind) -> &Histogram {
        &self.ingest_by_kind[usize::from(kind == NodeKind::Worker)]
    }
}

/// Counts an SSE client while it is connected, however its stream ends.
pub struct ClientGuard(Gauge);

impl ClientGuard {
    pub fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
