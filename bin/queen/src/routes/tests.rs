//! The route table read three ways: its rows against their handlers, the lookups the
//! auth and redirect layers make, and every route × method × token through the real
//! router.

use super::*;

#[test]
fn each_row_is_its_handlers_method_and_path() {
    for route in table() {
        let Some(handler) = route.handler else { continue };
        let (_, paths, _) = handler();
        let listed: Vec<&String> = paths.paths.keys().collect();
        assert_eq!(listed, [route.path], "{} {}: the handler's path differs", route.method, route.path);
        let mut item = paths.paths.get(route.path).cloned().expect("listed");
        assert!(
            operation_mut(&mut item, &route.method).is_some(),
            "{} {}: the handler serves another method",
            route.method,
            route.path
        );
    }
}

#[test]
fn rows_are_unique_and_head_follows_get() {
    for (i, a) in table().iter().enumerate() {
        for b in &table()[i + 1..] {
            assert!(!(a.method == b.method && a.path == b.path), "{} {} twice", a.method, a.path);
        }
    }
    for route in table().iter().filter(|r| r.method == Method::GET) {
        let path = route.path.replace("{id}", "h1").replace("{name}", "web");
        assert_eq!(scope(&Method::HEAD, &path), route.scope, "HEAD {path}");
        assert_eq!(needs_leader(&Method::HEAD, &path), route.leader_only, "HEAD {path}");
    }
}

#[test]
fn scopes_follow_the_design() {
    assert_eq!(scope(&Method::POST, "/v1/hive-heartbeat"), Scope::Cluster);
    assert_eq!(scope(&Method::GET, "/v1/hives/h1/commands"), Scope::Cluster);
    assert_eq!(scope(&Method::HEAD, "/v1/hives/h1/commands"), Scope::Cluster);
    assert_eq!(scope(&Method::POST, "/v1/jobs"), Scope::Cluster);
    assert_eq!(scope(&Method::POST, "/v1/deployments"), Scope::Admin);
    assert_eq!(scope(&Method::POST, "/v1/cluster/shutdown"), Scope::Admin);
    assert_eq!(scope(&Method::PUT, "/v1/hives/h1/eligibility"), Scope::Admin);
    assert_eq!(scope(&Method::POST, "/v1/hives/h1/drain"), Scope::ClusterOrAdmin);
    assert_eq!(scope(&Method::GET, "/v1/heartbeats/stream"), Scope::Read);
    assert_eq!(scope(&Method::GET, "/metrics"), Scope::Open);
    assert_eq!(scope(&Method::GET, "/pkg/web-ui_bg.wasm"), Scope::Open);
    assert_eq!(scope(&Method::GET, "/v1/nothing-here"), Scope::Read);
    assert_eq!(scope(&Method::PUT, "/v1/jobs"), Scope::Admin, "a method no row has");
    assert_eq!(scope(&Method::POST, "/index.html"), Scope::Admin);
}

#[test]
fn what_a_follower_answers_itself() {
    assert!(!needs_leader(&Method::GET, "/v1/heartbeats/stream"));
    assert!(!needs_leader(&Method::GET, "/v1/cluster/leader"));
    assert!(!needs_leader(&Method::GET, "/healthz"));
    assert!(!needs_leader(&Method::GET, "/index.html"));
    assert!(needs_leader(&Method::GET, "/v1/hives"));
    assert!(needs_leader(&Method::PUT, "/v1/placement/strategy"));
    assert!(needs_leader(&Method::GET, "/v1/unknown"));
}

#[test]
fn templates_fit_whole_segments() {
    assert!(fits("/v1/hives/{id}", "/v1/hives/h1"));
    assert!(fits("/v1/hives/{id}", "/v1/hives/h1/"));
    assert!(!fits("/v1/hives/{id}", "/v1/hives/h1/events"));
    assert!(!fits("/v1/hives/{id}", "/v1/hives//"));
    assert!(!fits("/v1/hives/{id}/events", "/v1/hives/h1/eventsx"));
    assert_eq!(hive_in_path("/v1/hives/h1/acks"), Some("h1"));
    assert_eq!(hive_in_path("/v1/hive-heartbeat"), None);
}

/// The kinds of token a caller may present.
#[derive(Clone, Copy, Debug)]
enum Caller {
    Anonymous,
    Unknown,
    Read,
    Cluster,
    Admin,
    /// The hive the path names (`h1`).
    OwnHive,
    OtherHive,
    /// A worker of `h1`.
    Worker,
}

const CALLERS: [Caller; 8] = [
    Caller::Anonymous,
    Caller::Unknown,
    Caller::Read,
    Caller::Cluster,
    Caller::Admin,
    Caller::OwnHive,
    Caller::OtherHive,
    Caller::Worker,
];

