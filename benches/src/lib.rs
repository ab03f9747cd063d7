//! Shared pieces of the criterion benchmarks: deterministic data, and the
//! backend × operation matrix's names, sizes, seed figures and targets ([`spec`],
//! used by `benches/matrix.rs` and by `cargo xtask bench`'s report).
//!
//! `cargo xtask bench [--quick] [--backend …] [--op …]` runs the matrix; see the
//! crate README.

use std::time::SystemTime;

use storage_core::{Block, BlockHash, SigningKey, system_time_from_unix_nanos};

pub mod spec;
pub use spec::*;

/// Payload type of [`bulk_blocks`].
pub const BULK_TYPE: &str = "bench.reading/v1";

/// `count` signed blocks at indices `start..start + count`, each with a
/// `payload_len`-byte payload, timestamps one microsecond apart. Deterministic.
///
/// They are not hash-linked (each names a fixed previous hash), so they can be
/// signed on every core at once: ingest benchmarks need a million of them, and
/// stores do not check links.
pub fn bulk_blocks(start: u64, count: u64, payload_len: usize) -> Vec<Block> {
    let key = SigningKey::from_bytes(&[7; 32]);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let per = count.div_ceil(threads.max(1));
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let key = &key;
                s.spawn(move || {
                    let lo = start + t * per;
                    let hi = (lo + per).min(start + count);
                    (lo..hi)
                        .map(|i| bulk_block(i, payload_len, key))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("signing thread"))
            .collect()
    })
}

fn bulk_block(i: u64, payload_len: usize, key: &SigningKey) -> Block {
    // Text-like, mildly compressible payload that differs per block.
    let mut payload = format!("{{\"seq\":{i},\"note\":\"").into_bytes();
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while payload.len() < payload_len.saturating_sub(2) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        payload.push(b'a' + (x % 16) as u8);
    }
    payload.extend_from_slice(b"\"}");
    let ts: SystemTime = system_time_from_unix_nanos(1_700_000_000_000_000_000 + i * 1_000);
    let prev = (i > 0).then_some(BlockHash([0xab; 32]));
    Block::sign_raw(i, ts, prev, BULK_TYPE, payload, key).expect("valid bench block")
}
