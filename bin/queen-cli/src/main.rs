//! `queen`: parse the command line, then hand over to the library.

use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use queen::config::QueenConfig;
use queen_cli::cli::{Cli, Command, Usage, exit, exit_code};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    // Before the runtime starts any thread: see `render::set_local_offset`.
    if let Ok(offset) = time::UtcOffset::current_local_offset() {
        queen_cli::render::set_local_offset(offset);
    }
    let cli = Cli::parse();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
        .and_then(|runtime| runtime.block_on(run(cli)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<Usage>().is_some() => {
            eprintln!("error: {e}");
            ExitCode::from(exit::USAGE)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
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
        Command::Extra(extra) => Ok(extra.run(Cli::command())?),
        remote => queen_cli::cli::run_remote(remote).await,
    }
}
