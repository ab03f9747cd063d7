//! The whole conformance suite for the SQLite backend, in WAL mode (the default)
//! and with a rollback journal and `synchronous = FULL`.

use std::sync::Arc;

use storage_conformance::{Fixture, conformance_main};
use storage_core::{BlockHash, Capabilities, OpenMode, StorageBackend, StorageError, async_trait};
use storage_sqlite::{JournalMode, SQLiteBackend, SQLiteConfig, SynchronousMode};

/// The payload limit every fixture's store is configured with.
const FIXTURE_PAYLOAD_LIMIT: usize = 9 << 20;

struct SqliteFixture {
    dir: tempfile::TempDir,
    wal: bool,
}

impl SqliteFixture {
    fn new(wal: bool) -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
            wal,
        }
    }

    fn config(&self) -> SQLiteConfig {
        let mut c = SQLiteConfig::at(self.dir.path().join("blocks.db"));
        c.max_payload_bytes = FIXTURE_PAYLOAD_LIMIT;
        if !self.wal {
            c.journal_mode = JournalMode::Delete;
            c.enable_wal = false;
            c.synchronous = SynchronousMode::Full;
        }
        c
    }
}

#[async_trait]
impl Fixture for SqliteFixture {
    fn can_corrupt(&self) -> bool {
        true
    }

    fn expected_capabilities(&self) -> Option<Capabilities> {
        Some(Capabilities::new().persistent().atomic_batches().vacuum())
    }

    /// Each sequence creates a database file: 300 keep the case near half a
    /// minute per fixture.
    fn model_sequences(&self) -> u32 {
        300
    }

    fn max_payload_bytes(&self) -> Option<usize> {
        Some(FIXTURE_PAYLOAD_LIMIT)
    }

    async fn open(&self) -> Result<Arc<dyn StorageBackend>, StorageError> {
        Ok(Arc::new(SQLiteBackend::new(self.config()).await?))
    }

    fn open_modes(&self) -> &'static [OpenMode] {
        &[OpenMode::OpenExisting, OpenMode::ReadOnly]
    }

    async fn open_in(
        &self,
        mode: OpenMode,
    ) -> Option<Result<Arc<dyn StorageBackend>, StorageError>> {
        let mut config = self.config();
        config.mode = mode;
        Some(
            SQLiteBackend::new(config)
                .await
                .map(|s| Arc::new(s) as Arc<dyn StorageBackend>),
        )
    }

    /// Flips one byte in the middle of the block's payload inside the database file.
    async fn corrupt(
        &self,
        store: Arc<dyn StorageBackend>,
        hash: &BlockHash,
    ) -> Result<Arc<dyn StorageBackend>, StorageError> {
        let db = self.dir.path().join("blocks.db");
        storage_conformance::fault::close_and_damage(store, hash, || vec![db]).await?;
        self.open().await
    }
}

conformance_main! {
    "sqlite_wal" => || SqliteFixture::new(true),
    "sqlite_rollback" => || SqliteFixture::new(false),
}
