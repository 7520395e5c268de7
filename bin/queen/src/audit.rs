//! The audit log: every admin call this queen answered (the route table's admin and
//! cluster-or-admin rows, other than reads), who made it, what it was and how it ended,
//! appended to the store before the answer goes out, so a caller that saw the answer can
//! find the entry. `GET /v1/audit` reads it back.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use contract::{ApiErrorBody, AuditEntry, AuditLog};
use lifecycle::http::{ApiError, ErrorCode, QueryParams};

use crate::Queen;
use crate::auth::Caller;
use crate::routes::Policy;

/// The middleware: runs the call, then appends its entry if the route table calls it an
/// admin action (`Policy::audited`).
pub async fn record(State(queen): State<Arc<Queen>>, req: Request, next: Next) -> Response {
    if !req.extensions().get::<Policy>().is_some_and(|p| p.audited) {
        return next.run(req).await;
    }
    let who = req.extensions().get::<Caller>().map_or_else(|| "anonymous".to_string(), |c| c.who.clone());
    let method = req.method().to_string();
    let path = req.uri().path_and_query().map_or_else(|| req.uri().path().to_string(), |p| redact(p.as_str()));
    let resp = next.run(req).await;
    let entry = AuditEntry {
        seq: 0,
        at: time::OffsetDateTime::now_utc(),
        who,
        method,
        path,
        status: resp.status().as_u16(),
        outcome: resp.extensions().get::<ErrorCode>().map_or("ok", |c| c.0).to_string(),
        queen: queen.me.id.clone(),
    };
    let appended = queen.off_runtime(move |q| q.orchestrator.store().append_audit(&entry)).await;
    match appended {
        Ok(Ok(seq)) => tracing::info!(seq, "audit entry appended"),
        // The call has happened; its answer goes out, and the log says loudly what is missing.
        Ok(Err(e)) => tracing::error!(error = %e, "an admin call is missing from the audit log"),
        Err(e) => tracing::error!(error = %e, "an admin call is missing from the audit log"),
    }
    resp
}

/// A query string never carries a token into the log.
fn redact(path_and_query: &str) -> String {
    match path_and_query.split_once('?') {
        Some((path, query)) => {
            let kept: Vec<String> = query
                .split('&')
                .map(|kv| {
                    if kv.starts_with("access_token=") { "access_token=<redacted>".to_string() } else { kv.to_string() }
                })
                .collect();
            format!("{path}?{}", kept.join("&"))
        }
        None => path_and_query.to_string(),
    }
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct AuditQuery {
    /// How many of the newest entries (1 to 10000) [default: 100].
    #[serde(default)]
    limit: Option<usize>,
}

/// The newest admin actions, oldest first: who (the token's name), what, when, and how
/// each ended.
#[utoipa::path(get, path = "/v1/audit", tag = "cluster", params(AuditQuery), responses(
    (status = 200, body = AuditLog), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed"),
    (status = 503, body = ApiErrorBody, description = "the store is unavailable"),
))]
pub(crate) async fn list(
    State(queen): State<Arc<Queen>>,
    QueryParams(q): QueryParams<AuditQuery>,
) -> Result<Json<AuditLog>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::bad_request("invalid_limit", "limit must be within 1..=10000"));
    }
    let entries =
        crate::api::on_store(&queen, move |q| q.orchestrator.store().audit(limit).map_err(crate::api::store_error))
            .await?;
    Ok(Json(AuditLog { entries }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;

    #[tokio::test]
    async fn every_admin_action_is_recorded_with_its_caller_and_result() -> anyhow::Result<()> {
        let named = |name: &str, v: &str| crate::auth::Named { name: name.into(), secret: crate::auth::Secret::new(v) };
        let q = crate::testing::queen(|config| {
            config.tokens = crate::auth::Tokens {
                cluster: vec![named("nodes", "c")],
                admin: vec![named("alice", "a1"), named("deploy-bot", "a2")],
                read: vec![named("grafana", "r")],
            };
        })?;

        let strategy = r#"{"strategy":"round_robin"}"#;
        assert_eq!(q.call(Method::PUT, "/v1/placement/strategy", Some("a2"), strategy).await.0, 200);
        assert_eq!(
            q.call(Method::PUT, "/v1/hives/ghost/eligibility", Some("a1"), r#"{"eligible":false}"#).await.0,
            404
        );
        // Refused before it could act, and reads: not admin actions.
        assert_eq!(q.call(Method::PUT, "/v1/placement/strategy", Some("c"), strategy).await.0, 403);
        assert_eq!(q.call(Method::GET, "/v1/placement/strategy", Some("a1"), "").await.0, 200);

        assert_eq!(q.call(Method::GET, "/v1/audit", Some("r"), "").await.0, 403, "the log is the admin's");
        assert_eq!(q.call(Method::GET, "/v1/audit?limit=0", Some("a1"), "").await.0, 400);
        let (status, body) = q.call(Method::GET, "/v1/audit", Some("a1"), "").await;
        assert_eq!(status, 200, "{body}");
        let log: AuditLog = serde_json::from_str(&body)?;
        let seen: Vec<(u64, &str, &str, &str, u16, &str)> = log
            .entries
            .iter()
            .map(|e| (e.seq, e.who.as_str(), e.method.as_str(), e.path.as_str(), e.status, e.outcome.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                (1, "deploy-bot", "PUT", "/v1/placement/strategy", 200, "ok"),
                (2, "alice", "PUT", "/v1/hives/ghost/eligibility", 404, "not_found"),
            ]
        );
        assert!(log.entries.iter().all(|e| e.queen == "q-test"));
        assert!(!body.contains("a1") && !body.contains("a2"), "no secret in the log: {body}");
        Ok(())
    }

    #[test]
    fn tokens_in_a_query_never_reach_the_log() {
        assert_eq!(
            redact("/v1/hives/h1?force=true&access_token=s3cret"),
            "/v1/hives/h1?force=true&access_token=<redacted>"
        );
        assert_eq!(redact("/v1/deployments"), "/v1/deployments");
    }
}
