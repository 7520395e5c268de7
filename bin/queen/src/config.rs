//! Queen configuration: flags and environment (clap) over a TOML file over defaults,
//! validated in one place that reports every problem at once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use heartbeat_registry::Thresholds;
use lifecycle::HumanDuration;
use serde::Deserialize;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8500";

/// `queen serve` flags; each has an `APIARY_*` variable and a config-file key of the same
/// name (snake_case).
#[derive(clap::Args, Debug, Default, Clone)]
pub struct ServeArgs {
    /// TOML file with any of the keys below.
    #[arg(long, env = "APIARY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8500].
    #[arg(long, env = "APIARY_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// How often the cluster snapshot is built and streamed [default: 5s].
    #[arg(long, env = "APIARY_SNAPSHOT_INTERVAL")]
    pub snapshot_interval: Option<HumanDuration>,
    /// Heartbeat interval handed out to hives and workers [default: 10s].
    #[arg(long, env = "APIARY_HEARTBEAT_INTERVAL")]
    pub heartbeat_interval: Option<HumanDuration>,
    /// Silence after which a node is offline [default: three heartbeat intervals].
    #[arg(long, env = "APIARY_OFFLINE_AFTER")]
    pub offline_after: Option<HumanDuration>,
    /// Where durable state (deployments, assignments, strategy) lives [default:
    /// /var/lib/apiary as root, else $XDG_STATE_HOME/apiary or ~/.local/state/apiary].
    #[arg(long, env = "APIARY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// How long a hive stays offline (past --offline-after) before its replicas are placed
    /// elsewhere [default: 30s].
    #[arg(long, env = "APIARY_ORPHAN_GRACE")]
    pub orphan_grace: Option<HumanDuration>,
    /// Placement strategy at start, until changed at run time [default: least_loaded].
    #[arg(long, env = "APIARY_STRATEGY")]
    pub strategy: Option<contract::PlacementStrategy>,
    /// Most clients on the heartbeat stream at once; more get 503 [default: 10000].
    #[arg(long, env = "APIARY_MAX_STREAM_CLIENTS")]
    pub max_stream_clients: Option<usize>,
    /// Bytes of whole snapshots per tick the stream may send to clients of the full
    /// snapshot (`?detail=full` without `delta`); a client past it gets 503 pointing at
    /// `?delta=true` [default: 256 MiB].
    #[arg(long, env = "APIARY_MAX_FULL_STREAM_BYTES")]
    pub max_full_stream_bytes: Option<u64>,
    /// Token hives and workers present (heartbeats, control channel, jobs) [default: none,
    /// open].
    #[arg(long, env = "APIARY_TOKEN", hide_env_values = true)]
    pub token: Option<crate::auth::Secret>,
    /// Token for mutating admin calls (deployments, strategy, eligibility, drain, removal,
    /// cluster shutdown) [default: none, open].
    #[arg(long, env = "APIARY_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<crate::auth::Secret>,
    /// Token for the dashboard, the stream and the read API [default: none, open].
    #[arg(long, env = "APIARY_READ_TOKEN", hide_env_values = true)]
    pub read_token: Option<crate::auth::Secret>,
    /// Serve with no tokens on an address other than loopback: anyone who reaches it can
    /// make every hive run any command. Refused without this flag.
    #[arg(long, env = "APIARY_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    /// Directory with a built dashboard (`cargo xtask web`) to serve instead of the one
    /// built into the queen.
    #[arg(long, env = "APIARY_UI_DIR")]
    pub ui_dir: Option<PathBuf>,
    /// Heartbeats one node may send per second before it gets 429 [default: four times
    /// its interval's rate, at least 5].
    #[arg(long, env = "APIARY_HEARTBEAT_RATE_LIMIT")]
    pub heartbeat_rate_limit: Option<u32>,
    /// Log filter, like RUST_LOG: `info`, `warn,queen=debug` [default: RUST_LOG, or info].
    #[arg(long, env = "APIARY_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Most nodes (hives and workers) the queen holds; a heartbeat from a new one past it
    /// gets 503 [default: 1000000].
    #[arg(long, env = "APIARY_MAX_NODES")]
    pub max_nodes: Option<usize>,
    /// New node ids one token may introduce per second (burst: ten seconds' worth); more
    /// get 429. Not applied in the startup grace, when every node is new [default: 5000].
    #[arg(long, env = "APIARY_MAX_NEW_NODES_PER_SECOND")]
    pub max_new_nodes_per_second: Option<u32>,
    /// PEM certificate chain: serve HTTPS instead of HTTP (needs --tls-key).
    #[arg(long, env = "APIARY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "APIARY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Where durable state lives: `embedded` (a file under --data-dir) or
    /// `etcd://HOST:PORT[,HOST:PORT...]` for queen replicas [default: embedded].
    #[arg(long, env = "APIARY_STORE")]
    pub store: Option<String>,
    /// Key prefix of this cluster in etcd [default: /apiary].
    #[arg(long, env = "APIARY_STORE_PREFIX")]
    pub store_prefix: Option<String>,
    /// Lease of a queen's leadership in etcd: a crashed leader is replaced about this long
    /// after it stopped [default: 3s].
    #[arg(long, env = "APIARY_LEASE_TTL")]
    pub lease_ttl: Option<HumanDuration>,
    /// URL other queens, hives and workers reach this queen at [default: from --listen].
    #[arg(long, env = "APIARY_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// PEM CA that signed etcd's certificate: talk to etcd over TLS (https members).
    #[arg(long, env = "APIARY_ETCD_CA")]
    pub etcd_ca: Option<PathBuf>,
    /// PEM client certificate for etcd (with --etcd-key), when etcd checks client certificates.
    #[arg(long, env = "APIARY_ETCD_CERT", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// PEM private key of --etcd-cert.
    #[arg(long, env = "APIARY_ETCD_KEY", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// etcd user, when etcd has authentication on (needs a password).
    #[arg(long, env = "APIARY_ETCD_USER")]
    pub etcd_user: Option<String>,
    /// Password of --etcd-user.
    #[arg(long, env = "APIARY_ETCD_PASSWORD", hide_env_values = true)]
    pub etcd_password: Option<crate::auth::Secret>,
}

