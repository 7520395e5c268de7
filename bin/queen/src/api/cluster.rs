//! The cluster as a whole: the latest snapshot, stats, who leads, the shutdown, and the
//! API's own description.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use contract::{ApiErrorBody, ClusterStats, ShutdownAnswer, ShutdownRequest, ShutdownState, Snapshot};
use lifecycle::http::{ApiError, JsonBody};

use crate::Queen;

/// The latest published snapshot, the same bytes the stream sent.
#[utoipa::path(get, path = "/v1/snapshot", tag = "snapshot", responses((status = 200, body = Snapshot), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed")))]
pub(crate) async fn latest_snapshot(State(queen): State<Arc<Queen>>) -> impl IntoResponse {
    let frame = queen.snapshots.latest();
    ([(header::CONTENT_TYPE, "application/json")], frame.json())
}

/// Shuts the whole cluster down in phases. A dry run answers the plan; otherwise the
/// sequence starts (202) and runs in the background; `GET` follows it.
#[utoipa::path(post, path = "/v1/cluster/shutdown", tag = "cluster", request_body = ShutdownRequest, responses(
    (status = 200, body = ShutdownAnswer, description = "the plan of a dry run"),
    (status = 202, body = ShutdownAnswer, description = "started"),
    (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed"), (status = 503, body = ApiErrorBody, description = "the store is unavailable, or a cluster shutdown is under way"),
))]
pub(crate) async fn post_shutdown(
    State(queen): State<Arc<Queen>>,
    JsonBody(req): JsonBody<ShutdownRequest>,
) -> Result<(StatusCode, Json<ShutdownAnswer>), ApiError> {
    let dry = req.dry_run;
    let answer = super::on_store(&queen, move |q| crate::shutdown::start(q, req)).await?;
    Ok((if dry { StatusCode::OK } else { StatusCode::ACCEPTED }, Json(answer)))
}

/// The cluster shutdown, running or ended.
#[utoipa::path(get, path = "/v1/cluster/shutdown", tag = "cluster", responses((status = 200, body = ShutdownState), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed")))]
pub(crate) async fn get_shutdown(State(queen): State<Arc<Queen>>) -> Result<Json<ShutdownState>, ApiError> {
    queen.shutdown.current().map(Json).ok_or_else(|| ApiError::not_found("no cluster shutdown has been started"))
}

/// Confirms that the replicas hives run unknown to this queen should stop. A queen whose
/// store held no deployments when it started or was elected tells no hive to stop what it
/// runs (the store may have lost them) until this call or a new deployment.
#[utoipa::path(post, path = "/v1/cluster/unknown-replicas/stop", tag = "cluster", responses(
    (status = 200, body = contract::UnknownReplicas, description = "the hives that ran unknown replicas are told to run nothing"),
    (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed"),
))]
pub(crate) async fn stop_unknown(State(queen): State<Arc<Queen>>) -> Result<Json<contract::UnknownReplicas>, ApiError> {
    let hives = super::on_store(&queen, |q| {
        let hives = q.orchestrator.stop_unknown();
        q.reconcile();
        Ok(hives)
    })
    .await?;
    tracing::warn!(hives, "operator confirmed: replicas unknown to this queen stop");
    Ok(Json(contract::UnknownReplicas { hives }))
}

/// Which queen acts for the cluster (places work, sequences shutdowns) and whether it is
/// the one answering.
#[utoipa::path(get, path = "/v1/cluster/leader", tag = "cluster", responses((status = 200, body = contract::LeaderInfo), (status = "4XX", body = ApiErrorBody, description = "refused")))]
pub(crate) async fn leader(State(queen): State<Arc<Queen>>) -> Json<contract::LeaderInfo> {
    Json(queen.leader())
}

/// Hands leadership to another queen: the leader names it in etcd and resigns; the next
/// in line steps back unless it is the one named. `to` absent: the healthiest follower.
#[utoipa::path(post, path = "/v1/cluster/leader/transfer", tag = "cluster", request_body = contract::LeaderTransfer, responses((status = 202, body = contract::TransferAnswer, description = "the leader resigned in favour of `to`"), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed"), (status = 503, body = ApiErrorBody, description = "no follower can take over now")))]
pub(crate) async fn transfer_leader(
    State(queen): State<Arc<Queen>>,
    JsonBody(req): JsonBody<contract::LeaderTransfer>,
) -> Result<(StatusCode, Json<contract::TransferAnswer>), ApiError> {
    let answer = queen.transfer_leadership(req.to).await?;
    Ok((StatusCode::ACCEPTED, Json(answer)))
}

/// Nodes by liveness and eligibility, workers by status, capacity, utilisation, jobs.
#[utoipa::path(get, path = "/v1/cluster/stats", tag = "cluster", responses((status = 200, body = ClusterStats), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed")))]
pub(crate) async fn stats(State(queen): State<Arc<Queen>>) -> Json<ClusterStats> {
    Json(queen.stats())
}

/// This document: every operation with its scope (`x-apiary-scope`) and whether only the
/// leader answers it (`x-apiary-leader-only`).
#[utoipa::path(get, path = "/v1/openapi.json", tag = "cluster", responses((status = 200, content_type = "application/json", description = "the OpenAPI 3 document"), (status = "4XX", body = ApiErrorBody, description = "refused")))]
pub(crate) async fn openapi_document() -> impl IntoResponse {
    static DOCUMENT: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| super::openapi().to_json().unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}")));
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT.as_str())
}
