//! Request smuggling against the real binary, gate open and closed: a corpus of HTTP/1.1
//! requests two parsers could read two ways (`Content-Length` beside `Transfer-Encoding`,
//! duplicate or malformed lengths, disguised codings, bare LF, folded or broken field lines,
//! missing or doubled `Host`, a target naming another host, broken chunk lines), each on its own
//! connection with a smuggled request in its body and a benign request behind it. Each is
//! answered 400 and its connection closed, so the benign request gets no answer, and nothing of
//! it (not even the head of a request whose chunk lines are broken), the smuggled nor the benign
//! request reaches an upstream. Legitimate look-alikes (chunked and pipelined ones among them)
//! pass.

use std::time::Duration;

use drawbridge_tests::proxy::{Metrics, Site};
use drawbridge_tests::raw_http::RawConnection;
use drawbridge_tests::upstream::Upstream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The request hidden in the body of each ambiguous one.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: smuggling.test\r\n\r\n";
/// The request sent behind each ambiguous one on the same connection.
const FOLLOWER: &str = "GET /follower HTTP/1.1\r\nHost: smuggling.test\r\n\r\n";
/// How long a refused connection may stay open.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

/// Who refuses a request of the corpus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum By {
    /// Drawbridge's strict rules, before anything is done with the request (counted as
    /// `ambiguous_request`).
    Edge,
    /// The HTTP/1 parser, which answers 400 itself (counted as `bad_request`).
    Parser,
    /// The edge's check of chunk lines, which holds a chunked request back until its body
    /// has ended (counted as `ambiguous_request`): refused before its head is read.
    Chunks,
}

/// One ambiguous request.
struct Case {
    name: &'static str,
    by: By,
    /// Where it goes: under `/api/` (problem+json) or not (the page).
    path: String,
    raw: Vec<u8>,
}

