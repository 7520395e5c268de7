//! Registry behaviour under a paused tokio clock: no real sleeps anywhere.

use std::sync::Arc;
use std::time::Duration;

use super::*;

#[derive(Clone, Debug)]
struct Beat {
    id: String,
    epoch: u64,
    seq: u64,
    ready: bool,
    last: bool,
}

impl HeartbeatPayload for Beat {
    type Id = String;
    fn id(&self) -> &String {
        &self.id
    }
    fn epoch(&self) -> u64 {
        self.epoch
    }
    fn seq(&self) -> u64 {
        self.seq
    }
    fn accepts_work(&self) -> bool {
        self.ready
    }
    fn is_final(&self) -> bool {
        self.last
    }
}

fn beat(id: &str, epoch: u64, seq: u64) -> Beat {
    Beat { id: id.into(), epoch, seq, ready: true, last: false }
}

const INTERVAL: Duration = Duration::from_secs(10);

/// 10 s interval: suspect at 20 s, offline at 30 s, grace 30 s.
fn registry() -> HeartbeatRegistry<Beat> {
    HeartbeatRegistry::new(Thresholds::for_interval(INTERVAL, None).expect("valid thresholds"))
}

fn kinds(r: &HeartbeatRegistry<Beat>, id: &str) -> Vec<EventKind> {
    r.history(&id.to_string()).expect("known node").iter().map(|e| e.kind).collect()
}

fn liveness(r: &HeartbeatRegistry<Beat>, id: &str) -> Liveness {
    r.get(&id.to_string()).expect("known node").liveness
}

#[tokio::test(start_paused = true)]
async fn stale_and_replayed_heartbeats_change_nothing() {
    let r = registry();
    assert_eq!(r.upsert(beat("a", 2, 5)), UpsertOutcome::Joined);
    assert_eq!(r.upsert(beat("a", 2, 5)), UpsertOutcome::Stale, "replay of the same seq");
    assert_eq!(r.upsert(beat("a", 2, 4)), UpsertOutcome::Stale, "late packet");
    assert_eq!(r.upsert(beat("a", 1, 99)), UpsertOutcome::Stale, "older epoch, however high its seq");
    assert_eq!(r.get(&"a".into()).expect("present").payload.seq, 5);
    assert_eq!(r.upsert(beat("a", 2, 6)), UpsertOutcome::Updated);
    assert_eq!(r.get(&"a".into()).expect("present").payload.seq, 6);
    assert_eq!(kinds(&r, "a"), vec![EventKind::Joined]);
}

#[tokio::test(start_paused = true)]
async fn stale_heartbeat_does_not_refresh_liveness() {
    let r = registry();
    r.upsert(beat("a", 1, 5));
    tokio::time::advance(Duration::from_secs(25)).await;
    r.upsert(beat("a", 1, 3));
    r.sweep();
    assert_eq!(liveness(&r, "a"), Liveness::Suspect, "a replay must not count as a sign of life");
}

#[tokio::test(start_paused = true)]
async fn silence_makes_a_node_suspect_then_offline_with_a_reason() {
    let r = registry();
    r.upsert(beat("a", 1, 1));
    tokio::time::advance(Duration::from_secs(19)).await;
    r.sweep();
    assert_eq!(liveness(&r, "a"), Liveness::Online);
    tokio::time::advance(Duration::from_secs(2)).await;
    r.sweep();
    assert_eq!(liveness(&r, "a"), Liveness::Suspect);
    assert_eq!(r.count_online(), 1, "suspect still counts as up");
    assert_eq!(r.count_available(), 0, "suspect gets no new work");
    tokio::time::advance(Duration::from_secs(10)).await;
    r.sweep();
    assert_eq!(liveness(&r, "a"), Liveness::Offline);
    assert_eq!(r.count_online(), 0);
    let history = r.history(&"a".into()).expect("known");
    let last = history.last().expect("events");
    assert_eq!(last.kind, EventKind::Offline);
    assert_eq!(last.reason, "no heartbeat for 31 s");
    assert_eq!(kinds(&r, "a"), vec![EventKind::Joined, EventKind::Suspect, EventKind::Offline]);
}

