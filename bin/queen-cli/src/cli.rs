//! The `queen` command line (DESIGN 10).

use std::time::Duration;

use clap::{Parser, Subcommand};
use contract::{
    DeploymentSpec, NodeId, Phase, PhaseStatus, PlacementStrategy, ShutdownAnswer, ShutdownRequest, ShutdownStatus,
};
use queen_client::{DEFAULT_QUEEN_URL, QueenClient};

use queen::config::ServeArgs;

use crate::render::*;

#[derive(Parser, Debug)]
#[command(
    name = "queen",
    version,
    about = "The Apiary hub: heartbeats, live cluster snapshot, node API",
    after_help = "Exit status: 0 done; 1 failed (the queen refused, or the operation did not finish); \
2 usage error; 3 the queen could not be reached (connection refused, timed out, no such host)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the queen.
    Serve(Box<ServeArgs>),
    /// Print the node token of a hive: it lets that hive (and the workers it starts) act as
    /// themselves only. Made from the cluster token, which stays with the queen.
    #[command(long_about = "Print the node token of a hive: it lets that hive (and the workers it starts) act as \
themselves only. Made from the cluster token, which stays with the queen.

Rotating a token without downtime (every scope accepts several tokens, and a reload \
(SIGHUP) changes the list live):
  1. Add the new token beside the old in the queen's config file, as a [[tokens]] entry \
     with its own name and scope, and reload every queen.
  2. Move its holders over: for the cluster token, give each hive its new node token \
     (`queen token HIVE --cluster-token NEW`) and restart the hive (its workers get \
     tokens made from it); for admin or read tokens, update the scripts and dashboards.
  3. Remove the old token from the config and reload. Calls with it now get 401.
