//! The reliability harness for durable backends, ours and third parties': SIGKILL
//! crash cycles ([`crash`]) and corruption sweeps ([`sweep`]).
//!
//! # Running it for a backend
//! Implement [`DurableTarget`] (how to open the store in a directory) and add a
//! `harness = false` test target that calls [`reliability_main`]. Each target gets
//! three tests, `NAME::sigkill_crash_cycles`, `NAME::corruption_sweep` and (for
//! targets that open read-only) `NAME::read_only_beside_a_writer`
//! ([`beside`]), filtered like libtest's (`cargo test --test reliability -- sweep`).
//!
//! - `OLOCUS_CRASH_CYCLES` (default 20) sets the crash cycles per target and
//!   `OLOCUS_CRASH_SEED` their seed;
//! - `OLOCUS_SWEEP_POINTS` (default 12) sets the damage points per file and kind
//!   (more for large files) and `OLOCUS_SWEEP_SEED` their seed.
//!
//! `cargo xtask crash` and `cargo xtask sweep` run longer versions.
//!
//! ```no_run
//! use std::path::Path;
//! use std::sync::Arc;
//! use storage_conformance::reliability::{DurableTarget, reliability_main};
//! use storage_core::{StorageBackend, StorageError, async_trait};
//! # struct MyBackend;
//! # impl MyBackend { async fn open(_: &Path) -> Result<Arc<dyn StorageBackend>, StorageError> { unimplemented!() } }
//!
//! struct Mine;
//!
//! #[async_trait]
//! impl DurableTarget for Mine {
//!     async fn open(&self, dir: &Path, _setting: u64) -> Result<Arc<dyn StorageBackend>, StorageError> {
//!         MyBackend::open(dir).await
//!     }
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     reliability_main(vec![("mine", Arc::new(Mine))])
//! }
//! ```

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use storage_core::{StorageBackend, StorageError, async_trait};

pub mod beside;
pub mod crash;
pub mod sweep;

/// The argument that turns the test binary into the crash test's ingesting child.
const CHILD_ARG: &str = "--olocus-crash-child";

/// One durable backend under test: how to open its store in a directory.
#[async_trait]
pub trait DurableTarget: Send + Sync + 'static {
    /// Opens (or reopens) the store kept in `dir`, with settings number `setting`
    /// (taken modulo [`DurableTarget::settings`]). Crash cycles reopen with the
    /// next cycle's settings, so data written under any must open under every other;
    /// the sweep damages a store made under each.
    async fn open(&self, dir: &Path, setting: u64)
    -> Result<Arc<dyn StorageBackend>, StorageError>;

    /// Whether [`DurableTarget::open_read_only`] opens the store read-only
    /// (the read-only-beside-a-writer test runs only then).
    fn opens_read_only(&self) -> bool {
        false
    }

    /// Opens the store in `dir` read-only, beside a writer in another process.
    async fn open_read_only(
        &self,
        dir: &Path,
    ) -> Option<Result<Arc<dyn StorageBackend>, StorageError>> {
        let _ = dir;
        None
    }

    /// How many distinct settings [`DurableTarget::open`] rotates through.
    fn settings(&self) -> u64 {
        1
    }

    /// Whether the sweep damages this file (a path inside the store's directory).
    /// Default: every file. Exclude files the engine never reads back, such as
    /// diagnostic logs; a layout with hundreds of files of one kind may damage a
    /// sample of them (say which, in the target).
    fn damageable(&self, path: &Path) -> bool {
        let _ = path;
        true
    }

    /// Offsets in `bytes` (the file at `path`) where the engine's own units
    /// start: the sweep also cuts the file at each of them, since a cut that
    /// lands exactly between two records leaves nothing half-written to notice.
    /// Default: every 4 KiB (the page or block size of most engines).
    fn boundaries(&self, path: &Path, bytes: &[u8]) -> Vec<u64> {
        let _ = path;
        (1..=bytes.len() as u64 / 4096).map(|k| k * 4096).collect()
    }
}

/// Test names per target, in the order they run.
const TESTS: [&str; 3] = [crash::TEST_NAME, sweep::TEST_NAME, beside::TEST_NAME];

/// Entry point of a reliability test binary: runs as the crash child when started
/// with the child marker; otherwise runs both tests for every target (filtered like
/// libtest) and returns the exit code.
pub fn reliability_main(targets: Vec<(&'static str, Arc<dyn DurableTarget>)>) -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == CHILD_ARG) {
        let name = &args[at + 1];
        let dir = Path::new(&args[at + 2]);
        let cycle: u64 = args[at + 3].parse().expect("cycle");
        let seed: u64 = args[at + 4].parse().expect("seed");
        let (_, target) = targets
            .iter()
            .find(|(n, _)| n == name)
            .expect("child started for a known target");
        crash::child(target.as_ref(), dir, cycle, seed);
        return ExitCode::SUCCESS;
    }
    let tests: Vec<(String, usize, &str)> = targets
        .iter()
        .enumerate()
        .flat_map(|(i, (n, _))| TESTS.map(|t| (format!("{n}::{t}"), i, t)))
        .collect();
    // Enough of libtest's interface for `cargo test` and test runners.
    if args.iter().any(|a| a == "--list") {
        for (n, _, _) in &tests {
            println!("{n}: test");
        }
        return ExitCode::SUCCESS;
    }
    let exact = args.iter().any(|a| a == "--exact");
    let filters: Vec<&String> = args[1..].iter().filter(|a| !a.starts_with('-')).collect();
    let selected: Vec<&(String, usize, &str)> = tests
        .iter()
        .filter(|(n, _, _)| {
            filters.is_empty()
                || filters.iter().any(|f| {
                    if exact {
                        n == *f
                    } else {
                        n.contains(f.as_str())
                    }
                })
        })
        .collect();
    println!("\nrunning {} tests", selected.len());
    let mut failed = 0;
    for (full, i, test) in selected {
        let (name, target) = &targets[*i];
        if *test == beside::TEST_NAME && !target.opens_read_only() {
            println!("test {full} ... ignored (the target opens no read-only store)");
            continue;
        }
        let outcome = if *test == beside::TEST_NAME {
            beside::run(name, target.as_ref())
        } else if *test == crash::TEST_NAME {
            let cycles = env_u64("OLOCUS_CRASH_CYCLES").unwrap_or(30);
            let seed = env_u64("OLOCUS_CRASH_SEED").unwrap_or(0x5eed_c0de);
            crash::run_cycles(name, target.as_ref(), cycles, seed).map(|r| r.to_string())
        } else {
            let points = env_u64("OLOCUS_SWEEP_POINTS").unwrap_or(12);
            let seed = env_u64("OLOCUS_SWEEP_SEED").unwrap_or(0x0bad_b175);
            sweep::run_sweep(target.clone(), points as usize, seed).map(|r| r.to_string())
        };
        match outcome {
            Ok(summary) => println!("test {full} ... ok ({summary})"),
            Err(e) => {
                failed += 1;
                println!("test {full} ... FAILED\n{e}");
            }
        }
    }
    if failed == 0 {
        println!("\ntest result: ok");
        ExitCode::SUCCESS
    } else {
        println!("\ntest result: FAILED. {failed} failed");
        ExitCode::FAILURE
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// The runtime the harness runs stores on: multi-threaded (as disk backends are
/// mostly used), with two workers.
fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

/// A deterministic generator (xorshift64*), so a failing seed replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
