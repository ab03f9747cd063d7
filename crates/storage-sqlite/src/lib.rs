//! SQLite [`StorageBackend`](storage_core::StorageBackend) (rusqlite with bundled SQLite, r2d2 read pool).
//!
//! # Layout
//! Schema version 3 (`PRAGMA user_version`; versions 1 and 2 are upgraded in
//! place on the first open for writing, in one transaction):
//! - `blocks`: one row per block, `block_index INTEGER PRIMARY KEY` (the rowid, so
//!   rows sit in chain order and range scans are sequential), `hash` a 32-byte BLOB
//!   with a unique index, the metadata a listing returns (timestamp in
//!   nanoseconds, signer, payload type, size) with `meta_check`, a CRC-32 of
//!   those columns, and `data`, the block's binary encoding, which every read
//!   decodes. Indices on `timestamp_ns`, `public_key` and `payload_type` (each
//!   entry ends with the rowid, so each also orders by index): every
//!   `ListOptions` filter and order runs in SQL.
//! - `chain_metadata`: the chain head.
//! - `block_stats` (per UTC day of the block timestamp: count, bytes, distinct
//!   signers) and `block_stats_keys` (blocks per day and signer), maintained in the
//!   same transaction as each insert and delete; a batch adds its blocks to each
//!   of its days and signers once. `count_blocks` and the totals in `get_stats`
//!   sum the per-day rows instead of scanning `blocks`.
//!
//! # Concurrency
//! One dedicated writer connection behind a mutex serialises writes, each in a
//! `BEGIN IMMEDIATE` transaction (a batch is one transaction: all or nothing). Reads
//! use a pool of `max_connections` read-only connections; in WAL mode they never
//! wait for the writer. No SQLite call stalls the runtime: on a multi-thread runtime
//! calls run under `block_in_place` (the worker's other tasks move to another
//! thread first), on a current-thread runtime on tokio's blocking pool. Statements
//! are prepared once per connection and cached. The writer refreshes the
//! statistics SQLite's query planner chooses indexes by every 10,000 blocks
//! written and on close.
//!
//! # What survives a crash
//! | journal / synchronous | process crash (kill -9) | power loss / OS crash |
//! |---|---|---|
//! | WAL / NORMAL (default) | every acknowledged write | the database stays consistent; writes since the last checkpoint may be lost |
//! | WAL / NORMAL, `wal_sync_interval = Some(d)` | every acknowledged write | the database stays consistent; at most about `d` of writes may be lost |
//! | WAL / FULL or EXTRA | every acknowledged write | every acknowledged write |
//! | WAL / OFF | every acknowledged write | the database may be corrupted |
//! | DELETE, TRUNCATE, PERSIST / FULL or EXTRA | every acknowledged write | every acknowledged write |
//! | DELETE, TRUNCATE, PERSIST / NORMAL | every acknowledged write | a small window in which the database can be corrupted (SQLite docs) |
//! | any / OFF, or journal MEMORY | MEMORY: a crash mid-transaction can corrupt the database | the database may be corrupted |
//!
//! [`SQLiteConfig::apply_wal`] maps the shared `WALConfig` onto these settings.
//!
//! Damaged rows are detected: every block read is decoded from `data` and its
//! hash compared with the `hash` column; listed metadata is checked against
//! `meta_check` (SQLite has no page checksums, and listing must not read every
//! payload) and against the filter that selected it (a damaged index entry can
//! select the wrong row). A mismatch, a malformed column or SQLite's own `SQLITE_CORRUPT` is reported as
//! [`StorageError::Corrupted`]. Damage that hides a row from a lookup cannot be
//! told from absence: the block reads as missing.
//!
//! ```no_run
//! # async fn demo() -> storage_core::Result<()> {
//! use storage_sqlite::{SQLiteBackend, SQLiteConfig};
//! let store = SQLiteBackend::new(SQLiteConfig::at("./data/chain.db")).await?;
//! # Ok(()) }
//! ```

// Library code returns errors; tests may unwrap (see clippy.toml).
#![warn(clippy::unwrap_used)]

