//! [`StorageManager`]: one primary and any number of replicas, of any backend kinds,
//! behind the [`StorageBackend`] trait.
//!
//! # Writes
//! `store_block(s)`, `delete_block` and `set_chain_head` go to **every copy at once**
//! (primary included), each with its own timeout (`replica_timeout`). They are
//! acknowledged exactly when the [`ConsistencyLevel`] is met, counted over all copies:
//! `One` = 1, `Quorum` = a majority (n/2 + 1), `All` = n. Otherwise the call fails
//! with [`StorageError::InsufficientReplicas`] `{ required, successful }` — or, if a
//! copy refused the write outright (an index conflict, invalid input), with that
//! error, the primary's first.
//!
//! With `sync_writes = false` the call returns as soon as the level is met; the
//! remaining copies finish in the background. With `sync_writes = true` it waits
//! for every copy's outcome (each bounded by the timeout) before returning.
//!
//! Writes through one manager are serialised, so two racing writers can never both
//! win an index on different copies.
//!
//! # Repair
//! A copy that fails a write with an error that is not permanent
//! ([`storage_core::ErrorStatus`]; a timeout, a busy engine) gets the write
//! queued; [`StorageManager::process_repairs`] (also run by the periodic health
//! check) replays the queue. [`StorageManager::repair`] is anti-entropy: it lists
//! every copy, copies each block a copy lacks from one that has it, aligns the head
//! with the primary, and reports what it did and any index where copies hold
//! different blocks (those are reported, never overwritten).
//!
//! Deletes leave a tombstone (in memory, for the manager's lifetime): repair
//! deletes a tombstoned block wherever it lingers instead of copying it back, and
//! queued or late stores of it are dropped. Storing the block again lifts the
//! tombstone. A restarted manager has no tombstones, so run `repair` after a delete
//! only once every copy is reachable, or a copy that missed the delete can bring
//! the block back.
//!
//! # What a reader sees meanwhile
//! Reads go to the primary. A write that failed its level may already be on some
//! copies: a reader may or may not see it until repair either completes it on every
//! copy (it is never rolled back). With `sync_writes = false`, an acknowledged write
//! may not yet be on the primary when the call returns (the level was met by
//! replicas); it is there once the primary's own write finishes or repair runs. With
//! `auto_failover`, a read the primary fails (an error that is not permanent, corrupted
//! data) or a primary marked unhealthy is served by the first healthy replica, which
//! may lag behind; reads return to the primary once a health check sees it well.

// Library code returns errors; tests may unwrap (see clippy.toml).
#![warn(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use storage_core::raw::{Engine, Gate};
use storage_core::{
    Block, BlockHash, BlockMetadata, ErrorKind, ErrorStatus, Execution, ListOptions, Result,
    StorageBackend, StorageError, StorageStats,
};
use tokio::sync::mpsc;

const NAME: &str = "replica";

/// How many copies must acknowledge a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsistencyLevel {
    /// Any one copy.
    One,
    /// A majority of all copies, primary included.
    Quorum,
    /// Every copy.
    All,
}

/// Manager settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StorageManagerConfig {
    /// Copies (primary included) each block should live on; a health report with
    /// fewer healthy copies says the store is under-replicated. 1..=copies.
    pub replication_factor: u32,
    /// Acknowledgement level of writes.
    pub consistency_level: ConsistencyLevel,
    /// Period of the background health check started by
    /// [`StorageManager::start_health_checks`].
    pub health_check_interval: Duration,
    /// Serve reads from a healthy replica when the primary fails.
    pub auto_failover: bool,
    /// Wait for every copy's outcome before returning from a write.
    pub sync_writes: bool,
    /// How long one copy may take for one call before it counts as failed.
    pub replica_timeout: Duration,
}

