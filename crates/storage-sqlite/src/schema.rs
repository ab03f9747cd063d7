//! The schema, its migrations, and opening connections: the writer (created
//! crash-safely, counters checked) and the pool of readers.

use super::*;

pub(crate) const SCHEMA_VERSION: i64 = 3;

/// The blocks table of schema 3. The metadata columns come first so a listing
/// stops reading each record before `data`, the block's encoding, which is
/// what a read returns.
const BLOCKS_TABLE: &str = "
CREATE TABLE IF NOT EXISTS blocks (
    block_index  INTEGER PRIMARY KEY,
    hash         BLOB    NOT NULL UNIQUE,
    timestamp_ns INTEGER NOT NULL,
    public_key   BLOB    NOT NULL,
    payload_type TEXT    NOT NULL,
    size_bytes   INTEGER NOT NULL,
    meta_check   INTEGER NOT NULL,
    data         BLOB    NOT NULL
);";

/// The secondary indexes on `blocks`. Each entry of a SQLite index ends with
/// the rowid (`block_index`), so each one also orders by index within equal
/// keys, as listings need.
const BLOCK_INDEXES: &str = "
CREATE INDEX IF NOT EXISTS idx_blocks_timestamp    ON blocks (timestamp_ns);
CREATE INDEX IF NOT EXISTS idx_blocks_public_key   ON blocks (public_key);
CREATE INDEX IF NOT EXISTS idx_blocks_payload_type ON blocks (payload_type);
";

/// Everything but the blocks table and its indexes: the head and the per-day
/// statistics, unchanged since schema 1.
const OTHER_TABLES: &str = "
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

/// The whole schema, as a new store gets it.
pub(crate) fn schema() -> String {
    format!("{BLOCKS_TABLE}{BLOCK_INDEXES}{OTHER_TABLES}")
}

pub(crate) fn pragmas(c: &SQLiteConfig, reader: bool) -> String {
    let mut s = format!(
        "PRAGMA busy_timeout = {}; PRAGMA synchronous = {}; PRAGMA cache_size = {}; \
         PRAGMA temp_store = {};",
        c.busy_timeout.as_millis(),
        c.synchronous,
        if reader {
            c.read_cache_size
        } else {
            c.cache_size
        },
        c.temp_store
    );
    if reader {
        s.push_str(" PRAGMA query_only = ON;");
    }
    s
}