mod config;
mod engine;
mod queries;
mod rows;
mod schema;
mod writes;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::types::Value;
use rusqlite::{
    Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior, params,
};
use storage_core::raw::{Engine, Gate, in_span_async, op_span};
use storage_core::{
    BackendStats, Block, BlockHash, BlockMetadata, BlockParts, Capabilities, ErrorStatus,
    ListOptions, MAX_INDEX, MAX_TIMESTAMP_NANOS, OpenMode, PublicKey, Result, Signature, SortOrder,
    StorageError, StorageStats, WireFormat, system_time_from_unix_nanos,
};

pub use config::{JournalMode, SQLiteConfig, SynchronousMode, TempStore};

use queries::*;
use rows::*;
use schema::*;
use writes::*;

const NAME: &str = "sqlite";

/// Blocks stored on one UTC day (by block timestamp), from `block_stats`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DailyStats {
    /// `YYYY-MM-DD`, UTC.
    pub date: String,
    /// Blocks whose timestamp falls on that day.
    pub block_count: u64,
    /// Sum of their `size_bytes`.
    pub total_size: u64,
    /// Distinct signers among them.
    pub unique_keys: u64,
}

type Pool = r2d2::Pool<SqliteConnectionManager>;

/// The SQLite backend. Cheap to share behind an `Arc`; all methods take `&self`.
#[derive(Debug)]
pub struct SQLiteBackend {
    config: SQLiteConfig,
    path: PathBuf,
    writer: Arc<Mutex<Option<Connection>>>,
    readers: RwLock<Option<Pool>>,
    /// Something was written since opening: close has a checkpoint to do.
    wrote: Arc<std::sync::atomic::AtomicBool>,
    /// Blocks inserted through this handle, for refreshing the planner's
    /// statistics as the table grows.
    inserted: Arc<std::sync::atomic::AtomicU64>,
    /// Open until closed; the periodic log sync stops then, or when the
    /// backend is dropped.
    open: Arc<OpenState>,
    gate: Gate,
}

/// The write-ahead log beside the database file.
fn wal_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// Whether the backend is still open, and how many times the periodic log
/// sync ran.
#[derive(Debug)]
struct OpenState {
    open: std::sync::atomic::AtomicBool,
    wal_syncs: std::sync::atomic::AtomicU64,
}

impl Default for OpenState {
    fn default() -> Self {
        Self {
            open: true.into(),
            wal_syncs: 0.into(),
        }
    }
}

/// Syncs the write-ahead log file every `every` while the backend is open. SQLite
/// takes no locks on the log file itself (they live in the `-shm` file), so an
/// extra descriptor on it is safe; a log not there yet (nothing written, or
/// just checkpointed away) has nothing to sync. Failures are logged and retried
/// at the next tick.
fn spawn_wal_syncer(
    log: PathBuf,
    open: std::sync::Weak<OpenState>,
    every: std::time::Duration,
) -> Result<()> {
    storage_core::raw::spawn_periodic("sqlite-wal-sync", every, open, move |state: &OpenState| {
        if !state.open.load(std::sync::atomic::Ordering::Acquire) {
            return false;
        }
        state
            .wal_syncs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match std::fs::File::open(&log).and_then(|f| f.sync_data()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(backend = NAME, path = %log.display(), error = %e, "periodic WAL sync failed");
            }
        }
        true
    })
}

impl SQLiteBackend {
    /// Opens (creating if needed) the database, checks or creates the schema and
    /// starts the read pool.
    pub async fn new(config: SQLiteConfig) -> Result<Self> {
        Self::open_checked(config, true).await
    }

    /// Opens an existing database that normal opening refuses because its block
    /// counters disagree with its rows, so that what still reads can be copied
    /// out (see `storage_core::salvage::copy_intact`). Nothing is created; reads
    /// still check every row they return. Writing to a store opened this way
    /// keeps its counters wrong: salvage into a new store instead.
    pub async fn open_for_salvage(config: SQLiteConfig) -> Result<Self> {
        let path = PathBuf::from(config.database_path.trim());
        if !path.exists() {
            return Err(StorageError::Configuration(format!(
                "sqlite: {} does not exist; nothing to salvage",
                path.display()
            )));
        }
        Self::open_checked(config, false).await
    }