/// The config file; unknown keys are errors, so a typo is not silently ignored.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    snapshot_interval: Option<HumanDuration>,
    heartbeat_interval: Option<HumanDuration>,
    offline_after: Option<HumanDuration>,
    ui_dir: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    orphan_grace: Option<HumanDuration>,
    strategy: Option<contract::PlacementStrategy>,
    token: Option<crate::auth::Secret>,
    admin_token: Option<crate::auth::Secret>,
    read_token: Option<crate::auth::Secret>,
    /// More tokens, each named for the audit log; every scope takes several at once.
    #[serde(default)]
    tokens: Vec<FileToken>,
    #[serde(default)]
    insecure_no_auth: bool,
    max_stream_clients: Option<usize>,
    max_full_stream_bytes: Option<u64>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    heartbeat_rate_limit: Option<u32>,
    log_level: Option<String>,
    max_nodes: Option<usize>,
    max_new_nodes_per_second: Option<u32>,
    store: Option<String>,
    store_prefix: Option<String>,
    lease_ttl: Option<HumanDuration>,
    advertise_url: Option<String>,
    etcd_ca: Option<PathBuf>,
    etcd_cert: Option<PathBuf>,
    etcd_key: Option<PathBuf>,
    etcd_user: Option<String>,
    /// Or in its own file, to keep it out of the config.
    etcd_password_file: Option<PathBuf>,
    etcd_password: Option<crate::auth::Secret>,
}

/// `[[tokens]]` in the config file: `name`, `scope` and the token itself (`secret`, or
/// `secret_file` to keep it out of the config).
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct FileToken {
    name: String,
    scope: TokenScope,
    secret: Option<crate::auth::Secret>,
    secret_file: Option<PathBuf>,
}

#[derive(Deserialize, Debug, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum TokenScope {
    Cluster,
    Admin,
    Read,
}

/// The flags' tokens (named after their scope) and the file's, each checked: a name is
/// given once, a secret comes from exactly one place and names no other token.
fn gather_tokens(args: &ServeArgs, file: &FileConfig, problems: &mut Vec<String>) -> crate::auth::Tokens {
    use crate::auth::Named;
    let mut tokens = crate::auth::Tokens::default();
    let flags = [
        ("cluster", TokenScope::Cluster, args.token.clone().or(file.token.clone())),
        ("admin", TokenScope::Admin, args.admin_token.clone().or(file.admin_token.clone())),
        ("read", TokenScope::Read, args.read_token.clone().or(file.read_token.clone())),
    ];
    let mut all = Vec::new();
    for (name, scope, secret) in flags {
        if let Some(secret) = secret {
            all.push((scope, Named { name: name.to_string(), secret }));
        }
    }
    for t in &file.tokens {
        let secret = match (&t.secret, &t.secret_file) {
            (Some(s), None) => Some(s.clone()),
            (None, Some(path)) => match std::fs::read_to_string(path) {
                Ok(text) => {
                    text.parse().map_err(|e| problems.push(format!("token {:?}: {}: {e}", t.name, path.display()))).ok()
                }
                Err(e) => {
                    problems.push(format!("token {:?}: cannot read {}: {e}", t.name, path.display()));
                    None
                }
            },
            _ => {
                problems.push(format!("token {:?}: give exactly one of secret and secret_file", t.name));
                None
            }
        };
        if t.name.trim().is_empty() || t.name.len() > 64 || t.name.chars().any(char::is_control) {
            problems.push(format!("token name {:?}: 1 to 64 printable characters", t.name));
        }
        if let Some(secret) = secret {
            all.push((t.scope, Named { name: t.name.clone(), secret }));
        }
    }
    for (i, (_, a)) in all.iter().enumerate() {
        for (_, b) in &all[..i] {
            if a.name == b.name {
                problems
                    .push(format!("token name {:?} is given twice; the audit log could not tell them apart", a.name));
            }
            if a.secret == b.secret {
                problems.push(format!("tokens {:?} and {:?} are the same secret", b.name, a.name));
            }
        }
    }
    for (scope, named) in all {
        match scope {
            TokenScope::Cluster => tokens.cluster.push(named),
            TokenScope::Admin => tokens.admin.push(named),
            TokenScope::Read => tokens.read.push(named),
        }
    }
    tokens
}

