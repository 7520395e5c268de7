//! The queen's HTTP API under `/v1`, plus health and metrics.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{any, get, post};
use contract::{
    ContractError, HeartbeatResponse, HiveHeartbeat, HiveSummary, NodeEvent, NodeId, NodeKind, WorkerHeartbeat,
    WorkerSummary, paths,
};
use heartbeat_registry::{HeartbeatPayload, HeartbeatRegistry, NodeRef, UpsertOutcome};
use lifecycle::http::{ApiError, JsonBody, method_not_allowed_fallback, not_found_fallback};
use tower_http::services::ServeDir;

use crate::metrics::HeartbeatLabels;
use crate::{Queen, snapshot, summary};

pub fn router(queen: Arc<Queen>) -> Router {
    let health = queen.health.router();
    Router::new()
        .route(paths::HIVE_HEARTBEAT, post(heartbeat::<HiveHeartbeat>))
        .route(paths::WORKER_HEARTBEAT, post(heartbeat::<WorkerHeartbeat>))
        .route(paths::HEARTBEAT_STREAM, get(snapshot::stream))
        .route(paths::SNAPSHOT, get(latest_snapshot))
        .route(paths::HIVES, get(list::<HiveHeartbeat>))
        .route("/v1/hives/{id}", get(one::<HiveHeartbeat>))
        .route("/v1/hives/{id}/events", get(events::<HiveHeartbeat>))
        .route(paths::WORKERS, get(list::<WorkerHeartbeat>))
        .route("/v1/workers/{id}", get(one::<WorkerHeartbeat>))
        .route("/v1/workers/{id}/events", get(events::<WorkerHeartbeat>))
        .route("/v1/{*rest}", any(not_found_fallback))
        .method_not_allowed_fallback(method_not_allowed_fallback)
        .layer(DefaultBodyLimit::max(contract::MAX_BODY_BYTES))
        .with_state(Arc::clone(&queen))
        .merge(health)
        .merge(dashboard(queen.config.ui_dir.as_deref()))
}

/// The dashboard's files at `/`, or a page that says how to build them.
fn dashboard(dir: Option<&std::path::Path>) -> Router {
    match dir {
        Some(dir) => Router::new().fallback_service(ServeDir::new(dir)),
        None => Router::new().fallback(|| async {
            (
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                "<!doctype html><title>Apiary</title><h1>Apiary</h1>\
                 <p>This queen has no dashboard to serve: build it with <code>cargo xtask web</code> \
                 (it lands in <code>web-ui/</code> next to the queen binary) or point <code>--ui-dir</code> at it.</p>\
                 <p>The API is under <a href=\"/v1/snapshot\">/v1</a>; the live stream is \
                 <a href=\"/v1/heartbeats/stream\">/v1/heartbeats/stream</a>.</p>",
            )
        }),
    }
}

/// What the queen needs to take in one kind of heartbeat; implemented for the two kinds
/// so that ingest, lookup and summaries are written once.
pub trait NodePayload: HeartbeatPayload<Id = NodeId> + serde::de::DeserializeOwned {
    const KIND: NodeKind;
    type Summary: serde::Serialize + Send;
    fn validate(&self) -> Result<(), ContractError>;
    fn registry(queen: &Queen) -> &HeartbeatRegistry<Self>;
    fn summary(node: NodeRef<'_, Self>) -> Self::Summary;
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
    fn summary(node: NodeRef<'_, Self>) -> HiveSummary {
        summary::hive(node)
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
    fn summary(node: NodeRef<'_, Self>) -> WorkerSummary {
        summary::worker(node)
    }
}

fn count(queen: &Queen, kind: NodeKind, outcome: &'static str) {
    queen.metrics.heartbeats.get_or_create(&HeartbeatLabels { kind: summary::kind_label(kind), outcome }).inc();
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
    let outcome = T::registry(&queen).upsert(payload);
    let accepted = outcome != UpsertOutcome::Stale;
    count(&queen, T::KIND, if accepted { "accepted" } else { "stale" });
    Ok(Json(HeartbeatResponse { next_interval_ms: queen.next_interval().as_millis() as u64, accepted }))
}

fn parse_id(raw: &str) -> Result<NodeId, ApiError> {
    NodeId::new(raw).map_err(|e| ApiError::bad_request("invalid_id", e.to_string()))
}

fn unknown<T: NodePayload>(id: &NodeId) -> ApiError {
    ApiError::not_found(format!("no {} named {id}", summary::kind_label(T::KIND)))
}

async fn list<T: NodePayload>(State(queen): State<Arc<Queen>>) -> Json<Vec<T::Summary>> {
    let views = T::registry(&queen).list_all();
    Json(views.iter().map(|v| T::summary(summary::as_ref(v))).collect())
}

async fn one<T: NodePayload>(
    State(queen): State<Arc<Queen>>,
    Path(raw): Path<String>,
) -> Result<Json<T::Summary>, ApiError> {
    let id = parse_id(&raw)?;
    let view = T::registry(&queen).get(&id).ok_or_else(|| unknown::<T>(&id))?;
    Ok(Json(T::summary(summary::as_ref(&view))))
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
