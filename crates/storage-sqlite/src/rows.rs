//! Rows to blocks and metadata and back: column lists, fixed-size columns,
//! and the metadata checksum.

use super::*;

/// CRC-32 of a block's metadata columns, as stored in `meta_check`.
pub(crate) fn meta_check(hash: &[u8], index: i64, ts: i64, ty: &str, key: &[u8], size: i64) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(hash);
    h.update(&index.to_be_bytes());
    h.update(&ts.to_be_bytes());
    h.update(key);
    h.update(&size.to_be_bytes());
    h.update(ty.as_bytes());
    h.finalize()
}

/// Indices are at most `MAX_INDEX` (< 2^63), so they fit SQLite's INTEGER exactly.
pub(crate) fn sql_index(i: u64) -> i64 {
    i.min(MAX_INDEX) as i64
}

/// The columns a block is read from: its hash and its encoding.
pub(crate) const BLOCK_COLUMNS: &str = "hash, data";
/// Inserts one row of `blocks`, its columns in the order of the table.
pub(crate) const INSERT_BLOCK: &str = "INSERT INTO blocks (block_index, hash, timestamp_ns, \
    public_key, payload_type, size_bytes, meta_check, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";
pub(crate) const META_COLUMNS: &str =
    "hash, block_index, timestamp_ns, payload_type, public_key, size_bytes, meta_check";

pub(crate) fn fixed<const N: usize>(bytes: Vec<u8>, what: &str) -> Result<[u8; N]> {
    let len = bytes.len();
    bytes.try_into().map_err(|_| {
        StorageError::corrupted(format!("sqlite: {what} column has {len} bytes, not {N}"))
    })
}

/// Column `i` of `r` as a fixed-size BLOB, borrowed.
fn blob_at<'r, const N: usize>(
    r: &'r rusqlite::Row<'_>,
    i: usize,
    what: &str,
) -> Result<&'r [u8; N]> {
    let bytes = r
        .get_ref(i)
        .map_err(|e| sql_err("reading a block row", e))?
        .as_blob()
        .map_err(|e| StorageError::corrupted_by(format!("sqlite: {what} column"), e))?;
    bytes.try_into().map_err(|_| {
        StorageError::corrupted(format!(
            "sqlite: {what} column has {} bytes, not {N}",
            bytes.len()
        ))
    })
}

/// Decodes a block from a `BLOCK_COLUMNS` row and checks it against its stored
/// hash.
pub(crate) fn block_from_row(r: &rusqlite::Row<'_>) -> Result<Block> {
    let hash = BlockHash(*blob_at(r, 0, "hash")?);
    let data = r
        .get_ref(1)
        .map_err(|e| sql_err("reading a block row", e))?
        .as_blob()
        .map_err(|e| {
            StorageError::corrupted_by(format!("sqlite: data column of block {hash}"), e)
        })?;
    WireFormat::BINARY
        .decode_stored(data, &hash)
        .map_err(|e| StorageError::corrupted_by(format!("sqlite: row of block {hash}"), e))
}

/// Reads a `META_COLUMNS` row and checks it against its `meta_check`.
pub(crate) fn meta_from_row(r: &rusqlite::Row<'_>) -> Result<BlockMetadata> {
    let get_err = |e| sql_err("reading block metadata", e);
    let hash = blob_at::<32>(r, 0, "hash")?;
    let index: i64 = r.get(1).map_err(get_err)?;
    let ts: i64 = r.get(2).map_err(get_err)?;
    let payload_type = r
        .get_ref(3)
        .map_err(get_err)?
        .as_str()
        .map_err(|e| StorageError::corrupted_by("sqlite: payload_type", e))?;
    let key = blob_at::<32>(r, 4, "public_key")?;
    let size: i64 = r.get(5).map_err(get_err)?;
    let check: u32 = r.get(6).map_err(get_err)?;
    if meta_check(hash, index, ts, payload_type, key, size) != check {
        return Err(StorageError::corrupted(format!(
            "sqlite: metadata row of block {index} fails its check (damaged row)"
        )));
    }
    Ok(BlockMetadata {
        hash: BlockHash(*hash),
        index: index as u64,
        timestamp: system_time_from_unix_nanos(ts as u64),
        payload_type: payload_type.to_owned(),
        public_key: PublicKey(*key),
        size_bytes: size as u64,
    })
}
