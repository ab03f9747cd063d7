//! The seed's four operations on the memory backend.

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use storage_conformance::data::{self, READING};
use storage_core::{Block, BlockFilter, ListOptions, SortOrder, StorageBackend};
use storage_memory::MemoryBackend;

/// Distinct blocks per store before a fresh store is started (untimed).
const N: usize = 20_000;
/// Step between retrieved indices: 7919 spreads reads over the whole store.
const STRIDE: usize = 7919;

/// Stores `count` blocks from `blocks` in steps of `step` (1 = `store_block`,
/// otherwise `store_blocks`), starting a fresh store whenever the blocks run out.
/// Only the stores are timed.
async fn timed_stores(blocks: &[Block], count: u64, step: usize) -> Duration {
    let mut total = Duration::ZERO;
    let mut done = 0u64;
    while done < count {
        let store = MemoryBackend::with_capacity(N);
        let want = ((count - done) as usize).min(N / step);
        let start = Instant::now();
        for chunk in blocks.chunks(step).take(want) {
            if step == 1 {
                store.store_block(&chunk[0]).await.expect("store");
            } else {
                store.store_blocks(chunk).await.expect("store batch");
            }
        }
        total += start.elapsed();
        done += want as u64;
    }
    total
}

fn memory(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let blocks = data::chain_with_note(N, 610);
    let full = MemoryBackend::with_capacity(N);
    rt.block_on(full.store_blocks(&blocks)).expect("fill");

    let mut g = c.benchmark_group("memory");
    g.throughput(Throughput::Elements(1));
    g.bench_function("store_one", |b| {
        b.to_async(&rt)
            .iter_custom(|iters| timed_stores(&blocks, iters, 1));
    });
    g.bench_function("retrieve_one", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (full, blocks) = (&full, &blocks);
            async move {
                let start = Instant::now();
                for i in 0..iters {
                    let h = blocks[(i as usize * STRIDE) % N].hash();
                    std::hint::black_box(full.retrieve_block(&h).await.expect("retrieve"));
                }
                start.elapsed()
            }
        });
    });
    g.throughput(Throughput::Elements(100));
    g.bench_function("store_batch_100", |b| {
        b.to_async(&rt)
            .iter_custom(|iters| timed_stores(&blocks, iters, 100));
    });
    g.bench_function("list_100_filtered", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let full = &full;
            async move {
                let start = Instant::now();
                for i in 0..iters {
                    let opts = ListOptions {
                        limit: Some(100),
                        order: SortOrder::ByIndex,
                        filter: Some(BlockFilter {
                            payload_type: Some(READING.into()),
                            min_index: Some((i * 131) % (N as u64 - 200)),
                            ..Default::default()
                        }),
                        ..Default::default()
                    };
                    let got = full.list_blocks(&opts).await.expect("list");
                    assert_eq!(got.len(), 100);
                    std::hint::black_box(got);
                }
                start.elapsed()
            }
        });
    });
    g.finish();
}

criterion_group!(benches, memory);
criterion_main!(benches);
