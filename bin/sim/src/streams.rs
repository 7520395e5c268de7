//! Stream clients: how long after its tick each snapshot reaches each client.
//!
//! The lag of a frame is its arrival time minus the `timestamp` inside it (taken when the
//! queen starts building the snapshot), so it covers build, serialization and fan-out.
//! The first frame of each connection is skipped: it is the latest one, old by design.

use std::time::Duration;

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::Percentiles;

#[derive(Clone, Debug)]
pub struct StreamsConfig {
    pub queen: String,
    pub token: Option<String>,
    pub clients: usize,
    pub duration: Duration,
    /// `?detail=` to ask for (`summary` or `full`); `None` asks for the default.
    pub detail: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct StreamsReport {
    pub clients: usize,
    /// Clients that connected and got at least one frame.
    pub connected: usize,
    pub frames: u64,
    pub bytes: u64,
    pub lag_ms: Percentiles,
}

pub async fn streams(config: StreamsConfig) -> anyhow::Result<StreamsReport> {
    let http = queen_client::http_builder().connect_timeout(Duration::from_secs(5)).build()?;
    let mut url = format!("{}/v1/heartbeats/stream", config.queen);
    if let Some(detail) = &config.detail {
        url.push_str(&format!("?detail={detail}"));
    }
    let deadline = tokio::time::Instant::now() + config.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..config.clients {
        let (http, url, token) = (http.clone(), url.clone(), config.token.clone());
        tasks.spawn(async move {
            let mut lag_us = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid bounds");
            let (mut frames, mut bytes) = (0u64, 0u64);
            let mut req = http.get(&url);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let Ok(resp) = req.send().await else { return (false, lag_us, frames, bytes) };
            let mut events = resp.bytes_stream().eventsource();
            let mut first = true;
            loop {
                let next = tokio::time::timeout_at(deadline, events.next()).await;
                let Ok(Some(Ok(event))) = next else { break };
                if event.event != "heartbeat" && event.event != "delta" {
                    continue;
                }
                let arrived = OffsetDateTime::now_utc();
                frames += 1;
                bytes += event.data.len() as u64;
                if std::mem::take(&mut first) {
                    continue;
                }
                if let Some(at) = timestamp(&event.data) {
                    let lag = (arrived - at).whole_microseconds().max(1) as u64;
                    let _ = lag_us.record(lag);
                }
            }
            (frames > 0, lag_us, frames, bytes)
        });
    }
    let mut report = StreamsReport { clients: config.clients, ..Default::default() };
    let mut lag_us = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    while let Some(done) = tasks.join_next().await {
        let (connected, h, frames, bytes) = done?;
        report.connected += usize::from(connected);
        report.frames += frames;
        report.bytes += bytes;
        lag_us.add(&h)?;
    }
    let ms = |q: f64| lag_us.value_at_quantile(q) as f64 / 1000.0;
    report.lag_ms = Percentiles { p50: ms(0.5), p90: ms(0.9), p99: ms(0.99), max: ms(1.0) };
    Ok(report)
}

/// The snapshot's `timestamp`, read from the front of the frame without decoding the rest
/// (a full snapshot of a large cluster is megabytes; decoding it in every client would
/// measure the simulator).
fn timestamp(data: &str) -> Option<OffsetDateTime> {
    let start = data.find("\"timestamp\":\"")? + "\"timestamp\":\"".len();
    let end = start + data.get(start..)?.find('"')?;
    OffsetDateTime::parse(data.get(start..end)?, &Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_timestamp_is_read_from_the_front() {
        let at = super::timestamp(r#"{"timestamp":"2026-11-24T12:00:00.5Z","seq":3}"#).expect("found");
        assert_eq!(at.millisecond(), 500);
        assert!(super::timestamp(r#"{"seq":3}"#).is_none());
    }
}