#[tokio::test(start_paused = true)]
async fn nobody_is_declared_offline_during_the_startup_grace() {
    let mut t = Thresholds::for_interval(INTERVAL, None).expect("valid");
    t.startup_grace = Duration::from_secs(60);
    let r = HeartbeatRegistry::<Beat>::new(t);
    r.upsert(beat("a", 1, 1));
    tokio::time::advance(Duration::from_secs(45)).await;
    r.sweep();
    assert_eq!(liveness(&r, "a"), Liveness::Suspect, "held back by the grace period");
    tokio::time::advance(Duration::from_secs(16)).await;
    r.sweep();
    assert_eq!(liveness(&r, "a"), Liveness::Offline);
}

#[tokio::test(start_paused = true)]
async fn a_new_epoch_is_reported_as_a_restart() {
    let r = registry();
    r.upsert(beat("a", 4, 10));
    assert_eq!(r.upsert(beat("a", 5, 1)), UpsertOutcome::Restarted { previous_epoch: 4 });
    let history = r.history(&"a".into()).expect("known");
    assert_eq!(history.last().expect("event").reason, "restarted (new epoch)");
    assert_eq!(history.last().expect("event").epoch, 5, "the number stays beside the words");
    assert_eq!(r.get(&"a".into()).expect("present").payload.seq, 1, "seq restarts with the epoch");
}

#[tokio::test(start_paused = true)]
async fn a_returning_node_recovers() {
    let r = registry();
    r.upsert(beat("a", 1, 1));
    tokio::time::advance(Duration::from_secs(40)).await;
    r.sweep();
    assert_eq!(liveness(&r, "a"), Liveness::Offline);
    r.upsert(beat("a", 1, 2));
    assert_eq!(liveness(&r, "a"), Liveness::Online);
    let history = r.history(&"a".into()).expect("known");
    let last = history.last().expect("event");
    assert_eq!((last.kind, last.reason.as_str()), (EventKind::Recovered, "heartbeat after 40 s offline"));
}

#[tokio::test(start_paused = true)]
async fn a_final_heartbeat_stops_the_node_at_once() {
    let r = registry();
    r.upsert(beat("a", 1, 1));
    r.upsert(beat("b", 1, 1));
    assert_eq!(r.count_online(), 2);
    r.upsert(Beat { last: true, ..beat("a", 1, 2) });
    assert_eq!(liveness(&r, "a"), Liveness::Stopped);
    assert_eq!(r.count_online(), 1, "gone without waiting for the offline threshold");
    tokio::time::advance(Duration::from_secs(100)).await;
    r.sweep();
    assert_eq!(liveness(&r, "a"), Liveness::Stopped, "a stopped node is not later called offline");
    assert_eq!(kinds(&r, "a"), vec![EventKind::Joined, EventKind::Stopped]);
}

#[tokio::test(start_paused = true)]
async fn a_flapping_node_is_damped_until_it_is_steady() {
    let r = registry();
    let t = r.thresholds();
    let mut seq = 0;
    let mut next = || {
        seq += 1;
        beat("a", 1, seq)
    };
    r.upsert(next());
    for _ in 0..t.flap_limit {
        tokio::time::advance(t.offline_after + Duration::from_secs(1)).await;
        r.sweep();
        assert_eq!(liveness(&r, "a"), Liveness::Offline);
        r.upsert(next());
    }
    let view = r.get(&"a".into()).expect("present");
    assert!(view.flapping);
    assert_eq!(view.liveness, Liveness::Online);
    assert!(!view.available, "a flapping node gets no work");
    assert_eq!(r.count_available(), 0);
    assert!(kinds(&r, "a").contains(&EventKind::Flapping));

    // Beat steadily for `steady_after`.
    let mut waited = Duration::ZERO;
    while waited < t.steady_after {
        tokio::time::advance(INTERVAL).await;
        waited += INTERVAL;
        r.upsert(next());
        r.sweep();
    }
    let view = r.get(&"a".into()).expect("present");
    assert!(!view.flapping);
    assert!(view.available);
    assert_eq!(kinds(&r, "a").last(), Some(&EventKind::Steady));
}

