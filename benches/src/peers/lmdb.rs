//! LMDB through heed: a memory-mapped B-tree, default flags (plus `NO_SYNC` for
//! plain writes).

// Opening an LMDB environment is `unsafe` in heed: the caller promises the file
// is not opened twice in one process, nor changed underneath the map. The
// matrix opens each store once at a time, in a directory of its own.
#![allow(unsafe_code)]

use std::ops::Bound;
use std::path::Path;

use heed::types::Bytes;
use heed::{CommitOrAbort, Database, Env, EnvFlags, EnvOpenOptions};
use storage_core::{Block, BlockHash};

use super::{Listing, Peer, decode, encode, hash_of, slot_taken, time_key};

type Map = Database<'static, Bytes, Bytes>;

pub(super) struct Lmdb {
    env: Env,
    blocks: Map,
    by_index: Map,
    by_time: Map,
}

impl Lmdb {
    pub(super) fn open(dir: &Path, durable: bool) -> Self {
        let mut options = EnvOpenOptions::new();
        // The map is reserved address space, not memory: room for any run.
        options.map_size(64 << 30).max_dbs(3);
        // SAFETY: `NO_SYNC` only drops the sync at commit (what a plain write
        // asks for); `close` syncs before the environment goes.
        if !durable {
            unsafe { options.flags(EnvFlags::NO_SYNC) };
        }
        // SAFETY: see the top of this module: one open environment per
        // directory, and nothing else writes its files.
        let env = unsafe { options.open(dir) }.expect("lmdb open");
        let tx = env.write_txn().expect("begin");
        let [blocks, by_index, by_time] = env
            .create_databases_and_commit(tx, |opener, tx| {
                let mut db = |name| opener.create_database::<Bytes, Bytes>(tx, Some(name));
                Ok::<_, heed::Error>(CommitOrAbort::<_, ()>::Commit([
                    db("blocks")?,
                    db("by_index")?,
                    db("by_time")?,
                ]))
            })
            .expect("databases")
            .unwrap_commit();
        Self {
            env,
            blocks,
            by_index,
            by_time,
        }
    }
}

impl Peer for Lmdb {
    fn store(&mut self, blocks: &[Block]) {
        let mut tx = self.env.write_txn().expect("begin");
        for b in blocks {
            let idx = b.index().to_be_bytes();
            if slot_taken(self.by_index.get(&tx, &idx).expect("get"), b) {
                continue;
            }
            let h = b.hash();
            self.blocks
                .put(&mut tx, h.as_bytes(), &encode(b))
                .expect("put");
            self.by_index.put(&mut tx, &idx, h.as_bytes()).expect("put");
            self.by_time.put(&mut tx, &time_key(b), &[]).expect("put");
        }
        tx.commit().expect("commit");
    }

    fn retrieve(&self, hash: &BlockHash) -> Block {
        let tx = self.env.read_txn().expect("begin");
        let v = self
            .blocks
            .get(&tx, hash.as_bytes())
            .expect("get")
            .expect("stored");
        decode(v, hash)
    }

    fn list_100(&self, lo: u64, ty: &str) -> usize {
        let tx = self.env.read_txn().expect("begin");
        let from = lo.to_be_bytes();
        let mut listing = Listing::of(ty);
        for item in self
            .by_index
            .range(&tx, &(Bound::Included(&from[..]), Bound::Unbounded))
            .expect("range")
        {
            let (_, h) = item.expect("entry");
            let bytes = self.blocks.get(&tx, h).expect("get").expect("stored");
            if listing.offer(h, bytes) {
                break;
            }
        }
        listing.found
    }

    fn range(&self, lo: u64, count: usize) -> Vec<Block> {
        let tx = self.env.read_txn().expect("begin");
        let from = lo.to_be_bytes();
        self.by_index
            .range(&tx, &(Bound::Included(&from[..]), Bound::Unbounded))
            .expect("range")
            .take(count)
            .map(|item| {
                let (_, h) = item.expect("entry");
                let bytes = self.blocks.get(&tx, h).expect("get").expect("stored");
                decode(bytes, &hash_of(h))
            })
            .collect()
    }

    fn close(self: Box<Self>) {
        self.env.force_sync().expect("sync");
        // A path's environment must be gone before it is opened again.
        self.env.prepare_for_closing().wait();
    }
}
