//! Object names and the byte layouts of index pages, segments and the head.
//!
//! Every object we read is checked before use: pages and the head carry a
//! CRC-32C, and blocks are decoded against the hash their index entry names, so
//! damage is reported as [`StorageError::Corrupted`], never returned as data.

use std::collections::BTreeMap;
use std::fmt;

use object_store::path::Path;
use storage_core::{
    Block, BlockHash, BlockMetadata, CompressionType, Encoding, PublicKey, Result, StorageError,
    WireFormat, is_valid_payload_type, system_time_from_unix_nanos, unix_nanos,
};

/// Chain indices per index page: page `p` holds indices `p * PAGE_SLOTS ..
/// (p + 1) * PAGE_SLOTS`. A batch of 1,000 consecutive blocks touches two or three
/// pages; a single write rewrites one page of at most this many entries.
pub const PAGE_SLOTS: u64 = 512;

const PAGE_MAGIC: &[u8; 4] = b"OLIP";
const HEAD_MAGIC: &[u8; 4] = b"OLIH";
const SEGMENT_MAGIC: &[u8; 4] = b"OLIS";
const VERSION: u8 = 1;

/// Bytes before the first record of a segment: magic, version, format code.
pub const SEGMENT_HEADER_LEN: u64 = 6;

/// Directory of index pages.
pub const PAGES_DIR: &str = "idx";
/// Directory of segments.
pub const SEGMENTS_DIR: &str = "seg";
/// The chain-head object.
pub const HEAD_OBJECT: &str = "head";

/// The page that holds `index`.
pub fn page_of(index: u64) -> u64 {
    index / PAGE_SLOTS
}

/// `idx/<page as 16 hex digits>`: fixed width, so a listing is in index order.
pub fn page_path(page: u64) -> Path {
    Path::from(format!("{PAGES_DIR}/{page:016x}"))
}

/// The page number named by a listed object, if it is a page.
pub fn page_from_path(path: &Path) -> Option<u64> {
    let name = path.filename()?;
    if name.len() != 16 || path.parts().count() != 2 {
        return None;
    }
    u64::from_str_radix(name, 16).ok()
}

/// A segment's name: 16 random bytes, so writers on many machines never collide.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SegmentId(pub [u8; 16]);

impl SegmentId {
    /// A fresh random id.
    pub fn random() -> Result<Self> {
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).map_err(|e| {
            StorageError::backend(
                "object",
                "drawing a random segment name",
                storage_core::ErrorStatus::Permanent,
                e.to_string(),
            )
        })?;
        Ok(Self(id))
    }

    /// `seg/<32 hex digits>`.
    pub fn path(&self) -> Path {
        Path::from(format!("{SEGMENTS_DIR}/{self}"))
    }

    /// The id named by a listed object, if it is a segment.
    pub fn from_path(path: &Path) -> Option<Self> {
        let name = path.filename()?;
        if name.len() != 32 || path.parts().count() != 2 {
            return None;
        }
        let mut id = [0u8; 16];
        for (i, byte) in id.iter_mut().enumerate() {
            *byte = u8::from_str_radix(name.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Self(id))
    }
}

impl fmt::Display for SegmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for SegmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SegmentId({self})")
    }
}

/// One byte naming a wire format, stored with every index entry so a store
/// written with one format reads back under a config naming another.
pub fn format_code(format: WireFormat) -> u8 {
    let enc = match format.encoding {
        Encoding::Binary => 0,
        Encoding::Json => 1,
    };
    let comp = CompressionType::ALL
        .iter()
        .position(|c| *c == format.compression)
        .expect("every compression is in ALL") as u8;
    enc << 4 | comp
}

/// The wire format a [`format_code`] names.
pub fn format_from_code(code: u8) -> Option<WireFormat> {
    let encoding = match code >> 4 {
        0 => Encoding::Binary,
        1 => Encoding::Json,
        _ => return None,
    };
    let compression = *CompressionType::ALL.get(usize::from(code & 0x0f))?;
    Some(WireFormat {
        encoding,
        compression,
    })
}

/// Where a block's bytes are and what the index knows about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Listing metadata (hash, index, timestamp, type, signer, size).
    pub meta: BlockMetadata,
    /// The block's previous hash, for the link rule.
    pub previous: Option<BlockHash>,
    /// The segment holding the block.
    pub segment: SegmentId,
    /// Byte offset of the record in the segment.
    pub offset: u64,
    /// Record length in bytes.
    pub len: u32,
    /// [`format_code`] of the record.
    pub format: u8,
}

impl Entry {
    /// The byte range of the record in its segment.
    pub fn range(&self) -> std::ops::Range<u64> {
        self.offset..self.offset + u64::from(self.len)
    }

