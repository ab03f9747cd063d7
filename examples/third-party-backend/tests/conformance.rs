//! The olocus-storage conformance suite, run by an outside crate.

use std::sync::Arc;

use storage_conformance::{Fixture, conformance_main};
use storage_core::{Capabilities, StorageBackend, StorageError, async_trait};
use third_party_backend::LogBackend;

struct LogFixture {
    dir: tempfile::TempDir,
}

#[async_trait]
impl Fixture for LogFixture {
    fn expected_capabilities(&self) -> Option<Capabilities> {
        Some(Capabilities::new().persistent().atomic_batches())
    }

    async fn open(&self) -> Result<Arc<dyn StorageBackend>, StorageError> {
        Ok(Arc::new(
            LogBackend::open(self.dir.path().join("blocks.log")).await?,
        ))
    }
}

conformance_main! {
    "log" => || LogFixture { dir: tempfile::tempdir().expect("temp dir") },
}