/// Queen replicas on etcd: where it is, this cluster's keys, and the leadership lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdSettings {
    /// `http://host:port` (`https://` with TLS) of each etcd member.
    pub endpoints: Vec<String>,
    /// Every key of this cluster starts with it; no trailing slash.
    pub prefix: String,
    pub lease_ttl: Duration,
    /// TLS to etcd: the CA's PEM, and the client certificate and key when etcd asks for one.
    pub tls: Option<EtcdTls>,
    /// etcd user and password, when etcd has authentication on.
    pub auth: Option<(String, crate::auth::Secret)>,
}

/// PEM contents, read at start so a missing file is a start-up error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdTls {
    pub ca: Vec<u8>,
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl EtcdTls {
    /// Reads the CA and, if given, the client certificate and key.
    pub fn read(ca: &std::path::Path, identity: Option<(&std::path::Path, &std::path::Path)>) -> Result<Self, String> {
        let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("etcd tls: {}: {e}", p.display()));
        let identity = match identity {
            Some((cert, key)) => Some((read(cert)?, read(key)?)),
            None => None,
        };
        Ok(Self { ca: read(ca)?, identity })
    }
}

impl EtcdSettings {
    /// `etcd://h:p,h:p` (or `http://...` members); `Ok(None)` for `embedded`.
    pub fn parse(store: &str, prefix: Option<&str>, lease_ttl: Option<Duration>) -> Result<Option<Self>, String> {
        let store = store.trim();
        if store == "embedded" {
            return Ok(None);
        }
        let Some(list) = store.strip_prefix("etcd://") else {
            return Err(format!("store {store:?}: expected `embedded` or `etcd://HOST:PORT[,HOST:PORT...]`"));
        };
        let mut endpoints = Vec::new();
        for member in list.split(',').map(str::trim).filter(|m| !m.is_empty()) {
            let hostport = member.strip_prefix("http://").unwrap_or(member).trim_end_matches('/');
            match hostport.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                    endpoints.push(format!("http://{hostport}"))
                }
                _ => return Err(format!("store: etcd member {member:?} is not HOST:PORT")),
            }
        }
        if endpoints.is_empty() {
            return Err("store: etcd:// names no member".into());
        }
        let prefix = prefix.unwrap_or("/apiary").trim_end_matches('/').to_string();
        if !prefix.starts_with('/') || prefix.len() < 2 {
            return Err(format!("store_prefix {prefix:?}: must start with / and name something"));
        }
        let lease_ttl = lease_ttl.unwrap_or(Duration::from_secs(3));
        // etcd leases are whole seconds.
        if lease_ttl < Duration::from_secs(1) || lease_ttl.subsec_nanos() != 0 {
            return Err(format!("lease_ttl {lease_ttl:?}: must be whole seconds, at least 1s"));
        }
        Ok(Some(Self { endpoints, prefix, lease_ttl, tls: None, auth: None }))
    }

    /// Talks TLS to every member (`https://`).
    pub fn with_tls(mut self, tls: EtcdTls) -> Self {
        self.endpoints = self.endpoints.iter().map(|e| e.replacen("http://", "https://", 1)).collect();
        self.tls = Some(tls);
        self
    }
}

/// The etcd TLS and auth settings of flags and file, checked together.
fn etcd_security(
    args: &ServeArgs,
    file: &FileConfig,
    problems: &mut Vec<String>,
) -> (Option<EtcdTls>, Option<(String, crate::auth::Secret)>) {
    let ca = args.etcd_ca.clone().or(file.etcd_ca.clone());
    let cert = args.etcd_cert.clone().or(file.etcd_cert.clone());
    let key = args.etcd_key.clone().or(file.etcd_key.clone());
    let tls = match (&ca, &cert, &key) {
        (None, None, None) => None,
        (Some(ca), None, None) => EtcdTls::read(ca, None).map_err(|e| problems.push(e)).ok(),
        (Some(ca), Some(cert), Some(key)) => EtcdTls::read(ca, Some((cert, key))).map_err(|e| problems.push(e)).ok(),
        _ => {
            problems.push("etcd_cert and etcd_key go together, and with etcd_ca".into());
            None
        }
    };
    let password = match (args.etcd_password.clone().or(file.etcd_password.clone()), &file.etcd_password_file) {
        (Some(p), _) => Some(p),
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(text) => {
                text.parse().map_err(|e| problems.push(format!("etcd_password_file {}: {e}", path.display()))).ok()
            }
            Err(e) => {
                problems.push(format!("etcd_password_file {}: {e}", path.display()));
                None
            }
        },
        (None, None) => None,
    };
    let auth = match (args.etcd_user.clone().or(file.etcd_user.clone()), password) {
        (Some(user), Some(password)) => Some((user, password)),
        (None, None) => None,
        _ => {
            problems.push("etcd_user and etcd_password go together".into());
            None
        }
    };
    (tls, auth)
}

