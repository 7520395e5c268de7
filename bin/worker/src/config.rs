//! Worker configuration: flags and environment over a TOML file over defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use contract::NodeId;
use lifecycle::HumanDuration;
use serde::Deserialize;

#[derive(clap::Parser, Debug, Default, Clone)]
#[command(name = "worker", version, about = "The reference Apiary worker: runs jobs, heartbeats to the queen")]
pub struct WorkerArgs {
    /// Completions and man pages instead of running.
    #[command(subcommand)]
    pub extra: Option<cli_tools::Extra>,
    /// TOML file with any of the keys below (snake_case).
    #[arg(long, env = "APIARY_CONFIG")]
    pub config: Option<PathBuf>,
    /// The queen's base URL [default: http://127.0.0.1:8500].
    #[arg(long, env = "APIARY_QUEEN")]
    pub queen: Option<String>,
    /// The cluster token the queen expects (a hive passes its own).
    #[arg(long, env = "APIARY_TOKEN", hide_env_values = true)]
    pub token: Option<lifecycle::Secret>,
    /// PEM file with the certificate(s) to trust for an https queen (its CA, or its
    /// self-signed certificate).
    #[arg(long, env = "APIARY_CA")]
    pub ca: Option<PathBuf>,
    /// The hive this worker belongs to [default: the hostname, like a hive's default name].
    #[arg(long, env = "APIARY_HIVE")]
    pub hive: Option<String>,
    /// This worker's id [default: <hostname>-<pid>].
    #[arg(long, env = "APIARY_NAME")]
    pub name: Option<String>,
    /// Where jobs, /healthz, /readyz and /metrics answer [default: 127.0.0.1 on --port,
    /// else on a free port].
    #[arg(long, env = "APIARY_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// The loopback port to listen on when --listen is not given; a hive hands each
    /// replica one.
    #[arg(long, env = "APIARY_PORT")]
    pub port: Option<u16>,
    /// Heartbeat interval until the queen says otherwise [default: 10s].
    #[arg(long, env = "APIARY_HEARTBEAT_INTERVAL")]
    pub heartbeat_interval: Option<HumanDuration>,
    /// Jobs run at once; more are refused with 429 [default: 4].
    #[arg(long, env = "APIARY_MAX_CONCURRENT")]
    pub max_concurrent: Option<u32>,
    /// The kind of service this worker provides [default: reference].
    #[arg(long, env = "APIARY_KIND")]
    pub kind: Option<String>,
    /// How long a graceful stop waits for in-flight jobs [default: 30s].
    #[arg(long, env = "APIARY_DRAIN_TIMEOUT")]
    pub drain_timeout: Option<HumanDuration>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    queen: Option<String>,
    token: Option<lifecycle::Secret>,
    ca: Option<PathBuf>,
    hive: Option<String>,
    name: Option<String>,
    listen: Option<SocketAddr>,
    heartbeat_interval: Option<HumanDuration>,
    max_concurrent: Option<u32>,
    kind: Option<String>,
    drain_timeout: Option<HumanDuration>,
}

#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub queen: String,
    pub token: Option<lifecycle::Secret>,
    pub ca: Option<PathBuf>,
    pub hive: NodeId,
    pub name: NodeId,
    pub listen: SocketAddr,
    pub heartbeat_interval: Duration,
    pub max_concurrent: u32,
    pub kind: String,
    pub drain_timeout: Duration,
}

impl WorkerConfig {
    /// Defaults for everything but the queen, hive and name; what tests start from.
    pub fn new(queen: &str, hive: NodeId, name: NodeId, heartbeat_interval: Duration) -> Self {
        Self {
            queen: queen.to_string(),
            token: None,
            ca: None,
            hive,
            name,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            heartbeat_interval,
            max_concurrent: 4,
            kind: "reference".into(),
            drain_timeout: Duration::from_secs(30),
        }
    }

    pub fn load(args: &WorkerArgs) -> anyhow::Result<Self> {
        let file: FileConfig = match &args.config {
            Some(path) => lifecycle::read_toml(path)?,
            None => FileConfig::default(),
        };
        let mut problems = Vec::new();
        let host = lifecycle::hostname();
        let mut id = |field: &str, value: Option<String>, default: String| match value {
            Some(v) => NodeId::new(v).unwrap_or_else(|e| {
                problems.push(format!("{field}: {e}"));
                NodeId::sanitized("invalid")
            }),
            None => NodeId::sanitized(&default),
        };
        let hive = id("hive", args.hive.clone().or(file.hive), host.clone());
        let name = id("name", args.name.clone().or(file.name), format!("{host}-{}", std::process::id()));
        let heartbeat_interval: Duration =
            args.heartbeat_interval.or(file.heartbeat_interval).map(Into::into).unwrap_or(Duration::from_secs(10));
        if heartbeat_interval < Duration::from_millis(10) {
            problems.push(format!("heartbeat_interval {heartbeat_interval:?} is below the 10ms minimum"));
        }
        let max_concurrent = args.max_concurrent.or(file.max_concurrent).unwrap_or(4);
        if max_concurrent == 0 {
            problems.push("max_concurrent must be at least 1".into());
        }
        if !problems.is_empty() {
            anyhow::bail!("invalid configuration:\n  - {}", problems.join("\n  - "));
        }
        Ok(Self {
            queen: args.queen.clone().or(file.queen).unwrap_or_else(|| queen_client::DEFAULT_QUEEN_URL.into()),
            token: args.token.clone().or(file.token),
            ca: args.ca.clone().or(file.ca),
            hive,
            name,
            listen: args.listen.or(file.listen).unwrap_or(SocketAddr::from(([127, 0, 0, 1], args.port.unwrap_or(0)))),
            heartbeat_interval,
            max_concurrent,
            kind: args.kind.clone().or(file.kind).unwrap_or_else(|| "reference".into()),
            drain_timeout: args.drain_timeout.or(file.drain_timeout).map(Into::into).unwrap_or(Duration::from_secs(30)),
        })
    }
}
