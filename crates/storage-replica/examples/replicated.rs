//! The seed's setup in miniature: a SQLite primary with a SQLite and a memory
//! replica at Quorum. One replica goes down, writes keep succeeding, it comes back
//! and `repair` brings it up to date. Run:
//! `cargo run -p storage-replica --example replicated`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use storage_conformance::fault::{FaultMode, FaultyBackend};
use storage_core::{Block, SigningKey, StorageBackend};
use storage_memory::MemoryBackend;
use storage_replica::{ConsistencyLevel, StorageManager, StorageManagerConfig};
use storage_sqlite::{SQLiteBackend, SQLiteConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("olocus-replica-{}", std::process::id()));
    let primary = SQLiteBackend::new(SQLiteConfig::at(dir.join("primary.db"))).await?;
    let replica1 = SQLiteBackend::new(SQLiteConfig::at(dir.join("replica1.db"))).await?;
    // The memory replica sits behind a switch we can flip to simulate an outage.
    let replica2 = Arc::new(FaultyBackend::new(Arc::new(MemoryBackend::new()), 1));
    let manager = StorageManager::from_arcs(
        Arc::new(primary),
        vec![Arc::new(replica1), replica2.clone()],
        StorageManagerConfig::default()
            .replication_factor(3)
            .consistency_level(ConsistencyLevel::Quorum)
            .sync_writes(true)
            .replica_timeout(Duration::from_millis(500)),
    )?;

    let key = SigningKey::from_bytes(&[3; 32]);
    let t0 = SystemTime::now();
    let mut chain: Vec<Block> = Vec::new();
    for i in 0..100u64 {
        let prev = chain.last().map(Block::hash);
        chain.push(Block::sign_raw(
            i,
            t0 + Duration::from_millis(i),
            prev,
            "example.event/v1",
            b"{}".to_vec(),
            &key,
        )?);
    }
    manager.store_blocks(&chain[..50]).await?;
    println!("stored 50 blocks on all three copies");

    replica2.set_mode(FaultMode::FailAll);
    manager.store_blocks(&chain[50..]).await?;
    manager.set_chain_head(&chain[99].hash()).await?;
    let health = manager.health_check().await;
    println!(
        "memory replica down: 50 more blocks acknowledged at Quorum; healthy replicas {}/{}, {} writes queued for repair",
        health.healthy_replicas, health.total_replicas, health.pending_repairs
    );

    replica2.set_mode(FaultMode::Healthy);
    let report = manager.repair().await?;
    println!("replica back; repair: {report:?}");
    println!(
        "memory replica now holds {} blocks, head {:?}",
        replica2.inner().count_blocks().await?,
        replica2
            .inner()
            .get_chain_head()
            .await?
            .map(|h| h == chain[99].hash())
    );
    manager.close().await?;
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}
