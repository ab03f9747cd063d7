//! `get_blocks_by_range` bounds, the chain head, and verifying a store against
//! itself.

use storage_core::{
    BlockHash, ErrorKind, StorageBackend, StorageBackendExt, StorageError, VerifyOptions,
};

use crate::check::{ensure, ensure_eq, expect_kind, fail, same_blocks};
use crate::data;
use crate::fault::{FaultMode, FaultyBackend};
use crate::{CaseError, CaseResult, Env};

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

/// `advance_head` moves the head only upwards (or onto the first block), and
/// names an unknown block; `set_chain_head` still moves it anywhere.
pub async fn advance_head_only_moves_up(env: &Env) -> CaseResult {
    let s = env.open().await?;
    let chain = data::chain(12);
    s.store_blocks(&chain[..8]).await?;
    ensure!(
        s.advance_head(&chain[5].hash()).await?,
        "advance with no head set must move it"
    );
    ensure_eq!(
        s.get_chain_head().await?,
        Some(chain[5].hash()),
        "first head"
    );
    for lower in [0usize, 4, 5] {
        ensure!(
            !s.advance_head(&chain[lower].hash()).await?,
            "advance to #{lower}, not above #5, must not move the head"
        );
        ensure_eq!(
            s.get_chain_head().await?,
            Some(chain[5].hash()),
            "head after advancing to #{lower}"
        );
    }
    ensure!(
        s.advance_head(&chain[7].hash()).await?,
        "advance to #7 above #5 must move it"
    );
    ensure_eq!(
        s.get_chain_head().await?,
        Some(chain[7].hash()),
        "head moved up"
    );
    expect_kind(
        s.advance_head(&chain[9].hash()).await,
        ErrorKind::NotFound,
        "advance to an unstored block",
    )?;
    ensure_eq!(
        s.get_chain_head().await?,
        Some(chain[7].hash()),
        "head kept"
    );
    // Re-storing lower blocks (an import of old blocks) leaves the head alone.
    s.store_blocks(&chain[2..4]).await?;
    ensure_eq!(
        s.get_chain_head().await?,
        Some(chain[7].hash()),
        "after re-store"
    );
    s.set_chain_head(&chain[1].hash()).await?;
    ensure_eq!(
        s.get_chain_head().await?,
        Some(chain[1].hash()),
        "set moves back"
    );
    Ok(())
}

/// `advance_head` moves the head only to a block linked back to it (or to the
/// chain's first block when none is set): over a gap, or from a chain without
/// its first block, it refuses with `Verification` naming the first index
/// that does not link, and the head stays.
pub async fn advance_head_needs_a_linked_chain(env: &Env) -> CaseResult {
    let s = env.open().await?;
    let chain = data::chain(12);
    // Blocks 3..=5 without the start of the chain.
    s.store_blocks(&chain[3..6]).await?;
    let refused = s.advance_head(&chain[5].hash()).await;
    expect_kind(
        refused,
        ErrorKind::Verification,
        "advance with no first block",
    )?;
    ensure_eq!(s.get_chain_head().await?, None, "head after refusal");
    // The start arrives: now it links.
    s.store_blocks(&chain[..3]).await?;
    ensure!(
        s.advance_head(&chain[4].hash()).await?,
        "advance over a whole chain must move the head"
    );
    // A gap at 7: 8 and 9 do not link back to the head at 4.
    s.store_blocks(&chain[8..10]).await?;
    s.store_block(&chain[5]).await?;
    s.store_block(&chain[6]).await?;
    match s.advance_head(&chain[9].hash()).await {
        Err(StorageError::Verification { index, .. }) => {
            ensure_eq!(index, 7, "the first index that does not link")
        }
        other => return Err(fail(format!("advance over a gap: {other:?}"))),
    }
    ensure_eq!(
        s.get_chain_head().await?,
        Some(chain[4].hash()),
        "head kept over a gap"
    );
    // Below the gap it still moves; filling the gap lets it move on.
    ensure!(s.advance_head(&chain[6].hash()).await?, "advance to #6");
    s.store_block(&chain[7]).await?;
    ensure!(
        s.advance_head(&chain[9].hash()).await?,
        "advance once the gap is filled"
    );
    ensure_eq!(
        s.get_chain_head().await?,
        Some(chain[9].hash()),
        "head at #9"
    );
    Ok(())
}

