//! An HTTP/1.1 server on its own thread and runtime, for the test servers (the upstreams, the
//! fault relay): it accepts as soon as it is spawned, serves sync and async tests alike, and
//! stopping or dropping it closes the port and every connection.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::oneshot;

/// A running server thread.
#[derive(Debug)]
pub struct ServerThread {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ServerThread {
    /// Serves `listener` (bound, non-blocking) on a thread called `name`, answering each request
    /// with `handle(shared, request)`, until stopped or, when given, `lifetime` has passed.
    ///
    /// # Errors
    /// The thread cannot be started.
    pub fn spawn<S, F, Fut>(
        name: &str,
        listener: TcpListener,
        lifetime: Option<Duration>,
        shared: Arc<S>,
        handle: F,
    ) -> std::io::Result<ServerThread>
    where
        S: Send + Sync + 'static,
        F: Fn(Arc<S>, Request<Incoming>) -> Fut + Send + Sync + Copy + 'static,
        Fut: Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
    {
        let (stop_tx, stop_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || serve(listener, lifetime, shared, handle, stop_rx))?;
        Ok(ServerThread {
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Closes the listener and every open connection; the port refuses connections afterwards.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    /// Serves until the process ends (for the demo origin).
    pub fn wait(mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The server thread: accepts until told to stop or its lifetime ends, then drops the runtime,
/// which cancels the connection tasks and so closes their sockets too.
fn serve<S, F, Fut>(
    listener: TcpListener,
    lifetime: Option<Duration>,
    shared: Arc<S>,
    handle: F,
    mut stop: oneshot::Receiver<()>,
) where
    S: Send + Sync + 'static,
    F: Fn(Arc<S>, Request<Incoming>) -> Fut + Send + Sync + Copy + 'static,
    Fut: Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime builds with the default settings");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)
            .expect("the listener is non-blocking and the runtime has IO enabled");
        let lifetime = async {
            match lifetime {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(lifetime);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = &mut lifetime => break,
                accepted = listener.accept() => {
                    let Ok((stream, _peer)) = accepted else { continue };
                    let shared = Arc::clone(&shared);
                    tokio::spawn(async move {
                        let service = service_fn(move |req| handle(Arc::clone(&shared), req));
                        let _ = hyper::server::conn::http1::Builder::new()
                            .keep_alive(true)
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            }
        }
    });
    drop(runtime);
}
