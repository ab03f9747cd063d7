//! A byte-budgeted cache in front of SQLite: reads twice, prints hit/miss counts
//! and bytes held. Run: `cargo run -p storage-cache --example cached_sqlite`.

use std::time::{Duration, SystemTime};

use storage_cache::{CacheConfig, CachedStorageBackend, EvictionPolicy};
use storage_core::{Block, SigningKey, StorageBackend};
use storage_sqlite::{SQLiteBackend, SQLiteConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("olocus-cache-{}", std::process::id()));
    let sqlite = SQLiteBackend::new(SQLiteConfig::at(dir.join("chain.db"))).await?;
    let store = CachedStorageBackend::new(
        sqlite,
        CacheConfig::default()
            .block_cache_size(256 << 10)
            .eviction_policy(EvictionPolicy::LFU)
            .write_through(false)
            .prefetch_enabled(true)
            .prefetch_size(8),
    )?;
    let key = SigningKey::from_bytes(&[9; 32]);
    let t0 = SystemTime::now();
    let mut chain: Vec<Block> = Vec::new();
    for i in 0..2_000u64 {
        let prev = chain.last().map(Block::hash);
        let payload = vec![b'x'; 600];
        chain.push(Block::sign_raw(
            i,
            t0 + Duration::from_millis(i),
            prev,
            "example.blob/v1",
            payload,
            &key,
        )?);
    }
    store.store_blocks(&chain).await?;
    for round in 1..=2 {
        for b in &chain[100..160] {
            store.retrieve_block(&b.hash()).await?;
        }
        tokio::time::sleep(Duration::from_millis(20)).await; // let prefetches land
        let s = store.get_cache_stats();
        println!(
            "round {round}: {} hits, {} misses (ratio {:.2}), {} bytes of {} held, {} evictions",
            s.hits,
            s.misses,
            s.hit_ratio,
            s.block_bytes,
            store.cache_config().block_cache_size,
            s.evictions
        );
    }
    store.close().await?;
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}
