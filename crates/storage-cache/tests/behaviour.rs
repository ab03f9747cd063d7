//! Cache-specific promises beyond the conformance suite.

use std::sync::Arc;
use std::time::Duration;

use storage_cache::{CacheConfig, CachedStorageBackend, EvictionPolicy};
use storage_conformance::data;
use storage_core::{ErrorKind, StorageBackend};
use storage_memory::MemoryBackend;
use tokio::task::JoinSet;

fn cache(config: CacheConfig) -> CachedStorageBackend<MemoryBackend> {
    CachedStorageBackend::new(MemoryBackend::new(), config).unwrap()
}

#[tokio::test]
async fn memory_held_stays_within_ten_percent_of_the_budget() {
    const BUDGET: u64 = 1 << 20;
    let store = cache(CacheConfig::default().block_cache_size(BUDGET));
    // ~650-byte payloads: 6,000 blocks weigh about 5 MiB, five times the budget.
    let chain = data::chain_with_note(6_000, 610);
    for batch in chain.chunks(200) {
        store.store_blocks(batch).await.unwrap();
    }
    for b in chain.iter().step_by(3) {
        store.retrieve_block(&b.hash()).await.unwrap();
    }
    let stats = store.get_cache_stats();
    let per_entry = chain[0].size_bytes() + 32 + u64::from(storage_cache::ENTRY_OVERHEAD);
    let offered = per_entry * chain.len() as u64;
    assert!(offered > 4 * BUDGET, "the test must overfill the cache");
    assert!(
        stats.block_bytes <= BUDGET + BUDGET / 10,
        "cache holds {} bytes for a {BUDGET}-byte budget",
        stats.block_bytes
    );
    assert!(
        stats.block_bytes >= BUDGET / 2,
        "cache should be near full: {}",
        stats.block_bytes
    );
    assert!(stats.evictions > 0, "evictions must be counted: {stats:?}");
}

