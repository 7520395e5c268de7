//! A replica's output, read through the queen: the queen asks the hive that runs it (on
//! the hive's own listener, the address its heartbeat reported and admission checked),
//! presenting that hive's node token, and passes the answer on as it comes.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use contract::{ApiErrorBody, LogQuery, NodeId};
use lifecycle::http::{ApiError, PathParam, QueryParams};

use super::parse_id;
use crate::Queen;

/// Most bytes of one read (not a follow) the queen passes on; the hive sends at most 4 MiB.
const MAX_LOG_ANSWER: usize = 8 * 1024 * 1024;
/// A read that is not a follow is answered in this long or not at all.
const READ_TIMEOUT: Duration = Duration::from_secs(15);

/// A replica's stdout or stderr, oldest first, as its hive kept it; with `follow`, the
/// answer stays open and carries what the replica writes next.
#[utoipa::path(get, path = "/v1/replicas/{name}/logs", tag = "deployments", params(("name" = NodeId, Path, description = "replica (worker) name"), LogQuery), responses(
    (status = 200, content_type = "application/octet-stream", body = String, description = "the output's own bytes"),
    (status = "4XX", body = ApiErrorBody, description = "refused, or no such replica or output"),
    (status = 502, body = ApiErrorBody, description = "the replica's hive did not answer"),
))]
pub(crate) async fn replica_logs(
    State(queen): State<Arc<Queen>>,
    PathParam(raw): PathParam<String>,
    QueryParams(q): QueryParams<LogQuery>,
) -> Result<Response, ApiError> {
    q.validate().map_err(|e| ApiError::bad_request("invalid_query", e.to_string()))?;
    let replica = parse_id(&raw)?;
    // Where it was placed; else a hive that reports running it (one the queen does not
    // know of, or a replica the orchestrator has just let go).
    let located = queen.orchestrator.locate(&replica).or_else(|| {
        let mut found = None;
        queen.ingest.hives.visit(|h| {
            if found.is_none() && h.payload.workers.iter().any(|w| w.name == replica) {
                found = Some((replica.clone(), h.payload.id.clone()));
            }
        });
        found
    });
    let (replica, hive) = located.ok_or_else(|| ApiError::not_found(format!("no replica named {replica}")))?;
    let (address, hostname) =
        queen.ingest.hives.get(&hive).map(|h| (h.payload.address, h.payload.hostname)).ok_or_else(|| {
            ApiError::new(StatusCode::BAD_GATEWAY, "hive_unreachable", format!("{hive} has not been heard from"))
        })?;
    crate::admission::dialable_hive(&address, &hostname, &lifecycle::hostname())
        .map_err(|why| ApiError::new(StatusCode::BAD_GATEWAY, "hive_unreachable", format!("{hive}: {why}")))?;
    let url = format!(
        "{address}{}?{}",
        contract::paths::HIVE_LOGS.replace("{replica}", replica.as_str()),
        q.to_query_string()
    );
    let unreachable = |e: &dyn std::fmt::Display| {
        ApiError::new(StatusCode::BAD_GATEWAY, "hive_unreachable", format!("{hive} at {address}: {e}"))
    };
    let tokens = hive_tokens(&queen, &hive);
    let mut answer = None;
    // One try per cluster token while a rotation lists several; a 401 tries the next.
    for token in tokens.iter().map(Some).chain(tokens.is_empty().then_some(None)) {
        let mut request = queen.http.get(&url);
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        if !q.follow {
            request = request.timeout(READ_TIMEOUT);
        }
        let resp = request.send().await.map_err(|e| unreachable(&e))?;
        let refused = resp.status() == StatusCode::UNAUTHORIZED;
        answer = Some(resp);
        if !refused {
            break;
        }
    }
    let resp = answer.ok_or_else(|| unreachable(&"no answer"))?;
    let status = resp.status();
    if status.is_redirection() {
        return Err(unreachable(&format!("answered {status} (a redirect, not followed)")));
    }
    if status == StatusCode::UNAUTHORIZED {
        return Err(unreachable(&"refused the queen's token for it (is it of this cluster?)"));
    }
    if !status.is_success() {
        // The hive's own JSON error (no such output, a bad query), passed on as it said it.
        let said = crate::jobs::capped(resp, 64 * 1024).await.map_err(|_| unreachable(&"an unreadable error"))?;
        let body: ApiErrorBody =
            serde_json::from_slice(&said).map_err(|_| unreachable(&format!("answered {status}")))?;
        let code = if status == StatusCode::NOT_FOUND { "not_found" } else { "invalid_query" };
        return Err(ApiError::new(status, code, body.message));
    }
    let body = if q.follow {
        // Ends when the client goes (the body is dropped) or the queen stops.
        let stop = queen.stop.clone();
        let stream = futures_util::StreamExt::take_until(resp.bytes_stream(), async move { stop.cancelled().await });
        axum::body::Body::from_stream(stream)
    } else {
        let bytes = crate::jobs::capped(resp, MAX_LOG_ANSWER).await.map_err(|e| match e {
            crate::jobs::Capped::TooLarge => unreachable(&format!("answered more than {MAX_LOG_ANSWER} bytes")),
            crate::jobs::Capped::Read(e) => unreachable(&e),
        })?;
        axum::body::Body::from(bytes)
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// What the hive accepts: its node token, made from each cluster token the queen holds.
fn hive_tokens(queen: &Queen, hive: &NodeId) -> Vec<String> {
    let config = queen.config();
    config.tokens.cluster.iter().map(|c| queen_client::node_token::hive_token(c.secret.expose(), hive)).collect()
}
