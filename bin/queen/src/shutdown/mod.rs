//! The cluster shutdown sequencer: GATE → DRAIN → STORAGE → PERSIST → INFRA.
//!
//! Each phase is ordered to every hive that was online when it began (inside the hive's
//! desired state on the control channel) and waits for each one's ACK up to the phase
//! timeout. A hive that fails or does not answer stops the sequence, unless `force`.
//! The state is written to the store at every step, so a queen that restarts midway
//! resumes the phase it was in, with the same hives; and it is in every snapshot.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use contract::{
    AckStatus, EventKind, HiveProgress, NodeId, NodeKind, Phase, PhaseOrder, PhaseReport, PhaseStatus, ShutdownAnswer,
    ShutdownPlan, ShutdownRequest, ShutdownState, ShutdownStatus,
};
use lifecycle::http::ApiError;
use time::OffsetDateTime;

use crate::Queen;

const POLL: Duration = Duration::from_millis(100);
const DEFAULT_DRAIN: Duration = Duration::from_secs(30);
/// Time for the ACK to travel after the drain deadline, on top of it.
const ACK_MARGIN: Duration = Duration::from_secs(15);

fn timings(req: &ShutdownRequest) -> (u64, u64) {
    let drain = req.drain_deadline_ms.unwrap_or(DEFAULT_DRAIN.as_millis() as u64);
    (drain, req.phase_timeout_ms.unwrap_or(drain + ACK_MARGIN.as_millis() as u64))
}

impl Queen {
    fn shutdown_state(&self) -> std::sync::MutexGuard<'_, Option<ShutdownState>> {
        self.shutdown.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The shutdown as it stands, for the snapshot and `GET /v1/cluster/shutdown`.
    pub fn shutdown(&self) -> Option<ShutdownState> {
        self.shutdown_state().clone()
    }

    fn save(&self, state: &ShutdownState) {
        if let Err(e) = self.orchestrator.save_shutdown(state) {
            tracing::error!(error = %e, "could not write the shutdown state");
        }
    }

    /// Changes the running shutdown's state, and writes it down.
    fn update(&self, f: impl FnOnce(&mut ShutdownState)) -> Option<ShutdownState> {
        let mut guard = self.shutdown_state();
        let state = guard.as_mut()?;
        f(state);
        let copy = state.clone();
        drop(guard);
        self.save(&copy);
        Some(copy)
    }

    fn online_hives(&self) -> Vec<NodeId> {
        self.hives.list_online().into_iter().map(|v| v.payload.id).collect()
    }

    fn plan(&self, req: &ShutdownRequest) -> ShutdownPlan {
        let (drain, timeout) = timings(req);
        let mut hives: BTreeMap<NodeId, Vec<NodeId>> =
            self.online_hives().into_iter().map(|h| (h, Vec::new())).collect();
        for w in self.workers.list_online() {
            if let Some(list) = hives.get_mut(&w.payload.hive_id) {
                list.push(w.payload.id);
            }
        }
        ShutdownPlan { phases: Phase::ALL.to_vec(), hives, drain_deadline_ms: drain, phase_timeout_ms: timeout }
    }

    fn phase_event(&self, kind: EventKind, reason: String) {
        self.orchestrator.cluster_event(NodeKind::Queen, &NodeId::sanitized("cluster"), kind, reason);
    }
}

