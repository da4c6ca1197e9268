//! What the bench targets share: [`Fixture`], the micro-benches' proxy config, router and gate
//! states built by the real code (`micro/fixture.rs`), and [`run_folder`], the results folder the
//! load and fleet benches write, with the header of its setup notes, and [`oha`], the load
//! generator's results as the load and changes benches read them.

#[path = "micro/fixture.rs"]
mod fixture;
pub mod oha;
pub mod run_folder;

pub use fixture::{Fixture, ENVIRONMENT, NOW};
