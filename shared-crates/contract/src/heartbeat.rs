//! Heartbeats from hives and workers, and the queen's answer.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{ContractError, Epoch, NodeId, Seq};

/// What a hive says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum HiveStatus {
    Ready,
    Draining,
    /// Sent in a hive's last heartbeat: it is going away on purpose.
    ShuttingDown,
}

/// What a worker says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum WorkerStatus {
    Starting,
    Ready,
    /// At its maximum number of concurrent jobs.
    Busy,
    Draining,
    /// Sent in a worker's last heartbeat: it is going away on purpose.
    Stopped,
}

/// Load average over 1, 5 and 15 minutes, as the OS reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LoadAverage {
    pub one: f64,
    pub five: f64,
    pub fifteen: f64,
}

/// Real readings from the hive's machine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Resources {
    /// Whole-machine CPU usage, 0–100.
    pub cpu_percent: f32,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    pub disk_used_bytes: u64,
    pub disk_total_bytes: u64,
    pub load_average: LoadAverage,
}

/// How many workers the hive may run and runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Capacity {
    pub max_workers: u32,
    pub running_workers: u32,
    /// CPU the hive offers its replicas, in thousandths of a core (0: not said, so
    /// placement counts slots only).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cpu_millis: u64,
    /// Memory the hive offers its replicas, in bytes (0: not said).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub memory_bytes: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HiveHeartbeat {
    pub id: NodeId,
    pub epoch: Epoch,
    pub seq: Seq,
    /// Where the hive's own HTTP endpoints (health, metrics) answer.
    pub address: String,
    pub hostname: String,
    pub version: String,
    pub status: HiveStatus,
    pub resources: Resources,
    pub capacity: Capacity,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub services: Vec<String>,
    /// The worker processes this hive supervises.
    #[serde(default)]
    pub workers: Vec<crate::SupervisedWorker>,
    /// Sender's wall clock; shown to operators, never used for ordering.
    #[serde(with = "time::serde::rfc3339")]
    pub sent_at: OffsetDateTime,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkerHeartbeat {
    pub id: NodeId,
    pub hive_id: NodeId,
    pub epoch: Epoch,
    pub seq: Seq,
    pub version: String,
    pub status: WorkerStatus,
    /// The kind of service the worker provides; jobs are routed by it.
    pub kind: String,
    /// Base URL where the worker accepts `POST /v1/jobs`.
    pub address: String,
    pub in_flight: u32,
    pub max_concurrent: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub sent_at: OffsetDateTime,
}

/// The queen's answer to a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeartbeatResponse {
    /// Interval the sender should use for its next heartbeat; the queen may stretch it as
    /// the cluster grows to bound its own load.
    pub next_interval_ms: u64,
    /// False when the heartbeat was older than what the queen holds (late or replayed);
    /// it changed nothing.
    pub accepted: bool,
    /// With `accepted` false: the epoch the queen holds for this node. A node that keeps
    /// being told its heartbeats are stale (its clock went back, or someone sent a later
    /// epoch in its name) starts a new epoch after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_epoch: Option<Epoch>,
}

const MAX_TEXT: usize = 256;
const MAX_LABELS: usize = 64;

fn text(field: &'static str, value: &str) -> Result<(), ContractError> {
    if value.len() > MAX_TEXT {
        return Err(ContractError::InvalidField { field, reason: format!("longer than {MAX_TEXT} bytes") });
    }
    if value.chars().any(char::is_control) {
        return Err(ContractError::InvalidField { field, reason: "contains control characters".into() });
    }
    Ok(())
}

fn finite_range(field: &'static str, v: f64, max: f64) -> Result<(), ContractError> {
    if !v.is_finite() || v < 0.0 || v > max {
        return Err(ContractError::InvalidField { field, reason: format!("must be within 0..={max}") });
    }
    Ok(())
}

fn used_le_total(field: &'static str, used: u64, total: u64) -> Result<(), ContractError> {
    if used > total {
        return Err(ContractError::InvalidField { field, reason: "used exceeds total".into() });
    }
    Ok(())
}

