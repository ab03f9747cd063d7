//! SQLite [`StorageBackend`] (rusqlite with bundled SQLite, r2d2 read pool).
//!
//! # Layout
//! Schema version 2 (`PRAGMA user_version`; version 1 is upgraded on open):
//! - `blocks`: one row per block, `block_index INTEGER PRIMARY KEY` (the rowid, so
//!   rows sit in chain order and range scans are sequential), `hash` a 32-byte BLOB
//!   with a unique index, timestamps in nanoseconds, the signed payload verbatim,
//!   and `meta_check`, a CRC-32 of the metadata columns (added in version 2).
//!   Indices on `(timestamp_ns, block_index)`, `(public_key, block_index)`,
//!   `(payload_type, block_index)` and the seed's composite
//!   `(timestamp_ns, payload_type, public_key)`: every `ListOptions` filter and order
//!   runs in SQL.
//! - `chain_metadata`: the chain head.
//! - `block_stats` (per UTC day of the block timestamp: count, bytes, distinct
//!   signers) and `block_stats_keys` (blocks per day and signer), maintained in the
//!   same transaction as each insert and delete. `count_blocks` and the totals in
//!   `get_stats` sum the per-day rows instead of scanning `blocks`.
//!
//! # Concurrency
//! One dedicated writer connection behind a mutex serialises writes, each in a
//! `BEGIN IMMEDIATE` transaction (a batch is one transaction: all or nothing). Reads
//! use a pool of `max_connections` read-only connections; in WAL mode they never
//! wait for the writer. No SQLite call stalls the runtime: on a multi-thread runtime
//! calls run under `block_in_place` (the worker's other tasks move to another
//! thread first), on a current-thread runtime on tokio's blocking pool. Statements
//! are prepared once per connection and cached.
//!
//! # What survives a crash
//! | journal / synchronous | process crash (kill -9) | power loss / OS crash |
//! |---|---|---|
//! | WAL / NORMAL (default) | every acknowledged write | the database stays consistent; writes since the last checkpoint may be lost |
//! | WAL / FULL or EXTRA | every acknowledged write | every acknowledged write |
//! | WAL / OFF | every acknowledged write | the database may be corrupted |
//! | DELETE, TRUNCATE, PERSIST / FULL or EXTRA | every acknowledged write | every acknowledged write |
//! | DELETE, TRUNCATE, PERSIST / NORMAL | every acknowledged write | a small window in which the database can be corrupted (SQLite docs) |
//! | any / OFF, or journal MEMORY | MEMORY: a crash mid-transaction can corrupt the database | the database may be corrupted |
//!
//! Damaged rows are detected: every block read is rebuilt from its columns and its
//! hash recomputed; listed metadata is checked against `meta_check` (SQLite has no
//! page checksums, and listing must not read every payload) and against the
//! filter that selected it (a damaged index entry can select the wrong row). A
//! mismatch, a malformed column or SQLite's own `SQLITE_CORRUPT` is reported as
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

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::types::Value;
use rusqlite::{
    Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior, params,
};
use storage_core::raw::{Engine, Gate, in_span_async, op_span};
use storage_core::{
    BackendStats, Block, BlockHash, BlockMetadata, BlockParts, ErrorStatus, ListOptions, MAX_INDEX,
    MAX_TIMESTAMP_NANOS, PublicKey, Result, Signature, SortOrder, StorageError, StorageStats,
    system_time_from_unix_nanos,
};

pub use config::{JournalMode, SQLiteConfig, SynchronousMode, TempStore};

