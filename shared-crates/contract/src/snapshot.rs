//! The cluster snapshot streamed over SSE, node summaries and liveness events.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{Capacity, Epoch, HiveStatus, NodeId, Resources, WorkerStatus};

/// The queen's view of whether a node is alive, derived from the time since its last
/// heartbeat (not from what the node says about itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Liveness {
    Online,
    /// Late, but not yet long enough to be declared offline.
    Suspect,
    Offline,
    /// Said goodbye in its last heartbeat.
    Stopped,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    Hive,
    Worker,
    /// Events about the cluster as a whole, such as shutdown phases.
    Queen,
}

/// A change of a node's liveness.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Joined,
    Restarted,
    Suspect,
    Offline,
    Recovered,
    Stopped,
    Removed,
    /// Went offline and came back too often; not available until it beats steadily.
    Flapping,
    /// A flapping node has beaten steadily long enough to count again.
    Steady,
    /// A replica (named by its worker id) was given a hive.
    Placed,
    /// A replica's hive has been gone past the orphan grace; it will be placed elsewhere.
    Orphaned,
    /// A replica found no hive with room and matching labels.
    Pending,
    /// A drain stopped the old instance of a replica once its new one was serving.
    Retired,
    /// A cluster shutdown phase began.
    PhaseStarted,
    /// A phase ended: every hive ACKed, or `force` carried on past those that did not.
    PhaseDone,
    /// A phase ended without every ACK; the shutdown stopped there.
    PhaseFailed,
    /// A hive ACKed a phase.
    Acked,
    /// A hive reported it could not do a phase, or did not answer in time.
    AckFailed,
    /// A hive may take new replicas again (back as a new process after draining itself).
    Eligible,
    /// A replica's process could not be started (its hive says why: a missing binary, one
    /// not executable); the hive keeps trying with backoff.
    StartFailed,
    /// A deployment's rollout started, ended, or was reverted (the reason says which).
    Rollout,
}

/// One entry of the event log; `reason` answers "why".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeEvent {
    /// Monotonic per registry and queen run; lets a client skip events it already has.
    pub seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub node: NodeKind,
    pub id: NodeId,
    pub kind: EventKind,
    pub liveness: Liveness,
    /// The node's epoch (process instance) at a liveness event; none for the cluster's
    /// own events (placement, drains). The reason says "new epoch" in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HiveSummary {
    pub id: NodeId,
    pub liveness: Liveness,
    /// May be given new replicas; an operator or a drain turns it off.
    #[serde(default = "yes")]
    pub eligible: bool,
    /// Online, ready, and not damped for flapping: may be given new work.
    pub available: bool,
    pub flapping: bool,
    pub status: HiveStatus,
    pub epoch: Epoch,
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen: OffsetDateTime,
    /// Age of the last heartbeat when this summary was made.
    pub last_seen_ago_ms: u64,
    pub address: String,
    pub hostname: String,
    pub version: String,
    pub resources: Resources,
    pub capacity: Capacity,
    pub labels: BTreeMap<String, String>,
    pub services: Vec<String>,
    /// The worker processes it supervises, as it reported them.
    #[serde(default)]
    pub workers: Vec<crate::SupervisedWorker>,
}

fn yes() -> bool {
    true
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkerSummary {
    pub id: NodeId,
    pub hive_id: NodeId,
    pub liveness: Liveness,
    pub available: bool,
    pub flapping: bool,
    pub status: WorkerStatus,
    pub epoch: Epoch,
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen: OffsetDateTime,
    pub last_seen_ago_ms: u64,
    pub version: String,
    pub kind: String,
    pub address: String,
    pub in_flight: u32,
    pub max_concurrent: u32,
}

/// What `event: heartbeat` carries on `/v1/heartbeats/stream`.
///
/// The first seven fields are the seed contract that existing EventSource clients read;
/// they never change meaning. "Online" counts nodes that are online or suspect (presumed
/// alive); "available" counts nodes that are online, ready and not flapping.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Snapshot {
    #[serde(with = "time::serde::rfc3339")]
    pub timestamp: OffsetDateTime,
    pub workers_online: usize,
    pub workers_available: usize,
    pub hives_online: usize,
    pub hives_available: usize,
    pub worker_ids: Vec<NodeId>,
    pub hive_ids: Vec<NodeId>,
    /// Same value as the SSE `id:` of the event that carried it.
    pub seq: u64,
    pub hives_total: usize,
    pub workers_total: usize,
    pub jobs_in_flight: u64,
    pub hives: Vec<HiveSummary>,
    pub workers: Vec<WorkerSummary>,
    /// The most recent liveness events, newest last; a bounded buffer, so a client that
    /// reconnects recovers the events it missed while away.
    pub events: Vec<NodeEvent>,
    /// Each deployment's replicas: wanted, placed on a hive, and heartbeating.
    #[serde(default)]
    pub deployments: Vec<DeploymentSummary>,
    /// Set while so many hives look dead at once that the queen has stopped re-placing
    /// work: the likelier truth is that the queen is cut off.
    #[serde(default)]
    pub placement_brake: bool,
    /// The cluster shutdown, while one runs or after it ended.
    #[serde(default)]
    pub shutdown: Option<crate::ShutdownState>,
    /// Hive drains running or recently ended.
    #[serde(default)]
    pub drains: Vec<crate::DrainStatus>,
    /// What the queen says about itself that an operator must see: that it serves with
    /// no authentication, for one.
    #[serde(default)]
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeploymentSummary {
    pub name: NodeId,
    pub replicas: u32,
    pub placed: u32,
    pub running: u32,
}

/// How much of the snapshot a stream client wants (`?detail=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum StreamDetail {
    /// Counts, events, deployments, drains and shutdown: no per-node lists.
    Summary,
    /// Everything (the default, and what the seed contract promised).
    #[default]
    Full,
}

