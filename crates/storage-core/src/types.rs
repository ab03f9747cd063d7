//! Query options, metadata and statistics types.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::{Block, BlockHash, PublicKey, unix_nanos};

/// Options for [`crate::StorageBackend::list_blocks`], built with chained
/// setters.
///
/// Filters combine with AND. Time bounds are inclusive. The result is sorted by
/// [`SortOrder`]; then, if a cursor is set ([`ListOptions::after`]), only entries
/// after it in that order remain; then `offset` entries are skipped and at most
/// `limit` returned.
///
/// Page through a listing with a cursor, not an offset: each backend seeks to
/// the cursor in its index, so every page costs the same however deep it is,
/// and blocks stored meanwhile never shift a page (no duplicates, no skips).
/// [`crate::StorageBackendExt::stream_list`] does this for you.
///
/// ```
/// use storage_core::{ListCursor, ListOptions};
/// # use storage_core::{BlockMetadata, StorageBackend};
/// # async fn pages(store: &dyn StorageBackend) -> storage_core::Result<()> {
/// let mut options = ListOptions::new().by_timestamp().payload_type("sensor.reading/v1").limit(100);
/// loop {
///     let page = store.list_blocks(&options).await?;
///     let Some(last) = page.last() else { break };
///     options = options.after(ListCursor::after(last));
///     // ... use the page ...
/// }
/// # Ok(()) }
/// ```
///
/// New fields may be added in later versions; build options with
/// [`ListOptions::new`] and the setters rather than a struct literal.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ListOptions {
    /// Maximum number of entries returned; `Some(0)` returns none.
    pub limit: Option<u64>,
    /// Entries to skip after sorting (and after the cursor); may exceed the number
    /// of matches.
    pub offset: Option<u64>,
    /// Only blocks with `timestamp >= start_time`.
    pub start_time: Option<SystemTime>,
    /// Only blocks with `timestamp <= end_time`.
    pub end_time: Option<SystemTime>,
    /// Result order.
    pub order: SortOrder,
    /// Field filters.
    pub filter: Option<BlockFilter>,
    /// Only entries after this position in `order` (keyset paging).
    #[serde(default)]
    pub after: Option<ListCursor>,
}

/// A position in a listing, for keyset paging with [`ListOptions::after`]: the
/// listing continues with the entries after it in the listing's order.
///
/// In index orders only the index counts; in [`SortOrder::ByTimestamp`] the
/// position is the timestamp, then the index. Take it from the last entry of a
/// page with [`ListCursor::after`]; it stays valid if that block is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ListCursor {
    index: u64,
    timestamp_nanos: u64,
}

impl ListCursor {
    /// The position of `entry`: a listing resumed here starts after it.
    pub fn after(entry: &BlockMetadata) -> Self {
        Self {
            index: entry.index,
            timestamp_nanos: unix_nanos(entry.timestamp).unwrap_or(u64::MAX),
        }
    }

    /// The position of a block with this index and timestamp (in Unix
    /// nanoseconds), stored or not.
    pub fn at(index: u64, timestamp_nanos: u64) -> Self {
        Self {
            index,
            timestamp_nanos,
        }
    }

    /// The index of the position.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The timestamp of the position in Unix nanoseconds (used by
    /// [`SortOrder::ByTimestamp`] only).
    pub fn timestamp_nanos(&self) -> u64 {
        self.timestamp_nanos
    }

    /// The position as a `(timestamp, index)` key of the time order.
    fn time_key(&self) -> (u64, u64) {
        (self.timestamp_nanos, self.index)
    }
}

/// Result order of [`ListOptions`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SortOrder {
    /// By index, lowest first.
    #[default]
    Ascending,
    /// By index, highest first.
    Descending,
    /// By timestamp, oldest first; equal timestamps by index, lowest first.
    ByTimestamp,
    /// By index, lowest first (same as `Ascending`).
    ByIndex,
}

/// Field filters of [`ListOptions`]; every `Some` field must match.
///
/// Usually set through [`ListOptions`]'s setters; new fields may be added in
/// later versions, so build it with [`BlockFilter::new`] and its setters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BlockFilter {
    /// Exact payload-type identifier.
    pub payload_type: Option<String>,
    /// Signer.
    pub public_key: Option<PublicKey>,
    /// Lowest index, inclusive.
    pub min_index: Option<u64>,
    /// Highest index, inclusive.
    pub max_index: Option<u64>,
}

