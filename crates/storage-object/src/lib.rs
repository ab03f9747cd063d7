//! Olocus blocks on object storage: S3 and every S3-compatible store (MinIO,
//! Ceph, SeaweedFS, R2, ...), or any other [`object_store::ObjectStore`].
//!
//! ```no_run
//! use storage_object::{ObjectStoreBackend, ObjectStoreConfig};
//! # async fn run() -> storage_core::Result<()> {
//! let config = ObjectStoreConfig::s3(
//!     "s3://olocus/chains/sensor-7",
//!     "http://127.0.0.1:8333",
//!     "access-key",
//!     "secret-key",
//! );
//! let store = ObjectStoreBackend::open(config).await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! Everything lives under the URL's prefix, so many chains share a bucket:
//!
//! | object | what | written |
//! |---|---|---|
//! | `seg/<32 hex>` | a **segment**: the blocks of one write (a batch or a single block), encoded back to back after a 6-byte header | once, never changed |
//! | `idx/<16 hex>` | an **index page**: the entries of [`PAGE_SLOTS`] consecutive chain indices (hash, previous hash, timestamp, type, signer, size, and where the record is: segment, offset, length, format), CRC-32C | compare-and-swap |
//! | `head` | the chain head's hash (or none), CRC-32C | compare-and-swap |
//!
//! Page names are fixed-width, so a listing of `idx/` is in index order, and
//! `list_blocks`, `get_blocks_by_range`, `count_blocks` and `get_stats` are
//! answered from pages without fetching any block. Blocks are fetched with ranged
//! GETs, coalesced per segment.
//!
//! **Claims.** A page that does not exist yet is created with create-if-absent
//! (`PutMode::Create`, `If-None-Match: *`); an existing one is replaced with
//! `PutMode::Update` (`If-Match: <ETag>`). A writer that loses either race re-reads
//! the page and tries again, and finds the index taken: two writers on two
//! machines can never both claim one index, and the loser gets
//! [`StorageError::IndexConflict`]. Within one process, updates of a page are
//! queued so that the process's own writers do not race each other.
//!
//! **Write order.** A write uploads its segment first, then claims its indices in
//! the pages. A crash between the two leaves a segment nothing references, never
//! an index entry without its block; [`StorageBackend::compact`] removes such
//! orphans once they are older than [`ObjectOptions::orphan_grace`] (another
//! writer may be between its two steps; a segment whose blocks were all deleted
//! looks the same and waits as long) and repacks small or partly deleted
//! segments into segments of up to [`ObjectOptions::compact_segment_bytes`].
//!
//! **Batches are not atomic.** A batch whose indices span two pages is claimed
//! with one request per page; S3 has no transaction across objects. A batch that
//! conflicts is undone (pages it already claimed are restored), but a crash
//! between those requests can leave part of it stored. The backend declares
//! `atomic_batches: false`.
//!
//! **Counts and statistics are exact** and do not list the bucket: each instance
//! keeps the pages it has read, with per-page totals, and refreshes them with one
//! LIST of `idx/` (one request per 1,000 pages, about 512,000 blocks), fetching
//! only pages whose ETag changed. `count_blocks`, `get_stats` and `list_blocks`
//! refresh first, so they see other writers' changes; `retrieve_block` and
//! `block_exists` refresh when a hash is unknown. A block another instance deleted
//! may still be returned by hash until this instance's next refresh: blocks never
//! change, so what is returned is always the right block.
//!
//! **Errors.** Every request has a timeout and a bounded retry budget
//! ([`ObjectOptions`]); failures that persist through it are
//! [`StorageError::Backend`] errors with [`storage_core::ErrorStatus::Persistent`]
//! (the object store's error as their source) or [`StorageError::Timeout`], rejected
//! credentials are [`StorageError::Configuration`], and damaged pages, head or
//! records are [`StorageError::Corrupted`].
//!
//! **Damage.** Nothing is ever repaired by cutting: segments are written once and
//! never appended to, and pages and the head carry a CRC-32C, so there is no torn
//! tail to tell from lost data. A segment shorter than its index entries say, or
//! gone while a page still names it, is [`StorageError::Corrupted`] for every read
//! of its blocks; a damaged page or head is `Corrupted` for every operation that
//! reads it (counts, statistics, listings and ranges read every page). A page
//! deleted outright takes its indices out of every view, because no object records
//! how many pages exist: [`verify_store`](storage_core::StorageBackendExt::verify_store) reports it, as a gap
//! in the index sequence or a head that names no stored block. Salvage with
//! `storage_core::salvage::copy_intact`, which reads around damaged blocks.
//!
//! **Stores.** S3 needs conditional PUTs (`If-None-Match` and `If-Match`; AWS S3,
//! MinIO, Ceph, SeaweedFS and R2 have both). object_store's local-file store has
//! no conditional update, so [`ObjectStoreBackend::with_store_single_writer`] (and
//! `file://` URLs) serialise updates inside the one process that may write.

// Library code returns errors; tests may unwrap (see clippy.toml).
#![warn(clippy::unwrap_used)]

mod config;
pub mod layout;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{
    ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion,
};
use storage_core::raw::{ChainViewFn, Engine, Gate, admit, in_span_async, op_span};
use storage_core::{
    BackendStats, Block, BlockHash, BlockHashMap, BlockMetadata, ErrorStatus, ListOptions, Result,
    SortOrder, StorageError, StorageStats, system_time_from_unix_nanos,
};
use tokio::sync::Mutex as AsyncMutex;

