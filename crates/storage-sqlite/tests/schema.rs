//! Schema upgrades and the metadata check: a database written by the second
//! schema (committed in `tests/fixtures`, as that code left it) and one of the
//! first schema open upgraded, every block, listing, head and daily statistic as
//! before; a damaged metadata column is reported as corrupted, not listed.

use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use storage_core::{
    Block, BlockMetadata, ErrorKind, ListOptions, OpenMode, SigningKey, StorageBackend,
};
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

/// The fixture's chain: 30 blocks, two signers, three payload types, ten
/// thousand seconds apart (five UTC days).
fn fixture_blocks() -> Vec<Block> {
    let keys = [
        SigningKey::from_bytes(&[1; 32]),
        SigningKey::from_bytes(&[2; 32]),
    ];
    let mut out: Vec<Block> = Vec::new();
    for i in 0..30u64 {
        let previous = out.last().map(Block::hash);
        let block = Block::sign_raw(
            i,
            UNIX_EPOCH + Duration::from_secs(1_700_000_000 + i * 10_000),
            previous,
            ["t/a", "t/b", "t/c"][i as usize % 3],
            vec![i as u8; 10 + i as usize],
            &keys[i as usize % 2],
        )
        .unwrap();
        out.push(block);
    }
    out
}

/// A copy of the committed schema-2 database.
fn schema2_copy(dir: &Path) -> PathBuf {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/schema2.db");
    let to = dir.join("chain.db");
    std::fs::copy(from, &to).unwrap();
    to
}

fn user_version(path: &Path) -> i64 {
    rusqlite::Connection::open(path)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap()
}

/// What the fixture holds: blocks 0..30 but 20, the head at 28, the daily
/// statistics its writer kept, every block byte-identical and listed exactly.
async fn holds_the_fixture(s: &SQLiteBackend) {
    let blocks = fixture_blocks();
    let kept: Vec<&Block> = blocks.iter().filter(|b| b.index() != 20).collect();
    for b in &kept {
        let got = s.retrieve_block(&b.hash()).await.unwrap().expect("stored");
        assert_eq!(&got, *b);
    }
    assert_eq!(s.retrieve_block(&blocks[20].hash()).await.unwrap(), None);
    assert_eq!(s.get_chain_head().await.unwrap(), Some(blocks[28].hash()));
    assert_eq!(s.count_blocks().await.unwrap(), 29);
    let range = s.get_blocks_by_range(0, 29).await.unwrap();
    assert_eq!(range.iter().collect::<Vec<_>>(), kept);
    let listed = s.list_blocks(&ListOptions::default()).await.unwrap();
    let want: Vec<BlockMetadata> = kept.iter().map(|b| BlockMetadata::of(b)).collect();
    assert_eq!(listed, want);
    // Each filter and order, against the same filter applied here.
    let key = *blocks[1].public_key();
    let opts = ListOptions::new().public_key(key).payload_type("t/b");
    let listed = s.list_blocks(&opts).await.unwrap();
    let want: Vec<BlockMetadata> = want.iter().filter(|m| opts.matches(m)).cloned().collect();
    assert!(!want.is_empty());
    assert_eq!(listed, want);
    let by_time = ListOptions::new()
        .order(storage_core::SortOrder::ByTimestamp)
        .start_time(UNIX_EPOCH + Duration::from_secs(1_700_100_000));
    let listed = s.list_blocks(&by_time).await.unwrap();
    assert_eq!(
        listed.len(),
        kept.iter().filter(|b| b.index() >= 10).count()
    );
    let day = s
        .get_daily_stats("2023-11-15")
        .await
        .unwrap()
        .expect("a day");
    assert_eq!(
        (day.block_count, day.total_size, day.unique_keys),
        (9, 1665, 2)
    );
}

