//! The gate's decision for one request, as a pure function of the gate state, the routes and the
//! request's facts: an answer from the proxy (no route, the well-known document, a preflight, the
//! maintenance response), or pass and bypass to the route's pool.

use crate::config::{BypassSettings, CorsPolicy, RouteKind};
use crate::facts::{allowed_origin, is_in, RequestFacts};
use crate::gate_state::GateState;
use crate::router::Router;
use drawbridge_core::gate::Mode;
use http::Method;

/// The path every route answers with the gate state and the coming windows.
pub const WELL_KNOWN_PATH: &str = "/.well-known/maintenance";
/// The path of the windows' iCalendar feed.
pub const CALENDAR_PATH: &str = "/.well-known/maintenance.ics";
/// The path of the banner fragment of the window announced.
pub const BANNER_PATH: &str = "/.well-known/maintenance/banner";

/// A document every host answers from the proxy itself, open gate or closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WellKnown {
    /// The gate state and the coming windows, as JSON.
    State,
    /// Every window, as an iCalendar feed.
    Calendar,
    /// The banner fragment of the window announced (204 without one).
    Banner,
}

impl WellKnown {
    /// The document at `path`, if it is one.
    pub fn of(path: &str) -> Option<WellKnown> {
        match path {
            WELL_KNOWN_PATH => Some(WellKnown::State),
            CALENDAR_PATH => Some(WellKnown::Calendar),
            BANNER_PATH => Some(WellKnown::Banner),
            _ => None,
        }
    }
}

/// What happens to a request. Once a route matches, the decision names it (its index in the
/// `Router`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// No route matches: 404 from the proxy.
    NoRoute,
    /// `GET` of a [`WellKnown`] document, from the proxy.
    WellKnown(WellKnown),
    /// The gate is open for this request: proxy it.
    Pass { route: usize },
    /// The gate is closed but this client may pass.
    Bypass { route: usize, via: BypassVia },
    /// A CORS preflight from an allowed origin while closed: answered by the proxy so browser
    /// code can read the 503.
    Preflight { route: usize },
    /// A CORS preflight from an origin CORS does not allow while closed: the maintenance response
    /// in this form (counted as a preflight, not as a maintenance response).
    RefusedPreflight { route: usize, answer: Answer },
    /// The gate is closed: the maintenance response in this form.
    Maintenance { route: usize, answer: Answer },
}

impl Decision {
    /// The route the decision was made for, if one matched.
    pub fn route(self) -> Option<usize> {
        match self {
            Decision::NoRoute | Decision::WellKnown(_) => None,
            Decision::Pass { route }
            | Decision::Bypass { route, .. }
            | Decision::Preflight { route }
            | Decision::RefusedPreflight { route, .. }
            | Decision::Maintenance { route, .. } => Some(route),
        }
    }

    /// The name used in access logs.
    pub fn label(self) -> &'static str {
        match self {
            Decision::NoRoute => "no_route",
            Decision::WellKnown(_) => "well_known",
            Decision::Pass { .. } => "pass",
            Decision::Bypass {
                via: BypassVia::Cidr,
                ..
            } => "bypass_cidr",
            Decision::Bypass {
                via: BypassVia::Token,
                ..
            } => "bypass_token",
            Decision::Preflight { .. } | Decision::RefusedPreflight { .. } => "preflight",
            Decision::Maintenance { .. } => "maintenance",
        }
    }
}

/// Why a closed gate let a request through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BypassVia {
    /// The client address is in `bypass.trusted_cidrs`.
    Cidr,
    /// The request carries a valid bypass token.
    Token,
}

impl BypassVia {
    /// The name used in the response header and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            BypassVia::Cidr => "cidr",
            BypassVia::Token => "token",
        }
    }
}

/// The form of a maintenance response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The friendly HTML page.
    Page,
    /// RFC 9457 `application/problem+json`.
    Problem,
}

impl Answer {
    /// The name used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Answer::Page => "page",
            Answer::Problem => "problem",
        }
    }
}

