//! The filesystem backend: the seed's four operations (store one, store a batch of
//! 100, retrieve one, list 100), the synced variants (one fsync per write, shared
//! by group commit), sustained ingest of 1M blocks in batches of 1,000, and the
//! cold open of a store holding those 1M blocks.
//!
//! `OLOCUS_BENCH_BIG=0` skips the 1M-block ingest and cold open (a few minutes).

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use olocus_benches::{BULK_TYPE, bulk_blocks};
use storage_conformance::data::{self, READING};
use storage_core::{BlockFilter, CompressionType, ListOptions, SortOrder, StorageBackend};
use storage_fs::{Durability, FilesystemBackend, FsConfig};

const N: usize = 20_000;
const STRIDE: usize = 7919;
const BIG: u64 = 1_000_000;

fn config(path: &Path, durability: Durability) -> FsConfig {
    FsConfig {
        path: path.to_path_buf(),
        compression: CompressionType::None,
        durability,
        segment_size: 100 << 20,
    }
}

fn fs(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let blocks = data::chain_with_note(N, 610);
    let full = FilesystemBackend::open(config(&dir.path().join("full"), Durability::Buffered))
        .expect("open");
    rt.block_on(async {
        for chunk in blocks.chunks(1_000) {
            full.store_blocks(chunk).await.expect("fill");
        }
    });

    let mut g = c.benchmark_group("fs");
    for (durability, suffix) in [(Durability::Buffered, ""), (Durability::Sync, "_sync")] {
        for step in [1usize, 100] {
            g.throughput(Throughput::Elements(step as u64));
            let label = if step == 1 {
                "store_one"
            } else {
                "store_batch_100"
            };
            g.bench_function(format!("{label}{suffix}"), |b| {
                b.to_async(&rt).iter_custom(|iters| {
                    let (dir, blocks) = (dir.path(), &blocks);
                    async move {
                        let mut total = Duration::ZERO;
                        let mut done = 0u64;
                        while done < iters {
                            let path = dir.join(format!("s{step}{suffix}-{done}"));
                            let store =
                                FilesystemBackend::open(config(&path, durability)).expect("open");
                            let want = ((iters - done) as usize).min(N / step);
                            let start = Instant::now();
                            for chunk in blocks.chunks(step).take(want) {
                                store.store_blocks(chunk).await.expect("store");
                            }
                            total += start.elapsed();
                            store.close().await.expect("close");
                            let _ = std::fs::remove_dir_all(&path);
                            done += want as u64;
                        }
                        total
                    }
                });
            });
        }
    }

    g.throughput(Throughput::Elements(1));
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
                    assert_eq!(full.list_blocks(&opts).await.expect("list").len(), 100);
                }
                start.elapsed()
            }
        });
    });
    g.finish();

    if std::env::var("OLOCUS_BENCH_BIG").is_ok_and(|v| v == "0") {
        return;
    }
    // 1M blocks of ~650 bytes, signed once (both cores), ingested in batches of
    // 1,000 per sample; the last sample's store is then opened cold.
    let big = bulk_blocks(0, BIG, 650);
    let mut g = c.benchmark_group("fs_1m");
    g.sample_size(10);
    g.throughput(Throughput::Elements(BIG));
    let big_path = dir.path().join("big");
    g.bench_function("ingest_1m_batches_1000", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (big, big_path) = (&big, &big_path);
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let _ = std::fs::remove_dir_all(big_path);
                    let store = FilesystemBackend::open(config(big_path, Durability::Buffered))
                        .expect("open");
                    let start = Instant::now();
                    for chunk in big.chunks(1_000) {
                        store.store_blocks(chunk).await.expect("ingest");
                    }
                    total += start.elapsed();
                    store.close().await.expect("close");
                }
                total
            }
        });
    });
    drop(big);
    g.throughput(Throughput::Elements(1));
    g.bench_function("cold_open_1m", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let store = FilesystemBackend::open(config(&big_path, Durability::Buffered))
                    .expect("cold open");
                total += start.elapsed();
                assert_eq!(store.recovery().scanned_bytes, 0);
                // Dropped without close: nothing is written, the next open is as cold.
                drop(store);
            }
            total
        });
    });
    // A sanity check that the store is whole, outside the timing.
    let store = FilesystemBackend::open(config(&big_path, Durability::Buffered)).expect("open");
    rt.block_on(async {
        assert_eq!(store.count_blocks().await.expect("count"), BIG);
        let filter = ListOptions {
            limit: Some(1),
            filter: Some(BlockFilter {
                payload_type: Some(BULK_TYPE.into()),
                ..Default::default()
            }),
            order: SortOrder::Descending,
            ..Default::default()
        };
        assert_eq!(
            store.list_blocks(&filter).await.expect("list")[0].index,
            BIG - 1
        );
    });
    g.finish();
}

criterion_group!(benches, fs);
criterion_main!(benches);
