//! See `storage_fuzz::fs_open`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| storage_fuzz::fs_open(data));
