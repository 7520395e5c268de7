//! The control channels: one per hive, each the latest command (the hive's whole desired
//! set, and its shutdown phase order while the cluster shuts down) in a `watch`, so a hive
//! that reconnects gets the current one and one that falls behind skips to it; and the
//! ACKs the hives send back.
//!
//! A command id is `term << 32 | n`: the term is the leader's (its etcd leader key's
//! revision) or, alone, the store's count of queen starts, so ids never repeat across
//! restarts and leaders and a later leader's are larger. An ACK must name a command
//! this queen issued to that hive: a guessed or forged id changes nothing.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use contract::{CommandAck, CommandKind, HiveCommand, NodeId, PhaseOrder, WorkerLaunch};
use tokio::sync::watch;

/// One hive's channel: the latest command, what it asked for, the last ACK.
struct Channel {
    tx: watch::Sender<Arc<HiveCommand>>,
    desired: Vec<WorkerLaunch>,
    acked: Option<CommandAck>,
    /// The ids of the last commands sent on it, the ones an ACK may name.
    issued: VecDeque<u64>,
}

/// How many of a hive's recent command ids an ACK may name: a hive that falls behind skips
/// to the newest, so it ACKs one of the last few.
const ISSUED_KEPT: usize = 64;

impl Channel {
    fn new(command: HiveCommand, desired: Vec<WorkerLaunch>) -> (Self, watch::Receiver<Arc<HiveCommand>>) {
        let issued = VecDeque::from([command.id]);
        let (tx, rx) = watch::channel(Arc::new(command));
        (Self { tx, desired, acked: None, issued }, rx)
    }

    fn send(&mut self, command: HiveCommand, desired: Vec<WorkerLaunch>) {
        if self.issued.len() == ISSUED_KEPT {
            self.issued.pop_front();
        }
        self.issued.push_back(command.id);
        self.tx.send_replace(Arc::new(command));
        self.desired = desired;
    }
}

/// An ACK that names no command this queen sent that hive.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AckError {
    #[error("no control channel is open for {0}")]
    NoChannel(NodeId),
    #[error("command {id} was not issued to {hive} (its latest is {latest})")]
    NotIssued { hive: NodeId, id: u64, latest: u64 },
}

#[derive(Default)]
struct Inner {
    channels: BTreeMap<NodeId, Channel>,
    /// Each hive's order in the running cluster shutdown; carried in every command.
    phase_orders: BTreeMap<NodeId, PhaseOrder>,
}

pub struct Channels {
    inner: Mutex<Inner>,
    /// Hives are sent `Hold` rather than an empty set (see `CommandKind::Hold`).
    holding: std::sync::atomic::AtomicBool,
    /// Command ids grow across every hive's channel, so an ACK names one command exactly.
    next_command: AtomicU64,
    /// Woken by every ACK, so a shutdown phase ends as soon as its last ACK is in.
    pub acks: tokio::sync::Notify,
}

impl Default for Channels {
    fn default() -> Self {
        Self {
            inner: Mutex::default(),
            holding: std::sync::atomic::AtomicBool::new(false),
            next_command: AtomicU64::new(1),
            acks: tokio::sync::Notify::new(),
        }
    }
}

/// The first command id of `term`.
pub fn first_id(term: u64) -> u64 {
    (term << 32) | 1
}

