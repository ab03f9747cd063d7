//! Checking a store against itself: [`StorageBackendExt::verify_store`].
//!
//! A store can lose blocks without any read failing (a file cut at a record
//! boundary, a database page that no longer lists a row). Reading every block
//! catches damaged bytes; only comparing the views with each other catches a block
//! that is simply gone. So a verification:
//! 1. runs the engine's own check ([`StorageBackend::check_integrity`]);
//! 2. walks the chain from genesis in index order, checking signatures, the index
//!    sequence, hash links and timestamps;
//! 3. compares what it walked with what the store says it holds: the count, and
//!    the head, which must be the highest block walked;
//! 4. reports gaps in the index sequence (a failure unless
//!    [`VerifyOptions::allow_gaps`]: some stores are filled from several sources).
//!
//! [`StorageBackendExt::verify_store`]: crate::StorageBackendExt::verify_store

use crate::{
    Block, BlockHash, ErrorKind, ListOptions, Result, StorageBackend, StorageError, verify_block,
};

/// What [`verify_store`](crate::StorageBackendExt::verify_store) checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyOptions {
    /// Blocks read per request.
    pub page: u64,
    /// Accept missing indices (each gap is still reported in
    /// [`VerifyReport::gaps`]); the hash link across a gap cannot be checked.
    pub allow_gaps: bool,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            page: 1_000,
            allow_gaps: false,
        }
    }
}

impl VerifyOptions {
    /// Reads `page` blocks per request.
    pub fn page(mut self, page: u64) -> Self {
        self.page = page.max(1);
        self
    }

    /// Accepts gaps in the index sequence.
    pub fn allow_gaps(mut self, allow: bool) -> Self {
        self.allow_gaps = allow;
        self
    }
}

/// What a passing verification saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Blocks read and verified.
    pub checked: u64,
    /// Blocks the store says it holds (equal to `checked` when it passes).
    pub stored: u64,
    /// The highest block: its index and hash.
    pub last: Option<(u64, BlockHash)>,
    /// The chain head (equal to `last` when it passes).
    pub head: Option<BlockHash>,
    /// Missing index ranges, inclusive (only when gaps are allowed).
    pub gaps: Vec<(u64, u64)>,
}

