//! The health checks a hive runs against each replica it supervises: liveness (failing,
//! the replica is restarted), readiness (failing, it gets no jobs and a rollout does not
//! count it up) and startup (until it passes, the others wait; failing, a restart).
//!
//! Deciding is pure ([`Probing::step`] takes the time and the results that came in);
//! the checks themselves run as tasks, each bounded by its probe's timeout, and their
//! results are picked up on the supervisor's next pass.

use std::time::Duration;

use contract::{Probe, ProbeCheck, Probes};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Without any probe, a process that has run this long counts as ready: long enough that
/// a program failing at start is not taken for up, short enough that a rollout of plain
/// programs moves on. Before that its readiness is unknown, not false: a worker that
/// heartbeats gets jobs from its first beat.
pub const READY_AFTER: Duration = Duration::from_secs(3);

/// The first check of a probe comes this soon after the process started, or after its
/// interval if that is shorter.
const FIRST_CHECK: Duration = Duration::from_secs(1);

/// Runs one check to its end (the timeout is put around it by the caller).
pub type Checker =
    std::sync::Arc<dyn Fn(Probe, Target) -> futures_util::future::BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// The checks as they really run: HTTP, TCP, a program.
pub fn real_checks() -> Checker {
    std::sync::Arc::new(|probe, target| Box::pin(async move { check(&probe, &target).await }))
}

/// Where a probe reaches its replica.
#[derive(Clone, Debug)]
pub struct Target {
    pub port: u16,
    pub working_dir: Option<String>,
    /// The replica's uid and gid, which an exec probe runs as.
    pub user: Option<(u32, u32)>,
}

/// One probe's schedule and results.
struct Runner {
    probe: Probe,
    next_at: Instant,
    in_flight: Option<oneshot::Receiver<Result<(), String>>>,
    failures_in_row: u32,
    passed_once: bool,
    last_failure: String,
}

impl Runner {
    fn new(probe: &Probe, started: Instant) -> Self {
        let first = FIRST_CHECK.min(Duration::from_millis(probe.interval_ms));
        Self {
            probe: probe.clone(),
            next_at: started + first,
            in_flight: None,
            failures_in_row: 0,
            passed_once: false,
            last_failure: String::new(),
        }
    }

    fn failing(&self) -> bool {
        self.failures_in_row >= self.probe.failures
    }

    /// Takes in a finished check and starts the next one when due. A check still running
    /// at its next due time is not doubled: the timeout ends it first.
    fn poll(&mut self, now: Instant, target: &Target, checker: &Checker) {
        if let Some(rx) = self.in_flight.as_mut() {
            match rx.try_recv() {
                Ok(result) => {
                    self.in_flight = None;
                    self.record(result);
                }
                Err(oneshot::error::TryRecvError::Empty) => return,
                Err(oneshot::error::TryRecvError::Closed) => {
                    self.in_flight = None;
                    self.record(Err("the check did not finish".into()));
                }
            }
        }
        if now >= self.next_at {
            self.next_at = now + Duration::from_millis(self.probe.interval_ms);
            self.in_flight = Some(run(&self.probe, target, checker));
        }
    }

    fn record(&mut self, result: Result<(), String>) {
        match result {
            Ok(()) => {
                self.failures_in_row = 0;
                self.passed_once = true;
                self.last_failure.clear();
            }
            Err(why) => {
                self.failures_in_row += 1;
                self.last_failure = why;
            }
        }
    }
}

/// What a pass over one replica's probes concluded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Restart it, for this reason.
    pub restart: Option<String>,
    /// Unknown (`None`) only for a process without probes that has not run long yet.
    pub ready: Option<bool>,
    /// The failure of a probe that is failing now, for the report.
    pub failing: String,
}

/// The probes of one running instance.
pub struct Probing {
    checker: Checker,
    started: Instant,
    startup: Option<Runner>,
    /// When the startup probe passed (the start itself without one).
    started_up: Option<Instant>,
    liveness: Option<Runner>,
    readiness: Option<Runner>,
}

impl Probing {
    pub fn new(probes: &Probes, started: Instant, checker: Checker) -> Self {
        let runner = |p: &Option<Probe>| p.as_ref().map(|p| Runner::new(p, started));
        Self {
            checker,
            started,
            startup: runner(&probes.startup),
            started_up: probes.startup.is_none().then_some(started),
            liveness: runner(&probes.liveness),
            readiness: runner(&probes.readiness),
        }
    }

