//! On-disk formats: segment files of checksummed records, and segment index files.
//!
//! All integers little-endian.
//!
//! Segment `NNNNNNNNNNNNNNNN.seg`:
//! ```text
//! header   "OLSEG\0\0\x02" (8) | segment id u64 | durable slot × 2
//! slot     durable_len u64 | crc32 u32 (over segment id and durable_len) | 0 u32
//!          (the larger valid slot: every byte below it was synced; rewritten in
//!          turn, before each sync, with the length the previous sync made durable)
//! record*  magic u16 = 0xB10C | kind u8 | 0 u8 | body_len u32 | crc32 u32 | body
//!          (the crc covers the first 8 header bytes and the body)
//! PUT      body = count u32 | entry*
//! entry    stored_len u32 | crc32 u32 | raw_len u32 | codec u8 | stored bytes
//!          (crc over raw_len, codec and stored bytes; stored = the block's bincode wire
//!          encoding, compressed by `codec`)
//! DELETE   body = hash [32]
//! HEAD     body = 0 | 1, hash [32]
//! ```
//!
//! Index `NNNNNNNNNNNNNNNN.idx`: the table of one segment's first `covered`
//! bytes (see `table`). Stores of the first layout have index files that list
//! those bytes' operations instead; opening reads such a segment from its log
//! and writes its table, and salvage still reads them for which blocks existed:
//! ```text
//! "OLIDX\0\0\x01" | segment id u64 | covered u64 | keys u32 | types u32 | ops u32
//! keys × [32] | types × (len u8, bytes) | op* | crc32 of everything before
//! op PUT    1 | offset u64 | len u32 | raw_len u32 | index u64 | ts u64 | size u32
//!             | hash [32] | key u32 | type u32
//! op DELETE 2 | hash [32]
//! op HEAD   3 | 0|1 | hash [32]
//! ```
//!
//! `MANIFEST`: the store's segments, rewritten atomically when the set changes
//! (a segment sealed or started, a compaction committed):
//! ```text
//! "OLMAN\0\0\x01" | count u32 | (segment id u64 | sealed_len u64)* | crc32
//! ```
//! `sealed_len` is the length a sealed segment was synced at; 0 marks the active
//! (last) segment, whose durable length is in its header slots.

use storage_core::{
    Block, BlockHash, CompressionType, PublicKey, Result, StorageError, WireFormat,
};

/// Segment file header magic.
pub(crate) const SEG_MAGIC: &[u8; 8] = b"OLSEG\0\0\x02";
/// The magic of the first format, which kept no durable marks.
pub(crate) const SEG_MAGIC_V1: &[u8; 8] = b"OLSEG\0\0\x01";
/// Size of the segment file header.
pub(crate) const SEG_HEADER: u64 = 48;
/// Offset of the first durable slot in the header.
const SLOT_AT: usize = 16;
/// Size of a durable slot.
const SLOT: usize = 16;
/// Manifest magic.
pub(crate) const MANIFEST_MAGIC: &[u8; 8] = b"OLMAN\0\0\x01";
/// Record header magic.
pub(crate) const REC_MAGIC: u16 = 0xB10C;
/// Size of a record header.
pub(crate) const REC_HEADER: usize = 12;
/// Size of an entry header inside a PUT record.
pub(crate) const ENTRY_HEADER: usize = 13;
/// Largest record body: one atomic write (a batch) must fit in it.
pub(crate) const MAX_RECORD_BODY: usize = 1 << 30;
/// Index file magic.
pub(crate) const IDX_MAGIC: &[u8; 8] = b"OLIDX\0\0\x01";

/// Record kinds.
pub(crate) const KIND_PUT: u8 = 1;
/// A deletion.
pub(crate) const KIND_DELETE: u8 = 2;
/// A head change.
pub(crate) const KIND_HEAD: u8 = 3;

fn codec_byte(c: CompressionType) -> u8 {
    match c {
        CompressionType::None => 0,
        CompressionType::Gzip => 1,
        CompressionType::Zstd => 2,
        CompressionType::Lz4 => 3,
    }
}