#[tokio::test(start_paused = true)]
async fn availability_follows_what_the_node_says() {
    let r = registry();
    r.upsert(beat("a", 1, 1));
    r.upsert(Beat { ready: false, ..beat("b", 1, 1) });
    assert_eq!(r.count_online(), 2);
    assert_eq!(r.count_available(), 1);
    let ids: Vec<String> = r.list_available().into_iter().map(|v| v.payload.id).collect();
    assert_eq!(ids, vec!["a".to_string()]);
    let all: Vec<String> = r.list_all().into_iter().map(|v| v.payload.id).collect();
    assert_eq!(all, vec!["a".to_string(), "b".to_string()], "sorted by id");
}

#[tokio::test(start_paused = true)]
async fn cleanup_forgets_long_dead_nodes_and_remove_forgets_one() {
    let r = registry();
    let t = r.thresholds();
    r.upsert(beat("dead", 1, 1));
    r.upsert(beat("gone", 1, 1));
    tokio::time::advance(t.offline_after + Duration::from_secs(1)).await;
    r.sweep();
    r.upsert(beat("live", 1, 1));
    assert!(r.cleanup_stale().is_empty(), "offline, but not long enough to forget");
    tokio::time::advance(t.remove_after).await;
    r.upsert(beat("live", 1, 2));
    r.sweep();
    let mut removed = r.cleanup_stale();
    removed.sort();
    assert_eq!(removed, vec!["dead".to_string(), "gone".to_string()]);
    assert_eq!(r.len(), 1);
    assert!(r.remove(&"live".into()).is_some());
    assert!(r.is_empty());
    let log = r.recent_events(10);
    let last = log.last().expect("events");
    assert_eq!((last.kind, last.reason.as_str()), (EventKind::Removed, "removed by operator"));
}

#[tokio::test(start_paused = true)]
async fn history_is_bounded() {
    let r = registry();
    let t = r.thresholds();
    for epoch in 1..=(t.history_len as u64 * 2) {
        r.upsert(beat("a", epoch, 1));
    }
    assert_eq!(r.history(&"a".into()).expect("known").len(), t.history_len);
}

