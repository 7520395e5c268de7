//! The planner on small clusters built by hand: no store, no registry, no clock.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use contract::{Assignment, AssignmentState, DeploymentSpec, EventKind, NodeId, PlacementStrategy};
use heartbeat_registry::Liveness;
use time::OffsetDateTime;

use super::*;
use crate::placement::{Candidate, Placer};
use crate::store::{DeploymentRecord, DrainRecord};

fn id(s: &str) -> NodeId {
    NodeId::new(s).expect("valid id")
}

fn at(s: i64) -> OffsetDateTime {
    OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(1_800_000_000 + s)
}

const ORPHAN_AFTER: Duration = Duration::from_secs(60);

/// A test cluster: deployments, hives, workers heartbeating as available, and the
/// placement carried from one pass to the next.
struct World {
    deployments: BTreeMap<NodeId, DeploymentRecord>,
    ineligible: BTreeSet<NodeId>,
    hives: BTreeMap<NodeId, HiveView>,
    available: BTreeSet<NodeId>,
    failing: BTreeSet<NodeId>,
    grace_over: bool,
    placement: Placement,
}

impl World {
    fn new(strategy: PlacementStrategy) -> Self {
        Self {
            deployments: BTreeMap::new(),
            ineligible: BTreeSet::new(),
            hives: BTreeMap::new(),
            available: BTreeSet::new(),
            failing: BTreeSet::new(),
            grace_over: true,
            placement: Placement {
                assignments: BTreeMap::new(),
                drains: BTreeMap::new(),
                placer: Placer::with_seed(strategy, 3),
            },
        }
    }

    fn deploy(mut self, name: &str, replicas: u32, labels: &[(&str, &str)]) -> Self {
        let spec = DeploymentSpec {
            labels_required: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..DeploymentSpec::new(id(name), "worker", replicas)
        };
        self.deployments.insert(id(name), DeploymentRecord::new(spec, at(0)));
        self
    }

    fn hive(mut self, name: &str, max: u32, labels: &[(&str, &str)]) -> Self {
        let candidate = Candidate {
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            cpu_percent: 10.0,
            memory_percent: 10.0,
            ..Candidate::slots(id(name), max)
        };
        let view = HiveView {
            liveness: Liveness::Online,
            silent_for: Duration::ZERO,
            processes: 0,
            epoch: 1,
            candidate: Some(candidate),
        };
        self.hives.insert(id(name), view);
        self
    }

    /// The hive stops answering: offline (or `liveness`), silent for `silent`, no longer a
    /// candidate.
    fn silence(&mut self, name: &str, liveness: Liveness, silent: Duration) {
        let v = self.hives.get_mut(&id(name)).expect("known hive");
        v.liveness = liveness;
        v.silent_for = silent;
        v.candidate = None;
    }

    fn pass(&mut self, now: OffsetDateTime) -> Plan {
        let observed = Observed {
            hives: &self.hives,
            workers: &self.available,
            failing: &self.failing,
            grace_over: self.grace_over,
            orphan_after: ORPHAN_AFTER,
        };
        let plan = plan(&self.deployments, &self.ineligible, &self.placement, &observed, now);
        self.placement = plan.next.clone();
        for d in &plan.batch.put_deployments {
            self.deployments.insert(d.spec.name.clone(), d.clone());
        }
        plan
    }

    fn on(&self, hive: &str) -> Vec<String> {
        self.placement
            .assignments
            .values()
            .filter(|a| a.hive.as_ref() == Some(&id(hive)))
            .map(|a| a.worker.to_string())
            .collect()
    }

    fn slot(&self, key: &str) -> &Assignment {
        &self.placement.assignments[&id(key)]
    }

    fn drain(&mut self, hive: &str, deadline: OffsetDateTime) {
        self.ineligible.insert(id(hive));
        self.placement.drains.insert(id(hive), drain_record(deadline, None));
    }

