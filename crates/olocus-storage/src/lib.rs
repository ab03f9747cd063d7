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
//! | `replica` | `manager` | replication manager over several backends |
//!
//! The core (block model, [`StorageBackend`] trait, errors) is re-exported at the
//! root and in [`traits`].
//!
//! [`Storage::new`] builds a store from a [`StorageConfig`], which is also
//! readable from TOML:
//!
//! ```
//! # #[cfg(feature = "fs")]
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use olocus_storage::{BackendConfig, Storage, StorageConfig, WALConfig};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let config = StorageConfig {
//!     backend: BackendConfig::Filesystem {
//!         path: dir.path().join("chain"),
//!         compression: olocus_storage::CompressionType::Zstd,
//!     },
//!     wal_config: WALConfig::default(),
//!     cache_config: None,
//!     max_payload_bytes: 1 << 20, // refuse blocks with payloads over 1 MiB
//!     mode: olocus_storage::OpenMode::Create,
//! };
//! let storage = Storage::new(config).await?;
//! assert_eq!(storage.count_blocks().await?, 0);
//! # Ok::<(), olocus_storage::StorageError>(())
//! # }).unwrap();
//! ```

// Library code returns errors; tests may unwrap (see clippy.toml).
#![warn(clippy::unwrap_used)]

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

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
    human_duration, is_valid_payload_type, parse_duration, salvage, system_time_from_unix_nanos,
    unix_nanos, verify_block, verify_chain,
};

/// The trait and its extension, as the seed imports them
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

/// The replication manager.
#[cfg(feature = "replica")]
pub mod manager {
    pub use storage_replica::*;
}

/// Which backend [`Storage::new`] opens (the seed's `StorageBackend` enum, renamed:
/// that name is the trait's).
///
/// In TOML: `[backend]` with `type = "memory" | "filesystem" | "rocksdb" | "sqlite"`
/// and the variant's fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum BackendConfig {
    /// In memory; gone when the store is dropped.
    Memory,
    /// Segment files in a directory.
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
}

fn default_rocksdb_compression() -> CompressionType {
    CompressionType::Zstd
}

fn default_rocksdb_cache() -> usize {
    64 << 20
}

impl BackendConfig {
    /// The backend's name, as in URLs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Filesystem { .. } => "filesystem",
            Self::RocksDB { .. } => "rocksdb",
            Self::SQLite { .. } => "sqlite",
        }
    }

    /// The cargo feature that compiles this backend in.
    pub fn feature(&self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Filesystem { .. } => "fs",
            Self::RocksDB { .. } => "rocksdb",
            Self::SQLite { .. } => "sqlite",
        }
    }

    /// Whether this build has the backend.
    pub fn is_compiled_in(&self) -> bool {
        match self {
            Self::Memory => cfg!(feature = "memory"),
            Self::Filesystem { .. } => cfg!(feature = "fs"),
            Self::RocksDB { .. } => cfg!(feature = "rocksdb"),
            Self::SQLite { .. } => cfg!(feature = "sqlite"),
        }
    }

    /// The URL form: `memory:`, `fs:PATH`, `rocksdb:PATH`, `sqlite:PATH`.
    pub fn to_url(&self) -> String {
        match self {
            Self::Memory => "memory:".into(),
            Self::Filesystem { path, compression } => {
                with_compression(format!("fs:{}", path.display()), *compression, None)
            }
            Self::RocksDB {
                path, compression, ..
            } => with_compression(
                format!("rocksdb:{path}"),
                *compression,
                Some(CompressionType::Zstd),
            ),
            Self::SQLite { path } => format!("sqlite:{}", path.display()),
        }
    }
}

fn with_compression(url: String, c: CompressionType, default: Option<CompressionType>) -> String {
    if c == default.unwrap_or_default() {
        url
    } else {
        format!("{url}?compression={c}")
    }
}

/// Parses a backend URL: `memory:`, `fs:PATH` (or `filesystem:`), `rocksdb:PATH`,
/// `sqlite:PATH`; `fs:` and `rocksdb:` take `?compression=zstd|lz4|gzip|none`.
impl FromStr for BackendConfig {
    type Err = StorageError;

