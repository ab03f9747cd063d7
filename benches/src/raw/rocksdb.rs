//! Raw RocksDB doing what the RocksDB backend does, for the matrix's ratio.

use std::path::Path;

use rocksdb::{
    ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions,
};
use storage_core::{Block, WireFormat};

const CFS: [&str; 4] = ["by_index", "metadata", "index", "secondary"];

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
    let tagged = |tag: u8, a: &[u8]| [&[tag], a, &idx[..]].concat();
    assert!(db.get_pinned_cf(cf("index"), idx).unwrap().is_none());
    let mut record = Vec::with_capacity(128);
    record.extend_from_slice(b.hash().as_bytes());
    record.extend_from_slice(&b.timestamp_nanos().to_be_bytes());
    record.extend_from_slice(&b.size_bytes().to_be_bytes());
    record.extend_from_slice(b.public_key().as_bytes());
    record.push(b.payload_type().len() as u8);
    record.extend_from_slice(b.payload_type().as_bytes());
    batch.put_cf(cf("by_index"), idx, WireFormat::BINARY.encode(b).unwrap());
    batch.put_cf(cf("metadata"), b.hash().as_bytes(), idx);
    batch.put_cf(cf("index"), idx, record);
    let secondary = cf("secondary");
    batch.put_cf(
        secondary,
        tagged(b't', &b.timestamp_nanos().to_be_bytes()),
        [],
    );
    batch.put_cf(secondary, tagged(b'k', b.public_key().as_bytes()), []);
    let ty = [b.payload_type().as_bytes(), &[0]].concat();
    batch.put_cf(secondary, tagged(b'y', &ty), []);
    batch.put_cf(
        db.cf_handle("default").expect("cf"),
        "count",
        count.to_be_bytes(),
    );
}

/// One `WriteBatch` holding what our backend writes per block (block by index,
/// hash → index, index record, the three secondary index keys, the counter), synced if
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
    let idx = db
        .get_pinned_cf(db.cf_handle("metadata").unwrap(), h.as_bytes())
        .unwrap()
        .unwrap();
    let v = db
        .get_pinned_cf(db.cf_handle("by_index").unwrap(), &idx)
        .unwrap()
        .unwrap();
    WireFormat::BINARY.decode_stored(&v, &h).unwrap()
}

/// The first 100 blocks of type `ty` from index `lo`: the type index walked
/// under a snapshot, each index record read, as our listing does; returns how
/// many it found.
pub fn list_100(db: &DB, lo: u64, ty: &str) -> usize {
    let (by_type, index) = (
        db.cf_handle("secondary").unwrap(),
        db.cf_handle("index").unwrap(),
    );
    let from = [b"y", ty.as_bytes(), &[0], &lo.to_be_bytes()[..]].concat();
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

/// `count` blocks from index `lo`: index records and blocks (both keyed by
/// index) scanned side by side, each block decoded against its record's hash.
pub fn range(db: &DB, lo: u64, count: usize) -> Vec<Block> {
    let (index, blocks) = (
        db.cf_handle("index").unwrap(),
        db.cf_handle("by_index").unwrap(),
    );
    let snap = db.snapshot();
    let mut out = Vec::with_capacity(count);
    let from = lo.to_be_bytes();
    let mode = || IteratorMode::From(&from, Direction::Forward);
    let mut bodies = snap.iterator_cf(blocks, mode());
    for item in snap.iterator_cf(index, mode()) {
        let (k, v) = item.unwrap();
        let (bk, bytes) = bodies.next().unwrap().unwrap();
        assert_eq!(k, bk);
        let h = storage_core::BlockHash::from_slice(&v[..32]).unwrap();
        out.push(WireFormat::BINARY.decode_stored(&bytes, &h).unwrap());
        if out.len() == count {
            break;
        }
    }
    out
}
