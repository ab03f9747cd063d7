//! Damaged stored bytes are reported, never returned as a block.

use storage_core::{
    Block, ErrorKind, StorageBackend, StorageBackendExt, StorageError, VerifyOptions,
};

use storage_core::{BlockMetadata, ListOptions, SortOrder};

use crate::check::{ensure, expect_kind, fail, same_block};
use crate::data;
use crate::{CaseError, CaseResult, Env};

/// After the fixture damages one block's bytes, retrieving it fails with
/// `Corrupted`; no read ever returns a block that differs from what was stored.
pub async fn corrupted_block_is_reported(env: &Env) -> CaseResult {
    let chain = data::chain(8);
    let s = env.open().await?;
    s.store_blocks(&chain).await?;
    let victim = &chain[3];
    let s = env
        .fixture()
        .corrupt(s, &victim.hash())
        .await
        .map_err(|e| fail(format!("fixture could not corrupt block 3: {e}")))?;

    expect_kind(
        s.retrieve_block(&victim.hash()).await,
        ErrorKind::Corrupted,
        "retrieve of the damaged block",
    )?;
    for b in chain.iter().filter(|b| b.index() != 3) {
        // Neighbours sharing a damaged page may fail too, but only as Corrupted.
        check_read(s.retrieve_block(&b.hash()).await, b, "neighbour")?;
    }
    bulk_reads_report_damage(&*s, &chain, victim).await?;
    Ok(())
}

/// `verify_store` on a store with one damaged block fails with `Corrupted`
/// after verifying only blocks below it, never passes.
pub async fn verify_store_reports_damage(env: &Env) -> CaseResult {
    let chain = data::chain(8);
    let s = env.open().await?;
    s.store_blocks(&chain).await?;
    s.set_chain_head(&chain[7].hash()).await?;
    let s = env
        .fixture()
        .corrupt(s, &chain[3].hash())
        .await
        .map_err(|e| fail(format!("fixture could not corrupt block 3: {e}")))?;
    // Two blocks a page: the damage is in the second window.
    let mut verified = 0;
    let got = s
        .verify_store(&VerifyOptions::default().page(2), &mut |n| verified += n)
        .await;
    let e = expect_kind(got, ErrorKind::Corrupted, "verify_store of a damaged store")?;
    ensure!(
        verified <= 3,
        "{verified} blocks verified before the damage at #3 was reported"
    );
    // Neighbours sharing damaged storage may be named first, never later blocks.
    let text = e.to_string();
    ensure!(
        (0..=3).any(|i| text.contains(&format!("block #{i} ({})", chain[i].hash()))),
        "the error names the damaged block: {text}"
    );
    Ok(())
}

fn check_read(
    got: Result<Option<Block>, StorageError>,
    want: &Block,
    what: &str,
) -> Result<(), CaseError> {
    match got {
        Ok(Some(b)) => same_block(&b, want, format!("{what} {}", want.index())),
        Ok(None) => Err(fail(format!("{what} {} vanished", want.index()))),
        Err(e) if e.kind() == ErrorKind::Corrupted => Ok(()),
        Err(e) => Err(fail(format!(
            "{what} {}: {:?} error: {e}",
            want.index(),
            e.kind()
        ))),
    }
}

/// `Corrupted`, or else exactly `want`.
fn whole_or_corrupted<T: PartialEq + std::fmt::Debug>(
    got: Result<T, StorageError>,
    check: impl FnOnce(&T) -> Result<(), CaseError>,
    what: &str,
) -> Result<(), CaseError> {
    match got {
        Ok(v) => check(&v).map_err(|e| fail(format!("{what}: {e}"))),
        Err(e) if e.kind() == ErrorKind::Corrupted => Ok(()),
        Err(e) => Err(fail(format!(
            "{what}: expected the blocks or a Corrupted error, got {:?}: {e}",
            e.kind()
        ))),
    }
}

