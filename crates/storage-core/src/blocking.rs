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

/// How many calls hold an engine, so `close` can sleep until the last one
/// lets go instead of polling for it. The count is atomic (a call pays no
/// lock); the mutex and condvar are only for waking `close`.
#[derive(Debug, Default)]
struct Holders {
    count: std::sync::atomic::AtomicUsize,
    lock: std::sync::Mutex<()>,
    released: std::sync::Condvar,
}

impl Holders {
    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn add(&self) {
        self.count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    fn release(&self) {
        if self.count.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
            // Under the lock, so a `close` between its check and its wait
            // cannot miss this.
            let _held = self.lock();
            self.released.notify_all();
        }
    }

    fn held(&self) -> bool {
        self.count.load(std::sync::atomic::Ordering::Acquire) > 0
    }
}

/// A call's hold on an open engine (from [`OpenHandle::get`]): it derefs to
/// the engine, and closing the store waits until every lease is dropped.
pub struct Lease<T> {
    engine: std::sync::Arc<T>,
    holders: std::sync::Arc<Holders>,
}

impl<T> Lease<T> {
    /// Counts a new holder of `engine`; the caller holds the lock that keeps
    /// `close` from taking the engine meanwhile.
    fn new(engine: std::sync::Arc<T>, holders: &std::sync::Arc<Holders>) -> Self {
        holders.add();
        Self {
            engine,
            holders: holders.clone(),
        }
    }
}

impl<T> std::ops::Deref for Lease<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.engine
    }
}

impl<T> Clone for Lease<T> {
    fn clone(&self) -> Self {
        Self::new(self.engine.clone(), &self.holders)
    }
}

impl<T> Drop for Lease<T> {
    fn drop(&mut self) {
        self.holders.release();
    }
}

impl<T> std::fmt::Debug for Lease<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").finish_non_exhaustive()
    }
}

/// A hold on an engine that does not keep it open (for background threads):
/// [`WeakLease::upgrade`] gives a [`Lease`] while the store is open.
pub struct WeakLease<T> {
    engine: std::sync::Weak<T>,
    holders: std::sync::Arc<Holders>,
}

impl<T> WeakLease<T> {
    /// A lease on the engine, or `None` once the store is closed. (While
    /// `close` waits for running calls, a lease taken here is one more it
    /// waits for.)
    pub fn upgrade(&self) -> Option<Lease<T>> {
        // Under the holders' lock, so `close` (which unwraps the engine under
        // the same lock once no lease is out) never races an upgrade.
        let held = self.holders.lock();
        let engine = self.engine.upgrade()?;
        self.holders.add();
        drop(held);
        Some(Lease {
            engine,
            holders: self.holders.clone(),
        })
    }
}

impl<T> std::fmt::Debug for WeakLease<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeakLease").finish_non_exhaustive()
    }
}

/// An engine taken from its [`OpenHandle`] by `close`: it derefs to the engine
/// (to flush it while calls may still be finishing), and
/// [`Closing::wait`] returns it owned once the last call has let go.
pub struct Closing<T> {
    backend: &'static str,
    engine: std::sync::Arc<T>,
    holders: std::sync::Arc<Holders>,
}

impl<T> std::ops::Deref for Closing<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.engine
    }
}

impl<T> std::fmt::Debug for Closing<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Closing")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl<T> Closing<T> {
    /// Blocks until no call holds the engine any more (woken by the last one
    /// to let go, not by polling), then returns it: how `close` makes sure
    /// files and locks are released when it returns. Fails with
    /// [`StorageError::Timeout`] after `timeout`, leaving the engine to be
    /// dropped by its last holder.
    pub fn wait(self, timeout: std::time::Duration) -> Result<T> {
        let held = self.holders.lock();
        let (held, waited) = self
            .holders
            .released
            .wait_timeout_while(held, timeout, |()| self.holders.held())
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if waited.timed_out() {
            return Err(StorageError::Timeout {
                operation: format!("{} close (calls still running)", self.backend),
                after: timeout,
            });
        }
        // Every other strong reference is a lease, and none is out: this is
        // the only one. The holders' lock keeps a weak lease from upgrading.
        let owned = std::sync::Arc::try_unwrap(self.engine).map_err(|_| {
            StorageError::backend(
                self.backend,
                "closing",
                crate::ErrorStatus::Permanent,
                "the engine is still referenced outside its leases",
            )
        });
        drop(held);
        owned
    }
}

/// A backend's engine, shared by its calls until `close` takes it away: each call
/// gets a [`Lease`] on the engine or [`StorageError::Closed`], and runs blocking
/// work on it with [`run_blocking`].
pub struct OpenHandle<T> {
    backend: &'static str,
    execution: Execution,
    slot: std::sync::RwLock<Option<std::sync::Arc<T>>>,
    holders: std::sync::Arc<Holders>,
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
    pub fn new(backend: &'static str, engine: T, execution: Execution) -> Self {
        Self {
            backend,
            execution,
            slot: std::sync::RwLock::new(Some(std::sync::Arc::new(engine))),
            holders: std::sync::Arc::default(),
        }
    }

    /// Where blocking work runs.
    pub fn execution(&self) -> Execution {
        self.execution
    }

    /// A lease on the engine, or [`StorageError::Closed`].
    pub fn get(&self) -> Result<Lease<T>> {
        // Counted while the slot is read-locked, so `take` cannot slip in
        // between and miss this holder.
        let slot = self
            .slot
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let engine = slot
            .as_ref()
            .ok_or_else(|| StorageError::closed(self.backend))?;
        Ok(Lease::new(engine.clone(), &self.holders))
    }

