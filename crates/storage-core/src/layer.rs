//! The layer every backend is built on: a backend implements [`Engine`] (the
//! engine work only) and gets [`StorageBackend`] from it, with what every
//! backend must do the same way done once, here:
//!
//! - one `storage_op` span per call (backend, operation, hash / index / count,
//!   outcome, error kind and message);
//! - refusal after `close` ([`StorageError::Closed`]), and `close` waiting for the
//!   calls still running before the engine releases anything;
//! - argument checks: the store's payload limit, `start <= end` for ranges,
//!   empty batches and listings that cannot match anything;
//! - error context: the operation is added to I/O and engine errors.
//!
//! Because the trait comes only from this layer, no caller can reach the engine
//! around it.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use tracing::{Instrument, Span};

use crate::trace::{op_span, record_count, record_hash, record_index, record_outcome};
use crate::{
    Block, BlockHash, BlockMetadata, Capabilities, ListOptions, Result, StorageBackend,
    StorageError, StorageStats,
};

/// The engine work of a backend: what only it can do. Implement this and the
/// type is a [`StorageBackend`]; see the module docs for what the layer adds.
///
/// The layer guarantees to every method: the store is open (no method runs
/// after [`Engine::shutdown`] has begun), arguments are checked (payloads within
/// [`Engine::max_payload_bytes`], `start <= end`, non-empty batches), and the
/// call runs inside its span. Methods return `Send` futures; write them as
/// `async fn`.
///
/// The method names differ from [`StorageBackend`]'s so that both traits can be
/// in scope at once.
pub trait Engine: Send + Sync + fmt::Debug + 'static {
    /// A short name for logs, spans and errors (e.g. `"memory"`).
    fn name(&self) -> &str;

    /// The gate the layer uses to refuse calls after close. Keep one per store.
    fn gate(&self) -> &Gate;

    /// What this store can do; [`StorageBackend::capabilities`]. A store that
    /// reports [`Capabilities::read_only`] has every write refused by the layer
    /// before the engine sees it.
    fn supported(&self) -> Capabilities;

    /// The largest payload this store accepts (at most
    /// [`crate::MAX_PAYLOAD_BYTES`]); larger blocks are refused before
    /// [`Engine::write_blocks`] runs.
    fn max_payload_bytes(&self) -> usize {
        crate::MAX_PAYLOAD_BYTES
    }

    /// Stores the blocks the admission rule ([`crate::raw::admit`], run under the
    /// engine's write lock) finds new; all or nothing where the engine can.
    fn write_blocks(&self, blocks: &[Block]) -> impl Future<Output = Result<()>> + Send;

    /// The block with this hash, checked against it.
    fn read_block(&self, hash: &BlockHash) -> impl Future<Output = Result<Option<Block>>> + Send;

    /// One result per hash, in order.
    fn read_blocks(
        &self,
        hashes: &[BlockHash],
    ) -> impl Future<Output = Result<Vec<Option<Block>>>> + Send;

    /// Deletes a block; clears the head if it was the head.
    fn remove_block(&self, hash: &BlockHash) -> impl Future<Output = Result<bool>> + Send;

    /// Whether the block is stored.
    fn has_block(&self, hash: &BlockHash) -> impl Future<Output = Result<bool>> + Send;

    /// Metadata matching `options` (its matcher is not empty and its limit not
    /// zero).
    fn list(
        &self,
        options: &ListOptions,
    ) -> impl Future<Output = Result<Vec<BlockMetadata>>> + Send;

    /// Number of stored blocks.
    fn count(&self) -> impl Future<Output = Result<u64>> + Send;

    /// The chain head, if set and stored.
    fn head(&self) -> impl Future<Output = Result<Option<BlockHash>>> + Send;

    /// Sets the head to a stored block, or fails with `BlockNotFound`.
    fn write_head(&self, hash: &BlockHash) -> impl Future<Output = Result<()>> + Send;

    /// Blocks with `start <= index <= end` (`start <= end` is checked), ascending.
    fn read_range(&self, start: u64, end: u64) -> impl Future<Output = Result<Vec<Block>>> + Send;

    /// Reorganises storage; see [`StorageBackend::compact`].
    fn run_compaction(&self) -> impl Future<Output = Result<()>> + Send;

    /// Returns free space; see [`StorageBackend::vacuum`].
    fn run_vacuum(&self) -> impl Future<Output = Result<()>> + Send;

    /// Statistics; see [`StorageBackend::get_stats`].
    fn stats(&self) -> impl Future<Output = Result<StorageStats>> + Send;

    /// The engine's own consistency check; see
    /// [`StorageBackend::check_integrity`]. Nothing by default.
    fn integrity_check(&self) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }

    /// Flushes and releases files, locks and connections. Called once, after
    /// every other call through the layer has finished.
    fn shutdown(&self) -> impl Future<Output = Result<()>> + Send;
}

