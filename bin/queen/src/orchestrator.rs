//! Deployments, their replicas' assignments to hives, and the commands that tell each
//! hive what to run.
//!
//! One reconcile pass turns "what operators asked for" plus "which hives are alive" into
//! assignments: replicas beyond the count are dropped, replicas whose hive has been gone
//! past the orphan grace are orphaned, and every unplaced replica is offered to the
//! placement strategy. Each hive's desired set is then derived from the assignments and
//! published on its command channel when it changed. Commands carry the whole desired set,
//! so they are idempotent and a hive that reconnects simply gets the current one.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use contract::{
    Assignment, AssignmentState, CommandAck, CommandKind, DeploymentSpec, DeploymentStatus, DeploymentSummary,
    DrainStatus, EventKind, HiveCommand, HiveHeartbeat, HiveStatus, Liveness, NodeEvent, NodeId, NodeKind,
    PlacementStrategy, WorkerHeartbeat, WorkerLaunch,
};
use heartbeat_registry::{self as registry, HeartbeatRegistry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::metrics::DecisionLabels;
use crate::placement::{Candidate, Placer};
use crate::store::{Batch, DeploymentRecord, DrainRecord, Persisted, Store, StoreError};

/// Events about replicas kept for the snapshot.
const EVENTS_KEPT: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("deployment {0} already exists")]
    Exists(NodeId),
    #[error("no deployment named {0}")]
    NotFound(NodeId),
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct State {
    deployments: BTreeMap<NodeId, DeploymentRecord>,
    /// By slot key (the generation-0 worker name).
    assignments: BTreeMap<NodeId, Assignment>,
    placer: Placer,
    /// Hives that get no new replicas; durable.
    ineligible: BTreeSet<NodeId>,
    /// Stored, so a drain goes on under the next leader.
    drains: BTreeMap<NodeId, DrainRecord>,
}

/// One hive's command channel: the latest command, and what it asked for.
struct Channel {
    tx: watch::Sender<Arc<HiveCommand>>,
    desired: Vec<WorkerLaunch>,
    acked: Option<CommandAck>,
}

pub struct Orchestrator {
    state: Mutex<State>,
    store: Box<dyn Store>,
    channels: Mutex<BTreeMap<NodeId, Channel>>,
    next_command: AtomicU64,
    /// Shared with the registries so replica events and liveness events form one order.
    event_seq: Arc<AtomicU64>,
    events: Mutex<VecDeque<NodeEvent>>,
    /// A hive offline this long has its replicas placed elsewhere.
    orphan_grace: Duration,
    /// On while more than half the hives look dead at once.
    brake: AtomicBool,
    /// Set from a cluster shutdown's GATE on: no deployments change, nothing is placed or
    /// orphaned, and each hive's desired state carries its phase order.
    gate: AtomicBool,
    phase_orders: Mutex<BTreeMap<NodeId, contract::PhaseOrder>>,
    /// Woken by every ACK, so a shutdown phase ends as soon as its last ACK is in.
    pub acks: tokio::sync::Notify,
    /// A queen that just started has not heard from every hive yet: a hive it does not
    /// know is not taken for gone until the orphan threshold has passed since the start.
    started: Mutex<std::time::Instant>,
    /// Placement decisions by kind, for `/metrics`.
    pub decisions: Family<DecisionLabels, Counter>,
}

/// A hive as reconcile sees it.
struct HiveView {
    liveness: registry::Liveness,
    silent_for: Duration,
    /// Worker processes the hive last reported.
    processes: usize,
    candidate: Option<Candidate>,
}

fn launch(spec: &DeploymentSpec, worker: &NodeId) -> WorkerLaunch {
    WorkerLaunch {
        name: worker.clone(),
        deployment: spec.name.clone(),
        command: spec.command.clone(),
        args: spec.args.clone(),
        env: spec.env.clone(),
        max_restarts: spec.max_restarts,
    }
}

/// The worker's id for one instance of a slot: `web-3`, then `web-3.1`, `web-3.2` for the
/// instances drains start elsewhere. Generation 0 is also the slot's key.
fn worker_name(deployment: &NodeId, slot: u32, generation: u32) -> NodeId {
    // The spec's validation keeps the name short enough for the suffixes.
    match generation {
        0 => NodeId::sanitized(&format!("{deployment}-{slot}")),
        g => NodeId::sanitized(&format!("{deployment}-{slot}.{g}")),
    }
}

