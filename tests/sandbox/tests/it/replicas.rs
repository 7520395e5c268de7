//! Queens as replicas on a real etcd: failover without false deaths or moved replicas, a
//! follower's stream through a failover, fast handover on a graceful stop and on request,
//! fencing of a frozen leader, and a cluster shutdown that survives a leader change.
#![cfg(feature = "etcd")]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use contract::{
    Assignment, EventKind, JobResponse, NodeEvent, PlacementStrategy, QueenRef, ShutdownAnswer, ShutdownStatus,
    Snapshot, TransferAnswer,
};
use queen::config::EtcdSettings;
use queen::peer::Peer;
use queen::store::{Batch, JobRoute, Store, StoreError};
use queen_client::{ClientError, QueenClient};
use sandbox::{Etcd, Sandbox, SandboxBuilder, SnapshotStream, wait_until};
use serde_json::{Value, json};

const TTL: Duration = Duration::from_secs(2);
const WAIT: Duration = Duration::from_secs(40);

async fn worker_bin() -> anyhow::Result<String> {
    Ok(tokio::task::spawn_blocking(sandbox::built_binaries).await??.join("worker").to_string_lossy().into_owned())
}

fn client(url: &str) -> anyhow::Result<QueenClient> {
    Ok(QueenClient::new(url, None, Duration::from_secs(5))?)
}

/// Two hives (each with `own_workers` workers of the sandbox's) running a deployment `web`
/// of two replicas; the sandbox, a client, and where the replicas run.
async fn running_web(
    builder: SandboxBuilder,
    own_workers: usize,
) -> anyhow::Result<(Sandbox, QueenClient, BTreeMap<String, String>)> {
    let sb =
        builder.hives(2).workers_per_hive(own_workers).heartbeat_interval(Duration::from_millis(300)).start().await?;
    let client = sb.client();
    let spec = json!({"name": "web", "command": worker_bin().await?, "args": ["--heartbeat-interval", "300ms"], "replicas": 2});
    client.post_json::<_, Value>("/v1/deployments", &spec).await?;
    sb.wait_for_counts(2, 2 * own_workers + 2, WAIT).await?;
    let before = placement(&client).await?;
    anyhow::ensure!(before.len() == 2, "both replicas placed: {before:?}");
    Ok((sb, client, before))
}

/// Slot → hive of every placed replica.
async fn placement(client: &QueenClient) -> anyhow::Result<BTreeMap<String, String>> {
    let assignments: Vec<Assignment> = client.get_json("/v1/assignments").await?;
    Ok(assignments
        .into_iter()
        .filter_map(|a| a.hive.map(|h| (format!("{}-{}", a.deployment, a.slot), h.to_string())))
        .collect())
}

/// Every snapshot the stream of `url` delivers, kept with when it arrived.
fn record(url: String) -> Arc<Mutex<Vec<(Instant, Snapshot)>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let out = Arc::clone(&seen);
    tokio::spawn(async move {
        let Ok(mut stream) = SnapshotStream::connect(&url).await else { return };
        while let Ok(Some((_, s))) = stream.next(Duration::from_secs(10)).await {
            out.lock().unwrap_or_else(|p| p.into_inner()).push((Instant::now(), s));
        }
    });
    seen
}

fn other_than(urls: &[String], leader: &str) -> anyhow::Result<String> {
    urls.iter().find(|u| *u != leader).cloned().ok_or_else(|| anyhow::anyhow!("no follower"))
}

