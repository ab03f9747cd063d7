//! `cargo xtask mutants`: cargo-mutants over the memory backend and the contract
//! logic in storage-core (scope and test command in `.cargo/mutants.toml`), and
//! the report in `docs/mutants.md`.
//!
//! Every surviving mutant must be accounted for: either a case is added that kills
//! it, or `docs/mutants-equivalent.txt` argues in one line why no test can (lines
//! `MUTANT<TAB>why`, the mutant named as cargo-mutants prints it, without its
//! line and column). The report lists survivors without an argument as
//! unaccounted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Runs cargo-mutants (unless `report_only`) and writes `docs/mutants.md`.
pub(crate) fn run(
    root: &Path,
    model_cases: u32,
    jobs: u32,
    iterate: bool,
    report_only: bool,
) -> Result<(), String> {
    let out = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("mutants");
    let mut took = None;
    if !report_only {
        ensure_installed()?;
        std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
        println!("==> cargo mutants (model sequences per suite: {model_cases})");
        let started = Instant::now();
        // cargo-mutants exits 2 when mutants survive and 3 on timeouts: the report
        // says which; only a failure to run at all is an error here.
        // No shared CARGO_TARGET_DIR: each parallel worker builds its own copy
        // of the tree into that copy's target directory (a shared one would let
        // one worker test another's mutant).
        let mut command = Command::new("cargo");
        // A mutant that makes the suite hang (a gate that never lets close go
        // on) is caught by the timeout: five times the unmutated run, so a hang
        // costs under a minute rather than minutes. The `mutants` profile is
        // `dev` without debug info: every mutant relinks the conformance
        // binaries, and that is most of its build.
        command.args([
            "mutants",
            "--no-shuffle",
            "--timeout-multiplier",
            "5",
            "--minimum-test-timeout",
            "30",
            "--profile",
            "mutants",
            "--jobs",
        ]);
        command.arg(jobs.to_string());
        if iterate {
            command.arg("--iterate");
        }
        let status = command
            .arg("--output")
            .arg(&out)
            .env_remove("CARGO_TARGET_DIR")
            .env("OLOCUS_MODEL_CASES", model_cases.to_string())
            .current_dir(root)
            .status()
            .map_err(|e| format!("cannot run cargo mutants: {e}"))?;
        if !matches!(status.code(), Some(0 | 2 | 3)) {
            return Err(format!("cargo mutants failed ({status})"));
        }
        took = Some(started.elapsed());
    }
    let report = report(root, &out.join("mutants.out"), model_cases, took)?;
    let path = root.join("docs/mutants.md");
    std::fs::write(&path, report).map_err(|e| format!("{}: {e}", path.display()))?;
    println!("xtask mutants: wrote {}", path.display());
    Ok(())
}

fn ensure_installed() -> Result<(), String> {
    let have = Command::new("cargo")
        .args(["mutants", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if have {
        return Ok(());
    }
    println!("==> installing cargo-mutants");
    let status = Command::new("cargo")
        .args(["install", "cargo-mutants", "--locked"])
        .status()
        .map_err(|e| format!("cannot run cargo install: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err("installing cargo-mutants failed".into())
    }
}

/// A mutant as listed, without its `:line:col` (so arguments survive edits
/// elsewhere in the file).
fn key(line: &str) -> String {
    let mut parts = line.splitn(4, ':');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(file), Some(_), Some(_), Some(rest)) => format!("{file}:{}", rest.trim()),
        _ => line.trim().to_string(),
    }
}

/// The mutants of the code as it is now, as `cargo mutants --list` names them.
fn current_mutants(root: &Path) -> Result<std::collections::BTreeSet<String>, String> {
    let out = Command::new("cargo")
        .args(["mutants", "--list"])
        .current_dir(root)
        .output()
        .map_err(|e| format!("cannot run cargo mutants --list: {e}"))?;
    if !out.status.success() {
        return Err("cargo mutants --list failed".into());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect())
}

fn lines(dir: &Path, name: &str) -> Result<Vec<String>, String> {
    let path = dir.join(name);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect())
}