pub use config::{CLUSTER_ENV, ObjectOptions, ObjectStoreConfig};
pub use layout::PAGE_SLOTS;
use layout::{
    Entry, HEAD_OBJECT, PAGES_DIR, Page, PageTotals, SEGMENT_HEADER_LEN, SEGMENTS_DIR, SegmentId,
    decode_head, encode_head, encode_segment, page_from_path, page_of, page_path,
};

const NAME: &str = "object";

/// Attempts at one compare-and-swap before giving up with a persistent error.
const CAS_ATTEMPTS: u32 = 50;

/// A [`StorageBackend`] over an object store. See the crate docs for the layout.
#[derive(Clone)]
pub struct ObjectStoreBackend {
    inner: Arc<Inner>,
    /// Shared by clones: closing one closes them all.
    gate: Arc<Gate>,
}

struct Inner {
    /// The store, already scoped to the chain's prefix.
    store: Arc<dyn ObjectStore>,
    /// For errors and logs: the URL or the store's description plus the prefix.
    describe: String,
    options: ObjectOptions,
    single_writer: bool,
    view: Mutex<View>,
    /// One queue per page, so this process's writers never race each other.
    page_locks: Mutex<HashMap<u64, Arc<AsyncMutex<()>>>>,
    head_lock: AsyncMutex<()>,
    /// Segments uploaded whose indices are not claimed yet: not orphans.
    in_flight: Mutex<HashSet<SegmentId>>,
    closed: AtomicBool,
}

/// The pages this instance has read, and a hash → index map over them.
#[derive(Default)]
struct View {
    pages: BTreeMap<u64, Cached>,
    by_hash: BlockHashMap<u64>,
}

#[derive(Clone)]
struct Cached {
    version: UpdateVersion,
    page: Arc<Page>,
    totals: PageTotals,
}

impl View {
    fn entry(&self, index: u64) -> Option<&Entry> {
        self.pages.get(&page_of(index))?.page.entries.get(&index)
    }

    fn lookup(&self, hash: &BlockHash) -> Option<Entry> {
        let index = *self.by_hash.get(hash)?;
        self.entry(index).filter(|e| e.meta.hash == *hash).cloned()
    }

    fn etag(&self, page: u64) -> Option<Option<String>> {
        self.pages.get(&page).map(|c| c.version.e_tag.clone())
    }

    /// Replaces (or with `None` drops) a page and its hashes.
    fn install(&mut self, number: u64, page: Option<Cached>) {
        if let Some(old) = self.pages.remove(&number) {
            for (index, e) in &old.page.entries {
                if self.by_hash.get(&e.meta.hash) == Some(index) {
                    self.by_hash.remove(&e.meta.hash);
                }
            }
        }
        if let Some(new) = page {
            for (index, e) in &new.page.entries {
                self.by_hash.insert(e.meta.hash, *index);
            }
            self.pages.insert(number, new);
        }
    }

    fn totals(&self) -> PageTotals {
        let mut all = PageTotals::default();
        for c in self.pages.values() {
            let t = c.totals;
            all.count += t.count;
            all.size_bytes += t.size_bytes;
            all.stored_bytes += t.stored_bytes;
            all.time_range = match (all.time_range, t.time_range) {
                (None, r) | (r, None) => r,
                (Some((a, b)), Some((c, d))) => Some((a.min(c), b.max(d))),
            };
        }
        all
    }
}

impl Cached {
    fn new(version: UpdateVersion, page: Page) -> Self {
        let totals = page.totals();
        Self {
            version,
            page: Arc::new(page),
            totals,
        }
    }
}

/// Result of a conditional PUT.
enum Put {
    Done(UpdateVersion),
    /// Create-if-absent found the object, or `If-Match` found another version.
    Lost,
}

/// ETags compare without surrounding quotes: some servers quote them in one
/// response and not in another.
fn same_etag(a: &Option<String>, b: &Option<String>) -> bool {
    let norm = |e: &Option<String>| e.as_deref().map(|s| s.trim_matches('"').to_owned());
    norm(a) == norm(b)
}

impl std::fmt::Debug for ObjectStoreBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStoreBackend")
            .field("store", &self.inner.describe)
            .field("single_writer", &self.inner.single_writer)
            .finish_non_exhaustive()
    }
}

impl ObjectStoreBackend {
    /// Opens the chain at `config.url` (see [`ObjectStoreConfig`]) and reads its
    /// index pages.
    pub async fn open(config: ObjectStoreConfig) -> Result<Self> {
        let built = config.build()?;
        let describe = config.url.clone();
        Self::start(
            built.store,
            built.prefix,
            describe,
            config.options,
            built.single_writer,
        )
        .await
    }

    /// Opens the chain under `prefix` in any object store that supports
    /// conditional PUTs (create-if-absent and `If-Match`), e.g. S3 or
    /// object_store's in-memory store.
    pub async fn with_store(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        options: ObjectOptions,
    ) -> Result<Self> {
        let describe = format!("{store}/{prefix}");
        Self::start(store, parse_prefix(prefix)?, describe, options, false).await
    }

    /// Like [`ObjectStoreBackend::with_store`] for stores without conditional
    /// updates (object_store's local-file store): updates are serialised inside
    /// this instance, so only one process may write the chain at a time.
    pub async fn with_store_single_writer(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        options: ObjectOptions,
    ) -> Result<Self> {
        let describe = format!("{store}/{prefix}");
        Self::start(store, parse_prefix(prefix)?, describe, options, true).await
    }

