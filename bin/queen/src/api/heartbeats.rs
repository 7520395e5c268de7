//! Heartbeats in, and the node reads: one generic handler per operation over
//! [`NodePayload`], implemented for both kinds of heartbeat.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, FromRequest, Request, State};
use axum::http::StatusCode;
use contract::{
    ApiErrorBody, ContractError, HeartbeatResponse, HiveHeartbeat, HiveSummary, NodeEvent, NodeId, NodeKind,
    WorkerHeartbeat, WorkerSummary,
};
use heartbeat_registry::{HeartbeatPayload, HeartbeatRegistry, NodeRef, UpsertOutcome};
use lifecycle::http::{ApiError, JsonBody, PathParam};

use super::parse_id;
use crate::admission;
use crate::auth::{Caller, NodeIdentity};
use crate::metrics::HeartbeatLabels;
use crate::{Queen, summary};

/// What the queen needs to take in one kind of heartbeat; implemented for the two kinds
/// so that ingest, lookup and summaries are written once.
pub trait NodePayload: HeartbeatPayload<Id = NodeId> + serde::de::DeserializeOwned {
    const KIND: NodeKind;
    type Summary: serde::Serialize + Send;
    fn validate(&self) -> Result<(), ContractError>;
    fn registry(queen: &Queen) -> &HeartbeatRegistry<Self>;
    fn summary(queen: &Queen, node: NodeRef<'_, Self>) -> Self::Summary;
    /// Whether a node token with this identity may send this heartbeat.
    fn claimed_by(&self, identity: &NodeIdentity) -> bool;
    /// What it claims, held against what the queen knows and where it came from
    /// (`crate::admission`); `Err` says why not.
    fn admit(&self, queen: &Queen, from: admission::Origin) -> Result<(), String>;
    /// Side effects of taking it in, beyond the registry.
    fn taken(&self, _queen: &Queen, _peer: Option<IpAddr>) {}
}

impl NodePayload for HiveHeartbeat {
    const KIND: NodeKind = NodeKind::Hive;
    type Summary = HiveSummary;
    fn validate(&self) -> Result<(), ContractError> {
        HiveHeartbeat::validate(self)
    }
    fn registry(queen: &Queen) -> &HeartbeatRegistry<Self> {
        &queen.ingest.hives
    }
    fn claimed_by(&self, identity: &NodeIdentity) -> bool {
        matches!(identity, NodeIdentity::Hive(h) if *h == self.id)
    }
    fn summary(queen: &Queen, node: NodeRef<'_, Self>) -> HiveSummary {
        let mut h = summary::hive(node);
        h.eligible = queen.orchestrator.eligible(&h.id, h.epoch.0);
        h
    }
    fn admit(&self, _queen: &Queen, from: admission::Origin) -> Result<(), String> {
        admission::check_hive(self, from)
    }
    fn taken(&self, queen: &Queen, peer: Option<IpAddr>) {
        if let Some(peer) = peer {
            queen.ingest.heard_hive_from(&self.id, peer);
        }
        start_failures(queen, self);
    }
}

impl NodePayload for WorkerHeartbeat {
    const KIND: NodeKind = NodeKind::Worker;
    type Summary = WorkerSummary;
    fn validate(&self) -> Result<(), ContractError> {
        WorkerHeartbeat::validate(self)
    }
    fn registry(queen: &Queen) -> &HeartbeatRegistry<Self> {
        &queen.ingest.workers
    }
    fn claimed_by(&self, identity: &NodeIdentity) -> bool {
        matches!(identity, NodeIdentity::Worker { hive, worker } if *worker == self.id && *hive == self.hive_id)
    }
    fn summary(_: &Queen, node: NodeRef<'_, Self>) -> WorkerSummary {
        summary::worker(node)
    }
    fn admit(&self, queen: &Queen, from: admission::Origin) -> Result<(), String> {
        let conflict = queen.ingest.workers.inspect(&self.id, |held| {
            held.liveness.is_up().then(|| admission::worker_conflict(held.payload, self)).flatten()
        });
        if let Some(conflict) = conflict.flatten() {
            return Err(conflict);
        }
        // Read in place: no copy of the hive's payload on every worker heartbeat.
        let check = |h: NodeRef<'_, HiveHeartbeat>| {
            let seen = admission::HiveSeen { address: &h.payload.address, hostname: &h.payload.hostname };
            admission::check_worker(self, from, Some(seen))
        };
        queen.ingest.hives.inspect(&self.hive_id, check).unwrap_or_else(|| admission::check_worker(self, from, None))
    }
}

/// An event for each replica this heartbeat newly says could not start (a missing binary,
/// one not executable), so that a deployment that cannot run is visible where operators
/// look, once per reason rather than once per beat.
fn start_failures(queen: &Queen, hb: &HiveHeartbeat) {
    let cannot = |w: &&contract::SupervisedWorker| {
        w.state != contract::ProcessState::Running && w.last_exit.starts_with("cannot start")
    };
    // The common heartbeat says nothing of the kind and costs no lookup.
    for w in hb.workers.iter().filter(cannot) {
        let said_before = queen
            .ingest
            .hives
            .inspect(&hb.id, |h| h.payload.workers.iter().any(|o| o.name == w.name && o.last_exit == w.last_exit))
            .unwrap_or(false);
        if !said_before {
            let reason = format!("hive {} {}", hb.id, w.last_exit);
            queen.orchestrator.event(&queen.ingest.workers, &w.name, contract::EventKind::StartFailed, reason);
        }
    }
}