/// A validated queen configuration.
#[derive(Clone, Debug)]
pub struct QueenConfig {
    pub listen: SocketAddr,
    pub snapshot_interval: Duration,
    pub heartbeat_interval: Duration,
    pub thresholds: Thresholds,
    /// Liveness events carried in every snapshot.
    pub snapshot_events: usize,
    /// Where the dashboard's files are; `None` when no built dashboard was found.
    pub ui_dir: Option<PathBuf>,
    /// Durable state; `None` keeps it in memory only (tests).
    pub data_dir: Option<PathBuf>,
    /// Time past the offline threshold after which a hive's replicas are re-placed.
    pub orphan_grace: Duration,
    /// Strategy to use when the store has none yet.
    pub strategy: Option<contract::PlacementStrategy>,
    pub tokens: crate::auth::Tokens,
    /// Told to serve without tokens on a non-loopback address; said loudly at start and in
    /// `/readyz`.
    pub insecure_no_auth: bool,
    pub max_stream_clients: usize,
    /// See `--max-full-stream-bytes`.
    pub max_full_stream_bytes: u64,
    /// Serve HTTPS with this; `None` serves plain HTTP.
    pub tls: Option<lifecycle::serve::TlsConfig>,
    /// The certificate and key files `tls` was read from.
    pub tls_files: Option<(PathBuf, PathBuf)>,
    /// Per-sender heartbeat rate limit; `None` derives it from the heartbeat interval.
    pub heartbeat_rate_limit: Option<u32>,
    /// Log filter directives; `None` leaves the process's filter as it is.
    pub log_level: Option<String>,
    /// Most nodes held at once.
    pub max_nodes: usize,
    /// New node ids per token per second.
    pub max_new_nodes_per_second: u32,
    /// Replicas on etcd; `None` runs one queen on the embedded store.
    pub etcd: Option<EtcdSettings>,
    /// How others reach this queen; `None` derives it from the bound address.
    pub advertise_url: Option<String>,
    /// The flags this configuration was loaded from (with the config file they name), so
    /// a reload merges the same way; `None` for configurations built in code.
    pub source: Option<ServeArgs>,
}

/// What a reload changed, and what it could not change without a restart.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reload {
    pub applied: Vec<String>,
    pub needs_restart: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .problems.join("\n  - "))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

/// Why these tokens leave something open that must not be. With any token configured,
/// every scope that changes anything needs one: a cluster token alone would leave every
/// admin call (a deployment runs any command on every hive) open to anyone, an admin token
/// alone every heartbeat, control channel and job. With none, only loopback is served,
/// unless the operator says `--insecure-no-auth`.
fn token_problems(tokens: &crate::auth::Tokens, listen: SocketAddr, insecure_no_auth: bool) -> Vec<String> {
    let any = tokens.any();
    let mut problems = Vec::new();
    if any && tokens.admin.is_empty() {
        problems.push(
            "tokens are set but no admin token: every admin call (deployments run any command on every hive, cluster shutdown) would be open to anyone; set --admin-token (APIARY_ADMIN_TOKEN, or admin_token in the file)"
                .to_string(),
        );
    }
    if any && tokens.cluster.is_empty() {
        problems.push(
            "tokens are set but no cluster token: anyone could send heartbeats, hold a hive's control channel or route jobs; set --token (APIARY_TOKEN, or token in the file)"
                .to_string(),
        );
    }
    if !any && !listen.ip().is_loopback() && !insecure_no_auth {
        problems.push(format!(
            "listening on {listen}, not loopback, with no tokens: anyone who reaches it can make every hive run any command; set --token and --admin-token, or pass --insecure-no-auth to serve it open on purpose"
        ));
    }
    problems
}

impl QueenConfig {
    /// Defaults for everything, with the given intervals; what tests start from.
    pub fn with_intervals(heartbeat_interval: Duration, snapshot_interval: Duration) -> Result<Self, ConfigError> {
        Self::build(None, Some(snapshot_interval), Some(heartbeat_interval), None)
    }

