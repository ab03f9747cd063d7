//! The commands other than `demo`.

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::time::Instant;

use futures::stream::{Stream, StreamExt, TryChunksError, TryStreamExt};
use olocus_storage::{
    BackendConfig, Block, BlockHash, ListOptions, OpenMode, Storage, StorageBackend,
    StorageBackendExt, StorageConfig, StorageError, VerifyOptions, WireFormat, verify_block,
};
use serde_json::json;

use crate::render;
use crate::{CliError, CliResult, Ctx, Format, ctx_err};

/// First bytes of a binary export: magic and format version.
pub(crate) const BINARY_MAGIC: &[u8; 8] = b"OLBLOCK1";

fn format_for(path: Option<&Path>, given: Option<Format>) -> Format {
    given.unwrap_or_else(
        || match path.and_then(|p| p.extension()).and_then(|e| e.to_str()) {
            Some("bin" | "olb" | "blocks") => Format::Binary,
            _ => Format::Jsonl,
        },
    )
}

fn is_stdio(path: Option<&Path>) -> bool {
    path.is_none_or(|p| p.as_os_str() == "-")
}

/// Reads blocks from `input` on this (blocking) thread, checking each one's
/// signature, and hands them on in batches.
fn read_blocks(
    input: Box<dyn Read + Send>,
    format: Format,
    batch: usize,
    mut sink: impl FnMut(Vec<Block>) -> bool,
) -> CliResult<u64> {
    let mut reader = BufReader::with_capacity(1 << 20, input);
    let mut pending = Vec::with_capacity(batch);
    let mut n = 0u64;
    let mut flush = |pending: &mut Vec<Block>| -> CliResult<()> {
        if !pending.is_empty() && !sink(std::mem::take(pending)) {
            return Err(CliError::failure(
                "import stopped: the store refused a batch",
            ));
        }
        Ok(())
    };
    match format {
        Format::Jsonl => {
            let mut line = Vec::new();
            let mut lineno = 0u64;
            loop {
                line.clear();
                // Bounded: a line longer than any block can encode to is refused
                // after reading just past the limit, not buffered whole.
                let limit = olocus_storage::MAX_ENCODED_BLOCK_BYTES as u64 + 2;
                if (&mut reader).take(limit + 1).read_until(b'\n', &mut line)? == 0 {
                    break;
                }
                lineno += 1;
                if line.len() as u64 > limit && !line.ends_with(b"\n") {
                    return Err(CliError::usage(format!(
                        "line {lineno}: longer than {limit} bytes, more than any block encodes \
                         to; refused without reading the rest"
                    )));
                }
                let text = std::str::from_utf8(&line).map_err(|e| {
                    CliError::usage(format!(
                        "line {lineno}: not UTF-8 text (byte {} of the line); a JSON Lines \
                         export is text; for a binary export use --format binary",
                        e.valid_up_to() + 1
                    ))
                })?;
                let text = text.trim();
                if text.is_empty() {
                    continue;
                }
                let block = WireFormat::JSON
                    .decode(text.as_bytes())
                    .map_err(|e| bad_input(e, format!("line {lineno}")))?;
                pending.push(block);
                n += 1;
                if pending.len() >= batch {
                    flush(&mut pending)?;
                }
            }
        }
        Format::Binary => {
            let mut magic = Vec::with_capacity(8);
            (&mut reader)
                .take(8)
                .read_to_end(&mut magic)
                .map_err(|e| CliError::from(e).context("reading the binary header"))?;
            if magic.is_empty() {
                return Err(CliError::usage(
                    "the input is empty: a binary export begins with the 8-byte header \
                     OLBLOCK1",
                ));
            }
            if magic != BINARY_MAGIC {
                return Err(CliError::usage(
                    "not a binary block export: it does not begin with the header OLBLOCK1 \
                     (for JSON Lines use --format jsonl)",
                ));
            }
            let mut offset = 8u64;
            loop {
                let mut len = [0u8; 4];
                match reader.read_exact(&mut len) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                    Err(e) => return Err(e.into()),
                }
                let len = u32::from_le_bytes(len) as usize;
                if len > olocus_storage::MAX_ENCODED_BLOCK_BYTES {
                    return Err(CliError::usage(format!(
                        "byte {offset}: record of {len} bytes exceeds the block size limit"
                    )));
                }
                let mut bytes = Vec::with_capacity(len);
                let got = (&mut reader).take(len as u64).read_to_end(&mut bytes)?;
                if got < len {
                    return Err(CliError::usage(format!(
                        "byte {offset}: the input ends inside a record of {len} bytes, {} \
                         bytes early (a cut-short file?)",
                        len - got
                    )));
                }
                let block = WireFormat::BINARY
                    .decode(&bytes)
                    .map_err(|e| bad_input(e, format!("byte {offset}")))?;
                offset += 4 + len as u64;
                pending.push(block);
                n += 1;
                if pending.len() >= batch {
                    flush(&mut pending)?;
                }
            }
        }
    }
    flush(&mut pending)?;
    Ok(n)
}

