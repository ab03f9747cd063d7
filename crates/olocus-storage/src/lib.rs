//! olocus-storage: one crate in front of every backend.
//!
//! Each backend sits behind its own cargo feature, so a program compiles only what
//! it picks:
//!
//! | feature | module | backend |
//! |---|---|---|
//! | `memory` (default) | `memory` | in-memory |
//! | `fs` (default) | `filesystem` | append-only segment files |
//! | `rocksdb` | `rocksdb` | RocksDB (builds C++; needs libclang) |
//! | `sqlite` | `sqlite` | SQLite (bundled) |
//! | `cache` | `cache` | moka read cache over any backend |
//! | `object` | `object` | S3 and S3-compatible object storage |
//! | `replica` | `manager` | replication manager over several backends |
//!
//! The core (block model, [`StorageBackend`] trait, errors) is re-exported at the
//! root and in [`traits`].
//!
//! # Quickstart
//!
//! Append signed blocks, query them, stream a chain and tell errors apart:
//!
//! ```
//! # #[cfg(feature = "memory")]
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::time::SystemTime;
//!
//! use olocus_storage::{
//!     BlockPayload, ErrorKind, ListOptions, Storage, StorageBackendExt, TryStreamExt,
//! };
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Reading {
//!     celsius: f32,
//! }
//! impl BlockPayload for Reading {
//!     const PAYLOAD_TYPE: &'static str = "example.reading/v1";
//! }
//!
//! // In memory here; `fs:./chain` or `sqlite:./chain.db` keep it.
//! let store = Storage::open_url("memory:").await?;
//! let key = olocus_storage::generate_signing_key()?;
//!
//! // Append: each block is signed, and linked to the one before it.
//! for celsius in [20.5, 21.0, 21.5] {
//!     store.append(&Reading { celsius }, &key, SystemTime::now()).await?;
//! }
//!
//! // Query metadata: the newest two.
//! let newest = store
//!     .list_blocks(&ListOptions::new().descending().limit(2))
//!     .await?;
//! assert_eq!(newest.iter().map(|m| m.index).collect::<Vec<_>>(), [2, 1]);
//!
//! // Stream the whole chain, a page at a time, and decode a payload.
//! let blocks: Vec<_> = store.stream_range(..).try_collect().await?;
//! assert_eq!(blocks.len(), 3);
//! let reading: Reading = blocks[1].decode_payload()?;
//! assert_eq!(reading.celsius, 21.0);
//!
//! // Errors by kind: a block stored at a taken index is a conflict, a head
//! // naming no stored block is not found.
//! let rival = olocus_storage::Block::next(
//!     &blocks[0],
//!     &Reading { celsius: 0.0 },
//!     &key,
//!     SystemTime::now(),
//! )?;
//! let err = store.store_block(&rival).await.unwrap_err();
//! assert_eq!(err.kind(), ErrorKind::IndexConflict);
//! let err = store.set_chain_head(&rival.hash()).await.unwrap_err();
//! assert_eq!(err.kind(), ErrorKind::NotFound);
//!
//! store.close().await?;
//! # Ok::<(), olocus_storage::StorageError>(())
//! # }).unwrap();
//! ```
//!
//! [`Storage::new`] builds a store from a [`StorageConfig`], which is also
//! readable from TOML (see its docs) and, for the backend and open mode, from a
//! URL ([`Storage::open_url`]):
//!
//! ```
//! # #[cfg(feature = "fs")]
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use olocus_storage::{BackendConfig, CompressionType, Storage, StorageConfig, WALConfig};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let config = StorageConfig::new(BackendConfig::Filesystem {
//!     path: dir.path().join("chain"),
//!     compression: CompressionType::Zstd,
//! })
//! .with_wal(WALConfig::synced()) // every write synced before it is acknowledged
//! .with_max_payload_bytes(1 << 20); // refuse blocks with payloads over 1 MiB
//! let storage = Storage::new(config).await?;
//! assert_eq!(storage.count_blocks().await?, 0);
//! # Ok::<(), olocus_storage::StorageError>(())
//! # }).unwrap();
//! ```

//!
//! # Build speed in your crate
//!
//! Signing and hashing run 3–6× slower in a debug build unless the crypto and
//! compression crates are optimised, and cargo does not pass a dependency's
//! profile settings on. Add to your workspace's `Cargo.toml`:
//!
//! ```toml
//! [profile.dev.package.curve25519-dalek]
//! opt-level = 3
//! [profile.dev.package.ed25519-dalek]
//! opt-level = 3
//! [profile.dev.package.sha2]
//! opt-level = 3
//! [profile.dev.package.zstd-sys]
//! opt-level = 3
//! [profile.dev.package.lz4_flex]
//! opt-level = 3
//! [profile.dev.package.libsqlite3-sys]   # with the sqlite feature
//! opt-level = 3
//! ```

// Library code returns errors; tests may unwrap (see clippy.toml).
#![warn(clippy::unwrap_used)]
// On docs.rs (nightly, every feature on), each feature-gated item is marked
// with the feature it needs.
#![cfg_attr(docsrs, feature(doc_cfg))]

use std::any::Any;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use serde::{Deserialize, Serialize};

// What applications use; implementor helpers stay in `storage_core::raw`.
pub use storage_core::{
    BackendStats, Block, BlockFilter, BlockHash, BlockHashBuildHasher, BlockHashHasher,
    BlockHashMap, BlockMetadata, BlockParts, BlockPayload, BlockStream, BoxError,
    CONTENT_TYPE_BINARY, CONTENT_TYPE_JSON, Capabilities, CompactionStats, CompressionType,
    DOMAIN_TAG, Encoding, ErrorKind, ErrorStatus, LIST_STREAM_PAGE, ListCursor, ListMatcher,
    ListOptions, MAX_ENCODED_BLOCK_BYTES, MAX_INDEX, MAX_PAYLOAD_BYTES, MAX_PAYLOAD_TYPE_LEN,
    MAX_TIMESTAMP_NANOS, OpenMode, PublicKey, RANGE_STREAM_PAGE, Result, Signature, SigningKey,
    SortOrder, StorageBackend, StorageBackendExt, StorageError, StorageStats, Stream, StreamExt,
    TryStreamExt, VerifyOptions, VerifyReport, VerifyingKey, WALConfig, WireFormat, async_trait,
    error_report, generate_signing_key, human_duration, is_valid_payload_type, parse_duration,
    salvage, system_time_from_unix_nanos, unix_nanos, verify_block, verify_chain,
};

/// The trait and its extension in one import
/// (`use olocus_storage::traits::*`).
pub mod traits {
    pub use storage_core::{
        BlockFilter, BlockMetadata, Capabilities, ListCursor, ListOptions, SortOrder,
        StorageBackend, StorageBackendExt, StorageStats,
    };
}

/// The in-memory backend.
#[cfg(feature = "memory")]
pub mod memory {
    pub use storage_memory::*;
}

/// The filesystem backend.
#[cfg(feature = "fs")]
pub mod filesystem {
    pub use storage_fs::*;
}

/// The RocksDB backend.
#[cfg(feature = "rocksdb")]
pub mod rocksdb {
    pub use storage_rocksdb::*;
}

/// The SQLite backend.
#[cfg(feature = "sqlite")]
pub mod sqlite {
    pub use storage_sqlite::*;
}

/// The read cache over any backend.
#[cfg(feature = "cache")]
pub mod cache {
    pub use storage_cache::*;
}

/// The object-store backend (S3 and S3-compatible services).
#[cfg(feature = "object")]
pub mod object {
    pub use storage_object::*;
}

/// The replication manager.
#[cfg(feature = "replica")]
pub mod manager {
    pub use storage_replica::*;
}

/// A credential: kept out of `Debug` output, URLs and error messages.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a credential.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The credential itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Which backend [`Storage::new`] opens.
///
/// In TOML: `[backend]` with `type = "memory" | "fs" | "rocksdb" | "sqlite" |
/// "s3"` (the URL schemes; `"filesystem"` and `"object"` also work) and the
/// variant's fields. As a URL: see
/// [`BackendConfig::from_str`](#impl-FromStr-for-BackendConfig).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
#[non_exhaustive]
pub enum BackendConfig {
    /// In memory; gone when the store is dropped.
    Memory,
    /// Segment files in a directory.
    #[serde(alias = "fs")]
    Filesystem {
        /// Store directory.
        path: PathBuf,
        /// Compression of each block record.
        #[serde(default)]
        compression: CompressionType,
    },
    /// RocksDB.
    #[serde(rename = "rocksdb")]
    RocksDB {
        /// Database directory.
        path: String,
        /// SST compression (zstd, lz4 or none).
        #[serde(default = "default_rocksdb_compression")]
        compression: CompressionType,
        /// Block cache, bytes.
        #[serde(default = "default_rocksdb_cache")]
        cache_size: usize,
    },
    /// SQLite.
    #[serde(rename = "sqlite")]
    SQLite {
        /// Database file.
        path: PathBuf,
    },
    /// Object storage: S3 or an S3-compatible service (`s3://bucket/prefix`),
    /// a local directory through object_store (`file:///abs/dir`, one writing
    /// process), or a fresh in-memory store (`memory://`). Many chains can share
    /// a bucket under different prefixes.
    #[serde(alias = "s3")]
    Object {
        /// Where the chain lives.
        url: String,
        /// S3 endpoint of an S3-compatible service (`http://127.0.0.1:8333`);
        /// else `AWS_ENDPOINT`, else AWS itself.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        endpoint: Option<String>,
        /// S3 region; else `AWS_REGION`/`AWS_DEFAULT_REGION`, else `us-east-1`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        region: Option<String>,
        /// S3 access key; else `AWS_ACCESS_KEY_ID`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        access_key_id: Option<String>,
        /// S3 secret key; else `AWS_SECRET_ACCESS_KEY`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secret_access_key: Option<Secret>,
        /// Allow a plain `http://` endpoint (local clusters).
        #[serde(default)]
        allow_http: bool,
    },
}

fn default_rocksdb_compression() -> CompressionType {
    CompressionType::Zstd
}

fn default_rocksdb_cache() -> usize {
    64 << 20
}

impl BackendConfig {
    /// A filesystem store in `path`, with the backend's default compression.
    pub fn filesystem(path: impl Into<PathBuf>) -> Self {
        Self::Filesystem {
            path: path.into(),
            compression: CompressionType::default(),
        }
    }

    /// A RocksDB store in `path` with the default compression and cache.
    pub fn rocksdb(path: impl Into<String>) -> Self {
        Self::RocksDB {
            path: path.into(),
            compression: default_rocksdb_compression(),
            cache_size: default_rocksdb_cache(),
        }
    }

    /// An SQLite store in the file `path`.
    pub fn sqlite(path: impl Into<PathBuf>) -> Self {
        Self::SQLite { path: path.into() }
    }

    /// An object store chain at `url` (`s3://bucket/prefix`), with endpoint,
    /// region and credentials from the environment.
    pub fn object(url: impl Into<String>) -> Self {
        Self::Object {
            url: url.into(),
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            allow_http: false,
        }
    }

    /// The backend's name, as in URLs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Filesystem { .. } => "filesystem",
            Self::RocksDB { .. } => "rocksdb",
            Self::SQLite { .. } => "sqlite",
            Self::Object { .. } => "object",
        }
    }

    /// The cargo feature that compiles this backend in.
    pub fn feature(&self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Filesystem { .. } => "fs",
            Self::RocksDB { .. } => "rocksdb",
            Self::SQLite { .. } => "sqlite",
            Self::Object { .. } => "object",
        }
    }

    /// Whether this build has the backend.
    pub fn is_compiled_in(&self) -> bool {
        match self {
            Self::Memory => cfg!(feature = "memory"),
            Self::Filesystem { .. } => cfg!(feature = "fs"),
            Self::RocksDB { .. } => cfg!(feature = "rocksdb"),
            Self::SQLite { .. } => cfg!(feature = "sqlite"),
            Self::Object { .. } => cfg!(feature = "object"),
        }
    }

    /// The URL form: `memory:`, `fs:PATH`, `rocksdb:PATH`, `sqlite:PATH`,
    /// `s3://bucket/prefix?endpoint=…&region=…`. Credentials are never part of
    /// it.
    pub fn to_url(&self) -> String {
        let mut params = Vec::new();
        let url = match self {
            Self::Memory => "memory:".into(),
            Self::Filesystem { path, compression } => {
                if *compression != CompressionType::default() {
                    params.push(("compression", compression.to_string()));
                }
                format!("fs:{}", encode_path(&path.to_string_lossy()))
            }
            Self::RocksDB {
                path, compression, ..
            } => {
                if *compression != default_rocksdb_compression() {
                    params.push(("compression", compression.to_string()));
                }
                format!("rocksdb:{}", encode_path(path))
            }
            Self::SQLite { path } => format!("sqlite:{}", encode_path(&path.to_string_lossy())),
            Self::Object {
                url,
                endpoint,
                region,
                allow_http,
                ..
            } => {
                if let Some(e) = endpoint {
                    params.push(("endpoint", e.clone()));
                }
                if let Some(r) = region {
                    params.push(("region", r.clone()));
                }
                // Implied by an http:// endpoint; said when it is not.
                if *allow_http
                    != endpoint
                        .as_deref()
                        .is_some_and(|e| e.starts_with("http://"))
                {
                    params.push(("allow_http", allow_http.to_string()));
                }
                encode_path(url)
            }
        };
        with_params(url, &params)
    }
}

