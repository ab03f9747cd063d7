//! Fault injection: damage bytes in files ([`flip_in_file`]) and make calls fail,
//! hang or recover ([`FaultyBackend`]).

use std::path::Path;

use storage_core::StorageError;

/// Flips one bit in the middle of every occurrence of `needle` in the file at
/// `path` (e.g. a block's payload inside a database file). Returns how many
/// occurrences were damaged; an absent needle is an error, so a fixture never
/// silently damages nothing.
pub fn flip_in_file(path: &Path, needle: &[u8]) -> Result<usize, StorageError> {
    if needle.is_empty() {
        return Err(StorageError::InvalidInput("nothing to search for".into()));
    }
    let mut bytes = std::fs::read(path)
        .map_err(|e| StorageError::io(format!("reading {}", path.display()), e))?;
    let hits: Vec<usize> = bytes
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect();
    if hits.is_empty() {
        return Err(StorageError::InvalidInput(format!(
            "{} does not contain the bytes to damage",
            path.display()
        )));
    }
    for at in &hits {
        bytes[at + needle.len() / 2] ^= 0x01;
    }
    std::fs::write(path, bytes)
        .map_err(|e| StorageError::io(format!("writing {}", path.display()), e))?;
    Ok(hits.len())
}

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use storage_core::{
    Block, BlockHash, BlockMetadata, ListOptions, Result, StorageBackend, StorageStats, async_trait,
};

/// The usual corruption hook of a file-backed fixture: reads block `hash`, closes
/// and drops the store (so everything is on disk), then flips a byte in the middle
/// of the block's payload in every file `files()` lists (called after the close).
/// Fails if no file held the payload, so a fixture never silently damages nothing.
/// The caller reopens the store afterwards.
pub async fn close_and_damage(
    store: Arc<dyn StorageBackend>,
    hash: &BlockHash,
    files: impl FnOnce() -> Vec<PathBuf>,
) -> Result<usize> {
    let block = store
        .retrieve_block(hash)
        .await?
        .ok_or(StorageError::BlockNotFound { hash: *hash })?;
    store.close().await?;
    drop(store);
    let damaged: usize = files()
        .iter()
        .map(|f| flip_in_file(f, block.payload()).unwrap_or(0))
        .sum();
    if damaged == 0 {
        return Err(StorageError::InvalidInput(format!(
            "the payload of block {hash} is in none of the listed files"
        )));
    }
    Ok(damaged)
}

/// How a [`FaultyBackend`] behaves right now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FaultMode {
    /// Every call goes through.
    Healthy,
    /// Every call fails with a transient backend error ("down").
    FailAll,
    /// This fraction of calls (0.0..=1.0) fails, chosen by a seeded generator.
    FailFraction(f64),
    /// Every call waits forever (until the caller's timeout gives up).
    Hang,
    /// Calls of these operations (trait methods' names) fail; others go through.
    FailOps(&'static [&'static str]),
    /// Every call first blocks a thread for this long, the way a stalled disk
    /// blocks a disk backend: through the same blocking-call path, so inline (the
    /// default) it holds the caller's worker thread and a surrounding timeout
    /// cannot fire, while under `Execution::BlockingPool` it holds a pool thread
    /// and the timeout fires on time. Then the call goes through.
    Stall(std::time::Duration),
    /// Range reads also return the block just past the range's end, as a store
    /// that mishandles its end bound would; other calls go through.
    RangeOverreach,
}

/// A pause point set with [`FaultyBackend::pause`]: calls of one operation wait
/// here, before reaching the wrapped backend, until the test lets them through.
/// Waiting calls pass in the order they arrived.
#[derive(Debug)]
pub struct PausePoint {
    /// Calls that arrived so far; each takes the next ticket.
    arrived: tokio::sync::watch::Sender<u64>,
    /// Tickets below this may pass.
    released: tokio::sync::watch::Sender<u64>,
    /// Arrivals the test has waited for with [`PausePoint::arrived`].
    seen: AtomicU64,
}

