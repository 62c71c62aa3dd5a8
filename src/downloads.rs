//! The download folder, where live malware sits between Falcon and VMRay for as short a time as
//! possible: created private (0700), cleared of the connector's leftovers at every cycle start,
//! and every sample deleted by a guard as soon as it has been uploaded, whatever happened.
//!
//! The connector deletes only what it wrote: files named as it names them (the SHA-256, or a
//! partial download `.<sha256>.<pid>.<n>.zip|part`) in a folder that carries its marker file.
//! A folder that is `/`, the working directory, one that holds the state store or the log, or
//! one holding files it did not write is refused at start, so a mistyped `download_dir` can
//! never cost an operator their files.

use std::path::{Component, Path, PathBuf};

use crate::config::{Config, ConfigError};

/// The file that proves a folder is the connector's own download folder. Written when the
/// connector creates the folder or finds it empty; a non-empty folder without it is refused.
pub const MARKER: &str = ".falcon-vmray-connector";

/// Kept: it keeps the empty `downloads/` folder in git.
const GITKEEP: &str = ".gitkeep";

const KEY: &str = "crowdstrike.download_dir";

#[derive(Debug, thiserror::Error)]
pub enum DownloadDirError {
    #[error("cannot prepare the download folder {path}: {source}; check crowdstrike.download_dir")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the download folder {path} is not the connector's own: {reason}")]
    NotOwn { path: PathBuf, reason: String },
}

/// Whether `name` is one the connector gives the files it writes in the download folder: a
/// sample (`<sha256>`) or a download in progress (`.<sha256>.<pid>.<n>.zip` or `.part`).
pub fn is_own_file(name: &str) -> bool {
    fn is_sha256(s: &str) -> bool {
        s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }
    fn is_number(s: &str) -> bool {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
    }
    if is_sha256(name) {
        return true;
    }
    let Some(rest) = name.strip_prefix('.') else {
        return false;
    };
    let parts: Vec<&str> = rest.split('.').collect();
    matches!(
        parts.as_slice(),
        [sha, pid, n, "zip" | "part"] if is_sha256(sha) && is_number(pid) && is_number(n)
    )
}

/// The name of a download in progress, in the form [`is_own_file`] recognises.
pub fn partial_name(sha256: &str, n: u64, suffix: &str) -> String {
    format!(".{sha256}.{}.{n}.{suffix}", std::process::id())
}

/// The start check, for `check --offline` and every start: `download_dir` must be a folder
/// the connector may clear. The error names the key and what to do.
pub fn check_config(config: &Config) -> Option<ConfigError> {
    refusal(
        &config.crowdstrike.download_dir,
        &config.general.state_file,
        &config.general.log_file,
    )
    .map(|message| ConfigError::Invalid {
        key: KEY.into(),
        message,
    })
}

/// Why `dir` cannot be the download folder, or `None` when it can.
pub fn refusal(dir: &Path, state_file: &Path, log_file: &Path) -> Option<String> {
    let resolved = resolve(dir);
    let shown = dir.display();
    let choose =
        "choose a folder of the connector's own (e.g. \"downloads\" beside the state folder)";
    if resolved.parent().is_none() {
        return Some(format!("`{shown}` is the root folder /: {choose}"));
    }
    if let Ok(cwd) = std::env::current_dir().map(|cwd| resolve(&cwd))
        && cwd.starts_with(&resolved)
    {
        let what = if cwd == resolved {
            "is the working directory"
        } else {
            "holds the working directory"
        };
        return Some(format!("`{shown}` {what} ({}): {choose}", cwd.display()));
    }
    for (key, file) in [
        ("general.state_file", state_file),
        ("general.log_file", log_file),
    ] {
        if resolve(file).starts_with(&resolved) {
            return Some(format!(
                "`{shown}` holds {key} ({}): the connector clears its download folder, {choose}",
                file.display()
            ));
        }
    }
    match std::fs::symlink_metadata(&resolved) {
        Err(_) => return None,
        Ok(meta) if !meta.is_dir() => {
            return Some(format!("`{shown}` is not a folder: {choose}"));
        }
        Ok(_) => {}
    }
    let (marked, foreign) = match survey(&resolved) {
        Ok(found) => found,
        Err(e) => {
            return Some(format!(
                "`{shown}` cannot be read ({e}): fix its permissions"
            ));
        }
    };
    if marked || foreign.is_empty() {
        return None;
    }
    Some(format!(
        "`{shown}` holds files the connector did not write ({}{}): the connector deletes \
         what it downloads there, so it uses only an empty folder or one marked with {MARKER}; \
         move those files, or {choose}",
        foreign
            .iter()
            .take(3)
            .cloned()
            .collect::<Vec<_>>()
            .join(", "),
        if foreign.len() > 3 {
            format!(" and {} more", foreign.len() - 3)
        } else {
            String::new()
        }
    ))
}

