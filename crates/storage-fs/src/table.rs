//! Segment index files (tables): a segment's blocks, sorted and searchable on
//! disk, read page by page on demand.
//!
//! A table is written when a segment is sealed, and for the active segment on
//! close. Opening a store reads only each table's header (its counts, ranges,
//! head, signer and type tables and deletions); lookups, listings and ranges read
//! the pages they need, each checked against its own checksum, through a
//! shared cache of pages.
//!
//! ```text
//! header  "OLIDX\0\0\x02" | header_len u32 | segment id u64 | covered u64 | file_len u64
//!         | entries u32 | deletes u32 | keys u32 | types u32 | head: 0|1, hash [32]
//!         | min_index u64 | max_index u64 | min_ts u64 | max_ts u64
//!         | total_size u64 | live u64 | raw_live u64 | dense u8
//!         | keys × [32] | types × (len u8, bytes) | deletes × (hash [32], record offset u64)
//!         | crc32 of everything before
//! (zero padding to a page boundary, then three sections of 4 KiB pages)
//! entries sorted by (index, offset), 56 a page:
//!         index u64 | ts u64 | hash [32] | offset u32 | len u32 | raw_len u32 | size u32
//!         | key u32 | type u32
//! hashes  sorted by (first 8 hash bytes, position), 341 a page: prefix u64 | position u32
//! times   entry positions sorted by (ts, index, position), 1023 a page: position u32
//! page    payload | crc32 of (segment id, section, page number, payload) in the last 4 bytes
//! ```
//! A table holds every put of the segment's first `covered` bytes (also those a
//! later deletion in the same segment removed) and every deletion, with the
//! offset of its record: a deletion removes the copies of its block written
//! before it. `head` is the store's head once those bytes were applied.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use storage_core::{BlockHash, PublicKey, Result, StorageError};

use crate::format::PutOp;
use crate::io::Vfs;
use crate::store::FileRef;

/// Table file magic.
pub(crate) const TABLE_MAGIC: &[u8; 8] = b"OLIDX\0\0\x02";
/// Page size of a table's sections.
pub(crate) const PAGE: usize = 4096;
const PAYLOAD: usize = PAGE - 4;
const ENTRY: usize = 72;
const SLOT: usize = 12;
const TIME: usize = 4;
const PER_ENTRY_PAGE: usize = PAYLOAD / ENTRY;
const PER_SLOT_PAGE: usize = PAYLOAD / SLOT;
const PER_TIME_PAGE: usize = PAYLOAD / TIME;
/// Fixed part of the header, before the key table.
const FIXED: usize = 8 + 4 + 8 + 8 + 8 + 4 * 4 + 33 + 8 * 7 + 1;

/// The sections of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Section {
    Entries = 0,
    Hashes = 1,
    Times = 2,
}

impl Section {
    fn per_page(self) -> usize {
        match self {
            Section::Entries => PER_ENTRY_PAGE,
            Section::Hashes => PER_SLOT_PAGE,
            Section::Times => PER_TIME_PAGE,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Section::Entries => "entries",
            Section::Hashes => "hash table",
            Section::Times => "time order",
        }
    }
}

/// One block as a table holds it (signer and type as ids into the table's own
/// tables).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TableEntry {
    pub index: u64,
    pub ts: u64,
    pub hash: BlockHash,
    pub off: u32,
    pub len: u32,
    pub raw_len: u32,
    pub size: u32,
    pub key: u32,
    pub ty: u32,
}

/// The first eight bytes of a block hash (uniformly distributed: SHA-256).
pub(crate) fn prefix(h: &BlockHash) -> u64 {
    u64::from_le_bytes(h.0[..8].try_into().expect("8 bytes"))
}

/// What a table's header sums up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Summary {
    pub entries: u32,
    pub min_index: u64,
    pub max_index: u64,
    pub min_ts: u64,
    pub max_ts: u64,
    pub total_size: u64,
    pub live: u64,
    pub raw_live: u64,
    /// Indices are exactly `min_index..=max_index`, once each: a position is
    /// found by subtraction.
    pub dense: bool,
}