fn false_deaths(events: &[NodeEvent]) -> Vec<&NodeEvent> {
    events.iter().filter(|e| matches!(e.kind, EventKind::Offline | EventKind::Orphaned)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_without_a_false_death_or_a_moved_replica() -> anyhow::Result<()> {
    let etcd = Etcd::start()?;
    // A short orphan grace, so a replica wrongly taken for orphaned would be moved within
    // the test.
    let builder = Sandbox::builder()
        .replicas(3, &etcd, TTL)
        .snapshot_interval(Duration::from_millis(200))
        .orphan_grace(Duration::from_millis(300));
    let (mut sb, client, before) = running_web(builder, 1).await?;

    let leader = sb.leader_url(WAIT).await?;
    let follower = other_than(&sb.queen_urls(), &leader)?;
    let dashboard = record(follower.clone());
    wait_until("the follower's stream to relay the leader's snapshots", WAIT, || async {
        dashboard.lock().unwrap_or_else(|p| p.into_inner()).iter().any(|(_, s)| s.hives_online == 2).then_some(())
    })
    .await?;

    let killed = Instant::now();
    sb.kill_queen_at(&leader).await?;
    let new_leader = sb.leader_url(WAIT).await?;
    let failover = killed.elapsed();
    anyhow::ensure!(new_leader != leader);
    anyhow::ensure!(failover < TTL + Duration::from_secs(2), "failover took {failover:?} with a {TTL:?} lease");

    // Long enough for a wrong verdict to show: the offline threshold (3 intervals) and the
    // orphan grace past it, twice.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = client.snapshot().await?;
    anyhow::ensure!(after.hives_online == 2 && after.workers_online == 4, "everyone still up: {after:?}");
    let deaths = false_deaths(&after.events);
    anyhow::ensure!(deaths.is_empty(), "false deaths after the failover: {deaths:?}");
    anyhow::ensure!(placement(&client).await? == before, "no replica moved");
    let restarts: Vec<_> = after.events.iter().filter(|e| e.kind == EventKind::Placed).collect();
    anyhow::ensure!(restarts.is_empty(), "nothing placed anew: {restarts:?}");

    // The dashboard on the follower stayed live: it got the new leader's snapshots.
    let seen = dashboard.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let live_after = seen.iter().filter(|(at, s)| *at > killed + failover && s.hives_online == 2).count();
    anyhow::ensure!(live_after >= 5, "the follower's stream went on after the failover ({live_after} frames)");
    let gap = seen.windows(2).map(|w| w[1].0 - w[0].0).max().unwrap_or_default();
    println!("failover {failover:?}; follower stream: {} frames, longest gap {gap:?}", seen.len());
    sb.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_moves_in_milliseconds_on_a_graceful_stop_and_on_request() -> anyhow::Result<()> {
    let etcd = Etcd::start()?;
    let mut sb = Sandbox::builder().replicas(3, &etcd, TTL).hives(1).workers_per_hive(0).start().await?;
    let urls = sb.queen_urls();
    let leader = sb.leader_url(WAIT).await?;
    let ids: Vec<QueenRef> = futures_util::future::try_join_all(urls.iter().map(|u| async move {
        let me = client(u)?.leader().await?;
        Ok::<_, anyhow::Error>(me)
    }))
    .await?
    .into_iter()
    .filter_map(|l| l.leader)
    .collect();
    anyhow::ensure!(ids.iter().all(|l| l.url == leader), "every queen names the same leader: {ids:?}");

    // On request, to a named follower, asked through another follower (redirected).
    let target_url = other_than(&urls, &leader)?;
    let named = client(&target_url)?.leader().await?.answered_by.map(|q| q.id).unwrap_or_default();
    let asked_at = urls.iter().find(|u| **u != leader && **u != target_url).cloned().unwrap_or(leader.clone());
    let started = Instant::now();
    let answer: TransferAnswer =
        client(&asked_at)?.post_json("/v1/cluster/leader/transfer", &json!({"to": named})).await?;
    anyhow::ensure!(answer.to.id == named && answer.to.url == target_url, "{answer:?}");
    wait_until("the named queen to lead", WAIT, || async {
        client(&target_url).ok()?.leader().await.ok().filter(|l| l.is_self).map(|_| ())
    })
    .await?;
    let transfer = started.elapsed();
    anyhow::ensure!(transfer < Duration::from_secs(1), "a transfer took {transfer:?}");

    // Refused: an unknown queen, and the leader itself.
    let refused =
        client(&target_url)?.post_json::<_, Value>("/v1/cluster/leader/transfer", &json!({"to": "nope:1"})).await;
    anyhow::ensure!(matches!(refused, Err(ClientError::Api { status: 404, .. })), "{refused:?}");

    // A graceful stop of the leader resigns: the next leads long before the lease lapses.
    let started = Instant::now();
    sb.stop_queen_at(&target_url).await?;
    let next = sb.leader_url(WAIT).await?;
    let handover = started.elapsed();
    anyhow::ensure!(next != target_url);
    anyhow::ensure!(handover < Duration::from_secs(1), "graceful handover took {handover:?}");
    println!("transfer {transfer:?}, graceful handover {handover:?}");
    sb.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_loses_its_lease_and_cannot_write() -> anyhow::Result<()> {
    let etcd = Etcd::start()?;
    let ttl = Duration::from_secs(1);
    let sb = Sandbox::builder().replicas(2, &etcd, ttl).hives(1).workers_per_hive(1).start().await?;
    let leader = sb.leader_url(WAIT).await?;
    let other = other_than(&sb.queen_urls(), &leader)?;
    client(&leader)?.set_strategy(PlacementStrategy::LeastWorkers).await?;

    // SIGSTOP for three leases' worth, then SIGCONT.
    let frozen = Duration::from_secs(3);
    let froze_at = Instant::now();
    sb.freeze_queen_at(&leader, frozen)?;
    wait_until("the other queen to take over", WAIT, || async {
        client(&other).ok()?.leader().await.ok().filter(|l| l.is_self).map(|_| ())
    })
    .await?;
    let took_over = froze_at.elapsed();
    anyhow::ensure!(took_over < frozen, "took over while the leader was still frozen ({took_over:?})");
    client(&other)?.set_strategy(PlacementStrategy::Random).await?;

    // Thawed: it must not act as leader for a moment, nor undo the new leader's write.
    tokio::time::sleep(frozen.saturating_sub(froze_at.elapsed()) + Duration::from_millis(500)).await;
    let thawed: Value = client(&leader)?.get_json("/v1/cluster/leader").await?;
    anyhow::ensure!(thawed["is_self"] == false, "the thawed queen still claims to lead: {thawed}");
    for url in [&leader, &other] {
        let strategy = client(url)?.strategy().await?;
        anyhow::ensure!(strategy == PlacementStrategy::Random, "{url} says {strategy:?}");
    }
    sb.shutdown().await
}

/// The fence itself, without the timing: a leader whose lease was revoked behind its
/// back (as when it was paused past its lease) still believes it leads, and etcd refuses
/// its write because another queen's term has begun.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_refuses_a_deposed_leaders_write() -> anyhow::Result<()> {
    let etcd = Etcd::start()?;
    let settings = EtcdSettings::parse(&format!("etcd://{}", etcd.endpoint()), Some("/fence-test"), Some(TTL))
        .map_err(anyhow::Error::msg)?
        .ok_or_else(|| anyhow::anyhow!("etcd settings"))?;
    let queen = |id: &str| QueenRef { id: id.into(), url: format!("http://{id}") };
    let a = Peer::connect(settings.clone(), queen("a:1")).await?;
    let b = Peer::connect(settings, queen("b:2")).await?;

    let lease_a = a.grant_lease().await?;
    let key_a = a.campaign(lease_a).await?.ok_or_else(|| anyhow::anyhow!("a not elected"))?;
    a.take_lead(&key_a);
    let write = |strategy| Batch { strategy: Some(strategy), ..Default::default() };
    let a2 = Arc::clone(&a);
    tokio::task::spawn_blocking(move || a2.apply(&write(PlacementStrategy::Weighted))).await??;

    a.revoke(lease_a).await?;
    let lease_b = b.grant_lease().await?;
    let key_b = b.campaign(lease_b).await?.ok_or_else(|| anyhow::anyhow!("b not elected"))?;
    b.take_lead(&key_b);
    anyhow::ensure!(key_b.rev() > key_a.rev(), "a new term");
    anyhow::ensure!(a.is_leader(), "a has not noticed: the case the fence is for");

    let (a2, b2) = (Arc::clone(&a), Arc::clone(&b));
    let refused = tokio::task::spawn_blocking(move || a2.apply(&write(PlacementStrategy::Random))).await?;
    anyhow::ensure!(matches!(refused, Err(StoreError::NotLeader(_))), "a's write went through: {refused:?}");
    tokio::task::spawn_blocking(move || b2.apply(&write(PlacementStrategy::RoundRobin))).await??;
    let a2 = Arc::clone(&a);
    let stored = tokio::task::spawn_blocking(move || a2.load()).await??;
    anyhow::ensure!(stored.strategy == Some(PlacementStrategy::RoundRobin), "{:?}", stored.strategy);

    // Job routes are fenced the same way, and outlive nothing but their window.
    let route = |worker: &str, at| JobRoute {
        worker: contract::NodeId::new(worker).expect("valid"),
        address: format!("http://{worker}"),
        at,
    };
    let now = time::OffsetDateTime::now_utc().replace_nanosecond(0)?;
    let (a2, b2) = (Arc::clone(&a), Arc::clone(&b));
    let (old, new) = (route("w1", now - time::Duration::minutes(20)), route("w2", now));
    let routes = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let refused = a2.put_job_route("k", &route("w9", now));
        b2.put_job_route("old", &old)?;
        b2.put_job_route("k", &new)?;
        let forgotten = b2.forget_job_routes(now - time::Duration::minutes(10))?;
        Ok((refused, forgotten, a2.job_route("k")?, a2.job_route("old")?))
    })
    .await??;
    anyhow::ensure!(matches!(routes.0, Err(StoreError::NotLeader(_))), "a's route went in: {:?}", routes.0);
    anyhow::ensure!(routes.1 == 1 && routes.3.is_none(), "the old route forgotten: {routes:?}");
    anyhow::ensure!(routes.2.as_ref().map(|r| r.worker.as_str()) == Some("w2"), "{routes:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_shutdown_survives_a_leader_change() -> anyhow::Result<()> {
    let etcd = Etcd::start()?;
    let builder = Sandbox::builder()
        .replicas(3, &etcd, TTL)
        .snapshot_interval(Duration::from_millis(100))
        // STORAGE takes a while: the leader dies in the middle of it.
        .storage_hooks(&["sleep 3"]);
    let (mut sb, client, _) = running_web(builder, 0).await?;

    let leader = sb.leader_url(WAIT).await?;
    let body = json!({"drain_deadline_ms": 5000, "phase_timeout_ms": 20000});
    let started = client.post_json::<_, ShutdownAnswer>("/v1/cluster/shutdown", &body).await?;
    anyhow::ensure!(matches!(started, ShutdownAnswer::Started(_)), "{started:?}");
    wait_until("the STORAGE phase", WAIT, || async {
        let s = client.get_json::<Value>("/v1/cluster/shutdown").await.ok()?;
        let storage = s["phases"].as_array()?.iter().find(|p| p["phase"] == "storage")?.clone();
        (storage["status"] == "running").then_some(())
    })
    .await?;
    sb.kill_queen_at(&leader).await?;

    // The new leader resumes from the stored state; every hive exits, then every queen.
    wait_until("every hive to exit", WAIT, || async { (sb.exited_hives().len() == 2).then_some(()) }).await?;
    let queens_gone = wait_until("every queen to exit", WAIT, || async { sb.queens_exited().then_some(()) }).await;
    let stored = {
        let settings = EtcdSettings::parse(&format!("etcd://{}", etcd.endpoint()), None, Some(TTL))
            .map_err(anyhow::Error::msg)?
            .ok_or_else(|| anyhow::anyhow!("etcd settings"))?;
        let reader = Peer::connect(settings, QueenRef { id: "reader:0".into(), url: "http://reader".into() }).await?;
        tokio::task::spawn_blocking(move || reader.load()).await??
    };
    let shutdown = stored.shutdown.ok_or_else(|| anyhow::anyhow!("no shutdown state stored"))?;
    queens_gone?;
    anyhow::ensure!(shutdown.status == ShutdownStatus::Completed, "{shutdown:?}");
    Ok(())
}

/// A keyed job whose answer was lost with a killed leader is sent again through the other
/// queens: the next leader finds where it went (the route is in etcd), and the worker
/// that ran it answers from that run. It ran once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_job_runs_once_across_a_leader_failover() -> anyhow::Result<()> {
    let etcd = Etcd::start()?;
    let mut sb = Sandbox::builder()
        .replicas(3, &etcd, TTL)
        .hives(1)
        .workers_per_hive(3)
        .heartbeat_interval(Duration::from_millis(300))
        .start()
        .await?;
    let worker_urls: Vec<String> = sb.worker_ids().iter().filter_map(|id| sb.worker_url(id)).collect();
    let leader = sb.leader_url(WAIT).await?;
    // Long enough that the leader is killed while it runs, however slow the machine.
    let job = json!({"kind": "sleep", "ms": 5000});
    let send = |url: String| {
        let job = job.clone();
        async move {
            queen_client::http()
                .post(format!("{url}/v1/jobs"))
                .header(contract::IDEMPOTENCY_KEY, "failover-1")
                .timeout(Duration::from_secs(20))
                .json(&job)
                .send()
                .await
        }
    };
    let first = tokio::spawn(send(leader.clone()));
    wait_until("the job running on a worker", WAIT, || async {
        let running = sb.client().workers().await.ok()?.iter().map(|w| w.in_flight).sum::<u32>();
        (running > 0).then_some(())
    })
    .await?;
    sb.kill_queen_at(&leader).await?;
    assert!(first.await?.is_err(), "the answer was lost with the leader");

    // Sent again through the queens still up, as a client would: a follower's redirect is
    // followed, an election waited out.
    let queens = sb.queen_urls();
    let answer: JobResponse = wait_until("the retry answered", WAIT, || async {
        for url in &queens {
            let mut target = url.clone();
            for _ in 0..3 {
                let resp = send(target.clone()).await.ok()?;
                match resp.status().as_u16() {
                    200 => return resp.json().await.ok(),
                    307 => target = sandbox_base(resp.headers().get("location")?.to_str().ok()?)?,
                    _ => break,
                }
            }
        }
        None
    })
    .await?;
    assert_eq!(answer.kind, "sleep");
    assert_eq!(sandbox::worker_job_count(&worker_urls, "sleep", "done").await?, 1, "it ran once");
    assert!(sandbox::worker_job_count(&worker_urls, "sleep", "replayed").await? >= 1, "the retry was a replay");
    sb.shutdown().await
}

/// `scheme://host:port` of a redirect's target.
fn sandbox_base(location: &str) -> Option<String> {
    let url = reqwest::Url::parse(location).ok()?;
    Some(format!("{}://{}:{}", url.scheme(), url.host_str()?, url.port()?))
}

/// A hive's drain is stored: the leader is killed as the drain starts, and the next one
/// carries it to the end (every replica off the hive) and can say how it went.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_survives_a_leader_change() -> anyhow::Result<()> {
    let etcd = Etcd::start()?;
    let (mut sb, client, before) = running_web(Sandbox::builder().replicas(3, &etcd, TTL), 0).await?;
    let drained = before.values().next().cloned().ok_or_else(|| anyhow::anyhow!("nothing placed: {before:?}"))?;

    let leader = sb.leader_url(WAIT).await?;
    let hive = contract::NodeId::new(drained.clone())?;
    client.drain(&hive, Some(Duration::from_secs(60))).await?;
    sb.kill_queen_at(&leader).await?;
    sb.leader_url(WAIT).await?;

    let status = wait_until("the drain finished by the next leader", WAIT, || async {
        client.drain_status(&hive).await.ok().filter(|d| d.done)
    })
    .await?;
    anyhow::ensure!(!status.cancelled, "{status:?}");
    let after = placement(&client).await?;
    anyhow::ensure!(after.len() == before.len(), "every replica placed: {after:?}");
    anyhow::ensure!(after.values().all(|h| *h != drained), "nothing left on {drained}: {after:?}");
    sb.shutdown().await
}

