//! Draining one hive: work moves before it stops, under load, without hanging; the hive
//! stays ineligible across restarts after an operator's drain, not after its own; removal of offline hives.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use contract::EventKind;
use contract::{DrainStatus, HiveSummary, NodeId};
use queen_client::QueenClient;
use sandbox::{Sandbox, TempDir, wait_until};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(40);

async fn eligibility(sb: &Sandbox, hive: &str, eligible: bool) -> anyhow::Result<()> {
    let resp = queen_client::http()
        .put(format!("{}/v1/hives/{hive}/eligibility", sb.queen_url()))
        .json(&json!({"eligible": eligible}))
        .send()
        .await?;
    anyhow::ensure!(resp.status().is_success(), "eligibility: {}", resp.status());
    Ok(())
}

async fn deploy_on_hive0(sb: &Sandbox, client: &QueenClient, replicas: u32, others: &[&str]) -> anyhow::Result<()> {
    for h in others {
        eligibility(sb, h, false).await?;
    }
    let worker = tokio::task::spawn_blocking(sandbox::built_binaries).await??.join("worker");
    let spec = json!({"name": "web", "command": worker.to_string_lossy(), "args": ["--heartbeat-interval", "300ms"], "replicas": replicas});
    client.post_json::<_, Value>("/v1/deployments", &spec).await?;
    for h in others {
        eligibility(sb, h, true).await?;
    }
    wait_until("every replica up on hive-0", WAIT, || async {
        let up = client.workers().await.ok()?.iter().filter(|w| w.available && w.hive_id.as_str() == "hive-0").count();
        (up == replicas as usize).then_some(())
    })
    .await
}

