//! Reads: one block by hash, and the SQL for a listing.

use super::*;

pub(crate) fn retrieve_one(c: &Connection, hash: &BlockHash) -> Result<Option<Block>> {
    let mut stmt = c
        .prepare_cached(&format!(
            "SELECT {BLOCK_COLUMNS} FROM blocks WHERE hash = ?1"
        ))
        .map_err(|e| sql_err("preparing retrieve", e))?;
    let mut rows = stmt
        .query([hash.as_bytes().as_slice()])
        .map_err(|e| sql_err("retrieving a block", e))?;
    match rows.next().map_err(|e| sql_err("retrieving a block", e))? {
        Some(row) => block_from_row(row).map(Some),
        None => Ok(None),
    }
}

/// Builds the SQL for `list_blocks`; `None` when nothing can match.
pub(crate) fn list_query(o: &ListOptions) -> Option<(String, Vec<Value>)> {
    let (tlo, thi) = o.time_range_nanos()?;
    let (ilo, ihi) = o.index_range()?;
    if ilo > MAX_INDEX {
        return None;
    }
    let mut sql = format!("SELECT {META_COLUMNS} FROM blocks WHERE block_index BETWEEN ?1 AND ?2");
    let mut args = vec![
        Value::Integer(sql_index(ilo)),
        Value::Integer(sql_index(ihi)),
    ];
    let mut bind = |sql: &mut String, clause: &str, v: Value| {
        args.push(v);
        sql.push_str(&clause.replace('?', &format!("?{}", args.len())));
    };
    if o.start_time.is_some() {
        bind(
            &mut sql,
            " AND timestamp_ns >= ?",
            Value::Integer(tlo.min(MAX_TIMESTAMP_NANOS) as i64),
        );
    }
    if o.end_time.is_some() && thi <= MAX_TIMESTAMP_NANOS {
        bind(
            &mut sql,
            " AND timestamp_ns <= ?",
            Value::Integer(thi as i64),
        );
    }
    if o.order == SortOrder::ByTimestamp
        && let Some(c) = o.after
    {
        // Keyset seek: the `>=` on the indexed timestamp starts the scan at the
        // cursor; the rest drops the cursor's own timestamp up to its index.
        let ts = Value::Integer(c.timestamp_nanos().min(i64::MAX as u64) as i64);
        bind(&mut sql, " AND timestamp_ns >= ?", ts.clone());
        bind(&mut sql, " AND (timestamp_ns > ?", ts);
        let index = Value::Integer(sql_index(c.index()));
        bind(&mut sql, " OR block_index > ?)", index);
    }
    if let Some(f) = &o.filter {
        if let Some(t) = &f.payload_type {
            bind(&mut sql, " AND payload_type = ?", Value::Text(t.clone()));
        }
        if let Some(k) = &f.public_key {
            bind(
                &mut sql,
                " AND public_key = ?",
                Value::Blob(k.as_bytes().to_vec()),
            );
        }
    }
    sql.push_str(match o.order {
        SortOrder::Ascending | SortOrder::ByIndex => " ORDER BY block_index ASC",
        SortOrder::Descending => " ORDER BY block_index DESC",
        SortOrder::ByTimestamp => " ORDER BY timestamp_ns ASC, block_index ASC",
    });
    // SQLite needs LIMIT before OFFSET; -1 means no limit.
    let limit = o.limit.map_or(-1, |l| l.min(i64::MAX as u64) as i64);
    let offset = o.offset.unwrap_or(0);
    if offset > i64::MAX as u64 {
        return None;
    }
    bind(&mut sql, " LIMIT ?", Value::Integer(limit));
    bind(&mut sql, " OFFSET ?", Value::Integer(offset as i64));
    Some((sql, args))
}
