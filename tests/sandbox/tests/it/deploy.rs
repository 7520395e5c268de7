//! Deployments on an in-process cluster whose hives start the real `worker` binary as
//! child processes: placement, restart after `kill -9`, re-placement when a hive dies,
//! no duplicates when it returns, durability across a queen restart, job routing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use contract::{Assignment, AssignmentState, DeploymentStatus, EventKind, NodeId, ProcessState};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use queen_client::QueenClient;
use sandbox::{Sandbox, TempDir, wait_until};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);
const FAST: &str = "300ms";

async fn deploy(client: &QueenClient, replicas: u32) -> anyhow::Result<DeploymentStatus> {
    let bin = tokio::task::spawn_blocking(sandbox::built_binaries).await??.join("worker");
    let spec = json!({
        "name": "web",
        "command": bin.to_string_lossy(),
        "args": ["--heartbeat-interval", FAST],
        "replicas": replicas,
    });
    Ok(client.post_json("/v1/deployments", &spec).await?)
}

/// Workers the queen sees up, by name → hive.
async fn running(client: &QueenClient) -> anyhow::Result<BTreeMap<String, String>> {
    Ok(client
        .workers()
        .await?
        .into_iter()
        .filter(|w| w.liveness.is_up())
        .map(|w| (w.id.to_string(), w.hive_id.to_string()))
        .collect())
}

async fn assignments(client: &QueenClient) -> anyhow::Result<Vec<Assignment>> {
    Ok(client.get_json("/v1/assignments").await?)
}

/// The placement alone, without what the hives report live of each process.
fn placed(list: Vec<Assignment>) -> Vec<Assignment> {
    let report = |a: Assignment| Assignment {
        process: None,
        last_exit: String::new(),
        restarts: 0,
        pid: None,
        ready: None,
        probe: String::new(),
        ..a
    };
    list.into_iter().map(report).collect()
}

fn alive(pid: u32) -> bool {
    kill(Pid::from_raw(pid as i32), None).is_ok()
}

