//! Layout-specific behaviour over object_store's in-memory store: orphans left by
//! a writer that crashed between its two requests, repacking by `compact`, two
//! instances sharing one chain, and bounded waits on a server that never answers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use storage_conformance::data;
use storage_core::{Block, ErrorKind, StorageBackend, StorageBackendExt, StorageError, WireFormat};
use storage_object::layout::{SegmentId, encode_segment};
use storage_object::{ObjectOptions, ObjectStoreBackend, ObjectStoreConfig};

async fn open(store: &Arc<InMemory>, options: ObjectOptions) -> ObjectStoreBackend {
    ObjectStoreBackend::with_store(store.clone(), "chain", options)
        .await
        .expect("open")
}

async fn segments(store: &Arc<InMemory>) -> Vec<Path> {
    let prefix = Path::from("chain/seg");
    store
        .list(Some(&prefix))
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .expect("list")
}

/// Everything a reader sees, to compare before and after maintenance.
async fn views(s: &ObjectStoreBackend) -> (Vec<Block>, u64, u64, Option<storage_core::BlockHash>) {
    let stats = s.get_stats().await.expect("stats");
    (
        s.get_blocks_by_range(0, u64::MAX).await.expect("range"),
        s.count_blocks().await.expect("count"),
        stats.total_size_bytes,
        s.get_chain_head().await.expect("head"),
    )
}

/// A writer that uploaded its segment and died before claiming its indices left
/// an orphan: invisible to readers, kept by `compact` while younger than the
/// grace period (its writer may still be about to claim), removed after.
#[tokio::test]
async fn compact_removes_orphans_after_the_grace_period() {
    let store = Arc::new(InMemory::new());
    let chain = data::chain(6);
    let s = open(&store, ObjectOptions::default()).await;
    s.store_blocks(&chain[..3]).await.expect("store");
    // The crashed writer's upload: blocks 3..6, never claimed.
    let orphan = SegmentId::random().expect("id");
    let refs: Vec<&Block> = chain[3..].iter().collect();
    let (bytes, _) = encode_segment(orphan, WireFormat::BINARY, &refs).expect("encode");
    store
        .put(
            &Path::from(format!("chain/{}", orphan.path())),
            PutPayload::from(bytes),
        )
        .await
        .expect("put");
    assert_eq!(s.count_blocks().await.unwrap(), 3);
    assert!(!s.block_exists(&chain[4].hash()).await.unwrap());

    s.compact().await.expect("compact");
    assert_eq!(segments(&store).await.len(), 2, "a young orphan is kept");

    let s = open(
        &store,
        ObjectOptions::default().orphan_grace(Duration::ZERO),
    )
    .await;
    let before = views(&s).await;
    s.compact().await.expect("compact");
    let left = segments(&store).await;
    assert_eq!(left.len(), 1, "the orphan is removed: {left:?}");
    assert!(!left[0].as_ref().contains(&orphan.to_string()));
    assert_eq!(views(&s).await, before);
    // The indices the orphan never claimed are free.
    s.store_blocks(&chain[3..]).await.expect("store the rest");
    assert_eq!(s.verify_stored_chain(10).await.unwrap(), 6);
}

/// Single writes make one segment each; deletes leave dead records. `compact`
/// packs the live blocks into one segment, removes the old ones, and changes no
/// answer; a second instance that still points at the old segments finds the
/// blocks where they moved.
#[tokio::test]
async fn compact_repacks_small_and_partly_dead_segments() {
    let store = Arc::new(InMemory::new());
    let chain = data::chain(40);
    // No grace: block 3's segment, all of it deleted, looks like any orphan and
    // would otherwise be kept until it is old.
    let no_grace = ObjectOptions::default().orphan_grace(Duration::ZERO);
    let s = open(&store, no_grace).await;
    let stale = open(&store, ObjectOptions::default()).await;
    for b in chain.iter().take(20) {
        s.store_block(b).await.expect("store");
    }
    s.store_blocks(&chain[20..]).await.expect("batch");
    s.set_chain_head(&chain[39].hash()).await.expect("head");
    for i in [3, 21, 22] {
        assert!(s.delete_block(&chain[i].hash()).await.unwrap());
    }
    assert_eq!(segments(&store).await.len(), 21);
    // The second instance reads the pages now, before the move.
    assert_eq!(stale.count_blocks().await.unwrap(), 37);

    let before = views(&s).await;
    s.compact().await.expect("compact");
    assert_eq!(
        segments(&store).await.len(),
        1,
        "live blocks packed into one segment"
    );
    assert_eq!(views(&s).await, before);
    // Reads through the stale view: the old segments are gone, the blocks moved.
    let got = stale
        .retrieve_block(&chain[7].hash())
        .await
        .unwrap()
        .expect("moved block");
    assert_eq!(got.hash(), chain[7].hash());
    assert_eq!(stale.retrieve_block(&chain[3].hash()).await.unwrap(), None);
    assert_eq!(views(&stale).await, before);

    // Nothing left to do: compact again changes nothing.
    s.compact().await.expect("compact again");
    assert_eq!(segments(&store).await.len(), 1);
}

