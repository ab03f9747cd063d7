//! The index of a store: the tables of the segments (on disk, read on demand)
//! and, in memory, what no table covers yet (the active segment's newest
//! writes), the deletions that removed a table's entries, and the sums.
//!
//! A block's position is `(segment, offset)`: the log's order. A deletion at
//! position `d` removes the copies of its block at positions below `d`; a copy
//! written after it (the block stored again) is live. Opening reads each
//! table's header and resolves its deletions against the older tables; nothing
//! is read per block.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use storage_core::{
    BlockHash, BlockMetadata, ListOptions, PublicKey, Result, SortOrder, StorageError,
    system_time_from_unix_nanos,
};

use crate::format::{Op, PutOp};
use crate::table::{Table, TableEntry, prefix};

/// Deletions of a segment: (hash, offset of the record).
pub(crate) type Deletes = Vec<(BlockHash, u64)>;

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

impl Loc {
    /// The entry of `len` bytes at offset `off` of segment `seg`.
    pub(crate) fn at(seg: u64, off: u64, len: u32) -> Self {
        Self {
            seg,
            off: off as u32,
            len,
        }
    }

    /// Its place in the log.
    fn pos(&self) -> (u64, u64) {
        (self.seg, u64::from(self.off))
    }
}

/// One stored block, as the index gives it (signer and type as store-wide ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    pub hash: BlockHash,
    pub ts: u64,
    pub size: u32,
    pub raw_len: u32,
    pub key: u32,
    pub ty: u32,
    pub loc: Loc,
}

/// Hash → (chain index, entry) of the in-memory part: a lookup by hash reads
/// one slot (the part is at most a segment's worth, so keeping the entry twice,
/// here and in the ordered map, costs little).
#[derive(Debug, Default)]
struct HashIndex(hashbrown::HashTable<(u64, Entry)>);

impl HashIndex {
    fn get(&self, h: &BlockHash) -> Option<(u64, Entry)> {
        self.0.find(prefix(h), |(_, e)| e.hash == *h).copied()
    }

    fn insert(&mut self, index: u64, e: Entry) {
        self.0
            .insert_unique(prefix(&e.hash), (index, e), |(_, e)| prefix(&e.hash));
    }

    fn remove(&mut self, h: &BlockHash) -> Option<(u64, Entry)> {
        match self.0.find_entry(prefix(h), |(_, e)| e.hash == *h) {
            Ok(slot) => Some(slot.remove().0),
            Err(_) => None,
        }
    }
}

/// Blocks no table covers yet: every one of them is live.
#[derive(Debug, Default)]
struct Mem {
    by_index: BTreeMap<u64, Entry>,
    by_hash: HashIndex,
    /// `(timestamp, index)`.
    by_time: BTreeSet<(u64, u64)>,
}

impl Mem {
    fn get(&self, h: &BlockHash) -> Option<(u64, Entry)> {
        self.by_hash.get(h)
    }

    fn insert(&mut self, index: u64, e: Entry) {
        self.by_hash.insert(index, e);
        self.by_time.insert((e.ts, index));
        self.by_index.insert(index, e);
    }

    fn remove(&mut self, h: &BlockHash) -> Option<(u64, Entry)> {
        let (i, e) = self.by_hash.remove(h)?;
        self.by_index.remove(&i);
        self.by_time.remove(&(e.ts, i));
        Some((i, e))
    }
}

/// Byte and block accounting of one segment.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SegUse {
    /// Live blocks.
    pub count: u64,
    /// Their canonical sizes.
    pub size: u64,
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

/// A table and the store-wide ids of its signers and types.
#[derive(Debug)]
struct Layer {
    table: Arc<Table>,
    keys: Vec<u32>,
    types: Vec<u32>,
}

impl Layer {
    fn entry(&self, e: &TableEntry) -> Entry {
        Entry {
            hash: e.hash,
            ts: e.ts,
            size: e.size,
            raw_len: e.raw_len,
            key: self.keys[e.key as usize],
            ty: self.types[e.ty as usize],
            loc: Loc::at(self.table.seg, u64::from(e.off), e.len),
        }
    }
}

/// The whole index.
#[derive(Debug, Default)]
pub(crate) struct Index {
    mem: Mem,
    layers: BTreeMap<u64, Layer>,
    /// Hash → position of the latest deletion that removed a copy in a table.
    dead: HashMap<BlockHash, (u64, u64), storage_core::BlockHashBuildHasher>,
    keys: Interner<PublicKey>,
    types: Interner<Arc<str>>,
    pub head: Option<BlockHash>,
    count: u64,
    pub total_size: u64,
    pub segs: BTreeMap<u64, SegUse>,
}

