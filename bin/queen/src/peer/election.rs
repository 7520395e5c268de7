//! The election: one lease at a time, campaign, lead while the lease is renewed (and
//! stop trusting it at 0.9 of its TTL), step down; and who leads, as etcd says.

use super::*;

/// Why a leader stopped leading.
enum Deposed {
    LeaseLost,
    Stopping,
    Transfer,
}

/// The election loop: one lease at a time; campaign, lead until the lease is lost, the
/// queen stops or a transfer asks to resign; then again. Errors back off and retry.
pub(crate) async fn elect(queen: Arc<Queen>, peer: Arc<Peer>, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    while !stop.is_cancelled() {
        match one_lease(&queen, &peer, &stop).await {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => {
                tracing::warn!(error = %e, "etcd election interrupted; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

async fn one_lease(queen: &Arc<Queen>, peer: &Arc<Peer>, stop: &CancellationToken) -> Result<(), etcd_client::Error> {
    let lease = peer.grant_lease().await?;
    let abandoned = std::mem::take(&mut *peer.abandoned.lock().unwrap_or_else(|p| p.into_inner()));
    for old in abandoned {
        // "Lease not found" is fine: it ran out meanwhile.
        let _ = peer.revoke(old).await;
    }
    let lost = CancellationToken::new();
    let renewals =
        tokio::spawn(keep_alive(Arc::clone(peer), peer.client.clone(), lease, peer.settings.lease_ttl, lost.clone()));
    let _abort = AbortOnDrop(renewals);
    // Every way out of leadership in there steps down first; what is left here is the lease.
    let result = lead_while_leased(queen, peer, stop, &lost, lease).await;
    // Revoking removes this queen's candidacy and membership at once, so the next leader
    // is chosen now rather than when the lease runs out. Also after a lost lease: etcd may
    // have been away and kept it (a restarted etcd renews every lease it had), and the
    // old candidacy would hold the election up for a whole TTL.
    if !matches!(tokio::time::timeout(Duration::from_secs(1), peer.revoke(lease)).await, Ok(Ok(()))) {
        peer.abandoned.lock().unwrap_or_else(|p| p.into_inner()).push(lease);
    }
    result
}

impl Peer {
    /// A new lease of the configured TTL, with this queen registered under it.
    pub async fn grant_lease(&self) -> Result<i64, etcd_client::Error> {
        let mut c = self.client.clone();
        let lease = c.lease_grant(self.settings.lease_ttl.as_secs() as i64, None).await?.id();
        let member_key = format!("{}{}", self.keys.members, self.me.id);
        c.put(member_key, self.me_json(), Some(PutOptions::new().with_lease(lease))).await?;
        Ok(lease)
    }

    /// Ends `lease` now: this queen's candidacy, leadership and membership go with it.
    pub async fn revoke(&self, lease: i64) -> Result<(), etcd_client::Error> {
        self.client.clone().lease_revoke(lease).await.map(|_| ())
    }

    /// Waits until this queen is elected under `lease`; does not yet act on it.
    pub async fn campaign(&self, lease: i64) -> Result<Option<LeaderKey>, etcd_client::Error> {
        let mut campaigner = self.campaigner.clone();
        Ok(campaigner.campaign(self.keys.election.as_str(), self.me_json(), lease).await?.leader().cloned())
    }

    /// Acts as the leader of `key`'s term from now, until the lease is seen to lapse.
    pub fn take_lead(&self, key: &LeaderKey) {
        {
            let mut lead = self.lead();
            lead.key = key.key().to_vec();
            lead.term = key.rev();
            // The keep-alive loop moves this forward; until its first renewal, count from
            // now (the lease was granted or renewed before the campaign returned).
            lead.valid_until = Some(Instant::now() + self.settings.lease_ttl * 2 / 3);
        }
        self.role.send_replace(Role { leader: Some(self.me.clone()), term: key.rev() });
    }

    fn me_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.me).unwrap_or_default()
    }
}

async fn lead_while_leased(
    queen: &Arc<Queen>,
    peer: &Arc<Peer>,
    stop: &CancellationToken,
    lost: &CancellationToken,
    lease: i64,
) -> Result<(), etcd_client::Error> {
    let mut c = peer.client.clone();
    let mut campaigner = peer.campaigner.clone();
    loop {
        let won = tokio::select! {
            r = peer.campaign(lease) => r?,
            _ = lost.cancelled() => return Ok(()),
            _ = stop.cancelled() => return Ok(()),
        };
        let Some(key) = won else { continue };
        // A transfer names who should lead next; anyone else in line steps back.
        let target = c.get(peer.keys.transfer.as_str(), None).await?.kvs().first().map(|kv| kv.value().to_vec());
        if let Some(target) = target {
            let target = String::from_utf8_lossy(&target).into_owned();
            let alive = peer.members().await?.iter().any(|m| m.id == target);
            if target != peer.me.id && alive {
                tracing::info!(%target, "elected during a transfer to another queen; stepping back");
                campaigner.resign(Some(etcd_client::ResignOptions::new().with_leader(key))).await?;
                continue;
            }
            let done = Txn::new()
                .when([Compare::create_revision(key.key(), CompareOp::Equal, key.rev())])
                .and_then([TxnOp::delete(peer.keys.transfer.as_str(), None)]);
            c.txn(done).await?;
        }
        peer.take_lead(&key);
        tracing::warn!(term = key.rev(), "this queen leads the cluster");
        if let Err(e) = queen.off_runtime(|q| q.on_elected()).await {
            tracing::error!(error = %e, "taking up leadership did not finish");
        }
        let why = tokio::select! {
            _ = lost.cancelled() => Deposed::LeaseLost,
            _ = stop.cancelled() => Deposed::Stopping,
            _ = peer.resign.notified() => Deposed::Transfer,
        };
        peer.step_down();
        if let Err(e) = queen.off_runtime(|q| q.on_deposed()).await {
            tracing::error!(error = %e, "stepping down did not finish");
        }
        match why {
            Deposed::LeaseLost => {
                tracing::error!(term = key.rev(), "leadership lease lost; no longer leading");
                return Ok(());
            }
            Deposed::Stopping => {
                tracing::info!(term = key.rev(), "resigning leadership on the way out");
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    campaigner.resign(Some(etcd_client::ResignOptions::new().with_leader(key))),
                )
                .await;
                return Ok(());
            }
            Deposed::Transfer => {
                tracing::info!(term = key.rev(), "resigning leadership for a transfer");
                campaigner.resign(Some(etcd_client::ResignOptions::new().with_leader(key))).await?;
            }
        }
    }
}

impl Peer {
    fn step_down(&self) {
        let was = std::mem::take(&mut *self.lead());
        if was.valid_until.is_some() {
            self.role.send_modify(|r| {
                if r.leader.as_ref().is_some_and(|l| l.id == self.me.id) {
                    *r = Role::default();
                }
            });
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Renews the lease every third of its TTL and moves this queen's deadline to act as
/// leader accordingly; fires `lost` the moment a renewal fails or the lease is gone.
async fn keep_alive(peer: Arc<Peer>, mut c: Client, lease: i64, ttl: Duration, lost: CancellationToken) {
    let renewed = async {
        let (mut keeper, mut answers) = c.lease_keep_alive(lease).await?;
        let mut tick = crate::interval(ttl / 3);
        loop {
            tick.tick().await;
            let sent = Instant::now();
            keeper.keep_alive().await?;
            let answer = tokio::time::timeout(ttl / 3, answers.message()).await;
            let Ok(Ok(Some(answer))) = answer else {
                return Ok::<_, etcd_client::Error>("no renewal answered in time");
            };
            if answer.ttl() <= 0 {
                return Ok("the lease expired");
            }
            let mut lead = peer.lead();
            if lead.valid_until.is_some() {
                // Counted from when the renewal was sent: the lease runs at least that long.
                lead.valid_until = Some(sent + Duration::from_secs(answer.ttl() as u64) * 9 / 10);
            }
        }
    };
    let why = match renewed.await {
        Ok(why) => why.to_string(),
        Err(e) => e.to_string(),
    };
    tracing::warn!(lease, why = %why, "leadership lease not renewed");
    // Stop acting before anything else can run.
    peer.lead().valid_until = None;
    lost.cancel();
}

/// Keeps `role` current: who leads and in which term, as etcd says.
pub(crate) async fn observe(peer: Arc<Peer>, stop: CancellationToken) {
    let mut tick = crate::interval(OBSERVE_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut c = peer.client.clone();
        let role = match c.leader(peer.keys.election.as_str()).await {
            Ok(resp) => match resp.kv() {
                Some(kv) => Role { leader: serde_json::from_slice(kv.value()).ok(), term: kv.create_revision() },
                None => Role::default(),
            },
            // "no leader" is an error in etcd's election API.
            Err(e) if e.to_string().contains("no leader") => Role::default(),
            Err(e) => {
                tracing::debug!(error = %e, "cannot ask etcd who leads");
                continue;
            }
        };
        // Our own leadership is known first-hand; what etcd says about it may lag.
        if peer.is_leader() {
            continue;
        }
        let role = match role.leader.as_ref() {
            Some(l) if l.id == peer.me.id => Role::default(),
            _ => role,
        };
        peer.role.send_if_modified(|r| {
            let changed = *r != role;
            *r = role;
            changed
        });
    }
}