/// `import`.
pub(crate) async fn import(
    ctx: &Ctx,
    store: &Storage,
    file: Option<&Path>,
    format: Option<Format>,
    batch: usize,
    move_head: bool,
) -> CliResult {
    let format = format_for(if is_stdio(file) { None } else { file }, format);
    let (input, size): (Box<dyn Read + Send>, Option<u64>) = if is_stdio(file) {
        (Box::new(std::io::stdin()), None)
    } else {
        let path = file.expect("not stdio");
        let f = std::fs::File::open(path)
            .map_err(|e| CliError::from(e).context(format!("opening {}", path.display())))?;
        let meta = f
            .metadata()
            .map_err(|e| CliError::from(e).context(format!("reading {}", path.display())))?;
        if meta.is_dir() {
            return Err(CliError::usage(format!(
                "{} is a directory: give a block file (.jsonl, or .bin from export), or - \
                 for standard input",
                path.display()
            )));
        }
        let size = meta.is_file().then_some(meta.len());
        (Box::new(f), size)
    };
    // Progress is the input consumed, so the bar ends where the file does.
    let bar = ctx.byte_bar(size, "import");
    let input: Box<dyn Read + Send> = Box::new(bar.wrap_read(input));
    let started = Instant::now();
    // Decoding and signature checks on a reader thread; stores on this task.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Block>>(4);
    let reader = std::thread::spawn(move || {
        read_blocks(input, format, batch.max(1), |b| tx.blocking_send(b).is_ok())
    });
    let (mut stored, mut top): (u64, Option<Block>) = (0, None);
    let mut failure = None;
    while let Some(blocks) = rx.recv().await {
        if let Err(e) = store.store_blocks(&blocks).await {
            failure = Some(ctx_err(format!(
                "storing blocks {}..={}",
                blocks[0].index(),
                blocks[blocks.len() - 1].index()
            ))(e));
            break;
        }
        stored += blocks.len() as u64;
        for b in blocks {
            if top.as_ref().is_none_or(|t| b.index() > t.index()) {
                top = Some(b);
            }
        }
    }
    drop(rx);
    let read = reader
        .join()
        .map_err(|_| CliError::failure("the reader thread panicked"))?;
    bar.finish_and_clear();
    // What is already stored stays stored; importing again skips it.
    let so_far = |e: CliError| {
        let done = match &top {
            Some(t) => format!(
                "{stored} blocks were stored before this (up to index {}), the head did not \
                 move; fix the input and import again: stored blocks are skipped",
                t.index()
            ),
            None => "no block was stored".to_string(),
        };
        CliError::new(e.code, format!("{}; {done}", e.msg))
    };
    if let Some(e) = failure {
        return Err(so_far(e));
    }
    read.map_err(so_far)?;
    // The head moves by the library's rule: forward only, and only to a block
    // linked back to the stored chain; otherwise the blocks stay imported and
    // the output says why the head did not move.
    let (moved, refused) = match (&top, move_head) {
        (Some(t), true) => match store.advance_head(&t.hash()).await {
            Ok(moved) => (moved, None),
            // As far as the chain links, then: up to the block before the
            // first that does not.
            Err(StorageError::Verification { index, reason }) => {
                let below = match index.checked_sub(1) {
                    Some(i) => store
                        .get_block_by_index(i)
                        .await
                        .map_err(ctx_err("reading the head candidate"))?,
                    None => None,
                };
                let moved = match &below {
                    Some(b) => match store.advance_head(&b.hash()).await {
                        Ok(moved) => moved,
                        Err(StorageError::Verification { .. }) => false,
                        Err(e) => return Err(ctx_err("setting the head")(e)),
                    },
                    None => false,
                };
                if moved {
                    top = below;
                }
                (moved, Some(reason))
            }
            Err(e) => return Err(ctx_err("setting the head")(e)),
        },
        _ => (false, None),
    };
    let elapsed = started.elapsed();
    if ctx.json {
        out!(
            "{}",
            json!({
                "imported": stored,
                "head": top.as_ref().filter(|_| moved).map(|t| t.hash().to_string()),
                "head_not_moved": refused,
                "seconds": elapsed.as_secs_f64(),
            })
        )?;
    } else {
        out!(
            "imported {stored} blocks in {elapsed:.2?}{}",
            match (&top, moved, move_head, &refused) {
                (Some(t), true, _, Some(why)) => format!(
                    "; head is #{} {} and goes no further: {why} (import the missing blocks, \
                     then import again)",
                    t.index(),
                    t.hash()
                ),
                (Some(t), true, _, None) => format!("; head is #{} {}", t.index(), t.hash()),
                (Some(_), false, true, Some(why)) => format!(
                    "; the head stays: {why} (import the missing blocks, then import again or \
                     use --no-head)"
                ),
                (Some(_), false, true, None) =>
                    "; the head stays (it is at or above these blocks)".into(),
                _ => String::new(),
            }
        )?;
    }
    Ok(())
}

