//! The orchestrator applying plans: store first, on tokio's clock.

use super::*;
use crate::store::MemoryStore;
use crate::store::testing::Flaky;
use contract::CommandKind;

fn spec(name: &str, replicas: u32) -> DeploymentSpec {
    DeploymentSpec::new(NodeId::sanitized(name), "worker", replicas)
}

fn registries() -> anyhow::Result<(HeartbeatRegistry<HiveHeartbeat>, HeartbeatRegistry<WorkerHeartbeat>)> {
    let thresholds = registry::Thresholds::for_interval(Duration::from_secs(1), None)?;
    let hives = HeartbeatRegistry::new(thresholds.clone());
    hives.upsert(serde_json::from_str::<HiveHeartbeat>(contract::examples::HIVE_HEARTBEAT)?);
    Ok((hives, HeartbeatRegistry::new(thresholds)))
}

#[tokio::test]
async fn a_failed_store_write_changes_nothing_in_memory() -> anyhow::Result<()> {
    let store = Arc::new(Flaky::default());
    let o = Orchestrator::open(Box::new(Arc::clone(&store)), Duration::from_secs(60), Arc::new(AtomicU64::new(1)))?;
    let (hives, workers) = registries()?;
    let mut commands = o.channels.subscribe(&NodeId::sanitized("hive-1"));
    o.create(spec("web", 2))?;
    store.set_failing(true);
    assert!(o.reconcile(&hives, &workers).is_err());
    assert!(o.assignments().is_empty(), "memory follows the store, not ahead of it");
    assert!(o.recent_events(10).is_empty(), "no decision is announced that did not happen");
    assert!(!commands.has_changed()?, "no hive is told to run what is not stored");

    store.set_failing(false);
    o.reconcile(&hives, &workers)?;
    assert_eq!(o.assignments().len(), 2);
    assert_eq!(store.load()?.assignments.len(), 2, "and now both agree");
    assert!(commands.has_changed()?);
    let command = Arc::clone(&commands.borrow_and_update());
    let CommandKind::Assign { workers: told, .. } = &command.kind else { anyhow::bail!("{command:?}") };
    assert_eq!(told.len(), 2);
    Ok(())
}

