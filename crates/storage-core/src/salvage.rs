//! Copying what is intact out of a damaged store.
//!
//! A damaged store refuses to open, or reports damage on reads, rather than hide
//! a loss. Salvaging copies every block that still reads and verifies into a new
//! store and reports exactly which indices did not make it. A backend whose store
//! cannot be opened at all once damaged (the filesystem backend) has its own
//! salvage that reads its files directly; any store that opens can be salvaged
//! with [`copy_intact`].

use crate::{Block, BlockHash, ListOptions, Result, StorageBackend, StorageError, verify_block};

/// What a salvage copied and what it lost.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SalvageReport {
    /// Blocks copied into the new store (each one's signature verified).
    pub copied: u64,
    /// Index ranges (inclusive) that were not copied: below the highest known
    /// index, and unreadable or gone (deleted blocks are left out where the
    /// salvage can tell).
    pub lost: Vec<(u64, u64)>,
    /// Where the damage was, in the source's own terms (files and byte ranges,
    /// or blocks that failed to read).
    pub damage: Vec<String>,
    /// The head of the new store.
    pub head: Option<BlockHash>,
}

impl SalvageReport {
    /// The lost indices as `#1..=#3, #7`, or `none`.
    pub fn lost_summary(&self) -> String {
        if self.lost.is_empty() {
            return "none".into();
        }
        format_ranges(&self.lost).join(", ")
    }
}

/// Inclusive index ranges as `#7` or `#1..=#3`, one string each.
pub fn format_ranges(ranges: &[(u64, u64)]) -> Vec<String> {
    ranges
        .iter()
        .map(|(a, b)| {
            if a == b {
                format!("#{a}")
            } else {
                format!("#{a}..=#{b}")
            }
        })
        .collect()
}

/// Index ranges missing from `present` below `top` (inclusive), leaving out
/// `deleted` ones.
pub fn missing_ranges(
    present: &std::collections::BTreeSet<u64>,
    deleted: &std::collections::BTreeSet<u64>,
    top: Option<u64>,
) -> Vec<(u64, u64)> {
    let Some(top) = top else {
        return Vec::new();
    };
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut hole = |a: u64, b: u64| {
        let mut start = Some(a);
        for &d in deleted.range(a..=b) {
            if let Some(s) = start
                && d > s
            {
                out.push((s, d - 1));
            }
            start = d.checked_add(1);
        }
        if let Some(s) = start
            && s <= b
        {
            out.push((s, b));
        }
    };
    // The next index expected; `None` once past u64::MAX.
    let mut next = Some(0u64);
    for &p in present.range(..=top) {
        let Some(n) = next else { break };
        if p > n {
            hole(n, p - 1);
        }
        next = p.checked_add(1);
    }
    if let Some(n) = next
        && n <= top
    {
        hole(n, top);
    }
    out
}

/// Copies `blocks` (in index order) into `dst` in batches; each block's
/// signature is verified first, and one that fails is recorded as damage.
pub async fn store_salvaged(
    dst: &dyn StorageBackend,
    blocks: impl IntoIterator<Item = Block>,
    report: &mut SalvageReport,
    copied: &mut std::collections::BTreeSet<u64>,
) -> Result<()> {
    let mut batch = Vec::with_capacity(500);
    for b in blocks {
        if let Err(e) = verify_block(&b, None) {
            report.damage.push(format!(
                "block #{} ({}) does not verify: {e}",
                b.index(),
                b.hash()
            ));
            continue;
        }
        copied.insert(b.index());
        batch.push(b);
        if batch.len() == 500 {
            dst.store_blocks(&batch).await?;
            report.copied += batch.len() as u64;
            batch.clear();
        }
    }
    if !batch.is_empty() {
        dst.store_blocks(&batch).await?;
        report.copied += batch.len() as u64;
    }
    Ok(())
}

