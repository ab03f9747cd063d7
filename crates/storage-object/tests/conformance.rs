//! The whole conformance suite for the object-store backend: over object_store's
//! in-memory store (always), and over the S3 gateway of the local SeaweedFS
//! cluster (`cargo xtask cluster up`; `cargo xtask ci` starts it). Without the
//! cluster's variables the cluster suite's cases are reported as ignored.

use std::process::ExitCode;
use std::sync::Arc;

use object_store::memory::InMemory;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use storage_conformance::{Fixture, Suite};
use storage_core::{BlockHash, Capabilities, OpenMode, StorageBackend, StorageError, async_trait};
use storage_object::{CLUSTER_ENV, ObjectOptions, ObjectStoreBackend, ObjectStoreConfig};

/// The payload limit every fixture's store is configured with.
const FIXTURE_PAYLOAD_LIMIT: usize = 9 << 20;

fn options() -> ObjectOptions {
    ObjectOptions::default().max_payload_bytes(FIXTURE_PAYLOAD_LIMIT)
}

/// A fresh prefix per fixture, so every case has its own chain in one bucket.
fn fresh_prefix() -> String {
    let mut r = [0u8; 8];
    getrandom::fill(&mut r).expect("randomness");
    format!("conformance/{}", u64::from_le_bytes(r))
}

enum Target {
    /// One in-memory store per fixture, kept across reopens.
    Memory(Arc<InMemory>),
    /// The cluster.
    Cluster(Box<ObjectStoreConfig>),
}

struct ObjectFixture {
    target: Target,
    prefix: String,
}

impl ObjectFixture {
    fn memory() -> Self {
        Self {
            target: Target::Memory(Arc::new(InMemory::new())),
            prefix: fresh_prefix(),
        }
    }

    fn cluster() -> Self {
        let prefix = fresh_prefix();
        let mut config = ObjectStoreConfig::from_cluster_env(&prefix)
            .expect("the cluster suite runs only with the cluster's variables set");
        config.options = options();
        Self {
            target: Target::Cluster(Box::new(config)),
            prefix,
        }
    }

    async fn backend(&self) -> Result<ObjectStoreBackend, StorageError> {
        self.backend_in(OpenMode::Create).await
    }

    async fn backend_in(&self, mode: OpenMode) -> Result<ObjectStoreBackend, StorageError> {
        match &self.target {
            Target::Memory(store) => {
                let options = options().mode(mode);
                ObjectStoreBackend::with_store(store.clone(), &self.prefix, options).await
            }
            Target::Cluster(config) => {
                let mut config = (**config).clone();
                config.options.mode = mode;
                ObjectStoreBackend::open(config).await
            }
        }
    }
}

#[async_trait]
impl Fixture for ObjectFixture {
    fn can_corrupt(&self) -> bool {
        true
    }

    fn expected_capabilities(&self) -> Option<Capabilities> {
        Some(
            // A batch spanning index pages is claimed page by page.
            Capabilities::new().persistent(),
        )
    }

    /// On the cluster every call is a round trip (dozens per step): 40 sequences
    /// there, the full number in memory.
    fn model_sequences(&self) -> u32 {
        match self.target {
            Target::Memory(_) => 1000,
            Target::Cluster(_) => 40,
        }
    }

    fn max_payload_bytes(&self) -> Option<usize> {
        Some(FIXTURE_PAYLOAD_LIMIT)
    }

    fn open_modes(&self) -> &'static [OpenMode] {
        &[OpenMode::OpenExisting, OpenMode::ReadOnly]
    }

    async fn open_in(
        &self,
        mode: OpenMode,
    ) -> Option<Result<Arc<dyn StorageBackend>, StorageError>> {
        Some(
            self.backend_in(mode)
                .await
                .map(|s| Arc::new(s) as Arc<dyn StorageBackend>),
        )
    }

    async fn open(&self) -> Result<Arc<dyn StorageBackend>, StorageError> {
        Ok(Arc::new(self.backend().await?))
    }

    /// Flips one byte in the middle of the block's record in its segment object.
    async fn corrupt(
        &self,
        store: Arc<dyn StorageBackend>,
        hash: &BlockHash,
    ) -> Result<Arc<dyn StorageBackend>, StorageError> {
        store.close().await?;
        let backend = self.backend().await?;
        let (path, range) = backend
            .locate(hash)
            .await?
            .ok_or(StorageError::BlockNotFound { hash: *hash })?;
        let objects: Arc<dyn ObjectStore> = backend.object_store();
        let fail = |e: object_store::Error| {
            StorageError::backend(
                "fixture",
                "damaging a stored block",
                storage_core::ErrorStatus::Permanent,
                e,
            )
        };
        let mut bytes = objects
            .get(&path)
            .await
            .map_err(fail)?
            .bytes()
            .await
            .map_err(fail)?
            .to_vec();
        bytes[((range.start + range.end) / 2) as usize] ^= 0x5a;
        objects
            .put(&path, PutPayload::from(bytes))
            .await
            .map_err(fail)?;
        Ok(Arc::new(backend))
    }
}

fn main() -> ExitCode {
    let args = libtest_mimic::Arguments::from_args();
    let memory = Suite::new("object_memory", ObjectFixture::memory);
    let cluster_ready = CLUSTER_ENV.iter().all(|v| std::env::var_os(v).is_some());
    let cluster = Suite::new("object_cluster", ObjectFixture::cluster);
    if !args.list {
        println!("{}", memory.summary());
        if cluster_ready {
            println!("{}", cluster.summary());
        } else {
            println!(
                "conformance suite `object_cluster`: every case ignored: no cluster \
                 ({} unset; run `cargo xtask cluster up`)",
                CLUSTER_ENV.join(", ")
            );
        }
    }
    let mut trials = memory.trials();
    trials.extend(
        cluster
            .trials()
            .into_iter()
            .map(|t| t.with_ignored_flag(!cluster_ready)),
    );
    libtest_mimic::run(&args, trials).exit_code()
}
