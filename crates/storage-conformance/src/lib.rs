//! The conformance suite every olocus-storage backend and wrapper runs against —
//! ours and third parties'. See the crate README for a walkthrough.
//!
//! # Running it for a backend
//!
//! 1. Implement [`Fixture`]: `open()` opens the store at the fixture's own, isolated
//!    location (a fresh temp dir, namespace or in-memory instance) and opens the same
//!    location again when called again (for the reopen cases). The suite asks the
//!    opened store for its [`storage_core::Capabilities`] to pick the cases that
//!    apply; a fixture that can damage stored bytes says so with
//!    [`Fixture::can_corrupt`].
//! 2. Add a test target with `harness = false` and call [`conformance_main!`] with a
//!    factory that returns a fresh fixture:
//!
//! ```toml
//! [[test]]
//! name = "conformance"
//! harness = false
//! ```
//!
//! ```no_run
//! use std::sync::Arc;
//! use storage_conformance::{Fixture, conformance_main};
//! use storage_core::{StorageBackend, StorageError, async_trait};
//! use storage_memory::MemoryBackend;
//!
//! struct MemoryFixture;
//!
//! #[async_trait]
//! impl Fixture for MemoryFixture {
//!     async fn open(&self) -> Result<Arc<dyn StorageBackend>, StorageError> {
//!         Ok(Arc::new(MemoryBackend::new()))
//!     }
//! }
//!
//! conformance_main! {
//!     "memory" => || MemoryFixture,
//! }
//! ```
//!
//! Each case becomes its own test, named `SUITE::case`, with its own runtime and
//! fixture, so one failure never hides another and `cargo test memory::pagination`
//! runs one case. A case the backend lacks a capability for is reported as
//! `ignored` with the reason, and counted as ignored, never as passed. A store
//! that claims a capability runs the cases that hold it to the claim.
//!
//! Cases are also plain `pub async fn(&Env) -> CaseResult` in [`cases`], for
//! callers with their own harness; [`all_cases`] lists them with the capabilities
//! they need.

// Library code returns errors; tests may unwrap (see clippy.toml).
#![warn(clippy::unwrap_used)]

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use storage_core::{BlockHash, OpenMode, StorageBackend, StorageError, async_trait};
use tokio::sync::OnceCell;

pub mod cases;
mod check;
pub mod data;
pub mod fault;
pub mod reliability;

pub use check::{CaseError, CaseResult};

/// What the cases may rely on: the store's own
/// [`storage_core::Capabilities`], and whether the fixture can damage stored
/// bytes. Cases that need a capability the backend lacks are skipped (reported
/// as ignored, with the reason).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Data survives `close` and a drop without `close`; [`Fixture::open`] reopens
    /// the same location.
    pub persistent: bool,
    /// [`Fixture::corrupt`] can damage a stored block's bytes.
    pub corruption: bool,
    /// `store_blocks` is all-or-nothing.
    pub atomic_batches: bool,
    /// `vacuum` is supported (otherwise it must fail with `Unsupported`).
    pub vacuum: bool,
    /// [`Fixture::open_in`] opens the location with
    /// [`OpenMode::OpenExisting`].
    pub open_existing: bool,
    /// [`Fixture::open_in`] opens the location with [`OpenMode::ReadOnly`].
    pub read_only: bool,
}

impl Capabilities {
    /// What a store reporting `store` offers the cases, with what `fixture`
    /// adds: damaging stored bytes, and the modes it opens in.
    pub fn of(store: storage_core::Capabilities, fixture: &dyn Fixture) -> Self {
        let modes = fixture.open_modes();
        Self {
            persistent: store.persistent,
            corruption: fixture.can_corrupt(),
            atomic_batches: store.atomic_batches,
            vacuum: store.vacuum,
            open_existing: modes.contains(&OpenMode::OpenExisting),
            read_only: modes.contains(&OpenMode::ReadOnly),
        }
    }
}

/// One capability, as named in skip reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Capability {
    /// See [`Capabilities::persistent`].
    Persistent,
    /// See [`Capabilities::corruption`].
    Corruption,
    /// See [`Capabilities::atomic_batches`].
    AtomicBatches,
    /// See [`Capabilities::open_existing`].
    OpenExisting,
    /// See [`Capabilities::read_only`].
    ReadOnly,
}

