//! Live config reload of a real queen: editing its config file changes the snapshot
//! interval and the heartbeat interval it hands out; an invalid file changes nothing;
//! SIGHUP reloads too.

use std::path::Path;
use std::time::{Duration, Instant};

use queen::{QueenConfig, ServeArgs};
use sandbox::{SnapshotStream, TempDir, wait_until};
use tokio_util::sync::CancellationToken;

/// The gap between the next two snapshots on `stream`.
async fn gap(stream: &mut SnapshotStream) -> anyhow::Result<Duration> {
    stream.next(Duration::from_secs(5)).await?;
    let at = Instant::now();
    stream.next(Duration::from_secs(5)).await?;
    Ok(at.elapsed())
}

async fn reloads(base: &str, outcome: &str) -> anyhow::Result<u64> {
    let text = queen_client::http().get(format!("{base}/metrics")).send().await?.text().await?;
    let prefix = format!("apiary_config_reloads_total{{outcome=\"{outcome}\"}} ");
    Ok(text.lines().find_map(|l| l.strip_prefix(&prefix)).map(|v| v.trim().parse()).transpose()?.unwrap_or(0))
}

fn write(path: &Path, data_dir: &Path, body: &str) -> std::io::Result<()> {
    // Written beside and renamed over, the way config managers replace a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("data_dir = {:?}\n{body}", data_dir.display().to_string()))?;
    std::fs::rename(&tmp, path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_the_config_file_changes_a_running_queen() -> anyhow::Result<()> {
    let dir = TempDir::new("reload")?;
    let (path, data) = (dir.0.join("queen.toml"), dir.0.join("data"));
    write(&path, &data, "snapshot_interval = \"1s\"\nheartbeat_interval = \"2s\"\n")?;
    let config = QueenConfig::load(&ServeArgs { config: Some(path.clone()), ..Default::default() })?;
    let listener = lifecycle::bind("127.0.0.1:0".parse()?)?;
    let base = format!("http://{}", listener.local_addr()?);
    let stop = CancellationToken::new();
    let queen = tokio::spawn(queen::run(config, listener, stop.clone()));

    let mut stream = SnapshotStream::connect(&base).await?;
    let before = gap(&mut stream).await?;
    assert!(before >= Duration::from_millis(700), "a 1 s interval to start with: {before:?}");

    write(&path, &data, "snapshot_interval = \"100ms\"\nheartbeat_interval = \"500ms\"\n")?;
    let edited = Instant::now();
    let mut last = Instant::now();
    loop {
        stream.next(Duration::from_secs(5)).await?;
        let since_last = last.elapsed();
        last = Instant::now();
        if since_last < Duration::from_millis(300) {
            break;
        }
        assert!(edited.elapsed() < Duration::from_secs(3), "the new snapshot interval never took effect");
    }
    eprintln!("snapshot interval changed {:?} after the file was written", edited.elapsed());
    let beat = sandbox::samples::hive_beat("h1");
    let answer: contract::HeartbeatResponse =
        queen_client::http().post(format!("{base}/v1/hive-heartbeat")).json(&beat).send().await?.json().await?;
    assert_eq!(answer.next_interval_ms, 500, "nodes are told the new heartbeat interval");

    // Three problems at once: all refused together, and the running config stays.
    write(&path, &data, "snapshot_interval = \"1ms\"\nheartbeat_rate_limit = 0\nlog_level = \"=[\"\n")?;
    wait_until("the invalid file counted as rejected", Duration::from_secs(3), || async {
        (reloads(&base, "rejected").await.ok()? == 1).then_some(())
    })
    .await?;
    let after = gap(&mut stream).await?;
    assert!(after < Duration::from_millis(300), "still the last valid interval: {after:?}");
    assert!(
        QueenConfig::load(&ServeArgs { config: Some(path.clone()), ..Default::default() })
            .is_err_and(|e| e.problems.len() == 3)
    );

    // SIGHUP reloads the file as it is.
    write(&path, &data, "snapshot_interval = \"100ms\"\nheartbeat_interval = \"500ms\"\n")?;
    let applied = wait_until("the fixed file applied", Duration::from_secs(3), || async {
        let n = reloads(&base, "applied").await.ok()?;
        (n >= 2).then_some(n)
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await; // let any late file events land
    let applied = reloads(&base, "applied").await?.max(applied);
    nix::sys::signal::raise(nix::sys::signal::Signal::SIGHUP)?;
    wait_until("SIGHUP counted as a reload", Duration::from_secs(3), || async {
        (reloads(&base, "applied").await.ok()? == applied + 1).then_some(())
    })
    .await?;

    stop.cancel();
    queen.await??;
    Ok(())
}
