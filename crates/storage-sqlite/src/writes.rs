//! Writes inside one transaction: inserting admitted blocks with their daily
//! statistics, deleting one.

use super::*;

/// Inserts the blocks not yet stored, in order, with their daily statistics,
/// after the admission rule has passed the whole batch.
pub(crate) fn insert_blocks(tx: &Transaction<'_>, blocks: &[Block]) -> Result<()> {
    let err = |e| sql_err("storing a block", e);
    let mut at_index = tx
        .prepare_cached("SELECT hash FROM blocks WHERE block_index = ?1")
        .map_err(err)?;
    let mut previous_at = tx
        .prepare_cached("SELECT previous_hash FROM blocks WHERE block_index = ?1")
        .map_err(err)?;
    let mut insert = tx
        .prepare_cached(
            "INSERT INTO blocks (block_index, hash, timestamp_ns, public_key, previous_hash, \
             payload_type, payload, signature, size_bytes, meta_check) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )
        .map_err(err)?;
    let mut day = tx
        .prepare_cached(
            "INSERT INTO block_stats (date, block_count, total_size) \
             VALUES (date(?1, 'unixepoch'), 1, ?2) \
             ON CONFLICT (date) DO UPDATE SET block_count = block_count + 1, \
             total_size = total_size + excluded.total_size",
        )
        .map_err(err)?;
    let mut key = tx
        .prepare_cached(
            "INSERT INTO block_stats_keys (date, public_key, blocks) \
             VALUES (date(?1, 'unixepoch'), ?2, 1) \
             ON CONFLICT (date, public_key) DO UPDATE SET blocks = blocks + 1 RETURNING blocks",
        )
        .map_err(err)?;
    let mut new_key = tx
        .prepare_cached(
            "UPDATE block_stats SET unique_keys = unique_keys + 1 WHERE date = date(?1, 'unixepoch')",
        )
        .map_err(err)?;
    let fresh = storage_core::raw::admit(
        blocks,
        &mut storage_core::raw::ChainViewFn(
            |i| {
                at_index
                    .query_row([sql_index(i)], |r| r.get::<_, Vec<u8>>(0))
                    .optional()
                    .map_err(err)?
                    .map(|h| fixed(h, "hash").map(BlockHash))
                    .transpose()
            },
            |i| {
                previous_at
                    .query_row([sql_index(i)], |r| r.get::<_, Option<Vec<u8>>>(0))
                    .optional()
                    .map_err(err)?
                    .map(|p| {
                        p.map(|h| fixed(h, "previous_hash").map(BlockHash))
                            .transpose()
                    })
                    .transpose()
            },
        ),
    )?;
    for b in fresh.into_iter().map(|p| &blocks[p]) {
        let index = b.index() as i64;
        let secs = (b.timestamp_nanos() / 1_000_000_000) as i64;
        insert
            .execute(params![
                index,
                b.hash().as_bytes().as_slice(),
                b.timestamp_nanos() as i64,
                b.public_key().as_bytes().as_slice(),
                b.previous_hash().map(|h| h.as_bytes().to_vec()),
                b.payload_type(),
                b.payload(),
                b.signature().as_bytes().as_slice(),
                b.size_bytes() as i64,
                meta_check(
                    b.hash().as_bytes(),
                    index,
                    b.timestamp_nanos() as i64,
                    b.payload_type(),
                    b.public_key().as_bytes(),
                    b.size_bytes() as i64
                ),
            ])
            .map_err(err)?;
        day.execute(params![secs, b.size_bytes() as i64])
            .map_err(err)?;
        let blocks_for_key: i64 = key
            .query_row(params![secs, b.public_key().as_bytes().as_slice()], |r| {
                r.get(0)
            })
            .map_err(err)?;
        if blocks_for_key == 1 {
            new_key.execute([secs]).map_err(err)?;
        }
    }
    Ok(())
}

/// Deletes one block and its statistics; clears the head if it was the head.
pub(crate) fn delete_one(tx: &Transaction<'_>, hash: &BlockHash) -> Result<bool> {
    let err = |e| sql_err("deleting a block", e);
    let h = hash.as_bytes().as_slice();
    let row: Option<(i64, i64, Vec<u8>, i64)> = tx
        .prepare_cached(
            "DELETE FROM blocks WHERE hash = ?1 RETURNING timestamp_ns, block_index, public_key, size_bytes",
        )
        .and_then(|mut s| s.query_row([h], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))).optional())
        .map_err(err)?;
    let Some((ts, _index, key, size)) = row else {
        return Ok(false);
    };
    let secs = ts.div_euclid(1_000_000_000);
    tx.prepare_cached(
        "UPDATE block_stats SET block_count = block_count - 1, total_size = total_size - ?2 \
         WHERE date = date(?1, 'unixepoch')",
    )
    .and_then(|mut s| s.execute(params![secs, size]))
    .map_err(err)?;
    let left: i64 = tx
        .prepare_cached(
            "UPDATE block_stats_keys SET blocks = blocks - 1 \
             WHERE date = date(?1, 'unixepoch') AND public_key = ?2 RETURNING blocks",
        )
        .and_then(|mut s| s.query_row(params![secs, key], |r| r.get(0)))
        .map_err(err)?;
    if left == 0 {
        tx.prepare_cached(
            "DELETE FROM block_stats_keys WHERE date = date(?1, 'unixepoch') AND public_key = ?2",
        )
        .and_then(|mut s| s.execute(params![secs, key]))
        .map_err(err)?;
        tx.prepare_cached(
            "UPDATE block_stats SET unique_keys = unique_keys - 1 WHERE date = date(?1, 'unixepoch')",
        )
        .and_then(|mut s| s.execute([secs]))
        .map_err(err)?;
    }
    tx.prepare_cached("DELETE FROM chain_metadata WHERE key = 'head' AND value = ?1")
        .and_then(|mut s| s.execute([h]))
        .map_err(err)?;
    Ok(true)
}
