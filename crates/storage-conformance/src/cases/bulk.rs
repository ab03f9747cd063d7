//! Bulk reads against single reads, at sizes past any internal page, chunk or
//! batch size a backend is likely to have (256, 512, 1,000, 1,024, 2,048).

use std::collections::HashMap;

use storage_core::{Block, BlockHash, ListOptions, SortOrder, StorageBackend};

use super::model::reference_list;
use crate::check::{ensure_eq, fail, same_block, same_listing};
use crate::data;
use crate::{CaseError, CaseResult, Env};

/// Blocks stored by [`stored_with_gaps`].
const N: usize = 2_600;

/// The first `N` chain blocks, stored in batches of 700 (so batches straddle any
/// page boundary), then every seventh deleted and every 21st of those stored
/// again: gaps and re-stores all through. Returns the store and what it holds.
async fn stored_with_gaps(
    env: &Env,
) -> Result<(std::sync::Arc<dyn StorageBackend>, Vec<Block>), CaseError> {
    let s = env.open().await?;
    let chain = &data::chain(N)[..];
    for part in chain.chunks(700) {
        s.store_blocks(part).await?;
    }
    for b in chain.iter().step_by(7) {
        s.delete_block(&b.hash()).await?;
    }
    for b in chain.iter().step_by(21) {
        s.store_block(b).await?;
    }
    let held: Vec<Block> = chain
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 7 != 0 || i % 21 == 0)
        .map(|(_, b)| b.clone())
        .collect();
    Ok((s, held))
}

/// `retrieve_blocks` with thousands of hashes (stored, deleted, never stored,
/// repeated, in scrambled order), `get_blocks_by_range` over many windows, and
/// `list_blocks` in every order all agree with a single `retrieve_block` of every
/// block.
pub async fn bulk_reads_agree_with_single_reads(env: &Env) -> CaseResult {
    let (s, held) = stored_with_gaps(env).await?;
    let chain = data::chain(N);
    let by_hash: HashMap<BlockHash, &Block> = held.iter().map(|b| (b.hash(), b)).collect();
    // Single reads are the reference for everything below.
    for b in chain.iter() {
        let got = s.retrieve_block(&b.hash()).await?;
        match (got, by_hash.get(&b.hash())) {
            (Some(g), Some(w)) => same_block(&g, w, format!("retrieve_block {}", b.index()))?,
            (None, None) => {}
            (g, _) => {
                return Err(fail(format!(
                    "retrieve_block {}: got {}, want {}",
                    b.index(),
                    if g.is_some() { "a block" } else { "nothing" },
                    if by_hash.contains_key(&b.hash()) {
                        "the block"
                    } else {
                        "nothing (deleted)"
                    }
                )));
            }
        }
    }
    // Every chain hash in a scrambled order, unknown hashes, and repeats.
    let mut ask: Vec<BlockHash> = (0..N).map(|i| chain[(i * 1_237) % N].hash()).collect();
    ask.extend((0..300u32).map(|i| {
        let mut h = [0xEE; 32];
        h[..4].copy_from_slice(&i.to_le_bytes());
        BlockHash(h)
    }));
    ask.extend((0..N).step_by(3).map(|i| chain[i].hash()));
    let got = s.retrieve_blocks(&ask).await?;
    ensure_eq!(got.len(), ask.len(), "one result per requested hash");
    for (i, (h, g)) in ask.iter().zip(&got).enumerate() {
        match (g, by_hash.get(h)) {
            (Some(g), Some(w)) => same_block(g, w, format!("retrieve_blocks result {i}"))?,
            (None, None) => {}
            (g, w) => {
                return Err(fail(format!(
                    "retrieve_blocks result {i} (hash {h}): got {:?}, want {:?}",
                    g.as_ref().map(Block::index),
                    w.map(|b| b.index())
                )));
            }
        }
    }
    // Ranges: everything, windows crossing page-like boundaries, gaps only.
    let windows: [(u64, u64); 8] = [
        (0, u64::MAX),
        (0, N as u64 - 1),
        (255, 257),
        (500, 1_600),
        (1_023, 2_049),
        (7, 7),
        (N as u64 - 5, u64::MAX),
        (N as u64, u64::MAX),
    ];
    for (a, b) in windows {
        let want: Vec<&Block> = held
            .iter()
            .filter(|x| (a..=b).contains(&x.index()))
            .collect();
        let got = s.get_blocks_by_range(a, b).await?;
        crate::check::same_blocks(&got, &want, format!("range {a}..={b}"))?;
    }
    // Listings in every order, whole.
    for order in [
        SortOrder::Ascending,
        SortOrder::Descending,
        SortOrder::ByTimestamp,
        SortOrder::ByIndex,
    ] {
        let opts = ListOptions::new().order(order);
        same_listing(
            &s.list_blocks(&opts).await?,
            &reference_list(&held, &opts),
            format!("whole listing, {order:?}"),
        )?;
    }
    ensure_eq!(s.count_blocks().await?, held.len() as u64, "count");
    Ok(())
}

/// Limits and offsets past any internal page: every page of a walk with large
/// pages joins up to the whole listing, in every order, with filters on.
pub async fn pages_beyond_internal_sizes(env: &Env) -> CaseResult {
    let (s, held) = stored_with_gaps(env).await?;
    let pages: [(u64, u64); 9] = [
        (0, 1_000),
        (0, 1_025),
        (1_000, 1_000),
        (1_023, 600),
        (2_047, 3_000),
        (2_000, u64::MAX),
        (N as u64 - 400, 5),
        (N as u64 * 2, 10),
        (1, 2_200),
    ];
    let orders = [
        SortOrder::Ascending,
        SortOrder::Descending,
        SortOrder::ByTimestamp,
    ];
    for order in orders {
        for (offset, limit) in pages {
            let opts = ListOptions::new().order(order).offset(offset).limit(limit);
            same_listing(
                &s.list_blocks(&opts).await?,
                &reference_list(&held, &opts),
                format!("{order:?}, offset {offset}, limit {limit}"),
            )?;
        }
        // A walk in pages of 1,100 covers the listing exactly once.
        let mut walked = Vec::new();
        loop {
            let page = s
                .list_blocks(
                    &ListOptions::new()
                        .order(order)
                        .offset(walked.len() as u64)
                        .limit(1_100),
                )
                .await?;
            let done = page.len() < 1_100;
            walked.extend(page);
            if done {
                break;
            }
        }
        let whole = ListOptions::new().order(order);
        same_listing(
            &walked,
            &reference_list(&held, &whole),
            format!("a walk in pages of 1,100, {order:?}"),
        )?;
    }
    // Filters and bounds on, with a deep offset.
    let key = storage_core::PublicKey::from(&data::signer(1).verifying_key());
    for order in orders {
        let opts = ListOptions::new()
            .order(order)
            .offset(1_030)
            .limit(700)
            .start_time(data::at(data::chain_offset(100)))
            .end_time(data::at(data::chain_offset(2_500)))
            .payload_type(data::READING)
            .public_key(key)
            .min_index(3)
            .max_index(2_590);
        same_listing(
            &s.list_blocks(&opts).await?,
            &reference_list(&held, &opts),
            format!("filtered, deep offset, {order:?}"),
        )?;
    }
    Ok(())
}