    /// The hive drains itself on its way down: no operator's mark.
    fn own_drain(&mut self, hive: &str, deadline: OffsetDateTime) {
        let epoch = self.hives[&id(hive)].epoch;
        self.placement.drains.insert(id(hive), drain_record(deadline, Some(epoch)));
    }
}

fn drain_record(deadline: OffsetDateTime, own_epoch: Option<u64>) -> DrainRecord {
    DrainRecord {
        started_at: at(0),
        deadline,
        moved: BTreeSet::new(),
        cancelled: false,
        done: false,
        notes: vec![],
        own_epoch,
    }
}

fn kinds(plan: &Plan) -> Vec<(String, EventKind)> {
    plan.decisions.iter().map(|d| (d.id.to_string(), d.kind)).collect()
}

#[test]
fn new_slots_are_created_placed_and_written_in_one_batch() {
    let mut w = World::new(PlacementStrategy::LeastWorkers).hive("a", 4, &[]).hive("b", 4, &[]).deploy("web", 3, &[]);
    let plan = w.pass(at(1));
    assert_eq!(plan.batch.put_assignments.len(), 3);
    assert!(plan.batch.delete_assignments.is_empty());
    assert_eq!(w.on("a").len() + w.on("b").len(), 3);
    assert!(w.on("a").len().abs_diff(w.on("b").len()) <= 1, "least_workers spreads them");
    assert!(kinds(&plan).iter().all(|(_, k)| *k == EventKind::Placed));
    assert!(w.placement.assignments.values().all(|a| a.state == AssignmentState::Placed && a.since == at(1)));
}

#[test]
fn a_settled_cluster_plans_nothing() {
    let mut w = World::new(PlacementStrategy::RoundRobin).hive("a", 4, &[]).deploy("web", 2, &[]);
    w.pass(at(1));
    let again = w.pass(at(2));
    assert!(again.batch.is_empty(), "{:?}", again.batch);
    assert!(again.decisions.is_empty());
}

#[test]
fn scaling_down_and_deleting_drop_the_extra_slots() {
    let mut w =
        World::new(PlacementStrategy::RoundRobin).hive("a", 8, &[]).deploy("web", 3, &[]).deploy("batch", 1, &[]);
    w.pass(at(1));
    w = w.deploy("web", 1, &[]);
    w.deployments.remove(&id("batch"));
    let plan = w.pass(at(2));
    let mut dropped: Vec<String> = plan.batch.delete_assignments.iter().map(|n| n.to_string()).collect();
    dropped.sort();
    assert_eq!(dropped, ["batch-0", "web-1", "web-2"]);
    assert_eq!(w.on("a"), ["web-0"]);
}

#[test]
fn no_room_is_pending_and_said_once() {
    let mut w = World::new(PlacementStrategy::LeastWorkers).hive("a", 1, &[]).deploy("web", 2, &[]);
    let first = w.pass(at(1));
    assert_eq!(kinds(&first).iter().filter(|(_, k)| *k == EventKind::Pending).count(), 1);
    assert_eq!(w.slot("web-1").state, AssignmentState::Pending);
    let second = w.pass(at(2));
    assert!(second.decisions.is_empty(), "pending is not repeated every pass: {:?}", second.decisions);
    // Room appears: it is placed at once.
    w = w.hive("b", 1, &[]);
    let third = w.pass(at(3));
    assert_eq!(kinds(&third), [("web-1".to_string(), EventKind::Placed)]);
    assert_eq!(w.on("b"), ["web-1"]);
}

#[test]
fn labels_and_ineligibility_restrict_placement() {
    let mut w = World::new(PlacementStrategy::RoundRobin)
        .hive("cpu", 8, &[])
        .hive("gpu", 8, &[("gpu", "yes")])
        .hive("gpu2", 8, &[("gpu", "yes")])
        .deploy("train", 4, &[("gpu", "yes")]);
    w.ineligible.insert(id("gpu2"));
    w.pass(at(1));
    assert_eq!(w.on("gpu").len(), 4);
    assert!(w.on("cpu").is_empty() && w.on("gpu2").is_empty());
}

