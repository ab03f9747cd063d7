//! Stats, compact, vacuum and close.

use std::time::SystemTime;

use storage_core::{ErrorKind, ListOptions, StorageBackend};

use super::snapshot;
use crate::check::{ensure, ensure_eq, expect_kind};
use crate::data;
use crate::{CaseResult, Env};

/// Stats agree with count and list, before and after deletes.
pub async fn stats_agree_with_list(env: &Env) -> CaseResult {
    let s = env.open().await?;
    let blocks = data::scrambled(12);
    s.store_blocks(&blocks).await?;
    for round in 0..2 {
        let stats = s.get_stats().await?;
        let listed = s.list_blocks(&ListOptions::default()).await?;
        ensure_eq!(
            stats.total_blocks,
            s.count_blocks().await?,
            "total_blocks vs count (round {round})"
        );
        ensure_eq!(
            stats.total_blocks,
            listed.len() as u64,
            "total_blocks vs list (round {round})"
        );
        ensure_eq!(
            stats.total_size_bytes,
            listed.iter().map(|m| m.size_bytes).sum::<u64>(),
            "size (round {round})"
        );
        ensure_eq!(
            stats.oldest_block,
            listed.iter().map(|m| m.timestamp).min(),
            "oldest (round {round})"
        );
        ensure_eq!(
            stats.newest_block,
            listed.iter().map(|m| m.timestamp).max(),
            "newest (round {round})"
        );
        // Delete the oldest two (indices 0 and 7 share the earliest timestamp) and
        // the newest (5 and 10 share the latest; delete one).
        for i in [0usize, 7, 10] {
            s.delete_block(&blocks[i].hash()).await?;
        }
    }
    Ok(())
}

/// Compact keeps every block, the head, metadata and stats.
pub async fn compact_keeps_data(env: &Env) -> CaseResult {
    let s = env.open().await?;
    let chain = data::chain(40);
    s.store_blocks(&chain).await?;
    for b in chain.iter().step_by(3) {
        s.delete_block(&b.hash()).await?;
    }
    s.set_chain_head(&chain[38].hash()).await?;
    let before = snapshot(&*s).await?;
    s.compact().await?;
    ensure_eq!(snapshot(&*s).await?, before, "store after compact");
    s.compact().await?;
    ensure_eq!(snapshot(&*s).await?, before, "store after a second compact");
    Ok(())
}

/// Vacuum keeps all data; a backend without vacuum says `Unsupported`.
pub async fn vacuum_keeps_data_or_is_unsupported(env: &Env) -> CaseResult {
    let s = env.open().await?;
    let chain = data::chain(20);
    s.store_blocks(&chain).await?;
    for b in chain.iter().take(10) {
        s.delete_block(&b.hash()).await?;
    }
    s.set_chain_head(&chain[19].hash()).await?;
    let before = snapshot(&*s).await?;
    if s.capabilities().vacuum {
        s.vacuum().await?;
    } else {
        expect_kind(
            s.vacuum().await,
            ErrorKind::Unsupported,
            "vacuum without the capability",
        )?;
    }
    ensure_eq!(snapshot(&*s).await?, before, "store after vacuum");
    Ok(())
}

/// After close, every call but close fails with `Closed`; close is idempotent.
pub async fn close_then_use(env: &Env) -> CaseResult {
    let s = env.open().await?;
    let chain = data::chain(2);
    s.store_block(&chain[0]).await?;
    s.close().await?;
    let h = chain[0].hash();
    let k = ErrorKind::Closed;
    expect_kind(s.store_block(&chain[1]).await, k, "store_block after close")?;
    expect_kind(s.retrieve_block(&h).await, k, "retrieve_block after close")?;
    expect_kind(s.delete_block(&h).await, k, "delete_block after close")?;
    expect_kind(s.block_exists(&h).await, k, "block_exists after close")?;
    expect_kind(
        s.store_blocks(&chain[1..]).await,
        k,
        "store_blocks after close",
    )?;
    expect_kind(
        s.retrieve_blocks(&[h]).await,
        k,
        "retrieve_blocks after close",
    )?;
    expect_kind(
        s.list_blocks(&ListOptions::default()).await,
        k,
        "list_blocks after close",
    )?;
    expect_kind(s.count_blocks().await, k, "count_blocks after close")?;
    expect_kind(s.get_chain_head().await, k, "get_chain_head after close")?;
    expect_kind(s.set_chain_head(&h).await, k, "set_chain_head after close")?;
    expect_kind(
        s.get_blocks_by_range(0, 1).await,
        k,
        "get_blocks_by_range after close",
    )?;
    expect_kind(s.compact().await, k, "compact after close")?;
    expect_kind(s.vacuum().await, k, "vacuum after close")?;
    expect_kind(s.get_stats().await, k, "get_stats after close")?;
    s.close().await?;
    ensure!(!s.backend_name().is_empty(), "backend_name after close");
    Ok(())
}