fn codec_of(b: u8) -> Option<CompressionType> {
    Some(match b {
        0 => CompressionType::None,
        1 => CompressionType::Gzip,
        2 => CompressionType::Zstd,
        3 => CompressionType::Lz4,
        _ => return None,
    })
}

/// The segment file header for segment `id` (no durable length recorded yet).
pub(crate) fn segment_header(id: u64) -> [u8; SEG_HEADER as usize] {
    let mut h = [0u8; SEG_HEADER as usize];
    h[..8].copy_from_slice(SEG_MAGIC);
    h[8..16].copy_from_slice(&id.to_le_bytes());
    h
}

/// What a segment header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SegmentHeader {
    /// This format; every byte below `durable` was synced. `slot` holds that
    /// length (`None` when no slot was ever written).
    Valid { durable: u64, slot: Option<usize> },
    /// Written by the first format.
    Version1,
    /// Not the header of this segment.
    Invalid,
}

/// Parses a segment file header.
pub(crate) fn parse_segment_header(bytes: &[u8], id: u64) -> SegmentHeader {
    if bytes.len() >= 16 && &bytes[..8] == SEG_MAGIC_V1 && bytes[8..16] == id.to_le_bytes() {
        return SegmentHeader::Version1;
    }
    if bytes.len() < SEG_HEADER as usize
        || &bytes[..8] != SEG_MAGIC
        || bytes[8..16] != id.to_le_bytes()
    {
        return SegmentHeader::Invalid;
    }
    // A torn or never-written slot fails its checksum and counts as nothing.
    let best = (0..2)
        .filter_map(|k| {
            let slot = &bytes[SLOT_AT + k * SLOT..SLOT_AT + (k + 1) * SLOT];
            let len = u64::from_le_bytes(slot[..8].try_into().ok()?);
            (slot[8..12] == slot_crc(id, len).to_le_bytes()).then_some((len, k))
        })
        .max();
    SegmentHeader::Valid {
        durable: best.map_or(SEG_HEADER, |b| b.0.max(SEG_HEADER)),
        slot: best.map(|b| b.1),
    }
}

fn slot_crc(id: u64, len: u64) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&id.to_le_bytes());
    h.update(&len.to_le_bytes());
    h.finalize()
}

/// Durable slot `k` (0 or 1) of segment `id` saying `len`: the bytes and where
/// they go in the file.
pub(crate) fn durable_slot(id: u64, k: usize, len: u64) -> ([u8; SLOT], u64) {
    let mut slot = [0u8; SLOT];
    slot[..8].copy_from_slice(&len.to_le_bytes());
    slot[8..12].copy_from_slice(&slot_crc(id, len).to_le_bytes());
    (slot, (SLOT_AT + (k % 2) * SLOT) as u64)
}

