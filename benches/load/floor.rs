//! `bare-pingora`: the floor of the load bench. A Pingora pass-through with no logic of its own
//! (no routing, no gate, no metrics, no headers added), run with the same threads as the proxies
//! it is compared with, so the tables show what Drawbridge's own work costs over the framework.
//! With `--answer-page`/`--answer-api` it answers every request itself with a fixed 503 instead,
//! the floor for maintenance answers. Adding `--session-only` writes those answers straight on
//! Pingora's HTTP session, without the proxy framework's phases: the least any Pingora-based
//! answer can cost. `--tls-listen` adds a TLS listener with Pingora's own rustls settings (TLS
//! 1.2 and 1.3, HTTP/2 then HTTP/1.1 by ALPN), the floor of the TLS figure.

use async_trait::async_trait;
use bytes::Bytes;
use clap::Parser;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream, ServerApp};
use pingora::http::ResponseHeader;
use pingora::listeners::tls::TlsSettings;
use pingora::prelude::{HttpPeer, Opt};
use pingora::protocols::http::ServerSession;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::listening::Service;
use pingora::Result;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// A bare Pingora pass-through (the bench's floor).
#[derive(Parser, Debug)]
struct Cli {
    /// Listener, `ip:port`.
    #[arg(long)]
    listen: SocketAddr,
    /// The one origin every request goes to, `ip:port`.
    #[arg(long)]
    origin: SocketAddr,
    /// Worker threads of the proxy service.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Folder for the pid file and the upgrade socket.
    #[arg(long)]
    run_dir: PathBuf,
    /// Answer requests outside `/api/` with 503 and this file (text/html) instead of proxying.
    #[arg(long, requires = "answer_api")]
    answer_page: Option<PathBuf>,
    /// Answer requests under `/api/` with 503 and this file (application/problem+json).
    #[arg(long, requires = "answer_page")]
    answer_api: Option<PathBuf>,
    /// Serve the answers from Pingora's HTTP session alone, not through `ProxyHttp`.
    #[arg(long, requires = "answer_page")]
    session_only: bool,
    /// A TLS listener too, `ip:port`, serving `--cert` with `--key`.
    #[arg(long, requires_all = ["cert", "key"])]
    tls_listen: Option<SocketAddr>,
    /// The certificate of the TLS listener, PEM.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Its key, PEM.
    #[arg(long)]
    key: Option<PathBuf>,
}

/// The two fixed answers of the maintenance floor.
struct Answers {
    page: Bytes,
    api: Bytes,
}

impl Answers {
    /// The 503 for `path`: its header (content type and length only) and body.
    fn for_path(&self, path: &str) -> Result<(ResponseHeader, Bytes)> {
        let (body, content_type) = if path.starts_with("/api/") {
            (self.api.clone(), "application/problem+json")
        } else {
            (self.page.clone(), "text/html; charset=utf-8")
        };
        let mut header = ResponseHeader::build(503, Some(2))?;
        header.insert_header("content-type", content_type)?;
        header.insert_header("content-length", body.len().to_string())?;
        Ok((header, body))
    }
}

struct Floor {
    origin: SocketAddr,
    answers: Option<Answers>,
}

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
        let Some(answers) = &self.answers else {
            return Ok(false);
        };
        let (header, body) = answers.for_path(session.req_header().uri.path())?;
        session
            .write_response_header(Box::new(header), false)
            .await?;
        session.write_response_body(Some(body), true).await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.origin, false, String::new())))
    }
}

/// The answers written on the bare HTTP session: read the request, write the 503, hand the
/// connection back for the next request.
struct SessionFloor(Answers);

#[async_trait]
impl HttpServerApp for SessionFloor {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        _shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if !session.read_request().await.ok()? {
            return None;
        }
        let (header, body) = self.0.for_path(session.req_header().uri.path()).ok()?;
        session.write_response_header(Box::new(header)).await.ok()?;
        session.write_response_body(body, true).await.ok()?;
        let settings = HttpPersistentSettings::for_session(&session);
        let stream = session.finish().await.ok()??;
        Some(ReusedHttpStream::from_reusable_stream(stream, settings))
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let answers = match (&cli.answer_page, &cli.answer_api) {
        (Some(page), Some(api)) => Some(Answers {
            page: read(page)?,
            api: read(api)?,
        }),
        _ => None,
    };
    let opt = Opt {
        upgrade: false,
        daemon: false,
        nocapture: false,
        test: false,
        conf: None,
    };
    let conf = ServerConf {
        threads: cli.threads,
        pid_file: cli.run_dir.join("bare-pingora.pid").display().to_string(),
        upgrade_sock: cli.run_dir.join("upgrade.sock").display().to_string(),
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    match answers {
        Some(answers) if cli.session_only => {
            let service = Service::new("session floor".to_string(), SessionFloor(answers));
            add(&mut server, service, &cli)?;
        }
        answers => {
            let floor = Floor {
                origin: cli.origin,
                answers,
            };
            let service = pingora::proxy::http_proxy_service(&server.configuration, floor);
            add(&mut server, service, &cli)?;
        }
    }
    server.run_forever()
}

/// Adds `service` on the listeners with the threads asked for.
fn add<A: ServerApp + Send + Sync + 'static>(
    server: &mut Server,
    mut service: Service<A>,
    cli: &Cli,
) -> anyhow::Result<()> {
    service.add_tcp(&cli.listen.to_string());
    if let (Some(addr), Some(cert), Some(key)) = (cli.tls_listen, &cli.cert, &cli.key) {
        let path = |p: &PathBuf| {
            p.to_str()
                .map(str::to_string)
                .ok_or_else(|| anyhow::anyhow!("{} is not UTF-8", p.display()))
        };
        let mut tls = TlsSettings::intermediate(&path(cert)?, &path(key)?)
            .map_err(|e| anyhow::anyhow!("TLS listener settings: {e}"))?;
        tls.enable_h2();
        service.add_tls_with_settings(&addr.to_string(), None, tls);
    }
    service.threads = Some(cli.threads);
    server.add_service(service);
    Ok(())
}

fn read(path: &PathBuf) -> anyhow::Result<Bytes> {
    std::fs::read(path)
        .map(Bytes::from)
        .map_err(|e| anyhow::anyhow!("cannot read the answer file {}: {e}", path.display()))
}
