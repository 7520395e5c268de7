//! The dashboard in a real headless Chromium (Debian's `chromium` + `chromium-driver`,
//! driven over WebDriver), against an in-process cluster: it renders the nodes, shows a
//! killed hive go offline with the reason, follows the connection, and filters.
//!
//! Needs the built dashboard (`cargo xtask web`, which `cargo xtask test` runs first).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use contract::NodeId;
use fantoccini::{Client, ClientBuilder, Locator};
use sandbox::{Sandbox, wait_until};
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const WAIT: Duration = Duration::from_secs(20);

/// `<target>/debug/dashboard`, where `cargo xtask web` puts the dashboard.
fn dashboard_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().and_then(|d| d.parent()).context("no profile dir")?.join("dashboard");
    if !dir.join("pkg/web-ui_bg.wasm").is_file() {
        bail!("no built dashboard in {}: run `cargo xtask web` (or `cargo xtask test`)", dir.display());
    }
    Ok(dir)
}

/// chromedriver, killed when the test ends however it ends.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn browser() -> anyhow::Result<(Driver, Client, sandbox::TempDir)> {
    for path in [CHROMIUM, CHROMEDRIVER] {
        if !std::path::Path::new(path).exists() {
            bail!("{path} is missing: install Debian's chromium and chromium-driver (cargo xtask test does)");
        }
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let driver = Driver(
        Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting chromedriver")?,
    );
    let profile = sandbox::TempDir::new("chromium")?;
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1600,1000", format!("--user-data-dir={}", profile.0.display()),
            ]
        }),
    );
    let url = format!("http://127.0.0.1:{port}");
    let client = wait_until("chromedriver to accept a session", WAIT, || {
        let caps = caps.clone();
        let url = url.clone();
        async move {
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps)
                .connect(&url)
                .await
                .ok()
        }
    })
    .await?;
    Ok((driver, client, profile))
}

/// Reads the page in one script, so that rows re-rendered between two WebDriver calls
/// can never give a stale element.
async fn rows(c: &Client, table: &str) -> anyhow::Result<Vec<(String, String)>> {
    let script = format!(
        "return Array.from(document.querySelectorAll('#{table} tbody tr')).map(r => [r.dataset.id, r.dataset.state]);"
    );
    let value = c.execute(&script, vec![]).await?;
    Ok(serde_json::from_value(value)?)
}

async fn attr(c: &Client, selector: &str, js: &str) -> anyhow::Result<Value> {
    Ok(c.execute(&format!("const e = document.querySelector('{selector}'); return e ? {js} : null;"), vec![]).await?)
}

/// Waits for the shutdown stepper to show all five phases done.
async fn every_phase_done(c: &Client) -> anyhow::Result<()> {
    wait_page(c, "the shutdown stepper with every phase done", |c| {
        Box::pin(async move {
            let script = "return Array.from(document.querySelectorAll('#shutdown .stepper li')).map(l => l.className);";
            let steps: Vec<String> = serde_json::from_value(c.execute(script, vec![]).await.ok()?).ok()?;
            (steps.len() == 5 && steps.iter().all(|s| s.contains("done"))).then_some(())
        })
    })
    .await
}

/// Clicks in one script: a control redrawn between a find and a click cannot go stale.
async fn click(c: &Client, selector: &str) -> anyhow::Result<()> {
    let script = format!("const e = document.querySelector('{selector}'); if (e) {{ e.click(); }} return !!e;");
    wait_until(&format!("{selector} to click"), WAIT, || {
        let (c, script) = (c.clone(), script.clone());
        async move { c.execute(&script, vec![]).await.ok()?.as_bool().filter(|b| *b) }
    })
    .await?;
    Ok(())
}

