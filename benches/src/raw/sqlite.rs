//! Raw SQLite (rusqlite) running the SQLite backend's statements on its schema,
//! for the matrix's ratio.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use storage_core::{Block, BlockHash, BlockParts, PublicKey, Signature};

/// A connection to a database whose schema our backend created, with its
/// pragmas.
pub fn open(rt: &tokio::runtime::Runtime, path: &Path, durable: bool) -> Connection {
    let db = path.with_extension("db");
    rt.block_on(async {
        let s = storage_sqlite::SQLiteBackend::new(storage_sqlite::SQLiteConfig::at(&db))
            .await
            .expect("schema");
        storage_core::StorageBackend::close(&s)
            .await
            .expect("close");
    });
    let c = Connection::open(&db).expect("raw open");
    c.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = {}; PRAGMA cache_size = -65536; \
         PRAGMA temp_store = MEMORY;",
        if durable { "FULL" } else { "NORMAL" }
    ))
    .expect("pragmas");
    c
}

/// The checksum our backend keeps over each row's metadata columns (hash,
/// index, timestamp, signer, size, type), so a damaged listing is caught.
fn meta_check(b: &Block) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(b.hash().as_bytes());
    h.update(&(b.index() as i64).to_be_bytes());
    h.update(&(b.timestamp_nanos() as i64).to_be_bytes());
    h.update(b.public_key().as_bytes());
    h.update(&(b.size_bytes() as i64).to_be_bytes());
    h.update(b.payload_type().as_bytes());
    h.finalize()
}

/// The statements our backend runs per inserted block.
fn insert(tx: &rusqlite::Transaction<'_>, b: &Block) {
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
         payload_type, payload, signature, size_bytes, meta_check) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
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
        meta_check(b),
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
        tx.prepare_cached(
            "UPDATE block_stats SET unique_keys = unique_keys + 1 WHERE date = date(?1, 'unixepoch')",
        )
        .unwrap()
        .execute([secs])
        .unwrap();
    }
}

/// One `BEGIN IMMEDIATE` transaction inserting `blocks` as our backend does.
pub fn store(c: &mut Connection, blocks: &[Block]) {
    let tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .unwrap();
    for b in blocks {
        insert(&tx, b);
    }
    tx.commit().unwrap();
}

const COLUMNS: &str =
    "hash, block_index, timestamp_ns, public_key, previous_hash, payload_type, payload, signature";

/// A block rebuilt from its row, hash checked, as our backend does.
fn block(r: &rusqlite::Row<'_>) -> rusqlite::Result<Block> {
    let hash = BlockHash::from_slice(&r.get::<_, Vec<u8>>(0)?).unwrap();
    let parts = BlockParts {
        index: r.get::<_, i64>(1)? as u64,
        timestamp_nanos: r.get::<_, i64>(2)? as u64,
        public_key: PublicKey::from_slice(&r.get::<_, Vec<u8>>(3)?).unwrap(),
        previous_hash: r
            .get::<_, Option<Vec<u8>>>(4)?
            .map(|h| BlockHash::from_slice(&h).unwrap()),
        payload_type: r.get(5)?,
        payload: r.get(6)?,
        signature: Signature::from_slice(&r.get::<_, Vec<u8>>(7)?).unwrap(),
    };
    let b = Block::from_trusted_parts(parts).unwrap();
    assert_eq!(b.hash(), hash);
    Ok(b)
}

/// Block `b` back by hash, rebuilt from its row and hash-checked.
pub fn retrieve(c: &Connection, b: &Block) -> Block {
    c.prepare_cached(&format!("SELECT {COLUMNS} FROM blocks WHERE hash = ?1"))
        .unwrap()
        .query_row([b.hash().as_bytes().as_slice()], block)
        .unwrap()
}

/// The first 100 rows from `lo` whose type is `ty`, metadata columns only;
/// returns how many it found.
pub fn list_100(c: &Connection, lo: u64, ty: &str) -> usize {
    let mut stmt = c
        .prepare_cached(
            "SELECT hash, block_index, timestamp_ns, payload_type, public_key, size_bytes FROM blocks \
             WHERE block_index BETWEEN ?1 AND ?2 AND payload_type = ?3 ORDER BY block_index ASC \
             LIMIT ?4 OFFSET ?5",
        )
        .unwrap();
    type Row = (Vec<u8>, i64, i64, String, Vec<u8>, i64);
    let rows: Vec<Row> = stmt
        .query_map(params![lo as i64, i64::MAX, ty, 100, 0], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    rows.len()
}

/// `count` blocks from index `lo`, rebuilt from their rows.
pub fn range(c: &Connection, lo: u64, count: usize) -> Vec<Block> {
    c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM blocks WHERE block_index BETWEEN ?1 AND ?2 ORDER BY block_index"
    ))
    .unwrap()
    .query_map(params![lo as i64, (lo + count as u64 - 1) as i64], block)
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}
