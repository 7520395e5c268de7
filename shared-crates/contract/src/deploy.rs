//! Deployments, placement, assignments and the queen → hive control channel.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{ContractError, NodeId};

/// How the queen picks a hive for a replica.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum PlacementStrategy {
    /// Hives in turn, by id.
    RoundRobin,
    /// Lowest combined cpu %, memory % and share of worker slots in use.
    #[default]
    LeastLoaded,
    /// Fewest workers assigned.
    LeastWorkers,
    /// Any hive with room, uniformly.
    Random,
    /// Random, in proportion to free capacity (max workers minus assigned).
    Weighted,
}

impl PlacementStrategy {
    pub const ALL: [PlacementStrategy; 5] = [
        PlacementStrategy::RoundRobin,
        PlacementStrategy::LeastLoaded,
        PlacementStrategy::LeastWorkers,
        PlacementStrategy::Random,
        PlacementStrategy::Weighted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PlacementStrategy::RoundRobin => "round_robin",
            PlacementStrategy::LeastLoaded => "least_loaded",
            PlacementStrategy::LeastWorkers => "least_workers",
            PlacementStrategy::Random => "random",
            PlacementStrategy::Weighted => "weighted",
        }
    }
}

impl std::str::FromStr for PlacementStrategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|p| p.as_str() == s).ok_or_else(|| {
            format!("unknown strategy {s:?}; one of round_robin, least_loaded, least_workers, random, weighted")
        })
    }
}

/// `PUT /v1/placement/strategy`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StrategyBody {
    pub strategy: PlacementStrategy,
}

/// What an operator asks to run: `POST /v1/deployments`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DeploymentSpec {
    /// Also the prefix of its workers' names (`<name>-<slot>`), so it follows id syntax.
    pub name: NodeId,
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Environment the replicas get whose values the queen stores but never returns: every
    /// read (the API, the snapshot, `final-state.json`) shows [`SECRET`] instead. Only the
    /// hive that starts a replica receives them, on its control channel.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_env: BTreeMap<String, String>,
    pub replicas: u32,
    /// A replica only lands on a hive whose labels include all of these.
    #[serde(default)]
    pub labels_required: BTreeMap<String, String>,
    /// Spread the replicas across the values of this hive label (zone, rack) before
    /// spreading them across hives, which every deployment does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread_by: Option<String>,
    /// Restarts of one replica before the hive gives up on it [default: unlimited].
    #[serde(default)]
    pub max_restarts: Option<u32>,
    /// How a change of what the replicas run (command, args, env) or a restart rolls out.
    #[serde(default)]
    pub update: UpdatePolicy,
    /// How a replica is asked to stop, and where it starts.
    #[serde(default, skip_serializing_if = "ProcessOptions::is_default")]
    pub process: ProcessOptions,
    /// Restarts a replica after this many failed checks in a row (with the reason in its
    /// last exit); a replica hung but alive is restarted too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness: Option<Probe>,
    /// While failing, no job is routed to the replica and a rollout does not count it up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<Probe>,
    /// Until it passes, neither other probe runs; failing it `failures` times restarts the
    /// replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup: Option<Probe>,
    /// How much of each replica's output its hive keeps [default: the hive's].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<LogPolicy>,
    /// What each replica needs of its hive: placement never gives a hive more than it
    /// offers, and the hive holds the replica to it (see [`ResourceRequest`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequest>,
}

/// CPU and memory one replica is given. Placement counts them against what each hive
/// offers (`Capacity::cpu_millis`, `memory_bytes`), slots being a second limit; the hive
/// sets them as the replica's cgroup limits where it can (`cpu.max`, `memory.max`) and, where
/// it cannot, restarts a replica whose resident memory goes past its share.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct ResourceRequest {
    /// Thousandths of a core (500: half a core); 0: not limited.
    pub cpu_millis: u64,
    /// Bytes; 0: not limited, else at least 4 MiB.
    pub memory_bytes: u64,
}