/// The highest stored index, if any block is stored.
async fn last_index(store: &dyn StorageBackend) -> Result<Option<u64>, StorageError> {
    Ok(store
        .list_blocks(&ListOptions::new().limit(1).descending())
        .await?
        .first()
        .map(|m| m.index))
}

/// Metadata of the blocks with `lo <= index <= hi`, in index order.
async fn listed_between(
    store: &dyn StorageBackend,
    lo: u64,
    hi: u64,
) -> Result<Vec<olocus_storage::BlockMetadata>, StorageError> {
    store
        .list_blocks(&ListOptions::new().min_index(lo).max_index(hi))
        .await
}

/// Stored blocks in index order within `range`, in chunks of at most `page`
/// (one range read each); the error of a failed read names the indices it was
/// reading.
fn chunks<'a>(
    store: &'a dyn StorageBackend,
    range: std::ops::RangeInclusive<u64>,
    page: u64,
) -> impl Stream<Item = CliResult<Vec<Block>>> + 'a {
    let page = page.max(1);
    let from = *range.start();
    let mut next = from;
    store
        .stream_range_paged(range, page)
        .try_chunks(usize::try_from(page).unwrap_or(usize::MAX))
        .map(move |chunk| match chunk {
            Ok(blocks) => {
                if let Some(last) = blocks.last() {
                    next = last.index().saturating_add(1);
                }
                Ok(blocks)
            }
            Err(TryChunksError(_, e)) => {
                Err(ctx_err(format!("reading blocks from index {next}"))(e))
            }
        })
}

/// `export`.
pub(crate) async fn export(
    ctx: &Ctx,
    store: &Storage,
    file: Option<&Path>,
    format: Option<Format>,
    from: u64,
    to: Option<u64>,
) -> CliResult {
    let format = format_for(if is_stdio(file) { None } else { file }, format);
    let mut out: BufWriter<Box<dyn Write>> =
        BufWriter::with_capacity(
            1 << 20,
            if is_stdio(file) {
                Box::new(std::io::stdout())
            } else {
                let path = file.expect("not stdio");
                Box::new(std::fs::File::create(path).map_err(|e| {
                    CliError::from(e).context(format!("creating {}", path.display()))
                })?)
            },
        );
    if format == Format::Binary {
        out.write_all(BINARY_MAGIC)?;
    }
    let Some(last) = last_index(&**store).await.map_err(ctx_err("listing"))? else {
        out.flush()?;
        return Ok(());
    };
    let to = to.unwrap_or(last).min(last);
    let total = store.count_blocks().await.map_err(ctx_err("counting"))?;
    let bar = ctx.bar(total, "export");
    let mut n = 0u64;
    let mut pages = std::pin::pin!(chunks(&**store, from..=to, 1_000));
    while let Some(blocks) = pages.next().await.transpose()? {
        tokio::task::block_in_place(|| -> CliResult {
            for b in &blocks {
                match format {
                    Format::Jsonl => {
                        out.write_all(&WireFormat::JSON.encode(b)?)?;
                        out.write_all(b"\n")?;
                    }
                    Format::Binary => {
                        let bytes = WireFormat::BINARY.encode(b)?;
                        out.write_all(&(bytes.len() as u32).to_le_bytes())?;
                        out.write_all(&bytes)?;
                    }
                }
            }
            Ok(())
        })?;
        n += blocks.len() as u64;
        bar.inc(blocks.len() as u64);
    }
    tokio::task::block_in_place(|| out.flush())?;
    bar.finish_and_clear();
    if !is_stdio(file) {
        if ctx.json {
            out!("{}", json!({ "exported": n }))?;
        } else {
            out!("exported {n} blocks")?;
        }
    }
    Ok(())
}

