//! A read cache in front of any [`StorageBackend`]: [`CachedStorageBackend`], backed
//! by moka, budgeted in bytes, coherent under concurrency.
//!
//! # Per operation
//! | operation | behaviour |
//! |---|---|
//! | `retrieve_block`, `retrieve_blocks` | served from the block cache; misses go to the inner backend and fill the cache |
//! | `block_exists` | `true` from either cache, otherwise asks the inner backend |
//! | `store_block(s)` | write-through: fills the cache after the inner write succeeded; write-around: does not |
//! | `get_blocks_by_range` | reads the inner backend, fills the cache with the result |
//! | `list_blocks` | reads the inner backend, fills the metadata cache (which answers `block_exists` for listed blocks) |
//! | `delete_block` | deletes in the inner backend, then drops the block from both caches |
//! | `compact`, `vacuum`, `close` | run on the inner backend, then empty both caches |
//! | `count_blocks`, `get_chain_head`, `set_chain_head`, `get_stats` | pass through (nothing cached, so nothing stale) |
//!
//! # Coherence
//! Blocks are immutable, so the only stale answer a cache could give is a block that
//! has since been deleted. Every invalidation (delete, compact, vacuum, close,
//! [`CachedStorageBackend::clear_cache`]) bumps an epoch and removes entries while
//! holding a gate exclusively; a fill notes the epoch *before* it reads the inner
//! backend, and inserts only if, holding the gate shared, the epoch has not moved.
//! So a fill that read a block before its deletion either inserts before the
//! invalidation removes it, or sees the new epoch and inserts nothing: a deleted
//! block is never served once `delete_block` has returned, not even briefly.
//! Lookups do not touch the gate. A failed inner write fills nothing.
//!
//! # Budget
//! Both caches weigh entries in bytes: the block's canonical size (or the
//! metadata's fields), the 32-byte key and [`ENTRY_OVERHEAD`]. moka evicts by that
//! weight (LRU or TinyLFU), so memory held stays near the configured budget.
//!
//! ```
//! # tokio::runtime::Builder::new_multi_thread().build().unwrap().block_on(async {
//! use storage_cache::{CacheConfig, CachedStorageBackend};
//! use storage_memory::MemoryBackend;
//! let store = CachedStorageBackend::new(MemoryBackend::new(), CacheConfig::default())?;
//! assert_eq!(store.get_cache_stats().hits, 0);
//! # Ok::<(), storage_core::StorageError>(())
//! # }).unwrap();
//! ```

// Library code returns errors; tests may unwrap (see clippy.toml).
#![warn(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use moka::notification::RemovalCause;
use moka::sync::Cache;
use serde::{Deserialize, Serialize};
use storage_core::raw::{Engine, Gate};
use storage_core::{
    Block, BlockHash, BlockMetadata, Capabilities, ListOptions, Result, StorageBackend,
    StorageError, StorageStats,
};
use tokio::sync::Semaphore;

/// Bytes charged per cache entry on top of its key and value: moka's entry and
/// our `Arc`ed block header.
pub const ENTRY_OVERHEAD: u32 = 160;

/// Prefetches allowed in flight at once; further misses skip prefetching.
const PREFETCH_SLOTS: usize = 2;

/// How entries are chosen for eviction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EvictionPolicy {
    /// Least recently used (moka's LRU).
    LRU,
    /// Least frequently used: moka's TinyLFU (frequency sketch with LRU windows).
    LFU,
    /// First in, first out: not offered by moka; refused.
    FIFO,
    /// Random eviction: not offered by moka; refused.
    Random,
}

