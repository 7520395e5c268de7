//! Deployments, their assignments, and the placement strategy.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use contract::{
    ApiErrorBody, Assignment, DeploymentHistory, DeploymentPatch, DeploymentSpec, DeploymentStatus, NodeId,
    StrategyBody,
};
use lifecycle::http::{ApiError, JsonBody, PathParam};

use super::{change_and_place, on_store, parse_id, refuse_when_gated, store_error};
use crate::Queen;
use crate::orchestrator::RolloutAction;

/// Every deployment with where its replicas run.
#[utoipa::path(get, path = "/v1/deployments", tag = "deployments", responses((status = 200, body = Vec<DeploymentStatus>), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed")))]
pub(crate) async fn list_deployments(State(queen): State<Arc<Queen>>) -> Json<Vec<DeploymentStatus>> {
    let mut list = queen.orchestrator.list(queen.ingest.nodes());
    for d in &mut list {
        join_reports(&queen, &mut d.assignments);
        d.judge_failed();
    }
    Json(list)
}

fn found(queen: &Queen, name: &NodeId) -> Result<Json<DeploymentStatus>, ApiError> {
    let mut status = queen
        .orchestrator
        .get(name, queen.ingest.nodes())
        .ok_or_else(|| ApiError::not_found(format!("no deployment named {name}")))?;
    join_reports(queen, &mut status.assignments);
    status.judge_failed();
    Ok(Json(status))
}

/// What the hives last said of each replica's process: restarts, state, why it last ended.
/// The hive's to count and say; joined in at read time.
fn join_reports(queen: &Queen, assignments: &mut [Assignment]) {
    for a in assignments {
        let Some(h) = a.hive.as_ref().and_then(|h| queen.ingest.hives.get(h)) else { continue };
        if let Some(w) = h.payload.workers.iter().find(|w| w.name == a.worker) {
            a.restarts = w.restarts;
            a.process = Some(w.state);
            a.last_exit = w.last_exit.clone();
            a.pid = w.pid;
            a.ready = w.ready;
            a.probe = w.probe.clone();
        }
    }
}

/// One deployment.
#[utoipa::path(get, path = "/v1/deployments/{name}", tag = "deployments", params(("name" = NodeId, Path, description = "deployment name")), responses((status = 200, body = DeploymentStatus), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed")))]
pub(crate) async fn get_deployment(
    State(queen): State<Arc<Queen>>,
    PathParam(raw): PathParam<String>,
) -> Result<Json<DeploymentStatus>, ApiError> {
    found(&queen, &parse_id(&raw)?)
}

/// Declares a deployment; its replicas are placed at once.
#[utoipa::path(post, path = "/v1/deployments", tag = "deployments", request_body = DeploymentSpec, responses(
    (status = 201, body = DeploymentStatus), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed"), (status = 503, body = ApiErrorBody, description = "the store is unavailable, or a cluster shutdown is under way"),
))]
pub(crate) async fn create_deployment(
    State(queen): State<Arc<Queen>>,
    JsonBody(spec): JsonBody<DeploymentSpec>,
) -> Result<(StatusCode, Json<DeploymentStatus>), ApiError> {
    refuse_when_gated(&queen)?;
    spec.validate().map_err(|e| ApiError::unprocessable(e.to_string()))?;
    let name = spec.name.clone();
    change_and_place(&queen, move |q| q.orchestrator.create(spec).map_err(ApiError::from)).await?;
    Ok((StatusCode::CREATED, found(&queen, &name)?))
}

