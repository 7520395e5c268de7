//! Runs the hive's assigned workers as child processes and keeps them so: starts what is
//! missing, restarts what crashed (capped exponential backoff), stops what is no longer
//! wanted (SIGTERM, a deadline, then SIGKILL), and reports each one's state.
//!
//! Children must not outlive the hive, even a `kill -9`ed one: each is started through
//! `setpriv --pdeathsig KILL` (util-linux), so the kernel kills it when the hive dies,
//! and is also killed when its handle is dropped. Each gets its own process group, so a
//! Ctrl-C meant for the hive does not hit the workers twice.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use contract::{NodeId, ProcessState, SupervisedWorker, WorkerLaunch};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cgroup::Cgroups;
use crate::logs::LogStore;
use crate::probe::{Checker, Probing, Target};

/// How often child exits and due restarts are looked at.
const TICK: Duration = Duration::from_millis(100);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often a replica with a memory limit has its memory measured.
const MEMORY_CHECK: Duration = Duration::from_secs(1);
/// A child that ran this long before exiting was healthy: its backoff starts over.
const STABLE_AFTER: Duration = Duration::from_secs(60);
const SETPRIV: &str = "/usr/bin/setpriv";

struct Proc {
    launch: WorkerLaunch,
    child: Option<Child>,
    pid: Option<u32>,
    state: ProcessState,
    restarts: u32,
    backoff: Duration,
    next_start: Instant,
    started_at: Instant,
    /// Set once a stop began: SIGKILL after it.
    kill_at: Option<Instant>,
    last_exit: String,
    /// The port it was given (`APIARY_PORT`), which its probes check.
    port: u16,
    /// The uid and gid it runs as, when not the hive's (its exec probes run so too).
    ids: Option<(u32, u32)>,
    /// The running instance's probes.
    probing: Option<Probing>,
    ready: Option<bool>,
    /// What its failing probe last said.
    probe: String,
    /// Being stopped to be started again (a failed liveness or startup probe, its memory
    /// past its limit), for this reason.
    restart_for: Option<String>,
    /// When its memory is next measured against its limit.
    memory_check_at: Instant,
}

/// Longest report of one process's last exit: the queen takes 256 bytes of text per field,
/// and one over it would make every heartbeat of this hive invalid.
const MAX_REPORT: usize = 200;

/// What an operator reads of a process's end: control characters (a path or an error may
/// carry newlines or worse) become spaces, and a long one loses its middle (a long path),
/// keeping how it starts and why it ended, cut at character boundaries.
pub fn report_text(text: &str) -> String {
    let clean: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if clean.len() <= MAX_REPORT {
        return clean;
    }
    let half = (MAX_REPORT - '…'.len_utf8()) / 2;
    let mut head = half;
    while !clean.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = clean.len() - half;
    while !clean.is_char_boundary(tail) {
        tail += 1;
    }
    format!("{}…{}", &clean[..head], &clean[tail..])
}

/// Why `command` cannot be started, said in words before trying (started through
/// `setpriv`, a missing program would only show as exit status 127): not found on PATH,
/// no such file, a directory, not executable, or neither a program nor a script.
pub fn cannot_start(command: &str, path_var: Option<&std::ffi::OsStr>) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let found = if command.contains('/') {
        std::path::PathBuf::from(command)
    } else {
        let dirs = path_var.map(std::env::split_paths).into_iter().flatten();
        match dirs.map(|d| d.join(command)).find(|p| p.is_file()) {
            Some(p) => p,
            None => return Some(format!("{command}: not found on PATH")),
        }
    };
    let meta = match std::fs::metadata(&found) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some(format!("{command}: no such file")),
        Err(e) => return Some(format!("{command}: {e}")),
    };
    if meta.is_dir() {
        return Some(format!("{command}: is a directory"));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Some(format!("{command}: not executable (permission denied)"));
    }
    let mut head = [0u8; 4];
    let read = std::fs::File::open(&found).and_then(|mut f| std::io::Read::read(&mut f, &mut head));
    match read {
        Ok(n) if head[..n].starts_with(b"\x7fELF") || head[..n].starts_with(b"#!") => None,
        Ok(_) => Some(format!("{command}: exec format error (neither a program nor a #! script)")),
        Err(e) => Some(format!("{command}: cannot be read: {e}")),
    }
}

