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

/// One accepted token of a scope, with the name the audit log gives its holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Named {
    pub name: String,
    pub secret: Secret,
}

/// Every scope takes a list, so a token is rotated by adding the new one, moving its
/// holders over, and removing the old one, each step a live reload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tokens {
    pub cluster: Vec<Named>,
    pub admin: Vec<Named>,
    pub read: Vec<Named>,
}

/// Who made a call: the token's name (`anonymous` where the scope is open and no known
/// token came), the list it is on, and the node when it was a node token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub who: String,
    /// `Scope::Cluster` for the cluster token and node tokens, `Admin`, `Read`; `None`
    /// for a caller without a known token (let through only where the scope is open).
    pub kind: Option<Scope>,
    pub node: Option<NodeIdentity>,
}

impl Caller {
    /// What an operator may do where one of the admin tokens is needed: hold one, or face
    /// a queen with no admin token at all (loopback development).
    pub fn is_admin(&self, tokens: &Tokens) -> bool {
        self.kind == Some(Scope::Admin) || tokens.admin.is_empty()
    }
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
    /// One token per scope, named after it; what flags and tests give.
    pub fn single(cluster: Option<&str>, admin: Option<&str>, read: Option<&str>) -> Self {
        let one = |name: &str, value: Option<&str>| {
            value.map(|v| Named { name: name.to_string(), secret: Secret::new(v) }).into_iter().collect()
        };
        Self { cluster: one("cluster", cluster), admin: one("admin", admin), read: one("read", read) }
    }

    pub fn any(&self) -> bool {
        !(self.cluster.is_empty() && self.admin.is_empty() && self.read.is_empty())
    }

    fn all(&self) -> impl Iterator<Item = &Named> {
        self.cluster.iter().chain(&self.admin).chain(&self.read)
    }

    /// The caller a configured token (not a node token) is.
    fn lookup(&self, token: &str) -> Option<Caller> {
        let lists = [(Scope::Cluster, &self.cluster), (Scope::Admin, &self.admin), (Scope::Read, &self.read)];
        lists.into_iter().find_map(|(kind, list)| {
            let n = list.iter().find(|n| n.secret.matches(token))?;
            Some(Caller { who: n.name.clone(), kind: Some(kind), node: None })
        })
    }

    /// The node a node token made from one of the cluster tokens names.
    fn node(&self, token: &str) -> Option<NodeIdentity> {
        self.cluster.iter().find_map(|c| node_token::verify(c.secret.expose(), token))
    }

    /// `Ok` with who is calling; otherwise the error to answer with.
    pub fn check(&self, scope: Scope, token: Option<&str>) -> Result<Caller, ApiError> {
        let open = || {
            let known = token.and_then(|t| self.lookup(t));
            Ok(known.unwrap_or(Caller { who: "anonymous".into(), kind: None, node: None }))
        };
        let allowed: Vec<&Named> = match scope {
            Scope::Open => return open(),
            // Reads are open unless a read token is set; then any token may read.
            Scope::Read if self.read.is_empty() => return open(),
            Scope::Read => self.all().collect(),
            Scope::Cluster if self.cluster.is_empty() => return open(),
            Scope::Cluster => self.cluster.iter().chain(&self.admin).collect(),
            Scope::ClusterOrAdmin if self.cluster.is_empty() && self.admin.is_empty() => return open(),
            Scope::ClusterOrAdmin => self.cluster.iter().chain(&self.admin).collect(),
            Scope::Admin if self.admin.is_empty() => return open(),
            Scope::Admin => self.admin.iter().collect(),
        };
        let Some(token) = token else {
            return Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "a bearer token is required"));
        };
        if allowed.iter().any(|n| n.secret.matches(token)) {
            return self
                .lookup(token)
                .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "unknown token"));
        }
        // A node token stands in for the cluster token wherever that one would do.
        let cluster_would_do = matches!(scope, Scope::Read | Scope::Cluster | Scope::ClusterOrAdmin);
        match self.node(token) {
            Some(identity) if cluster_would_do => {
                Ok(Caller { who: describe(&identity), kind: Some(Scope::Cluster), node: Some(identity) })
            }
            Some(_) => Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "a node token may not make this call")),
            None if self.all().any(|n| n.secret.matches(token)) => {
                Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "this token may not make this call"))
            }
            None => Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "unknown token")),
        }
    }
}

