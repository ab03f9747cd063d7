//! Opening and closing a store many times leaves no threads behind (each store's
//! read pool has worker threads; they must end when the store is closed).

use std::time::{Duration, Instant};

use storage_core::StorageBackend;
use storage_sqlite::{SQLiteBackend, SQLiteConfig};

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_stores_leave_no_threads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reopen.db");
    // Warm up: the runtime's blocking pool keeps its threads for a while.
    let s = SQLiteBackend::new(SQLiteConfig::at(&path)).await.unwrap();
    s.close().await.unwrap();
    drop(s);
    let before = threads();
    for _ in 0..100 {
        let s = SQLiteBackend::new(SQLiteConfig::at(&path)).await.unwrap();
        s.close().await.unwrap();
    }
    // Pool threads exit once notified; give them a moment, not 30 s.
    let deadline = Instant::now() + Duration::from_secs(5);
    while threads() > before + 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let after = threads();
    assert!(
        after <= before + 4,
        "100 open/close cycles left {} extra threads",
        after - before
    );
}
