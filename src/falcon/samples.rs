//! Sample download: the password-protected ZIP is streamed to a temporary file, then its single
//! entry is decrypted (ZipCrypto or AES, password `infected`) through a SHA-256 hasher into
//! `dir/<sha256>`.
//!
//! The entry's own name is never used (zip slip), the decompressed size is capped (zip bombs),
//! the hash must match the one asked for (ZipCrypto accepts a wrong password 1 time in 256, and
//! nothing else authenticates the bytes), and no temporary file outlives the call, whatever
//! happens.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256 as Hasher};
use tokio::io::AsyncWriteExt;

use super::{Call, FalconClient, FalconError, Scope};
use crate::model::Sha256;

const PASSWORD: &[u8] = b"infected";
/// Room for the ZIP's own structure on top of the largest sample allowed.
const ZIP_OVERHEAD: u64 = 1024 * 1024;

impl FalconClient {
    /// Downloads the sample, decrypts it and writes it to `dir/<sha256>` with its hash checked.
    /// `Ok(None)` when Falcon does not hold the file (404).
    /// Shutdown ends it at once; its temporary files are deleted.
    pub async fn download_sample(
        &self,
        sha256: &Sha256,
        dir: &Path,
    ) -> Result<Option<PathBuf>, FalconError> {
        self.interruptible(self.fetch_sample(sha256, dir)).await
    }

    async fn fetch_sample(
        &self,
        sha256: &Sha256,
        dir: &Path,
    ) -> Result<Option<PathBuf>, FalconError> {
        let fail = |reason: String| FalconError::Sample {
            sha256: sha256.clone(),
            reason,
        };
        let local = |reason: String| FalconError::DownloadDir {
            sha256: sha256.clone(),
            reason,
        };
        create_private_dir(dir).map_err(|e| {
            local(format!(
                "cannot create the download folder {}: {e}",
                dir.display()
            ))
        })?;
        let mut call = Call::get(
            "/samples/entities/samples/v3",
            "get sample",
            Scope::SampleUploads,
        )
        .query("ids", sha256)
        .query("password_protected", "true");
        call.octet_stream = true;
        // Up to 256 MB at modest bandwidth: far longer than a JSON call.
        call.timeout = Some(self.settings().request_timeout * 15);
        let mut response = match self.send_raw(call).await {
            Ok(response) => response,
            Err(FalconError::NotFound { .. }) => {
                tracing::info!(%sha256, "Falcon does not hold this sample (404); it cannot be downloaded");
                return Ok(None);
            }
            Err(e) => return Err(e),
        };

        let max_sample_bytes = self.settings().max_sample_bytes;
        let zip = TempFile::create(dir, sha256, "zip").await.map_err(|e| {
            local(format!(
                "cannot create a temporary file in {}: {e}",
                dir.display()
            ))
        })?;
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .open(zip.path())
            .await
            .map_err(|e| local(format!("cannot write the download: {e}")))?;
        let mut received = 0u64;
        loop {
            let chunk = response.chunk().await.map_err(|e| {
                fail(format!(
                    "the download broke off after {received} bytes: {}",
                    super::retry::describe(&e)
                ))
            })?;
            let Some(chunk) = chunk else { break };
            received += chunk.len() as u64;
            if received > max_sample_bytes + ZIP_OVERHEAD {
                return Err(fail(format!(
                    "the download is larger than max_sample_bytes ({max_sample_bytes})"
                )));
            }
            file.write_all(&chunk)
                .await
                .map_err(|e| local(format!("cannot write the download: {e}")))?;
        }
        file.flush()
            .await
            .map_err(|e| local(format!("cannot write the download: {e}")))?;
        drop(file);

        let expected = sha256.clone();
        let out_dir = dir.to_path_buf();
        let extracted = tokio::task::spawn_blocking(move || {
            extract(zip.path(), &out_dir, &expected, max_sample_bytes)
        })
        .await
        .map_err(|e| local(format!("the extraction task failed: {e}")))?;
        extracted.map(Some).map_err(|failure| match failure {
            Failure::Sample(reason) => fail(reason),
            Failure::Local(reason) => local(reason),
        })
    }
}

/// Why the extraction failed: the sample's own archive, or the connector's download folder.
#[derive(Debug)]
enum Failure {
    Sample(String),
    Local(String),
}

