//! The hive: Apiary's node agent, one per machine.
//!
//! It heartbeats to the queen with real readings of its machine (first beat at once, then
//! the queen's interval with jitter, backing off while the queen is away) and serves its
//! own `/healthz`, `/readyz` and `/metrics`. On a graceful stop it turns unready, then
//! says goodbye in a last `shutting_down` heartbeat so the queen shows it gone at once.
//!
//! Entry point: [`run`] with an already-bound listener.

pub mod cgroup;
pub mod config;
mod control;
pub mod logs;
mod probe;
pub mod resources;
mod supervisor;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use contract::{Capacity, HiveHeartbeat, HiveStatus, ProcessState, Resources, SupervisedWorker};
use lifecycle::health::Health;
use lifecycle::http::{method_not_allowed_fallback, not_found_fallback};
use queen_client::{Heartbeater, QueenClient, Stamp};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{HiveArgs, HiveConfig};

/// Time allowed for the goodbye heartbeat; the hive exits even if the queen is away.
const FINAL_BEAT_TIMEOUT: Duration = Duration::from_secs(3);

/// What goes into every heartbeat besides seq and status; fixed for the process's life
/// except the resource readings, refreshed by the sampler task.
struct Identity {
    config: HiveConfig,
    address: String,
    hostname: String,
    resources: Mutex<Resources>,
    /// The supervisor's latest report of its workers.
    workers: Arc<Mutex<Vec<SupervisedWorker>>>,
    /// A cluster shutdown has passed GATE: the hive starts nothing and says `draining`.
    gated: Arc<AtomicBool>,
}

impl Identity {
    fn status(&self) -> HiveStatus {
        if self.gated.load(Ordering::SeqCst) { HiveStatus::Draining } else { HiveStatus::Ready }
    }

    fn heartbeat(&self, stamp: Stamp, status: HiveStatus) -> HiveHeartbeat {
        let workers = self.workers.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let resources = *self.resources.lock().unwrap_or_else(|p| p.into_inner());
        HiveHeartbeat {
            id: self.config.name.clone(),
            epoch: stamp.epoch,
            seq: stamp.seq,
            address: self.address.clone(),
            hostname: self.hostname.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            status,
            resources,
            capacity: Capacity {
                max_workers: self.config.max_workers,
                running_workers: workers.iter().filter(|w| w.state == ProcessState::Running).count() as u32,
                // The whole machine is offered; placement counts what replicas ask against it.
                cpu_millis: std::thread::available_parallelism().map_or(0, |n| n.get() as u64 * 1000),
                memory_bytes: resources.memory_total_bytes,
            },
            labels: self.config.labels.clone(),
            services: Vec::new(),
            workers,
            sent_at: OffsetDateTime::now_utc(),
        }
    }
}

