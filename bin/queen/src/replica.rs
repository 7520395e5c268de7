//! Queen replicas on etcd: the shared store, the election, and what a follower does.
//!
//! Every queen campaigns for one election key with a lease it keeps alive. The winner
//! leads: it places work, routes jobs, sequences shutdowns and takes the heartbeats. Each
//! of its writes is one etcd transaction guarded by `create_revision(leader key) ==
//! term`, so once its lease is gone (a crash, a pause, a partition) nothing it sends can
//! change the shared state, whatever it still believes. It also stops acting the moment
//! its own clock says the lease may have run out, before etcd tells it.
//!
//! Followers watch the stored state, relay the leader's snapshot stream to their own
//! clients, and send writers to the leader (see `api::leader_only`).
//!
//! Heartbeats never go to etcd (every write stays in its history until compaction): they
//! live in the leader's memory, and a new leader rebuilds them within one interval, under
//! a fresh startup grace so nobody is taken for dead meanwhile.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use contract::{NodeId, QueenRef, TransferAnswer};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, LeaderKey, PutOptions, Txn, TxnOp, WatchOptions,
};
use futures_util::StreamExt;
use lifecycle::http::ApiError;
use time::OffsetDateTime;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::Queen;
use crate::config::EtcdSettings;
use crate::store::{Batch, DeploymentRecord, JobRoute, Persisted, Store, StoreError};

/// Every call to etcd but the campaign (which waits for as long as another queen leads).
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// How often a queen asks etcd who leads; bounds how stale `GET /v1/cluster/leader` is.
const OBSERVE_EVERY: Duration = Duration::from_millis(200);
/// etcd refuses a transaction with more operations than `--max-txn-ops` (128 by default).
const OPS_PER_TXN: usize = 100;

/// Who leads, as this queen knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Role {
    pub leader: Option<QueenRef>,
    /// The leader key's create revision: the fencing token, and `term` in the API.
    pub term: i64,
}

/// This queen's own leadership: the key that proves it and until when it may act.
#[derive(Default)]
struct Leadership {
    key: Vec<u8>,
    term: i64,
    /// The lease, as of its last renewal, may have expired after this.
    valid_until: Option<Instant>,
}

impl Leadership {
    fn active(&self) -> bool {
        self.valid_until.is_some_and(|t| Instant::now() < t)
    }
}

/// A tokio runtime of its own for etcd's connections. The `Store` trait is synchronous
/// and called from the queen's runtime (which may have a single thread): the calls are
/// handed to this runtime and waited for, so they never need the caller's.
struct EtcdRuntime(Option<tokio::runtime::Runtime>);

impl Drop for EtcdRuntime {
    fn drop(&mut self) {
        // Dropping a runtime may happen inside another one; this variant does not block.
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

struct Keys {
    state: String,
    /// Job routes live beside the state, not in it: followers reload on every change
    /// under `state/`, and a route is written per keyed job.
    jobs: String,
    election: String,
    members: String,
    transfer: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        Self {
            state: format!("{prefix}/state/"),
            jobs: format!("{prefix}/jobs/"),
            election: format!("{prefix}/election"),
            members: format!("{prefix}/queens/"),
            transfer: format!("{prefix}/transfer"),
        }
    }
}

/// The etcd side of one queen: store, election and observed leader.
pub struct Replica {
    settings: EtcdSettings,
    keys: Keys,
    me: QueenRef,
    /// Calls with a deadline.
    client: Client,
    /// The same connection without a deadline, for the campaign.
    campaigner: Client,
    lead: Mutex<Leadership>,
    role: watch::Sender<Role>,
    /// Asks the leader to give up leadership now (a transfer).
    resign: Notify,
    /// Leases this queen gave up while etcd could not be told: revoked once it answers
    /// again, so their candidacies do not hold the next election up for a TTL.
    abandoned: Mutex<Vec<i64>>,
    runtime: EtcdRuntime,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("etcd: {e}"))
}

