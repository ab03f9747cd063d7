//! Single-block store and retrieve, idempotence, conflicts and sizes.

use storage_core::{
    BlockHash, BlockMetadata, ErrorKind, ListOptions, StorageBackend, StorageError,
    system_time_from_unix_nanos,
};

use crate::check::{Ctx, ensure, ensure_eq, expect_kind, indices, same_block};
use crate::data::{self, Reading};
use crate::{CaseResult, Env};

/// A new store is empty everywhere.
pub async fn empty_store(env: &Env) -> CaseResult {
    let s = env.open().await?;
    ensure_eq!(s.count_blocks().await?, 0, "count of an empty store");
    ensure!(
        s.list_blocks(&ListOptions::default()).await?.is_empty(),
        "list of an empty store"
    );
    ensure_eq!(s.get_chain_head().await?, None, "head of an empty store");
    ensure!(
        s.get_blocks_by_range(0, u64::MAX).await?.is_empty(),
        "range of an empty store"
    );
    let stats = s.get_stats().await?;
    ensure_eq!(
        (
            stats.total_blocks,
            stats.total_size_bytes,
            stats.oldest_block,
            stats.newest_block
        ),
        (0, 0, None, None),
        "stats of an empty store"
    );
    let h = BlockHash([7; 32]);
    ensure_eq!(
        s.retrieve_block(&h).await?,
        None,
        "retrieve from an empty store"
    );
    ensure!(!s.block_exists(&h).await?, "exists in an empty store");
    ensure!(
        s.retrieve_blocks(&[]).await?.is_empty(),
        "retrieve_blocks(&[])"
    );
    Ok(())
}

/// The store reports the capabilities its fixture declares, writable (the
/// suite writes), and the same after `close`.
pub async fn capabilities_are_steady_and_as_declared(env: &Env) -> CaseResult {
    let s = env.open().await?;
    let caps = s.capabilities();
    if let Some(want) = env.fixture().expected_capabilities() {
        ensure_eq!(caps, want, "capabilities against the fixture's declaration");
    }
    ensure!(
        !caps.read_only,
        "a store opened for writing reports itself read-only"
    );
    let other = env.capabilities().await?;
    ensure_eq!(
        (caps.persistent, caps.atomic_batches, caps.vacuum),
        (other.persistent, other.atomic_batches, other.vacuum),
        "capabilities (persistent, atomic batches, vacuum) of stores at two locations"
    );
    s.close().await?;
    ensure_eq!(s.capabilities(), caps, "capabilities after close");
    Ok(())
}
/// Stored blocks come back byte-identical (hash, encoding, signature), with exact
/// metadata, and their payloads decode.
pub async fn store_retrieve_round_trip(env: &Env) -> CaseResult {
    let s = env.open().await?;
    let chain = data::chain(6);
    for b in chain.iter() {
        let h = s
            .store_block(b)
            .await
            .ctx(format!("store block {}", b.index()))?;
        ensure_eq!(h, b.hash(), "store_block returns the block's hash");
    }
    for b in chain.iter() {
        let got = s.retrieve_block(&b.hash()).await?;
        let got = got.ok_or_else(|| crate::check::fail(format!("block {} missing", b.index())))?;
        same_block(&got, b, format!("retrieve block {}", b.index()))?;
        ensure!(
            s.block_exists(&b.hash()).await?,
            "block {} exists",
            b.index()
        );
    }
    let (_, reading) = {
        let got = s
            .retrieve_block(&chain[0].hash())
            .await?
            .expect("checked above");
        let r: Reading = got.decode_payload()?;
        (got, r)
    };
    ensure_eq!(reading.seq, 0, "typed payload decode");
    let listed = s.list_blocks(&ListOptions::default()).await?;
    let want: Vec<_> = chain.iter().map(BlockMetadata::of).collect();
    ensure_eq!(listed, want, "metadata of stored blocks");
    ensure_eq!(s.count_blocks().await?, 6, "count");
    Ok(())
}

/// Timestamps keep every nanosecond: in blocks, metadata, stats and time filters.
pub async fn timestamps_keep_nanoseconds(env: &Env) -> CaseResult {
    let s = env.open().await?;
    let chain = data::chain(5);
    s.store_blocks(&chain).await?;
    for b in chain.iter() {
        let got = s.retrieve_block(&b.hash()).await?.expect("stored");
        ensure_eq!(
            got.timestamp_nanos(),
            b.timestamp_nanos(),
            "block {} timestamp",
            b.index()
        );
    }
    let listed = s.list_blocks(&ListOptions::default()).await?;
    for (m, b) in listed.iter().zip(chain.iter()) {
        ensure_eq!(
            m.timestamp,
            b.timestamp(),
            "metadata timestamp of block {}",
            m.index
        );
    }
    let stats = s.get_stats().await?;
    ensure_eq!(stats.oldest_block, Some(chain[0].timestamp()), "oldest");
    ensure_eq!(stats.newest_block, Some(chain[4].timestamp()), "newest");
    // One nanosecond either side of block 2's timestamp (shared with block 3).
    let t = chain[2].timestamp_nanos();
    let window = |lo: u64, hi: u64| {
        ListOptions::new()
            .start_time(system_time_from_unix_nanos(lo))
            .end_time(system_time_from_unix_nanos(hi))
    };
    ensure_eq!(
        indices(&s.list_blocks(&window(t, t)).await?),
        vec![2, 3],
        "exact instant"
    );
    ensure_eq!(
        indices(&s.list_blocks(&window(t + 1, u64::MAX >> 1)).await?),
        vec![4],
        "1 ns after"
    );
    ensure_eq!(
        indices(&s.list_blocks(&window(0, t - 1)).await?),
        vec![0, 1],
        "1 ns before"
    );
    Ok(())
}

