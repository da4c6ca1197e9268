//! Chunked request bodies checked before their request is read: the connection's stream holds
//! an HTTP/1 request whose body is chunked back from the HTTP code until the body has ended in
//! valid chunk lines, so a chunk line two parsers could read two ways (a size that overflows, a
//! bare LF, a chunk not ended by CRLF) is found before the request head goes anywhere.
//!
//! [`Framing`] follows the requests of a connection as their bytes arrive: each head is held
//! until it is whole; a head without a body, or with a `Content-Length` one, is let through
//! with its body; a chunked request is held whole, head and body, until its last chunk and
//! trailers end. Only a request whose body comes at once is held: past [`HOLD_LIMIT`] bytes,
//! with a chunk too large to fit in them, or after the stream's hold time
//! ([`Framing::stop_holding`]), it goes on as it comes with its chunk lines left to the body
//! decoder, and the next request is held again. After a request that waits for `100 Continue`
//! or upgrades the connection, or one whose framing the strict rules refuse anyway, the rest of
//! the connection goes on as it comes. A chunk size past 2^53 - 1 (what some parsers cannot
//! count) is broken.

/// The most bytes of one request held back (head and chunked body).
pub const HOLD_LIMIT: u64 = 64 * 1024;

/// The largest chunk size taken: what a parser counting in doubles still reads exactly.
const MAX_CHUNK_SIZE: u64 = (1 << 53) - 1;

/// What is known of the bytes received so far, as offsets from the connection's first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The bytes before this offset may be read by the HTTP code.
    Release(u64),
    /// The chunked body of the request whose head ends at `head_end` is broken (`reason`): the
    /// head may be read, nothing after it.
    Broken { head_end: u64, reason: &'static str },
}

/// Where the bytes of a connection stand.
#[derive(Debug)]
enum State {
    /// Reading a request head (kept in [`Framing::head`]).
    Head,
    /// A `Content-Length` body with this many bytes to come.
    Body { left: u64 },
    /// A chunked body, at `at`: held until it ends, or (`streaming`) let through as it comes,
    /// its end still looked for so that the next request is held again.
    Chunked { at: Chunk, streaming: bool },
    /// Nothing is held any more on this connection.
    PassThrough,
    /// A broken chunked body was found (its head ends at [`Framing::head_end`]).
    Broken { reason: &'static str },
}

/// Where a chunked body stands.
#[derive(Debug, Clone, Copy)]
enum Chunk {
    /// The size line: its value so far, whether a digit was seen, whether the digits ended
    /// (an extension or white space), whether its CR came.
    Size {
        size: u64,
        digits: bool,
        after: bool,
        cr: bool,
    },
    /// Data with this many bytes to come.
    Data { left: u64 },
    /// The CRLF after the data; whether its CR came.
    DataEnd { cr: bool },
    /// A trailer line (or the last empty line): its length so far, whether its CR came.
    Trailer { len: u64, cr: bool },
}

const NEW_SIZE_LINE: Chunk = Chunk::Size {
    size: 0,
    digits: false,
    after: false,
    cr: false,
};

/// Follows the requests of one HTTP/1 connection ([module docs](self)).
#[derive(Debug)]
pub struct Framing {
    state: State,
    /// The head being read, its buffer kept from one request to the next.
    head: Vec<u8>,
    /// Bytes received so far.
    received: u64,
    /// Where the request now read started.
    request_start: u64,
    /// Where its head ended (for a chunked request).
    head_end: u64,
    /// What may be read.
    releasable: u64,
}

impl Default for Framing {
    fn default() -> Self {
        Framing {
            state: State::Head,
            head: Vec::new(),
            received: 0,
            request_start: 0,
            head_end: 0,
            releasable: 0,
        }
    }
}

impl Framing {
    /// Takes the next bytes of the connection; says what may be read.
    pub fn feed(&mut self, bytes: &[u8]) -> Verdict {
        let mut rest = bytes;
        while !rest.is_empty() {
            let used = self.step(rest);
            self.received += used as u64;
            rest = &rest[used..];
            if let State::Body { left: 0 } = self.state {
                self.next_request();
            }
        }
        self.verdict()
    }

