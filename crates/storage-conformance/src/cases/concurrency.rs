//! Many tasks at once: nothing acknowledged is lost, counts are exact, every read
//! is right, and racing writers get exactly one winner per index.

use std::sync::Arc;

use storage_core::{Block, BlockHash, BlockMetadata, ErrorKind, ListOptions, StorageBackend};
use tokio::task::JoinSet;

use crate::check::{ensure, ensure_eq, fail, same_block};
use crate::data;
use crate::fault::{FaultyBackend, PausePoint};
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
            .list_blocks(&ListOptions::new().offset((j * 3) as u64).limit(10))
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

/// Starts `call` on its own task and waits until it is held at `point`.
async fn held<T: Send + 'static>(
    point: &PausePoint,
    call: impl std::future::Future<Output = T> + Send + 'static,
) -> tokio::task::JoinHandle<T> {
    let task = tokio::spawn(call);
    point.arrived().await;
    task
}

async fn joined<T>(task: tokio::task::JoinHandle<T>) -> Result<T, CaseError> {
    task.await
        .map_err(|e| fail(format!("task panicked or was cancelled: {e}")))
}

/// How two held calls are let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Release {
    /// The first, to completion, then the second.
    FirstThenSecond,
    /// The second, to completion, then the first.
    SecondThenFirst,
    /// Both at once.
    Together,
}

/// Lets two calls held at their points (the same point twice works too) through
/// as `how` says; returns their outcomes in the order given.
async fn release_pair<A, B>(
    (pa, ta): (&PausePoint, tokio::task::JoinHandle<A>),
    (pb, tb): (&PausePoint, tokio::task::JoinHandle<B>),
    how: Release,
) -> Result<(A, B), CaseError> {
    match how {
        Release::FirstThenSecond => {
            pa.release(1);
            let a = joined(ta).await?;
            pb.release(1);
            Ok((a, joined(tb).await?))
        }
        Release::SecondThenFirst => {
            pb.release(1);
            let b = joined(tb).await?;
            pa.release(1);
            Ok((joined(ta).await?, b))
        }
        Release::Together => {
            pa.release(1);
            pb.release(1);
            Ok((joined(ta).await?, joined(tb).await?))
        }
    }
}