const NAME: &str = "sqlite";
const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS blocks (
    block_index   INTEGER PRIMARY KEY,
    hash          BLOB    NOT NULL UNIQUE,
    timestamp_ns  INTEGER NOT NULL,
    public_key    BLOB    NOT NULL,
    previous_hash BLOB,
    payload_type  TEXT    NOT NULL,
    payload       BLOB    NOT NULL,
    signature     BLOB    NOT NULL,
    size_bytes    INTEGER NOT NULL,
    created_at    INTEGER NOT NULL DEFAULT (unixepoch()),
    meta_check    INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_blocks_timestamp    ON blocks (timestamp_ns, block_index);
CREATE INDEX IF NOT EXISTS idx_blocks_public_key   ON blocks (public_key, block_index);
CREATE INDEX IF NOT EXISTS idx_blocks_payload_type ON blocks (payload_type, block_index);
CREATE INDEX IF NOT EXISTS idx_blocks_composite    ON blocks (timestamp_ns, payload_type, public_key);
CREATE TABLE IF NOT EXISTS chain_metadata (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS block_stats (
    date        TEXT PRIMARY KEY,
    block_count INTEGER NOT NULL DEFAULT 0,
    total_size  INTEGER NOT NULL DEFAULT 0,
    unique_keys INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS block_stats_keys (
    date       TEXT NOT NULL,
    public_key BLOB NOT NULL,
    blocks     INTEGER NOT NULL,
    PRIMARY KEY (date, public_key)
) WITHOUT ROWID;
";

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
    gate: Gate,
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
        let (writer, pool) = blocking(config.execution, move || {
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
        Ok(Self {
            config,
            path,
            writer: Arc::new(Mutex::new(Some(writer))),
            readers: RwLock::new(Some(pool)),
            wrote: Arc::default(),
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
        self.write(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| sql_err("beginning a write transaction", e))?;
            let out = f(&tx)?;
            tx.commit().map_err(|e| sql_err("committing", e))?;
            Ok(out)
        })
        .await
    }
}

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

fn pragmas(c: &SQLiteConfig, reader: bool) -> String {
    let mut s = format!(
        "PRAGMA busy_timeout = {}; PRAGMA synchronous = {}; PRAGMA cache_size = {}; \
         PRAGMA temp_store = {};",
        c.busy_timeout.as_millis(),
        c.synchronous,
        c.cache_size,
        c.temp_store
    );
    if reader {
        s.push_str(" PRAGMA query_only = ON;");
    } else if c.enable_wal {
        s.push_str(" PRAGMA wal_autocheckpoint = 1000;");
    }
    s
}

/// Creates a new database atomically: initialised under a temporary name, then
/// renamed into place. So a database file that exists is never legitimately
/// empty, and one cut below SQLite's 100-byte header is damage, not a new store.
fn create_if_missing(path: &Path, cfg: &SQLiteConfig) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if m.len() < 100 => {
            return Err(StorageError::corrupted(format!(
                "sqlite: {} is {} bytes, shorter than an SQLite header: the file was cut \
                 short (a new store is never left like this); restore it, or remove it to \
                 start an empty store",
                path.display(),
                m.len()
            )));
        }
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(StorageError::io(
                format!("inspecting {}", path.display()),
                e,
            ));
        }
    }
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".creating");
    let tmp = path.with_file_name(name);
    for leftover in ["", "-wal", "-shm", "-journal"] {
        let mut p = tmp.clone().into_os_string();
        p.push(leftover);
        let _ = std::fs::remove_file(p);
    }
    let conn = open_writer(&tmp, cfg, true)?;
    if cfg.enable_wal {
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(|e| sql_err("checkpointing the new database", e))?;
    }
    conn.close()
        .map_err(|(_, e)| sql_err("closing the new database", e))?;
    let io = |what: &str, e| StorageError::io(format!("{what} {}", path.display()), e);
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| io("syncing the new database", e))?;
    std::fs::rename(&tmp, path).map_err(|e| io("creating", e))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|f| f.sync_all())
            .map_err(|e| io("syncing the directory of", e))?;
    }
    Ok(())
}

/// Opens the writer connection, creating or upgrading the schema; `check`
/// compares the block counters with the rows.
fn open_writer(path: &Path, cfg: &SQLiteConfig, check: bool) -> Result<Connection> {
    let ctx = |what: &str| format!("{what} {}", path.display());
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| sql_err(&ctx("opening"), e))?;
    conn.set_prepared_statement_cache_capacity(32);
    let mode: String = conn
        .query_row(
            &format!("PRAGMA journal_mode = {}", cfg.journal_mode),
            [],
            |r| r.get(0),
        )
        .map_err(|e| sql_err(&ctx("setting journal_mode on"), e))?;
    if !mode.eq_ignore_ascii_case(&cfg.journal_mode.to_string()) {
        return Err(StorageError::Configuration(format!(
            "sqlite: {} refused journal_mode {} (stays {mode})",
            path.display(),
            cfg.journal_mode
        )));
    }
    conn.execute_batch(&pragmas(cfg, false))
        .map_err(|e| sql_err(&ctx("configuring"), e))?;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| sql_err(&ctx("locking"), e))?;
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| sql_err(&ctx("reading the schema version of"), e))?;
    match version {
        0 => {
            tx.execute_batch(SCHEMA)
                .and_then(|_| tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}")))
                .map_err(|e| sql_err(&ctx("creating the schema in"), e))?;
        }
        1 => {
            add_meta_check(&tx).map_err(|e| sql_err(&ctx("upgrading the schema of"), e))?;
        }
        SCHEMA_VERSION => {}
        v => {
            return Err(StorageError::Configuration(format!(
                "sqlite: {} has schema version {v}; this build reads version {SCHEMA_VERSION}",
                path.display()
            )));
        }
    }
    if check {
        check_counters(&tx, false)?;
    }
    tx.commit().map_err(|e| sql_err(&ctx("initialising"), e))?;
    Ok(conn)
}

