//! `cargo xtask bench`: runs the benchmark matrix (`benches/benches/matrix.rs`) and
//! writes a report from criterion's estimates: a Markdown table per backend and
//! operation (median, throughput, ratio to the raw engine, the seed's figure,
//! our target and whether it is met), a JSON copy, and an SVG chart.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value;

#[path = "../../benches/src/spec.rs"]
#[allow(dead_code, unreachable_pub)] // shared with the benches, which use it all
mod spec;

use spec::{
    BIG, BIG_QUICK, Goal, HUGE, HUGE_QUICK, MAX_RAW_RATIO, Op, PeerGoal, PeerRef, Subject, goals,
    max_raw_ratio, peer_goal,
};

/// What `cargo xtask bench` was asked for.
pub(crate) struct Options {
    pub quick: bool,
    pub backends: Vec<String>,
    pub ops: Vec<String>,
    pub report_only: bool,
    pub out: Option<PathBuf>,
    pub peers: bool,
}

/// One measured cell.
struct Cell {
    subject: Subject,
    op: Op,
    /// Median nanoseconds per iteration.
    median_ns: f64,
    /// Blocks per iteration.
    elements: u64,
}

impl Cell {
    fn per_sec(&self) -> f64 {
        self.elements as f64 / (self.median_ns / 1e9)
    }
    fn ns_per_block(&self) -> f64 {
        self.median_ns / self.elements as f64
    }
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

fn check_names(given: &[String], known: &[&str], what: &str) -> Result<(), String> {
    for g in given {
        if !known.contains(&g.as_str()) {
            return Err(format!("unknown {what} {g:?}; expected one of {known:?}"));
        }
    }
    Ok(())
}

pub(crate) fn run(root: &Path, o: Options) -> Result<(), String> {
    let backend_names: Vec<&str> = Subject::ALL
        .iter()
        .filter(|s| !s.is_raw() && !s.is_peer())
        .map(|s| s.name())
        .collect();
    check_names(&o.backends, &backend_names, "backend")?;
    let op_names: Vec<&str> = Op::ALL.iter().map(|s| s.name()).collect();
    check_names(&o.ops, &op_names, "operation")?;
    let criterion = target_dir(root).join("criterion");
    // What criterion does not keep: bytes on disk, the cold opens' page cache.
    let extras = criterion.join("olocus");
    if !o.report_only {
        // The cells about to run lose their old results (so a failed cell cannot
        // show a stale figure); the others are kept, so a partial run updates the
        // last full report.
        for op in Op::ALL
            .iter()
            .filter(|op| o.ops.is_empty() || o.ops.iter().any(|x| x == op.name()))
        {
            for s in Subject::ALL.iter().filter(|s| {
                if s.is_peer() {
                    o.peers
                } else {
                    o.backends.is_empty() || o.backends.iter().any(|x| x == s.backend().name())
                }
            }) {
                let _ = std::fs::remove_dir_all(criterion.join(op.name()).join(s.name()));
                if *op == Op::Ingest {
                    let _ = std::fs::remove_file(extras.join(format!("disk/{}.json", s.name())));
                }
            }
            if matches!(op, Op::ColdOpen | Op::ColdOpen10m) {
                let _ = std::fs::remove_file(extras.join("cold_open.json"));
            }
            if *op == Op::ColdOpen10m {
                let _ = std::fs::remove_dir_all(extras.join("resident"));
            }
        }
        // The object-store rows run against the local SeaweedFS cluster (the one
        // `cargo xtask cluster up` left running, or one started for this run).
        let wants_cluster = o.backends.is_empty() || o.backends.iter().any(|b| b == "object");
        let (_cluster, cluster_env) = if wants_cluster {
            crate::cluster::for_ci(root)?
        } else {
            (None, Vec::new())
        };
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.envs(cluster_env);
        cmd.args([
            "bench",
            "-p",
            "olocus-benches",
            "--bench",
            "matrix",
            "--locked",
        ]);
        if o.peers {
            cmd.args(["--features", "peers"]);
        }
        cmd.current_dir(root)
            .env("OLOCUS_BENCH_PEERS", if o.peers { "1" } else { "0" })
            .env("OLOCUS_BENCH_OUT", &extras)
            .env("OLOCUS_BENCH_BACKENDS", o.backends.join(","))
            .env("OLOCUS_BENCH_OPS", o.ops.join(","))
            .env("OLOCUS_BENCH_QUICK", if o.quick { "1" } else { "0" });
        println!(
            "==> benchmark matrix{}{}: backends [{}], operations [{}]",
            if o.quick { " (quick)" } else { "" },
            if o.peers { " with peers" } else { "" },
            if o.backends.is_empty() {
                "all".into()
            } else {
                o.backends.join(", ")
            },
            if o.ops.is_empty() {
                "all".into()
            } else {
                o.ops.join(", ")
            },
        );
        let status = cmd
            .status()
            .map_err(|e| format!("cannot run cargo bench: {e}"))?;
        if !status.success() {
            return Err(format!("the benchmark matrix failed ({status})"));
        }
    }
    let cells = read_cells(&criterion)?;
    if cells.is_empty() {
        return Err(format!("no results under {}", criterion.display()));
    }
    let extras = read_extras(&extras);
    let out = o
        .out
        .clone()
        .unwrap_or_else(|| target_dir(root).join("bench-report"));
    std::fs::create_dir_all(&out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    let machine = machine();
    let report = report(&cells, &extras, &machine, o.quick);
    write(&out.join("report.md"), report.as_bytes())?;
    write(
        &out.join("results.json"),
        serde_json::to_string_pretty(&json(&cells, &extras, &machine))
            .expect("json")
            .as_bytes(),
    )?;
    chart(&cells, &out.join("chart.svg"), &out.join("chart.png"))?;
    println!(
        "report: {}\nchart:  {} (and chart.png)",
        out.join("report.md").display(),
        out.join("chart.svg").display()
    );
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), String> {
    std::fs::write(path, bytes).map_err(|e| format!("writing {}: {e}", path.display()))
}

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Criterion keeps `<group>/<function>/new/{estimates,benchmark}.json`.
fn read_cells(criterion: &Path) -> Result<Vec<Cell>, String> {
    let mut cells = Vec::new();
    for op in Op::ALL {
        for subject in Subject::ALL {
            let dir = criterion.join(op.name()).join(subject.name()).join("new");
            let (Some(est), Some(meta)) = (
                read_json(&dir.join("estimates.json")),
                read_json(&dir.join("benchmark.json")),
            ) else {
                continue;
            };
            let median_ns = est["median"]["point_estimate"]
                .as_f64()
                .ok_or_else(|| format!("{}: no median", dir.display()))?;
            let elements = meta["throughput"]["Elements"].as_u64().unwrap_or(1);
            cells.push(Cell {
                subject,
                op,
                median_ns,
                elements,
            });
        }
    }
    Ok(cells)
}

fn machine() -> BTreeMap<&'static str, String> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let mem = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| format!("{:.1} GiB", kb as f64 / 1024.0 / 1024.0))
        .unwrap_or_default();
    let cmd = |c: &str, args: &[&str]| {
        Command::new(c)
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let mut m = BTreeMap::new();
    m.insert("cpu", cpu);
    m.insert(
        "cores",
        std::thread::available_parallelism()
            .map(|n| n.to_string())
            .unwrap_or_default(),
    );
    m.insert("memory", mem);
    m.insert("kernel", cmd("uname", &["-sr"]));
    m.insert("rustc", cmd("rustc", &["--version"]));
    m.insert("date", cmd("date", &["-u", "+%Y-%m-%d %H:%M UTC"]));
    m
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.2} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

fn fmt_rate(per_sec: f64) -> String {
    if per_sec >= 1e6 {
        format!("{:.2} M/s", per_sec / 1e6)
    } else if per_sec >= 1e3 {
        format!("{:.1} k/s", per_sec / 1e3)
    } else {
        format!("{per_sec:.1} /s")
    }
}

fn fmt_goal(g: Goal) -> String {
    match g {
        Goal::MaxNs(ns) => format!("≤ {}", fmt_ns(ns)),
        Goal::MaxNsPlusSync(ns) => format!("≤ {} + sync", fmt_ns(ns)),
        Goal::MinPerSec(r) => format!("≥ {}", fmt_rate(r)),
    }
}

/// Whether a cell meets its goal; `sync_ns` is the measured cost of one sync on
/// this machine (for "+ sync" goals).
fn meets(c: &Cell, g: Goal, sync_ns: Option<f64>) -> Option<bool> {
    match g {
        Goal::MaxNs(ns) => Some(c.median_ns <= ns),
        Goal::MaxNsPlusSync(ns) => sync_ns.map(|s| c.median_ns <= ns + s),
        Goal::MinPerSec(r) => Some(c.per_sec() >= r),
    }
}

/// What one sync of `op`'s write costs on this machine: what the raw engine pays
/// to sync the same write (its durable minus its plain variant), or, for backends
/// without a raw engine, durable minus plain single-block stores.
fn sync_cost(cells: &[Cell], s: Subject, op: Op) -> Option<f64> {
    let find = |who, op| cells.iter().find(|c| c.subject == who && c.op == op);
    let plain = match op {
        Op::StoreBatch100Durable => Op::StoreBatch100,
        Op::StoreOneDurable => Op::StoreOne,
        _ => return None,
    };
    match s.raw() {
        Some(raw) => Some(find(raw, op)?.median_ns - find(raw, plain)?.median_ns),
        None => Some(find(s, Op::StoreOneDurable)?.median_ns - find(s, Op::StoreOne)?.median_ns),
    }
}

fn ratio(cells: &[Cell], c: &Cell) -> Option<f64> {
    let raw = c.subject.raw()?;
    let base = cells.iter().find(|x| x.subject == raw && x.op == c.op)?;
    Some(c.median_ns / base.median_ns)
}

/// The fastest peer on `op`'s row, if any peer ran it.
fn best_peer(cells: &[Cell], op: Op) -> Option<&Cell> {
    cells
        .iter()
        .filter(|c| c.op == op && c.subject.is_peer())
        .min_by(|a, b| a.median_ns.total_cmp(&b.median_ns))
}

/// How many times faster `c` is than the best peer on its row (above 1:
/// ahead; below: behind), and that peer.
fn vs_best_peer<'a>(cells: &'a [Cell], c: &Cell) -> Option<(f64, &'a Cell)> {
    let best = best_peer(cells, c.op)?;
    Some((best.median_ns / c.median_ns, best))
}

/// `c`'s speed-up over the peer its [`PeerGoal`] names, with that peer.
fn peer_speedup<'a>(cells: &'a [Cell], c: &Cell, goal: PeerGoal) -> Option<(f64, &'a Cell)> {
    match goal.of {
        PeerRef::Best => vs_best_peer(cells, c),
        PeerRef::Only(p) => {
            let peer = cells.iter().find(|x| x.subject == p && x.op == c.op)?;
            Some((peer.median_ns / c.median_ns, peer))
        }
    }
}

