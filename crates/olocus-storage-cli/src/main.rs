//! `olocus-storage`: the command line of olocus-storage.
//!
//! Stores are named by URL (`memory:`, `fs:PATH`, `rocksdb:PATH`, `sqlite:PATH`,
//! `s3://BUCKET/PREFIX`, with `?compression=…` for fs and rocksdb,
//! `?endpoint=…&region=…` for s3 and `?mode=…` for any) or by a TOML file
//! (`--config`).
//! `olocus-storage --help` lists the commands; `demo` shows everything at once.

// Library code returns errors; tests may unwrap (see clippy.toml).
#![warn(clippy::unwrap_used)]

use std::error::Error;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Parser, Subcommand, ValueEnum};
use olocus_storage::{
    BackendConfig, BlockFilter, ListOptions, OpenMode, PublicKey, SortOrder, Storage,
    StorageConfig, StorageError,
};

/// `println!` that hands back an error instead of panicking when standard
/// output is closed (`| head`), so the command can end quietly.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err($crate::CliError::from)
    }};
}

/// `print!` as [`out!`] is `println!`.
macro_rules! out_no_newline {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*).map_err($crate::CliError::from)
    }};
}

mod commands;
mod demo;
mod render;

/// Exit codes and logging, shown under `--help`.
const AFTER_HELP: &str = "\
Exit codes: 0 done; 1 other failure; 2 bad usage or input; 3 not found (store,
block, file); 4 the chain does not verify; 5 the store is locked, busy or timed
out; 6 the store is damaged; 7 I/O failed; 141 output closed early (| head).

Logging: OLOCUS_LOG sets the filter (tracing's syntax); the default is warn.
OLOCUS_LOG=storage_op=debug prints every storage operation as it ends (backend,
operation, hash or index, outcome, time taken); OLOCUS_LOG=debug adds what the
backends log, OLOCUS_LOG=storage_fs=trace one backend in detail.";

/// Store, verify, query and move Olocus block chains.
#[derive(Parser)]
#[command(name = "olocus-storage", version, propagate_version = true, after_help = AFTER_HELP)]
struct Cli {
    /// The store: memory:, fs:PATH, rocksdb:PATH, sqlite:PATH or
    /// s3://BUCKET/PREFIX (fs and rocksdb take ?compression=zstd|lz4|gzip|none;
    /// s3 takes ?endpoint=URL&region=NAME, with credentials from
    /// AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; any takes
    /// ?mode=create|open_existing|read_only). Only `import` creates a missing
    /// store; reading commands open stores read-only where the backend can.
    #[arg(long, global = true, env = "OLOCUS_STORE")]
    store: Option<String>,
    /// A TOML configuration file (backend, wal_config, cache_config,
    /// replication) instead of --store. Where the store comes from: --config or
    /// --store on the command line (not both), else OLOCUS_STORE.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    json: bool,
    /// No progress bars.
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Cmd,
}

/// File formats of import and export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One JSON block per line (the JSON wire format).
    Jsonl,
    /// The binary wire format: a header, then length-prefixed bincode blocks.
    Binary,
}

/// Orders of `list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Order {
    /// By index, lowest first.
    Asc,
    /// By index, highest first.
    Desc,
    /// By timestamp, oldest first.
    Time,
}