    /// What may be read now.
    pub fn verdict(&self) -> Verdict {
        match self.state {
            State::Broken { reason } => Verdict::Broken {
                head_end: self.head_end,
                reason,
            },
            _ => Verdict::Release(self.releasable),
        }
    }

    /// Whether everything is let through from here on, as it comes.
    pub fn passes_through(&self) -> bool {
        matches!(self.state, State::PassThrough)
    }

    /// Whether a chunked request is held until its body ends.
    pub fn holding(&self) -> bool {
        matches!(
            self.state,
            State::Chunked {
                streaming: false,
                ..
            }
        )
    }

    /// Where the chunked request held until its body ends starts, if one is.
    pub fn held_request(&self) -> Option<u64> {
        self.holding().then_some(self.request_start)
    }

    /// Lets the held request through as it comes (its body takes too long to come whole); the
    /// next request is held again.
    pub fn stop_holding(&mut self) {
        if let State::Chunked { streaming, .. } = &mut self.state {
            *streaming = true;
            self.releasable = self.received;
        }
    }

    /// How many bytes may pass through without a look, when that is known: the rest of a
    /// `Content-Length` body.
    pub fn body_left(&self) -> Option<u64> {
        match self.state {
            State::Body { left } => Some(left),
            _ => None,
        }
    }

    fn next_request(&mut self) {
        self.request_start = self.received;
        self.releasable = self.received;
        self.state = State::Head;
    }

    fn pass_through(&mut self) {
        self.state = State::PassThrough;
    }

    /// Consumes a prefix of `bytes`; returns its length (at least 1).
    fn step(&mut self, bytes: &[u8]) -> usize {
        match &mut self.state {
            State::PassThrough => {
                self.releasable = self.received + bytes.len() as u64;
                bytes.len()
            }
            State::Broken { .. } => bytes.len(),
            State::Body { left } => {
                let used = (*left).min(bytes.len() as u64);
                *left -= used;
                self.releasable = self.received + used;
                used as usize
            }
            State::Head => {
                let used = match bytes.iter().position(|&b| b == b'\n') {
                    Some(at) => at + 1,
                    None => bytes.len(),
                };
                self.head.extend_from_slice(&bytes[..used]);
                if self.head.len() as u64 > HOLD_LIMIT {
                    // Far over any header limit: the parser refuses it; nothing to hold.
                    self.head.clear();
                    self.pass_through();
                    self.releasable = self.received + used as u64;
                    return used;
                }
                if self.head.ends_with(b"\n") && head_ended(&self.head) {
                    let framing = framing_of(&self.head);
                    self.head.clear();
                    self.head_done(framing, self.received + used as u64);
                }
                used
            }
            State::Chunked { at, streaming } => {
                let (at, streaming) = (*at, *streaming);
                let (used, next) = chunk_step(at, bytes);
                let end = self.received + used as u64;
                match next {
                    // Part of it went on already: the body decoder refuses it there.
                    Err(_) if streaming => {
                        self.pass_through();
                        self.releasable = end;
                    }
                    Err(reason) => self.state = State::Broken { reason },
                    Ok(None) => {
                        self.releasable = end;
                        self.request_start = end;
                        self.state = State::Head;
                    }
                    Ok(Some(at)) => {
                        let streaming =
                            streaming || end - self.request_start + chunk_bytes(at) > HOLD_LIMIT;
                        if streaming {
                            self.releasable = end;
                        }
                        self.state = State::Chunked { at, streaming };
                    }
                }
                used
            }
        }
    }

