//! The reference worker: runs jobs posted to it, heartbeats to the queen, drains on stop.
//!
//! It serves `POST /v1/jobs` (`{"kind":"sleep","ms":200}`, `{"kind":"sha256",...}`) up
//! to `max_concurrent` at once, reports in-flight jobs and `busy` in its heartbeats, and
//! on a graceful stop turns unready, refuses new jobs, finishes the ones in flight (up to
//! the drain deadline), then says `stopped` in a last heartbeat.
//!
//! Entry point: [`run`] with an already-bound listener.

pub mod config;
pub mod jobs;
pub mod remembered;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use contract::{JobRequest, JobResponse, WorkerHeartbeat, WorkerStatus, paths};
use lifecycle::health::Health;
use lifecycle::http::{ApiError, JsonBody, method_not_allowed_fallback, not_found_fallback};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use queen_client::{Heartbeater, QueenClient, Stamp};
use remembered::{Claim, Remembered};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{WorkerArgs, WorkerConfig};

const FINAL_BEAT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    kind: &'static str,
    /// done | failed | replayed | refused_busy | refused_draining | invalid
    outcome: &'static str,
}

struct Worker {
    config: WorkerConfig,
    address: String,
    health: Arc<Health>,
    in_flight: AtomicU32,
    /// Woken whenever a job ends, so a drain waits without polling.
    job_ended: Notify,
    jobs: Family<JobLabels, Counter>,
    /// Keyed jobs, so a retry replays the first run instead of running again.
    remembered: Remembered,
    /// What the queen presents with a job, when this worker has a token: this worker's own
    /// node token (`node_token::expected_job_token`). `None`: jobs are open to anyone.
    job_token: Option<lifecycle::Secret>,
}

/// Jobs come from the queen only: with a token, a job without the worker's own job token
/// is refused (401), so neither a stranger nor another worker can make this one run it.
async fn from_the_queen(
    axum::extract::State(worker): axum::extract::State<Arc<Worker>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let Some(expected) = &worker.job_token else { return next.run(req).await };
    let matches = lifecycle::http::bearer(req.headers()).is_some_and(|p| expected.matches(p));
    if matches {
        return next.run(req).await;
    }
    lifecycle::http::ApiError::new(
        axum::http::StatusCode::UNAUTHORIZED,
        "unauthorized",
        "jobs come from the queen: this worker's job token is required",
    )
    .into_response()
}

impl Worker {
    fn status(&self) -> WorkerStatus {
        if self.health.is_draining() {
            WorkerStatus::Draining
        } else if self.in_flight.load(Ordering::SeqCst) >= self.config.max_concurrent {
            WorkerStatus::Busy
        } else {
            WorkerStatus::Ready
        }
    }

    fn heartbeat(&self, stamp: Stamp, status: WorkerStatus) -> WorkerHeartbeat {
        WorkerHeartbeat {
            id: self.config.name.clone(),
            hive_id: self.config.hive.clone(),
            epoch: stamp.epoch,
            seq: stamp.seq,
            version: env!("CARGO_PKG_VERSION").to_string(),
            status,
            kind: self.config.kind.clone(),
            address: self.address.clone(),
            in_flight: self.in_flight.load(Ordering::SeqCst).min(self.config.max_concurrent),
            max_concurrent: self.config.max_concurrent,
            sent_at: OffsetDateTime::now_utc(),
        }
    }

    /// Takes a job slot, or says why not.
    fn admit(self: &Arc<Self>) -> Result<Slot, ApiError> {
        if self.health.is_draining() {
            return Err(ApiError::unavailable(
                "draining",
                "worker is draining and takes no new jobs",
                Duration::from_secs(5),
            ));
        }
        let max = self.config.max_concurrent;
        self.in_flight.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < max).then_some(n + 1)).map_err(
            |_| ApiError::too_many("at_capacity", format!("worker runs {max} jobs already"), Duration::from_secs(1)),
        )?;
        Ok(Slot(Arc::clone(self)))
    }

    fn count(&self, kind: &'static str, outcome: &'static str) {
        self.jobs.get_or_create(&JobLabels { kind, outcome }).inc();
    }
}

/// One admitted job; frees its slot however the request ends (even if the client goes away).
struct Slot(Arc<Worker>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.job_ended.notify_waiters();
    }
}

