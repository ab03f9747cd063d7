//! The signed block: canonical byte layout, signing, hashing and verification.
//!
//! # Canonical layout (version 1)
//!
//! The *signed message* of a block is, in order (integers big-endian):
//!
//! | field | bytes |
//! |---|---|
//! | domain tag `"olocus-block-v1\0"` | 16 |
//! | `index` | 8 (u64) |
//! | `timestamp`, nanoseconds since the Unix epoch | 8 (u64, < 2^63) |
//! | `public_key` (Ed25519, compressed) | 32 |
//! | previous-hash flag: 0 = none, 1 = present | 1 |
//! | `previous_hash` (only when the flag is 1) | 32 |
//! | `payload_type` length | 2 (u16) |
//! | `payload_type`, UTF-8 | n |
//! | `payload` length | 4 (u32) |
//! | `payload` bytes | m |
//!
//! The **signature** is Ed25519 over that message; the **block hash** is
//! `SHA-256(message ‖ signature)`, so the hash names exactly one signed record.
//! `size_bytes` (as reported in [`crate::BlockMetadata`]) is the length of
//! `message ‖ signature`, the same on every backend and wire format.
//!
//! # Valid by construction
//!
//! A [`Block`] can only be made by signing ([`Block::genesis`], [`Block::next`],
//! [`Block::sign_raw`]), by decoding untrusted bytes (which verifies the signature), or
//! by a backend decoding its own stored bytes against the hash it was stored under
//! ([`crate::WireFormat::decode_stored`]). Every `Block` value therefore carries a valid
//! signature, and backends need not re-verify on store.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::{BlockHash, PublicKey, Result, Signature, StorageError};

/// Domain separation tag that starts every signed message.
pub const DOMAIN_TAG: &[u8; 16] = b"olocus-block-v1\0";
/// Largest payload a block may carry (16 MiB).
pub const MAX_PAYLOAD_BYTES: usize = 16 << 20;
/// Longest payload-type identifier, in bytes.
pub const MAX_PAYLOAD_TYPE_LEN: usize = 128;
/// Highest chain index: below 2^63 so every engine can store it as a signed 64-bit
/// integer (SQLite uses it as the rowid).
pub const MAX_INDEX: u64 = i64::MAX as u64;
/// Latest representable timestamp, in nanoseconds since the Unix epoch (year 2262):
/// kept below 2^63 so every engine can store it as a signed 64-bit integer.
pub const MAX_TIMESTAMP_NANOS: u64 = i64::MAX as u64;

/// A payload type that can be carried by a block.
///
/// `PAYLOAD_TYPE` is the stable identifier stored with every block and used by
/// [`crate::BlockFilter::payload_type`]. Unlike `std::any::type_name` it does not change across compiler versions or crate renames. Use a
/// namespaced, versioned name such as `"olocus.sensor.reading/v1"`: 1 to
/// [`MAX_PAYLOAD_TYPE_LEN`] bytes of `A-Z a-z 0-9 . _ - / : +`.
///
/// The default encoding is compact JSON, which keeps [`Block::payload_json`] useful;
/// override both methods for another encoding.
pub trait BlockPayload: Serialize + DeserializeOwned {
    /// Stable payload-type identifier.
    const PAYLOAD_TYPE: &'static str;

    /// Encodes the payload into the bytes that are signed and stored.
    fn to_payload_bytes(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self)
            .map_err(|e| StorageError::Encoding(format!("payload {}: {e}", Self::PAYLOAD_TYPE)))
    }

    /// Decodes payload bytes produced by [`BlockPayload::to_payload_bytes`].
    fn from_payload_bytes(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|e| {
            StorageError::InvalidInput(format!(
                "payload does not decode as {}: {e}",
                Self::PAYLOAD_TYPE
            ))
        })
    }
}