/// What a path may not hold unescaped in a URL: `%` starts an escape, `?` the
/// parameters.
const PATH_ESCAPES: &AsciiSet = &CONTROLS.add(b'%').add(b'?').add(b'#');
/// What a parameter value may not hold unescaped.
const PARAM_ESCAPES: &AsciiSet = &CONTROLS.add(b'%').add(b'&').add(b'=').add(b'#');

fn encode_path(path: &str) -> String {
    utf8_percent_encode(path, PATH_ESCAPES).to_string()
}

fn with_params(url: String, params: &[(&str, String)]) -> String {
    if params.is_empty() {
        return url;
    }
    let query: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{k}={}", utf8_percent_encode(v, PARAM_ESCAPES)))
        .collect();
    format!("{url}?{}", query.join("&"))
}

/// The URL forms, with what each takes.
const URL_FORMS: &str = "memory:, fs:PATH, rocksdb:PATH, sqlite:PATH or s3://BUCKET/PREFIX";

/// A store URL taken apart: the backend, and the open mode if it names one.
fn parse_store_url(url: &str) -> Result<(BackendConfig, Option<OpenMode>)> {
    let bad = |why: &str| StorageError::InvalidInput(format!("bad store URL {url:?}: {why}"));
    let decode = |s: &str, what: &str| {
        percent_decode_str(s)
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|_| {
                bad(&format!(
                    "the {what} is not UTF-8 once %-escapes are decoded"
                ))
            })
    };
    let (scheme, rest) = url
        .split_once(':')
        .ok_or_else(|| bad(&format!("no scheme (expected {URL_FORMS})")))?;
    let (raw_path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    let path = decode(raw_path, "path")?;
    let mut params: Vec<(String, String)> = Vec::new();
    for pair in query.into_iter().flat_map(|q| q.split('&')) {
        if pair.is_empty() {
            continue;
        }
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| bad(&format!("parameter {pair:?} has no value")))?;
        let k = decode(k, "parameter name")?;
        if params.iter().any(|(seen, _)| *seen == k) {
            return Err(bad(&format!("parameter {k:?} is given twice")));
        }
        params.push((k, decode(v, "parameter value")?));
    }
    let mut take = |name: &str| {
        params
            .iter()
            .position(|(k, _)| k == name)
            .map(|i| params.remove(i).1)
    };
    let mode = take("mode").map(|m| m.parse::<OpenMode>()).transpose()?;
    let need_path = |path: String| {
        if path.is_empty() {
            Err(bad("a path is needed"))
        } else {
            Ok(path)
        }
    };
    let scheme = scheme.to_ascii_lowercase();
    let config = match scheme.as_str() {
        "memory" | "mem" => {
            if !path.is_empty() {
                return Err(bad("memory: takes no path"));
            }
            BackendConfig::Memory
        }
        "fs" | "filesystem" | "file" => BackendConfig::Filesystem {
            path: need_path(path)?.into(),
            compression: take("compression")
                .map(|c| c.parse())
                .transpose()?
                .unwrap_or_default(),
        },
        "rocksdb" => BackendConfig::RocksDB {
            path: need_path(path)?,
            compression: take("compression")
                .map(|c| c.parse())
                .transpose()?
                .unwrap_or_else(default_rocksdb_compression),
            cache_size: default_rocksdb_cache(),
        },
        "sqlite" => BackendConfig::SQLite {
            path: need_path(path)?.into(),
        },
        "s3" => {
            let location = path
                .strip_prefix("//")
                .filter(|l| !l.starts_with('/') && !l.is_empty())
                .ok_or_else(|| bad("expected s3://BUCKET/PREFIX"))?;
            let endpoint = take("endpoint");
            let allow_http = match take("allow_http").as_deref() {
                None => endpoint
                    .as_deref()
                    .is_some_and(|e| e.starts_with("http://")),
                Some("true") => true,
                Some("false") => false,
                Some(other) => {
                    return Err(bad(&format!(
                        "allow_http={other:?}: expected true or false"
                    )));
                }
            };
            BackendConfig::Object {
                url: format!("s3://{location}"),
                endpoint,
                region: take("region"),
                access_key_id: None,
                secret_access_key: None,
                allow_http,
            }
        }
        other => {
            let hint = closest(other, &["memory", "fs", "rocksdb", "sqlite", "s3"])
                .map(|name| format!("did you mean {name}:? "))
                .unwrap_or_default();
            return Err(bad(&format!(
                "unknown scheme {other:?} ({hint}expected {URL_FORMS})"
            )));
        }
    };
    if let Some((k, _)) = params.first() {
        let known: &[&str] = match scheme.as_str() {
            "fs" | "filesystem" | "file" | "rocksdb" => &["compression", "mode"],
            "s3" => &["endpoint", "region", "allow_http", "mode"],
            _ => &["mode"],
        };
        let hint = match closest(k, known) {
            Some(name) => format!("did you mean {name:?}?"),
            None => format!("it takes {}", known.join("=, ") + "="),
        };
        return Err(bad(&format!("{scheme}: takes no parameter {k:?}; {hint}")));
    }
    Ok((config, mode))
}

