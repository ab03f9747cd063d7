//! SIGKILL crash cycles and corruption sweeps (see
//! `storage_conformance::reliability`): in WAL mode with
//! `synchronous = NORMAL` (the default) and with a rollback journal and
//! `synchronous = FULL`.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use storage_conformance::reliability::{DurableTarget, reliability_main};
use storage_core::{StorageBackend, StorageError, async_trait};
use storage_sqlite::{JournalMode, SQLiteBackend, SQLiteConfig, SynchronousMode};

struct Sqlite {
    wal: bool,
}

#[async_trait]
impl DurableTarget for Sqlite {
    async fn open(
        &self,
        dir: &Path,
        _setting: u64,
    ) -> Result<Arc<dyn StorageBackend>, StorageError> {
        std::fs::create_dir_all(dir).map_err(|e| StorageError::io("creating the store dir", e))?;
        let mut config = SQLiteConfig::at(dir.join("blocks.db"));
        if !self.wal {
            config.journal_mode = JournalMode::Delete;
            config.enable_wal = false;
            config.synchronous = SynchronousMode::Full;
        }
        Ok(Arc::new(SQLiteBackend::new(config).await?))
    }
}

fn main() -> ExitCode {
    reliability_main(vec![
        ("sqlite_wal", Arc::new(Sqlite { wal: true })),
        ("sqlite_journal", Arc::new(Sqlite { wal: false })),
    ])
}
