//! The whole conformance suite for the filesystem backend: once per compression
//! type, plus synced writes with tiny segments (every few writes roll a segment).
//! The corruption hook flips a byte inside the block's entry on disk, found with
//! `locate`, so it works for compressed stores too.

use std::sync::{Arc, Mutex, PoisonError, Weak};

use storage_conformance::{Fixture, conformance_main};
use storage_core::{
    BlockHash, Capabilities, CompressionType, OpenMode, StorageBackend, StorageError, async_trait,
};
use storage_fs::{Durability, FilesystemBackend, FsConfig};

/// The payload limit every fixture's store is configured with.
const FIXTURE_PAYLOAD_LIMIT: usize = 9 << 20;

struct FsFixture {
    dir: tempfile::TempDir,
    compression: CompressionType,
    durability: Durability,
    segment_size: u64,
    /// The open store, weakly: a strong hold would keep its lock after the case
    /// drops its handle.
    last: Mutex<Weak<FilesystemBackend>>,
}

impl FsFixture {
    fn new(compression: CompressionType) -> Self {
        Self::with(compression, Durability::Buffered, 100 << 20)
    }

    fn with(compression: CompressionType, durability: Durability, segment_size: u64) -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
            compression,
            durability,
            segment_size,
            last: Mutex::new(Weak::new()),
        }
    }
}

impl FsFixture {
    async fn open_mode(&self, mode: OpenMode) -> Result<Arc<dyn StorageBackend>, StorageError> {
        let config = FsConfig::new(self.dir.path().join("store"))
            .compression(self.compression)
            .durability(self.durability)
            .segment_size(self.segment_size)
            .max_payload_bytes(FIXTURE_PAYLOAD_LIMIT)
            .execution(Default::default())
            .mode(mode);
        let store = Arc::new(FilesystemBackend::open_async(config).await?);
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Arc::downgrade(&store);
        Ok(store)
    }
}

#[async_trait]
impl Fixture for FsFixture {
    fn can_corrupt(&self) -> bool {
        true
    }

    fn expected_capabilities(&self) -> Option<Capabilities> {
        Some(Capabilities::new().persistent().atomic_batches().vacuum())
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

    /// Closes the store, flips one byte in the middle of the block's stored bytes,
    /// and reopens.
    async fn corrupt(
        &self,
        store: Arc<dyn StorageBackend>,
        hash: &BlockHash,
    ) -> Result<Arc<dyn StorageBackend>, StorageError> {
        let concrete = self
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .upgrade()
            .ok_or_else(|| StorageError::InvalidInput("no open store to damage".into()))?;
        let loc = concrete
            .locate(hash)?
            .ok_or(StorageError::BlockNotFound { hash: *hash })?;
        drop(concrete);
        store.close().await?;
        drop(store);
        let mut bytes = std::fs::read(&loc.path).map_err(|e| StorageError::io("reading", e))?;
        // Past the 13-byte entry header: the stored (maybe compressed) block.
        let at = (loc.offset + 13 + (loc.len - 13) / 2) as usize;
        bytes[at] ^= 0x20;
        std::fs::write(&loc.path, bytes).map_err(|e| StorageError::io("writing", e))?;
        self.open().await
    }
}

/// A store on the simulated filesystem (no real files, so the model-based case's
/// thousand sequences stay quick); data survives close and drop like on disk.
struct SimFixture(storage_fs::io::SimVfs);

#[async_trait]
impl Fixture for SimFixture {
    fn expected_capabilities(&self) -> Option<Capabilities> {
        Some(Capabilities::new().persistent().atomic_batches().vacuum())
    }

    fn max_payload_bytes(&self) -> Option<usize> {
        Some(FIXTURE_PAYLOAD_LIMIT)
    }

    async fn open(&self) -> Result<Arc<dyn StorageBackend>, StorageError> {
        let config = FsConfig::new("/sim/store")
            .compression(CompressionType::Lz4)
            .durability(Durability::Buffered)
            .segment_size(64 << 10)
            .max_payload_bytes(FIXTURE_PAYLOAD_LIMIT)
            .execution(Default::default())
            .mode(Default::default());
        let vfs = Arc::new(self.0.clone());
        let store = tokio::task::spawn_blocking(move || FilesystemBackend::open_on(config, vfs))
            .await
            .map_err(|e| StorageError::InvalidInput(format!("open task failed: {e}")))??;
        Ok(Arc::new(store))
    }
}

conformance_main! {
    "fs_sim" => || SimFixture(storage_fs::io::SimVfs::new()),
    "fs_none" => || FsFixture::new(CompressionType::None),
    "fs_gzip" => || FsFixture::new(CompressionType::Gzip),
    "fs_zstd" => || FsFixture::new(CompressionType::Zstd),
    "fs_lz4" => || FsFixture::new(CompressionType::Lz4),
    "fs_sync_small_segments" => || FsFixture::with(CompressionType::Lz4, Durability::Sync, 64 * 1024),
}
