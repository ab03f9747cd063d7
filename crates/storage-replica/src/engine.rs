//! The engine work beneath the shared layer.

use super::*;

impl Engine for StorageManager {
    fn name(&self) -> &str {
        NAME
    }

    fn gate(&self) -> &Gate {
        &self.shared.lifecycle
    }

    fn supported(&self) -> Capabilities {
        // What every copy can do: a write reaches all of them.
        self.shared
            .copies
            .iter()
            .map(|c| c.backend.capabilities())
            .reduce(Capabilities::intersection)
            .unwrap_or_default()
    }

    async fn read_block(&self, hash: &BlockHash) -> Result<Option<Block>> {
        let h = *hash;
        self.read("retrieve_block", move |s| {
            Box::pin(async move { s.retrieve_block(&h).await })
        })
        .await
    }

    async fn remove_block(&self, hash: &BlockHash) -> Result<bool> {
        let h = *hash;
        async {
            self.shared.bury(&h);
            self.fan_out(
                "delete_block",
                move |s| Box::pin(async move { s.delete_block(&h).await }),
                RepairOp::Delete(h),
            )
            .await
        }
        .await
    }

    async fn has_block(&self, hash: &BlockHash) -> Result<bool> {
        let h = *hash;
        self.read("block_exists", move |s| {
            Box::pin(async move { s.block_exists(&h).await })
        })
        .await
    }

    async fn write_blocks(&self, blocks: &[Block]) -> Result<()> {
        let owned: Arc<Vec<Block>> = Arc::new(blocks.to_vec());
        self.store_fan_out(
            "store_blocks",
            blocks,
            {
                let owned = owned.clone();
                move |s| {
                    let owned = owned.clone();
                    Box::pin(async move { s.store_blocks(&owned).await })
                }
            },
            RepairOp::Store(blocks.to_vec()),
        )
        .await
        .map(drop)
    }

    async fn read_blocks(&self, hashes: &[BlockHash]) -> Result<Vec<Option<Block>>> {
        let hs: Arc<Vec<BlockHash>> = Arc::new(hashes.to_vec());
        self.read("retrieve_blocks", move |s| {
            let hs = hs.clone();
            Box::pin(async move { s.retrieve_blocks(&hs).await })
        })
        .await
    }

    async fn list(&self, options: &ListOptions) -> Result<Vec<BlockMetadata>> {
        let o = options.clone();
        self.read("list_blocks", move |s| {
            let o = o.clone();
            Box::pin(async move { s.list_blocks(&o).await })
        })
        .await
    }

    async fn count(&self) -> Result<u64> {
        self.read("count_blocks", |s| {
            Box::pin(async move { s.count_blocks().await })
        })
        .await
    }

    async fn head(&self) -> Result<Option<BlockHash>> {
        self.read("get_chain_head", |s| {
            Box::pin(async move { s.get_chain_head().await })
        })
        .await
    }

    async fn write_head(&self, hash: &BlockHash) -> Result<()> {
        let h = *hash;
        self.fan_out(
            "set_chain_head",
            move |s| Box::pin(async move { s.set_chain_head(&h).await }),
            RepairOp::Head(h),
        )
        .await
    }

    async fn read_range(&self, start: u64, end: u64) -> Result<Vec<Block>> {
        self.read("get_blocks_by_range", move |s| {
            Box::pin(async move { s.get_blocks_by_range(start, end).await })
        })
        .await
    }

    async fn run_compaction(&self) -> Result<()> {
        self.on_every_copy("compact", |s| Box::pin(async move { s.compact().await }))
            .await
    }

    async fn run_vacuum(&self) -> Result<()> {
        self.on_every_copy("vacuum", |s| Box::pin(async move { s.vacuum().await }))
            .await
    }

    async fn stats(&self) -> Result<StorageStats> {
        self.read("get_stats", |s| {
            Box::pin(async move { s.get_stats().await })
        })
        .await
    }

    async fn shutdown(&self) -> Result<()> {
        let _writes = self.shared.write_lock.lock().await;
        let mut first_err = None;
        for copy in &self.shared.copies {
            if let Err(e) = copy.backend.close().await {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Every copy is checked; the first failure (after trying all) is returned.
    async fn integrity_check(&self) -> Result<()> {
        self.on_every_copy("check_integrity", |s| {
            Box::pin(async move { s.check_integrity().await })
        })
        .await
    }
}
