//! The cluster shutdown sequencer: GATE → DRAIN → STORAGE → PERSIST → INFRA.
//!
//! Each phase is ordered to every hive that was online when it began (inside the hive's
//! desired state on the control channel) and waits for each one's ACK up to the phase
//! timeout. A hive that fails or does not answer stops the sequence, unless `force`.
//! The state is written to the store at every step, so a queen that restarts midway
//! resumes the phase it was in, with the same hives; and it is in every snapshot.

mod phase;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use contract::{
    EventKind, NodeId, NodeKind, Phase, PhaseOrder, PhaseReport, PhaseStatus, ShutdownAnswer, ShutdownPlan,
    ShutdownRequest, ShutdownState, ShutdownStatus,
};
// The phase deadlines follow tokio's clock, so a paused clock drives them in tests.
use lifecycle::http::ApiError;
use time::OffsetDateTime;
use tokio::time::Instant;

use crate::Queen;
use crate::orchestrator::Orchestrator;
use crate::store::StoreError;

const POLL: Duration = Duration::from_millis(100);
const DEFAULT_DRAIN: Duration = Duration::from_secs(30);
/// Time for the ACK to travel after the drain deadline, on top of it.
const ACK_MARGIN: Duration = Duration::from_secs(15);

fn timings(req: &ShutdownRequest) -> (u64, u64) {
    let drain = req.drain_deadline_ms.unwrap_or(DEFAULT_DRAIN.as_millis() as u64);
    (drain, req.phase_timeout_ms.unwrap_or(drain + ACK_MARGIN.as_millis() as u64))
}

/// The cluster shutdown, running or ended, as this queen holds it. Every change is
/// written to the store first and taken into memory only once written.
#[derive(Default)]
pub struct Sequencer {
    state: Mutex<Option<ShutdownState>>,
}