#[tokio::test(start_paused = true)]
async fn subscribers_see_events_as_they_happen() {
    let r = registry();
    let mut rx = r.subscribe();
    r.upsert(beat("a", 1, 1));
    let event = rx.recv().await.expect("an event");
    assert_eq!((event.id.as_str(), event.kind), ("a", EventKind::Joined));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_upserts_keep_the_newest_heartbeat_of_every_node() {
    let r = Arc::new(registry());
    let nodes = 64u64;
    let seqs = 200u64;
    let tasks = 8u64;
    let mut handles = Vec::new();
    for t in 0..tasks {
        let r = Arc::clone(&r);
        handles.push(tokio::spawn(async move {
            // Every task sends every heartbeat of its share of seqs, in an order that
            // interleaves differently per task, so the same node is hit concurrently.
            for s in (0..seqs).filter(|s| s % tasks == t) {
                for n in 0..nodes {
                    r.upsert(beat(&format!("n{n}"), 1, s + 1));
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    for h in handles {
        h.await.expect("task did not panic");
    }
    assert_eq!(r.len() as u64, nodes);
    for view in r.list_all() {
        assert_eq!(view.payload.seq, seqs, "{} kept an older heartbeat", view.payload.id);
    }
    assert_eq!(r.recent_events(10_000).len() as u64, nodes, "exactly one Joined per node");
}

mod ordering {
    use proptest::prelude::*;

    use super::*;

    /// One heartbeat of a random sequence: which of three nodes, its epoch and seq in small
    /// ranges (so repeats, replays and restarts are common), and whether it is a goodbye.
    fn beats() -> impl Strategy<Value = Vec<(u8, u64, u64, bool)>> {
        proptest::collection::vec((0u8..3, 0u64..4, 0u64..6, proptest::bool::weighted(0.1)), 1..60)
    }

    proptest! {
        /// Against a model that keeps the highest (epoch, seq) per node: every outcome is
        /// the one the ordering rules say, the registry holds exactly the model's heartbeat,
        /// and a goodbye that is not stale leaves the node stopped.
        #[test]
        fn upserts_follow_epoch_then_seq(beats in beats()) {
            let r = registry();
            let mut model: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
            for (node, epoch, seq, last) in beats {
                let id = format!("n{node}");
                let expected = match model.get(&id) {
                    None => UpsertOutcome::Joined,
                    Some(&held) if (epoch, seq) <= held => UpsertOutcome::Stale,
                    Some(&(held_epoch, _)) if epoch > held_epoch => UpsertOutcome::Restarted { previous_epoch: held_epoch },
                    Some(_) => UpsertOutcome::Updated,
                };
                let outcome = r.upsert(Beat { id: id.clone(), epoch, seq, ready: true, last });
                prop_assert_eq!(outcome, expected);
                if outcome != UpsertOutcome::Stale {
                    model.insert(id.clone(), (epoch, seq));
                }
                let held = r.get(&id).expect("a node that sent anything is known");
                prop_assert_eq!((held.payload.epoch, held.payload.seq), model[&id]);
                if last && outcome != UpsertOutcome::Stale {
                    prop_assert_eq!(held.liveness, Liveness::Stopped);
                }
            }
            prop_assert_eq!(r.list_all().len(), model.len());
        }
    }
}

/// The queen's scenario at small scale: 2 s interval, offline after 6 s, the owner paused
/// for 10 s. `listening` is whether the registry measures silence on a listening clock.
/// Returns the nodes declared offline by the first sweep after the pause, and when (in
/// real time after its last heartbeat) the node that really died was declared offline.
async fn paused_owner(listening: bool) -> (Vec<String>, Option<Duration>) {
    let interval = Duration::from_secs(2);
    let r = HeartbeatRegistry::<Beat>::new(Thresholds::for_interval(interval, None).expect("valid"));
    let probe = Arc::new(Listening::new(Duration::from_millis(100), Duration::from_millis(200)));
    if listening {
        r.listen_with(Arc::clone(&probe));
    }
    // Past the startup grace, everyone beating.
    let (mut seq, mut t) = (0, Duration::ZERO);
    let beat_all = |r: &HeartbeatRegistry<Beat>, seq: u64, ids: &[&str]| {
        for id in ids {
            r.upsert(beat(id, 1, seq));
        }
    };
    while t < Duration::from_secs(8) {
        seq += 1;
        beat_all(&r, seq, &["alive", "dies"]);
        for _ in 0..20 {
            tokio::time::advance(Duration::from_millis(100)).await;
            probe.tick();
            r.sweep();
        }
        t += interval;
    }
    let died_at = Instant::now();
    // Paused for 10 s: no tick, no sweep, no heartbeat taken in.
    tokio::time::advance(Duration::from_secs(10)).await;
    r.sweep();
    let first: Vec<String> =
        ["alive", "dies"].into_iter().filter(|id| liveness(&r, id) == Liveness::Offline).map(str::to_string).collect();
    // Listening again: the queued heartbeats of the live node arrive, the dead one stays
    // silent; the probe ticks (late once), sweeps run.
    probe.tick();
    let mut offline_after = None;
    for _ in 0..100 {
        seq += 1;
        beat_all(&r, seq, &["alive"]);
        for _ in 0..20 {
            tokio::time::advance(Duration::from_millis(100)).await;
            probe.tick();
            r.sweep();
            if offline_after.is_none() && liveness(&r, "dies") == Liveness::Offline {
                offline_after = Some(Instant::now() - died_at);
            }
        }
        if offline_after.is_some() {
            break;
        }
    }
    assert_eq!(liveness(&r, "alive"), Liveness::Online, "the live node stays online");
    (first, offline_after)
}

#[tokio::test(start_paused = true)]
async fn a_paused_owner_declares_nobody_offline_and_the_really_dead_on_time_after() {
    let (first, dead_after) = paused_owner(true).await;
    assert!(first.is_empty(), "nobody judged on silence the owner could not hear: {first:?}");
    // Its last beat was 2 s (one interval) before the pause at most; 6 s of listening
    // silence, plus the 10 s pause, less the 0.3 s of it ordinary scheduling covers.
    let dead_after = dead_after.expect("the dead node is declared offline");
    assert!(
        dead_after >= Duration::from_secs(10) + Duration::from_millis(3_700)
            && dead_after <= Duration::from_secs(10) + Duration::from_secs(6) + Duration::from_millis(500),
        "declared offline {dead_after:?} after the pause began"
    );
}

#[tokio::test(start_paused = true)]
async fn without_a_listening_clock_a_pause_kills_everyone() {
    let (first, _) = paused_owner(false).await;
    assert_eq!(first, ["alive", "dies"], "the failure the listening clock is for");
}