impl Default for PausePoint {
    fn default() -> Self {
        Self {
            arrived: tokio::sync::watch::Sender::new(0),
            released: tokio::sync::watch::Sender::new(0),
            seen: AtomicU64::new(0),
        }
    }
}

impl PausePoint {
    /// Waits until one more call has arrived at this point (and is waiting).
    pub async fn arrived(&self) {
        let want = self.seen.fetch_add(1, Ordering::SeqCst) + 1;
        let mut rx = self.arrived.subscribe();
        // The sender lives as long as `self`, so waiting cannot fail.
        let _ = rx.wait_for(|n| *n >= want).await;
    }

    /// Lets `n` more calls through, in the order they arrived (calls that arrive
    /// later use up what is left).
    pub fn release(&self, n: usize) {
        self.released.send_modify(|r| *r += n as u64);
    }

    async fn wait(&self) {
        let mut ticket = 0;
        self.arrived.send_modify(|n| {
            ticket = *n;
            *n += 1;
        });
        let mut rx = self.released.subscribe();
        let _ = rx.wait_for(|r| *r > ticket).await;
    }
}

/// A wrapper that injects failures into any backend: fail everything, fail a
/// fraction of calls, hang, and come back — switched at run time with
/// [`FaultyBackend::set_mode`]. Injected errors are transient `Backend` errors.
///
/// It also holds calls at pause points ([`FaultyBackend::pause`]), so a test can
/// start several calls and decide the order in which they reach the backend, or
/// release them together.
#[derive(Debug)]
pub struct FaultyBackend {
    inner: Arc<dyn StorageBackend>,
    mode: Mutex<FaultMode>,
    rng: AtomicU64,
    injected: AtomicU64,
    paused: Mutex<Vec<(&'static str, Arc<PausePoint>)>>,
    execution: storage_core::Execution,
}

impl FaultyBackend {
    /// Wraps `inner`, initially healthy; `seed` drives `FailFraction`.
    pub fn new(inner: Arc<dyn StorageBackend>, seed: u64) -> Self {
        Self {
            inner,
            mode: Mutex::new(FaultMode::Healthy),
            rng: AtomicU64::new(seed | 1),
            injected: AtomicU64::new(0),
            paused: Mutex::new(Vec::new()),
            execution: storage_core::Execution::Inline,
        }
    }

    /// Runs [`FaultMode::Stall`]'s blocking call as a disk backend opened with
    /// `execution` would (inline by default).
    pub fn with_execution(mut self, execution: storage_core::Execution) -> Self {
        self.execution = execution;
        self
    }

    /// Makes every call of `op` (a trait method's name, e.g. `"store_block"`) that
    /// starts from now on wait at the returned point until released, replacing any
    /// earlier point for `op`.
    pub fn pause(&self, op: &'static str) -> Arc<PausePoint> {
        let point = Arc::new(PausePoint::default());
        let mut paused = self
            .paused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        paused.retain(|(o, _)| *o != op);
        paused.push((op, point.clone()));
        point
    }

    /// Calls of `op` that start from now on no longer wait.
    pub fn unpause(&self, op: &str) {
        self.paused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|(o, _)| *o != op);
    }

    /// Switches behaviour; takes effect for calls that start afterwards.
    pub fn set_mode(&self, mode: FaultMode) {
        *self
            .mode
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = mode;
    }

    /// The wrapped backend (bypasses fault injection).
    pub fn inner(&self) -> &Arc<dyn StorageBackend> {
        &self.inner
    }

    /// How many calls failed or hung by injection so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }

    /// Waits at `op`'s pause point, then injects the current mode's fault;
    /// returns the mode the call went through under.
    async fn gate(&self, op: &str) -> Result<FaultMode> {
        let point = self
            .paused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .find(|(o, _)| *o == op)
            .map(|(_, p)| p.clone());
        if let Some(point) = point {
            point.wait().await;
        }
        let mode = *self
            .mode
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let fail = match mode {
            FaultMode::Healthy | FaultMode::RangeOverreach => false,
            FaultMode::FailAll => true,
            FaultMode::FailOps(ops) => ops.contains(&op),
            FaultMode::FailFraction(p) => {
                // xorshift64*: deterministic per seed, shared across calls.
                let mut x = self.rng.load(Ordering::SeqCst);
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                self.rng.store(x, Ordering::SeqCst);
                let r = (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64;
                r < p
            }
            FaultMode::Hang => {
                self.injected.fetch_add(1, Ordering::SeqCst);
                std::future::pending::<()>().await;
                unreachable!("pending never completes")
            }
            FaultMode::Stall(pause) => {
                self.injected.fetch_add(1, Ordering::SeqCst);
                storage_core::raw::run_blocking("faulty", self.execution, move || {
                    std::thread::sleep(pause);
                    Ok(())
                })
                .await?;
                false
            }
        };
        if fail {
            self.injected.fetch_add(1, Ordering::SeqCst);
            return Err(StorageError::backend_msg(
                "faulty",
                format!("{op}: injected fault"),
                storage_core::ErrorStatus::Temporary,
            ));
        }
        Ok(mode)
    }
}

#[async_trait]
impl StorageBackend for FaultyBackend {
    fn backend_name(&self) -> &str {
        self.inner.backend_name()
    }
    fn capabilities(&self) -> storage_core::Capabilities {
        self.inner.capabilities()
    }
    async fn store_block(&self, block: &Block) -> Result<BlockHash> {
        self.gate("store_block").await?;
        self.inner.store_block(block).await
    }
    async fn retrieve_block(&self, hash: &BlockHash) -> Result<Option<Block>> {
        self.gate("retrieve_block").await?;
        self.inner.retrieve_block(hash).await
    }
    async fn delete_block(&self, hash: &BlockHash) -> Result<bool> {
        self.gate("delete_block").await?;
        self.inner.delete_block(hash).await
    }
    async fn block_exists(&self, hash: &BlockHash) -> Result<bool> {
        self.gate("block_exists").await?;
        self.inner.block_exists(hash).await
    }
    async fn store_blocks(&self, blocks: &[Block]) -> Result<Vec<BlockHash>> {
        self.gate("store_blocks").await?;
        self.inner.store_blocks(blocks).await
    }
    async fn retrieve_blocks(&self, hashes: &[BlockHash]) -> Result<Vec<Option<Block>>> {
        self.gate("retrieve_blocks").await?;
        self.inner.retrieve_blocks(hashes).await
    }
    async fn list_blocks(&self, options: &ListOptions) -> Result<Vec<BlockMetadata>> {
        self.gate("list_blocks").await?;
        self.inner.list_blocks(options).await
    }
    async fn count_blocks(&self) -> Result<u64> {
        self.gate("count_blocks").await?;
        self.inner.count_blocks().await
    }
    async fn get_chain_head(&self) -> Result<Option<BlockHash>> {
        self.gate("get_chain_head").await?;
        self.inner.get_chain_head().await
    }
    async fn set_chain_head(&self, hash: &BlockHash) -> Result<()> {
        self.gate("set_chain_head").await?;
        self.inner.set_chain_head(hash).await
    }
    async fn get_blocks_by_range(&self, start: u64, end: u64) -> Result<Vec<Block>> {
        let end = match self.gate("get_blocks_by_range").await? {
            FaultMode::RangeOverreach => end.saturating_add(1),
            _ => end,
        };
        self.inner.get_blocks_by_range(start, end).await
    }
    async fn compact(&self) -> Result<()> {
        self.gate("compact").await?;
        self.inner.compact().await
    }
    async fn vacuum(&self) -> Result<()> {
        self.gate("vacuum").await?;
        self.inner.vacuum().await
    }
    async fn get_stats(&self) -> Result<StorageStats> {
        self.gate("get_stats").await?;
        self.inner.get_stats().await
    }
    async fn close(&self) -> Result<()> {
        self.gate("close").await?;
        self.inner.close().await
    }
    async fn check_integrity(&self) -> Result<()> {
        self.gate("check_integrity").await?;
        self.inner.check_integrity().await
    }
}