    /// Merges flags/env over the file named by `--config` over defaults.
    pub fn load(args: &ServeArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => lifecycle::read_toml(path).map_err(|e| ConfigError { problems: vec![e.0] })?,
            None => FileConfig::default(),
        };
        let built = Self::build(
            args.listen.or(file.listen),
            args.snapshot_interval.or(file.snapshot_interval).map(Into::into),
            args.heartbeat_interval.or(file.heartbeat_interval).map(Into::into),
            args.offline_after.or(file.offline_after).map(Into::into),
        );
        // Everything wrong is reported together, not one problem per attempt.
        let mut problems = built.as_ref().err().map(|e| e.problems.clone()).unwrap_or_default();
        let tokens = gather_tokens(args, &file, &mut problems);
        let (etcd_tls, etcd_auth) = etcd_security(args, &file, &mut problems);
        let heartbeat_rate_limit = args.heartbeat_rate_limit.or(file.heartbeat_rate_limit);
        if heartbeat_rate_limit == Some(0) {
            problems.push("heartbeat_rate_limit must be at least 1 per second".into());
        }
        let max_nodes = args.max_nodes.or(file.max_nodes);
        if max_nodes == Some(0) {
            problems.push("max_nodes must be at least 1".into());
        }
        let max_new = args.max_new_nodes_per_second.or(file.max_new_nodes_per_second);
        if max_new == Some(0) {
            problems.push("max_new_nodes_per_second must be at least 1".into());
        }
        let log_level = args.log_level.clone().or(file.log_level);
        if let Some(Err(e)) = log_level.as_deref().map(lifecycle::check_log_filter) {
            problems.push(e);
        }
        let tls_files = match (args.tls_cert.clone().or(file.tls_cert), args.tls_key.clone().or(file.tls_key)) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                problems.push("tls_cert and tls_key go together".into());
                None
            }
        };
        let store = args.store.clone().or(file.store).unwrap_or_else(|| "embedded".into());
        let lease_ttl = args.lease_ttl.or(file.lease_ttl).map(Into::into);
        let prefix = args.store_prefix.clone().or(file.store_prefix);
        let etcd = EtcdSettings::parse(&store, prefix.as_deref(), lease_ttl)
            .map_err(|e| problems.push(e))
            .ok()
            .flatten()
            .map(|e| EtcdSettings { auth: etcd_auth, ..e })
            .map(|e| match etcd_tls {
                Some(tls) => e.with_tls(tls),
                None => e,
            });
        let advertise_url = args.advertise_url.clone().or(file.advertise_url);
        if let Some(url) = &advertise_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            problems.push(format!("advertise_url {url:?}: must be an http:// or https:// URL"));
        }
        let tls = match &tls_files {
            Some((cert, key)) => lifecycle::serve::load_tls(cert, key).map_err(|e| problems.push(e.0)).ok(),
            None => None,
        };
        let insecure_no_auth = args.insecure_no_auth || file.insecure_no_auth;
        let listen = args.listen.or(file.listen).unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8500)));
        problems.extend(token_problems(&tokens, listen, insecure_no_auth));
        let mut config = match built {
            Ok(config) if problems.is_empty() => config,
            _ => return Err(ConfigError { problems }),
        };
        config.ui_dir = args.ui_dir.clone().or(file.ui_dir);
        config.data_dir = match args.data_dir.clone().or(file.data_dir) {
            Some(dir) => Some(dir),
            None => Some(default_data_dir().map_err(|e| ConfigError { problems: vec![e] })?),
        };
        if let Some(grace) = args.orphan_grace.or(file.orphan_grace) {
            config.orphan_grace = grace.into();
        }
        config.strategy = args.strategy.or(file.strategy);
        if let Some(n) = args.max_stream_clients.or(file.max_stream_clients) {
            config.max_stream_clients = n;
        }
        if let Some(n) = args.max_full_stream_bytes.or(file.max_full_stream_bytes) {
            config.max_full_stream_bytes = n;
        }
        config.tokens = tokens;
        config.insecure_no_auth = insecure_no_auth;
        config.tls = tls;
        config.tls_files = tls_files;
        config.heartbeat_rate_limit = heartbeat_rate_limit;
        config.log_level = log_level;
        if let Some(n) = max_nodes {
            config.max_nodes = n;
        }
        if let Some(n) = max_new {
            config.max_new_nodes_per_second = n;
        }
        config.etcd = etcd;
        config.advertise_url = advertise_url.map(|u| u.trim_end_matches('/').to_string());
        config.source = Some(args.clone());
        Ok(config)
    }

    /// Reads the configuration again from where this one came from. What is safe to change
    /// live (intervals, thresholds, strategy, stream cap, rate limit, log filter) comes
    /// from the new file; everything else stays and is listed as needing a restart. An
    /// invalid file changes nothing.
    pub fn reloaded(&self) -> Result<(Self, Reload), ConfigError> {
        let Some(args) = &self.source else {
            return Err(ConfigError {
                problems: vec!["this configuration was not loaded from flags or a file".into()],
            });
        };
        let new = Self::load(args)?;
        let mut next = self.clone();
        let mut reload = Reload::default();
        macro_rules! live {
            ($($field:ident),*) => {$(
                if self.$field != new.$field {
                    reload.applied.push(format!("{}: {:?} -> {:?}", stringify!($field), self.$field, new.$field));
                    next.$field = new.$field.clone();
                }
            )*};
        }
        macro_rules! fixed {
            ($($field:ident),*) => {$(
                if self.$field != new.$field {
                    reload.needs_restart.push(stringify!($field).to_string());
                }
            )*};
        }
        live!(
            snapshot_interval,
            heartbeat_interval,
            thresholds,
            strategy,
            max_stream_clients,
            max_full_stream_bytes,
            heartbeat_rate_limit,
            log_level,
            max_nodes,
            max_new_nodes_per_second
        );
        // Tokens change live (rotation), but a reload never prints one.
        if self.tokens != new.tokens {
            reload.applied.push("tokens".to_string());
            next.tokens = new.tokens.clone();
        }
        fixed!(listen, ui_dir, data_dir, orphan_grace, insecure_no_auth, tls_files, etcd, advertise_url);
        Ok((next, reload))
    }

    fn build(
        listen: Option<SocketAddr>,
        snapshot_interval: Option<Duration>,
        heartbeat_interval: Option<Duration>,
        offline_after: Option<Duration>,
    ) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let listen =
            listen.unwrap_or_else(|| DEFAULT_LISTEN.parse().unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8500))));
        let snapshot_interval = snapshot_interval.unwrap_or(Duration::from_secs(5));
        if snapshot_interval < Duration::from_millis(10) {
            problems.push(format!("snapshot_interval {snapshot_interval:?} is below the 10ms minimum"));
        }
        let heartbeat_interval = heartbeat_interval.unwrap_or(Duration::from_secs(10));
        if heartbeat_interval < Duration::from_millis(10) {
            problems.push(format!("heartbeat_interval {heartbeat_interval:?} is below the 10ms minimum"));
        }
        let thresholds = match Thresholds::for_interval(heartbeat_interval, offline_after) {
            Ok(t) => Some(t),
            Err(e) => {
                problems.push(format!("offline_after: {e}"));
                None
            }
        };
        match thresholds {
            Some(thresholds) if problems.is_empty() => Ok(Self {
                listen,
                snapshot_interval,
                heartbeat_interval,
                thresholds,
                snapshot_events: 100,
                ui_dir: None,
                data_dir: None,
                orphan_grace: Duration::from_secs(30),
                strategy: None,
                tokens: crate::auth::Tokens::default(),
                insecure_no_auth: false,
                max_stream_clients: 10_000,
                max_full_stream_bytes: 256 << 20,
                tls: None,
                tls_files: None,
                heartbeat_rate_limit: None,
                log_level: None,
                max_nodes: 1_000_000,
                max_new_nodes_per_second: 5_000,
                etcd: None,
                advertise_url: None,
                source: None,
            }),
            _ => Err(ConfigError { problems }),
        }
    }

    /// Heartbeats one node may send per second before it gets 429: as configured, or four
    /// times its interval's rate and never less than five, so a well-behaved node (one
    /// beat per interval, plus a goodbye) never comes near it.
    pub fn heartbeats_per_second(&self) -> u32 {
        if let Some(n) = self.heartbeat_rate_limit {
            return n;
        }
        let per_interval = 1000.0 / self.heartbeat_interval.as_millis().max(1) as f64;
        ((per_interval * 4.0).ceil() as u32).max(5)
    }

    /// How often liveness is re-derived: well inside the suspect threshold, so a silent
    /// node is noticed promptly, and never busier than every 10 ms.
    pub fn sweep_interval(&self) -> Duration {
        (self.heartbeat_interval / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }
}

