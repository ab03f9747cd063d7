//! The seed's four operations on the RocksDB backend, beside raw `rocksdb` writing
//! and reading the same keys and values (same column families, same batch per
//! store, same seeks), so our overhead reads as a ratio.

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rocksdb::{ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch};
use storage_conformance::data::{self, READING};
use storage_core::{
    Block, BlockFilter, CompressionType, ListOptions, SortOrder, StorageBackend, WireFormat,
};
use storage_rocksdb::{RocksDBBackend, RocksDBConfig};

const N: usize = 20_000;
const STRIDE: usize = 7919;
const CFS: [&str; 7] = [
    "blocks", "metadata", "index", "by_time", "by_key", "by_type", "chain",
];

fn config(path: &Path) -> RocksDBConfig {
    RocksDBConfig {
        path: path.to_string_lossy().into_owned(),
        compression: CompressionType::Lz4,
        ..RocksDBConfig::default()
    }
}

fn raw_db(path: &Path) -> DB {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    let cfs = CFS.map(|n| ColumnFamilyDescriptor::new(n, opts.clone()));
    DB::open_cf_descriptors(&opts, path, cfs).expect("raw open")
}

/// The same batch our backend writes for one block.
fn raw_put(db: &DB, batch: &mut WriteBatch, b: &Block, count: u64) {
    let cf = |n| db.cf_handle(n).expect("cf");
    let idx = b.index().to_be_bytes();
    assert!(db.get_pinned_cf(cf("index"), idx).unwrap().is_none());
    let mut record = Vec::with_capacity(128);
    record.extend_from_slice(b.hash().as_bytes());
    record.extend_from_slice(&b.timestamp_nanos().to_be_bytes());
    record.extend_from_slice(&b.size_bytes().to_be_bytes());
    record.extend_from_slice(b.public_key().as_bytes());
    record.push(b.payload_type().len() as u8);
    record.extend_from_slice(b.payload_type().as_bytes());
    let k2 = |a: &[u8]| [a, &idx[..]].concat();
    batch.put_cf(
        cf("blocks"),
        b.hash().as_bytes(),
        WireFormat::BINARY.encode(b).unwrap(),
    );
    batch.put_cf(cf("metadata"), b.hash().as_bytes(), idx);
    batch.put_cf(cf("index"), idx, record);
    batch.put_cf(cf("by_time"), k2(&b.timestamp_nanos().to_be_bytes()), []);
    batch.put_cf(cf("by_key"), k2(b.public_key().as_bytes()), []);
    batch.put_cf(
        cf("by_type"),
        [b.payload_type().as_bytes(), &[0], &idx[..]].concat(),
        [],
    );
    batch.put_cf(cf("chain"), "count", count.to_be_bytes());
}

fn rocks(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let blocks = data::chain_with_note(N, 610);
    let full = RocksDBBackend::new(config(&dir.path().join("full"))).expect("open");
    rt.block_on(async {
        for chunk in blocks.chunks(1_000) {
            full.store_blocks(chunk).await.expect("fill");
        }
    });
    let raw_full = raw_db(&dir.path().join("raw_full"));
    for (i, chunk) in blocks.chunks(1_000).enumerate() {
        let mut batch = WriteBatch::default();
        for (j, b) in chunk.iter().enumerate() {
            raw_put(&raw_full, &mut batch, b, (i * 1000 + j) as u64);
        }
        raw_full.write(batch).unwrap();
    }

    let mut g = c.benchmark_group("rocksdb");
    for step in [1usize, 100] {
        g.throughput(Throughput::Elements(step as u64));
        let label = if step == 1 {
            "store_one"
        } else {
            "store_batch_100"
        };
        g.bench_function(label, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let (dir, blocks) = (dir.path(), &blocks);
                async move {
                    let mut total = Duration::ZERO;
                    let mut done = 0u64;
                    while done < iters {
                        let path = dir.join(format!("s{step}-{done}"));
                        let store = RocksDBBackend::new(config(&path)).expect("open");
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
        g.bench_function(format!("{label}_raw"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut done = 0u64;
                while done < iters {
                    let path = dir.path().join(format!("r{step}-{done}"));
                    let db = raw_db(&path);
                    let want = ((iters - done) as usize).min(N / step);
                    let start = Instant::now();
                    for (k, chunk) in blocks.chunks(step).take(want).enumerate() {
                        let mut batch = WriteBatch::default();
                        for (j, blk) in chunk.iter().enumerate() {
                            raw_put(&db, &mut batch, blk, (k * step + j) as u64);
                        }
                        db.write(batch).unwrap();
                    }
                    total += start.elapsed();
                    drop(db);
                    let _ = std::fs::remove_dir_all(&path);
                    done += want as u64;
                }
                total
            });
        });
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
    // The raw store encodes the block (`raw_put`), so the raw retrieve decodes it
    // back, with the same hash check (`decode_stored`): a block, not just bytes.
    g.bench_function("retrieve_one_raw", |b| {
        let cf = raw_full.cf_handle("blocks").unwrap();
        b.iter_custom(|iters| {
            let start = Instant::now();
            for i in 0..iters {
                let h = blocks[(i as usize * STRIDE) % N].hash();
                let v = raw_full.get_pinned_cf(cf, h.as_bytes()).unwrap().unwrap();
                std::hint::black_box(WireFormat::BINARY.decode_stored(&v, &h).unwrap());
            }
            start.elapsed()
        });
    });
    // Bytes only, no block: what the decode and hash check cost on top.
    g.bench_function("retrieve_one_raw_bytes", |b| {
        let cf = raw_full.cf_handle("blocks").unwrap();
        b.iter_custom(|iters| {
            let start = Instant::now();
            for i in 0..iters {
                let h = blocks[(i as usize * STRIDE) % N].hash();
                let v = raw_full.get_pinned_cf(cf, h.as_bytes()).unwrap().unwrap();
                std::hint::black_box(v.len());
            }
            start.elapsed()
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
    g.bench_function("list_100_filtered_raw", |b| {
        let (by_type, index) = (
            raw_full.cf_handle("by_type").unwrap(),
            raw_full.cf_handle("index").unwrap(),
        );
        b.iter_custom(|iters| {
            let start = Instant::now();
            for i in 0..iters {
                let lo = (i * 131) % (N as u64 - 200);
                let from = [READING.as_bytes(), &[0], &lo.to_be_bytes()[..]].concat();
                let snap = raw_full.snapshot();
                let mut n = 0;
                for item in snap.iterator_cf(by_type, IteratorMode::From(&from, Direction::Forward))
                {
                    let (k, _) = item.unwrap();
                    let idx = &k[k.len() - 8..];
                    let rec = snap.get_cf(index, idx).unwrap().unwrap();
                    std::hint::black_box(rec);
                    n += 1;
                    if n == 100 {
                        break;
                    }
                }
            }
            start.elapsed()
        });
    });
    g.finish();
}

criterion_group!(benches, rocks);
criterion_main!(benches);
