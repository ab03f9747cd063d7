//! A store written by the first layout (seven column families, blocks keyed by
//! hash), committed in `tests/fixtures/layout1` as that code left it, opens
//! upgraded: every block, index, listing, head and counter as before.

use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use storage_core::{
    BackendStats, Block, ErrorKind, ListOptions, OpenMode, SigningKey, StorageBackend,
};
use storage_rocksdb::{RocksDBBackend, RocksDBConfig};

/// The fixture's chain: 40 blocks, two signers, three payload types.
fn fixture_blocks() -> Vec<Block> {
    let keys = [
        SigningKey::from_bytes(&[1; 32]),
        SigningKey::from_bytes(&[2; 32]),
    ];
    let mut out: Vec<Block> = Vec::new();
    for i in 0..40u64 {
        let previous = out.last().map(Block::hash);
        let block = Block::sign_raw(
            i,
            UNIX_EPOCH + Duration::from_secs(1_700_000_000 + i * 3_600),
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

fn config(dir: &Path, mode: OpenMode) -> RocksDBConfig {
    RocksDBConfig::new(dir.to_string_lossy()).mode(mode)
}

/// A copy of the committed first-layout store.
fn layout1_copy() -> tempfile::TempDir {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/layout1");
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

fn column_families(dir: &Path) -> Vec<String> {
    let mut cfs = rocksdb::DB::list_cf(&rocksdb::Options::default(), dir).unwrap();
    cfs.sort();
    cfs
}

/// What the fixture holds: every block but the deleted one, with the head,
/// counters and indexes its first-layout writer left.
async fn holds_the_fixture(store: &RocksDBBackend) {
    let blocks = fixture_blocks();
    let kept: Vec<&Block> = blocks.iter().filter(|b| b.index() != 20).collect();
    assert_eq!(store.count_blocks().await.unwrap(), 39);
    assert_eq!(
        store.get_chain_head().await.unwrap(),
        Some(blocks[38].hash())
    );
    for b in &blocks {
        let got = store.retrieve_block(&b.hash()).await.unwrap();
        if b.index() == 20 {
            assert_eq!(got, None, "the deleted block");
        } else {
            assert_eq!(got.as_ref(), Some(b), "block {}", b.index());
        }
        assert_eq!(
            store.block_exists(&b.hash()).await.unwrap(),
            b.index() != 20
        );
    }
    let range = store.get_blocks_by_range(0, 39).await.unwrap();
    assert_eq!(range.iter().collect::<Vec<_>>(), kept);
    let indexes = |o: ListOptions| async move {
        let listed = store.list_blocks(&o).await.unwrap();
        listed.iter().map(|m| m.index).collect::<Vec<u64>>()
    };
    let expect = |f: &dyn Fn(&Block) -> bool| -> Vec<u64> {
        kept.iter().filter(|b| f(b)).map(|b| b.index()).collect()
    };
    assert_eq!(
        indexes(ListOptions::new().payload_type("t/b")).await,
        expect(&|b| b.payload_type() == "t/b")
    );
    let signer = *blocks[1].public_key();
    assert_eq!(
        indexes(ListOptions::new().public_key(signer)).await,
        expect(&|b| *b.public_key() == signer)
    );
    assert_eq!(
        indexes(ListOptions::new().by_timestamp()).await,
        expect(&|_| true)
    );
    let mut descending = expect(&|_| true);
    descending.reverse();
    assert_eq!(indexes(ListOptions::new().descending()).await, descending);
    let stats = store.get_stats().await.unwrap();
    assert_eq!(stats.total_blocks, 39);
    assert_eq!(
        stats.total_size_bytes,
        kept.iter().map(|b| b.size_bytes()).sum::<u64>()
    );
    assert_eq!(stats.oldest_block, Some(blocks[0].timestamp()));
    assert_eq!(stats.newest_block, Some(blocks[39].timestamp()));
    let BackendStats::RocksDB { num_deletions, .. } = stats.backend_specific else {
        panic!("{:?}", stats.backend_specific);
    };
    assert_eq!(num_deletions, 1);
}

#[tokio::test]
async fn a_first_layout_store_opens_upgraded() {
    let dir = layout1_copy();
    assert!(column_families(dir.path()).contains(&"chain".to_owned()));
    // Read-only cannot upgrade: refused, and nothing changes.
    let err = RocksDBBackend::new(config(dir.path(), OpenMode::ReadOnly)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Configuration, "{err}");
    assert!(
        err.to_string().contains("open it for writing once"),
        "{err}"
    );
    assert!(column_families(dir.path()).contains(&"chain".to_owned()));

    let store = RocksDBBackend::new(config(dir.path(), OpenMode::OpenExisting)).unwrap();
    holds_the_fixture(&store).await;
    assert_eq!(
        column_families(dir.path()),
        ["by_index", "default", "index", "metadata", "secondary"]
    );
    // The upgraded store takes the next block, and reopens (read-only too).
    let blocks = fixture_blocks();
    let next = Block::sign_raw(
        40,
        blocks[39].timestamp() + Duration::from_secs(1),
        Some(blocks[39].hash()),
        "t/a",
        vec![7; 5],
        &SigningKey::from_bytes(&[1; 32]),
    )
    .unwrap();
    store.store_block(&next).await.unwrap();
    store.close().await.unwrap();
    let store = RocksDBBackend::new(config(dir.path(), OpenMode::ReadOnly)).unwrap();
    assert_eq!(store.count_blocks().await.unwrap(), 40);
    assert_eq!(
        store.retrieve_block(&next.hash()).await.unwrap(),
        Some(next)
    );
    store.close().await.unwrap();
}
