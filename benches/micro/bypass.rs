//! Bypass-token checks, which the proxy runs only for requests that meet a closed gate and
//! carry a token: a valid token, a forged signature, an unknown key id, and one too long to
//! parse. Refusals must cost no more than acceptance, so junk tokens cannot be used to load the
//! proxy; each is compared with the others here.

use criterion::{criterion_group, criterion_main, Criterion};
use drawbridge_core::bypass::BypassError;
use std::hint::black_box;

use drawbridge_benches::{Fixture, ENVIRONMENT, NOW};

fn bench_verify(c: &mut Criterion) {
    let f = Fixture::set_up();
    let keyring = f
        .config
        .bypass
        .keyring
        .as_ref()
        .expect("the fixture has a key");
    let max_ttl = f.config.bypass.max_ttl;
    let forged = {
        let (signed, _) = f.token.rsplit_once('.').expect("a dotted token");
        format!("{signed}.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
    };
    let unknown_key = f.token.replacen(".k1.", ".k9.", 1);
    let too_long = "x".repeat(8 * 1024);
    let cases = [
        ("valid", f.token.as_str(), None),
        (
            "forged signature",
            forged.as_str(),
            Some(BypassError::BadSignature),
        ),
        (
            "unknown key",
            unknown_key.as_str(),
            Some(BypassError::UnknownKey("k9".into())),
        ),
        ("too long", too_long.as_str(), Some(BypassError::TooLong)),
    ];
    let mut group = c.benchmark_group("bypass verify");
    for (name, token, refusal) in &cases {
        let result = keyring.verify(token, ENVIRONMENT, NOW, max_ttl);
        assert_eq!(
            result.err(),
            *refusal,
            "{name}: not the outcome the bench is named for"
        );
        group.bench_function(*name, |b| {
            b.iter(|| keyring.verify(black_box(token), ENVIRONMENT, black_box(NOW), max_ttl))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_verify);
criterion_main!(benches);
