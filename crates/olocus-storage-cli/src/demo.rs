//! `demo`: sign a chain with a fresh key, store it, verify it from storage, query
//! it every way, and say how fast each step was.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use olocus_storage::{
    BackendConfig, Block, CompressionType, ListOptions, Storage, StorageBackendExt, StorageConfig,
    VerifyOptions,
};
use serde_json::json;

use crate::render;
use crate::{CliError, CliResult, Ctx, ctx_err};

const READING: &str = "demo.reading/v1";
const AUDIT: &str = "demo.audit/v1";

fn payload(i: u64) -> (&'static str, Vec<u8>) {
    let v = if i % 10 == 9 {
        (
            AUDIT,
            json!({ "seq": i, "actor": format!("operator-{}", i % 3), "action": "calibrated", "sensor": format!("s-{}", i % 8) }),
        )
    } else {
        (
            READING,
            json!({ "seq": i, "sensor": format!("s-{}", i % 8), "celsius": 18.0 + ((i * 37) % 100) as f64 / 10.0, "humidity": 40 + (i * 13) % 30 }),
        )
    };
    (v.0, serde_json::to_vec(&v.1).expect("json"))
}

fn rate(n: u64, d: Duration) -> String {
    let per_sec = n as f64 / d.as_secs_f64().max(1e-9);
    if per_sec >= 1e6 {
        format!("{:.2}M/s", per_sec / 1e6)
    } else {
        format!("{:.0}k/s", per_sec / 1e3)
    }
}

