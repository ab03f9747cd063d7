//! Shared pieces of the criterion benchmarks: deterministic data, and the
//! backend × operation matrix's names, sizes, seed figures and targets ([`spec`],
//! used by `benches/matrix.rs` and by `cargo xtask bench`'s report).
//!
//! `cargo xtask bench [--quick] [--backend …] [--op …]` runs the matrix; see the
//! crate README.

use std::time::SystemTime;

use storage_core::{Block, BlockHash, SigningKey, system_time_from_unix_nanos};

#[cfg(feature = "peers")]
pub mod peers;
pub mod raw;
pub mod spec;
pub use spec::*;

/// Payload type of [`bulk_blocks`].
pub const BULK_TYPE: &str = "bench.reading/v1";

/// `count` signed blocks at indices `0..count`, hash-linked into one chain, each
/// with a `payload_len`-byte payload, timestamps one microsecond apart.
/// Deterministic. (See [`BulkChain`] to make them in pieces.)
pub fn bulk_blocks(count: u64, payload_len: usize) -> Vec<Block> {
    BulkChain::new(payload_len).take(count)
}

/// Makes the [`bulk_blocks`] chain piece by piece. Each block names the one before
/// it (stores refuse blocks that contradict a stored neighbour's link), so the
/// blocks are signed one after another: about 20 µs each.
#[derive(Debug, Clone)]
pub struct BulkChain {
    key: SigningKey,
    next: u64,
    prev: Option<BlockHash>,
    payload_len: usize,
}

impl BulkChain {
    /// The chain from index 0.
    pub fn new(payload_len: usize) -> Self {
        Self {
            key: SigningKey::from_bytes(&[7; 32]),
            next: 0,
            prev: None,
            payload_len,
        }
    }

    /// The next `count` blocks.
    pub fn take(&mut self, count: u64) -> Vec<Block> {
        (0..count)
            .map(|_| {
                let b = bulk_block(self.next, self.prev, self.payload_len, &self.key);
                self.next += 1;
                self.prev = Some(b.hash());
                b
            })
            .collect()
    }
}

fn bulk_block(i: u64, prev: Option<BlockHash>, payload_len: usize, key: &SigningKey) -> Block {
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
    Block::sign_raw(i, ts, prev, BULK_TYPE, payload, key).expect("valid bench block")
}

/// This process's resident set (`VmRSS` in `/proc/self/status`), in KiB;
/// `None` where the system does not say.
pub fn resident_kib() -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Writes dirty pages out and drops the page cache, so the next open reads from
/// the disk; false where the machine does not permit it (not root, or a
/// read-only `/proc`).
pub fn drop_page_cache() -> bool {
    std::process::Command::new("sync")
        .status()
        .is_ok_and(|s| s.success())
        && std::fs::write("/proc/sys/vm/drop_caches", "1").is_ok()
}
