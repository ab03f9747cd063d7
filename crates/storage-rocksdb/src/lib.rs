//! RocksDB [`StorageBackend`](storage_core::StorageBackend): column families, one atomic `WriteBatch` per write,
//! index seeks instead of scans.
//!
//! # Layout
//! All integers big-endian, so byte order is numeric order. The layout's
//! version is kept under `version` in the default column family.
//!
//! | column family | key | value |
//! |---|---|---|
//! | `by_index` | index (8) | the block, bincode wire format (RocksDB compresses) |
//! | `metadata` | hash (32) | index (8) |
//! | `index` | index (8) | hash (32), timestamp ns (8), size (8), public key (32), type length (1), type |
//! | `secondary` | `t`, timestamp ns (8), index (8) | — |
//! | | `k`, public key (32), index (8) | — |
//! | | `y`, type, `0x00`, index (8) | — |
//! | default | `version`, `head`, `count`, `size`, `deletions` | u64 / hash |
//!
//! Blocks are keyed by their index, not their hash: a chain grows at its end, so
//! new blocks land after every stored one and RocksDB moves the files that hold
//! them down the levels without rewriting them. Only the small `metadata`
//! entries (hash → index) arrive in random order. Retrieval by hash is two point
//! reads (the index, then the block), and a range is one sequential scan.
//!
//! Every store, batch, delete and head change is one `WriteBatch` covering the
//! block, all its index entries, the head and the counters: a crash never leaves a
//! block without its index or an index entry without its block. Writes are
//! serialised by one mutex (conflict checks read before they write). `list_blocks`
//! seeks the index that fits the query (time order, signer or type in
//! `secondary`, `index` otherwise) under one snapshot and stops after
//! `offset + limit` matches; `count_blocks` and the totals in `get_stats` come
//! from the counters.
//!
//! A store written by the first layout (seven column families, blocks keyed by
//! hash) is upgraded in place when first opened for writing: the new entries are
//! written beside the old ones, the version key last, and only then are the old
//! column families dropped, so an interrupted upgrade starts again at the next
//! open. Opened read-only, such a store is refused until it has been upgraded.
//!
//! # Durability
//! The write-ahead log is always on, with point-in-time recovery.
//! - `sync_writes = false` (default): a write is acknowledged once it is in the WAL
//!   in the OS page cache. A **process crash** loses nothing acknowledged; a
//!   **power loss or OS crash** can lose the writes since the last sync (RocksDB
//!   syncs on flushes and when the WAL rotates), never part of a batch.
//! - `sync_writes = true`: each write batch is fsynced before it is acknowledged;
//!   a power loss loses nothing acknowledged.
//! - `wal_sync_interval = Some(d)` (without `sync_writes`): a background thread
//!   syncs the log every `d`, so a power loss loses at most about `d` of
//!   acknowledged writes. [`RocksDBConfig::apply_wal`] maps the shared
//!   `WALConfig` onto these settings.
//!
//! RocksDB checksums every SST block; a checksum failure, like a stored block whose
//! bytes no longer hash to its key, is reported as [`StorageError::Corrupted`].
//! Opening checks the MANIFEST's records first (RocksDB's reader can loop forever
//! on some damaged ones) and reports a `CURRENT` that names a missing MANIFEST as
//! corrupted too. A MANIFEST cut short loses the versions after the cut: RocksDB
//! opens the older state, as after an interrupted write (the corruption sweep
//! counts such blocks as missing).
//!
//! ```no_run
//! # async fn demo() -> storage_core::Result<()> {
//! use storage_rocksdb::{RocksDBBackend, RocksDBConfig};
//! let store = RocksDBBackend::new(RocksDBConfig::new("./data/rocks").sync_writes(true))?;
//! # Ok(()) }
//! ```

// Library code returns errors; tests may unwrap (see clippy.toml).
#![warn(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use rocksdb::{
    BlockBasedOptions, BottommostLevelCompaction, ColumnFamily, ColumnFamilyDescriptor,
    CompactOptions, DB, DBCompressionType, DBRecoveryMode, Direction, IteratorMode, Options,
    ReadOptions, WriteBatch, WriteOptions,
};
use serde::{Deserialize, Serialize};
use storage_core::raw::{Engine, Gate, OpenHandle, WeakLease, run_blocking};
use storage_core::{
    BackendStats, Block, BlockHash, BlockMetadata, Capabilities, CompactionStats, CompressionType,
    ErrorStatus, Execution, ListOptions, OpenMode, PublicKey, Result, SortOrder, StorageError,
    StorageStats, WireFormat, system_time_from_unix_nanos,
};

const NAME: &str = "rocksdb";
/// The layout this build writes, under [`VERSION_KEY`] in the default family.
const LAYOUT_VERSION: u64 = 2;
const VERSION_KEY: &str = "version";
const CF_CHAIN: &str = rocksdb::DEFAULT_COLUMN_FAMILY_NAME;
const CF_BLOCKS: &str = "by_index";
const CF_METADATA: &str = "metadata";
const CF_INDEX: &str = "index";
const CF_SECONDARY: &str = "secondary";
const ALL_CFS: [&str; 5] = [CF_CHAIN, CF_BLOCKS, CF_METADATA, CF_INDEX, CF_SECONDARY];
/// Secondary index tags: time order, signer, payload type.
const TAG_TIME: u8 = b't';
const TAG_KEY: u8 = b'k';
const TAG_TYPE: u8 = b'y';
/// The first layout's column families that the current one no longer has
/// (`metadata` and `index` are kept as they were).
const LAYOUT1_CFS: [&str; 5] = ["blocks", "by_time", "by_key", "by_type", "chain"];

/// RocksDB settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct RocksDBConfig {
    /// Database directory (created if missing).
    pub path: String,
    /// Compression of SST files. `Gzip` is refused: this build has zstd and lz4.
    pub compression: CompressionType,
    /// Block cache, bytes (0: RocksDB's default).
    pub cache_size: usize,
    /// Memtable size, bytes.
    pub write_buffer_size: usize,
    /// Memtables kept before writes stall.
    pub max_write_buffer_number: i32,
    /// Background flush and compaction threads.
    pub max_background_jobs: i32,
    /// Bloom filters on SST blocks (faster misses).
    pub enable_bloom_filter: bool,
    /// Bloom filter bits per key.
    pub bloom_filter_bits: f64,
    /// fsync every write batch before acknowledging it (see the crate docs).
    pub sync_writes: bool,
    /// Without `sync_writes`: sync the write-ahead log this often, so a power
    /// loss loses at most about this much time of acknowledged writes. `None`:
    /// RocksDB syncs only when it flushes or rotates the log.
    #[serde(with = "storage_core::human_duration::option")]
    pub wal_sync_interval: Option<Duration>,
    /// Once the write-ahead logs hold this many bytes, RocksDB flushes the
    /// memtables they cover so the logs can be deleted (`max_total_wal_size`;
    /// 0: RocksDB's rule, four times the memtables' total size).
    pub max_total_wal_size: u64,
    /// Blocks with a longer payload are refused with `InvalidInput` (at most, and
    /// by default, [`storage_core::MAX_PAYLOAD_BYTES`]).
    pub max_payload_bytes: usize,
    /// Where blocking engine calls run: inline (the default, fastest) or on
    /// tokio's blocking pool, where a timeout around a call fires even if the
    /// disk stalls (see [`storage_core::Execution`]).
    pub execution: Execution,
    /// Create the database if missing (the default), open only an existing
    /// one, or open one read-only (as of opening, beside a writer in another
    /// process).
    pub mode: OpenMode,
}

impl Default for RocksDBConfig {
    fn default() -> Self {
        Self {
            path: "./olocus_rocksdb".into(),
            compression: CompressionType::Zstd,
            cache_size: 64 * 1024 * 1024,
            write_buffer_size: 16 * 1024 * 1024,
            max_write_buffer_number: 3,
            max_background_jobs: 4,
            enable_bloom_filter: true,
            bloom_filter_bits: 10.0,
            sync_writes: false,
            wal_sync_interval: None,
            max_total_wal_size: 0,
            max_payload_bytes: storage_core::MAX_PAYLOAD_BYTES,
            execution: Execution::Inline,
            mode: OpenMode::Create,
        }
    }
}

