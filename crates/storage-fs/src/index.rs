//! The in-memory index of a store: rebuilt on open from segment index files (and
//! the unsealed tail of the log), updated by every write after it is on disk.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use storage_core::{
    BlockHash, BlockMetadata, ListOptions, PublicKey, Result, SortOrder, StorageError,
    system_time_from_unix_nanos,
};

use crate::format::{IndexHeader, Op, PutOp, RawOp, RawPut};

/// Where an entry lives (16 bytes: segments are at most 2 GiB and one record
/// at most 1 GiB, so offsets fit in 32 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loc {
    /// Segment id.
    pub seg: u64,
    /// Offset of the entry header.
    pub off: u32,
    /// Entry length.
    pub len: u32,
}

/// One stored block, as the index keeps it (72 bytes plus the map's overhead).
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub hash: BlockHash,
    pub ts: u64,
    pub size: u32,
    pub raw_len: u32,
    pub key: u32,
    pub ty: u32,
    pub loc: Loc,
}

impl Loc {
    /// The entry of `len` bytes at offset `off` of segment `seg`.
    pub(crate) fn at(seg: u64, off: u64, len: u32) -> Self {
        Self {
            seg,
            off: off as u32,
            len,
        }
    }
}

impl Entry {
    /// The entry of put `p` (signer and type as global ids) in segment `seg`.
    fn of(seg: u64, p: &RawPut) -> Self {
        Self {
            hash: p.hash,
            ts: p.ts,
            size: p.size,
            raw_len: p.raw_len,
            key: p.key,
            ty: p.ty,
            loc: Loc::at(seg, p.off, p.len),
        }
    }
}

/// The first eight bytes of a block hash: already uniformly distributed
/// (SHA-256), and grinding blocks to collide 64 bits is infeasible.
fn prefix(h: &BlockHash) -> u64 {
    u64::from_le_bytes(h.0[..8].try_into().expect("8 bytes"))
}

/// Hash → chain index. Slots hold only `(hash prefix, index)` (16 bytes, against
/// 40 for a map keyed by the whole hash): the full hash lives in the entry, which
/// every lookup compares against. A smaller table is faster to build on open and
/// misses the cache less.
#[derive(Debug, Default)]
struct HashIndex(hashbrown::HashTable<(u64, u64)>);

impl HashIndex {
    fn with_capacity(n: usize) -> Self {
        Self(hashbrown::HashTable::with_capacity(n))
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn get(&self, h: &BlockHash, by_index: &BTreeMap<u64, Entry>) -> Option<u64> {
        let p = prefix(h);
        self.0
            .find(p, |&(q, i)| {
                q == p && by_index.get(&i).is_some_and(|e| e.hash == *h)
            })
            .map(|&(_, i)| i)
    }

    /// Adds a hash the caller knows is absent.
    fn insert(&mut self, h: &BlockHash, index: u64) {
        let p = prefix(h);
        self.0.insert_unique(p, (p, index), |&(q, _)| q);
    }

    /// Removes a hash; call before its entry leaves `by_index`.
    fn remove(&mut self, h: &BlockHash, by_index: &BTreeMap<u64, Entry>) -> Option<u64> {
        let p = prefix(h);
        match self.0.find_entry(p, |&(q, i)| {
            q == p && by_index.get(&i).is_some_and(|e| e.hash == *h)
        }) {
            Ok(slot) => Some(slot.remove().0.1),
            Err(_) => None,
        }
    }
}

/// Byte accounting of one segment.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SegUse {
    /// Bytes of live entries.
    pub live: u64,
    /// Bytes of live entries before compression.
    pub raw_live: u64,
    /// Bytes of entries that were deleted or superseded.
    pub dead_entries: u64,
}

/// Interns values so entries hold 4-byte ids instead of keys and strings.
#[derive(Debug)]
struct Interner<T: std::hash::Hash + Eq + Clone> {
    values: Vec<T>,
    ids: HashMap<T, u32>,
}

impl<T: std::hash::Hash + Eq + Clone> Default for Interner<T> {
    fn default() -> Self {
        Self {
            values: Vec::new(),
            ids: HashMap::new(),
        }
    }
}

impl<T: std::hash::Hash + Eq + Clone> Interner<T> {
    fn id(&mut self, v: &T) -> u32 {
        if let Some(id) = self.ids.get(v) {
            return *id;
        }
        self.values.push(v.clone());
        let id = self.values.len() as u32 - 1;
        self.ids.insert(v.clone(), id);
        id
    }
}