fn report(
    root: &Path,
    dir: &Path,
    model_cases: u32,
    took: Option<std::time::Duration>,
) -> Result<String, String> {
    let mut caught = lines(dir, "caught.txt")?;
    let missed = lines(dir, "missed.txt")?;
    let timeout = lines(dir, "timeout.txt")?;
    let mut unviable = lines(dir, "unviable.txt")?;
    let tested = caught.len() + missed.len() + timeout.len() + unviable.len();
    let iterated = dir.join("previously_caught.txt").exists();
    // After `--iterate`: mutants of the current code that an earlier run caught
    // (or found unviable) count as they did then; names that no longer exist
    // (the code moved) are dropped, their new names were tested again.
    if iterated {
        let current = current_mutants(root)?;
        let old = dir.with_extension("out.old");
        let old_unviable = lines(&old, "unviable.txt").unwrap_or_default();
        for m in lines(dir, "previously_caught.txt")? {
            if !current.contains(&m) {
                continue;
            }
            if old_unviable.contains(&m) {
                unviable.push(m);
            } else {
                caught.push(m);
            }
        }
    }
    let args_path = root.join("docs/mutants-equivalent.txt");
    let arguments: BTreeMap<String, String> = std::fs::read_to_string(&args_path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('\t'))
        .map(|(m, why)| (m.trim().to_string(), why.trim().to_string()))
        .collect();
    let generated = caught.len() + missed.len() + timeout.len() + unviable.len();
    let killed = caught.len() + timeout.len();
    let score = if killed + missed.len() == 0 {
        100.0
    } else {
        100.0 * killed as f64 / (killed + missed.len()) as f64
    };
    let mut out = String::new();
    out.push_str("# Mutation testing\n\n");
    out.push_str(
        "`cargo xtask mutants` runs [cargo-mutants](https://mutants.rs) over the memory \
         backend and the contract logic in `storage-core` (the layer every backend is \
         built on, the admission rule, list filtering and ordering, hash-link and payload \
         checks, wire decoding, store verification; scope in `.cargo/mutants.toml`), with \
         the memory backend's conformance suite (three of its fixtures: decoded, binary + \
         zstd, JSON + lz4) and `storage-core`'s unit tests as the test (the layer's gate, \
         spans and error context are reached only by a test engine there). Each mutant \
         that the tests do not catch is \
         either killed by a new case or argued equivalent below \
         (`docs/mutants-equivalent.txt`). This file is written by the command.\n\n",
    );
    out.push_str(&format!(
        "Model-based sequences per suite: {model_cases}{}.\n\n",
        took.map(|t| {
            let minutes = t.as_secs_f64() / 60.0;
            if iterated {
                format!(
                    "; the last run (`--iterate`) tested {tested} mutants in {minutes:.0} min, \
                     the others count as an earlier run left them"
                )
            } else {
                format!("; the run took {minutes:.0} min")
            }
        })
        .unwrap_or_default()
    ));
    out.push_str(
        "| generated | caught | missed | timeouts | unviable | caught ÷ (caught + missed) |\n",
    );
    out.push_str("|---:|---:|---:|---:|---:|---:|\n");
    out.push_str(&format!(
        "| {generated} | {} | {} | {} | {} | **{score:.1}%** |\n\n",
        caught.len(),
        missed.len(),
        timeout.len(),
        unviable.len()
    ));
    out.push_str("Timeouts count as caught (the mutant made the suite hang, which fails it); unviable mutants (that do not build) are left out.\n\n");
    out.push_str("## Survivors\n\n");
    if missed.is_empty() {
        out.push_str("None.\n");
    }
    let mut unaccounted = 0;
    for m in &missed {
        match arguments.get(&key(m)) {
            Some(why) => out.push_str(&format!("- `{m}` — equivalent: {why}\n")),
            None => {
                unaccounted += 1;
                out.push_str(&format!("- `{m}` — **unaccounted**\n"));
            }
        }
    }
    if unaccounted > 0 {
        println!("xtask mutants: {unaccounted} surviving mutants are unaccounted for");
    }
    Ok(out)
}
