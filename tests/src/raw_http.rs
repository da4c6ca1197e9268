//! One HTTP/1.1 connection driven by hand, for the cases that need to control exactly which
//! request goes on which connection and when (keep-alive across a maintenance answer or a
//! shutdown), which a pooling client hides.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one answer may take to arrive.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// One answer read off the connection.
#[derive(Debug)]
pub struct RawAnswer {
    pub status: u16,
    /// The header block, as sent.
    pub head: String,
    pub body: Vec<u8>,
}

impl RawAnswer {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_string())
        })
    }
}

/// A client connection that writes requests verbatim and reads answers framed by
/// Content-Length.
pub struct RawConnection {
    stream: TcpStream,
    /// Bytes read past the last answer.
    pending: Vec<u8>,
}

impl RawConnection {
    pub async fn connect(addr: SocketAddr) -> RawConnection {
        let stream = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        RawConnection {
            stream,
            pending: Vec::new(),
        }
    }

    /// Writes `request` as is (it must be a whole request, header block and body).
    pub async fn send(&mut self, request: &str) {
        self.stream
            .write_all(request.as_bytes())
            .await
            .expect("write the request to the proxy");
    }

    /// Reads the next whole answer. Panics, naming `what`, if the connection closes first or
    /// nothing arrives within 10 s.
    pub async fn read_answer(&mut self, what: &str) -> RawAnswer {
        let mut buf = [0u8; 4096];
        tokio::time::timeout(ANSWER_TIMEOUT, async {
            loop {
                if let Some(answer) = self.take_answer() {
                    return answer;
                }
                let n = self
                    .stream
                    .read(&mut buf)
                    .await
                    .unwrap_or_else(|e| panic!("{what}: reading the answer failed: {e}"));
                assert!(
                    n > 0,
                    "{what}: the proxy closed the connection before a whole answer; got so far:\n{}",
                    String::from_utf8_lossy(&self.pending)
                );
                self.pending.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{what}: no whole answer within {ANSWER_TIMEOUT:?}"))
    }

    /// True once the peer has closed the connection (reads return end of file) within 10 s.
    pub async fn closed_by_peer(&mut self) -> bool {
        let mut rest = Vec::new();
        matches!(
            tokio::time::timeout(ANSWER_TIMEOUT, self.stream.read_to_end(&mut rest)).await,
            Ok(Ok(_))
        ) && rest.is_empty()
    }

    /// Splits a complete answer off `pending`, if there is one.
    fn take_answer(&mut self) -> Option<RawAnswer> {
        let head_end = self.pending.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let head = String::from_utf8_lossy(&self.pending[..head_end]).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP status line: {head}"));
        let mut answer = RawAnswer {
            status,
            head,
            body: Vec::new(),
        };
        let length: usize = answer
            .header("content-length")
            .map(|v| v.parse().expect("a numeric Content-Length"))
            .unwrap_or_else(|| panic!("the answer has no Content-Length:\n{}", answer.head));
        if self.pending.len() < head_end + length {
            return None;
        }
        answer.body = self.pending[head_end..head_end + length].to_vec();
        self.pending.drain(..head_end + length);
        Some(answer)
    }
}