    async fn open_checked(config: SQLiteConfig, check: bool) -> Result<Self> {
        config.validate()?;
        let path = PathBuf::from(config.database_path.trim());
        let (cfg, p) = (config.clone(), path.clone());
        if config.mode == OpenMode::ReadOnly {
            let pool = blocking(config.execution, move || open_read_only(&p, &cfg, check)).await?;
            return Ok(Self {
                config,
                path,
                writer: Arc::new(Mutex::new(None)),
                readers: RwLock::new(Some(pool)),
                wrote: Arc::default(),
                inserted: Arc::default(),
                open: Arc::new(OpenState::default()),
                gate: Gate::new(),
            });
        }
        let (writer, pool) = blocking(config.execution, move || {
            cfg.mode
                .require_existing(NAME, p.exists(), || p.display().to_string())?;
            if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| StorageError::io(format!("creating {}", dir.display()), e))?;
            }
            if check {
                create_if_missing(&p, &cfg)?;
            }
            let writer = open_writer(&p, &cfg, check)?;
            let pool = open_readers(&p, &cfg)?;
            Ok((writer, pool))
        })
        .await?;
        let open = Arc::new(OpenState::default());
        if let Some(every) = config.wal_sync_interval {
            spawn_wal_syncer(wal_path(&path), Arc::downgrade(&open), every)?;
        }
        Ok(Self {
            config,
            path,
            writer: Arc::new(Mutex::new(Some(writer))),
            readers: RwLock::new(Some(pool)),
            wrote: Arc::default(),
            inserted: Arc::default(),
            open,
            gate: Gate::new(),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &SQLiteConfig {
        &self.config
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Statistics for one UTC day (`YYYY-MM-DD`) of block timestamps.
    pub async fn get_daily_stats(&self, date: &str) -> Result<Option<DailyStats>> {
        let valid = date.len() == 10
            && date.bytes().enumerate().all(|(i, b)| {
                if i == 4 || i == 7 {
                    b == b'-'
                } else {
                    b.is_ascii_digit()
                }
            });
        if !valid {
            return Err(StorageError::InvalidInput(format!(
                "date {date:?} is not YYYY-MM-DD"
            )));
        }
        let date = date.to_owned();
        in_span_async(
            op_span(NAME, "get_daily_stats"),
            self.read(move |c| {
                c.prepare_cached(
                    "SELECT block_count, total_size, unique_keys FROM block_stats WHERE date = ?1",
                )
                .and_then(|mut s| {
                    s.query_row([&date], |r| {
                        Ok(DailyStats {
                            date: date.clone(),
                            block_count: r.get::<_, i64>(0)? as u64,
                            total_size: r.get::<_, i64>(1)? as u64,
                            unique_keys: r.get::<_, i64>(2)? as u64,
                        })
                    })
                    .optional()
                })
                .map_err(|e| sql_err("reading daily stats", e))
            }),
        )
        .await
    }

    /// Runs `f` with the writer connection on the blocking pool.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let writer = self.writer.clone();
        let wrote = self.wrote.clone();
        blocking(self.config.execution, move || {
            let mut guard = writer.lock().unwrap_or_else(PoisonError::into_inner);
            let conn = guard.as_mut().ok_or_else(|| StorageError::closed(NAME))?;
            wrote.store(true, std::sync::atomic::Ordering::Relaxed);
            f(conn)
        })
        .await
    }

    /// Runs `f` with a pooled read connection on the blocking pool.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let pool = self
            .readers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| StorageError::closed(NAME))?;
        blocking(self.config.execution, move || {
            let conn = pool.get().map_err(|e| {
                StorageError::backend(NAME, "taking a read connection", ErrorStatus::Temporary, e)
            })?;
            f(&conn)
        })
        .await
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction on the writer; commits only if
    /// it succeeds.
    async fn transaction<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.write(move |conn| in_transaction(conn, f)).await
    }
}

/// Runs `f` in one `BEGIN IMMEDIATE` transaction on `conn`; commits only if it
/// succeeds.
fn in_transaction<T>(
    conn: &mut Connection,
    f: impl FnOnce(&Transaction<'_>) -> Result<T>,
) -> Result<T> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| sql_err("beginning a write transaction", e))?;
    let out = f(&tx)?;
    tx.commit().map_err(|e| sql_err("committing", e))?;
    Ok(out)
}

