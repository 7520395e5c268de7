//! Deployments, their replicas' assignments to hives, and the commands that tell each
//! hive what to run.
//!
//! One reconcile pass turns "what operators asked for" plus "which hives are alive" into
//! assignments: replicas beyond the count are dropped, replicas whose hive has been gone
//! past the orphan grace are orphaned, and every unplaced replica is offered to the
//! placement strategy. Each hive's desired set is then derived from the assignments and
//! published on its command channel when it changed. Commands carry the whole desired set,
//! so they are idempotent and a hive that reconnects simply gets the current one.

mod channels;
mod drains;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use contract::{
    Assignment, AssignmentState, DeploymentSpec, DeploymentStatus, DeploymentSummary, EventKind, HiveHeartbeat,
    HiveStatus, Liveness, NodeEvent, NodeId, NodeKind, PlacementStrategy, WorkerHeartbeat, WorkerLaunch,
};
use heartbeat_registry::{self as registry, HeartbeatRegistry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use time::OffsetDateTime;

use crate::clock::Wall;
use crate::metrics::DecisionLabels;
use crate::placement::{Candidate, Placer};
use crate::plan::{self, HiveView, Observed, Placement};
use crate::store::{Batch, DeploymentRecord, Persisted, Store, StoreError, Watched, WriteFailure};

pub use channels::Channels;
pub use drains::DEFAULT_DRAIN_DEADLINE;

/// Events about replicas kept for the snapshot.
const EVENTS_KEPT: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("deployment {0} already exists")]
    Exists(NodeId),
    #[error("no deployment named {0}")]
    NotFound(NodeId),
    /// The change would leave the deployment's spec invalid.
    #[error("{0}")]
    Invalid(String),
    /// Not now: no rollout to pause, resume or undo.
    #[error("{0}")]
    Conflict(String),
    #[error("no replica named {0}")]
    NoReplica(NodeId),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What an operator can do to a deployment's rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RolloutAction {
    Pause,
    Resume,
    Undo,
}

impl RolloutAction {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutAction::Pause => "pause",
            RolloutAction::Resume => "resume",
            RolloutAction::Undo => "undo",
        }
    }
}

struct State {
    deployments: BTreeMap<NodeId, DeploymentRecord>,
    /// Assignments (by slot key), drains (stored, so a drain goes on under the next
    /// leader) and the strategy's state: what a reconcile pass changes.
    placement: Placement,
    /// Hives that get no new replicas; durable.
    ineligible: BTreeSet<NodeId>,
}

pub struct Orchestrator {
    state: Mutex<State>,
    store: Watched,
    /// Each hive's command channel and the ACKs.
    pub channels: Channels,
    /// Shared with the registries so replica events and liveness events form one order.
    event_seq: Arc<AtomicU64>,
    events: Mutex<VecDeque<NodeEvent>>,
    /// Silence after which a hive's replicas are placed elsewhere: the offline threshold
    /// plus the configured orphan grace. Also how long after a start an unknown hive is
    /// not yet taken for gone.
    orphan_after: Duration,
    /// On while more than half the hives look dead at once.
    brake: AtomicBool,
    /// Set from a cluster shutdown's GATE on: no deployments change, nothing is placed or
    /// orphaned, and each hive's desired state carries its phase order.
    gate: AtomicBool,
    /// A queen that just started has not heard from every hive yet: a hive it does not
    /// know is not taken for gone until the orphan threshold has passed since the start.
    started: Mutex<tokio::time::Instant>,
    /// See [`Orchestrator::unknown_hives`]; counted at each reconcile.
    unknown_hives: AtomicUsize,
    /// Placement decisions by kind, for `/metrics`.
    pub decisions: Family<DecisionLabels, Counter>,
    /// The date drains and keyed-job routes are decided by (see `clock`).
    wall: Wall,
}

fn launch(spec: &DeploymentSpec, worker: &NodeId) -> WorkerLaunch {
    WorkerLaunch {
        name: worker.clone(),
        deployment: spec.name.clone(),
        command: spec.command.clone(),
        args: spec.args.clone(),
        env: spec.launch_env(),
        max_restarts: spec.max_restarts,
        process: spec.process.clone(),
        probes: spec.probes(),
        logs: spec.logs,
        resources: spec.resources,
    }
}

