//! The queen: the hub of an Apiary cluster, as a library (the `queen` binary is
//! `queen-cli`'s).
//!
//! It takes heartbeats from hives and workers into one generic registry per kind,
//! re-derives their liveness continuously, builds one cluster snapshot per tick and
//! streams it to every dashboard over SSE, places deployments on hives, routes jobs, and
//! sequences a cluster shutdown.
//!
//! Entry point: [`run`] with an already-bound listener, so tests drive the exact
//! production code on port 0.
//!
//! # Layout
//!
//! [`Queen`] (`queen.rs`) composes subsystems that own their state and lock:
//! - `ingest`: the two registries and the heartbeat rate limit;
//! - `snapshot`: the published frames (`Snapshots`), how a snapshot is built, the stream;
//! - `orchestrator`: deployments, assignments, drains (`orchestrator::drains`), the control
//!   channels and ACKs (`orchestrator::channels`); it applies what `plan` decides;
//! - `plan`: the reconcile planner, a pure function of desired and observed state and time;
//! - `shutdown`: the cluster shutdown (`Sequencer`), with a phase's rules in `shutdown::phase`;
//! - `jobs`: the job router (`JobRouter`);
//! - `peer` (feature `etcd`): this queen as one of several on etcd (DESIGN's queen
//!   replicas; the code says peer and keeps "replica" for a deployment's): the etcd store,
//!   election, follower, transfer.
//!
//! At the edge: `routes` (the route table: scope, node access, leader-only per operation),
//! `api` (the router and handlers), `auth` (tokens). Beside them: `store` (the `Store`
//! trait and the embedded redb store), `placement` (the strategies), `summary` (registry
//! views as contract types), `config`, `reload`, `metrics`.

mod admission;
pub mod api;
mod audit;
pub mod auth;
pub mod clock;
pub mod config;
mod ingest;
mod jobs;
pub(crate) mod metrics;
pub mod orchestrator;
#[cfg(feature = "etcd")]
pub mod peer;
mod placement;
mod plan;
mod queen;
mod reload;
pub mod routes;
mod shutdown;
mod snapshot;
pub mod store;
mod summary;
#[cfg(test)]
mod testing;

use std::sync::Arc;
use std::time::Duration;

use contract::NodeKind;
use heartbeat_registry::LivenessEvent;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{QueenConfig, ServeArgs};
pub use queen::Queen;
pub use snapshot::Frame;

/// Runs a queen on `listener` until `stop` fires, then stops gracefully: `/readyz` turns
/// 503, open streams end, in-flight requests finish, every task is awaited.
pub async fn run(config: QueenConfig, listener: TcpListener, stop: CancellationToken) -> anyhow::Result<()> {
    // Cancelled by the caller (a signal) or by the queen itself, last, at the end of a
    // cluster shutdown.
    let stop = stop.child_token();
    let tasks = TaskTracker::new();
    let addr = listener.local_addr()?;
    let scheme = if config.tls.is_some() { "https" } else { "http" };
    let me = contract::QueenRef {
        id: format!("{}:{}", lifecycle::hostname(), addr.port()),
        url: config.advertise_url.clone().unwrap_or_else(|| format!("{scheme}://{addr}")),
    };
    let queen = match config.etcd.clone() {
        None => Queen::new(config, me, stop.clone(), tasks.clone(), None)?,
        #[cfg(feature = "etcd")]
        Some(settings) => peer::start(config, settings, me, &stop, &tasks).await?,
        #[cfg(not(feature = "etcd"))]
        Some(_) => anyhow::bail!("this queen was built without etcd support: build it with `--features queen/etcd`"),
    };
    if queen.config().insecure_no_auth {
        tracing::warn!(
            %addr,
            "serving with NO TOKENS on a non-loopback address (--insecure-no-auth): anyone who reaches it can make every hive run any command"
        );
    }
    // Peers resume a shutdown when they are elected.
    if queen.is_leader() {
        shutdown::resume(&queen);
    }

    tasks.spawn(snapshot::tick(Arc::clone(&queen), stop.child_token()));
    tasks.spawn(listen(Arc::clone(&queen), stop.child_token()));
    tasks.spawn(sweep_loop(Arc::clone(&queen), stop.child_token()));
    tasks.spawn(jobs::forget_old_routes(Arc::clone(&queen), stop.child_token()));
    tasks.spawn(count_events(Arc::clone(&queen), NodeKind::Hive, queen.ingest.hives.subscribe(), stop.child_token()));
    tasks.spawn(count_events(
        Arc::clone(&queen),
        NodeKind::Worker,
        queen.ingest.workers.subscribe(),
        stop.child_token(),
    ));
    if let Some(filter) = &queen.config().log_level
        && let Err(e) = lifecycle::set_log_filter(filter)
    {
        tracing::warn!(error = %e, "log filter not applied");
    }
    reload::spawn(&queen, &tasks, stop.child_token())?;

    let config = queen.config();
    tracing::info!(%addr, stream = %format!("{scheme}://{addr}{}", contract::paths::HEARTBEAT_STREAM), "queen listening");
    let app = api::router(Arc::clone(&queen));
    let options = lifecycle::ServeOptions { tls: config.tls.clone(), ..Default::default() };
    let server = lifecycle::HttpServer::spawn_with(&tasks, listener, app, options);

    stop.cancelled().await;
    tracing::info!("queen stopping");
    queen.health.set_draining();
    tasks.close();
    let served = server.stop().await;
    tasks.wait().await;
    tracing::info!("queen stopped");
    served?;
    Ok(())
}