#[derive(Subcommand)]
enum Cmd {
    /// Sign a chain with a fresh key, store it, verify it and query it.
    Demo {
        /// Blocks to generate.
        #[arg(long, default_value_t = 10_000)]
        blocks: u64,
        /// Keep the store (when no --store is given, a temp directory is used and
        /// removed at the end).
        #[arg(long)]
        keep: bool,
    },
    /// Store blocks from a file (or stdin), checking every signature.
    Import {
        /// Input file; `-` or nothing for stdin.
        file: Option<PathBuf>,
        /// Input format (default: from the extension; .jsonl for stdin).
        #[arg(long, value_enum)]
        format: Option<Format>,
        /// Blocks per write.
        #[arg(long, default_value_t = 1_000)]
        batch: usize,
        /// Do not move the chain head to the highest imported block.
        #[arg(long)]
        no_head: bool,
    },
    /// Write the stored blocks in index order to a file (or stdout).
    Export {
        /// Output file; `-` or nothing for stdout.
        file: Option<PathBuf>,
        /// Output format (default: from the extension; .jsonl for stdout).
        #[arg(long, value_enum)]
        format: Option<Format>,
        /// First index (as in `list`).
        #[arg(long, default_value_t = 0)]
        from_index: u64,
        /// Last index, included (as in `list`).
        #[arg(long)]
        to_index: Option<u64>,
    },
    /// Verify the store against itself: the engine's own check, then the whole
    /// chain (signatures, index sequence, hash links, hashes recomputed from the
    /// stored bytes), then the count and the head (the highest block) against
    /// what was read. Exits non-zero at the first problem.
    Verify {
        /// Blocks read per request.
        #[arg(long, default_value_t = 1_000)]
        page: u64,
        /// Accept missing indices (a store filled in from several sources); they
        /// are still listed.
        #[arg(long)]
        allow_gaps: bool,
    },
    /// List block metadata, with every filter and order.
    List {
        /// At most this many entries.
        #[arg(long)]
        limit: Option<u64>,
        /// Skip this many entries after sorting.
        #[arg(long)]
        offset: Option<u64>,
        /// Only blocks at or after this time (RFC 3339, or Unix nanoseconds).
        #[arg(long, value_parser = parse_time)]
        start_time: Option<SystemTime>,
        /// Only blocks at or before this time (RFC 3339, or Unix nanoseconds).
        #[arg(long, value_parser = parse_time)]
        end_time: Option<SystemTime>,
        /// Result order.
        #[arg(long, value_enum, default_value_t = Order::Asc)]
        order: Order,
        /// Only this payload type.
        #[arg(long = "type")]
        payload_type: Option<String>,
        /// Only blocks signed by this public key (hex).
        #[arg(long)]
        signer: Option<PublicKey>,
        /// Lowest index (as in `export`).
        #[arg(long, alias = "min-index")]
        from_index: Option<u64>,
        /// Highest index, included (as in `export`).
        #[arg(long, alias = "max-index")]
        to_index: Option<u64>,
    },
    /// Print one block.
    Get {
        /// The block's hash, or enough of its first hex digits (at least 4) to
        /// name one block, as `list` prints them.
        #[arg(required_unless_present = "index", conflicts_with = "index")]
        hash: Option<String>,
        /// The block at this chain index instead.
        #[arg(long)]
        index: Option<u64>,
    },
    /// Print the chain head.
    Head,
    /// Print storage statistics.
    Stats,
    /// Reclaim the space of deleted blocks.
    Compact,
    /// Return free space to the operating system (where the backend can).
    Vacuum,
    /// Salvage a damaged store: copy every block that is intact into a new store
    /// and report exactly which indices were lost. The damaged store is only read.
    Repair {
        #[command(flatten)]
        stray: NoStore,
        /// The damaged store's URL.
        #[arg(long)]
        from: String,
        /// A new store's URL.
        #[arg(long)]
        to: String,
    },
    /// Copy every block and the head from one store to another, verifying as it
    /// goes; rerun to resume.
    Migrate {
        #[command(flatten)]
        stray: NoStore,
        /// Source store URL.
        #[arg(long)]
        from: String,
        /// Destination store URL.
        #[arg(long)]
        to: String,
        /// Blocks per write.
        #[arg(long, default_value_t = 1_000)]
        batch: u64,
    },
}

/// `--store` and `--config` after `migrate` or `repair`, which name both
/// their stores with `--from` and `--to`: taken (hidden from help) only to be
/// refused with a message that says so.
#[derive(clap::Args, Debug)]
struct NoStore {
    /// Refused here.
    #[arg(long = "store", id = "store", hide = true)]
    _store: Option<String>,
    /// Refused here.
    #[arg(long = "config", id = "config", hide = true)]
    _config: Option<PathBuf>,
}

fn parse_time(s: &str) -> Result<SystemTime, String> {
    if let Ok(n) = s.parse::<u64>() {
        return Ok(olocus_storage::system_time_from_unix_nanos(n));
    }
    humantime::parse_rfc3339_weak(s)
        .map_err(|e| format!("{s:?} is neither RFC 3339 nor Unix nanoseconds: {e}"))
}

