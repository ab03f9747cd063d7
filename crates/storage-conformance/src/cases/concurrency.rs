//! Many tasks at once: nothing acknowledged is lost, counts are exact, every read
//! is right, and racing writers get exactly one winner per index.

use std::sync::Arc;

use storage_core::{Block, BlockHash, BlockMetadata, ErrorKind, ListOptions, StorageBackend};
use tokio::task::JoinSet;

use crate::check::{ensure, ensure_eq, fail, same_block};
use crate::data;
use crate::{CaseError, CaseResult, Env};

/// 16 tasks on a multi-thread runtime store (singly and in batches) and read at once.
pub async fn concurrent_writers_and_readers(env: &Env) -> CaseResult {
    writers_and_readers(env, 16, 40).await
}

/// The same on a current-thread runtime: tasks interleave on one thread, so a
/// backend that blocks the thread or needs a second worker deadlocks or fails here.
pub async fn concurrent_on_current_thread(env: &Env) -> CaseResult {
    writers_and_readers(env, 8, 20).await
}

async fn writers_and_readers(env: &Env, tasks: usize, per_task: usize) -> CaseResult {
    let s = env.open().await?;
    let n = tasks * per_task;
    let chain = data::chain(n);
    let mut set = JoinSet::new();
    for t in 0..tasks {
        let (s, chain) = (s.clone(), chain.clone());
        set.spawn(async move { worker(s, chain, t, tasks).await });
    }
    while let Some(joined) = set.join_next().await {
        joined.map_err(|e| fail(format!("task panicked or was cancelled: {e}")))??;
    }
    ensure_eq!(
        s.count_blocks().await?,
        n as u64,
        "count after concurrent writes"
    );
    let listed = s.list_blocks(&ListOptions::default()).await?;
    let want: Vec<BlockMetadata> = chain.iter().map(BlockMetadata::of).collect();
    ensure_eq!(listed, want, "list after concurrent writes");
    for b in chain.iter() {
        let got = s
            .retrieve_block(&b.hash())
            .await?
            .ok_or_else(|| fail(format!("block {} lost", b.index())))?;
        same_block(&got, b, "after concurrent writes")?;
    }
    ensure_eq!(
        s.get_stats().await?.total_blocks,
        n as u64,
        "stats after concurrent writes"
    );
    Ok(())
}

async fn worker(
    s: Arc<dyn StorageBackend>,
    chain: Arc<Vec<Block>>,
    t: usize,
    tasks: usize,
) -> CaseResult {
    let mine: Vec<&Block> = chain.iter().skip(t).step_by(tasks).collect();
    let mut last_count = 0;
    let mut j = 0;
    while j < mine.len() {
        // Every fifth step stores a batch of up to three.
        let step: Vec<Block> = if j % 5 == 0 {
            mine[j..(j + 3).min(mine.len())]
                .iter()
                .map(|b| (*b).clone())
                .collect()
        } else {
            vec![mine[j].clone()]
        };
        if step.len() == 1 {
            s.store_block(&step[0]).await?;
        } else {
            s.store_blocks(&step).await?;
        }
        for b in &step {
            let got = s
                .retrieve_block(&b.hash())
                .await?
                .ok_or_else(|| fail(format!("task {t}: own block {} missing", b.index())))?;
            same_block(&got, b, format!("task {t} own block"))?;
        }
        // Read someone else's block: absent or exactly right.
        let other = &chain[(j * 7 + t * 13) % chain.len()];
        if let Some(got) = s.retrieve_block(&other.hash()).await? {
            same_block(
                &got,
                other,
                format!("task {t} reading block {}", other.index()),
            )?;
        }
        // Listings are sorted and consistent while writes go on.
        let page = s
            .list_blocks(&ListOptions {
                offset: Some((j * 3) as u64),
                limit: Some(10),
                ..Default::default()
            })
            .await?;
        ensure!(
            page.windows(2).all(|w| w[0].index < w[1].index),
            "task {t}: listing out of order"
        );
        for m in &page {
            ensure_eq!(
                *m,
                BlockMetadata::of(&chain[m.index as usize]),
                "task {t}: listed metadata"
            );
        }
        let count = s.count_blocks().await?;
        ensure!(
            count >= last_count,
            "task {t}: count went back from {last_count} to {count}"
        );
        last_count = count;
        j += step.len();
        tokio::task::yield_now().await;
    }
    Ok(())
}

/// Two forks of 64 blocks each at the same indices. Every other index is used,
/// so no block has a stored neighbour and only index claims decide.
fn forks() -> (Arc<Vec<Block>>, Arc<Vec<Block>>) {
    let fork = |k: u8| -> Arc<Vec<Block>> {
        Arc::new(
            (0..64u64)
                .map(|i| {
                    Block::sign_raw(
                        2 * i + 1,
                        data::at(i * 1_000),
                        Some(BlockHash([7; 32])),
                        data::EVENT,
                        format!("{{\"fork\":{k},\"seq\":{i}}}").into_bytes(),
                        &data::signer(k),
                    )
                    .expect("valid fork block")
                })
                .collect(),
        )
    };
    (fork(1), fork(2))
}

/// Four tasks race to store a block of one fork or the other at the same 64
/// indices: exactly one block wins each index, every attempt of the winner
/// succeeds and every attempt of the loser fails with `IndexConflict`.
pub async fn racing_writers_one_winner_per_index(env: &Env) -> CaseResult {
    const N: usize = 64;
    let s = env.open().await?;
    let (chain, rivals) = forks();
    let mut set = JoinSet::new();
    for t in 0..4usize {
        let s = s.clone();
        let blocks = if t < 2 { chain.clone() } else { rivals.clone() };
        set.spawn(async move {
            let mut order: Vec<usize> = (0..N).collect();
            if t % 2 == 1 {
                order.reverse();
            }
            let mut results = Vec::with_capacity(N);
            for i in order {
                let b = &blocks[i];
                let r = if i % 2 == 0 {
                    s.store_block(b).await.map(|_| ())
                } else {
                    s.store_blocks(std::slice::from_ref(b)).await.map(|_| ())
                };
                match r {
                    Ok(()) => results.push((i, b.hash(), true)),
                    Err(e) if e.kind() == ErrorKind::IndexConflict => {
                        results.push((i, b.hash(), false))
                    }
                    Err(e) => {
                        return Err(fail(format!(
                            "task {t}, index {i}: {:?} error: {e}",
                            e.kind()
                        )));
                    }
                }
                tokio::task::yield_now().await;
            }
            Ok::<_, CaseError>(results)
        });
    }
    let mut attempts = Vec::new();
    while let Some(joined) = set.join_next().await {
        attempts.extend(joined.map_err(|e| fail(format!("task panicked: {e}")))??);
    }
    let stored = s.get_blocks_by_range(0, 2 * N as u64).await?;
    ensure_eq!(stored.len(), N, "one block per contested index");
    for (i, hash, ok) in attempts {
        let winner = stored[i].hash();
        ensure!(
            winner == chain[i].hash() || winner == rivals[i].hash(),
            "index {i} holds a block nobody stored"
        );
        ensure_eq!(
            ok,
            hash == winner,
            "index {i}: attempt with {hash} succeeded={ok} but winner is {winner}"
        );
    }
    ensure_eq!(s.count_blocks().await?, N as u64, "count after the race");
    Ok(())
}