impl Sequencer {
    pub fn new(stored: Option<ShutdownState>) -> Self {
        Self { state: Mutex::new(stored) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<ShutdownState>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The shutdown as it stands, for the snapshot and `GET /v1/cluster/shutdown`.
    pub fn current(&self) -> Option<ShutdownState> {
        self.lock().clone()
    }

    /// Takes the stored state as this queen's (a follower, or a queen just elected).
    /// Says whether a shutdown this queen saw running has completed since.
    pub fn adopt(&self, stored: Option<ShutdownState>) -> bool {
        let mut state = self.lock();
        let was_running = state.as_ref().is_some_and(|s| s.status == ShutdownStatus::Running);
        let completed = stored.as_ref().is_some_and(|s| s.status == ShutdownStatus::Completed);
        *state = stored;
        was_running && completed
    }

    /// Changes the running shutdown's state: `f` works on a copy, the copy is written,
    /// and only then is it this queen's. `None` when there is no shutdown.
    fn update(
        &self,
        orchestrator: &Orchestrator,
        f: impl FnOnce(&mut ShutdownState),
    ) -> Option<Result<ShutdownState, StoreError>> {
        let mut state = self.lock();
        let mut next = state.clone()?;
        f(&mut next);
        Some(orchestrator.save_shutdown(&next).map(|()| {
            *state = Some(next.clone());
            next
        }))
    }
}

/// How long a step of the sequence keeps trying to write its state before it gives up.
const SAVE_PATIENCE: Duration = Duration::from_secs(10);

/// A step whose record must be written before the sequence goes on (a phase's start and
/// end): retried while the store refuses, for [`SAVE_PATIENCE`]. `None`: no shutdown, or
/// the store stayed down (the sequence stops; the stored state resumes it later).
async fn update_durably(queen: &Queen, mut f: impl FnMut(&mut ShutdownState)) -> Option<ShutdownState> {
    let deadline = Instant::now() + SAVE_PATIENCE;
    loop {
        match queen.shutdown.update(&queen.orchestrator, &mut f)? {
            Ok(state) => return Some(state),
            Err(e) if Instant::now() < deadline => {
                tracing::warn!(error = %e, "could not write the shutdown state; retrying");
                tokio::time::sleep(POLL).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "could not write the shutdown state; the sequence stops here");
                return None;
            }
        }
    }
}

fn plan(queen: &Queen, req: &ShutdownRequest) -> ShutdownPlan {
    let (drain, timeout) = timings(req);
    let mut hives: BTreeMap<NodeId, Vec<NodeId>> =
        queen.ingest.online_hives().into_iter().map(|h| (h, Vec::new())).collect();
    for w in queen.ingest.workers.list_online() {
        if let Some(list) = hives.get_mut(&w.payload.hive_id) {
            list.push(w.payload.id);
        }
    }
    ShutdownPlan { phases: Phase::ALL.to_vec(), hives, drain_deadline_ms: drain, phase_timeout_ms: timeout }
}

fn phase_event(queen: &Queen, kind: EventKind, reason: String) {
    queen.orchestrator.cluster_event(NodeKind::Queen, &NodeId::sanitized("cluster"), kind, reason);
}

/// `POST /v1/cluster/shutdown`.
pub fn start(queen: &Arc<Queen>, req: ShutdownRequest) -> Result<ShutdownAnswer, ApiError> {
    if req.dry_run {
        return Ok(ShutdownAnswer::Plan(plan(queen, &req)));
    }
    let (drain, timeout) = timings(&req);
    let unavailable = |e: StoreError| ApiError::unavailable("store_unavailable", e.to_string(), Duration::from_secs(1));
    let mut guard = queen.shutdown.lock();
    if let Some(running) = guard.as_ref().filter(|s| s.status == ShutdownStatus::Running) {
        if req.force {
            let mut forced = running.clone();
            forced.force = true;
            queen.orchestrator.save_shutdown(&forced).map_err(unavailable)?;
            *guard = Some(forced.clone());
            tracing::warn!("cluster shutdown: force turned on for the running sequence");
            return Ok(ShutdownAnswer::Started(forced));
        }
        let phase = running.current().map(|p| p.phase.name()).unwrap_or("?");
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "shutdown_running",
            format!("a cluster shutdown is already running (phase {phase}); --force pushes it past a stuck phase"),
        ));
    }
    let state = ShutdownState {
        status: ShutdownStatus::Running,
        force: req.force,
        drain_deadline_ms: drain,
        phase_timeout_ms: timeout,
        started_at: OffsetDateTime::now_utc(),
        phases: Phase::ALL
            .iter()
            .map(|&phase| PhaseReport {
                phase,
                status: PhaseStatus::Pending,
                started_at: None,
                ended_at: None,
                hives: BTreeMap::new(),
            })
            .collect(),
        failure: String::new(),
    };
    queen.orchestrator.save_shutdown(&state).map_err(unavailable)?;
    *guard = Some(state.clone());
    drop(guard);
    tracing::warn!(drain_ms = drain, phase_timeout_ms = timeout, force = req.force, "cluster shutdown starting");
    queen.tasks.spawn(sequence(Arc::clone(queen)));
    Ok(ShutdownAnswer::Started(state))
}

/// Resumes a shutdown the store says was running when the queen stopped.
pub fn resume(queen: &Arc<Queen>) {
    if queen.shutdown.current().is_some_and(|s| s.status == ShutdownStatus::Running) {
        tracing::warn!("resuming the cluster shutdown that was running when the queen stopped");
        queen.tasks.spawn(sequence(Arc::clone(queen)));
    }
}

async fn sequence(queen: Arc<Queen>) {
    for phase in Phase::ALL {
        // A queen that stopped leading stops sequencing; the new leader resumes from the
        // stored state.
        if !queen.is_leader() {
            tracing::warn!("no longer the leader; the cluster shutdown continues on the new one");
            return;
        }
        let status =
            queen.shutdown.current().and_then(|s| s.phases.iter().find(|p| p.phase == phase).map(|p| p.status));
        match status {
            Some(PhaseStatus::Done | PhaseStatus::Forced) => {
                if phase == Phase::Gate {
                    queen.orchestrator.set_gate();
                }
            }
            Some(PhaseStatus::Pending | PhaseStatus::Running) => {
                if !run_phase(&queen, phase).await {
                    return;
                }
            }
            Some(PhaseStatus::Failed) | None => return,
        }
    }
}

fn report(state: &mut ShutdownState, phase: Phase) -> Option<&mut PhaseReport> {
    state.phases.iter_mut().find(|p| p.phase == phase)
}

