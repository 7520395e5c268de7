//! The hive's end of the control channel: holds a stream open to the queen (no inbound
//! port needed), applies each command — the workers to run and, during a cluster
//! shutdown, the phase to carry out — and ACKs it once done. Reconnects with jittered
//! backoff when the stream drops; a replayed command is harmless.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::BackoffBuilder;
use contract::{CommandAck, CommandKind, NodeId, Phase, PhaseOrder, WorkerLaunch};
use futures_util::StreamExt;
use queen_client::{QueenClient, retry_policy};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::StorageHook;
use crate::supervisor::{Desired, DrainOutcome};

/// Longest wait between reconnects.
const MAX_RECONNECT: Duration = Duration::from_secs(5);
/// How soon a hive asks again while the queens elect a leader.
const NO_LEADER_RETRY: Duration = Duration::from_millis(250);
/// A stream the queen ended after this long is followed by an immediate reconnect.
const QUICK_RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// What carrying out commands needs from the rest of the hive.
pub struct Context {
    pub desired: watch::Sender<Desired>,
    pub drain: Arc<Mutex<DrainOutcome>>,
    /// Set from GATE on; heartbeats then say `draining`.
    pub gated: Arc<AtomicBool>,
    pub storage_hooks: Vec<StorageHook>,
    /// Where the hooks' process trees run, so a hook's children end with it.
    pub cgroups: Option<Arc<crate::cgroup::Cgroups>>,
    /// Cancelled at INFRA: the hive exits.
    pub exit: CancellationToken,
}

impl Context {
    /// Applies one command; the ACK to send, or `None` when there is nobody to ACK to
    /// (INFRA: the hive is leaving).
    async fn apply(&self, id: u64, workers: Vec<WorkerLaunch>, order: Option<PhaseOrder>) -> Option<CommandAck> {
        let phase = order.as_ref().map(|o| o.phase);
        let drain = order.as_ref().filter(|o| o.phase >= Phase::Drain).map(|o| Duration::from_millis(o.deadline_ms));
        self.gated.store(phase.is_some(), Ordering::SeqCst);
        self.desired.send_replace(Desired { workers, gate: phase.is_some(), drain });
        let ack = |ok: bool, detail: String| Some(CommandAck { command_id: id, ok, detail });
        match phase {
            None => ack(true, String::new()),
            Some(Phase::Gate) => ack(true, "starting no workers".into()),
            Some(Phase::Drain) => {
                let deadline = drain.unwrap_or_default() + Duration::from_secs(5);
                let outcome = tokio::time::timeout(deadline, self.drained()).await;
                let DrainOutcome { stopped, killed, .. } = self.drain.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let mut detail = format!("stopped {} workers", stopped.len() + killed.len());
                if !killed.is_empty() {
                    let names: Vec<String> = killed.iter().map(NodeId::to_string).collect();
                    detail.push_str(&format!("; killed at the deadline: {}", names.join(", ")));
                }
                match outcome {
                    Ok(()) => ack(true, detail),
                    Err(_) => ack(false, format!("{detail}; some workers are still running")),
                }
            }
            Some(Phase::Storage) => {
                let (ok, detail) = run_hooks(&self.storage_hooks, self.cgroups.as_deref()).await;
                ack(ok, detail)
            }
            Some(Phase::Persist) => ack(true, "no hive-local state to flush".into()),
            Some(Phase::Infra) => {
                tracing::info!("cluster shutdown: INFRA, the hive exits");
                self.exit.cancel();
                None
            }
        }
    }