/// A source of entries in some order, for merged listings.
enum Cursor<'a> {
    Mem(Box<dyn Iterator<Item = (u64, Entry)> + 'a>),
    Table {
        layer: &'a Layer,
        ranks: std::ops::Range<u32>,
        /// Walk entry positions (index order) or time ranks.
        by_time: bool,
        rev: bool,
    },
}

impl Cursor<'_> {
    fn next(&mut self) -> Result<Option<(u64, Entry)>> {
        match self {
            Cursor::Mem(it) => Ok(it.next()),
            Cursor::Table {
                layer,
                ranks,
                by_time,
                rev,
            } => {
                let k = if *rev {
                    ranks.next_back()
                } else {
                    ranks.next()
                };
                let Some(k) = k else { return Ok(None) };
                let pos = if *by_time {
                    layer.table.time_pos(k)?
                } else {
                    k
                };
                let e = layer.table.entry(pos)?;
                Ok(Some((e.index, layer.entry(&e))))
            }
        }
    }
}

/// Entries of several sources merged into one order.
struct Merge<'a> {
    cursors: Vec<Cursor<'a>>,
    heads: Vec<Option<(u64, Entry)>>,
    by_time: bool,
    rev: bool,
}

impl<'a> Merge<'a> {
    fn new(mut cursors: Vec<Cursor<'a>>, by_time: bool, rev: bool) -> Result<Self> {
        let heads = cursors
            .iter_mut()
            .map(Cursor::next)
            .collect::<Result<_>>()?;
        Ok(Self {
            cursors,
            heads,
            by_time,
            rev,
        })
    }

    fn next(&mut self) -> Result<Option<(u64, Entry)>> {
        if let [cursor] = &mut self.cursors[..] {
            // One source (the common case: what is listed lies in one table,
            // or in memory): nothing to merge.
            let out = self.heads[0].take();
            if out.is_some() {
                self.heads[0] = cursor.next()?;
            }
            return Ok(out);
        }
        let key = |h: &(u64, Entry)| {
            if self.by_time {
                (h.1.ts, h.0, h.1.loc.pos())
            } else {
                (h.0, 0, h.1.loc.pos())
            }
        };
        let mut best: Option<usize> = None;
        for (i, h) in self.heads.iter().enumerate() {
            let Some(h) = h else { continue };
            let better = match best {
                None => true,
                Some(b) => {
                    let (kb, kh) = (key(self.heads[b].as_ref().expect("set")), key(h));
                    if self.rev { kh > kb } else { kh < kb }
                }
            };
            if better {
                best = Some(i);
            }
        }
        let Some(b) = best else { return Ok(None) };
        let out = self.heads[b].take();
        self.heads[b] = self.cursors[b].next()?;
        Ok(out)
    }
}

impl Index {
    /// Whether a copy is live: no deletion after it.
    fn live(&self, e: &Entry) -> bool {
        // A deletion's record never shares an entry's offset; a superseding
        // copy marks its own position, at which it is live.
        self.dead.is_empty() || self.dead.get(&e.hash).is_none_or(|d| *d <= e.loc.pos())
    }

    /// The live copy of a block (newest copy first: a dead newest copy means
    /// the block was deleted).
    pub(crate) fn get(&self, hash: &BlockHash) -> Result<Option<(u64, Entry)>> {
        if let Some(found) = self.mem.get(hash) {
            return Ok(Some(found));
        }
        for layer in self.layers.values().rev() {
            if let Some((_, e)) = layer.table.find(hash, u64::MAX)? {
                let e = (e.index, layer.entry(&e));
                return Ok(self.live(&e.1).then_some(e));
            }
        }
        Ok(None)
    }

    /// Whether a block is stored.
    pub(crate) fn contains(&self, hash: &BlockHash) -> Result<bool> {
        Ok(self.get(hash)?.is_some())
    }

    /// Number of stored blocks.
    pub(crate) fn len(&self) -> u64 {
        self.count
    }