The audit log (`queen audit`) names the token each admin call came with, so step 3 can \
wait until the old name stops appearing.")]
    Token {
        /// The hive's id.
        hive: String,
        /// The cluster token the queen runs with.
        #[arg(long, env = "APIARY_TOKEN", hide_env_values = true)]
        cluster_token: lifecycle::Secret,
    },
    /// Print the cluster summary.
    Status(Watchable),
    /// List hives and workers with their liveness.
    Nodes(Watchable),
    /// Run replicas of a command on the cluster's hives.
    Deploy(Box<DeployArgs>),
    /// List deployments and where their replicas run.
    Deployments(Watchable),
    /// Change a deployment's replica count.
    Scale {
        name: String,
        replicas: u32,
        #[command(flatten)]
        remote: Remote,
    },
    /// Change what a deployment's replicas run; the change rolls out one replica at a
    /// time (see --max-parallel), each new instance up before its old one stops, and
    /// reverts by itself if new instances do not come up.
    Update(UpdateArgs),
    /// Restart every replica of a deployment, rolling, with its spec unchanged; or, given
    /// a replica's name (`web-0`, `web-0.1`), that one replica where it runs.
    Restart {
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// A replica's output as its hive kept it (`web-0`: whatever instance runs in that
    /// slot now; `web-0.1`: that instance), written to stdout as the program wrote it.
    Logs(LogsArgs),
    /// A deployment's rollout: versions, state, replicas updated, why it reverted.
    Rollout {
        #[command(subcommand)]
        command: RolloutCommand,
    },
    /// Stop all of a deployment's replicas gracefully and forget it.
    Undeploy {
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// One hive: eligibility, drain, removal.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Nodes by liveness and eligibility, workers by status, capacity and utilisation.
    Stats(Remote),
    /// Which replica runs where, since when, how often it moved.
    Assignments(Remote),
    /// The cluster live in the terminal: hives, events, drains, shutdown.
    Top(Remote),
    /// Which queen leads; hand leadership to another (replicas on etcd).
    Leader {
        #[command(subcommand)]
        command: LeaderCommand,
    },
    /// Cluster-wide operations.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// The audit log: every admin call, who made it (the token's name), what, when, and how
    /// it ended. Needs the admin token.
    Audit {
        /// How many of the newest entries.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show the placement strategy, or switch it: round_robin, least_loaded,
    /// least_workers, random, weighted.
    Strategy {
        strategy: Option<PlacementStrategy>,
        #[command(flatten)]
        remote: Remote,
    },
    #[command(flatten)]
    Extra(cli_tools::Extra),
}

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// Allow (on) or stop (off) new replicas on a hive; what runs there keeps running.
    Eligibility {
        hive: String,
        #[arg(value_parser = ["on", "off"])]
        state: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Move a hive's replicas elsewhere (new ones up before old ones stop), then leave it
    /// ineligible.
    Drain {
        hive: String,
        /// Whatever has not moved by then is stopped anyway [default: 5m].
        #[arg(long)]
        deadline: Option<lifecycle::HumanDuration>,
        /// Start it and return.
        #[arg(long)]
        no_wait: bool,
        /// Cancel a running drain instead.
        #[arg(long)]
        cancel: bool,
        /// Stop what runs there now, without waiting for new instances elsewhere.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Forget a hive that is gone (refused for an online one unless --force).
    Rm {
        hive: String,
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Subcommand, Debug)]
pub enum RolloutCommand {
    /// Print the rollout of a deployment.
    Status(Named),
    /// Hold the running rollout: no replica is replaced until it is resumed.
    Pause(Named),
    /// Go on with a paused rollout.
    Resume(Named),
    /// Roll the version before the current one out again (as a new version).
    Undo(Named),
    /// The versions a deployment keeps, oldest first.
    History(Named),
}

/// A deployment by name, on a queen.
#[derive(clap::Args, Debug)]
pub struct Named {
    pub name: String,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(clap::Args, Debug)]
pub struct UpdateArgs {
    pub name: String,
    /// New program for the replicas.
    #[arg(long)]
    pub command: Option<String>,
    /// The replicas' whole environment, as KEY=VALUE; repeatable (replaces the old one).
    #[arg(long = "env")]
    pub env: Vec<String>,
    /// Replicas replaced at the same time.
    #[arg(long)]
    pub max_parallel: Option<u32>,
    /// How long a new instance must stay up before the next is replaced.
    #[arg(long)]
    pub min_healthy: Option<lifecycle::HumanDuration>,
    /// A new instance not up this long after it started reverts the rollout.
    #[arg(long)]
    pub progress_deadline: Option<lifecycle::HumanDuration>,
    /// New arguments for the command, after `--` (replace the old ones).
    #[arg(last = true)]
    pub args: Vec<String>,
    #[command(flatten)]
    pub remote: Remote,
}

impl UpdateArgs {
    /// The patch, with the update policy's unset parts as the deployment has them.
    fn patch(&self, current: &contract::UpdatePolicy) -> anyhow::Result<contract::DeploymentPatch> {
        let policy_changed =
            self.max_parallel.is_some() || self.min_healthy.is_some() || self.progress_deadline.is_some();
        let update = policy_changed.then(|| contract::UpdatePolicy {
            max_parallel: self.max_parallel.unwrap_or(current.max_parallel),
            min_healthy_ms: ms(self.min_healthy).unwrap_or(current.min_healthy_ms),
            progress_deadline_ms: ms(self.progress_deadline).unwrap_or(current.progress_deadline_ms),
        });
        Ok(contract::DeploymentPatch {
            command: self.command.clone(),
            args: (!self.args.is_empty()).then(|| self.args.clone()),
            env: if self.env.is_empty() { None } else { Some(pairs(&self.env, "--env", false)?) },
            update,
            ..Default::default()
        })
    }
}

#[derive(Subcommand, Debug)]
pub enum LeaderCommand {
    /// Print the leader and its term.
    Show(Remote),
    /// Hand leadership to another queen (before maintenance on the leader's machine) and
    /// wait until it leads.
    Transfer {
        /// The queen to lead next, by id (`queen leader show` on it prints it); default:
        /// the healthiest follower.
        #[arg(long)]
        to: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Shut the whole cluster down in order: GATE, DRAIN, STORAGE, PERSIST, INFRA.
    Shutdown(ShutdownArgs),
    /// Confirm that replicas the hives run, unknown to a queen whose store had no
    /// deployments, should stop (until then it stops nothing).
    StopUnknown(Remote),
}

#[derive(clap::Args, Debug)]
pub struct ShutdownArgs {
    /// Print the plan (phases, hives, workers, deadlines) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Record hives that do not ACK and go on; on a running shutdown, push it past a
    /// stuck phase.
    #[arg(long)]
    pub force: bool,
    /// Time workers get between SIGTERM and SIGKILL [default: 30s].
    #[arg(long)]
    pub timeout: Option<lifecycle::HumanDuration>,
    /// Time the queen waits for every hive's ACK of one phase [default: timeout + 15s].
    #[arg(long)]
    pub phase_timeout: Option<lifecycle::HumanDuration>,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(clap::Args, Debug)]
pub struct DeployArgs {
    /// Deployment name; its workers are named `<name>-<slot>`.
    pub name: String,
    /// Program each replica runs.
    #[arg(long)]
    pub command: String,
    #[arg(long, default_value_t = 1)]
    pub replicas: u32,
    /// Hive label a replica needs, as key=value; repeatable.
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Spread the replicas across the values of this hive label (zone, rack) first.
    #[arg(long)]
    pub spread_by: Option<String>,
    /// Environment variable for the replicas, as KEY=VALUE; repeatable.
    #[arg(long = "env")]
    pub env: Vec<String>,
    /// Environment variable whose value the queen keeps secret (stored, passed to the
    /// replicas, never shown by any read), as KEY=VALUE; repeatable.
    #[arg(long = "secret-env")]
    pub secret_env: Vec<String>,
    /// File of secret KEY=VALUE lines (blank lines and # comments skipped), like
    /// --secret-env, so the values stay out of the shell history.
    #[arg(long = "secret-env-file")]
    pub secret_env_file: Option<std::path::PathBuf>,
    /// Restarts of one replica before its hive gives up on it.
    #[arg(long)]
    pub max_restarts: Option<u32>,
    /// Signal that asks a replica to stop: TERM, INT, QUIT, HUP, USR1, USR2 [default: TERM].
    #[arg(long, value_parser = parse_signal)]
    pub stop_signal: Option<contract::StopSignal>,
    /// Time a replica gets to stop before SIGKILL [default: the hive's].
    #[arg(long)]
    pub stop_timeout: Option<lifecycle::HumanDuration>,
    /// Absolute directory the replicas start in [default: the hive's].
    #[arg(long)]
    pub working_dir: Option<String>,
    /// User the replicas run as (hives running as root only) [default: the hive's].
    #[arg(long)]
    pub user: Option<String>,
    /// Restart a replica failing this check: `http:/PATH`, `tcp` or `exec:PROGRAM ARGS`,
    /// then optionally `,every=10s,timeout=1s,failures=3`; or the probe as JSON.
    #[arg(long, value_parser = parse_probe)]
    pub liveness: Option<contract::Probe>,
    /// Route no job to a replica failing this check (same form as --liveness).
    #[arg(long, value_parser = parse_probe)]
    pub readiness: Option<contract::Probe>,
    /// Hold the other probes until this check passes (same form as --liveness).
    #[arg(long, value_parser = parse_probe)]
    pub startup: Option<contract::Probe>,
    /// Bytes of output kept per log file of a replica [default: the hive's].
    #[arg(long)]
    pub log_max_bytes: Option<u64>,
    /// Log files kept per stream of a replica [default: the hive's].
    #[arg(long)]
    pub log_files: Option<u32>,
    /// CPU each replica is given, in thousandths of a core (500: half a core); placement
    /// gives no hive more than it offers.
    #[arg(long)]
    pub cpu_millis: Option<u64>,
    /// Memory each replica is given, in bytes; one past it is restarted.
    #[arg(long)]
    pub memory_bytes: Option<u64>,
    /// Arguments for the command, after `--`.
    #[arg(last = true)]
    pub args: Vec<String>,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    pub replica: String,
    /// Its stderr instead of its stdout.
    #[arg(long)]
    pub stderr: bool,
    /// The instance before its last restart (after a crash: what it said before it died).
    #[arg(long)]
    pub previous: bool,
    /// Keep printing what it writes next, until interrupted.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// The last N lines only.
    #[arg(long)]
    pub tail: Option<usize>,
    /// Only what was written in this last while (`10m`, `1h`), or since an RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// Start each line with the time it was written.
    #[arg(long)]
    pub timestamps: bool,
    #[command(flatten)]
    pub remote: Remote,
}

impl LogsArgs {
    pub fn query(&self) -> Result<contract::LogQuery, Usage> {
        let mut q = contract::LogQuery {
            stream: if self.stderr { contract::LogStream::Stderr } else { contract::LogStream::Stdout },
            previous: self.previous,
            tail: self.tail,
            follow: self.follow,
            timestamps: self.timestamps,
            ..Default::default()
        };
        if let Some(since) = &self.since {
            let rfc3339 = &time::format_description::well_known::Rfc3339;
            match (since.parse::<lifecycle::HumanDuration>(), time::OffsetDateTime::parse(since, rfc3339)) {
                (Ok(d), _) => q.since_seconds = Some(d.0.as_secs()),
                (_, Ok(at)) => q.since = Some(at),
                _ => return Err(Usage(format!("--since {since:?}: a duration (10m) or an RFC 3339 time"))),
            }
        }
        q.validate().map_err(|e| Usage(e.to_string()))?;
        Ok(q)
    }
}

/// A probe as `http:/PATH`, `tcp` or `exec:PROGRAM ARGS`, with `,every=D,timeout=D,failures=N`
/// after it, or as the API's JSON.
pub fn parse_probe(s: &str) -> Result<contract::Probe, String> {
    let probe: contract::Probe = if s.trim_start().starts_with('{') {
        serde_json::from_str(s).map_err(|e| format!("not a probe: {e}"))?
    } else {
        let mut parts = s.split(',');
        let check = parts.next().unwrap_or_default().trim();
        let mut probe = contract::Probe::http("/");
        probe.http = None;
        match check.split_once(':') {
            Some(("http", path)) => probe.http = Some(path.to_string()),
            Some(("exec", line)) => probe.exec = Some(line.split_whitespace().map(str::to_string).collect()),
            None if check == "tcp" => probe.tcp = Some(true),
            _ => return Err(format!("{check:?}: one of http:/PATH, tcp, exec:PROGRAM ARGS")),
        }
        for part in parts {
            let duration = |v: &str| {
                v.parse::<lifecycle::HumanDuration>()
                    .map(|d| d.0.as_millis() as u64)
                    .map_err(|e| format!("{part}: {e}"))
            };
            match part.trim().split_once('=') {
                Some(("every" | "interval", v)) => probe.interval_ms = duration(v)?,
                Some(("timeout", v)) => probe.timeout_ms = duration(v)?,
                Some(("failures", v)) => probe.failures = v.parse().map_err(|_| format!("{part}: not a number"))?,
                _ => return Err(format!("{part:?}: one of every=D, timeout=D, failures=N")),
            }
        }
        probe
    };
    let spec = DeploymentSpec { liveness: Some(probe.clone()), ..example_spec() };
    spec.validate().map_err(|e| e.to_string())?;
    Ok(probe)
}

/// The smallest valid deployment, to check a part of one against the contract's rules.
fn example_spec() -> DeploymentSpec {
    DeploymentSpec::new(NodeId::sanitized("x"), "x", 1)
}

fn parse_signal(s: &str) -> Result<contract::StopSignal, String> {
    let name = s.trim().trim_start_matches("SIG").to_ascii_uppercase();
    serde_json::from_value(serde_json::Value::String(name))
        .map_err(|_| format!("{s}: one of TERM, INT, QUIT, HUP, USR1, USR2"))
}

/// `KEY=VALUE` items as a map; the error quotes the item unless it may hold a secret.
fn pairs(items: &[String], what: &str, secret: bool) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    items
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ if secret => anyhow::bail!("a {what} entry is not KEY=VALUE"),
            _ => anyhow::bail!("{what} {kv:?} is not KEY=VALUE"),
        })
        .collect()
}

impl DeployArgs {
    fn secret_env(&self) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
        use anyhow::Context;
        let mut items = self.secret_env.clone();
        if let Some(path) = &self.secret_env_file {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let lines = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#'));
            items.extend(lines.map(str::to_string));
        }
        pairs(&items, "--secret-env", true)
    }

    pub fn spec(&self) -> anyhow::Result<DeploymentSpec> {
        let spec = DeploymentSpec {
            name: NodeId::new(self.name.clone())?,
            command: self.command.clone(),
            args: self.args.clone(),
            env: pairs(&self.env, "--env", false)?,
            secret_env: self.secret_env()?,
            replicas: self.replicas,
            labels_required: pairs(&self.labels, "--label", false)?,
            spread_by: self.spread_by.clone(),
            max_restarts: self.max_restarts,
            update: Default::default(),
            process: contract::ProcessOptions {
                stop_signal: self.stop_signal,
                stop_timeout_ms: ms(self.stop_timeout),
                working_dir: self.working_dir.clone(),
                user: self.user.clone(),
            },
            liveness: self.liveness.clone(),
            readiness: self.readiness.clone(),
            startup: self.startup.clone(),
            resources: (self.cpu_millis.is_some() || self.memory_bytes.is_some()).then(|| contract::ResourceRequest {
                cpu_millis: self.cpu_millis.unwrap_or(0),
                memory_bytes: self.memory_bytes.unwrap_or(0),
            }),
            logs: (self.log_max_bytes.is_some() || self.log_files.is_some()).then(|| {
                let d = contract::LogPolicy::default();
                contract::LogPolicy {
                    max_bytes: self.log_max_bytes.unwrap_or(d.max_bytes),
                    files: self.log_files.unwrap_or(d.files),
                }
            }),
        };
        spec.validate()?;
        Ok(spec)
    }
}

