//! The proxy app with the rules every HTTP session gets before its request is read: the
//! keep-alive idle timeout, the waits for a request body's next bytes and for a slow reader to
//! take the answer (`[limits]`), and a clean end for idle keep-alive connections.
//!
//! Pingora closes every keep-alive connection that waits for its next request as soon as a
//! shutdown starts (SIGTERM, or SIGQUIT in a graceful upgrade). A client that sends its next
//! request at that moment meets a closed connection, an error it cannot tell from a crash.
//! [`SessionRules`] keeps those connections open for the grace period instead: each next
//! request is served (Pingora answers it with `Connection: close` once the shutdown started),
//! so clients move to the new process between two answers. Connections still idle when the
//! grace period ends are closed then.

use crate::config::Limits;
use async_trait::async_trait;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Wraps an HTTP app; only the sessions' timeouts and the shutdown of idle connections differ.
pub struct SessionRules<A> {
    inner: Arc<A>,
    grace_period: Duration,
    /// Whole seconds, as HTTP/1 sessions take it (at least 1).
    keepalive_secs: u64,
    body_timeout: Duration,
    send_timeout: Duration,
}

impl<A> SessionRules<A> {
    /// `grace_period`: how long idle connections stay open after the shutdown starts (the
    /// server's `grace_period`, after which Pingora stops the runtimes anyway).
    pub fn new(inner: A, grace_period: Duration, limits: &Limits) -> Self {
        SessionRules {
            inner: Arc::new(inner),
            grace_period,
            keepalive_secs: limits.keepalive_timeout.as_secs().max(1),
            body_timeout: limits.body_timeout,
            send_timeout: limits.send_timeout,
        }
    }
}

#[async_trait]
impl<A> HttpServerApp for SessionRules<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    /// Hands out the inner app's own future instead of wrapping it in a second one, so the
    /// wrapper costs a request nothing: no extra boxed future, no extra move of the session
    /// (an `async fn` here measured about 1 µs per request).
    fn process_new_http<'app, 'watch, 'future>(
        self: &'app Arc<Self>,
        mut session: ServerSession,
        shutdown: &'watch ShutdownWatch,
    ) -> Pin<Box<dyn Future<Output = Option<ReusedHttpStream>> + Send + 'future>>
    where
        'app: 'future,
        'watch: 'future,
        Self: 'future,
    {
        // Pingora's own 60 s, unless keep-alive is off (a shutdown has started).
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(self.keepalive_secs));
        }
        session.set_read_timeout(Some(self.body_timeout));
        crate::guard::next_request();
        session.set_write_timeout(Some(self.send_timeout));
        self.inner.process_new_http(session, shutdown)
    }

    fn h2_options(&self) -> Option<pingora::protocols::http::v2::server::H2Options> {
        self.inner.h2_options()
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.inner.server_options()
    }

    /// Called once the listeners have stopped accepting: waits out the grace period before the
    /// inner app aborts the reads of idle connections.
    async fn http_cleanup(&self) {
        tokio::time::sleep(self.grace_period).await;
        self.inner.http_cleanup().await;
    }
}
