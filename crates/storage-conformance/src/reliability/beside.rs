//! A read-only open beside a writing process: a child process ingests (the
//! crash test's child: single writes, batches, deletes, compactions) and
//! reports every acknowledgement; meanwhile the store is opened read-only,
//! several times, and must show every block acknowledged before it opened
//! (less those a delete had started on), each the block that was written,
//! and refuse writes.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use storage_core::{BlockHash, ErrorKind, StorageError, verify_block};

use super::{CHILD_ARG, DurableTarget, runtime};

/// The test's name in [`super::reliability_main`].
pub const TEST_NAME: &str = "read_only_beside_a_writer";

/// Read-only opens per run, each after more acknowledgements.
const OPENS: usize = 4;

/// What the child's report lines say so far.
#[derive(Default)]
struct Acks {
    /// Blocks whose write was acknowledged.
    stored: HashSet<BlockHash>,
    /// Blocks a delete was started on (acknowledged or not).
    deleting: HashSet<BlockHash>,
    /// Blocks the child started to write.
    written: HashSet<BlockHash>,
}

impl Acks {
    fn of(lines: &[String]) -> Result<Self, String> {
        let mut a = Self::default();
        for line in lines {
            let mut words = line.splitn(3, ' ');
            let (kind, op, arg) = (words.next(), words.next(), words.next().unwrap_or(""));
            let hashes = || -> Result<Vec<BlockHash>, String> {
                arg.split(',')
                    .filter(|h| !h.is_empty())
                    .map(|h| {
                        h.parse()
                            .map_err(|e| format!("bad hash {h:?} from the child: {e}"))
                    })
                    .collect()
            };
            match (kind, op) {
                (Some("op"), Some("put" | "batch")) => a.written.extend(hashes()?),
                (Some("ack"), Some("put" | "batch")) => a.stored.extend(hashes()?),
                (Some("op"), Some("del")) => a.deleting.extend(hashes()?),
                _ => {}
            }
        }
        Ok(a)
    }
}

/// An error with its causes, for a report.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(&format!(": {c}"));
        cause = c.source();
    }
    out
}

/// Runs the test for `target` (named `name` in [`super::reliability_main`]).
pub fn run(name: &str, target: &dyn DurableTarget) -> Result<String, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let store_dir = dir.path().join("store");
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(&exe)
        .arg(CHILD_ARG)
        .arg(name)
        .arg(&store_dir)
        .arg("0")
        .arg("7")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("spawning the writer: {e}"))?;
    let stdout = child.stdout.take().expect("piped");
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let reader = {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        })
    };
    let seen = |n: usize| lines.lock().unwrap_or_else(|e| e.into_inner())[..n].to_vec();
    let count = || lines.lock().unwrap_or_else(|e| e.into_inner()).len();
    let outcome = (|| -> Result<String, String> {
        let rt = runtime()?;
        let mut checked = 0usize;
        for round in 1..=OPENS {
            // Wait for more of the writer's work before each open.
            let started = Instant::now();
            let want = round * 150;
            while count() < want {
                if started.elapsed() > Duration::from_secs(120) {
                    return Err(format!(
                        "the writer reported {} lines in 2 minutes, {want} awaited",
                        count()
                    ));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let before = count();
            let acked = Acks::of(&seen(before))?.stored;
            checked += rt.block_on(async {
                let store = target
                    .open_read_only(&store_dir)
                    .await
                    .ok_or("the target opens no read-only store")?
                    .map_err(|e| format!("opening read-only beside the writer: {}", chain(&e)))?;
                let mut absent = Vec::new();
                for h in &acked {
                    match store.retrieve_block(h).await {
                        Ok(Some(b)) if b.hash() == *h => {}
                        Ok(Some(b)) => {
                            return Err(format!("asked for {h}, the reader returned {}", b.hash()));
                        }
                        Ok(None) => absent.push(*h),
                        Err(e) => return Err(format!("reading acknowledged block {h}: {e}")),
                    }
                }
                // A store that shows later commits may show deletes started
                // up to the last read.
                let deleting = Acks::of(&seen(count()))?.deleting;
                let missing = absent.iter().filter(|h| !deleting.contains(h)).count();
                if missing > 0 {
                    return Err(format!(
                        "open {round}: {missing} of {} blocks acknowledged before the read-only \
                         open are missing from it",
                        acked.len()
                    ));
                }
                let all = store
                    .get_blocks_by_range(0, u64::MAX)
                    .await
                    .map_err(|e| format!("reading every block read-only: {e}"))?;
                let written = Acks::of(&seen(count()))?.written;
                let mut hashes = HashSet::new();
                for b in &all {
                    verify_block(b, None).map_err(|e| {
                        format!("block #{} read beside the writer: {e}", b.index())
                    })?;
                    if !written.contains(&b.hash()) || !hashes.insert(b.hash()) {
                        return Err(format!(
                            "block #{} ({}) read beside the writer was never written, or came twice",
                            b.index(),
                            b.hash()
                        ));
                    }
                }
                let first = all.first().ok_or("the read-only store holds no block")?;
                match store.delete_block(&first.hash()).await {
                    Err(e) if e.kind() == ErrorKind::ReadOnly => {}
                    other => {
                        return Err(format!(
                            "a delete through the read-only store: {:?}",
                            other.map_err(|e: StorageError| e.to_string())
                        ));
                    }
                }
                store.close().await.map_err(|e| e.to_string())?;
                Ok::<usize, String>(acked.len())
            })?;
        }
        Ok(format!(
            "{OPENS} read-only opens beside the writer, {checked} acknowledged blocks found"
        ))
    })();
    let _ = child.kill();
    let status = child.wait().map_err(|e| e.to_string())?;
    let _ = reader.join();
    // The writer must still have been running: if it stopped by itself, the
    // opens above ran beside nothing.
    if outcome.is_ok() && std::os::unix::process::ExitStatusExt::signal(&status) != Some(9) {
        return Err(format!("the writer ended by itself ({status})"));
    }
    outcome
}