/// Copies every block of `src` that reads and verifies into `dst` (which should
/// be empty), then sets `dst`'s head: the source's head if it was copied, or
/// the highest block copied.
///
/// Blocks are read by index range, up to the highest stored index; a range that
/// fails is split in halves down to single indices, so damage costs only the
/// blocks it touches. Each index that cannot be read is recorded as damage.
/// Indices never stored (or deleted) cannot be told apart from lost ones here,
/// so [`SalvageReport::lost`] lists every index below the top that was not copied.
pub async fn copy_intact(
    src: &dyn StorageBackend,
    dst: &dyn StorageBackend,
) -> Result<SalvageReport> {
    require_empty(dst.count_blocks().await?)?;
    let mut report = SalvageReport::default();
    let mut copied = std::collections::BTreeSet::new();
    let head = match src.get_chain_head().await {
        Ok(h) => h,
        Err(e) => {
            report.damage.push(format!("the head cannot be read: {e}"));
            None
        }
    };
    let top = highest_index(src, head, &mut report).await?;
    if let Some(top) = top {
        let mut from = 0u64;
        loop {
            let to = from.saturating_add(999).min(top);
            let mut blocks = Vec::new();
            read_salvageable(src, from, to, &mut blocks, &mut report).await;
            store_salvaged(dst, blocks, &mut report, &mut copied).await?;
            if to == top {
                break;
            }
            from = to + 1;
        }
    }
    report.lost = missing_ranges(&copied, &Default::default(), top);
    report.head = settle_head(dst, head).await?;
    Ok(report)
}

/// The highest stored index: from the listing, else from the head block.
async fn highest_index(
    src: &dyn StorageBackend,
    head: Option<BlockHash>,
    report: &mut SalvageReport,
) -> Result<Option<u64>> {
    let listed = src
        .list_blocks(&ListOptions::new().limit(1).descending())
        .await;
    match listed {
        Ok(top) => Ok(top.first().map(|m| m.index)),
        Err(e) => {
            report
                .damage
                .push(format!("the highest index cannot be listed: {e}"));
            match head {
                Some(h) => Ok(src.retrieve_block(&h).await?.map(|b| b.index())),
                None => Err(StorageError::corrupted_by(
                    "salvage: neither the listing nor the head says how far the chain goes",
                    e,
                )),
            }
        }
    }
}

/// Reads `from..=to` into `out`, splitting failed ranges down to single indices.
async fn read_salvageable(
    src: &dyn StorageBackend,
    from: u64,
    to: u64,
    out: &mut Vec<Block>,
    report: &mut SalvageReport,
) {
    let mut pending = vec![(from, to)];
    while let Some((a, b)) = pending.pop() {
        match src.get_blocks_by_range(a, b).await {
            Ok(blocks) => out.extend(blocks),
            Err(e) if a == b => report
                .damage
                .push(format!("block #{a} cannot be read: {e}")),
            Err(_) => {
                let mid = a + (b - a) / 2;
                // Popped last-in-first-out: the lower half first, keeping order.
                pending.push((mid + 1, b));
                pending.push((a, mid));
            }
        }
    }
}

/// Sets `dst`'s head to `wanted` if `dst` holds it, else to its highest block.
pub async fn settle_head(
    dst: &dyn StorageBackend,
    wanted: Option<BlockHash>,
) -> Result<Option<BlockHash>> {
    if let Some(h) = wanted
        && dst.block_exists(&h).await?
    {
        dst.set_chain_head(&h).await?;
        return Ok(Some(h));
    }
    let top = dst
        .list_blocks(&ListOptions::new().limit(1).descending())
        .await?;
    match top.first() {
        // Salvage keeps what is intact, gaps and all: the highest block is
        // the head even where blocks below it were lost.
        Some(m) => {
            dst.set_chain_head(&m.hash).await?;
            Ok(Some(m.hash))
        }
        None => Ok(None),
    }
}

/// The error for a salvage whose destination already holds blocks.
pub fn require_empty(count: u64) -> Result<()> {
    if count > 0 {
        return Err(StorageError::InvalidInput(format!(
            "the salvage destination already holds {count} blocks; salvage into a new store"
        )));
    }
    Ok(())
}
