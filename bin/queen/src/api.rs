//! The queen's HTTP API under `/v1`, plus health and metrics.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::StatusCode;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{any, get};
use contract::{
    ApiErrorBody, Assignment, CommandAck, ContractError, DeploymentSpec, DeploymentStatus, HeartbeatResponse,
    HiveCommand, HiveHeartbeat, HiveSummary, MAX_REPLICAS, NodeEvent, NodeId, NodeKind, ScaleBody, StrategyBody,
    WorkerHeartbeat, WorkerSummary, paths,
};
use contract::{
    ClusterStats, DrainRequest, DrainStatus, EligibilityBody, ShutdownAnswer, ShutdownRequest, ShutdownState, Snapshot,
};
use heartbeat_registry::{HeartbeatPayload, HeartbeatRegistry, NodeRef, UpsertOutcome};
use lifecycle::http::{ApiError, JsonBody, PathParam, QueryParams, method_not_allowed_fallback, not_found_fallback};
use tower_http::services::ServeDir;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::NodeIdentity;
use crate::metrics::{HeartbeatLabels, StreamLabels};
use crate::orchestrator::DeployError;
use crate::{Queen, snapshot, summary};

/// The queen's routes with their OpenAPI description: each route is registered from its
/// handler's `#[utoipa::path]`, so the document cannot list a route the router lacks.
fn api() -> OpenApiRouter<Arc<Queen>> {
    OpenApiRouter::new()
        .routes(routes!(hive_heartbeat))
        .routes(routes!(worker_heartbeat))
        .routes(routes!(snapshot::stream))
        .routes(routes!(latest_snapshot))
        .routes(routes!(list_hives))
        .routes(routes!(get_hive, remove_hive))
        .routes(routes!(set_eligibility))
        .routes(routes!(get_drain, start_drain, cancel_drain))
        .routes(routes!(stats))
        .routes(routes!(leader))
        .routes(routes!(transfer_leader))
        .routes(routes!(hive_events))
        .routes(routes!(list_workers))
        .routes(routes!(get_worker))
        .routes(routes!(worker_events))
        .routes(routes!(commands))
        .routes(routes!(ack))
        .routes(routes!(list_deployments, create_deployment))
        .routes(routes!(get_deployment, scale_deployment, delete_deployment))
        .routes(routes!(assignments))
        .routes(routes!(get_strategy, put_strategy))
        .routes(routes!(crate::jobs::route))
        .routes(routes!(get_shutdown, post_shutdown))
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "Apiary queen", description = "Heartbeats, the live cluster snapshot, deployments, drains and cluster shutdown."),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
struct ApiInfo;

/// Every call may carry `Authorization: Bearer <token>`; which token a call needs is in
/// the README (cluster, admin or read).
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI 3 document of the queen's whole HTTP API (what `/v1/openapi.json` serves).
pub fn openapi() -> utoipa::openapi::OpenApi {
    use utoipa::OpenApi;
    let (_, queen_paths) = api().split_for_parts();
    let (_, health_paths) = lifecycle::health::Health::builder().build().api_router().split_for_parts();
    let mut doc = ApiInfo::openapi();
    doc.merge(queen_paths);
    doc.merge(health_paths);
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}

