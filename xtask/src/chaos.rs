//! `cargo xtask chaos`: three queens on etcd, hives running a deployment, a steady job
//! load, and faults injected one after another — `kill -9` of the leader, of a follower, of
//! a hive, of a worker; SIGSTOP/SIGCONT of the leader; a hive cut off from the queens in a
//! network namespace and healed; etcd killed and restarted. After each fault it waits for
//! the cluster to converge and counts what a fault must never cost: nodes wrongly declared
//! offline, replicas lost, duplicated or moved, jobs lost. Prints a table; fails unless
//! every loss count is zero.
//!
//! Jobs: each is submitted until it is answered, through any queen (a follower's redirect
//! is followed, a queen that does not answer is skipped, `no_leader` waits), always under
//! the same idempotency key; a job with no answer after [`JOB_DEADLINE`] is lost. The
//! workers log every keyed run (at debug, for the hives' log files), so a job that ran
//! more than once is counted as duplicated, from what the workers did rather than from
//! what the client saw.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

#[derive(clap::Args)]
pub struct ChaosArgs {
    /// Times the whole list of faults is run.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Leadership lease of the queens.
    #[arg(long, default_value_t = 2)]
    lease_ttl_secs: u64,
    /// Only the faults whose name contains this (`lone` for the lone queen's).
    #[arg(long)]
    only: Option<String>,
}

impl ChaosArgs {
    /// One round with a 2 s lease: what CI runs.
    pub fn bounded() -> Self {
        Self { rounds: 1, lease_ttl_secs: 2, only: None }
    }
}

const QUEENS: usize = 3;
const REPLICAS: usize = 4;
const HEARTBEAT: &str = "500ms";
const JOB_DEADLINE: Duration = Duration::from_secs(60);
/// The log filter under which workers log each keyed job they run.
const WORKER_RUNS: &str = "info,worker=debug";
const CONVERGE: Duration = Duration::from_secs(60);
const NETNS: &str = "apiary-chaos";
const HOST_IP: &str = "10.231.0.1";
const NS_IP: &str = "10.231.0.2";

/// A process of the cluster, restartable with the same arguments.
struct Proc {
    name: String,
    program: Vec<String>,
    log: PathBuf,
    /// `RUST_LOG` for the process and whatever it starts.
    filter: &'static str,
    child: Option<Child>,
}

impl Proc {
    fn start(name: &str, program: Vec<String>, logs: &Path) -> anyhow::Result<Self> {
        Self::start_logging(name, program, logs, "warn")
    }

    fn start_logging(name: &str, program: Vec<String>, logs: &Path, filter: &'static str) -> anyhow::Result<Self> {
        let mut p = Self { name: name.into(), program, log: logs.join(format!("{name}.log")), filter, child: None };
        p.restart()?;
        Ok(p)
    }

    fn restart(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let mut cmd = Command::new(&self.program[0]);
        cmd.args(&self.program[1..]).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        // Plain log lines (tracing honours NO_COLOR), so the run log can be read back.
        cmd.env("RUST_LOG", self.filter).env("RUST_BACKTRACE", "0").env("NO_COLOR", "1");
        self.child = Some(cmd.spawn().with_context(|| format!("starting {}", self.name))?);
        Ok(())
    }

    fn pid(&self) -> Option<Pid> {
        self.child.as_ref().map(|c| Pid::from_raw(c.id() as i32))
    }