async fn wait_running(client: &QueenClient, n: usize, what: &str) -> anyhow::Result<BTreeMap<String, String>> {
    wait_until(what, WAIT, || async { running(client).await.ok().filter(|r| r.len() == n) }).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_are_placed_restarted_and_moved_when_a_hive_dies() -> anyhow::Result<()> {
    let mut sb = Sandbox::builder()
        .hives(3)
        .workers_per_hive(0)
        .heartbeat_interval(Duration::from_millis(300))
        .snapshot_interval(Duration::from_millis(300))
        .orphan_grace(Duration::from_millis(500))
        .start()
        .await?;
    let client = sb.client();
    let put = queen_client::http()
        .put(format!("{}/v1/placement/strategy", sb.queen_url()))
        .json(&json!({"strategy": "least_workers"}))
        .send()
        .await?;
    assert!(put.status().is_success());

    let created = deploy(&client, 6).await?;
    assert_eq!(created.assignments.len(), 6);
    let per_hive = |a: &[Assignment]| {
        let mut m: BTreeMap<String, usize> = BTreeMap::new();
        for x in a {
            *m.entry(x.hive.as_ref().map(|h| h.to_string()).unwrap_or_default()).or_default() += 1;
        }
        m
    };
    assert_eq!(
        per_hive(&created.assignments).values().copied().collect::<Vec<_>>(),
        [2, 2, 2],
        "least_workers spreads evenly"
    );
    let up = wait_running(&client, 6, "6 replicas heartbeating").await?;
    for a in assignments(&client).await? {
        assert_eq!(
            up.get(a.worker.as_str()),
            a.hive.as_ref().map(|h| h.to_string()).as_ref(),
            "{} runs where assigned",
            a.worker
        );
    }

    // kill -9 one worker process: its hive restarts it.
    let victim = wait_until("hive-1 reporting its workers", WAIT, || async {
        client.hive("hive-1").await.ok()?.workers_reported().into_iter().find(|w| w.3 == ProcessState::Running)
    })
    .await?;
    let old_pid = victim.1;
    kill(Pid::from_raw(old_pid as i32), Signal::SIGKILL)?;
    wait_until("the killed worker restarted", WAIT, || async {
        let h = client.hive("hive-1").await.ok()?;
        h.workers_reported().into_iter().find(|(name, pid, restarts, state)| {
            name == &victim.0 && *pid != old_pid && *restarts >= 1 && *state == ProcessState::Running
        })
    })
    .await?;
    wait_until("the restart counted in the assignment", WAIT, || async {
        assignments(&client).await.ok()?.into_iter().find(|a| a.worker.as_str() == victim.0 && a.restarts >= 1)
    })
    .await?;
    wait_until("the restarted worker heartbeating under a new epoch", WAIT, || async {
        let events = client.worker_events(&victim.0).await.ok()?;
        events.iter().any(|e| e.kind == EventKind::Restarted).then_some(())
    })
    .await?;

    // kill a hive: its children die with it, its replicas move.
    let hive0 = NodeId::new("hive-0")?;
    let doomed: Vec<(String, u32)> = wait_until("hive-0 reporting 2 running workers", WAIT, || async {
        let w = client.hive("hive-0").await.ok()?.workers_reported();
        (w.len() == 2 && w.iter().all(|x| x.3 == ProcessState::Running))
            .then(|| w.into_iter().map(|(n, p, ..)| (n, p)).collect())
    })
    .await?;
    let killed_at = Instant::now();
    sb.kill_hive(&hive0).await?;
    wait_until("hive-0's children gone", WAIT, || async { doomed.iter().all(|(_, pid)| !alive(*pid)).then_some(()) })
        .await?;
    let moved = wait_until("hive-0's replicas running elsewhere", WAIT, || async {
        let r = running(&client).await.ok()?;
        let a = assignments(&client).await.ok()?;
        let placed_elsewhere = a.iter().all(|x| x.state == AssignmentState::Placed && x.hive.as_ref() != Some(&hive0));
        (placed_elsewhere && r.len() == 6 && r.values().all(|h| h != "hive-0")).then_some(a)
    })
    .await?;
    eprintln!("hive death to replicas running elsewhere: {} ms", killed_at.elapsed().as_millis());
    for (name, _) in &doomed {
        let a = moved.iter().find(|a| a.worker.as_str() == name).expect("still assigned");
        assert_eq!(a.moves, 1, "{name} moved once");
    }
    wait_until("the move shown in the stream's events", WAIT, || async {
        let s = sb.snapshot().await.ok()?;
        s.events.iter().any(|e| e.kind == EventKind::Orphaned && e.reason.contains("hive-0")).then_some(())
    })
    .await?;

    // hive-0 comes back under a new epoch: it is told to run nothing, nothing is doubled.
    sb.add_hive(hive0.clone())?;
    wait_until("hive-0 back and idle", WAIT, || async {
        let h = client.hive("hive-0").await.ok()?;
        (h.liveness == contract::Liveness::Online && h.workers_reported().is_empty()).then_some(())
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(900)).await;
    let r = running(&client).await?;
    assert_eq!(r.len(), 6);
    assert!(r.values().all(|h| h != "hive-0"), "no replica runs twice: {r:?}");
    let names: BTreeSet<String> = assignments(&client).await?.into_iter().map(|a| a.worker.to_string()).collect();
    assert_eq!(names.len(), 6);

    // Scale down, then delete: the hives stop the workers gracefully.
    let scaled: DeploymentStatus = {
        let resp = queen_client::http()
            .patch(format!("{}/v1/deployments/web", sb.queen_url()))
            .json(&json!({"replicas": 2}))
            .send()
            .await?;
        assert!(resp.status().is_success());
        resp.json().await?
    };
    assert_eq!(scaled.assignments.len(), 2);
    wait_until("4 workers stopped after scaling down", WAIT, || async {
        let stopped = client.workers().await.ok()?.iter().filter(|w| w.liveness == contract::Liveness::Stopped).count();
        (stopped >= 4).then_some(())
    })
    .await?;
    let resp = queen_client::http().delete(format!("{}/v1/deployments/web", sb.queen_url())).send().await?;
    assert_eq!(resp.status().as_u16(), 204);
    wait_running(&client, 0, "every worker stopped after delete").await?;
    sb.shutdown().await
}

trait Reported {
    /// (name, pid, restarts, state) of each worker the hive supervises.
    fn workers_reported(&self) -> Vec<(String, u32, u32, ProcessState)>;
}

impl Reported for contract::HiveSummary {
    fn workers_reported(&self) -> Vec<(String, u32, u32, ProcessState)> {
        self.workers.iter().map(|w| (w.name.to_string(), w.pid.unwrap_or(0), w.restarts, w.state)).collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queen_restart_keeps_deployments_and_assignments_and_routes_every_job_once() -> anyhow::Result<()> {
    let data = TempDir::new("queen-data")?;
    let mut sb = Sandbox::builder()
        .hives(2)
        .workers_per_hive(0)
        .heartbeat_interval(Duration::from_millis(300))
        .snapshot_interval(Duration::from_millis(300))
        .data_dir(data.0.clone())
        .start()
        .await?;
    let client = sb.client();
    deploy(&client, 4).await?;
    wait_running(&client, 4, "4 replicas heartbeating").await?;
    let before = assignments(&client).await?;

    let addr = sb.queen_addr();
    sb.kill_queen().await?;
    sb.restart_queen(addr)?;
    let deployments: Vec<DeploymentStatus> =
        wait_until("the queen back", WAIT, || async { client.get_json("/v1/deployments").await.ok() }).await?;
    assert_eq!(deployments.len(), 1);
    assert_eq!(deployments[0].spec.replicas, 4);
    wait_running(&client, 4, "the same 4 replicas heartbeating to the new queen").await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = assignments(&client).await?;
    assert_eq!(placed(after), placed(before), "nothing re-placed needlessly");
    let snapshot = sb.snapshot().await?;
    assert!(
        !snapshot.events.iter().any(|e| e.kind == EventKind::Placed),
        "no placement after restart: {:?}",
        snapshot.events
    );

    // 500 jobs, 16 at a time, through the queen: each answered once or refused. The same
    // load straight at the workers (spread client-side) is the baseline, in the same run.
    let http = queen_client::http();
    let via_queen = format!("{}/v1/jobs", sb.queen_url());
    let (answered, refused, through_queen) = run_jobs(&http, 500, |_| via_queen.clone()).await?;
    let direct_urls: Vec<String> = client.workers().await?.iter().map(|w| format!("{}/v1/jobs", w.address)).collect();
    let (direct_answered, _, direct) = run_jobs(&http, 500, |i| direct_urls[i % direct_urls.len()].clone()).await?;
    eprintln!(
        "500 sha256 jobs, 16 at a time: {:.0} jobs/s through the queen, {:.0} jobs/s straight to the workers (ratio {:.2})",
        500.0 / through_queen.as_secs_f64(),
        500.0 / direct.as_secs_f64(),
        direct.as_secs_f64() / through_queen.as_secs_f64()
    );
    assert_eq!(answered + refused, 500);
    assert!(answered >= 490, "4 workers × 4 slots take 16 at a time: {answered} answered");
    // Every answered job ran exactly once: the workers' own counters add up.
    let worker_urls: Vec<String> = client.workers().await?.into_iter().map(|w| w.address).collect();
    let done_on_workers = sandbox::worker_job_count(&worker_urls, "sha256", "done").await?;
    assert_eq!(done_on_workers, u64::from(answered + direct_answered), "no job ran twice, none got lost");
    sb.shutdown().await
}

/// Sends `n` sha256 jobs, 16 at a time, job `i` to `url(i)`; checks every answer is that
/// job's own result. Returns (answered, refused with 503, elapsed).
async fn run_jobs(
    http: &reqwest::Client,
    n: usize,
    url: impl Fn(usize) -> String,
) -> anyhow::Result<(u32, u32, Duration)> {
    let started = Instant::now();
    let (mut answered, mut refused) = (0, 0);
    let jobs: Vec<usize> = (0..n).collect();
    for chunk in jobs.chunks(16) {
        let mut batch = Vec::new();
        for &i in chunk {
            let (http, url) = (http.clone(), url(i));
            batch.push(tokio::spawn(async move {
                let input = format!("job-{i}");
                let resp =
                    http.post(&url).json(&json!({"kind": "sha256", "input": input, "rounds": 100})).send().await?;
                let status = resp.status().as_u16();
                let body: serde_json::Value = resp.json().await?;
                anyhow::Ok((status, input, body))
            }));
        }
        for job in batch {
            let (status, input, body) = job.await??;
            match status {
                200 => {
                    assert_eq!(body["output"], json!(worker::jobs::sha256_rounds(&input, 100)), "job {input}");
                    answered += 1;
                }
                503 => refused += 1,
                other => anyhow::bail!("job {input}: unexpected {other}: {body}"),
            }
        }
    }
    Ok((answered, refused, started.elapsed()))
}

/// A job sent with an idempotency key runs once: retries, one after another or at the
/// same time, get the first run's answer from the worker that ran it; the key cannot be
/// reused for another job, and a malformed key is refused before anything runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_job_runs_once_however_often_it_is_sent() -> anyhow::Result<()> {
    let sb =
        Sandbox::builder().hives(1).workers_per_hive(3).heartbeat_interval(Duration::from_millis(300)).start().await?;
    let url = format!("{}/v1/jobs", sb.queen_url());
    let worker_urls: Vec<String> = sb.worker_ids().iter().filter_map(|id| sb.worker_url(id)).collect();
    let send = |key: &'static str, job: serde_json::Value| {
        let url = url.clone();
        async move {
            let resp = queen_client::http().post(url).header(contract::IDEMPOTENCY_KEY, key).json(&job).send().await?;
            let worker = resp.headers().get("x-apiary-worker").and_then(|v| v.to_str().ok()).map(str::to_string);
            anyhow::Ok((resp.status().as_u16(), worker, resp.json::<serde_json::Value>().await?))
        }
    };
    let job = json!({"kind": "sleep", "ms": 400});
    // Three at once (the later two wait for the first run), then one after it ended.
    let (a, b, c) = tokio::join!(send("once-1", job.clone()), send("once-1", job.clone()), send("once-1", job.clone()));
    let d = send("once-1", job.clone()).await?;
    let answers = [a?, b?, c?, d];
    for (status, worker, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(worker, &answers[0].1, "every retry went to the worker that ran it");
        assert_eq!(body, &answers[0].2, "every retry got the first run's answer");
    }
    assert_eq!(sandbox::worker_job_count(&worker_urls, "sleep", "done").await?, 1, "it ran once");
    assert_eq!(sandbox::worker_job_count(&worker_urls, "sleep", "replayed").await?, 3);

    let (status, _, body) = send("once-1", json!({"kind": "sleep", "ms": 5})).await?;
    assert_eq!((status, body["code"].as_str()), (422, Some("idempotency_key_reused")), "{body}");
    for bad in ["a/b", "", "spaced key"] {
        let resp = queen_client::http().post(&url).header(contract::IDEMPOTENCY_KEY, bad).json(&job).send().await?;
        let status = resp.status().as_u16();
        let body: serde_json::Value = resp.json().await?;
        assert_eq!((status, body["code"].as_str()), (400, Some("invalid_idempotency_key")), "key {bad:?}: {body}");
    }
    // Another key is another job.
    let (status, _, _) = send("once-2", job.clone()).await?;
    assert_eq!(status, 200);
    assert_eq!(sandbox::worker_job_count(&worker_urls, "sleep", "done").await?, 2);
    sb.shutdown().await
}

/// A keyed job whose worker died after the caller gave up waiting: the retry finds the
/// recorded worker's port closed and runs the job on another worker instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_job_whose_worker_is_gone_runs_elsewhere_on_retry() -> anyhow::Result<()> {
    let mut sb =
        Sandbox::builder().hives(1).workers_per_hive(2).heartbeat_interval(Duration::from_millis(300)).start().await?;
    let url = format!("{}/v1/jobs", sb.queen_url());
    // Long enough that its worker is killed while it runs, however slow the machine.
    let job = json!({"kind": "sleep", "ms": 8000});
    let post = |timeout: Duration| {
        queen_client::http().post(&url).header(contract::IDEMPOTENCY_KEY, "gone-1").timeout(timeout).json(&job)
    };
    assert!(post(Duration::from_millis(500)).send().await.is_err(), "the caller gave up");
    let client = sb.client();
    let running = wait_until("the job running on a worker", WAIT, || async {
        client.workers().await.ok()?.into_iter().find(|w| w.in_flight > 0).map(|w| w.id)
    })
    .await?;
    sb.kill_worker(&running).await?;

    let resp = post(Duration::from_secs(20)).send().await?;
    let ran_on = resp.headers().get("x-apiary-worker").and_then(|v| v.to_str().ok()).map(str::to_string);
    assert_eq!(resp.status().as_u16(), 200, "{}", resp.text().await?);
    assert!(ran_on.is_some_and(|w| w != running.as_str()), "it ran again on the other worker");
    sb.shutdown().await
}

/// A secret environment value reaches the replica's process and no read: not the
/// deployment API, not the snapshot, not the audit log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_env_value_reaches_the_replica_and_no_read() -> anyhow::Result<()> {
    let sb = Sandbox::fast_hives(1).start().await?;
    let client = sb.client();
    let dir = TempDir::new("secret-env")?;
    let out = dir.0.join("seen");
    let spec = json!({
        "name": "db-user",
        "command": "/bin/sh",
        "args": ["-c", "printf %s \"$DB_PASSWORD\" > \"$OUT\"; exec sleep 30"],
        "env": {"OUT": out.to_string_lossy()},
        "secret_env": {"DB_PASSWORD": "hunter2-s3cret"},
        "replicas": 1,
    });
    let created: DeploymentStatus = client.post_json("/v1/deployments", &spec).await?;
    assert_eq!(created.spec.secret_env.get("DB_PASSWORD").map(String::as_str), Some(contract::SECRET));
    let seen = wait_until("the replica's process wrote what it was given", WAIT, || async {
        std::fs::read_to_string(&out).ok().filter(|s| !s.is_empty())
    })
    .await?;
    assert_eq!(seen, "hunter2-s3cret", "the process gets the real value");
    for path in ["/v1/deployments", "/v1/deployments/db-user", "/v1/snapshot", "/v1/assignments"] {
        let text = queen_client::http().get(format!("{}{path}", sb.queen_url())).send().await?.text().await?;
        assert!(!text.contains("hunter2-s3cret"), "{path} shows the secret: {text}");
    }
    let listed: Vec<DeploymentStatus> = client.get_json("/v1/deployments").await?;
    assert_eq!(
        listed[0].spec.secret_env.get("DB_PASSWORD").map(String::as_str),
        Some(contract::SECRET),
        "named, not shown"
    );
    sb.shutdown().await
}