/// Encodes the manifest: `(segment id, sealed length or 0 for the active one)`.
pub(crate) fn encode_manifest(segments: &[(u64, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + segments.len() * 16);
    out.extend_from_slice(MANIFEST_MAGIC);
    out.extend_from_slice(&(segments.len() as u32).to_le_bytes());
    for (id, sealed) in segments {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&sealed.to_le_bytes());
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Parses the manifest; `None` when it is damaged.
pub(crate) fn parse_manifest(bytes: &[u8]) -> Option<Vec<(u64, u64)>> {
    let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
    if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().ok()?) {
        return None;
    }
    let mut r = Reader { b: body, at: 0 };
    if r.take(8)? != MANIFEST_MAGIC {
        return None;
    }
    let n = r.u32()? as usize;
    let mut out = Vec::with_capacity(n.min(1 << 20));
    for _ in 0..n {
        out.push((r.u64()?, r.u64()?));
    }
    let well_formed = r.at == body.len()
        && out.windows(2).all(|w| w[0].0 < w[1].0)
        && out.last().is_some_and(|l| l.1 == 0)
        && out.iter().rev().skip(1).all(|e| e.1 >= SEG_HEADER);
    well_formed.then_some(out)
}

/// A block encoded as a PUT entry, ready to append.
pub(crate) struct EncodedEntry {
    /// Entry header and stored bytes.
    pub bytes: Vec<u8>,
    /// Encoded size before compression.
    pub raw_len: u32,
}

/// Encodes one block as a PUT entry with `codec`.
pub(crate) fn encode_entry(block: &Block, codec: CompressionType) -> Result<EncodedEntry> {
    let raw = WireFormat::BINARY.encode(block)?;
    let raw_len = raw.len() as u32;
    let stored = match codec {
        CompressionType::None => raw,
        c => c.compress(&raw)?,
    };
    let mut bytes = Vec::with_capacity(ENTRY_HEADER + stored.len());
    bytes.extend_from_slice(&(stored.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&[0; 4]); // checksum, filled in below
    bytes.extend_from_slice(&raw_len.to_le_bytes());
    bytes.push(codec_byte(codec));
    bytes.extend_from_slice(&stored);
    let crc = crc32fast::hash(&bytes[8..]);
    bytes[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(EncodedEntry { bytes, raw_len })
}

/// Re-encodes a stored entry with another codec (for `vacuum`), checking it first.
pub(crate) fn recode_entry(
    entry: &[u8],
    hash: &BlockHash,
    codec: CompressionType,
) -> Result<Vec<u8>> {
    let (from, stored, _) = split_entry(entry, hash)?;
    if from == codec {
        return Ok(entry.to_vec());
    }
    let block = decode_stored(from, stored, hash)?;
    Ok(encode_entry(&block, codec)?.bytes)
}

/// Checks an entry's header and checksum; returns its codec, stored bytes and raw
/// length, or what is wrong.
fn parse_entry(entry: &[u8]) -> std::result::Result<(CompressionType, &[u8], u32), &'static str> {
    if entry.len() < ENTRY_HEADER {
        return Err("shorter than its header");
    }
    if u32_at(entry, 0) as usize != entry.len() - ENTRY_HEADER {
        return Err("length does not match the index");
    }
    if crc32fast::hash(&entry[8..]) != u32_at(entry, 4) {
        return Err("checksum mismatch");
    }
    let codec = codec_of(entry[12]).ok_or("unknown codec")?;
    Ok((codec, &entry[ENTRY_HEADER..], u32_at(entry, 8)))
}

/// Checks the entry of block `hash` (see [`parse_entry`]).
pub(crate) fn split_entry<'a>(
    entry: &'a [u8],
    hash: &BlockHash,
) -> Result<(CompressionType, &'a [u8], u32)> {
    parse_entry(entry)
        .map_err(|what| StorageError::corrupted(format!("fs: entry of block {hash}: {what}")))
}

/// Decodes an entry read from disk into the block stored under `hash`.
pub(crate) fn decode_entry(entry: &[u8], hash: &BlockHash) -> Result<Block> {
    let (codec, stored, _) = split_entry(entry, hash)?;
    decode_stored(codec, stored, hash)
}

fn decode_stored(codec: CompressionType, stored: &[u8], hash: &BlockHash) -> Result<Block> {
    WireFormat {
        encoding: storage_core::Encoding::Binary,
        compression: codec,
    }
    .decode_stored(stored, hash)
}

/// Decodes an entry found while scanning a segment (no hash known yet): the block
/// and its hash come from the bytes, which the entry checksum protects. Returns
/// the block and the entry's length before compression.
pub(crate) fn decode_scanned_entry(entry: &[u8]) -> Result<(Block, u32)> {
    let (codec, stored, raw_len) = parse_entry(entry)
        .map_err(|what| StorageError::corrupted(format!("fs: scanned entry: {what}")))?;
    let parts = WireFormat {
        encoding: storage_core::Encoding::Binary,
        compression: codec,
    }
    .decode_parts(stored)?;
    let block = Block::from_trusted_parts(parts)
        .map_err(|e| StorageError::corrupted_by("fs: entry holds invalid block fields", e))?;
    Ok((block, raw_len))
}

/// Starts a record in `out`; [`finish_record`] fills in its header.
pub(crate) fn begin_record(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; REC_HEADER]);
    start
}

pub(crate) fn finish_record(out: &mut [u8], start: usize, kind: u8) {
    let body_len = (out.len() - start - REC_HEADER) as u32;
    let rec = &mut out[start..];
    rec[..2].copy_from_slice(&REC_MAGIC.to_le_bytes());
    rec[2] = kind;
    rec[3] = 0;
    rec[4..8].copy_from_slice(&body_len.to_le_bytes());
    let crc = record_crc(&rec[..8], &rec[REC_HEADER..]);
    rec[8..12].copy_from_slice(&crc.to_le_bytes());
}