    fn from_str(url: &str) -> Result<Self> {
        let bad = |why: &str| {
            StorageError::InvalidInput(format!(
                "bad store URL {url:?}: {why} (expected memory:, fs:PATH, rocksdb:PATH or sqlite:PATH)"
            ))
        };
        let (scheme, rest) = url.split_once(':').ok_or_else(|| bad("no scheme"))?;
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let mut compression = None;
        if let Some(q) = query {
            for pair in q.split('&') {
                match pair.split_once('=') {
                    Some(("compression", v)) => compression = Some(v.parse::<CompressionType>()?),
                    _ => return Err(bad(&format!("unknown parameter {pair:?}"))),
                }
            }
        }
        let need_path = || {
            if path.is_empty() {
                Err(bad("a path is needed"))
            } else {
                Ok(path)
            }
        };
        let config = match scheme.to_ascii_lowercase().as_str() {
            "memory" | "mem" => {
                if !path.is_empty() || compression.is_some() {
                    return Err(bad("memory: takes no path or parameters"));
                }
                Self::Memory
            }
            "fs" | "filesystem" | "file" => Self::Filesystem {
                path: need_path()?.into(),
                compression: compression.unwrap_or_default(),
            },
            "rocksdb" => Self::RocksDB {
                path: need_path()?.into(),
                compression: compression.unwrap_or(CompressionType::Zstd),
                cache_size: default_rocksdb_cache(),
            },
            "sqlite" => {
                if compression.is_some() {
                    return Err(bad("sqlite: takes no compression"));
                }
                Self::SQLite {
                    path: need_path()?.into(),
                }
            }
            other => return Err(bad(&format!("unknown scheme {other:?}"))),
        };
        Ok(config)
    }
}

/// Eviction policy of the read cache (the seed's names).
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

/// Read-cache settings (the seed's `CacheConfig`); sizes in bytes. Needs the
/// `cache` feature when set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Byte budget for blocks.
    pub block_cache_size: u64,
    /// Byte budget for metadata (the seed's opening example calls it
    /// `index_cache_size`; both names are accepted).
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
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            block_cache_size: 32 << 20,
            index_cache_size: 8 << 20,
            eviction_policy: EvictionPolicy::LRU,
            write_through: true,
            ttl: None,
        }
    }
}

/// Everything [`Storage::new`] needs (the seed's `StorageConfig`).
///
/// How `wal_config` applies: filesystem — see `FsConfig::from_wal` (disabled:
/// buffered; zero interval: every write synced; otherwise periodic syncs;
/// `max_log_size` is the segment size); RocksDB — a zero `sync_interval` syncs
/// every write, otherwise RocksDB's WAL is written per write and synced by RocksDB;
/// SQLite — a zero `sync_interval` uses `synchronous = FULL`, otherwise `NORMAL`;
/// memory — ignored.
///
/// ```toml
/// [backend]
/// type = "filesystem"
/// path = "/var/lib/olocus/chain"
/// compression = "zstd"
///
/// [wal_config]
/// enabled = true
/// sync_interval = "5s"
/// max_log_size = 104857600
///
/// [cache_config]
/// block_cache_size = 33554432
/// index_cache_size = 8388608
/// eviction_policy = "LRU"
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// The backend.
    pub backend: BackendConfig,
    /// Durability settings (see the type docs for each backend).
    #[serde(default)]
    pub wal_config: WALConfig,
    /// A read cache in front of the backend; `None`: no cache.
    #[serde(default)]
    pub cache_config: Option<CacheConfig>,
    /// Blocks with a longer payload are refused with `InvalidInput` (at most, and
    /// by default, [`storage_core::MAX_PAYLOAD_BYTES`]).
    #[serde(default = "default_max_payload_bytes")]
    pub max_payload_bytes: usize,
    /// How the store is opened: `"create"` (the default), `"open_existing"`
    /// or `"read_only"` (SQLite and RocksDB).
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
            max_payload_bytes: default_max_payload_bytes(),
            mode: OpenMode::Create,
        }
    }

    /// The same configuration, opening in `mode`.
    pub fn with_mode(mut self, mode: OpenMode) -> Self {
        self.mode = mode;
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
        if !self.backend.is_compiled_in() {
            return Err(missing_feature(self.backend.name(), self.backend.feature()));
        }
        match &self.backend {
            BackendConfig::Filesystem { path, .. } | BackendConfig::SQLite { path } => {
                if path.as_os_str().is_empty() {
                    return Err(StorageError::Configuration(format!(
                        "{}: path is empty",
                        self.backend.name()
                    )));
                }
            }
            BackendConfig::RocksDB {
                path, cache_size, ..
            } => {
                if path.trim().is_empty() {
                    return Err(StorageError::Configuration("rocksdb: path is empty".into()));
                }
                if *cache_size == 0 {
                    return Err(StorageError::Configuration(
                        "rocksdb: cache_size must be positive (bytes)".into(),
                    ));
                }
            }
            BackendConfig::Memory if self.mode != OpenMode::Create => {
                return Err(StorageError::Configuration(format!(
                    "memory: a memory store exists only while it is open; mode {:?} needs a \
                     store that was opened before",
                    self.mode
                )));
            }
            BackendConfig::Memory => {}
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
        }
        Ok(())
    }
}

fn missing_feature(what: &str, feature: &str) -> StorageError {
    StorageError::Configuration(format!(
        "{what} is not compiled into this build; enable the `{feature}` feature of olocus-storage"
    ))
}