/// `verify_store` passes a whole chain and fails, with the index, on a gap, a
/// head below the top, a missing head, and a head naming no stored block.
pub async fn verify_store_checks_the_store_against_itself(env: &Env) -> CaseResult {
    let none = VerifyOptions::default();
    let gaps = VerifyOptions::default().allow_gaps(true);
    let s = env.open().await?;
    let report = s.verify_store(&none.page(3), &mut |_| {}).await?;
    ensure_eq!((report.checked, report.stored), (0, 0), "empty store");

    let chain = data::chain(10);
    s.store_blocks(&chain).await?;
    // Blocks but no head.
    let e = expect_kind(
        s.verify_store(&none, &mut |_| {}).await,
        ErrorKind::Verification,
        "verify without a head",
    )?;
    ensure!(
        e.to_string().contains("no head"),
        "names the missing head: {e}"
    );
    s.set_chain_head(&chain[9].hash()).await?;
    let mut progress = 0;
    let report = s
        .verify_store(&none.page(3), &mut |n| progress += n)
        .await?;
    ensure_eq!(
        (report.checked, report.stored, progress),
        (10, 10, 10),
        "checked, stored, progress"
    );
    ensure_eq!(report.last, Some((9, chain[9].hash())), "last");
    ensure_eq!(report.head, Some(chain[9].hash()), "head");
    ensure!(report.gaps.is_empty(), "no gaps: {:?}", report.gaps);

    // A head below the highest block.
    s.set_chain_head(&chain[6].hash()).await?;
    match s.verify_store(&none, &mut |_| {}).await {
        Err(StorageError::Verification { index: 6, .. }) => {}
        other => return Err(fail(format!("head at #6 of #0..=#9: {other:?}"))),
    }
    s.set_chain_head(&chain[9].hash()).await?;

    // Gaps: #3, and #5..=#6; allowed, they are listed.
    for i in [3usize, 5, 6] {
        s.delete_block(&chain[i].hash()).await?;
    }
    match s.verify_store(&none.page(2), &mut |_| {}).await {
        Err(StorageError::Verification { index: 3, reason }) => ensure!(
            reason.contains("block #3 is missing after block #2"),
            "a one-block gap is named: {reason}"
        ),
        other => return Err(fail(format!("gap at #3: {other:?}"))),
    }
    let report = s.verify_store(&gaps.page(2), &mut |_| {}).await?;
    ensure_eq!(report.gaps, vec![(3, 3), (5, 6)], "gaps listed");
    ensure_eq!((report.checked, report.stored), (7, 7), "checked with gaps");
    s.store_block(&chain[3]).await?;
    match s.verify_store(&none.page(4), &mut |_| {}).await {
        Err(StorageError::Verification { index: 5, reason }) => ensure!(
            reason.contains("blocks #5..=#6 are missing after block #4"),
            "a two-block gap is named: {reason}"
        ),
        other => return Err(fail(format!("gap at #5..=#6: {other:?}"))),
    }
    s.delete_block(&chain[3].hash()).await?;

    // A chain that does not start at genesis is a gap too.
    s.delete_block(&chain[0].hash()).await?;
    match s.verify_store(&none, &mut |_| {}).await {
        Err(StorageError::Verification { index: 0, .. }) => {}
        other => return Err(fail(format!("gap at #0: {other:?}"))),
    }
    let report = s.verify_store(&gaps, &mut |_| {}).await?;
    ensure_eq!(report.gaps, vec![(0, 0), (3, 3), (5, 6)], "leading gap");

    // The head names a deleted block: deleting the head clears it on every
    // backend, so the store has blocks and no head.
    s.delete_block(&chain[9].hash()).await?;
    expect_kind(
        s.verify_store(&gaps, &mut |_| {}).await,
        ErrorKind::Verification,
        "verify after the head block was deleted",
    )?;
    s.check_integrity().await?;
    Ok(())
}

