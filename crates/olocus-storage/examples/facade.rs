//! Opens a store from a TOML configuration, appends a few signed blocks, reads them
//! back, and opens the same store again from its URL.
//!
//! `cargo run -p olocus-storage --example facade`

use std::time::SystemTime;

use olocus_storage::{SigningKey, Storage, StorageBackendExt, StorageConfig};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Attestation {
    subject: String,
    ok: bool,
}

impl olocus_storage::BlockPayload for Attestation {
    const PAYLOAD_TYPE: &'static str = "example.attestation/v1";
}

#[tokio::main]
async fn main() -> olocus_storage::Result<()> {
    let dir = tempfile::tempdir().map_err(|e| olocus_storage::StorageError::io("temp dir", e))?;
    let path = dir.path().join("chain");
    let config = StorageConfig::from_toml(&format!(
        r#"
        [backend]
        type = "filesystem"
        path = "{}"
        compression = "lz4"

        [wal_config]
        sync_interval = "0s"   # every write synced before it is acknowledged
        "#,
        path.display()
    ))?;
    let storage = Storage::new(config).await?;
    let key = SigningKey::from_bytes(&[9; 32]);
    for subject in ["alice", "bob", "carol"] {
        let block = storage
            .append(
                &Attestation {
                    subject: subject.into(),
                    ok: true,
                },
                &key,
                SystemTime::now(),
            )
            .await?;
        println!(
            "appended block {} ({subject}): {}",
            block.index(),
            block.hash()
        );
    }
    storage.close().await?;

    let url = format!("fs:{}?compression=lz4", path.display());
    let storage = Storage::open_url(&url).await?;
    println!(
        "reopened {url}: {} blocks, chain verified: {}",
        storage.count_blocks().await?,
        storage.verify_stored_chain(100).await?
    );
    storage.close().await
}
