//! Helpers shared by the end-to-end tests: running the built binary, and
//! signed test chains.
#![allow(dead_code)] // each test target uses its own subset

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use olocus_storage::{Block, SigningKey, WireFormat};

/// Runs the binary with `args` (and no `OLOCUS_STORE` from the caller).
pub(crate) fn bin(args: &[&str]) -> Output {
    bin_env(args, &[])
}

/// Runs the binary with `args` and these extra environment variables.
pub(crate) fn bin_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_olocus-storage"))
        .args(args)
        .env_remove("OLOCUS_STORE")
        .envs(env.iter().copied())
        .output()
        .expect("run olocus-storage")
}

/// Runs the binary; it must succeed. Its standard output.
pub(crate) fn ok(args: &[&str]) -> String {
    ok_env(args, &[])
}

/// [`ok`] with extra environment variables.
pub(crate) fn ok_env(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = bin_env(args, env);
    assert!(
        out.status.success(),
        "olocus-storage {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Runs the binary; it must fail. Its standard output and error.
pub(crate) fn fails(args: &[&str]) -> (String, String) {
    let out = bin(args);
    assert!(!out.status.success(), "olocus-storage {args:?} should fail");
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// A signed chain of `n` blocks with JSON payloads.
pub(crate) fn chain(n: u64) -> Vec<Block> {
    let key = SigningKey::from_bytes(&[11; 32]);
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
    let mut out: Vec<Block> = Vec::new();
    for i in 0..n {
        let ty = if i % 4 == 0 {
            "cli.event/v1"
        } else {
            "cli.reading/v1"
        };
        let payload = format!(
            "{{\"seq\":{i},\"note\":\"{}\"}}",
            "x".repeat((i % 50) as usize)
        );
        let prev = out.last().map(Block::hash);
        let b = Block::sign_raw(
            i,
            t0 + Duration::from_micros(i * 1_001),
            prev,
            ty,
            payload.into_bytes(),
            &key,
        )
        .unwrap();
        out.push(b);
    }
    out
}

/// Writes `blocks` as JSON Lines.
pub(crate) fn write_jsonl(path: &Path, blocks: &[Block]) {
    let mut text = Vec::new();
    for b in blocks {
        text.extend(WireFormat::JSON.encode(b).unwrap());
        text.push(b'\n');
    }
    std::fs::write(path, text).unwrap();
}

/// A path as text.
pub(crate) fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Runs the binary; its exit code (`None` if a signal ended it) and standard
/// error.
pub(crate) fn exit_code(args: &[&str]) -> (Option<i32>, String) {
    let out = bin(args);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
