//! Who may call what: a cluster token for nodes (heartbeats, control channel, jobs), an
//! admin token for every mutating admin call, an optional read token for the dashboard,
//! the stream and the read API. A scope whose token is not configured is open, which is
//! the loopback development default.
//!
//! `Authorization: Bearer <token>`; GET requests may instead carry `?access_token=`, since
//! a browser's EventSource cannot set headers. Tokens are compared in constant time and
//! never logged.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use lifecycle::http::ApiError;
use queen_client::node_token;
pub use queen_client::node_token::NodeIdentity;

use crate::Queen;
pub use crate::routes::Scope;
use crate::routes::{self, Access};

pub use lifecycle::Secret;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tokens {
    pub cluster: Option<Secret>,
    pub admin: Option<Secret>,
    pub read: Option<Secret>,
}

fn presented(req: &Request) -> Option<String> {
    if req.headers().contains_key(axum::http::header::AUTHORIZATION) {
        return lifecycle::http::bearer(req.headers()).map(str::to_string);
    }
    if req.method() == Method::GET {
        let query = req.uri().query()?;
        return query.split('&').find_map(|kv| kv.strip_prefix("access_token=")).map(str::to_string);
    }
    None
}

impl Tokens {
    /// `Ok` to go on, with the node the token names if it is a node token; otherwise the
    /// error to answer with.
    pub fn check(&self, scope: Scope, token: Option<&str>) -> Result<Option<NodeIdentity>, ApiError> {
        let allowed: Vec<&Secret> = match scope {
            Scope::Open => return Ok(None),
            Scope::Read => match &self.read {
                // Reads are open unless a read token is set; then any token may read.
                None => return Ok(None),
                Some(r) => [Some(r), self.cluster.as_ref(), self.admin.as_ref()].into_iter().flatten().collect(),
            },
            Scope::Cluster => match &self.cluster {
                None => return Ok(None),
                Some(c) => [Some(c), self.admin.as_ref()].into_iter().flatten().collect(),
            },
            Scope::ClusterOrAdmin => {
                if self.cluster.is_none() && self.admin.is_none() {
                    return Ok(None);
                }
                [self.cluster.as_ref(), self.admin.as_ref()].into_iter().flatten().collect()
            }
            Scope::Admin => match &self.admin {
                None => return Ok(None),
                Some(a) => vec![a],
            },
        };
        let Some(token) = token else {
            return Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "a bearer token is required"));
        };
        if allowed.iter().any(|s| s.matches(token)) {
            return Ok(None);
        }
        // A node token stands in for the cluster token wherever that one would do.
        let node = self.cluster.as_ref().and_then(|c| node_token::verify(c.expose(), token));
        let cluster_would_do = self.cluster.as_ref().is_some_and(|c| allowed.contains(&c));
        match node {
            Some(identity) if cluster_would_do => Ok(Some(identity)),
            Some(_) => Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "a node token may not make this call")),
            None => {
                let known = [&self.cluster, &self.admin, &self.read].into_iter().flatten().any(|s| s.matches(token));
                if known {
                    Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "this token may not make this call"))
                } else {
                    Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "unknown token"))
                }
            }
        }
    }
}

/// What a node token may touch beyond its body's claims, from the route table: a hive
/// only its own paths under `/v1/hives/{id}`, a worker only its heartbeat, jobs and reads.
fn binds(identity: &NodeIdentity, nodes: routes::Nodes, path: &str) -> Result<(), ApiError> {
    let allowed = match identity {
        NodeIdentity::Hive(own) => match nodes.hive {
            Access::Allow => true,
            Access::OwnHive => routes::hive_in_path(path) == Some(own.as_str()),
            Access::Deny => false,
        },
        NodeIdentity::Worker { .. } => nodes.worker == Access::Allow,
    };
    if allowed { Ok(()) } else { Err(token_mismatch(identity)) }
}

pub fn token_mismatch(identity: &NodeIdentity) -> ApiError {
    let who = match identity {
        NodeIdentity::Hive(h) => format!("hive {h}"),
        NodeIdentity::Worker { hive, worker } => format!("worker {worker} of hive {hive}"),
    };
    ApiError::new(
        StatusCode::FORBIDDEN,
        "token_mismatch",
        format!("this token is {who}'s and may not act for another node"),
    )
}

/// The middleware in front of every route. A node token's identity rides along in the
/// request's extensions, for the heartbeat handlers to hold the body's claims to it.
pub async fn require(State(queen): State<Arc<Queen>>, mut req: Request, next: Next) -> Response {
    let policy = routes::policy(req.method(), req.uri().path());
    let checked = queen.config().tokens.check(policy.scope, presented(&req).as_deref());
    let identity = match checked {
        Ok(identity) => identity,
        Err(e) => return e.into_response(),
    };
    if let Some(identity) = identity {
        if let Err(e) = binds(&identity, policy.nodes, req.uri().path()) {
            return e.into_response();
        }
        req.extensions_mut().insert(identity);
    }
    // The redirect layer behind this one reads it instead of looking the route up again.
    req.extensions_mut().insert(policy);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens { cluster: Some(Secret::new("c")), admin: Some(Secret::new("a")), read: Some(Secret::new("r")) }
    }

    #[test]
    fn wrong_kind_is_403_and_none_or_unknown_is_401() {
        let t = tokens();
        let status = |scope, token| t.check(scope, token).err().map(|e| e.status.as_u16());
        let hive = node_token::hive_token("c", &contract::NodeId::sanitized("h1"));
        assert_eq!(status(Scope::Cluster, Some(&hive)), None, "a node token does what the cluster token does");
        assert_eq!(status(Scope::Read, Some(&hive)), None);
        assert_eq!(status(Scope::Admin, Some(&hive)), Some(403));
        let foreign = node_token::hive_token("x", &contract::NodeId::sanitized("h1"));
        assert_eq!(status(Scope::Cluster, Some(&foreign)), Some(401), "made from another cluster's token");
        assert_eq!(status(Scope::Admin, None), Some(401));
        assert_eq!(status(Scope::Admin, Some("nope")), Some(401));
        assert_eq!(status(Scope::Admin, Some("c")), Some(403));
        assert_eq!(status(Scope::Admin, Some("a")), None);
        assert_eq!(status(Scope::Cluster, Some("r")), Some(403));
        assert_eq!(status(Scope::Cluster, Some("a")), None, "admin may do what nodes do");
        assert_eq!(status(Scope::Read, Some("c")), None, "any token may read");
        assert_eq!(status(Scope::Read, None), Some(401));
        assert_eq!(status(Scope::Open, None), None);
    }

    #[test]
    fn scopes_without_a_token_are_open() {
        let t = Tokens::default();
        assert!(t.check(Scope::Admin, None).is_ok());
        assert!(t.check(Scope::Cluster, None).is_ok());
        let only_admin = Tokens { admin: Some(Secret::new("a")), ..Default::default() };
        assert!(only_admin.check(Scope::Read, None).is_ok(), "reads stay open without a read token");
        assert!(only_admin.check(Scope::Admin, None).is_err());
    }

    #[test]
    fn secrets_never_print() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "<redacted>");
    }
}
