//! The wire contract of Apiary, versioned under `/v1`.
//!
//! Every type that crosses a process boundary lives here and nowhere else, so the queen,
//! the agents and the wasm dashboard cannot disagree about a field. The crate depends on
//! serde and time only (plus the registry trait behind the `registry` feature), which keeps
//! it compilable for `wasm32-unknown-unknown`.

mod audit;
pub mod cli;
mod deploy;
mod error;
pub mod examples;
mod health;
mod heartbeat;
mod ids;
mod jobs;
mod logs;
mod names;
#[cfg(feature = "registry")]
mod registry_impl;
mod shutdown;
mod snapshot;

pub use audit::{AuditEntry, AuditLog};
pub use deploy::{
    Assignment, AssignmentState, ClusterStats, CommandAck, CommandKind, DeploymentHistory, DeploymentPatch,
    DeploymentSpec, DeploymentStatus, DeploymentVersion, DrainRequest, DrainStatus, EligibilityBody, HiveCommand,
    LeaderInfo, LeaderTransfer, LogPolicy, MAX_REPLICAS, PlacementStrategy, Probe, ProbeCheck, Probes, ProcessOptions,
    ProcessState, QueenRef, ResourceRequest, Retiring, RolloutState, RolloutStatus, SECRET, StopSignal, StrategyBody,
    SupervisedWorker, TransferAnswer, UnknownReplicas, UpdatePolicy, WorkerLaunch,
};
pub use error::{ApiErrorBody, ContractError};
pub use health::{CheckReport, ReadinessReport, ReadinessStatus};
pub use heartbeat::{
    Capacity, HeartbeatResponse, HiveHeartbeat, HiveStatus, LoadAverage, Resources, WorkerHeartbeat, WorkerStatus,
};
pub use ids::{Epoch, MAX_ID_LEN, NodeId, Seq};
pub use jobs::{
    IDEMPOTENCY_KEY, IDEMPOTENCY_WINDOW, JobRequest, JobResponse, MAX_IDEMPOTENCY_KEY_LEN, MAX_SHA256_ROUNDS,
    MAX_SLEEP_MS, check_idempotency_key,
};
pub use logs::{LogQuery, LogStream, MAX_TAIL};
pub use shutdown::{
    AckStatus, HiveProgress, Phase, PhaseOrder, PhaseReport, PhaseStatus, ShutdownAnswer, ShutdownPlan,
    ShutdownRequest, ShutdownState, ShutdownStatus,
};
pub use snapshot::{
    DeltaGap, DeploymentSummary, EventKind, HiveSummary, Liveness, NodeEvent, NodeKind, Snapshot, SnapshotDelta,
    StreamDetail, WorkerSummary, ago_ms,
};

/// Where each endpoint lives, so clients and server cannot drift apart.
pub mod paths {
    pub const HIVE_HEARTBEAT: &str = "/v1/hive-heartbeat";
    pub const WORKER_HEARTBEAT: &str = "/v1/worker-heartbeat";
    pub const HEARTBEAT_STREAM: &str = "/v1/heartbeats/stream";
    pub const SNAPSHOT: &str = "/v1/snapshot";
    pub const HIVES: &str = "/v1/hives";
    pub const WORKERS: &str = "/v1/workers";
    pub const JOBS: &str = "/v1/jobs";
    pub const DEPLOYMENTS: &str = "/v1/deployments";
    pub const ASSIGNMENTS: &str = "/v1/assignments";
    /// A replica's output at the queen.
    pub const REPLICA_LOGS: &str = "/v1/replicas/{name}/logs";
    /// The same at the replica's hive (its own listener), which the queen asks.
    pub const HIVE_LOGS: &str = "/v1/logs/{replica}";
    pub const STRATEGY: &str = "/v1/placement/strategy";
    pub const CLUSTER_SHUTDOWN: &str = "/v1/cluster/shutdown";
    pub const CLUSTER_STATS: &str = "/v1/cluster/stats";
    pub const OPENAPI: &str = "/v1/openapi.json";
    pub const CLUSTER_LEADER: &str = "/v1/cluster/leader";
    pub const CLUSTER_LEADER_TRANSFER: &str = "/v1/cluster/leader/transfer";
    pub const AUDIT: &str = "/v1/audit";
}

/// Largest request body any Apiary endpoint accepts; a heartbeat is well under 4 KiB.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
