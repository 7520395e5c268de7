//! `queen`: parse the command line, then hand over to the library.

use anyhow::Context;
use clap::Parser;
use queen::config::QueenConfig;
use queen_cli::cli::{Cli, Command};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            lifecycle::init_tracing();
            let config = QueenConfig::load(&args)?;
            let listener =
                lifecycle::bind(config.listen).with_context(|| format!("cannot listen on {}", config.listen))?;
            let stop = CancellationToken::new();
            lifecycle::shutdown::spawn_signal_handler(stop.clone())?;
            queen::run(config, listener, stop).await
        }
        remote => queen_cli::cli::run_remote(remote).await,
    }
}
