//! SIGKILL crash cycles and corruption sweeps (see
//! `storage_conformance::reliability`) over two settings: buffered writes with
//! LZ4 (the WAL in the page cache survives a killed process), and synced writes
//! with zstd. Crash cycles alternate between them. Small write buffers make
//! flushes and compactions happen while the child is being killed.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use storage_conformance::reliability::{DurableTarget, reliability_main};
use storage_core::{CompressionType, StorageBackend, StorageError, async_trait};
use storage_rocksdb::{RocksDBBackend, RocksDBConfig};

struct Rocks;

#[async_trait]
impl DurableTarget for Rocks {
    async fn open(
        &self,
        dir: &Path,
        setting: u64,
    ) -> Result<Arc<dyn StorageBackend>, StorageError> {
        let (sync_writes, compression) = match setting % 2 {
            0 => (false, CompressionType::Lz4),
            _ => (true, CompressionType::Zstd),
        };
        let config = RocksDBConfig::new(dir.to_string_lossy().into_owned())
            .compression(compression)
            .cache_size(8 << 20)
            .write_buffer_size(256 << 10)
            .max_background_jobs(2)
            .sync_writes(sync_writes);
        let store = tokio::task::spawn_blocking(move || RocksDBBackend::new(config))
            .await
            .expect("open task")?;
        Ok(Arc::new(store))
    }

    fn settings(&self) -> u64 {
        2
    }

    fn opens_read_only(&self) -> bool {
        true
    }

    async fn open_read_only(
        &self,
        dir: &Path,
    ) -> Option<Result<Arc<dyn StorageBackend>, StorageError>> {
        let config = RocksDBConfig::new(dir.to_string_lossy().into_owned())
            .mode(storage_core::OpenMode::ReadOnly);
        let opened = tokio::task::spawn_blocking(move || RocksDBBackend::new(config))
            .await
            .expect("open task");
        Some(opened.map(|s| Arc::new(s) as Arc<dyn StorageBackend>))
    }

    /// RocksDB's info logs are diagnostics it never reads back.
    fn damageable(&self, path: &Path) -> bool {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        !name.starts_with("LOG")
    }
}

fn main() -> ExitCode {
    reliability_main(vec![("rocksdb", Arc::new(Rocks))])
}
