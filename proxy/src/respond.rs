//! The answers the proxy writes itself for a `Decision`: the maintenance page or problem body,
//! the well-known documents (state and windows, calendar, banner), CORS preflights and "no route"; and for a request it could not
//! proxy, the error status ([`failure_status`]: 502, or 504 when the upstream timed out) with a
//! body in the route's form ([`failure`]). Pure functions from state to header and body.
//! Headers are built without case preservation (names go out in lower case, as HTTP allows):
//! that halves the cost of building one (benches/micro/respond.rs).

use crate::config::MaintenanceSettings;
use crate::decide::{Answer, Decision, WellKnown};
use crate::facts::{allowed_origin, RequestFacts};
use crate::gate_state::GateState;
use crate::page::PageTemplate;
use crate::windows::{Announcements, WindowsState};
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::StatusCode;
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorSource, ErrorType, Result};
use std::sync::LazyLock;

/// The header that tells monitors an outage is planned, not a failure.
pub const OUTAGE_HEADER: &str = "x-drawbridge-outage";

const HTML: HeaderValue = HeaderValue::from_static("text/html; charset=utf-8");
const PROBLEM_JSON: HeaderValue = HeaderValue::from_static("application/problem+json");
const JSON: HeaderValue = HeaderValue::from_static("application/json");
const CALENDAR: HeaderValue = HeaderValue::from_static("text/calendar; charset=utf-8");
const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");
const EXPOSED: HeaderValue = HeaderValue::from_static("Retry-After, X-Drawbridge-Outage");

/// The longest `Retry-After` sent: a day. An `until` years away (a mistyped year) would
/// otherwise tell clients and crawlers to stay away for as long.
pub const MAX_RETRY_AFTER_SECS: u64 = 24 * 3600;

/// The response the proxy writes itself for `decision`, or `None` when the request goes to the
/// route's pool. `now_unix` is read only for a maintenance response.
///
/// # Errors
/// As [`maintenance`].
pub fn response_for(
    decision: Decision,
    state: &GateState,
    windows: &ArcSwap<WindowsState>,
    facts: &RequestFacts<'_>,
    settings: &MaintenanceSettings,
    now_unix: impl FnOnce() -> i64,
) -> Result<Option<(ResponseHeader, Bytes)>> {
    let response = match decision {
        Decision::Pass { .. } | Decision::Bypass { .. } => return Ok(None),
        Decision::NoRoute => no_route()?,
        Decision::WellKnown(document) => {
            let own = OwnDocument {
                state,
                windows: &windows.load(),
                now_unix: now_unix(),
            };
            well_known(document, &own, settings, facts.origin())?
        }
        Decision::Preflight { .. } => {
            let (method, headers) = facts.preflight_asks();
            (preflight(facts.origin(), method, headers)?, Bytes::new())
        }
        Decision::RefusedPreflight { answer, .. } | Decision::Maintenance { answer, .. } => {
            maintenance(state, answer, settings, facts.origin(), now_unix())?
        }
    };
    Ok(Some(response))
}

