//! The reconcile planner: what operators asked for, plus what the queen observes of the
//! hives and workers, plus the time, gives the next placement. A pure function: no store,
//! no registry, no clock, no channel. It is applied by `Orchestrator::reconcile`, which
//! writes the plan's batch to the store first and takes the new placement into memory only
//! once that write succeeded.
//!
//! One pass, in order: drop replicas beyond their deployment's count; orphan replicas
//! whose hive is stopped, unknown past the startup grace, or offline past the orphan
//! threshold (unless the brake holds: more than half the hives look dead at once); create
//! the missing slots; step every running drain; step every running rollout (`rollout`);
//! offer each unplaced replica to the placement strategy.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use contract::{Assignment, AssignmentState, EventKind, NodeId, NodeKind};
use heartbeat_registry::Liveness;
use time::OffsetDateTime;

use crate::placement::{Candidate, Placer, Want};
use crate::store::{Batch, DeploymentRecord, DrainRecord};

/// Replicas one drain moves at the same time: a drain must not take a deployment's
/// capacity down by more than this while it waits for new instances to come up.
pub const MOVING_AT_ONCE: usize = 2;

/// A hive as the planner sees it.
#[derive(Clone, Debug)]
pub struct HiveView {
    pub liveness: Liveness,
    pub silent_for: Duration,
    /// Worker processes the hive last reported.
    pub processes: usize,
    /// The hive process's epoch.
    pub epoch: u64,
    /// Set when the hive could take a replica now (online, steady, ready); its labels,
    /// capacity and load.
    pub candidate: Option<Candidate>,
}

/// What the planner needs to know of the workers: whether one heartbeats as available.
pub trait Workers {
    fn available(&self, worker: &NodeId) -> bool;
}

impl Workers for BTreeSet<NodeId> {
    fn available(&self, worker: &NodeId) -> bool {
        self.contains(worker)
    }
}

/// Everything observed, as of one moment.
pub struct Observed<'a> {
    pub hives: &'a BTreeMap<NodeId, HiveView>,
    pub workers: &'a dyn Workers,
    /// Replicas their hives report restarting after a crash, or given up on.
    pub failing: &'a BTreeSet<NodeId>,
    /// The queen has listened long enough since it started (or was elected) that a hive
    /// it has not heard from is taken for gone.
    pub grace_over: bool,
    /// A hive offline this long has its replicas placed elsewhere.
    pub orphan_after: Duration,
}

/// The part of the durable state a reconcile changes.
#[derive(Clone, Debug)]
pub struct Placement {
    /// By slot key (the generation-0 worker name).
    pub assignments: BTreeMap<NodeId, Assignment>,
    pub drains: BTreeMap<NodeId, DrainRecord>,
    pub placer: Placer,
}

/// A decision worth an event: placed, orphaned, pending, retired, a drain done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub node: NodeKind,
    pub id: NodeId,
    pub kind: EventKind,
    pub reason: String,
}

impl Decision {
    fn worker(id: &NodeId, kind: EventKind, reason: String) -> Self {
        Self { node: NodeKind::Worker, id: id.clone(), kind, reason }
    }
}

/// What one reconcile pass decided.
#[derive(Debug)]
pub struct Plan {
    pub next: Placement,
    /// The store writes that take the stored state to `next`.
    pub batch: Batch,
    pub decisions: Vec<Decision>,
}

/// More than half the hives the queen knows (those not stopped on purpose) look dead at
/// the same moment: the likelier truth is that the queen is cut off, not that they are.
pub fn brake(hives: &BTreeMap<NodeId, HiveView>) -> bool {
    let counted = hives.values().filter(|v| v.liveness != Liveness::Stopped).count();
    let offline = hives.values().filter(|v| v.liveness == Liveness::Offline).count();
    counted >= 2 && offline * 2 > counted
}

/// The worker's id for one instance of a slot: `web-3`, then `web-3.1`, `web-3.2` for the
/// instances drains start elsewhere. Generation 0 is also the slot's key.
pub fn worker_name(deployment: &NodeId, slot: u32, generation: u32) -> NodeId {
    // The spec's validation keeps the name short enough for the suffixes.
    match generation {
        0 => NodeId::sanitized(&format!("{deployment}-{slot}")),
        g => NodeId::sanitized(&format!("{deployment}-{slot}.{g}")),
    }
}