/// The name in `known` within two edits of `given`, if any: for "did you mean".
fn closest<'a>(given: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|name| (strsim::levenshtein(given, name), *name))
        .filter(|(distance, _)| *distance <= 2)
        .min()
        .map(|(_, name)| name)
}

/// Parses a backend URL: `memory:`, `fs:PATH` (or `filesystem:`), `rocksdb:PATH`,
/// `sqlite:PATH`, `s3://BUCKET/PREFIX`. `fs:` and `rocksdb:` take
/// `?compression=zstd|lz4|gzip|none`; `s3:` takes `endpoint=`, `region=` and
/// `allow_http=` (implied by an `http://` endpoint), with credentials from
/// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`. `%XX` escapes are decoded
/// in paths and values. The open mode (`mode=`) belongs to the whole store:
/// parse such a URL with [`StorageConfig::from_url`].
impl FromStr for BackendConfig {
    type Err = StorageError;

    fn from_str(url: &str) -> Result<Self> {
        match parse_store_url(url)? {
            (config, None) => Ok(config),
            (_, Some(_)) => Err(StorageError::InvalidInput(format!(
                "store URL {url:?}: `mode=` sets how the whole store opens; parse it with \
                 StorageConfig::from_url (or open it with Storage::open_url)"
            ))),
        }
    }
}