impl ResourceRequest {
    pub fn validate(&self) -> Result<(), ContractError> {
        let bad = |reason: &str| Err(ContractError::InvalidField { field: "resources", reason: reason.into() });
        if self.cpu_millis > 1_024_000 {
            return bad("cpu_millis at most 1024000 (1024 cores)");
        }
        if self.memory_bytes != 0 && !(4 << 20..=1 << 50).contains(&self.memory_bytes) {
            return bad("memory_bytes 0 (not limited) or between 4 MiB and 1 PiB");
        }
        Ok(())
    }
}

/// One health check the hive runs against a replica: exactly one of `http` (a GET of this
/// path on the replica's port, passing on 2xx and 3xx), `tcp` (a connection to its port
/// opens) or `exec` (this program, run beside the replica, exits 0).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Probe {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<Vec<String>>,
    /// [default: 10000]
    #[serde(default = "Probe::default_interval")]
    pub interval_ms: u64,
    /// [default: 1000]
    #[serde(default = "Probe::default_timeout")]
    pub timeout_ms: u64,
    /// Failed checks in a row that count as failing [default: 3].
    #[serde(default = "Probe::default_failures")]
    pub failures: u32,
}

/// What a probe checks, once `Probe::validate` has passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeCheck<'a> {
    Http(&'a str),
    Tcp,
    Exec(&'a [String]),
}

impl Probe {
    fn default_interval() -> u64 {
        10_000
    }
    fn default_timeout() -> u64 {
        1_000
    }
    fn default_failures() -> u32 {
        3
    }

    /// A GET of `path`, with the default timing.
    pub fn http(path: &str) -> Self {
        Self {
            http: Some(path.into()),
            tcp: None,
            exec: None,
            interval_ms: Self::default_interval(),
            timeout_ms: Self::default_timeout(),
            failures: Self::default_failures(),
        }
    }

    pub fn check(&self) -> Option<ProbeCheck<'_>> {
        match (&self.http, self.tcp, &self.exec) {
            (Some(path), None, None) => Some(ProbeCheck::Http(path)),
            (None, Some(true), None) => Some(ProbeCheck::Tcp),
            (None, None, Some(argv)) => Some(ProbeCheck::Exec(argv)),
            _ => None,
        }
    }

    fn validate(&self, field: &'static str) -> Result<(), ContractError> {
        let bad = |reason: &str| Err(ContractError::InvalidField { field, reason: reason.into() });
        match self.check() {
            None => return bad("exactly one of http (a path), tcp (true) or exec (a program and its arguments)"),
            Some(ProbeCheck::Http(path))
                if !path.starts_with('/') || path.len() > 1024 || path.chars().any(|c| c.is_control() || c == ' ') =>
            {
                return bad("http: a path starting with / of at most 1024 bytes, without spaces or control characters");
            }
            Some(ProbeCheck::Exec(argv))
                if argv.is_empty()
                    || argv.len() > 64
                    || argv[0].trim().is_empty()
                    || argv.iter().any(|a| a.len() > 4096 || a.contains('\0')) =>
            {
                return bad("exec: a program and at most 63 arguments of 4096 bytes, without NUL");
            }
            _ => {}
        }
        if !(100..=3_600_000).contains(&self.interval_ms) {
            return bad("interval_ms between 100 and 3600000");
        }
        if self.timeout_ms < 10 || self.timeout_ms > self.interval_ms.clamp(1_000, 60_000) {
            return bad("timeout_ms at least 10 and at most the interval (or 1000), and at most 60000");
        }
        if !(1..=100).contains(&self.failures) {
            return bad("failures between 1 and 100");
        }
        Ok(())
    }
}

/// The probes of one replica, as its hive is told them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Probes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness: Option<Probe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<Probe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup: Option<Probe>,
}

impl Probes {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    pub fn validate(&self) -> Result<(), ContractError> {
        let each = [("liveness", &self.liveness), ("readiness", &self.readiness), ("startup", &self.startup)];
        for (field, probe) in each {
            if let Some(p) = probe {
                p.validate(field)?;
            }
        }
        Ok(())
    }
}

/// How much output of one replica its hive keeps, per stream (stdout, stderr) and per
/// instance: `files` files of at most `max_bytes` each, the oldest dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LogPolicy {
    pub max_bytes: u64,
    pub files: u32,
}

/// 10 MiB × 3 per stream: a crash's story, without filling a disk.
impl Default for LogPolicy {
    fn default() -> Self {
        Self { max_bytes: 10 << 20, files: 3 }
    }
}

