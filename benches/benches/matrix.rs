//! The benchmark matrix: every backend (memory, filesystem, RocksDB, SQLite, the
//! cache over SQLite) × every operation (`olocus_benches::spec::Op`), beside raw
//! `rocksdb` and raw `rusqlite` doing the same writes and reads of the same bytes.
//!
//! The object-store rows (`object`, and raw `object_store` as `object_raw`) run
//! against the SeaweedFS cluster named by `OLOCUS_S3_*` (`cargo xtask bench`
//! starts one); without those variables they are left out, with a message.
//!
//! With the `peers` feature and `OLOCUS_BENCH_PEERS=1` (`cargo xtask bench
//! --peers`), the stores a user could pick instead (redb, fjall, LMDB, SQLite
//! with a hand-written schema; `olocus_benches::peers`) run the same batched
//! writes, reads, ingest and cold open beside ours.
//!
//! Besides criterion's timings, the run writes what criterion cannot measure to
//! `OLOCUS_BENCH_OUT` (when set): each ingested store's bytes on disk
//! (`disk/<subject>.json`) and whether cold opens ran with the page cache
//! dropped (`cold_open.json`).
//!
//! Criterion ids are `<op>/<subject>`. Run it with `cargo xtask bench`, which
//! also writes the report; or directly, selecting with `OLOCUS_BENCH_BACKENDS`,
//! `OLOCUS_BENCH_OPS` (comma-separated names) and `OLOCUS_BENCH_QUICK=1`.
//!
//! Data: `storage_conformance::data::chain_with_note(20_000, 610)` (signed blocks
//! with ~650-byte payloads, two signers, two payload types) for the single-block
//! operations; `olocus_benches::bulk_blocks` (~650-byte payloads) for ingest and
//! cold open. Async operations run on a two-worker tokio runtime through
//! criterion's async support.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkGroup, Criterion, Throughput, measurement::WallTime};
use olocus_benches::spec::{
    BIG, BIG_QUICK, CONCURRENT_WRITERS, FULL, HUGE, HUGE_QUICK, Op, Subject,
};
use olocus_benches::{BULK_TYPE, bulk_blocks, drop_page_cache, raw, resident_kib};
use storage_conformance::data::{self, READING};
use storage_core::{Block, CompressionType, ListOptions, SortOrder, StorageBackend};

/// Spreads random reads over the store.
const STRIDE: usize = 7919;

struct Setup {
    rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    small: Arc<Vec<Block>>,
    big: u64,
    /// Blocks of the `cold_open_10m` store.
    huge: u64,
    /// Where the figures criterion does not keep go (`OLOCUS_BENCH_OUT`).
    out: Option<PathBuf>,
}

/// Writes `value` as `<OLOCUS_BENCH_OUT>/<name>.json`, if the run has one.
fn record(env: &Setup, name: &str, value: serde_json::Value) {
    let Some(out) = &env.out else { return };
    let path = out.join(format!("{name}.json"));
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("output directory");
    std::fs::write(&path, value.to_string()).expect("writing a figure");
}

/// Bytes allocated on disk under `path` (a file or a directory), and in the
/// SQLite files beside it (`path.db`, its log and shared memory).
fn disk_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fn walk(p: &Path) -> u64 {
        match std::fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => std::fs::read_dir(p)
                .map(|d| d.flatten().map(|e| walk(&e.path())).sum())
                .unwrap_or(0),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        }
    }
    walk(path)
        + ["db", "db-wal", "db-shm"]
            .iter()
            .map(|ext| walk(&path.with_extension(ext)))
            .sum::<u64>()
}

fn list_options(i: u64) -> ListOptions {
    ListOptions::new()
        .limit(100)
        .order(SortOrder::ByIndex)
        .payload_type(READING)
        .min_index((i * 131) % (FULL as u64 - 300))
}

fn range_start(i: u64) -> u64 {
    (i * 131) % (FULL as u64 - 10_000)
}

// ---------------------------------------------------------------------------
// Our backends
// ---------------------------------------------------------------------------

/// The chain prefix in the cluster's bucket for a store at `path`: the temp dir's
/// name keeps runs apart.
fn object_prefix(path: &Path) -> String {
    let mut parts = path.iter().rev().take(2).map(|p| p.to_string_lossy());
    let leaf = parts.next().unwrap_or_default();
    let run = parts.next().unwrap_or_default();
    format!("bench/{run}/{leaf}")
}

async fn open_object(path: &Path) -> storage_object::ObjectStoreBackend {
    let config = storage_object::ObjectStoreConfig::from_cluster_env(&object_prefix(path))
        .expect("the object rows run only with the cluster's variables set");
    storage_object::ObjectStoreBackend::open(config)
        .await
        .expect("object open")
}

