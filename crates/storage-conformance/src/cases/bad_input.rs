//! Bad input: forged signatures, broken hash links, payloads over the store's
//! limit, non-UTF-8 payload types. Each is refused with a typed error and leaves
//! the store exactly as it was.
//!
//! Forged signatures and malformed payload types never reach a backend: a
//! [`Block`] can only be made by signing, or by decoding bytes (which verifies
//! them). Those cases check that every way in refuses them and that the store is
//! untouched; broken links and oversized payloads are the backend's own checks.

use storage_core::{Block, ErrorKind, PublicKey, StorageError, WireFormat};

use super::snapshot;
use crate::check::{ensure, ensure_eq, expect_kind, fail, same_block};
use crate::data::{self, EVENT};
use crate::{CaseError, CaseResult, Env};

/// `result` is an error of one of `kinds`.
fn expect_one_of<T: std::fmt::Debug>(
    result: Result<T, StorageError>,
    kinds: &[ErrorKind],
    what: &str,
) -> CaseResult {
    match result {
        Err(e) if kinds.contains(&e.kind()) => Ok(()),
        Err(e) => Err(fail(format!(
            "{what}: expected one of {kinds:?}, got {:?}: {e}",
            e.kind()
        ))),
        Ok(v) => Err(fail(format!("{what}: expected an error, got Ok({v:?})"))),
    }
}

/// The binary encoding of `block` with `edit` applied where `needle` first
/// occurs in it.
fn tampered_binary(
    block: &Block,
    needle: &[u8],
    edit: impl FnOnce(&mut [u8]),
) -> Result<Vec<u8>, CaseError> {
    let mut bytes = WireFormat::BINARY.encode(block)?;
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .ok_or_else(|| fail("the bytes to tamper with are not in the binary encoding"))?;
    edit(&mut bytes[at..at + needle.len()]);
    Ok(bytes)
}

/// Blocks with a forged or mismatched signature cannot be built or decoded, and
/// the store stays unchanged.
pub async fn forged_blocks_are_refused(env: &Env) -> CaseResult {
    let s = env.open().await?;
    let chain = data::chain(4);
    s.store_blocks(&chain[..2]).await?;
    let before = snapshot(&*s).await?;
    let genuine = &chain[2];

    let mut forged = genuine.to_parts();
    forged.signature.0[7] ^= 0x10;
    expect_kind(
        Block::from_parts(forged),
        ErrorKind::Verification,
        "a flipped signature bit",
    )?;
    let mut altered = genuine.to_parts();
    altered.payload.push(b' ');
    expect_kind(
        Block::from_parts(altered),
        ErrorKind::Verification,
        "a payload changed after signing",
    )?;
    let mut other_key = genuine.to_parts();
    other_key.public_key = PublicKey::from(&data::signer(3).verifying_key());
    expect_kind(
        Block::from_parts(other_key),
        ErrorKind::Verification,
        "a signature under another key",
    )?;
    // The same forgery on the wire: the binary encoding carries the signature
    // verbatim.
    let bytes = tampered_binary(genuine, genuine.signature().as_bytes(), |sig| {
        sig[7] ^= 0x10;
    })?;
    expect_kind(
        WireFormat::BINARY.decode(&bytes),
        ErrorKind::Verification,
        "decoding a forged signature",
    )?;
    ensure_eq!(snapshot(&*s).await?, before, "store after the refusals");
    // The genuine block still goes in.
    s.store_block(genuine).await?;
    let got = s.retrieve_block(&genuine.hash()).await?;
    same_block(
        &got.ok_or_else(|| fail("genuine block missing"))?,
        genuine,
        "genuine block",
    )?;
    Ok(())
}

