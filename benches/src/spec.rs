//! The benchmark matrix: subjects (backends and raw engines), operations, sizes,
//! the seed's figures and our targets. No dependencies, so `xtask` includes this
//! file as it is (`#[path]`) to write the report.

/// A column of the matrix: one of our backends, or a raw engine doing the same
/// work without us.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subject {
    /// `MemoryBackend`.
    Memory,
    /// `FilesystemBackend`.
    Fs,
    /// `RocksDBBackend`.
    Rocksdb,
    /// `SQLiteBackend`.
    Sqlite,
    /// `CachedStorageBackend` over `SQLiteBackend`.
    CacheSqlite,
    /// `ObjectStoreBackend` on the local SeaweedFS cluster's S3 gateway.
    Object,
    /// `FilesystemBackend` opened with `Execution::BlockingPool`.
    FsPool,
    /// `RocksDBBackend` opened with `Execution::BlockingPool`.
    RocksdbPool,
    /// `SQLiteBackend` opened with `Execution::BlockingPool`.
    SqlitePool,
    /// Raw `rocksdb`: the same keys and values, batches and seeks.
    RocksdbRaw,
    /// Raw `rusqlite`: the same SQL on one connection.
    SqliteRaw,
    /// Raw `object_store` on the same cluster: one PUT per write (the blocks
    /// back to back), one GET per block, one LIST per listing.
    ObjectRaw,
    /// Peer: redb, default options.
    Redb,
    /// Peer: fjall, default options.
    Fjall,
    /// Peer: LMDB through heed.
    Lmdb,
    /// Peer: SQLite with a hand-written one-table schema.
    SqliteHand,
}

impl Subject {
    /// Every subject, in report order.
    pub const ALL: [Subject; 16] = [
        Subject::Memory,
        Subject::Fs,
        Subject::Rocksdb,
        Subject::Sqlite,
        Subject::CacheSqlite,
        Subject::Object,
        Subject::FsPool,
        Subject::RocksdbPool,
        Subject::SqlitePool,
        Subject::RocksdbRaw,
        Subject::SqliteRaw,
        Subject::ObjectRaw,
        Subject::Redb,
        Subject::Fjall,
        Subject::Lmdb,
        Subject::SqliteHand,
    ];

    /// The peers: stores a user could pick instead of ours, run with
    /// `cargo xtask bench --peers`.
    pub const PEERS: [Subject; 4] = [
        Subject::Redb,
        Subject::Fjall,
        Subject::Lmdb,
        Subject::SqliteHand,
    ];

