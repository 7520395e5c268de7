//! Turning registry entries into the contract's summaries and events.

use std::time::SystemTime;

use contract::{EventKind, HiveHeartbeat, HiveSummary, Liveness, NodeEvent, NodeKind, WorkerHeartbeat, WorkerSummary};
use heartbeat_registry::{self as registry, LivenessEvent, NodeRef, NodeView};
use time::OffsetDateTime;

pub fn liveness(l: registry::Liveness) -> Liveness {
    match l {
        registry::Liveness::Online => Liveness::Online,
        registry::Liveness::Suspect => Liveness::Suspect,
        registry::Liveness::Offline => Liveness::Offline,
        registry::Liveness::Stopped => Liveness::Stopped,
    }
}

pub fn event_kind(k: registry::EventKind) -> EventKind {
    match k {
        registry::EventKind::Joined => EventKind::Joined,
        registry::EventKind::Restarted => EventKind::Restarted,
        registry::EventKind::Suspect => EventKind::Suspect,
        registry::EventKind::Offline => EventKind::Offline,
        registry::EventKind::Recovered => EventKind::Recovered,
        registry::EventKind::Stopped => EventKind::Stopped,
        registry::EventKind::Removed => EventKind::Removed,
        registry::EventKind::Flapping => EventKind::Flapping,
        registry::EventKind::Steady => EventKind::Steady,
    }
}

/// The final cluster state PERSIST writes next to the store: who ran what, how each phase
/// ended, readable without any Apiary tool.
#[derive(serde::Serialize)]
pub struct FinalState {
    #[serde(with = "time::serde::rfc3339")]
    pub written_at: OffsetDateTime,
    pub deployments: Vec<contract::DeploymentStatus>,
    pub hives: Vec<HiveSummary>,
    pub shutdown: Option<contract::ShutdownState>,
}

fn wall(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(t)
}

pub fn node_event(kind: NodeKind, e: &LivenessEvent<contract::NodeId>) -> NodeEvent {
    NodeEvent {
        seq: e.seq,
        at: wall(e.at),
        node: kind,
        id: e.id.clone(),
        kind: event_kind(e.kind),
        liveness: liveness(e.liveness),
        epoch: Some(e.epoch),
        reason: e.reason.clone(),
    }
}

pub fn hive(n: NodeRef<'_, HiveHeartbeat>) -> HiveSummary {
    let p = n.payload;
    HiveSummary {
        id: p.id.clone(),
        liveness: liveness(n.liveness),
        // Known to the orchestrator, not the registry; callers that have it fill it in.
        eligible: true,
        available: n.available,
        flapping: n.flapping,
        status: p.status,
        epoch: p.epoch,
        last_seen: wall(n.last_seen),
        last_seen_ago_ms: n.silent_for.as_millis() as u64,
        address: p.address.clone(),
        hostname: p.hostname.clone(),
        version: p.version.clone(),
        resources: p.resources,
        capacity: p.capacity,
        labels: p.labels.clone(),
        services: p.services.clone(),
        workers: p.workers.clone(),
    }
}

pub fn worker(n: NodeRef<'_, WorkerHeartbeat>) -> WorkerSummary {
    let p = n.payload;
    WorkerSummary {
        id: p.id.clone(),
        hive_id: p.hive_id.clone(),
        liveness: liveness(n.liveness),
        available: n.available,
        flapping: n.flapping,
        status: p.status,
        epoch: p.epoch,
        last_seen: wall(n.last_seen),
        last_seen_ago_ms: n.silent_for.as_millis() as u64,
        version: p.version.clone(),
        kind: p.kind.clone(),
        address: p.address.clone(),
        in_flight: p.in_flight,
        max_concurrent: p.max_concurrent,
    }
}

/// Borrowed view of an owned one, so single-node endpoints share the converters above.
pub fn as_ref<T>(v: &NodeView<T>) -> NodeRef<'_, T> {
    NodeRef {
        payload: &v.payload,
        liveness: v.liveness,
        available: v.available,
        flapping: v.flapping,
        last_seen: v.last_seen,
        silent_for: v.silent_for,
    }
}
