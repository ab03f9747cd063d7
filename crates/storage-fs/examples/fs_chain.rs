//! Stores a signed chain in a filesystem store with synced writes, drops it without
//! closing (as a crash would), reopens it, deletes a few blocks, compacts, and shows
//! what the store reports.
//!
//! `cargo run -p storage-fs --example fs_chain [DIR]` (default: a temp directory)

use std::time::{Instant, SystemTime};

use serde_json::json;
use storage_core::{
    BackendStats, Block, CompressionType, SigningKey, StorageBackend, StorageBackendExt, WALConfig,
};
use storage_fs::{FilesystemBackend, FsConfig};

#[tokio::main]
async fn main() -> storage_core::Result<()> {
    let temp = tempfile::tempdir().map_err(|e| storage_core::StorageError::io("temp dir", e))?;
    let dir = std::env::args()
        .nth(1)
        .map(Into::into)
        .unwrap_or_else(|| temp.path().join("chain"));
    // Every write synced before it is acknowledged (sync_interval = 0).
    let config = FsConfig::from_wal(&dir, CompressionType::Zstd, &WALConfig::synced());

    let store = FilesystemBackend::open_async(config.clone()).await?;
    let key = SigningKey::from_bytes(&[3; 32]);
    let mut blocks = Vec::new();
    let mut prev: Option<Block> = None;
    for i in 0..1_000u64 {
        let payload =
            serde_json::to_vec(&json!({ "reading": i, "celsius": 20.0 + i as f64 / 100.0 }))
                .expect("json");
        let ts = SystemTime::now();
        let b = match &prev {
            None => Block::sign_raw(0, ts, None, "example.reading/v1", payload, &key)?,
            Some(p) => Block::sign_raw(i, ts, Some(p.hash()), "example.reading/v1", payload, &key)?,
        };
        prev = Some(b.clone());
        blocks.push(b);
    }
    let started = Instant::now();
    for batch in blocks.chunks(100) {
        store.store_blocks(batch).await?;
    }
    store.set_chain_head(&blocks[999].hash()).await?;
    println!(
        "stored 1,000 blocks in 10 synced batches in {:?}",
        started.elapsed()
    );
    drop(store); // no close: what a crash leaves

    let started = Instant::now();
    let store = FilesystemBackend::open_async(config).await?;
    println!(
        "reopened in {:?} (decoded {} log bytes not yet covered by an index file)",
        started.elapsed(),
        store.recovery().scanned_bytes
    );
    println!("verified {} blocks", store.verify_stored_chain(250).await?);
    for b in blocks.iter().take(100) {
        store.delete_block(&b.hash()).await?;
    }
    let before = store.get_stats().await?;
    store.compact().await?;
    let after = store.get_stats().await?;
    let show = |s: &storage_core::StorageStats| match &s.backend_specific {
        BackendStats::Filesystem {
            directory_size,
            stored_bytes,
            uncompressed_bytes,
            dead_bytes,
            ..
        } => format!(
            "{} blocks, {directory_size} bytes on disk, {stored_bytes} stored \
             ({uncompressed_bytes} before zstd), {dead_bytes} reclaimable",
            s.total_blocks
        ),
        other => format!("{other:?}"),
    };
    println!("before compact: {}", show(&before));
    println!("after compact:  {}", show(&after));
    store.close().await?;
    Ok(())
}