    /// Its name in benchmark ids, `--backend` and the report.
    pub fn name(self) -> &'static str {
        match self {
            Subject::Memory => "memory",
            Subject::Fs => "fs",
            Subject::Rocksdb => "rocksdb",
            Subject::Sqlite => "sqlite",
            Subject::CacheSqlite => "cache_sqlite",
            Subject::Object => "object",
            Subject::FsPool => "fs_pool",
            Subject::RocksdbPool => "rocksdb_pool",
            Subject::SqlitePool => "sqlite_pool",
            Subject::RocksdbRaw => "rocksdb_raw",
            Subject::SqliteRaw => "sqlite_raw",
            Subject::ObjectRaw => "object_raw",
            Subject::Redb => "redb",
            Subject::Fjall => "fjall",
            Subject::Lmdb => "lmdb",
            Subject::SqliteHand => "sqlite_hand",
        }
    }

    /// The raw engine a backend is compared with.
    pub fn raw(self) -> Option<Subject> {
        match self {
            Subject::Rocksdb | Subject::RocksdbPool => Some(Subject::RocksdbRaw),
            Subject::Sqlite | Subject::SqlitePool => Some(Subject::SqliteRaw),
            Subject::Object => Some(Subject::ObjectRaw),
            _ => None,
        }
    }

    /// Whether this is a raw engine baseline.
    pub fn is_raw(self) -> bool {
        matches!(
            self,
            Subject::RocksdbRaw | Subject::SqliteRaw | Subject::ObjectRaw
        )
    }

    /// Whether this is a peer (another store doing the same job).
    pub fn is_peer(self) -> bool {
        Subject::PEERS.contains(&self)
    }

    /// Whether this subject needs the SeaweedFS cluster.
    pub fn needs_cluster(self) -> bool {
        matches!(self, Subject::Object | Subject::ObjectRaw)
    }

    /// Whether this is one of our disk backends on the blocking pool.
    pub fn on_pool(self) -> bool {
        matches!(
            self,
            Subject::FsPool | Subject::RocksdbPool | Subject::SqlitePool
        )
    }

    /// The backend a raw engine or a blocking-pool row stands beside (for
    /// `--backend` selection).
    pub fn backend(self) -> Subject {
        match self {
            Subject::RocksdbRaw | Subject::RocksdbPool => Subject::Rocksdb,
            Subject::SqliteRaw | Subject::SqlitePool => Subject::Sqlite,
            Subject::FsPool => Subject::Fs,
            Subject::ObjectRaw => Subject::Object,
            s => s,
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Option<Subject> {
        Subject::ALL.into_iter().find(|x| x.name() == s)
    }
}

/// A row of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// One block per write, not synced.
    StoreOne,
    /// 100 blocks per write, not synced.
    StoreBatch100,
    /// One block per write, synced before acknowledging.
    StoreOneDurable,
    /// 100 blocks per write, synced before acknowledging.
    StoreBatch100Durable,
    /// 16 writers at once, one block each, synced before acknowledging (how far
    /// concurrent writers share syncs: group commit).
    StoreConcurrentDurable,
    /// One block by hash, at random over the store.
    RetrieveOne,
    /// 100 blocks by hash, at random, with all 100 `retrieve_block` calls in
    /// flight at once.
    RetrieveConcurrent100,
    /// 100 metadata entries in index order, filtered by payload type.
    List100,
    /// 10,000 consecutive blocks by index range.
    Range10k,
    /// Ingest into an empty store in batches of 1,000 (1M blocks; 100k quick).
    Ingest,
    /// Open a closed store of the ingest's size, with the page cache dropped
    /// where the machine permits it, and read one block.
    ColdOpen,
    /// The same with a store of 10M blocks (1M quick), built for the row and
    /// deleted after it; also records the resident memory of a process that
    /// opened it and read one block.
    ColdOpen10m,
}

impl Op {
    /// Every operation, in report order.
    pub const ALL: [Op; 12] = [
        Op::StoreOne,
        Op::StoreBatch100,
        Op::StoreOneDurable,
        Op::StoreBatch100Durable,
        Op::StoreConcurrentDurable,
        Op::RetrieveOne,
        Op::RetrieveConcurrent100,
        Op::List100,
        Op::Range10k,
        Op::Ingest,
        Op::ColdOpen,
        Op::ColdOpen10m,
    ];