/// Changes a deployment: its replica count and update policy at once; its command, args
/// or environment as a new version, rolled out replica by replica.
#[utoipa::path(patch, path = "/v1/deployments/{name}", tag = "deployments", params(("name" = NodeId, Path, description = "deployment name")), request_body = DeploymentPatch, responses(
    (status = 200, body = DeploymentStatus), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed"), (status = 503, body = ApiErrorBody, description = "the store is unavailable, or a cluster shutdown is under way"),
))]
pub(crate) async fn patch_deployment(
    State(queen): State<Arc<Queen>>,
    PathParam(raw): PathParam<String>,
    JsonBody(patch): JsonBody<DeploymentPatch>,
) -> Result<Json<DeploymentStatus>, ApiError> {
    refuse_when_gated(&queen)?;
    let name = parse_id(&raw)?;
    patch.validate().map_err(|e| ApiError::unprocessable(e.to_string()))?;
    let changed = name.clone();
    change_and_place(&queen, move |q| q.orchestrator.patch(&changed, &patch).map_err(ApiError::from)).await?;
    found(&queen, &name)
}

/// Holds a deployment's running rollout: no replica is replaced until it is resumed.
#[utoipa::path(post, path = "/v1/deployments/{name}/rollout/pause", tag = "deployments", params(("name" = NodeId, Path, description = "deployment name")), responses(
    (status = 200, body = DeploymentStatus), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed"), (status = 503, body = ApiErrorBody, description = "the store is unavailable, or a cluster shutdown is under way"),
))]
pub(crate) async fn rollout_pause(
    State(queen): State<Arc<Queen>>,
    PathParam(raw): PathParam<String>,
) -> Result<Json<DeploymentStatus>, ApiError> {
    rollout_action(&queen, &raw, RolloutAction::Pause).await
}

/// Resumes a paused rollout.
#[utoipa::path(post, path = "/v1/deployments/{name}/rollout/resume", tag = "deployments", params(("name" = NodeId, Path, description = "deployment name")), responses(
    (status = 200, body = DeploymentStatus), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed"), (status = 503, body = ApiErrorBody, description = "the store is unavailable, or a cluster shutdown is under way"),
))]
pub(crate) async fn rollout_resume(
    State(queen): State<Arc<Queen>>,
    PathParam(raw): PathParam<String>,
) -> Result<Json<DeploymentStatus>, ApiError> {
    rollout_action(&queen, &raw, RolloutAction::Resume).await
}

/// Rolls the version before the current one out again, as a new version (replica count and update policy stay).
#[utoipa::path(post, path = "/v1/deployments/{name}/rollout/undo", tag = "deployments", params(("name" = NodeId, Path, description = "deployment name")), responses(
    (status = 200, body = DeploymentStatus), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed"), (status = 503, body = ApiErrorBody, description = "the store is unavailable, or a cluster shutdown is under way"),
))]
pub(crate) async fn rollout_undo(
    State(queen): State<Arc<Queen>>,
    PathParam(raw): PathParam<String>,
) -> Result<Json<DeploymentStatus>, ApiError> {
    rollout_action(&queen, &raw, RolloutAction::Undo).await
}

async fn rollout_action(
    queen: &Arc<Queen>,
    raw: &str,
    action: RolloutAction,
) -> Result<Json<DeploymentStatus>, ApiError> {
    refuse_when_gated(queen)?;
    let name = parse_id(raw)?;
    let changed = name.clone();
    change_and_place(queen, move |q| q.orchestrator.rollout(&changed, action).map_err(ApiError::from)).await?;
    found(queen, &name)
}

/// Restarts one replica where it runs (by its worker name or its slot's, `web-0`): its hive
/// stops the old instance and starts a new one under the next name.
#[utoipa::path(post, path = "/v1/replicas/{name}/restart", tag = "deployments", params(("name" = NodeId, Path, description = "replica (worker) name")), responses(
    (status = 200, body = Assignment), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed"), (status = 503, body = ApiErrorBody, description = "the store is unavailable, or a cluster shutdown is under way"),
))]
pub(crate) async fn restart_replica(
    State(queen): State<Arc<Queen>>,
    PathParam(raw): PathParam<String>,
) -> Result<Json<Assignment>, ApiError> {
    refuse_when_gated(&queen)?;
    let name = parse_id(&raw)?;
    let restarted =
        change_and_place(&queen, move |q| q.orchestrator.restart_replica(&name).map_err(ApiError::from)).await?;
    Ok(Json(restarted))
}

