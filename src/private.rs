//! Files and folders only the connector's user may read: the state store holds alert and host
//! data, the log names hosts and files, the download folder holds live malware. Created 0600
//! (files) and 0700 (folders) whatever the umask, so a run outside systemd (no `UMask=0077`)
//! is as private as one under it.

use std::fs::File;
use std::path::Path;

/// Creates `dir` and every missing parent with owner-only access. Folders that exist keep
/// their mode: they may be shared on purpose (a parent like `/var/lib`).
pub fn create_dir(dir: &Path) -> std::io::Result<()> {
    if dir.as_os_str().is_empty() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Opens `path` for reading and writing, creating it 0600 if needed; never truncates.
pub fn open_file(path: &Path) -> std::io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// Takes group and other access away from an existing file, one an older version or another
/// tool created readable by all. A file that does not exist is fine.
pub fn tighten(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        match std::fs::metadata(path) {
            Ok(meta) if meta.permissions().mode() & 0o077 != 0 => {
                let mode = meta.permissions().mode() & 0o700;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            }
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(())
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn folders_are_0700_files_0600_and_loose_files_are_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        create_dir(&nested).unwrap();
        assert_eq!(mode(&nested), 0o700);
        assert_eq!(mode(&dir.path().join("a")), 0o700);
        let file = nested.join("f");
        std::fs::write(&file, b"keep").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        tighten(&file).unwrap();
        assert_eq!(mode(&file), 0o600);
        drop(open_file(&file).unwrap());
        assert_eq!(std::fs::read(&file).unwrap(), b"keep", "opening truncated");
        let new = nested.join("new");
        drop(open_file(&new).unwrap());
        assert_eq!(mode(&new), 0o600);
        tighten(&nested.join("missing")).unwrap();
    }
}