/// Cache settings. Sizes are in bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct CacheConfig {
    /// Byte budget of the block cache.
    pub block_cache_size: u64,
    /// Byte budget of the metadata cache.
    pub metadata_cache_size: u64,
    /// Entries expire this long after insertion; `None`: never.
    pub ttl: Option<Duration>,
    /// LRU or LFU (FIFO and Random are refused).
    pub eviction_policy: EvictionPolicy,
    /// Fill the cache on successful stores (`false`: write-around).
    pub write_through: bool,
    /// On a miss, load neighbouring indices in the background.
    pub prefetch_enabled: bool,
    /// How many neighbouring indices a prefetch loads (half before, half after).
    pub prefetch_size: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            block_cache_size: 32 << 20,
            metadata_cache_size: 8 << 20,
            ttl: None,
            eviction_policy: EvictionPolicy::LRU,
            write_through: true,
            prefetch_enabled: false,
            prefetch_size: 16,
        }
    }
}

impl CacheConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(StorageError::Configuration(format!("cache: {m}")));
        if self.block_cache_size == 0 || self.metadata_cache_size == 0 {
            return bad("block_cache_size and metadata_cache_size must be positive (bytes)");
        }
        if self
            .ttl
            .is_some_and(|t| t.is_zero() || t > Duration::from_secs(100 * 365 * 86_400))
        {
            return bad("ttl must be positive and under 100 years (None disables expiry)");
        }
        match self.eviction_policy {
            EvictionPolicy::LRU | EvictionPolicy::LFU => {}
            p => {
                return bad(&format!(
                    "eviction policy {p:?} is not available: moka implements LRU and LFU (TinyLFU)"
                ));
            }
        }
        if self.prefetch_enabled && self.prefetch_size == 0 {
            return bad("prefetch_size must be positive when prefetch is enabled");
        }
        Ok(())
    }
}

/// Cache counters, exact under concurrency.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that went to the inner backend.
    pub misses: u64,
    /// Entries evicted for size or expiry (not explicit invalidations).
    pub evictions: u64,
    /// Store calls that reached the inner backend successfully.
    pub writes: u64,
    /// `hits / (hits + misses)`, 0 when there were no lookups.
    pub hit_ratio: f64,
    /// Bytes (by the weigher) held in the block cache.
    pub block_bytes: u64,
    /// Bytes (by the weigher) held in the metadata cache.
    pub metadata_bytes: u64,
}

#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    writes: AtomicU64,
}

struct Caches {
    blocks: Cache<BlockHash, Block>,
    meta: Cache<BlockHash, BlockMetadata>,
}

struct Shared<B> {
    inner: B,
    caches: RwLock<Caches>,
    config: RwLock<CacheConfig>,
    counters: Arc<Counters>,
    /// Moves on every invalidation; see the module docs.
    epoch: AtomicU64,
    /// Held shared by fills (check epoch, insert), exclusively by invalidations
    /// (bump epoch, remove), so no fill can insert after an invalidation it missed.
    gate: RwLock<()>,
    /// Refuses calls after close; shared by clones.
    lifecycle: Gate,
    prefetch_slots: Arc<Semaphore>,
}

/// A [`StorageBackend`] that caches another one. Cheap to clone; clones share the
/// cache.
pub struct CachedStorageBackend<B> {
    shared: Arc<Shared<B>>,
}

impl<B> Clone for CachedStorageBackend<B> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<B: StorageBackend> std::fmt::Debug for CachedStorageBackend<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedStorageBackend")
            .field("inner", &self.shared.inner)
            .field("stats", &self.get_cache_stats())
            .finish()
    }
}

/// Counts size and expiry evictions (not explicit invalidations or replacements).
fn count_evictions<K, V>(
    counters: Arc<Counters>,
) -> impl Fn(Arc<K>, V, RemovalCause) + Send + Sync + 'static {
    move |_k, _v, cause| {
        if matches!(cause, RemovalCause::Size | RemovalCause::Expired) {
            counters.evictions.fetch_add(1, SeqCst);
        }
    }
}

