//! The storage trait every backend implements, and its typed extension.

use std::future::Future;
use std::ops::{Bound, RangeBounds};
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use ed25519_dalek::SigningKey;
use futures::stream::{self, Stream, TryStreamExt};

use crate::{
    Block, BlockHash, BlockMetadata, BlockPayload, Capabilities, ListCursor, ListOptions, Result,
    StorageError, StorageStats, VerifyOptions, VerifyReport, verify_chain,
};

/// A stream of results read from a store, borrowing it; see
/// [`StorageBackendExt::stream_list`] and [`StorageBackendExt::stream_range`].
pub type BlockStream<'a, T> = Pin<Box<dyn Stream<Item = Result<T>> + Send + 'a>>;

/// Entries per page [`StorageBackendExt::stream_list`] reads.
pub const LIST_STREAM_PAGE: u64 = 1_000;

/// Blocks per page [`StorageBackendExt::stream_range`] reads.
pub const RANGE_STREAM_PAGE: u64 = 256;

/// A store of signed blocks, addressed by hash and by chain index.
///
/// Object-safe: use it as `Arc<dyn StorageBackend>` (itself a backend, for
/// wrappers) or `Box<dyn StorageBackend>`.
/// Every method takes `&self`; implementations synchronise internally and are safe
/// to call from many tasks at once, on multi-thread and current-thread tokio
/// runtimes alike.
///
/// # Implementing a backend
/// Implement [`crate::raw::Engine`] (the engine work only) rather than this
/// trait: every engine gets this trait from one shared layer, which runs each
/// call in its tracing span, refuses calls after `close`, checks arguments and
/// adds the operation to errors, the same way for every backend. Decide which
/// blocks of a write are new with [`crate::raw::admit`].
///
/// # Cancellation
/// Dropping a call's future (a timeout that fires, a `select!` that takes another
/// branch) never leaves a block half stored:
/// - Disk and memory backends: the drop abandons the *wait*, not the work. A
///   write already handed to the engine completes or fails as a whole in the
///   background (so the caller does not learn which), and
///   [`StorageBackend::close`] waits for it before releasing files.
/// - Backends whose work is itself asynchronous (the object store) stop where
///   the drop finds them, as a crash there would: a block is stored or not, and
///   a batch whose blocks span several requests may be stored in part, which is
///   why such backends do not promise atomic batches.
/// - A dropped read has no effect.
///
/// Disk backends opened with [`crate::Execution::Inline`] (the default) run
/// blocking calls on the calling worker, where a timeout cannot fire until the
/// call returns; open them with [`crate::Execution::BlockingPool`], or run the
/// calls inside [`crate::Execution::scope`], for timeouts that fire on time.
///
/// # One chain per store
/// A store holds at most one block per index. Blocks need not arrive in order, so
/// a chain can be filled in from several sources (e.g. by replica repair), but a
/// block must agree with the hash links of the neighbours already stored (or in
/// the same batch): its previous hash is the hash of the block before it, and the
/// block after it names it as its previous block ([`crate::raw::admit`]; a
/// mismatch is [`StorageError::Verification`] and nothing is written). A whole
/// chain is checked with [`verify_chain`].
///
/// A store may limit payload sizes below [`crate::MAX_PAYLOAD_BYTES`]; a block
/// over its limit is [`StorageError::InvalidInput`] and nothing is written.
///
/// # Contract (checked by the `storage-conformance` suite)
/// - Every returned block is byte-identical to the stored one: same hash, and its
///   signature verifies. Damaged data yields [`StorageError::Corrupted`], never a
///   different block.
/// - After [`StorageBackend::close`], every call except `close` fails with
///   [`StorageError::Closed`]; `close` is idempotent.
/// - A failed write leaves the store unchanged.
///
/// Only [`StorageBackend::check_integrity`] has a default: a wrapper must forward
/// every other method deliberately.
#[async_trait]
pub trait StorageBackend: Send + Sync + std::fmt::Debug + 'static {
    /// A short name for logs, spans and errors (e.g. `"memory"`, `"rocksdb"`).
    fn backend_name(&self) -> &str;

    /// What this store can do beyond the contract every store keeps (whether
    /// it persists, whether batches are atomic, whether it is read-only, ...).
    /// Constant for the life of a handle.
    fn capabilities(&self) -> Capabilities;

    /// Stores a block and returns its hash.
    ///
    /// Storing a block that is already stored is an idempotent success (counts and
    /// sizes do not change). A *different* block at an occupied index fails with
    /// [`StorageError::IndexConflict`] and nothing is written. Does not move the
    /// chain head.
    async fn store_block(&self, block: &Block) -> Result<BlockHash>;

    /// Retrieves a block by hash; `Ok(None)` if it is not stored.
    async fn retrieve_block(&self, hash: &BlockHash) -> Result<Option<Block>>;

    /// Deletes a block; `Ok(false)` if it was not stored. Deleting the chain head
    /// clears the head (it becomes `None`); it does not move to another block.
    async fn delete_block(&self, hash: &BlockHash) -> Result<bool>;

    /// Whether a block is stored.
    async fn block_exists(&self, hash: &BlockHash) -> Result<bool>;

    /// Stores a batch and returns the hashes in input order.
    ///
    /// Same rules per block as [`StorageBackend::store_block`]; identical blocks may
    /// repeat. Backends with atomic batches store all or nothing: if any block
    /// conflicts (with the store or with another in the batch) none is stored.
    async fn store_blocks(&self, blocks: &[Block]) -> Result<Vec<BlockHash>>;

    /// Retrieves many blocks, one result per input hash in input order (`None` for
    /// misses; repeated hashes give repeated results).
    async fn retrieve_blocks(&self, hashes: &[BlockHash]) -> Result<Vec<Option<Block>>>;

    /// Lists metadata matching `options` (see [`ListOptions`] for filter, sort, tie
    /// and pagination rules; [`ListOptions::apply`] is the reference).
    async fn list_blocks(&self, options: &ListOptions) -> Result<Vec<BlockMetadata>>;

    /// Number of stored blocks, exact.
    async fn count_blocks(&self) -> Result<u64>;

    /// The chain head, if one has been set and is still stored.
    async fn get_chain_head(&self) -> Result<Option<BlockHash>>;

    /// Sets the chain head. The block must be stored, otherwise
    /// [`StorageError::BlockNotFound`] and the head is unchanged.
    async fn set_chain_head(&self, hash: &BlockHash) -> Result<()>;

    /// Blocks with `start <= index <= end` (both inclusive), ascending by index;
    /// missing indices are skipped. `start > end` is [`StorageError::InvalidInput`].
    async fn get_blocks_by_range(&self, start: u64, end: u64) -> Result<Vec<Block>>;

    /// Reorganises storage to reclaim space; every block, the head and the metadata
    /// stay as they were.
    async fn compact(&self) -> Result<()>;

    /// Returns free space to the operating system where the engine can; keeps all
    /// data. Backends that cannot fail with [`StorageError::Unsupported`].
    async fn vacuum(&self) -> Result<()>;

    /// Statistics; `total_blocks` equals `count_blocks`, `total_size_bytes` is the
    /// sum of `size_bytes`, and oldest/newest are exact over stored blocks.
    async fn get_stats(&self) -> Result<StorageStats>;

    /// Flushes and releases the store (files, locks, connections). Afterwards every
    /// other call fails with [`StorageError::Closed`]. Idempotent.
    async fn close(&self) -> Result<()>;

    /// Runs the engine's own consistency check, beyond what reading every block
    /// checks: for example SQLite's `integrity_check` and its stored counters
    /// against its rows. Damage is [`StorageError::Corrupted`]. The default does
    /// nothing (reads check every byte they return).
    ///
    /// [`StorageBackendExt::verify_store`] runs this first.
    async fn check_integrity(&self) -> Result<()> {
        Ok(())
    }
}

