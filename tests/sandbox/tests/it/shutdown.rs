//! Cluster shutdown on an in-process cluster whose hives run real worker processes:
//! phase order, jobs across GATE, ACK failures with and without force, a worker that
//! ignores SIGTERM, dry run, a second request, and a queen restart midway.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use contract::{
    AckStatus, EventKind, NodeEvent, NodeKind, Phase, PhaseStatus, ShutdownAnswer, ShutdownState, ShutdownStatus,
};
use nix::sys::signal::kill;
use nix::unistd::Pid;
use queen_client::QueenClient;
use sandbox::{Sandbox, SnapshotStream, TempDir, wait_until};
use serde_json::{Value, json};
use time::OffsetDateTime;

const WAIT: Duration = Duration::from_secs(40);

async fn deploy(client: &QueenClient, name: &str, command: &str, args: &[&str], replicas: u32) -> anyhow::Result<()> {
    let spec = json!({"name": name, "command": command, "args": args, "replicas": replicas});
    client.post_json::<_, Value>("/v1/deployments", &spec).await?;
    Ok(())
}

async fn worker_bin() -> anyhow::Result<String> {
    Ok(tokio::task::spawn_blocking(sandbox::built_binaries).await??.join("worker").to_string_lossy().into_owned())
}

async fn start_shutdown(client: &QueenClient, body: Value) -> anyhow::Result<ShutdownState> {
    match client.post_json::<_, ShutdownAnswer>("/v1/cluster/shutdown", &body).await? {
        ShutdownAnswer::Started(s) => Ok(s),
        ShutdownAnswer::Plan(p) => anyhow::bail!("expected a start, got a plan: {p:?}"),
    }
}

/// Follows the snapshot stream, as the CLI does, until it ends with the queen; the
/// shutdown state of its last frame.
async fn follow(client: &QueenClient) -> anyhow::Result<ShutdownState> {
    let mut snapshots = std::pin::pin!(client.snapshots().await?);
    let mut last = None;
    let ended = tokio::time::timeout(WAIT, async {
        while let Some(Ok(s)) = futures_util::StreamExt::next(&mut snapshots).await {
            if s.shutdown.is_some() {
                last = s.shutdown;
            }
        }
    })
    .await;
    anyhow::ensure!(ended.is_ok(), "the queen's stream did not end: {last:?}");
    last.ok_or_else(|| anyhow::anyhow!("no shutdown state on the stream"))
}

/// Every event the stream carries, kept in order, until the stream ends.
fn record_events(url: String) -> Arc<Mutex<Vec<NodeEvent>>> {
    let seen = Arc::new(Mutex::new(Vec::<NodeEvent>::new()));
    let out = Arc::clone(&seen);
    tokio::spawn(async move {
        let Ok(mut stream) = SnapshotStream::connect(&url).await else { return };
        while let Ok(Some((_, s))) = stream.next(Duration::from_secs(10)).await {
            let mut seen = out.lock().unwrap_or_else(|p| p.into_inner());
            let newest = seen.last().map(|e| e.seq).unwrap_or(0);
            seen.extend(s.events.into_iter().filter(|e| e.seq > newest));
        }
    });
    seen
}