/// Tracks the calls running on a store so that `close` can refuse new ones and
/// wait for the rest. One per store, returned by [`Engine::gate`].
#[derive(Default)]
pub struct Gate {
    /// Calls in flight, plus [`CLOSING`] once close has begun.
    state: AtomicUsize,
    /// Woken when the last call leaves a closing gate.
    idle: tokio::sync::Notify,
    /// Held for the whole of close; `true` once the engine is shut down.
    closed: tokio::sync::Mutex<bool>,
}

const CLOSING: usize = 1 << (usize::BITS - 1);

impl fmt::Debug for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.load(Ordering::Relaxed);
        f.debug_struct("Gate")
            .field("closing", &(state & CLOSING != 0))
            .field("in_flight", &(state & !CLOSING))
            .finish()
    }
}

/// A call admitted through a [`Gate`]; leaving it (drop) lets close go on.
struct Pass<'a>(&'a Gate);

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        self.0.leave();
    }
}

impl Gate {
    /// A gate for an open store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether close has begun.
    pub fn is_closed(&self) -> bool {
        self.state.load(Ordering::Acquire) & CLOSING != 0
    }

    fn enter(&self) -> Option<Pass<'_>> {
        let before = self.state.fetch_add(1, Ordering::AcqRel);
        let pass = Pass(self);
        // Refused after close began; dropping the pass undoes the count.
        (before & CLOSING == 0).then_some(pass)
    }

    fn leave(&self) {
        let before = self.state.fetch_sub(1, Ordering::AcqRel);
        if before == CLOSING | 1 {
            self.idle.notify_one();
        }
    }

    /// Closes the gate, waits for the calls in flight, then runs `shutdown`
    /// once; later closes wait for the first and return `Ok`.
    async fn close(&self, shutdown: impl Future<Output = Result<()>>) -> Result<()> {
        let mut closed = self.closed.lock().await;
        if *closed {
            return Ok(());
        }
        self.state.fetch_or(CLOSING, Ordering::AcqRel);
        while self.state.load(Ordering::Acquire) != CLOSING {
            // `notify_one` keeps a permit when no one waits: no lost wake-up.
            self.idle.notified().await;
        }
        *closed = true;
        shutdown.await
    }
}

/// Runs one operation through the layer: the gate, the span and the error
/// context.
async fn layered<E: Engine, T>(
    engine: &E,
    span: Span,
    op: &'static str,
    work: impl Future<Output = Result<T>>,
) -> Result<T> {
    let mut result = match engine.gate().enter() {
        None => Err(StorageError::closed(engine.name())),
        // With no subscriber listening (the common case) the span is disabled:
        // skip entering it on every poll and recording into it.
        Some(_pass) if span.is_disabled() => work.await,
        Some(_pass) => work.instrument(span.clone()).await,
    };
    // In place: the Ok value (a whole block, say) is not moved again.
    if let Err(e) = &mut result {
        add_operation(e, op);
    }
    if !span.is_disabled() {
        record_outcome(&span, &result);
    }
    result
}

/// Adds the operation to errors whose context is free text (I/O and engine
/// errors); typed errors already say what they are about.
fn add_operation(e: &mut StorageError, op: &'static str) {
    if let StorageError::Io { context, .. } | StorageError::Backend { context, .. } = e {
        *context = format!("{op}: {context}");
    }
}

/// Refuses a write to a store opened read-only.
fn check_writable<E: Engine>(engine: &E, op: &'static str) -> Result<()> {
    if engine.supported().read_only {
        return Err(StorageError::ReadOnly {
            backend: engine.name().to_owned(),
            operation: op.to_owned(),
        });
    }
    Ok(())
}

fn check_range(start: u64, end: u64) -> Result<()> {
    if start > end {
        return Err(StorageError::InvalidInput(format!(
            "range start {start} is greater than end {end}"
        )));
    }
    Ok(())
}