/// One reconcile pass; see the module doc.
pub fn plan(
    deployments: &BTreeMap<NodeId, DeploymentRecord>,
    ineligible: &BTreeSet<NodeId>,
    current: &Placement,
    observed: &Observed<'_>,
    now: OffsetDateTime,
) -> Plan {
    let mut next = current.clone();
    let mut batch = Batch::default();
    let mut decisions = Vec::new();
    let brake = brake(observed.hives);
    let Placement { assignments, drains, placer } = &mut next;

    // Replicas nobody wants any more.
    assignments.retain(|w, a| {
        let keep = deployments.get(&a.deployment).is_some_and(|d| a.slot < d.spec.replicas);
        if !keep {
            batch.delete_assignments.push(w.clone());
        }
        keep
    });

    // Replicas whose hive is gone.
    for a in assignments.values_mut().filter(|a| a.state == AssignmentState::Placed) {
        let Some(hive) = a.hive.clone() else { continue };
        if let Some(reason) = gone(&hive, observed, brake) {
            a.state = AssignmentState::Orphaned;
            a.hive = None;
            a.since = now;
            a.moves += 1;
            decisions.push(Decision::worker(&a.worker, EventKind::Orphaned, reason));
            batch.put_assignments.push(a.clone());
        }
    }

    create_slots(deployments, assignments, now);
    end_own_drains(drains, observed, &mut batch, &mut decisions);

    // What each hive could still take, counting what it holds.
    let held_out = |v: &HiveView, c: &Candidate| {
        ineligible.contains(&c.id) || drains.get(&c.id).is_some_and(|d| d.holds_out(v.epoch))
    };
    let mut candidates: Vec<Candidate> =
        observed.hives.values().filter_map(|v| v.candidate.clone().filter(|c| !held_out(v, c))).collect();
    for a in assignments.values() {
        let instances = a.hive.iter().map(|h| (h, a.version)).chain(a.retiring.iter().map(|r| (&r.hive, r.version)));
        for (h, version) in instances {
            if let Some(c) = candidates.iter_mut().find(|c| &c.id == h) {
                let asks =
                    deployments.get(&a.deployment).and_then(|d| d.spec_of(version).resources).unwrap_or_default();
                c.take(asks.cpu_millis, asks.memory_bytes);
            }
        }
    }

    let mut step = DrainStep { deployments, observed, placer, candidates: &mut candidates, now };
    step.run(assignments, drains, &mut batch, &mut decisions);
    let mut rolling = rollout::RolloutStep { observed, placer, candidates: &mut candidates, now };
    rolling.run(deployments, assignments, &mut batch, &mut decisions);

    place(deployments, assignments, placer, &mut candidates, now, &mut batch, &mut decisions);
    Plan { next, batch, decisions }
}

/// A hive that drained itself on its way down and is back as a newer process is eligible
/// again: its own drain ends here (an operator's cordon is `ineligible`, and stays).
fn end_own_drains(
    drains: &mut BTreeMap<NodeId, DrainRecord>,
    observed: &Observed<'_>,
    batch: &mut Batch,
    decisions: &mut Vec<Decision>,
) {
    let back: Vec<NodeId> = drains
        .iter()
        .filter(|(h, d)| d.own_epoch.is_some() && observed.hives.get(*h).is_some_and(|v| !d.holds_out(v.epoch)))
        .map(|(h, _)| h.clone())
        .collect();
    if back.is_empty() {
        return;
    }
    for hive in back {
        drains.remove(&hive);
        let reason = "back as a new process after draining itself on its way down: eligible again".to_string();
        decisions.push(Decision { node: NodeKind::Hive, id: hive, kind: EventKind::Eligible, reason });
    }
    batch.drains = Some(drains.clone());
}

/// Creates the slots that have no assignment yet, pending.
fn create_slots(
    deployments: &BTreeMap<NodeId, DeploymentRecord>,
    assignments: &mut BTreeMap<NodeId, Assignment>,
    now: OffsetDateTime,
) {
    for d in deployments.values() {
        for slot in 0..d.spec.replicas {
            let worker = worker_name(&d.spec.name, slot, 0);
            assignments
                .entry(worker.clone())
                .or_insert_with(|| Assignment { worker, ..Assignment::pending(&d.spec.name, slot, now, d.version) });
        }
    }
}