impl RocksDBConfig {
    /// The default settings for a database in `path`.
    pub fn new(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            ..Self::default()
        }
    }

    /// Applies the shared durability settings: `enabled = false` syncs nothing
    /// (writes still reach the log before they are acknowledged, so a process
    /// crash loses none); a zero `sync_interval` sets `sync_writes`; any other
    /// syncs the log every `sync_interval`; `max_log_size` is
    /// `max_total_wal_size`.
    pub fn apply_wal(&mut self, wal: &storage_core::WALConfig) {
        self.sync_writes = wal.enabled && wal.sync_interval.is_zero();
        self.wal_sync_interval =
            (wal.enabled && !wal.sync_interval.is_zero()).then_some(wal.sync_interval);
        self.max_total_wal_size = wal.max_log_size;
    }

    fn options(&self) -> Result<(Options, Options)> {
        let bad = |m: String| Err(StorageError::Configuration(format!("rocksdb: {m}")));
        if self.path.trim().is_empty() {
            return bad("path is empty".into());
        }
        if self.write_buffer_size == 0
            || self.max_write_buffer_number < 1
            || self.max_background_jobs < 1
        {
            return bad("write_buffer_size, max_write_buffer_number and max_background_jobs must be positive".into());
        }
        if self.enable_bloom_filter
            && !(self.bloom_filter_bits > 0.0 && self.bloom_filter_bits <= 64.0)
        {
            return bad(format!(
                "bloom_filter_bits {} must be in (0, 64]",
                self.bloom_filter_bits
            ));
        }
        let compression = match self.compression {
            CompressionType::None => DBCompressionType::None,
            CompressionType::Zstd => DBCompressionType::Zstd,
            CompressionType::Lz4 => DBCompressionType::Lz4,
            CompressionType::Gzip => {
                return bad("gzip is not built into this RocksDB (use zstd, lz4 or none)".into());
            }
        };
        let mut cf = Options::default();
        cf.set_compression_type(compression);
        cf.set_write_buffer_size(self.write_buffer_size);
        cf.set_max_write_buffer_number(self.max_write_buffer_number);
        let mut table = BlockBasedOptions::default();
        if self.cache_size > 0 {
            table.set_block_cache(&rocksdb::Cache::new_lru_cache(self.cache_size));
        }
        if self.enable_bloom_filter {
            table.set_bloom_filter(self.bloom_filter_bits, false);
        }
        cf.set_block_based_table_factory(&table);
        let mut db = cf.clone();
        db.create_if_missing(self.mode.creates());
        db.create_missing_column_families(true);
        db.set_max_background_jobs(self.max_background_jobs);
        db.set_wal_recovery_mode(DBRecoveryMode::PointInTime);
        db.set_paranoid_checks(true);
        if self.max_total_wal_size > 0 {
            db.set_max_total_wal_size(self.max_total_wal_size);
        }
        if self.wal_sync_interval.is_some_and(|d| d.is_zero()) {
            return bad(
                "wal_sync_interval must be positive (set sync_writes to sync every write)".into(),
            );
        }
        Ok((db, cf))
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    count: u64,
    size: u64,
    deletions: u64,
}

struct Inner {
    /// The database directory.
    path: PathBuf,
    /// The sequence number reached when opened (and recorded as durable).
    durable_seq: u64,
    db: DB,
    sync: bool,
    max_payload_bytes: usize,
    /// Serialises writers; holds the counters they update.
    writer: Mutex<Counters>,
    compaction: Mutex<CompactionStats>,
    /// Periodic log syncs done (see `wal_sync_interval`).
    wal_syncs: std::sync::atomic::AtomicU64,
}

/// The RocksDB backend. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct RocksDBBackend {
    path: PathBuf,
    read_only: bool,
    max_payload_bytes: usize,
    inner: OpenHandle<Inner>,
    gate: Gate,
}

impl std::fmt::Debug for RocksDBBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksDBBackend")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn db_err(context: &str, e: rocksdb::Error) -> StorageError {
    use rocksdb::ErrorKind as K;
    match e.kind() {
        K::Corruption => StorageError::corrupted_by(format!("rocksdb: {context}"), e),
        kind => StorageError::backend(
            NAME,
            context,
            if matches!(kind, K::Busy | K::TryAgain | K::TimedOut | K::Incomplete) {
                ErrorStatus::Temporary
            } else {
                ErrorStatus::Permanent
            },
            e,
        ),
    }
}

/// Checks the records of the MANIFEST that `CURRENT` names, before RocksDB reads
/// it: RocksDB's log reader loops forever on some damaged records (a record type
/// flipped to a recyclable one, found by the corruption sweep), so damage must be
/// caught before it gets there. Every record must have a plain type, and every
/// complete record a valid checksum; a record cut short at the very end (an
/// interrupted append) is left for RocksDB's own recovery. Nothing to check in a
/// new directory.
/// Beside the database: the sequence number it had reached at its last close.
const DURABLE_FILE: &str = "OLOCUS-DURABLE";

/// The sequence number recorded at the last close, if any.
fn read_durable(db: &Path) -> Result<Option<u64>> {
    let path = db.join(DURABLE_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StorageError::io(format!("reading {}", path.display()), e)),
    };
    let parsed = (bytes.len() == 12)
        .then(|| {
            let seq = u64::from_le_bytes(bytes[..8].try_into().ok()?);
            (crc32c::crc32c(&bytes[..8]).to_le_bytes() == bytes[8..12]).then_some(seq)
        })
        .flatten();
    parsed.map(Some).ok_or_else(|| {
        StorageError::corrupted(format!(
            "rocksdb: {} is damaged, so whether the database lost writes cannot be checked",
            path.display()
        ))
    })
}

/// Records `seq` as reached (temp file, sync, rename, directory sync).
fn write_durable(db: &Path, seq: u64) -> Result<()> {
    let path = db.join(DURABLE_FILE);
    let tmp = db.join(format!("{DURABLE_FILE}.tmp"));
    let mut bytes = seq.to_le_bytes().to_vec();
    bytes.extend_from_slice(&crc32c::crc32c(&bytes).to_le_bytes());
    let write = || -> std::io::Result<()> {
        std::fs::write(&tmp, &bytes)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(db)?.sync_all()
    };
    write().map_err(|e| StorageError::io(format!("writing {}", path.display()), e))
}

fn check_manifest(db: &Path) -> Result<()> {
    let current = match std::fs::read(db.join("CURRENT")) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(StorageError::io(
                format!("reading {}/CURRENT", db.display()),
                e,
            ));
        }
    };
    let bad = |what: String| StorageError::corrupted(format!("rocksdb: {}: {what}", db.display()));
    let name = std::str::from_utf8(&current)
        .ok()
        .and_then(|s| s.strip_suffix('\n'))
        .filter(|n| n.starts_with("MANIFEST-") && !n.contains('/'))
        .ok_or_else(|| bad("CURRENT does not name a MANIFEST file".into()))?;
    let path = db.join(name);
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(bad(format!("CURRENT names {name}, which is missing")));
        }
        Err(e) => return Err(StorageError::io(format!("reading {}", path.display()), e)),
    };
    // RocksDB's log format: 32 KiB blocks of records; a header is a masked CRC-32C,
    // a 2-byte length and a type byte; the CRC covers type and payload. A MANIFEST
    // is never recycled, so only the plain record types may appear (full, first,
    // middle, last; compression and timestamp-size records).
    const BLOCK: usize = 32 * 1024;
    let mut at = 0;
    while at < data.len() {
        let left_in_block = BLOCK - at % BLOCK;
        if left_in_block < 7 {
            at += left_in_block; // block trailer padding
            continue;
        }
        let Some(header) = data.get(at..at + 7) else {
            break; // a torn header at the end
        };
        let stored = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
        let len = usize::from(u16::from_le_bytes([header[4], header[5]]));
        let kind = header[6];
        if kind == 0 && len == 0 {
            break; // preallocated, never written
        }
        if !matches!(kind, 1..=4 | 9 | 10) {
            return Err(bad(format!(
                "{name} is damaged: the record at byte {at} has type {kind}"
            )));
        }
        let Some(covered) = data.get(at + 6..at + 7 + len) else {
            break; // a record cut short at the end
        };
        let crc = crc32c::crc32c(covered);
        let masked = (crc.rotate_right(15)).wrapping_add(0xa282_ead8);
        if masked != stored {
            return Err(bad(format!(
                "{name} is damaged: the record at byte {at} fails its checksum"
            )));
        }
        at += 7 + len;
    }
    Ok(())
}

