//! The queen: the hub of an Apiary cluster.
//!
//! It takes heartbeats from hives and workers into one generic registry per kind,
//! re-derives their liveness continuously, builds one cluster snapshot per tick and
//! streams it to every dashboard over SSE, and answers questions about nodes.
//!
//! Entry point: [`run`] with an already-bound listener, so tests drive the exact
//! production code on port 0.

pub mod api;
pub mod auth;
pub mod config;
mod jobs;
pub(crate) mod metrics;
pub mod orchestrator;
mod placement;
mod plan;
mod reload;
#[cfg(feature = "etcd")]
pub mod replica;
pub mod routes;
mod shutdown;
mod snapshot;
pub mod store;
mod summary;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use contract::{HiveHeartbeat, NodeKind, WorkerHeartbeat};
use heartbeat_registry::{HeartbeatRegistry, LivenessEvent};
use lifecycle::health::Health;
use lifecycle::http::ApiError;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{QueenConfig, ServeArgs};
use metrics::Metrics;
use orchestrator::Orchestrator;
pub use snapshot::Frame;
use store::{MemoryStore, RedbStore, Store};

/// Shared state of one queen process.
pub struct Queen {
    pub hives: HeartbeatRegistry<HiveHeartbeat>,
    pub workers: HeartbeatRegistry<WorkerHeartbeat>,
    pub orchestrator: Arc<Orchestrator>,
    /// Counts jobs the queen has forwarded and not yet seen answered, per worker, so that
    /// concurrent routing spreads load before heartbeats catch up.
    jobs_in_flight: dashmap::DashMap<contract::NodeId, u32>,
    /// Keyed jobs being routed now, each behind its own lock (see `jobs::KeyLock`).
    job_keys: jobs::KeyLocks,
    /// Forwards jobs to workers; one pooled client for all of them.
    http: reqwest::Client,
    /// The running configuration; replaced whole by a reload, watched by the loops whose
    /// timing it sets.
    config: watch::Sender<Arc<QueenConfig>>,
    metrics: Metrics,
    health: Arc<Health>,
    /// The latest serialized snapshot; every SSE client reads it, nobody re-serializes.
    snapshots: watch::Sender<Arc<Frame>>,
    /// The snapshot last published, kept to compute the next frame's delta.
    last_snapshot: std::sync::Mutex<Option<contract::Snapshot>>,
    /// Fires when the queen stops (a signal, or the end of a cluster shutdown, which
    /// cancels it itself); open SSE streams end on it so shutdown never waits on a browser
    /// tab.
    stop: CancellationToken,
    /// The cluster shutdown, running or ended; mirrored in the store.
    shutdown: std::sync::Mutex<Option<contract::ShutdownState>>,
    /// Every task the queen spawns, awaited on the way out.
    tasks: TaskTracker,
    /// This queen as others refer to it.
    me: contract::QueenRef,
    /// Per-sender heartbeat rate limit, keyed by kind and id; replaced when a reload
    /// changes the rate.
    heartbeat_limiter: std::sync::RwLock<Arc<governor::DefaultKeyedRateLimiter<String>>>,
    /// (when, jobs routed so far) at recent snapshot ticks, for a routing rate.
    job_samples: std::sync::Mutex<std::collections::VecDeque<(std::time::Instant, u64)>>,
    /// The etcd side when this queen is one of several replicas; `None` alone.
    /// Set once, at start, when this queen is one of several replicas.
    #[cfg(feature = "etcd")]
    replica: std::sync::OnceLock<Arc<replica::Replica>>,
}