/// Offers every unplaced replica to the strategy; one that finds no room is pending, and
/// says so once.
fn place(
    deployments: &BTreeMap<NodeId, DeploymentRecord>,
    assignments: &mut BTreeMap<NodeId, Assignment>,
    placer: &mut Placer,
    candidates: &mut [Candidate],
    now: OffsetDateTime,
    batch: &mut Batch,
    decisions: &mut Vec<Decision>,
) {
    let mut placed = placed_by_deployment(assignments);
    for a in assignments.values_mut().filter(|a| a.hive.is_none()) {
        let Some(d) = deployments.get(&a.deployment) else { continue };
        match placer.pick(candidates, &mut want(d, &mut placed)) {
            Some(hive) => {
                let reason = format!("placed on {hive} ({})", placer.strategy.as_str());
                decisions.push(Decision::worker(&a.worker, EventKind::Placed, reason));
                a.hive = Some(hive);
                a.state = AssignmentState::Placed;
                a.since = now;
                batch.put_assignments.push(a.clone());
            }
            None if a.state != AssignmentState::Pending || a.since == now => {
                a.state = AssignmentState::Pending;
                let reason = "no hive with room and matching labels".to_string();
                decisions.push(Decision::worker(&a.worker, EventKind::Pending, reason));
                batch.put_assignments.push(a.clone());
            }
            None => {}
        }
    }
}

/// Why a replica's hive counts as gone, if it does.
fn gone(hive: &NodeId, observed: &Observed<'_>, brake: bool) -> Option<String> {
    match observed.hives.get(hive) {
        None if observed.grace_over => Some(format!("hive {hive} is unknown")),
        None => None,
        Some(v) if v.liveness == Liveness::Stopped => Some(format!("hive {hive} stopped")),
        Some(v) if v.liveness == Liveness::Offline && v.silent_for >= observed.orphan_after && !brake => {
            Some(format!("hive {hive} offline for {} s", v.silent_for.as_secs()))
        }
        _ => None,
    }
}

/// The drain part of a pass: retire old instances whose replacement is up, move a few
/// more replicas of each draining hive, stop what is left at the deadline, and end the
/// drains whose hive has nothing left.
struct DrainStep<'a, 'o> {
    deployments: &'a BTreeMap<NodeId, DeploymentRecord>,
    observed: &'a Observed<'o>,
    placer: &'a mut Placer,
    candidates: &'a mut Vec<Candidate>,
    now: OffsetDateTime,
}

impl DrainStep<'_, '_> {
    fn run(
        &mut self,
        assignments: &mut BTreeMap<NodeId, Assignment>,
        drains: &mut BTreeMap<NodeId, DrainRecord>,
        batch: &mut Batch,
        decisions: &mut Vec<Decision>,
    ) {
        let before = drains.clone();
        self.retire(assignments, drains, batch, decisions);
        for (hive, drain) in drains.iter_mut().filter(|(_, d)| !d.done) {
            self.move_some(hive, drain, assignments, batch, decisions);
            let left = assignments.values().any(|a| holds(a, hive));
            // Done when the processes have exited, not when they were told to.
            let exited = self.observed.hives.get(hive).is_none_or(|v| !v.liveness.is_up() || v.processes == 0);
            if !left && exited {
                drain.done = true;
                decisions.push(Decision {
                    node: NodeKind::Hive,
                    id: hive.clone(),
                    kind: EventKind::PhaseDone,
                    reason: format!("drain done: {} replicas moved", drain.moved.len()),
                });
            }
        }
        if *drains != before {
            batch.drains = Some(drains.clone());
        }
    }

    /// Old instances go once their replacement heartbeats as available, or when their
    /// hive is gone anyway, or at their drain's deadline.
    fn retire(
        &self,
        assignments: &mut BTreeMap<NodeId, Assignment>,
        drains: &mut BTreeMap<NodeId, DrainRecord>,
        batch: &mut Batch,
        decisions: &mut Vec<Decision>,
    ) {
        for a in assignments.values_mut() {
            let Some(r) = a.retiring.clone() else { continue };
            let replacement_up = self.observed.workers.available(&a.worker);
            let old_hive_gone = self.observed.hives.get(&r.hive).is_none_or(|v| !v.liveness.is_up());
            let deadline_passed = drains.get(&r.hive).is_some_and(|d| self.now >= d.deadline);
            if replacement_up || old_hive_gone || deadline_passed {
                let reason = format!("retired from {}: {} took over", r.hive, a.worker);
                decisions.push(Decision::worker(&r.worker, EventKind::Retired, reason));
                if let Some(d) = drains.get_mut(&r.hive) {
                    d.moved.insert(a.worker.clone());
                }
                a.retiring = None;
                batch.put_assignments.push(a.clone());
            }
        }
    }

