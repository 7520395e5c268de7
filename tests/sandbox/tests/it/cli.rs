//! The `queen` binary as a script would use it: every command's `--output json` decodes
//! as the contract types it claims to be, `--watch` prints one document per line, and the
//! exit status tells "done", "refused", "usage" and "queen unreachable" apart.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use contract::{
    Assignment, AuditLog, ClusterStats, DeploymentStatus, DrainStatus, EligibilityBody, LeaderInfo, ShutdownAnswer,
    ShutdownPlan, StrategyBody, cli,
};
use sandbox::{Sandbox, wait_until};
use serde::de::DeserializeOwned;
use serde_json::json;

fn queen_cli(url: &str, args: &[&str]) -> anyhow::Result<Output> {
    let bin = sandbox::built_binaries()?.join("queen");
    Ok(Command::new(bin).args(args).env("APIARY_QUEEN", url).env_remove("APIARY_ADMIN_TOKEN").output()?)
}

/// Runs `queen ARGS --output json` and decodes what it printed as `T`.
async fn json_of<T: DeserializeOwned>(url: &str, args: &[&str]) -> anyhow::Result<T> {
    let (url, mut args) = (url.to_string(), args.iter().map(|a| a.to_string()).collect::<Vec<_>>());
    // Before a `--`, after which everything is the deployed command's.
    let at = args.iter().position(|a| a == "--").unwrap_or(args.len());
    args.splice(at..at, ["--output".to_string(), "json".to_string()]);
    let out =
        tokio::task::spawn_blocking(move || queen_cli(&url, &args.iter().map(String::as_str).collect::<Vec<_>>()))
            .await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(out.status.success(), "failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(&stdout).map_err(|e| anyhow::anyhow!("not the contract's JSON ({e}): {stdout}"))
}

#[tokio::test]
async fn every_command_prints_json_its_contract_type_decodes() -> anyhow::Result<()> {
    let sb = Sandbox::builder()
        .hives(2)
        .workers_per_hive(0)
        .heartbeat_interval(Duration::from_millis(300))
        .snapshot_interval(Duration::from_millis(300))
        .start()
        .await?;
    sb.wait_for_counts(2, 0, Duration::from_secs(10)).await?;
    let url = sb.queen_url();
    let hive = sb.hive_ids()[0].to_string();

    // A deployment of a plain sleep, so the deployment reads have rows.
    let created: DeploymentStatus = json_of(
        &url,
        &[
            "deploy",
            "naps",
            "--command",
            "/bin/sleep",
            "--replicas",
            "2",
            "--stop-signal",
            "SIGINT",
            "--working-dir",
            "/tmp",
            "--",
            "300",
        ],
    )
    .await?;
    assert_eq!(created.spec.replicas, 2);
    assert_eq!(created.spec.process.stop_signal, Some(contract::StopSignal::Int));
    assert_eq!(created.spec.process.working_dir.as_deref(), Some("/tmp"));
    wait_until("both replicas placed", Duration::from_secs(10), || async {
        let d = sb.client().deployments().await.ok()?;
        d.first().is_some_and(|d| d.assignments.iter().filter(|a| a.hive.is_some()).count() == 2).then_some(())
    })
    .await?;

    let status: cli::Status = json_of(&url, &["status"]).await?;
    assert_eq!(status.snapshot.hives_total, 2);
    assert!(status.leader.is_self, "a lone queen leads");
    let nodes: cli::Nodes = json_of(&url, &["nodes"]).await?;
    assert_eq!(nodes.hives.len(), 2);
    let listed: Vec<DeploymentStatus> = json_of(&url, &["deployments"]).await?;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].assignments.len(), 2);
    // Before any drain can have moved it: a new instance of naps-0, where it runs.
    let before = listed[0].assignments.iter().find(|a| a.key().as_str() == "naps-0").cloned();
    let one: Assignment = json_of(&url, &["restart", "naps-0"]).await?;
    assert_eq!((one.key().as_str(), one.worker.as_str()), ("naps-0", "naps-0.1"), "a new instance");
    assert_eq!(Some(one.hive.clone()), before.map(|b| b.hive), "in place");
    let scaled: DeploymentStatus = json_of(&url, &["scale", "naps", "3"]).await?;
    assert_eq!(scaled.spec.replicas, 3);
    let stats: ClusterStats = json_of(&url, &["stats"]).await?;
    assert_eq!(stats.hives_eligible, 2);
    let placed: Vec<Assignment> = json_of(&url, &["assignments"]).await?;
    assert_eq!(placed.len(), 3);
    let strategy: StrategyBody = json_of(&url, &["strategy", "least_loaded"]).await?;
    assert_eq!(strategy.strategy.as_str(), "least_loaded");
    let leader: LeaderInfo = json_of(&url, &["leader", "show"]).await?;
    assert!(leader.is_self);
    let off: EligibilityBody = json_of(&url, &["node", "eligibility", &hive, "off"]).await?;
    assert!(!off.eligible);
    let on: EligibilityBody = json_of(&url, &["node", "eligibility", &hive, "on"]).await?;
    assert!(on.eligible);
    let drain: DrainStatus = json_of(&url, &["node", "drain", &hive, "--no-wait"]).await?;
    assert_eq!(drain.hive.as_str(), hive);
    let cancelled: DrainStatus = json_of(&url, &["node", "drain", &hive, "--cancel"]).await?;
    assert!(cancelled.cancelled || cancelled.done, "{cancelled:?}");
    let plan: ShutdownPlan = json_of(&url, &["cluster", "shutdown", "--dry-run"]).await?;
    assert_eq!(plan.hives.len(), 2);
    let audit: AuditLog = json_of(&url, &["audit", "--limit", "100"]).await?;
    assert!(audit.entries.iter().any(|e| e.path.contains("/v1/deployments")), "{audit:?}");
    let restarted: DeploymentStatus = json_of(&url, &["restart", "naps"]).await?;
    assert_eq!(restarted.version, 1);
    let updated: DeploymentStatus =
        json_of(&url, &["update", "naps", "--env", "MODE=b", "--max-parallel", "2"]).await?;
    assert_eq!((updated.version, updated.spec.update.max_parallel), (2, 2));
    let rollout: Option<contract::RolloutStatus> = json_of(&url, &["rollout", "status", "naps"]).await?;
    assert_eq!(rollout.map(|r| r.to_version), Some(2));
    let history: contract::DeploymentHistory = json_of(&url, &["rollout", "history", "naps"]).await?;
    assert_eq!(history.versions.iter().map(|v| v.version).collect::<Vec<_>>(), vec![0, 1, 2]);
    let gone: cli::Done = json_of(&url, &["undeploy", "naps"]).await?;
    assert_eq!(gone, cli::Done { name: "naps".into(), outcome: "replicas stopping".into() });
    // The dry run printed the plan, the same type the API answers with.
    let direct: ShutdownAnswer =
        sb.client().post_json(contract::paths::CLUSTER_SHUTDOWN, &json!({ "dry_run": true })).await?;
    assert!(matches!(direct, ShutdownAnswer::Plan(p) if p.hives.len() == plan.hives.len()));
    sb.shutdown().await
}

