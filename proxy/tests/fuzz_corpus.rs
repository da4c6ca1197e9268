//! The fuzz targets' short run: each target's body (from `fuzz/src`, the code `cargo fuzz run`
//! drives) on its whole seed corpus and deterministic mutations of it, on a stable toolchain.
//! The long run is `scripts/fuzz.sh`.

#[path = "../../fuzz/src/lib.rs"]
mod fuzz;

use std::path::Path;
use std::time::Instant;

/// Replays target `name` with `mutations` mutated inputs and says how long it took.
fn replay(name: &str, mutations: usize) {
    let (_, body) = fuzz::TARGETS
        .into_iter()
        .find(|(target, _)| *target == name)
        .expect("a fuzz target of that name");
    let fuzz_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let started = Instant::now();
    let replayed = fuzz::replay::replay(
        &fuzz_dir.join("corpus").join(name),
        &fuzz_dir.join("dict").join(format!("{name}.dict")),
        mutations,
        body,
    );
    eprintln!(
        "{name}: {} seeds, {} inputs in {:.2?}",
        replayed.seeds,
        replayed.inputs,
        started.elapsed()
    );
}

// The counts keep each test near a second in a debug build: the config loaders build an HTTP
// client per Consul address, some milliseconds each, where the other parsers take microseconds.

#[test]
fn gate_doc() {
    replay("gate_doc", 20_000);
}

#[test]
fn bypass_token() {
    replay("bypass_token", 10_000);
}

#[test]
fn client_ip() {
    replay("client_ip", 20_000);
}

#[test]
fn state_file() {
    replay("state_file", 20_000);
}

#[test]
fn proxy_config() {
    replay("proxy_config", 4_000);
}

#[test]
fn maintctl_config() {
    replay("maintctl_config", 1_500);
}