impl Default for StorageManagerConfig {
    fn default() -> Self {
        Self {
            replication_factor: 2,
            consistency_level: ConsistencyLevel::Quorum,
            health_check_interval: Duration::from_secs(30),
            auto_failover: true,
            sync_writes: false,
            replica_timeout: Duration::from_secs(5),
        }
    }
}

/// Result of [`StorageManager::health_check`].
#[derive(Debug, Clone, PartialEq)]
pub struct HealthReport {
    /// The primary answered.
    pub primary_healthy: bool,
    /// Replicas that answered.
    pub healthy_replicas: usize,
    /// Replicas configured.
    pub total_replicas: usize,
    /// Healthy copies are fewer than `replication_factor`.
    pub under_replicated: bool,
    /// Writes waiting in the repair queue.
    pub pending_repairs: usize,
    /// One line per problem, naming the copy.
    pub issues: Vec<String>,
}

/// What [`StorageManager::repair`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RepairReport {
    /// Queued writes replayed successfully.
    pub replayed: usize,
    /// Blocks copied, per copy (index 0 is the primary).
    pub copied: Vec<u64>,
    /// Heads set on copies whose head differed from the primary's.
    pub heads_aligned: usize,
    /// Indices where copies hold different blocks (left as they are).
    pub conflicts: Vec<u64>,
    /// Problems that stopped part of the repair, naming the copy.
    pub issues: Vec<String>,
}

#[derive(Debug, Clone)]
enum RepairOp {
    Store(Vec<Block>),
    Delete(BlockHash),
    Head(BlockHash),
}

struct Copy {
    name: String,
    backend: Arc<dyn StorageBackend>,
    healthy: AtomicBool,
}

struct Shared {
    copies: Vec<Copy>,
    config: StorageManagerConfig,
    queue: Mutex<VecDeque<(usize, RepairOp)>>,
    /// Deletes not yet applied on every copy.
    tombstones: Mutex<HashSet<BlockHash>>,
    write_lock: tokio::sync::Mutex<()>,
    /// Refuses calls after close; shared by clones.
    lifecycle: Gate,
}

/// The replication manager; itself a [`StorageBackend`]. Cheap to clone.
#[derive(Clone)]
pub struct StorageManager {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for StorageManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageManager")
            .field(
                "copies",
                &self
                    .shared
                    .copies
                    .iter()
                    .map(|c| &c.name)
                    .collect::<Vec<_>>(),
            )
            .field("config", &self.shared.config)
            .finish()
    }
}

/// Stops the periodic health check when dropped or stopped.
#[derive(Debug)]
pub struct HealthCheckHandle(tokio::task::JoinHandle<()>);

impl HealthCheckHandle {
    /// Stops the periodic check.
    pub fn stop(self) {
        self.0.abort();
    }
}

impl Drop for HealthCheckHandle {
    fn drop(&mut self) {
        self.0.abort();
    }
}

type OpFuture<T> = Pin<Box<dyn Future<Output = Result<T>> + Send>>;

impl StorageManager {
    /// A manager over a primary and replicas (the seed's signature, with the
    /// configuration checked).
    pub fn new(
        primary: Box<dyn StorageBackend>,
        replicas: Vec<Box<dyn StorageBackend>>,
        config: StorageManagerConfig,
    ) -> Result<Self> {
        Self::from_arcs(
            Arc::from(primary),
            replicas.into_iter().map(Arc::from).collect(),
            config,
        )
    }

