//! Fuzz target bodies. Each takes arbitrary bytes and panics only when a promise
//! is broken (a wrong block, an untyped error, a disagreement with the reference
//! model, or a panic inside the library).
//!
//! - [`wire_decode`]: every wire format's decoder, and the decompressors, on
//!   untrusted bytes.
//! - [`fs_open`]: the filesystem backend's segment and index parsing and its
//!   recovery, by opening a store whose files are the input (on
//!   [`storage_fs::io::SimVfs`]) and reading everything.
//! - [`model_ops`]: an operation sequence decoded from the input, run against the
//!   memory backend and a filesystem store (with reopens), each checked step by
//!   step against the conformance suite's reference model.
//!
//! `fuzz/` holds the cargo-fuzz targets that call these (`cargo xtask fuzz`); this
//! crate's tests run them over the checked-in seed corpora on stable Rust.
//!
//! ```
//! storage_fuzz::wire_decode(b"\x00not a block");
//! storage_fuzz::model_ops(&[1, 0, 1, 1, 9, 0]);
//! ```

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use storage_conformance::cases::model::{ops_from_bytes, run_ops};
use storage_conformance::{Env, Fixture};
use storage_core::{
    Block, BlockHash, CompressionType, ErrorKind, ListOptions, MAX_INDEX, SigningKey,
    StorageBackend, StorageError, WireFormat, async_trait,
};
use storage_fs::io::{SimVfs, Vfs};
use storage_fs::{Durability, FilesystemBackend, FsConfig};
use storage_memory::MemoryBackend;

/// One runtime for every input (building one per input would dominate the time).
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime")
    })
}

/// Errors a reader may see for bad bytes: typed, never `Io` or `Backend`.
fn typed_bad_data(e: &StorageError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Corrupted
            | ErrorKind::Encoding
            | ErrorKind::Verification
            | ErrorKind::InvalidInput
    )
}

/// First byte: the wire format (of [`WireFormat::all`]); the rest: the bytes.
pub fn wire_decode(data: &[u8]) {
    let Some((sel, bytes)) = data.split_first() else {
        return;
    };
    let formats: Vec<WireFormat> = WireFormat::all().collect();
    let format = formats[usize::from(*sel) % formats.len()];
    match format.decode(bytes) {
        Ok(block) => {
            block.verify_signature().expect("a decoded block verifies");
            let again = format.encode(&block).expect("a decoded block encodes");
            let back = format.decode(&again).expect("a re-encoded block decodes");
            assert_eq!(back.hash(), block.hash(), "re-encoding changes the block");
            let stored = format
                .decode_stored(bytes, &block.hash())
                .expect("decode_stored accepts what decode accepts");
            assert_eq!(stored.hash(), block.hash());
        }
        Err(e) => assert!(typed_bad_data(&e), "untyped decode error: {e:?}"),
    }
    // A hash no input can have: decode_stored must refuse whatever the bytes are.
    assert!(format.decode_stored(bytes, &BlockHash([0; 32])).is_err());
    for c in CompressionType::ALL {
        match c.decompress(bytes, 1 << 16) {
            Ok(out) => assert!(out.len() <= 1 << 16, "{} exceeds its limit", c.name()),
            Err(e) => assert!(typed_bad_data(&e), "untyped {} error: {e:?}", c.name()),
        }
    }
}

const FS_DIR: &str = "/fuzz/store";

/// The 16-byte header of segment 1, as the backend writes it.
fn segment_header() -> &'static [u8] {
    static HEADER: OnceLock<Vec<u8>> = OnceLock::new();
    HEADER.get_or_init(|| {
        let vfs = SimVfs::new();
        let store =
            FilesystemBackend::open_on(fs_config(CompressionType::None), Arc::new(vfs.clone()))
                .expect("empty store");
        runtime().block_on(store.close()).expect("close");
        let f = vfs
            .open(&Path::new(FS_DIR).join("0000000000000001.seg"), false)
            .expect("segment 1");
        let mut header = vec![0; 16];
        f.read_exact_at(&mut header, 0).expect("header");
        header
    })
}

fn fs_config(compression: CompressionType) -> FsConfig {
    FsConfig::new(PathBuf::from(FS_DIR))
        .compression(compression)
        .durability(Durability::Buffered)
        .segment_size(64 << 10)
        .max_payload_bytes(storage_core::MAX_PAYLOAD_BYTES)
        .execution(Default::default())
        .mode(Default::default())
}

/// A block no input holds, for the write-after-recovery check.
fn probe_block() -> &'static Block {
    static PROBE: OnceLock<Block> = OnceLock::new();
    PROBE.get_or_init(|| {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        Block::sign_raw(
            1 << 40,
            t,
            Some(BlockHash([3; 32])),
            "fuzz.probe/v1",
            b"probe".to_vec(),
            &SigningKey::from_bytes(&[77; 32]),
        )
        .expect("probe block")
    })
}