    /// Decodes the record's bytes, which must be the block this entry names.
    pub fn decode(&self, bytes: &[u8]) -> Result<Block> {
        let format = format_from_code(self.format).ok_or_else(|| {
            StorageError::corrupted(format!(
                "index entry for block {} names unknown format {}",
                self.meta.hash, self.format
            ))
        })?;
        let block = format.decode_stored(bytes, &self.meta.hash).map_err(|e| {
            StorageError::corrupted_by(
                format!(
                    "object store: record of block {} (index {}) at {}+{} in {}",
                    self.meta.hash,
                    self.meta.index,
                    self.offset,
                    self.len,
                    self.segment.path()
                ),
                e,
            )
        })?;
        Ok(block)
    }
}

/// An index page: the entries of up to [`PAGE_SLOTS`] consecutive indices, with
/// totals kept for `count_blocks` and `get_stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    /// Entries by chain index.
    pub entries: BTreeMap<u64, Entry>,
}

/// Totals over one page.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageTotals {
    /// Entries.
    pub count: u64,
    /// Sum of `size_bytes`.
    pub size_bytes: u64,
    /// Sum of record lengths (bytes held in segments for live blocks).
    pub stored_bytes: u64,
    /// Oldest and newest timestamp (Unix nanoseconds).
    pub time_range: Option<(u64, u64)>,
}

impl Page {
    /// Totals over the page's entries.
    pub fn totals(&self) -> PageTotals {
        let mut t = PageTotals::default();
        for e in self.entries.values() {
            t.count += 1;
            t.size_bytes += e.meta.size_bytes;
            t.stored_bytes += u64::from(e.len);
            let ts = unix_nanos(e.meta.timestamp).unwrap_or(u64::MAX);
            t.time_range = Some(match t.time_range {
                None => (ts, ts),
                Some((lo, hi)) => (lo.min(ts), hi.max(ts)),
            });
        }
        t
    }

