//! `Queen`: one queen process, composed of subsystems that each own their state and lock.
//! This file holds what needs more than one of them: building the whole, the role changes
//! of a peer (leader, follower), a config reload, the cluster stats and the final-state record.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use contract::NodeKind;
use heartbeat_registry::LivenessEvent;
use lifecycle::health::Health;
use lifecycle::http::ApiError;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{ConfigError, QueenConfig, Reload};
use crate::ingest::Ingest;
use crate::jobs::JobRouter;
use crate::metrics::{self, Metrics};
use crate::orchestrator::Orchestrator;
use crate::shutdown::Sequencer;
use crate::snapshot::{self, Snapshots};
use crate::store::{MemoryStore, RedbStore, Store};
use crate::summary;

/// What readiness, the snapshot and the dashboard say while hives run replicas a queen
/// with an empty store does not know.
pub fn unknown_replicas_text(hives: usize) -> String {
    format!(
        "unknown replicas on {hives} hives: this queen's store had no deployments, so it stops nothing they run; declare the deployments again, or confirm with `queen cluster stop-unknown` (POST /v1/cluster/unknown-replicas/stop)"
    )
}

/// A call handed to [`Queen::off_runtime`] did not come back (it panicked, or the
/// runtime is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("a blocking call did not finish: {0}")]
pub struct Blocked(String);

pub struct Queen {
    /// The registries and the heartbeat rate limit: what the queen has heard.
    pub ingest: Ingest,
    /// Deployments, assignments, drains, the control channels: what should run where.
    pub orchestrator: Arc<Orchestrator>,
    /// The frames every stream reads.
    pub snapshots: Snapshots,
    /// Jobs in flight, keyed jobs being routed, the routing rate.
    pub jobs: JobRouter,
    /// The cluster shutdown, running or ended; mirrored in the store.
    pub shutdown: Sequencer,
    /// Outbound calls: jobs to workers, readiness probes of other queens.
    pub http: reqwest::Client,
    /// The running configuration; replaced whole by a reload, watched by the loops whose
    /// timing it sets.
    config: watch::Sender<Arc<QueenConfig>>,
    pub metrics: Metrics,
    pub health: Arc<Health>,
    /// Fires when the queen stops (a signal, or the end of a cluster shutdown, which
    /// cancels it itself); open SSE streams end on it so shutdown never waits on a browser
    /// tab.
    pub stop: CancellationToken,
    /// Fires when this queen stops leading (and when it stops): the control channels it
    /// holds end then, so hives reconnect to the leader instead of listening to a queen
    /// that has nothing more to tell them. Replaced at each deposition.
    leading: std::sync::Mutex<CancellationToken>,
    /// Every task the queen spawns, awaited on the way out.
    pub tasks: TaskTracker,
    /// This queen as others refer to it.
    pub me: contract::QueenRef,
    /// The etcd side when this queen is one of several peers; set once, at start.
    #[cfg(feature = "etcd")]
    pub peer: std::sync::OnceLock<Arc<crate::peer::Peer>>,
}

impl Queen {
    pub(crate) fn new(
        config: QueenConfig,
        me: contract::QueenRef,
        stop: CancellationToken,
        tasks: TaskTracker,
        store: Option<Box<dyn Store>>,
    ) -> anyhow::Result<Arc<Self>> {
        Self::with_wall(config, me, stop, tasks, store, crate::clock::Wall::system())
    }

