//! Configuration of the SQLite backend.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use storage_core::{Result, StorageError};

/// How the SQLite backend opens and tunes its database.
///
/// The defaults (WAL, `synchronous = NORMAL`) survive a process crash without losing
/// an acknowledged write; see the crate docs for what each mode survives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct SQLiteConfig {
    /// Database file; its directory is created if missing.
    pub database_path: String,
    /// Read connections in the pool (writes use one more, dedicated connection).
    pub max_connections: u32,
    /// Journal mode; must be `WAL` exactly when `enable_wal` is set.
    pub journal_mode: JournalMode,
    /// When SQLite waits for the disk (see the crate docs).
    pub synchronous: SynchronousMode,
    /// Page cache of the writer connection: positive = pages, negative = KiB
    /// (SQLite's rule).
    pub cache_size: i64,
    /// Page cache of each read connection, in the same units. Small by default:
    /// the operating system caches the file as well, and a long scan (a
    /// streamed export) fills every cache it passes through, so with the
    /// writer's size each reader would hold that much once a long chain had
    /// been read.
    pub read_cache_size: i64,
    /// Where temporary tables and indices live.
    pub temp_store: TempStore,
    /// Write-ahead logging (readers never block the writer).
    pub enable_wal: bool,
    /// With WAL: once the log holds this many bytes, the writer folds it into
    /// the database (`wal_autocheckpoint`, in pages of the database's page
    /// size), and a checkpoint truncates a larger log back to it
    /// (`journal_size_limit`). The default is SQLite's, 1,000 pages of 4 KiB.
    pub wal_autocheckpoint_bytes: u64,
    /// With WAL and `synchronous = NORMAL`: sync the log this often, so a power
    /// loss loses at most about this much time of acknowledged writes. `None`:
    /// the log is synced only at checkpoints.
    #[serde(with = "storage_core::human_duration::option")]
    pub wal_sync_interval: Option<Duration>,
    /// How long a connection waits on a lock before failing with a transient error.
    pub busy_timeout: Duration,
    /// Blocks with a longer payload are refused with `InvalidInput` (at most, and
    /// by default, [`storage_core::MAX_PAYLOAD_BYTES`]).
    pub max_payload_bytes: usize,
    /// Where blocking engine calls run: inline (the default, fastest) or on
    /// tokio's blocking pool, where a timeout around a call fires even if the
    /// disk stalls (see [`storage_core::Execution`]).
    #[serde(default)]
    pub execution: storage_core::Execution,
    /// Create the database if missing (the default), open only an existing
    /// one, or open one read-only (beside a writer in another process).
    #[serde(default)]
    pub mode: storage_core::OpenMode,
}

impl Default for SQLiteConfig {
    fn default() -> Self {
        Self {
            database_path: "./olocus.db".into(),
            max_connections: 4,
            journal_mode: JournalMode::WAL,
            synchronous: SynchronousMode::Normal,
            cache_size: -64 * 1024,
            read_cache_size: -8 * 1024,
            temp_store: TempStore::Memory,
            enable_wal: true,
            wal_autocheckpoint_bytes: 4_096_000,
            wal_sync_interval: None,
            busy_timeout: Duration::from_secs(5),
            max_payload_bytes: storage_core::MAX_PAYLOAD_BYTES,
            execution: storage_core::Execution::Inline,
            mode: storage_core::OpenMode::Create,
        }
    }
}