/// Runs one phase; false when the sequence stops here (failure, or the queen leaving).
/// The rules are `phase`'s; this applies them, saving the state after each step.
async fn run_phase(queen: &Arc<Queen>, phase: Phase) -> bool {
    let started = Instant::now();
    let online = queen.ingest.online_hives();
    let now = OffsetDateTime::now_utc();
    let begun = update_durably(queen, |s| {
        if let Some(r) = report(s, phase) {
            phase::begin(r, &online, now);
        }
    });
    let Some(state) = begun.await else {
        return false;
    };
    let participants: Vec<NodeId> =
        state.phases.iter().find(|p| p.phase == phase).map(|p| p.hives.keys().cloned().collect()).unwrap_or_default();
    phase_event(queen, EventKind::PhaseStarted, format!("{} started: {} hives", phase.name(), participants.len()));
    // Phase changes go out at once, not at the next tick: dashboards and the CLI follow.
    queen.publish_snapshot();
    tracing::warn!(phase = phase.name(), hives = participants.len(), "cluster shutdown phase");

    match phase {
        Phase::Gate => queen.orchestrator.set_gate(),
        Phase::Persist => queen.write_final_state(),
        _ => {}
    }
    let ids = queen
        .orchestrator
        .channels
        .order_phase(&participants, PhaseOrder { phase, deadline_ms: state.drain_deadline_ms });
    let timeout = Duration::from_millis(state.phase_timeout_ms);
    if phase == Phase::Infra {
        run_infra(queen, &participants, started, timeout).await;
        return false;
    }

    let deadline = started + timeout;
    loop {
        // Registered before looking, so an ACK that lands in between still wakes us.
        let acked = queen.orchestrator.channels.acks.notified();
        let mut waiting = 0;
        let mut answers = Vec::new();
        // Not retried: the ACKs stay with the channels, the next poll takes them again.
        let _ = queen.shutdown.update(&queen.orchestrator, |s| {
            if let Some(r) = report(s, phase) {
                let workers_left =
                    |h: &NodeId| queen.ingest.hives.get(h).map(|v| v.payload.workers.len() as u32).unwrap_or(0);
                (waiting, answers) =
                    phase::take_acks(r, &ids, |h| queen.orchestrator.channels.last_ack(h), workers_left);
            }
        });
        for a in answers {
            let (kind, word) = if a.ok { (EventKind::Acked, "ACK") } else { (EventKind::AckFailed, "failed") };
            queen.orchestrator.cluster_event(
                NodeKind::Hive,
                &a.hive,
                kind,
                format!("{} {word}: {}", phase.name(), a.detail),
            );
            if !a.ok {
                queen.count_ack_failure(phase);
            }
        }
        if waiting == 0 || Instant::now() >= deadline {
            break;
        }
        if !queen.is_leader() {
            return false;
        }
        // The poll keeps workers-left fresh from heartbeats; an ACK ends the wait at once.
        tokio::select! {
            _ = acked => {}
            _ = tokio::time::sleep(POLL) => {}
        }
    }

    let mut failed = Vec::new();
    let ended = OffsetDateTime::now_utc();
    let state = update_durably(queen, |s| {
        let force = s.force;
        let Some(r) = report(s, phase) else { return };
        failed = phase::conclude(r, force, timeout, ended);
        if r.status == PhaseStatus::Failed {
            let why: Vec<&str> = failed.iter().map(|f| f.text.as_str()).collect();
            s.status = ShutdownStatus::Failed;
            s.failure = format!("{}: {}", phase.name(), why.join("; "));
        }
    })
    .await;
    queen.observe_phase(phase, started.elapsed());
    for f in failed.iter().filter(|f| f.timed_out) {
        queen.orchestrator.cluster_event(
            NodeKind::Hive,
            &f.hive,
            EventKind::AckFailed,
            format!("{}: {}", phase.name(), f.text),
        );
        queen.count_ack_failure(phase);
    }
    let status = state.as_ref().and_then(|s| s.phases.iter().find(|p| p.phase == phase).map(|p| p.status));
    let took = started.elapsed().as_millis();
    queen.publish_snapshot();
    match status {
        Some(PhaseStatus::Done) => {
            phase_event(queen, EventKind::PhaseDone, format!("{} done in {took} ms", phase.name()));
            true
        }
        Some(PhaseStatus::Forced) => {
            let why: Vec<&str> = failed.iter().map(|f| f.text.as_str()).collect();
            phase_event(
                queen,
                EventKind::PhaseDone,
                format!("{} forced on after {took} ms: {}", phase.name(), why.join("; ")),
            );
            true
        }
        _ => {
            let why = state.map(|s| s.failure).unwrap_or_default();
            tracing::error!(failure = %why, "cluster shutdown stopped");
            phase_event(queen, EventKind::PhaseFailed, format!("shutdown stopped at {why}"));
            false
        }
    }
}

