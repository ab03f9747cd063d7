//! The whole facade: URLs with open modes and object stores, replicated and
//! cached stores from one TOML file, typed access to what one backend offers,
//! and durability settings that reach each backend or are refused.

use std::time::Duration;

use olocus_storage::{BackendConfig, ErrorKind, OpenMode, StorageConfig};

/// What the tests that open a store share (only some features have one).
#[cfg(any(feature = "sqlite", feature = "rocksdb", feature = "object"))]
mod chain {
    use std::time::{Duration, SystemTime};

    use olocus_storage::{Block, BlockPayload, SigningKey, Storage, StorageBackendExt};

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Note {
        n: u32,
    }

    impl BlockPayload for Note {
        const PAYLOAD_TYPE: &'static str = "facade.note/v1";
    }

    /// 2023-11-14, UTC.
    const DAY: u64 = 1_700_000_000;

    /// Appends three blocks on 2023-11-14.
    pub(crate) async fn append_three(storage: &Storage) -> Vec<Block> {
        let key = SigningKey::from_bytes(&[7; 32]);
        let mut out = Vec::new();
        for n in 0..3 {
            let t = SystemTime::UNIX_EPOCH + Duration::from_secs(DAY + u64::from(n));
            out.push(storage.append(&Note { n }, &key, t).await.unwrap());
        }
        out
    }
}

#[cfg(any(feature = "sqlite", feature = "rocksdb", feature = "object"))]
use chain::append_three;

#[test]
fn urls_carry_object_stores_modes_and_escapes() {
    for url in [
        "s3://olocus/chains/a",
        "s3://olocus/chains/a?endpoint=http://127.0.0.1:8333&region=eu-west-1",
        "s3://olocus/a?endpoint=https://s3.example&allow_http=true",
        "fs:/data/50%25 full",
    ] {
        let c: BackendConfig = url.parse().unwrap();
        assert_eq!(c.to_url(), url, "{url}");
    }
    let c: BackendConfig = "s3://olocus/chains/a?endpoint=http://127.0.0.1:8333"
        .parse()
        .unwrap();
    match c {
        BackendConfig::Object {
            url,
            endpoint,
            allow_http,
            secret_access_key,
            ..
        } => {
            assert_eq!(url, "s3://olocus/chains/a");
            assert_eq!(endpoint.as_deref(), Some("http://127.0.0.1:8333"));
            assert!(allow_http, "implied by the http:// endpoint");
            assert!(
                secret_access_key.is_none(),
                "credentials never come from URLs"
            );
        }
        other => panic!("{other:?}"),
    }
    let c: BackendConfig = "fs:/data/my%20chain?compression=lz4".parse().unwrap();
    assert_eq!(
        c,
        BackendConfig::Filesystem {
            path: "/data/my chain".into(),
            compression: olocus_storage::CompressionType::Lz4
        }
    );

    let c = StorageConfig::from_url("sqlite:/data/chain.db?mode=read_only").unwrap();
    assert_eq!(c.mode, OpenMode::ReadOnly);
    assert_eq!(c.backend, BackendConfig::sqlite("/data/chain.db"));
    assert_eq!(c.to_url(), "sqlite:/data/chain.db?mode=read_only");
    let c = StorageConfig::from_url("fs:/x?compression=lz4&mode=open_existing").unwrap();
    assert_eq!(c.to_url(), "fs:/x?compression=lz4&mode=open_existing");

    for bad in [
        "s3://",
        "s3:///prefix",
        "s3:olocus",
        "s3://olocus/a?allow_http=yes",
        "s3://olocus/a?compression=zstd",
        "fs:/x?compression=lz4&compression=zstd",
        "fs:/x?mode",
        "sqlite:/x?mode=sometimes",
        "sqlite:/x?endpoint=http://h",
    ] {
        let err = StorageConfig::from_url(bad).unwrap_err();
        assert!(
            matches!(
                err.kind(),
                ErrorKind::InvalidInput | ErrorKind::Configuration
            ),
            "{bad}: {err}"
        );
    }
    // A misspelt parameter gets a suggestion.
    let err = StorageConfig::from_url("fs:/x?compresion=zstd").unwrap_err();
    assert!(
        err.to_string().contains("did you mean \"compression\"?"),
        "{err}"
    );
    let err = StorageConfig::from_url("s3://b/p?endpiont=http://h").unwrap_err();
    assert!(
        err.to_string().contains("did you mean \"endpoint\"?"),
        "{err}"
    );
    let err = StorageConfig::from_url("sqlite:/x?zzzzzz=1").unwrap_err();
    assert!(!err.to_string().contains("did you mean"), "{err}");
    // The mode belongs to the whole store, not to the backend's description.
    let err = "sqlite:/x?mode=read_only"
        .parse::<BackendConfig>()
        .unwrap_err();
    assert!(err.to_string().contains("StorageConfig::from_url"), "{err}");
}

