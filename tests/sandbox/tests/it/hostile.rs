//! Hostile requests across the queen's whole API, with every token set: each gets the
//! expected status and the JSON error body, and afterwards the registries, the store and
//! the stream are as they were and a normal heartbeat is still served. (The heartbeat
//! bodies' own matrix is in `cluster.rs`.)

use std::time::{Duration, Instant};

use contract::{ApiErrorBody, Snapshot};
use sandbox::Sandbox;
use sandbox::samples::{hive_beat, worker_beat};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLUSTER: &str = "cluster-secret";
const ADMIN: &str = "admin-secret";
const READ: &str = "read-secret";

#[derive(Clone, Copy)]
enum Token {
    Missing,
    Cluster,
    Admin,
    Read,
    Raw(&'static str),
}

struct Probe {
    name: &'static str,
    method: &'static str,
    path: String,
    token: Token,
    content_type: Option<&'static str>,
    body: String,
    status: u16,
    code: &'static str,
}

fn probe(
    name: &'static str,
    method: &'static str,
    path: &str,
    token: Token,
    body: Value,
    status: u16,
    code: &'static str,
) -> Probe {
    let body = if body.is_null() { String::new() } else { body.to_string() };
    Probe { name, method, path: path.into(), token, content_type: Some("application/json"), body, status, code }
}

fn raw(
    name: &'static str,
    method: &'static str,
    path: &str,
    token: Token,
    body: String,
    status: u16,
    code: &'static str,
) -> Probe {
    Probe { body, ..probe(name, method, path, token, Value::Null, status, code) }
}

/// What must not change: nodes, deployments, assignments, strategy, eligibility, no
/// drain and no shutdown.
async fn state(sb: &Sandbox) -> anyhow::Result<Value> {
    let c = sb.client();
    let mut hives: Vec<(String, bool)> = c.hives().await?.into_iter().map(|h| (h.id.to_string(), h.eligible)).collect();
    hives.sort();
    let mut workers: Vec<String> = c.workers().await?.into_iter().map(|w| w.id.to_string()).collect();
    workers.sort();
    let deployments: Value = c.get_json("/v1/deployments").await?;
    let assignments: Value = c.get_json("/v1/assignments").await?;
    let strategy: Value = c.get_json("/v1/placement/strategy").await?;
    let shutdown = queen_client::http()
        .get(format!("{}/v1/cluster/shutdown", sb.queen_url()))
        .bearer_auth(ADMIN)
        .send()
        .await?
        .status()
        .as_u16();
    Ok(json!({"hives": hives, "workers": workers, "deployments": deployments, "assignments": assignments,
              "strategy": strategy, "shutdown_status": shutdown}))
}

fn stream_view(s: &Snapshot) -> Value {
    json!({
        "hives": s.hives.iter().map(|h| h.id.to_string()).collect::<Vec<_>>(),
        "workers": s.workers.iter().map(|w| w.id.to_string()).collect::<Vec<_>>(),
        "deployments": s.deployments.len(),
        "shutdown": s.shutdown.is_some(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_json_errors_and_change_nothing() -> anyhow::Result<()> {
    let sb = Sandbox::builder().hives(1).workers_per_hive(1).tokens(CLUSTER, ADMIN, READ).start().await?;
    let base = sb.queen_url();
    let http = queen_client::http();
    let before = state(&sb).await?;
    let stream_before = sandbox::wait_until("a snapshot with the cluster", Duration::from_secs(5), || async {
        sb.snapshot().await.ok().filter(|s| s.hives.len() == 1 && s.workers.len() == 1).map(|s| stream_view(&s))
    })
    .await?;

    // Slow clients first, in the background: they take the deadlines (10 s) to be cut off.
    let slow_body = tokio::spawn(slow_body(sb.queen_addr()));
    let slow_header = tokio::spawn(slow_header(sb.queen_addr()));

    let nested = format!("{}1{}", "[".repeat(5_000), "]".repeat(5_000));
    let deployment = || json!({"name": "web", "command": "/bin/true", "replicas": 1});
    let with = |mut v: Value, key: &str, value: Value| {
        v[key] = value;
        v
    };
    let long_id = "a".repeat(65);
    let big = "x".repeat(70_000);
    use Token::*;
    let probes = vec![
        // Auth: missing, garbage, wrong kind, wrong scheme.
        probe("heartbeat without a token", "POST", "/v1/hive-heartbeat", Missing, hive_beat("x"), 401, "unauthorized"),
        probe(
            "heartbeat with a garbage token",
            "POST",
            "/v1/worker-heartbeat",
            Raw("nope"),
            worker_beat("x"),
            401,
            "unauthorized",
        ),
        probe("heartbeat with the read token", "POST", "/v1/hive-heartbeat", Read, hive_beat("x"), 403, "forbidden"),
        probe("deploy with the cluster token", "POST", "/v1/deployments", Cluster, deployment(), 403, "forbidden"),
        probe("deploy with the read token", "POST", "/v1/deployments", Read, deployment(), 403, "forbidden"),
        probe("shutdown with the cluster token", "POST", "/v1/cluster/shutdown", Cluster, json!({}), 403, "forbidden"),
        probe("shutdown without a token", "POST", "/v1/cluster/shutdown", Missing, json!({}), 401, "unauthorized"),
        probe("read without a token", "GET", "/v1/hives", Missing, Value::Null, 401, "unauthorized"),
        probe("stream without a token", "GET", "/v1/heartbeats/stream", Missing, Value::Null, 401, "unauthorized"),
        probe(
            "strategy with the read token",
            "PUT",
            "/v1/placement/strategy",
            Read,
            json!({"strategy": "random"}),
            403,
            "forbidden",
        ),
        probe(
            "eligibility with the cluster token",
            "PUT",
            "/v1/hives/hive-0/eligibility",
            Cluster,
            json!({"eligible": false}),
            403,
            "forbidden",
        ),
        probe(
            "drain with a 4 KiB garbage token",
            "POST",
            "/v1/hives/hive-0/drain",
            Raw(Box::leak("g".repeat(4096).into_boxed_str())),
            json!({}),
            401,
            "unauthorized",
        ),
        probe(
            "remove a hive with no token",
            "DELETE",
            "/v1/hives/hive-0?force=true",
            Missing,
            Value::Null,
            401,
            "unauthorized",
        ),
        probe(
            "jobs with the read token",
            "POST",
            "/v1/jobs",
            Read,
            json!({"kind": "sleep", "ms": 1}),
            403,
            "forbidden",
        ),
        // Deployments.
        raw("deploy: malformed json", "POST", "/v1/deployments", Admin, "{\"name\":".into(), 400, "malformed_json"),
        probe(
            "deploy: negative replicas",
            "POST",
            "/v1/deployments",
            Admin,
            with(deployment(), "replicas", json!(-1)),
            422,
            "invalid_body",
        ),
        probe(
            "deploy: replicas beyond u32",
            "POST",
            "/v1/deployments",
            Admin,
            with(deployment(), "replicas", json!(u64::MAX)),
            422,
            "invalid_body",
        ),
        probe(
            "deploy: replicas over the cap",
            "POST",
            "/v1/deployments",
            Admin,
            with(deployment(), "replicas", json!(10_001)),
            422,
            "invalid_body",
        ),
        probe(
            "deploy: unicode name",
            "POST",
            "/v1/deployments",
            Admin,
            with(deployment(), "name", json!("wëb")),
            422,
            "invalid_body",
        ),
        probe(
            "deploy: path in name",
            "POST",
            "/v1/deployments",
            Admin,
            with(deployment(), "name", json!("../web")),
            422,
            "invalid_body",
        ),
        probe(
            "deploy: empty command",
            "POST",
            "/v1/deployments",
            Admin,
            with(deployment(), "command", json!(" ")),
            422,
            "invalid_body",
        ),
        probe(
            "deploy: NUL in an argument",
            "POST",
            "/v1/deployments",
            Admin,
            with(deployment(), "args", json!(["a\u{0}b"])),
            422,
            "invalid_body",
        ),
        probe(
            "deploy: APIARY_ env override",
            "POST",
            "/v1/deployments",
            Admin,
            with(deployment(), "env", json!({"APIARY_TOKEN": "x"})),
            422,
            "invalid_body",
        ),
        probe(
            "deploy: APIARY_ secret env override",
            "POST",
            "/v1/deployments",
            Admin,
            with(deployment(), "secret_env", json!({"APIARY_TOKEN": "x"})),
            422,
            "invalid_body",
        ),
        probe(
            "deploy: a variable both plain and secret",
            "POST",
            "/v1/deployments",
            Admin,
            with(with(deployment(), "env", json!({"PW": "a"})), "secret_env", json!({"PW": "b"})),
            422,
            "invalid_body",
        ),
        probe(
            "deploy: secret env as a list",
            "POST",
            "/v1/deployments",
            Admin,
            with(deployment(), "secret_env", json!(["PW=b"])),
            422,
            "invalid_body",
        ),
        probe("audit with the read token", "GET", "/v1/audit", Read, Value::Null, 403, "forbidden"),
        probe(
            "stop unknown replicas with the cluster token",
            "POST",
            "/v1/cluster/unknown-replicas/stop",
            Cluster,
            json!({}),
            403,
            "forbidden",
        ),
        probe("audit with the cluster token", "GET", "/v1/audit", Cluster, Value::Null, 403, "forbidden"),
        probe("audit: limit zero", "GET", "/v1/audit?limit=0", Admin, Value::Null, 400, "invalid_limit"),
        probe("audit: limit not a number", "GET", "/v1/audit?limit=lots", Admin, Value::Null, 400, "invalid_query"),
        probe(
            "ack of a command never sent",
            "POST",
            "/v1/hives/hive-0/acks",
            Cluster,
            json!({"command_id": u64::MAX, "ok": true}),
            409,
            "unknown_command",
        ),
        probe(
            "forced drain with the cluster token",
            "POST",
            "/v1/hives/hive-0/drain",
            Cluster,
            json!({"deadline_ms": 0}),
            403,
            "force_needs_admin",
        ),
        probe(
            "deploy: unknown field",
            "POST",
            "/v1/deployments",
            Admin,
            with(deployment(), "privileged", json!(true)),
            422,
            "invalid_body",
        ),
        probe(
            "deploy: KILL as the stop signal",
            "POST",
            "/v1/deployments",
            Admin,
            with(deployment(), "process", json!({"stop_signal": "KILL"})),
            422,
            "invalid_body",
        ),
        probe(
            "deploy: a relative working_dir",
            "POST",
            "/v1/deployments",
            Admin,
            with(deployment(), "process", json!({"working_dir": "../etc"})),
            422,
            "invalid_body",
        ),
        probe(
            "deploy: a user that is an option",
            "POST",
            "/v1/deployments",
            Admin,
            with(deployment(), "process", json!({"user": "--help"})),
            422,
            "invalid_body",
        ),
        probe(
            "deploy: a stop timeout of a day",
            "POST",
            "/v1/deployments",
            Admin,
            with(deployment(), "process", json!({"stop_timeout_ms": 86_400_000u64})),
            422,
            "invalid_body",
        ),
        probe(
            "deploy: an unknown process option",
            "POST",
            "/v1/deployments",
            Admin,
            with(deployment(), "process", json!({"nice": 10})),
            422,
            "invalid_body",
        ),
        probe(
            "deploy: an empty spread_by label",
            "POST",
            "/v1/deployments",
            Admin,
            with(deployment(), "spread_by", json!("")),
            422,
            "invalid_body",
        ),
        probe(
            "deploy: args as a string",
            "POST",
            "/v1/deployments",
            Admin,
            with(deployment(), "args", json!("--x")),
            422,
            "invalid_body",
        ),
        raw("deploy: deeply nested", "POST", "/v1/deployments", Admin, nested.clone(), 422, "invalid_body"),
        raw(
            "deploy: body over 64 KiB",
            "POST",
            "/v1/deployments",
            Admin,
            with(deployment(), "command", json!(big)).to_string(),
            413,
            "body_too_large",
        ),
        raw(
            "deploy: duplicate name key",
            "POST",
            "/v1/deployments",
            Admin,
            deployment().to_string().replacen('{', "{\"name\":\"twin\",", 1),
            422,
            "invalid_body",
        ),
        Probe {
            content_type: Some("application/xml"),
            ..probe("deploy: xml", "POST", "/v1/deployments", Admin, deployment(), 415, "unsupported_media_type")
        },
        probe(
            "scale an unknown deployment",
            "PATCH",
            "/v1/deployments/nope",
            Admin,
            json!({"replicas": 1}),
            404,
            "not_found",
        ),
        probe(
            "scale with a bad name",
            "PATCH",
            "/v1/deployments/bad%20name",
            Admin,
            json!({"replicas": 1}),
            400,
            "invalid_id",
        ),
        probe(
            "scale with replicas as text",
            "PATCH",
            "/v1/deployments/nope",
            Admin,
            json!({"replicas": "3"}),
            422,
            "invalid_body",
        ),
        probe("undeploy an unknown deployment", "DELETE", "/v1/deployments/nope", Admin, Value::Null, 404, "not_found"),
        probe(
            "update with an unknown field",
            "PATCH",
            "/v1/deployments/nope",
            Admin,
            json!({"image": "x"}),
            422,
            "invalid_body",
        ),
        probe(
            "update policy with an unknown field",
            "PATCH",
            "/v1/deployments/nope",
            Admin,
            json!({"update": {"max_surge": 2}}),
            422,
            "invalid_body",
        ),
        probe(
            "restart an unknown deployment",
            "POST",
            "/v1/deployments/nope/restart",
            Admin,
            json!({}),
            404,
            "not_found",
        ),
        probe("restart with the read token", "POST", "/v1/deployments/nope/restart", Read, json!({}), 403, "forbidden"),
        probe("restart an unknown replica", "POST", "/v1/replicas/nope-0/restart", Admin, json!({}), 404, "not_found"),
        probe(
            "pause an unknown rollout",
            "POST",
            "/v1/deployments/nope/rollout/pause",
            Admin,
            json!({}),
            404,
            "not_found",
        ),
        probe(
            "resume with the read token",
            "POST",
            "/v1/deployments/nope/rollout/resume",
            Read,
            json!({}),
            403,
            "forbidden",
        ),
        probe(
            "undo an unknown deployment",
            "POST",
            "/v1/deployments/nope/rollout/undo",
            Admin,
            json!({}),
            404,
            "not_found",
        ),
        probe(
            "history of an unknown deployment",
            "GET",
            "/v1/deployments/nope/history",
            Read,
            Value::Null,
            404,
            "not_found",
        ),
        probe(
            "history without a token",
            "GET",
            "/v1/deployments/nope/history",
            Missing,
            Value::Null,
            401,
            "unauthorized",
        ),
        probe(
            "restart a replica with a bad name",
            "POST",
            "/v1/replicas/bad%20name/restart",
            Admin,
            json!({}),
            400,
            "invalid_id",
        ),
        // Strategy, eligibility, drain, removal.
        probe(
            "unknown strategy",
            "PUT",
            "/v1/placement/strategy",
            Admin,
            json!({"strategy": "chaos"}),
            422,
            "invalid_body",
        ),
        // serde_json reports a number where an enum name belongs as a syntax error.
        probe(
            "strategy as a number",
            "PUT",
            "/v1/placement/strategy",
            Admin,
            json!({"strategy": 5}),
            400,
            "malformed_json",
        ),
        probe(
            "eligible as text",
            "PUT",
            "/v1/hives/hive-0/eligibility",
            Admin,
            json!({"eligible": "no"}),
            422,
            "invalid_body",
        ),
        probe(
            "eligibility of an unknown hive",
            "PUT",
            "/v1/hives/ghost/eligibility",
            Admin,
            json!({"eligible": false}),
            404,
            "not_found",
        ),
        probe("drain an unknown hive", "POST", "/v1/hives/ghost/drain", Admin, json!({}), 404, "not_found"),
        probe(
            "drain with a negative deadline",
            "POST",
            "/v1/hives/hive-0/drain",
            Admin,
            json!({"deadline_ms": -5}),
            422,
            "invalid_body",
        ),
        raw(
            "drain with an overflowing deadline",
            "POST",
            "/v1/hives/hive-0/drain",
            Admin,
            "{\"deadline_ms\":1e400}".into(),
            400,
            "malformed_json",
        ),
        probe("remove an online hive", "DELETE", "/v1/hives/hive-0", Admin, Value::Null, 409, "hive_online"),
        probe("remove with a traversal id", "DELETE", "/v1/hives/..%2Fetc", Admin, Value::Null, 400, "invalid_id"),
        // Serde's structs also take an array of their fields; every body must be an object.
        raw(
            "drain with an array for a body",
            "POST",
            "/v1/hives/hive-0/drain",
            Admin,
            "[]".into(),
            422,
            "invalid_body",
        ),
        raw(
            "shutdown with an array for a body",
            "POST",
            "/v1/cluster/shutdown",
            Admin,
            "[]".into(),
            422,
            "invalid_body",
        ),
        // Cluster shutdown, ACKs, jobs.
        probe(
            "shutdown: timeout as text",
            "POST",
            "/v1/cluster/shutdown",
            Admin,
            json!({"phase_timeout_ms": "soon"}),
            422,
            "invalid_body",
        ),
        probe(
            "shutdown: dry_run as a number",
            "POST",
            "/v1/cluster/shutdown",
            Admin,
            json!({"dry_run": 1}),
            422,
            "invalid_body",
        ),
        probe(
            "shutdown: unknown field",
            "POST",
            "/v1/cluster/shutdown",
            Admin,
            json!({"now": true}),
            422,
            "invalid_body",
        ),
        // Leadership transfer: admin only; on a single queen there is no one to hand over to.
        probe(
            "transfer with the cluster token",
            "POST",
            "/v1/cluster/leader/transfer",
            Cluster,
            json!({}),
            403,
            "forbidden",
        ),
        probe(
            "transfer: to as a number",
            "POST",
            "/v1/cluster/leader/transfer",
            Admin,
            json!({"to": 7}),
            422,
            "invalid_body",
        ),
        probe(
            "transfer on one queen",
            "POST",
            "/v1/cluster/leader/transfer",
            Admin,
            json!({"to": "x:1"}),
            409,
            "no_replicas",
        ),
        raw("ack: not json", "POST", "/v1/hives/hive-0/acks", Cluster, "ack!".into(), 400, "malformed_json"),
        probe("ack: wrong types", "POST", "/v1/hives/hive-0/acks", Cluster, json!({"id": "one"}), 422, "invalid_body"),
        probe("job: unknown kind", "POST", "/v1/jobs", Cluster, json!({"kind": "rm -rf"}), 422, "invalid_body"),
        probe(
            "job: negative sleep",
            "POST",
            "/v1/jobs",
            Cluster,
            json!({"kind": "sleep", "ms": -1}),
            422,
            "invalid_body",
        ),
        probe(
            "job: bad deployment filter",
            "POST",
            "/v1/jobs?deployment=a%2Fb",
            Cluster,
            json!({"kind": "sleep", "ms": 1}),
            400,
            "invalid_id",
        ),
        // Ids in paths, unknown paths, wrong methods.
        probe("NUL in a hive id", "GET", "/v1/hives/a%00b", Admin, Value::Null, 400, "invalid_id"),
        probe("unicode worker id", "GET", "/v1/workers/w%C3%B6rker", Admin, Value::Null, 400, "invalid_id"),
        probe(
            "id over 64 characters",
            "GET",
            &format!("/v1/hives/{long_id}/events"),
            Admin,
            Value::Null,
            400,
            "invalid_id",
        ),
        probe("unknown path", "GET", "/v1/secrets", Admin, Value::Null, 404, "not_found"),
        probe(
            "outside /v1 (dot segments resolved by the client)",
            "GET",
            "/v1/../../etc/passwd",
            Admin,
            Value::Null,
            404,
            "not_found",
        ),
        probe("PUT on the snapshot", "PUT", "/v1/snapshot", Admin, json!({}), 405, "method_not_allowed"),
        probe("DELETE on the stream", "DELETE", "/v1/heartbeats/stream", Admin, Value::Null, 405, "method_not_allowed"),
        probe(
            "GET on a heartbeat endpoint",
            "GET",
            "/v1/worker-heartbeat",
            Cluster,
            Value::Null,
            405,
            "method_not_allowed",
        ),
    ];
    // Each probe field, and the log policy, wrong in one way: refused as a whole.
    let mut probes = probes;
    let bad_checks = [
        ("liveness", json!({"http": "/healthz", "tcp": true})),
        ("liveness", json!({"interval_ms": 1000})),
        ("liveness", json!({"http": "healthz"})),
        ("readiness", json!({"http": "/a b"})),
        ("readiness", json!({"exec": []})),
        ("readiness", json!({"tcp": false})),
        ("startup", json!({"tcp": true, "interval_ms": 0})),
        ("startup", json!({"tcp": true, "failures": 0})),
        ("startup", json!({"tcp": true, "timeout_ms": 120_000})),
        ("liveness", json!({"tcp": true, "grpc": "x"})),
        ("logs", json!({"max_bytes": 10, "files": 3})),
        ("logs", json!({"max_bytes": 1_048_576, "files": 0})),
        ("resources", json!({"cpu_millis": -1})),
        ("resources", json!({"memory_bytes": 1024})),
        ("resources", json!({"cpu_millis": 2_000_000})),
        ("resources", json!({"gpus": 1})),
    ];
    for (field, value) in bad_checks {
        let body = with(deployment(), field, value.clone());
        probes.push(probe(
            "deploy: a bad probe or log policy",
            "POST",
            "/v1/deployments",
            Admin,
            body,
            422,
            "invalid_body",
        ));
        let patch = if matches!(field, "logs" | "resources") {
            json!({ field: value })
        } else {
            json!({ "probes": { field: value } })
        };
        probes.push(probe(
            "patch: a bad probe or log policy",
            "PATCH",
            "/v1/deployments/nope",
            Admin,
            patch,
            422,
            "invalid_body",
        ));
    }
    assert!(probes.len() >= 40, "{} probes", probes.len());

    for p in &probes {
        let method = reqwest::Method::from_bytes(p.method.as_bytes())?;
        let mut req = http.request(method, format!("{base}{}", p.path)).body(p.body.clone());
        if let Some(ct) = p.content_type {
            req = req.header("content-type", ct);
        }
        req = match p.token {
            Token::Missing => req,
            Token::Cluster => req.bearer_auth(CLUSTER),
            Token::Admin => req.bearer_auth(ADMIN),
            Token::Read => req.bearer_auth(READ),
            Token::Raw(t) => req.bearer_auth(t),
        };
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        assert_eq!(status, p.status, "{}: {text}", p.name);
        let err: ApiErrorBody =
            serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: not a JSON error ({e}): {text}", p.name))?;
        assert_eq!(err.code, p.code, "{}: {text}", p.name);
        assert!(!err.message.is_empty(), "{}", p.name);
    }

    // A request head over the 16 KiB limit: 431 with the JSON body; far over it, hyper
    // cuts the connection off before reading it all (no JSON there).
    let huge =
        http.get(format!("{base}/v1/hives")).bearer_auth(ADMIN).header("x-junk", "j".repeat(20_000)).send().await?;
    assert_eq!(huge.status().as_u16(), 431);
    assert_eq!(huge.json::<ApiErrorBody>().await?.code, "headers_too_large");
    let enormous = http.get(format!("{base}/v1/hives")).header("x-junk", "j".repeat(200_000)).send().await;
    assert!(enormous.is_err() || enormous.is_ok_and(|r| r.status().as_u16() == 431));

    // A flood from one sender: 429 with Retry-After, the first few accepted.
    let mut limited = 0;
    for seq in 1..=60u64 {
        let mut beat = hive_beat("flood");
        beat["seq"] = json!(seq);
        let resp = http.post(format!("{base}/v1/hive-heartbeat")).bearer_auth(CLUSTER).json(&beat).send().await?;
        if resp.status().as_u16() == 429 {
            assert!(resp.headers().contains_key("retry-after"));
            assert_eq!(resp.json::<ApiErrorBody>().await?.code, "rate_limited");
            limited += 1;
        }
    }
    assert!(limited > 0, "the flood was never limited");

    let (status, body) = slow_body.await??;
    assert_eq!(status, 408, "{body}");
    assert_eq!(serde_json::from_str::<ApiErrorBody>(&body)?.code, "request_timeout");
    let cut_after = slow_header.await??;
    assert!(cut_after < Duration::from_secs(20), "a slow request head was held for {cut_after:?}");

    // Nothing changed but the flooder, which did get in before it was limited.
    let c = sb.client();
    c.delete("/v1/hives/flood?force=true").await?;
    assert_eq!(state(&sb).await?, before);
    // The first frame is the latest; the second was built after the flooder was removed.
    let mut stream = Box::pin(c.snapshots().await?);
    let mut snapshot = None;
    for _ in 0..2 {
        let next = tokio::time::timeout(Duration::from_secs(5), futures_util::StreamExt::next(&mut stream)).await?;
        snapshot = Some(next.ok_or_else(|| anyhow::anyhow!("stream ended"))??);
    }
    assert_eq!(snapshot.as_ref().map(stream_view), Some(stream_before));

    // And a normal heartbeat is still served.
    let ok =
        http.post(format!("{base}/v1/hive-heartbeat")).bearer_auth(CLUSTER).json(&hive_beat("good")).send().await?;
    assert_eq!(ok.status().as_u16(), 200);
    sb.shutdown().await
}

/// A body promised by Content-Length that arrives one byte a second.
async fn slow_body(addr: std::net::SocketAddr) -> anyhow::Result<(u16, String)> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    let head = format!(
        "POST /v1/deployments HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {ADMIN}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await?;
    let mut answer = Vec::new();
    for _ in 0..30 {
        tcp.write_all(b" ").await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut buf = [0u8; 4096];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(10), tcp.read(&mut buf)).await {
            answer.extend_from_slice(&buf[..n]);
            if n == 0 || answer.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    }
    tokio::time::timeout(Duration::from_secs(2), tcp.read_to_end(&mut answer)).await.ok();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.split_whitespace().nth(1).unwrap_or("0").parse()?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    Ok((status, body))
}

/// A request head trickled a byte a second: the connection is closed at the deadline.
async fn slow_header(addr: std::net::SocketAddr) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.write_all(b"GET /healthz HTTP/1.1\r\n").await?;
    for _ in 0..60 {
        if tcp.write_all(b"x").await.is_err() {
            break;
        }
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_secs(1), tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => break, // an error status before closing is as good
            Err(_) => {}
        }
    }
    Ok(started.elapsed())
}

/// The queen closes a kept-alive connection that sits idle (hyper's header-read timer runs
/// between requests), and Apiary's clients drop idle connections before that: a client
/// that reused one as the queen closed it would lose the request ("connection closed
/// before message completed"), which once failed a deploy in CI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_drop_idle_connections_before_the_queen_does() -> anyhow::Result<()> {
    let sb = Sandbox::builder().hives(0).start().await?;
    let mut tcp = tokio::net::TcpStream::connect(sb.queen_addr()).await?;
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await??;
        anyhow::ensure!(n > 0, "the queen closed the connection before answering");
        answer.extend_from_slice(&buf[..n]);
    }
    // Idle from here: read until the queen closes (the body's bytes may still arrive).
    let idle_from = Instant::now();
    let closed_after = loop {
        match tokio::time::timeout(Duration::from_secs(60), tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break idle_from.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => anyhow::bail!("an idle connection was kept for a minute"),
        }
    };
    assert!(
        queen_client::POOL_IDLE + Duration::from_secs(1) < closed_after,
        "the queen closes idle connections after {closed_after:?}; clients keep them for {:?}",
        queen_client::POOL_IDLE
    );
    sb.shutdown().await
}

/// A change that would leave a deployment invalid is refused whole: the spec, its version
/// and its replicas stay as they were, and no rollout starts.
#[tokio::test]
async fn a_bad_update_of_a_deployment_changes_nothing() -> anyhow::Result<()> {
    let sb = Sandbox::builder().hives(1).workers_per_hive(0).start().await?;
    let c = sb.client();
    let _: contract::DeploymentStatus =
        c.post_json("/v1/deployments", &json!({"name": "web", "command": "/bin/true", "replicas": 0})).await?;
    let before: Value = c.get_json("/v1/deployments/web").await?;
    let http = queen_client::http();
    for (what, body) in [
        ("max_parallel 0", json!({"update": {"max_parallel": 0}})),
        ("no progress deadline", json!({"update": {"progress_deadline_ms": 0}})),
        ("a blank command", json!({"command": " "})),
        ("an APIARY_ variable", json!({"env": {"APIARY_TOKEN": "x"}})),
        ("an argument with NUL", json!({"args": ["a\u{0}b"]})),
        ("too many replicas", json!({"replicas": 10_001, "command": "/bin/false"})),
    ] {
        let resp = http.patch(format!("{}/v1/deployments/web", sb.queen_url())).json(&body).send().await?;
        assert_eq!(resp.status().as_u16(), 422, "{what}");
        let err: ApiErrorBody = resp.json().await?;
        assert!(!err.message.is_empty(), "{what} says why");
    }
    let after: Value = c.get_json("/v1/deployments/web").await?;
    assert_eq!(before, after, "nothing changed");
    assert!(after.get("rollout").is_none() && after["version"] == json!(0), "{after}");
    sb.shutdown().await
}
