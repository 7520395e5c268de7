//! The embedded default: one redb file, `<data dir>/queen.redb`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

use contract::NodeId;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{Batch, JobRoute, Persisted, Store, StoreError, backend};

const DEPLOYMENTS: TableDefinition<&str, &str> = TableDefinition::new("deployments");
const ASSIGNMENTS: TableDefinition<&str, &str> = TableDefinition::new("assignments");
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
const JOB_ROUTES: TableDefinition<&str, &str> = TableDefinition::new("job_routes");
const AUDIT: TableDefinition<u64, &str> = TableDefinition::new("audit");

/// Free space below which readiness says the store's disk is full.
const MIN_FREE_BYTES: u64 = 1 << 20;

pub struct RedbStore {
    file: PathBuf,
    /// `None` only while being reopened.
    db: RwLock<Option<Database>>,
    /// A call failed in the backend: redb refuses everything after an I/O error ("close and
    /// re-open"), so the next call reopens the file first. This is how a queen whose disk
    /// filled up recovers by itself once there is room again.
    broken: AtomicBool,
}

impl RedbStore {
    /// Opens (or creates) `<dir>/queen.redb`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| backend(format!("cannot create {}: {e}", dir.display())))?;
        let file = dir.join("queen.redb");
        // A store file that exists but holds nothing lost its contents: starting on it as
        // if new would tell every hive to run nothing.
        if std::fs::metadata(&file).is_ok_and(|m| m.len() == 0) {
            return Err(StoreError::Corrupt(format!(
                "{} is empty: this queen's state is gone; restore it, or move the file away to start with no deployments",
                file.display()
            )));
        }
        let db = Self::open_file(&file)?;
        // The store holds every command the hives run and secret environment values.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| backend(format!("cannot make {} private: {e}", file.display())))?;
        // Create the tables up front so reads never meet a missing table.
        let txn = db.begin_write().map_err(backend)?;
        for table in [DEPLOYMENTS, ASSIGNMENTS, META, JOB_ROUTES] {
            txn.open_table(table).map_err(backend)?;
        }
        txn.open_table(AUDIT).map_err(backend)?;
        txn.commit().map_err(backend)?;
        Ok(Self { file, db: RwLock::new(Some(db)), broken: AtomicBool::new(false) })
    }

    fn open_file(file: &Path) -> Result<Database, StoreError> {
        Database::create(file).map_err(|e| {
            StoreError::Corrupt(format!(
                "{} cannot be opened as a store: {e}; restore it, or move it away to start with no deployments",
                file.display()
            ))
        })
    }

    /// Runs `f` on the database, reopening it first if an earlier call failed in the
    /// backend.
    fn with<T>(&self, f: impl FnOnce(&Database) -> Result<T, StoreError>) -> Result<T, StoreError> {
        if self.broken.load(Ordering::Acquire) {
            let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
            if self.broken.load(Ordering::Acquire) {
                // The old handle holds the file's lock: it goes before the new one opens.
                slot.take();
                *slot = Some(Self::open_file(&self.file)?);
                self.broken.store(false, Ordering::Release);
            }
        }
        let slot = self.db.read().unwrap_or_else(|p| p.into_inner());
        let db = slot.as_ref().ok_or_else(|| backend(format!("{} could not be reopened", self.file.display())))?;
        let out = f(db);
        if matches!(out, Err(StoreError::Backend(_))) {
            self.broken.store(true, Ordering::Release);
        }
        out
    }
}

fn encode<T: Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn read_table<T: for<'de> Deserialize<'de>>(
    txn: &redb::ReadTransaction,
    def: TableDefinition<&str, &str>,
) -> Result<BTreeMap<NodeId, T>, StoreError> {
    let table = txn.open_table(def).map_err(backend)?;
    let mut out = BTreeMap::new();
    for row in table.iter().map_err(backend)? {
        let (k, v) = row.map_err(backend)?;
        let id = NodeId::new(k.value()).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let value = serde_json::from_str(v.value()).map_err(|e| StoreError::Corrupt(format!("{}: {e}", k.value())))?;
        out.insert(id, value);
    }
    Ok(out)
}

