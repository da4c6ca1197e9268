//! The bypass-token MAC is compared in constant time: the decoded MAC goes nowhere but into
//! `hmac`'s `verify_slice` (a `subtle` constant-time comparison), and verifying a token whose
//! MAC is right but for its last bit takes as long as one whose MAC is wholly wrong.

use std::hint::black_box;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use drawbridge_core::bypass::{BypassError, BypassKey, Keyring};

const NOW: i64 = 1_800_000_000;
const HOUR: Duration = Duration::from_secs(3600);
/// Verifications timed per kind of token.
const SAMPLES: usize = 100_000;
/// The largest difference of the two medians that passes (the reliability plan's figure). An
/// early-exit comparison of a 32-byte MAC would differ by tens of nanoseconds at most, so this
/// bound catches gross leaks only; the structure test above it is what rules the early exit out.
const MAX_MEDIAN_GAP: Duration = Duration::from_micros(1);

/// The body of `Keyring::verify`, from its signature to the end of the `impl` block.
fn verify_body() -> &'static str {
    let source = include_str!("../src/bypass.rs");
    let start = source
        .find("pub fn verify(")
        .expect("Keyring::verify is in bypass.rs");
    let end = source[start..]
        .find("\n#[cfg(test)]")
        .map_or(source.len(), |i| start + i);
    &source[start..end]
}

#[test]
fn the_decoded_mac_only_goes_into_the_constant_time_comparison() {
    let body = verify_body();
    // Every line that names the decoded MAC (`tag`, not the text `tag_b64`): its decoding and
    // the one `verify_slice` call. A `==`, `.eq(`, a loop over its bytes or a second use would
    // show up here.
    let uses: Vec<&str> = body
        .lines()
        .map(str::trim)
        .filter(|line| {
            line.match_indices("tag")
                .any(|(i, _)| !line[i..].starts_with("tag_b64"))
        })
        .collect();
    assert_eq!(
        uses,
        ["let tag = URL_SAFE_NO_PAD", "mac.verify_slice(&tag)"],
        "the MAC must be compared only by Mac::verify_slice"
    );
    // Nothing computes the MAC bytes to compare them by hand.
    assert!(
        !body.contains("finalize"),
        "verify must not finalize the MAC"
    );
    assert!(
        !body.contains("into_bytes"),
        "verify must not read MAC bytes"
    );
}

/// `token` with its MAC replaced by `change(mac)`.
fn with_mac(token: &str, change: impl FnOnce(&mut [u8])) -> String {
    let (signed, tag) = token.rsplit_once('.').expect("a signed token");
    let mut mac = URL_SAFE_NO_PAD.decode(tag).expect("a base64url MAC");
    change(&mut mac);
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(mac))
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

#[test]
fn a_right_mac_prefix_verifies_as_fast_as_a_wholly_wrong_mac() {
    let ring = Keyring::new(vec![BypassKey::new(
        "k1",
        b"0123456789abcdef0123456789abcdef",
    )
    .expect("a valid key")])
    .expect("one key");
    let token = ring.sign("prod", NOW, HOUR, Some("timing"));
    // 31 bytes right, the last bit of the last byte wrong: an early-exit comparison would run
    // to its end here and stop at the first byte below.
    let right_prefix = with_mac(&token, |mac| mac[31] ^= 1);
    let wholly_wrong = with_mac(&token, |mac| mac.iter_mut().for_each(|b| *b ^= 0xff));
    for forged in [&right_prefix, &wholly_wrong] {
        assert_eq!(
            ring.verify(forged, "prod", NOW, HOUR),
            Err(BypassError::BadSignature)
        );
    }

    let time = |t: &str| {
        let start = Instant::now();
        let verdict = ring.verify(black_box(t), "prod", NOW, HOUR);
        let took = start.elapsed();
        black_box(verdict).expect_err("a forged MAC");
        took
    };
    // Interleaved, so a busy neighbour on a shared machine slows both kinds alike.
    let mut prefix = Vec::with_capacity(SAMPLES);
    let mut wrong = Vec::with_capacity(SAMPLES);
    for i in 0..SAMPLES {
        if i % 2 == 0 {
            prefix.push(time(&right_prefix));
            wrong.push(time(&wholly_wrong));
        } else {
            wrong.push(time(&wholly_wrong));
            prefix.push(time(&right_prefix));
        }
    }
    let (prefix, wrong) = (median(prefix), median(wrong));
    let gap = prefix.abs_diff(wrong);
    println!(
        "verify medians over {SAMPLES} samples each: right MAC prefix {prefix:?}, \
         wholly wrong MAC {wrong:?}, gap {gap:?}"
    );
    assert!(
        gap < MAX_MEDIAN_GAP,
        "median verification time depends on the MAC: right prefix {prefix:?}, \
         wholly wrong {wrong:?}"
    );
}
