//! Deterministic test data: signing keys, payloads, chains and conflicting blocks.
//!
//! Everything is derived from fixed seeds, so a failure reproduces exactly. Chains
//! are cached per process: signing is the expensive part and blocks are immutable.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use storage_core::{Block, BlockHash, BlockPayload, SigningKey, system_time_from_unix_nanos};

/// Payload type of [`Reading`].
pub const READING: &str = "conformance.reading/v1";
/// Payload type of [`Event`].
pub const EVENT: &str = "conformance.event/v1";

/// [`READING`] in capitals: a type filter must not match it for [`READING`] (nor
/// the other way round).
pub const READING_UPPER: &str = "CONFORMANCE.READING/V1";

/// [`READING`] with a suffix: a type filter must not match it for [`READING`]
/// (nor the other way round).
pub const READING_EXTENDED: &str = "conformance.reading/v1+x";

/// Timestamp of the first test block, in Unix nanoseconds (sub-second digits on
/// purpose: backends must keep them).
pub const BASE_NANOS: u64 = 1_700_000_000_123_456_789;

/// Gap between timestamp steps in [`chain`], in nanoseconds (not a round number).
pub const STEP_NANOS: u64 = 1_000_003;

/// A sensor reading payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// Sequence number (the block index).
    pub seq: u64,
    /// A measured value.
    pub value: f64,
    /// Free text; its length sets the payload size.
    pub note: String,
}

impl BlockPayload for Reading {
    const PAYLOAD_TYPE: &'static str = READING;
}

/// An event payload (a second payload type to filter on).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Sequence number (the block index).
    pub seq: u64,
    /// What happened.
    pub text: String,
}

impl BlockPayload for Event {
    const PAYLOAD_TYPE: &'static str = EVENT;
}