impl Store for RedbStore {
    fn load(&self) -> Result<Persisted, StoreError> {
        self.with(|db| {
            let txn = db.begin_read().map_err(backend)?;
            let deployments = read_table(&txn, DEPLOYMENTS)?;
            let assignments = read_table(&txn, ASSIGNMENTS)?;
            let meta = txn.open_table(META).map_err(backend)?;
            let strategy = match meta.get("strategy").map_err(backend)? {
                Some(v) => Some(v.value().parse().map_err(StoreError::Corrupt)?),
                None => None,
            };
            let shutdown = match meta.get("shutdown").map_err(backend)? {
                Some(v) => {
                    Some(serde_json::from_str(v.value()).map_err(|e| StoreError::Corrupt(format!("shutdown: {e}")))?)
                }
                None => None,
            };
            let ineligible = match meta.get("ineligible").map_err(backend)? {
                Some(v) => {
                    serde_json::from_str(v.value()).map_err(|e| StoreError::Corrupt(format!("ineligible: {e}")))?
                }
                None => Default::default(),
            };
            let drains = match meta.get("drains").map_err(backend)? {
                Some(v) => serde_json::from_str(v.value()).map_err(|e| StoreError::Corrupt(format!("drains: {e}")))?,
                None => Default::default(),
            };
            Ok(Persisted { deployments, assignments, strategy, shutdown, ineligible, drains })
        })
    }

    fn apply(&self, batch: &Batch) -> Result<(), StoreError> {
        self.with(|db| {
            if batch.is_empty() {
                return Ok(());
            }
            let txn = db.begin_write().map_err(backend)?;
            {
                let mut deployments = txn.open_table(DEPLOYMENTS).map_err(backend)?;
                for d in &batch.put_deployments {
                    deployments.insert(d.spec.name.as_str(), encode(d)?.as_str()).map_err(backend)?;
                }
                for name in &batch.delete_deployments {
                    deployments.remove(name.as_str()).map_err(backend)?;
                }
                let mut assignments = txn.open_table(ASSIGNMENTS).map_err(backend)?;
                for a in &batch.put_assignments {
                    assignments.insert(a.key().as_str(), encode(a)?.as_str()).map_err(backend)?;
                }
                for w in &batch.delete_assignments {
                    assignments.remove(w.as_str()).map_err(backend)?;
                }
                let mut meta = txn.open_table(META).map_err(backend)?;
                if let Some(s) = batch.strategy {
                    meta.insert("strategy", s.as_str()).map_err(backend)?;
                }
                if let Some(s) = &batch.shutdown {
                    meta.insert("shutdown", encode(s)?.as_str()).map_err(backend)?;
                }
                if let Some(set) = &batch.ineligible {
                    meta.insert("ineligible", encode(set)?.as_str()).map_err(backend)?;
                }
                if let Some(drains) = &batch.drains {
                    meta.insert("drains", encode(drains)?.as_str()).map_err(backend)?;
                }
            }
            txn.commit().map_err(backend)
        })
    }

    fn ping(&self) -> Result<(), StoreError> {
        self.with(|db| db.begin_read().map(|_| ()).map_err(backend))?;
        // A store that cannot grow refuses its next large write; say so before that.
        let dir = self.file.parent().unwrap_or(Path::new("."));
        match nix::sys::statvfs::statvfs(dir) {
            Ok(fs) => {
                let free = fs.blocks_available().saturating_mul(fs.fragment_size());
                if free < MIN_FREE_BYTES {
                    return Err(backend(format!(
                        "the disk holding {} has {free} bytes free: the store cannot grow",
                        self.file.display()
                    )));
                }
                Ok(())
            }
            Err(e) => Err(backend(format!("cannot read the free space of {}: {e}", dir.display()))),
        }
    }

    fn probe(&self) -> Result<(), StoreError> {
        self.with(|db| {
            let txn = db.begin_write().map_err(backend)?;
            txn.open_table(META).map_err(backend)?.insert("probe", "").map_err(backend)?;
            txn.commit().map_err(backend)
        })
    }

    fn job_route(&self, key: &str) -> Result<Option<JobRoute>, StoreError> {
        self.with(|db| {
            let txn = db.begin_read().map_err(backend)?;
            let table = txn.open_table(JOB_ROUTES).map_err(backend)?;
            match table.get(key).map_err(backend)? {
                Some(v) => Ok(Some(
                    serde_json::from_str(v.value()).map_err(|e| StoreError::Corrupt(format!("job {key}: {e}")))?,
                )),
                None => Ok(None),
            }
        })
    }

    fn put_job_route(&self, key: &str, route: &JobRoute) -> Result<(), StoreError> {
        self.with(|db| {
            let txn = db.begin_write().map_err(backend)?;
            txn.open_table(JOB_ROUTES).map_err(backend)?.insert(key, encode(route)?.as_str()).map_err(backend)?;
            txn.commit().map_err(backend)
        })
    }

    fn forget_job_routes(&self, before: OffsetDateTime) -> Result<usize, StoreError> {
        self.with(|db| {
            let txn = db.begin_write().map_err(backend)?;
            let mut table = txn.open_table(JOB_ROUTES).map_err(backend)?;
            // A record that does not decode is dropped too: it could only stop a retry.
            let old = |v: &str| serde_json::from_str::<JobRoute>(v).map_or(true, |r| r.at < before);
            let mut removed = 0;
            for row in table.extract_if(|_, v| old(v)).map_err(backend)? {
                row.map_err(backend)?;
                removed += 1;
            }
            drop(table);
            txn.commit().map_err(backend)?;
            Ok(removed)
        })
    }

