//! End to end: the real `queen`, `hive` and `worker` binaries as processes, the stream read
//! as a browser reads it, a hive killed with SIGKILL, the rest stopped with SIGTERM.

use std::net::TcpListener as StdListener;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use contract::{EventKind, Liveness};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sandbox::SnapshotStream;

/// A child process that is killed if the test ends early, so none is left behind.
struct Proc {
    name: &'static str,
    child: Child,
}

impl Proc {
    fn signal(&self, sig: Signal) -> anyhow::Result<()> {
        kill(Pid::from_raw(self.child.id() as i32), sig).with_context(|| format!("signal {} to {}", sig, self.name))
    }

    fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("{} did not exit within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(dir: &std::path::Path, name: &'static str, args: &[&str]) -> anyhow::Result<Proc> {
    // Hives of concurrent test runs on this machine may share a name: never their cgroups.
    static SPAWNED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = SPAWNED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let child = Command::new(dir.join(name))
        .args(args)
        .env("APIARY_CGROUP", format!("apiary-e2e-{}-{n}", std::process::id()))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    Ok(Proc { name, child })
}

/// Clears the cgroups of this test's hives when it ends (they were killed, or stopped).
struct Cgroups;

impl Drop for Cgroups {
    fn drop(&mut self) {
        hive::cgroup::clear_all(&format!("apiary-e2e-{}-", std::process::id()));
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_processes_a_killed_hive_goes_offline_and_sigterm_stops_cleanly() -> anyhow::Result<()> {
    let _cgroups = Cgroups;
    let dir = tokio::task::spawn_blocking(sandbox::built_binaries).await??;
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let url = format!("http://{listen}");
    let fast = ["--heartbeat-interval", "300ms"];
    let data = sandbox::TempDir::new("e2e-queen")?;
    let data_dir = data.0.to_string_lossy().into_owned();
    let mut queen = spawn(
        &dir,
        "queen",
        &["serve", "--listen", &listen, "--snapshot-interval", "200ms", "--data-dir", &data_dir, fast[0], fast[1]],
    )?;
    let mut hive_a = spawn(&dir, "hive", &["--queen", &url, "--name", "e2e-hive-a", fast[0], fast[1]])?;
    let hive_b = spawn(&dir, "hive", &["--queen", &url, "--name", "e2e-hive-b", fast[0], fast[1]])?;
    let mut worker =
        spawn(&dir, "worker", &["--queen", &url, "--hive", "e2e-hive-a", "--name", "e2e-worker", fast[0], fast[1]])?;

    // The queen may take a moment to bind: retry the stream like EventSource does.
    let started = Instant::now();
    let mut stream = loop {
        match SnapshotStream::connect(&url).await {
            Ok(s) => break s,
            Err(_) if started.elapsed() < Duration::from_secs(20) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => return Err(e.context("queen stream never came up")),
        }
    };
    let step = Duration::from_secs(5);
    loop {
        let (_, s) = stream.next(step).await?.context("stream ended")?;
        if s.hives_online == 2 && s.workers_online == 1 {
            break;
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("cluster never came up: {s:?}");
        }
    }

    // kill -9: no goodbye. Offline threshold is 3 × 300 ms; allow generous slack for CI.
    let killed_at = Instant::now();
    drop(hive_b);
    let snapshot = loop {
        let (_, s) = stream.next(step).await?.context("stream ended")?;
        if s.hives_online == 1 {
            break s;
        }
        if killed_at.elapsed() > Duration::from_secs(20) {
            bail!("killed hive never went offline: {s:?}");
        }
    };
    let b = snapshot.hives.iter().find(|h| h.id.as_str() == "e2e-hive-b").context("hive b still listed")?;
    assert_eq!(b.liveness, Liveness::Offline);
    assert!(
        snapshot.events.iter().any(|e| e.id.as_str() == "e2e-hive-b"
            && e.kind == EventKind::Offline
            && e.reason.starts_with("no heartbeat for")),
        "the event log says why: {:?}",
        snapshot.events
    );

    // SIGTERM: each says goodbye and exits 0; the queen shows them stopped at once.
    worker.signal(Signal::SIGTERM)?;
    assert!(worker.wait_exit(Duration::from_secs(15))?.success(), "worker exits 0");
    hive_a.signal(Signal::SIGTERM)?;
    assert!(hive_a.wait_exit(Duration::from_secs(15))?.success(), "hive exits 0");
    let client = queen_client::QueenClient::new(&url, None, Duration::from_secs(5))?;
    assert_eq!(client.hive("e2e-hive-a").await?.liveness, Liveness::Stopped);
    assert_eq!(client.worker("e2e-worker").await?.liveness, Liveness::Stopped);

    // The open stream must not hold the queen up: it ends, and the queen exits 0.
    queen.signal(Signal::SIGTERM)?;
    assert!(queen.wait_exit(Duration::from_secs(15))?.success(), "queen exits 0 with a stream open");
    let mut ended = false;
    for _ in 0..50 {
        match stream.next(step).await {
            Ok(None) | Err(_) => {
                ended = true;
                break;
            }
            Ok(Some(_)) => {}
        }
    }
    assert!(ended, "the stream ends when the queen stops");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queen_killed_mid_write_loses_no_acknowledged_deployment_and_never_corrupts_its_store() -> anyhow::Result<()>
{
    let dir = tokio::task::spawn_blocking(sandbox::built_binaries).await??;
    let data = sandbox::TempDir::new("torn-writes")?;
    let data_dir = data.0.to_string_lossy().into_owned();
    let http = queen_client::http_builder().timeout(Duration::from_secs(2)).build()?;
    let mut acknowledged: Vec<String> = Vec::new();
    for round in 0..8u64 {
        let port = free_port()?;
        let listen = format!("127.0.0.1:{port}");
        let url = format!("http://{listen}");
        let mut queen = spawn(&dir, "queen", &["serve", "--listen", &listen, "--data-dir", &data_dir])?;
        let up = Instant::now();
        while http.get(format!("{url}/healthz")).send().await.is_err() {
            if up.elapsed() > Duration::from_secs(20) {
                bail!("queen did not come up in round {round}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Everything written before must be there, exactly.
        let have: Vec<contract::DeploymentStatus> =
            http.get(format!("{url}/v1/deployments")).send().await?.json().await?;
        let names: Vec<String> = have.iter().map(|d| d.spec.name.to_string()).collect();
        for name in &acknowledged {
            assert!(names.contains(name), "round {round}: acknowledged {name} lost; store has {names:?}");
        }
        // Write as fast as possible, and kill the queen at an arbitrary moment.
        let kill_after = Duration::from_millis(30 + (round * 37) % 200);
        let started = Instant::now();
        let mut i = 0;
        while started.elapsed() < kill_after {
            let name = format!("d{round}-{i}");
            let spec = serde_json::json!({"name": name, "command": "true", "replicas": 0});
            if let Ok(resp) = http.post(format!("{url}/v1/deployments")).json(&spec).send().await
                && resp.status().as_u16() == 201
            {
                acknowledged.push(name);
            }
            i += 1;
        }
        queen.signal(Signal::SIGKILL)?;
        queen.wait_exit(Duration::from_secs(5))?;
    }
    eprintln!("{} acknowledged deployments across 8 kill -9s", acknowledged.len());
    assert!(acknowledged.len() > 20, "the loop wrote something: {}", acknowledged.len());
    // The store opens cleanly and holds every acknowledged write.
    let store = queen::store::RedbStore::open(&data.0)?;
    let persisted = queen::store::Store::load(&store)?;
    for name in &acknowledged {
        assert!(persisted.deployments.keys().any(|k| k.as_str() == name), "{name} lost");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hive_killed_with_sigkill_leaves_no_worker_process_behind() -> anyhow::Result<()> {
    let _cgroups = Cgroups;
    let dir = tokio::task::spawn_blocking(sandbox::built_binaries).await??;
    let data = sandbox::TempDir::new("orphans")?;
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let url = format!("http://{listen}");
    let fast = ["--heartbeat-interval", "300ms"];
    let data_dir = data.0.to_string_lossy().into_owned();
    let _queen = spawn(&dir, "queen", &["serve", "--listen", &listen, "--data-dir", &data_dir, fast[0], fast[1]])?;
    let mut hive =
        spawn(&dir, "hive", &["--queen", &url, "--name", "e2e-hive", "--max-workers", "4", fast[0], fast[1]])?;
    let client = queen_client::QueenClient::new(&url, None, Duration::from_secs(5))?;
    let worker = dir.join("worker").to_string_lossy().into_owned();
    let spec = serde_json::json!({"name": "w", "command": worker, "replicas": 2});
    sandbox::wait_until("the queen taking the deployment", Duration::from_secs(20), || async {
        client.post_json::<_, serde_json::Value>("/v1/deployments", &spec).await.ok()
    })
    .await?;
    let pids: Vec<u32> = sandbox::wait_until("two worker processes running", Duration::from_secs(20), || async {
        let h = client.hive("e2e-hive").await.ok()?;
        let pids: Vec<u32> = h.workers.iter().filter_map(|w| w.pid).collect();
        (pids.len() == 2 && client.workers().await.ok()?.len() == 2).then_some(pids)
    })
    .await?;
    hive.signal(Signal::SIGKILL)?;
    hive.wait_exit(Duration::from_secs(5))?;
    sandbox::wait_until("the workers gone with their hive", Duration::from_secs(10), || async {
        pids.iter().all(|p| kill(Pid::from_raw(*p as i32), None).is_err()).then_some(())
    })
    .await?;
    Ok(())
}

/// The two ways a queen used to start with admin calls open: a cluster token alone, and no
/// token on an address beyond loopback. Both are refused at start, naming the flag.
#[tokio::test]
async fn a_queen_refuses_to_start_with_its_admin_calls_open() -> anyhow::Result<()> {
    let dir = tokio::task::spawn_blocking(sandbox::built_binaries).await??;
    let data = sandbox::TempDir::new("open-admin")?;
    let data_dir = data.0.to_string_lossy().into_owned();
    let cases: [(&[&str], &str); 2] = [
        (&["--listen", "127.0.0.1:0", "--token", "cluster-only"], "--admin-token"),
        (&["--listen", "0.0.0.0:0"], "--insecure-no-auth"),
    ];
    for (args, named) in cases {
        let mut child = Command::new(dir.join("queen"))
            .arg("serve")
            .args(args)
            .args(["--data-dir", &data_dir])
            .env_remove("APIARY_TOKEN")
            .env_remove("APIARY_ADMIN_TOKEN")
            .env_remove("APIARY_READ_TOKEN")
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        // A queen that starts keeps running: give it time to refuse, then call it started.
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait()?.is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if child.try_wait()?.is_none() {
            let _ = child.kill();
            let _ = child.wait();
            bail!("queen serve {args:?} started and served with its admin calls open");
        }
        let out = child.wait_with_output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "queen serve {args:?} started: {stderr}");
        assert!(stderr.contains(named), "queen serve {args:?} does not say {named}: {stderr}");
    }
    Ok(())
}
