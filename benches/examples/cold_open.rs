//! Builds a filesystem store of N blocks at PATH (once) and times cold opens of it,
//! for profiling (`perf record -e cpu-clock`).
//!
//! `cargo run --release -p olocus-benches --example cold_open -- PATH [N] [OPENS]`

use std::time::Instant;

use olocus_benches::BulkChain;
use storage_core::StorageBackend;
use storage_fs::{Durability, FilesystemBackend, FsConfig};

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("PATH");
    let n: u64 = args.next().map_or(1_000_000, |v| v.parse().expect("N"));
    let opens: u32 = args.next().map_or(10, |v| v.parse().expect("OPENS"));
    let config = FsConfig::new(path)
        .compression(storage_core::CompressionType::None)
        .durability(Durability::Buffered)
        .segment_size(100 << 20)
        .max_payload_bytes(storage_core::MAX_PAYLOAD_BYTES)
        .execution(Default::default())
        .mode(Default::default());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    let store = FilesystemBackend::open(config.clone()).expect("open");
    let have = rt.block_on(store.count_blocks()).expect("count");
    if have < n {
        let started = Instant::now();
        let mut chain = BulkChain::new(650);
        chain.take(have); // already stored
        for start in (have..n).step_by(100_000) {
            let blocks = chain.take((n - start).min(100_000));
            rt.block_on(async {
                for chunk in blocks.chunks(1_000) {
                    store.store_blocks(chunk).await.expect("ingest");
                }
            });
        }
        println!("built {n} blocks in {:?}", started.elapsed());
    }
    rt.block_on(store.close()).expect("close");
    drop(store);
    // Blocks to read: hashes from the first 20,000, spread by a stride.
    let probes: Vec<_> = BulkChain::new(650)
        .take(n.min(20_000))
        .iter()
        .map(|b| b.hash())
        .collect();
    let baseline = olocus_benches::resident_kib().unwrap_or(0);
    for i in 0..opens {
        // Cold: the page cache dropped, where the machine permits it.
        let dropped = olocus_benches::drop_page_cache();
        let probe = probes[(i as usize * 7919) % probes.len()];
        let started = Instant::now();
        let store = FilesystemBackend::open(config.clone()).expect("cold open");
        let opened = started.elapsed();
        let got = rt.block_on(store.retrieve_block(&probe)).expect("read");
        let took = started.elapsed();
        assert!(got.is_some());
        println!(
            "opened {} blocks in {opened:?}, first read after {took:?} (page cache dropped: \
             {dropped}; scanned {} bytes; resident {} KiB, {} KiB before opening)",
            rt.block_on(store.count_blocks()).expect("count"),
            store.recovery().scanned_bytes,
            olocus_benches::resident_kib().unwrap_or(0),
            baseline
        );
        drop(store);
    }
}