/// Replicas one drain moves at the same time: a drain must not take a deployment's
/// capacity down by more than this while it waits for new instances to come up.
const MOVING_AT_ONCE: usize = 2;
/// How long a drain may take unless told otherwise.
pub const DEFAULT_DRAIN_DEADLINE: Duration = Duration::from_secs(300);

impl Orchestrator {
    pub fn open(store: Box<dyn Store>, orphan_grace: Duration, event_seq: Arc<AtomicU64>) -> Result<Self, StoreError> {
        let Persisted { deployments, assignments, strategy, shutdown: _, ineligible, drains } = store.load()?;
        Ok(Self {
            state: Mutex::new(State {
                deployments,
                assignments,
                placer: Placer::new(strategy.unwrap_or_default()),
                ineligible,
                drains,
            }),
            store,
            channels: Mutex::new(BTreeMap::new()),
            next_command: AtomicU64::new(1),
            event_seq,
            events: Mutex::new(VecDeque::new()),
            orphan_grace,
            brake: AtomicBool::new(false),
            gate: AtomicBool::new(false),
            phase_orders: Mutex::new(BTreeMap::new()),
            acks: tokio::sync::Notify::new(),
            started: Mutex::new(std::time::Instant::now()),
            decisions: Family::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn event(&self, workers: &HeartbeatRegistry<WorkerHeartbeat>, worker: &NodeId, kind: EventKind, reason: String) {
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

    /// Sends `order` to each of `hives` (in their desired state, beside their workers)
    /// and returns the id of the command each must ACK.
    pub fn order_phase(&self, hives: &[NodeId], order: contract::PhaseOrder) -> BTreeMap<NodeId, u64> {
        {
            let mut orders = self.phase_orders.lock().unwrap_or_else(|p| p.into_inner());
            for h in hives {
                orders.insert(h.clone(), order.clone());
            }
        }
        let mut ids = BTreeMap::new();
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        for h in hives {
            let workers = channels.get(h).map(|c| c.desired.clone()).unwrap_or_default();
            let command = self.command(h, workers.clone());
            ids.insert(h.clone(), command.id);
            match channels.get_mut(h) {
                Some(ch) => {
                    ch.tx.send_replace(Arc::new(command));
                }
                None => {
                    let (tx, _) = watch::channel(Arc::new(command));
                    channels.insert(h.clone(), Channel { tx, desired: workers, acked: None });
                }
            }
        }
        ids
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
        st.deployments = deployments;
        st.assignments = assignments;
        st.placer = Placer::new(strategy.unwrap_or(st.placer.strategy));
        st.ineligible = ineligible;
        st.drains = drains;
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
        *self.started.lock().unwrap_or_else(|p| p.into_inner()) = std::time::Instant::now();
    }

    pub fn ping(&self) -> Result<(), StoreError> {
        self.store.ping()
    }

    /// Whether this queen started (or was elected) too recently to know every node.
    pub fn in_grace(&self) -> bool {
        self.started.lock().unwrap_or_else(|p| p.into_inner()).elapsed() < self.orphan_grace
    }

    /// For the records the orchestrator does not manage itself (keyed jobs' routes).
    pub fn store(&self) -> &dyn Store {
        &*self.store
    }

    pub fn brake_engaged(&self) -> bool {
        self.brake.load(Ordering::Relaxed)
    }

    pub fn strategy(&self) -> PlacementStrategy {
        self.lock().placer.strategy
    }

    pub fn set_strategy(&self, strategy: PlacementStrategy) -> Result<(), StoreError> {
        let mut st = self.lock();
        self.store.apply(&Batch { strategy: Some(strategy), ..Default::default() })?;
        st.placer = Placer::new(strategy);
        Ok(())
    }

    pub fn create(&self, spec: DeploymentSpec) -> Result<(), DeployError> {
        let mut st = self.lock();
        if st.deployments.contains_key(&spec.name) {
            return Err(DeployError::Exists(spec.name));
        }
        let record = DeploymentRecord { spec, created_at: OffsetDateTime::now_utc() };
        self.store.apply(&Batch { put_deployments: vec![record.clone()], ..Default::default() })?;
        st.deployments.insert(record.spec.name.clone(), record);
        Ok(())
    }

    pub fn scale(&self, name: &NodeId, replicas: u32) -> Result<(), DeployError> {
        let mut st = self.lock();
        let mut record = st.deployments.get(name).cloned().ok_or_else(|| DeployError::NotFound(name.clone()))?;
        record.spec.replicas = replicas;
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

    pub fn eligible(&self, hive: &NodeId) -> bool {
        !self.lock().ineligible.contains(hive)
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

    /// Starts draining a hive: ineligible at once (and durably), then, at each reconcile,
    /// its replicas are started elsewhere a few at a time and the old ones stopped once
    /// the new ones heartbeat. Starting one that runs returns its status unchanged.
    pub fn start_drain(&self, hive: &NodeId, deadline: Duration) -> Result<DrainStatus, StoreError> {
        // A deadline of centuries would overflow the clocks (a panic, found by schemathesis
        // with 121645100408831999 ms); a year is as good as forever for a drain.
        let deadline = deadline.min(Duration::from_secs(365 * 24 * 3600));
        self.set_eligible(hive, false)?;
        let mut st = self.lock();
        let running = st.drains.get(hive).is_some_and(|d| !d.done && !d.cancelled);
        if !running {
            let now = OffsetDateTime::now_utc();
            let mut drains = st.drains.clone();
            drains.insert(
                hive.clone(),
                DrainRecord {
                    started_at: now,
                    deadline: now + deadline,
                    moved: BTreeSet::new(),
                    cancelled: false,
                    done: false,
                    notes: Vec::new(),
                },
            );
            self.store.apply(&Batch { drains: Some(drains.clone()), ..Default::default() })?;
            st.drains = drains;
        }
        Ok(Self::drain_status(&st, hive).unwrap_or_else(|| empty_drain(hive)))
    }

    /// Stops a drain where it stands; the hive stays ineligible. `None`: no drain of it.
    pub fn cancel_drain(&self, hive: &NodeId) -> Result<Option<DrainStatus>, StoreError> {
        let mut st = self.lock();
        let mut drains = st.drains.clone();
        let Some(d) = drains.get_mut(hive) else { return Ok(None) };
        if !d.done {
            d.cancelled = true;
            d.done = true;
            self.store.apply(&Batch { drains: Some(drains.clone()), ..Default::default() })?;
            st.drains = drains;
        }
        // Replacements already running stay; their old instances are retired normally.
        Ok(Self::drain_status(&st, hive))
    }

    pub fn drain(&self, hive: &NodeId) -> Option<DrainStatus> {
        Self::drain_status(&self.lock(), hive)
    }

    pub fn drains(&self) -> Vec<DrainStatus> {
        let st = self.lock();
        st.drains.keys().filter_map(|h| Self::drain_status(&st, h)).collect()
    }

    fn drain_status(st: &State, hive: &NodeId) -> Option<DrainStatus> {
        let d = st.drains.get(hive)?;
        let left = st
            .assignments
            .values()
            .filter(|a| a.hive.as_ref() == Some(hive) || a.retiring.as_ref().is_some_and(|r| &r.hive == hive))
            .count() as u32;
        let moving =
            st.assignments.values().filter(|a| a.retiring.as_ref().is_some_and(|r| &r.hive == hive)).count() as u32;
        let mut replicas: BTreeMap<NodeId, String> = d.moved.iter().map(|w| (w.clone(), "moved".to_string())).collect();
        for a in st.assignments.values() {
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
        })
    }

    /// The drain part of a reconcile pass.
    #[allow(clippy::too_many_arguments)]
    fn drain_step(
        &self,
        workers: &HeartbeatRegistry<WorkerHeartbeat>,
        deployments: &BTreeMap<NodeId, DeploymentRecord>,
        assignments: &mut BTreeMap<NodeId, Assignment>,
        placer: &mut Placer,
        candidates: &mut [Candidate],
        drains: &mut BTreeMap<NodeId, DrainRecord>,
        views: &BTreeMap<NodeId, HiveView>,
        batch: &mut Batch,
    ) {
        let now = OffsetDateTime::now_utc();
        let before = drains.clone();
        // Retire old instances whose replacement is up, or whose hive is gone anyway.
        for a in assignments.values_mut() {
            let Some(r) = a.retiring.clone() else { continue };
            let replacement_up = workers.get(&a.worker).is_some_and(|w| w.available);
            let old_hive_gone = views.get(&r.hive).is_none_or(|v| !v.liveness.is_up());
            let deadline_passed = drains.get(&r.hive).is_some_and(|d| now >= d.deadline);
            if replacement_up || old_hive_gone || deadline_passed {
                self.event(
                    workers,
                    &r.worker,
                    EventKind::Retired,
                    format!("retired from {}: {} took over", r.hive, a.worker),
                );
                if let Some(d) = drains.get_mut(&r.hive) {
                    d.moved.insert(a.worker.clone());
                }
                a.retiring = None;
                batch.put_assignments.push(a.clone());
            }
        }
        for (hive, drain) in drains.iter_mut().filter(|(_, d)| !d.done) {
            let past_deadline = now >= drain.deadline;
            let mut moving =
                assignments.values().filter(|a| a.retiring.as_ref().is_some_and(|r| &r.hive == hive)).count();
            for a in assignments.values_mut().filter(|a| a.hive.as_ref() == Some(hive) && a.retiring.is_none()) {
                if past_deadline {
                    // Whatever could not move is stopped anyway, and said so.
                    drain.notes.push(format!("{} stopped at the deadline without a new home", a.worker));
                    self.event(
                        workers,
                        &a.worker,
                        EventKind::Pending,
                        format!("drain of {hive}: stopped at the deadline"),
                    );
                    a.hive = None;
                    a.state = AssignmentState::Pending;
                    a.since = now;
                    batch.put_assignments.push(a.clone());
                    continue;
                }
                if moving >= MOVING_AT_ONCE {
                    continue;
                }
                let Some(d) = deployments.get(&a.deployment) else { continue };
                match placer.pick(candidates, &d.spec.labels_required) {
                    Some(target) => {
                        let old = a.worker.clone();
                        a.generation += 1;
                        a.worker = worker_name(&a.deployment, a.slot, a.generation);
                        a.retiring = Some(contract::Retiring { hive: hive.clone(), worker: old.clone() });
                        a.hive = Some(target.clone());
                        a.moves += 1;
                        a.since = now;
                        moving += 1;
                        self.event(
                            workers,
                            &a.worker,
                            EventKind::Placed,
                            format!("placed on {target}, replacing {old} on draining {hive}"),
                        );
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
            let left = assignments
                .values()
                .any(|a| a.hive.as_ref() == Some(hive) || a.retiring.as_ref().is_some_and(|r| &r.hive == hive));
            // Done when the processes have exited, not when they were told to.
            let exited = views.get(hive).is_none_or(|v| !v.liveness.is_up() || v.processes == 0);
            if !left && exited {
                drain.done = true;
                self.cluster_event(
                    NodeKind::Hive,
                    hive,
                    EventKind::PhaseDone,
                    format!("drain done: {} replicas moved", drain.moved.len()),
                );
            }
        }
        if *drains != before {
            batch.drains = Some(drains.clone());
        }
    }

    pub fn assignments(&self) -> Vec<Assignment> {
        self.lock().assignments.values().cloned().collect()
    }

    fn running(workers: &HeartbeatRegistry<WorkerHeartbeat>, a: &Assignment) -> bool {
        workers.get(&a.worker).is_some_and(|w| w.liveness.is_up() && Some(&w.payload.hive_id) == a.hive.as_ref())
    }

    fn status(
        &self,
        record: &DeploymentRecord,
        st: &State,
        workers: &HeartbeatRegistry<WorkerHeartbeat>,
    ) -> DeploymentStatus {
        let assignments: Vec<Assignment> =
            st.assignments.values().filter(|a| a.deployment == record.spec.name).cloned().collect();
        let running = assignments.iter().filter(|a| Self::running(workers, a)).count() as u32;
        DeploymentStatus { spec: record.spec.clone(), created_at: record.created_at, assignments, running }
    }

    pub fn list(&self, workers: &HeartbeatRegistry<WorkerHeartbeat>) -> Vec<DeploymentStatus> {
        let st = self.lock();
        st.deployments.values().map(|d| self.status(d, &st, workers)).collect()
    }

    pub fn get(&self, name: &NodeId, workers: &HeartbeatRegistry<WorkerHeartbeat>) -> Option<DeploymentStatus> {
        let st = self.lock();
        st.deployments.get(name).map(|d| self.status(d, &st, workers))
    }

    pub fn summaries(&self, workers: &HeartbeatRegistry<WorkerHeartbeat>) -> Vec<DeploymentSummary> {
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
        for a in st.assignments.values() {
            if let Some(s) = out.get_mut(&a.deployment) {
                s.placed += u32::from(a.state == AssignmentState::Placed);
                s.running += u32::from(Self::running(workers, a));
            }
        }
        out.into_values().collect()
    }

    /// One reconcile pass; see the module doc.
    pub fn reconcile(
        &self,
        hives: &HeartbeatRegistry<HiveHeartbeat>,
        workers: &HeartbeatRegistry<WorkerHeartbeat>,
    ) -> Result<(), StoreError> {
        let now = OffsetDateTime::now_utc();
        let mut views: BTreeMap<NodeId, HiveView> = BTreeMap::new();
        hives.visit(|h| {
            let p = h.payload;
            let ready = h.liveness == registry::Liveness::Online && !h.flapping && p.status == HiveStatus::Ready;
            let candidate = ready.then(|| Candidate {
                id: p.id.clone(),
                labels: p.labels.clone(),
                max_workers: p.capacity.max_workers,
                assigned: 0,
                cpu_percent: p.resources.cpu_percent,
                memory_percent: p.resources.memory_percent(),
            });
            views.insert(
                p.id.clone(),
                HiveView { liveness: h.liveness, silent_for: h.silent_for, processes: p.workers.len(), candidate },
            );
        });
        let counted = views.values().filter(|v| v.liveness != registry::Liveness::Stopped).count();
        let offline = views.values().filter(|v| v.liveness == registry::Liveness::Offline).count();
        let brake = counted >= 2 && offline * 2 > counted;
        if self.brake.swap(brake, Ordering::Relaxed) != brake {
            if brake {
                tracing::error!(
                    offline,
                    of = counted,
                    "more than half the hives look dead at once: the queen is more likely cut off than they are; not re-placing work until this clears"
                );
            } else {
                tracing::warn!("placement brake released: hives are back");
            }
        }

        if self.gated() {
            // Frozen: a shutting-down cluster moves no work; hives get their phase orders.
            return Ok(());
        }
        let mut st = self.lock();
        let mut batch = Batch::default();
        let State { deployments, assignments, placer, ineligible, drains } = &mut *st;

        // Replicas nobody wants any more.
        assignments.retain(|w, a| {
            let keep = deployments.get(&a.deployment).is_some_and(|d| a.slot < d.spec.replicas);
            if !keep {
                batch.delete_assignments.push(w.clone());
            }
            keep
        });

        // Replicas whose hive is gone.
        let started = *self.started.lock().unwrap_or_else(|p| p.into_inner());
        for a in assignments.values_mut().filter(|a| a.state == AssignmentState::Placed) {
            let Some(hive) = a.hive.clone() else { continue };
            let reason = match views.get(&hive) {
                None if started.elapsed() >= self.orphan_grace => Some(format!("hive {hive} is unknown")),
                None => None,
                Some(v) if v.liveness == registry::Liveness::Stopped => Some(format!("hive {hive} stopped")),
                Some(v) if v.liveness == registry::Liveness::Offline && v.silent_for >= self.orphan_grace && !brake => {
                    Some(format!("hive {hive} offline for {} s", v.silent_for.as_secs()))
                }
                _ => None,
            };
            if let Some(reason) = reason {
                a.state = AssignmentState::Orphaned;
                a.hive = None;
                a.since = now;
                a.moves += 1;
                self.event(workers, &a.worker, EventKind::Orphaned, reason);
                batch.put_assignments.push(a.clone());
            }
        }

        // Slots that have no assignment yet.
        for d in deployments.values() {
            for slot in 0..d.spec.replicas {
                let worker = worker_name(&d.spec.name, slot, 0);
                assignments.entry(worker.clone()).or_insert_with(|| Assignment {
                    deployment: d.spec.name.clone(),
                    slot,
                    worker,
                    hive: None,
                    state: AssignmentState::Pending,
                    since: now,
                    moves: 0,
                    restarts: 0,
                    generation: 0,
                    retiring: None,
                });
            }
        }

        // Offer every unplaced replica to the strategy, counting what each hive holds.
        let mut candidates: Vec<Candidate> =
            views.values().filter_map(|v| v.candidate.clone()).filter(|c| !ineligible.contains(&c.id)).collect();
        for a in assignments.values() {
            let holders = a.hive.iter().chain(a.retiring.iter().map(|r| &r.hive));
            for h in holders {
                if let Some(c) = candidates.iter_mut().find(|c| &c.id == h) {
                    c.assigned += 1;
                }
            }
        }
        self.drain_step(workers, deployments, assignments, placer, &mut candidates, drains, &views, &mut batch);
        for a in assignments.values_mut().filter(|a| a.hive.is_none()) {
            let Some(d) = deployments.get(&a.deployment) else { continue };
            match placer.pick(&mut candidates, &d.spec.labels_required) {
                Some(hive) => {
                    self.event(
                        workers,
                        &a.worker,
                        EventKind::Placed,
                        format!("placed on {hive} ({})", placer.strategy.as_str()),
                    );
                    a.hive = Some(hive);
                    a.state = AssignmentState::Placed;
                    a.since = now;
                    batch.put_assignments.push(a.clone());
                }
                // Said once, when the replica first finds no room.
                None if a.state != AssignmentState::Pending || a.since == now => {
                    a.state = AssignmentState::Pending;
                    self.event(workers, &a.worker, EventKind::Pending, "no hive with room and matching labels".into());
                    batch.put_assignments.push(a.clone());
                }
                None => {}
            }
        }
        self.store.apply(&batch)?;

        // What each hive should run now.
        let mut desired: BTreeMap<NodeId, Vec<WorkerLaunch>> = BTreeMap::new();
        for a in assignments.values() {
            let Some(d) = deployments.get(&a.deployment) else { continue };
            if let Some(hive) = &a.hive {
                desired.entry(hive.clone()).or_default().push(launch(&d.spec, &a.worker));
            }
            if let Some(r) = &a.retiring {
                desired.entry(r.hive.clone()).or_default().push(launch(&d.spec, &r.worker));
            }
        }
        drop(st);
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let hives: BTreeSet<NodeId> = channels.keys().cloned().chain(desired.keys().cloned()).collect();
        for hive in hives {
            let want = desired.remove(&hive).unwrap_or_default();
            match channels.get_mut(&hive) {
                Some(ch) if ch.desired == want => {}
                Some(ch) => {
                    ch.tx.send_replace(Arc::new(self.command(&hive, want.clone())));
                    ch.desired = want;
                }
                None => {
                    let (tx, _) = watch::channel(Arc::new(self.command(&hive, want.clone())));
                    channels.insert(hive, Channel { tx, desired: want, acked: None });
                }
            }
        }
        Ok(())
    }

    fn command(&self, hive: &NodeId, workers: Vec<WorkerLaunch>) -> HiveCommand {
        let shutdown = self.phase_orders.lock().unwrap_or_else(|p| p.into_inner()).get(hive).cloned();
        HiveCommand {
            id: self.next_command.fetch_add(1, Ordering::Relaxed),
            kind: CommandKind::Assign { workers, shutdown },
        }
    }

    /// The command stream of one hive, starting with its current desired set.
    pub fn subscribe(&self, hive: &NodeId) -> watch::Receiver<Arc<HiveCommand>> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ch) = channels.get(hive) {
            return ch.tx.subscribe();
        }
        let (tx, rx) = watch::channel(Arc::new(self.command(hive, Vec::new())));
        channels.insert(hive.clone(), Channel { tx, desired: Vec::new(), acked: None });
        rx
    }

    pub fn ack(&self, hive: &NodeId, ack: CommandAck) {
        if !ack.ok {
            tracing::warn!(%hive, command = ack.command_id, detail = %ack.detail, "hive could not apply a command");
        }
        if let Some(ch) = self.channels.lock().unwrap_or_else(|p| p.into_inner()).get_mut(hive) {
            ch.acked = Some(ack);
        }
        self.acks.notify_waiters();
    }

    /// The last ACK a hive sent.
    pub fn last_ack(&self, hive: &NodeId) -> Option<CommandAck> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner()).get(hive).and_then(|c| c.acked.clone())
    }
}

/// What `start_drain` answers if the drain it just recorded cannot be read back (it always
/// can; this keeps the signature free of an `Option` nobody could act on).
fn empty_drain(hive: &NodeId) -> DrainStatus {
    let now = OffsetDateTime::now_utc();
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
    }
}
