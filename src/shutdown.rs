//! SIGINT and SIGTERM become one [`CancellationToken`] that every sleep and wait honours.
//!
//! The first signal asks the work in flight to reach a safe point (state saved, downloads
//! deleted); a second one exits at once, for an operator who does not want to wait.

use tokio_util::sync::CancellationToken;

/// Exit code after a second signal, as a shell reports a process killed by SIGINT.
const FORCED_EXIT_CODE: i32 = 130;

/// Starts listening for signals and returns the token they cancel.
pub fn on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::warn!(
            "shutdown requested: finishing the current step; a second signal exits at once"
        );
        cancel.cancel();
        wait_for_signal().await;
        tracing::error!("second signal: exiting now");
        std::process::exit(FORCED_EXIT_CODE);
    });
    token
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
