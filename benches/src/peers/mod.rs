//! The stores a user could pick instead of ours, doing the same job with the
//! same encoded bytes: redb, fjall, LMDB (heed) and SQLite with a hand-written
//! schema. Built with the `peers` feature; `cargo xtask bench --peers` runs them
//! beside our backends.
//!
//! Each key-value peer keeps three maps, written in one transaction per batch:
//! hash → the block's binary encoding ([`WireFormat::BINARY`], as our backends
//! store it), index (big-endian) → hash, and (timestamp, hash) → nothing. A
//! write first checks that the index is free (ours refuse a block that
//! contradicts a stored one). A retrieve decodes and checks the hash, as ours
//! does; a listing walks the index map and decodes each block's fields to
//! filter by payload type (a peer has no type index); a range walks the index
//! map and decodes each block.

use std::path::Path;

use storage_core::{Block, BlockHash, BlockMetadata, WireFormat, system_time_from_unix_nanos};

use crate::spec::Subject;

mod fjall;
mod lmdb;
mod redb;
mod sqlite_hand;

/// One peer store, open.
pub trait Peer {
    /// Stores `blocks` in one transaction (synced if opened durable).
    fn store(&mut self, blocks: &[Block]);
    /// The block with this hash, decoded and hash-checked.
    fn retrieve(&self, hash: &BlockHash) -> Block;
    /// The metadata of the first 100 blocks of type `ty` from index `lo`;
    /// returns how many it found.
    fn list_100(&self, lo: u64, ty: &str) -> usize;
    /// `count` consecutive blocks from index `lo`, decoded and hash-checked.
    fn range(&self, lo: u64, count: usize) -> Vec<Block>;
    /// Makes every write durable and closes the store.
    fn close(self: Box<Self>);
}

/// Opens (creating if missing) the store of peer `subject` in the directory
/// `dir`; `durable` syncs each transaction before it returns.
///
/// # Panics
/// If `subject` is not a peer, or the store cannot be opened.
pub fn open(subject: Subject, dir: &Path, durable: bool) -> Box<dyn Peer> {
    std::fs::create_dir_all(dir).expect("peer directory");
    match subject {
        Subject::Redb => Box::new(redb::Redb::open(dir, durable)),
        Subject::Fjall => Box::new(fjall::Fjall::open(dir, durable)),
        Subject::Lmdb => Box::new(lmdb::Lmdb::open(dir, durable)),
        Subject::SqliteHand => Box::new(sqlite_hand::SqliteHand::open(dir, durable)),
        other => panic!("{} is not a peer", other.name()),
    }
}

/// The block's binary encoding, as every peer stores it.
fn encode(b: &Block) -> Vec<u8> {
    WireFormat::BINARY.encode(b).expect("encodable block")
}

/// The block stored as `bytes` under `hash`, decoded and hash-checked.
fn decode(bytes: &[u8], hash: &BlockHash) -> Block {
    WireFormat::BINARY
        .decode_stored(bytes, hash)
        .expect("stored block")
}

/// The key of the (timestamp, hash) map.
fn time_key(b: &Block) -> [u8; 40] {
    let mut k = [0; 40];
    k[..8].copy_from_slice(&b.timestamp_nanos().to_be_bytes());
    k[8..].copy_from_slice(b.hash().as_bytes());
    k
}

/// The hash stored in the index map.
fn hash_of(v: &[u8]) -> BlockHash {
    BlockHash::from_slice(v).expect("32-byte hash")
}

/// Panics if the index slot holds another block; true if it holds this one
/// (the write is then skipped, as ours skip a block already stored).
fn slot_taken(existing: Option<&[u8]>, b: &Block) -> bool {
    match existing {
        None => false,
        Some(h) if h == b.hash().as_bytes() => true,
        Some(_) => panic!("index {} holds another block", b.index()),
    }
}

/// A listing of up to 100 blocks of one payload type, fed the stored blocks in
/// index order.
struct Listing<'a> {
    ty: &'a str,
    found: usize,
}

impl<'a> Listing<'a> {
    fn of(ty: &'a str) -> Self {
        Self { ty, found: 0 }
    }

    /// Takes the metadata of the block stored as `bytes` under `hash` if its
    /// payload type is the listing's: its fields decoded without hashing (the
    /// hash is the key). True once 100 are found.
    fn offer(&mut self, hash: &[u8], bytes: &[u8]) -> bool {
        let p = WireFormat::BINARY
            .decode_parts(bytes)
            .expect("stored block");
        if p.payload_type == self.ty {
            std::hint::black_box(BlockMetadata {
                hash: hash_of(hash),
                index: p.index,
                timestamp: system_time_from_unix_nanos(p.timestamp_nanos),
                payload_type: p.payload_type,
                public_key: p.public_key,
                size_bytes: bytes.len() as u64,
            });
            self.found += 1;
        }
        self.found == 100
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BULK_TYPE, bulk_blocks};

    /// Each peer does the job the matrix times: what it stores comes back
    /// byte-identical by hash, by index range and in listings, after a reopen
    /// too, and storing a block again changes nothing.
    #[test]
    fn every_peer_keeps_what_it_stores() {
        let blocks = bulk_blocks(300, 120);
        for subject in Subject::PEERS {
            for durable in [false, true] {
                let dir = tempfile::tempdir().unwrap();
                let mut p = open(subject, dir.path(), durable);
                for chunk in blocks.chunks(64) {
                    p.store(chunk);
                }
                p.store(&blocks[..10]);
                let name = subject.name();
                assert_eq!(p.retrieve(&blocks[123].hash()), blocks[123], "{name}");
                assert_eq!(p.range(40, 50), blocks[40..90], "{name}");
                assert_eq!(
                    p.range(290, 50),
                    blocks[290..],
                    "{name}: a range past the end"
                );
                assert_eq!(p.list_100(150, BULK_TYPE), 100, "{name}");
                assert_eq!(
                    p.list_100(250, BULK_TYPE),
                    50,
                    "{name}: a listing past the end"
                );
                assert_eq!(p.list_100(0, "other/v1"), 0, "{name}: another type");
                p.close();
                let p = open(subject, dir.path(), durable);
                assert_eq!(p.range(0, 1_000), blocks, "{name}: after reopening");
                p.close();
            }
        }
    }

    #[test]
    #[should_panic(expected = "holds another block")]
    fn a_block_contradicting_a_stored_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = open(Subject::Redb, dir.path(), false);
        p.store(&bulk_blocks(3, 50));
        p.store(&bulk_blocks(3, 60)[2..]);
    }
}