fn fmt_peer_goal(g: PeerGoal) -> String {
    let who = match g.of {
        PeerRef::Best => "best peer".to_string(),
        PeerRef::Only(p) => p.name().to_string(),
    };
    if g.min == 1.0 {
        format!("≥ {who}")
    } else {
        format!("≥ {}× {who}", g.min)
    }
}

/// A cell's targets and whether it meets them: `None` where it has none (or
/// what it is judged against did not run).
struct Verdict {
    target: Option<Goal>,
    peer: Option<PeerGoal>,
    ok: Option<bool>,
}

fn verdict(cells: &[Cell], c: &Cell) -> Verdict {
    let (_, target) = goals(c.subject, c.op);
    let peer = peer_goal(c.subject, c.op);
    let checks = [
        target.and_then(|g| meets(c, g, sync_cost(cells, c.subject, c.op))),
        ratio(cells, c)
            .zip(max_raw_ratio(c.subject))
            .map(|(x, limit)| x <= limit),
        peer.and_then(|g| peer_speedup(cells, c, g).map(|(x, _)| x >= g.min)),
    ];
    let ok = checks.iter().flatten().copied().reduce(|a, b| a && b);
    Verdict { target, peer, ok }
}

/// Bytes on disk per block of each ingested store, and whether cold opens ran
/// with the page cache dropped: the figures the matrix writes beside
/// criterion's.
#[derive(Default)]
struct Extras {
    disk: Vec<(Subject, f64)>,
    page_cache_dropped: Option<bool>,
    /// Resident memory after opening the `cold_open_10m` store and reading
    /// one block: (subject, KiB, blocks).
    resident: Vec<(Subject, u64, u64)>,
}