/// A queen whose store has no deployments while a hive runs replicas tells it to hold,
/// never to run nothing, until an operator confirms (or declares a deployment).
#[tokio::test]
async fn an_empty_store_stops_nothing_until_an_operator_confirms() -> anyhow::Result<()> {
    let o = Orchestrator::open(
        Box::new(crate::store::MemoryStore::default()),
        Duration::from_secs(60),
        Arc::new(AtomicU64::new(1)),
    )?;
    let (hives, workers) = registries()?;
    let mut report: HiveHeartbeat = serde_json::from_str(contract::examples::HIVE_HEARTBEAT)?;
    report.id = NodeId::sanitized("hive-1");
    report.seq = contract::Seq(report.seq.0 + 1);
    report.workers = vec![contract::SupervisedWorker {
        name: NodeId::sanitized("web-0"),
        deployment: NodeId::sanitized("web"),
        state: contract::ProcessState::Running,
        pid: Some(42),
        restarts: 0,
        last_exit: String::new(),
        ready: None,
        probe: String::new(),
    }];
    hives.upsert(report);
    let mut commands = o.channels.subscribe(&NodeId::sanitized("hive-1"));
    o.reconcile(&hives, &workers)?;
    assert!(matches!(commands.borrow_and_update().kind, CommandKind::Hold), "not 'run nothing'");
    assert_eq!(o.unknown_hives(), 1, "said in readiness and the snapshot");

    assert_eq!(o.stop_unknown(), 1);
    o.reconcile(&hives, &workers)?;
    assert!(commands.has_changed()?, "the confirmation reaches the hive");
    let command = Arc::clone(&commands.borrow_and_update());
    assert!(matches!(&command.kind, CommandKind::Assign { workers, .. } if workers.is_empty()), "{command:?}");
    assert_eq!(o.unknown_hives(), 0);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn the_startup_grace_runs_on_tokio_time() -> anyhow::Result<()> {
    let o = Orchestrator::open(Box::new(MemoryStore::default()), Duration::from_secs(30), Arc::new(AtomicU64::new(1)))?;
    assert!(o.in_grace());
    tokio::time::advance(Duration::from_secs(29)).await;
    assert!(o.in_grace());
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(!o.in_grace());
    o.restart_grace();
    assert!(o.in_grace(), "a new leader has heard from nobody yet");
    Ok(())
}

/// A drain's deadline is a date (the next leader must read it), but the system clock
/// stepping a day forward or an hour back while the queen runs neither ends it early nor
/// stretches it: only ten minutes by the queen's own clock do.
#[tokio::test(start_paused = true)]
async fn a_stepped_system_clock_neither_ends_a_drain_early_nor_stretches_it() -> anyhow::Result<()> {
    let system = crate::clock::testing::Stepped::new();
    let wall = crate::clock::Wall::new(system.clone());
    let o = Orchestrator::open_with(
        Box::new(MemoryStore::default()),
        Duration::from_secs(60),
        Arc::new(AtomicU64::new(1)),
        wall,
    )?;
    let (hives, workers) = registries()?;
    let hive = NodeId::sanitized("hive-1");
    o.create(spec("web", 1))?;
    o.reconcile(&hives, &workers)?;
    let on_hive = |o: &Orchestrator| o.assignments().iter().filter(|a| a.hive.as_ref() == Some(&hive)).count();
    assert_eq!(on_hive(&o), 1);
    // The only hive: its replica has nowhere to go and stays until the deadline.
    o.start_drain(&hive, Duration::from_secs(600), None)?;
    let mut seq = 10;
    let mut beat = |hives: &HeartbeatRegistry<HiveHeartbeat>| -> anyhow::Result<()> {
        let mut hb: HiveHeartbeat = serde_json::from_str(contract::examples::HIVE_HEARTBEAT)?;
        seq += 1;
        hb.seq = contract::Seq(seq);
        hives.upsert(hb);
        Ok(())
    };
    for step in [time::Duration::days(1), -time::Duration::days(1) - time::Duration::hours(1)] {
        system.step(step);
        tokio::time::advance(Duration::from_secs(60)).await;
        beat(&hives)?;
        o.reconcile(&hives, &workers)?;
        let drain = o.drain(&hive).ok_or_else(|| anyhow::anyhow!("drain"))?;
        assert!(!drain.done && on_hive(&o) == 1, "a clock step of {step} moved the deadline: {drain:?}");
    }
    assert!(o.clock_step().is_some_and(|t| t.contains("stepped back by 3600 s")), "{:?}", o.clock_step());
    tokio::time::advance(Duration::from_secs(481)).await;
    beat(&hives)?;
    o.reconcile(&hives, &workers)?;
    assert_eq!(on_hive(&o), 0, "ten minutes by the queen's clock: what could not move is stopped");
    Ok(())
}

/// Earlier versions keep their secrets for the hives that still run them, and no read
/// shows one: the status, the history, every version in it.
#[tokio::test]
async fn a_deployments_history_never_shows_a_secret() -> anyhow::Result<()> {
    let o = Orchestrator::open(Box::new(MemoryStore::default()), Duration::from_secs(60), Arc::new(AtomicU64::new(1)))?;
    let mut first = spec("web", 1);
    first.secret_env.insert("PW".into(), "hunter2".into());
    o.create(first)?;
    let patch = contract::DeploymentPatch {
        secret_env: Some([("PW".to_string(), "correct-horse".to_string())].into()),
        ..Default::default()
    };
    o.patch(&NodeId::sanitized("web"), &patch)?;
    let history = o.history(&NodeId::sanitized("web")).expect("the history");
    assert_eq!(history.versions.len(), 2, "{history:?}");
    let shown = serde_json::to_string(&history)?;
    assert!(!shown.contains("hunter2") && !shown.contains("correct-horse"), "{shown}");
    assert!(history.versions.iter().all(|v| v.spec.secret_env.get("PW").map(String::as_str) == Some(contract::SECRET)));
    let (hives, workers) = registries()?;
    let status = serde_json::to_string(&o.list(Nodes { hives: &hives, workers: &workers }))?;
    assert!(!status.contains("hunter2") && !status.contains("correct-horse"), "{status}");
    // The hive that runs the old version gets its secret, unchanged.
    let st = o.lock();
    let record = &st.deployments[&NodeId::sanitized("web")];
    assert_eq!(record.spec_of(0).secret_env.get("PW").map(String::as_str), Some("hunter2"));
    assert_eq!(record.spec_of(1).secret_env.get("PW").map(String::as_str), Some("correct-horse"));
    Ok(())
}
