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

use tokio_util::sync::CancellationToken;

/// Exit code after a second signal, as a shell reports a process killed by SIGINT.
const FORCED_EXIT_CODE: i32 = 130;

/// The longest a shutdown may take before the process exits anyway: under the 10 s Docker
/// gives between SIGTERM and SIGKILL.
const BACKSTOP: std::time::Duration = std::time::Duration::from_secs(8);

/// Exit code when the backstop ends the process: it did not stop cleanly.
const BACKSTOP_EXIT_CODE: i32 = 1;

/// Starts listening for signals and returns the token they cancel.
pub fn on_signals() -> CancellationToken {
    listen(None)
}

/// As [`on_signals`]; an exit that skips the orderly shutdown (a second signal, the backstop)
/// first deletes the connector's own files from `download_dir`: the guards that normally
/// delete each sample do not run on `process::exit`.
pub fn on_signals_cleaning(download_dir: PathBuf) -> CancellationToken {
    listen(Some(download_dir))
}

fn listen(download_dir: Option<PathBuf>) -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    let exit = move |code: i32| -> ! {
        if let Some(dir) = &download_dir {
            crate::downloads::remove_own_files(dir);
        }
        std::process::exit(code)
    };
    tokio::spawn(async move {
        let name = wait_for_signal().await;
        tracing::warn!(
            "shutdown requested ({name}): finishing the current step; a second signal exits at once"
        );
        cancel.cancel();
        tokio::select! {
            name = wait_for_signal() => {
                tracing::error!("second signal ({name}): exiting now");
                exit(FORCED_EXIT_CODE);
            }
            _ = tokio::time::sleep(BACKSTOP) => {
                // Every wait honours the token, so this is a bug's last line of defence: the
                // state store commits each step, so exiting here is no worse than a crash,
                // and much better than the SIGKILL that follows 10 s after SIGTERM in Docker.
                tracing::error!(
                    "shutdown did not finish within {} s: exiting now; the next start resumes from the saved state",
                    BACKSTOP.as_secs()
                );
                exit(BACKSTOP_EXIT_CODE);
            }
        }
    });
    token
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
