//! One hive, as the control channel and operators touch it: commands and ACKs,
//! eligibility, drains, removal.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use contract::{
    ApiErrorBody, CommandAck, DrainRequest, DrainStatus, EligibilityBody, HiveCommand, HiveHeartbeat, NodeId,
};
use lifecycle::http::{ApiError, JsonBody, PathParam, QueryParams};

use super::heartbeats::unknown;
use super::{change_and_place, on_store, parse_id, refuse_when_gated, store_error};
use crate::auth::Caller;
use crate::metrics::StreamLabels;
use crate::{Queen, snapshot};

/// The control channel (SSE, `event: command`, each a `HiveCommand`): the hive's current
/// desired set at once, then every change; the hive ACKs each over HTTP.
#[utoipa::path(get, path = "/v1/hives/{id}/commands", tag = "control", params(("id" = NodeId, Path, description = "hive id")), responses(
    (status = 200, content_type = "text/event-stream", body = String, description = "an endless stream of HiveCommand events"),
    (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed"),
))]
pub(crate) async fn commands(
    State(queen): State<Arc<Queen>>,
    PathParam(raw): PathParam<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&raw)?;
    tracing::info!(hive = %id, "control channel open");
    let rx = queen.orchestrator.channels.subscribe(&id);
    let sent = queen.metrics.sse_bytes.get_or_create(&StreamLabels { stream: "commands" }).clone();
    // Ends when this queen stops leading: the hive then reconnects and is sent to the leader.
    Ok(snapshot::watch_sse(rx, queen.leadership(), (), sent, |cmd: &HiveCommand| {
        snapshot::sse_event("command", cmd.id, &serde_json::to_string(cmd).unwrap_or_default()).0
    }))
}

/// A hive confirms it carried out a command.
#[utoipa::path(post, path = "/v1/hives/{id}/acks", tag = "control", params(("id" = NodeId, Path, description = "hive id")), request_body = CommandAck, responses(
    (status = 204, description = "recorded"),
    (status = 409, body = ApiErrorBody, description = "names no command the queen sent this hive; nothing changed"),
    (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed"),
))]
pub(crate) async fn ack(
    State(queen): State<Arc<Queen>>,
    PathParam(raw): PathParam<String>,
    JsonBody(ack): JsonBody<CommandAck>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&raw)?;
    queen
        .orchestrator
        .channels
        .ack(&id, ack)
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, "unknown_command", e.to_string()))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Whether new replicas may be placed on a hive; what runs there keeps running.
#[utoipa::path(put, path = "/v1/hives/{id}/eligibility", tag = "nodes", params(("id" = NodeId, Path, description = "hive id")), request_body = EligibilityBody, responses(
    (status = 200, body = EligibilityBody), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed"), (status = 503, body = ApiErrorBody, description = "the store is unavailable, or a cluster shutdown is under way"),
))]
pub(crate) async fn set_eligibility(
    State(queen): State<Arc<Queen>>,
    PathParam(raw): PathParam<String>,
    JsonBody(body): JsonBody<EligibilityBody>,
) -> Result<Json<EligibilityBody>, ApiError> {
    let id = parse_id(&raw)?;
    // A typo must not leave a durable mark for a hive that never existed.
    if queen.ingest.hives.get(&id).is_none() {
        return Err(unknown::<HiveHeartbeat>(&id));
    }
    let (hive, eligible) = (id.clone(), body.eligible);
    change_and_place(&queen, move |q| q.orchestrator.set_eligible(&hive, eligible).map_err(store_error)).await?;
    tracing::info!(hive = %id, eligible = body.eligible, "eligibility changed");
    Ok(Json(body))
}

/// Moves a hive's replicas elsewhere, new ones first, and makes it ineligible.
#[utoipa::path(post, path = "/v1/hives/{id}/drain", tag = "nodes", params(("id" = NodeId, Path, description = "hive id")), request_body = DrainRequest, responses(
    (status = 202, body = DrainStatus), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed"), (status = 503, body = ApiErrorBody, description = "the store is unavailable, or a cluster shutdown is under way"),
))]
pub(crate) async fn start_drain(
    State(queen): State<Arc<Queen>>,
    caller: Option<Extension<Caller>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    PathParam(raw): PathParam<String>,
    JsonBody(req): JsonBody<DrainRequest>,
) -> Result<(StatusCode, Json<DrainStatus>), ApiError> {
    refuse_when_gated(&queen)?;
    let id = parse_id(&raw)?;
    if queen.ingest.hives.get(&id).is_none() {
        return Err(unknown::<HiveHeartbeat>(&id));
    }
    if let Some(Extension(caller)) = &caller {
        may_drain(&queen, caller, &id, peer.map(|Extension(ConnectInfo(p))| p.ip()), req.deadline_ms)?;
    }
    let deadline =
        req.deadline_ms.map(std::time::Duration::from_millis).unwrap_or(crate::orchestrator::DEFAULT_DRAIN_DEADLINE);
    let hive = id.clone();
    // A hive's own drain on its way down names the process it ends, not the hive for good.
    let own_epoch = req.on_shutdown.then(|| queen.ingest.hives.get(&id).map(|h| h.payload.epoch.0)).flatten();
    change_and_place(&queen, move |q| q.orchestrator.start_drain(&hive, deadline, own_epoch).map_err(store_error))
        .await?;
    tracing::warn!(hive = %id, ?deadline, "drain started");
    let status = queen.orchestrator.drain(&id).ok_or_else(|| unknown::<HiveHeartbeat>(&id))?;
    Ok((StatusCode::ACCEPTED, Json(status)))
}