/// Whether a method only reads (passes a read-only gate).
pub fn is_safe_method(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Decides what happens to a request under gate `state`.
///
/// The facts that cost something are read only as far as the decision needs them, and
/// `token_is_valid` is asked only when the gate is closed and no address bypass applies, so open
/// gates never pay for them.
pub fn decide(
    state: &GateState,
    router: &Router,
    facts: &RequestFacts<'_>,
    bypass: &BypassSettings,
    cors: &CorsPolicy,
    token_is_valid: impl FnOnce(&str) -> bool,
) -> Decision {
    if let Some(document) = WellKnown::of(facts.path) {
        if matches!(*facts.method, Method::GET | Method::HEAD) {
            return Decision::WellKnown(document);
        }
    }
    let Some(route) = router.find(facts.host, facts.path) else {
        return Decision::NoRoute;
    };
    let settings = router.route(route);
    let closed = match state.mode_for(route) {
        Mode::Normal => false,
        Mode::Maintenance => true,
        Mode::ReadOnly => !is_safe_method(facts.method),
    };
    if !closed
        || settings
            .exempt_paths
            .iter()
            .any(|p| facts.path.starts_with(p.as_str()))
    {
        return Decision::Pass { route };
    }
    if facts
        .client_ip(&bypass.trusted_proxies)
        .is_some_and(|ip| is_in(ip, &bypass.trusted_cidrs))
    {
        return Decision::Bypass {
            route,
            via: BypassVia::Cidr,
        };
    }
    if facts
        .token(bypass)
        .is_some_and(|token| token_is_valid(token.value))
    {
        return Decision::Bypass {
            route,
            via: BypassVia::Token,
        };
    }
    let answer = if settings.kind == RouteKind::Api || facts.prefers_json() {
        Answer::Problem
    } else {
        Answer::Page
    };
    if facts.is_preflight() {
        return if allowed_origin(cors, facts.origin()).is_some() {
            Decision::Preflight { route }
        } else {
            Decision::RefusedPreflight { route, answer }
        };
    }
    Decision::Maintenance { route, answer }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RouteSettings;
    use crate::facts::tests::{bypass, request};
    use crate::respond::tests::state;
    use pingora::http::RequestHeader;
    use std::net::IpAddr;
    use Decision::*;

    const UI: usize = 0;
    const API: usize = 1;

    fn router() -> Router {
        let route = |name: &str, prefix: &str, kind| RouteSettings {
            name: name.into(),
            hosts: Vec::new(),
            path_prefix: prefix.into(),
            kind,
            pool: 0,
            exempt_paths: vec!["/.well-known/acme-challenge/".into()],
        };
        Router::new(vec![
            route("ui", "/", RouteKind::Page),
            route("api", "/api/", RouteKind::Api),
        ])
    }

    /// The gate state in `mode`.
    fn gate(mode: &str) -> GateState {
        state(&format!(r#"{{"mode":"{mode}"}}"#))
    }

    /// The maintenance response on `route` as the page, or as the problem.
    fn page(route: usize) -> Decision {
        Maintenance {
            route,
            answer: Answer::Page,
        }
    }

    fn problem(route: usize) -> Decision {
        Maintenance {
            route,
            answer: Answer::Problem,
        }
    }

    /// The decision for `req` from client `client`, with tokens valid when `token_is_valid`.
    fn decide_for(
        mode: &str,
        req: &RequestHeader,
        client: Option<&str>,
        token_is_valid: impl FnOnce(&str) -> bool,
    ) -> Decision {
        let peer = client.map(|c| c.parse::<IpAddr>().unwrap());
        let facts = RequestFacts::from_request(req, peer);
        let cors = CorsPolicy::Origins(vec!["https://partner.test".into()]);
        decide(
            &gate(mode),
            &router(),
            &facts,
            &bypass(),
            &cors,
            token_is_valid,
        )
    }

    fn never(_: &str) -> bool {
        false
    }

    #[test]
    fn decisions_by_mode_method_and_route_kind() {
        let cases = [
            ("normal", Method::POST, "/x", Pass { route: UI }),
            ("maintenance", Method::GET, "/x", page(UI)),
            ("maintenance", Method::GET, "/api/x", problem(API)),
            ("read_only", Method::GET, "/api/x", Pass { route: API }),
            ("read_only", Method::POST, "/api/x", problem(API)),
            (
                "maintenance",
                Method::GET,
                "/.well-known/acme-challenge/t",
                Pass { route: UI },
            ),
            (
                "maintenance",
                Method::GET,
                WELL_KNOWN_PATH,
                WellKnown(super::WellKnown::State),
            ),
            (
                "normal",
                Method::HEAD,
                WELL_KNOWN_PATH,
                WellKnown(super::WellKnown::State),
            ),
            (
                "maintenance",
                Method::GET,
                CALENDAR_PATH,
                WellKnown(super::WellKnown::Calendar),
            ),
            (
                "maintenance",
                Method::GET,
                BANNER_PATH,
                WellKnown(super::WellKnown::Banner),
            ),
            ("maintenance", Method::POST, WELL_KNOWN_PATH, page(UI)),
            (
                "maintenance",
                Method::GET,
                "/.well-known/maintenance/",
                page(UI),
            ),
        ];
        for (mode, method, path, expected) in cases {
            let req = request(method.clone(), path, &[]);
            assert_eq!(
                decide_for(mode, &req, Some("192.0.2.1"), never),
                expected,
                "{mode} {method} {path}"
            );
        }
    }

    #[test]
    fn requests_no_route_matches_are_decided_before_the_gate() {
        let router = Router::new(Vec::new());
        let req = request(Method::GET, "/x", &[]);
        let facts = RequestFacts::from_request(&req, None);
        let decision = decide(
            &gate("maintenance"),
            &router,
            &facts,
            &bypass(),
            &CorsPolicy::None,
            never,
        );
        assert_eq!(decision, NoRoute);
        assert_eq!(decision.route(), None);
    }

    #[test]
    fn page_routes_answer_json_to_clients_that_prefer_it() {
        let req = request(Method::GET, "/x", &[("accept", "application/json")]);
        assert_eq!(
            decide_for("maintenance", &req, Some("192.0.2.1"), never),
            problem(UI)
        );
    }

    #[test]
    fn trusted_addresses_and_valid_tokens_bypass() {
        let plain = request(Method::GET, "/", &[]);
        assert_eq!(
            decide_for("maintenance", &plain, Some("10.9.1.1"), never),
            Bypass {
                route: UI,
                via: BypassVia::Cidr
            }
        );
        assert_eq!(decide_for("maintenance", &plain, None, never), page(UI));
        let with_token = request(Method::GET, "/", &[("x-drawbridge-bypass", "t")]);
        assert_eq!(
            decide_for("maintenance", &with_token, Some("192.0.2.1"), |t| t == "t"),
            Bypass {
                route: UI,
                via: BypassVia::Token
            }
        );
        assert_eq!(
            decide_for("maintenance", &with_token, Some("192.0.2.1"), never),
            page(UI)
        );
    }

    #[test]
    fn open_gates_never_check_tokens() {
        let req = request(Method::GET, "/", &[("x-drawbridge-bypass", "t")]);
        let checked = std::cell::Cell::new(false);
        decide_for("normal", &req, Some("192.0.2.1"), |_| {
            checked.set(true);
            true
        });
        assert!(!checked.get());
    }

    #[test]
    fn preflights_from_allowed_origins_are_answered_others_get_the_maintenance_response() {
        let preflight = |origin| {
            request(
                Method::OPTIONS,
                "/api/x",
                &[
                    ("origin", origin),
                    ("access-control-request-method", "POST"),
                ],
            )
        };
        let allowed = preflight("https://partner.test");
        assert_eq!(
            decide_for("maintenance", &allowed, Some("192.0.2.1"), never),
            Preflight { route: API }
        );
        let other = preflight("https://evil.test");
        let refused = decide_for("maintenance", &other, Some("192.0.2.1"), never);
        assert_eq!(
            refused,
            RefusedPreflight {
                route: API,
                answer: Answer::Problem
            }
        );
        assert_eq!(refused.label(), "preflight");
        assert_eq!(
            decide_for("read_only", &other, Some("192.0.2.1"), never),
            Pass { route: API }
        );
    }

    #[test]
    fn labels_name_each_decision() {
        let via = |via| Bypass { route: UI, via };
        let labels = [
            (NoRoute, "no_route"),
            (WellKnown(super::WellKnown::Calendar), "well_known"),
            (Pass { route: UI }, "pass"),
            (via(BypassVia::Cidr), "bypass_cidr"),
            (via(BypassVia::Token), "bypass_token"),
            (Preflight { route: UI }, "preflight"),
            (page(UI), "maintenance"),
        ];
        for (decision, label) in labels {
            assert_eq!(decision.label(), label);
        }
    }
}