/// A CA, and a certificate it signs for `sans` (`client` for a client's).
fn signed(issuer: &rcgen::Issuer<'_, rcgen::KeyPair>, sans: &[&str], client: bool) -> anyhow::Result<(String, String)> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
    params.extended_key_usages = vec![if client {
        rcgen::ExtendedKeyUsagePurpose::ClientAuth
    } else {
        rcgen::ExtendedKeyUsagePurpose::ServerAuth
    }];
    Ok((params.signed_by(&key, issuer)?.pem(), key.serialize_pem()))
}

/// etcd holds every command the hives run, so a queen can reach one that serves TLS only
/// and asks for client certificates, and one with users and passwords; without them, it
/// cannot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queen_reaches_an_etcd_that_wants_tls_or_a_password_and_nothing_else_does() -> anyhow::Result<()> {
    use queen::config::EtcdTls;
    let dir = sandbox::TempDir::new("etcd-pki")?;
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key)?;
    let (server_cert, server_key) = signed(&ca, &["127.0.0.1", "localhost"], false)?;
    let (client_cert, client_key) = signed(&ca, &["apiary-queen"], true)?;
    let file = |name: &str, text: &str| -> anyhow::Result<std::path::PathBuf> {
        let path = dir.0.join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    };
    let files = etcd_process::TlsFiles {
        ca: file("ca.pem", &ca.pem())?,
        cert: file("server.pem", &server_cert)?,
        key: file("server-key.pem", &server_key)?,
    };
    let (cert, key) = (file("client.pem", &client_cert)?, file("client-key.pem", &client_key)?);
    let etcd = Etcd::start_tls(files.clone())?;
    let plain = EtcdSettings::parse(&format!("etcd://{}", etcd.endpoint()), Some("/tls-test"), Some(TTL))
        .map_err(anyhow::Error::msg)?
        .ok_or_else(|| anyhow::anyhow!("etcd settings"))?;
    let me = QueenRef { id: "q:1".into(), url: "http://q:1".into() };
    let connect = |settings: EtcdSettings| {
        let me = me.clone();
        async move { tokio::time::timeout(Duration::from_secs(15), Peer::connect(settings, me)).await }
    };
    assert!(!matches!(connect(plain.clone()).await, Ok(Ok(_))), "plain HTTP to a TLS-only etcd");
    let no_cert = plain.clone().with_tls(EtcdTls::read(&files.ca, None).map_err(anyhow::Error::msg)?);
    assert!(!matches!(connect(no_cert).await, Ok(Ok(_))), "TLS without the client certificate etcd asks for");
    let full = plain.with_tls(EtcdTls::read(&files.ca, Some((&cert, &key))).map_err(anyhow::Error::msg)?);
    let peer = connect(full).await??;
    let stored = tokio::task::spawn_blocking(move || peer.load()).await??;
    assert!(stored.deployments.is_empty(), "reads over TLS");
    drop(etcd);

    // Authentication on, as an operator turns it on.
    let etcd = Etcd::start()?;
    let mut admin = etcd_client::Client::connect([format!("http://{}", etcd.endpoint())], None).await?;
    admin.user_add("root", "root-pw", None).await?;
    admin.user_grant_role("root", "root").await?;
    admin.auth_enable().await?;
    let plain = EtcdSettings::parse(&format!("etcd://{}", etcd.endpoint()), Some("/auth-test"), Some(TTL))
        .map_err(anyhow::Error::msg)?
        .ok_or_else(|| anyhow::anyhow!("etcd settings"))?;
    assert!(!matches!(connect(plain.clone()).await, Ok(Ok(_))), "no user");
    let wrong = EtcdSettings { auth: Some(("root".into(), lifecycle::Secret::new("guess"))), ..plain.clone() };
    assert!(!matches!(connect(wrong).await, Ok(Ok(_))), "a wrong password");
    let right = EtcdSettings { auth: Some(("root".into(), lifecycle::Secret::new("root-pw"))), ..plain };
    let peer = connect(right).await??;
    let stored = tokio::task::spawn_blocking(move || peer.load()).await??;
    assert!(stored.deployments.is_empty(), "reads as its user");
    Ok(())
}