fn token(caller: Caller) -> Option<String> {
    let h1 = contract::NodeId::sanitized("h1");
    let own = queen_client::node_token::hive_token("c", &h1);
    match caller {
        Caller::Anonymous => None,
        Caller::Unknown => Some("nobody".into()),
        Caller::Read => Some("r".into()),
        Caller::Cluster => Some("c".into()),
        Caller::Admin => Some("a".into()),
        Caller::OwnHive => Some(own),
        Caller::OtherHive => Some(queen_client::node_token::hive_token("c", &contract::NodeId::sanitized("h2"))),
        Caller::Worker => queen_client::node_token::worker_token(&own, &contract::NodeId::sanitized("w1")),
    }
}

/// 401 or 403 if the design refuses `caller` here (all three tokens configured), `None`
/// if it lets the request through. Written from the design's table of scopes, not from
/// the code that enforces it.
fn refusal(scope: Scope, nodes: Nodes, caller: Caller) -> Option<u16> {
    let node = |access: Access, own: bool| match access {
        Access::Allow => None,
        Access::OwnHive if own => None,
        _ => Some(403),
    };
    match (scope, caller) {
        (Scope::Open, _) => None,
        (_, Caller::Anonymous | Caller::Unknown) => Some(401),
        (Scope::Admin, Caller::Admin) => None,
        (Scope::Admin, _) => Some(403),
        (Scope::Read, Caller::Read | Caller::Cluster | Caller::Admin) => None,
        (_, Caller::Read) => Some(403),
        (_, Caller::Cluster | Caller::Admin) => None,
        (_, Caller::OwnHive) => node(nodes.hive, true),
        (_, Caller::OtherHive) => node(nodes.hive, false),
        (_, Caller::Worker) => node(nodes.worker, false),
    }
}

#[tokio::test]
async fn every_route_method_and_token_gets_what_the_table_says() -> anyhow::Result<()> {
    use tower::ServiceExt;
    let mut config =
        crate::QueenConfig::with_intervals(std::time::Duration::from_secs(1), std::time::Duration::from_secs(1))?;
    config.tokens = crate::auth::Tokens::single(Some("c"), Some("a"), Some("r"));
    let me = contract::QueenRef { id: "walk".into(), url: "http://127.0.0.1:1".into() };
    let stop = tokio_util::sync::CancellationToken::new();
    let queen = crate::Queen::new(config, me, stop.clone(), tokio_util::task::TaskTracker::new(), None)?;
    let router = crate::api::router(queen);

    let mut paths: Vec<&str> = table().iter().map(|r| r.path).collect();
    paths.sort_unstable();
    paths.dedup();
    // And one that no row has, for the fallbacks.
    paths.push("/v1/nothing-here");
    let methods = [Method::GET, Method::HEAD, Method::POST, Method::PUT, Method::PATCH, Method::DELETE];
    let mut checked = 0;
    for template in paths {
        let path = template.replace("{id}", "h1").replace("{name}", "web");
        for method in &methods {
            let row = lookup(method, &path);
            for caller in CALLERS {
                let (scope, nodes) = match row {
                    Some(r) => (r.scope, r.nodes),
                    // No row: the fallbacks the table documents.
                    None => (scope(method, &path), super::nodes(method, &path)),
                };
                let mut req = axum::http::Request::builder().method(method.clone()).uri(&path);
                if let Some(t) = token(caller) {
                    req = req.header(axum::http::header::AUTHORIZATION, format!("Bearer {t}"));
                }
                let resp = router.clone().oneshot(req.body(axum::body::Body::empty())?).await?;
                let got = resp.status().as_u16();
                let what = format!("{method} {path} as {caller:?}");
                match refusal(scope, nodes, caller) {
                    Some(code) => assert_eq!(got, code, "{what}: refused with the wrong status"),
                    None if row.is_some() => {
                        assert!(![401, 403, 405, 307].contains(&got), "{what}: let through, but answered {got}")
                    }
                    None if table().iter().any(|r| r.path == template) => {
                        assert_eq!(got, 405, "{what}: no such operation, so 405")
                    }
                    None => assert_eq!(got, 404, "{what}: no such path, so 404"),
                }
                checked += 1;
            }
        }
    }
    stop.cancel();
    assert!(checked >= 8 * 6 * 20, "walked {checked} requests");
    Ok(())
}

#[test]
fn the_api_document_carries_each_rows_scope() -> anyhow::Result<()> {
    let doc = serde_json::to_value(crate::api::openapi())?;
    for route in table() {
        let method = route.method.as_str().to_lowercase();
        let op = &doc["paths"][route.path][&method];
        assert!(op.is_object(), "{} {} is not in the document", route.method, route.path);
        if route.handler.is_some() {
            assert_eq!(op["x-apiary-scope"], route.scope.as_str(), "{} {}", route.method, route.path);
            assert_eq!(op["x-apiary-leader-only"], route.leader_only, "{} {}", route.method, route.path);
        }
        if route.scope == Scope::Open {
            assert_eq!(op["security"], serde_json::json!([{}]), "{} {} needs no token", route.method, route.path);
        }
    }
    Ok(())
}