fn read_extras(dir: &Path) -> Extras {
    let mut e = Extras::default();
    for s in Subject::ALL {
        if let Some(v) = read_json(&dir.join(format!("disk/{}.json", s.name())))
            && let (Some(bytes), Some(blocks)) = (v["bytes"].as_u64(), v["blocks"].as_u64())
            && blocks > 0
        {
            e.disk.push((s, bytes as f64 / blocks as f64));
        }
    }
    for s in Subject::ALL {
        if let Some(v) = read_json(&dir.join(format!("resident/{}.json", s.name())))
            && let (Some(kib), Some(blocks)) = (v["kib"].as_u64(), v["blocks"].as_u64())
        {
            e.resident.push((s, kib, blocks));
        }
    }
    e.page_cache_dropped =
        read_json(&dir.join("cold_open.json")).and_then(|v| v["page_cache_dropped"].as_bool());
    e
}

fn report(
    cells: &[Cell],
    extras: &Extras,
    machine: &BTreeMap<&str, String>,
    quick: bool,
) -> String {
    let mut r = String::new();
    let peers = cells.iter().any(|c| c.subject.is_peer());
    let _ = writeln!(r, "# olocus-storage benchmark matrix\n");
    let _ = writeln!(
        r,
        "Made by `cargo xtask bench{}{}` from criterion's medians ({}). Machine: {} ({} cores), \
         {}, {}; {}; {}.\n",
        if quick { " --quick" } else { "" },
        if peers { " --peers" } else { "" },
        if quick {
            format!(
                "quick run: 1 s per measurement, ingest and cold open of {BIG_QUICK} blocks, \
                 `cold_open_10m` of {HUGE_QUICK}"
            )
        } else {
            format!(
                "5 s per measurement, ingest and cold open of {BIG} blocks, `cold_open_10m` \
                 of {HUGE}"
            )
        },
        machine["cpu"],
        machine["cores"],
        machine["memory"],
        machine["kernel"],
        machine["rustc"],
        machine["date"],
    );
    let _ = writeln!(
        r,
        "Data: signed blocks with ~650-byte payloads from fixed seeds; reads over a store of \
         20,000 blocks at random positions. *median* is per operation (one block, a batch of \
         100, a list of 100, a range of 10,000, a whole ingest, one open and one read); *per block* \
         divides it by the blocks the operation handles. *ratio to raw* is ours over the raw \
         engine doing the same writes and reads of the same bytes in the same run (allowed: ≤ \
         {MAX_RAW_RATIO} for RocksDB and SQLite; the object store's is shown without a limit, as \
         its raw baseline keeps no index and makes one request where it makes two). `+ sync` \
         targets add what one sync of the same write costs here: the raw engine's durable minus \
         its plain variant, or (no raw engine) durable minus plain store one.\n"
    );
    if peers {
        let _ = writeln!(
            r,
            "*vs best peer* is how many times faster than the fastest peer on that row a \
             subject is (above 1: ahead), naming that peer. The peers are the stores a user \
             could pick instead: redb, fjall and LMDB (heed) with default options, and SQLite \
             with a hand-written schema (`blocks(idx INTEGER PRIMARY KEY, hash BLOB UNIQUE, ts \
             INTEGER, data BLOB)` and an index on `(ts, hash)`, our backend's pragmas). Each \
             stores the same encoded bytes, keeps hash → block, index → hash and (timestamp, \
             hash) maps, writes one transaction per batch, decodes and hash-checks what it \
             returns, and lists by walking its index and decoding each block's fields.\n"
        );
    }
    if cells
        .iter()
        .any(|c| matches!(c.op, Op::ColdOpen | Op::ColdOpen10m))
    {
        let _ = writeln!(
            r,
            "Cold opens: {}\n",
            match extras.page_cache_dropped {
                Some(true) =>
                    "the page cache was dropped before each (`/proc/sys/vm/drop_caches`).",
                Some(false) =>
                    "**the page cache could not be dropped here** (not permitted): the opens read \
                     files the cache may hold, so they are warmer than a reboot's.",
                None => "whether the page cache was dropped was not recorded.",
            }
        );
    }
    let _ = writeln!(
        r,
        "| operation | backend | median | per block | throughput | ratio to raw | vs best peer | seed | target | met |"
    );
    let _ = writeln!(r, "|---|---|---|---|---|---|---|---|---|---|");
    let (mut met, mut missed) = (Vec::new(), Vec::new());
    for op in Op::ALL {
        for c in cells.iter().filter(|c| c.op == op) {
            let (seed, _) = goals(c.subject, op);
            let v = verdict(cells, c);
            let label = format!("{}/{}", op.name(), c.subject.name());
            let mark = match v.ok {
                None => "—",
                Some(true) => {
                    met.push(label);
                    "✓"
                }
                Some(false) => {
                    missed.push(label);
                    "✗"
                }
            };
            let targets: Vec<String> = v
                .target
                .map(fmt_goal)
                .into_iter()
                .chain(v.peer.map(fmt_peer_goal))
                .collect();
            let _ = writeln!(
                r,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                op.name(),
                c.subject.name(),
                fmt_ns(c.median_ns),
                fmt_ns(c.ns_per_block()),
                fmt_rate(c.per_sec()),
                ratio(cells, c).map_or("—".into(), |x| format!("{x:.2}")),
                vs_best_peer(cells, c).map_or("—".into(), |(x, p)| format!(
                    "{x:.2}× {}",
                    p.subject.name()
                )),
                seed.map_or("—".into(), fmt_goal),
                if targets.is_empty() {
                    "—".into()
                } else {
                    targets.join("; ")
                },
                mark
            );
        }
    }
    let _ = writeln!(
        r,
        "\n**{} met, {} missed**{}{}\n",
        met.len(),
        missed.len(),
        if missed.is_empty() { "" } else { ": " },
        missed.join(", ")
    );
    if !extras.disk.is_empty() {
        let smallest_peer = extras
            .disk
            .iter()
            .filter(|(s, _)| s.is_peer())
            .min_by(|a, b| a.1.total_cmp(&b.1));
        let _ = writeln!(
            r,
            "## Bytes on disk per block\n\nAfter the ingest, the store closed: every file it \
             keeps (allocated blocks), over the blocks ingested{}.\n",
            if smallest_peer.is_some() {
                "; *vs smallest peer* above 1 means larger"
            } else {
                ""
            }
        );
        let _ = writeln!(r, "| backend | bytes per block | vs smallest peer |");
        let _ = writeln!(r, "|---|---|---|");
        for (s, per) in &extras.disk {
            let _ = writeln!(
                r,
                "| {} | {per:.0} | {} |",
                s.name(),
                smallest_peer.map_or("—".into(), |(p, min)| format!(
                    "{:.2}× {}",
                    per / min,
                    p.name()
                ))
            );
        }
        let _ = writeln!(r);
    }
    if !extras.resident.is_empty() {
        let _ = writeln!(
            r,
            "## Resident memory after opening\n\nA fresh process opens the `cold_open_10m` \
             store and reads one block; its resident set (`VmRSS`) then. Target for `fs`: \
             ≤ 64 MiB.\n"
        );
        let _ = writeln!(r, "| backend | blocks | resident | met |");
        let _ = writeln!(r, "|---|---|---|---|");
        for (s, kib, blocks) in &extras.resident {
            let met = if *s == Subject::Fs {
                if *kib <= 64 * 1024 { "✓" } else { "✗" }
            } else {
                "—"
            };
            let _ = writeln!(
                r,
                "| {} | {blocks} | {:.1} MiB | {met} |",
                s.name(),
                *kib as f64 / 1024.0
            );
        }
        let _ = writeln!(r);
    }
    let _ = writeln!(r, "![chart](chart.svg)");
    let _ = writeln!(
        r,
        "\nWhat costs the time in each miss: [misses.md](misses.md) (kept by hand beside the \
         committed report in `docs/benchmarks/`)."
    );
    r
}

