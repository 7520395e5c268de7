//! Hive configuration: flags and environment over a TOML file over defaults.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use contract::NodeId;
use lifecycle::HumanDuration;
use serde::Deserialize;

#[derive(clap::Parser, Debug, Default, Clone)]
#[command(name = "hive", version, about = "The Apiary node agent: one per machine, heartbeats to the queen")]
pub struct HiveArgs {
    /// Completions and man pages instead of running.
    #[command(subcommand)]
    pub extra: Option<cli_tools::Extra>,
    /// TOML file with any of the keys below (snake_case).
    #[arg(long, env = "APIARY_CONFIG")]
    pub config: Option<PathBuf>,
    /// The queen's base URL [default: http://127.0.0.1:8500].
    #[arg(long, env = "APIARY_QUEEN")]
    pub queen: Option<String>,
    /// This hive's id [default: the hostname].
    #[arg(long, env = "APIARY_NAME")]
    pub name: Option<String>,
    /// Heartbeat interval until the queen says otherwise [default: 10s].
    #[arg(long, env = "APIARY_HEARTBEAT_INTERVAL")]
    pub heartbeat_interval: Option<HumanDuration>,
    /// The cluster token the queen expects; passed on to the workers this hive starts.
    #[arg(long, env = "APIARY_TOKEN", hide_env_values = true)]
    pub token: Option<lifecycle::Secret>,
    /// PEM file with the certificate(s) to trust for an https queen (its CA, or its
    /// self-signed certificate); passed on to the workers this hive starts.
    #[arg(long, env = "APIARY_CA")]
    pub ca: Option<PathBuf>,
    /// Where /healthz, /readyz and /metrics answer [default: 127.0.0.1:0].
    #[arg(long, env = "APIARY_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Most workers this hive will run [default: number of CPUs].
    #[arg(long, env = "APIARY_MAX_WORKERS")]
    pub max_workers: Option<u32>,
    /// How long a worker gets to stop after SIGTERM before SIGKILL [default: 10s].
    #[arg(long, env = "APIARY_WORKER_STOP_TIMEOUT")]
    pub worker_stop_timeout: Option<HumanDuration>,
    /// On SIGTERM, ask the queen to move this hive's work elsewhere first, waiting up to
    /// this long; `0s` turns it off [default: 60s].
    #[arg(long, env = "APIARY_DRAIN_ON_SHUTDOWN")]
    pub drain_on_shutdown: Option<HumanDuration>,
    /// Shell command run in the cluster shutdown's STORAGE phase, in order; repeatable.
    #[arg(long = "storage-hook", env = "APIARY_STORAGE_HOOKS", value_delimiter = ';')]
    pub storage_hooks: Vec<String>,
    /// Time each storage hook may take [default: 30s].
    #[arg(long, env = "APIARY_STORAGE_HOOK_TIMEOUT")]
    pub storage_hook_timeout: Option<HumanDuration>,
    /// Label used for placement, as key=value; repeatable.
    /// The cgroup (v2) each replica's process tree runs in, one per replica beneath this
    /// one, itself beneath the hive's own cgroup; `off` keeps to process groups
    /// [default: apiary-hive-<name>].
    #[arg(long, env = "APIARY_CGROUP")]
    pub cgroup: Option<String>,
    #[arg(long = "label", env = "APIARY_LABELS", value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Where each replica's stdout and stderr are kept; `off`: they go to the hive's own
    /// (journald's, under systemd) and `queen logs` has nothing to read [default:
    /// $STATE_DIRECTORY/logs under systemd, else <temp dir>/apiary-hive-<name>/logs].
    #[arg(long, env = "APIARY_LOG_DIR")]
    pub log_dir: Option<PathBuf>,
    /// Bytes per log file, per replica and stream, unless its deployment says otherwise
    /// [default: 10485760].
    #[arg(long, env = "APIARY_LOG_MAX_BYTES")]
    pub log_max_bytes: Option<u64>,
    /// Log files kept per replica and stream, the current one included [default: 3].
    #[arg(long, env = "APIARY_LOG_FILES")]
    pub log_files: Option<u32>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    queen: Option<String>,
    name: Option<String>,
    heartbeat_interval: Option<HumanDuration>,
    token: Option<lifecycle::Secret>,
    ca: Option<PathBuf>,
    listen: Option<SocketAddr>,
    max_workers: Option<u32>,
    worker_stop_timeout: Option<HumanDuration>,
    drain_on_shutdown: Option<HumanDuration>,
    cgroup: Option<String>,
    log_dir: Option<PathBuf>,
    log_max_bytes: Option<u64>,
    log_files: Option<u32>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// `[[storage_hooks]] command = "..." timeout = "10s"`
    #[serde(default)]
    storage_hooks: Vec<FileHook>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct FileHook {
    command: String,
    timeout: Option<HumanDuration>,
}

/// A command the hive runs (with `sh -c`) in the STORAGE phase of a cluster shutdown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageHook {
    pub command: String,
    pub timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct HiveConfig {
    pub queen: String,
    pub token: Option<lifecycle::Secret>,
    pub ca: Option<PathBuf>,
    pub name: NodeId,
    pub heartbeat_interval: Duration,
    pub listen: SocketAddr,
    pub max_workers: u32,
    pub labels: BTreeMap<String, String>,
    pub worker_stop_timeout: Duration,
    pub storage_hooks: Vec<StorageHook>,
    /// How long a stopping hive waits for the queen to move its work; zero: it does not ask.
    pub drain_on_shutdown: Duration,
    /// The name of the cgroup holding the replicas' cgroups; `None`: process groups only.
    pub cgroup: Option<String>,
    /// `None`: the replicas' output goes to the hive's own.
    pub log_dir: Option<PathBuf>,
    /// What a replica's deployment does not say otherwise.
    pub logs: contract::LogPolicy,
}

impl HiveConfig {
    /// Defaults for everything but the queen and the name; what tests start from.
    pub fn new(queen: &str, name: NodeId, heartbeat_interval: Duration) -> Self {
        Self {
            queen: queen.to_string(),
            token: None,
            ca: None,
            name,
            heartbeat_interval,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            max_workers: default_max_workers(),
            labels: BTreeMap::new(),
            worker_stop_timeout: Duration::from_secs(10),
            storage_hooks: Vec::new(),
            drain_on_shutdown: Duration::from_secs(60),
            // Tests name their own: hives of concurrent tests may share an id.
            cgroup: None,
            log_dir: Some(unique_temp_dir("apiary-hive-logs")),
            logs: contract::LogPolicy::default(),
        }
    }

