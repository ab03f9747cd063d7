//! The whole conformance suite for the memory backend: decoded blocks, and blocks
//! kept in each of the eight wire formats (which also exercises the corruption case).

use std::sync::{Arc, Mutex};

use storage_conformance::{Capabilities, Fixture, conformance_main};
use storage_core::{
    BlockHash, CompressionType, Encoding, StorageBackend, StorageError, WireFormat, async_trait,
};
use storage_memory::MemoryBackend;

/// The payload limit every fixture's store is configured with: the largest the
/// suite allows, so the largest blocks (and their JSON encodings) are exercised.
const FIXTURE_PAYLOAD_LIMIT: usize = storage_core::MAX_PAYLOAD_BYTES - 1;

/// A fresh memory store per case. Memory is not persistent, so the reopen cases
/// are skipped (and reported as such).
struct MemoryFixture {
    format: Option<WireFormat>,
    store: Mutex<Option<Arc<MemoryBackend>>>,
}

impl MemoryFixture {
    fn new(format: Option<WireFormat>) -> Self {
        Self {
            format,
            store: Mutex::new(None),
        }
    }
}

#[async_trait]
impl Fixture for MemoryFixture {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            persistent: false,
            corruption: self.format.is_some(),
            atomic_batches: true,
            vacuum: true,
        }
    }

    fn max_payload_bytes(&self) -> Option<usize> {
        Some(FIXTURE_PAYLOAD_LIMIT)
    }

    async fn open(&self) -> Result<Arc<dyn StorageBackend>, StorageError> {
        let store = Arc::new(
            match self.format {
                None => MemoryBackend::new(),
                Some(f) => MemoryBackend::with_wire_format(f),
            }
            .with_max_payload_bytes(FIXTURE_PAYLOAD_LIMIT),
        );
        *self.store.lock().unwrap() = Some(store.clone());
        Ok(store)
    }

    async fn corrupt(
        &self,
        store: Arc<dyn StorageBackend>,
        hash: &BlockHash,
    ) -> Result<Arc<dyn StorageBackend>, StorageError> {
        let mem = self.store.lock().unwrap().clone();
        let flipped = mem.is_some_and(|m| {
            m.tamper_stored_bytes(hash, |bytes| {
                let mid = bytes.len() / 2;
                bytes[mid] ^= 0x01;
            })
        });
        if flipped {
            Ok(store)
        } else {
            Err(StorageError::InvalidInput(format!(
                "block {hash} is not stored as bytes"
            )))
        }
    }
}

fn encoded(encoding: Encoding, compression: CompressionType) -> impl Fn() -> MemoryFixture {
    move || {
        MemoryFixture::new(Some(WireFormat {
            encoding,
            compression,
        }))
    }
}

conformance_main! {
    "memory" => || MemoryFixture::new(None),
    "memory_binary" => encoded(Encoding::Binary, CompressionType::None),
    "memory_binary_gzip" => encoded(Encoding::Binary, CompressionType::Gzip),
    "memory_binary_zstd" => encoded(Encoding::Binary, CompressionType::Zstd),
    "memory_binary_lz4" => encoded(Encoding::Binary, CompressionType::Lz4),
    "memory_json" => encoded(Encoding::Json, CompressionType::None),
    "memory_json_gzip" => encoded(Encoding::Json, CompressionType::Gzip),
    "memory_json_zstd" => encoded(Encoding::Json, CompressionType::Zstd),
    "memory_json_lz4" => encoded(Encoding::Json, CompressionType::Lz4),
}