/// Reopens the store if the backend keeps data across reopen (after `close`, or
/// after dropping every handle when `drop_only`); otherwise returns it as is.
async fn maybe_reopen(
    env: &Env,
    s: std::sync::Arc<dyn StorageBackend>,
    drop_only: bool,
) -> Result<std::sync::Arc<dyn StorageBackend>, crate::CaseError> {
    if !env.capabilities().await?.persistent {
        return Ok(s);
    }
    if !drop_only {
        s.close().await?;
    }
    drop(s);
    env.open().await
}

/// What compact and vacuum must keep and must drop after deletes and re-stores:
/// deleted blocks stay deleted (also across reopen), re-stored ones stay, and a
/// rival stored at a freed index is the one kept there.
pub async fn maintenance_after_deletes_and_restores(env: &Env) -> CaseResult {
    let s = env.open().await?;
    let chain = data::chain(20);
    s.store_blocks(&chain).await?;
    s.set_chain_head(&chain[12].hash()).await?;
    for b in &chain[5..12] {
        s.delete_block(&b.hash()).await?;
    }
    s.store_block(&chain[8]).await?;
    // The newest block replaced by a rival (same predecessor, no successor).
    s.delete_block(&chain[19].hash()).await?;
    let rival = data::rival(&chain[19]);
    s.store_block(&rival).await?;
    let mut held: Vec<&storage_core::Block> = chain
        .iter()
        .filter(|b| !(5..12).contains(&b.index()) || b.index() == 8)
        .filter(|b| b.index() != 19)
        .collect();
    held.push(&rival);
    let check =
        async |s: &dyn StorageBackend, held: &[&storage_core::Block], what: &str| -> CaseResult {
            let range = s.get_blocks_by_range(0, u64::MAX).await?;
            crate::check::same_blocks(&range, held, format!("range {what}"))?;
            for b in chain.iter().chain([&rival]) {
                let want = held.iter().any(|h| h.hash() == b.hash());
                ensure_eq!(
                    s.retrieve_block(&b.hash()).await?.is_some(),
                    want,
                    "block {} ({}) {what}",
                    b.index(),
                    if want { "kept" } else { "deleted" }
                );
            }
            ensure_eq!(s.count_blocks().await?, held.len() as u64, "count {what}");
            ensure_eq!(
                s.get_chain_head().await?,
                Some(chain[12].hash()),
                "head {what}"
            );
            Ok(())
        };
    check(&*s, &held, "before compact").await?;
    s.compact().await?;
    check(&*s, &held, "after compact").await?;
    let s = maybe_reopen(env, s, false).await?;
    check(&*s, &held, "after compact and reopen").await?;
    if s.capabilities().vacuum {
        s.vacuum().await?;
        check(&*s, &held, "after vacuum").await?;
    }
    // Delete again after compaction, then compact, then drop without close.
    s.delete_block(&chain[8].hash()).await?;
    held.retain(|b| b.index() != 8);
    s.compact().await?;
    let s = maybe_reopen(env, s, true).await?;
    check(&*s, &held, "after a second delete, compact and drop").await?;
    s.close().await?;
    Ok(())
}