pub fn router(queen: Arc<Queen>) -> Router {
    let (api, _) = api().split_for_parts();
    let document = Arc::new(openapi().to_json().unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}")));
    api.route(
        paths::OPENAPI,
        get(move || {
            let document = Arc::clone(&document);
            async move { ([(header::CONTENT_TYPE, "application/json")], document.to_string()) }
        }),
    )
    .route("/v1/{*rest}", any(not_found_fallback))
    .method_not_allowed_fallback(method_not_allowed_fallback)
    .layer(DefaultBodyLimit::max(contract::MAX_BODY_BYTES))
    .with_state(Arc::clone(&queen))
    .merge(queen.health.router())
    .merge(dashboard(queen.config().ui_dir.as_deref()))
    .layer(axum::middleware::from_fn_with_state(Arc::clone(&queen), leader_only))
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
                 (it lands in <code>dashboard/</code> next to the queen binary) or point <code>--ui-dir</code> at it.</p>\
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
    /// Whether a node token with this identity may send this heartbeat.
    fn claimed_by(&self, identity: &NodeIdentity) -> bool;
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
    fn claimed_by(&self, identity: &NodeIdentity) -> bool {
        matches!(identity, NodeIdentity::Hive(h) if *h == self.id)
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
    fn claimed_by(&self, identity: &NodeIdentity) -> bool {
        matches!(identity, NodeIdentity::Worker { hive, worker } if *worker == self.id && *hive == self.hive_id)
    }
    fn summary(_: &Queen, node: NodeRef<'_, Self>) -> WorkerSummary {
        summary::worker(node)
    }
}

fn count(queen: &Queen, kind: NodeKind, outcome: &'static str) {
    queen.metrics.heartbeats.get_or_create(&HeartbeatLabels { kind: kind.as_str(), outcome }).inc();
}

/// A hive's heartbeat: its readings, capacity, labels and the workers it supervises.
#[utoipa::path(post, path = "/v1/hive-heartbeat", tag = "heartbeats", request_body = HiveHeartbeat, responses(
    (status = 200, body = HeartbeatResponse, description = "taken in (or stale: `accepted` false, nothing changed)"),
    (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed"),
))]
async fn hive_heartbeat(State(queen): State<Arc<Queen>>, req: Request) -> Result<Json<HeartbeatResponse>, ApiError> {
    timed_heartbeat::<HiveHeartbeat>(queen, req).await
}

/// A worker's heartbeat: its status and jobs in flight.
#[utoipa::path(post, path = "/v1/worker-heartbeat", tag = "heartbeats", request_body = WorkerHeartbeat, responses(
    (status = 200, body = HeartbeatResponse, description = "taken in (or stale: `accepted` false, nothing changed)"),
    (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed"),
))]
async fn worker_heartbeat(State(queen): State<Arc<Queen>>, req: Request) -> Result<Json<HeartbeatResponse>, ApiError> {
    timed_heartbeat::<WorkerHeartbeat>(queen, req).await
}

/// Times a heartbeat from the end of its head (before the body is read) to its answer.
async fn timed_heartbeat<T: NodePayload>(queen: Arc<Queen>, req: Request) -> Result<Json<HeartbeatResponse>, ApiError> {
    let started = std::time::Instant::now();
    let identity = req.extensions().get::<NodeIdentity>().cloned();
    let body = JsonBody::<T>::from_request(req, &()).await;
    let answer = heartbeat::<T>(&queen, body, identity.as_ref());
    queen.metrics.ingest(T::KIND).observe(started.elapsed().as_secs_f64());
    answer
}

/// A rejected heartbeat changes nothing.
fn heartbeat<T: NodePayload>(
    queen: &Queen,
    body: Result<JsonBody<T>, ApiError>,
    identity: Option<&NodeIdentity>,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    let payload = match body
        .and_then(|JsonBody(p)| p.validate().map(|()| p).map_err(|e| ApiError::unprocessable(e.to_string())))
    {
        Ok(p) => p,
        Err(e) => {
            count(queen, T::KIND, "rejected");
            return Err(e);
        }
    };
    if let Some(identity) = identity.filter(|i| !payload.claimed_by(i)) {
        count(queen, T::KIND, "token_mismatch");
        return Err(crate::auth::token_mismatch(identity));
    }
    if let Err(not_until) = queen.heartbeat_limiter().check_key(&format!("{}/{}", T::KIND.as_str(), payload.id())) {
        count(queen, T::KIND, "rate_limited");
        let wait = not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
        return Err(ApiError::too_many("rate_limited", format!("{} sends heartbeats too fast", payload.id()), wait));
    }
    let outcome = T::registry(queen).upsert(payload);
    let accepted = outcome != UpsertOutcome::Stale;
    count(queen, T::KIND, if accepted { "accepted" } else { "stale" });
    Ok(Json(HeartbeatResponse { next_interval_ms: queen.next_interval().as_millis() as u64, accepted }))
}

fn parse_id(raw: &str) -> Result<NodeId, ApiError> {
    NodeId::new(raw).map_err(|e| ApiError::bad_request("invalid_id", e.to_string()))
}

fn unknown<T: NodePayload>(id: &NodeId) -> ApiError {
    ApiError::not_found(format!("no {} named {id}", T::KIND.as_str()))
}

