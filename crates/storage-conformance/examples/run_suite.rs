//! Runs every case against the memory backend from your own code (no test
//! harness) and prints the outcome of each. Run:
//! `cargo run -p storage-conformance --example run_suite`.

use std::sync::Arc;

use storage_conformance::{Factory, Fixture, all_cases};
use storage_core::{StorageBackend, StorageError, async_trait};
use storage_memory::MemoryBackend;

struct MemoryFixture;

#[async_trait]
impl Fixture for MemoryFixture {
    async fn open(&self) -> Result<Arc<dyn StorageBackend>, StorageError> {
        Ok(Arc::new(MemoryBackend::new()))
    }
}

fn main() {
    let factory: Factory = Arc::new(|| Box::new(MemoryFixture) as Box<dyn Fixture>);
    let (mut passed, mut skipped, mut failed) = (0, 0, 0);
    for case in all_cases() {
        match case.run_with(&factory) {
            Ok(None) => {
                passed += 1;
                println!("pass  {}", case.name);
            }
            Ok(Some(reason)) => {
                skipped += 1;
                println!("skip  {} ({reason})", case.name);
            }
            Err(msg) => {
                failed += 1;
                println!("FAIL  {}: {msg}", case.name);
            }
        }
    }
    println!("{passed} passed, {failed} failed, {skipped} skipped");
    if failed > 0 {
        std::process::exit(1);
    }
}