/// Deletes every object of the store at `path` (object stores only).
async fn wipe_object(path: &Path) {
    use futures::{StreamExt, TryStreamExt};
    let store = open_object(path).await.object_store();
    let all: Vec<_> = store
        .list(None)
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .expect("list");
    let paths = futures::stream::iter(all.into_iter().map(Ok)).boxed();
    store
        .delete_stream(paths)
        .try_collect::<Vec<_>>()
        .await
        .expect("delete");
    // SeaweedFS frees deleted objects' space only when their volumes are
    // compacted: without this, repeated 1M-block ingests fill the cluster.
    if let Ok(master) = std::env::var(seaweed_cluster::MASTER_ENV) {
        tokio::task::spawn_blocking(move || seaweed_cluster::vacuum(&master))
            .await
            .expect("vacuum task")
            .expect("vacuum");
    }
}

async fn open_ours(s: Subject, path: &Path, durable: bool) -> Arc<dyn StorageBackend> {
    let execution = if s.on_pool() {
        storage_core::Execution::BlockingPool
    } else {
        storage_core::Execution::Inline
    };
    match s.backend() {
        Subject::Object => Arc::new(open_object(path).await),
        Subject::Memory => Arc::new(storage_memory::MemoryBackend::new()),
        Subject::Fs => Arc::new(
            storage_fs::FilesystemBackend::open(
                storage_fs::FsConfig::new(path.to_path_buf())
                    .compression(CompressionType::None)
                    .durability(if durable {
                        storage_fs::Durability::Sync
                    } else {
                        storage_fs::Durability::Buffered
                    })
                    .segment_size(100 << 20)
                    .max_payload_bytes(storage_core::MAX_PAYLOAD_BYTES)
                    .execution(execution)
                    .mode(Default::default()),
            )
            .expect("fs open"),
        ),
        Subject::Rocksdb => Arc::new(
            storage_rocksdb::RocksDBBackend::new(
                storage_rocksdb::RocksDBConfig::new(path.to_string_lossy().into_owned())
                    .compression(CompressionType::Lz4)
                    .sync_writes(durable)
                    .execution(execution),
            )
            .expect("rocksdb open"),
        ),
        Subject::Sqlite | Subject::CacheSqlite => {
            let mut c = storage_sqlite::SQLiteConfig::at(path.with_extension("db"));
            c.execution = execution;
            if durable {
                c.synchronous = storage_sqlite::SynchronousMode::Full;
            }
            let sqlite = storage_sqlite::SQLiteBackend::new(c)
                .await
                .expect("sqlite open");
            if s == Subject::CacheSqlite {
                Arc::new(
                    storage_cache::CachedStorageBackend::new(
                        sqlite,
                        storage_cache::CacheConfig::default(),
                    )
                    .expect("cache"),
                )
            } else {
                Arc::new(sqlite)
            }
        }
        Subject::RocksdbRaw
        | Subject::SqliteRaw
        | Subject::ObjectRaw
        | Subject::FsPool
        | Subject::RocksdbPool
        | Subject::SqlitePool
        | Subject::Redb
        | Subject::Fjall
        | Subject::Lmdb
        | Subject::SqliteHand => {
            unreachable!(
                "raw engines and peers are not our backends; pool rows map to their backend"
            )
        }
    }
}

fn remove(path: &Path) {
    let _ = std::fs::remove_dir_all(path);
    let _ = std::fs::remove_file(path.with_extension("db"));
    for ext in ["db-wal", "db-shm"] {
        let _ = std::fs::remove_file(path.with_extension(ext));
    }
}

/// Writes `step` blocks per call into fresh stores; only the writes are timed.
fn bench_store(
    g: &mut BenchmarkGroup<'_, WallTime>,
    env: &Setup,
    s: Subject,
    step: usize,
    durable: bool,
) {
    let counter = std::sync::atomic::AtomicU64::new(0);
    g.bench_function(s.name(), |b| {
        b.to_async(&env.rt).iter_custom(|iters| {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (dir, blocks) = (env.dir.path(), &env.small);
            async move {
                let mut total = Duration::ZERO;
                let mut done = 0u64;
                while done < iters {
                    let path = dir.join(format!("w-{}-{step}-{durable}-{n}-{done}", s.name()));
                    let store = open_ours(s, &path, durable).await;
                    let want = ((iters - done) as usize).min(FULL / step);
                    let start = Instant::now();
                    for chunk in blocks.chunks(step).take(want) {
                        store.store_blocks(chunk).await.expect("store");
                    }
                    total += start.elapsed();
                    store.close().await.expect("close");
                    drop(store);
                    remove(&path);
                    done += want as u64;
                }
                total
            }
        });
    });
}

