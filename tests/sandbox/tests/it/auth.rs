//! Tokens: nodes with the cluster token, operators with the admin token, readers with the
//! read token; 401 without one, 403 with the wrong kind; the hive hands its token to the
//! workers it starts.

use std::time::Duration;

use contract::ApiErrorBody;
use sandbox::{Sandbox, wait_until};
use serde_json::{Value, json};

/// (what, method, path, token, body, expected status)
type Case = (&'static str, reqwest::Method, String, Option<&'static str>, Option<Value>, u16);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_needs_the_right_kind_of_token() -> anyhow::Result<()> {
    let sb = Sandbox::builder()
        .hives(2)
        .workers_per_hive(1)
        .heartbeat_interval(Duration::from_millis(300))
        .tokens("cluster-secret", "admin-secret", "read-secret")
        .start()
        .await?;
    let base = sb.queen_url();
    let http = queen_client::http();
    let beat = json!({
        "id": "intruder", "epoch": 1, "seq": 1, "address": "x", "hostname": "x", "version": "0", "status": "ready",
        "resources": {"cpu_percent": 1.0, "memory_used_bytes": 1, "memory_total_bytes": 2, "disk_used_bytes": 1,
                      "disk_total_bytes": 2, "load_average": {"one": 0.0, "five": 0.0, "fifteen": 0.0}},
        "capacity": {"max_workers": 1, "running_workers": 0}, "sent_at": "2026-11-24T12:00:00Z"
    });
    let spec = json!({"name": "web", "command": "true", "replicas": 0});
    let cases: Vec<Case> = vec![
        (
            "heartbeat without a token",
            reqwest::Method::POST,
            "/v1/hive-heartbeat".into(),
            None,
            Some(beat.clone()),
            401,
        ),
        (
            "heartbeat with a garbage token",
            reqwest::Method::POST,
            "/v1/hive-heartbeat".into(),
            Some("nope"),
            Some(beat.clone()),
            401,
        ),
        (
            "heartbeat with the read token",
            reqwest::Method::POST,
            "/v1/hive-heartbeat".into(),
            Some("read-secret"),
            Some(beat.clone()),
            403,
        ),
        (
            "deploy with the cluster token",
            reqwest::Method::POST,
            "/v1/deployments".into(),
            Some("cluster-secret"),
            Some(spec.clone()),
            403,
        ),
        ("deploy without a token", reqwest::Method::POST, "/v1/deployments".into(), None, Some(spec.clone()), 401),
        (
            "shutdown with the read token",
            reqwest::Method::POST,
            "/v1/cluster/shutdown".into(),
            Some("read-secret"),
            Some(json!({})),
            403,
        ),
        (
            "strategy with the cluster token",
            reqwest::Method::PUT,
            "/v1/placement/strategy".into(),
            Some("cluster-secret"),
            Some(json!({"strategy": "random"})),
            403,
        ),
        ("snapshot without a token", reqwest::Method::GET, "/v1/snapshot".into(), None, None, 401),
        ("snapshot with the read token", reqwest::Method::GET, "/v1/snapshot".into(), Some("read-secret"), None, 200),
        (
            "snapshot with the cluster token",
            reqwest::Method::GET,
            "/v1/snapshot".into(),
            Some("cluster-secret"),
            None,
            200,
        ),
        (
            "snapshot with ?access_token",
            reqwest::Method::GET,
            "/v1/snapshot?access_token=read-secret".into(),
            None,
            None,
            200,
        ),
        (
            "deploy with the admin token",
            reqwest::Method::POST,
            "/v1/deployments".into(),
            Some("admin-secret"),
            Some(spec.clone()),
            201,
        ),
        ("health is open", reqwest::Method::GET, "/healthz".into(), None, None, 200),
        ("metrics are open", reqwest::Method::GET, "/metrics".into(), None, None, 200),
    ];
    for (name, method, path, token, body, status) in cases {
        let mut req = http.request(method, format!("{base}{path}"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let got = resp.status().as_u16();
        let text = resp.text().await?;
        assert_eq!(got, status, "{name}: {text}");
        if got == 401 || got == 403 {
            let err: ApiErrorBody = serde_json::from_str(&text)?;
            assert_eq!(err.code, if got == 401 { "unauthorized" } else { "forbidden" }, "{name}");
            assert!(!text.contains("secret"), "{name}: a token leaked into an answer: {text}");
        }
    }
    let client = sb.client();
    assert!(client.hive("intruder").await.is_err(), "refused heartbeats changed nothing");

    // The hive passes its token to the workers it starts: a deployed replica heartbeats.
    let worker = tokio::task::spawn_blocking(sandbox::built_binaries).await??.join("worker");
    let spec = json!({"name": "tokened", "command": worker.to_string_lossy(), "args": ["--heartbeat-interval", "300ms"], "replicas": 1});
    client.post_json::<_, Value>("/v1/deployments", &spec).await?;
    wait_until("the deployed worker heartbeating with the cluster token", Duration::from_secs(30), || async {
        client.worker("tokened-0").await.ok().filter(|w| w.available)
    })
    .await?;
    sb.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_tokens_let_a_node_act_only_as_itself() -> anyhow::Result<()> {
    let sb = Sandbox::builder()
        .hives(2)
        .workers_per_hive(1)
        .heartbeat_interval(Duration::from_millis(300))
        .tokens("cluster-secret", "admin-secret", "read-secret")
        .node_tokens()
        .start()
        .await?;
    // start() waited for both hives and both workers: node tokens are enough to join.
    let (h0, h1) = (contract::NodeId::new("hive-0")?, contract::NodeId::new("hive-1")?);
    let hive0 = sb.hive_token(&h0).expect("token");
    let worker00 = sb.worker_token(&h0, &contract::NodeId::new("worker-0-0")?).expect("token");
    assert!(hive0.starts_with("hive:hive-0:") && worker00.starts_with("worker:hive-0:worker-0-0:"));

    // A worker process started by hive-0 gets a token made by hive-0 for it, and joins.
    let bin = tokio::task::spawn_blocking(sandbox::built_binaries).await??.join("worker");
    let spec = json!({"name": "bound", "command": bin.to_string_lossy(), "args": ["--heartbeat-interval", "300ms"],
                      "replicas": 1, "labels_required": {}});
    let _: contract::DeploymentStatus = sb.client().post_json("/v1/deployments", &spec).await?;
    wait_until("the deployed worker heartbeating with its own token", Duration::from_secs(30), || async {
        let workers = sb.client().workers().await.ok()?;
        workers.iter().any(|w| w.liveness.is_up() && w.id.as_str().starts_with("bound-")).then_some(())
    })
    .await?;

    let base = sb.queen_url();
    let http = queen_client::http();
    let mut as_other_hive = sandbox::samples::hive_beat("hive-1");
    as_other_hive["epoch"] = json!(u64::MAX / 2);
    let mut as_other_worker = sandbox::samples::worker_beat("worker-1-0");
    as_other_worker["hive_id"] = json!("hive-0");
    let mut claims_other_hive = sandbox::samples::worker_beat("worker-0-0");
    claims_other_hive["hive_id"] = json!("hive-1");
    let cases = [
        ("hive-0 heartbeating as hive-1", "POST", "/v1/hive-heartbeat".to_string(), &hive0, Some(as_other_hive), 403),
        ("a worker as another worker", "POST", "/v1/worker-heartbeat".into(), &worker00, Some(as_other_worker), 403),
        (
            "a worker claiming another hive",
            "POST",
            "/v1/worker-heartbeat".into(),
            &worker00,
            Some(claims_other_hive),
            403,
        ),
        ("hive-0 on hive-1's control channel", "GET", format!("/v1/hives/{h1}/commands"), &hive0, None, 403),
        (
            "hive-0 ACKing for hive-1",
            "POST",
            format!("/v1/hives/{h1}/acks"),
            &hive0,
            Some(json!({"command_id": 1, "ok": true})),
            403,
        ),
        ("a worker on a hive's channel", "GET", format!("/v1/hives/{h0}/commands"), &worker00, None, 403),
        ("a hive token on an admin call", "POST", "/v1/deployments".into(), &hive0, Some(spec.clone()), 403),
        (
            "a hive heartbeat as a worker",
            "POST",
            "/v1/worker-heartbeat".into(),
            &hive0,
            Some(sandbox::samples::worker_beat("x")),
            403,
        ),
    ];
    for (what, method, path, token, body, status) in cases {
        let mut req =
            http.request(reqwest::Method::from_bytes(method.as_bytes())?, format!("{base}{path}")).bearer_auth(token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await?;
        assert_eq!(resp.status().as_u16(), status, "{what}");
        let err: ApiErrorBody = resp.json().await?;
        assert!(err.code == "token_mismatch" || err.code == "forbidden", "{what}: {err:?}");
    }
    // hive-1 is still its own: no heartbeat of hive-0's reached it.
    assert!(sb.client().hive("hive-1").await?.epoch.0 < u64::MAX / 2);
    sb.shutdown().await
}

/// A worker with a token takes jobs from the queen only: not from a stranger, not with the
/// cluster token, not with another worker's job token; through the queen they run. Both
/// with the shared cluster token and with node tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_takes_jobs_only_from_the_queen() -> anyhow::Result<()> {
    for node_tokens in [false, true] {
        let mut builder = Sandbox::builder()
            .hives(1)
            .workers_per_hive(2)
            .heartbeat_interval(Duration::from_millis(300))
            .tokens("cluster-secret", "admin-secret", "read-secret");
        if node_tokens {
            builder = builder.node_tokens();
        }
        let sb = builder.start().await?;
        let (hive, w0, w1) = (
            contract::NodeId::new("hive-0")?,
            contract::NodeId::new("worker-0-0")?,
            contract::NodeId::new("worker-0-1")?,
        );
        let direct = format!("{}/v1/jobs", sb.worker_url(&w0).expect("worker url"));
        let job = json!({"kind": "sleep", "ms": 1});
        let http = queen_client::http();
        let others = queen_client::node_token::job_token("cluster-secret", &hive, &w1).expect("token");
        for (who, token) in [
            ("nobody", None),
            ("the cluster token", Some("cluster-secret")),
            ("another worker's job token", Some(others.as_str())),
        ] {
            let mut req = http.post(&direct).json(&job);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await?;
            assert_eq!(resp.status().as_u16(), 401, "{who} got a job run on {w0} (node tokens: {node_tokens})");
        }
        let own = queen_client::node_token::job_token("cluster-secret", &hive, &w0).expect("token");
        let ok = http.post(&direct).json(&job).bearer_auth(&own).send().await?;
        assert!(ok.status().is_success(), "its own job token runs it: {}", ok.status());
        let via_queen =
            http.post(format!("{}/v1/jobs", sb.queen_url())).bearer_auth("cluster-secret").json(&job).send().await?;
        assert!(via_queen.status().is_success(), "through the queen: {}", via_queen.status());
        sb.shutdown().await?;
    }
    Ok(())
}

/// Someone with the cluster token sends a heartbeat in a hive's name with a later epoch:
/// one far ahead is refused outright; one within the allowed skew makes the real hive's
/// beats stale, and the hive, told so, starts a new epoch after it and is heard again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_epoch_cannot_lock_a_hive_out() -> anyhow::Result<()> {
    let sb = Sandbox::builder()
        .hives(1)
        .heartbeat_interval(Duration::from_millis(200))
        .tokens("cluster-secret", "admin-secret", "read-secret")
        .start()
        .await?;
    let client = sb.client();
    let real = client.hive("hive-0").await?.epoch;
    let now = contract::Epoch::for_new_process().0;
    let forge = |epoch: u64| {
        let mut hb = sandbox::samples::hive_beat("hive-0");
        hb["epoch"] = json!(epoch);
        hb["seq"] = json!(1_000_000);
        hb["address"] = json!("http://127.0.0.1:1");
        queen_client::http()
            .post(format!("{}/v1/hive-heartbeat", sb.queen_url()))
            .bearer_auth("cluster-secret")
            .json(&hb)
            .send()
    };
    let day = 86_400_000_000;
    let far = forge(now + 60 * day).await?;
    assert_eq!(far.status().as_u16(), 422, "sixty days ahead");
    assert_eq!(far.json::<ApiErrorBody>().await?.code, "epoch_ahead");
    assert_eq!(client.hive("hive-0").await?.epoch, real, "refused, changed nothing");

    let near = now + day;
    assert!(forge(near).await?.status().is_success(), "a day ahead is within the skew (clocks step)");
    let recovered = wait_until("the hive heard again in an epoch after the forged one", Duration::from_secs(10), || {
        let client = client.clone();
        async move { client.hive("hive-0").await.ok().filter(|h| h.epoch.0 > near && h.address != "http://127.0.0.1:1") }
    })
    .await?;
    assert!(recovered.epoch.0 > near);
    sb.shutdown().await
}