/// The corpus; `{P}` in a template is the case's path, `{B}` the smuggled body.
fn corpus() -> Vec<Case> {
    use By::{Chunks, Edge, Parser};
    let post = "POST {P} HTTP/1.1\r\nHost: smuggling.test\r\n";
    let chunked = "POST {P} HTTP/1.1\r\nHost: smuggling.test\r\nTransfer-Encoding: chunked\r\n\r\n";
    let te = |value: &str| {
        format!("{post}Content-Type: text/plain\r\nTransfer-Encoding:{value}\r\n\r\n{{B}}")
    };
    let cl = |value: &str| format!("{post}Content-Length:{value}\r\n\r\n{{B}}");
    let table: Vec<(&'static str, By, String)> = vec![
        // Content-Length beside Transfer-Encoding.
        (
            "cl-te",
            Edge,
            format!("{post}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n{{B}}"),
        ),
        (
            "te-cl",
            Edge,
            format!("{post}Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{{B}}"),
        ),
        (
            "cl-te-lower",
            Edge,
            format!("{post}content-length: 0\r\ntransfer-encoding: chunked\r\n\r\n{{B}}"),
        ),
        (
            "cl-te-long",
            Edge,
            format!("{post}Content-Length: 60\r\nTransfer-Encoding: chunked\r\n\r\n{{B}}"),
        ),
        // Content-Length twice, listed, or not a number.
        (
            "cl-twice-equal",
            Edge,
            format!("{post}Content-Length: 5\r\nContent-Length: 5\r\n\r\n{{B}}"),
        ),
        ("cl-list-equal", Edge, cl(" 5, 5")),
        ("cl-tab", Edge, cl("\t5")),
        ("cl-trailing-space", Edge, cl(" 5 ")),
        (
            "cl-twice-differing",
            Parser,
            format!("{post}Content-Length: 5\r\nContent-Length: 6\r\n\r\n{{B}}"),
        ),
        ("cl-empty", Parser, cl("")),
        ("cl-plus", Parser, cl(" +5")),
        ("cl-minus", Parser, cl(" -1")),
        ("cl-hex", Parser, cl(" 0x5")),
        ("cl-inner-space", Parser, cl(" 1 2")),
        ("cl-word", Parser, cl(" five")),
        ("cl-overflow", Parser, cl(" 99999999999999999999")),
        // Transfer-Encoding other than exactly `chunked`.
        ("te-gzip-chunked", Edge, te(" gzip, chunked")),
        ("te-chunked-twice", Edge, te(" chunked, chunked")),
        (
            "te-two-lines",
            Edge,
            format!("{post}Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n{{B}}"),
        ),
        (
            "te-two-chunked-lines",
            Edge,
            format!("{post}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n{{B}}"),
        ),
        ("te-tab", Edge, te("\tchunked")),
        ("te-trailing-space", Edge, te(" chunked ")),
        ("te-trailing-tab", Edge, te(" chunked\t")),
        ("te-chunked-identity", Parser, te(" chunked, identity")),
        ("te-xchunked", Parser, te(" xchunked")),
        ("te-identity", Parser, te(" identity")),
        ("te-quoted", Parser, te(" \"chunked\"")),
        ("te-vertical-tab", Parser, te("\x0bchunked")),
        (
            "te-chunked-then-identity",
            Parser,
            format!("{post}Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n{{B}}"),
        ),
        (
            "te-http10",
            Parser,
            "POST {P} HTTP/1.0\r\nHost: smuggling.test\r\nTransfer-Encoding: chunked\r\n\r\n{B}"
                .to_string(),
        ),
        // Bare LF line ends.
        (
            "lf-in-field",
            Edge,
            "GET {P} HTTP/1.1\r\nHost: smuggling.test\nX-A: 1\r\n\r\n".to_string(),
        ),
        (
            "lf-after-request-line",
            Edge,
            "GET {P} HTTP/1.1\nHost: smuggling.test\r\n\r\n".to_string(),
        ),
        (
            "lf-ends-block",
            Edge,
            "GET {P} HTTP/1.1\r\nHost: smuggling.test\r\n\n".to_string(),
        ),
        (
            "lf-only",
            Edge,
            "GET {P} HTTP/1.1\nHost: smuggling.test\n\n".to_string(),
        ),
        (
            "lf-before-request",
            Edge,
            "\nGET {P} HTTP/1.1\r\nHost: smuggling.test\r\n\r\n".to_string(),
        ),
        (
            "lf-hides-cl",
            Edge,
            format!("{post}X-A: 1\nContent-Length: 60\r\n\r\n{{B}}"),
        ),
        (
            "lf-hides-te",
            Edge,
            format!("{post}Content-Length: 5\r\nX-A: 1\nTransfer-Encoding: chunked\r\n\r\n{{B}}"),
        ),
        // Field lines no parser should read.
        (
            "obs-fold-space",
            Parser,
            format!("{post}X-A: 1\r\n Transfer-Encoding: chunked\r\n\r\n{{B}}"),
        ),
        (
            "obs-fold-tab",
            Parser,
            format!("{post}Transfer-Encoding:\r\n\tchunked\r\n\r\n{{B}}"),
        ),
        (
            "cr-in-value",
            Parser,
            format!("{post}X-A: 1\rTransfer-Encoding: chunked\r\n\r\n{{B}}"),
        ),
        (
            "nul-in-value",
            Parser,
            format!("{post}Transfer-Encoding: chunked\0\r\n\r\n{{B}}"),
        ),
        (
            "no-colon",
            Parser,
            format!("{post}Transfer-Encoding chunked\r\n\r\n{{B}}"),
        ),
        (
            "space-before-colon",
            Parser,
            format!("{post}Transfer-Encoding : chunked\r\n\r\n{{B}}"),
        ),
        (
            "tab-before-colon",
            Parser,
            format!("{post}Content-Length\t: 5\r\n\r\n{{B}}"),
        ),
        // Host missing, doubled, or not what the target names.
        (
            "no-host",
            Edge,
            "GET {P} HTTP/1.1\r\nX-A: 1\r\n\r\n".to_string(),
        ),
        (
            "no-host-absolute",
            Edge,
            "GET http://smuggling.test{P} HTTP/1.1\r\n\r\n".to_string(),
        ),
        (
            "host-twice",
            Parser,
            "GET {P} HTTP/1.1\r\nHost: smuggling.test\r\nHost: other.test\r\n\r\n".to_string(),
        ),
        (
            "host-twice-equal",
            Parser,
            "GET {P} HTTP/1.1\r\nHost: smuggling.test\r\nHost: smuggling.test\r\n\r\n".to_string(),
        ),
        (
            "absolute-other-host",
            Parser,
            "GET http://other.test{P} HTTP/1.1\r\nHost: smuggling.test\r\n\r\n".to_string(),
        ),
        (
            "absolute-other-port",
            Parser,
            "GET http://smuggling.test:81{P} HTTP/1.1\r\nHost: smuggling.test\r\n\r\n".to_string(),
        ),
        (
            "absolute-no-slashes",
            Parser,
            "GET http:smuggling.test{P} HTTP/1.1\r\nHost: smuggling.test\r\n\r\n".to_string(),
        ),
        // Chunk lines: checked by the edge before the request is read.
        (
            "chunk-size-overflow",
            Chunks,
            format!("{chunked}fffffffffffffffff\r\n{{B}}"),
        ),
        (
            "chunk-size-past-memory",
            Chunks,
            format!("{chunked}ffffffffffffffff\r\nabc\r\n{{B}}"),
        ),
        (
            "chunk-size-bare-lf",
            Chunks,
            format!("{chunked}5\nhello\r\n0\r\n\r\n{{B}}"),
        ),
        (
            "chunk-data-bare-lf",
            Chunks,
            format!("{chunked}5\r\nhello\n0\r\n\r\n{{B}}"),
        ),
        (
            "last-chunk-bare-lf",
            Chunks,
            format!("{chunked}0\n\r\n{{B}}"),
        ),
        (
            "trailers-end-bare-lf",
            Chunks,
            format!("{chunked}0\r\n\n{{B}}"),
        ),
    ];
    let body = format!("0\r\n\r\n{SMUGGLED}");
    table
        .into_iter()
        .enumerate()
        .map(|(i, (name, by, template))| {
            // Every third case goes to the API route, whose answers are problem+json.
            let path = if i % 3 == 0 {
                format!("/api/smuggle/{name}")
            } else {
                format!("/smuggle/{name}")
            };
            let raw = template.replace("{P}", &path).replace("{B}", &body);
            Case {
                name,
                by,
                path,
                raw: raw.into_bytes(),
            }
        })
        .collect()
}

