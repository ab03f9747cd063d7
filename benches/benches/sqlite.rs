//! The seed's four operations on the SQLite backend, beside raw rusqlite running
//! the same SQL on one connection (no async hop, no pool, no block rebuilding), so
//! our overhead reads as a ratio.

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use storage_conformance::data::{self, READING};
use storage_core::{Block, BlockFilter, ListOptions, SortOrder, StorageBackend};
use storage_sqlite::{SQLiteBackend, SQLiteConfig};

/// A metadata row as raw rusqlite reads it.
type MetaRow = (Vec<u8>, i64, i64, String, Vec<u8>, i64);

/// Blocks per store before a fresh store is started (untimed).
const N: usize = 20_000;
const STRIDE: usize = 7919;

fn ours(rt: &tokio::runtime::Runtime, dir: &Path, name: &str) -> SQLiteBackend {
    let path = dir.join(format!("{name}.db"));
    let _ = std::fs::remove_file(&path);
    rt.block_on(SQLiteBackend::new(SQLiteConfig::at(path)))
        .expect("open")
}

/// A raw connection with the backend's schema and pragmas (created by the backend).
fn raw(rt: &tokio::runtime::Runtime, dir: &Path, name: &str) -> Connection {
    let store = ours(rt, dir, name);
    rt.block_on(store.close()).expect("close");
    let c = Connection::open(dir.join(format!("{name}.db"))).expect("raw open");
    c.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA cache_size = -65536; \
         PRAGMA temp_store = MEMORY;",
    )
    .expect("pragmas");
    c
}

