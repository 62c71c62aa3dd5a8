//! The download folder, where live malware sits between Falcon and VMRay for as short a time as
//! possible: created private (0700), emptied at start, and every sample deleted by a guard as
//! soon as it has been uploaded, whatever happened.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("cannot prepare the download folder {path}: {source}; check crowdstrike.download_dir")]
pub struct DownloadDirError {
    path: PathBuf,
    source: std::io::Error,
}

/// Creates the folder with owner-only access and deletes whatever an earlier run left in it.
/// Returns how many leftovers were deleted.
pub fn prepare(dir: &Path) -> Result<usize, DownloadDirError> {
    let fail = |source| DownloadDirError {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(fail)?;
    restrict(dir).map_err(fail)?;
    let mut deleted = 0;
    for entry in std::fs::read_dir(dir).map_err(fail)? {
        let entry = entry.map_err(fail)?;
        let name = entry.file_name();
        // Keep the marker that keeps the empty folder in git.
        if name == ".gitkeep" {
            continue;
        }
        let path = entry.path();
        let removed = if entry.file_type().map_err(fail)?.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match removed {
            Ok(()) => deleted += 1,
            Err(e) => tracing::warn!("cannot delete leftover {}: {e}", path.display()),
        }
    }
    Ok(deleted)
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

    #[test]
    fn prepare_empties_the_folder_and_makes_it_private() {
        let dir = tempfile::tempdir().unwrap();
        let downloads = dir.path().join("downloads");
        std::fs::create_dir_all(downloads.join("sub")).unwrap();
        std::fs::write(downloads.join("leftover"), b"MZ").unwrap();
        std::fs::write(downloads.join(".gitkeep"), b"").unwrap();
        assert_eq!(prepare(&downloads).unwrap(), 2);
        let left: Vec<_> = std::fs::read_dir(&downloads).unwrap().collect();
        assert_eq!(left.len(), 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&downloads).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
        }
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
