//! See `storage_fuzz::model_ops`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| storage_fuzz::model_ops(data));