impl Replica {
    /// Connects to etcd (its own runtime does the I/O) and checks that it answers.
    pub async fn connect(settings: EtcdSettings, me: QueenRef) -> anyhow::Result<Arc<Self>> {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).thread_name("etcd").enable_all().build()?;
        let endpoints = settings.endpoints.clone();
        let connect = |timeout: Option<Duration>| {
            let endpoints = endpoints.clone();
            async move {
                // HTTP/2 pings find a dead connection under a long campaign; etcd closes
                // connections that ping more often than every 5 s (`too_many_pings`).
                let mut options = ConnectOptions::new()
                    .with_connect_timeout(Duration::from_secs(2))
                    .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
                if let Some(t) = timeout {
                    options = options.with_timeout(t);
                }
                Client::connect(endpoints, Some(options)).await
            }
        };
        let client = runtime.spawn(connect(Some(CALL_TIMEOUT))).await??;
        let campaigner = runtime.spawn(connect(None)).await??;
        let replica = Arc::new(Self {
            keys: Keys::new(&settings.prefix),
            settings,
            me,
            client,
            campaigner,
            lead: Mutex::new(Leadership::default()),
            role: watch::channel(Role::default()).0,
            resign: Notify::new(),
            abandoned: Mutex::new(Vec::new()),
            runtime: EtcdRuntime(Some(runtime)),
        });
        replica.ping().map_err(|e| anyhow::anyhow!("etcd at {}: {e}", replica.settings.endpoints.join(",")))?;
        Ok(replica)
    }

    fn lead(&self) -> std::sync::MutexGuard<'_, Leadership> {
        self.lead.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this queen leads right now: elected, and its lease cannot have expired.
    pub fn is_leader(&self) -> bool {
        self.lead().active()
    }

    pub fn role(&self) -> Role {
        self.role.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Role> {
        self.role.subscribe()
    }

    /// Runs `fut` on the etcd runtime and waits for it from any thread.
    fn call<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let Some(rt) = &self.runtime.0 else { return Err(backend("stopped")) };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv_timeout(CALL_TIMEOUT + Duration::from_secs(1)).map_err(|_| backend("no answer in time"))?
    }

    /// The queens registered now (each under its own lease), by id.
    pub async fn members(&self) -> Result<Vec<QueenRef>, etcd_client::Error> {
        let mut c = self.client.clone();
        let resp = c.get(self.keys.members.as_str(), Some(GetOptions::new().with_prefix())).await?;
        Ok(resp.kvs().iter().filter_map(|kv| serde_json::from_slice(kv.value()).ok()).collect())
    }

    /// Names the queen that should lead next, under this leader's fence.
    pub async fn set_transfer_target(&self, to: &str) -> Result<(), StoreError> {
        let (key, term) = self.fence()?;
        let mut c = self.client.clone();
        let txn = Txn::new().when([Compare::create_revision(key, CompareOp::Equal, term)]).and_then([TxnOp::put(
            self.keys.transfer.as_str(),
            to,
            None,
        )]);
        match c.txn(txn).await {
            Ok(r) if r.succeeded() => Ok(()),
            Ok(_) => Err(StoreError::NotLeader("fenced: another queen leads now".into())),
            Err(e) => Err(backend(e)),
        }
    }

    fn fence(&self) -> Result<(Vec<u8>, i64), StoreError> {
        let lead = self.lead();
        if !lead.active() {
            return Err(StoreError::NotLeader("this queen does not lead".into()));
        }
        Ok((lead.key.clone(), lead.term))
    }

    fn state_key(&self, table: &str, name: &str) -> String {
        format!("{}{table}/{name}", self.keys.state)
    }
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(value).map_err(|e| StoreError::Corrupt(format!("{key}: {e}")))
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl Store for Replica {
    fn load(&self) -> Result<Persisted, StoreError> {
        let mut c = self.client.clone();
        let prefix = self.keys.state.clone();
        let kvs = self.call(async move {
            let mut resp = c.get(prefix, Some(GetOptions::new().with_prefix())).await.map_err(backend)?;
            Ok(resp.take_kvs())
        })?;
        let mut out = Persisted::default();
        for kv in kvs {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let Some(rest) = key.strip_prefix(&self.keys.state) else { continue };
            let value = kv.value();
            match rest.split_once('/') {
                Some(("deployments", name)) => {
                    let id = NodeId::new(name).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    out.deployments.insert(id, decode::<DeploymentRecord>(&key, value)?);
                }
                Some(("assignments", name)) => {
                    let id = NodeId::new(name).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    out.assignments.insert(id, decode(&key, value)?);
                }
                Some(("meta", "strategy")) => out.strategy = Some(decode(&key, value)?),
                Some(("meta", "shutdown")) => out.shutdown = Some(decode(&key, value)?),
                Some(("meta", "ineligible")) => out.ineligible = decode(&key, value)?,
                Some(("meta", "drains")) => out.drains = decode(&key, value)?,
                _ => tracing::warn!(%key, "unknown key under the state prefix; ignored"),
            }
        }
        Ok(out)
    }

    /// Fenced (see [`Replica::fenced`]).
    fn apply(&self, batch: &Batch) -> Result<(), StoreError> {
        let mut ops = Vec::new();
        for d in &batch.put_deployments {
            ops.push(TxnOp::put(self.state_key("deployments", d.spec.name.as_str()), encode(d)?, None));
        }
        for name in &batch.delete_deployments {
            ops.push(TxnOp::delete(self.state_key("deployments", name.as_str()), None));
        }
        for a in &batch.put_assignments {
            ops.push(TxnOp::put(self.state_key("assignments", a.key().as_str()), encode(a)?, None));
        }
        for w in &batch.delete_assignments {
            ops.push(TxnOp::delete(self.state_key("assignments", w.as_str()), None));
        }
        if let Some(s) = batch.strategy {
            ops.push(TxnOp::put(self.state_key("meta", "strategy"), encode(&s)?, None));
        }
        if let Some(s) = &batch.shutdown {
            ops.push(TxnOp::put(self.state_key("meta", "shutdown"), encode(s)?, None));
        }
        if let Some(set) = &batch.ineligible {
            ops.push(TxnOp::put(self.state_key("meta", "ineligible"), encode(set)?, None));
        }
        if let Some(drains) = &batch.drains {
            ops.push(TxnOp::put(self.state_key("meta", "drains"), encode(drains)?, None));
        }
        self.fenced(ops)
    }

    fn ping(&self) -> Result<(), StoreError> {
        let mut c = self.client.clone();
        let key = self.keys.election.clone();
        self.call(
            async move { c.get(key, Some(GetOptions::new().with_count_only())).await.map(|_| ()).map_err(backend) },
        )
    }

    fn job_route(&self, key: &str) -> Result<Option<JobRoute>, StoreError> {
        let mut c = self.client.clone();
        let full = format!("{}{key}", self.keys.jobs);
        let kvs = self.call(async move { Ok(c.get(full, None).await.map_err(backend)?.take_kvs()) })?;
        kvs.first().map(|kv| decode(&format!("job {key}"), kv.value())).transpose()
    }

    fn put_job_route(&self, key: &str, route: &JobRoute) -> Result<(), StoreError> {
        self.fenced(vec![TxnOp::put(format!("{}{key}", self.keys.jobs), encode(route)?, None)])
    }

    fn forget_job_routes(&self, before: OffsetDateTime) -> Result<usize, StoreError> {
        let mut c = self.client.clone();
        let prefix = self.keys.jobs.clone();
        let kvs = self.call(async move {
            Ok(c.get(prefix, Some(GetOptions::new().with_prefix())).await.map_err(backend)?.take_kvs())
        })?;
        // A record that does not decode is dropped too: it could only stop a retry.
        let ops: Vec<TxnOp> = kvs
            .iter()
            .filter(|kv| serde_json::from_slice::<JobRoute>(kv.value()).map_or(true, |r| r.at < before))
            .map(|kv| TxnOp::delete(kv.key().to_vec(), None))
            .collect();
        let removed = ops.len();
        self.fenced(ops)?;
        Ok(removed)
    }
}

