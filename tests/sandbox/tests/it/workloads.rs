//! What a replica gets from its hive beside a place to run: health probes (a hung replica
//! restarted, an unready one given no jobs), plain programs as replicas (rolled out like
//! workers), and its output kept and read through the queen.

use std::time::Duration;

use contract::{DeploymentStatus, ProcessState, RolloutState};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use queen_client::QueenClient;
use sandbox::{Sandbox, TempDir, wait_until};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

async fn one_fast_hive() -> anyhow::Result<Sandbox> {
    Sandbox::builder()
        .hives(1)
        .workers_per_hive(0)
        .heartbeat_interval(Duration::from_millis(300))
        .snapshot_interval(Duration::from_millis(300))
        .start()
        .await
}

async fn worker_bin() -> anyhow::Result<String> {
    let bin = tokio::task::spawn_blocking(sandbox::built_binaries).await??.join("worker");
    Ok(bin.to_string_lossy().into_owned())
}

async fn status(client: &QueenClient, name: &str) -> Option<DeploymentStatus> {
    client.get_json(&format!("/v1/deployments/{name}")).await.ok()
}

/// A replica stopped with SIGSTOP keeps its port and its process but answers nothing: only
/// its liveness probe can tell, and it restarts it, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_replica_is_restarted_by_its_liveness_probe() -> anyhow::Result<()> {
    let sb = one_fast_hive().await?;
    let client = sb.client();
    let spec = json!({
        "name": "web",
        "command": worker_bin().await?,
        "args": ["--heartbeat-interval", "300ms"],
        "replicas": 1,
        "liveness": { "http": "/healthz", "interval_ms": 300, "timeout_ms": 200, "failures": 2 },
    });
    client.post_json::<_, DeploymentStatus>("/v1/deployments", &spec).await?;
    let first = wait_until("the replica runs and passes its probe", WAIT, || async {
        let d = status(&client, "web").await?;
        d.assignments.first().filter(|a| a.ready == Some(true) && a.probe.is_empty()).and_then(|a| a.pid)
    })
    .await?;
    kill(Pid::from_raw(first as i32), Signal::SIGSTOP)?;
    let restarted = wait_until("its liveness probe restarts it", WAIT, || async {
        let d = status(&client, "web").await?;
        let a = d.assignments.into_iter().next()?;
        (a.restarts >= 1 && a.process == Some(ProcessState::Running) && a.pid.is_some_and(|p| p != first)).then_some(a)
    })
    .await?;
    assert!(
        restarted.last_exit.starts_with("liveness probe failed 2 times: GET /healthz: no answer in 200 ms"),
        "{}",
        restarted.last_exit
    );
    assert!(kill(Pid::from_raw(first as i32), None).is_err(), "the hung instance is gone");
    wait_until("the new instance passes its probe", WAIT, || async {
        let a = status(&client, "web").await?.assignments.into_iter().next()?;
        (a.ready == Some(true) && a.probe.is_empty()).then_some(())
    })
    .await?;
    sb.shutdown().await
}

/// While its readiness probe fails, a worker that heartbeats as available gets no job; once
/// it passes, jobs flow again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unready_replica_gets_no_jobs() -> anyhow::Result<()> {
    let sb = one_fast_hive().await?;
    let client = sb.client();
    let dir = TempDir::new("readiness")?;
    let flag = dir.0.join("unready");
    std::fs::write(&flag, "")?;
    let spec = json!({
        "name": "web",
        "command": worker_bin().await?,
        "args": ["--heartbeat-interval", "300ms"],
        "replicas": 2,
        "readiness": { "exec": ["sh", "-c", format!("test ! -e {}", flag.display())], "interval_ms": 200, "failures": 1 },
    });
    client.post_json::<_, DeploymentStatus>("/v1/deployments", &spec).await?;
    let job = || async {
        let url = format!("{}/v1/jobs?deployment=web", sb.queen_url());
        let body = json!({"kind": "sha256", "input": "ready?", "rounds": 1});
        anyhow::Ok(queen_client::http().post(url).json(&body).send().await?.status().as_u16())
    };
    wait_until("both workers heartbeat, both unready", WAIT, || async {
        let up = client.workers().await.ok()?.iter().filter(|w| w.available).count();
        let d = status(&client, "web").await?;
        (up == 2 && d.assignments.iter().all(|a| a.ready == Some(false) && a.probe.starts_with("readiness: sh")))
            .then_some(())
    })
    .await?;
    for _ in 0..5 {
        assert_eq!(job().await?, 503, "no ready worker: nothing runs");
    }
    std::fs::remove_file(&flag)?;
    wait_until("ready again", WAIT, || async {
        let d = status(&client, "web").await?;
        d.assignments.iter().all(|a| a.ready == Some(true)).then_some(())
    })
    .await?;
    wait_until("jobs run", WAIT, || async { (job().await.ok()? == 200).then_some(()) }).await?;
    sb.shutdown().await
}

/// A program that knows nothing of Apiary (a shell loop) is a replica like a worker: it
/// runs, counts as running, and a change of its arguments rolls out to every replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_program_rolls_out_like_a_worker() -> anyhow::Result<()> {
    let sb = one_fast_hive().await?;
    let client = sb.client();
    let spec = json!({
        "name": "loop",
        "command": "sh",
        "args": ["-c", "while :; do sleep 1; done", "v1"],
        "replicas": 2,
        "update": { "max_parallel": 2, "min_healthy_ms": 200, "progress_deadline_ms": 20000 },
    });
    client.post_json::<_, DeploymentStatus>("/v1/deployments", &spec).await?;
    wait_until("both run", WAIT, || async { (status(&client, "loop").await?.running == 2).then_some(()) }).await?;
    let patch = json!({ "args": ["-c", "while :; do sleep 1; done", "v2"] });
    let _: DeploymentStatus = client.send_json(reqwest::Method::PATCH, "/v1/deployments/loop", &patch).await?;
    let done = wait_until("the new arguments on both", WAIT, || async {
        let d = status(&client, "loop").await?;
        let rolled = d.rollout.as_ref().is_some_and(|r| r.state == RolloutState::Done);
        (rolled && d.assignments.iter().all(|a| a.version == 1 && a.retiring.is_none())).then_some(d)
    })
    .await?;
    assert_eq!(done.running, 2);
    sb.shutdown().await
}
