//! Filesystem [`StorageBackend`]: append-only segment files of checksummed
//! records, and a searchable index file per segment read page by page on
//! demand, so opening reads no per-block data and stays in milliseconds as a
//! store grows.
//!
//! # Layout, and why
//! ```text
//! store/
//!   LOCK                    held by the one open handle (the second opener gets an error)
//!   MANIFEST                the store's segments, and the length each sealed one was synced at
//!   0000000000000001.seg    append-only log: records of blocks, deletions, head changes
//!   0000000000000001.idx    the segment's table: its blocks sorted by index, hash and
//!                           time, in checksummed pages (written when the segment is
//!                           sealed, and for the active segment on close)
//!   0000000000000002.seg    the active segment (rolled at `segment_size`)
//! ```
//! One file per block plus a JSON index flushed every 100 blocks would cost a
//! file create and two fsyncs per durable write, and a crash would lose up to
//! 99 acknowledged blocks. Block stores that reach high rates, such as
//! Bitcoin Core's `blk*.dat`, Fabric's block files and reth's static files, append
//! to segment files instead and keep a compact index. This backend does the same:
//! - **One record per write.** A single block, a batch, a deletion or a head change
//!   is one record with a CRC-32 over its header and body. A batch is one record,
//!   so it is all or nothing. Every block entry inside a record has its own CRC as
//!   well, so a random read checks exactly the bytes it reads. A decoded block's
//!   hash is then compared with the hash it was stored under.
//! - **One write call per operation.** A write reaches the OS before it is
//!   acknowledged, so a process crash never loses an acknowledged block. Syncing
//!   depends on [`Durability`].
//! - **Index files (tables).** A segment's table holds each block's location and
//!   metadata (key and type interned) in 4 KiB pages: sorted by index, a hash
//!   table sorted by hash, and the time order. Opening reads each table's header
//!   (counts, ranges, head, deletions), not its pages: with the page cache
//!   dropped, a store of a million blocks opens and reads one in about 3 ms here,
//!   one of ten million in about 26 ms. Lookups, listings and
//!   ranges read the pages they need, each checked against its own CRC, through
//!   a cache of [`FsConfig::index_cache`] bytes. After a crash only the bytes
//!   past the last table are decoded. A table is written only over synced
//!   bytes, so it also marks them durable: a segment found shorter than its
//!   table covers has lost data (an error naming the blocks), never a torn tail.
//! - **Torn tails are cut; lost data is reported.** The store remembers what it
//!   made durable: the `MANIFEST` lists every segment with the length it was sealed
//!   at, and the active segment's header holds the length the last sync made
//!   durable (rewritten before each sync, in the same sync as new data, so it never
//!   claims more than the disk holds). On open, an incomplete record past that
//!   point is an interrupted write: it is cut off and its bytes kept in
//!   `*.seg.torn-OFFSET` until the next `compact`. Anything missing or damaged
//!   below it (a segment cut short, a listed segment gone, a bad record in synced
//!   bytes or followed by valid ones, a missing or damaged `MANIFEST`) fails the
//!   open with [`StorageError::Corrupted`] naming the segment, the bytes and, where
//!   an index file says, the blocks lost. [`salvage`] then copies what is intact
//!   into a new store and reports exactly which indices were lost.
//! - **Memory.** What no table covers yet (the active segment's writes since its
//!   table, about 200 bytes per block, at most one segment's worth), the
//!   deletions that removed a table's blocks, and the page cache stay in RAM;
//!   nothing per stored block. A store of ten million blocks opens in well
//!   under 64 MiB.
//! - **Damaged tables are rebuilt.** A table is derived from its segment. One
//!   whose header does not check (or that is missing) is rebuilt from the
//!   segment's records when the store opens. A damaged page is found when it is
//!   read: that read fails with [`StorageError::Corrupted`], the file is
//!   removed, and the next open rebuilds it.
//! - **Older stores.** A store whose index files list each segment's operations
//!   (the first layout) opens as it is read-only, and is upgraded when opened
//!   for writing: each sealed segment is read from its records and gets its
//!   table as it is opened, the active one on close.
//!
//! # Durability ([`Durability`], or [`FsConfig::from_wal`] from the shared `WALConfig`)
//! | mode | process crash | power loss / OS crash |
//! |---|---|---|
//! | `Buffered` (`enabled = false`) | loses nothing acknowledged | can lose writes since the last segment roll or close |
//! | `Periodic(t)` (`sync_interval = t`) | loses nothing acknowledged | can lose the last `t` of writes |
//! | `Sync` (`sync_interval = 0`) | loses nothing acknowledged | loses nothing acknowledged |
//!
//! In `Sync` mode every write is synced (`fdatasync`) before it is acknowledged.
//! Concurrent writers share one sync (group commit): one writer syncs for everyone
//! who appended before it started. After a power loss, writes that were never synced
//! can leave a torn or zeroed tail; opening cuts it off as above.
//!
//! # Maintenance
//! - `compact` rewrites the oldest segments, up to the last one holding a deleted
//!   block, without the deleted blocks, and removes orphaned files (unfinished
//!   index files, saved torn tails, indexes of removed segments). The copies are
//!   synced, then the `MANIFEST` is replaced to list them instead of the old
//!   segments (the commit point), then the old segments are deleted, so a crash at
//!   any point leaves a store that opens to the same contents.
//! - Closing a store that was only read writes nothing.
//! - `vacuum` rewrites every segment: entries come out in index order, re-encoded
//!   with the configured compression (so changing `compression` applies to old
//!   data too), and head records are collapsed to one.
//!
//! Writes are serialised by one writer lock and reads run concurrently with them.
//! All disk I/O runs off the async runtime's worker threads (see
//! [`storage_core::raw::run_blocking`]).
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::time::SystemTime;
//! use storage_core::{Block, CompressionType, SigningKey, StorageBackend};
//! use storage_fs::FilesystemBackend;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let store = FilesystemBackend::new(dir.path(), CompressionType::Zstd).await?;
//! let key = SigningKey::from_bytes(&[1; 32]);
//! let g = Block::sign_raw(0, SystemTime::now(), None, "example.note/v1", b"hi".to_vec(), &key)?;
//! store.store_block(&g).await?;
//! store.close().await?;
//!
//! let store = FilesystemBackend::new(dir.path(), CompressionType::Zstd).await?;
//! assert_eq!(store.retrieve_block(&g.hash()).await?, Some(g));
//! # Ok::<(), storage_core::StorageError>(())
//! # }).unwrap();
//! ```