impl Queen {
    fn new(
        config: QueenConfig,
        me: contract::QueenRef,
        stop: CancellationToken,
        tasks: TaskTracker,
        store: Option<Box<dyn Store>>,
    ) -> anyhow::Result<Arc<Self>> {
        let event_seq = Arc::new(AtomicU64::new(1));
        let hives = HeartbeatRegistry::with_event_seq(config.thresholds.clone(), Arc::clone(&event_seq));
        let workers = HeartbeatRegistry::with_event_seq(config.thresholds.clone(), Arc::clone(&event_seq));
        // A shared store is written by its leader only; the strategy is applied once elected.
        let shared = store.is_some();
        let store: Box<dyn Store> = match (store, &config.data_dir) {
            (Some(store), _) => store,
            (None, Some(dir)) => Box::new(RedbStore::open(dir)?),
            (None, None) => Box::new(MemoryStore::default()),
        };
        let orchestrator =
            Arc::new(Orchestrator::open(store, config.thresholds.offline_after + config.orphan_grace, event_seq)?);
        if let Some(strategy) = config.strategy
            && !shared
        {
            orchestrator.set_strategy(strategy)?;
        }
        let shutdown = orchestrator.load_shutdown()?;

        let (snapshots, rx) = watch::channel(Arc::new(Frame::empty()));
        let (config, config_rx) = watch::channel(Arc::new(config));
        let store_check = Arc::clone(&orchestrator);
        let mut builder = Health::builder()
            .check("store", move || store_check.ping().map(|()| "reachable".to_string()).map_err(|e| e.to_string()));
        builder = builder.check("snapshot_fresh", move || {
            let max_age = config_rx.borrow().snapshot_interval * 3;
            let age = rx.borrow().built_at.elapsed();
            if age <= max_age {
                Ok(format!("last snapshot {} ms ago", age.as_millis()))
            } else {
                Err(format!("no snapshot for {} ms: the snapshot ticker is stuck", age.as_millis()))
            }
        });
        let metrics = Metrics::register(builder.metrics(), orchestrator.decisions.clone());
        // Alone, a queen leads from the start; a replica only once elected.
        metrics.leader.set(i64::from(!shared));
        let health = builder.build();

        let http = queen_client::http_builder().connect_timeout(Duration::from_secs(2)).build()?;
        let heartbeat_limiter = std::sync::RwLock::new(Arc::new(limiter(config.borrow().heartbeats_per_second())));
        let queen = Arc::new(Self {
            hives,
            workers,
            orchestrator,
            jobs_in_flight: dashmap::DashMap::new(),
            job_keys: Default::default(),
            http,
            config,
            metrics,
            health,
            snapshots,
            last_snapshot: std::sync::Mutex::new(None),
            stop,
            shutdown: std::sync::Mutex::new(shutdown),
            tasks,
            me,
            job_samples: std::sync::Mutex::new(std::collections::VecDeque::new()),
            heartbeat_limiter,
            #[cfg(feature = "etcd")]
            replica: std::sync::OnceLock::new(),
        });
        queen.publish_snapshot();
        Ok(queen)
    }

    fn observe_phase(&self, phase: contract::Phase, took: Duration) {
        self.metrics
            .phase_seconds
            .get_or_create(&metrics::PhaseLabels { phase: phase.name() })
            .observe(took.as_secs_f64());
    }

    fn count_ack_failure(&self, phase: contract::Phase) {
        self.metrics.ack_failures.get_or_create(&metrics::PhaseLabels { phase: phase.name() }).inc();
    }