/// `CONCURRENT_WRITERS` tasks each store one block, synced, at once; an
/// iteration ends when all are acknowledged. Fresh stores; only writes are timed.
fn bench_concurrent_store(g: &mut BenchmarkGroup<'_, WallTime>, env: &Setup, s: Subject) {
    let counter = std::sync::atomic::AtomicU64::new(0);
    g.bench_function(s.name(), |b| {
        b.to_async(&env.rt).iter_custom(|iters| {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (dir, blocks) = (env.dir.path(), &env.small);
            async move {
                let mut total = Duration::ZERO;
                let mut done = 0u64;
                while done < iters {
                    let path = dir.join(format!("c-{}-{n}-{done}", s.name()));
                    let store = open_ours(s, &path, true).await;
                    let want = ((iters - done) as usize).min(FULL / CONCURRENT_WRITERS);
                    let start = Instant::now();
                    for group in blocks.chunks(CONCURRENT_WRITERS).take(want) {
                        let writes: Vec<_> = group
                            .iter()
                            .map(|b| {
                                let (store, b) = (store.clone(), b.clone());
                                tokio::spawn(async move { store.store_block(&b).await })
                            })
                            .collect();
                        for w in writes {
                            w.await.expect("writer task").expect("store");
                        }
                    }
                    total += start.elapsed();
                    store.close().await.expect("close");
                    drop(store);
                    remove(&path);
                    done += want as u64;
                }
                total
            }
        });
    });
}

fn bench_reads(
    g: &mut BenchmarkGroup<'_, WallTime>,
    env: &Setup,
    s: Subject,
    op: Op,
    full: &Arc<dyn StorageBackend>,
) {
    g.bench_function(s.name(), |b| {
        b.to_async(&env.rt).iter_custom(|iters| {
            let (full, blocks) = (full.clone(), &env.small);
            async move {
                let start = Instant::now();
                for i in 0..iters {
                    match op {
                        Op::RetrieveOne => {
                            let h = blocks[(i as usize * STRIDE) % FULL].hash();
                            std::hint::black_box(full.retrieve_block(&h).await.expect("retrieve"));
                        }
                        Op::RetrieveConcurrent100 => {
                            let reads = (0..100).map(|k| {
                                let h = blocks[((i as usize * 100 + k) * STRIDE) % FULL].hash();
                                let full = full.clone();
                                async move { full.retrieve_block(&h).await }
                            });
                            for got in futures::future::join_all(reads).await {
                                std::hint::black_box(got.expect("retrieve").expect("stored"));
                            }
                        }
                        Op::List100 => {
                            let got = full.list_blocks(&list_options(i)).await.expect("list");
                            assert_eq!(got.len(), 100);
                        }
                        Op::Range10k => {
                            let lo = range_start(i);
                            let got = full
                                .get_blocks_by_range(lo, lo + 9_999)
                                .await
                                .expect("range");
                            assert_eq!(got.len(), 10_000);
                        }
                        _ => unreachable!("not a read"),
                    }
                }
                start.elapsed()
            }
        });
    });
}

fn big_path(env: &Setup, s: Subject) -> PathBuf {
    env.dir.path().join(format!("big-{}", s.name()))
}

async fn ingest_into(s: Subject, path: &Path, big: &[Block]) -> Duration {
    remove(path);
    if s == Subject::Object {
        wipe_object(path).await;
    }
    let store = open_ours(s, path, false).await;
    let start = Instant::now();
    for chunk in big.chunks(1_000) {
        store.store_blocks(chunk).await.expect("ingest");
    }
    let took = start.elapsed();
    store.close().await.expect("close");
    took
}

/// Makes sure the ingest's store exists at `path` (the one the ingest row left,
/// or one made now, untimed).
fn prepare_cold_open(env: &Setup, s: Subject, path: &Path, big: &[Block]) {
    #[cfg(feature = "peers")]
    if s.is_peer() {
        if !path.exists() {
            raw_ingest(env, s, big);
        }
        return;
    }
    let have = env.rt.block_on(async {
        let store = open_ours(s, path, false).await;
        let n = store.count_blocks().await.expect("count");
        store.close().await.expect("close");
        n
    });
    if have != big.len() as u64 {
        env.rt.block_on(ingest_into(s, path, big));
    }
}