    /// A head ended at `end`, announcing `framing`: lets it through with its body, or holds it.
    fn head_done(&mut self, framing: BodyFraming, end: u64) {
        match framing {
            BodyFraming::NoBody => {
                self.releasable = end;
                self.request_start = end;
                self.state = State::Head;
            }
            BodyFraming::Length(left) => {
                self.releasable = end;
                self.state = State::Body { left };
            }
            BodyFraming::Chunked => {
                self.head_end = end;
                self.state = State::Chunked {
                    at: NEW_SIZE_LINE,
                    streaming: false,
                };
            }
            BodyFraming::Other => {
                self.releasable = end;
                self.pass_through();
            }
        }
    }
}

/// Whether `head` (ending in LF) is a whole head: its last line is empty, after at least one
/// line that is not (empty lines before the request line are skipped, as the parser does).
fn head_ended(head: &[u8]) -> bool {
    let without_last = &head[..head.len() - 1];
    let last_start = without_last
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |at| at + 1);
    let last = &without_last[last_start..];
    if !(last.is_empty() || last == b"\r") {
        return false;
    }
    head[..last_start]
        .split(|&b| b == b'\n')
        .any(|line| !line.is_empty() && line != b"\r")
}

/// How a request head says its body is framed.
#[derive(Debug, PartialEq, Eq)]
enum BodyFraming {
    NoBody,
    Length(u64),
    Chunked,
    /// Anything else (two framings, a coding, `100-continue`, an upgrade, CONNECT): not held.
    Other,
}

fn framing_of(head: &[u8]) -> BodyFraming {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .skip_while(|line| line.is_empty());
    let request_line = lines.next().unwrap_or_default();
    if request_line.starts_with(b"CONNECT ") {
        return BodyFraming::Other;
    }
    let mut length: Option<u64> = None;
    let mut chunked = false;
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = &line[..colon];
        let value = line[colon + 1..].trim_ascii();
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if chunked || !value.eq_ignore_ascii_case(b"chunked") {
                return BodyFraming::Other;
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let parsed = std::str::from_utf8(value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse().ok());
            match (length, parsed) {
                (None, Some(n)) => length = Some(n),
                _ => return BodyFraming::Other,
            }
        } else if name.eq_ignore_ascii_case(b"expect") || name.eq_ignore_ascii_case(b"upgrade") {
            return BodyFraming::Other;
        }
    }
    match (chunked, length) {
        (true, None) => BodyFraming::Chunked,
        (true, Some(_)) => BodyFraming::Other,
        (false, Some(0) | None) => BodyFraming::NoBody,
        (false, Some(n)) => BodyFraming::Length(n),
    }
}

/// The bytes a chunk position still announces: a chunk's data and its CRLF.
fn chunk_bytes(at: Chunk) -> u64 {
    match at {
        Chunk::Data { left } => left + 2,
        _ => 0,
    }
}