/// Runs the whole verification (see the module docs); `progress` is called as
/// blocks verify.
pub(crate) async fn verify_store<S: StorageBackend + ?Sized>(
    store: &S,
    options: &VerifyOptions,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<VerifyReport> {
    store.check_integrity().await?;
    let stored = store.count_blocks().await?;
    let mut report = VerifyReport {
        stored,
        ..VerifyReport::default()
    };
    let mut prev: Option<Block> = None;
    // The index the next block should have.
    let mut expected = 0u64;
    loop {
        let end = expected.saturating_add(options.page.max(1) - 1);
        let (blocks, unreadable) = read_window(store, expected, end).await?;
        if blocks.is_empty() && unreadable.is_none() {
            // Nothing in this window: find the next stored index, if any.
            match next_stored(store, expected).await? {
                None => break,
                Some(next) => {
                    gap(&mut report, options, expected, next, prev.as_ref())?;
                    expected = next;
                    continue;
                }
            }
        }
        for b in blocks {
            // A store answering out of order would walk in circles: damage.
            if b.index() < expected || b.index() > end {
                return Err(StorageError::corrupted(format!(
                    "reading blocks #{expected}..=#{end} returned block #{} ({})",
                    b.index(),
                    b.hash()
                )));
            }
            gap(&mut report, options, expected, b.index(), prev.as_ref())?;
            let linked = prev
                .as_ref()
                .filter(|p| p.index().checked_add(1) == Some(b.index()));
            verify_block(&b, linked)?;
            expected = b.index().saturating_add(1);
            prev = Some(b);
            report.checked += 1;
            progress(1);
        }
        if let Some(e) = unreadable {
            return Err(e);
        }
        if prev.as_ref().is_some_and(|b| b.index() == u64::MAX) {
            break;
        }
    }
    report.last = prev.as_ref().map(|b| (b.index(), b.hash()));
    report.head = store.get_chain_head().await?;
    if report.checked != stored {
        return Err(StorageError::corrupted(format!(
            "the store counts {stored} blocks but {} were found walking the chain \
             (the difference is unreadable or lost)",
            report.checked
        )));
    }
    match (report.head, report.last) {
        (None, None) => {}
        (None, Some((i, _))) => {
            return Err(StorageError::Verification {
                index: i,
                reason: format!("no head is set although blocks up to #{i} are stored"),
            });
        }
        (Some(h), last) => {
            let Some(block) = store.retrieve_block(&h).await? else {
                return Err(StorageError::corrupted(format!(
                    "the head names block {h}, which is not stored"
                )));
            };
            if last.map(|(_, l)| l) != Some(h) {
                let (i, l) = last.expect("a stored head block makes the store non-empty");
                return Err(StorageError::Verification {
                    index: block.index(),
                    reason: format!(
                        "the head is block #{} ({h}) but blocks up to #{i} ({l}) are stored",
                        block.index()
                    ),
                });
            }
        }
    }
    Ok(report)
}

/// Moves the head to `hash` only if it is higher than the current head (see
/// [`StorageBackendExt::advance_head`](crate::StorageBackendExt::advance_head)).
pub(crate) async fn advance_head<S: StorageBackend + ?Sized>(
    store: &S,
    hash: &BlockHash,
) -> Result<bool> {
    let block = store
        .retrieve_block(hash)
        .await?
        .ok_or(StorageError::BlockNotFound { hash: *hash })?;
    // Where the walk up to the new head starts: after the current head, or at
    // the first block when there is none.
    let mut prev = None;
    if let Some(head) = store.get_chain_head().await? {
        if head == *hash {
            return Ok(false);
        }
        // A head naming no stored block is left to `verify_store` to report;
        // any stored block is higher than nothing.
        if let Some(current) = store.retrieve_block(&head).await? {
            if current.index() >= block.index() {
                return Ok(false);
            }
            prev = Some(current);
        }
    }
    check_linked(store, prev, &block).await?;
    store.set_chain_head(hash).await?;
    Ok(true)
}

/// Checks that `top` links back through stored blocks to `from` (the current
/// head), or to the chain's first block when `from` is `None`: every index in
/// between is stored, and each block names the one before it. Reads the
/// blocks in between a window at a time.
async fn check_linked<S: StorageBackend + ?Sized>(
    store: &S,
    from: Option<Block>,
    top: &Block,
) -> Result<()> {
    const WINDOW: u64 = 256;
    let refuse = |index: u64, why: String| StorageError::Verification {
        index,
        reason: format!(
            "the head cannot move to block #{} ({}): {why}",
            top.index(),
            top.hash()
        ),
    };
    let mut expected = from.as_ref().map_or(0, |b| b.index() + 1);
    let mut prev = from;
    while expected <= top.index() {
        let end = expected.saturating_add(WINDOW - 1).min(top.index());
        let window = store.get_blocks_by_range(expected, end).await?;
        for b in window {
            if b.index() != expected {
                return Err(refuse(
                    expected,
                    format!(
                        "block #{expected} is not stored, so it does not link back to the stored chain"
                    ),
                ));
            }
            // With no block before it, the walk starts at index 0, whose block
            // names no previous one (the block model requires it).
            match &prev {
                Some(p) if b.previous_hash() != Some(&p.hash()) => {
                    return Err(refuse(
                        expected,
                        format!(
                            "block #{expected} does not name block #{} ({}) as its previous",
                            p.index(),
                            p.hash()
                        ),
                    ));
                }
                _ => {}
            }
            expected += 1;
            prev = Some(b);
        }
        if expected <= end {
            return Err(refuse(
                expected,
                format!(
                    "block #{expected} is not stored, so it does not link back to the stored chain"
                ),
            ));
        }
    }
    // The walk ends on the block at the new head's index: it must be that block.
    match prev {
        Some(p) if p.hash() == top.hash() => Ok(()),
        _ => Err(refuse(
            top.index(),
            "another block is stored at its index".into(),
        )),
    }
}

/// Records the missing indices `from..to` (exclusive), or fails unless allowed.
fn gap(
    report: &mut VerifyReport,
    options: &VerifyOptions,
    from: u64,
    to: u64,
    prev: Option<&Block>,
) -> Result<()> {
    if from >= to {
        return Ok(());
    }
    if !options.allow_gaps {
        let after = prev.map_or_else(String::new, |p| format!(" after block #{}", p.index()));
        let missing = if to - from == 1 {
            format!("block #{from} is missing")
        } else {
            format!("blocks #{from}..=#{} are missing", to - 1)
        };
        return Err(StorageError::Verification {
            index: from,
            reason: format!("gap: {missing}{after} (the next stored block is #{to})"),
        });
    }
    report.gaps.push((from, to - 1));
    Ok(())
}

/// The first stored index at or after `from`.
async fn next_stored<S: StorageBackend + ?Sized>(store: &S, from: u64) -> Result<Option<u64>> {
    let next = store
        .list_blocks(&ListOptions::new().limit(1).min_index(from))
        .await?;
    Ok(next.first().map(|m| m.index))
}

/// The blocks of `start..=end`. When the range read fails, each listed block is
/// read on its own: the blocks before the first that cannot be read come back
/// with an error naming that one.
async fn read_window<S: StorageBackend + ?Sized>(
    store: &S,
    start: u64,
    end: u64,
) -> Result<(Vec<Block>, Option<StorageError>)> {
    let range_error = match store.get_blocks_by_range(start, end).await {
        Ok(blocks) => return Ok((blocks, None)),
        Err(e) => e,
    };
    let listed = store
        .list_blocks(&ListOptions::new().min_index(start).max_index(end))
        .await?;
    let mut read = Vec::with_capacity(listed.len());
    for m in listed {
        match store.retrieve_block(&m.hash).await {
            Ok(Some(b)) => read.push(b),
            Ok(None) => {}
            Err(e) if e.kind() == ErrorKind::Corrupted => {
                let e = StorageError::corrupted_by(
                    format!(
                        "block #{} ({}): its stored bytes are damaged",
                        m.index, m.hash
                    ),
                    e,
                );
                return Ok((read, Some(e)));
            }
            Err(e) => return Ok((read, Some(e))),
        }
    }
    Ok((read, Some(range_error)))
}
