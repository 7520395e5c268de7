//! Rolling a deployment to a new version: one step of the reconcile pass, pure like the
//! rest of it.
//!
//! A slot is outdated while its instance runs a version other than the deployment's.
//! Each pass, for each deployment whose rollout runs:
//! 1. A new instance seen available is healthy from then on (`healthy_at`).
//! 2. A new instance not available `progress_deadline_ms` after it started, or one its
//!    hive reports crashing, fails the rollout, which reverts: the version before becomes
//!    the target again, a slot whose old instance still runs gets it back at once, and
//!    the slots already replaced roll back like any rollout.
//! 3. While fewer than `max_parallel` slots are in flight (replaced, but not yet healthy
//!    for `min_healthy_ms`), the next outdated slot gets a new instance beside its old one
//!    (placed by the strategy; the old one is retired by the drain step's rule once the
//!    new one heartbeats as available). With no room anywhere for a second instance, the
//!    slot is restarted in place instead: a short gap for that one replica rather than a
//!    rollout that never moves.
//! 4. Every slot at the target version and healthy long enough: the rollout is done.

use std::collections::BTreeMap;
use std::time::Duration;

use contract::{Assignment, EventKind, NodeId, RolloutState, RolloutStatus};
use time::OffsetDateTime;

use super::{Decision, Observed, worker_name};
use crate::placement::{Candidate, Placer};
use crate::store::{Batch, DeploymentRecord, RolloutRecord};

fn ms(d: u64) -> time::Duration {
    time::Duration::try_from(Duration::from_millis(d)).unwrap_or(time::Duration::MAX)
}

/// Healthy, and for long enough to move on from.
fn settled(r: &RolloutRecord, slot: u32, min_healthy_ms: u64, now: OffsetDateTime) -> bool {
    r.healthy_at.get(&slot).is_some_and(|at| now - *at >= ms(min_healthy_ms))
}

/// The rollout part of a pass, with what it reads and places with.
pub(super) struct RolloutStep<'a, 'o> {
    pub observed: &'a Observed<'o>,
    pub placer: &'a mut Placer,
    pub candidates: &'a mut [Candidate],
    pub now: OffsetDateTime,
}

impl RolloutStep<'_, '_> {
    /// Steps every running rollout; see the module doc.
    pub(super) fn run(
        &mut self,
        deployments: &BTreeMap<NodeId, DeploymentRecord>,
        assignments: &mut BTreeMap<NodeId, Assignment>,
        batch: &mut Batch,
        decisions: &mut Vec<Decision>,
    ) {
        for record in deployments.values() {
            let Some(r) = &record.rollout else { continue };
            if !matches!(r.state, RolloutState::Running | RolloutState::Reverting) {
                continue;
            }
            let mut next = record.clone();
            self.roll(&mut next, assignments, batch, decisions);
            if next != *record {
                batch.put_deployments.push(next);
            }
        }
    }