    /// PERSIST: who ran what and how each phase ended, as JSON beside the store (the
    /// store itself is written on every change, so this is the human-readable record).
    fn write_final_state(&self) {
        let config = self.config();
        let Some(dir) = &config.data_dir else {
            tracing::info!("no data dir: the final cluster state is only in the log");
            return;
        };
        let state = summary::FinalState {
            written_at: time::OffsetDateTime::now_utc(),
            deployments: self.orchestrator.list(&self.workers),
            hives: self.hives.list_all().iter().map(|v| summary::hive(summary::as_ref(v))).collect(),
            shutdown: self.shutdown(),
        };
        let path = dir.join("final-state.json");
        let tmp = dir.join("final-state.json.tmp");
        let written = serde_json::to_vec_pretty(&state)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, &path));
        match written {
            Ok(()) => tracing::info!(path = %path.display(), "final cluster state written"),
            Err(e) => tracing::error!(error = %e, path = %path.display(), "could not write the final cluster state"),
        }
    }

    fn jobs_routed(&self) -> u64 {
        ["done", "rejected", "worker_failed"]
            .iter()
            .map(|o| self.metrics.jobs.get_or_create(&metrics::JobLabels { outcome: o }).get())
            .sum()
    }

    /// Remembers the routed-jobs count at this moment (called every snapshot tick).
    fn sample_jobs(&self) {
        let mut samples = self.job_samples.lock().unwrap_or_else(|p| p.into_inner());
        if samples.len() == 60 {
            samples.pop_front();
        }
        samples.push_back((std::time::Instant::now(), self.jobs_routed()));
    }

    /// Cluster-wide counts for `GET /v1/cluster/stats`.
    pub fn stats(&self) -> contract::ClusterStats {
        let ineligible = self.orchestrator.ineligible();
        let mut hives_by_liveness = std::collections::BTreeMap::new();
        let (mut eligible, mut capacity) = (0, 0u64);
        self.hives.visit(|h| {
            *hives_by_liveness.entry(summary::liveness(h.liveness).as_str().to_string()).or_insert(0) += 1;
            if h.liveness.is_up() && !ineligible.contains(&h.payload.id) {
                eligible += 1;
                capacity += u64::from(h.payload.capacity.max_workers);
            }
        });
        let mut workers_by_status = std::collections::BTreeMap::new();
        self.workers.visit(|w| {
            if w.liveness.is_up() {
                *workers_by_status.entry(w.payload.status.as_str().to_string()).or_insert(0) += 1;
            }
        });
        let assigned = self.orchestrator.assignments().iter().filter(|a| a.hive.is_some()).count() as u64;
        let jobs_routed_total = self.jobs_routed();
        let jobs_routed_per_second = {
            let samples = self.job_samples.lock().unwrap_or_else(|p| p.into_inner());
            match (samples.front(), samples.back()) {
                (Some((t0, n0)), Some((t1, n1))) if t1 > t0 => (n1 - n0) as f64 / (*t1 - *t0).as_secs_f64(),
                _ => 0.0,
            }
        };
        contract::ClusterStats {
            hives_by_liveness,
            hives_eligible: eligible,
            hives_ineligible: ineligible.len(),
            workers_by_status,
            capacity,
            assigned,
            utilization_percent: if capacity == 0 { 0.0 } else { assigned as f64 * 100.0 / capacity as f64 },
            jobs_routed_total,
            jobs_routed_per_second,
            strategy: self.orchestrator.strategy(),
            leader: format!("{} ({})", self.me.id, self.me.url),
        }
    }

    /// Which queen acts for the cluster. One queen needs no election: it is the leader.
    pub fn leader(&self) -> contract::LeaderInfo {
        #[cfg(feature = "etcd")]
        if let Some(r) = self.replica.get() {
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
        if let Some(r) = self.replica.get() {
            return replica::transfer(self, r, to).await;
        }
        let _ = to;
        Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "no_replicas",
            "this queen runs alone (no --store etcd://): there is no other queen to lead",
        ))
    }

    /// Whether this queen acts for the cluster (places work, routes jobs, takes
    /// heartbeats, sequences shutdowns): always when alone, when elected among replicas.
    pub fn is_leader(&self) -> bool {
        #[cfg(feature = "etcd")]
        if let Some(r) = self.replica.get() {
            return r.is_leader();
        }
        true
    }

    /// Re-places work now; after an API change, so operators need not wait for a sweep.
    /// Only the leader places; a follower's view of placement comes from the store.
    pub fn reconcile(&self) {
        if !self.is_leader() {
            return;
        }
        if let Err(e) = self.orchestrator.reconcile(&self.hives, &self.workers) {
            tracing::error!(error = %e, "reconcile could not write the store; will retry");
        }
    }

    /// The configuration as of now (a reload may replace it at any time).
    pub fn config(&self) -> Arc<QueenConfig> {
        Arc::clone(&self.config.borrow())
    }

    /// The interval handed out in heartbeat responses.
    pub fn next_interval(&self) -> Duration {
        self.config.borrow().heartbeat_interval
    }

    fn heartbeat_limiter(&self) -> Arc<governor::DefaultKeyedRateLimiter<String>> {
        Arc::clone(&self.heartbeat_limiter.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Re-derives liveness of every node now.
    pub fn sweep(&self) {
        self.hives.sweep();
        self.workers.sweep();
    }

    fn count_events(&self, kind: NodeKind, event: &LivenessEvent<contract::NodeId>) {
        self.metrics
            .events
            .get_or_create(&metrics::EventLabels {
                kind: kind.as_str(),
                event: summary::event_kind(event.kind).as_str(),
            })
            .inc();
    }
}

/// Runs a queen on `listener` until `stop` fires, then stops gracefully: `/readyz` turns
/// 503, open streams end, in-flight requests finish, every task is awaited.
pub async fn run(config: QueenConfig, listener: TcpListener, stop: CancellationToken) -> anyhow::Result<()> {
    // Cancelled by the caller (a signal) or by the queen itself, last, at the end of a
    // cluster shutdown.
    let stop = stop.child_token();
    let tasks = TaskTracker::new();
    let addr = listener.local_addr()?;
    let scheme = if config.tls.is_some() { "https" } else { "http" };
    let me = contract::QueenRef {
        id: format!("{}:{}", lifecycle::hostname(), addr.port()),
        url: config.advertise_url.clone().unwrap_or_else(|| format!("{scheme}://{addr}")),
    };
    let queen = match config.etcd.clone() {
        None => Queen::new(config, me, stop.clone(), tasks.clone(), None)?,
        #[cfg(feature = "etcd")]
        Some(settings) => replica::start(config, settings, me, &stop, &tasks).await?,
        #[cfg(not(feature = "etcd"))]
        Some(_) => anyhow::bail!("this queen was built without etcd support: build it with `--features queen/etcd`"),
    };
    // Replicas resume a shutdown when they are elected.
    if queen.is_leader() {
        shutdown::resume(&queen);
    }

    tasks.spawn(snapshot::tick(Arc::clone(&queen), stop.child_token()));
    tasks.spawn(sweep_loop(Arc::clone(&queen), stop.child_token()));
    tasks.spawn(jobs::forget_old_routes(Arc::clone(&queen), stop.child_token()));
    tasks.spawn(count_events(Arc::clone(&queen), NodeKind::Hive, queen.hives.subscribe(), stop.child_token()));
    tasks.spawn(count_events(Arc::clone(&queen), NodeKind::Worker, queen.workers.subscribe(), stop.child_token()));
    if let Some(filter) = &queen.config().log_level
        && let Err(e) = lifecycle::set_log_filter(filter)
    {
        tracing::warn!(error = %e, "log filter not applied");
    }
    reload::spawn(&queen, &tasks, stop.child_token())?;

    let config = queen.config();
    tracing::info!(%addr, stream = %format!("{scheme}://{addr}{}", contract::paths::HEARTBEAT_STREAM), "queen listening");
    let app = api::router(Arc::clone(&queen));
    let options = lifecycle::ServeOptions { tls: config.tls.clone(), ..Default::default() };
    let server = lifecycle::HttpServer::spawn_with(&tasks, listener, app, options);

    stop.cancelled().await;
    tracing::info!("queen stopping");
    queen.health.set_draining();
    tasks.close();
    let served = server.stop().await;
    tasks.wait().await;
    tracing::info!("queen stopped");
    served?;
    Ok(())
}

/// Re-derives liveness often enough that a silent node is noticed within a fraction of an
/// interval, and forgets nodes that have been gone for long.
async fn sweep_loop(queen: Arc<Queen>, stop: CancellationToken) {
    let mut config = queen.config.subscribe();
    let mut tick = interval(config.borrow_and_update().sweep_interval());
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            Ok(()) = config.changed() => tick = interval(config.borrow_and_update().sweep_interval()),
            _ = tick.tick() => {
                // A follower's registries are not the cluster's record: a queen frozen past
                // its lease and thawed must not find everyone silent and declare them dead.
                if !queen.is_leader() {
                    continue;
                }
                queen.sweep();
                queen.hives.cleanup_stale();
                queen.workers.cleanup_stale();
                // Forget the limiter state of senders that have gone quiet.
                queen.heartbeat_limiter().retain_recent();
                queen.reconcile();
            }
        }
    }
}

/// A ticker that skips ticks it missed rather than bursting to catch up.
pub(crate) fn interval(period: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tick
}

/// A per-sender limiter allowing `per_second` heartbeats, with a burst of two seconds'
/// worth to absorb a node's restart or a reconnect.
fn limiter(per_second: u32) -> governor::DefaultKeyedRateLimiter<String> {
    let rate = std::num::NonZeroU32::new(per_second).unwrap_or(std::num::NonZeroU32::MIN);
    let burst = std::num::NonZeroU32::new(rate.get().saturating_mul(2)).unwrap_or(rate);
    governor::RateLimiter::dashmap(governor::Quota::per_second(rate).allow_burst(burst))
}

async fn count_events(
    queen: Arc<Queen>,
    kind: NodeKind,
    mut rx: broadcast::Receiver<LivenessEvent<contract::NodeId>>,
    stop: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            e = rx.recv() => e,
        };
        match event {
            Ok(e) => {
                tracing::info!(node = kind.as_str(), id = %e.id, event = summary::event_kind(e.kind).as_str(), reason = %e.reason, "liveness");
                queen.count_events(kind, &e);
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(skipped = n, "liveness event log reader lagged")
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