/// The head around deleted and re-stored blocks: storing never moves it, deleting
/// it clears it, re-storing the deleted head does not bring it back, and all of
/// this holds across close and across drop without close.
pub async fn head_around_deleted_blocks(env: &Env) -> CaseResult {
    let s = env.open().await?;
    let chain = data::chain(6);
    s.store_blocks(&chain[..4]).await?;
    ensure_eq!(s.get_chain_head().await?, None, "storing sets no head");
    s.set_chain_head(&chain[3].hash()).await?;
    s.store_blocks(&chain[4..]).await?;
    ensure_eq!(
        s.get_chain_head().await?,
        Some(chain[3].hash()),
        "storing newer blocks keeps the head"
    );
    s.delete_block(&chain[3].hash()).await?;
    ensure_eq!(
        s.get_chain_head().await?,
        None,
        "deleting the head clears it"
    );
    let s = maybe_reopen(env, s, false).await?;
    ensure_eq!(
        s.get_chain_head().await?,
        None,
        "a cleared head stays cleared across reopen"
    );
    s.store_block(&chain[3]).await?;
    ensure_eq!(
        s.get_chain_head().await?,
        None,
        "re-storing the deleted head does not bring it back"
    );
    s.compact().await?;
    let s = maybe_reopen(env, s, true).await?;
    ensure_eq!(
        s.get_chain_head().await?,
        None,
        "nor does compact or a drop and reopen"
    );
    s.set_chain_head(&chain[5].hash()).await?;
    s.delete_block(&chain[4].hash()).await?;
    let s = maybe_reopen(env, s, true).await?;
    ensure_eq!(
        s.get_chain_head().await?,
        Some(chain[5].hash()),
        "deleting another block keeps the head, across drop and reopen"
    );
    s.delete_block(&chain[5].hash()).await?;
    s.compact().await?;
    let s = maybe_reopen(env, s, true).await?;
    ensure_eq!(
        s.get_chain_head().await?,
        None,
        "a head deleted before a drop stays cleared"
    );
    expect_kind(
        s.set_chain_head(&chain[5].hash()).await,
        ErrorKind::NotFound,
        "the deleted head cannot be set",
    )?;
    s.close().await?;
    Ok(())
}

/// Oldest and newest follow deletes one block at a time when blocks share the
/// earliest and the latest timestamps, and come back on re-store.
pub async fn stats_follow_ties_through_deletes(env: &Env) -> CaseResult {
    let s = env.open().await?;
    // Pairs share timestamps: 0-1, 2-3, 4-5, 6-7.
    let chain = data::chain(8);
    s.store_blocks(&chain).await?;
    let t = |i: usize| Some(chain[i].timestamp());
    type Step = (
        &'static str,
        usize,
        bool,
        (Option<SystemTime>, Option<SystemTime>),
    );
    let steps: [Step; 8] = [
        ("delete 0 (1 shares its time)", 0, false, (t(1), t(7))),
        ("delete 7 (6 shares its time)", 7, false, (t(1), t(6))),
        ("delete 1", 1, false, (t(2), t(6))),
        ("delete 6", 6, false, (t(2), t(5))),
        ("re-store 0", 0, true, (t(0), t(5))),
        ("re-store 7", 7, true, (t(0), t(7))),
        ("delete 0 again", 0, false, (t(2), t(7))),
        ("delete 7 again", 7, false, (t(2), t(5))),
    ];
    let mut held: Vec<u64> = (0..8).collect();
    for (what, i, store, (oldest, newest)) in steps {
        if store {
            s.store_block(&chain[i]).await?;
            held.push(i as u64);
        } else {
            s.delete_block(&chain[i].hash()).await?;
            held.retain(|&h| h != i as u64);
        }
        let stats = s.get_stats().await?;
        let size: u64 = held.iter().map(|&h| chain[h as usize].size_bytes()).sum();
        ensure_eq!(
            (
                stats.total_blocks,
                stats.total_size_bytes,
                stats.oldest_block,
                stats.newest_block
            ),
            (held.len() as u64, size, oldest, newest),
            "stats after {what}"
        );
    }
    Ok(())
}
