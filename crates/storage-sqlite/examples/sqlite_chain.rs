//! Stores a signed chain in a SQLite file, reopens it, and queries it: by range,
//! by signer, daily statistics and database figures. Run:
//! `cargo run -p storage-sqlite --example sqlite_chain [-- PATH.db]`
//! (default: a file in a fresh temporary directory).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use storage_core::{
    BackendStats, Block, ListOptions, SigningKey, StorageBackend, StorageBackendExt,
};
use storage_sqlite::{SQLiteBackend, SQLiteConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = std::env::temp_dir().join(format!("olocus-sqlite-{}", std::process::id()));
    let path = std::env::args()
        .nth(1)
        .map(Into::into)
        .unwrap_or_else(|| tmp.join("chain.db"));
    let key = SigningKey::from_bytes(&[5; 32]);
    let t0 = SystemTime::now();

    let store = SQLiteBackend::new(SQLiteConfig::at(&path)).await?;
    let mut chain: Vec<Block> = Vec::new();
    for i in 0..500u64 {
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
    store.store_blocks(&chain).await?;
    store.set_chain_head(&chain[499].hash()).await?;
    store.close().await?;
    println!("stored 500 blocks in {}", path.display());

    let store = SQLiteBackend::new(SQLiteConfig::at(&path)).await?;
    println!(
        "reopened: {} blocks, head {:?}",
        store.count_blocks().await?,
        store.get_chain_head().await?
    );
    println!(
        "verified {} blocks from storage",
        store.verify_stored_chain(200).await?
    );
    let range = store.get_blocks_by_range(100, 104).await?;
    println!(
        "range 100..=104: {:?}",
        range.iter().map(Block::index).collect::<Vec<_>>()
    );
    let mine = store
        .list_blocks(
            &ListOptions::new()
                .limit(3)
                .public_key(*chain[0].public_key())
                .min_index(250),
        )
        .await?;
    println!(
        "signer's blocks from 250: {:?}",
        mine.iter().map(|m| m.index).collect::<Vec<_>>()
    );
    let day_secs = t0.duration_since(UNIX_EPOCH)?.as_secs() / 86_400 * 86_400;
    let date = civil_date(day_secs / 86_400);
    println!(
        "daily stats {date}: {:?}",
        store.get_daily_stats(&date).await?
    );
    if let BackendStats::SQLite {
        database_size,
        page_count,
        fragmentation_ratio,
        ..
    } = store.get_stats().await?.backend_specific
    {
        println!(
            "database: {database_size} bytes in {page_count} pages, fragmentation {fragmentation_ratio:.3}"
        );
    }
    store.close().await?;
    if path.starts_with(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(())
}

/// `YYYY-MM-DD` for a count of days since 1970-01-01 (proleptic Gregorian).
fn civil_date(days: u64) -> String {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}
