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
    let sb = Sandbox::fast_hives(1).start().await?;
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
    let sb = Sandbox::fast_hives(1).start().await?;
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
    let sb = Sandbox::fast_hives(1).start().await?;
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

const CLUSTER: &str = "cluster-secret";
const ADMIN: &str = "admin-secret";
const READ: &str = "read-secret";

async fn read_logs(client: &QueenClient, replica: &str, query: contract::LogQuery) -> anyhow::Result<String> {
    let answer = client.logs(replica, &query).await?;
    Ok(String::from_utf8_lossy(&answer.bytes().await?).into_owned())
}

/// A plain shell program's stdout and stderr, read through the queen: the instance running
/// now, the one before its crash (`previous`), the last lines, and what it writes next. The
/// hive holds a node token; the queen presents it; nobody else reads a hive's logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicas_output_is_kept_and_read_through_the_queen() -> anyhow::Result<()> {
    let sb = Sandbox::fast_hives(1).tokens(CLUSTER, ADMIN, READ).node_tokens().start().await?;
    let client = sb.client();
    let dir = TempDir::new("logs")?;
    let count = dir.0.join("count");
    // The first instance says its piece on both streams and crashes; the second stays,
    // ticking.
    let script = format!(
        "n=$(( $(cat {c} 2>/dev/null || echo 0) + 1 )); echo $n > {c}; echo \"instance $n\"; echo \"oops $n\" >&2; \
         if [ $n -lt 2 ]; then sleep 0.3; exit 3; fi; while :; do echo tick; sleep 0.1; done",
        c = count.display()
    );
    let spec = json!({ "name": "chatty", "command": "sh", "args": ["-c", script], "replicas": 1 });
    client.post_json::<_, DeploymentStatus>("/v1/deployments", &spec).await?;
    wait_until("the second instance runs", WAIT, || async {
        let a = status(&client, "chatty").await?.assignments.into_iter().next()?;
        (a.restarts == 1 && a.process == Some(ProcessState::Running)).then_some(())
    })
    .await?;
    let q = contract::LogQuery::default;
    let now = wait_until("it ticks", WAIT, || async {
        read_logs(&client, "chatty-0", q()).await.ok().filter(|t| t.contains("tick\ntick\n"))
    })
    .await?;
    assert!(now.starts_with("instance 2\ntick\n"), "{now:?}");
    let stderr = contract::LogQuery { stream: contract::LogStream::Stderr, ..q() };
    assert_eq!(read_logs(&client, "chatty-0", stderr.clone()).await?, "oops 2\n");
    let previous = contract::LogQuery { previous: true, ..q() };
    assert_eq!(read_logs(&client, "chatty-0", previous).await?, "instance 1\n", "what it said before the crash");
    let before = contract::LogQuery { previous: true, ..stderr };
    assert_eq!(read_logs(&client, "chatty-0", before).await?, "oops 1\n");
    assert_eq!(read_logs(&client, "chatty-0", contract::LogQuery { tail: Some(1), ..q() }).await?, "tick\n");
    let stamped = read_logs(&client, "chatty-0", contract::LogQuery { tail: Some(1), timestamps: true, ..q() }).await?;
    assert!(stamped.ends_with("Z tick\n") && stamped.starts_with("20"), "{stamped:?}");

    // A follow: the newest line, then what comes next, as it comes.
    let follow = contract::LogQuery { tail: Some(1), follow: true, ..q() };
    let mut answer = client.logs("chatty-0", &follow).await?;
    let mut seen = Vec::new();
    let more = tokio::time::timeout(WAIT, async {
        while seen.iter().filter(|b| **b == b'\n').count() < 4 {
            match answer.chunk().await? {
                Some(chunk) => seen.extend_from_slice(&chunk),
                None => anyhow::bail!("the follow ended"),
            }
        }
        anyhow::Ok(())
    })
    .await;
    more??;
    assert!(seen.starts_with(b"tick\ntick\ntick\ntick\n"), "{:?}", String::from_utf8_lossy(&seen));
    drop(answer);

    // Logs are an admin read; a hive gives them to the queen only.
    let logs_url = format!("{}/v1/replicas/chatty-0/logs", sb.queen_url());
    let as_reader = queen_client::http().get(&logs_url).bearer_auth(READ).send().await?;
    assert_eq!(as_reader.status().as_u16(), 403);
    let hive = sb.hive_url(&contract::NodeId::sanitized("hive-0")).unwrap_or_default();
    for token in [None, Some(CLUSTER), Some(ADMIN)] {
        let mut direct = queen_client::http().get(format!("{hive}/v1/logs/chatty-0"));
        if let Some(t) = token {
            direct = direct.bearer_auth(t);
        }
        assert_eq!(direct.send().await?.status().as_u16(), 401, "straight to the hive with {token:?}");
    }
    let missing = client.logs("nobody-0", &q()).await.map(|_| ()).expect_err("no such replica");
    assert!(matches!(missing, queen_client::ClientError::Api { status: 404, .. }), "{missing:?}");

    // The command line, as a script would use it.
    let queen = tokio::task::spawn_blocking(sandbox::built_binaries).await??.join("queen");
    let out = tokio::process::Command::new(queen)
        .args(["logs", "chatty-0", "--previous", "--queen", &sb.queen_url(), "--token", ADMIN])
        .output()
        .await?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "instance 1\n");
    sb.shutdown().await
}

/// A hive offers its CPUs and memory; a replica asking more than any hive offers stays
/// pending, one that fits is placed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_asking_more_than_any_hive_offers_is_pending() -> anyhow::Result<()> {
    let sb = Sandbox::fast_hives(1).start().await?;
    let client = sb.client();
    let hive = wait_until("the hive says what it offers", WAIT, || async {
        client
            .hives()
            .await
            .ok()?
            .into_iter()
            .next()
            .filter(|h| h.capacity.memory_bytes > 0 && h.capacity.cpu_millis >= 1000)
    })
    .await?;
    let huge = json!({
        "name": "huge", "command": "sleep", "args": ["600"], "replicas": 1,
        "resources": { "memory_bytes": hive.capacity.memory_bytes + (1 << 30) },
    });
    let small = json!({
        "name": "small", "command": "sleep", "args": ["600"], "replicas": 1,
        "resources": { "cpu_millis": 100, "memory_bytes": 64 << 20 },
    });
    client.post_json::<_, DeploymentStatus>("/v1/deployments", &huge).await?;
    client.post_json::<_, DeploymentStatus>("/v1/deployments", &small).await?;
    wait_until("the small one runs", WAIT, || async { (status(&client, "small").await?.running == 1).then_some(()) })
        .await?;
    let d = status(&client, "huge").await.ok_or_else(|| anyhow::anyhow!("huge"))?;
    assert_eq!(d.assignments[0].state, contract::AssignmentState::Pending, "{d:?}");
    assert_eq!(d.running, 0);
    sb.shutdown().await
}
