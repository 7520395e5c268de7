//! `queen top` in a real pseudo-terminal (tmux): it shows the hives and their workers,
//! follows a hive going offline, and leaves on `q`.

use std::process::Command;
use std::time::Duration;

use contract::NodeId;
use sandbox::{Sandbox, wait_until};

/// A private tmux server, killed however the test ends.
struct Tmux(String);

impl Tmux {
    fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("tmux").arg("-L").arg(&self.0).args(args).output()?;
        anyhow::ensure!(out.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn screen(&self) -> Option<String> {
        self.run(&["capture-pane", "-p", "-t", "top"]).ok()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").arg("-L").arg(&self.0).arg("kill-server").output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queen_top_shows_the_hives_live_and_a_hive_going_offline() -> anyhow::Result<()> {
    anyhow::ensure!(Command::new("tmux").arg("-V").output().is_ok(), "tmux is missing (cargo xtask test installs it)");
    let dir = tokio::task::spawn_blocking(sandbox::built_binaries).await??;
    let mut sb = Sandbox::builder()
        .hives(2)
        .workers_per_hive(1)
        .heartbeat_interval(Duration::from_millis(300))
        .snapshot_interval(Duration::from_millis(200))
        .start()
        .await?;
    let tmux = Tmux(format!("apiary-top-{}", std::process::id()));
    let command = format!("{} top --queen {}", dir.join("queen").display(), sb.queen_url());
    tmux.run(&["new-session", "-d", "-s", "top", "-x", "160", "-y", "45", &command])?;

    let wait = Duration::from_secs(20);
    wait_until("top showing both hives, live", wait, || async {
        let s = tmux.screen()?;
        (s.contains("hive-0") && s.contains("hive-1") && s.contains("live")).then_some(())
    })
    .await?;
    wait_until("top showing the workers with their hive", wait, || async {
        let s = tmux.screen()?;
        s.lines().any(|l| l.contains("worker-1-0") && l.contains("hive-1") && l.contains("ready")).then_some(())
    })
    .await?;

    sb.kill_hive(&NodeId::new("hive-0")?).await?;
    let screen = wait_until("top showing hive-0 offline", wait, || async {
        let s = tmux.screen()?;
        s.lines().any(|l| l.contains("hive-0") && l.contains("offline")).then_some(s)
    })
    .await?;
    assert!(screen.lines().any(|l| l.contains("hive-1") && l.contains("online")), "{screen}");

    tmux.run(&["send-keys", "-t", "top", "q"])?;
    wait_until("top gone after q", wait, || async { tmux.run(&["has-session", "-t", "top"]).is_err().then_some(()) })
        .await?;
    sb.shutdown().await
}