#[test]
fn capacity_counts_what_hives_already_hold() {
    let mut w = World::new(PlacementStrategy::RoundRobin).hive("a", 2, &[]).deploy("web", 2, &[]);
    w.pass(at(1));
    w = w.deploy("more", 1, &[]);
    w.pass(at(2));
    assert_eq!(w.slot("more-0").state, AssignmentState::Pending, "a is full with web's two");
}

#[test]
fn an_offline_hive_loses_its_replicas_only_past_the_orphan_threshold() {
    let mut w = World::new(PlacementStrategy::LeastWorkers).hive("a", 4, &[]).hive("b", 4, &[]).deploy("web", 2, &[]);
    w.pass(at(1));
    let on_a = w.on("a");
    assert_eq!(on_a.len(), 1);
    w.silence("a", Liveness::Offline, ORPHAN_AFTER - Duration::from_secs(1));
    assert!(w.pass(at(2)).batch.is_empty(), "not yet");
    w.silence("a", Liveness::Offline, ORPHAN_AFTER);
    let plan = w.pass(at(3));
    assert!(kinds(&plan).contains(&(on_a[0].clone(), EventKind::Orphaned)));
    assert!(kinds(&plan).contains(&(on_a[0].clone(), EventKind::Placed)), "and placed again in the same pass");
    assert_eq!(w.on("b").len(), 2);
    assert_eq!(w.slot(&on_a[0]).moves, 1);
}

#[test]
fn a_stopped_hive_loses_its_replicas_at_once() {
    let mut w = World::new(PlacementStrategy::LeastWorkers).hive("a", 4, &[]).hive("b", 4, &[]).deploy("web", 2, &[]);
    w.pass(at(1));
    w.silence("a", Liveness::Stopped, Duration::from_secs(1));
    let plan = w.pass(at(2));
    let orphaned: Vec<_> = plan.decisions.iter().filter(|d| d.kind == EventKind::Orphaned).collect();
    assert_eq!(orphaned.len(), 1);
    assert!(orphaned[0].reason.contains("stopped"), "{}", orphaned[0].reason);
}

#[test]
fn the_brake_holds_when_most_hives_look_dead() {
    let mut w = World::new(PlacementStrategy::RoundRobin).hive("a", 4, &[]).hive("b", 4, &[]).hive("c", 4, &[]);
    w = w.deploy("web", 3, &[]);
    w.pass(at(1));
    w.silence("a", Liveness::Offline, ORPHAN_AFTER * 2);
    w.silence("b", Liveness::Offline, ORPHAN_AFTER * 2);
    assert!(brake(&w.hives));
    let plan = w.pass(at(2));
    assert!(plan.decisions.iter().all(|d| d.kind != EventKind::Orphaned), "{:?}", plan.decisions);
    // One of three is not "most": it moves.
    w.silence("b", Liveness::Online, Duration::ZERO);
    assert!(!brake(&w.hives));
    assert!(w.pass(at(3)).decisions.iter().any(|d| d.kind == EventKind::Orphaned));
}

#[test]
fn stopped_hives_do_not_count_towards_the_brake() {
    let w = World::new(PlacementStrategy::RoundRobin).hive("a", 1, &[]).hive("b", 1, &[]).hive("c", 1, &[]);
    let mut w = w;
    w.silence("a", Liveness::Stopped, Duration::ZERO);
    w.silence("b", Liveness::Offline, ORPHAN_AFTER);
    assert!(!brake(&w.hives), "one of two counted hives is not more than half");
}

#[test]
fn an_unknown_hive_is_gone_only_after_the_startup_grace() {
    let mut w = World::new(PlacementStrategy::RoundRobin).hive("a", 4, &[]).deploy("web", 1, &[]);
    w.pass(at(1));
    // The queen restarted: it has not heard from `a` yet.
    w.hives.clear();
    w.grace_over = false;
    assert!(w.pass(at(2)).batch.is_empty(), "no evidence yet");
    w.grace_over = true;
    let plan = w.pass(at(3));
    assert!(plan.decisions.iter().any(|d| d.kind == EventKind::Orphaned && d.reason.contains("unknown")));
    assert_eq!(w.slot("web-0").state, AssignmentState::Pending, "nowhere to go");
}