/// Compares the per-day counters (what `count_blocks` reports) with the rows:
/// SQLite keeps no page checksums, so a damaged page can drop rows that nothing
/// else would notice. `table_scan` counts by reading the table itself (for
/// `check_integrity`); otherwise SQLite counts the smallest index (on open).
fn check_counters(c: &Connection, table_scan: bool) -> Result<()> {
    let rows_sql = if table_scan {
        "SELECT count(*) FROM blocks NOT INDEXED"
    } else {
        "SELECT count(*) FROM blocks"
    };
    let rows: i64 = c
        .query_row(rows_sql, [], |r| r.get(0))
        .map_err(|e| sql_err("counting rows", e))?;
    let recorded: i64 = c
        .query_row(
            "SELECT COALESCE(SUM(block_count), 0) FROM block_stats",
            [],
            |r| r.get(0),
        )
        .map_err(|e| sql_err("reading the block counters", e))?;
    if rows != recorded {
        return Err(StorageError::corrupted(format!(
            "sqlite: the block counters record {recorded} blocks but the blocks table \
             holds {rows} rows{}; salvage what is intact with `repair`",
            if table_scan { " (read in full)" } else { "" }
        )));
    }
    Ok(())
}

/// Schema 1 → 2: adds and fills `meta_check`.
fn add_meta_check(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch("ALTER TABLE blocks ADD COLUMN meta_check INTEGER NOT NULL DEFAULT 0")?;
    let rows: Vec<(i64, u32)> = {
        let mut stmt = tx.prepare(&format!("SELECT {META_COLUMNS} FROM blocks"))?;
        let rows = stmt.query_map([], |r| {
            let hash: Vec<u8> = r.get(0)?;
            let key: Vec<u8> = r.get(4)?;
            let ty: String = r.get(3)?;
            let (index, ts, size) = (r.get(1)?, r.get(2)?, r.get(5)?);
            Ok((index, meta_check(&hash, index, ts, &ty, &key, size)))
        })?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let mut update = tx.prepare("UPDATE blocks SET meta_check = ?1 WHERE block_index = ?2")?;
    for (index, check) in rows {
        update.execute(params![check, index])?;
    }
    tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
}

/// CRC-32 of a block's metadata columns, as stored in `meta_check`.
fn meta_check(hash: &[u8], index: i64, ts: i64, ty: &str, key: &[u8], size: i64) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(hash);
    h.update(&index.to_be_bytes());
    h.update(&ts.to_be_bytes());
    h.update(key);
    h.update(&size.to_be_bytes());
    h.update(ty.as_bytes());
    h.finalize()
}

