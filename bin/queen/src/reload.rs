//! Live configuration reload.
//!
//! The config file is watched through `notify` (inotify here), and SIGHUP reloads too.
//! Both go through [`crate::QueenConfig::load`], the same validation as startup: a file with
//! problems is refused whole, every problem is logged, `apiary_config_reloads_total
//! {outcome="rejected"}` counts it, and the running configuration stays as it was.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Queen;
use crate::metrics::OutcomeLabels;

/// Editors write a file in several steps (truncate, write, rename); changes closer
/// together than this are read once, after the last.
const SETTLE: Duration = Duration::from_millis(100);

/// Starts watching for reloads, if this queen's configuration came from flags or a file.
pub(crate) fn spawn(queen: &Arc<Queen>, tasks: &TaskTracker, stop: CancellationToken) -> anyhow::Result<()> {
    let config = queen.config();
    let Some(args) = &config.source else {
        return Ok(());
    };
    let (tx, rx) = mpsc::channel(1);
    let watcher = match &args.config {
        Some(path) => Some(watch_file(path, tx)?),
        None => None,
    };
    let hangup = signal(SignalKind::hangup())?;
    tasks.spawn(reload_loop(Arc::clone(queen), rx, hangup, watcher, stop));
    Ok(())
}

/// Watches the file's directory rather than the file: editors and config managers
/// replace a file by renaming a new one over it, which ends a watch on the old inode.
fn watch_file(path: &Path, tx: mpsc::Sender<()>) -> anyhow::Result<notify::RecommendedWatcher> {
    let path = std::path::absolute(path)?;
    let name = path.file_name().map(ToOwned::to_owned);
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_else(|| "/".into());
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        let ours = event.paths.iter().any(|p| p.file_name() == name.as_deref());
        if ours && matches!(event.kind, EventKind::Create(_) | EventKind::Modify(_)) {
            // Full means a reload is already pending; it will read this change too.
            let _ = tx.try_send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    tracing::info!(file = %path.display(), "watching the config file for changes");
    Ok(watcher)
}

async fn reload_loop(
    queen: Arc<Queen>,
    mut changed: mpsc::Receiver<()>,
    mut hangup: Signal,
    // Kept alive for as long as the loop runs; dropping it ends the watch.
    _watcher: Option<notify::RecommendedWatcher>,
    stop: CancellationToken,
) {
    loop {
        let why = tokio::select! {
            _ = stop.cancelled() => return,
            Some(()) = changed.recv() => "config file changed",
            Some(()) = hangup.recv() => "SIGHUP",
        };
        tokio::time::sleep(SETTLE).await;
        while changed.try_recv().is_ok() {}
        // A reload reads the file and may store a new strategy.
        if let Err(e) = queen.off_runtime(move |q| apply(q, why)).await {
            tracing::error!(error = %e, "config reload did not finish");
        }
    }
}

/// Reloads now, logging and counting the outcome.
fn apply(queen: &Queen, why: &str) {
    match queen.reload() {
        Ok(reload) => {
            queen.metrics.config_reloads.get_or_create(&OutcomeLabels { outcome: "applied" }).inc();
            if reload.applied.is_empty() {
                tracing::info!(why, "config reloaded: nothing changed that applies live");
            }
            for change in &reload.applied {
                tracing::info!(why, %change, "config reloaded");
            }
            if !reload.needs_restart.is_empty() {
                tracing::warn!(why, fields = ?reload.needs_restart, "changed in the config but only applied at a restart");
            }
        }
        Err(e) => {
            queen.metrics.config_reloads.get_or_create(&OutcomeLabels { outcome: "rejected" }).inc();
            for problem in &e.problems {
                tracing::error!(why, %problem, "config reload rejected; the running config stays");
            }
        }
    }
}