/// The user a replica is to run as, if this hive can start it so.
fn run_as(user: &str) -> Result<nix::unistd::User, String> {
    if !nix::unistd::geteuid().is_root() {
        return Err(format!("runs as user {user}: only a hive running as root can start a process as another user"));
    }
    let found = match user.parse::<u32>() {
        Ok(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
        Err(_) => nix::unistd::User::from_name(user),
    };
    match found {
        Ok(Some(u)) => Ok(u),
        Ok(None) => Err(format!("runs as user {user}: no such user on this machine")),
        Err(e) => Err(format!("runs as user {user}: cannot read the user database: {e}")),
    }
}

/// Signals a worker's whole process group (it leads its own), so that a shell script
/// and what it started stop together.
fn signal_group(pid: Option<u32>, signal: Signal) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        let _ = kill(Pid::from_raw(-pid), signal);
    }
}

/// Kills what is left of a replica's tree in its cgroup once its main process is gone
/// (children that left its process group included).
fn kill_tree(cgroups: Option<&Cgroups>, name: &NodeId) {
    if let Some(killed) = cgroups.map(|c| c.kill(name.as_str())).filter(|n| *n > 0) {
        tracing::info!(worker = %name, killed, "killed what the replica left in its cgroup");
    }
}

impl Supervisor {
    /// The token a child gets: a hive holding a node token makes one for each worker (so
    /// the worker can act only as itself, of this hive); the shared cluster token is passed
    /// on as it is.
    fn child_token(&self, worker: &NodeId) -> Option<String> {
        let token = self.env.token.as_ref()?.expose();
        Some(queen_client::node_token::worker_token(token, worker).unwrap_or_else(|| token.to_string()))
    }
}

/// The supervisor's readiness: degraded while a worker has failed for good (it crashed
/// past its restart limit), since the hive is then not running what it was asked to.
pub fn health(report: &[SupervisedWorker]) -> Result<String, String> {
    let failed: Vec<String> = report
        .iter()
        .filter(|w| w.state == ProcessState::Failed)
        .map(|w| format!("{} ({})", w.name, w.last_exit))
        .collect();
    if !failed.is_empty() {
        return Err(format!("failed for good: {}", failed.join(", ")));
    }
    let running = report.iter().filter(|w| w.state == ProcessState::Running).count();
    Ok(format!("{running} of {} workers running", report.len()))
}

/// What the hive tells its children about where they are.
#[derive(Clone)]
pub struct ChildEnv {
    pub queen: String,
    pub hive: NodeId,
    /// The cluster token, passed on as `APIARY_TOKEN`.
    pub token: Option<lifecycle::Secret>,
    /// The certificate(s) trusted for an https queen, passed on as `APIARY_CA`.
    pub ca: Option<std::path::PathBuf>,
}

/// What the supervisor is asked to keep.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub workers: Vec<WorkerLaunch>,
    /// Cluster shutdown GATE: start nothing, restart nothing.
    pub gate: bool,
    /// Cluster shutdown DRAIN: stop everything, SIGKILL after this long.
    pub drain: Option<Duration>,
}

/// How a drain went, for the hive's ACK.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DrainOutcome {
    /// Every child has exited.
    pub done: bool,
    pub stopped: Vec<NodeId>,
    /// Stopped with SIGKILL at the deadline, having ignored SIGTERM.
    pub killed: Vec<NodeId>,
}

pub struct Supervisor {
    env: ChildEnv,
    stop_timeout: Duration,
    procs: BTreeMap<NodeId, Proc>,
    report: Arc<Mutex<Vec<SupervisedWorker>>>,
    drain: Arc<Mutex<DrainOutcome>>,
    /// Told when a process's state or last exit changes (not its pid or restart count
    /// alone), so the hive's next heartbeat carries it at once.
    changed: Arc<tokio::sync::Notify>,
    /// Each replica's process tree in a cgroup of its own, where the hive can make one.
    cgroups: Option<Arc<Cgroups>>,
    /// Cgroups of replicas gone whose processes were still dying: removed when empty.
    emptying: std::collections::BTreeSet<NodeId>,
    checker: Checker,
    /// Where each replica's output goes; without it, to the hive's own.
    logs: Option<Arc<LogStore>>,
}

impl Supervisor {
    pub fn new(env: ChildEnv, stop_timeout: Duration) -> Self {
        Self {
            env,
            stop_timeout,
            procs: BTreeMap::new(),
            report: Arc::new(Mutex::new(Vec::new())),
            drain: Arc::new(Mutex::new(DrainOutcome::default())),
            changed: Arc::new(tokio::sync::Notify::new()),
            cgroups: None,
            emptying: Default::default(),
            checker: crate::probe::real_checks(),
            logs: None,
        }
    }

    /// Keeps each replica's stdout and stderr in `store` (`None`: they go to the hive's).
    pub fn log_to(mut self, store: Option<Arc<LogStore>>) -> Self {
        self.logs = store;
        self
    }

    /// Runs each replica's processes in a cgroup of its own under `cgroups`.
    pub fn contain(mut self, cgroups: Option<Arc<Cgroups>>) -> Self {
        self.cgroups = cgroups;
        self
    }