async fn run_job(
    State(worker): State<Arc<Worker>>,
    headers: HeaderMap,
    body: Result<JsonBody<JobRequest>, ApiError>,
) -> Result<Json<JobResponse>, ApiError> {
    let JsonBody(job) = body.inspect_err(|_| worker.count("unknown", "invalid"))?;
    let kind = jobs::kind(&job);
    if let Err(reason) = jobs::check(&job) {
        worker.count(kind, "invalid");
        return Err(ApiError::unprocessable(reason));
    }
    let key = lifecycle::http::idempotency_key(&headers).inspect_err(|_| worker.count(kind, "invalid"))?;
    let failed = |e: String| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "job_failed", e);
    let mut outcome_to = None;
    if let Some(key) = &key {
        match worker.remembered.claim(key, &job, Instant::now()) {
            Claim::Run(tx) => outcome_to = Some(tx),
            Claim::Replay(rx) => {
                worker.count(kind, "replayed");
                return remembered::outcome(rx).await.map(Json).map_err(failed);
            }
            Claim::Conflict => {
                worker.count(kind, "invalid");
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency_key_reused",
                    "this idempotency key was used for a different job",
                ));
            }
        }
    }
    let slot = worker.admit().inspect_err(|e| {
        if let Some(key) = &key {
            worker.remembered.forget(key);
        }
        worker.count(kind, if e.status == StatusCode::TOO_MANY_REQUESTS { "refused_busy" } else { "refused_draining" })
    })?;
    // Run detached from the request so a client that hangs up cannot abort half a job;
    // the slot travels with the work and is freed when it is done, and a keyed job's
    // outcome is kept for its retries even when nobody waits for this answer.
    let worker_id = worker.config.name.to_string();
    let runner = Arc::clone(&worker);
    let work = tokio::spawn(async move {
        let result = jobs::execute(job).await.map(|(output, took)| JobResponse {
            worker_id,
            kind: kind.into(),
            output,
            duration_ms: took.as_millis() as u64,
        });
        drop(slot);
        // Counted here, not when answered: a run whose caller went away still ran.
        runner.count(kind, if result.is_ok() { "done" } else { "failed" });
        if let Some(key) = &key {
            tracing::debug!(key, ok = result.is_ok(), "keyed job ran");
        }
        if let Some(tx) = outcome_to {
            tx.send_replace(Some(result.clone()));
        }
        result
    });
    let answer = work.await.map_err(|e| failed(e.to_string()))?.map_err(failed)?;
    Ok(Json(answer))
}

/// Runs a worker until `stop` fires, then drains and returns.
pub async fn run(config: WorkerConfig, listener: TcpListener, stop: CancellationToken) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let client = QueenClient::for_node(&config.queen, config.token.as_ref().map(|t| t.expose()), config.ca.as_deref())?;
    let heartbeater = Arc::new(Heartbeater::new(client, config.heartbeat_interval));
    let mut health =
        Health::builder().check("queen_contact", heartbeater.contact_check()).check("job_executor", jobs::self_test);
    heartbeater.register_metrics(health.metrics());
    let jobs_family = Family::<JobLabels, Counter>::default();
    health.metrics().register("apiary_jobs", "Jobs by kind and outcome", jobs_family.clone());
    let worker = Arc::new(Worker {
        address: format!("http://{addr}"),
        health: health.build(),
        in_flight: AtomicU32::new(0),
        job_ended: Notify::new(),
        jobs: jobs_family,
        remembered: Remembered::default(),
        job_token: config
            .token
            .as_ref()
            .and_then(|t| queen_client::node_token::expected_job_token(t.expose(), &config.hive, &config.name))
            .map(lifecycle::Secret::new),
        config,
    });

    let tasks = TaskTracker::new();
    let beats = stop.child_token();
    tasks.spawn({
        let (hb, worker, beats) = (Arc::clone(&heartbeater), Arc::clone(&worker), beats.clone());
        async move { hb.run(|stamp| worker.heartbeat(stamp, worker.status()), beats).await }
    });
    let app = Router::new()
        .route(
            paths::JOBS,
            post(run_job).route_layer(axum::middleware::from_fn_with_state(Arc::clone(&worker), from_the_queen)),
        )
        .fallback(not_found_fallback)
        .method_not_allowed_fallback(method_not_allowed_fallback)
        .layer(DefaultBodyLimit::max(contract::MAX_BODY_BYTES))
        .with_state(Arc::clone(&worker))
        .merge(worker.health.router());
    let server = lifecycle::HttpServer::spawn(&tasks, listener, app);
    if worker.job_token.is_none() {
        tracing::warn!("no token: this worker runs jobs for anyone who reaches its port");
    }
    tracing::info!(worker = %worker.config.name, hive = %worker.config.hive, epoch = %heartbeater.epoch(), %addr, "worker started");

    stop.cancelled().await;
    worker.health.set_draining();
    let left = worker.in_flight.load(Ordering::SeqCst);
    tracing::info!(in_flight = left, deadline = ?worker.config.drain_timeout, "worker draining");
    // Tell the queen at once, so it stops routing jobs here before the next interval.
    if let Err(e) = heartbeater.beat(|stamp| worker.heartbeat(stamp, WorkerStatus::Draining)).await {
        tracing::warn!(error = %e, "could not tell the queen we are draining");
    }
    if tokio::time::timeout(worker.config.drain_timeout, drained(&worker)).await.is_err() {
        tracing::warn!(
            in_flight = worker.in_flight.load(Ordering::SeqCst),
            "drain deadline passed; stopping with jobs in flight"
        );
    }
    beats.cancel();
    tasks.close();
    heartbeater.goodbye(|stamp| worker.heartbeat(stamp, WorkerStatus::Stopped), FINAL_BEAT_TIMEOUT).await;
    let served = server.stop().await;
    tasks.wait().await;
    tracing::info!("worker stopped");
    served?;
    Ok(())
}

async fn drained(worker: &Worker) {
    loop {
        let ended = worker.job_ended.notified();
        if worker.in_flight.load(Ordering::SeqCst) == 0 {
            return;
        }
        ended.await;
    }
}
