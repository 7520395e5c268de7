//! What an operator imports beside the binaries: the queen's /metrics passes Prometheus's
//! own linter, the alert rules load and fire on the series they are written for, and every
//! metric the rules and the Grafana dashboard ask for is one a running queen exposes.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use sandbox::Sandbox;

fn deploy_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// Debian's `prometheus` package has it; `cargo xtask test` installs it.
fn promtool(args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(deploy_dir().join("prometheus"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            anyhow::anyhow!("promtool ({e}): install Debian's prometheus package, as `cargo xtask test` does")
        })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    anyhow::ensure!(out.status.success(), "promtool {args:?} failed: {said}");
    Ok(said)
}

/// The metric names an expression mentions (`apiary_...`), as written.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("apiary_") {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// The series names a classic-format exposition offers: each family's, and a histogram's
/// `_bucket`, `_sum` and `_count`.
fn exposed(metrics: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let Some((name, kind)) = rest.split_once(' ') else { continue };
        out.insert(name.to_string());
        if kind == "histogram" {
            out.extend(["_bucket", "_sum", "_count"].map(|s| format!("{name}{s}")));
        }
    }
    out
}

#[tokio::test]
async fn metrics_pass_promtool_and_the_rules_and_dashboard_use_only_what_exists() -> anyhow::Result<()> {
    let sb = Sandbox::builder()
        .hives(1)
        .workers_per_hive(1)
        .heartbeat_interval(Duration::from_millis(200))
        .snapshot_interval(Duration::from_millis(200))
        .start()
        .await?;
    sb.wait_for_counts(1, 1, Duration::from_secs(10)).await?;
    // A few ticks, so the histograms and counters have samples, not only their headers.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let http = queen_client::http();
    let url = format!("{}/metrics", sb.queen_url());
    let classic = http.get(&url).send().await?;
    let content_type = classic.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    let classic = classic.text().await?;
    assert!(classic.contains("apiary_heartbeats_received_total{"), "samples are there: {classic}");
    let checked = tokio::task::spawn_blocking({
        let classic = classic.clone();
        move || promtool(&["check", "metrics"], Some(&classic))
    })
    .await??;
    assert!(!checked.contains("no help text"), "{checked}");
    // A scraper that asks for OpenMetrics (Prometheus does) gets it.
    let open = http.get(&url).header("accept", "application/openmetrics-text; version=1.0.0").send().await?;
    let open_type = open.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    assert!(open_type.starts_with("application/openmetrics-text"), "{open_type}");
    assert!(open.text().await?.trim_end().ends_with("# EOF"));

    tokio::task::spawn_blocking(|| {
        promtool(&["check", "rules", "apiary-alerts.yml"], None)?;
        promtool(&["test", "rules", "apiary-alerts.test.yml"], None)
    })
    .await??;

    let offered = exposed(&classic);
    let rules = std::fs::read_to_string(deploy_dir().join("prometheus/apiary-alerts.yml"))?;
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy_dir().join("grafana/apiary.json"))?)?;
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect();
    assert!(exprs.len() >= 10, "the dashboard has its panels: {}", exprs.len());
    for (what, text) in [("the alert rules", rules), ("the Grafana dashboard", exprs.join("\n"))] {
        let used = names_in(&text);
        assert!(!used.is_empty(), "{what} use metrics");
        let missing: Vec<_> = used.difference(&offered).collect();
        assert!(missing.is_empty(), "{what} use metrics no queen exposes: {missing:?}");
    }
    sb.shutdown().await
}