fn describe(identity: &NodeIdentity) -> String {
    match identity {
        NodeIdentity::Hive(h) => format!("hive {h}"),
        NodeIdentity::Worker { hive, worker } => format!("worker {worker} of hive {hive}"),
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
    ApiError::new(
        StatusCode::FORBIDDEN,
        "token_mismatch",
        format!("this token is {}'s and may not act for another node", describe(identity)),
    )
}

/// The middleware in front of every route. A node token's identity rides along in the
/// request's extensions, for the heartbeat handlers to hold the body's claims to it.
pub async fn require(State(queen): State<Arc<Queen>>, mut req: Request, next: Next) -> Response {
    let policy = routes::policy(req.method(), req.uri().path());
    let checked = queen.config().tokens.check(policy.scope, presented(&req).as_deref());
    let caller = match checked {
        Ok(caller) => caller,
        Err(e) => return e.into_response(),
    };
    if let Some(identity) = &caller.node {
        if let Err(e) = binds(identity, policy.nodes, req.uri().path()) {
            return e.into_response();
        }
        req.extensions_mut().insert(identity.clone());
    }
    req.extensions_mut().insert(caller);
    // The redirect layer behind this one reads it instead of looking the route up again.
    req.extensions_mut().insert(policy);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens::single(Some("c"), Some("a"), Some("r"))
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
        let only_admin = Tokens::single(None, Some("a"), None);
        assert!(only_admin.check(Scope::Read, None).is_ok(), "reads stay open without a read token");
        assert!(only_admin.check(Scope::Admin, None).is_err());
    }

    #[test]
    fn every_token_of_a_list_is_accepted_under_its_own_name() {
        let named = |name: &str, value: &str| Named { name: name.into(), secret: Secret::new(value) };
        let t = Tokens {
            cluster: vec![named("cluster-2026", "c-new"), named("cluster-2025", "c-old")],
            admin: vec![named("alice", "a1"), named("deploy-bot", "a2")],
            read: vec![],
        };
        let who = |scope, token: Option<&str>| t.check(scope, token).map(|c| c.who).map_err(|e| e.status.as_u16());
        assert_eq!(who(Scope::Admin, Some("a2")), Ok("deploy-bot".to_string()));
        assert_eq!(who(Scope::Admin, Some("a1")), Ok("alice".to_string()));
        assert_eq!(who(Scope::Cluster, Some("c-old")), Ok("cluster-2025".to_string()), "the old one, mid-rotation");
        assert_eq!(who(Scope::Admin, Some("c-new")), Err(403));
        assert_eq!(who(Scope::Read, None), Ok("anonymous".to_string()), "no read token: reads are open");
        assert_eq!(who(Scope::Read, Some("a1")), Ok("alice".to_string()), "an open call still names a known caller");
        // Node tokens made from either cluster token name their node.
        for cluster in ["c-new", "c-old"] {
            let hive = node_token::hive_token(cluster, &contract::NodeId::sanitized("h1"));
            assert_eq!(who(Scope::Cluster, Some(&hive)), Ok("hive h1".to_string()), "{cluster}");
        }
        let retired = node_token::hive_token("c-gone", &contract::NodeId::sanitized("h1"));
        assert_eq!(who(Scope::Cluster, Some(&retired)), Err(401), "made from a token no longer listed");
    }

    #[test]
    fn secrets_never_print() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "<redacted>");
    }
}