fn phase_of(reason: &str) -> Option<Phase> {
    Phase::ALL.into_iter().find(|p| reason.starts_with(p.name()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_shuts_down_in_order_without_losing_a_job() -> anyhow::Result<()> {
    let data = TempDir::new("shutdown")?;
    let sb = Sandbox::builder()
        .hives(3)
        .workers_per_hive(0)
        .heartbeat_interval(Duration::from_millis(300))
        .snapshot_interval(Duration::from_millis(100))
        .data_dir(data.0.clone())
        .storage_hooks(&["true"])
        .start()
        .await?;
    let client = sb.client();
    // Two replicas per hive, whatever the machine's load readings say at the moment: this
    // test counts what each hive's DRAIN stops (least_loaded follows CPU readings, which on
    // a busy machine differ by more than a replica's weight and gave 3/2/1).
    client.set_strategy(contract::PlacementStrategy::LeastWorkers).await?;
    deploy(&client, "web", &worker_bin().await?, &["--heartbeat-interval", "300ms"], 6).await?;
    let pids: Vec<u32> = wait_until("6 workers up, reported by their hives", WAIT, || async {
        let pids: Vec<u32> =
            client.hives().await.ok()?.iter().flat_map(|h| h.workers.iter().filter_map(|w| w.pid)).collect();
        let up = client.workers().await.ok()?.iter().filter(|w| w.available).count();
        (pids.len() == 6 && up == 6).then_some(pids)
    })
    .await?;
    let events = record_events(sb.queen_url());

    // A job loop: 6 at a time, 300 ms sleeps, recording when each was sent and how it ended.
    let log: Arc<Mutex<Vec<(OffsetDateTime, u16)>>> = Arc::default();
    let stop_jobs = tokio_util::sync::CancellationToken::new();
    let mut loops = Vec::new();
    for _ in 0..6 {
        let (log, stop, url) = (Arc::clone(&log), stop_jobs.clone(), format!("{}/v1/jobs", sb.queen_url()));
        loops.push(tokio::spawn(async move {
            let http = queen_client::http();
            while !stop.is_cancelled() {
                let sent = OffsetDateTime::now_utc();
                match http.post(&url).json(&json!({"kind": "sleep", "ms": 300})).send().await {
                    Ok(resp) => log.lock().unwrap_or_else(|p| p.into_inner()).push((sent, resp.status().as_u16())),
                    // The queen is gone (INFRA): nothing more to send.
                    Err(_) => break,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;

    let started = start_shutdown(&client, json!({"drain_deadline_ms": 5000, "phase_timeout_ms": 10000})).await?;
    assert_eq!(started.status, ShutdownStatus::Running);
    // A second request while one runs is refused.
    let second =
        queen_client::http().post(format!("{}/v1/cluster/shutdown", sb.queen_url())).json(&json!({})).send().await?;
    assert_eq!(second.status().as_u16(), 409);

    let last = follow(&client).await?;
    assert_eq!(last.status, ShutdownStatus::Completed, "the stream's last frame holds the end: {last:?}");
    wait_until("the queen gone", WAIT, || async { sb.queen_exited().then_some(()) }).await?;
    stop_jobs.cancel();
    for l in loops {
        l.await?;
    }
    eprintln!(
        "phases: {}",
        last.phases
            .iter()
            .map(|p| format!(
                "{} {:?}",
                p.phase.name(),
                p.started_at.zip(p.ended_at).map(|(a, b)| (b - a).whole_milliseconds())
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );

    // Every hive exited, every worker process is gone.
    wait_until("every hive exited", WAIT, || async { (sb.exited_hives().len() == 3).then_some(()) }).await?;
    assert!(pids.iter().all(|p| kill(Pid::from_raw(*p as i32), None).is_err()), "no worker process remains");

    // Phases in order, each ACKed by every hive in order.
    let events = events.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let started_phases: Vec<Phase> =
        events.iter().filter(|e| e.kind == EventKind::PhaseStarted).filter_map(|e| phase_of(&e.reason)).collect();
    assert_eq!(started_phases, Phase::ALL.to_vec(), "phases start in order");
    for hive in ["hive-0", "hive-1", "hive-2"] {
        let acked: Vec<Phase> = events
            .iter()
            .filter(|e| e.node == NodeKind::Hive && e.id.as_str() == hive && e.kind == EventKind::Acked)
            .filter_map(|e| phase_of(&e.reason))
            .collect();
        assert_eq!(acked, vec![Phase::Gate, Phase::Drain, Phase::Storage, Phase::Persist], "{hive} ACKs in order");
    }
    let drain = &last.phases[1];
    assert!(
        drain.hives.values().all(|h| h.status == AckStatus::Acked && h.detail.starts_with("stopped 2 workers")),
        "{drain:?}"
    );
    let storage = &last.phases[2];
    assert!(storage.hives.values().all(|h| h.detail == "true: ok"), "{storage:?}");
    assert!(data.0.join("final-state.json").is_file(), "PERSIST wrote the final state");

    // Jobs: all answered or refused; none sent after GATE completed was taken.
    let gate_done = last.phases[0].ended_at.expect("GATE ended");
    let log = log.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let answered = log.iter().filter(|(_, s)| *s == 200).count();
    let refused = log.iter().filter(|(_, s)| *s == 503).count();
    eprintln!("jobs: {answered} answered, {refused} refused, {} in all", log.len());
    assert!(answered > 0 && refused > 0, "the loop ran on both sides of GATE");
    assert_eq!(answered + refused, log.len(), "every job answered or refused, none lost: {log:?}");
    assert!(log.iter().all(|(sent, s)| *s != 200 || *sent < gate_done), "nothing sent after GATE ran");
    Ok(())
}

/// Heartbeats as a hive that never opens its control channel, so never ACKs.
fn silent_hive(queen: String, stop: tokio_util::sync::CancellationToken) {
    tokio::spawn(async move {
        let http = queen_client::http();
        let mut seq = 0;
        while !stop.is_cancelled() {
            seq += 1;
            let beat = json!({
                "id": "silent", "epoch": 1, "seq": seq, "address": "http://127.0.0.1:1", "hostname": "x",
                "version": "0", "status": "ready",
                "resources": {"cpu_percent": 1.0, "memory_used_bytes": 1, "memory_total_bytes": 2,
                              "disk_used_bytes": 1, "disk_total_bytes": 2, "load_average": {"one": 0.0, "five": 0.0, "fifteen": 0.0}},
                "capacity": {"max_workers": 0, "running_workers": 0}, "sent_at": "2026-11-24T12:00:00Z"
            });
            let _ = http.post(format!("{queen}/v1/hive-heartbeat")).json(&beat).send().await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

async fn wait_status(client: &QueenClient, status: ShutdownStatus) -> anyhow::Result<ShutdownState> {
    wait_until(&format!("shutdown {status:?}"), WAIT, || async {
        client.get_json::<ShutdownState>("/v1/cluster/shutdown").await.ok().filter(|s| s.status == status)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hive_that_never_acks_stops_the_sequence_unless_forced() -> anyhow::Result<()> {
    let sb =
        Sandbox::builder().hives(1).workers_per_hive(0).heartbeat_interval(Duration::from_millis(300)).start().await?;
    let client = sb.client();
    let silent = tokio_util::sync::CancellationToken::new();
    silent_hive(sb.queen_url(), silent.clone());
    wait_until("the silent hive known", WAIT, || async { client.hive("silent").await.ok() }).await?;

    // Dry run: a plan, and nothing changes.
    let plan = client.post_json::<_, ShutdownAnswer>("/v1/cluster/shutdown", &json!({"dry_run": true})).await?;
    let ShutdownAnswer::Plan(plan) = plan else { anyhow::bail!("dry run started a shutdown") };
    assert_eq!(plan.hives.len(), 2);
    assert_eq!(plan.phases, Phase::ALL.to_vec());
    assert!(client.get_json::<ShutdownState>("/v1/cluster/shutdown").await.is_err(), "no shutdown after a dry run");
    assert!(sb.snapshot().await?.shutdown.is_none());
    let deploy_ok = queen_client::http()
        .post(format!("{}/v1/deployments", sb.queen_url()))
        .json(&json!({"name": "still-open", "command": "true", "replicas": 0}))
        .send()
        .await?;
    assert_eq!(deploy_ok.status().as_u16(), 201, "the queen still takes work after a dry run");

    // Without force: stops at GATE, naming the hive.
    start_shutdown(&client, json!({"phase_timeout_ms": 1000, "drain_deadline_ms": 500})).await?;
    let failed = wait_status(&client, ShutdownStatus::Failed).await?;
    assert_eq!(failed.phases[0].status, PhaseStatus::Failed);
    assert_eq!(failed.phases[1].status, PhaseStatus::Pending, "the sequence stopped at GATE");
    assert!(failed.failure.starts_with("GATE: silent did not ACK"), "{}", failed.failure);
    assert_eq!(failed.phases[0].hives[&contract::NodeId::new("hive-0")?].status, AckStatus::Acked);
    let refused = queen_client::http()
        .post(format!("{}/v1/deployments", sb.queen_url()))
        .json(&json!({"name": "too-late", "command": "true", "replicas": 0}))
        .send()
        .await?;
    assert_eq!(refused.status().as_u16(), 503, "GATE holds after the failure");
    assert!(refused.headers().contains_key("retry-after"));
    let metrics = reqwest::get(format!("{}/metrics", sb.queen_url())).await?.text().await?;
    for needle in [
        "apiary_shutdown_ack_failures_total{phase=\"GATE\"} 1",
        "apiary_shutdown_phase_seconds_count{phase=\"GATE\"} 1",
    ] {
        assert!(metrics.contains(needle), "metrics lack {needle}:\n{metrics}");
    }

    // With force: every phase is forced past the silent hive and the queen exits.
    start_shutdown(&client, json!({"force": true, "phase_timeout_ms": 1000, "drain_deadline_ms": 500})).await?;
    wait_until("the queen gone after a forced shutdown", WAIT, || async { sb.queen_exited().then_some(()) }).await?;
    silent.cancel();
    assert_eq!(sb.exited_hives().len(), 1, "the real hive exited at INFRA");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_ignores_sigterm_is_killed_at_the_deadline_even_across_a_queen_restart() -> anyhow::Result<()> {
    let data = TempDir::new("stubborn")?;
    let mut sb = Sandbox::builder()
        .hives(1)
        .workers_per_hive(0)
        .heartbeat_interval(Duration::from_millis(300))
        .data_dir(data.0.clone())
        .start()
        .await?;
    let client = sb.client();
    deploy(&client, "stubborn", "sh", &["-c", "trap '' TERM; while :; do sleep 0.1; done"], 1).await?;
    let pid = wait_until("the stubborn worker running", WAIT, || async {
        client.hive("hive-0").await.ok()?.workers.iter().find_map(|w| w.pid)
    })
    .await?;

    start_shutdown(&client, json!({"drain_deadline_ms": 3000, "phase_timeout_ms": 10000})).await?;
    wait_until("DRAIN running", WAIT, || async {
        let s = client.get_json::<ShutdownState>("/v1/cluster/shutdown").await.ok()?;
        (s.phases[1].status == PhaseStatus::Running).then_some(())
    })
    .await?;
    // The queen dies in the middle of DRAIN and comes back: it resumes, it does not forget.
    let addr = sb.queen_addr();
    sb.kill_queen().await?;
    sb.restart_queen(addr)?;
    let client =
        wait_until("the restarted queen", WAIT, || async { client.snapshot().await.ok().map(|_| client.clone()) })
            .await?;
    let last = follow(&client).await?;
    assert_eq!(last.status, ShutdownStatus::Completed, "{last:?}");
    if let (Some(a), Some(b)) = (last.phases[1].started_at, last.phases[1].ended_at) {
        eprintln!("DRAIN with a 3 s deadline and a queen restart in it: {} ms", (b - a).whole_milliseconds());
    }
    let drain = &last.phases[1].hives[&contract::NodeId::new("hive-0")?];
    assert_eq!(drain.status, AckStatus::Acked);
    assert!(drain.detail.contains("killed at the deadline: stubborn-0"), "{}", drain.detail);
    assert!(kill(Pid::from_raw(pid as i32), None).is_err(), "the stubborn process is gone");
    Ok(())
}
