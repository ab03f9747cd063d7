//! Damaged stored bytes are reported, never returned as a block.

use storage_core::{Block, ErrorKind, StorageBackend, StorageError};

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
    match s.get_blocks_by_range(0, 7).await {
        Ok(blocks) => {
            for got in &blocks {
                same_block(got, &chain[got.index() as usize], "range read after damage")?;
            }
        }
        Err(e) => ensure!(
            e.kind() == ErrorKind::Corrupted,
            "range read failed with {:?}: {e}",
            e.kind()
        ),
    }
    match s.retrieve_blocks(&[chain[2].hash(), victim.hash()]).await {
        Ok(got) => {
            for (g, w) in got.iter().zip([&chain[2], victim]) {
                if let Some(g) = g {
                    same_block(g, w, "retrieve_blocks after damage")?;
                }
            }
            ensure!(
                got[1].is_none() || got[1].as_ref() == Some(victim),
                "damaged block returned"
            );
        }
        Err(e) => ensure!(
            e.kind() == ErrorKind::Corrupted,
            "retrieve_blocks failed with {:?}: {e}",
            e.kind()
        ),
    }
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