impl LogPolicy {
    pub const MIN_BYTES: u64 = 64 * 1024;
    pub const MAX_BYTES: u64 = 1 << 30;
    pub const MAX_FILES: u32 = 20;

    pub fn validate(&self) -> Result<(), ContractError> {
        if !(Self::MIN_BYTES..=Self::MAX_BYTES).contains(&self.max_bytes)
            || !(1..=Self::MAX_FILES).contains(&self.files)
        {
            return Err(ContractError::InvalidField {
                field: "logs",
                reason: "max_bytes between 65536 and 1073741824, files between 1 and 20".into(),
            });
        }
        Ok(())
    }
}

/// How a replica is started and stopped beyond its command: the signal that asks it to
/// stop, how long it gets before SIGKILL, the directory it starts in.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ProcessOptions {
    /// [default: TERM]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<StopSignal>,
    /// Time between the stop signal and SIGKILL [default: the hive's
    /// `--worker-stop-timeout`]; at most an hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_timeout_ms: Option<u64>,
    /// An absolute path [default: the hive's own working directory].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// The user the replica runs as (a name, or a uid with an entry in the hive's user
    /// database), with that user's groups; only a hive running as root can do this, and one
    /// that cannot says so rather than run it as itself [default: the hive's own user].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl ProcessOptions {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// The signals a replica may be asked to stop with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "UPPERCASE")]
pub enum StopSignal {
    Term,
    Int,
    Quit,
    Hup,
    Usr1,
    Usr2,
}

/// How a new version of a deployment replaces the old: a few replicas at a time, each
/// new instance up (heartbeating as available) before its old one stops, and the whole
/// rollout reverted by itself when new instances do not come up in time or keep crashing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct UpdatePolicy {
    /// Replicas replaced at the same time [default: 1].
    pub max_parallel: u32,
    /// How long a new instance must stay available before the next is replaced
    /// [default: 2000].
    pub min_healthy_ms: u64,
    /// A new instance not available this long after it was started reverts the rollout
    /// [default: 60000].
    pub progress_deadline_ms: u64,
}

impl Default for UpdatePolicy {
    fn default() -> Self {
        Self { max_parallel: 1, min_healthy_ms: 2_000, progress_deadline_ms: 60_000 }
    }
}

/// Most replicas one deployment may ask for.
pub const MAX_REPLICAS: u32 = 10_000;

/// What a read shows for a secret value.
pub const SECRET: &str = "<secret>";

impl DeploymentSpec {
    /// `replicas` of `command` and nothing else: every other field at its default.
    pub fn new(name: NodeId, command: impl Into<String>, replicas: u32) -> Self {
        Self {
            name,
            command: command.into(),
            args: vec![],
            env: Default::default(),
            secret_env: Default::default(),
            replicas,
            labels_required: Default::default(),
            spread_by: None,
            max_restarts: None,
            update: Default::default(),
            process: Default::default(),
            liveness: None,
            readiness: None,
            startup: None,
            logs: None,
            resources: None,
        }
    }