    fn roll(
        &mut self,
        d: &mut DeploymentRecord,
        assignments: &mut BTreeMap<NodeId, Assignment>,
        batch: &mut Batch,
        decisions: &mut Vec<Decision>,
    ) {
        let (observed, now) = (self.observed, self.now);
        let name = d.spec.name.clone();
        let policy = d.spec.update;
        let target = d.version;
        let ours = |a: &Assignment| a.deployment == name;
        let Some(r) = d.rollout.as_mut() else { return };
        for a in assignments.values().filter(|a| ours(a) && a.version == target && a.hive.is_some()) {
            if observed.workers.available(&a.worker) {
                r.healthy_at.entry(a.slot).or_insert(now);
            }
        }

        if r.state == RolloutState::Running {
            let r = &*r;
            let failed =
                assignments.values().filter(|a| ours(a) && a.version == target && a.hive.is_some()).find_map(|a| {
                    if r.healthy_at.contains_key(&a.slot) {
                        return None;
                    }
                    if observed.failing.contains(&a.worker) {
                        return Some(format!("{} keeps crashing", a.worker));
                    }
                    (now - a.since >= ms(policy.progress_deadline_ms)).then(|| {
                        format!("{} not available {} s after it started", a.worker, policy.progress_deadline_ms / 1000)
                    })
                });
            if let Some(why) = failed {
                revert(d, assignments, now, why, batch, decisions);
                return;
            }
        }

        let Some(r) = d.rollout.as_mut() else { return };
        let in_flight = assignments
            .values()
            .filter(|a| ours(a) && a.version == target)
            .filter(|a| a.retiring.is_some() || !settled(r, a.slot, policy.min_healthy_ms, now))
            .count();
        let mut room = (policy.max_parallel as usize).saturating_sub(in_flight);
        let mut placed = super::placed_by_deployment(assignments);
        let mut outdated: Vec<&mut Assignment> =
            assignments.values_mut().filter(|a| ours(a) && a.version != target && a.retiring.is_none()).collect();
        outdated.sort_by_key(|a| a.slot);
        for a in outdated {
            if room == 0 {
                break;
            }
            room -= 1;
            a.since = now;
            let Some(old_hive) = a.hive.clone() else {
                // Not running anywhere: it starts at the new version when it is placed.
                a.version = target;
                batch.put_assignments.push(a.clone());
                continue;
            };
            let old = a.worker.clone();
            let from = a.version;
            a.generation += 1;
            a.worker = worker_name(&a.deployment, a.slot, a.generation);
            a.version = target;
            // Built from the spec's fields (not `plan::want`): the rollout record is borrowed.
            let asks = d.spec.resources.unwrap_or_default();
            let want = &mut super::Want {
                labels: &d.spec.labels_required,
                spread_by: d.spec.spread_by.as_deref(),
                placed: placed.entry(name.clone()).or_default(),
                cpu_millis: asks.cpu_millis,
                memory_bytes: asks.memory_bytes,
            };
            let reason = match self.placer.pick(self.candidates, want) {
                Some(hive) => {
                    a.retiring = Some(contract::Retiring { hive: old_hive, worker: old.clone(), version: from });
                    a.hive = Some(hive.clone());
                    format!("placed on {hive}, replacing {old} (version {from} → {target})")
                }
                None => format!("restarted in place on {old_hive} as version {target}: no hive has room beside {old}"),
            };
            decisions.push(Decision::worker(&a.worker, EventKind::Placed, reason));
            batch.put_assignments.push(a.clone());
        }

        let slots: Vec<&Assignment> = assignments.values().filter(|a| ours(a)).collect();
        let done = slots.iter().all(|a| {
            a.version == target
                && a.retiring.is_none()
                && a.hive.is_some()
                && settled(r, a.slot, policy.min_healthy_ms, now)
        });
        if done {
            let (state, said) = match r.state {
                RolloutState::Reverting => {
                    (RolloutState::Reverted, format!("reverted to version {target}: {}", r.reason))
                }
                _ => (RolloutState::Done, format!("version {target} rolled out to {} replicas", slots.len())),
            };
            r.state = state;
            decisions.push(Decision::worker(&name, EventKind::Rollout, said));
        }
    }
}

/// The version before becomes the target again; slots whose old instance still runs get
/// it back at once (the new one, which failed, is dropped).
fn revert(
    d: &mut DeploymentRecord,
    assignments: &mut BTreeMap<NodeId, Assignment>,
    now: OffsetDateTime,
    why: String,
    batch: &mut Batch,
    decisions: &mut Vec<Decision>,
) {
    let Some(r) = &d.rollout else { return };
    let (bad, good) = (d.version, r.from);
    let Some(good_spec) = d.older.remove(&good) else {
        // The version before is no longer kept (it cannot be, past VERSIONS_KEPT rollouts
        // in flight at once); say so and stay.
        if let Some(r) = d.rollout.as_mut() {
            r.reason = format!("{why}; version {good} is no longer kept, so it cannot revert");
        }
        return;
    };
    let bad_spec = std::mem::replace(&mut d.spec, good_spec);
    d.older.insert(bad, bad_spec);
    d.version = good;
    let mut back = RolloutRecord::new(bad, good, now);
    back.state = RolloutState::Reverting;
    back.reason = why.clone();
    d.rollout = Some(back);
    for a in assignments.values_mut().filter(|a| a.deployment == d.spec.name && a.version == bad) {
        if let Some(old) = a.retiring.take() {
            a.worker = old.worker;
            a.hive = Some(old.hive);
            a.version = old.version;
            a.since = now;
            batch.put_assignments.push(a.clone());
        }
    }
    let reason = format!("rollout to version {bad} failed ({why}): reverting to version {good}");
    decisions.push(Decision::worker(&d.spec.name, EventKind::Rollout, reason));
}

/// What the API and the snapshot say of a rollout.
pub fn status(
    d: &DeploymentRecord,
    r: &RolloutRecord,
    assignments: &[Assignment],
    now: OffsetDateTime,
) -> RolloutStatus {
    let min = d.spec.update.min_healthy_ms;
    let updated = assignments
        .iter()
        .filter(|a| a.version == d.version && a.retiring.is_none() && settled(r, a.slot, min, now))
        .count() as u32;
    RolloutStatus {
        from_version: r.from,
        to_version: r.to,
        state: r.state,
        started_at: r.started_at,
        updated,
        replicas: d.spec.replicas,
        reason: r.reason.clone(),
    }
}