impl Capabilities {
    /// Whether `cap` is present.
    pub fn has(&self, cap: Capability) -> bool {
        match cap {
            Capability::Persistent => self.persistent,
            Capability::Corruption => self.corruption,
            Capability::AtomicBatches => self.atomic_batches,
            Capability::OpenExisting => self.open_existing,
            Capability::ReadOnly => self.read_only,
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Capability::Persistent => "persistent",
            Capability::Corruption => "corruption",
            Capability::AtomicBatches => "atomic_batches",
            Capability::OpenExisting => "open_existing",
            Capability::ReadOnly => "read_only",
        })
    }
}

/// One isolated store location for one case.
#[async_trait]
pub trait Fixture: Send + Sync + 'static {
    /// Whether [`Fixture::corrupt`] can damage stored bytes (capability
    /// `corruption`).
    fn can_corrupt(&self) -> bool {
        false
    }

    /// Opens this fixture's location in `mode` (see [`OpenMode`]); `None` if
    /// the fixture cannot (the cases of that mode are then skipped).
    /// [`OpenMode::Create`] is [`Fixture::open`].
    async fn open_in(
        &self,
        mode: OpenMode,
    ) -> Option<Result<Arc<dyn StorageBackend>, StorageError>> {
        let _ = mode;
        None
    }

    /// The modes [`Fixture::open_in`] supports besides creating.
    fn open_modes(&self) -> &'static [OpenMode] {
        &[]
    }

    /// The capabilities the store should report, if the fixture knows them.
    /// The suite selects cases by what the store reports; declaring them here
    /// makes a store that stops claiming one (and so skips its cases) fail.
    fn expected_capabilities(&self) -> Option<storage_core::Capabilities> {
        None
    }

    /// Opens the store at this fixture's location. For persistent backends a second
    /// call (after `close`, or after every handle was dropped) reopens the same data.
    async fn open(&self) -> Result<Arc<dyn StorageBackend>, StorageError>;

    /// The payload limit the fixture configures its store with, if any (it must be
    /// at least 8 MiB, for `large_payload_8mib`, and below
    /// [`storage_core::MAX_PAYLOAD_BYTES`]). `None` skips `oversized_payload_rejected`.
    fn max_payload_bytes(&self) -> Option<usize> {
        None
    }

    /// How many random sequences one run of the model-based case tries (split over
    /// its fixed seeds); `OLOCUS_MODEL_CASES` overrides it. Lower it only for a
    /// store whose every operation is slow (a remote service), and say so.
    fn model_sequences(&self) -> u32 {
        1000
    }

    /// Damages the stored bytes of block `hash` (see [`Fixture::can_corrupt`]), e.g. by
    /// flipping a byte in the middle of its record. May close and reopen the store;
    /// returns the handle to use afterwards.
    async fn corrupt(
        &self,
        store: Arc<dyn StorageBackend>,
        hash: &BlockHash,
    ) -> Result<Arc<dyn StorageBackend>, StorageError> {
        let _ = (store, hash);
        Err(StorageError::unsupported("fixture", "corrupt"))
    }
}

/// Makes a fresh fixture (a new isolated location) each time it is called.
pub type Factory = Arc<dyn Fn() -> Box<dyn Fixture> + Send + Sync>;

/// What a case runs against: a fixture, and the factory for cases that need more
/// isolated stores (the model-based test makes one per generated sequence).
pub struct Env {
    fixture: Box<dyn Fixture>,
    factory: Factory,
    capabilities: OnceCell<Capabilities>,
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env")
            .field("capabilities", &self.capabilities.get())
            .finish_non_exhaustive()
    }
}

impl Env {
    /// An environment with a fresh fixture from `factory`.
    pub fn new<F: Fixture>(factory: impl Fn() -> F + Send + Sync + 'static) -> Self {
        Self::from_factory(Arc::new(move || Box::new(factory()) as Box<dyn Fixture>))
    }

    /// An environment from a boxed factory.
    pub fn from_factory(factory: Factory) -> Self {
        Self {
            fixture: factory(),
            factory,
            capabilities: OnceCell::new(),
        }
    }

    /// Another environment with its own fresh fixture.
    pub fn fresh(&self) -> Self {
        Self::from_factory(self.factory.clone())
    }

    /// The factory this environment's fixtures come from.
    pub fn factory(&self) -> Factory {
        self.factory.clone()
    }

    /// The fixture.
    pub fn fixture(&self) -> &dyn Fixture {
        &*self.fixture
    }

