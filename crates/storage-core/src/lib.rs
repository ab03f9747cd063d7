//! Core of olocus-storage: the signed [`Block`] model, the [`WireFormat`], the
//! object-safe [`StorageBackend`] trait with its query and statistics types, and the
//! shared [`StorageError`].
//!
//! Backends live in their own crates (`storage-memory`, ...) and are checked by the
//! `storage-conformance` suite.
//!
//! ```
//! use std::time::SystemTime;
//! use ed25519_dalek::SigningKey;
//! use serde::{Deserialize, Serialize};
//! use storage_core::{Block, BlockPayload, WireFormat, verify_chain};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Reading { celsius: f32 }
//! impl BlockPayload for Reading { const PAYLOAD_TYPE: &'static str = "example.reading/v1"; }
//!
//! let key = SigningKey::from_bytes(&[7; 32]);
//! let genesis = Block::genesis(&Reading { celsius: 20.5 }, &key, SystemTime::now())?;
//! let next = Block::next(&genesis, &Reading { celsius: 21.0 }, &key, SystemTime::now())?;
//! verify_chain(&[genesis.clone(), next.clone()])?;
//!
//! let bytes = WireFormat::BINARY.encode(&next)?;
//! let back = WireFormat::BINARY.decode(&bytes)?;
//! assert_eq!(back.hash(), next.hash());
//! assert_eq!(back.decode_payload::<Reading>()?.celsius, 21.0);
//! # Ok::<(), storage_core::StorageError>(())
//! ```

// Library code returns errors; tests may unwrap (see clippy.toml).
#![warn(clippy::unwrap_used)]

mod block;
mod blocking;
mod compression;
mod config;
mod error;
mod ids;
mod layer;
mod links;
pub mod salvage;
mod trace;
mod traits;
mod types;
mod verify;
mod wire;

pub use block::{
    Block, BlockParts, BlockPayload, DOMAIN_TAG, MAX_INDEX, MAX_PAYLOAD_BYTES,
    MAX_PAYLOAD_TYPE_LEN, MAX_TIMESTAMP_NANOS, is_valid_payload_type, system_time_from_unix_nanos,
    unix_nanos, verify_block, verify_chain,
};
pub use blocking::Execution;
pub use compression::CompressionType;
pub use config::{OpenMode, WALConfig, human_duration, parse_duration};
pub use error::{BoxError, ErrorKind, ErrorStatus, Result, StorageError, error_report};
pub use ids::{
    BlockHash, BlockHashBuildHasher, BlockHashHasher, BlockHashMap, PublicKey, Signature,
};
pub use traits::{
    BlockStream, LIST_STREAM_PAGE, RANGE_STREAM_PAGE, StorageBackend, StorageBackendExt,
};
pub use types::{
    BackendStats, BlockFilter, BlockMetadata, Capabilities, CompactionStats, ListCursor,
    ListMatcher, ListOptions, SortOrder, StorageStats,
};
pub use verify::{VerifyOptions, VerifyReport};
pub use wire::{
    CONTENT_TYPE_BINARY, CONTENT_TYPE_JSON, Encoding, MAX_ENCODED_BLOCK_BYTES, WireFormat,
};

/// What backend implementors use and applications need not: the admission rule
/// every write follows, the span every operation runs in, and how engines run
/// blocking calls. A third-party backend built from these behaves like the
/// workspace's own.
pub mod raw {
    pub use crate::blocking::{
        Closing, Lease, OpenHandle, WeakLease, WeakTarget, read_only_open_delays, retry_delays,
        run_blocking, spawn_periodic,
    };
    pub use crate::layer::{Engine, Gate};
    pub use crate::links::{ChainView, ChainViewFn, admit, check_links, check_payload_limit};
    pub use crate::trace::{
        in_span, in_span_async, op_span, record_count, record_hash, record_index, record_outcome,
    };
}

/// Re-exported so users and backends name the same versions.
/// Chained setters for a settings struct's public fields, so that the struct
/// can be `#[non_exhaustive]` (new fields added later break no one) and still
/// be built in one expression: `Config::new(path).field(value).other(value)`.
///
/// `setters!(into Config { path: PathBuf })` makes setters taking `impl Into<T>`
/// (paths, names); `setters!(Config { size: u64 })` setters taking the type
/// itself, so integer literals keep inferring.
#[doc(hidden)]
#[macro_export]
macro_rules! setters {
    (into $ty:ty { $($field:ident : $fty:ty),* $(,)? }) => {
        impl $ty {
            $(
                #[doc = concat!("Sets `", stringify!($field), "` (see the field).")]
                #[must_use]
                pub fn $field(mut self, value: impl Into<$fty>) -> Self {
                    self.$field = value.into();
                    self
                }
            )*
        }
    };
    ($ty:ty { $($field:ident : $fty:ty),* $(,)? }) => {
        impl $ty {
            $(
                #[doc = concat!("Sets `", stringify!($field), "` (see the field).")]
                #[must_use]
                pub fn $field(mut self, value: $fty) -> Self {
                    self.$field = value;
                    self
                }
            )*
        }
    };
}

pub use async_trait::async_trait;
pub use ed25519_dalek::{SigningKey, VerifyingKey};

/// A new signing key from the operating system's randomness. Keep it secret
/// and keep it: blocks signed with it verify only against its public key.
///
/// ```
/// let key = storage_core::generate_signing_key()?;
/// let public = storage_core::PublicKey::from(&key.verifying_key());
/// # let _ = public;
/// // Every key is new.
/// assert_ne!(key.to_bytes(), storage_core::generate_signing_key()?.to_bytes());
/// # Ok::<(), storage_core::StorageError>(())
/// ```
pub fn generate_signing_key() -> Result<SigningKey> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| {
        StorageError::io(
            "reading the operating system's randomness for a key",
            std::io::Error::other(e.to_string()),
        )
    })?;
    Ok(SigningKey::from_bytes(&seed))
}
/// Re-exported for consuming [`BlockStream`]s (`try_next`, `try_collect`, ...).
pub use futures::stream::{Stream, StreamExt, TryStreamExt};

// The README's examples are compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
