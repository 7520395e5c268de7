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
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeploymentSummary {
    pub name: NodeId,
    pub replicas: u32,
    pub placed: u32,
    pub running: u32,
}