    /// What the store under test reports it can do, with the fixture's
    /// `corruption` and open modes: asked once of a store at a fresh location
    /// of its own (opened and closed for it), then remembered.
    pub async fn capabilities(&self) -> Result<Capabilities, CaseError> {
        self.capabilities
            .get_or_try_init(|| async {
                // Asked of a fixture of its own, so the case's location stays
                // untouched (a case may need it not to exist yet).
                let probe = (self.factory)();
                let store = probe
                    .open()
                    .await
                    .map_err(|e| CaseError::Failed(format!("opening the store failed: {e}")))?;
                let caps = Capabilities::of(store.capabilities(), &*self.fixture);
                store.close().await.map_err(|e| {
                    CaseError::Failed(format!(
                        "closing the store after asking its capabilities: {e}"
                    ))
                })?;
                drop(store);
                drop(probe);
                Ok(caps)
            })
            .await
            .copied()
    }

    /// Opens the store in `mode`; a fixture that cannot skips the case.
    pub async fn open_in(&self, mode: OpenMode) -> Result<Arc<dyn StorageBackend>, CaseError> {
        match self.fixture.open_in(mode).await {
            None => Err(CaseError::Skipped(format!(
                "the fixture cannot open {mode:?}"
            ))),
            Some(Ok(store)) => Ok(store),
            Some(Err(e)) => Err(CaseError::Failed(format!("opening {mode:?} failed: {e}"))),
        }
    }

    /// Opens the store in `mode`, returning the outcome as it is (for cases
    /// that expect opening to fail).
    pub async fn try_open_in(
        &self,
        mode: OpenMode,
    ) -> Result<Result<Arc<dyn StorageBackend>, StorageError>, CaseError> {
        self.fixture
            .open_in(mode)
            .await
            .ok_or_else(|| CaseError::Skipped(format!("the fixture cannot open {mode:?}")))
    }

    /// Opens (or reopens) the store.
    pub async fn open(&self) -> Result<Arc<dyn StorageBackend>, CaseError> {
        self.fixture
            .open()
            .await
            .map_err(|e| CaseError::Failed(format!("opening the store failed: {e}")))
    }

    /// Skips the case unless the backend has `cap`.
    pub async fn require(&self, cap: Capability) -> CaseResult {
        if self.capabilities().await?.has(cap) {
            Ok(())
        } else {
            Err(CaseError::Skipped(format!("needs capability `{cap}`")))
        }
    }
}

/// The runtime a case needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// tokio current-thread runtime (most cases: proves nothing blocks or needs a
    /// second worker).
    CurrentThread,
    /// tokio multi-thread runtime with four workers (concurrency cases).
    MultiThread,
}

/// A boxed case future.
pub type CaseFuture<'a> = Pin<Box<dyn Future<Output = CaseResult> + Send + 'a>>;

/// A registered case.
#[derive(Clone, Copy)]
pub struct Case {
    /// Test name (the function's name in [`cases`]).
    pub name: &'static str,
    /// Capabilities it needs; without them it is skipped.
    pub needs: &'static [Capability],
    /// The runtime it runs on.
    pub flavor: Flavor,
    /// The case itself.
    pub run: for<'a> fn(&'a Env) -> CaseFuture<'a>,
}

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Case")
            .field("name", &self.name)
            .field("needs", &self.needs)
            .field("flavor", &self.flavor)
            .finish()
    }
}

/// How long one case may run before it fails as hung.
pub const CASE_TIMEOUT: Duration = Duration::from_secs(600);

impl Case {
    /// Runs the case on a runtime of its flavor with a fresh environment from
    /// `factory`: `Ok(None)` passed, `Ok(Some(reason))` skipped, `Err` failed.
    pub fn run_with(&self, factory: &Factory) -> Result<Option<String>, String> {
        let mut builder = match self.flavor {
            Flavor::CurrentThread => tokio::runtime::Builder::new_current_thread(),
            Flavor::MultiThread => {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(4);
                b
            }
        };
        let rt = builder
            .enable_all()
            .build()
            .map_err(|e| format!("cannot build runtime: {e}"))?;
        let env = Env::from_factory(factory.clone());
        let outcome = rt.block_on(async {
            for cap in self.needs {
                env.require(*cap).await?;
            }
            match tokio::time::timeout(CASE_TIMEOUT, (self.run)(&env)).await {
                Ok(r) => r,
                Err(_) => Err(CaseError::Failed(format!(
                    "case did not finish within {CASE_TIMEOUT:?} (hung?)"
                ))),
            }
        });
        // Drop the fixture (and its temp dir) inside the runtime's context.
        let _guard = rt.enter();
        drop(env);
        match outcome {
            Ok(()) => Ok(None),
            Err(CaseError::Skipped(reason)) => Ok(Some(reason)),
            Err(CaseError::Failed(msg)) => Err(msg),
        }
    }
}

/// One backend's suite: a name and a factory of fresh fixtures.
pub struct Suite {
    name: String,
    factory: Factory,
}

