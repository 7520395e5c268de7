//! The queen's durable state — deployments, assignments, the placement strategy — behind
//! a small trait: the embedded file (`redb`, the default), memory (`memory`, tests), or
//! etcd for replicas (`peer::store`).
//!
//! The default backend is redb: an embedded, pure-Rust key-value store with ACID write
//! transactions and copy-on-write commits, so a crash mid-write leaves the last committed
//! state intact (no torn writes), with no server to run and no C to build. Values are the
//! contract's JSON, so the file stays readable by any tool that speaks redb.

mod memory;
mod redb;
mod watched;

use std::collections::BTreeMap;

use contract::{Assignment, NodeId, PlacementStrategy};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub use memory::MemoryStore;
pub use redb::RedbStore;
pub use watched::{Watched, WriteFailure};

/// A deployment as stored: the operator's spec and when it was made, its version, the
/// specs of the versions before it (instances of them may still run during a rollout),
/// and its rollout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentRecord {
    pub spec: contract::DeploymentSpec,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The version `spec` is (0: the first).
    #[serde(default)]
    pub version: u64,
    /// Earlier versions' specs, newest last, at most [`VERSIONS_KEPT`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub older: BTreeMap<u64, contract::DeploymentSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutRecord>,
}

/// Earlier versions a deployment keeps (for instances still running them and for undo).
pub const VERSIONS_KEPT: usize = 10;

impl DeploymentRecord {
    pub fn new(spec: contract::DeploymentSpec, created_at: OffsetDateTime) -> Self {
        Self { spec, created_at, version: 0, older: BTreeMap::new(), rollout: None }
    }

    /// The spec of `version`: the current one, or an earlier one still kept.
    pub fn spec_of(&self, version: u64) -> &contract::DeploymentSpec {
        if version == self.version { &self.spec } else { self.older.get(&version).unwrap_or(&self.spec) }
    }

    /// Makes `next` the current spec as a new version and starts rolling it out.
    pub fn roll_to(&mut self, next: contract::DeploymentSpec, now: OffsetDateTime) {
        let from = self.version;
        let to = self.older.keys().copied().chain([self.version]).max().unwrap_or(0) + 1;
        let previous = std::mem::replace(&mut self.spec, next);
        self.older.insert(from, previous);
        while self.older.len() > VERSIONS_KEPT {
            self.older.pop_first();
        }
        self.version = to;
        self.rollout = Some(RolloutRecord::new(from, to, now));
    }
}

/// A rollout as stored, so the next leader carries it on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutRecord {
    pub from: u64,
    pub to: u64,
    pub state: contract::RolloutState,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// Slot → when its new instance was first seen available (healthy since).
    #[serde(default)]
    pub healthy_at: BTreeMap<u32, OffsetDateTime>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

impl RolloutRecord {
    pub fn new(from: u64, to: u64, now: OffsetDateTime) -> Self {
        Self {
            from,
            to,
            state: contract::RolloutState::Running,
            started_at: now,
            healthy_at: BTreeMap::new(),
            reason: String::new(),
        }
    }
}

/// One hive's drain as stored, so the next leader carries it on (or shows how it ended).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainRecord {
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// Wall-clock: the only clock two queens share.
    #[serde(with = "time::serde::rfc3339")]
    pub deadline: OffsetDateTime,
    pub moved: std::collections::BTreeSet<NodeId>,
    pub cancelled: bool,
    pub done: bool,
    pub notes: Vec<String>,
    /// For a hive's own drain on its way down: the epoch of the process that asked. It holds
    /// the hive out of placement until a newer process of it heartbeats; it is no cordon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub own_epoch: Option<u64>,
}

impl DrainRecord {
    /// Whether this drain keeps a hive whose process is `epoch` out of placement.
    pub fn holds_out(&self, epoch: u64) -> bool {
        self.own_epoch.is_some_and(|e| epoch <= e)
    }
}

/// Everything the queen keeps across restarts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Persisted {
    pub deployments: BTreeMap<NodeId, DeploymentRecord>,
    /// By worker name.
    pub assignments: BTreeMap<NodeId, Assignment>,
    pub strategy: Option<PlacementStrategy>,
    pub shutdown: Option<contract::ShutdownState>,
    pub ineligible: std::collections::BTreeSet<NodeId>,
    pub drains: BTreeMap<NodeId, DrainRecord>,
}

/// Where a job sent with an idempotency key went, so its retries (through this leader or
/// the next) go to the same worker, which answers them from its first run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRoute {
    pub worker: NodeId,
    pub address: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// Changes applied together or not at all.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    pub put_deployments: Vec<DeploymentRecord>,
    pub delete_deployments: Vec<NodeId>,
    pub put_assignments: Vec<Assignment>,
    pub delete_assignments: Vec<NodeId>,
    pub strategy: Option<PlacementStrategy>,
    pub shutdown: Option<contract::ShutdownState>,
    /// The whole set of ineligible hives, when it changed.
    pub ineligible: Option<std::collections::BTreeSet<NodeId>>,
    /// Every drain, when one changed.
    pub drains: Option<BTreeMap<NodeId, DrainRecord>>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.put_deployments.is_empty()
            && self.delete_deployments.is_empty()
            && self.put_assignments.is_empty()
            && self.delete_assignments.is_empty()
            && self.strategy.is_none()
            && self.shutdown.is_none()
            && self.ineligible.is_none()
            && self.drains.is_none()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Backend(String),
    #[error("store holds a record that does not decode: {0}")]
    Corrupt(String),
    /// A replica that does not lead (any more) may not write.
    #[error("not the leader: {0}")]
    NotLeader(String),
}

