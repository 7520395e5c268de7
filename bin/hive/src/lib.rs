//! The hive: Apiary's node agent, one per machine.
//!
//! It heartbeats to the queen with real readings of its machine (first beat at once, then
//! the queen's interval with jitter, backing off while the queen is away) and serves its
//! own `/healthz`, `/readyz` and `/metrics`. On a graceful stop it turns unready, then
//! says goodbye in a last `shutting_down` heartbeat so the queen shows it gone at once.
//!
//! Entry point: [`run`] with an already-bound listener.

pub mod config;
pub mod resources;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use contract::{Capacity, Epoch, HiveHeartbeat, HiveStatus, Resources, Seq};
use lifecycle::health::Health;
use lifecycle::http::{method_not_allowed_fallback, not_found_fallback};
use queen_client::{Heartbeater, QueenClient};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{HiveArgs, HiveConfig};

/// Time allowed for the goodbye heartbeat; the hive exits even if the queen is away.
const FINAL_BEAT_TIMEOUT: Duration = Duration::from_secs(3);

/// What goes into every heartbeat besides seq and status; fixed for the process's life
/// except the resource readings, refreshed by the sampler task.
struct Identity {
    config: HiveConfig,
    epoch: Epoch,
    address: String,
    hostname: String,
    resources: Mutex<Resources>,
}

impl Identity {
    fn heartbeat(&self, seq: Seq, status: HiveStatus) -> HiveHeartbeat {
        HiveHeartbeat {
            id: self.config.name.clone(),
            epoch: self.epoch,
            seq,
            address: self.address.clone(),
            hostname: self.hostname.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            status,
            resources: *self.resources.lock().unwrap_or_else(|p| p.into_inner()),
            // Supervising workers is not the hive's job yet: it runs none of its own.
            capacity: Capacity { max_workers: self.config.max_workers, running_workers: 0 },
            labels: self.config.labels.clone(),
            services: Vec::new(),
            sent_at: OffsetDateTime::now_utc(),
        }
    }
}

/// Runs a hive until `stop` fires, then stops gracefully and returns.
pub async fn run(config: HiveConfig, listener: TcpListener, stop: CancellationToken) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let client = QueenClient::new(&config.queen, None, Duration::from_secs(5))?;
    let heartbeater = Arc::new(Heartbeater::new(client, config.heartbeat_interval));
    let mut sampler = resources::Sampler::new().map_err(|e| anyhow::anyhow!("cannot read system resources: {e}"))?;
    let identity = Arc::new(Identity {
        epoch: Epoch::for_new_process(),
        address: format!("http://{addr}"),
        hostname: lifecycle::hostname(),
        resources: Mutex::new(sampler.sample()),
        config,
    });

    let mut health = Health::builder().check("queen_contact", heartbeater.contact_check());
    heartbeater.register_metrics(health.metrics());
    let health = health.build();

    let tasks = TaskTracker::new();
    let beats = stop.child_token();
    tasks.spawn(sample_loop(sampler, Arc::clone(&identity), beats.clone()));
    tasks.spawn({
        let (hb, identity, beats) = (Arc::clone(&heartbeater), Arc::clone(&identity), beats.clone());
        async move { hb.run(|seq| identity.heartbeat(seq, HiveStatus::Ready), beats).await }
    });
    let app = health.router().fallback(not_found_fallback).method_not_allowed_fallback(method_not_allowed_fallback);
    let server = lifecycle::HttpServer::spawn(&tasks, listener, app);
    tracing::info!(hive = %identity.config.name, epoch = %identity.epoch, %addr, queen = %identity.config.queen, "hive started");

    stop.cancelled().await;
    tracing::info!("hive stopping");
    health.set_draining();
    beats.cancel();
    tasks.close();
    heartbeater.goodbye(|seq| identity.heartbeat(seq, HiveStatus::ShuttingDown), FINAL_BEAT_TIMEOUT).await;
    let served = server.stop().await;
    tasks.wait().await;
    tracing::info!("hive stopped");
    served?;
    Ok(())
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