    /// Starts up to [`MOVING_AT_ONCE`] of `hive`'s replicas anew elsewhere, the old
    /// instance kept as retiring; past the deadline, stops what could not move.
    fn move_some(
        &mut self,
        hive: &NodeId,
        drain: &mut DrainRecord,
        assignments: &mut BTreeMap<NodeId, Assignment>,
        batch: &mut Batch,
        decisions: &mut Vec<Decision>,
    ) {
        let past_deadline = self.now >= drain.deadline;
        let mut placed = placed_by_deployment(assignments);
        let mut moving = assignments.values().filter(|a| a.retiring.as_ref().is_some_and(|r| &r.hive == hive)).count();
        for a in assignments.values_mut().filter(|a| a.hive.as_ref() == Some(hive) && a.retiring.is_none()) {
            if past_deadline {
                // Whatever could not move is stopped anyway, and said so.
                drain.notes.push(format!("{} stopped at the deadline without a new home", a.worker));
                let reason = format!("drain of {hive}: stopped at the deadline");
                decisions.push(Decision::worker(&a.worker, EventKind::Pending, reason));
                a.hive = None;
                a.state = AssignmentState::Pending;
                a.since = self.now;
                batch.put_assignments.push(a.clone());
                continue;
            }
            if moving >= MOVING_AT_ONCE {
                continue;
            }
            let Some(d) = self.deployments.get(&a.deployment) else { continue };
            match self.placer.pick(self.candidates, &mut want(d, &mut placed)) {
                Some(target) => {
                    let old = a.worker.clone();
                    a.generation += 1;
                    a.worker = worker_name(&a.deployment, a.slot, a.generation);
                    a.retiring =
                        Some(contract::Retiring { hive: hive.clone(), worker: old.clone(), version: a.version });
                    a.hive = Some(target.clone());
                    a.moves += 1;
                    a.since = self.now;
                    moving += 1;
                    let reason = format!("placed on {target}, replacing {old} on draining {hive}");
                    decisions.push(Decision::worker(&a.worker, EventKind::Placed, reason));
                    batch.put_assignments.push(a.clone());
                }
                None => {
                    let note = format!("cannot move {}: no other hive with room and matching labels", a.worker);
                    if !drain.notes.contains(&note) {
                        tracing::warn!(%hive, "{note}");
                        drain.notes.push(note);
                    }
                }
            }
        }
    }
}

/// Replicas of each deployment on each hive, counting the instances being replaced.
pub(crate) fn placed_by_deployment(
    assignments: &BTreeMap<NodeId, Assignment>,
) -> BTreeMap<NodeId, BTreeMap<NodeId, u32>> {
    let mut placed: BTreeMap<NodeId, BTreeMap<NodeId, u32>> = BTreeMap::new();
    for a in assignments.values() {
        for hive in a.hive.iter().chain(a.retiring.iter().map(|r| &r.hive)) {
            *placed.entry(a.deployment.clone()).or_default().entry(hive.clone()).or_default() += 1;
        }
    }
    placed
}

/// What a replica of `d` asks of the strategy, with its siblings' places.
pub(crate) fn want<'a>(d: &'a DeploymentRecord, placed: &'a mut BTreeMap<NodeId, BTreeMap<NodeId, u32>>) -> Want<'a> {
    let asks = d.spec.resources.unwrap_or_default();
    Want {
        labels: &d.spec.labels_required,
        spread_by: d.spec.spread_by.as_deref(),
        placed: placed.entry(d.spec.name.clone()).or_default(),
        cpu_millis: asks.cpu_millis,
        memory_bytes: asks.memory_bytes,
    }
}

/// Whether an instance of this slot (the running one or the one retiring) is on `hive`.
pub fn holds(a: &Assignment, hive: &NodeId) -> bool {
    a.hive.as_ref() == Some(hive) || a.retiring.as_ref().is_some_and(|r| &r.hive == hive)
}

pub mod rollout;
#[cfg(test)]
mod tests;