/// A record's checksum: over the first eight header bytes and the body.
fn record_crc(header: &[u8], body: &[u8]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&header[..8]);
    crc.update(body);
    crc.finalize()
}

/// A HEAD record body.
pub(crate) fn head_body(head: Option<&BlockHash>) -> Vec<u8> {
    match head {
        None => vec![0],
        Some(h) => {
            let mut b = vec![1];
            b.extend_from_slice(h.as_bytes());
            b
        }
    }
}

/// What a record header says, before its body is checked.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordHeader {
    /// Record kind.
    pub kind: u8,
    /// Body length.
    pub body_len: usize,
    /// Expected checksum.
    pub crc: u32,
}

/// Parses a record header; `None` if it cannot be one.
pub(crate) fn parse_record_header(h: &[u8]) -> Option<RecordHeader> {
    if h.len() < REC_HEADER || u16::from_le_bytes([h[0], h[1]]) != REC_MAGIC || h[3] != 0 {
        return None;
    }
    let kind = h[2];
    if !(KIND_PUT..=KIND_HEAD).contains(&kind) {
        return None;
    }
    let body_len = u32_at(h, 4) as usize;
    if body_len > MAX_RECORD_BODY {
        return None;
    }
    Some(RecordHeader {
        kind,
        body_len,
        crc: u32_at(h, 8),
    })
}

/// Whether `body` matches the checksum in `header`.
pub(crate) fn record_checksum_ok(header: &[u8], body: &[u8], crc: u32) -> bool {
    record_crc(header, body) == crc
}

/// Splits a PUT body into entries: `(offset within body, entry bytes)`.
pub(crate) fn put_entries(body: &[u8]) -> Option<Vec<(usize, &[u8])>> {
    let count = u32_at_checked(body, 0)? as usize;
    let mut at = 4;
    let mut out = Vec::with_capacity(count.min(body.len() / ENTRY_HEADER + 1));
    for _ in 0..count {
        let stored = u32_at_checked(body, at)? as usize;
        let end = at.checked_add(ENTRY_HEADER)?.checked_add(stored)?;
        out.push((at, body.get(at..end)?));
        at = end;
    }
    (at == body.len()).then_some(out)
}

/// Parses a DELETE body.
pub(crate) fn parse_delete(body: &[u8]) -> Option<BlockHash> {
    (body.len() == 32).then(|| BlockHash::from_slice(body).ok())?
}