/// A block whose previous hash contradicts a stored neighbour, or that a stored
/// successor does not name, is refused with `Verification`, alone or in a batch,
/// and nothing is written; the right blocks then fill the gap.
pub async fn wrong_previous_hash_rejected(env: &Env) -> CaseResult {
    let s = env.open().await?;
    let chain = data::chain(6);
    s.store_blocks(&chain[..3]).await?;
    s.store_block(&chain[5]).await?;
    s.set_chain_head(&chain[2].hash()).await?;
    let before = snapshot(&*s).await?;

    // Index 3, validly signed, but naming block 1 as its predecessor.
    let stray = Block::sign_raw(
        3,
        chain[3].timestamp(),
        Some(chain[1].hash()),
        EVENT,
        b"{\"seq\":3,\"text\":\"stray\"}".to_vec(),
        &data::signer(3),
    )?;
    let e = expect_kind(
        s.store_block(&stray).await,
        ErrorKind::Verification,
        "a block not linked to the stored block before it",
    )?;
    // Enough to act on: the error names the hash the block claims.
    ensure!(
        e.to_string().contains(&chain[1].hash().to_string()),
        "the error does not name the previous hash the block claims: {e}"
    );
    // Index 4, linked to block 3, but block 5 (stored) names another block 4.
    let rival4 = data::rival(&chain[4]);
    let e = expect_kind(
        s.store_block(&rival4).await,
        ErrorKind::Verification,
        "a block the stored block after it does not name",
    )?;
    ensure!(
        e.to_string().contains(&chain[4].hash().to_string()),
        "the error does not name the block the stored neighbour links to: {e}"
    );
    // In a batch, with a good block before it.
    let err = s.store_blocks(&[chain[3].clone(), rival4.clone()]).await;
    expect_kind(err, ErrorKind::Verification, "a batch with a broken link")?;
    // The batch's own blocks disagree: a rival 3 followed by the real 4.
    let rival3 = data::rival(&chain[3]);
    expect_kind(
        s.store_blocks(&[rival3, chain[4].clone()]).await,
        ErrorKind::Verification,
        "a batch whose blocks do not link to each other",
    )?;
    if env.capabilities().await?.atomic_batches {
        ensure_eq!(snapshot(&*s).await?, before, "store after the refusals");
    } else {
        ensure!(
            !s.block_exists(&rival4.hash()).await? && !s.block_exists(&stray.hash()).await?,
            "a refused block was stored"
        );
    }
    // The genuine blocks fill the gap, and the chain verifies.
    s.store_blocks(&chain[3..5]).await?;
    let all = s.get_blocks_by_range(0, 5).await?;
    storage_core::verify_chain(&all).map_err(|e| fail(format!("stored chain: {e}")))?;
    ensure_eq!(all.len(), 6, "blocks after filling the gap");
    Ok(())
}

/// A payload over the store's configured limit is refused with `InvalidInput`,
/// alone or in a batch; one exactly at the limit is stored.
pub async fn oversized_payload_rejected(env: &Env) -> CaseResult {
    let Some(limit) = env.fixture().max_payload_bytes() else {
        return Err(CaseError::Skipped(
            "the fixture configures no payload limit (Fixture::max_payload_bytes)".into(),
        ));
    };
    let s = env.open().await?;
    let chain = data::chain(3);
    s.store_blocks(&chain[1..]).await?;
    let before = snapshot(&*s).await?;
    let over = data::big_block(limit + 1);
    expect_kind(
        s.store_block(&over).await,
        ErrorKind::InvalidInput,
        format!("a payload of {} bytes (limit {limit})", limit + 1),
    )?;
    expect_kind(
        s.store_blocks(std::slice::from_ref(&over)).await,
        ErrorKind::InvalidInput,
        "the same in a batch",
    )?;
    ensure_eq!(snapshot(&*s).await?, before, "store after the refusals");
    // At the limit exactly: stored (index 0 is free; its successor is not linked
    // to this genesis, so store it into a store of its own).
    drop(s);
    let fresh = env.fresh();
    let s = fresh.open().await?;
    let at = data::big_block(limit);
    s.store_block(&at).await?;
    let got = s
        .retrieve_block(&at.hash())
        .await?
        .ok_or_else(|| fail("the block at the limit is missing"))?;
    same_block(&got, &at, "the block at the limit")?;
    Ok(())
}

/// Payload types that are not UTF-8 (or not valid identifiers) cannot be decoded
/// or built, and the store stays unchanged.
pub async fn non_utf8_payload_type_refused(env: &Env) -> CaseResult {
    let s = env.open().await?;
    let chain = data::chain(3);
    s.store_blocks(&chain[..1]).await?;
    let before = snapshot(&*s).await?;
    let genuine = &chain[1];
    let bytes = tampered_binary(genuine, genuine.payload_type().as_bytes(), |ty| {
        ty[0] = 0xff;
    })?;
    expect_one_of(
        WireFormat::BINARY.decode(&bytes),
        &[
            ErrorKind::Encoding,
            ErrorKind::InvalidInput,
            ErrorKind::Corrupted,
        ],
        "decoding a payload type that is not UTF-8",
    )?;
    for bad in ["", "has space", "ctrl\u{7}", "é-accent"] {
        let mut parts = genuine.to_parts();
        parts.payload_type = bad.to_string();
        expect_kind(
            Block::from_parts(parts),
            ErrorKind::InvalidInput,
            format!("payload type {bad:?}"),
        )?;
    }
    ensure_eq!(snapshot(&*s).await?, before, "store after the refusals");
    Ok(())
}
