//! SIGINT, SIGTERM and SIGHUP become one [`CancellationToken`] that every sleep and wait
//! honours.
//!
//! The first signal asks the work in flight to reach a safe point (state saved, downloads
//! deleted); both API clients hold the token and end every request, retry and wait at once.
//! SIGHUP is a shutdown too: a closed terminal or a `kill -HUP` would otherwise end the
//! process at once, with a decrypted sample left on disk. A second signal exits at once, for
//! an operator who does not want to wait, and a backstop exits 8 s after the first should
//! anything still hang; both delete the connector's samples from the download folder first.

use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Exit code after a second signal, as a shell reports a process killed by SIGINT.
const FORCED_EXIT_CODE: i32 = 130;

/// The longest a shutdown may take before the process exits anyway: under the 10 s Docker
/// gives between SIGTERM and SIGKILL.
const BACKSTOP: Duration = Duration::from_secs(8);

/// Exit code when the backstop ends the process: it did not stop cleanly.
const BACKSTOP_EXIT_CODE: i32 = 1;

/// Starts listening for signals and returns the token they cancel. An exit that skips the
/// orderly shutdown (a second signal, the backstop) first deletes the connector's own files from
/// `download_dir`: the guards that normally delete each sample do not run on `process::exit`.
pub fn on_signals_cleaning(download_dir: PathBuf) -> CancellationToken {
    listen(download_dir)
}

fn listen(download_dir: PathBuf) -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    let exit = move |code: i32| -> ! {
        crate::downloads::remove_own_files(&download_dir);
        std::process::exit(code)
    };
    tokio::spawn(async move {
        let name = wait_for_signal().await;
        tracing::warn!(
            "shutdown requested ({name}): finishing the current step; a second signal exits at once"
        );
        cancel.cancel();
        let backstop_exit = exit.clone();
        spawn_backstop(BACKSTOP, move || {
            // Every wait honours the token, so this is a bug's (or a hung system call's) last
            // line of defence: the state store commits each step, so exiting here is no worse
            // than a crash, and much better than the SIGKILL that follows 10 s after SIGTERM
            // in Docker.
            tracing::error!(
                "shutdown did not finish within {} s: exiting now; the next start resumes from the saved state",
                BACKSTOP.as_secs()
            );
            backstop_exit(BACKSTOP_EXIT_CODE);
        });
        let name = wait_for_signal().await;
        tracing::error!("second signal ({name}): exiting now");
        exit(FORCED_EXIT_CODE);
    });
    token
}

/// Calls `on_expiry` after `after` on a thread of its own. Not a task: the runtime may itself
/// be what hangs (its end waits for threads blocked in the system resolver), and a task dies
/// with the runtime it runs on.
fn spawn_backstop(after: Duration, on_expiry: impl FnOnce() + Send + 'static) {
    let spawned = std::thread::Builder::new()
        .name("shutdown-backstop".into())
        .spawn(move || {
            std::thread::sleep(after);
            on_expiry();
        });
    if let Err(e) = spawned {
        tracing::error!(
            "cannot start the shutdown backstop: {e}; a hung shutdown will not end by itself"
        );
    }
}

/// Waits for the next shutdown signal and names it.
#[cfg(unix)]
async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    let mut hangup = signal(SignalKind::hangup()).expect("SIGHUP handler installs");
    tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
        _ = hangup.recv() => "SIGHUP",
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() -> &'static str {
    let _ = tokio::signal::ctrl_c().await;
    "Ctrl-C"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backstop_fires_after_the_runtime_that_started_it_has_ended() {
        let (fired, expired) = std::sync::mpsc::channel();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            spawn_backstop(Duration::from_millis(200), move || {
                let _ = fired.send(());
            });
        });
        runtime.shutdown_background();
        assert!(
            expired.recv_timeout(Duration::from_secs(5)).is_ok(),
            "the backstop died with the runtime"
        );
    }
}
