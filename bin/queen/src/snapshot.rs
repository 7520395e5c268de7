//! One snapshot per tick, serialized once, fanned out to every SSE client.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use contract::{NodeKind, Snapshot, StreamDetail};
use lifecycle::http::{ApiError, QueryParams};
use prometheus_client::metrics::counter::Counter;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::{ClientGuard, Metrics, NodeLabels, StreamLabels};
use crate::{Queen, summary};

/// A published snapshot in each form a client may ask for, each framed as an SSE event
/// once and shared by every subscriber as reference-counted bytes: no client costs a copy.
pub struct Frame {
    pub seq: u64,
    /// `event: heartbeat` with the whole snapshot (`?detail=full`, the default).
    full: Bytes,
    /// Where the JSON sits inside `full`, for `/v1/snapshot`.
    json: std::ops::Range<usize>,
    /// `event: heartbeat` without the per-node lists (`?detail=summary`).
    summary: Bytes,
    /// `event: delta` with the changes since the previous frame, and that frame's seq.
    delta: Option<(u64, Bytes)>,
    /// When it was built; `/readyz` fails if the ticker stops producing frames.
    pub built_at: Instant,
}

/// One SSE event: `event:`, `id:`, and the JSON on one `data:` line (serde_json's compact
/// output has no newlines).
pub(crate) fn sse_event(name: &str, seq: u64, json: &str) -> (Bytes, std::ops::Range<usize>) {
    let head = format!("event: {name}\nid: {seq}\ndata: ");
    let mut out = String::with_capacity(head.len() + json.len() + 2);
    out.push_str(&head);
    out.push_str(json);
    out.push_str("\n\n");
    (Bytes::from(out), head.len()..head.len() + json.len())
}

impl Frame {
    pub(crate) fn empty() -> Self {
        let (full, json) = sse_event("heartbeat", 0, "{}");
        Self { seq: 0, summary: full.clone(), full, json, delta: None, built_at: Instant::now() }
    }

    /// The whole snapshot as JSON (a view into the SSE frame, not a copy).
    pub fn json(&self) -> Bytes {
        self.full.slice(self.json.clone())
    }
}

/// How long an EventSource waits before reconnecting after the stream drops.
const CLIENT_RETRY: Duration = Duration::from_secs(1);
/// Comment lines on an idle stream, so proxies do not close it.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The published frames: the latest in a `watch` channel that every stream reads, and the
/// snapshot behind it, kept to compute the next frame's delta.
pub struct Snapshots {
    tx: watch::Sender<Arc<Frame>>,
    last: Mutex<Option<Snapshot>>,
}

impl Default for Snapshots {
    fn default() -> Self {
        Self { tx: watch::channel(Arc::new(Frame::empty())).0, last: Mutex::new(None) }
    }
}

