//! What a node may claim and do, through the real router: epochs from the future, a full
//! queen, a token introducing new ids too fast, a worker id another hive holds, drains of
//! other hives; and what the queen keeps on disk.

use std::time::Duration;

use axum::http::Method;
use serde_json::{Value, json};

use crate::testing;

fn hive(id: &str, epoch: u64) -> String {
    let mut v: Value = serde_json::from_str(contract::examples::HIVE_HEARTBEAT).expect("example");
    v["id"] = json!(id);
    v["epoch"] = json!(epoch);
    v["address"] = json!("http://127.0.0.1:1");
    v.to_string()
}

fn worker(id: &str, hive: &str, address: &str) -> String {
    let mut v: Value = serde_json::from_str(contract::examples::WORKER_HEARTBEAT).expect("example");
    v["id"] = json!(id);
    v["hive_id"] = json!(hive);
    v["address"] = json!(address);
    v["epoch"] = json!(now());
    v.to_string()
}

fn now() -> u64 {
    contract::Epoch::for_new_process().0
}

fn code(body: &str) -> String {
    serde_json::from_str::<contract::ApiErrorBody>(body).map(|b| b.code).unwrap_or_else(|_| body.to_string())
}

#[tokio::test]
async fn an_epoch_from_the_future_is_refused_and_changes_nothing() -> anyhow::Result<()> {
    let q = testing::queen(|_| {})?;
    let day = 86_400 * 1_000_000;
    let (status, body) = q.call(Method::POST, "/v1/hive-heartbeat", None, &hive("h1", now() + 60 * day)).await;
    assert_eq!((status, code(&body).as_str()), (422, "epoch_ahead"), "{body}");
    assert!(body.contains("ahead of the queen's clock"), "{body}");
    assert!(q.queen.ingest.hives.get(&contract::NodeId::sanitized("h1")).is_none());
    let (status, body) = q.call(Method::POST, "/v1/hive-heartbeat", None, &hive("h1", now() + day)).await;
    assert_eq!(status, 200, "a machine whose clock stepped a day forward is still heard: {body}");
    Ok(())
}