fn page_crc(seg: u64, section: Section, n: u32, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seg.to_le_bytes());
    h.update(&[section as u8]);
    h.update(&n.to_le_bytes());
    h.update(payload);
    h.finalize()
}

fn pages(n: usize, per: usize) -> usize {
    n.div_ceil(per)
}

fn round_up(n: usize) -> usize {
    n.div_ceil(PAGE) * PAGE
}

/// Serialises the table of segment `seg` covering its first `covered` bytes.
pub(crate) fn encode_table(
    seg: u64,
    covered: u64,
    puts: &[PutOp],
    deletes: &[(BlockHash, u64)],
    head: Option<BlockHash>,
) -> Vec<u8> {
    let mut keys: Vec<PublicKey> = Vec::new();
    let mut key_ids: std::collections::HashMap<PublicKey, u32> = Default::default();
    let mut types: Vec<Arc<str>> = Vec::new();
    let mut type_ids: std::collections::HashMap<Arc<str>, u32> = Default::default();
    // Neighbouring blocks mostly share signer and type: look up only changes.
    let mut last: Option<(&PublicKey, u32, &Arc<str>, u32)> = None;
    let mut entries: Vec<TableEntry> = puts
        .iter()
        .map(|p| {
            let (key, ty) = match last {
                Some((k, kid, t, tid)) if *k == p.key && **t == *p.ty => (kid, tid),
                _ => {
                    let key = *key_ids.entry(p.key).or_insert_with(|| {
                        keys.push(p.key);
                        keys.len() as u32 - 1
                    });
                    let ty = *type_ids.entry(p.ty.clone()).or_insert_with(|| {
                        types.push(p.ty.clone());
                        types.len() as u32 - 1
                    });
                    (key, ty)
                }
            };
            last = Some((&p.key, key, &p.ty, ty));
            TableEntry {
                index: p.index,
                ts: p.ts,
                hash: p.hash,
                off: p.off as u32,
                len: p.len,
                raw_len: p.raw_len,
                size: p.size,
                key,
                ty,
            }
        })
        .collect();
    entries.sort_unstable_by_key(|e| (e.index, e.off));
    let n = entries.len();
    let dense = n > 0
        && entries.windows(2).all(|w| w[1].index == w[0].index + 1)
        && entries[n - 1].index - entries[0].index + 1 == n as u64;
    let mut sum = Summary {
        entries: n as u32,
        dense,
        ..Summary::default()
    };
    if n > 0 {
        sum.min_index = entries[0].index;
        sum.max_index = entries[n - 1].index;
        sum.min_ts = entries.iter().map(|e| e.ts).min().unwrap_or(0);
        sum.max_ts = entries.iter().map(|e| e.ts).max().unwrap_or(0);
    }
    for e in &entries {
        sum.total_size += u64::from(e.size);
        sum.live += u64::from(e.len);
        sum.raw_live += u64::from(e.raw_len);
    }
    let mut slots: Vec<(u64, u32)> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (prefix(&e.hash), i as u32))
        .collect();
    slots.sort_unstable();
    let mut times: Vec<u32> = (0..n as u32).collect();
    times.sort_unstable_by_key(|&i| (entries[i as usize].ts, entries[i as usize].index, i));

    let mut h = Vec::with_capacity(FIXED + keys.len() * 32 + deletes.len() * 40 + 64);
    h.extend_from_slice(TABLE_MAGIC);
    h.extend_from_slice(&[0; 4]); // header_len, below
    h.extend_from_slice(&seg.to_le_bytes());
    h.extend_from_slice(&covered.to_le_bytes());
    h.extend_from_slice(&[0; 8]); // file_len, below
    for c in [n, deletes.len(), keys.len(), types.len()] {
        h.extend_from_slice(&(c as u32).to_le_bytes());
    }
    match head {
        None => h.extend_from_slice(&[0; 33]),
        Some(hh) => {
            h.push(1);
            h.extend_from_slice(hh.as_bytes());
        }
    }
    for v in [
        sum.min_index,
        sum.max_index,
        sum.min_ts,
        sum.max_ts,
        sum.total_size,
        sum.live,
        sum.raw_live,
    ] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    h.push(u8::from(sum.dense));
    debug_assert_eq!(h.len(), FIXED);
    for k in &keys {
        h.extend_from_slice(k.as_bytes());
    }
    for t in &types {
        h.push(t.len() as u8); // payload types are at most 128 bytes
        h.extend_from_slice(t.as_bytes());
    }
    for (hash, off) in deletes {
        h.extend_from_slice(hash.as_bytes());
        h.extend_from_slice(&off.to_le_bytes());
    }
    let header_len = h.len() + 4;
    let file_len = round_up(header_len)
        + PAGE * (pages(n, PER_ENTRY_PAGE) + pages(n, PER_SLOT_PAGE) + pages(n, PER_TIME_PAGE));
    h[8..12].copy_from_slice(&(header_len as u32).to_le_bytes());
    h[28..36].copy_from_slice(&(file_len as u64).to_le_bytes());
    let crc = crc32fast::hash(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    let mut out = h;
    out.resize(round_up(header_len), 0);
    out.reserve(file_len - out.len());

    let write_section = |out: &mut Vec<u8>,
                         section: Section,
                         count: usize,
                         size: usize,
                         put: &dyn Fn(usize, &mut Vec<u8>)| {
        let per = section.per_page();
        for page in 0..pages(count, per) {
            let start = out.len();
            for i in page * per..((page + 1) * per).min(count) {
                put(i, out);
            }
            out.resize(start + PAYLOAD, 0);
            let crc = page_crc(seg, section, page as u32, &out[start..]);
            out.extend_from_slice(&crc.to_le_bytes());
            debug_assert!(size * per <= PAYLOAD);
        }
    };
    write_section(&mut out, Section::Entries, n, ENTRY, &|i, out| {
        let e = &entries[i];
        out.extend_from_slice(&e.index.to_le_bytes());
        out.extend_from_slice(&e.ts.to_le_bytes());
        out.extend_from_slice(e.hash.as_bytes());
        for v in [e.off, e.len, e.raw_len, e.size, e.key, e.ty] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    });
    write_section(&mut out, Section::Hashes, n, SLOT, &|i, out| {
        out.extend_from_slice(&slots[i].0.to_le_bytes());
        out.extend_from_slice(&slots[i].1.to_le_bytes());
    });
    write_section(&mut out, Section::Times, n, TIME, &|i, out| {
        out.extend_from_slice(&times[i].to_le_bytes());
    });
    debug_assert_eq!(out.len(), file_len);
    out
}