/// Opens the store at `path` and reads the block `probe`; times both, then
/// closes it, untimed.
fn cold_open(env: &Setup, s: Subject, path: &Path, probe: &storage_core::BlockHash) -> Duration {
    #[cfg(feature = "peers")]
    if s.is_peer() {
        let start = Instant::now();
        let p = olocus_benches::peers::open(s, path, false);
        std::hint::black_box(p.retrieve(probe));
        let took = start.elapsed();
        p.close();
        return took;
    }
    env.rt.block_on(async {
        let start = Instant::now();
        let store = open_ours(s, path, false).await;
        let got = store.retrieve_block(probe).await.expect("retrieve");
        std::hint::black_box(got.expect("stored"));
        let took = start.elapsed();
        store.close().await.expect("close");
        took
    })
}

/// Builds the `cold_open_10m` store of `n` blocks at `path` for `s` (untimed),
/// generating the chain in slices so the blocks never all sit in memory.
/// Returns the hashes of every 1,000th block, to read.
fn build_huge(env: &Setup, s: Subject, path: &Path, n: u64) -> Vec<storage_core::BlockHash> {
    remove(path);
    let mut chain = olocus_benches::BulkChain::new(650);
    let mut probes = Vec::new();
    let mut slices = (0..n).step_by(100_000).map(move |start| {
        let part = chain.take((n - start).min(100_000));
        (start, part)
    });
    let mut keep = |start: u64, part: &[Block]| {
        for (k, b) in part.iter().enumerate() {
            if (start + k as u64).is_multiple_of(1_000) {
                probes.push(b.hash());
            }
        }
    };
    #[cfg(feature = "peers")]
    if s.is_peer() {
        let mut p = olocus_benches::peers::open(s, path, false);
        for (start, part) in slices.by_ref() {
            for chunk in part.chunks(1_000) {
                p.store(chunk);
            }
            keep(start, &part);
        }
        p.close();
        return probes;
    }
    env.rt.block_on(async {
        let store = open_ours(s, path, false).await;
        for (start, part) in slices.by_ref() {
            for chunk in part.chunks(1_000) {
                store.store_blocks(chunk).await.expect("ingest");
            }
            keep(start, &part);
        }
        store.close().await.expect("close");
    });
    probes
}

/// Set in a child process: open a store, read one block, print the resident
/// set (`<subject>\t<path>\t<hash>`).
const RESIDENT_PROBE: &str = "OLOCUS_BENCH_RESIDENT_PROBE";

/// The resident memory (KiB) of a fresh process after it opened the store of
/// `s` at `path` and read `probe`: this binary again, in probe mode.
fn resident_after_open(s: Subject, path: &Path, probe: &storage_core::BlockHash) -> u64 {
    let exe = std::env::current_exe().expect("this binary");
    let out = std::process::Command::new(exe)
        .env(
            RESIDENT_PROBE,
            format!("{}\t{}\t{probe}", s.name(), path.display()),
        )
        .output()
        .expect("the probe process");
    assert!(
        out.status.success(),
        "probe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("the probe prints KiB")
}

fn resident_probe(spec: &str) {
    let mut parts = spec.split('\t');
    let (name, path, hash) = (
        parts.next().expect("subject"),
        PathBuf::from(parts.next().expect("path")),
        parts
            .next()
            .expect("hash")
            .parse::<storage_core::BlockHash>()
            .expect("a hash"),
    );
    let s = *Subject::ALL
        .iter()
        .find(|s| s.name() == name)
        .expect("a subject");
    #[cfg(feature = "peers")]
    if s.is_peer() {
        let p = olocus_benches::peers::open(s, &path, false);
        std::hint::black_box(p.retrieve(&hash));
        println!("{}", resident_kib().expect("VmRSS in /proc/self/status"));
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let store = open_ours(s, &path, false).await;
        let got = store.retrieve_block(&hash).await.expect("retrieve");
        assert!(got.is_some(), "the probe block is stored");
        println!("{}", resident_kib().expect("VmRSS in /proc/self/status"));
    });
}

// ---------------------------------------------------------------------------
// Raw engines
// ---------------------------------------------------------------------------

/// A store holding the full data set, for the read rows.
enum Full {
    Ours(Arc<dyn StorageBackend>),
    Raw(RawFull),
    #[cfg(feature = "peers")]
    Peer(Box<dyn olocus_benches::peers::Peer>),
}

/// A raw engine with the full store's data.
enum RawFull {
    Rocks(rocksdb::DB),
    Sqlite(rusqlite::Connection),
    Object(Arc<dyn object_store::ObjectStore>),
}

