//! Query options, metadata and statistics types.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::{Block, BlockHash, PublicKey, unix_nanos};

/// Options for [`crate::StorageBackend::list_blocks`].
///
/// Filters combine with AND. Time bounds are inclusive. The result is sorted by
/// [`SortOrder`], then `offset` entries are skipped, then at most `limit` returned.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ListOptions {
    /// Maximum number of entries returned; `Some(0)` returns none.
    pub limit: Option<u64>,
    /// Entries to skip after sorting; may exceed the number of matches.
    pub offset: Option<u64>,
    /// Only blocks with `timestamp >= start_time`.
    pub start_time: Option<SystemTime>,
    /// Only blocks with `timestamp <= end_time`.
    pub end_time: Option<SystemTime>,
    /// Result order.
    pub order: SortOrder,
    /// Field filters.
    pub filter: Option<BlockFilter>,
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
    /// By index, lowest first (same as `Ascending`; kept from the seed).
    ByIndex,
}

/// Field filters of [`ListOptions`]; every `Some` field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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

    /// The inclusive index range the filter allows, or `None` if empty.
    pub fn index_range(&self) -> Option<(u64, u64)> {
        let f = self.filter.as_ref();
        let lo = f.and_then(|f| f.min_index).unwrap_or(0);
        let hi = f.and_then(|f| f.max_index).unwrap_or(u64::MAX);
        (lo <= hi).then_some((lo, hi))
    }

    /// Whether one entry passes every filter and the time range.
    pub fn matches(&self, meta: &BlockMetadata) -> bool {
        self.matcher().is_some_and(|m| m.matches(meta))
    }

    /// The filters and bounds resolved once, for checking many entries; `None` if
    /// no entry can match (an empty time or index range).
    pub fn matcher(&self) -> Option<ListMatcher<'_>> {
        let f = self.filter.as_ref();
        Some(ListMatcher {
            times: self.time_range_nanos()?,
            indices: self.index_range()?,
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

    /// Reference semantics: filter, sort, skip `offset`, take `limit`. Simple
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
    payload_type: Option<&'a str>,
    public_key: Option<&'a PublicKey>,
}

impl ListMatcher<'_> {
    /// The inclusive time range in Unix nanoseconds.
    pub fn times(&self) -> (u64, u64) {
        self.times
    }

    /// The inclusive index range.
    pub fn indices(&self) -> (u64, u64) {
        self.indices
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
            && meta.index >= ilo
            && meta.index <= ihi
            && self.payload_type.is_none_or(|t| t == meta.payload_type)
            && self.public_key.is_none_or(|k| *k == meta.public_key)
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
    /// When the last compaction finished; `None` if never (the seed filled in "now").
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
        let by_ts = ListOptions {
            order: SortOrder::ByTimestamp,
            ..Default::default()
        };
        assert_eq!(idx(by_ts.apply(all.clone())), vec![3, 0, 1, 2]);
        let opts = ListOptions {
            order: SortOrder::Descending,
            offset: Some(1),
            limit: Some(1),
            filter: Some(BlockFilter {
                payload_type: Some("a".into()),
                public_key: Some(PublicKey([1; 32])),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(idx(opts.apply(all.clone())), vec![0]);
        let window = ListOptions {
            start_time: Some(system_time_from_unix_nanos(10)),
            end_time: Some(system_time_from_unix_nanos(20)),
            ..Default::default()
        };
        assert_eq!(idx(window.apply(all.clone())), vec![0, 1, 2]);
        let empty = ListOptions {
            start_time: Some(system_time_from_unix_nanos(21)),
            end_time: Some(system_time_from_unix_nanos(20)),
            ..Default::default()
        };
        assert!(empty.apply(all).is_empty());
    }
}
