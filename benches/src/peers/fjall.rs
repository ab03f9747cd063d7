//! fjall: an LSM tree in pure Rust, default options (LZ4 on).

use std::path::Path;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable};
use storage_core::{Block, BlockHash};

use super::{Listing, Peer, decode, encode, hash_of, slot_taken, time_key};

pub(super) struct Fjall {
    db: Database,
    blocks: Keyspace,
    by_index: Keyspace,
    by_time: Keyspace,
    durable: bool,
}

impl Fjall {
    pub(super) fn open(dir: &Path, durable: bool) -> Self {
        let db = Database::builder(dir).open().expect("fjall open");
        let ks = |name| {
            db.keyspace(name, KeyspaceCreateOptions::default)
                .expect("keyspace")
        };
        let (blocks, by_index, by_time) = (ks("blocks"), ks("by_index"), ks("by_time"));
        Self {
            db,
            blocks,
            by_index,
            by_time,
            durable,
        }
    }
}

impl Peer for Fjall {
    fn store(&mut self, blocks: &[Block]) {
        // Plain batches go to the journal's OS buffers; durable ones are synced
        // (fdatasync, as the other engines sync).
        let mut batch = self
            .db
            .batch()
            .durability(self.durable.then_some(PersistMode::SyncData));
        for b in blocks {
            let idx = b.index().to_be_bytes();
            let held = self.by_index.get(idx).expect("get");
            if slot_taken(held.as_deref(), b) {
                continue;
            }
            let h = b.hash();
            batch.insert(&self.blocks, h.as_bytes().as_slice(), encode(b));
            batch.insert(&self.by_index, idx, h.as_bytes().as_slice());
            batch.insert(&self.by_time, time_key(b), []);
        }
        batch.commit().expect("commit");
    }

    fn retrieve(&self, hash: &BlockHash) -> Block {
        let v = self
            .blocks
            .get(hash.as_bytes())
            .expect("get")
            .expect("stored");
        decode(&v, hash)
    }

    fn list_100(&self, lo: u64, ty: &str) -> usize {
        let snap = self.db.snapshot();
        let mut listing = Listing::of(ty);
        for item in snap.range(&self.by_index, lo.to_be_bytes()..) {
            let (_, h) = item.into_inner().expect("entry");
            let bytes = snap.get(&self.blocks, &h).expect("get").expect("stored");
            if listing.offer(&h, &bytes) {
                break;
            }
        }
        listing.found
    }

    fn range(&self, lo: u64, count: usize) -> Vec<Block> {
        let snap = self.db.snapshot();
        snap.range(&self.by_index, lo.to_be_bytes()..)
            .take(count)
            .map(|item| {
                let (_, h) = item.into_inner().expect("entry");
                let bytes = snap.get(&self.blocks, &h).expect("get").expect("stored");
                decode(&bytes, &hash_of(&h))
            })
            .collect()
    }

    fn close(self: Box<Self>) {
        self.db.persist(PersistMode::SyncAll).expect("persist");
    }
}