/// Eviction policy of the read cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum EvictionPolicy {
    /// Least recently used.
    #[default]
    LRU,
    /// Least frequently used (TinyLFU).
    LFU,
    /// Refused: the cache engine has no FIFO eviction.
    FIFO,
    /// Refused: the cache engine has no random eviction.
    Random,
}

/// Read-cache settings; sizes in bytes. Needs the
/// `cache` feature when set.
///
/// ```
/// use olocus_storage::{CacheConfig, EvictionPolicy};
/// let cache = CacheConfig::default()
///     .block_cache_size(64 << 20)
///     .eviction_policy(EvictionPolicy::LFU)
///     .prefetch(32);
/// assert!(cache.prefetch_enabled);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct CacheConfig {
    /// Byte budget for blocks.
    pub block_cache_size: u64,
    /// Byte budget for metadata (`metadata_cache_size` is accepted too).
    #[serde(alias = "metadata_cache_size")]
    pub index_cache_size: u64,
    /// Eviction policy.
    pub eviction_policy: EvictionPolicy,
    /// Cache blocks as they are stored (`false`: only on reads).
    pub write_through: bool,
    /// Entries expire this long after insertion (`"10m"`, `"1h"`, seconds); none:
    /// never.
    #[serde(
        with = "storage_core::human_duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl: Option<Duration>,
    /// On a miss by hash, load the neighbouring indices in the background.
    pub prefetch_enabled: bool,
    /// How many neighbouring indices one prefetch loads (half before, half
    /// after).
    pub prefetch_size: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            block_cache_size: 32 << 20,
            index_cache_size: 8 << 20,
            eviction_policy: EvictionPolicy::LRU,
            write_through: true,
            ttl: None,
            prefetch_enabled: false,
            prefetch_size: 16,
        }
    }
}

impl CacheConfig {
    /// Sets the byte budget for blocks.
    pub fn block_cache_size(mut self, bytes: u64) -> Self {
        self.block_cache_size = bytes;
        self
    }

    /// Sets the byte budget for metadata.
    pub fn index_cache_size(mut self, bytes: u64) -> Self {
        self.index_cache_size = bytes;
        self
    }

    /// Sets the eviction policy.
    pub fn eviction_policy(mut self, policy: EvictionPolicy) -> Self {
        self.eviction_policy = policy;
        self
    }

    /// Caches blocks as they are stored (`true`) or only on reads.
    pub fn write_through(mut self, on: bool) -> Self {
        self.write_through = on;
        self
    }

    /// Expires entries this long after insertion (`None`: never).
    pub fn ttl(mut self, ttl: Option<Duration>) -> Self {
        self.ttl = ttl;
        self
    }

    /// Prefetches `size` neighbouring indices on a miss.
    pub fn prefetch(mut self, size: usize) -> Self {
        self.prefetch_enabled = true;
        self.prefetch_size = size;
        self
    }
}

/// How many copies must acknowledge a write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsistencyLevel {
    /// Any one copy.
    One,
    /// A majority of all copies, primary included.
    #[default]
    Quorum,
    /// Every copy.
    All,
}

/// Copies kept beside the primary store by the replication manager: the
/// replicas and the manager's settings. Needs the `replica` feature when set.
///
/// Every replica opens with the store's `wal_config`, `mode` and
/// `max_payload_bytes`; the read cache, if any, sits in front of the manager.
///
/// ```toml
/// [replication]
/// consistency_level = "Quorum"
/// health_check_interval = "30s"
///
/// [[replication.replicas]]
/// type = "filesystem"
/// path = "/backup/olocus/chain"
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ReplicationConfig {
    /// The replicas, in order (the primary is the store's `backend`).
    pub replicas: Vec<BackendConfig>,
    /// Copies (primary included) each block should live on; a health report
    /// with fewer healthy copies says the store is under-replicated.
    pub replication_factor: u32,
    /// Acknowledgement level of writes.
    pub consistency_level: ConsistencyLevel,
    /// Period of the background health check and repair.
    #[serde(with = "storage_core::human_duration")]
    pub health_check_interval: Duration,
    /// Run the health check and replay queued repairs every
    /// `health_check_interval` while the store is open.
    pub health_checks: bool,
    /// Serve reads from a healthy replica when the primary fails.
    pub auto_failover: bool,
    /// Wait for every copy's outcome before returning from a write.
    pub sync_writes: bool,
    /// How long one copy may take for one call before it counts as failed.
    #[serde(with = "storage_core::human_duration")]
    pub replica_timeout: Duration,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            replicas: Vec::new(),
            replication_factor: 2,
            consistency_level: ConsistencyLevel::Quorum,
            health_check_interval: Duration::from_secs(30),
            health_checks: true,
            auto_failover: true,
            sync_writes: false,
            replica_timeout: Duration::from_secs(5),
        }
    }
}