/// A signed block of an Olocus chain. Immutable; see the module docs for its layout.
///
/// Cloning is one reference-count increment: the fields are shared, so a backend
/// can hand out copies of a block without copying its payload.
#[derive(Clone, PartialEq, Eq)]
pub struct Block(Arc<BlockInner>);

#[derive(PartialEq, Eq)]
struct BlockInner {
    index: u64,
    timestamp_nanos: u64,
    public_key: PublicKey,
    previous_hash: Option<BlockHash>,
    payload_type: String,
    payload: Vec<u8>,
    signature: Signature,
    /// Derived from all of the above; computed once when the block is made.
    hash: BlockHash,
}

/// The fields of a block as they travel: what a decoder produces before the block is
/// checked. Public so that wire formats outside this crate can be built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockParts {
    /// Chain index (0 for genesis).
    pub index: u64,
    /// Nanoseconds since the Unix epoch.
    pub timestamp_nanos: u64,
    /// Signer.
    pub public_key: PublicKey,
    /// Hash of the block at `index - 1`; `None` exactly for genesis.
    pub previous_hash: Option<BlockHash>,
    /// Stable payload-type identifier.
    pub payload_type: String,
    /// Signed payload bytes.
    pub payload: Vec<u8>,
    /// Ed25519 signature over the canonical message.
    pub signature: Signature,
}

impl Block {
    /// Signs a genesis block (index 0, no previous hash).
    pub fn genesis<P: BlockPayload>(
        payload: &P,
        key: &SigningKey,
        timestamp: SystemTime,
    ) -> Result<Self> {
        Self::sign_raw(
            0,
            timestamp,
            None,
            P::PAYLOAD_TYPE,
            payload.to_payload_bytes()?,
            key,
        )
    }

    /// Signs the block that follows `prev`: index + 1, linked by hash.
    ///
    /// The timestamp may equal `prev`'s but not precede it.
    pub fn next<P: BlockPayload>(
        prev: &Block,
        payload: &P,
        key: &SigningKey,
        timestamp: SystemTime,
    ) -> Result<Self> {
        let index =
            prev.0.index.checked_add(1).ok_or_else(|| {
                StorageError::InvalidInput("chain index would overflow u64".into())
            })?;
        let nanos = unix_nanos(timestamp)?;
        if nanos < prev.0.timestamp_nanos {
            return Err(StorageError::InvalidInput(format!(
                "timestamp of block {index} precedes that of block {}",
                prev.0.index
            )));
        }
        Self::sign_raw(
            index,
            timestamp,
            Some(prev.0.hash),
            P::PAYLOAD_TYPE,
            payload.to_payload_bytes()?,
            key,
        )
    }

    /// Signs a block from raw parts. `previous_hash` must be `None` exactly when
    /// `index` is 0. Use this for payloads encoded outside [`BlockPayload`].
    pub fn sign_raw(
        index: u64,
        timestamp: SystemTime,
        previous_hash: Option<BlockHash>,
        payload_type: impl Into<String>,
        payload: Vec<u8>,
        key: &SigningKey,
    ) -> Result<Self> {
        let mut parts = BlockParts {
            index,
            timestamp_nanos: unix_nanos(timestamp)?,
            public_key: PublicKey::from(&key.verifying_key()),
            previous_hash,
            payload_type: payload_type.into(),
            payload,
            signature: Signature([0; 64]),
        };
        check_parts(&parts)?;
        let message = signed_message(&parts);
        parts.signature = Signature(key.sign(&message).to_bytes());
        Ok(Self::assemble(parts))
    }

    /// Builds a block from untrusted parts, verifying structure and signature.
    pub fn from_parts(parts: BlockParts) -> Result<Self> {
        let block = Self::from_parts_unverified(parts)?;
        block.verify_signature()?;
        Ok(block)
    }

    /// Builds a block from parts whose signature was verified before they were
    /// stored; checks structure only. The caller must compare [`Block::hash`] with
    /// the hash the bytes were stored under (as [`crate::WireFormat::decode_stored`]
    /// does), which proves the bytes are the ones that were verified.
    pub fn from_trusted_parts(parts: BlockParts) -> Result<Self> {
        Self::from_parts_unverified(parts)
    }

