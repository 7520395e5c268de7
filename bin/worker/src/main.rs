//! `worker`: parse the command line, then hand over to the library.

use anyhow::Context;
use clap::{CommandFactory, Parser};
use tokio_util::sync::CancellationToken;
use worker::{WorkerArgs, WorkerConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = WorkerArgs::parse();
    if let Some(extra) = &args.extra {
        return Ok(extra.run(WorkerArgs::command())?);
    }
    lifecycle::init_tracing();
    let config = WorkerConfig::load(&args)?;
    let listener = lifecycle::bind(config.listen).with_context(|| format!("cannot listen on {}", config.listen))?;
    let stop = CancellationToken::new();
    lifecycle::shutdown::spawn_signal_handler(stop.clone())?;
    worker::run(config, listener, stop).await
}
