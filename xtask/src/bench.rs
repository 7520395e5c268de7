//! `cargo xtask bench`: the queen under load, measured in one run on this machine, written
//! to `BENCHMARKS.md`.
//!
//! Everything runs here at once (queen, load generator, baseline), so figures are for a
//! machine shared with its own load; ratios against the baseline measured in the same run
//! are what carries over to other machines.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;

use crate::{Stopped, cargo, root, run, target_dir, wait_for};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Hives in the simulated fleet.
    #[arg(long, default_value_t = 10_000)]
    hives: usize,
    /// Workers per hive in the simulated fleet.
    #[arg(long, default_value_t = 10)]
    workers_per_hive: usize,
    /// Length of the steady-state run.
    #[arg(long, default_value = "60")]
    steady_seconds: u64,
    /// Stream clients for the fan-out measurement.
    #[arg(long, default_value_t = 2_000)]
    stream_clients: usize,
    /// Print the table without writing BENCHMARKS.md.
    #[arg(long)]
    no_write: bool,
    /// Only the stalled-queen run (printed, not written).
    #[arg(long)]
    only_stall: bool,
}

/// How long the fan-out part runs after the steady part, with margin.
const FAN_OUT_SECONDS: u64 = 45;

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn sim(bin: &Path, args: &[String]) -> anyhow::Result<Value> {
    sim_at(bin, args, 0)
}

/// `apiary-sim` at `nice` priority: the stream clients are load on the queen, not what is
/// measured, and on a machine they share with the fleet's senders they must not starve
/// those (late heartbeats from a starved generator would read as the queen's false deaths).
fn sim_at(bin: &Path, args: &[String], nice: i32) -> anyhow::Result<Value> {
    eprintln!("$ apiary-sim {}{}", args.join(" "), if nice > 0 { format!(" (nice {nice})") } else { String::new() });
    let mut cmd = if nice > 0 {
        let mut c = Command::new("nice");
        c.args(["-n", &nice.to_string()]).arg(bin.join("apiary-sim"));
        c
    } else {
        Command::new(bin.join("apiary-sim"))
    };
    let out = cmd.args(args).stderr(Stdio::inherit()).output()?;
    anyhow::ensure!(out.status.success(), "apiary-sim {} failed", args.join(" "));
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn queen(bin: &Path, port: u16, extra: &[&str]) -> anyhow::Result<Stopped> {
    let data = target_dir().join(format!("bench-data-{port}"));
    let _ = std::fs::remove_dir_all(&data);
    let child = Command::new(bin.join("queen"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(&data)
        .args(extra)
        .env("RUST_LOG", "warn")
        .spawn()
        .context("starting the queen")?;
    wait_for(port)?;
    Ok(Stopped(child))
}

/// Resident memory of a process, in bytes.
fn rss(child: &Child) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("no VmRSS")?
        .parse()?;
    Ok(kb * 1024)
}

/// CPU time a process has used (user + system), in seconds.
fn cpu_seconds(child: &Child) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id()))?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')').context("odd /proc stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 =
        fields.get(11).context("utime")?.parse::<f64>()? + fields.get(12).context("stime")?.parse::<f64>()?;
    Ok(ticks / 100.0)
}

/// One sample of a Prometheus metric (the first whose line starts with `prefix`).
fn metric(port: u16, prefix: &str) -> anyhow::Result<f64> {
    let text = ureq::get(&format!("http://127.0.0.1:{port}/metrics")).call()?.body_mut().read_to_string()?;
    Ok(text.lines().find_map(|l| l.strip_prefix(prefix)).map(|v| v.trim().parse()).transpose()?.unwrap_or(0.0))
}

fn f(v: &Value, path: &str) -> f64 {
    v.pointer(path).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

/// False offline transitions when the queen is paused (SIGSTOP, as a VM pause or a swap
/// storm does) for 10 s past a 6 s threshold, while 200 hives × 5 workers beat every 2 s
/// throughout: every node is alive, so every offline is false.
fn stalled_queen(bin: &Path) -> anyhow::Result<(f64, usize, f64)> {
    let port = free_port()?;
    let q = queen(bin, port, &["--heartbeat-interval", "2s", "--offline-after", "6s"])?;
    let fleet_args: Vec<String> = [
        "fleet",
        "--queen",
        &format!("http://127.0.0.1:{port}"),
        "--hives",
        "200",
        "--workers-per-hive",
        "5",
        "--interval",
        "2s",
        "--duration",
        "40s",
    ]
    .map(String::from)
    .to_vec();
    let fleet_bin = bin.to_path_buf();
    let fleet = std::thread::spawn(move || sim(&fleet_bin, &fleet_args));
    // Past the startup grace (the offline threshold), everyone joined.
    std::thread::sleep(Duration::from_secs(15));
    // Every node heard before the stall, or the zero below would prove nothing.
    let online = metric(port, "apiary_nodes{kind=\"hive\",liveness=\"online\"} ")?
        + metric(port, "apiary_nodes{kind=\"worker\",liveness=\"online\"} ")?;
    anyhow::ensure!(online as usize == 200 * 6, "only {online} of 1200 simulated nodes online before the stall");
    let pid = nix::unistd::Pid::from_raw(q.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP)?;
    std::thread::sleep(Duration::from_secs(10));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT)?;
    fleet.join().map_err(|_| anyhow::anyhow!("fleet thread panicked"))??;
    let offline = metric(port, "apiary_liveness_transitions_total{kind=\"hive\",event=\"offline\"} ")?
        + metric(port, "apiary_liveness_transitions_total{kind=\"worker\",event=\"offline\"} ")?;
    let deaf = metric(port, "apiary_queen_deaf_seconds_total ")?;
    Ok((offline, 200 * 6, deaf))
}