#[test]
fn a_replicated_cached_store_is_one_toml_file() {
    let c = StorageConfig::from_toml(
        r#"
        mode = "open_existing"

        [backend]
        type = "sqlite"
        path = "/var/lib/olocus/chain.db"

        [replication]
        consistency_level = "All"
        health_check_interval = "10s"

        [[replication.replicas]]
        type = "filesystem"
        path = "/backup/chain"

        [[replication.replicas]]
        type = "object"
        url = "s3://olocus/chain"
        endpoint = "http://127.0.0.1:8333"
        access_key_id = "olocus"
        secret_access_key = "hunter2"

        [cache_config]
        block_cache_size = 1048576
        metadata_cache_size = 65536
        eviction_policy = "LFU"
        ttl = "10m"
        write_through = false
        prefetch_enabled = true
        prefetch_size = 8
        "#,
    )
    .unwrap();
    assert_eq!(c.mode, OpenMode::OpenExisting);
    let r = c.replication.as_ref().unwrap();
    assert_eq!(r.replicas.len(), 2);
    assert_eq!(r.consistency_level, olocus_storage::ConsistencyLevel::All);
    assert_eq!(r.health_check_interval, Duration::from_secs(10));
    assert_eq!(r.replicas[0], BackendConfig::filesystem("/backup/chain"));
    let cache = c.cache_config.as_ref().unwrap();
    assert_eq!(cache.index_cache_size, 65536);
    assert!(cache.prefetch_enabled);
    assert_eq!(cache.prefetch_size, 8);
    assert_eq!(cache.ttl, Some(Duration::from_secs(600)));
    // Secrets stay out of debug output.
    let shown = format!("{c:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    // And the configuration survives a round trip through TOML.
    let text = toml::to_string(&c).unwrap();
    assert_eq!(StorageConfig::from_toml(&text).unwrap(), c);
}

#[cfg(all(feature = "memory", feature = "fs"))]
#[tokio::test]
async fn settings_that_cannot_hold_are_refused() {
    use olocus_storage::{Storage, WALConfig};
    let err = Storage::new(StorageConfig::new(BackendConfig::Memory).with_wal(WALConfig::synced()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Configuration);
    assert!(
        err.to_string().contains("wal_config does not apply"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let fs = BackendConfig::filesystem(dir.path().join("a"));
    let none =
        StorageConfig::new(fs.clone()).with_replication(olocus_storage::ReplicationConfig::new([]));
    let err = Storage::new(none).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Configuration);
    if cfg!(feature = "replica") {
        assert!(err.to_string().contains("no replicas"), "{err}");
        let too_many = StorageConfig::new(fs.clone()).with_replication(
            olocus_storage::ReplicationConfig::new([BackendConfig::filesystem(
                dir.path().join("b"),
            )])
            .replication_factor(3),
        );
        let err = Storage::new(too_many).await.unwrap_err();
        assert!(err.to_string().contains("replication_factor 3"), "{err}");
        // A synced primary with a memory replica: the replica cannot honour it.
        let err = Storage::new(
            StorageConfig::new(fs.clone())
                .with_wal(WALConfig::synced())
                .with_replication(olocus_storage::ReplicationConfig::new([
                    BackendConfig::Memory,
                ])),
        )
        .await
        .unwrap_err();
        assert!(
            err.to_string().contains("replication.replicas[0]: memory"),
            "{err}"
        );
    } else {
        assert!(err.to_string().contains("`replica` feature"), "{err}");
    }
    assert!(!dir.path().join("a").exists(), "nothing was created");
    let err = Storage::new(
        StorageConfig::new(fs).with_cache(olocus_storage::CacheConfig::default().prefetch(0)),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Configuration);
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread")]
async fn open_modes_through_urls() {
    use olocus_storage::Storage;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chain.db");
    let err = Storage::open_url(&format!("sqlite:{}?mode=open_existing", path.display()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.to_string().contains("chain.db"), "{err}");
    assert!(!path.exists());
    let storage = Storage::open_url(&format!("sqlite:{}", path.display()))
        .await
        .unwrap();
    let blocks = append_three(&storage).await;
    storage.close().await.unwrap();
    let reader = Storage::open_url(&format!("sqlite:{}?mode=read_only", path.display()))
        .await
        .unwrap();
    assert!(reader.capabilities().read_only);
    assert_eq!(reader.count_blocks().await.unwrap(), 3);
    let err = reader.delete_block(&blocks[2].hash()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ReadOnly);
    reader.close().await.unwrap();
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread")]
async fn backend_specific_apis_and_wal_settings_reach_the_backend() {
    use olocus_storage::sqlite::{SQLiteBackend, SynchronousMode};
    use olocus_storage::{Storage, WALConfig};
    let dir = tempfile::tempdir().unwrap();
    let config =
        StorageConfig::new(BackendConfig::sqlite(dir.path().join("c.db"))).with_wal(WALConfig {
            sync_interval: Duration::from_secs(2),
            max_log_size: 1 << 20,
            ..WALConfig::default()
        });
    let storage = Storage::new(config).await.unwrap();
    append_three(&storage).await;
    let sqlite: &SQLiteBackend = storage.backend_as().unwrap();
    assert_eq!(sqlite.config().synchronous, SynchronousMode::Normal);
    assert_eq!(
        sqlite.config().wal_sync_interval,
        Some(Duration::from_secs(2))
    );
    assert_eq!(sqlite.config().wal_autocheckpoint_bytes, 1 << 20);
    let day = sqlite.get_daily_stats("2023-11-14").await.unwrap().unwrap();
    assert_eq!(day.block_count, 3);
    assert!(storage.backend_as::<String>().is_none());
    assert!(storage.replica_as::<SQLiteBackend>(0).is_none());
    storage.close().await.unwrap();

    let storage = Storage::new(
        StorageConfig::new(BackendConfig::sqlite(dir.path().join("c.db")))
            .with_wal(WALConfig::synced()),
    )
    .await
    .unwrap();
    let sqlite: &SQLiteBackend = storage.backend_as().unwrap();
    assert_eq!(sqlite.config().synchronous, SynchronousMode::Full);
    storage.close().await.unwrap();
}

#[cfg(feature = "rocksdb")]
#[tokio::test(flavor = "multi_thread")]
async fn wal_settings_reach_rocksdb() {
    use olocus_storage::rocksdb::RocksDBBackend;
    use olocus_storage::{Storage, WALConfig};
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::new(
        StorageConfig::new(BackendConfig::rocksdb(
            dir.path().join("r").to_string_lossy(),
        ))
        .with_wal(WALConfig {
            sync_interval: Duration::from_secs(1),
            max_log_size: 1 << 20,
            ..WALConfig::default()
        }),
    )
    .await
    .unwrap();
    assert!(storage.backend_as::<RocksDBBackend>().is_some());
    append_three(&storage).await;
    storage.close().await.unwrap();
}

#[cfg(all(
    feature = "replica",
    feature = "cache",
    feature = "fs",
    feature = "sqlite"
))]
#[tokio::test(flavor = "multi_thread")]
async fn a_replicated_cached_store_works_and_its_parts_are_reachable() {
    use olocus_storage::Storage;
    use olocus_storage::filesystem::FilesystemBackend;
    use olocus_storage::sqlite::SQLiteBackend;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        r#"
        [backend]
        type = "sqlite"
        path = "{}"

        [replication]
        consistency_level = "All"
        replication_factor = 2

        [[replication.replicas]]
        type = "filesystem"
        path = "{}"

        [cache_config]
        block_cache_size = 1048576
        prefetch_enabled = true
        "#,
        dir.path().join("primary.db").display(),
        dir.path().join("replica").display()
    );
    let storage = Storage::new(StorageConfig::from_toml(&toml).unwrap())
        .await
        .unwrap();
    let blocks = append_three(&storage).await;
    // Every write reached both copies.
    let primary: &SQLiteBackend = storage.backend_as().unwrap();
    let replica: &FilesystemBackend = storage.replica_as(0).unwrap();
    use olocus_storage::StorageBackend;
    assert_eq!(primary.count_blocks().await.unwrap(), 3);
    assert_eq!(replica.count_blocks().await.unwrap(), 3);
    // The manager reports on both; the cache counts reads.
    let health = storage.manager().unwrap().health_check().await;
    assert!(
        health.primary_healthy && !health.under_replicated,
        "{health:?}"
    );
    assert_eq!(health.healthy_replicas, 1);
    let cache = storage.cache().unwrap();
    let before = cache.get_cache_stats();
    for b in &blocks {
        assert_eq!(
            &storage.retrieve_block(&b.hash()).await.unwrap().unwrap(),
            b
        );
    }
    let after = cache.get_cache_stats();
    assert_eq!(
        (after.hits + after.misses) - (before.hits + before.misses),
        3,
        "{after:?}"
    );
    // The store reports what its copies share.
    assert!(storage.capabilities().persistent);
    storage.close().await.unwrap();
    assert_eq!(
        replica.count_blocks().await.unwrap_err().kind(),
        ErrorKind::Closed,
        "closing the store closes its copies"
    );
}

#[cfg(feature = "object")]
#[tokio::test(flavor = "multi_thread")]
async fn an_object_store_opens_from_toml() {
    use olocus_storage::Storage;
    use olocus_storage::StorageBackendExt;
    use olocus_storage::object::ObjectStoreBackend;
    let storage = Storage::new(
        StorageConfig::from_toml("[backend]\ntype = \"object\"\nurl = \"memory://\"\n").unwrap(),
    )
    .await
    .unwrap();
    let blocks = append_three(&storage).await;
    assert_eq!(
        storage
            .get_block_by_index(1)
            .await
            .unwrap()
            .map(|b| b.hash()),
        Some(blocks[1].hash())
    );
    let object: &ObjectStoreBackend = storage.backend_as().unwrap();
    assert!(object.locate(&blocks[0].hash()).await.unwrap().is_some());
    storage.close().await.unwrap();
}