#[tokio::test]
async fn watch_prints_one_json_document_per_line() -> anyhow::Result<()> {
    let sb = Sandbox::builder().hives(1).workers_per_hive(0).start().await?;
    sb.wait_for_counts(1, 0, Duration::from_secs(10)).await?;
    let bin = tokio::task::spawn_blocking(sandbox::built_binaries).await??.join("queen");
    let mut child = Command::new(bin)
        .args(["nodes", "--watch", "--interval", "200ms", "--output", "json", "--queen", &sb.queen_url()])
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let reading = tokio::task::spawn_blocking(move || {
        std::io::BufRead::lines(std::io::BufReader::new(stdout)).take(3).collect::<Result<Vec<_>, _>>()
    });
    // Killing the watch ends the read too (its pipe closes), whatever happened.
    let lines = tokio::time::timeout(Duration::from_secs(10), reading).await;
    child.kill()?;
    child.wait()?;
    let lines = lines???;
    assert_eq!(lines.len(), 3, "three refreshes: {lines:?}");
    for line in &lines {
        let nodes: cli::Nodes = serde_json::from_str(line)?;
        assert_eq!(nodes.hives.len(), 1, "{line}");
    }
    sb.shutdown().await
}

#[tokio::test]
async fn exit_status_tells_refused_usage_and_unreachable_apart() -> anyhow::Result<()> {
    let sb = Sandbox::builder().hives(1).workers_per_hive(0).start().await?;
    let url = sb.queen_url();
    let code = |args: &'static [&'static str], url: String| async move {
        let out = tokio::task::spawn_blocking(move || queen_cli(&url, args)).await??;
        anyhow::Ok((out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned()))
    };
    assert_eq!(code(&["status"], url.clone()).await?.0, Some(0));
    let (refused, said) = code(&["scale", "no-such-deployment", "2"], url.clone()).await?;
    assert_eq!(refused, Some(1), "{said}");
    assert!(said.contains("not_found"), "the queen's answer is said: {said}");
    assert_eq!(code(&["status", "--no-such-flag"], url.clone()).await?.0, Some(2));
    assert_eq!(code(&["top", "--output", "json"], url.clone()).await?.0, Some(2));
    // A port nothing listens on: the queen is down, not refusing.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let (unreachable, said) = code(&["status"], format!("http://{dead}")).await?;
    assert_eq!(unreachable, Some(3), "{said}");
    sb.shutdown().await
}

#[test]
fn completions_and_man_pages_come_from_each_binary() -> anyhow::Result<()> {
    let dir = sandbox::built_binaries()?;
    for (bin, shell, says) in
        [("queen", "bash", "_queen()"), ("hive", "zsh", "#compdef hive"), ("worker", "fish", "complete -c worker")]
    {
        let out = Command::new(dir.join(bin)).args(["completions", shell]).output()?;
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && script.contains(says), "{bin} completions {shell}: {script}");
    }
    let man = sandbox::TempDir::new("man")?;
    let out = Command::new(dir.join("queen")).args(["man", "--dir"]).arg(&man.0).output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for page in ["queen.1", "queen-serve.1", "queen-node-drain.1"] {
        let text = std::fs::read_to_string(man.0.join(page))?;
        assert!(text.contains(".TH"), "{page} is a man page");
    }
    assert!(std::fs::read_to_string(man.0.join("queen-serve.1"))?.contains("admin\\-token"), "serve's flags");
    Ok(())
}
