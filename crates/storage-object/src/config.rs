//! Settings: where the store is (a URL and, for S3, endpoint and credentials) and
//! how the backend talks to it (parallelism, timeouts, retry budget).

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};
use serde::{Deserialize, Serialize};
use storage_core::{MAX_PAYLOAD_BYTES, OpenMode, Result, StorageError, WireFormat, human_duration};

/// How the backend uses a store, whichever store it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ObjectOptions {
    /// How blocks are encoded in segments (each index entry records its format,
    /// so this may change between opens).
    pub format: WireFormat,
    /// Requests in flight at once for one batch, listing or compaction.
    pub parallelism: usize,
    /// Limit for one HTTP request, connecting included (S3 only).
    #[serde(with = "human_duration")]
    pub request_timeout: Duration,
    /// Limit for opening a connection (S3 only).
    #[serde(with = "human_duration")]
    pub connect_timeout: Duration,
    /// Retries of one failed request (5xx, connection errors, timeouts of safe
    /// requests), with exponential backoff (S3 only).
    pub max_retries: usize,
    /// Time after a request's first attempt past which it is not retried again
    /// (object_store's default is 3 minutes; ours is short so that a cluster
    /// without enough live servers gives an error soon, not a hang).
    #[serde(with = "human_duration")]
    pub retry_timeout: Duration,
    /// A segment no index entry references is removed by `compact` only once it
    /// is this old: another writer may have uploaded it and not yet claimed its
    /// indices.
    #[serde(with = "human_duration")]
    pub orphan_grace: Duration,
    /// `compact` packs live blocks of small or partly dead segments into
    /// segments of about this size.
    pub compact_segment_bytes: u64,
    /// Largest payload accepted (at most [`MAX_PAYLOAD_BYTES`]).
    pub max_payload_bytes: usize,
    /// Create the chain if its prefix holds none (the default), open only an
    /// existing one, or open one read-only (every write refused).
    pub mode: OpenMode,
}

impl Default for ObjectOptions {
    fn default() -> Self {
        Self {
            format: WireFormat::BINARY,
            parallelism: 32,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            max_retries: 4,
            retry_timeout: Duration::from_secs(20),
            orphan_grace: Duration::from_secs(15 * 60),
            compact_segment_bytes: 8 << 20,
            max_payload_bytes: MAX_PAYLOAD_BYTES,
            mode: OpenMode::Create,
        }
    }
}

impl ObjectOptions {
    /// Checks the values are usable.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(StorageError::Configuration(format!("object store: {m}")));
        if self.parallelism == 0 {
            return bad("parallelism must be at least 1");
        }
        if self.request_timeout.is_zero() || self.connect_timeout.is_zero() {
            return bad("request_timeout and connect_timeout must be above zero");
        }
        if self.max_payload_bytes > MAX_PAYLOAD_BYTES {
            return bad(&format!(
                "max_payload_bytes {} is above the protocol limit {MAX_PAYLOAD_BYTES}",
                self.max_payload_bytes
            ));
        }
        if self.compact_segment_bytes == 0 {
            return bad("compact_segment_bytes must be above zero");
        }
        Ok(())
    }

    /// The longest one store call may take, retries included; past it the call
    /// fails with [`StorageError::Timeout`]. Also bounds stores without their own
    /// timeouts (in-memory, local files, custom stores).
    pub fn call_deadline(&self) -> Duration {
        self.retry_timeout + self.request_timeout
    }
}

/// Where the store is and how to reach it.
///
/// ```toml
/// url = "s3://olocus/chains/sensor-7"
/// endpoint = "http://127.0.0.1:8333"
/// region = "us-east-1"
/// allow_http = true
/// # access_key_id / secret_access_key: else AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
///
/// [options]
/// parallelism = 32
/// request_timeout = "30s"
/// retry_timeout = "20s"
/// ```
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ObjectStoreConfig {
    /// `s3://bucket/prefix` (S3 and S3-compatible stores), `file:///abs/dir`
    /// (object_store's local-file store; one writing process), or `memory://`
    /// (a fresh in-memory store). The path is the prefix under which this chain
    /// lives, so many chains can share a bucket.
    pub url: String,
    /// S3 endpoint for S3-compatible stores (`http://127.0.0.1:8333`); else
    /// `AWS_ENDPOINT` or AWS itself.
    pub endpoint: Option<String>,
    /// S3 region; else `AWS_REGION`/`AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: Option<String>,
    /// S3 access key; else `AWS_ACCESS_KEY_ID`.
    pub access_key_id: Option<String>,
    /// S3 secret key; else `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: Option<String>,
    /// Allow `http://` endpoints (local clusters).
    pub allow_http: bool,
    /// How the backend uses the store.
    pub options: ObjectOptions,
}

// By hand, so the secret key never reaches a log line or a panic message.
impl std::fmt::Debug for ObjectStoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStoreConfig")
            .field("url", &self.url)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("allow_http", &self.allow_http)
            .field("options", &self.options)
            .finish()
    }
}

impl Default for ObjectStoreConfig {
    fn default() -> Self {
        Self {
            url: "memory://".into(),
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            allow_http: false,
            options: ObjectOptions::default(),
        }
    }
}

/// A built store and the prefix the chain lives under.
pub(crate) struct Built {
    pub store: Arc<dyn ObjectStore>,
    pub prefix: Path,
    /// `true` for stores that cannot update an object conditionally (local files):
    /// the backend then serialises updates itself and allows one writing process.
    pub single_writer: bool,
}