/// Runs a hive until `stop` fires, then stops gracefully and returns.
pub async fn run(config: HiveConfig, listener: TcpListener, stop: CancellationToken) -> anyhow::Result<()> {
    // Cancelled by the caller (a signal) or by the hive itself (the INFRA phase).
    let own = stop.child_token();
    let addr = listener.local_addr()?;
    let client = QueenClient::for_node(&config.queen, config.token.as_ref().map(|t| t.expose()), config.ca.as_deref())?;
    let heartbeater = Arc::new(Heartbeater::new(client.clone(), config.heartbeat_interval));
    let (cgroups, containment) = contain(config.cgroup.as_deref());
    let supervisor = supervisor::Supervisor::new(
        supervisor::ChildEnv {
            queen: config.queen.clone(),
            hive: config.name.clone(),
            token: config.token.clone(),
            ca: config.ca.clone(),
        },
        config.worker_stop_timeout,
    )
    // A replica that starts, fails or cannot start is told to the queen at once.
    .on_change(heartbeater.nudger())
    .contain(cgroups.clone())
    .log_to(config.log_dir.clone().map(|dir| Arc::new(logs::LogStore { dir, policy: config.logs })));
    let log_access = Arc::new(logs::LogAccess::new(
        config.log_dir.clone().map(|dir| logs::LogStore { dir, policy: config.logs }),
        config.token.as_ref(),
        &config.name,
    ));
    let mut sampler = resources::Sampler::new().map_err(|e| anyhow::anyhow!("cannot read system resources: {e}"))?;
    let identity = Arc::new(Identity {
        address: format!("http://{addr}"),
        hostname: lifecycle::hostname(),
        resources: Mutex::new(sampler.sample()),
        workers: supervisor.report(),
        gated: Arc::new(AtomicBool::new(false)),
        config,
    });

    let report = supervisor.report();
    let mut health = Health::builder()
        .check("queen_contact", heartbeater.contact_check())
        .check("supervisor", move || supervisor::health(&report.lock().unwrap_or_else(|p| p.into_inner())))
        .check("containment", move || Ok(containment.clone()));
    heartbeater.register_metrics(health.metrics());
    let health = health.build();

    let tasks = TaskTracker::new();
    // Heartbeats, readings and the control channel outlive the stop signal: a hive draining
    // itself must stay heard (silence would be a false death), and must keep hearing the
    // queen, which stops each old instance once its replacement runs elsewhere. They end
    // after the drain, below.
    let beats = CancellationToken::new();
    tasks.spawn(sample_loop(sampler, Arc::clone(&identity), beats.clone()));
    tasks.spawn({
        let (hb, identity, beats) = (Arc::clone(&heartbeater), Arc::clone(&identity), beats.clone());
        async move { hb.run(|stamp| identity.heartbeat(stamp, identity.status()), beats).await }
    });
    let app = health
        .router()
        .merge(logs::router(Arc::clone(&log_access)))
        .fallback(not_found_fallback)
        .method_not_allowed_fallback(method_not_allowed_fallback);
    let server = lifecycle::HttpServer::spawn(&tasks, listener, app);
    let (desired, desired_rx) = watch::channel(supervisor::Desired::default());
    let context = control::Context {
        desired,
        drain: supervisor.drain_outcome(),
        gated: Arc::clone(&identity.gated),
        storage_hooks: identity.config.storage_hooks.clone(),
        cgroups,
        exit: own.clone(),
    };
    let supervising = CancellationToken::new();
    let supervised = tasks.spawn(supervisor.run(desired_rx, supervising.clone()));
    let control_client = client.clone();
    tasks.spawn(control::run(client, identity.config.name.clone(), context, beats.clone()));
    tracing::info!(hive = %identity.config.name, epoch = %heartbeater.epoch(), %addr, queen = %identity.config.queen, "hive started");

    own.cancelled().await;
    tracing::info!("hive stopping");
    // A hive taken down for maintenance moves its work first (not at the end of a cluster
    // shutdown: then there is nowhere to move it).
    if !identity.gated.load(Ordering::SeqCst) && !identity.config.drain_on_shutdown.is_zero() {
        drain_first(&control_client, &identity.config).await;
    }
    health.set_draining();
    beats.cancel();
    // The hive's workers stop with it, and the stop is done when they have exited.
    supervising.cancel();
    if let Err(e) = supervised.await {
        tracing::error!(error = %e, "supervisor failed");
    }
    tasks.close();
    heartbeater.goodbye(|stamp| identity.heartbeat(stamp, HiveStatus::ShuttingDown), FINAL_BEAT_TIMEOUT).await;
    log_access.stop.cancel();
    let served = server.stop().await;
    tasks.wait().await;
    tracing::info!("hive stopped");
    served?;
    Ok(())
}

/// The replicas' cgroups, if this hive can make them (after killing what a `kill -9`ed
/// run of it left in them), and what readiness says about it.
fn contain(name: Option<&str>) -> (Option<Arc<cgroup::Cgroups>>, String) {
    let Some(name) = name else {
        return (
            None,
            "process groups only (cgroup off): a child that leaves its group can outlive its replica".into(),
        );
    };
    match cgroup::Cgroups::open(name) {
        Ok(cgroups) => {
            let left = cgroups.clear_leftovers();
            if left > 0 {
                tracing::warn!(killed = left, cgroup = %cgroups.root().display(), "killed processes an earlier run of this hive left behind");
            }
            let text = format!("each replica's process tree in its own cgroup under {}", cgroups.root().display());
            (Some(Arc::new(cgroups)), text)
        }
        Err(why) => {
            tracing::warn!(%why, "no cgroup for the replicas: a child that leaves its process group can outlive its replica");
            (None, format!("process groups only ({why}): a child that leaves its group can outlive its replica"))
        }
    }
}

/// Refreshes the resource readings the heartbeats carry. CPU usage needs two readings
/// apart in time, so this runs on its own clock rather than inside the heartbeat.
async fn sample_loop(mut sampler: resources::Sampler, identity: Arc<Identity>, stop: CancellationToken) {
    let period = identity.config.heartbeat_interval.clamp(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL, Duration::from_secs(5));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                let reading = sampler.sample();
                *identity.resources.lock().unwrap_or_else(|p| p.into_inner()) = reading;
            }
        }
    }
}

/// Asks the queen to drain this hive and waits, up to `drain_on_shutdown`, until its
/// replicas run elsewhere. Best effort: a queen that cannot be reached just means the
/// hive stops its workers itself.
async fn drain_first(client: &QueenClient, config: &HiveConfig) {
    let deadline = config.drain_on_shutdown;
    if let Err(e) = client.drain_on_shutdown(&config.name, deadline).await {
        tracing::warn!(error = %e, "could not ask the queen to drain this hive; stopping workers here");
        return;
    }
    tracing::info!(?deadline, "waiting for the queen to move this hive's work");
    let waited = tokio::time::timeout(deadline + Duration::from_secs(2), async {
        loop {
            match client.drain_status(&config.name).await {
                Ok(s) if s.done || s.stuck() => return s,
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    })
    .await;
    match waited {
        Ok(s) => tracing::info!(moved = s.moved, notes = ?s.notes, "drained before stopping"),
        Err(_) => tracing::warn!("the drain did not finish in time; stopping what is left"),
    }
}