/// The future every [`StorageBackend`] method returns (what `#[async_trait]`
/// generates).
type BackendFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// One forwarding method: hands back the pointee's boxed future as it is,
/// rather than boxing a second future that awaits it (what an `async fn` body
/// would do), so a call through `Arc<dyn StorageBackend>` allocates once.
macro_rules! forward {
    ($name:ident() -> $out:ty) => {
        fn $name<'life0, 'async_trait>(&'life0 self) -> BackendFuture<'async_trait, $out>
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            (**self).$name()
        }
    };
    ($name:ident($arg:ident: &$ty:ty) -> $out:ty) => {
        fn $name<'life0, 'life1, 'async_trait>(
            &'life0 self,
            $arg: &'life1 $ty,
        ) -> BackendFuture<'async_trait, $out>
        where
            'life0: 'async_trait,
            'life1: 'async_trait,
            Self: 'async_trait,
        {
            (**self).$name($arg)
        }
    };
}

/// Forwards every method to the pointee, so `Arc<B>` (and
/// `Arc<dyn StorageBackend>`) is a backend too and wrappers can hold either.
impl<T: StorageBackend + ?Sized> StorageBackend for Arc<T> {
    fn backend_name(&self) -> &str {
        (**self).backend_name()
    }
    fn capabilities(&self) -> Capabilities {
        (**self).capabilities()
    }
    forward!(store_block(block: &Block) -> BlockHash);
    forward!(retrieve_block(hash: &BlockHash) -> Option<Block>);
    forward!(delete_block(hash: &BlockHash) -> bool);
    forward!(block_exists(hash: &BlockHash) -> bool);
    forward!(store_blocks(blocks: &[Block]) -> Vec<BlockHash>);
    forward!(retrieve_blocks(hashes: &[BlockHash]) -> Vec<Option<Block>>);
    forward!(list_blocks(options: &ListOptions) -> Vec<BlockMetadata>);
    forward!(count_blocks() -> u64);
    forward!(get_chain_head() -> Option<BlockHash>);
    forward!(set_chain_head(hash: &BlockHash) -> ());
    forward!(compact() -> ());
    forward!(vacuum() -> ());
    forward!(get_stats() -> StorageStats);
    forward!(close() -> ());
    forward!(check_integrity() -> ());