/// `verify`: the library's whole check of the store against itself.
pub(crate) async fn verify(ctx: &Ctx, store: &Storage, page: u64, allow_gaps: bool) -> CliResult {
    let started = Instant::now();
    let total = store.count_blocks().await.map_err(ctx_err("counting"))?;
    let bar = ctx.bar(total, "verify");
    let options = VerifyOptions::default().page(page).allow_gaps(allow_gaps);
    let mut verified = 0u64;
    let outcome = store
        .verify_store(&options, &mut |n| {
            verified += n;
            bar.inc(n);
        })
        .await;
    bar.finish_and_clear();
    match outcome {
        Ok(report) => {
            let gaps = olocus_storage::salvage::format_ranges(&report.gaps);
            if ctx.json {
                out!(
                    "{}",
                    json!({ "ok": true, "checked": report.checked, "stored": report.stored,
                            "last_index": report.last.map(|l| l.0),
                            "head": report.head.map(|h| h.to_string()),
                            "gaps": gaps,
                            "seconds": started.elapsed().as_secs_f64() })
                )?;
            } else {
                let gaps = if gaps.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; missing (accepted with --allow-gaps): {}",
                        gaps.join(", ")
                    )
                };
                let head = match report.last {
                    Some((i, _)) => format!("head is the last block #{i}"),
                    None => "the store is empty".into(),
                };
                out!(
                    "verified {} blocks: signatures, index sequence, hash links and stored \
                     hashes hold, the count matches, {head}{gaps} ({:.2?})",
                    report.checked,
                    started.elapsed()
                )?;
            }
            Ok(())
        }
        Err(e) => {
            let (index, kind, reason) = match e {
                StorageError::Verification { index, reason } => {
                    (Some(index), "chain broken", reason)
                }
                StorageError::Corrupted { context, source } => (
                    None,
                    "store damaged",
                    match source {
                        Some(s) => format!("{context}: {s}"),
                        None => context,
                    },
                ),
                other => return Err(ctx_err("verifying")(other)),
            };
            if ctx.json {
                out!(
                    "{}",
                    json!({ "ok": false, "index": index, "problem": kind, "reason": reason,
                            "verified_before": verified })
                )?;
            } else {
                let at = index.map(|i| format!(" at index {i}")).unwrap_or_default();
                out!("{kind}{at}: {reason} ({verified} blocks before it verified)")?;
            }
            Err(match index {
                Some(i) => CliError::new(
                    crate::Exit::VerifyFailed,
                    format!("verification failed at index {i}"),
                ),
                None => CliError::new(
                    crate::Exit::Damaged,
                    "verification failed: the store is damaged",
                ),
            })
        }
    }
}

/// `list`.
/// `list`: streamed a page at a time, so any length prints in bounded memory;
/// with `--json`, one JSON object per line (JSON Lines).
pub(crate) async fn list(ctx: &Ctx, store: &Storage, options: &ListOptions) -> CliResult {
    let mut entries = store.stream_list(options.clone());
    if !ctx.json {
        out!("{}", render::meta_header())?;
    }
    let mut n = 0u64;
    while let Some(m) = entries.try_next().await.map_err(ctx_err("listing"))? {
        if ctx.json {
            out!("{}", render::meta_json(&m))?;
        } else {
            out!("{}", render::meta_line(&m))?;
        }
        n += 1;
    }
    if !ctx.json {
        out!("({n} blocks)")?;
    }
    Ok(())
}

/// Which block `get` prints.
#[derive(Debug)]
pub(crate) enum Lookup<'a> {
    /// A hash, or a prefix of one.
    Hash(&'a str),
    /// A chain index.
    Index(u64),
}

