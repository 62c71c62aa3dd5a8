//! Deterministic file contents (a seed and a size are enough to regenerate any byte, so a 2 GB
//! sample never sits in memory) and the ZipCrypto-encrypted archive Falcon serves them in.

use std::io::{self, Write};
use std::path::Path;

use sha2::{Digest, Sha256};
use zip::unstable::write::FileOptionsExt;
use zip::write::SimpleFileOptions;

/// The password Falcon protects sample downloads with.
pub const ZIP_PASSWORD: &[u8] = b"infected";

/// Size of the chunks files are generated, hashed and streamed in.
pub const CHUNK: usize = 64 * 1024;

/// A small seeded generator (splitmix64): the simulator needs repeatable numbers, not secure ones.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }
    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    pub fn hex(&mut self, len: usize) -> String {
        let mut s = String::with_capacity(len);
        while s.len() < len {
            s.push_str(&format!("{:016x}", self.next_u64()));
        }
        s.truncate(len);
        s
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Fills `buf` with the bytes of the file `seed` starting at `offset` (a multiple of 8 is not
/// required). Every 8-byte block depends only on the seed and its index, so any range can be
/// produced independently.
pub fn fill(seed: u64, offset: u64, buf: &mut [u8]) {
    let mut pos = offset;
    let mut i = 0;
    while i < buf.len() {
        let block = pos / 8;
        let bytes = mix(seed ^ block.wrapping_mul(0xA24B_AED4_963E_E407)).to_le_bytes();
        let within = (pos % 8) as usize;
        let n = (8 - within).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&bytes[within..within + n]);
        i += n;
        pos += n as u64;
    }
}

/// Calls `sink` with consecutive chunks of the file until `size` bytes were produced.
pub fn for_each_chunk(
    seed: u64,
    size: u64,
    mut sink: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    while done < size {
        let n = (size - done).min(CHUNK as u64) as usize;
        fill(seed, done, &mut buf[..n]);
        sink(&buf[..n])?;
        done += n as u64;
    }
    Ok(())
}

/// The whole file in memory: only for small files (tests, generated scenarios).
pub fn content(seed: u64, size: u64) -> Vec<u8> {
    let mut out = vec![0u8; size as usize];
    fill(seed, 0, &mut out);
    out
}

/// SHA-256 (lowercase hex) of the generated file.
pub fn sha256_of(seed: u64, size: u64) -> String {
    let mut hasher = Sha256::new();
    for_each_chunk(seed, size, |c| {
        hasher.update(c);
        Ok(())
    })
    .expect("hashing cannot fail");
    hex::encode(hasher.finalize())
}

/// Writes a ZIP with one entry named `entry_name` holding the generated file, encrypted with
/// ZipCrypto and the password `infected`, to `dest`. Blocking: run it on a blocking thread.
pub fn write_encrypted_zip(dest: &Path, entry_name: &str, seed: u64, size: u64) -> io::Result<()> {
    let file = std::fs::File::create(dest)?;
    let mut zip = zip::ZipWriter::new(io::BufWriter::new(file));
    let options = SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(size >= u32::MAX as u64)
        .with_deprecated_encryption(ZIP_PASSWORD)
        .map_err(io::Error::other)?;
    zip.start_file(entry_name, options)
        .map_err(io::Error::other)?;
    for_each_chunk(seed, size, |c| zip.write_all(c))?;
    let mut inner = zip.finish().map_err(io::Error::other)?;
    inner.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn content_is_deterministic_and_position_addressable() {
        let whole = content(7, 1000);
        assert_eq!(whole, content(7, 1000));
        assert_ne!(whole, content(8, 1000));
        let mut part = vec![0u8; 13];
        fill(7, 501, &mut part);
        assert_eq!(&whole[501..514], &part[..]);
        let mut chunks = Vec::new();
        for_each_chunk(7, 1000, |c| {
            chunks.extend_from_slice(c);
            Ok(())
        })
        .unwrap();
        assert_eq!(chunks, whole);
    }

    #[test]
    fn zip_decrypts_with_infected_to_the_file() {
        let dir = std::env::temp_dir().join(format!("fvc-files-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.zip");
        let sha = sha256_of(3, 70_000);
        write_encrypted_zip(&path, &sha, 3, 70_000).unwrap();
        let mut archive = zip::ZipArchive::new(std::fs::File::open(&path).unwrap()).unwrap();
        assert_eq!(archive.len(), 1);
        assert!(archive.by_index(0).is_err(), "entry must be encrypted");
        let mut entry = archive.by_index_decrypt(0, ZIP_PASSWORD).unwrap();
        assert_eq!(entry.name().unwrap(), sha.as_str());
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        assert_eq!(hex::encode(Sha256::digest(&bytes)), sha);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
