//! `HeartbeatRegistry<T>`: ordering, liveness derivation and flap damping.

use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry as MapEntry;
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::events::{EventLog, secs};
use crate::{EventKind, HeartbeatPayload, Listening, Liveness, LivenessEvent, Thresholds};

/// Events kept across all nodes of one registry.
const RECENT_EVENTS: usize = 1024;

/// What an upsert did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpsertOutcome {
    /// First heartbeat from this id.
    Joined,
    /// Newer heartbeat from the same incarnation.
    Updated,
    /// A new epoch: the sender restarted.
    Restarted { previous_epoch: u64 },
    /// Older than or equal to what is held (late or replayed); nothing changed.
    Stale,
}

struct Entry<T: HeartbeatPayload> {
    payload: T,
    liveness: Liveness,
    /// Monotonic (and mockable in tests) time of the last accepted heartbeat; liveness is
    /// derived from it.
    last_seen: Instant,
    /// The owner's listening clock at the last accepted heartbeat (see `Listening`):
    /// silence is measured on it, so time the owner could not hear is not held against
    /// the node.
    heard: Duration,
    /// Damped after coming back from offline too often; see `Thresholds::flap_limit`.
    flapping: bool,
    /// When the node last came back from offline, within the flap window.
    returns: VecDeque<Instant>,
    /// When the node last became online; a flapping node is steady once this is old enough.
    online_since: Instant,
    history: VecDeque<LivenessEvent<T::Id>>,
}

impl<T: HeartbeatPayload> Entry<T> {
    fn available(&self) -> bool {
        self.liveness == Liveness::Online && !self.flapping && self.payload.accepts_work()
    }
}

/// A borrowed view of one node, for callers that summarise without cloning payloads.
pub struct NodeRef<'a, T> {
    pub payload: &'a T,
    pub liveness: Liveness,
    pub available: bool,
    pub flapping: bool,
    pub last_seen: SystemTime,
    /// Time since the last accepted heartbeat.
    pub silent_for: Duration,
}

/// An owned copy of one node.
#[derive(Clone, Debug)]
pub struct NodeView<T> {
    pub payload: T,
    pub liveness: Liveness,
    pub available: bool,
    pub flapping: bool,
    pub last_seen: SystemTime,
    pub silent_for: Duration,
}

/// Latest heartbeat and derived liveness of every node of one kind.
///
/// Backed by a sharded `DashMap`: heartbeats from different nodes take different shard
/// locks, so concurrent ingest does not serialise on one lock, and each upsert's
/// read-compare-write of the epoch/seq happens under its entry's lock, so two racing
/// heartbeats from one node cannot both win.
pub struct HeartbeatRegistry<T: HeartbeatPayload> {
    entries: DashMap<T::Id, Entry<T>>,
    thresholds: RwLock<Thresholds>,
    created: Instant,
    /// Nobody is declared offline until `startup_grace` after this: the registry's
    /// creation, or the moment its owner started to be the one heartbeats go to.
    grace_from: RwLock<Instant>,
    /// The wall clock at `created`: wall times are derived from monotonic ones, which
    /// costs one clock read per heartbeat instead of two.
    created_wall: SystemTime,
    events: EventLog<T::Id>,
    /// Liveness changes kept per node; fixed at construction.
    history_len: usize,
    /// The owner's listening clock, once it has one; until then silence is plain time.
    listening: std::sync::OnceLock<Arc<Listening>>,
}

impl<T: HeartbeatPayload> HeartbeatRegistry<T> {
    pub fn new(thresholds: Thresholds) -> Self {
        Self::with_event_seq(thresholds, Arc::new(AtomicU64::new(1)))
    }

    /// A registry whose events draw their `seq` from `next_seq`, shared with other
    /// registries so that their events interleave in one order.
    pub fn with_event_seq(thresholds: Thresholds, next_seq: Arc<AtomicU64>) -> Self {
        Self {
            entries: DashMap::new(),
            thresholds: RwLock::new(thresholds.clone()),
            created: Instant::now(),
            grace_from: RwLock::new(Instant::now()),
            created_wall: SystemTime::now(),
            events: EventLog::new(RECENT_EVENTS, next_seq),
            history_len: thresholds.history_len.max(1),
            listening: std::sync::OnceLock::new(),
        }
    }