impl BlockFilter {
    /// A filter that admits every block.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only blocks with this payload-type identifier.
    pub fn payload_type(mut self, payload_type: impl Into<String>) -> Self {
        self.payload_type = Some(payload_type.into());
        self
    }

    /// Only blocks signed by this key.
    pub fn public_key(mut self, key: PublicKey) -> Self {
        self.public_key = Some(key);
        self
    }

    /// Only blocks with `index >= min`.
    pub fn min_index(mut self, min: u64) -> Self {
        self.min_index = Some(min);
        self
    }

    /// Only blocks with `index <= max`.
    pub fn max_index(mut self, max: u64) -> Self {
        self.max_index = Some(max);
        self
    }
}

/// What `list_blocks` returns per block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockMetadata {
    /// Block hash.
    pub hash: BlockHash,
    /// Chain index.
    pub index: u64,
    /// Block timestamp, to the nanosecond.
    pub timestamp: SystemTime,
    /// Stable payload-type identifier.
    pub payload_type: String,
    /// Signer.
    pub public_key: PublicKey,
    /// [`Block::size_bytes`]: canonical size, the same on every backend.
    pub size_bytes: u64,
}

impl BlockMetadata {
    /// The metadata of a block.
    pub fn of(block: &Block) -> Self {
        Self {
            hash: block.hash(),
            index: block.index(),
            timestamp: block.timestamp(),
            payload_type: block.payload_type().to_owned(),
            public_key: *block.public_key(),
            size_bytes: block.size_bytes(),
        }
    }
}

impl ListOptions {
    /// Options that list every block in index order.
    pub fn new() -> Self {
        Self::default()
    }

    /// At most `limit` entries; `0` returns none.
    pub fn limit(mut self, limit: u64) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Skips the first `offset` entries (prefer [`ListOptions::after`] for paging).
    pub fn offset(mut self, offset: u64) -> Self {
        self.offset = Some(offset);
        self
    }

    /// Only blocks with `timestamp >= start`.
    pub fn start_time(mut self, start: SystemTime) -> Self {
        self.start_time = Some(start);
        self
    }

    /// Only blocks with `timestamp <= end`.
    pub fn end_time(mut self, end: SystemTime) -> Self {
        self.end_time = Some(end);
        self
    }

    /// Results in `order`.
    pub fn order(mut self, order: SortOrder) -> Self {
        self.order = order;
        self
    }

    /// Results by index, lowest first (the default).
    pub fn ascending(self) -> Self {
        self.order(SortOrder::Ascending)
    }

    /// Results by index, highest first.
    pub fn descending(self) -> Self {
        self.order(SortOrder::Descending)
    }

    /// Results by timestamp, oldest first; equal timestamps by index.
    pub fn by_timestamp(self) -> Self {
        self.order(SortOrder::ByTimestamp)
    }

    /// Replaces the field filters.
    pub fn filter(mut self, filter: BlockFilter) -> Self {
        self.filter = Some(filter);
        self
    }

    /// Only blocks with this payload-type identifier.
    pub fn payload_type(mut self, payload_type: impl Into<String>) -> Self {
        self.filter = Some(self.filter.unwrap_or_default().payload_type(payload_type));
        self
    }

    /// Only blocks signed by this key.
    pub fn public_key(mut self, key: PublicKey) -> Self {
        self.filter = Some(self.filter.unwrap_or_default().public_key(key));
        self
    }

    /// Only blocks with `index >= min`.
    pub fn min_index(mut self, min: u64) -> Self {
        self.filter = Some(self.filter.unwrap_or_default().min_index(min));
        self
    }

    /// Only blocks with `index <= max`.
    pub fn max_index(mut self, max: u64) -> Self {
        self.filter = Some(self.filter.unwrap_or_default().max_index(max));
        self
    }

    /// Only entries after `cursor` in this listing's order (keyset paging).
    pub fn after(mut self, cursor: ListCursor) -> Self {
        self.after = Some(cursor);
        self
    }

    /// Whether the order is by index (ascending or descending).
    fn index_order(&self) -> bool {
        self.order != SortOrder::ByTimestamp
    }