pub fn run_bench(args: BenchArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    run(cargo().args(["build", "--release", "-p", "queen-cli", "-p", "sim"]))?;
    let bin = target_dir().join("release");
    let mut rows: Vec<(String, String, String)> = Vec::new();
    let mut row = |what: &str, value: String, target: &str| {
        eprintln!("  {what}: {value}  (target {target})");
        rows.push((what.to_string(), value, target.to_string()));
    };
    let stalled = |row: &mut dyn FnMut(&str, String, &str)| -> anyhow::Result<()> {
        let (offline, nodes, deaf) = stalled_queen(&bin)?;
        row(
            "false offline, queen paused 10 s past a 6 s threshold (200 hives × 5 workers at 2 s)",
            format!("{offline:.0} of {nodes} (the queen counted {deaf:.1} s not listening)"),
            "0",
        );
        Ok(())
    };
    if args.only_stall {
        return stalled(&mut row);
    }
    stalled(&mut row)?;

    // 1. Ingest at saturation: the empty handler, then the queen, same load.
    let flood = |url: String| -> anyhow::Result<Value> {
        sim(
            &bin,
            &["flood", "--url", &url, "--connections", "64", "--duration", "10s", "--ids-per-connection", "100"]
                .map(String::from),
        )
    };
    let port = free_port()?;
    let baseline = Stopped(
        Command::new(bin.join("apiary-sim")).args(["baseline", "--listen", &format!("127.0.0.1:{port}")]).spawn()?,
    );
    wait_for(port)?;
    let base = flood(format!("http://127.0.0.1:{port}/v1/hive-heartbeat"))?;
    drop(baseline);
    let port = free_port()?;
    let q = queen(&bin, port, &["--heartbeat-rate-limit", "1000000"])?;
    let ingest = flood(format!("http://127.0.0.1:{port}/v1/hive-heartbeat"))?;
    drop(q);
    let (base_rate, queen_rate) = (f(&base, "/per_second"), f(&ingest, "/per_second"));
    // A queen that refuses the simulated heartbeats answers fast: that is not ingest.
    anyhow::ensure!(
        f(&ingest, "/errors") <= f(&ingest, "/sent").max(1.0) * 0.01,
        "the queen refused {} of the flood's heartbeats",
        f(&ingest, "/errors")
    );
    row(
        "ingest, empty-handler baseline (64 connections, keep-alive)",
        format!("{base_rate:.0} req/s, p99 {:.2} ms", f(&base, "/latency_ms/p99")),
        "-",
    );
    row(
        "ingest, queen (same load)",
        format!(
            "{queen_rate:.0} heartbeats/s, p99 {:.2} ms, {} errors",
            f(&ingest, "/latency_ms/p99"),
            f(&ingest, "/errors")
        ),
        ">= 50 000/s",
    );
    row("ingest ratio queen / baseline", format!("{:.2}", queen_rate / base_rate), ">= 0.7");

    // 2. The full fleet at its real interval: CPU, latency, false offline, memory, snapshots.
    let port = free_port()?;
    let q = queen(&bin, port, &[])?;
    let rss_empty = rss(&q.0)?;
    let fleet_args: Vec<String> = vec![
        "fleet".into(),
        "--queen".into(),
        format!("http://127.0.0.1:{port}"),
        "--hives".into(),
        args.hives.to_string(),
        "--workers-per-hive".into(),
        args.workers_per_hive.to_string(),
        "--interval".into(),
        "10s".into(),
        "--duration".into(),
        // The fleet beats through the fan-out that follows the steady part (two runs of
        // 16 s): a fleet that stopped at the end of the steady part went silent for real,
        // and its nodes' offline transitions were once read as the fan-out's false deaths.
        format!("{}s", args.steady_seconds + FAN_OUT_SECONDS),
        "--senders".into(),
        "128".into(),
    ];
    let fleet_bin = bin.clone();
    let fleet = std::thread::spawn(move || sim(&fleet_bin, &fleet_args));
    // Measure CPU after the first interval, when every node has joined.
    std::thread::sleep(Duration::from_secs(15));
    let (cpu0, t0) = (cpu_seconds(&q.0)?, Instant::now());
    std::thread::sleep(Duration::from_secs(args.steady_seconds.saturating_sub(15).max(5)));
    let (cpu1, t1) = (cpu_seconds(&q.0)?, Instant::now());
    let rss_full = rss(&q.0)?;
    let offline_total = || -> anyhow::Result<f64> {
        Ok(metric(port, "apiary_liveness_transitions_total{kind=\"hive\",event=\"offline\"} ")?
            + metric(port, "apiary_liveness_transitions_total{kind=\"worker\",event=\"offline\"} ")?)
    };
    let offline_steady = offline_total()?;
    let deaf_before_fan_out = metric(port, "apiary_queen_deaf_seconds_total ")?;
    // 3. Fan-out: many stream clients on the same queen (the fleet still beating).
    let mut fan = |detail: &str, clients: usize| -> anyhow::Result<()> {
        let mut a: Vec<String> = vec!["streams".into(), "--queen".into(), format!("http://127.0.0.1:{port}")];
        a.extend([
            "--clients".into(),
            clients.to_string(),
            "--duration".into(),
            "16s".into(),
            "--detail".into(),
            detail.into(),
        ]);
        let sim_bin = bin.clone();
        let handle = std::thread::spawn(move || sim_at(&sim_bin, &a, 19));
        std::thread::sleep(Duration::from_secs(10));
        let rss_streaming = rss(&q.0)?;
        let s = handle.join().map_err(|_| anyhow::anyhow!("streams thread panicked"))??;
        let shed = metric(port, "apiary_stream_clients_shed_total ")?;
        row(
            &format!("fan-out: {clients} stream clients, detail={detail}"),
            format!(
                "{:.0} connected ({shed:.0} shed so far, told to read ?delta=true), lag p50 {:.0} ms / p99 {:.0} ms, queen RSS {:.0} MB",
                f(&s, "/connected"),
                f(&s, "/lag_ms/p50"),
                f(&s, "/lag_ms/p99"),
                rss_streaming as f64 / 1e6
            ),
            "p99 <= 500 ms, RSS <= 300 MB",
        );
        Ok(())
    };
    fan("summary", args.stream_clients)?;
    fan("full", 20)?;
    let fleet = fleet.join().map_err(|_| anyhow::anyhow!("fleet thread panicked"))??;
    let nodes = args.hives * (1 + args.workers_per_hive);
    anyhow::ensure!(
        f(&fleet, "/errors") <= f(&fleet, "/sent").max(1.0) * 0.01,
        "the queen refused {} of the fleet's heartbeats",
        f(&fleet, "/errors")
    );
    let offline_after_fan_out = offline_total()? - offline_steady;
    let build_sum = metric(port, "apiary_snapshot_build_seconds_sum ")?;
    let build_count = metric(port, "apiary_snapshot_build_seconds_count ")?;
    let snapshot_bytes = metric(port, "apiary_snapshot_bytes ")?;
    let cpu_percent = (cpu1 - cpu0) / (t1 - t0).as_secs_f64() * 100.0;
    row(
        &format!("fleet: {} hives + {} workers at 10 s", args.hives, args.hives * args.workers_per_hive),
        format!(
            "{:.0} heartbeats/s sent, {} errors; sends left late against their schedule p99 {:.0} ms, max {:.1} s",
            f(&fleet, "/per_second"),
            f(&fleet, "/errors"),
            f(&fleet, "/late_ms/p99"),
            f(&fleet, "/late_ms/max") / 1000.0
        ),
        "~11 000/s",
    );
    row("fleet: queen CPU (steady part)", format!("{cpu_percent:.0} % of one core"), "<= 50 %");
    row(
        "fleet: ingest latency p50 / p99",
        format!("{:.2} / {:.2} ms", f(&fleet, "/latency_ms/p50"), f(&fleet, "/latency_ms/p99")),
        "p99 <= 5 ms",
    );
    row("fleet: false offline transitions, steady state", format!("{offline_steady:.0}"), "0");
    row(
        "fleet: false offline transitions while the fan-out loads the machine",
        format!(
            "{offline_after_fan_out:.0} (the queen counted {:.1} s not listening meanwhile)",
            metric(port, "apiary_queen_deaf_seconds_total ")? - deaf_before_fan_out
        ),
        "0",
    );
    let registry = sim(&bin, &["registry-memory".into(), "--entries".into(), "100000".into()])?;
    row(
        "memory per registry entry (the registry alone, 100 000 workers in-process)",
        format!("{:.0} bytes", f(&registry, "/bytes_per_entry")),
        "<= 1 KiB",
    );
    row(
        "memory per node, whole queen (RSS growth / nodes: registries, snapshots, buffers)",
        format!(
            "{:.0} bytes ({:.0} MB for {nodes} nodes)",
            (rss_full.saturating_sub(rss_empty)) as f64 / nodes as f64,
            rss_full as f64 / 1e6
        ),
        "-",
    );
    row(
        "snapshot build + serialize, full cluster",
        format!(
            "{:.1} ms mean over {build_count:.0} ticks ({:.1} MB)",
            build_sum / build_count.max(1.0) * 1000.0,
            snapshot_bytes / 1e6
        ),
        "<= 50 ms",
    );

    drop(q);

    // 4. In-process micro-benchmarks (criterion), each next to its baseline.
    for (package, bench) in [("contract", "snapshot"), ("heartbeat-registry", "upsert"), ("hive", "logs")] {
        run(cargo().args([
            "bench",
            "-p",
            package,
            "--bench",
            bench,
            "--",
            "--warm-up-time",
            "1",
            "--measurement-time",
            "3",
        ]))?;
    }
    let ms = |path: &str| criterion_ms(path);
    let ids = ms("snapshot_110k_nodes/baseline_serialize_ids_only")?;
    let whole = ms("snapshot_110k_nodes/serialize_whole")?;
    row(
        "criterion: serialize a 110 000-node snapshot whole (in isolation)",
        format!("{whole:.1} ms ({:.1}x the {ids:.1} ms of serializing the node ids alone)", whole / ids),
        "<= 50 ms",
    );
    row(
        "criterion: delta to the next snapshot (half the nodes beat): diff / serialize / apply",
        format!(
            "{:.1} / {:.1} / {:.1} ms",
            ms("snapshot_110k_nodes/delta_to")?,
            ms("snapshot_110k_nodes/delta_serialize")?,
            ms("snapshot_110k_nodes/apply_delta")?
        ),
        "-",
    );
    row(
        "criterion: summary snapshot serialize",
        format!("{:.4} ms", ms("snapshot_110k_nodes/summary_serialize")?),
        "<= 5 ms",
    );
    let (registry, dashmap) =
        (ms("upsert_1_thread/registry/100000")?, ms("upsert_1_thread/dashmap_insert_baseline/100000")?);
    row(
        "criterion: 100 000 registry upserts, one thread",
        format!(
            "{registry:.1} ms ({:.0} k/s; bare DashMap insert {dashmap:.1} ms, ratio {:.2})",
            100_000.0 / registry,
            dashmap / registry
        ),
        "-",
    );

    let (copy, capture) = (ms("log_capture_64mib/baseline_copy_to_file")?, ms("log_capture_64mib/capture")?);
    row(
        "criterion: a replica's output kept by its hive (100-byte lines, timestamped, rotated)",
        format!(
            "{:.0} MiB/s ({:.0} k lines/s; copying the bytes to a file as they are {:.0} MiB/s, ratio {:.2})",
            64_000.0 / capture,
            64.0 * 1024.0 * 1024.0 / 100.0 / capture,
            64_000.0 / copy,
            copy / capture
        ),
        "-",
    );

    let took = started.elapsed();
    let mut table = String::from("| measurement | result | target |\n|---|---|---|\n");
    for (what, value, target) in &rows {
        let _ = writeln!(table, "| {what} | {value} | {target} |");
    }
    println!("\n{table}\n(bench took {:.0} s)", took.as_secs_f64());
    if !args.no_write {
        let path = root().join("BENCHMARKS.md");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let machine = machine();
        let updated =
            replace_between(&text, "<!-- bench:begin -->", "<!-- bench:end -->", &format!("\n{machine}\n\n{table}"));
        std::fs::write(&path, updated)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// The mean of a criterion benchmark, in milliseconds.
fn criterion_ms(id: &str) -> anyhow::Result<f64> {
    let path = target_dir().join("criterion").join(id).join("new/estimates.json");
    let estimates: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).with_context(|| path.display().to_string())?)?;
    Ok(f(&estimates, "/mean/point_estimate") / 1e6)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|k| k.parse::<f64>().ok()))
        .map(|kb| format!("{:.0} GiB", kb / 1024.0 / 1024.0))
        .unwrap_or_default();
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!(
        "Measured {date} on {cores} cores ({cpu}), {mem}; queen, load generator and baseline on the same machine; release build."
    )
}

fn replace_between(text: &str, begin: &str, end: &str, with: &str) -> String {
    match (text.find(begin), text.find(end)) {
        (Some(a), Some(b)) if a < b => format!("{}{begin}{with}{}", &text[..a], &text[b..]),
        _ => format!("{text}\n{begin}{with}{end}\n"),
    }
}
