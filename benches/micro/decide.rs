//! The gate decision a request pays for on the proxy's request path: finding the route, then
//! `decide` in each outcome (open gate, maintenance page and problem, CIDR and token bypass),
//! plus the facts it reads (client address behind trusted proxies, cookie, `Accept`). Compared
//! with a whole proxied request (tens of µs of CPU in the load bench), each should stay well
//! under a microsecond; token verification (an HMAC) is the one allowed to cost more.

use criterion::{criterion_group, criterion_main, Criterion};
use drawbridge::decide::{decide, Decision, RequestFacts};
use drawbridge::facts::{client_ip, cookie_value, prefers_json};
use drawbridge_core::gate::Mode;
use http::Method;
use std::hint::black_box;
use std::net::IpAddr;

use drawbridge_benches::{Fixture, ENVIRONMENT, NOW};

fn facts<'a>(
    method: &'a Method,
    path: &'a str,
    client: &str,
    token: Option<&'a str>,
) -> RequestFacts<'a> {
    RequestFacts {
        method,
        path,
        client_ip: Some(client.parse().expect("an address")),
        prefers_json: false,
        is_preflight: false,
        token,
    }
}

fn bench_decide(c: &mut Criterion) {
    let f = Fixture::set_up();
    let routes = &f.config.routes;
    let bypass = &f.config.bypass;
    let keyring = bypass.keyring.as_ref().expect("the fixture has a key");
    let get = Method::GET;
    let cases: [(&str, Mode, RequestFacts<'_>, Decision); 5] = [
        (
            "open gate",
            Mode::Normal,
            facts(&get, "/orders/7", "198.51.100.7", None),
            Decision::Pass,
        ),
        (
            "maintenance page",
            Mode::Maintenance,
            facts(&get, "/orders/7", "198.51.100.7", None),
            Decision::Maintenance(drawbridge::decide::Answer::Page),
        ),
        (
            "maintenance problem",
            Mode::Maintenance,
            facts(&get, "/api/orders/7", "198.51.100.7", None),
            Decision::Maintenance(drawbridge::decide::Answer::Problem),
        ),
        (
            "cidr bypass",
            Mode::Maintenance,
            facts(&get, "/orders/7", "10.9.1.2", None),
            Decision::Bypass(drawbridge::decide::BypassVia::Cidr),
        ),
        (
            "token bypass",
            Mode::Maintenance,
            facts(&get, "/orders/7", "198.51.100.7", Some(&f.token)),
            Decision::Bypass(drawbridge::decide::BypassVia::Token),
        ),
    ];
    let mut group = c.benchmark_group("decide");
    for (name, mode, facts, expected) in &cases {
        let route = f
            .router
            .find(routes, Some("shop.example.com"), facts.path)
            .expect("a route matches");
        let verify = |token: &str| {
            keyring
                .verify(token, ENVIRONMENT, NOW, bypass.max_ttl)
                .is_ok()
        };
        assert_eq!(
            decide(*mode, &routes[route], facts, bypass, verify),
            *expected,
            "{name}: the fixture does not lead where the bench says"
        );
        group.bench_function(*name, |b| {
            b.iter(|| {
                let route = f
                    .router
                    .find(
                        routes,
                        black_box(Some("shop.example.com")),
                        black_box(facts.path),
                    )
                    .expect("a route matches");
                decide(
                    black_box(*mode),
                    &routes[route],
                    black_box(facts),
                    bypass,
                    verify,
                )
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