/// Whether the folder carries the marker, and the names in it the connector did not write.
fn survey(dir: &Path) -> std::io::Result<(bool, Vec<String>)> {
    let mut marked = false;
    let mut foreign = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name == MARKER {
            marked = true;
        } else if name != GITKEEP
            && name != crate::instance::DOWNLOAD_DIR_LOCK
            && !is_own_file(&name)
        {
            foreign.push(name);
        }
    }
    foreign.sort();
    Ok((marked, foreign))
}

/// An absolute path with `.` and `..` resolved and symbolic links followed as far as the path
/// exists, so two spellings of one folder compare equal.
fn resolve(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut normal = PathBuf::new();
    for component in absolute.components() {
        match component {
            Component::ParentDir => {
                normal.pop();
            }
            Component::CurDir => {}
            other => normal.push(other),
        }
    }
    // Follow links on the longest part that exists; the rest cannot be a link.
    let mut existing = normal.clone();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (
            existing.file_name().map(ToOwned::to_owned),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => return normal,
        }
    }
    let mut out = std::fs::canonicalize(&existing).unwrap_or(existing);
    out.extend(rest.iter().rev());
    out
}

/// Creates the folder with owner-only access (and its marker), or checks that it is the
/// connector's own, then deletes what an earlier run left in it: only files the connector
/// names as its own. Returns how many leftovers were deleted.
pub fn prepare(dir: &Path) -> Result<usize, DownloadDirError> {
    let fail = |source| DownloadDirError::Io {
        path: dir.to_path_buf(),
        source,
    };
    create_private(dir).map_err(fail)?;
    restrict(dir).map_err(fail)?;
    let (marked, foreign) = survey(dir).map_err(fail)?;
    if !marked {
        if !foreign.is_empty() {
            return Err(DownloadDirError::NotOwn {
                path: dir.to_path_buf(),
                reason: format!(
                    "it holds files the connector did not write ({}) and no {MARKER} marker; \
                     move them or choose another folder for crowdstrike.download_dir",
                    foreign.join(", ")
                ),
            });
        }
        write_marker(dir).map_err(fail)?;
    } else if !foreign.is_empty() {
        tracing::warn!(
            "the download folder {} holds {} file(s) the connector did not write; they are left alone",
            dir.display(),
            foreign.len()
        );
    }
    Ok(remove_own_files(dir))
}

/// Deletes every file in `dir` the connector names as its own (samples and partial
/// downloads), never anything else; for every exit path. Returns how many were deleted.
pub fn remove_own_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut deleted = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_str().is_some_and(is_own_file) {
            continue;
        }
        // Never follow into a folder someone named like a sample.
        if !entry
            .file_type()
            .is_ok_and(|t| t.is_file() || t.is_symlink())
        {
            continue;
        }
        let path = entry.path();
        match std::fs::remove_file(&path) {
            Ok(()) => deleted += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("cannot delete leftover {}: {e}", path.display()),
        }
    }
    deleted
}

/// Deletes the connector's own files from the download folder when dropped: at the end of a
/// run, on an error and while a panic unwinds.
#[derive(Debug)]
pub struct CleanupOnExit {
    dir: PathBuf,
}

impl CleanupOnExit {
    pub fn new(dir: PathBuf) -> Self {
        CleanupOnExit { dir }
    }
}

impl Drop for CleanupOnExit {
    fn drop(&mut self) {
        let deleted = remove_own_files(&self.dir);
        if deleted > 0 {
            tracing::warn!(
                "deleted {deleted} sample file(s) left in {} at exit",
                self.dir.display()
            );
        }
    }
}

fn write_marker(dir: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(dir.join(MARKER))?;
    std::io::Write::write_all(
        &mut file,
        b"This folder is falcon-vmray-connector's download folder: it deletes the samples it \
          writes here. Files of other names are left alone.\n",
    )
}

/// Creates `dir` and any missing parent with owner-only access.
pub fn create_private(dir: &Path) -> std::io::Result<()> {
    crate::private::create_dir(dir)
}

