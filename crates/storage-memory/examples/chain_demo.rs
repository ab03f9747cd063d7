//! Makes a signed chain, stores it in the memory backend, queries it and prints what
//! it found. Run: `cargo run -p storage-memory --example chain_demo [-- BLOCKS]`.

use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use storage_core::{
    Block, BlockPayload, ListOptions, SigningKey, StorageBackend, StorageBackendExt, verify_chain,
};
use storage_memory::MemoryBackend;

/// A sensor reading: the payload each block carries.
#[derive(Debug, Serialize, Deserialize)]
struct Reading {
    sensor: String,
    celsius: f64,
}

impl BlockPayload for Reading {
    const PAYLOAD_TYPE: &'static str = "olocus.demo.reading/v1";
}

/// An operator note, a second payload type to filter on.
#[derive(Debug, Serialize, Deserialize)]
struct Note {
    text: String,
}

impl BlockPayload for Note {
    const PAYLOAD_TYPE: &'static str = "olocus.demo.note/v1";
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1_000);
    if n == 0 {
        return Err("BLOCKS must be at least 1".into());
    }

    // A fresh key from the OS.
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| format!("no OS randomness: {e}"))?;
    let key = SigningKey::from_bytes(&seed);
    println!("signer      {}", hex_key(&key));

    // Build the chain: a reading per block, a note every 10th.
    let t0 = SystemTime::now();
    let started = Instant::now();
    let mut chain: Vec<Block> = Vec::with_capacity(n as usize);
    for i in 0..n {
        let ts = t0 + Duration::from_millis(i * 250) + Duration::from_nanos(i % 997);
        let block = if i % 10 == 9 {
            let note = Note {
                text: format!("calibration check {}", i / 10),
            };
            next_block(chain.last(), &note, &key, ts)?
        } else {
            let reading = Reading {
                sensor: format!("s-{}", i % 4),
                celsius: 20.0 + (i % 50) as f64 / 10.0,
            };
            next_block(chain.last(), &reading, &key, ts)?
        };
        chain.push(block);
    }
    verify_chain(&chain)?;
    println!(
        "signed      {n} blocks in {:.1?} (chain verifies)",
        started.elapsed()
    );

    // Store it in batches and set the head.
    let store = MemoryBackend::with_capacity(n as usize);
    let started = Instant::now();
    for batch in chain.chunks(500) {
        store.store_blocks(batch).await?;
    }
    let head = chain.last().expect("n >= 1").hash();
    store.set_chain_head(&head).await?;
    println!(
        "stored      {} blocks in {:.1?}",
        store.count_blocks().await?,
        started.elapsed()
    );

    // Read it back and verify from storage.
    let started = Instant::now();
    let checked = store.verify_stored_chain(1_000).await?;
    println!(
        "verified    {checked} stored blocks in {:.1?}",
        started.elapsed()
    );

    // Queries.
    let (genesis, reading) = store
        .retrieve_payload::<Reading>(&chain[0].hash())
        .await?
        .ok_or("genesis missing")?;
    println!(
        "by hash     block {} = {:?} (hash {})",
        genesis.index(),
        reading,
        genesis.hash()
    );
    let mid = n / 2;
    let range = store.get_blocks_by_range(mid, mid + 4).await?;
    println!(
        "by range    [{mid}, {}] -> {} blocks, indices {:?}",
        mid + 4,
        range.len(),
        range.iter().map(Block::index).collect::<Vec<_>>()
    );
    let window = ListOptions::new()
        .start_time(t0 + Duration::from_secs(10))
        .end_time(t0 + Duration::from_secs(20))
        .by_timestamp();
    let in_window = store.list_blocks(&window).await?;
    println!(
        "by time     10 s..20 s after start -> {} blocks",
        in_window.len()
    );
    let notes = ListOptions::new()
        .descending()
        .limit(3)
        .payload_type(Note::PAYLOAD_TYPE)
        .public_key(*chain[0].public_key());
    for meta in store.list_blocks(&notes).await? {
        let (_, note) = store
            .retrieve_payload::<Note>(&meta.hash)
            .await?
            .ok_or("note missing")?;
        println!(
            "latest note block {} ({} bytes): {}",
            meta.index, meta.size_bytes, note.text
        );
    }
    let stats = store.get_stats().await?;
    println!(
        "stats       {} blocks, {} bytes, head {}",
        stats.total_blocks,
        stats.total_size_bytes,
        store
            .get_chain_head()
            .await?
            .map(|h| h.to_string())
            .unwrap_or_default()
    );
    store.close().await?;
    Ok(())
}

fn next_block<P: BlockPayload>(
    prev: Option<&Block>,
    payload: &P,
    key: &SigningKey,
    ts: SystemTime,
) -> storage_core::Result<Block> {
    match prev {
        None => Block::genesis(payload, key, ts),
        Some(prev) => Block::next(prev, payload, key, ts),
    }
}

fn hex_key(key: &SigningKey) -> String {
    storage_core::PublicKey::from(&key.verifying_key()).to_string()
}