impl SQLiteConfig {
    /// The default configuration for a database at `path`.
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self {
            database_path: path.into().to_string_lossy().into_owned(),
            ..Self::default()
        }
    }

    /// Applies the shared durability settings: `enabled = false` is
    /// `synchronous = NORMAL` with no periodic sync (a process crash loses no
    /// acknowledged write; a power loss, those since the last checkpoint); a zero
    /// `sync_interval` is `synchronous = FULL` (a power loss loses none); any
    /// other is `NORMAL` with the log synced every `sync_interval`;
    /// `max_log_size` is `wal_autocheckpoint_bytes`. Write-ahead logging is
    /// switched on, since the settings describe its log.
    pub fn apply_wal(&mut self, wal: &storage_core::WALConfig) {
        self.enable_wal = true;
        self.journal_mode = JournalMode::WAL;
        let every_write = wal.enabled && wal.sync_interval.is_zero();
        self.synchronous = if every_write {
            SynchronousMode::Full
        } else {
            SynchronousMode::Normal
        };
        self.wal_sync_interval =
            (wal.enabled && !wal.sync_interval.is_zero()).then_some(wal.sync_interval);
        self.wal_autocheckpoint_bytes = wal.max_log_size;
    }

    /// Checks that the settings make sense together.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(StorageError::Configuration(m));
        let path = self.database_path.trim();
        if path.is_empty() {
            return bad("sqlite: database_path is empty".into());
        }
        if path == ":memory:" || path.starts_with("file::memory:") {
            return bad(
                "sqlite: an in-memory database cannot be shared by the writer and the read \
                 pool; use the memory backend, or a file path"
                    .into(),
            );
        }
        if self.max_connections == 0 {
            return bad("sqlite: max_connections must be at least 1".into());
        }
        if self.enable_wal != (self.journal_mode == JournalMode::WAL) {
            return bad(format!(
                "sqlite: enable_wal = {} conflicts with journal_mode = {}; set both to WAL/true \
                 or neither",
                self.enable_wal, self.journal_mode
            ));
        }
        if let Some(every) = self.wal_sync_interval {
            if !self.enable_wal {
                return bad(
                    "sqlite: wal_sync_interval needs enable_wal (there is no log to sync)".into(),
                );
            }
            if every.is_zero() {
                return bad(
                    "sqlite: wal_sync_interval must be positive (use synchronous = FULL to sync \
                     every commit)"
                        .into(),
                );
            }
        }
        if self.enable_wal && self.wal_autocheckpoint_bytes == 0 {
            return bad("sqlite: wal_autocheckpoint_bytes must be positive".into());
        }
        if self.busy_timeout.is_zero() {
            return bad("sqlite: busy_timeout must be positive".into());
        }
        Ok(())
    }
}

/// SQLite `journal_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JournalMode {
    /// Rollback journal, deleted after each transaction.
    Delete,
    /// Rollback journal, truncated after each transaction.
    Truncate,
    /// Rollback journal, header zeroed after each transaction.
    Persist,
    /// Rollback journal in memory: a crash mid-transaction can corrupt the database.
    Memory,
    /// Write-ahead log.
    WAL,
}

/// SQLite `synchronous`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SynchronousMode {
    /// Never waits for the disk.
    Off,
    /// Waits at critical moments (with WAL: at checkpoints only).
    Normal,
    /// Waits at every commit.
    Full,
    /// Like `Full`, and also syncs the directory after deleting a rollback journal.
    Extra,
}

/// SQLite `temp_store`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TempStore {
    /// The compile-time default.
    Default,
    /// Temporary files.
    File,
    /// Memory.
    Memory,
}

impl fmt::Display for JournalMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Delete => "DELETE",
            Self::Truncate => "TRUNCATE",
            Self::Persist => "PERSIST",
            Self::Memory => "MEMORY",
            Self::WAL => "WAL",
        })
    }
}

impl fmt::Display for SynchronousMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Off => "OFF",
            Self::Normal => "NORMAL",
            Self::Full => "FULL",
            Self::Extra => "EXTRA",
        })
    }
}

impl fmt::Display for TempStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Default => "DEFAULT",
            Self::File => "FILE",
            Self::Memory => "MEMORY",
        })
    }
}

storage_core::setters!(into SQLiteConfig { database_path: String });
storage_core::setters!(SQLiteConfig {
    max_connections: u32,
    journal_mode: JournalMode,
    synchronous: SynchronousMode,
    cache_size: i64,
    read_cache_size: i64,
    temp_store: TempStore,
    enable_wal: bool,
    wal_autocheckpoint_bytes: u64,
    wal_sync_interval: Option<Duration>,
    busy_timeout: Duration,
    max_payload_bytes: usize,
    execution: storage_core::Execution,
    mode: storage_core::OpenMode,
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert!(SQLiteConfig::default().validate().is_ok());
        let bad = [
            SQLiteConfig {
                database_path: " ".into(),
                ..Default::default()
            },
            SQLiteConfig {
                database_path: ":memory:".into(),
                ..Default::default()
            },
            SQLiteConfig {
                max_connections: 0,
                ..Default::default()
            },
            SQLiteConfig {
                journal_mode: JournalMode::Delete,
                ..Default::default()
            },
            SQLiteConfig {
                enable_wal: false,
                ..Default::default()
            },
            SQLiteConfig {
                busy_timeout: Duration::ZERO,
                ..Default::default()
            },
        ];
        for c in bad {
            let e = c.validate().unwrap_err();
            assert_eq!(e.kind(), storage_core::ErrorKind::Configuration, "{c:?}");
        }
        let rollback = SQLiteConfig {
            journal_mode: JournalMode::Delete,
            enable_wal: false,
            ..Default::default()
        };
        assert!(rollback.validate().is_ok());
    }
}
