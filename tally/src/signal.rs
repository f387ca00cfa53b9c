//! The process's stop signal: one future that completes on SIGINT (Ctrl-C) or SIGTERM.
//!
//! `tally serve` and `tally aggregate` both stop on it; they are the only commands that run
//! until told to stop. Library code never listens for signals itself: `serve::run` takes
//! any shutdown future, which is how tests stop an in-process app without signals.

use tracing::warn;

/// Completes when the process receives SIGINT or SIGTERM (only Ctrl-C where there is no
/// SIGTERM). A signal that cannot be listened for is logged and never fires, so the other
/// one still stops the process.
pub async fn shutdown() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
