//! Running blocking engine calls (disk I/O, embedded databases) from async code
//! without stalling the runtime, inline or on the blocking pool.

use crate::{Result, StorageError};

/// Where a disk backend runs its blocking engine calls. Chosen when the store is
/// opened; [`Execution::scope`] overrides it for the calls made inside a future.
///
/// **Cancellation.** Dropping a store call's future (a `tokio::time::timeout`
/// that fires, a `select!` that picks another branch) abandons the wait, never
/// the engine work: a call already handed to the engine finishes in the
/// background, all of it or none of it as the store's contract says (a write
/// is either stored completely or not at all), and `close` waits for it before
/// releasing files. Whether the drop can happen *during* the blocking call
/// depends on the mode:
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Execution {
    /// On the calling worker thread (`block_in_place` on a multi-thread runtime;
    /// the blocking pool on a current-thread runtime, which has no other worker).
    /// No thread hop, the fastest; but while the call blocks, nothing on that
    /// worker runs, so a surrounding timeout cannot fire until it returns.
    #[default]
    Inline,
    /// On tokio's blocking pool, the caller awaiting it: a thread hop per call
    /// (tens of microseconds), and a surrounding timeout fires on time even if
    /// the engine stalls.
    BlockingPool,
}

tokio::task_local! {
    static FORCED: Execution;
}

impl Execution {
    /// Runs `fut` with every blocking call of every backend it reaches made in
    /// this mode, whatever the stores were opened with: how the replication
    /// manager makes its per-copy timeouts fire.
    pub async fn scope<F: std::future::Future>(self, fut: F) -> F::Output {
        FORCED.scope(self, fut).await
    }

    /// The mode in force for a store opened with `self`: a surrounding
    /// [`Execution::scope`] wins.
    pub fn effective(self) -> Self {
        FORCED.try_with(|forced| *forced).unwrap_or(self)
    }
}

/// Runs `f`, a blocking call, without stalling the async runtime, in the mode
/// given (see [`Execution`]). `backend` names the caller in the error if the
/// blocking task dies.
///
/// Inline on a multi-thread runtime costs 36 ns against 31 µs for a
/// `spawn_blocking` round trip (measured on our 2-core machines).
pub async fn run_blocking<T: Send + 'static>(
    backend: &'static str,
    execution: Execution,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    if execution.effective() == Execution::Inline
        && Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread)
    {
        return tokio::task::block_in_place(f);
    }
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        StorageError::backend(
            backend,
            "running a blocking call",
            crate::ErrorStatus::Permanent,
            e,
        )
    })?
}

/// Waits (blocking, polling every millisecond) until `shared` has no other owner,
/// then returns the value: how `close` waits for calls still running on a store
/// before releasing its files and locks. Fails with [`StorageError::Timeout`]
/// after `timeout`.
pub fn wait_for_sole_owner<T>(
    shared: std::sync::Arc<T>,
    backend: &str,
    timeout: std::time::Duration,
) -> Result<T> {
    let deadline = std::time::Instant::now() + timeout;
    let mut shared = shared;
    loop {
        match std::sync::Arc::try_unwrap(shared) {
            Ok(owned) => return Ok(owned),
            Err(still) if std::time::Instant::now() < deadline => {
                shared = still;
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(_) => {
                return Err(StorageError::Timeout {
                    operation: format!("{backend} close (calls still running)"),
                    after: timeout,
                });
            }
        }
    }
}

/// A backend's engine, shared by its calls until `close` takes it away: each call
/// gets the engine or [`StorageError::Closed`], and runs blocking work on it
/// with [`run_blocking`].
pub struct OpenHandle<T> {
    backend: &'static str,
    execution: Execution,
    slot: std::sync::RwLock<Option<std::sync::Arc<T>>>,
}

impl<T> std::fmt::Debug for OpenHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let open = self
            .slot
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some();
        f.debug_struct("OpenHandle")
            .field("backend", &self.backend)
            .field("execution", &self.execution)
            .field("open", &open)
            .finish()
    }
}

