//! The built binary against the S3 gateway of a real SeaweedFS cluster on
//! 127.0.0.1: a chain imported into a filesystem store is migrated onto the
//! cluster, verified and listed there, migrated on into SQLite, verified, and
//! exported byte for byte as it went in.
//!
//! The cluster comes from `OLOCUS_S3_*` (`cargo xtask cluster up`, or
//! `cargo xtask ci`); without them the test is reported as ignored.

mod common;

use std::process::ExitCode;

use common::{chain, ok_env, s, write_jsonl};
use libtest_mimic::{Arguments, Completion, Failed, Trial};

/// The cluster's endpoint, bucket and credentials, if set.
struct ClusterEnv {
    endpoint: String,
    bucket: String,
    key: String,
    secret: String,
}

fn cluster_env() -> Option<ClusterEnv> {
    let var = |n: &str| std::env::var(n).ok();
    Some(ClusterEnv {
        endpoint: var("OLOCUS_S3_ENDPOINT")?,
        bucket: var("OLOCUS_S3_BUCKET")?,
        key: var("OLOCUS_S3_ACCESS_KEY_ID")?,
        secret: var("OLOCUS_S3_SECRET_ACCESS_KEY")?,
    })
}

fn fs_to_the_cluster_to_sqlite(cluster: &ClusterEnv) -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("in.jsonl");
    write_jsonl(&input, &chain(700));
    // Credentials reach the S3 client from the environment, never the URL.
    let env = [
        ("AWS_ACCESS_KEY_ID", cluster.key.as_str()),
        ("AWS_SECRET_ACCESS_KEY", cluster.secret.as_str()),
    ];
    let run = |args: &[&str]| ok_env(args, &env);
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).map_err(|e| e.to_string())?;
    let fs = format!("fs:{}", s(&dir.path().join("src")));
    let s3 = format!(
        "s3://{}/cli-e2e/{:016x}?endpoint={}",
        cluster.bucket,
        u64::from_le_bytes(nonce),
        cluster.endpoint
    );
    let sqlite = format!("sqlite:{}", s(&dir.path().join("dst.db")));

    run(&["--store", &fs, "import", &s(&input)]);
    let want = run(&["--store", &fs, "list", "--json"]);

    // A chain that is not there yet is an error for reading commands.
    let missing = common::bin_env(&["--store", &s3, "head"], &env);
    if missing.status.success() {
        return Err("reading a chain that does not exist succeeded".into());
    }

    let out = run(&["migrate", "--from", &fs, "--to", &s3, "--batch", "128"]);
    if !out.contains("migrated 700 blocks") {
        return Err(format!("fs -> s3: {out}").into());
    }
    let out = run(&["--store", &s3, "verify"]);
    if !out.contains("verified 700 blocks") {
        return Err(format!("verify on the cluster: {out}").into());
    }
    if run(&["--store", &s3, "list", "--json"]) != want {
        return Err("the cluster lists other blocks than the source".into());
    }

    let out = run(&["migrate", "--from", &s3, "--to", &sqlite, "--batch", "200"]);
    if !out.contains("migrated 700 blocks") {
        return Err(format!("s3 -> sqlite: {out}").into());
    }
    let out = run(&["--store", &sqlite, "verify"]);
    if !out.contains("verified 700 blocks") {
        return Err(format!("verify on sqlite: {out}").into());
    }
    let exported = dir.path().join("out.jsonl");
    run(&["--store", &sqlite, "export", &s(&exported)]);
    if std::fs::read(&exported)? != std::fs::read(&input)? {
        return Err("the chain came back with other bytes".into());
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let name = "migrate_fs_to_the_cluster_to_sqlite_and_verify";
    let trial = match cluster_env() {
        Some(cluster) => Trial::test(name, move || fs_to_the_cluster_to_sqlite(&cluster)),
        None => Trial::ignorable_test(name, || {
            Ok(Completion::ignored_with(
                "no cluster (OLOCUS_S3_* unset; cargo xtask cluster up)",
            ))
        }),
    };
    libtest_mimic::run(&args, vec![trial]).exit_code()
}
