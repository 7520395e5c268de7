//! `cargo xtask dev`: a local cluster on loopback, stopped cleanly on Ctrl-C.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

#[derive(clap::Args)]
pub struct DevArgs {
    /// Number of hives.
    #[arg(long, default_value_t = 2)]
    hives: usize,
    /// Workers started for each hive.
    #[arg(long, default_value_t = 2)]
    workers_per_hive: usize,
    /// Where the queen listens.
    #[arg(long, default_value = "127.0.0.1:8500")]
    listen: String,
    /// Heartbeat interval the queen hands out.
    #[arg(long, default_value = "10s")]
    heartbeat_interval: String,
    /// How often the queen streams a snapshot.
    #[arg(long, default_value = "5s")]
    snapshot_interval: String,
    /// Queens: more than one runs them as replicas on a local etcd this task starts
    /// (Debian's etcd-server, installed if missing), on the ports after --listen's.
    #[arg(long, default_value_t = 1)]
    queens: usize,
    /// Leadership lease of replicas: a killed leader is replaced about this long after.
    #[arg(long, default_value = "3s")]
    lease_ttl: String,
}

struct Proc {
    bin: &'static str,
    name: String,
    child: Child,
    exited: bool,
}

/// How long children get to stop gracefully before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

fn spawn(dir: &Path, bin: &'static str, name: String, args: &[&str]) -> anyhow::Result<Proc> {
    let mut cmd = Command::new(dir.join(bin));
    cmd.args(args);
    // Children get their own process group so that Ctrl-C in the terminal reaches only
    // xtask, which then stops each child exactly once (a second signal would force it).
    cmd.process_group(0);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", if bin == "queen" { "info" } else { "warn" });
    }
    let child = cmd.spawn().with_context(|| format!("starting {bin} {name}"))?;
    Ok(Proc { bin, name, child, exited: false })
}