fn build_caches(c: &CacheConfig, counters: &Arc<Counters>) -> Caches {
    let policy = match c.eviction_policy {
        EvictionPolicy::LFU => moka::policy::EvictionPolicy::tiny_lfu(),
        _ => moka::policy::EvictionPolicy::lru(),
    };
    let mut blocks = Cache::builder()
        .max_capacity(c.block_cache_size)
        .eviction_policy(policy.clone())
        .weigher(|_k: &BlockHash, b: &Block| {
            u32::try_from(b.size_bytes())
                .unwrap_or(u32::MAX)
                .saturating_add(32 + ENTRY_OVERHEAD)
        })
        .eviction_listener(count_evictions(counters.clone()));
    let mut meta = Cache::builder()
        .max_capacity(c.metadata_cache_size)
        .eviction_policy(policy)
        .weigher(|_k: &BlockHash, m: &BlockMetadata| {
            (size_of::<BlockMetadata>() + m.payload_type.len()) as u32 + 32 + ENTRY_OVERHEAD
        })
        .eviction_listener(count_evictions(counters.clone()));
    if let Some(ttl) = c.ttl {
        blocks = blocks.time_to_live(ttl);
        meta = meta.time_to_live(ttl);
    }
    Caches {
        blocks: blocks.build(),
        meta: meta.build(),
    }
}

impl<B: StorageBackend> CachedStorageBackend<B> {
    /// Wraps `inner` with a cache configured by `config`.
    pub fn new(inner: B, config: CacheConfig) -> Result<Self> {
        config.validate()?;
        let counters = Arc::new(Counters::default());
        let caches = build_caches(&config, &counters);
        Ok(Self {
            shared: Arc::new(Shared {
                inner,
                caches: RwLock::new(caches),
                config: RwLock::new(config),
                counters,
                epoch: AtomicU64::new(0),
                gate: RwLock::new(()),
                lifecycle: Gate::new(),
                prefetch_slots: Arc::new(Semaphore::new(PREFETCH_SLOTS)),
            }),
        })
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.shared.inner
    }

    /// Current counters and sizes (after moka's pending maintenance).
    pub fn get_cache_stats(&self) -> CacheStats {
        let c = &self.shared.counters;
        let caches = self.shared.caches();
        caches.blocks.run_pending_tasks();
        caches.meta.run_pending_tasks();
        let (hits, misses) = (c.hits.load(SeqCst), c.misses.load(SeqCst));
        CacheStats {
            hits,
            misses,
            evictions: c.evictions.load(SeqCst),
            writes: c.writes.load(SeqCst),
            hit_ratio: if hits + misses == 0 {
                0.0
            } else {
                hits as f64 / (hits + misses) as f64
            },
            block_bytes: caches.blocks.weighted_size(),
            metadata_bytes: caches.meta.weighted_size(),
        }
    }

    /// Resets hits, misses, evictions and writes to zero.
    pub fn reset_cache_stats(&self) {
        let c = &self.shared.counters;
        for n in [&c.hits, &c.misses, &c.evictions, &c.writes] {
            n.store(0, SeqCst);
        }
    }

    /// Empties both caches. Counters are kept (see [`Self::reset_cache_stats`]).
    pub fn clear_cache(&self) {
        self.shared.invalidate_all();
    }

    /// Applies a new configuration live: budgets, policy and TTL take effect at
    /// once; entries are carried over (and evicted down to a smaller budget).
    pub fn configure_cache(&self, config: CacheConfig) -> Result<()> {
        config.validate()?;
        let fresh = build_caches(&config, &self.shared.counters);
        let mut caches = self
            .shared
            .caches
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        for (k, v) in caches.blocks.iter() {
            fresh.blocks.insert(*k, v);
        }
        for (k, v) in caches.meta.iter() {
            fresh.meta.insert(*k, v);
        }
        fresh.blocks.run_pending_tasks();
        fresh.meta.run_pending_tasks();
        *caches = fresh;
        *self
            .shared
            .config
            .write()
            .unwrap_or_else(PoisonError::into_inner) = config;
        Ok(())
    }

    /// The configuration in use.
    pub fn cache_config(&self) -> CacheConfig {
        self.shared.config().clone()
    }