    pub fn validate(&self) -> Result<(), ContractError> {
        let bad = |field, reason: &str| Err(ContractError::InvalidField { field, reason: reason.into() });
        // Worker ids are `<name>-<slot>` and must stay within the id limit.
        if self.name.as_str().len() > crate::MAX_ID_LEN - 6 {
            return bad("name", "at most 58 characters, so that worker names fit");
        }
        if self.command.trim().is_empty() || self.command.len() > 1024 || self.command.contains('\0') {
            return bad("command", "must be a non-empty path or program name without NUL");
        }
        if self.args.len() > 256 || self.args.iter().any(|a| a.len() > 4096 || a.contains('\0')) {
            return bad("args", "at most 256 arguments of 4096 bytes, without NUL");
        }
        let bad_var = |(k, v): (&String, &String)| {
            k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') || k.starts_with("APIARY_")
        };
        if self.env.len() + self.secret_env.len() > 256 || self.env.iter().chain(&self.secret_env).any(bad_var) {
            return bad(
                "env",
                "at most 256 variables; names non-empty, without = or NUL, not APIARY_* (the hive sets those)",
            );
        }
        if self.secret_env.keys().any(|k| self.env.contains_key(k)) {
            return bad("secret_env", "a variable is either in env or in secret_env, not both");
        }
        if self.replicas > MAX_REPLICAS {
            return bad("replicas", "at most 10000");
        }
        if self.spread_by.as_ref().is_some_and(|l| l.is_empty() || l.len() > 128 || l.contains('\0')) {
            return bad("spread_by", "a label name of 1 to 128 bytes without NUL");
        }
        let p = &self.process;
        if p.stop_timeout_ms.is_some_and(|ms| ms > 3_600_000) {
            return bad("stop_timeout_ms", "at most an hour");
        }
        if p.working_dir.as_ref().is_some_and(|d| !d.starts_with('/') || d.len() > 4096 || d.contains('\0')) {
            return bad("working_dir", "an absolute path of at most 4096 bytes, without NUL");
        }
        let user_name = |u: &String| {
            (1..=32).contains(&u.len())
                && !u.starts_with('-')
                && u.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        };
        if p.user.as_ref().is_some_and(|u| !user_name(u)) {
            return bad("user", "a user name or uid: 1 to 32 of A-Z a-z 0-9 _ - ., not starting with -");
        }
        self.probes().validate()?;
        if let Some(logs) = &self.logs {
            logs.validate()?;
        }
        if let Some(r) = &self.resources {
            r.validate()?;
        }
        let u = self.update;
        if u.max_parallel == 0 || u.max_parallel > MAX_REPLICAS {
            return bad("update.max_parallel", "between 1 and 10000");
        }
        const DAY_MS: u64 = 86_400_000;
        if u.min_healthy_ms > DAY_MS || u.progress_deadline_ms == 0 || u.progress_deadline_ms > DAY_MS {
            return bad("update", "min_healthy_ms at most a day; progress_deadline_ms above 0 and at most a day");
        }
        Ok(())
    }

    /// Whether `other` runs differently (a rollout), not just more or fewer of the same.
    pub fn runs_differently(&self, other: &DeploymentSpec) -> bool {
        self.command != other.command
            || self.args != other.args
            || self.env != other.env
            || self.secret_env != other.secret_env
            || self.max_restarts != other.max_restarts
            || self.process != other.process
            || self.probes() != other.probes()
            || self.logs != other.logs
            || self.resources != other.resources
    }

    /// The probes its hive runs against each replica.
    pub fn probes(&self) -> Probes {
        Probes { liveness: self.liveness.clone(), readiness: self.readiness.clone(), startup: self.startup.clone() }
    }

    /// The spec as every read shows it: secret values replaced by [`SECRET`].
    pub fn redacted(&self) -> Self {
        let secret_env = self.secret_env.keys().map(|k| (k.clone(), SECRET.to_string())).collect();
        Self { secret_env, ..self.clone() }
    }

    /// Everything a replica's process gets, secrets included; for its hive only.
    pub fn launch_env(&self) -> BTreeMap<String, String> {
        self.env.iter().chain(&self.secret_env).map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// `PATCH /v1/deployments/{name}`: the fields to change, the rest kept. A change of
/// `command`, `args`, `env` or `secret_env` rolls out as a new version (see
/// [`UpdatePolicy`]); `replicas` and `update` take effect at once.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DeploymentPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdatePolicy>,
    /// Replaces the process options whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessOptions>,
    /// Replaces the probes whole: an empty object removes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<Probes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<LogPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequest>,
}

impl DeploymentPatch {
    /// What can be judged without the deployment it changes (the rest is judged on the
    /// spec it makes): its probes and log policy.
    pub fn validate(&self) -> Result<(), ContractError> {
        if let Some(p) = &self.probes {
            p.validate()?;
        }
        if let Some(l) = &self.logs {
            l.validate()?;
        }
        if let Some(r) = &self.resources {
            r.validate()?;
        }
        Ok(())
    }

