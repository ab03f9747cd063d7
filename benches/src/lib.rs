//! Criterion benchmarks for olocus-storage (see `benches/`). Run with
//! `cargo bench -p olocus-benches`; `cargo xtask bench` (issue 9) will drive the
//! full backend × operation matrix.
