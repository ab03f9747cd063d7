//! The wire format: how a block travels as bytes (files, network, export).
//!
//! A [`WireFormat`] is an [`Encoding`] (bincode binary or JSON) plus a
//! [`CompressionType`]. Its content type is `application/x-olocus-block` (binary) or
//! `application/json`, with a `+gzip`, `+zstd` or `+lz4` suffix when compressed.
//!
//! Both encodings carry the block's signed fields verbatim, so decoding reproduces
//! the same hash and signature. Decoding is bounded by [`MAX_ENCODED_BLOCK_BYTES`]
//! before anything is allocated, and returns [`StorageError::Corrupted`] for any
//! malformed input.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::{
    Block, BlockHash, BlockParts, CompressionType, MAX_PAYLOAD_BYTES, PublicKey, Result, Signature,
    StorageError,
};

/// Largest encoded (decompressed) block accepted by a decoder: room for a
/// [`MAX_PAYLOAD_BYTES`] payload in base64 JSON.
pub const MAX_ENCODED_BLOCK_BYTES: usize = MAX_PAYLOAD_BYTES / 3 * 4 + (1 << 20);

/// Binary content type.
pub const CONTENT_TYPE_BINARY: &str = "application/x-olocus-block";
/// JSON content type.
pub const CONTENT_TYPE_JSON: &str = "application/json";

/// Version tag written at the start of every encoding.
const FORMAT_VERSION: u8 = 1;

/// How block fields are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// bincode 2 (varint integers), the compact default.
    #[default]
    Binary,
    /// JSON with hex keys/hashes and a base64 payload, for people and other tools.
    Json,
}

/// An encoding plus a compression codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct WireFormat {
    /// Field layout.
    pub encoding: Encoding,
    /// Compression applied to the encoded bytes.
    pub compression: CompressionType,
}

#[derive(bincode::Encode)]
struct BinRef<'a> {
    version: u8,
    index: u64,
    timestamp_nanos: u64,
    public_key: &'a [u8; 32],
    previous_hash: Option<&'a [u8; 32]>,
    payload_type: &'a str,
    payload: &'a [u8],
    signature: &'a [u8; 64],
}

#[derive(bincode::Decode)]
struct BinOwned {
    version: u8,
    index: u64,
    timestamp_nanos: u64,
    public_key: [u8; 32],
    previous_hash: Option<[u8; 32]>,
    payload_type: String,
    payload: Vec<u8>,
    signature: [u8; 64],
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonBlock {
    version: u8,
    /// Redundant with the fields; checked on decode so a hand-edited file is caught.
    hash: BlockHash,
    index: u64,
    timestamp_nanos: u64,
    public_key: PublicKey,
    previous_hash: Option<BlockHash>,
    payload_type: String,
    /// Standard base64 of the signed payload bytes.
    payload: String,
    signature: Signature,
}

fn bincode_config() -> impl bincode::config::Config {
    // The limit makes bincode refuse a hostile length prefix before allocating it.
    bincode::config::standard().with_limit::<MAX_ENCODED_BLOCK_BYTES>()
}

impl WireFormat {
    /// Uncompressed bincode: the default.
    pub const BINARY: Self = Self {
        encoding: Encoding::Binary,
        compression: CompressionType::None,
    };
    /// Uncompressed JSON.
    pub const JSON: Self = Self {
        encoding: Encoding::Json,
        compression: CompressionType::None,
    };

    /// Every encoding × compression combination.
    pub fn all() -> impl Iterator<Item = WireFormat> {
        [Encoding::Binary, Encoding::Json]
            .into_iter()
            .flat_map(|encoding| {
                CompressionType::ALL
                    .into_iter()
                    .map(move |compression| WireFormat {
                        encoding,
                        compression,
                    })
            })
    }

