//! A local, single-member etcd server for queen replicas: started by the tests, by
//! `cargo xtask dev --replicas` and by the chaos suite, each on loopback ports nobody else
//! uses (an installed package may run one on 2379), with its own data dir and log file.
//!
//! Pitfalls handled here: etcd reads every `ETCD_*` variable as a flag, so none is passed
//! on; its output goes to a file, never to a pipe someone must drain; it logs at `warn`;
//! history is compacted as it goes, so a long run does not fill the 2 GiB quota.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// One etcd member. Killed when dropped; its data dir is removed then if it was a
/// temporary one.
pub struct Etcd {
    child: Option<Child>,
    client_port: u16,
    peer_port: u16,
    /// Plain-HTTP `/health` (and `/metrics`), so readiness is known without a TLS client.
    metrics_port: u16,
    dir: PathBuf,
    temporary: bool,
    tls: Option<TlsFiles>,
}

/// PEM files for an etcd that serves clients over TLS and asks each for a certificate
/// signed by `ca`.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Etcd {
    /// Starts etcd (the `etcd` on PATH, Debian's `etcd-server`) with a temporary data dir
    /// and waits until it answers.
    pub fn start() -> anyhow::Result<Self> {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("apiary-etcd-{}-{nanos}", std::process::id()));
        Self::start_in(dir, true)
    }

    /// Starts etcd with its data and log in `dir` (kept afterwards).
    pub fn start_in_dir(dir: PathBuf) -> anyhow::Result<Self> {
        Self::start_in(dir, false)
    }

    /// Starts etcd serving clients over TLS only, with client certificates required, and a
    /// temporary data dir.
    pub fn start_tls(tls: TlsFiles) -> anyhow::Result<Self> {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("apiary-etcd-tls-{}-{nanos}", std::process::id()));
        Self::start_with(dir, true, Some(tls))
    }

    fn start_in(dir: PathBuf, temporary: bool) -> anyhow::Result<Self> {
        Self::start_with(dir, temporary, None)
    }

    fn start_with(dir: PathBuf, temporary: bool, tls: Option<TlsFiles>) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut etcd = Self {
            child: None,
            client_port: free_port()?,
            peer_port: free_port()?,
            metrics_port: free_port()?,
            dir,
            temporary,
            tls,
        };
        etcd.launch()?;
        Ok(etcd)
    }

    /// Where its log goes.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `host:port` clients connect to.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", self.client_port);
        let metrics = format!("http://127.0.0.1:{}", self.metrics_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("etcd.log"))?;
        let mut cmd = Command::new("etcd");
        // etcd reads every ETCD_* variable as a flag.
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("ETCD_")) {
            cmd.env_remove(k);
        }
        if let Some(tls) = &self.tls {
            cmd.arg("--cert-file").arg(&tls.cert).arg("--key-file").arg(&tls.key);
            cmd.arg("--trusted-ca-file").arg(&tls.ca).arg("--client-cert-auth");
        }
        let child = cmd
            .args(["--listen-metrics-urls", &metrics])
            .args(["--name", "apiary", "--data-dir"])
            .arg(self.dir.join("data"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("apiary={peer}")])
            .args(["--log-level", "warn", "--logger", "zap"])
            .args(["--auto-compaction-mode", "revision", "--auto-compaction-retention", "1000"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting etcd (Debian package etcd-server; `cargo xtask test` installs it)")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // A bare HTTP/1 request to /health: no client library needed to know it is up.
            let healthy = answers_healthy(self.metrics_port);
            if healthy {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                bail!("etcd exited with {status}; its log: {}", self.log_tail());
            }
            if Instant::now() > deadline {
                bail!("etcd did not become healthy in 20 s; its log: {}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default();
        log.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Like `kill -9` of etcd.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills etcd and starts it again on the same ports and data.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.launch()
    }
}

fn answers_healthy(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
    if conn.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    answer.contains("\"health\":\"true\"")
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        if self.temporary {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