fn count(queen: &Queen, kind: NodeKind, outcome: &'static str) {
    debug_assert!(crate::metrics::HEARTBEAT_OUTCOMES.contains(&outcome), "{outcome} starts at zero too");
    queen.metrics.heartbeats.get_or_create(&HeartbeatLabels { kind: kind.as_str(), outcome }).inc();
}

/// A hive's heartbeat: its readings, capacity, labels and the workers it supervises.
#[utoipa::path(post, path = "/v1/hive-heartbeat", tag = "heartbeats", request_body = HiveHeartbeat, responses(
    (status = 200, body = HeartbeatResponse, description = "taken in (or stale: `accepted` false, nothing changed)"),
    (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed"),
))]
pub(crate) async fn hive_heartbeat(
    State(queen): State<Arc<Queen>>,
    req: Request,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    timed_heartbeat::<HiveHeartbeat>(queen, req).await
}

/// A worker's heartbeat: its status and jobs in flight.
#[utoipa::path(post, path = "/v1/worker-heartbeat", tag = "heartbeats", request_body = WorkerHeartbeat, responses(
    (status = 200, body = HeartbeatResponse, description = "taken in (or stale: `accepted` false, nothing changed)"),
    (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed"),
))]
pub(crate) async fn worker_heartbeat(
    State(queen): State<Arc<Queen>>,
    req: Request,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    timed_heartbeat::<WorkerHeartbeat>(queen, req).await
}

/// Times a heartbeat from the end of its head (before the body is read) to its answer.
pub(crate) async fn timed_heartbeat<T: NodePayload>(
    queen: Arc<Queen>,
    req: Request,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    let started = std::time::Instant::now();
    let identity = req.extensions().get::<NodeIdentity>().cloned();
    let caller = req.extensions().get::<Caller>().map_or_else(|| "anonymous".to_string(), |c| c.who.clone());
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let local = req.extensions().get::<lifecycle::serve::LocalAddr>().map(|l| l.0);
    let body = JsonBody::<T>::from_request(req, &()).await;
    let from = admission::Origin::of(peer, local);
    let answer = heartbeat::<T>(&queen, body, Sender { identity: identity.as_ref(), caller: &caller, from });
    queen.metrics.ingest(T::KIND).observe(started.elapsed().as_secs_f64());
    answer
}

/// Who sent a heartbeat, as the transport and the auth layer know it.
struct Sender<'a> {
    identity: Option<&'a NodeIdentity>,
    /// The token's name, for the per-token limit on new ids.
    caller: &'a str,
    from: admission::Origin,
}

/// Checks what does not depend on the body's kind: an epoch from the future, a queen that
/// is full, a token introducing new ids too fast.
fn admit_any<T: NodePayload>(queen: &Queen, payload: &T, caller: &str) -> Result<(), (&'static str, ApiError)> {
    let now = contract::Epoch::for_new_process();
    if let Err(e) = contract::Epoch(payload.epoch()).check_not_ahead_of(now, admission::MAX_EPOCH_SKEW) {
        return Err(("epoch_ahead", ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "epoch_ahead", e.to_string())));
    }
    if T::registry(queen).contains(payload.id()) {
        return Ok(());
    }
    let config = queen.config();
    if queen.ingest.known() >= config.max_nodes {
        let message =
            format!("this queen holds {} nodes, its --max-nodes; {} is not taken in", config.max_nodes, payload.id());
        return Err((
            "cluster_full",
            ApiError::unavailable("cluster_full", message, std::time::Duration::from_secs(30)),
        ));
    }
    // After a restart every node is new, and all of them must be heard within the grace.
    if !queen.orchestrator.in_grace()
        && let Err(not_until) = queen.ingest.new_ids().check_key(&caller.to_string())
    {
        let wait = not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
        let message = format!("token {caller} introduces new node ids faster than --max-new-nodes-per-second");
        return Err(("new_ids_limited", ApiError::too_many("new_ids_limited", message, wait)));
    }
    Ok(())
}