    fn from_parts_unverified(parts: BlockParts) -> Result<Self> {
        check_parts(&parts)?;
        Ok(Self::assemble(parts))
    }

    fn assemble(parts: BlockParts) -> Self {
        let hash = compute_hash(&parts);
        let BlockParts {
            index,
            timestamp_nanos,
            public_key,
            previous_hash,
            payload_type,
            payload,
            signature,
        } = parts;
        Self(Arc::new(BlockInner {
            index,
            timestamp_nanos,
            public_key,
            previous_hash,
            payload_type,
            payload,
            signature,
            hash,
        }))
    }

    /// The block's hash: `SHA-256(signed message ‖ signature)`.
    pub fn hash(&self) -> BlockHash {
        self.0.hash
    }

    /// Chain index (0 for genesis).
    pub fn index(&self) -> u64 {
        self.0.index
    }

    /// Creation time, to the nanosecond.
    pub fn timestamp(&self) -> SystemTime {
        system_time_from_unix_nanos(self.0.timestamp_nanos)
    }

    /// Creation time in nanoseconds since the Unix epoch.
    pub fn timestamp_nanos(&self) -> u64 {
        self.0.timestamp_nanos
    }

    /// The signer's public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.0.public_key
    }

    /// Hash of the previous block; `None` for genesis.
    pub fn previous_hash(&self) -> Option<&BlockHash> {
        self.0.previous_hash.as_ref()
    }

    /// Stable payload-type identifier.
    pub fn payload_type(&self) -> &str {
        &self.0.payload_type
    }

    /// The signed payload bytes, exactly as signed.
    pub fn payload(&self) -> &[u8] {
        &self.0.payload
    }

    /// The Ed25519 signature.
    pub fn signature(&self) -> &Signature {
        &self.0.signature
    }

    /// Length of `message ‖ signature`: the block's size on every backend's books.
    pub fn size_bytes(&self) -> u64 {
        (message_len(
            self.0.payload_type.len(),
            self.0.payload.len(),
            self.0.previous_hash.is_some(),
        ) + Signature::LEN) as u64
    }

    /// The canonical signed message (see the module docs).
    pub fn signed_message(&self) -> Vec<u8> {
        signed_message(self.parts_ref())
    }

    /// The block's parts, for encoders.
    pub fn to_parts(&self) -> BlockParts {
        BlockParts {
            index: self.0.index,
            timestamp_nanos: self.0.timestamp_nanos,
            public_key: self.0.public_key,
            previous_hash: self.0.previous_hash,
            payload_type: self.0.payload_type.clone(),
            payload: self.0.payload.clone(),
            signature: self.0.signature,
        }
    }

    /// A borrowed view of the parts, for hashing and message building without copies.
    fn parts_ref(&self) -> PartsRef<'_> {
        PartsRef {
            index: self.0.index,
            timestamp_nanos: self.0.timestamp_nanos,
            public_key: &self.0.public_key,
            previous_hash: self.0.previous_hash.as_ref(),
            payload_type: &self.0.payload_type,
            payload: &self.0.payload,
        }
    }

    /// Checks the Ed25519 signature (strict verification: no malleable encodings).
    pub fn verify_signature(&self) -> Result<()> {
        let key = VerifyingKey::from_bytes(self.0.public_key.as_bytes()).map_err(|e| {
            StorageError::Verification {
                index: self.0.index,
                reason: format!(
                    "public key {} is not a valid Ed25519 key: {e}",
                    self.0.public_key
                ),
            }
        })?;
        let sig = ed25519_dalek::Signature::from_bytes(self.0.signature.as_bytes());
        key.verify_strict(&self.signed_message(), &sig)
            .map_err(|_| StorageError::Verification {
                index: self.0.index,
                reason: format!("signature does not verify under key {}", self.0.public_key),
            })
    }

    /// Decodes the payload as `P`, checking that the payload type matches.
    pub fn decode_payload<P: BlockPayload>(&self) -> Result<P> {
        if self.0.payload_type != P::PAYLOAD_TYPE {
            return Err(StorageError::InvalidInput(format!(
                "block {} carries payload type {:?}, not {:?}",
                self.0.index,
                self.0.payload_type,
                P::PAYLOAD_TYPE
            )));
        }
        P::from_payload_bytes(&self.0.payload)
    }

    /// The payload as a JSON value (payloads use JSON unless their type overrides
    /// [`BlockPayload::to_payload_bytes`]). The signed bytes are unaffected.
    pub fn payload_json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.0.payload).map_err(|e| {
            StorageError::InvalidInput(format!(
                "payload of block {} ({}) is not JSON: {e}",
                self.0.index, self.0.payload_type
            ))
        })
    }
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("index", &self.0.index)
            .field("hash", &self.0.hash)
            .field("timestamp_nanos", &self.0.timestamp_nanos)
            .field("public_key", &self.0.public_key)
            .field("previous_hash", &self.0.previous_hash)
            .field("payload_type", &self.0.payload_type)
            .field("payload_len", &self.0.payload.len())
            .finish_non_exhaustive()
    }
}

