//! The in-memory index of a store: rebuilt on open from segment index files (and
//! the unsealed tail of the log), updated by every write after it is on disk.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use storage_core::{
    BlockHash, BlockMetadata, ListOptions, PublicKey, Result, SortOrder, StorageError,
    system_time_from_unix_nanos,
};

use crate::format::{Op, PutOp};

/// Where an entry lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    /// Segment id.
    pub seg: u64,
    /// Offset of the entry header.
    pub off: u64,
    /// Entry length.
    pub len: u32,
}

/// One stored block, as the index keeps it (64 bytes plus the map's overhead).
#[derive(Debug, Clone)]
pub struct Entry {
    pub hash: BlockHash,
    pub ts: u64,
    pub size: u32,
    pub raw_len: u32,
    pub key: u32,
    pub ty: u32,
    pub loc: Loc,
}

/// Hashes a [`BlockHash`] by its first eight bytes: they are already uniformly
/// distributed (SHA-256), and grinding blocks to collide 64 bits is infeasible.
#[derive(Default)]
pub struct PrefixHasher(u64);

impl Hasher for PrefixHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // `[u8; 32]` hashes as one 32-byte write (after a length prefix).
        if bytes.len() >= 8 {
            self.0 = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
        } else {
            for b in bytes {
                self.0 = self.0.rotate_left(8) ^ u64::from(*b);
            }
        }
    }
    fn write_usize(&mut self, _: usize) {}
}

type ByHash = HashMap<BlockHash, u64, BuildHasherDefault<PrefixHasher>>;

/// Byte accounting of one segment.
#[derive(Debug, Clone, Copy, Default)]
pub struct SegUse {
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
pub struct Index {
    pub by_index: BTreeMap<u64, Entry>,
    by_hash: ByHash,
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
    pub fn get(&self, hash: &BlockHash) -> Option<&Entry> {
        self.by_hash.get(hash).map(|i| &self.by_index[i])
    }

    /// Whether a block is stored.
    pub fn contains(&self, hash: &BlockHash) -> bool {
        self.by_hash.contains_key(hash)
    }

    /// Number of stored blocks.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Reserves room for `n` more blocks (bulk loads).
    pub fn reserve(&mut self, n: usize) {
        self.by_hash.reserve(n);
    }

    /// The block at `index`, if any.
    pub fn at(&self, index: u64) -> Option<&Entry> {
        self.by_index.get(&index)
    }

    /// Interns a signer and a payload type.
    pub fn ids(&mut self, key: &PublicKey, ty: &Arc<str>) -> (u32, u32) {
        (self.keys.id(key), self.types.id(ty))
    }

    /// The signer behind an id.
    pub fn key(&self, id: u32) -> PublicKey {
        self.keys.values[id as usize]
    }

    /// The payload type behind an id.
    pub fn ty(&self, id: u32) -> &Arc<str> {
        &self.types.values[id as usize]
    }

    /// Applies one logged operation of segment `seg`. Replaying a log applies every
    /// operation in order; live writes apply theirs after they are on disk.
    pub fn apply(&mut self, seg: u64, op: &Op) -> Result<()> {
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
        let loc = Loc {
            seg,
            off: p.off,
            len: p.len,
        };
        if let Some(index) = self.by_hash.get(&p.hash).copied() {
            // The same block again (a compaction's copy replayed after the original
            // survived a crash): the newer copy wins; the older one is dead.
            let e = self.by_index.get_mut(&index).expect("indexed");
            let old = std::mem::replace(&mut e.loc, loc);
            let raw = u64::from(e.raw_len);
            self.seg_dead(old, raw);
            let u = self.segs.entry(seg).or_default();
            u.live += u64::from(p.len);
            u.raw_live += raw;
            return Ok(());
        }
        if let Some(other) = self.by_index.get(&p.index) {
            return Err(StorageError::corrupted(format!(
                "fs: log puts block {} at index {} which block {} already holds",
                p.hash, p.index, other.hash
            )));
        }
        let (key, ty) = self.ids(&p.key, &p.ty);
        self.by_hash.insert(p.hash, p.index);
        self.by_time.insert((p.ts, p.index));
        self.total_size += u64::from(p.size);
        let u = self.segs.entry(seg).or_default();
        u.live += u64::from(p.len);
        u.raw_live += u64::from(p.raw_len);
        self.by_index.insert(
            p.index,
            Entry {
                hash: p.hash,
                ts: p.ts,
                size: p.size,
                raw_len: p.raw_len,
                key,
                ty,
                loc,
            },
        );
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
    pub fn delete(&mut self, hash: &BlockHash) -> Option<Entry> {
        let index = self.by_hash.remove(hash)?;
        let e = self.by_index.remove(&index).expect("indexed");
        self.by_time.remove(&(e.ts, index));
        self.total_size -= u64::from(e.size);
        self.seg_dead(e.loc, u64::from(e.raw_len));
        if self.head == Some(*hash) {
            self.head = None;
        }
        Some(e)
    }

    /// Moves a live entry to a new location (compaction).
    pub fn relocate(&mut self, index: u64, loc: Loc) {
        let e = self.by_index.get_mut(&index).expect("indexed");
        let raw = u64::from(e.raw_len);
        let old = std::mem::replace(&mut e.loc, loc);
        if let Some(u) = self.segs.get_mut(&old.seg) {
            u.live -= u64::from(old.len);
            u.raw_live -= raw;
        }
        let u = self.segs.entry(loc.seg).or_default();
        u.live += u64::from(loc.len);
        u.raw_live += raw;
    }

    /// The metadata `list_blocks` returns for an entry.
    pub fn metadata(&self, index: u64, e: &Entry) -> BlockMetadata {
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
    pub fn time_bounds(&self) -> Option<(u64, u64)> {
        Some((self.by_time.first()?.0, self.by_time.last()?.0))
    }

    /// `list_blocks`: walks only the part of the ordered index the query needs.
    pub fn list(&self, o: &ListOptions) -> Vec<BlockMetadata> {
        let (Some((tlo, thi)), Some((lo, hi))) = (o.time_range_nanos(), o.index_range()) else {
            return Vec::new();
        };
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
                .range((tlo, 0)..=(thi, u64::MAX))
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
