//! The gate's decision for one request, as a pure function of the gate state, the route and the
//! request's facts: pass, bypass, or answer with the maintenance response.

use crate::config::{BypassSettings, RouteKind, RouteSettings};
use crate::facts::is_in;
use drawbridge_core::gate::Mode;
use http::Method;
use std::net::IpAddr;

/// The path every route answers with the gate state.
pub const WELL_KNOWN_PATH: &str = "/.well-known/maintenance";

/// What happens to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// No route matches: 404 from the proxy.
    NoRoute,
    /// `GET /.well-known/maintenance`: the gate state as JSON, from the proxy.
    WellKnown,
    /// The gate is open for this request: proxy it.
    Pass,
    /// The gate is closed but this client may pass.
    Bypass(BypassVia),
    /// A CORS preflight while closed: answered by the proxy so browser code can read the 503;
    /// for an origin CORS does not allow, the maintenance response in this form.
    Preflight(Answer),
    /// The gate is closed: the maintenance response in this form.
    Maintenance(Answer),
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

/// What the gate looks at in a request.
#[derive(Debug)]
pub struct RequestFacts<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    /// `None` when a trusted proxy forwarded an address that does not parse.
    pub client_ip: Option<IpAddr>,
    pub prefers_json: bool,
    /// An OPTIONS request with `Origin` and `Access-Control-Request-Method`.
    pub is_preflight: bool,
    /// The bypass token from the header or the cookie.
    pub token: Option<&'a str>,
}

/// The routes, matched most specific first.
#[derive(Debug)]
pub struct Router {
    /// Route indexes, most specific first: routes naming hosts before any-host routes, then by
    /// longer path prefix.
    order: Vec<usize>,
}

impl Router {
    /// Orders the routes once.
    pub fn new(routes: &[RouteSettings]) -> Router {
        let mut order: Vec<usize> = (0..routes.len()).collect();
        order.sort_by_key(|&i| {
            let r = &routes[i];
            (
                r.hosts.is_empty(),
                std::cmp::Reverse(r.path_prefix.len()),
                i,
            )
        });
        Router { order }
    }