    fn next_term(&self) -> Result<u64, StoreError> {
        self.with(|db| {
            let txn = db.begin_write().map_err(backend)?;
            let term = {
                let mut meta = txn.open_table(META).map_err(backend)?;
                let last = match meta.get("term").map_err(backend)? {
                    Some(v) => v.value().parse::<u64>().map_err(|e| StoreError::Corrupt(format!("meta term: {e}")))?,
                    None => 0,
                };
                let term = last + 1;
                meta.insert("term", term.to_string().as_str()).map_err(backend)?;
                term
            };
            txn.commit().map_err(backend)?;
            Ok(term)
        })
    }

    fn append_audit(&self, entry: &contract::AuditEntry) -> Result<u64, StoreError> {
        self.with(|db| {
            let txn = db.begin_write().map_err(backend)?;
            let seq = {
                let mut table = txn.open_table(AUDIT).map_err(backend)?;
                let seq = table.last().map_err(backend)?.map_or(0, |(k, _)| k.value()) + 1;
                table.insert(seq, encode(&contract::AuditEntry { seq, ..entry.clone() })?.as_str()).map_err(backend)?;
                if let Some(drop_below) = seq.checked_sub(super::AUDIT_KEPT) {
                    for row in table.extract_from_if(..=drop_below, |_, _| true).map_err(backend)? {
                        row.map_err(backend)?;
                    }
                }
                seq
            };
            txn.commit().map_err(backend)?;
            Ok(seq)
        })
    }