/// Decrypts the archive's single entry into `dir/<expected>`, or explains why not. On any error
/// nothing is left behind.
fn extract(zip_path: &Path, dir: &Path, expected: &Sha256, cap: u64) -> Result<PathBuf, Failure> {
    use Failure::{Local, Sample};
    let file =
        File::open(zip_path).map_err(|e| Local(format!("cannot reopen the download: {e}")))?;
    let mut archive = zip::ZipArchive::new(BufReader::new(file)).map_err(|e| {
        Sample(format!(
            "the download is not a readable ZIP archive (truncated?): {e}"
        ))
    })?;
    if archive.len() != 1 {
        return Err(Sample(format!(
            "the ZIP archive holds {} entries; exactly one was expected",
            archive.len()
        )));
    }
    let mut entry = archive.by_index_decrypt(0, PASSWORD).map_err(|e| {
        Sample(match e {
            zip::result::ZipError::InvalidPassword => {
                "the ZIP archive does not open with the password `infected`".to_string()
            }
            other => format!("cannot open the ZIP entry: {other}"),
        })
    })?;
    if entry.size() > cap {
        return Err(Sample(format!(
            "the sample is {} bytes, more than max_sample_bytes ({cap})",
            entry.size()
        )));
    }

    let part = TempFile::create_blocking(dir, expected, "part").map_err(|e| {
        Local(format!(
            "cannot create a temporary file in {}: {e}",
            dir.display()
        ))
    })?;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .open(part.path())
        .map_err(|e| Local(format!("cannot write the sample: {e}")))?;
    let mut hasher = Hasher::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        // Read errors include AES authentication failures, reported only at the end.
        let n = entry
            .read(&mut buffer)
            .map_err(|e| Sample(format!("cannot decrypt or inflate the sample: {e}")))?;
        if n == 0 {
            break;
        }
        written += n as u64;
        if written > cap {
            return Err(Sample(format!(
                "the sample inflates past max_sample_bytes ({cap}); stopped and deleted"
            )));
        }
        hasher.update(&buffer[..n]);
        out.write_all(&buffer[..n])
            .map_err(|e| Local(format!("cannot write the sample: {e}")))?;
    }
    out.sync_all()
        .map_err(|e| Local(format!("cannot write the sample: {e}")))?;
    drop(out);
    let actual = Sha256::from_digest(&hasher.finalize());
    if actual != *expected {
        return Err(Sample(format!(
            "the extracted file's SHA-256 is {actual}, not the one asked for; deleted"
        )));
    }
    let target = dir.join(expected.as_str());
    std::fs::rename(part.path(), &target)
        .map_err(|e| Local(format!("cannot store the sample: {e}")))?;
    part.keep();
    Ok(target)
}

/// A file in the download folder that is deleted when dropped (error, panic or cancellation)
/// unless kept.
struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl TempFile {
    fn name(dir: &Path, sha256: &Sha256, suffix: &str) -> PathBuf {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        // The download folder's cleanup deletes files of this form only.
        dir.join(crate::downloads::partial_name(sha256.as_str(), n, suffix))
    }

    async fn create(dir: &Path, sha256: &Sha256, suffix: &str) -> std::io::Result<TempFile> {
        let path = Self::name(dir, sha256, suffix);
        let mut options = tokio::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        options.mode(0o600);
        options.open(&path).await?;
        Ok(TempFile { path, keep: false })
    }

    fn create_blocking(dir: &Path, sha256: &Sha256, suffix: &str) -> std::io::Result<TempFile> {
        let path = Self::name(dir, sha256, suffix);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options.open(&path)?;
        Ok(TempFile { path, keep: false })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    crate::downloads::create_private(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use zip::write::SimpleFileOptions;

    fn sha_of(data: &[u8]) -> Sha256 {
        Sha256::from_digest(&Hasher::digest(data))
    }

    fn archive(name: &str, data: &[u8]) -> Vec<u8> {
        let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let options =
            SimpleFileOptions::default().with_aes_encryption(zip::AesMode::Aes256, "infected");
        writer.start_file(name, options).unwrap();
        writer.write_all(data).unwrap();
        writer.finish().unwrap().into_inner()
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn extraction_writes_only_the_hash_named_file() {
        let dir = tempfile::tempdir().unwrap();
        let data = b"payload".repeat(100);
        let sha = sha_of(&data);
        let zip = dir.path().join("in.zip");
        std::fs::write(&zip, archive("../../evil", &data)).unwrap();
        let out = extract(&zip, dir.path(), &sha, 1 << 20).unwrap();
        assert_eq!(out, dir.path().join(sha.as_str()));
        assert_eq!(std::fs::read(&out).unwrap(), data);
        std::fs::remove_file(&zip).unwrap();
        assert_eq!(leftovers(dir.path()), vec![sha.to_string()]);
        // What the cleanup at cycle start recognises as the connector's own.
        assert!(crate::downloads::is_own_file(sha.as_str()));
        let partial = TempFile::name(dir.path(), &sha, "part");
        let name = partial.file_name().unwrap().to_str().unwrap();
        assert!(crate::downloads::is_own_file(name), "{name}");
    }

    #[test]
    fn an_archive_with_two_entries_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        writer
            .start_file("a", SimpleFileOptions::default())
            .unwrap();
        writer
            .start_file("b", SimpleFileOptions::default())
            .unwrap();
        let zip = dir.path().join("in.zip");
        std::fs::write(&zip, writer.finish().unwrap().into_inner()).unwrap();
        let err = extract(&zip, dir.path(), &sha_of(b""), 10).unwrap_err();
        assert!(
            matches!(&err, Failure::Sample(reason) if reason.contains("2 entries")),
            "{err:?}"
        );
    }

    #[test]
    fn a_sample_that_cannot_be_stored_is_the_download_folders_failure_not_the_samples() {
        let dir = tempfile::tempdir().unwrap();
        let data = b"payload".repeat(100);
        let sha = sha_of(&data);
        let zip = dir.path().join("in.zip");
        std::fs::write(&zip, archive("sample", &data)).unwrap();
        // A non-empty folder where the sample goes: the rename fails, even for root.
        std::fs::create_dir_all(dir.path().join(sha.as_str()).join("in-the-way")).unwrap();
        let err = extract(&zip, dir.path(), &sha, 1 << 20).unwrap_err();
        assert!(
            matches!(&err, Failure::Local(reason) if reason.starts_with("cannot store the sample")),
            "{err:?}"
        );
    }
}
