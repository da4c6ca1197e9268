//! `maintctl`: the control CLI of Drawbridge. It will run the whole take-down and restore
//! procedure; until its commands exist it prints its help, so nothing can mistake it for a
//! working procedure.

use clap::{CommandFactory, Parser};

/// Takes a whole service down for planned maintenance and brings it back, one command each way.
///
/// This version has no procedure commands yet: flip the gate with the Consul key (see the
/// README's "Try it" section).
#[derive(Parser, Debug)]
#[command(name = "maintctl", version)]
struct Cli {}

fn main() {
    Cli::parse();
    Cli::command()
        .print_help()
        .expect("help goes to stdout, which is open");
}
