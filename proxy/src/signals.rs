//! Signals the proxy takes itself (SIGHUP, SIGUSR2), by services that start before the listeners
//! open, so that one sent early never ends the process (the default action of both).

use tokio::signal::unix::{signal, Signal, SignalKind};

/// One signal taken; `None` when it could not be (logged with what is lost).
pub struct Taken(Option<Signal>);

impl Taken {
    /// Takes `kind` (named `name` in the log); `without` says what is lost if it cannot be.
    pub fn new(kind: SignalKind, name: &str, without: &str) -> Taken {
        match signal(kind) {
            Ok(signal) => Taken(Some(signal)),
            Err(e) => {
                tracing::error!("cannot take {name} ({e}): {without}");
                Taken(None)
            }
        }
    }

    /// Waits for the next one; forever when it could not be taken.
    pub async fn next(&mut self) {
        let received = match self.0.as_mut() {
            Some(signal) => signal.recv().await,
            None => None,
        };
        if received.is_none() {
            std::future::pending::<()>().await;
        }
    }
}
