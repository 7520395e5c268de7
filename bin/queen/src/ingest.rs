//! What the queen has heard: one registry per kind of node, and the per-sender rate limit
//! in front of them. Heartbeats come in here and nowhere else; everything the queen knows
//! about liveness is read from here.

use std::net::IpAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

use contract::{HiveHeartbeat, NodeId, WorkerHeartbeat};
use heartbeat_registry::{HeartbeatRegistry, Listening, Thresholds};

type Limiter = governor::DefaultKeyedRateLimiter<String>;

pub struct Ingest {
    pub hives: HeartbeatRegistry<HiveHeartbeat>,
    pub workers: HeartbeatRegistry<WorkerHeartbeat>,
    /// Per-sender heartbeat rate limit, keyed by kind and id; replaced whole when a reload
    /// changes the rate.
    limiter: RwLock<Arc<Limiter>>,
    /// New node ids per token (by its name), so one leaked token cannot fill the
    /// registries at line rate.
    new_ids: RwLock<Arc<Limiter>>,
    /// Where each hive's last heartbeat came from: a hive that holds only the shared
    /// cluster token is known by it (its own drain must come from there).
    hive_peers: dashmap::DashMap<NodeId, IpAddr>,
    /// The queen's listening clock: both registries measure silence on it, and the probe
    /// task (`listen`) ticks it.
    pub listening: Arc<Listening>,
}

/// How often the probe ticks the listening clock, and the lateness that is ordinary
/// scheduling on a busy machine rather than a queen that cannot hear.
pub const PROBE_PERIOD: std::time::Duration = std::time::Duration::from_millis(100);
pub const PROBE_ALLOWANCE: std::time::Duration = std::time::Duration::from_millis(200);

/// A stall shorter than this is not worth a banner (it still extends every deadline).
pub const DEAF_SAID: std::time::Duration = std::time::Duration::from_secs(1);
/// How long readiness and the banner go on saying that the queen was not listening.
pub const DEAF_SAID_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// A per-sender limiter allowing `per_second` heartbeats, with a burst of two seconds'
/// worth to absorb a node's restart or a reconnect.
fn limiter(per_second: u32) -> Limiter {
    let rate = std::num::NonZeroU32::new(per_second).unwrap_or(std::num::NonZeroU32::MIN);
    let burst = std::num::NonZeroU32::new(rate.get().saturating_mul(2)).unwrap_or(rate);
    governor::RateLimiter::dashmap(governor::Quota::per_second(rate).allow_burst(burst))
}

/// New ids one token may introduce: `per_second`, with a burst of ten seconds' worth (a
/// rack of hives starting at once).
fn new_ids(per_second: u32) -> Limiter {
    let rate = std::num::NonZeroU32::new(per_second).unwrap_or(std::num::NonZeroU32::MIN);
    let burst = std::num::NonZeroU32::new(rate.get().saturating_mul(10)).unwrap_or(rate);
    governor::RateLimiter::dashmap(governor::Quota::per_second(rate).allow_burst(burst))
}

impl Ingest {
    /// Both registries, as a deployment's status is read against them.
    pub fn nodes(&self) -> crate::orchestrator::Nodes<'_> {
        crate::orchestrator::Nodes { hives: &self.hives, workers: &self.workers }
    }

    /// Both registries number their events from `event_seq`, shared with the
    /// orchestrator's, so liveness and placement events form one order.
    pub fn new(thresholds: Thresholds, event_seq: &Arc<AtomicU64>, per_second: u32, new_per_second: u32) -> Self {
        let listening = Arc::new(Listening::new(PROBE_PERIOD, PROBE_ALLOWANCE));
        let hives = HeartbeatRegistry::with_event_seq(thresholds.clone(), Arc::clone(event_seq));
        let workers = HeartbeatRegistry::with_event_seq(thresholds, Arc::clone(event_seq));
        hives.listen_with(Arc::clone(&listening));
        workers.listen_with(Arc::clone(&listening));
        Self {
            hives,
            workers,
            limiter: RwLock::new(Arc::new(limiter(per_second))),
            new_ids: RwLock::new(Arc::new(new_ids(new_per_second))),
            hive_peers: dashmap::DashMap::new(),
            listening,
        }
    }

    /// What readiness and the banner say while the queen could not hear, or recently
    /// could not: `None` when it has been listening.
    pub fn deafness(&self) -> Option<String> {
        let overdue = self.listening.overdue();
        if overdue >= DEAF_SAID {
            return Some(format!(
                "this queen has not been listening for {:.1} s (paused, or starved of CPU): no node is judged on that silence",
                overdue.as_secs_f64()
            ));
        }
        let last = self.listening.last_episode()?;
        let ago = last.ended.elapsed();
        (last.deaf >= DEAF_SAID && ago < DEAF_SAID_FOR).then(|| {
            format!(
                "this queen was not listening for {:.1} s, {} s ago (paused, or starved of CPU): every node's deadline was extended by that much; the nodes were not at fault",
                last.deaf.as_secs_f64(),
                ago.as_secs()
            )
        })
    }

    pub fn limiter(&self) -> Arc<Limiter> {
        Arc::clone(&self.limiter.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn new_ids(&self) -> Arc<Limiter> {
        Arc::clone(&self.new_ids.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn set_rate(&self, per_second: u32) {
        *self.limiter.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(limiter(per_second));
    }

    pub fn set_new_id_rate(&self, per_second: u32) {
        *self.new_ids.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new_ids(per_second));
    }

    /// Every node the queen holds, of both kinds.
    pub fn known(&self) -> usize {
        self.hives.len() + self.workers.len()
    }

    pub fn heard_hive_from(&self, hive: &NodeId, peer: IpAddr) {
        if self.hive_peers.get(hive).is_none_or(|p| *p != peer) {
            self.hive_peers.insert(hive.clone(), peer);
        }
    }

    pub fn hive_peer(&self, hive: &NodeId) -> Option<IpAddr> {
        self.hive_peers.get(hive).map(|p| *p)
    }

    pub fn set_thresholds(&self, thresholds: &Thresholds) {
        self.hives.set_thresholds(thresholds.clone());
        self.workers.set_thresholds(thresholds.clone());
    }

    /// Re-derives every node's liveness now.
    pub fn sweep(&self) {
        self.hives.sweep();
        self.workers.sweep();
    }

    /// Forgets nodes gone for long, and the limiter state of senders that went quiet;
    /// returns the hives forgotten.
    pub fn forget_old(&self) -> Vec<NodeId> {
        let hives = self.hives.cleanup_stale();
        for h in &hives {
            self.hive_peers.remove(h);
        }
        self.workers.cleanup_stale();
        self.limiter().retain_recent();
        self.new_ids().retain_recent();
        hives
    }

    /// Counts silence from now again (a queen just elected has heard from nobody).
    pub fn restart_grace(&self) {
        self.hives.restart_grace();
        self.workers.restart_grace();
    }

    /// Forgets every node (a deposed leader: they report to the new one now).
    pub fn clear(&self) {
        self.hives.clear();
        self.workers.clear();
        self.hive_peers.clear();
    }

    pub fn online_hives(&self) -> Vec<NodeId> {
        self.hives.list_online().into_iter().map(|v| v.payload.id).collect()
    }
}