/// After a planned transfer the ex-leader is alive and sends nothing more: the control
/// channels it held end the moment it stops leading, the hives reconnect to the new leader,
/// and a scale-up right after the transfer runs on them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_transfer_the_hives_hear_the_new_leader() -> anyhow::Result<()> {
    let etcd = Etcd::start()?;
    let sb = Sandbox::builder()
        .replicas(2, &etcd, TTL)
        .hives(2)
        .workers_per_hive(0)
        .heartbeat_interval(Duration::from_millis(300))
        .start()
        .await?;
    let leader = sb.leader_url(WAIT).await?;
    let other = other_than(&sb.queen_urls(), &leader)?;
    let spec = json!({"name": "web", "command": worker_bin().await?, "args": ["--heartbeat-interval", "300ms"], "replicas": 2});
    client(&leader)?.post_json::<_, Value>("/v1/deployments", &spec).await?;
    let running = |url: String, n: usize| async move {
        let workers = client(&url).ok()?.workers().await.ok()?;
        (workers.iter().filter(|w| w.available).count() == n).then_some(())
    };
    wait_until("two replicas up", WAIT, || running(leader.clone(), 2)).await?;

    let answer: TransferAnswer = client(&leader)?.post_json("/v1/cluster/leader/transfer", &json!({})).await?;
    anyhow::ensure!(answer.to.url == other, "{answer:?}");
    wait_until("the other queen leads", WAIT, || async {
        client(&other).ok()?.leader().await.ok().filter(|l| l.is_self).map(|_| ())
    })
    .await?;
    let started = Instant::now();
    client(&other)?.scale("web", 4).await?;
    wait_until("four replicas up under the new leader", WAIT, || running(other.clone(), 4)).await?;
    println!("after the transfer, the scale-up ran in {:?}", started.elapsed());
    sb.shutdown().await
}

