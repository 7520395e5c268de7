//! Drains as operators start, cancel and read them. The drain's steps themselves are
//! part of the reconcile plan (`plan::DrainStep`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use contract::{DrainStatus, NodeId};
use time::OffsetDateTime;

use super::{Orchestrator, State};
use crate::plan;
use crate::store::{Batch, DrainRecord, Store, StoreError};

/// How long a drain may take unless told otherwise.
pub const DEFAULT_DRAIN_DEADLINE: Duration = Duration::from_secs(300);

impl Orchestrator {
    /// Starts draining a hive: ineligible at once (and durably), then, at each reconcile,
    /// its replicas are started elsewhere a few at a time and the old ones stopped once
    /// the new ones heartbeat. Starting one that runs returns its status unchanged.
    ///
    /// `own_epoch`: the hive drains itself on its way down (the epoch of that process).
    /// Then no operator's mark is set: the drain holds the hive out only until a newer
    /// process of it heartbeats, so a rolling restart leaves every hive eligible. An
    /// operator's drain (`None`) makes it ineligible until an operator says otherwise.
    pub fn start_drain(
        &self,
        hive: &NodeId,
        deadline: Duration,
        own_epoch: Option<u64>,
    ) -> Result<DrainStatus, StoreError> {
        // A deadline of centuries would overflow the clocks (a panic, found by schemathesis
        // with 121645100408831999 ms); a year is as good as forever for a drain.
        let deadline = deadline.min(Duration::from_secs(365 * 24 * 3600));
        if own_epoch.is_none() {
            self.set_eligible(hive, false)?;
        }
        let mut st = self.lock();
        let running = st.placement.drains.get(hive).is_some_and(|d| !d.done && !d.cancelled);
        if !running {
            let now = self.now();
            let mut drains = st.placement.drains.clone();
            drains.insert(
                hive.clone(),
                DrainRecord {
                    started_at: now,
                    deadline: now + deadline,
                    moved: BTreeSet::new(),
                    cancelled: false,
                    done: false,
                    notes: Vec::new(),
                    own_epoch,
                },
            );
            self.store.apply(&Batch { drains: Some(drains.clone()), ..Default::default() })?;
            st.placement.drains = drains;
        }
        Ok(Self::drain_status(&st, hive).unwrap_or_else(|| empty_drain(hive, self.now())))
    }

    /// Stops a drain where it stands; the hive stays ineligible. `None`: no drain of it.
    pub fn cancel_drain(&self, hive: &NodeId) -> Result<Option<DrainStatus>, StoreError> {
        let mut st = self.lock();
        let mut drains = st.placement.drains.clone();
        let Some(d) = drains.get_mut(hive) else { return Ok(None) };
        if !d.done {
            d.cancelled = true;
            d.done = true;
            self.store.apply(&Batch { drains: Some(drains.clone()), ..Default::default() })?;
            st.placement.drains = drains;
        }
        // Replacements already running stay; their old instances are retired normally.
        Ok(Self::drain_status(&st, hive))
    }

    /// Drops what the queen keeps about hives it has forgotten (gone for long, or removed
    /// by an operator): their ineligible marks and drains, which would otherwise pile up
    /// with every hive name ever seen. Returns how many records went.
    pub fn forget_hives(&self, gone: &[NodeId]) -> Result<usize, StoreError> {
        let mut st = self.lock();
        let mut ineligible = st.ineligible.clone();
        let mut drains = st.placement.drains.clone();
        let before = ineligible.len() + drains.len();
        for hive in gone {
            ineligible.remove(hive);
            drains.remove(hive);
        }
        let removed = before - ineligible.len() - drains.len();
        if removed > 0 {
            self.store.apply(&Batch {
                ineligible: Some(ineligible.clone()),
                drains: Some(drains.clone()),
                ..Default::default()
            })?;
            st.ineligible = ineligible;
            st.placement.drains = drains;
        }
        Ok(removed)
    }

    pub fn drain(&self, hive: &NodeId) -> Option<DrainStatus> {
        Self::drain_status(&self.lock(), hive)
    }

    pub fn drains(&self) -> Vec<DrainStatus> {
        let st = self.lock();
        st.placement.drains.keys().filter_map(|h| Self::drain_status(&st, h)).collect()
    }

    fn drain_status(st: &State, hive: &NodeId) -> Option<DrainStatus> {
        let d = st.placement.drains.get(hive)?;
        let left = st.placement.assignments.values().filter(|a| plan::holds(a, hive)).count() as u32;
        let moving =
            st.placement.assignments.values().filter(|a| a.retiring.as_ref().is_some_and(|r| &r.hive == hive)).count()
                as u32;
        let mut replicas: BTreeMap<NodeId, String> = d.moved.iter().map(|w| (w.clone(), "moved".to_string())).collect();
        for a in st.placement.assignments.values() {
            if a.retiring.as_ref().is_some_and(|r| &r.hive == hive) {
                replicas.insert(a.worker.clone(), "moving".into());
            } else if a.hive.as_ref() == Some(hive) {
                replicas.insert(a.worker.clone(), "waiting".into());
            }
        }
        Some(DrainStatus {
            hive: hive.clone(),
            started_at: d.started_at,
            deadline: d.deadline,
            moved: d.moved.len() as u32,
            left,
            moving,
            done: d.done,
            cancelled: d.cancelled,
            notes: d.notes.clone(),
            replicas,
            on_shutdown: d.own_epoch.is_some(),
        })
    }
}

/// What `start_drain` answers if the drain it just recorded cannot be read back (it always
/// can; this keeps the signature free of an `Option` nobody could act on).
fn empty_drain(hive: &NodeId, now: OffsetDateTime) -> DrainStatus {
    DrainStatus {
        hive: hive.clone(),
        started_at: now,
        deadline: now,
        moved: 0,
        left: 0,
        moving: 0,
        done: true,
        cancelled: false,
        notes: vec![],
        replicas: BTreeMap::new(),
        on_shutdown: false,
    }
}
