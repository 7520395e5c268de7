//! An in-process Apiary cluster for tests: a real queen, hives and workers, each on its
//! own tokio runtime and thread, listening on port 0 with fast intervals.
//!
//! Giving every node its own runtime is what makes [`Sandbox::kill_hive`] honest: the
//! runtime is dropped with everything spawned on it, no goodbye heartbeat is sent and
//! the sockets close, as with `kill -9`. A graceful stop instead cancels the node's token
//! and waits for its `run` to return, as SIGTERM does.

pub mod samples;
mod sse;

pub use etcd_process::Etcd;
pub use sse::SnapshotStream;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use contract::{NodeId, Snapshot};
use queen_client::QueenClient;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Builds the `queen`, `hive` and `worker` binaries (a no-op when `cargo xtask test`
/// already did) and returns the directory they are in: the target profile directory the
/// running test binary lives under.
pub fn built_binaries() -> anyhow::Result<std::path::PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = std::process::Command::new(cargo);
    build.args(["build", "--quiet", "-p", "queen-cli", "-p", "hive", "-p", "worker"]);
    // The same features as this test run, or the build would replace the binaries (and
    // the queen library) with another variant.
    if cfg!(feature = "etcd") {
        build.args(["--features", "queen/etcd"]);
    }
    let status = build.current_dir(env!("CARGO_MANIFEST_DIR")).status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build of the binaries failed");
    }
    let exe = std::env::current_exe()?;
    // <target>/<profile>/deps/<test>-<hash>
    let dir = exe.parent().and_then(|deps| deps.parent()).context("test binary has no profile dir")?;
    Ok(dir.to_path_buf())
}

/// A fresh directory under the system's temp dir, removed when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> std::io::Result<Self> {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("apiary-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The sum over `worker_urls` of each worker's own count of jobs of `kind` that ended
/// with `outcome` (`apiary_jobs_total`): what the workers ran, not what callers saw.
pub async fn worker_job_count(worker_urls: &[String], kind: &str, outcome: &str) -> anyhow::Result<u64> {
    let line = format!("apiary_jobs_total{{kind=\"{kind}\",outcome=\"{outcome}\"}} ");
    let mut total = 0;
    for url in worker_urls {
        let metrics = queen_client::http().get(format!("{url}/metrics")).send().await?.text().await?;
        if let Some(n) = metrics.lines().find_map(|l| l.strip_prefix(line.as_str())) {
            total += n.trim().parse::<u64>()?;
        }
    }
    Ok(total)
}