/// The statements the backend runs per inserted block.
fn raw_insert(tx: &rusqlite::Transaction<'_>, b: &Block) {
    let existing: Option<Vec<u8>> = tx
        .prepare_cached("SELECT hash FROM blocks WHERE block_index = ?1")
        .unwrap()
        .query_row([b.index() as i64], |r| r.get(0))
        .optional()
        .unwrap();
    assert!(existing.is_none());
    let secs = (b.timestamp_nanos() / 1_000_000_000) as i64;
    tx.prepare_cached(
        "INSERT INTO blocks (block_index, hash, timestamp_ns, public_key, previous_hash, \
         payload_type, payload, signature, size_bytes) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )
    .unwrap()
    .execute(params![
        b.index() as i64,
        b.hash().as_bytes().as_slice(),
        b.timestamp_nanos() as i64,
        b.public_key().as_bytes().as_slice(),
        b.previous_hash().map(|h| h.as_bytes().to_vec()),
        b.payload_type(),
        b.payload(),
        b.signature().as_bytes().as_slice(),
        b.size_bytes() as i64,
    ])
    .unwrap();
    tx.prepare_cached(
        "INSERT INTO block_stats (date, block_count, total_size) VALUES (date(?1, 'unixepoch'), 1, ?2) \
         ON CONFLICT (date) DO UPDATE SET block_count = block_count + 1, total_size = total_size + excluded.total_size",
    )
    .unwrap()
    .execute(params![secs, b.size_bytes() as i64])
    .unwrap();
    let n: i64 = tx
        .prepare_cached(
            "INSERT INTO block_stats_keys (date, public_key, blocks) VALUES (date(?1, 'unixepoch'), ?2, 1) \
             ON CONFLICT (date, public_key) DO UPDATE SET blocks = blocks + 1 RETURNING blocks",
        )
        .unwrap()
        .query_row(params![secs, b.public_key().as_bytes().as_slice()], |r| r.get(0))
        .unwrap();
    if n == 1 {
        tx.prepare_cached("UPDATE block_stats SET unique_keys = unique_keys + 1 WHERE date = date(?1, 'unixepoch')")
            .unwrap()
            .execute([secs])
            .unwrap();
    }
}

fn list_options(i: u64) -> ListOptions {
    ListOptions {
        limit: Some(100),
        order: SortOrder::ByIndex,
        filter: Some(BlockFilter {
            payload_type: Some(READING.into()),
            min_index: Some((i * 131) % (N as u64 - 200)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn sqlite(c: &mut Criterion) {
    // The production default: a multi-thread runtime (SQLite calls run under
    // block_in_place; a current-thread runtime adds a ~30 µs blocking-pool hop).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let blocks = data::chain_with_note(N, 610);

    let full = ours(&rt, dir.path(), "full");
    rt.block_on(async {
        for chunk in blocks.chunks(1_000) {
            full.store_blocks(chunk).await.expect("fill");
        }
    });

    let mut g = c.benchmark_group("sqlite");
    g.throughput(Throughput::Elements(1));
    for step in [1usize, 100] {
        if step == 100 {
            g.throughput(Throughput::Elements(100));
        }
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
                        let store =
                            SQLiteBackend::new(SQLiteConfig::at(dir.join(format!("s{done}.db"))))
                                .await
                                .expect("open");
                        let want = ((iters - done) as usize).min(N / step);
                        let start = Instant::now();
                        for chunk in blocks.chunks(step).take(want) {
                            store.store_blocks(chunk).await.expect("store");
                        }
                        total += start.elapsed();
                        store.close().await.expect("close");
                        let _ = std::fs::remove_file(dir.join(format!("s{done}.db")));
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
                    let mut conn = raw(&rt, dir.path(), &format!("r{done}"));
                    let want = ((iters - done) as usize).min(N / step);
                    let start = Instant::now();
                    for chunk in blocks.chunks(step).take(want) {
                        let tx = conn
                            .transaction_with_behavior(TransactionBehavior::Immediate)
                            .unwrap();
                        for blk in chunk {
                            raw_insert(&tx, blk);
                        }
                        tx.commit().unwrap();
                    }
                    total += start.elapsed();
                    drop(conn);
                    let _ = std::fs::remove_file(dir.path().join(format!("r{done}.db")));
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
    let reader = Connection::open(dir.path().join("full.db")).expect("raw reader");
    g.bench_function("retrieve_one_raw", |b| {
        b.iter_custom(|iters| {
            let mut stmt = reader
                .prepare_cached(
                    "SELECT hash, block_index, timestamp_ns, public_key, previous_hash, payload_type, \
                     payload, signature FROM blocks WHERE hash = ?1",
                )
                .unwrap();
            let start = Instant::now();
            for i in 0..iters {
                let h = blocks[(i as usize * STRIDE) % N].hash();
                // The same eight columns the backend reads.
                let row = stmt
                    .query_row([h.as_bytes().as_slice()], |r| {
                        Ok((
                            r.get::<_, Vec<u8>>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, Vec<u8>>(3)?,
                            r.get::<_, Option<Vec<u8>>>(4)?,
                            r.get::<_, String>(5)?,
                            r.get::<_, Vec<u8>>(6)?,
                            r.get::<_, Vec<u8>>(7)?,
                        ))
                    })
                    .unwrap();
                std::hint::black_box(row);
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
                    let got = full.list_blocks(&list_options(i)).await.expect("list");
                    assert_eq!(got.len(), 100);
                }
                start.elapsed()
            }
        });
    });
    g.bench_function("list_100_filtered_raw", |b| {
        b.iter_custom(|iters| {
            let mut stmt = reader
                .prepare_cached(
                    "SELECT hash, block_index, timestamp_ns, payload_type, public_key, size_bytes FROM blocks \
                     WHERE block_index BETWEEN ?1 AND ?2 AND payload_type = ?3 ORDER BY block_index ASC \
                     LIMIT ?4 OFFSET ?5",
                )
                .unwrap();
            let start = Instant::now();
            for i in 0..iters {
                let lo = ((i * 131) % (N as u64 - 200)) as i64;
                let rows: Vec<MetaRow> = stmt
                    .query_map(params![lo, i64::MAX, READING, 100, 0], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
                    })
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap();
                assert_eq!(rows.len(), 100);
            }
            start.elapsed()
        });
    });
    g.finish();
    rt.block_on(full.close()).expect("close");
}

criterion_group!(benches, sqlite);
criterion_main!(benches);
