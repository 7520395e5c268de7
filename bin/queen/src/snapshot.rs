//! One snapshot per tick, serialized once, fanned out to every SSE client.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use contract::{NodeKind, Snapshot};
use futures_util::Stream;
use prometheus_client::metrics::counter::Counter;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::{ClientGuard, NodeLabels, StreamLabels};
use crate::{Queen, summary};

/// A published snapshot: its id and its JSON, shared by every subscriber.
pub struct Frame {
    pub seq: u64,
    pub json: Arc<str>,
    /// When it was built; `/readyz` fails if the ticker stops producing frames.
    pub built_at: Instant,
}

impl Frame {
    pub(crate) fn empty() -> Self {
        Self { seq: 0, json: Arc::from("{}"), built_at: Instant::now() }
    }
}

/// How long an EventSource waits before reconnecting after the stream drops.
const CLIENT_RETRY: Duration = Duration::from_secs(1);
/// Comment lines on an idle stream, so proxies do not close it.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

impl Queen {
    /// Builds the snapshot from both registries, serializes it, and publishes it.
    pub(crate) fn publish_snapshot(&self) {
        let started = Instant::now();
        self.sweep();
        let seq = self.snapshots.borrow().seq + 1;
        let snapshot = self.build_snapshot(seq);
        let json: Arc<str> = match serde_json::to_string(&snapshot) {
            Ok(s) => Arc::from(s),
            Err(e) => {
                tracing::error!(error = %e, "snapshot did not serialize; keeping the previous one");
                return;
            }
        };
        self.metrics.snapshot_bytes.set(json.len() as i64);
        self.metrics.snapshot_build_seconds.observe(started.elapsed().as_secs_f64());
        self.snapshots.send_replace(Arc::new(Frame { seq, json, built_at: Instant::now() }));
    }

    fn build_snapshot(&self, seq: u64) -> Snapshot {
        // Read once, not under the registry's locks.
        let ineligible = self.orchestrator.ineligible();
        let mut hives = Vec::with_capacity(self.hives.len());
        let mut counts = NodeCounts::default();
        self.hives.visit(|n| {
            counts.add(NodeKind::Hive, n.liveness, n.available);
            let mut h = summary::hive(n);
            h.eligible = !ineligible.contains(&h.id);
            hives.push(h);
        });
        let mut workers = Vec::with_capacity(self.workers.len());
        let mut jobs_in_flight = 0u64;
        self.workers.visit(|n| {
            counts.add(NodeKind::Worker, n.liveness, n.available);
            if n.liveness.is_up() {
                jobs_in_flight += u64::from(n.payload.in_flight);
            }
            workers.push(summary::worker(n));
        });
        hives.sort_by(|a, b| a.id.cmp(&b.id));
        workers.sort_by(|a, b| a.id.cmp(&b.id));
        counts.export(self);

        let limit = self.config.borrow().snapshot_events;
        let mut events: Vec<_> = self
            .hives
            .recent_events(limit)
            .iter()
            .map(|e| summary::node_event(NodeKind::Hive, e))
            .chain(self.workers.recent_events(limit).iter().map(|e| summary::node_event(NodeKind::Worker, e)))
            .chain(self.orchestrator.recent_events(limit))
            .collect();
        events.sort_by_key(|e| e.seq);
        let skip = events.len().saturating_sub(limit);
        events.drain(..skip);

        let hive_ids = hives.iter().filter(|h| h.liveness.is_up()).map(|h| h.id.clone()).collect();
        let worker_ids = workers.iter().filter(|w| w.liveness.is_up()).map(|w| w.id.clone()).collect();
        Snapshot {
            timestamp: OffsetDateTime::now_utc(),
            workers_online: counts.online[1],
            workers_available: counts.available[1],
            hives_online: counts.online[0],
            hives_available: counts.available[0],
            worker_ids,
            hive_ids,
            seq,
            hives_total: hives.len(),
            workers_total: workers.len(),
            jobs_in_flight,
            hives,
            workers,
            events,
            deployments: self.orchestrator.summaries(&self.workers),
            placement_brake: self.orchestrator.brake_engaged(),
            shutdown: self.shutdown(),
            drains: self.orchestrator.drains(),
        }
    }

    /// The latest published frame.
    pub fn latest_frame(&self) -> Arc<Frame> {
        Arc::clone(&self.snapshots.borrow())
    }
}