impl ReplicationConfig {
    /// Replication onto `replicas` with the default settings.
    pub fn new(replicas: impl IntoIterator<Item = BackendConfig>) -> Self {
        Self {
            replicas: replicas.into_iter().collect(),
            ..Self::default()
        }
    }

    /// Sets the acknowledgement level of writes.
    pub fn consistency_level(mut self, level: ConsistencyLevel) -> Self {
        self.consistency_level = level;
        self
    }

    /// Sets the number of copies each block should live on.
    pub fn replication_factor(mut self, copies: u32) -> Self {
        self.replication_factor = copies;
        self
    }

    /// Sets the period of the background health check (`None`: no background
    /// check; call the manager's `health_check` and `process_repairs`).
    pub fn health_checks(mut self, every: Option<Duration>) -> Self {
        self.health_checks = every.is_some();
        if let Some(every) = every {
            self.health_check_interval = every;
        }
        self
    }

    /// Sets how long one copy may take for one call.
    pub fn replica_timeout(mut self, timeout: Duration) -> Self {
        self.replica_timeout = timeout;
        self
    }

    /// Serves reads from a healthy replica when the primary fails (`true`).
    pub fn auto_failover(mut self, on: bool) -> Self {
        self.auto_failover = on;
        self
    }

    /// Waits for every copy's outcome before returning from a write.
    pub fn sync_writes(mut self, on: bool) -> Self {
        self.sync_writes = on;
        self
    }
}

/// Everything [`Storage::new`] needs: a backend,
/// optionally replicated and cached, and how it opens and syncs.
///
/// How each backend applies `wal_config` (every field is honoured, or the
/// store refuses to open):
///
/// | setting | filesystem | RocksDB | SQLite | object store | memory |
/// |---|---|---|---|---|---|
/// | `enabled = false` | written, never synced | written to the log, never synced | `synchronous = NORMAL`, no periodic sync | every write durable when acknowledged | default only |
/// | `sync_interval = 0` | every write synced | `sync_writes` | `synchronous = FULL` | as above | default only |
/// | `sync_interval > 0` | synced every interval | log synced every interval | `NORMAL`, log synced every interval | as above | default only |
/// | `max_log_size` | segment size | `max_total_wal_size` | WAL checkpoint size | no log to bound | default only |
///
/// A memory store keeps nothing to sync, so it refuses any `wal_config` but
/// the default.
///
/// ```toml
/// mode = "create"             # or "open_existing", "read_only"
///
/// [backend]
/// type = "sqlite"
/// path = "/var/lib/olocus/chain.db"
///
/// [wal_config]
/// enabled = true
/// sync_interval = "5s"
/// max_log_size = 104857600
///
/// [replication]
/// consistency_level = "All"
///
/// [[replication.replicas]]
/// type = "object"
/// url = "s3://olocus/chain"
/// endpoint = "http://127.0.0.1:8333"
///
/// [cache_config]
/// block_cache_size = 33554432
/// index_cache_size = 8388608
/// eviction_policy = "LRU"
/// prefetch_enabled = true
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct StorageConfig {
    /// The backend (the primary copy, when replicated).
    pub backend: BackendConfig,
    /// Durability settings (see the type docs for each backend).
    #[serde(default)]
    pub wal_config: WALConfig,
    /// A read cache in front of the store; `None`: no cache.
    #[serde(default)]
    pub cache_config: Option<CacheConfig>,
    /// Replicas kept by the replication manager; `None`: one copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<ReplicationConfig>,
    /// Blocks with a longer payload are refused with `InvalidInput` (at most, and
    /// by default, [`storage_core::MAX_PAYLOAD_BYTES`]).
    #[serde(default = "default_max_payload_bytes")]
    pub max_payload_bytes: usize,
    /// How the store is opened: `"create"` (the default), `"open_existing"`
    /// or `"read_only"`.
    #[serde(default)]
    pub mode: OpenMode,
}

fn default_max_payload_bytes() -> usize {
    storage_core::MAX_PAYLOAD_BYTES
}

impl StorageConfig {
    /// A configuration for `backend` with default durability and no cache.
    pub fn new(backend: BackendConfig) -> Self {
        Self {
            backend,
            wal_config: WALConfig::default(),
            cache_config: None,
            replication: None,
            max_payload_bytes: default_max_payload_bytes(),
            mode: OpenMode::Create,
        }
    }

    /// Parses a store URL (see [`BackendConfig::from_str`]), which may also
    /// say how to open it: `sqlite:/data/chain.db?mode=read_only`.
    pub fn from_url(url: &str) -> Result<Self> {
        let (backend, mode) = parse_store_url(url)?;
        Ok(Self::new(backend).with_mode(mode.unwrap_or_default()))
    }

