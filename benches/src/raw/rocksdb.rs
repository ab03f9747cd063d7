//! Raw RocksDB doing what the RocksDB backend does, for the matrix's ratio.

use std::path::Path;

use rocksdb::{
    ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions,
};
use storage_core::{Block, WireFormat};

const CFS: [&str; 7] = [
    "blocks", "metadata", "index", "by_time", "by_key", "by_type", "chain",
];

/// A database with our backend's column families and default options.
pub fn open(path: &Path) -> DB {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    let cfs = CFS.map(|n| ColumnFamilyDescriptor::new(n, opts.clone()));
    DB::open_cf_descriptors(&opts, path, cfs).expect("raw open")
}

/// The keys and values our backend writes for one block (after the same
/// conflict check).
fn put(db: &DB, batch: &mut WriteBatch, b: &Block, count: u64) {
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

/// One `WriteBatch` holding what our backend writes per block (block, metadata,
/// index record, the three secondary index keys, the counters), synced if
/// `sync`; `first` is the first block's position, for the count.
pub fn store(db: &DB, blocks: &[Block], first: u64, sync: bool) {
    let mut batch = WriteBatch::default();
    for (j, b) in blocks.iter().enumerate() {
        put(db, &mut batch, b, first + j as u64);
    }
    let mut opts = WriteOptions::default();
    opts.set_sync(sync);
    db.write_opt(batch, &opts).unwrap();
}

/// A block back, as our retrieve returns it: decoded, hash checked.
pub fn retrieve(db: &DB, b: &Block) -> Block {
    let h = b.hash();
    let v = db
        .get_pinned_cf(db.cf_handle("blocks").unwrap(), h.as_bytes())
        .unwrap()
        .unwrap();
    WireFormat::BINARY.decode_stored(&v, &h).unwrap()
}

/// The first 100 blocks of type `ty` from index `lo`: the type index walked
/// under a snapshot, each index record read, as our listing does; returns how
/// many it found.
pub fn list_100(db: &DB, lo: u64, ty: &str) -> usize {
    let (by_type, index) = (
        db.cf_handle("by_type").unwrap(),
        db.cf_handle("index").unwrap(),
    );
    let from = [ty.as_bytes(), &[0], &lo.to_be_bytes()[..]].concat();
    let snap = db.snapshot();
    let mut n = 0;
    for item in snap.iterator_cf(by_type, IteratorMode::From(&from, Direction::Forward)) {
        let (k, _) = item.unwrap();
        let rec = snap.get_cf(index, &k[k.len() - 8..]).unwrap().unwrap();
        std::hint::black_box(rec);
        n += 1;
        if n == 100 {
            break;
        }
    }
    n
}

/// `count` blocks from index `lo`: index records, then the blocks, decoded.
pub fn range(db: &DB, lo: u64, count: usize) -> Vec<Block> {
    let (index, blocks) = (
        db.cf_handle("index").unwrap(),
        db.cf_handle("blocks").unwrap(),
    );
    let snap = db.snapshot();
    let mut out = Vec::with_capacity(count);
    let from = lo.to_be_bytes();
    for item in snap.iterator_cf(index, IteratorMode::From(&from, Direction::Forward)) {
        let (_, v) = item.unwrap();
        let h = storage_core::BlockHash::from_slice(&v[..32]).unwrap();
        let bytes = snap.get_cf(blocks, h.as_bytes()).unwrap().unwrap();
        out.push(WireFormat::BINARY.decode_stored(&bytes, &h).unwrap());
        if out.len() == count {
            break;
        }
    }
    out
}
