//! SIGKILL crash cycles and corruption sweeps (see
//! `storage_conformance::reliability`) over two settings: WAL with
//! `synchronous = NORMAL` (the default), and a rollback journal with
//! `synchronous = FULL`. Crash cycles alternate between them, so every reopen
//! also switches the journal mode of a database a killed process left behind.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use storage_conformance::reliability::{DurableTarget, reliability_main};
use storage_core::{StorageBackend, StorageError, async_trait};
use storage_sqlite::{JournalMode, SQLiteBackend, SQLiteConfig, SynchronousMode};

struct Sqlite;

#[async_trait]
impl DurableTarget for Sqlite {
    async fn open(
        &self,
        dir: &Path,
        setting: u64,
    ) -> Result<Arc<dyn StorageBackend>, StorageError> {
        std::fs::create_dir_all(dir).map_err(|e| StorageError::io("creating the store dir", e))?;
        let mut config = SQLiteConfig::at(dir.join("blocks.db"));
        if setting % 2 == 1 {
            config.journal_mode = JournalMode::Delete;
            config.enable_wal = false;
            config.synchronous = SynchronousMode::Full;
        }
        Ok(Arc::new(SQLiteBackend::new(config).await?))
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
        let mut config = SQLiteConfig::at(dir.join("blocks.db"));
        config.mode = storage_core::OpenMode::ReadOnly;
        let opened = SQLiteBackend::new(config).await;
        Some(opened.map(|s| Arc::new(s) as Arc<dyn StorageBackend>))
    }
}

fn main() -> ExitCode {
    reliability_main(vec![("sqlite", Arc::new(Sqlite))])
}
