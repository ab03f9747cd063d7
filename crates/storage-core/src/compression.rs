//! Compression codecs shared by the wire format and the backends.
//!
//! Decompression is always bounded: a damaged or hostile input can make it fail, but
//! never allocate more than the caller's limit (plus one read buffer).

use std::fmt;
use std::io::Read;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Result, StorageError};

/// A compression codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompressionType {
    /// Stored as is.
    #[default]
    None,
    /// gzip (RFC 1952), via flate2.
    Gzip,
    /// Zstandard, level 3.
    Zstd,
    /// LZ4 block format with a 4-byte little-endian length prefix (lz4_flex).
    Lz4,
}

impl CompressionType {
    /// Every codec, for tests and benchmark matrices.
    pub const ALL: [CompressionType; 4] = [Self::None, Self::Gzip, Self::Zstd, Self::Lz4];

    /// The codec's lowercase name, also its content-type suffix.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
            Self::Lz4 => "lz4",
        }
    }

    /// Compresses `data`.
    pub fn compress(self, data: &[u8]) -> Result<Vec<u8>> {
        match self {
            Self::None => Ok(data.to_vec()),
            Self::Gzip => {
                use std::io::Write;
                let mut enc = flate2::write::GzEncoder::new(
                    Vec::with_capacity(data.len() / 2 + 64),
                    flate2::Compression::default(),
                );
                enc.write_all(data)
                    .and_then(|_| enc.finish())
                    .map_err(|e| StorageError::Encoding(format!("gzip: {e}")))
            }
            Self::Zstd => zstd::bulk::compress(data, 3)
                .map_err(|e| StorageError::Encoding(format!("zstd: {e}"))),
            Self::Lz4 => Ok(lz4_flex::block::compress_prepend_size(data)),
        }
    }

    /// Decompresses `data`, failing with [`StorageError::Corrupted`] if it is not
    /// valid for this codec or would decompress to more than `max_len` bytes.
    pub fn decompress(self, data: &[u8], max_len: usize) -> Result<Vec<u8>> {
        let too_big = || {
            StorageError::corrupted(format!(
                "{} data decompresses to more than the {max_len}-byte limit",
                self.name()
            ))
        };
        match self {
            Self::None => {
                if data.len() > max_len {
                    return Err(too_big());
                }
                Ok(data.to_vec())
            }
            Self::Gzip => read_bounded(flate2::read::GzDecoder::new(data), max_len, self),
            Self::Zstd => {
                let dec = zstd::stream::read::Decoder::with_buffer(data)
                    .map_err(|e| StorageError::corrupted_by("zstd frame", e))?;
                read_bounded(dec, max_len, self)
            }
            Self::Lz4 => {
                // The length prefix is untrusted: check it before lz4_flex allocates it.
                let prefix: [u8; 4] =
                    data.get(..4)
                        .and_then(|p| p.try_into().ok())
                        .ok_or_else(|| {
                            StorageError::corrupted("lz4 data shorter than its length prefix")
                        })?;
                if u32::from_le_bytes(prefix) as usize > max_len {
                    return Err(too_big());
                }
                lz4_flex::block::decompress_size_prepended(data)
                    .map_err(|e| StorageError::corrupted_by("lz4 block", e))
            }
        }
    }
}

fn read_bounded(reader: impl Read, max_len: usize, codec: CompressionType) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    reader
        .take(max_len as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| StorageError::corrupted_by(format!("{} stream", codec.name()), e))?;
    if out.len() > max_len {
        return Err(StorageError::corrupted(format!(
            "{} data decompresses to more than the {max_len}-byte limit",
            codec.name()
        )));
    }
    Ok(out)
}

impl fmt::Display for CompressionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for CompressionType {
    type Err = StorageError;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(Self::None),
            "gzip" | "gz" => Ok(Self::Gzip),
            "zstd" => Ok(Self::Zstd),
            "lz4" => Ok(Self::Lz4),
            other => Err(StorageError::InvalidInput(format!(
                "unknown compression {other:?} (expected none, gzip, zstd or lz4)"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_bounds() {
        let data: Vec<u8> = (0..10_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for c in CompressionType::ALL {
            let z = c.compress(&data).unwrap();
            assert_eq!(c.decompress(&z, data.len()).unwrap(), data, "{c}");
            let err = c.decompress(&z, data.len() - 1).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::Corrupted, "{c}: {err}");
            assert_eq!(c.name().parse::<CompressionType>().unwrap(), c);
        }
    }

    #[test]
    fn garbage_is_corrupted_not_panic() {
        let garbage = [0xffu8, 0xff, 0xff, 0x7f, 1, 2, 3];
        for c in [
            CompressionType::Gzip,
            CompressionType::Zstd,
            CompressionType::Lz4,
        ] {
            let err = c.decompress(&garbage, 1 << 20).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::Corrupted, "{c}");
        }
        assert!("brotli".parse::<CompressionType>().is_err());
    }
}