    /// `spec` with this patch applied.
    pub fn applied_to(&self, spec: &DeploymentSpec) -> DeploymentSpec {
        let mut next = spec.clone();
        if let Some(r) = self.replicas {
            next.replicas = r;
        }
        if let Some(c) = &self.command {
            next.command = c.clone();
        }
        if let Some(a) = &self.args {
            next.args = a.clone();
        }
        if let Some(e) = &self.env {
            next.env = e.clone();
        }
        if let Some(e) = &self.secret_env {
            next.secret_env = e.clone();
        }
        if let Some(u) = self.update {
            next.update = u;
        }
        if let Some(p) = &self.process {
            next.process = p.clone();
        }
        if let Some(p) = &self.probes {
            next.liveness = p.liveness.clone();
            next.readiness = p.readiness.clone();
            next.startup = p.startup.clone();
        }
        if let Some(l) = self.logs {
            next.logs = Some(l);
        }
        if let Some(r) = self.resources {
            next.resources = Some(r);
        }
        next
    }
}

/// Where a deployment's rollout stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    Running,
    /// Held by an operator: no replica is replaced until it is resumed.
    Paused,
    Done,
    /// New instances failed; the old version is being (or has been) put back.
    Reverting,
    Reverted,
}

/// One version of a deployment, in `GET /v1/deployments/{name}/history`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeploymentVersion {
    pub version: u64,
    /// As every read shows a spec: secret values redacted.
    pub spec: DeploymentSpec,
    /// The version replicas are brought to now.
    pub current: bool,
}

/// `GET /v1/deployments/{name}/history`: the versions kept, oldest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeploymentHistory {
    pub name: NodeId,
    pub versions: Vec<DeploymentVersion>,
}

/// A deployment's current (or last) rollout, in `DeploymentStatus`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RolloutStatus {
    pub from_version: u64,
    pub to_version: u64,
    pub state: RolloutState,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// Replicas running the target version and healthy past `min_healthy_ms`.
    pub updated: u32,
    pub replicas: u32,
    /// Why it reverted, in words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// Where a replica stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AssignmentState {
    /// On a hive; the worker heartbeats (or will, once started).
    Placed,
    /// Its hive has been offline past the orphan grace; waiting for a new hive.
    Orphaned,
    /// No hive has room or matching labels.
    Pending,
}

/// One replica slot of a deployment and the hive it runs on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Assignment {
    pub deployment: NodeId,
    pub slot: u32,
    /// The worker's id: `<deployment>-<slot>`.
    pub worker: NodeId,
    pub hive: Option<NodeId>,
    pub state: AssignmentState,
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    /// Times this slot moved to another hive.
    pub moves: u32,
    /// Times its hive restarted the current instance (from the hive's report).
    #[serde(default)]
    pub restarts: u32,
    /// Bumped each time a drain starts the slot anew elsewhere; part of the worker's name
    /// after the first (`web-3.1`), so old and new instance can run side by side.
    #[serde(default)]
    pub generation: u32,
    /// The instance a drain or a rollout is replacing: it keeps running until the new one
    /// heartbeats.
    #[serde(default)]
    pub retiring: Option<Retiring>,
    /// The deployment version this instance runs (0: the first).
    #[serde(default)]
    pub version: u64,
    /// The replica's process as its hive last reported it; read from the hive's report
    /// when answered, never stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessState>,
    /// Why that process last ended or could not start, in the hive's words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_exit: String,
    /// Its process id, from the same report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Whether it passes its readiness probe, from the same report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    /// What a failing probe of it said, from the same report.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub probe: String,
}

impl Assignment {
    /// A slot not yet placed, its first instance to run `version`.
    pub fn pending(deployment: &NodeId, slot: u32, since: OffsetDateTime, version: u64) -> Self {
        Self {
            deployment: deployment.clone(),
            slot,
            worker: NodeId::sanitized(&format!("{deployment}-{slot}")),
            hive: None,
            state: AssignmentState::Pending,
            since,
            moves: 0,
            restarts: 0,
            generation: 0,
            retiring: None,
            version,
            process: None,
            last_exit: String::new(),
            pid: None,
            ready: None,
            probe: String::new(),
        }
    }

    /// The slot's stable key, whatever instance runs it: `<deployment>-<slot>`.
    pub fn key(&self) -> NodeId {
        NodeId::sanitized(&format!("{}-{}", self.deployment, self.slot))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Retiring {
    pub hive: NodeId,
    pub worker: NodeId,
    /// The version it runs, so its hive keeps running it as it was.
    #[serde(default)]
    pub version: u64,
}

/// `PUT /v1/hives/{id}/eligibility`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EligibilityBody {
    pub eligible: bool,
}

/// `POST /v1/hives/{id}/drain`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    /// Whatever has not moved by then is stopped anyway [default: 5 min].
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// Sent by a hive draining itself as it stops (SIGTERM): it is not an operator's
    /// cordon, so the hive is eligible again once it comes back as a new process.
    #[serde(default)]
    pub on_shutdown: bool,
}