/// Parses a HEAD body.
pub(crate) fn parse_head(body: &[u8]) -> Option<Option<BlockHash>> {
    match body {
        [0] => Some(None),
        [1, rest @ ..] if rest.len() == 32 => BlockHash::from_slice(rest).ok().map(Some),
        _ => None,
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u32_at_checked(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// One operation of a segment, as kept for its index file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    /// A block written at `off` (entry header) with `len` bytes.
    Put(PutOp),
    /// A block deleted by the record at this offset.
    Delete(BlockHash, u64),
    /// The head set (or cleared).
    Head(Option<BlockHash>),
}

/// A stored block's location and metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PutOp {
    /// Offset of the entry header in the segment.
    pub off: u64,
    /// Entry length (header and stored bytes).
    pub len: u32,
    /// Encoded length before compression.
    pub raw_len: u32,
    /// Chain index.
    pub index: u64,
    /// Timestamp, Unix nanoseconds.
    pub ts: u64,
    /// Canonical size (`Block::size_bytes`).
    pub size: u32,
    /// Block hash.
    pub hash: BlockHash,
    /// Signer.
    pub key: PublicKey,
    /// Payload type.
    pub ty: std::sync::Arc<str>,
}

impl PutOp {
    /// The put of `block`, whose entry of `len` bytes (`raw_len` before
    /// compression) starts at `off`.
    pub(crate) fn of(block: &Block, off: u64, len: u32, raw_len: u32) -> Self {
        Self {
            off,
            len,
            raw_len,
            index: block.index(),
            ts: block.timestamp_nanos(),
            size: block.size_bytes() as u32,
            hash: block.hash(),
            key: *block.public_key(),
            ty: block.payload_type().into(),
        }
    }
}

/// Serialises an index file of the first layout (tests).
#[cfg(test)]
pub(crate) fn encode_index(id: u64, covered: u64, ops: &[Op]) -> Vec<u8> {
    use std::collections::HashMap;
    let mut keys: Vec<&PublicKey> = Vec::new();
    let mut key_ids: HashMap<&PublicKey, u32> = HashMap::new();
    let mut types: Vec<&str> = Vec::new();
    let mut type_ids: HashMap<&str, u32> = HashMap::new();
    for op in ops {
        if let Op::Put(p) = op {
            key_ids.entry(&p.key).or_insert_with(|| {
                keys.push(&p.key);
                keys.len() as u32 - 1
            });
            type_ids.entry(&p.ty).or_insert_with(|| {
                types.push(&p.ty);
                types.len() as u32 - 1
            });
        }
    }
    let mut out = Vec::with_capacity(48 + ops.len() * 90);
    out.extend_from_slice(IDX_MAGIC);
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&covered.to_le_bytes());
    out.extend_from_slice(&(keys.len() as u32).to_le_bytes());
    out.extend_from_slice(&(types.len() as u32).to_le_bytes());
    out.extend_from_slice(&(ops.len() as u32).to_le_bytes());
    for k in &keys {
        out.extend_from_slice(k.as_bytes());
    }
    for t in &types {
        out.push(t.len() as u8); // payload types are at most 128 bytes
        out.extend_from_slice(t.as_bytes());
    }
    for op in ops {
        match op {
            Op::Put(p) => {
                out.push(1);
                out.extend_from_slice(&p.off.to_le_bytes());
                out.extend_from_slice(&p.len.to_le_bytes());
                out.extend_from_slice(&p.raw_len.to_le_bytes());
                out.extend_from_slice(&p.index.to_le_bytes());
                out.extend_from_slice(&p.ts.to_le_bytes());
                out.extend_from_slice(&p.size.to_le_bytes());
                out.extend_from_slice(p.hash.as_bytes());
                out.extend_from_slice(&key_ids[&p.key].to_le_bytes());
                out.extend_from_slice(&type_ids[&*p.ty].to_le_bytes());
            }
            Op::Delete(h, _) => {
                out.push(2);
                out.extend_from_slice(h.as_bytes());
            }
            Op::Head(h) => {
                out.push(3);
                match h {
                    None => out.extend_from_slice(&[0; 33]),
                    Some(h) => {
                        out.push(1);
                        out.extend_from_slice(h.as_bytes());
                    }
                }
            }
        }
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// A put as an index file holds it: signer and type as ids into the file's tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RawPut {
    /// Offset of the entry header in the segment.
    pub off: u64,
    /// Entry length.
    pub len: u32,
    /// Encoded length before compression.
    pub raw_len: u32,
    /// Chain index.
    pub index: u64,
    /// Timestamp, Unix nanoseconds.
    pub ts: u64,
    /// Canonical size.
    pub size: u32,
    /// Block hash.
    pub hash: BlockHash,
    /// Signer, as an id into [`SegmentIndex::keys`].
    pub key: u32,
    /// Payload type, as an id into [`SegmentIndex::types`].
    pub ty: u32,
}

/// An operation as an index file holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RawOp {
    /// A block written.
    Put(RawPut),
    /// A block deleted.
    Delete(BlockHash),
    /// The head set or cleared.
    Head(Option<BlockHash>),
}

/// A whole parsed index file (tests).
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct SegmentIndex {
    /// Its tables and coverage.
    pub header: IndexHeader,
    /// The operations, in log order.
    pub ops: Vec<RawOp>,
}

#[cfg(test)]
impl SegmentIndex {
    /// Every operation, resolved.
    pub(crate) fn to_ops(&self) -> Vec<Op> {
        self.ops.iter().map(|o| self.header.op(o)).collect()
    }
}

