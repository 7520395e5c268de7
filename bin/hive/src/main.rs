//! `hive`: parse the command line, then hand over to the library.

use anyhow::Context;
use clap::{CommandFactory, Parser};
use hive::{HiveArgs, HiveConfig};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = HiveArgs::parse();
    if let Some(extra) = &args.extra {
        return Ok(extra.run(HiveArgs::command())?);
    }
    lifecycle::init_tracing();
    let config = HiveConfig::load(&args)?;
    let listener = lifecycle::bind(config.listen).with_context(|| format!("cannot listen on {}", config.listen))?;
    let stop = CancellationToken::new();
    lifecycle::shutdown::spawn_signal_handler(stop.clone())?;
    hive::run(config, listener, stop).await
}