/// A drain of one hive, as it stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DrainStatus {
    pub hive: NodeId,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub deadline: OffsetDateTime,
    /// Replicas now running elsewhere.
    pub moved: u32,
    /// Replicas still on the hive (or retiring from it).
    pub left: u32,
    /// Replicas whose new instance is starting elsewhere right now.
    #[serde(default)]
    pub moving: u32,
    pub done: bool,
    pub cancelled: bool,
    /// What could not be done, said at once ("no hive with room for web-3").
    pub notes: Vec<String>,
    /// Each replica the drain concerns: waiting, moving (new instance starting), moved.
    #[serde(default)]
    pub replicas: BTreeMap<NodeId, String>,
    /// The hive's own drain on its way down (see `DrainRequest::on_shutdown`).
    #[serde(default)]
    pub on_shutdown: bool,
}

impl DrainStatus {
    /// Nothing is moving and what is left has nowhere to go: waiting longer only waits
    /// for the deadline.
    pub fn stuck(&self) -> bool {
        !self.done && self.moving == 0 && self.left > 0 && !self.notes.is_empty()
    }
}

/// A deployment with where its replicas are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeploymentStatus {
    pub spec: DeploymentSpec,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub assignments: Vec<Assignment>,
    /// Replicas whose worker heartbeats and is up.
    pub running: u32,
    /// The version replicas are brought to (0: the first); bumped by every change of what
    /// they run and by a restart.
    #[serde(default)]
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
    /// Set when no replica runs and every placed one's hive says its command cannot start:
    /// the deployment is failed, not merely starting (its hives keep retrying with backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

impl DeploymentStatus {
    /// `failed` as the assignments (with their hives' reports joined in) say.
    pub fn judge_failed(&mut self) {
        let placed: Vec<&Assignment> = self.assignments.iter().filter(|a| a.hive.is_some()).collect();
        let cannot = |a: &&Assignment| a.last_exit.starts_with("cannot start");
        self.failed = (self.running == 0 && !placed.is_empty() && placed.iter().all(cannot)).then(|| {
            let hives: std::collections::BTreeSet<&str> =
                placed.iter().filter_map(|a| a.hive.as_ref()).map(NodeId::as_str).collect();
            format!("no replica can start on {} hive(s): {}", hives.len(), placed[0].last_exit)
        });
    }
}

/// What a hive should run: the whole desired set, so a command is idempotent and a
/// replay after a reconnect is harmless.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkerLaunch {
    pub name: NodeId,
    pub deployment: NodeId,
    pub command: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub max_restarts: Option<u32>,
    #[serde(default, skip_serializing_if = "ProcessOptions::is_default")]
    pub process: ProcessOptions,
    #[serde(default, skip_serializing_if = "Probes::is_default")]
    pub probes: Probes,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<LogPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequest>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CommandKind {
    /// Run exactly these workers — and, while the cluster shuts down, do this phase.
    Assign {
        workers: Vec<WorkerLaunch>,
        #[serde(default)]
        shutdown: Option<crate::PhaseOrder>,
    },
    /// The queen does not know what should run here (its store held no deployments when it
    /// started or was elected): keep running what runs, start and stop nothing, until an
    /// operator declares deployments or confirms that what runs should stop.
    Hold,
}

/// One message on `GET /v1/hives/{id}/commands` (SSE `event: command`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HiveCommand {
    /// Increases with every command the queen issues; an ACK names it.
    pub id: u64,
    #[serde(flatten)]
    pub kind: CommandKind,
}

/// `POST /v1/cluster/unknown-replicas/stop`: how many hives ran replicas the queen did not
/// know, and are now told to run nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UnknownReplicas {
    pub hives: usize,
}

/// `POST /v1/hives/{id}/acks`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CommandAck {
    pub command_id: u64,
    pub ok: bool,
    #[serde(default)]
    pub detail: String,
}

