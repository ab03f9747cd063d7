//! Filesystem-specific scenarios the shared suite cannot know about: torn tails,
//! damaged logs and index files, the directory lock, compaction and vacuum
//! (including a crash between writing the copies and deleting the originals).

use std::path::{Path, PathBuf};

use storage_conformance::data;
use storage_core::{
    BackendStats, Block, CompressionType, ErrorKind, ListOptions, StorageBackend, StorageStats,
};
use storage_fs::{Durability, FilesystemBackend, FsConfig};

fn config(dir: &Path, compression: CompressionType, segment_size: u64) -> FsConfig {
    FsConfig::new(dir.to_path_buf())
        .compression(compression)
        .durability(Durability::Buffered)
        .segment_size(segment_size)
        .max_payload_bytes(storage_core::MAX_PAYLOAD_BYTES)
        .execution(Default::default())
        .mode(Default::default())
}

fn open(dir: &Path) -> FilesystemBackend {
    FilesystemBackend::open(config(dir, CompressionType::None, 64 << 10)).expect("open")
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(ext))
        .collect();
    v.sort();
    v
}

/// Everything observable about a store, for before/after comparisons.
async fn contents(s: &FilesystemBackend) -> (Vec<Block>, Option<storage_core::BlockHash>, u64) {
    (
        s.get_blocks_by_range(0, u64::MAX >> 1).await.unwrap(),
        s.get_chain_head().await.unwrap(),
        s.count_blocks().await.unwrap(),
    )
}

fn fs_stats(s: &StorageStats) -> (u64, u64, u64, u64, u64) {
    match &s.backend_specific {
        BackendStats::Filesystem {
            directory_size,
            segments,
            stored_bytes,
            uncompressed_bytes,
            dead_bytes,
            ..
        } => (
            *directory_size,
            *segments,
            *stored_bytes,
            *uncompressed_bytes,
            *dead_bytes,
        ),
        other => panic!("not filesystem stats: {other:?}"),
    }
}

#[tokio::test]
async fn torn_tail_is_cut_and_everything_acknowledged_stays() {
    let dir = tempfile::tempdir().unwrap();
    let chain = data::chain(20);
    let s = open(dir.path());
    s.store_blocks(&chain[..10]).await.unwrap();
    for b in &chain[10..] {
        s.store_block(b).await.unwrap();
    }
    s.set_chain_head(&chain[19].hash()).await.unwrap();
    let before = contents(&s).await;
    drop(s); // no close: the active segment has no index file yet
    // An interrupted append: a record header promising more bytes than follow.
    let seg = files(dir.path(), ".seg").pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let good = bytes.len();
    bytes.extend_from_slice(&[0x0c, 0xb1, 1, 0, 0xff, 0x00, 0, 0, 1, 2, 3, 4, 9, 9, 9]);
    std::fs::write(&seg, &bytes).unwrap();

    let s = open(dir.path());
    assert_eq!(s.recovery().truncated_bytes, 15);
    assert!(s.recovery().scanned_bytes > 0);
    assert_eq!(contents(&s).await, before);
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), good as u64);
    assert_eq!(
        files(dir.path(), ".seg.torn-").len(),
        0,
        "saved under its offset"
    );
    assert!(!files(dir.path(), &format!(".seg.torn-{good}")).is_empty());
    // Writing goes on after the cut, and compact removes the saved tail.
    let more = data::chain(21);
    s.store_block(&more[20]).await.unwrap();
    s.compact().await.unwrap();
    assert!(files(dir.path(), &format!(".seg.torn-{good}")).is_empty());
    s.close().await.unwrap();
    let s = open(dir.path());
    assert_eq!(s.count_blocks().await.unwrap(), 21);
}

#[tokio::test]
async fn damage_followed_by_valid_records_fails_the_open() {
    let dir = tempfile::tempdir().unwrap();
    let chain = data::chain(6);
    let s = open(dir.path());
    for b in chain.iter() {
        s.store_block(b).await.unwrap();
    }
    let loc = s.locate(&chain[2].hash()).unwrap().unwrap();
    drop(s); // not closed: opening must decode the log, and meets the damage
    let mut bytes = std::fs::read(&loc.path).unwrap();
    bytes[loc.offset as usize + 40] ^= 0xff;
    std::fs::write(&loc.path, bytes).unwrap();
    let err =
        FilesystemBackend::open(config(dir.path(), CompressionType::None, 64 << 10)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupted, "{err}");
    assert!(err.to_string().contains("corrupted"), "{err}");
}

