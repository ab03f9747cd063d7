//! `cargo xtask cluster up|down|env`, and the cluster `ci` runs its tests with.

use std::path::{Path, PathBuf};

use seaweed_cluster::{Cluster, ClusterSpec, detached_env, ensure_weed, stop_detached};

use crate::ClusterAction;

/// The shared cluster's master port (S3 on `+ 9`). Tests that kill servers start
/// their own clusters on other ports.
const BASE_PORT: u16 = 9630;

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

/// Where `weed` is installed and where the shared cluster keeps its data.
pub(crate) fn dirs(root: &Path) -> (PathBuf, PathBuf) {
    let base = target_dir(root).join("seaweedfs");
    (base.join("venv"), base.join("cluster"))
}

pub(crate) fn command(root: &Path, action: ClusterAction) -> Result<(), String> {
    let (venv, dir) = dirs(root);
    match action {
        ClusterAction::Up => {
            if detached_env(&dir).is_some() {
                eprintln!("cluster already running in {}", dir.display());
            } else {
                stop_detached(&dir)?;
                let weed = ensure_weed(&venv)?;
                Cluster::start(ClusterSpec::new(weed, dir.clone(), BASE_PORT))?.detach();
            }
            print_env(&dir)
        }
        ClusterAction::Down => {
            let n = stop_detached(&dir)?;
            println!("stopped {n} cluster processes");
            Ok(())
        }
        ClusterAction::Env => print_env(&dir),
    }
}

fn print_env(dir: &Path) -> Result<(), String> {
    let env = detached_env(dir).ok_or("no cluster running (cargo xtask cluster up)")?;
    for (k, v) in env {
        println!("export {k}={v}");
    }
    Ok(())
}

/// Variables to run tests with.
pub(crate) type Env = Vec<(String, String)>;

/// The cluster `ci`'s tests run against: the one `cluster up` left running, or a
/// fresh one that is stopped when the returned guard drops. Also returns the
/// variables to run the tests with (the cluster's, and `OLOCUS_WEED` for tests
/// that start clusters of their own).
pub(crate) fn for_ci(root: &Path) -> Result<(Option<Cluster>, Env), String> {
    let (venv, dir) = dirs(root);
    let weed = ensure_weed(&venv)?;
    let weed_var = (
        "OLOCUS_WEED".to_string(),
        weed.to_str().ok_or("non-UTF-8 path")?.to_string(),
    );
    if let Some(mut env) = detached_env(&dir) {
        println!("==> using the running cluster in {}", dir.display());
        env.push(weed_var);
        return Ok((None, env));
    }
    stop_detached(&dir)?;
    let cluster = Cluster::start(ClusterSpec::new(weed, dir, BASE_PORT))?;
    let mut env: Vec<(String, String)> = cluster
        .env()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    env.push(weed_var);
    Ok((Some(cluster), env))
}