/// Refreshes the statistics SQLite's query planner chooses indexes by (it runs
/// `ANALYZE` only where they are missing or the table has grown a lot since,
/// reading a bounded sample). Without them SQLite takes any indexed equality
/// as selective: a type filter that matches most blocks would walk the type
/// index and look up every row instead of scanning the rows in order.
const OPTIMIZE: &str = "PRAGMA optimize = 0x10002;";

/// The writer refreshes the planner's statistics each time this many more blocks
/// have been written through it.
const BLOCKS_PER_OPTIMIZE: u64 = 10_000;

async fn blocking<T: Send + 'static>(
    execution: storage_core::Execution,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    storage_core::raw::run_blocking(NAME, execution, f).await
}

fn sql_err(context: &str, e: rusqlite::Error) -> StorageError {
    use rusqlite::ErrorCode as C;
    match e.sqlite_error_code() {
        Some(C::DatabaseCorrupt | C::NotADatabase) => {
            StorageError::corrupted_by(format!("sqlite: {context}"), e)
        }
        code => StorageError::backend(
            NAME,
            context,
            if matches!(code, Some(C::DatabaseBusy | C::DatabaseLocked)) {
                ErrorStatus::Temporary
            } else {
                ErrorStatus::Permanent
            },
            e,
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use storage_core::{StorageBackend, WALConfig};

    use super::*;

    fn pragma(store: &SQLiteBackend, name: &str) -> i64 {
        let writer = store.writer.lock().unwrap();
        let conn = writer.as_ref().expect("open");
        conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
            .unwrap()
    }

    async fn open(dir: &Path, wal: WALConfig) -> SQLiteBackend {
        let mut config = SQLiteConfig::at(dir.join("chain.db"));
        config.apply_wal(&wal);
        SQLiteBackend::new(config).await.unwrap()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn periodic_wal_settings_reach_sqlite_and_the_syncer_stops_at_close() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(
            dir.path(),
            WALConfig {
                enabled: true,
                sync_interval: Duration::from_millis(20),
                max_log_size: 1 << 20,
            },
        )
        .await;
        let page = pragma(&store, "page_size");
        assert_eq!(pragma(&store, "wal_autocheckpoint"), (1 << 20) / page);
        assert_eq!(pragma(&store, "journal_size_limit"), 1 << 20);
        assert_eq!(pragma(&store, "synchronous"), 1, "NORMAL");
        let syncs = || store.open.wal_syncs.load(Ordering::Relaxed);
        let started = std::time::Instant::now();
        while syncs() < 2 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no periodic sync"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        store.close().await.unwrap();
        // One sync may have been under way as close began.
        tokio::time::sleep(Duration::from_millis(60)).await;
        let after_close = syncs();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(syncs(), after_close, "the syncer outlived close");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn synced_and_unsynced_wal_settings() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), WALConfig::synced()).await;
        assert_eq!(pragma(&store, "synchronous"), 2, "FULL");
        assert_eq!(store.config().wal_sync_interval, None);
        store.close().await.unwrap();
        let store = open(
            dir.path(),
            WALConfig {
                enabled: false,
                ..WALConfig::default()
            },
        )
        .await;
        assert_eq!(pragma(&store, "synchronous"), 1, "NORMAL");
        assert_eq!(store.config().wal_sync_interval, None);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(store.open.wal_syncs.load(Ordering::Relaxed), 0);
        store.close().await.unwrap();
    }

    #[test]
    fn a_log_setting_without_a_log_is_refused() {
        let mut config = SQLiteConfig::at("/tmp/x.db");
        config.enable_wal = false;
        config.journal_mode = JournalMode::Delete;
        config.wal_sync_interval = Some(Duration::from_secs(1));
        let e = config.validate().unwrap_err().to_string();
        assert!(e.contains("wal_sync_interval needs enable_wal"), "{e}");
        config.wal_sync_interval = Some(Duration::ZERO);
        config.enable_wal = true;
        config.journal_mode = JournalMode::WAL;
        assert!(config.validate().is_err());
    }
}

// The README's examples are compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
