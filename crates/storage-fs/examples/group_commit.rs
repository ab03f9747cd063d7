//! How many synced single-block writes per second a filesystem store takes from
//! many writers at once (they share syncs: group commit), and from one.
//!
//! `cargo run --release -p storage-fs --example group_commit [WRITERS] [BLOCKS]`
//! (default: 4,000 blocks from 1 writer, then from 16; given WRITERS, from that
//! many only). Prints one line per run.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use storage_core::{Block, CompressionType, SigningKey, StorageBackend, WALConfig};
use storage_fs::{FilesystemBackend, FsConfig};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> storage_core::Result<()> {
    let mut args = std::env::args().skip(1);
    let runs: Vec<usize> = match args.next().and_then(|a| a.parse().ok()) {
        Some(n) => vec![n],
        None => vec![1, 16],
    };
    let total: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(4_000);
    let key = SigningKey::from_bytes(&[5; 32]);
    let mut blocks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let prev = blocks.last().map(Block::hash);
        let payload = vec![(i % 251) as u8; 600];
        blocks.push(Block::sign_raw(
            i,
            SystemTime::now(),
            prev,
            "example.reading/v1",
            payload,
            &key,
        )?);
    }
    let blocks = Arc::new(blocks);
    for writers in runs {
        let temp =
            tempfile::tempdir().map_err(|e| storage_core::StorageError::io("temp dir", e))?;
        let config = FsConfig::from_wal(temp.path(), CompressionType::None, &WALConfig::synced());
        let store = Arc::new(FilesystemBackend::open_async(config).await?);
        let started = Instant::now();
        // Writer k stores blocks k, k + writers, k + 2 × writers, ...
        let tasks: Vec<_> = (0..writers)
            .map(|k| {
                let (store, blocks) = (store.clone(), blocks.clone());
                tokio::spawn(async move {
                    for b in blocks.iter().skip(k).step_by(writers) {
                        store.store_block(b).await?;
                    }
                    Ok::<_, storage_core::StorageError>(())
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("writer task")?;
        }
        let took = started.elapsed();
        store.close().await?;
        println!(
            "{writers:>3} writers: {total} synced blocks in {took:.2?} = {:.0} blocks/s",
            total as f64 / took.as_secs_f64()
        );
    }
    Ok(())
}