/// A store holding a six-block chain with its head, behind a fault injector
/// (healthy until a case sets a mode).
async fn faulty_chain_of_six(env: &Env) -> Result<FaultyBackend, CaseError> {
    let s = env.open().await?;
    let chain = data::chain(6);
    s.store_blocks(&chain).await?;
    s.set_chain_head(&chain[5].hash()).await?;
    Ok(FaultyBackend::new(s, 7))
}

/// A read that fails for another reason than damage reaches the caller of
/// `verify_store` as it is (a transient error stays transient), and a failing
/// engine check stops the verification before any block is read.
pub async fn verify_store_passes_other_failures_through(env: &Env) -> CaseResult {
    let faulty = faulty_chain_of_six(env).await?;
    faulty.set_mode(FaultMode::FailOps(&[
        "get_blocks_by_range",
        "retrieve_block",
    ]));
    match faulty
        .verify_store(&VerifyOptions::default(), &mut |_| {})
        .await
    {
        Err(e) if e.kind() == ErrorKind::Backend && e.is_transient() => {}
        other => {
            return Err(fail(format!(
                "a transient read failure must come through unchanged: {other:?}"
            )));
        }
    }
    // Only range reads fail: the window's blocks are read one by one and verify,
    // and then the range read's own error is returned.
    faulty.set_mode(FaultMode::FailOps(&["get_blocks_by_range"]));
    let mut verified = 0;
    match faulty
        .verify_store(&VerifyOptions::default().page(2), &mut |n| verified += n)
        .await
    {
        Err(e) if e.kind() == ErrorKind::Backend && e.is_transient() => {}
        other => {
            return Err(fail(format!(
                "a failing range read must come through unchanged: {other:?}"
            )));
        }
    }
    ensure_eq!(
        verified,
        2,
        "blocks of the first window verified one by one"
    );
    // Range reads start failing after the first window: the second window's
    // blocks (and only those) are read one by one, then the error comes back.
    faulty.set_mode(FaultMode::Healthy);
    let mut verified = 0;
    let got = faulty
        .verify_store(&VerifyOptions::default().page(2), &mut |n| {
            verified += n;
            faulty.set_mode(FaultMode::FailOps(&["get_blocks_by_range"]));
        })
        .await;
    match got {
        Err(e) if e.kind() == ErrorKind::Backend && e.is_transient() => {}
        other => {
            return Err(fail(format!(
                "a range read failing in a later window must come through unchanged: {other:?}"
            )));
        }
    }
    ensure_eq!(verified, 4, "blocks of two windows verified");
    faulty.set_mode(FaultMode::FailOps(&["check_integrity"]));
    let mut verified = 0;
    let got = faulty
        .verify_store(&VerifyOptions::default(), &mut |n| verified += n)
        .await;
    expect_kind(
        got,
        ErrorKind::Backend,
        "verify_store with a failing engine check",
    )?;
    ensure_eq!(verified, 0, "blocks verified after the engine check failed");
    Ok(())
}

/// A store whose range reads return blocks outside the range asked for is
/// damaged: `verify_store` says so rather than walking on (or in circles).
pub async fn verify_store_refuses_blocks_outside_the_window(env: &Env) -> CaseResult {
    let faulty = faulty_chain_of_six(env).await?;
    faulty.set_mode(FaultMode::RangeOverreach);
    expect_kind(
        faulty
            .verify_store(&VerifyOptions::default().page(2), &mut |_| {})
            .await,
        ErrorKind::Corrupted,
        "verify_store over range reads that overreach",
    )?;
    faulty.set_mode(FaultMode::Healthy);
    let report = faulty
        .verify_store(&VerifyOptions::default().page(2), &mut |_| {})
        .await?;
    ensure_eq!(
        report.checked,
        6,
        "blocks checked once the store is healthy"
    );
    Ok(())
}