/// Calls held at pause points and let through in a chosen order (one after the
/// other, or together) end as some serial order of the same calls would: two
/// rivals at one index (first through wins, the other is `IndexConflict`),
/// identical stores (both succeed, counted once), a delete racing the store of
/// the same block, a head move racing the delete of its block, and a batch racing
/// a rival of one of its blocks (all of the batch or none of it).
///
/// A call's own work is atomic only as far as the backend makes it so: for
/// backends whose calls run inline under one lock (memory) every interleaving is
/// one of these orders; for those that run on blocking threads (filesystem,
/// RocksDB, SQLite) or over the network (object storage) the calls released
/// together really overlap, and the result must still be one of the serial ones.
pub async fn interleavings_agree_with_a_serial_order(env: &Env) -> CaseResult {
    let faulty = Arc::new(FaultyBackend::new(env.open().await?, 1));
    let s: Arc<dyn StorageBackend> = faulty.clone();
    let plain = faulty.inner().clone();
    let (ours, theirs) = forks();
    // Each round uses four indices of its own (16 rounds × 4 = the forks' 64).
    for round in 0..16usize {
        let together = round % 2 == 1;
        let [a, b, c, d] = [0, 1, 2, 3].map(|k| round * 4 + k);
        let what = |s: &str| {
            format!(
                "round {round} ({}): {s}",
                if together { "together" } else { "in turn" }
            )
        };

        // Two rivals at one index.
        let point = faulty.pause("store_block");
        let (x, y) = if round % 4 < 2 {
            (ours[a].clone(), theirs[a].clone())
        } else {
            (theirs[a].clone(), ours[a].clone())
        };
        let first = held(&point, {
            let (s, x) = (s.clone(), x.clone());
            async move { s.store_block(&x).await }
        })
        .await;
        let second = held(&point, {
            let (s, y) = (s.clone(), y.clone());
            async move { s.store_block(&y).await }
        })
        .await;
        let how = if together {
            Release::Together
        } else {
            Release::FirstThenSecond
        };
        let (r1, r2) = release_pair((&point, first), (&point, second), how).await?;
        faulty.unpause("store_block");
        let stored = plain.get_blocks_by_range(x.index(), x.index()).await?;
        ensure_eq!(
            stored.len(),
            1,
            "{}",
            what("one block at a contested index")
        );
        let winner = stored[0].hash();
        let (ok1, ok2) = (r1.is_ok(), r2.is_ok());
        for (r, b) in [(&r1, &x), (&r2, &y)] {
            match r {
                Ok(_) => ensure!(b.hash() == winner, "{}", what("a loser reported success")),
                Err(e) => ensure!(
                    e.kind() == ErrorKind::IndexConflict && b.hash() != winner,
                    "{}: {:?}: {e}",
                    what("the loser's error"),
                    e.kind()
                ),
            }
        }
        ensure!(ok1 != ok2, "{}", what("exactly one rival wins"));
        if !together {
            ensure!(ok1, "{}", what("the rival let through first wins"));
        }

        // Identical stores, and a delete racing a store of the same block.
        let blk = ours[b].clone();
        let one = faulty.pause("store_block");
        let many = faulty.pause("store_blocks");
        let t1 = held(&one, {
            let (s, blk) = (s.clone(), blk.clone());
            async move { s.store_block(&blk).await }
        })
        .await;
        let t2 = held(&many, {
            let (s, blk) = (s.clone(), blk.clone());
            async move { s.store_blocks(std::slice::from_ref(&blk)).await }
        })
        .await;
        let before = plain.get_stats().await?;
        many.release(1);
        one.release(1);
        joined(t1)
            .await?
            .map_err(|e| fail(format!("{}: {e}", what("identical store 1"))))?;
        joined(t2)
            .await?
            .map_err(|e| fail(format!("{}: {e}", what("identical store 2"))))?;
        faulty.unpause("store_block");
        faulty.unpause("store_blocks");
        let after = plain.get_stats().await?;
        ensure_eq!(
            (after.total_blocks, after.total_size_bytes),
            (
                before.total_blocks + 1,
                before.total_size_bytes + blk.size_bytes()
            ),
            "{}",
            what("identical concurrent stores count once")
        );

        let victim = ours[c].clone();
        let del = faulty.pause("delete_block");
        let put = faulty.pause("store_block");
        let store_task = held(&put, {
            let (s, v) = (s.clone(), victim.clone());
            async move { s.store_block(&v).await }
        })
        .await;
        let delete_task = held(&del, {
            let (s, h) = (s.clone(), victim.hash());
            async move { s.delete_block(&h).await }
        })
        .await;
        let store_first = round % 4 != 3;
        let how = match (together, store_first) {
            (true, _) => Release::Together,
            (false, true) => Release::FirstThenSecond,
            (false, false) => Release::SecondThenFirst,
        };
        let (stored_r, deleted) =
            release_pair((&put, store_task), (&del, delete_task), how).await?;
        faulty.unpause("store_block");
        faulty.unpause("delete_block");
        stored_r.map_err(|e| fail(format!("{}: {e}", what("store racing a delete"))))?;
        let deleted =
            deleted.map_err(|e| fail(format!("{}: {e}", what("delete racing a store"))))?;
        let present = plain.block_exists(&victim.hash()).await?;
        ensure!(
            deleted != present,
            "{}: delete returned {deleted}, block present afterwards: {present}",
            what("delete racing a store")
        );
        if !together {
            ensure_eq!(
                deleted,
                store_first,
                "{}",
                what("delete after or before the store")
            );
        }
        let listed = plain
            .list_blocks(
                &ListOptions::new()
                    .min_index(victim.index())
                    .max_index(victim.index()),
            )
            .await?;
        ensure_eq!(
            listed.len(),
            usize::from(present),
            "{}",
            what("listing agrees with exists")
        );

        // A head move racing the delete of its block.
        let target = ours[d].clone();
        plain.store_block(&target).await?;
        let head_point = faulty.pause("set_chain_head");
        let del = faulty.pause("delete_block");
        let set_task = held(&head_point, {
            let (s, h) = (s.clone(), target.hash());
            async move { s.set_chain_head(&h).await }
        })
        .await;
        let delete_task = held(&del, {
            let (s, h) = (s.clone(), target.hash());
            async move { s.delete_block(&h).await }
        })
        .await;
        let set_first = round % 4 < 2;
        let how = match (together, set_first) {
            (true, _) => Release::Together,
            (false, true) => Release::FirstThenSecond,
            (false, false) => Release::SecondThenFirst,
        };
        let (set_r, del_r) =
            release_pair((&head_point, set_task), (&del, delete_task), how).await?;
        faulty.unpause("set_chain_head");
        faulty.unpause("delete_block");
        ensure!(
            del_r.as_ref().is_ok_and(|d| *d),
            "{}: {del_r:?}",
            what("the delete of the head's block")
        );
        let head = plain.get_chain_head().await?;
        match &set_r {
            // Set first, then deleted: the head is cleared.
            Ok(()) => ensure_eq!(head, None, "{}", what("head set, then its block deleted")),
            Err(e) => {
                ensure!(
                    e.kind() == ErrorKind::NotFound,
                    "{}: {:?}: {e}",
                    what("head set on a deleted block"),
                    e.kind()
                );
                ensure!(
                    head != Some(target.hash()),
                    "{}",
                    what("head names a deleted block")
                );
            }
        }
        if !together {
            ensure_eq!(
                set_r.is_ok(),
                set_first,
                "{}",
                what("head set before or after the delete")
            );
        }
    }
    ensure!(
        faulty.injected() == 0,
        "pause points must not count as injected faults"
    );
    Ok(())
}

