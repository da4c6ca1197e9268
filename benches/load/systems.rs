//! The systems under test and their surroundings: the origin (nginx), the Consul dev agent,
//! HAProxy, nginx, the bare Pingora floor and Drawbridge, each with its config written here, on
//! loopback ports checked free, pinned to a CPU when pinning is on; and the one certificate their
//! TLS listeners share.

use crate::http;
use crate::procs::Proc;
use anyhow::{bail, Context};
use serde::Serialize;
use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The origin's answer: exactly 1 KiB.
pub const ORIGIN_BODY_LEN: usize = 1024;

/// How long any process may take to answer after it was started.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The programs the bench runs.
#[derive(Debug, Clone, Serialize)]
pub struct Tools {
    pub drawbridge: PathBuf,
    pub floor: PathBuf,
    pub consul: PathBuf,
    pub oha: PathBuf,
    pub wrk: PathBuf,
    pub haproxy: PathBuf,
    pub nginx: PathBuf,
    pub taskset: PathBuf,
    pub openssl: PathBuf,
}

/// Where a process runs: the load side (generator, origin, Consul) or the proxy under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cpu {
    Load,
    Proxy,
    /// Not pinned (fleets of many proxies, where the scheduler spreads them).
    Any,
}

/// Tools, the work folder and the pinning choice.
pub struct Env {
    pub tools: Tools,
    pub work: PathBuf,
    pub logs: PathBuf,
    /// CPUs for (load side, proxy under test); `None` runs everything unpinned.
    pub pin: Option<(usize, usize)>,
}

impl Env {
    /// `program` prefixed with `taskset -c <cpu>` when pinned.
    pub fn command(&self, program: &Path, cpu: Cpu) -> Command {
        let core = match (self.pin, cpu) {
            (Some((load, _)), Cpu::Load) => Some(load),
            (Some((_, proxy)), Cpu::Proxy) => Some(proxy),
            _ => None,
        };
        match core {
            Some(core) => {
                let mut cmd = Command::new(&self.tools.taskset);
                cmd.arg("-c").arg(core.to_string()).arg(program);
                cmd
            }
            None => Command::new(program),
        }
    }

