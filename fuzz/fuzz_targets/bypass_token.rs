//! Fuzz target: see `drawbridge_fuzz::bypass_token` for what it checks.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| drawbridge_fuzz::bypass_token(data));