#[test]
fn a_drain_moves_two_at_a_time_new_before_old() {
    let mut w = World::new(PlacementStrategy::RoundRobin).hive("a", 8, &[]).deploy("web", 3, &[]);
    w.pass(at(1));
    w = w.hive("b", 8, &[]);
    w.hives.get_mut(&id("a")).expect("a").processes = 3;
    w.drain("a", at(300));
    let plan = w.pass(at(2));
    let moving: Vec<Assignment> = w.placement.assignments.values().filter(|a| a.retiring.is_some()).cloned().collect();
    assert_eq!(moving.len(), MOVING_AT_ONCE);
    for a in &moving {
        assert_eq!(a.hive, Some(id("b")));
        assert_eq!(a.generation, 1);
        assert!(a.worker.as_str().ends_with(".1"), "{}", a.worker);
    }
    assert!(plan.batch.drains.is_none(), "nothing about the drain itself changed yet");
    // Both instances run meanwhile; nothing more moves until one is up.
    assert!(w.pass(at(3)).batch.is_empty());
    w.available.insert(moving[0].worker.clone());
    let replaced = moving[0].key();
    let plan = w.pass(at(4));
    assert!(kinds(&plan).iter().any(|(_, k)| *k == EventKind::Retired));
    assert!(w.slot(replaced.as_str()).retiring.is_none());
    assert_eq!(w.placement.drains[&id("a")].moved.len(), 1);
    assert_eq!(
        w.placement.assignments.values().filter(|a| a.retiring.is_some()).count(),
        MOVING_AT_ONCE,
        "the third started"
    );
}

#[test]
fn a_drain_ends_when_the_hive_has_nothing_left_running() {
    let mut w = World::new(PlacementStrategy::RoundRobin).hive("a", 8, &[]).deploy("web", 1, &[]);
    w.pass(at(1));
    w = w.hive("b", 8, &[]);
    w.hives.get_mut(&id("a")).expect("a").processes = 1;
    w.drain("a", at(300));
    w.pass(at(2));
    let new = w.slot("web-0").worker.clone();
    w.available.insert(new);
    w.pass(at(3));
    assert!(!w.placement.drains[&id("a")].done, "the old process has not exited yet");
    w.hives.get_mut(&id("a")).expect("a").processes = 0;
    let plan = w.pass(at(4));
    assert!(w.placement.drains[&id("a")].done);
    assert!(plan.batch.drains.is_some(), "the end of a drain is stored");
    assert!(plan.decisions.iter().any(|d| d.kind == EventKind::PhaseDone && d.id == id("a")));
}

#[test]
fn at_the_deadline_what_could_not_move_is_stopped() {
    let mut w = World::new(PlacementStrategy::RoundRobin).hive("a", 8, &[]).deploy("web", 2, &[]);
    w.pass(at(1));
    w.hives.get_mut(&id("a")).expect("a").processes = 2;
    w.drain("a", at(10));
    let stuck = w.pass(at(2));
    assert!(stuck.batch.put_assignments.is_empty(), "no other hive: nothing moves");
    assert!(w.placement.drains[&id("a")].notes.iter().any(|n| n.contains("cannot move")));
    let late = w.pass(at(10));
    assert!(w.on("a").is_empty());
    assert!(w.placement.assignments.values().all(|a| a.state == AssignmentState::Pending));
    assert_eq!(late.decisions.iter().filter(|d| d.reason.contains("stopped at the deadline")).count(), 2);
}

