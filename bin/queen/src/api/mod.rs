//! The queen's HTTP API under `/v1`, plus health and metrics.
//!
//! Which routes exist, who may call them and which only the leader answers is the route
//! table's (`crate::routes`); this module builds the router from it and holds the
//! middleware and errors every handler shares. Handlers live by subject: `heartbeats`
//! (ingest and node reads), `hives` (control channel, eligibility, drains), `deployments`,
//! `cluster` (snapshot, stats, leader, shutdown).

pub(crate) mod cluster;
pub mod dashboard;
pub(crate) mod deployments;
pub(crate) mod heartbeats;
pub(crate) mod hives;
pub(crate) mod logs;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::any;
use contract::NodeId;
use lifecycle::http::{ApiError, method_not_allowed_fallback, not_found_fallback};
use utoipa_axum::router::OpenApiRouter;

pub use heartbeats::NodePayload;

use crate::Queen;
use crate::orchestrator::DeployError;

/// The queen's routes with their OpenAPI description, one per row of the route table:
/// each is registered from its handler's `#[utoipa::path]`, so the document cannot list a
/// route the router lacks.
fn api() -> OpenApiRouter<Arc<Queen>> {
    crate::routes::table()
        .iter()
        .filter_map(|r| r.handler)
        .fold(OpenApiRouter::new(), |router, handler| router.routes(handler()))
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
    crate::routes::annotate(&mut doc);
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}

pub fn router(queen: Arc<Queen>) -> Router {
    let (api, _) = api().split_for_parts();
    api.route("/v1/{*rest}", any(not_found_fallback))
        .method_not_allowed_fallback(method_not_allowed_fallback)
        .layer(DefaultBodyLimit::max(contract::MAX_BODY_BYTES))
        .with_state(Arc::clone(&queen))
        .merge(queen.health.router())
        .merge(dashboard::router(queen.config().ui_dir.as_deref()))
        // Inside the redirect: a follower's 307 is no action; the leader records it.
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&queen), crate::audit::record))
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&queen), leader_only))
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&queen), crate::auth::require))
}

pub(crate) fn parse_id(raw: &str) -> Result<NodeId, ApiError> {
    NodeId::new(raw).map_err(|e| ApiError::bad_request("invalid_id", e.to_string()))
}

impl From<DeployError> for ApiError {
    fn from(e: DeployError) -> Self {
        match e {
            DeployError::Exists(_) => ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            DeployError::NotFound(_) => ApiError::not_found(e.to_string()),
            DeployError::Invalid(_) => ApiError::unprocessable(e.to_string()),
            DeployError::Conflict(_) => ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            DeployError::NoReplica(_) => ApiError::not_found(e.to_string()),
            DeployError::Store(_) => store_error(e),
        }
    }
}

pub(crate) fn store_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::unavailable("store_unavailable", e.to_string(), std::time::Duration::from_secs(1))
}

/// Runs a handler's store work off the runtime (see [`Queen::off_runtime`]).
pub(crate) async fn on_store<T: Send + 'static>(
    queen: &Arc<Queen>,
    f: impl FnOnce(&Arc<Queen>) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    queen
        .off_runtime(f)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
}

/// An operator's change, then a reconcile so it takes effect at once rather than at the
/// next sweep; both off the runtime.
pub(crate) async fn change_and_place<T: Send + 'static>(
    queen: &Arc<Queen>,
    change: impl FnOnce(&Arc<Queen>) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    on_store(queen, move |q| {
        let changed = change(q)?;
        q.reconcile();
        Ok(changed)
    })
    .await
}

pub(crate) fn refuse_when_gated(queen: &Queen) -> Result<(), ApiError> {
    if queen.orchestrator.gated() { Err(crate::jobs::shutting_down()) } else { Ok(()) }
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
    let leader_only = match req.extensions().get::<crate::routes::Policy>() {
        Some(policy) => policy.leader_only,
        None => crate::routes::needs_leader(req.method(), req.uri().path()),
    };
    if queen.is_leader() || !leader_only {
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