#[tokio::test]
async fn damaged_index_file_is_rebuilt_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let chain = data::chain_with_note(300, 610);
    let s = open(dir.path());
    for part in chain.chunks(25) {
        s.store_blocks(part).await.unwrap();
    }
    s.delete_block(&chain[7].hash()).await.unwrap();
    s.set_chain_head(&chain[299].hash()).await.unwrap();
    let before = contents(&s).await;
    s.close().await.unwrap();
    drop(s);
    let idx = files(dir.path(), ".idx");
    assert!(idx.len() >= 3, "small segments roll: {idx:?}");

    // A clean reopen decodes nothing.
    let s = open(dir.path());
    assert_eq!(s.recovery().scanned_bytes, 0);
    assert_eq!(contents(&s).await, before);
    s.close().await.unwrap();
    drop(s);

    // A damaged header, and a missing file: the open reads those segments
    // from the log and writes their tables again.
    let pristine: Vec<Vec<u8>> = idx.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let mut bytes = pristine[0].clone();
    bytes[20] ^= 1;
    std::fs::write(&idx[0], bytes).unwrap();
    std::fs::remove_file(&idx[1]).unwrap();
    let s = open(dir.path());
    assert!(s.recovery().scanned_bytes > 0);
    assert_eq!(contents(&s).await, before);
    s.close().await.unwrap();
    drop(s);
    assert_eq!(std::fs::read(&idx[0]).unwrap(), pristine[0]);
    assert_eq!(std::fs::read(&idx[1]).unwrap(), pristine[1]);

    // A damaged page is found when it is read: that read fails as corrupted,
    // the file is removed, and the next open rebuilds it. (Block 7's deletion
    // reads hash pages while opening, but no entry page of the second table.)
    let mut bytes = pristine[1].clone();
    bytes[4096 + 100] ^= 1; // in its first page of entries
    std::fs::write(&idx[1], bytes).unwrap();
    let s = open(dir.path());
    assert_eq!(s.recovery().scanned_bytes, 0);
    let err = s.get_blocks_by_range(0, u64::MAX >> 1).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupted, "{err}");
    assert!(err.to_string().contains("index file"), "{err}");
    assert!(!idx[1].exists());
    drop(s);
    let s = open(dir.path());
    assert!(s.recovery().scanned_bytes > 0);
    assert_eq!(contents(&s).await, before);
    s.close().await.unwrap();
    drop(s);
    assert_eq!(std::fs::read(&idx[1]).unwrap(), pristine[1]);

    // Found by the open itself (resolving block 7's deletion reads the first
    // table's hash pages): the open reads that segment from the log instead.
    let mut bytes = pristine[0].clone();
    let hashes = bytes.len() - 2 * 4096; // one page each of hashes and times
    bytes[hashes + 10] ^= 1;
    std::fs::write(&idx[0], bytes).unwrap();
    let s = open(dir.path());
    assert!(s.recovery().scanned_bytes > 0);
    assert_eq!(contents(&s).await, before);
    s.close().await.unwrap();
    assert_eq!(std::fs::read(&idx[0]).unwrap(), pristine[0]);
}

#[tokio::test]
async fn second_opener_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let err =
        FilesystemBackend::open(config(dir.path(), CompressionType::None, 64 << 10)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Locked, "{err}");
    let text = err.to_string();
    assert!(text.contains("locked by another writer"), "{text}");
    assert!(text.contains(&dir.path().display().to_string()), "{text}");
    assert!(text.contains("held by "), "{text}");
    assert!(!err.is_transient());
    s.close().await.unwrap();
    // Closing releases the lock at once.
    open(dir.path()).close().await.unwrap();
}

