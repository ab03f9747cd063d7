//! redb: a copy-on-write B-tree in one file, default options.

use std::path::Path;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use storage_core::{Block, BlockHash};

use super::{Listing, Peer, decode, encode, hash_of, slot_taken, time_key};

const BLOCKS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("blocks");
const BY_INDEX: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("by_index");
const BY_TIME: TableDefinition<'_, &[u8], ()> = TableDefinition::new("by_time");

pub(super) struct Redb {
    db: Database,
    durable: bool,
}

impl Redb {
    pub(super) fn open(dir: &Path, durable: bool) -> Self {
        let db = Database::create(dir.join("blocks.redb")).expect("redb open");
        Self { db, durable }
    }
}

impl Peer for Redb {
    fn store(&mut self, blocks: &[Block]) {
        let mut tx = self.db.begin_write().expect("begin");
        // Plain writes are committed without a sync (redb persists them with the
        // next durable commit: `close` makes one).
        if !self.durable {
            tx.set_durability(Durability::None).expect("durability");
        }
        {
            let mut data = tx.open_table(BLOCKS).expect("table");
            let mut index = tx.open_table(BY_INDEX).expect("table");
            let mut time = tx.open_table(BY_TIME).expect("table");
            for b in blocks {
                let held = index.get(b.index()).expect("get");
                if slot_taken(held.as_ref().map(|g| g.value()), b) {
                    continue;
                }
                drop(held);
                let h = b.hash();
                data.insert(h.as_bytes().as_slice(), encode(b).as_slice())
                    .expect("insert");
                index
                    .insert(b.index(), h.as_bytes().as_slice())
                    .expect("insert");
                time.insert(time_key(b).as_slice(), ()).expect("insert");
            }
        }
        tx.commit().expect("commit");
    }

    fn retrieve(&self, hash: &BlockHash) -> Block {
        let tx = self.db.begin_read().expect("begin");
        let t = tx.open_table(BLOCKS).expect("table");
        let v = t
            .get(hash.as_bytes().as_slice())
            .expect("get")
            .expect("stored");
        decode(v.value(), hash)
    }

    fn list_100(&self, lo: u64, ty: &str) -> usize {
        let tx = self.db.begin_read().expect("begin");
        let (index, data) = (
            tx.open_table(BY_INDEX).expect("table"),
            tx.open_table(BLOCKS).expect("table"),
        );
        let mut listing = Listing::of(ty);
        for item in index.range(lo..).expect("range") {
            let (_, h) = item.expect("entry");
            let bytes = data.get(h.value()).expect("get").expect("stored");
            if listing.offer(h.value(), bytes.value()) {
                break;
            }
        }
        listing.found
    }

    fn range(&self, lo: u64, count: usize) -> Vec<Block> {
        let tx = self.db.begin_read().expect("begin");
        let (index, data) = (
            tx.open_table(BY_INDEX).expect("table"),
            tx.open_table(BLOCKS).expect("table"),
        );
        index
            .range(lo..)
            .expect("range")
            .take(count)
            .map(|item| {
                let (_, h) = item.expect("entry");
                let hash = hash_of(h.value());
                let bytes = data.get(h.value()).expect("get").expect("stored");
                decode(bytes.value(), &hash)
            })
            .collect()
    }

    fn close(self: Box<Self>) {
        if !self.durable {
            // One durable commit persists the plain ones before it.
            let tx = self.db.begin_write().expect("begin");
            tx.commit().expect("commit");
        }
    }
}