    /// The block at `index`, if any.
    pub(crate) fn at(&self, index: u64) -> Result<Option<Entry>> {
        if let Some(e) = self.mem.by_index.get(&index) {
            return Ok(Some(*e));
        }
        for layer in self.layers.values().rev() {
            for pos in layer.table.index_range(index, index)? {
                let e = layer.entry(&layer.table.entry(pos)?);
                if self.live(&e) {
                    return Ok(Some(e));
                }
            }
        }
        Ok(None)
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

    /// The put of a live entry, as a table stores it.
    pub(crate) fn put_op(&self, index: u64, e: &Entry) -> PutOp {
        PutOp {
            off: u64::from(e.loc.off),
            len: e.loc.len,
            raw_len: e.raw_len,
            index,
            ts: e.ts,
            size: e.size,
            hash: e.hash,
            key: self.key(e.key),
            ty: self.ty(e.ty).clone(),
        }
    }

    fn add_use(&mut self, seg: u64, e: &Entry) {
        let u = self.segs.entry(seg).or_default();
        u.count += 1;
        u.size += u64::from(e.size);
        u.live += u64::from(e.loc.len);
        u.raw_live += u64::from(e.raw_len);
        self.count += 1;
        self.total_size += u64::from(e.size);
    }

    /// Accounts for a copy that stopped being live (deleted or superseded).
    fn drop_use(&mut self, e: &Entry) {
        if let Some(u) = self.segs.get_mut(&e.loc.seg) {
            u.count -= 1;
            u.size -= u64::from(e.size);
            u.live -= u64::from(e.loc.len);
            u.raw_live -= u64::from(e.raw_len);
            u.dead_entries += u64::from(e.loc.len);
        }
        self.count -= 1;
        self.total_size -= u64::from(e.size);
    }

    /// Applies one logged operation of segment `seg` that no table covers.
    /// Replaying a log applies every operation in order; live writes apply
    /// theirs after they are on disk.
    pub(crate) fn apply(&mut self, seg: u64, op: &Op) -> Result<()> {
        match op {
            Op::Put(p) => self.put(seg, p),
            Op::Delete(h, off) => {
                self.delete(h, (seg, *off))?;
                Ok(())
            }
            Op::Head(h) => {
                // A head names a stored block; anything else reads as "no head".
                self.head = match h {
                    Some(h) if self.contains(h)? => Some(*h),
                    _ => None,
                };
                Ok(())
            }
        }
    }

    fn put(&mut self, seg: u64, p: &PutOp) -> Result<()> {
        let loc = Loc::at(seg, p.off, p.len);
        let (key, ty) = self.ids(&p.key, &p.ty);
        let entry = Entry {
            hash: p.hash,
            ts: p.ts,
            size: p.size,
            raw_len: p.raw_len,
            key,
            ty,
            loc,
        };
        // A hash covers the index, so the block can only be stored at its own
        // index: one lookup by index (cheap, by the tables' ranges) answers both
        // questions.
        if let Some(old) = self.at(p.index)? {
            if old.hash != p.hash {
                return Err(StorageError::corrupted(format!(
                    "fs: log puts block {} at index {} which block {} already holds",
                    p.hash, p.index, old.hash
                )));
            }
            // The same block again (a copy replayed after its original): the
            // newer copy wins; the older one is dead.
            self.supersede(&old, loc.pos());
        }
        self.add_use(seg, &entry);
        self.mem.insert(p.index, entry);
        Ok(())
    }

    /// Makes a live copy dead as of position `pos`.
    fn supersede(&mut self, old: &Entry, pos: (u64, u64)) {
        if self.mem.remove(&old.hash).is_none() {
            self.dead.insert(old.hash, pos);
        }
        self.drop_use(old);
    }

    /// Removes a block by a deletion at `pos`; returns its entry.
    pub(crate) fn delete(&mut self, hash: &BlockHash, pos: (u64, u64)) -> Result<Option<Entry>> {
        let Some((_, e)) = self.get(hash)? else {
            return Ok(None);
        };
        self.supersede(&e, pos);
        if self.head == Some(*hash) {
            self.head = None;
        }
        Ok(Some(e))
    }

    /// Adds the table of the next segment (tables are added in log order, each
    /// before any operation of its segment that it does not cover): its sums,
    /// its deletions resolved against what came before, and its head.
    pub(crate) fn add_table(&mut self, table: Arc<Table>) -> Result<()> {
        let seg = table.seg;
        let layer = self.layer(table);
        let h = &layer.table.header;
        let u = self.segs.entry(seg).or_default();
        u.count += u64::from(h.sum.entries);
        u.size += h.sum.total_size;
        u.live += h.sum.live;
        u.raw_live += h.sum.raw_live;
        self.count += u64::from(h.sum.entries);
        self.total_size += h.sum.total_size;
        let deletes = h.deletes.clone();
        let head = h.head;
        self.layers.insert(seg, layer);
        for (hash, off) in deletes {
            // The newest copy written before the deletion: in this table, in
            // memory (tails of older segments), or in an older table.
            let own = &self.layers[&seg];
            let mut victim = own.table.find(&hash, off)?.map(|(_, e)| own.entry(&e));
            if victim.is_none() {
                victim = self.mem.get(&hash).map(|(_, e)| e);
            }
            if victim.is_none() {
                for layer in self.layers.range(..seg).rev().map(|(_, l)| l) {
                    if let Some((_, e)) = layer.table.find(&hash, u64::MAX)? {
                        victim = Some(layer.entry(&e));
                        break;
                    }
                }
            }
            if let Some(v) = victim
                && self.live(&v)
                && v.loc.pos() < (seg, off)
            {
                self.supersede(&v, (seg, off));
            }
        }
        self.head = head;
        Ok(())
    }

    fn layer(&mut self, table: Arc<Table>) -> Layer {
        let keys = table.header.keys.iter().map(|k| self.keys.id(k)).collect();
        let types = table
            .header
            .types
            .iter()
            .map(|t| self.types.id(t))
            .collect();
        Layer { table, keys, types }
    }

    /// The table of segment `seg` now covers every operation of it that was in
    /// memory (a seal or a close): the table replaces them.
    pub(crate) fn replace_table(&mut self, table: Arc<Table>) {
        let seg = table.seg;
        if self.mem.by_index.values().all(|e| e.loc.seg == seg) {
            // Everything in memory moves (the usual case: only the active
            // segment is there): drop it at once.
            self.mem = Mem::default();
        } else {
            let moving: Vec<BlockHash> = self
                .mem
                .by_index
                .values()
                .filter(|e| e.loc.seg == seg)
                .map(|e| e.hash)
                .collect();
            for h in moving {
                self.mem.remove(&h);
            }
        }
        let layer = self.layer(table);
        self.layers.insert(seg, layer);
    }

    /// What a new table of segment `seg` holds: the puts and deletions of its
    /// current table (if any), then its puts in memory. The caller adds the
    /// deletions logged since.
    pub(crate) fn segment_contents(&self, seg: u64) -> Result<(Vec<PutOp>, Deletes)> {
        let (mut puts, mut deletes) = (Vec::new(), Vec::new());
        if let Some(layer) = self.layers.get(&seg) {
            for e in layer.table.all()? {
                puts.push(self.put_op(e.index, &layer.entry(&e)));
            }
            deletes.extend_from_slice(&layer.table.header.deletes);
        }
        puts.extend(
            self.mem
                .by_index
                .iter()
                .filter(|(_, e)| e.loc.seg == seg)
                .map(|(i, e)| self.put_op(*i, e)),
        );
        Ok((puts, deletes))
    }

    /// Forgets segments a compaction replaced (their blocks are in the
    /// copies' tables, added after).
    pub(crate) fn remove_segments(&mut self, ids: &[u64]) {
        for id in ids {
            self.layers.remove(id);
            if let Some(u) = self.segs.remove(id) {
                self.count -= u.count;
                self.total_size -= u.size;
            }
        }
        let gone: Vec<BlockHash> = self
            .mem
            .by_index
            .values()
            .filter(|e| ids.contains(&e.loc.seg))
            .map(|e| e.hash)
            .collect();
        for h in gone {
            self.mem.remove(&h);
        }
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

    /// Live entries with `lo <= index <= hi` in index order (reversed if `rev`).
    fn by_index(&self, lo: u64, hi: u64, rev: bool) -> Result<Merge<'_>> {
        let mut cursors = Vec::new();
        if lo > hi {
            return Merge::new(cursors, false, rev);
        }
        let mem: Box<dyn Iterator<Item = (u64, Entry)>> = if rev {
            Box::new(
                self.mem
                    .by_index
                    .range(lo..=hi)
                    .rev()
                    .map(|(i, e)| (*i, *e)),
            )
        } else {
            Box::new(self.mem.by_index.range(lo..=hi).map(|(i, e)| (*i, *e)))
        };
        if self.mem.by_index.range(lo..=hi).next().is_some() {
            cursors.push(Cursor::Mem(mem));
        }
        for layer in self.layers.values() {
            let ranks = layer.table.index_range(lo, hi)?;
            if !ranks.is_empty() {
                cursors.push(Cursor::Table {
                    layer,
                    ranks,
                    by_time: false,
                    rev,
                });
            }
        }
        Merge::new(cursors, false, rev)
    }

    /// Live entries with `start <= (ts, index) <= end` in time order.
    fn by_time(&self, start: (u64, u64), end: (u64, u64), rev: bool) -> Result<Merge<'_>> {
        let mut cursors = Vec::new();
        if start > end {
            return Merge::new(cursors, true, rev);
        }
        let mem = self
            .mem
            .by_time
            .range(start..=end)
            .map(|(_, i)| (*i, self.mem.by_index[i]));
        if self.mem.by_time.range(start..=end).next().is_some() {
            cursors.push(Cursor::Mem(if rev {
                Box::new(mem.rev())
            } else {
                Box::new(mem)
            }));
        }
        for layer in self.layers.values() {
            let s = &layer.table.header.sum;
            if layer.table.len() == 0 || s.max_ts < start.0 || s.min_ts > end.0 {
                continue;
            }
            let a = layer.table.time_lower_bound(start)?;
            let b = match end.1.checked_add(1) {
                Some(next) => layer.table.time_lower_bound((end.0, next))?,
                None => match end.0.checked_add(1) {
                    Some(t) => layer.table.time_lower_bound((t, 0))?,
                    None => layer.table.len(),
                },
            };
            if a < b {
                cursors.push(Cursor::Table {
                    layer,
                    ranks: a..b,
                    by_time: true,
                    rev,
                });
            }
        }
        Merge::new(cursors, true, rev)
    }

