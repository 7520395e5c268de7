//! The stream's other forms: `?delta=true` (a full snapshot, then only changes) rebuilds
//! exactly the snapshots the full stream sends, through joins, a kill and a removal;
//! `?detail=summary` carries the same counts without the per-node lists.

use std::collections::BTreeMap;
use std::time::Duration;

use contract::{NodeId, Snapshot, SnapshotDelta};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use sandbox::Sandbox;

type Frames = BTreeMap<u64, Snapshot>;

/// Reads `path` for `window`, folding each frame into a snapshot: `heartbeat` replaces,
/// `delta` applies. Returns the snapshot after each frame by seq, and how many deltas
/// (with changed, removed nodes) were applied.
async fn read(base: &str, path: &str, window: Duration) -> anyhow::Result<(Frames, usize, usize, usize)> {
    let resp = queen_client::http().get(format!("{base}{path}")).send().await?.error_for_status()?;
    let mut events = resp.bytes_stream().eventsource();
    let mut held: Option<Snapshot> = None;
    let (mut frames, mut deltas, mut changed, mut removed) = (Frames::new(), 0, 0, 0);
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, events.next()).await {
        let event = event.map_err(|e| anyhow::anyhow!("{e}"))?;
        match event.event.as_str() {
            "heartbeat" => held = Some(serde_json::from_str(&event.data)?),
            "delta" => {
                let delta: SnapshotDelta = serde_json::from_str(&event.data)?;
                let snapshot = held.as_mut().ok_or_else(|| anyhow::anyhow!("a delta before any snapshot"))?;
                snapshot.apply(&delta)?;
                deltas += 1;
                changed += delta.hives_changed.len() + delta.workers_changed.len();
                removed += delta.hives_removed.len() + delta.workers_removed.len();
            }
            _ => continue,
        }
        if let Some(s) = &held {
            frames.insert(s.seq, s.clone());
        }
    }
    Ok((frames, deltas, changed, removed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deltas_rebuild_the_full_snapshots_exactly() -> anyhow::Result<()> {
    let mut sb =
        Sandbox::builder().hives(3).workers_per_hive(2).snapshot_interval(Duration::from_millis(150)).start().await?;
    let base = sb.queen_url();
    let window = Duration::from_secs(6);
    let full = tokio::spawn(read_owned(base.clone(), "/v1/heartbeats/stream", window));
    let delta = tokio::spawn(read_owned(base.clone(), "/v1/heartbeats/stream?delta=true", window));
    let summary = tokio::spawn(read_owned(base.clone(), "/v1/heartbeats/stream?detail=summary", window));

    // Changes while both read: a join, a kill (liveness changes), a removal.
    tokio::time::sleep(Duration::from_millis(800)).await;
    sb.add_worker(&NodeId::new("hive-1")?, NodeId::new("late-worker")?)?;
    tokio::time::sleep(Duration::from_millis(800)).await;
    sb.kill_hive(&NodeId::new("hive-2")?).await?;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    sb.client().delete("/v1/hives/hive-2?force=true").await?;

    let (full, _, _, _) = full.await??;
    let (rebuilt, deltas, changed, removed) = delta.await??;
    let (summaries, _, _, _) = summary.await??;
    assert!(deltas >= 10, "only {deltas} deltas in {window:?}");
    assert!(changed > 0 && removed > 0, "the window saw changes ({changed}) and removals ({removed})");
    let mut compared = 0;
    for (seq, snapshot) in &rebuilt {
        if let Some(whole) = full.get(seq) {
            assert_eq!(snapshot, whole, "snapshot {seq} rebuilt from deltas differs from the one sent whole");
            compared += 1;
        }
    }
    assert!(compared >= 10, "only {compared} snapshots in both streams");

    let mut summarized = 0;
    for (seq, s) in &summaries {
        assert!(s.hives.is_empty() && s.workers.is_empty() && s.hive_ids.is_empty());
        if let Some(whole) = full.get(seq) {
            assert_eq!(
                (s.hives_online, s.workers_online, s.hives_total, s.events.len()),
                (whole.hives_online, whole.workers_online, whole.hives_total, whole.events.len())
            );
            summarized += 1;
        }
    }
    assert!(summarized >= 10);

    let refused =
        queen_client::http().get(format!("{base}/v1/heartbeats/stream?delta=true&detail=summary")).send().await?;
    assert_eq!(refused.status().as_u16(), 400);
    sb.shutdown().await
}

async fn read_owned(
    base: String,
    path: &'static str,
    window: Duration,
) -> anyhow::Result<(Frames, usize, usize, usize)> {
    read(&base, path, window).await
}