/// A supervised worker process as its hive reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ProcessState {
    Running,
    /// Exited; waiting out the restart backoff.
    Restarting,
    Stopping,
    /// Gave up after `max_restarts`, or could not be started.
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SupervisedWorker {
    pub name: NodeId,
    pub deployment: NodeId,
    pub state: ProcessState,
    pub pid: Option<u32>,
    pub restarts: u32,
    /// Why it last exited or failed, for operators.
    #[serde(default)]
    pub last_exit: String,
    /// Whether it passes its readiness probe, or without one its startup probe; without
    /// either, true once it has run a few seconds. Absent while that is not known, or while
    /// it does not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    /// The last failed check of a probe still failing, for operators; empty when all pass.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub probe: String,
}

/// `GET /v1/cluster/stats`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClusterStats {
    /// Hives by liveness (online, suspect, offline, stopped).
    pub hives_by_liveness: BTreeMap<String, usize>,
    pub hives_eligible: usize,
    pub hives_ineligible: usize,
    /// Workers by the status they report (ready, busy, draining, ...), up ones only.
    pub workers_by_status: BTreeMap<String, usize>,
    /// Worker slots on hives that are up and eligible.
    pub capacity: u64,
    /// Replicas placed on hives.
    pub assigned: u64,
    pub utilization_percent: f64,
    pub jobs_routed_total: u64,
    /// Over the last minute or so of snapshot ticks.
    #[serde(default)]
    pub jobs_routed_per_second: f64,
    pub strategy: PlacementStrategy,
    /// Who places work: with one queen, always this one.
    pub leader: String,
}

/// A queen, as another queen or a node refers to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueenRef {
    pub id: String,
    pub url: String,
}

/// `GET /v1/cluster/leader`: which queen acts for the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LeaderInfo {
    /// `None` while an election is under way.
    pub leader: Option<QueenRef>,
    /// Whether the queen that answered is the leader.
    pub is_self: bool,
    /// The fencing term of the leadership (0 for a single queen, which needs no election).
    pub term: u64,
    /// The queen that answered (its id is what `queen leader transfer --to` takes).
    #[serde(default)]
    pub answered_by: Option<QueenRef>,
}

/// `POST /v1/cluster/leader/transfer`: hand leadership to another queen (planned
/// maintenance of the leader's machine).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LeaderTransfer {
    /// The queen to lead next, by id; `None` picks the healthiest follower.
    #[serde(default)]
    pub to: Option<String>,
}

/// The answer to a transfer: the leader has resigned in favour of `to`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TransferAnswer {
    pub from: QueenRef,
    pub to: QueenRef,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(slot: u32, hive: Option<&str>, last_exit: &str) -> Assignment {
        Assignment {
            hive: hive.map(NodeId::sanitized),
            state: if hive.is_some() { AssignmentState::Placed } else { AssignmentState::Pending },
            restarts: 3,
            process: Some(ProcessState::Restarting),
            last_exit: last_exit.into(),
            ..Assignment::pending(&NodeId::sanitized("web"), slot, OffsetDateTime::UNIX_EPOCH, 0)
        }
    }

    #[test]
    fn a_deployment_is_failed_only_when_no_placed_replica_can_start() {
        let spec = DeploymentSpec::new(NodeId::sanitized("web"), "/x", 3);
        let cannot = "cannot start: /x: no such file";
        let mut status = DeploymentStatus {
            spec,
            created_at: OffsetDateTime::UNIX_EPOCH,
            assignments: vec![
                assignment(0, Some("h1"), cannot),
                assignment(1, Some("h2"), cannot),
                assignment(2, None, ""),
            ],
            running: 0,
            failed: None,
            version: 0,
            rollout: None,
        };
        status.judge_failed();
        assert_eq!(status.failed.as_deref(), Some("no replica can start on 2 hive(s): cannot start: /x: no such file"));
        status.assignments[1].last_exit = "exit status: 1".into();
        status.judge_failed();
        assert_eq!(status.failed, None, "one crashes rather than cannot start: not failed");
        status.assignments[1].last_exit = cannot.into();
        status.running = 1;
        status.judge_failed();
        assert_eq!(status.failed, None, "one runs");
    }
}
