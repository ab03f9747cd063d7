//! Writes inside one transaction: inserting admitted blocks with their daily
//! statistics, deleting one.

use std::collections::BTreeMap;

use super::*;

/// Inserts the blocks not yet stored, in order, with their daily statistics,
/// after the admission rule has passed the whole batch. The statistics are
/// summed per day and signer first, so a batch updates each of its days once.
/// Returns how many blocks it inserted.
pub(crate) fn insert_blocks(tx: &Transaction<'_>, blocks: &[Block]) -> Result<u64> {
    let err = |e| sql_err("storing a block", e);
    let mut at_index = tx
        .prepare_cached("SELECT hash FROM blocks WHERE block_index = ?1")
        .map_err(err)?;
    let mut block_at = tx
        .prepare_cached(&format!(
            "SELECT {BLOCK_COLUMNS} FROM blocks WHERE block_index = ?1"
        ))
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
                let mut rows = block_at.query([sql_index(i)]).map_err(err)?;
                match rows.next().map_err(err)? {
                    Some(r) => Ok(Some(block_from_row(r)?.previous_hash().copied())),
                    None => Ok(None),
                }
            },
        ),
    )?;
    let mut insert = tx.prepare_cached(INSERT_BLOCK).map_err(err)?;
    // Per day (as days since the epoch): blocks and bytes; per day and signer: blocks.
    let inserted = fresh.len() as u64;
    let mut days: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    let mut signers: BTreeMap<(i64, &[u8; 32]), i64> = BTreeMap::new();
    for b in fresh.into_iter().map(|p| &blocks[p]) {
        let index = b.index() as i64;
        let ts = b.timestamp_nanos() as i64;
        let size = b.size_bytes() as i64;
        let key = b.public_key().as_bytes();
        insert
            .execute(params![
                index,
                b.hash().as_bytes().as_slice(),
                ts,
                key.as_slice(),
                b.payload_type(),
                size,
                meta_check(b.hash().as_bytes(), index, ts, b.payload_type(), key, size),
                WireFormat::BINARY.encode(b)?,
            ])
            .map_err(err)?;
        let day = day_of(ts);
        let total = days.entry(day).or_default();
        total.0 += 1;
        total.1 += size;
        *signers.entry((day, key)).or_default() += 1;
    }
    let mut signer_day = tx
        .prepare_cached(
            "INSERT INTO block_stats_keys (date, public_key, blocks) \
             VALUES (date(?1, 'unixepoch'), ?2, ?3) \
             ON CONFLICT (date, public_key) DO UPDATE SET blocks = blocks + excluded.blocks \
             RETURNING blocks",
        )
        .map_err(err)?;
    // Signers seen for the first time on each day.
    let mut new_signers: BTreeMap<i64, i64> = BTreeMap::new();
    for ((day, key), added) in signers {
        let now: i64 = signer_day
            .query_row(params![day * SECONDS_PER_DAY, key.as_slice(), added], |r| {
                r.get(0)
            })
            .map_err(err)?;
        if now == added {
            *new_signers.entry(day).or_default() += 1;
        }
    }
    let mut day_totals = tx
        .prepare_cached(
            "INSERT INTO block_stats (date, block_count, total_size, unique_keys) \
             VALUES (date(?1, 'unixepoch'), ?2, ?3, ?4) \
             ON CONFLICT (date) DO UPDATE SET block_count = block_count + excluded.block_count, \
             total_size = total_size + excluded.total_size, \
             unique_keys = unique_keys + excluded.unique_keys",
        )
        .map_err(err)?;
    for (day, (count, size)) in days {
        let fresh_keys = new_signers.get(&day).copied().unwrap_or(0);
        day_totals
            .execute(params![day * SECONDS_PER_DAY, count, size, fresh_keys])
            .map_err(err)?;
    }
    Ok(inserted)
}

const SECONDS_PER_DAY: i64 = 86_400;

/// The UTC day (days since the epoch) of a timestamp in nanoseconds.
fn day_of(ts_nanos: i64) -> i64 {
    ts_nanos
        .div_euclid(1_000_000_000)
        .div_euclid(SECONDS_PER_DAY)
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
    let secs = day_of(ts) * SECONDS_PER_DAY;
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