    /// A manager over shared backends.
    pub fn from_arcs(
        primary: Arc<dyn StorageBackend>,
        replicas: Vec<Arc<dyn StorageBackend>>,
        config: StorageManagerConfig,
    ) -> Result<Self> {
        let n = 1 + replicas.len();
        if config.replication_factor == 0 || config.replication_factor as usize > n {
            return Err(StorageError::Configuration(format!(
                "replica: replication_factor {} must be between 1 and the number of copies ({n})",
                config.replication_factor
            )));
        }
        if config.replica_timeout.is_zero() || config.health_check_interval.is_zero() {
            return Err(StorageError::Configuration(
                "replica: replica_timeout and health_check_interval must be positive".into(),
            ));
        }
        let copies = std::iter::once(primary)
            .chain(replicas)
            .enumerate()
            .map(|(i, backend)| Copy {
                name: if i == 0 {
                    format!("primary ({})", backend.backend_name())
                } else {
                    format!("replica {i} ({})", backend.backend_name())
                },
                backend,
                healthy: AtomicBool::new(true),
            })
            .collect();
        Ok(Self {
            shared: Arc::new(Shared {
                copies,
                config,
                queue: Mutex::new(VecDeque::new()),
                tombstones: Mutex::new(HashSet::new()),
                write_lock: tokio::sync::Mutex::new(()),
                lifecycle: Gate::new(),
            }),
        })
    }

    /// Copies that must acknowledge a write.
    pub fn required_acks(&self) -> usize {
        let n = self.shared.copies.len();
        match self.shared.config.consistency_level {
            ConsistencyLevel::One => 1,
            ConsistencyLevel::Quorum => n / 2 + 1,
            ConsistencyLevel::All => n,
        }
    }

    /// The seed's entry point: stores one block under the consistency level.
    pub async fn store_with_replication(&self, block: &Block) -> Result<BlockHash> {
        self.store_block(block).await
    }

    /// Asks every copy for its stats (bounded by `replica_timeout`) and records
    /// which are healthy; reads avoid unhealthy copies when failing over.
    pub async fn health_check(&self) -> HealthReport {
        let checks = self.shared.copies.iter().map(|c| {
            let backend = c.backend.clone();
            let timeout = self.shared.config.replica_timeout;
            async move { with_timeout(timeout, "get_stats", backend.get_stats()).await }
        });
        let results = join_all_spawned(checks).await;
        let mut issues = Vec::new();
        let mut healthy = 0usize;
        for (copy, r) in self.shared.copies.iter().zip(results) {
            let ok = r.is_ok();
            copy.healthy.store(ok, SeqCst);
            if let Err(e) = r {
                issues.push(format!("{}: {e}", copy.name));
            } else {
                healthy += 1;
            }
        }
        let primary_healthy = self.shared.copies[0].healthy.load(SeqCst);
        HealthReport {
            primary_healthy,
            healthy_replicas: healthy - usize::from(primary_healthy),
            total_replicas: self.shared.copies.len() - 1,
            under_replicated: healthy < self.shared.config.replication_factor as usize,
            pending_repairs: self.pending_repairs(),
            issues,
        }
    }