/// Re-derives liveness often enough that a silent node is noticed within a fraction of an
/// interval, and forgets nodes that have been gone for long.
async fn sweep_loop(queen: Arc<Queen>, stop: CancellationToken) {
    let mut config = queen.subscribe_config();
    let mut tick = interval(config.borrow_and_update().sweep_interval());
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            Ok(()) = config.changed() => tick = interval(config.borrow_and_update().sweep_interval()),
            _ = tick.tick() => {
                // A follower's registries are not the cluster's record: a queen frozen past
                // its lease and thawed must not find everyone silent and declare them dead.
                if !queen.is_leader() {
                    continue;
                }
                queen.ingest.sweep();
                let gone = queen.ingest.forget_old();
                queen.orchestrator.channels.prune(|h| queen.ingest.hives.contains(h));
                if !gone.is_empty() {
                    let forgotten = queen.off_runtime(move |q| q.orchestrator.forget_hives(&gone)).await;
                    if let Ok(Err(e)) = forgotten {
                        tracing::warn!(error = %e, "could not drop the marks of forgotten hives; they stay until an operator removes those hives");
                    }
                }
                if let Err(e) = queen.off_runtime(|q| q.reconcile()).await {
                    tracing::error!(error = %e, "reconcile did not finish; the next sweep tries again");
                }
            }
        }
    }
}

/// Ticks the listening clock on the runtime that takes heartbeats in: a tick that comes
/// late says the queen could not hear for that long (see `heartbeat_registry::Listening`).
pub(crate) async fn listen(queen: Arc<Queen>, stop: CancellationToken) {
    let listening = Arc::clone(&queen.ingest.listening);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(listening.period()) => {}
        }
        let lost = listening.tick();
        if !lost.is_zero() {
            queen.metrics.deaf_seconds.inc_by(lost.as_secs_f64());
            queen.metrics.deaf_stalls.inc();
            if lost >= ingest::DEAF_SAID {
                tracing::warn!(
                    not_listening_s = lost.as_secs_f64(),
                    "this queen could not hear its nodes (paused, or starved of CPU); their deadlines were extended by as much"
                );
            }
        }
    }
}

/// A ticker that skips ticks it missed rather than bursting to catch up.
pub(crate) fn interval(period: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tick
}

async fn count_events(
    queen: Arc<Queen>,
    kind: NodeKind,
    mut rx: broadcast::Receiver<LivenessEvent<contract::NodeId>>,
    stop: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            e = rx.recv() => e,
        };
        match event {
            Ok(e) => {
                tracing::info!(node = kind.as_str(), id = %e.id, event = summary::event_kind(e.kind).as_str(), reason = %e.reason, "liveness");
                queen.count_events(kind, &e);
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(skipped = n, "liveness event log reader lagged")
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