/// Polls `check` until it returns `Some`, or fails after `timeout` naming `what`.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One node: a thread running a runtime running the node's `run`.
struct Node {
    id: NodeId,
    addr: SocketAddr,
    /// Cancelled for a graceful stop (the node's own shutdown path).
    stop: CancellationToken,
    /// Cancelled to kill: `run` is abandoned mid-flight and its runtime dropped.
    kill: CancellationToken,
    /// The node's runtime, to freeze it.
    runtime: tokio::runtime::Handle,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl Node {
    fn spawn<F, Fut>(id: NodeId, bind: SocketAddr, run: F) -> anyhow::Result<Self>
    where
        F: FnOnce(TcpListener, CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        let stop = CancellationToken::new();
        let kill = CancellationToken::new();
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new().name(id.to_string()).spawn({
            let (stop, kill) = (stop.clone(), kill.clone());
            move || -> anyhow::Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                let result = rt.block_on(async move {
                    let listener = match lifecycle::bind(bind) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = tx.send(Err(anyhow!("bind {bind}: {e}")));
                            return Ok(());
                        }
                    };
                    let _ = tx.send(
                        listener.local_addr().map(|a| (a, tokio::runtime::Handle::current())).map_err(Into::into),
                    );
                    tokio::select! {
                        r = run(listener, stop) => r,
                        _ = kill.cancelled() => Ok(()),
                    }
                });
                // Drops every task still spawned on this node, without waiting for any.
                rt.shutdown_background();
                result
            }
        })?;
        let (addr, runtime) = rx.recv().context("node thread died before binding")??;
        Ok(Self { id, addr, stop, kill, runtime, thread: Some(thread) })
    }

    /// Like SIGSTOP for `d`, then SIGCONT: the node's only runtime thread is blocked, so
    /// none of its tasks runs, its timers fall behind and its sockets go unanswered.
    fn freeze(&self, d: Duration) {
        self.runtime.spawn(async move { std::thread::sleep(d) });
    }

    async fn join(&mut self) -> anyhow::Result<()> {
        match self.thread.take() {
            Some(t) => {
                tokio::task::spawn_blocking(move || t.join()).await?.map_err(|_| anyhow!("node thread panicked"))?
            }
            None => Ok(()),
        }
    }

    fn finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    async fn stop(&mut self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.join().await
    }

    async fn kill(&mut self) -> anyhow::Result<()> {
        self.kill.cancel();
        self.join().await
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How to build a sandbox.
#[derive(Clone, Debug)]
pub struct SandboxBuilder {
    hives: usize,
    workers_per_hive: usize,
    heartbeat_interval: Duration,
    snapshot_interval: Duration,
    ui_dir: Option<std::path::PathBuf>,
    data_dir: Option<std::path::PathBuf>,
    orphan_grace: Option<Duration>,
    max_workers: u32,
    storage_hooks: Vec<String>,
    drain_on_shutdown: Duration,
    /// (cluster, admin, read) tokens the queen requires; hives and workers get the first.
    tokens: (Option<String>, Option<String>, Option<String>),
    max_stream_clients: Option<usize>,
    tls: bool,
    /// Hives get node tokens made from the cluster token instead of the token itself.
    node_tokens: bool,
    insecure_no_auth: bool,
    /// Hives and workers are given a dead queen first in their list of queens.
    dead_queen_first: bool,
    /// Run this many queens as replicas on the etcd at this endpoint, with this lease.
    replicas: Option<(usize, String, Duration)>,
}

impl Default for SandboxBuilder {
    fn default() -> Self {
        Self {
            hives: 2,
            workers_per_hive: 2,
            heartbeat_interval: Duration::from_millis(200),
            snapshot_interval: Duration::from_millis(200),
            ui_dir: None,
            data_dir: None,
            orphan_grace: None,
            max_workers: 4,
            storage_hooks: Vec::new(),
            // Off unless a test asks: tearing a sandbox down should not move work around.
            drain_on_shutdown: Duration::ZERO,
            tokens: (None, None, None),
            max_stream_clients: None,
            tls: false,
            node_tokens: false,
            insecure_no_auth: false,
            dead_queen_first: false,
            replicas: None,
        }
    }
}

impl SandboxBuilder {
    pub fn hives(mut self, n: usize) -> Self {
        self.hives = n;
        self
    }
    pub fn workers_per_hive(mut self, n: usize) -> Self {
        self.workers_per_hive = n;
        self
    }
    pub fn heartbeat_interval(mut self, d: Duration) -> Self {
        self.heartbeat_interval = d;
        self
    }
    pub fn snapshot_interval(mut self, d: Duration) -> Self {
        self.snapshot_interval = d;
        self
    }
    /// Keep the queen's durable state in `dir` (in memory otherwise).
    pub fn data_dir(mut self, dir: std::path::PathBuf) -> Self {
        self.data_dir = Some(dir);
        self
    }
    /// Shell commands every hive runs in a cluster shutdown's STORAGE phase.
    pub fn storage_hooks(mut self, hooks: &[&str]) -> Self {
        self.storage_hooks = hooks.iter().map(|h| h.to_string()).collect();
        self
    }
    /// Require these tokens at the queen; the sandbox's nodes present the cluster token and
    /// its client the admin token.
    pub fn tokens(mut self, cluster: &str, admin: &str, read: &str) -> Self {
        self.tokens = (Some(cluster.into()), Some(admin.into()), Some(read.into()));
        self
    }
    /// Hives and workers present node tokens (made from the cluster token) rather than
    /// the cluster token itself. Needs [`SandboxBuilder::tokens`].
    pub fn node_tokens(mut self) -> Self {
        self.node_tokens = true;
        self
    }
    /// Hives and workers get `--queen <dead>,<queen>`: they must fail over to join.
    pub fn dead_queen_first(mut self) -> Self {
        self.dead_queen_first = true;
        self
    }
    pub fn max_stream_clients(mut self, n: usize) -> Self {
        self.max_stream_clients = Some(n);
        self
    }
    /// Hives ask the queen to drain them when stopped, waiting up to `d`.
    pub fn drain_on_shutdown(mut self, d: Duration) -> Self {
        self.drain_on_shutdown = d;
        self
    }
    /// The queen is told `--insecure-no-auth` (it still listens on loopback here): what it
    /// says about itself then can be checked.
    pub fn insecure_no_auth(mut self) -> Self {
        self.insecure_no_auth = true;
        self
    }
    pub fn orphan_grace(mut self, d: Duration) -> Self {
        self.orphan_grace = Some(d);
        self
    }
    /// The queen serves HTTPS with a self-signed certificate made for this sandbox; hives,
    /// workers and [`Sandbox::client`] trust it (and nothing else).
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }
    /// Run `n` queens as replicas on `etcd` (each with the lease `ttl`) instead of one
    /// on the embedded store; nodes and the client are given all of them.
    pub fn replicas(mut self, n: usize, etcd: &Etcd, ttl: Duration) -> Self {
        self.replicas = Some((n.max(1), etcd.endpoint(), ttl));
        self
    }
    /// Serve the built dashboard from `dir`.
    pub fn ui_dir(mut self, dir: std::path::PathBuf) -> Self {
        self.ui_dir = Some(dir);
        self
    }

    /// Starts the queen, then every hive and worker, and waits until the queen sees them
    /// all online.
    pub async fn start(self) -> anyhow::Result<Sandbox> {
        let tls = if self.tls { Some(TlsFiles::generate()?) } else { None };
        let mut sandbox = Sandbox {
            config: self.clone(),
            queen: None,
            peers: Vec::new(),
            hives: Vec::new(),
            workers: Vec::new(),
            tls,
            cgroups: {
                static SANDBOXES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
                let n = SANDBOXES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                format!("apiary-test-{}-{n}-", std::process::id())
            },
        };
        sandbox.start_queen(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        for _ in 1..self.replicas.as_ref().map_or(1, |r| r.0) {
            let node = sandbox.spawn_queen(SocketAddr::from(([127, 0, 0, 1], 0)))?;
            sandbox.peers.push(node);
        }
        if self.replicas.is_some() {
            sandbox.leader_url(Duration::from_secs(20)).await?;
        }
        for h in 0..self.hives {
            let hive_id = NodeId::new(format!("hive-{h}"))?;
            sandbox.add_hive(hive_id.clone())?;
            for w in 0..self.workers_per_hive {
                sandbox.add_worker(&hive_id, NodeId::new(format!("worker-{h}-{w}"))?)?;
            }
        }
        let (hives, workers) = (self.hives, self.hives * self.workers_per_hive);
        sandbox.wait_for_counts(hives, workers, Duration::from_secs(20)).await?;
        Ok(sandbox)
    }
}

/// A running in-process cluster. Dropping it kills whatever is still running.
pub struct Sandbox {
    config: SandboxBuilder,
    queen: Option<Node>,
    /// The other queens, when they run as replicas.
    peers: Vec<Node>,
    hives: Vec<Node>,
    workers: Vec<Node>,
    tls: Option<TlsFiles>,
    /// The prefix of this sandbox's hives' cgroups: stable across a restart of a hive (which
    /// then kills what its killed run left), never shared with another sandbox's hive of
    /// the same id, and cleared when the sandbox goes.
    cgroups: String,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.workers.clear();
        self.hives.clear();
        hive::cgroup::clear_all(&self.cgroups);
    }
}

