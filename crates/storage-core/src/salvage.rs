//! Copying what is intact out of a damaged store.
//!
//! A damaged store refuses to open, or reports damage on reads, rather than hide
//! a loss. Salvaging copies every block that still reads and verifies into a new
//! store and reports exactly which indices did not make it. A backend whose store
//! cannot be opened at all once damaged (the filesystem backend) has its own
//! salvage that reads its files directly; any store that opens can be salvaged
//! with [`copy_intact`].

use crate::{
    Block, BlockFilter, BlockHash, ListOptions, Result, StorageBackend, StorageBackendExt,
    StorageError, verify_block,
};

/// What a salvage copied and what it lost.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SalvageReport {
    /// Blocks copied into the new store (each one's signature verified).
    pub copied: u64,
    /// Index ranges (inclusive) that were not copied: below the highest known
    /// index, not deleted, and unreadable or gone.
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
        self.lost
            .iter()
            .map(|(a, b)| {
                if a == b {
                    format!("#{a}")
                } else {
                    format!("#{a}..=#{b}")
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
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
/// the highest block copied. Blocks that fail to read are skipped and reported.
pub async fn copy_intact(
    src: &dyn StorageBackend,
    dst: &dyn StorageBackend,
) -> Result<SalvageReport> {
    let mut report = SalvageReport::default();
    let mut copied = std::collections::BTreeSet::new();
    let mut top: Option<u64> = None;
    let mut from = 0u64;
    loop {
        let listed = src
            .list_blocks(&ListOptions {
                limit: Some(1_000),
                filter: Some(BlockFilter {
                    min_index: Some(from),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await?;
        let Some(last) = listed.last() else { break };
        let last = last.index;
        top = Some(last);
        let mut page = Vec::with_capacity(listed.len());
        for m in &listed {
            match src.retrieve_block(&m.hash).await {
                Ok(Some(b)) => page.push(b),
                Ok(None) => report.damage.push(format!(
                    "block #{} ({}) is listed but not stored",
                    m.index, m.hash
                )),
                Err(e) => report.damage.push(format!(
                    "block #{} ({}) cannot be read: {e}",
                    m.index, m.hash
                )),
            }
        }
        store_salvaged(dst, page, &mut report, &mut copied).await?;
        if last == u64::MAX {
            break;
        }
        from = last + 1;
    }
    report.lost = missing_ranges(&copied, &Default::default(), top);
    let head = match src.get_chain_head().await {
        Ok(h) => h,
        Err(e) => {
            report.damage.push(format!("the head cannot be read: {e}"));
            None
        }
    };
    report.head = settle_head(dst, head).await?;
    Ok(report)
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
        .list_blocks(&ListOptions {
            limit: Some(1),
            order: crate::SortOrder::Descending,
            ..Default::default()
        })
        .await?;
    match top.first() {
        Some(m) => {
            dst.advance_head(&m.hash).await?;
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
