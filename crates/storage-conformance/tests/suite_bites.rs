//! Proof that the suite bites: each deliberately broken backend (a wrapper over
//! the memory backend with one flaw) must fail the cases aimed at that flaw, and
//! the model-based test must catch it on its own too.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use storage_conformance::{Factory, Fixture, all_cases};
use storage_core::{
    Block, BlockHash, BlockMetadata, Capabilities, ErrorKind, ListCursor, ListOptions, Result,
    SortOrder, StorageBackend, StorageStats, WireFormat, async_trait, unix_nanos,
};
use storage_memory::MemoryBackend;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flaw {
    /// `list_blocks` ignores `offset`.
    IgnoresOffset,
    /// `count_blocks` and stats never go down on delete.
    CountKeepsDeleted,
    /// `retrieve_block` returns the block at the next index when there is one.
    WrongBlockForHash,
    /// A different block at an occupied index replaces the stored one.
    OverwritesOnConflict,
    /// Deleting the head leaves the head pointing at the deleted block.
    HeadSurvivesDelete,
    /// Listed timestamps are cut to whole seconds (the seed's SQLite bug).
    TruncatesTimestamps,
    /// A batch stores its blocks one by one and stops at a conflict.
    PartialBatches,
    /// `get_blocks_by_range` treats `end` as exclusive.
    ExclusiveRangeEnd,
    /// `ByTimestamp` breaks ties by descending index.
    WrongTieOrder,
    /// `retrieve_blocks` answers only the first 1,000 hashes right (one internal
    /// page) and the rest as misses.
    BulkRetrieveFirstPageOnly,
    /// `list_blocks` returns at most 1,000 entries per call, whatever the limit.
    ListCappedAtPage,
    /// In time order, `end_time` is exclusive.
    ExclusiveEndInTimeOrder,
    /// The payload-type filter matches types that start with it.
    TypeFilterByPrefix,
    /// `compact` brings back the block deleted last.
    CompactResurrects,
    /// Re-storing the block that was the head makes it the head again.
    RestoreRevivesHead,
    /// Deleting a block stamped at the oldest time moves `oldest_block` past that
    /// time even when another block shares it.
    OldestSkipsTies,
    /// A batch that fails its link check is stored block by block up to the bad one.
    PartialInvalidBatch,
    /// A block at an occupied index with the same payload as the stored one is
    /// taken for a duplicate.
    EquivocationByPayload,
    /// Damaged blocks are left out of bulk reads instead of failing them.
    OmitsDamaged,
    /// Counts new blocks with a check-then-store that races: two identical stores
    /// at once are counted twice.
    RacyCount,
    /// `list_blocks` ignores the cursor (pages repeat).
    IgnoresCursor,
    /// In time order, the listing resumes *at* the cursor, so the entry a page
    /// ended with comes again.
    CursorInclusiveInTimeOrder,
    /// In time order, the cursor skips every entry at its timestamp (ties after
    /// the cursor's index are lost).
    CursorSkipsTimestampTies,
    /// In descending order, the cursor is read as ascending.
    CursorAscendingInDescendingOrder,
    /// Claims to persist data it keeps in memory.
    ClaimsPersistence,
    /// Reports no atomic batches, so the cases that would hold it to them are
    /// skipped (the fixture expects them).
    HidesAtomicBatches,
}

#[derive(Debug)]
struct Broken {
    inner: Arc<MemoryBackend>,
    /// `None`: a sound pass-through, the control.
    flaw: Option<Flaw>,
    /// For `CountKeepsDeleted`: blocks ever stored.
    ever: std::sync::atomic::AtomicU64,
    /// For `RacyCount`: blocks deleted.
    deletes: std::sync::atomic::AtomicU64,
    /// For `HeadSurvivesDelete`: the deleted head still reported.
    stale_head: std::sync::Mutex<Option<BlockHash>>,
    /// For `CompactResurrects` and `RestoreRevivesHead`: the last deleted block,
    /// and the last head that was deleted.
    last_deleted: std::sync::Mutex<(Option<Block>, Option<BlockHash>)>,
    /// For `OldestSkipsTies`: a timestamp `oldest_block` must be after.
    oldest_after: std::sync::Mutex<Option<std::time::SystemTime>>,
}