#[tokio::test]
async fn fifo_and_random_are_refused_not_remapped() {
    for policy in [EvictionPolicy::FIFO, EvictionPolicy::Random] {
        let err = CachedStorageBackend::new(
            MemoryBackend::new(),
            CacheConfig::default().eviction_policy(policy),
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Configuration);
        assert!(err.to_string().contains(&format!("{policy:?}")), "{err}");
    }
    for bad in [
        CacheConfig::default().block_cache_size(0),
        CacheConfig::default().ttl(Some(Duration::ZERO)),
        CacheConfig::default()
            .prefetch_enabled(true)
            .prefetch_size(0),
    ] {
        assert!(CachedStorageBackend::new(MemoryBackend::new(), bad).is_err());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counters_are_exact_under_concurrency() {
    let store = Arc::new(cache(CacheConfig::default()));
    let chain = data::chain(64);
    store.store_blocks(&chain[..32]).await.unwrap();
    let mut set = JoinSet::new();
    for t in 0..8usize {
        let (store, chain) = (store.clone(), chain.clone());
        set.spawn(async move {
            for i in 0..500usize {
                store
                    .retrieve_block(&chain[(i * 7 + t) % 64].hash())
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    let stats = store.get_cache_stats();
    assert_eq!(stats.hits + stats.misses, 8 * 500);
    // Blocks 0..32 are cached (write-through), 32..64 not stored: every lookup of
    // those misses and nothing else does.
    let unstored = (0..8usize)
        .flat_map(|t| (0..500usize).map(move |i| (i * 7 + t) % 64))
        .filter(|&i| i >= 32)
        .count() as u64;
    assert_eq!(stats.misses, unstored, "{stats:?}");
    assert!((stats.hit_ratio - stats.hits as f64 / 4000.0).abs() < 1e-9);
    assert_eq!(stats.writes, 1);
    store.clear_cache();
    let after = store.get_cache_stats();
    assert_eq!(
        (after.hits, after.misses, after.evictions),
        (stats.hits, stats.misses, stats.evictions),
        "clear_cache is not an eviction and keeps counters"
    );
    assert_eq!(after.block_bytes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleted_blocks_are_never_served_while_readers_race() {
    let store = Arc::new(cache(
        CacheConfig::default()
            .prefetch_enabled(true)
            .prefetch_size(32),
    ));
    let chain = data::chain(400);
    store.store_blocks(&chain).await.unwrap();
    let mut readers = JoinSet::new();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for t in 0..4usize {
        let (store, chain, stop) = (store.clone(), chain.clone(), stop.clone());
        readers.spawn(async move {
            let mut i = t;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let _ = store.retrieve_block(&chain[i % 400].hash()).await.unwrap();
                let _ = store
                    .get_blocks_by_range((i % 400) as u64, (i % 400 + 5) as u64)
                    .await
                    .unwrap();
                i += 13;
                tokio::task::yield_now().await;
            }
        });
    }
    for b in chain.iter().step_by(2) {
        assert!(store.delete_block(&b.hash()).await.unwrap());
        // Once delete returned, no reader's fill may resurrect the block.
        for _ in 0..3 {
            assert_eq!(
                store.retrieve_block(&b.hash()).await.unwrap(),
                None,
                "deleted block {} served",
                b.index()
            );
            assert!(
                !store.block_exists(&b.hash()).await.unwrap(),
                "deleted block {} exists",
                b.index()
            );
            tokio::task::yield_now().await;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    while let Some(r) = readers.join_next().await {
        r.unwrap();
    }
    for b in chain.iter().step_by(2) {
        assert_eq!(store.retrieve_block(&b.hash()).await.unwrap(), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_loads_neighbours_in_the_background() {
    let inner = MemoryBackend::new();
    let chain = data::chain(100);
    inner.store_blocks(&chain).await.unwrap();
    let store = CachedStorageBackend::new(
        inner,
        CacheConfig::default()
            .prefetch_enabled(true)
            .prefetch_size(10),
    )
    .unwrap();
    store.retrieve_block(&chain[50].hash()).await.unwrap();
    assert_eq!(store.get_cache_stats().misses, 1);
    // The prefetch runs in the background; wait for it (bounded).
    let mut waited = 0;
    while store.get_cache_stats().block_bytes < 10 * chain[0].size_bytes() && waited < 200 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        waited += 1;
    }
    for i in 46..=55 {
        store.retrieve_block(&chain[i].hash()).await.unwrap();
    }
    let stats = store.get_cache_stats();
    assert_eq!(
        (stats.hits, stats.misses),
        (10, 1),
        "neighbours 46..=55 should be hits: {stats:?}"
    );
}

#[tokio::test]
async fn failed_writes_cache_nothing_and_resize_is_live() {
    let store = cache(CacheConfig::default());
    let chain = data::chain(3);
    store.store_block(&chain[1]).await.unwrap();
    let rival = data::rival(&chain[1]);
    assert!(store.store_block(&rival).await.is_err());
    assert!(
        store
            .store_blocks(&[chain[0].clone(), rival.clone()])
            .await
            .is_err()
    );
    store.clear_cache();
    store.store_block(&chain[2]).await.unwrap();
    let before = store.get_cache_stats();
    assert_eq!(
        before.block_bytes,
        chain[2].size_bytes() + 32 + u64::from(storage_cache::ENTRY_OVERHEAD)
    );
    assert!(!store.block_exists(&rival.hash()).await.unwrap());

    // Shrink live below one entry: the cache empties; grow again: it refills.
    store
        .configure_cache(CacheConfig::default().block_cache_size(64))
        .unwrap();
    assert_eq!(store.get_cache_stats().block_bytes, 0);
    assert!(
        store
            .configure_cache(CacheConfig::default().eviction_policy(EvictionPolicy::FIFO))
            .is_err()
    );
    store.configure_cache(CacheConfig::default()).unwrap();
    store.retrieve_block(&chain[2].hash()).await.unwrap();
    store.retrieve_block(&chain[2].hash()).await.unwrap();
    assert!(store.get_cache_stats().hits > before.hits);
}