    /// Starts a background load of the indices around `block`, if allowed.
    fn prefetch_around(&self, block: &Block) {
        let (enabled, size) = {
            let c = self.shared.config();
            (c.prefetch_enabled, c.prefetch_size as u64)
        };
        if !enabled {
            return;
        }
        let Ok(permit) = self.shared.prefetch_slots.clone().try_acquire_owned() else {
            return;
        };
        let shared = self.shared.clone();
        let lo = block.index().saturating_sub(size / 2);
        let hi = block.index().saturating_add(size - size / 2);
        tokio::spawn(async move {
            let _permit = permit;
            let epoch = shared.epoch.load(SeqCst);
            if let Ok(blocks) = shared.inner.get_blocks_by_range(lo, hi).await {
                shared.fill(epoch, &blocks);
            }
        });
    }
}

impl<B: StorageBackend> Shared<B> {
    fn caches(&self) -> std::sync::RwLockReadGuard<'_, Caches> {
        self.caches.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn config(&self) -> std::sync::RwLockReadGuard<'_, CacheConfig> {
        self.config.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Caches blocks read (or written) while the epoch was `epoch`, unless an
    /// invalidation has run since (see the module docs).
    fn fill(&self, epoch: u64, blocks: &[Block]) {
        if blocks.is_empty() {
            return;
        }
        let _gate = self.gate.read().unwrap_or_else(PoisonError::into_inner);
        if self.epoch.load(SeqCst) != epoch || self.lifecycle.is_closed() {
            return;
        }
        let caches = self.caches();
        // Only the block: `block_exists` consults both caches, so a metadata copy
        // would cost a second insert per miss for nothing.
        for b in blocks {
            caches.blocks.insert(b.hash(), b.clone());
        }
    }

    fn fill_meta(&self, epoch: u64, metas: &[BlockMetadata]) {
        if metas.is_empty() {
            return;
        }
        let _gate = self.gate.read().unwrap_or_else(PoisonError::into_inner);
        if self.epoch.load(SeqCst) != epoch || self.lifecycle.is_closed() {
            return;
        }
        let caches = self.caches();
        for m in metas {
            caches.meta.insert(m.hash, m.clone());
        }
    }

    fn invalidate(&self, hash: &BlockHash) {
        let _gate = self.gate.write().unwrap_or_else(PoisonError::into_inner);
        self.epoch.fetch_add(1, SeqCst);
        let caches = self.caches();
        caches.blocks.invalidate(hash);
        caches.meta.invalidate(hash);
    }

    fn invalidate_all(&self) {
        let _gate = self.gate.write().unwrap_or_else(PoisonError::into_inner);
        self.epoch.fetch_add(1, SeqCst);
        let caches = self.caches();
        caches.blocks.invalidate_all();
        caches.meta.invalidate_all();
    }

    fn lookup(&self, hash: &BlockHash) -> Option<Block> {
        let hit = self.caches().blocks.get(hash);
        let counter = if hit.is_some() {
            &self.counters.hits
        } else {
            &self.counters.misses
        };
        counter.fetch_add(1, SeqCst);
        hit
    }
}

const NAME: &str = "cache";

#[deny(clippy::missing_trait_methods)]
impl<B: StorageBackend> Engine for CachedStorageBackend<B> {
    fn name(&self) -> &str {
        NAME
    }

    fn gate(&self) -> &Gate {
        &self.shared.lifecycle
    }

    fn supported(&self) -> Capabilities {
        self.shared.inner.capabilities()
    }

    fn max_payload_bytes(&self) -> usize {
        // The inner store applies its own (possibly lower) limit.
        storage_core::MAX_PAYLOAD_BYTES
    }

    async fn read_block(&self, hash: &BlockHash) -> Result<Option<Block>> {
        if let Some(b) = self.shared.lookup(hash) {
            return Ok(Some(b));
        }
        let epoch = self.shared.epoch.load(SeqCst);
        let got = self.shared.inner.retrieve_block(hash).await?;
        if let Some(b) = &got {
            self.shared.fill(epoch, std::slice::from_ref(b));
            self.prefetch_around(b);
        }
        Ok(got)
    }