    /// Runs [`Self::health_check`] and [`Self::process_repairs`] every
    /// `health_check_interval` until the handle is stopped or dropped.
    pub fn start_health_checks(&self) -> HealthCheckHandle {
        let me = self.clone();
        let period = self.shared.config.health_check_interval;
        HealthCheckHandle(tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if me.shared.lifecycle.is_closed() {
                    return;
                }
                me.health_check().await;
                me.process_repairs().await;
            }
        }))
    }

    /// Writes waiting to be replayed on copies that missed them.
    pub fn pending_repairs(&self) -> usize {
        self.shared
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Replays queued writes; those that fail again stay queued. Returns how many
    /// were applied.
    pub async fn process_repairs(&self) -> usize {
        let items: Vec<(usize, RepairOp)> = self
            .shared
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
            .collect();
        let mut applied = 0;
        for (i, op) in items {
            if self.shared.apply(i, &op).await.is_ok() {
                applied += 1;
            } else {
                self.shared.enqueue(i, op);
            }
        }
        applied
    }

    /// Anti-entropy: replays the queue, then lists every copy and copies each
    /// block a copy lacks from a copy that has it, then aligns heads with the
    /// primary. Indices where copies disagree are reported, not overwritten.
    pub async fn repair(&self) -> Result<RepairReport> {
        let _writes = self.shared.write_lock.lock().await;
        let mut report = RepairReport {
            replayed: self.process_repairs().await,
            copied: vec![0; self.shared.copies.len()],
            ..RepairReport::default()
        };
        let tombstones = self
            .shared
            .tombstones
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let timeout = self.shared.config.replica_timeout;
        // index -> hash -> copies holding it
        let mut holders: BTreeMap<u64, BTreeMap<BlockHash, Vec<usize>>> = BTreeMap::new();
        let mut listed = vec![false; self.shared.copies.len()];
        for (i, copy) in self.shared.copies.iter().enumerate() {
            match with_timeout(
                timeout * 4,
                "list_blocks",
                copy.backend.list_blocks(&ListOptions::default()),
            )
            .await
            {
                Ok(metas) => {
                    listed[i] = true;
                    for m in metas {
                        holders
                            .entry(m.index)
                            .or_default()
                            .entry(m.hash)
                            .or_default()
                            .push(i);
                    }
                }
                Err(e) => report
                    .issues
                    .push(format!("{}: cannot list: {e}", copy.name)),
            }
        }
        // Per target copy, the blocks it lacks.
        let mut wanted: Vec<Vec<(BlockHash, usize)>> = vec![Vec::new(); self.shared.copies.len()];
        for (index, by_hash) in &holders {
            if by_hash.len() > 1 {
                report.conflicts.push(*index);
                continue;
            }
            let (hash, have) = by_hash.iter().next().expect("non-empty");
            if tombstones.contains(hash) {
                for &i in have {
                    let copy = &self.shared.copies[i];
                    if let Err(e) =
                        with_timeout(timeout, "delete_block", copy.backend.delete_block(hash)).await
                    {
                        report
                            .issues
                            .push(format!("{}: cannot delete {hash}: {e}", copy.name));
                    }
                }
                continue;
            }
            for (i, _) in listed
                .iter()
                .enumerate()
                .filter(|(i, ok)| **ok && !have.contains(i))
            {
                wanted[i].push((*hash, have[0]));
            }
        }
        for (target, want) in wanted.into_iter().enumerate() {
            for chunk in want.chunks(256) {
                let mut blocks = Vec::with_capacity(chunk.len());
                for (hash, source) in chunk {
                    let src = &self.shared.copies[*source];
                    match with_timeout(timeout, "retrieve_block", src.backend.retrieve_block(hash))
                        .await
                    {
                        Ok(Some(b)) => blocks.push(b),
                        Ok(None) => {}
                        Err(e) => report
                            .issues
                            .push(format!("{}: cannot read {hash}: {e}", src.name)),
                    }
                }
                let dst = &self.shared.copies[target];
                match with_timeout(
                    timeout * 4,
                    "store_blocks",
                    dst.backend.store_blocks(&blocks),
                )
                .await
                {
                    Ok(_) => report.copied[target] += blocks.len() as u64,
                    Err(e) => report
                        .issues
                        .push(format!("{}: cannot store: {e}", dst.name)),
                }
            }
        }
        // Heads follow the primary.
        if let Ok(Some(head)) = with_timeout(
            timeout,
            "get_chain_head",
            self.shared.copies[0].backend.get_chain_head(),
        )
        .await
        {
            for copy in &self.shared.copies[1..] {
                let theirs =
                    with_timeout(timeout, "get_chain_head", copy.backend.get_chain_head()).await;
                if matches!(theirs, Ok(h) if h != Some(head)) {
                    match with_timeout(
                        timeout,
                        "set_chain_head",
                        copy.backend.set_chain_head(&head),
                    )
                    .await
                    {
                        Ok(()) => report.heads_aligned += 1,
                        Err(e) => report
                            .issues
                            .push(format!("{}: cannot set head: {e}", copy.name)),
                    }
                }
            }
        }
        Ok(report)
    }

    /// For the manager's own operations (repair, health checks), which run
    /// outside the layer.
    fn check_open(&self) -> Result<()> {
        if self.shared.lifecycle.is_closed() {
            Err(StorageError::closed(NAME))
        } else {
            Ok(())
        }
    }

    /// Sends one write to every copy and waits for the consistency level (or, with
    /// `sync_writes`, for every outcome). Failed copies get `repair` queued.
    async fn fan_out<T: Send + 'static>(
        &self,
        op: &'static str,
        call: impl Fn(Arc<dyn StorageBackend>) -> OpFuture<T>,
        repair: RepairOp,
    ) -> Result<T> {
        self.check_open()?;
        let _serialised = self.shared.write_lock.lock().await;
        let n = self.shared.copies.len();
        let required = self.required_acks();
        let timeout = self.shared.config.replica_timeout;
        let (tx, mut rx) = mpsc::unbounded_channel();
        for (i, copy) in self.shared.copies.iter().enumerate() {
            let fut = call(copy.backend.clone());
            let (tx, shared, repair) = (tx.clone(), self.shared.clone(), repair.clone());
            // Spawned, so stragglers finish (and queue their repair) after we return.
            tokio::spawn(async move {
                let r = with_timeout(timeout, op, fut).await;
                if let Err(e) = &r
                    && e.status() != ErrorStatus::Permanent
                {
                    shared.enqueue(i, repair);
                }
                // Let go of the copies before reporting: a caller that drops the
                // manager once the write returns must really release them (a
                // RocksDB copy keeps its lock until its last handle is gone).
                drop(shared);
                let _ = tx.send((i, r));
            });
        }
        drop(tx);
        let mut ok: Option<(usize, T)> = None;
        let (mut successes, mut errors) = (0usize, Vec::new());
        while let Some((i, r)) = rx.recv().await {
            match r {
                Ok(v) => {
                    successes += 1;
                    // Prefer the primary's answer.
                    if ok.as_ref().is_none_or(|(j, _)| i < *j) {
                        ok = Some((i, v));
                    }
                }
                Err(e) => errors.push((i, e)),
            }
            // A failing write still waits for every outcome (each bounded by the
            // timeout) so the error reports exactly how many copies acknowledged.
            let met = successes >= required;
            let all_in = successes + errors.len() == n;
            if (met && !self.shared.config.sync_writes) || all_in {
                break;
            }
        }
        if successes >= required {
            return Ok(ok.expect("a success was recorded").1);
        }
        errors.sort_by_key(|(i, _)| *i);
        let refused = errors
            .iter()
            .position(|(_, e)| e.status() == ErrorStatus::Permanent);
        match refused {
            Some(p) => Err(errors.swap_remove(p).1),
            None => Err(StorageError::InsufficientReplicas {
                required,
                successful: successes,
            }),
        }
    }

    /// A store: lifts tombstones of the blocks, then fans out.
    async fn store_fan_out<T: Send + 'static>(
        &self,
        op: &'static str,
        blocks: &[Block],
        call: impl Fn(Arc<dyn StorageBackend>) -> OpFuture<T>,
        repair: RepairOp,
    ) -> Result<T> {
        self.check_open()?;
        self.shared.revive(blocks);
        self.fan_out(op, call, repair).await
    }

    /// Runs a read on the primary, failing over to healthy replicas when allowed.
    async fn read<T: Send + 'static>(
        &self,
        op: &'static str,
        call: impl Fn(Arc<dyn StorageBackend>) -> OpFuture<T>,
    ) -> Result<T> {
        self.check_open()?;
        let timeout = self.shared.config.replica_timeout;
        let failover = self.shared.config.auto_failover;
        // Healthy copies first (primary first among them); copies marked unhealthy
        // only as a last resort. Without failover, only the primary.
        let copies = &self.shared.copies;
        let order: Vec<usize> = if failover {
            let (well, ill): (Vec<usize>, Vec<usize>) =
                (0..copies.len()).partition(|&i| copies[i].healthy.load(SeqCst));
            well.into_iter().chain(ill).collect()
        } else {
            vec![0]
        };
        let mut last = None;
        for i in order {
            let copy = &copies[i];
            match with_timeout(timeout, op, call(copy.backend.clone())).await {
                Ok(v) => return Ok(v),
                Err(e) if failover && worth_failing_over(&e) => {
                    // A damaged block is not a sick copy; an unreachable one is.
                    if e.kind() != ErrorKind::Corrupted {
                        copy.healthy.store(false, SeqCst);
                    }
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| StorageError::InsufficientReplicas {
            required: 1,
            successful: 0,
        }))
    }
}

