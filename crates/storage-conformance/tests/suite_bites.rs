//! Proof that the suite bites: each deliberately broken backend (a wrapper over
//! the memory backend with one flaw) must fail the cases aimed at that flaw, and
//! the model-based test must catch it on its own too.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use storage_conformance::{Capabilities, Factory, Fixture, all_cases};
use storage_core::{
    Block, BlockHash, BlockMetadata, ListOptions, Result, SortOrder, StorageBackend, StorageStats,
    async_trait, unix_nanos,
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
}

#[derive(Debug)]
struct Broken {
    inner: MemoryBackend,
    /// `None`: a sound pass-through, the control.
    flaw: Option<Flaw>,
    /// For `CountKeepsDeleted`: blocks ever stored.
    ever: std::sync::atomic::AtomicU64,
    /// For `HeadSurvivesDelete`: the deleted head still reported.
    stale_head: std::sync::Mutex<Option<BlockHash>>,
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

    async fn store_block(&self, block: &Block) -> Result<BlockHash> {
        let existed = self.inner.block_exists(&block.hash()).await?;
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
        let deleted = self.inner.delete_block(hash).await?;
        if self.has(Flaw::HeadSurvivesDelete) && deleted && head == Some(*hash) {
            *self.stale_head.lock().unwrap() = Some(*hash);
        }
        Ok(deleted)
    }

    async fn block_exists(&self, hash: &BlockHash) -> Result<bool> {
        self.inner.block_exists(hash).await
    }

    async fn store_blocks(&self, blocks: &[Block]) -> Result<Vec<BlockHash>> {
        if self.has(Flaw::PartialBatches) {
            let mut out = Vec::new();
            for b in blocks {
                out.push(self.inner.store_block(b).await?);
            }
            return Ok(out);
        }
        let mut out = Vec::new();
        if self.has(Flaw::CountKeepsDeleted) || self.has(Flaw::OverwritesOnConflict) {
            for b in blocks {
                out.push(self.store_block(b).await?);
            }
            return Ok(out);
        }
        self.inner.store_blocks(blocks).await
    }

    async fn retrieve_blocks(&self, hashes: &[BlockHash]) -> Result<Vec<Option<Block>>> {
        let mut out = Vec::new();
        for h in hashes {
            out.push(self.retrieve_block(h).await?);
        }
        Ok(out)
    }

    async fn list_blocks(&self, options: &ListOptions) -> Result<Vec<BlockMetadata>> {
        let mut opts = options.clone();
        if self.has(Flaw::IgnoresOffset) {
            opts.offset = None;
        }
        if self.has(Flaw::WrongTieOrder) && opts.order == SortOrder::ByTimestamp {
            let mut all = self
                .inner
                .list_blocks(&ListOptions {
                    offset: None,
                    limit: None,
                    ..opts.clone()
                })
                .await?;
            all.sort_by(|a, b| a.timestamp.cmp(&b.timestamp).then(b.index.cmp(&a.index)));
            let skip = opts.offset.unwrap_or(0) as usize;
            let take = opts.limit.unwrap_or(u64::MAX).min(usize::MAX as u64) as usize;
            return Ok(all.into_iter().skip(skip).take(take).collect());
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
        self.inner.get_blocks_by_range(start, end).await
    }

    async fn compact(&self) -> Result<()> {
        self.inner.compact().await
    }

    async fn vacuum(&self) -> Result<()> {
        self.inner.vacuum().await
    }

    async fn get_stats(&self) -> Result<StorageStats> {
        let mut stats = self.inner.get_stats().await?;
        if self.has(Flaw::CountKeepsDeleted) {
            stats.total_blocks = self.count_blocks().await?;
        }
        Ok(stats)
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

struct BrokenFixture(Option<Flaw>);

#[async_trait]
impl Fixture for BrokenFixture {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            persistent: false,
            corruption: false,
            atomic_batches: true,
            vacuum: true,
        }
    }

    async fn open(&self) -> Result<Arc<dyn StorageBackend>> {
        Ok(Arc::new(Broken {
            inner: MemoryBackend::new(),
            flaw: self.0,
            ever: Default::default(),
            stale_head: Default::default(),
        }))
    }
}

/// Runs every case against the flawed backend; returns the names that failed.
fn failing_cases(flaw: Option<Flaw>) -> BTreeSet<&'static str> {
    let factory: Factory = Arc::new(move || Box::new(BrokenFixture(flaw)) as Box<dyn Fixture>);
    all_cases()
        .into_iter()
        .filter(|case| case.run_with(&factory).is_err())
        .map(|case| case.name)
        .collect()
}

fn assert_bites(flaw: Flaw, aimed_at: &[&str]) {
    let failed = failing_cases(Some(flaw));
    println!("{flaw:?} fails: {failed:?}");
    for case in aimed_at {
        assert!(
            failed.contains(case),
            "{flaw:?} should fail `{case}`; failed: {failed:?}"
        );
    }
    assert!(
        failed.contains("model_based_operations"),
        "the model-based test alone should catch {flaw:?}; failed: {failed:?}"
    );
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
fn the_control_passes_everything() {
    // The same wrapper without a flaw fails nothing, so the failures above come
    // from the flaws, not from the wrapper or the harness.
    assert!(all_cases().len() >= 30);
    assert_eq!(failing_cases(None), BTreeSet::new());
}