impl Orchestrator {
    pub fn open(store: Box<dyn Store>, orphan_after: Duration, event_seq: Arc<AtomicU64>) -> Result<Self, StoreError> {
        Self::open_with(store, orphan_after, event_seq, Wall::system())
    }

    pub fn open_with(
        store: Box<dyn Store>,
        orphan_after: Duration,
        event_seq: Arc<AtomicU64>,
        wall: Wall,
    ) -> Result<Self, StoreError> {
        let Persisted { deployments, assignments, strategy, shutdown: _, ineligible, drains } = store.load()?;
        let channels = Channels::default();
        // A store with no deployments may be a store that lost them: hives are not told to
        // stop what they run until an operator says so (or declares something).
        channels.set_holding(deployments.is_empty());
        Ok(Self {
            state: Mutex::new(State {
                deployments,
                placement: Placement { assignments, drains, placer: Placer::new(strategy.unwrap_or_default()) },
                ineligible,
            }),
            store: Watched::new(store),
            channels,
            unknown_hives: AtomicUsize::new(0),
            event_seq,
            events: Mutex::new(VecDeque::new()),
            orphan_after,
            brake: AtomicBool::new(false),
            gate: AtomicBool::new(false),
            started: Mutex::new(tokio::time::Instant::now()),
            decisions: Family::default(),
            wall,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn event(
        &self,
        workers: &HeartbeatRegistry<WorkerHeartbeat>,
        worker: &NodeId,
        kind: EventKind,
        reason: String,
    ) {
        tracing::info!(worker = %worker, ?kind, %reason, "placement");
        // The worker's own liveness as the queen last saw it; a replica not yet started
        // has none and counts as offline.
        let liveness = workers.get(worker).map(|w| crate::summary::liveness(w.liveness)).unwrap_or(Liveness::Offline);
        self.record(NodeKind::Worker, worker, kind, liveness, reason);
    }

    /// An event about the cluster or one hive that is not a liveness change (shutdown
    /// phases and ACKs), in the same ordered log.
    pub fn cluster_event(&self, node: NodeKind, id: &NodeId, kind: EventKind, reason: String) {
        tracing::info!(node = ?node, %id, ?kind, %reason, "cluster");
        self.record(node, id, kind, Liveness::Online, reason);
    }

    fn record(&self, node: NodeKind, id: &NodeId, kind: EventKind, liveness: Liveness, reason: String) {
        if matches!(kind, EventKind::Placed | EventKind::Orphaned | EventKind::Pending | EventKind::Retired) {
            self.decisions.get_or_create(&DecisionLabels { decision: kind.as_str() }).inc();
        }
        let event = NodeEvent {
            seq: self.event_seq.fetch_add(1, Ordering::Relaxed),
            at: OffsetDateTime::now_utc(),
            node,
            id: id.clone(),
            kind,
            liveness,
            epoch: None,
            reason,
        };
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if events.len() == EVENTS_KEPT {
            events.pop_front();
        }
        events.push_back(event);
    }

    pub fn recent_events(&self, limit: usize) -> Vec<NodeEvent> {
        let events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        events.iter().skip(events.len().saturating_sub(limit)).cloned().collect()
    }

    pub fn gated(&self) -> bool {
        self.gate.load(Ordering::SeqCst)
    }

    pub fn set_gate(&self) {
        self.gate.store(true, Ordering::SeqCst);
    }

    /// Persists the shutdown state (phase progress) atomically with nothing else.
    pub fn save_shutdown(&self, state: &contract::ShutdownState) -> Result<(), StoreError> {
        self.store.apply(&Batch { shutdown: Some(state.clone()), ..Default::default() })
    }

    pub fn load_shutdown(&self) -> Result<Option<contract::ShutdownState>, StoreError> {
        Ok(self.store.load()?.shutdown)
    }

    /// Replaces the durable part of the state with what the store holds now (a replica
    /// following another queen's writes, or one that has just been elected), and returns
    /// the stored shutdown. A drain in progress goes on from where the store has it.
    pub fn reload(&self) -> Result<Option<contract::ShutdownState>, StoreError> {
        let Persisted { deployments, assignments, strategy, shutdown, ineligible, drains } = self.store.load()?;
        let mut st = self.lock();
        let strategy = strategy.unwrap_or(st.placement.placer.strategy);
        let empty = deployments.is_empty();
        st.deployments = deployments;
        st.placement = Placement { assignments, drains, placer: Placer::new(strategy) };
        st.ineligible = ineligible;
        drop(st);
        self.channels.set_holding(empty);
        Ok(shutdown)
    }

    /// Numbers the next event (the registries' too: they share the counter) after `seq` at
    /// the least.
    pub fn number_events_after(&self, seq: u64) {
        self.event_seq.fetch_max(seq + 1, Ordering::Relaxed);
    }

    /// Counts the grace for hives not heard from yet again from now (a queen just elected
    /// leader has heard from nobody).
    pub fn restart_grace(&self) {
        *self.started.lock().unwrap_or_else(|p| p.into_inner()) = tokio::time::Instant::now();
    }

    pub fn ping(&self) -> Result<(), StoreError> {
        self.store.ping()
    }

    /// Whether this queen started (or was elected) too recently to know every node.
    /// Hives that run replicas this queen knows nothing of, held rather than stopped (its
    /// store had no deployments when it started or was elected).
    pub fn unknown_hives(&self) -> usize {
        self.unknown_hives.load(Ordering::Relaxed)
    }

    /// An operator confirms that what the hives run unknown to this queen should stop.
    pub fn stop_unknown(&self) -> usize {
        let unknown = self.unknown_hives.swap(0, Ordering::Relaxed);
        self.channels.set_holding(false);
        unknown
    }

    pub fn in_grace(&self) -> bool {
        self.started.lock().unwrap_or_else(|p| p.into_inner()).elapsed() < self.orphan_after
    }

    /// For the records the orchestrator does not manage itself (keyed jobs' routes).
    /// The date by this queen's reckoning: what deadlines and route ages are judged by.
    pub fn now(&self) -> OffsetDateTime {
        self.wall.now()
    }

    /// What the banner says about a step of the system clock, if any.
    pub fn clock_step(&self) -> Option<String> {
        self.wall.step_text()
    }

    pub fn store(&self) -> &dyn Store {
        &self.store
    }

    /// A store write that failed and has not succeeded since.
    pub fn store_failure(&self) -> Option<WriteFailure> {
        self.store.failure()
    }

    pub fn brake_engaged(&self) -> bool {
        self.brake.load(Ordering::Relaxed)
    }

    pub fn strategy(&self) -> PlacementStrategy {
        self.lock().placement.placer.strategy
    }

    pub fn set_strategy(&self, strategy: PlacementStrategy) -> Result<(), StoreError> {
        let mut st = self.lock();
        self.store.apply(&Batch { strategy: Some(strategy), ..Default::default() })?;
        st.placement.placer = Placer::new(strategy);
        Ok(())
    }

    pub fn create(&self, spec: DeploymentSpec) -> Result<(), DeployError> {
        let mut st = self.lock();
        if st.deployments.contains_key(&spec.name) {
            return Err(DeployError::Exists(spec.name));
        }
        let record = DeploymentRecord::new(spec, OffsetDateTime::now_utc());
        self.store.apply(&Batch { put_deployments: vec![record.clone()], ..Default::default() })?;
        st.deployments.insert(record.spec.name.clone(), record);
        drop(st);
        // An operator declared what runs: whatever else the hives run is theirs to stop.
        self.channels.set_holding(false);
        Ok(())
    }

    /// Changes a deployment: a new replica count or update policy at once; a change of
    /// what its replicas run as a new version, rolled out by the planner.
    pub fn patch(&self, name: &NodeId, patch: &contract::DeploymentPatch) -> Result<(), DeployError> {
        let mut st = self.lock();
        let mut record = st.deployments.get(name).cloned().ok_or_else(|| DeployError::NotFound(name.clone()))?;
        let next = patch.applied_to(&record.spec);
        next.validate().map_err(|e| DeployError::Invalid(e.to_string()))?;
        if next.runs_differently(&record.spec) {
            record.roll_to(next, self.wall.now());
        } else {
            record.spec = next;
        }
        self.store.apply(&Batch { put_deployments: vec![record.clone()], ..Default::default() })?;
        st.deployments.insert(name.clone(), record);
        Ok(())
    }

    pub fn scale(&self, name: &NodeId, replicas: u32) -> Result<(), DeployError> {
        self.patch(name, &contract::DeploymentPatch { replicas: Some(replicas), ..Default::default() })
    }

    /// Pauses or resumes the running rollout, or undoes the last change (the version
    /// before rolls out as a new one).
    pub fn rollout(&self, name: &NodeId, action: RolloutAction) -> Result<(), DeployError> {
        let mut st = self.lock();
        let mut record = st.deployments.get(name).cloned().ok_or_else(|| DeployError::NotFound(name.clone()))?;
        let state = record.rollout.as_ref().map(|r| r.state);
        match (action, state) {
            (RolloutAction::Pause, Some(contract::RolloutState::Running)) => {
                if let Some(r) = record.rollout.as_mut() {
                    r.state = contract::RolloutState::Paused;
                }
            }
            (RolloutAction::Resume, Some(contract::RolloutState::Paused)) => {
                if let Some(r) = record.rollout.as_mut() {
                    r.state = contract::RolloutState::Running;
                }
            }
            (RolloutAction::Undo, _) => {
                let before = record.older.keys().next_back().copied();
                let Some(spec) = before.and_then(|v| record.older.get(&v)).cloned() else {
                    return Err(DeployError::Conflict(format!("{name} has no earlier version to go back to")));
                };
                // Its replica count and policy stay as they are now: undo is of what runs.
                let spec =
                    contract::DeploymentSpec { replicas: record.spec.replicas, update: record.spec.update, ..spec };
                record.roll_to(spec, self.wall.now());
            }
            (action, _) => {
                let said = state.map(|s| s.as_str()).unwrap_or("none");
                return Err(DeployError::Conflict(format!(
                    "cannot {} the rollout of {name}: it is {said}",
                    action.as_str()
                )));
            }
        }
        self.store.apply(&Batch { put_deployments: vec![record.clone()], ..Default::default() })?;
        st.deployments.insert(name.clone(), record);
        Ok(())
    }

    /// Restarts one replica where it runs: a new instance under the next name, which its
    /// hive starts as it stops the old one. `replica` is the running instance's name or
    /// the slot's (`web-0`).
    pub fn restart_replica(&self, replica: &NodeId) -> Result<Assignment, DeployError> {
        let mut st = self.lock();
        let key = st
            .placement
            .assignments
            .iter()
            .find(|(key, a)| *key == replica || &a.worker == replica)
            .map(|(key, _)| key.clone())
            .ok_or_else(|| DeployError::NoReplica(replica.clone()))?;
        let mut a = st.placement.assignments[&key].clone();
        if a.hive.is_none() || a.retiring.is_some() {
            let why = if a.hive.is_none() { "placed on no hive" } else { "being replaced already" };
            return Err(DeployError::Conflict(format!("{replica} is {why}")));
        }
        a.generation += 1;
        a.worker = plan::worker_name(&a.deployment, a.slot, a.generation);
        a.since = self.wall.now();
        self.store.apply(&Batch { put_assignments: vec![a.clone()], ..Default::default() })?;
        st.placement.assignments.insert(key, a.clone());
        Ok(a)
    }

    /// The versions a deployment keeps, oldest first, secrets redacted.
    pub fn history(&self, name: &NodeId) -> Option<contract::DeploymentHistory> {
        let st = self.lock();
        let d = st.deployments.get(name)?;
        let mut versions: Vec<contract::DeploymentVersion> = d
            .older
            .iter()
            .map(|(v, spec)| contract::DeploymentVersion { version: *v, spec: spec.redacted(), current: false })
            .collect();
        versions.push(contract::DeploymentVersion { version: d.version, spec: d.spec.redacted(), current: true });
        versions.sort_by_key(|v| v.version);
        Some(contract::DeploymentHistory { name: name.clone(), versions })
    }

    /// Restarts every replica, rolling: the same spec as a new version.
    pub fn restart(&self, name: &NodeId) -> Result<(), DeployError> {
        let mut st = self.lock();
        let mut record = st.deployments.get(name).cloned().ok_or_else(|| DeployError::NotFound(name.clone()))?;
        let same = record.spec.clone();
        record.roll_to(same, self.wall.now());
        self.store.apply(&Batch { put_deployments: vec![record.clone()], ..Default::default() })?;
        st.deployments.insert(name.clone(), record);
        Ok(())
    }

    /// Forgets the deployment; the next reconcile drops its replicas and the hives stop
    /// them gracefully.
    pub fn delete(&self, name: &NodeId) -> Result<(), DeployError> {
        let mut st = self.lock();
        if !st.deployments.contains_key(name) {
            return Err(DeployError::NotFound(name.clone()));
        }
        self.store.apply(&Batch { delete_deployments: vec![name.clone()], ..Default::default() })?;
        st.deployments.remove(name);
        Ok(())
    }

    /// Whether new replicas may go to `hive`, whose process is `epoch`: no operator's mark,
    /// and no drain of its own by this process (or an older one's that it has not outlived).
    pub fn eligible(&self, hive: &NodeId, epoch: u64) -> bool {
        let st = self.lock();
        !st.ineligible.contains(hive) && !st.placement.drains.get(hive).is_some_and(|d| d.holds_out(epoch))
    }

    pub fn ineligible(&self) -> BTreeSet<NodeId> {
        self.lock().ineligible.clone()
    }

    /// Turns new placements on a hive on or off; durable.
    pub fn set_eligible(&self, hive: &NodeId, eligible: bool) -> Result<(), StoreError> {
        let mut st = self.lock();
        let mut next = st.ineligible.clone();
        if eligible {
            next.remove(hive);
        } else {
            next.insert(hive.clone());
        }
        self.store.apply(&Batch { ineligible: Some(next.clone()), ..Default::default() })?;
        st.ineligible = next;
        Ok(())
    }

    /// A replica instance and the hive it was placed on, by its worker name (the running
    /// instance or the one being replaced) or its slot's (`web-0`: whatever runs there now).
    pub fn locate(&self, replica: &NodeId) -> Option<(NodeId, NodeId)> {
        let st = self.lock();
        let placed = |a: &Assignment| Some((a.worker.clone(), a.hive.clone()?));
        st.placement
            .assignments
            .values()
            .find_map(|a| {
                if a.worker == *replica {
                    return placed(a);
                }
                let retiring = a.retiring.as_ref().filter(|r| r.worker == *replica);
                retiring.map(|r| (r.worker.clone(), r.hive.clone()))
            })
            .or_else(|| st.placement.assignments.get(replica).and_then(placed))
    }

    pub fn assignments(&self) -> Vec<Assignment> {
        self.lock().placement.assignments.values().cloned().collect()
    }

    /// A slot runs while its instance heartbeats up on its hive (or, a program that does
    /// not heartbeat, while its hive is up and reports it running), or, while that instance
    /// is being replaced (a drain, a rollout), while the one it replaces still does.
    fn running(nodes: Nodes<'_>, a: &Assignment) -> bool {
        let up = |worker: &NodeId, hive: Option<&NodeId>| {
            let beating = nodes.workers.inspect(worker, |w| w.liveness.is_up() && Some(&w.payload.hive_id) == hive);
            beating.unwrap_or_else(|| {
                let reported = |h: registry::NodeRef<'_, HiveHeartbeat>| {
                    h.liveness.is_up()
                        && h.payload
                            .workers
                            .iter()
                            .any(|p| p.name == *worker && p.state == contract::ProcessState::Running)
                };
                hive.and_then(|h| nodes.hives.inspect(h, reported)).unwrap_or(false)
            })
        };
        up(&a.worker, a.hive.as_ref()) || a.retiring.as_ref().is_some_and(|r| up(&r.worker, Some(&r.hive)))
    }

    fn status(&self, record: &DeploymentRecord, st: &State, nodes: Nodes<'_>) -> DeploymentStatus {
        let assignments: Vec<Assignment> =
            st.placement.assignments.values().filter(|a| a.deployment == record.spec.name).cloned().collect();
        let running = assignments.iter().filter(|a| Self::running(nodes, a)).count() as u32;
        let rollout = record.rollout.as_ref().map(|r| plan::rollout::status(record, r, &assignments, self.wall.now()));
        DeploymentStatus {
            spec: record.spec.redacted(),
            created_at: record.created_at,
            assignments,
            running,
            failed: None,
            version: record.version,
            rollout,
        }
    }

    pub fn list(&self, nodes: Nodes<'_>) -> Vec<DeploymentStatus> {
        let st = self.lock();
        st.deployments.values().map(|d| self.status(d, &st, nodes)).collect()
    }

    pub fn get(&self, name: &NodeId, nodes: Nodes<'_>) -> Option<DeploymentStatus> {
        let st = self.lock();
        st.deployments.get(name).map(|d| self.status(d, &st, nodes))
    }

    pub fn summaries(&self, nodes: Nodes<'_>) -> Vec<DeploymentSummary> {
        // Runs every snapshot tick: one pass over the assignments, counting, cloning nothing.
        let st = self.lock();
        let mut out: BTreeMap<&NodeId, DeploymentSummary> = st
            .deployments
            .values()
            .map(|d| {
                let name = &d.spec.name;
                (name, DeploymentSummary { name: name.clone(), replicas: d.spec.replicas, placed: 0, running: 0 })
            })
            .collect();
        for a in st.placement.assignments.values() {
            if let Some(s) = out.get_mut(&a.deployment) {
                s.placed += u32::from(a.state == AssignmentState::Placed);
                s.running += u32::from(Self::running(nodes, a));
            }
        }
        out.into_values().collect()
    }

    /// One reconcile pass: observe, plan (`plan::plan`), then apply. The store is written
    /// first; memory takes the plan only once that write succeeded, so a failed write
    /// leaves both as they were and the next pass plans again. Then each hive whose
    /// desired set changed is told.
    pub fn reconcile(
        &self,
        hives: &HeartbeatRegistry<HiveHeartbeat>,
        workers: &HeartbeatRegistry<WorkerHeartbeat>,
    ) -> Result<(), StoreError> {
        let now = self.wall.now();
        let Seen { views, failing, ready } = observe(hives);
        self.set_brake(&views);
        let unknown = if self.channels.holding() { views.values().filter(|v| v.processes > 0).count() } else { 0 };
        self.unknown_hives.store(unknown, Ordering::Relaxed);
        if self.gated() {
            // Frozen: a shutting-down cluster moves no work; hives get their phase orders.
            // Beside them, what they run as stored (a leader elected mid-shutdown has told
            // no hive yet, and a phase order with an empty set would stop its replicas
            // before DRAIN says so).
            let desired = desired_sets(&self.lock());
            self.channels.publish(desired);
            return Ok(());
        }
        let available = RegistryWorkers { workers, ready: &ready };
        let observed = Observed {
            hives: &views,
            workers: &available,
            failing: &failing,
            grace_over: !self.in_grace(),
            orphan_after: self.orphan_after,
        };
        let mut st = self.lock();
        let plan = plan::plan(&st.deployments, &st.ineligible, &st.placement, &observed, now);
        self.store.apply(&plan.batch)?;
        st.placement = plan.next;
        // The planner changes a deployment only to carry its rollout on (or revert it).
        for d in &plan.batch.put_deployments {
            st.deployments.insert(d.spec.name.clone(), d.clone());
        }
        let desired = desired_sets(&st);
        drop(st);
        for d in plan.decisions {
            match d.node {
                NodeKind::Worker => self.event(workers, &d.id, d.kind, d.reason),
                node => self.cluster_event(node, &d.id, d.kind, d.reason),
            }
        }
        self.channels.publish(desired);
        Ok(())
    }

    /// The brake follows the hives' picture even while gated; its changes are loud.
    fn set_brake(&self, views: &BTreeMap<NodeId, HiveView>) {
        let brake = plan::brake(views);
        if self.brake.swap(brake, Ordering::Relaxed) == brake {
            return;
        }
        if brake {
            let offline = views.values().filter(|v| v.liveness == registry::Liveness::Offline).count();
            tracing::error!(
                offline,
                of = views.len(),
                "more than half the hives look dead at once: the queen is more likely cut off than they are; not re-placing work until this clears"
            );
        } else {
            tracing::warn!("placement brake released: hives are back");
        }
    }
}

/// What the hives report, read once from the registry.
struct Seen {
    views: BTreeMap<NodeId, HiveView>,
    /// Replicas their hives report crashing: restarting after an exit, or given up on.
    failing: BTreeSet<NodeId>,
    /// Whether each running replica passes its readiness probe (see `SupervisedWorker::ready`).
    ready: BTreeMap<NodeId, bool>,
}

fn observe(hives: &HeartbeatRegistry<HiveHeartbeat>) -> Seen {
    let mut views = BTreeMap::new();
    let mut failing = BTreeSet::new();
    let mut ready = BTreeMap::new();
    hives.visit(|h| {
        let p = h.payload;
        if h.liveness.is_up() {
            let crashing = |w: &&contract::SupervisedWorker| {
                matches!(w.state, contract::ProcessState::Restarting | contract::ProcessState::Failed)
            };
            failing.extend(p.workers.iter().filter(crashing).map(|w| w.name.clone()));
            ready.extend(p.workers.iter().filter_map(|w| Some((w.name.clone(), w.ready?))));
        }
        let ready = h.liveness == registry::Liveness::Online && !h.flapping && p.status == HiveStatus::Ready;
        // A hive that does not say what it offers is limited by its slots alone.
        let offered = |n: u64| if n == 0 { u64::MAX } else { n };
        let candidate = ready.then(|| Candidate {
            labels: p.labels.clone(),
            cpu_percent: p.resources.cpu_percent,
            memory_percent: p.resources.memory_percent(),
            cpu_free: offered(p.capacity.cpu_millis),
            memory_free: offered(p.capacity.memory_bytes),
            ..Candidate::slots(p.id.clone(), p.capacity.max_workers)
        });
        views.insert(
            p.id.clone(),
            HiveView {
                liveness: h.liveness,
                silent_for: h.silent_for,
                processes: p.workers.len(),
                epoch: p.epoch.0,
                candidate,
            },
        );
    });
    Seen { views, failing, ready }
}

/// What each hive should run: every assignment's instance, and the one it is replacing.
fn desired_sets(st: &State) -> BTreeMap<NodeId, Vec<WorkerLaunch>> {
    let mut desired: BTreeMap<NodeId, Vec<WorkerLaunch>> = BTreeMap::new();
    for a in st.placement.assignments.values() {
        let Some(d) = st.deployments.get(&a.deployment) else { continue };
        // Each instance as its version runs it: an old one keeps running unchanged
        // until its replacement is up.
        if let Some(hive) = &a.hive {
            desired.entry(hive.clone()).or_default().push(launch(d.spec_of(a.version), &a.worker));
        }
        if let Some(r) = &a.retiring {
            desired.entry(r.hive.clone()).or_default().push(launch(d.spec_of(r.version), &r.worker));
        }
    }
    desired
}

/// The registries a deployment's status is read against.
#[derive(Clone, Copy)]
pub struct Nodes<'a> {
    pub hives: &'a HeartbeatRegistry<HiveHeartbeat>,
    pub workers: &'a HeartbeatRegistry<WorkerHeartbeat>,
}

/// Workers as the planner asks after them: a replica that heartbeats is up while it says
/// it is available and its hive does not report it failing readiness; one that does not
/// (any program, not only Apiary's worker) is up while its hive reports it ready.
struct RegistryWorkers<'a> {
    workers: &'a HeartbeatRegistry<WorkerHeartbeat>,
    ready: &'a BTreeMap<NodeId, bool>,
}

impl plan::Workers for RegistryWorkers<'_> {
    fn available(&self, worker: &NodeId) -> bool {
        let ready = self.ready.get(worker).copied();
        match self.workers.inspect(worker, |w| w.available) {
            Some(available) => available && ready != Some(false),
            None => ready == Some(true),
        }
    }
}

#[cfg(test)]
mod tests;