fn worth_failing_over(e: &StorageError) -> bool {
    e.status() != ErrorStatus::Permanent || matches!(e.kind(), ErrorKind::Corrupted | ErrorKind::Io)
}

impl Shared {
    fn enqueue(&self, copy: usize, op: RepairOp) {
        let op = match op {
            // A late store of a block deleted since must not be replayed.
            RepairOp::Store(blocks) => {
                let dead = self
                    .tombstones
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                let live: Vec<Block> = blocks
                    .into_iter()
                    .filter(|b| !dead.contains(&b.hash()))
                    .collect();
                if live.is_empty() {
                    return;
                }
                RepairOp::Store(live)
            }
            other => other,
        };
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back((copy, op));
    }

    /// Records a delete: tombstone, and no queued store of the block survives.
    fn bury(&self, hash: &BlockHash) {
        self.tombstones
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(*hash);
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        for (_, op) in queue.iter_mut() {
            if let RepairOp::Store(blocks) = op {
                blocks.retain(|b| b.hash() != *hash);
            }
        }
        queue.retain(|(_, op)| !matches!(op, RepairOp::Store(b) if b.is_empty()));
    }

    /// Storing a block again lifts its tombstone.
    fn revive(&self, blocks: &[Block]) {
        let mut dead = self
            .tombstones
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !dead.is_empty() {
            for b in blocks {
                dead.remove(&b.hash());
            }
        }
    }