#[derive(clap::Args, Debug)]
pub struct Remote {
    /// Queen to ask.
    #[arg(long, env = "APIARY_QUEEN", default_value = DEFAULT_QUEEN_URL)]
    pub queen: String,
    /// `table` for people, `json` for scripts.
    #[arg(long, default_value = "table")]
    pub output: Output,
    /// Token to present: the admin token for changes, any token for reads.
    #[arg(long, env = "APIARY_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM certificate(s) to trust for an https queen.
    #[arg(long, env = "APIARY_CA")]
    pub ca: Option<std::path::PathBuf>,
}

/// A read that can be redrawn until interrupted.
#[derive(clap::Args, Debug)]
pub struct Watchable {
    #[command(flatten)]
    pub remote: Remote,
    /// Ask again every --interval until Ctrl-C: the table redrawn, or one JSON document
    /// per line.
    #[arg(long)]
    pub watch: bool,
    #[arg(long, default_value = "2s")]
    pub interval: lifecycle::HumanDuration,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

/// Prints `value` as JSON or as the table `render` makes of it.
fn print_as<T: serde::Serialize>(output: Output, value: &T, render: impl FnOnce(&T) -> String) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Output::Table => print!("{}", render(value)),
    }
    Ok(())
}

/// How the process ends: documented in `queen --help`.
pub mod exit {
    pub const FAILED: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const UNREACHABLE: u8 = 3;
}