/// A self-signed certificate for `localhost` and `127.0.0.1`, and its key, on disk.
pub struct TlsFiles {
    _dir: TempDir,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

impl TlsFiles {
    pub fn generate() -> anyhow::Result<Self> {
        let dir = TempDir::new("tls")?;
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
        let (cert, key) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
        std::fs::write(&cert, made.cert.pem())?;
        std::fs::write(&key, made.signing_key.serialize_pem())?;
        Ok(Self { _dir: dir, cert, key })
    }
}

impl Sandbox {
    pub fn builder() -> SandboxBuilder {
        SandboxBuilder::default()
    }

    /// `hives` hives with no workers of their own, 300 ms heartbeats and snapshots: the
    /// start of every test of deployments.
    pub fn fast_hives(hives: usize) -> SandboxBuilder {
        Self::builder()
            .hives(hives)
            .workers_per_hive(0)
            .heartbeat_interval(Duration::from_millis(300))
            .snapshot_interval(Duration::from_millis(300))
    }

    fn queen_node(&self) -> anyhow::Result<&Node> {
        self.queen.as_ref().ok_or_else(|| anyhow!("the queen is not running"))
    }

    pub fn queen_addr(&self) -> SocketAddr {
        self.queen.as_ref().map(|q| q.addr).unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    pub fn queen_url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.queen_addr())
    }

