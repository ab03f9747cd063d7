//! SIGKILL crash cycles (see `storage_conformance::crash`). The durability mode
//! rotates per cycle: buffered with large segments, synced with 64 KiB segments,
//! periodic with 64 KiB segments; each reopen uses the next cycle's settings.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use storage_conformance::crash::{CrashTarget, crash_main};
use storage_core::{CompressionType, StorageBackend, StorageError, async_trait};
use storage_fs::{Durability, FilesystemBackend, FsConfig};

struct Fs;

#[async_trait]
impl CrashTarget for Fs {
    async fn open(&self, dir: &Path, cycle: u64) -> Result<Arc<dyn StorageBackend>, StorageError> {
        let (durability, segment_size, compression) = match cycle % 3 {
            0 => (Durability::Buffered, 100 << 20, CompressionType::None),
            1 => (Durability::Sync, 64 << 10, CompressionType::Lz4),
            _ => (
                Durability::Periodic(Duration::from_millis(10)),
                64 << 10,
                CompressionType::Zstd,
            ),
        };
        let config = FsConfig {
            path: dir.to_path_buf(),
            compression,
            durability,
            segment_size,
        };
        Ok(Arc::new(FilesystemBackend::open_async(config).await?))
    }
}

fn main() -> ExitCode {
    crash_main(vec![("fs", Arc::new(Fs))])
}