    /// A fresh folder for one instance, `<work>/<name>-<n>`.
    fn instance_dir(&self, name: &str) -> anyhow::Result<PathBuf> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = self
            .work
            .join(format!("{name}-{}", NEXT.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(dir)
    }
}

/// A free loopback port (TCP and UDP), never handed out twice in this run, drawn below the
/// kernel's ephemeral range so that no outgoing connection takes it before its server binds.
pub fn free_port() -> anyhow::Result<u16> {
    static ISSUED: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let high = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .filter(|&low| low > 22_000)
        .unwrap_or(32_768);
    let mut issued = ISSUED.lock().unwrap_or_else(|e| e.into_inner());
    let issued = issued.get_or_insert_with(HashSet::new);
    // A cheap deterministic spread; the bind check is what matters.
    let seed = u64::from(std::process::id()) * 7919 + issued.len() as u64 * 104_729;
    for i in 0..5_000u64 {
        let port = 20_000 + ((seed + i * 7_151) % u64::from(high - 20_000)) as u16;
        if issued.contains(&port) {
            continue;
        }
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        if TcpListener::bind(addr).is_ok() && UdpSocket::bind(addr).is_ok() {
            issued.insert(port);
            return Ok(port);
        }
    }
    bail!("no free loopback port between 20000 and {high}")
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Waits until `GET path` on `addr` answers `status`, failing with the process's log.
pub fn wait_answer(
    proc: &mut Proc,
    addr: SocketAddr,
    path: &str,
    status: u16,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut last = String::from("no answer yet");
    while start.elapsed() < READY_TIMEOUT {
        if proc.has_exited() {
            bail!("{} exited at start\n{}", proc.name(), proc.log_tail(30));
        }
        match http::get(addr, path) {
            Ok(r) if r.status == status => return Ok(()),
            Ok(r) => last = format!("answered {}", r.status),
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!(
        "{} did not answer {status} on http://{addr}{path} within {READY_TIMEOUT:?} ({last})\n{}",
        proc.name(),
        proc.log_tail(30)
    )
}

/// The systems compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum System {
    /// The load generator straight to the origin: the ceiling of the load side.
    Direct,
    Haproxy,
    Nginx,
    /// The maintenance answers written on Pingora's HTTP session alone (figure 3 only).
    PingoraSession,
    /// The bare Pingora pass-through.
    PingoraFloor,
    Drawbridge,
}

impl System {
    pub fn label(self) -> &'static str {
        match self {
            System::Direct => "direct",
            System::Haproxy => "haproxy",
            System::Nginx => "nginx",
            System::PingoraSession => "pingora-session",
            System::PingoraFloor => "pingora-floor",
            System::Drawbridge => "drawbridge",
        }
    }
}

/// One running system: where it listens and its process (none for `direct`).
pub struct Instance {
    pub system: System,
    pub addr: SocketAddr,
    /// Its TLS listener, when it was started with one.
    pub tls: Option<SocketAddr>,
    pub proc: Option<Proc>,
    /// The config file it was started with (for the setup notes).
    pub config: Option<PathBuf>,
}

impl Instance {
    /// Waits until the process just started on `port` answers `/` with `status`, then hands it
    /// out as a running `system`.
    fn ready(
        system: System,
        mut proc: Proc,
        port: u16,
        status: u16,
        config: Option<PathBuf>,
    ) -> anyhow::Result<Instance> {
        let addr = loopback(port);
        wait_answer(&mut proc, addr, "/", status)?;
        Ok(Instance {
            system,
            addr,
            tls: None,
            proc: Some(proc),
            config,
        })
    }

    /// The same, with the TLS listener on `tls_port` (which opens with the plain one).
    fn with_tls(mut self, tls_port: Option<u16>) -> Instance {
        self.tls = tls_port.map(loopback);
        self
    }

    /// The PID whose process tree is measured.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }
}

/// The maintenance answers as Drawbridge serves them, replayed byte for byte by the others.
pub struct Answers {
    pub page: PathBuf,
    pub api: PathBuf,
}

/// The certificate every TLS listener serves: ECDSA P-256, self-signed, for `localhost` and
/// 127.0.0.1, made with `openssl` at the start of the TLS figure.
pub struct Certificate {
    /// The certificate, PEM; also the CA file the clients check it with.
    pub chain: PathBuf,
    /// Its key, PEM (PKCS#8).
    pub key: PathBuf,
    /// Both in one file, as HAProxy's `crt` takes them.
    pub combined: PathBuf,
}

impl Certificate {
    /// Makes the key and the certificate (valid 30 days) in a fresh folder of the run.
    pub fn make(env: &Env) -> anyhow::Result<Certificate> {
        let dir = env.instance_dir("certificate")?;
        let chain = dir.join("localhost.pem");
        let key = dir.join("localhost.key");
        let out = Command::new(&env.tools.openssl)
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "30"])
            .args(["-subj", "/CN=localhost"])
            .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
            // Not a CA: clients that trust it as it is (webpki) refuse a CA as a server's.
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&chain)
            .output()
            .with_context(|| format!("cannot run {}", env.tools.openssl.display()))?;
        if !out.status.success() {
            bail!(
                "openssl could not make the bench's certificate: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let read = |path: &Path| {
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
        };
        let combined = dir.join("localhost-with-key.pem");
        write(&combined, &(read(&chain)? + &read(&key)?))?;
        Ok(Certificate {
            chain,
            key,
            combined,
        })
    }
}

/// The status a proxy answers `/` with once it is up: 503 when it serves the maintenance answers.
fn first_status(answers: Option<&Answers>) -> u16 {
    if answers.is_some() {
        503
    } else {
        200
    }
}

/// The origin: nginx, one process, answering every path with the same 1 KiB.
pub fn start_origin(env: &Env) -> anyhow::Result<Instance> {
    let dir = env.instance_dir("origin")?;
    let port = free_port()?;
    let body: String = "drawbridge bench origin, 1 KiB of text. "
        .chars()
        .cycle()
        .take(ORIGIN_BODY_LEN)
        .collect();
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {dir}/nginx.pid;\n\
         error_log {dir}/error.log warn;\nevents {{ worker_connections 8192; }}\n\
         http {{\n{common}\n  server {{\n    listen 127.0.0.1:{port} backlog=4096;\n\
         \x20   location / {{ default_type text/plain; return 200 '{body}'; }}\n  }}\n}}\n",
        dir = dir.display(),
        common = nginx_http_common(&dir),
    );
    let (config, proc) = spawn_nginx(env, &dir, &conf, Cpu::Load, "origin")?;
    Instance::ready(System::Direct, proc, port, 200, Some(config))
}