    /// The inclusive time range in Unix nanoseconds, or `None` if no block can match
    /// (e.g. `end_time` before 1970 or before `start_time`).
    pub fn time_range_nanos(&self) -> Option<(u64, u64)> {
        let lo = match self.start_time {
            None => 0,
            // A bound before 1970 admits everything; one past 2262 admits nothing.
            Some(t) => match t.duration_since(SystemTime::UNIX_EPOCH) {
                Err(_) => 0,
                Ok(_) => unix_nanos(t).ok()?,
            },
        };
        let hi = match self.end_time {
            None => u64::MAX,
            Some(t) => match t.duration_since(SystemTime::UNIX_EPOCH) {
                Err(_) => return None,
                Ok(_) => unix_nanos(t).unwrap_or(u64::MAX),
            },
        };
        (lo <= hi).then_some((lo, hi))
    }

    /// The inclusive index range to walk, or `None` if empty: the filter's bounds,
    /// narrowed by the cursor in index orders (so a backend that seeks to the
    /// range's start seeks to the cursor).
    pub fn index_range(&self) -> Option<(u64, u64)> {
        let f = self.filter.as_ref();
        let mut lo = f.and_then(|f| f.min_index).unwrap_or(0);
        let mut hi = f.and_then(|f| f.max_index).unwrap_or(u64::MAX);
        if let Some(c) = self.after.filter(|_| self.index_order()) {
            if self.order == SortOrder::Descending {
                hi = hi.min(c.index.checked_sub(1)?);
            } else {
                lo = lo.max(c.index.checked_add(1)?);
            }
        }
        (lo <= hi).then_some((lo, hi))
    }

    /// The inclusive range of `(timestamp nanos, index)` keys a listing in
    /// [`SortOrder::ByTimestamp`] walks, or `None` if empty: the time range,
    /// starting after the cursor if one is set. (The index filter still applies
    /// to each entry.)
    pub fn time_keys(&self) -> Option<((u64, u64), (u64, u64))> {
        self.time_keys_within(self.time_range_nanos()?)
    }

    /// [`ListOptions::time_keys`] for the already resolved time range.
    fn time_keys_within(&self, (tlo, thi): (u64, u64)) -> Option<((u64, u64), (u64, u64))> {
        let mut start = (tlo, 0);
        if let Some(c) = self.after.filter(|_| !self.index_order()) {
            let next = match c.time_key() {
                (t, i) if i < u64::MAX => (t, i + 1),
                (t, _) => (t.checked_add(1)?, 0),
            };
            start = start.max(next);
        }
        let end = (thi, u64::MAX);
        (start <= end).then_some((start, end))
    }

    /// Whether one entry passes every filter and the time range.
    pub fn matches(&self, meta: &BlockMetadata) -> bool {
        self.matcher().is_some_and(|m| m.matches(meta))
    }

    /// The filters and bounds resolved once, for checking many entries; `None` if
    /// no entry can match (an empty time or index range).
    pub fn matcher(&self) -> Option<ListMatcher<'_>> {
        let f = self.filter.as_ref();
        let times = self.time_range_nanos()?;
        Some(ListMatcher {
            times,
            indices: self.index_range()?,
            // In index orders the cursor is already in `indices`.
            time_keys: self.time_keys_within(times)?,
            payload_type: f.and_then(|f| f.payload_type.as_deref()),
            public_key: f.and_then(|f| f.public_key.as_ref()),
        })
    }

    /// Compares two entries in this order.
    pub fn compare(&self, a: &BlockMetadata, b: &BlockMetadata) -> Ordering {
        match self.order {
            SortOrder::Ascending | SortOrder::ByIndex => a.index.cmp(&b.index),
            SortOrder::Descending => b.index.cmp(&a.index),
            SortOrder::ByTimestamp => a.timestamp.cmp(&b.timestamp).then(a.index.cmp(&b.index)),
        }
    }

    /// Reference semantics: filter, sort, keep what follows the cursor, skip
    /// `offset`, take `limit`. Simple
    /// backends can use it directly; indexed ones must return the same result.
    pub fn apply(&self, entries: impl IntoIterator<Item = BlockMetadata>) -> Vec<BlockMetadata> {
        let mut out: Vec<_> = entries.into_iter().filter(|m| self.matches(m)).collect();
        out.sort_by(|a, b| self.compare(a, b));
        let skip = usize::try_from(self.offset.unwrap_or(0)).unwrap_or(usize::MAX);
        let take = usize::try_from(self.limit.unwrap_or(u64::MAX)).unwrap_or(usize::MAX);
        out.into_iter().skip(skip).take(take).collect()
    }
}