/// An open store: a backend from a [`StorageConfig`], wrapped in the read cache
/// when configured. Derefs to `dyn StorageBackend`; [`Storage::backend`] gives the
/// `Arc<dyn StorageBackend>` to share or to hand to other components.
#[derive(Clone)]
pub struct Storage {
    backend: Arc<dyn StorageBackend>,
    config: StorageConfig,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("backend", &self.backend)
            .field("url", &self.config.backend.to_url())
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
    /// Opens the configured backend (creating it if needed) and wraps it in the
    /// cache when `cache_config` is set.
    ///
    /// A backend whose feature is off fails with a `Configuration` error naming the
    /// feature; so do invalid settings (zero sizes, an empty path). A path that
    /// cannot be opened fails with the backend's I/O error naming it.
    pub async fn new(config: StorageConfig) -> Result<Self> {
        config.validate()?;
        let backend = open_backend(&config).await?;
        let backend = wrap_cache(backend, config.cache_config.as_ref())?;
        Ok(Self { backend, config })
    }

    /// Opens a store from a URL (`memory:`, `fs:PATH`, `rocksdb:PATH`,
    /// `sqlite:PATH`) with default durability and no cache.
    pub async fn open_url(url: &str) -> Result<Self> {
        Self::new(StorageConfig::new(url.parse()?)).await
    }

    /// The backend, to share.
    pub fn backend(&self) -> Arc<dyn StorageBackend> {
        self.backend.clone()
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &StorageConfig {
        &self.config
    }
}

#[allow(unused_variables)] // which arms use `config` depends on the features
async fn open_backend(config: &StorageConfig) -> Result<Arc<dyn StorageBackend>> {
    let wal = &config.wal_config;
    match &config.backend {
        #[cfg(feature = "memory")]
        BackendConfig::Memory => Ok(Arc::new(
            storage_memory::MemoryBackend::new().with_max_payload_bytes(config.max_payload_bytes),
        )),
        #[cfg(feature = "fs")]
        BackendConfig::Filesystem { path, compression } => Ok(Arc::new(
            storage_fs::FilesystemBackend::open_async(storage_fs::FsConfig {
                max_payload_bytes: config.max_payload_bytes,
                execution: Default::default(),
                mode: config.mode,
                ..storage_fs::FsConfig::from_wal(path, *compression, wal)
            })
            .await?,
        )),
        #[cfg(feature = "rocksdb")]
        BackendConfig::RocksDB {
            path,
            compression,
            cache_size,
        } => {
            let rc = storage_rocksdb::RocksDBConfig {
                path: path.clone(),
                compression: *compression,
                cache_size: *cache_size,
                sync_writes: wal.enabled && wal.sync_interval.is_zero(),
                max_payload_bytes: config.max_payload_bytes,
                mode: config.mode,
                ..Default::default()
            };
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
            Ok(Arc::new(store))
        }
        #[cfg(feature = "sqlite")]
        BackendConfig::SQLite { path } => {
            let mut sc = storage_sqlite::SQLiteConfig::at(path);
            sc.max_payload_bytes = config.max_payload_bytes;
            sc.mode = config.mode;
            if wal.enabled && wal.sync_interval.is_zero() {
                sc.synchronous = storage_sqlite::SynchronousMode::Full;
            }
            Ok(Arc::new(storage_sqlite::SQLiteBackend::new(sc).await?))
        }
        #[allow(unreachable_patterns)]
        other => Err(missing_feature(other.name(), other.feature())),
    }
}

#[cfg(feature = "cache")]
fn wrap_cache(
    backend: Arc<dyn StorageBackend>,
    cache: Option<&CacheConfig>,
) -> Result<Arc<dyn StorageBackend>> {
    let Some(c) = cache else {
        return Ok(backend);
    };
    let config = storage_cache::CacheConfig {
        block_cache_size: c.block_cache_size,
        metadata_cache_size: c.index_cache_size,
        ttl: c.ttl,
        eviction_policy: match c.eviction_policy {
            EvictionPolicy::LRU => storage_cache::EvictionPolicy::LRU,
            EvictionPolicy::LFU => storage_cache::EvictionPolicy::LFU,
            EvictionPolicy::FIFO => storage_cache::EvictionPolicy::FIFO,
            EvictionPolicy::Random => storage_cache::EvictionPolicy::Random,
        },
        write_through: c.write_through,
        ..storage_cache::CacheConfig::default()
    };
    Ok(Arc::new(storage_cache::CachedStorageBackend::new(
        backend, config,
    )?))
}

#[cfg(not(feature = "cache"))]
fn wrap_cache(
    backend: Arc<dyn StorageBackend>,
    cache: Option<&CacheConfig>,
) -> Result<Arc<dyn StorageBackend>> {
    match cache {
        None => Ok(backend),
        Some(_) => Err(missing_feature("the read cache (cache_config)", "cache")),
    }
}