#[tokio::test]
async fn compact_reclaims_deleted_space_and_keeps_everything_else() {
    let dir = tempfile::tempdir().unwrap();
    let chain = data::chain(400);
    let s = open(dir.path());
    for part in chain.chunks(40) {
        s.store_blocks(part).await.unwrap();
    }
    for b in chain
        .iter()
        .filter(|b| b.index() % 2 == 0 && b.index() < 390)
    {
        s.delete_block(&b.hash()).await.unwrap();
    }
    s.set_chain_head(&chain[399].hash()).await.unwrap();
    let before = contents(&s).await;
    let (dir_before, _, stored, _, dead) = fs_stats(&s.get_stats().await.unwrap());
    assert!(
        dead > stored / 3,
        "deletes leave dead bytes: {dead} of {stored}"
    );

    s.compact().await.unwrap();
    let (dir_after, _, stored_after, _, dead_after) = fs_stats(&s.get_stats().await.unwrap());
    assert_eq!(contents(&s).await, before);
    assert_eq!(stored_after, stored);
    assert!(
        dir_after < dir_before * 2 / 3,
        "{dir_after} vs {dir_before}"
    );
    assert!(dead_after < dead / 10, "{dead_after} vs {dead}");
    // Writes after a compaction land after the copies, and reopen in order.
    let extra = data::chain(401);
    s.store_block(&extra[400]).await.unwrap();
    s.delete_block(&chain[1].hash()).await.unwrap();
    let expected = contents(&s).await;
    s.close().await.unwrap();
    drop(s);
    let s = open(dir.path());
    assert_eq!(s.recovery().scanned_bytes, 0);
    assert_eq!(contents(&s).await, expected);
}

#[tokio::test]
async fn crash_between_copying_and_deleting_reopens_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let chain = data::chain(200);
    let s = open(dir.path());
    for part in chain.chunks(20) {
        s.store_blocks(part).await.unwrap();
    }
    for b in chain.iter().step_by(3) {
        s.delete_block(&b.hash()).await.unwrap();
    }
    s.set_chain_head(&chain[199].hash()).await.unwrap();
    s.close().await.unwrap();
    drop(s);
    // Keep the pre-compaction files, compact, then put the old ones back: that is
    // the state a crash leaves after the copies are synced but before any (or only
    // some) originals are deleted.
    let saved: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg" || e == "idx"))
        .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
        .collect();
    let s = open(dir.path());
    let before = contents(&s).await;
    s.compact().await.unwrap();
    s.close().await.unwrap();
    drop(s);
    for keep in [saved.len(), saved.len() / 2] {
        // Restore all originals, or only the newer half (deletion goes oldest first).
        for (path, bytes) in saved.iter().rev().take(keep) {
            std::fs::write(path, bytes).unwrap();
        }
        let s = open(dir.path());
        assert_eq!(
            contents(&s).await,
            before,
            "with {keep} original files back"
        );
        s.close().await.unwrap();
    }
    // The next compaction removes the leftovers.
    let s = open(dir.path());
    s.compact().await.unwrap();
    assert_eq!(contents(&s).await, before);
}

#[tokio::test]
async fn vacuum_recompresses_old_records() {
    let dir = tempfile::tempdir().unwrap();
    // Repetitive notes: compressible.
    let chain = data::chain_with_note(120, 610);
    let s = FilesystemBackend::open(config(dir.path(), CompressionType::None, 1 << 20)).unwrap();
    s.store_blocks(&chain).await.unwrap();
    s.set_chain_head(&chain[119].hash()).await.unwrap();
    let before = contents(&s).await;
    let (_, _, stored, raw, _) = fs_stats(&s.get_stats().await.unwrap());
    assert_eq!(stored - raw, 120 * 13, "uncompressed: entry headers only");
    s.close().await.unwrap();
    drop(s);

    let s = FilesystemBackend::open(config(dir.path(), CompressionType::Zstd, 1 << 20)).unwrap();
    s.vacuum().await.unwrap();
    let (_, segments, stored_z, raw_z, dead) = fs_stats(&s.get_stats().await.unwrap());
    assert_eq!(raw_z, raw);
    assert!(stored_z < stored, "zstd {stored_z} vs none {stored}");
    assert_eq!(segments, 2, "the copies and a fresh active segment");
    assert!(dead < 200, "only headers and the head record: {dead}");
    assert_eq!(contents(&s).await, before);
    s.close().await.unwrap();
    drop(s);
    let s = FilesystemBackend::open(config(dir.path(), CompressionType::Lz4, 1 << 20)).unwrap();
    assert_eq!(contents(&s).await, before);
    let listed = s.list_blocks(&ListOptions::default()).await.unwrap();
    assert_eq!(listed.len(), 120);
}

#[tokio::test]
async fn config_is_validated() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), CompressionType::None, 1000);
    let err = FilesystemBackend::open(c.clone()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Configuration);
    c.segment_size = 1 << 20;
    c.durability = Durability::Periodic(std::time::Duration::ZERO);
    assert_eq!(
        FilesystemBackend::open(c).unwrap_err().kind(),
        ErrorKind::Configuration
    );
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let err = FilesystemBackend::open(config(&file, CompressionType::None, 1 << 20)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io, "{err}");
    assert!(err.to_string().contains("a-file"), "{err}");
}

