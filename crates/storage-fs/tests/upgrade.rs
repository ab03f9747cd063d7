//! Stores written by the first layout (index files that list a segment's
//! operations) open: read as they are when opened read-only, upgraded in place
//! (each segment's table written) when opened for writing.

use std::path::{Path, PathBuf};

use storage_conformance::data;
use storage_core::{Block, CompressionType, ListOptions, OpenMode, StorageBackend};
use storage_fs::{Durability, FilesystemBackend, FsConfig};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/layout1")
}

/// A copy of the fixture to open (tests never change the committed one).
fn copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixture()).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    dir
}

fn config(path: &Path, mode: OpenMode) -> FsConfig {
    FsConfig::new(path.to_path_buf())
        .compression(CompressionType::None)
        .durability(Durability::Buffered)
        .segment_size(64 << 10)
        .mode(mode)
}

/// What the fixture holds: its README says how it was written.
fn expected() -> (Vec<Block>, Block) {
    let chain = data::chain_with_note(150, 610);
    let head = chain[149].clone();
    let kept = chain
        .iter()
        .filter(|b| b.index() != 7 && b.index() != 110)
        .cloned()
        .collect();
    (kept, head)
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap() != "LOCK")
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    v.sort();
    v
}

async fn check(s: &FilesystemBackend) {
    let (kept, head) = expected();
    assert_eq!(s.count_blocks().await.unwrap(), kept.len() as u64);
    assert_eq!(s.get_blocks_by_range(0, 1000).await.unwrap(), kept);
    assert_eq!(s.get_chain_head().await.unwrap(), Some(head.hash()));
    for b in &kept {
        assert_eq!(s.retrieve_block(&b.hash()).await.unwrap().as_ref(), Some(b));
    }
    let listed = s
        .list_blocks(&ListOptions::new().by_timestamp())
        .await
        .unwrap();
    assert_eq!(listed.len(), kept.len());
    assert!(
        listed
            .windows(2)
            .all(|w| (w[0].timestamp, w[0].index) <= (w[1].timestamp, w[1].index))
    );
    let gone = data::chain_with_note(150, 610);
    assert_eq!(s.retrieve_block(&gone[7].hash()).await.unwrap(), None);
    assert_eq!(s.retrieve_block(&gone[110].hash()).await.unwrap(), None);
}

fn index_magics(dir: &Path) -> Vec<u8> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "idx"))
        .collect();
    v.sort();
    v.iter().map(|p| std::fs::read(p).unwrap()[7]).collect()
}

#[tokio::test]
async fn first_layout_is_read_as_it_is_when_read_only() {
    let dir = copy();
    let before = files(dir.path());
    let s = FilesystemBackend::open(config(dir.path(), OpenMode::ReadOnly)).unwrap();
    check(&s).await;
    s.close().await.unwrap();
    drop(s);
    assert_eq!(files(dir.path()), before, "a read-only open wrote nothing");
}

#[tokio::test]
async fn first_layout_is_upgraded_when_opened_for_writing() {
    let dir = copy();
    assert_eq!(index_magics(dir.path()), vec![1, 1]);
    let s = FilesystemBackend::open(config(dir.path(), OpenMode::Create)).unwrap();
    assert!(s.recovery().scanned_bytes > 0);
    check(&s).await;
    // The sealed segment got its table while opening; the active one gets its
    // table on close.
    assert_eq!(index_magics(dir.path()), vec![2, 1]);
    // Writes after the upgrade: a block, a deletion, a head.
    let more = data::chain_with_note(152, 610);
    s.store_blocks(&more[150..152]).await.unwrap();
    s.delete_block(&more[151].hash()).await.unwrap();
    s.set_chain_head(&more[150].hash()).await.unwrap();
    s.close().await.unwrap();
    drop(s);
    assert_eq!(index_magics(dir.path()), vec![2, 2]);

    let s = FilesystemBackend::open(config(dir.path(), OpenMode::OpenExisting)).unwrap();
    assert_eq!(s.recovery().scanned_bytes, 0, "every segment has its table");
    let (mut kept, _) = expected();
    kept.push(more[150].clone());
    assert_eq!(s.get_blocks_by_range(0, 1000).await.unwrap(), kept);
    assert_eq!(s.get_chain_head().await.unwrap(), Some(more[150].hash()));
    assert_eq!(s.count_blocks().await.unwrap(), kept.len() as u64);
    // Compaction drops the deleted blocks and keeps the rest.
    s.compact().await.unwrap();
    assert_eq!(s.get_blocks_by_range(0, 1000).await.unwrap(), kept);
    s.close().await.unwrap();
    drop(s);
    let s = FilesystemBackend::open(config(dir.path(), OpenMode::OpenExisting)).unwrap();
    assert_eq!(s.get_blocks_by_range(0, 1000).await.unwrap(), kept);
    assert_eq!(s.get_chain_head().await.unwrap(), Some(more[150].hash()));
}