    /// The URL form of the backend and mode (other settings are not part of it).
    pub fn to_url(&self) -> String {
        let url = self.backend.to_url();
        if self.mode == OpenMode::Create {
            return url;
        }
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}mode={}", self.mode)
    }

    /// The same configuration, opening in `mode`.
    pub fn with_mode(mut self, mode: OpenMode) -> Self {
        self.mode = mode;
        self
    }

    /// The same configuration with these durability settings.
    pub fn with_wal(mut self, wal: WALConfig) -> Self {
        self.wal_config = wal;
        self
    }

    /// The same configuration with a read cache in front.
    pub fn with_cache(mut self, cache: CacheConfig) -> Self {
        self.cache_config = Some(cache);
        self
    }

    /// The same configuration, replicated.
    pub fn with_replication(mut self, replication: ReplicationConfig) -> Self {
        self.replication = Some(replication);
        self
    }

    /// The same configuration with a lower payload limit.
    pub fn with_max_payload_bytes(mut self, bytes: usize) -> Self {
        self.max_payload_bytes = bytes;
        self
    }

    /// Parses a TOML configuration.
    pub fn from_toml(text: &str) -> Result<Self> {
        Self::parse(text, "storage configuration")
    }

    /// Parses TOML from `origin` (a file name), naming it once in any error.
    fn parse(text: &str, origin: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| StorageError::Configuration(format!("{origin}: {e}")))
    }

    /// Reads and parses a TOML configuration file.
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| StorageError::io(format!("reading {}", path.display()), e))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Checks everything that can be checked without opening the store.
    pub fn validate(&self) -> Result<()> {
        self.wal_config.validate()?;
        if self.max_payload_bytes > storage_core::MAX_PAYLOAD_BYTES {
            return Err(StorageError::Configuration(format!(
                "max_payload_bytes {} is above the {}-byte maximum of any block",
                self.max_payload_bytes,
                storage_core::MAX_PAYLOAD_BYTES
            )));
        }
        self.validate_backend(&self.backend, "backend")?;
        if let Some(r) = &self.replication {
            if !cfg!(feature = "replica") {
                return Err(missing_feature("replication", "replica"));
            }
            if r.replicas.is_empty() {
                return Err(StorageError::Configuration(
                    "replication: no replicas (add [[replication.replicas]] entries, or remove \
                     [replication])"
                        .into(),
                ));
            }
            for (i, replica) in r.replicas.iter().enumerate() {
                self.validate_backend(replica, &format!("replication.replicas[{i}]"))?;
            }
            let copies = 1 + r.replicas.len();
            if r.replication_factor == 0 || r.replication_factor as usize > copies {
                return Err(StorageError::Configuration(format!(
                    "replication: replication_factor {} must be between 1 and the number of \
                     copies ({copies}, the primary included)",
                    r.replication_factor
                )));
            }
            if r.health_check_interval.is_zero() || r.replica_timeout.is_zero() {
                return Err(StorageError::Configuration(
                    "replication: health_check_interval and replica_timeout must be positive"
                        .into(),
                ));
            }
        }
        if let Some(c) = &self.cache_config {
            if !cfg!(feature = "cache") {
                return Err(missing_feature("the read cache (cache_config)", "cache"));
            }
            if c.block_cache_size == 0 || c.index_cache_size == 0 {
                return Err(StorageError::Configuration(
                    "cache_config: block_cache_size and index_cache_size must be positive (bytes)"
                        .into(),
                ));
            }
            if c.prefetch_enabled && c.prefetch_size == 0 {
                return Err(StorageError::Configuration(
                    "cache_config: prefetch_size must be positive when prefetch_enabled is set"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    /// Checks one copy's settings; `at` names it in errors.
    fn validate_backend(&self, backend: &BackendConfig, at: &str) -> Result<()> {
        let bad = |m: String| Err(StorageError::Configuration(format!("{at}: {m}")));
        if !backend.is_compiled_in() {
            return Err(missing_feature(backend.name(), backend.feature()));
        }
        match backend {
            BackendConfig::Filesystem { path, .. } | BackendConfig::SQLite { path } => {
                if path.as_os_str().is_empty() {
                    return bad(format!("{}: path is empty", backend.name()));
                }
            }
            BackendConfig::RocksDB {
                path, cache_size, ..
            } => {
                if path.trim().is_empty() {
                    return bad("rocksdb: path is empty".into());
                }
                if *cache_size == 0 {
                    return bad("rocksdb: cache_size must be positive (bytes)".into());
                }
            }
            BackendConfig::Object { url, .. } => {
                if url.trim().is_empty() {
                    return bad("object: url is empty".into());
                }
            }
            BackendConfig::Memory => {
                if self.mode != OpenMode::Create {
                    return bad(format!(
                        "memory: a memory store exists only while it is open; mode {} needs a \
                         store that was opened before",
                        self.mode
                    ));
                }
                if self.wal_config != WALConfig::default() {
                    return bad(
                        "memory: a memory store keeps nothing to sync, so wal_config does not \
                         apply; remove it, or pick a persistent backend"
                            .into(),
                    );
                }
            }
        }
        Ok(())
    }
}

fn missing_feature(what: &str, feature: &str) -> StorageError {
    StorageError::Configuration(format!(
        "{what} is not compiled into this build; enable the `{feature}` feature of olocus-storage"
    ))
}

/// The read cache over a store, as [`Storage::cache`] gives it.
#[cfg(feature = "cache")]
pub type CachedStorage = storage_cache::CachedStorageBackend<Arc<dyn StorageBackend>>;

/// One opened copy: as a backend, and as its own type for [`Storage::backend_as`].
struct Opened {
    backend: Arc<dyn StorageBackend>,
    typed: Arc<dyn Any + Send + Sync>,
}

impl Opened {
    #[allow(dead_code)] // unused when no backend feature is on
    fn of<T: StorageBackend + 'static>(backend: T) -> Self {
        let backend = Arc::new(backend);
        Self {
            backend: backend.clone(),
            typed: backend,
        }
    }
}

/// The pieces of an open store that its typed accessors reach.
struct Parts {
    /// The primary, then the replicas, each as its own type.
    copies: Vec<Arc<dyn Any + Send + Sync>>,
    #[cfg(feature = "cache")]
    cache: Option<Arc<CachedStorage>>,
    #[cfg(feature = "replica")]
    manager: Option<storage_replica::StorageManager>,
    /// Stops the background health check when the last handle goes.
    #[cfg(feature = "replica")]
    _health: Option<storage_replica::HealthCheckHandle>,
}

/// An open store: a backend from a [`StorageConfig`], replicated and wrapped in
/// the read cache when configured. Derefs to `dyn StorageBackend`;
/// [`Storage::backend`] gives the `Arc<dyn StorageBackend>` to share or to hand
/// to other components, and [`Storage::backend_as`], [`Storage::replica_as`],
/// `Storage::cache` and `Storage::manager` reach what only one backend or
/// wrapper offers. Clones share the store.
///
/// ```
/// # #[cfg(feature = "fs")]
/// # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
/// use std::time::SystemTime;
/// use olocus_storage::{BlockPayload, ErrorKind, Storage, StorageBackendExt};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Note(String);
/// impl BlockPayload for Note {
///     const PAYLOAD_TYPE: &'static str = "example.note/v1";
/// }
///
/// let dir = tempfile::tempdir().unwrap();
/// let url = format!("fs:{}", dir.path().join("chain").display());
/// let store = Storage::open_url(&url).await?;
/// let key = olocus_storage::generate_signing_key()?;
/// let first = store
///     .append(&Note("hello".into()), &key, SystemTime::now())
///     .await?;
/// assert_eq!(store.get_chain_head().await?, Some(first.hash()));
///
/// // The filesystem backend underneath, for what only it offers.
/// let fs = store.backend_as::<olocus_storage::filesystem::FilesystemBackend>().unwrap();
/// assert!(fs.locate(&first.hash())?.is_some());
///
/// // One writer at a time: a second writable open of the same path is refused.
/// let err = Storage::open_url(&url).await.unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::Locked);
/// store.close().await?;
/// # Ok::<(), olocus_storage::StorageError>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct Storage {
    backend: Arc<dyn StorageBackend>,
    config: StorageConfig,
    parts: Arc<Parts>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("backend", &self.backend)
            .field("url", &self.config.to_url())
            .finish()
    }
}

impl std::ops::Deref for Storage {
    type Target = dyn StorageBackend;

    fn deref(&self) -> &Self::Target {
        &*self.backend
    }
}

impl From<Storage> for Arc<dyn StorageBackend> {
    fn from(s: Storage) -> Self {
        s.backend
    }
}

impl Storage {
    /// Opens the configured backend (and replicas), as `mode` says, and wraps
    /// it in the cache when `cache_config` is set.
    ///
    /// A backend whose feature is off fails with a `Configuration` error naming the
    /// feature; so do invalid settings (zero sizes, an empty path). A path that
    /// cannot be opened fails with the backend's I/O error naming it. If a
    /// replica fails to open, the copies already open are closed again.
    pub async fn new(config: StorageConfig) -> Result<Self> {
        config.validate()?;
        let primary = open_backend(&config.backend, &config).await?;
        let mut copies = vec![primary];
        for replica in config.replication.iter().flat_map(|r| &r.replicas) {
            match open_backend(replica, &config).await {
                Ok(opened) => copies.push(opened),
                Err(e) => {
                    for c in &copies {
                        let _ = c.backend.close().await;
                    }
                    return Err(e);
                }
            }
        }
        let typed = copies.iter().map(|c| c.typed.clone()).collect();
        let backends: Vec<_> = copies.into_iter().map(|c| c.backend).collect();
        let stack = build_stack(backends, &config)?;
        Ok(Self {
            backend: stack.outer,
            parts: Arc::new(Parts {
                copies: typed,
                #[cfg(feature = "cache")]
                cache: stack.cache,
                #[cfg(feature = "replica")]
                manager: stack.manager,
                #[cfg(feature = "replica")]
                _health: stack.health,
            }),
            config,
        })
    }

    /// Opens a store from a URL (see [`StorageConfig::from_url`]) with default
    /// durability and no cache.
    pub async fn open_url(url: &str) -> Result<Self> {
        Self::new(StorageConfig::from_url(url)?).await
    }

    /// The store, to share.
    pub fn backend(&self) -> Arc<dyn StorageBackend> {
        self.backend.clone()
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &StorageConfig {
        &self.config
    }

    /// The backend (the primary, when replicated) as its own type, to reach
    /// what only it offers; `None` if it is another type.
    ///
    /// ```
    /// # #[cfg(feature = "memory")]
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use olocus_storage::{Storage, memory::MemoryBackend};
    /// let storage = Storage::open_url("memory:").await?;
    /// let memory: &MemoryBackend = storage.backend_as().expect("a memory store");
    /// # let _ = memory;
    /// # Ok::<(), olocus_storage::StorageError>(())
    /// # }).unwrap();
    /// ```
    pub fn backend_as<T: Any>(&self) -> Option<&T> {
        self.parts.copies.first()?.downcast_ref()
    }

    /// Replica `i` (counted from 0, in the configuration's order) as its own
    /// type; `None` if there is no such replica or it is another type.
    pub fn replica_as<T: Any>(&self, i: usize) -> Option<&T> {
        self.parts.copies.get(i.checked_add(1)?)?.downcast_ref()
    }

    /// The read cache, for its statistics and settings; `None` without
    /// `cache_config`.
    #[cfg(feature = "cache")]
    pub fn cache(&self) -> Option<&CachedStorage> {
        self.parts.cache.as_deref()
    }

    /// The replication manager, for health checks and repair; `None` without
    /// `replication`.
    #[cfg(feature = "replica")]
    pub fn manager(&self) -> Option<&storage_replica::StorageManager> {
        self.parts.manager.as_ref()
    }
}

/// The copies assembled: the store to use, and the wrappers on the way.
struct Stack {
    outer: Arc<dyn StorageBackend>,
    #[cfg(feature = "cache")]
    cache: Option<Arc<CachedStorage>>,
    #[cfg(feature = "replica")]
    manager: Option<storage_replica::StorageManager>,
    #[cfg(feature = "replica")]
    health: Option<storage_replica::HealthCheckHandle>,
}

fn build_stack(mut copies: Vec<Arc<dyn StorageBackend>>, config: &StorageConfig) -> Result<Stack> {
    let primary = copies.remove(0);
    #[cfg(feature = "replica")]
    let (outer, manager, health) = match &config.replication {
        None => (primary, None, None),
        Some(r) => {
            let manager = storage_replica::StorageManager::from_arcs(
                primary,
                copies,
                storage_replica::StorageManagerConfig::default()
                    .replication_factor(r.replication_factor)
                    .consistency_level(match r.consistency_level {
                        ConsistencyLevel::One => storage_replica::ConsistencyLevel::One,
                        ConsistencyLevel::Quorum => storage_replica::ConsistencyLevel::Quorum,
                        ConsistencyLevel::All => storage_replica::ConsistencyLevel::All,
                    })
                    .health_check_interval(r.health_check_interval)
                    .auto_failover(r.auto_failover)
                    .sync_writes(r.sync_writes)
                    .replica_timeout(r.replica_timeout),
            )?;
            let health = r.health_checks.then(|| manager.start_health_checks());
            let outer: Arc<dyn StorageBackend> = Arc::new(manager.clone());
            (outer, Some(manager), health)
        }
    };
    #[cfg(not(feature = "replica"))]
    let outer = {
        // Refused by `validate`.
        debug_assert!(copies.is_empty());
        primary
    };
    #[cfg(feature = "cache")]
    {
        let cache = wrap_cache(outer.clone(), config.cache_config.as_ref())?;
        Ok(Stack {
            outer: cache
                .clone()
                .map_or(outer, |c| c as Arc<dyn StorageBackend>),
            cache,
            #[cfg(feature = "replica")]
            manager,
            #[cfg(feature = "replica")]
            health,
        })
    }
    #[cfg(not(feature = "cache"))]
    {
        // Refused by `validate`.
        debug_assert!(config.cache_config.is_none());
        Ok(Stack {
            outer,
            #[cfg(feature = "replica")]
            manager,
            #[cfg(feature = "replica")]
            health,
        })
    }
}

#[allow(unused_variables)] // which arms use the settings depends on the features
async fn open_backend(backend: &BackendConfig, config: &StorageConfig) -> Result<Opened> {
    let wal = &config.wal_config;
    match backend {
        #[cfg(feature = "memory")]
        BackendConfig::Memory => Ok(Opened::of(
            storage_memory::MemoryBackend::new().with_max_payload_bytes(config.max_payload_bytes),
        )),
        #[cfg(feature = "fs")]
        BackendConfig::Filesystem { path, compression } => Ok(Opened::of(
            storage_fs::FilesystemBackend::open_async(
                storage_fs::FsConfig::from_wal(path, *compression, wal)
                    .max_payload_bytes(config.max_payload_bytes)
                    .execution(Default::default())
                    .mode(config.mode),
            )
            .await?,
        )),
        #[cfg(feature = "rocksdb")]
        BackendConfig::RocksDB {
            path,
            compression,
            cache_size,
        } => {
            let mut rc = storage_rocksdb::RocksDBConfig::new(path.clone())
                .compression(*compression)
                .cache_size(*cache_size)
                .max_payload_bytes(config.max_payload_bytes)
                .mode(config.mode);
            rc.apply_wal(wal);
            let store =
                tokio::task::spawn_blocking(move || storage_rocksdb::RocksDBBackend::new(rc))
                    .await
                    .map_err(|e| {
                        StorageError::backend(
                            "rocksdb",
                            "opening a store",
                            storage_core::ErrorStatus::Permanent,
                            e,
                        )
                    })??;
            Ok(Opened::of(store))
        }
        #[cfg(feature = "sqlite")]
        BackendConfig::SQLite { path } => {
            let mut sc = storage_sqlite::SQLiteConfig::at(path);
            sc.max_payload_bytes = config.max_payload_bytes;
            sc.mode = config.mode;
            sc.apply_wal(wal);
            Ok(Opened::of(storage_sqlite::SQLiteBackend::new(sc).await?))
        }
        #[cfg(feature = "object")]
        BackendConfig::Object {
            url,
            endpoint,
            region,
            access_key_id,
            secret_access_key,
            allow_http,
        } => {
            // Every write is durable when the service acknowledges it, which
            // meets any `wal_config`; there is no log for `max_log_size`.
            let oc = storage_object::ObjectStoreConfig::new(url.clone())
                .endpoint(endpoint.clone())
                .region(region.clone())
                .access_key_id(access_key_id.clone())
                .secret_access_key(secret_access_key.as_ref().map(|s| s.expose().to_owned()))
                .allow_http(*allow_http)
                .options(
                    storage_object::ObjectOptions::default()
                        .max_payload_bytes(config.max_payload_bytes)
                        .mode(config.mode),
                );
            Ok(Opened::of(
                storage_object::ObjectStoreBackend::open(oc).await?,
            ))
        }
        #[allow(unreachable_patterns)]
        other => Err(missing_feature(other.name(), other.feature())),
    }
}

#[cfg(feature = "cache")]
fn wrap_cache(
    backend: Arc<dyn StorageBackend>,
    cache: Option<&CacheConfig>,
) -> Result<Option<Arc<CachedStorage>>> {
    let Some(c) = cache else {
        return Ok(None);
    };
    let config = storage_cache::CacheConfig::default()
        .block_cache_size(c.block_cache_size)
        .metadata_cache_size(c.index_cache_size)
        .ttl(c.ttl)
        .eviction_policy(match c.eviction_policy {
            EvictionPolicy::LRU => storage_cache::EvictionPolicy::LRU,
            EvictionPolicy::LFU => storage_cache::EvictionPolicy::LFU,
            EvictionPolicy::FIFO => storage_cache::EvictionPolicy::FIFO,
            EvictionPolicy::Random => storage_cache::EvictionPolicy::Random,
        })
        .write_through(c.write_through)
        .prefetch_enabled(c.prefetch_enabled)
        .prefetch_size(c.prefetch_size);
    Ok(Some(Arc::new(storage_cache::CachedStorageBackend::new(
        backend, config,
    )?)))
}

// The README's examples are compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