/// Writes `conf` as `dir/nginx.conf` and starts nginx on it, pinned to `cpu`.
fn spawn_nginx(
    env: &Env,
    dir: &Path,
    conf: &str,
    cpu: Cpu,
    name: &str,
) -> anyhow::Result<(PathBuf, Proc)> {
    let config = dir.join("nginx.conf");
    write(&config, conf)?;
    let mut cmd = env.command(&env.tools.nginx, cpu);
    cmd.arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&config)
        .arg("-e")
        .arg(dir.join("error.log"));
    let proc = Proc::spawn(name, cmd, &env.logs)?;
    Ok((config, proc))
}

/// nginx `http` settings every instance shares: no logs, temp files in `dir`, long keep-alive.
fn nginx_http_common(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "  access_log off;\n  keepalive_timeout 60s;\n  keepalive_requests 1000000;\n\
         \x20 client_body_temp_path {d}/tmp-body;\n  proxy_temp_path {d}/tmp-proxy;\n\
         \x20 fastcgi_temp_path {d}/tmp-fastcgi;\n  uwsgi_temp_path {d}/tmp-uwsgi;\n\
         \x20 scgi_temp_path {d}/tmp-scgi;"
    )
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// The headers every maintenance answer carries (as Drawbridge sends them, with fixed values).
const MAINT_HEADERS: [(&str, &str); 4] = [
    ("Retry-After", "300"),
    ("Cache-Control", "no-store"),
    ("Vary", "Accept"),
    ("X-Drawbridge-Outage", "planned"),
];

/// HAProxy in one process (`-db`) with `nbthread = threads`, proxying to the origin with
/// server-side keep-alive shared across clients (`http-reuse always`), or, with `answers`,
/// answering every request itself with `http-request return`; with `tls`, also on a TLS
/// listener serving that certificate.
pub fn start_haproxy(
    env: &Env,
    threads: usize,
    origin: SocketAddr,
    answers: Option<&Answers>,
    tls: Option<&Certificate>,
) -> anyhow::Result<Instance> {
    let dir = env.instance_dir("haproxy")?;
    let port = free_port()?;
    let tls_port = tls.map(|_| free_port()).transpose()?;
    let config = dir.join("haproxy.cfg");
    write(
        &config,
        &haproxy_config(threads, port, tls_port.zip(tls), origin, answers, None),
    )?;
    let mut cmd = env.command(&env.tools.haproxy, Cpu::Proxy);
    cmd.arg("-db").arg("-f").arg(&config);
    let proc = Proc::spawn(&format!("haproxy-t{threads}"), cmd, &env.logs)?;
    Ok(Instance::ready(
        System::Haproxy,
        proc,
        port,
        first_status(answers),
        Some(config),
    )?
    .with_tls(tls_port))
}

/// The HAProxy configuration; `stats_socket` adds the master-worker socket that hands the
/// listeners to the next process on a reload (`expose-fd listeners`); `tls` adds a TLS listener
/// (port and certificate) offering TLS 1.2 and 1.3 and, by ALPN, HTTP/2 then HTTP/1.1.
pub fn haproxy_config(
    threads: usize,
    port: u16,
    tls: Option<(u16, &Certificate)>,
    origin: SocketAddr,
    answers: Option<&Answers>,
    stats_socket: Option<&Path>,
) -> String {
    let mut c = format!("global\n    nbthread {threads}\n    maxconn 8000\n");
    if let Some(sock) = stats_socket {
        c += &format!(
            "    stats socket {} mode 600 level admin expose-fd listeners\n",
            sock.display()
        );
    }
    c += "\ndefaults\n    mode http\n    option http-keep-alive\n    option forwardfor\n\
          \x20   timeout connect 2s\n    timeout client 60s\n    timeout server 60s\n\
          \x20   timeout http-keep-alive 60s\n\n";
    c += &format!("frontend edge\n    bind 127.0.0.1:{port}\n");
    if let Some((tls_port, cert)) = tls {
        c += &format!(
            "    bind 127.0.0.1:{tls_port} ssl crt {} alpn h2,http/1.1 ssl-min-ver TLSv1.2\n",
            cert.combined.display()
        );
    }
    if let Some(a) = answers {
        let hdrs: String = MAINT_HEADERS
            .iter()
            .map(|(k, v)| format!(" hdr {k} {v}"))
            .collect();
        c += &format!(
            "    http-request return status 503 content-type \"application/problem+json\" file {}{hdrs} if {{ path_beg /api/ }}\n",
            a.api.display()
        );
        c += &format!(
            "    http-request return status 503 content-type \"text/html; charset=utf-8\" file {}{hdrs} hdr Refresh 300\n",
            a.page.display()
        );
    }
    c += &format!(
        "    default_backend origin\n\nbackend origin\n    http-reuse always\n    server origin {origin}\n"
    );
    c
}