    fn audit(&self, limit: usize) -> Result<Vec<contract::AuditEntry>, StoreError> {
        self.with(|db| {
            let txn = db.begin_read().map_err(backend)?;
            let table = txn.open_table(AUDIT).map_err(backend)?;
            let mut out = Vec::new();
            for row in table.iter().map_err(backend)?.rev().take(limit) {
                let (k, v) = row.map_err(backend)?;
                out.push(
                    serde_json::from_str(v.value())
                        .map_err(|e| StoreError::Corrupt(format!("audit {}: {e}", k.value())))?,
                );
            }
            out.reverse();
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{DeploymentRecord, DrainRecord, MemoryStore};
    use contract::{Assignment, PlacementStrategy};
    use contract::{AssignmentState, DeploymentSpec};

    fn record(name: &str) -> DeploymentRecord {
        DeploymentRecord {
            spec: DeploymentSpec::new(NodeId::new(name).expect("valid"), "worker", 2),
            created_at: OffsetDateTime::UNIX_EPOCH,
            version: 0,
            older: Default::default(),
            rollout: None,
        }
    }

    fn assignment(worker: &str) -> Assignment {
        let slot = worker.rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or(0);
        Assignment {
            worker: NodeId::new(worker).expect("valid"),
            hive: Some(NodeId::new("h1").expect("valid")),
            state: AssignmentState::Placed,
            ..Assignment::pending(&NodeId::new("web").expect("valid"), slot, OffsetDateTime::UNIX_EPOCH, 0)
        }
    }

    fn temp_dir(tag: &str) -> std::path::PathBuf {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        std::env::temp_dir().join(format!("apiary-store-{tag}-{}-{nanos}", std::process::id()))
    }

    #[test]
    fn redb_state_survives_reopening() -> Result<(), StoreError> {
        let dir = temp_dir("reopen");
        {
            let store = RedbStore::open(&dir)?;
            store.apply(&Batch {
                put_deployments: vec![record("web"), record("batch")],
                put_assignments: vec![assignment("web-0"), assignment("web-1")],
                strategy: Some(PlacementStrategy::Weighted),
                drains: Some(BTreeMap::from([(NodeId::new("hive-1").expect("valid"), drain())])),
                ..Default::default()
            })?;
            store.apply(&Batch {
                delete_deployments: vec![NodeId::new("batch").expect("valid")],
                delete_assignments: vec![NodeId::new("web-1").expect("valid")],
                ..Default::default()
            })?;
        }
        let loaded = RedbStore::open(&dir)?.load()?;
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(loaded.deployments.keys().map(NodeId::as_str).collect::<Vec<_>>(), ["web"]);
        assert_eq!(loaded.assignments.keys().map(NodeId::as_str).collect::<Vec<_>>(), ["web-0"]);
        assert_eq!(loaded.strategy, Some(PlacementStrategy::Weighted));
        assert_eq!(loaded.assignments[&NodeId::new("web-0").expect("valid")], assignment("web-0"));
        assert_eq!(loaded.drains.get(&NodeId::new("hive-1").expect("valid")), Some(&drain()));
        Ok(())
    }

    fn drain() -> DrainRecord {
        let at = OffsetDateTime::from_unix_timestamp(1_795_000_000).expect("valid");
        DrainRecord {
            started_at: at,
            deadline: at + time::Duration::minutes(5),
            moved: [NodeId::new("web-0-g1").expect("valid")].into(),
            cancelled: false,
            done: false,
            notes: vec!["cannot move web-1: no other hive with room".into()],
            own_epoch: None,
        }
    }

    fn route(worker: &str, at: OffsetDateTime) -> JobRoute {
        JobRoute { worker: NodeId::new(worker).expect("valid"), address: format!("http://{worker}"), at }
    }

    /// Put, overwrite, read back, and forget only what is older than the cut.
    fn job_routes_behave(store: &dyn Store) -> Result<(), StoreError> {
        let now = OffsetDateTime::now_utc().replace_nanosecond(0).expect("valid");
        let old = now - time::Duration::minutes(20);
        assert_eq!(store.job_route("k1")?, None);
        store.put_job_route("k1", &route("w1", now))?;
        store.put_job_route("k1", &route("w2", now))?;
        store.put_job_route("k2", &route("w1", old))?;
        assert_eq!(store.job_route("k1")?, Some(route("w2", now)), "the last route wins");
        assert_eq!(store.forget_job_routes(now - time::Duration::minutes(10))?, 1);
        assert_eq!(store.job_route("k2")?, None);
        assert_eq!(store.job_route("k1")?, Some(route("w2", now)));
        Ok(())
    }

    #[test]
    fn job_routes_are_kept_and_forgotten() -> Result<(), StoreError> {
        job_routes_behave(&MemoryStore::default())?;
        let dir = temp_dir("routes");
        job_routes_behave(&RedbStore::open(&dir)?)?;
        // Durable: a route outlives the queen that stored it.
        let reopened = RedbStore::open(&dir)?.job_route("k1");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(reopened?.is_some());
        Ok(())
    }

    fn audit_entry(path: &str) -> contract::AuditEntry {
        contract::AuditEntry {
            seq: 0,
            at: OffsetDateTime::from_unix_timestamp(1_795_000_000).expect("valid"),
            who: "ops".into(),
            method: "POST".into(),
            path: path.into(),
            status: 201,
            outcome: "ok".into(),
            queen: "q1".into(),
        }
    }

    /// Terms only grow; audit entries come back numbered, newest `limit`, oldest first.
    fn counters_behave(store: &dyn Store) -> Result<(), StoreError> {
        let (a, b) = (store.next_term()?, store.next_term()?);
        assert!(b > a, "{a} then {b}");
        for p in ["/v1/deployments", "/v1/placement/strategy", "/v1/cluster/shutdown"] {
            store.append_audit(&audit_entry(p))?;
        }
        let last_two = store.audit(2)?;
        assert_eq!(
            last_two.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(),
            ["/v1/placement/strategy", "/v1/cluster/shutdown"]
        );
        assert_eq!(last_two.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(store.audit(10)?.len(), 3);
        Ok(())
    }

    #[test]
    fn terms_and_the_audit_log_survive_reopening() -> Result<(), StoreError> {
        counters_behave(&MemoryStore::default())?;
        let dir = temp_dir("audit");
        let term = {
            let store = RedbStore::open(&dir)?;
            counters_behave(&store)?;
            store.next_term()?
        };
        let reopened = RedbStore::open(&dir)?;
        let (next, kept) = (reopened.next_term(), reopened.audit(10));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(next?, term + 1, "a restarted queen never reuses a term");
        assert_eq!(kept?.len(), 3, "the audit log is durable");
        Ok(())
    }

    #[test]
    fn an_empty_truncated_or_corrupt_store_is_refused_by_name() -> Result<(), StoreError> {
        let dir = temp_dir("broken");
        {
            let store = RedbStore::open(&dir)?;
            store.apply(&Batch { put_deployments: vec![record("web")], ..Default::default() })?;
        }
        let file = dir.join("queen.redb");
        let whole = std::fs::read(&file).map_err(backend)?;
        let cases: [(&str, Vec<u8>); 3] = [
            ("empty", Vec::new()),
            ("truncated", whole[..whole.len() / 3].to_vec()),
            ("corrupt", whole.iter().map(|b| b ^ 0x5a).collect()),
        ];
        for (what, bytes) in cases {
            std::fs::write(&file, &bytes).map_err(backend)?;
            let opened = RedbStore::open(&dir).and_then(|s| s.load());
            match opened {
                Err(StoreError::Corrupt(m)) => assert!(m.contains("queen.redb"), "{what}: {m}"),
                Err(e) => panic!("{what}: refused, but not as a broken store: {e}"),
                Ok(p) => assert!(!p.deployments.is_empty(), "{what}: opened as a new, empty store"),
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