    /// Tells `changed` whenever a process's state or last exit changes.
    pub fn on_change(mut self, changed: Arc<tokio::sync::Notify>) -> Self {
        self.changed = changed;
        self
    }

    /// How the cluster-shutdown drain is going.
    pub fn drain_outcome(&self) -> Arc<Mutex<DrainOutcome>> {
        Arc::clone(&self.drain)
    }

    /// The workers' states as of the last pass, for heartbeats.
    pub fn report(&self) -> Arc<Mutex<Vec<SupervisedWorker>>> {
        Arc::clone(&self.report)
    }

    /// Reconciles until `stop` fires, then stops every child and waits for them to exit.
    pub async fn run(mut self, mut desired: watch::Receiver<Desired>, stop: CancellationToken) {
        loop {
            let want = desired.borrow_and_update().clone();
            match want.drain {
                Some(deadline) => self.reconcile(&[], true, deadline),
                None => self.reconcile(&want.workers, want.gate, self.stop_timeout),
            }
            if want.drain.is_some() {
                let mut outcome = self.drain.lock().unwrap_or_else(|p| p.into_inner());
                outcome.done = self.procs.is_empty();
            }
            self.publish();
            tokio::select! {
                _ = stop.cancelled() => break,
                changed = desired.changed() => if changed.is_err() { break },
                _ = tokio::time::sleep(TICK) => {}
            }
        }
        self.stop_all().await;
        self.publish();
        if let Some(cgroups) = &self.cgroups {
            cgroups.close();
        }
    }

