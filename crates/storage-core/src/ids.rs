//! Fixed-size identifiers: block hashes, public keys and signatures.
//!
//! Each is a byte-array newtype with lowercase hex `Display`/`FromStr`, and serde as a
//! hex string in human-readable formats (JSON, TOML) and as raw bytes otherwise.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::StorageError;

macro_rules! byte_id {
    ($(#[$doc:meta])* $name:ident, $len:expr, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            /// Length in bytes.
            pub const LEN: usize = $len;

            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            /// Builds one from a slice of exactly [`Self::LEN`] bytes.
            pub fn from_slice(bytes: &[u8]) -> Result<Self, StorageError> {
                let arr: [u8; $len] = bytes.try_into().map_err(|_| {
                    StorageError::InvalidInput(format!(
                        concat!($what, " must be {} bytes, got {}"),
                        $len,
                        bytes.len()
                    ))
                })?;
                Ok(Self(arr))
            }

            /// Lowercase hex.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self)
            }
        }

        impl FromStr for $name {
            type Err = StorageError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let mut arr = [0u8; $len];
                hex::decode_to_slice(s, &mut arr).map_err(|e| {
                    StorageError::InvalidInput(format!(
                        concat!("invalid ", $what, " hex {:?}: {}"),
                        s, e
                    ))
                })?;
                Ok(Self(arr))
            }
        }

        impl AsRef<[u8]> for $name {
            fn as_ref(&self) -> &[u8] {
                &self.0
            }
        }

        impl From<[u8; $len]> for $name {
            fn from(value: [u8; $len]) -> Self {
                Self(value)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                if serializer.is_human_readable() {
                    serializer.serialize_str(&self.to_hex())
                } else {
                    serializer.serialize_bytes(&self.0)
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        write!(f, concat!("a ", $what, " as {} hex-encoded bytes"), $len)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$name, E> {
                        v.parse().map_err(E::custom)
                    }
                    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<$name, E> {
                        $name::from_slice(v).map_err(E::custom)
                    }
                    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<$name, A::Error> {
                        let mut arr = [0u8; $len];
                        for (i, slot) in arr.iter_mut().enumerate() {
                            *slot = seq
                                .next_element()?
                                .ok_or_else(|| de::Error::invalid_length(i, &self))?;
                        }
                        if seq.next_element::<u8>()?.is_some() {
                            return Err(de::Error::invalid_length($len + 1, &self));
                        }
                        Ok($name(arr))
                    }
                }
                if deserializer.is_human_readable() {
                    deserializer.deserialize_str(V)
                } else {
                    deserializer.deserialize_bytes(V)
                }
            }
        }
    };
}

byte_id!(
    /// SHA-256 hash identifying a block (see [`crate::Block`] for what it covers).
    BlockHash,
    32,
    "block hash"
);

byte_id!(
    /// An Ed25519 public key (compressed Edwards point) as raw bytes.
    ///
    /// Kept as bytes so that decoding stored data never depends on point
    /// decompression; [`crate::verify_block`] checks that it is a valid key.
    PublicKey,
    32,
    "public key"
);

byte_id!(
    /// An Ed25519 signature as raw bytes.
    Signature,
    64,
    "signature"
);

impl From<&ed25519_dalek::VerifyingKey> for PublicKey {
    fn from(key: &ed25519_dalek::VerifyingKey) -> Self {
        Self(key.to_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_errors() {
        let h = BlockHash([0xab; 32]);
        let s = h.to_string();
        assert_eq!(s.len(), 64);
        assert_eq!(s.parse::<BlockHash>().unwrap(), h);
        assert!("abc".parse::<BlockHash>().is_err());
        assert!("zz".repeat(32).parse::<BlockHash>().is_err());
        assert!(BlockHash::from_slice(&[0; 31]).is_err());
        let sig = Signature([7; 64]);
        assert_eq!(sig.to_string().parse::<Signature>().unwrap(), sig);
    }

    #[test]
    fn serde_is_hex_in_json() {
        let k = PublicKey([1; 32]);
        let json = serde_json::to_string(&k).unwrap();
        assert_eq!(json, format!("\"{}\"", "01".repeat(32)));
        assert_eq!(serde_json::from_str::<PublicKey>(&json).unwrap(), k);
        assert!(serde_json::from_str::<PublicKey>("\"0101\"").is_err());
    }
}

/// A [`std::hash::BuildHasher`] for maps keyed by [`BlockHash`]: it uses the
/// hash's first eight bytes as they are.
///
/// Block hashes are SHA-256 outputs, already uniform, so hashing them again
/// (SipHash, the std default) only costs time. Flooding a map with colliding keys
/// would mean grinding signed blocks for equal 64-bit prefixes, which is
/// infeasible.
#[derive(Debug, Clone, Copy, Default)]
pub struct BlockHashBuildHasher;

impl std::hash::BuildHasher for BlockHashBuildHasher {
    type Hasher = BlockHashHasher;

    fn build_hasher(&self) -> BlockHashHasher {
        BlockHashHasher(0)
    }
}

/// The hasher of [`BlockHashBuildHasher`].
#[derive(Debug, Clone, Copy, Default)]
pub struct BlockHashHasher(u64);

impl std::hash::Hasher for BlockHashHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // A `[u8; 32]` arrives as one 32-byte write: take its first eight bytes.
        // Anything shorter (only other key types) is folded in.
        match bytes.get(..8) {
            Some(p) if bytes.len() >= 16 => {
                self.0 = u64::from_le_bytes(p.try_into().expect("8 bytes"));
            }
            _ => {
                for b in bytes {
                    self.0 = self.0.rotate_left(8) ^ u64::from(*b);
                }
            }
        }
    }

    fn write_usize(&mut self, _: usize) {
        // The array's length prefix carries nothing.
    }
}

/// A hash map keyed by [`BlockHash`] with [`BlockHashBuildHasher`].
pub type BlockHashMap<V> = std::collections::HashMap<BlockHash, V, BlockHashBuildHasher>;

#[cfg(test)]
mod hasher_tests {
    use super::*;

    #[test]
    fn block_hash_maps_use_the_prefix() {
        use std::hash::BuildHasher;
        let h = BlockHash([0x11; 32]);
        let mut k = [0u8; 32];
        k[..8].copy_from_slice(&42u64.to_le_bytes());
        assert_eq!(BlockHashBuildHasher.hash_one(BlockHash(k)), 42);
        let mut m: BlockHashMap<u32> = BlockHashMap::default();
        m.insert(h, 1);
        m.insert(BlockHash(k), 2);
        assert_eq!((m[&h], m[&BlockHash(k)]), (1, 2));
    }
}