/// Consumes a prefix of `bytes` at chunk position `at`: its length and where the body then
/// stands (`None`: ended), or why it is broken.
fn chunk_step(at: Chunk, bytes: &[u8]) -> (usize, Result<Option<Chunk>, &'static str>) {
    match at {
        Chunk::Data { left } => {
            let used = left.min(bytes.len() as u64);
            let next = if used == left {
                Chunk::DataEnd { cr: false }
            } else {
                Chunk::Data { left: left - used }
            };
            (used as usize, Ok(Some(next)))
        }
        Chunk::DataEnd { cr } => {
            let next = match (cr, bytes[0]) {
                (false, b'\r') => Ok(Some(Chunk::DataEnd { cr: true })),
                (true, b'\n') => Ok(Some(NEW_SIZE_LINE)),
                (false, b'\n') => Err("chunk_data_bare_lf"),
                _ => Err("chunk_data_not_ended_by_crlf"),
            };
            (1, next)
        }
        Chunk::Size {
            size,
            digits,
            after,
            cr,
        } => {
            let byte = bytes[0];
            let next = match (cr, byte) {
                (true, b'\n') if !digits => Err("chunk_size_missing"),
                (true, b'\n') if size == 0 => Ok(Some(Chunk::Trailer { len: 0, cr: false })),
                (true, b'\n') => Ok(Some(Chunk::Data { left: size })),
                (true, _) => Err("chunk_line_bare_cr"),
                (false, b'\r') => Ok(Some(Chunk::Size {
                    size,
                    digits,
                    after,
                    cr: true,
                })),
                (false, b'\n') => Err("chunk_line_bare_lf"),
                (false, _) if after => Ok(Some(at)),
                (false, b';' | b' ' | b'\t') => Ok(Some(Chunk::Size {
                    size,
                    digits,
                    after: true,
                    cr: false,
                })),
                (false, digit) => match (digit as char).to_digit(16) {
                    None => Err("chunk_size_not_hex"),
                    Some(d) if (size << 4) | u64::from(d) > MAX_CHUNK_SIZE => {
                        Err("chunk_size_overflow")
                    }
                    Some(d) => Ok(Some(Chunk::Size {
                        size: (size << 4) | u64::from(d),
                        digits: true,
                        after: false,
                        cr: false,
                    })),
                },
            };
            (1, next)
        }
        Chunk::Trailer { len, cr } => {
            let next = match (cr, bytes[0]) {
                (true, b'\n') if len == 0 => Ok(None),
                (true, b'\n') => Ok(Some(Chunk::Trailer { len: 0, cr: false })),
                (true, _) => Err("trailer_bare_cr"),
                (false, b'\r') => Ok(Some(Chunk::Trailer { len, cr: true })),
                (false, b'\n') => Err("trailer_bare_lf"),
                (false, _) => Ok(Some(Chunk::Trailer {
                    len: len + 1,
                    cr: false,
                })),
            };
            (1, next)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The verdict after `bytes`, fed whole and fed a byte at a time (which must agree).
    fn fed(bytes: &[u8]) -> Verdict {
        let whole = Framing::default().feed(bytes);
        let mut framing = Framing::default();
        let mut verdict = framing.verdict();
        for b in bytes {
            verdict = framing.feed(&[*b]);
        }
        assert_eq!(
            whole, verdict,
            "whole and byte by byte disagree on {bytes:?}"
        );
        whole
    }

    fn release(bytes: &[u8]) -> u64 {
        match fed(bytes) {
            Verdict::Release(n) => n,
            broken => panic!("{broken:?} for {:?}", String::from_utf8_lossy(bytes)),
        }
    }

    const CHUNKED: &str = "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";

    #[test]
    fn a_head_is_held_until_whole_then_let_through_with_its_body() {
        let get = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(release(&get.as_bytes()[..get.len() - 1]), 0);
        assert_eq!(release(get.as_bytes()), get.len() as u64);
        // Empty lines before the request line do not end a head.
        assert_eq!(release(b"\r\n\r\n"), 0);
        let post = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhel";
        assert_eq!(release(post.as_bytes()), post.len() as u64);
        // Pipelined: the body ends, the next head is held again.
        let two = format!("{post}loGET /b HTTP/1.1\r\n");
        assert_eq!(release(two.as_bytes()), (post.len() + 2) as u64);
    }

    #[test]
    fn a_chunked_request_is_held_until_its_body_ends() {
        let body = "5;ext=1\r\nhello\r\n0\r\nTrailer: t\r\n\r\n";
        let whole = format!("{CHUNKED}{body}");
        assert_eq!(release(&whole.as_bytes()[..whole.len() - 1]), 0);
        assert_eq!(release(whole.as_bytes()), whole.len() as u64);
        let pipelined = format!("{whole}{CHUNKED}5\r\nhel");
        assert_eq!(release(pipelined.as_bytes()), whole.len() as u64);
        let upper =
            "POST / HTTP/1.1\r\nTRANSFER-ENCODING:  Chunked \r\n\r\nA\r\n0123456789\r\n0\r\n\r\n";
        assert_eq!(release(upper.as_bytes()), upper.len() as u64);
    }

    #[test]
    fn broken_chunk_lines_are_found_with_the_head_end() {
        let head_end = CHUNKED.len() as u64;
        for (body, why) in [
            ("fffffffffffffffff\r\n", "chunk_size_overflow"),
            ("5\nhello\r\n0\r\n\r\n", "chunk_line_bare_lf"),
            ("5\r\nhello\n0\r\n\r\n", "chunk_data_bare_lf"),
            ("5\r\nhelloX\r\n", "chunk_data_not_ended_by_crlf"),
            ("0\n\r\n", "chunk_line_bare_lf"),
            ("0\r\n\n", "trailer_bare_lf"),
            ("0\r\nA: b\n\r\n", "trailer_bare_lf"),
            ("g\r\n", "chunk_size_not_hex"),
            ("\r\n", "chunk_size_missing"),
            ("5\rx", "chunk_line_bare_cr"),
        ] {
            let bytes = format!("{CHUNKED}{body}GET /smuggled HTTP/1.1\r\n\r\n");
            assert_eq!(
                fed(bytes.as_bytes()),
                Verdict::Broken {
                    head_end,
                    reason: why
                },
                "{body:?}"
            );
        }
        for size in ["ffffffffffffffff", "20000000000000"] {
            assert_eq!(
                fed(format!("{CHUNKED}{size}\r\nabc").as_bytes()),
                Verdict::Broken {
                    head_end,
                    reason: "chunk_size_overflow"
                },
                "{size}"
            );
        }
    }

    #[test]
    fn what_is_not_held_passes_through() {
        for head in [
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n",
            "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
        ] {
            let mut framing = Framing::default();
            let bytes = format!("{head}anything\r\n at all");
            assert_eq!(
                framing.feed(bytes.as_bytes()),
                Verdict::Release(bytes.len() as u64),
                "{head:?}"
            );
            assert!(framing.passes_through());
        }
        // A chunk larger than the hold limit: let through as soon as its size is known, and
        // the next request is held again.
        let mut framing = Framing::default();
        let big = format!("{CHUNKED}{:x}\r\nabc", HOLD_LIMIT);
        assert_eq!(
            framing.feed(big.as_bytes()),
            Verdict::Release(big.len() as u64)
        );
        assert!(!framing.holding());
        let rest = format!("{}\r\n0\r\n\r\n", "a".repeat(HOLD_LIMIT as usize - 3));
        let Verdict::Release(end) = framing.feed(rest.as_bytes()) else {
            panic!("broken");
        };
        assert_eq!(framing.feed(CHUNKED.as_bytes()), Verdict::Release(end));
        assert!(framing.holding());
        // Held too long: let through, and a broken line found after is the decoder's.
        let mut framing = Framing::default();
        let slow = format!("{CHUNKED}5\r\nhel");
        assert_eq!(framing.feed(slow.as_bytes()), Verdict::Release(0));
        assert!(framing.holding());
        framing.stop_holding();
        assert_eq!(framing.verdict(), Verdict::Release(slow.len() as u64));
        assert_eq!(
            framing.feed(b"lo\n"),
            Verdict::Release(slow.len() as u64 + 3)
        );
        assert!(framing.passes_through());
        // Small chunks past the hold limit: what came is let through as it comes.
        let mut framing = Framing::default();
        framing.feed(CHUNKED.as_bytes());
        let chunk = format!("400\r\n{}\r\n", "a".repeat(0x400));
        let mut verdict = framing.verdict();
        while framing.holding() {
            assert_eq!(verdict, Verdict::Release(0));
            verdict = framing.feed(chunk.as_bytes());
        }
        assert_eq!(verdict, Verdict::Release(framing.received));
        assert!(framing.received <= HOLD_LIMIT + chunk.len() as u64);
    }
}
