//! Writes the fuzz targets' seed corpora: real encodings of blocks in every wire
//! format, real filesystem segments and index files (closed and crashed stores,
//! every compression), and a few operation sequences.
//!
//! `cargo run -p storage-fuzz --example seed_corpora -- fuzz/corpus`

use std::path::{Path, PathBuf};
use std::sync::Arc;

use storage_conformance::data;
use storage_core::{CompressionType, StorageBackend, WireFormat};
use storage_fs::io::{SimVfs, Vfs};
use storage_fs::{Durability, FilesystemBackend, FsConfig};

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("corpus dir");
    std::fs::write(dir.join(name), bytes).expect("corpus file");
}

fn read(vfs: &SimVfs, path: &Path) -> Option<Vec<u8>> {
    let f = vfs.open(path, false).ok()?;
    let mut buf = vec![0; f.len().ok()? as usize];
    f.read_exact_at(&mut buf, 0).ok()?;
    Some(buf)
}

#[tokio::main]
async fn main() {
    let root = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fuzz/corpus".into()),
    );
    let chain = data::chain(6);

    let wire = root.join("wire_decode");
    for (f, format) in WireFormat::all().enumerate() {
        for (i, b) in chain.iter().take(3).enumerate() {
            let mut bytes = vec![f as u8];
            bytes.extend(format.encode(b).expect("encode"));
            write(&wire, &format!("format{f}-block{i}"), &bytes);
        }
    }

    let fs = root.join("fs_open");
    for (c, compression) in CompressionType::ALL.into_iter().enumerate() {
        for close in [true, false] {
            let vfs = SimVfs::new();
            let cfg = FsConfig::new("/fuzz/store")
                .compression(compression)
                .durability(Durability::Buffered)
                .segment_size(64 << 10)
                .max_payload_bytes(storage_core::MAX_PAYLOAD_BYTES)
                .execution(Default::default())
                .mode(Default::default());
            let store = FilesystemBackend::open_on(cfg, Arc::new(vfs.clone())).expect("open");
            store.store_block(&chain[0]).await.expect("store");
            store.store_blocks(&chain[1..4]).await.expect("batch");
            store.set_chain_head(&chain[3].hash()).await.expect("head");
            store.delete_block(&chain[1].hash()).await.expect("delete");
            if close {
                store.close().await.expect("close");
            }
            let dir = Path::new("/fuzz/store");
            let seg = read(&vfs, &dir.join("0000000000000001.seg")).expect("segment");
            let idx = read(&vfs, &dir.join("0000000000000001.idx"));
            let flags = (c as u8) << 2 | if idx.is_some() { 2 } else { 0 };
            let mut bytes = vec![flags];
            bytes.extend((seg.len() as u16).to_le_bytes());
            bytes.extend(&seg);
            bytes.extend(idx.unwrap_or_default());
            let state = if close { "closed" } else { "open" };
            write(&fs, &format!("{}-{state}", compression.name()), &bytes);
        }
    }

    let model = root.join("model_ops");
    let seqs: [&[u8]; 4] = [
        // append 0, 1, 2; list; delete 1; range; reopen; count
        &[
            1, 0, 1, 1, 1, 2, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 1, 11, 0, 20, 14, 10,
        ],
        // batch of four, head, rival store (conflict), stats, compact, reopen, list
        &[
            2, 4, 0, 1, 2, 3, 7, 3, 0, 14, 12, 13, 14, 9, 3, 0, 0, 5, 1, 1, 1, 1, 2, 1, 9, 1,
        ],
        // stores, deletes, retrieve many, exists, head of a deleted block
        &[0, 5, 0, 6, 7, 6, 3, 6, 5, 3, 5, 6, 14, 6, 6, 8, 4, 6, 4, 5],
        // far block, range edges, list with bounds
        &[
            0, 18, 11, 40, 43, 11, 43, 0, 9, 3, 0, 1, 2, 1, 3, 3, 2, 1, 2, 33, 81,
        ],
    ];
    for (i, s) in seqs.iter().enumerate() {
        write(&model, &format!("seq{i}"), s);
    }
    println!("seed corpora written under {}", root.display());
}
