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
}

impl ChaosArgs {
    /// One round with a 2 s lease: what CI runs.
    pub fn bounded() -> Self {
        Self { rounds: 1, lease_ttl_secs: 2 }
    }
}

const QUEENS: usize = 3;
const REPLICAS: usize = 4;
const HEARTBEAT: &str = "500ms";
const JOB_DEADLINE: Duration = Duration::from_secs(60);
/// The log filter under which workers log each keyed job they run.
const WORKER_RUNS: &str = "warn,worker=debug";
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
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
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
    etcd: etcd_process::Etcd,
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
    note: String,
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
            .chain(["--max-workers", "4", "--drain-on-shutdown", "0s", "--worker-stop-timeout", "2s"].map(String::from))
            .chain(["--label".into(), format!("zone={zone}")])
            // Its own cgroup names: a restarted hive kills what its killed run left there,
            // and must never meet another cluster's on this machine.
            .chain(["--cgroup".into(), format!("apiary-chaos-{}-{name}", std::process::id())])
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
        etcd,
        netns,
        worker_bin,
        logs,
        replicas: REPLICAS,
    };

    let result = chaos(&mut cluster, &args);
    for h in &mut cluster.hives {
        h.stop();
    }
    for q in &mut cluster.queens {
        q.stop();
    }
    result
}

fn chaos(cluster: &mut Cluster, args: &ChaosArgs) -> anyhow::Result<()> {
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
            eprintln!("xtask chaos: round {round}: {}", fault.name());
            let row = match inject(cluster, *fault, ttl, &events) {
                Ok(row) => row,
                Err(e) => {
                    failure = Some(e.context(format!("round {round}, {}", fault.name())));
                    break 'rounds;
                }
            };
            let bad = row.converged.is_err() || !row.false_offline.is_empty() || row.moved > 0;
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
    let runs = keyed_runs(&cluster.logs)?;
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
    let losses = counts.lost.load(Ordering::Relaxed)
        + duplicated
        + rows.iter().map(|r| r.false_offline.len() as u64 + r.moved as u64).sum::<u64>();
    if losses > 0 || rows.iter().any(|r| r.converged.is_err()) {
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
        }
    }
}

/// A worker process of the cluster (the first found) and the replica it runs, from the
/// `APIARY_NAME` its hive gave it.
fn some_worker(worker_bin: &Path) -> Option<(Pid, String)> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_string_lossy().parse().ok()?;
        std::fs::read_link(e.path().join("exe")).ok().filter(|x| x == worker_bin)?;
        let environ = std::fs::read(e.path().join("environ")).ok()?;
        let name = environ
            .split(|b| *b == 0)
            .find_map(|kv| kv.strip_prefix(b"APIARY_NAME="))
            .map(|n| String::from_utf8_lossy(n).into_owned())?;
        Some((Pid::from_raw(pid), name))
    })
}

fn inject(cluster: &mut Cluster, fault: Fault, ttl: Duration, events: &Arc<Mutex<Events>>) -> anyhow::Result<Row> {
    let before = cluster.placement();
    let (leader, _) = cluster.wait_leader(None, Duration::from_secs(20)).context("no leader before the fault")?;
    let started = Instant::now();
    let mut failover = None;
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
            cluster.etcd.kill();
            std::thread::sleep(Duration::from_secs(1));
            cluster.etcd.restart()?;
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
            cluster.etcd.kill();
            std::thread::sleep(ttl + Duration::from_secs(1));
            cluster.etcd.restart()?;
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
        .filter_map(|(_, e)| e["id"].as_str().map(str::to_string))
        .filter(|id| !expected.iter().any(|x| id == x || id.starts_with(&format!("{x}."))))
        .collect();
    drop(ev);
    // No fault here keeps a hive away past the orphan grace: nothing should move.
    let after = cluster.placement();
    let moved = before.iter().filter(|(slot, hive)| after.get(*slot).is_some_and(|h| h != *hive)).count();
    Ok(Row { fault: fault.name().into(), failover, converged, false_offline, moved, note })
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
    cluster.wait_converged().context("the hives did not run the scaled-up set")?;
    let ran = started.elapsed();
    scale(cluster, REPLICAS)?;
    Ok(ran)
}

/// How often each job key was run, from the workers' "keyed job ran" lines in the core
/// hives' logs (workers write to their hive's output).
fn keyed_runs(logs: &Path) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut runs = BTreeMap::new();
    for entry in std::fs::read_dir(logs)? {
        let path = entry?.path();
        let is_hive = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("hive-core"));
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
        "| fault | leader failover | converged after | false offline | replicas moved | note |\n|---|---|---|---|---|---|\n",
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
        out.push_str(&format!(
            "| {} | {failover} | {converged} | {false_offline} | {} | {} |\n",
            r.fault, r.moved, r.note
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
