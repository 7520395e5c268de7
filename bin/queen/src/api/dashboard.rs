//! The dashboard's files at `/`: a directory given with `--ui-dir`, else the copy built
//! into the binary (see `build.rs`), else a page that says how to get one.

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use lifecycle::http::not_found_fallback;
use tower_http::services::ServeDir;

include!(concat!(env!("OUT_DIR"), "/dashboard.rs"));

/// Whether this binary carries a dashboard (a debug build: whether the directory it reads
/// from holds one now).
pub fn embedded() -> bool {
    Dashboard::get("index.html").is_some()
}

pub(super) fn router(dir: Option<&std::path::Path>) -> Router {
    match dir {
        Some(dir) => Router::new().fallback_service(ServeDir::new(dir)),
        None if embedded() => Router::new().fallback_service(get(serve_embedded)),
        None => Router::new()
            .route("/", get(no_dashboard))
            .route("/index.html", get(no_dashboard))
            .fallback(not_found_fallback),
    }
}

async fn serve_embedded(uri: Uri, headers: HeaderMap) -> Response {
    let path = match uri.path().trim_start_matches('/') {
        "" => "index.html",
        path => path,
    };
    let Some(file) = Dashboard::get(path) else {
        return not_found_fallback().await.into_response();
    };
    // The files change only with the binary, so their hash is a strong validator; the
    // browser asks again each load (no-cache) and gets a 304 while nothing changed.
    let etag = format!("\"{}\"", hex(&file.metadata.sha256_hash()[..16]));
    let common = [(header::ETAG, etag.clone()), (header::CACHE_CONTROL, "no-cache".to_string())];
    let unchanged = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if unchanged {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    let mime =
        HeaderValue::from_str(file.metadata.mimetype()).unwrap_or(HeaderValue::from_static("application/octet-stream"));
    (common, [(header::CONTENT_TYPE, mime)], Body::from(file.data.into_owned())).into_response()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn no_dashboard() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        "<!doctype html><title>Apiary</title><h1>Apiary</h1>\
         <p>This queen was built without its dashboard. Build the dashboard with \
         <code>cargo xtask web</code> and then the queen (a release build embeds it; \
         <code>cargo xtask dist</code> does both), or point <code>--ui-dir</code> at a built one.</p>\
         <p>The API is under <a href=\"/v1/snapshot\">/v1</a>; the live stream is \
         <a href=\"/v1/heartbeats/stream\">/v1/heartbeats/stream</a>.</p>",
    )
}