/// INFRA: nobody can ACK an exit; wait (bounded) until the hives said goodbye, then the
/// queen leaves last.
async fn run_infra(queen: &Arc<Queen>, participants: &[NodeId], started: Instant, timeout: Duration) {
    let up = |h: &NodeId| queen.ingest.hives.get(h).is_some_and(|v| v.liveness.is_up());
    let deadline = started + timeout;
    while Instant::now() < deadline && participants.iter().any(up) {
        tokio::time::sleep(POLL).await;
    }
    let ended = OffsetDateTime::now_utc();
    update_durably(queen, |s| {
        if let Some(r) = report(s, Phase::Infra) {
            phase::conclude_infra(r, up, ended);
        }
        s.status = ShutdownStatus::Completed;
    })
    .await;
    queen.observe_phase(Phase::Infra, started.elapsed());
    phase_event(
        queen,
        EventKind::PhaseDone,
        format!("INFRA done: hives gone in {} ms; the queen exits", started.elapsed().as_millis()),
    );
    queen.publish_snapshot();
    queen.stop.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A queen in-process with one hive that heartbeats once and never answers a command.
    fn queen_with_a_silent_hive() -> anyhow::Result<Arc<Queen>> {
        let config = crate::QueenConfig::with_intervals(Duration::from_secs(1), Duration::from_secs(1))?;
        let me = contract::QueenRef { id: "q".into(), url: "http://127.0.0.1:1".into() };
        let queen = Queen::new(
            config,
            me,
            tokio_util::sync::CancellationToken::new(),
            tokio_util::task::TaskTracker::new(),
            None,
        )?;
        queen.ingest.hives.upsert(serde_json::from_str(contract::examples::HIVE_HEARTBEAT)?);
        Ok(queen)
    }

    #[tokio::test(start_paused = true)]
    async fn a_hive_that_never_acks_fails_gate_at_the_phase_timeout() -> anyhow::Result<()> {
        let queen = queen_with_a_silent_hive()?;
        let began = Instant::now();
        let req = ShutdownRequest { phase_timeout_ms: Some(60_000), ..Default::default() };
        start(&queen, req).map_err(|e| anyhow::anyhow!("{}", e.message))?;
        // Virtual time: each sleep lets the sequencer's own polls run up to its deadline.
        while queen.shutdown.current().is_some_and(|s| s.status == ShutdownStatus::Running) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert!(began.elapsed() < Duration::from_secs(120), "the phase never ended");
        }
        let state = queen.shutdown.current().expect("recorded");
        assert_eq!(state.status, ShutdownStatus::Failed);
        assert_eq!(state.failure, "GATE: hive-1 did not ACK within 60 s");
        let waited = began.elapsed();
        assert!(waited >= Duration::from_secs(60) && waited <= Duration::from_secs(62), "waited {waited:?}");
        assert!(queen.orchestrator.gated(), "GATE's own part ran before the wait");
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn force_carries_a_phase_past_a_silent_hive() -> anyhow::Result<()> {
        let queen = queen_with_a_silent_hive()?;
        let req = ShutdownRequest { force: true, phase_timeout_ms: Some(10_000), ..Default::default() };
        start(&queen, req).map_err(|e| anyhow::anyhow!("{}", e.message))?;
        while queen.shutdown.current().is_some_and(|s| s.phases[1].status == PhaseStatus::Pending) {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let state = queen.shutdown.current().expect("recorded");
        assert_eq!(state.phases[0].status, PhaseStatus::Forced);
        assert_eq!(state.phases[0].hives[&NodeId::sanitized("hive-1")].status, contract::AckStatus::TimedOut);
        queen.stop.cancel();
        Ok(())
    }
}