/// Creates a new database atomically: initialised under a temporary name, then
/// renamed into place. So a database file that exists is never legitimately
/// empty, and one cut below SQLite's 100-byte header is damage, not a new store.
pub(crate) fn create_if_missing(path: &Path, cfg: &SQLiteConfig) -> Result<()> {
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
pub(crate) fn open_writer(path: &Path, cfg: &SQLiteConfig, check: bool) -> Result<Connection> {
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
    if cfg.enable_wal {
        let page: i64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(|e| sql_err(&ctx("reading the page size of"), e))?;
        let bytes = i64::try_from(cfg.wal_autocheckpoint_bytes).unwrap_or(i64::MAX);
        conn.execute_batch(&format!(
            "PRAGMA wal_autocheckpoint = {}; PRAGMA journal_size_limit = {bytes};",
            (bytes / page.max(512)).max(1)
        ))
        .map_err(|e| sql_err(&ctx("setting the log size of"), e))?;
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| sql_err(&ctx("locking"), e))?;
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| sql_err(&ctx("reading the schema version of"), e))?;
    let upgrade = |e| sql_err(&ctx("upgrading the schema of"), e);
    match version {
        0 => {
            tx.execute_batch(&schema())
                .and_then(|_| tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}")))
                .map_err(|e| sql_err(&ctx("creating the schema in"), e))?;
        }
        1 => {
            add_meta_check(&tx).map_err(upgrade)?;
            blocks_as_encodings(&tx).map_err(upgrade)?;
        }
        2 => blocks_as_encodings(&tx).map_err(upgrade)?,
        SCHEMA_VERSION => {}
        v => {
            return Err(StorageError::Configuration(format!(
                "sqlite: {} has schema version {v}; this build reads versions up to \
                 {SCHEMA_VERSION}",
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
pub(crate) fn check_counters(c: &Connection, table_scan: bool) -> Result<()> {
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
pub(crate) fn add_meta_check(tx: &Transaction<'_>) -> rusqlite::Result<()> {
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
    Ok(())
}

/// Schema 2 → 3, inside the opening transaction (all or nothing): each row's
/// fields become the block's encoding in `data`, and the indexes become one
/// per filter. The metadata columns and their checks are copied as they are,
/// so a row damaged before the upgrade still fails its check afterwards; a row
/// whose fields no longer make its block gets empty `data`, which reads as
/// corrupted rather than as a different block.
pub(crate) fn blocks_as_encodings(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    // The old table keeps its indexes until it is dropped, so the new ones are
    // created (under the same names) after that.
    tx.execute_batch(&format!(
        "ALTER TABLE blocks RENAME TO blocks_v2; {BLOCKS_TABLE}"
    ))?;
    {
        let mut old = tx.prepare(
            "SELECT hash, block_index, timestamp_ns, public_key, previous_hash, payload_type, \
             payload, signature, size_bytes, meta_check FROM blocks_v2 ORDER BY block_index",
        )?;
        let mut insert = tx.prepare(INSERT_BLOCK)?;
        let mut rows = old.query([])?;
        while let Some(r) = rows.next()? {
            let data = v2_block(r)
                .and_then(|b| WireFormat::BINARY.encode(&b).ok())
                .unwrap_or_default();
            let column = |i| r.get::<_, Value>(i);
            insert.execute(params![
                column(1)?,
                column(0)?,
                column(2)?,
                column(3)?,
                column(5)?,
                column(8)?,
                column(9)?,
                data
            ])?;
        }
    }
    tx.execute_batch(&format!(
        "DROP TABLE blocks_v2; {BLOCK_INDEXES} PRAGMA user_version = {SCHEMA_VERSION};"
    ))
}

/// The block a schema-2 row's fields make, if they make the block its `hash`
/// column names.
fn v2_block(r: &rusqlite::Row<'_>) -> Option<Block> {
    let blob = |i| r.get_ref(i).ok()?.as_blob().ok();
    let parts = BlockParts {
        index: u64::try_from(r.get::<_, i64>(1).ok()?).ok()?,
        timestamp_nanos: u64::try_from(r.get::<_, i64>(2).ok()?).ok()?,
        public_key: PublicKey(blob(3)?.try_into().ok()?),
        previous_hash: match r.get_ref(4).ok()? {
            rusqlite::types::ValueRef::Null => None,
            v => Some(BlockHash(v.as_blob().ok()?.try_into().ok()?)),
        },
        payload_type: r.get(5).ok()?,
        payload: blob(6)?.to_vec(),
        signature: Signature(blob(7)?.try_into().ok()?),
    };
    let block = Block::from_trusted_parts(parts).ok()?;
    (block.hash().as_bytes().as_slice() == blob(0)?).then_some(block)
}

/// Opens an existing database for reading only: no connection that can write,
/// nothing created or upgraded, so a database another process is writing is
/// left as it is. `check` compares the block counters with the rows in one read
/// transaction (a consistent view beside a writer).
pub(crate) fn open_read_only(path: &Path, cfg: &SQLiteConfig, check: bool) -> Result<Pool> {
    OpenMode::ReadOnly.require_existing(NAME, path.is_file(), || path.display().to_string())?;
    let ctx = |what: &str| format!("{what} {} read-only", path.display());
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| sql_err(&ctx("opening"), e))?;
    conn.busy_timeout(cfg.busy_timeout)
        .map_err(|e| sql_err(&ctx("configuring"), e))?;
    let tx = conn
        .unchecked_transaction()
        .map_err(|e| sql_err(&ctx("reading"), e))?;
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| sql_err(&ctx("reading the schema version of"), e))?;
    if version != SCHEMA_VERSION {
        return Err(StorageError::Configuration(format!(
            "sqlite: {} has schema version {version}; opened read-only it must already \
             be version {SCHEMA_VERSION} (open it for writing once to upgrade it)",
            path.display()
        )));
    }
    if check {
        check_counters(&tx, false)?;
    }
    drop(tx);
    drop(conn);
    open_readers(path, cfg)
}

pub(crate) fn open_readers(path: &Path, cfg: &SQLiteConfig) -> Result<Pool> {
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
