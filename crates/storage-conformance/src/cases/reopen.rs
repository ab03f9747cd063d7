//! Persistence: close or drop, reopen the same location, find everything.

use storage_core::StorageBackend;

use super::snapshot;
use crate::check::{ensure_eq, same_block};
use crate::data;
use crate::{CaseResult, Env};

/// Close, reopen: blocks, metadata, head and stats are all there; writing goes on.
pub async fn reopen_after_close(env: &Env) -> CaseResult {
    let chain = data::chain(30);
    let s = env.open().await?;
    s.store_blocks(&chain[..20]).await?;
    for b in &chain[20..25] {
        s.store_block(b).await?;
    }
    s.delete_block(&chain[7].hash()).await?;
    s.set_chain_head(&chain[24].hash()).await?;
    let before = snapshot(&*s).await?;
    s.close().await?;
    drop(s);

    let s = env.open().await?;
    ensure_eq!(snapshot(&*s).await?, before, "store after close and reopen");
    for b in chain[..25].iter().filter(|b| b.index() != 7) {
        let got = s
            .retrieve_block(&b.hash())
            .await?
            .ok_or_else(|| crate::check::fail(format!("block {} lost across reopen", b.index())))?;
        same_block(&got, b, format!("block {} after reopen", b.index()))?;
    }
    s.store_blocks(&chain[25..]).await?;
    s.set_chain_head(&chain[29].hash()).await?;
    s.close().await?;
    drop(s);

    let s = env.open().await?;
    ensure_eq!(s.count_blocks().await?, 29, "count after the second reopen");
    ensure_eq!(
        s.get_chain_head().await?,
        Some(chain[29].hash()),
        "head after the second reopen"
    );
    s.close().await?;
    Ok(())
}

/// Drop every handle without close, reopen: every acknowledged write is there.
pub async fn reopen_after_drop(env: &Env) -> CaseResult {
    let chain = data::chain(12);
    let s = env.open().await?;
    s.store_blocks(&chain[..8]).await?;
    for b in &chain[8..] {
        s.store_block(b).await?;
    }
    s.delete_block(&chain[3].hash()).await?;
    s.set_chain_head(&chain[11].hash()).await?;
    let before = snapshot(&*s).await?;
    drop(s);

    let s = env.open().await?;
    ensure_eq!(snapshot(&*s).await?, before, "store after drop and reopen");
    s.close().await?;
    Ok(())
}