impl Replica {
    /// Applied only while this queen's leader key is still the one it won. More writes
    /// than one etcd transaction allows go in several, each fenced; they are the desired
    /// state, so a leader that dies between two leaves a state the next reconcile completes.
    fn fenced(&self, mut ops: Vec<TxnOp>) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        let (key, term) = self.fence()?;
        let mut chunks = Vec::new();
        while !ops.is_empty() {
            let rest = ops.split_off(ops.len().min(OPS_PER_TXN));
            chunks.push(std::mem::replace(&mut ops, rest));
        }
        let mut c = self.client.clone();
        self.call(async move {
            for chunk in chunks {
                let txn =
                    Txn::new().when([Compare::create_revision(key.clone(), CompareOp::Equal, term)]).and_then(chunk);
                if !c.txn(txn).await.map_err(backend)?.succeeded() {
                    return Err(StoreError::NotLeader(format!("fenced: term {term} is over, another queen leads")));
                }
            }
            Ok(())
        })
    }
}

/// Why a leader stopped leading.
enum Deposed {
    LeaseLost,
    Stopping,
    Transfer,
}

/// The election loop: one lease at a time; campaign, lead until the lease is lost, the
/// queen stops or a transfer asks to resign; then again. Errors back off and retry.
pub(crate) async fn elect(queen: Arc<Queen>, replica: Arc<Replica>, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    while !stop.is_cancelled() {
        match one_lease(&queen, &replica, &stop).await {
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

async fn one_lease(
    queen: &Arc<Queen>,
    replica: &Arc<Replica>,
    stop: &CancellationToken,
) -> Result<(), etcd_client::Error> {
    let lease = replica.grant_lease().await?;
    let abandoned = std::mem::take(&mut *replica.abandoned.lock().unwrap_or_else(|p| p.into_inner()));
    for old in abandoned {
        // "Lease not found" is fine: it ran out meanwhile.
        let _ = replica.revoke(old).await;
    }
    let lost = CancellationToken::new();
    let renewals = tokio::spawn(keep_alive(
        Arc::clone(replica),
        replica.client.clone(),
        lease,
        replica.settings.lease_ttl,
        lost.clone(),
    ));
    let _abort = AbortOnDrop(renewals);
    // Every way out of leadership in there steps down first; what is left here is the lease.
    let result = lead_while_leased(queen, replica, stop, &lost, lease).await;
    // Revoking removes this queen's candidacy and membership at once, so the next leader
    // is chosen now rather than when the lease runs out. Also after a lost lease: etcd may
    // have been away and kept it (a restarted etcd renews every lease it had), and the
    // old candidacy would hold the election up for a whole TTL.
    if !matches!(tokio::time::timeout(Duration::from_secs(1), replica.revoke(lease)).await, Ok(Ok(()))) {
        replica.abandoned.lock().unwrap_or_else(|p| p.into_inner()).push(lease);
    }
    result
}

impl Replica {
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
    replica: &Arc<Replica>,
    stop: &CancellationToken,
    lost: &CancellationToken,
    lease: i64,
) -> Result<(), etcd_client::Error> {
    let mut c = replica.client.clone();
    let mut campaigner = replica.campaigner.clone();
    loop {
        let won = tokio::select! {
            r = replica.campaign(lease) => r?,
            _ = lost.cancelled() => return Ok(()),
            _ = stop.cancelled() => return Ok(()),
        };
        let Some(key) = won else { continue };
        // A transfer names who should lead next; anyone else in line steps back.
        let target = c.get(replica.keys.transfer.as_str(), None).await?.kvs().first().map(|kv| kv.value().to_vec());
        if let Some(target) = target {
            let target = String::from_utf8_lossy(&target).into_owned();
            let alive = replica.members().await?.iter().any(|m| m.id == target);
            if target != replica.me.id && alive {
                tracing::info!(%target, "elected during a transfer to another queen; stepping back");
                campaigner.resign(Some(etcd_client::ResignOptions::new().with_leader(key))).await?;
                continue;
            }
            let done = Txn::new()
                .when([Compare::create_revision(key.key(), CompareOp::Equal, key.rev())])
                .and_then([TxnOp::delete(replica.keys.transfer.as_str(), None)]);
            c.txn(done).await?;
        }
        replica.take_lead(&key);
        tracing::warn!(term = key.rev(), "this queen leads the cluster");
        queen.on_elected();
        let why = tokio::select! {
            _ = lost.cancelled() => Deposed::LeaseLost,
            _ = stop.cancelled() => Deposed::Stopping,
            _ = replica.resign.notified() => Deposed::Transfer,
        };
        replica.step_down();
        queen.on_deposed();
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

impl Replica {
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
async fn keep_alive(replica: Arc<Replica>, mut c: Client, lease: i64, ttl: Duration, lost: CancellationToken) {
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
            let mut lead = replica.lead();
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
    replica.lead().valid_until = None;
    lost.cancel();
}

/// Keeps `role` current: who leads and in which term, as etcd says.
pub(crate) async fn observe(replica: Arc<Replica>, stop: CancellationToken) {
    let mut tick = crate::interval(OBSERVE_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut c = replica.client.clone();
        let role = match c.leader(replica.keys.election.as_str()).await {
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
        if replica.is_leader() {
            continue;
        }
        let role = match role.leader.as_ref() {
            Some(l) if l.id == replica.me.id => Role::default(),
            _ => role,
        };
        replica.role.send_if_modified(|r| {
            let changed = *r != role;
            *r = role;
            changed
        });
    }
}

/// A follower's view of the stored state: reloaded whenever it changes in etcd.
pub(crate) async fn follow_state(queen: Arc<Queen>, replica: Arc<Replica>, stop: CancellationToken) {
    loop {
        let mut c = replica.client.clone();
        let watched = async {
            let mut stream = c.watch(replica.keys.state.as_str(), Some(WatchOptions::new().with_prefix())).await?;
            // Whatever changed before the watch started.
            queen.follow_stored_state();
            while let Some(resp) = stream.message().await? {
                if resp.canceled() {
                    break;
                }
                let relevant =
                    resp.events().iter().any(|e| matches!(e.event_type(), EventType::Put | EventType::Delete));
                if relevant {
                    // Changes come in bursts (one reconcile, many keys): let it settle.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    queen.follow_stored_state();
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
pub(crate) async fn relay_snapshots(queen: Arc<Queen>, replica: Arc<Replica>, stop: CancellationToken) {
    let mut role = replica.subscribe();
    loop {
        let leader = role.borrow_and_update().leader.clone();
        let relaying = async {
            let Some(leader) = leader.filter(|l| l.id != replica.me.id) else {
                return std::future::pending::<()>().await;
            };
            let config = queen.config();
            let token = [&config.tokens.read, &config.tokens.admin, &config.tokens.cluster]
                .into_iter()
                .flatten()
                .next()
                .map(|s| s.expose().to_string());
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
                            if replica.is_leader() {
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

/// `POST /v1/cluster/leader/transfer` on the leader: names the next leader in etcd
/// (fenced), then resigns; the queens in line before it step back when elected.
pub(crate) async fn transfer(queen: &Queen, replica: &Replica, to: Option<String>) -> Result<TransferAnswer, ApiError> {
    let unavailable = |e: String| ApiError::unavailable("store_unavailable", e, Duration::from_secs(1));
    let members = replica.members().await.map_err(|e| unavailable(e.to_string()))?;
    let others: Vec<QueenRef> = members.into_iter().filter(|m| m.id != replica.me.id).collect();
    let target = match to {
        Some(id) if id == replica.me.id => {
            return Err(ApiError::new(StatusCode::CONFLICT, "already_leader", format!("{id} leads already")));
        }
        Some(id) => others.into_iter().find(|m| m.id == id).ok_or_else(|| {
            ApiError::new(StatusCode::NOT_FOUND, "unknown_queen", format!("no queen {id} is registered in etcd"))
        })?,
        None => healthiest(queen, others).await.ok_or_else(|| {
            ApiError::unavailable("no_follower", "no other queen is registered and ready", Duration::from_secs(1))
        })?,
    };
    replica.set_transfer_target(&target.id).await.map_err(|e| unavailable(e.to_string()))?;
    tracing::warn!(to = %target.id, "transferring leadership");
    replica.resign.notify_one();
    Ok(TransferAnswer { from: replica.me.clone(), to: target })
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

/// Connects to etcd, builds the queen on the shared store, and starts the election and
/// the follower's tasks.
pub(crate) async fn start(
    config: crate::QueenConfig,
    settings: EtcdSettings,
    me: QueenRef,
    stop: &CancellationToken,
    tasks: &tokio_util::task::TaskTracker,
) -> anyhow::Result<Arc<Queen>> {
    let replica = Replica::connect(settings, me.clone()).await?;
    let store: Box<dyn Store> = Box::new(Arc::clone(&replica));
    let queen = Queen::new(config, me, stop.clone(), tasks.clone(), Some(store))?;
    let _ = queen.replica.set(Arc::clone(&replica));
    tracing::info!(endpoints = %replica.settings.endpoints.join(","), prefix = %replica.settings.prefix, ttl_s = replica.settings.lease_ttl.as_secs(), "queen replica on etcd");
    tasks.spawn(elect(Arc::clone(&queen), Arc::clone(&replica), stop.child_token()));
    tasks.spawn(observe(Arc::clone(&replica), stop.child_token()));
    tasks.spawn(follow_state(Arc::clone(&queen), Arc::clone(&replica), stop.child_token()));
    tasks.spawn(relay_snapshots(Arc::clone(&queen), replica, stop.child_token()));
    Ok(queen)
}