    /// Its name in benchmark ids (the criterion group), `--op` and the report.
    pub fn name(self) -> &'static str {
        match self {
            Op::StoreOne => "store_one",
            Op::StoreBatch100 => "store_batch_100",
            Op::StoreOneDurable => "store_one_durable",
            Op::StoreBatch100Durable => "store_batch_100_durable",
            Op::StoreConcurrentDurable => "store_concurrent_durable",
            Op::RetrieveOne => "retrieve_one",
            Op::RetrieveConcurrent100 => "retrieve_concurrent_100",
            Op::List100 => "list_100",
            Op::Range10k => "range_10k",
            Op::Ingest => "ingest",
            Op::ColdOpen => "cold_open",
            Op::ColdOpen10m => "cold_open_10m",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|x| x.name() == s)
    }

    /// Blocks one iteration handles (the criterion throughput).
    pub fn elements(self, big: u64) -> u64 {
        match self {
            Op::StoreOne
            | Op::StoreOneDurable
            | Op::RetrieveOne
            | Op::ColdOpen
            | Op::ColdOpen10m => 1,
            Op::StoreBatch100
            | Op::StoreBatch100Durable
            | Op::List100
            | Op::RetrieveConcurrent100 => 100,
            Op::Range10k => 10_000,
            Op::StoreConcurrentDurable => CONCURRENT_WRITERS as u64,
            Op::Ingest => big,
        }
    }

    /// Whether `subject` can run this operation.
    pub fn applies_to(self, subject: Subject) -> bool {
        if self == Op::ColdOpen10m {
            // The store whose open time and memory must not grow with its size,
            // beside the peers.
            return subject == Subject::Fs || subject.is_peer();
        }
        if subject.is_peer() {
            // What a user compares when picking a store: batched writes plain
            // and synced, reads, a whole ingest, and opening it again.
            return matches!(
                self,
                Op::StoreBatch100
                    | Op::StoreBatch100Durable
                    | Op::RetrieveOne
                    | Op::List100
                    | Op::Range10k
                    | Op::Ingest
                    | Op::ColdOpen
            );
        }
        if subject.on_pool() {
            // What the thread hop to the blocking pool costs, beside the inline
            // rows: single calls, where it weighs most.
            return matches!(
                self,
                Op::StoreOne | Op::StoreBatch100 | Op::RetrieveOne | Op::List100 | Op::Range10k
            );
        }
        if subject.needs_cluster() {
            // Every S3 write is acknowledged once replicated: there is no separate
            // durable mode; a cold open of 1M blocks over HTTP is out of scope.
            return !matches!(
                self,
                Op::StoreOneDurable
                    | Op::StoreBatch100Durable
                    | Op::StoreConcurrentDurable
                    | Op::ColdOpen
            ) && (subject == Subject::Object || self != Op::Range10k);
        }
        match self {
            // Memory has nothing to sync; the cache's writes are SQLite's.
            Op::StoreOneDurable | Op::StoreBatch100Durable => {
                !matches!(subject, Subject::Memory | Subject::CacheSqlite)
            }
            // Our backends' sharing of syncs; the raw engines are driven by one
            // writer only.
            Op::StoreConcurrentDurable => {
                !matches!(subject, Subject::Memory | Subject::CacheSqlite) && !subject.is_raw()
            }
            // Memory has nothing to reopen; a raw engine opens as our backend does.
            Op::ColdOpen => {
                !matches!(subject, Subject::Memory | Subject::CacheSqlite) && !subject.is_raw()
            }
            // The cache changes reads only; its writes and ingest are SQLite's.
            Op::StoreOne | Op::StoreBatch100 | Op::Ingest => subject != Subject::CacheSqlite,
            Op::RetrieveOne | Op::RetrieveConcurrent100 | Op::List100 | Op::Range10k => true,
            // Decided above.
            Op::ColdOpen10m => subject == Subject::Fs,
        }
    }
}

/// What the seed's table claims and what we target, per iteration of the
/// operation (nanoseconds), or as a rate (blocks per second) for `Ingest`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Goal {
    /// At most this many nanoseconds per iteration.
    MaxNs(f64),
    /// At most this many nanoseconds plus one sync per iteration (durable writes;
    /// the report compares with the non-durable target plus one measured sync).
    MaxNsPlusSync(f64),
    /// At least this many blocks per second.
    MinPerSec(f64),
}

