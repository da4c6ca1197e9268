//! Strict HTTP/1 at the edge: a request that two HTTP/1 parsers could read two ways (request
//! smuggling) is refused with 400 before anything is done with it ([`ambiguity`]). The HTTP/1
//! parser refuses much of this itself; what it lets through, and what its header map no longer
//! shows (it drops `Content-Length` beside `Transfer-Encoding`), is read from the header block
//! as received.
//!
//! Chunk lines are not checked here but by the connection's stream, before the request is read
//! (`framing`): the HTTP code shows no body bytes before the head has gone upstream.

use super::Refusal;
use pingora::http::RequestHeader;
use pingora::protocols::http::authority::{raw_target_authority, RawTargetAuthority};
use pingora::protocols::http::ServerSession;

/// Why the HTTP/1 request `req`, parsed from the header block `raw` (from the request line to
/// the empty line that ends it, as received), could be read two ways; `None` when it cannot.
/// The reason names the rule:
///
/// * `bare_lf`: a line of the block ends in LF without CR;
/// * `bare_cr`, `nul`, `obs_fold`, `field_without_colon`, `space_before_colon`: a field line
///   that is not `name: value` with a clean value;
/// * `content_length_with_transfer_encoding`;
/// * `duplicate_content_length`: two lines, or a list in one (even of equal values);
///   `malformed_content_length`: anything but digits after the spaces that follow the colon
///   (empty, signed, hex, inner or trailing whitespace, a tab, more than fits in 64 bits);
/// * `transfer_encoding_not_chunked`: anything but exactly one line reading `chunked` (in any
///   case, after the spaces that follow the colon): no other coding, no list, no tab;
///   `transfer_encoding_on_http10`;
/// * `missing_host` (HTTP/1.1), `duplicate_host`;
/// * `target_differs_from_host`: an absolute-form target that does not name the host and port
///   `Host` does (in any case); `ambiguous_target`: one whose authority a URL parser could read
///   otherwise (`http:/\a`, `http:a`).
pub fn ambiguity(req: &RequestHeader, raw: &[u8]) -> Option<&'static str> {
    let mut fields = Fields::default();
    let mut request_line_seen = false;
    let mut rest = raw;
    while let Some(end) = rest.iter().position(|&b| b == b'\n') {
        let line = &rest[..end];
        rest = &rest[end + 1..];
        let Some(line) = line.strip_suffix(b"\r") else {
            return Some("bare_lf");
        };
        if line.contains(&b'\r') {
            return Some("bare_cr");
        }
        if line.contains(&0) {
            return Some("nul");
        }
        if !request_line_seen {
            // Empty lines before the request line are skipped, as the parser does.
            request_line_seen = !line.is_empty();
            continue;
        }
        if line.is_empty() {
            // The end of the block.
            break;
        }
        if let Some(reason) = fields.take(line) {
            return Some(reason);
        }
    }
    fields.framing(req).or_else(|| fields.authority(req))
}

/// Why the HTTP/1 request `session` read is refused as ambiguous ([`ambiguity`]); `None` when
/// it is not, and for HTTP/2, framed by its own layer.
pub fn ambiguous(session: &ServerSession) -> Option<(Refusal, String)> {
    let raw = session.as_http1()?.get_headers_raw_bytes();
    let reason = ambiguity(session.req_header(), &raw)?;
    Some((
        Refusal::Ambiguous,
        format!("an HTTP/1 request two parsers could read two ways ({reason}), answered 400"),
    ))
}

/// The framing and authority fields of a header block, as received.
#[derive(Default)]
struct Fields<'a> {
    content_length: Lines<'a>,
    transfer_encoding: Lines<'a>,
    host: Lines<'a>,
}

/// The lines of one field: how many, and the first one's value (nothing is allocated).
#[derive(Default)]
struct Lines<'a> {
    count: usize,
    first: &'a [u8],
}

impl<'a> Lines<'a> {
    fn push(&mut self, value: &'a [u8]) {
        if self.count == 0 {
            self.first = value;
        }
        self.count += 1;
    }

    /// The value when there is exactly one line.
    fn only(&self) -> Option<&'a [u8]> {
        (self.count == 1).then_some(self.first)
    }
}

