//! The engine work beneath the shared layer.

use super::*;

impl Engine for SQLiteBackend {
    fn name(&self) -> &str {
        NAME
    }

    fn gate(&self) -> &Gate {
        &self.gate
    }

    fn supported(&self) -> Capabilities {
        let caps = Capabilities::new().persistent().atomic_batches().vacuum();
        if self.config.mode == OpenMode::ReadOnly {
            caps.read_only()
        } else {
            caps
        }
    }

    fn max_payload_bytes(&self) -> usize {
        self.config.max_payload_bytes
    }

    async fn write_blocks(&self, blocks: &[Block]) -> Result<()> {
        let owned = blocks.to_vec();
        let inserted = self.inserted.clone();
        self.write(move |conn| {
            let n = in_transaction(conn, |tx| insert_blocks(tx, &owned))?;
            let before = inserted.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            if before / BLOCKS_PER_OPTIMIZE != (before + n) / BLOCKS_PER_OPTIMIZE {
                // The blocks are committed: a failure here costs only a
                // possibly slower plan until the next refresh.
                if let Err(e) = conn.execute_batch(OPTIMIZE) {
                    tracing::warn!(backend = NAME, error = %e, "refreshing query statistics failed");
                }
            }
            Ok(())
        })
        .await
    }

    async fn read_block(&self, hash: &BlockHash) -> Result<Option<Block>> {
        let h = *hash;
        self.read(move |c| retrieve_one(c, &h)).await
    }

    async fn remove_block(&self, hash: &BlockHash) -> Result<bool> {
        let h = *hash;
        self.transaction(move |tx| delete_one(tx, &h)).await
    }

    async fn has_block(&self, hash: &BlockHash) -> Result<bool> {
        let h = *hash;
        self.read(move |c| {
            c.prepare_cached("SELECT EXISTS (SELECT 1 FROM blocks WHERE hash = ?1)")
                .and_then(|mut s| s.query_row([h.as_bytes().as_slice()], |r| r.get(0)))
                .map_err(|e| sql_err("checking a block", e))
        })
        .await
    }

    async fn read_blocks(&self, hashes: &[BlockHash]) -> Result<Vec<Option<Block>>> {
        let hs = hashes.to_vec();
        self.read(move |c| hs.iter().map(|h| retrieve_one(c, h)).collect())
            .await
    }

    async fn list(&self, options: &ListOptions) -> Result<Vec<BlockMetadata>> {
        let query = list_query(options);
        let filter = options.clone();
        self.read(move |c| {
            let Some((sql, args)) = query else {
                return Ok(Vec::new());
            };
            let err = |e| sql_err("listing blocks", e);
            let mut stmt = c.prepare_cached(&sql).map_err(err)?;
            let mut rows = stmt.query(rusqlite::params_from_iter(args)).map_err(err)?;
            let mut out = Vec::with_capacity(filter.limit.map_or(0, |l| l.min(1024) as usize));
            while let Some(row) = rows.next().map_err(err)? {
                let meta = meta_from_row(row)?;
                // A damaged index entry can point at a row that does not match,
                // or put it out of order.
                let out_of_order = out
                    .last()
                    .is_some_and(|prev| filter.compare(prev, &meta) == std::cmp::Ordering::Greater);
                if !filter.matches(&meta) || out_of_order {
                    return Err(StorageError::corrupted(format!(
                        "sqlite: an index selected block {} out of order or against the filter",
                        meta.index
                    )));
                }
                out.push(meta);
            }
            Ok(out)
        })
        .await
    }