fn raw_full(env: &Setup, s: Subject) -> RawFull {
    let path = env.dir.path().join(format!("full-{}", s.name()));
    match s {
        Subject::RocksdbRaw => {
            let db = raw::rocksdb::open(&path);
            for (i, chunk) in env.small.chunks(1_000).enumerate() {
                raw::rocksdb::store(&db, chunk, (i * 1_000) as u64, false);
            }
            RawFull::Rocks(db)
        }
        Subject::SqliteRaw => {
            let mut c = raw::sqlite::open(&env.rt, &path, false);
            for chunk in env.small.chunks(1_000) {
                raw::sqlite::store(&mut c, chunk);
            }
            RawFull::Sqlite(c)
        }
        Subject::ObjectRaw => env.rt.block_on(async {
            let store = open_object(&path).await.object_store();
            raw::object::fill(&*store, &env.small).await;
            RawFull::Object(store)
        }),
        _ => unreachable!("not raw"),
    }
}

/// Writes `step` blocks per call into fresh stores of a raw engine or a peer;
/// only the writes are timed.
fn bench_raw_store(
    g: &mut BenchmarkGroup<'_, WallTime>,
    env: &Setup,
    s: Subject,
    step: usize,
    durable: bool,
) {
    let counter = std::sync::atomic::AtomicU64::new(0);
    g.bench_function(s.name(), |b| {
        b.iter_custom(|iters| {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut total = Duration::ZERO;
            let mut done = 0u64;
            while done < iters {
                let path = env
                    .dir
                    .path()
                    .join(format!("r-{}-{step}-{durable}-{n}-{done}", s.name()));
                let want = ((iters - done) as usize).min(FULL / step);
                match s {
                    Subject::RocksdbRaw => {
                        let db = raw::rocksdb::open(&path);
                        let start = Instant::now();
                        for (k, chunk) in env.small.chunks(step).take(want).enumerate() {
                            raw::rocksdb::store(&db, chunk, (k * step) as u64, durable);
                        }
                        total += start.elapsed();
                    }
                    Subject::SqliteRaw => {
                        let mut c = raw::sqlite::open(&env.rt, &path, durable);
                        let start = Instant::now();
                        for chunk in env.small.chunks(step).take(want) {
                            raw::sqlite::store(&mut c, chunk);
                        }
                        total += start.elapsed();
                    }
                    Subject::ObjectRaw => env.rt.block_on(async {
                        let store = open_object(&path).await.object_store();
                        let start = Instant::now();
                        for (k, chunk) in env.small.chunks(step).take(want).enumerate() {
                            raw::object::store(&*store, &format!("w/{k}"), chunk).await;
                        }
                        total += start.elapsed();
                    }),
                    #[cfg(feature = "peers")]
                    s if s.is_peer() => {
                        let mut p = olocus_benches::peers::open(s, &path, durable);
                        let start = Instant::now();
                        for chunk in env.small.chunks(step).take(want) {
                            p.store(chunk);
                        }
                        total += start.elapsed();
                        p.close();
                    }
                    _ => unreachable!("neither a raw engine nor a peer"),
                }
                remove(&path);
                done += want as u64;
            }
            total
        });
    });
}

fn bench_raw_reads(
    g: &mut BenchmarkGroup<'_, WallTime>,
    env: &Setup,
    s: Subject,
    op: Op,
    full: &RawFull,
) {
    g.bench_function(s.name(), |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for i in 0..iters {
                let probe = &env.small[(i as usize * STRIDE) % FULL];
                match (op, full) {
                    (Op::RetrieveOne, RawFull::Rocks(db)) => {
                        std::hint::black_box(raw::rocksdb::retrieve(db, probe));
                    }
                    (Op::RetrieveOne, RawFull::Sqlite(c)) => {
                        std::hint::black_box(raw::sqlite::retrieve(c, probe));
                    }
                    (Op::List100, RawFull::Rocks(db)) => {
                        assert_eq!(
                            raw::rocksdb::list_100(db, (i * 131) % (FULL as u64 - 300), READING),
                            100
                        );
                    }
                    (Op::List100, RawFull::Sqlite(c)) => {
                        assert_eq!(
                            raw::sqlite::list_100(c, (i * 131) % (FULL as u64 - 300), READING),
                            100
                        );
                    }
                    (Op::Range10k, RawFull::Rocks(db)) => {
                        assert_eq!(
                            raw::rocksdb::range(db, range_start(i), 10_000).len(),
                            10_000
                        );
                    }
                    (Op::Range10k, RawFull::Sqlite(c)) => {
                        assert_eq!(raw::sqlite::range(c, range_start(i), 10_000).len(), 10_000);
                    }
                    (Op::RetrieveOne, RawFull::Object(store)) => {
                        std::hint::black_box(
                            env.rt.block_on(raw::object::retrieve(&**store, probe)),
                        );
                    }
                    (Op::RetrieveConcurrent100, RawFull::Object(store)) => {
                        let reads = (0..100).map(|k| {
                            let b = &env.small[((i as usize * 100 + k) * STRIDE) % FULL];
                            raw::object::retrieve(&**store, b)
                        });
                        std::hint::black_box(env.rt.block_on(futures::future::join_all(reads)));
                    }
                    (Op::RetrieveConcurrent100, _) => {
                        for k in 0..100 {
                            let b = &env.small[((i as usize * 100 + k) * STRIDE) % FULL];
                            match full {
                                RawFull::Rocks(db) => {
                                    std::hint::black_box(raw::rocksdb::retrieve(db, b));
                                }
                                RawFull::Sqlite(c) => {
                                    std::hint::black_box(raw::sqlite::retrieve(c, b));
                                }
                                RawFull::Object(_) => unreachable!("handled above"),
                            }
                        }
                    }
                    (Op::List100, RawFull::Object(store)) => {
                        let n = env.rt.block_on(raw::object::list_100(&**store, probe));
                        std::hint::black_box(n);
                    }
                    _ => unreachable!("not a read"),
                }
            }
            start.elapsed()
        });
    });
}