/// Every hive the queen knows, with its liveness.
#[utoipa::path(get, path = "/v1/hives", tag = "nodes", responses((status = 200, body = Vec<HiveSummary>), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed")))]
async fn list_hives(State(queen): State<Arc<Queen>>) -> Json<Vec<HiveSummary>> {
    list::<HiveHeartbeat>(&queen)
}

/// Every worker the queen knows, with its liveness.
#[utoipa::path(get, path = "/v1/workers", tag = "nodes", responses((status = 200, body = Vec<WorkerSummary>), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed")))]
async fn list_workers(State(queen): State<Arc<Queen>>) -> Json<Vec<WorkerSummary>> {
    list::<WorkerHeartbeat>(&queen)
}

/// One hive.
#[utoipa::path(get, path = "/v1/hives/{id}", tag = "nodes", params(("id" = NodeId, Path, description = "hive id")), responses((status = 200, body = HiveSummary), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed")))]
async fn get_hive(
    State(queen): State<Arc<Queen>>,
    PathParam(raw): PathParam<String>,
) -> Result<Json<HiveSummary>, ApiError> {
    one::<HiveHeartbeat>(&queen, &raw)
}

/// One worker.
#[utoipa::path(get, path = "/v1/workers/{id}", tag = "nodes", params(("id" = NodeId, Path, description = "worker id")), responses((status = 200, body = WorkerSummary), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed")))]
async fn get_worker(
    State(queen): State<Arc<Queen>>,
    PathParam(raw): PathParam<String>,
) -> Result<Json<WorkerSummary>, ApiError> {
    one::<WorkerHeartbeat>(&queen, &raw)
}

/// A hive's liveness history with reasons: why it is in the state it is in.
#[utoipa::path(get, path = "/v1/hives/{id}/events", tag = "nodes", params(("id" = NodeId, Path, description = "hive id")), responses((status = 200, body = Vec<NodeEvent>), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed")))]
async fn hive_events(
    State(queen): State<Arc<Queen>>,
    PathParam(raw): PathParam<String>,
) -> Result<Json<Vec<NodeEvent>>, ApiError> {
    events::<HiveHeartbeat>(&queen, &raw)
}

/// A worker's liveness history with reasons.
#[utoipa::path(get, path = "/v1/workers/{id}/events", tag = "nodes", params(("id" = NodeId, Path, description = "worker id")), responses((status = 200, body = Vec<NodeEvent>), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed")))]
async fn worker_events(
    State(queen): State<Arc<Queen>>,
    PathParam(raw): PathParam<String>,
) -> Result<Json<Vec<NodeEvent>>, ApiError> {
    events::<WorkerHeartbeat>(&queen, &raw)
}

fn list<T: NodePayload>(queen: &Queen) -> Json<Vec<T::Summary>> {
    let views = T::registry(queen).list_all();
    Json(views.iter().map(|v| T::summary(queen, summary::as_ref(v))).collect())
}

fn one<T: NodePayload>(queen: &Queen, raw: &str) -> Result<Json<T::Summary>, ApiError> {
    let id = parse_id(raw)?;
    let view = T::registry(queen).get(&id).ok_or_else(|| unknown::<T>(&id))?;
    Ok(Json(T::summary(queen, summary::as_ref(&view))))
}

fn events<T: NodePayload>(queen: &Queen, raw: &str) -> Result<Json<Vec<NodeEvent>>, ApiError> {
    let id = parse_id(raw)?;
    let history = T::registry(queen).history(&id).ok_or_else(|| unknown::<T>(&id))?;
    Ok(Json(history.iter().map(|e| summary::node_event(T::KIND, e)).collect()))
}