/// The maintenance response: 503 with the page or the problem body, `Retry-After` counting down
/// to `until` (at most [`MAX_RETRY_AFTER_SECS`]), `no-store`, and CORS for allowed origins.
///
/// # Errors
/// Only if a header cannot be stored, which the fixed names and values here rule out.
pub fn maintenance(
    state: &GateState,
    answer: Answer,
    settings: &MaintenanceSettings,
    origin: Option<&HeaderValue>,
    now_unix: i64,
) -> Result<(ResponseHeader, Bytes)> {
    let retry_after = state
        .retry_after_secs(now_unix, settings.default_retry_after.as_secs())
        .min(MAX_RETRY_AFTER_SECS);
    let (content_type, body) = match answer {
        Answer::Page => (HTML, state.page_html.clone()),
        Answer::Problem => (PROBLEM_JSON, state.problem_json.clone()),
    };
    let mut h = ResponseHeader::build_no_case(503, Some(8))?;
    h.insert_header(header::CONTENT_TYPE, content_type)?;
    h.insert_header(header::CONTENT_LENGTH, HeaderValue::from(body.len()))?;
    h.insert_header(header::RETRY_AFTER, HeaderValue::from(retry_after))?;
    h.insert_header(header::CACHE_CONTROL, NO_STORE)?;
    h.insert_header(OUTAGE_HEADER, HeaderValue::from_static("planned"))?;
    if answer == Answer::Page {
        let refresh = retry_after.clamp(5, settings.page_refresh_max.as_secs().max(5));
        h.insert_header(header::REFRESH, HeaderValue::from(refresh))?;
    }
    match allowed_origin(&settings.cors, origin) {
        Some(origin) => {
            h.insert_header(header::VARY, HeaderValue::from_static("Accept, Origin"))?;
            h.insert_header(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone())?;
            h.insert_header(header::ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSED)?;
        }
        None => h.insert_header(header::VARY, HeaderValue::from_static("Accept"))?,
    }
    Ok((h, body))
}

/// What the proxy's own documents are made from.
pub struct OwnDocument<'a> {
    pub state: &'a GateState,
    pub windows: &'a Announcements,
    pub now_unix: i64,
}

/// A [`WellKnown`] document, never cached: the gate state with the windows not over (JSON),
/// the windows' iCalendar feed, or the banner fragment of the window announced (204 when none
/// is).
///
/// # Errors
/// As [`maintenance`].
pub fn well_known(
    document: WellKnown,
    from: &OwnDocument<'_>,
    settings: &MaintenanceSettings,
    origin: Option<&HeaderValue>,
) -> Result<(ResponseHeader, Bytes)> {
    let (content_type, body) = match document {
        WellKnown::State => (
            JSON,
            from.windows
                .well_known(&from.state.well_known_json, from.now_unix),
        ),
        WellKnown::Calendar => (CALENDAR, from.windows.ics.clone()),
        WellKnown::Banner => match from.windows.announced(from.now_unix) {
            Some(window) => (HTML, window.banner.clone()),
            None => {
                let mut h = ResponseHeader::build_no_case(204, Some(3))?;
                h.insert_header(header::CACHE_CONTROL, NO_STORE)?;
                allow_origin(&mut h, settings, origin)?;
                return Ok((h, Bytes::new()));
            }
        },
    };
    let mut h = ResponseHeader::build_no_case(200, Some(5))?;
    h.insert_header(header::CONTENT_TYPE, content_type)?;
    h.insert_header(header::CONTENT_LENGTH, HeaderValue::from(body.len()))?;
    h.insert_header(header::CACHE_CONTROL, NO_STORE)?;
    allow_origin(&mut h, settings, origin)?;
    Ok((h, body))
}

/// CORS for the proxy's own documents: an allowed origin may read them.
fn allow_origin(
    h: &mut ResponseHeader,
    settings: &MaintenanceSettings,
    origin: Option<&HeaderValue>,
) -> Result<()> {
    if let Some(origin) = allowed_origin(&settings.cors, origin) {
        h.insert_header(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone())?;
        h.insert_header(header::VARY, HeaderValue::from_static("Origin"))?;
    }
    Ok(())
}

/// A CORS preflight `decide` allows while the gate is closed: 204 allowing the origin, method and
/// headers asked for, so the browser goes on to read the 503.
///
/// # Errors
/// As [`maintenance`].
pub fn preflight(
    origin: Option<&HeaderValue>,
    method: Option<&HeaderValue>,
    headers: Option<&HeaderValue>,
) -> Result<ResponseHeader> {
    let mut h = ResponseHeader::build_no_case(204, Some(6))?;
    if let Some(origin) = origin {
        h.insert_header(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone())?;
    }
    if let Some(method) = method {
        h.insert_header(header::ACCESS_CONTROL_ALLOW_METHODS, method.clone())?;
    }
    if let Some(headers) = headers {
        h.insert_header(header::ACCESS_CONTROL_ALLOW_HEADERS, headers.clone())?;
    }
    h.insert_header(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("60"),
    )?;
    h.insert_header(header::VARY, HeaderValue::from_static("Origin"))?;
    h.insert_header(header::CONTENT_LENGTH, HeaderValue::from_static("0"))?;
    Ok(h)
}