// Library code returns errors; tests may unwrap (see clippy.toml).
#![warn(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::time::{Duration, Instant};

use storage_core::raw::{Engine, Gate, OpenHandle, run_blocking};
use storage_core::raw::{in_span, in_span_async, op_span};
use storage_core::{
    BackendStats, Block, BlockHash, BlockMetadata, Capabilities, CompressionType, ErrorStatus,
    Execution, ListOptions, OpenMode, Result, StorageBackend, StorageError, StorageStats,
    WALConfig, system_time_from_unix_nanos,
};

mod format;
mod index;
pub mod io;
mod store;
mod table;

pub use store::Recovery;
use store::{Inner, read_state};

pub(crate) const NAME: &str = "filesystem";

/// When writes are synced to disk (see the crate docs for what each survives).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Written to the OS before acknowledging; synced only when a segment is sealed
    /// and on close.
    Buffered,
    /// As `Buffered`, plus a background sync at this interval.
    Periodic(Duration),
    /// Synced before acknowledging; concurrent writers share one sync.
    Sync,
}

/// Filesystem backend settings.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FsConfig {
    /// Store directory (created if missing).
    pub path: PathBuf,
    /// Compression of each block record. Applies to new writes (and to everything
    /// on `vacuum`); old records keep theirs and stay readable.
    pub compression: CompressionType,
    /// When writes are synced.
    pub durability: Durability,
    /// A segment is sealed and a new one started once it would exceed this size
    /// (a single larger write gets a segment of its own). 64 KiB to 2 GiB.
    pub segment_size: u64,
    /// Blocks with a longer payload are refused with `InvalidInput` (at most, and
    /// by default, [`storage_core::MAX_PAYLOAD_BYTES`]).
    pub max_payload_bytes: usize,
    /// Where blocking engine calls run: inline (the default, fastest) or on
    /// tokio's blocking pool, where a timeout around a call fires even if the
    /// disk stalls (see [`storage_core::Execution`]).
    pub execution: Execution,
    /// Create the store if missing (the default), open only an existing one,
    /// or open one read-only: no lock, nothing written, beside a writer in
    /// another process; it sees the store as the writer had it when opening
    /// began.
    pub mode: OpenMode,
    /// Bytes of index pages kept in memory once read (16 MiB by default).
    /// Opening reads none: lookups, listings and ranges read the pages they
    /// need, and the most used stay cached.
    pub index_cache: usize,
}