impl Broken {
    fn has(&self, flaw: Flaw) -> bool {
        self.flaw == Some(flaw)
    }
}

#[async_trait]
impl StorageBackend for Broken {
    fn backend_name(&self) -> &str {
        "broken"
    }

    fn capabilities(&self) -> storage_core::Capabilities {
        let mut caps = self.inner.capabilities();
        if self.has(Flaw::ClaimsPersistence) {
            caps.persistent = true;
        }
        if self.has(Flaw::HidesAtomicBatches) {
            caps.atomic_batches = false;
        }
        caps
    }

    async fn store_block(&self, block: &Block) -> Result<BlockHash> {
        if self.has(Flaw::EquivocationByPayload)
            && let Some(old) = self
                .inner
                .get_blocks_by_range(block.index(), block.index())
                .await?
                .pop()
            && old.payload() == block.payload()
        {
            return Ok(block.hash());
        }
        let existed = self.inner.block_exists(&block.hash()).await?;
        if self.has(Flaw::RacyCount) {
            // The window between the check and the store.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if self.has(Flaw::OverwritesOnConflict)
            && let Some(old) = self
                .inner
                .get_blocks_by_range(block.index(), block.index())
                .await?
                .pop()
            && old.hash() != block.hash()
        {
            self.inner.delete_block(&old.hash()).await?;
        }
        let h = self.inner.store_block(block).await?;
        if !existed {
            self.ever.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        if self.has(Flaw::RestoreRevivesHead)
            && self.last_deleted.lock().unwrap().1 == Some(block.hash())
        {
            self.inner.set_chain_head(&block.hash()).await?;
        }
        Ok(h)
    }

    async fn retrieve_block(&self, hash: &BlockHash) -> Result<Option<Block>> {
        let got = self.inner.retrieve_block(hash).await?;
        if self.has(Flaw::WrongBlockForHash)
            && let Some(b) = &got
            && let Some(next) = self
                .inner
                .get_blocks_by_range(b.index() + 1, b.index() + 1)
                .await?
                .pop()
        {
            return Ok(Some(next));
        }
        Ok(got)
    }

    async fn delete_block(&self, hash: &BlockHash) -> Result<bool> {
        let head = self.inner.get_chain_head().await?;
        let block = self.inner.retrieve_block(hash).await.ok().flatten();
        if self.has(Flaw::OldestSkipsTies)
            && let Some(b) = &block
            && self.inner.get_stats().await?.oldest_block == Some(b.timestamp())
        {
            *self.oldest_after.lock().unwrap() = Some(b.timestamp());
        }
        let deleted = self.inner.delete_block(hash).await?;
        if deleted {
            self.deletes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut last = self.last_deleted.lock().unwrap();
            last.0 = block;
            if head == Some(*hash) {
                last.1 = Some(*hash);
            }
        }
        if self.has(Flaw::HeadSurvivesDelete) && deleted && head == Some(*hash) {
            *self.stale_head.lock().unwrap() = Some(*hash);
        }
        Ok(deleted)
    }

    async fn block_exists(&self, hash: &BlockHash) -> Result<bool> {
        self.inner.block_exists(hash).await
    }

    async fn store_blocks(&self, blocks: &[Block]) -> Result<Vec<BlockHash>> {
        if self.has(Flaw::PartialInvalidBatch) {
            match self.inner.store_blocks(blocks).await {
                Err(e) if e.kind() == ErrorKind::Verification => {
                    for b in blocks {
                        self.inner.store_block(b).await?;
                    }
                    return Err(e);
                }
                other => return other,
            }
        }
        if self.has(Flaw::RacyCount) {
            let mut new = std::collections::HashSet::new();
            for b in blocks {
                if !self.inner.block_exists(&b.hash()).await? {
                    new.insert(b.hash());
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
            let out = self.inner.store_blocks(blocks).await?;
            self.ever
                .fetch_add(new.len() as u64, std::sync::atomic::Ordering::SeqCst);
            return Ok(out);
        }
        if self.has(Flaw::PartialBatches) {
            let mut out = Vec::new();
            for b in blocks {
                out.push(self.inner.store_block(b).await?);
            }
            return Ok(out);
        }
        let mut out = Vec::new();
        if self.has(Flaw::CountKeepsDeleted)
            || self.has(Flaw::OverwritesOnConflict)
            || self.has(Flaw::EquivocationByPayload)
            || self.has(Flaw::RestoreRevivesHead)
        {
            for b in blocks {
                out.push(self.store_block(b).await?);
            }
            return Ok(out);
        }
        self.inner.store_blocks(blocks).await
    }

    async fn retrieve_blocks(&self, hashes: &[BlockHash]) -> Result<Vec<Option<Block>>> {
        let mut out = Vec::new();
        for (i, h) in hashes.iter().enumerate() {
            if self.has(Flaw::BulkRetrieveFirstPageOnly) && i >= 1_000 {
                out.push(None);
                continue;
            }
            match self.retrieve_block(h).await {
                Err(e) if self.has(Flaw::OmitsDamaged) && e.kind() == ErrorKind::Corrupted => {
                    out.push(None)
                }
                other => out.push(other?),
            }
        }
        Ok(out)
    }

    async fn list_blocks(&self, options: &ListOptions) -> Result<Vec<BlockMetadata>> {
        let mut opts = options.clone();
        if let Some(c) = opts.after {
            let by_time = opts.order == SortOrder::ByTimestamp;
            if self.has(Flaw::IgnoresCursor) {
                opts.after = None;
            }
            if self.has(Flaw::CursorInclusiveInTimeOrder) && by_time && c.index() > 0 {
                opts.after = Some(ListCursor::at(c.index() - 1, c.timestamp_nanos()));
            }
            if self.has(Flaw::CursorSkipsTimestampTies) && by_time {
                opts.after = Some(ListCursor::at(u64::MAX, c.timestamp_nanos()));
            }
            if self.has(Flaw::CursorAscendingInDescendingOrder)
                && opts.order == SortOrder::Descending
            {
                let mut all = opts.clone();
                (all.after, all.offset, all.limit) = (None, None, None);
                let skip = opts.offset.unwrap_or(0) as usize;
                let take = opts.limit.unwrap_or(u64::MAX).min(usize::MAX as u64) as usize;
                return Ok(self
                    .inner
                    .list_blocks(&all)
                    .await?
                    .into_iter()
                    .filter(|m| m.index > c.index())
                    .skip(skip)
                    .take(take)
                    .collect());
            }
        }
        if self.has(Flaw::IgnoresOffset) {
            opts.offset = None;
        }
        if self.has(Flaw::WrongTieOrder) && opts.order == SortOrder::ByTimestamp {
            let mut all = self
                .inner
                .list_blocks(&{
                    let mut all = opts.clone();
                    (all.offset, all.limit) = (None, None);
                    all
                })
                .await?;
            all.sort_by(|a, b| a.timestamp.cmp(&b.timestamp).then(b.index.cmp(&a.index)));
            let skip = opts.offset.unwrap_or(0) as usize;
            let take = opts.limit.unwrap_or(u64::MAX).min(usize::MAX as u64) as usize;
            return Ok(all.into_iter().skip(skip).take(take).collect());
        }
        if self.has(Flaw::ListCappedAtPage) {
            opts.limit = Some(opts.limit.unwrap_or(u64::MAX).min(1_000));
        }
        if self.has(Flaw::ExclusiveEndInTimeOrder)
            && opts.order == SortOrder::ByTimestamp
            && let Some(end) = opts.end_time
            && let Ok(nanos) = unix_nanos(end)
        {
            opts.end_time = Some(storage_core::system_time_from_unix_nanos(
                nanos.saturating_sub(1),
            ));
        }
        if self.has(Flaw::TypeFilterByPrefix)
            && let Some(ty) = opts.filter.as_mut().and_then(|f| f.payload_type.take())
        {
            let all = self
                .inner
                .list_blocks(&{
                    let mut all = opts.clone();
                    (all.offset, all.limit) = (None, None);
                    all
                })
                .await?;
            let skip = opts.offset.unwrap_or(0) as usize;
            let take = opts.limit.unwrap_or(u64::MAX).min(usize::MAX as u64) as usize;
            return Ok(all
                .into_iter()
                .filter(|m| m.payload_type.starts_with(&ty))
                .skip(skip)
                .take(take)
                .collect());
        }
        let mut out = self.inner.list_blocks(&opts).await?;
        if self.has(Flaw::TruncatesTimestamps) {
            for m in &mut out {
                let secs = unix_nanos(m.timestamp)? / 1_000_000_000;
                m.timestamp = UNIX_EPOCH + Duration::from_secs(secs);
            }
        }
        Ok(out)
    }

    async fn count_blocks(&self) -> Result<u64> {
        if self.has(Flaw::RacyCount) {
            let deleted = self.deletes.load(std::sync::atomic::Ordering::SeqCst);
            return Ok(self.ever.load(std::sync::atomic::Ordering::SeqCst) - deleted);
        }
        if self.has(Flaw::CountKeepsDeleted) {
            return Ok(self.ever.load(std::sync::atomic::Ordering::SeqCst));
        }
        self.inner.count_blocks().await
    }

    async fn get_chain_head(&self) -> Result<Option<BlockHash>> {
        match self.inner.get_chain_head().await? {
            None => Ok(*self.stale_head.lock().unwrap()),
            some => Ok(some),
        }
    }

    async fn set_chain_head(&self, hash: &BlockHash) -> Result<()> {
        self.inner.set_chain_head(hash).await?;
        *self.stale_head.lock().unwrap() = None;
        Ok(())
    }

    async fn get_blocks_by_range(&self, start: u64, end: u64) -> Result<Vec<Block>> {
        if self.has(Flaw::ExclusiveRangeEnd) && start < end {
            return self.inner.get_blocks_by_range(start, end - 1).await;
        }
        if self.has(Flaw::OmitsDamaged) && start <= end {
            let listed = self
                .inner
                .list_blocks(&ListOptions::new().min_index(start).max_index(end))
                .await?;
            let mut out = Vec::new();
            for m in listed {
                if let Ok(Some(b)) = self.inner.retrieve_block(&m.hash).await {
                    out.push(b);
                }
            }
            return Ok(out);
        }
        self.inner.get_blocks_by_range(start, end).await
    }

    async fn compact(&self) -> Result<()> {
        self.inner.compact().await?;
        if self.has(Flaw::CompactResurrects) {
            let last = self.last_deleted.lock().unwrap().0.take();
            if let Some(b) = last {
                // Replayed from a stale log: ignore what the store says.
                let _ = self.inner.store_block(&b).await;
            }
        }
        Ok(())
    }

    async fn vacuum(&self) -> Result<()> {
        self.inner.vacuum().await
    }

    async fn get_stats(&self) -> Result<StorageStats> {
        let mut stats = self.inner.get_stats().await?;
        if self.has(Flaw::CountKeepsDeleted) || self.has(Flaw::RacyCount) {
            stats.total_blocks = self.count_blocks().await?;
        }
        let after = *self.oldest_after.lock().unwrap();
        if let Some(after) = after {
            let listed = self.inner.list_blocks(&ListOptions::default()).await?;
            stats.oldest_block = listed
                .iter()
                .map(|m| m.timestamp)
                .filter(|t| *t > after)
                .min();
        }
        Ok(stats)
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

struct BrokenFixture {
    flaw: Option<Flaw>,
    open: std::sync::Mutex<Option<Arc<MemoryBackend>>>,
}

#[async_trait]
impl Fixture for BrokenFixture {
    fn can_corrupt(&self) -> bool {
        true
    }

    fn expected_capabilities(&self) -> Option<Capabilities> {
        Some(Capabilities::new().atomic_batches().vacuum())
    }

    fn max_payload_bytes(&self) -> Option<usize> {
        Some(9 << 20)
    }

    async fn open(&self) -> Result<Arc<dyn StorageBackend>> {
        // Kept encoded, so the corruption cases can damage stored bytes.
        let inner = Arc::new(
            MemoryBackend::with_wire_format(WireFormat::BINARY).with_max_payload_bytes(9 << 20),
        );
        *self.open.lock().unwrap() = Some(inner.clone());
        Ok(Arc::new(Broken {
            inner,
            flaw: self.flaw,
            ever: Default::default(),
            deletes: Default::default(),
            stale_head: Default::default(),
            last_deleted: Default::default(),
            oldest_after: Default::default(),
        }))
    }

    async fn corrupt(
        &self,
        store: Arc<dyn StorageBackend>,
        hash: &BlockHash,
    ) -> Result<Arc<dyn StorageBackend>> {
        let inner = self.open.lock().unwrap().clone();
        let flipped = inner.is_some_and(|m| {
            m.tamper_stored_bytes(hash, |bytes| {
                let mid = bytes.len() / 2;
                bytes[mid] ^= 0x01;
            })
        });
        assert!(flipped, "block {hash} is stored");
        Ok(store)
    }
}

/// Runs every case against the flawed backend; returns the names that failed.
fn failing_cases(flaw: Option<Flaw>) -> BTreeSet<&'static str> {
    let factory: Factory = Arc::new(move || {
        Box::new(BrokenFixture {
            flaw,
            open: Default::default(),
        }) as Box<dyn Fixture>
    });
    all_cases()
        .into_iter()
        .filter(|case| case.run_with(&factory).is_err())
        .map(|case| case.name)
        .collect()
}

fn assert_bites(flaw: Flaw, aimed_at: &[&str]) {
    let failed = assert_cases_bite(flaw, aimed_at);
    assert!(
        failed.contains("model_based_operations"),
        "the model-based test alone should catch {flaw:?}; failed: {failed:?}"
    );
}

/// The cases aimed at `flaw` fail (for flaws the model's small pool and single
/// task cannot show: sizes past a page, damage, races).
fn assert_cases_bite(flaw: Flaw, aimed_at: &[&str]) -> BTreeSet<&'static str> {
    let failed = failing_cases(Some(flaw));
    println!("{flaw:?} fails: {failed:?}");
    for case in aimed_at {
        assert!(
            failed.contains(case),
            "{flaw:?} should fail `{case}`; failed: {failed:?}"
        );
    }
    failed
}

#[test]
fn ignoring_offset_is_caught() {
    assert_bites(
        Flaw::IgnoresOffset,
        &["pagination_edges", "filters_combined"],
    );
}

#[test]
fn count_not_decremented_on_delete_is_caught() {
    assert_bites(
        Flaw::CountKeepsDeleted,
        &["delete_keeps_views_consistent", "stats_agree_with_list"],
    );
}

#[test]
fn wrong_block_for_hash_is_caught() {
    assert_bites(
        Flaw::WrongBlockForHash,
        &[
            "store_retrieve_round_trip",
            "concurrent_writers_and_readers",
        ],
    );
}

#[test]
fn overwrite_on_conflict_is_caught() {
    assert_bites(
        Flaw::OverwritesOnConflict,
        &["index_conflict_rejected", "batch_conflict_is_reported"],
    );
}

#[test]
fn stale_head_after_delete_is_caught() {
    assert_bites(Flaw::HeadSurvivesDelete, &["delete_head_clears_head"]);
}

#[test]
fn truncated_timestamps_are_caught() {
    assert_bites(
        Flaw::TruncatesTimestamps,
        &["timestamps_keep_nanoseconds", "list_metadata_is_exact"],
    );
}

#[test]
fn partial_batches_are_caught() {
    assert_bites(Flaw::PartialBatches, &["batch_conflict_is_atomic"]);
}

#[test]
fn exclusive_range_end_is_caught() {
    assert_bites(Flaw::ExclusiveRangeEnd, &["range_bounds_and_gaps"]);
}

#[test]
fn wrong_tie_order_is_caught() {
    assert_bites(Flaw::WrongTieOrder, &["sort_orders_and_ties"]);
}

#[test]
fn bulk_retrieve_past_a_page_is_caught() {
    assert_cases_bite(
        Flaw::BulkRetrieveFirstPageOnly,
        &["bulk_reads_agree_with_single_reads"],
    );
}

#[test]
fn listings_capped_at_a_page_are_caught() {
    assert_cases_bite(
        Flaw::ListCappedAtPage,
        &[
            "bulk_reads_agree_with_single_reads",
            "pages_beyond_internal_sizes",
        ],
    );
}

#[test]
fn exclusive_end_in_time_order_is_caught() {
    assert_bites(
        Flaw::ExclusiveEndInTimeOrder,
        &["time_bounds_in_every_order"],
    );
}

#[test]
fn type_filter_by_prefix_is_caught() {
    assert_bites(Flaw::TypeFilterByPrefix, &["filters_match_exactly"]);
}

#[test]
fn compact_resurrecting_a_block_is_caught() {
    assert_bites(
        Flaw::CompactResurrects,
        &["maintenance_after_deletes_and_restores"],
    );
}

#[test]
fn restore_reviving_the_head_is_caught() {
    assert_bites(Flaw::RestoreRevivesHead, &["head_around_deleted_blocks"]);
}

#[test]
fn oldest_skipping_ties_is_caught() {
    assert_bites(
        Flaw::OldestSkipsTies,
        &["stats_follow_ties_through_deletes"],
    );
}

#[test]
fn partial_invalid_batches_are_caught() {
    assert_bites(
        Flaw::PartialInvalidBatch,
        &["invalid_batches_store_nothing"],
    );
}

#[test]
fn equivocation_by_payload_is_caught() {
    assert_bites(
        Flaw::EquivocationByPayload,
        &["equivocation_is_index_conflict"],
    );
}

#[test]
fn damage_omitted_from_bulk_reads_is_caught() {
    assert_cases_bite(
        Flaw::OmitsDamaged,
        &[
            "corrupted_block_is_reported",
            "damage_seen_through_bulk_reads",
        ],
    );
}

#[test]
fn racy_counts_are_caught() {
    assert_cases_bite(
        Flaw::RacyCount,
        &["interleavings_agree_with_a_serial_order"],
    );
}

#[test]
fn ignored_cursor_is_caught() {
    assert_bites(
        Flaw::IgnoresCursor,
        &[
            "cursor_paging_equals_offset_paging",
            "cursor_positions_need_no_block",
        ],
    );
}

#[test]
fn cursor_repeating_its_entry_is_caught() {
    assert_bites(
        Flaw::CursorInclusiveInTimeOrder,
        &[
            "cursor_paging_equals_offset_paging",
            "cursor_positions_need_no_block",
        ],
    );
}

#[test]
fn cursor_losing_ties_is_caught() {
    assert_bites(
        Flaw::CursorSkipsTimestampTies,
        &[
            "cursor_paging_equals_offset_paging",
            "cursor_positions_need_no_block",
        ],
    );
}

#[test]
fn cursor_in_the_wrong_direction_is_caught() {
    assert_bites(
        Flaw::CursorAscendingInDescendingOrder,
        &[
            "cursor_paging_equals_offset_paging",
            "cursor_positions_need_no_block",
        ],
    );
}

#[test]
fn claimed_persistence_is_held_to_its_word() {
    // The claim brings in the reopen cases, which a memory store fails.
    assert_cases_bite(
        Flaw::ClaimsPersistence,
        &[
            "capabilities_are_steady_and_as_declared",
            "reopen_after_close",
            "reopen_after_drop",
        ],
    );
}

#[test]
fn a_hidden_capability_is_caught() {
    // Skipping the atomic-batch cases is not a pass: the fixture declared them.
    assert_cases_bite(
        Flaw::HidesAtomicBatches,
        &["capabilities_are_steady_and_as_declared"],
    );
}

#[test]
fn the_control_passes_everything() {
    // The same wrapper without a flaw fails nothing, so the failures above come
    // from the flaws, not from the wrapper or the harness.
    assert!(all_cases().len() >= 50);
    assert_eq!(failing_cases(None), BTreeSet::new());
}