    fn signal(&self, signal: Signal) {
        if let Some(pid) = self.pid() {
            let _ = kill(pid, signal);
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn stop(&mut self) {
        self.stop_within(Duration::from_secs(10));
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    fn stop_within(&mut self, grace: Duration) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The network namespace the edge hive runs in, joined to the host by a veth pair whose
/// host end can be taken down (a partition) and up again.
struct Netns;

impl Netns {
    fn ip(args: &[&str]) -> anyhow::Result<()> {
        let out = Command::new("ip").args(args).output().context("running ip (Debian iproute2)")?;
        if !out.status.success() {
            bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }

    fn create() -> anyhow::Result<Self> {
        Self::remove();
        Self::ip(&["netns", "add", NETNS])?;
        let made = (|| {
            Self::ip(&["link", "add", "apc0", "type", "veth", "peer", "name", "apc1"])?;
            Self::ip(&["link", "set", "apc1", "netns", NETNS])?;
            Self::ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", "apc0"])?;
            Self::ip(&["link", "set", "apc0", "up"])?;
            Self::ip(&["-n", NETNS, "addr", "add", &format!("{NS_IP}/24"), "dev", "apc1"])?;
            Self::ip(&["-n", NETNS, "link", "set", "apc1", "up"])?;
            Self::ip(&["-n", NETNS, "link", "set", "lo", "up"])
        })();
        made.map(|()| Self).inspect_err(|_| Self::remove())
    }

    fn cut(&self, cut: bool) -> anyhow::Result<()> {
        Self::ip(&["link", "set", "apc0", if cut { "down" } else { "up" }])
    }

    fn remove() {
        let _ = Command::new("ip").args(["link", "del", "apc0"]).output();
        let _ = Command::new("ip").args(["netns", "del", NETNS]).output();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        Self::remove();
    }
}

/// Plain HTTP to the queens; redirects are followed by hand, as the queen client does.
#[derive(Clone)]
struct Http {
    agent: ureq::Agent,
}

struct Answer {
    status: u16,
    location: Option<String>,
    body: Value,
}

impl Http {
    fn new() -> Self {
        Self::with_timeout(Duration::from_secs(5))
    }

    fn with_timeout(timeout: Duration) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .max_redirects(0)
            .http_status_as_error(false)
            .build()
            .into();
        Self { agent }
    }

    fn call(&self, method: &str, url: &str, body: Option<&Value>) -> anyhow::Result<Answer> {
        self.call_keyed(method, url, body, None)
    }

    /// A call with an idempotency key.
    fn call_keyed(&self, method: &str, url: &str, body: Option<&Value>, key: Option<&str>) -> anyhow::Result<Answer> {
        let mut post = self.agent.post(url);
        if let Some(k) = key {
            post = post.header("idempotency-key", k);
        }
        let mut resp = match (method, body) {
            ("GET", _) => self.agent.get(url).call()?,
            ("DELETE", _) => self.agent.delete(url).call()?,
            ("PATCH", Some(b)) => self.agent.patch(url).content_type("application/json").send(b.to_string())?,
            (_, Some(b)) => post.content_type("application/json").send(b.to_string())?,
            (_, None) => post.send_empty()?,
        };
        let status = resp.status().as_u16();
        let location = resp.headers().get("location").and_then(|v| v.to_str().ok()).map(str::to_string);
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        Ok(Answer { status, location, body: serde_json::from_str(&text).unwrap_or(Value::Null) })
    }

    /// A GET answered by any queen that answers.
    fn get_any(&self, queens: &[String], path: &str) -> Option<Value> {
        queens
            .iter()
            .find_map(|q| self.call("GET", &format!("{q}{path}"), None).ok().filter(|a| a.status == 200))
            .map(|a| a.body)
    }

    /// A write sent to the leader, following a follower's redirect.
    fn post_leader(&self, queens: &[String], path: &str, body: &Value) -> anyhow::Result<Answer> {
        self.send_leader("POST", queens, path, body)
    }

    fn send_leader(&self, method: &str, queens: &[String], path: &str, body: &Value) -> anyhow::Result<Answer> {
        let mut last = None;
        for q in queens {
            let mut url = format!("{q}{path}");
            for _ in 0..3 {
                match self.call(method, &url, Some(body)) {
                    Ok(a) if a.status == 307 => match &a.location {
                        Some(l) => url = l.clone(),
                        None => break,
                    },
                    Ok(a) if a.status == 503 && a.body["code"] == "no_leader" => {
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    Ok(a) => return Ok(a),
                    Err(e) => {
                        last = Some(e);
                        break;
                    }
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no queen took {path}")))
    }
}

#[derive(Default)]
struct JobCounts {
    submitted: AtomicU64,
    completed: AtomicU64,
    lost: AtomicU64,
    /// Sent again after an attempt that got no answer (the job may have run then).
    resubmitted: AtomicU64,
    /// Attempts refused before anything ran (no worker free, shutting down, rate limited).
    refused_attempts: AtomicU64,
}

/// Submits sleep jobs one after another until `stop`, each until it is answered, each
/// under its own key (`chaos-<load>-<n>`).
fn job_load(load: usize, http: Http, queens: Vec<String>, counts: Arc<JobCounts>, stop: Arc<AtomicBool>) {
    let job = json!({"kind": "sleep", "ms": 30});
    let mut current = 0usize;
    for n in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let key = format!("chaos-{load}-{n}");
        counts.submitted.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let mut unanswered = false;
        let mut url = format!("{}/v1/jobs", queens[current % queens.len()]);
        loop {
            if started.elapsed() > JOB_DEADLINE {
                counts.lost.fetch_add(1, Ordering::Relaxed);
                break;
            }
            if unanswered {
                counts.resubmitted.fetch_add(1, Ordering::Relaxed);
            }
            match http.call_keyed("POST", &url, Some(&job), Some(&key)) {
                Ok(a) if a.status == 200 => {
                    counts.completed.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Ok(a) if a.status == 307 => {
                    unanswered = false;
                    if let Some(l) = a.location {
                        url = l;
                    }
                    continue;
                }
                Ok(a) if a.status == 502 => unanswered = true,
                Ok(_) => {
                    unanswered = false;
                    counts.refused_attempts.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    // No answer: this queen is gone or frozen; the next one redirects.
                    unanswered = true;
                    current += 1;
                    url = format!("{}/v1/jobs", queens[current % queens.len()]);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Every liveness and placement event any leader published, deduplicated.
#[derive(Default)]
struct Events {
    seen: BTreeSet<(String, String, String)>,
    list: Vec<(Instant, Value)>,
}

fn observe(http: Http, queens: Vec<String>, events: Arc<Mutex<Events>>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        if let Some(snapshot) = http.get_any(&queens, "/v1/snapshot") {
            let mut ev = events.lock().unwrap_or_else(|p| p.into_inner());
            for e in snapshot["events"].as_array().cloned().unwrap_or_default() {
                let key = (e["id"].to_string(), e["kind"].to_string(), e["at"].to_string());
                if ev.seen.insert(key) {
                    ev.list.push((Instant::now(), e));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

struct Cluster {
    http: Http,
    /// For asking who leads: short, so a frozen queen does not hold up the measurement.
    quick: Http,
    queens: Vec<Proc>,
    urls: Vec<String>,
    hives: Vec<Proc>,
    /// `None` for the lone queen on its embedded store.
    etcd: Option<etcd_process::Etcd>,
    netns: Option<Netns>,
    worker_bin: PathBuf,
    logs: PathBuf,
    /// The deployment's replica count as last set (a "then scale" fault changes it).
    replicas: usize,
}

/// Who leads according to each queen that answers: (queen index, leader id, term).
fn leader_of(http: &Http, url: &str) -> Option<(String, u64, bool)> {
    let a = http.call("GET", &format!("{url}/v1/cluster/leader"), None).ok()?;
    let l = &a.body;
    Some((l["leader"]["id"].as_str()?.to_string(), l["term"].as_u64()?, l["is_self"].as_bool()?))
}

impl Cluster {
    /// The index of the queen that says it leads.
    fn leader(&self) -> Option<(usize, u64)> {
        self.urls.iter().enumerate().find_map(|(i, u)| match leader_of(&self.quick, u) {
            Some((_, term, true)) => Some((i, term)),
            _ => None,
        })
    }

    fn wait_leader(&self, not: Option<usize>, timeout: Duration) -> Option<(usize, u64)> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some((i, t)) = self.leader().filter(|(i, _)| Some(*i) != not) {
                return Some((i, t));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Worker processes of this cluster running on the machine.
    fn worker_processes(&self) -> usize {
        let Ok(dir) = std::fs::read_dir("/proc") else { return 0 };
        dir.flatten()
            .filter(|e| e.file_name().to_string_lossy().chars().all(|c| c.is_ascii_digit()))
            .filter(|e| std::fs::read_link(e.path().join("exe")).is_ok_and(|x| x == self.worker_bin))
            .count()
    }

    /// Converged: every live queen names the same leader, every hive is online, every
    /// replica placed once, running and available, one process each.
    fn converged(&self) -> Result<(), String> {
        let leaders: BTreeSet<String> =
            self.urls.iter().filter_map(|u| leader_of(&self.http, u)).map(|(id, _, _)| id).collect();
        if leaders.len() != 1 {
            return Err(format!("queens name leaders {leaders:?}"));
        }
        let snapshot = self.http.get_any(&self.urls, "/v1/snapshot").ok_or("no snapshot")?;
        let hives = self.hives.len() as u64;
        if snapshot["hives_online"].as_u64() != Some(hives) {
            return Err(format!("{} of {hives} hives online", snapshot["hives_online"]));
        }
        self.running(&snapshot)
    }

    /// The replicas as set: every one placed once, available, one process each.
    fn running(&self, snapshot: &Value) -> Result<(), String> {
        let replicas = self.replicas;
        if snapshot["workers_available"].as_u64() != Some(replicas as u64) {
            return Err(format!("{} of {replicas} workers available", snapshot["workers_available"]));
        }
        let assignments = self.http.get_any(&self.urls, "/v1/assignments").ok_or("no assignments")?;
        let placed: Vec<&Value> =
            assignments.as_array().map(|a| a.iter().filter(|a| a["hive"].is_string()).collect()).unwrap_or_default();
        if placed.len() != replicas {
            return Err(format!("{} of {replicas} replicas placed", placed.len()));
        }
        let processes = self.worker_processes();
        if processes != replicas {
            return Err(format!("{processes} worker processes for {replicas} replicas"));
        }
        Ok(())
    }

    fn wait_converged(&self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let mut why = String::new();
        while started.elapsed() < CONVERGE {
            match self.converged() {
                Ok(()) => return Ok(started.elapsed()),
                Err(e) => why = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("did not converge in {CONVERGE:?}: {why}")
    }

    fn stop_all(&mut self) {
        for h in &mut self.hives {
            h.stop();
        }
        for q in &mut self.queens {
            q.stop();
        }
    }

    /// Declares a deployment through the leader.
    fn deploy(&self, spec: &Value) -> anyhow::Result<()> {
        let a = self.http.post_leader(&self.urls, "/v1/deployments", spec)?;
        if a.status >= 300 {
            bail!("deploy refused: {} {}", a.status, a.body);
        }
        Ok(())
    }

    /// Each worker process of this cluster by the replica it runs (`APIARY_NAME`).
    fn worker_pids(&self) -> BTreeMap<String, i32> {
        worker_processes(&self.worker_bin).into_iter().map(|(pid, name)| (name, pid.as_raw())).collect()
    }

    /// Hives the queens hold ineligible for placement.
    fn ineligible(&self) -> Vec<String> {
        let snapshot = self.http.get_any(&self.urls, "/v1/snapshot").unwrap_or(Value::Null);
        snapshot["hives"]
            .as_array()
            .map(|hives| {
                hives
                    .iter()
                    .filter(|h| h["eligible"] == false)
                    .filter_map(|h| h["id"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The epoch of hive `name`'s process as the queens last heard it.
    fn hive_epoch(&self, name: &str) -> Option<u64> {
        self.http.get_any(&self.urls, &format!("/v1/hives/{name}")).and_then(|h| h["epoch"].as_u64())
    }

    /// Waits until hive `name` is back as a process later than `before`, online, steady
    /// and eligible.
    fn wait_hive_back(&self, name: &str, before: Option<u64>) -> anyhow::Result<()> {
        let deadline = Instant::now() + CONVERGE;
        while Instant::now() < deadline {
            let h = self.http.get_any(&self.urls, &format!("/v1/hives/{name}")).unwrap_or(Value::Null);
            let back = h["epoch"].as_u64() > before
                && h["liveness"] == "online"
                && h["flapping"] == false
                && h["eligible"] == true;
            if back {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("hive {name} did not come back online and eligible")
    }

    /// Slot → hive of every placed replica.
    fn placement(&self) -> BTreeMap<String, String> {
        self.http
            .get_any(&self.urls, "/v1/assignments")
            .and_then(|a| a.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|a| {
                Some((format!("{}-{}", a["deployment"].as_str()?, a["slot"]), a["hive"].as_str()?.to_string()))
            })
            .collect()
    }
}

/// One row of the report.
struct Row {
    fault: String,
    failover: Option<Duration>,
    converged: Result<Duration, String>,
    false_offline: Vec<String>,
    moved: usize,
    /// The fault moves replicas on purpose (a hive draining on its way down).
    planned_moves: bool,
    /// Worker processes that ended though the fault did not ask for it.
    stopped_unasked: Vec<String>,
    /// Hives left out of placement afterwards.
    ineligible: Vec<String>,
    note: String,
}

impl Row {
    fn bad(&self) -> bool {
        self.converged.is_err()
            || !self.false_offline.is_empty()
            || (self.moved > 0 && !self.planned_moves)
            || !self.stopped_unasked.is_empty()
            || !self.ineligible.is_empty()
    }
}

pub fn run(args: ChaosArgs) -> anyhow::Result<()> {
    let dir = crate::build_binaries()?;
    crate::web::ensure_apt(&["etcd-server", "iproute2"])?;
    let logs = crate::target_dir().join("chaos");
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs)?;
    eprintln!("xtask chaos: logs in {}", logs.display());

    // The edge hive runs in a network namespace when the machine allows one; the queens
    // then listen on every interface and advertise the veth address both sides reach.
    let netns = match Netns::create() {
        Ok(n) => Some(n),
        Err(e) => {
            eprintln!("xtask chaos: no network namespace ({e:#}); the partition fault is skipped");
            None
        }
    };
    let host = if netns.is_some() { HOST_IP } else { "127.0.0.1" };
    let etcd = etcd_process::Etcd::start_in_dir(logs.join("etcd"))?;
    let ports: Vec<u16> = (0..QUEENS).map(|_| etcd_process::free_port()).collect::<anyhow::Result<_>>()?;
    let urls: Vec<String> = ports.iter().map(|p| format!("http://{host}:{p}")).collect();
    let queen_bin = dir.join("queen").to_string_lossy().into_owned();
    let ttl = format!("{}s", args.lease_ttl_secs);
    let mut queens = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let listen = if netns.is_some() { format!("0.0.0.0:{port}") } else { format!("127.0.0.1:{port}") };
        let mut program = vec![
            queen_bin.clone(),
            "serve".into(),
            "--listen".into(),
            listen,
            "--advertise-url".into(),
            urls[i].clone(),
            "--store".into(),
            format!("etcd://{}", etcd.endpoint()),
            "--lease-ttl".into(),
            ttl.clone(),
            "--heartbeat-interval".into(),
            HEARTBEAT.into(),
            "--snapshot-interval".into(),
            "500ms".into(),
            "--orphan-grace".into(),
            "5s".into(),
            "--data-dir".into(),
            logs.join(format!("queen-{i}")).to_string_lossy().into_owned(),
        ];
        // The chaos cluster runs without tokens; with a namespaced hive the queens listen
        // beyond loopback (on this machine's own veth), which a queen refuses unless told.
        if netns.is_some() {
            program.push("--insecure-no-auth".into());
        }
        queens.push(Proc::start(&format!("queen-{i}"), program, &logs)?);
    }
    let queen_list = urls.join(",");
    let hive_bin = dir.join("hive").to_string_lossy().into_owned();
    let hive = |name: &str, zone: &str| -> Vec<String> {
        [&hive_bin, "--queen", &queen_list, "--name", name, "--heartbeat-interval", HEARTBEAT]
            .into_iter()
            .map(String::from)
            .chain(
                ["--max-workers", "4", "--drain-on-shutdown", "30s", "--worker-stop-timeout", "2s"].map(String::from),
            )
            .chain(["--label".into(), format!("zone={zone}")])
            // Its own cgroup names: a restarted hive kills what its killed run left there,
            // and must never meet another cluster's on this machine.
            .chain(["--cgroup".into(), format!("apiary-chaos-{}-{name}", std::process::id())])
            // The workers' output goes to the hive's, where the run log below reads every
            // keyed run (a hive's own log files drop a replica's once it is gone).
            .chain(["--log-dir", "off"].map(String::from))
            .collect()
    };
    // The deployment's workers run on these two, and log every keyed job they run here.
    let mut hives = vec![
        Proc::start_logging("hive-core-1", hive("core-1", "core"), &logs, WORKER_RUNS)?,
        Proc::start_logging("hive-core-2", hive("core-2", "core"), &logs, WORKER_RUNS)?,
    ];
    if netns.is_some() {
        let program =
            ["ip", "netns", "exec", NETNS].into_iter().map(String::from).chain(hive("edge", "edge")).collect();
        hives.push(Proc::start("hive-edge", program, &logs)?);
    }
    let worker_bin = dir.join("worker").canonicalize()?;
    let mut cluster = Cluster {
        http: Http::new(),
        quick: Http::with_timeout(Duration::from_millis(300)),
        queens,
        urls,
        hives,
        etcd: Some(etcd),
        netns,
        worker_bin,
        logs,
        replicas: REPLICAS,
    };

    let result = chaos(&mut cluster, &args);
    // Nothing left to move: a hive stopping at the end does not wait out a drain.
    let _ = cluster.http.send_leader("DELETE", &cluster.urls.clone(), "/v1/deployments/chaos", &json!({}));
    cluster.stop_all();
    let logs = cluster.logs.clone();
    drop(cluster);
    let mut findings = result?;
    if findings.failure.is_none() && args.only.as_ref().is_none_or(|only| "lone queen".contains(only.as_str())) {
        let counts = Arc::clone(&findings.counts);
        match lone_queen(&dir, &logs, counts) {
            Ok(rows) => {
                let bad = rows.iter().any(Row::bad);
                findings.rows.extend(rows);
                if bad {
                    findings.failure = Some(anyhow::anyhow!("a lone-queen fault went wrong (table above)"));
                }
            }
            Err(e) => findings.failure = Some(e.context("the lone queen's faults")),
        }
    }
    judge(findings, &logs)
}

/// What the faults found: the table's rows, the jobs' fate, and the error that stopped
/// the run early, if one did.
struct Findings {
    rows: Vec<Row>,
    counts: Arc<JobCounts>,
    failure: Option<anyhow::Error>,
}

fn chaos(cluster: &mut Cluster, args: &ChaosArgs) -> anyhow::Result<Findings> {
    let ttl = Duration::from_secs(args.lease_ttl_secs);
    cluster.wait_leader(None, Duration::from_secs(20)).context("no queen was elected")?;
    let spec = json!({
        "name": "chaos",
        "command": cluster.worker_bin.to_string_lossy(),
        "args": ["--heartbeat-interval", HEARTBEAT],
        "replicas": REPLICAS,
        "labels_required": {"zone": "core"},
    });
    let deployed = cluster.http.post_leader(&cluster.urls.clone(), "/v1/deployments", &spec)?;
    if deployed.status >= 300 {
        bail!("deploy refused: {} {}", deployed.status, deployed.body);
    }
    let first = cluster.wait_converged()?;
    eprintln!("xtask chaos: cluster up and converged ({:.1} s)", first.as_secs_f64());

    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(JobCounts::default());
    let events = Arc::new(Mutex::new(Events::default()));
    let mut threads = Vec::new();
    for load in 0..2 {
        let (http, queens, counts, stop) =
            (cluster.http.clone(), cluster.urls.clone(), Arc::clone(&counts), Arc::clone(&stop));
        threads.push(std::thread::spawn(move || job_load(load, http, queens, counts, stop)));
    }
    {
        let (http, queens, events, stop) =
            (cluster.http.clone(), cluster.urls.clone(), Arc::clone(&events), Arc::clone(&stop));
        threads.push(std::thread::spawn(move || observe(http, queens, events, stop)));
    }
    std::thread::sleep(Duration::from_secs(2));

    let mut rows = Vec::new();
    let mut failure = None;
    'rounds: for round in 1..=args.rounds {
        for fault in FAULTS {
            if *fault == Fault::Partition && cluster.netns.is_none() {
                continue;
            }
            if args.only.as_ref().is_some_and(|only| !fault.name().contains(only.as_str())) {
                continue;
            }
            eprintln!("xtask chaos: round {round}: {}", fault.name());
            let row = match inject(cluster, *fault, ttl, &events) {
                Ok(row) => row,
                Err(e) => {
                    failure = Some(e.context(format!("round {round}, {}", fault.name())));
                    break 'rounds;
                }
            };
            let bad = row.bad();
            rows.push(row);
            if bad {
                break 'rounds;
            }
        }
    }
    // Let the jobs still being retried finish or time out.
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    Ok(Findings { rows, counts, failure })
}

/// The table from every row, and the verdict: no lost or twice-run job, no bad row.
fn judge(findings: Findings, logs: &Path) -> anyhow::Result<()> {
    let Findings { rows, counts, failure } = findings;
    let runs = keyed_runs(logs)?;
    let duplicated: u64 = runs.values().map(|&n| n.saturating_sub(1)).sum();
    let report = render(&rows, &counts, runs.len(), duplicated);
    println!("{report}");
    let _ = std::fs::write(crate::target_dir().join("chaos").join("report.md"), &report);
    if let Some(e) = failure {
        return Err(e);
    }
    // Every answered job ran somewhere: fewer runs than answers means the run log is not
    // being read, and the duplicate count above would be a zero that proves nothing.
    if (runs.len() as u64) < counts.completed.load(Ordering::Relaxed) {
        bail!(
            "the workers logged {} keyed runs for {} answered jobs",
            runs.len(),
            counts.completed.load(Ordering::Relaxed)
        );
    }
    let losses = counts.lost.load(Ordering::Relaxed) + duplicated;
    if losses > 0 || rows.iter().any(Row::bad) {
        bail!("chaos found losses or duplicates (table above)");
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    KillLeader,
    KillFollower,
    FreezeLeader,
    KillHive,
    KillWorker,
    Partition,
    RestartEtcd,
    TransferThenScale,
    FreezeThenScale,
    LeaseLossThenScale,
    RollingRestartHives,
    RollingRestartQueens,
}

const FAULTS: &[Fault] = &[
    Fault::KillLeader,
    Fault::KillFollower,
    Fault::FreezeLeader,
    Fault::KillHive,
    Fault::KillWorker,
    Fault::Partition,
    Fault::RestartEtcd,
    Fault::TransferThenScale,
    Fault::FreezeThenScale,
    Fault::LeaseLossThenScale,
    Fault::RollingRestartHives,
    Fault::RollingRestartQueens,
];

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::KillLeader => "kill -9 the leader",
            Fault::KillFollower => "kill -9 a follower",
            Fault::FreezeLeader => "SIGSTOP the leader past its lease, SIGCONT",
            Fault::KillHive => "kill -9 a hive (restarted)",
            Fault::KillWorker => "kill -9 a worker",
            Fault::Partition => "cut a hive off the queens, heal",
            Fault::RestartEtcd => "kill -9 etcd, restart it",
            Fault::TransferThenScale => "leader transfer, then scale up",
            Fault::FreezeThenScale => "SIGSTOP the leader past its lease, SIGCONT, then scale up",
            Fault::LeaseLossThenScale => "etcd away past the lease (the leader's lease lost), then scale up",
            Fault::RollingRestartHives => "rolling restart of every hive (SIGTERM, start again), under job load",
            Fault::RollingRestartQueens => "rolling restart of every queen (SIGTERM, start again)",
        }
    }
}

/// The worker processes of the cluster and the replica each runs, from the `APIARY_NAME`
/// its hive gave it.
fn worker_processes(worker_bin: &Path) -> Vec<(Pid, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_string_lossy().parse().ok()?;
            std::fs::read_link(e.path().join("exe")).ok().filter(|x| x == worker_bin)?;
            let environ = std::fs::read(e.path().join("environ")).ok()?;
            let name = environ
                .split(|b| *b == 0)
                .find_map(|kv| kv.strip_prefix(b"APIARY_NAME="))
                .map(|n| String::from_utf8_lossy(n).into_owned())?;
            Some((Pid::from_raw(pid), name))
        })
        .collect()
}

fn some_worker(worker_bin: &Path) -> Option<(Pid, String)> {
    worker_processes(worker_bin).into_iter().next()
}

/// Whether process `pid` is gone (a zombie counts).
fn gone(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_or(true, |stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')))
}

fn inject(cluster: &mut Cluster, fault: Fault, ttl: Duration, events: &Arc<Mutex<Events>>) -> anyhow::Result<Row> {
    let before = cluster.placement();
    let pids = cluster.worker_pids();
    let (leader, _) = cluster.wait_leader(None, Duration::from_secs(20)).context("no leader before the fault")?;
    let started = Instant::now();
    let mut failover = None;
    let mut planned_moves = false;
    // Nodes a fault may rightly take down: their offline events are not false.
    let mut expected: BTreeSet<String> = BTreeSet::new();
    let note;
    match fault {
        Fault::KillLeader => {
            cluster.queens[leader].kill9();
            let (next, _) = cluster.wait_leader(Some(leader), ttl * 5).context("no new leader")?;
            failover = Some(started.elapsed());
            note = format!("queen-{leader} → queen-{next}");
            cluster.queens[leader].restart()?;
        }
        Fault::KillFollower => {
            let follower = (leader + 1) % cluster.queens.len();
            cluster.queens[follower].kill9();
            std::thread::sleep(Duration::from_secs(1));
            let still = cluster.leader().map(|(i, _)| i);
            note = format!(
                "queen-{follower} killed; leader {}",
                if still == Some(leader) { "unchanged" } else { "CHANGED" }
            );
            cluster.queens[follower].restart()?;
        }
        Fault::FreezeLeader => {
            cluster.queens[leader].signal(Signal::SIGSTOP);
            let next = cluster.wait_leader(Some(leader), ttl * 5);
            failover = next.map(|_| started.elapsed());
            std::thread::sleep((ttl * 2).saturating_sub(started.elapsed()));
            cluster.queens[leader].signal(Signal::SIGCONT);
            // Thawed, it must know at once that it does not lead.
            std::thread::sleep(Duration::from_millis(300));
            let claims = leader_of(&cluster.quick, &cluster.urls[leader]).is_some_and(|(_, _, me)| me);
            note = format!(
                "frozen {:.1} s; after SIGCONT it {}",
                (ttl * 2).as_secs_f64(),
                if claims { "STILL CLAIMS TO LEAD" } else { "follows" }
            );
            if next.is_none() || claims {
                bail!("{note}; new leader: {next:?}");
            }
        }
        Fault::KillHive => {
            let hive = &mut cluster.hives[0];
            expected.insert("core-1".into());
            // Its workers die with it (parent-death signal); their names are the replicas'.
            expected.extend(before.iter().filter(|(_, h)| *h == "core-1").map(|(w, _)| w.clone()));
            hive.kill9();
            std::thread::sleep(Duration::from_millis(500));
            hive.restart()?;
            note = "restarted after 0.5 s".into();
        }
        Fault::KillWorker => {
            let (pid, name) = some_worker(&cluster.worker_bin).context("no worker process")?;
            let _ = kill(pid, Signal::SIGKILL);
            // Its hive restarts it.
            note = format!("{name} (pid {pid})");
            expected.insert(name);
        }
        Fault::Partition => {
            let netns = cluster.netns.as_ref().context("no netns")?;
            netns.cut(true)?;
            expected.insert("edge".into());
            std::thread::sleep(Duration::from_secs(4));
            netns.cut(false)?;
            note = "cut for 4 s".into();
        }
        Fault::RestartEtcd => {
            let etcd = cluster.etcd.as_mut().context("no etcd")?;
            etcd.kill();
            std::thread::sleep(Duration::from_secs(1));
            etcd.restart()?;
            let next = cluster.wait_leader(None, ttl * 10).context("no leader after etcd returned")?;
            failover = Some(started.elapsed());
            note = format!("etcd down 1 s; leader queen-{}", next.0);
        }
        Fault::TransferThenScale => {
            let moved = cluster.http.post_leader(&cluster.urls.clone(), "/v1/cluster/leader/transfer", &json!({}))?;
            if moved.status != 202 {
                bail!("transfer refused: {} {}", moved.status, moved.body);
            }
            let (next, _) = cluster.wait_leader(Some(leader), Duration::from_secs(10)).context("no new leader")?;
            failover = Some(started.elapsed());
            let ran = scale_and_time(cluster)?;
            note = format!(
                "queen-{leader} → queen-{next}; the hives ran the new set {:.2} s after the scale",
                ran.as_secs_f64()
            );
        }
        Fault::FreezeThenScale => {
            cluster.queens[leader].signal(Signal::SIGSTOP);
            let next = cluster.wait_leader(Some(leader), ttl * 5);
            failover = next.map(|_| started.elapsed());
            std::thread::sleep((ttl * 2).saturating_sub(started.elapsed()));
            cluster.queens[leader].signal(Signal::SIGCONT);
            let next = next.context("no new leader while the leader was frozen")?;
            std::thread::sleep(Duration::from_millis(300));
            let ran = scale_and_time(cluster)?;
            note = format!(
                "queen-{leader} → queen-{} (thawed); the hives ran the new set {:.2} s after the scale",
                next.0,
                ran.as_secs_f64()
            );
        }
        Fault::LeaseLossThenScale => {
            // Renewals fail for longer than the lease: the leader steps down on its own,
            // alive and answering, and leads again or not once etcd is back.
            let etcd = cluster.etcd.as_mut().context("no etcd")?;
            etcd.kill();
            std::thread::sleep(ttl + Duration::from_secs(1));
            etcd.restart()?;
            let next = cluster.wait_leader(None, ttl * 10).context("no leader after etcd returned")?;
            failover = Some(started.elapsed());
            let ran = scale_and_time(cluster)?;
            note = format!(
                "etcd down {:.0} s; leader queen-{}; the hives ran the new set {:.2} s after the scale",
                (ttl + Duration::from_secs(1)).as_secs_f64(),
                next.0,
                ran.as_secs_f64()
            );
        }
        Fault::RollingRestartHives => {
            // What `systemctl restart` of each hive in turn does: each drains itself on
            // SIGTERM (its replicas start anew elsewhere first), exits, starts again and is
            // eligible again at once. The old instances stop because the drain asked.
            planned_moves = true;
            expected.extend(pids.keys().cloned());
            let mut took = Vec::new();
            for i in 0..cluster.hives.len() {
                let name = cluster.hives[i].name.trim_start_matches("hive-").to_string();
                let t = Instant::now();
                let epoch = cluster.hive_epoch(&name);
                cluster.hives[i].stop_within(Duration::from_secs(40));
                let stopped = t.elapsed();
                let drain =
                    cluster.http.get_any(&cluster.urls, &format!("/v1/hives/{name}/drain")).unwrap_or(Value::Null);
                cluster.hives[i].restart()?;
                cluster.wait_hive_back(&name, epoch)?;
                cluster.wait_converged().with_context(|| format!("after restarting hive {name}"))?;
                took.push(format!(
                    "{name} stopped in {:.1} s having moved {} ({}), back and converged {:.1} s later",
                    stopped.as_secs_f64(),
                    drain["moved"],
                    drain["notes"]
                        .as_array()
                        .map(|n| n.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("; "))
                        .unwrap_or_default(),
                    (t.elapsed() - stopped).as_secs_f64()
                ));
            }
            note = format!("each drained, stopped, started, converged: {}", took.join(", "));
        }
        Fault::RollingRestartQueens => {
            let mut took = Vec::new();
            for i in 0..cluster.queens.len() {
                let t = Instant::now();
                cluster.queens[i].stop();
                cluster.wait_leader(Some(i), ttl * 5).with_context(|| format!("no leader with queen-{i} stopped"))?;
                cluster.queens[i].restart()?;
                let deadline = Instant::now() + Duration::from_secs(20);
                while leader_of(&cluster.quick, &cluster.urls[i]).is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
                cluster.wait_converged().with_context(|| format!("after restarting queen-{i}"))?;
                took.push(format!("queen-{i} {:.1} s", t.elapsed().as_secs_f64()));
            }
            note = format!("each stopped, started, converged: {}", took.join(", "));
        }
    }
    let converged = cluster.wait_converged().map(|_| started.elapsed()).map_err(|e| e.to_string());
    // Events published up to a little after convergence.
    std::thread::sleep(Duration::from_millis(700));
    let ev = events.lock().unwrap_or_else(|p| p.into_inner());
    let false_offline: Vec<String> = ev
        .list
        .iter()
        .filter(|(at, _)| *at >= started)
        .filter(|(_, e)| e["kind"] == "offline" || e["kind"] == "orphaned")
        .filter_map(|(_, e)| Some((e["id"].as_str()?, e)))
        .filter(|(id, _)| !expected.iter().any(|x| id == x || id.starts_with(&format!("{x}."))))
        .map(|(id, e)| format!("{id} {}: {}", e["kind"].as_str().unwrap_or("?"), e["reason"].as_str().unwrap_or("")))
        .collect();
    drop(ev);
    // No fault here keeps a hive away past the orphan grace: nothing should move.
    let after = cluster.placement();
    let moved = before.iter().filter(|(slot, hive)| after.get(*slot).is_some_and(|h| h != *hive)).count();
    let stopped_unasked = stopped_unasked(&pids, &expected);
    let ineligible = cluster.ineligible();
    Ok(Row {
        fault: fault.name().into(),
        failover,
        converged,
        false_offline,
        moved,
        planned_moves,
        stopped_unasked,
        ineligible,
        note,
    })
}

/// Replicas whose worker process (as it was before a fault) has ended, other than those
/// the fault was expected to take down.
fn stopped_unasked(pids: &BTreeMap<String, i32>, expected: &BTreeSet<String>) -> Vec<String> {
    pids.iter().filter(|(name, pid)| !expected.contains(*name) && gone(**pid)).map(|(name, _)| name.clone()).collect()
}

/// Scales the deployment up by two through the leader and measures until the hives run the
/// new set (every replica placed, heartbeating, one process each), then scales it back.
fn scale_and_time(cluster: &mut Cluster) -> anyhow::Result<Duration> {
    let urls = cluster.urls.clone();
    let scale = |cluster: &mut Cluster, replicas: usize| -> anyhow::Result<()> {
        let a = cluster.http.send_leader("PATCH", &urls, "/v1/deployments/chaos", &json!({ "replicas": replicas }))?;
        if a.status >= 300 {
            bail!("scale to {replicas} refused: {} {}", a.status, a.body);
        }
        cluster.replicas = replicas;
        Ok(())
    };
    let started = Instant::now();
    scale(cluster, REPLICAS + 2)?;
    // The new set running, whatever else is still settling (a hive reconnecting).
    let ran = loop {
        let snapshot = cluster.http.get_any(&urls, "/v1/snapshot").unwrap_or(Value::Null);
        if cluster.running(&snapshot).is_ok() {
            break started.elapsed();
        }
        if started.elapsed() > CONVERGE {
            bail!("the hives did not run the scaled-up set in {CONVERGE:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    cluster.wait_converged().context("after the scale-up")?;
    scale(cluster, REPLICAS)?;
    Ok(ran)
}

/// How often each job key was run, from the workers' "keyed job ran" lines in the core
/// hives' logs (workers write to their hive's output).
fn keyed_runs(logs: &Path) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut runs = BTreeMap::new();
    for entry in std::fs::read_dir(logs)? {
        let path = entry?.path();
        let is_hive = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("hive-"));
        if !is_hive {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        for line in text.lines().filter(|l| l.contains("keyed job ran")) {
            let Some(rest) = line.split("key=").nth(1) else { continue };
            let key = rest.split_whitespace().next().unwrap_or_default().trim_matches('"');
            *runs.entry(key.to_string()).or_insert(0) += 1;
        }
    }
    Ok(runs)
}

fn render(rows: &[Row], jobs: &JobCounts, ran: usize, duplicated: u64) -> String {
    let mut out = String::from(
        "| fault | leader failover | converged after | false offline | replicas moved | stopped unasked | left ineligible | note |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let failover = r.failover.map(|d| format!("{:.2} s", d.as_secs_f64())).unwrap_or_else(|| "–".into());
        let converged = match &r.converged {
            Ok(d) => format!("{:.2} s", d.as_secs_f64()),
            Err(e) => format!("NOT: {e}"),
        };
        let false_offline = if r.false_offline.is_empty() {
            "0".into()
        } else {
            format!("{} ({})", r.false_offline.len(), r.false_offline.join(", "))
        };
        let list =
            |v: &[String]| if v.is_empty() { "0".to_string() } else { format!("{} ({})", v.len(), v.join(", ")) };
        let moved = if r.planned_moves { format!("{} (drains)", r.moved) } else { r.moved.to_string() };
        out.push_str(&format!(
            "| {} | {failover} | {converged} | {false_offline} | {moved} | {} | {} | {} |\n",
            r.fault,
            list(&r.stopped_unasked),
            list(&r.ineligible),
            r.note
        ));
    }
    let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
    out.push_str(&format!(
        "\njobs: {} submitted, {} completed, {} lost; {ran} ran on the workers, {duplicated} of them more than once; {} resubmitted after no answer (same key), {} attempts refused before running\n",
        n(&jobs.submitted),
        n(&jobs.completed),
        n(&jobs.lost),
        n(&jobs.resubmitted),
        n(&jobs.refused_attempts),
    ));
    out.push_str("replicas: lost or duplicated would have shown as a cluster that did not converge (every slot placed once, one worker process each)\n");
    out
}

/// A small tmpfs, so a data dir's disk can fill up; unmounted when dropped.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(dir: &Path, bytes: u64) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir)
            .output()
            .context("running mount")?;
        if !out.status.success() {
            bail!("mount: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(Self(dir.to_path_buf()))
    }

    /// Writes a file until the filesystem is full; its path.
    fn fill(&self) -> anyhow::Result<PathBuf> {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut file = std::fs::File::create(&path)?;
        let chunk = vec![0x55u8; 64 * 1024];
        loop {
            match file.write_all(&chunk).and_then(|()| file.sync_all()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(28) => return Ok(path),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A lone queen on its embedded store, one hive, a deployment of two: the store's disk
/// filling up under job load, and the queen restarted on an empty data dir.
fn lone_queen(dir: &Path, logs: &Path, counts: Arc<JobCounts>) -> anyhow::Result<Vec<Row>> {
    let port = etcd_process::free_port()?;
    let url = format!("http://127.0.0.1:{port}");
    let small = SmallFs::mount(&logs.join("lone-data"), 16 << 20);
    let data = match &small {
        Ok(fs) => fs.0.join("data"),
        Err(e) => {
            eprintln!("xtask chaos: no tmpfs for the lone queen ({e:#}); the full-disk fault is skipped");
            logs.join("lone-data").join("data")
        }
    };
    let queen_bin = dir.join("queen").to_string_lossy().into_owned();
    let program = |data: &Path| -> Vec<String> {
        let listen = format!("127.0.0.1:{port}");
        [queen_bin.as_str(), "serve", "--listen", &listen, "--heartbeat-interval", HEARTBEAT]
            .into_iter()
            .map(String::from)
            .chain(["--snapshot-interval", "500ms", "--orphan-grace", "5s", "--data-dir"].map(String::from))
            .chain([data.to_string_lossy().into_owned()])
            .collect()
    };
    let hive_program: Vec<String> = [dir.join("hive").to_string_lossy().as_ref(), "--queen", &url, "--name", "lone"]
        .into_iter()
        .map(String::from)
        .chain(["--heartbeat-interval", HEARTBEAT, "--max-workers", "4", "--drain-on-shutdown", "0s"].map(String::from))
        .chain(["--cgroup".to_string(), format!("apiary-chaos-{}-lone", std::process::id())])
        // Its workers' keyed runs are counted from its own output too.
        .chain(["--log-dir", "off"].map(String::from))
        .collect();
    let mut cluster = Cluster {
        http: Http::new(),
        quick: Http::with_timeout(Duration::from_millis(300)),
        queens: vec![Proc::start("queen-lone", program(&data), logs)?],
        urls: vec![url.clone()],
        hives: vec![Proc::start_logging("hive-lone", hive_program, logs, WORKER_RUNS)?],
        etcd: None,
        netns: None,
        worker_bin: dir.join("worker").canonicalize()?,
        logs: logs.to_path_buf(),
        replicas: 2,
    };
    let result = (|| {
        let spec = json!({
            "name": "lone",
            "command": cluster.worker_bin.to_string_lossy(),
            "args": ["--heartbeat-interval", HEARTBEAT],
            "replicas": 2,
        });
        cluster.wait_leader(None, Duration::from_secs(20)).context("the lone queen did not start")?;
        cluster.deploy(&spec)?;
        cluster.wait_converged().context("the lone queen's deployment did not converge")?;
        let mut rows = Vec::new();
        if let Ok(fs) = &small {
            rows.push(full_disk(&mut cluster, fs, &counts)?);
        }
        let empty = logs.join("lone-empty");
        let _ = std::fs::remove_dir_all(&empty);
        rows.push(empty_data_dir(&mut cluster, program(&empty), &spec)?);
        Ok(rows)
    })();
    let _ = cluster.http.call("DELETE", &format!("{url}/v1/deployments/lone"), None);
    cluster.stop_all();
    result
}

/// The data dir's disk fills up under job load: changes are refused with 503
/// `store_unavailable` and readiness says why, nothing that runs is stopped, and once there
/// is room the queen takes changes again without a restart.
fn full_disk(cluster: &mut Cluster, fs: &SmallFs, counts: &Arc<JobCounts>) -> anyhow::Result<Row> {
    let url = cluster.urls[0].clone();
    let pids = cluster.worker_pids();
    let before = cluster.placement();
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (http, queens, counts, stop) =
            (cluster.http.clone(), cluster.urls.clone(), Arc::clone(counts), Arc::clone(&stop));
        std::thread::spawn(move || job_load(2, http, queens, counts, stop))
    };
    std::thread::sleep(Duration::from_secs(1));
    let started = Instant::now();
    let filler = fs.fill()?;
    let http = cluster.http.clone();
    let scale = |n: usize| http.call("PATCH", &format!("{url}/v1/deployments/lone"), Some(&json!({ "replicas": n })));
    // Small writes fit in pages the store already holds (redb reuses its freed pages), so
    // what runs into the full disk is the store growing: deployments of 60 KB each, until
    // one is refused.
    let big = |i: usize| json!({"name": format!("fill-{i}"), "command": "/bin/true", "replicas": 0, "args": vec!["x".repeat(4000); 15]});
    let mut refused = None;
    let mut taken = 0;
    for i in 0..400 {
        let a = http.call("POST", &format!("{url}/v1/deployments"), Some(&big(i)))?;
        if a.status == 503 {
            refused = Some(a);
            break;
        }
        taken += 1;
    }
    let refused = refused.context("no change was refused with the disk full")?;
    let ready = cluster.http.call("GET", &format!("{url}/readyz"), None)?;
    // Full for a while, under job load.
    std::thread::sleep(Duration::from_secs(3));
    std::fs::remove_file(filler)?;
    let room = Instant::now();
    for i in 0..taken {
        let _ = http.call("DELETE", &format!("{url}/v1/deployments/fill-{i}"), None);
    }
    let mut accepted = None;
    while room.elapsed() < Duration::from_secs(10) {
        if scale(3)?.status < 300 {
            accepted = Some(room.elapsed());
            cluster.replicas = 3;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let converged = cluster.wait_converged().map(|_| started.elapsed()).map_err(|e| e.to_string());
    if scale(2)?.status < 300 {
        cluster.replicas = 2;
    }
    cluster.wait_converged().context("scaled back")?;
    stop.store(true, Ordering::Relaxed);
    let _ = load.join();
    let note = format!(
        "{taken} deployments of 60 KB taken, then one refused: {} {}; /readyz {}; a scale accepted {} after room",
        refused.status,
        refused.body["code"].as_str().unwrap_or("?"),
        ready.status,
        accepted.map_or("NEVER".to_string(), |d| format!("{:.1} s", d.as_secs_f64()))
    );
    if refused.body["code"] != "store_unavailable" || ready.status != 503 || accepted.is_none() {
        bail!("{note}");
    }
    let after = cluster.placement();
    Ok(Row {
        fault: "lone queen: its data dir's disk full under job load, then room".into(),
        failover: None,
        converged,
        false_offline: Vec::new(),
        moved: before.iter().filter(|(slot, hive)| after.get(*slot).is_some_and(|h| h != *hive)).count(),
        planned_moves: false,
        stopped_unasked: stopped_unasked(&pids, &BTreeSet::new()),
        ineligible: cluster.ineligible(),
        note,
    })
}

/// The queen is killed and started on an empty data dir: it stops nothing its hive runs
/// (it holds, and readiness says `unknown replicas`), and once the deployment is declared
/// again the running processes are adopted as they are.
fn empty_data_dir(cluster: &mut Cluster, program: Vec<String>, spec: &Value) -> anyhow::Result<Row> {
    let url = cluster.urls[0].clone();
    let pids = cluster.worker_pids();
    let before = cluster.placement();
    let started = Instant::now();
    cluster.queens[0].kill9();
    cluster.queens[0].program = program;
    cluster.queens[0].restart()?;
    let mut said = None;
    while started.elapsed() < Duration::from_secs(20) {
        if let Ok(a) = cluster.http.call("GET", &format!("{url}/readyz"), None)
            && a.status == 503
            && a.body.to_string().contains("unknown replicas on 1 hives")
        {
            said = Some(started.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let said = said.context("readiness never said `unknown replicas on 1 hives`")?;
    // Several sweeps of a queen that knows no deployment.
    std::thread::sleep(Duration::from_secs(3));
    let held = stopped_unasked(&pids, &BTreeSet::new());
    cluster.deploy(spec)?;
    let converged = cluster.wait_converged().map(|_| started.elapsed()).map_err(|e| e.to_string());
    let stopped = stopped_unasked(&pids, &BTreeSet::new());
    let after = cluster.placement();
    Ok(Row {
        fault: "lone queen: kill -9, started again on an empty data dir".into(),
        failover: None,
        converged,
        false_offline: Vec::new(),
        moved: before.iter().filter(|(slot, hive)| after.get(*slot).is_some_and(|h| h != *hive)).count(),
        planned_moves: false,
        stopped_unasked: stopped,
        ineligible: cluster.ineligible(),
        note: format!(
            "readiness said `unknown replicas on 1 hives` {:.1} s after the start; {} stopped while it held; declared again, {} processes adopted as they ran",
            said.as_secs_f64(),
            held.len(),
            pids.len()
        ),
    })
}