    /// A hold that does not keep the engine open, for background work; `None`
    /// if the store is closed.
    pub fn weak(&self) -> Option<WeakLease<T>> {
        let slot = self
            .slot
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        slot.as_ref().map(|engine| WeakLease {
            engine: std::sync::Arc::downgrade(engine),
            holders: self.holders.clone(),
        })
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
    pub fn take(&self) -> Option<Closing<T>> {
        let engine = self
            .slot
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()?;
        Some(Closing {
            backend: self.backend,
            engine,
            holders: self.holders.clone(),
        })
    }
}

/// The pauses between attempts at something another party keeps changing (a
/// lost compare-and-swap, a file replaced while opening): exponential from
/// `first`, capped at `most`, jittered so two retriers fall out of step, and
/// at most `attempts` of them (backon's exponential backoff).
pub fn retry_delays(
    first: std::time::Duration,
    most: std::time::Duration,
    attempts: usize,
) -> impl Iterator<Item = std::time::Duration> + Send {
    use backon::BackoffBuilder as _;
    backon::ExponentialBuilder::new()
        .with_min_delay(first)
        .with_max_delay(most)
        .with_max_times(attempts)
        .with_jitter()
        .build()
}

/// The pauses of a read-only open that found the store's files changing
/// under it (a writer beside it compacting): 20 tries, from 5 ms up to
/// 100 ms apart.
pub fn read_only_open_delays() -> impl Iterator<Item = std::time::Duration> + Send {
    retry_delays(
        std::time::Duration::from_millis(5),
        std::time::Duration::from_millis(100),
        20,
    )
}

/// Something a background thread holds without keeping it alive: a
/// [`std::sync::Weak`] or a [`WeakLease`].
pub trait WeakTarget: Send + 'static {
    /// What the thread works on.
    type Target;
    /// A strong hold while it works.
    type Strong: std::ops::Deref<Target = Self::Target>;
    /// The target, if it is still there.
    fn upgrade(&self) -> Option<Self::Strong>;
}

impl<T: Send + Sync + 'static> WeakTarget for std::sync::Weak<T> {
    type Target = T;
    type Strong = std::sync::Arc<T>;

    fn upgrade(&self) -> Option<std::sync::Arc<T>> {
        std::sync::Weak::upgrade(self)
    }
}

impl<T: Send + Sync + 'static> WeakTarget for WeakLease<T> {
    type Target = T;
    type Strong = Lease<T>;

    fn upgrade(&self) -> Option<Lease<T>> {
        WeakLease::upgrade(self)
    }
}

/// Runs `tick` on `target` every `every`, on a thread named `name`, for as
/// long as `target` lives and `tick` returns `true`. The thread holds
/// `target` only while `tick` runs, so dropping or closing the owner is never
/// held back by more than one tick. For background work such as a periodic
/// log sync.
pub fn spawn_periodic<W: WeakTarget>(
    name: &str,
    every: std::time::Duration,
    target: W,
    mut tick: impl FnMut(&W::Target) -> bool + Send + 'static,
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
    fn retry_delays_grow_to_their_cap_and_run_out() {
        let delays: Vec<_> =
            retry_delays(Duration::from_millis(5), Duration::from_millis(40), 6).collect();
        assert_eq!(delays.len(), 6, "{delays:?}");
        // Jitter adds up to the delay itself: each is within [base, 2 * base).
        for (d, base) in delays.iter().zip([5u64, 10, 20, 40, 40, 40]) {
            let base = Duration::from_millis(base);
            assert!(
                *d >= base && *d < base * 2,
                "{d:?} for {base:?}: {delays:?}"
            );
        }
    }

    #[test]
    fn close_sleeps_until_the_last_lease_is_returned() {
        let handle = OpenHandle::new("t", String::from("engine"), Execution::Inline);
        let lease = handle.get().unwrap();
        let weak = handle.weak().unwrap();
        let background = weak.upgrade().expect("open");
        let closing = handle.take().expect("open");
        assert_eq!(handle.get().unwrap_err().kind(), crate::ErrorKind::Closed);
        assert!(handle.weak().is_none());
        // Leases out: the wait times out and says why.
        let err = handle_wait_err(closing, Duration::from_millis(30));
        assert_eq!(err.kind(), crate::ErrorKind::Timeout, "{err}");
        // Taken again from a fresh handle: returned leases wake the waiter.
        let handle = OpenHandle::new("t", String::from("engine"), Execution::Inline);
        let (lease2, clone) = (handle.get().unwrap(), handle.get().unwrap().clone());
        let closing = handle.take().unwrap();
        let started = Instant::now();
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop((lease2, clone));
        });
        let owned = closing.wait(Duration::from_secs(10)).unwrap();
        assert_eq!(owned, "engine");
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(50), "{waited:?}");
        assert!(
            waited < Duration::from_secs(5),
            "woken, not timed out: {waited:?}"
        );
        releaser.join().unwrap();
        // After a timed-out close, the last lease to go drops the engine.
        drop((lease, background));
        assert!(weak.upgrade().is_none(), "the engine outlived its leases");
    }

    fn handle_wait_err(closing: Closing<String>, timeout: Duration) -> StorageError {
        closing.wait(timeout).unwrap_err()
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