impl std::fmt::Debug for Suite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Suite")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Suite {
    /// A suite named `name` (the test-name prefix) over fixtures from `factory`.
    pub fn new<F: Fixture>(
        name: impl Into<String>,
        factory: impl Fn() -> F + Send + Sync + 'static,
    ) -> Self {
        Self {
            name: name.into(),
            factory: Arc::new(move || Box::new(factory()) as Box<dyn Fixture>),
        }
    }

    /// One libtest-mimic trial per case.
    pub fn trials(&self) -> Vec<libtest_mimic::Trial> {
        all_cases()
            .into_iter()
            .map(|case| {
                let factory = self.factory.clone();
                libtest_mimic::Trial::ignorable_test(
                    format!("{}::{}", self.name, case.name),
                    move || match case.run_with(&factory) {
                        Ok(None) => Ok(libtest_mimic::Completion::Completed),
                        Ok(Some(reason)) => Ok(libtest_mimic::Completion::ignored_with(reason)),
                        Err(msg) => Err(msg.into()),
                    },
                )
            })
            .collect()
    }

    /// One line: how many cases run and which are skipped for which capability
    /// (opens a store to ask it).
    pub fn summary(&self) -> String {
        let env = Env::from_factory(self.factory.clone());
        let caps = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CaseError::Failed(e.to_string()))
            .and_then(|rt| {
                let caps = rt.block_on(env.capabilities());
                let _guard = rt.enter();
                drop(env);
                caps
            });
        let caps = match caps {
            Ok(caps) => caps,
            Err(e) => {
                return format!(
                    "conformance suite `{}`: capabilities unknown, the store did not open: {e:?}",
                    self.name
                );
            }
        };
        let cases = all_cases();
        let skipped: Vec<String> = cases
            .iter()
            .filter_map(|c| {
                let missing = c.needs.iter().find(|n| !caps.has(**n))?;
                Some(format!("{} (needs {missing})", c.name))
            })
            .collect();
        format!(
            "conformance suite `{}`: {} cases, {} to run, {} skipped{}{}",
            self.name,
            cases.len(),
            cases.len() - skipped.len(),
            skipped.len(),
            if skipped.is_empty() { "" } else { ": " },
            skipped.join(", ")
        )
    }

    /// The suite's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Runs suites under libtest-compatible arguments (filters, `--list`,
/// `--test-threads`, ...) and returns the process exit code.
pub fn run_suites(suites: Vec<Suite>) -> ExitCode {
    run_suites_with(suites, Vec::new())
}

/// A test of a backend's own for [`run_suites_with`]: `Err(message)` fails it.
pub type ExtraTest = fn() -> Result<(), String>;

