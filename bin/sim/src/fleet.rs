//! A simulated fleet: every node on its own schedule, as real nodes would be.
//!
//! Nodes are split over `senders` tasks; each keeps its nodes in a queue ordered by when
//! they are next due and sends one heartbeat at a time over its kept-alive connection.
//! First beats are spread over one interval, as they would be after a rolling start.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use tokio::time::Instant;

use crate::{Report, Tally, body, client, post};

#[derive(Clone, Debug)]
pub struct FleetConfig {
    pub queen: String,
    pub token: Option<String>,
    pub hives: usize,
    pub workers_per_hive: usize,
    pub interval: Duration,
    pub duration: Duration,
    pub senders: usize,
    /// Share of hives (and their workers) that go silent from a quarter of the run for
    /// `silence`, then come back as restarted processes.
    pub silence_share: f64,
    pub silence: Duration,
}

struct Node {
    /// `None` for a hive.
    hive: Option<usize>,
    id: String,
    epoch: u64,
    seq: u64,
    silent: Option<(Instant, Instant)>,
}

pub async fn fleet(config: FleetConfig) -> anyhow::Result<Report> {
    let start = Instant::now();
    let epoch0 = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_micros() as u64;
    let silenced = (config.hives as f64 * config.silence_share).round() as usize;
    let silence_from = start + config.duration / 4;
    let mut nodes = Vec::with_capacity(config.hives * (1 + config.workers_per_hive));
    for h in 0..config.hives {
        let silent = (h < silenced).then_some((silence_from, silence_from + config.silence));
        nodes.push(Node { hive: None, id: format!("sim-hive-{h}"), epoch: epoch0, seq: 0, silent });
        for w in 0..config.workers_per_hive {
            nodes.push(Node { hive: Some(h), id: format!("sim-worker-{h}-{w}"), epoch: epoch0, seq: 0, silent });
        }
    }
    let senders = config.senders.max(1);
    let mut shares: Vec<Vec<Node>> = (0..senders).map(|_| Vec::new()).collect();
    for (i, node) in nodes.into_iter().enumerate() {
        shares[i % senders].push(node);
    }
    let http = client(senders)?;
    let end = start + config.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for share in shares {
        tasks.spawn(send_share(share, http.clone(), config.clone(), start, end));
    }
    let mut total = Tally::new();
    while let Some(done) = tasks.join_next().await {
        total.merge(done?);
    }
    let mut report = total.finish(start.elapsed());
    report.silenced_hives = silenced;
    Ok(report)
}

async fn send_share(
    mut nodes: Vec<Node>,
    http: reqwest::Client,
    config: FleetConfig,
    start: Instant,
    end: Instant,
) -> Tally {
    let (hive_url, worker_url) =
        (format!("{}/v1/hive-heartbeat", config.queen), format!("{}/v1/worker-heartbeat", config.queen));
    let mut tally = Tally::new();
    let mut due: BinaryHeap<Reverse<(Instant, usize)>> = BinaryHeap::new();
    for i in 0..nodes.len() {
        due.push(Reverse((start + config.interval.mul_f64(fastrand::f64()), i)));
    }
    let jittered = |d: Duration| d.mul_f64(0.9 + fastrand::f64() * 0.2);
    while let Some(Reverse((at, i))) = due.pop() {
        if at >= end {
            break;
        }
        tokio::time::sleep_until(at).await;
        let node = &mut nodes[i];
        if let Some((from, until)) = node.silent {
            if at >= from && at < until {
                due.push(Reverse((until, i)));
                continue;
            }
            if at >= until {
                // Back as a new process.
                node.epoch += 1;
                node.seq = 0;
                node.silent = None;
            }
        }
        node.seq += 1;
        let (url, text) = match node.hive {
            None => (&hive_url, body::hive(&node.id, node.epoch, node.seq, config.workers_per_hive as u32)),
            Some(h) => (&worker_url, body::worker(&node.id, &format!("sim-hive-{h}"), node.epoch, node.seq)),
        };
        tally.record_late(Instant::now().saturating_duration_since(at));
        let sent = std::time::Instant::now();
        let outcome = post(&http, url, config.token.as_deref(), text).await;
        tally.record(sent.elapsed(), outcome);
        due.push(Reverse((at + jittered(config.interval), i)));
    }
    tally
}
