//! `Router`: the configured routes, and which of them a request's host and path belong to (the
//! most specific one).

use crate::config::RouteSettings;

/// The routes, matched most specific first.
#[derive(Debug)]
pub struct Router {
    routes: Vec<RouteSettings>,
    /// Route indexes, most specific first: routes naming hosts before any-host routes, then by
    /// longer path prefix.
    order: Vec<usize>,
}

impl Router {
    /// Takes the routes and orders them once.
    pub fn new(routes: Vec<RouteSettings>) -> Router {
        let mut order: Vec<usize> = (0..routes.len()).collect();
        order.sort_by_key(|&i| {
            let r = &routes[i];
            (
                r.hosts.is_empty(),
                std::cmp::Reverse(r.path_prefix.len()),
                i,
            )
        });
        Router { routes, order }
    }

    /// The index of the route for this host (port ignored) and path.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<usize> {
        let host = host.map(strip_port);
        self.order.iter().copied().find(|&i| {
            let r = &self.routes[i];
            let host_ok = r.hosts.is_empty()
                || host.is_some_and(|h| r.hosts.iter().any(|rh| rh.eq_ignore_ascii_case(h)));
            host_ok && path.starts_with(&r.path_prefix)
        })
    }

    /// The route at `index`, an index `find` returned (the config's order).
    pub fn route(&self, index: usize) -> &RouteSettings {
        &self.routes[index]
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RouteKind;

    fn route(name: &str, hosts: &[&str], prefix: &str) -> RouteSettings {
        RouteSettings {
            name: name.into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            path_prefix: prefix.into(),
            kind: RouteKind::Page,
            pool: 0,
            exempt_paths: Vec::new(),
        }
    }

    #[test]
    fn most_specific_route_wins() {
        let router = Router::new(vec![
            route("ui", &[], "/"),
            route("api", &[], "/api/"),
            route("admin", &["www.example.com"], "/"),
        ]);
        assert_eq!(router.find(Some("x.test"), "/api/v1"), Some(1));
        assert_eq!(router.find(Some("x.test"), "/home"), Some(0));
        assert_eq!(
            router.find(Some("WWW.example.com:8443"), "/api/v1"),
            Some(2)
        );
        assert_eq!(router.find(None, "/api/v1"), Some(1));
        assert_eq!(router.route(2).name, "admin");
        let only_api = Router::new(vec![route("api", &["api.test"], "/v1/")]);
        assert_eq!(only_api.find(Some("api.test"), "/"), None);
    }
}
