//! Batch store and retrieve.

use storage_core::{ErrorKind, ListOptions, StorageBackend};

use crate::check::{ensure, ensure_eq, expect_kind, indices, same_block};
use crate::data;
use crate::{CaseResult, Env};

/// `store_blocks` returns hashes in input order (input need not be sorted);
/// `retrieve_blocks` keeps input order with misses and repeats; empty inputs work.
pub async fn batch_store_and_retrieve_in_order(env: &Env) -> CaseResult {
    let s = env.open().await?;
    let chain = data::chain(8);
    let input = vec![
        chain[5].clone(),
        chain[0].clone(),
        chain[3].clone(),
        chain[1].clone(),
    ];
    let hashes = s.store_blocks(&input).await?;
    ensure_eq!(
        hashes,
        input.iter().map(|b| b.hash()).collect::<Vec<_>>(),
        "hashes in input order"
    );
    ensure!(s.store_blocks(&[]).await?.is_empty(), "empty batch");
    let ask = [
        chain[3].hash(),
        chain[7].hash(),
        chain[0].hash(),
        chain[3].hash(),
        chain[2].hash(),
        chain[5].hash(),
    ];
    let got = s.retrieve_blocks(&ask).await?;
    ensure_eq!(got.len(), ask.len(), "one result per requested hash");
    let want = [Some(3), None, Some(0), Some(3), None, Some(5)];
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        match (g, w) {
            (Some(g), Some(w)) => same_block(g, &chain[w], format!("retrieve_blocks result {i}"))?,
            (None, None) => {}
            _ => {
                return Err(crate::check::fail(format!(
                    "retrieve_blocks result {i}: got {:?}, want block {w:?}",
                    g.as_ref().map(|b| b.index())
                )));
            }
        }
    }
    ensure_eq!(
        indices(&s.list_blocks(&ListOptions::default()).await?),
        vec![0, 1, 3, 5],
        "listed"
    );
    Ok(())
}

/// Any backend reports a conflicting batch as `IndexConflict` and never overwrites
/// the stored block.
pub async fn batch_conflict_is_reported(env: &Env) -> CaseResult {
    let s = env.open().await?;
    let chain = data::chain(4);
    s.store_block(&chain[1]).await?;
    let rival = data::rival(&chain[1]);
    expect_kind(
        s.store_blocks(&[chain[0].clone(), rival.clone()]).await,
        ErrorKind::IndexConflict,
        "batch with a block conflicting with the store",
    )?;
    ensure!(
        !s.block_exists(&rival.hash()).await?,
        "rival must not be stored"
    );
    let got = s
        .retrieve_block(&chain[1].hash())
        .await?
        .expect("original kept");
    same_block(&got, &chain[1], "original after conflicting batch")?;
    Ok(())
}

/// With atomic batches, a batch that conflicts — with the store or within itself —
/// stores nothing at all.
pub async fn batch_conflict_is_atomic(env: &Env) -> CaseResult {
    let s = env.open().await?;
    let chain = data::chain(6);
    s.store_block(&chain[2]).await?;
    let before = s.get_stats().await?;
    expect_kind(
        s.store_blocks(&[chain[0].clone(), data::rival(&chain[2]), chain[4].clone()])
            .await,
        ErrorKind::IndexConflict,
        "batch conflicting with the store",
    )?;
    expect_kind(
        s.store_blocks(&[chain[1].clone(), chain[3].clone(), data::rival(&chain[3])])
            .await,
        ErrorKind::IndexConflict,
        "batch conflicting with itself",
    )?;
    for i in [0, 1, 3, 4] {
        ensure!(
            !s.block_exists(&chain[i].hash()).await?,
            "block {i} of a failed batch was stored"
        );
    }
    ensure_eq!(s.count_blocks().await?, 1, "count after failed batches");
    let after = s.get_stats().await?;
    ensure_eq!(
        after.total_size_bytes,
        before.total_size_bytes,
        "size after failed batches"
    );
    ensure_eq!(
        indices(&s.list_blocks(&ListOptions::default()).await?),
        vec![2],
        "listed after failed batches"
    );
    Ok(())
}
