//! Stats, compact, vacuum and close.

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
    if env.capabilities().vacuum {
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
