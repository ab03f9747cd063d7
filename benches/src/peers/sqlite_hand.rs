//! SQLite with the schema a user would write by hand: one table keyed by
//! index, the hash unique, an index on (timestamp, hash), the block's encoding
//! as one BLOB; WAL and our backend's pragmas.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use storage_core::{Block, BlockHash};

use super::{Listing, Peer, decode, hash_of, slot_taken};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS blocks (
    idx  INTEGER PRIMARY KEY,
    hash BLOB NOT NULL UNIQUE,
    ts   INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS blocks_by_time ON blocks (ts, hash);
";

pub(super) struct SqliteHand {
    c: Connection,
}

impl SqliteHand {
    pub(super) fn open(dir: &Path, durable: bool) -> Self {
        let c = Connection::open(dir.join("blocks.db")).expect("sqlite open");
        // Our backend's defaults, so the schema is all that differs.
        let ours = storage_sqlite::SQLiteConfig::at(dir.join("unused.db"));
        let synchronous = if durable {
            storage_sqlite::SynchronousMode::Full
        } else {
            ours.synchronous
        };
        c.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous}; \
             PRAGMA cache_size = {}; PRAGMA temp_store = {};",
            ours.cache_size, ours.temp_store
        ))
        .expect("pragmas");
        c.execute_batch(SCHEMA).expect("schema");
        Self { c }
    }
}

impl Peer for SqliteHand {
    fn store(&mut self, blocks: &[Block]) {
        let tx = self
            .c
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .expect("begin");
        {
            let mut held = tx
                .prepare_cached("SELECT hash FROM blocks WHERE idx = ?1")
                .expect("prepare");
            let mut insert = tx
                .prepare_cached("INSERT INTO blocks (idx, hash, ts, data) VALUES (?1, ?2, ?3, ?4)")
                .expect("prepare");
            for b in blocks {
                let h: Option<Vec<u8>> = held
                    .query_row([b.index() as i64], |r| r.get(0))
                    .optional()
                    .expect("select");
                if slot_taken(h.as_deref(), b) {
                    continue;
                }
                insert
                    .execute(params![
                        b.index() as i64,
                        b.hash().as_bytes().as_slice(),
                        b.timestamp_nanos() as i64,
                        super::encode(b),
                    ])
                    .expect("insert");
            }
        }
        tx.commit().expect("commit");
    }

    fn retrieve(&self, hash: &BlockHash) -> Block {
        let bytes: Vec<u8> = self
            .c
            .prepare_cached("SELECT data FROM blocks WHERE hash = ?1")
            .expect("prepare")
            .query_row([hash.as_bytes().as_slice()], |r| r.get(0))
            .expect("stored");
        decode(&bytes, hash)
    }

    fn list_100(&self, lo: u64, ty: &str) -> usize {
        let mut stmt = self
            .c
            .prepare_cached("SELECT hash, data FROM blocks WHERE idx >= ?1 ORDER BY idx")
            .expect("prepare");
        let mut rows = stmt.query([lo as i64]).expect("query");
        let mut listing = Listing::of(ty);
        while let Some(r) = rows.next().expect("row") {
            let (h, bytes) = blobs(r);
            if listing.offer(h, bytes) {
                break;
            }
        }
        listing.found
    }

    fn range(&self, lo: u64, count: usize) -> Vec<Block> {
        let mut stmt = self
            .c
            .prepare_cached("SELECT hash, data FROM blocks WHERE idx >= ?1 ORDER BY idx LIMIT ?2")
            .expect("prepare");
        let mut rows = stmt.query(params![lo as i64, count as i64]).expect("query");
        let mut out = Vec::with_capacity(count);
        while let Some(r) = rows.next().expect("row") {
            let (h, bytes) = blobs(r);
            out.push(decode(bytes, &hash_of(h)));
        }
        out
    }

    fn close(self: Box<Self>) {
        // As our backend closes: the log folded into the database.
        self.c
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .expect("checkpoint");
        self.c.close().map_err(|(_, e)| e).expect("close");
    }
}

/// The row's (hash, data) columns, borrowed.
fn blobs<'r>(r: &'r rusqlite::Row<'_>) -> (&'r [u8], &'r [u8]) {
    let blob = |i| r.get_ref(i).expect("column").as_blob().expect("a BLOB");
    (blob(0), blob(1))
}