/// Ingests `big` into a fresh store of a raw engine or a peer in writes of
/// 1,000; only the writes are timed.
fn raw_ingest(env: &Setup, s: Subject, big: &[Block]) -> Duration {
    let path = big_path(env, s);
    remove(&path);
    match s {
        Subject::RocksdbRaw => {
            let db = raw::rocksdb::open(&path);
            let start = Instant::now();
            for (k, chunk) in big.chunks(1_000).enumerate() {
                raw::rocksdb::store(&db, chunk, (k * 1_000) as u64, false);
            }
            start.elapsed()
        }
        Subject::SqliteRaw => {
            let mut c = raw::sqlite::open(&env.rt, &path, false);
            let start = Instant::now();
            for chunk in big.chunks(1_000) {
                raw::sqlite::store(&mut c, chunk);
            }
            start.elapsed()
        }
        Subject::ObjectRaw => env.rt.block_on(async {
            wipe_object(&path).await;
            let store = open_object(&path).await.object_store();
            let start = Instant::now();
            for (k, chunk) in big.chunks(1_000).enumerate() {
                raw::object::store(&*store, &format!("w/{k}"), chunk).await;
            }
            start.elapsed()
        }),
        #[cfg(feature = "peers")]
        s if s.is_peer() => {
            let mut p = olocus_benches::peers::open(s, &path, false);
            let start = Instant::now();
            for chunk in big.chunks(1_000) {
                p.store(chunk);
            }
            let took = start.elapsed();
            p.close();
            took
        }
        _ => unreachable!("neither a raw engine nor a peer"),
    }
}

// ---------------------------------------------------------------------------
// Peers
// ---------------------------------------------------------------------------

/// The peers' full stores and reads (their writes and ingest run in
/// `bench_raw_store` and `raw_ingest`, beside the raw engines').
#[cfg(feature = "peers")]
mod peer_rows {
    use super::*;
    use olocus_benches::peers::{self, Peer};

    /// A peer store holding the full data set.
    pub(super) fn full(env: &Setup, s: Subject) -> Box<dyn Peer> {
        let path = env.dir.path().join(format!("full-{}", s.name()));
        let mut p = peers::open(s, &path, false);
        for chunk in env.small.chunks(1_000) {
            p.store(chunk);
        }
        p
    }

    pub(super) fn bench_reads(
        g: &mut BenchmarkGroup<'_, WallTime>,
        env: &Setup,
        s: Subject,
        op: Op,
        full: &dyn Peer,
    ) {
        g.bench_function(s.name(), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for i in 0..iters {
                    match op {
                        Op::RetrieveOne => {
                            let h = env.small[(i as usize * STRIDE) % FULL].hash();
                            std::hint::black_box(full.retrieve(&h));
                        }
                        Op::List100 => {
                            let lo = (i * 131) % (FULL as u64 - 300);
                            assert_eq!(full.list_100(lo, READING), 100);
                        }
                        Op::Range10k => {
                            assert_eq!(full.range(range_start(i), 10_000).len(), 10_000);
                        }
                        _ => unreachable!("not a peer's read"),
                    }
                }
                start.elapsed()
            });
        });
    }
}

// ---------------------------------------------------------------------------
// The matrix
// ---------------------------------------------------------------------------

fn names<T: Copy>(var: &str, all: &[T], name: fn(T) -> &'static str) -> Vec<T> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => {
            let wanted: Vec<&str> = v.split(',').map(str::trim).collect();
            for w in &wanted {
                assert!(
                    all.iter().any(|x| name(*x) == *w),
                    "{var}: unknown name {w:?} (expected one of {:?})",
                    all.iter().map(|x| name(*x)).collect::<Vec<_>>()
                );
            }
            all.iter()
                .copied()
                .filter(|x| wanted.contains(&name(*x)))
                .collect()
        }
        _ => all.to_vec(),
    }
}