/// Verifies one block: its signature, that index 0 goes with no previous hash, and,
/// given its predecessor, the index step, the hash link and timestamp order.
pub fn verify_block(block: &Block, prev: Option<&Block>) -> Result<()> {
    block.verify_signature()?;
    let fail = |reason: String| StorageError::Verification {
        index: block.0.index,
        reason,
    };
    if (block.0.index == 0) != block.0.previous_hash.is_none() {
        return Err(fail(if block.0.index == 0 {
            "genesis block has a previous hash".into()
        } else {
            "non-genesis block has no previous hash".into()
        }));
    }
    if let Some(prev) = prev {
        if prev.0.index.checked_add(1) != Some(block.0.index) {
            return Err(fail(format!(
                "index does not follow previous block's index {}",
                prev.0.index
            )));
        }
        if block.0.previous_hash != Some(prev.0.hash) {
            return Err(fail(format!(
                "previous hash does not match block {} ({})",
                prev.0.index, prev.0.hash
            )));
        }
        if block.0.timestamp_nanos < prev.0.timestamp_nanos {
            return Err(fail(format!(
                "timestamp precedes that of block {}",
                prev.0.index
            )));
        }
    }
    Ok(())
}

/// Verifies a contiguous run of blocks in order (it need not start at genesis).
/// The error names the first block that breaks the chain.
pub fn verify_chain(blocks: &[Block]) -> Result<()> {
    let mut prev = None;
    for block in blocks {
        verify_block(block, prev)?;
        prev = Some(block);
    }
    Ok(())
}

/// Nanoseconds since the Unix epoch; errors for times before 1970 or after 2262.
pub fn unix_nanos(t: SystemTime) -> Result<u64> {
    let d = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| StorageError::InvalidInput("timestamp precedes the Unix epoch".into()))?;
    let n = d.as_nanos();
    if n > u128::from(MAX_TIMESTAMP_NANOS) {
        return Err(StorageError::InvalidInput(format!(
            "timestamp {n} ns is beyond the supported range (2^63 ns)"
        )));
    }
    Ok(n as u64)
}

/// The `SystemTime` for a count of nanoseconds since the Unix epoch.
pub fn system_time_from_unix_nanos(nanos: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(nanos)
}

/// Whether `s` is an acceptable payload-type identifier.
pub fn is_valid_payload_type(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_PAYLOAD_TYPE_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/:+".contains(&b))
}

