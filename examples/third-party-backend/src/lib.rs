//! `LogBackend`: a deliberately simple persistent backend written only against the
//! public `storage-core` API, as a third-party author would. Every change is one
//! line appended to a log file; opening replays the log.
//!
//! Log lines: `P <block as one-line JSON wire format>`, `D <hash>`, `H <hash>`. A
//! batch is written with one `write_all`, and a torn last line (a crash mid-write)
//! is ignored on replay. Writes are flushed to the OS before they are acknowledged,
//! so they survive a process crash (not a power loss: there is no fsync).
//!
//! It implements `storage_core::raw::Engine`, the engine work only, and decides
//! which blocks of a write are new with `storage_core::raw::admit`, the admission
//! rule every backend shares. The layer those come with makes it a
//! `StorageBackend`: one tracing span per call, refusal after `close`, argument
//! checks and error context, exactly as for the workspace's own backends.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use storage_core::raw::{Engine, Gate};
use storage_core::{
    BackendStats, Block, BlockHash, BlockMetadata, Capabilities, ListOptions, Result, StorageError,
    StorageStats, WireFormat,
};

const NAME: &str = "log";

#[derive(Debug, Default)]
struct Inner {
    file: Option<File>,
    by_index: BTreeMap<u64, Block>,
    index_of: HashMap<BlockHash, u64>,
    head: Option<BlockHash>,
}

enum Change {
    Put(Vec<Block>),
    Delete(BlockHash),
    Head(BlockHash),
}

/// The log-file backend. All methods take `&self`; file I/O runs on tokio's
/// blocking pool.
#[derive(Debug, Clone)]
pub struct LogBackend {
    path: PathBuf,
    inner: Arc<Mutex<Inner>>,
    /// Shared by clones: closing one closes them all.
    gate: Arc<Gate>,
}

impl LogBackend {
    /// Opens (creating if needed) the log at `path` and replays it.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let p = path.clone();
        let inner = tokio::task::spawn_blocking(move || replay(&p))
            .await
            .map_err(|e| StorageError::Encoding(format!("replay task failed: {e}")))??;
        Ok(Self {
            path,
            inner: Arc::new(Mutex::new(inner)),
            gate: Arc::new(Gate::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Validates under the lock, appends the record, then applies the change: a
    /// failed write leaves memory and file as they were.
    async fn mutate<T: Send + 'static>(
        &self,
        plan: impl FnOnce(&Inner) -> Result<(T, Option<Change>)> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut g = inner.lock().unwrap_or_else(PoisonError::into_inner);
            // A write whose caller gave up can still be running here after close.
            if g.file.is_none() {
                return Err(StorageError::closed(NAME));
            }
            let (out, change) = plan(&g)?;
            if let Some(change) = change {
                let record = encode(&change)?;
                let file = g.file.as_mut().expect("checked open");
                file.write_all(&record)
                    .and_then(|_| file.flush())
                    .map_err(|e| StorageError::io(format!("appending to {}", path.display()), e))?;
                apply(&mut g, change);
            }
            Ok(out)
        })
        .await
        .map_err(|e| StorageError::Encoding(format!("write task failed: {e}")))?
    }
}

fn encode(change: &Change) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    match change {
        Change::Put(blocks) => {
            for b in blocks {
                out.extend_from_slice(b"P ");
                out.extend_from_slice(&WireFormat::JSON.encode(b)?);
                out.push(b'\n');
            }
        }
        Change::Delete(h) => out.extend_from_slice(format!("D {h}\n").as_bytes()),
        Change::Head(h) => out.extend_from_slice(format!("H {h}\n").as_bytes()),
    }
    Ok(out)
}

fn apply(g: &mut Inner, change: Change) {
    match change {
        Change::Put(blocks) => {
            for b in blocks {
                g.index_of.insert(b.hash(), b.index());
                g.by_index.insert(b.index(), b);
            }
        }
        Change::Delete(h) => {
            if let Some(i) = g.index_of.remove(&h) {
                g.by_index.remove(&i);
            }
            if g.head == Some(h) {
                g.head = None;
            }
        }
        Change::Head(h) => g.head = Some(h),
    }
}

fn replay(path: &Path) -> Result<Inner> {
    let io = |what: &str, e| StorageError::io(format!("{what} {}", path.display()), e);
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io("reading", e)),
    };
    let mut inner = Inner::default();
    // Only complete lines count: a torn tail is an unacknowledged write.
    let complete = data.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
    for (n, line) in data[..complete]
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        let bad = || StorageError::corrupted(format!("{} line {}", path.display(), n + 1));
        let (tag, rest) = line.split_at_checked(2).ok_or_else(bad)?;
        let hash = || -> Result<BlockHash> {
            std::str::from_utf8(rest)
                .map_err(|_| bad())?
                .parse()
                .map_err(|_| bad())
        };
        let change = match tag {
            b"P " => Change::Put(vec![WireFormat::JSON.decode(rest)?]),
            b"D " => Change::Delete(hash()?),
            b"H " => Change::Head(hash()?),
            _ => return Err(bad()),
        };
        apply(&mut inner, change);
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io("opening", e))?;
    if complete < data.len() {
        // Drop the torn tail so the next append starts on a fresh line.
        file.set_len(complete as u64)
            .map_err(|e| io("truncating", e))?;
    }
    inner.file = Some(file);
    Ok(inner)
}