/// A command that cannot run is said in words where an operator looks, and its hive
/// stays online: a missing binary with a 300-byte path (its report would once have made
/// every heartbeat of the hive invalid) and a file that is not executable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_cannot_start_is_visible_and_harms_no_hive() -> anyhow::Result<()> {
    let sb = Sandbox::fast_hives(1).start().await?;
    let client = sb.client();
    let dir = TempDir::new("not-executable")?;
    let plain = dir.0.join("plain.sh");
    std::fs::write(&plain, "#!/bin/sh\nsleep 30\n")?;
    let missing = format!("/nonexistent/{}", "a".repeat(300));
    for (name, command, said) in
        [("missing", missing.as_str(), "no such file"), ("plain", &*plain.to_string_lossy(), "not executable")]
    {
        let spec = json!({"name": name, "command": command, "replicas": 1});
        client.post_json::<_, DeploymentStatus>("/v1/deployments", &spec).await?;
        let path = format!("/v1/deployments/{name}");
        let a = wait_until(&format!("{name}: its hive says why it does not start"), WAIT, || async {
            let d: DeploymentStatus = client.get_json(&path).await.ok()?;
            d.assignments.first().filter(|a| a.last_exit.contains(said)).cloned()
        })
        .await?;
        assert_eq!(a.process, Some(ProcessState::Restarting), "{a:?}");
        let d: DeploymentStatus = client.get_json(&path).await?;
        assert!(d.failed.as_deref().is_some_and(|f| f.contains(said)), "marked failed, not starting: {:?}", d.failed);
        assert!(a.last_exit.starts_with("cannot start:") && a.last_exit.len() <= 256, "{}", a.last_exit);
        wait_until(&format!("{name}: a start_failed event"), WAIT, || async {
            let events = sb.snapshot().await.ok()?.events;
            events.iter().any(|e| e.kind == EventKind::StartFailed && e.id.as_str().starts_with(name)).then_some(())
        })
        .await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let hive = client.hive("hive-0").await?;
    assert!(hive.available, "the hive's heartbeats stay valid: {hive:?}");
    sb.shutdown().await
}