/// 404 for a request no route matches.
///
/// # Errors
/// As [`maintenance`].
pub fn no_route() -> Result<(ResponseHeader, Bytes)> {
    let body = Bytes::from_static(b"no route for this host and path\n");
    let mut h = ResponseHeader::build_no_case(404, Some(3))?;
    h.insert_header(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"))?;
    h.insert_header(header::CONTENT_LENGTH, HeaderValue::from(body.len()))?;
    Ok((h, body))
}

/// The status the proxy answers a request that failed with `error`: 504 when the upstream did
/// not connect, answer or take the request in time; 502 for any other upstream failure (refused,
/// reset, an answer that is not HTTP, no healthy server); 408 for a request body that stopped
/// coming (`limits.body_timeout`); 400 for a request that cannot be read;
/// 500 for a failure of the proxy itself; 0 when the client is gone and nothing can be written.
pub fn failure_status(error: &Error) -> u16 {
    use ErrorType::*;
    match (error.etype(), error.esource()) {
        (HTTPStatus(code), _) => *code,
        (
            ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout,
            ErrorSource::Upstream,
        ) => 504,
        (_, ErrorSource::Upstream) => 502,
        (ReadTimedout, ErrorSource::Downstream) => 408,
        (WriteError | ReadError | ConnectionClosed, ErrorSource::Downstream) => 0,
        (_, ErrorSource::Downstream) => 400,
        (_, ErrorSource::Internal | ErrorSource::Unset) => 500,
    }
}

/// The bodies of one failure status, in both forms.
struct FailureBodies {
    page: Bytes,
    problem: Bytes,
}

impl FailureBodies {
    /// The bodies for `status`: its reason phrase as the title and a sentence on what happened.
    fn new(status: u16) -> FailureBodies {
        let title = StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error");
        let (kind, detail) = match status {
            502 => (
                "urn:drawbridge:problem:upstream-unavailable",
                "The service behind this address could not be reached or did not answer properly.",
            ),
            504 => (
                "urn:drawbridge:problem:upstream-timeout",
                "The service behind this address did not answer in time.",
            ),
            408 => ("about:blank", "The request body arrived too slowly."),
            413 => (
                "about:blank",
                "The request body is larger than this service accepts.",
            ),
            414 => (
                "about:blank",
                "The request address is longer than this service accepts.",
            ),
            431 => (
                "about:blank",
                "The request headers are larger than this service accepts.",
            ),
            405 => (
                "about:blank",
                "This address does not open tunnels (CONNECT).",
            ),
            400..=499 => ("about:blank", "The request could not be read."),
            _ => ("about:blank", "The request could not be completed."),
        };
        let problem = serde_json::json!({
            "type": kind,
            "title": title,
            "status": status,
            "detail": detail,
        });
        FailureBodies {
            page: Bytes::from(PageTemplate::error_page(title, detail)),
            problem: Bytes::from(problem.to_string()),
        }
    }
}

/// The statuses the proxy answers failures and refusals with; their bodies are rendered once,
/// since they come in bulk when an upstream is down or a client misbehaves.
const FAILURE_STATUSES: [u16; 9] = [400, 405, 408, 413, 414, 431, 500, 502, 504];

static FAILURE_BODIES: LazyLock<Vec<FailureBodies>> = LazyLock::new(|| {
    FAILURE_STATUSES
        .iter()
        .map(|&s| FailureBodies::new(s))
        .collect()
});

/// The answer to a request the proxy could not proxy or refused: `status` (from
/// [`failure_status`], or a refusal's) with a body in the form `answer`, as a maintenance
/// answer of the route would have (the page for page routes, problem+json for API routes and
/// clients that prefer JSON), never cached. Without `X-Drawbridge-Outage`: the outage is not
/// planned.
///
/// # Errors
/// As [`maintenance`].
pub fn failure(status: u16, answer: Answer) -> Result<(ResponseHeader, Bytes)> {
    let other;
    let bodies = match FAILURE_STATUSES.iter().position(|&s| s == status) {
        Some(at) => &FAILURE_BODIES[at],
        None => {
            other = FailureBodies::new(status);
            &other
        }
    };
    let (content_type, body) = match answer {
        Answer::Page => (HTML, bodies.page.clone()),
        Answer::Problem => (PROBLEM_JSON, bodies.problem.clone()),
    };
    let mut h = ResponseHeader::build_no_case(status, Some(4))?;
    h.insert_header(header::CONTENT_TYPE, content_type)?;
    h.insert_header(header::CONTENT_LENGTH, HeaderValue::from(body.len()))?;
    h.insert_header(header::CACHE_CONTROL, NO_STORE)?;
    h.insert_header(header::VARY, HeaderValue::from_static("Accept"))?;
    Ok((h, body))
}

/// The whole HTTP/1.1 answer, as sent, to a request the HTTP/1 parser could not read: the
/// connection's stream writes it in place of the parser's own bare 400. problem+json, since
/// without a request there is no route to take the form from; the connection is closed after.
pub fn unreadable_request() -> Bytes {
    let (header, body) =
        failure(400, Answer::Problem).expect("the 400 answer is built from fixed values");
    let mut wire = b"HTTP/1.1 400 Bad Request\r\n".to_vec();
    for (name, value) in &header.headers {
        wire.extend_from_slice(name.as_str().as_bytes());
        wire.extend_from_slice(b": ");
        wire.extend_from_slice(value.as_bytes());
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"connection: close\r\n\r\n");
    wire.extend_from_slice(&body);
    Bytes::from(wire)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::CorsPolicy;
    use crate::facts::tests::request;
    use crate::gate_state::{StateBuilder, StateSource};
    use crate::page::PageTemplate;
    use crate::windows::{Announcer, WindowsState};
    use drawbridge_core::gate::GateDoc;
    use std::time::Duration;
    use time::OffsetDateTime;

    fn settings(cors: CorsPolicy) -> MaintenanceSettings {
        MaintenanceSettings {
            default_retry_after: Duration::from_secs(300),
            page_refresh_max: Duration::from_secs(120),
            page: PageTemplate::parse("<p>{{reason}}</p>").unwrap(),
            default_message: "soon".into(),
            cors,
            announce_before: Duration::from_secs(3600),
            overdue_grace: Duration::from_secs(600),
        }
    }

    /// The state of gate document `doc`, for routes `ui` and `api`.
    pub(crate) fn state(doc: &str) -> GateState {
        let config_like = settings(CorsPolicy::None);
        let routes = vec!["ui".into(), "api".into()];
        let builder = StateBuilder::for_test(routes, config_like.page, "soon".into());
        builder
            .build(
                GateDoc::parse(doc.as_bytes()).unwrap(),
                1,
                StateSource::Consul,
                OffsetDateTime::UNIX_EPOCH,
            )
            .unwrap()
    }

    fn get<'a>(h: &'a ResponseHeader, name: &str) -> Option<&'a str> {
        h.headers.get(name).map(|v| v.to_str().unwrap())
    }

    #[test]
    fn page_carries_the_planned_outage_headers() {
        let s =
            state(r#"{"mode":"maintenance","reason":"upgrade","until":"2026-11-25T21:00:00Z"}"#);
        let until = s.doc.until.unwrap().unix_timestamp();
        let (h, body) = maintenance(
            &s,
            Answer::Page,
            &settings(CorsPolicy::None),
            None,
            until - 3600,
        )
        .unwrap();
        assert_eq!(h.status.as_u16(), 503);
        assert_eq!(get(&h, "content-type"), Some("text/html; charset=utf-8"));
        assert_eq!(get(&h, "retry-after"), Some("3600"));
        assert_eq!(get(&h, "refresh"), Some("120"));
        assert_eq!(get(&h, "cache-control"), Some("no-store"));
        assert_eq!(get(&h, "vary"), Some("Accept"));
        assert_eq!(get(&h, OUTAGE_HEADER), Some("planned"));
        assert_eq!(
            get(&h, "content-length"),
            Some(body.len().to_string().as_str())
        );
        assert_eq!(&body[..], b"<p>upgrade</p>");
        assert!(get(&h, "access-control-allow-origin").is_none());
    }

    #[test]
    fn api_answer_echoes_cors_for_allowed_origins_only() {
        let s = state(r#"{"mode":"maintenance"}"#);
        let policy = CorsPolicy::Origins(vec!["https://partner.test".into()]);
        let allowed = HeaderValue::from_static("https://partner.test");
        let (h, body) = maintenance(
            &s,
            Answer::Problem,
            &settings(policy.clone()),
            Some(&allowed),
            0,
        )
        .unwrap();
        assert_eq!(get(&h, "content-type"), Some("application/problem+json"));
        assert_eq!(get(&h, "retry-after"), Some("300"));
        assert_eq!(
            get(&h, "access-control-allow-origin"),
            Some("https://partner.test")
        );
        assert_eq!(get(&h, "vary"), Some("Accept, Origin"));
        assert!(get(&h, "refresh").is_none());
        let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(problem["status"], 503);
        let other = HeaderValue::from_static("https://evil.test");
        let (h, _) = maintenance(&s, Answer::Problem, &settings(policy), Some(&other), 0).unwrap();
        assert!(get(&h, "access-control-allow-origin").is_none());
    }

    #[test]
    fn retry_after_is_capped_at_a_day() {
        let s = state(r#"{"mode":"maintenance","until":"9999-12-31T23:59:59Z"}"#);
        for answer in [Answer::Page, Answer::Problem] {
            let (h, _) =
                maintenance(&s, answer, &settings(CorsPolicy::None), None, 1_800_000_000).unwrap();
            assert_eq!(get(&h, "retry-after"), Some("86400"));
        }
        let (h, _) = maintenance(
            &s,
            Answer::Page,
            &settings(CorsPolicy::None),
            None,
            1_800_000_000,
        )
        .unwrap();
        assert_eq!(get(&h, "refresh"), Some("120"));
        // The default applies the same cap.
        let mut long_default = settings(CorsPolicy::None);
        long_default.default_retry_after = Duration::from_secs(7 * 24 * 3600);
        let open_ended = state(r#"{"mode":"maintenance"}"#);
        let (h, _) = maintenance(&open_ended, Answer::Problem, &long_default, None, 0).unwrap();
        assert_eq!(get(&h, "retry-after"), Some("86400"));
    }

    #[test]
    fn upstream_timeouts_are_504_other_upstream_failures_502() {
        let up = |etype| *Error::new(etype).into_up();
        let down = |etype| *Error::new(etype).into_down();
        assert_eq!(failure_status(&up(ErrorType::ReadTimedout)), 504);
        assert_eq!(failure_status(&up(ErrorType::ConnectTimedout)), 504);
        assert_eq!(failure_status(&up(ErrorType::WriteTimedout)), 504);
        assert_eq!(failure_status(&up(ErrorType::ConnectRefused)), 502);
        assert_eq!(failure_status(&up(ErrorType::ConnectionClosed)), 502);
        assert_eq!(failure_status(&up(ErrorType::InvalidHTTPHeader)), 502);
        assert_eq!(
            failure_status(&Error::explain(
                ErrorType::HTTPStatus(502),
                "no healthy server"
            )),
            502
        );
        // A slow or vanished client is not a gateway failure: a body that stopped coming is
        // 408, a request that cannot be read 400.
        assert_eq!(failure_status(&down(ErrorType::ReadTimedout)), 408);
        assert_eq!(failure_status(&down(ErrorType::InvalidHTTPHeader)), 400);
        assert_eq!(failure_status(&down(ErrorType::ConnectionClosed)), 0);
        assert_eq!(failure_status(&Error::new(ErrorType::InternalError)), 500);
    }

    #[test]
    fn failures_answer_in_the_route_form_without_the_planned_outage_header() {
        let (h, body) = failure(504, Answer::Problem).unwrap();
        assert_eq!(h.status.as_u16(), 504);
        assert_eq!(get(&h, "content-type"), Some("application/problem+json"));
        assert_eq!(get(&h, "cache-control"), Some("no-store"));
        assert_eq!(get(&h, OUTAGE_HEADER), None);
        assert_eq!(
            get(&h, "content-length"),
            Some(body.len().to_string().as_str())
        );
        let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(problem["status"], 504);
        assert_eq!(problem["title"], "Gateway Timeout");
        assert_eq!(problem["type"], "urn:drawbridge:problem:upstream-timeout");

        let (h, body) = failure(502, Answer::Page).unwrap();
        assert_eq!(h.status.as_u16(), 502);
        assert_eq!(get(&h, "content-type"), Some("text/html; charset=utf-8"));
        let page = std::str::from_utf8(&body).unwrap();
        assert!(page.contains("<title>Bad Gateway</title>"), "{page}");

        let (h, body) = failure(500, Answer::Problem).unwrap();
        assert_eq!(h.status.as_u16(), 500);
        let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(problem["title"], "Internal Server Error");
    }

    #[test]
    fn preflight_allows_what_was_asked() {
        let origin = HeaderValue::from_static("https://partner.test");
        let method = HeaderValue::from_static("POST");
        let h = preflight(Some(&origin), Some(&method), None).unwrap();
        assert_eq!(h.status.as_u16(), 204);
        assert_eq!(
            get(&h, "access-control-allow-origin"),
            Some("https://partner.test")
        );
        assert_eq!(get(&h, "access-control-allow-methods"), Some("POST"));
        assert!(get(&h, "access-control-allow-headers").is_none());
    }

    #[test]
    fn each_decision_gets_its_response() {
        let s = state(r#"{"mode":"maintenance"}"#);
        let windows = ArcSwap::from_pointee(WindowsState::nothing(&Announcer {
            announce_before: Duration::from_secs(3600),
            key: "test/windows".into(),
            metrics: std::sync::Arc::new(crate::metrics::Metrics::new().unwrap()),
        }));
        let settings = settings(CorsPolicy::None);
        let req = request(
            http::Method::OPTIONS,
            "/",
            &[
                ("origin", "https://partner.test"),
                ("access-control-request-method", "PUT"),
            ],
        );
        let facts = RequestFacts::from_request(&req, None);
        let status = |decision| {
            response_for(decision, &s, &windows, &facts, &settings, || 0)
                .unwrap()
                .map(|(h, _)| h.status.as_u16())
        };
        let answer = Answer::Problem;
        assert_eq!(status(Decision::Pass { route: 0 }), None);
        assert_eq!(status(Decision::NoRoute), Some(404));
        assert_eq!(status(Decision::WellKnown(WellKnown::State)), Some(200));
        assert_eq!(status(Decision::WellKnown(WellKnown::Calendar)), Some(200));
        assert_eq!(status(Decision::WellKnown(WellKnown::Banner)), Some(204));
        assert_eq!(status(Decision::Preflight { route: 0 }), Some(204));
        assert_eq!(
            status(Decision::RefusedPreflight { route: 0, answer }),
            Some(503)
        );
        assert_eq!(
            status(Decision::Maintenance { route: 0, answer }),
            Some(503)
        );
    }
}