    fn spawn(&self, launch: &WorkerLaunch, user: Option<&nix::unistd::User>) -> std::io::Result<(Child, u16)> {
        let port_number = free_port()?;
        let port = port_number.to_string();
        let setpriv = std::path::Path::new(SETPRIV).exists();
        let program = if setpriv { std::ffi::OsStr::new(SETPRIV) } else { std::ffi::OsStr::new(&launch.command) };
        let mut cmd = match &self.cgroups {
            Some(cgroups) => cgroups.command(launch.name.as_str(), program)?,
            None => Command::new(program),
        };
        if setpriv {
            cmd.arg("--pdeathsig").arg("KILL");
            if let Some(user) = user {
                cmd.arg(format!("--reuid={}", user.uid)).arg(format!("--regid={}", user.gid)).arg("--init-groups");
            }
            cmd.arg("--").arg(&launch.command);
        } else if let Some(user) = user {
            cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        }
        // The hive's own APIARY_* settings (its listen address, say) are not the child's.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("APIARY_") {
                cmd.env_remove(key);
            }
        }
        if let Some(dir) = &launch.process.working_dir {
            cmd.current_dir(dir);
        }
        cmd.args(&launch.args)
            .envs(&launch.env)
            .env("APIARY_QUEEN", &self.env.queen)
            .env("APIARY_HIVE", self.env.hive.as_str())
            .env("APIARY_NAME", launch.name.as_str())
            .env("APIARY_KIND", launch.deployment.as_str())
            .envs(self.child_token(&launch.name).iter().map(|t| ("APIARY_TOKEN", t.as_str())))
            .envs(self.env.ca.iter().map(|ca| ("APIARY_CA", ca.as_os_str())))
            .env("APIARY_PORT", &port)
            // The convention most programs follow; a deployment's own PORT wins.
            .envs((!launch.env.contains_key("PORT")).then_some(("PORT", &port)))
            .stdin(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        let logs = self.logs.as_ref().and_then(|store| match store.begin(&launch.name) {
            Ok(_) => Some(store),
            Err(e) => {
                tracing::warn!(worker = %launch.name, error = %e, dir = %store.dir.display(), "cannot keep this replica's output; it goes to the hive's");
                None
            }
        });
        if logs.is_some() {
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        if let (Some(cgroups), Some(r)) = (&self.cgroups, launch.resources) {
            cgroups.limit(launch.name.as_str(), r.cpu_millis, r.memory_bytes);
        }
        let mut child = cmd.spawn()?;
        if let Some(store) = logs {
            let policy = launch.logs.unwrap_or(store.policy);
            let pipes = [
                (child.stdout.take().map(Pipe::Out), contract::LogStream::Stdout),
                (child.stderr.take().map(Pipe::Err), contract::LogStream::Stderr),
            ];
            for (pipe, stream) in pipes {
                let Some(pipe) = pipe else { continue };
                let (files, name) = (store.files(&launch.name, stream, false), launch.name.clone());
                tokio::spawn(async move {
                    if let Err(e) = crate::logs::capture(pipe, files, policy).await {
                        tracing::warn!(worker = %name, error = %e, "lost this replica's output from here on");
                    }
                });
            }
        }
        Ok((child, port_number))
    }

    fn start(&mut self, name: &NodeId, launch: &WorkerLaunch, now: Instant) {
        let missing_dir = launch
            .process
            .working_dir
            .as_ref()
            .filter(|d| !std::path::Path::new(d).is_dir())
            .map(|d| format!("working_dir {d}: no such directory"));
        let user = launch.process.user.as_deref().map(run_as).transpose();
        let why = missing_dir
            .or_else(|| user.as_ref().err().cloned())
            .or_else(|| cannot_start(&launch.command, std::env::var_os("PATH").as_deref()));
        let spawned = match why {
            Some(why) => Err(std::io::Error::new(std::io::ErrorKind::NotFound, why)),
            None => self.spawn(launch, user.as_ref().ok().and_then(Option::as_ref)),
        };
        let ids = user.ok().flatten().map(|u| (u.uid.as_raw(), u.gid.as_raw()));
        let proc = self.procs.entry(name.clone()).or_insert_with(|| Proc {
            launch: launch.clone(),
            child: None,
            pid: None,
            state: ProcessState::Restarting,
            restarts: 0,
            backoff: FIRST_BACKOFF,
            next_start: now,
            started_at: now,
            kill_at: None,
            last_exit: String::new(),
            port: 0,
            ids: None,
            probing: None,
            ready: None,
            probe: String::new(),
            restart_for: None,
            memory_check_at: now,
        });
        match spawned {
            Ok((child, port)) => {
                proc.pid = child.id();
                proc.child = Some(child);
                proc.state = ProcessState::Running;
                proc.started_at = now;
                proc.port = port;
                proc.ids = ids;
                proc.probing = Some(Probing::new(&launch.probes, now, self.checker.clone()));
                proc.ready = None;
                tracing::info!(worker = %name, pid = ?proc.pid, "worker started");
            }
            Err(e) => {
                proc.last_exit = format!("cannot start: {e}");
                tracing::warn!(worker = %name, error = %e, "worker did not start");
                Self::after_exit(proc, now);
            }
        }
    }

    /// Schedules a restart with backoff, or gives up past `max_restarts`.
    fn after_exit(proc: &mut Proc, now: Instant) {
        proc.child = None;
        proc.pid = None;
        proc.probing = None;
        proc.ready = None;
        proc.probe.clear();
        if now.saturating_duration_since(proc.started_at) >= STABLE_AFTER {
            proc.backoff = FIRST_BACKOFF;
        }
        if proc.launch.max_restarts.is_some_and(|max| proc.restarts >= max) {
            proc.state = ProcessState::Failed;
            return;
        }
        proc.restarts += 1;
        proc.state = ProcessState::Restarting;
        proc.next_start = now + proc.backoff;
        proc.backoff = (proc.backoff * 2).min(MAX_BACKOFF);
    }

    /// Asks a replica to stop with its deployment's signal (SIGTERM unless it says
    /// otherwise), SIGKILL due after its stop timeout (the hive's unless it says otherwise).
    fn begin_stop(proc: &mut Proc, now: Instant, timeout: Duration) {
        if proc.kill_at.is_some() {
            return;
        }
        let options = &proc.launch.process;
        let timeout = options.stop_timeout_ms.map(Duration::from_millis).unwrap_or(timeout);
        proc.state = ProcessState::Stopping;
        proc.kill_at = Some(now + timeout);
        signal_group(proc.pid, stop_signal(options.stop_signal));
        // A stopped process (SIGSTOP, a debugger) would hold the signal pending until the
        // SIGKILL; continued, it can act on it.
        signal_group(proc.pid, Signal::SIGCONT);
    }

    /// One pass: reap exits, stop the unwanted (SIGKILL after `stop_timeout`), and unless
    /// `gated`, start the missing and the due.
    fn reconcile(&mut self, want: &[WorkerLaunch], gated: bool, stop_timeout: Duration) {
        let now = Instant::now();
        let wanted: BTreeMap<&NodeId, &WorkerLaunch> = want.iter().map(|l| (&l.name, l)).collect();
        let mut gone = Vec::new();
        let cgroups = self.cgroups.clone();
        for (name, proc) in self.procs.iter_mut() {
            let exited = match proc.child.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => Some(status.to_string()),
                Some(Err(e)) => Some(format!("lost track of the process: {e}")),
                _ => None,
            };
            if let Some(status) = exited {
                // The replica is its main process: what that left behind in its group (a
                // child that ignored SIGTERM, say) goes with it, stopped or crashed.
                signal_group(proc.pid, Signal::SIGKILL);
                kill_tree(cgroups.as_deref(), name);
                if let Some(why) = proc.restart_for.take() {
                    proc.kill_at = None;
                    proc.last_exit = why;
                    Self::after_exit(proc, now);
                } else if proc.kill_at.is_some() {
                    let mut drain = self.drain.lock().unwrap_or_else(|p| p.into_inner());
                    if !drain.killed.contains(name) {
                        drain.stopped.push(name.clone());
                    }
                    gone.push(name.clone());
                    continue;
                } else {
                    tracing::warn!(worker = %name, %status, restarts = proc.restarts, "worker exited");
                    proc.last_exit = status;
                    Self::after_exit(proc, now);
                }
            }
            let limit = proc.launch.resources.map_or(0, |r| r.memory_bytes);
            if limit > 0 && proc.kill_at.is_none() && proc.child.is_some() && now >= proc.memory_check_at {
                proc.memory_check_at = now + MEMORY_CHECK;
                let used = match (cgroups.as_deref(), proc.pid) {
                    (Some(c), _) => c.memory(name.as_str()),
                    (None, Some(pid)) => crate::cgroup::resident(pid),
                    (None, None) => 0,
                };
                if used > limit {
                    let why = format!("over its memory limit: {} MiB of {} MiB", used >> 20, limit >> 20);
                    tracing::warn!(worker = %name, reason = %why, "restarting the replica");
                    proc.restart_for = Some(why);
                    // No grace: more time is more memory.
                    proc.state = ProcessState::Stopping;
                    proc.kill_at = Some(now);
                }
            }
            if proc.kill_at.is_none()
                && let Some(probing) = proc.probing.as_mut()
            {
                let target =
                    Target { port: proc.port, working_dir: proc.launch.process.working_dir.clone(), user: proc.ids };
                let verdict = probing.step(now, &target);
                proc.ready = verdict.ready;
                proc.probe = verdict.failing;
                if let Some(why) = verdict.restart {
                    tracing::warn!(worker = %name, reason = %why, "restarting the replica");
                    proc.restart_for = Some(why);
                    Self::begin_stop(proc, now, stop_timeout);
                }
            }
            let unwanted = wanted.get(name).is_none_or(|l| **l != proc.launch);
            if unwanted {
                if proc.child.is_none() {
                    gone.push(name.clone());
                } else {
                    Self::begin_stop(proc, now, stop_timeout);
                }
            }
            if let Some(at) = proc.kill_at
                && proc.child.is_some()
                && now >= at
            {
                tracing::warn!(worker = %name, "worker did not stop in time; killing it");
                signal_group(proc.pid, Signal::SIGKILL);
                kill_tree(cgroups.as_deref(), name);
                let mut drain = self.drain.lock().unwrap_or_else(|p| p.into_inner());
                if proc.restart_for.is_none() && !drain.killed.contains(name) {
                    drain.killed.push(name.clone());
                }
            }
        }
        for name in gone {
            self.procs.remove(&name);
            if let Some(logs) = &self.logs {
                logs.remove(&name);
            }
            self.emptying.insert(name);
        }
        if let Some(cgroups) = &cgroups {
            // A replica started again under its name reuses its cgroup.
            self.emptying.retain(|name| !self.procs.contains_key(name) && !cgroups.remove(name.as_str()));
        }
        if gated {
            return;
        }
        for (name, launch) in wanted {
            let due = match self.procs.get(name) {
                None => true,
                Some(p) => p.state == ProcessState::Restarting && p.child.is_none() && now >= p.next_start,
            };
            if due {
                self.start(name, launch, now);
            }
        }
    }

    fn publish(&self) {
        let report = self
            .procs
            .iter()
            .map(|(name, p)| SupervisedWorker {
                name: name.clone(),
                deployment: p.launch.deployment.clone(),
                state: p.state,
                pid: p.pid,
                restarts: p.restarts,
                last_exit: report_text(&p.last_exit),
                ready: p.ready.filter(|_| p.state == ProcessState::Running),
                probe: report_text(&p.probe),
            })
            .collect::<Vec<_>>();
        let mut held = self.report.lock().unwrap_or_else(|p| p.into_inner());
        let shape = |r: &[SupervisedWorker]| {
            r.iter()
                .map(|w| (w.name.clone(), w.state, w.last_exit.clone(), w.ready, w.probe.clone()))
                .collect::<Vec<_>>()
        };
        let changed = shape(&held) != shape(&report);
        *held = report;
        drop(held);
        if changed {
            self.changed.notify_one();
        }
    }

    /// SIGTERM to every child, SIGKILL to those still there at the deadline; returns when
    /// all have exited — a stop is done when the processes are gone, not when signalled.
    async fn stop_all(&mut self) {
        let now = Instant::now();
        let timeout = self.stop_timeout;
        for proc in self.procs.values_mut() {
            Self::begin_stop(proc, now, timeout);
        }
        for (name, proc) in self.procs.iter_mut() {
            let Some(child) = proc.child.as_mut() else { continue };
            let deadline = proc.kill_at.unwrap_or(now);
            if tokio::time::timeout_at(deadline, child.wait()).await.is_err() {
                tracing::warn!(worker = %name, "worker did not stop in time; killing it");
                let _ = child.kill().await;
            }
            // Whatever it left in its group, or anywhere in its cgroup, goes with it.
            signal_group(proc.pid, Signal::SIGKILL);
            kill_tree(self.cgroups.as_deref(), name);
            proc.child = None;
            proc.pid = None;
        }
        self.procs.clear();
        tracing::info!("all workers stopped");
    }
}

