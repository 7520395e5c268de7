//! The orchestrator applying plans: store first, on tokio's clock.

use super::*;
use crate::store::MemoryStore;
use crate::store::testing::Flaky;
use contract::CommandKind;

fn spec(name: &str, replicas: u32) -> DeploymentSpec {
    DeploymentSpec {
        name: NodeId::sanitized(name),
        command: "worker".into(),
        args: vec![],
        env: Default::default(),
        secret_env: Default::default(),
        replicas,
        labels_required: Default::default(),
        max_restarts: None,
    }
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
    let CommandKind::Assign { workers: told, .. } = &command.kind;
    assert_eq!(told.len(), 2);
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
