//! This queen as one of several peers on etcd (what DESIGN calls queen replicas; the code
//! says peer, and "replica" is a deployment's): the shared store (`store`), the election
//! (`election`), what a follower does (`follower`), a planned handover (`transfer`).
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
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity, LeaderKey, PutOptions,
    SortOrder, SortTarget, TlsOptions, Txn, TxnOp, WatchOptions,
};
use futures_util::StreamExt;
use lifecycle::http::ApiError;
use time::OffsetDateTime;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::Queen;
use crate::config::EtcdSettings;
use crate::store::{Batch, DeploymentRecord, JobRoute, Persisted, Store, StoreError};

mod election;
mod follower;
mod store;
mod transfer;

pub(crate) use transfer::transfer;

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
    /// The audit log, one key per entry, zero-padded so key order is entry order.
    audit: String,
    election: String,
    members: String,
    transfer: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        Self {
            state: format!("{prefix}/state/"),
            jobs: format!("{prefix}/jobs/"),
            audit: format!("{prefix}/audit/"),
            election: format!("{prefix}/election"),
            members: format!("{prefix}/queens/"),
            transfer: format!("{prefix}/transfer"),
        }
    }
}

/// The etcd side of one queen: store, election and observed leader.
pub struct Peer {
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

impl Peer {
    /// Connects to etcd (its own runtime does the I/O) and checks that it answers.
    pub async fn connect(settings: EtcdSettings, me: QueenRef) -> anyhow::Result<Arc<Self>> {
        // Wrapped at once: a connect that fails drops it inside the caller's runtime.
        let runtime = EtcdRuntime(Some(
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).thread_name("etcd").enable_all().build()?,
        ));
        let rt = runtime.0.as_ref().ok_or_else(|| anyhow::anyhow!("etcd runtime"))?;
        let endpoints = settings.endpoints.clone();
        let (tls, auth) = (settings.tls.clone(), settings.auth.clone());
        let connect = |timeout: Option<Duration>| {
            let (endpoints, tls, auth) = (endpoints.clone(), tls.clone(), auth.clone());
            async move {
                // HTTP/2 pings find a dead connection under a long campaign; etcd closes
                // connections that ping more often than every 5 s (`too_many_pings`).
                let mut options = ConnectOptions::new()
                    .with_connect_timeout(Duration::from_secs(2))
                    .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
                if let Some(t) = timeout {
                    options = options.with_timeout(t);
                }
                // etcd holds the commands every hive runs: who can write it can run anything.
                if let Some(tls) = tls {
                    let mut config = TlsOptions::new().ca_certificate(Certificate::from_pem(&tls.ca));
                    if let Some((cert, key)) = &tls.identity {
                        config = config.identity(Identity::from_pem(cert, key));
                    }
                    options = options.with_tls(config);
                }
                if let Some((user, password)) = auth {
                    options = options.with_user(user, password.expose());
                }
                Client::connect(endpoints, Some(options)).await
            }
        };
        let client = rt.spawn(connect(Some(CALL_TIMEOUT))).await??;
        let campaigner = rt.spawn(connect(None)).await??;
        let peer = Arc::new(Self {
            keys: Keys::new(&settings.prefix),
            settings,
            me,
            client,
            campaigner,
            lead: Mutex::new(Leadership::default()),
            role: watch::channel(Role::default()).0,
            resign: Notify::new(),
            abandoned: Mutex::new(Vec::new()),
            runtime,
        });
        peer.ping().map_err(|e| anyhow::anyhow!("etcd at {}: {e}", peer.settings.endpoints.join(",")))?;
        Ok(peer)
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

/// Connects to etcd, builds the queen on the shared store, and starts the election and
/// the follower's tasks.
pub(crate) async fn start(
    config: crate::QueenConfig,
    settings: EtcdSettings,
    me: QueenRef,
    stop: &CancellationToken,
    tasks: &tokio_util::task::TaskTracker,
) -> anyhow::Result<Arc<Queen>> {
    let peer = Peer::connect(settings, me.clone()).await?;
    let store: Box<dyn Store> = Box::new(Arc::clone(&peer));
    let queen = Queen::new(config, me, stop.clone(), tasks.clone(), Some(store))?;
    let _ = queen.peer.set(Arc::clone(&peer));
    tracing::info!(endpoints = %peer.settings.endpoints.join(","), prefix = %peer.settings.prefix, ttl_s = peer.settings.lease_ttl.as_secs(), "queen peer on etcd");
    tasks.spawn(election::elect(Arc::clone(&queen), Arc::clone(&peer), stop.child_token()));
    tasks.spawn(election::observe(Arc::clone(&peer), stop.child_token()));
    tasks.spawn(follower::follow_state(Arc::clone(&queen), Arc::clone(&peer), stop.child_token()));
    tasks.spawn(follower::relay_snapshots(Arc::clone(&queen), peer, stop.child_token()));
    Ok(queen)
}