/// The exit status for a failed command: [`exit::UNREACHABLE`] when the queen could not be
/// reached at all, so a script can tell "down" from "said no".
pub fn exit_code(err: &anyhow::Error) -> u8 {
    let unreachable = |e: &reqwest::Error| e.is_connect() || e.is_timeout();
    let reached_nothing = err.chain().any(|cause| {
        if let Some(queen_client::ClientError::Transport(e)) = cause.downcast_ref::<queen_client::ClientError>() {
            return unreachable(e);
        }
        cause.downcast_ref::<reqwest::Error>().is_some_and(unreachable)
    });
    if reached_nothing { exit::UNREACHABLE } else { exit::FAILED }
}

/// A usage mistake found after parsing (clap exits with [`exit::USAGE`] for the rest).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

impl Remote {
    pub fn client(&self) -> anyhow::Result<QueenClient> {
        Ok(QueenClient::with_ca(&self.queen, self.token.clone(), Duration::from_secs(10), self.ca.as_deref())?)
    }
}

/// Every subcommand but `serve`: ask the queen, print the answer.
pub async fn run_remote(command: Command) -> anyhow::Result<()> {
    use anyhow::Context;
    match command {
        Command::Serve(_) | Command::Extra(_) => anyhow::bail!("not a remote command"),
        Command::Token { hive, cluster_token } => {
            let hive = NodeId::new(hive)?;
            println!("{}", queen_client::node_token::hive_token(cluster_token.expose(), &hive));
        }
        Command::Status(w) => return watch(&w, View::Status).await,
        Command::Leader { command: LeaderCommand::Show(remote) } => {
            let leader = remote.client()?.leader().await.with_context(|| format!("asking {}", remote.queen))?;
            print_as(remote.output, &leader, |l| format!("{}\n", render_leader(l)))?;
        }
        Command::Leader { command: LeaderCommand::Transfer { to, remote } } => {
            let client = remote.client()?;
            let started = std::time::Instant::now();
            let answer: contract::TransferAnswer = client
                .post_json(contract::paths::CLUSTER_LEADER_TRANSFER, &contract::LeaderTransfer { to })
                .await
                .with_context(|| format!("asking {}", remote.queen))?;
            if remote.output == Output::Table {
                println!("{} resigned in favour of {} ({})", answer.from.id, answer.to.id, answer.to.url);
            }
            // Ask the new leader itself: it knows first-hand when it leads.
            let output = remote.output;
            let target = Remote { queen: answer.to.url.clone(), ..remote }.client()?;
            let deadline = started + std::time::Duration::from_secs(15);
            loop {
                if let Ok(leader) = target.leader().await
                    && leader.is_self
                {
                    let took_ms = started.elapsed().as_millis() as u64;
                    let done = contract::cli::Transferred { transfer: answer, leader, took_ms };
                    return print_as(output, &done, |d| {
                        format!("{} leads (term {}) after {} ms\n", d.transfer.to.id, d.leader.term, d.took_ms)
                    });
                }
                if std::time::Instant::now() > deadline {
                    anyhow::bail!("{} did not take over within 15 s", answer.to.id);
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        Command::Nodes(w) => return watch(&w, View::Nodes).await,
        Command::Stats(remote) => {
            let stats: contract::ClusterStats = remote.client()?.get_json(contract::paths::CLUSTER_STATS).await?;
            print_as(remote.output, &stats, render_stats)?;
        }
        Command::Assignments(remote) => {
            let assignments = remote.client()?.assignments().await?;
            print_as(remote.output, &assignments, |a| render_assignments(a))?;
        }
        Command::Node { command } => return node(command).await,
        Command::Top(remote) => {
            if remote.output == Output::Json {
                return Err(Usage(
                    "`queen top` draws a terminal; for JSON use `queen status --watch --output json`".into(),
                )
                .into());
            }
            return crate::top::run(remote.client()?).await;
        }
        Command::Deploy(args) => {
            let client = args.remote.client()?;
            let status = client.deploy(&args.spec()?).await?;
            print_as(args.remote.output, &status, |s| render_deployments(std::slice::from_ref(s)))?;
            warn_if_it_cannot_start(&client, &status).await;
        }
        Command::Deployments(w) => return watch(&w, View::Deployments).await,
        Command::Scale { name, replicas, remote } => {
            let status = remote.client()?.scale(&name, replicas).await?;
            print_as(remote.output, &status, |s| render_deployments(std::slice::from_ref(s)))?;
        }
        Command::Update(args) => {
            let client = args.remote.client()?;
            let path = format!("{}/{}", contract::paths::DEPLOYMENTS, args.name);
            let current: contract::DeploymentStatus =
                client.get_json(&path).await.with_context(|| format!("asking {}", args.remote.queen))?;
            let status = client.patch(&args.name, &args.patch(&current.spec.update)?).await?;
            print_as(args.remote.output, &status, |s| render_deployments(std::slice::from_ref(s)))?;
        }
        Command::Restart { name, remote } => {
            let client = remote.client()?;
            match client.restart(&name).await {
                Ok(status) => print_as(remote.output, &status, |s| render_deployments(std::slice::from_ref(s)))?,
                // Not a deployment: a replica, then.
                Err(queen_client::ClientError::Api { status: 404, .. }) => {
                    let path = format!("/v1/replicas/{name}/restart");
                    let a: contract::Assignment = client.post_json(&path, &serde_json::json!({})).await?;
                    print_as(remote.output, &a, |a| {
                        let hive = a.hive.as_ref().map(NodeId::as_str).unwrap_or("-");
                        format!("{name}: restarting on {hive} as {}\n", a.worker)
                    })?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Command::Rollout { command } => return rollout(command).await,
        Command::Logs(args) => return logs(args).await,
        Command::Undeploy { name, remote } => {
            remote.client()?.undeploy(&name).await?;
            print_as(remote.output, &contract::cli::Done { name, outcome: "replicas stopping".into() }, render_done)?;
        }
        Command::Cluster { command: ClusterCommand::Shutdown(args) } => return shutdown(args).await,
        Command::Cluster { command: ClusterCommand::StopUnknown(remote) } => {
            let answer: contract::UnknownReplicas = remote
                .client()?
                .post_json("/v1/cluster/unknown-replicas/stop", &serde_json::json!({}))
                .await
                .with_context(|| format!("asking {}", remote.queen))?;
            print_as(remote.output, &answer, |a| {
                format!("{} hives told to stop the replicas unknown to the queen\n", a.hives)
            })?;
        }
        Command::Audit { limit, remote } => {
            let log: contract::AuditLog = remote
                .client()?
                .get_json(&format!("{}?limit={limit}", contract::paths::AUDIT))
                .await
                .with_context(|| format!("asking {}", remote.queen))?;
            print_as(remote.output, &log, render_audit)?;
        }
        Command::Strategy { strategy, remote } => {
            let client = remote.client()?;
            if let Some(s) = strategy {
                client.set_strategy(s).await?;
            }
            let now = contract::StrategyBody { strategy: client.strategy().await? };
            print_as(remote.output, &now, |s| format!("{}\n", s.strategy.as_str()))?;
        }
    }
    Ok(())
}

async fn rollout(command: RolloutCommand) -> anyhow::Result<()> {
    use anyhow::Context;
    let (action, Named { name, remote }) = match command {
        RolloutCommand::Status(n) => (None, n),
        RolloutCommand::History(Named { name, remote }) => {
            let path = format!("{}/{name}/history", contract::paths::DEPLOYMENTS);
            let history: contract::DeploymentHistory =
                remote.client()?.get_json(&path).await.with_context(|| format!("asking {}", remote.queen))?;
            return print_as(remote.output, &history, render_history);
        }
        RolloutCommand::Pause(n) => (Some("pause"), n),
        RolloutCommand::Resume(n) => (Some("resume"), n),
        RolloutCommand::Undo(n) => (Some("undo"), n),
    };
    let client = remote.client()?;
    let path = format!("{}/{name}", contract::paths::DEPLOYMENTS);
    let status: contract::DeploymentStatus = match action {
        Some(action) => client.post_json(&format!("{path}/rollout/{action}"), &serde_json::json!({})).await?,
        None => client.get_json(&path).await.with_context(|| format!("asking {}", remote.queen))?,
    };
    print_as(remote.output, &status.rollout, |r| render_rollout(&name, status.version, r.as_ref()))
}

/// Watches a new deployment for a few seconds and says at once if a hive reports that its
/// command cannot start (a missing binary, one not executable), rather than leaving the
/// operator to find `0 running` later.
async fn warn_if_it_cannot_start(client: &QueenClient, created: &contract::DeploymentStatus) {
    let path = format!("{}/{}", contract::paths::DEPLOYMENTS, created.spec.name);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Ok(status) = client.get_json::<contract::DeploymentStatus>(&path).await else { return };
        let failing: Vec<String> = status
            .assignments
            .iter()
            .filter(|a| a.last_exit.starts_with("cannot start"))
            .map(|a| format!("{} on {}: {}", a.worker, a.hive.as_ref().map(NodeId::as_str).unwrap_or("-"), a.last_exit))
            .collect();
        if !failing.is_empty() {
            eprintln!("warning: the command does not start:");
            for f in failing {
                eprintln!("  {f}");
            }
            return;
        }
        if status.running >= status.spec.replicas {
            return;
        }
    }
}

fn ms(d: Option<lifecycle::HumanDuration>) -> Option<u64> {
    d.map(|d| d.0.as_millis() as u64)
}

/// Copies a replica's output to stdout as it arrives: the program's own bytes.
async fn logs(args: LogsArgs) -> anyhow::Result<()> {
    use std::io::Write;
    let query = args.query()?;
    let mut answer = args.remote.client()?.logs(&args.replica, &query).await?;
    while let Some(chunk) = answer.chunk().await? {
        let mut out = std::io::stdout();
        match out.write_all(&chunk).and_then(|()| out.flush()) {
            // `queen logs web-0 | head`: the reader has what it wanted.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            written => written?,
        }
    }
    Ok(())
}

/// Starts (or dry-runs) a cluster shutdown and follows it live until the queen is gone.
async fn shutdown(args: ShutdownArgs) -> anyhow::Result<()> {
    let client = args.remote.client()?;
    let req = ShutdownRequest {
        dry_run: args.dry_run,
        force: args.force,
        drain_deadline_ms: ms(args.timeout),
        phase_timeout_ms: ms(args.phase_timeout),
    };
    let mut last = match client.post_json::<_, ShutdownAnswer>(contract::paths::CLUSTER_SHUTDOWN, &req).await? {
        ShutdownAnswer::Plan(plan) => return print_as(args.remote.output, &plan, render_plan),
        ShutdownAnswer::Started(state) => state,
    };
    let bar = progress(args.remote.output, Phase::ALL.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} phases  {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    // The snapshot stream carries the shutdown state at every phase change and every tick,
    // and its last frame, sent before the queen exits, holds the final state.
    let mut snapshots = std::pin::pin!(client.snapshots().await?);
    while let Some(snapshot) = futures_util::StreamExt::next(&mut snapshots).await {
        let Ok(snapshot) = snapshot else { break };
        let Some(state) = snapshot.shutdown else { continue };
        last = state;
        let done = last.phases.iter().filter(|p| matches!(p.status, PhaseStatus::Done | PhaseStatus::Forced)).count();
        bar.set_position(done as u64);
        if let Some(p) = last.current() {
            let acked = p.hives.values().filter(|h| h.status == contract::AckStatus::Acked).count();
            let left: u32 = p.hives.values().map(|h| h.workers_left).sum();
            bar.set_message(format!("{}: {acked}/{} hives ACKed, {left} workers left", p.phase.name(), p.hives.len()));
        }
        if last.status == ShutdownStatus::Failed {
            break;
        }
    }
    bar.finish_and_clear();
    print_as(args.remote.output, &last, render_shutdown)?;
    match last.status {
        ShutdownStatus::Failed => anyhow::bail!("cluster shutdown stopped: {}", last.failure),
        ShutdownStatus::Completed => {
            if args.remote.output == Output::Table {
                println!("the queen has exited");
            }
            Ok(())
        }
        ShutdownStatus::Running => anyhow::bail!("lost the queen's stream before the shutdown ended"),
    }
}

async fn node(command: NodeCommand) -> anyhow::Result<()> {
    match command {
        NodeCommand::Eligibility { hive, state, remote } => {
            let body = contract::EligibilityBody { eligible: state == "on" };
            let path = format!("{}/{hive}/eligibility", contract::paths::HIVES);
            let now: contract::EligibilityBody = remote.client()?.send_json(reqwest::Method::PUT, &path, &body).await?;
            print_as(remote.output, &now, |b| format!("{hive}: eligible {}\n", if b.eligible { "on" } else { "off" }))?;
        }
        NodeCommand::Rm { hive, force, remote } => {
            let client = remote.client()?;
            let path = format!("{}/{hive}{}", contract::paths::HIVES, if force { "?force=true" } else { "" });
            client.delete(&path).await?;
            print_as(remote.output, &contract::cli::Done { name: hive, outcome: "removed".into() }, render_done)?;
        }
        NodeCommand::Drain { hive, deadline, no_wait, cancel, force, remote } => {
            let deadline = if force { Some(lifecycle::HumanDuration(std::time::Duration::ZERO)) } else { deadline };
            let client = remote.client()?;
            let id = NodeId::new(hive)?;
            if cancel {
                let path = format!("{}/{id}/drain", contract::paths::HIVES);
                let status: contract::DrainStatus = client.send_json(reqwest::Method::DELETE, &path, &()).await?;
                return print_as(remote.output, &status, render_drain);
            }
            let mut status = client.drain(&id, deadline.map(|d| d.0)).await?;
            if no_wait {
                return print_as(remote.output, &status, render_drain);
            }
            let total = u64::from(status.left + status.moved).max(1);
            let bar = progress(remote.output, total);
            for n in &status.notes {
                bar.println(n);
            }
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} replicas moved  {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let mut said = status.notes.len();
            while !status.done {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                status = client.drain_status(&id).await?;
                bar.set_position(u64::from(status.moved));
                bar.set_message(format!("{} moving, {} left", status.moving, status.left));
                for n in status.notes.iter().skip(said) {
                    bar.println(n);
                }
                said = status.notes.len();
            }
            bar.finish_and_clear();
            print_as(remote.output, &status, render_drain)?;
        }
    }
    Ok(())
}

/// A progress bar for people; hidden when the output is for a script.
fn progress(output: Output, len: u64) -> indicatif::ProgressBar {
    match output {
        Output::Table => indicatif::ProgressBar::new(len),
        Output::Json => indicatif::ProgressBar::hidden(),
    }
}

/// The reads `--watch` can repeat.
#[derive(Clone, Copy)]
enum View {
    Status,
    Nodes,
    Deployments,
}

/// One answer of a [`View`], kept as the contract types it is made of.
enum Shown {
    Status(Box<contract::cli::Status>),
    Nodes(contract::cli::Nodes),
    Deployments(Vec<contract::DeploymentStatus>),
}

impl View {
    async fn fetch(self, client: &QueenClient) -> Result<Shown, queen_client::ClientError> {
        Ok(match self {
            View::Status => Shown::Status(Box::new(contract::cli::Status {
                snapshot: client.snapshot().await?,
                leader: client.leader().await?,
            })),
            View::Nodes => {
                Shown::Nodes(contract::cli::Nodes { hives: client.hives().await?, workers: client.workers().await? })
            }
            View::Deployments => Shown::Deployments(client.deployments().await?),
        })
    }
}

impl Shown {
    fn json(&self, pretty: bool) -> serde_json::Result<String> {
        let value = match self {
            Shown::Status(s) => serde_json::to_value(s)?,
            Shown::Nodes(n) => serde_json::to_value(n)?,
            Shown::Deployments(d) => serde_json::to_value(d)?,
        };
        if pretty { serde_json::to_string_pretty(&value) } else { serde_json::to_string(&value) }
    }

    fn table(&self) -> String {
        match self {
            Shown::Status(s) => format!("{}{}\n", render_status(&s.snapshot), render_leader(&s.leader)),
            Shown::Nodes(n) => render_nodes(&n.hives, &n.workers),
            Shown::Deployments(d) => render_deployments(d),
        }
    }
}

/// Prints a read once, or (with `--watch`) again every interval until interrupted: a
/// failed ask is said and asked again rather than ending the watch.
async fn watch(w: &Watchable, view: View) -> anyhow::Result<()> {
    use anyhow::Context;
    let client = w.remote.client()?;
    if !w.watch {
        let shown = view.fetch(&client).await.with_context(|| format!("asking {}", w.remote.queen))?;
        match w.remote.output {
            Output::Json => println!("{}", shown.json(true)?),
            Output::Table => print!("{}", shown.table()),
        }
        return Ok(());
    }
    let mut tick = tokio::time::interval(w.interval.0.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let shown = view.fetch(&client).await;
        match (w.remote.output, shown) {
            (Output::Json, Ok(shown)) => println!("{}", shown.json(false)?),
            (Output::Json, Err(e)) => eprintln!("asking {}: {e}", w.remote.queen),
            (Output::Table, shown) => {
                // Clear the screen and home the cursor, as `watch(1)` does.
                print!("\x1b[2J\x1b[H");
                println!(
                    "every {} · {} · {}\n",
                    w.interval,
                    w.remote.queen,
                    local_time(time::OffsetDateTime::now_utc())
                );
                match shown {
                    Ok(shown) => print!("{}", shown.table()),
                    Err(e) => println!("asking {}: {e}", w.remote.queen),
                }
            }
        }
    }
}