/// A legitimate request that looks like the corpus, and whether a second request may follow
/// it on its connection (HTTP/1.0 closes).
struct LookAlike {
    path: &'static str,
    raw: &'static str,
    kept_alive: bool,
}

fn look_alikes() -> Vec<LookAlike> {
    let kept = |path, raw| LookAlike {
        path,
        raw,
        kept_alive: true,
    };
    vec![
        kept("/legit/host-port", "GET /legit/host-port HTTP/1.1\r\nHost: smuggling.test:8080\r\n\r\n"),
        kept("/legit/absolute", "GET http://smuggling.test/legit/absolute HTTP/1.1\r\nHost: smuggling.test\r\n\r\n"),
        kept("/legit/absolute-port", "GET http://smuggling.test:8080/legit/absolute-port HTTP/1.1\r\nHost: smuggling.test:8080\r\n\r\n"),
        kept("/api/legit/chunked", "POST /api/legit/chunked HTTP/1.1\r\nHost: smuggling.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        kept("/api/legit/chunk-ext", "POST /api/legit/chunk-ext HTTP/1.1\r\nHost: smuggling.test\r\nTransfer-Encoding: chunked\r\n\r\n5;name=v\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n"),
        kept("/api/legit/chunked-case", "POST /api/legit/chunked-case HTTP/1.1\r\nHost: smuggling.test\r\nTransfer-Encoding: Chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"),
        kept("/api/legit/length", "POST /api/legit/length HTTP/1.1\r\nHost: smuggling.test\r\nContent-Length: 5\r\n\r\nhello"),
        kept("/legit/length-zero", "GET /legit/length-zero HTTP/1.1\r\nHost: smuggling.test\r\nContent-Length:0\r\n\r\n"),
        kept("/legit/names", "GET /legit/names HTTP/1.1\r\nHost: smuggling.test\r\nX-Content-Length: 1, 2\r\nX-Transfer-Encoding: chunked\r\n\r\n"),
        LookAlike {
            path: "/legit/http10",
            raw: "GET /legit/http10 HTTP/1.0\r\n\r\n",
            kept_alive: false,
        },
        LookAlike {
            path: "/api/legit/http10-length",
            raw: "POST /api/legit/http10-length HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi",
            kept_alive: false,
        },
    ]
}

/// Everything the proxy sends on `stream` until it closes the connection (end of file or
/// reset); `None` if it is still open after [`CLOSE_WITHIN`].
async fn until_closed(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(CLOSE_WITHIN, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok()?;
    Some(got)
}

/// The answers in `bytes`, in order: status and header block of each.
fn answers(mut bytes: &[u8]) -> Vec<(u16, String)> {
    let mut out = Vec::new();
    while let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&bytes[..end + 4]).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        let length: usize = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        bytes = &bytes[(end + 4 + length).min(bytes.len())..];
        out.push((status, head));
    }
    out
}