/// A store of 200 single-block records over several 64 KiB segments, closed
/// (everything synced): its blocks and where each record starts, per segment.
async fn closed_store(dir: &Path) -> (Vec<Block>, Vec<(PathBuf, u64)>) {
    let chain = data::chain_with_note(200, 610).to_vec();
    let s = open(dir);
    for b in &chain {
        s.store_block(b).await.unwrap();
    }
    s.set_chain_head(&chain[199].hash()).await.unwrap();
    let starts = chain
        .iter()
        .map(|b| {
            let loc = s.locate(&b.hash()).unwrap().unwrap();
            // A single-block record: 12-byte record header, 4-byte count, entry.
            (loc.path, loc.offset - 16)
        })
        .collect();
    s.close().await.unwrap();
    (chain, starts)
}

fn cut(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

fn open_err(dir: &Path) -> storage_core::StorageError {
    match FilesystemBackend::open(config(dir, CompressionType::None, 64 << 10)) {
        Ok(_) => panic!("opening a store that lost synced blocks must fail"),
        Err(e) => e,
    }
}

/// Synced records cut away are lost data, not a torn tail: at a record boundary
/// or inside a record, in a sealed or the active segment, with or without index
/// files, opening fails naming the segment, the bytes and (from the index file)
/// the blocks.
#[tokio::test]
async fn synced_records_cut_away_fail_the_open() {
    for keep_index in [true, false] {
        for (which, inside) in [(60usize, false), (60, true), (190, false), (190, true)] {
            let dir = tempfile::tempdir().unwrap();
            let (chain, starts) = closed_store(dir.path()).await;
            let (seg, start) = &starts[which];
            assert!(files(dir.path(), ".seg").len() > 2);
            if !keep_index {
                for idx in files(dir.path(), ".idx") {
                    std::fs::remove_file(idx).unwrap();
                }
            }
            cut(seg, start + if inside { 20 } else { 0 });
            let err = open_err(dir.path());
            let what = format!("block {which}, inside {inside}, index {keep_index}: {err}");
            assert_eq!(err.kind(), ErrorKind::Corrupted, "{what}");
            let text = err.to_string();
            assert!(text.contains(&seg.display().to_string()), "{what}");
            assert!(text.contains(&format!("bytes {start}..")), "{what}");
            if keep_index {
                assert!(
                    text.contains(&format!("blocks lost: #{which}..=#")),
                    "{what}"
                );
            }
            // Salvage keeps everything before the cut and names what was lost.
            let copy = tempfile::tempdir().unwrap();
            let dst = open(copy.path());
            let report = storage_fs::salvage(dir.path(), &dst).await.unwrap();
            let same_segment = starts.iter().filter(|(p, _)| p == seg).count() as u64;
            assert!(report.copied >= which as u64, "{what}: {report:?}");
            assert!(report.copied < 200, "{what}: {report:?}");
            assert_eq!(
                dst.retrieve_block(&chain[which - 1].hash()).await.unwrap(),
                Some(chain[which - 1].clone())
            );
            if keep_index || same_segment < 200 {
                assert!(
                    !report.lost.is_empty() || !report.damage.is_empty(),
                    "{what}"
                );
            }
        }
    }
}

/// The manifest is the list of the store: without it, or with a listed segment
/// gone, the store refuses to open instead of opening what is left.
#[tokio::test]
async fn a_missing_manifest_or_segment_fails_the_open() {
    let dir = tempfile::tempdir().unwrap();
    closed_store(dir.path()).await;
    let manifest = dir.path().join("MANIFEST");
    let saved = std::fs::read(&manifest).unwrap();
    std::fs::remove_file(&manifest).unwrap();
    let err = open_err(dir.path());
    assert!(err.to_string().contains("no MANIFEST"), "{err}");
    std::fs::write(&manifest, &saved).unwrap();
    let seg = files(dir.path(), ".seg")[1].clone();
    std::fs::remove_file(&seg).unwrap();
    let err = open_err(dir.path());
    assert!(err.to_string().contains("is missing"), "{err}");
    assert!(err.to_string().contains("blocks lost: #"), "{err}");
}

/// Opening, reading and closing a store that was cleanly closed changes no file
/// of the store (only the lock file names its new holder), so reading works on a
/// full disk.
#[tokio::test]
async fn reading_a_closed_store_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    closed_store(dir.path()).await;
    let snapshot = |dir: &Path| -> Vec<(PathBuf, u32, std::time::SystemTime)> {
        files(dir, "")
            .into_iter()
            .filter(|p| !p.ends_with("LOCK"))
            .map(|p| {
                let m = std::fs::metadata(&p).unwrap();
                let crc = digest(&std::fs::read(&p).unwrap());
                (p.clone(), crc, m.modified().unwrap())
            })
            .collect()
    };
    let before = snapshot(dir.path());
    let s = open(dir.path());
    assert_eq!(s.count_blocks().await.unwrap(), 200);
    s.get_blocks_by_range(0, 199).await.unwrap();
    s.close().await.unwrap();
    assert!(
        snapshot(dir.path()) == before,
        "a reading session changed files"
    );
    // Opened read-only, not even the lock file is touched.
    let lock = dir.path().join("LOCK");
    let lock_before = std::fs::metadata(&lock).map(|m| m.modified().unwrap()).ok();
    let mut cfg = config(dir.path(), CompressionType::None, 64 << 10);
    cfg.mode = storage_core::OpenMode::ReadOnly;
    let s = FilesystemBackend::open(cfg).unwrap();
    assert_eq!(s.get_blocks_by_range(0, 199).await.unwrap().len(), 200);
    s.close().await.unwrap();
    assert!(
        snapshot(dir.path()) == before,
        "a read-only session changed files"
    );
    assert_eq!(
        std::fs::metadata(&lock).map(|m| m.modified().unwrap()).ok(),
        lock_before
    );
}