impl Snapshots {
    /// The latest published frame.
    pub fn latest(&self) -> Arc<Frame> {
        Arc::clone(&self.tx.borrow())
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Frame>> {
        self.tx.subscribe()
    }

    /// The seq the next frame gets: this queen's own numbering, so its clients' deltas
    /// chain whoever built the snapshot.
    pub fn next_seq(&self) -> u64 {
        self.tx.borrow().seq + 1
    }

    fn last(&self) -> std::sync::MutexGuard<'_, Option<Snapshot>> {
        self.last.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The newest event the last published snapshot carried.
    pub fn last_event_seq(&self) -> Option<u64> {
        self.last().as_ref().and_then(|s| s.events.iter().map(|e| e.seq).max())
    }

    /// Serializes `snapshot` in every form a client may ask for and hands it to them.
    pub fn publish(&self, mut snapshot: Snapshot, started: Instant, metrics: &Metrics) {
        let seq = snapshot.seq;
        // Ages follow from the timestamp exactly, so a delta need not carry them.
        for h in &mut snapshot.hives {
            h.last_seen_ago_ms = contract::ago_ms(snapshot.timestamp, h.last_seen);
        }
        for w in &mut snapshot.workers {
            w.last_seen_ago_ms = contract::ago_ms(snapshot.timestamp, w.last_seen);
        }
        let mut last = self.last();
        let delta = last.as_ref().map(|prev| (prev.seq, prev.delta_to(&snapshot)));
        let serialized = serde_json::to_string(&snapshot).and_then(|json| {
            let summary = serde_json::to_string(&snapshot.summary())?;
            let delta = match &delta {
                Some((base, d)) => Some((*base, sse_event("delta", seq, &serde_json::to_string(d)?).0)),
                None => None,
            };
            Ok((sse_event("heartbeat", seq, &json), sse_event("heartbeat", seq, &summary).0, delta))
        });
        let ((full, json), summary, delta) = match serialized {
            Ok(forms) => forms,
            Err(e) => {
                tracing::error!(error = %e, "snapshot did not serialize; keeping the previous one");
                return;
            }
        };
        *last = Some(snapshot);
        drop(last);
        metrics.snapshot_bytes.set(json.len() as i64);
        metrics.snapshot_build_seconds.observe(started.elapsed().as_secs_f64());
        self.tx.send_replace(Arc::new(Frame { seq, full, json, summary, delta, built_at: Instant::now() }));
    }
}

/// The cluster as the queen sees it now: one pass over each registry (summaries and
/// counts), the recent events of both and of the orchestrator merged by seq, deployments,
/// drains and the shutdown.
pub(crate) fn build(queen: &Queen, seq: u64) -> Snapshot {
    let ingest = &queen.ingest;
    // Read once, not under the registry's locks.
    let ineligible = queen.orchestrator.ineligible();
    let mut hives = Vec::with_capacity(ingest.hives.len());
    let mut counts = NodeCounts::default();
    ingest.hives.visit(|n| {
        counts.add(NodeKind::Hive, n.liveness, n.available, n.flapping);
        if n.liveness.is_up() {
            for w in &n.payload.workers {
                counts.processes[w.state as usize] += 1;
            }
        }
        let mut h = summary::hive(n);
        h.eligible = !ineligible.contains(&h.id);
        hives.push(h);
    });
    let mut workers = Vec::with_capacity(ingest.workers.len());
    let mut jobs_in_flight = 0u64;
    ingest.workers.visit(|n| {
        counts.add(NodeKind::Worker, n.liveness, n.available, n.flapping);
        if n.liveness.is_up() {
            jobs_in_flight += u64::from(n.payload.in_flight);
        }
        workers.push(summary::worker(n));
    });
    hives.sort_by(|a, b| a.id.cmp(&b.id));
    workers.sort_by(|a, b| a.id.cmp(&b.id));
    counts.export(&queen.metrics);

    let limit = queen.config().snapshot_events;
    let mut events: Vec<_> = ingest
        .hives
        .recent_events(limit)
        .iter()
        .map(|e| summary::node_event(NodeKind::Hive, e))
        .chain(ingest.workers.recent_events(limit).iter().map(|e| summary::node_event(NodeKind::Worker, e)))
        .chain(queen.orchestrator.recent_events(limit))
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
        deployments: queen.orchestrator.summaries(ingest.nodes()),
        placement_brake: queen.orchestrator.brake_engaged(),
        warnings: warnings(queen),
        shutdown: queen.shutdown.current(),
        drains: queen.orchestrator.drains(),
    }
}

/// What every dashboard shows in a banner.
fn warnings(queen: &Queen) -> Vec<String> {
    let config = queen.config();
    let mut out = Vec::new();
    // Loopback without tokens is the development default and says nothing.
    if config.insecure_no_auth {
        out.push(format!(
            "this queen serves on {} with no authentication (--insecure-no-auth): anyone who reaches it can make every hive run any command",
            config.listen
        ));
    }
    out.extend(queen.orchestrator.clock_step());
    out.extend(queen.ingest.deafness());
    if let Some(failure) = queen.orchestrator.store_failure() {
        out.push(failure.text());
    }
    match queen.orchestrator.unknown_hives() {
        0 => {}
        n => out.push(crate::queen::unknown_replicas_text(n)),
    }
    out
}

/// Tallies made while visiting the registries once, exported as metrics afterwards.
#[derive(Default)]
struct NodeCounts {
    online: [usize; 2],
    available: [usize; 2],
    /// [kind][online, suspect, offline, stopped]
    by_liveness: [[i64; 4]; 2],
    /// Replica processes of hives that are up, by `ProcessState`.
    processes: [i64; 4],
    /// [kind] damped for flapping.
    flapping: [i64; 2],
}

impl NodeCounts {
    fn add(&mut self, kind: NodeKind, liveness: heartbeat_registry::Liveness, available: bool, flapping: bool) {
        let k = kind as usize;
        self.flapping[k] += i64::from(flapping);
        if liveness.is_up() {
            self.online[k] += 1;
        }
        if available {
            self.available[k] += 1;
        }
        self.by_liveness[k][liveness as usize] += 1;
    }

    fn export(&self, metrics: &Metrics) {
        use heartbeat_registry::Liveness as L;
        metrics.export_processes(&self.processes);
        metrics.export_flapping(self.flapping);
        for kind in [NodeKind::Hive, NodeKind::Worker] {
            for l in [L::Online, L::Suspect, L::Offline, L::Stopped] {
                metrics
                    .nodes
                    .get_or_create(&NodeLabels { kind: kind.as_str(), liveness: summary::liveness(l).as_str() })
                    .set(self.by_liveness[kind as usize][l as usize]);
            }
        }
    }
}