/// The latest published snapshot, the same bytes the stream sent.
#[utoipa::path(get, path = "/v1/snapshot", tag = "snapshot", responses((status = 200, body = Snapshot), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed")))]
async fn latest_snapshot(State(queen): State<Arc<Queen>>) -> impl IntoResponse {
    let frame = queen.latest_frame();
    ([(header::CONTENT_TYPE, "application/json")], frame.json())
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

/// The control channel (SSE, `event: command`, each a `HiveCommand`): the hive's current
/// desired set at once, then every change; the hive ACKs each over HTTP.
#[utoipa::path(get, path = "/v1/hives/{id}/commands", tag = "control", params(("id" = NodeId, Path, description = "hive id")), responses(
    (status = 200, content_type = "text/event-stream", body = String, description = "an endless stream of HiveCommand events"),
    (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed"),
))]
async fn commands(
    State(queen): State<Arc<Queen>>,
    PathParam(raw): PathParam<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&raw)?;
    tracing::info!(hive = %id, "control channel open");
    let rx = queen.orchestrator.subscribe(&id);
    let sent = queen.metrics.sse_bytes.get_or_create(&StreamLabels { stream: "commands" }).clone();
    Ok(snapshot::watch_sse(rx, queen.stop.clone(), (), sent, |cmd: &HiveCommand| {
        snapshot::sse_event("command", cmd.id, &serde_json::to_string(cmd).unwrap_or_default()).0
    }))
}

/// A hive confirms it carried out a command.
#[utoipa::path(post, path = "/v1/hives/{id}/acks", tag = "control", params(("id" = NodeId, Path, description = "hive id")), request_body = CommandAck, responses(
    (status = 204, description = "recorded"), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed"),
))]
async fn ack(
    State(queen): State<Arc<Queen>>,
    PathParam(raw): PathParam<String>,
    JsonBody(ack): JsonBody<CommandAck>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&raw)?;
    queen.orchestrator.ack(&id, ack);
    Ok(StatusCode::NO_CONTENT)
}

/// Every deployment with where its replicas run.
#[utoipa::path(get, path = "/v1/deployments", tag = "deployments", responses((status = 200, body = Vec<DeploymentStatus>), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed")))]
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

/// One deployment.
#[utoipa::path(get, path = "/v1/deployments/{name}", tag = "deployments", params(("name" = NodeId, Path, description = "deployment name")), responses((status = 200, body = DeploymentStatus), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed")))]
async fn get_deployment(
    State(queen): State<Arc<Queen>>,
    PathParam(raw): PathParam<String>,
) -> Result<Json<DeploymentStatus>, ApiError> {
    found(&queen, &parse_id(&raw)?)
}

/// Declares a deployment; its replicas are placed at once.
#[utoipa::path(post, path = "/v1/deployments", tag = "deployments", request_body = DeploymentSpec, responses(
    (status = 201, body = DeploymentStatus), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed"), (status = 503, body = ApiErrorBody, description = "the store is unavailable, or a cluster shutdown is under way"),
))]
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

/// Changes a deployment's replica count.
#[utoipa::path(patch, path = "/v1/deployments/{name}", tag = "deployments", params(("name" = NodeId, Path, description = "deployment name")), request_body = ScaleBody, responses(
    (status = 200, body = DeploymentStatus), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed"), (status = 503, body = ApiErrorBody, description = "the store is unavailable, or a cluster shutdown is under way"),
))]
async fn scale_deployment(
    State(queen): State<Arc<Queen>>,
    PathParam(raw): PathParam<String>,
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

/// Stops every replica of a deployment gracefully and forgets it.
#[utoipa::path(delete, path = "/v1/deployments/{name}", tag = "deployments", params(("name" = NodeId, Path, description = "deployment name")), responses(
    (status = 204, description = "gone"), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed"), (status = 503, body = ApiErrorBody, description = "the store is unavailable, or a cluster shutdown is under way"),
))]
async fn delete_deployment(
    State(queen): State<Arc<Queen>>,
    PathParam(raw): PathParam<String>,
) -> Result<StatusCode, ApiError> {
    refuse_when_gated(&queen)?;
    queen.orchestrator.delete(&parse_id(&raw)?)?;
    queen.reconcile();
    Ok(StatusCode::NO_CONTENT)
}

/// Which replica runs on which hive, since when, how often it moved.
#[utoipa::path(get, path = "/v1/assignments", tag = "deployments", responses((status = 200, body = Vec<Assignment>), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed")))]
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

/// The placement strategy in use.
#[utoipa::path(get, path = "/v1/placement/strategy", tag = "deployments", responses((status = 200, body = StrategyBody), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed")))]
async fn get_strategy(State(queen): State<Arc<Queen>>) -> Json<StrategyBody> {
    Json(StrategyBody { strategy: queen.orchestrator.strategy() })
}