    /// The certificate the queen serves, when it serves HTTPS.
    pub fn ca(&self) -> Option<&std::path::Path> {
        self.tls.as_ref().map(|t| t.cert.as_path())
    }

    pub fn client(&self) -> QueenClient {
        let queens = self.queen_list();
        match QueenClient::with_ca(&queens, self.config.tokens.1.clone(), Duration::from_secs(5), self.ca()) {
            Ok(c) => c,
            Err(e) => panic!("sandbox queen url is always valid: {e}"),
        }
    }

    pub fn hive_ids(&self) -> Vec<NodeId> {
        self.hives.iter().map(|n| n.id.clone()).collect()
    }

    pub fn worker_ids(&self) -> Vec<NodeId> {
        self.workers.iter().map(|n| n.id.clone()).collect()
    }

    pub fn worker_url(&self, id: &NodeId) -> Option<String> {
        self.workers.iter().find(|n| &n.id == id).map(|n| format!("http://{}", n.addr))
    }

    pub fn hive_url(&self, id: &NodeId) -> Option<String> {
        self.hives.iter().find(|n| &n.id == id).map(|n| format!("http://{}", n.addr))
    }

    fn start_queen(&mut self, bind: SocketAddr) -> anyhow::Result<()> {
        self.queen = Some(self.spawn_queen(bind)?);
        Ok(())
    }

    fn spawn_queen(&self, bind: SocketAddr) -> anyhow::Result<Node> {
        let mut config =
            queen::QueenConfig::with_intervals(self.config.heartbeat_interval, self.config.snapshot_interval)?;
        config.ui_dir = self.config.ui_dir.clone();
        config.data_dir = self.config.data_dir.clone();
        if let Some(n) = self.config.max_stream_clients {
            config.max_stream_clients = n;
        }
        let (cluster, admin, read) = &self.config.tokens;
        config.tokens = queen::auth::Tokens::single(cluster.as_deref(), admin.as_deref(), read.as_deref());
        if let Some(grace) = self.config.orphan_grace {
            config.orphan_grace = grace;
        }
        config.insecure_no_auth = self.config.insecure_no_auth;
        if let Some(tls) = &self.tls {
            config.tls = Some(lifecycle::serve::load_tls(&tls.cert, &tls.key)?);
        }
        if let Some((_, endpoint, ttl)) = &self.config.replicas {
            config.etcd = queen::config::EtcdSettings::parse(&format!("etcd://{endpoint}"), None, Some(*ttl))
                .map_err(|e| anyhow!(e))?;
        }
        Node::spawn(NodeId::new("queen")?, bind, move |l, stop| queen::run(config, l, stop))
    }

    /// Every queen's URL, comma-separated, as nodes take it; with no queen running, the
    /// address the first had (so a node started now waits for it to return).
    fn queen_list(&self) -> String {
        let urls = self.queen_urls();
        if urls.is_empty() { self.queen_url() } else { urls.join(",") }
    }