    /// Encodes a block.
    pub fn encode(&self, block: &Block) -> Result<Vec<u8>> {
        let raw = match self.encoding {
            Encoding::Binary => bincode::encode_to_vec(
                BinRef {
                    version: FORMAT_VERSION,
                    index: block.index(),
                    timestamp_nanos: block.timestamp_nanos(),
                    public_key: block.public_key().as_bytes(),
                    previous_hash: block.previous_hash().map(|h| h.as_bytes()),
                    payload_type: block.payload_type(),
                    payload: block.payload(),
                    signature: block.signature().as_bytes(),
                },
                bincode_config(),
            )
            .map_err(|e| StorageError::Encoding(format!("bincode: {e}")))?,
            Encoding::Json => serde_json::to_vec(&JsonBlock {
                version: FORMAT_VERSION,
                hash: block.hash(),
                index: block.index(),
                timestamp_nanos: block.timestamp_nanos(),
                public_key: *block.public_key(),
                previous_hash: block.previous_hash().copied(),
                payload_type: block.payload_type().to_owned(),
                payload: base64::engine::general_purpose::STANDARD.encode(block.payload()),
                signature: *block.signature(),
            })
            .map_err(|e| StorageError::Encoding(format!("json: {e}")))?,
        };
        match self.compression {
            CompressionType::None => Ok(raw),
            c => c.compress(&raw),
        }
    }

    /// Decodes untrusted bytes and verifies the block's signature.
    ///
    /// Malformed input gives [`StorageError::Corrupted`]; a bad signature gives
    /// [`StorageError::Verification`].
    pub fn decode(&self, bytes: &[u8]) -> Result<Block> {
        Block::from_parts(self.decode_parts(bytes)?)
    }

    /// Decodes bytes a backend stored under `expected`, without re-verifying the
    /// signature (verified when the block was made); a block with any other hash is
    /// reported as [`StorageError::Corrupted`], never returned.
    pub fn decode_stored(&self, bytes: &[u8], expected: &BlockHash) -> Result<Block> {
        let block = Block::from_trusted_parts(self.decode_parts(bytes)?).map_err(|e| {
            StorageError::corrupted_by(format!("stored block {expected} has invalid fields"), e)
        })?;
        if block.hash() != *expected {
            return Err(StorageError::corrupted(format!(
                "stored bytes for block {expected} decode to a block with hash {}",
                block.hash()
            )));
        }
        Ok(block)
    }

    /// Decodes the fields without building a block.
    pub fn decode_parts(&self, bytes: &[u8]) -> Result<BlockParts> {
        let decompressed;
        let raw = match self.compression {
            CompressionType::None => {
                if bytes.len() > MAX_ENCODED_BLOCK_BYTES {
                    return Err(StorageError::corrupted(format!(
                        "encoded block of {} bytes exceeds the {MAX_ENCODED_BLOCK_BYTES}-byte limit",
                        bytes.len()
                    )));
                }
                bytes
            }
            c => {
                decompressed = c.decompress(bytes, MAX_ENCODED_BLOCK_BYTES)?;
                &decompressed[..]
            }
        };
        match self.encoding {
            Encoding::Binary => decode_binary(raw),
            Encoding::Json => decode_json(raw),
        }
    }

    /// The content type, e.g. `application/x-olocus-block+zstd`.
    pub fn content_type(&self) -> String {
        let base = match self.encoding {
            Encoding::Binary => CONTENT_TYPE_BINARY,
            Encoding::Json => CONTENT_TYPE_JSON,
        };
        match self.compression {
            CompressionType::None => base.to_owned(),
            c => format!("{base}+{}", c.name()),
        }
    }

