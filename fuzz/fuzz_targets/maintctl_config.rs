//! Fuzz target: see `drawbridge_fuzz::maintctl_config` for what it checks.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| drawbridge_fuzz::maintctl_config(data));