pub fn run(args: DevArgs) -> anyhow::Result<()> {
    let dir = crate::build_binaries()?;
    crate::web::build()?;
    let first: std::net::SocketAddr = args.listen.parse().context("--listen must be IP:PORT")?;
    let listens: Vec<String> = (0..args.queens.max(1))
        .map(|i| std::net::SocketAddr::new(first.ip(), first.port() + i as u16).to_string())
        .collect();
    let urls: Vec<String> = listens.iter().map(|l| format!("http://{l}")).collect();
    let url = urls.join(",");
    let (tx, rx) = mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = tx.send(());
    })
    .context("installing the Ctrl-C handler")?;

    // A fresh store each run: the dev cluster is defined by the flags, not by last time.
    let data_dir = crate::target_dir().join("dev-data");
    let _ = std::fs::remove_dir_all(&data_dir);
    let etcd = if args.queens > 1 {
        crate::web::ensure_apt(&["etcd-server"])?;
        let etcd = etcd_process::Etcd::start_in_dir(data_dir.join("etcd"))?;
        eprintln!("xtask dev: etcd at {} (log {})", etcd.endpoint(), etcd.log_path().display());
        Some(etcd)
    } else {
        None
    };
    let replicas = args.hives * args.workers_per_hive;
    // Room for every replica on any one hive, so work can move when a hive dies.
    let max_workers = replicas.max(1).to_string();
    let mut procs = Vec::new();
    for (i, listen) in listens.iter().enumerate() {
        let queen_dir = data_dir.join(format!("queen-{i}")).to_string_lossy().into_owned();
        let mut queen_args = vec![
            "serve".to_string(),
            "--listen".into(),
            listen.clone(),
            "--heartbeat-interval".into(),
            args.heartbeat_interval.clone(),
            "--snapshot-interval".into(),
            args.snapshot_interval.clone(),
            "--data-dir".into(),
            queen_dir,
            "--strategy".into(),
            "least_workers".into(),
        ];
        if let Some(etcd) = &etcd {
            queen_args.extend([
                "--store".into(),
                format!("etcd://{}", etcd.endpoint()),
                "--lease-ttl".into(),
                args.lease_ttl.clone(),
            ]);
        }
        let queen_args: Vec<&str> = queen_args.iter().map(String::as_str).collect();
        procs.push(spawn(&dir, "queen", format!("queen-{i}"), &queen_args)?);
    }
    for h in 1..=args.hives {
        let hive = format!("hive-{h}");
        // Another dev cluster on this machine has hives of the same names.
        let cgroup = format!("apiary-dev-{}-{hive}", std::process::id());
        procs.push(spawn(
            &dir,
            "hive",
            hive.clone(),
            // The whole dev cluster stops at once on Ctrl-C: a hive asking to have its work
            // moved onto hives that are stopping too would only wait out its drain.
            &[
                "--queen",
                &url,
                "--name",
                &hive,
                "--max-workers",
                &max_workers,
                "--drain-on-shutdown",
                "0s",
                "--cgroup",
                &cgroup,
            ],
        )?);
    }
    // Deploy once every hive has joined, so the replicas spread over all of them.
    let joined_by = Instant::now() + Duration::from_secs(20);
    while online_counts(&listens[0]).is_none_or(|(hives, _)| hives < args.hives) && Instant::now() < joined_by {
        std::thread::sleep(Duration::from_millis(200));
    }
    // The workers come from a deployment, placed by the queen and started by the hives.
    let worker = dir.join("worker").to_string_lossy().into_owned();
    let replicas_arg = replicas.to_string();
    let deploy = ["deploy", "workers", "--command", &worker, "--replicas", &replicas_arg, "--queen", &url];
    let deployed_at = Instant::now();
    loop {
        let out = Command::new(dir.join("queen")).args(deploy).output().context("running queen deploy")?;
        if out.status.success() {
            break;
        }
        if deployed_at.elapsed() > Duration::from_secs(20) {
            stop_all(&mut procs);
            anyhow::bail!("queen deploy failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    let one = &urls[0];
    eprintln!(
        "\nApiary dev cluster: {} queen(s), {} hives, {} workers",
        urls.len(),
        args.hives,
        args.hives * args.workers_per_hive
    );
    for (u, p) in urls.iter().zip(procs.iter().filter(|p| p.bin == "queen")) {
        eprintln!("  dashboard: {u}/   ({}, pid {})", p.name, p.child.id());
    }
    eprintln!("  stream:  curl -N {one}/v1/heartbeats/stream");
    eprintln!("  status:  target/debug/queen status --queen {url}");
    eprintln!("  nodes:   target/debug/queen nodes --queen {url}");
    eprintln!("  work:    target/debug/queen deployments --queen {url}");
    if urls.len() > 1 {
        eprintln!("  leader:  target/debug/queen leader show --queen {url}");
        eprintln!("  hand over: target/debug/queen leader transfer --queen {url}");
        eprintln!("  kill it:   kill -9 <the leader's pid, above>; another leads within the lease");
    }
    eprintln!("Ctrl-C stops everything.\n");

    let expected = (args.hives, args.hives * args.workers_per_hive);
    let mut announced = false;
    let started = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        for p in procs.iter_mut().filter(|p| !p.exited) {
            if let Ok(Some(status)) = p.child.try_wait() {
                p.exited = true;
                eprintln!("xtask dev: {} exited on its own ({status})", p.name);
            }
        }
        if procs.iter().all(|p| p.exited) {
            // A `queen cluster shutdown` ends this way.
            eprintln!("xtask dev: every process has exited");
            return Ok(());
        }
        if !announced
            && let Some((hives, workers)) = online_counts(&listens[0])
            && (hives, workers) == expected
        {
            announced = true;
            eprintln!(
                "xtask dev: {hives} hives and {workers} workers online after {:.1} s",
                started.elapsed().as_secs_f64()
            );
        }
    }
    stop_all(&mut procs);
    drop(etcd);
    Ok(())
}

/// Stops the cluster in order (hives, which stop their workers, then the queen last, so
/// that each can still say goodbye to it): SIGTERM, then SIGKILL for whatever is still running
/// after the grace period. Leaves no process behind.
fn stop_all(procs: &mut [Proc]) {
    eprintln!("\nxtask dev: stopping {} processes", procs.iter().filter(|p| !p.exited).count());
    // Hives stop the workers they run before they exit.
    for stage in ["hive", "queen"] {
        let mut group: Vec<&mut Proc> = procs.iter_mut().filter(|p| p.bin == stage && !p.exited).collect();
        for p in &group {
            let _ = kill(Pid::from_raw(p.child.id() as i32), Signal::SIGTERM);
        }
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline && group.iter().any(|p| !p.exited) {
            for p in group.iter_mut().filter(|p| !p.exited) {
                if let Ok(Some(_)) = p.child.try_wait() {
                    p.exited = true;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for p in group.iter_mut().filter(|p| !p.exited) {
            eprintln!("xtask dev: {} did not stop in {STOP_GRACE:?}; killing it", p.name);
            let _ = p.child.kill();
            let _ = p.child.wait();
            p.exited = true;
        }
    }
    eprintln!("xtask dev: all stopped");
}

/// `hives_online`, `workers_online` from the queen's latest snapshot, over plain HTTP/1.0
/// so that xtask needs no HTTP client.
fn online_counts(listen: &str) -> Option<(usize, usize)> {
    let mut stream = TcpStream::connect(listen).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET /v1/snapshot HTTP/1.0\r\nHost: {listen}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let body = response.split_once("\r\n\r\n")?.1;
    let snapshot: serde_json::Value = serde_json::from_str(body).ok()?;
    let count = |field: &str| snapshot.get(field)?.as_u64().map(|n| n as usize);
    Some((count("hives_online")?, count("workers_online")?))
}
