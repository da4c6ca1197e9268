//! Fuzz target: see `drawbridge_fuzz::client_ip` for what it checks.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| drawbridge_fuzz::client_ip(data));