    async fn apply(&self, copy: usize, op: &RepairOp) -> Result<()> {
        let backend = &self.copies[copy].backend;
        let t = self.config.replica_timeout;
        match op {
            RepairOp::Store(blocks) => {
                with_timeout(t, "store_blocks", backend.store_blocks(blocks))
                    .await
                    .map(drop)
            }
            RepairOp::Delete(h) => with_timeout(t, "delete_block", backend.delete_block(h))
                .await
                .map(drop),
            RepairOp::Head(h) => with_timeout(t, "set_chain_head", backend.set_chain_head(h)).await,
        }
    }
}

async fn with_timeout<T>(
    limit: Duration,
    op: &str,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    // On the blocking pool, so that the timeout fires even while a disk-backed
    // copy is stuck in a blocking call (inline, it would hold this worker).
    tokio::time::timeout(limit, Execution::BlockingPool.scope(fut))
        .await
        .unwrap_or_else(|_| {
            Err(StorageError::Timeout {
                operation: op.to_string(),
                after: limit,
            })
        })
}

/// Runs the futures concurrently (one task each) and collects their outputs in order.
async fn join_all_spawned<F>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("health check task panicked"));
    }
    out
}

impl Engine for StorageManager {
    fn name(&self) -> &str {
        NAME
    }

    fn gate(&self) -> &Gate {
        &self.shared.lifecycle
    }

    async fn read_block(&self, hash: &BlockHash) -> Result<Option<Block>> {
        let h = *hash;
        self.read("retrieve_block", move |s| {
            Box::pin(async move { s.retrieve_block(&h).await })
        })
        .await
    }

    async fn remove_block(&self, hash: &BlockHash) -> Result<bool> {
        let h = *hash;
        async {
            self.shared.bury(&h);
            self.fan_out(
                "delete_block",
                move |s| Box::pin(async move { s.delete_block(&h).await }),
                RepairOp::Delete(h),
            )
            .await
        }
        .await
    }