/// Runs the demo.
pub(crate) async fn run(
    ctx: &Ctx,
    store_url: Option<&str>,
    config_file: Option<&Path>,
    blocks: u64,
    keep: bool,
) -> CliResult {
    if blocks < 2 {
        return Err(CliError::usage("--blocks must be at least 2"));
    }
    // Only the default store lives in a temporary directory.
    let (config, temp) = match (config_file, store_url) {
        (Some(path), _) => (StorageConfig::load(path)?, None),
        (None, Some(url)) => (StorageConfig::from_url(url)?, None),
        (None, None) => {
            let temp = tempfile::Builder::new()
                .prefix("olocus-demo-")
                .tempdir()
                .map_err(|e| CliError::from(e).context("creating a temporary directory"))?;
            let config = StorageConfig::new(BackendConfig::Filesystem {
                path: temp.path().join("chain"),
                compression: CompressionType::Lz4,
            });
            (config, Some(temp))
        }
    };
    let url = config.backend.to_url();
    let storage = Storage::new(config)
        .await
        .map_err(ctx_err(format!("opening {url}")))?;
    if storage.count_blocks().await.map_err(ctx_err("counting"))? > 0 {
        return Err(CliError::failure(format!(
            "{url} already holds blocks; the demo needs an empty store"
        )));
    }
    // Each step prints a line for people, or adds its figures (no prose) to
    // the JSON document.
    let mut steps: Vec<serde_json::Value> = Vec::new();
    let mut say = |step: &str, text: String, data: serde_json::Value| -> CliResult {
        if ctx.json {
            let mut data = data;
            data["step"] = json!(step);
            steps.push(data);
        } else {
            out!("{step:<10} {text}")?;
        }
        Ok(())
    };
    if !ctx.json {
        out!("olocus-storage demo: {blocks} blocks into {url}\n")?;
    }

    // A fresh key for this run.
    let key = olocus_storage::generate_signing_key()?;
    let signer = olocus_storage::PublicKey::from(&key.verifying_key());

    // Sign the chain: one block a millisecond, ending now.
    let started = Instant::now();
    let bar = ctx.bar(blocks, "sign");
    let base = SystemTime::now() - Duration::from_millis(blocks);
    let mut chain: Vec<Block> = Vec::with_capacity(blocks as usize);
    for i in 0..blocks {
        let (ty, bytes) = payload(i);
        let prev = chain.last().map(Block::hash);
        let b = Block::sign_raw(i, base + Duration::from_millis(i), prev, ty, bytes, &key)
            .map_err(ctx_err(format!("signing block {i}")))?;
        chain.push(b);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let took = started.elapsed();
    say(
        "signed",
        format!(
            "{blocks} blocks with a fresh Ed25519 key {} in {took:.2?} ({})",
            render::short(&signer.to_string()),
            rate(blocks, took)
        ),
        json!({
            "blocks": blocks,
            "public_key": signer.to_string(),
            "seconds": took.as_secs_f64(),
        }),
    )?;

    // Store in batches of 500, then move the head.
    let started = Instant::now();
    let bar = ctx.bar(blocks, "store");
    for part in chain.chunks(500) {
        storage
            .store_blocks(part)
            .await
            .map_err(ctx_err("storing a batch"))?;
        bar.inc(part.len() as u64);
    }
    let last = chain.last().expect("at least two blocks");
    storage
        .set_chain_head(&last.hash())
        .await
        .map_err(ctx_err("setting the head"))?;
    bar.finish_and_clear();
    let took = started.elapsed();
    say(
        "stored",
        format!(
            "{blocks} blocks in batches of 500 in {took:.2?} ({}); head #{} {}",
            rate(blocks, took),
            last.index(),
            render::short(&last.hash().to_string())
        ),
        json!({
            "blocks": blocks,
            "batch": 500,
            "seconds": took.as_secs_f64(),
            "head": { "index": last.index(), "hash": last.hash().to_string() },
        }),
    )?;

    // Verify everything from storage.
    let started = Instant::now();
    let bar = ctx.bar(blocks, "verify");
    let checked = storage
        .verify_store(&VerifyOptions::default(), &mut |n| bar.inc(n))
        .await
        .map_err(|e| CliError::from(e).context("verification failed"))?
        .checked;
    bar.finish_and_clear();
    let took = started.elapsed();
    say(
        "verified",
        format!(
            "{checked} blocks read back: signatures, index sequence, hash links and stored \
             hashes hold ({took:.2?}, {})",
            rate(checked, took)
        ),
        json!({ "blocks": checked, "seconds": took.as_secs_f64() }),
    )?;

    // By hash.
    let probe = &chain[chain.len() / 2];
    let started = Instant::now();
    let got = storage
        .retrieve_block(&probe.hash())
        .await
        .map_err(ctx_err("retrieving by hash"))?
        .ok_or_else(|| CliError::failure("the probe block is missing"))?;
    let took = started.elapsed();
    if got != *probe {
        return Err(CliError::failure(
            "the block read back differs from the one stored",
        ));
    }
    say(
        "by hash",
        format!(
            "#{} {} -> {} in {took:.1?}",
            got.index(),
            render::short(&got.hash().to_string()),
            String::from_utf8_lossy(got.payload())
        ),
        json!({ "block": render::block_json(&got), "seconds": took.as_secs_f64() }),
    )?;

    // By index range.
    let (lo, hi) = (blocks / 4, blocks / 4 + 99.min(blocks - blocks / 4 - 1));
    let started = Instant::now();
    let range = storage
        .get_blocks_by_range(lo, hi)
        .await
        .map_err(ctx_err("reading a range"))?;
    let took = started.elapsed();
    say(
        "by range",
        format!("#{lo}..=#{hi}: {} blocks in {took:.1?}", range.len()),
        json!({
            "from_index": lo,
            "to_index": hi,
            "blocks": range.len(),
            "seconds": took.as_secs_f64(),
        }),
    )?;

    // By time: a 250 ms window.
    let from = chain[(blocks / 2) as usize].timestamp();
    let to = from + Duration::from_millis(249);
    let started = Instant::now();
    let window = storage
        .list_blocks(
            &ListOptions::new()
                .start_time(from)
                .end_time(to)
                .by_timestamp(),
        )
        .await
        .map_err(ctx_err("listing by time"))?;
    let took = started.elapsed();
    let indices = |list: &[olocus_storage::BlockMetadata]| -> Vec<u64> {
        list.iter().map(|m| m.index).collect()
    };
    say(
        "by time",
        format!(
            "{} .. +250ms: {} blocks (#{}..=#{}) in {took:.1?}",
            render::time(from),
            window.len(),
            window.first().map_or(0, |m| m.index),
            window.last().map_or(0, |m| m.index),
        ),
        json!({
            "start_time": render::time(from),
            "end_time": render::time(to),
            "blocks": window.len(),
            "first_index": window.first().map(|m| m.index),
            "last_index": window.last().map(|m| m.index),
            "seconds": took.as_secs_f64(),
        }),
    )?;

    // Filters: the newest audit events; a signer, paged.
    let started = Instant::now();
    let audits = storage
        .list_blocks(&ListOptions::new().limit(5).descending().payload_type(AUDIT))
        .await
        .map_err(ctx_err("listing audit events"))?;
    let took = started.elapsed();
    let marks = |list: &[olocus_storage::BlockMetadata]| -> String {
        list.iter()
            .map(|m| format!("#{}", m.index))
            .collect::<Vec<_>>()
            .join(" ")
    };
    say(
        "list",
        format!(
            "type={AUDIT}, newest first, limit 5: {} in {took:.1?}",
            marks(&audits)
        ),
        json!({
            "type": AUDIT,
            "order": "desc",
            "limit": 5,
            "indices": indices(&audits),
            "seconds": took.as_secs_f64(),
        }),
    )?;
    let started = Instant::now();
    let page = storage
        .list_blocks(
            &ListOptions::new()
                .limit(3)
                .offset(10)
                .public_key(signer)
                .payload_type(READING)
                .min_index(blocks / 2),
        )
        .await
        .map_err(ctx_err("listing by signer"))?;
    let took = started.elapsed();
    say(
        "list",
        format!(
            "signer={}, type={READING}, index >= {}, offset 10, limit 3: {} in {took:.1?}",
            render::short(&signer.to_string()),
            blocks / 2,
            marks(&page),
        ),
        json!({
            "signer": signer.to_string(),
            "type": READING,
            "from_index": blocks / 2,
            "offset": 10,
            "limit": 3,
            "indices": indices(&page),
            "seconds": took.as_secs_f64(),
        }),
    )?;

    let stats = storage.get_stats().await.map_err(ctx_err("statistics"))?;
    say(
        "stats",
        format!(
            "{} blocks, {} canonical, oldest {}, newest {}",
            stats.total_blocks,
            indicatif::HumanBytes(stats.total_size_bytes),
            stats.oldest_block.map(render::time).unwrap_or_default(),
            stats.newest_block.map(render::time).unwrap_or_default()
        ),
        render::stats_json(&stats),
    )?;
    storage.close().await.map_err(ctx_err("closing"))?;
    let kept = keep || store_url.is_some() || config_file.is_some();
    if kept {
        say(
            "kept",
            format!("the store at {url}"),
            json!({ "store": url }),
        )?;
    }
    if ctx.json {
        out!(
            "{}",
            json!({ "store": url, "blocks": blocks, "kept": kept, "steps": steps })
        )?;
    }
    if let Some(temp) = temp.filter(|_| keep) {
        // Keep the temporary directory instead of removing it.
        let _ = temp.keep();
    }
    Ok(())
}