/// Writes `bytes` to a new file only its owner can read (0600): what the queen keeps
/// names every command its hives run, and secret environment values.
pub fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

pub trait Store: Send + Sync {
    fn load(&self) -> Result<Persisted, StoreError>;
    /// Applies `batch` atomically and durably before returning.
    fn apply(&self, batch: &Batch) -> Result<(), StoreError>;
    /// Whether the store answers; a readiness check.
    fn ping(&self) -> Result<(), StoreError>;
    /// Whether a write would succeed now, by making one nothing reads; asked only after a
    /// write failed, so readiness recovers by itself when the store does.
    fn probe(&self) -> Result<(), StoreError> {
        self.ping()
    }
    fn job_route(&self, key: &str) -> Result<Option<JobRoute>, StoreError>;
    /// Durable before returning, like [`Store::apply`].
    fn put_job_route(&self, key: &str, route: &JobRoute) -> Result<(), StoreError>;
    /// Removes the routes recorded before `before`; says how many.
    fn forget_job_routes(&self, before: OffsetDateTime) -> Result<usize, StoreError>;
    /// A number larger than any this store gave before: the term a queen that runs alone
    /// numbers its commands in (peers take their leader key's revision instead).
    fn next_term(&self) -> Result<u64, StoreError>;
    /// Appends `entry` durably under the next sequence number, which it returns; the
    /// oldest entries beyond [`AUDIT_KEPT`] are dropped.
    fn append_audit(&self, entry: &contract::AuditEntry) -> Result<u64, StoreError>;
    /// The newest `limit` entries, oldest first.
    fn audit(&self, limit: usize) -> Result<Vec<contract::AuditEntry>, StoreError>;
}

/// Audit entries a store keeps; years of admin calls at any human rate.
pub const AUDIT_KEPT: u64 = 100_000;

impl<S: Store + ?Sized> Store for std::sync::Arc<S> {
    fn load(&self) -> Result<Persisted, StoreError> {
        (**self).load()
    }

    fn apply(&self, batch: &Batch) -> Result<(), StoreError> {
        (**self).apply(batch)
    }

    fn ping(&self) -> Result<(), StoreError> {
        (**self).ping()
    }

    fn probe(&self) -> Result<(), StoreError> {
        (**self).probe()
    }

    fn job_route(&self, key: &str) -> Result<Option<JobRoute>, StoreError> {
        (**self).job_route(key)
    }

    fn put_job_route(&self, key: &str, route: &JobRoute) -> Result<(), StoreError> {
        (**self).put_job_route(key, route)
    }

    fn forget_job_routes(&self, before: OffsetDateTime) -> Result<usize, StoreError> {
        (**self).forget_job_routes(before)
    }

    fn next_term(&self) -> Result<u64, StoreError> {
        (**self).next_term()
    }

    fn append_audit(&self, entry: &contract::AuditEntry) -> Result<u64, StoreError> {
        (**self).append_audit(entry)
    }

    fn audit(&self, limit: usize) -> Result<Vec<contract::AuditEntry>, StoreError> {
        (**self).audit(limit)
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// A store whose writes fail while `fail` is set.
    #[derive(Default)]
    pub struct Flaky {
        inner: MemoryStore,
        pub fail: AtomicBool,
    }

    impl Flaky {
        pub fn set_failing(&self, failing: bool) {
            self.fail.store(failing, Ordering::SeqCst);
        }
    }

    impl Store for Flaky {
        fn load(&self) -> Result<Persisted, StoreError> {
            self.inner.load()
        }
        fn apply(&self, batch: &Batch) -> Result<(), StoreError> {
            if self.fail.load(Ordering::SeqCst) {
                return Err(StoreError::Backend("disk full".into()));
            }
            self.inner.apply(batch)
        }
        fn ping(&self) -> Result<(), StoreError> {
            Ok(())
        }
        fn probe(&self) -> Result<(), StoreError> {
            if self.fail.load(Ordering::SeqCst) { Err(StoreError::Backend("disk full".into())) } else { Ok(()) }
        }
        fn job_route(&self, key: &str) -> Result<Option<JobRoute>, StoreError> {
            self.inner.job_route(key)
        }
        fn put_job_route(&self, key: &str, route: &JobRoute) -> Result<(), StoreError> {
            self.inner.put_job_route(key, route)
        }
        fn forget_job_routes(&self, before: OffsetDateTime) -> Result<usize, StoreError> {
            self.inner.forget_job_routes(before)
        }
        fn next_term(&self) -> Result<u64, StoreError> {
            self.inner.next_term()
        }
        fn append_audit(&self, entry: &contract::AuditEntry) -> Result<u64, StoreError> {
            self.inner.append_audit(entry)
        }
        fn audit(&self, limit: usize) -> Result<Vec<contract::AuditEntry>, StoreError> {
            self.inner.audit(limit)
        }
    }
}