async fn hive(client: &QueenClient, id: &str) -> anyhow::Result<HiveSummary> {
    Ok(client.hive(id).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_moves_work_first_under_load_and_the_hive_stays_ineligible() -> anyhow::Result<()> {
    let data = TempDir::new("drain")?;
    let mut sb = Sandbox::builder()
        .hives(3)
        .workers_per_hive(0)
        .heartbeat_interval(Duration::from_millis(300))
        .snapshot_interval(Duration::from_millis(200))
        .data_dir(data.0.clone())
        .start()
        .await?;
    let client = sb.client();
    deploy_on_hive0(&sb, &client, 4, &["hive-1", "hive-2"]).await?;

    // Steady load, and a watch on how many replicas can take work.
    let stop = tokio_util::sync::CancellationToken::new();
    let failures: Arc<Mutex<Vec<u16>>> = Arc::default();
    let answered: Arc<Mutex<u32>> = Arc::default();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (stop, failures, answered, url) =
            (stop.clone(), Arc::clone(&failures), Arc::clone(&answered), format!("{}/v1/jobs", sb.queen_url()));
        tasks.push(tokio::spawn(async move {
            let http = queen_client::http();
            while !stop.is_cancelled() {
                let status = http
                    .post(&url)
                    .json(&json!({"kind": "sleep", "ms": 50}))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                if status == 200 {
                    *answered.lock().unwrap_or_else(|p| p.into_inner()) += 1;
                } else {
                    failures.lock().unwrap_or_else(|p| p.into_inner()).push(status);
                }
            }
        }));
    }
    let min_available: Arc<Mutex<usize>> = Arc::new(Mutex::new(usize::MAX));
    {
        let (stop, min_available, client) = (stop.clone(), Arc::clone(&min_available), client.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.is_cancelled() {
                if let Ok(w) = client.workers().await {
                    // Serving: up and ready or busy (a busy one is still taking its jobs).
                    let n = w
                        .iter()
                        .filter(|w| {
                            w.liveness == contract::Liveness::Online
                                && matches!(w.status, contract::WorkerStatus::Ready | contract::WorkerStatus::Busy)
                        })
                        .count();
                    let mut m = min_available.lock().unwrap_or_else(|p| p.into_inner());
                    *m = (*m).min(n);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = std::time::Instant::now();
    let drain = client.drain(&NodeId::new("hive-0")?, Some(Duration::from_secs(30))).await?;
    assert!(!drain.done);
    assert!(!hive(&client, "hive-0").await?.eligible, "ineligible at once");
    let done: DrainStatus = wait_until("the drain done", WAIT, || async {
        client.drain_status(&NodeId::new("hive-0").ok()?).await.ok().filter(|d| d.done)
    })
    .await?;
    let took = started.elapsed();
    stop.cancel();
    for t in tasks {
        t.await?;
    }
    eprintln!(
        "drain of 4 replicas: {} ms; {} jobs answered meanwhile",
        took.as_millis(),
        answered.lock().map(|a| *a).unwrap_or(0)
    );
    assert_eq!((done.moved, done.left, done.cancelled), (4, 0, false), "{done:?}");
    assert_eq!(done.replicas.values().filter(|s| *s == "moved").count(), 4, "{done:?}");
    let stats: contract::ClusterStats = client.get_json("/v1/cluster/stats").await?;
    assert_eq!((stats.hives_eligible, stats.hives_ineligible, stats.assigned), (2, 1, 4), "{stats:?}");
    assert!(stats.jobs_routed_total > 0);
    assert!(done.notes.is_empty(), "{done:?}");
    let failures = failures.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(failures.is_empty(), "jobs failed during the drain: {failures:?}");
    let min = *min_available.lock().unwrap_or_else(|p| p.into_inner());
    assert!(min >= 4, "a new replica was serving before each old one stopped (lowest count seen: {min})");
    let workers = client.workers().await?;
    let up_elsewhere = workers.iter().filter(|w| w.available && w.hive_id.as_str() != "hive-0").count();
    assert_eq!(up_elsewhere, 4);
    assert!(hive(&client, "hive-0").await?.workers.is_empty(), "hive-0 runs nothing");

    // Still ineligible after the hive restarts, and after the queen restarts.
    let hive0 = NodeId::new("hive-0")?;
    sb.stop_hive(&hive0).await?;
    sb.add_hive(hive0.clone())?;
    wait_until("hive-0 back", WAIT, || async {
        hive(&client, "hive-0").await.ok().filter(|h| h.epoch.0 > 0 && h.liveness == contract::Liveness::Online)
    })
    .await?;
    assert!(!hive(&client, "hive-0").await?.eligible);
    let addr = sb.queen_addr();
    sb.kill_queen().await?;
    sb.restart_queen(addr)?;
    let h = wait_until("hive-0 seen by the new queen", WAIT, || async { hive(&client, "hive-0").await.ok() }).await?;
    assert!(!h.eligible, "ineligible survives a queen restart");
    let after = client.drain_status(&hive0).await?;
    assert!(after.done && after.moved == done.moved, "the drain's record survives a queen restart: {after:?}");
    sb.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_with_nowhere_to_go_says_so_at_once_and_stops_at_the_deadline() -> anyhow::Result<()> {
    let sb =
        Sandbox::builder().hives(2).workers_per_hive(0).heartbeat_interval(Duration::from_millis(300)).start().await?;
    let client = sb.client();
    deploy_on_hive0(&sb, &client, 2, &["hive-1"]).await?;
    eligibility(&sb, "hive-1", false).await?;
    let hive0 = NodeId::new("hive-0")?;
    let started = std::time::Instant::now();
    client.drain(&hive0, Some(Duration::from_millis(1500))).await?;
    let stuck = wait_until("the drain saying it cannot move", Duration::from_secs(5), || async {
        client.drain_status(&hive0).await.ok().filter(|d| d.stuck())
    })
    .await?;
    assert!(started.elapsed() < Duration::from_millis(1500), "said before the deadline");
    assert!(stuck.notes.iter().any(|n| n.starts_with("cannot move web-")), "{stuck:?}");
    let done = wait_until("the drain ended at its deadline", WAIT, || async {
        client.drain_status(&hive0).await.ok().filter(|d| d.done)
    })
    .await?;
    assert!(done.notes.iter().any(|n| n.ends_with("stopped at the deadline without a new home")), "{done:?}");
    wait_until("hive-0's workers stopped", WAIT, || async {
        let w = client.workers().await.ok()?;
        w.iter().all(|w| w.liveness == contract::Liveness::Stopped).then_some(())
    })
    .await?;
    sb.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_hive_first_and_drains_can_be_cancelled_and_hives_removed() -> anyhow::Result<()> {
    let mut sb = Sandbox::builder()
        .hives(2)
        .workers_per_hive(0)
        .heartbeat_interval(Duration::from_millis(300))
        .drain_on_shutdown(Duration::from_secs(20))
        .start()
        .await?;
    let client = sb.client();
    deploy_on_hive0(&sb, &client, 2, &["hive-1"]).await?;

    // SIGTERM (a graceful stop): the hive has its work moved before it stops.
    sb.stop_hive(&NodeId::new("hive-0")?).await?;
    let workers = client.workers().await?;
    let on_hive1 = workers.iter().filter(|w| w.available && w.hive_id.as_str() == "hive-1").count();
    assert_eq!(on_hive1, 2, "both replicas run on hive-1 by the time hive-0 has stopped: {workers:?}");
    let d = client.drain_status(&NodeId::new("hive-0")?).await?;
    assert_eq!((d.done, d.moved), (true, 2));

    // Removal: refused while online, allowed once gone.
    let http = queen_client::http();
    let online = http.delete(format!("{}/v1/hives/hive-1", sb.queen_url())).send().await?;
    assert_eq!(online.status().as_u16(), 409);
    let gone = http.delete(format!("{}/v1/hives/hive-0", sb.queen_url())).send().await?;
    assert_eq!(gone.status().as_u16(), 204);
    assert!(client.hive("hive-0").await.is_err(), "forgotten");
    wait_until("the removal in the stream's event log", WAIT, || async {
        let events = sb.snapshot().await.ok()?.events;
        events.iter().any(|e| e.id.as_str() == "hive-0" && e.kind == contract::EventKind::Removed).then_some(())
    })
    .await?;

    // Cancel: a drain with nowhere to go, cancelled, ends at once and leaves the work.
    let hive1 = NodeId::new("hive-1")?;
    client.drain(&hive1, Some(Duration::from_secs(60))).await?;
    let cancelled: DrainStatus =
        http.delete(format!("{}/v1/hives/hive-1/drain", sb.queen_url())).send().await?.json().await?;
    assert!(cancelled.done && cancelled.cancelled);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        client.workers().await?.iter().filter(|w| w.available).count(),
        2,
        "nothing stopped by a cancelled drain"
    );
    sb.shutdown().await
}

/// A rolling restart: each hive in turn gets SIGTERM (it drains itself first) and comes
/// back. Every hive is eligible afterwards and new work is placed; an operator's drain of
/// one, by contrast, survives its restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_the_hives_leaves_every_hive_eligible() -> anyhow::Result<()> {
    let mut sb = Sandbox::builder()
        .hives(2)
        .workers_per_hive(0)
        .heartbeat_interval(Duration::from_millis(300))
        .drain_on_shutdown(Duration::from_secs(10))
        .start()
        .await?;
    let client = sb.client();
    deploy_on_hive0(&sb, &client, 2, &["hive-1"]).await?;
    for name in ["hive-0", "hive-1"] {
        let id = NodeId::new(name)?;
        let before = hive(&client, name).await?.epoch;
        sb.stop_hive(&id).await?;
        let drain = client.drain_status(&id).await?;
        assert!(drain.done && drain.on_shutdown, "{name} drained itself on the way down: {drain:?}");
        assert_eq!(drain.moved, 2, "{name}'s replicas moved to the hive that came back before it: {drain:?}");
        let away = hive(&client, name).await?;
        assert!(!away.eligible, "{name} takes nothing new while it is away");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let away = hive(&client, name).await?;
        assert_eq!(away.liveness, contract::Liveness::Stopped, "{name} said goodbye: stopped, not offline");
        sb.add_hive(id.clone())?;
        wait_until(&format!("{name} back, a new process, eligible"), WAIT, || async {
            let h = hive(&client, name).await.ok()?;
            (h.epoch > before && h.available && h.eligible).then_some(())
        })
        .await?;
    }
    for name in ["hive-0", "hive-1"] {
        // A hive draining itself keeps beating (and keeps its replicas) until its work runs
        // elsewhere: silence there would be a false death.
        let silent: Vec<String> = client
            .hive_events(name)
            .await?
            .iter()
            .filter(|e| matches!(e.kind, EventKind::Suspect | EventKind::Offline))
            .map(|e| e.reason.clone())
            .collect();
        assert!(silent.is_empty(), "{name} went silent while draining itself: {silent:?}");
    }
    let stats: contract::ClusterStats = client.get_json("/v1/cluster/stats").await?;
    assert_eq!((stats.hives_eligible, stats.hives_ineligible), (2, 0), "{stats:?}");
    // Placement goes on: a scale-up lands on both hives.
    client.scale("web", 4).await?;
    wait_until("four replicas up", WAIT, || async {
        (client.workers().await.ok()?.iter().filter(|w| w.available).count() == 4).then_some(())
    })
    .await?;

    // An operator's drain is a cordon: the hive stays ineligible across its restart.
    let hive1 = NodeId::new("hive-1")?;
    client.drain(&hive1, Some(Duration::from_secs(10))).await?;
    let before = hive(&client, "hive-1").await?.epoch;
    sb.stop_hive(&hive1).await?;
    sb.add_hive(hive1.clone())?;
    let back = wait_until("hive-1 back", WAIT, || async {
        hive(&client, "hive-1").await.ok().filter(|h| h.epoch > before && h.available)
    })
    .await?;
    assert!(!back.eligible, "an operator's drain outlives the restart");
    sb.shutdown().await
}