impl FsConfig {
    /// Defaults at `path`: no compression, a sync every 5 s, 100 MiB segments
    /// (the default `WALConfig`).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self::from_wal(path, CompressionType::None, &WALConfig::default())
    }

    /// Settings from the shared `WALConfig`: `enabled = false` is
    /// [`Durability::Buffered`], a zero `sync_interval` is [`Durability::Sync`],
    /// any other is [`Durability::Periodic`]; `max_log_size` is the segment size.
    pub fn from_wal(
        path: impl Into<PathBuf>,
        compression: CompressionType,
        wal: &WALConfig,
    ) -> Self {
        let durability = if !wal.enabled {
            Durability::Buffered
        } else if wal.sync_interval.is_zero() {
            Durability::Sync
        } else {
            Durability::Periodic(wal.sync_interval)
        };
        Self {
            path: path.into(),
            compression,
            durability,
            segment_size: wal.max_log_size,
            max_payload_bytes: storage_core::MAX_PAYLOAD_BYTES,
            execution: Execution::Inline,
            mode: OpenMode::Create,
            index_cache: 16 << 20,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.path.as_os_str().is_empty() {
            return Err(StorageError::Configuration(
                "filesystem: path is empty".into(),
            ));
        }
        if self.segment_size < 64 * 1024 {
            return Err(StorageError::Configuration(format!(
                "filesystem: segment_size {} is below the 65536-byte minimum",
                self.segment_size
            )));
        }
        if self.segment_size > 2 << 30 {
            return Err(StorageError::Configuration(format!(
                "filesystem: segment_size {} is above 2 GiB",
                self.segment_size
            )));
        }
        if let Durability::Periodic(d) = self.durability
            && d.is_zero()
        {
            return Err(StorageError::Configuration(
                "filesystem: a periodic sync interval must be positive (use Durability::Sync)"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// Where a block's bytes are on disk (for diagnostics and fault injection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockLocation {
    /// The segment file.
    pub path: PathBuf,
    /// Offset of the block's entry (header, then stored bytes).
    pub offset: u64,
    /// Length of the entry.
    pub len: u64,
}

/// The filesystem backend. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct FilesystemBackend {
    path: PathBuf,
    recovery: Recovery,
    max_payload_bytes: usize,
    read_only: bool,
    inner: OpenHandle<Inner>,
    gate: Gate,
}

impl std::fmt::Debug for FilesystemBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilesystemBackend")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Copies what is intact in the store at `src` into `dst` (a new, empty store
/// of any backend) and reports exactly which indices were lost.
///
/// For a store that refuses to open with [`StorageError::Corrupted`]: every
/// segment file is read record by record, whatever the manifest and index files
/// say; damaged bytes are skipped (reading resumes at the next valid record) and
/// every block that decodes, matches its hash and verifies is copied. Deletions
/// and head changes that still read are replayed. The source is only read (and
/// locked meanwhile), so it can be kept for inspection.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::time::SystemTime;
/// use storage_core::{Block, CompressionType, SigningKey, StorageBackend};
/// use storage_fs::FilesystemBackend;
///
/// let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
/// let store = FilesystemBackend::new(src.path(), CompressionType::None).await?;
/// let key = SigningKey::from_bytes(&[1; 32]);
/// let g = Block::sign_raw(0, SystemTime::now(), None, "example.note/v1", b"hi".to_vec(), &key)?;
/// store.store_block(&g).await?;
/// store.close().await?;
///
/// let copy = FilesystemBackend::new(dst.path(), CompressionType::None).await?;
/// let report = storage_fs::salvage(src.path(), &copy).await?;
/// assert_eq!((report.copied, report.lost_summary()), (1, "none".to_string()));
/// # Ok::<(), storage_core::StorageError>(())
/// # }).unwrap();
/// ```
pub async fn salvage(
    src: impl Into<PathBuf>,
    dst: &dyn StorageBackend,
) -> Result<storage_core::salvage::SalvageReport> {
    use storage_core::salvage::{
        SalvageReport, missing_ranges, require_empty, settle_head, store_salvaged,
    };
    let src = src.into();
    let span = op_span(NAME, "salvage");
    in_span_async(span, async move {
        require_empty(dst.count_blocks().await?)?;
        let found =
            run_blocking(NAME, Execution::Inline, move || store::salvage_scan(&src)).await?;
        let mut report = SalvageReport::default();
        report.damage = found.damage;
        let mut copied = std::collections::BTreeSet::new();
        store_salvaged(dst, found.blocks.into_values(), &mut report, &mut copied).await?;
        report.lost = missing_ranges(&copied, &found.deleted, found.top);
        report.head = settle_head(dst, found.head).await?;
        Ok(report)
    })
    .await
}

impl FilesystemBackend {
    /// Opens (or creates) the store at `base_path` with
    /// `compression` and the default durability (a sync every 5 s).
    pub async fn new(base_path: impl Into<PathBuf>, compression: CompressionType) -> Result<Self> {
        let mut config = FsConfig::new(base_path);
        config.compression = compression;
        Self::open_async(config).await
    }

    /// Opens (or creates) a store; recovery reads files, so this runs on tokio's
    /// blocking pool.
    pub async fn open_async(config: FsConfig) -> Result<Self> {
        tokio::task::spawn_blocking(move || Self::open(config))
            .await
            .map_err(|e| {
                StorageError::backend(NAME, "opening a store", ErrorStatus::Permanent, e)
            })?
    }

    /// Opens (or creates) a store. Blocking.
    ///
    /// Fails with a `Backend` error if another handle or process has the directory
    /// open, and with `Corrupted` if a segment is damaged in a way no crash can
    /// cause (see the crate docs).
    pub fn open(config: FsConfig) -> Result<Self> {
        Self::open_on(config, Arc::new(io::StdVfs))
    }

    /// Opens (or creates) a store on another file layer, such as
    /// [`io::SimVfs`] for power-loss tests. Blocking.
    pub fn open_on(config: FsConfig, vfs: Arc<dyn io::Vfs>) -> Result<Self> {
        config.validate()?;
        let execution = config.execution;
        let span = op_span(NAME, "open");
        let path = config.path.clone();
        in_span(span, || {
            let started = Instant::now();
            let (inner, recovery) = store::open(config, vfs)?;
            tracing::debug!(
                path = %path.display(),
                blocks = read_state(&inner.state).index.len(),
                segments = recovery.segments,
                scanned_bytes = recovery.scanned_bytes,
                truncated_bytes = recovery.truncated_bytes,
                elapsed = ?started.elapsed(),
                "opened filesystem store"
            );
            let (max_payload_bytes, read_only) = (
                inner.cfg.max_payload_bytes,
                inner.cfg.mode == OpenMode::ReadOnly,
            );
            let periodic = match inner.cfg.durability {
                Durability::Periodic(every) if !read_only => Some(every),
                _ => None,
            };
            let inner = OpenHandle::new(NAME, inner, execution);
            if let Some(every) = periodic {
                store::spawn_periodic(inner.weak().expect("just opened"), every)?;
            }
            Ok(Self {
                path,
                recovery,
                max_payload_bytes,
                read_only,
                inner,
                gate: Gate::new(),
            })
        })
    }

    /// The store directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What opening had to recover.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// Where block `hash` is stored, if it is.
    pub fn locate(&self, hash: &BlockHash) -> Result<Option<BlockLocation>> {
        let inner = self.inner.get()?;
        let st = read_state(&inner.state);
        Ok(st.index.get(hash)?.map(|(_, e)| BlockLocation {
            path: store::seg_path(&inner.dir.path, e.loc.seg),
            offset: u64::from(e.loc.off),
            len: u64::from(e.loc.len),
        }))
    }
}

impl Engine for FilesystemBackend {
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
            .with(move |i| read_state(&i.state).index.contains(&h))
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
        self.inner
            .with(move |i| read_state(&i.state).index.list(&o))
            .await
    }

    async fn count(&self) -> Result<u64> {
        Ok(read_state(&self.inner.get()?.state).index.len())
    }

    async fn head(&self) -> Result<Option<BlockHash>> {
        Ok(read_state(&self.inner.get()?.state).index.head)
    }

    async fn write_head(&self, hash: &BlockHash) -> Result<()> {
        let h = *hash;
        self.inner.with(move |i| i.set_head(&h)).await
    }

    async fn read_range(&self, start: u64, end: u64) -> Result<Vec<Block>> {
        self.inner.with(move |i| i.range(start, end)).await
    }

    async fn run_compaction(&self) -> Result<()> {
        self.inner.with(|i| i.rewrite(false)).await
    }

    async fn run_vacuum(&self) -> Result<()> {
        self.inner.with(|i| i.rewrite(true)).await
    }

    async fn stats(&self) -> Result<StorageStats> {
        self.inner
            .with(|i| {
                let (directory_size, file_count, seg_bytes) = store::dir_usage(&i.dir)?;
                let st = read_state(&i.state);
                let ix = &st.index;
                let live: u64 = ix.segs.values().map(|u| u.live).sum();
                let raw: u64 = ix.segs.values().map(|u| u.raw_live).sum();
                let headers = st.files.len() as u64 * format::SEG_HEADER;
                let bounds = ix.time_bounds()?;
                Ok(StorageStats {
                    total_blocks: ix.len(),
                    total_size_bytes: ix.total_size,
                    oldest_block: bounds.map(|(lo, _)| system_time_from_unix_nanos(lo)),
                    newest_block: bounds.map(|(_, hi)| system_time_from_unix_nanos(hi)),
                    backend_specific: BackendStats::Filesystem {
                        directory_size,
                        file_count,
                        segments: st.files.len() as u64,
                        stored_bytes: live,
                        uncompressed_bytes: raw,
                        dead_bytes: seg_bytes.saturating_sub(live + headers),
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
            inner.close()?;
            // Wait (briefly) for blocking work a dropped call left running, so the
            // lock is released when close returns and the directory can be reopened.
            drop(inner.wait(Duration::from_secs(30))?);
            Ok(())
        })
        .await
    }
}

storage_core::setters!(into FsConfig { path: PathBuf });
storage_core::setters!(FsConfig {
    compression: CompressionType,
    durability: Durability,
    segment_size: u64,
    max_payload_bytes: usize,
    execution: Execution,
    mode: OpenMode,
    index_cache: usize,
});

// The README's examples are compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
