//! The whole conformance suite for the cache, around the memory backend, SQLite and
//! RocksDB, in write-through and write-around modes, and with a budget so small
//! that entries are evicted all the time (LFU, prefetch on).

use std::sync::Arc;

use storage_cache::{CacheConfig, CachedStorageBackend, EvictionPolicy};
use storage_conformance::{Fixture, conformance_main};
use storage_core::{BlockHash, Capabilities, StorageBackend, StorageError, async_trait};
use storage_memory::MemoryBackend;
use storage_rocksdb::{RocksDBBackend, RocksDBConfig};
use storage_sqlite::{SQLiteBackend, SQLiteConfig};

/// The payload limit every fixture's store is configured with.
const FIXTURE_PAYLOAD_LIMIT: usize = 9 << 20;

enum Inner {
    Memory,
    Sqlite(tempfile::TempDir),
    Rocks(tempfile::TempDir),
}

struct CachedFixture {
    inner: Inner,
    config: CacheConfig,
}

impl CachedFixture {
    fn new(sqlite: bool, config: CacheConfig) -> Self {
        let inner = if sqlite {
            Inner::Sqlite(tempfile::tempdir().expect("temp dir"))
        } else {
            Inner::Memory
        };
        Self { inner, config }
    }

    fn rocks(config: CacheConfig) -> Self {
        Self {
            inner: Inner::Rocks(tempfile::tempdir().expect("temp dir")),
            config,
        }
    }

    async fn open_inner(&self) -> Result<Arc<dyn StorageBackend>, StorageError> {
        Ok(match &self.inner {
            Inner::Memory => {
                Arc::new(MemoryBackend::new().with_max_payload_bytes(FIXTURE_PAYLOAD_LIMIT))
            }
            Inner::Sqlite(dir) => Arc::new(
                SQLiteBackend::new(
                    SQLiteConfig::at(dir.path().join("blocks.db"))
                        .max_payload_bytes(FIXTURE_PAYLOAD_LIMIT),
                )
                .await?,
            ),
            Inner::Rocks(dir) => {
                let config =
                    RocksDBConfig::new(dir.path().join("db").to_string_lossy().into_owned())
                        .cache_size(8 << 20)
                        .write_buffer_size(4 << 20)
                        .max_payload_bytes(FIXTURE_PAYLOAD_LIMIT);
                Arc::new(
                    tokio::task::spawn_blocking(move || RocksDBBackend::new(config))
                        .await
                        .expect("open task")?,
                )
            }
        })
    }

    fn wrap(
        &self,
        inner: Arc<dyn StorageBackend>,
    ) -> Result<Arc<dyn StorageBackend>, StorageError> {
        Ok(Arc::new(CachedStorageBackend::new(
            inner,
            self.config.clone(),
        )?))
    }
}

#[async_trait]
impl Fixture for CachedFixture {
    fn can_corrupt(&self) -> bool {
        matches!(self.inner, Inner::Sqlite(_))
    }

    fn expected_capabilities(&self) -> Option<Capabilities> {
        Some({
            let caps = Capabilities::new().atomic_batches().vacuum();
            if matches!(self.inner, Inner::Memory) {
                caps
            } else {
                caps.persistent()
            }
        })
    }

    /// As many as the store beneath affords: RocksDB and SQLite open slowly.
    fn model_sequences(&self) -> u32 {
        match self.inner {
            Inner::Memory => 1000,
            Inner::Sqlite(_) => 300,
            Inner::Rocks(_) => 150,
        }
    }

    fn max_payload_bytes(&self) -> Option<usize> {
        Some(FIXTURE_PAYLOAD_LIMIT)
    }

    async fn open(&self) -> Result<Arc<dyn StorageBackend>, StorageError> {
        self.wrap(self.open_inner().await?)
    }

    /// Damages the block in the SQLite file, then reopens behind a fresh cache (a
    /// cache holding a verified copy would rightly keep serving it).
    async fn corrupt(
        &self,
        store: Arc<dyn StorageBackend>,
        hash: &BlockHash,
    ) -> Result<Arc<dyn StorageBackend>, StorageError> {
        let Inner::Sqlite(dir) = &self.inner else {
            return Err(StorageError::unsupported("memory", "corrupt"));
        };
        let db = dir.path().join("blocks.db");
        storage_conformance::fault::close_and_damage(store, hash, || vec![db]).await?;
        self.open().await
    }
}

fn config(write_through: bool) -> CacheConfig {
    CacheConfig::default().write_through(write_through)
}

fn tiny() -> CacheConfig {
    CacheConfig::default()
        .block_cache_size(16 << 10)
        .metadata_cache_size(4 << 10)
        .eviction_policy(EvictionPolicy::LFU)
        .prefetch_enabled(true)
        .prefetch_size(8)
}

conformance_main! {
    "cache_memory_write_through" => || CachedFixture::new(false, config(true)),
    "cache_memory_write_around" => || CachedFixture::new(false, config(false)),
    "cache_memory_tiny_lfu_prefetch" => || CachedFixture::new(false, tiny()),
    "cache_sqlite_write_through" => || CachedFixture::new(true, config(true)),
    "cache_sqlite_write_around" => || CachedFixture::new(true, config(false)),
    "cache_sqlite_tiny_lfu_prefetch" => || CachedFixture::new(true, tiny()),
    "cache_rocksdb_write_through" => || CachedFixture::rocks(config(true)),
    "cache_rocksdb_tiny_lfu_prefetch" => || CachedFixture::rocks(tiny()),
}