#[tokio::test]
async fn a_full_queen_takes_no_new_node_but_keeps_hearing_the_ones_it_holds() -> anyhow::Result<()> {
    let q = testing::queen(|c| c.max_nodes = 2)?;
    for id in ["h1", "h2"] {
        assert_eq!(q.call(Method::POST, "/v1/hive-heartbeat", None, &hive(id, 1)).await.0, 200);
    }
    let (status, body) = q.call(Method::POST, "/v1/hive-heartbeat", None, &hive("h3", 1)).await;
    assert_eq!((status, code(&body).as_str()), (503, "cluster_full"), "{body}");
    let mut again: Value = serde_json::from_str(&hive("h1", 1))?;
    again["seq"] = json!(2);
    assert_eq!(q.call(Method::POST, "/v1/hive-heartbeat", None, &again.to_string()).await.0, 200, "a known node");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn one_token_introduces_new_ids_at_a_bounded_rate_once_the_startup_grace_is_over() -> anyhow::Result<()> {
    let q = testing::queen(|c| {
        c.max_new_nodes_per_second = 1;
        c.tokens = crate::auth::Tokens::single(Some("c"), Some("a"), None);
    })?;
    // In the startup grace every node is new: none is refused.
    for i in 0..30 {
        assert_eq!(q.call(Method::POST, "/v1/hive-heartbeat", Some("c"), &hive(&format!("g{i}"), 1)).await.0, 200);
    }
    tokio::time::advance(std::time::Duration::from_secs(60)).await;
    assert!(!q.queen.orchestrator.in_grace());
    let mut statuses = Vec::new();
    for i in 0..15 {
        statuses.push(q.call(Method::POST, "/v1/hive-heartbeat", Some("c"), &hive(&format!("n{i}"), 1)).await);
    }
    let accepted = statuses.iter().filter(|(s, _)| *s == 200).count();
    assert!((10..15).contains(&accepted), "a burst of ten seconds' worth, then 429: {accepted} taken");
    let (status, body) = statuses.last().cloned().unwrap_or_default();
    assert_eq!((status, code(&body).as_str()), (429, "new_ids_limited"), "{body}");
    assert!(body.contains("token cluster"), "names the token, never its secret: {body}");
    // Another token (the admin's) has its own budget.
    assert_eq!(q.call(Method::POST, "/v1/hive-heartbeat", Some("a"), &hive("by-admin", 1)).await.0, 200);
    Ok(())
}

#[tokio::test]
async fn a_worker_id_stays_with_its_hive_and_points_only_at_its_machine() -> anyhow::Result<()> {
    let q = testing::queen(|_| {})?;
    assert_eq!(q.call(Method::POST, "/v1/hive-heartbeat", None, &hive("h1", 1)).await.0, 200);
    assert_eq!(q.call(Method::POST, "/v1/hive-heartbeat", None, &hive("h2", 1)).await.0, 200);
    let (status, body) =
        q.call(Method::POST, "/v1/worker-heartbeat", None, &worker("w1", "h1", "http://127.0.0.1:7001")).await;
    assert_eq!(status, 200, "{body}");
    let mut stolen: Value = serde_json::from_str(&worker("w1", "h2", "http://127.0.0.1:7001"))?;
    stolen["seq"] = json!(99);
    let (status, body) = q.call(Method::POST, "/v1/worker-heartbeat", None, &stolen.to_string()).await;
    assert_eq!((status, code(&body).as_str()), (422, "claim_refused"), "{body}");
    assert!(body.contains("worker of hive h1"), "{body}");
    let held = q.queen.ingest.workers.get(&contract::NodeId::sanitized("w1")).map(|w| w.payload.hive_id);
    assert_eq!(held, Some(contract::NodeId::sanitized("h1")), "nothing changed");
    for address in ["ftp://127.0.0.1:1", "http://user@127.0.0.1:1", "http://0.0.0.0:7001"] {
        let (status, body) = q.call(Method::POST, "/v1/worker-heartbeat", None, &worker("w9", "h1", address)).await;
        assert_eq!((status, code(&body).as_str()), (422, "claim_refused"), "{address}: {body}");
    }
    Ok(())
}

#[tokio::test]
async fn a_node_drains_only_its_own_hive_and_only_an_admin_forces_one() -> anyhow::Result<()> {
    let q = testing::queen(|c| c.tokens = crate::auth::Tokens::single(Some("c"), Some("a"), None))?;
    for id in ["h1", "h2"] {
        assert_eq!(q.call(Method::POST, "/v1/hive-heartbeat", Some("c"), &hive(id, 1)).await.0, 200);
    }
    let h1 = queen_client::node_token::hive_token("c", &contract::NodeId::sanitized("h1"));
    let drain = |deadline: u64| json!({"deadline_ms": deadline}).to_string();
    let refused = |(status, body): (u16, String)| (status, code(&body));
    assert_eq!(
        refused(q.call(Method::POST, "/v1/hives/h2/drain", Some(&h1), &drain(60_000)).await),
        (403, "token_mismatch".into())
    );
    assert_eq!(
        refused(q.call(Method::POST, "/v1/hives/h1/drain", Some(&h1), &drain(0)).await),
        (403, "force_needs_admin".into())
    );
    // The shared token names no hive; a drain with it must come from the hive's machine,
    // and this one came over no socket at all.
    assert_eq!(
        refused(q.call(Method::POST, "/v1/hives/h2/drain", Some("c"), &drain(60_000)).await),
        (403, "not_own_hive".into())
    );
    assert!(q.queen.orchestrator.drains().is_empty(), "nothing refused started a drain");
    assert_eq!(q.call(Method::POST, "/v1/hives/h1/drain", Some(&h1), &drain(60_000)).await.0, 202, "its own");
    assert_eq!(q.call(Method::POST, "/v1/hives/h2/drain", Some("a"), &drain(0)).await.0, 202, "the admin forces");
    Ok(())
}

#[tokio::test]
async fn the_marks_of_a_removed_hive_go_with_it() -> anyhow::Result<()> {
    let q = testing::queen(|_| {})?;
    assert_eq!(q.call(Method::POST, "/v1/hive-heartbeat", None, &hive("h1", 1)).await.0, 200);
    assert_eq!(q.call(Method::POST, "/v1/hives/h1/drain", None, &json!({}).to_string()).await.0, 202);
    assert!(!q.queen.orchestrator.eligible(&contract::NodeId::sanitized("h1"), 1));
    assert_eq!(q.call(Method::DELETE, "/v1/hives/h1?force=true", None, "").await.0, 204);
    assert!(q.queen.orchestrator.drains().is_empty() && q.queen.orchestrator.ineligible().is_empty());
    let stored = q.queen.orchestrator.store().load()?;
    assert!(stored.drains.is_empty() && stored.ineligible.is_empty(), "gone from the store too");
    Ok(())
}

#[tokio::test]
async fn the_final_state_is_private_and_holds_no_secret() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("queen-final-{}-{}", std::process::id(), now()));
    let data = dir.clone();
    let q = testing::queen(move |c| c.data_dir = Some(data))?;
    let spec = json!({"name": "db", "command": "/bin/true", "replicas": 0, "secret_env": {"PW": "hunter2-s3cret"}});
    assert_eq!(q.call(Method::POST, "/v1/deployments", None, &spec.to_string()).await.0, 201);
    q.queen.write_final_state().map_err(anyhow::Error::msg)?;
    let path = dir.join("final-state.json");
    let text = std::fs::read_to_string(&path)?;
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
    let store_mode = std::fs::metadata(dir.join("queen.redb"))?.permissions().mode() & 0o777;
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!text.contains("hunter2-s3cret") && text.contains(contract::SECRET), "{text}");
    assert_eq!((mode, store_mode), (0o600, 0o600), "only the queen's user reads what it keeps");
    Ok(())
}