/// The whole index.
#[derive(Debug, Default)]
pub(crate) struct Index {
    pub by_index: BTreeMap<u64, Entry>,
    by_hash: HashIndex,
    /// `(timestamp, index)`: time order with the index as tie-breaker.
    by_time: BTreeSet<(u64, u64)>,
    keys: Interner<PublicKey>,
    types: Interner<Arc<str>>,
    pub head: Option<BlockHash>,
    pub total_size: u64,
    pub segs: BTreeMap<u64, SegUse>,
}

impl Index {
    /// The entry of a stored block.
    pub(crate) fn get(&self, hash: &BlockHash) -> Option<&Entry> {
        self.by_hash
            .get(hash, &self.by_index)
            .map(|i| &self.by_index[&i])
    }

    /// Whether a block is stored.
    pub(crate) fn contains(&self, hash: &BlockHash) -> bool {
        self.by_hash.get(hash, &self.by_index).is_some()
    }

    /// Number of stored blocks.
    pub(crate) fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// The block at `index`, if any.
    pub(crate) fn at(&self, index: u64) -> Option<&Entry> {
        self.by_index.get(&index)
    }

    /// Interns a signer and a payload type.
    pub(crate) fn ids(&mut self, key: &PublicKey, ty: &Arc<str>) -> (u32, u32) {
        (self.keys.id(key), self.types.id(ty))
    }

    /// The signer behind an id.
    pub(crate) fn key(&self, id: u32) -> PublicKey {
        self.keys.values[id as usize]
    }

    /// The payload type behind an id.
    pub(crate) fn ty(&self, id: u32) -> &Arc<str> {
        &self.types.values[id as usize]
    }

    /// Applies one logged operation of segment `seg`. Replaying a log applies every
    /// operation in order; live writes apply theirs after they are on disk.
    pub(crate) fn apply(&mut self, seg: u64, op: &Op) -> Result<()> {
        match op {
            Op::Put(p) => self.put(seg, p),
            Op::Delete(h) => {
                self.delete(h);
                Ok(())
            }
            Op::Head(h) => {
                // A head names a stored block; anything else reads as "no head".
                self.head = h.filter(|h| self.contains(h));
                Ok(())
            }
        }
    }

    fn put(&mut self, seg: u64, p: &PutOp) -> Result<()> {
        let loc = Loc::at(seg, p.off, p.len);
        if let Some(index) = self.by_hash.get(&p.hash, &self.by_index) {
            // The same block again (a compaction's copy replayed after the original
            // survived a crash): the newer copy wins; the older one is dead.
            self.relocate(index, loc);
            return Ok(());
        }
        if let Some(other) = self.by_index.get(&p.index) {
            return Err(StorageError::corrupted(format!(
                "fs: log puts block {} at index {} which block {} already holds",
                p.hash, p.index, other.hash
            )));
        }
        let (key, ty) = self.ids(&p.key, &p.ty);
        self.by_hash.insert(&p.hash, p.index);
        self.by_time.insert((p.ts, p.index));
        self.total_size += u64::from(p.size);
        let u = self.segs.entry(seg).or_default();
        u.live += u64::from(p.len);
        u.raw_live += u64::from(p.raw_len);
        self.by_index
            .insert(p.index, Entry::of(seg, &RawPut::with_ids(p, key, ty)));
        Ok(())
    }

    fn seg_dead(&mut self, loc: Loc, raw: u64) {
        if let Some(u) = self.segs.get_mut(&loc.seg) {
            u.live -= u64::from(loc.len);
            u.raw_live -= raw;
            u.dead_entries += u64::from(loc.len);
        }
    }

    /// Removes a block; returns its entry.
    pub(crate) fn delete(&mut self, hash: &BlockHash) -> Option<Entry> {
        let index = self.by_hash.remove(hash, &self.by_index)?;
        let e = self.by_index.remove(&index).expect("indexed");
        self.by_time.remove(&(e.ts, index));
        self.total_size -= u64::from(e.size);
        self.seg_dead(e.loc, u64::from(e.raw_len));
        if self.head == Some(*hash) {
            self.head = None;
        }
        Some(e)
    }

    /// Moves a live entry to a new copy of it; the old bytes are dead.
    pub(crate) fn relocate(&mut self, index: u64, loc: Loc) {
        let e = self.by_index.get_mut(&index).expect("indexed");
        let raw = u64::from(e.raw_len);
        let old = std::mem::replace(&mut e.loc, loc);
        self.seg_dead(old, raw);
        let u = self.segs.entry(loc.seg).or_default();
        u.live += u64::from(loc.len);
        u.raw_live += raw;
    }