fn open_readers(path: &Path, cfg: &SQLiteConfig) -> Result<Pool> {
    let init = pragmas(cfg, true);
    let manager = SqliteConnectionManager::file(path)
        .with_flags(OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .with_init(move |c| {
            c.set_prepared_statement_cache_capacity(32);
            c.execute_batch(&init)
        });
    r2d2::Pool::builder()
        .max_size(cfg.max_connections)
        // A local file connection does not go stale; validating it on every
        // checkout cost about 1 µs per read.
        .test_on_check_out(false)
        // Nor does it need recycling. Without these r2d2 schedules a reaper job
        // that keeps the pool's three threads alive for up to 30 s after the pool
        // is dropped: a program reopening stores in a loop ran out of threads.
        .max_lifetime(None)
        .idle_timeout(None)
        .connection_timeout(cfg.busy_timeout * 2)
        .build(manager)
        .map_err(|e| {
            StorageError::backend(
                NAME,
                format!("opening read connections to {}", path.display()),
                ErrorStatus::Permanent,
                e,
            )
        })
}

/// Indices are at most `MAX_INDEX` (< 2^63), so they fit SQLite's INTEGER exactly.
fn sql_index(i: u64) -> i64 {
    i.min(MAX_INDEX) as i64
}

const BLOCK_COLUMNS: &str =
    "hash, block_index, timestamp_ns, public_key, previous_hash, payload_type, payload, signature";
const META_COLUMNS: &str =
    "hash, block_index, timestamp_ns, payload_type, public_key, size_bytes, meta_check";

fn fixed<const N: usize>(bytes: Vec<u8>, what: &str) -> Result<[u8; N]> {
    let len = bytes.len();
    bytes.try_into().map_err(|_| {
        StorageError::corrupted(format!("sqlite: {what} column has {len} bytes, not {N}"))
    })
}

/// Rebuilds a block from a `BLOCK_COLUMNS` row and checks it against its stored hash.
fn block_from_row(r: &rusqlite::Row<'_>) -> Result<Block> {
    let get_err = |e| sql_err("reading a block row", e);
    let hash = BlockHash(fixed(r.get(0).map_err(get_err)?, "hash")?);
    let parts = BlockParts {
        index: r.get::<_, i64>(1).map_err(get_err)? as u64,
        timestamp_nanos: r.get::<_, i64>(2).map_err(get_err)? as u64,
        public_key: PublicKey(fixed(r.get(3).map_err(get_err)?, "public_key")?),
        previous_hash: r
            .get::<_, Option<Vec<u8>>>(4)
            .map_err(get_err)?
            .map(|h| fixed(h, "previous_hash").map(BlockHash))
            .transpose()?,
        payload_type: r.get(5).map_err(|e| {
            StorageError::corrupted_by(format!("sqlite: payload_type of block {hash}"), e)
        })?,
        payload: r.get(6).map_err(get_err)?,
        signature: Signature(fixed(r.get(7).map_err(get_err)?, "signature")?),
    };
    let block = Block::from_trusted_parts(parts).map_err(|e| {
        StorageError::corrupted_by(format!("sqlite: block {hash} has invalid fields"), e)
    })?;
    if block.hash() != hash {
        return Err(StorageError::corrupted(format!(
            "sqlite: row of block {hash} now hashes to {}",
            block.hash()
        )));
    }
    Ok(block)
}

/// Reads a `META_COLUMNS` row and checks it against its `meta_check`.
fn meta_from_row(r: &rusqlite::Row<'_>) -> Result<BlockMetadata> {
    let get_err = |e| sql_err("reading block metadata", e);
    let hash: Vec<u8> = r.get(0).map_err(get_err)?;
    let index: i64 = r.get(1).map_err(get_err)?;
    let ts: i64 = r.get(2).map_err(get_err)?;
    let payload_type: String = r
        .get(3)
        .map_err(|e| StorageError::corrupted_by("sqlite: payload_type", e))?;
    let key: Vec<u8> = r.get(4).map_err(get_err)?;
    let size: i64 = r.get(5).map_err(get_err)?;
    let check: u32 = r.get(6).map_err(get_err)?;
    if meta_check(&hash, index, ts, &payload_type, &key, size) != check {
        return Err(StorageError::corrupted(format!(
            "sqlite: metadata row of block {index} fails its check (damaged row)"
        )));
    }
    Ok(BlockMetadata {
        hash: BlockHash(fixed(hash, "hash")?),
        index: index as u64,
        timestamp: system_time_from_unix_nanos(ts as u64),
        payload_type,
        public_key: PublicKey(fixed(key, "public_key")?),
        size_bytes: size as u64,
    })
}

fn retrieve_one(c: &Connection, hash: &BlockHash) -> Result<Option<Block>> {
    let mut stmt = c
        .prepare_cached(&format!(
            "SELECT {BLOCK_COLUMNS} FROM blocks WHERE hash = ?1"
        ))
        .map_err(|e| sql_err("preparing retrieve", e))?;
    let mut rows = stmt
        .query([hash.as_bytes().as_slice()])
        .map_err(|e| sql_err("retrieving a block", e))?;
    match rows.next().map_err(|e| sql_err("retrieving a block", e))? {
        Some(row) => block_from_row(row).map(Some),
        None => Ok(None),
    }
}

/// Inserts the blocks not yet stored, in order, with their daily statistics,
/// after the admission rule has passed the whole batch.
fn insert_blocks(tx: &Transaction<'_>, blocks: &[Block]) -> Result<()> {
    let err = |e| sql_err("storing a block", e);
    let mut at_index = tx
        .prepare_cached("SELECT hash FROM blocks WHERE block_index = ?1")
        .map_err(err)?;
    let mut previous_at = tx
        .prepare_cached("SELECT previous_hash FROM blocks WHERE block_index = ?1")
        .map_err(err)?;
    let mut insert = tx
        .prepare_cached(
            "INSERT INTO blocks (block_index, hash, timestamp_ns, public_key, previous_hash, \
             payload_type, payload, signature, size_bytes, meta_check) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )
        .map_err(err)?;
    let mut day = tx
        .prepare_cached(
            "INSERT INTO block_stats (date, block_count, total_size) \
             VALUES (date(?1, 'unixepoch'), 1, ?2) \
             ON CONFLICT (date) DO UPDATE SET block_count = block_count + 1, \
             total_size = total_size + excluded.total_size",
        )
        .map_err(err)?;
    let mut key = tx
        .prepare_cached(
            "INSERT INTO block_stats_keys (date, public_key, blocks) \
             VALUES (date(?1, 'unixepoch'), ?2, 1) \
             ON CONFLICT (date, public_key) DO UPDATE SET blocks = blocks + 1 RETURNING blocks",
        )
        .map_err(err)?;
    let mut new_key = tx
        .prepare_cached(
            "UPDATE block_stats SET unique_keys = unique_keys + 1 WHERE date = date(?1, 'unixepoch')",
        )
        .map_err(err)?;
    let fresh = storage_core::raw::admit(
        blocks,
        &mut storage_core::raw::ChainViewFn(
            |i| {
                at_index
                    .query_row([sql_index(i)], |r| r.get::<_, Vec<u8>>(0))
                    .optional()
                    .map_err(err)?
                    .map(|h| fixed(h, "hash").map(BlockHash))
                    .transpose()
            },
            |i| {
                previous_at
                    .query_row([sql_index(i)], |r| r.get::<_, Option<Vec<u8>>>(0))
                    .optional()
                    .map_err(err)?
                    .map(|p| {
                        p.map(|h| fixed(h, "previous_hash").map(BlockHash))
                            .transpose()
                    })
                    .transpose()
            },
        ),
    )?;
    for b in fresh.into_iter().map(|p| &blocks[p]) {
        let index = b.index() as i64;
        let secs = (b.timestamp_nanos() / 1_000_000_000) as i64;
        insert
            .execute(params![
                index,
                b.hash().as_bytes().as_slice(),
                b.timestamp_nanos() as i64,
                b.public_key().as_bytes().as_slice(),
                b.previous_hash().map(|h| h.as_bytes().to_vec()),
                b.payload_type(),
                b.payload(),
                b.signature().as_bytes().as_slice(),
                b.size_bytes() as i64,
                meta_check(
                    b.hash().as_bytes(),
                    index,
                    b.timestamp_nanos() as i64,
                    b.payload_type(),
                    b.public_key().as_bytes(),
                    b.size_bytes() as i64
                ),
            ])
            .map_err(err)?;
        day.execute(params![secs, b.size_bytes() as i64])
            .map_err(err)?;
        let blocks_for_key: i64 = key
            .query_row(params![secs, b.public_key().as_bytes().as_slice()], |r| {
                r.get(0)
            })
            .map_err(err)?;
        if blocks_for_key == 1 {
            new_key.execute([secs]).map_err(err)?;
        }
    }
    Ok(())
}

/// Deletes one block and its statistics; clears the head if it was the head.
fn delete_one(tx: &Transaction<'_>, hash: &BlockHash) -> Result<bool> {
    let err = |e| sql_err("deleting a block", e);
    let h = hash.as_bytes().as_slice();
    let row: Option<(i64, i64, Vec<u8>, i64)> = tx
        .prepare_cached(
            "DELETE FROM blocks WHERE hash = ?1 RETURNING timestamp_ns, block_index, public_key, size_bytes",
        )
        .and_then(|mut s| s.query_row([h], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))).optional())
        .map_err(err)?;
    let Some((ts, _index, key, size)) = row else {
        return Ok(false);
    };
    let secs = ts.div_euclid(1_000_000_000);
    tx.prepare_cached(
        "UPDATE block_stats SET block_count = block_count - 1, total_size = total_size - ?2 \
         WHERE date = date(?1, 'unixepoch')",
    )
    .and_then(|mut s| s.execute(params![secs, size]))
    .map_err(err)?;
    let left: i64 = tx
        .prepare_cached(
            "UPDATE block_stats_keys SET blocks = blocks - 1 \
             WHERE date = date(?1, 'unixepoch') AND public_key = ?2 RETURNING blocks",
        )
        .and_then(|mut s| s.query_row(params![secs, key], |r| r.get(0)))
        .map_err(err)?;
    if left == 0 {
        tx.prepare_cached(
            "DELETE FROM block_stats_keys WHERE date = date(?1, 'unixepoch') AND public_key = ?2",
        )
        .and_then(|mut s| s.execute(params![secs, key]))
        .map_err(err)?;
        tx.prepare_cached(
            "UPDATE block_stats SET unique_keys = unique_keys - 1 WHERE date = date(?1, 'unixepoch')",
        )
        .and_then(|mut s| s.execute([secs]))
        .map_err(err)?;
    }
    tx.prepare_cached("DELETE FROM chain_metadata WHERE key = 'head' AND value = ?1")
        .and_then(|mut s| s.execute([h]))
        .map_err(err)?;
    Ok(true)
}