    /// Parses a content type produced by [`WireFormat::content_type`]
    /// (case-insensitive; parameters after `;` are ignored).
    pub fn from_content_type(s: &str) -> Result<Self> {
        let lower = s
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let (base, compression) = match lower.rsplit_once('+') {
            Some((base, suffix)) => match suffix {
                "gzip" | "zstd" | "lz4" => (base, suffix.parse()?),
                _ => (lower.as_str(), CompressionType::None),
            },
            None => (lower.as_str(), CompressionType::None),
        };
        let encoding = match base {
            CONTENT_TYPE_BINARY => Encoding::Binary,
            CONTENT_TYPE_JSON => Encoding::Json,
            _ => {
                return Err(StorageError::InvalidInput(format!(
                    "unsupported content type {s:?} (expected {CONTENT_TYPE_BINARY} or \
                     {CONTENT_TYPE_JSON}, optionally with +gzip, +zstd or +lz4)"
                )));
            }
        };
        Ok(Self {
            encoding,
            compression,
        })
    }
}

/// bincode's decode error, said in words: its own `Display` is its `Debug`
/// (`UnexpectedEnd { additional: 2 }`).
#[derive(Debug)]
struct BinaryDecode(bincode::error::DecodeError);

impl std::fmt::Display for BinaryDecode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use bincode::error::DecodeError as D;
        match &self.0 {
            D::UnexpectedEnd { additional: 1 } => write!(f, "the record ends 1 byte early"),
            D::UnexpectedEnd { additional } => {
                write!(f, "the record ends {additional} bytes early")
            }
            D::LimitExceeded => write!(
                f,
                "a length inside the record claims more than the \
                 {MAX_ENCODED_BLOCK_BYTES}-byte block limit"
            ),
            D::Utf8 { inner } => write!(f, "a text field is not UTF-8 ({inner})"),
            D::OutsideUsizeRange(n) => write!(f, "a length of {n} is out of range"),
            D::InvalidIntegerType { .. } | D::NonZeroTypeIsZero { .. } => {
                write!(f, "a number field is malformed")
            }
            D::UnexpectedVariant { found, .. } => {
                write!(f, "an option marker is {found}, neither 0 nor 1")
            }
            D::ArrayLengthMismatch { required, found } => {
                write!(f, "a fixed field holds {found} bytes, not {required}")
            }
            other => write!(f, "{other:?}"),
        }
    }
}

// No source: bincode's error says nothing the words above do not (it stays in
// `Debug`).
impl std::error::Error for BinaryDecode {}

fn decode_binary(raw: &[u8]) -> Result<BlockParts> {
    let (b, used): (BinOwned, usize) = bincode::decode_from_slice(raw, bincode_config())
        .map_err(|e| StorageError::corrupted_by("binary block does not decode", BinaryDecode(e)))?;
    if used != raw.len() {
        return Err(StorageError::corrupted(format!(
            "binary block has {} trailing bytes",
            raw.len() - used
        )));
    }
    if b.version != FORMAT_VERSION {
        return Err(StorageError::corrupted(format!(
            "unknown binary block version {}",
            b.version
        )));
    }
    Ok(BlockParts {
        index: b.index,
        timestamp_nanos: b.timestamp_nanos,
        public_key: PublicKey(b.public_key),
        previous_hash: b.previous_hash.map(BlockHash),
        payload_type: b.payload_type,
        payload: b.payload,
        signature: Signature(b.signature),
    })
}

fn decode_json(raw: &[u8]) -> Result<BlockParts> {
    let j: JsonBlock = serde_json::from_slice(raw)
        .map_err(|e| StorageError::corrupted_by("JSON block does not decode", e))?;
    if j.version != FORMAT_VERSION {
        return Err(StorageError::corrupted(format!(
            "unknown JSON block version {}",
            j.version
        )));
    }
    let payload = base64::engine::general_purpose::STANDARD
        .decode(j.payload.as_bytes())
        .map_err(|e| StorageError::corrupted_by("JSON block payload is not base64", e))?;
    let parts = BlockParts {
        index: j.index,
        timestamp_nanos: j.timestamp_nanos,
        public_key: j.public_key,
        previous_hash: j.previous_hash,
        payload_type: j.payload_type,
        payload,
        signature: j.signature,
    };
    let computed = Block::from_trusted_parts(parts.clone())
        .map_err(|e| StorageError::corrupted_by("JSON block has invalid fields", e))?
        .hash();
    if computed != j.hash {
        return Err(StorageError::corrupted(format!(
            "JSON block claims hash {} but its fields hash to {computed}",
            j.hash
        )));
    }
    Ok(parts)
}

impl fmt::Display for WireFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.content_type())
    }
}

impl FromStr for WireFormat {
    type Err = StorageError;