/// Sends each case with [`FOLLOWER`] behind it on a connection of its own; returns what went
/// wrong, one line a case.
async fn send_corpus(site: &Site, cases: &[Case]) -> Vec<String> {
    let mut wrong = Vec::new();
    for case in cases {
        let mut stream = TcpStream::connect(site.edge.listen_addr())
            .await
            .expect("connect");
        let mut bytes = case.raw.clone();
        bytes.extend_from_slice(FOLLOWER.as_bytes());
        // The proxy may answer and close before it has read everything.
        let _ = stream.write_all(&bytes).await;
        let Some(got) = until_closed(&mut stream).await else {
            wrong.push(format!("{}: still open after {CLOSE_WITHIN:?}", case.name));
            continue;
        };
        let answers = answers(&got);
        let want = 400;
        let statuses: Vec<u16> = answers.iter().map(|(status, _)| *status).collect();
        if statuses != [want] {
            wrong.push(format!(
                "{} ({:?}): answers {statuses:?}, expected [{want}] and the connection closed",
                case.name, case.by
            ));
            continue;
        }
        let form = match case.by {
            // The refusal is in the route's form.
            By::Edge | By::Chunks if !case.path.starts_with("/api/") => "text/html",
            // Without a request read there is no route: problem+json.
            _ => "application/problem+json",
        };
        if !answers[0].1.to_ascii_lowercase().contains(form) {
            wrong.push(format!("{}: not {form}:\n{}", case.name, answers[0].1));
        }
    }
    wrong
}

/// Sends each look-alike on a connection of its own, then a second request on it when it is
/// kept alive; returns what went wrong.
async fn send_look_alikes(site: &Site, status: u16) -> Vec<String> {
    let mut wrong = Vec::new();
    for (i, legit) in look_alikes().iter().enumerate() {
        let mut conn = RawConnection::connect(site.edge.listen_addr()).await;
        conn.send(legit.raw).await;
        let answer = conn.read_answer(legit.path).await;
        if answer.status != status {
            wrong.push(format!(
                "{}: {}, expected {status}",
                legit.path, answer.status
            ));
        }
        if legit.kept_alive {
            conn.send(&format!(
                "GET /legit/after/{i} HTTP/1.1\r\nHost: smuggling.test\r\n\r\n"
            ))
            .await;
            let after = conn.read_answer("the request after a look-alike").await;
            if after.status != status {
                wrong.push(format!(
                    "after {}: {}, expected {status}",
                    legit.path, after.status
                ));
            }
        }
    }
    wrong
}

/// Requests `ui` and `api` received on `path`.
fn reached(ui: &Upstream, api: &Upstream, path: &str) -> u64 {
    ui.requests_to(path) + api.requests_to(path)
}

/// Refusals counted for `reason`.
fn refused(metrics: &Metrics, reason: &str) -> f64 {
    metrics.value("drawbridge_refused_requests_total", &[("reason", reason)])
}

