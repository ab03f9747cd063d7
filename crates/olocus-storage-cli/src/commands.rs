//! The commands other than `demo`.

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::time::Instant;

use olocus_storage::{
    Block, BlockFilter, BlockHash, ErrorKind, ListOptions, SortOrder, Storage, StorageBackend,
    StorageConfig, StorageError, WireFormat, verify_block,
};
use serde_json::json;

use crate::render;
use crate::{CliError, CliResult, Ctx, Format, ctx_err};

/// First bytes of a binary export: magic and format version.
pub const BINARY_MAGIC: &[u8; 8] = b"OLBLOCK1";

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
            return Err(CliError("import stopped: the store refused a batch".into()));
        }
        Ok(())
    };
    match format {
        Format::Jsonl => {
            let mut line = String::new();
            let mut lineno = 0u64;
            loop {
                line.clear();
                if reader.read_line(&mut line)? == 0 {
                    break;
                }
                lineno += 1;
                let text = line.trim();
                if text.is_empty() {
                    continue;
                }
                let block = WireFormat::JSON
                    .decode(text.as_bytes())
                    .map_err(|e| CliError(format!("line {lineno}: {}", CliError::from(e).0)))?;
                pending.push(block);
                n += 1;
                if pending.len() >= batch {
                    flush(&mut pending)?;
                }
            }
        }
        Format::Binary => {
            let mut magic = [0u8; 8];
            reader
                .read_exact(&mut magic)
                .map_err(|e| CliError(format!("reading the binary header: {e}")))?;
            if &magic != BINARY_MAGIC {
                return Err(CliError(
                    "not a binary block export (bad header; use --format jsonl?)".into(),
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
                    return Err(CliError(format!(
                        "byte {offset}: record of {len} bytes exceeds the block size limit"
                    )));
                }
                let mut bytes = vec![0u8; len];
                reader
                    .read_exact(&mut bytes)
                    .map_err(|e| CliError(format!("byte {offset}: record cut short ({e})")))?;
                let block = WireFormat::BINARY
                    .decode(&bytes)
                    .map_err(|e| CliError(format!("byte {offset}: {}", CliError::from(e).0)))?;
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
pub async fn import(
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
            .map_err(|e| CliError(format!("opening {}: {e}", path.display())))?;
        let size = f.metadata().ok().map(|m| m.len());
        (Box::new(f), size)
    };
    let bar = match size {
        Some(s) => ctx.bar(s, "import"),
        None => ctx.bar(0, "import"),
    };
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
        bar.inc(blocks.iter().map(|b| b.size_bytes()).sum::<u64>());
        for b in blocks {
            if top.as_ref().is_none_or(|t| b.index() > t.index()) {
                top = Some(b);
            }
        }
    }
    drop(rx);
    let read = reader
        .join()
        .map_err(|_| CliError("the reader thread panicked".into()))?;
    bar.finish_and_clear();
    if let Some(e) = failure {
        return Err(e);
    }
    read?;
    if move_head && let Some(t) = &top {
        store
            .set_chain_head(&t.hash())
            .await
            .map_err(ctx_err("setting the head"))?;
    }
    let elapsed = started.elapsed();
    if ctx.json {
        println!(
            "{}",
            json!({ "imported": stored, "head": top.as_ref().filter(|_| move_head).map(|t| t.hash().to_string()), "seconds": elapsed.as_secs_f64() })
        );
    } else {
        println!(
            "imported {stored} blocks in {elapsed:.2?}{}",
            match (&top, move_head) {
                (Some(t), true) => format!("; head is #{} {}", t.index(), t.hash()),
                _ => String::new(),
            }
        );
    }
    Ok(())
}

/// The highest stored index, if any block is stored.
async fn last_index(store: &dyn StorageBackend) -> Result<Option<u64>, StorageError> {
    Ok(store
        .list_blocks(&ListOptions {
            limit: Some(1),
            order: SortOrder::Descending,
            ..Default::default()
        })
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
        .list_blocks(&ListOptions {
            filter: Some(BlockFilter {
                min_index: Some(lo),
                max_index: Some(hi),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
}

/// The lowest stored index at or after `from`.
async fn next_index(store: &dyn StorageBackend, from: u64) -> Result<Option<u64>, StorageError> {
    Ok(store
        .list_blocks(&ListOptions {
            limit: Some(1),
            filter: Some(BlockFilter {
                min_index: Some(from),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?
        .first()
        .map(|m| m.index))
}

/// Stored blocks in index order, `page` at a time, from `from` to `to`, skipping
/// gaps with one listing each.
struct Pages<'a> {
    store: &'a dyn StorageBackend,
    next: Option<u64>,
    to: u64,
    page: u64,
}

/// A page [`Pages`] could not read: its window and why.
struct PageError {
    start: u64,
    end: u64,
    error: StorageError,
}

impl From<PageError> for CliError {
    fn from(e: PageError) -> Self {
        ctx_err(format!("reading blocks {}..={}", e.start, e.end))(e.error)
    }
}

impl<'a> Pages<'a> {
    fn new(store: &'a dyn StorageBackend, from: u64, to: u64, page: u64) -> Self {
        Self {
            store,
            next: (from <= to).then_some(from),
            to,
            page: page.max(1),
        }
    }

    async fn next(&mut self) -> Result<Option<Vec<Block>>, PageError> {
        while let Some(start) = self.next {
            let end = start.saturating_add(self.page - 1).min(self.to);
            let failed = |error| PageError { start, end, error };
            let blocks = self
                .store
                .get_blocks_by_range(start, end)
                .await
                .map_err(failed)?;
            let after = match blocks.last() {
                Some(b) => b.index().checked_add(1),
                None => next_index(self.store, end.saturating_add(1))
                    .await
                    .map_err(failed)?,
            };
            self.next = after.filter(|n| *n > start && *n <= self.to);
            if !blocks.is_empty() {
                return Ok(Some(blocks));
            }
        }
        Ok(None)
    }
}

/// `export`.
pub async fn export(
    ctx: &Ctx,
    store: &Storage,
    file: Option<&Path>,
    format: Option<Format>,
    from: u64,
    to: Option<u64>,
) -> CliResult {
    let format = format_for(if is_stdio(file) { None } else { file }, format);
    let mut out: BufWriter<Box<dyn Write>> = BufWriter::with_capacity(
        1 << 20,
        if is_stdio(file) {
            Box::new(std::io::stdout())
        } else {
            let path = file.expect("not stdio");
            Box::new(
                std::fs::File::create(path)
                    .map_err(|e| CliError(format!("creating {}: {e}", path.display())))?,
            )
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
    let mut pages = Pages::new(&**store, from, to, 1_000);
    while let Some(blocks) = pages.next().await? {
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
            println!("{}", json!({ "exported": n }));
        } else {
            println!("exported {n} blocks");
        }
    }
    Ok(())
}

/// Where and why a chain breaks.
pub struct Break {
    /// The first index that breaks.
    pub index: u64,
    /// The block there, if one is stored.
    pub hash: Option<BlockHash>,
    /// What does not hold.
    pub reason: String,
}

/// `verify`.
pub async fn verify(ctx: &Ctx, store: &Storage, page: u64) -> CliResult {
    let started = Instant::now();
    let total = store.count_blocks().await.map_err(ctx_err("counting"))?;
    let bar = ctx.bar(total, "verify");
    let (checked, last, broken) = walk_chain(&**store, page, |n| bar.inc(n)).await?;
    bar.finish_and_clear();
    let head = store
        .get_chain_head()
        .await
        .map_err(ctx_err("reading the head"))?;
    match broken {
        Some(b) => {
            if ctx.json {
                println!(
                    "{}",
                    json!({ "ok": false, "checked": checked, "index": b.index,
                            "hash": b.hash.map(|h| h.to_string()), "reason": b.reason })
                );
            } else {
                println!(
                    "chain broken at index {}{}: {} ({checked} blocks before it verified)",
                    b.index,
                    b.hash.map(|h| format!(" (block {h})")).unwrap_or_default(),
                    b.reason
                );
            }
            Err(CliError(format!(
                "verification failed at index {}",
                b.index
            )))
        }
        None => {
            let head_note = match (&head, &last) {
                (None, _) => "no head set".to_string(),
                (Some(h), Some(l)) if *h == l.hash() => {
                    format!("head is the last block #{}", l.index())
                }
                (Some(h), _) => format!("head {h} is not the last block"),
            };
            if ctx.json {
                println!(
                    "{}",
                    json!({ "ok": true, "checked": checked, "stored": total,
                            "last_index": last.as_ref().map(Block::index),
                            "head": head.map(|h| h.to_string()), "seconds": started.elapsed().as_secs_f64() })
                );
            } else {
                println!(
                    "verified {checked} blocks{}: signatures, index sequence, hash links and \
                     stored hashes all hold; {head_note} ({:.2?})",
                    last.as_ref()
                        .map(|l| format!(" (#0..=#{})", l.index()))
                        .unwrap_or_default(),
                    started.elapsed()
                );
            }
            Ok(())
        }
    }
}

/// The break "block `index` is missing", `next` being the next stored index.
fn missing(index: u64, next: u64) -> Break {
    Break {
        index,
        hash: None,
        reason: format!("block missing (the next stored block is #{next})"),
    }
}

/// Checks the stored chain from genesis; returns blocks checked, the last block,
/// and the first break.
pub async fn walk_chain(
    store: &dyn StorageBackend,
    page: u64,
    mut progress: impl FnMut(u64),
) -> CliResult<(u64, Option<Block>, Option<Break>)> {
    let mut prev: Option<Block> = None;
    let mut checked = 0u64;
    let mut pages = Pages::new(store, 0, olocus_storage::MAX_INDEX, page);
    loop {
        let (blocks, unreadable) = match pages.next().await {
            Ok(Some(b)) => (b, None),
            Ok(None) => return Ok((checked, prev, None)),
            // Read this page block by block: verify what reads, stop at what does not.
            Err(PageError { start, end, error }) => {
                read_one_by_one(store, start, end, error).await?
            }
        };
        for b in blocks {
            let expected = prev.as_ref().map_or(0, |p| p.index() + 1);
            if b.index() != expected {
                return Ok((checked, prev, Some(missing(expected, b.index()))));
            }
            if let Err(e) = verify_block(&b, prev.as_ref()) {
                let reason = match e {
                    StorageError::Verification { reason, .. } => reason,
                    other => CliError::from(other).0,
                };
                return Ok((
                    checked,
                    prev,
                    Some(Break {
                        index: b.index(),
                        hash: Some(b.hash()),
                        reason,
                    }),
                ));
            }
            checked += 1;
            progress(1);
            prev = Some(b);
        }
        if let Some(broken) = unreadable {
            // A missing block before the unreadable one is the first break.
            let expected = prev.as_ref().map_or(0, |p| p.index() + 1);
            let broken = if broken.hash.is_some() && broken.index > expected {
                missing(expected, broken.index)
            } else {
                broken
            };
            return Ok((checked, prev, Some(broken)));
        }
    }
}

/// The blocks of `start..=end` that read, in order, up to the first that does not,
/// and where that one breaks.
async fn read_one_by_one(
    store: &dyn StorageBackend,
    start: u64,
    end: u64,
    range_error: StorageError,
) -> CliResult<(Vec<Block>, Option<Break>)> {
    let listed = listed_between(store, start, end)
        .await
        .map_err(ctx_err("listing"))?;
    let mut read = Vec::with_capacity(listed.len());
    for m in listed {
        match store.retrieve_block(&m.hash).await {
            Ok(Some(b)) => read.push(b),
            Ok(None) => {} // deleted meanwhile
            Err(e) => {
                let what = if e.kind() == ErrorKind::Corrupted {
                    "stored bytes are damaged"
                } else {
                    "cannot be read"
                };
                let broken = Break {
                    index: m.index,
                    hash: Some(m.hash),
                    reason: format!("{what}: {}", CliError::from(e).0),
                };
                return Ok((read, Some(broken)));
            }
        }
    }
    // Every block read on its own: report the range failure itself.
    let broken = Break {
        index: start,
        hash: None,
        reason: format!(
            "reading blocks {start}..={end} failed: {}",
            CliError::from(range_error).0
        ),
    };
    Ok((read, Some(broken)))
}

/// `list`.
pub async fn list(ctx: &Ctx, store: &Storage, options: &ListOptions) -> CliResult {
    let found = store
        .list_blocks(options)
        .await
        .map_err(ctx_err("listing"))?;
    if ctx.json {
        let rows: Vec<_> = found.iter().map(render::meta_json).collect();
        println!("{}", serde_json::Value::Array(rows));
    } else {
        println!("{}", render::meta_header());
        for m in &found {
            println!("{}", render::meta_line(m));
        }
        println!("({} blocks)", found.len());
    }
    Ok(())
}

/// `get`.
pub async fn get(ctx: &Ctx, store: &Storage, hash: &BlockHash) -> CliResult {
    match store
        .retrieve_block(hash)
        .await
        .map_err(ctx_err(format!("reading block {hash}")))?
    {
        Some(b) => {
            let v = render::block_json(&b);
            if ctx.json {
                println!("{v}");
            } else {
                println!("{}", serde_json::to_string_pretty(&v)?);
            }
            Ok(())
        }
        None => Err(CliError(format!("block {hash} not found"))),
    }
}

/// `head`.
pub async fn head(ctx: &Ctx, store: &Storage) -> CliResult {
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
        println!(
            "{}",
            json!({ "head": head.map(|h| h.to_string()), "index": block.as_ref().map(Block::index) })
        );
    } else {
        match block {
            Some(b) => println!("#{} {}", b.index(), b.hash()),
            None => println!("no head set"),
        }
    }
    Ok(())
}

/// `stats`.
pub async fn stats(ctx: &Ctx, store: &Storage) -> CliResult {
    let s = store
        .get_stats()
        .await
        .map_err(ctx_err("reading statistics"))?;
    if ctx.json {
        println!("{}", render::stats_json(&s));
    } else {
        print!("{}", render::stats_text(&s));
    }
    Ok(())
}

/// `compact` and `vacuum`.
pub async fn maintain(ctx: &Ctx, store: &Storage, vacuum: bool) -> CliResult {
    let what = if vacuum { "vacuum" } else { "compact" };
    let started = Instant::now();
    if vacuum {
        store.vacuum().await
    } else {
        store.compact().await
    }
    .map_err(ctx_err(what))?;
    let elapsed = started.elapsed();
    if ctx.json {
        println!(
            "{}",
            json!({ "done": what, "seconds": elapsed.as_secs_f64() })
        );
    } else {
        println!("{what} done in {elapsed:.2?}");
    }
    Ok(())
}

/// `migrate`.
pub async fn migrate(ctx: &Ctx, from: &str, to: &str, batch: u64) -> CliResult {
    let (src_config, dst_config) = (
        StorageConfig::new(from.parse().map_err(ctx_err("--from"))?),
        StorageConfig::new(to.parse().map_err(ctx_err("--to"))?),
    );
    if src_config == dst_config {
        return Err(CliError("--from and --to name the same store".into()));
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
        println!("{summary}");
    } else {
        println!(
            "migrated {} blocks from {from} to {to} ({} were already there) in {:.2}s; head {}",
            summary["copied"],
            summary["skipped"],
            summary["seconds"].as_f64().unwrap_or(0.0),
            summary["head"].as_str().unwrap_or("not set")
        );
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
            return Err(CliError(format!(
                "the destination holds a block at index {top} that the source does not; \
                 refusing to mix two chains"
            )));
        }
        start = top.saturating_sub(batch - 1);
    }
    let skipped_before = dst
        .count_blocks()
        .await
        .map_err(ctx_err("counting the destination"))?;
    let bar = ctx.bar(total, "migrate");
    let mut prev: Option<Block> = if start > 0 {
        src.get_blocks_by_range(start - 1, start - 1)
            .await
            .map_err(ctx_err("reading the source"))?
            .pop()
    } else {
        None
    };
    let mut copied = 0u64;
    if let Some(last) = last_index(&**src)
        .await
        .map_err(ctx_err("listing the source"))?
    {
        let mut pages = Pages::new(&**src, start, last, batch);
        while let Some(blocks) = pages.next().await? {
            for b in &blocks {
                let linked = prev.as_ref().filter(|p| p.index() + 1 == b.index());
                verify_block(b, linked).map_err(|e| {
                    CliError(format!(
                        "source block #{} fails verification: {}",
                        b.index(),
                        CliError::from(e).0
                    ))
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
        dst.set_chain_head(&h)
            .await
            .map_err(ctx_err("setting the destination head"))?;
    }
    bar.finish_and_clear();
    let dst_count = dst
        .count_blocks()
        .await
        .map_err(ctx_err("counting the destination"))?;
    if dst_count < total {
        return Err(CliError(format!(
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