    /// Every queen's URL: the first, then its replicas.
    pub fn queen_urls(&self) -> Vec<String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        self.queen.iter().chain(&self.peers).map(|q| format!("{scheme}://{}", q.addr)).collect()
    }

    /// The URL of the queen that says it leads, once one does.
    pub async fn leader_url(&self, timeout: Duration) -> anyhow::Result<String> {
        let urls = self.queen_urls();
        wait_until("a queen to lead", timeout, || async {
            for url in &urls {
                let Ok(client) = QueenClient::with_ca(url, None, Duration::from_secs(1), self.ca()) else { continue };
                if client.leader().await.is_ok_and(|l| l.is_self) {
                    return Some(url.clone());
                }
            }
            None
        })
        .await
    }

    fn take_queen_at(&mut self, url: &str) -> anyhow::Result<Node> {
        let matches = |n: &Node| url.ends_with(&n.addr.to_string());
        if self.queen.as_ref().is_some_and(matches) {
            return self.queen.take().ok_or_else(|| anyhow!("no queen"));
        }
        let i = self.peers.iter().position(matches).ok_or_else(|| anyhow!("no running queen at {url}"))?;
        Ok(self.peers.remove(i))
    }

    /// Like `kill -9` of the queen at `url`.
    pub async fn kill_queen_at(&mut self, url: &str) -> anyhow::Result<()> {
        self.take_queen_at(url)?.kill().await
    }

    /// SIGTERM to the queen at `url`; waits until it has exited.
    pub async fn stop_queen_at(&mut self, url: &str) -> anyhow::Result<()> {
        self.take_queen_at(url)?.stop().await
    }

    /// Like SIGSTOP of the queen at `url`, and SIGCONT `d` later; returns at once.
    pub fn freeze_queen_at(&self, url: &str, d: Duration) -> anyhow::Result<()> {
        let node = self
            .queen
            .iter()
            .chain(&self.peers)
            .find(|n| url.ends_with(&n.addr.to_string()))
            .ok_or_else(|| anyhow!("no running queen at {url}"))?;
        node.freeze(d);
        Ok(())
    }

    /// The token hive `hive` presents: the cluster token, or its node token.
    pub fn hive_token(&self, hive: &NodeId) -> Option<String> {
        let cluster = self.config.tokens.0.as_ref()?;
        Some(if self.config.node_tokens {
            queen_client::node_token::hive_token(cluster, hive)
        } else {
            cluster.clone()
        })
    }

    /// The token worker `worker` of hive `hive` presents.
    pub fn worker_token(&self, hive: &NodeId, worker: &NodeId) -> Option<String> {
        let hive_token = self.hive_token(hive)?;
        Some(queen_client::node_token::worker_token(&hive_token, worker).unwrap_or(hive_token))
    }

    /// What hives and workers are told the queen is.
    fn queens_for_nodes(&self) -> String {
        // Port 9 (discard) has nothing listening on loopback: connections are refused.
        let queens = self.queen_list();
        if self.config.dead_queen_first { format!("http://127.0.0.1:9,{queens}") } else { queens }
    }

    pub fn add_hive(&mut self, id: NodeId) -> anyhow::Result<()> {
        let mut config = hive::HiveConfig::new(&self.queens_for_nodes(), id.clone(), self.config.heartbeat_interval);
        config.cgroup = Some(format!("{}{id}", self.cgroups));
        config.max_workers = self.config.max_workers;
        config.token = self.hive_token(&id).map(lifecycle::Secret::new);
        config.ca = self.ca().map(Into::into);
        config.worker_stop_timeout = Duration::from_secs(5);
        config.drain_on_shutdown = self.config.drain_on_shutdown;
        config.storage_hooks = self
            .config
            .storage_hooks
            .iter()
            .map(|c| hive::config::StorageHook { command: c.clone(), timeout: Duration::from_secs(5) })
            .collect();
        self.hives
            .push(Node::spawn(id, SocketAddr::from(([127, 0, 0, 1], 0)), move |l, stop| hive::run(config, l, stop))?);
        Ok(())
    }

    pub fn add_worker(&mut self, hive: &NodeId, id: NodeId) -> anyhow::Result<()> {
        let mut config = worker::WorkerConfig::new(
            &self.queens_for_nodes(),
            hive.clone(),
            id.clone(),
            self.config.heartbeat_interval,
        );
        config.drain_timeout = Duration::from_secs(10);
        config.token = self.worker_token(hive, &id).map(lifecycle::Secret::new);
        config.ca = self.ca().map(Into::into);
        self.workers
            .push(Node::spawn(id, SocketAddr::from(([127, 0, 0, 1], 0)), move |l, stop| worker::run(config, l, stop))?);
        Ok(())
    }

    fn take(nodes: &mut Vec<Node>, id: &NodeId) -> anyhow::Result<Node> {
        let i = nodes.iter().position(|n| &n.id == id).ok_or_else(|| anyhow!("no running node {id}"))?;
        Ok(nodes.remove(i))
    }

    /// Like `kill -9`: no goodbye, sockets just close.
    pub async fn kill_hive(&mut self, id: &NodeId) -> anyhow::Result<()> {
        Self::take(&mut self.hives, id)?.kill().await
    }

    /// Like SIGTERM: the hive runs its shutdown path and returns.
    pub async fn stop_hive(&mut self, id: &NodeId) -> anyhow::Result<()> {
        Self::take(&mut self.hives, id)?.stop().await
    }

    /// Like `kill -9`: no goodbye, its port closes.
    pub async fn kill_worker(&mut self, id: &NodeId) -> anyhow::Result<()> {
        Self::take(&mut self.workers, id)?.kill().await
    }

    pub async fn stop_worker(&mut self, id: &NodeId) -> anyhow::Result<()> {
        Self::take(&mut self.workers, id)?.stop().await
    }

    /// Starts stopping a worker without waiting for it; returns a future that waits.
    pub fn begin_stop_worker(
        &mut self,
        id: &NodeId,
    ) -> anyhow::Result<impl Future<Output = anyhow::Result<()>> + use<>> {
        let mut node = Self::take(&mut self.workers, id)?;
        node.stop.cancel();
        Ok(async move { node.join().await })
    }

    /// Whether the queen's `run` has returned on its own (the end of a cluster shutdown).
    pub fn queen_exited(&self) -> bool {
        self.queen.as_ref().is_none_or(Node::finished)
    }

    /// Whether every queen's `run` has returned on its own.
    pub fn queens_exited(&self) -> bool {
        self.queen.iter().chain(&self.peers).all(Node::finished)
    }

    /// Hives whose `run` has returned on their own.
    pub fn exited_hives(&self) -> Vec<NodeId> {
        self.hives.iter().filter(|h| h.finished()).map(|h| h.id.clone()).collect()
    }

    /// Like `kill -9` of the queen.
    pub async fn kill_queen(&mut self) -> anyhow::Result<()> {
        match self.queen.take() {
            Some(mut q) => q.kill().await,
            None => bail!("the queen is not running"),
        }
    }

    /// Stops the queen gracefully; hives and workers keep running and keep retrying.
    pub async fn stop_queen(&mut self) -> anyhow::Result<()> {
        self.queen_node()?;
        match self.queen.take() {
            Some(mut q) => q.stop().await,
            None => Ok(()),
        }
    }

    /// Starts a fresh queen on the address the previous one had.
    pub fn restart_queen(&mut self, addr: SocketAddr) -> anyhow::Result<()> {
        if self.queen.is_some() {
            bail!("the queen is still running");
        }
        self.start_queen(addr)
    }

    pub async fn snapshot(&self) -> anyhow::Result<Snapshot> {
        Ok(self.client().snapshot().await?)
    }

    /// Waits until the queen's registries hold exactly these numbers of online (or
    /// suspect) nodes. Reads the registries, not the snapshot, so it does not depend on
    /// the snapshot tick.
    pub async fn wait_for_counts(&self, hives: usize, workers: usize, timeout: Duration) -> anyhow::Result<()> {
        let client = self.client();
        wait_until(&format!("{hives} hives and {workers} workers online"), timeout, || {
            let client = client.clone();
            async move {
                let h = client.hives().await.ok()?.iter().filter(|h| h.liveness.is_up()).count();
                let w = client.workers().await.ok()?.iter().filter(|w| w.liveness.is_up()).count();
                (h == hives && w == workers).then_some(())
            }
        })
        .await
    }

    /// Stops every node gracefully (workers, hives, then the queen) and joins them all.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        for mut w in std::mem::take(&mut self.workers) {
            w.stop().await?;
        }
        for mut h in std::mem::take(&mut self.hives) {
            h.stop().await?;
        }
        if let Some(mut q) = self.queen.take() {
            q.stop().await?;
        }
        for mut q in std::mem::take(&mut self.peers) {
            q.stop().await?;
        }
        Ok(())
    }
}
