//! In-memory [`StorageBackend`](storage_core::StorageBackend): the fastest backend, for tests, caches and the
//! reference point of the benchmarks.
//!
//! Two representations:
//! - [`MemoryBackend::new`] keeps decoded [`Block`]s: a retrieve is a clone.
//! - [`MemoryBackend::with_wire_format`] keeps each block as encoded bytes
//!   ([`SerializedBlock`]) and decodes on every read, checking the
//!   hash, so damaged bytes surface as [`StorageError::Corrupted`]. The conformance
//!   suite runs it for all eight wire formats.
//!
//! Indexes by chain index and by `(timestamp, index)` let `list_blocks` and
//! `get_blocks_by_range` walk only what they return instead of sorting everything.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use std::time::SystemTime;
//! use storage_core::{Block, SigningKey, StorageBackend};
//! use storage_memory::MemoryBackend;
//!
//! let store = MemoryBackend::new();
//! let key = SigningKey::from_bytes(&[1; 32]);
//! let g = Block::sign_raw(0, SystemTime::now(), None, "example.note/v1", b"hi".to_vec(), &key)?;
//! let hash = store.store_block(&g).await?;
//! assert_eq!(store.retrieve_block(&hash).await?, Some(g));
//! # Ok::<(), storage_core::StorageError>(())
//! # }).unwrap();
//! ```

// Library code returns errors; tests may unwrap (see clippy.toml).
#![warn(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::SystemTime;

use storage_core::raw::{Engine, Gate};
use storage_core::{
    BackendStats, Block, BlockHash, BlockHashMap, BlockMetadata, Capabilities, ListOptions, Result,
    SortOrder, StorageError, StorageStats, WireFormat, system_time_from_unix_nanos,
};

const NAME: &str = "memory";

/// A block kept as encoded bytes, in one of the wire formats.
#[derive(Debug, Clone)]
pub struct SerializedBlock {
    /// The encoded block.
    pub data: Vec<u8>,
    /// How `data` is encoded.
    pub format: WireFormat,
    /// When it was stored.
    pub stored_at: SystemTime,
}

#[derive(Debug)]
enum Stored {
    Decoded(Block),
    Serialized(SerializedBlock),
}

/// What a hash leads to: the block itself.
#[derive(Debug)]
struct Slot {
    stored: Stored,
    index: u64,
    heap: u64,
}

/// What an index leads to: the metadata, kept in the ordered map itself so that
/// listings walk B-tree nodes in order and never touch the hash map.
#[derive(Debug)]
struct Indexed {
    meta: BlockMetadata,
    ts: u64,
}

/// A block ready to insert, built outside the lock.
struct Entry {
    slot: Slot,
    indexed: Indexed,
}

#[derive(Debug, Default)]
struct State {
    /// Keyed by hash with the prefix hasher: block hashes need no rehashing.
    blocks: BlockHashMap<Slot>,
    by_index: BTreeMap<u64, Indexed>,
    /// `(timestamp nanos, index)`: time order with index as tie-breaker.
    by_time: BTreeSet<(u64, u64)>,
    head: Option<BlockHash>,
    total_size: u64,
    heap: u64,
}