/// Deterministic signing key number `n`.
pub fn signer(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

/// `BASE_NANOS + offset` as a `SystemTime`.
pub fn at(offset_nanos: u64) -> SystemTime {
    system_time_from_unix_nanos(BASE_NANOS + offset_nanos)
}

/// Timestamp offset of block `i` in [`chain`]: pairs share a timestamp (ties).
pub fn chain_offset(i: u64) -> u64 {
    (i / 2) * STEP_NANOS
}

/// Signer number of block `i` in [`chain`] and [`scrambled`]: 2 when `i % 3 == 2`,
/// else 1.
pub fn signer_of(i: u64) -> u8 {
    if i % 3 == 2 { 2 } else { 1 }
}

/// Whether block `i` in [`chain`] and [`scrambled`] carries an [`Event`] (`i % 4 ==
/// 3`); the others carry a [`Reading`].
pub fn is_event(i: u64) -> bool {
    i % 4 == 3
}

/// Payload bytes of [`Reading`]s in [`chain_with_note`] are about `note_len + 40`.
fn payload_for(i: u64, note_len: usize) -> (String, Vec<u8>) {
    if is_event(i) {
        let p = Event {
            seq: i,
            text: format!("event {i}"),
        };
        (EVENT.into(), p.to_payload_bytes().expect("json"))
    } else {
        let p = Reading {
            seq: i,
            value: i as f64 * 0.5,
            note: "n".repeat(note_len),
        };
        (READING.into(), p.to_payload_bytes().expect("json"))
    }
}

type Cache = Mutex<HashMap<(&'static str, usize, usize), Arc<Vec<Block>>>>;

fn cached(
    kind: &'static str,
    len: usize,
    extra: usize,
    make: impl FnOnce() -> Vec<Block>,
) -> Arc<Vec<Block>> {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut map = cache.lock().unwrap_or_else(PoisonError::into_inner);
    map.entry((kind, len, extra))
        .or_insert_with(|| Arc::new(make()))
        .clone()
}

/// A valid chain of `len` blocks (indices `0..len`): signers per [`signer_of`],
/// payloads per [`is_event`], timestamps `BASE + chain_offset(i)`.
pub fn chain(len: usize) -> Arc<Vec<Block>> {
    chain_with_note(len, 8)
}

/// Like [`chain`] with [`Reading`] notes of `note_len` bytes (650-byte payloads:
/// `note_len = 610`).
pub fn chain_with_note(len: usize, note_len: usize) -> Arc<Vec<Block>> {
    cached("chain", len, note_len, || {
        let keys = [signer(1), signer(2)];
        let mut out: Vec<Block> = Vec::with_capacity(len);
        for i in 0..len as u64 {
            let (ty, payload) = payload_for(i, note_len);
            let key = &keys[usize::from(signer_of(i) - 1)];
            let prev = out.last().map(Block::hash);
            let block = Block::sign_raw(i, at(chain_offset(i)), prev, ty, payload, key)
                .expect("valid test block");
            out.push(block);
        }
        out
    })
}

/// Blocks at indices `0..len` whose timestamps are *not* in index order (as in a
/// store filled from several sources), with ties: block `i` has timestamp
/// `BASE + scrambled_offset(i, len)`. Each block is validly signed and names the
/// one before it as its previous block.
pub fn scrambled(len: usize) -> Arc<Vec<Block>> {
    cached("scrambled", len, 0, || {
        let keys = [signer(1), signer(2)];
        let mut out: Vec<Block> = Vec::with_capacity(len);
        for i in 0..len as u64 {
            let (ty, payload) = payload_for(i, 8);
            let key = &keys[usize::from(signer_of(i) - 1)];
            let prev = out.last().map(Block::hash);
            let block = Block::sign_raw(
                i,
                at(scrambled_offset(i, len as u64)),
                prev,
                ty,
                payload,
                key,
            )
            .expect("valid test block");
            out.push(block);
        }
        out
    })
}

/// Timestamp offset of block `i` of [`scrambled`]`(len)`.
pub fn scrambled_offset(i: u64, len: u64) -> u64 {
    ((i * 7) % len.max(1)) / 2 * 1_000
}

/// A different, validly signed block at `block`'s index: same previous hash, other
/// payload, signer 3, timestamp 500 ns later.
pub fn rival(block: &Block) -> Block {
    let p = Event {
        seq: block.index(),
        text: format!("rival of {}", block.hash()),
    };
    Block::sign_raw(
        block.index(),
        system_time_from_unix_nanos(block.timestamp_nanos() + 500),
        block.previous_hash().copied(),
        EVENT,
        p.to_payload_bytes().expect("json"),
        &signer(3),
    )
    .expect("valid rival block")
}

/// A genesis block with a payload of exactly `bytes` bytes.
pub fn big_block(bytes: usize) -> Block {
    let payload: Vec<u8> = (0..bytes)
        .map(|i| (i.wrapping_mul(31) >> 3) as u8)
        .collect();
    Block::sign_raw(0, at(0), None, "conformance.blob/v1", payload, &signer(4))
        .expect("valid big block")
}

/// Blocks at `block`'s index that differ from it in exactly one signed field,
/// each named by that field: `timestamp` (1 ns later), `payload` (one more byte),
/// `signer` (key 4, same content), `payload_type` ([`READING_UPPER`] or
/// [`READING_EXTENDED`] instead of a reading type, capitals of any other type),
/// `previous_hash` (a hash no block has; not for index 0). All are validly signed; each is a
/// different block at an occupied index wherever `block` is stored.
pub fn one_field_variants(block: &Block) -> Vec<(&'static str, Block)> {
    let parts = block.to_parts();
    let key = if parts.public_key == storage_core::PublicKey::from(&signer(1).verifying_key()) {
        signer(1)
    } else if parts.public_key == storage_core::PublicKey::from(&signer(2).verifying_key()) {
        signer(2)
    } else {
        signer(3)
    };
    let sign = |ts: u64, prev: Option<BlockHash>, ty: &str, payload: Vec<u8>, key: &SigningKey| {
        Block::sign_raw(
            block.index(),
            system_time_from_unix_nanos(ts),
            prev,
            ty,
            payload,
            key,
        )
        .expect("valid variant block")
    };
    let ts = block.timestamp_nanos();
    let prev = block.previous_hash().copied();
    let ty = block.payload_type();
    let payload = block.payload().to_vec();
    let mut longer = payload.clone();
    longer.push(b' ');
    let other_type = if ty == READING {
        if block.index().is_multiple_of(2) {
            READING_UPPER.to_string()
        } else {
            READING_EXTENDED.to_string()
        }
    } else {
        ty.to_uppercase()
    };
    let mut out = vec![
        ("timestamp", sign(ts + 1, prev, ty, payload.clone(), &key)),
        ("payload", sign(ts, prev, ty, longer, &key)),
        ("signer", sign(ts, prev, ty, payload.clone(), &signer(4))),
        (
            "payload_type",
            sign(ts, prev, &other_type, payload.clone(), &key),
        ),
    ];
    // A genesis block has no previous hash to vary.
    if block.index() > 0 {
        out.push((
            "previous_hash",
            sign(ts, Some(BlockHash([0xAB; 32])), ty, payload, &key),
        ));
    }
    out
}