impl<T: Send + Sync + 'static> OpenHandle<T> {
    /// A handle to an open `engine` of the named backend, running blocking work
    /// as `execution` says.
    pub fn new(backend: &'static str, engine: std::sync::Arc<T>, execution: Execution) -> Self {
        Self {
            backend,
            execution,
            slot: std::sync::RwLock::new(Some(engine)),
        }
    }

    /// Where blocking work runs.
    pub fn execution(&self) -> Execution {
        self.execution
    }

    /// The engine, or [`StorageError::Closed`].
    pub fn get(&self) -> Result<std::sync::Arc<T>> {
        self.slot
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .ok_or_else(|| StorageError::closed(self.backend))
    }

    /// Runs blocking `f` on the engine without stalling the runtime.
    pub async fn with<R: Send + 'static>(
        &self,
        f: impl FnOnce(&T) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let engine = self.get()?;
        run_blocking(self.backend, self.execution, move || f(&engine)).await
    }

    /// Takes the engine away (for `close`); later calls fail with
    /// [`StorageError::Closed`]. `None` if it was already taken.
    pub fn take(&self) -> Option<std::sync::Arc<T>> {
        self.slot
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

/// Runs `tick` on `target` every `every`, on a thread named `name`, for as
/// long as `target` lives and `tick` returns `true`. The thread holds
/// `target` only while `tick` runs, so dropping or closing the owner is never
/// held back by more than one tick. For background work such as a periodic
/// log sync.
pub fn spawn_periodic<T: Send + Sync + 'static>(
    name: &str,
    every: std::time::Duration,
    target: std::sync::Weak<T>,
    mut tick: impl FnMut(&T) -> bool + Send + 'static,
) -> Result<()> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            loop {
                std::thread::sleep(every);
                let Some(t) = target.upgrade() else { return };
                if !tick(&t) {
                    return;
                }
            }
        })
        .map(drop)
        .map_err(|e| StorageError::io(format!("starting the {name} thread"), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn multi_thread() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap()
    }

    /// Runs `f` as a task on a worker of a two-worker runtime.
    fn on_worker(f: impl std::future::Future<Output = ()> + Send + 'static) {
        multi_thread().block_on(async { tokio::spawn(f).await.unwrap() });
    }

    fn stall(d: Duration) -> impl FnOnce() -> Result<std::thread::ThreadId> + Send + 'static {
        move || {
            std::thread::sleep(d);
            Ok(std::thread::current().id())
        }
    }

    #[test]
    fn inline_runs_on_the_caller_and_a_scope_moves_it_to_the_pool() {
        on_worker(async {
            let here = std::thread::current().id();
            let inline = run_blocking("t", Execution::Inline, stall(Duration::ZERO));
            assert_eq!(inline.await.unwrap(), here);
            let pooled = run_blocking("t", Execution::BlockingPool, stall(Duration::ZERO));
            assert_ne!(pooled.await.unwrap(), here);
            let forced = Execution::BlockingPool.scope(async {
                let here = std::thread::current().id();
                let id = run_blocking("t", Execution::Inline, stall(Duration::ZERO)).await;
                (here, id.unwrap())
            });
            let (here, ran) = forced.await;
            assert_ne!(ran, here);
        });
    }

    #[test]
    fn a_timeout_fires_during_a_stall_only_on_the_pool() {
        on_worker(async {
            let limit = Duration::from_millis(50);
            let stalled = Duration::from_millis(600);
            let started = Instant::now();
            let pooled = tokio::time::timeout(
                limit,
                run_blocking("t", Execution::BlockingPool, stall(stalled)),
            )
            .await;
            assert!(pooled.is_err(), "the timeout fired");
            assert!(started.elapsed() < stalled, "{:?}", started.elapsed());
            // Inline, the stall holds the worker: the call completes first.
            let inline =
                tokio::time::timeout(limit, run_blocking("t", Execution::Inline, stall(stalled)))
                    .await;
            assert!(inline.is_ok(), "inline cannot be interrupted");
        });
    }
}