    /// The metadata `list_blocks` returns for an entry.
    pub(crate) fn metadata(&self, index: u64, e: &Entry) -> BlockMetadata {
        BlockMetadata {
            hash: e.hash,
            index,
            timestamp: system_time_from_unix_nanos(e.ts),
            payload_type: self.ty(e.ty).to_string(),
            public_key: self.key(e.key),
            size_bytes: u64::from(e.size),
        }
    }

    /// Oldest and newest timestamps.
    pub(crate) fn time_bounds(&self) -> Option<(u64, u64)> {
        Some((self.by_time.first()?.0, self.by_time.last()?.0))
    }

    /// `list_blocks`: walks only the part of the ordered index the query needs.
    pub(crate) fn list(&self, o: &ListOptions) -> Vec<BlockMetadata> {
        let Some(m) = o.matcher() else {
            return Vec::new();
        };
        let ((tlo, thi), (lo, hi), (tstart, tend)) = (m.times(), m.indices(), m.time_keys());
        let skip = usize::try_from(o.offset.unwrap_or(0)).unwrap_or(usize::MAX);
        let take = usize::try_from(o.limit.unwrap_or(u64::MAX)).unwrap_or(usize::MAX);
        if take == 0 {
            return Vec::new();
        }
        let f = o.filter.as_ref();
        // Resolve filters to interned ids once: an unknown signer or type matches
        // nothing, and comparing ids is cheaper than comparing values.
        let key = match f.and_then(|f| f.public_key.as_ref()) {
            None => None,
            Some(k) => match self.keys.ids.get(k) {
                Some(id) => Some(*id),
                None => return Vec::new(),
            },
        };
        let ty = match f.and_then(|f| f.payload_type.as_deref()) {
            None => None,
            Some(t) => match self.types.ids.get(t) {
                Some(id) => Some(*id),
                None => return Vec::new(),
            },
        };
        let keep = |e: &Entry| {
            e.ts >= tlo
                && e.ts <= thi
                && key.is_none_or(|k| k == e.key)
                && ty.is_none_or(|t| t == e.ty)
        };
        let meta = |(i, e): (&u64, &Entry)| self.metadata(*i, e);
        match o.order {
            SortOrder::Ascending | SortOrder::ByIndex => self
                .by_index
                .range(lo..=hi)
                .filter(|(_, e)| keep(e))
                .skip(skip)
                .take(take)
                .map(meta)
                .collect(),
            SortOrder::Descending => self
                .by_index
                .range(lo..=hi)
                .rev()
                .filter(|(_, e)| keep(e))
                .skip(skip)
                .take(take)
                .map(meta)
                .collect(),
            SortOrder::ByTimestamp => self
                .by_time
                .range(tstart..=tend)
                .filter(|(_, i)| (lo..=hi).contains(i))
                .map(|(_, i)| (i, &self.by_index[i]))
                .filter(|(_, e)| keep(e))
                .skip(skip)
                .take(take)
                .map(meta)
                .collect(),
        }
    }
}

/// What the helper thread of [`Bulk`] receives: `(hash prefix, index, timestamp)`.
type Keys = Vec<(u64, u64, u64)>;

/// What it returns: the hash and time indexes, or `None` if they need a replay.
type Helped = Option<(HashIndex, BTreeSet<(u64, u64)>)>;

/// Builds an [`Index`] in bulk while a store opens.
///
/// A log without deletions (the common case: chains are appended) needs no
/// replay. Entries are collected once, and the ordered map is built from their
/// sorted runs. Meanwhile a helper thread fills the hash index and the time index
/// from what has been parsed so far, so opening uses both cores.
///
/// The caller replays the log operation by operation instead when any of these
/// turns up: a deletion, a malformed index operation, a block or index seen twice
/// (the copies of a compaction replayed after their originals, or damage), or two
/// hashes sharing a 64-bit prefix. The replay handles superseded copies and
/// reports real conflicts.
pub(crate) struct Bulk {
    ix: Index,
    puts: Vec<(u64, Entry)>,
    head: Option<BlockHash>,
    chunk: Keys,
    tx: Option<std::sync::mpsc::SyncSender<Keys>>,
    helper: Option<std::thread::JoinHandle<Helped>>,
}

/// Entries handed to the helper at a time.
const CHUNK: usize = 1 << 16;

