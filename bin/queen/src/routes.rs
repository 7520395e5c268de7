//! The route table: every operation the queen serves, with who may call it and whether
//! only the leader answers it.
//!
//! The router registers each row's handler, the auth layer takes the scope and node
//! access from the row a request matches, the leader redirect takes `leader_only` from it,
//! and the OpenAPI document marks each operation with its scope. A policy is therefore
//! written once: a new route is one row, and `tests::*` walk every row.
//!
//! HEAD is not a row of its own: it matches the GET row of its path, so it has GET's
//! scope by construction.

use std::sync::{Arc, LazyLock};

use axum::http::Method;
use utoipa_axum::router::UtoipaMethodRouter;
use utoipa_axum::routes;

use crate::Queen;
use crate::api::{cluster, deployments, heartbeats, hives, logs};

/// Which token a call needs. A scope whose token is not configured is open (the loopback
/// development default); see `auth::Tokens::check`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Health, metrics, the dashboard's files: nothing to protect.
    Open,
    /// Dashboards and scripts that only look.
    Read,
    /// Nodes: heartbeats, the control channel, ACKs, jobs.
    Cluster,
    /// A hive asking for its own drain, or an operator.
    ClusterOrAdmin,
    /// Every mutating admin call.
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Open => "open",
            Scope::Read => "read",
            Scope::Cluster => "cluster",
            Scope::ClusterOrAdmin => "cluster_or_admin",
            Scope::Admin => "admin",
        }
    }
}

/// What a node token (one hive's, or one worker's) may do on a route, beyond its scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Allow,
    /// Only on the hive the path names (`/v1/hives/{id}/...` with the token's own id).
    OwnHive,
    Deny,
}

/// Node access for hive tokens and worker tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nodes {
    pub hive: Access,
    pub worker: Access,
}

/// Both kinds of node may read it.
const READ: Nodes = Nodes { hive: Access::Allow, worker: Access::Allow };
/// Reads of one hive: a hive token sees only its own, a worker token any.
const HIVE_READ: Nodes = Nodes { hive: Access::OwnHive, worker: Access::Allow };
/// A hive's control channel, ACKs and drain: that hive's alone.
const OWN_HIVE: Nodes = Nodes { hive: Access::OwnHive, worker: Access::Deny };
/// Node tokens never do it (admin calls).
const NONE: Nodes = Nodes { hive: Access::Deny, worker: Access::Deny };

/// One operation.
pub struct Route {
    pub method: Method,
    /// The path as axum and the OpenAPI document write it (`{id}` for a segment).
    pub path: &'static str,
    pub scope: Scope,
    /// A follower sends it to the leader (307). Reads a follower can answer from what it
    /// holds (the relayed stream, the stored placement and shutdown, who leads) are not.
    pub leader_only: bool,
    pub nodes: Nodes,
    /// The handler with its OpenAPI description; `None` for the health routes, which the
    /// `lifecycle` health router serves.
    pub handler: Option<fn() -> UtoipaMethodRouter<Arc<Queen>>>,
}

fn row(
    method: Method,
    path: &'static str,
    scope: Scope,
    leader_only: bool,
    nodes: Nodes,
    handler: fn() -> UtoipaMethodRouter<Arc<Queen>>,
) -> Route {
    Route { method, path, scope, leader_only, nodes, handler: Some(handler) }
}

fn health(path: &'static str) -> Route {
    Route { method: Method::GET, path, scope: Scope::Open, leader_only: false, nodes: READ, handler: None }
}

/// Whether the answer must come from the leader: ours, not the relayed stream's.
const LEADER: bool = true;
const ANY_QUEEN: bool = false;