#[tokio::test]
async fn a_schema_2_database_opens_upgraded() {
    let dir = tempfile::tempdir().unwrap();
    let path = schema2_copy(dir.path());
    assert_eq!(user_version(&path), 2);

    // Read-only, it is refused as it is: nothing may be written to upgrade it.
    let mut ro = SQLiteConfig::at(&path);
    ro.mode = OpenMode::ReadOnly;
    let err = SQLiteBackend::new(ro.clone()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Configuration, "{err}");
    assert!(
        err.to_string().contains("open it for writing once"),
        "{err}"
    );
    assert_eq!(user_version(&path), 2);

    let s = SQLiteBackend::new(SQLiteConfig::at(&path)).await.unwrap();
    holds_the_fixture(&s).await;
    // Writes after the upgrade keep the chain, the counters and the days.
    let blocks = fixture_blocks();
    s.store_block(&blocks[20]).await.unwrap();
    let key = SigningKey::from_bytes(&[1; 32]);
    let next = Block::sign_raw(
        30,
        UNIX_EPOCH + Duration::from_secs(1_700_300_000),
        Some(blocks[29].hash()),
        "t/a",
        vec![30; 40],
        &key,
    )
    .unwrap();
    s.store_block(&next).await.unwrap();
    assert_eq!(s.count_blocks().await.unwrap(), 31);
    let day = s
        .get_daily_stats("2023-11-18")
        .await
        .unwrap()
        .expect("a day");
    assert_eq!(day.block_count, 4);
    s.close().await.unwrap();
    assert_eq!(user_version(&path), 3);
    // The old table is gone and the new one has exactly the current indexes.
    let c = rusqlite::Connection::open(&path).unwrap();
    let objects: Vec<(String, String)> = c
        .prepare(
            "SELECT name, tbl_name FROM sqlite_schema WHERE tbl_name LIKE 'blocks%' ORDER BY name",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let want: Vec<(String, String)> = [
        "blocks",
        "idx_blocks_payload_type",
        "idx_blocks_public_key",
        "idx_blocks_timestamp",
        "sqlite_autoindex_blocks_1",
    ]
    .map(|n| (n.to_owned(), "blocks".to_owned()))
    .into();
    assert_eq!(objects, want);
    drop(c);

    let s = SQLiteBackend::new(ro).await.unwrap();
    assert_eq!(s.count_blocks().await.unwrap(), 31);
    assert_eq!(s.retrieve_block(&next.hash()).await.unwrap(), Some(next));
    s.check_integrity().await.unwrap();
    s.close().await.unwrap();
}

/// Rows the second schema kept damaged stay detectable after the upgrade:
/// a field that no longer makes its block reads as corrupted, a damaged
/// metadata column fails its check; the other blocks read as before.
#[tokio::test]
async fn damage_from_before_the_upgrade_stays_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = schema2_copy(dir.path());
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute(
        "UPDATE blocks SET payload = X'00' WHERE block_index = 5",
        [],
    )
    .unwrap();
    c.execute(
        "UPDATE blocks SET payload_type = 't/z' WHERE block_index = 7",
        [],
    )
    .unwrap();
    drop(c);
    let blocks = fixture_blocks();

    let s = SQLiteBackend::new(SQLiteConfig::at(&path)).await.unwrap();
    let err = s.retrieve_block(&blocks[5].hash()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupted, "{err}");
    let err = s.get_blocks_by_range(0, 10).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupted, "{err}");
    let err = s
        .list_blocks(&ListOptions::new().min_index(6).max_index(8))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupted, "{err}");
    for i in [4, 6, 8, 9] {
        let got = s.retrieve_block(&blocks[i].hash()).await.unwrap();
        assert_eq!(got.as_ref(), Some(&blocks[i]));
    }
    s.close().await.unwrap();
}

#[tokio::test]
async fn version_1_database_is_upgraded() {
    let dir = tempfile::tempdir().unwrap();
    let path = schema2_copy(dir.path());
    // Make it what version 1 wrote.
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch("ALTER TABLE blocks DROP COLUMN meta_check; PRAGMA user_version = 1")
        .unwrap();
    drop(c);

    let s = SQLiteBackend::new(SQLiteConfig::at(&path)).await.unwrap();
    holds_the_fixture(&s).await;
    s.close().await.unwrap();
    assert_eq!(user_version(&path), 3);
}

/// A database from a newer build is refused, not misread.
#[tokio::test]
async fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("newer.db");
    stored(&path, &chain(3)).await;
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch("PRAGMA user_version = 4").unwrap();
    drop(c);
    for mode in [OpenMode::OpenExisting, OpenMode::ReadOnly] {
        let mut config = SQLiteConfig::at(&path);
        config.mode = mode;
        let err = SQLiteBackend::new(config).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Configuration, "{err}");
        assert!(err.to_string().contains("version 4"), "{err}");
    }
}

/// A metadata column and the block's encoding disagree: listing reports the
/// damaged row, reading returns the block its encoding holds (which its hash
/// confirms); damaged encoding reads as corrupted.
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
    c.execute(
        "UPDATE blocks SET data = substr(data, 1, 20) || X'FF' || substr(data, 22) \
         WHERE block_index = 3",
        [],
    )
    .unwrap();
    drop(c);

    let s = SQLiteBackend::new(SQLiteConfig::at(&path)).await.unwrap();
    let err = s.list_blocks(&ListOptions::default()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupted, "{err}");
    let got = s.retrieve_block(&blocks[2].hash()).await.unwrap();
    assert_eq!(got.as_ref(), Some(&blocks[2]));
    let err = s.retrieve_block(&blocks[3].hash()).await.unwrap_err();
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