    /// As [`Queen::new`], deciding dates by `wall` (a test's stepped clock).
    pub(crate) fn with_wall(
        config: QueenConfig,
        me: contract::QueenRef,
        stop: CancellationToken,
        tasks: TaskTracker,
        store: Option<Box<dyn Store>>,
        wall: crate::clock::Wall,
    ) -> anyhow::Result<Arc<Self>> {
        let event_seq = Arc::new(AtomicU64::new(1));
        let ingest = Ingest::new(
            config.thresholds.clone(),
            &event_seq,
            config.heartbeats_per_second(),
            config.max_new_nodes_per_second,
        );
        // A shared store is written by its leader only; the strategy is applied once elected.
        let shared = store.is_some();
        let store: Box<dyn Store> = match (store, &config.data_dir) {
            (Some(store), _) => store,
            (None, Some(dir)) => Box::new(RedbStore::open(dir)?),
            (None, None) => Box::new(MemoryStore::default()),
        };
        let orchestrator = Arc::new(Orchestrator::open_with(
            store,
            config.thresholds.offline_after + config.orphan_grace,
            event_seq,
            wall,
        )?);
        if !shared {
            // Alone, this queen leads from now: its commands are numbered in a term no
            // earlier start of it used, so a hive never takes an old id for a new command.
            orchestrator.channels.begin_term(orchestrator.store().next_term()?);
            if let Some(strategy) = config.strategy {
                orchestrator.set_strategy(strategy)?;
            }
        }
        let shutdown = Sequencer::new(orchestrator.load_shutdown()?);

        let snapshots = Snapshots::default();
        let frames = snapshots.subscribe();
        let (config, config_rx) = watch::channel(Arc::new(config));
        let store_check = Arc::clone(&orchestrator);
        let mut builder = Health::builder().check("store", move || match store_check.ping() {
            Ok(()) => Ok("reachable, taking writes".to_string()),
            Err(e) => Err(store_check.store_failure().map_or_else(|| e.to_string(), |f| f.text())),
        });
        builder = builder.check("snapshot_fresh", move || {
            let max_age = config_rx.borrow().snapshot_interval * 3;
            let age = frames.borrow().built_at.elapsed();
            if age <= max_age {
                Ok(format!("last snapshot {} ms ago", age.as_millis()))
            } else {
                Err(format!("no snapshot for {} ms: the snapshot ticker is stuck", age.as_millis()))
            }
        });
        let listening = Arc::clone(&ingest.listening);
        builder = builder.check("listening", move || {
            let text = |l: &heartbeat_registry::Listening| {
                format!(
                    "{:.1} s not listening in {} stalls since the start",
                    l.deaf_total().as_secs_f64(),
                    l.episodes()
                )
            };
            let overdue = listening.overdue();
            let recent = listening
                .last_episode()
                .filter(|e| e.deaf >= crate::ingest::DEAF_SAID && e.ended.elapsed() < crate::ingest::DEAF_SAID_FOR);
            if overdue >= crate::ingest::DEAF_SAID || recent.is_some() {
                Err(format!("degraded: the queen could not hear its nodes (paused or starved); {}", text(&listening)))
            } else {
                Ok(text(&listening))
            }
        });
        let unknown = Arc::clone(&orchestrator);
        builder = builder.check("unknown_replicas", move || match unknown.unknown_hives() {
            0 => Ok("every replica the hives run is known".to_string()),
            n => Err(unknown_replicas_text(n)),
        });
        if config.borrow().insecure_no_auth {
            // Passes (the queen works), but every readiness report says what it is.
            builder = builder.check("auth", || {
                Ok("OPEN (--insecure-no-auth): anyone who reaches this queen can make every hive run any command"
                    .to_string())
            });
        }
        let metrics = Metrics::register(builder.metrics(), orchestrator.decisions.clone());
        // Alone, a queen leads from the start; a peer only once elected.
        metrics.leader.set(i64::from(!shared));
        let health = builder.build();

        // Outbound calls go where heartbeats said, so they follow no redirect: a worker's
        // 303 must not make the queen fetch another address for whoever sent the job.
        let http = queen_client::http_builder()
            .connect_timeout(Duration::from_secs(2))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let queen = Arc::new(Self {
            ingest,
            orchestrator,
            snapshots,
            jobs: JobRouter::default(),
            shutdown,
            http,
            config,
            metrics,
            health,
            leading: std::sync::Mutex::new(stop.child_token()),
            stop,
            tasks,
            me,
            #[cfg(feature = "etcd")]
            peer: std::sync::OnceLock::new(),
        });
        queen.publish_snapshot();
        Ok(queen)
    }