static TABLE: LazyLock<Vec<Route>> = LazyLock::new(|| {
    use Method as M;
    use Scope::*;
    let heartbeat_from = |hive: Access, worker: Access| Nodes { hive, worker };
    vec![
        // Nodes.
        row(M::POST, "/v1/hive-heartbeat", Cluster, LEADER, heartbeat_from(Access::Allow, Access::Deny), || {
            routes!(heartbeats::hive_heartbeat)
        }),
        row(M::POST, "/v1/worker-heartbeat", Cluster, LEADER, heartbeat_from(Access::Deny, Access::Allow), || {
            routes!(heartbeats::worker_heartbeat)
        }),
        row(M::GET, "/v1/hives/{id}/commands", Cluster, LEADER, OWN_HIVE, || routes!(hives::commands)),
        row(M::POST, "/v1/hives/{id}/acks", Cluster, LEADER, OWN_HIVE, || routes!(hives::ack)),
        row(M::POST, "/v1/jobs", Cluster, LEADER, READ, || routes!(crate::jobs::route)),
        // The live picture.
        row(M::GET, "/v1/heartbeats/stream", Read, ANY_QUEEN, READ, || routes!(crate::snapshot::stream)),
        row(M::GET, "/v1/snapshot", Read, ANY_QUEEN, READ, || routes!(cluster::latest_snapshot)),
        row(M::GET, "/v1/hives", Read, LEADER, READ, || routes!(heartbeats::list_hives)),
        row(M::GET, "/v1/hives/{id}", Read, LEADER, HIVE_READ, || routes!(heartbeats::get_hive)),
        row(M::GET, "/v1/hives/{id}/events", Read, LEADER, HIVE_READ, || routes!(heartbeats::hive_events)),
        row(M::GET, "/v1/workers", Read, LEADER, READ, || routes!(heartbeats::list_workers)),
        row(M::GET, "/v1/workers/{id}", Read, LEADER, READ, || routes!(heartbeats::get_worker)),
        row(M::GET, "/v1/workers/{id}/events", Read, LEADER, READ, || routes!(heartbeats::worker_events)),
        row(M::GET, "/v1/cluster/stats", Read, LEADER, READ, || routes!(cluster::stats)),
        // Hives, as an operator sees them.
        row(M::DELETE, "/v1/hives/{id}", Admin, LEADER, NONE, || routes!(hives::remove_hive)),
        row(M::PUT, "/v1/hives/{id}/eligibility", Admin, LEADER, NONE, || routes!(hives::set_eligibility)),
        row(M::GET, "/v1/hives/{id}/drain", Read, LEADER, OWN_HIVE, || routes!(hives::get_drain)),
        row(M::POST, "/v1/hives/{id}/drain", ClusterOrAdmin, LEADER, OWN_HIVE, || routes!(hives::start_drain)),
        row(M::DELETE, "/v1/hives/{id}/drain", Admin, LEADER, NONE, || routes!(hives::cancel_drain)),
        // Deployments and placement.
        row(M::GET, "/v1/deployments", Read, LEADER, READ, || routes!(deployments::list_deployments)),
        row(M::POST, "/v1/deployments", Admin, LEADER, NONE, || routes!(deployments::create_deployment)),
        row(M::GET, "/v1/deployments/{name}", Read, LEADER, READ, || routes!(deployments::get_deployment)),
        row(M::PATCH, "/v1/deployments/{name}", Admin, LEADER, NONE, || routes!(deployments::patch_deployment)),
        row(M::POST, "/v1/deployments/{name}/restart", Admin, LEADER, NONE, || {
            routes!(deployments::restart_deployment)
        }),
        row(M::POST, "/v1/deployments/{name}/rollout/pause", Admin, LEADER, NONE, || {
            routes!(deployments::rollout_pause)
        }),
        row(M::POST, "/v1/deployments/{name}/rollout/resume", Admin, LEADER, NONE, || {
            routes!(deployments::rollout_resume)
        }),
        row(M::POST, "/v1/deployments/{name}/rollout/undo", Admin, LEADER, NONE, || routes!(deployments::rollout_undo)),
        row(M::GET, "/v1/deployments/{name}/history", Read, LEADER, READ, || routes!(deployments::deployment_history)),
        row(M::POST, "/v1/replicas/{name}/restart", Admin, LEADER, NONE, || routes!(deployments::restart_replica)),
        // A replica's output may hold what its program printed of its secrets: admin only.
        row(M::GET, "/v1/replicas/{name}/logs", Admin, LEADER, NONE, || routes!(logs::replica_logs)),
        row(M::DELETE, "/v1/deployments/{name}", Admin, LEADER, NONE, || routes!(deployments::delete_deployment)),
        row(M::GET, "/v1/assignments", Read, ANY_QUEEN, READ, || routes!(deployments::assignments)),
        row(M::GET, "/v1/placement/strategy", Read, ANY_QUEEN, READ, || routes!(deployments::get_strategy)),
        row(M::PUT, "/v1/placement/strategy", Admin, LEADER, NONE, || routes!(deployments::put_strategy)),
        // The cluster as a whole.
        row(M::GET, "/v1/cluster/shutdown", Read, ANY_QUEEN, READ, || routes!(cluster::get_shutdown)),
        row(M::POST, "/v1/cluster/shutdown", Admin, LEADER, NONE, || routes!(cluster::post_shutdown)),
        row(M::GET, "/v1/cluster/leader", Read, ANY_QUEEN, READ, || routes!(cluster::leader)),
        row(M::POST, "/v1/cluster/leader/transfer", Admin, LEADER, NONE, || routes!(cluster::transfer_leader)),
        row(M::GET, "/v1/audit", Admin, LEADER, NONE, || routes!(crate::audit::list)),
        row(M::POST, "/v1/cluster/unknown-replicas/stop", Admin, LEADER, NONE, || routes!(cluster::stop_unknown)),
        row(M::GET, "/v1/openapi.json", Read, ANY_QUEEN, READ, || routes!(cluster::openapi_document)),
        // Served by the health router every process shares.
        health("/healthz"),
        health("/readyz"),
        health("/metrics"),
    ]
});

