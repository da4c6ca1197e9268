//! TLS on the public listeners: certificates read from PEM files, chosen per handshake by the
//! name the client sends (SNI), and reloaded without a restart on SIGHUP or when their files
//! change. Open connections keep the certificate they were made with; a file that cannot be
//! served at reload leaves the previous certificate in place and is reported.
//!
//! # Layout
//! * `accept`: the handshakes, under the connection caps and the header deadline ([`TlsAcceptor`]).
//! * `load`: one entry's files, read and checked ([`load`], [`Loaded`]).
//! * `resolver`: the certificate of a handshake, by name ([`CertSet`], [`SniResolver`]).
//! * `store`: the entries being served, reloaded and reported ([`Certificates`]).
//! * `reload`: the background service that reloads them ([`TlsReloader`]).

mod accept;
mod load;
mod reload;
mod resolver;
mod store;

pub use accept::TlsAcceptor;
pub(crate) use load::{certified_key, pem_error, private_key, unexpired, PairProblem};
pub use load::{load, Fingerprint, LoadError, Loaded, Part, EXPIRY_WARNING};
pub use reload::TlsReloader;
pub use resolver::{CertSet, Shadowed, SniResolver};
pub use store::{Certificates, Reloaded};