    async fn start(
        store: Arc<dyn ObjectStore>,
        prefix: Path,
        describe: String,
        options: ObjectOptions,
        single_writer: bool,
    ) -> Result<Self> {
        options.validate()?;
        let store: Arc<dyn ObjectStore> = if prefix.as_ref().is_empty() {
            store
        } else {
            Arc::new(PrefixStore::new(store, prefix))
        };
        let backend = Self {
            inner: Arc::new(Inner {
                store,
                describe,
                options,
                single_writer,
                view: Mutex::new(View::default()),
                page_locks: Mutex::new(HashMap::new()),
                head_lock: AsyncMutex::new(()),
                in_flight: Mutex::new(HashSet::new()),
                closed: AtomicBool::new(false),
            }),
            gate: Arc::new(Gate::new()),
        };
        let span = op_span(NAME, "open");
        in_span_async(span, async {
            // A GET first: object_store types a refused GET (wrong credentials:
            // `Configuration`), where a refused LIST is only a generic error.
            backend.inner.read_head().await?;
            backend.inner.refresh().await
        })
        .await?;
        Ok(backend)
    }

    /// The options in use.
    pub fn options(&self) -> &ObjectOptions {
        &self.inner.options
    }

    /// The store, scoped to this chain's prefix (for tools and tests that inspect
    /// or repair objects).
    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        self.inner.store.clone()
    }

    /// Where block `hash` is stored: its segment (relative to the prefix) and byte
    /// range; `None` if it is not stored.
    pub async fn locate(&self, hash: &BlockHash) -> Result<Option<(Path, Range<u64>)>> {
        self.inner.check_open()?;
        Ok(self
            .inner
            .lookup_fresh(hash)
            .await?
            .map(|e| (e.segment.path(), e.range())))
    }
}

fn parse_prefix(prefix: &str) -> Result<Path> {
    Path::parse(prefix.trim_matches('/'))
        .map_err(|e| StorageError::Configuration(format!("object store prefix {prefix:?}: {e}")))
}

