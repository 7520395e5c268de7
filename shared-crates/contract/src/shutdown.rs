//! Cluster-wide shutdown: the request, the plan, and the durable state of a running one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::NodeId;

/// The phases, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Queen refuses deployments and jobs; hives start no workers and report draining.
    Gate,
    /// Hives stop their workers: SIGTERM, the drain deadline, SIGKILL.
    Drain,
    /// Hives run their storage-stop hooks.
    Storage,
    /// Queen and hives flush state; the final cluster state is written down.
    Persist,
    /// Hives exit, then the queen. Nobody is left to ACK.
    Infra,
}

impl Phase {
    pub const ALL: [Phase; 5] = [Phase::Gate, Phase::Drain, Phase::Storage, Phase::Persist, Phase::Infra];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Gate => "GATE",
            Phase::Drain => "DRAIN",
            Phase::Storage => "STORAGE",
            Phase::Persist => "PERSIST",
            Phase::Infra => "INFRA",
        }
    }
}

/// `POST /v1/cluster/shutdown`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ShutdownRequest {
    /// Print the plan; change nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// A hive that does not ACK in time is recorded and the sequence goes on. On a
    /// shutdown that is already running, turns force on for it.
    #[serde(default)]
    pub force: bool,
    /// How long workers get between SIGTERM and SIGKILL in DRAIN [default: 30 s].
    #[serde(default)]
    pub drain_deadline_ms: Option<u64>,
    /// How long the queen waits for every ACK of one phase [default: drain deadline + 15 s].
    #[serde(default)]
    pub phase_timeout_ms: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AckStatus {
    Waiting,
    Acked,
    /// The hive answered that it could not do the phase.
    Failed,
    /// No answer before the phase timeout.
    TimedOut,
}

/// One hive's part in one phase.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HiveProgress {
    pub status: AckStatus,
    /// Workers the hive still runs, from its heartbeats.
    pub workers_left: u32,
    /// What the hive reported: workers stopped, killed at the deadline, hook results.
    pub detail: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum PhaseStatus {
    Pending,
    Running,
    Done,
    /// A hive did not ACK in time or failed; the sequence stopped here.
    Failed,
    /// A hive did not ACK in time or failed, and `force` carried on.
    Forced,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PhaseReport {
    pub phase: Phase,
    pub status: PhaseStatus,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub ended_at: Option<OffsetDateTime>,
    /// The hives that were online when the phase began.
    pub hives: BTreeMap<NodeId, HiveProgress>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ShutdownStatus {
    Running,
    Completed,
    Failed,
}

/// A cluster shutdown as it stands; durable, and part of every snapshot while it runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ShutdownState {
    pub status: ShutdownStatus,
    pub force: bool,
    pub drain_deadline_ms: u64,
    pub phase_timeout_ms: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    pub phases: Vec<PhaseReport>,
    /// Why it failed, naming the hives.
    #[serde(default)]
    pub failure: String,
}

impl ShutdownState {
    /// The phase running now (or where it stopped).
    pub fn current(&self) -> Option<&PhaseReport> {
        self.phases.iter().find(|p| matches!(p.status, PhaseStatus::Running | PhaseStatus::Failed))
    }
}

/// What a dry run prints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ShutdownPlan {
    pub phases: Vec<Phase>,
    /// Hive → its workers, as the queen sees them now.
    pub hives: BTreeMap<NodeId, Vec<NodeId>>,
    pub drain_deadline_ms: u64,
    pub phase_timeout_ms: u64,
}

/// The answer to `POST /v1/cluster/shutdown`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ShutdownAnswer {
    Plan(ShutdownPlan),
    Started(ShutdownState),
}

/// What a hive is told to do for a phase, inside its desired state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PhaseOrder {
    pub phase: Phase,
    /// DRAIN: SIGKILL whatever still runs this long after SIGTERM.
    pub deadline_ms: u64,
}