/// Publishes a snapshot every `snapshot_interval` until `stop` fires.
pub(crate) async fn tick(queen: Arc<Queen>, stop: CancellationToken) {
    let mut config = queen.subscribe_config();
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
                // A follower's frames are its leader's, relayed as they come.
                if !queen.is_leader() {
                    continue;
                }
                // Building a large snapshot takes hundreds of milliseconds of CPU; on a
                // runtime worker it would stall the heartbeats queued behind it.
                if let Err(e) = queen.off_runtime(|q| q.publish_snapshot()).await {
                    tracing::error!(error = %e, "building a snapshot failed; the next tick tries again");
                }
                queen.jobs.sample(queen.jobs_routed());
            }
        }
    }
}

/// `GET /v1/heartbeats/stream` options.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct StreamQuery {
    /// `full` (default): every node in every frame; `summary`: counts, events,
    /// deployments, drains and shutdown only.
    #[serde(default)]
    detail: StreamDetail,
    /// After a first full snapshot, `event: delta` frames (`SnapshotDelta`) with only what
    /// changed; a full `event: heartbeat` again whenever frames were skipped.
    #[serde(default)]
    delta: bool,
}

/// The live stream (SSE, `event: heartbeat`, `id:` the snapshot's seq, each a `Snapshot`):
/// the latest snapshot at once, then every new one.
///
/// A slow client never holds anything up: the watch channel keeps only the newest frame,
/// so a client that falls behind skips straight to it. The stream ends when the queen
/// stops.
#[utoipa::path(get, path = "/v1/heartbeats/stream", tag = "snapshot", params(StreamQuery), responses(
    (status = 200, content_type = "text/event-stream", body = String, description = "an endless stream of Snapshot (and, with delta, SnapshotDelta) events"),
    (status = "4XX", body = contract::ApiErrorBody, description = "refused"),
    (status = 503, body = contract::ApiErrorBody, description = "too many stream clients"),
))]
pub(crate) async fn stream(
    State(queen): State<Arc<Queen>>,
    QueryParams(query): QueryParams<StreamQuery>,
) -> Result<Response, ApiError> {
    if query.delta && query.detail == StreamDetail::Summary {
        return Err(ApiError::bad_request("invalid_query", "delta applies to the full snapshot; drop detail=summary"));
    }
    let max = queen.config().max_stream_clients;
    if queen.metrics.sse_clients.get() >= max as i64 {
        return Err(ApiError::unavailable(
            "too_many_streams",
            format!("the stream already has {max} clients"),
            Duration::from_secs(5),
        ));
    }
    let whole = query.detail == StreamDetail::Full && !query.delta;
    if whole {
        shed_past_budget(&queen)?;
    }
    let guard = (
        ClientGuard::new(&queen.metrics.sse_clients),
        whole.then(|| ClientGuard::new(&queen.metrics.full_stream_clients)),
    );
    let sent = queen.metrics.sse_bytes.get_or_create(&StreamLabels { stream: "snapshots" }).clone();
    // The seq this client holds, in delta mode: a delta goes out only if it follows it.
    let mut held: Option<u64> = None;
    let (detail, delta) = (query.detail, query.delta);
    let pick = move |f: &Frame| match (detail, delta, &f.delta) {
        (StreamDetail::Summary, ..) => f.summary.clone(),
        (StreamDetail::Full, true, Some((base, d))) if held == Some(*base) => {
            held = Some(f.seq);
            d.clone()
        }
        (StreamDetail::Full, ..) => {
            held = Some(f.seq);
            f.full.clone()
        }
    };
    Ok(watch_sse(queen.snapshots.subscribe(), queen.stop.clone(), guard, sent, pick))
}

/// Ingest comes first: every client of the whole snapshot costs its full size every tick
/// (37 MB at 110 000 nodes), so past `--max-full-stream-bytes` a new one is turned away
/// towards the delta stream, which costs a whole snapshot once and then what changed. One
/// client is always let in, however large the snapshot.
fn shed_past_budget(queen: &Queen) -> Result<(), ApiError> {
    let frame = queen.snapshots.subscribe().borrow().full.len() as u64;
    let clients = queen.metrics.full_stream_clients.get().max(0) as u64;
    let budget = queen.config().max_full_stream_bytes;
    if admits_whole(clients, frame, budget) {
        return Ok(());
    }
    queen.metrics.streams_shed.inc();
    Err(ApiError::unavailable(
        "stream_shed",
        format!(
            "the whole snapshot is {} KB and {clients} clients already take it every tick, past this queen's budget of {} KB (--max-full-stream-bytes); read /v1/heartbeats/stream?delta=true (the whole snapshot once, then what changed) or ?detail=summary",
            frame / 1000,
            budget / 1000
        ),
        Duration::from_secs(30),
    ))
}

