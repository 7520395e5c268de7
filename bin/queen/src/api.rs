//! The queen's HTTP API under `/v1`, plus health and metrics.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::http::header;
use axum::middleware::from_fn_with_state;
use axum::response::IntoResponse;
use axum::response::sse::Event;
use axum::routing::{any, get, post};
use contract::{
    Assignment, CommandAck, ContractError, DeploymentSpec, DeploymentStatus, HeartbeatResponse, HiveCommand,
    HiveHeartbeat, HiveSummary, MAX_REPLICAS, NodeEvent, NodeId, NodeKind, ScaleBody, StrategyBody, WorkerHeartbeat,
    WorkerSummary, paths,
};
use contract::{
    ClusterStats, DrainRequest, DrainStatus, EligibilityBody, ShutdownAnswer, ShutdownRequest, ShutdownState,
};
use heartbeat_registry::{HeartbeatPayload, HeartbeatRegistry, NodeRef, UpsertOutcome};
use lifecycle::http::{ApiError, JsonBody, method_not_allowed_fallback, not_found_fallback};
use prometheus_client::metrics::histogram::Histogram;
use tower_http::services::ServeDir;

use crate::metrics::{HeartbeatLabels, KindLabels, StreamLabels};
use crate::orchestrator::DeployError;
use crate::{Queen, snapshot, summary};

pub fn router(queen: Arc<Queen>) -> Router {
    let health = queen.health.router();
    Router::new()
        .route(
            paths::HIVE_HEARTBEAT,
            post(heartbeat::<HiveHeartbeat>)
                .route_layer(from_fn_with_state(ingest_histogram(&queen, NodeKind::Hive), timed)),
        )
        .route(
            paths::WORKER_HEARTBEAT,
            post(heartbeat::<WorkerHeartbeat>)
                .route_layer(from_fn_with_state(ingest_histogram(&queen, NodeKind::Worker), timed)),
        )
        .route(paths::HEARTBEAT_STREAM, get(snapshot::stream))
        .route(paths::SNAPSHOT, get(latest_snapshot))
        .route(paths::HIVES, get(list::<HiveHeartbeat>))
        .route("/v1/hives/{id}", get(one::<HiveHeartbeat>).delete(remove_hive))
        .route("/v1/hives/{id}/eligibility", axum::routing::put(set_eligibility))
        .route("/v1/hives/{id}/drain", get(get_drain).post(start_drain).delete(cancel_drain))
        .route(paths::CLUSTER_STATS, get(stats))
        .route("/v1/hives/{id}/events", get(events::<HiveHeartbeat>))
        .route(paths::WORKERS, get(list::<WorkerHeartbeat>))
        .route("/v1/workers/{id}", get(one::<WorkerHeartbeat>))
        .route("/v1/workers/{id}/events", get(events::<WorkerHeartbeat>))
        .route("/v1/hives/{id}/commands", get(commands))
        .route("/v1/hives/{id}/acks", post(ack))
        .route(paths::DEPLOYMENTS, get(list_deployments).post(create_deployment))
        .route("/v1/deployments/{name}", get(get_deployment).patch(scale_deployment).delete(delete_deployment))
        .route(paths::ASSIGNMENTS, get(assignments))
        .route(paths::STRATEGY, get(get_strategy).put(put_strategy))
        .route(paths::JOBS, post(crate::jobs::route))
        .route(paths::CLUSTER_SHUTDOWN, get(get_shutdown).post(post_shutdown))
        .route("/v1/{*rest}", any(not_found_fallback))
        .method_not_allowed_fallback(method_not_allowed_fallback)
        .layer(DefaultBodyLimit::max(contract::MAX_BODY_BYTES))
        .with_state(Arc::clone(&queen))
        .merge(health)
        .merge(dashboard(queen.config().ui_dir.as_deref()))
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&queen), crate::auth::require))
}

/// The dashboard's files at `/`, or a page that says how to build them.
fn dashboard(dir: Option<&std::path::Path>) -> Router {
    match dir {
        Some(dir) => Router::new().fallback_service(ServeDir::new(dir)),
        None => Router::new()
            .route("/", get(no_dashboard))
            .route("/index.html", get(no_dashboard))
            .fallback(not_found_fallback),
    }
}

async fn no_dashboard() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        "<!doctype html><title>Apiary</title><h1>Apiary</h1>\
                 <p>This queen has no dashboard to serve: build it with <code>cargo xtask web</code> \
                 (it lands in <code>web-ui/</code> next to the queen binary) or point <code>--ui-dir</code> at it.</p>\
                 <p>The API is under <a href=\"/v1/snapshot\">/v1</a>; the live stream is \
                 <a href=\"/v1/heartbeats/stream\">/v1/heartbeats/stream</a>.</p>",
    )
}