    fn get_blocks_by_range<'life0, 'async_trait>(
        &'life0 self,
        start: u64,
        end: u64,
    ) -> BackendFuture<'async_trait, Vec<Block>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        (**self).get_blocks_by_range(start, end)
    }
}

/// Refuses a listing page that breaks its query: an entry the query does not
/// select (one at or before the cursor, say), or entries out of order. A store
/// that did either would make a stream repeat or lose entries, or never end.
fn check_page(query: &ListOptions, entries: &[BlockMetadata]) -> Result<()> {
    let matcher = query.matcher();
    for (i, m) in entries.iter().enumerate() {
        let ordered = i == 0 || query.compare(&entries[i - 1], m).is_lt();
        if !ordered || !matcher.is_some_and(|q| q.matches(m)) {
            return Err(StorageError::corrupted(format!(
                "listing returned the block at index {} {}",
                m.index,
                if ordered {
                    "which the query does not select"
                } else {
                    "out of order"
                }
            )));
        }
    }
    if entries.len() as u64 > query.limit.unwrap_or(u64::MAX) {
        return Err(StorageError::corrupted(format!(
            "listing returned {} entries for a limit of {}",
            entries.len(),
            query.limit.unwrap_or(u64::MAX)
        )));
    }
    Ok(())
}