fn json(cells: &[Cell], extras: &Extras, machine: &BTreeMap<&str, String>) -> Value {
    let rows: Vec<Value> = cells
        .iter()
        .map(|c| {
            let v = verdict(cells, c);
            serde_json::json!({
                "operation": c.op.name(),
                "backend": c.subject.name(),
                "median_ns": c.median_ns,
                "blocks_per_iteration": c.elements,
                "blocks_per_second": c.per_sec(),
                "ratio_to_raw": ratio(cells, c),
                "speedup_vs_best_peer": vs_best_peer(cells, c).map(|(x, _)| x),
                "best_peer": vs_best_peer(cells, c).map(|(_, p)| p.subject.name()),
                "met": v.ok,
            })
        })
        .collect();
    let disk: serde_json::Map<String, Value> = extras
        .disk
        .iter()
        .map(|(s, per)| (s.name().to_string(), serde_json::json!(per)))
        .collect();
    serde_json::json!({
        "machine": machine,
        "results": rows,
        "disk_bytes_per_block": disk,
        "cold_open_page_cache_dropped": extras.page_cache_dropped,
    })
}

/// Where a cell's targets sit, in nanoseconds per block: its own target and the
/// one its peer goal sets.
fn target_marks(cells: &[Cell], c: &Cell) -> Vec<f64> {
    let per_block = |ns: f64| ns / c.elements as f64;
    let (_, target) = goals(c.subject, c.op);
    let own = target.and_then(|g| match g {
        Goal::MaxNs(ns) => Some(per_block(ns)),
        Goal::MaxNsPlusSync(ns) => {
            sync_cost(cells, c.subject, c.op).map(|sync| per_block(ns + sync))
        }
        Goal::MinPerSec(r) => Some(1e9 / r),
    });
    let peer = peer_goal(c.subject, c.op)
        .and_then(|g| peer_speedup(cells, c, g).map(|(_, p)| p.ns_per_block() / g.min));
    own.into_iter().chain(peer).collect()
}