/// What the queen needs to take in one kind of heartbeat; implemented for the two kinds
/// so that ingest, lookup and summaries are written once.
pub trait NodePayload: HeartbeatPayload<Id = NodeId> + serde::de::DeserializeOwned {
    const KIND: NodeKind;
    type Summary: serde::Serialize + Send;
    fn validate(&self) -> Result<(), ContractError>;
    fn registry(queen: &Queen) -> &HeartbeatRegistry<Self>;
    fn summary(queen: &Queen, node: NodeRef<'_, Self>) -> Self::Summary;
}

impl NodePayload for HiveHeartbeat {
    const KIND: NodeKind = NodeKind::Hive;
    type Summary = HiveSummary;
    fn validate(&self) -> Result<(), ContractError> {
        HiveHeartbeat::validate(self)
    }
    fn registry(queen: &Queen) -> &HeartbeatRegistry<Self> {
        &queen.hives
    }
    fn summary(queen: &Queen, node: NodeRef<'_, Self>) -> HiveSummary {
        let mut h = summary::hive(node);
        h.eligible = queen.orchestrator.eligible(&h.id);
        h
    }
}

impl NodePayload for WorkerHeartbeat {
    const KIND: NodeKind = NodeKind::Worker;
    type Summary = WorkerSummary;
    fn validate(&self) -> Result<(), ContractError> {
        WorkerHeartbeat::validate(self)
    }
    fn registry(queen: &Queen) -> &HeartbeatRegistry<Self> {
        &queen.workers
    }
    fn summary(_: &Queen, node: NodeRef<'_, Self>) -> WorkerSummary {
        summary::worker(node)
    }
}

/// Times a heartbeat from its arrival (before the body is read) to its answer.
async fn timed(
    State(histogram): State<Histogram>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    histogram.observe(started.elapsed().as_secs_f64());
    resp
}

fn ingest_histogram(queen: &Queen, kind: NodeKind) -> Histogram {
    queen.metrics.ingest_seconds.get_or_create(&KindLabels { kind: kind.as_str() }).clone()
}

fn count(queen: &Queen, kind: NodeKind, outcome: &'static str) {
    queen.metrics.heartbeats.get_or_create(&HeartbeatLabels { kind: kind.as_str(), outcome }).inc();
}

/// `POST /v1/{hive,worker}-heartbeat`. A rejected heartbeat changes nothing.
async fn heartbeat<T: NodePayload>(
    State(queen): State<Arc<Queen>>,
    body: Result<JsonBody<T>, ApiError>,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    let payload = match body
        .and_then(|JsonBody(p)| p.validate().map(|()| p).map_err(|e| ApiError::unprocessable(e.to_string())))
    {
        Ok(p) => p,
        Err(e) => {
            count(&queen, T::KIND, "rejected");
            return Err(e);
        }
    };
    if let Err(not_until) = queen.heartbeat_limiter().check_key(&format!("{}/{}", T::KIND.as_str(), payload.id())) {
        count(&queen, T::KIND, "rate_limited");
        let wait = not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
        return Err(ApiError::too_many("rate_limited", format!("{} sends heartbeats too fast", payload.id()), wait));
    }
    let outcome = T::registry(&queen).upsert(payload);
    let accepted = outcome != UpsertOutcome::Stale;
    count(&queen, T::KIND, if accepted { "accepted" } else { "stale" });
    Ok(Json(HeartbeatResponse { next_interval_ms: queen.next_interval().as_millis() as u64, accepted }))
}

fn parse_id(raw: &str) -> Result<NodeId, ApiError> {
    NodeId::new(raw).map_err(|e| ApiError::bad_request("invalid_id", e.to_string()))
}

fn unknown<T: NodePayload>(id: &NodeId) -> ApiError {
    ApiError::not_found(format!("no {} named {id}", T::KIND.as_str()))
}

async fn list<T: NodePayload>(State(queen): State<Arc<Queen>>) -> Json<Vec<T::Summary>> {
    let views = T::registry(&queen).list_all();
    Json(views.iter().map(|v| T::summary(&queen, summary::as_ref(v))).collect())
}

async fn one<T: NodePayload>(
    State(queen): State<Arc<Queen>>,
    Path(raw): Path<String>,
) -> Result<Json<T::Summary>, ApiError> {
    let id = parse_id(&raw)?;
    let view = T::registry(&queen).get(&id).ok_or_else(|| unknown::<T>(&id))?;
    Ok(Json(T::summary(&queen, summary::as_ref(&view))))
}

/// `GET /v1/{hives,workers}/{id}/events`: why this node is in the state it is in.
async fn events<T: NodePayload>(
    State(queen): State<Arc<Queen>>,
    Path(raw): Path<String>,
) -> Result<Json<Vec<NodeEvent>>, ApiError> {
    let id = parse_id(&raw)?;
    let history = T::registry(&queen).history(&id).ok_or_else(|| unknown::<T>(&id))?;
    Ok(Json(history.iter().map(|e| summary::node_event(T::KIND, e)).collect()))
}

/// `GET /v1/snapshot`: the latest published snapshot, the same bytes the stream sent.
async fn latest_snapshot(State(queen): State<Arc<Queen>>) -> impl IntoResponse {
    let frame = queen.latest_frame();
    ([(header::CONTENT_TYPE, "application/json")], frame.json.to_string())
}

impl From<DeployError> for ApiError {
    fn from(e: DeployError) -> Self {
        match e {
            DeployError::Exists(_) => ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            DeployError::NotFound(_) => ApiError::not_found(e.to_string()),
            DeployError::Store(_) => store_error(e),
        }
    }
}

fn store_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::unavailable("store_unavailable", e.to_string(), std::time::Duration::from_secs(1))
}

