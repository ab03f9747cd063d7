//! Schema upgrades and the metadata check: a version-1 database (no `meta_check`)
//! opens, gains the column filled in, and lists exactly; a damaged metadata
//! column is reported as corrupted, not listed.

use storage_core::{Block, BlockMetadata, ErrorKind, ListOptions, SigningKey, StorageBackend};
use storage_sqlite::{SQLiteBackend, SQLiteConfig};

fn chain(n: u64) -> Vec<Block> {
    let key = SigningKey::from_bytes(&[9; 32]);
    let mut out: Vec<Block> = Vec::new();
    for i in 0..n {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000 + i);
        let prev = out.last().map(Block::hash);
        out.push(Block::sign_raw(i, t, prev, "schema.test/v1", vec![i as u8; 40], &key).unwrap());
    }
    out
}

/// A closed database at `path` holding `blocks`.
async fn stored(path: &std::path::Path, blocks: &[Block]) {
    let s = SQLiteBackend::new(SQLiteConfig::at(path)).await.unwrap();
    s.store_blocks(blocks).await.unwrap();
    s.close().await.unwrap();
}

#[tokio::test]
async fn version_1_database_is_upgraded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.db");
    let blocks = chain(5);
    stored(&path, &blocks).await;
    // Make it what version 1 wrote.
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch("ALTER TABLE blocks DROP COLUMN meta_check; PRAGMA user_version = 1")
        .unwrap();
    drop(c);

    let s = SQLiteBackend::new(SQLiteConfig::at(&path)).await.unwrap();
    let listed = s.list_blocks(&ListOptions::default()).await.unwrap();
    let want: Vec<BlockMetadata> = blocks.iter().map(BlockMetadata::of).collect();
    assert_eq!(listed, want);
    s.close().await.unwrap();
    let c = rusqlite::Connection::open(&path).unwrap();
    let v: i64 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 2);
}

#[tokio::test]
async fn damaged_metadata_column_is_corrupted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("damaged.db");
    let blocks = chain(5);
    stored(&path, &blocks).await;
    // Another signer's key on block 2, as a flipped bit in the row would leave it.
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute(
        "UPDATE blocks SET public_key = ?1 WHERE block_index = 2",
        [vec![7u8; 32]],
    )
    .unwrap();
    drop(c);

    let s = SQLiteBackend::new(SQLiteConfig::at(&path)).await.unwrap();
    let err = s.list_blocks(&ListOptions::default()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupted, "{err}");
    let err = s.retrieve_block(&blocks[2].hash()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupted, "{err}");
}

/// An engine error keeps SQLite's error as its source (walkable, downcastable,
/// printed once) and says it is temporary when the database is busy.
#[tokio::test]
async fn engine_errors_keep_their_cause() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("busy.db");
    let mut config = SQLiteConfig::at(&path);
    config.busy_timeout = std::time::Duration::from_millis(20);
    let s = SQLiteBackend::new(config).await.unwrap();
    // Another connection holds the write lock.
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let err = s.store_blocks(&chain(1)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Backend, "{err}");
    assert!(err.is_transient(), "{err}");
    let source = std::error::Error::source(&err).expect("a source");
    let engine = source
        .downcast_ref::<rusqlite::Error>()
        .unwrap_or_else(|| panic!("not a rusqlite::Error: {source}"));
    assert_eq!(
        engine.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy)
    );
    assert!(
        !err.to_string().contains(&engine.to_string()),
        "cause printed twice: {err}"
    );
    other.execute_batch("ROLLBACK").unwrap();
    s.close().await.unwrap();
}
