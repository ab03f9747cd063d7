//! The raw engines beneath our backends, doing the same writes and reads of the
//! same bytes, so the matrix can give each backend's ratio to its engine.

pub mod object;
pub mod rocksdb;
pub mod sqlite;
