//! The `queen` command line (DESIGN 10).

use std::time::Duration;

use clap::{Parser, Subcommand};
use contract::{HiveSummary, Liveness, Snapshot, WorkerSummary};
use queen_client::{DEFAULT_QUEEN_URL, QueenClient};

use crate::config::ServeArgs;

#[derive(Parser, Debug)]
#[command(name = "queen", version, about = "The Apiary hub: heartbeats, live cluster snapshot, node API")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the queen.
    Serve(ServeArgs),
    /// Print the cluster summary.
    Status(Remote),
    /// List hives and workers with their liveness.
    Nodes(Remote),
}

#[derive(clap::Args, Debug)]
pub struct Remote {
    /// Queen to ask.
    #[arg(long, env = "APIARY_QUEEN", default_value = DEFAULT_QUEEN_URL)]
    pub queen: String,
}

impl Remote {
    pub fn client(&self) -> anyhow::Result<QueenClient> {
        Ok(QueenClient::new(&self.queen, None, Duration::from_secs(10))?)
    }
}

fn liveness(l: Liveness) -> &'static str {
    match l {
        Liveness::Online => "online",
        Liveness::Suspect => "suspect",
        Liveness::Offline => "offline",
        Liveness::Stopped => "stopped",
    }
}

pub fn render_status(s: &Snapshot) -> String {
    format!(
        "snapshot {} at {}\nhives:   {} online, {} available, {} known\nworkers: {} online, {} available, {} known\njobs in flight: {}\n",
        s.seq,
        s.timestamp,
        s.hives_online,
        s.hives_available,
        s.hives_total,
        s.workers_online,
        s.workers_available,
        s.workers_total,
        s.jobs_in_flight
    )
}

pub fn render_nodes(hives: &[HiveSummary], workers: &[WorkerSummary]) -> String {
    let mut out = format!(
        "{:<24} {:<9} {:<14} {:>6} {:>7} {:>8} {:>9}\n",
        "HIVE", "LIVENESS", "STATUS", "CPU%", "MEM%", "WORKERS", "SEEN"
    );
    for h in hives {
        let mem = if h.resources.memory_total_bytes == 0 {
            0.0
        } else {
            h.resources.memory_used_bytes as f64 * 100.0 / h.resources.memory_total_bytes as f64
        };
        out.push_str(&format!(
            "{:<24} {:<9} {:<14} {:>6.1} {:>7.1} {:>8} {:>8.1}s\n",
            h.id,
            liveness(h.liveness),
            format!("{:?}", h.status).to_lowercase(),
            h.resources.cpu_percent,
            mem,
            format!("{}/{}", h.capacity.running_workers, h.capacity.max_workers),
            h.last_seen_ago_ms as f64 / 1000.0
        ));
    }
    out.push('\n');
    out.push_str(&format!(
        "{:<24} {:<16} {:<9} {:<9} {:>9} {:>9}\n",
        "WORKER", "HIVE", "LIVENESS", "STATUS", "IN-FLIGHT", "SEEN"
    ));
    for w in workers {
        out.push_str(&format!(
            "{:<24} {:<16} {:<9} {:<9} {:>9} {:>8.1}s\n",
            w.id,
            w.hive_id,
            liveness(w.liveness),
            format!("{:?}", w.status).to_lowercase(),
            format!("{}/{}", w.in_flight, w.max_concurrent),
            w.last_seen_ago_ms as f64 / 1000.0
        ));
    }
    out
}