    /// Measures silence on `listening` from now on (set once; later calls are ignored).
    pub fn listen_with(&self, listening: Arc<Listening>) {
        let _ = self.listening.set(listening);
    }

    /// The clock silence is measured on, as of `now`.
    fn heard_time(&self, now: Instant) -> Duration {
        match self.listening.get() {
            Some(l) => l.heard_time(now),
            None => now.saturating_duration_since(self.created),
        }
    }

    fn silence(e: &Entry<T>, heard_now: Duration) -> Duration {
        heard_now.saturating_sub(e.heard)
    }

    pub fn thresholds(&self) -> Thresholds {
        self.thresholds.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Applies new thresholds (e.g. from a reloaded config); takes effect at the next sweep.
    pub fn set_thresholds(&self, thresholds: Thresholds) {
        *self.thresholds.write().unwrap_or_else(|p| p.into_inner()) = thresholds;
    }

    /// Starts the startup grace again from now: for an owner that has just become the one
    /// nodes report to (a queen elected leader), which has not heard from everyone yet.
    pub fn restart_grace(&self) {
        *self.grace_from.write().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// Forgets every node, without events: the owner no longer keeps this state (a queen
    /// that stopped leading), so nobody is gone, the record is just no longer ours.
    pub fn clear(&self) {
        self.entries.clear();
    }

    /// Records a heartbeat unless it is older than the one held.
    pub fn upsert(&self, payload: T) -> UpsertOutcome {
        let now = Instant::now();
        // The hot path takes no lock beyond the entry's shard and reads no thresholds:
        // only transitions (rare) look at those.
        match self.entries.entry(payload.id().clone()) {
            MapEntry::Vacant(slot) => {
                let id = slot.key().clone();
                let final_beat = payload.is_final();
                let mut entry = Entry {
                    payload,
                    liveness: if final_beat { Liveness::Stopped } else { Liveness::Online },
                    last_seen: now,
                    heard: self.heard_time(now),
                    flapping: false,
                    returns: VecDeque::new(),
                    online_since: now,
                    // Most nodes only ever have their "joined" event; a default-grown deque
                    // would reserve four, a third of an entry's memory at 100 000 nodes.
                    history: VecDeque::with_capacity(1),
                };
                self.emit(&mut entry, id.clone(), EventKind::Joined, "first heartbeat".into());
                if final_beat {
                    self.emit(&mut entry, id, EventKind::Stopped, "stopped gracefully".into());
                }
                slot.insert(entry);
                UpsertOutcome::Joined
            }
            MapEntry::Occupied(mut slot) => {
                let id = slot.key().clone();
                let entry = slot.get_mut();
                let (old_epoch, old_seq) = (entry.payload.epoch(), entry.payload.seq());
                let (epoch, seq) = (payload.epoch(), payload.seq());
                if epoch < old_epoch || (epoch == old_epoch && seq <= old_seq) {
                    return UpsertOutcome::Stale;
                }
                let was = entry.liveness;
                let heard = self.heard_time(now);
                let silent = Self::silence(entry, heard);
                let final_beat = payload.is_final();
                entry.payload = payload;
                entry.last_seen = now;
                entry.heard = heard;
                entry.liveness = if final_beat { Liveness::Stopped } else { Liveness::Online };
                if was != Liveness::Online && entry.liveness == Liveness::Online {
                    entry.online_since = now;
                }
                if was == Liveness::Offline {
                    self.note_return(entry, now, &id);
                }

                let outcome = if epoch != old_epoch {
                    let reason = match was {
                        Liveness::Offline => {
                            format!("restarted after {} offline (new epoch)", secs(silent))
                        }
                        _ => "restarted (new epoch)".into(),
                    };
                    self.emit(entry, id.clone(), EventKind::Restarted, reason);
                    UpsertOutcome::Restarted { previous_epoch: old_epoch }
                } else {
                    match was {
                        Liveness::Offline => self.emit(
                            entry,
                            id.clone(),
                            EventKind::Recovered,
                            format!("heartbeat after {} offline", secs(silent)),
                        ),
                        Liveness::Suspect => self.emit(
                            entry,
                            id.clone(),
                            EventKind::Recovered,
                            format!("late heartbeat after {}", secs(silent)),
                        ),
                        Liveness::Stopped if !final_beat => {
                            self.emit(entry, id.clone(), EventKind::Recovered, "heartbeat after a graceful stop".into())
                        }
                        _ => {}
                    }
                    UpsertOutcome::Updated
                };
                if final_beat && was != Liveness::Stopped {
                    self.emit(entry, id, EventKind::Stopped, "stopped gracefully".into());
                }
                outcome
            }
        }
    }

    /// Counts a return from offline and damps the node if it keeps coming and going.
    fn note_return(&self, entry: &mut Entry<T>, now: Instant, id: &T::Id) {
        let t = self.thresholds();
        entry.returns.push_back(now);
        while entry.returns.front().is_some_and(|&at| now.saturating_duration_since(at) > t.flap_window) {
            entry.returns.pop_front();
        }
        if !entry.flapping && entry.returns.len() >= t.flap_limit {
            entry.flapping = true;
            let reason = format!(
                "came back from offline {} times within {}; unavailable until steady for {}",
                entry.returns.len(),
                secs(t.flap_window),
                secs(t.steady_after)
            );
            self.emit(entry, id.clone(), EventKind::Flapping, reason);
        }
    }

    fn emit(&self, entry: &mut Entry<T>, id: T::Id, kind: EventKind, reason: String) {
        let event = self.events.record(id, kind, entry.liveness, entry.payload.epoch(), reason);
        if entry.history.len() >= self.history_len {
            entry.history.pop_front();
        }
        entry.history.push_back(event);
    }

    /// Re-derives every node's liveness from the time since its last heartbeat and records
    /// the changes. Call it periodically (more often than `suspect_after`).
    /// Returns the number of nodes whose state changed.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let t = self.thresholds();
        let grace_from = *self.grace_from.read().unwrap_or_else(|p| p.into_inner());
        let may_declare_offline = now.saturating_duration_since(grace_from) >= t.startup_grace;
        let heard = self.heard_time(now);
        let mut changed = 0;
        for mut item in self.entries.iter_mut() {
            let id = item.key().clone();
            let entry = item.value_mut();
            let silent = Self::silence(entry, heard);
            if entry.liveness.is_up() && silent >= t.offline_after && may_declare_offline {
                entry.liveness = Liveness::Offline;
                self.emit(entry, id, EventKind::Offline, format!("no heartbeat for {}", secs(silent)));
                changed += 1;
            } else if entry.liveness == Liveness::Online && silent >= t.suspect_after {
                entry.liveness = Liveness::Suspect;
                self.emit(entry, id, EventKind::Suspect, format!("no heartbeat for {}", secs(silent)));
                changed += 1;
            } else if entry.flapping
                && entry.liveness == Liveness::Online
                && now.saturating_duration_since(entry.online_since) >= t.steady_after
            {
                entry.flapping = false;
                entry.returns.clear();
                let reason =
                    format!("beating steadily for {}", secs(now.saturating_duration_since(entry.online_since)));
                self.emit(entry, id, EventKind::Steady, reason);
                changed += 1;
            }
        }
        changed
    }

    /// Forgets nodes that have been offline or stopped for `remove_after`.
    pub fn cleanup_stale(&self) -> Vec<T::Id> {
        let now = Instant::now();
        let t = self.thresholds();
        let heard = self.heard_time(now);
        let mut removed = Vec::new();
        self.entries.retain(|id, entry| {
            let silent = Self::silence(entry, heard);
            let stale = !entry.liveness.is_up() && silent >= t.remove_after;
            if stale {
                self.events.record(
                    id.clone(),
                    EventKind::Removed,
                    entry.liveness,
                    entry.payload.epoch(),
                    format!("forgotten after {} without a heartbeat", secs(silent)),
                );
                removed.push(id.clone());
            }
            !stale
        });
        removed
    }

    /// Forgets one node now (an operator's decision); its events stay in the log.
    pub fn remove(&self, id: &T::Id) -> Option<NodeView<T>> {
        let heard = self.heard_time(Instant::now());
        let (id, entry) = self.entries.remove(id)?;
        self.events.record(id, EventKind::Removed, entry.liveness, entry.payload.epoch(), "removed by operator".into());
        Some(self.view(&entry, heard))
    }

    pub fn get(&self, id: &T::Id) -> Option<NodeView<T>> {
        let heard = self.heard_time(Instant::now());
        self.entries.get(id).map(|e| self.view(&e, heard))
    }

    /// Reads one node without cloning its payload (the heartbeat path's checks);
    /// `f` must not call back into this registry.
    pub fn inspect<R>(&self, id: &T::Id, f: impl FnOnce(NodeRef<'_, T>) -> R) -> Option<R> {
        let heard = self.heard_time(Instant::now());
        self.entries.get(id).map(|e| f(self.node_ref(&e, heard)))
    }

    pub fn contains(&self, id: &T::Id) -> bool {
        self.entries.contains_key(id)
    }

    /// Liveness changes of one node, oldest first.
    pub fn history(&self, id: &T::Id) -> Option<Vec<LivenessEvent<T::Id>>> {
        self.entries.get(id).map(|e| e.history.iter().cloned().collect())
    }

    fn wall(&self, at: Instant) -> SystemTime {
        self.created_wall + at.saturating_duration_since(self.created)
    }

    /// One node as callers see it, its silence measured against `heard` (the listening
    /// clock read once for a whole pass).
    fn node_ref<'a>(&self, e: &'a Entry<T>, heard: Duration) -> NodeRef<'a, T> {
        NodeRef {
            payload: &e.payload,
            liveness: e.liveness,
            available: e.available(),
            flapping: e.flapping,
            last_seen: self.wall(e.last_seen),
            silent_for: Self::silence(e, heard),
        }
    }