    /// Moves the probes on at `now` and says what follows.
    pub fn step(&mut self, now: Instant, target: &Target) -> Verdict {
        if self.started_up.is_none() {
            let Some(startup) = self.startup.as_mut() else { return Verdict::default() };
            startup.poll(now, target, &self.checker);
            if startup.passed_once {
                self.started_up = Some(now);
                // The others start counting from here, not from the process's start.
                let from = |r: &mut Option<Runner>| {
                    if let Some(r) = r {
                        *r = Runner::new(&r.probe, now);
                    }
                };
                from(&mut self.liveness);
                from(&mut self.readiness);
            } else {
                let failing = if startup.failures_in_row > 0 {
                    format!("startup: {}", startup.last_failure)
                } else {
                    String::new()
                };
                let restart = startup.failing().then(|| said("startup", startup));
                return Verdict { restart, ready: Some(false), failing };
            }
        }
        let up_since = self.started_up.unwrap_or(self.started);
        let mut verdict = Verdict::default();
        if let Some(live) = self.liveness.as_mut() {
            live.poll(now, target, &self.checker);
            if live.failures_in_row > 0 {
                verdict.failing = format!("liveness: {}", live.last_failure);
            }
            if live.failing() {
                verdict.restart = Some(said("liveness", live));
            }
        }
        verdict.ready = match self.readiness.as_mut() {
            Some(ready) => {
                ready.poll(now, target, &self.checker);
                if ready.failures_in_row > 0 && verdict.failing.is_empty() {
                    verdict.failing = format!("readiness: {}", ready.last_failure);
                }
                Some(ready.passed_once && !ready.failing())
            }
            // Its startup probe passing is what it has to say it is ready.
            None if self.startup.is_some() => Some(true),
            None => (now.saturating_duration_since(up_since) >= READY_AFTER).then_some(true),
        };
        verdict
    }
}

fn said(which: &str, runner: &Runner) -> String {
    format!("{which} probe failed {} times: {}", runner.failures_in_row, runner.last_failure)
}

/// Starts one check; its result arrives on the receiver within the probe's timeout.
fn run(probe: &Probe, target: &Target, checker: &Checker) -> oneshot::Receiver<Result<(), String>> {
    let (tx, rx) = oneshot::channel();
    let timeout = Duration::from_millis(probe.timeout_ms);
    let checking = checker(probe.clone(), target.clone());
    let probe = probe.clone();
    tokio::spawn(async move {
        let result = match tokio::time::timeout(timeout, checking).await {
            Ok(result) => result,
            Err(_) => Err(format!("{}: no answer in {} ms", what(&probe), probe.timeout_ms)),
        };
        let _ = tx.send(result);
    });
    rx
}

fn what(probe: &Probe) -> String {
    match probe.check() {
        Some(ProbeCheck::Http(path)) => format!("GET {path}"),
        Some(ProbeCheck::Tcp) => "tcp connect".into(),
        Some(ProbeCheck::Exec(argv)) => argv.first().cloned().unwrap_or_default(),
        None => "no check".into(),
    }
}

async fn check(probe: &Probe, target: &Target) -> Result<(), String> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], target.port));
    match probe.check() {
        Some(ProbeCheck::Http(path)) => {
            let client = http_client();
            let answer = client.get(format!("http://{addr}{path}")).send().await;
            match answer {
                Ok(r) if r.status().is_success() || r.status().is_redirection() => Ok(()),
                Ok(r) => Err(format!("GET {path}: {}", r.status())),
                Err(e) => Err(format!("GET {path}: {}", error_chain(&e))),
            }
        }
        Some(ProbeCheck::Tcp) => {
            tokio::net::TcpStream::connect(addr).await.map(drop).map_err(|e| format!("tcp connect: {e}"))
        }
        Some(ProbeCheck::Exec(argv)) => {
            let mut cmd = tokio::process::Command::new(&argv[0]);
            cmd.args(&argv[1..])
                .env("APIARY_PORT", target.port.to_string())
                .env("PORT", target.port.to_string())
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true);
            if let Some(dir) = &target.working_dir {
                cmd.current_dir(dir);
            }
            if let Some((uid, gid)) = target.user {
                cmd.uid(uid).gid(gid);
            }
            match cmd.status().await {
                Ok(status) if status.success() => Ok(()),
                Ok(status) => Err(format!("{}: {status}", argv[0])),
                Err(e) => Err(format!("{}: {e}", argv[0])),
            }
        }
        None => Err("no check".into()),
    }
}