/// A child's stdout or stderr, read as one kind of thing.
enum Pipe {
    Out(tokio::process::ChildStdout),
    Err(tokio::process::ChildStderr),
}

impl tokio::io::AsyncRead for Pipe {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Pipe::Out(p) => std::pin::Pin::new(p).poll_read(cx, buf),
            Pipe::Err(p) => std::pin::Pin::new(p).poll_read(cx, buf),
        }
    }
}

fn stop_signal(s: Option<contract::StopSignal>) -> Signal {
    use contract::StopSignal as S;
    match s {
        None | Some(S::Term) => Signal::SIGTERM,
        Some(S::Int) => Signal::SIGINT,
        Some(S::Quit) => Signal::SIGQUIT,
        Some(S::Hup) => Signal::SIGHUP,
        Some(S::Usr1) => Signal::SIGUSR1,
        Some(S::Usr2) => Signal::SIGUSR2,
    }
}

/// A free loopback port for a replica to listen on (`APIARY_PORT`, `PORT`), found by
/// binding port 0 and letting go: another process could take it in between, which the
/// replica meets as a failed bind and its restart (with a new port) answers.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(name: &str, state: ProcessState) -> SupervisedWorker {
        SupervisedWorker {
            name: NodeId::sanitized(name),
            deployment: NodeId::sanitized("web"),
            state,
            pid: None,
            restarts: 5,
            last_exit: "exit status 1".into(),
            ready: None,
            probe: String::new(),
        }
    }

    #[test]
    fn a_report_is_always_valid_for_the_queen() {
        let hostile = format!("cannot start: /opt/{}\u{7}\nx: no such file", "ä".repeat(300));
        let text = report_text(&hostile);
        assert!(text.len() <= MAX_REPORT && !text.chars().any(char::is_control), "{text}");
        assert!(text.starts_with("cannot start: /opt/") && text.ends_with("x: no such file"), "both ends kept: {text}");
        let mut report = worker("web-0", ProcessState::Restarting);
        report.last_exit = text;
        let hb = contract::HiveHeartbeat {
            workers: vec![report],
            ..serde_json::from_str(contract::examples::HIVE_HEARTBEAT).expect("example")
        };
        assert!(hb.validate().is_ok(), "the hive's heartbeat stays valid");
    }

    #[test]
    fn a_command_that_cannot_start_is_said_in_words() {
        let dir = std::env::temp_dir().join(format!("hive-cmd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = |name: &str, bytes: &[u8], mode: u32| {
            use std::os::unix::fs::PermissionsExt;
            let p = dir.join(name);
            std::fs::write(&p, bytes).expect("write");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
            p.to_string_lossy().into_owned()
        };
        let script = file("ok.sh", b"#!/bin/sh\n", 0o755);
        let plain = file("plain.sh", b"#!/bin/sh\n", 0o644);
        let data = file("data.bin", b"PK\x03\x04", 0o755);
        let path = Some(std::ffi::OsStr::new("/usr/bin:/bin"));
        assert_eq!(cannot_start(&script, path), None);
        assert_eq!(cannot_start("sh", path), None, "found on PATH");
        let said = |c: &str| cannot_start(c, path).unwrap_or_default();
        assert!(said("/no/such/binary").ends_with("no such file"));
        assert!(said("no-such-program-here").ends_with("not found on PATH"));
        assert!(said(&plain).contains("not executable"));
        assert!(said(&data).contains("exec format error"));
        assert!(said(&dir.to_string_lossy()).ends_with("is a directory"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A replica that runs `script` with `sh -c`.
    fn shell(script: String) -> WorkerLaunch {
        WorkerLaunch {
            name: NodeId::sanitized("web-0"),
            deployment: NodeId::sanitized("web"),
            command: "sh".into(),
            args: vec!["-c".into(), script],
            env: Default::default(),
            max_restarts: None,
            process: Default::default(),
            probes: Default::default(),
            logs: None,
            resources: None,
        }
    }

    fn child_env() -> ChildEnv {
        ChildEnv { queen: "http://127.0.0.1:1".into(), hive: NodeId::sanitized("h1"), token: None, ca: None }
    }

    /// Runs one replica whose main process backgrounds a grandchild that leaves its
    /// process group (`setsid`) and ignores SIGTERM, then stops the replica; whether the
    /// grandchild is still alive afterwards (it is then killed here).
    async fn grandchild_outlives_its_replica(cgroups: Option<Arc<Cgroups>>, tag: &str) -> bool {
        let pidfile = std::env::temp_dir().join(format!("hive-grandchild-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_file(&pidfile);
        let script =
            format!("setsid sh -c 'trap \"\" TERM; echo $$ > {}; exec sleep 600' & exec sleep 600", pidfile.display());
        let (launch, env) = (shell(script), child_env());
        let supervisor = Supervisor::new(env, Duration::from_secs(5)).contain(cgroups);
        let report = supervisor.report();
        let (desired, rx) = watch::channel(Desired { workers: vec![launch], ..Default::default() });
        let stop = CancellationToken::new();
        let running = tokio::spawn(supervisor.run(rx, stop.clone()));
        let mut grandchild = 0;
        crate::cgroup::tests::until("the grandchild runs", || {
            grandchild = std::fs::read_to_string(&pidfile).ok().and_then(|t| t.trim().parse().ok()).unwrap_or(0);
            grandchild > 0
        })
        .await;
        let main = report.lock().unwrap_or_else(|p| p.into_inner()).first().and_then(|w| w.pid).unwrap_or(0);
        assert_ne!(
            nix::unistd::getpgid(Some(Pid::from_raw(grandchild))).ok(),
            Some(Pid::from_raw(main as i32)),
            "it left the group"
        );

        desired.send_replace(Desired::default());
        crate::cgroup::tests::until("the replica is stopped", || {
            report.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let outlived = !crate::cgroup::tests::dead(grandchild);
        let _ = kill(Pid::from_raw(grandchild), Signal::SIGKILL);
        stop.cancel();
        let _ = running.await;
        let _ = std::fs::remove_file(&pidfile);
        outlived
    }

    #[tokio::test]
    async fn a_replicas_grandchildren_die_with_it_even_when_they_leave_its_group() {
        let Some(cgroups) = crate::cgroup::tests::for_test("supervisor") else { return };
        let cgroups = Arc::new(cgroups);
        // Without a cgroup the process group is all the hive has, and the grandchild left it.
        assert!(grandchild_outlives_its_replica(None, "bare").await, "the case this is for");
        assert!(!grandchild_outlives_its_replica(Some(Arc::clone(&cgroups)), "contained").await);
        assert!(!cgroups.root().exists(), "the supervisor removes its cgroups when it stops");
    }

    #[tokio::test]
    async fn a_replica_stops_on_its_deployments_signal_and_starts_in_its_directory() {
        let dir = std::env::temp_dir().join(format!("hive-stop-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let said = dir.join("said");
        let script = format!(
            "pwd > {0}.pwd; trap 'echo INT > {0}; exit 0' INT; trap 'echo TERM > {0}; exit 0' TERM; while :; do sleep 0.05; done",
            said.display()
        );
        let launch = WorkerLaunch {
            process: contract::ProcessOptions {
                stop_signal: Some(contract::StopSignal::Int),
                stop_timeout_ms: Some(3_000),
                working_dir: Some(dir.display().to_string()),
                user: None,
            },
            ..shell(script)
        };
        let env = child_env();
        let supervisor = Supervisor::new(env, Duration::from_millis(200));
        let report = supervisor.report();
        let (desired, rx) = watch::channel(Desired { workers: vec![launch], ..Default::default() });
        let stop = CancellationToken::new();
        let running = tokio::spawn(supervisor.run(rx, stop.clone()));
        let pwd = dir.join("said.pwd");
        crate::cgroup::tests::until("the replica runs", || {
            std::fs::read_to_string(&pwd).is_ok_and(|t| t.ends_with('\n'))
        })
        .await;
        desired.send_replace(Desired::default());
        crate::cgroup::tests::until("the replica is stopped", || {
            report.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
        })
        .await;
        stop.cancel();
        let _ = running.await;
        let signal = std::fs::read_to_string(&said).unwrap_or_default();
        let started_in = std::fs::read_to_string(&pwd).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&dir);
        // The hive's own timeout (200 ms) would have killed it before the trap; its
        // deployment gave it three seconds, and INT rather than TERM.
        assert_eq!(signal.trim(), "INT");
        assert_eq!(started_in.trim(), dir.display().to_string());
    }

    /// As root, a replica runs as the user its deployment names, with that user's groups;
    /// a hive that is not root says it cannot, rather than run it as itself.
    #[tokio::test]
    async fn a_replica_runs_as_its_deployments_user() {
        let mut launch = shell("exec sleep 600".into());
        launch.process.user = Some("nobody".into());
        let nobody = nix::unistd::User::from_name("nobody").ok().flatten();
        let supervisor = Supervisor::new(child_env(), Duration::from_secs(5));
        let report = supervisor.report();
        let (_desired, rx) = watch::channel(Desired { workers: vec![launch], ..Default::default() });
        let stop = CancellationToken::new();
        let running = tokio::spawn(supervisor.run(rx, stop.clone()));
        let first = || report.lock().unwrap_or_else(|p| p.into_inner()).first().cloned();
        // The process's uid once it runs the command (before, it is the hive's wrapper).
        let uid = |pid: u32| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            status.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace().next()?.parse::<u32>().ok()
        };
        match (nix::unistd::geteuid().is_root(), nobody) {
            (true, Some(nobody)) => {
                let want = nobody.uid.as_raw();
                crate::cgroup::tests::until("the replica runs as nobody", || {
                    first().and_then(|w| w.pid).and_then(uid) == Some(want)
                })
                .await;
            }
            (true, None) => {
                crate::cgroup::tests::until("no such user, said", || {
                    first().is_some_and(|w| w.last_exit.contains("no such user"))
                })
                .await;
            }
            (false, _) => {
                crate::cgroup::tests::until("the hive says it cannot", || {
                    first().is_some_and(|w| w.last_exit.contains("only a hive running as root"))
                })
                .await;
            }
        }
        stop.cancel();
        let _ = running.await;
    }

    /// A replica whose memory grows past its deployment's limit is restarted, saying so.
    #[tokio::test]
    async fn a_replica_over_its_memory_limit_is_restarted_with_that_reason() {
        // The shell itself holds 32 MB in a variable; its limit is 8 MiB.
        let mut launch = shell("x=$(head -c 32000000 /dev/zero | tr '\\0' a); sleep 600".into());
        launch.resources = Some(contract::ResourceRequest { cpu_millis: 100, memory_bytes: 8 << 20 });
        let supervisor = Supervisor::new(child_env(), Duration::from_secs(5));
        let report = supervisor.report();
        let (_desired, rx) = watch::channel(Desired { workers: vec![launch], ..Default::default() });
        let stop = CancellationToken::new();
        let running = tokio::spawn(supervisor.run(rx, stop.clone()));
        crate::cgroup::tests::until("restarted for its memory", || {
            let held = report.lock().unwrap_or_else(|p| p.into_inner());
            held.first().is_some_and(|w| w.restarts >= 1 && w.last_exit.starts_with("over its memory limit: "))
        })
        .await;
        let said = report.lock().unwrap_or_else(|p| p.into_inner()).first().map(|w| w.last_exit.clone());
        assert!(said.as_deref().is_some_and(|s| s.ends_with("of 8 MiB")), "{said:?}");
        stop.cancel();
        let _ = running.await;
    }

    #[tokio::test]
    async fn each_replica_is_given_a_port_to_listen_on() {
        let file = std::env::temp_dir().join(format!("hive-port-{}", std::process::id()));
        let _ = std::fs::remove_file(&file);
        let script = format!("echo \"$APIARY_PORT $PORT\" > {}; exec sleep 600", file.display());
        let (launch, env) = (shell(script), child_env());
        let supervisor = Supervisor::new(env, Duration::from_secs(5));
        let (_desired, rx) = watch::channel(Desired { workers: vec![launch], ..Default::default() });
        let stop = CancellationToken::new();
        let running = tokio::spawn(supervisor.run(rx, stop.clone()));
        let mut said = String::new();
        crate::cgroup::tests::until("the replica says its port", || {
            said = std::fs::read_to_string(&file).unwrap_or_default();
            said.ends_with('\n')
        })
        .await;
        stop.cancel();
        let _ = running.await;
        let _ = std::fs::remove_file(&file);
        let ports: Vec<u16> = said.split_whitespace().filter_map(|p| p.parse().ok()).collect();
        assert_eq!(ports.len(), 2, "APIARY_PORT and PORT: {said:?}");
        assert!(ports[0] > 0 && ports[0] == ports[1], "{said:?}");
    }

    #[test]
    fn a_worker_failed_for_good_degrades_the_hive() {
        assert_eq!(health(&[]), Ok("0 of 0 workers running".into()));
        let running = [worker("web-0", ProcessState::Running), worker("web-1", ProcessState::Restarting)];
        assert_eq!(health(&running), Ok("1 of 2 workers running".into()));
        let failed = [worker("web-0", ProcessState::Running), worker("web-1", ProcessState::Failed)];
        let err = health(&failed).expect_err("degraded");
        assert!(err.contains("web-1 (exit status 1)"), "{err}");
    }
}