impl Channels {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Numbers the commands from here on in `term`; never goes back (a term is only ever
    /// followed by a larger one).
    pub fn begin_term(&self, term: u64) {
        self.next_command.fetch_max(first_id(term), Ordering::SeqCst);
        // What an earlier term of this queen told the hives is stale now (replicas moved
        // under other leaders meanwhile); its streams ended when it stopped leading. Every
        // hive starts afresh, held until this term's first reconcile says what it runs.
        self.lock().channels.clear();
    }

    fn command(&self, inner: &Inner, hive: &NodeId, workers: Vec<WorkerLaunch>) -> HiveCommand {
        let shutdown = inner.phase_orders.get(hive).cloned();
        // Only "run nothing" is held back: a shutdown's phase orders and real work go out.
        let kind = if self.holding() && workers.is_empty() && shutdown.is_none() {
            CommandKind::Hold
        } else {
            CommandKind::Assign { workers, shutdown }
        };
        HiveCommand { id: self.next_command.fetch_add(1, Ordering::Relaxed), kind }
    }

    pub fn holding(&self) -> bool {
        self.holding.load(Ordering::SeqCst)
    }

    /// Holds back "run nothing" from every hive, or stops holding it back; a hive told to
    /// hold gets its set (an empty one, if so) at the next publish.
    pub fn set_holding(&self, on: bool) {
        self.holding.store(on, Ordering::SeqCst);
    }

    /// Sends `command` on `hive`'s channel, opening it if the hive never connected.
    fn send(inner: &mut Inner, hive: &NodeId, command: HiveCommand, desired: Vec<WorkerLaunch>) {
        match inner.channels.get_mut(hive) {
            Some(ch) => ch.send(command, desired),
            None => {
                inner.channels.insert(hive.clone(), Channel::new(command, desired).0);
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
            // A hive told to hold is sent its set once holding ends, even an unchanged one.
            let held = |ch: &Channel| matches!(ch.tx.borrow().kind, CommandKind::Hold);
            if inner.channels.get(&hive).is_some_and(|ch| ch.desired == want && (self.holding() || !held(ch))) {
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
        // Nothing decided for this hive yet (a queen just started or elected, before its
        // first reconcile): "run nothing" would stop every replica it runs, so it holds
        // until the set is published (which is sent even if it is empty).
        let hold = HiveCommand { id: self.next_command.fetch_add(1, Ordering::Relaxed), kind: CommandKind::Hold };
        let (channel, rx) = Channel::new(hold, Vec::new());
        inner.channels.insert(hive.clone(), channel);
        rx
    }

    /// Records `ack` if it names one of the last commands sent to `hive`.
    pub fn ack(&self, hive: &NodeId, ack: CommandAck) -> Result<(), AckError> {
        {
            let mut inner = self.lock();
            let ch = inner.channels.get_mut(hive).ok_or_else(|| AckError::NoChannel(hive.clone()))?;
            if !ch.issued.contains(&ack.command_id) {
                let latest = ch.issued.back().copied().unwrap_or_default();
                return Err(AckError::NotIssued { hive: hive.clone(), id: ack.command_id, latest });
            }
            if !ack.ok {
                tracing::warn!(%hive, command = ack.command_id, detail = %ack.detail, "hive could not apply a command");
            }
            // A late ACK of an older command does not replace a newer one's.
            if ch.acked.as_ref().is_none_or(|a| a.command_id <= ack.command_id) {
                ch.acked = Some(ack);
            }
        }
        self.acks.notify_waiters();
        Ok(())
    }

    /// Drops the channels nobody needs: of a hive the queen does not know (`known` says),
    /// with nothing asked of it and no stream open on it. Without this every control-channel
    /// request for a made-up id would leave an entry behind for good.
    pub fn prune(&self, known: impl Fn(&NodeId) -> bool) -> usize {
        let mut inner = self.lock();
        let Inner { channels, phase_orders } = &mut *inner;
        let before = channels.len();
        channels.retain(|hive, ch| {
            known(hive) || !ch.desired.is_empty() || ch.tx.receiver_count() > 0 || phase_orders.contains_key(hive)
        });
        before - channels.len()
    }

    /// How many channels are held.
    pub fn count(&self) -> usize {
        self.lock().channels.len()
    }

    /// The last ACK a hive sent.
    pub fn last_ack(&self, hive: &NodeId) -> Option<CommandAck> {
        self.lock().channels.get(hive).and_then(|c| c.acked.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::sanitized(s)
    }

    fn ack(command_id: u64) -> CommandAck {
        CommandAck { command_id, ok: true, detail: String::new() }
    }

    #[test]
    fn an_ack_must_name_a_command_sent_to_that_hive() {
        let channels = Channels::default();
        channels.begin_term(7);
        let (h1, h2) = (id("h1"), id("h2"));
        let first = channels.subscribe(&h1).borrow().id;
        assert_eq!(first, first_id(7), "numbered in the term");
        let other = channels.subscribe(&h2).borrow().id;

        assert_eq!(
            channels.ack(&h1, ack(u64::MAX)),
            Err(AckError::NotIssued { hive: h1.clone(), id: u64::MAX, latest: first })
        );
        assert_eq!(
            channels.ack(&h1, ack(first + 1000)).map_err(|_| ()),
            Err(()),
            "not 'at least': a later id is forged"
        );
        assert!(channels.ack(&h1, ack(other)).is_err(), "another hive's command");
        assert_eq!(channels.ack(&id("h3"), ack(first)), Err(AckError::NoChannel(id("h3"))));
        assert_eq!(channels.last_ack(&h1), None, "nothing refused was recorded");

        assert_eq!(channels.ack(&h1, ack(first)), Ok(()));
        assert_eq!(channels.last_ack(&h1).map(|a| a.command_id), Some(first));
    }

    #[test]
    fn command_ids_never_repeat_across_terms_and_a_late_ack_does_not_win() {
        let channels = Channels::default();
        channels.begin_term(1);
        let h1 = id("h1");
        let rx = channels.subscribe(&h1);
        let old = rx.borrow().id;
        channels.publish(BTreeMap::from([(h1.clone(), vec![])]));
        channels.order_phase(std::slice::from_ref(&h1), PhaseOrder { phase: contract::Phase::Gate, deadline_ms: 0 });
        let newer = rx.borrow().id;
        assert!(newer > old);
        channels.begin_term(2);
        channels.begin_term(1);
        let ids = channels.order_phase(std::slice::from_ref(&h1), test_order());
        assert!(ids[&h1] >= first_id(2), "a later term's ids are larger, and a term never goes back");
        assert_eq!(channels.ack(&h1, ack(ids[&h1])), Ok(()));
        assert!(channels.ack(&h1, ack(old)).is_err(), "an earlier term's command is no longer one to ACK");
        assert_eq!(channels.last_ack(&h1).map(|a| a.command_id), Some(ids[&h1]), "the late ACK did not replace it");
    }

    /// A hive that connects before this queen has placed anything (just started, just
    /// elected) is told to hold, never to run nothing; the first published set follows
    /// even when it is empty.
    #[test]
    fn a_hive_heard_before_the_first_reconcile_holds_until_it_is_told() {
        let channels = Channels::default();
        channels.begin_term(3);
        let h1 = id("h1");
        let mut rx = channels.subscribe(&h1);
        assert!(matches!(rx.borrow_and_update().kind, CommandKind::Hold));
        channels.publish(BTreeMap::from([(h1.clone(), vec![launch("w1")])]));
        assert!(matches!(&rx.borrow_and_update().kind, CommandKind::Assign { workers, .. } if workers.len() == 1));
        // A new term starts every hive afresh: held again until that term publishes.
        channels.begin_term(4);
        let mut rx = channels.subscribe(&h1);
        assert!(matches!(rx.borrow_and_update().kind, CommandKind::Hold), "not the last term's set");
        channels.publish(BTreeMap::new());
        assert!(
            matches!(&rx.borrow_and_update().kind, CommandKind::Assign { workers, .. } if workers.is_empty()),
            "an empty set, decided, is sent"
        );
    }

    #[test]
    fn channels_of_unknown_hives_with_nothing_to_say_go() {
        let channels = Channels::default();
        for i in 0..100 {
            drop(channels.subscribe(&id(&format!("made-up-{i}"))));
        }
        let held = channels.subscribe(&id("listening"));
        channels.publish(BTreeMap::from([(id("has-work"), vec![launch("w1")])]));
        drop(channels.subscribe(&id("known")));
        assert_eq!(channels.count(), 103);
        assert_eq!(channels.prune(|h| h.as_str() == "known"), 100);
        assert_eq!(channels.count(), 3, "the known hive, the one with work, the one with a stream open");
        drop(held);
        assert_eq!(channels.prune(|h| h.as_str() == "known"), 1);
    }

    fn launch(name: &str) -> WorkerLaunch {
        WorkerLaunch {
            name: id(name),
            deployment: id("web"),
            command: "true".into(),
            args: vec![],
            env: BTreeMap::new(),
            max_restarts: None,
            process: Default::default(),
            probes: Default::default(),
            logs: None,
            resources: None,
        }
    }

    fn test_order() -> PhaseOrder {
        PhaseOrder { phase: contract::Phase::Drain, deadline_ms: 1000 }
    }
}