/// A rejected heartbeat changes nothing.
fn heartbeat<T: NodePayload>(
    queen: &Queen,
    body: Result<JsonBody<T>, ApiError>,
    sender: Sender<'_>,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    let payload = match body
        .and_then(|JsonBody(p)| p.validate().map(|()| p).map_err(|e| ApiError::unprocessable(e.to_string())))
    {
        Ok(p) => p,
        Err(e) => {
            count(queen, T::KIND, "rejected");
            return Err(e);
        }
    };
    if let Some(identity) = sender.identity.filter(|i| !payload.claimed_by(i)) {
        count(queen, T::KIND, "token_mismatch");
        return Err(crate::auth::token_mismatch(identity));
    }
    if let Err(reason) = payload.admit(queen, sender.from) {
        count(queen, T::KIND, "refused_claim");
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "claim_refused", reason));
    }
    if let Err((outcome, e)) = admit_any(queen, &payload, sender.caller) {
        count(queen, T::KIND, outcome);
        return Err(e);
    }
    if let Err(not_until) = queen.ingest.limiter().check_key(&format!("{}/{}", T::KIND.as_str(), payload.id())) {
        count(queen, T::KIND, "rate_limited");
        let wait = not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
        return Err(ApiError::too_many("rate_limited", format!("{} sends heartbeats too fast", payload.id()), wait));
    }
    payload.taken(queen, sender.from.ip);
    let id = payload.id().clone();
    let outcome = T::registry(queen).upsert(payload);
    let accepted = outcome != UpsertOutcome::Stale;
    count(queen, T::KIND, if accepted { "accepted" } else { "stale" });
    let held_epoch =
        if accepted { None } else { T::registry(queen).inspect(&id, |v| contract::Epoch(v.payload.epoch())) };
    Ok(Json(HeartbeatResponse { next_interval_ms: queen.next_interval().as_millis() as u64, accepted, held_epoch }))
}

pub(super) fn unknown<T: NodePayload>(id: &NodeId) -> ApiError {
    ApiError::not_found(format!("no {} named {id}", T::KIND.as_str()))
}

/// Every hive the queen knows, with its liveness.
#[utoipa::path(get, path = "/v1/hives", tag = "nodes", responses((status = 200, body = Vec<HiveSummary>), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed")))]
pub(crate) async fn list_hives(State(queen): State<Arc<Queen>>) -> Json<Vec<HiveSummary>> {
    list::<HiveHeartbeat>(&queen)
}

/// Every worker the queen knows, with its liveness.
#[utoipa::path(get, path = "/v1/workers", tag = "nodes", responses((status = 200, body = Vec<WorkerSummary>), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed")))]
pub(crate) async fn list_workers(State(queen): State<Arc<Queen>>) -> Json<Vec<WorkerSummary>> {
    list::<WorkerHeartbeat>(&queen)
}

/// One hive.
#[utoipa::path(get, path = "/v1/hives/{id}", tag = "nodes", params(("id" = NodeId, Path, description = "hive id")), responses((status = 200, body = HiveSummary), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed")))]
pub(crate) async fn get_hive(
    State(queen): State<Arc<Queen>>,
    PathParam(raw): PathParam<String>,
) -> Result<Json<HiveSummary>, ApiError> {
    one::<HiveHeartbeat>(&queen, &raw)
}

/// One worker.
#[utoipa::path(get, path = "/v1/workers/{id}", tag = "nodes", params(("id" = NodeId, Path, description = "worker id")), responses((status = 200, body = WorkerSummary), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed")))]
pub(crate) async fn get_worker(
    State(queen): State<Arc<Queen>>,
    PathParam(raw): PathParam<String>,
) -> Result<Json<WorkerSummary>, ApiError> {
    one::<WorkerHeartbeat>(&queen, &raw)
}

/// A hive's liveness history with reasons: why it is in the state it is in.
#[utoipa::path(get, path = "/v1/hives/{id}/events", tag = "nodes", params(("id" = NodeId, Path, description = "hive id")), responses((status = 200, body = Vec<NodeEvent>), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed")))]
pub(crate) async fn hive_events(
    State(queen): State<Arc<Queen>>,
    PathParam(raw): PathParam<String>,
) -> Result<Json<Vec<NodeEvent>>, ApiError> {
    events::<HiveHeartbeat>(&queen, &raw)
}

/// A worker's liveness history with reasons.
#[utoipa::path(get, path = "/v1/workers/{id}/events", tag = "nodes", params(("id" = NodeId, Path, description = "worker id")), responses((status = 200, body = Vec<NodeEvent>), (status = "4XX", body = ApiErrorBody, description = "refused; nothing changed")))]
pub(crate) async fn worker_events(
    State(queen): State<Arc<Queen>>,
    PathParam(raw): PathParam<String>,
) -> Result<Json<Vec<NodeEvent>>, ApiError> {
    events::<WorkerHeartbeat>(&queen, &raw)
}

fn list<T: NodePayload>(queen: &Queen) -> Json<Vec<T::Summary>> {
    let views = T::registry(queen).list_all();
    Json(views.iter().map(|v| T::summary(queen, summary::as_ref(v))).collect())
}

fn one<T: NodePayload>(queen: &Queen, raw: &str) -> Result<Json<T::Summary>, ApiError> {
    let id = parse_id(raw)?;
    let view = T::registry(queen).get(&id).ok_or_else(|| unknown::<T>(&id))?;
    Ok(Json(T::summary(queen, summary::as_ref(&view))))
}

fn events<T: NodePayload>(queen: &Queen, raw: &str) -> Result<Json<Vec<NodeEvent>>, ApiError> {
    let id = parse_id(raw)?;
    let history = T::registry(queen).history(&id).ok_or_else(|| unknown::<T>(&id))?;
    Ok(Json(history.iter().map(|e| summary::node_event(T::KIND, e)).collect()))
}

#[cfg(test)]
mod tests;
