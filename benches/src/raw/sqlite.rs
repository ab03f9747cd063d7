//! Raw SQLite (rusqlite) running the SQLite backend's statements on its schema,
//! for the matrix's ratio.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use storage_core::{Block, BlockHash, WireFormat};

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

/// One `BEGIN IMMEDIATE` transaction running our backend's statements for
/// `blocks`: the slot check and insert per block, then the statistics once per
/// signer and day and once per day; the planner's statistics refreshed as the
/// backend does.
pub fn store(c: &mut Connection, blocks: &[Block]) {
    let tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .unwrap();
    let mut days: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    let mut signers: BTreeMap<(i64, &[u8; 32]), i64> = BTreeMap::new();
    for b in blocks {
        let existing: Option<Vec<u8>> = tx
            .prepare_cached("SELECT hash FROM blocks WHERE block_index = ?1")
            .unwrap()
            .query_row([b.index() as i64], |r| r.get(0))
            .optional()
            .unwrap();
        assert!(existing.is_none());
        tx.prepare_cached(
            "INSERT INTO blocks (block_index, hash, timestamp_ns, public_key, payload_type, \
             size_bytes, meta_check, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .unwrap()
        .execute(params![
            b.index() as i64,
            b.hash().as_bytes().as_slice(),
            b.timestamp_nanos() as i64,
            b.public_key().as_bytes().as_slice(),
            b.payload_type(),
            b.size_bytes() as i64,
            meta_check(b),
            WireFormat::BINARY.encode(b).unwrap(),
        ])
        .unwrap();
        let day = (b.timestamp_nanos() / 1_000_000_000 / 86_400) as i64;
        let total = days.entry(day).or_default();
        total.0 += 1;
        total.1 += b.size_bytes() as i64;
        *signers.entry((day, b.public_key().as_bytes())).or_default() += 1;
    }
    let mut new_signers: BTreeMap<i64, i64> = BTreeMap::new();
    for ((day, key), added) in signers {
        let n: i64 = tx
            .prepare_cached(
                "INSERT INTO block_stats_keys (date, public_key, blocks) \
                 VALUES (date(?1, 'unixepoch'), ?2, ?3) ON CONFLICT (date, public_key) \
                 DO UPDATE SET blocks = blocks + excluded.blocks RETURNING blocks",
            )
            .unwrap()
            .query_row(params![day * 86_400, key.as_slice(), added], |r| r.get(0))
            .unwrap();
        *new_signers.entry(day).or_default() += i64::from(n == added);
    }
    for (day, (count, size)) in days {
        tx.prepare_cached(
            "INSERT INTO block_stats (date, block_count, total_size, unique_keys) \
             VALUES (date(?1, 'unixepoch'), ?2, ?3, ?4) ON CONFLICT (date) DO UPDATE SET \
             block_count = block_count + excluded.block_count, \
             total_size = total_size + excluded.total_size, \
             unique_keys = unique_keys + excluded.unique_keys",
        )
        .unwrap()
        .execute(params![
            day * 86_400,
            count,
            size,
            new_signers.get(&day).copied().unwrap_or(0)
        ])
        .unwrap();
    }
    tx.commit().unwrap();
    // Our backend refreshes the planner's statistics every 10,000 blocks
    // written; the bench writes chains from index 0, so the indices tell.
    if blocks.iter().any(|b| (b.index() + 1) % 10_000 == 0) {
        c.execute_batch("PRAGMA optimize = 0x10002;").unwrap();
    }
}

/// A block decoded from its row's encoding, hash checked, as our backend does.
fn block(r: &rusqlite::Row<'_>) -> rusqlite::Result<Block> {
    let hash = BlockHash::from_slice(r.get_ref(0)?.as_blob()?).unwrap();
    Ok(WireFormat::BINARY
        .decode_stored(r.get_ref(1)?.as_blob()?, &hash)
        .unwrap())
}

/// Block `b` back by hash, decoded and hash-checked.
pub fn retrieve(c: &Connection, b: &Block) -> Block {
    c.prepare_cached("SELECT hash, data FROM blocks WHERE hash = ?1")
        .unwrap()
        .query_row([b.hash().as_bytes().as_slice()], block)
        .unwrap()
}

/// The first 100 rows from `lo` whose type is `ty`, metadata columns only;
/// returns how many it found.
pub fn list_100(c: &Connection, lo: u64, ty: &str) -> usize {
    let mut stmt = c
        .prepare_cached(
            "SELECT hash, block_index, timestamp_ns, payload_type, public_key, size_bytes, \
             meta_check FROM blocks WHERE block_index BETWEEN ?1 AND ?2 AND payload_type = ?3 \
             ORDER BY block_index ASC LIMIT ?4 OFFSET ?5",
        )
        .unwrap();
    let mut rows = stmt
        .query(params![lo as i64, i64::MAX, ty, 100, 0])
        .unwrap();
    let mut found = 0;
    while let Some(r) = rows.next().unwrap() {
        let blob = |i| r.get_ref(i).unwrap().as_blob().unwrap();
        let (hash, key) = (blob(0), blob(4));
        let ty = r.get_ref(3).unwrap().as_str().unwrap();
        let (index, ts, size): (i64, i64, i64) =
            (r.get(1).unwrap(), r.get(2).unwrap(), r.get(5).unwrap());
        let check: u32 = r.get(6).unwrap();
        std::hint::black_box((hash, key, ty, index, ts, size, check));
        found += 1;
    }
    found
}

/// `count` blocks from index `lo`, decoded from their rows.
pub fn range(c: &Connection, lo: u64, count: usize) -> Vec<Block> {
    c.prepare_cached(
        "SELECT hash, data FROM blocks WHERE block_index BETWEEN ?1 AND ?2 ORDER BY block_index",
    )
    .unwrap()
    .query_map(params![lo as i64, (lo + count as u64 - 1) as i64], block)
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}