/// One panel per operation, time per block on a log scale (shorter is
/// faster); each of our bars green where it meets its targets, red where it
/// misses, blue where it has none; raw engines grey, peers purple; a black
/// tick at each target, a purple line at the best peer.
fn draw<DB: DrawingBackend>(
    cells: &[Cell],
    root: DrawingArea<DB, plotters::coord::Shift>,
) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("drawing the chart: {e}");
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (title, body) = root.split_vertically(56);
    title
        .draw_text(
            "olocus-storage benchmark matrix: time per block (cold_open: per open and read), \
             median, log scale, shorter is faster",
            &("sans-serif", 17).into_text_style(&title),
            (12, 8),
        )
        .map_err(|e| err(&e))?;
    title
        .draw_text(
            "green: meets its targets · red: misses · blue: no target · grey: raw engine · \
             purple: peer · black tick: target · purple line: best peer",
            &("sans-serif", 13).into_text_style(&title),
            (12, 32),
        )
        .map_err(|e| err(&e))?;
    let ops: Vec<Op> = Op::ALL
        .into_iter()
        .filter(|op| cells.iter().any(|c| c.op == *op))
        .collect();
    let panels = body.split_evenly((ops.len().div_ceil(2), 2));
    for (op, panel) in ops.iter().zip(&panels) {
        let rows: Vec<&Cell> = cells.iter().filter(|c| c.op == *op).collect();
        let marks: Vec<(usize, f64)> = rows
            .iter()
            .enumerate()
            .flat_map(|(k, c)| target_marks(cells, c).into_iter().map(move |m| (k, m)))
            .collect();
        let best = best_peer(cells, *op).map(Cell::ns_per_block);
        let values = rows
            .iter()
            .map(|c| c.ns_per_block())
            .chain(marks.iter().map(|m| m.1))
            .chain(best);
        let (lo, hi) = values.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
        let (lo, hi) = (lo.max(1.0) / 3.0, hi * 6.0);
        let n = rows.len() as i32;
        let unit = if matches!(op, Op::ColdOpen | Op::ColdOpen10m) {
            "per open"
        } else {
            "per block"
        };
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("{} ({unit})", op.name()), ("sans-serif", 15))
            .margin(8)
            .x_label_area_size(24)
            .y_label_area_size(100)
            .build_cartesian_2d((lo..hi).log_scale(), (0..n - 1).into_segmented())
            .map_err(|e| err(&e))?;
        let label = |i: i32| rows[(n - 1 - i) as usize].subject.name().to_string();
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(rows.len())
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) if *i < n => label(*i),
                _ => String::new(),
            })
            .x_labels(6)
            .x_label_formatter(&|v| fmt_ns(*v))
            .draw()
            .map_err(|e| err(&e))?;
        let peer_color = RGBColor(0xb0, 0x7a, 0xa1);
        let color = |c: &Cell| {
            if c.subject.is_peer() {
                peer_color
            } else if c.subject.is_raw() {
                RGBColor(0xba, 0xb0, 0xac)
            } else {
                match verdict(cells, c).ok {
                    Some(true) => RGBColor(0x59, 0xa1, 0x4f),
                    Some(false) => RGBColor(0xe1, 0x57, 0x59),
                    None => RGBColor(0x4e, 0x79, 0xa7),
                }
            }
        };
        // Row 0 at the top: segments count up from the bottom.
        let y = |k: usize| n - 1 - k as i32;
        chart
            .draw_series(rows.iter().enumerate().map(|(k, c)| {
                let mut bar = Rectangle::new(
                    [
                        (lo, SegmentValue::Exact(y(k))),
                        (c.ns_per_block(), SegmentValue::Exact(y(k) + 1)),
                    ],
                    color(c).filled(),
                );
                bar.set_margin(2, 2, 0, 0);
                bar
            }))
            .map_err(|e| err(&e))?;
        chart
            .draw_series(rows.iter().enumerate().map(|(k, c)| {
                Text::new(
                    format!(" {}", fmt_ns(c.ns_per_block())),
                    (c.ns_per_block(), SegmentValue::CenterOf(y(k))),
                    TextStyle::from(("sans-serif", 11).into_font())
                        .pos(Pos::new(HPos::Left, VPos::Center)),
                )
            }))
            .map_err(|e| err(&e))?;
        chart
            .draw_series(marks.iter().map(|&(k, m)| {
                PathElement::new(
                    vec![
                        (m, SegmentValue::Exact(y(k))),
                        (m, SegmentValue::Exact(y(k) + 1)),
                    ],
                    BLACK.stroke_width(3),
                )
            }))
            .map_err(|e| err(&e))?;
        if let Some(b) = best {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(b, SegmentValue::Exact(0)), (b, SegmentValue::Exact(n))],
                    peer_color.stroke_width(1),
                )))
                .map_err(|e| err(&e))?;
        }
    }
    root.present().map_err(|e| err(&e))
}

