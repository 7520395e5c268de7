//! Integration tests on an in-process cluster: the real queen, hives and workers, over
//! real sockets on port 0.

use std::time::Duration;

use contract::{ApiErrorBody, EventKind, JobResponse, Liveness, NodeId, WorkerStatus};
use reqwest::StatusCode;
use sandbox::samples::{hive_beat, worker_beat};
use sandbox::{Sandbox, SnapshotStream, wait_until};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_snapshot_arrives_at_once_not_after_a_tick() -> anyhow::Result<()> {
    // A one-minute tick: if the stream waited for the tick, this would time out.
    let sb = Sandbox::builder().hives(1).workers_per_hive(1).snapshot_interval(Duration::from_secs(60)).start().await?;
    let mut stream = SnapshotStream::connect(&sb.queen_url()).await?;
    let (id, snapshot) = stream.next(Duration::from_secs(5)).await?.expect("a first snapshot");
    assert_eq!(id, snapshot.seq.to_string(), "the SSE id is the snapshot's seq");
    sb.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_delivers_one_snapshot_per_tick_with_correct_counts() -> anyhow::Result<()> {
    let sb = Sandbox::builder().hives(2).workers_per_hive(2).start().await?;
    let mut stream = SnapshotStream::connect(&sb.queen_url()).await?;
    // The registries already see everyone; the snapshot catches up at the next tick.
    loop {
        let (_, s) = stream.next(Duration::from_secs(5)).await?.expect("stream open");
        if (s.hives_online, s.workers_online) == (2, 4) {
            break;
        }
    }
    let mut seqs = Vec::new();
    for _ in 0..5 {
        let (_, s) = stream.next(Duration::from_secs(5)).await?.expect("stream open");
        assert_eq!((s.hives_online, s.workers_online), (2, 4));
        assert_eq!((s.hives_available, s.workers_available), (2, 4));
        assert_eq!(s.hive_ids, sb.hive_ids());
        assert_eq!(s.worker_ids, sb.worker_ids());
        assert_eq!(s.hives.len(), 2);
        assert!(s.hives.iter().all(|h| h.resources.memory_total_bytes > 0), "real readings");
        assert!(s.workers.iter().all(|w| w.hive_id.as_str().starts_with("hive-")));
        assert!(s.events.iter().any(|e| e.kind == EventKind::Joined));
        seqs.push(s.seq);
    }
    assert!(seqs.windows(2).all(|w| w[1] > w[0]), "one new snapshot per event: {seqs:?}");

    // The raw wire format: the seed fields an existing EventSource client reads.
    let raw = sb.client().get_json::<Value>("/v1/snapshot").await?;
    for field in [
        "timestamp",
        "workers_online",
        "workers_available",
        "hives_online",
        "hives_available",
        "worker_ids",
        "hive_ids",
    ] {
        assert!(raw.get(field).is_some(), "snapshot lacks {field}: {raw}");
    }
    sb.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_hive_goes_offline_after_the_threshold_and_says_why() -> anyhow::Result<()> {
    let mut sb = Sandbox::builder().hives(2).workers_per_hive(0).start().await?;
    let victim = NodeId::new("hive-0")?;
    sb.kill_hive(&victim).await?;
    let client = sb.client();
    let hive = wait_until("hive-0 offline", LONG, || {
        let client = client.clone();
        async move { client.hive("hive-0").await.ok().filter(|h| h.liveness == Liveness::Offline) }
    })
    .await?;
    assert!(!hive.available);
    let events = client.hive_events("hive-0").await?;
    let offline = events.iter().find(|e| e.kind == EventKind::Offline).expect("an offline event");
    assert!(offline.reason.starts_with("no heartbeat for"), "{}", offline.reason);
    assert!(
        events.iter().position(|e| e.kind == EventKind::Suspect)
            < events.iter().position(|e| e.kind == EventKind::Offline),
        "suspect before offline: {events:?}"
    );
    sb.wait_for_counts(1, 0, LONG).await?;
    let s = wait_until("a snapshot without hive-0", LONG, || async {
        sb.snapshot().await.ok().filter(|s| s.hives_online == 1)
    })
    .await?;
    assert_eq!(s.hive_ids, vec![NodeId::new("hive-1")?]);
    assert_eq!(client.hive("hive-1").await?.liveness, Liveness::Online, "the other hive is untouched");
    sb.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_is_gone_at_once() -> anyhow::Result<()> {
    // Slow heartbeats: the offline threshold (30 s) is far beyond this test's patience,
    // so only the goodbye heartbeat can explain the hive being gone.
    let mut sb =
        Sandbox::builder().hives(2).workers_per_hive(1).heartbeat_interval(Duration::from_secs(10)).start().await?;
    let client = sb.client();
    sb.stop_hive(&NodeId::new("hive-0")?).await?;
    let hive = client.hive("hive-0").await?;
    assert_eq!(hive.liveness, Liveness::Stopped, "stopped as soon as stop returned");
    let events = client.hive_events("hive-0").await?;
    let last = events.last().expect("events");
    assert_eq!((last.kind, last.reason.as_str()), (EventKind::Stopped, "stopped gracefully"));

    sb.stop_worker(&NodeId::new("worker-1-0")?).await?;
    let worker = client.worker("worker-1-0").await?;
    assert_eq!((worker.liveness, worker.status), (Liveness::Stopped, WorkerStatus::Stopped));
    sb.wait_for_counts(1, 1, Duration::from_secs(5)).await?;
    sb.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hives_reappear_when_the_queen_comes_back() -> anyhow::Result<()> {
    let mut sb = Sandbox::builder().hives(2).workers_per_hive(1).start().await?;
    let addr = sb.queen_addr();
    sb.stop_queen().await?;
    // Let the agents fail a few heartbeats and back off.
    tokio::time::sleep(Duration::from_millis(800)).await;
    sb.restart_queen(addr)?;
    sb.wait_for_counts(2, 2, LONG).await?;
    assert!(sb.client().hives().await?.iter().all(|h| h.liveness == Liveness::Online));
    sb.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_runs_real_jobs_reports_busy_and_drains() -> anyhow::Result<()> {
    let mut sb =
        Sandbox::builder().hives(1).workers_per_hive(1).heartbeat_interval(Duration::from_millis(100)).start().await?;
    let id = NodeId::new("worker-0-0")?;
    let url = format!("{}/v1/jobs", sb.worker_url(&id).expect("worker url"));
    let http = queen_client::http();

    let resp = http.post(&url).json(&json!({"kind": "sha256", "input": "abc", "rounds": 1})).send().await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let done: JobResponse = resp.json().await?;
    assert_eq!(done.output, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");

    // Fill all four slots with sleeps; a fifth is refused and the queen hears "busy".
    let mut sleeps = Vec::new();
    for _ in 0..4 {
        sleeps.push(tokio::spawn(http.post(&url).json(&json!({"kind": "sleep", "ms": 1500})).send()));
    }
    let client = sb.client();
    let busy = wait_until("worker reported busy", LONG, || {
        let client = client.clone();
        async move { client.worker("worker-0-0").await.ok().filter(|w| w.status == WorkerStatus::Busy) }
    })
    .await?;
    assert_eq!((busy.in_flight, busy.available), (4, false));
    let refused = http.post(&url).json(&json!({"kind": "sleep", "ms": 1})).send().await?;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key("retry-after"));

    // Stop while four jobs run: it refuses new ones, finishes those, then says stopped.
    let stopping = sb.begin_stop_worker(&id)?;
    let draining = wait_until("worker draining", LONG, || {
        let client = client.clone();
        async move { client.worker("worker-0-0").await.ok().filter(|w| w.status == WorkerStatus::Draining) }
    })
    .await?;
    assert!(!draining.available);
    let late = http.post(&url).json(&json!({"kind": "sleep", "ms": 1})).send().await?;
    assert_eq!(late.status(), StatusCode::SERVICE_UNAVAILABLE);
    for s in sleeps {
        assert_eq!(s.await??.status(), StatusCode::OK, "in-flight jobs finish during the drain");
    }
    stopping.await?;
    assert_eq!(client.worker("worker-0-0").await?.liveness, Liveness::Stopped);
    sb.shutdown().await
}

fn with(mut v: Value, pointer: &str, value: Value) -> String {
    *v.pointer_mut(pointer).expect("field exists") = value;
    v.to_string()
}

fn without(mut v: Value, field: &str) -> String {
    v.as_object_mut().expect("object").remove(field);
    v.to_string()
}

/// A hostile request: body, content type, and the status and error code it must get.
struct Case {
    name: &'static str,
    path: &'static str,
    content_type: Option<&'static str>,
    body: String,
    status: u16,
    code: &'static str,
}

fn far_future_epoch() -> u64 {
    contract::Epoch::for_new_process().0 + 365 * 86_400 * 1_000_000
}

fn case(name: &'static str, path: &'static str, body: String, status: u16, code: &'static str) -> Case {
    Case { name, path, content_type: Some("application/json"), body, status, code }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_heartbeats_get_a_clear_json_error_and_change_nothing() -> anyhow::Result<()> {
    let sb = Sandbox::builder().hives(1).workers_per_hive(1).start().await?;
    let client = sb.client();
    let hives_before = client.hives().await?.into_iter().map(|h| h.id).collect::<Vec<_>>();
    let workers_before = client.workers().await?.into_iter().map(|w| w.id).collect::<Vec<_>>();
    let (h, w) = ("/v1/hive-heartbeat", "/v1/worker-heartbeat");
    let (hb, wb) = (|| hive_beat("intruder"), || worker_beat("intruder"));
    let nested = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    let cases = vec![
        case("truncated json", h, "{\"id\":".into(), 400, "malformed_json"),
        case("not json", w, "hello".into(), 400, "malformed_json"),
        case("empty body", h, String::new(), 400, "malformed_json"),
        Case {
            content_type: Some("text/plain"),
            ..case("wrong content type", h, hb().to_string(), 415, "unsupported_media_type")
        },
        Case { content_type: None, ..case("no content type", w, wb().to_string(), 415, "unsupported_media_type") },
        case("body over 64 KiB", h, with(hb(), "/hostname", json!("x".repeat(70_000))), 413, "body_too_large"),
        case(
            "deeply nested label",
            h,
            with(hb(), "/labels", json!({"a": "PLACEHOLDER"})).replace("\"PLACEHOLDER\"", &nested),
            422,
            "invalid_body",
        ),
        case("deeply nested document", w, nested.clone(), 422, "invalid_body"),
        case("id with a space", h, with(hb(), "/id", json!("bad id")), 422, "invalid_body"),
        case("id too long", w, with(wb(), "/id", json!("a".repeat(65))), 422, "invalid_body"),
        case("empty id", h, with(hb(), "/id", json!("")), 422, "invalid_body"),
        case("unicode id", w, with(wb(), "/id", json!("wörker")), 422, "invalid_body"),
        case("control character in id", h, with(hb(), "/id", json!("a\u{7}b")), 422, "invalid_body"),
        case("path traversal in hive id", w, with(wb(), "/hive_id", json!("../etc")), 422, "invalid_body"),
        case("missing epoch", h, without(hb(), "epoch"), 422, "invalid_body"),
        case("epoch as a string", w, with(wb(), "/epoch", json!("7")), 422, "invalid_body"),
        case("negative seq", h, with(hb(), "/seq", json!(-1)), 422, "invalid_body"),
        case(
            "seq beyond u64",
            w,
            wb().to_string().replace("\"seq\":1", "\"seq\":18446744073709551616"),
            422,
            "invalid_body",
        ),
        case("unknown status", h, with(hb(), "/status", json!("partying")), 422, "invalid_body"),
        case("cpu over 100 %", h, with(hb(), "/resources/cpu_percent", json!(250.0)), 422, "invalid_body"),
        case("memory used over total", h, with(hb(), "/resources/memory_used_bytes", json!(3)), 422, "invalid_body"),
        case("control character in hostname", h, with(hb(), "/hostname", json!("box\u{0}")), 422, "invalid_body"),
        case("timestamp not rfc 3339", w, with(wb(), "/sent_at", json!("yesterday")), 422, "invalid_body"),
        case("in flight over max", w, with(wb(), "/in_flight", json!(9)), 422, "invalid_body"),
        case("zero max concurrent", w, with(wb(), "/max_concurrent", json!(0)), 422, "invalid_body"),
        case("duplicate id key", h, hb().to_string().replacen("{", "{\"id\":\"twin\",", 1), 422, "invalid_body"),
        case("array instead of object", w, "[1,2,3]".into(), 422, "invalid_body"),
        case(
            "max workers beyond any hive",
            h,
            with(hb(), "/capacity/max_workers", json!(u32::MAX)),
            422,
            "invalid_body",
        ),
        case("epoch a year ahead", h, with(hb(), "/epoch", json!(far_future_epoch())), 422, "epoch_ahead"),
        case(
            "worker address at a metadata service",
            w,
            with(wb(), "/address", json!("http://169.254.169.254/latest")),
            422,
            "claim_refused",
        ),
        case("worker address not http", w, with(wb(), "/address", json!("file:///etc/passwd")), 422, "claim_refused"),
        case(
            "worker address with user info",
            w,
            with(wb(), "/address", json!("http://a@127.0.0.1:1")),
            422,
            "claim_refused",
        ),
        case(
            "hive address on another machine",
            h,
            with(hb(), "/address", json!("http://10.1.2.3:9")),
            422,
            "claim_refused",
        ),
    ];
    assert!(cases.len() >= 15);

    let http = queen_client::http();
    for c in &cases {
        let mut req = http.post(format!("{}{}", sb.queen_url(), c.path)).body(c.body.clone());
        if let Some(ct) = c.content_type {
            req = req.header("content-type", ct);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        assert_eq!(status, c.status, "{}: {text}", c.name);
        let err: ApiErrorBody = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: not a JSON error body ({e}): {text}", c.name))?;
        assert_eq!(err.code, c.code, "{}: {text}", c.name);
        assert!(!err.message.is_empty(), "{}", c.name);
    }
    let resp = http.get(format!("{}{h}", sb.queen_url())).send().await?;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.json::<ApiErrorBody>().await?.code, "method_not_allowed");

    // Nothing changed: no intruder, same nodes, and a good heartbeat still works.
    let hives: Vec<NodeId> = client.hives().await?.into_iter().map(|h| h.id).collect();
    let workers: Vec<NodeId> = client.workers().await?.into_iter().map(|w| w.id).collect();
    assert_eq!(hives, hives_before);
    assert_eq!(workers, workers_before);
    let ok = http.post(format!("{}{h}", sb.queen_url())).json(&hive_beat("late-joiner")).send().await?;
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(client.hive("late-joiner").await?.liveness, Liveness::Online);

    // A replayed heartbeat is answered but marked not accepted, and changes nothing.
    let replay: contract::HeartbeatResponse =
        http.post(format!("{}{h}", sb.queen_url())).json(&hive_beat("late-joiner")).send().await?.json().await?;
    assert!(!replay.accepted);
    sb.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_endpoints_answer_in_json_and_metrics_count() -> anyhow::Result<()> {
    let sb = Sandbox::builder().hives(1).workers_per_hive(1).start().await?;
    let http = queen_client::http();
    let base = sb.queen_url();
    for (path, status, code) in [
        ("/v1/hives/nope", 404, "not_found"),
        ("/v1/workers/nope/events", 404, "not_found"),
        ("/v1/hives/bad%20id", 400, "invalid_id"),
        ("/v1/no-such-thing", 404, "not_found"),
    ] {
        let resp = http.get(format!("{base}{path}")).send().await?;
        assert_eq!(resp.status().as_u16(), status, "{path}");
        assert_eq!(resp.json::<ApiErrorBody>().await?.code, code, "{path}");
    }
    let doc: Value = http.get(format!("{base}/v1/openapi.json")).send().await?.json().await?;
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{doc}");
    for path in
        ["/v1/hive-heartbeat", "/v1/heartbeats/stream", "/v1/deployments/{name}", "/v1/cluster/shutdown", "/readyz"]
    {
        assert!(doc["paths"][path].is_object(), "the API description lacks {path}");
    }
    assert!(doc["components"]["schemas"]["Snapshot"].is_object());
    let leader = sb.client().leader().await?;
    assert!(leader.is_self && leader.term == 0, "one queen leads itself: {leader:?}");
    assert_eq!(leader.leader.map(|q| q.url), Some(base.clone()));
    let page = http.get(format!("{base}/")).send().await?;
    assert_eq!(page.status(), StatusCode::OK);
    let page = page.text().await?;
    // The dashboard built into the queen (a debug build reads it from where `cargo xtask
    // web` put it), or, when there is none, a page that says how to get one.
    if queen::api::dashboard::embedded() {
        assert!(page.contains("./pkg/web-ui.js"), "the built-in dashboard is served: {page}");
    } else {
        assert!(page.contains("cargo xtask web"), "a queen without the dashboard says how to get it: {page}");
    }
    assert_eq!(http.get(format!("{base}/healthz")).send().await?.status(), StatusCode::OK);
    assert_eq!(http.get(format!("{base}/readyz")).send().await?.status(), StatusCode::OK);
    let hive_url = sb.hive_url(&NodeId::new("hive-0")?).expect("hive url");
    let hive_ready: contract::ReadinessReport = http.get(format!("{hive_url}/readyz")).send().await?.json().await?;
    let worker_url = sb.worker_url(&NodeId::new("worker-0-0")?).expect("worker url");
    let worker_ready: contract::ReadinessReport = http.get(format!("{worker_url}/readyz")).send().await?.json().await?;
    let containment = hive_ready.checks.iter().find(|c| c.name == "containment").map(|c| c.detail.clone());
    assert!(
        containment.as_deref().is_some_and(|d| d.contains("cgroup")),
        "the hive says how it contains replicas: {containment:?}"
    );
    for (report, checks) in [
        (&hive_ready, &["queen_contact", "supervisor", "containment"][..]),
        (&worker_ready, &["queen_contact", "job_executor"][..]),
    ] {
        assert_eq!(report.status, contract::ReadinessStatus::Ready, "{report:?}");
        let names: Vec<&str> = report.checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, checks);
    }

    let mut stream = SnapshotStream::connect(&base).await?;
    // Node gauges are set when a snapshot is built; wait for one that has everyone.
    while stream.next(Duration::from_secs(5)).await?.is_some_and(|(_, s)| s.hives_online != 1) {}
    let text = http.get(format!("{base}/metrics")).send().await?.text().await?;
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))?;
    let value = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
        scrape.samples.iter().find_map(|s| {
            let matches = s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v));
            match (&s.value, matches) {
                (
                    prometheus_parse::Value::Counter(v)
                    | prometheus_parse::Value::Gauge(v)
                    | prometheus_parse::Value::Untyped(v),
                    true,
                ) => Some(*v),
                _ => None,
            }
        })
    };
    let hive = [("kind", "hive")];
    assert!(value("apiary_heartbeats_received_total", &[("kind", "hive"), ("outcome", "accepted")]) >= Some(1.0));
    assert!(value("apiary_heartbeats_received_total", &[("kind", "worker"), ("outcome", "accepted")]) >= Some(1.0));
    assert_eq!(value("apiary_nodes", &[("kind", "hive"), ("liveness", "online")]), Some(1.0));
    assert_eq!(value("apiary_sse_clients", &[]), Some(1.0));
    assert_eq!(value("apiary_liveness_transitions_total", &[("kind", "hive"), ("event", "joined")]), Some(1.0));
    assert!(value("apiary_sse_bytes_sent_total", &[("stream", "snapshots")]) > Some(100.0), "{text}");
    assert!(value("apiary_heartbeat_ingest_seconds_count", &hive) >= Some(1.0), "{text}");
    assert!(value("apiary_heartbeat_ingest_seconds_sum", &hive) > Some(0.0), "{text}");
    // Prometheus conventions: one prefix, counters end in _total, durations in _seconds.
    for sample in &scrape.samples {
        assert!(sample.metric.starts_with("apiary_"), "{}", sample.metric);
    }
    for (name, help) in &scrape.docs {
        assert!(!help.is_empty(), "{name} has no help");
    }
    assert!(text.contains("# TYPE apiary_heartbeat_ingest_seconds histogram"), "{text}");
    sb.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_heartbeats_is_rate_limited_and_streams_are_capped() -> anyhow::Result<()> {
    let sb = Sandbox::builder().hives(1).workers_per_hive(1).max_stream_clients(2).start().await?;
    let http = queen_client::http();
    let url = format!("{}/v1/hive-heartbeat", sb.queen_url());
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for seq in 1..=100u64 {
        let mut beat = hive_beat("flooder");
        beat["seq"] = json!(seq);
        let resp = http.post(&url).json(&beat).send().await?;
        let status = resp.status().as_u16();
        statuses.push(status);
        if status == 429 {
            retry_after = resp.headers().get("retry-after").cloned();
            assert_eq!(resp.json::<ApiErrorBody>().await?.code, "rate_limited");
        }
    }
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert!(limited > 50, "a flood of 100 is mostly refused: {limited} refused");
    assert!(retry_after.is_some(), "429 says when to come back");
    // Well-behaved nodes were never refused.
    let metrics = http.get(format!("{}/metrics", sb.queen_url())).send().await?.text().await?;
    let refused_nodes: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("apiary_heartbeats_received_total") && l.contains("rate_limited"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(refused_nodes as usize, limited, "only the flooder was limited");

    // Two stream clients fit; the third is told to come back later.
    let _a = SnapshotStream::connect(&sb.queen_url()).await?;
    let _b = SnapshotStream::connect(&sb.queen_url()).await?;
    let third = http.get(format!("{}/v1/heartbeats/stream", sb.queen_url())).send().await?;
    assert_eq!(third.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(third.headers().contains_key("retry-after"));
    assert_eq!(third.json::<ApiErrorBody>().await?.code, "too_many_streams");
    sb.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_given_several_queens_fail_over_to_one_that_answers() -> anyhow::Result<()> {
    // start() waits until every hive and worker is online: each first tried a queen that
    // refuses connections and moved on to the next in its list.
    let sb = Sandbox::builder().hives(2).workers_per_hive(1).dead_queen_first().start().await?;
    let hives = sb.client().hives().await?;
    assert!(hives.iter().all(|h| h.liveness == Liveness::Online), "{hives:?}");
    // The control channel follows the failover too: a deployment lands on a hive.
    let spec = json!({"name": "failover", "command": "/bin/sleep", "args": ["30"], "replicas": 1});
    let _: contract::DeploymentStatus = sb.client().post_json("/v1/deployments", &spec).await?;
    wait_until("the hive running the replica", Duration::from_secs(20), || async {
        let hives = sb.client().hives().await.ok()?;
        hives.iter().any(|h| !h.workers.is_empty()).then_some(())
    })
    .await?;
    sb.shutdown().await
}