    /// Encodes page `number` (entries in index order, CRC-32C at the end).
    pub fn encode(&self, number: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.entries.len() * 200);
        out.extend_from_slice(PAGE_MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&number.to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for e in self.entries.values() {
            let m = &e.meta;
            out.extend_from_slice(&m.index.to_le_bytes());
            out.extend_from_slice(&m.hash.0);
            match &e.previous {
                Some(p) => {
                    out.push(1);
                    out.extend_from_slice(&p.0);
                }
                None => out.push(0),
            }
            let ts = unix_nanos(m.timestamp).expect("stored timestamps are in range");
            out.extend_from_slice(&ts.to_le_bytes());
            out.extend_from_slice(&m.public_key.0);
            out.extend_from_slice(&m.size_bytes.to_le_bytes());
            out.extend_from_slice(&(m.payload_type.len() as u16).to_le_bytes());
            out.extend_from_slice(m.payload_type.as_bytes());
            out.extend_from_slice(&e.segment.0);
            out.extend_from_slice(&e.offset.to_le_bytes());
            out.extend_from_slice(&e.len.to_le_bytes());
            out.push(e.format);
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes page `number`; anything malformed, out of place or failing the
    /// checksum is [`StorageError::Corrupted`].
    pub fn decode(number: u64, bytes: &[u8]) -> Result<Self> {
        let bad = |what: &str| {
            StorageError::corrupted(format!(
                "object store: index page {}: {what}",
                page_path(number)
            ))
        };
        if bytes.len() < 4 + 1 + 8 + 4 + 4 {
            return Err(bad("too short"));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32c::crc32c(body).to_le_bytes() != crc {
            return Err(bad("checksum mismatch"));
        }
        let mut r = Reader(body);
        if r.take(4).ok_or_else(|| bad("truncated"))? != PAGE_MAGIC {
            return Err(bad("not an index page"));
        }
        if r.u8() != Some(VERSION) {
            return Err(bad("unknown version"));
        }
        if r.u64() != Some(number) {
            return Err(bad("holds another page's number"));
        }
        let n = r.u32().ok_or_else(|| bad("truncated"))?;
        let lo = number
            .checked_mul(PAGE_SLOTS)
            .ok_or_else(|| bad("page number out of range"))?;
        let mut entries = BTreeMap::new();
        let mut last = None;
        for _ in 0..n {
            let e = r.entry().ok_or_else(|| bad("truncated entry"))?;
            let index = e.meta.index;
            if index < lo || index - lo >= PAGE_SLOTS || last.is_some_and(|l| l >= index) {
                return Err(bad("entry indices out of order or outside the page"));
            }
            if format_from_code(e.format).is_none() {
                return Err(bad("entry names an unknown format"));
            }
            last = Some(index);
            entries.insert(index, e);
        }
        if !r.0.is_empty() {
            return Err(bad("trailing bytes"));
        }
        Ok(Self { entries })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.array()?))
    }
    fn entry(&mut self) -> Option<Entry> {
        let index = self.u64()?;
        let hash = BlockHash(self.array()?);
        let previous = match self.u8()? {
            0 => None,
            1 => Some(BlockHash(self.array()?)),
            _ => return None,
        };
        let ts = self.u64()?;
        let public_key = PublicKey(self.array()?);
        let size_bytes = self.u64()?;
        let type_len = usize::from(self.u16()?);
        let payload_type = std::str::from_utf8(self.take(type_len)?).ok()?;
        if !is_valid_payload_type(payload_type) {
            return None;
        }
        let segment = SegmentId(self.array()?);
        let offset = self.u64()?;
        let len = self.u32()?;
        let format = self.u8()?;
        Some(Entry {
            meta: BlockMetadata {
                hash,
                index,
                timestamp: system_time_from_unix_nanos(ts),
                payload_type: payload_type.to_owned(),
                public_key,
                size_bytes,
            },
            previous,
            segment,
            offset,
            len,
            format,
        })
    }
}

/// Encodes a segment: a header, then each block's record, back to back. Returns
/// the bytes and one index entry per block, in input order.
pub fn encode_segment(
    segment: SegmentId,
    format: WireFormat,
    blocks: &[&Block],
) -> Result<(Vec<u8>, Vec<Entry>)> {
    let code = format_code(format);
    let mut out = Vec::new();
    out.extend_from_slice(SEGMENT_MAGIC);
    out.push(VERSION);
    out.push(code);
    let mut entries = Vec::with_capacity(blocks.len());
    for b in blocks {
        let record = format.encode(b)?;
        let len = u32::try_from(record.len()).map_err(|_| {
            StorageError::InvalidInput(format!("block {} encodes to over 4 GiB", b.index()))
        })?;
        entries.push(Entry {
            meta: BlockMetadata::of(b),
            previous: b.previous_hash().copied(),
            segment,
            offset: out.len() as u64,
            len,
            format: code,
        });
        out.extend_from_slice(&record);
    }
    Ok((out, entries))
}

/// Encodes the head object: the head's hash, or none (cleared).
pub fn encode_head(head: Option<&BlockHash>) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 1 + 1 + 32 + 4);
    out.extend_from_slice(HEAD_MAGIC);
    out.push(VERSION);
    match head {
        Some(h) => {
            out.push(1);
            out.extend_from_slice(&h.0);
        }
        None => out.push(0),
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes the head object.
pub fn decode_head(bytes: &[u8]) -> Result<Option<BlockHash>> {
    let bad = |what: &str| StorageError::corrupted(format!("object store: head object: {what}"));
    if bytes.len() < 10 {
        return Err(bad("too short"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32c::crc32c(body).to_le_bytes() != crc {
        return Err(bad("checksum mismatch"));
    }
    let mut r = Reader(body);
    if r.take(4) != Some(HEAD_MAGIC) || r.u8() != Some(VERSION) {
        return Err(bad("not a head object"));
    }
    let head = match r.u8() {
        Some(0) => None,
        Some(1) => Some(BlockHash(r.array().ok_or_else(|| bad("truncated"))?)),
        _ => return Err(bad("bad flag")),
    };
    if !r.0.is_empty() {
        return Err(bad("trailing bytes"));
    }
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use storage_conformance::data;

    #[test]
    fn page_and_segment_round_trip_and_detect_damage() {
        let blocks = data::chain(5);
        let refs: Vec<&Block> = blocks.iter().collect();
        let seg = SegmentId::random().unwrap();
        for format in WireFormat::all() {
            let (bytes, entries) = encode_segment(seg, format, &refs).unwrap();
            for (e, b) in entries.iter().zip(blocks.iter()) {
                let r = e.range();
                let got = e.decode(&bytes[r.start as usize..r.end as usize]).unwrap();
                assert_eq!(got.hash(), b.hash());
            }
            let page = Page {
                entries: entries.into_iter().map(|e| (e.meta.index, e)).collect(),
            };
            let encoded = page.encode(0);
            assert_eq!(Page::decode(0, &encoded).unwrap(), page);
            assert!(Page::decode(1, &encoded).is_err(), "another page's number");
            for i in 0..encoded.len() {
                let mut damaged = encoded.clone();
                damaged[i] ^= 0x10;
                let err = Page::decode(0, &damaged).unwrap_err();
                assert_eq!(err.kind(), storage_core::ErrorKind::Corrupted);
            }
            for cut in 0..encoded.len() {
                assert!(Page::decode(0, &encoded[..cut]).is_err());
            }
        }
    }

    #[test]
    fn head_round_trip_and_names() {
        let h = BlockHash([9; 32]);
        assert_eq!(decode_head(&encode_head(Some(&h))).unwrap(), Some(h));
        assert_eq!(decode_head(&encode_head(None)).unwrap(), None);
        let mut bad = encode_head(Some(&h));
        bad[7] ^= 1;
        assert!(decode_head(&bad).is_err());
        let seg = SegmentId([0xab; 16]);
        assert_eq!(SegmentId::from_path(&seg.path()), Some(seg));
        assert_eq!(page_from_path(&page_path(0x1234)), Some(0x1234));
        assert!(page_from_path(&Path::from("idx/zz")).is_none());
        for code in 0..=255u8 {
            if let Some(f) = format_from_code(code) {
                assert_eq!(format_code(f), code);
            }
        }
    }
}