/// `POST /v1/cluster/shutdown`.
pub fn start(queen: &Arc<Queen>, req: ShutdownRequest) -> Result<ShutdownAnswer, ApiError> {
    if req.dry_run {
        return Ok(ShutdownAnswer::Plan(queen.plan(&req)));
    }
    let (drain, timeout) = timings(&req);
    let mut guard = queen.shutdown_state();
    if let Some(running) = guard.as_mut().filter(|s| s.status == ShutdownStatus::Running) {
        if req.force {
            running.force = true;
            let copy = running.clone();
            drop(guard);
            queen.save(&copy);
            tracing::warn!("cluster shutdown: force turned on for the running sequence");
            return Ok(ShutdownAnswer::Started(copy));
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
    queen
        .orchestrator
        .save_shutdown(&state)
        .map_err(|e| ApiError::unavailable("store_unavailable", e.to_string(), Duration::from_secs(1)))?;
    *guard = Some(state.clone());
    drop(guard);
    tracing::warn!(drain_ms = drain, phase_timeout_ms = timeout, force = req.force, "cluster shutdown starting");
    queen.tasks.spawn(sequence(Arc::clone(queen)));
    Ok(ShutdownAnswer::Started(state))
}

/// Resumes a shutdown the store says was running when the queen stopped.
pub fn resume(queen: &Arc<Queen>) {
    if queen.shutdown().is_some_and(|s| s.status == ShutdownStatus::Running) {
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
        let status = queen.shutdown().and_then(|s| s.phases.iter().find(|p| p.phase == phase).map(|p| p.status));
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
async fn run_phase(queen: &Arc<Queen>, phase: Phase) -> bool {
    let started = Instant::now();
    let now = OffsetDateTime::now_utc();
    let online = queen.online_hives();
    let Some(state) = queen.update(|s| {
        if let Some(r) = report(s, phase) {
            // Resumed: the same hives as when the phase began.
            if r.status != PhaseStatus::Running || r.hives.is_empty() {
                r.hives = online
                    .iter()
                    .map(|h| {
                        (h.clone(), HiveProgress { status: AckStatus::Waiting, workers_left: 0, detail: String::new() })
                    })
                    .collect();
            }
            r.status = PhaseStatus::Running;
            r.started_at.get_or_insert(now);
        }
    }) else {
        return false;
    };
    let participants: Vec<NodeId> =
        state.phases.iter().find(|p| p.phase == phase).map(|p| p.hives.keys().cloned().collect()).unwrap_or_default();
    queen.phase_event(EventKind::PhaseStarted, format!("{} started: {} hives", phase.name(), participants.len()));
    // Phase changes go out at once, not at the next tick: dashboards and the CLI follow.
    queen.publish_snapshot();
    tracing::warn!(phase = phase.name(), hives = participants.len(), "cluster shutdown phase");

    match phase {
        Phase::Gate => queen.orchestrator.set_gate(),
        Phase::Persist => queen.write_final_state(),
        _ => {}
    }
    let ids = queen.orchestrator.order_phase(&participants, PhaseOrder { phase, deadline_ms: state.drain_deadline_ms });
    let timeout = Duration::from_millis(state.phase_timeout_ms);

    if phase == Phase::Infra {
        // Nobody can ACK an exit; wait (bounded) until the hives said goodbye, then the
        // queen leaves last.
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline
            && participants.iter().any(|h| queen.hives.get(h).is_some_and(|v| v.liveness.is_up()))
        {
            tokio::time::sleep(POLL).await;
        }
        let done = OffsetDateTime::now_utc();
        queen.update(|s| {
            if let Some(r) = report(s, phase) {
                for (hive, progress) in r.hives.iter_mut() {
                    let gone = queen.hives.get(hive).is_none_or(|v| !v.liveness.is_up());
                    // An exit cannot be ACKed: the goodbye heartbeat stands in for it.
                    (progress.status, progress.detail) = if gone {
                        (AckStatus::Acked, "exited".into())
                    } else {
                        (AckStatus::TimedOut, "still heartbeating".into())
                    };
                }
                r.status = PhaseStatus::Done;
                r.ended_at = Some(done);
            }
            s.status = ShutdownStatus::Completed;
        });
        queen.observe_phase(phase, started.elapsed());
        queen.phase_event(
            EventKind::PhaseDone,
            format!("INFRA done: hives gone in {} ms; the queen exits", started.elapsed().as_millis()),
        );
        queen.publish_snapshot();
        queen.stop.cancel();
        return false;
    }

    let deadline = Instant::now() + timeout;
    loop {
        // Registered before looking, so an ACK that lands in between still wakes us.
        let acked = queen.orchestrator.acks.notified();
        let mut waiting = 0;
        let mut acks = Vec::new();
        queen.update(|s| {
            let Some(r) = report(s, phase) else { return };
            for (hive, progress) in r.hives.iter_mut() {
                progress.workers_left = queen.hives.get(hive).map(|v| v.payload.workers.len() as u32).unwrap_or(0);
                if progress.status != AckStatus::Waiting {
                    continue;
                }
                match queen.orchestrator.last_ack(hive) {
                    Some(ack) if ids.get(hive).is_some_and(|id| ack.command_id >= *id) => {
                        progress.status = if ack.ok { AckStatus::Acked } else { AckStatus::Failed };
                        progress.detail = ack.detail.clone();
                        acks.push((hive.clone(), ack.ok, ack.detail));
                    }
                    _ => waiting += 1,
                }
            }
        });
        for (hive, ok, detail) in acks {
            let (kind, word) = if ok { (EventKind::Acked, "ACK") } else { (EventKind::AckFailed, "failed") };
            queen.orchestrator.cluster_event(NodeKind::Hive, &hive, kind, format!("{} {word}: {detail}", phase.name()));
            if !ok {
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

    let ended = OffsetDateTime::now_utc();
    let mut failed: Vec<String> = Vec::new();
    let state = queen.update(|s| {
        let force = s.force;
        let Some(r) = report(s, phase) else { return };
        for (hive, progress) in r.hives.iter_mut() {
            match progress.status {
                AckStatus::Waiting => {
                    progress.status = AckStatus::TimedOut;
                    failed.push(format!("{hive} did not ACK within {} s", timeout.as_secs()));
                }
                AckStatus::Failed => failed.push(format!("{hive} failed: {}", progress.detail)),
                _ => {}
            }
        }
        r.ended_at = Some(ended);
        r.status = match (failed.is_empty(), force) {
            (true, _) => PhaseStatus::Done,
            (false, true) => PhaseStatus::Forced,
            (false, false) => PhaseStatus::Failed,
        };
        if r.status == PhaseStatus::Failed {
            s.status = ShutdownStatus::Failed;
            s.failure = format!("{}: {}", phase.name(), failed.join("; "));
        }
    });
    queen.observe_phase(phase, started.elapsed());
    for f in failed.iter().filter(|f| f.contains("did not ACK")) {
        let hive = f.split(' ').next().and_then(|h| NodeId::new(h).ok());
        if let Some(hive) = hive {
            queen.orchestrator.cluster_event(
                NodeKind::Hive,
                &hive,
                EventKind::AckFailed,
                format!("{}: {f}", phase.name()),
            );
            queen.count_ack_failure(phase);
        }
    }
    let status = state.as_ref().and_then(|s| s.phases.iter().find(|p| p.phase == phase).map(|p| p.status));
    let took = started.elapsed().as_millis();
    queen.publish_snapshot();
    match status {
        Some(PhaseStatus::Done) => {
            queen.phase_event(EventKind::PhaseDone, format!("{} done in {took} ms", phase.name()));
            true
        }
        Some(PhaseStatus::Forced) => {
            queen.phase_event(
                EventKind::PhaseDone,
                format!("{} forced on after {took} ms: {}", phase.name(), failed.join("; ")),
            );
            true
        }
        _ => {
            let why = state.map(|s| s.failure).unwrap_or_default();
            tracing::error!(failure = %why, "cluster shutdown stopped");
            queen.phase_event(EventKind::PhaseFailed, format!("shutdown stopped at {why}"));
            false
        }
    }
}
