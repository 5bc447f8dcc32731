//! Signals: the first SIGTERM or SIGINT asks for a graceful shutdown, a second one ends the
//! process at once.

use tokio_util::sync::CancellationToken;

/// First SIGTERM/SIGINT: cancel `shutdown`. Second: exit at once with 128 + signal.
pub(super) fn watch_signals(name: &'static str, shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        // Before anything else, logging included: nothing may stand between a signal and the
        // shutdown it asks for.
        shutdown.cancel();
        tracing::info!(function = name, "signal received: finishing in-flight work");
        let code = tokio::select! { _ = term.recv() => 15, _ = int.recv() => 2 };
        tracing::warn!(function = name, "second signal: exiting now");
        std::process::exit(128 + code);
    });
}