/// The seed's figure and our target for `op` on `subject`, where the issue sets
/// them.
pub fn goals(subject: Subject, op: Op) -> (Option<Goal>, Option<Goal>) {
    use Goal::*;
    use Subject::*;
    let us = |v: f64| MaxNs(v * 1e3);
    let ms = |v: f64| MaxNs(v * 1e6);
    match (op, subject) {
        (Op::StoreOne, Memory) => (Some(us(10.0)), Some(us(1.0))),
        (Op::StoreOne, Fs) => (Some(ms(1.0)), Some(us(5.0))),
        (Op::StoreOne, Rocksdb) => (Some(us(50.0)), Some(us(8.0))),
        (Op::StoreOne, Sqlite) => (Some(us(100.0)), Some(us(30.0))),
        (Op::StoreBatch100, Memory) => (Some(ms(1.0)), Some(us(100.0))),
        (Op::StoreBatch100, Fs) => (Some(ms(100.0)), Some(ms(0.3))),
        (Op::StoreBatch100, Rocksdb) => (Some(ms(3.0)), Some(ms(0.5))),
        (Op::StoreBatch100, Sqlite) => (Some(ms(8.0)), Some(ms(1.0))),
        (Op::StoreBatch100Durable, Fs) => (None, Some(MaxNsPlusSync(0.3e6))),
        (Op::StoreBatch100Durable, Rocksdb) => (None, Some(MaxNsPlusSync(0.5e6))),
        (Op::StoreBatch100Durable, Sqlite) => (None, Some(MaxNsPlusSync(1.0e6))),
        (Op::RetrieveOne, Memory) => (Some(us(5.0)), Some(us(0.5))),
        (Op::RetrieveOne, Fs) => (Some(us(500.0)), Some(us(3.0))),
        (Op::RetrieveOne, Rocksdb) => (Some(us(20.0)), Some(us(4.0))),
        (Op::RetrieveOne, Sqlite) => (Some(us(80.0)), Some(us(10.0))),
        (Op::RetrieveOne, CacheSqlite) => (None, Some(us(1.0))),
        (Op::List100, Memory) => (Some(us(100.0)), Some(us(10.0))),
        (Op::List100, Fs) => (Some(ms(10.0)), Some(us(30.0))),
        (Op::List100, Rocksdb) => (Some(ms(1.0)), Some(us(60.0))),
        (Op::List100, Sqlite) => (Some(ms(2.0)), Some(us(150.0))),
        (Op::Ingest, Memory) => (None, Some(MinPerSec(1e6))),
        (Op::Ingest, Fs) => (None, Some(MinPerSec(200e3))),
        (Op::Ingest, Rocksdb) => (None, Some(MinPerSec(150e3))),
        (Op::Ingest, Sqlite) => (None, Some(MinPerSec(100e3))),
        // Open and read one block of a 1M-block store, page cache dropped.
        (Op::ColdOpen, Fs) => (None, Some(ms(20.0))),
        (Op::ColdOpen10m, Fs) => (None, Some(ms(50.0))),
        // Issue 12's targets against the local cluster.
        (Op::Ingest, Object) => (None, Some(MinPerSec(20e3))),
        (Op::RetrieveConcurrent100, Object) => (None, Some(ms(50.0))),
        (Op::List100, Object) => (None, Some(ms(50.0))),
        _ => (None, None),
    }
}

/// Whom a [`PeerGoal`] compares with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRef {
    /// The fastest peer on that row.
    Best,
    /// One peer (the SQLite backend against SQLite by hand).
    Only(Subject),
}

/// A target relative to the peers, on the same row of the same run: at least
/// `min` times the speed of `of` (1.0: level; 2.0: twice as fast).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeerGoal {
    /// The peer compared with.
    pub of: PeerRef,
    /// The least speed-up allowed.
    pub min: f64,
}

/// Our target against the peers for `op` on `subject`, where one is set.
pub fn peer_goal(subject: Subject, op: Op) -> Option<PeerGoal> {
    let best = |min| {
        Some(PeerGoal {
            of: PeerRef::Best,
            min,
        })
    };
    match (subject, op) {
        (Subject::Fs, Op::RetrieveOne | Op::List100) => best(1.0),
        (Subject::Fs, Op::Ingest) => best(2.0),
        (Subject::Sqlite, Op::Ingest | Op::List100 | Op::Range10k) => Some(PeerGoal {
            of: PeerRef::Only(Subject::SqliteHand),
            min: 1.0,
        }),
        _ => None,
    }
}

/// Our/raw ratio the issue allows for RocksDB and SQLite against their raw
/// engines.
pub const MAX_RAW_RATIO: f64 = 1.3;

/// The ratio allowed for `subject`, if any. The object store's raw baseline keeps
/// no index (one PUT per write, one GET per block), where the backend claims
/// index pages with a second, conditional request: its ratio is reported, and its
/// targets are absolute (issue 12).
pub fn max_raw_ratio(subject: Subject) -> Option<f64> {
    match subject {
        Subject::Rocksdb | Subject::Sqlite => Some(MAX_RAW_RATIO),
        _ => None,
    }
}

/// Writers at once in `store_concurrent_durable`.
pub const CONCURRENT_WRITERS: usize = 16;

/// Blocks in the store that retrieve, list and range read from.
pub const FULL: usize = 20_000;
/// Blocks ingested (and cold-opened) in a full run.
pub const BIG: u64 = 1_000_000;
/// Blocks ingested (and cold-opened) in a `--quick` run.
pub const BIG_QUICK: u64 = 100_000;

/// Blocks in the store of `cold_open_10m`.
pub const HUGE: u64 = 10_000_000;

/// The same in a quick run.
pub const HUGE_QUICK: u64 = 1_000_000;
