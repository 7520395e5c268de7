//! The hive's end of the control channel: holds a stream open to the queen (no inbound
//! port needed), hands each command's desired set to the supervisor, ACKs it, and
//! reconnects with jittered backoff when the stream drops.

use std::time::Duration;

use backon::BackoffBuilder;
use contract::{CommandAck, CommandKind, NodeId, WorkerLaunch};
use futures_util::StreamExt;
use queen_client::{QueenClient, retry_policy};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Longest wait between reconnects.
const MAX_RECONNECT: Duration = Duration::from_secs(5);

pub async fn run(
    client: QueenClient,
    hive: NodeId,
    desired: watch::Sender<Vec<WorkerLaunch>>,
    stop: CancellationToken,
) {
    let mut backoff = retry_policy(MAX_RECONNECT).build();
    loop {
        let session = async {
            let mut commands = std::pin::pin!(client.commands(&hive).await?);
            tracing::info!("control channel open");
            // A successful connection resets the backoff for the next drop.
            backoff = retry_policy(MAX_RECONNECT).build();
            while let Some(command) = commands.next().await {
                let command = command?;
                let ack = match command.kind {
                    CommandKind::Assign { workers } => {
                        tracing::info!(command = command.id, workers = workers.len(), "assignments received");
                        desired.send_replace(workers);
                        CommandAck { command_id: command.id, ok: true, detail: String::new() }
                    }
                };
                if let Err(e) = client.ack(&hive, &ack).await {
                    tracing::warn!(error = %e, command = command.id, "could not ACK; the queen will see it on the next command");
                }
            }
            Ok::<(), queen_client::ClientError>(())
        };
        let ended = tokio::select! {
            _ = stop.cancelled() => return,
            ended = session => ended,
        };
        if let Err(e) = ended {
            tracing::warn!(error = %e, "control channel down; reconnecting");
        }
        let delay = backoff.next().unwrap_or(MAX_RECONNECT);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}