/// The filters and time and index bounds of a [`ListOptions`], resolved by
/// [`ListOptions::matcher`]: the one place where a listed entry is admitted.
#[derive(Debug, Clone, Copy)]
pub struct ListMatcher<'a> {
    times: (u64, u64),
    indices: (u64, u64),
    time_keys: ((u64, u64), (u64, u64)),
    payload_type: Option<&'a str>,
    public_key: Option<&'a PublicKey>,
}

impl ListMatcher<'_> {
    /// The inclusive time range in Unix nanoseconds.
    pub fn times(&self) -> (u64, u64) {
        self.times
    }

    /// The inclusive index range (narrowed by the cursor in index orders).
    pub fn indices(&self) -> (u64, u64) {
        self.indices
    }

    /// The inclusive `(timestamp nanos, index)` key range of the time order
    /// (starting after the cursor in [`SortOrder::ByTimestamp`]).
    pub fn time_keys(&self) -> ((u64, u64), (u64, u64)) {
        self.time_keys
    }

    /// Whether an entry passes every filter and both ranges.
    pub fn matches(&self, meta: &BlockMetadata) -> bool {
        self.matches_at(unix_nanos(meta.timestamp).unwrap_or(u64::MAX), meta)
    }

    /// [`ListMatcher::matches`] for an entry whose timestamp in Unix nanoseconds
    /// the caller already has.
    pub fn matches_at(&self, ts_nanos: u64, meta: &BlockMetadata) -> bool {
        let ((tlo, thi), (ilo, ihi)) = (self.times, self.indices);
        ts_nanos >= tlo
            && ts_nanos <= thi
            && (ts_nanos, meta.index) >= self.time_keys.0
            && meta.index >= ilo
            && meta.index <= ihi
            && self.payload_type.is_none_or(|t| t == meta.payload_type)
            && self.public_key.is_none_or(|k| *k == meta.public_key)
    }
}

/// What a store can do beyond the contract every store keeps, as reported by
/// [`crate::StorageBackend::capabilities`].
///
/// Wrappers report what they can promise over their inner stores: a cache its
/// inner store's, a replicated store what all its copies share
/// ([`Capabilities::intersection`]).
///
/// ```
/// use storage_core::Capabilities;
/// let caps = Capabilities::new().persistent().atomic_batches();
/// assert!(caps.persistent && !caps.vacuum);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Capabilities {
    /// Data survives `close`, a drop without `close` and a process crash, and
    /// opening the same location again finds it.
    pub persistent: bool,
    /// `store_blocks` stores all of a batch or none of it, also across a crash.
    pub atomic_batches: bool,
    /// `vacuum` returns free space (otherwise it fails with
    /// [`crate::StorageError::Unsupported`]).
    pub vacuum: bool,
    /// This handle refuses every write with [`crate::StorageError::ReadOnly`]
    /// (the store was opened read-only).
    pub read_only: bool,
}

impl Capabilities {
    /// No capability.
    pub fn new() -> Self {
        Self::default()
    }

    /// With [`Capabilities::persistent`].
    pub fn persistent(mut self) -> Self {
        self.persistent = true;
        self
    }

    /// With [`Capabilities::atomic_batches`].
    pub fn atomic_batches(mut self) -> Self {
        self.atomic_batches = true;
        self
    }

    /// With [`Capabilities::vacuum`].
    pub fn vacuum(mut self) -> Self {
        self.vacuum = true;
        self
    }

    /// With [`Capabilities::read_only`].
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    /// What both can do. A handle is read-only if either is, since a write
    /// through it would fail on that one.
    pub fn intersection(self, other: Self) -> Self {
        Self {
            persistent: self.persistent && other.persistent,
            atomic_batches: self.atomic_batches && other.atomic_batches,
            vacuum: self.vacuum && other.vacuum,
            read_only: self.read_only || other.read_only,
        }
    }
}

