//! Fuzz target: see `drawbridge_fuzz::proxy_config` for what it checks.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| drawbridge_fuzz::proxy_config(data));
