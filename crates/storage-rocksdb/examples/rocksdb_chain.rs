//! Stores a signed chain in RocksDB, closes and reopens the same path, then queries
//! it and prints the engine's figures. Run:
//! `cargo run -p storage-rocksdb --example rocksdb_chain [-- DIR]`.

use std::time::{Duration, SystemTime};

use storage_core::{
    BackendStats, Block, ListOptions, SigningKey, StorageBackend, StorageBackendExt,
};
use storage_rocksdb::{RocksDBBackend, RocksDBConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = std::env::temp_dir().join(format!("olocus-rocks-{}", std::process::id()));
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| tmp.to_string_lossy().into_owned());
    let config = RocksDBConfig::new(path.clone());

    let store = RocksDBBackend::new(config.clone())?;
    let keys = [
        SigningKey::from_bytes(&[1; 32]),
        SigningKey::from_bytes(&[2; 32]),
    ];
    let t0 = SystemTime::now();
    let mut chain: Vec<Block> = Vec::new();
    for i in 0..1_000u64 {
        let prev = chain.last().map(Block::hash);
        let ty = if i % 5 == 0 {
            "example.alert/v1"
        } else {
            "example.reading/v1"
        };
        let payload = format!("{{\"n\":{i}}}").into_bytes();
        chain.push(Block::sign_raw(
            i,
            t0 + Duration::from_millis(i),
            prev,
            ty,
            payload,
            &keys[(i % 2) as usize],
        )?);
    }
    for batch in chain.chunks(250) {
        store.store_blocks(batch).await?;
    }
    store.set_chain_head(&chain[999].hash()).await?;
    store.close().await?;

    let store = RocksDBBackend::new(config)?;
    println!(
        "reopened {path}: {} blocks, head is block 999: {}",
        store.count_blocks().await?,
        store.get_chain_head().await? == Some(chain[999].hash())
    );
    println!("verified {} blocks", store.verify_stored_chain(500).await?);
    let alerts = store
        .list_blocks(
            &ListOptions::new()
                .descending()
                .limit(3)
                .payload_type("example.alert/v1"),
        )
        .await?;
    println!(
        "latest alerts: {:?}",
        alerts.iter().map(|m| m.index).collect::<Vec<_>>()
    );
    store.compact().await?;
    if let BackendStats::RocksDB {
        live_data_size,
        total_data_size,
        num_entries,
        compaction_stats,
        ..
    } = store.get_stats().await?.backend_specific
    {
        println!(
            "rocksdb: {live_data_size} live bytes, {total_data_size} SST bytes, ~{num_entries} keys, last compaction took {:?}",
            compaction_stats.compaction_time
        );
    }
    store.close().await?;
    if path == tmp.to_string_lossy() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(())
}