/// Every route.
pub fn table() -> &'static [Route] {
    &TABLE
}

/// Whether `path` fits the template `pattern` (`{x}` stands for one segment).
fn fits(pattern: &str, path: &str) -> bool {
    let mut want = pattern.trim_matches('/').split('/');
    let mut got = path.trim_matches('/').split('/');
    loop {
        match (want.next(), got.next()) {
            (None, None) => return true,
            (Some(w), Some(g)) if w.starts_with('{') && w.ends_with('}') => {
                if g.is_empty() {
                    return false;
                }
            }
            (Some(w), Some(g)) if w == g => {}
            _ => return false,
        }
    }
}

/// The row a request matches. HEAD is answered like GET, so it takes GET's row.
pub fn lookup(method: &Method, path: &str) -> Option<&'static Route> {
    let method = if method == Method::HEAD { &Method::GET } else { method };
    table().iter().find(|r| r.method == method && fits(r.path, path))
}

/// What the table says of one request, looked up once (by the auth layer, which leaves it
/// in the request's extensions for the redirect layer behind it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub scope: Scope,
    pub nodes: Nodes,
    pub leader_only: bool,
    /// An admin action, which the audit log records: a row of admin scope (or a drain,
    /// which a hive may also ask for) that is not a read.
    pub audited: bool,
}

/// The policy of a request: its row's, or for a request that matches no row (a wrong
/// method, an unknown path, the dashboard's files) the fallbacks. Scope: under `/v1` a read
/// for GET and an admin call otherwise, so that probing for routes tells an anonymous
/// caller nothing; outside it, open for GET (the dashboard's files hold no data) and for
/// the health routes, admin otherwise. Nodes may read (a hive only under its own path) and
/// write nothing. Outside `/v1` nothing needs the leader; under it, anything unlisted does.
pub fn policy(method: &Method, path: &str) -> Policy {
    if let Some(r) = lookup(method, path) {
        let audited = matches!(r.scope, Scope::Admin | Scope::ClusterOrAdmin) && r.method != Method::GET;
        return Policy { scope: r.scope, nodes: r.nodes, leader_only: r.leader_only, audited };
    }
    let read = method == Method::GET || method == Method::HEAD;
    let v1 = path.starts_with("/v1/");
    let scope = match (v1, read) {
        (_, false) if table().iter().any(|r| r.handler.is_none() && fits(r.path, path)) => Scope::Open,
        (true, true) => Scope::Read,
        (false, true) => Scope::Open,
        (_, false) => Scope::Admin,
    };
    let nodes = match (read, hive_in_path(path)) {
        (true, Some(_)) => HIVE_READ,
        (true, None) => READ,
        (false, _) => NONE,
    };
    // What matches no row does nothing, so there is no action to audit.
    Policy { scope, nodes, leader_only: v1, audited: false }
}

pub fn scope(method: &Method, path: &str) -> Scope {
    policy(method, path).scope
}

/// Whether a follower must send this request to the leader.
pub fn needs_leader(method: &Method, path: &str) -> bool {
    policy(method, path).leader_only
}

pub fn nodes(method: &Method, path: &str) -> Nodes {
    policy(method, path).nodes
}

/// The hive id in a `/v1/hives/{id}/...` path.
pub fn hive_in_path(path: &str) -> Option<&str> {
    let mut segments = path.trim_matches('/').split('/');
    match (segments.next(), segments.next(), segments.next()) {
        (Some("v1"), Some("hives"), Some(id)) if !id.is_empty() => Some(id),
        _ => None,
    }
}

/// Marks every operation of the OpenAPI document with its row: `x-apiary-scope`,
/// `x-apiary-leader-only`, and no security requirement where the scope is open.
pub fn annotate(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::extensions::Extensions;
    for route in table() {
        let Some(item) = doc.paths.paths.get_mut(route.path) else { continue };
        let Some(op) = operation_mut(item, &route.method) else { continue };
        let marks: Extensions = [
            ("x-apiary-scope", serde_json::Value::from(route.scope.as_str())),
            ("x-apiary-leader-only", serde_json::Value::from(route.leader_only)),
        ]
        .into_iter()
        .collect();
        op.extensions.get_or_insert_with(Default::default).merge(marks);
        if route.scope == Scope::Open {
            op.security = Some(vec![utoipa::openapi::security::SecurityRequirement::default()]);
        }
    }
}

fn operation_mut<'a>(
    item: &'a mut utoipa::openapi::PathItem,
    method: &Method,
) -> Option<&'a mut utoipa::openapi::path::Operation> {
    match *method {
        Method::GET => item.get.as_mut(),
        Method::POST => item.post.as_mut(),
        Method::PUT => item.put.as_mut(),
        Method::PATCH => item.patch.as_mut(),
        Method::DELETE => item.delete.as_mut(),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
