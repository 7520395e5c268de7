//! The heartbeat loop shared by hives and workers.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

use backon::{BackoffBuilder, ExponentialBuilder};
use contract::{Epoch, HeartbeatResponse, HiveHeartbeat, Seq, WorkerHeartbeat, paths};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::{ClientError, QueenClient};

/// A heartbeat payload and where it goes.
pub trait Beat: Serialize + Send + Sync {
    const PATH: &'static str;
}

impl Beat for HiveHeartbeat {
    const PATH: &'static str = paths::HIVE_HEARTBEAT;
}

impl Beat for WorkerHeartbeat {
    const PATH: &'static str = paths::WORKER_HEARTBEAT;
}

/// Bounds on what the queen may ask for: never a busy loop, never silence for hours.
const MIN_INTERVAL: Duration = Duration::from_millis(10);
const MAX_INTERVAL: Duration = Duration::from_secs(300);

/// `base` ±10 %, so that nodes started together drift apart instead of beating in lockstep.
pub fn jittered(base: Duration) -> Duration {
    base.mul_f64(0.9 + fastrand::f64() * 0.2)
}

/// What orders one heartbeat among a node's others: its process's epoch and its seq.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub epoch: Epoch,
    pub seq: Seq,
}

/// Stale answers in a row after which a node gives up its epoch for a later one: one
/// stale answer is a late or repeated beat; several mean the queen holds a later picture
/// of this node than the node itself (its clock went back, or another sender used its id).
const STALE_BEFORE_NEW_EPOCH: u32 = 3;

/// The epoch and seq in force, and how many answers in a row said "stale".
struct Stamped {
    epoch: Epoch,
    seq: u64,
    stale: u32,
}

/// Sends one node's heartbeats; owns its epoch, sequence numbers and current interval.
pub struct Heartbeater {
    client: QueenClient,
    /// Allocating a seq and building the payload happen under this lock, so a payload
    /// with a higher seq is always the newer picture of the node.
    seq: Mutex<Stamped>,
    interval_ms: AtomicU64,
    /// When the queen last accepted a heartbeat; readiness checks read it.
    last_success: Mutex<Option<Instant>>,
    sent: Counter,
    failed: Counter,
    /// Woken when what the node reports changed in a way the queen should hear at once.
    nudge: std::sync::Arc<tokio::sync::Notify>,
}

/// Soonest a nudged heartbeat follows the one before it, so a node whose report changes
/// often still beats a bounded number of times (well under the queen's per-node limit).
const NUDGE_GAP: Duration = Duration::from_millis(250);

impl Heartbeater {
    pub fn new(client: QueenClient, initial_interval: Duration) -> Self {
        Self {
            client,
            seq: Mutex::new(Stamped { epoch: Epoch::for_new_process(), seq: 0, stale: 0 }),
            interval_ms: AtomicU64::new(initial_interval.as_millis() as u64),
            last_success: Mutex::new(None),
            sent: Counter::default(),
            failed: Counter::default(),
            nudge: std::sync::Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Exposes heartbeat send counters in the process's metrics.
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register("apiary_heartbeats_sent", "Heartbeats the queen answered", self.sent.clone());
        registry.register("apiary_heartbeats_failed", "Heartbeats that got no answer or an error", self.failed.clone());
    }

    /// Time since the queen last answered a heartbeat; `None` before the first answer.
    pub fn since_last_success(&self) -> Option<Duration> {
        self.last_success.lock().unwrap_or_else(|p| p.into_inner()).map(|t| t.elapsed())
    }

    /// A readiness check: the queen answered within three intervals.
    pub fn contact_check(self: &std::sync::Arc<Self>) -> impl Fn() -> Result<String, String> + Send + Sync + 'static {
        let me = std::sync::Arc::clone(self);
        move || {
            let limit = me.interval() * 3;
            match me.since_last_success() {
                Some(age) if age <= limit => Ok(format!("queen answered {} ms ago", age.as_millis())),
                Some(age) => Err(format!("no answer from the queen for {} ms", age.as_millis())),
                None => Err("the queen has not answered yet".into()),
            }
        }
    }

    /// Wakes [`Heartbeater::run`] for a heartbeat now rather than at the next interval (a
    /// replica that cannot start, say); heartbeats stay at least 250 ms apart.
    pub fn nudger(&self) -> std::sync::Arc<tokio::sync::Notify> {
        std::sync::Arc::clone(&self.nudge)
    }

