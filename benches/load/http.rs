//! A minimal HTTP/1.1 client over `std::net`, for loopback only: [`request`] sends one request per
//! connection (`Connection: close`) and reads to the end, for readiness checks and Consul writes;
//! [`Probe`] keeps one connection per proxy open and asks all of them at once, for the switch
//! propagation figure.

use anyhow::{bail, Context};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One answer.
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Sends `method path` with `body` to `addr` and reads the whole answer, within `timeout` for
/// each of connect, write and read.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> anyhow::Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    stream
        .write_all(&out)
        .with_context(|| format!("cannot send {method} {path} to {addr}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("no complete answer to {method} {path} from {addr}"))?;
    parse(&raw).with_context(|| format!("bad answer to {method} {path} from {addr}"))
}

/// `GET path` with a 2 s timeout.
pub fn get(addr: SocketAddr, path: &str) -> anyhow::Result<Response> {
    request(addr, "GET", path, b"", Duration::from_secs(2))
}

/// Keep-alive connections to a set of proxies, asked in parallel: every pending proxy gets its
/// request before any answer is read, so one sweep takes about one round trip, not N.
pub struct Probe {
    conns: Vec<(SocketAddr, Option<TcpStream>)>,
    timeout: Duration,
}

impl Probe {
    pub fn new(addrs: &[SocketAddr], timeout: Duration) -> Probe {
        Probe {
            conns: addrs.iter().map(|&a| (a, None)).collect(),
            timeout,
        }
    }

    /// Asks `GET path` of the proxies whose index is in `which`; returns the status of each (in
    /// the same order), `None` where the connection failed (it is reopened on the next sweep).
    pub fn sweep(&mut self, which: &[usize], path: &str) -> Vec<Option<u16>> {
        let timeout = self.timeout;
        let mut sent = Vec::with_capacity(which.len());
        for &i in which {
            let (addr, conn) = &mut self.conns[i];
            let host = *addr;
            if conn.is_none() {
                *conn = TcpStream::connect_timeout(addr, timeout)
                    .ok()
                    .and_then(|s| {
                        s.set_read_timeout(Some(timeout)).ok()?;
                        s.set_write_timeout(Some(timeout)).ok()?;
                        s.set_nodelay(true).ok()?;
                        Some(s)
                    });
            }
            let ok = conn.as_mut().is_some_and(|s| {
                let head = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
                s.write_all(head.as_bytes()).is_ok()
            });
            if !ok {
                *conn = None;
            }
            sent.push(ok);
        }
        which
            .iter()
            .zip(sent)
            .map(|(&i, ok)| {
                if !ok {
                    return None;
                }
                let conn = &mut self.conns[i].1;
                let answer = conn.as_mut().and_then(|s| read_one(s).ok());
                match answer {
                    Some((status, keep)) => {
                        if !keep {
                            *conn = None;
                        }
                        Some(status)
                    }
                    None => {
                        *conn = None;
                        None
                    }
                }
            })
            .collect()
    }
}

/// Reads one answer from a keep-alive connection; its status and whether the connection stays
/// usable. Bodies are framed by `Content-Length` or chunked encoding.
fn read_one(stream: &mut TcpStream) -> anyhow::Result<(u16, bool)> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed before the header block ended");
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..end])?.to_ascii_lowercase();
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .context("no status line")?;
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            l.strip_prefix(name)
                .map(|v| v.trim_start_matches(':').trim().to_string())
        })
    };
    let keep = !header("connection").is_some_and(|v| v.contains("close"));
    let mut body = buf.split_off(end + 4);
    if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while body.len() < len {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                bail!("connection closed in the body");
            }
            body.extend_from_slice(&chunk[..n]);
        }
        Ok((status, keep))
    } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        while !body.ends_with(b"0\r\n\r\n") {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                bail!("connection closed in the body");
            }
            body.extend_from_slice(&chunk[..n]);
        }
        Ok((status, keep))
    } else {
        // Framed by the end of the connection.
        while stream.read(&mut chunk)? > 0 {}
        Ok((status, false))
    }
}

fn parse(raw: &[u8]) -> anyhow::Result<Response> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of the header block")?;
    let head = std::str::from_utf8(&raw[..end]).context("header block is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .context("no status line")?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let rest = &raw[end + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else {
        rest.to_vec()
    };
    Ok(Response { status, body })
}

fn dechunk(mut data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("truncated chunk size")?;
        let size_text = std::str::from_utf8(&data[..line_end])?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("bad chunk size {size_text:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if data.len() < size + 2 {
            bail!("truncated chunk");
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_answers() {
        let r = parse(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\n\r\nok").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (503, &b"ok"[..]));
        let r = parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n1\r\nd\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"abcd"[..]));
    }
}
