//! Runs every fuzz target over its checked-in seed corpus (`fuzz/corpus/TARGET`),
//! then over deterministic mutations of it: a short fuzzing smoke test on stable
//! Rust, so CI catches a regression without a nightly build. `OLOCUS_FUZZ_MUTATIONS`
//! sets the mutations per corpus file (default 40).

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let path = e.expect("entry").path();
            let bytes = std::fs::read(&path).expect("read corpus file");
            (
                path.file_name().unwrap().to_string_lossy().into_owned(),
                bytes,
            )
        })
        .collect();
    files.sort();
    assert!(
        files.len() >= 3,
        "{} holds only {} seeds",
        dir.display(),
        files.len()
    );
    files
}

/// Flips, overwrites, inserts, deletes and truncates bytes (xorshift, seeded).
fn mutate(input: &[u8], seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let mut out = input.to_vec();
    for _ in 0..1 + next() % 4 {
        let at = if out.is_empty() {
            0
        } else {
            (next() % out.len() as u64) as usize
        };
        match next() % 5 {
            0 if !out.is_empty() => out[at] ^= 1 << (next() % 8),
            1 if !out.is_empty() => out[at] = next() as u8,
            2 => out.insert(at, next() as u8),
            3 if !out.is_empty() => {
                out.remove(at);
            }
            _ => out.truncate(at),
        }
    }
    out
}

fn run(target: &str, body: fn(&[u8])) {
    let mutations: u64 = std::env::var("OLOCUS_FUZZ_MUTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let mut runs = 0;
    for (name, bytes) in corpus(target) {
        body(&bytes);
        for m in 0..mutations {
            let input = mutate(
                &bytes,
                m.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ bytes.len() as u64,
            );
            let outcome = std::panic::catch_unwind(|| body(&input));
            assert!(
                outcome.is_ok(),
                "{target}: mutation {m} of seed {name} fails; input: {input:?}"
            );
            runs += 1;
        }
    }
    println!("{target}: {runs} mutated inputs");
}

#[test]
fn wire_decode_corpus() {
    run("wire_decode", storage_fuzz::wire_decode);
}

#[test]
fn fs_open_corpus() {
    run("fs_open", storage_fuzz::fs_open);
}

#[test]
fn model_ops_corpus() {
    run("model_ops", storage_fuzz::model_ops);
}