    async fn has_block(&self, hash: &BlockHash) -> Result<bool> {
        let h = *hash;
        self.read("block_exists", move |s| {
            Box::pin(async move { s.block_exists(&h).await })
        })
        .await
    }

    async fn write_blocks(&self, blocks: &[Block]) -> Result<()> {
        let owned: Arc<Vec<Block>> = Arc::new(blocks.to_vec());
        self.store_fan_out(
            "store_blocks",
            blocks,
            {
                let owned = owned.clone();
                move |s| {
                    let owned = owned.clone();
                    Box::pin(async move { s.store_blocks(&owned).await })
                }
            },
            RepairOp::Store(blocks.to_vec()),
        )
        .await
        .map(drop)
    }

    async fn read_blocks(&self, hashes: &[BlockHash]) -> Result<Vec<Option<Block>>> {
        let hs: Arc<Vec<BlockHash>> = Arc::new(hashes.to_vec());
        self.read("retrieve_blocks", move |s| {
            let hs = hs.clone();
            Box::pin(async move { s.retrieve_blocks(&hs).await })
        })
        .await
    }

    async fn list(&self, options: &ListOptions) -> Result<Vec<BlockMetadata>> {
        let o = options.clone();
        self.read("list_blocks", move |s| {
            let o = o.clone();
            Box::pin(async move { s.list_blocks(&o).await })
        })
        .await
    }

    async fn count(&self) -> Result<u64> {
        self.read("count_blocks", |s| {
            Box::pin(async move { s.count_blocks().await })
        })
        .await
    }

    async fn head(&self) -> Result<Option<BlockHash>> {
        self.read("get_chain_head", |s| {
            Box::pin(async move { s.get_chain_head().await })
        })
        .await
    }

    async fn write_head(&self, hash: &BlockHash) -> Result<()> {
        let h = *hash;
        self.fan_out(
            "set_chain_head",
            move |s| Box::pin(async move { s.set_chain_head(&h).await }),
            RepairOp::Head(h),
        )
        .await
    }

    async fn read_range(&self, start: u64, end: u64) -> Result<Vec<Block>> {
        self.read("get_blocks_by_range", move |s| {
            Box::pin(async move { s.get_blocks_by_range(start, end).await })
        })
        .await
    }

    async fn run_compaction(&self) -> Result<()> {
        self.on_every_copy("compact", |s| Box::pin(async move { s.compact().await }))
            .await
    }

    async fn run_vacuum(&self) -> Result<()> {
        self.on_every_copy("vacuum", |s| Box::pin(async move { s.vacuum().await }))
            .await
    }

    async fn stats(&self) -> Result<StorageStats> {
        self.read("get_stats", |s| {
            Box::pin(async move { s.get_stats().await })
        })
        .await
    }

    async fn shutdown(&self) -> Result<()> {
        let _writes = self.shared.write_lock.lock().await;
        let mut first_err = None;
        for copy in &self.shared.copies {
            if let Err(e) = copy.backend.close().await {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Every copy is checked; the first failure (after trying all) is returned.
    async fn integrity_check(&self) -> Result<()> {
        self.on_every_copy("check_integrity", |s| {
            Box::pin(async move { s.check_integrity().await })
        })
        .await
    }
}

impl StorageManager {
    /// Maintenance on every copy; the first failure (after trying all) is returned.
    async fn on_every_copy(
        &self,
        op: &'static str,
        call: impl Fn(Arc<dyn StorageBackend>) -> OpFuture<()>,
    ) -> Result<()> {
        self.check_open()?;
        let _writes = self.shared.write_lock.lock().await;
        let timeout = self.shared.config.replica_timeout * 10;
        let mut first_err = None;
        for copy in &self.shared.copies {
            if let Err(e) = with_timeout(timeout, op, call(copy.backend.clone())).await {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}