fn cf<'a>(db: &'a DB, name: &str) -> Result<&'a ColumnFamily> {
    db.cf_handle(name)
        .ok_or_else(|| StorageError::corrupted(format!("rocksdb: column family {name} is missing")))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    bytes
        .get(at..at + 8)
        .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
}

/// The `index` CF record of a block.
fn index_record(b: &Block) -> Vec<u8> {
    let ty = b.payload_type().as_bytes();
    let mut v = Vec::with_capacity(32 + 8 + 8 + 32 + 1 + ty.len());
    v.extend_from_slice(b.hash().as_bytes());
    v.extend_from_slice(&b.timestamp_nanos().to_be_bytes());
    v.extend_from_slice(&b.size_bytes().to_be_bytes());
    v.extend_from_slice(b.public_key().as_bytes());
    v.push(ty.len() as u8); // payload types are at most 128 bytes
    v.extend_from_slice(ty);
    v
}

fn parse_record(index: u64, v: &[u8]) -> Result<BlockMetadata> {
    let bad = || {
        StorageError::corrupted(format!(
            "rocksdb: index record of block {index} is malformed"
        ))
    };
    let hash = BlockHash::from_slice(v.get(..32).ok_or_else(bad)?).map_err(|_| bad())?;
    let ts = u64_at(v, 32).ok_or_else(bad)?;
    let size = u64_at(v, 40).ok_or_else(bad)?;
    let key = PublicKey::from_slice(v.get(48..80).ok_or_else(bad)?).map_err(|_| bad())?;
    let len = *v.get(80).ok_or_else(bad)? as usize;
    let ty = v
        .get(81..81 + len)
        .filter(|_| v.len() == 81 + len)
        .ok_or_else(bad)?;
    Ok(BlockMetadata {
        hash,
        index,
        timestamp: system_time_from_unix_nanos(ts),
        payload_type: String::from_utf8(ty.to_vec()).map_err(|_| bad())?,
        public_key: key,
        size_bytes: size,
    })
}

/// A `secondary` key: `tag`, `part`, the index.
fn secondary_key(tag: u8, part: &[u8], index: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + part.len() + 8);
    k.push(tag);
    k.extend_from_slice(part);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

fn time_key(ts: u64, index: u64) -> Vec<u8> {
    secondary_key(TAG_TIME, &ts.to_be_bytes(), index)
}

fn signer_key(key: &PublicKey, index: u64) -> Vec<u8> {
    secondary_key(TAG_KEY, key.as_bytes(), index)
}

/// The type is followed by `0x00` so one type is never a prefix of another's
/// keys.
fn type_prefix(ty: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(ty.len() + 2);
    p.push(TAG_TYPE);
    p.extend_from_slice(ty.as_bytes());
    p.push(0);
    p
}

