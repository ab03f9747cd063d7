//! The facade: configurations from TOML and URLs, clear errors for missing
//! features and bad settings, and stores that work behind `Storage`.

use std::time::{Duration, SystemTime};

use olocus_storage::{
    BackendConfig, Block, CompressionType, ErrorKind, SigningKey, Storage, StorageBackendExt,
    StorageConfig, WALConfig,
};

#[test]
fn the_seeds_shape_parses_from_toml() {
    let c = StorageConfig::from_toml(
        r#"
        [backend]
        type = "rocksdb"
        path = "./olocus_data"
        compression = "zstd"
        cache_size = 67108864

        [wal_config]
        enabled = true
        sync_interval = "5s"
        max_log_size = 104857600

        [cache_config]
        block_cache_size = 33554432
        index_cache_size = 8388608
        eviction_policy = "LRU"
        "#,
    )
    .unwrap();
    assert_eq!(
        c.backend,
        BackendConfig::RocksDB {
            path: "./olocus_data".into(),
            compression: CompressionType::Zstd,
            cache_size: 64 << 20,
        }
    );
    assert_eq!(c.wal_config, WALConfig::default());
    let cache = c.cache_config.unwrap();
    assert_eq!(
        (cache.block_cache_size, cache.index_cache_size),
        (32 << 20, 8 << 20)
    );

    let minimal = StorageConfig::from_toml("[backend]\ntype = \"memory\"\n").unwrap();
    assert_eq!(minimal, StorageConfig::new(BackendConfig::Memory));
    // TOML's types are the URL schemes too: one name for each backend.
    for (alias, url) in [("fs", "fs:x"), ("filesystem", "fs:x")] {
        let toml = format!("[backend]\ntype = \"{alias}\"\npath = \"x\"\n");
        let c = StorageConfig::from_toml(&toml).unwrap();
        assert_eq!(c.backend, url.parse::<BackendConfig>().unwrap(), "{alias}");
    }
}

#[test]
fn bad_toml_names_the_problem() {
    let err = StorageConfig::from_toml(
        "[backend]\ntype = \"filesystem\"\npath = \"x\"\ncompression = \"brotli\"\n",
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Configuration);
    assert!(err.to_string().contains("brotli"), "{err}");
    let err = StorageConfig::from_toml("[backend]\ntype = \"cassandra\"\n").unwrap_err();
    assert!(err.to_string().contains("cassandra"), "{err}");
    let err = StorageConfig::from_toml("[backend]\ntype = \"memory\"\n[wal]\n").unwrap_err();
    assert!(err.to_string().contains("wal"), "{err}");
    let err = StorageConfig::load("/nonexistent/olocus.toml").unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/olocus.toml"),
        "{err}"
    ); // A bad file is named once, and "invalid configuration" is said once.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("olocus.toml");
    std::fs::write(&file, "[backend]\ntype = \"cassandra\"\n").unwrap();
    let err = StorageConfig::load(&file).unwrap_err();
    let text = err.to_string();
    assert_eq!(err.kind(), ErrorKind::Configuration);
    assert_eq!(text.matches("invalid configuration").count(), 1, "{text}");
    assert_eq!(text.matches("olocus.toml").count(), 1, "{text}");
    assert!(text.contains("cassandra"), "{text}");
}

#[test]
fn urls_round_trip() {
    for url in [
        "memory:",
        "fs:/data/chain",
        "fs:/data/chain?compression=zstd",
        "rocksdb:/data/rocks",
        "rocksdb:/data/rocks?compression=lz4",
        "sqlite:/data/chain.db",
    ] {
        let c: BackendConfig = url.parse().unwrap();
        assert_eq!(c.to_url(), url);
    }
    for bad in [
        "",
        "fs:",
        "ftp:/x",
        "memory:/x",
        "fs:/x?level=9",
        "sqlite:/x?compression=zstd",
    ] {
        let err = bad.parse::<BackendConfig>().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad}: {err}");
    }
}

