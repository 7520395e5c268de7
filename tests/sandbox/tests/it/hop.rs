//! The queen → worker hop, against "workers" that are not: one that redirects the queen to
//! another address, and ones that answer far more than a job's answer. The queen follows
//! no redirect, passes nothing on from where it points, and refuses a large answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sandbox::Sandbox;
use sandbox::samples::worker_beat;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A server answering every connection with `answer`, counting the connections.
async fn canned(answer: Vec<u8>) -> anyhow::Result<(String, Arc<AtomicUsize>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&hits);
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = tokio::time::timeout(Duration::from_secs(2), conn.read(&mut request)).await;
                let _ = conn.write_all(&answer).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    Ok((url, hits))
}

/// Sends a heartbeat for a worker of kind `kind` whose address is `address`, then a job
/// for that kind; returns the queen's status and body.
async fn job_via(sb: &Sandbox, kind: &str, address: &str) -> anyhow::Result<(u16, Value)> {
    let http = queen_client::http();
    let mut beat = worker_beat(&format!("fake-{kind}"));
    beat["kind"] = json!(kind);
    beat["address"] = json!(address);
    let sent = http.post(format!("{}/v1/worker-heartbeat", sb.queen_url())).json(&beat).send().await?;
    anyhow::ensure!(sent.status().is_success(), "heartbeat refused: {}", sent.status());
    let resp = http
        .post(format!("{}/v1/jobs?deployment={kind}", sb.queen_url()))
        .json(&json!({"kind": "sleep", "ms": 1}))
        .send()
        .await?;
    let status = resp.status().as_u16();
    let body = resp.bytes().await?;
    anyhow::ensure!(body.len() < 4096, "the queen passed on {} bytes", body.len());
    Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queen_follows_no_redirect_and_passes_on_no_large_answer() -> anyhow::Result<()> {
    let sb = Sandbox::builder().hives(0).workers_per_hive(0).start().await?;

    let secret =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n{\"secret\":\"yes\"}\n";
    let (inside, inside_hits) = canned(secret.to_vec()).await?;
    let redirect = format!("HTTP/1.1 303 See Other\r\nLocation: {inside}/admin\r\nContent-Length: 0\r\n\r\n");
    let (redirector, _) = canned(redirect.into_bytes()).await?;
    let (status, body) = job_via(&sb, "redirecting", &redirector).await?;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["code"], "worker_failed");
    assert!(body["message"].as_str().is_some_and(|m| m.contains("redirect")), "{body}");
    assert_eq!(inside_hits.load(Ordering::SeqCst), 0, "the address the redirect named was never called");

    let big = 2 * 1024 * 1024;
    let mut said =
        format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {big}\r\n\r\n").into_bytes();
    said.resize(said.len() + big, b' ');
    let (sized, _) = canned(said).await?;
    let (status, body) = job_via(&sb, "sized", &sized).await?;
    assert_eq!((status, body["code"].as_str()), (502, Some("worker_failed")), "{body}");

    // No length given: the cap holds as the answer comes.
    let mut streamed = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n".to_vec();
    streamed.resize(streamed.len() + big, b' ');
    let (unsized_, _) = canned(streamed).await?;
    let (status, body) = job_via(&sb, "streaming", &unsized_).await?;
    assert_eq!((status, body["code"].as_str()), (502, Some("worker_failed")), "{body}");
    assert!(body["message"].as_str().is_some_and(|m| m.contains("more than")), "{body}");
    sb.shutdown().await
}

/// A "queen" that answers `/v1/cluster/leader` with `leader` and everything else with a
/// 307 to `target`.
async fn redirector(target: String, leader: String) -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let me = url.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let (target, leader, me) = (target.clone(), leader.clone(), me.clone());
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let n = tokio::time::timeout(Duration::from_secs(2), conn.read(&mut request))
                    .await
                    .ok()
                    .and_then(Result::ok);
                let head = String::from_utf8_lossy(&request[..n.unwrap_or(0)]).into_owned();
                let answer = if head.starts_with("GET /v1/cluster/leader") {
                    let body = json!({"leader": {"id": "q-x", "url": leader}, "is_self": false, "term": 1,
                                      "answered_by": {"id": "q-r", "url": me}})
                    .to_string();
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    format!(
                        "HTTP/1.1 307 Temporary Redirect\r\nlocation: {target}/v1/snapshot\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    )
                };
                let _ = conn.write_all(answer.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    Ok(url)
}

/// A client given one queen follows a 307 only to a queen it knows or the leader the
/// cluster reports, so its token never goes to a host a redirect names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_follow_redirects_only_to_a_queen_of_theirs() -> anyhow::Result<()> {
    let (trap, hits) = canned(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}".to_vec()).await?;
    let elsewhere = redirector(trap.clone(), "http://10.255.255.1:8500".into()).await?;
    let client = queen_client::QueenClient::new(&elsewhere, Some("admin-secret".into()), Duration::from_secs(5))?;
    let refused = client.snapshot().await.expect_err("not followed");
    assert!(
        matches!(&refused, queen_client::ClientError::Redirect { reason, .. } if reason.contains("reports http://10.255.255.1:8500")),
        "{refused}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the redirect's target never saw the token");

    // The same redirect, where the cluster reports the target as its leader, is followed.
    let (leader, leader_hits) = canned(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_vec()).await?;
    let follower = redirector(leader.clone(), leader.clone()).await?;
    let client = queen_client::QueenClient::new(&follower, Some("admin-secret".into()), Duration::from_secs(5))?;
    let _ = client.snapshot().await;
    assert!(leader_hits.load(Ordering::SeqCst) >= 1, "followed to the reported leader");
    Ok(())
}