/// Who may drain which hive beyond the route's scope: an admin any hive; a hive its own
/// (a node token is held to its path by the auth layer; the shared cluster token names no
/// hive, so the call must come from where that hive's heartbeats come from). Forcing one
/// (deadline 0: everything is stopped at once) is the admin's alone.
fn may_drain(
    queen: &Queen,
    caller: &Caller,
    hive: &NodeId,
    peer: Option<IpAddr>,
    deadline_ms: Option<u64>,
) -> Result<(), ApiError> {
    let tokens = &queen.config().tokens;
    if caller.is_admin(tokens) {
        return Ok(());
    }
    if deadline_ms == Some(0) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "force_needs_admin",
            "a drain with deadline 0 stops everything at once; it needs the admin token",
        ));
    }
    let shared_token = caller.kind == Some(crate::routes::Scope::Cluster) && caller.node.is_none();
    if shared_token && queen.ingest.hive_peer(hive).is_none_or(|from| Some(from) != peer) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "not_own_hive",
            format!(
                "with the cluster token a hive may drain only itself, from its own machine; {hive}'s heartbeats come from elsewhere (use the admin token, or {hive}'s node token)"
            ),
        ));
    }
    Ok(())
}

/// A hive's drain, running or ended.
#[utoipa::path(get, path = "/v1/hives/{id}/drain", tag = "nodes", params(("id" = NodeId, Path, description = "hive id")), responses((status = 200, body = DrainStatus), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed")))]
pub(crate) async fn get_drain(
    State(queen): State<Arc<Queen>>,
    PathParam(raw): PathParam<String>,
) -> Result<Json<DrainStatus>, ApiError> {
    let id = parse_id(&raw)?;
    queen.orchestrator.drain(&id).map(Json).ok_or_else(|| ApiError::not_found(format!("no drain of {id}")))
}

/// Stops a drain; what moved stays where it is.
#[utoipa::path(delete, path = "/v1/hives/{id}/drain", tag = "nodes", params(("id" = NodeId, Path, description = "hive id")), responses((status = 200, body = DrainStatus), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed")))]
pub(crate) async fn cancel_drain(
    State(queen): State<Arc<Queen>>,
    PathParam(raw): PathParam<String>,
) -> Result<Json<DrainStatus>, ApiError> {
    let id = parse_id(&raw)?;
    let hive = id.clone();
    let status = on_store(&queen, move |q| q.orchestrator.cancel_drain(&hive).map_err(store_error))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no drain of {id}")))?;
    tracing::warn!(hive = %id, "drain cancelled");
    Ok(Json(status))
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct RemoveQuery {
    /// Forget the hive even while it is online.
    #[serde(default)]
    force: bool,
}

/// Forgets a hive that is gone; its events stay in the log.
#[utoipa::path(delete, path = "/v1/hives/{id}", tag = "nodes", params(("id" = NodeId, Path, description = "hive id"), RemoveQuery), responses(
    (status = 204, description = "forgotten"), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed"),
))]
pub(crate) async fn remove_hive(
    State(queen): State<Arc<Queen>>,
    PathParam(raw): PathParam<String>,
    QueryParams(q): QueryParams<RemoveQuery>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&raw)?;
    let view = queen.ingest.hives.get(&id).ok_or_else(|| unknown::<HiveHeartbeat>(&id))?;
    if view.liveness.is_up() && !q.force {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "hive_online",
            format!("{id} is online; stop it first, or add force to forget it anyway"),
        ));
    }
    queen.ingest.hives.remove(&id);
    tracing::warn!(hive = %id, "hive removed");
    let gone = id.clone();
    change_and_place(&queen, move |q| q.orchestrator.forget_hives(&[gone]).map(|_| ()).map_err(store_error)).await?;
    Ok(StatusCode::NO_CONTENT)
}