/// Unknown hashes: `None`, `false`, and no effect.
pub async fn retrieve_missing_hash(env: &Env) -> CaseResult {
    let s = env.open().await?;
    let chain = data::chain(3);
    s.store_block(&chain[0]).await?;
    let missing = chain[1].hash();
    ensure_eq!(
        s.retrieve_block(&missing).await?,
        None,
        "retrieve of a missing hash"
    );
    ensure!(!s.block_exists(&missing).await?, "exists of a missing hash");
    ensure!(
        !s.delete_block(&missing).await?,
        "delete of a missing hash returns false"
    );
    let got = s.retrieve_blocks(&[missing, chain[2].hash()]).await?;
    ensure!(
        got.iter().all(Option::is_none),
        "retrieve_blocks of missing hashes"
    );
    ensure_eq!(s.count_blocks().await?, 1, "count unchanged");
    Ok(())
}

/// Storing the same block again succeeds and changes nothing.
pub async fn duplicate_store_is_idempotent(env: &Env) -> CaseResult {
    let s = env.open().await?;
    let chain = data::chain(3);
    s.store_blocks(&chain).await?;
    let before = s.get_stats().await?;
    ensure_eq!(
        s.store_block(&chain[1]).await?,
        chain[1].hash(),
        "re-store returns the hash"
    );
    let hashes = s
        .store_blocks(&[chain[0].clone(), chain[0].clone(), chain[2].clone()])
        .await?;
    ensure_eq!(
        hashes,
        vec![chain[0].hash(), chain[0].hash(), chain[2].hash()],
        "batch of duplicates"
    );
    ensure_eq!(s.count_blocks().await?, 3, "count after duplicates");
    let after = s.get_stats().await?;
    ensure_eq!(
        (after.total_blocks, after.total_size_bytes),
        (before.total_blocks, before.total_size_bytes),
        "stats after duplicates"
    );
    ensure_eq!(
        s.list_blocks(&ListOptions::default()).await?.len(),
        3,
        "list after duplicates"
    );
    Ok(())
}

/// A different block at an occupied index is refused with `IndexConflict` naming
/// both blocks, and the stored one is untouched.
pub async fn index_conflict_rejected(env: &Env) -> CaseResult {
    let s = env.open().await?;
    let chain = data::chain(3);
    s.store_blocks(&chain).await?;
    s.set_chain_head(&chain[1].hash()).await?;
    let rival = data::rival(&chain[1]);
    let err = expect_kind(
        s.store_block(&rival).await,
        ErrorKind::IndexConflict,
        "store rival",
    )?;
    match err {
        StorageError::IndexConflict {
            index,
            existing,
            attempted,
        } => {
            ensure_eq!(
                (index, existing, attempted),
                (1, chain[1].hash(), rival.hash()),
                "conflict details"
            );
        }
        other => {
            return Err(crate::check::fail(format!(
                "conflict reported as {other:?}"
            )));
        }
    }
    ensure!(
        !s.block_exists(&rival.hash()).await?,
        "rival must not be stored"
    );
    let got = s
        .retrieve_block(&chain[1].hash())
        .await?
        .expect("original still stored");
    same_block(&got, &chain[1], "original after conflict")?;
    ensure_eq!(s.count_blocks().await?, 3, "count after conflict");
    ensure_eq!(
        s.get_chain_head().await?,
        Some(chain[1].hash()),
        "head after conflict"
    );
    let range = s.get_blocks_by_range(1, 1).await?;
    ensure_eq!(
        range.iter().map(|b| b.hash()).collect::<Vec<_>>(),
        vec![chain[1].hash()],
        "range after conflict"
    );
    Ok(())
}

/// A payload of 8 MiB round-trips intact.
pub async fn large_payload_8mib(env: &Env) -> CaseResult {
    let s = env.open().await?;
    let big = data::big_block((8 << 20) + 1);
    s.store_block(&big).await.ctx("store an 8 MiB block")?;
    let got = s
        .retrieve_block(&big.hash())
        .await?
        .ok_or_else(|| crate::check::fail("8 MiB block missing"))?;
    same_block(&got, &big, "8 MiB block")?;
    let listed = s.list_blocks(&ListOptions::default()).await?;
    ensure_eq!(
        listed,
        vec![BlockMetadata::of(&big)],
        "metadata of the 8 MiB block"
    );
    ensure_eq!(
        s.get_stats().await?.total_size_bytes,
        big.size_bytes(),
        "size of the 8 MiB block"
    );
    Ok(())
}