    fn from_str(s: &str) -> Result<Self> {
        Self::from_content_type(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use ed25519_dalek::SigningKey;

    fn sample(payload_len: usize) -> Block {
        let key = SigningKey::from_bytes(&[9; 32]);
        let g = Block::sign_raw(
            0,
            crate::system_time_from_unix_nanos(1_700_000_000_123_456_789),
            None,
            "test.raw/v1",
            vec![1],
            &key,
        )
        .unwrap();
        let payload = (0..payload_len).map(|i| (i * 7 % 256) as u8).collect();
        Block::sign_raw(
            1,
            g.timestamp(),
            Some(g.hash()),
            "test.raw/v1",
            payload,
            &key,
        )
        .unwrap()
    }

    #[test]
    fn all_eight_formats_round_trip_exactly() {
        let block = sample(650);
        let formats: Vec<_> = WireFormat::all().collect();
        assert_eq!(formats.len(), 8);
        for f in formats {
            let bytes = f.encode(&block).unwrap();
            let back = f.decode(&bytes).unwrap();
            assert_eq!(back, block, "{f}");
            assert_eq!(back.hash(), block.hash());
            assert_eq!(f.decode_stored(&bytes, &block.hash()).unwrap(), block);
            let other = BlockHash([0; 32]);
            assert_eq!(
                f.decode_stored(&bytes, &other).unwrap_err().kind(),
                ErrorKind::Corrupted
            );
            assert_eq!(f.content_type().parse::<WireFormat>().unwrap(), f);
        }
    }

    #[test]
    fn content_types() {
        assert_eq!(
            WireFormat::BINARY.content_type(),
            "application/x-olocus-block"
        );
        let f: WireFormat = "Application/JSON+zstd; charset=utf-8".parse().unwrap();
        assert_eq!(
            f,
            WireFormat {
                encoding: Encoding::Json,
                compression: CompressionType::Zstd
            }
        );
        assert!("text/plain".parse::<WireFormat>().is_err());
        assert!("application/json+brotli".parse::<WireFormat>().is_err());
    }

    #[test]
    fn hostile_length_prefix_fails_fast() {
        // version 1, index 0, ts 0, key, no prev, then a payload_type length claiming
        // u64::MAX bytes (varint 0xFD + 8 bytes).
        let mut bytes = vec![1u8, 0, 0];
        bytes.extend_from_slice(&[0u8; 32]);
        bytes.push(0);
        bytes.push(0xfd);
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        let err = WireFormat::BINARY.decode(&bytes).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupted);
        let said = crate::error_report(&err);
        assert!(said.contains("more than the"), "{said}");
        // A record cut short says by how much, in words, not bincode's Debug.
        let whole = WireFormat::BINARY.encode(&sample(10)).unwrap();
        let err = WireFormat::BINARY
            .decode(&whole[..whole.len() - 2])
            .unwrap_err();
        let said = crate::error_report(&err);
        assert!(said.contains("ends 2 bytes early"), "{said}");
        assert!(!said.contains("UnexpectedEnd"), "{said}");
        // An lz4 prefix claiming 4 GiB.
        let err = WireFormat {
            encoding: Encoding::Binary,
            compression: CompressionType::Lz4,
        }
        .decode(&[0xff, 0xff, 0xff, 0xff, 0])
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupted);
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let block = sample(64);
        for f in WireFormat::all() {
            let bytes = f.encode(&block).unwrap();
            for i in 0..bytes.len() {
                let mut bad = bytes.clone();
                bad[i] ^= 0x41;
                // Either an error, or (e.g. hex case change in JSON) the very same block.
                if let Ok(b) = f.decode_stored(&bad, &block.hash()) {
                    assert_eq!(b, block, "{f} byte {i}");
                }
                for n in [0, i] {
                    if let Ok(b) = f.decode_stored(&bytes[..n], &block.hash()) {
                        assert_eq!(b, block, "{f} truncated to {n}");
                    }
                }
            }
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x9e3779b97f4a7c15u64;
        for len in 0..300 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            for f in WireFormat::all() {
                assert!(f.decode(&bytes).is_err());
            }
        }
    }
}
