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
#[command(name = "queen", version, about = "The Apiary hub: heartbeats, live cluster snapshot, node API")]
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
    Status(Remote),
    /// List hives and workers with their liveness.
    Nodes(Remote),
    /// Run replicas of a command on the cluster's hives.
    Deploy(DeployArgs),
    /// List deployments and where their replicas run.
    Deployments(Remote),
    /// Change a deployment's replica count.
    Scale {
        name: String,
        replicas: u32,
        #[command(flatten)]
        remote: Remote,
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
    /// Arguments for the command, after `--`.
    #[arg(last = true)]
    pub args: Vec<String>,
    #[command(flatten)]
    pub remote: Remote,
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
            max_restarts: self.max_restarts,
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

impl Remote {
    pub fn client(&self) -> anyhow::Result<QueenClient> {
        Ok(QueenClient::with_ca(&self.queen, self.token.clone(), Duration::from_secs(10), self.ca.as_deref())?)
    }
}

/// Every subcommand but `serve`: ask the queen, print the answer.
pub async fn run_remote(command: Command) -> anyhow::Result<()> {
    use anyhow::Context;
    match command {
        Command::Serve(_) => anyhow::bail!("serve is not a remote command"),
        Command::Token { hive, cluster_token } => {
            let hive = NodeId::new(hive)?;
            println!("{}", queen_client::node_token::hive_token(cluster_token.expose(), &hive));
        }
        Command::Status(remote) => {
            let client = remote.client()?;
            let snapshot = client.snapshot().await.with_context(|| format!("asking {}", remote.queen))?;
            print!("{}", render_status(&snapshot));
            let leader = client.leader().await?;
            println!("{}", render_leader(&leader));
        }
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
            println!("{} resigned in favour of {} ({})", answer.from.id, answer.to.id, answer.to.url);
            // Ask the new leader itself: it knows first-hand when it leads.
            let target = Remote { queen: answer.to.url.clone(), ..remote }.client()?;
            let deadline = started + std::time::Duration::from_secs(15);
            loop {
                if let Ok(l) = target.leader().await
                    && l.is_self
                {
                    println!("{} leads (term {}) after {} ms", answer.to.id, l.term, started.elapsed().as_millis());
                    break;
                }
                if std::time::Instant::now() > deadline {
                    anyhow::bail!("{} did not take over within 15 s", answer.to.id);
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        Command::Nodes(remote) => {
            let client = remote.client()?;
            let hives = client.hives().await.with_context(|| format!("asking {}", remote.queen))?;
            let nodes = (hives, client.workers().await?);
            print_as(remote.output, &nodes, |(h, w)| render_nodes(h, w))?;
        }
        Command::Stats(remote) => {
            let stats: contract::ClusterStats = remote.client()?.get_json(contract::paths::CLUSTER_STATS).await?;
            print_as(remote.output, &stats, render_stats)?;
        }
        Command::Assignments(remote) => {
            let assignments = remote.client()?.assignments().await?;
            print_as(remote.output, &assignments, |a| render_assignments(a))?;
        }
        Command::Node { command } => return node(command).await,
        Command::Top(remote) => return crate::top::run(remote.client()?).await,
        Command::Deploy(args) => {
            let client = args.remote.client()?;
            let status = client.deploy(&args.spec()?).await?;
            print!("{}", render_deployments(std::slice::from_ref(&status)));
            warn_if_it_cannot_start(&client, &status).await;
        }
        Command::Deployments(remote) => print!("{}", render_deployments(&remote.client()?.deployments().await?)),
        Command::Scale { name, replicas, remote } => {
            print!("{}", render_deployments(&[remote.client()?.scale(&name, replicas).await?]));
        }
        Command::Undeploy { name, remote } => {
            remote.client()?.undeploy(&name).await?;
            println!("{name}: replicas stopping");
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
            println!("{}", client.strategy().await?.as_str());
        }
    }
    Ok(())
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
        ShutdownAnswer::Plan(plan) => {
            print!("{}", render_plan(&plan));
            return Ok(());
        }
        ShutdownAnswer::Started(state) => state,
    };
    let bar = indicatif::ProgressBar::new(Phase::ALL.len() as u64);
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
    print!("{}", render_shutdown(&last));
    match last.status {
        ShutdownStatus::Failed => anyhow::bail!("cluster shutdown stopped: {}", last.failure),
        ShutdownStatus::Completed => {
            println!("the queen has exited");
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
            let _: contract::EligibilityBody = remote.client()?.send_json(reqwest::Method::PUT, &path, &body).await?;
            println!("{hive}: eligible {state}");
        }
        NodeCommand::Rm { hive, force, remote } => {
            let client = remote.client()?;
            let path = format!("{}/{hive}{}", contract::paths::HIVES, if force { "?force=true" } else { "" });
            client.delete(&path).await?;
            println!("{hive}: removed");
        }
        NodeCommand::Drain { hive, deadline, no_wait, cancel, force, remote } => {
            let deadline = if force { Some(lifecycle::HumanDuration(std::time::Duration::ZERO)) } else { deadline };
            let client = remote.client()?;
            let id = NodeId::new(hive)?;
            if cancel {
                let path = format!("{}/{id}/drain", contract::paths::HIVES);
                let status: contract::DrainStatus = client.send_json(reqwest::Method::DELETE, &path, &()).await?;
                print!("{}", render_drain(&status));
                return Ok(());
            }
            let mut status = client.drain(&id, deadline.map(|d| d.0)).await?;
            for n in &status.notes {
                println!("{n}");
            }
            if no_wait {
                print!("{}", render_drain(&status));
                return Ok(());
            }
            let total = u64::from(status.left + status.moved).max(1);
            let bar = indicatif::ProgressBar::new(total);
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
            print!("{}", render_drain(&status));
        }
    }
    Ok(())
}