fn matrix(c: &mut Criterion) {
    let quick = std::env::var("OLOCUS_BENCH_QUICK").is_ok_and(|v| v == "1");
    let mut backends = names("OLOCUS_BENCH_BACKENDS", &Subject::ALL, Subject::name);
    if storage_object::ObjectStoreConfig::from_cluster_env("probe").is_none() {
        eprintln!(
            "object rows left out: no cluster ({} unset; cargo xtask bench starts one)",
            storage_object::CLUSTER_ENV.join(", ")
        );
        backends.retain(|s| !s.needs_cluster());
    }
    let peers = std::env::var("OLOCUS_BENCH_PEERS").is_ok_and(|v| v == "1");
    assert!(
        !peers || cfg!(feature = "peers"),
        "OLOCUS_BENCH_PEERS=1 needs the benches built with `--features peers` \
         (`cargo xtask bench --peers` does)"
    );
    // A backend brings its raw engine along; the peers come all together.
    let subjects: Vec<Subject> = Subject::ALL
        .into_iter()
        .filter(|s| {
            if s.is_peer() {
                peers
            } else {
                backends.contains(&s.backend())
            }
        })
        .collect();
    let ops = names("OLOCUS_BENCH_OPS", &Op::ALL, Op::name);
    let env = Setup {
        rt: tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            // The object store's client needs timers and sockets.
            .enable_all()
            .build()
            .expect("runtime"),
        dir: tempfile::tempdir().expect("temp dir"),
        small: data::chain_with_note(FULL, 610),
        big: if quick { BIG_QUICK } else { BIG },
        huge: if quick { HUGE_QUICK } else { HUGE },
        out: std::env::var_os("OLOCUS_BENCH_OUT").map(PathBuf::from),
    };
    let (warm, measure) = if quick {
        (Duration::from_millis(300), Duration::from_secs(1))
    } else {
        (Duration::from_secs(2), Duration::from_secs(5))
    };

    // Stores holding FULL blocks, for the read operations.
    let reads = ops.iter().any(|o| {
        matches!(
            o,
            Op::RetrieveOne | Op::RetrieveConcurrent100 | Op::List100 | Op::Range10k
        )
    });
    let mut full = Vec::new();
    if reads {
        for &s in &subjects {
            let store = match s {
                #[cfg(feature = "peers")]
                s if s.is_peer() => Full::Peer(peer_rows::full(&env, s)),
                s if s.is_raw() => Full::Raw(raw_full(&env, s)),
                s => Full::Ours(env.rt.block_on(async {
                    let store =
                        open_ours(s, &env.dir.path().join(format!("full-{}", s.name())), false)
                            .await;
                    for chunk in env.small.chunks(1_000) {
                        store.store_blocks(chunk).await.expect("fill");
                    }
                    store
                })),
            };
            full.push((s, store));
        }
    }

    let big_blocks = ops
        .iter()
        .any(|o| matches!(o, Op::Ingest | Op::ColdOpen))
        .then(|| bulk_blocks(env.big, 650));

    // Whether every cold open ran with the page cache dropped.
    let mut cold_dropped = true;
    for &op in &ops {
        let mut g = c.benchmark_group(op.name());
        g.throughput(Throughput::Elements(op.elements(env.big)));
        g.warm_up_time(warm).measurement_time(measure);
        if quick
            || matches!(
                op,
                Op::Ingest | Op::ColdOpen | Op::ColdOpen10m | Op::Range10k
            )
        {
            g.sample_size(10);
        }
        for &s in subjects.iter().filter(|s| op.applies_to(**s)) {
            match op {
                Op::StoreConcurrentDurable => bench_concurrent_store(&mut g, &env, s),
                Op::StoreOne
                | Op::StoreBatch100
                | Op::StoreOneDurable
                | Op::StoreBatch100Durable => {
                    let step = if matches!(op, Op::StoreOne | Op::StoreOneDurable) {
                        1
                    } else {
                        100
                    };
                    let durable = matches!(op, Op::StoreOneDurable | Op::StoreBatch100Durable);
                    match s {
                        s if s.is_raw() || s.is_peer() => {
                            bench_raw_store(&mut g, &env, s, step, durable)
                        }
                        s => bench_store(&mut g, &env, s, step, durable),
                    }
                }
                Op::RetrieveOne | Op::RetrieveConcurrent100 | Op::List100 | Op::Range10k => {
                    match full.iter().find(|(x, _)| *x == s).map(|(_, f)| f) {
                        Some(Full::Raw(f)) => bench_raw_reads(&mut g, &env, s, op, f),
                        Some(Full::Ours(f)) => bench_reads(&mut g, &env, s, op, f),
                        #[cfg(feature = "peers")]
                        Some(Full::Peer(f)) => peer_rows::bench_reads(&mut g, &env, s, op, &**f),
                        None => unreachable!("every reading subject has a full store"),
                    }
                }
                Op::Ingest => {
                    let big = big_blocks.as_deref().expect("generated");
                    g.bench_function(s.name(), |b| {
                        b.iter_custom(|iters| {
                            (0..iters)
                                .map(|_| match s {
                                    s if s.is_raw() || s.is_peer() => raw_ingest(&env, s, big),
                                    s => env.rt.block_on(ingest_into(s, &big_path(&env, s), big)),
                                })
                                .sum()
                        });
                    });
                    let bytes = disk_bytes(&big_path(&env, s));
                    // No bytes: a criterion filter left this ingest out.
                    if bytes > 0
                        && !matches!(s, Subject::Memory | Subject::Object | Subject::ObjectRaw)
                    {
                        record(
                            &env,
                            &format!("disk/{}", s.name()),
                            serde_json::json!({ "bytes": bytes, "blocks": big.len() }),
                        );
                    }
                }
                Op::ColdOpen => {
                    let path = big_path(&env, s);
                    let big = big_blocks.as_deref().expect("generated");
                    prepare_cold_open(&env, s, &path, big);
                    g.bench_function(s.name(), |b| {
                        b.iter_custom(|iters| {
                            let mut total = Duration::ZERO;
                            for i in 0..iters {
                                let probe = big[(i as usize * STRIDE) % big.len()].hash();
                                cold_dropped &= drop_page_cache();
                                total += cold_open(&env, s, &path, &probe);
                            }
                            total
                        });
                    });
                }
                Op::ColdOpen10m => {
                    let path = env.dir.path().join(format!("huge-{}", s.name()));
                    let probes = build_huge(&env, s, &path, env.huge);
                    g.bench_function(s.name(), |b| {
                        b.iter_custom(|iters| {
                            let mut total = Duration::ZERO;
                            for i in 0..iters {
                                let probe = probes[(i as usize * STRIDE) % probes.len()];
                                cold_dropped &= drop_page_cache();
                                total += cold_open(&env, s, &path, &probe);
                            }
                            total
                        });
                    });
                    cold_dropped &= drop_page_cache();
                    let kib = resident_after_open(s, &path, &probes[probes.len() / 2]);
                    record(
                        &env,
                        &format!("resident/{}", s.name()),
                        serde_json::json!({ "kib": kib, "blocks": env.huge }),
                    );
                    // ~9 GB per store at 10M blocks: gone before the next one.
                    remove(&path);
                }
            }
        }
        g.finish();
    }
    // A sanity check outside the timing: the ingested stores are whole.
    if let Some(big) = &big_blocks
        && ops.contains(&Op::Ingest)
    {
        for &s in subjects
            .iter()
            .filter(|s| !s.is_raw() && Op::Ingest.applies_to(**s) && **s != Subject::Memory)
        {
            #[cfg(feature = "peers")]
            if s.is_peer() {
                let p = olocus_benches::peers::open(s, &big_path(&env, s), false);
                let (first, last) = (&big[0], &big[big.len() - 1]);
                assert_eq!(&p.retrieve(&last.hash()), last, "{}", s.name());
                assert_eq!(&p.range(0, 1)[0], first, "{}", s.name());
                p.close();
                continue;
            }
            env.rt.block_on(async {
                let store = open_ours(s, &big_path(&env, s), false).await;
                assert_eq!(
                    store.count_blocks().await.expect("count"),
                    big.len() as u64,
                    "{}",
                    s.name()
                );
                let last = store
                    .list_blocks(
                        &ListOptions::new()
                            .limit(1)
                            .descending()
                            .payload_type(BULK_TYPE),
                    )
                    .await
                    .expect("list");
                assert_eq!(last[0].index, big.len() as u64 - 1);
                store.close().await.expect("close");
            });
        }
    }
    if ops.contains(&Op::ColdOpen) || ops.contains(&Op::ColdOpen10m) {
        record(
            &env,
            "cold_open",
            serde_json::json!({ "page_cache_dropped": cold_dropped }),
        );
    }
    for (_, store) in full {
        match store {
            Full::Ours(store) => env.rt.block_on(store.close()).expect("close"),
            Full::Raw(_) => {}
            #[cfg(feature = "peers")]
            Full::Peer(p) => p.close(),
        }
    }
}

fn main() {
    if let Ok(probe) = std::env::var(RESIDENT_PROBE) {
        resident_probe(&probe);
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    matrix(&mut c);
    c.final_summary();
}