/// The blocks of a write that are new. The admission rule (idempotent repeats,
/// index conflicts, hash links) is the shared one every backend uses; a backend
/// only says how to read its own store.
fn check_put(g: &Inner, blocks: &[Block]) -> Result<Vec<Block>> {
    let fresh = storage_core::raw::admit(
        blocks,
        &mut storage_core::raw::ChainViewFn(
            |i| Ok(g.by_index.get(&i).map(Block::hash)),
            |i| Ok(g.by_index.get(&i).map(|b| b.previous_hash().copied())),
        ),
    )?;
    Ok(fresh.into_iter().map(|p| blocks[p].clone()).collect())
}

/// The engine work only: spans, refusing calls after close, argument checks and
/// error context come from the layer every backend is built on, so this type is
/// a `StorageBackend` without implementing that trait itself.
impl Engine for LogBackend {
    fn name(&self) -> &str {
        NAME
    }

    fn gate(&self) -> &Gate {
        &self.gate
    }

    fn supported(&self) -> Capabilities {
        // Every write is appended to the log and synced before it is applied.
        Capabilities::new().persistent().atomic_batches()
    }

    async fn write_blocks(&self, blocks: &[Block]) -> Result<()> {
        let blocks = blocks.to_vec();
        self.mutate(move |g| {
            let fresh = check_put(g, &blocks)?;
            Ok(((), (!fresh.is_empty()).then_some(Change::Put(fresh))))
        })
        .await
    }

    async fn read_block(&self, hash: &BlockHash) -> Result<Option<Block>> {
        let g = self.lock();
        Ok(g.index_of.get(hash).map(|i| g.by_index[i].clone()))
    }

    async fn remove_block(&self, hash: &BlockHash) -> Result<bool> {
        let h = *hash;
        self.mutate(move |g| {
            Ok(if g.index_of.contains_key(&h) {
                (true, Some(Change::Delete(h)))
            } else {
                (false, None)
            })
        })
        .await
    }

    async fn has_block(&self, hash: &BlockHash) -> Result<bool> {
        Ok(self.lock().index_of.contains_key(hash))
    }

    async fn read_blocks(&self, hashes: &[BlockHash]) -> Result<Vec<Option<Block>>> {
        let g = self.lock();
        Ok(hashes
            .iter()
            .map(|h| g.index_of.get(h).map(|i| g.by_index[i].clone()))
            .collect())
    }

    async fn list(&self, options: &ListOptions) -> Result<Vec<BlockMetadata>> {
        // The reference semantics from storage-core: simple and always right.
        let g = self.lock();
        Ok(options.apply(g.by_index.values().map(BlockMetadata::of)))
    }

    async fn count(&self) -> Result<u64> {
        Ok(self.lock().by_index.len() as u64)
    }

    async fn head(&self) -> Result<Option<BlockHash>> {
        Ok(self.lock().head)
    }

    async fn write_head(&self, hash: &BlockHash) -> Result<()> {
        let h = *hash;
        self.mutate(move |g| {
            if !g.index_of.contains_key(&h) {
                return Err(StorageError::BlockNotFound { hash: h });
            }
            Ok(((), Some(Change::Head(h))))
        })
        .await
    }

    async fn read_range(&self, start: u64, end: u64) -> Result<Vec<Block>> {
        Ok(self
            .lock()
            .by_index
            .range(start..=end)
            .map(|(_, b)| b.clone())
            .collect())
    }

    async fn run_compaction(&self) -> Result<()> {
        // A real backend would rewrite the log without deleted blocks.
        Ok(())
    }

    async fn run_vacuum(&self) -> Result<()> {
        Err(StorageError::unsupported(NAME, "vacuum"))
    }

    async fn stats(&self) -> Result<StorageStats> {
        let g = self.lock();
        let metas: Vec<BlockMetadata> = g.by_index.values().map(BlockMetadata::of).collect();
        let file_len = g
            .file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len());
        Ok(StorageStats {
            total_blocks: metas.len() as u64,
            total_size_bytes: metas.iter().map(|m| m.size_bytes).sum(),
            oldest_block: metas.iter().map(|m| m.timestamp).min(),
            newest_block: metas.iter().map(|m| m.timestamp).max(),
            backend_specific: BackendStats::Other {
                backend: NAME.into(),
                values: [("log_bytes".to_string(), file_len as f64)].into(),
            },
        })
    }

    async fn shutdown(&self) -> Result<()> {
        // Drops the file and the replayed state.
        *self.lock() = Inner::default();
        Ok(())
    }
}
