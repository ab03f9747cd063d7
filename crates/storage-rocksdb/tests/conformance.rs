//! The whole conformance suite for RocksDB: uncompressed (with a corruption hook
//! that damages the block inside the SST files), zstd, and synced writes.

use std::sync::Arc;

use storage_conformance::{Fixture, conformance_main};
use storage_core::{
    BlockHash, Capabilities, CompressionType, OpenMode, StorageBackend, StorageError, async_trait,
};
use storage_rocksdb::{RocksDBBackend, RocksDBConfig};

/// The payload limit every fixture's store is configured with.
const FIXTURE_PAYLOAD_LIMIT: usize = 9 << 20;

struct RocksFixture {
    dir: tempfile::TempDir,
    compression: CompressionType,
    sync_writes: bool,
}

impl RocksFixture {
    fn new(compression: CompressionType, sync_writes: bool) -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
            compression,
            sync_writes,
        }
    }
}

#[async_trait]
impl Fixture for RocksFixture {
    fn can_corrupt(&self) -> bool {
        self.compression == CompressionType::None
    }

    fn expected_capabilities(&self) -> Option<Capabilities> {
        Some(Capabilities::new().persistent().atomic_batches().vacuum())
    }

    /// Each sequence opens a RocksDB (about a third of a second here): 150 keep
    /// the case near a minute per fixture.
    fn model_sequences(&self) -> u32 {
        150
    }

    fn max_payload_bytes(&self) -> Option<usize> {
        Some(FIXTURE_PAYLOAD_LIMIT)
    }

    async fn open(&self) -> Result<Arc<dyn StorageBackend>, StorageError> {
        self.open_mode(OpenMode::Create).await
    }

    fn open_modes(&self) -> &'static [OpenMode] {
        &[OpenMode::OpenExisting, OpenMode::ReadOnly]
    }

    async fn open_in(
        &self,
        mode: OpenMode,
    ) -> Option<Result<Arc<dyn StorageBackend>, StorageError>> {
        Some(self.open_mode(mode).await)
    }

    /// Closes (flushing the block into SST files), flips a byte of its payload in
    /// every file that holds it, and reopens.
    async fn corrupt(
        &self,
        store: Arc<dyn StorageBackend>,
        hash: &BlockHash,
    ) -> Result<Arc<dyn StorageBackend>, StorageError> {
        // SST files exist only once close has flushed the memtables.
        let db = self.dir.path().join("db");
        let ssts = move || {
            std::fs::read_dir(&db)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "sst"))
                .collect()
        };
        storage_conformance::fault::close_and_damage(store, hash, ssts).await?;
        self.open().await
    }
}

impl RocksFixture {
    async fn open_mode(&self, mode: OpenMode) -> Result<Arc<dyn StorageBackend>, StorageError> {
        let config = RocksDBConfig::new(self.dir.path().join("db").to_string_lossy().into_owned())
            .compression(self.compression)
            .cache_size(8 << 20)
            .write_buffer_size(4 << 20)
            .max_background_jobs(2)
            .sync_writes(self.sync_writes)
            .max_payload_bytes(FIXTURE_PAYLOAD_LIMIT)
            .mode(mode);
        // Opening reads files: keep it off the runtime thread.
        let store = tokio::task::spawn_blocking(move || RocksDBBackend::new(config))
            .await
            .expect("open task")?;
        Ok(Arc::new(store))
    }
}

conformance_main! {
    "rocksdb_plain" => || RocksFixture::new(CompressionType::None, false),
    "rocksdb_zstd" => || RocksFixture::new(CompressionType::Zstd, false),
    "rocksdb_lz4_sync" => || RocksFixture::new(CompressionType::Lz4, true),
}