fn check_parts(p: &BlockParts) -> Result<()> {
    if !is_valid_payload_type(&p.payload_type) {
        return Err(StorageError::InvalidInput(format!(
            "payload type {:?} must be 1..={MAX_PAYLOAD_TYPE_LEN} bytes of A-Z a-z 0-9 . _ - / : +",
            p.payload_type
        )));
    }
    if p.payload.len() > MAX_PAYLOAD_BYTES {
        return Err(StorageError::InvalidInput(format!(
            "payload of {} bytes exceeds the limit of {MAX_PAYLOAD_BYTES}",
            p.payload.len()
        )));
    }
    if p.index > MAX_INDEX {
        return Err(StorageError::InvalidInput(format!(
            "index {} is beyond the supported range (2^63 - 1)",
            p.index
        )));
    }
    if p.timestamp_nanos > MAX_TIMESTAMP_NANOS {
        return Err(StorageError::InvalidInput(
            "timestamp is beyond the supported range (2^63 ns)".into(),
        ));
    }
    if (p.index == 0) != p.previous_hash.is_none() {
        return Err(StorageError::InvalidInput(format!(
            "block {}: previous hash must be absent exactly for index 0",
            p.index
        )));
    }
    Ok(())
}

struct PartsRef<'a> {
    index: u64,
    timestamp_nanos: u64,
    public_key: &'a PublicKey,
    previous_hash: Option<&'a BlockHash>,
    payload_type: &'a str,
    payload: &'a [u8],
}

impl<'a> From<&'a BlockParts> for PartsRef<'a> {
    fn from(p: &'a BlockParts) -> Self {
        PartsRef {
            index: p.index,
            timestamp_nanos: p.timestamp_nanos,
            public_key: &p.public_key,
            previous_hash: p.previous_hash.as_ref(),
            payload_type: &p.payload_type,
            payload: &p.payload,
        }
    }
}

fn message_len(type_len: usize, payload_len: usize, has_prev: bool) -> usize {
    DOMAIN_TAG.len()
        + 8
        + 8
        + 32
        + 1
        + if has_prev { 32 } else { 0 }
        + 2
        + type_len
        + 4
        + payload_len
}

/// Feeds the canonical message to `sink` piece by piece (no intermediate buffer).
fn write_message(p: &PartsRef<'_>, sink: &mut impl FnMut(&[u8])) {
    sink(DOMAIN_TAG);
    sink(&p.index.to_be_bytes());
    sink(&p.timestamp_nanos.to_be_bytes());
    sink(p.public_key.as_bytes());
    match p.previous_hash {
        Some(h) => {
            sink(&[1]);
            sink(h.as_bytes());
        }
        None => sink(&[0]),
    }
    // Lengths are bounded by check_parts (128 and 16 MiB), so the casts are exact.
    sink(&(p.payload_type.len() as u16).to_be_bytes());
    sink(p.payload_type.as_bytes());
    sink(&(p.payload.len() as u32).to_be_bytes());
    sink(p.payload);
}

fn signed_message<'a>(p: impl Into<PartsRef<'a>>) -> Vec<u8> {
    let p: PartsRef<'a> = p.into();
    let mut out = Vec::with_capacity(message_len(
        p.payload_type.len(),
        p.payload.len(),
        p.previous_hash.is_some(),
    ));
    write_message(&p, &mut |b| out.extend_from_slice(b));
    out
}