/// Builds the SQL for `list_blocks`; `None` when nothing can match.
fn list_query(o: &ListOptions) -> Option<(String, Vec<Value>)> {
    let (tlo, thi) = o.time_range_nanos()?;
    let (ilo, ihi) = o.index_range()?;
    if ilo > MAX_INDEX {
        return None;
    }
    let mut sql = format!("SELECT {META_COLUMNS} FROM blocks WHERE block_index BETWEEN ?1 AND ?2");
    let mut args = vec![
        Value::Integer(sql_index(ilo)),
        Value::Integer(sql_index(ihi)),
    ];
    let mut bind = |sql: &mut String, clause: &str, v: Value| {
        args.push(v);
        sql.push_str(&clause.replace('?', &format!("?{}", args.len())));
    };
    if o.start_time.is_some() {
        bind(
            &mut sql,
            " AND timestamp_ns >= ?",
            Value::Integer(tlo.min(MAX_TIMESTAMP_NANOS) as i64),
        );
    }
    if o.end_time.is_some() && thi <= MAX_TIMESTAMP_NANOS {
        bind(
            &mut sql,
            " AND timestamp_ns <= ?",
            Value::Integer(thi as i64),
        );
    }
    if let Some(f) = &o.filter {
        if let Some(t) = &f.payload_type {
            bind(&mut sql, " AND payload_type = ?", Value::Text(t.clone()));
        }
        if let Some(k) = &f.public_key {
            bind(
                &mut sql,
                " AND public_key = ?",
                Value::Blob(k.as_bytes().to_vec()),
            );
        }
    }
    sql.push_str(match o.order {
        SortOrder::Ascending | SortOrder::ByIndex => " ORDER BY block_index ASC",
        SortOrder::Descending => " ORDER BY block_index DESC",
        SortOrder::ByTimestamp => " ORDER BY timestamp_ns ASC, block_index ASC",
    });
    // SQLite needs LIMIT before OFFSET; -1 means no limit.
    let limit = o.limit.map_or(-1, |l| l.min(i64::MAX as u64) as i64);
    let offset = o.offset.unwrap_or(0);
    if offset > i64::MAX as u64 {
        return None;
    }
    bind(&mut sql, " LIMIT ?", Value::Integer(limit));
    bind(&mut sql, " OFFSET ?", Value::Integer(offset as i64));
    Some((sql, args))
}