    /// Live blocks with `start <= index <= end`, in index order.
    pub(crate) fn range(&self, start: u64, end: u64) -> Result<Vec<(u64, Entry)>> {
        let mut m = self.by_index(start, end, false)?;
        let mut out = Vec::new();
        while let Some((i, e)) = m.next()? {
            if self.live(&e) {
                out.push((i, e));
            }
        }
        Ok(out)
    }

    /// Oldest and newest timestamps.
    pub(crate) fn time_bounds(&self) -> Result<Option<(u64, u64)>> {
        let first = |rev| -> Result<Option<u64>> {
            let mut m = self.by_time((0, 0), (u64::MAX, u64::MAX), rev)?;
            while let Some((_, e)) = m.next()? {
                if self.live(&e) {
                    return Ok(Some(e.ts));
                }
            }
            Ok(None)
        };
        Ok(first(false)?.zip(first(true)?))
    }

    /// `list_blocks`: walks only the part of the ordered index the query needs.
    pub(crate) fn list(&self, o: &ListOptions) -> Result<Vec<BlockMetadata>> {
        let Some(m) = o.matcher() else {
            return Ok(Vec::new());
        };
        let ((tlo, thi), (lo, hi), (tstart, tend)) = (m.times(), m.indices(), m.time_keys());
        let mut skip = o.offset.unwrap_or(0);
        let mut take = o.limit.unwrap_or(u64::MAX);
        if take == 0 {
            return Ok(Vec::new());
        }
        let f = o.filter.as_ref();
        // Resolve filters to interned ids once: an unknown signer or type matches
        // nothing, and comparing ids is cheaper than comparing values.
        let key = match f.and_then(|f| f.public_key.as_ref()) {
            None => None,
            Some(k) => match self.keys.ids.get(k) {
                Some(id) => Some(*id),
                None => return Ok(Vec::new()),
            },
        };
        let ty = match f.and_then(|f| f.payload_type.as_deref()) {
            None => None,
            Some(t) => match self.types.ids.get(t) {
                Some(id) => Some(*id),
                None => return Ok(Vec::new()),
            },
        };
        let keep = |i: u64, e: &Entry| {
            e.ts >= tlo
                && e.ts <= thi
                && (lo..=hi).contains(&i)
                && key.is_none_or(|k| k == e.key)
                && ty.is_none_or(|t| t == e.ty)
                && self.live(e)
        };
        let mut merged = match o.order {
            SortOrder::Ascending | SortOrder::ByIndex => self.by_index(lo, hi, false)?,
            SortOrder::Descending => self.by_index(lo, hi, true)?,
            SortOrder::ByTimestamp => self.by_time(tstart, tend, false)?,
        };
        let mut out = Vec::new();
        while take > 0
            && let Some((i, e)) = merged.next()?
        {
            if !keep(i, &e) {
                continue;
            }
            if skip > 0 {
                skip -= 1;
                continue;
            }
            out.push(self.metadata(i, &e));
            take -= 1;
        }
        Ok(out)
    }
}