/// A checked table header.
#[derive(Debug, Clone)]
pub(crate) struct TableHeader {
    pub covered: u64,
    pub file_len: u64,
    pub head: Option<BlockHash>,
    pub sum: Summary,
    pub keys: Vec<PublicKey>,
    pub types: Vec<Arc<str>>,
    /// Deletions, in log order: (hash, offset of the record).
    pub deletes: Vec<(BlockHash, u64)>,
    header_len: usize,
}

/// How many bytes of a table's start hold its header, from its first bytes
/// (`None` if it is not a table).
pub(crate) fn header_len(first: &[u8]) -> Option<usize> {
    if first.len() < 12 || &first[..8] != TABLE_MAGIC {
        return None;
    }
    let len = u32::from_le_bytes(first[8..12].try_into().ok()?) as usize;
    (FIXED + 4..=1 << 30).contains(&len).then_some(len)
}

/// Parses a table header of segment `seg` (`bytes` holds at least
/// [`header_len`] bytes); `None` if it is damaged, foreign or of another segment.
pub(crate) fn parse_table_header(bytes: &[u8], seg: u64) -> Option<TableHeader> {
    let header_len = header_len(bytes)?;
    let (body, crc) = bytes.get(..header_len)?.split_at(header_len - 4);
    if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().ok()?) {
        return None;
    }
    let mut r = crate::format::Reader::new(body);
    r.take(12)?;
    if r.u64()? != seg {
        return None;
    }
    let covered = r.u64()?;
    let file_len = r.u64()?;
    let n = r.u32()?;
    let (ndel, nkeys, ntypes) = (r.u32()? as usize, r.u32()? as usize, r.u32()? as usize);
    let flag = r.take(1)?[0];
    let hash = BlockHash(r.take(32)?.try_into().ok()?);
    let head = match flag {
        0 => None,
        1 => Some(hash),
        _ => return None,
    };
    let sum = Summary {
        entries: n,
        min_index: r.u64()?,
        max_index: r.u64()?,
        min_ts: r.u64()?,
        max_ts: r.u64()?,
        total_size: r.u64()?,
        live: r.u64()?,
        raw_live: r.u64()?,
        dense: match r.take(1)?[0] {
            0 => false,
            1 => true,
            _ => return None,
        },
    };
    let mut keys = Vec::with_capacity(nkeys.min(body.len() / 32));
    for _ in 0..nkeys {
        keys.push(PublicKey::from_slice(r.take(32)?).ok()?);
    }
    let mut types: Vec<Arc<str>> = Vec::with_capacity(ntypes.min(body.len()));
    for _ in 0..ntypes {
        let len = r.take(1)?[0] as usize;
        types.push(std::str::from_utf8(r.take(len)?).ok()?.into());
    }
    let mut deletes = Vec::with_capacity(ndel.min(body.len() / 40));
    for _ in 0..ndel {
        let h = BlockHash(r.take(32)?.try_into().ok()?);
        deletes.push((h, r.u64()?));
    }
    let n = n as usize;
    let expected = round_up(header_len)
        + PAGE * (pages(n, PER_ENTRY_PAGE) + pages(n, PER_SLOT_PAGE) + pages(n, PER_TIME_PAGE));
    let well_formed = r.at() == body.len()
        && file_len == expected as u64
        && (n > 0 || sum == Summary::default())
        && (n == 0 || (nkeys > 0 && ntypes > 0));
    well_formed.then_some(TableHeader {
        covered,
        file_len,
        head,
        sum,
        keys,
        types,
        deletes,
        header_len,
    })
}