fn compute_hash(p: &BlockParts) -> BlockHash {
    let mut hasher = Sha256::new();
    write_message(&p.into(), &mut |b| hasher.update(b));
    hasher.update(p.signature.as_bytes());
    BlockHash(hasher.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Reading {
        celsius: f64,
    }
    impl BlockPayload for Reading {
        const PAYLOAD_TYPE: &'static str = "test.reading/v1";
    }

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn t(n: u64) -> SystemTime {
        system_time_from_unix_nanos(1_700_000_000_000_000_000 + n)
    }

    #[test]
    fn chain_signs_links_and_verifies() {
        let k = key(1);
        let g = Block::genesis(&Reading { celsius: 1.5 }, &k, t(0)).unwrap();
        let b1 = Block::next(&g, &Reading { celsius: 2.5 }, &k, t(7)).unwrap();
        let b2 = Block::next(&b1, &Reading { celsius: 3.5 }, &key(2), t(7)).unwrap();
        assert_eq!(b1.index(), 1);
        assert_eq!(b1.previous_hash(), Some(&g.hash()));
        assert_eq!(b1.timestamp_nanos() - g.timestamp_nanos(), 7);
        verify_chain(&[g.clone(), b1.clone(), b2.clone()]).unwrap();
        verify_chain(&[b1.clone(), b2.clone()]).unwrap();
        assert_eq!(b2.decode_payload::<Reading>().unwrap().celsius, 3.5);
        assert_eq!(b2.payload_json().unwrap()["celsius"], 3.5);

        // Out of order / gaps are reported at the right index.
        let err = verify_chain(&[g.clone(), b2.clone()]).unwrap_err();
        assert!(
            matches!(err, StorageError::Verification { index: 2, .. }),
            "{err}"
        );
        let err = verify_chain(&[b1, g]).unwrap_err();
        assert!(
            matches!(err, StorageError::Verification { index: 0, .. }),
            "{err}"
        );
    }

    #[test]
    fn hash_covers_every_field_and_signature() {
        let k = key(3);
        let base = Block::genesis(&Reading { celsius: 1.0 }, &k, t(1)).unwrap();
        let mut p = base.to_parts();
        p.payload[0] ^= 1;
        assert!(matches!(
            Block::from_parts(p.clone()),
            Err(StorageError::Verification { .. })
        ));
        // Trusted decoding skips the signature but the hash changes.
        assert_ne!(Block::from_trusted_parts(p).unwrap().hash(), base.hash());
        let mut p = base.to_parts();
        p.timestamp_nanos += 1;
        assert!(Block::from_parts(p).is_err());
        assert_eq!(
            Block::from_parts(base.to_parts()).unwrap().hash(),
            base.hash()
        );
        assert_eq!(base.size_bytes() as usize, base.signed_message().len() + 64);
    }

    #[test]
    fn rejects_bad_parts() {
        let k = key(4);
        assert!(Block::sign_raw(0, t(0), None, "", vec![], &k).is_err());
        assert!(Block::sign_raw(0, t(0), None, "bad type", vec![], &k).is_err());
        assert!(Block::sign_raw(1, t(0), None, "x", vec![], &k).is_err());
        let prev = Some(BlockHash([0; 32]));
        assert!(Block::sign_raw(MAX_INDEX, t(0), prev, "x", vec![], &k).is_ok());
        assert!(Block::sign_raw(MAX_INDEX + 1, t(0), prev, "x", vec![], &k).is_err());
        assert!(Block::sign_raw(0, t(0), Some(BlockHash([0; 32])), "x", vec![], &k).is_err());
        assert!(Block::sign_raw(0, t(0), None, "x", vec![0; MAX_PAYLOAD_BYTES + 1], &k).is_err());
        assert!(
            Block::sign_raw(
                0,
                UNIX_EPOCH - Duration::from_secs(1),
                None,
                "x",
                vec![],
                &k
            )
            .is_err()
        );
        let g = Block::sign_raw(0, t(5), None, "x", vec![], &k).unwrap();
        assert!(Block::next(&g, &Reading { celsius: 0.0 }, &k, t(4)).is_err());
        assert!(g.decode_payload::<Reading>().is_err());
    }

    #[test]
    fn forged_key_is_a_verification_error() {
        let k = key(5);
        let g = Block::genesis(&Reading { celsius: 1.0 }, &k, t(0)).unwrap();
        let mut p = g.to_parts();
        p.public_key = PublicKey::from(&key(6).verifying_key());
        assert!(matches!(
            Block::from_parts(p),
            Err(StorageError::Verification { index: 0, .. })
        ));
    }
}
