//! Persistence: close or drop, reopen the same location, find everything.

use storage_core::{ErrorKind, OpenMode, StorageBackend, StorageError};

use super::snapshot;
use crate::check::{ensure, ensure_eq, expect_kind, same_block};
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

/// Opening an existing store where none is refuses with `NotFound` and creates
/// nothing (a later creating open finds an empty store); where one is, it
/// opens it as it was.
pub async fn open_existing_finds_or_refuses(env: &Env) -> CaseResult {
    let missing = env.try_open_in(OpenMode::OpenExisting).await?;
    let e = expect_kind(
        missing.map(|_| ()),
        ErrorKind::NotFound,
        "opening a store that does not exist",
    )?;
    ensure!(
        matches!(e, StorageError::StoreNotFound { .. }),
        "a missing store should be StoreNotFound naming where it was looked for, got {e:?}"
    );
    let s = env.open().await?;
    ensure_eq!(s.count_blocks().await?, 0, "the store after a refused open");
    let chain = data::chain(12);
    s.store_blocks(&chain).await?;
    s.set_chain_head(&chain[11].hash()).await?;
    let before = snapshot(&*s).await?;
    s.close().await?;
    drop(s);
    let s = env.open_in(OpenMode::OpenExisting).await?;
    ensure_eq!(snapshot(&*s).await?, before, "the store opened as existing");
    ensure!(
        !s.capabilities().read_only,
        "a store opened as existing reports itself read-only"
    );
    s.store_block(&data::chain(13)[12]).await?;
    s.close().await?;
    Ok(())
}

/// Opened read-only, a store reads exactly as before, reports itself
/// read-only, refuses every write with `ReadOnly`, and is unchanged after;
/// a missing store is `NotFound`.
pub async fn read_only_reads_everything_and_writes_nothing(env: &Env) -> CaseResult {
    expect_kind(
        env.try_open_in(OpenMode::ReadOnly).await?.map(|_| ()),
        ErrorKind::NotFound,
        "opening a missing store read-only",
    )?;
    let chain = data::chain(30);
    let s = env.open().await?;
    s.store_blocks(&chain[..20]).await?;
    s.delete_block(&chain[5].hash()).await?;
    s.set_chain_head(&chain[19].hash()).await?;
    let before = snapshot(&*s).await?;
    s.close().await?;
    drop(s);

    let r = env.open_in(OpenMode::ReadOnly).await?;
    ensure!(
        r.capabilities().read_only,
        "a read-only store does not say so"
    );
    ensure_eq!(snapshot(&*r).await?, before, "the store opened read-only");
    for b in chain[..20].iter().filter(|b| b.index() != 5) {
        let got = r.retrieve_block(&b.hash()).await?;
        ensure!(
            got.as_ref() == Some(b),
            "block {} read read-only",
            b.index()
        );
    }
    let h = chain[3].hash();
    let writes = [
        ("store_block", r.store_block(&chain[20]).await.map(drop)),
        ("store_blocks", r.store_blocks(&chain[20..]).await.map(drop)),
        ("re-store", r.store_block(&chain[0]).await.map(drop)),
        ("delete_block", r.delete_block(&h).await.map(drop)),
        ("set_chain_head", r.set_chain_head(&h).await),
        ("compact", r.compact().await),
        ("vacuum", r.vacuum().await),
    ];
    for (op, result) in writes {
        expect_kind(
            result,
            ErrorKind::ReadOnly,
            format!("{op} on a read-only store"),
        )?;
    }
    ensure_eq!(
        snapshot(&*r).await?,
        before,
        "the read-only store after refused writes"
    );
    r.close().await?;
    drop(r);
    let s = env.open().await?;
    ensure_eq!(
        snapshot(&*s).await?,
        before,
        "the store reopened for writing"
    );
    s.close().await?;
    Ok(())
}

/// A read-only open beside a writer that holds the store open sees at least
/// every block the writer had acknowledged, each whole and verified.
pub async fn read_only_beside_a_writer(env: &Env) -> CaseResult {
    let chain = data::chain(40);
    let w = env.open().await?;
    w.store_blocks(&chain[..25]).await?;
    w.set_chain_head(&chain[24].hash()).await?;
    let r = env.open_in(OpenMode::ReadOnly).await?;
    // The writer goes on; the reader must not get in its way.
    w.store_blocks(&chain[25..]).await?;
    let seen = r.get_blocks_by_range(0, u64::MAX).await?;
    ensure!(
        seen.len() >= 25,
        "the reader sees {} blocks; the writer had acknowledged 25 when it opened",
        seen.len()
    );
    for (i, b) in seen.iter().enumerate() {
        ensure!(
            *b == chain[i],
            "the reader's block at position {i} is not the writer's block {i}"
        );
    }
    expect_kind(
        r.store_block(&chain[0]).await.map(drop),
        ErrorKind::ReadOnly,
        "writing through the reader",
    )?;
    r.close().await?;
    ensure_eq!(
        w.count_blocks().await?,
        40,
        "the writer's count after the reader"
    );
    w.close().await?;
    Ok(())
}