#[tokio::test]
async fn ambiguous_requests_are_refused_and_reach_no_upstream_with_the_gate_open_or_closed() {
    let site = Site::start("ambiguous_requests_are_refused_and_reach_no_upstream").await;
    let cases = corpus();
    let count = |by| cases.iter().filter(|c| c.by == by).count() as f64;
    let (rules, parser, chunks) = (count(By::Edge), count(By::Parser), count(By::Chunks));
    let edge = rules + chunks;
    println!(
        "{} ambiguous requests: {rules} refused by the edge's rules, {chunks} by its chunk-line \
         check, {parser} by the parser",
        cases.len()
    );
    assert!(cases.len() >= 40);

    // Gate open.
    let wrong = send_corpus(&site, &cases).await;
    assert!(wrong.is_empty(), "gate open:\n{}", wrong.join("\n"));
    let wrong = send_look_alikes(&site, 200).await;
    assert!(
        wrong.is_empty(),
        "look-alikes, gate open:\n{}",
        wrong.join("\n")
    );
    site.edge
        .wait_metric(
            "drawbridge_refused_requests_total",
            &[("reason", "ambiguous_request")],
            edge,
        )
        .await;
    site.edge
        .wait_metric(
            "drawbridge_refused_requests_total",
            &[("reason", "bad_request")],
            parser,
        )
        .await;
    let legit = look_alikes();
    let kept_alive = legit.iter().filter(|l| l.kept_alive).count() as u64;
    for l in &legit {
        assert_eq!(
            reached(&site.ui, &site.api, l.path),
            1,
            "{} upstream",
            l.path
        );
    }
    // Gate closed: the same, and the look-alikes get the maintenance answer.
    site.put_gate(r#"{"mode":"maintenance"}"#).await;
    let wrong = send_corpus(&site, &cases).await;
    assert!(wrong.is_empty(), "gate closed:\n{}", wrong.join("\n"));
    let wrong = send_look_alikes(&site, 503).await;
    assert!(
        wrong.is_empty(),
        "look-alikes, gate closed:\n{}",
        wrong.join("\n")
    );
    site.edge
        .wait_metric(
            "drawbridge_refused_requests_total",
            &[("reason", "ambiguous_request")],
            2.0 * edge,
        )
        .await;
    site.edge
        .wait_metric(
            "drawbridge_refused_requests_total",
            &[("reason", "bad_request")],
            2.0 * parser,
        )
        .await;

    // Upstream: exactly the legitimate requests of the open gate.
    for path in ["/smuggled", "/follower"] {
        assert_eq!(
            reached(&site.ui, &site.api, path),
            0,
            "{path} reached an upstream"
        );
    }
    for case in &cases {
        assert_eq!(
            reached(&site.ui, &site.api, &case.path),
            0,
            "{} reached an upstream",
            case.name
        );
    }
    let proxied = site.ui.proxied_requests() + site.api.proxied_requests();
    assert_eq!(
        proxied,
        legit.len() as u64 + kept_alive,
        "requests upstream: the look-alikes and the requests after them"
    );
    let metrics = site.edge.metrics().await;
    assert_eq!(refused(&metrics, "ambiguous_request"), 2.0 * edge);
    assert_eq!(refused(&metrics, "bad_request"), 2.0 * parser);
    let log = site.edge.log();
    assert!(
        log.contains("refused: an HTTP/1 request two parsers could read two ways"),
        "the refusal is logged:\n{}",
        site.edge.log_tail()
    );
}

/// Chunked bodies the edge holds back to check cannot be stalled or cut by it: a body whose
/// last chunk comes 1.5 s after the first (past the hold time) and one of 200 KiB (past the
/// hold limit) reach the upstream whole, one after the other on a connection kept open; and
/// the request after them is held and checked again.
#[tokio::test]
async fn legitimate_chunked_bodies_reach_the_upstream_whole_however_they_come() {
    let site = Site::start("legitimate_chunked_bodies_reach_the_upstream_whole").await;
    let head = |path: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: smuggling.test\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
    };
    let mut conn = RawConnection::connect(site.edge.listen_addr()).await;
    conn.send(&format!("{}5\r\nhello\r\n", head("/api/slow-chunks")))
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    conn.send("6\r\n world\r\n0\r\n\r\n").await;
    assert_eq!(conn.read_answer("the slow chunked body").await.status, 200);
    let last = site.api.last_request().expect("a request upstream");
    assert_eq!(
        (last.path_and_query.as_str(), last.body_len),
        ("/api/slow-chunks", 11)
    );

    let chunk = format!("400\r\n{}\r\n", "b".repeat(0x400));
    conn.send(&format!(
        "{}{}0\r\n\r\n",
        head("/api/big-chunks"),
        chunk.repeat(200)
    ))
    .await;
    assert_eq!(
        conn.read_answer("the 200 KiB chunked body").await.status,
        200
    );
    let last = site.api.last_request().expect("a request upstream");
    assert_eq!(
        (last.path_and_query.as_str(), last.body_len),
        ("/api/big-chunks", 200 * 1024)
    );

    // The next request on the connection is held again: a broken chunk line in it is refused
    // before its head goes anywhere.
    conn.send(&format!(
        "{}5\nhello\r\n0\r\n\r\n",
        head("/api/broken-after")
    ))
    .await;
    assert_eq!(
        conn.read_answer("the broken chunked body").await.status,
        400
    );
    assert!(conn.closed_by_peer().await);
    assert_eq!(site.api.requests_to("/api/broken-after"), 0);
}
