//! `POST /v1/jobs` at the queen: pick an available worker by in-flight load and forward.
//!
//! A job is tried on another worker when the first one certainly did not run it
//! (connection refused, or the worker answered 429/503 before starting), and when the
//! worker died running it (the connection broke before an answer) if the job is one that
//! may run twice: every kind there is now is a pure computation, so a job whose worker
//! was killed completes elsewhere instead of being lost. A worker that is merely slow
//! (the deadline passed) is not raced: that job is reported as failed.
//!
//! A job sent with an `Idempotency-Key` runs once across retries: its route (which worker
//! took it) is stored before it is forwarded, a retry through this or the next leader goes
//! to that worker, and the worker answers it from the first run. It goes elsewhere only
//! when that worker is certainly gone (its port refuses connections, or the queen holds
//! it offline); a worker that is only unreachable gets the retry refused (503) rather
//! than a second run somewhere else.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use contract::{JobRequest, NodeId};
use lifecycle::http::{ApiError, JsonBody, QueryParams};
use serde::Deserialize;

use crate::Queen;
use crate::metrics::JobLabels;
use crate::store::{JobRoute, Store, StoreError};

/// Workers tried for one job before the queen gives up with 503.
const ATTEMPTS: usize = 3;
/// The most of a worker's answer the queen passes back: a job's answer is a small JSON
/// object, and a bigger one means the address is not a worker.
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobQuery {
    /// Only workers of this deployment.
    deployment: Option<String>,
}

/// How long the queen waits for a worker's answer: the job's own length plus a margin.
fn deadline(job: &JobRequest) -> Duration {
    match job {
        JobRequest::Sleep { ms } => Duration::from_millis(*ms) + Duration::from_secs(30),
        JobRequest::Sha256 { .. } => Duration::from_secs(60),
    }
}

/// One lock per idempotency key being routed.
type KeyLocks = dashmap::DashMap<String, Arc<tokio::sync::Mutex<()>>>;

/// The job router's own state: what it has in flight to each worker, the keyed jobs being
/// routed now, and the routing rate.
#[derive(Default)]
pub struct JobRouter {
    /// Jobs forwarded and not yet answered, per worker, so that concurrent routing spreads
    /// load before heartbeats catch up.
    in_flight: dashmap::DashMap<NodeId, u32>,
    /// Keyed jobs being routed now, each behind its own lock (see [`KeyLock`]).
    keys: KeyLocks,
    /// (when, jobs routed so far) at recent snapshot ticks, for a routing rate.
    samples: std::sync::Mutex<std::collections::VecDeque<(tokio::time::Instant, u64)>>,
}

impl JobRouter {
    /// The available worker with the least work, among those not yet tried and not
    /// reported by their hive as failing a readiness probe.
    fn pick(
        &self,
        ingest: &crate::ingest::Ingest,
        deployment: Option<&NodeId>,
        tried: &BTreeSet<NodeId>,
    ) -> Option<(NodeId, String)> {
        let mut unready = BTreeSet::new();
        loop {
            // (load key, worker, its hive, its address)
            type Pick = ((u32, u32, u64), NodeId, NodeId, String);
            let mut best: Option<Pick> = None;
            ingest.workers.visit(|w| {
                let p = w.payload;
                let skip = tried.contains(&p.id) || unready.contains(&p.id);
                if !w.available || skip || deployment.is_some_and(|d| p.kind != d.as_str()) {
                    return;
                }
                let ours = self.in_flight.get(&p.id).map(|n| *n).unwrap_or(0);
                // Ties go to a random worker, so equal workers share the load.
                let key = (ours, p.in_flight, fastrand::u64(..));
                if best.as_ref().is_none_or(|(k, ..)| key < *k) {
                    best = Some((key, p.id.clone(), p.hive_id.clone(), p.address.clone()));
                }
            });
            let (_, id, hive, address) = best?;
            // Asked of the one chosen, after the walk, so no lock of the worker registry is
            // held while the hives' is taken; a worker failing readiness is rare.
            let failing = ingest
                .hives
                .inspect(&hive, |h| h.payload.workers.iter().any(|r| r.name == id && r.ready == Some(false)));
            if failing != Some(true) {
                return Some((id, address));
            }
            unready.insert(id);
        }
    }

    /// Remembers the routed-jobs count at this moment (called every snapshot tick).
    pub fn sample(&self, routed: u64) {
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if samples.len() == 60 {
            samples.pop_front();
        }
        samples.push_back((tokio::time::Instant::now(), routed));
    }