/// What `event: delta` carries on `/v1/heartbeats/stream?delta=true`: the changes from
/// the snapshot numbered `base_seq` to the one numbered `seq`.
///
/// A client applies it with [`Snapshot::apply`]; a delta whose `base_seq` is not the seq
/// the client holds means frames were missed, and the client must resync (reconnect: the
/// first frame of a stream is always a full snapshot).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SnapshotDelta {
    pub seq: u64,
    pub base_seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub timestamp: OffsetDateTime,
    pub workers_online: usize,
    pub workers_available: usize,
    pub hives_online: usize,
    pub hives_available: usize,
    pub jobs_in_flight: u64,
    /// Hives new or changed (other than in `last_seen_ago_ms`, which follows from the
    /// timestamp), whole.
    pub hives_changed: Vec<HiveSummary>,
    pub hives_removed: Vec<NodeId>,
    pub workers_changed: Vec<WorkerSummary>,
    pub workers_removed: Vec<NodeId>,
    /// The event log, when it changed.
    pub events: Option<Vec<NodeEvent>>,
    pub deployments: Vec<DeploymentSummary>,
    pub placement_brake: bool,
    pub shutdown: Option<crate::ShutdownState>,
    pub drains: Vec<crate::DrainStatus>,
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// A delta that does not follow the snapshot it was applied to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("delta from {base_seq} does not follow snapshot {held}: resync")]
pub struct DeltaGap {
    pub held: u64,
    pub base_seq: u64,
}

/// Milliseconds from `last_seen` to `at`; what `last_seen_ago_ms` holds in a snapshot.
pub fn ago_ms(at: OffsetDateTime, last_seen: OffsetDateTime) -> u64 {
    (at - last_seen).whole_milliseconds().max(0) as u64
}

/// Merges `changed` into `current` (both sorted by id, as snapshots keep them) and drops
/// `removed`.
fn merge_by_id<T: Clone>(current: &mut Vec<T>, changed: &[T], removed: &[NodeId], id: fn(&T) -> &NodeId) {
    let mut merged = Vec::with_capacity(current.len() + changed.len());
    let old = std::mem::take(current);
    let (mut a, mut b) = (old.into_iter().peekable(), changed.iter().peekable());
    loop {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if id(x) < id(y) => a.next(),
            (Some(x), Some(y)) if id(x) == id(y) => {
                a.next();
                b.next().cloned()
            }
            (_, Some(_)) => b.next().cloned(),
            (Some(_), None) => a.next(),
            (None, None) => break,
        };
        if let Some(item) = next.filter(|i| !removed.contains(id(i))) {
            merged.push(item);
        }
    }
    *current = merged;
}

impl Snapshot {
    /// Brings this snapshot to the one `delta` leads to; exactly that snapshot, as the
    /// queen would have sent it whole.
    pub fn apply(&mut self, delta: &SnapshotDelta) -> Result<(), DeltaGap> {
        if delta.base_seq != self.seq {
            return Err(DeltaGap { held: self.seq, base_seq: delta.base_seq });
        }
        merge_by_id(&mut self.hives, &delta.hives_changed, &delta.hives_removed, |h| &h.id);
        merge_by_id(&mut self.workers, &delta.workers_changed, &delta.workers_removed, |w| &w.id);
        for h in &mut self.hives {
            h.last_seen_ago_ms = ago_ms(delta.timestamp, h.last_seen);
        }
        for w in &mut self.workers {
            w.last_seen_ago_ms = ago_ms(delta.timestamp, w.last_seen);
        }
        self.hive_ids = self.hives.iter().filter(|h| h.liveness.is_up()).map(|h| h.id.clone()).collect();
        self.worker_ids = self.workers.iter().filter(|w| w.liveness.is_up()).map(|w| w.id.clone()).collect();
        self.hives_total = self.hives.len();
        self.workers_total = self.workers.len();
        self.seq = delta.seq;
        self.timestamp = delta.timestamp;
        self.workers_online = delta.workers_online;
        self.workers_available = delta.workers_available;
        self.hives_online = delta.hives_online;
        self.hives_available = delta.hives_available;
        self.jobs_in_flight = delta.jobs_in_flight;
        if let Some(events) = &delta.events {
            self.events = events.clone();
        }
        self.deployments = delta.deployments.clone();
        self.placement_brake = delta.placement_brake;
        self.warnings = delta.warnings.clone();
        self.shutdown = delta.shutdown.clone();
        self.drains = delta.drains.clone();
        Ok(())
    }