#[test]
fn a_cancelled_drain_is_not_stepped() {
    let mut w = World::new(PlacementStrategy::RoundRobin).hive("a", 8, &[]).deploy("web", 2, &[]);
    w.pass(at(1));
    w = w.hive("b", 8, &[]);
    w.drain("a", at(300));
    if let Some(d) = w.placement.drains.get_mut(&id("a")) {
        d.cancelled = true;
        d.done = true;
    }
    w.pass(at(2));
    assert_eq!(w.on("a").len(), 2, "left where they are");
}

#[test]
fn planning_changes_nothing_it_was_given() {
    let mut w = World::new(PlacementStrategy::RoundRobin).hive("a", 4, &[]).deploy("web", 2, &[]);
    let observed = Observed {
        hives: &w.hives,
        workers: &w.available,
        failing: &w.failing,
        grace_over: true,
        orphan_after: ORPHAN_AFTER,
    };
    let before = w.placement.assignments.clone();
    let first = plan(&w.deployments, &w.ineligible, &w.placement, &observed, at(1));
    let second = plan(&w.deployments, &w.ineligible, &w.placement, &observed, at(1));
    assert_eq!(w.placement.assignments, before, "the input placement is untouched");
    assert_eq!(first.next.assignments, second.next.assignments, "same input, same plan");
    assert_eq!(first.decisions, second.decisions);
    w.placement = first.next;
    assert_eq!(w.on("a").len(), 2);
}

#[test]
fn worker_names_carry_the_generation_after_the_first() {
    assert_eq!(worker_name(&id("web"), 3, 0).as_str(), "web-3");
    assert_eq!(worker_name(&id("web"), 3, 2).as_str(), "web-3.2");
}

#[test]
fn a_hive_that_drained_itself_is_eligible_again_once_back_as_a_new_process() {
    let mut w = World::new(PlacementStrategy::RoundRobin).hive("a", 8, &[]).deploy("web", 2, &[]);
    w.pass(at(1));
    w = w.hive("b", 8, &[]);
    w.hives.get_mut(&id("a")).expect("a").processes = 2;
    w.own_drain("a", at(300));
    for t in 2..6 {
        w.pass(at(t));
        let moving: Vec<NodeId> =
            w.placement.assignments.values().filter(|a| a.retiring.is_some()).map(|a| a.worker.clone()).collect();
        w.available.extend(moving);
    }
    w.hives.get_mut(&id("a")).expect("a").processes = 0;
    w.pass(at(6));
    assert!(w.placement.drains[&id("a")].done);
    assert!(w.ineligible.is_empty(), "no operator's mark was set");
    w = w.deploy("more", 1, &[]);
    w.pass(at(7));
    assert!(w.on("a").is_empty(), "the same process of a, done draining, takes nothing new");

    // The hive restarts: a newer process of it heartbeats.
    w.hives.get_mut(&id("a")).expect("a").epoch = 2;
    w = w.deploy("more", 4, &[]);
    let plan = w.pass(at(8));
    assert!(plan.decisions.iter().any(|d| d.kind == EventKind::Eligible && d.id == id("a")), "{:?}", kinds(&plan));
    assert!(!w.placement.drains.contains_key(&id("a")), "its own drain ended");
    assert!(plan.batch.drains.as_ref().is_some_and(|d| !d.contains_key(&id("a"))), "and the end is stored");
    assert!(!w.on("a").is_empty(), "a takes replicas again: {:?}", w.placement.assignments.keys().collect::<Vec<_>>());
}

#[test]
fn an_operators_drain_outlives_the_hives_restart() {
    let mut w = World::new(PlacementStrategy::RoundRobin).hive("a", 8, &[]).hive("b", 8, &[]).deploy("web", 1, &[]);
    w.pass(at(1));
    w.drain("a", at(300));
    w.hives.get_mut(&id("a")).expect("a").epoch = 2;
    w = w.deploy("more", 4, &[]);
    let plan = w.pass(at(2));
    assert!(!plan.decisions.iter().any(|d| d.kind == EventKind::Eligible));
    assert!(w.placement.drains.contains_key(&id("a")));
    assert!(w.on("a").iter().all(|worker| worker.starts_with("web")), "nothing new on a cordoned hive");
}

