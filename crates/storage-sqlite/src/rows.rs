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

pub(crate) const BLOCK_COLUMNS: &str =
    "hash, block_index, timestamp_ns, public_key, previous_hash, payload_type, payload, signature";
pub(crate) const META_COLUMNS: &str =
    "hash, block_index, timestamp_ns, payload_type, public_key, size_bytes, meta_check";

pub(crate) fn fixed<const N: usize>(bytes: Vec<u8>, what: &str) -> Result<[u8; N]> {
    let len = bytes.len();
    bytes.try_into().map_err(|_| {
        StorageError::corrupted(format!("sqlite: {what} column has {len} bytes, not {N}"))
    })
}

/// Rebuilds a block from a `BLOCK_COLUMNS` row and checks it against its stored hash.
pub(crate) fn block_from_row(r: &rusqlite::Row<'_>) -> Result<Block> {
    let get_err = |e| sql_err("reading a block row", e);
    let hash = BlockHash(fixed(r.get(0).map_err(get_err)?, "hash")?);
    let parts = BlockParts {
        index: r.get::<_, i64>(1).map_err(get_err)? as u64,
        timestamp_nanos: r.get::<_, i64>(2).map_err(get_err)? as u64,
        public_key: PublicKey(fixed(r.get(3).map_err(get_err)?, "public_key")?),
        previous_hash: r
            .get::<_, Option<Vec<u8>>>(4)
            .map_err(get_err)?
            .map(|h| fixed(h, "previous_hash").map(BlockHash))
            .transpose()?,
        payload_type: r.get(5).map_err(|e| {
            StorageError::corrupted_by(format!("sqlite: payload_type of block {hash}"), e)
        })?,
        payload: r.get(6).map_err(get_err)?,
        signature: Signature(fixed(r.get(7).map_err(get_err)?, "signature")?),
    };
    let block = Block::from_trusted_parts(parts).map_err(|e| {
        StorageError::corrupted_by(format!("sqlite: block {hash} has invalid fields"), e)
    })?;
    if block.hash() != hash {
        return Err(StorageError::corrupted(format!(
            "sqlite: row of block {hash} now hashes to {}",
            block.hash()
        )));
    }
    Ok(block)
}

/// Reads a `META_COLUMNS` row and checks it against its `meta_check`.
pub(crate) fn meta_from_row(r: &rusqlite::Row<'_>) -> Result<BlockMetadata> {
    let get_err = |e| sql_err("reading block metadata", e);
    let hash: Vec<u8> = r.get(0).map_err(get_err)?;
    let index: i64 = r.get(1).map_err(get_err)?;
    let ts: i64 = r.get(2).map_err(get_err)?;
    let payload_type: String = r
        .get(3)
        .map_err(|e| StorageError::corrupted_by("sqlite: payload_type", e))?;
    let key: Vec<u8> = r.get(4).map_err(get_err)?;
    let size: i64 = r.get(5).map_err(get_err)?;
    let check: u32 = r.get(6).map_err(get_err)?;
    if meta_check(&hash, index, ts, &payload_type, &key, size) != check {
        return Err(StorageError::corrupted(format!(
            "sqlite: metadata row of block {index} fails its check (damaged row)"
        )));
    }
    Ok(BlockMetadata {
        hash: BlockHash(fixed(hash, "hash")?),
        index: index as u64,
        timestamp: system_time_from_unix_nanos(ts as u64),
        payload_type,
        public_key: PublicKey(fixed(key, "public_key")?),
        size_bytes: size as u64,
    })
}