impl ObjectStoreConfig {
    /// The chain at `url` with the default settings; endpoint, region and
    /// credentials from the environment.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// An S3 config for `s3://bucket/prefix` at `endpoint` with static credentials.
    pub fn s3(url: &str, endpoint: &str, access_key_id: &str, secret_access_key: &str) -> Self {
        Self {
            url: url.into(),
            endpoint: Some(endpoint.into()),
            access_key_id: Some(access_key_id.into()),
            secret_access_key: Some(secret_access_key.into()),
            allow_http: endpoint.starts_with("http://"),
            ..Default::default()
        }
    }

    pub(crate) fn build(&self) -> Result<Built> {
        self.options.validate()?;
        let url = url::Url::parse(&self.url).map_err(|e| {
            StorageError::Configuration(format!("object store url {:?}: {e}", self.url))
        })?;
        let prefix = Path::parse(url.path().trim_matches('/')).map_err(|e| {
            StorageError::Configuration(format!("object store prefix in {:?}: {e}", self.url))
        })?;
        let built = match url.scheme() {
            "s3" => {
                install_crypto_provider();
                let bucket = url.host_str().filter(|b| !b.is_empty()).ok_or_else(|| {
                    StorageError::Configuration(format!("{:?} names no bucket", self.url))
                })?;
                let mut b = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_allow_http(self.allow_http)
                    .with_client_options(
                        ClientOptions::new()
                            .with_timeout(self.options.request_timeout)
                            .with_connect_timeout(self.options.connect_timeout)
                            .with_allow_http(self.allow_http),
                    )
                    .with_retry(RetryConfig {
                        backoff: BackoffConfig {
                            init_backoff: Duration::from_millis(50),
                            max_backoff: Duration::from_secs(2),
                            base: 2.0,
                        },
                        max_retries: self.options.max_retries,
                        retry_timeout: self.options.retry_timeout,
                    });
                if let Some(e) = &self.endpoint {
                    b = b.with_endpoint(e);
                }
                if let Some(r) = &self.region {
                    b = b.with_region(r);
                }
                if let Some(k) = &self.access_key_id {
                    b = b.with_access_key_id(k);
                }
                if let Some(s) = &self.secret_access_key {
                    b = b.with_secret_access_key(s);
                }
                let store = b.build().map_err(|e| {
                    StorageError::Configuration(format!("object store {:?}: {e}", self.url))
                })?;
                Built {
                    store: Arc::new(store),
                    prefix,
                    single_writer: false,
                }
            }
            "file" => {
                let root = std::path::PathBuf::from("/").join(prefix.as_ref());
                std::fs::create_dir_all(&root)
                    .map_err(|e| StorageError::io(format!("creating {}", root.display()), e))?;
                let store = LocalFileSystem::new_with_prefix(&root).map_err(|e| {
                    StorageError::Configuration(format!("object store {:?}: {e}", self.url))
                })?;
                Built {
                    store: Arc::new(store),
                    prefix: Path::default(),
                    single_writer: true,
                }
            }
            "memory" => Built {
                store: Arc::new(InMemory::new()),
                prefix,
                single_writer: false,
            },
            other => {
                return Err(StorageError::Configuration(format!(
                    "object store url {:?}: unknown scheme {other:?} (s3, file, memory)",
                    self.url
                )));
            }
        };
        Ok(built)
    }
}

/// reqwest is built without a default TLS crypto provider (to avoid aws-lc-rs's
/// C build); install ring's once per process before the first client is made.
pub(crate) fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Fails only if the application installed one already, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Environment variables naming a test cluster (set by `cargo xtask cluster up`
/// and `cargo xtask ci`): `OLOCUS_S3_ENDPOINT`, `OLOCUS_S3_BUCKET`,
/// `OLOCUS_S3_ACCESS_KEY_ID`, `OLOCUS_S3_SECRET_ACCESS_KEY`.
#[doc(hidden)]
pub const CLUSTER_ENV: [&str; 4] = [
    "OLOCUS_S3_ENDPOINT",
    "OLOCUS_S3_BUCKET",
    "OLOCUS_S3_ACCESS_KEY_ID",
    "OLOCUS_S3_SECRET_ACCESS_KEY",
];

impl ObjectStoreConfig {
    /// A config for the chain `prefix` on the cluster named by [`CLUSTER_ENV`], or
    /// `None` if those variables are not set. For tests and benchmarks; not part
    /// of the API.
    #[doc(hidden)]
    pub fn from_cluster_env(prefix: &str) -> Option<Self> {
        let [endpoint, bucket, key, secret] = CLUSTER_ENV.map(|v| std::env::var(v).ok());
        let (endpoint, bucket, key, secret) = (endpoint?, bucket?, key?, secret?);
        Some(Self::s3(
            &format!("s3://{bucket}/{}", prefix.trim_matches('/')),
            &endpoint,
            &key,
            &secret,
        ))
    }
}

storage_core::setters!(ObjectOptions {
    format: WireFormat,
    parallelism: usize,
    request_timeout: Duration,
    connect_timeout: Duration,
    max_retries: usize,
    retry_timeout: Duration,
    orphan_grace: Duration,
    compact_segment_bytes: u64,
    max_payload_bytes: usize,
    mode: OpenMode,
});

storage_core::setters!(into ObjectStoreConfig { url: String });
storage_core::setters!(ObjectStoreConfig {
    endpoint: Option<String>,
    region: Option<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    allow_http: bool,
    options: ObjectOptions,
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_the_secret_key() {
        let config = ObjectStoreConfig::s3(
            "s3://bucket/chain",
            "http://127.0.0.1:8333",
            "the-access-key",
            "the-secret-key",
        );
        let shown = format!("{config:?}");
        assert!(shown.contains("the-access-key"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert!(!shown.contains("the-secret-key"), "{shown}");
    }
}
