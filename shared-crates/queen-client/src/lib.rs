//! A typed client for the queen's HTTP API, and the heartbeat loop that hives and workers
//! share (first beat at once, then the queen's interval with ±10 % jitter, capped jittered
//! exponential backoff while the queen is unreachable).

mod heartbeat;

pub use heartbeat::{Beat, Heartbeater, jittered};

use std::time::Duration;

use contract::{ApiErrorBody, HiveSummary, NodeEvent, Snapshot, WorkerSummary, paths};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Default address of the queen (DESIGN 10).
pub const DEFAULT_QUEEN_URL: &str = "http://127.0.0.1:8500";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid queen url {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("queen unreachable: {0}")]
    Transport(#[from] reqwest::Error),
    #[error("queen answered {status}: {code}: {message}")]
    Api { status: u16, code: String, message: String },
}

/// Cheap to clone; every call has a timeout.
#[derive(Clone, Debug)]
pub struct QueenClient {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl QueenClient {
    pub fn new(base: &str, token: Option<String>, timeout: Duration) -> Result<Self, ClientError> {
        let trimmed = base.trim_end_matches('/');
        let url = reqwest::Url::parse(trimmed)
            .map_err(|e| ClientError::InvalidUrl { url: base.into(), reason: e.to_string() })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ClientError::InvalidUrl { url: base.into(), reason: "scheme must be http or https".into() });
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(3)))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()?;
        Ok(Self { http, base: trimmed.to_string(), token })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn authorize(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    async fn decode<R: DeserializeOwned>(resp: reqwest::Response) -> Result<R, ClientError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp.json().await?);
        }
        let text = resp.text().await.unwrap_or_default();
        let (code, message) = match serde_json::from_str::<ApiErrorBody>(&text) {
            Ok(body) => (body.code, body.message),
            Err(_) => ("unexpected".to_string(), text),
        };
        Err(ClientError::Api { status: status.as_u16(), code, message })
    }

    pub async fn post_json<B: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<R, ClientError> {
        let resp = self.authorize(self.http.post(self.url(path)).json(body)).send().await?;
        Self::decode(resp).await
    }

    pub async fn get_json<R: DeserializeOwned>(&self, path: &str) -> Result<R, ClientError> {
        let resp = self.authorize(self.http.get(self.url(path))).send().await?;
        Self::decode(resp).await
    }

    pub async fn snapshot(&self) -> Result<Snapshot, ClientError> {
        self.get_json(paths::SNAPSHOT).await
    }

    pub async fn hives(&self) -> Result<Vec<HiveSummary>, ClientError> {
        self.get_json(paths::HIVES).await
    }

    pub async fn workers(&self) -> Result<Vec<WorkerSummary>, ClientError> {
        self.get_json(paths::WORKERS).await
    }

    pub async fn hive(&self, id: &str) -> Result<HiveSummary, ClientError> {
        self.get_json(&format!("{}/{id}", paths::HIVES)).await
    }

    pub async fn worker(&self, id: &str) -> Result<WorkerSummary, ClientError> {
        self.get_json(&format!("{}/{id}", paths::WORKERS)).await
    }

    pub async fn hive_events(&self, id: &str) -> Result<Vec<NodeEvent>, ClientError> {
        self.get_json(&format!("{}/{id}/events", paths::HIVES)).await
    }

    pub async fn worker_events(&self, id: &str) -> Result<Vec<NodeEvent>, ClientError> {
        self.get_json(&format!("{}/{id}/events", paths::WORKERS)).await
    }
}