/// The in-memory backend. Cheap to share behind an `Arc`; all methods take `&self`.
#[derive(Debug)]
pub struct MemoryBackend {
    format: Option<WireFormat>,
    max_payload_bytes: usize,
    state: RwLock<State>,
    gate: Gate,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBackend {
    /// An empty store keeping decoded blocks.
    pub fn new() -> Self {
        Self::build(None, 0)
    }

    /// An empty store with room for `capacity` blocks before its hash map regrows.
    pub fn with_capacity(capacity: usize) -> Self {
        Self::build(None, capacity)
    }

    /// An empty store keeping every block encoded in `format`, decoded and
    /// hash-checked on each read.
    pub fn with_wire_format(format: WireFormat) -> Self {
        Self::build(Some(format), 0)
    }

    fn build(format: Option<WireFormat>, capacity: usize) -> Self {
        Self {
            format,
            max_payload_bytes: storage_core::MAX_PAYLOAD_BYTES,
            state: RwLock::new(State {
                blocks: BlockHashMap::with_capacity_and_hasher(capacity, Default::default()),
                ..State::default()
            }),
            gate: Gate::new(),
        }
    }

    /// Refuses blocks whose payload is longer than `max` bytes (default
    /// [`storage_core::MAX_PAYLOAD_BYTES`]) with `InvalidInput`.
    pub fn with_max_payload_bytes(mut self, max: usize) -> Self {
        self.max_payload_bytes = max;
        self
    }

    /// The wire format blocks are kept in, if any.
    pub fn wire_format(&self) -> Option<WireFormat> {
        self.format
    }

    /// Fault injection for tests: lets `f` change the stored bytes of a block kept
    /// in a wire format. Returns `false` if the block is absent or kept decoded.
    pub fn tamper_stored_bytes(&self, hash: &BlockHash, f: impl FnOnce(&mut Vec<u8>)) -> bool {
        let mut st = self.state.write().unwrap_or_else(PoisonError::into_inner);
        match st.blocks.get_mut(hash).map(|slot| &mut slot.stored) {
            Some(Stored::Serialized(s)) => {
                f(&mut s.data);
                true
            }
            _ => false,
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        // A panic cannot leave State half-updated: every mutation below is checked
        // before the first change. So a poisoned lock is safe to reuse.
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Builds the entry outside the lock (encoding is the expensive part).
    fn make_entry(&self, block: &Block) -> Result<Entry> {
        let meta = BlockMetadata::of(block);
        let (stored, payload_bytes) = match self.format {
            None => (Stored::Decoded(block.clone()), block.payload().len()),
            Some(format) => {
                let data = format.encode(block)?;
                let len = data.len();
                (
                    Stored::Serialized(SerializedBlock {
                        data,
                        format,
                        stored_at: SystemTime::now(),
                    }),
                    len,
                )
            }
        };
        let heap = heap_estimate(payload_bytes, meta.payload_type.len());
        Ok(Entry {
            slot: Slot {
                stored,
                index: block.index(),
                heap,
            },
            indexed: Indexed {
                ts: block.timestamp_nanos(),
                meta,
            },
        })
    }
}

/// What `heap_usage` in the memory backend's statistics counts per stored block
/// beyond its stored bytes and its payload-type string (kept twice, in the block
/// and its metadata): an estimate of the three index entries and their map
/// overhead.
pub const ENTRY_OVERHEAD_BYTES: u64 = 256;

/// Estimated heap bytes of one stored block (only reported in the backend's own
/// statistics): stored bytes, the type string twice, and [`ENTRY_OVERHEAD_BYTES`].
fn heap_estimate(stored_bytes: usize, payload_type_len: usize) -> u64 {
    stored_bytes as u64 + 2 * payload_type_len as u64 + ENTRY_OVERHEAD_BYTES
}

impl State {
    /// The admission rule over this state: positions of the blocks to insert.
    fn admit(&self, blocks: &[Block]) -> Result<Vec<usize>> {
        storage_core::raw::admit(
            blocks,
            &mut storage_core::raw::ChainViewFn(
                |i| Ok(self.by_index.get(&i).map(|e| e.meta.hash)),
                |i| {
                    let Some(e) = self.by_index.get(&i) else {
                        return Ok(None);
                    };
                    Ok(Some(
                        self.block(&e.meta.hash)?
                            .and_then(|b| b.previous_hash().copied()),
                    ))
                },
            ),
        )
    }

    fn insert(&mut self, Entry { slot, indexed }: Entry) {
        let (hash, index) = (indexed.meta.hash, indexed.meta.index);
        self.by_time.insert((indexed.ts, index));
        self.total_size += indexed.meta.size_bytes;
        self.heap += slot.heap;
        self.by_index.insert(index, indexed);
        self.blocks.insert(hash, slot);
    }

    fn block(&self, hash: &BlockHash) -> Result<Option<Block>> {
        self.blocks
            .get(hash)
            .map(|slot| slot.block(hash))
            .transpose()
    }
}

impl Slot {
    fn block(&self, hash: &BlockHash) -> Result<Block> {
        match &self.stored {
            Stored::Decoded(b) => Ok(b.clone()),
            Stored::Serialized(s) => s.format.decode_stored(&s.data, hash),
        }
    }
}

impl Engine for MemoryBackend {
    fn name(&self) -> &str {
        NAME
    }

    fn gate(&self) -> &Gate {
        &self.gate
    }

    fn supported(&self) -> Capabilities {
        Capabilities::new().atomic_batches().vacuum()
    }

    fn max_payload_bytes(&self) -> usize {
        self.max_payload_bytes
    }

    async fn write_blocks(&self, blocks: &[Block]) -> Result<()> {
        // Entries are built outside the lock (encoding is the expensive part).
        if let [block] = blocks {
            let entry = self.make_entry(block)?;
            let mut st = self.write();
            if !st.admit(blocks)?.is_empty() {
                st.insert(entry);
            }
            return Ok(());
        }
        let mut entries = blocks
            .iter()
            .map(|b| self.make_entry(b).map(Some))
            .collect::<Result<Vec<_>>>()?;
        let mut st = self.write();
        // The whole batch is checked before anything changes: all or nothing.
        for pos in st.admit(blocks)? {
            if let Some(entry) = entries[pos].take() {
                st.insert(entry);
            }
        }
        Ok(())
    }

    async fn read_block(&self, hash: &BlockHash) -> Result<Option<Block>> {
        self.read().block(hash)
    }

    async fn read_blocks(&self, hashes: &[BlockHash]) -> Result<Vec<Option<Block>>> {
        let st = self.read();
        hashes.iter().map(|h| st.block(h)).collect()
    }

    async fn remove_block(&self, hash: &BlockHash) -> Result<bool> {
        let mut st = self.write();
        let Some(slot) = st.blocks.remove(hash) else {
            return Ok(false);
        };
        let indexed = st
            .by_index
            .remove(&slot.index)
            .expect("every stored block is indexed");
        st.by_time.remove(&(indexed.ts, slot.index));
        st.total_size -= indexed.meta.size_bytes;
        st.heap -= slot.heap;
        if st.head == Some(*hash) {
            st.head = None;
        }
        Ok(true)
    }

    async fn has_block(&self, hash: &BlockHash) -> Result<bool> {
        Ok(self.read().blocks.contains_key(hash))
    }

    async fn list(&self, options: &ListOptions) -> Result<Vec<BlockMetadata>> {
        let st = self.read();
        let Some(m) = options.matcher() else {
            return Ok(Vec::new());
        };
        let ((lo, hi), (tstart, tend)) = (m.indices(), m.time_keys());
        let skip = usize::try_from(options.offset.unwrap_or(0)).unwrap_or(usize::MAX);
        let take = usize::try_from(options.limit.unwrap_or(u64::MAX)).unwrap_or(usize::MAX);
        let pick = |e: &Indexed| m.matches(&e.meta).then(|| e.meta.clone());
        let out = match options.order {
            SortOrder::Ascending | SortOrder::ByIndex => st
                .by_index
                .range(lo..=hi)
                .filter_map(|(_, e)| pick(e))
                .skip(skip)
                .take(take)
                .collect(),
            SortOrder::Descending => st
                .by_index
                .range(lo..=hi)
                .rev()
                .filter_map(|(_, e)| pick(e))
                .skip(skip)
                .take(take)
                .collect(),
            SortOrder::ByTimestamp => st
                .by_time
                .range(tstart..=tend)
                .filter(|(_, i)| (lo..=hi).contains(i))
                .filter_map(|(_, i)| pick(&st.by_index[i]))
                .skip(skip)
                .take(take)
                .collect(),
        };
        Ok(out)
    }

    async fn count(&self) -> Result<u64> {
        Ok(self.read().blocks.len() as u64)
    }

    async fn head(&self) -> Result<Option<BlockHash>> {
        Ok(self.read().head)
    }

    async fn write_head(&self, hash: &BlockHash) -> Result<()> {
        let mut st = self.write();
        if !st.blocks.contains_key(hash) {
            return Err(StorageError::BlockNotFound { hash: *hash });
        }
        st.head = Some(*hash);
        Ok(())
    }

    async fn read_range(&self, start: u64, end: u64) -> Result<Vec<Block>> {
        let st = self.read();
        st.by_index
            .range(start..=end)
            .map(|(_, e)| st.blocks[&e.meta.hash].block(&e.meta.hash))
            .collect()
    }

    async fn run_compaction(&self) -> Result<()> {
        self.write().blocks.shrink_to_fit();
        Ok(())
    }

    async fn run_vacuum(&self) -> Result<()> {
        // Memory has no files; vacuum returns spare capacity like compact does.
        self.write().blocks.shrink_to_fit();
        Ok(())
    }

    async fn stats(&self) -> Result<StorageStats> {
        let st = self.read();
        Ok(StorageStats {
            total_blocks: st.blocks.len() as u64,
            total_size_bytes: st.total_size,
            oldest_block: st
                .by_time
                .first()
                .map(|(t, _)| system_time_from_unix_nanos(*t)),
            newest_block: st
                .by_time
                .last()
                .map(|(t, _)| system_time_from_unix_nanos(*t)),
            backend_specific: BackendStats::Memory {
                heap_usage: st.heap,
            },
        })
    }

    async fn shutdown(&self) -> Result<()> {
        // Memory is gone either way; free it now rather than at drop.
        *self.write() = State::default();
        Ok(())
    }
}

// The README's examples are compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
