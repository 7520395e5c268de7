//! Saturation: `connections` senders, each sending heartbeats back to back (a closed
//! loop, so the rate is whatever the server sustains) for `duration`.

use std::time::{Duration, Instant};

use crate::{Report, Tally, body, client, post};

#[derive(Clone, Debug)]
pub struct FloodConfig {
    /// The endpoint to send to: the queen's `/v1/hive-heartbeat`, or the baseline.
    pub url: String,
    pub token: Option<String>,
    pub connections: usize,
    pub duration: Duration,
    /// Distinct hive ids per connection; heartbeats rotate over them.
    pub ids_per_connection: usize,
}

pub async fn flood(config: FloodConfig) -> anyhow::Result<Report> {
    let http = client(config.connections)?;
    let start = Instant::now();
    let end = start + config.duration;
    let epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_micros() as u64;
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..config.connections {
        let (http, config) = (http.clone(), config.clone());
        tasks.spawn(async move {
            let mut tally = Tally::new();
            let ids: Vec<String> = (0..config.ids_per_connection.max(1)).map(|i| format!("flood-{c}-{i}")).collect();
            let mut seq = 0u64;
            while Instant::now() < end {
                seq += 1;
                let id = &ids[seq as usize % ids.len()];
                let sent = Instant::now();
                let outcome = post(&http, &config.url, config.token.as_deref(), body::hive(id, epoch, seq, 0)).await;
                tally.record(sent.elapsed(), outcome);
            }
            tally
        });
    }
    let mut total = Tally::new();
    while let Some(done) = tasks.join_next().await {
        total.merge(done?);
    }
    Ok(total.finish(start.elapsed()))
}