/// etcd stopped under a lone queen: changes are refused whole with a 503 while it is away,
/// readiness says the store is the problem, and the queen takes changes again by itself
/// once etcd is back, with what it stored before intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_etcd_stopped_changes_are_refused_whole_and_resume_by_themselves() -> anyhow::Result<()> {
    let mut etcd = Etcd::start()?;
    let sb = Sandbox::builder().replicas(1, &etcd, TTL).hives(0).start().await?;
    let url = sb.leader_url(WAIT).await?;
    let spec = |name: &str| json!({"name": name, "command": "/bin/true", "replicas": 0});
    client(&url)?.post_json::<_, Value>("/v1/deployments", &spec("before")).await?;

    etcd.kill();
    let http = queen_client::http();
    let refused = wait_until("a change refused with 503", WAIT, || async {
        let resp = client(&url).ok()?.post_json::<_, Value>("/v1/deployments", &spec("during")).await;
        match resp {
            Err(ClientError::Api { status: 503, code, .. }) => Some(code),
            _ => None,
        }
    })
    .await?;
    anyhow::ensure!(refused == "store_unavailable" || refused == "no_leader", "the store's absence is said: {refused}");
    println!("with etcd stopped, a change was refused: 503 {refused}");
    let ready = http.get(format!("{url}/readyz")).send().await?;
    anyhow::ensure!(ready.status() == 503, "readiness is degraded while etcd is away");

    etcd.restart()?;
    wait_until("the queen takes changes again", WAIT, || async {
        client(&url).ok()?.post_json::<_, Value>("/v1/deployments", &spec("after")).await.ok().map(|_| ())
    })
    .await?;
    let names: Vec<String> = client(&url)?.deployments().await?.into_iter().map(|d| d.spec.name.to_string()).collect();
    anyhow::ensure!(names == ["after", "before"], "nothing half-made, nothing lost: {names:?}");
    wait_until("readiness recovers", WAIT, || async {
        (http.get(format!("{url}/readyz")).send().await.ok()?.status() == 200).then_some(())
    })
    .await?;
    sb.shutdown().await
}