impl IndexHeader {
    /// One operation with its signer and type resolved.
    pub(crate) fn op(&self, raw: &RawOp) -> Op {
        match raw {
            RawOp::Put(p) => Op::Put(PutOp {
                off: p.off,
                len: p.len,
                raw_len: p.raw_len,
                index: p.index,
                ts: p.ts,
                size: p.size,
                hash: p.hash,
                key: self.keys[p.key as usize],
                ty: self.types[p.ty as usize].clone(),
            }),
            RawOp::Delete(h) => Op::Delete(*h, 0),
            RawOp::Head(h) => Op::Head(*h),
        }
    }
}

/// The tables of an index file, checked; its operations are read with
/// [`index_ops`] straight from the file's bytes.
#[derive(Debug)]
pub(crate) struct IndexHeader {
    /// Signers, by id.
    pub keys: Vec<PublicKey>,
    /// Payload types, by id.
    pub types: Vec<std::sync::Arc<str>>,
    nops: usize,
    ops_at: usize,
    ops_end: usize,
}

/// Checks an index file of segment `id` (checksum, magic, id, tables); `None` if
/// it is damaged, foreign or of another segment.
pub(crate) fn parse_index_header(bytes: &[u8], id: u64) -> Option<IndexHeader> {
    let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
    if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().ok()?) {
        return None;
    }
    let mut r = Reader { b: body, at: 0 };
    if r.take(8)? != IDX_MAGIC || r.u64()? != id {
        return None;
    }
    r.u64()?; // the bytes covered
    let nkeys = r.u32()? as usize;
    let ntypes = r.u32()? as usize;
    let nops = r.u32()? as usize;
    let mut keys = Vec::with_capacity(nkeys.min(body.len() / 32));
    for _ in 0..nkeys {
        keys.push(PublicKey::from_slice(r.take(32)?).ok()?);
    }
    let mut types: Vec<std::sync::Arc<str>> = Vec::with_capacity(ntypes.min(body.len()));
    for _ in 0..ntypes {
        let len = r.take(1)?[0] as usize;
        types.push(std::str::from_utf8(r.take(len)?).ok()?.into());
    }
    Some(IndexHeader {
        keys,
        types,
        nops,
        ops_at: r.at,
        ops_end: body.len(),
    })
}

/// The operations of an index file whose header [`parse_index_header`] checked.
/// Yields `None` (and stops) at a malformed operation.
pub(crate) fn index_ops<'a>(
    bytes: &'a [u8],
    h: &'a IndexHeader,
) -> impl Iterator<Item = Option<RawOp>> + 'a {
    let mut r = Reader {
        b: &bytes[..h.ops_end],
        at: h.ops_at,
    };
    let mut left = h.nops;
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed {
            return None;
        }
        if left == 0 {
            // Everything read, and nothing may follow.
            if r.at != r.b.len() {
                failed = true;
                return Some(None);
            }
            return None;
        }
        left -= 1;
        let op = read_op(&mut r, h);
        failed = op.is_none();
        Some(op)
    })
}

/// Bytes of a PUT operation after its tag.
const PUT_OP: usize = 8 + 4 + 4 + 8 + 8 + 4 + 32 + 4 + 4;

fn read_op(r: &mut Reader<'_>, h: &IndexHeader) -> Option<RawOp> {
    // Puts are nearly all of an index: read them at fixed offsets.
    if r.b.get(r.at) == Some(&1)
        && let Some(b) = r.b.get(r.at + 1..r.at + 1 + PUT_OP)
    {
        let u32_ = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4"));
        let u64_ = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8"));
        let p = RawPut {
            off: u64_(0),
            len: u32_(8),
            raw_len: u32_(12),
            index: u64_(16),
            ts: u64_(24),
            size: u32_(32),
            hash: BlockHash(b[36..68].try_into().expect("32")),
            key: u32_(68),
            ty: u32_(72),
        };
        if p.key as usize >= h.keys.len() || p.ty as usize >= h.types.len() {
            return None;
        }
        r.at += 1 + PUT_OP;
        return Some(RawOp::Put(p));
    }
    Some(match r.take(1)?[0] {
        // A put shorter than its fixed size (the fast path above takes whole ones).
        1 => return None,
        2 => RawOp::Delete(BlockHash(r.take(32)?.try_into().ok()?)),
        3 => {
            let flag = r.take(1)?[0];
            let hash = BlockHash(r.take(32)?.try_into().ok()?);
            match flag {
                0 => RawOp::Head(None),
                1 => RawOp::Head(Some(hash)),
                _ => return None,
            }
        }
        _ => return None,
    })
}