/// A digest to compare file contents without printing them.
fn digest(bytes: &[u8]) -> u32 {
    bytes
        .iter()
        .fold(0u32, |h, b| h.rotate_left(5) ^ u32::from(*b))
}

/// A failed open keeps the operating system's error as its source, names the
/// path, and prints the cause once.
#[tokio::test]
async fn engine_errors_keep_their_cause() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let err = FilesystemBackend::open(config(&file.join("store"), CompressionType::None, 64 << 10))
        .unwrap_err();
    let source = std::error::Error::source(&err).expect("a source");
    let io = source
        .downcast_ref::<std::io::Error>()
        .unwrap_or_else(|| panic!("not an io::Error: {source}"));
    assert!(
        !err.to_string().contains(&io.to_string()),
        "cause printed twice: {err}"
    );
    assert!(err.to_string().contains("plain-file"), "{err}");
}

/// Opening a missing store read-only or as existing names the path and
/// creates nothing.
#[test]
fn opening_a_missing_store_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("never");
    let mut cfg = config(&path, CompressionType::None, 64 << 10);
    for mode in [
        storage_core::OpenMode::ReadOnly,
        storage_core::OpenMode::OpenExisting,
    ] {
        cfg.mode = mode;
        let e = FilesystemBackend::open(cfg.clone()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{mode}: {e}");
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        assert!(!path.exists());
    }
}

/// A read-only open beside a writer whose last append is torn (cut short as
/// by a crash, or still under way) sees every whole record, leaves the torn
/// bytes where they are, takes no lock and writes nothing.
#[tokio::test]
async fn read_only_leaves_a_torn_tail_and_the_lock_alone() {
    let dir = tempfile::tempdir().unwrap();
    closed_store(dir.path()).await;
    let seg = files(dir.path(), ".seg").pop().unwrap();
    let whole = std::fs::metadata(&seg).unwrap().len();
    // Half a record appended: the header of a put and a few body bytes.
    let mut torn = std::fs::read(&seg).unwrap();
    let tail = torn[torn.len() - 40..].to_vec();
    torn.extend_from_slice(&tail[..20]);
    std::fs::write(&seg, &torn).unwrap();
    let mut cfg = config(dir.path(), CompressionType::None, 64 << 10);
    cfg.mode = storage_core::OpenMode::ReadOnly;
    let reader = FilesystemBackend::open(cfg).unwrap();
    assert!(reader.capabilities().read_only);
    assert_eq!(reader.count_blocks().await.unwrap(), 200);
    assert_eq!(
        std::fs::metadata(&seg).unwrap().len(),
        whole + 20,
        "the reader cut"
    );
    // It holds no lock: a writer opens beside it (and cuts the torn bytes).
    let writer = open(dir.path());
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), whole);
    assert_eq!(reader.get_blocks_by_range(0, 199).await.unwrap().len(), 200);
    let head = writer.get_chain_head().await.unwrap().unwrap();
    let e = reader.delete_block(&head).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ReadOnly);
    reader.close().await.unwrap();
    writer.close().await.unwrap();
}
