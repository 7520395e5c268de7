//! `apiary-sim`: parse the command line, run one mode, print its report as JSON.

use std::time::Duration;

use clap::{Parser, Subcommand};
use lifecycle::HumanDuration;

#[derive(Parser)]
#[command(name = "apiary-sim", about = "Load simulator for the Apiary queen")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Hives and workers heartbeating at their interval.
    Fleet {
        #[arg(long, default_value = "http://127.0.0.1:8500")]
        queen: String,
        #[arg(long, env = "APIARY_TOKEN")]
        token: Option<String>,
        #[arg(long, default_value_t = 100)]
        hives: usize,
        #[arg(long, default_value_t = 10)]
        workers_per_hive: usize,
        #[arg(long, default_value = "10s")]
        interval: HumanDuration,
        #[arg(long, default_value = "60s")]
        duration: HumanDuration,
        #[arg(long, default_value_t = 64)]
        senders: usize,
        /// Share of hives (with their workers) silenced for --silence, from a quarter in.
        #[arg(long, default_value_t = 0.0)]
        silence_share: f64,
        #[arg(long, default_value = "30s")]
        silence: HumanDuration,
    },
    /// Heartbeats back to back on many connections, for maximum throughput.
    Flood {
        /// Full URL of the endpoint, e.g. http://127.0.0.1:8500/v1/hive-heartbeat.
        #[arg(long)]
        url: String,
        #[arg(long, env = "APIARY_TOKEN")]
        token: Option<String>,
        #[arg(long, default_value_t = 64)]
        connections: usize,
        #[arg(long, default_value = "10s")]
        duration: HumanDuration,
        #[arg(long, default_value_t = 100)]
        ids_per_connection: usize,
    },
    /// Clients on the snapshot stream, measuring delivery lag.
    Streams {
        #[arg(long, default_value = "http://127.0.0.1:8500")]
        queen: String,
        #[arg(long, env = "APIARY_READ_TOKEN")]
        token: Option<String>,
        #[arg(long, default_value_t = 100)]
        clients: usize,
        #[arg(long, default_value = "30s")]
        duration: HumanDuration,
        /// `summary` or `full`.
        #[arg(long)]
        detail: Option<String>,
    },
    /// Bytes per entry of the queen's registry, filled in this process.
    RegistryMemory {
        #[arg(long, default_value_t = 100_000)]
        entries: usize,
    },
    /// The baseline: an HTTP server that reads each body and answers 204.
    Baseline {
        #[arg(long, default_value = "127.0.0.1:8600")]
        listen: std::net::SocketAddr,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let d = |h: HumanDuration| Duration::from(h);
    let report = match Cli::parse().mode {
        Mode::Fleet { queen, token, hives, workers_per_hive, interval, duration, senders, silence_share, silence } => {
            let config = sim::FleetConfig {
                queen,
                token,
                hives,
                workers_per_hive,
                interval: d(interval),
                duration: d(duration),
                senders,
                silence_share,
                silence: d(silence),
            };
            serde_json::to_string(&sim::fleet(config).await?)?
        }
        Mode::Flood { url, token, connections, duration, ids_per_connection } => {
            let config = sim::FloodConfig { url, token, connections, duration: d(duration), ids_per_connection };
            serde_json::to_string(&sim::flood(config).await?)?
        }
        Mode::Streams { queen, token, clients, duration, detail } => {
            let config = sim::StreamsConfig { queen, token, clients, duration: d(duration), detail };
            serde_json::to_string(&sim::streams(config).await?)?
        }
        Mode::RegistryMemory { entries } => serde_json::to_string(&sim::registry_memory(entries)?)?,
        Mode::Baseline { listen } => {
            let stop = tokio_util::sync::CancellationToken::new();
            lifecycle::shutdown::spawn_signal_handler(stop.clone())?;
            sim::baseline(lifecycle::bind(listen)?, stop).await?;
            return Ok(());
        }
    };
    println!("{report}");
    Ok(())
}