    async fn remove_block(&self, hash: &BlockHash) -> Result<bool> {
        let result = self.shared.inner.delete_block(hash).await;
        // Invalidate even if the inner call failed: its state is unknown.
        self.shared.invalidate(hash);
        result
    }

    async fn has_block(&self, hash: &BlockHash) -> Result<bool> {
        let cached = {
            let caches = self.shared.caches();
            caches.blocks.contains_key(hash) || caches.meta.contains_key(hash)
        };
        let counter = if cached {
            &self.shared.counters.hits
        } else {
            &self.shared.counters.misses
        };
        counter.fetch_add(1, SeqCst);
        if cached {
            return Ok(true);
        }
        self.shared.inner.block_exists(hash).await
    }

    async fn write_blocks(&self, blocks: &[Block]) -> Result<()> {
        let epoch = self.shared.epoch.load(SeqCst);
        self.shared.inner.store_blocks(blocks).await?;
        self.shared.counters.writes.fetch_add(1, SeqCst);
        if self.shared.config().write_through {
            self.shared.fill(epoch, blocks);
        }
        Ok(())
    }

    async fn read_blocks(&self, hashes: &[BlockHash]) -> Result<Vec<Option<Block>>> {
        let mut out: Vec<Option<Block>> = hashes.iter().map(|h| self.shared.lookup(h)).collect();
        let missing: Vec<BlockHash> = hashes
            .iter()
            .zip(&out)
            .filter(|(_, got)| got.is_none())
            .map(|(h, _)| *h)
            .collect();
        if missing.is_empty() {
            return Ok(out);
        }
        let epoch = self.shared.epoch.load(SeqCst);
        let fetched = self.shared.inner.retrieve_blocks(&missing).await?;
        let found: Vec<Block> = fetched.iter().flatten().cloned().collect();
        let mut fetched = fetched.into_iter();
        for slot in out.iter_mut().filter(|s| s.is_none()) {
            *slot = fetched.next().flatten();
        }
        self.shared.fill(epoch, &found);
        Ok(out)
    }

    async fn list(&self, options: &ListOptions) -> Result<Vec<BlockMetadata>> {
        let epoch = self.shared.epoch.load(SeqCst);
        let listed = self.shared.inner.list_blocks(options).await?;
        self.shared.fill_meta(epoch, &listed);
        Ok(listed)
    }

    async fn count(&self) -> Result<u64> {
        self.shared.inner.count_blocks().await
    }

    async fn head(&self) -> Result<Option<BlockHash>> {
        self.shared.inner.get_chain_head().await
    }

    async fn write_head(&self, hash: &BlockHash) -> Result<()> {
        self.shared.inner.set_chain_head(hash).await
    }

    async fn read_range(&self, start: u64, end: u64) -> Result<Vec<Block>> {
        let epoch = self.shared.epoch.load(SeqCst);
        let blocks = self.shared.inner.get_blocks_by_range(start, end).await?;
        self.shared.fill(epoch, &blocks);
        Ok(blocks)
    }

    async fn run_compaction(&self) -> Result<()> {
        let result = self.shared.inner.compact().await;
        self.shared.invalidate_all();
        result
    }

    async fn run_vacuum(&self) -> Result<()> {
        let result = self.shared.inner.vacuum().await;
        self.shared.invalidate_all();
        result
    }

    async fn stats(&self) -> Result<StorageStats> {
        self.shared.inner.get_stats().await
    }

    async fn shutdown(&self) -> Result<()> {
        self.shared.invalidate_all();
        self.shared.inner.close().await
    }

    async fn integrity_check(&self) -> Result<()> {
        self.shared.inner.check_integrity().await
    }
}

storage_core::setters!(CacheConfig {
    block_cache_size: u64,
    metadata_cache_size: u64,
    ttl: Option<Duration>,
    eviction_policy: EvictionPolicy,
    write_through: bool,
    prefetch_enabled: bool,
    prefetch_size: usize,
});

// The README's examples are compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
