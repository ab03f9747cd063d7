//! The whole conformance suite for the memory backend: decoded blocks, and blocks
//! kept in each of the eight wire formats (which also exercises the corruption case).

use std::sync::{Arc, Mutex};

use storage_conformance::{Fixture, Suite};
use storage_core::{
    BackendStats, BlockHash, Capabilities, CompressionType, Encoding, StorageBackend, StorageError,
    WireFormat, async_trait,
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
    fn can_corrupt(&self) -> bool {
        self.format.is_some()
    }

    fn expected_capabilities(&self) -> Option<Capabilities> {
        Some(Capabilities::new().atomic_batches().vacuum())
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
        if mem.as_ref().map(|m| m.wire_format()) != Some(self.format) {
            return Err(StorageError::InvalidInput(
                "the store keeps blocks in another form than configured".into(),
            ));
        }
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

async fn heap(s: &MemoryBackend) -> Result<u64, String> {
    match s
        .get_stats()
        .await
        .map_err(|e| e.to_string())?
        .backend_specific
    {
        BackendStats::Memory { heap_usage } => Ok(heap_usage),
        other => Err(format!("memory stats expected, got {other:?}")),
    }
}

/// Memory-specific: the backend's name, and the heap estimate in its own
/// statistics: exactly its documented sum over what it holds, equal for equal
/// contents however they were reached, and zero when everything is deleted.
fn heap_usage_follows_contents() -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let chain = storage_conformance::data::chain(40);
        for format in [
            None,
            Some(WireFormat::BINARY),
            Some(WireFormat {
                encoding: Encoding::Json,
                compression: CompressionType::Zstd,
            }),
        ] {
            let open = || match format {
                None => MemoryBackend::new(),
                Some(f) => MemoryBackend::with_wire_format(f),
            };
            let expected = |blocks: &[storage_core::Block]| -> Result<u64, String> {
                let mut sum = 0;
                for b in blocks {
                    let stored = match format {
                        None => b.payload().len(),
                        Some(f) => f.encode(b).map_err(|e| e.to_string())?.len(),
                    };
                    sum += stored as u64
                        + 2 * b.payload_type().len() as u64
                        + storage_memory::ENTRY_OVERHEAD_BYTES;
                }
                Ok(sum)
            };
            let store = open();
            if store.backend_name() != "memory" {
                return Err(format!("backend name {:?}", store.backend_name()));
            }
            store.store_blocks(&chain).await.map_err(|e| e.to_string())?;
            let held = heap(&store).await?;
            if held != expected(&chain)? {
                return Err(format!(
                    "heap estimate {held} for 40 blocks ({format:?}), want {}",
                    expected(&chain)?
                ));
            }
            // Delete the first half: the same as a store that only got the rest.
            for b in &chain[..20] {
                store.delete_block(&b.hash()).await.map_err(|e| e.to_string())?;
            }
            let other = open();
            other
                .store_blocks(&chain[20..])
                .await
                .map_err(|e| e.to_string())?;
            let (a, b) = (heap(&store).await?, heap(&other).await?);
            if a != b || a != expected(&chain[20..])? {
                return Err(format!(
                    "heap estimate after deleting half {a}, of a store holding the same {b} ({format:?})"
                ));
            }
            for b in &chain[20..] {
                store.delete_block(&b.hash()).await.map_err(|e| e.to_string())?;
            }
            let left = heap(&store).await?;
            if left != 0 {
                return Err(format!("heap estimate {left} after deleting everything"));
            }
        }
        Ok(())
    })
}

fn main() -> std::process::ExitCode {
    storage_conformance::run_suites_with(
        vec![
            Suite::new("memory", || MemoryFixture::new(None)),
            Suite::new(
                "memory_binary",
                encoded(Encoding::Binary, CompressionType::None),
            ),
            Suite::new(
                "memory_binary_gzip",
                encoded(Encoding::Binary, CompressionType::Gzip),
            ),
            Suite::new(
                "memory_binary_zstd",
                encoded(Encoding::Binary, CompressionType::Zstd),
            ),
            Suite::new(
                "memory_binary_lz4",
                encoded(Encoding::Binary, CompressionType::Lz4),
            ),
            Suite::new(
                "memory_json",
                encoded(Encoding::Json, CompressionType::None),
            ),
            Suite::new(
                "memory_json_gzip",
                encoded(Encoding::Json, CompressionType::Gzip),
            ),
            Suite::new(
                "memory_json_zstd",
                encoded(Encoding::Json, CompressionType::Zstd),
            ),
            Suite::new(
                "memory_json_lz4",
                encoded(Encoding::Json, CompressionType::Lz4),
            ),
        ],
        vec![(
            "memory::heap_usage_follows_contents",
            heap_usage_follows_contents,
        )],
    )
}