/// The chart's size: two panels a row, each tall enough for its bars.
fn chart_size(cells: &[Cell]) -> (u32, u32) {
    let ops = Op::ALL
        .iter()
        .filter(|op| cells.iter().any(|c| c.op == **op))
        .count() as u32;
    let most = Op::ALL
        .iter()
        .map(|op| cells.iter().filter(|c| c.op == *op).count() as u32)
        .max()
        .unwrap_or(1);
    (1400, 56 + ops.div_ceil(2) * (70 + 20 * most))
}

/// Draws the chart as SVG and as PNG. Text is laid out (and, in the PNG, drawn)
/// with a TrueType font from the system's fonts.
fn chart(cells: &[Cell], svg: &Path, png: &Path) -> Result<(), String> {
    let font = [
        "DejaVuSans.ttf",
        "LiberationSans-Regular.ttf",
        "FreeSans.ttf",
    ]
    .iter()
    .find_map(|name| find_file(Path::new("/usr/share/fonts"), name))
    .ok_or(
        "the chart needs a TrueType font and none was found under /usr/share/fonts \
             (on Debian: apt-get install fonts-dejavu-core); the report is written",
    )?;
    let bytes = std::fs::read(&font).map_err(|e| format!("reading {}: {e}", font.display()))?;
    // The font lives as long as the process: plotters keeps it by reference.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| format!("{} is not a usable TrueType font", font.display()))?;
    let size = chart_size(cells);
    draw(cells, SVGBackend::new(svg, size).into_drawing_area())?;
    draw(cells, BitMapBackend::new(png, size).into_drawing_area())
}

/// The first file called `name` under `dir`, searched depth first.
fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    let mut entries: Vec<_> = std::fs::read_dir(dir).ok()?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        if p.is_dir() {
            if let Some(found) = find_file(&p, name) {
                return Some(found);
            }
        } else if e.file_name() == name {
            return Some(p);
        }
    }
    None
}