    /// The index of the route for this host (port ignored) and path.
    pub fn find(&self, routes: &[RouteSettings], host: Option<&str>, path: &str) -> Option<usize> {
        let host = host.map(strip_port);
        self.order.iter().copied().find(|&i| {
            let r = &routes[i];
            let host_ok = r.hosts.is_empty()
                || host.is_some_and(|h| r.hosts.iter().any(|rh| rh.eq_ignore_ascii_case(h)));
            host_ok && path.starts_with(&r.path_prefix)
        })
    }
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Whether a method only reads (passes a read-only gate).
pub fn is_safe_method(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Decides what happens to a request on `route` while the route's gate `mode` applies.
///
/// `token_is_valid` is asked only when the gate is closed and no address bypass applies, so open
/// gates never pay for token verification.
pub fn decide(
    mode: Mode,
    route: &RouteSettings,
    facts: &RequestFacts<'_>,
    bypass: &BypassSettings,
    token_is_valid: impl FnOnce(&str) -> bool,
) -> Decision {
    let closed = match mode {
        Mode::Normal => false,
        Mode::Maintenance => true,
        Mode::ReadOnly => !is_safe_method(facts.method),
    };
    if !closed
        || route
            .exempt_paths
            .iter()
            .any(|p| facts.path.starts_with(p.as_str()))
    {
        return Decision::Pass;
    }
    if facts
        .client_ip
        .is_some_and(|ip| is_in(ip, &bypass.trusted_cidrs))
    {
        return Decision::Bypass(BypassVia::Cidr);
    }
    if facts.token.is_some_and(token_is_valid) {
        return Decision::Bypass(BypassVia::Token);
    }
    let answer = if route.kind == RouteKind::Api || facts.prefers_json {
        Answer::Problem
    } else {
        Answer::Page
    };
    if facts.is_preflight {
        return Decision::Preflight(answer);
    }
    Decision::Maintenance(answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn route(name: &str, hosts: &[&str], prefix: &str, kind: RouteKind) -> RouteSettings {
        RouteSettings {
            name: name.into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            path_prefix: prefix.into(),
            kind,
            pool: 0,
            exempt_paths: vec!["/.well-known/acme-challenge/".into()],
        }
    }

    fn bypass() -> BypassSettings {
        BypassSettings {
            trusted_cidrs: vec!["10.9.0.0/16".parse().unwrap()],
            trusted_proxies: vec![],
            header: http::HeaderName::from_static("x-drawbridge-bypass"),
            cookie: "drawbridge_bypass".into(),
            environment: "test".into(),
            max_ttl: Duration::from_secs(3600),
            keyring: None,
        }
    }

    fn facts<'a>(method: &'a Method, path: &'a str) -> RequestFacts<'a> {
        RequestFacts {
            method,
            path,
            client_ip: Some("192.0.2.1".parse().unwrap()),
            prefers_json: false,
            is_preflight: false,
            token: None,
        }
    }

    fn never(_: &str) -> bool {
        false
    }

    #[test]
    fn most_specific_route_wins() {
        let routes = vec![
            route("ui", &[], "/", RouteKind::Page),
            route("api", &[], "/api/", RouteKind::Api),
            route("admin", &["www.example.com"], "/", RouteKind::Page),
        ];
        let router = Router::new(&routes);
        assert_eq!(router.find(&routes, Some("x.test"), "/api/v1"), Some(1));
        assert_eq!(router.find(&routes, Some("x.test"), "/home"), Some(0));
        assert_eq!(
            router.find(&routes, Some("WWW.example.com:8443"), "/api/v1"),
            Some(2)
        );
        assert_eq!(router.find(&routes, None, "/api/v1"), Some(1));
        let only_api = vec![route("api", &["api.test"], "/v1/", RouteKind::Api)];
        assert_eq!(
            Router::new(&only_api).find(&only_api, Some("api.test"), "/"),
            None
        );
    }

    #[test]
    fn decisions_by_mode_method_and_route_kind() {
        let page = route("ui", &[], "/", RouteKind::Page);
        let api = route("api", &[], "/api/", RouteKind::Api);
        let b = bypass();
        let get = Method::GET;
        let post = Method::POST;
        use Decision::*;
        let cases = [
            (Mode::Normal, &page, &post, "/x", Pass),
            (
                Mode::Maintenance,
                &page,
                &get,
                "/x",
                Maintenance(Answer::Page),
            ),
            (
                Mode::Maintenance,
                &api,
                &get,
                "/api/x",
                Maintenance(Answer::Problem),
            ),
            (Mode::ReadOnly, &api, &get, "/api/x", Pass),
            (
                Mode::ReadOnly,
                &api,
                &post,
                "/api/x",
                Maintenance(Answer::Problem),
            ),
            (
                Mode::Maintenance,
                &page,
                &get,
                "/.well-known/acme-challenge/t",
                Pass,
            ),
        ];
        for (mode, route, method, path, expected) in cases {
            assert_eq!(
                decide(mode, route, &facts(method, path), &b, never),
                expected,
                "{mode:?} {method} {path}"
            );
        }
    }

    #[test]
    fn page_routes_answer_json_to_clients_that_prefer_it() {
        let page = route("ui", &[], "/", RouteKind::Page);
        let get = Method::GET;
        let f = RequestFacts {
            prefers_json: true,
            ..facts(&get, "/x")
        };
        assert_eq!(
            decide(Mode::Maintenance, &page, &f, &bypass(), never),
            Decision::Maintenance(Answer::Problem)
        );
    }

    #[test]
    fn trusted_addresses_and_valid_tokens_bypass() {
        let page = route("ui", &[], "/", RouteKind::Page);
        let get = Method::GET;
        let trusted = RequestFacts {
            client_ip: Some("10.9.1.1".parse().unwrap()),
            ..facts(&get, "/")
        };
        assert_eq!(
            decide(Mode::Maintenance, &page, &trusted, &bypass(), never),
            Decision::Bypass(BypassVia::Cidr)
        );
        let unknown = RequestFacts {
            client_ip: None,
            ..facts(&get, "/")
        };
        assert_eq!(
            decide(Mode::Maintenance, &page, &unknown, &bypass(), never),
            Decision::Maintenance(Answer::Page)
        );
        let with_token = RequestFacts {
            token: Some("t"),
            ..facts(&get, "/")
        };
        assert_eq!(
            decide(Mode::Maintenance, &page, &with_token, &bypass(), |t| t
                == "t"),
            Decision::Bypass(BypassVia::Token)
        );
        assert_eq!(
            decide(Mode::Maintenance, &page, &with_token, &bypass(), never),
            Decision::Maintenance(Answer::Page)
        );
    }

    #[test]
    fn open_gates_never_check_tokens() {
        let page = route("ui", &[], "/", RouteKind::Page);
        let get = Method::GET;
        let f = RequestFacts {
            token: Some("t"),
            ..facts(&get, "/")
        };
        let checked = std::cell::Cell::new(false);
        decide(Mode::Normal, &page, &f, &bypass(), |_| {
            checked.set(true);
            true
        });
        assert!(!checked.get());
    }
}