    /// Jobs routed per second over the samples kept.
    pub fn rate(&self) -> f64 {
        let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        match (samples.front(), samples.back()) {
            (Some((t0, n0)), Some((t1, n1))) if t1 > t0 => (n1 - n0) as f64 / (*t1 - *t0).as_secs_f64(),
            _ => 0.0,
        }
    }
}

/// Held while a keyed job is routed and answered: a second copy sent at the same time
/// waits, then finds the first one's route and gets its answer, instead of both picking a
/// worker before either had recorded one.
struct KeyLock<'a> {
    locks: &'a KeyLocks,
    key: String,
    _held: tokio::sync::OwnedMutexGuard<()>,
}

impl<'a> KeyLock<'a> {
    async fn take(locks: &'a KeyLocks, key: &str) -> Self {
        let lock = Arc::clone(locks.entry(key.to_string()).or_default().value());
        Self { locks, key: key.to_string(), _held: lock.lock_owned().await }
    }
}

impl Drop for KeyLock<'_> {
    fn drop(&mut self) {
        // Ours and the map's are the last two references: nobody waits, the entry can go.
        // (Checked under the map's shard lock, which `take` also holds while cloning.)
        self.locks.remove_if(&self.key, |_, lock| Arc::strong_count(lock) <= 2);
    }
}

/// Counts a forwarded job against its worker until it is answered, however that ends.
struct InFlight<'a>(&'a JobRouter, NodeId);

impl<'a> InFlight<'a> {
    fn new(router: &'a JobRouter, worker: NodeId) -> Self {
        *router.in_flight.entry(worker.clone()).or_insert(0) += 1;
        Self(router, worker)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(mut n) = self.0.in_flight.get_mut(&self.1) {
            *n = n.saturating_sub(1);
        }
    }
}

fn count_job(queen: &Queen, outcome: &'static str) {
    debug_assert!(crate::metrics::JOB_OUTCOMES.contains(&outcome), "{outcome} starts at zero too");
    queen.metrics.jobs.get_or_create(&JobLabels { outcome }).inc();
}

/// The tokens the worker may take a job with: its own node token, made from a cluster
/// token and the hive the worker reported; one per cluster token while a rotation lists
/// several (the worker's was made from one of them). Empty when the queen has no cluster
/// token (nor, then, do its workers) or does not know the worker's hive.
fn job_tokens(queen: &Queen, worker: &NodeId) -> Vec<String> {
    let Some(hive) = queen.ingest.workers.get(worker).map(|w| w.payload.hive_id) else { return Vec::new() };
    let config = queen.config();
    config
        .tokens
        .cluster
        .iter()
        .filter_map(|c| queen_client::node_token::job_token(c.secret.expose(), &hive, worker))
        .collect()
}

/// Whether the queen holds this worker offline (or has forgotten it) while it has heard
/// from the cluster long enough to know: a new leader in its startup grace knows nobody
/// yet, and that is no evidence of death.
fn certainly_gone(queen: &Queen, worker: &NodeId) -> bool {
    !queen.orchestrator.in_grace() && queen.ingest.workers.get(worker).is_none_or(|w| !w.liveness.is_up())
}

/// The worker's port refused the connection: nothing listens there, the job cannot be
/// running in that process.
fn refused(e: &reqwest::Error) -> bool {
    e.is_connect() && !e.is_timeout()
}

/// Runs `call` on the store off the runtime's threads.
async fn on_store<T: Send + 'static>(
    queen: &Arc<Queen>,
    call: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, String> {
    match queen.off_runtime(move |q| call(q.orchestrator.store())).await {
        Ok(answer) => answer.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

fn store_error(e: String) -> ApiError {
    ApiError::unavailable("store_unavailable", format!("the job was not started: {e}"), Duration::from_secs(1))
}

/// The worker a keyed job was sent to before, if any.
async fn recorded(queen: &Arc<Queen>, key: &str) -> Result<Option<JobRoute>, ApiError> {
    let key = key.to_string();
    on_store(queen, move |store| store.job_route(&key)).await.map_err(store_error)
}

/// Stores where a keyed job goes, before it goes: a retry after this leader is gone must
/// find it.
async fn record(queen: &Arc<Queen>, key: &str, worker: &NodeId, address: &str) -> Result<(), ApiError> {
    let route = JobRoute { worker: worker.clone(), address: address.to_string(), at: queen.orchestrator.now() };
    let key = key.to_string();
    on_store(queen, move |store| store.put_job_route(&key, &route)).await.map_err(store_error)
}

/// Forgets keyed jobs' routes once their keys are no longer honoured; on the leader only.
pub async fn forget_old_routes(queen: Arc<Queen>, stop: tokio_util::sync::CancellationToken) {
    let mut tick = crate::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !queen.is_leader() {
            continue;
        }
        let before = queen.orchestrator.now() - contract::IDEMPOTENCY_WINDOW;
        match on_store(&queen, move |store| store.forget_job_routes(before)).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(forgotten = n, "old job routes forgotten"),
            Err(e) => tracing::warn!(error = %e, "old job routes not forgotten; will retry"),
        }
    }
}