/// Typed conveniences over any [`StorageBackend`] (blanket-implemented): appending
/// typed payloads, reading by index, streams that page with cursors, moving the
/// head forward, verifying the stored chain.
///
/// ```
/// use futures::TryStreamExt;
/// use storage_core::{ListOptions, Result, StorageBackend, StorageBackendExt};
///
/// /// The payload types of the last 5,000 blocks, and the tenth block's hash.
/// async fn survey(store: &dyn StorageBackend) -> Result<(Vec<String>, Option<String>)> {
///     let types: Vec<String> = store
///         .stream_list(ListOptions::new().descending().limit(5_000))
///         .map_ok(|m| m.payload_type)
///         .try_collect()
///         .await?;
///     let tenth = store.get_block_by_index(9).await?;
///     Ok((types, tenth.map(|b| b.hash().to_string())))
/// }
/// ```
#[async_trait]
pub trait StorageBackendExt: StorageBackend {
    /// Retrieves a block and decodes its payload as `P`.
    async fn retrieve_payload<P>(&self, hash: &BlockHash) -> Result<Option<(Block, P)>>
    where
        P: BlockPayload + Send,
    {
        match self.retrieve_block(hash).await? {
            Some(block) => {
                let payload = block.decode_payload::<P>()?;
                Ok(Some((block, payload)))
            }
            None => Ok(None),
        }
    }

    /// Signs `payload` as the block after the current head (or as genesis when
    /// there is no head), stores it and makes it the head.
    ///
    /// Two concurrent appends race for the same index: one wins, the other gets
    /// [`StorageError::IndexConflict`].
    async fn append<P>(&self, payload: &P, key: &SigningKey, timestamp: SystemTime) -> Result<Block>
    where
        P: BlockPayload + Sync,
    {
        let block = match self.get_chain_head().await? {
            None => Block::genesis(payload, key, timestamp)?,
            Some(head) => {
                let prev = self
                    .retrieve_block(&head)
                    .await?
                    .ok_or(StorageError::BlockNotFound { hash: head })?;
                Block::next(&prev, payload, key, timestamp)?
            }
        };
        self.store_block(&block).await?;
        self.set_chain_head(&block.hash()).await?;
        Ok(block)
    }

    /// Makes `hash` the chain head only if it is higher than the current head (or
    /// no head is set) and linked back to it: every block between them stored,
    /// each naming the one before (from the chain's first block when no head is
    /// set). Returns whether the head moved. Importing or copying blocks below
    /// the head therefore never moves it backwards, and blocks above a gap never
    /// become the head: that is a [`StorageError::Verification`] naming the
    /// first index that does not link. [`set_chain_head`] remains the way to
    /// move it anywhere.
    ///
    /// Reads the blocks between the two heads, a window at a time.
    ///
    /// Not atomic: two callers racing may both read the old head.
    ///
    /// [`set_chain_head`]: StorageBackend::set_chain_head
    async fn advance_head(&self, hash: &BlockHash) -> Result<bool> {
        crate::verify::advance_head(self, hash).await
    }

    /// The block at `index`, if one is stored.
    async fn get_block_by_index(&self, index: u64) -> Result<Option<Block>> {
        let mut found = self.get_blocks_by_range(index, index).await?;
        match found.pop() {
            Some(b) if found.is_empty() && b.index() == index => Ok(Some(b)),
            None => Ok(None),
            Some(b) => Err(StorageError::corrupted(format!(
                "asked for the block at index {index}, the store returned {} block(s), the last at index {}",
                found.len() + 1,
                b.index()
            ))),
        }
    }

