//! Liveness events: a bounded log shared by all nodes, and a broadcast for live readers.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::broadcast;

use crate::Liveness;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    Joined,
    Restarted,
    Suspect,
    Offline,
    Recovered,
    Stopped,
    Removed,
    Flapping,
    Steady,
}

/// One change of one node's liveness, with the reason an operator reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LivenessEvent<Id> {
    pub seq: u64,
    pub at: SystemTime,
    pub id: Id,
    pub kind: EventKind,
    /// Liveness after the event.
    pub liveness: Liveness,
    /// The node's epoch (process instance) when it happened.
    pub epoch: u64,
    pub reason: String,
}

/// Recent events of every node; bounded so a noisy cluster cannot grow memory.
pub(crate) struct EventLog<Id> {
    /// May be shared with other registries, so that events of hives and workers form one
    /// sequence a client can resume from.
    next_seq: Arc<AtomicU64>,
    recent: Mutex<VecDeque<LivenessEvent<Id>>>,
    capacity: usize,
    live: broadcast::Sender<LivenessEvent<Id>>,
}

impl<Id: Clone> EventLog<Id> {
    pub(crate) fn new(capacity: usize, next_seq: Arc<AtomicU64>) -> Self {
        let (live, _) = broadcast::channel(capacity.max(16));
        Self { next_seq, recent: Mutex::new(VecDeque::with_capacity(capacity)), capacity, live }
    }

    pub(crate) fn record(
        &self,
        id: Id,
        kind: EventKind,
        liveness: Liveness,
        epoch: u64,
        reason: String,
    ) -> LivenessEvent<Id> {
        let event = LivenessEvent {
            seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
            at: SystemTime::now(),
            id,
            kind,
            liveness,
            epoch,
            reason,
        };
        {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            if recent.len() == self.capacity {
                recent.pop_front();
            }
            recent.push_back(event.clone());
        }
        // Nobody listening is fine: the log above keeps the recent past.
        let _ = self.live.send(event.clone());
        event
    }

    pub(crate) fn recent(&self, limit: usize) -> Vec<LivenessEvent<Id>> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let skip = recent.len().saturating_sub(limit);
        recent.iter().skip(skip).cloned().collect()
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<LivenessEvent<Id>> {
        self.live.subscribe()
    }
}

/// "31 s", "2.5 s": how long a node was silent, for reasons.
pub(crate) fn secs(d: std::time::Duration) -> String {
    if d.as_secs() >= 10 { format!("{} s", d.as_secs()) } else { format!("{:.1} s", d.as_secs_f64()) }
}
