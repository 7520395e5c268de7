//! `queen`: parse the command line, then hand over to the library.

use anyhow::Context;
use clap::Parser;
use queen::cli::{Cli, Command, render_nodes, render_status};
use queen::config::QueenConfig;
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
        Command::Status(remote) => {
            let snapshot = remote.client()?.snapshot().await.with_context(|| format!("asking {}", remote.queen))?;
            print!("{}", render_status(&snapshot));
            Ok(())
        }
        Command::Nodes(remote) => {
            let client = remote.client()?;
            let hives = client.hives().await.with_context(|| format!("asking {}", remote.queen))?;
            let workers = client.workers().await?;
            print!("{}", render_nodes(&hives, &workers));
            Ok(())
        }
    }
}