/// nginx with `worker_processes = threads`, proxying with an upstream keep-alive pool, or, with
/// `answers`, answering every request itself with `return 503`; with `tls`, also on a TLS
/// listener serving that certificate (TLS 1.2 and 1.3; HTTP/2 then HTTP/1.1 by ALPN, written
/// `listen … ssl http2` as nginx 1.22 takes it).
pub fn start_nginx(
    env: &Env,
    threads: usize,
    origin: SocketAddr,
    answers: Option<&Answers>,
    tls: Option<&Certificate>,
) -> anyhow::Result<Instance> {
    let dir = env.instance_dir("nginx")?;
    let port = free_port()?;
    let tls_port = tls.map(|_| free_port()).transpose()?;
    let tls_listen = match tls_port.zip(tls) {
        Some((tls_port, cert)) => format!(
            "    listen 127.0.0.1:{tls_port} ssl http2 backlog=4096;\n\
             \x20   ssl_certificate {};\n    ssl_certificate_key {};\n\
             \x20   ssl_protocols TLSv1.2 TLSv1.3;\n",
            cert.chain.display(),
            cert.key.display()
        ),
        None => String::new(),
    };
    let locations = match answers {
        None => {
            "    location / {\n      proxy_pass http://origin;\n      proxy_http_version 1.1;\n\
                 \x20     proxy_set_header Connection \"\";\n      proxy_set_header Host $host;\n\
                 \x20     proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n    }\n"
                .to_string()
        }
        Some(a) => {
            let hdrs: String = MAINT_HEADERS
                .iter()
                .map(|(k, v)| format!("      add_header {k} {v} always;\n"))
                .collect();
            format!(
                "    location /api/ {{\n      default_type application/problem+json;\n{hdrs}\
                 \x20     return 503 '{}';\n    }}\n    location / {{\n\
                 \x20     default_type \"text/html; charset=utf-8\";\n{hdrs}\
                 \x20     add_header Refresh 300 always;\n      return 503 '{}';\n    }}\n",
                nginx_string(&a.api)?,
                nginx_string(&a.page)?
            )
        }
    };
    let conf = format!(
        "daemon off;\nmaster_process on;\nworker_processes {threads};\npid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\nevents {{ worker_connections 8192; }}\n\
         http {{\n{common}\n  upstream origin {{\n    server {origin};\n    keepalive 128;\n\
         \x20   keepalive_requests 1000000;\n  }}\n  server {{\n    listen 127.0.0.1:{port} backlog=4096;\n\
         {tls_listen}{locations}  }}\n}}\n",
        d = dir.display(),
        common = nginx_http_common(&dir),
    );
    let (config, proc) = spawn_nginx(env, &dir, &conf, Cpu::Proxy, &format!("nginx-t{threads}"))?;
    Ok(Instance::ready(
        System::Nginx,
        proc,
        port,
        first_status(answers),
        Some(config),
    )?
    .with_tls(tls_port))
}

