//! The queen's Prometheus metrics: what an operator graphs and alerts on.

use contract::NodeKind;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Every `outcome` of a heartbeat (`apiary_heartbeats_received`).
pub const HEARTBEAT_OUTCOMES: [&str; 9] = [
    "accepted",
    "stale",
    "rejected",
    "rate_limited",
    "refused_claim",
    "token_mismatch",
    "cluster_full",
    "epoch_ahead",
    "new_ids_limited",
];
/// Every `outcome` of a routed job (`apiary_jobs_routed`).
pub const JOB_OUTCOMES: [&str; 7] =
    ["done", "rejected", "rerun", "worker_failed", "worker_unreachable", "no_worker", "refused_shutdown"];
/// Every placement `decision` (`apiary_placement_decisions`).
pub const DECISIONS: [&str; 4] = ["placed", "orphaned", "pending", "retired"];
/// The liveness events a registry records (`apiary_liveness_transitions`).
const LIVENESS_EVENTS: [contract::EventKind; 9] = {
    use contract::EventKind as E;
    [E::Joined, E::Restarted, E::Suspect, E::Offline, E::Recovered, E::Stopped, E::Removed, E::Flapping, E::Steady]
};

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
pub struct ProcessLabels {
    /// running | restarting | stopping | failed
    pub process: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: &'static str,
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
    /// The cluster as of the last snapshot, for alerts: see [`Metrics::export_cluster`].
    pub cluster: ClusterGauges,
}

/// What the alert rules in `deploy/prometheus` ask of the cluster, set from each snapshot
/// this queen publishes (a follower's from the leader's it relays, so every queen answers
/// alike), except the replica processes, which only the leader hears from the hives.
#[derive(Clone, Default)]
pub struct ClusterGauges {
    pub nodes_flapping: Family<KindLabels, Gauge>,
    /// Replica processes by the state their hives report.
    pub replica_processes: Family<ProcessLabels, Gauge>,
    /// Replicas wanted but not placed on any hive.
    pub replicas_pending: Gauge,
    /// Drains by state: running, overdue (past the deadline and not done).
    pub drains: Family<StateLabels, Gauge>,
    /// 1 for the status of the cluster shutdown under way or last ended.
    pub shutdown: Family<StateLabels, Gauge>,
    /// What the dashboard's banner says (a queen not listening, failing store writes, a
    /// clock step, serving without authentication).
    pub warnings: Gauge,
    /// 1 while store writes fail.
    pub store_failing: Gauge,
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
            cluster: ClusterGauges::default(),
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
        let decisions_zeroed = decisions.clone();
        registry.register("apiary_placement_decisions", "Placement decisions, by decision", decisions);
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
        m.start_at_zero(&decisions_zeroed);
        let c = &m.cluster;
        registry.register(
            "apiary_nodes_flapping",
            "Nodes damped for flapping, by kind, as of the last snapshot",
            c.nodes_flapping.clone(),
        );
        registry.register(
            "apiary_replica_processes",
            "Replica processes by the state their hives report (the leader's count; 0 on followers)",
            c.replica_processes.clone(),
        );
        registry.register(
            "apiary_replicas_pending",
            "Replicas wanted but placed on no hive, as of the last snapshot",
            c.replicas_pending.clone(),
        );
        registry.register(
            "apiary_drains",
            "Hive drains by state (running, overdue: past the deadline and not done)",
            c.drains.clone(),
        );
        registry.register(
            "apiary_cluster_shutdown",
            "1 for the status of the cluster shutdown under way or last ended",
            c.shutdown.clone(),
        );
        registry.register(
            "apiary_queen_warnings",
            "Warnings the dashboard's banner shows (deafness, failing store writes, clock step, no authentication)",
            c.warnings.clone(),
        );
        registry.register("apiary_store_write_failing", "1 while writes to the store fail", c.store_failing.clone());
        m
    }

    /// Creates every series whose labels are known in advance, at zero: a family is
    /// exposed only once it has a series, and a rule or graph over a series that does not
    /// exist yet (no job routed, no phase failed) reads as "no data", not as 0.
    fn start_at_zero(&self, decisions: &Family<DecisionLabels, Counter>) {
        for kind in [NodeKind::Hive, NodeKind::Worker].map(NodeKind::as_str) {
            for outcome in HEARTBEAT_OUTCOMES {
                let _ = self.heartbeats.get_or_create(&HeartbeatLabels { kind, outcome });
            }
            for event in LIVENESS_EVENTS {
                let _ = self.events.get_or_create(&EventLabels { kind, event: event.as_str() });
            }
        }
        for outcome in JOB_OUTCOMES {
            let _ = self.jobs.get_or_create(&JobLabels { outcome });
        }
        for decision in DECISIONS {
            let _ = decisions.get_or_create(&DecisionLabels { decision });
        }
        for phase in contract::Phase::ALL.map(contract::Phase::name) {
            let _ = self.ack_failures.get_or_create(&PhaseLabels { phase });
        }
        for stream in ["snapshots", "commands"] {
            let _ = self.sse_bytes.get_or_create(&StreamLabels { stream });
        }
        for outcome in ["applied", "rejected"] {
            let _ = self.config_reloads.get_or_create(&OutcomeLabels { outcome });
        }
    }

    /// The leader's tally of replica processes by [`contract::ProcessState`], in
    /// declaration order (all zero on a follower, which does not hear the hives).
    pub fn export_processes(&self, processes: &[i64; 4]) {
        for (state, n) in contract::ProcessState::ALL.iter().zip(processes) {
            self.cluster.replica_processes.get_or_create(&ProcessLabels { process: state.as_str() }).set(*n);
        }
    }

    /// Nodes damped for flapping, hives then workers: the leader counts them while it
    /// visits the registries for the snapshot, a follower from the snapshot it relays.
    pub fn export_flapping(&self, flapping: [i64; 2]) {
        for (kind, n) in [NodeKind::Hive, NodeKind::Worker].into_iter().zip(flapping) {
            self.cluster.nodes_flapping.get_or_create(&KindLabels { kind: kind.as_str() }).set(n);
        }
    }

    /// Sets the cluster gauges that follow from a snapshot (other than the node tallies,
    /// which the leader takes while it builds it).
    pub fn export_cluster(&self, s: &contract::Snapshot) {
        let c = &self.cluster;
        let pending: u32 = s.deployments.iter().map(|d| d.replicas.saturating_sub(d.placed)).sum();
        c.replicas_pending.set(i64::from(pending));
        let live = s.drains.iter().filter(|d| !d.done && !d.cancelled);
        let (overdue, running): (Vec<_>, Vec<_>) = live.partition(|d| d.deadline < s.timestamp);
        c.drains.get_or_create(&StateLabels { state: "running" }).set(running.len() as i64);
        c.drains.get_or_create(&StateLabels { state: "overdue" }).set(overdue.len() as i64);
        for status in contract::ShutdownStatus::ALL {
            let now = s.shutdown.as_ref().is_some_and(|sd| sd.status == *status);
            c.shutdown.get_or_create(&StateLabels { state: status.as_str() }).set(i64::from(now));
        }
        c.warnings.set(s.warnings.len() as i64);
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
