//! Stores a signed chain in object storage, opens it again as a second instance
//! would, and queries it. Run against the local SeaweedFS cluster:
//!
//! ```sh
//! eval "$(cargo xtask cluster up)"
//! cargo run -p storage-object --example object_chain
//! ```
//!
//! or with an `s3://bucket/prefix` URL and `AWS_*` variables as the argument, or
//! without a cluster on object_store's in-memory store.

use std::time::{Duration, Instant, SystemTime};

use storage_core::{Block, ListOptions, SigningKey, StorageBackend, StorageBackendExt};
use storage_object::{ObjectStoreBackend, ObjectStoreConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let prefix = format!("examples/chain-{}", std::process::id());
    let config = match std::env::args().nth(1) {
        Some(url) => ObjectStoreConfig::new(url),
        None => ObjectStoreConfig::from_cluster_env(&prefix).unwrap_or_default(),
    };
    println!("store: {}", config.url);
    let key = SigningKey::from_bytes(&[5; 32]);
    let t0 = SystemTime::now();
    let mut chain: Vec<Block> = Vec::new();
    for i in 0..5_000u64 {
        let payload = format!("{{\"reading\":{i}}}").into_bytes();
        let prev = chain.last().map(Block::hash);
        let ts = t0 + Duration::from_millis(i);
        chain.push(Block::sign_raw(
            i,
            ts,
            prev,
            "example.reading/v1",
            payload,
            &key,
        )?);
    }

    let store = ObjectStoreBackend::open(config.clone()).await?;
    let started = Instant::now();
    for batch in chain.chunks(1_000) {
        store.store_blocks(batch).await?;
    }
    store.set_chain_head(&chain[4_999].hash()).await?;
    println!(
        "stored {} blocks in batches of 1,000 in {:.0?}",
        chain.len(),
        started.elapsed()
    );

    // A second instance (another process or machine would do the same).
    let other = if config.url.starts_with("memory:") {
        store.clone()
    } else {
        ObjectStoreBackend::open(config).await?
    };
    println!("head: {:?}", other.get_chain_head().await?);
    let started = Instant::now();
    let last = other
        .list_blocks(&ListOptions::new().limit(3).descending().min_index(100))
        .await?;
    println!(
        "last three: {:?} ({:.1?})",
        last.iter().map(|m| m.index).collect::<Vec<_>>(),
        started.elapsed()
    );
    let started = Instant::now();
    let verified = other.verify_stored_chain(1_000).await?;
    println!(
        "verified {verified} blocks from storage in {:.0?}",
        started.elapsed()
    );
    let stats = other.get_stats().await?;
    println!(
        "{} blocks, {} bytes, {:?}",
        stats.total_blocks, stats.total_size_bytes, stats.backend_specific
    );
    other.close().await?;
    store.close().await?;
    Ok(())
}