/// Every bulk read that meets the damaged `victim` fails with `Corrupted` or
/// returns everything it should, byte-identical: a range, a bulk retrieve (alone,
/// among others, repeated), listings in every order, the count and the stats. A
/// block silently left out is a failure.
async fn bulk_reads_report_damage(
    s: &dyn StorageBackend,
    chain: &[Block],
    victim: &Block,
) -> CaseResult {
    let all: Vec<&Block> = chain.iter().collect();
    for (a, b) in [(0, 7), (0, u64::MAX), (victim.index(), victim.index())] {
        whole_or_corrupted(
            s.get_blocks_by_range(a, b).await,
            |got| {
                let want: Vec<&Block> = all
                    .iter()
                    .copied()
                    .filter(|x| (a..=b).contains(&x.index()))
                    .collect();
                crate::check::same_blocks(got, &want, "blocks")
            },
            &format!("range {a}..={b} over a damaged block"),
        )?;
    }
    let asks: [Vec<&Block>; 3] = [
        vec![victim],
        vec![&chain[2], victim, &chain[5]],
        vec![victim, &chain[0], victim],
    ];
    for ask in asks {
        let hashes: Vec<_> = ask.iter().map(|b| b.hash()).collect();
        whole_or_corrupted(
            s.retrieve_blocks(&hashes).await,
            |got: &Vec<Option<Block>>| {
                ensure!(
                    got.len() == ask.len(),
                    "{} results for {}",
                    got.len(),
                    ask.len()
                );
                for (g, w) in got.iter().zip(&ask) {
                    match g {
                        Some(g) => same_block(g, w, "result")?,
                        None => return Err(fail(format!("block {} left out", w.index()))),
                    }
                }
                Ok(())
            },
            &format!(
                "retrieve_blocks of {} hashes around a damaged block",
                ask.len()
            ),
        )?;
    }
    for order in [
        SortOrder::Ascending,
        SortOrder::Descending,
        SortOrder::ByTimestamp,
    ] {
        let opts = ListOptions::new().order(order);
        let want = super::model::reference_list(chain, &opts);
        whole_or_corrupted(
            s.list_blocks(&opts).await,
            |got: &Vec<BlockMetadata>| crate::check::same_listing(got, &want, "listing"),
            &format!("listing ({order:?}) over a damaged block"),
        )?;
    }
    whole_or_corrupted(
        s.count_blocks().await,
        |n| {
            ensure!(*n == chain.len() as u64, "count {n}, want {}", chain.len());
            Ok(())
        },
        "count with a damaged block",
    )?;
    whole_or_corrupted(
        s.get_stats()
            .await
            .map(|st| (st.total_blocks, st.total_size_bytes)),
        |got| {
            let size: u64 = chain.iter().map(Block::size_bytes).sum();
            ensure!(
                *got == (chain.len() as u64, size),
                "stats {got:?}, want ({}, {size})",
                chain.len()
            );
            Ok(())
        },
        "stats with a damaged block",
    )?;
    Ok(())
}

/// Damage to the first, a middle and the last block, each in a fresh store, is
/// reported by every bulk read that meets it (never a silent omission), and
/// blocks it does not touch still read back intact.
pub async fn damage_seen_through_bulk_reads(env: &Env) -> CaseResult {
    let chain = data::chain(8);
    for victim in [0usize, 4, 7] {
        let env = env.fresh();
        let s = env.open().await?;
        s.store_blocks(&chain).await?;
        s.set_chain_head(&chain[7].hash()).await?;
        let s = env
            .fixture()
            .corrupt(s, &chain[victim].hash())
            .await
            .map_err(|e| fail(format!("fixture could not corrupt block {victim}: {e}")))?;
        expect_kind(
            s.retrieve_block(&chain[victim].hash()).await,
            ErrorKind::Corrupted,
            format!("retrieve of damaged block {victim}"),
        )?;
        bulk_reads_report_damage(&*s, &chain, &chain[victim])
            .await
            .map_err(|e| fail(format!("damaged block {victim}: {e}")))?;
        for b in chain.iter().filter(|b| b.index() != victim as u64) {
            check_read(s.retrieve_block(&b.hash()).await, b, "neighbour")?;
        }
        // Closing a damaged store may report the damage it meets while flushing.
        if let Err(e) = s.close().await {
            ensure!(
                e.kind() == ErrorKind::Corrupted,
                "close of a damaged store: {:?}: {e}",
                e.kind()
            );
        }
    }
    Ok(())
}
