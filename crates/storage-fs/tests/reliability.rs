//! SIGKILL crash cycles and corruption sweeps (see
//! `storage_conformance::reliability`) over three settings: buffered with large
//! uncompressed segments, synced with 64 KiB LZ4 segments, periodic with 64 KiB
//! zstd segments. Crash cycles reopen with the next cycle's settings.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use storage_conformance::reliability::{DurableTarget, reliability_main};
use storage_core::{CompressionType, StorageBackend, StorageError, async_trait};
use storage_fs::{Durability, FilesystemBackend, FsConfig};

struct Fs;

#[async_trait]
impl DurableTarget for Fs {
    async fn open(
        &self,
        dir: &Path,
        setting: u64,
    ) -> Result<Arc<dyn StorageBackend>, StorageError> {
        let (durability, segment_size, compression) = match setting % 3 {
            0 => (Durability::Buffered, 100 << 20, CompressionType::None),
            1 => (Durability::Sync, 64 << 10, CompressionType::Lz4),
            _ => (
                Durability::Periodic(Duration::from_millis(10)),
                64 << 10,
                CompressionType::Zstd,
            ),
        };
        let config = FsConfig::new(dir.to_path_buf())
            .compression(compression)
            .durability(durability)
            .segment_size(segment_size);
        Ok(Arc::new(FilesystemBackend::open_async(config).await?))
    }

    fn settings(&self) -> u64 {
        3
    }

    fn opens_read_only(&self) -> bool {
        true
    }

    async fn open_read_only(
        &self,
        dir: &Path,
    ) -> Option<Result<Arc<dyn StorageBackend>, StorageError>> {
        let config = FsConfig::new(dir.to_path_buf()).mode(storage_core::OpenMode::ReadOnly);
        let opened = FilesystemBackend::open_async(config).await;
        Some(opened.map(|s| Arc::new(s) as Arc<dyn StorageBackend>))
    }

    /// Record starts in segment files, found by walking the framing (a 48-byte
    /// file header, then records of a 12-byte header with the body length at
    /// bytes 4..8), written out here rather than taken from the crate so the
    /// sweep does not trust the code it tests.
    fn boundaries(&self, path: &Path, bytes: &[u8]) -> Vec<u64> {
        if path.extension().is_none_or(|e| e != "seg") {
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut at = 48usize;
        while at + 12 <= bytes.len() {
            out.push(at as u64);
            let body = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
            at += 12 + body as usize;
        }
        out
    }
}

fn main() -> ExitCode {
    reliability_main(vec![("fs", Arc::new(Fs))])
}