/// Runs a job on the available worker with the least in flight; the worker's answer is
/// passed back as it is.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", params(JobQuery,
    ("idempotency-key" = Option<String>, Header, min_length = 1, max_length = 128, pattern = r"^[A-Za-z0-9._:-]+$",
     description = "Names the job across retries: a retry gets the first run's answer"),
), request_body = JobRequest, responses(
    (status = 200, body = contract::JobResponse, description = "the worker's answer"),
    (status = "4XX", body = contract::ApiErrorBody, description = "refused; nothing ran"),
    (status = 502, body = contract::ApiErrorBody, description = "the worker failed while running it"),
    (status = 503, body = contract::ApiErrorBody, description = "nothing ran: no worker available, the cluster is shutting down, or the worker a keyed job went to does not answer"),
))]
pub async fn route(
    State(queen): State<Arc<Queen>>,
    QueryParams(query): QueryParams<JobQuery>,
    headers: HeaderMap,
    body: Result<JsonBody<JobRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let JsonBody(job) = body?;
    let key = lifecycle::http::idempotency_key(&headers)?;
    if queen.orchestrator.gated() {
        count_job(&queen, "refused_shutdown");
        return Err(shutting_down());
    }
    let deployment = match query.deployment {
        Some(d) => Some(NodeId::new(d).map_err(|e| ApiError::bad_request("invalid_id", e.to_string()))?),
        None => None,
    };
    let mut tried = BTreeSet::new();
    let _one_at_a_time = match &key {
        Some(k) => Some(KeyLock::take(&queen.jobs.keys, k).await),
        None => None,
    };
    // A retry of a keyed job goes first to the worker that took it.
    let mut retry_to = match &key {
        Some(k) => recorded(&queen, k).await?,
        None => None,
    };
    for _ in 0..ATTEMPTS {
        let again = retry_to.take();
        let (worker, address) = match &again {
            Some(route) => (route.worker.clone(), route.address.clone()),
            None => {
                let Some((worker, address)) = queen.jobs.pick(&queen.ingest, deployment.as_ref(), &tried) else {
                    break;
                };
                if let Some(k) = &key {
                    record(&queen, k, &worker, &address).await?;
                }
                (worker, address)
            }
        };
        tried.insert(worker.clone());
        let attempt = Attempt { queen: &queen, job: &job, key: key.as_deref(), worker, retry: again.is_some() };
        match attempt.run(&address).await {
            Tried::Answered(response) => return Ok(response),
            Tried::Failed(e) => return Err(e),
            Tried::Next => {}
        }
    }
    count_job(&queen, "no_worker");
    Err(ApiError::unavailable(
        "no_worker_available",
        "no available worker can take this job now",
        Duration::from_secs(1),
    ))
}

/// Why a worker's answer was not read whole.
pub(crate) enum Capped {
    TooLarge,
    Read(reqwest::Error),
}

