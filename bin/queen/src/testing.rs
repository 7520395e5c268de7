//! In-process queens for tests: the real router, no sockets.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, header};
use tower::ServiceExt;

use crate::{Queen, QueenConfig};

/// A queen on a memory store, its router, and the token that stops it.
pub struct TestQueen {
    pub queen: Arc<Queen>,
    pub router: axum::Router,
    pub stop: tokio_util::sync::CancellationToken,
}

impl Drop for TestQueen {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// One-second intervals, everything else as `tune` leaves it.
pub fn queen(tune: impl FnOnce(&mut QueenConfig)) -> anyhow::Result<TestQueen> {
    queen_on(crate::clock::Wall::system(), tune)
}

/// As [`queen`], deciding dates by `wall`.
pub fn queen_on(wall: crate::clock::Wall, tune: impl FnOnce(&mut QueenConfig)) -> anyhow::Result<TestQueen> {
    let mut config = QueenConfig::with_intervals(Duration::from_secs(1), Duration::from_secs(1))?;
    tune(&mut config);
    let me = contract::QueenRef { id: "q-test".into(), url: "http://127.0.0.1:1".into() };
    let stop = tokio_util::sync::CancellationToken::new();
    let queen = Queen::with_wall(config, me, stop.clone(), tokio_util::task::TaskTracker::new(), None, wall)?;
    let router = crate::api::router(Arc::clone(&queen));
    // Without its probe the listening clock would stand still, and no node would ever be
    // silent (see `heartbeat_registry::Listening`).
    if tokio::runtime::Handle::try_current().is_ok() {
        tokio::spawn(crate::listen(Arc::clone(&queen), stop.clone()));
    }
    Ok(TestQueen { queen, router, stop })
}

impl TestQueen {
    /// Sends one request; a non-empty body goes as JSON. Returns the status and the body.
    pub async fn call(&self, method: Method, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
        let mut req = axum::http::Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        if !body.is_empty() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let resp = self
            .router
            .clone()
            .oneshot(req.body(axum::body::Body::from(body.to_string())).expect("request"))
            .await
            .expect("answered");
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.expect("body");
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }
}
