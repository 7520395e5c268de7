//! Reading `/v1/heartbeats/stream` the way a browser's EventSource does.

use std::pin::Pin;
use std::time::Duration;

use anyhow::{Context, anyhow};
use contract::Snapshot;
use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures_util::{Stream, StreamExt};

type Events = Pin<Box<dyn Stream<Item = Result<Event, EventStreamError<reqwest::Error>>> + Send>>;

/// An open stream of snapshots.
pub struct SnapshotStream {
    events: Events,
}

impl SnapshotStream {
    /// Connects to `<queen>/v1/heartbeats/stream`.
    pub async fn connect(queen_url: &str) -> anyhow::Result<Self> {
        let resp = queen_client::http()
            .get(format!("{queen_url}{}", contract::paths::HEARTBEAT_STREAM))
            .header("accept", "text/event-stream")
            .send()
            .await?
            .error_for_status()?;
        let content_type = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
        if !content_type.starts_with("text/event-stream") {
            return Err(anyhow!("stream answered with content-type {content_type:?}"));
        }
        Ok(Self { events: Box::pin(resp.bytes_stream().eventsource()) })
    }

    /// The next `event: heartbeat`, with its `id:`; `None` when the stream ended.
    pub async fn next(&mut self, timeout: Duration) -> anyhow::Result<Option<(String, Snapshot)>> {
        loop {
            let next = tokio::time::timeout(timeout, self.events.next()).await.context("no snapshot in time")?;
            let Some(event) = next else { return Ok(None) };
            let event = event.map_err(|e| anyhow!("stream error: {e}"))?;
            if event.event != "heartbeat" {
                continue;
            }
            let snapshot: Snapshot = serde_json::from_str(&event.data).context("snapshot did not decode")?;
            return Ok(Some((event.id, snapshot)));
        }
    }
}
