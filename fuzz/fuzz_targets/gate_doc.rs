//! Fuzz target: see `drawbridge_fuzz::gate_doc` for what it checks.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| drawbridge_fuzz::gate_doc(data));