#[cfg(feature = "fs")]
#[tokio::test]
async fn invalid_settings_are_refused_before_opening() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = StorageConfig::new(BackendConfig::Filesystem {
        path: dir.path().join("s"),
        compression: CompressionType::None,
    });
    c.wal_config.max_log_size = 10;
    let err = Storage::new(c.clone()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Configuration);
    assert!(err.to_string().contains("max_log_size"), "{err}");
    assert!(!dir.path().join("s").exists(), "nothing was created");

    c.wal_config = WALConfig::default();
    c.backend = BackendConfig::Filesystem {
        path: "".into(),
        compression: CompressionType::None,
    };
    assert_eq!(
        Storage::new(c).await.unwrap_err().kind(),
        ErrorKind::Configuration
    );

    // A path that cannot be a store directory: the error names it.
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let err = Storage::open_url(&format!("fs:{}", file.display()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("plain-file"), "{err}");
}

#[cfg(not(feature = "rocksdb"))]
#[tokio::test]
async fn a_backend_without_its_feature_names_the_feature() {
    let err = Storage::open_url("rocksdb:/tmp/never").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Configuration);
    assert!(err.to_string().contains("`rocksdb` feature"), "{err}");
}

#[cfg(all(not(feature = "cache"), feature = "memory"))]
#[tokio::test]
async fn a_cache_without_its_feature_names_the_feature() {
    let mut c = StorageConfig::new(BackendConfig::Memory);
    c.cache_config = Some(Default::default());
    let err = Storage::new(c).await.unwrap_err();
    assert!(err.to_string().contains("`cache` feature"), "{err}");
}

async fn round_trip(storage: &Storage) {
    let key = SigningKey::from_bytes(&[5; 32]);
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let a = storage.append(&serde_json_value(1), &key, t).await.unwrap();
    let b = storage.append(&serde_json_value(2), &key, t).await.unwrap();
    assert_eq!(b.previous_hash(), Some(&a.hash()));
    assert_eq!(storage.verify_stored_chain(10).await.unwrap(), 2);
    assert_eq!(storage.get_chain_head().await.unwrap(), Some(b.hash()));
    let back: Block = storage.retrieve_block(&a.hash()).await.unwrap().unwrap();
    assert_eq!(back, a);
}

/// A payload type for the round trip.
#[derive(serde::Serialize, serde::Deserialize)]
struct Note {
    n: u32,
}
impl olocus_storage::BlockPayload for Note {
    const PAYLOAD_TYPE: &'static str = "facade.note/v1";
}
fn serde_json_value(n: u32) -> Note {
    Note { n }
}

#[tokio::test]
async fn every_compiled_backend_opens_and_works() {
    let dir = tempfile::tempdir().unwrap();
    let mut urls = Vec::new();
    if cfg!(feature = "memory") {
        urls.push("memory:".to_string());
    }
    if cfg!(feature = "fs") {
        urls.push(format!(
            "fs:{}?compression=lz4",
            dir.path().join("fs").display()
        ));
    }
    if cfg!(feature = "rocksdb") {
        urls.push(format!("rocksdb:{}", dir.path().join("rocks").display()));
    }
    if cfg!(feature = "sqlite") {
        urls.push(format!("sqlite:{}", dir.path().join("s.db").display()));
    }
    for url in urls {
        let mut config = StorageConfig::new(url.parse().unwrap());
        if cfg!(feature = "cache") {
            config.cache_config = Some(Default::default());
        }
        config.max_payload_bytes = 64;
        let storage = Storage::new(config).await.unwrap();
        round_trip(&storage).await;
        // The configured payload limit reaches every backend.
        let key = SigningKey::from_bytes(&[5; 32]);
        let head = storage.get_chain_head().await.unwrap().unwrap();
        let big = Block::sign_raw(
            2,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_001),
            Some(head),
            "facade.blob/v1",
            vec![0; 65],
            &key,
        )
        .unwrap();
        let err = storage.store_block(&big).await.unwrap_err();
        assert_eq!(
            err.kind(),
            olocus_storage::ErrorKind::InvalidInput,
            "{url}: {err}"
        );
        let shared: std::sync::Arc<dyn olocus_storage::StorageBackend> = storage.backend();
        assert_eq!(shared.count_blocks().await.unwrap(), 2);
        storage.close().await.unwrap();
    }
}