#[async_trait]
impl<E: Engine> StorageBackend for E {
    fn backend_name(&self) -> &str {
        self.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.supported()
    }

    async fn store_block(&self, block: &Block) -> Result<BlockHash> {
        let span = op_span(self.name(), "store_block");
        record_hash(&span, &block.hash());
        record_index(&span, block.index());
        layered(self, span, "store_block", async {
            check_writable(self, "store_block")?;
            crate::raw::check_payload_limit(std::slice::from_ref(block), self.max_payload_bytes())?;
            self.write_blocks(std::slice::from_ref(block)).await?;
            Ok(block.hash())
        })
        .await
    }

    async fn retrieve_block(&self, hash: &BlockHash) -> Result<Option<Block>> {
        let span = op_span(self.name(), "retrieve_block");
        record_hash(&span, hash);
        layered(self, span, "retrieve_block", self.read_block(hash)).await
    }

    async fn delete_block(&self, hash: &BlockHash) -> Result<bool> {
        let span = op_span(self.name(), "delete_block");
        record_hash(&span, hash);
        layered(self, span, "delete_block", async {
            check_writable(self, "delete_block")?;
            self.remove_block(hash).await
        })
        .await
    }

    async fn block_exists(&self, hash: &BlockHash) -> Result<bool> {
        let span = op_span(self.name(), "block_exists");
        record_hash(&span, hash);
        layered(self, span, "block_exists", self.has_block(hash)).await
    }

    async fn store_blocks(&self, blocks: &[Block]) -> Result<Vec<BlockHash>> {
        let span = op_span(self.name(), "store_blocks");
        record_count(&span, blocks.len());
        layered(self, span, "store_blocks", async {
            check_writable(self, "store_blocks")?;
            crate::raw::check_payload_limit(blocks, self.max_payload_bytes())?;
            if !blocks.is_empty() {
                self.write_blocks(blocks).await?;
            }
            Ok(blocks.iter().map(Block::hash).collect())
        })
        .await
    }

    async fn retrieve_blocks(&self, hashes: &[BlockHash]) -> Result<Vec<Option<Block>>> {
        let span = op_span(self.name(), "retrieve_blocks");
        record_count(&span, hashes.len());
        layered(self, span, "retrieve_blocks", async {
            if hashes.is_empty() {
                return Ok(Vec::new());
            }
            self.read_blocks(hashes).await
        })
        .await
    }

    async fn list_blocks(&self, options: &ListOptions) -> Result<Vec<BlockMetadata>> {
        let span = op_span(self.name(), "list_blocks");
        if let Some(limit) = options.limit {
            record_count(&span, usize::try_from(limit).unwrap_or(usize::MAX));
        }
        layered(self, span, "list_blocks", async {
            if options.limit == Some(0) || options.matcher().is_none() {
                return Ok(Vec::new());
            }
            self.list(options).await
        })
        .await
    }

    async fn count_blocks(&self) -> Result<u64> {
        let span = op_span(self.name(), "count_blocks");
        layered(self, span, "count_blocks", self.count()).await
    }

    async fn get_chain_head(&self) -> Result<Option<BlockHash>> {
        let span = op_span(self.name(), "get_chain_head");
        layered(self, span, "get_chain_head", self.head()).await
    }

    async fn set_chain_head(&self, hash: &BlockHash) -> Result<()> {
        let span = op_span(self.name(), "set_chain_head");
        record_hash(&span, hash);
        layered(self, span, "set_chain_head", async {
            check_writable(self, "set_chain_head")?;
            self.write_head(hash).await
        })
        .await
    }

    async fn get_blocks_by_range(&self, start: u64, end: u64) -> Result<Vec<Block>> {
        let span = op_span(self.name(), "get_blocks_by_range");
        record_index(&span, start);
        layered(self, span, "get_blocks_by_range", async {
            check_range(start, end)?;
            self.read_range(start, end).await
        })
        .await
    }

    async fn compact(&self) -> Result<()> {
        let span = op_span(self.name(), "compact");
        layered(self, span, "compact", async {
            check_writable(self, "compact")?;
            self.run_compaction().await
        })
        .await
    }

    async fn vacuum(&self) -> Result<()> {
        let span = op_span(self.name(), "vacuum");
        layered(self, span, "vacuum", async {
            check_writable(self, "vacuum")?;
            self.run_vacuum().await
        })
        .await
    }

