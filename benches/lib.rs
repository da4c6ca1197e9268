//! What the bench targets share: [`Fixture`], the micro-benches' proxy config, router and gate
//! states built by the real code (`micro/fixture.rs`), and [`run_folder`], the results folder the
//! load and fleet benches write, with the header of its setup notes.

#[path = "micro/fixture.rs"]
mod fixture;
pub mod run_folder;

pub use fixture::{Fixture, ENVIRONMENT, NOW};
