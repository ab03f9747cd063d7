//! Batch store and retrieve.

use storage_core::{Block, BlockHash, ErrorKind, ListOptions, StorageBackend};

use super::snapshot;
use crate::check::{ensure, ensure_eq, expect_kind, fail, indices, same_block};
use crate::data;
use crate::{CaseError, CaseResult, Env};

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

/// A batch invalid in one way, with valid new blocks around the bad one.
struct BadBatch {
    what: &'static str,
    blocks: Vec<Block>,
    kind: ErrorKind,
    /// The blocks that make it invalid (never stored).
    bad: Vec<BlockHash>,
}

/// Blocks 0, 1, 2 and 6 of `data::chain(12)` are stored; each batch mixes new
/// valid blocks with one fault: an oversized payload (when the fixture sets a
/// limit), a conflict with the store, a conflict inside the batch, a broken link
/// to a stored neighbour, a broken link inside the batch, duplicates with a
/// conflict, duplicates with a broken link.
fn bad_batches(env: &Env) -> Vec<BadBatch> {
    let c = data::chain(12);
    let variant = |i: usize, field: &str| {
        data::one_field_variants(&c[i])
            .into_iter()
            .find(|(f, _)| *f == field)
            .map(|(_, b)| b)
            .expect("variant exists")
    };
    let mut out = Vec::new();
    if let Some(limit) = env.fixture().max_payload_bytes() {
        let big = Block::sign_raw(
            10,
            data::at(data::chain_offset(10)),
            Some(c[9].hash()),
            "conformance.blob/v1",
            vec![7u8; limit + 1],
            &data::signer(4),
        )
        .expect("valid block under the global limit");
        out.push(BadBatch {
            what: "a payload over the store's limit",
            bad: vec![big.hash()],
            blocks: vec![c[3].clone(), big, c[4].clone()],
            kind: ErrorKind::InvalidInput,
        });
    }
    let r1 = data::rival(&c[1]);
    out.push(BadBatch {
        what: "a conflict with the store",
        bad: vec![r1.hash()],
        blocks: vec![c[3].clone(), r1, c[4].clone()],
        kind: ErrorKind::IndexConflict,
    });
    let r8 = data::rival(&c[8]);
    out.push(BadBatch {
        what: "a conflict inside the batch",
        bad: vec![r8.hash(), c[8].hash()],
        blocks: vec![c[3].clone(), c[8].clone(), r8],
        kind: ErrorKind::IndexConflict,
    });
    let v7 = variant(7, "previous_hash");
    out.push(BadBatch {
        what: "a broken link to a stored neighbour",
        bad: vec![v7.hash()],
        blocks: vec![c[3].clone(), c[4].clone(), v7],
        kind: ErrorKind::Verification,
    });
    let r9 = data::rival(&c[9]);
    out.push(BadBatch {
        what: "a broken link inside the batch",
        bad: vec![r9.hash()],
        blocks: vec![c[8].clone(), r9, c[10].clone()],
        kind: ErrorKind::Verification,
    });
    let r4 = data::rival(&c[4]);
    out.push(BadBatch {
        what: "duplicates and a conflict",
        bad: vec![r4.hash()],
        blocks: vec![c[3].clone(), c[3].clone(), c[4].clone(), r4],
        kind: ErrorKind::IndexConflict,
    });
    let v3 = variant(3, "previous_hash");
    out.push(BadBatch {
        what: "duplicates of stored blocks and a broken link",
        bad: vec![v3.hash()],
        blocks: vec![c[0].clone(), c[0].clone(), v3, c[4].clone()],
        kind: ErrorKind::Verification,
    });
    out
}

async fn store_for_bad_batches(env: &Env) -> Result<std::sync::Arc<dyn StorageBackend>, CaseError> {
    let s = env.open().await?;
    let c = data::chain(12);
    s.store_blocks(&c[..3]).await?;
    s.store_block(&c[6]).await?;
    s.set_chain_head(&c[6].hash()).await?;
    Ok(s)
}

/// Every kind of invalid batch fails with its error kind, and the block that made
/// it invalid is not stored; the blocks stored before are untouched.
pub async fn invalid_batches_are_refused(env: &Env) -> CaseResult {
    let s = store_for_bad_batches(env).await?;
    let c = data::chain(12);
    for batch in bad_batches(env) {
        expect_kind(s.store_blocks(&batch.blocks).await, batch.kind, batch.what)?;
        for h in &batch.bad {
            if !c.iter().any(|b| b.hash() == *h) {
                ensure!(
                    !s.block_exists(h).await?,
                    "{}: the offending block was stored",
                    batch.what
                );
            }
        }
        for i in [0usize, 1, 2, 6] {
            let got = s.retrieve_block(&c[i].hash()).await?;
            let got = got.ok_or_else(|| fail(format!("{}: block {i} lost", batch.what)))?;
            same_block(&got, &c[i], format!("{}: block {i}", batch.what))?;
        }
        ensure_eq!(
            s.get_chain_head().await?,
            Some(c[6].hash()),
            "{}: head",
            batch.what
        );
    }
    Ok(())
}

/// With atomic batches, every kind of invalid batch leaves every view exactly as
/// it was; then a valid batch with duplicates stores each block once.
pub async fn invalid_batches_store_nothing(env: &Env) -> CaseResult {
    let s = store_for_bad_batches(env).await?;
    let c = data::chain(12);
    let before = snapshot(&*s).await?;
    for batch in bad_batches(env) {
        expect_kind(s.store_blocks(&batch.blocks).await, batch.kind, batch.what)?;
        ensure_eq!(snapshot(&*s).await?, before, "store after {}", batch.what);
        for b in &batch.blocks {
            if !before.blocks.iter().any(|x| x.hash() == b.hash()) {
                ensure!(
                    !s.block_exists(&b.hash()).await?,
                    "{}: block {} of the failed batch was stored",
                    batch.what,
                    b.index()
                );
            }
        }
    }
    let hashes = s
        .store_blocks(&[c[3].clone(), c[3].clone(), c[4].clone(), c[0].clone()])
        .await?;
    ensure_eq!(hashes.len(), 4, "one hash per input block");
    ensure_eq!(
        s.count_blocks().await?,
        6,
        "count after a batch with duplicates"
    );
    let size: u64 = [0usize, 1, 2, 3, 4, 6]
        .iter()
        .map(|&i| c[i].size_bytes())
        .sum();
    ensure_eq!(
        s.get_stats().await?.total_size_bytes,
        size,
        "size after a batch with duplicates"
    );
    Ok(())
}
