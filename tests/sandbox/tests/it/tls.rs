//! A queen serving HTTPS: hives, in-process workers and worker processes started by a hive
//! all reach it through the CA they were given; nothing that lacks it gets an answer.

use std::time::Duration;

use futures_util::StreamExt;
use queen_client::{ClientError, QueenClient};
use sandbox::{Sandbox, TlsFiles, wait_until};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_runs_over_tls_and_strangers_are_refused() -> anyhow::Result<()> {
    // start() waits until the queen sees both hives and both workers: their heartbeats went
    // over HTTPS, trusting the sandbox's certificate through `ca`.
    let sb = Sandbox::builder().tls().hives(2).workers_per_hive(1).start().await?;
    let url = sb.queen_url();
    assert!(url.starts_with("https://"), "{url}");

    // The stream works over TLS.
    let mut stream = Box::pin(sb.client().snapshots().await?);
    let mut hives_seen = 0;
    while hives_seen < 2 {
        let next = tokio::time::timeout(Duration::from_secs(5), stream.next()).await?;
        hives_seen = next.ok_or_else(|| anyhow::anyhow!("stream ended"))??.hives.len();
    }

    // A worker process the hive starts gets the CA passed on (APIARY_CA) and heartbeats.
    let bin = tokio::task::spawn_blocking(sandbox::built_binaries).await??.join("worker");
    let spec = json!({"name": "tls", "command": bin.to_string_lossy(), "args": ["--heartbeat-interval", "200ms"], "replicas": 1});
    let _: contract::DeploymentStatus = sb.client().post_json("/v1/deployments", &spec).await?;
    wait_until("the deployed worker heartbeating over TLS", Duration::from_secs(30), || async {
        let workers = sb.client().workers().await.ok()?;
        workers.iter().any(|w| w.liveness.is_up() && w.id.as_str().starts_with("tls-")).then_some(())
    })
    .await?;

    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain = queen_client::http_builder()
        .timeout(Duration::from_secs(3))
        .build()?
        .get(format!("http://{}/healthz", sb.queen_addr()))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP must not be answered: {plain:?}");

    // A client with the system's roots does not trust a self-signed certificate...
    let stranger = QueenClient::new(&url, None, Duration::from_secs(3))?;
    let err = stranger.snapshot().await.expect_err("unknown issuer");
    assert!(format!("{err:?}").contains("UnknownIssuer"), "{err:?}");
    // ...nor does one that trusts some other certificate.
    let other = TlsFiles::generate()?;
    let wrong = QueenClient::with_ca(&url, None, Duration::from_secs(3), Some(&other.cert))?;
    let err = wrong.snapshot().await.expect_err("wrong CA");
    assert!(format!("{err:?}").contains("InvalidCertificate"), "{err:?}");

    // A CA file that holds no certificate is refused up front, naming the file.
    let not_pem = other.key.with_extension("txt");
    std::fs::write(&not_pem, "not a certificate")?;
    match QueenClient::with_ca(&url, None, Duration::from_secs(3), Some(&not_pem)) {
        Err(ClientError::InvalidCa(why)) => assert!(why.contains("key.txt"), "{why}"),
        other => panic!("expected InvalidCa, got {other:?}"),
    }

    sb.shutdown().await
}