/// The one stored block whose hash is or starts with `text`.
async fn resolve_hash(store: &Storage, text: &str) -> CliResult<BlockHash> {
    let want = text.trim().to_ascii_lowercase();
    if want.len() == 64 {
        return want
            .parse()
            .map_err(|e| CliError::from(e).context(format!("hash {text:?}")));
    }
    if want.len() < 4 || want.len() > 64 || !want.bytes().all(|b| b.is_ascii_hexdigit()) {
        // A short number is most likely an index.
        let hint = match text.parse::<u64>() {
            Ok(i) if want.len() < 4 => format!("; for the block at index {i}, use --index {i}"),
            _ => String::new(),
        };
        return Err(CliError::usage(format!(
            "{text:?} is not a block hash: give the 64 hex digits, or at least the first 4{hint}"
        )));
    }
    // No index by hash prefix: walk the metadata, a page at a time.
    let mut found = Vec::new();
    let mut listing = store.stream_list(ListOptions::new());
    while let Some(m) = listing
        .try_next()
        .await
        .map_err(ctx_err("listing blocks"))?
    {
        if m.hash.to_string().starts_with(&want) {
            found.push(m);
            if found.len() > 10 {
                break;
            }
        }
    }
    match found.as_slice() {
        [] => Err(CliError::new(
            crate::Exit::NotFound,
            format!("no stored block's hash starts with {want}"),
        )),
        [one] => Ok(one.hash),
        many => {
            let mut list: Vec<String> = many
                .iter()
                .take(10)
                .map(|m| format!("#{} {}", m.index, m.hash))
                .collect();
            if many.len() > 10 {
                list.push("…".into());
            }
            Err(CliError::usage(format!(
                "{want} starts the hashes of several blocks; give more digits: {}",
                list.join(", ")
            )))
        }
    }
}

/// `get`.
pub(crate) async fn get(ctx: &Ctx, store: &Storage, which: Lookup<'_>) -> CliResult {
    let (found, what) = match which {
        Lookup::Index(i) => (
            store
                .get_block_by_index(i)
                .await
                .map_err(ctx_err(format!("reading block #{i}")))?,
            format!("no block at index {i}"),
        ),
        Lookup::Hash(text) => {
            let hash = resolve_hash(store, text).await?;
            (
                store
                    .retrieve_block(&hash)
                    .await
                    .map_err(ctx_err(format!("reading block {hash}")))?,
                format!("block {hash} not found"),
            )
        }
    };
    match found {
        Some(b) => {
            let v = render::block_json(&b);
            if ctx.json {
                out!("{v}")?;
            } else {
                out!("{}", serde_json::to_string_pretty(&v)?)?;
            }
            Ok(())
        }
        None => Err(CliError::new(crate::Exit::NotFound, what)),
    }
}

/// `head`.
pub(crate) async fn head(ctx: &Ctx, store: &Storage) -> CliResult {
    let head = store
        .get_chain_head()
        .await
        .map_err(ctx_err("reading the head"))?;
    let block = match head {
        Some(h) => store
            .retrieve_block(&h)
            .await
            .map_err(ctx_err(format!("reading head block {h}")))?,
        None => None,
    };
    if ctx.json {
        out!(
            "{}",
            json!({ "head": head.map(|h| h.to_string()), "index": block.as_ref().map(Block::index) })
        )?;
    } else {
        match block {
            Some(b) => out!("#{} {}", b.index(), b.hash())?,
            None => out!("no head set")?,
        }
    }
    Ok(())
}

/// `stats`.
pub(crate) async fn stats(ctx: &Ctx, store: &Storage) -> CliResult {
    let s = store
        .get_stats()
        .await
        .map_err(ctx_err("reading statistics"))?;
    if ctx.json {
        out!("{}", render::stats_json(&s))?;
    } else {
        out_no_newline!("{}", render::stats_text(&s))?;
    }
    Ok(())
}

/// `compact` and `vacuum`.
pub(crate) async fn maintain(ctx: &Ctx, store: &Storage, vacuum: bool) -> CliResult {
    let what = if vacuum { "vacuum" } else { "compact" };
    let started = Instant::now();
    let bar = ctx.spinner(what);
    if vacuum {
        store.vacuum().await
    } else {
        store.compact().await
    }
    .map_err(ctx_err(what))?;
    bar.finish_and_clear();
    let elapsed = started.elapsed();
    if ctx.json {
        out!(
            "{}",
            json!({ "done": what, "seconds": elapsed.as_secs_f64() })
        )?;
    } else {
        out!("{what} done in {elapsed:.2?}")?;
    }
    Ok(())
}

