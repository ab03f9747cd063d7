//! The cases, by scenario. Each is `pub async fn(&Env) -> CaseResult`.

pub mod bad_input;
pub mod basic;
pub mod batch;
pub mod bulk;
pub mod concurrency;
pub mod corruption;
pub mod delete;
pub mod list;
pub mod maintenance;
pub mod model;
pub mod range_head;
pub mod reopen;
pub mod stream;

use std::time::SystemTime;

use storage_core::{Block, BlockHash, BlockMetadata, ListOptions, StorageBackend};

use crate::CaseError;

/// Everything a reader can observe, for before/after comparisons.
#[derive(Debug, PartialEq)]
pub(crate) struct Snapshot {
    listed: Vec<BlockMetadata>,
    pub(crate) blocks: Vec<Block>,
    head: Option<BlockHash>,
    count: u64,
    stats: (u64, u64, Option<SystemTime>, Option<SystemTime>),
}

pub(crate) async fn snapshot(s: &dyn StorageBackend) -> Result<Snapshot, CaseError> {
    let stats = s.get_stats().await?;
    Ok(Snapshot {
        listed: s.list_blocks(&ListOptions::default()).await?,
        blocks: s.get_blocks_by_range(0, u64::MAX).await?,
        head: s.get_chain_head().await?,
        count: s.count_blocks().await?,
        stats: (
            stats.total_blocks,
            stats.total_size_bytes,
            stats.oldest_block,
            stats.newest_block,
        ),
    })
}