/// A file's content as a single-quoted nginx string.
fn nginx_string(path: &Path) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    if text.contains('$') {
        bail!(
            "{} contains '$', which nginx would read as a variable in `return`; \
             the nginx maintenance config cannot replay it",
            path.display()
        );
    }
    Ok(text.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The bare Pingora pass-through (or, with `answers`, the fixed 503); with `tls`, also on a TLS
/// listener with Pingora's own rustls settings (TLS 1.2 and 1.3, HTTP/2 then HTTP/1.1).
pub fn start_floor(
    env: &Env,
    threads: usize,
    origin: SocketAddr,
    answers: Option<&Answers>,
    tls: Option<&Certificate>,
) -> anyhow::Result<Instance> {
    spawn_floor(env, System::PingoraFloor, threads, origin, answers, tls)
}

/// The fixed 503 written on Pingora's HTTP session alone, without the proxy framework.
pub fn start_session_floor(
    env: &Env,
    threads: usize,
    origin: SocketAddr,
    answers: &Answers,
) -> anyhow::Result<Instance> {
    spawn_floor(
        env,
        System::PingoraSession,
        threads,
        origin,
        Some(answers),
        None,
    )
}

/// Starts `bare-pingora` as `system`, one of the two floors.
fn spawn_floor(
    env: &Env,
    system: System,
    threads: usize,
    origin: SocketAddr,
    answers: Option<&Answers>,
    tls: Option<&Certificate>,
) -> anyhow::Result<Instance> {
    let dir = env.instance_dir(system.label())?;
    let port = free_port()?;
    let tls_port = tls.map(|_| free_port()).transpose()?;
    let mut cmd = env.command(&env.tools.floor, Cpu::Proxy);
    cmd.arg("--listen")
        .arg(loopback(port).to_string())
        .arg("--origin")
        .arg(origin.to_string())
        .arg("--threads")
        .arg(threads.to_string())
        .arg("--run-dir")
        .arg(&dir);
    if let Some(a) = answers {
        cmd.arg("--answer-page")
            .arg(&a.page)
            .arg("--answer-api")
            .arg(&a.api);
    }
    if system == System::PingoraSession {
        cmd.arg("--session-only");
    }
    if let Some((tls_port, cert)) = tls_port.zip(tls) {
        cmd.arg("--tls-listen")
            .arg(loopback(tls_port).to_string())
            .arg("--cert")
            .arg(&cert.chain)
            .arg("--key")
            .arg(&cert.key);
    }
    let proc = Proc::spawn(&format!("{}-t{threads}", system.label()), cmd, &env.logs)?;
    Ok(Instance::ready(system, proc, port, first_status(answers), None)?.with_tls(tls_port))
}

/// The Consul dev agent (in memory), all ports on loopback, DNS and gRPC off.
pub struct Consul {
    pub addr: SocketAddr,
    /// Owned so the agent is stopped with the bench.
    _proc: Proc,
}

impl Consul {
    pub fn start(env: &Env) -> anyhow::Result<Consul> {
        let dir = env.instance_dir("consul")?;
        let http = free_port()?;
        let mut cmd = env.command(&env.tools.consul, Cpu::Load);
        cmd.arg("agent")
            .arg("-dev")
            .args(["-bind", "127.0.0.1", "-client", "127.0.0.1"])
            .arg(format!("-http-port={http}"))
            .arg("-dns-port=-1")
            .arg("-grpc-port=-1")
            .arg(format!("-serf-lan-port={}", free_port()?))
            .arg(format!("-serf-wan-port={}", free_port()?))
            .arg(format!("-server-port={}", free_port()?))
            .arg(format!("-data-dir={}", dir.display()))
            .arg("-log-level=warn")
            .env_remove("CONSUL_HTTP_ADDR")
            .env_remove("CONSUL_HTTP_TOKEN")
            .env_remove("CONSUL_HTTP_TOKEN_FILE");
        let mut proc = Proc::spawn("consul", cmd, &env.logs)?;
        let addr = loopback(http);
        let start = Instant::now();
        loop {
            if proc.has_exited() {
                bail!("consul exited at start\n{}", proc.log_tail(30));
            }
            if let Ok(r) = http::get(addr, "/v1/status/leader") {
                if r.status == 200 && r.body.len() > 2 {
                    break;
                }
            }
            if start.elapsed() > READY_TIMEOUT {
                bail!(
                    "consul elected no leader within {READY_TIMEOUT:?}\n{}",
                    proc.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Consul { addr, _proc: proc })
    }

    /// Writes `value` at `key`; returns when Consul has answered (the write is committed).
    pub fn put(&self, key: &str, value: &str) -> anyhow::Result<()> {
        let r = http::request(
            self.addr,
            "PUT",
            &format!("/v1/kv/{key}"),
            value.as_bytes(),
            Duration::from_secs(5),
        )?;
        if r.status != 200 {
            bail!(
                "Consul refused the write of {key}: {} {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            );
        }
        Ok(())
    }
}

/// The gate document that closes the gate.
pub const MAINTENANCE: &str = r#"{"mode":"maintenance","reason":"bench"}"#;
/// The gate document that opens it.
pub const NORMAL: &str = r#"{"mode":"normal"}"#;

/// A Drawbridge instance's settings.
pub struct DrawbridgeSpec<'a> {
    pub name: &'a str,
    pub threads: usize,
    pub origin: SocketAddr,
    pub consul: &'a Consul,
    pub key: &'a str,
    pub cpu: Cpu,
    /// A TLS listener too, serving this certificate.
    pub tls: Option<&'a Certificate>,
}

/// A Drawbridge process with the config it can be restarted (or upgraded) with.
pub struct Drawbridge {
    pub instance: Instance,
    pub admin: SocketAddr,
    pub config: PathBuf,
    pub dir: PathBuf,
    cpu: Cpu,
}

impl Drawbridge {
    /// Writes the config (access log off, no Consul registration, one static pool with no
    /// health check, a page route and an api route, and a TLS listener when the spec has a
    /// certificate) and starts the proxy; returns once it proxies.
    pub fn start(env: &Env, spec: &DrawbridgeSpec) -> anyhow::Result<Drawbridge> {
        let dir = env.instance_dir(spec.name)?;
        let port = free_port()?;
        let admin = loopback(free_port()?);
        let tls_port = spec.tls.map(|_| free_port()).transpose()?;
        let (tls_listen, tls_section) = match tls_port.zip(spec.tls) {
            Some((tls_port, cert)) => (
                format!("tls_listen = [\"127.0.0.1:{tls_port}\"]\n"),
                format!(
                    "\n[tls]\nhttp2 = true\n\n[[tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"\n",
                    cert.chain.display(),
                    cert.key.display()
                ),
            ),
            None => (String::new(), String::new()),
        };
        let d = dir.display();
        let toml = format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\n{tls_listen}threads = {threads}\n\
             pid_file = \"{d}/drawbridge.pid\"\nupgrade_sock = \"{d}/upgrade.sock\"\n\
             state_file = \"{d}/gate-state.json\"\ngrace_period = \"1s\"\nshutdown_timeout = \"1s\"\n\
             access_log = \"off\"\n\n[admin]\nlisten = \"{admin}\"\n\n\
             [consul]\naddress = \"http://{consul}\"\nkey = \"{key}\"\nregister = false\n\n\
             [pools.origin]\nservers = [\"{origin}\"]\nhealth_check = {{ type = \"none\" }}\n\n\
             [[routes]]\nname = \"api\"\npath_prefix = \"/api/\"\nkind = \"api\"\npool = \"origin\"\n\n\
             [[routes]]\nname = \"page\"\npath_prefix = \"/\"\nkind = \"page\"\npool = \"origin\"\n\
             {tls_section}",
            threads = spec.threads,
            consul = spec.consul.addr,
            key = spec.key,
            origin = spec.origin,
        );
        let config = dir.join("drawbridge.toml");
        write(&config, &toml)?;
        let check = Command::new(&env.tools.drawbridge)
            .arg("--config")
            .arg(&config)
            .arg("--check")
            .output()
            .with_context(|| format!("cannot run {}", env.tools.drawbridge.display()))?;
        if !check.status.success() {
            bail!(
                "drawbridge refuses the bench's config {}: {}{}",
                config.display(),
                String::from_utf8_lossy(&check.stdout),
                String::from_utf8_lossy(&check.stderr)
            );
        }
        let mut db = Drawbridge {
            instance: Instance {
                system: System::Drawbridge,
                addr: loopback(port),
                tls: tls_port.map(loopback),
                proc: None,
                config: Some(config.clone()),
            },
            admin,
            config,
            dir,
            cpu: spec.cpu,
        };
        let proc = db.spawn(env, spec.name, false)?;
        db.instance.proc = Some(proc);
        Ok(db)
    }

    /// Starts a process on this config; with `upgrade`, one that takes the listeners over.
    pub fn spawn(&self, env: &Env, name: &str, upgrade: bool) -> anyhow::Result<Proc> {
        let mut cmd = env.command(&env.tools.drawbridge, self.cpu);
        cmd.arg("--config")
            .arg(&self.config)
            .env("DRAWBRIDGE_LOG", "warn");
        if upgrade {
            cmd.arg("--upgrade");
        }
        let mut proc = Proc::spawn(name, cmd, &env.logs)?;
        if !upgrade {
            wait_answer(&mut proc, self.admin, "/healthz", 200)?;
        }
        Ok(proc)
    }

    /// The process currently serving.
    pub fn proc_mut(&mut self) -> anyhow::Result<&mut Proc> {
        self.instance
            .proc
            .as_mut()
            .context("this drawbridge has no process")
    }
}

/// The incumbent: HAProxy in master-worker mode, reloaded by a `consul watch` handler that
/// installs the normal or the maintenance config, the way a fleet is switched without
/// Drawbridge.
pub struct Incumbent {
    pub addr: SocketAddr,
    /// Its configs (`normal.cfg`, `maintenance.cfg`) and the watch handler (`handler.sh`).
    pub dir: PathBuf,
    haproxy: Proc,
    watch: Option<Proc>,
}

impl Incumbent {
    pub fn start(
        env: &Env,
        name: &str,
        origin: SocketAddr,
        consul: &Consul,
        key: &str,
        answers: &Answers,
        cpu: Cpu,
    ) -> anyhow::Result<Incumbent> {
        let dir = env.instance_dir(name)?;
        let port = free_port()?;
        let sock = dir.join("master.sock");
        let normal = dir.join("normal.cfg");
        let maintenance = dir.join("maintenance.cfg");
        let live = dir.join("haproxy.cfg");
        write(
            &normal,
            &haproxy_config(1, port, None, origin, None, Some(&sock)),
        )?;
        write(
            &maintenance,
            &haproxy_config(1, port, None, origin, Some(answers), Some(&sock)),
        )?;
        std::fs::copy(&normal, &live).context("cannot install the HAProxy config")?;
        let pid_file = dir.join("haproxy.pid");
        let mut cmd = env.command(&env.tools.haproxy, cpu);
        cmd.arg("-W")
            .arg("-db")
            .arg("-f")
            .arg(&live)
            .arg("-p")
            .arg(&pid_file);
        let mut haproxy = Proc::spawn(name, cmd, &env.logs)?;
        let addr = loopback(port);
        wait_answer(&mut haproxy, addr, "/", 200)?;
        let handler = dir.join("handler.sh");
        write(
            &handler,
            &format!(
                "#!/bin/sh\n# consul watch handler: the key's JSON entry on stdin; install the\n\
                 # matching config and reload HAProxy (SIGUSR2 to the master).\n\
                 value=$(sed -n 's/.*\"Value\":\"\\([^\"]*\\)\".*/\\1/p' | base64 -d 2>/dev/null)\n\
                 case \"$value\" in\n  *'\"maintenance\"'*) cp {m} {live}.new ;;\n  *) cp {n} {live}.new ;;\nesac\n\
                 mv {live}.new {live}\nkill -USR2 {pid}\n",
                m = maintenance.display(),
                n = normal.display(),
                live = live.display(),
                pid = haproxy.pid(),
            ),
        )?;
        let mut perms = std::fs::metadata(&handler)?.permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&handler, perms)?;
        let mut cmd = env.command(&env.tools.consul, Cpu::Load);
        cmd.arg("watch")
            .arg(format!("-http-addr={}", consul.addr))
            .args(["-type", "key", "-key", key])
            .arg(&handler)
            .env_remove("CONSUL_HTTP_ADDR")
            .env_remove("CONSUL_HTTP_TOKEN");
        let watch = Proc::spawn(&format!("{name}-watch"), cmd, &env.logs)?;
        Ok(Incumbent {
            addr,
            dir,
            haproxy,
            watch: Some(watch),
        })
    }

    /// Whether HAProxy and its watch still run.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if self.haproxy.has_exited() {
            bail!("HAProxy (incumbent) exited\n{}", self.haproxy.log_tail(30));
        }
        if let Some(w) = self.watch.as_mut() {
            if w.has_exited() {
                bail!("consul watch exited\n{}", w.log_tail(30));
            }
        }
        Ok(())
    }
}

impl Drop for Incumbent {
    fn drop(&mut self) {
        // The watch first, so no handler reloads a HAProxy being stopped.
        self.watch.take();
        self.haproxy.stop();
    }
}