    /// The interval in force: the node's own until the queen answers, then the queen's.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms.load(Ordering::Relaxed))
    }

    /// This process's epoch as of now (a new one after stale answers, see [`Stamp`]).
    pub fn epoch(&self) -> Epoch {
        self.seq.lock().unwrap_or_else(|p| p.into_inner()).epoch
    }

    /// Takes in whether the queen accepted a heartbeat; after enough stale answers, moves
    /// to an epoch after the one the queen holds, and says why.
    fn answered(&self, resp: &HeartbeatResponse) {
        let mut c = self.seq.lock().unwrap_or_else(|p| p.into_inner());
        if resp.accepted {
            c.stale = 0;
            return;
        }
        c.stale += 1;
        if c.stale < STALE_BEFORE_NEW_EPOCH {
            return;
        }
        let held = resp.held_epoch.unwrap_or(c.epoch);
        let next = Epoch(Epoch::for_new_process().0.max(held.0.saturating_add(1)).max(c.epoch.0.saturating_add(1)));
        tracing::warn!(
            ours = %c.epoch, held = %held, next = %next, stale = c.stale,
            "the queen holds a later picture of this node than ours (our clock went back, or another sender used our id); starting a new epoch"
        );
        *c = Stamped { epoch: next, seq: 0, stale: 0 };
    }

    /// Sends one heartbeat now, built by `make` with the epoch and the next seq.
    pub async fn beat<B: Beat>(&self, make: impl FnOnce(Stamp) -> B) -> Result<HeartbeatResponse, ClientError> {
        let body = {
            let mut c = self.seq.lock().unwrap_or_else(|p| p.into_inner());
            c.seq += 1;
            make(Stamp { epoch: c.epoch, seq: Seq(c.seq) })
        };
        let resp: HeartbeatResponse = match self.client.post_json(B::PATH, &body).await {
            Ok(r) => r,
            Err(e) => {
                self.failed.inc();
                return Err(e);
            }
        };
        self.sent.inc();
        self.answered(&resp);
        *self.last_success.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        let next = Duration::from_millis(resp.next_interval_ms).clamp(MIN_INTERVAL, MAX_INTERVAL);
        self.interval_ms.store(next.as_millis() as u64, Ordering::Relaxed);
        Ok(resp)
    }

    /// The last heartbeat of a stopping process, built by `make`; waits at most `timeout`
    /// for the queen, and logs rather than fails: the process exits either way.
    pub async fn goodbye<B: Beat>(&self, make: impl FnOnce(Stamp) -> B, timeout: Duration) {
        match tokio::time::timeout(timeout, self.beat(make)).await {
            Ok(Ok(_)) => tracing::info!("queen told we are stopping"),
            Ok(Err(e)) => tracing::warn!(error = %e, "could not tell the queen we are stopping"),
            Err(_) => tracing::warn!("the queen did not answer the last heartbeat in time"),
        }
    }

    /// Beats until `stop` fires: the first at once, then every interval with jitter.
    /// While the queen is unreachable it retries with capped, jittered exponential
    /// backoff, capped so that the node is seen again within one interval of the queen's
    /// return.
    pub async fn run<B: Beat>(&self, make: impl Fn(Stamp) -> B, stop: CancellationToken) {
        let mut backoff: Option<backon::ExponentialBackoff> = None;
        let mut failures = 0u64;
        loop {
            let delay = match self.beat(&make).await {
                Ok(_) => {
                    if failures > 0 {
                        tracing::info!(failures, "queen reachable again");
                    }
                    failures = 0;
                    backoff = None;
                    jittered(self.interval())
                }
                Err(e) => {
                    failures += 1;
                    // A queen that does not answer at all: try the next one in the list
                    // (the retry below goes there). An answer with an error status stays.
                    if matches!(e, crate::ClientError::Transport(_)) {
                        self.client.fail_over();
                    }
                    // One line when the trouble starts, then a reminder now and then.
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(error = %e, failures, "heartbeat failed; retrying with backoff");
                    }
                    let interval = self.interval();
                    backoff.get_or_insert_with(|| retry_policy(interval).build()).next().unwrap_or(interval)
                }
            };
            let beat_at = tokio::time::Instant::now();
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
                _ = self.nudge.notified() => {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep_until(beat_at + NUDGE_GAP) => {}
                    }
                }
            }
        }
    }
}

/// Starts small, doubles, and never waits more than `interval` (the jitter backon adds is
/// up to the current delay, hence the half): a thousand nodes retrying against a queen
/// that comes back do not all arrive in the same instant.
pub fn retry_policy(interval: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay((interval / 8).clamp(Duration::from_millis(10), Duration::from_secs(1)))
        .with_max_delay(interval / 2)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_ten_percent() {
        let base = Duration::from_secs(10);
        for _ in 0..1000 {
            let d = jittered(base);
            assert!(d >= Duration::from_secs(9) && d <= Duration::from_secs(11), "{d:?}");
        }
    }

    #[test]
    fn backoff_grows_and_never_exceeds_one_interval() {
        let interval = Duration::from_secs(10);
        let delays: Vec<Duration> = retry_policy(interval).build().take(50).collect();
        assert_eq!(delays.len(), 50, "retries never give up");
        assert!(delays.iter().all(|d| *d <= interval), "{delays:?}");
        assert!(delays[0] < Duration::from_secs(3), "starts small: {delays:?}");
        let late_min = delays[10..].iter().min().copied().unwrap_or_default();
        assert!(late_min >= interval / 2, "reaches the cap: {delays:?}");
    }

    #[test]
    fn backoff_is_jittered_across_nodes() {
        let interval = Duration::from_secs(10);
        let firsts: std::collections::HashSet<Duration> =
            (0..50).map(|_| retry_policy(interval).build().nth(3).unwrap_or_default()).collect();
        assert!(firsts.len() > 10, "a thousand hives must not retry in the same instant: {firsts:?}");
    }
}
