//! The control channels: one per hive, each the latest command (the hive's whole desired
//! set, and its shutdown phase order while the cluster shuts down) in a `watch`, so a hive
//! that reconnects gets the current one and one that falls behind skips to it; and the
//! ACKs the hives send back.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use contract::{CommandAck, CommandKind, HiveCommand, NodeId, PhaseOrder, WorkerLaunch};
use tokio::sync::watch;

/// One hive's channel: the latest command, what it asked for, the last ACK.
struct Channel {
    tx: watch::Sender<Arc<HiveCommand>>,
    desired: Vec<WorkerLaunch>,
    acked: Option<CommandAck>,
}

#[derive(Default)]
struct Inner {
    channels: BTreeMap<NodeId, Channel>,
    /// Each hive's order in the running cluster shutdown; carried in every command.
    phase_orders: BTreeMap<NodeId, PhaseOrder>,
}

pub struct Channels {
    inner: Mutex<Inner>,
    /// Command ids grow across every hive's channel, so an ACK names one command exactly.
    next_command: AtomicU64,
    /// Woken by every ACK, so a shutdown phase ends as soon as its last ACK is in.
    pub acks: tokio::sync::Notify,
}

impl Default for Channels {
    fn default() -> Self {
        Self { inner: Mutex::default(), next_command: AtomicU64::new(1), acks: tokio::sync::Notify::new() }
    }
}

impl Channels {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn command(&self, inner: &Inner, hive: &NodeId, workers: Vec<WorkerLaunch>) -> HiveCommand {
        HiveCommand {
            id: self.next_command.fetch_add(1, Ordering::Relaxed),
            kind: CommandKind::Assign { workers, shutdown: inner.phase_orders.get(hive).cloned() },
        }
    }

    /// Sends `command` on `hive`'s channel, opening it if the hive never connected.
    fn send(inner: &mut Inner, hive: &NodeId, command: HiveCommand, desired: Vec<WorkerLaunch>) {
        match inner.channels.get_mut(hive) {
            Some(ch) => {
                ch.tx.send_replace(Arc::new(command));
                ch.desired = desired;
            }
            None => {
                let (tx, _) = watch::channel(Arc::new(command));
                inner.channels.insert(hive.clone(), Channel { tx, desired, acked: None });
            }
        }
    }

    /// Tells each hive whose desired set changed its new set; hives that hold a channel
    /// and are not in `desired` are told to run nothing.
    pub fn publish(&self, mut desired: BTreeMap<NodeId, Vec<WorkerLaunch>>) {
        let mut inner = self.lock();
        let hives: BTreeSet<NodeId> = inner.channels.keys().cloned().chain(desired.keys().cloned()).collect();
        for hive in hives {
            let want = desired.remove(&hive).unwrap_or_default();
            if inner.channels.get(&hive).is_some_and(|ch| ch.desired == want) {
                continue;
            }
            let command = self.command(&inner, &hive, want.clone());
            Self::send(&mut inner, &hive, command, want);
        }
    }

    /// Sends `order` to each of `hives` (in their desired state, beside their workers)
    /// and returns the id of the command each must ACK.
    pub fn order_phase(&self, hives: &[NodeId], order: PhaseOrder) -> BTreeMap<NodeId, u64> {
        let mut inner = self.lock();
        for h in hives {
            inner.phase_orders.insert(h.clone(), order.clone());
        }
        let mut ids = BTreeMap::new();
        for h in hives {
            let workers = inner.channels.get(h).map(|c| c.desired.clone()).unwrap_or_default();
            let command = self.command(&inner, h, workers.clone());
            ids.insert(h.clone(), command.id);
            Self::send(&mut inner, h, command, workers);
        }
        ids
    }

    /// The command stream of one hive, starting with its current desired set.
    pub fn subscribe(&self, hive: &NodeId) -> watch::Receiver<Arc<HiveCommand>> {
        let mut inner = self.lock();
        if let Some(ch) = inner.channels.get(hive) {
            return ch.tx.subscribe();
        }
        let (tx, rx) = watch::channel(Arc::new(self.command(&inner, hive, Vec::new())));
        inner.channels.insert(hive.clone(), Channel { tx, desired: Vec::new(), acked: None });
        rx
    }

    pub fn ack(&self, hive: &NodeId, ack: CommandAck) {
        if !ack.ok {
            tracing::warn!(%hive, command = ack.command_id, detail = %ack.detail, "hive could not apply a command");
        }
        if let Some(ch) = self.lock().channels.get_mut(hive) {
            ch.acked = Some(ack);
        }
        self.acks.notify_waiters();
    }

    /// The last ACK a hive sent.
    pub fn last_ack(&self, hive: &NodeId) -> Option<CommandAck> {
        self.lock().channels.get(hive).and_then(|c| c.acked.clone())
    }
}
