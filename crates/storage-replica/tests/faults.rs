//! Fault-injected replication: copies that are down, hung, flaky or come back.
//! In every scenario, nothing acknowledged is lost.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use storage_conformance::data;
use storage_conformance::fault::{FaultMode, FaultyBackend};
use storage_core::{BlockHash, ErrorKind, ListOptions, StorageBackend, StorageError};
use storage_memory::MemoryBackend;
use storage_replica::{ConsistencyLevel, StorageManager, StorageManagerConfig};

struct Cluster {
    copies: Vec<Arc<FaultyBackend>>,
}

impl Cluster {
    fn new() -> Self {
        let copies = (0..3)
            .map(|i| Arc::new(FaultyBackend::new(Arc::new(MemoryBackend::new()), 7 + i)))
            .collect();
        Self { copies }
    }

    fn manager(
        &self,
        level: ConsistencyLevel,
        sync_writes: bool,
        timeout: Duration,
    ) -> StorageManager {
        manager_over(
            &self.copies,
            StorageManagerConfig::default()
                .replication_factor(3)
                .consistency_level(level)
                .sync_writes(sync_writes)
                .replica_timeout(timeout)
                .health_check_interval(Duration::from_millis(50))
                .auto_failover(true),
        )
    }

    fn set(&self, copy: usize, mode: FaultMode) {
        self.copies[copy].set_mode(mode);
    }

    /// Hashes stored on one copy, read past the fault injection.
    async fn held(&self, copy: usize) -> BTreeSet<BlockHash> {
        let inner = self.copies[copy].inner();
        inner
            .list_blocks(&ListOptions::default())
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.hash)
            .collect()
    }

    async fn assert_everywhere(&self, acked: &[BlockHash]) {
        for copy in 0..self.copies.len() {
            let held = self.held(copy).await;
            for h in acked {
                assert!(held.contains(h), "copy {copy} lacks acknowledged block {h}");
            }
        }
    }
}

/// A manager with the first copy as primary and the rest as replicas.
fn manager_over(copies: &[Arc<FaultyBackend>], config: StorageManagerConfig) -> StorageManager {
    let dyns: Vec<Arc<dyn StorageBackend>> = copies
        .iter()
        .map(|c| c.clone() as Arc<dyn StorageBackend>)
        .collect();
    StorageManager::from_arcs(dyns[0].clone(), dyns[1..].to_vec(), config).unwrap()
}

fn insufficient(e: StorageError) -> (usize, usize) {
    match e {
        StorageError::InsufficientReplicas {
            required,
            successful,
        } => (required, successful),
        other => panic!("expected InsufficientReplicas, got {other:?}"),
    }
}

