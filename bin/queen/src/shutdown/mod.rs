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
    fn update<R>(
        &self,
        orchestrator: &Orchestrator,
        f: impl FnOnce(&mut ShutdownState) -> R,
    ) -> Option<Result<(ShutdownState, R), StoreError>> {
        let mut state = self.lock();
        let mut next = state.clone()?;
        let answer = f(&mut next);
        Some(orchestrator.save_shutdown(&next).map(|()| {
            *state = Some(next.clone());
            (next, answer)
        }))
    }
}

/// One change of the shutdown state, made off the runtime (it writes the store).
async fn update<R: Send + 'static>(
    queen: &Arc<Queen>,
    f: impl FnOnce(&Arc<Queen>, &mut ShutdownState) -> R + Send + 'static,
) -> Option<Result<(ShutdownState, R), StoreError>> {
    let answer = queen.off_runtime(move |q| q.shutdown.update(&q.orchestrator, |s| f(q, s))).await;
    answer.unwrap_or_else(|e| Some(Err(StoreError::Backend(e.to_string()))))
}

/// How long a step of the sequence keeps trying to write its state before it gives up.
const SAVE_PATIENCE: Duration = Duration::from_secs(10);

/// A step whose record must be written before the sequence goes on (a phase's start and
/// end): retried while the store refuses, for [`SAVE_PATIENCE`]. `None`: no shutdown, or
/// the store stayed down (the sequence stops; the stored state resumes it later).
async fn update_durably<R: Send + 'static>(
    queen: &Arc<Queen>,
    f: impl Fn(&Arc<Queen>, &mut ShutdownState) -> R + Send + Sync + 'static,
) -> Option<(ShutdownState, R)> {
    let f = Arc::new(f);
    let deadline = Instant::now() + SAVE_PATIENCE;
    loop {
        let attempt = Arc::clone(&f);
        match update(queen, move |q, s| attempt(q, s)).await? {
            Ok(done) => return Some(done),
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

/// Publishes a snapshot now, off the runtime: phase changes go out at once, not at the
/// next tick, so dashboards and the CLI follow.
async fn publish(queen: &Arc<Queen>) {
    if let Err(e) = queen.off_runtime(|q| q.publish_snapshot()).await {
        tracing::warn!(error = %e, "snapshot not published");
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
    let state = fresh(req.force, drain, timeout);
    queen.orchestrator.save_shutdown(&state).map_err(unavailable)?;
    *guard = Some(state.clone());
    drop(guard);
    tracing::warn!(drain_ms = drain, phase_timeout_ms = timeout, force = req.force, "cluster shutdown starting");
    queen.tasks.spawn(sequence(Arc::clone(queen)));
    Ok(ShutdownAnswer::Started(state))
}

/// A shutdown about to begin: every phase pending.
fn fresh(force: bool, drain_deadline_ms: u64, phase_timeout_ms: u64) -> ShutdownState {
    ShutdownState {
        status: ShutdownStatus::Running,
        force,
        drain_deadline_ms,
        phase_timeout_ms,
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
    }
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
    let begun = update_durably(queen, move |_, s| {
        if let Some(r) = report(s, phase) {
            phase::begin(r, &online, now);
        }
    });
    let Some((state, ())) = begun.await else {
        return false;
    };
    let participants: Vec<NodeId> =
        state.phases.iter().find(|p| p.phase == phase).map(|p| p.hives.keys().cloned().collect()).unwrap_or_default();
    phase_event(queen, EventKind::PhaseStarted, format!("{} started: {} hives", phase.name(), participants.len()));
    publish(queen).await;
    tracing::warn!(phase = phase.name(), hives = participants.len(), "cluster shutdown phase");

    match phase {
        Phase::Gate => queen.orchestrator.set_gate(),
        Phase::Persist => {
            let written = queen.off_runtime(|q| q.write_final_state()).await.map_err(|e| e.to_string()).and_then(|w| w);
            if let Err(why) = written
                && !persist_failed(queen, why).await
            {
                return false;
            }
        }
        _ => {}
    }
    let ids = queen
        .orchestrator
        .channels
        .order_phase(&participants, PhaseOrder { phase, deadline_ms: state.drain_deadline_ms });
    let timeout = Duration::from_millis(state.phase_timeout_ms);
    if phase == Phase::Infra {
        run_infra(queen, participants, started, timeout).await;
        return false;
    }
    if !wait_for_acks(queen, phase, &ids, started + timeout).await {
        return false;
    }
    end_phase(queen, phase, started, timeout).await
}

/// PERSIST could not write the final state: the record of who ran what is what the phase is
/// for, so the sequence stops here unless forced (then it goes on, and says so).
async fn persist_failed(queen: &Arc<Queen>, why: String) -> bool {
    let failure = format!("PERSIST: the final state was not written: {why}");
    let told = failure.clone();
    let stopped = update_durably(queen, move |_, s| {
        if s.force {
            return false;
        }
        if let Some(r) = report(s, Phase::Persist) {
            r.status = PhaseStatus::Failed;
        }
        s.status = ShutdownStatus::Failed;
        s.failure = told.clone();
        true
    })
    .await;
    match stopped {
        Some((_, false)) => {
            phase_event(queen, EventKind::PhaseDone, format!("{failure}; forced on"));
            true
        }
        _ => {
            tracing::error!(%failure, "cluster shutdown stopped");
            phase_event(queen, EventKind::PhaseFailed, format!("shutdown stopped at {failure}"));
            publish(queen).await;
            false
        }
    }
}

/// Takes in ACKs as they come until every hive answered or `deadline`; false when this
/// queen stopped leading meanwhile.
async fn wait_for_acks(queen: &Arc<Queen>, phase: Phase, ids: &BTreeMap<NodeId, u64>, deadline: Instant) -> bool {
    loop {
        // Registered before looking, so an ACK that lands in between still wakes us.
        let acked = queen.orchestrator.channels.acks.notified();
        let ids = ids.clone();
        let tallied = update(queen, move |q, s| {
            let r = report(s, phase)?;
            let workers_left = |h: &NodeId| q.ingest.hives.get(h).map(|v| v.payload.workers.len() as u32).unwrap_or(0);
            Some(phase::take_acks(r, &ids, |h| q.orchestrator.channels.last_ack(h), workers_left))
        });
        // A refused write is not retried here: the ACKs stay with the channels, and the
        // next poll takes them again.
        let (waiting, answers) = match tallied.await {
            Some(Ok((_, Some(tally)))) => tally,
            Some(Ok((_, None))) | None => return true,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "ACKs not recorded; the next poll tries again");
                (usize::MAX, Vec::new())
            }
        };
        for a in answers {
            let (kind, word) = if a.ok { (EventKind::Acked, "ACK") } else { (EventKind::AckFailed, "failed") };
            let reason = format!("{} {word}: {}", phase.name(), a.detail);
            queen.orchestrator.cluster_event(NodeKind::Hive, &a.hive, kind, reason);
            if !a.ok {
                queen.count_ack_failure(phase);
            }
        }
        if waiting == 0 || Instant::now() >= deadline {
            return true;
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
}

/// Ends a phase as `phase::conclude` says, records why hives failed it, and says whether
/// the sequence goes on.
async fn end_phase(queen: &Arc<Queen>, phase: Phase, started: Instant, timeout: Duration) -> bool {
    let ended = OffsetDateTime::now_utc();
    let concluded = update_durably(queen, move |_, s| {
        let force = s.force;
        let r = report(s, phase)?;
        let failed = phase::conclude(r, force, timeout, ended);
        let status = r.status;
        if status == PhaseStatus::Failed {
            let why: Vec<&str> = failed.iter().map(|f| f.text.as_str()).collect();
            s.status = ShutdownStatus::Failed;
            s.failure = format!("{}: {}", phase.name(), why.join("; "));
        }
        Some((status, failed))
    })
    .await;
    queen.observe_phase(phase, started.elapsed());
    let Some((state, Some((status, failed)))) = concluded else { return false };
    for f in failed.iter().filter(|f| f.timed_out) {
        let reason = format!("{}: {}", phase.name(), f.text);
        queen.orchestrator.cluster_event(NodeKind::Hive, &f.hive, EventKind::AckFailed, reason);
        queen.count_ack_failure(phase);
    }
    let took = started.elapsed().as_millis();
    publish(queen).await;
    match status {
        PhaseStatus::Done => {
            phase_event(queen, EventKind::PhaseDone, format!("{} done in {took} ms", phase.name()));
            true
        }
        PhaseStatus::Forced => {
            let why: Vec<&str> = failed.iter().map(|f| f.text.as_str()).collect();
            let reason = format!("{} forced on after {took} ms: {}", phase.name(), why.join("; "));
            phase_event(queen, EventKind::PhaseDone, reason);
            true
        }
        _ => {
            tracing::error!(failure = %state.failure, "cluster shutdown stopped");
            phase_event(queen, EventKind::PhaseFailed, format!("shutdown stopped at {}", state.failure));
            false
        }
    }
}

/// INFRA: nobody can ACK an exit; wait (bounded) until the hives said goodbye, then the
/// queen leaves last.
async fn run_infra(queen: &Arc<Queen>, participants: Vec<NodeId>, started: Instant, timeout: Duration) {
    let up = |q: &Queen, h: &NodeId| q.ingest.hives.get(h).is_some_and(|v| v.liveness.is_up());
    let deadline = started + timeout;
    while Instant::now() < deadline && participants.iter().any(|h| up(queen, h)) {
        tokio::time::sleep(POLL).await;
    }
    let ended = OffsetDateTime::now_utc();
    update_durably(queen, move |q, s| {
        if let Some(r) = report(s, Phase::Infra) {
            phase::conclude_infra(r, |h| up(q, h), ended);
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
    publish(queen).await;
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

    #[test]
    fn a_refused_write_leaves_the_shutdown_as_it_was() -> anyhow::Result<()> {
        use crate::store::Store;
        let store = Arc::new(crate::store::testing::Flaky::default());
        let seq = std::sync::atomic::AtomicU64::new(1);
        let orchestrator = Orchestrator::open(Box::new(Arc::clone(&store)), Duration::from_secs(1), Arc::new(seq))?;
        let sequencer = Sequencer::new(Some(fresh(false, 1_000, 2_000)));
        store.set_failing(true);
        assert!(matches!(sequencer.update(&orchestrator, |s| s.force = true), Some(Err(_))));
        assert!(!sequencer.current().expect("kept").force, "memory follows the store, not ahead of it");
        store.set_failing(false);
        assert!(matches!(sequencer.update(&orchestrator, |s| s.force = true), Some(Ok(_))));
        assert!(sequencer.current().expect("kept").force);
        assert!(store.load()?.shutdown.expect("stored").force, "and both agree");
        assert!(Sequencer::default().update(&orchestrator, |_| ()).is_none(), "no shutdown, nothing to change");
        Ok(())
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

    /// A data dir where the final state cannot be written (its temporary file's name is
    /// taken by a directory) fails PERSIST instead of going on as if it had been written.
    #[tokio::test(start_paused = true)]
    async fn a_final_state_that_cannot_be_written_fails_persist() -> anyhow::Result<()> {
        let dir = std::env::temp_dir().join(format!(
            "queen-persist-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        std::fs::create_dir_all(dir.join("final-state.json.tmp"))?;
        let mut config = crate::QueenConfig::with_intervals(Duration::from_secs(1), Duration::from_secs(1))?;
        config.data_dir = Some(dir.clone());
        let me = contract::QueenRef { id: "q".into(), url: "http://127.0.0.1:1".into() };
        let stop = tokio_util::sync::CancellationToken::new();
        let queen = Queen::new(config, me, stop.clone(), tokio_util::task::TaskTracker::new(), None)?;
        start(&queen, ShutdownRequest { phase_timeout_ms: Some(1_000), ..Default::default() })
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
        while queen.shutdown.current().is_some_and(|s| s.status == ShutdownStatus::Running) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let state = queen.shutdown.current().expect("recorded");
        stop.cancel();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(state.status, ShutdownStatus::Failed, "{state:?}");
        assert!(state.failure.starts_with("PERSIST: the final state was not written"), "{}", state.failure);
        assert!(
            state.phases.iter().all(|p| p.phase != Phase::Infra || p.status == PhaseStatus::Pending),
            "INFRA never ran"
        );
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