/// One client for every HTTP probe: no redirects followed (a 3xx already passes), no
/// proxy, connections not kept (a probe must see a replica that stopped accepting).
fn http_client() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        queen_client::http_builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .pool_max_idle_per_host(0)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new())
    })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU8, Ordering};

    use super::*;

    const PASS: u8 = 0;
    const FAIL: u8 = 1;
    const HANG: u8 = 2;

    /// Checks that answer as `answer` says at the time: pass, fail, or never (a hung
    /// replica, which the timeout ends).
    fn fake(answer: &Arc<AtomicU8>) -> Checker {
        let answer = Arc::clone(answer);
        Arc::new(move |_, _| {
            let now = answer.load(Ordering::Relaxed);
            Box::pin(async move {
                match now {
                    PASS => Ok(()),
                    FAIL => Err("refused".into()),
                    _ => std::future::pending().await,
                }
            })
        })
    }

    fn probe(interval_ms: u64, failures: u32) -> Probe {
        Probe { tcp: Some(true), http: None, interval_ms, timeout_ms: 50, failures, ..Probe::http("/") }
    }

    fn target() -> Target {
        Target { port: 1, working_dir: None, user: None }
    }

    /// Steps `probing` every 10 ms of paused time for `until`.
    async fn steps(probing: &mut Probing, until: Duration) -> Vec<Verdict> {
        let end = Instant::now() + until;
        let mut seen = Vec::new();
        while Instant::now() < end {
            seen.push(probing.step(Instant::now(), &target()));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        seen
    }

    #[tokio::test(start_paused = true)]
    async fn without_probes_a_process_is_ready_once_it_has_run_a_while() {
        let answer = Arc::new(AtomicU8::new(FAIL));
        let mut probing = Probing::new(&Probes::default(), Instant::now(), fake(&answer));
        assert_eq!(probing.step(Instant::now(), &target()).ready, None, "unknown, not unready");
        tokio::time::advance(READY_AFTER).await;
        assert_eq!(probing.step(Instant::now(), &target()), Verdict { ready: Some(true), ..Default::default() });
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_replica_is_restarted_after_its_failures_in_a_row() {
        let answer = Arc::new(AtomicU8::new(PASS));
        let probes = Probes { liveness: Some(probe(100, 3)), ..Default::default() };
        let mut probing = Probing::new(&probes, Instant::now(), fake(&answer));
        let seen = steps(&mut probing, Duration::from_millis(500)).await;
        assert!(seen.iter().all(|v| v.restart.is_none() && v.failing.is_empty()), "{seen:?}");
        // It stops answering (SIGSTOP, a deadlock): each check times out.
        answer.store(HANG, Ordering::Relaxed);
        let seen = steps(&mut probing, Duration::from_millis(250)).await;
        assert!(seen.iter().all(|v| v.restart.is_none()), "two failures are not three: {seen:?}");
        assert_eq!(seen.last().map(|v| v.failing.as_str()), Some("liveness: tcp connect: no answer in 50 ms"));
        let seen = steps(&mut probing, Duration::from_millis(100)).await;
        let restart = seen.iter().find_map(|v| v.restart.clone()).unwrap_or_default();
        assert_eq!(restart, "liveness probe failed 3 times: tcp connect: no answer in 50 ms");
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_follows_its_probe_and_startup_holds_the_others() {
        let answer = Arc::new(AtomicU8::new(FAIL));
        let probes =
            Probes { startup: Some(probe(100, 5)), liveness: Some(probe(100, 1)), readiness: Some(probe(100, 1)) };
        // Failing, startup is tried four times without a restart, and the liveness probe
        // (which would restart at one failure) never runs.
        let mut probing = Probing::new(&probes, Instant::now(), fake(&answer));
        let seen = steps(&mut probing, Duration::from_millis(480)).await;
        assert!(seen.iter().all(|v| v.restart.is_none() && v.ready == Some(false)), "{seen:?}");
        assert_eq!(seen.last().map(|v| v.failing.as_str()), Some("startup: refused"));
        let seen = steps(&mut probing, Duration::from_millis(100)).await;
        let restart = seen.iter().find_map(|v| v.restart.clone()).unwrap_or_default();
        assert_eq!(restart, "startup probe failed 5 times: refused");

        // Passing, startup lets the others run, and readiness follows its own checks.
        answer.store(PASS, Ordering::Relaxed);
        let mut probing = Probing::new(&probes, Instant::now(), fake(&answer));
        let seen = steps(&mut probing, Duration::from_millis(400)).await;
        assert!(seen.last().is_some_and(|v| v.ready == Some(true) && v.restart.is_none()), "{seen:?}");
        answer.store(FAIL, Ordering::Relaxed);
        let seen = steps(&mut probing, Duration::from_millis(150)).await;
        let last = seen.last().cloned().unwrap_or_default();
        assert!(last.ready == Some(false) && last.restart.is_some(), "one failure each: unready, restarted: {last:?}");
    }

    /// A port nothing listens on.
    fn closed() -> Target {
        let port = std::net::TcpListener::bind(("127.0.0.1", 0)).and_then(|l| l.local_addr()).map(|a| a.port());
        Target { port: port.unwrap_or(1), working_dir: None, user: None }
    }

    #[tokio::test]
    async fn real_checks_say_why_they_failed() {
        let target = closed();
        let exec = |argv: &[&str]| Probe {
            exec: Some(argv.iter().map(|a| a.to_string()).collect()),
            http: None,
            ..Probe::http("/")
        };
        assert_eq!(check(&exec(&["sh", "-c", "test \"$PORT\" -gt 0"]), &target).await, Ok(()));
        let failed = check(&exec(&["sh", "-c", "exit 3"]), &target).await.expect_err("fails");
        assert!(failed.contains("exit status: 3"), "{failed}");
        let refused = check(&Probe::http("/healthz"), &target).await.expect_err("fails");
        assert!(refused.starts_with("GET /healthz:") && refused.contains("refused"), "{refused}");
        let tcp = Probe { tcp: Some(true), http: None, ..Probe::http("/") };
        let refused = check(&tcp, &target).await.expect_err("fails");
        assert!(refused.starts_with("tcp connect:"), "{refused}");
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
        let open = Target { port: listener.local_addr().expect("addr").port(), working_dir: None, user: None };
        assert_eq!(check(&tcp, &open).await, Ok(()));
    }
}