/// The queen stalls (here: tokio's clock jumps 10 s with nothing run, as on SIGCONT after
/// a SIGSTOP): it judges nobody on silence it could not hear, says it was deaf in
/// readiness and in the banner, and still declares a really silent hive offline once it
/// has been silent long enough while the queen listened.
#[tokio::test(start_paused = true)]
async fn a_stalled_queen_blames_itself_not_its_nodes() -> anyhow::Result<()> {
    let q = testing::queen(|_| {})?;
    let epoch = now();
    let beat = |seq: u64| {
        let mut v: Value = serde_json::from_str(&hive("h1", epoch)).expect("json");
        v["seq"] = json!(seq);
        v.to_string()
    };
    let h1 = contract::NodeId::sanitized("h1");
    let liveness = |q: &testing::TestQueen| q.queen.ingest.hives.get(&h1).map(|h| h.liveness);
    // Past the startup grace, beating every second.
    for seq in 1..=5 {
        assert_eq!(q.call(Method::POST, "/v1/hive-heartbeat", None, &beat(seq)).await.0, 200);
        tokio::time::sleep(Duration::from_secs(1)).await;
        q.queen.ingest.sweep();
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    q.queen.ingest.sweep();
    assert_eq!(liveness(&q), Some(heartbeat_registry::Liveness::Online), "not judged on the stall");
    let (status, ready) = q.call(Method::GET, "/readyz", None, "").await;
    assert_eq!(status, 503, "{ready}");
    assert!(ready.contains("could not hear its nodes"), "{ready}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    q.queen.publish_snapshot();
    let (_, snapshot) = q.call(Method::GET, "/v1/snapshot", None, "").await;
    assert!(snapshot.contains("was not listening for 9."), "the banner: {snapshot}");
    // Listening again, and the hive says nothing more: offline after the threshold (3 s).
    let mut waited = Duration::ZERO;
    while liveness(&q) != Some(heartbeat_registry::Liveness::Offline) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        q.queen.ingest.sweep();
        waited += Duration::from_millis(100);
        assert!(waited < Duration::from_secs(5), "still not offline after {waited:?} of listening");
    }
    assert!(waited >= Duration::from_secs(1), "offline after {waited:?} more of listening, not at once");
    Ok(())
}