/// The cache of table pages a store shares.
pub(crate) type PageCache = quick_cache::sync::Cache<(u64, u8, u32), Arc<[u8]>>;

/// A new page cache of about `bytes`.
pub(crate) fn page_cache(bytes: usize) -> Arc<PageCache> {
    Arc::new(PageCache::new((bytes / PAGE).max(16)))
}

/// Tells tables apart in the page cache (a segment's table is rewritten when
/// it grows).
static NEXT_UID: AtomicU64 = AtomicU64::new(1);

/// An open table.
pub(crate) struct Table {
    pub seg: u64,
    pub header: TableHeader,
    uid: u64,
    file: FileRef,
    path: PathBuf,
    cache: Arc<PageCache>,
    /// Where each section starts.
    starts: [u64; 3],
    /// Removes the file once it is found damaged, so the next open rebuilds
    /// the table from the log (`None` when the store is open read-only).
    remover: Option<Arc<dyn Vfs>>,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("path", &self.path)
            .field("entries", &self.header.sum.entries)
            .finish_non_exhaustive()
    }
}

impl Table {
    /// A table over `file` (at `path`) whose header was checked.
    pub(crate) fn new(
        seg: u64,
        header: TableHeader,
        file: FileRef,
        path: PathBuf,
        cache: Arc<PageCache>,
        remover: Option<Arc<dyn Vfs>>,
    ) -> Self {
        let n = header.sum.entries as usize;
        let e = round_up(header.header_len) as u64;
        let s = e + (PAGE * pages(n, PER_ENTRY_PAGE)) as u64;
        let t = s + (PAGE * pages(n, PER_SLOT_PAGE)) as u64;
        Self {
            seg,
            header,
            uid: NEXT_UID.fetch_add(1, Ordering::Relaxed),
            file,
            path,
            cache,
            starts: [e, s, t],
            remover,
        }
    }

    /// Number of entries.
    pub(crate) fn len(&self) -> u32 {
        self.header.sum.entries
    }

    fn damaged(&self, section: Section, n: u32, what: &str) -> StorageError {
        let seg = crate::store::seg_path(self.path.parent().unwrap_or(&self.path), self.seg);
        // The table is derived from the segment: without it, the next open
        // reads the segment and writes the table again.
        let removed = self
            .remover
            .as_ref()
            .is_some_and(|vfs| vfs.remove_file(&self.path).is_ok());
        tracing::warn!(
            index = %self.path.display(),
            page = n,
            section = section.name(),
            removed,
            "damaged index page"
        );
        let next = if removed {
            "it was removed, and the next open rebuilds it"
        } else {
            "remove it and reopen the store to rebuild it"
        };
        StorageError::corrupted(format!(
            "fs: index file {} is damaged ({what} in page {n} of its {}); {next} from {}",
            self.path.display(),
            section.name(),
            seg.display()
        ))
    }