/// The versions a deployment keeps, oldest first (secret values redacted).
#[utoipa::path(get, path = "/v1/deployments/{name}/history", tag = "deployments", params(("name" = NodeId, Path, description = "deployment name")), responses((status = 200, body = DeploymentHistory), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed")))]
pub(crate) async fn deployment_history(
    State(queen): State<Arc<Queen>>,
    PathParam(raw): PathParam<String>,
) -> Result<Json<DeploymentHistory>, ApiError> {
    let name = parse_id(&raw)?;
    queen
        .orchestrator
        .history(&name)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no deployment named {name}")))
}

/// Restarts every replica of a deployment, rolling: each new instance up before its old
/// one stops, as for a new version (the spec stays as it is).
#[utoipa::path(post, path = "/v1/deployments/{name}/restart", tag = "deployments", params(("name" = NodeId, Path, description = "deployment name")), responses(
    (status = 200, body = DeploymentStatus), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed"), (status = 503, body = ApiErrorBody, description = "the store is unavailable, or a cluster shutdown is under way"),
))]
pub(crate) async fn restart_deployment(
    State(queen): State<Arc<Queen>>,
    PathParam(raw): PathParam<String>,
) -> Result<Json<DeploymentStatus>, ApiError> {
    refuse_when_gated(&queen)?;
    let name = parse_id(&raw)?;
    let restarted = name.clone();
    change_and_place(&queen, move |q| q.orchestrator.restart(&restarted).map_err(ApiError::from)).await?;
    found(&queen, &name)
}

/// Stops every replica of a deployment gracefully and forgets it.
#[utoipa::path(delete, path = "/v1/deployments/{name}", tag = "deployments", params(("name" = NodeId, Path, description = "deployment name")), responses(
    (status = 204, description = "gone"), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed"), (status = 503, body = ApiErrorBody, description = "the store is unavailable, or a cluster shutdown is under way"),
))]
pub(crate) async fn delete_deployment(
    State(queen): State<Arc<Queen>>,
    PathParam(raw): PathParam<String>,
) -> Result<StatusCode, ApiError> {
    refuse_when_gated(&queen)?;
    let name = parse_id(&raw)?;
    change_and_place(&queen, move |q| q.orchestrator.delete(&name).map_err(ApiError::from)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Which replica runs on which hive, since when, how often it moved.
#[utoipa::path(get, path = "/v1/assignments", tag = "deployments", responses((status = 200, body = Vec<Assignment>), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed")))]
pub(crate) async fn assignments(State(queen): State<Arc<Queen>>) -> Json<Vec<Assignment>> {
    let mut list = queen.orchestrator.assignments();
    join_reports(&queen, &mut list);
    Json(list)
}

/// The placement strategy in use.
#[utoipa::path(get, path = "/v1/placement/strategy", tag = "deployments", responses((status = 200, body = StrategyBody), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed")))]
pub(crate) async fn get_strategy(State(queen): State<Arc<Queen>>) -> Json<StrategyBody> {
    Json(StrategyBody { strategy: queen.orchestrator.strategy() })
}

/// Changes the placement strategy (for placements from now on).
#[utoipa::path(put, path = "/v1/placement/strategy", tag = "deployments", request_body = StrategyBody, responses(
    (status = 200, body = StrategyBody), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed"), (status = 503, body = ApiErrorBody, description = "the store is unavailable, or a cluster shutdown is under way"),
))]
pub(crate) async fn put_strategy(
    State(queen): State<Arc<Queen>>,
    JsonBody(body): JsonBody<StrategyBody>,
) -> Result<Json<StrategyBody>, ApiError> {
    let strategy = body.strategy;
    on_store(&queen, move |q| q.orchestrator.set_strategy(strategy).map_err(store_error)).await?;
    tracing::info!(strategy = body.strategy.as_str(), "placement strategy changed");
    Ok(Json(body))
}
