//! What a follower does: keep the stored state as the leader writes it, and relay the
//! leader's snapshot stream to its own clients.

use super::*;

/// A follower's view of the stored state: reloaded whenever it changes in etcd.
pub(crate) async fn follow_state(queen: Arc<Queen>, peer: Arc<Peer>, stop: CancellationToken) {
    loop {
        let mut c = peer.client.clone();
        let watched = async {
            let mut stream = c.watch(peer.keys.state.as_str(), Some(WatchOptions::new().with_prefix())).await?;
            // Whatever changed before the watch started.
            let _ = queen.off_runtime(|q| q.follow_stored_state()).await;
            while let Some(resp) = stream.message().await? {
                if resp.canceled() {
                    break;
                }
                let relevant =
                    resp.events().iter().any(|e| matches!(e.event_type(), EventType::Put | EventType::Delete));
                if relevant {
                    // Changes come in bursts (one reconcile, many keys): let it settle.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let _ = queen.off_runtime(|q| q.follow_stored_state()).await;
                }
            }
            Ok::<_, etcd_client::Error>(())
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            r = watched => if let Err(e) = r {
                tracing::debug!(error = %e, "watch on the stored state broke; watching again");
            },
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// A follower's snapshot stream is the leader's, relayed: its dashboards stay live and
/// show what the leader sees, and go on through a failover to the next leader.
pub(crate) async fn relay_snapshots(queen: Arc<Queen>, peer: Arc<Peer>, stop: CancellationToken) {
    let mut role = peer.subscribe();
    loop {
        let leader = role.borrow_and_update().leader.clone();
        let relaying = async {
            let Some(leader) = leader.filter(|l| l.id != peer.me.id) else {
                return std::future::pending::<()>().await;
            };
            let config = queen.config();
            let t = &config.tokens;
            let token = t.read.iter().chain(&t.admin).chain(&t.cluster).next().map(|n| n.secret.expose().to_string());
            let client = match queen_client::QueenClient::new(&leader.url, token, Duration::from_secs(5)) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, leader = %leader.url, "cannot relay the leader's stream");
                    return std::future::pending::<()>().await;
                }
            };
            loop {
                match client.snapshots().await {
                    Ok(stream) => {
                        let mut stream = std::pin::pin!(stream);
                        while let Some(Ok(snapshot)) = stream.next().await {
                            if peer.is_leader() {
                                break;
                            }
                            queen.publish_relayed(snapshot);
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "leader's stream not reachable; retrying"),
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            Ok(()) = role.changed() => {}
            () = relaying => {}
        }
    }
}