#[cfg(unix)]
fn restrict(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

#[cfg(not(unix))]
fn restrict(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

/// A downloaded sample on disk, deleted when the guard goes out of scope.
#[derive(Debug)]
pub struct SampleFile {
    path: PathBuf,
}

impl SampleFile {
    pub fn new(path: PathBuf) -> Self {
        SampleFile { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SampleFile {
    fn drop(&mut self) {
        match std::fs::remove_file(&self.path) {
            Ok(()) => tracing::debug!("deleted {}", self.path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::error!("cannot delete sample {}: {e}", self.path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn prepare_marks_a_new_folder_private_and_deletes_only_the_connectors_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let downloads = dir.path().join("new/downloads");
        assert_eq!(prepare(&downloads).unwrap(), 0);
        assert!(downloads.join(MARKER).exists());
        assert_eq!(mode(&downloads), 0o700);
        assert_eq!(mode(&dir.path().join("new")), 0o700);
        assert_eq!(mode(&downloads.join(MARKER)), 0o600);

        let sha = "0f".repeat(32);
        let partial = format!(".{sha}.17.3.part");
        for name in [sha.as_str(), partial.as_str(), "notes.txt", ".gitkeep"] {
            std::fs::write(downloads.join(name), b"x").unwrap();
        }
        // A folder named like a sample is never followed into.
        std::fs::create_dir(downloads.join("ab".repeat(32))).unwrap();
        std::fs::write(downloads.join("ab".repeat(32)).join("inner"), b"x").unwrap();
        assert_eq!(prepare(&downloads).unwrap(), 2);
        let mut left: Vec<String> = std::fs::read_dir(&downloads)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                ".falcon-vmray-connector",
                ".gitkeep",
                &"ab".repeat(32),
                "notes.txt"
            ]
        );
    }

    #[test]
    fn prepare_refuses_a_folder_with_foreign_files_and_no_marker() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("thesis.pdf"), b"x").unwrap();
        std::fs::write(dir.path().join("0f".repeat(32)), b"x").unwrap();
        let err = prepare(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("thesis.pdf") && err.contains("download_dir"),
            "{err}"
        );
        assert!(dir.path().join("thesis.pdf").exists());
        assert!(dir.path().join("0f".repeat(32)).exists());
        assert!(!dir.path().join(MARKER).exists());
        // An empty folder (but for .gitkeep) becomes the connector's.
        let empty = tempfile::tempdir().unwrap();
        std::fs::write(empty.path().join(".gitkeep"), b"").unwrap();
        prepare(empty.path()).unwrap();
        assert!(empty.path().join(MARKER).exists());
    }

    #[test]
    fn own_names_are_exactly_samples_and_partial_downloads() {
        let sha = "0123456789abcdef".repeat(4);
        assert!(is_own_file(&sha));
        assert!(is_own_file(&partial_name(&sha, 7, "zip")));
        assert!(is_own_file(&partial_name(&sha, 0, "part")));
        for other in [
            "notes.txt",
            ".gitkeep",
            MARKER,
            &sha.to_uppercase(),
            &sha[1..],
            &format!("{sha}.exe"),
            &format!(".{sha}.1.2.txt"),
            &format!(".{sha}.x.2.zip"),
            &format!(".{sha}.1.zip"),
        ] {
            assert!(!is_own_file(other), "{other}");
        }
    }

    #[test]
    fn the_root_the_working_directory_and_folders_of_state_or_log_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let state = root.join("state/connector.db");
        let log = root.join("log/connector.log");
        let refused = |d: &Path| refusal(d, &state, &log);
        assert!(refused(Path::new("/")).unwrap().contains("root folder"));
        assert!(refused(&root.join("x/../..//")).is_some());
        let cwd = std::env::current_dir().unwrap();
        assert!(
            refused(Path::new("."))
                .unwrap()
                .contains("working directory")
        );
        assert!(
            refused(&cwd.join(".."))
                .unwrap()
                .contains("working directory")
        );
        assert!(refused(root).unwrap().contains("general.state_file"));
        assert!(
            refused(&root.join("state"))
                .unwrap()
                .contains("general.state_file")
        );
        assert!(
            refused(&root.join("log/."))
                .unwrap()
                .contains("general.log_file")
        );
        assert_eq!(refused(&root.join("downloads")), None);
        assert_eq!(refused(&root.join("state/downloads")), None);
        std::fs::create_dir(root.join("home")).unwrap();
        std::fs::write(root.join("home/a.txt"), b"x").unwrap();
        assert!(refused(&root.join("home")).unwrap().contains("a.txt"));
        std::fs::write(root.join("home").join(MARKER), b"").unwrap();
        assert_eq!(refused(&root.join("home")), None);
    }

    #[test]
    fn the_exit_guard_deletes_only_the_connectors_files_even_in_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let sample = dir.path().join("9a".repeat(32));
        let other = dir.path().join("notes.txt");
        std::fs::write(&sample, b"MZ").unwrap();
        std::fs::write(&other, b"x").unwrap();
        let path = dir.path().to_path_buf();
        let panicked = std::thread::spawn(move || {
            let _guard = CleanupOnExit::new(path);
            panic!("a bug");
        })
        .join();
        assert!(panicked.is_err());
        assert!(!sample.exists());
        assert!(other.exists());
    }

    #[test]
    fn a_sample_file_is_deleted_with_its_guard() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sample");
        std::fs::write(&path, b"MZ").unwrap();
        drop(SampleFile::new(path.clone()));
        assert!(!path.exists());
    }
}