    /// The changes from `self` to `next`; `next.apply`-ing the result to `self` gives `next`.
    pub fn delta_to(&self, next: &Snapshot) -> SnapshotDelta {
        fn diff<T: PartialEq + Clone>(
            old: &[T],
            new: &[T],
            id: fn(&T) -> &NodeId,
            same: fn(&T, &T) -> bool,
        ) -> (Vec<T>, Vec<NodeId>) {
            let (mut changed, mut removed) = (Vec::new(), Vec::new());
            let (mut i, mut j) = (0, 0);
            while i < old.len() || j < new.len() {
                match (old.get(i), new.get(j)) {
                    (Some(o), Some(n)) if id(o) == id(n) => {
                        if !same(o, n) {
                            changed.push(n.clone());
                        }
                        i += 1;
                        j += 1;
                    }
                    (Some(o), Some(n)) if id(o) < id(n) => {
                        removed.push(id(o).clone());
                        i += 1;
                    }
                    (Some(o), None) => {
                        removed.push(id(o).clone());
                        i += 1;
                    }
                    (_, Some(n)) => {
                        changed.push(n.clone());
                        j += 1;
                    }
                    (None, None) => break,
                }
            }
            (changed, removed)
        }
        let (hives_changed, hives_removed) = diff(&self.hives, &next.hives, |h| &h.id, same_hive);
        let (workers_changed, workers_removed) = diff(&self.workers, &next.workers, |w| &w.id, same_worker);
        SnapshotDelta {
            seq: next.seq,
            base_seq: self.seq,
            timestamp: next.timestamp,
            workers_online: next.workers_online,
            workers_available: next.workers_available,
            hives_online: next.hives_online,
            hives_available: next.hives_available,
            jobs_in_flight: next.jobs_in_flight,
            hives_changed,
            hives_removed,
            workers_changed,
            workers_removed,
            events: (self.events != next.events).then(|| next.events.clone()),
            deployments: next.deployments.clone(),
            placement_brake: next.placement_brake,
            warnings: next.warnings.clone(),
            shutdown: next.shutdown.clone(),
            drains: next.drains.clone(),
        }
    }

    /// The snapshot without its per-node lists: counts, events, deployments, drains and
    /// shutdown (`?detail=summary`).
    pub fn summary(&self) -> Snapshot {
        Snapshot {
            timestamp: self.timestamp,
            workers_online: self.workers_online,
            workers_available: self.workers_available,
            hives_online: self.hives_online,
            hives_available: self.hives_available,
            worker_ids: Vec::new(),
            hive_ids: Vec::new(),
            seq: self.seq,
            hives_total: self.hives_total,
            workers_total: self.workers_total,
            jobs_in_flight: self.jobs_in_flight,
            hives: Vec::new(),
            workers: Vec::new(),
            events: self.events.clone(),
            deployments: self.deployments.clone(),
            placement_brake: self.placement_brake,
            warnings: self.warnings.clone(),
            shutdown: self.shutdown.clone(),
            drains: self.drains.clone(),
        }
    }
}

/// Equal but for `last_seen_ago_ms`, which follows from the snapshot's timestamp. Written
/// out field by field (the destructuring fails to compile when a field is added) because
/// cloning 100 000 summaries per tick to compare them was the slowest part of a delta.
fn same_hive(a: &HiveSummary, b: &HiveSummary) -> bool {
    let HiveSummary {
        id,
        liveness,
        eligible,
        available,
        flapping,
        status,
        epoch,
        last_seen,
        last_seen_ago_ms: _,
        address,
        hostname,
        version,
        resources,
        capacity,
        labels,
        services,
        workers,
    } = a;
    *id == b.id
        && *liveness == b.liveness
        && *eligible == b.eligible
        && *available == b.available
        && *flapping == b.flapping
        && *status == b.status
        && *epoch == b.epoch
        && *last_seen == b.last_seen
        && *address == b.address
        && *hostname == b.hostname
        && *version == b.version
        && *resources == b.resources
        && *capacity == b.capacity
        && *labels == b.labels
        && *services == b.services
        && *workers == b.workers
}

fn same_worker(a: &WorkerSummary, b: &WorkerSummary) -> bool {
    let WorkerSummary {
        id,
        hive_id,
        liveness,
        available,
        flapping,
        status,
        epoch,
        last_seen,
        last_seen_ago_ms: _,
        version,
        kind,
        address,
        in_flight,
        max_concurrent,
    } = a;
    *id == b.id
        && *hive_id == b.hive_id
        && *liveness == b.liveness
        && *available == b.available
        && *flapping == b.flapping
        && *status == b.status
        && *epoch == b.epoch
        && *last_seen == b.last_seen
        && *version == b.version
        && *kind == b.kind
        && *address == b.address
        && *in_flight == b.in_flight
        && *max_concurrent == b.max_concurrent
}