/// A queen that comes back with no deployments (its store lost, or a new data dir) while
/// the hives run replicas stops none of them: it says `unknown replicas` in readiness and the
/// snapshot, and they stop only once an operator confirms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queen_with_an_empty_store_stops_nothing_until_told() -> anyhow::Result<()> {
    let mut sb = Sandbox::fast_hives(1).start().await?;
    let client = sb.client();
    deploy(&client, 2).await?;
    wait_running(&client, 2, "2 replicas heartbeating").await?;

    // Memory only: the queen that comes back knows no deployment.
    let addr = sb.queen_addr();
    sb.kill_queen().await?;
    sb.restart_queen(addr)?;
    wait_running(&client, 2, "the replicas heartbeating to the new queen").await?;
    let said = wait_until("unknown replicas in the snapshot", WAIT, || async {
        sb.snapshot().await.ok()?.warnings.into_iter().find(|w| w.contains("unknown replicas on 1 hives"))
    })
    .await?;
    assert!(said.contains("stop-unknown"), "{said}");
    let ready = queen_client::http().get(format!("{}/readyz", sb.queen_url())).send().await?;
    assert_eq!(ready.status().as_u16(), 503, "readiness says so too");
    assert!(ready.text().await?.contains("unknown replicas"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(running(&client).await?.len(), 2, "nothing stopped meanwhile");

    let confirmed: contract::UnknownReplicas =
        client.post_json("/v1/cluster/unknown-replicas/stop", &json!({})).await?;
    assert_eq!(confirmed.hives, 1);
    wait_running(&client, 0, "the unknown replicas stopped once confirmed").await?;
    sb.shutdown().await
}

/// A replica that forks a child which ignores SIGTERM: when the replica is stopped, the
/// child goes too (the hive signals the replica's whole process group, SIGKILL at the
/// deadline), so nothing a replica started outlives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_replica_takes_its_stubborn_children_with_it() -> anyhow::Result<()> {
    let sb =
        Sandbox::builder().hives(1).workers_per_hive(0).heartbeat_interval(Duration::from_millis(300)).start().await?;
    let client = sb.client();
    let dir = TempDir::new("process-tree")?;
    let pidfile = dir.0.join("child.pid");
    let script = format!("sh -c 'trap \"\" TERM; echo $$ > {}; while :; do sleep 1; done' & wait", pidfile.display());
    let spec = json!({"name": "tree", "command": "/bin/sh", "args": ["-c", script], "replicas": 1});
    client.post_json::<_, DeploymentStatus>("/v1/deployments", &spec).await?;
    let child: i32 = wait_until("the replica's child running", WAIT, || async {
        std::fs::read_to_string(&pidfile).ok()?.trim().parse().ok()
    })
    .await?;
    assert!(alive(child as u32));
    client.scale("tree", 0).await?;
    wait_until("the child that ignores SIGTERM gone with its replica", WAIT, || async {
        (!alive(child as u32)).then_some(())
    })
    .await?;
    sb.shutdown().await
}