/// Statistics returned by [`crate::StorageBackend::get_stats`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StorageStats {
    /// Number of stored blocks; equals `count_blocks`.
    pub total_blocks: u64,
    /// Sum of [`BlockMetadata::size_bytes`] over stored blocks.
    pub total_size_bytes: u64,
    /// Earliest block timestamp, `None` when empty.
    pub oldest_block: Option<SystemTime>,
    /// Latest block timestamp, `None` when empty.
    pub newest_block: Option<SystemTime>,
    /// Engine-specific figures.
    pub backend_specific: BackendStats,
}

/// Engine-specific statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum BackendStats {
    /// In-memory backend.
    Memory {
        /// Estimated bytes held (blocks, metadata and index entries).
        heap_usage: u64,
    },
    /// Filesystem backend.
    Filesystem {
        /// Bytes of all files under the store directory.
        directory_size: u64,
        /// Files under the store directory.
        file_count: u64,
        /// Segment (log) files.
        segments: u64,
        /// Bytes of live blocks as stored on disk (after compression).
        stored_bytes: u64,
        /// Bytes of live blocks before compression (encoded).
        uncompressed_bytes: u64,
        /// Bytes in segments held by deleted or superseded records; `compact`
        /// reclaims them.
        dead_bytes: u64,
    },
    /// RocksDB backend.
    RocksDB {
        /// `rocksdb.estimate-live-data-size`.
        live_data_size: u64,
        /// `rocksdb.total-sst-files-size`.
        total_data_size: u64,
        /// `rocksdb.estimate-num-keys`.
        num_entries: u64,
        /// Deletions recorded since the store was created.
        num_deletions: u64,
        /// Last manual compaction.
        compaction_stats: CompactionStats,
    },
    /// SQLite backend.
    SQLite {
        /// `page_count * page_size`.
        database_size: u64,
        /// `PRAGMA page_count`.
        page_count: u64,
        /// `PRAGMA page_size`.
        page_size: u64,
        /// `freelist_count / page_count`.
        fragmentation_ratio: f64,
    },
    /// A third-party backend or a wrapper: named figures.
    Other {
        /// Backend name.
        backend: String,
        /// Named figures.
        values: BTreeMap<String, f64>,
    },
}