mod rollouts {
    use super::*;
    use contract::RolloutState;

    fn ms(n: i64) -> time::Duration {
        time::Duration::milliseconds(n)
    }

    /// `web` of `replicas` on two roomy hives, placed and every instance up.
    fn running(replicas: u32) -> World {
        let mut w =
            World::new(PlacementStrategy::RoundRobin).hive("a", 8, &[]).hive("b", 8, &[]).deploy("web", replicas, &[]);
        w.pass(at(0));
        w.all_up();
        w
    }

    impl World {
        fn all_up(&mut self) {
            let names: Vec<NodeId> = self.placement.assignments.values().map(|a| a.worker.clone()).collect();
            self.available.extend(names);
        }

        fn record(&self) -> &DeploymentRecord {
            &self.deployments[&id("web")]
        }

        fn roll_to_command(&mut self, command: &str, now: OffsetDateTime) {
            let d = self.deployments.get_mut(&id("web")).expect("web");
            let mut next = d.spec.clone();
            next.command = command.into();
            d.roll_to(next, now);
        }

        /// Slots by version, in slot order.
        fn versions(&self) -> Vec<u64> {
            self.placement.assignments.values().map(|a| a.version).collect()
        }

        fn retiring(&self) -> usize {
            self.placement.assignments.values().filter(|a| a.retiring.is_some()).count()
        }
    }

    #[test]
    fn a_new_version_replaces_one_replica_at_a_time_each_up_before_its_old_one_stops() {
        let mut w = running(3);
        let t = at(10);
        w.roll_to_command("worker-v2", t);
        assert_eq!(w.record().version, 1);

        w.pass(t);
        assert_eq!(w.versions(), vec![1, 0, 0], "one slot at a time (max_parallel 1)");
        let first = w.slot("web-0").clone();
        let old = first.retiring.clone().expect("the old instance keeps running");
        assert_eq!((old.worker.as_str(), old.version), ("web-0", 0), "{first:?}");
        assert_eq!(first.worker.as_str(), "web-0.1", "the new instance runs beside it under its own name");

        // Not up yet: nothing else moves, the old one stays.
        w.pass(t + ms(500));
        assert_eq!((w.versions(), w.retiring()), (vec![1, 0, 0], 1));

        // Up: the old one is retired, and the new must stay healthy for min_healthy_ms.
        w.available.insert(id("web-0.1"));
        w.pass(t + ms(1000));
        assert_eq!((w.versions(), w.retiring()), (vec![1, 0, 0], 0));
        w.pass(t + ms(2500));
        assert_eq!(w.versions(), vec![1, 0, 0], "healthy for 1.5 s of the 2 s it must be");
        w.pass(t + ms(3100));
        assert_eq!(w.versions(), vec![1, 1, 0], "then the next");

        let mut now = t + ms(3100);
        for _ in 0..8 {
            w.all_up();
            now += ms(2100);
            w.pass(now);
        }
        assert_eq!(w.versions(), vec![1, 1, 1]);
        assert_eq!(w.retiring(), 0);
        let rollout = w.record().rollout.clone().expect("a rollout");
        assert_eq!(rollout.state, RolloutState::Done);
        assert_eq!(w.record().spec.command, "worker-v2");
    }

    #[test]
    fn a_paused_rollout_replaces_nothing_until_resumed() {
        let mut w = running(2);
        w.roll_to_command("worker-v2", at(10));
        w.deployments.get_mut(&id("web")).and_then(|d| d.rollout.as_mut()).expect("a rollout").state =
            RolloutState::Paused;
        w.pass(at(10));
        assert_eq!(w.versions(), vec![0, 0], "paused");
        w.deployments.get_mut(&id("web")).and_then(|d| d.rollout.as_mut()).expect("a rollout").state =
            RolloutState::Running;
        w.pass(at(11));
        assert_eq!(w.versions(), vec![1, 0], "resumed");
    }

