//! Signals: the first SIGINT/SIGTERM starts a graceful stop, the second forces exit.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Exit code after a forced stop: 128 + SIGINT, what shells report for an interrupted job.
pub const FORCED_EXIT_CODE: i32 = 130;

/// Cancels `token` on the first SIGINT or SIGTERM; exits the process on the second.
///
/// Installed once per process, by `main`; libraries only ever see the token.
pub fn spawn_signal_handler(token: CancellationToken) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping gracefully (send again to force)"),
            _ = int.recv() => tracing::info!("SIGINT: stopping gracefully (send again to force)"),
        }
        token.cancel();
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::warn!("second signal: forcing exit");
        std::process::exit(FORCED_EXIT_CODE);
    });
    Ok(())
}
