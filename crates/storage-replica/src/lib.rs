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
    Block, BlockHash, BlockMetadata, Capabilities, ErrorKind, ErrorStatus, Execution, ListOptions,
    Result, StorageBackend, StorageError, StorageStats,
};
use tokio::sync::mpsc;

mod engine;
mod fanout;
mod health;
mod repair;

use fanout::{join_all_spawned, with_timeout};

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
#[non_exhaustive]
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
    /// A manager over a primary and replicas, with the configuration checked.
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

    /// Stores one block under the consistency level.
    pub async fn store_with_replication(&self, block: &Block) -> Result<BlockHash> {
        self.store_block(block).await
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
}

storage_core::setters!(StorageManagerConfig {
    replication_factor: u32,
    consistency_level: ConsistencyLevel,
    health_check_interval: Duration,
    auto_failover: bool,
    sync_writes: bool,
    replica_timeout: Duration,
});

// The README's examples are compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
