//! `bare-pingora`: the floor of the load bench. A Pingora pass-through with no logic of its own
//! (no routing, no gate, no metrics, no headers added), run with the same threads as the proxies
//! it is compared with, so the tables show what Drawbridge's own work costs over the framework.
//! With `--answer-page`/`--answer-api` it answers every request itself with a fixed 503 instead,
//! the floor for maintenance answers.

use async_trait::async_trait;
use bytes::Bytes;
use clap::Parser;
use pingora::http::ResponseHeader;
use pingora::prelude::{HttpPeer, Opt};
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::Result;
use std::net::SocketAddr;
use std::path::PathBuf;

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
}

/// The two fixed answers of the maintenance floor.
struct Answers {
    page: Bytes,
    api: Bytes,
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
        let (body, content_type) = if session.req_header().uri.path().starts_with("/api/") {
            (answers.api.clone(), "application/problem+json")
        } else {
            (answers.page.clone(), "text/html; charset=utf-8")
        };
        let mut header = ResponseHeader::build(503, Some(2))?;
        header.insert_header("content-type", content_type)?;
        header.insert_header("content-length", body.len().to_string())?;
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
    let floor = Floor {
        origin: cli.origin,
        answers,
    };
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, floor);
    proxy.add_tcp(&cli.listen.to_string());
    proxy.threads = Some(cli.threads);
    server.add_service(proxy);
    server.run_forever()
}

fn read(path: &PathBuf) -> anyhow::Result<Bytes> {
    std::fs::read(path)
        .map(Bytes::from)
        .map_err(|e| anyhow::anyhow!("cannot read the answer file {}: {e}", path.display()))
}