/// The hive tells the queen at once when a replica cannot start, not at its next heartbeat:
/// with a 30 s interval the report still arrives within seconds (what `queen deploy`'s
/// warning waits for).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_cannot_start_is_reported_before_the_next_interval() -> anyhow::Result<()> {
    let sb =
        Sandbox::builder().hives(1).workers_per_hive(0).heartbeat_interval(Duration::from_secs(30)).start().await?;
    let client = sb.client();
    wait_until("the hive heard", WAIT, || async { client.hive("hive-0").await.ok() }).await?;
    let spec = json!({"name": "typo", "command": "/usr/bin/no-such-program", "replicas": 1});
    client.post_json::<_, DeploymentStatus>("/v1/deployments", &spec).await?;
    wait_until("the hive's word, long before its next interval", Duration::from_secs(10), || async {
        let d: DeploymentStatus = client.get_json("/v1/deployments/typo").await.ok()?;
        d.assignments.first().filter(|a| a.last_exit.contains("no such file")).map(|_| ())
    })
    .await?;
    sb.shutdown().await
}

/// A change of environment rolls out one replica at a time, each new instance up before
/// its old one stops, while jobs keep flowing to the deployment; a restart does the same
/// with the spec unchanged. Every job gets its answer (a 503 "no worker available" is
/// retried, as the queen's Retry-After says; none comes).
#[tokio::test]
async fn a_rolling_update_and_a_restart_replace_every_replica_without_failing_a_job() -> anyhow::Result<()> {
    let sb = Sandbox::builder()
        .hives(2)
        .workers_per_hive(0)
        .heartbeat_interval(Duration::from_millis(300))
        .snapshot_interval(Duration::from_millis(300))
        .start()
        .await?;
    let client = sb.client();
    deploy(&client, 2).await?;
    wait_until("both replicas up", WAIT, || async { (running(&client).await.ok()?.len() == 2).then_some(()) }).await?;
    let fast = json!({ "max_parallel": 1, "min_healthy_ms": 300, "progress_deadline_ms": 20000 });
    let _: DeploymentStatus =
        client.send_json(reqwest::Method::PATCH, "/v1/deployments/web", &json!({ "update": fast })).await?;

    let stop = tokio_util::sync::CancellationToken::new();
    let jobs = tokio::spawn({
        let (url, stop) = (format!("{}/v1/jobs?deployment=web", sb.queen_url()), stop.clone());
        async move {
            let http = queen_client::http();
            let (mut done, mut retried) = (0u32, 0u32);
            while !stop.is_cancelled() {
                let input = format!("roll-{done}");
                let resp =
                    http.post(&url).json(&json!({"kind": "sha256", "input": input, "rounds": 10})).send().await?;
                match resp.status().as_u16() {
                    200 => done += 1,
                    503 => {
                        retried += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    other => anyhow::bail!("job {input} failed during the rollout: {other} {}", resp.text().await?),
                }
            }
            anyhow::Ok((done, retried))
        }
    });

    // How many replicas the queen counts running, sampled through the rollouts: an old
    // instance counts until its replacement is up.
    let fewest = tokio::spawn({
        let (client, stop) = (client.clone(), stop.clone());
        async move {
            let mut fewest = u32::MAX;
            while !stop.is_cancelled() {
                if let Ok(d) = client.get_json::<DeploymentStatus>("/v1/deployments/web").await {
                    fewest = fewest.min(d.running);
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            fewest
        }
    });
    let started = Instant::now();
    let changed: DeploymentStatus =
        client.send_json(reqwest::Method::PATCH, "/v1/deployments/web", &json!({ "env": { "RELEASE": "2" } })).await?;
    assert_eq!(changed.version, 1);
    assert!(changed.rollout.as_ref().is_some_and(|r| r.state == contract::RolloutState::Running), "{changed:?}");
    let rolled = |version: u64| {
        let client = client.clone();
        async move {
            let d: DeploymentStatus = client.get_json("/v1/deployments/web").await.ok()?;
            let done =
                d.rollout.as_ref().is_some_and(|r| r.state == contract::RolloutState::Done && r.to_version == version);
            (done && d.assignments.iter().all(|a| a.version == version && a.retiring.is_none())).then_some(d)
        }
    };
    let after = wait_until("the new version on every replica", WAIT, || rolled(1)).await?;
    eprintln!("rolling update of 2 replicas: {} ms", started.elapsed().as_millis());
    assert_eq!(after.spec.env.get("RELEASE").map(String::as_str), Some("2"));
    let names: BTreeSet<String> = after.assignments.iter().map(|a| a.worker.to_string()).collect();
    assert!(names.iter().all(|n| n.ends_with(".1")), "each slot a new instance: {names:?}");
    wait_until("only the new instances up", WAIT, || async {
        let up = running(&client).await.ok()?;
        (up.len() == 2 && up.keys().all(|w| names.contains(w))).then_some(())
    })
    .await?;

    // Nothing rolls now: pausing is refused with the reason.
    let resp = queen_client::http().post(format!("{}/v1/deployments/web/rollout/pause", sb.queen_url())).send().await?;
    assert_eq!(resp.status().as_u16(), 409);
    // Undo brings the version before back, as a new version.
    let undone: DeploymentStatus = client.post_json("/v1/deployments/web/rollout/undo", &json!({})).await?;
    assert_eq!((undone.version, undone.spec.env.get("RELEASE")), (2, None), "{undone:?}");
    wait_until("the undo rolled through", WAIT, || rolled(2)).await?;

    let started = Instant::now();
    let restarted = client.restart("web").await?;
    assert_eq!((restarted.version, restarted.spec.env.get("RELEASE")), (3, None), "same spec");
    wait_until("the restart rolled through", WAIT, || rolled(3)).await?;
    let history: contract::DeploymentHistory = client.get_json("/v1/deployments/web/history").await?;
    let versions: Vec<(u64, Option<&str>, bool)> = history
        .versions
        .iter()
        .map(|v| (v.version, v.spec.env.get("RELEASE").map(String::as_str), v.current))
        .collect();
    assert_eq!(versions, vec![(0, None, false), (1, Some("2"), false), (2, None, false), (3, None, true)]);
    eprintln!("rolling restart of 2 replicas: {} ms", started.elapsed().as_millis());

    stop.cancel();
    let (done, retried) = jobs.await??;
    assert_eq!(fewest.await?, 2, "never fewer than 2 running through the rollouts");
    eprintln!("jobs during the rollout and restart: {done} answered, {retried} retried after 503");
    assert!(done > 10, "jobs flowed: {done}");
    sb.shutdown().await
}