    async fn count(&self) -> Result<u64> {
        self.read(|c| {
            c.prepare_cached("SELECT COALESCE(SUM(block_count), 0) FROM block_stats")
                .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)))
                .map(|n| n as u64)
                .map_err(|e| sql_err("counting blocks", e))
        })
        .await
    }

    async fn head(&self) -> Result<Option<BlockHash>> {
        self.read(|c| {
            let head: Option<Vec<u8>> = c
                .prepare_cached("SELECT value FROM chain_metadata WHERE key = 'head'")
                .and_then(|mut s| s.query_row([], |r| r.get(0)).optional())
                .map_err(|e| sql_err("reading the head", e))?;
            head.map(|h| fixed(h, "head").map(BlockHash)).transpose()
        })
        .await
    }

    async fn write_head(&self, hash: &BlockHash) -> Result<()> {
        let h = *hash;
        self.transaction(move |tx| {
            let err = |e| sql_err("setting the head", e);
            let stored: bool = tx
                .prepare_cached("SELECT EXISTS (SELECT 1 FROM blocks WHERE hash = ?1)")
                .and_then(|mut s| s.query_row([h.as_bytes().as_slice()], |r| r.get(0)))
                .map_err(err)?;
            if !stored {
                return Err(StorageError::BlockNotFound { hash: h });
            }
            tx.prepare_cached(
                "INSERT INTO chain_metadata (key, value) VALUES ('head', ?1) \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .and_then(|mut s| s.execute([h.as_bytes().as_slice()]))
            .map_err(err)?;
            Ok(())
        })
        .await
    }

    async fn read_range(&self, start: u64, end: u64) -> Result<Vec<Block>> {
        self.read(move |c| {
            if start > MAX_INDEX {
                return Ok(Vec::new());
            }
            let err = |e| sql_err("reading a range", e);
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {BLOCK_COLUMNS} FROM blocks WHERE block_index BETWEEN ?1 AND ?2 \
                         ORDER BY block_index"
                ))
                .map_err(err)?;
            let mut rows = stmt
                .query([sql_index(start), sql_index(end)])
                .map_err(err)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(err)? {
                out.push(block_from_row(row)?);
            }
            Ok(out)
        })
        .await
    }

    async fn run_compaction(&self) -> Result<()> {
        let wal = self.config.enable_wal;
        self.write(move |c| {
            if wal {
                c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                    .map_err(|e| sql_err("checkpointing the WAL", e))?;
            }
            c.execute_batch(OPTIMIZE)
                .map_err(|e| sql_err("optimizing", e))
        })
        .await
    }

    async fn run_vacuum(&self) -> Result<()> {
        self.write(|c| {
            c.execute_batch("VACUUM;")
                .map_err(|e| sql_err("vacuuming", e))
        })
        .await
    }

    async fn stats(&self) -> Result<StorageStats> {
        self.read(|c| {
                let err = |e| sql_err("reading statistics", e);
                let (blocks, size): (i64, i64) = c
                    .prepare_cached(
                        "SELECT COALESCE(SUM(block_count), 0), COALESCE(SUM(total_size), 0) FROM block_stats",
                    )
                    .and_then(|mut s| s.query_row([], |r| Ok((r.get(0)?, r.get(1)?))))
                    .map_err(err)?;
                let (oldest, newest): (Option<i64>, Option<i64>) = c
                    .prepare_cached("SELECT MIN(timestamp_ns), MAX(timestamp_ns) FROM blocks")
                    .and_then(|mut s| s.query_row([], |r| Ok((r.get(0)?, r.get(1)?))))
                    .map_err(err)?;
                let pragma = |name: &str| -> Result<u64> {
                    c.query_row(&format!("PRAGMA {name}"), [], |r| r.get::<_, i64>(0))
                        .map(|v| v as u64)
                        .map_err(err)
                };
                let (pages, page_size, free) =
                    (pragma("page_count")?, pragma("page_size")?, pragma("freelist_count")?);
                let time = |n: Option<i64>| n.map(|n| system_time_from_unix_nanos(n as u64));
                Ok(StorageStats {
                    total_blocks: blocks as u64,
                    total_size_bytes: size as u64,
                    oldest_block: time(oldest),
                    newest_block: time(newest),
                    backend_specific: BackendStats::SQLite {
                        database_size: pages * page_size,
                        page_count: pages,
                        page_size,
                        fragmentation_ratio: if pages == 0 { 0.0 } else { free as f64 / pages as f64 },
                    },
                })
            })
        .await
    }

    /// SQLite's own `integrity_check`, and the block counters against a full
    /// read of the blocks table.
    async fn integrity_check(&self) -> Result<()> {
        self.read(|c| {
            let problems: Vec<String> = c
                .prepare("PRAGMA integrity_check(20)")
                .and_then(|mut s| {
                    s.query_map([], |r| r.get::<_, String>(0))?
                        .collect::<rusqlite::Result<_>>()
                })
                .map_err(|e| sql_err("running integrity_check", e))?;
            if problems != ["ok"] {
                return Err(StorageError::corrupted(format!(
                    "sqlite: integrity_check found damage: {}",
                    problems.join("; ")
                )));
            }
            check_counters(c, true)
        })
        .await
    }

    async fn shutdown(&self) -> Result<()> {
        self.open
            .open
            .store(false, std::sync::atomic::Ordering::Release);
        let wal = self.config.enable_wal;
        // Readers first, so the checkpoint below is not held back by them.
        self.readers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let writer = self.writer.clone();
        let wrote = self.wrote.load(std::sync::atomic::Ordering::Relaxed);
        blocking(self.config.execution, move || {
            let Some(conn) = writer.lock().unwrap_or_else(PoisonError::into_inner).take() else {
                return Ok(());
            };
            if !wrote {
                // Only read: close writes nothing (reading works on a full disk).
                return conn.close().map_err(|(_, e)| sql_err("closing", e));
            }
            if wal {
                // Fold the WAL into the database so the file stands alone.
                conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                    .map_err(|e| sql_err("checkpointing on close", e))?;
            }
            conn.execute_batch(OPTIMIZE)
                .map_err(|e| sql_err("optimizing on close", e))?;
            conn.close().map_err(|(_, e)| sql_err("closing", e))
        })
        .await
    }
}
