//! `POST /v1/jobs` at the queen: pick an available worker by in-flight load and forward.
//!
//! A job is tried on another worker when the first one certainly did not run it
//! (connection refused, or the worker answered 429/503 before starting), and when the
//! worker died running it (the connection broke before an answer) if the job is one that
//! may run twice: every kind there is now is a pure computation, so a job whose worker
//! was killed completes elsewhere instead of being lost. A worker that is merely slow
//! (the deadline passed) is not raced: that job is reported as failed.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::Response;
use contract::{JobRequest, NodeId};
use lifecycle::http::{ApiError, JsonBody, QueryParams};
use serde::Deserialize;

use crate::Queen;
use crate::metrics::JobLabels;

/// Workers tried for one job before the queen gives up with 503.
const ATTEMPTS: usize = 3;

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

/// Counts a forwarded job against its worker until it is answered, however that ends.
struct InFlight<'a>(&'a Queen, NodeId);

impl<'a> InFlight<'a> {
    fn new(queen: &'a Queen, worker: NodeId) -> Self {
        *queen.jobs_in_flight.entry(worker.clone()).or_insert(0) += 1;
        Self(queen, worker)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(mut n) = self.0.jobs_in_flight.get_mut(&self.1) {
            *n = n.saturating_sub(1);
        }
    }
}

impl Queen {
    /// The available worker with the least work, among those not yet tried.
    fn pick_worker(&self, deployment: Option<&NodeId>, tried: &BTreeSet<NodeId>) -> Option<(NodeId, String)> {
        let mut best: Option<((u32, u32, u64), NodeId, String)> = None;
        self.workers.visit(|w| {
            let p = w.payload;
            if !w.available || tried.contains(&p.id) || deployment.is_some_and(|d| p.kind != d.as_str()) {
                return;
            }
            let ours = self.jobs_in_flight.get(&p.id).map(|n| *n).unwrap_or(0);
            // Ties go to a random worker, so equal workers share the load.
            let key = (ours, p.in_flight, fastrand::u64(..));
            if best.as_ref().is_none_or(|(k, ..)| key < *k) {
                best = Some((key, p.id.clone(), p.address.clone()));
            }
        });
        best.map(|(_, id, address)| (id, address))
    }

    fn count_job(&self, outcome: &'static str) {
        self.metrics.jobs.get_or_create(&JobLabels { outcome }).inc();
    }
}

/// Runs a job on the available worker with the least in flight; the worker's answer is
/// passed back as it is.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", params(JobQuery), request_body = JobRequest, responses(
    (status = 200, body = contract::JobResponse, description = "the worker's answer"),
    (status = "4XX", body = contract::ApiErrorBody, description = "refused; nothing ran"),
    (status = 502, body = contract::ApiErrorBody, description = "the worker failed while running it"),
    (status = 503, body = contract::ApiErrorBody, description = "no worker available, or the cluster is shutting down"),
))]
pub async fn route(
    State(queen): State<Arc<Queen>>,
    QueryParams(query): QueryParams<JobQuery>,
    body: Result<JsonBody<JobRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let JsonBody(job) = body?;
    if queen.orchestrator.gated() {
        queen.count_job("refused_shutdown");
        return Err(shutting_down());
    }
    let deployment = match query.deployment {
        Some(d) => Some(NodeId::new(d).map_err(|e| ApiError::bad_request("invalid_id", e.to_string()))?),
        None => None,
    };
    let mut tried = BTreeSet::new();
    for _ in 0..ATTEMPTS {
        let Some((worker, address)) = queen.pick_worker(deployment.as_ref(), &tried) else { break };
        tried.insert(worker.clone());
        let _counted = InFlight::new(&queen, worker.clone());
        let sent = queen
            .http
            .post(format!("{address}{}", contract::paths::JOBS))
            .json(&job)
            .timeout(deadline(&job))
            .send()
            .await;
        let died = |e: &reqwest::Error| !e.is_timeout() && job.rerunnable();
        match sent {
            Ok(resp) if matches!(resp.status().as_u16(), 429 | 503) => continue,
            Ok(resp) => {
                let status = resp.status();
                let bytes = match resp.bytes().await {
                    Ok(b) => b,
                    Err(e) if died(&e) => {
                        tracing::warn!(%worker, error = %e, "worker died answering a job; running it elsewhere");
                        queen.count_job("rerun");
                        continue;
                    }
                    Err(e) => {
                        queen.count_job("worker_failed");
                        return Err(ApiError::new(StatusCode::BAD_GATEWAY, "worker_failed", format!("{worker}: {e}")));
                    }
                };
                queen.count_job(if status.is_success() { "done" } else { "rejected" });
                let response = Response::builder()
                    .status(status.as_u16())
                    .header(header::CONTENT_TYPE, "application/json")
                    .header("x-apiary-worker", worker.as_str())
                    .body(Body::from(bytes));
                return response.map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "worker_failed", e.to_string()));
            }
            Err(e) if e.is_connect() => continue,
            Err(e) if died(&e) => {
                tracing::warn!(%worker, error = %e, "worker died running a job; running it elsewhere");
                queen.count_job("rerun");
            }
            Err(e) => {
                queen.count_job("worker_failed");
                // Still running, perhaps: do not run it a second time at once.
                return Err(ApiError::new(StatusCode::BAD_GATEWAY, "worker_failed", format!("{worker}: {e}")));
            }
        }
    }
    queen.count_job("no_worker");
    Err(ApiError::unavailable(
        "no_worker_available",
        "no available worker can take this job now",
        Duration::from_secs(1),
    ))
}

/// What every mutating call answers once a cluster shutdown has passed GATE.
pub fn shutting_down() -> ApiError {
    ApiError::unavailable(
        "shutting_down",
        "the cluster is shutting down and takes no new work",
        Duration::from_secs(30),
    )
}