    /// Every entry `options` selects, as a stream read [`LIST_STREAM_PAGE`]
    /// entries at a time; see [`StorageBackendExt::stream_list_paged`].
    fn stream_list(&self, options: ListOptions) -> BlockStream<'_, BlockMetadata> {
        self.stream_list_paged(options, LIST_STREAM_PAGE)
    }

    /// Every entry `options` selects (`limit` and `offset` apply to the whole
    /// stream), read `page` entries at a time.
    ///
    /// Each page continues after the last entry of the one before with a
    /// [`ListCursor`], so the store seeks rather than skips, memory holds one
    /// page whatever the store's size, and blocks stored or deleted while the
    /// stream runs never make it repeat or skip an entry that was stored before
    /// it started. An error ends the stream after it is yielded.
    fn stream_list_paged(&self, options: ListOptions, page: u64) -> BlockStream<'_, BlockMetadata> {
        let page = page.max(1);
        let first = (options, true);
        let pages = stream::try_unfold(Some(first), move |state| async move {
            let Some((mut options, first)) = state else {
                return Ok(None);
            };
            let wanted = options.limit.unwrap_or(u64::MAX).min(page);
            if wanted == 0 {
                return Ok(None);
            }
            let mut query = options.clone().limit(wanted);
            if !first {
                query.offset = None;
            }
            let entries = self.list_blocks(&query).await?;
            check_page(&query, &entries)?;
            let next = match entries.last() {
                Some(last) if entries.len() as u64 >= wanted => {
                    options.limit = options.limit.map(|l| l - entries.len() as u64);
                    Some((options.after(ListCursor::after(last)), false))
                }
                _ => None,
            };
            Ok(Some((entries, next)))
        });
        Box::pin(
            pages
                .map_ok(|entries| stream::iter(entries.into_iter().map(Ok)))
                .try_flatten(),
        )
    }

    /// The blocks whose indices lie in `range`, ascending, as a stream read
    /// [`RANGE_STREAM_PAGE`] blocks at a time; see
    /// [`StorageBackendExt::stream_range_paged`].
    fn stream_range(&self, range: impl RangeBounds<u64>) -> BlockStream<'_, Block> {
        self.stream_range_paged(range, RANGE_STREAM_PAGE)
    }

    /// The blocks whose indices lie in `range`, ascending (missing indices are
    /// skipped), read `page` indices at a time with
    /// [`StorageBackend::get_blocks_by_range`]; a long run of missing indices
    /// is crossed with one listing. Memory holds one page whatever the range's
    /// length. An empty range is an empty stream.
    ///
    /// A block outside the window asked for, or out of order, ends the stream
    /// with [`StorageError::Corrupted`]; a block is never yielded twice.
    fn stream_range_paged(
        &self,
        range: impl RangeBounds<u64>,
        page: u64,
    ) -> BlockStream<'_, Block> {
        let page = page.max(1);
        let start = match range.start_bound() {
            Bound::Included(s) => Some(*s),
            Bound::Excluded(s) => s.checked_add(1),
            Bound::Unbounded => Some(0),
        };
        let end = match range.end_bound() {
            Bound::Included(e) => Some(*e),
            Bound::Excluded(e) => e.checked_sub(1),
            Bound::Unbounded => Some(u64::MAX),
        };
        let first = match (start, end) {
            (Some(s), Some(e)) if s <= e => Some((s, e)),
            _ => None,
        };
        let pages = stream::try_unfold(first, move |state| async move {
            let Some((from, end)) = state else {
                return Ok(None);
            };
            let to = from.saturating_add(page - 1).min(end);
            let blocks = self.get_blocks_by_range(from, to).await?;
            let mut expect = from;
            for b in &blocks {
                if b.index() < expect || b.index() > to {
                    return Err(StorageError::corrupted(format!(
                        "reading indices {from}..={to}, the store returned the block at index {} out of order or outside the window",
                        b.index()
                    )));
                }
                expect = b.index().saturating_add(1);
            }
            let resume = if to == end {
                None
            } else if !blocks.is_empty() {
                Some(to + 1)
            } else {
                // An empty window: one listing finds the next stored index.
                self.list_blocks(&ListOptions::new().min_index(to + 1).max_index(end).limit(1))
                    .await?
                    .first()
                    .map(|m| m.index)
            };
            let next = resume.filter(|n| *n <= end).map(|n| (n, end));
            Ok(Some((blocks, next)))
        });
        Box::pin(
            pages
                .map_ok(|blocks| stream::iter(blocks.into_iter().map(Ok)))
                .try_flatten(),
        )
    }

    /// Checks the store against itself: the engine's own check
    /// ([`StorageBackend::check_integrity`]), then every block from genesis in
    /// index order (signatures, index sequence, hash links, timestamps), then the
    /// store's count and head against what was walked: the head must be the
    /// highest block. Gaps in the index sequence fail unless
    /// [`VerifyOptions::allow_gaps`]. `progress` gets the number of blocks each
    /// page verified.
    ///
    /// A broken chain, a gap or a misplaced head is [`StorageError::Verification`]
    /// naming the index; damage, or a count that disagrees with the blocks found,
    /// is [`StorageError::Corrupted`].
    async fn verify_store(
        &self,
        options: &VerifyOptions,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<VerifyReport> {
        crate::verify::verify_store(self, options, progress).await
    }

    /// Reads every stored block in index order, `page` blocks at a time, and
    /// verifies signatures and links. Returns the number of blocks checked; a gap or
    /// a broken link fails with [`StorageError::Verification`] naming the index.
    async fn verify_stored_chain(&self, page: u64) -> Result<u64> {
        let page = page.max(1);
        let mut start = 0u64;
        let mut prev: Option<Block> = None;
        let mut checked = 0u64;
        loop {
            let end = start.saturating_add(page - 1);
            let blocks = self.get_blocks_by_range(start, end).await?;
            if blocks.is_empty() {
                // Nothing in this window: find the next stored index, if any.
                let next = self
                    .list_blocks(&ListOptions::new().limit(1).min_index(start))
                    .await?;
                match next.first() {
                    None => return Ok(checked),
                    Some(m) if prev.is_none() => {
                        start = m.index;
                        continue;
                    }
                    Some(m) => {
                        return Err(StorageError::Verification {
                            index: m.index,
                            reason: format!("gap: no block before it since index {}", start - 1),
                        });
                    }
                }
            }
            checked += blocks.len() as u64;
            let mut run = Vec::with_capacity(blocks.len() + 1);
            run.extend(prev.take());
            run.extend(blocks);
            verify_chain(&run)?;
            let last = run.pop().expect("non-empty run");
            if last.index() == u64::MAX {
                return Ok(checked);
            }
            start = last.index() + 1;
            prev = Some(last);
        }
    }
}