    #[test]
    fn max_parallel_replicas_roll_at_once() {
        let mut w = running(4);
        w.deployments.get_mut(&id("web")).expect("web").spec.update.max_parallel = 2;
        w.roll_to_command("worker-v2", at(10));
        w.pass(at(10));
        assert_eq!(w.versions(), vec![1, 1, 0, 0]);
        assert_eq!(w.retiring(), 2);
    }

    #[test]
    fn new_instances_that_never_come_up_revert_the_rollout_by_itself() {
        let mut w = running(2);
        let t = at(10);
        w.roll_to_command("worker-broken", t);
        w.pass(t);
        assert_eq!(w.slot("web-0").worker.as_str(), "web-0.1");
        w.pass(t + ms(59_000));
        assert_eq!(w.record().version, 1, "still within the progress deadline");

        let plan = w.pass(t + ms(60_000));
        let said: Vec<&str> =
            plan.decisions.iter().filter(|d| d.kind == EventKind::Rollout).map(|d| d.reason.as_str()).collect();
        assert!(said.iter().any(|r| r.contains("failed") && r.contains("not available")), "{said:?}");
        assert_eq!(w.record().version, 0, "the version before is the target again");
        assert_eq!(w.record().spec.command, "worker", "and its spec the current one");
        let slot = w.slot("web-0");
        assert_eq!((slot.worker.as_str(), slot.version, slot.retiring.is_none()), ("web-0", 0, true), "{slot:?}");
        assert_eq!(w.record().older.get(&1).map(|s| s.command.as_str()), Some("worker-broken"), "kept for history");

        // Nothing was replaced past the first: once it is healthy again, the revert is done.
        let mut now = t + ms(60_000);
        for _ in 0..3 {
            now += ms(2100);
            w.pass(now);
        }
        let rollout = w.record().rollout.clone().expect("a rollout");
        assert_eq!(rollout.state, RolloutState::Reverted, "{rollout:?}");
        assert!(rollout.reason.contains("not available"), "{rollout:?}");
        assert_eq!(w.versions(), vec![0, 0]);
    }

    #[test]
    fn a_new_instance_its_hive_reports_crashing_reverts_at_once() {
        let mut w = running(2);
        w.roll_to_command("worker-crashes", at(10));
        w.pass(at(10));
        w.failing.insert(id("web-0.1"));
        w.pass(at(11));
        assert_eq!(w.record().version, 0);
        assert!(w.record().rollout.as_ref().is_some_and(|r| r.reason.contains("keeps crashing")));
    }

    #[test]
    fn a_restart_with_no_room_beside_the_old_instance_restarts_in_place() {
        let mut w = World::new(PlacementStrategy::RoundRobin).hive("a", 2, &[]).deploy("web", 2, &[]);
        w.pass(at(0));
        w.all_up();
        let d = w.deployments.get_mut(&id("web")).expect("web");
        let same = d.spec.clone();
        d.roll_to(same, at(10));
        let plan = w.pass(at(10));
        let slot = w.slot("web-0");
        assert_eq!((slot.worker.as_str(), slot.retiring.is_none(), slot.version), ("web-0.1", true, 1), "{slot:?}");
        assert!(plan.decisions.iter().any(|d| d.reason.contains("restarted in place")), "{:?}", kinds(&plan));
    }
}

#[test]
fn a_deployment_of_six_on_three_hives_with_room_for_six_lands_two_on_each() {
    for strategy in PlacementStrategy::ALL {
        let mut w = World::new(strategy).hive("a", 6, &[]).hive("b", 6, &[]).hive("c", 6, &[]).deploy("web", 6, &[]);
        w.pass(at(1));
        let counts: Vec<usize> = ["a", "b", "c"].iter().map(|h| w.on(h).len()).collect();
        assert_eq!(counts, vec![2, 2, 2], "{strategy:?}");
    }
}
