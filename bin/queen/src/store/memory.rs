//! A store that keeps nothing across restarts, for tests that do not care.

use std::collections::BTreeMap;
use std::sync::Mutex;

use time::OffsetDateTime;

use super::{Batch, JobRoute, Persisted, Store, StoreError};

/// Keeps nothing across restarts; for tests that do not care.
#[derive(Default)]
pub struct MemoryStore(Mutex<Persisted>, Mutex<BTreeMap<String, JobRoute>>, Mutex<Counters>);

/// The term count and the audit log.
#[derive(Default)]
pub struct Counters {
    term: u64,
    audit: std::collections::VecDeque<contract::AuditEntry>,
    audit_seq: u64,
}

impl Store for MemoryStore {
    fn load(&self) -> Result<Persisted, StoreError> {
        Ok(self.0.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    fn apply(&self, batch: &Batch) -> Result<(), StoreError> {
        let mut p = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for d in &batch.put_deployments {
            p.deployments.insert(d.spec.name.clone(), d.clone());
        }
        for name in &batch.delete_deployments {
            p.deployments.remove(name);
        }
        for a in &batch.put_assignments {
            p.assignments.insert(a.key(), a.clone());
        }
        for w in &batch.delete_assignments {
            p.assignments.remove(w);
        }
        if batch.strategy.is_some() {
            p.strategy = batch.strategy;
        }
        if batch.shutdown.is_some() {
            p.shutdown = batch.shutdown.clone();
        }
        if let Some(set) = &batch.ineligible {
            p.ineligible = set.clone();
        }
        if let Some(drains) = &batch.drains {
            p.drains = drains.clone();
        }
        Ok(())
    }

    fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn job_route(&self, key: &str) -> Result<Option<JobRoute>, StoreError> {
        Ok(self.1.lock().unwrap_or_else(|p| p.into_inner()).get(key).cloned())
    }

    fn put_job_route(&self, key: &str, route: &JobRoute) -> Result<(), StoreError> {
        self.1.lock().unwrap_or_else(|p| p.into_inner()).insert(key.to_string(), route.clone());
        Ok(())
    }

    fn forget_job_routes(&self, before: OffsetDateTime) -> Result<usize, StoreError> {
        let mut routes = self.1.lock().unwrap_or_else(|p| p.into_inner());
        let was = routes.len();
        routes.retain(|_, r| r.at >= before);
        Ok(was - routes.len())
    }

    fn next_term(&self) -> Result<u64, StoreError> {
        let mut c = self.2.lock().unwrap_or_else(|p| p.into_inner());
        c.term += 1;
        Ok(c.term)
    }

    fn append_audit(&self, entry: &contract::AuditEntry) -> Result<u64, StoreError> {
        let mut c = self.2.lock().unwrap_or_else(|p| p.into_inner());
        c.audit_seq += 1;
        let seq = c.audit_seq;
        c.audit.push_back(contract::AuditEntry { seq, ..entry.clone() });
        if c.audit.len() as u64 > super::AUDIT_KEPT {
            c.audit.pop_front();
        }
        Ok(seq)
    }

    fn audit(&self, limit: usize) -> Result<Vec<contract::AuditEntry>, StoreError> {
        let c = self.2.lock().unwrap_or_else(|p| p.into_inner());
        Ok(c.audit.iter().skip(c.audit.len().saturating_sub(limit)).cloned().collect())
    }
}