/// A payload exactly at the store's limit (when the fixture reports one) round
/// trips intact: in every listing, range and bulk read, and its payload decodes.
pub async fn payload_at_the_store_limit(env: &Env) -> CaseResult {
    let Some(limit) = env.fixture().max_payload_bytes() else {
        return Err(crate::CaseError::Skipped(
            "the fixture reports no payload limit".into(),
        ));
    };
    let s = env.open().await?;
    let big = data::big_block(limit);
    s.store_block(&big)
        .await
        .ctx(format!("store a block with a payload of {limit} bytes"))?;
    let got = s
        .retrieve_block(&big.hash())
        .await?
        .ok_or_else(|| crate::check::fail("the largest block is missing"))?;
    same_block(&got, &big, "the largest block")?;
    let bulk = s.retrieve_blocks(&[big.hash(), big.hash()]).await?;
    ensure_eq!(bulk.len(), 2, "bulk results");
    for b in bulk {
        let b = b.ok_or_else(|| crate::check::fail("the largest block left out of a bulk read"))?;
        same_block(&b, &big, "the largest block, bulk")?;
    }
    crate::check::same_blocks(
        &s.get_blocks_by_range(0, 0).await?,
        &[&big],
        "the largest block, range",
    )?;
    ensure_eq!(
        s.list_blocks(&ListOptions::default()).await?,
        vec![BlockMetadata::of(&big)],
        "metadata of the largest block"
    );
    Ok(())
}

/// Ten thousand small blocks: all counted, listed, ranged and retrievable.
pub async fn many_small_blocks(env: &Env) -> CaseResult {
    const N: usize = 10_000;
    let s = env.open().await?;
    let chain = data::chain(N);
    // Mostly batches, some single stores.
    for (i, batch) in chain.chunks(500).enumerate() {
        if i % 5 == 4 {
            for b in batch {
                s.store_block(b).await?;
            }
        } else {
            s.store_blocks(batch).await?;
        }
    }
    ensure_eq!(s.count_blocks().await?, N as u64, "count");
    let listed = s.list_blocks(&ListOptions::default()).await?;
    ensure_eq!(listed.len(), N, "list length");
    ensure!(
        listed
            .iter()
            .enumerate()
            .all(|(i, m)| m.index == i as u64 && m.hash == chain[i].hash()),
        "list content"
    );
    let range = s.get_blocks_by_range(0, u64::MAX).await?;
    ensure_eq!(range.len(), N, "range length");
    for i in (0..N).step_by(97) {
        same_block(&range[i], &chain[i], format!("range block {i}"))?;
        let got = s.retrieve_block(&chain[i].hash()).await?.expect("stored");
        same_block(&got, &chain[i], format!("block {i}"))?;
    }
    let stats = s.get_stats().await?;
    ensure_eq!(stats.total_blocks, N as u64, "stats total");
    ensure_eq!(
        stats.total_size_bytes,
        chain.iter().map(|b| b.size_bytes()).sum::<u64>(),
        "stats size"
    );
    Ok(())
}

/// A block that differs from the stored one at its index in any single field
/// (timestamp, payload, signer, payload type, previous hash) is `IndexConflict`,
/// alone or in a batch, whether the stored block is the head, the newest block or
/// one in the middle; nothing changes.
pub async fn equivocation_is_index_conflict(env: &Env) -> CaseResult {
    let s = env.open().await?;
    let chain = data::chain(5);
    s.store_blocks(&chain).await?;
    s.set_chain_head(&chain[2].hash()).await?;
    let before = super::snapshot(&*s).await?;
    for i in [0usize, 2, 4] {
        let mut rivals = data::one_field_variants(&chain[i]);
        rivals.push(("everything", data::rival(&chain[i])));
        for (field, rival) in rivals {
            let what = format!("block {i} with another {field}");
            let err = expect_kind(s.store_block(&rival).await, ErrorKind::IndexConflict, &what)?;
            if let StorageError::IndexConflict {
                index,
                existing,
                attempted,
            } = err
            {
                ensure_eq!(
                    (index, existing, attempted),
                    (i as u64, chain[i].hash(), rival.hash()),
                    "{what}: conflict details"
                );
            }
            expect_kind(
                s.store_blocks(std::slice::from_ref(&rival)).await,
                ErrorKind::IndexConflict,
                format!("{what}, in a batch"),
            )?;
            ensure!(
                !s.block_exists(&rival.hash()).await?,
                "{what}: the rival was stored"
            );
        }
        ensure_eq!(
            super::snapshot(&*s).await?,
            before,
            "store after rivals of block {i}"
        );
    }
    Ok(())
}