impl HiveHeartbeat {
    /// Checks what serde cannot: ranges, lengths, consistency.
    pub fn validate(&self) -> Result<(), ContractError> {
        text("address", &self.address)?;
        text("hostname", &self.hostname)?;
        text("version", &self.version)?;
        let r = &self.resources;
        finite_range("resources.cpu_percent", f64::from(r.cpu_percent), 100.0)?;
        used_le_total("resources.memory_used_bytes", r.memory_used_bytes, r.memory_total_bytes)?;
        used_le_total("resources.disk_used_bytes", r.disk_used_bytes, r.disk_total_bytes)?;
        for v in [r.load_average.one, r.load_average.five, r.load_average.fifteen] {
            finite_range("resources.load_average", v, 1.0e6)?;
        }
        if self.labels.len() > MAX_LABELS || self.services.len() > MAX_LABELS {
            return Err(ContractError::InvalidField {
                field: "labels",
                reason: format!("at most {MAX_LABELS} labels and {MAX_LABELS} services"),
            });
        }
        for (k, v) in &self.labels {
            text("labels", k)?;
            text("labels", v)?;
        }
        for s in &self.services {
            text("services", s)?;
        }
        // Placement trusts it: a hive claiming millions of slots would draw every replica.
        if self.capacity.max_workers > crate::MAX_REPLICAS {
            return Err(ContractError::InvalidField {
                field: "capacity.max_workers",
                reason: format!("at most {}", crate::MAX_REPLICAS),
            });
        }
        if self.workers.len() > 10_000 {
            return Err(ContractError::InvalidField { field: "workers", reason: "at most 10000".into() });
        }
        for w in &self.workers {
            text("workers.last_exit", &w.last_exit)?;
            text("workers.probe", &w.probe)?;
        }
        Ok(())
    }
}

impl WorkerHeartbeat {
    /// Checks what serde cannot: ranges, lengths, consistency.
    pub fn validate(&self) -> Result<(), ContractError> {
        text("version", &self.version)?;
        text("kind", &self.kind)?;
        text("address", &self.address)?;
        if self.max_concurrent == 0 {
            return Err(ContractError::InvalidField { field: "max_concurrent", reason: "must be at least 1".into() });
        }
        if self.in_flight > self.max_concurrent {
            return Err(ContractError::InvalidField { field: "in_flight", reason: "exceeds max_concurrent".into() });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hive() -> HiveHeartbeat {
        HiveHeartbeat {
            id: NodeId::new("h1").expect("valid"),
            epoch: Epoch(1),
            seq: Seq(1),
            address: "http://127.0.0.1:1".into(),
            hostname: "box".into(),
            version: "0.1.0".into(),
            status: HiveStatus::Ready,
            resources: Resources {
                cpu_percent: 12.5,
                memory_used_bytes: 1,
                memory_total_bytes: 2,
                ..Default::default()
            },
            capacity: Capacity { max_workers: 4, running_workers: 0, ..Default::default() },
            labels: BTreeMap::new(),
            services: vec![],
            workers: vec![],
            sent_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn round_trips_with_rfc3339_timestamps() {
        let hb = hive();
        let json = serde_json::to_string(&hb).expect("serialize");
        assert!(json.contains("\"sent_at\":\"1970-01-01T00:00:00Z\""), "{json}");
        assert!(json.contains("\"status\":\"ready\""), "{json}");
        let back: HiveHeartbeat = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, hb);
    }

    #[test]
    fn validation_catches_nonsense() {
        assert!(hive().validate().is_ok());
        let mut hb = hive();
        hb.resources.cpu_percent = f32::NAN;
        assert!(hb.validate().is_err());
        let mut hb = hive();
        hb.resources.memory_used_bytes = 3;
        assert!(hb.validate().is_err());
        let mut hb = hive();
        hb.hostname = "a\u{0}b".into();
        assert!(hb.validate().is_err());
        let mut hb = hive();
        hb.version = "v".repeat(300);
        assert!(hb.validate().is_err());
        let mut hb = hive();
        hb.capacity.max_workers = u32::MAX;
        assert!(hb.validate().is_err());
    }
}