impl<'a> Fields<'a> {
    /// Notes the field line `line` (without its line end); says why it is refused, if it is.
    fn take(&mut self, line: &'a [u8]) -> Option<&'static str> {
        if line[0] == b' ' || line[0] == b'\t' {
            return Some("obs_fold");
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Some("field_without_colon");
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() {
            return Some("field_without_colon");
        }
        if name.ends_with(b" ") || name.ends_with(b"\t") {
            return Some("space_before_colon");
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            self.content_length.push(value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.transfer_encoding.push(value);
        } else if name.eq_ignore_ascii_case(b"host") {
            self.host.push(value.trim_ascii());
        }
        None
    }

    /// `Content-Length` and `Transfer-Encoding`: one of them at most, once, in its one form.
    fn framing(&self, req: &RequestHeader) -> Option<&'static str> {
        let (lengths, encodings) = (&self.content_length, &self.transfer_encoding);
        match (lengths.count, encodings.count) {
            (0, 0) => None,
            (1.., 1..) => Some("content_length_with_transfer_encoding"),
            (1, 0) => {
                let digits = after_spaces(lengths.first);
                if digits.contains(&b',') {
                    Some("duplicate_content_length")
                } else if number(digits).is_none() {
                    Some("malformed_content_length")
                } else {
                    None
                }
            }
            (_, 0) => Some("duplicate_content_length"),
            (0, _) if req.version == http::Version::HTTP_10 => Some("transfer_encoding_on_http10"),
            (0, _)
                if encodings
                    .only()
                    .is_some_and(|value| after_spaces(value).eq_ignore_ascii_case(b"chunked")) =>
            {
                None
            }
            (0, _) => Some("transfer_encoding_not_chunked"),
        }
    }

    /// `Host`: once (and at all in HTTP/1.1), naming what an absolute-form target names.
    fn authority(&self, req: &RequestHeader) -> Option<&'static str> {
        let host = match self.host.count {
            0 if req.version == http::Version::HTTP_11 => return Some("missing_host"),
            0 => None,
            1 => Some(self.host.first),
            _ => return Some("duplicate_host"),
        };
        let target = match raw_target_authority(req.raw_path()) {
            RawTargetAuthority::Absolute { authority, .. } => authority,
            RawTargetAuthority::AmbiguousAuthority => return Some("ambiguous_target"),
            RawTargetAuthority::None => return None,
        };
        match host {
            Some(host) if !target.eq_ignore_ascii_case(host) => Some("target_differs_from_host"),
            _ => None,
        }
    }
}

/// The number `digits` spell: one or more ASCII digits, at most `u64::MAX`.
fn number(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        if !d.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// `value` without the spaces (SP only) that follow the colon.
fn after_spaces(value: &[u8]) -> &[u8] {
    let start = value.iter().position(|&b| b != b' ').unwrap_or(value.len());
    &value[start..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::protocols::http::v1::server::HttpSession;
    use std::io::Cursor;

    /// What the edge makes of `raw`, sent by a client.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Verdict {
        /// The HTTP/1 parser refuses it (and answers 400 itself).
        Parser,
        /// Read, then refused by [`ambiguity`] for this reason.
        Ambiguous(&'static str),
        /// Read and passed on.
        Passes,
    }

    /// Reads `raw` with the proxy's HTTP/1 parser, then checks it with [`ambiguity`].
    async fn verdict(raw: &str) -> Verdict {
        let stream = Box::new(Cursor::new(raw.as_bytes().to_vec()));
        let mut session = HttpSession::new(stream);
        match session.read_request().await {
            Err(_) => Verdict::Parser,
            Ok(None) => panic!("an incomplete request: {raw:?}"),
            Ok(Some(_)) => {
                let head = session.get_headers_raw_bytes();
                match ambiguity(session.req_header(), &head) {
                    Some(reason) => Verdict::Ambiguous(reason),
                    None => Verdict::Passes,
                }
            }
        }
    }

    /// Checks each `(request, expected)`, naming every one that differs.
    async fn expect_all(cases: &[(&str, Verdict)]) {
        let mut wrong = Vec::new();
        for (raw, expected) in cases {
            let got = verdict(raw).await;
            if got != *expected {
                wrong.push(format!("{raw:?}: {got:?}, expected {expected:?}"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    /// [`ambiguity`] on `raw` alone, its request line taken as parsed.
    fn direct(raw: &str) -> Option<&'static str> {
        let line = raw.split(['\r', '\n']).next().unwrap();
        let mut words = line.split(' ');
        let (method, target, version) = (
            words.next().unwrap(),
            words.next().unwrap(),
            words.next().unwrap(),
        );
        let mut req = RequestHeader::build(method, target.as_bytes(), None).unwrap();
        req.set_version(match version {
            "HTTP/1.0" => http::Version::HTTP_10,
            _ => http::Version::HTTP_11,
        });
        ambiguity(&req, raw.as_bytes())
    }

    use Verdict::{Ambiguous, Parser, Passes};

    #[tokio::test]
    async fn content_length_and_transfer_encoding_together_are_refused_though_the_parser_reads_them(
    ) {
        let both = "content_length_with_transfer_encoding";
        expect_all(&[
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
                Ambiguous(both),
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n",
                Ambiguous(both),
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\ncontent-length: 0\r\ntransfer-encoding: chunked\r\n\r\n",
                Ambiguous(both),
            ),
        ])
        .await;
    }

    #[tokio::test]
    async fn content_length_is_one_line_of_digits() {
        let duplicate = Ambiguous("duplicate_content_length");
        let malformed = Ambiguous("malformed_content_length");
        expect_all(&[
            // Equal values, which the parser would fold into one.
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
                duplicate,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n",
                Ambiguous("duplicate_content_length"),
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\t5\r\n\r\n",
                malformed,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5 \r\n\r\n",
                Ambiguous("malformed_content_length"),
            ),
            // The parser's own.
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                Parser,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n",
                Parser,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
                Parser,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
                Parser,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n",
                Parser,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 2\r\n\r\n",
                Parser,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: five\r\n\r\n",
                Parser,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
                Parser,
            ),
        ])
        .await;
        // Whatever the parser lets through or not, the rule holds on its own.
        for (value, reason) in [
            ("", "malformed_content_length"),
            ("+5", "malformed_content_length"),
            ("-1", "malformed_content_length"),
            ("0x5", "malformed_content_length"),
            ("1 2", "malformed_content_length"),
            ("99999999999999999999", "malformed_content_length"),
            ("5,6", "duplicate_content_length"),
        ] {
            let raw = format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {value}\r\n\r\n");
            assert_eq!(direct(&raw), Some(reason), "{raw:?}");
        }
    }

    #[tokio::test]
    async fn transfer_encoding_is_exactly_one_chunked_and_not_on_http10() {
        let not_chunked = "transfer_encoding_not_chunked";
        let te = |value: &str| {
            format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:{value}\r\n\r\n")
        };
        let cases = [
            (te(" gzip, chunked"), Ambiguous(not_chunked)),
            (te(" chunked, chunked"), Ambiguous(not_chunked)),
            (te("\tchunked"), Ambiguous(not_chunked)),
            (te(" chunked "), Ambiguous(not_chunked)),
            (te(" chunked\t"), Ambiguous(not_chunked)),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
                    .to_string(),
                Ambiguous(not_chunked),
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
                    .to_string(),
                Ambiguous(not_chunked),
            ),
            // The parser's own: chunked not last, or not a coding it knows as chunked.
            (te(" chunked, identity"), Parser),
            (te(" xchunked"), Parser),
            (te(" identity"), Parser),
            (te(" \"chunked\""), Parser),
            (te("\x0bchunked"), Parser),
            (
                "POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_string(),
                Parser,
            ),
        ];
        let cases: Vec<(&str, Verdict)> = cases.iter().map(|(r, v)| (r.as_str(), *v)).collect();
        expect_all(&cases).await;
        for (raw, reason) in [
            (te(" xchunked"), not_chunked),
            (te(" chunked, identity"), not_chunked),
            (
                "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n".to_string(),
                "transfer_encoding_on_http10",
            ),
        ] {
            assert_eq!(direct(&raw), Some(reason), "{raw:?}");
        }
    }

    #[tokio::test]
    async fn a_bare_lf_anywhere_in_the_header_is_refused_though_the_parser_reads_it() {
        let bare = Ambiguous("bare_lf");
        expect_all(&[
            ("GET / HTTP/1.1\r\nHost: a\nX-A: 1\r\n\r\n", bare),
            ("GET / HTTP/1.1\nHost: a\r\n\r\n", Ambiguous("bare_lf")),
            ("GET / HTTP/1.1\r\nHost: a\r\n\n", Ambiguous("bare_lf")),
            ("GET / HTTP/1.1\nHost: a\n\n", Ambiguous("bare_lf")),
            ("\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", Ambiguous("bare_lf")),
            // A smuggled line behind a bare LF in a value.
            (
                "POST / HTTP/1.1\r\nHost: a\r\nX-A: 1\nContent-Length: 3\r\n\r\nabc",
                Ambiguous("bare_lf"),
            ),
        ])
        .await;
    }

    #[tokio::test]
    async fn malformed_field_lines_are_refused_by_the_parser_and_by_the_rule() {
        let cases = [
            (
                "GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n folded\r\n\r\n",
                "obs_fold",
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n\tfolded\r\n\r\n",
                "obs_fold",
            ),
            ("GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r2\r\n\r\n", "bare_cr"),
            ("GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\x002\r\n\r\n", "nul"),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nno colon here\r\n\r\n",
                "field_without_colon",
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\n: empty name\r\n\r\n",
                "field_without_colon",
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n",
                "space_before_colon",
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nContent-Length\t: 5\r\n\r\n",
                "space_before_colon",
            ),
        ];
        let parsed: Vec<(&str, Verdict)> = cases.iter().map(|(raw, _)| (*raw, Parser)).collect();
        expect_all(&parsed).await;
        for (raw, reason) in cases {
            assert_eq!(direct(raw), Some(reason), "{raw:?}");
        }
    }

    #[tokio::test]
    async fn host_is_there_once_and_names_what_the_target_names() {
        expect_all(&[
            (
                "GET / HTTP/1.1\r\nX-A: 1\r\n\r\n",
                Ambiguous("missing_host"),
            ),
            (
                "GET http://a.example/ HTTP/1.1\r\n\r\n",
                Ambiguous("missing_host"),
            ),
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", Parser),
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", Parser),
            (
                "GET http://a.example/ HTTP/1.1\r\nHost: b.example\r\n\r\n",
                Parser,
            ),
            (
                "GET http://a.example:81/ HTTP/1.1\r\nHost: a.example\r\n\r\n",
                Parser,
            ),
            (
                "GET http://a.example/ HTTP/1.1\r\nHost: a.example:80\r\n\r\n",
                Parser,
            ),
            (
                "GET http:a.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n",
                Parser,
            ),
        ])
        .await;
        for (raw, reason) in [
            (
                "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
                "duplicate_host",
            ),
            (
                "GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n",
                "duplicate_host",
            ),
            (
                "GET http://a.example/ HTTP/1.1\r\nHost: b.example\r\n\r\n",
                "target_differs_from_host",
            ),
            (
                "GET http://a.example:81/ HTTP/1.1\r\nHost: a.example\r\n\r\n",
                "target_differs_from_host",
            ),
            (
                "GET http:a.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n",
                "ambiguous_target",
            ),
            (
                "GET http://a.example\\@b.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n",
                "ambiguous_target",
            ),
        ] {
            assert_eq!(direct(raw), Some(reason), "{raw:?}");
        }
    }

    #[tokio::test]
    async fn legitimate_look_alikes_pass() {
        expect_all(&[
            ("GET / HTTP/1.1\r\nHost: a.example\r\n\r\n", Passes),
            ("GET / HTTP/1.1\r\nHost: a.example:8080\r\n\r\n", Passes),
            ("GET / HTTP/1.1\r\nhost:a.example\r\n\r\n", Passes),
            ("GET http://a.example/x HTTP/1.1\r\nHost: a.example\r\n\r\n", Passes),
            (
                "GET http://a.example:8080/x?q=1 HTTP/1.1\r\nHost: a.example:8080\r\n\r\n",
                Passes,
            ),
            // The parser compares them byte for byte; the rule alone would not mind the case.
            ("GET http://A.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n", Parser),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                Passes,
            ),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n", Passes),
            ("POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding:CHUNKED\r\n\r\n", Passes),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello", Passes),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length:0\r\n\r\n", Passes),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length:   007\r\n\r\n", Passes),
            ("GET / HTTP/1.0\r\n\r\n", Passes),
            ("POST / HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi", Passes),
            ("GET / HTTP/1.1\r\nHost: \r\n\r\n", Passes),
            ("GET / HTTP/1.1\r\nHost: a\r\nX-A: a\tb  c \r\nX-Empty:\r\n\r\n", Passes),
            ("\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", Passes),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nX-Content-Length: 1, 2\r\nX-Transfer-Encoding: x\r\n\r\n",
                Passes,
            ),
        ])
        .await;
        assert_eq!(
            direct("GET http://A.example/ HTTP/1.1\r\nHost: a.EXAMPLE\r\n\r\n"),
            None
        );
    }

    #[test]
    fn an_ambiguous_request_is_counted_apart_and_answered_400() {
        assert_eq!(Refusal::Ambiguous.as_str(), "ambiguous_request");
        assert_eq!(Refusal::Ambiguous.status(), Some(400));
    }
}