fn type_key(ty: &str, index: u64) -> Vec<u8> {
    let mut k = type_prefix(ty);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// Puts the three `secondary` entries of a block into `batch`.
fn put_secondary(
    batch: &mut WriteBatch,
    cf: &ColumnFamily,
    index: u64,
    ts: u64,
    key: &PublicKey,
    ty: &str,
) {
    batch.put_cf(cf, time_key(ts, index), []);
    batch.put_cf(cf, signer_key(key, index), []);
    batch.put_cf(cf, type_key(ty, index), []);
}

impl Inner {
    fn get_u64(&self, key: &str) -> Result<u64> {
        match self
            .db
            .get_cf(cf(&self.db, CF_CHAIN)?, key)
            .map_err(|e| db_err("reading counters", e))?
        {
            None => Ok(0),
            Some(v) => u64_at(&v, 0).filter(|_| v.len() == 8).ok_or_else(|| {
                StorageError::corrupted(format!("rocksdb: counter {key} is malformed"))
            }),
        }
    }

    fn write(&self, batch: WriteBatch) -> Result<()> {
        let mut opts = WriteOptions::default();
        opts.set_sync(self.sync);
        self.db
            .write_opt(batch, &opts)
            .map_err(|e| db_err("writing a batch", e))
    }

    fn put_counters(&self, batch: &mut WriteBatch, c: &Counters) -> Result<()> {
        let chain = cf(&self.db, CF_CHAIN)?;
        batch.put_cf(chain, "count", c.count.to_be_bytes());
        batch.put_cf(chain, "size", c.size.to_be_bytes());
        batch.put_cf(chain, "deletions", c.deletions.to_be_bytes());
        Ok(())
    }

    fn store(&self, blocks: &[Block]) -> Result<()> {
        let mut counters = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let db = &self.db;
        let (cf_blocks, cf_meta, cf_index) =
            (cf(db, CF_BLOCKS)?, cf(db, CF_METADATA)?, cf(db, CF_INDEX)?);
        let cf_secondary = cf(db, CF_SECONDARY)?;
        let hash_at = |i: u64| -> Result<Option<BlockHash>> {
            db.get_pinned_cf(cf_index, i.to_be_bytes())
                .map_err(|e| db_err("checking an index", e))?
                .map(|v| parse_record(i, &v).map(|m| m.hash))
                .transpose()
        };
        let fresh = storage_core::raw::admit(
            blocks,
            &mut storage_core::raw::ChainViewFn(hash_at, |i| {
                // Only when filling a gap before a stored block: read it.
                let Some(h) = hash_at(i)? else {
                    return Ok(None);
                };
                let block = self.retrieve(&h)?.ok_or_else(|| {
                    StorageError::corrupted(format!(
                        "rocksdb: block {i} ({h}) is indexed but missing"
                    ))
                })?;
                Ok(Some(block.previous_hash().copied()))
            }),
        )?;
        if fresh.is_empty() {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        let mut next = *counters;
        for b in fresh.into_iter().map(|p| &blocks[p]) {
            let (hash, idx) = (b.hash(), b.index().to_be_bytes());
            batch.put_cf(cf_blocks, idx, WireFormat::BINARY.encode(b)?);
            batch.put_cf(cf_meta, hash.as_bytes(), idx);
            batch.put_cf(cf_index, idx, index_record(b));
            put_secondary(
                &mut batch,
                cf_secondary,
                b.index(),
                b.timestamp_nanos(),
                b.public_key(),
                b.payload_type(),
            );
            next.count += 1;
            next.size += b.size_bytes();
        }
        self.put_counters(&mut batch, &next)?;
        self.write(batch)?;
        *counters = next;
        Ok(())
    }

    fn delete(&self, hash: &BlockHash) -> Result<bool> {
        let mut counters = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let db = &self.db;
        let Some(idx) = self.index_of(hash)? else {
            return Ok(false);
        };
        let index = u64::from_be_bytes(idx);
        let record = db
            .get_cf(cf(db, CF_INDEX)?, idx)
            .map_err(|e| db_err("reading an index record", e))?
            .ok_or_else(|| {
                StorageError::corrupted(format!("rocksdb: block {hash} has no index record"))
            })?;
        let meta = parse_record(index, &record)?;
        let ts = system_time_nanos(meta.timestamp);
        let mut batch = WriteBatch::default();
        batch.delete_cf(cf(db, CF_BLOCKS)?, idx);
        batch.delete_cf(cf(db, CF_METADATA)?, hash.as_bytes());
        batch.delete_cf(cf(db, CF_INDEX)?, idx);
        let secondary = cf(db, CF_SECONDARY)?;
        batch.delete_cf(secondary, time_key(ts, index));
        batch.delete_cf(secondary, signer_key(&meta.public_key, index));
        batch.delete_cf(secondary, type_key(&meta.payload_type, index));
        let chain = cf(db, CF_CHAIN)?;
        if db
            .get_pinned_cf(chain, "head")
            .map_err(|e| db_err("reading the head", e))?
            .as_deref()
            == Some(hash.as_bytes().as_slice())
        {
            batch.delete_cf(chain, "head");
        }
        let next = Counters {
            count: counters.count - 1,
            size: counters.size - meta.size_bytes,
            deletions: counters.deletions + 1,
        };
        self.put_counters(&mut batch, &next)?;
        self.write(batch)?;
        *counters = next;
        Ok(true)
    }

    /// The index a stored block's hash maps to.
    fn index_of(&self, hash: &BlockHash) -> Result<Option<[u8; 8]>> {
        let Some(v) = self
            .db
            .get_pinned_cf(cf(&self.db, CF_METADATA)?, hash.as_bytes())
            .map_err(|e| db_err(&format!("looking up block {hash}"), e))?
        else {
            return Ok(None);
        };
        <[u8; 8]>::try_from(v.as_ref()).map(Some).map_err(|_| {
            StorageError::corrupted(format!("rocksdb: the index entry of {hash} is malformed"))
        })
    }

    fn retrieve(&self, hash: &BlockHash) -> Result<Option<Block>> {
        let Some(idx) = self.index_of(hash)? else {
            return Ok(None);
        };
        let read = self
            .db
            .get_pinned_cf(cf(&self.db, CF_BLOCKS)?, idx)
            .map_err(|e| db_err(&format!("reading block {hash}"), e))?;
        match read {
            Some(bytes) => WireFormat::BINARY.decode_stored(&bytes, hash).map(Some),
            // Deleted between the two reads, or lost.
            None if self.index_of(hash)?.is_none() => Ok(None),
            None => Err(StorageError::corrupted(format!(
                "rocksdb: block {hash} is indexed at {} but missing",
                u64::from_be_bytes(idx)
            ))),
        }
    }

    fn list(&self, o: &ListOptions) -> Result<Vec<BlockMetadata>> {
        let Some(matcher) = o.matcher() else {
            return Ok(Vec::new());
        };
        let ((ilo, ihi), (tstart, tend)) = (matcher.indices(), matcher.time_keys());
        let skip = usize::try_from(o.offset.unwrap_or(0)).unwrap_or(usize::MAX);
        let take = usize::try_from(o.limit.unwrap_or(u64::MAX)).unwrap_or(usize::MAX);
        if take == 0 {
            return Ok(Vec::new());
        }
        let snap = self.db.snapshot();
        let cf_index = cf(&self.db, CF_INDEX)?;
        let filter = o.filter.clone().unwrap_or_default();
        let accept = |m: &BlockMetadata| matcher.matches(m);
        // Pinned reads under the snapshot: the record is parsed in place, not copied.
        let mut read_opts = ReadOptions::default();
        read_opts.set_snapshot(&snap);
        let lookup = |index: u64| -> Result<Option<BlockMetadata>> {
            match self
                .db
                .get_pinned_cf_opt(cf_index, index.to_be_bytes(), &read_opts)
                .map_err(|e| db_err("reading an index record", e))?
            {
                Some(v) => parse_record(index, &v).map(Some),
                None => Ok(None), // deleted between the secondary index and here
            }
        };
        let mut out = Vec::new();
        let mut skipped = 0usize;
        let mut push = |m: BlockMetadata| -> bool {
            if !accept(&m) {
                return true;
            }
            if skipped < skip {
                skipped += 1;
                return true;
            }
            out.push(m);
            out.len() < take
        };
        let descending = o.order == SortOrder::Descending;
        // Pick the index that fits: time order, then signer, then type, then index.
        let (cf_name, prefix, lo, hi): (&str, Vec<u8>, Vec<u8>, Vec<u8>) =
            if o.order == SortOrder::ByTimestamp {
                (
                    CF_SECONDARY,
                    vec![TAG_TIME],
                    time_key(tstart.0, tstart.1),
                    time_key(tend.0, tend.1),
                )
            } else if let Some(k) = &filter.public_key {
                (
                    CF_SECONDARY,
                    [&[TAG_KEY][..], k.as_bytes()].concat(),
                    signer_key(k, ilo),
                    signer_key(k, ihi),
                )
            } else if let Some(t) = &filter.payload_type {
                (
                    CF_SECONDARY,
                    type_prefix(t),
                    type_key(t, ilo),
                    type_key(t, ihi),
                )
            } else {
                (
                    CF_INDEX,
                    Vec::new(),
                    ilo.to_be_bytes().to_vec(),
                    ihi.to_be_bytes().to_vec(),
                )
            };
        let mode = if descending {
            IteratorMode::From(&hi, Direction::Reverse)
        } else {
            IteratorMode::From(&lo, Direction::Forward)
        };
        for item in snap.iterator_cf(cf(&self.db, cf_name)?, mode) {
            let (k, v) = item.map_err(|e| db_err("scanning an index", e))?;
            if k.as_ref() < lo.as_slice() || k.as_ref() > hi.as_slice() {
                break;
            }
            let meta = if cf_name == CF_INDEX {
                let index = u64_at(&k, 0)
                    .ok_or_else(|| StorageError::corrupted("rocksdb: short index key"))?;
                Some(parse_record(index, &v)?)
            } else {
                let index = k
                    .len()
                    .checked_sub(8)
                    .filter(|at| *at >= prefix.len())
                    .and_then(|at| u64_at(&k, at))
                    .ok_or_else(|| StorageError::corrupted("rocksdb: short secondary key"))?;
                lookup(index)?
            };
            if let Some(m) = meta
                && !push(m)
            {
                break;
            }
        }
        Ok(out)
    }

    fn range(&self, start: u64, end: u64) -> Result<Vec<Block>> {
        let snap = self.db.snapshot();
        let (cf_index, cf_blocks) = (cf(&self.db, CF_INDEX)?, cf(&self.db, CF_BLOCKS)?);
        // A range is a scan (a long chain is read as many ranges): reading it
        // through the block cache would evict the point lookups' working set
        // and make a streamed export's memory grow with the chain.
        let scan_opts = || {
            let mut o = ReadOptions::default();
            o.set_snapshot(&snap);
            o.fill_cache(false);
            o
        };
        let mut out = Vec::new();
        let from = start.to_be_bytes();
        let scan = |cf| {
            self.db.iterator_cf_opt(
                cf,
                scan_opts(),
                IteratorMode::From(&from, Direction::Forward),
            )
        };
        // Both families are keyed by index: the records (for the hashes the
        // blocks must have) and the blocks are read side by side, in step.
        let mut blocks = scan(cf_blocks);
        let key_index = |k: &[u8]| {
            u64_at(k, 0)
                .filter(|_| k.len() == 8)
                .ok_or_else(|| StorageError::corrupted("rocksdb: malformed index key"))
        };
        let orphan = |index: u64| {
            StorageError::corrupted(format!("rocksdb: block {index} has no index record"))
        };
        for item in scan(cf_index) {
            let (k, v) = item.map_err(|e| db_err("scanning the index", e))?;
            let index = key_index(&k)?;
            if index > end {
                break;
            }
            let meta = parse_record(index, &v)?;
            let (bk, bytes) = blocks
                .next()
                .transpose()
                .map_err(|e| db_err(&format!("reading block {}", meta.hash), e))?
                .ok_or_else(|| {
                    StorageError::corrupted(format!("rocksdb: index entry {index} has no block"))
                })?;
            match key_index(&bk)? {
                at if at < index => return Err(orphan(at)),
                at if at > index => {
                    return Err(StorageError::corrupted(format!(
                        "rocksdb: index entry {index} has no block"
                    )));
                }
                _ => {}
            }
            out.push(WireFormat::BINARY.decode_stored(&bytes, &meta.hash)?);
        }
        // A block in the range past the last index record has lost its record.
        if let Some(item) = blocks.next() {
            let (bk, _) = item.map_err(|e| db_err("scanning the blocks", e))?;
            let at = key_index(&bk)?;
            if at <= end {
                return Err(orphan(at));
            }
        }
        Ok(out)
    }

    fn time_edge(&self, direction: Direction) -> Result<Option<SystemTime>> {
        // The time keys sort between these two: the tag, then 16 bytes.
        let first = [TAG_TIME];
        let mut last = [0xff; 17];
        last[0] = TAG_TIME;
        let mode = match direction {
            Direction::Forward => IteratorMode::From(&first, Direction::Forward),
            Direction::Reverse => IteratorMode::From(&last, Direction::Reverse),
        };
        match self
            .db
            .iterator_cf(cf(&self.db, CF_SECONDARY)?, mode)
            .next()
        {
            Some(item) => {
                let (k, _) = item.map_err(|e| db_err("reading the time index", e))?;
                if k.first() != Some(&TAG_TIME) {
                    return Ok(None);
                }
                Ok(Some(system_time_from_unix_nanos(
                    u64_at(&k, 1)
                        .filter(|_| k.len() == 17)
                        .ok_or_else(|| StorageError::corrupted("rocksdb: malformed time key"))?,
                )))
            }
            None => Ok(None),
        }
    }

    fn property(&self, name: &str) -> Result<u64> {
        let mut total = 0;
        for cf_name in ALL_CFS {
            total += self
                .db
                .property_int_value_cf(cf(&self.db, cf_name)?, name)
                .map_err(|e| db_err(name, e))?
                .unwrap_or(0);
        }
        Ok(total)
    }

    /// Flushes every column family's memtable (`DB::flush` covers only the
    /// default one).
    fn flush_all(&self) -> Result<()> {
        for cf_name in ALL_CFS {
            self.db
                .flush_cf(cf(&self.db, cf_name)?)
                .map_err(|e| db_err(&format!("flushing {cf_name}"), e))?;
        }
        Ok(())
    }

    fn compact(&self, force_bottommost: bool) -> Result<()> {
        let started = Instant::now();
        let before = self.property("rocksdb.total-sst-files-size")?;
        self.flush_all()?;
        let mut opts = CompactOptions::default();
        if force_bottommost {
            opts.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
        }
        for cf_name in ALL_CFS {
            self.db.compact_range_cf_opt(
                cf(&self.db, cf_name)?,
                None::<&[u8]>,
                None::<&[u8]>,
                &opts,
            );
        }
        let after = self.property("rocksdb.total-sst-files-size")?;
        *self
            .compaction
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = CompactionStats {
            bytes_read: before,
            bytes_written: after,
            compaction_time: started.elapsed(),
            last_compaction: Some(SystemTime::now()),
        };
        Ok(())
    }
}

fn layout1_read_only(path: &Path) -> StorageError {
    StorageError::Configuration(format!(
        "rocksdb: {} was written by this backend's first layout (version 1); opened \
         read-only it must already be version {LAYOUT_VERSION} (open it for writing once to \
         upgrade it)",
        path.display()
    ))
}

/// Reads the layout version of an opened store and brings it to the current
/// one: a new store gets its version key, a first-layout store (`layout1`: its
/// old column families exist) is upgraded, and old families an interrupted
/// upgrade left behind are dropped. Read-only, it only checks.
fn settle_layout(db: &mut DB, path: &Path, read_only: bool, layout1: bool) -> Result<()> {
    let version = match db
        .get_cf(cf(db, CF_CHAIN)?, VERSION_KEY)
        .map_err(|e| db_err("reading the layout version", e))?
    {
        None => None,
        Some(v) => Some(u64_at(&v, 0).filter(|_| v.len() == 8).ok_or_else(|| {
            StorageError::corrupted(format!(
                "rocksdb: {}: the layout version is malformed",
                path.display()
            ))
        })?),
    };
    match version {
        Some(LAYOUT_VERSION) => {}
        Some(v) => {
            return Err(StorageError::Configuration(format!(
                "rocksdb: {} has layout version {v}; this build reads version {LAYOUT_VERSION}",
                path.display()
            )));
        }
        None if read_only && layout1 => return Err(layout1_read_only(path)),
        None if layout1 => upgrade_layout1(db, path)?,
        None => {
            // A store without a version holds nothing, unless the key was lost.
            let holds_blocks = db
                .iterator_cf(cf(db, CF_INDEX)?, IteratorMode::Start)
                .next()
                .transpose()
                .map_err(|e| db_err("reading the index", e))?
                .is_some();
            if holds_blocks {
                return Err(StorageError::corrupted(format!(
                    "rocksdb: {} holds blocks but no layout version",
                    path.display()
                )));
            }
            if read_only {
                return Ok(()); // Created but never written: nothing to read yet.
            }
            write_version(db)?;
        }
    }
    if !read_only {
        for name in LAYOUT1_CFS {
            if db.cf_handle(name).is_some() {
                db.drop_cf(name)
                    .map_err(|e| db_err(&format!("dropping the old column family {name}"), e))?;
            }
        }
    }
    Ok(())
}

/// Records the current layout version. Not synced: the log is replayed in
/// order, so no later write survives a crash that loses it.
fn write_version(db: &DB) -> Result<()> {
    let mut batch = WriteBatch::default();
    batch.put_cf(cf(db, CF_CHAIN)?, VERSION_KEY, LAYOUT_VERSION.to_be_bytes());
    db.write(batch)
        .map_err(|e| db_err("writing the layout version", e))
}

/// Writes the current layout's entries for every block of a first-layout store
/// beside the old ones (`metadata` and `index` are unchanged), then the version
/// (after them in the log), and syncs the log before the caller drops the old
/// families: an interrupted upgrade leaves no version, and the next open
/// starts it again over the same keys. A block
/// the old store had lost stays lost (its record without a block reads as
/// corrupted, as it did).
fn upgrade_layout1(db: &DB, path: &Path) -> Result<()> {
    let started = Instant::now();
    let (old_blocks, old_chain) = (cf(db, "blocks")?, cf(db, "chain")?);
    let (cf_blocks, cf_index) = (cf(db, CF_BLOCKS)?, cf(db, CF_INDEX)?);
    let (cf_secondary, cf_chain) = (cf(db, CF_SECONDARY)?, cf(db, CF_CHAIN)?);
    let write = |batch: WriteBatch| {
        db.write(batch)
            .map_err(|e| db_err("upgrading the layout", e))
    };
    let mut batch = WriteBatch::default();
    let mut blocks = 0u64;
    for item in db.iterator_cf(cf_index, IteratorMode::Start) {
        let (k, v) = item.map_err(|e| db_err("upgrading: reading the index", e))?;
        let index = u64_at(&k, 0)
            .filter(|_| k.len() == 8)
            .ok_or_else(|| StorageError::corrupted("rocksdb: malformed index key"))?;
        let meta = parse_record(index, &v)?;
        if let Some(bytes) = db
            .get_pinned_cf(old_blocks, meta.hash.as_bytes())
            .map_err(|e| db_err(&format!("upgrading: reading block {}", meta.hash), e))?
        {
            batch.put_cf(cf_blocks, &k, &*bytes);
        }
        let ts = system_time_nanos(meta.timestamp);
        put_secondary(
            &mut batch,
            cf_secondary,
            index,
            ts,
            &meta.public_key,
            &meta.payload_type,
        );
        blocks += 1;
        if blocks.is_multiple_of(1024) {
            write(std::mem::take(&mut batch))?;
        }
    }
    for key in ["head", "count", "size", "deletions"] {
        if let Some(v) = db
            .get_cf(old_chain, key)
            .map_err(|e| db_err("upgrading: reading the counters", e))?
        {
            batch.put_cf(cf_chain, key, v);
        }
    }
    write(batch)?;
    write_version(db)?;
    // Durable before the old families are dropped.
    db.flush_wal(true)
        .map_err(|e| db_err("upgrading: syncing the log", e))?;
    tracing::info!(
        backend = NAME,
        path = %path.display(),
        blocks,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "upgraded the store to layout version {LAYOUT_VERSION}"
    );
    Ok(())
}

/// Opens a read-only instance. A writer in another process may delete a log or
/// table file between RocksDB listing and opening it (a flush or compaction
/// finished): that open fails, and a fresh one sees the files that replaced it.
/// A file that stays missing fails every attempt and is reported as before.
/// Once open, every table file is held open, so later deletions do not matter.
///
/// A flush that commits while the instance opens can also tear its view
/// without failing it: the instance reads the MANIFEST from before the flush,
/// then finds the write-ahead log the flush let the writer delete already gone,
/// so the flushed column families miss what the others hold. The MANIFEST only
/// grows or is replaced when such a change commits, so an open during which it
/// stayed the same is whole; otherwise it is opened again.
fn open_read_only(
    db_opts: &rocksdb::Options,
    cf_opts: &rocksdb::Options,
    path: &Path,
) -> Result<DB> {
    let open_err = |e| db_err(&format!("opening {} read-only", path.display()), e);
    let mut delays = storage_core::raw::read_only_open_delays();
    loop {
        let before = manifest_state(path);
        let cfs = ALL_CFS.map(|name| ColumnFamilyDescriptor::new(name, cf_opts.clone()));
        let retry = match DB::open_cf_descriptors_read_only(db_opts, path, cfs, false) {
            // Reported as an I/O error, or as a MANIFEST naming a missing
            // file ("Corruption"), depending on which file went.
            Err(e) if e.as_ref().contains("No such file or directory") => open_err(e),
            Err(e) => return Err(open_err(e)),
            Ok(db) if before.is_some() && manifest_state(path) == before => return Ok(db),
            Ok(_) => StorageError::backend(
                NAME,
                format!(
                    "opening {} read-only: the writer kept changing the store's files \
                     meanwhile",
                    path.display()
                ),
                ErrorStatus::Temporary,
                "the MANIFEST changed during every attempt",
            ),
        };
        match delays.next() {
            Some(pause) => std::thread::sleep(pause),
            None => return Err(retry),
        }
    }
}

/// Which MANIFEST the store's `CURRENT` names, and its length: a change to
/// the files of a store (a flush, a compaction) commits by appending to the
/// MANIFEST or replacing it. `None` if either cannot be read.
fn manifest_state(path: &Path) -> Option<(String, u64)> {
    let current = std::fs::read_to_string(path.join("CURRENT")).ok()?;
    let len = std::fs::metadata(path.join(current.trim())).ok()?.len();
    Some((current, len))
}

/// Syncs the write-ahead log every `every` until the store is closed or
/// dropped. It holds the database only while syncing, so close (which waits
/// to be its sole owner) is never held back by more than one sync. A failed
/// sync is logged and retried at the next tick: RocksDB reports the failure to
/// the next write too.
fn spawn_wal_syncer(db: WeakLease<Inner>, every: Duration) -> Result<()> {
    storage_core::raw::spawn_periodic("rocksdb-wal-sync", every, db, |inner: &Inner| {
        match inner.db.flush_wal(true) {
            Ok(()) => {
                inner
                    .wal_syncs
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(backend = NAME, path = %inner.path.display(), error = %e, "periodic WAL sync failed");
            }
        }
        true
    })
}

fn system_time_nanos(t: SystemTime) -> u64 {
    storage_core::unix_nanos(t).unwrap_or(u64::MAX)
}

impl RocksDBBackend {
    /// Opens (creating if needed) the database at `config.path`. Blocking: call it
    /// from `spawn_blocking` if opening a large store inside a runtime.
    pub fn new(config: RocksDBConfig) -> Result<Self> {
        let (db_opts, cf_opts) = config.options()?;
        let path = PathBuf::from(config.path.trim());
        // RocksDB names its current MANIFEST in CURRENT: no CURRENT, no store.
        config
            .mode
            .require_existing(NAME, path.join("CURRENT").is_file(), || {
                path.display().to_string()
            })?;
        check_manifest(&path)?;
        let durable = read_durable(&path)?;
        let read_only = config.mode == OpenMode::ReadOnly;
        let existing = if path.join("CURRENT").is_file() {
            DB::list_cf(&db_opts, &path).map_err(|e| {
                db_err(
                    &format!("listing the column families of {}", path.display()),
                    e,
                )
            })?
        } else {
            Vec::new()
        };
        let layout1 = LAYOUT1_CFS.iter().any(|n| existing.iter().any(|e| e == n));
        let upgraded = ALL_CFS.iter().all(|n| existing.iter().any(|e| e == n));
        if read_only && layout1 && !upgraded {
            return Err(layout1_read_only(&path));
        }
        // Read-only: no lock, nothing written; the state is what the MANIFEST
        // and the write-ahead log held at opening. For writing, the first
        // layout's families are opened too, to be upgraded and dropped.
        let db = if read_only {
            open_read_only(&db_opts, &cf_opts, &path)?
        } else {
            let names = ALL_CFS.iter().copied().chain(
                LAYOUT1_CFS
                    .into_iter()
                    .filter(|n| existing.iter().any(|e| e == n)),
            );
            let descriptors = names.map(|name| ColumnFamilyDescriptor::new(name, cf_opts.clone()));
            DB::open_cf_descriptors(&db_opts, &path, descriptors).map_err(|e| {
                // RocksDB reports a held LOCK file as an I/O error naming it:
                // "While lock file: …/LOCK: …" from another process, "lock hold by
                // current process, … …/LOCK: …" from this one.
                if e.kind() == rocksdb::ErrorKind::IOError && e.as_ref().contains("/LOCK: ") {
                    StorageError::StoreLocked {
                        backend: NAME.to_owned(),
                        location: path.display().to_string(),
                        holder: None,
                        source: Some(Box::new(e)),
                    }
                } else {
                    db_err(&format!("opening {}", path.display()), e)
                }
            })?
        };
        // RocksDB recovers whatever state its MANIFEST and logs describe: a MANIFEST
        // cut at a record boundary reads as an older, consistent state. Writes only
        // move the sequence number forward, so one behind the last close is loss.
        let seq = db.latest_sequence_number();
        if let Some(closed_at) = durable
            && seq < closed_at
        {
            return Err(StorageError::corrupted(format!(
                "rocksdb: {} opened at sequence number {seq}, behind the {closed_at} it \
                 had reached when last closed: writes it had made durable are lost (a \
                 damaged MANIFEST or log); restore it from a copy",
                path.display()
            )));
        }
        let mut db = db;
        settle_layout(&mut db, &path, read_only, layout1)?;
        let mut inner = Inner {
            path: path.clone(),
            durable_seq: seq,
            db,
            sync: config.sync_writes,
            max_payload_bytes: config.max_payload_bytes,
            writer: Mutex::new(Counters::default()),
            compaction: Mutex::new(CompactionStats::default()),
            wal_syncs: 0.into(),
        };
        let counters = Counters {
            count: inner.get_u64("count")?,
            size: inner.get_u64("size")?,
            deletions: inner.get_u64("deletions")?,
        };
        *inner
            .writer
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner) = counters;
        let max_payload_bytes = inner.max_payload_bytes;
        let inner = OpenHandle::new(NAME, inner, config.execution);
        if let Some(every) = config
            .wal_sync_interval
            .filter(|_| !read_only && !config.sync_writes)
        {
            spawn_wal_syncer(inner.weak().expect("just opened"), every)?;
        }
        Ok(Self {
            path,
            read_only,
            max_payload_bytes,
            inner,
            gate: Gate::new(),
        })
    }

    /// The database directory.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Engine for RocksDBBackend {
    fn name(&self) -> &str {
        NAME
    }

    fn gate(&self) -> &Gate {
        &self.gate
    }

    fn supported(&self) -> Capabilities {
        let caps = Capabilities::new().persistent().atomic_batches().vacuum();
        if self.read_only {
            caps.read_only()
        } else {
            caps
        }
    }

    fn max_payload_bytes(&self) -> usize {
        self.max_payload_bytes
    }

    async fn write_blocks(&self, blocks: &[Block]) -> Result<()> {
        let owned = blocks.to_vec();
        self.inner.with(move |i| i.store(&owned)).await
    }

    async fn read_block(&self, hash: &BlockHash) -> Result<Option<Block>> {
        let h = *hash;
        self.inner.with(move |i| i.retrieve(&h)).await
    }

    async fn remove_block(&self, hash: &BlockHash) -> Result<bool> {
        let h = *hash;
        self.inner.with(move |i| i.delete(&h)).await
    }

    async fn has_block(&self, hash: &BlockHash) -> Result<bool> {
        let h = *hash;
        self.inner
            .with(move |i| {
                Ok(i.db
                    .get_pinned_cf(cf(&i.db, CF_METADATA)?, h.as_bytes())
                    .map_err(|e| db_err("checking a block", e))?
                    .is_some())
            })
            .await
    }

    async fn read_blocks(&self, hashes: &[BlockHash]) -> Result<Vec<Option<Block>>> {
        let hs = hashes.to_vec();
        self.inner
            .with(move |i| hs.iter().map(|h| i.retrieve(h)).collect())
            .await
    }

    async fn list(&self, options: &ListOptions) -> Result<Vec<BlockMetadata>> {
        let o = options.clone();
        self.inner.with(move |i| i.list(&o)).await
    }

    async fn count(&self) -> Result<u64> {
        let inner = self.inner.get()?;
        let count = inner
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .count;
        Ok(count)
    }

    async fn head(&self) -> Result<Option<BlockHash>> {
        self.inner
            .with(|i| {
                match i
                    .db
                    .get_cf(cf(&i.db, CF_CHAIN)?, "head")
                    .map_err(|e| db_err("reading the head", e))?
                {
                    Some(v) => BlockHash::from_slice(&v)
                        .map(Some)
                        .map_err(|_| StorageError::corrupted("rocksdb: head is malformed")),
                    None => Ok(None),
                }
            })
            .await
    }

    async fn write_head(&self, hash: &BlockHash) -> Result<()> {
        let h = *hash;
        self.inner
            .with(move |i| {
                // Under the writer lock, so a concurrent delete cannot slip between.
                let _writer = i.writer.lock().unwrap_or_else(PoisonError::into_inner);
                let stored =
                    i.db.get_pinned_cf(cf(&i.db, CF_METADATA)?, h.as_bytes())
                        .map_err(|e| db_err("checking a block", e))?
                        .is_some();
                if !stored {
                    return Err(StorageError::BlockNotFound { hash: h });
                }
                let mut batch = WriteBatch::default();
                batch.put_cf(cf(&i.db, CF_CHAIN)?, "head", h.as_bytes());
                i.write(batch)
            })
            .await
    }

    async fn read_range(&self, start: u64, end: u64) -> Result<Vec<Block>> {
        self.inner.with(move |i| i.range(start, end)).await
    }

    async fn run_compaction(&self) -> Result<()> {
        self.inner.with(|i| i.compact(false)).await
    }

    async fn run_vacuum(&self) -> Result<()> {
        // Rewrites the bottommost level too, dropping deletion tombstones and
        // returning their space.
        self.inner.with(|i| i.compact(true)).await
    }

    async fn stats(&self) -> Result<StorageStats> {
        self.inner
            .with(|i| {
                let c = *i.writer.lock().unwrap_or_else(PoisonError::into_inner);
                Ok(StorageStats {
                    total_blocks: c.count,
                    total_size_bytes: c.size,
                    oldest_block: i.time_edge(Direction::Forward)?,
                    newest_block: i.time_edge(Direction::Reverse)?,
                    backend_specific: BackendStats::RocksDB {
                        live_data_size: i.property("rocksdb.estimate-live-data-size")?,
                        total_data_size: i.property("rocksdb.total-sst-files-size")?,
                        num_entries: i.property("rocksdb.estimate-num-keys")?,
                        num_deletions: c.deletions,
                        compaction_stats: i
                            .compaction
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .clone(),
                    },
                })
            })
            .await
    }

    async fn shutdown(&self) -> Result<()> {
        let Some(inner) = self.inner.take() else {
            return Ok(());
        };
        run_blocking(NAME, self.inner.execution(), move || {
            // Wait (briefly) for blocking work a dropped call left running, so the
            // lock file is released when close returns and the path can reopen.
            let owned = inner.wait(Duration::from_secs(30))?;
            let seq = owned.db.latest_sequence_number();
            if seq > owned.durable_seq {
                owned.flush_all()?;
                owned
                    .db
                    .flush_wal(true)
                    .map_err(|e| db_err("syncing the WAL on close", e))?;
            }
            let (path, durable_seq) = (owned.path.clone(), owned.durable_seq);
            drop(owned);
            // Only read since opening: nothing to write.
            if seq > durable_seq {
                write_durable(&path, seq)?;
            }
            Ok(())
        })
        .await
    }
}

storage_core::setters!(into RocksDBConfig { path: String });
storage_core::setters!(RocksDBConfig {
    compression: CompressionType,
    cache_size: usize,
    write_buffer_size: usize,
    max_write_buffer_number: i32,
    max_background_jobs: i32,
    enable_bloom_filter: bool,
    bloom_filter_bits: f64,
    sync_writes: bool,
    wal_sync_interval: Option<Duration>,
    max_total_wal_size: u64,
    max_payload_bytes: usize,
    execution: Execution,
    mode: OpenMode,
});

#[cfg(test)]
mod tests {
    use super::*;
    use storage_core::{ErrorKind, StorageBackend};

    /// The value of `name` in the newest OPTIONS file RocksDB wrote in `dir`.
    fn written_option(dir: &Path, name: &str) -> Option<String> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("OPTIONS-"))
            })
            .collect();
        files.sort();
        let text = std::fs::read_to_string(files.last()?).unwrap();
        text.lines().find_map(|l| {
            l.trim()
                .strip_prefix(name)
                .and_then(|r| r.strip_prefix('='))
                .map(str::to_owned)
        })
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn wal_settings_reach_rocksdb_and_the_syncer_stops_at_close() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = RocksDBConfig {
            path: dir.path().to_string_lossy().into_owned(),
            ..Default::default()
        };
        config.apply_wal(&storage_core::WALConfig {
            enabled: true,
            sync_interval: Duration::from_millis(20),
            max_log_size: 1 << 20,
        });
        assert!(!config.sync_writes);
        let store = RocksDBBackend::new(config).unwrap();
        assert_eq!(
            written_option(dir.path(), "max_total_wal_size").as_deref(),
            Some("1048576")
        );
        let inner = store.inner.get().unwrap();
        let syncs = || inner.wal_syncs.load(std::sync::atomic::Ordering::Relaxed);
        let started = Instant::now();
        while syncs() < 2 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no periodic sync"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(inner);
        let counter = store.inner.weak().unwrap();
        store.close().await.unwrap();
        assert!(counter.upgrade().is_none(), "the syncer holds the database");
        // A closed store opens again at once: the syncer released its lock.
        let again = RocksDBBackend::new(RocksDBConfig {
            path: dir.path().to_string_lossy().into_owned(),
            ..Default::default()
        })
        .unwrap();
        again.close().await.unwrap();
    }

    #[test]
    fn synced_and_unsynced_wal_settings() {
        let mut config = RocksDBConfig::default();
        config.apply_wal(&storage_core::WALConfig::synced());
        assert!(config.sync_writes);
        assert_eq!(config.wal_sync_interval, None);
        config.apply_wal(&storage_core::WALConfig {
            enabled: false,
            ..Default::default()
        });
        assert!(!config.sync_writes);
        assert_eq!(config.wal_sync_interval, None);
        config.wal_sync_interval = Some(Duration::ZERO);
        assert!(config.options().is_err());
    }

    /// A closed store with one block in `dir`.
    fn closed_store(dir: &Path) {
        let config = RocksDBConfig {
            path: dir.to_string_lossy().into_owned(),
            ..RocksDBConfig::default()
        };
        let store = RocksDBBackend::new(config).unwrap();
        let key = storage_core::SigningKey::from_bytes(&[1; 32]);
        let block = Block::sign_raw(0, std::time::UNIX_EPOCH, None, "t/v1", vec![1], &key).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            store.store_block(&block).await.unwrap();
            store.close().await.unwrap();
        });
    }

    /// An engine error keeps RocksDB's error as its source: walkable,
    /// downcastable, and printed once.
    #[test]
    fn engine_errors_keep_their_cause() {
        let dir = tempfile::tempdir().unwrap();
        let config = RocksDBConfig {
            path: dir.path().to_string_lossy().into_owned(),
            ..RocksDBConfig::default()
        };
        let first = RocksDBBackend::new(config.clone()).unwrap();
        let err = RocksDBBackend::new(config).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Locked, "{err}");
        let mut chain = Vec::new();
        let mut at: Option<&(dyn std::error::Error + 'static)> = Some(&err);
        while let Some(e) = at {
            chain.push(e.to_string());
            at = e.source();
        }
        let engine = std::error::Error::source(&err)
            .and_then(|s| s.downcast_ref::<rocksdb::Error>())
            .unwrap_or_else(|| panic!("no rocksdb::Error under {chain:?}"));
        let cause = engine.to_string();
        assert!(!chain[0].contains(&cause), "cause printed twice: {chain:?}");
        assert!(
            chain[0].starts_with("rocksdb store at ") && chain[0].contains("locked"),
            "{chain:?}"
        );
        drop(first);
    }

    /// The MANIFEST that `CURRENT` names (each open starts a new one).
    fn manifest(dir: &Path) -> PathBuf {
        let current = std::fs::read_to_string(dir.join("CURRENT")).unwrap();
        dir.join(current.trim_end())
    }

    /// Opens on another thread, so a hang fails the test instead of stalling it.
    fn open_kind(dir: &Path) -> Option<ErrorKind> {
        let config = RocksDBConfig {
            path: dir.to_string_lossy().into_owned(),
            ..RocksDBConfig::default()
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(RocksDBBackend::new(config).err().map(|e| e.kind()));
        });
        rx.recv_timeout(Duration::from_secs(30))
            .expect("opening did not finish within 30 s (hung)")
    }

    /// A MANIFEST record whose type byte turned into a recyclable type can make
    /// RocksDB's reader loop forever; every such record is refused before RocksDB
    /// reads it.
    #[test]
    fn damaged_manifest_is_corrupted_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        closed_store(dir.path());
        assert_eq!(open_kind(dir.path()), None, "the undamaged store opens");
        let manifest = manifest(dir.path());
        let pristine = std::fs::read(&manifest).unwrap();
        // Every record header of this small (one-block) MANIFEST.
        let mut at = 0;
        let mut records = 0;
        while at + 7 <= pristine.len() {
            let len = usize::from(u16::from_le_bytes([pristine[at + 4], pristine[at + 5]]));
            let mut bytes = pristine.clone();
            bytes[at + 6] ^= 0x04; // type 1 (full) becomes 5 (recyclable full)
            std::fs::write(&manifest, bytes).unwrap();
            assert_eq!(
                open_kind(dir.path()),
                Some(ErrorKind::Corrupted),
                "record at byte {at}"
            );
            records += 1;
            at += 7 + len;
        }
        assert!(records > 5, "only {records} records");
    }

    /// The families of the store in `dir` (the first layout's too), opened
    /// with RocksDB directly.
    fn raw_open(dir: &Path) -> DB {
        let (db_opts, cf_opts) = RocksDBConfig::new(dir.to_string_lossy()).options().unwrap();
        let mut names = DB::list_cf(&db_opts, dir).unwrap();
        for name in ALL_CFS {
            if !names.iter().any(|n| n == name) {
                names.push(name.to_owned());
            }
        }
        let cfs = names
            .iter()
            .map(|n| ColumnFamilyDescriptor::new(n, cf_opts.clone()));
        DB::open_cf_descriptors(&db_opts, dir, cfs).unwrap()
    }

    fn layout1_copy() -> tempfile::TempDir {
        let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/layout1");
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(&from).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
        dir
    }

    /// The fixture's 39 blocks, each read back by hash, in a range, and listed.
    async fn reads_the_fixture(dir: &Path) {
        let store = RocksDBBackend::new(RocksDBConfig::new(dir.to_string_lossy())).unwrap();
        assert_eq!(store.count_blocks().await.unwrap(), 39);
        let range = store.get_blocks_by_range(0, u64::MAX).await.unwrap();
        assert_eq!(range.len(), 39);
        for b in &range {
            assert_eq!(
                store.retrieve_block(&b.hash()).await.unwrap().as_ref(),
                Some(b)
            );
        }
        for ty in ["t/a", "t/b", "t/c"] {
            let listed = store
                .list_blocks(&ListOptions::new().payload_type(ty).by_timestamp())
                .await
                .unwrap();
            let want: Vec<u64> = range
                .iter()
                .filter(|b| b.payload_type() == ty)
                .map(Block::index)
                .collect();
            assert_eq!(listed.iter().map(|m| m.index).collect::<Vec<_>>(), want);
        }
        store.close().await.unwrap();
        let cfs = DB::list_cf(&Options::default(), dir).unwrap();
        assert!(!cfs.iter().any(|n| n == "chain"), "{cfs:?}");
    }

    #[tokio::test]
    async fn an_upgrade_interrupted_before_dropping_the_old_families_finishes() {
        let dir = layout1_copy();
        {
            let db = raw_open(dir.path());
            upgrade_layout1(&db, dir.path()).unwrap();
        }
        let cfs = DB::list_cf(&Options::default(), dir.path()).unwrap();
        assert!(cfs.iter().any(|n| n == "chain"), "{cfs:?}");
        reads_the_fixture(dir.path()).await;
    }

    #[tokio::test]
    async fn an_upgrade_interrupted_before_its_version_starts_again() {
        let dir = layout1_copy();
        {
            // Only part of the new entries made it, and no version.
            let db = raw_open(dir.path());
            upgrade_layout1(&db, dir.path()).unwrap();
            let mut batch = WriteBatch::default();
            batch.delete_cf(cf(&db, CF_CHAIN).unwrap(), VERSION_KEY);
            batch.delete_cf(cf(&db, CF_CHAIN).unwrap(), "count");
            batch.delete_range_cf(
                cf(&db, CF_BLOCKS).unwrap(),
                10u64.to_be_bytes(),
                u64::MAX.to_be_bytes(),
            );
            batch.delete_range_cf(cf(&db, CF_SECONDARY).unwrap(), [0u8], [0xffu8]);
            db.write(batch).unwrap();
        }
        reads_the_fixture(dir.path()).await;
    }

    #[test]
    fn a_newer_layout_or_a_lost_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        closed_store(dir.path());
        let set_version = |v: Option<u64>| {
            let db = raw_open(dir.path());
            let chain = cf(&db, CF_CHAIN).unwrap();
            match v {
                Some(v) => db.put_cf(chain, VERSION_KEY, v.to_be_bytes()),
                None => db.delete_cf(chain, VERSION_KEY),
            }
            .unwrap();
        };
        set_version(Some(LAYOUT_VERSION + 1));
        assert_eq!(open_kind(dir.path()), Some(ErrorKind::Configuration));
        set_version(None);
        assert_eq!(open_kind(dir.path()), Some(ErrorKind::Corrupted));
        set_version(Some(LAYOUT_VERSION));
        assert_eq!(open_kind(dir.path()), None);
    }

    #[test]
    fn current_naming_a_missing_manifest_is_corrupted() {
        let dir = tempfile::tempdir().unwrap();
        closed_store(dir.path());
        std::fs::write(dir.path().join("CURRENT"), "MANIFEST-999999\n").unwrap();
        assert_eq!(open_kind(dir.path()), Some(ErrorKind::Corrupted));
    }
}

// The README's examples are compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