/// A batch racing a rival of one of its blocks, both held and then let through
/// together or in turn: with atomic batches either the whole batch is stored and
/// the rival refused, or the rival is stored and nothing of the batch.
pub async fn batch_racing_a_rival_is_all_or_nothing(env: &Env) -> CaseResult {
    let faulty = Arc::new(FaultyBackend::new(env.open().await?, 2));
    let s: Arc<dyn StorageBackend> = faulty.clone();
    let plain = faulty.inner().clone();
    let (ours, theirs) = forks();
    for round in 0..12usize {
        let batch: Vec<Block> = ours[round * 5..round * 5 + 5].to_vec();
        let rival = theirs[round * 5 + 2].clone();
        let bp = faulty.pause("store_blocks");
        let rp = faulty.pause("store_block");
        let batch_task = held(&bp, {
            let (s, b) = (s.clone(), batch.clone());
            async move { s.store_blocks(&b).await }
        })
        .await;
        let rival_task = held(&rp, {
            let (s, r) = (s.clone(), rival.clone());
            async move { s.store_block(&r).await }
        })
        .await;
        let how = [
            Release::FirstThenSecond,
            Release::SecondThenFirst,
            Release::Together,
        ][round % 3];
        let (br, rr) = release_pair((&bp, batch_task), (&rp, rival_task), how).await?;
        faulty.unpause("store_blocks");
        faulty.unpause("store_block");
        let what = format!("round {round}");
        ensure!(
            br.is_ok() != rr.is_ok(),
            "{what}: batch {br:?}, rival {rr:?}: exactly one must succeed"
        );
        for r in [br.as_ref().err(), rr.as_ref().err()].into_iter().flatten() {
            ensure!(
                r.kind() == ErrorKind::IndexConflict,
                "{what}: the loser failed with {:?}: {r}",
                r.kind()
            );
        }
        let present: Vec<bool> = {
            let mut v = Vec::new();
            for b in &batch {
                v.push(plain.block_exists(&b.hash()).await?);
            }
            v
        };
        if br.is_ok() {
            ensure!(
                present.iter().all(|p| *p),
                "{what}: a stored batch lost blocks"
            );
        } else if env.capabilities().await?.atomic_batches {
            ensure!(
                present.iter().all(|p| !*p),
                "{what}: a refused atomic batch left blocks {present:?}"
            );
        } else {
            ensure!(
                !present[2],
                "{what}: the batch's block at the rival's index was stored"
            );
        }
        ensure_eq!(
            plain.block_exists(&rival.hash()).await?,
            rr.is_ok(),
            "{what}: the rival stored iff it succeeded"
        );
        match how {
            Release::FirstThenSecond => {
                ensure!(br.is_ok(), "{what}: the batch let through first wins")
            }
            Release::SecondThenFirst => {
                ensure!(rr.is_ok(), "{what}: the rival let through first wins")
            }
            Release::Together => {}
        }
    }
    Ok(())
}
