//! Deletion and what every view shows afterwards.

use storage_core::{ListOptions, StorageBackend};

use crate::check::{ensure, ensure_eq, indices, same_block};
use crate::data;
use crate::{CaseResult, Env};

/// After deletes, exists, retrieve, count, list, range and stats all agree.
pub async fn delete_keeps_views_consistent(env: &Env) -> CaseResult {
    let s = env.open().await?;
    let chain = data::chain(10);
    s.store_blocks(&chain).await?;
    for i in [0usize, 4, 9] {
        ensure!(
            s.delete_block(&chain[i].hash()).await?,
            "delete of block {i} returns true"
        );
        ensure!(
            !s.delete_block(&chain[i].hash()).await?,
            "second delete of block {i} returns false"
        );
    }
    let kept: Vec<u64> = vec![1, 2, 3, 5, 6, 7, 8];
    for (i, b) in chain.iter().enumerate() {
        let want = kept.contains(&(i as u64));
        ensure_eq!(
            s.block_exists(&b.hash()).await?,
            want,
            "exists of block {i}"
        );
        ensure_eq!(
            s.retrieve_block(&b.hash()).await?.is_some(),
            want,
            "retrieve of block {i}"
        );
    }
    ensure_eq!(s.count_blocks().await?, 7, "count after deletes");
    ensure_eq!(
        indices(&s.list_blocks(&ListOptions::default()).await?),
        kept,
        "list after deletes"
    );
    let range = s.get_blocks_by_range(0, 9).await?;
    ensure_eq!(
        range.iter().map(|b| b.index()).collect::<Vec<_>>(),
        kept,
        "range after deletes"
    );
    let stats = s.get_stats().await?;
    let size: u64 = kept.iter().map(|&i| chain[i as usize].size_bytes()).sum();
    ensure_eq!(
        (stats.total_blocks, stats.total_size_bytes),
        (7, size),
        "stats after deletes"
    );
    ensure_eq!(
        stats.oldest_block,
        Some(chain[1].timestamp()),
        "oldest after deleting the oldest"
    );
    ensure_eq!(
        stats.newest_block,
        Some(chain[8].timestamp()),
        "newest after deleting the newest"
    );
    // A deleted block can be stored again.
    s.store_block(&chain[4]).await?;
    let got = s
        .retrieve_block(&chain[4].hash())
        .await?
        .expect("re-stored");
    same_block(&got, &chain[4], "re-stored block")?;
    ensure_eq!(s.count_blocks().await?, 8, "count after re-store");
    Ok(())
}

/// Deleting the head clears it; the head can then be set again.
pub async fn delete_head_clears_head(env: &Env) -> CaseResult {
    let s = env.open().await?;
    let chain = data::chain(3);
    s.store_blocks(&chain).await?;
    s.set_chain_head(&chain[2].hash()).await?;
    s.delete_block(&chain[1].hash()).await?;
    ensure_eq!(
        s.get_chain_head().await?,
        Some(chain[2].hash()),
        "deleting another block keeps the head"
    );
    s.delete_block(&chain[2].hash()).await?;
    ensure_eq!(
        s.get_chain_head().await?,
        None,
        "deleting the head clears it"
    );
    s.set_chain_head(&chain[0].hash()).await?;
    ensure_eq!(
        s.get_chain_head().await?,
        Some(chain[0].hash()),
        "head set after clearing"
    );
    Ok(())
}

/// A deleted block's index is free for another block.
pub async fn delete_frees_the_index(env: &Env) -> CaseResult {
    let s = env.open().await?;
    let chain = data::chain(3);
    s.store_blocks(&chain).await?;
    // The newest block: a rival at its index links to the same predecessor and
    // has no successor to contradict.
    s.delete_block(&chain[2].hash()).await?;
    let rival = data::rival(&chain[2]);
    s.store_block(&rival).await?;
    let range = s.get_blocks_by_range(2, 2).await?;
    ensure_eq!(range.len(), 1, "one block at index 2");
    same_block(&range[0], &rival, "block at the freed index")?;
    ensure!(
        !s.block_exists(&chain[2].hash()).await?,
        "deleted block stays deleted"
    );
    Ok(())
}