    /// Page `n` of `section`, checked.
    fn page(&self, section: Section, n: u32) -> Result<Arc<[u8]>> {
        let key = (self.uid, section as u8, n);
        if let Some(p) = self.cache.get(&key) {
            return Ok(p);
        }
        let mut buf = vec![0u8; PAGE];
        let at = self.starts[section as usize] + u64::from(n) * PAGE as u64;
        match self.file.read_exact_at(&mut buf, at) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(self.damaged(section, n, "cut short"));
            }
            Err(e) => {
                return Err(StorageError::io(
                    format!("reading index file {}", self.path.display()),
                    e,
                ));
            }
        }
        let crc = u32::from_le_bytes(buf[PAYLOAD..].try_into().expect("4 bytes"));
        if page_crc(self.seg, section, n, &buf[..PAYLOAD]) != crc {
            return Err(self.damaged(section, n, "checksum mismatch"));
        }
        let page: Arc<[u8]> = buf.into();
        self.cache.insert(key, page.clone());
        Ok(page)
    }

    /// The entry at `pos` (in index order).
    pub(crate) fn entry(&self, pos: u32) -> Result<TableEntry> {
        let per = PER_ENTRY_PAGE as u32;
        let page = self.page(Section::Entries, pos / per)?;
        let b = &page[(pos % per) as usize * ENTRY..][..ENTRY];
        let u32_ = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4"));
        let u64_ = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8"));
        let e = TableEntry {
            index: u64_(0),
            ts: u64_(8),
            hash: BlockHash(b[16..48].try_into().expect("32")),
            off: u32_(48),
            len: u32_(52),
            raw_len: u32_(56),
            size: u32_(60),
            key: u32_(64),
            ty: u32_(68),
        };
        if e.key as usize >= self.header.keys.len() || e.ty as usize >= self.header.types.len() {
            return Err(self.damaged(Section::Entries, pos / per, "an unknown signer or type"));
        }
        Ok(e)
    }

    /// The newest copy of block `hash` in this table written before offset
    /// `before`, with its position.
    pub(crate) fn find(&self, hash: &BlockHash, before: u64) -> Result<Option<(u32, TableEntry)>> {
        let n = self.len();
        if n == 0 {
            return Ok(None);
        }
        let p = prefix(hash);
        let per = PER_SLOT_PAGE as u32;
        let last_page = (n - 1) / per;
        let slots_in = |page: u32| (n - page * per).min(per) as usize;
        let prefix_at = |b: &[u8], k: usize| {
            u64::from_le_bytes(b[k * SLOT..k * SLOT + 8].try_into().expect("8"))
        };
        // Hashes are uniform: the slot is near `p / 2^64` of the way through.
        // Start at that page and walk to the one holding the first slot whose
        // prefix is not below `p` (nearly always no step at all).
        let mut page = ((((u128::from(p) * u128::from(n)) >> 64) as u32) / per).min(last_page);
        let mut b = loop {
            let b = self.page(Section::Hashes, page)?;
            if prefix_at(&b, slots_in(page) - 1) < p && page < last_page {
                page += 1;
                continue;
            }
            if page > 0 && prefix_at(&b, 0) >= p {
                let prev = self.page(Section::Hashes, page - 1)?;
                if prefix_at(&prev, per as usize - 1) >= p {
                    page -= 1;
                    continue;
                }
            }
            break b;
        };
        let (mut lo, mut hi) = (0usize, slots_in(page));
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if prefix_at(&b, mid) < p {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let mut at = page * per + lo as u32;
        let mut best: Option<(u32, TableEntry)> = None;
        while at < n {
            if at.is_multiple_of(per) && at / per != page {
                page = at / per;
                b = self.page(Section::Hashes, page)?;
            }
            let k = (at % per) as usize;
            if prefix_at(&b, k) != p {
                break;
            }
            let pos = u32::from_le_bytes(b[k * SLOT + 8..k * SLOT + 12].try_into().expect("4"));
            if pos >= n {
                return Err(self.damaged(Section::Hashes, page, "a position out of range"));
            }
            let e = self.entry(pos)?;
            if e.hash == *hash
                && u64::from(e.off) < before
                && best.is_none_or(|(_, b)| b.off < e.off)
            {
                best = Some((pos, e));
            }
            at += 1;
        }
        Ok(best)
    }

    /// Positions of the entries with `lo <= index <= hi`.
    pub(crate) fn index_range(&self, lo: u64, hi: u64) -> Result<std::ops::Range<u32>> {
        let s = &self.header.sum;
        if self.len() == 0 || hi < s.min_index || lo > s.max_index || lo > hi {
            return Ok(0..0);
        }
        if s.dense {
            let a = lo.max(s.min_index) - s.min_index;
            let b = hi.min(s.max_index) - s.min_index + 1;
            return Ok(a as u32..b as u32);
        }
        let bound = |target: u64, strict: bool| -> Result<u32> {
            let (mut a, mut b) = (0u32, self.len());
            while a < b {
                let mid = a + (b - a) / 2;
                let i = self.entry(mid)?.index;
                if i < target || (strict && i == target) {
                    a = mid + 1;
                } else {
                    b = mid;
                }
            }
            Ok(a)
        };
        Ok(bound(lo, false)?..bound(hi, true)?)
    }

    /// The entry position at rank `k` of time order.
    pub(crate) fn time_pos(&self, k: u32) -> Result<u32> {
        let per = PER_TIME_PAGE as u32;
        let page = self.page(Section::Times, k / per)?;
        let at = (k % per) as usize * TIME;
        let pos = u32::from_le_bytes(page[at..at + 4].try_into().expect("4"));
        if pos >= self.len() {
            return Err(self.damaged(Section::Times, k / per, "a position out of range"));
        }
        Ok(pos)
    }

    /// The first rank in time order whose (ts, index) is not below `key`.
    pub(crate) fn time_lower_bound(&self, key: (u64, u64)) -> Result<u32> {
        let (mut a, mut b) = (0u32, self.len());
        while a < b {
            let mid = a + (b - a) / 2;
            let e = self.entry(self.time_pos(mid)?)?;
            if (e.ts, e.index) < key {
                a = mid + 1;
            } else {
                b = mid;
            }
        }
        Ok(a)
    }

    /// Every entry, in index order.
    pub(crate) fn all(&self) -> Result<Vec<TableEntry>> {
        (0..self.len()).map(|pos| self.entry(pos)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use storage_core::{Block, SigningKey, system_time_from_unix_nanos};

    fn put(i: u64, ts: u64, key: u8, off: u64) -> PutOp {
        let b = Block::sign_raw(
            i,
            system_time_from_unix_nanos(ts),
            (i > 0).then_some(BlockHash([1; 32])),
            if i.is_multiple_of(3) {
                "t.a/v1"
            } else {
                "t.b/v1"
            },
            vec![key; 10],
            &SigningKey::from_bytes(&[key; 32]),
        )
        .unwrap();
        PutOp::of(&b, off, 100, 90)
    }

    fn open(bytes: &[u8], seg: u64) -> Table {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.idx");
        std::fs::write(&path, bytes).unwrap();
        let vfs = crate::io::StdVfs;
        let file: FileRef = crate::io::Vfs::open(&vfs, &path, false).unwrap();
        let h = parse_table_header(bytes, seg).unwrap();
        Table::new(seg, h, file, path, page_cache(1 << 16), None)
    }

    /// Lookups, index ranges and time order over a table of several pages,
    /// with gaps in the indices and a block written twice.
    #[test]
    fn round_trip_and_lookups() {
        let mut puts: Vec<PutOp> = (0..500u64)
            .filter(|i| i % 10 != 7)
            .map(|i| put(i, 1_000 + (i * 7919) % 300, (i % 3) as u8, 48 + i * 100))
            .collect();
        // Block 3 again, later in the segment (stored again after a deletion).
        let again = PutOp {
            off: 90_000,
            ..puts[3].clone()
        };
        puts.push(again.clone());
        let deletes = vec![(puts[3].hash, 80_000)];
        let bytes = encode_table(9, 95_000, &puts, &deletes, Some(puts[5].hash));
        let t = open(&bytes, 9);
        let h = &t.header;
        assert_eq!(
            (h.covered, h.head, h.deletes.clone()),
            (95_000, Some(puts[5].hash), deletes)
        );
        assert_eq!(t.len() as usize, puts.len());
        assert!(!h.sum.dense);
        for p in &puts {
            let (_, e) = t.find(&p.hash, u64::MAX).unwrap().unwrap();
            assert_eq!(e.index, p.index);
        }
        // The newest copy, or the newest before an offset.
        assert_eq!(
            t.find(&puts[3].hash, u64::MAX).unwrap().unwrap().1.off,
            90_000
        );
        assert_eq!(
            t.find(&puts[3].hash, 80_000).unwrap().unwrap().1.off as u64,
            puts[3].off
        );
        assert!(t.find(&puts[3].hash, puts[3].off).unwrap().is_none());
        assert!(t.find(&BlockHash([7; 32]), u64::MAX).unwrap().is_none());
        let r = t.index_range(15, 40).unwrap();
        let got: Vec<u64> = r.map(|p| t.entry(p).unwrap().index).collect();
        let want: Vec<u64> = (15..=40).filter(|i| i % 10 != 7).collect();
        assert_eq!(got, want);
        assert_eq!(t.index_range(600, 700).unwrap(), 0..0);
        // Time order: sorted by (ts, index).
        let times: Vec<(u64, u64)> = (0..t.len())
            .map(|k| {
                let e = t.entry(t.time_pos(k).unwrap()).unwrap();
                (e.ts, e.index)
            })
            .collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
        let k = t.time_lower_bound((1_150, 0)).unwrap() as usize;
        assert!(times[..k].iter().all(|x| x.0 < 1_150));
        assert!(times[k..].iter().all(|x| x.0 >= 1_150));
    }

    /// A dense table finds positions by subtraction; an empty one parses.
    #[test]
    fn dense_and_empty() {
        let puts: Vec<PutOp> = (100..160u64).map(|i| put(i, i, 1, 48 + i * 100)).collect();
        let t = open(&encode_table(2, 20_000, &puts, &[], None), 2);
        assert!(t.header.sum.dense);
        let r = t.index_range(110, 119).unwrap();
        assert_eq!(t.entry(r.start).unwrap().index, 110);
        assert_eq!(r.len(), 10);
        let empty = encode_table(3, 48, &[], &[(BlockHash([1; 32]), 48)], None);
        let t = open(&empty, 3);
        assert_eq!(t.len(), 0);
        assert!(t.find(&BlockHash([1; 32]), u64::MAX).unwrap().is_none());
    }

    /// Every damaged header byte is refused; every damaged page byte fails
    /// the read that needs it, as corrupted.
    #[test]
    fn damage_is_found() {
        let puts: Vec<PutOp> = (0..200u64).map(|i| put(i, i, 2, 48 + i * 100)).collect();
        let bytes = encode_table(4, 30_000, &puts, &[(puts[9].hash, 25_000)], None);
        let hlen = header_len(&bytes).unwrap();
        for i in 0..hlen {
            let mut bad = bytes.clone();
            bad[i] ^= 0x20;
            assert!(parse_table_header(&bad, 4).is_none(), "header byte {i}");
        }
        assert!(parse_table_header(&bytes, 5).is_none(), "another segment's");
        for at in (round_up(hlen)..bytes.len()).step_by(97) {
            let mut bad = bytes.clone();
            bad[at] ^= 0x01;
            let t = open(&bad, 4);
            let all = (|| -> Result<()> {
                for p in &puts {
                    t.find(&p.hash, u64::MAX)?;
                }
                for k in 0..t.len() {
                    t.time_pos(k)?;
                }
                Ok(())
            })();
            let err = all.unwrap_err();
            assert_eq!(err.kind(), storage_core::ErrorKind::Corrupted, "byte {at}");
        }
    }
}