/// Where a queen keeps its state unless told: the same place wherever it is started from
/// (a relative default made a queen started in another directory forget every
/// deployment). As root the system's state dir, otherwise the user's (XDG).
pub fn default_data_dir() -> Result<PathBuf, String> {
    state_dir(running_as_root(), std::env::var_os("XDG_STATE_HOME"), std::env::var_os("HOME"))
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the process's effective user.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn state_dir(
    root: bool,
    xdg_state: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> Result<PathBuf, String> {
    if root {
        return Ok(PathBuf::from("/var/lib/apiary"));
    }
    let absolute = |p: std::ffi::OsString| Some(PathBuf::from(p)).filter(|p| p.is_absolute());
    if let Some(state) = xdg_state.and_then(absolute) {
        return Ok(state.join("apiary"));
    }
    match home.and_then(absolute) {
        Some(home) => Ok(home.join(".local/state/apiary")),
        None => Err("no --data-dir, and no HOME to put the state under: give --data-dir".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args_with_file(toml: &str) -> (ServeArgs, PathBuf) {
        let path = std::env::temp_dir().join(format!("queen-config-{}-{}.toml", std::process::id(), fastrand_name()));
        std::fs::write(&path, toml).expect("write temp config");
        (ServeArgs { config: Some(path.clone()), ..Default::default() }, path)
    }

    fn fastrand_name() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
    }

    #[test]
    fn the_example_config_the_packages_ship_loads() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/config/queen.toml");
        let c = QueenConfig::load(&ServeArgs { config: Some(path), ..Default::default() }).expect("it loads");
        assert_eq!(c.listen, "127.0.0.1:8500".parse().expect("address"), "loopback until tokens are set");
        assert_eq!(c.data_dir.as_deref(), Some(std::path::Path::new("/var/lib/apiary")), "the unit's StateDirectory");
    }

    #[test]
    fn defaults_follow_the_design() {
        let c = QueenConfig::load(&ServeArgs::default()).expect("defaults are valid");
        assert_eq!(c.listen.to_string(), "127.0.0.1:8500");
        assert_eq!(c.snapshot_interval, Duration::from_secs(5));
        assert_eq!(c.heartbeat_interval, Duration::from_secs(10));
        assert_eq!(c.thresholds.offline_after, Duration::from_secs(30));
    }

    #[test]
    fn flags_override_the_file() {
        let (mut args, path) = args_with_file("heartbeat_interval = \"2s\"\nsnapshot_interval = \"1s\"\n");
        args.snapshot_interval = Some("500ms".parse().expect("duration"));
        let c = QueenConfig::load(&args).expect("valid");
        let _ = std::fs::remove_file(path);
        assert_eq!(c.heartbeat_interval, Duration::from_secs(2), "from the file");
        assert_eq!(c.snapshot_interval, Duration::from_millis(500), "flag wins");
        assert_eq!(c.thresholds.offline_after, Duration::from_secs(6));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let (args, path) = args_with_file("heartbeat_interval = \"5ms\"\nsnapshot_interval = \"1ms\"\n");
        let err = QueenConfig::load(&args).expect_err("invalid");
        let _ = std::fs::remove_file(path);
        assert!(err.problems.len() >= 2, "{err}");
    }

    #[test]
    fn unknown_keys_and_bad_durations_are_refused() {
        let (args, path) = args_with_file("heartbeat_intervall = \"5s\"\n");
        let err = QueenConfig::load(&args).expect_err("typo");
        let _ = std::fs::remove_file(path);
        assert!(err.to_string().contains("unknown field"), "{err}");
        let (args, path) = args_with_file("heartbeat_interval = \"fast\"\n");
        let err = QueenConfig::load(&args).expect_err("bad duration");
        let _ = std::fs::remove_file(path);
        assert!(err.to_string().contains("write it like"), "{err}");
    }

    #[test]
    fn one_token_alone_or_no_token_off_loopback_is_refused() {
        let secret = |s: &str| Some(crate::auth::Secret::new(s));
        let refused = |args: ServeArgs| QueenConfig::load(&args).expect_err("refused").to_string();
        let cluster_only = refused(ServeArgs { token: secret("c"), ..Default::default() });
        assert!(cluster_only.contains("no admin token") && cluster_only.contains("--admin-token"), "{cluster_only}");
        let admin_only = refused(ServeArgs { admin_token: secret("a"), ..Default::default() });
        assert!(admin_only.contains("no cluster token") && admin_only.contains("--token"), "{admin_only}");
        let read_only = refused(ServeArgs { read_token: secret("r"), ..Default::default() });
        assert!(read_only.contains("--admin-token") && read_only.contains("--token"), "both named: {read_only}");
        let both = ServeArgs { token: secret("c"), admin_token: secret("a"), ..Default::default() };
        assert!(QueenConfig::load(&both).is_ok(), "a cluster and an admin token close every mutating scope");

        let lan: SocketAddr = "0.0.0.0:8500".parse().expect("address");
        let open_lan = refused(ServeArgs { listen: Some(lan), ..Default::default() });
        assert!(open_lan.contains("not loopback") && open_lan.contains("--insecure-no-auth"), "{open_lan}");
        let told = QueenConfig::load(&ServeArgs { listen: Some(lan), insecure_no_auth: true, ..Default::default() });
        assert!(told.is_ok_and(|c| c.insecure_no_auth), "open on purpose, and remembered to be said");
        let guarded = ServeArgs { listen: Some(lan), ..both };
        assert!(QueenConfig::load(&guarded).is_ok());
        assert!(QueenConfig::load(&ServeArgs::default()).is_ok(), "loopback without tokens: the development default");
    }

    #[test]
    fn named_tokens_come_from_the_file_and_rotate_on_reload() {
        let secret_file = std::env::temp_dir().join(format!("queen-token-{}-{}", std::process::id(), fastrand_name()));
        std::fs::write(&secret_file, "bot-secret\n").expect("write secret");
        let file = |extra: &str| {
            format!(
                "token = \"c-old\"\nadmin_token = \"a\"\n[[tokens]]\nname = \"deploy-bot\"\nscope = \"admin\"\nsecret_file = \"{}\"\n{extra}",
                secret_file.display()
            )
        };
        let (args, path) = args_with_file(&file(""));
        let running = QueenConfig::load(&args).expect("valid");
        let names = |t: &[crate::auth::Named]| t.iter().map(|n| n.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&running.tokens.admin), ["admin", "deploy-bot"]);
        assert_eq!(running.tokens.admin[1].secret.expose(), "bot-secret", "read from its file, trimmed");

        // Step one of a rotation: the new cluster token beside the old.
        std::fs::write(&path, file("[[tokens]]\nname = \"cluster-2027\"\nscope = \"cluster\"\nsecret = \"c-new\"\n"))
            .expect("rewrite");
        let (next, reload) = running.reloaded().expect("valid");
        assert_eq!(names(&next.tokens.cluster), ["cluster", "cluster-2027"]);
        assert_eq!(reload.applied, ["tokens"], "applied live, and no secret in what the reload reports");
        assert!(reload.needs_restart.is_empty());

        std::fs::write(&path, file("[[tokens]]\nname = \"admin\"\nscope = \"read\"\nsecret = \"a\"\n"))
            .expect("rewrite");
        let err = running.reloaded().expect_err("a name twice, a secret twice");
        let _ = (std::fs::remove_file(path), std::fs::remove_file(&secret_file));
        assert!(err.to_string().contains("given twice") && err.to_string().contains("same secret"), "{err}");
        assert!(!err.to_string().contains("c-old"), "no secret in the error: {err}");
    }

    #[test]
    fn etcd_tls_and_auth_are_checked_and_turn_members_to_https() {
        let ca = std::env::temp_dir().join(format!("queen-etcd-ca-{}-{}", std::process::id(), fastrand_name()));
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").expect("write");
        let store = Some("etcd://127.0.0.1:2379".to_string());
        let user_only = ServeArgs { store: store.clone(), etcd_user: Some("queen".into()), ..Default::default() };
        assert!(QueenConfig::load(&user_only).expect_err("no password").to_string().contains("etcd_password"));
        let cert_only = ServeArgs {
            store: store.clone(),
            etcd_cert: Some(ca.clone()),
            etcd_key: Some(ca.clone()),
            ..Default::default()
        };
        assert!(QueenConfig::load(&cert_only).expect_err("no ca").to_string().contains("etcd_ca"));
        let good = ServeArgs {
            store,
            etcd_ca: Some(ca.clone()),
            etcd_user: Some("queen".into()),
            etcd_password: Some(crate::auth::Secret::new("pw")),
            ..Default::default()
        };
        let etcd = QueenConfig::load(&good).expect("valid").etcd.expect("etcd");
        let _ = std::fs::remove_file(&ca);
        assert_eq!(etcd.endpoints, ["https://127.0.0.1:2379"]);
        assert!(etcd.tls.is_some_and(|t| t.identity.is_none()));
        assert_eq!(etcd.auth.map(|(u, _)| u).as_deref(), Some("queen"));
    }

    #[test]
    fn the_default_data_dir_is_absolute_wherever_the_queen_starts() {
        let os = |s: &str| Some(std::ffi::OsString::from(s));
        assert_eq!(state_dir(true, os("/x"), os("/home/a")), Ok(PathBuf::from("/var/lib/apiary")));
        assert_eq!(state_dir(false, os("/x/state"), os("/home/a")), Ok(PathBuf::from("/x/state/apiary")));
        assert_eq!(state_dir(false, None, os("/home/a")), Ok(PathBuf::from("/home/a/.local/state/apiary")));
        assert_eq!(state_dir(false, os("relative"), os("/home/a")), Ok(PathBuf::from("/home/a/.local/state/apiary")));
        assert!(state_dir(false, None, None).is_err());
        let loaded = QueenConfig::load(&ServeArgs::default()).expect("defaults").data_dir.expect("a data dir");
        assert!(loaded.is_absolute(), "{}", loaded.display());
    }

    #[test]
    fn offline_must_exceed_the_interval() {
        let args = ServeArgs {
            heartbeat_interval: Some("10s".parse().expect("duration")),
            offline_after: Some("5s".parse().expect("duration")),
            ..Default::default()
        };
        let err = QueenConfig::load(&args).expect_err("out of order");
        assert!(err.to_string().contains("out of order"), "{err}");
    }

    #[test]
    fn a_reload_applies_live_fields_and_lists_the_rest() {
        let (args, path) = args_with_file("snapshot_interval = \"1s\"\nlisten = \"127.0.0.1:9000\"\n");
        let running = QueenConfig::load(&args).expect("valid");
        std::fs::write(&path, "snapshot_interval = \"2s\"\nlisten = \"127.0.0.1:9001\"\nstrategy = \"round_robin\"\n")
            .expect("rewrite");
        let (next, reload) = running.reloaded().expect("valid again");
        assert_eq!(next.snapshot_interval, Duration::from_secs(2));
        assert_eq!(next.strategy, Some(contract::PlacementStrategy::RoundRobin));
        assert_eq!(next.listen, running.listen, "the listener cannot move under a running queen");
        assert_eq!(reload.needs_restart, vec!["listen".to_string()]);
        assert_eq!(reload.applied.len(), 2, "{:?}", reload.applied);

        std::fs::write(&path, "snapshot_interval = \"1ms\"\nheartbeat_rate_limit = 0\n").expect("rewrite");
        let err = running.reloaded().expect_err("invalid");
        let _ = std::fs::remove_file(path);
        assert_eq!(err.problems.len(), 2, "{err}");
    }
}