/// Tallies made while visiting the registries once, exported as metrics afterwards.
#[derive(Default)]
struct NodeCounts {
    online: [usize; 2],
    available: [usize; 2],
    /// [kind][online, suspect, offline, stopped]
    by_liveness: [[i64; 4]; 2],
}

impl NodeCounts {
    fn add(&mut self, kind: NodeKind, liveness: heartbeat_registry::Liveness, available: bool) {
        let k = kind as usize;
        if liveness.is_up() {
            self.online[k] += 1;
        }
        if available {
            self.available[k] += 1;
        }
        self.by_liveness[k][liveness as usize] += 1;
    }

    fn export(&self, queen: &Queen) {
        use heartbeat_registry::Liveness as L;
        for kind in [NodeKind::Hive, NodeKind::Worker] {
            for l in [L::Online, L::Suspect, L::Offline, L::Stopped] {
                queen
                    .metrics
                    .nodes
                    .get_or_create(&NodeLabels { kind: kind.as_str(), liveness: summary::liveness(l).as_str() })
                    .set(self.by_liveness[kind as usize][l as usize]);
            }
        }
    }
}

/// Publishes a snapshot every `snapshot_interval` until `stop` fires.
pub(crate) async fn tick(queen: Arc<Queen>, stop: CancellationToken) {
    let mut config = queen.config.subscribe();
    let mut tick = crate::interval(config.borrow_and_update().snapshot_interval);
    tick.tick().await; // the first frame was published at start
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            Ok(()) = config.changed() => {
                // A new interval starts counting now; the first tick of a fresh interval
                // is immediate, so skip it rather than publish twice in a row.
                tick = crate::interval(config.borrow_and_update().snapshot_interval);
                tick.tick().await;
            }
            _ = tick.tick() => {
                queen.publish_snapshot();
                queen.sample_jobs();
            }
        }
    }
}

fn event(frame: &Frame) -> (Event, usize) {
    (Event::default().event("heartbeat").id(frame.seq.to_string()).data(&*frame.json), frame.json.len())
}

/// The live stream (SSE, `event: heartbeat`, `id:` the snapshot's seq, each a `Snapshot`):
/// the latest snapshot at once, then every new one.
///
/// A slow client never holds anything up: the watch channel keeps only the newest frame,
/// so a client that falls behind skips straight to it. The stream ends when the queen
/// stops.
#[utoipa::path(get, path = "/v1/heartbeats/stream", tag = "snapshot", responses(
    (status = 200, content_type = "text/event-stream", body = String, description = "an endless stream of Snapshot events"),
    (status = "4XX", body = contract::ApiErrorBody, description = "refused"),
    (status = 503, body = contract::ApiErrorBody, description = "too many stream clients"),
))]
pub(crate) async fn stream(
    State(queen): State<Arc<Queen>>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, lifecycle::http::ApiError> {
    let max = queen.config.borrow().max_stream_clients;
    if queen.metrics.sse_clients.get() >= max as i64 {
        return Err(lifecycle::http::ApiError::unavailable(
            "too_many_streams",
            format!("the stream already has {max} clients"),
            Duration::from_secs(5),
        ));
    }
    let guard = ClientGuard::new(&queen.metrics.sse_clients);
    let sent = queen.metrics.sse_bytes.get_or_create(&StreamLabels { stream: "snapshots" }).clone();
    Ok(watch_sse(queen.snapshots.subscribe(), queen.stop.clone(), guard, sent, event))
}

/// An SSE stream of a watch channel: its current value at once (with the reconnect
/// delay), then each new value, until `stop` fires. `guard` lives as long as the stream;
/// `sent` counts the data bytes of every frame (`to_event` returns the frame and that size).
pub(crate) fn watch_sse<T: Send + Sync + 'static, G: Send + 'static>(
    mut rx: watch::Receiver<Arc<T>>,
    stop: CancellationToken,
    guard: G,
    sent: Counter,
    to_event: fn(&T) -> (Event, usize),
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream = async_stream::stream! {
        let _guard = guard;
        let first = Arc::clone(&rx.borrow_and_update());
        let (event, len) = to_event(&first);
        sent.inc_by(len as u64);
        yield Ok(event.retry(CLIENT_RETRY));
        loop {
            tokio::select! {
                // A value published just before the stop (the end of a cluster shutdown)
                // still goes out before the stream ends.
                biased;
                changed = rx.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let value = Arc::clone(&rx.borrow_and_update());
                    let (event, len) = to_event(&value);
                    sent.inc_by(len as u64);
                    yield Ok(event);
                }
                _ = stop.cancelled() => break,
            }
        }
    };
    Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}