/// The daily statistics match the stored blocks, counted here, through batches
/// that span days and signers, repeats, deletions and re-stores.
#[tokio::test]
async fn daily_statistics_follow_the_stored_blocks() {
    let signer_of = |i: u64| (i * i % 7 % 3) as usize;
    let keys: Vec<SigningKey> = (1..=3u8)
        .map(|k| SigningKey::from_bytes(&[k; 32]))
        .collect();
    let mut blocks: Vec<Block> = Vec::new();
    for i in 0..60u64 {
        let previous = blocks.last().map(Block::hash);
        // About seven hours apart, so days hold between two and four blocks.
        let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000 + i * 25_000);
        let key = &keys[signer_of(i)];
        let payload = vec![i as u8; 5 + (i as usize * 7) % 31];
        blocks.push(Block::sign_raw(i, at, previous, "t/day", payload, key).unwrap());
    }
    let dir = tempfile::tempdir().unwrap();
    let s = SQLiteBackend::new(SQLiteConfig::at(dir.path().join("days.db")))
        .await
        .unwrap();
    let mut stored: Vec<&Block> = Vec::new();
    // Batches of uneven sizes, each repeating part of the one before.
    let mut at: usize = 0;
    for len in [1, 7, 13, 4, 35] {
        let from = at.saturating_sub(2);
        s.store_blocks(&blocks[from..at + len]).await.unwrap();
        stored.extend(&blocks[at..at + len]);
        at += len;
        check_days(&s, &blocks, &stored).await;
    }
    // Deleting every block of one signer on some days drops them from those
    // days' signers; storing them again brings them back.
    let gone: Vec<&Block> = stored
        .iter()
        .copied()
        .filter(|b| signer_of(b.index()) == 2 || b.index() % 11 == 0)
        .collect();
    for b in &gone {
        assert!(s.delete_block(&b.hash()).await.unwrap());
    }
    let left: Vec<&Block> = stored
        .iter()
        .copied()
        .filter(|b| !gone.contains(b))
        .collect();
    check_days(&s, &blocks, &left).await;
    let again: Vec<Block> = gone.iter().map(|b| (*b).clone()).collect();
    s.store_blocks(&again).await.unwrap();
    check_days(&s, &blocks, &stored).await;
    s.close().await.unwrap();
}

/// Each day's statistics against `stored`, counted here; every day of `all`
/// is checked, so a day whose blocks were all deleted must read as empty.
async fn check_days(s: &SQLiteBackend, all: &[Block], stored: &[&Block]) {
    let sql = rusqlite::Connection::open_in_memory().unwrap();
    let day_of = |b: &Block| {
        let secs = (b.timestamp_nanos() / 1_000_000_000) as i64;
        sql.query_row("SELECT date(?1, 'unixepoch')", [secs], |r| {
            r.get::<_, String>(0)
        })
        .unwrap()
    };
    let mut want: std::collections::BTreeMap<String, (u64, u64, Vec<[u8; 32]>)> = all
        .iter()
        .map(|b| (day_of(b), Default::default()))
        .collect();
    for b in stored {
        let e = want.entry(day_of(b)).or_default();
        e.0 += 1;
        e.1 += b.size_bytes();
        if !e.2.contains(b.public_key().as_bytes()) {
            e.2.push(*b.public_key().as_bytes());
        }
    }
    for (day, (count, size, signers)) in want {
        let got = s.get_daily_stats(&day).await.unwrap();
        let got = got.map(|d| (d.block_count, d.total_size, d.unique_keys));
        let want = (count, size, signers.len() as u64);
        if want.0 == 0 {
            assert!(matches!(got, None | Some((0, 0, 0))), "{day}: {got:?}");
        } else {
            assert_eq!(got, Some(want), "{day}");
        }
    }
    assert_eq!(s.count_blocks().await.unwrap(), stored.len() as u64);
}

/// The writer gives SQLite's query planner statistics as the table grows, so a
/// type filter that matches most blocks scans the rows in order instead of
/// walking the type index and looking each row up.
#[tokio::test]
async fn the_planner_gets_statistics_as_the_table_grows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("planned.db");
    let s = SQLiteBackend::new(SQLiteConfig::at(&path)).await.unwrap();
    let blocks = storage_conformance::data::chain(12_000);
    let analysed = |path: &Path| -> i64 {
        rusqlite::Connection::open(path)
            .unwrap()
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = 'sqlite_stat1'",
                [],
                |r| r.get(0),
            )
            .unwrap()
    };
    let plan = |path: &Path| -> String {
        rusqlite::Connection::open(path)
            .unwrap()
            .query_row(
                "EXPLAIN QUERY PLAN SELECT hash FROM blocks WHERE block_index BETWEEN 5 AND 100000 \
                 AND payload_type = ?1 ORDER BY block_index LIMIT 100",
                [storage_conformance::data::READING],
                |r| r.get(3),
            )
            .unwrap()
    };
    for chunk in blocks[..9_000].chunks(1_000) {
        s.store_blocks(chunk).await.unwrap();
    }
    assert_eq!(analysed(&path), 0);
    assert!(
        plan(&path).contains("idx_blocks_payload_type"),
        "{}",
        plan(&path)
    );
    for chunk in blocks[9_000..].chunks(1_000) {
        s.store_blocks(chunk).await.unwrap();
    }
    assert_eq!(analysed(&path), 1);
    assert!(
        plan(&path).contains("INTEGER PRIMARY KEY"),
        "{}",
        plan(&path)
    );
    let listed = s
        .list_blocks(
            &ListOptions::new()
                .payload_type(storage_conformance::data::READING)
                .min_index(5)
                .limit(100),
        )
        .await
        .unwrap();
    let want: Vec<BlockMetadata> = blocks[5..]
        .iter()
        .filter(|b| b.payload_type() == storage_conformance::data::READING)
        .take(100)
        .map(BlockMetadata::of)
        .collect();
    assert_eq!(listed, want);
    s.close().await.unwrap();
}
