//! SIGKILL crash cycles and corruption sweeps (see
//! `storage_conformance::reliability`) for the object-store backend over
//! object_store's local-file store: every object is a file in the store's
//! directory, so a killed child leaves exactly what a crashed writer leaves in a
//! bucket (uploaded segments without claims, half-claimed batches), and the sweep
//! damages segments (a sample), index pages and the head. Two settings alternate: plain
//! bincode records, and LZ4-compressed ones.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use object_store::local::LocalFileSystem;
use storage_conformance::reliability::{DurableTarget, reliability_main};
use storage_core::{CompressionType, StorageBackend, StorageError, WireFormat, async_trait};
use storage_object::{ObjectOptions, ObjectStoreBackend};

struct ObjectFiles;

#[async_trait]
impl DurableTarget for ObjectFiles {
    async fn open(
        &self,
        dir: &Path,
        setting: u64,
    ) -> Result<Arc<dyn StorageBackend>, StorageError> {
        let compression = match setting % 2 {
            0 => CompressionType::None,
            _ => CompressionType::Lz4,
        };
        std::fs::create_dir_all(dir)
            .map_err(|e| StorageError::io(format!("creating {}", dir.display()), e))?;
        let files = LocalFileSystem::new_with_prefix(dir).map_err(|e| {
            StorageError::Configuration(format!("local file store at {}: {e}", dir.display()))
        })?;
        let options = ObjectOptions::default().format(WireFormat {
            compression,
            ..WireFormat::BINARY
        });
        Ok(Arc::new(
            ObjectStoreBackend::with_store_single_writer(Arc::new(files), "", options).await?,
        ))
    }

    fn settings(&self) -> u64 {
        2
    }

    /// Every index page and the head, and one segment in eight (by the first hex
    /// digit of its random name): the sweep's store writes one segment per single
    /// write, about 200 files of the same layout.
    fn damageable(&self, path: &Path) -> bool {
        match path.strip_prefix("seg") {
            Ok(name) => name.to_str().is_some_and(|n| n.starts_with(['0', '1'])),
            Err(_) => true,
        }
    }
}

fn main() -> ExitCode {
    reliability_main(vec![("object_files", Arc::new(ObjectFiles))])
}