async fn wait_page<T>(
    c: &Client,
    what: &str,
    mut check: impl FnMut(&Client) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<T>> + Send + '_>>,
) -> anyhow::Result<T> {
    wait_until(what, WAIT, || check(c)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_cluster_live_in_a_real_browser() -> anyhow::Result<()> {
    let dist = dashboard_dir()?;
    let mut sb = Sandbox::builder()
        .hives(2)
        .workers_per_hive(2)
        .heartbeat_interval(Duration::from_millis(300))
        .snapshot_interval(Duration::from_millis(300))
        .ui_dir(dist)
        .start()
        .await?;
    let (_driver, c, _profile) = browser().await?;
    let loaded = std::time::Instant::now();
    c.goto(&format!("{}/", sb.queen_url())).await?;

    // Every node, live.
    wait_page(&c, "2 hives and 4 workers on the page", |c| {
        Box::pin(async move {
            let h = rows(c, "hives").await.ok()?;
            let w = rows(c, "workers").await.ok()?;
            (h.len() == 2 && w.len() == 4 && h.iter().all(|(_, s)| s == "online")).then_some(())
        })
    })
    .await?;
    let first_render = loaded.elapsed();
    eprintln!("page load to first rendered snapshot: {} ms", first_render.as_millis());
    assert_eq!(attr(&c, "#connection", "e.dataset.state").await?, json!("live"));
    let title = c.title().await?;
    assert!(title.starts_with("2/2 hives · 4/4 workers"), "counts in the tab title: {title}");

    // Filtering.
    c.find(Locator::Css("#filter")).await?.send_keys("hive-1").await?;
    wait_page(&c, "the filter to leave hive-1 and its workers", |c| {
        Box::pin(async move {
            let h = rows(c, "hives").await.ok()?;
            let w = rows(c, "workers").await.ok()?;
            (h.len() == 1 && h[0].0 == "hive-1" && w.len() == 2 && w.iter().all(|(id, _)| id.starts_with("worker-1-")))
                .then_some(())
        })
    })
    .await?;
    c.find(Locator::Css("#filter")).await?.clear().await?;
    // `clear` does not fire `input`; one keystroke and its undo do.
    let filter = c.find(Locator::Css("#filter")).await?;
    filter.send_keys(" ").await?;
    filter.send_keys(&fantoccini::key::Key::Backspace.to_string()).await?;
    wait_page(&c, "the filter to be cleared", |c| {
        Box::pin(async move { (rows(c, "hives").await.ok()?.len() == 2).then_some(()) })
    })
    .await?;

    // kill -9 a hive: its row turns offline and the log says why.
    sb.kill_hive(&NodeId::new("hive-0")?).await?;
    wait_page(&c, "hive-0 shown offline", |c| {
        Box::pin(async move {
            rows(c, "hives").await.ok()?.iter().any(|(id, state)| id == "hive-0" && state == "offline").then_some(())
        })
    })
    .await?;
    let reason = attr(&c, "#events li[data-id=\"hive-0\"][data-kind=\"offline\"] .reason", "e.textContent").await?;
    let reason = reason.as_str().context("an offline event for hive-0 in the log")?.to_string();
    assert!(reason.starts_with("no heartbeat for"), "{reason}");

    // The detail view answers "why is it down?" from the queen's history.
    wait_page(&c, "the detail view of hive-0", |c| {
        Box::pin(async move {
            c.execute("document.querySelector('tr[data-id=\"hive-0\"] button').click(); return true;", vec![])
                .await
                .ok()?;
            let text = attr(c, "#detail", "e.textContent").await.ok()?;
            text.as_str().is_some_and(|t| t.contains("no heartbeat for") && t.contains("hive-0")).then_some(())
        })
    })
    .await?;
    if let Ok(path) = std::env::var("APIARY_SCREENSHOT") {
        std::fs::write(&path, c.screenshot().await?)?;
        eprintln!("screenshot written to {path}");
    }

    // The queen goes away: the page says so; it comes back: the page goes live again.
    let addr = sb.queen_addr();
    sb.stop_queen().await?;
    wait_page(&c, "the connection shown as reconnecting", |c| {
        Box::pin(async move {
            (attr(c, "#connection", "e.dataset.state").await.ok()? == json!("reconnecting")).then_some(())
        })
    })
    .await?;
    let text = attr(&c, "#connection", "e.textContent").await?;
    assert!(text.as_str().is_some_and(|t| t.contains("last snapshot")), "says how old the picture is: {text}");
    sb.restart_queen(addr)?;
    wait_page(&c, "the connection live again with hive-1", |c| {
        Box::pin(async move {
            let live = attr(c, "#connection", "e.dataset.state").await.ok()? == json!("live");
            let h = rows(c, "hives").await.ok()?;
            (live && h.iter().any(|(id, s)| id == "hive-1" && s == "online")).then_some(())
        })
    })
    .await?;

    // A cluster shutdown shows as a stepper, to its end.
    let resp = queen_client::http()
        .post(format!("{}/v1/cluster/shutdown", sb.queen_url()))
        .json(&json!({"drain_deadline_ms": 500, "phase_timeout_ms": 3000}))
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 202);
    every_phase_done(&c).await?;

    c.close().await?;
    sb.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_read_token_the_dashboard_reads_through_its_page_token() -> anyhow::Result<()> {
    let dist = dashboard_dir()?;
    let sb = Sandbox::builder()
        .hives(1)
        .workers_per_hive(1)
        .snapshot_interval(Duration::from_millis(300))
        .tokens("cluster-secret", "admin-secret", "read-secret")
        .ui_dir(dist)
        .start()
        .await?;
    let (_driver, c, _profile) = browser().await?;

    // Without a token the page loads (its files are open) but the stream is refused.
    c.goto(&format!("{}/", sb.queen_url())).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(rows(&c, "hives").await?.is_empty(), "no data without a token");
    assert_ne!(attr(&c, "#connection", "e.dataset.state").await?, json!("live"));

    // With the read token in the page's address, it is live.
    c.goto(&format!("{}/?access_token=read-secret", sb.queen_url())).await?;
    wait_page(&c, "the hive on the page", |c| {
        Box::pin(async move {
            let h = rows(c, "hives").await.ok()?;
            let live = attr(c, "#connection", "e.dataset.state").await.ok()? == json!("live");
            (live && h.len() == 1 && h[0].1 == "online").then_some(())
        })
    })
    .await?;
    // The read token reads, and only reads.
    let refused = queen_client::http()
        .post(format!("{}/v1/deployments", sb.queen_url()))
        .bearer_auth("read-secret")
        .json(&json!({"name": "x", "command": "true", "replicas": 0}))
        .send()
        .await?;
    assert_eq!(refused.status().as_u16(), 403);
    let audit_text = |c: &Client| {
        let c = c.clone();
        async move { attr(&c, "#audit", "e.textContent").await.ok().and_then(|v| v.as_str().map(str::to_string)) }
    };
    wait_page(&c, "the audit panel asking for the admin token", |c| {
        Box::pin(async move { audit_text(c).await.filter(|t| t.contains("needs the admin token")) })
    })
    .await?;

    // Opened with the admin token, the audit panel lists the admin calls by token name.
    let strategy = queen_client::http()
        .put(format!("{}/v1/placement/strategy", sb.queen_url()))
        .bearer_auth("admin-secret")
        .json(&json!({"strategy": "round_robin"}))
        .send()
        .await?;
    assert_eq!(strategy.status().as_u16(), 200);
    c.goto(&format!("{}/?access_token=admin-secret", sb.queen_url())).await?;
    let shown = wait_page(&c, "the strategy change in the audit panel", |c| {
        Box::pin(async move { audit_text(c).await.filter(|t| t.contains("PUT /v1/placement/strategy")) })
    })
    .await?;
    assert!(shown.contains("admin") && shown.contains("200 ok"), "{shown}");
    assert!(!shown.contains("admin-secret"), "{shown}");
    sb.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queen_open_to_anyone_says_so_on_every_dashboard() -> anyhow::Result<()> {
    let dist = dashboard_dir()?;
    let sb =
        Sandbox::builder().hives(1).snapshot_interval(Duration::from_millis(300)).ui_dir(dist.clone()).start().await?;
    let (_driver, c, _profile) = browser().await?;
    c.goto(&format!("{}/", sb.queen_url())).await?;
    wait_page(&c, "the hive on the page", |c| {
        Box::pin(async move { (rows(c, "hives").await.ok()?.len() == 1).then_some(()) })
    })
    .await?;
    assert_eq!(attr(&c, "#warnings", "e.textContent").await?, Value::Null, "loopback without tokens says nothing");
    sb.shutdown().await?;

    let sb = Sandbox::builder()
        .hives(1)
        .snapshot_interval(Duration::from_millis(300))
        .insecure_no_auth()
        .ui_dir(dist)
        .start()
        .await?;
    c.goto(&format!("{}/", sb.queen_url())).await?;
    let banner = wait_page(&c, "the open-access banner", |c| {
        Box::pin(async move { attr(c, "#warnings", "e.textContent").await.ok()?.as_str().map(str::to_string) })
    })
    .await?;
    assert!(banner.contains("no authentication") && banner.contains("--insecure-no-auth"), "{banner}");
    sb.shutdown().await
}

/// The dashboard opened on a follower stays live when the leader is killed: the follower
/// relays the next leader's stream, and a hive that joins after the failover shows up.
#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followers_dashboard_stays_live_through_a_failover() -> anyhow::Result<()> {
    let dist = dashboard_dir()?;
    let etcd = sandbox::Etcd::start()?;
    let mut sb = Sandbox::builder()
        .replicas(3, &etcd, Duration::from_secs(2))
        .hives(2)
        .workers_per_hive(1)
        .heartbeat_interval(Duration::from_millis(300))
        .snapshot_interval(Duration::from_millis(300))
        .ui_dir(dist)
        .start()
        .await?;
    let leader = sb.leader_url(WAIT).await?;
    let follower = sb.queen_urls().into_iter().find(|u| *u != leader).context("no follower")?;
    let (_driver, c, _profile) = browser().await?;
    c.goto(&format!("{follower}/")).await?;
    wait_page(&c, "2 hives on the follower's page", |c| {
        Box::pin(async move { (rows(c, "hives").await.ok()?.len() == 2).then_some(()) })
    })
    .await?;

    sb.kill_queen_at(&leader).await?;
    sb.leader_url(WAIT).await?;
    sb.add_hive(NodeId::new("hive-late")?)?;
    let shown = wait_page(&c, "the hive that joined after the failover", |c| {
        Box::pin(async move {
            let h = rows(c, "hives").await.ok()?;
            (h.len() == 3 && h.iter().all(|(_, s)| s == "online")).then_some(h)
        })
    })
    .await?;
    assert!(shown.iter().any(|(id, _)| id == "hive-late"), "{shown:?}");
    assert_eq!(attr(&c, "#connection", "e.dataset.state").await?, json!("live"));
    sb.shutdown().await
}

/// With the admin token (typed once, kept in the tab's session storage, never in the
/// address) the page acts through the API: scale, drain, eligibility, shutdown with its
/// plan first. Without it, or with a token that cannot change anything, no control shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_admin_token_the_dashboard_scales_drains_and_shuts_down() -> anyhow::Result<()> {
    let dist = dashboard_dir()?;
    let sb = Sandbox::builder()
        .hives(2)
        .workers_per_hive(0)
        .heartbeat_interval(Duration::from_millis(300))
        .snapshot_interval(Duration::from_millis(300))
        .tokens("cluster-secret", "admin-secret", "read-secret")
        .ui_dir(dist)
        .start()
        .await?;
    sb.wait_for_counts(2, 0, WAIT).await?;
    let admin = queen_client::QueenClient::new(&sb.queen_url(), Some("admin-secret".into()), Duration::from_secs(5))?;
    let worker = tokio::task::spawn_blocking(sandbox::built_binaries).await??.join("worker");
    let spec = json!({
        "name": "naps",
        "command": worker.to_string_lossy(),
        "args": ["--heartbeat-interval", "300ms"],
        "replicas": 2,
    });
    let _: contract::DeploymentStatus = admin.post_json("/v1/deployments", &spec).await?;
    let chatty = json!({
        "name": "chatty",
        "command": "sh",
        "args": ["-c", "echo hello out; echo hello err >&2; exec sleep 600"],
        "replicas": 1,
    });
    let _: contract::DeploymentStatus = admin.post_json("/v1/deployments", &chatty).await?;
    let (_driver, c, _profile) = browser().await?;
    c.goto(&format!("{}/?access_token=read-secret", sb.queen_url())).await?;
    wait_page(&c, "the deployment on the page", |c| {
        Box::pin(async move { attr(c, "#deployments tr[data-name=\"naps\"]", "true").await.ok()?.as_bool() })
    })
    .await?;
    c.execute("document.querySelector('tr[data-id=\"hive-0\"] button').click(); return true;", vec![]).await?;
    wait_page(&c, "the detail view of hive-0", |c| {
        Box::pin(
            async move { attr(c, "#detail", "e.textContent").await.ok()?.as_str()?.contains("hive-0").then_some(()) },
        )
    })
    .await?;
    let controls = "['#act-drain', '#act-eligibility', '#act-shutdown', '#act-transfer', 'button.scale']\
                    .filter(s => document.querySelector(s)).length";
    assert_eq!(c.execute(&format!("return {controls};"), vec![]).await?, json!(0), "no controls without the token");

    // A read token is not kept: it could change nothing.
    let enter = |token: &'static str| {
        let c = c.clone();
        async move {
            c.find(Locator::Css("#admin-token")).await?.send_keys(token).await?;
            c.find(Locator::Css("#admin-use")).await?.click().await?;
            anyhow::Ok(())
        }
    };
    let result = |c: &Client| {
        let c = c.clone();
        async move { attr(&c, "#action-result", "e.textContent").await.ok().and_then(|v| v.as_str().map(str::to_string)) }
    };
    enter("read-secret").await?;
    wait_page(&c, "the read token refused", |c| {
        Box::pin(async move { result(c).await.filter(|t| t.contains("not an admin token")) })
    })
    .await?;
    assert_eq!(c.execute(&format!("return {controls};"), vec![]).await?, json!(0));
    c.find(Locator::Css("#admin-token")).await?.clear().await?;
    enter("admin-secret").await?;
    wait_page(&c, "the admin controls", |c| {
        Box::pin(async move { (attr(c, "#act-drain", "true").await.ok()? == json!(true)).then_some(()) })
    })
    .await?;
    let kept = c.execute("return [sessionStorage.getItem('apiary-admin-token'), location.href];", vec![]).await?;
    assert_eq!(kept[0], json!("admin-secret"), "kept for the tab");
    assert!(!kept[1].as_str().unwrap_or("").contains("admin-secret"), "never in the address: {kept}");

    // A replica's output, in the log pane: stdout, then stderr.
    let logs = |c: &Client| {
        let c = c.clone();
        async move { attr(&c, "#logs pre.logs", "e.textContent").await.ok().and_then(|v| v.as_str().map(str::to_string)) }
    };
    click(&c, "button.logs[data-replica=\"chatty-0\"]").await?;
    wait_page(&c, "its stdout in the pane", |c| Box::pin(async move { logs(c).await.filter(|t| t == "hello out\n") }))
        .await?;
    click(&c, "#logs button.stderr").await?;
    wait_page(&c, "its stderr in the pane", |c| Box::pin(async move { logs(c).await.filter(|t| t == "hello err\n") }))
        .await?;
    click(&c, "#logs button.close").await?;

    // Scale from the deployments view.
    c.execute(
        "const row = document.querySelector('tr[data-name=\"naps\"]'); \
         row.querySelector('input.replicas').value = '3'; row.querySelector('button.scale').click(); return true;",
        vec![],
    )
    .await?;
    wait_page(&c, "the scale said and done", |c| {
        Box::pin(async move { result(c).await.filter(|t| t.contains("naps scaled to 3 replicas")) })
    })
    .await?;
    let scaled: contract::DeploymentStatus = admin.get_json("/v1/deployments/naps").await?;
    assert_eq!(scaled.spec.replicas, 3);

    // Restart it, rolling: a new version of the same spec.
    click(&c, "tr[data-name=\"naps\"] button.restart").await?;
    wait_page(&c, "the restart said", |c| {
        Box::pin(async move { result(c).await.filter(|t| t.contains("naps restarting")) })
    })
    .await?;
    let restarted: contract::DeploymentStatus = admin.get_json("/v1/deployments/naps").await?;
    assert_eq!((restarted.version, restarted.spec.replicas), (1, 3), "{restarted:?}");
    wait_until("the restart rolled through", WAIT, || async {
        let d: contract::DeploymentStatus = admin.get_json("/v1/deployments/naps").await.ok()?;
        d.rollout.filter(|r| r.state == contract::RolloutState::Done).map(|_| ())
    })
    .await?;

    // Drain hive-0 from its detail view: its replicas move, it is left ineligible.
    click(&c, "#act-drain").await?;
    wait_page(&c, "the drain said", |c| {
        Box::pin(async move { result(c).await.filter(|t| t.contains("drain of hive-0 started")) })
    })
    .await?;
    let hive0 = NodeId::new("hive-0")?;
    let drained = wait_until("the drain of hive-0 done", WAIT, || async {
        admin.drain_status(&hive0).await.ok().filter(|d| d.done)
    })
    .await?;
    assert!(!drained.cancelled, "{drained:?}");
    let placed: Vec<contract::Assignment> = admin.get_json("/v1/assignments").await?;
    assert!(placed.iter().all(|a| a.hive.as_ref() != Some(&hive0)), "nothing left on hive-0: {placed:?}");
    wait_page(&c, "hive-0 offered back", |c| {
        Box::pin(async move {
            attr(c, "#act-eligibility", "e.textContent").await.ok()?.as_str()?.contains("make eligible").then_some(())
        })
    })
    .await?;
    click(&c, "#act-eligibility").await?;
    wait_until("hive-0 eligible again", WAIT, || async {
        admin.hive("hive-0").await.ok().filter(|h| h.eligible).map(|_| ())
    })
    .await?;

    // A drain that cannot finish (the other hive takes nothing) is cancelled from the page.
    let off: contract::EligibilityBody =
        admin.send_json(reqwest::Method::PUT, "/v1/hives/hive-0/eligibility", &json!({"eligible": false})).await?;
    assert!(!off.eligible);
    c.execute("document.querySelector('tr[data-id=\"hive-1\"] button').click(); return true;", vec![]).await?;
    click(&c, "#act-drain").await?;
    wait_page(&c, "the drain of hive-1 said", |c| {
        Box::pin(async move { result(c).await.filter(|t| t.contains("drain of hive-1 started")) })
    })
    .await?;
    click(&c, "#act-cancel-drain").await?;
    wait_page(&c, "the cancel said", |c| {
        Box::pin(async move { result(c).await.filter(|t| t.contains("drain of hive-1 cancelled")) })
    })
    .await?;
    let hive1 = NodeId::new("hive-1")?;
    assert!(admin.drain_status(&hive1).await?.cancelled, "the queen has it cancelled");
    let placed: Vec<contract::Assignment> = admin.get_json("/v1/assignments").await?;
    assert!(placed.iter().all(|a| a.hive.as_ref() == Some(&hive1)), "nothing moved: {placed:?}");

    // An action the queen refuses says why: one queen has no one to hand leadership to.
    click(&c, "#act-transfer").await?;
    wait_page(&c, "the refused transfer said", |c| {
        Box::pin(async move { result(c).await.filter(|t| t.contains("409")) })
    })
    .await?;
    assert_eq!(attr(&c, "#action-result", "e.dataset.ok").await?, json!("false"));

    // The shutdown shows its plan first; cancel changes nothing, confirm starts it.
    click(&c, "#act-shutdown").await?;
    let plan = wait_page(&c, "the shutdown plan", |c| {
        Box::pin(async move { attr(c, "#shutdown-plan", "e.textContent").await.ok()?.as_str().map(str::to_string) })
    })
    .await?;
    assert!(plan.contains("2 hives") && plan.contains("GATE"), "{plan}");
    click(&c, "#act-shutdown-cancel").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(attr(&c, "#shutdown-plan", "true").await?, Value::Null, "cancelled");
    assert!(sb.snapshot().await?.shutdown.is_none(), "a cancelled plan starts nothing");
    click(&c, "#act-shutdown").await?;
    wait_page(&c, "the plan again", |c| {
        Box::pin(async move { attr(c, "#act-shutdown-confirm", "true").await.ok()?.as_bool() })
    })
    .await?;
    click(&c, "#act-shutdown-confirm").await?;
    every_phase_done(&c).await?;
    c.close().await?;
    sb.shutdown().await
}