impl Inner {
    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StorageError::closed(NAME));
        }
        Ok(())
    }

    fn view(&self) -> MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|p| p.into_inner())
    }

    // ---- requests -------------------------------------------------------------

    /// Runs one store call under the call deadline.
    async fn call<T>(
        &self,
        op: &str,
        path: &Path,
        fut: impl Future<Output = object_store::Result<T>>,
    ) -> Result<object_store::Result<T>> {
        let after = self.options.call_deadline();
        tokio::time::timeout(after, fut)
            .await
            .map_err(|_| StorageError::Timeout {
                operation: format!("object store {op} of {path} on {}", self.describe),
                after,
            })
    }

    fn fail(&self, op: &str, path: &Path, e: object_store::Error) -> StorageError {
        use object_store::Error as E;
        let context = format!("{op} of {path} on {}", self.describe);
        match e {
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
                StorageError::Configuration(format!("object store refused access: {context}: {e}"))
            }
            E::NotImplemented { .. } | E::NotSupported { .. } => {
                StorageError::backend(NAME, context, ErrorStatus::Permanent, e)
            }
            // object_store's own retries are exhausted: 5xx, connection and
            // timeout errors persisted.
            _ => StorageError::backend(NAME, context, ErrorStatus::Persistent, e),
        }
    }

    async fn get(&self, path: &Path) -> Result<Option<(Bytes, UpdateVersion)>> {
        let r = self
            .call("GET", path, async {
                let got = self.store.get(path).await?;
                let version = UpdateVersion {
                    e_tag: got.meta.e_tag.clone(),
                    version: got.meta.version.clone(),
                };
                Ok((got.bytes().await?, version))
            })
            .await?;
        match r {
            Ok(v) => Ok(Some(v)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.fail("GET", path, e)),
        }
    }

    /// Ranges of one segment. A segment too short for a range its index entries
    /// name was cut (damage), which is [`StorageError::Corrupted`]; stores report
    /// such a request only as a generic error, so its size is checked then.
    async fn get_ranges(&self, path: &Path, ranges: &[Range<u64>]) -> Result<Option<Vec<Bytes>>> {
        let end = ranges.iter().map(|r| r.end).max().unwrap_or(0);
        let truncated = |size: u64| {
            StorageError::corrupted(format!(
                "object store: segment {path} on {} is {size} bytes, but its index entries \
                 reach byte {end} (truncated)",
                self.describe
            ))
        };
        match self
            .call("ranged GET", path, self.store.get_ranges(path, ranges))
            .await?
        {
            Ok(v) => {
                if v.iter()
                    .zip(ranges)
                    .any(|(b, r)| b.len() as u64 != r.end - r.start)
                {
                    return Err(truncated(v.iter().map(|b| b.len() as u64).sum()));
                }
                Ok(Some(v))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => match self.call("HEAD", path, self.store.head(path)).await? {
                Ok(meta) if meta.size < end => Err(truncated(meta.size)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                _ => Err(self.fail("ranged GET", path, e)),
            },
        }
    }

    async fn put(&self, path: &Path, bytes: Vec<u8>, mode: PutMode) -> Result<Put> {
        let opts = PutOptions {
            mode,
            ..Default::default()
        };
        let payload = PutPayload::from(bytes);
        match self
            .call("PUT", path, self.store.put_opts(path, payload, opts))
            .await?
        {
            Ok(r) => Ok(Put::Done(UpdateVersion {
                e_tag: r.e_tag,
                version: r.version,
            })),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Ok(Put::Lost),
            Err(e) => Err(self.fail("PUT", path, e)),
        }
    }

    async fn delete(&self, path: &Path) -> Result<()> {
        match self.call("DELETE", path, self.store.delete(path)).await? {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.fail("DELETE", path, e)),
        }
    }

    async fn list(&self, dir: &str) -> Result<Vec<ObjectMeta>> {
        let path = Path::from(dir);
        match self
            .call(
                "LIST",
                &path,
                self.store.list(Some(&path)).try_collect::<Vec<_>>(),
            )
            .await?
        {
            Ok(v) => Ok(v),
            Err(e) => Err(self.fail("LIST", &path, e)),
        }
    }

    // ---- pages ----------------------------------------------------------------

    async fn fetch_page(&self, number: u64) -> Result<Option<Cached>> {
        let path = page_path(number);
        Ok(match self.get(&path).await? {
            None => None,
            Some((bytes, version)) => Some(Cached::new(version, Page::decode(number, &bytes)?)),
        })
    }

    /// Brings the view up to date with the store: one LIST of `idx/`, then a GET
    /// of each page whose ETag differs from the one held. A page is replaced only
    /// if this instance did not change it meanwhile (its own writes are newer).
    async fn refresh(&self) -> Result<()> {
        let listed = self.list(PAGES_DIR).await?;
        let stale: Vec<(u64, Option<Option<String>>)> = {
            let view = self.view();
            let mut seen = HashSet::with_capacity(listed.len());
            let mut stale = Vec::new();
            for m in &listed {
                let Some(n) = page_from_path(&m.location) else {
                    continue;
                };
                seen.insert(n);
                let held = view.etag(n);
                if !held.as_ref().is_some_and(|e| same_etag(e, &m.e_tag)) {
                    stale.push((n, held));
                }
            }
            // Pages we hold that the listing lacks: check each (never dropped on
            // the listing's word, which may predate our own create).
            stale.extend(
                view.pages
                    .iter()
                    .filter(|(n, _)| !seen.contains(n))
                    .map(|(n, c)| (*n, Some(c.version.e_tag.clone()))),
            );
            stale
        };
        let fetches = stale.into_iter().map(|(n, held)| async move {
            Ok::<_, StorageError>((n, held, self.fetch_page(n).await?))
        });
        let fetched: Vec<_> = bounded(fetches, self.options.parallelism)
            .try_collect()
            .await?;
        let mut view = self.view();
        for (n, held, page) in fetched {
            if view.etag(n) == held {
                view.install(n, page);
            }
        }
        Ok(())
    }

    fn page_lock(&self, number: u64) -> Arc<AsyncMutex<()>> {
        self.page_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(number)
            .or_default()
            .clone()
    }

    /// Changes page `number` with compare-and-swap. `change` sees the current page
    /// (empty if absent) and returns the new one, or `None` to leave it. If another
    /// writer changed the page first, it is read again and `change` runs again.
    async fn update_page(
        &self,
        number: u64,
        mut change: impl FnMut(&Page) -> Result<Option<Page>>,
    ) -> Result<()> {
        let lock = self.page_lock(number);
        let _queued = lock.lock().await;
        let path = page_path(number);
        for attempt in 0..CAS_ATTEMPTS {
            let held = self.view().pages.get(&number).cloned();
            let empty = Page::default();
            let Some(next) = change(held.as_ref().map_or(&empty, |c| &c.page))? else {
                return Ok(());
            };
            let mode = self.cas_mode(&path, held.as_ref().map(|c| &c.version))?;
            match self.put(&path, next.encode(number), mode).await? {
                Put::Done(version) => {
                    self.view()
                        .install(number, Some(Cached::new(version, next)));
                    return Ok(());
                }
                Put::Lost => {
                    // Another writer got there first: read its version, retry.
                    let fresh = self.fetch_page(number).await?;
                    self.view().install(number, fresh);
                    tracing::debug!(page = number, attempt, "page changed under us; retrying");
                    backoff(attempt).await;
                }
            }
        }
        Err(self.gave_up(&path))
    }

    /// How to replace `path`, read at version `held`: create-if-absent when it was
    /// absent, `If-Match` on its version otherwise (a plain overwrite for a single
    /// writer).
    fn cas_mode(&self, path: &Path, held: Option<&UpdateVersion>) -> Result<PutMode> {
        Ok(match held {
            None => PutMode::Create,
            Some(_) if self.single_writer => PutMode::Overwrite,
            Some(v) if v.e_tag.is_none() && v.version.is_none() => {
                return Err(StorageError::backend_msg(
                    NAME,
                    format!(
                        "updating {path}: {} returned no ETag or version, so conditional \
                         updates are impossible (use with_store_single_writer for one writer)",
                        self.describe
                    ),
                    ErrorStatus::Permanent,
                ));
            }
            Some(v) => PutMode::Update(v.clone()),
        })
    }

    /// A compare-and-swap on `path` lost [`CAS_ATTEMPTS`] times in a row.
    fn gave_up(&self, path: &Path) -> StorageError {
        StorageError::backend_msg(
            NAME,
            format!(
                "updating {path} on {}: it kept changing; gave up after {CAS_ATTEMPTS} attempts",
                self.describe
            ),
            ErrorStatus::Persistent,
        )
    }

    /// The entry for `hash`, refreshing the view once if it is unknown.
    async fn lookup_fresh(&self, hash: &BlockHash) -> Result<Option<Entry>> {
        if let Some(e) = self.view().lookup(hash) {
            return Ok(Some(e));
        }
        self.refresh().await?;
        Ok(self.view().lookup(hash))
    }

    // ---- blocks ---------------------------------------------------------------

    /// Reads the blocks of `entries` (any order, any segments): one ranged GET per
    /// segment, `parallelism` segments at a time. A block whose segment has gone
    /// (compacted by another writer) is looked up again; one deleted meanwhile is
    /// `None`.
    async fn read_entries(&self, entries: &[Entry]) -> Result<Vec<Option<Block>>> {
        let mut out = vec![None; entries.len()];
        for (idx, got) in self.fetch_records(entries).await? {
            match got {
                Some(bytes) => {
                    for (i, b) in idx.into_iter().zip(bytes) {
                        out[i] = Some(entries[i].decode(&b)?);
                    }
                }
                None => {
                    for i in idx {
                        out[i] = self.read_moved(&entries[i]).await?;
                    }
                }
            }
        }
        Ok(out)
    }

    /// The records of `entries`, grouped by segment: one ranged GET per segment,
    /// `parallelism` segments at a time. Each group gives the positions of its
    /// entries in `entries` and their bytes, or `None` if the segment is gone.
    async fn fetch_records(
        &self,
        entries: &[Entry],
    ) -> Result<Vec<(Vec<usize>, Option<Vec<Bytes>>)>> {
        let mut by_segment: BTreeMap<SegmentId, Vec<usize>> = BTreeMap::new();
        for (i, e) in entries.iter().enumerate() {
            by_segment.entry(e.segment).or_default().push(i);
        }
        let reads = by_segment.into_iter().map(|(seg, idx)| async move {
            let ranges: Vec<_> = idx.iter().map(|&i| entries[i].range()).collect();
            let got = self.get_ranges(&seg.path(), &ranges).await?;
            Ok::<_, StorageError>((idx, got))
        });
        bounded(reads, self.options.parallelism).try_collect().await
    }

    /// `entry`'s segment was not found: re-read its page; the block was moved (read
    /// it there), deleted (`None`), or its segment is lost (`Corrupted`).
    async fn read_moved(&self, entry: &Entry) -> Result<Option<Block>> {
        let number = page_of(entry.meta.index);
        let fresh = self.fetch_page(number).await?;
        {
            let mut view = self.view();
            if view.etag(number).is_some() || fresh.is_some() {
                view.install(number, fresh);
            }
        }
        let now = self.view().lookup(&entry.meta.hash);
        match now {
            None => Ok(None),
            Some(e) if e.segment != entry.segment => {
                let path = e.segment.path();
                match self.get_ranges(&path, &[e.range()]).await? {
                    Some(bytes) => Ok(Some(e.decode(&bytes[0])?)),
                    None => Err(missing_segment(&e)),
                }
            }
            Some(e) => Err(missing_segment(&e)),
        }
    }

    async fn store_many(&self, blocks: &[Block]) -> Result<Vec<BlockHash>> {
        let hashes: Vec<BlockHash> = blocks.iter().map(Block::hash).collect();
        // Fail fast, before uploading anything, on what this instance already
        // knows; the claims below decide for good.
        let mut ordered: Vec<&Block> = {
            let view = self.view();
            admit(
                blocks,
                &mut ChainViewFn(
                    |i| Ok(view.entry(i).map(|e| e.meta.hash)),
                    |i| Ok(view.entry(i).map(|e| e.previous)),
                ),
            )?
            .into_iter()
            .map(|p| &blocks[p])
            .collect()
        };
        if ordered.is_empty() {
            return Ok(hashes);
        }
        ordered.sort_by_key(|b| b.index());
        let segment = SegmentId::random()?;
        let (bytes, entries) = encode_segment(segment, self.options.format, &ordered)?;
        self.in_flight_mark(segment, true);
        let result = self
            .upload_and_claim(segment, bytes, &ordered, entries)
            .await;
        self.in_flight_mark(segment, false);
        result.map(|()| hashes)
    }

    fn in_flight_mark(&self, segment: SegmentId, on: bool) {
        let mut set = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if on {
            set.insert(segment);
        } else {
            set.remove(&segment);
        }
    }

    async fn upload_and_claim(
        &self,
        segment: SegmentId,
        bytes: Vec<u8>,
        blocks: &[&Block],
        entries: Vec<Entry>,
    ) -> Result<()> {
        let path = segment.path();
        // A plain PUT: the name is 128 random bits, and an unconditional PUT may be
        // retried after a lost response, where create-if-absent would then fail.
        self.put(&path, bytes, PutMode::Overwrite).await?;
        // Claim page by page; pages in parallel.
        let mut per_page: BTreeMap<u64, Vec<(&Block, Entry)>> = BTreeMap::new();
        for (b, e) in blocks.iter().zip(entries) {
            per_page.entry(page_of(b.index())).or_default().push((b, e));
        }
        let claims = per_page
            .iter()
            .map(|(&number, items)| async move { (number, self.claim(number, items).await) });
        let outcomes: Vec<(u64, Result<()>)> =
            bounded(claims, self.options.parallelism).collect().await;
        let Some(err) = outcomes
            .iter()
            .filter_map(|(n, r)| r.as_ref().err().map(|e| (*n, e)))
            .min_by_key(|(n, _)| *n)
            .map(|(n, _)| n)
        else {
            return Ok(());
        };
        // Undo the pages that were claimed, then drop the segment if nothing else
        // references it; compact removes whatever a failure here leaves.
        let mut first_error = None;
        for (number, r) in outcomes {
            match r {
                Ok(()) => {
                    let undo = self
                        .update_page(number, |page| {
                            let mut next = page.clone();
                            next.entries.retain(|_, e| e.segment != segment);
                            Ok((next.entries.len() != page.entries.len()).then_some(next))
                        })
                        .await;
                    if let Err(e) = undo {
                        tracing::warn!(page = number, error = %e, "could not undo a failed batch's claim");
                    }
                }
                Err(e) if number == err => first_error = Some(e),
                Err(_) => {}
            }
        }
        let referenced = self
            .view()
            .pages
            .values()
            .any(|c| c.page.entries.values().any(|e| e.segment == segment));
        if !referenced && let Err(e) = self.delete(&path).await {
            tracing::debug!(segment = %segment, error = %e, "orphan segment left for compact");
        }
        Err(first_error.expect("a failed page was found"))
    }

    /// Claims the indices of `items` in one page, checking conflicts and the links
    /// to neighbours in the same page against its current version.
    async fn claim(&self, number: u64, items: &[(&Block, Entry)]) -> Result<()> {
        self.update_page(number, |page| {
            let claimed: Vec<&Block> = items.iter().map(|(b, _)| *b).collect();
            let fresh = admit(
                &claimed,
                &mut ChainViewFn(
                    |i| Ok(page.entries.get(&i).map(|e| e.meta.hash)),
                    |i| Ok(page.entries.get(&i).map(|e| e.previous)),
                ),
            )?;
            if fresh.is_empty() {
                return Ok(None);
            }
            let mut next = page.clone();
            for p in fresh {
                let (b, e) = &items[p];
                next.entries.insert(b.index(), e.clone());
            }
            Ok(Some(next))
        })
        .await
    }

    // ---- head -----------------------------------------------------------------

    async fn read_head(&self) -> Result<Option<(Option<BlockHash>, UpdateVersion)>> {
        let path = Path::from(HEAD_OBJECT);
        match self.get(&path).await? {
            None => Ok(None),
            Some((bytes, version)) => Ok(Some((decode_head(&bytes)?, version))),
        }
    }

    /// Changes the head with compare-and-swap: `change` gets the current head and
    /// returns the new one, or `None` to leave it.
    async fn update_head(
        &self,
        change: impl Fn(Option<BlockHash>) -> Option<Option<BlockHash>>,
    ) -> Result<()> {
        let _queued = self.head_lock.lock().await;
        let path = Path::from(HEAD_OBJECT);
        for attempt in 0..CAS_ATTEMPTS {
            let current = self.read_head().await?;
            let Some(next) = change(current.as_ref().and_then(|(h, _)| *h)) else {
                return Ok(());
            };
            let mode = self.cas_mode(&path, current.as_ref().map(|(_, v)| v))?;
            match self.put(&path, encode_head(next.as_ref()), mode).await? {
                Put::Done(_) => return Ok(()),
                Put::Lost => backoff(attempt).await,
            }
        }
        Err(self.gave_up(&path))
    }

    // ---- maintenance ----------------------------------------------------------

    async fn compact(&self) -> Result<()> {
        self.refresh().await?;
        let listed = self.list(SEGMENTS_DIR).await?;
        let mut live: HashMap<SegmentId, Vec<Entry>> = HashMap::new();
        for c in self.view().pages.values() {
            for e in c.page.entries.values() {
                live.entry(e.segment).or_default().push(e.clone());
            }
        }
        let in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let now = SystemTime::now();
        let small = self.options.compact_segment_bytes / 4;
        let mut orphans = Vec::new();
        let mut repack: Vec<Entry> = Vec::new();
        let mut repacked = Vec::new();
        let mut any_dead = false;
        for m in &listed {
            let Some(seg) = SegmentId::from_path(&m.location) else {
                continue;
            };
            if in_flight.contains(&seg) {
                continue;
            }
            match live.get(&seg) {
                None => {
                    let modified = system_time_from_unix_nanos(
                        u64::try_from(m.last_modified.timestamp_nanos_opt().unwrap_or(0))
                            .unwrap_or(0),
                    );
                    let age = now.duration_since(modified).unwrap_or(Duration::ZERO);
                    if age >= self.options.orphan_grace {
                        orphans.push(seg);
                    }
                }
                Some(entries) => {
                    let live_bytes: u64 = entries.iter().map(|e| u64::from(e.len)).sum();
                    let dead = m.size > SEGMENT_HEADER_LEN + live_bytes;
                    if dead || m.size < small {
                        any_dead |= dead;
                        repack.extend(entries.iter().cloned());
                        repacked.push(seg);
                    }
                }
            }
        }
        // Repacking one small, whole segment into another gains nothing.
        if any_dead || repacked.len() >= 2 {
            repack.sort_by_key(|e| e.meta.index);
            let limit = self.options.compact_segment_bytes;
            let mut start = 0;
            while start < repack.len() {
                let mut end = start + 1;
                let mut size = u64::from(repack[start].len);
                while end < repack.len() && size + u64::from(repack[end].len) <= limit {
                    size += u64::from(repack[end].len);
                    end += 1;
                }
                self.move_entries(&repack[start..end]).await?;
                start = end;
            }
        }
        // Segments nothing references any more: repacked ones and orphans. Checked
        // again now: this process's writers may have claimed one meanwhile.
        let mut keep: HashSet<SegmentId> = self
            .view()
            .pages
            .values()
            .flat_map(|c| c.page.entries.values().map(|e| e.segment))
            .collect();
        keep.extend(
            self.in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter(),
        );
        let doomed: Vec<Path> = repacked
            .into_iter()
            .chain(orphans)
            .filter(|s| !keep.contains(s))
            .map(|s| s.path())
            .collect();
        let deletes = doomed
            .into_iter()
            .map(|p| async move { self.delete(&p).await });
        bounded(deletes, self.options.parallelism)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Copies the records of `entries` into one new segment and points their index
    /// entries at it (only entries still pointing where they did). Records that no
    /// longer decode, or whose segment has gone, stay as they are.
    async fn move_entries(&self, entries: &[Entry]) -> Result<()> {
        let groups = self.fetch_records(entries).await?;
        let segment = SegmentId::random()?;
        let mut bytes = encode_segment(segment, self.options.format, &[])?.0;
        let mut moves: BTreeMap<u64, Vec<(Entry, Entry)>> = BTreeMap::new();
        for (idx, got) in groups {
            let Some(records) = got else { continue };
            for (i, record) in idx.into_iter().zip(records) {
                let e = &entries[i];
                if let Err(err) = e.decode(&record) {
                    tracing::warn!(error = %err, "compact leaves a damaged record in place");
                    continue;
                }
                let mut moved = e.clone();
                moved.segment = segment;
                moved.offset = bytes.len() as u64;
                bytes.extend_from_slice(&record);
                moves
                    .entry(page_of(e.meta.index))
                    .or_default()
                    .push((e.clone(), moved));
            }
        }
        if moves.is_empty() {
            return Ok(());
        }
        self.in_flight_mark(segment, true);
        let result = async {
            self.put(&segment.path(), bytes, PutMode::Overwrite).await?;
            for (number, items) in &moves {
                self.update_page(*number, |page| {
                    let mut next = page.clone();
                    let mut changed = false;
                    for (old, new) in items {
                        if let Some(e) = next.entries.get_mut(&old.meta.index)
                            && e == old
                        {
                            *e = new.clone();
                            changed = true;
                        }
                    }
                    Ok(changed.then_some(next))
                })
                .await?;
            }
            Ok(())
        }
        .await;
        self.in_flight_mark(segment, false);
        result
    }
}

fn missing_segment(e: &Entry) -> StorageError {
    StorageError::corrupted(format!(
        "object store: segment {} holding block {} (index {}) is missing",
        e.segment.path(),
        e.meta.hash,
        e.meta.index
    ))
}

/// Runs `futs` at most `limit` at a time, results in completion order. The
/// futures are built before streaming: a stream that holds a closure over
/// borrowed items fails the compiler's lifetime check inside `async_trait`
/// methods.
fn bounded<F: Future>(
    futs: impl Iterator<Item = F>,
    limit: usize,
) -> impl futures::Stream<Item = F::Output> {
    futures::stream::iter(futs.collect::<Vec<_>>()).buffer_unordered(limit)
}

/// A short, jittered pause before retrying a lost compare-and-swap, so two
/// writers do not keep colliding in lockstep.
async fn backoff(attempt: u32) {
    let mut r = [0u8; 2];
    let _ = getrandom::fill(&mut r);
    let jitter = u64::from(u16::from_le_bytes(r)) % 20;
    let ms = (5u64 << attempt.min(5)) + jitter;
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

impl Engine for ObjectStoreBackend {
    fn name(&self) -> &str {
        NAME
    }

    fn gate(&self) -> &Gate {
        &self.gate
    }

    fn max_payload_bytes(&self) -> usize {
        self.inner.options.max_payload_bytes
    }

    async fn write_blocks(&self, blocks: &[Block]) -> Result<()> {
        self.inner.store_many(blocks).await.map(|_| ())
    }

    async fn read_block(&self, hash: &BlockHash) -> Result<Option<Block>> {
        async {
            let Some(entry) = self.inner.lookup_fresh(hash).await? else {
                return Ok(None);
            };
            Ok(self.inner.read_entries(&[entry]).await?.pop().flatten())
        }
        .await
    }

    async fn remove_block(&self, hash: &BlockHash) -> Result<bool> {
        async {
            let Some(entry) = self.inner.lookup_fresh(hash).await? else {
                return Ok(false);
            };
            let index = entry.meta.index;
            let mut removed = false;
            self.inner
                .update_page(page_of(index), |page| {
                    removed = page
                        .entries
                        .get(&index)
                        .is_some_and(|e| e.meta.hash == *hash);
                    if !removed {
                        return Ok(None);
                    }
                    let mut next = page.clone();
                    next.entries.remove(&index);
                    Ok(Some(next))
                })
                .await?;
            if removed {
                // Entry first, then the head: a crash between leaves a head naming
                // a missing block, which reads as no head.
                let hash = *hash;
                self.inner
                    .update_head(|h| (h == Some(hash)).then_some(None))
                    .await?;
            }
            Ok(removed)
        }
        .await
    }

    async fn has_block(&self, hash: &BlockHash) -> Result<bool> {
        async { Ok(self.inner.lookup_fresh(hash).await?.is_some()) }.await
    }

    async fn read_blocks(&self, hashes: &[BlockHash]) -> Result<Vec<Option<Block>>> {
        async {
            let mut found: Vec<Option<Entry>> = {
                let view = self.inner.view();
                hashes.iter().map(|h| view.lookup(h)).collect()
            };
            if found.iter().any(Option::is_none) {
                self.inner.refresh().await?;
                let view = self.inner.view();
                for (slot, h) in found.iter_mut().zip(hashes) {
                    if slot.is_none() {
                        *slot = view.lookup(h);
                    }
                }
            }
            let wanted: Vec<Entry> = found.iter().flatten().cloned().collect();
            let mut blocks = self.inner.read_entries(&wanted).await?.into_iter();
            Ok(found
                .iter()
                .map(|f| f.as_ref().and_then(|_| blocks.next().flatten()))
                .collect())
        }
        .await
    }

    async fn list(&self, options: &ListOptions) -> Result<Vec<BlockMetadata>> {
        async {
            self.inner.refresh().await?;
            let Some((lo, hi)) = options.index_range() else {
                return Ok(Vec::new());
            };
            let view = self.inner.view();
            let pages = view.pages.range(page_of(lo)..=page_of(hi));
            let skip = usize::try_from(options.offset.unwrap_or(0)).unwrap_or(usize::MAX);
            let take = usize::try_from(options.limit.unwrap_or(u64::MAX)).unwrap_or(usize::MAX);
            // Pages are in index order, so index orders stream and stop at `limit`;
            // timestamp order sorts the matches.
            let out = match options.order {
                SortOrder::Ascending | SortOrder::ByIndex => pages
                    .flat_map(|(_, c)| c.page.entries.range(lo..=hi).map(|(_, e)| &e.meta))
                    .filter(|m| options.matches(m))
                    .skip(skip)
                    .take(take)
                    .cloned()
                    .collect(),
                SortOrder::Descending => pages
                    .rev()
                    .flat_map(|(_, c)| c.page.entries.range(lo..=hi).rev().map(|(_, e)| &e.meta))
                    .filter(|m| options.matches(m))
                    .skip(skip)
                    .take(take)
                    .cloned()
                    .collect(),
                SortOrder::ByTimestamp => options.apply(
                    pages
                        .flat_map(|(_, c)| c.page.entries.range(lo..=hi).map(|(_, e)| &e.meta))
                        .filter(|m| options.matches(m))
                        .cloned(),
                ),
            };
            Ok(out)
        }
        .await
    }

    async fn count(&self) -> Result<u64> {
        async {
            self.inner.refresh().await?;
            Ok(self.inner.view().totals().count)
        }
        .await
    }

    async fn head(&self) -> Result<Option<BlockHash>> {
        async {
            let Some((Some(head), _)) = self.inner.read_head().await? else {
                return Ok(None);
            };
            Ok(self.inner.lookup_fresh(&head).await?.map(|_| head))
        }
        .await
    }

    async fn write_head(&self, hash: &BlockHash) -> Result<()> {
        async {
            if self.inner.lookup_fresh(hash).await?.is_none() {
                return Err(StorageError::BlockNotFound { hash: *hash });
            }
            let hash = *hash;
            self.inner
                .update_head(|h| (h != Some(hash)).then_some(Some(hash)))
                .await
        }
        .await
    }

    async fn read_range(&self, start: u64, end: u64) -> Result<Vec<Block>> {
        async {
            self.inner.refresh().await?;
            let entries: Vec<Entry> = {
                let view = self.inner.view();
                view.pages
                    .range(page_of(start)..=page_of(end))
                    .flat_map(|(_, c)| c.page.entries.range(start..=end).map(|(_, e)| e.clone()))
                    .collect()
            };
            Ok(self
                .inner
                .read_entries(&entries)
                .await?
                .into_iter()
                .flatten()
                .collect())
        }
        .await
    }

    async fn run_compaction(&self) -> Result<()> {
        self.inner.compact().await
    }

    async fn run_vacuum(&self) -> Result<()> {
        // Deleted objects are freed by the store itself; there is nothing to return.
        async { Err(StorageError::unsupported(NAME, "vacuum")) }.await
    }

    async fn stats(&self) -> Result<StorageStats> {
        async {
            self.inner.refresh().await?;
            let view = self.inner.view();
            let t = view.totals();
            let values = [
                ("index_pages", view.pages.len() as f64),
                ("page_slots", PAGE_SLOTS as f64),
                ("stored_bytes", t.stored_bytes as f64),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
            Ok(StorageStats {
                total_blocks: t.count,
                total_size_bytes: t.size_bytes,
                oldest_block: t.time_range.map(|(lo, _)| system_time_from_unix_nanos(lo)),
                newest_block: t.time_range.map(|(_, hi)| system_time_from_unix_nanos(hi)),
                backend_specific: BackendStats::Other {
                    backend: NAME.into(),
                    values,
                },
            })
        }
        .await
    }

    async fn shutdown(&self) -> Result<()> {
        // Every write is acknowledged only once the store has it: nothing to flush.
        self.inner.closed.store(true, Ordering::Release);
        Ok(())
    }
}