/// Input: a flags byte, a 2-byte split, then the bytes of segment 1 and (flag 2)
/// of its index file. Flag 1 prefixes the segment with a valid header; flags
/// bits 2-3 pick the store's compression.
pub fn fs_open(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (split, rest) = match rest {
        [a, b, rest @ ..] => (
            usize::from(u16::from_le_bytes([*a, *b])) % (rest.len() + 1),
            rest,
        ),
        _ => (0, rest),
    };
    let (seg, idx) = rest.split_at(split);
    let vfs = SimVfs::new();
    let dir = Path::new(FS_DIR);
    let put = |name: &str, parts: &[&[u8]]| {
        let f = vfs.create(&dir.join(name), false).expect("sim create");
        let mut at = 0;
        for p in parts {
            f.write_all_at(p, at).expect("sim write");
            at += p.len() as u64;
        }
        f.sync_data().expect("sim sync");
    };
    let header: &[u8] = if flags & 1 == 1 {
        segment_header()
    } else {
        &[]
    };
    put("0000000000000001.seg", &[header, seg]);
    if flags & 2 == 2 {
        put("0000000000000001.idx", &[idx]);
    }
    vfs.sync_dir(dir).expect("sim sync dir");
    let compression = CompressionType::ALL[usize::from(flags >> 2) % CompressionType::ALL.len()];
    let store = match FilesystemBackend::open_on(fs_config(compression), Arc::new(vfs)) {
        Ok(s) => s,
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Corrupted, "open failed untyped: {e:?}");
            return;
        }
    };
    runtime().block_on(async {
        let ok_or_corrupted = |what: &str, e: StorageError| {
            assert_eq!(
                e.kind(),
                ErrorKind::Corrupted,
                "{what} failed untyped: {e:?}"
            );
        };
        let listed = match store.list_blocks(&ListOptions::default()).await {
            Ok(l) => l,
            Err(e) => return ok_or_corrupted("list", e),
        };
        for m in &listed {
            match store.retrieve_block(&m.hash).await {
                Ok(Some(b)) => {
                    assert_eq!((b.hash(), b.index()), (m.hash, m.index), "wrong block");
                    b.verify_signature().expect("a returned block verifies");
                }
                Ok(None) => panic!("listed block {} does not retrieve", m.hash),
                Err(e) => ok_or_corrupted("retrieve", e),
            }
        }
        match store.get_blocks_by_range(0, MAX_INDEX).await {
            Ok(blocks) => {
                for b in blocks {
                    assert!(
                        listed.iter().any(|m| m.hash == b.hash()),
                        "unlisted block in range"
                    );
                }
            }
            Err(e) => ok_or_corrupted("range", e),
        }
        if let Err(e) = store.get_stats().await {
            ok_or_corrupted("stats", e);
        }
        // Whatever was recovered, the store still takes writes.
        let probe = probe_block();
        match store.store_block(probe).await {
            Ok(_) => {
                let back = store
                    .retrieve_block(&probe.hash())
                    .await
                    .expect("probe read");
                assert_eq!(back.map(|b| b.hash()), Some(probe.hash()));
            }
            Err(e) => assert_eq!(e.kind(), ErrorKind::IndexConflict, "probe write: {e:?}"),
        }
        let _ = store.close().await;
    });
}

struct MemoryFixture;

#[async_trait]
impl Fixture for MemoryFixture {
    async fn open(&self) -> Result<Arc<dyn StorageBackend>, StorageError> {
        Ok(Arc::new(MemoryBackend::new()))
    }
}

struct SimFsFixture(SimVfs);

#[async_trait]
impl Fixture for SimFsFixture {
    async fn open(&self) -> Result<Arc<dyn StorageBackend>, StorageError> {
        let store =
            FilesystemBackend::open_on(fs_config(CompressionType::Lz4), Arc::new(self.0.clone()))?;
        Ok(Arc::new(store))
    }
}

/// The input, read as an operation sequence, against the memory backend and a
/// filesystem store; both must agree with the reference model at every step.
pub fn model_ops(data: &[u8]) {
    let ops = ops_from_bytes(data);
    if ops.is_empty() {
        return;
    }
    let memory = Env::new(|| MemoryFixture);
    let fs = Env::new(|| SimFsFixture(SimVfs::new()));
    for (name, env) in [("memory", memory), ("fs", fs)] {
        if let Err(e) = runtime().block_on(run_ops(&env, &ops)) {
            panic!("{name}: {e}");
        }
    }
}
