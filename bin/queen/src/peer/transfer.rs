//! A planned handover: the leader names the next leader in etcd and resigns.

use super::*;

/// `POST /v1/cluster/leader/transfer` on the leader: names the next leader in etcd
/// (fenced), then resigns; the queens in line before it step back when elected.
pub(crate) async fn transfer(queen: &Queen, peer: &Peer, to: Option<String>) -> Result<TransferAnswer, ApiError> {
    let unavailable = |e: String| ApiError::unavailable("store_unavailable", e, Duration::from_secs(1));
    let members = peer.members().await.map_err(|e| unavailable(e.to_string()))?;
    let others: Vec<QueenRef> = members.into_iter().filter(|m| m.id != peer.me.id).collect();
    let target = match to {
        Some(id) if id == peer.me.id => {
            return Err(ApiError::new(StatusCode::CONFLICT, "already_leader", format!("{id} leads already")));
        }
        Some(id) => others.into_iter().find(|m| m.id == id).ok_or_else(|| {
            ApiError::new(StatusCode::NOT_FOUND, "unknown_queen", format!("no queen {id} is registered in etcd"))
        })?,
        None => healthiest(queen, others).await.ok_or_else(|| {
            ApiError::unavailable("no_follower", "no other queen is registered and ready", Duration::from_secs(1))
        })?,
    };
    peer.set_transfer_target(&target.id).await.map_err(|e| unavailable(e.to_string()))?;
    tracing::warn!(to = %target.id, "transferring leadership");
    peer.resign.notify_one();
    Ok(TransferAnswer { from: peer.me.clone(), to: target })
}

/// The follower that answers `/readyz` ready fastest.
async fn healthiest(queen: &Queen, candidates: Vec<QueenRef>) -> Option<QueenRef> {
    let probes = candidates.into_iter().map(|q| async move {
        let started = Instant::now();
        let ready = queen
            .http
            .get(format!("{}/readyz", q.url))
            .timeout(Duration::from_secs(1))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        ready.then(|| (started.elapsed(), q))
    });
    futures_util::future::join_all(probes).await.into_iter().flatten().min_by_key(|(took, _)| *took).map(|(_, q)| q)
}