/// How the command line ends: the exit codes listed in the README.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Anything not listed below.
    Failure = 1,
    /// Bad usage or bad input: a flag, a URL, a configuration, an input file's
    /// contents, a write to a store opened read-only.
    Usage = 2,
    /// The store, a block or a file does not exist.
    NotFound = 3,
    /// The chain does not verify: a bad signature or link, a gap, a wrong head.
    VerifyFailed = 4,
    /// The store is locked by another writer, or busy, or timed out.
    Busy = 5,
    /// The store's data is damaged.
    Damaged = 6,
    /// Reading or writing a file or the store failed.
    Io = 7,
    /// Output was closed early (`| head`): ended quietly, as if by SIGPIPE.
    ClosedPipe = 141,
}

impl Exit {
    /// The name under `--json`.
    fn name(self) -> &'static str {
        match self {
            Self::Failure => "failure",
            Self::Usage => "usage",
            Self::NotFound => "not_found",
            Self::VerifyFailed => "verification_failed",
            Self::Busy => "busy",
            Self::Damaged => "damaged",
            Self::Io => "io",
            Self::ClosedPipe => "closed_pipe",
        }
    }

    /// The code for a storage error.
    fn of(e: &StorageError) -> Self {
        use olocus_storage::ErrorKind as K;
        match e.kind() {
            K::InvalidInput
            | K::Configuration
            | K::ReadOnly
            | K::Unsupported
            | K::IndexConflict
            | K::Encoding => Self::Usage,
            K::NotFound => Self::NotFound,
            K::Verification => Self::VerifyFailed,
            K::Locked | K::Timeout | K::InsufficientReplicas => Self::Busy,
            K::Corrupted => Self::Damaged,
            K::Io => Self::of_io(e),
            // An engine that is busy (SQLite's lock, a retry budget spent).
            K::Backend if e.status() != olocus_storage::ErrorStatus::Permanent => Self::Busy,
            _ => Self::Failure,
        }
    }

    /// The code for an I/O error somewhere in `e`'s chain of causes.
    fn of_io(e: &(dyn Error + 'static)) -> Self {
        let mut at = Some(e);
        while let Some(err) = at {
            if let Some(io) = err.downcast_ref::<std::io::Error>() {
                return match io.kind() {
                    std::io::ErrorKind::BrokenPipe => Self::ClosedPipe,
                    std::io::ErrorKind::NotFound => Self::NotFound,
                    _ => Self::Io,
                };
            }
            at = err.source();
        }
        Self::Io
    }
}

/// An error to print (the message and every cause below it), with the exit
/// code it ends the command with.
#[derive(Debug)]
pub struct CliError {
    /// What went wrong, causes included.
    pub msg: String,
    /// How the command ends.
    pub code: Exit,
}

impl CliError {
    /// An error ending with `code`.
    pub fn new(code: Exit, msg: impl Into<String>) -> Self {
        Self {
            msg: msg.into(),
            code,
        }
    }

    /// Bad usage or input.
    pub fn usage(msg: impl Into<String>) -> Self {
        Self::new(Exit::Usage, msg)
    }

    /// Any other failure.
    pub fn failure(msg: impl Into<String>) -> Self {
        Self::new(Exit::Failure, msg)
    }

    /// The same error, saying first what was being done.
    pub fn context(self, what: impl std::fmt::Display) -> Self {
        Self {
            msg: format!("{what}: {}", self.msg),
            code: self.code,
        }
    }
}

impl From<StorageError> for CliError {
    fn from(e: StorageError) -> Self {
        Self::new(Exit::of(&e), olocus_storage::error_report(&e))
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        Self::new(Exit::of_io(&e), olocus_storage::error_report(&e))
    }
}

impl From<serde_json::Error> for CliError {
    fn from(e: serde_json::Error) -> Self {
        let code = if e.is_io() {
            Exit::of_io(&e)
        } else {
            Exit::Usage
        };
        Self::new(code, olocus_storage::error_report(&e))
    }
}

/// The result of a command.
pub type CliResult<T = ()> = Result<T, CliError>;

/// What every command gets.
#[derive(Debug)]
pub struct Ctx {
    /// `--json`.
    pub json: bool,
    /// `--quiet`.
    pub quiet: bool,
}