    /// Runs `f` on a blocking thread and waits for it: the one way async code calls what
    /// may block — the store (a redb commit fsyncs; an etcd call waits on its own
    /// runtime), a reconcile (which writes it), a large snapshot build. The runtime's
    /// threads stay free for heartbeats meanwhile.
    pub(crate) async fn off_runtime<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Arc<Queen>) -> T + Send + 'static,
    ) -> Result<T, Blocked> {
        let queen = Arc::clone(self);
        tokio::task::spawn_blocking(move || f(&queen)).await.map_err(|e| Blocked(e.to_string()))
    }

    /// What a stream that only the leader should hold ends on (see `leading`).
    pub fn leadership(&self) -> CancellationToken {
        self.leading.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The configuration as of now (a reload may replace it at any time).
    pub fn config(&self) -> Arc<QueenConfig> {
        Arc::clone(&self.config.borrow())
    }

    /// Follows the configuration: the loops whose timing it sets.
    pub fn subscribe_config(&self) -> watch::Receiver<Arc<QueenConfig>> {
        self.config.subscribe()
    }

    /// The interval handed out in heartbeat responses.
    pub fn next_interval(&self) -> Duration {
        self.config.borrow().heartbeat_interval
    }

    /// Builds the snapshot from what the queen has heard, serializes it (whole, summary and
    /// delta from the last one), and publishes it.
    pub(crate) fn publish_snapshot(&self) {
        let started = Instant::now();
        self.ingest.sweep();
        let snapshot = snapshot::build(self, self.snapshots.next_seq());
        self.export_cluster_gauges(&snapshot);
        self.snapshots.publish(snapshot, started, &self.metrics);
    }

    /// Publishes a snapshot another queen built (a follower relaying its leader's), under
    /// this queen's own sequence so its clients' deltas chain.
    #[cfg(feature = "etcd")]
    pub(crate) fn publish_relayed(&self, mut snapshot: contract::Snapshot) {
        snapshot.seq = self.snapshots.next_seq();
        self.export_cluster_gauges(&snapshot);
        // A follower hears no hive: it takes the leader's counts from the frame.
        self.metrics.export_processes(&[0; 4]);
        let flapping = |n: usize| n as i64;
        self.metrics.export_flapping([
            flapping(snapshot.hives.iter().filter(|h| h.flapping).count()),
            flapping(snapshot.workers.iter().filter(|w| w.flapping).count()),
        ]);
        self.snapshots.publish(snapshot, Instant::now(), &self.metrics);
    }

    fn export_cluster_gauges(&self, snapshot: &contract::Snapshot) {
        self.metrics.export_cluster(snapshot);
        self.metrics.cluster.store_failing.set(i64::from(self.orchestrator.store_failure().is_some()));
    }

    /// Whether this queen acts for the cluster (places work, routes jobs, takes
    /// heartbeats, sequences shutdowns): always when alone, when elected among its peers.
    pub fn is_leader(&self) -> bool {
        #[cfg(feature = "etcd")]
        if let Some(r) = self.peer.get() {
            return r.is_leader();
        }
        true
    }

    /// Which queen acts for the cluster. One queen needs no election: it is the leader.
    pub fn leader(&self) -> contract::LeaderInfo {
        #[cfg(feature = "etcd")]
        if let Some(r) = self.peer.get() {
            let role = r.role();
            return contract::LeaderInfo {
                leader: role.leader,
                is_self: r.is_leader(),
                term: role.term.max(0) as u64,
                answered_by: Some(self.me.clone()),
            };
        }
        contract::LeaderInfo {
            leader: Some(self.me.clone()),
            is_self: true,
            term: 0,
            answered_by: Some(self.me.clone()),
        }
    }

    /// Hands leadership to `to` (or the healthiest follower) and resigns.
    pub async fn transfer_leadership(&self, to: Option<String>) -> Result<contract::TransferAnswer, ApiError> {
        #[cfg(feature = "etcd")]
        if let Some(r) = self.peer.get() {
            return crate::peer::transfer(self, r, to).await;
        }
        let _ = to;
        Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "no_replicas",
            "this queen runs alone (no --store etcd://): there is no other queen to lead",
        ))
    }

    /// Re-places work now; after an API change, so operators need not wait for a sweep.
    /// Only the leader places; a follower's view of placement comes from the store.
    pub fn reconcile(&self) {
        if !self.is_leader() {
            return;
        }
        if let Err(e) = self.orchestrator.reconcile(&self.ingest.hives, &self.ingest.workers) {
            tracing::error!(error = %e, "reconcile could not write the store; will retry");
        }
    }

    /// Reads the configuration again and applies what can change live.
    pub fn reload(&self) -> Result<Reload, ConfigError> {
        let current = self.config();
        let (next, reload) = current.reloaded()?;
        self.apply_live(&current, &next);
        self.config.send_replace(Arc::new(next));
        Ok(reload)
    }

    /// The side effects of a changed configuration; the loops that depend on intervals
    /// follow the config channel themselves.
    fn apply_live(&self, current: &QueenConfig, next: &QueenConfig) {
        if next.thresholds != current.thresholds {
            self.ingest.set_thresholds(&next.thresholds);
        }
        if next.strategy != current.strategy
            && let Some(strategy) = next.strategy
            && let Err(e) = self.orchestrator.set_strategy(strategy)
        {
            tracing::error!(error = %e, "could not store the reloaded placement strategy");
        }
        if next.heartbeats_per_second() != current.heartbeats_per_second() {
            self.ingest.set_rate(next.heartbeats_per_second());
        }
        if next.max_new_nodes_per_second != current.max_new_nodes_per_second {
            self.ingest.set_new_id_rate(next.max_new_nodes_per_second);
        }
        if next.log_level != current.log_level {
            // Without a level in the config, back to what the process started with.
            let fallback = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
            if let Err(e) = lifecycle::set_log_filter(next.log_level.as_deref().unwrap_or(&fallback)) {
                tracing::warn!(error = %e, "log filter not applied");
            }
        }
    }

    /// Just elected: take the stored state as it is now, hear from every node before
    /// judging anyone (a fresh startup grace: the registries are empty, heartbeats are on
    /// their way), and pick up a cluster shutdown the previous leader left running.
    #[cfg(feature = "etcd")]
    pub(crate) fn on_elected(self: &Arc<Self>) {
        self.metrics.leader.set(1);
        self.metrics.elected.inc();
        // The leader key's revision, which etcd never gives out twice.
        match self.orchestrator.store().next_term() {
            Ok(term) => self.orchestrator.channels.begin_term(term),
            Err(e) => tracing::error!(error = %e, "elected, but the term is unknown; command ids go on from the last"),
        }
        // Events go on from the last one this queen relayed, so a dashboard that keeps
        // events by seq takes the new leader's as new.
        if let Some(seq) = self.snapshots.last_event_seq() {
            self.orchestrator.number_events_after(seq);
        }
        self.ingest.restart_grace();
        self.orchestrator.restart_grace();
        match self.orchestrator.reload() {
            Ok(shutdown) => self.adopt_shutdown(shutdown),
            Err(e) => {
                tracing::error!(error = %e, "elected, but the stored state did not load; placing from the last copy")
            }
        }
        if let Some(strategy) = self.config().strategy
            && self.orchestrator.strategy() != strategy
            && let Err(e) = self.orchestrator.set_strategy(strategy)
        {
            tracing::warn!(error = %e, "configured strategy not applied");
        }
        crate::shutdown::resume(self);
        self.publish_snapshot();
    }

    /// No longer leading: what this queen heard from nodes is not the cluster's record any
    /// more (they report to the new leader), so it is dropped rather than aged into
    /// false deaths.
    #[cfg(feature = "etcd")]
    pub(crate) fn on_deposed(self: &Arc<Self>) {
        self.metrics.leader.set(0);
        let ended =
            std::mem::replace(&mut *self.leading.lock().unwrap_or_else(|p| p.into_inner()), self.stop.child_token());
        ended.cancel();
        tracing::info!("no longer leading: control channels closed, hives reconnect to the leader");
        self.ingest.clear();
        // What it holds in memory may include writes the fence refused: take the store's.
        self.follow_stored_state();
    }

    /// A follower takes the stored state as the leader last wrote it. When the cluster
    /// shutdown it saw running has completed, the follower leaves too.
    #[cfg(feature = "etcd")]
    pub(crate) fn follow_stored_state(&self) {
        if self.is_leader() {
            return;
        }
        match self.orchestrator.reload() {
            Ok(stored) => self.adopt_shutdown(stored),
            Err(e) => tracing::warn!(error = %e, "cannot read the stored state"),
        }
    }

    /// Takes the stored shutdown state as this queen's. One that saw the shutdown running
    /// and now sees it completed leaves too: the leader that finished it has gone, and the
    /// cluster with it (a follower may be elected in the instant between).
    #[cfg(feature = "etcd")]
    fn adopt_shutdown(&self, stored: Option<contract::ShutdownState>) {
        if self.shutdown.adopt(stored) {
            tracing::warn!("the cluster shutdown completed; this queen leaves too");
            self.stop.cancel();
        }
    }

    pub(crate) fn observe_phase(&self, phase: contract::Phase, took: Duration) {
        self.metrics
            .phase_seconds
            .get_or_create(&metrics::PhaseLabels { phase: phase.name() })
            .observe(took.as_secs_f64());
    }

    pub(crate) fn count_ack_failure(&self, phase: contract::Phase) {
        self.metrics.ack_failures.get_or_create(&metrics::PhaseLabels { phase: phase.name() }).inc();
    }

    pub(crate) fn count_events(&self, kind: NodeKind, event: &LivenessEvent<contract::NodeId>) {
        self.metrics
            .events
            .get_or_create(&metrics::EventLabels {
                kind: kind.as_str(),
                event: summary::event_kind(event.kind).as_str(),
            })
            .inc();
    }

    pub(crate) fn jobs_routed(&self) -> u64 {
        ["done", "rejected", "worker_failed"]
            .iter()
            .map(|o| self.metrics.jobs.get_or_create(&metrics::JobLabels { outcome: o }).get())
            .sum()
    }

    /// PERSIST: who ran what and how each phase ended, as JSON beside the store (the
    /// store itself is written on every change, so this is the human-readable record).
    pub(crate) fn write_final_state(&self) -> Result<(), String> {
        let config = self.config();
        let Some(dir) = &config.data_dir else {
            tracing::info!("no data dir: the final cluster state is only in the log");
            return Ok(());
        };
        let state = summary::FinalState {
            written_at: time::OffsetDateTime::now_utc(),
            deployments: self.orchestrator.list(self.ingest.nodes()),
            hives: self.ingest.hives.list_all().iter().map(|v| summary::hive(summary::as_ref(v))).collect(),
            shutdown: self.shutdown.current(),
        };
        let path = dir.join("final-state.json");
        let tmp = dir.join("final-state.json.tmp");
        // Written whole to a temporary file, synced, renamed over the old one, and the
        // rename synced: a crash leaves the old record or the new one, never half of one.
        let written = serde_json::to_vec_pretty(&state)
            .map_err(std::io::Error::other)
            .and_then(|bytes| crate::store::write_private(&tmp, &bytes))
            .and_then(|()| std::fs::rename(&tmp, &path))
            .and_then(|()| std::fs::File::open(dir)?.sync_all());
        match written {
            Ok(()) => {
                tracing::info!(path = %path.display(), "final cluster state written");
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, path = %path.display(), "could not write the final cluster state");
                Err(format!("{}: {e}", path.display()))
            }
        }
    }

    /// Cluster-wide counts for `GET /v1/cluster/stats`.
    pub fn stats(&self) -> contract::ClusterStats {
        let ineligible = self.orchestrator.ineligible();
        let mut hives_by_liveness = std::collections::BTreeMap::new();
        let (mut eligible, mut capacity) = (0, 0u64);
        self.ingest.hives.visit(|h| {
            *hives_by_liveness.entry(summary::liveness(h.liveness).as_str().to_string()).or_insert(0) += 1;
            if h.liveness.is_up() && self.orchestrator.eligible(&h.payload.id, h.payload.epoch.0) {
                eligible += 1;
                capacity += u64::from(h.payload.capacity.max_workers);
            }
        });
        let mut workers_by_status = std::collections::BTreeMap::new();
        self.ingest.workers.visit(|w| {
            if w.liveness.is_up() {
                *workers_by_status.entry(w.payload.status.as_str().to_string()).or_insert(0) += 1;
            }
        });
        let assigned = self.orchestrator.assignments().iter().filter(|a| a.hive.is_some()).count() as u64;
        contract::ClusterStats {
            hives_by_liveness,
            hives_eligible: eligible,
            hives_ineligible: ineligible.len(),
            workers_by_status,
            capacity,
            assigned,
            utilization_percent: if capacity == 0 { 0.0 } else { assigned as f64 * 100.0 / capacity as f64 },
            jobs_routed_total: self.jobs_routed(),
            jobs_routed_per_second: self.jobs.rate(),
            strategy: self.orchestrator.strategy(),
            leader: format!("{} ({})", self.me.id, self.me.url),
        }
    }
}