    pub fn load(args: &HiveArgs) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(path) => lifecycle::read_toml(path)?,
            None => FileConfig::default(),
        };
        let mut problems = Vec::new();
        let name_text = args.name.clone().or(file.name);
        let name = match name_text {
            Some(n) => NodeId::new(n).unwrap_or_else(|e| {
                problems.push(format!("name: {e}"));
                NodeId::sanitized("invalid")
            }),
            None => NodeId::sanitized(&lifecycle::hostname()),
        };
        let interval: Duration =
            args.heartbeat_interval.or(file.heartbeat_interval).map(Into::into).unwrap_or(Duration::from_secs(10));
        if interval < Duration::from_millis(10) {
            problems.push(format!("heartbeat_interval {interval:?} is below the 10ms minimum"));
        }
        let mut labels = file.labels;
        for pair in &args.labels {
            match pair.split_once('=') {
                Some((k, v)) if !k.is_empty() => {
                    labels.insert(k.to_string(), v.to_string());
                }
                _ => problems.push(format!("label {pair:?} is not key=value")),
            }
        }
        let max_workers = args.max_workers.or(file.max_workers).unwrap_or_else(default_max_workers);
        let cgroup = match args.cgroup.clone().or(file.cgroup) {
            Some(off) if off == "off" => None,
            Some(name) => Some(name),
            None => Some(format!("apiary-hive-{name}")),
        };
        let defaults = contract::LogPolicy::default();
        let logs = contract::LogPolicy {
            max_bytes: args.log_max_bytes.or(file.log_max_bytes).unwrap_or(defaults.max_bytes),
            files: args.log_files.or(file.log_files).unwrap_or(defaults.files),
        };
        if let Err(e) = logs.validate() {
            problems.push(e.to_string());
        }
        let log_dir =
            args.log_dir.clone().or(file.log_dir).unwrap_or_else(|| match std::env::var_os("STATE_DIRECTORY") {
                // systemd's StateDirectory=, which may list several: the first is the hive's.
                Some(dirs) => std::env::split_paths(&dirs).next().unwrap_or_default().join("logs"),
                None => std::env::temp_dir().join(format!("apiary-hive-{name}")).join("logs"),
            });
        if !problems.is_empty() {
            anyhow::bail!("invalid configuration:\n  - {}", problems.join("\n  - "));
        }
        Ok(Self {
            queen: args.queen.clone().or(file.queen).unwrap_or_else(|| queen_client::DEFAULT_QUEEN_URL.into()),
            token: args.token.clone().or(file.token),
            // Absolute, because the workers it is passed on to run in their own directories.
            ca: args.ca.clone().or(file.ca).map(|p| std::path::absolute(&p).unwrap_or(p)),
            name,
            heartbeat_interval: interval,
            listen: args.listen.or(file.listen).unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0))),
            max_workers,
            cgroup,
            labels,
            log_dir: (log_dir != Path::new("off")).then(|| std::path::absolute(&log_dir).unwrap_or(log_dir)),
            logs,
            drain_on_shutdown: args
                .drain_on_shutdown
                .or(file.drain_on_shutdown)
                .map(Into::into)
                .unwrap_or(Duration::from_secs(60)),
            storage_hooks: {
                let default_timeout: Duration =
                    args.storage_hook_timeout.map(Into::into).unwrap_or(Duration::from_secs(30));
                file.storage_hooks
                    .into_iter()
                    .map(|h| StorageHook {
                        command: h.command,
                        timeout: h.timeout.map(Into::into).unwrap_or(default_timeout),
                    })
                    .chain(
                        args.storage_hooks.iter().map(|c| StorageHook { command: c.clone(), timeout: default_timeout }),
                    )
                    .collect()
            },
            worker_stop_timeout: args
                .worker_stop_timeout
                .or(file.worker_stop_timeout)
                .map(Into::into)
                .unwrap_or(Duration::from_secs(10)),
        })
    }
}

/// A directory of its own for each hive started in this process (tests run several).
fn unique_temp_dir(tag: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("{tag}-{}-{n}", std::process::id()))
}

fn default_max_workers() -> u32 {
    std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_the_packages_ship_loads() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/config/hive.toml");
        let c = HiveConfig::load(&HiveArgs { config: Some(path), ..Default::default() }).expect("it loads");
        assert_eq!(c.queen, "http://127.0.0.1:8500");
        // systemd kills what is left after TimeoutStopSec: the drain and the workers' stop
        // must fit inside it.
        let unit_path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/systemd/apiary-hive.service");
        let unit = std::fs::read_to_string(unit_path).expect("the unit");
        let stop: HumanDuration = unit
            .lines()
            .find_map(|l| l.strip_prefix("TimeoutStopSec="))
            .expect("the unit sets TimeoutStopSec")
            .parse()
            .expect("a duration");
        assert!(c.drain_on_shutdown + c.worker_stop_timeout < stop.0, "{c:?} against {stop}");
    }
}