/// `migrate`.
/// `repair`: salvage what is intact into a new store.
pub(crate) async fn repair(ctx: &Ctx, from: &str, to: &str) -> CliResult {
    let (src_config, dst_config) = (
        StorageConfig::from_url(from).map_err(ctx_err("--from"))?,
        StorageConfig::from_url(to).map_err(ctx_err("--to"))?,
    );
    if src_config.backend == dst_config.backend {
        return Err(CliError::usage("--from and --to name the same store"));
    }
    let dst = Storage::new(dst_config)
        .await
        .map_err(ctx_err(format!("opening {to}")))?;
    let bar = ctx.spinner("repair");
    let report = match &src_config.backend {
        // A damaged filesystem store does not open: its files are read directly.
        #[cfg(feature = "fs")]
        olocus_storage::BackendConfig::Filesystem { path, .. } => {
            olocus_storage::filesystem::salvage(path.clone(), &*dst).await
        }
        // A SQLite file whose counters disagree with its rows opens for salvage.
        #[cfg(feature = "sqlite")]
        olocus_storage::BackendConfig::SQLite { path } => {
            match olocus_storage::sqlite::SQLiteBackend::open_for_salvage(
                olocus_storage::sqlite::SQLiteConfig::at(path),
            )
            .await
            {
                Ok(src) => {
                    let report = olocus_storage::salvage::copy_intact(&src, &*dst).await;
                    let _ = olocus_storage::StorageBackend::close(&src).await;
                    report
                }
                Err(e) => Err(e),
            }
        }
        _ => match Storage::new(src_config).await {
            Ok(src) => {
                let report = olocus_storage::salvage::copy_intact(&*src, &*dst).await;
                let _ = src.close().await;
                report
            }
            Err(e) => Err(e),
        },
    };
    let closed = dst.close().await;
    bar.finish_and_clear();
    let report = report.map_err(ctx_err(format!("salvaging {from} into {to}")))?;
    closed.map_err(ctx_err("closing the new store"))?;
    if ctx.json {
        out!(
            "{}",
            json!({ "copied": report.copied,
                    "lost": report.lost.iter().map(|(a, b)| [a, b]).collect::<Vec<_>>(),
                    "damage": report.damage, "head": report.head.map(|h| h.to_string()) })
        )?;
    } else {
        for d in &report.damage {
            out!("damaged: {d}")?;
        }
        out!(
            "copied {} intact blocks from {from} into {to}; lost: {}; head {}",
            report.copied,
            report.lost_summary(),
            report
                .head
                .map_or_else(|| "not set".to_string(), |h| h.to_string())
        )?;
    }
    Ok(())
}

/// An input record that does not decode: bad input, not a damaged store, so
/// it is said without the decoder's "corrupted data".
fn bad_input(e: StorageError, at: String) -> CliError {
    let what = match &e {
        StorageError::Corrupted { context, source } => match source {
            Some(cause) => format!("{context}: {}", olocus_storage::error_report(&**cause)),
            None => context.clone(),
        },
        other => olocus_storage::error_report(other),
    };
    CliError::usage(format!("{at}: {what}"))
}

/// How a store that is only read is opened: read-only, beside any process
/// writing it; a missing store is an error, not a new empty one. (A memory
/// store exists only once opened.)
pub(crate) fn read_mode(backend: &BackendConfig) -> OpenMode {
    match backend {
        BackendConfig::Memory => OpenMode::Create,
        _ => OpenMode::ReadOnly,
    }
}