/// Figures from the last compaction.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactionStats {
    /// Bytes read by compaction.
    pub bytes_read: u64,
    /// Bytes written by compaction.
    pub bytes_written: u64,
    /// Time spent compacting.
    pub compaction_time: Duration,
    /// When the last compaction finished; `None` if never.
    pub last_compaction: Option<SystemTime>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system_time_from_unix_nanos;

    fn meta(index: u64, ts: u64, ty: &str, key: u8) -> BlockMetadata {
        BlockMetadata {
            hash: BlockHash([index as u8; 32]),
            index,
            timestamp: system_time_from_unix_nanos(ts),
            payload_type: ty.into(),
            public_key: PublicKey([key; 32]),
            size_bytes: 100,
        }
    }

    #[test]
    fn reference_semantics() {
        let all = vec![
            meta(0, 10, "a", 1),
            meta(1, 20, "b", 1),
            meta(2, 20, "a", 2),
            meta(3, 5, "a", 1),
        ];
        let idx = |v: Vec<BlockMetadata>| v.into_iter().map(|m| m.index).collect::<Vec<_>>();
        let by_ts = ListOptions::new().by_timestamp();
        assert_eq!(idx(by_ts.apply(all.clone())), vec![3, 0, 1, 2]);
        let opts = ListOptions::new()
            .descending()
            .offset(1)
            .limit(1)
            .payload_type("a")
            .public_key(PublicKey([1; 32]));
        assert_eq!(idx(opts.apply(all.clone())), vec![0]);
        let window = ListOptions::new()
            .start_time(system_time_from_unix_nanos(10))
            .end_time(system_time_from_unix_nanos(20));
        assert_eq!(idx(window.apply(all.clone())), vec![0, 1, 2]);
        let empty = ListOptions::new()
            .start_time(system_time_from_unix_nanos(21))
            .end_time(system_time_from_unix_nanos(20));
        assert!(empty.apply(all).is_empty());
    }

    #[test]
    fn cursors_continue_after_their_position_in_each_order() {
        let all = vec![
            meta(0, 10, "a", 1),
            meta(1, 20, "b", 1),
            meta(2, 20, "a", 2),
            meta(3, 5, "a", 1),
            meta(4, 20, "a", 1),
        ];
        let idx = |v: Vec<BlockMetadata>| v.into_iter().map(|m| m.index).collect::<Vec<_>>();
        let after = |o: ListOptions, m: &BlockMetadata| {
            idx(o.after(ListCursor::after(m)).apply(all.clone()))
        };
        assert_eq!(after(ListOptions::new(), &all[1]), vec![2, 3, 4]);
        assert_eq!(after(ListOptions::new().descending(), &all[2]), vec![1, 0]);
        // Time order: after (20, 1) come the other blocks at 20 with higher indices.
        assert_eq!(
            after(ListOptions::new().by_timestamp(), &all[1]),
            vec![2, 4]
        );
        assert_eq!(
            after(ListOptions::new().by_timestamp(), &all[3]),
            vec![0, 1, 2, 4]
        );
        // A cursor between stored positions, and the ends of the key space.
        assert_eq!(
            idx(ListOptions::new()
                .by_timestamp()
                .after(ListCursor::at(9, 10))
                .apply(all.clone())),
            vec![1, 2, 4]
        );
        let none = [
            ListOptions::new().after(ListCursor::at(u64::MAX, 0)),
            ListOptions::new().descending().after(ListCursor::at(0, 0)),
            ListOptions::new()
                .by_timestamp()
                .after(ListCursor::at(u64::MAX, u64::MAX)),
        ];
        for o in none {
            assert!(o.matcher().is_none(), "{o:?}");
            assert!(o.apply(all.clone()).is_empty());
        }
        // The cursor narrows the index bounds, and the filter still applies.
        let o = ListOptions::new()
            .min_index(1)
            .max_index(3)
            .after(ListCursor::at(1, 0));
        assert_eq!(o.index_range(), Some((2, 3)));
        assert_eq!(idx(o.apply(all.clone())), vec![2, 3]);
        let o = ListOptions::new()
            .by_timestamp()
            .max_index(2)
            .after(ListCursor::after(&all[0]));
        assert_eq!(o.time_keys(), Some(((10, 1), (u64::MAX, u64::MAX))));
        assert_eq!(idx(o.apply(all.clone())), vec![1, 2]);
        // Offset counts from the cursor.
        assert_eq!(
            after(ListOptions::new().offset(1).limit(1), &all[0]),
            vec![2]
        );
    }

    #[test]
    fn the_matcher_exposes_its_resolved_bounds() {
        let ns = system_time_from_unix_nanos;
        let o = ListOptions::new()
            .by_timestamp()
            .start_time(ns(10))
            .end_time(ns(20))
            .min_index(2)
            .max_index(9)
            .after(ListCursor::at(4, 15));
        let m = o.matcher().unwrap();
        assert_eq!(m.times(), (10, 20));
        assert_eq!(m.indices(), (2, 9));
        assert_eq!(m.time_keys(), ((15, 5), (20, u64::MAX)));
        let o = ListOptions::new()
            .descending()
            .max_index(9)
            .after(ListCursor::at(4, 15));
        assert_eq!(o.matcher().unwrap().indices(), (0, 3));
        assert_eq!(o.time_keys(), Some(((0, 0), (u64::MAX, u64::MAX))));
        // A cursor at the last index of a timestamp moves to the next timestamp.
        let o = ListOptions::new()
            .by_timestamp()
            .after(ListCursor::at(u64::MAX, 7));
        assert_eq!(o.time_keys(), Some(((8, 0), (u64::MAX, u64::MAX))));
    }

    #[test]
    fn capabilities_combine_to_what_both_promise() {
        let full = Capabilities::new().persistent().atomic_batches().vacuum();
        assert_eq!(full.intersection(full), full);
        let other = Capabilities::new().atomic_batches();
        assert_eq!(full.intersection(other), other);
        assert_eq!(other.intersection(full), other);
        let durable = Capabilities::new().persistent();
        assert_eq!(full.intersection(durable), durable);
        assert_eq!(
            Capabilities::new().vacuum().intersection(full),
            Capabilities::new().vacuum()
        );
        let ro = Capabilities::new().read_only();
        assert!(full.intersection(ro).read_only && ro.intersection(full).read_only);
        assert!(!full.intersection(full).read_only);
    }
}
