//! Fuzz target: see `drawbridge_fuzz::state_file` for what it checks.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| drawbridge_fuzz::state_file(data));