impl Bulk {
    /// A builder expecting about `capacity` blocks.
    pub(crate) fn new(capacity: usize) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Keys>(8);
        let helper = std::thread::Builder::new()
            .name("olocus-fs-open".into())
            .spawn(move || {
                let mut hashes = HashIndex::with_capacity(capacity);
                let mut times = Vec::with_capacity(capacity);
                let mut ok = true;
                for chunk in rx {
                    for (p, index, ts) in chunk {
                        // Two hashes with one prefix cannot be told apart here.
                        if ok && hashes.0.find(p, |&(q, _)| q == p).is_some() {
                            ok = false;
                        }
                        if ok {
                            hashes.0.insert_unique(p, (p, index), |&(q, _)| q);
                            times.push((ts, index));
                        }
                    }
                }
                ok.then(|| (hashes, times.into_iter().collect()))
            })
            .ok();
        Self {
            ix: Index::default(),
            puts: Vec::with_capacity(capacity),
            head: None,
            chunk: Vec::with_capacity(CHUNK),
            tx: helper.is_some().then_some(tx),
            helper,
        }
    }

    fn push(&mut self, index: u64, e: Entry) {
        self.chunk.push((prefix(&e.hash), index, e.ts));
        if self.chunk.len() == CHUNK {
            self.send();
        }
        self.puts.push((index, e));
    }

    fn send(&mut self) {
        let chunk = std::mem::replace(&mut self.chunk, Vec::with_capacity(CHUNK));
        if let Some(tx) = &self.tx
            && tx.send(chunk).is_err()
        {
            self.tx = None; // the helper is gone; `finish` reports it
        }
    }

    /// Adds an index file's operations; `false` if the bulk path cannot take them.
    pub(crate) fn add_indexed(
        &mut self,
        seg: u64,
        h: &IndexHeader,
        ops: impl Iterator<Item = Option<RawOp>>,
    ) -> bool {
        // The file's key and type ids map to global ones once per file.
        let kmap: Vec<u32> = h.keys.iter().map(|k| self.ix.keys.id(k)).collect();
        let tmap: Vec<u32> = h.types.iter().map(|t| self.ix.types.id(t)).collect();
        let mut usage = SegUse::default();
        for op in ops {
            match op {
                Some(RawOp::Put(p)) => {
                    let global = RawPut {
                        key: kmap[p.key as usize],
                        ty: tmap[p.ty as usize],
                        ..p
                    };
                    self.put(seg, &mut usage, &global);
                }
                Some(RawOp::Head(head)) => self.head = head,
                Some(RawOp::Delete(_)) | None => return false,
            }
        }
        self.add_usage(seg, usage);
        true
    }

    /// Adds operations decoded from a segment's unindexed tail; `false` if the
    /// bulk path cannot take them.
    pub(crate) fn add_tail(&mut self, seg: u64, ops: &[Op]) -> bool {
        let mut usage = SegUse::default();
        for op in ops {
            match op {
                Op::Put(p) => {
                    let (key, ty) = self.ix.ids(&p.key, &p.ty);
                    self.put(seg, &mut usage, &RawPut::with_ids(p, key, ty));
                }
                Op::Head(head) => self.head = *head,
                Op::Delete(_) => return false,
            }
        }
        self.add_usage(seg, usage);
        true
    }

    /// Collects one put whose signer and type are global ids.
    fn put(&mut self, seg: u64, usage: &mut SegUse, p: &RawPut) {
        usage.live += u64::from(p.len);
        usage.raw_live += u64::from(p.raw_len);
        self.ix.total_size += u64::from(p.size);
        self.push(p.index, Entry::of(seg, p));
    }

    fn add_usage(&mut self, seg: u64, usage: SegUse) {
        if usage.live > 0 {
            let u = self.ix.segs.entry(seg).or_default();
            u.live += usage.live;
            u.raw_live += usage.raw_live;
        }
    }

    /// The index; `None` if the log needs a replay after all.
    pub(crate) fn finish(mut self) -> Option<Index> {
        self.send();
        self.tx = None; // ends the helper's input
        let mut ix = std::mem::take(&mut self.ix);
        let puts = std::mem::take(&mut self.puts);
        let count = puts.len();
        // While the helper finishes: the ordered map, from sorted runs (a log is
        // appended in index order, mostly), near-linear.
        ix.by_index = puts.into_iter().collect();
        let (hashes, by_time) = self.helper.take()?.join().ok()??;
        if ix.by_index.len() != count || hashes.len() != count {
            return None; // an index or a block twice
        }
        ix.by_hash = hashes;
        ix.by_time = by_time;
        ix.head = self.head.filter(|h| ix.contains(h));
        Some(ix)
    }
}

impl Drop for Bulk {
    fn drop(&mut self) {
        // An abandoned load: end the helper's input and wait for it, so no thread
        // outlives the open.
        self.tx = None;
        if let Some(h) = self.helper.take() {
            let _ = h.join();
        }
    }
}
