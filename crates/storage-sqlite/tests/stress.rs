//! 4 writer tasks and 8 reader tasks for about 10 seconds (`OLOCUS_STRESS_SECS`):
//! no busy/locked error (or any other), and every acknowledged block is present.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use storage_conformance::data;
use storage_core::{BlockHash, ListOptions, StorageBackend};
use storage_sqlite::{SQLiteBackend, SQLiteConfig};
use tokio::task::JoinSet;

const WRITERS: usize = 4;
const READERS: usize = 8;
const BLOCKS: usize = 40_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_writers_eight_readers_no_busy_errors() {
    let secs: u64 = std::env::var("OLOCUS_STRESS_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SQLiteBackend::new(SQLiteConfig::at(dir.path().join("stress.db")))
            .await
            .unwrap(),
    );
    let chain = data::chain(BLOCKS);
    let acked: Arc<Mutex<Vec<BlockHash>>> = Arc::default();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = JoinSet::new();

    for w in 0..WRITERS {
        let (store, chain, acked) = (store.clone(), chain.clone(), acked.clone());
        tasks.spawn(async move {
            let mine: Vec<_> = chain.iter().skip(w).step_by(WRITERS).cloned().collect();
            let mut i = 0;
            let mut ops = 0u64;
            while Instant::now() < deadline {
                // Alternate single stores and batches of 10; once this writer's new
                // blocks run out, keep the write path busy with idempotent re-stores.
                let fresh = i < mine.len();
                let n = if ops.is_multiple_of(2) { 1 } else { 10 };
                let batch = if fresh {
                    &mine[i..(i + n).min(mine.len())]
                } else {
                    let at = (ops as usize * 31) % (mine.len() - n);
                    &mine[at..at + n]
                };
                let result = if batch.len() == 1 {
                    store.store_block(&batch[0]).await.map(|h| vec![h])
                } else {
                    store.store_blocks(batch).await
                };
                let hashes = result.map_err(|e| format!("writer {w}: {:?}: {e}", e.kind()))?;
                if fresh {
                    i += hashes.len();
                    acked.lock().unwrap().extend(hashes);
                }
                ops += 1;
            }
            Ok::<u64, String>(ops)
        });
    }
    for r in 0..READERS {
        let (store, chain) = (store.clone(), chain.clone());
        tasks.spawn(async move {
            let mut ops = 0u64;
            while Instant::now() < deadline {
                let b = &chain[(ops as usize * 7919 + r * 104_729) % BLOCKS];
                let fail =
                    |e: storage_core::StorageError| format!("reader {r}: {:?}: {e}", e.kind());
                if let Some(got) = store.retrieve_block(&b.hash()).await.map_err(fail)?
                    && got != *b
                {
                    return Err(format!("reader {r}: wrong block for {}", b.hash()));
                }
                let page = store
                    .list_blocks(&ListOptions::new().limit(50).offset(ops % 1000))
                    .await
                    .map_err(fail)?;
                if page.windows(2).any(|w| w[0].index >= w[1].index) {
                    return Err(format!("reader {r}: listing out of order"));
                }
                store.count_blocks().await.map_err(fail)?;
                if ops.is_multiple_of(16) {
                    store.get_stats().await.map_err(fail)?;
                }
                ops += 1;
            }
            Ok(ops)
        });
    }
    let mut total_ops = 0;
    while let Some(joined) = tasks.join_next().await {
        total_ops += joined
            .expect("task panicked")
            .unwrap_or_else(|e| panic!("{e}"));
    }

    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 100,
        "writers made too little progress: {}",
        acked.len()
    );
    assert_eq!(store.count_blocks().await.unwrap(), acked.len() as u64);
    for h in &acked {
        assert!(
            store.block_exists(h).await.unwrap(),
            "acknowledged block {h} missing"
        );
    }
    println!(
        "{} blocks acknowledged, {total_ops} operations in {secs} s, 0 errors",
        acked.len()
    );
    store.close().await.unwrap();
}