impl Engine for SQLiteBackend {
    fn name(&self) -> &str {
        NAME
    }

    fn gate(&self) -> &Gate {
        &self.gate
    }

    fn max_payload_bytes(&self) -> usize {
        self.config.max_payload_bytes
    }

    async fn write_blocks(&self, blocks: &[Block]) -> Result<()> {
        let owned = blocks.to_vec();
        self.transaction(move |tx| insert_blocks(tx, &owned)).await
    }

    async fn read_block(&self, hash: &BlockHash) -> Result<Option<Block>> {
        let h = *hash;
        self.read(move |c| retrieve_one(c, &h)).await
    }

    async fn remove_block(&self, hash: &BlockHash) -> Result<bool> {
        let h = *hash;
        self.transaction(move |tx| delete_one(tx, &h)).await
    }

    async fn has_block(&self, hash: &BlockHash) -> Result<bool> {
        let h = *hash;
        self.read(move |c| {
            c.prepare_cached("SELECT EXISTS (SELECT 1 FROM blocks WHERE hash = ?1)")
                .and_then(|mut s| s.query_row([h.as_bytes().as_slice()], |r| r.get(0)))
                .map_err(|e| sql_err("checking a block", e))
        })
        .await
    }

    async fn read_blocks(&self, hashes: &[BlockHash]) -> Result<Vec<Option<Block>>> {
        let hs = hashes.to_vec();
        self.read(move |c| hs.iter().map(|h| retrieve_one(c, h)).collect())
            .await
    }

