//! The cache over SQLite: retrieve on a hit, retrieve on a miss, and the same read
//! straight from SQLite for comparison.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use storage_cache::{CacheConfig, CachedStorageBackend};
use storage_conformance::data;
use storage_core::{Block, StorageBackend};
use storage_sqlite::{SQLiteBackend, SQLiteConfig};

const N: usize = 20_000;
/// Blocks kept hot for the hit benchmark (well inside the default 32 MiB budget).
const HOT: usize = 2_000;
const STRIDE: usize = 7919;

/// Reads `iters` blocks spread over the first `span` blocks.
async fn timed_reads(
    store: &dyn StorageBackend,
    blocks: &[Block],
    span: usize,
    iters: u64,
) -> Duration {
    let start = Instant::now();
    for i in 0..iters {
        let h = blocks[(i as usize * STRIDE) % span].hash();
        std::hint::black_box(store.retrieve_block(&h).await.expect("retrieve"));
    }
    start.elapsed()
}

fn cache(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let blocks = data::chain_with_note(N, 610);
    let sqlite = Arc::new(
        rt.block_on(SQLiteBackend::new(SQLiteConfig::at(
            dir.path().join("cache.db"),
        )))
        .expect("open"),
    );
    rt.block_on(async {
        for chunk in blocks.chunks(1_000) {
            sqlite.store_blocks(chunk).await.expect("fill");
        }
    });
    let warm = CachedStorageBackend::new(sqlite.clone(), CacheConfig::default()).expect("cache");
    // A budget of a few entries: random reads over 20,000 blocks almost always miss.
    let cold = CachedStorageBackend::new(
        sqlite.clone(),
        CacheConfig::default().block_cache_size(16 << 10),
    )
    .expect("cache");
    rt.block_on(async {
        for b in &blocks[..HOT] {
            warm.retrieve_block(&b.hash()).await.expect("warm up");
        }
    });

    let mut g = c.benchmark_group("cache_over_sqlite");
    g.bench_function("retrieve_hit", |b| {
        b.to_async(&rt)
            .iter_custom(|iters| timed_reads(&warm, &blocks, HOT, iters));
    });
    g.bench_function("retrieve_miss", |b| {
        b.to_async(&rt)
            .iter_custom(|iters| timed_reads(&cold, &blocks, N, iters));
    });
    g.bench_function("retrieve_sqlite_direct", |b| {
        b.to_async(&rt)
            .iter_custom(|iters| timed_reads(&*sqlite, &blocks, N, iters));
    });
    g.finish();
    let stats = cold.get_cache_stats();
    println!("miss bench: {} hits, {} misses", stats.hits, stats.misses);
}

criterion_group!(benches, cache);
criterion_main!(benches);
