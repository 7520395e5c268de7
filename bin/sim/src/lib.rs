//! A load simulator for the queen, and the baseline it is measured against.
//!
//! - [`fleet`]: N hives and M workers each heartbeating over real HTTP at a real interval
//!   (±10 % jitter, keep-alive connections), optionally silencing a share of the hives for
//!   a while and bringing them back as restarted processes.
//! - [`flood`]: closed-loop saturation: C connections sending heartbeats back to back.
//! - [`streams`]: K SSE clients on the snapshot stream, measuring how long after its tick
//!   each snapshot arrives.
//! - [`registry_memory`]: bytes per entry of the queen's registry, filled in-process.
//! - [`baseline`]: an HTTP server whose handler reads the body and answers 204, served by
//!   the same listener code as the queen: what "as fast as HTTP allows here" looks like.
//!
//! Every mode reports counts and latency percentiles as JSON, for `cargo xtask bench`.

mod body;
pub mod fleet;
pub mod flood;
pub mod streams;

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

pub use fleet::{FleetConfig, fleet};
pub use flood::{FloodConfig, flood};
pub use streams::{StreamsConfig, streams};

/// Latency percentiles in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// What a load run did and how the other side answered.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub sent: u64,
    pub accepted: u64,
    /// Answered 200 but not taken in (older than what the queen holds).
    pub stale: u64,
    pub rate_limited: u64,
    /// Transport errors and any other status.
    pub errors: u64,
    pub elapsed_s: f64,
    pub per_second: f64,
    pub latency_ms: Percentiles,
    /// How late each heartbeat left against its node's schedule (fleet mode): a sender
    /// waits for each answer, so a slow queen or a starved simulator shows here, and a
    /// heartbeat sent late reads as the node's silence.
    pub late_ms: Percentiles,
    /// Hives the run silenced for a while (fleet mode).
    pub silenced_hives: usize,
}

/// Counts and a latency histogram of one sender; merged at the end.
pub(crate) struct Tally {
    latency_us: Histogram<u64>,
    late_us: Histogram<u64>,
    report: Report,
}

impl Tally {
    pub(crate) fn new() -> Self {
        // 1 µs to 60 s at 3 significant digits.
        let histogram =
            || Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| Histogram::new(3).expect("3 sig"));
        Self { latency_us: histogram(), late_us: histogram(), report: Report::default() }
    }

    /// How late a heartbeat left against its schedule.
    pub(crate) fn record_late(&mut self, late: Duration) {
        let _ = self.late_us.record((late.as_micros() as u64).max(1));
    }

    pub(crate) fn record(&mut self, took: Duration, outcome: Outcome) {
        self.report.sent += 1;
        let _ = self.latency_us.record((took.as_micros() as u64).max(1));
        match outcome {
            Outcome::Accepted => self.report.accepted += 1,
            Outcome::Stale => self.report.stale += 1,
            Outcome::RateLimited => self.report.rate_limited += 1,
            Outcome::Error => self.report.errors += 1,
        }
    }

    pub(crate) fn merge(&mut self, other: Tally) {
        let _ = self.latency_us.add(&other.latency_us);
        let _ = self.late_us.add(&other.late_us);
        let (a, b) = (&mut self.report, other.report);
        a.sent += b.sent;
        a.accepted += b.accepted;
        a.stale += b.stale;
        a.rate_limited += b.rate_limited;
        a.errors += b.errors;
    }

    pub(crate) fn finish(mut self, elapsed: Duration) -> Report {
        let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let percentiles =
            |h: &Histogram<u64>| Percentiles { p50: ms(h, 0.5), p90: ms(h, 0.9), p99: ms(h, 0.99), max: ms(h, 1.0) };
        self.report.latency_ms = percentiles(&self.latency_us);
        if !self.late_us.is_empty() {
            self.report.late_ms = percentiles(&self.late_us);
        }
        self.report.elapsed_s = elapsed.as_secs_f64();
        self.report.per_second = self.report.sent as f64 / elapsed.as_secs_f64().max(1e-9);
        self.report
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Accepted,
    Stale,
    RateLimited,
    Error,
}

/// Sends one heartbeat and sorts the answer.
pub(crate) async fn post(http: &reqwest::Client, url: &str, token: Option<&str>, body: String) -> Outcome {
    let mut req = http.post(url).header("content-type", "application/json").body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    match req.send().await {
        Ok(resp) if resp.status().as_u16() == 200 => match resp.bytes().await {
            // `"accepted":false` is the only way a 200 says "stale".
            Ok(b) if b.windows(16).any(|w| w == b"\"accepted\":false") => Outcome::Stale,
            Ok(_) => Outcome::Accepted,
            Err(_) => Outcome::Error,
        },
        Ok(resp) if resp.status().as_u16() == 429 => Outcome::RateLimited,
        Ok(resp) if resp.status().as_u16() == 204 => Outcome::Accepted,
        _ => Outcome::Error,
    }
}

/// An HTTP client for many small requests over kept-alive connections.
pub(crate) fn client(connections: usize) -> anyhow::Result<reqwest::Client> {
    Ok(queen_client::http_builder()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(3))
        .pool_max_idle_per_host(connections)
        .tcp_nodelay(true)
        .build()?)
}

/// Serves the baseline on `listener` until `stop`: reads each request's body, answers 204.
pub async fn baseline(
    listener: tokio::net::TcpListener,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let app = axum::Router::new().fallback(|body: bytes::Bytes| async move {
        drop(body);
        axum::http::StatusCode::NO_CONTENT
    });
    let tasks = tokio_util::task::TaskTracker::new();
    let server = lifecycle::HttpServer::spawn(&tasks, listener, app);
    stop.cancelled().await;
    server.stop().await?;
    Ok(())
}

/// What one registry entry costs in resident memory.
#[derive(Clone, Debug, Serialize)]
pub struct MemoryReport {
    pub entries: usize,
    pub rss_growth_bytes: u64,
    pub bytes_per_entry: f64,
}

/// Fills the queen's own registry type with `entries` worker heartbeats (as the queen
/// would decode them) and measures how much resident memory that took.
pub fn registry_memory(entries: usize) -> anyhow::Result<MemoryReport> {
    use heartbeat_registry::{HeartbeatRegistry, Thresholds};
    let thresholds = Thresholds::for_interval(Duration::from_secs(10), None).map_err(|e| anyhow::anyhow!("{e}"))?;
    let before = rss_self()?;
    let registry = HeartbeatRegistry::<contract::WorkerHeartbeat>::new(thresholds);
    for i in 0..entries {
        let text = body::worker(&format!("sim-worker-{i}"), &format!("sim-hive-{}", i / 10), 1, 1);
        registry.upsert(serde_json::from_str(&text)?);
    }
    let growth = rss_self()?.saturating_sub(before);
    anyhow::ensure!(registry.len() == entries, "the registry holds {} entries, not {entries}", registry.len());
    Ok(MemoryReport { entries, rss_growth_bytes: growth, bytes_per_entry: growth as f64 / entries as f64 })
}

fn rss_self() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next());
    Ok(kb.ok_or_else(|| anyhow::anyhow!("no VmRSS"))?.parse::<u64>()? * 1024)
}
