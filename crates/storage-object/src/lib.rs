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
//! an index entry without its block; [`StorageBackend::compact`](storage_core::StorageBackend::compact) removes such
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

mod backend;
mod claim;
mod client;
mod compact;
mod config;
// Public for this crate's tests and the benchmarks (building damaged stores);
// not part of the API.
#[doc(hidden)]
pub mod layout;
mod view;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::ops::Range;
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
    BackendStats, Block, BlockHash, BlockHashMap, BlockMetadata, Capabilities, ErrorStatus,
    ListOptions, OpenMode, Result, SortOrder, StorageError, StorageStats,
    system_time_from_unix_nanos,
};
use tokio::sync::Mutex as AsyncMutex;

pub use config::{CLUSTER_ENV, ObjectOptions, ObjectStoreConfig};
pub use layout::PAGE_SLOTS;
use layout::{
    Entry, HEAD_OBJECT, PAGES_DIR, Page, PageTotals, SEGMENT_HEADER_LEN, SEGMENTS_DIR, SegmentId,
    decode_head, encode_head, encode_segment, page_from_path, page_of, page_path,
};

use client::{Put, bounded, cas_delays, same_etag};

const NAME: &str = "object";

/// Attempts at one compare-and-swap before giving up with a persistent error.
const CAS_ATTEMPTS: u32 = 50;

/// A [`StorageBackend`](storage_core::StorageBackend) over an object store. See the crate docs for the layout.
#[derive(Clone)]
pub struct ObjectStoreBackend {
    inner: Arc<Inner>,
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
    /// Refuses calls after close; shared by clones of the backend.
    gate: Gate,
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

impl Inner {
    pub(crate) fn check_open(&self) -> Result<()> {
        if self.gate.is_closed() {
            return Err(StorageError::closed(NAME));
        }
        Ok(())
    }

    pub(crate) fn view(&self) -> MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|p| p.into_inner())
    }
}

// The README's examples are compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