/// `migrate`.
pub(crate) async fn migrate(ctx: &Ctx, from: &str, to: &str, batch: u64) -> CliResult {
    let mut src_config = StorageConfig::from_url(from).map_err(ctx_err("--from"))?;
    // A mode the URL names wins; otherwise the source is only read.
    if src_config.mode == OpenMode::Create {
        src_config.mode = read_mode(&src_config.backend);
    }
    let dst_config = StorageConfig::from_url(to).map_err(ctx_err("--to"))?;
    if src_config.backend == dst_config.backend {
        return Err(CliError::usage("--from and --to name the same store"));
    }
    let src = Storage::new(src_config)
        .await
        .map_err(ctx_err(format!("opening {from}")))?;
    let dst = Storage::new(dst_config)
        .await
        .map_err(ctx_err(format!("opening {to}")))?;
    let result = copy_all(ctx, &src, &dst, batch.max(1)).await;
    let closed = (src.close().await, dst.close().await);
    let summary = result?;
    closed.0.map_err(ctx_err("closing the source"))?;
    closed.1.map_err(ctx_err("closing the destination"))?;
    if ctx.json {
        out!("{summary}")?;
    } else {
        out!(
            "migrated {} blocks from {from} to {to} ({} were already there) in {:.2}s; head {}",
            summary["copied"],
            summary["skipped"],
            summary["seconds"].as_f64().unwrap_or(0.0),
            summary["head"].as_str().unwrap_or("not set")
        )?;
    }
    Ok(())
}

async fn copy_all(
    ctx: &Ctx,
    src: &Storage,
    dst: &Storage,
    batch: u64,
) -> CliResult<serde_json::Value> {
    let started = Instant::now();
    let total = src
        .count_blocks()
        .await
        .map_err(ctx_err("counting the source"))?;
    // Resume: everything below the destination's last page is already there (each
    // page is one write, all or nothing); the last page is written again, which
    // store_blocks makes a no-op for blocks already there.
    let mut start = 0;
    if let Some(top) = last_index(&**dst)
        .await
        .map_err(ctx_err("listing the destination"))?
    {
        let theirs = listed_between(&**dst, top, top)
            .await
            .map_err(ctx_err("listing the destination"))?;
        let ours = listed_between(&**src, top, top)
            .await
            .map_err(ctx_err("listing the source"))?;
        if ours.first().map(|m| m.hash) != theirs.first().map(|m| m.hash) {
            return Err(CliError::failure(format!(
                "the destination holds a block at index {top} that the source does not; \
                 refusing to mix two chains"
            )));
        }
        // Batches were written in index order, one write each, so all is there
        // below the last; that one may be partial on a store without atomic
        // batches, and it began at most `batch` stored blocks below `top`.
        start = src
            .list_blocks(&ListOptions::new().descending().max_index(top).limit(batch))
            .await
            .map_err(ctx_err("listing the source"))?
            .last()
            .map_or(0, |m| m.index);
    }
    let skipped_before = dst
        .count_blocks()
        .await
        .map_err(ctx_err("counting the destination"))?;
    let bar = ctx.bar(total, "migrate");
    let mut prev: Option<Block> = match start.checked_sub(1) {
        Some(before) => src
            .get_block_by_index(before)
            .await
            .map_err(ctx_err("reading the source"))?,
        None => None,
    };
    let mut copied = 0u64;
    if let Some(last) = last_index(&**src)
        .await
        .map_err(ctx_err("listing the source"))?
    {
        let mut pages = std::pin::pin!(chunks(&**src, start..=last, batch));
        while let Some(blocks) = pages.next().await.transpose()? {
            for b in &blocks {
                let linked = prev.as_ref().filter(|p| p.index() + 1 == b.index());
                verify_block(b, linked).map_err(|e| {
                    CliError::from(e)
                        .context(format!("source block #{} fails verification", b.index()))
                })?;
                prev = Some(b.clone());
            }
            dst.store_blocks(&blocks).await.map_err(ctx_err(format!(
                "writing blocks {}..={} to the destination",
                blocks[0].index(),
                blocks[blocks.len() - 1].index()
            )))?;
            copied += blocks.len() as u64;
            bar.inc(blocks.len() as u64);
        }
    }
    let head = src
        .get_chain_head()
        .await
        .map_err(ctx_err("reading the source head"))?;
    if let Some(h) = head {
        dst.advance_head(&h)
            .await
            .map_err(ctx_err("setting the destination head"))?;
    }
    bar.finish_and_clear();
    let dst_count = dst
        .count_blocks()
        .await
        .map_err(ctx_err("counting the destination"))?;
    if dst_count < total {
        return Err(CliError::failure(format!(
            "the destination holds {dst_count} blocks after the copy, the source {total}"
        )));
    }
    Ok(json!({
        "copied": dst_count.saturating_sub(skipped_before),
        "skipped": skipped_before,
        "written": copied,
        "blocks": dst_count,
        "head": head.map(|h| h.to_string()),
        "seconds": started.elapsed().as_secs_f64(),
    }))
}