    async fn list(&self, options: &ListOptions) -> Result<Vec<BlockMetadata>> {
        let query = list_query(options);
        let filter = options.clone();
        self.read(move |c| {
            let Some((sql, args)) = query else {
                return Ok(Vec::new());
            };
            let err = |e| sql_err("listing blocks", e);
            let mut stmt = c.prepare_cached(&sql).map_err(err)?;
            let mut rows = stmt.query(rusqlite::params_from_iter(args)).map_err(err)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(err)? {
                let meta = meta_from_row(row)?;
                // A damaged index entry can point at a row that does not match,
                // or put it out of order.
                let out_of_order = out
                    .last()
                    .is_some_and(|prev| filter.compare(prev, &meta) == std::cmp::Ordering::Greater);
                if !filter.matches(&meta) || out_of_order {
                    return Err(StorageError::corrupted(format!(
                        "sqlite: an index selected block {} out of order or against the filter",
                        meta.index
                    )));
                }
                out.push(meta);
            }
            Ok(out)
        })
        .await
    }

    async fn count(&self) -> Result<u64> {
        self.read(|c| {
            c.prepare_cached("SELECT COALESCE(SUM(block_count), 0) FROM block_stats")
                .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)))
                .map(|n| n as u64)
                .map_err(|e| sql_err("counting blocks", e))
        })
        .await
    }

    async fn head(&self) -> Result<Option<BlockHash>> {
        self.read(|c| {
            let head: Option<Vec<u8>> = c
                .prepare_cached("SELECT value FROM chain_metadata WHERE key = 'head'")
                .and_then(|mut s| s.query_row([], |r| r.get(0)).optional())
                .map_err(|e| sql_err("reading the head", e))?;
            head.map(|h| fixed(h, "head").map(BlockHash)).transpose()
        })
        .await
    }

    async fn write_head(&self, hash: &BlockHash) -> Result<()> {
        let h = *hash;
        self.transaction(move |tx| {
            let err = |e| sql_err("setting the head", e);
            let stored: bool = tx
                .prepare_cached("SELECT EXISTS (SELECT 1 FROM blocks WHERE hash = ?1)")
                .and_then(|mut s| s.query_row([h.as_bytes().as_slice()], |r| r.get(0)))
                .map_err(err)?;
            if !stored {
                return Err(StorageError::BlockNotFound { hash: h });
            }
            tx.prepare_cached(
                "INSERT INTO chain_metadata (key, value) VALUES ('head', ?1) \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .and_then(|mut s| s.execute([h.as_bytes().as_slice()]))
            .map_err(err)?;
            Ok(())
        })
        .await
    }

    async fn read_range(&self, start: u64, end: u64) -> Result<Vec<Block>> {
        self.read(move |c| {
            if start > MAX_INDEX {
                return Ok(Vec::new());
            }
            let err = |e| sql_err("reading a range", e);
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {BLOCK_COLUMNS} FROM blocks WHERE block_index BETWEEN ?1 AND ?2 \
                         ORDER BY block_index"
                ))
                .map_err(err)?;
            let mut rows = stmt
                .query([sql_index(start), sql_index(end)])
                .map_err(err)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(err)? {
                out.push(block_from_row(row)?);
            }
            Ok(out)
        })
        .await
    }

    async fn run_compaction(&self) -> Result<()> {
        let wal = self.config.enable_wal;
        self.write(move |c| {
            if wal {
                c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                    .map_err(|e| sql_err("checkpointing the WAL", e))?;
            }
            c.execute_batch("PRAGMA optimize;")
                .map_err(|e| sql_err("optimizing", e))
        })
        .await
    }

    async fn run_vacuum(&self) -> Result<()> {
        self.write(|c| {
            c.execute_batch("VACUUM;")
                .map_err(|e| sql_err("vacuuming", e))
        })
        .await
    }

    async fn stats(&self) -> Result<StorageStats> {
        self.read(|c| {
                let err = |e| sql_err("reading statistics", e);
                let (blocks, size): (i64, i64) = c
                    .prepare_cached(
                        "SELECT COALESCE(SUM(block_count), 0), COALESCE(SUM(total_size), 0) FROM block_stats",
                    )
                    .and_then(|mut s| s.query_row([], |r| Ok((r.get(0)?, r.get(1)?))))
                    .map_err(err)?;
                let (oldest, newest): (Option<i64>, Option<i64>) = c
                    .prepare_cached("SELECT MIN(timestamp_ns), MAX(timestamp_ns) FROM blocks")
                    .and_then(|mut s| s.query_row([], |r| Ok((r.get(0)?, r.get(1)?))))
                    .map_err(err)?;
                let pragma = |name: &str| -> Result<u64> {
                    c.query_row(&format!("PRAGMA {name}"), [], |r| r.get::<_, i64>(0))
                        .map(|v| v as u64)
                        .map_err(err)
                };
                let (pages, page_size, free) =
                    (pragma("page_count")?, pragma("page_size")?, pragma("freelist_count")?);
                let time = |n: Option<i64>| n.map(|n| system_time_from_unix_nanos(n as u64));
                Ok(StorageStats {
                    total_blocks: blocks as u64,
                    total_size_bytes: size as u64,
                    oldest_block: time(oldest),
                    newest_block: time(newest),
                    backend_specific: BackendStats::SQLite {
                        database_size: pages * page_size,
                        page_count: pages,
                        page_size,
                        fragmentation_ratio: if pages == 0 { 0.0 } else { free as f64 / pages as f64 },
                    },
                })
            })
        .await
    }

    /// SQLite's own `integrity_check`, and the block counters against a full
    /// read of the blocks table.
    async fn integrity_check(&self) -> Result<()> {
        self.read(|c| {
            let problems: Vec<String> = c
                .prepare("PRAGMA integrity_check(20)")
                .and_then(|mut s| {
                    s.query_map([], |r| r.get::<_, String>(0))?
                        .collect::<rusqlite::Result<_>>()
                })
                .map_err(|e| sql_err("running integrity_check", e))?;
            if problems != ["ok"] {
                return Err(StorageError::corrupted(format!(
                    "sqlite: integrity_check found damage: {}",
                    problems.join("; ")
                )));
            }
            check_counters(c, true)
        })
        .await
    }

    async fn shutdown(&self) -> Result<()> {
        let wal = self.config.enable_wal;
        // Readers first, so the checkpoint below is not held back by them.
        self.readers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let writer = self.writer.clone();
        let wrote = self.wrote.load(std::sync::atomic::Ordering::Relaxed);
        blocking(self.config.execution, move || {
            let Some(conn) = writer.lock().unwrap_or_else(PoisonError::into_inner).take() else {
                return Ok(());
            };
            if !wrote {
                // Only read: close writes nothing (reading works on a full disk).
                return conn.close().map_err(|(_, e)| sql_err("closing", e));
            }
            if wal {
                // Fold the WAL into the database so the file stands alone.
                conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                    .map_err(|e| sql_err("checkpointing on close", e))?;
            }
            conn.execute_batch("PRAGMA optimize;")
                .map_err(|e| sql_err("optimizing on close", e))?;
            conn.close().map_err(|(_, e)| sql_err("closing", e))
        })
        .await
    }
}