/// Changes the placement strategy (for placements from now on).
#[utoipa::path(put, path = "/v1/placement/strategy", tag = "deployments", request_body = StrategyBody, responses(
    (status = 200, body = StrategyBody), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed"), (status = 503, body = ApiErrorBody, description = "the store is unavailable, or a cluster shutdown is under way"),
))]
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

/// Shuts the whole cluster down in phases. A dry run answers the plan; otherwise the
/// sequence starts (202) and runs in the background; `GET` follows it.
#[utoipa::path(post, path = "/v1/cluster/shutdown", tag = "cluster", request_body = ShutdownRequest, responses(
    (status = 200, body = ShutdownAnswer, description = "the plan of a dry run"),
    (status = 202, body = ShutdownAnswer, description = "started"),
    (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed"), (status = 503, body = ApiErrorBody, description = "the store is unavailable, or a cluster shutdown is under way"),
))]
async fn post_shutdown(
    State(queen): State<Arc<Queen>>,
    JsonBody(req): JsonBody<ShutdownRequest>,
) -> Result<(StatusCode, Json<ShutdownAnswer>), ApiError> {
    let dry = req.dry_run;
    let answer = crate::shutdown::start(&queen, req)?;
    Ok((if dry { StatusCode::OK } else { StatusCode::ACCEPTED }, Json(answer)))
}

/// The cluster shutdown, running or ended.
#[utoipa::path(get, path = "/v1/cluster/shutdown", tag = "cluster", responses((status = 200, body = ShutdownState), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed")))]
async fn get_shutdown(State(queen): State<Arc<Queen>>) -> Result<Json<ShutdownState>, ApiError> {
    queen.shutdown().map(Json).ok_or_else(|| ApiError::not_found("no cluster shutdown has been started"))
}