/// Parses a whole index file of segment `id`; `None` if any of it is damaged.
#[cfg(test)]
pub(crate) fn decode_index(bytes: &[u8], id: u64) -> Option<SegmentIndex> {
    let h = parse_index_header(bytes, id)?;
    let ops = index_ops(bytes, &h).collect::<Option<Vec<_>>>()?;
    Some(SegmentIndex { header: h, ops })
}

/// Reads fields off a byte slice; every read checks the length.
pub(crate) struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `b`.
    pub(crate) fn new(b: &'a [u8]) -> Self {
        Self { b, at: 0 }
    }
    /// Bytes read so far.
    pub(crate) fn at(&self) -> usize {
        self.at
    }
    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    pub(crate) fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    pub(crate) fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use storage_core::{SigningKey, system_time_from_unix_nanos};

    fn block(i: u8) -> Block {
        Block::sign_raw(
            0,
            system_time_from_unix_nanos(1_700_000_000_000_000_123),
            None,
            "test.fs/v1",
            vec![i; 300],
            &SigningKey::from_bytes(&[i; 32]),
        )
        .unwrap()
    }

    #[test]
    fn entries_round_trip_with_every_codec() {
        let b = block(1);
        for codec in CompressionType::ALL {
            let e = encode_entry(&b, codec).unwrap();
            assert_eq!(decode_entry(&e.bytes, &b.hash()).unwrap(), b, "{codec}");
            assert_eq!(
                decode_scanned_entry(&e.bytes).unwrap(),
                (b.clone(), e.raw_len)
            );
            for to in CompressionType::ALL {
                let r = recode_entry(&e.bytes, &b.hash(), to).unwrap();
                assert_eq!(decode_entry(&r, &b.hash()).unwrap(), b, "{codec}->{to}");
            }
            for i in 0..e.bytes.len() {
                let mut bad = e.bytes.clone();
                bad[i] ^= 0x10;
                let err = decode_entry(&bad, &b.hash()).unwrap_err();
                assert_eq!(err.kind(), storage_core::ErrorKind::Corrupted);
                assert!(
                    decode_scanned_entry(&bad).is_err() || i < 4,
                    "{codec} byte {i}"
                );
            }
        }
    }

    #[test]
    fn index_round_trips_and_rejects_damage() {
        let b = block(2);
        let ops = vec![
            Op::Put(PutOp {
                off: 16,
                len: 400,
                raw_len: 390,
                index: 0,
                ts: 5,
                size: 450,
                hash: b.hash(),
                key: *b.public_key(),
                ty: "test.fs/v1".into(),
            }),
            Op::Head(Some(b.hash())),
            Op::Delete(b.hash(), 0),
            Op::Head(None),
        ];
        let bytes = encode_index(7, 416, &ops);
        let idx = decode_index(&bytes, 7).unwrap();
        assert_eq!(idx.to_ops(), ops);
        assert!(decode_index(&bytes, 8).is_none());
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            assert!(decode_index(&bad, 7).is_none(), "byte {i}");
        }
        assert!(decode_index(&bytes[..bytes.len() - 1], 7).is_none());
    }

    #[test]
    fn record_headers() {
        let mut out = Vec::new();
        let start = begin_record(&mut out);
        out.extend_from_slice(&head_body(None));
        finish_record(&mut out, start, KIND_HEAD);
        let h = parse_record_header(&out).unwrap();
        assert_eq!((h.kind, h.body_len), (KIND_HEAD, 1));
        assert!(record_checksum_ok(&out, &out[REC_HEADER..], h.crc));
        assert_eq!(parse_head(&out[REC_HEADER..]), Some(None));
        out[REC_HEADER] = 1;
        assert!(!record_checksum_ok(&out, &out[REC_HEADER..], h.crc));
        assert!(parse_record_header(&[0; 12]).is_none());
    }
}
