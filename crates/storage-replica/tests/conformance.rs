//! The whole conformance suite for the replication manager: three memory copies
//! (Quorum, synchronous writes; All, asynchronous writes) and a mixed manager
//! (SQLite primary, RocksDB and SQLite replicas) that persists.

use std::sync::Arc;
use std::time::Duration;

use storage_cache::{CacheConfig, CachedStorageBackend};
use storage_conformance::{Fixture, conformance_main};
use storage_core::{Capabilities, StorageBackend, StorageError, async_trait};
use storage_memory::MemoryBackend;
use storage_replica::{ConsistencyLevel, StorageManager, StorageManagerConfig};
use storage_rocksdb::{RocksDBBackend, RocksDBConfig};
use storage_sqlite::{SQLiteBackend, SQLiteConfig};

/// The payload limit every fixture's store is configured with.
const FIXTURE_PAYLOAD_LIMIT: usize = 9 << 20;

struct ManagerFixture {
    /// Wrap the manager in the cache layer.
    cached: bool,
    level: ConsistencyLevel,
    sync_writes: bool,
    /// `Some`: the SQLite primary and the RocksDB replica live here.
    dir: Option<tempfile::TempDir>,
}

impl ManagerFixture {
    fn memory(level: ConsistencyLevel, sync_writes: bool) -> Self {
        Self {
            cached: false,
            level,
            sync_writes,
            dir: None,
        }
    }

    fn mixed() -> Self {
        Self {
            cached: false,
            level: ConsistencyLevel::Quorum,
            sync_writes: true,
            dir: Some(tempfile::tempdir().expect("temp dir")),
        }
    }
}

#[async_trait]
impl Fixture for ManagerFixture {
    fn expected_capabilities(&self) -> Option<Capabilities> {
        Some({
            let caps = Capabilities::new().atomic_batches().vacuum();
            if self.dir.is_some() {
                caps.persistent()
            } else {
                caps
            }
        })
    }

    /// The mixed fixture opens SQLite and RocksDB for every sequence.
    fn model_sequences(&self) -> u32 {
        if self.dir.is_some() { 150 } else { 1000 }
    }

    fn max_payload_bytes(&self) -> Option<usize> {
        Some(FIXTURE_PAYLOAD_LIMIT)
    }

    async fn open(&self) -> Result<Arc<dyn StorageBackend>, StorageError> {
        let (primary, replicas): (Arc<dyn StorageBackend>, Vec<Arc<dyn StorageBackend>>) =
            match &self.dir {
                None => (
                    Arc::new(MemoryBackend::new().with_max_payload_bytes(FIXTURE_PAYLOAD_LIMIT)),
                    vec![
                        Arc::new(
                            MemoryBackend::new().with_max_payload_bytes(FIXTURE_PAYLOAD_LIMIT),
                        ),
                        Arc::new(
                            MemoryBackend::new().with_max_payload_bytes(FIXTURE_PAYLOAD_LIMIT),
                        ),
                    ],
                ),
                Some(dir) => (
                    Arc::new(
                        SQLiteBackend::new(
                            SQLiteConfig::at(dir.path().join("primary.db"))
                                .max_payload_bytes(FIXTURE_PAYLOAD_LIMIT),
                        )
                        .await?,
                    ),
                    // Every copy persists, so the manager does (it reports what
                    // all its copies share).
                    vec![
                        Arc::new(open_rocks(dir.path().join("replica_rocks")).await?),
                        Arc::new(
                            SQLiteBackend::new(
                                SQLiteConfig::at(dir.path().join("replica.db"))
                                    .max_payload_bytes(FIXTURE_PAYLOAD_LIMIT),
                            )
                            .await?,
                        ),
                    ],
                ),
            };
        let config = StorageManagerConfig::default()
            .replication_factor(3)
            .consistency_level(self.level)
            .sync_writes(self.sync_writes)
            .replica_timeout(Duration::from_secs(10));
        let manager = StorageManager::from_arcs(primary, replicas, config)?;
        if self.cached {
            return Ok(Arc::new(CachedStorageBackend::new(
                manager,
                CacheConfig::default(),
            )?));
        }
        Ok(Arc::new(manager))
    }
}

async fn open_rocks(path: std::path::PathBuf) -> Result<RocksDBBackend, StorageError> {
    let config = RocksDBConfig::new(path.to_string_lossy().into_owned())
        .cache_size(8 << 20)
        .write_buffer_size(4 << 20)
        .max_payload_bytes(FIXTURE_PAYLOAD_LIMIT);
    tokio::task::spawn_blocking(move || RocksDBBackend::new(config))
        .await
        .expect("open task")
}

conformance_main! {
    "replica_memory_quorum_sync" => || ManagerFixture::memory(ConsistencyLevel::Quorum, true),
    "replica_memory_all_async" => || ManagerFixture::memory(ConsistencyLevel::All, false),
    "replica_mixed_sqlite_quorum" => ManagerFixture::mixed,
    "cache_over_replica_memory_quorum" => || ManagerFixture {
        cached: true,
        ..ManagerFixture::memory(ConsistencyLevel::Quorum, true)
    },
}
