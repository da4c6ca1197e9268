//! Where the notice tests' notices land: a real SMTP server (Debian's python3-aiosmtpd, run by
//! `tests/smtp_recorder.py`) that requires STARTTLS and a password and records every message,
//! and a webhook server that records every request and can refuse the first ones.

use crate::http_thread::ServerThread;
use crate::ports::free_port;
use crate::process::{ChildGuard, TestDir};
use crate::tls_ca::TestCa;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The system interpreter, which Debian's python3-aiosmtpd is installed for.
const PYTHON: &str = "/usr/bin/python3";
const RECORDER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/smtp_recorder.py");

/// The user and password the SMTP server accepts.
pub const SMTP_USER: &str = "maintctl";
pub const SMTP_PASSWORD: &str = "notice-test-password";

/// One message the SMTP server accepted.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Mail {
    pub mail_from: String,
    pub rcpt_tos: Vec<String>,
    /// The whole message: header and body.
    pub data: String,
    /// It came over TLS (after STARTTLS).
    pub tls: bool,
    /// The user it authenticated as.
    pub user: Option<String>,
}

impl Mail {
    /// The value of header `name` (the first line of it).
    pub fn header(&self, name: &str) -> Option<String> {
        let prefix = format!("{}:", name.to_ascii_lowercase());
        self.data
            .lines()
            .take_while(|l| !l.is_empty())
            .find(|l| l.to_ascii_lowercase().starts_with(&prefix))
            .map(|l| l[prefix.len()..].trim().to_string())
    }
}

/// A running SMTP server on 127.0.0.1, with the CA its certificate (for `localhost`) chains to.
pub struct SmtpServer {
    _child: ChildGuard,
    pub port: u16,
    /// The CA (PEM) a client must trust.
    pub ca: PathBuf,
    out: PathBuf,
}

impl SmtpServer {
    /// Starts it in `dir` as `name`; with `refuse`, every recipient is refused with 550.
    ///
    /// # Panics
    /// When it does not accept connections within 10 s (the log tail says why).
    pub fn start(dir: &TestDir, name: &str, refuse: bool) -> SmtpServer {
        let folder = dir.join(name);
        std::fs::create_dir_all(&folder).expect("the SMTP server's folder");
        let ca = TestCa::named(&folder, &format!("{name}-ca"));
        let issued = ca.issue("smtp", &["localhost", "127.0.0.1"]);
        let out = folder.join("mail.jsonl");
        let port = free_port();
        let mut cmd = Command::new(PYTHON);
        cmd.arg("-B")
            .arg(RECORDER)
            .arg(port.to_string())
            .arg(&issued.cert)
            .arg(&issued.key)
            .args([SMTP_USER, SMTP_PASSWORD])
            .arg(&out);
        if refuse {
            cmd.arg("--refuse");
        }
        let child = ChildGuard::spawn(name, cmd, dir.path());
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{name} does not listen on {port} (Debian's python3-aiosmtpd is installed by \
                 scripts/setup.sh): {}",
                child.log_tail(20)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        SmtpServer {
            _child: child,
            port,
            ca: ca.cert.clone(),
            out,
        }
    }

    /// Every message accepted so far.
    pub fn mails(&self) -> Vec<Mail> {
        read_lines(&self.out)
    }
}

fn read_lines(path: &Path) -> Vec<Mail> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}: {l}", path.display())))
        .collect()
}

/// One request the webhook server got.
#[derive(Debug, Clone)]
pub struct Hook {
    pub path: String,
    pub authorization: Option<String>,
    pub body: String,
}

#[derive(Default)]
struct Hooks {
    got: Mutex<Vec<Hook>>,
    refuse_first: AtomicUsize,
}

/// A webhook server on 127.0.0.1 that records every request; the first `refuse_first` are
/// answered 503.
pub struct WebhookServer {
    addr: SocketAddr,
    hooks: Arc<Hooks>,
    _server: ServerThread,
}

impl WebhookServer {
    /// Starts it, refusing the first `refuse_first` requests.
    pub fn start(refuse_first: usize) -> WebhookServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        listener.set_nonblocking(true).expect("non-blocking");
        let addr = listener.local_addr().expect("its address");
        let hooks = Arc::new(Hooks {
            got: Mutex::new(Vec::new()),
            refuse_first: AtomicUsize::new(refuse_first),
        });
        let server = ServerThread::spawn("webhooks", listener, None, hooks.clone(), record)
            .expect("the webhook server starts");
        WebhookServer {
            addr,
            hooks,
            _server: server,
        }
    }

    /// The URL of `path` on it.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every request so far, refused ones included.
    pub fn hooks(&self) -> Vec<Hook> {
        self.hooks
            .got
            .lock()
            .expect("no panic under the lock")
            .clone()
    }
}

async fn record(
    hooks: Arc<Hooks>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    hooks
        .got
        .lock()
        .expect("no panic under the lock")
        .push(Hook {
            path: parts.uri.path().to_string(),
            authorization: parts
                .headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    let refuse = hooks
        .refuse_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let status = if refuse {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    Ok(Response::builder()
        .status(status)
        .body(Full::new(Bytes::from_static(b"{}")))
        .expect("a fixed answer"))
}
