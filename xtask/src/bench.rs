//! `cargo xtask bench`: runs the benchmark matrix (`benches/benches/matrix.rs`) and
//! writes a report from criterion's estimates: a Markdown table per backend and
//! operation (median, throughput, ratio to the raw engine, the seed's figure,
//! our target and whether it is met), a JSON copy, and an SVG chart.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use plotters::prelude::*;
use serde_json::Value;

#[path = "../../benches/src/spec.rs"]
#[allow(dead_code, unreachable_pub)] // shared with the benches, which use it all
mod spec;

use spec::{BIG, BIG_QUICK, Goal, MAX_RAW_RATIO, Op, Subject, goals, max_raw_ratio};

/// What `cargo xtask bench` was asked for.
pub(crate) struct Options {
    pub quick: bool,
    pub backends: Vec<String>,
    pub ops: Vec<String>,
    pub report_only: bool,
    pub out: Option<PathBuf>,
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
        .filter(|s| !s.is_raw())
        .map(|s| s.name())
        .collect();
    check_names(&o.backends, &backend_names, "backend")?;
    let op_names: Vec<&str> = Op::ALL.iter().map(|s| s.name()).collect();
    check_names(&o.ops, &op_names, "operation")?;
    let criterion = target_dir(root).join("criterion");
    if !o.report_only {
        // The cells about to run lose their old results (so a failed cell cannot
        // show a stale figure); the others are kept, so a partial run updates the
        // last full report.
        for op in Op::ALL
            .iter()
            .filter(|op| o.ops.is_empty() || o.ops.iter().any(|x| x == op.name()))
        {
            for s in Subject::ALL.iter().filter(|s| {
                o.backends.is_empty() || o.backends.iter().any(|x| x == s.backend().name())
            }) {
                let _ = std::fs::remove_dir_all(criterion.join(op.name()).join(s.name()));
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
        ])
        .current_dir(root)
        .env("OLOCUS_BENCH_BACKENDS", o.backends.join(","))
        .env("OLOCUS_BENCH_OPS", o.ops.join(","))
        .env("OLOCUS_BENCH_QUICK", if o.quick { "1" } else { "0" });
        println!(
            "==> benchmark matrix{}: backends [{}], operations [{}]",
            if o.quick { " (quick)" } else { "" },
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
    let out = o
        .out
        .clone()
        .unwrap_or_else(|| target_dir(root).join("bench-report"));
    std::fs::create_dir_all(&out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    let machine = machine();
    let report = report(&cells, &machine, o.quick);
    write(&out.join("report.md"), report.as_bytes())?;
    write(
        &out.join("results.json"),
        serde_json::to_string_pretty(&json(&cells, &machine))
            .expect("json")
            .as_bytes(),
    )?;
    chart(&cells, &out.join("chart.svg"))?;
    println!(
        "report: {}\nchart:  {}",
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

fn report(cells: &[Cell], machine: &BTreeMap<&str, String>, quick: bool) -> String {
    let mut r = String::new();
    let _ = writeln!(r, "# olocus-storage benchmark matrix\n");
    let _ = writeln!(
        r,
        "Made by `cargo xtask bench{}` from criterion's medians ({}). Machine: {} ({} cores), \
         {}, {}; {}; {}.\n",
        if quick { " --quick" } else { "" },
        if quick {
            format!("quick run: 1 s per measurement, ingest and cold open of {BIG_QUICK} blocks")
        } else {
            format!("5 s per measurement, ingest and cold open of {BIG} blocks")
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
         100, a list of 100, a range of 10,000, a whole ingest, one open); *ratio* is ours over \
         the raw engine doing the same writes and reads of the same bytes in the same run \
         (allowed: ≤ {MAX_RAW_RATIO} for RocksDB and SQLite; the object store's is shown without a \
         limit, as its raw baseline keeps no index and makes one request where it makes two). `+ sync` targets add what one sync of the same write \
         costs here: the raw engine's durable minus its plain variant, or (no raw engine) \
         durable minus plain store one.\n"
    );
    let _ = writeln!(
        r,
        "| operation | backend | median | throughput | ratio to raw | seed | target | met |"
    );
    let _ = writeln!(r, "|---|---|---|---|---|---|---|---|");
    let (mut met, mut missed) = (Vec::new(), Vec::new());
    for op in Op::ALL {
        for c in cells.iter().filter(|c| c.op == op) {
            let (seed, target) = goals(c.subject, op);
            let ratio = ratio(cells, c);
            let target_ok = target.and_then(|g| meets(c, g, sync_cost(cells, c.subject, op)));
            let ratio_ok = ratio
                .zip(max_raw_ratio(c.subject))
                .map(|(x, limit)| x <= limit);
            let verdict = match (target_ok, ratio_ok) {
                (None, None) => "—".to_string(),
                (t, q) => {
                    let ok = t.unwrap_or(true) && q.unwrap_or(true);
                    let label = format!("{}/{}", op.name(), c.subject.name());
                    if ok {
                        met.push(label);
                        "✓".into()
                    } else {
                        missed.push(label);
                        "✗".into()
                    }
                }
            };
            let _ = writeln!(
                r,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                op.name(),
                c.subject.name(),
                fmt_ns(c.median_ns),
                fmt_rate(c.per_sec()),
                ratio.map_or("—".into(), |x| format!("{x:.2}")),
                seed.map_or("—".into(), fmt_goal),
                target.map_or("—".into(), fmt_goal),
                verdict
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
    let _ = writeln!(r, "![chart](chart.svg)");
    let _ = writeln!(
        r,
        "\nWhat costs the time in each miss: [misses.md](misses.md) (kept by hand beside the \
         committed report in `docs/benchmarks/`)."
    );
    r
}

fn json(cells: &[Cell], machine: &BTreeMap<&str, String>) -> Value {
    let rows: Vec<Value> = cells
        .iter()
        .map(|c| {
            serde_json::json!({
                "operation": c.op.name(),
                "backend": c.subject.name(),
                "median_ns": c.median_ns,
                "blocks_per_iteration": c.elements,
                "blocks_per_second": c.per_sec(),
                "ratio_to_raw": ratio(cells, c),
            })
        })
        .collect();
    serde_json::json!({ "machine": machine, "results": rows })
}

/// Horizontal bars, one per measured cell, grouped by operation: nanoseconds per
/// block on a log scale (shorter is faster).
fn chart(cells: &[Cell], path: &Path) -> Result<(), String> {
    let rows: Vec<&Cell> = Op::ALL
        .iter()
        .flat_map(|op| cells.iter().filter(move |c| c.op == *op))
        .collect();
    let height = 120 + 22 * rows.len() as u32;
    let root = SVGBackend::new(path, (1000, height)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| format!("drawing {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let lo = rows
        .iter()
        .map(|c| c.ns_per_block())
        .fold(f64::INFINITY, f64::min)
        .max(1.0)
        / 2.0;
    let hi = rows.iter().map(|c| c.ns_per_block()).fold(0.0, f64::max) * 2.0;
    let n = rows.len() as i32;
    let labels: Vec<String> = rows
        .iter()
        .map(|c| format!("{} · {}", c.op.name(), c.subject.name()))
        .collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "olocus-storage: time per block, median (cold_open: per open); log scale, shorter is faster",
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(260)
        .build_cartesian_2d((lo..hi).log_scale(), (0..n - 1).into_segmented())
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(rows.len())
        .y_label_formatter(&|v| match v {
            // Row 0 at the top: segments count up from the bottom.
            SegmentValue::CenterOf(i) if *i < n => labels
                .get((n - 1 - *i) as usize)
                .cloned()
                .unwrap_or_default(),
            _ => String::new(),
        })
        .x_desc("nanoseconds per block")
        .x_label_formatter(&|v| fmt_ns(*v))
        .draw()
        .map_err(|e| err(&e))?;
    let color = |s: Subject| match s {
        Subject::Memory => RGBColor(0x4e, 0x79, 0xa7),
        Subject::Fs => RGBColor(0xf2, 0x8e, 0x2b),
        Subject::Rocksdb => RGBColor(0xe1, 0x57, 0x59),
        Subject::Sqlite => RGBColor(0x76, 0xb7, 0xb2),
        Subject::CacheSqlite => RGBColor(0x59, 0xa1, 0x4f),
        Subject::RocksdbRaw => RGBColor(0xff, 0x9d, 0xa7),
        Subject::SqliteRaw => RGBColor(0xb0, 0xdd, 0xd8),
        Subject::Object => RGBColor(0xb0, 0x7a, 0xa1),
        Subject::ObjectRaw => RGBColor(0xd4, 0xa6, 0xc8),
        Subject::FsPool => RGBColor(0xf8, 0xc0, 0x8a),
        Subject::RocksdbPool => RGBColor(0xee, 0x9a, 0x9b),
        Subject::SqlitePool => RGBColor(0xa9, 0xd3, 0xcf),
    };
    chart
        .draw_series(rows.iter().enumerate().map(|(k, c)| {
            let y = n - 1 - k as i32;
            Rectangle::new(
                [
                    (lo, SegmentValue::Exact(y)),
                    (c.ns_per_block(), SegmentValue::Exact(y + 1)),
                ],
                color(c.subject).filled(),
            )
        }))
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