impl Ctx {
    /// `bar` drawn with `template` and labelled `what`, ticking on its own;
    /// hidden when quiet, in JSON mode or when stderr is not a terminal
    /// (indicatif's default).
    fn progress(
        &self,
        bar: impl FnOnce() -> indicatif::ProgressBar,
        template: &str,
        what: &str,
    ) -> indicatif::ProgressBar {
        if self.quiet || self.json {
            return indicatif::ProgressBar::hidden();
        }
        let bar = bar().with_message(what.to_string());
        bar.set_style(
            indicatif::ProgressStyle::with_template(template)
                .expect("template")
                .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    }

    /// A progress bar of `len` blocks.
    pub fn bar(&self, len: u64, what: &str) -> indicatif::ProgressBar {
        self.progress(
            || indicatif::ProgressBar::new(len),
            "{msg:>10} [{bar:40}] {human_pos}/{human_len} blocks ({per_sec:0}, eta {eta})",
            what,
        )
    }

    /// A spinner with the time taken, for a step whose length is not known
    /// (salvage, compaction).
    pub fn spinner(&self, what: &str) -> indicatif::ProgressBar {
        self.progress(
            indicatif::ProgressBar::new_spinner,
            "{msg:>10} {spinner} {elapsed}",
            what,
        )
    }

    /// Progress through `len` bytes of input, or a spinner with the bytes
    /// read so far when the size is unknown (standard input).
    pub fn byte_bar(&self, len: Option<u64>, what: &str) -> indicatif::ProgressBar {
        match len {
            Some(len) => self.progress(
                || indicatif::ProgressBar::new(len),
                "{msg:>10} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})",
                what,
            ),
            None => self.progress(
                indicatif::ProgressBar::new_spinner,
                "{msg:>10} {spinner} {bytes} read ({bytes_per_sec})",
                what,
            ),
        }
    }
}

/// How a command opens its store: reading commands read-only where the backend
/// can (beside a service writing it) and otherwise as an existing store, so a
/// mistyped path is an error rather than a new empty store; maintenance opens
/// an existing store; only `import` creates one.
fn open_mode(command: &Cmd, backend: &BackendConfig) -> OpenMode {
    match command {
        Cmd::Import { .. } => OpenMode::Create,
        _ if matches!(backend, BackendConfig::Memory) => OpenMode::Create,
        Cmd::Compact | Cmd::Vacuum => OpenMode::OpenExisting,
        _ => commands::read_mode(backend),
    }
}

async fn open(cli: &Cli) -> CliResult<Storage> {
    let config = match (&cli.config, &cli.store) {
        (Some(path), _) => StorageConfig::load(path)?,
        (None, Some(url)) => StorageConfig::from_url(url)?,
        (None, None) => {
            return Err(CliError::usage(
                "no store given: pass --store URL (memory:, fs:PATH, rocksdb:PATH, \
                 sqlite:PATH, s3://BUCKET/PREFIX) or --config FILE.toml",
            ));
        }
    };
    let what = config.backend.to_url();
    // A mode the configuration names wins; otherwise only `import` may create.
    let config = if config.mode == OpenMode::Create {
        let mode = open_mode(&cli.command, &config.backend);
        config.with_mode(mode)
    } else {
        config
    };
    Storage::new(config)
        .await
        .map_err(|e| CliError::from(e).context(format!("opening {what}")))
}

async fn run(cli: Cli) -> CliResult {
    let ctx = Ctx {
        json: cli.json,
        quiet: cli.quiet,
    };
    if let Cmd::Demo { blocks, keep } = &cli.command {
        return demo::run(
            &ctx,
            cli.store.as_deref(),
            cli.config.as_deref(),
            *blocks,
            *keep,
        )
        .await;
    }
    if let Cmd::Migrate {
        from, to, batch, ..
    } = &cli.command
    {
        return commands::migrate(&ctx, from, to, *batch).await;
    }
    if let Cmd::Repair { from, to, .. } = &cli.command {
        return commands::repair(&ctx, from, to).await;
    }
    let store = open(&cli).await?;
    let result = match &cli.command {
        Cmd::Demo { .. } | Cmd::Migrate { .. } | Cmd::Repair { .. } => {
            unreachable!("handled above")
        }
        Cmd::Import {
            file,
            format,
            batch,
            no_head,
        } => commands::import(&ctx, &store, file.as_deref(), *format, *batch, !no_head).await,
        Cmd::Export {
            file,
            format,
            from_index,
            to_index,
        } => {
            commands::export(
                &ctx,
                &store,
                file.as_deref(),
                *format,
                *from_index,
                *to_index,
            )
            .await
        }
        Cmd::Verify { page, allow_gaps } => {
            commands::verify(&ctx, &store, *page, *allow_gaps).await
        }
        Cmd::List {
            limit,
            offset,
            start_time,
            end_time,
            order,
            payload_type,
            signer,
            from_index,
            to_index,
        } => {
            let mut filter = BlockFilter::new();
            filter.payload_type = payload_type.clone();
            filter.public_key = *signer;
            (filter.min_index, filter.max_index) = (*from_index, *to_index);
            let mut options = ListOptions::new().filter(filter).order(match order {
                Order::Asc => SortOrder::Ascending,
                Order::Desc => SortOrder::Descending,
                Order::Time => SortOrder::ByTimestamp,
            });
            (options.limit, options.offset) = (*limit, *offset);
            (options.start_time, options.end_time) = (*start_time, *end_time);
            commands::list(&ctx, &store, &options).await
        }
        Cmd::Get { hash, index } => match (hash, index) {
            (_, Some(i)) => commands::get(&ctx, &store, commands::Lookup::Index(*i)).await,
            (Some(h), None) => commands::get(&ctx, &store, commands::Lookup::Hash(h)).await,
            (None, None) => Err(CliError::usage("get needs a hash or --index")),
        },
        Cmd::Head => commands::head(&ctx, &store).await,
        Cmd::Stats => commands::stats(&ctx, &store).await,
        Cmd::Compact => commands::maintain(&ctx, &store, false).await,
        Cmd::Vacuum => commands::maintain(&ctx, &store, true).await,
    };
    // Close even after a failure, so files are flushed and locks released.
    let closed = store.close().await;
    result?;
    closed.map_err(CliError::from)
}

fn main() -> ExitCode {
    let parsed = <Cli as clap::CommandFactory>::command()
        .try_get_matches()
        .and_then(|m| <Cli as clap::FromArgMatches>::from_arg_matches(&m).map(|cli| (m, cli)));
    let (matches, mut cli) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => return usage_error(e),
    };
    if let Some((name @ ("migrate" | "repair"), sub)) = matches.subcommand() {
        let given = |m: &clap::ArgMatches, id: &str| {
            matches!(
                m.value_source(id),
                Some(clap::parser::ValueSource::CommandLine)
            )
        };
        if ["store", "config"]
            .iter()
            .any(|id| given(&matches, id) || given(sub, id))
        {
            return report(
                CliError::usage(format!(
                    "{name} names its stores with --from URL and --to URL; --store and \
                     --config do not apply"
                )),
                cli.json,
            );
        }
    }
    // One rule for where the store comes from: the command line, else
    // OLOCUS_STORE; on the command line, one of --config and --store.
    if cli.config.is_some() {
        match matches.value_source("store") {
            Some(clap::parser::ValueSource::EnvVariable) => cli.store = None,
            Some(clap::parser::ValueSource::CommandLine) => {
                return report(
                    CliError::usage("--config and --store both name a store; give one of them"),
                    cli.json,
                );
            }
            _ => {}
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("OLOCUS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // A storage operation is a span: print each as it ends, with its
        // outcome and how long it took.
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        // Colour codes only for a terminal, never into a pipe or a file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json = cli.json;
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(e, json),
    }
}

/// A command line clap refused: clap's own message and exit, or under
/// `--json` the same message as a JSON error (help and version print as usual).
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind as K;
    let json = std::env::args_os().skip(1).any(|a| a == "--json");
    if !json || matches!(e.kind(), K::DisplayHelp | K::DisplayVersion) {
        e.exit()
    }
    // clap's text without its "error: " prefix and usage footer.
    let text = e.to_string();
    let first = text
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ");
    report(CliError::usage(first.to_string()), true)
}

/// Prints a failure (as JSON under `--json`) and gives its exit code.
fn report(e: CliError, json: bool) -> ExitCode {
    if e.code == Exit::ClosedPipe {
        // Whoever read the output stopped reading: nothing to say.
    } else if json {
        // Machine-readable output stays machine-readable when it fails.
        println!(
            "{}",
            serde_json::json!({
                "error": e.msg,
                "kind": e.code.name(),
                "exit_code": e.code as u8,
            })
        );
    } else {
        eprintln!("error: {}", e.msg);
    }
    ExitCode::from(e.code as u8)
}

/// Maps a storage error into the CLI's, naming what was being done.
pub fn ctx_err(what: impl std::fmt::Display) -> impl FnOnce(StorageError) -> CliError {
    move |e| CliError::from(e).context(what)
}