    fn view(&self, e: &Entry<T>, heard: Duration) -> NodeView<T> {
        let r = self.node_ref(e, heard);
        NodeView {
            payload: r.payload.clone(),
            liveness: r.liveness,
            available: r.available,
            flapping: r.flapping,
            last_seen: r.last_seen,
            silent_for: r.silent_for,
        }
    }

    /// Calls `f` for every node, in no particular order, without cloning payloads.
    /// `f` must not call back into this registry.
    pub fn visit(&self, mut f: impl FnMut(NodeRef<'_, T>)) {
        let heard = self.heard_time(Instant::now());
        for item in self.entries.iter() {
            f(self.node_ref(item.value(), heard));
        }
    }

    fn list_where(&self, keep: impl Fn(&Entry<T>) -> bool) -> Vec<NodeView<T>> {
        let heard = self.heard_time(Instant::now());
        let mut out: Vec<NodeView<T>> =
            self.entries.iter().filter(|e| keep(e.value())).map(|e| self.view(e.value(), heard)).collect();
        out.sort_by(|a, b| a.payload.id().cmp(b.payload.id()));
        out
    }

    /// Every node, sorted by id.
    pub fn list_all(&self) -> Vec<NodeView<T>> {
        self.list_where(|_| true)
    }

    /// Nodes presumed alive (online or suspect), sorted by id.
    pub fn list_online(&self) -> Vec<NodeView<T>> {
        self.list_where(|e| e.liveness.is_up())
    }

    /// Nodes that may be given new work, sorted by id.
    pub fn list_available(&self) -> Vec<NodeView<T>> {
        self.list_where(Entry::available)
    }

    pub fn count_online(&self) -> usize {
        self.entries.iter().filter(|e| e.liveness.is_up()).count()
    }

    pub fn count_available(&self) -> usize {
        self.entries.iter().filter(|e| e.available()).count()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The newest `limit` events of all nodes, oldest first.
    pub fn recent_events(&self, limit: usize) -> Vec<LivenessEvent<T::Id>> {
        self.events.recent(limit)
    }

    /// Events as they happen; a slow reader lags and skips, it never blocks the registry.
    pub fn subscribe(&self) -> broadcast::Receiver<LivenessEvent<T::Id>> {
        self.events.subscribe()
    }
}

#[cfg(test)]
mod tests;