/// [`run_suites`] with tests of the backend's own beside the suites (named as
/// they are given, e.g. `"mine::engine_stats"`), each a function that returns
/// `Err(message)` on failure; for checks of behaviour the trait does not cover.
pub fn run_suites_with(suites: Vec<Suite>, extra: Vec<(&'static str, ExtraTest)>) -> ExitCode {
    let args = libtest_mimic::Arguments::from_args();
    // `--list` output is parsed by tools (cargo-nextest): keep it clean.
    if !args.list {
        for suite in &suites {
            println!("{}", suite.summary());
        }
    }
    let mut trials: Vec<_> = suites.iter().flat_map(Suite::trials).collect();
    trials.extend(
        extra
            .into_iter()
            .map(|(name, test)| libtest_mimic::Trial::test(name, move || Ok(test()?))),
    );
    libtest_mimic::run(&args, trials).exit_code()
}

/// Generates `fn main` for a `harness = false` test target that runs the whole
/// suite for each `"name" => factory` pair. See the crate docs.
#[macro_export]
macro_rules! conformance_main {
    ($($name:expr => $factory:expr),+ $(,)?) => {
        fn main() -> ::std::process::ExitCode {
            $crate::run_suites(vec![$($crate::Suite::new($name, $factory)),+])
        }
    };
}

/// The single list of cases: registry, capabilities and runtime flavor come from
/// here, so no backend's list can drift from the suite.
macro_rules! registry {
    ($($module:ident :: $case:ident [$($cap:ident),*] $flavor:ident;)*) => {
        /// Every case, in a stable order.
        pub fn all_cases() -> Vec<Case> {
            vec![$(Case {
                name: stringify!($case),
                needs: &[$(Capability::$cap),*],
                flavor: Flavor::$flavor,
                run: |env| Box::pin(cases::$module::$case(env)),
            }),*]
        }
    };
}

registry! {
    basic::empty_store [] CurrentThread;
    basic::capabilities_are_steady_and_as_declared [] CurrentThread;
    basic::store_retrieve_round_trip [] CurrentThread;
    basic::timestamps_keep_nanoseconds [] CurrentThread;
    basic::retrieve_missing_hash [] CurrentThread;
    basic::duplicate_store_is_idempotent [] CurrentThread;
    basic::index_conflict_rejected [] CurrentThread;
    basic::large_payload_8mib [] CurrentThread;
    basic::payload_at_the_store_limit [] CurrentThread;
    basic::many_small_blocks [] CurrentThread;
    basic::equivocation_is_index_conflict [] CurrentThread;
    bad_input::forged_blocks_are_refused [] CurrentThread;
    bad_input::wrong_previous_hash_rejected [] CurrentThread;
    bad_input::oversized_payload_rejected [] CurrentThread;
    bad_input::non_utf8_payload_type_refused [] CurrentThread;
    batch::batch_store_and_retrieve_in_order [] CurrentThread;
    batch::batch_conflict_is_reported [] CurrentThread;
    batch::batch_conflict_is_atomic [AtomicBatches] CurrentThread;
    batch::invalid_batches_are_refused [] CurrentThread;
    batch::invalid_batches_store_nothing [AtomicBatches] CurrentThread;
    bulk::bulk_reads_agree_with_single_reads [] CurrentThread;
    bulk::pages_beyond_internal_sizes [] CurrentThread;
    delete::delete_keeps_views_consistent [] CurrentThread;
    delete::delete_head_clears_head [] CurrentThread;
    delete::delete_frees_the_index [] CurrentThread;
    list::filter_by_payload_type [] CurrentThread;
    list::filter_by_public_key [] CurrentThread;
    list::filter_by_index_bounds [] CurrentThread;
    list::filter_by_time_range [] CurrentThread;
    list::filters_combined [] CurrentThread;
    list::sort_orders_and_ties [] CurrentThread;
    list::pagination_edges [] CurrentThread;
    list::list_metadata_is_exact [] CurrentThread;
    list::time_bounds_in_every_order [] CurrentThread;
    list::filters_match_exactly [] CurrentThread;
    stream::cursor_paging_equals_offset_paging [] CurrentThread;
    stream::cursor_positions_need_no_block [] CurrentThread;
    stream::get_block_by_index_finds_and_misses [] CurrentThread;
    stream::stream_range_bounds_and_gaps [] CurrentThread;
    stream::streams_while_appending [] MultiThread;
    stream::streams_end_with_the_error [] CurrentThread;
    range_head::range_bounds_and_gaps [] CurrentThread;
    range_head::chain_head_set_get_invalid [] CurrentThread;
    range_head::advance_head_only_moves_up [] CurrentThread;
    range_head::advance_head_needs_a_linked_chain [] CurrentThread;
    range_head::verify_store_checks_the_store_against_itself [] CurrentThread;
    range_head::verify_store_passes_other_failures_through [] CurrentThread;
    range_head::verify_store_refuses_blocks_outside_the_window [] CurrentThread;
    maintenance::stats_agree_with_list [] CurrentThread;
    maintenance::compact_keeps_data [] CurrentThread;
    maintenance::vacuum_keeps_data_or_is_unsupported [] CurrentThread;
    maintenance::close_then_use [] CurrentThread;
    maintenance::maintenance_after_deletes_and_restores [] CurrentThread;
    maintenance::head_around_deleted_blocks [] CurrentThread;
    maintenance::stats_follow_ties_through_deletes [] CurrentThread;
    reopen::reopen_after_close [Persistent] CurrentThread;
    reopen::reopen_after_drop [Persistent] CurrentThread;
    reopen::open_existing_finds_or_refuses [OpenExisting] CurrentThread;
    reopen::read_only_reads_everything_and_writes_nothing [ReadOnly] CurrentThread;
    reopen::read_only_beside_a_writer [ReadOnly] CurrentThread;
    concurrency::concurrent_writers_and_readers [] MultiThread;
    concurrency::concurrent_on_current_thread [] CurrentThread;
    concurrency::racing_writers_one_winner_per_index [] MultiThread;
    concurrency::interleavings_agree_with_a_serial_order [] MultiThread;
    concurrency::batch_racing_a_rival_is_all_or_nothing [] MultiThread;
    model::model_based_operations [] MultiThread;
    corruption::corrupted_block_is_reported [Corruption] CurrentThread;
    corruption::damage_seen_through_bulk_reads [Corruption] CurrentThread;
    corruption::verify_store_reports_damage [Corruption] CurrentThread;
}