/// Whether one more client of the whole snapshot fits: `clients` already take `frame`
/// bytes each per tick, against `budget`; the first always fits.
fn admits_whole(clients: u64, frame: u64, budget: u64) -> bool {
    clients == 0 || clients.saturating_add(1).saturating_mul(frame) <= budget
}

/// An SSE response following a watch channel: the reconnect delay, the current value at
/// once, then each new value, until `stop` fires; a comment line when idle so proxies keep
/// the connection. `pick` turns a value into its ready-made SSE bytes (shared, not copied);
/// `guard` lives as long as the stream; `sent` counts the bytes.
pub(crate) fn watch_sse<T: Send + Sync + 'static, G: Send + 'static>(
    mut rx: watch::Receiver<Arc<T>>,
    stop: CancellationToken,
    guard: G,
    sent: Counter,
    mut pick: impl FnMut(&T) -> Bytes + Send + 'static,
) -> Response {
    let body = async_stream::stream! {
        let _guard = guard;
        // The reconnect delay is a field of the first event (no blank line after it): on its
        // own it would be an event block without data, which some clients surface as an
        // empty event before the first snapshot.
        yield Ok::<Bytes, Infallible>(Bytes::from(format!("retry: {}\n", CLIENT_RETRY.as_millis())));
        let first = pick(&rx.borrow_and_update());
        sent.inc_by(first.len() as u64);
        yield Ok(first);
        let mut keep_alive = tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
        loop {
            tokio::select! {
                // A value published just before the stop (the end of a cluster shutdown)
                // still goes out before the stream ends.
                biased;
                changed = rx.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let frame = pick(&rx.borrow_and_update());
                    sent.inc_by(frame.len() as u64);
                    yield Ok(frame);
                }
                _ = stop.cancelled() => break,
                _ = keep_alive.tick() => yield Ok(Bytes::from_static(b": keep-alive\n\n")),
            }
        }
    };
    (
        [(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use crate::testing;

    async fn open(q: &testing::TestQueen, query: &str) -> axum::response::Response {
        let req =
            Request::get(format!("/v1/heartbeats/stream{query}")).body(axum::body::Body::empty()).expect("request");
        q.router.clone().oneshot(req).await.expect("answered")
    }

    #[test]
    fn the_budget_admits_whole_snapshot_clients_while_they_fit_and_always_one() {
        assert!(super::admits_whole(0, 40_000_000, 1), "the first, however large");
        assert!(super::admits_whole(5, 40, 240) && !super::admits_whole(6, 40, 240));
        assert!(!super::admits_whole(u64::MAX, 2, u64::MAX - 1), "no overflow into a yes");
    }

    /// Past the byte budget a client of the whole snapshot is sent to the delta stream;
    /// delta and summary clients are never shed, and one whole client always gets in.
    #[tokio::test]
    async fn whole_snapshot_clients_past_the_budget_are_sent_to_the_delta_stream() -> anyhow::Result<()> {
        let q = testing::queen(|c| c.max_full_stream_bytes = 1)?;
        q.queen.publish_snapshot();
        let first = open(&q, "").await;
        assert_eq!(first.status(), StatusCode::OK, "one client always gets in");
        let second = open(&q, "?detail=full").await;
        assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(second.headers().contains_key("retry-after"));
        let body = String::from_utf8(second.into_body().collect().await?.to_bytes().to_vec())?;
        assert!(body.contains("stream_shed") && body.contains("?delta=true"), "{body}");
        for cheap in ["?delta=true", "?detail=summary"] {
            assert_eq!(open(&q, cheap).await.status(), StatusCode::OK, "{cheap} is not shed");
        }
        assert_eq!(q.queen.metrics.streams_shed.get(), 1);
        assert_eq!(q.queen.metrics.full_stream_clients.get(), 1);
        drop(first);
        assert_eq!(q.queen.metrics.full_stream_clients.get(), 0, "a client that goes frees its share");
        assert_eq!(open(&q, "").await.status(), StatusCode::OK);
        Ok(())
    }

    /// The reconnect delay travels as a field of the first event, not as an event block of
    /// its own (which some clients surface as an empty event).
    #[tokio::test]
    async fn the_stream_opens_with_its_first_snapshot() -> anyhow::Result<()> {
        let q = testing::queen(|_| {})?;
        q.queen.publish_snapshot();
        let mut body = open(&q, "").await.into_body();
        let mut text = String::new();
        while !text.contains("data: ") {
            let frame = body.frame().await.ok_or_else(|| anyhow::anyhow!("stream ended"))??;
            if let Ok(bytes) = frame.into_data() {
                text.push_str(&String::from_utf8_lossy(&bytes));
            }
        }
        assert!(text.starts_with("retry: 1000\nevent: heartbeat\nid: "), "{text:.80}");
        Ok(())
    }
}