/// `GET /v1/hives/{id}/commands`: the control channel. The hive's current desired set at
/// once, then every change; the hive ACKs each over HTTP.
async fn commands(State(queen): State<Arc<Queen>>, Path(raw): Path<String>) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&raw)?;
    tracing::info!(hive = %id, "control channel open");
    let rx = queen.orchestrator.subscribe(&id);
    let sent = queen.metrics.sse_bytes.get_or_create(&StreamLabels { stream: "commands" }).clone();
    Ok(snapshot::watch_sse(rx, queen.stop.clone(), (), sent, |cmd: &HiveCommand| {
        let data = serde_json::to_string(cmd).unwrap_or_default();
        let len = data.len();
        (Event::default().event("command").id(cmd.id.to_string()).data(data), len)
    }))
}

async fn ack(
    State(queen): State<Arc<Queen>>,
    Path(raw): Path<String>,
    JsonBody(ack): JsonBody<CommandAck>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&raw)?;
    queen.orchestrator.ack(&id, ack);
    Ok(StatusCode::NO_CONTENT)
}

async fn list_deployments(State(queen): State<Arc<Queen>>) -> Json<Vec<DeploymentStatus>> {
    Json(queen.orchestrator.list(&queen.workers))
}

fn found(queen: &Queen, name: &NodeId) -> Result<Json<DeploymentStatus>, ApiError> {
    queen
        .orchestrator
        .get(name, &queen.workers)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no deployment named {name}")))
}

async fn get_deployment(
    State(queen): State<Arc<Queen>>,
    Path(raw): Path<String>,
) -> Result<Json<DeploymentStatus>, ApiError> {
    found(&queen, &parse_id(&raw)?)
}

async fn create_deployment(
    State(queen): State<Arc<Queen>>,
    JsonBody(spec): JsonBody<DeploymentSpec>,
) -> Result<(StatusCode, Json<DeploymentStatus>), ApiError> {
    refuse_when_gated(&queen)?;
    spec.validate().map_err(|e| ApiError::unprocessable(e.to_string()))?;
    let name = spec.name.clone();
    queen.orchestrator.create(spec)?;
    queen.reconcile();
    Ok((StatusCode::CREATED, found(&queen, &name)?))
}

async fn scale_deployment(
    State(queen): State<Arc<Queen>>,
    Path(raw): Path<String>,
    JsonBody(body): JsonBody<ScaleBody>,
) -> Result<Json<DeploymentStatus>, ApiError> {
    refuse_when_gated(&queen)?;
    let name = parse_id(&raw)?;
    if body.replicas > MAX_REPLICAS {
        return Err(ApiError::unprocessable(format!("replicas: at most {MAX_REPLICAS}")));
    }
    queen.orchestrator.scale(&name, body.replicas)?;
    queen.reconcile();
    found(&queen, &name)
}

async fn delete_deployment(State(queen): State<Arc<Queen>>, Path(raw): Path<String>) -> Result<StatusCode, ApiError> {
    refuse_when_gated(&queen)?;
    queen.orchestrator.delete(&parse_id(&raw)?)?;
    queen.reconcile();
    Ok(StatusCode::NO_CONTENT)
}

async fn assignments(State(queen): State<Arc<Queen>>) -> Json<Vec<Assignment>> {
    let mut list = queen.orchestrator.assignments();
    // Restarts are the hive's to count; join them in from its last report.
    for a in &mut list {
        if let Some(h) = a.hive.as_ref().and_then(|h| queen.hives.get(h)) {
            a.restarts = h.payload.workers.iter().find(|w| w.name == a.worker).map(|w| w.restarts).unwrap_or(0);
        }
    }
    Json(list)
}

async fn get_strategy(State(queen): State<Arc<Queen>>) -> Json<StrategyBody> {
    Json(StrategyBody { strategy: queen.orchestrator.strategy() })
}

