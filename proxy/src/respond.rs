//! The answers the proxy writes itself for a `Decision`: the maintenance page or problem body,
//! the well-known state document, CORS preflights and "no route". Pure functions from state to
//! header and body.
//! Headers are built without case preservation (names go out in lower case, as HTTP allows):
//! that halves the cost of building one (benches/micro/respond.rs).

use crate::config::MaintenanceSettings;
use crate::decide::{Answer, Decision};
use crate::facts::{allowed_origin, RequestFacts};
use crate::gate_state::GateState;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::Result;

/// The header that tells monitors an outage is planned, not a failure.
pub const OUTAGE_HEADER: &str = "x-drawbridge-outage";

const HTML: HeaderValue = HeaderValue::from_static("text/html; charset=utf-8");
const PROBLEM_JSON: HeaderValue = HeaderValue::from_static("application/problem+json");
const JSON: HeaderValue = HeaderValue::from_static("application/json");
const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");
const EXPOSED: HeaderValue = HeaderValue::from_static("Retry-After, X-Drawbridge-Outage");

/// The response the proxy writes itself for `decision`, or `None` when the request goes to the
/// route's pool. `now_unix` is read only for a maintenance response.
///
/// # Errors
/// As [`maintenance`].
pub fn response_for(
    decision: Decision,
    state: &GateState,
    facts: &RequestFacts<'_>,
    settings: &MaintenanceSettings,
    now_unix: impl FnOnce() -> i64,
) -> Result<Option<(ResponseHeader, Bytes)>> {
    let response = match decision {
        Decision::Pass { .. } | Decision::Bypass { .. } => return Ok(None),
        Decision::NoRoute => no_route()?,
        Decision::WellKnown => well_known(state, settings, facts.origin())?,
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
/// to `until`, `no-store`, and CORS for allowed origins.
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
    let retry_after = state.retry_after_secs(now_unix, settings.default_retry_after.as_secs());
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

/// `GET /.well-known/maintenance`: the gate state as JSON, never cached.
///
/// # Errors
/// As [`maintenance`].
pub fn well_known(
    state: &GateState,
    settings: &MaintenanceSettings,
    origin: Option<&HeaderValue>,
) -> Result<(ResponseHeader, Bytes)> {
    let body = state.well_known_json.clone();
    let mut h = ResponseHeader::build_no_case(200, Some(5))?;
    h.insert_header(header::CONTENT_TYPE, JSON)?;
    h.insert_header(header::CONTENT_LENGTH, HeaderValue::from(body.len()))?;
    h.insert_header(header::CACHE_CONTROL, NO_STORE)?;
    if let Some(origin) = allowed_origin(&settings.cors, origin) {
        h.insert_header(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone())?;
        h.insert_header(header::VARY, HeaderValue::from_static("Origin"))?;
    }
    Ok((h, body))
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::CorsPolicy;
    use crate::facts::tests::request;
    use crate::gate_state::{StateBuilder, StateSource};
    use crate::page::PageTemplate;
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
            response_for(decision, &s, &facts, &settings, || 0)
                .unwrap()
                .map(|(h, _)| h.status.as_u16())
        };
        let answer = Answer::Problem;
        assert_eq!(status(Decision::Pass { route: 0 }), None);
        assert_eq!(status(Decision::NoRoute), Some(404));
        assert_eq!(status(Decision::WellKnown), Some(200));
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