/// What a queen reads from etcd is read in pages: a state of megabyte deployments past the
/// 4 MiB an answer may hold loads whole, and 40 000 keyed-job routes (over 5 MB) are all
/// forgotten once old.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_and_routes_past_one_etcd_answer_are_read_whole() -> anyhow::Result<()> {
    let etcd = Etcd::start()?;
    let prefix = "/paging-test";
    // Nothing renews the lease here: long enough for the whole test.
    let settings =
        EtcdSettings::parse(&format!("etcd://{}", etcd.endpoint()), Some(prefix), Some(Duration::from_secs(60)))
            .map_err(anyhow::Error::msg)?
            .ok_or_else(|| anyhow::anyhow!("etcd settings"))?;
    let a = Peer::connect(settings, QueenRef { id: "a:1".into(), url: "http://a".into() }).await?;
    let lease = a.grant_lease().await?;
    let key = a.campaign(lease).await?.ok_or_else(|| anyhow::anyhow!("not elected"))?;
    a.take_lead(&key);

    // Six deployments of a megabyte of arguments each: one write apiece (etcd takes 1.5 MiB
    // per request), 6 MiB to read back.
    let big = |i: usize| {
        let spec = serde_json::from_value(json!({
            "name": format!("big-{i}"), "command": "/bin/true", "replicas": 0,
            "args": vec!["x".repeat(4000); 256],
        }))
        .expect("a valid spec");
        queen::store::DeploymentRecord::new(spec, time::OffsetDateTime::UNIX_EPOCH)
    };
    let writer = Arc::clone(&a);
    tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
        for i in 0..6 {
            writer.apply(&Batch { put_deployments: vec![big(i)], ..Default::default() })?;
        }
        Ok(())
    })
    .await??;
    let reader = Arc::clone(&a);
    let loaded = tokio::task::spawn_blocking(move || reader.load()).await??;
    anyhow::ensure!(loaded.deployments.len() == 6, "{} deployments loaded", loaded.deployments.len());
    anyhow::ensure!(loaded.deployments.values().all(|d| d.spec.args.len() == 256), "whole records");

    // 40 000 routes, written straight to etcd a hundred per transaction.
    let mut c = etcd_client::Client::connect([etcd.endpoint()], None).await?;
    let old = serde_json::to_vec(&JobRoute {
        worker: contract::NodeId::new("w1")?,
        address: "http://127.0.0.1:1".into(),
        at: time::OffsetDateTime::UNIX_EPOCH,
    })?;
    for chunk in 0..400 {
        let ops: Vec<etcd_client::TxnOp> = (0..100)
            .map(|i| etcd_client::TxnOp::put(format!("{prefix}/jobs/key-{chunk}-{i}"), old.clone(), None))
            .collect();
        c.txn(etcd_client::Txn::new().and_then(ops)).await?;
    }
    let reader = Arc::clone(&a);
    let forgotten =
        tokio::task::spawn_blocking(move || reader.forget_job_routes(time::OffsetDateTime::now_utc())).await??;
    anyhow::ensure!(forgotten == 40_000, "{forgotten} routes forgotten");
    let left =
        c.get(format!("{prefix}/jobs/"), Some(etcd_client::GetOptions::new().with_prefix().with_count_only())).await?;
    anyhow::ensure!(left.count() == 0, "{} routes left", left.count());
    Ok(())
}