/// Reads an answer up to `max` bytes, refusing more before it is in memory (by its
/// length when it says one, as it comes when it does not).
pub(crate) async fn capped(mut resp: reqwest::Response, max: usize) -> Result<bytes::Bytes, Capped> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(Capped::TooLarge);
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(Capped::Read)? {
        if body.len() + chunk.len() > max {
            return Err(Capped::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// One try of a job on one worker.
struct Attempt<'a> {
    queen: &'a Arc<Queen>,
    job: &'a JobRequest,
    key: Option<&'a str>,
    worker: NodeId,
    /// The worker is the one a keyed job's earlier try went to.
    retry: bool,
}

/// How one try ended.
enum Tried {
    /// The worker's answer, passed back as it is.
    Answered(Response),
    /// It certainly did not run, or died running a job that may run again: the next
    /// worker.
    Next,
    /// It may have run: say so rather than risk a second run.
    Failed(ApiError),
}

impl Attempt<'_> {
    /// Sends the job with the worker's token; a 401 (the worker refused it before running
    /// anything) tries the token made from the next cluster token, mid-rotation.
    async fn send(&self, address: &str) -> reqwest::Result<reqwest::Response> {
        let tokens = job_tokens(self.queen, &self.worker);
        let mut sent = self.post(address, tokens.first()).await;
        for token in tokens.iter().skip(1) {
            if !matches!(&sent, Ok(r) if r.status() == StatusCode::UNAUTHORIZED) {
                break;
            }
            sent = self.post(address, Some(token)).await;
        }
        sent
    }

    async fn post(&self, address: &str, token: Option<&String>) -> reqwest::Result<reqwest::Response> {
        let mut request = self.queen.http.post(format!("{address}{}", contract::paths::JOBS)).json(self.job);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(k) = self.key {
            request = request.header(contract::IDEMPOTENCY_KEY, k);
        }
        request.timeout(deadline(self.job)).send().await
    }

    async fn run(&self, address: &str) -> Tried {
        let (queen, job, worker) = (self.queen, self.job, &self.worker);
        let _counted = InFlight::new(&queen.jobs, worker.clone());
        let sent = self.send(address).await;
        if let (true, Err(e)) = (self.retry, &sent)
            && job.rerunnable()
        {
            return self.retry_failed(e);
        }
        let died = |e: &reqwest::Error| !e.is_timeout() && job.rerunnable();
        let failed = |e: &dyn std::fmt::Display| {
            count_job(queen, "worker_failed");
            Tried::Failed(ApiError::new(StatusCode::BAD_GATEWAY, "worker_failed", format!("{worker}: {e}")))
        };
        match sent {
            Ok(resp) if matches!(resp.status().as_u16(), 429 | 503) => Tried::Next,
            Ok(resp) if resp.status().is_redirection() => {
                // A worker answers jobs; one that points elsewhere is not followed, and
                // where it points is not passed on.
                failed(&format!("answered {} (a redirect, not followed)", resp.status()))
            }
            Ok(resp) => {
                let status = resp.status();
                let bytes = match capped(resp, MAX_ANSWER_BYTES).await {
                    Ok(b) => b,
                    Err(Capped::TooLarge) => {
                        return failed(&format!("answered more than {MAX_ANSWER_BYTES} bytes; not passed on"));
                    }
                    Err(Capped::Read(e)) if died(&e) => {
                        tracing::warn!(%worker, error = %e, "worker died answering a job; running it elsewhere");
                        count_job(queen, "rerun");
                        return Tried::Next;
                    }
                    Err(Capped::Read(e)) => return failed(&e),
                };
                count_job(queen, if status.is_success() { "done" } else { "rejected" });
                let response = Response::builder()
                    .status(status.as_u16())
                    .header(header::CONTENT_TYPE, "application/json")
                    .header("x-apiary-worker", worker.as_str())
                    .body(Body::from(bytes));
                match response {
                    Ok(r) => Tried::Answered(r),
                    Err(e) => Tried::Failed(ApiError::new(StatusCode::BAD_GATEWAY, "worker_failed", e.to_string())),
                }
            }
            Err(e) if e.is_connect() => Tried::Next,
            Err(e) if died(&e) => {
                tracing::warn!(%worker, error = %e, "worker died running a job; running it elsewhere");
                count_job(queen, "rerun");
                Tried::Next
            }
            // Still running, perhaps: do not run it a second time at once.
            Err(e) => failed(&e),
        }
    }

    /// The worker a keyed job went to before does not answer: elsewhere only if it is
    /// certainly gone.
    fn retry_failed(&self, e: &reqwest::Error) -> Tried {
        let worker = &self.worker;
        if !refused(e) && !certainly_gone(self.queen, worker) {
            // It may be running the job still, cut off from us: a run elsewhere could be a
            // second one.
            count_job(self.queen, "worker_unreachable");
            return Tried::Failed(ApiError::unavailable(
                "worker_unreachable",
                format!("{worker}, which took this job, does not answer now; try again"),
                Duration::from_secs(2),
            ));
        }
        tracing::warn!(%worker, error = %e, "the worker that took a keyed job is gone; running it elsewhere");
        count_job(self.queen, "rerun");
        Tried::Next
    }
}

/// What every mutating call answers once a cluster shutdown has passed GATE.
pub fn shutting_down() -> ApiError {
    ApiError::unavailable(
        "shutting_down",
        "the cluster is shutting down and takes no new work",
        Duration::from_secs(30),
    )
}