impl<T: StorageBackend + ?Sized> StorageBackendExt for T {}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::raw::{Engine, Gate};
    use crate::{BlockFilter, SigningKey, StorageStats};

    /// An engine that answers listings and range reads with whatever it was
    /// given, whatever was asked: the broken store the streams must not trust.
    #[derive(Debug, Default)]
    struct Canned {
        gate: Gate,
        listing: Mutex<Vec<BlockMetadata>>,
        range: Mutex<Vec<Block>>,
        /// What reads by hash find.
        stored: Mutex<Vec<Block>>,
        /// The windows range reads asked for.
        asked: Mutex<Vec<(u64, u64)>>,
    }

    impl Engine for Canned {
        fn name(&self) -> &str {
            "canned"
        }
        fn gate(&self) -> &Gate {
            &self.gate
        }
        fn supported(&self) -> Capabilities {
            Capabilities::new()
        }
        async fn write_blocks(&self, _: &[Block]) -> Result<()> {
            Ok(())
        }
        async fn read_block(&self, h: &BlockHash) -> Result<Option<Block>> {
            Ok(self
                .stored
                .lock()
                .unwrap()
                .iter()
                .find(|b| b.hash() == *h)
                .cloned())
        }
        async fn read_blocks(&self, h: &[BlockHash]) -> Result<Vec<Option<Block>>> {
            Ok(vec![None; h.len()])
        }
        async fn remove_block(&self, _: &BlockHash) -> Result<bool> {
            Ok(false)
        }
        async fn has_block(&self, _: &BlockHash) -> Result<bool> {
            Ok(false)
        }
        async fn list(&self, _: &ListOptions) -> Result<Vec<BlockMetadata>> {
            Ok(self.listing.lock().unwrap().clone())
        }
        async fn count(&self) -> Result<u64> {
            Ok(0)
        }
        async fn head(&self) -> Result<Option<BlockHash>> {
            Ok(None)
        }
        async fn write_head(&self, _: &BlockHash) -> Result<()> {
            Ok(())
        }
        async fn read_range(&self, start: u64, end: u64) -> Result<Vec<Block>> {
            self.asked.lock().unwrap().push((start, end));
            Ok(self.range.lock().unwrap().clone())
        }
        async fn run_compaction(&self) -> Result<()> {
            Ok(())
        }
        async fn run_vacuum(&self) -> Result<()> {
            Ok(())
        }
        async fn stats(&self) -> Result<StorageStats> {
            Err(StorageError::unsupported("canned", "stats"))
        }
        async fn shutdown(&self) -> Result<()> {
            Ok(())
        }
    }

    fn chain(n: u64) -> Vec<Block> {
        let key = SigningKey::from_bytes(&[3; 32]);
        let mut out: Vec<Block> = Vec::new();
        for i in 0..n {
            let prev = out.last().map(Block::hash);
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(i);
            out.push(Block::sign_raw(i, t, prev, "t", vec![i as u8], &key).unwrap());
        }
        out
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    /// An engine answering range reads with `range` and reads by hash from
    /// `stored`.
    fn canned(range: Vec<Block>, stored: Vec<Block>) -> Canned {
        let engine = Canned::default();
        *engine.range.lock().unwrap() = range;
        *engine.stored.lock().unwrap() = stored;
        engine
    }

    fn refused<T: std::fmt::Debug>(r: Result<T>, at: u64, what: &str) {
        match r {
            Err(StorageError::Verification { index, .. }) if index == at => {}
            other => panic!("{what}: expected Verification at #{at}, got {other:?}"),
        }
    }

    #[test]
    fn advance_head_checks_every_link_the_store_returns() {
        let ours = chain(3);
        let key = SigningKey::from_bytes(&[4; 32]);
        let stray = |index: u64| {
            // Another chain's block, linked to a block we do not have.
            Block::sign_raw(
                index,
                std::time::UNIX_EPOCH,
                Some(BlockHash([9; 32])),
                "t",
                vec![],
                &key,
            )
            .unwrap()
        };
        let theirs = stray(2);
        rt().block_on(async {
            // The store returns a block #2 that does not name our #1.
            let s = canned(
                vec![ours[0].clone(), ours[1].clone(), theirs.clone()],
                vec![theirs.clone()],
            );
            refused(s.advance_head(&theirs.hash()).await, 2, "a broken link");
            // The walk reaches our #2, not the block asked for at that index.
            let s = canned(ours.clone(), vec![theirs.clone()]);
            refused(
                s.advance_head(&theirs.hash()).await,
                2,
                "another block at its index",
            );
            // Windows of 256 blocks, from index 0.
            let far = stray(600);
            let s = canned(Vec::new(), vec![far.clone()]);
            refused(s.advance_head(&far.hash()).await, 0, "nothing stored below");
            assert_eq!(s.asked.lock().unwrap()[0], (0, 255));
        });
    }

    fn corrupted<T: std::fmt::Debug>(r: Result<T>, what: &str) {
        match r {
            Err(e) if e.kind() == crate::ErrorKind::Corrupted => {}
            other => panic!("{what}: expected Corrupted, got {other:?}"),
        }
    }

    #[test]
    fn by_index_reads_refuse_a_wrong_answer() {
        let blocks = chain(3);
        let s = Canned::default();
        let rt = rt();
        assert_eq!(rt.block_on(s.get_block_by_index(1)).unwrap(), None);
        *s.range.lock().unwrap() = vec![blocks[1].clone()];
        assert_eq!(
            rt.block_on(s.get_block_by_index(1)).unwrap(),
            Some(blocks[1].clone())
        );
        corrupted(
            rt.block_on(s.get_block_by_index(2)),
            "the block at another index",
        );
        *s.range.lock().unwrap() = vec![blocks[0].clone(), blocks[1].clone()];
        corrupted(
            rt.block_on(s.get_block_by_index(1)),
            "two blocks for one index",
        );
    }

    #[test]
    fn list_streams_refuse_pages_that_break_their_query() {
        let metas: Vec<BlockMetadata> = chain(6).iter().map(BlockMetadata::of).collect();
        let s = Canned::default();
        let rt = rt();
        let collect = |o: ListOptions, page| {
            rt.block_on(s.stream_list_paged(o, page).try_collect::<Vec<_>>())
        };
        // A sound page passes; a store that ignores the cursor would repeat
        // its first page forever: the second page is refused instead.
        *s.listing.lock().unwrap() = metas[..2].to_vec();
        assert_eq!(collect(ListOptions::new(), 5).unwrap(), metas[..2].to_vec());
        corrupted(
            collect(ListOptions::new(), 2),
            "a page repeated after its cursor",
        );
        // Out of order.
        *s.listing.lock().unwrap() = vec![metas[2].clone(), metas[1].clone()];
        corrupted(collect(ListOptions::new(), 5), "a page out of order");
        // The same entries are in order for a descending listing.
        let desc = collect(ListOptions::new().descending(), 5).unwrap();
        assert_eq!(desc, vec![metas[2].clone(), metas[1].clone()]);
        // An entry the filter excludes, and more entries than the limit.
        *s.listing.lock().unwrap() = metas[..3].to_vec();
        corrupted(
            collect(ListOptions::new().min_index(1), 5),
            "an entry below min_index",
        );
        corrupted(
            collect(ListOptions::new().limit(2), 5),
            "more entries than the limit",
        );
        let filter = BlockFilter::new().payload_type("other");
        corrupted(
            collect(ListOptions::new().filter(filter), 5),
            "an entry of another type",
        );
    }

    #[test]
    fn range_streams_read_windows_of_the_page_size() {
        let blocks = chain(8);
        let s = Canned::default();
        let rt = rt();
        // Every window holds a block, so the stream reads window after window.
        *s.range.lock().unwrap() = vec![blocks[0].clone()];
        let got = rt.block_on(s.stream_range_paged(0..=0, 3).try_collect::<Vec<_>>());
        assert_eq!(got.unwrap().len(), 1);
        assert_eq!(*s.asked.lock().unwrap(), vec![(0, 0)]);
        s.asked.lock().unwrap().clear();
        *s.range.lock().unwrap() = Vec::new();
        *s.listing.lock().unwrap() = Vec::new();
        let got = rt.block_on(s.stream_range_paged(2..=9, 3).try_collect::<Vec<_>>());
        assert!(got.unwrap().is_empty());
        // One window of three, then a listing finds nothing further.
        assert_eq!(*s.asked.lock().unwrap(), vec![(2, 4)]);
    }

    #[test]
    fn range_streams_refuse_blocks_outside_their_window() {
        let blocks = chain(6);
        let s = Canned::default();
        let rt = rt();
        *s.range.lock().unwrap() = vec![blocks[4].clone()];
        let got = rt.block_on(s.stream_range_paged(4..=4, 3).try_collect::<Vec<_>>());
        assert_eq!(got.unwrap(), vec![blocks[4].clone()]);
        corrupted(
            rt.block_on(s.stream_range_paged(0..=2, 3).try_collect::<Vec<_>>()),
            "a block past the window",
        );
        corrupted(
            rt.block_on(s.stream_range_paged(5..=9, 3).try_collect::<Vec<_>>()),
            "a block before the window",
        );
        *s.range.lock().unwrap() = vec![blocks[2].clone(), blocks[1].clone()];
        corrupted(
            rt.block_on(s.stream_range_paged(0..=5, 10).try_collect::<Vec<_>>()),
            "blocks out of order",
        );
    }
}
