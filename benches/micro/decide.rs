//! The gate decision a request pays for on the proxy's request path: `decide` in each outcome
//! (open gate, maintenance page and problem, CIDR and token bypass), which finds the route and
//! reads the request's facts as far as the outcome needs, plus the parsers of the facts that cost
//! most (client address behind trusted proxies, cookie, `Accept`). Compared with a whole proxied
//! request (tens of µs of CPU in the load bench), each should stay well under a microsecond;
//! token verification (an HMAC) is the one allowed to cost more.

use criterion::{criterion_group, criterion_main, Criterion};
use drawbridge::decide::{decide, Answer, BypassVia, Decision};
use drawbridge::facts::{client_ip, cookie_value, prefers_json, RequestFacts};
use http::{header, Method};
use pingora::http::RequestHeader;
use std::hint::black_box;
use std::net::IpAddr;

use drawbridge_benches::{Fixture, ENVIRONMENT, NOW};

/// A GET for `path` on the fixture's host, with `token` in the bypass header.
fn request(f: &Fixture, path: &str, token: Option<&str>) -> RequestHeader {
    let mut req = RequestHeader::build(Method::GET, path.as_bytes(), None).expect("a request");
    req.insert_header(header::HOST, "shop.example.com")
        .expect("a host");
    if let Some(token) = token {
        req.insert_header(f.config.bypass.header.clone(), token)
            .expect("a token header");
    }
    req
}

fn bench_decide(c: &mut Criterion) {
    let f = Fixture::set_up();
    let bypass = &f.config.bypass;
    let cors = &f.config.maintenance.cors;
    let keyring = bypass.keyring.as_ref().expect("the fixture has a key");
    let open = f.state(r#"{"mode":"normal"}"#);
    let closed = f.state(r#"{"mode":"maintenance"}"#);
    let (api, ui) = (0, 1);
    let cases = [
        (
            "open gate",
            &open,
            request(&f, "/orders/7", None),
            "198.51.100.7",
            Decision::Pass { route: ui },
        ),
        (
            "maintenance page",
            &closed,
            request(&f, "/orders/7", None),
            "198.51.100.7",
            Decision::Maintenance {
                route: ui,
                answer: Answer::Page,
            },
        ),
        (
            "maintenance problem",
            &closed,
            request(&f, "/api/orders/7", None),
            "198.51.100.7",
            Decision::Maintenance {
                route: api,
                answer: Answer::Problem,
            },
        ),
        (
            "cidr bypass",
            &closed,
            request(&f, "/orders/7", None),
            "10.9.1.2",
            Decision::Bypass {
                route: ui,
                via: BypassVia::Cidr,
            },
        ),
        (
            "token bypass",
            &closed,
            request(&f, "/orders/7", Some(&f.token)),
            "198.51.100.7",
            Decision::Bypass {
                route: ui,
                via: BypassVia::Token,
            },
        ),
    ];
    let mut group = c.benchmark_group("decide");
    for (name, state, req, client, expected) in &cases {
        let peer: IpAddr = client.parse().expect("an address");
        let verify = |token: &str| {
            keyring
                .verify(token, ENVIRONMENT, NOW, bypass.max_ttl)
                .is_ok()
        };
        let facts = RequestFacts::from_request(req, Some(peer));
        assert_eq!(
            decide(state, &f.router, &facts, bypass, cors, verify),
            *expected,
            "{name}: the fixture does not lead where the bench says"
        );
        group.bench_function(*name, |b| {
            b.iter(|| {
                let facts = RequestFacts::from_request(black_box(req), black_box(Some(peer)));
                decide(state, &f.router, &facts, bypass, cors, verify)
            })
        });
    }
    group.finish();
}

fn bench_facts(c: &mut Criterion) {
    let f = Fixture::set_up();
    let proxies = &f.config.bypass.trusted_proxies;
    let peer: IpAddr = "192.168.0.10".parse().expect("an address");
    let forwarded: [&[u8]; 1] = [b"203.0.113.9, 192.168.4.2"];
    assert_eq!(
        client_ip(peer, forwarded.iter().copied(), proxies),
        Some("203.0.113.9".parse().expect("an address"))
    );
    let cookies: [&[u8]; 1] = [b"session=abc123; theme=dark; drawbridge_bypass=dbt1.k1.x.y"];
    let accept = b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    let mut group = c.benchmark_group("facts");
    group.bench_function("client_ip behind trusted proxies", |b| {
        b.iter(|| {
            client_ip(
                black_box(peer),
                black_box(forwarded).iter().copied(),
                proxies,
            )
        })
    });
    group.bench_function("bypass cookie among three", |b| {
        b.iter(|| cookie_value(black_box(cookies).iter().copied(), "drawbridge_bypass"))
    });
    group.bench_function("prefers_json of a browser Accept", |b| {
        b.iter(|| prefers_json(Some(black_box(&accept[..]))))
    });
    group.finish();
}

criterion_group!(benches, bench_decide, bench_facts);
criterion_main!(benches);