    async fn get_stats(&self) -> Result<StorageStats> {
        let span = op_span(self.name(), "get_stats");
        layered(self, span, "get_stats", self.stats()).await
    }

    async fn close(&self) -> Result<()> {
        let span = op_span(self.name(), "close");
        let mut result = self
            .gate()
            .close(self.shutdown())
            .instrument(span.clone())
            .await;
        if let Err(e) = &mut result {
            add_operation(e, "close");
        }
        record_outcome(&span, &result);
        result
    }

    async fn check_integrity(&self) -> Result<()> {
        let span = op_span(self.name(), "check_integrity");
        layered(self, span, "check_integrity", self.integrity_check()).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing_subscriber::layer::{Context, SubscriberExt};
    use tracing_subscriber::registry::LookupSpan;

    use super::*;
    use crate::{ErrorKind, SigningKey};

    /// An engine with one stored block whose reads fail as damaged, and whose
    /// reads of the zero hash wait for a signal.
    #[derive(Debug, Default)]
    struct Damaged {
        gate: Gate,
        release: tokio::sync::Notify,
        shut: std::sync::atomic::AtomicBool,
        read_only: bool,
    }

    impl Engine for Damaged {
        fn name(&self) -> &str {
            "damaged"
        }
        fn gate(&self) -> &Gate {
            &self.gate
        }
        fn supported(&self) -> Capabilities {
            let caps = Capabilities::new().atomic_batches();
            if self.read_only {
                caps.read_only()
            } else {
                caps
            }
        }
        fn max_payload_bytes(&self) -> usize {
            4
        }
        async fn write_blocks(&self, _: &[Block]) -> Result<()> {
            Ok(())
        }
        async fn read_block(&self, hash: &BlockHash) -> Result<Option<Block>> {
            if *hash == BlockHash([0; 32]) {
                self.release.notified().await;
                return Ok(None);
            }
            tracing::debug!("reading a damaged record");
            Err(StorageError::corrupted("damaged: record 7"))
        }
        async fn read_blocks(&self, _: &[BlockHash]) -> Result<Vec<Option<Block>>> {
            unreachable!("not called with an empty list")
        }
        async fn remove_block(&self, _: &BlockHash) -> Result<bool> {
            Ok(false)
        }
        async fn has_block(&self, _: &BlockHash) -> Result<bool> {
            Err(StorageError::backend_msg(
                "damaged",
                "probing",
                crate::ErrorStatus::Temporary,
            ))
        }
        async fn list(&self, _: &ListOptions) -> Result<Vec<BlockMetadata>> {
            unreachable!("not called for an empty listing")
        }
        async fn count(&self) -> Result<u64> {
            Ok(0)
        }
        async fn head(&self) -> Result<Option<BlockHash>> {
            Ok(None)
        }
        async fn write_head(&self, hash: &BlockHash) -> Result<()> {
            Err(StorageError::BlockNotFound { hash: *hash })
        }
        async fn read_range(&self, start: u64, end: u64) -> Result<Vec<Block>> {
            assert!(start <= end, "the layer checks ranges");
            Ok(Vec::new())
        }
        async fn run_compaction(&self) -> Result<()> {
            Ok(())
        }
        async fn run_vacuum(&self) -> Result<()> {
            Ok(())
        }
        async fn stats(&self) -> Result<StorageStats> {
            Err(StorageError::unsupported("damaged", "stats"))
        }
        async fn integrity_check(&self) -> Result<()> {
            Err(StorageError::corrupted("damaged: checksum of record 7"))
        }
        async fn shutdown(&self) -> Result<()> {
            self.shut.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
    }

    /// [`Damaged`] with the default payload limit.
    #[derive(Debug, Default)]
    struct Unlimited(Damaged);

    impl Engine for Unlimited {
        fn name(&self) -> &str {
            self.0.name()
        }
        fn gate(&self) -> &Gate {
            self.0.gate()
        }
        fn supported(&self) -> Capabilities {
            self.0.supported()
        }
        async fn write_blocks(&self, blocks: &[Block]) -> Result<()> {
            self.0.write_blocks(blocks).await
        }
        async fn read_block(&self, hash: &BlockHash) -> Result<Option<Block>> {
            self.0.read_block(hash).await
        }
        async fn read_blocks(&self, hashes: &[BlockHash]) -> Result<Vec<Option<Block>>> {
            self.0.read_blocks(hashes).await
        }
        async fn remove_block(&self, hash: &BlockHash) -> Result<bool> {
            self.0.remove_block(hash).await
        }
        async fn has_block(&self, hash: &BlockHash) -> Result<bool> {
            self.0.has_block(hash).await
        }
        async fn list(&self, options: &ListOptions) -> Result<Vec<BlockMetadata>> {
            self.0.list(options).await
        }
        async fn count(&self) -> Result<u64> {
            self.0.count().await
        }
        async fn head(&self) -> Result<Option<BlockHash>> {
            self.0.head().await
        }
        async fn write_head(&self, hash: &BlockHash) -> Result<()> {
            self.0.write_head(hash).await
        }
        async fn read_range(&self, start: u64, end: u64) -> Result<Vec<Block>> {
            self.0.read_range(start, end).await
        }
        async fn run_compaction(&self) -> Result<()> {
            self.0.run_compaction().await
        }
        async fn run_vacuum(&self) -> Result<()> {
            self.0.run_vacuum().await
        }
        async fn stats(&self) -> Result<StorageStats> {
            self.0.stats().await
        }
        async fn shutdown(&self) -> Result<()> {
            self.0.shutdown().await
        }
    }

    type Fields = Arc<Mutex<Vec<(String, String)>>>;

    /// Records every span field set, as `(name, value)`.
    struct Capture(Fields);

    struct Visitor<'a>(&'a Fields);

    impl Visit for Visitor<'_> {
        fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
            let value = format!("{value:?}");
            self.0
                .lock()
                .unwrap()
                .push((field.name().into(), value.trim_matches('"').into()));
        }
        fn record_str(&mut self, field: &Field, value: &str) {
            self.0
                .lock()
                .unwrap()
                .push((field.name().into(), value.into()));
        }
    }

    impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Capture {
        fn on_new_span(&self, attrs: &Attributes<'_>, _: &Id, _: Context<'_, S>) {
            attrs.record(&mut Visitor(&self.0));
        }
        fn on_event(&self, _: &tracing::Event<'_>, ctx: Context<'_, S>) {
            // Which span the engine's own events land in.
            let inside = ctx.lookup_current().map_or("(none)", |s| s.name());
            self.0
                .lock()
                .unwrap()
                .push(("event_in".into(), inside.into()));
        }
        fn on_record(&self, _: &Id, values: &Record<'_>, _: Context<'_, S>) {
            values.record(&mut Visitor(&self.0));
        }
    }

    fn traced<T>(f: impl FnOnce() -> T) -> (T, Vec<(String, String)>) {
        let fields = Fields::default();
        let subscriber = tracing_subscriber::registry().with(Capture(fields.clone()));
        let out = tracing::subscriber::with_default(subscriber, f);
        let seen = fields.lock().unwrap().clone();
        (out, seen)
    }

    fn has(seen: &[(String, String)], name: &str, value: &str) -> bool {
        seen.iter().any(|(n, v)| n == name && v.contains(value))
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    #[test]
    fn a_failing_operation_records_its_error_kind() {
        let engine = Damaged::default();
        let hash = BlockHash([7; 32]);
        let (result, seen) = traced(|| rt().block_on(engine.retrieve_block(&hash)));
        assert_eq!(result.unwrap_err().kind(), ErrorKind::Corrupted);
        assert!(has(&seen, "backend", "damaged"), "{seen:?}");
        assert!(has(&seen, "op", "retrieve_block"), "{seen:?}");
        assert!(has(&seen, "hash", &hash.to_string()), "{seen:?}");
        assert!(has(&seen, "outcome", "corrupted"), "{seen:?}");
        assert!(has(&seen, "error", "record 7"), "{seen:?}");
        // The engine's own events are inside the operation's span.
        assert!(has(&seen, "event_in", "storage_op"), "{seen:?}");

        let (result, seen) = traced(|| rt().block_on(engine.get_blocks_by_range(5, 4)));
        assert_eq!(result.unwrap_err().kind(), ErrorKind::InvalidInput);
        assert!(has(&seen, "index", "5"), "{seen:?}");
        assert!(has(&seen, "outcome", "invalid_input"), "{seen:?}");

        let (result, seen) = traced(|| rt().block_on(engine.get_stats()));
        assert_eq!(result.unwrap_err().kind(), ErrorKind::Unsupported);
        assert!(has(&seen, "outcome", "unsupported"), "{seen:?}");

        let (result, seen) = traced(|| rt().block_on(engine.count_blocks()));
        assert_eq!(result.unwrap(), 0);
        assert!(has(&seen, "outcome", "ok"), "{seen:?}");

        // The engine's own check reaches the caller.
        let (result, seen) = traced(|| rt().block_on(engine.check_integrity()));
        assert_eq!(result.unwrap_err().kind(), ErrorKind::Corrupted);
        assert!(has(&seen, "error", "checksum of record 7"), "{seen:?}");
    }

    #[test]
    fn a_read_only_store_refuses_every_write_and_serves_reads() {
        let engine = Damaged {
            read_only: true,
            ..Default::default()
        };
        let rt = rt();
        let key = SigningKey::from_bytes(&[1; 32]);
        let block = Block::sign_raw(0, std::time::UNIX_EPOCH, None, "t", vec![1], &key).unwrap();
        let hash = block.hash();
        let refused = |r: Result<()>, op: &str| {
            let e = r.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ReadOnly, "{op}: {e}");
            assert!(e.to_string().contains(op), "{op}: {e}");
        };
        refused(
            rt.block_on(engine.store_block(&block)).map(drop),
            "store_block",
        );
        refused(
            rt.block_on(engine.store_blocks(&[block])).map(drop),
            "store_blocks",
        );
        refused(
            rt.block_on(engine.delete_block(&hash)).map(drop),
            "delete_block",
        );
        refused(rt.block_on(engine.set_chain_head(&hash)), "set_chain_head");
        refused(rt.block_on(engine.compact()), "compact");
        refused(rt.block_on(engine.vacuum()), "vacuum");
        assert!(engine.capabilities().read_only);
        assert_eq!(rt.block_on(engine.count_blocks()).unwrap(), 0);
        // A writable store takes the same calls.
        let writable = Damaged::default();
        assert!(!writable.capabilities().read_only);
        rt.block_on(writable.compact()).unwrap();
    }

    #[test]
    fn arguments_are_checked_before_the_engine() {
        let engine = Damaged::default();
        let rt = rt();
        let key = SigningKey::from_bytes(&[1; 32]);
        let big =
            Block::sign_raw(0, std::time::UNIX_EPOCH, None, "t/v1", vec![0; 5], &key).unwrap();
        let e = rt.block_on(engine.store_block(&big)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        // Without its own limit an engine takes payloads up to the protocol's.
        let unlimited = Unlimited::default();
        assert_eq!(unlimited.max_payload_bytes(), crate::MAX_PAYLOAD_BYTES);
        assert_eq!(
            rt.block_on(unlimited.store_block(&big)).unwrap(),
            big.hash()
        );
        assert!(rt.block_on(engine.retrieve_blocks(&[])).unwrap().is_empty());
        let none = ListOptions::new().limit(0);
        assert!(rt.block_on(engine.list_blocks(&none)).unwrap().is_empty());
        // The operation is added to engine errors, the cause kept.
        let e = rt
            .block_on(engine.block_exists(&BlockHash([1; 32])))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "damaged backend error while block_exists: probing"
        );
        assert!(e.is_transient());
    }

    #[test]
    fn close_waits_for_calls_in_flight_and_refuses_later_ones() {
        let engine = Arc::new(Damaged::default());
        assert!(!engine.gate().is_closed(), "a new gate is open");
        let rt = rt();
        rt.block_on(async {
            let slow = tokio::spawn({
                let e = engine.clone();
                async move { e.retrieve_block(&BlockHash([0; 32])).await }
            });
            tokio::task::yield_now().await;
            let closing = tokio::spawn({
                let e = engine.clone();
                async move { e.close().await }
            });
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            assert!(engine.gate().is_closed());
            assert!(!closing.is_finished(), "close did not wait for the call");
            assert!(!engine.shut.load(std::sync::atomic::Ordering::SeqCst));
            // New calls are refused while close waits.
            let e = engine.count_blocks().await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Closed);
            engine.release.notify_one();
            assert_eq!(slow.await.unwrap().unwrap(), None);
            closing.await.unwrap().unwrap();
            assert!(engine.shut.load(std::sync::atomic::Ordering::SeqCst));
            // Idempotent; everything else refused.
            engine.close().await.unwrap();
            let e = engine.get_chain_head().await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Closed);
        });
    }
}