async fn put_strategy(
    State(queen): State<Arc<Queen>>,
    JsonBody(body): JsonBody<StrategyBody>,
) -> Result<Json<StrategyBody>, ApiError> {
    queen.orchestrator.set_strategy(body.strategy).map_err(store_error)?;
    tracing::info!(strategy = body.strategy.as_str(), "placement strategy changed");
    Ok(Json(body))
}

fn refuse_when_gated(queen: &Queen) -> Result<(), ApiError> {
    if queen.orchestrator.gated() { Err(crate::jobs::shutting_down()) } else { Ok(()) }
}

/// `POST /v1/cluster/shutdown`: a dry run answers the plan; otherwise the sequence starts
/// (202) and runs in the background; `GET` follows it.
async fn post_shutdown(
    State(queen): State<Arc<Queen>>,
    JsonBody(req): JsonBody<ShutdownRequest>,
) -> Result<(StatusCode, Json<ShutdownAnswer>), ApiError> {
    let dry = req.dry_run;
    let answer = crate::shutdown::start(&queen, req)?;
    Ok((if dry { StatusCode::OK } else { StatusCode::ACCEPTED }, Json(answer)))
}

async fn get_shutdown(State(queen): State<Arc<Queen>>) -> Result<Json<ShutdownState>, ApiError> {
    queen.shutdown().map(Json).ok_or_else(|| ApiError::not_found("no cluster shutdown has been started"))
}

async fn set_eligibility(
    State(queen): State<Arc<Queen>>,
    Path(raw): Path<String>,
    JsonBody(body): JsonBody<EligibilityBody>,
) -> Result<Json<EligibilityBody>, ApiError> {
    let id = parse_id(&raw)?;
    // A typo must not leave a durable mark for a hive that never existed.
    if queen.hives.get(&id).is_none() {
        return Err(unknown::<HiveHeartbeat>(&id));
    }
    queen.orchestrator.set_eligible(&id, body.eligible).map_err(store_error)?;
    tracing::info!(hive = %id, eligible = body.eligible, "eligibility changed");
    queen.reconcile();
    Ok(Json(body))
}

async fn start_drain(
    State(queen): State<Arc<Queen>>,
    Path(raw): Path<String>,
    JsonBody(req): JsonBody<DrainRequest>,
) -> Result<(StatusCode, Json<DrainStatus>), ApiError> {
    refuse_when_gated(&queen)?;
    let id = parse_id(&raw)?;
    if queen.hives.get(&id).is_none() {
        return Err(unknown::<HiveHeartbeat>(&id));
    }
    let deadline =
        req.deadline_ms.map(std::time::Duration::from_millis).unwrap_or(crate::orchestrator::DEFAULT_DRAIN_DEADLINE);
    queen.orchestrator.start_drain(&id, deadline).map_err(store_error)?;
    tracing::warn!(hive = %id, ?deadline, "drain started");
    queen.reconcile();
    let status = queen.orchestrator.drain(&id).ok_or_else(|| unknown::<HiveHeartbeat>(&id))?;
    Ok((StatusCode::ACCEPTED, Json(status)))
}

async fn get_drain(State(queen): State<Arc<Queen>>, Path(raw): Path<String>) -> Result<Json<DrainStatus>, ApiError> {
    let id = parse_id(&raw)?;
    queen.orchestrator.drain(&id).map(Json).ok_or_else(|| ApiError::not_found(format!("no drain of {id}")))
}

async fn cancel_drain(State(queen): State<Arc<Queen>>, Path(raw): Path<String>) -> Result<Json<DrainStatus>, ApiError> {
    let id = parse_id(&raw)?;
    let status =
        queen.orchestrator.cancel_drain(&id).ok_or_else(|| ApiError::not_found(format!("no drain of {id}")))?;
    tracing::warn!(hive = %id, "drain cancelled");
    Ok(Json(status))
}

#[derive(serde::Deserialize)]
struct RemoveQuery {
    #[serde(default)]
    force: bool,
}

/// `DELETE /v1/hives/{id}`: forgets a hive that is gone; its events stay in the log.
async fn remove_hive(
    State(queen): State<Arc<Queen>>,
    Path(raw): Path<String>,
    axum::extract::Query(q): axum::extract::Query<RemoveQuery>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&raw)?;
    let view = queen.hives.get(&id).ok_or_else(|| unknown::<HiveHeartbeat>(&id))?;
    if view.liveness.is_up() && !q.force {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "hive_online",
            format!("{id} is online; stop it first, or add force to forget it anyway"),
        ));
    }
    queen.hives.remove(&id);
    tracing::warn!(hive = %id, "hive removed");
    queen.reconcile();
    Ok(StatusCode::NO_CONTENT)
}

async fn stats(State(queen): State<Arc<Queen>>) -> Json<ClusterStats> {
    Json(queen.stats())
}
