//! `get_blocks_by_range` bounds and the chain head.

use storage_core::{BlockHash, ErrorKind, StorageBackend};

use crate::check::{ensure_eq, expect_kind, same_blocks};
use crate::data;
use crate::{CaseResult, Env};

/// Inclusive bounds, gaps skipped, ascending order; `start > end` is invalid input.
pub async fn range_bounds_and_gaps(env: &Env) -> CaseResult {
    let s = env.open().await?;
    let chain = data::chain(10);
    let stored = [0usize, 1, 2, 5, 6, 9];
    let mut batch: Vec<_> = stored.iter().map(|&i| chain[i].clone()).collect();
    batch.reverse();
    s.store_blocks(&batch).await?;
    let pick = |idx: &[usize]| idx.iter().map(|&i| &chain[i]).collect::<Vec<_>>();
    same_blocks(
        &s.get_blocks_by_range(0, 9).await?,
        &pick(&stored),
        "range 0..=9",
    )?;
    same_blocks(
        &s.get_blocks_by_range(3, 4).await?,
        &pick(&[]),
        "range inside a gap",
    )?;
    same_blocks(
        &s.get_blocks_by_range(2, 5).await?,
        &pick(&[2, 5]),
        "range 2..=5 across a gap",
    )?;
    same_blocks(
        &s.get_blocks_by_range(9, 9).await?,
        &pick(&[9]),
        "range 9..=9",
    )?;
    same_blocks(
        &s.get_blocks_by_range(5, 5).await?,
        &pick(&[5]),
        "single index",
    )?;
    same_blocks(
        &s.get_blocks_by_range(10, u64::MAX).await?,
        &pick(&[]),
        "past the end",
    )?;
    same_blocks(
        &s.get_blocks_by_range(0, u64::MAX).await?,
        &pick(&stored),
        "0..=u64::MAX",
    )?;
    expect_kind(
        s.get_blocks_by_range(5, 2).await,
        ErrorKind::InvalidInput,
        "range 5..=2",
    )?;
    Ok(())
}

/// The head starts unset; only stored blocks can become head; a failed set keeps
/// the old head.
pub async fn chain_head_set_get_invalid(env: &Env) -> CaseResult {
    let s = env.open().await?;
    let chain = data::chain(3);
    ensure_eq!(s.get_chain_head().await?, None, "initial head");
    expect_kind(
        s.set_chain_head(&chain[0].hash()).await,
        ErrorKind::NotFound,
        "head to an unstored block",
    )?;
    ensure_eq!(s.get_chain_head().await?, None, "head after failed set");
    s.store_blocks(&chain).await?;
    s.set_chain_head(&chain[1].hash()).await?;
    ensure_eq!(s.get_chain_head().await?, Some(chain[1].hash()), "head set");
    s.set_chain_head(&chain[2].hash()).await?;
    ensure_eq!(
        s.get_chain_head().await?,
        Some(chain[2].hash()),
        "head moved"
    );
    s.set_chain_head(&chain[0].hash()).await?;
    ensure_eq!(
        s.get_chain_head().await?,
        Some(chain[0].hash()),
        "head may move back"
    );
    expect_kind(
        s.set_chain_head(&BlockHash([3; 32])).await,
        ErrorKind::NotFound,
        "head to an unknown hash",
    )?;
    ensure_eq!(
        s.get_chain_head().await?,
        Some(chain[0].hash()),
        "head kept after failed set"
    );
    Ok(())
}