    async fn drained(&self) {
        loop {
            if self.drain.lock().unwrap_or_else(|p| p.into_inner()).done {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Runs the storage-stop hooks in order, each with its timeout; all of them run even if
/// one fails, and the detail says how each ended.
async fn run_hooks(hooks: &[StorageHook], cgroups: Option<&crate::cgroup::Cgroups>) -> (bool, String) {
    if hooks.is_empty() {
        return (true, "no storage hooks configured".into());
    }
    let mut ok = true;
    let mut lines = Vec::new();
    for hook in hooks {
        const GROUP: &str = "storage-hook";
        let command = match cgroups {
            Some(c) => c.command(GROUP, std::ffi::OsStr::new("sh")),
            None => Ok(tokio::process::Command::new("sh")),
        };
        let result = match command {
            Ok(mut command) => {
                let run = command.arg("-c").arg(&hook.command).kill_on_drop(true).status();
                match tokio::time::timeout(hook.timeout, run).await {
                    Ok(Ok(status)) if status.success() => "ok".to_string(),
                    Ok(Ok(status)) => format!("failed ({status})"),
                    Ok(Err(e)) => format!("could not run: {e}"),
                    Err(_) => format!("timed out after {:?}", hook.timeout),
                }
            }
            Err(e) => format!("could not run: {e}"),
        };
        // What the hook started (a backgrounded child, a timed-out tree) ends with it.
        if let Some(c) = cgroups {
            c.kill(GROUP);
        }
        ok &= result == "ok";
        lines.push(format!("{}: {result}", hook.command));
    }
    (ok, lines.join("; "))
}

pub async fn run(client: QueenClient, hive: NodeId, context: Context, stop: CancellationToken) {
    let mut backoff = retry_policy(MAX_RECONNECT).build();
    loop {
        let opened = std::time::Instant::now();
        let session = async {
            let mut commands = std::pin::pin!(client.commands(&hive).await?);
            tracing::info!("control channel open");
            // A successful connection resets the backoff for the next drop.
            backoff = retry_policy(MAX_RECONNECT).build();
            while let Some(command) = commands.next().await {
                let command = command?;
                let ack = match command.kind {
                    CommandKind::Assign { workers, shutdown } => {
                        tracing::info!(command = command.id, workers = workers.len(), phase = ?shutdown.as_ref().map(|o| o.phase), "command received");
                        let Some(ack) = context.apply(command.id, workers, shutdown).await else { continue };
                        ack
                    }
                    CommandKind::Hold => {
                        tracing::warn!(
                            command = command.id,
                            "the queen has not said what should run here (it knows no deployments, or has not placed yet): keeping what runs, starting and stopping nothing"
                        );
                        CommandAck {
                            command_id: command.id,
                            ok: true,
                            detail: "holding: what runs keeps running".into(),
                        }
                    }
                };
                if let Err(e) = client.ack(&hive, &ack).await {
                    tracing::warn!(error = %e, command = command.id, "could not ACK; the queen will resend");
                }
            }
            Ok::<(), queen_client::ClientError>(())
        };
        let ended = tokio::select! {
            _ = stop.cancelled() => return,
            ended = session => ended,
        };
        // The queen ended a stream that had been up a while (it stopped leading): the
        // leader is ready now, so reconnect at once (50 ms ±10 %, so a
        // fleet does not arrive in one instant). Anything else backs off.
        let delay = match ended {
            Ok(()) if opened.elapsed() > QUICK_RECONNECT_AFTER => {
                tracing::info!("control channel ended by the queen; reconnecting");
                queen_client::jittered(Duration::from_millis(50))
            }
            Ok(()) => backoff.next().unwrap_or(MAX_RECONNECT),
            // Leadership is changing: an election under way (503 `no_leader`), or a queen
            // still pointing at a leader that has just stepped down (a 307 that could not be
            // followed). It settles in milliseconds after a resignation and within a lease
            // after a crash; the new leader's set is wanted then, not after a backoff that
            // grew while the queens voted.
            Err(queen_client::ClientError::Api { status, ref code, .. })
                if (status == 503 && code == "no_leader") || status == 307 =>
            {
                tracing::info!(code = %code, "leadership is changing; asking again shortly");
                queen_client::jittered(NO_LEADER_RETRY)
            }
            Err(e) => {
                tracing::warn!(error = %e, "control channel down; reconnecting");
                backoff.next().unwrap_or(MAX_RECONNECT)
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}