/// Whether new replicas may be placed on a hive; what runs there keeps running.
#[utoipa::path(put, path = "/v1/hives/{id}/eligibility", tag = "nodes", params(("id" = NodeId, Path, description = "hive id")), request_body = EligibilityBody, responses(
    (status = 200, body = EligibilityBody), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed"), (status = 503, body = ApiErrorBody, description = "the store is unavailable, or a cluster shutdown is under way"),
))]
async fn set_eligibility(
    State(queen): State<Arc<Queen>>,
    PathParam(raw): PathParam<String>,
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

/// Moves a hive's replicas elsewhere, new ones first, and makes it ineligible.
#[utoipa::path(post, path = "/v1/hives/{id}/drain", tag = "nodes", params(("id" = NodeId, Path, description = "hive id")), request_body = DrainRequest, responses(
    (status = 202, body = DrainStatus), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed"), (status = 503, body = ApiErrorBody, description = "the store is unavailable, or a cluster shutdown is under way"),
))]
async fn start_drain(
    State(queen): State<Arc<Queen>>,
    PathParam(raw): PathParam<String>,
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

/// A hive's drain, running or ended.
#[utoipa::path(get, path = "/v1/hives/{id}/drain", tag = "nodes", params(("id" = NodeId, Path, description = "hive id")), responses((status = 200, body = DrainStatus), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed")))]
async fn get_drain(
    State(queen): State<Arc<Queen>>,
    PathParam(raw): PathParam<String>,
) -> Result<Json<DrainStatus>, ApiError> {
    let id = parse_id(&raw)?;
    queen.orchestrator.drain(&id).map(Json).ok_or_else(|| ApiError::not_found(format!("no drain of {id}")))
}

/// Stops a drain; what moved stays where it is.
#[utoipa::path(delete, path = "/v1/hives/{id}/drain", tag = "nodes", params(("id" = NodeId, Path, description = "hive id")), responses((status = 200, body = DrainStatus), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed")))]
async fn cancel_drain(
    State(queen): State<Arc<Queen>>,
    PathParam(raw): PathParam<String>,
) -> Result<Json<DrainStatus>, ApiError> {
    let id = parse_id(&raw)?;
    let status = queen
        .orchestrator
        .cancel_drain(&id)
        .map_err(store_error)?
        .ok_or_else(|| ApiError::not_found(format!("no drain of {id}")))?;
    tracing::warn!(hive = %id, "drain cancelled");
    Ok(Json(status))
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct RemoveQuery {
    /// Forget the hive even while it is online.
    #[serde(default)]
    force: bool,
}

/// Forgets a hive that is gone; its events stay in the log.
#[utoipa::path(delete, path = "/v1/hives/{id}", tag = "nodes", params(("id" = NodeId, Path, description = "hive id"), RemoveQuery), responses(
    (status = 204, description = "forgotten"), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed"),
))]
async fn remove_hive(
    State(queen): State<Arc<Queen>>,
    PathParam(raw): PathParam<String>,
    QueryParams(q): QueryParams<RemoveQuery>,
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

/// Which queen acts for the cluster (places work, sequences shutdowns) and whether it is
/// the one answering.
#[utoipa::path(get, path = "/v1/cluster/leader", tag = "cluster", responses((status = 200, body = contract::LeaderInfo), (status = "4XX", body = ApiErrorBody, description = "refused")))]
async fn leader(State(queen): State<Arc<Queen>>) -> Json<contract::LeaderInfo> {
    Json(queen.leader())
}

/// Hands leadership to another queen: the leader names it in etcd and resigns; the next
/// in line steps back unless it is the one named. `to` absent: the healthiest follower.
#[utoipa::path(post, path = "/v1/cluster/leader/transfer", tag = "cluster", request_body = contract::LeaderTransfer, responses((status = 202, body = contract::TransferAnswer, description = "the leader resigned in favour of `to`"), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed"), (status = 503, body = ApiErrorBody, description = "no follower can take over now")))]
async fn transfer_leader(
    State(queen): State<Arc<Queen>>,
    JsonBody(req): JsonBody<contract::LeaderTransfer>,
) -> Result<(StatusCode, Json<contract::TransferAnswer>), ApiError> {
    let answer = queen.transfer_leadership(req.to).await?;
    Ok((StatusCode::ACCEPTED, Json(answer)))
}

/// Whether a request must be answered by the leader. A follower serves what it holds:
/// the stream and snapshot (relayed from the leader), the stored placement and shutdown
/// state, who leads, the API description, health and the dashboard. Writes, heartbeats,
/// the control channel, jobs, and reads of live node state go to the leader.
pub fn needs_leader(method: &axum::http::Method, path: &str) -> bool {
    if !path.starts_with("/v1/") {
        return false;
    }
    if method != axum::http::Method::GET && method != axum::http::Method::HEAD {
        return true;
    }
    let served_here = [
        paths::HEARTBEAT_STREAM,
        paths::SNAPSHOT,
        paths::ASSIGNMENTS,
        paths::STRATEGY,
        paths::CLUSTER_SHUTDOWN,
        paths::CLUSTER_LEADER,
        paths::OPENAPI,
    ];
    !served_here.contains(&path.trim_end_matches('/'))
}

/// On a follower, sends what needs the leader there: `307` with the leader's URL for the
/// same path (clients repeat the request there, body included), or `503` while no queen
/// leads. Redirect rather than proxy: the follower stays out of the leader's traffic and
/// failure path, and a node that learns the leader talks to it directly from then on.
async fn leader_only(
    State(queen): State<Arc<Queen>>,
    req: Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if queen.is_leader() || !needs_leader(req.method(), req.uri().path()) {
        return next.run(req).await;
    }
    let info = queen.leader();
    let Some(leader) = info.leader.filter(|_| !info.is_self) else {
        return ApiError::unavailable(
            "no_leader",
            "no queen leads right now (an election is under way); retry shortly",
            std::time::Duration::from_secs(1),
        )
        .into_response();
    };
    let target = format!("{}{}", leader.url, req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"));
    let message = format!("this queen follows; {} leads at {}", leader.id, leader.url);
    let mut resp = ApiError::new(StatusCode::TEMPORARY_REDIRECT, "not_leader", message).into_response();
    if let Ok(location) = header::HeaderValue::from_str(&target) {
        resp.headers_mut().insert(header::LOCATION, location);
    }
    resp
}

/// Nodes by liveness and eligibility, workers by status, capacity, utilisation, jobs.
#[utoipa::path(get, path = "/v1/cluster/stats", tag = "cluster", responses((status = 200, body = ClusterStats), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed")))]
async fn stats(State(queen): State<Arc<Queen>>) -> Json<ClusterStats> {
    Json(queen.stats())
}
