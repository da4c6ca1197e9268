//! The maintenance answers the proxy writes itself, from a gate state to a response header and
//! body: the page, the problem document, and the problem with CORS headers for an allowed
//! origin. The bodies are rendered once per gate change, so this is the header work each
//! answer pays; the load bench's figure 3 puts a whole answer at tens of µs of CPU.

use criterion::{criterion_group, criterion_main, Criterion};
use drawbridge::decide::Answer;
use drawbridge::respond;
use http::HeaderValue;
use std::hint::black_box;

use drawbridge_benches::{Fixture, NOW};

fn bench_respond(c: &mut Criterion) {
    let f = Fixture::set_up();
    let state = f.state(
        r#"{"mode":"maintenance","reason":"Database upgrade","message":"Back soon.","until":"2026-11-18T21:00:00Z"}"#,
    );
    let settings = &f.config.maintenance;
    let origin = HeaderValue::from_static("https://app.example.com");
    let (header, body) = respond::maintenance(&state, Answer::Page, settings, None, NOW)
        .expect("the page answer builds");
    assert_eq!(header.status.as_u16(), 503);
    assert!(!body.is_empty());

    let mut group = c.benchmark_group("respond");
    for (name, answer, origin) in [
        ("maintenance page", Answer::Page, None),
        ("maintenance problem", Answer::Problem, None),
        (
            "maintenance problem with an origin",
            Answer::Problem,
            Some(&origin),
        ),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                respond::maintenance(
                    &state,
                    black_box(answer),
                    settings,
                    origin.map(black_box),
                    black_box(NOW),
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_respond);
criterion_main!(benches);