/// Two instances on one chain: each sees the other's writes (refresh on miss and
/// on listing), and a conflicting write from either is refused.
#[tokio::test]
async fn two_instances_share_one_chain() {
    let store = Arc::new(InMemory::new());
    let chain = data::chain(10);
    let a = open(&store, ObjectOptions::default()).await;
    let b = open(&store, ObjectOptions::default()).await;
    a.store_blocks(&chain[..5]).await.unwrap();
    assert_eq!(b.count_blocks().await.unwrap(), 5);
    assert!(b.block_exists(&chain[2].hash()).await.unwrap());
    b.store_blocks(&chain[5..]).await.unwrap();
    b.set_chain_head(&chain[9].hash()).await.unwrap();
    assert_eq!(a.get_chain_head().await.unwrap(), Some(chain[9].hash()));
    assert_eq!(a.verify_stored_chain(4).await.unwrap(), 10);
    // `a` has not read the page since `b` wrote index 7: its claim finds it taken.
    let err = a.store_block(&data::rival(&chain[7])).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::IndexConflict);
    // Deleting the head through `a` clears it for `b`.
    assert!(a.delete_block(&chain[9].hash()).await.unwrap());
    assert_eq!(b.get_chain_head().await.unwrap(), None);
    assert_eq!(b.count_blocks().await.unwrap(), 9);
}

/// A server that accepts connections and never answers: every call gives up
/// within the configured budget with a retryable (not permanent) error, instead of object_store's
/// default three-minute retry window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_gives_a_retryable_error_in_bounded_time() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    // Accept and hold every connection without a byte in reply.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            held.push(conn);
        }
    });
    let mut config = ObjectStoreConfig::s3(
        "s3://olocus/silent",
        &format!("http://{addr}"),
        "key",
        "secret",
    );
    config.options.request_timeout = Duration::from_millis(300);
    config.options.connect_timeout = Duration::from_millis(300);
    config.options.retry_timeout = Duration::from_millis(800);
    config.options.max_retries = 2;
    let budget = config.options.call_deadline();
    let started = Instant::now();
    let err = ObjectStoreBackend::open(config).await.unwrap_err();
    let took = started.elapsed();
    assert_ne!(
        err.status(),
        storage_core::ErrorStatus::Permanent,
        "{:?}: {err}",
        err.kind()
    );
    assert!(
        matches!(
            err,
            StorageError::Timeout { .. } | StorageError::Backend { .. }
        ),
        "{err}"
    );
    // Not a speed check: without the budget this call would wait out
    // object_store's three-minute retry window.
    assert!(
        took < Duration::from_secs(30),
        "took {took:?} for a budget of {budget:?}"
    );
    eprintln!("silent server: {err} after {took:?}");
}

/// A server that refuses connections: once object_store's retries are exhausted
/// the error is persistent (not a plain transient one), names the request, and
/// keeps object_store's error as its source, printed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_are_persistent_and_keep_their_cause() {
    // A port that was free a moment ago: nothing listens there.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let mut config = ObjectStoreConfig::s3(
        "s3://olocus/refused",
        &format!("http://{addr}"),
        "key",
        "secret",
    );
    config.options.request_timeout = Duration::from_millis(300);
    config.options.connect_timeout = Duration::from_millis(300);
    config.options.retry_timeout = Duration::from_millis(600);
    config.options.max_retries = 1;
    let err = ObjectStoreBackend::open(config).await.unwrap_err();
    // A refused connection fails at once, well inside the call's deadline.
    assert_eq!(err.kind(), ErrorKind::Backend, "{err}");
    assert_eq!(err.status(), storage_core::ErrorStatus::Persistent, "{err}");
    assert!(!err.is_transient());
    let source = std::error::Error::source(&err).expect("a source");
    let engine = source
        .downcast_ref::<object_store::Error>()
        .unwrap_or_else(|| panic!("not an object_store::Error: {source}"));
    assert!(
        !err.to_string().contains(&engine.to_string()),
        "cause printed twice: {err}"
    );
    assert!(
        err.to_string().contains("object backend error while "),
        "{err}"
    );
}