const T: Duration = Duration::from_millis(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_copy_down_quorum_succeeds_all_fails_with_counts() {
    let c = Cluster::new();
    c.set(2, FaultMode::FailAll);
    let chain = data::chain(4);
    let quorum = c.manager(ConsistencyLevel::Quorum, true, T);
    quorum.store_block(&chain[0]).await.unwrap();
    let all = c.manager(ConsistencyLevel::All, true, T);
    let err = all.store_block(&chain[1]).await.unwrap_err();
    assert_eq!(insufficient(err), (3, 2));
    let one = c.manager(ConsistencyLevel::One, true, T);
    one.store_block(&chain[2]).await.unwrap();

    c.set(2, FaultMode::Healthy);
    let report = quorum.repair().await.unwrap();
    assert!(report.issues.is_empty(), "{report:?}");
    // Block 1 reached two copies without meeting All: repair completes it.
    c.assert_everywhere(&[chain[0].hash(), chain[1].hash(), chain[2].hash()])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_copies_down_quorum_fails() {
    let c = Cluster::new();
    c.set(1, FaultMode::FailAll);
    c.set(2, FaultMode::FailAll);
    let m = c.manager(ConsistencyLevel::Quorum, true, T);
    let err = m.store_block(&data::chain(1)[0]).await.unwrap_err();
    assert!(err.is_transient());
    assert_eq!(insufficient(err), (2, 1));
    let m = c.manager(ConsistencyLevel::Quorum, false, T);
    assert_eq!(
        insufficient(m.store_block(&data::chain(2)[1]).await.unwrap_err()),
        (2, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_comes_back_is_repaired() {
    let c = Cluster::new();
    let m = c.manager(ConsistencyLevel::Quorum, true, T);
    let chain = data::chain(60);
    m.store_blocks(&chain[..10]).await.unwrap();
    c.set(1, FaultMode::FailAll);
    let mut acked = chain[..10].iter().map(|b| b.hash()).collect::<Vec<_>>();
    for b in &chain[10..50] {
        m.store_block(b).await.unwrap();
        acked.push(b.hash());
    }
    m.delete_block(&chain[3].hash()).await.unwrap();
    acked.retain(|h| *h != chain[3].hash());
    m.set_chain_head(&chain[49].hash()).await.unwrap();
    assert!(m.pending_repairs() > 0);
    assert!(!m.health_check().await.issues.is_empty());

    c.set(1, FaultMode::Healthy);
    let health = m.health_check().await;
    assert!(
        health.primary_healthy && health.healthy_replicas == 2 && !health.under_replicated,
        "{health:?}"
    );
    let report = m.repair().await.unwrap();
    assert!(
        report.replayed > 0 && report.conflicts.is_empty(),
        "{report:?}"
    );
    c.assert_everywhere(&acked).await;
    assert!(
        !c.held(1).await.contains(&chain[3].hash()),
        "deleted block came back"
    );
    assert_eq!(
        c.copies[1].inner().get_chain_head().await.unwrap(),
        Some(chain[49].hash())
    );
    assert_eq!(m.pending_repairs(), 0);
    // Idempotent: a second repair finds nothing to do.
    let again = m.repair().await.unwrap();
    assert_eq!(
        (
            again.replayed,
            again.copied.iter().sum::<u64>(),
            again.heads_aligned
        ),
        (0, 0, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_replica_delays_a_quorum_write_by_at_most_its_timeout() {
    let c = Cluster::new();
    c.set(2, FaultMode::Hang);
    let chain = data::chain(3);
    let sync = c.manager(ConsistencyLevel::Quorum, true, T);
    let started = Instant::now();
    sync.store_block(&chain[0]).await.unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= T,
        "sync write should wait for the hung copy's timeout: {waited:?}"
    );
    assert!(
        waited < T + Duration::from_secs(2),
        "bounded by the timeout: {waited:?}"
    );
    // Without sync_writes the quorum answers at once; the hung copy times out in
    // the background and is queued for repair.
    let quick = c.manager(ConsistencyLevel::Quorum, false, T);
    let started = Instant::now();
    quick.store_block(&chain[1]).await.unwrap();
    assert!(
        started.elapsed() < T,
        "async quorum write waited {:?}",
        started.elapsed()
    );
    tokio::time::sleep(T + Duration::from_millis(200)).await;
    assert!(quick.pending_repairs() >= 1);
    c.set(2, FaultMode::Healthy);
    quick.process_repairs().await;
    sync.process_repairs().await;
    c.assert_everywhere(&[chain[0].hash(), chain[1].hash()])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_fail_over_when_the_primary_is_down_and_come_back() {
    let c = Cluster::new();
    let m = c.manager(ConsistencyLevel::Quorum, true, T);
    let chain = data::chain(20);
    m.store_blocks(&chain[..10]).await.unwrap();
    c.set(0, FaultMode::FailAll);
    for b in &chain[..10] {
        assert_eq!(m.retrieve_block(&b.hash()).await.unwrap().as_ref(), Some(b));
    }
    assert_eq!(m.count_blocks().await.unwrap(), 10);
    // Writes still meet Quorum on the two replicas.
    m.store_blocks(&chain[10..]).await.unwrap();
    assert_eq!(
        m.list_blocks(&ListOptions::default()).await.unwrap().len(),
        20
    );
    assert!(!m.health_check().await.primary_healthy);

    c.set(0, FaultMode::Healthy);
    assert!(m.health_check().await.primary_healthy);
    m.repair().await.unwrap();
    let acked: Vec<_> = chain.iter().map(|b| b.hash()).collect();
    c.assert_everywhere(&acked).await;
    // Reads are back on the primary: taking a replica down changes nothing.
    c.set(1, FaultMode::FailAll);
    assert_eq!(m.count_blocks().await.unwrap(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flaky_replicas_lose_nothing_acknowledged() {
    let c = Cluster::new();
    c.set(1, FaultMode::FailFraction(0.3));
    c.set(2, FaultMode::FailFraction(0.3));
    let m = c.manager(ConsistencyLevel::Quorum, true, T);
    let chain = data::chain(200);
    let mut acked = Vec::new();
    let mut refused = 0;
    for b in chain.iter() {
        match m.store_block(b).await {
            Ok(h) => acked.push(h),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::InsufficientReplicas, "{e}");
                refused += 1;
            }
        }
    }
    assert!(
        refused > 0 && acked.len() > 100,
        "acked {}, refused {refused}",
        acked.len()
    );
    c.set(1, FaultMode::Healthy);
    c.set(2, FaultMode::Healthy);
    m.repair().await.unwrap();
    c.assert_everywhere(&acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_health_checks_drain_the_repair_queue_and_stop() {
    let c = Cluster::new();
    let m = c.manager(ConsistencyLevel::Quorum, true, T);
    c.set(2, FaultMode::FailAll);
    let chain = data::chain(5);
    m.store_blocks(&chain).await.unwrap();
    assert!(m.pending_repairs() > 0);
    let checks = m.start_health_checks();
    c.set(2, FaultMode::Healthy);
    let deadline = Instant::now() + Duration::from_secs(5);
    while m.pending_repairs() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        m.pending_repairs(),
        0,
        "the periodic check should replay the queue"
    );
    c.assert_everywhere(&chain.iter().map(|b| b.hash()).collect::<Vec<_>>())
        .await;
    checks.stop();
}

#[test]
fn configuration_is_checked() {
    let copies = || -> (Arc<dyn StorageBackend>, Vec<Arc<dyn StorageBackend>>) {
        (
            Arc::new(MemoryBackend::new()),
            vec![Arc::new(MemoryBackend::new())],
        )
    };
    for factor in [0, 3] {
        let (p, r) = copies();
        let cfg = StorageManagerConfig::default().replication_factor(factor);
        assert_eq!(
            StorageManager::from_arcs(p, r, cfg).unwrap_err().kind(),
            ErrorKind::Configuration
        );
    }
    let (p, r) = copies();
    let cfg = StorageManagerConfig::default().replica_timeout(Duration::ZERO);
    assert!(StorageManager::from_arcs(p, r, cfg).is_err());
}

/// How long a stalled disk holds a thread in the tests below: far longer than
/// the replica timeout, so finishing near the timeout shows the stall was
/// abandoned rather than waited out.
const STALL: Duration = Duration::from_secs(3);

/// Three filesystem stores, opened inline (the default), each behind a fault
/// injector whose stall blocks a thread as a stuck disk would.
struct DiskCluster {
    _dirs: Vec<tempfile::TempDir>,
    copies: Vec<Arc<FaultyBackend>>,
}

impl DiskCluster {
    async fn new() -> Self {
        let mut dirs = Vec::new();
        let mut copies = Vec::new();
        for i in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let fs =
                storage_fs::FilesystemBackend::open_async(storage_fs::FsConfig::new(dir.path()))
                    .await
                    .unwrap();
            copies.push(Arc::new(FaultyBackend::new(Arc::new(fs), 40 + i)));
            dirs.push(dir);
        }
        Self {
            _dirs: dirs,
            copies,
        }
    }

    fn manager(&self, level: ConsistencyLevel) -> StorageManager {
        manager_over(
            &self.copies,
            StorageManagerConfig::default()
                .replication_factor(3)
                .consistency_level(level)
                .sync_writes(true)
                .replica_timeout(T)
                .health_check_interval(Duration::from_secs(3600))
                .auto_failover(true),
        )
    }
}

/// Within the timeout, with a margin for a loaded machine, and well short of the
/// stall.
fn within_timeout(took: Duration) {
    assert!(
        took < T + Duration::from_millis(1500) && took < STALL,
        "took {took:?}: the stall was waited out instead of the {T:?} timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_disk_primary_fails_reads_over_within_the_timeout() {
    let c = DiskCluster::new().await;
    let m = c.manager(ConsistencyLevel::Quorum);
    let chain = data::chain(3);
    m.store_blocks(&chain).await.unwrap();
    c.copies[0].set_mode(FaultMode::Stall(STALL));
    let started = Instant::now();
    let got = m.retrieve_block(&chain[1].hash()).await.unwrap();
    within_timeout(started.elapsed());
    assert_eq!(got.as_ref(), Some(&chain[1]));
    assert!(c.copies[0].injected() >= 1, "the primary was never asked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_write_with_a_stalled_disk_copy_returns_within_the_timeout() {
    let c = DiskCluster::new().await;
    let m = c.manager(ConsistencyLevel::Quorum);
    let chain = data::chain(2);
    c.copies[2].set_mode(FaultMode::Stall(STALL));
    let started = Instant::now();
    m.store_block(&chain[0]).await.unwrap();
    within_timeout(started.elapsed());
    assert!(
        m.pending_repairs() >= 1,
        "the stalled copy is queued for repair"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_reports_a_stalled_disk_copy() {
    let c = DiskCluster::new().await;
    let m = c.manager(ConsistencyLevel::Quorum);
    c.copies[1].set_mode(FaultMode::Stall(STALL));
    let started = Instant::now();
    let report = m.health_check().await;
    within_timeout(started.elapsed());
    assert!(report.primary_healthy, "{report:?}");
    assert_eq!(report.healthy_replicas, 1, "{report:?}");
    assert!(!report.issues.is_empty(), "{report:?}");
}

/// The manager reports what all its copies share; a cache over it, the same.
#[tokio::test]
async fn capabilities_are_what_every_copy_shares() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = |name: &str| storage_sqlite::SQLiteConfig::at(dir.path().join(name));
    let durable: Arc<dyn StorageBackend> = Arc::new(
        storage_sqlite::SQLiteBackend::new(sqlite("a.db"))
            .await
            .unwrap(),
    );
    let durable2: Arc<dyn StorageBackend> = Arc::new(
        storage_sqlite::SQLiteBackend::new(sqlite("b.db"))
            .await
            .unwrap(),
    );
    let volatile: Arc<dyn StorageBackend> = Arc::new(MemoryBackend::new());
    let config = || StorageManagerConfig::default().replication_factor(2);
    let both_durable =
        StorageManager::from_arcs(durable.clone(), vec![durable2], config()).unwrap();
    let caps = both_durable.capabilities();
    assert!(caps.persistent && caps.atomic_batches && caps.vacuum && !caps.read_only);
    // One copy in memory: the manager cannot promise persistence.
    let mixed = StorageManager::from_arcs(durable, vec![volatile], config()).unwrap();
    let caps = mixed.capabilities();
    assert!(!caps.persistent && caps.atomic_batches && caps.vacuum);
    let cached =
        storage_cache::CachedStorageBackend::new(mixed, storage_cache::CacheConfig::default())
            .unwrap();
    assert_eq!(cached.capabilities(), caps);
}
