//! One process per state file. Two connectors on one state store would both submit every
//! unknown sample and both write back every verdict (and on a brand-new store the second dies
//! on the schema), so the binary holds an exclusive advisory lock on `<state_file>.lock` for
//! its whole life. The lock file holds the holder's PID, for the message a second process
//! prints. The operating system releases the lock when the process ends, however it ends, so
//! a stale lock file is harmless and is never deleted.
//!
//! The download folder is locked the same way (`<download_dir>/.falcon-vmray-connector.lock`):
//! every start, cycle and exit deletes each file in it named like a sample, so two connectors
//! with different state files but one download folder would delete each other's samples
//! mid-upload.

use std::fs::{File, TryLockError};
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Exit code of a process that did not get the lock: another connector runs on the same state
/// file. Neither a failed cycle (1) nor a bad config (2).
pub const LOCKED_EXIT_CODE: u8 = 3;

/// How often a waiting `once` tries the lock again.
const RETRY_EVERY: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another falcon-vmray-connector (PID {holder}) is running on the state file {state}{waited}: \
         let it finish or stop it; two processes on one state file would submit and write back twice"
    )]
    Held {
        state: PathBuf,
        holder: String,
        waited: String,
    },
    #[error(
        "another falcon-vmray-connector (PID {holder}) uses the download folder {dir}{waited}: \
         give each connector its own crowdstrike.download_dir; each deletes the samples it finds \
         there, the other one's too"
    )]
    DownloadDirHeld {
        dir: PathBuf,
        holder: String,
        waited: String,
    },
    #[error("cannot lock {path}: {source}; check {key}")]
    Io {
        path: PathBuf,
        key: &'static str,
        source: std::io::Error,
    },
}

/// The held lock; released when dropped or when the process ends.
#[derive(Debug)]
pub struct InstanceLock {
    _file: File,
    path: PathBuf,
}

impl InstanceLock {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The lock file that guards `state_file`.
pub fn lock_path(state_file: &Path) -> PathBuf {
    let mut name = state_file.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// The lock file in the download folder: a name the folder's checks accept beside the marker.
pub const DOWNLOAD_DIR_LOCK: &str = ".falcon-vmray-connector.lock";

/// Takes the lock on `state_file`, waiting up to `wait` for another process to release it
/// (zero: not at all). `on_wait` is called once, with the holder's PID, if it has to wait.
pub fn acquire(
    state_file: &Path,
    wait: Duration,
    on_wait: impl FnOnce(&str),
) -> Result<InstanceLock, LockError> {
    lock(
        lock_path(state_file),
        "general.state_file",
        wait,
        on_wait,
        |holder, waited| LockError::Held {
            state: state_file.to_path_buf(),
            holder,
            waited,
        },
    )
}

/// Takes the lock on the download folder `dir` (created private if missing), waiting as
/// [`acquire`] does.
pub fn acquire_download_dir(
    dir: &Path,
    wait: Duration,
    on_wait: impl FnOnce(&str),
) -> Result<InstanceLock, LockError> {
    lock(
        dir.join(DOWNLOAD_DIR_LOCK),
        "crowdstrike.download_dir",
        wait,
        on_wait,
        |holder, waited| LockError::DownloadDirHeld {
            dir: dir.to_path_buf(),
            holder,
            waited,
        },
    )
}

fn lock(
    path: PathBuf,
    key: &'static str,
    wait: Duration,
    on_wait: impl FnOnce(&str),
    held: impl FnOnce(String, String) -> LockError,
) -> Result<InstanceLock, LockError> {
    let io = |source| LockError::Io {
        path: path.clone(),
        key,
        source,
    };
    if let Some(parent) = path.parent() {
        crate::private::create_dir(parent).map_err(io)?;
    }
    let mut file = crate::private::open_file(&path).map_err(io)?;
    let started = Instant::now();
    let mut on_wait = Some(on_wait);
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(TryLockError::WouldBlock) => {
                if started.elapsed() >= wait {
                    let waited = if wait.is_zero() {
                        String::new()
                    } else {
                        format!(" (waited {} s for it)", wait.as_secs())
                    };
                    return Err(held(holder(&path), waited));
                }
                if let Some(on_wait) = on_wait.take() {
                    on_wait(&holder(&path));
                }
                std::thread::sleep(RETRY_EVERY.min(wait.saturating_sub(started.elapsed())));
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
    }
    // Ours now: replace the previous holder's PID with this one.
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    file.flush().map_err(io)?;
    Ok(InstanceLock { _file: file, path })
}

/// The PID the holder wrote, or "unknown" in the instant before it wrote it.
fn holder(path: &Path) -> String {
    std::fs::read_to_string(path)
        .ok()
        .map(|text| text.trim().to_string())
        .filter(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_and_granted_once_released() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state/connector.db");
        let first = acquire(&state, Duration::ZERO, |_| panic!("no wait")).unwrap();
        assert_eq!(first.path(), dir.path().join("state/connector.db.lock"));
        let pid = std::process::id().to_string();
        assert_eq!(std::fs::read_to_string(first.path()).unwrap().trim(), pid);

        let err = acquire(&state, Duration::ZERO, |_| {})
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("PID {pid}")), "{err}");
        assert!(err.contains("connector.db"), "{err}");

        let mut waited_for = None;
        let started = Instant::now();
        let err = acquire(&state, Duration::from_millis(300), |h| {
            waited_for = Some(h.to_string())
        })
        .unwrap_err()
        .to_string();
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(waited_for.as_deref(), Some(pid.as_str()));
        assert!(err.contains("waited"), "{err}");

        drop(first);
        let again = acquire(&state, Duration::ZERO, |_| panic!("no wait")).unwrap();
        assert_eq!(
            std::fs::read_to_string(again.path()).unwrap(),
            format!("{pid}\n")
        );
    }

    #[test]
    fn a_second_lock_on_a_download_folder_is_refused_naming_the_holder_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let downloads = dir.path().join("downloads");
        let first = acquire_download_dir(&downloads, Duration::ZERO, |_| {}).unwrap();
        assert_eq!(first.path(), downloads.join(DOWNLOAD_DIR_LOCK));
        let err = acquire_download_dir(&downloads, Duration::ZERO, |_| {}).unwrap_err();
        assert!(matches!(err, LockError::DownloadDirHeld { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains(&format!("PID {}", std::process::id()))
                && text.contains("crowdstrike.download_dir"),
            "{text}"
        );
        drop(first);
        assert!(acquire_download_dir(&downloads, Duration::ZERO, |_| {}).is_ok());
    }

    #[test]
    fn a_waiting_lock_is_granted_when_the_holder_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("connector.db");
        let first = acquire(&state, Duration::ZERO, |_| {}).unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(first);
        });
        let second = acquire(&state, Duration::from_secs(10), |_| {});
        release.join().unwrap();
        assert!(second.is_ok(), "{second:?}");
    }
}
