//! The bypass token: the verifier on any text, and tokens signed from fuzzed claims, then forged.

use super::input::Input;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use drawbridge_core::bypass::{BypassError, BypassKey, Keyring, CLOCK_SKEW, MAX_TOKEN_LEN};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::time::Duration;

/// The keys of the fuzzed keyring; the corpus's valid tokens are signed with the first.
pub(crate) const KEYS: [(&str, &[u8]); 2] = [
    ("k1", b"fuzz-secret-one-fuzz-secret-one-"),
    ("k2", b"fuzz-secret-two-fuzz-secret-two-"),
];
/// The environment the fuzzed proxy serves.
pub(crate) const ENV: &str = "prod";
/// The proxy's clock, Unix seconds; the corpus's tokens are issued then, valid for an hour.
pub(crate) const NOW: i64 = 1_800_000_000;
/// The longest token lifetime the fuzzed proxy accepts (the default `bypass.max_ttl`).
const MAX_TTL: Duration = Duration::from_secs(12 * 3600);

fn keyring(keys: &[(&str, &[u8])]) -> Keyring {
    let keys = keys
        .iter()
        .map(|(id, secret)| BypassKey::new(id, secret).expect("a valid test key"))
        .collect();
    Keyring::new(keys).expect("a valid test keyring")
}

/// `Keyring::verify` on any text, then on a token signed from claims read from the bytes.
///
/// Checks:
/// * any text that verifies carries a MAC, made with the named key, of everything before it
///   (checked here with HMAC directly, not with the verifier's code);
/// * a signed token verifies exactly when its claims are within the policy (length, clock
///   skew, expiry, lifetime), and then gives back the claims signed;
/// * a valid token with any one byte changed, cut short, or checked against another
///   environment or another secret under the same key id is refused.
pub fn bypass_token(data: &[u8]) {
    let ring = keyring(&KEYS);
    if let Ok(text) = std::str::from_utf8(data) {
        match ring.verify(text, ENV, NOW, MAX_TTL) {
            Ok(claims) => {
                assert!(carries_its_mac(text), "verified without its MAC: {text:?}");
                assert_eq!(claims.env, ENV);
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
    signed_then_forged(&ring, &mut Input::new(data));
}

/// Whether `token` ends in `.<the HMAC-SHA256, base64url, of everything before the dot>` made
/// with the secret of the key id it names.
fn carries_its_mac(token: &str) -> bool {
    let Some((signed, tag)) = token.rsplit_once('.') else {
        return false;
    };
    let key_id = signed.split('.').nth(1).unwrap_or_default();
    let Some((_, secret)) = KEYS.iter().find(|(id, _)| *id == key_id) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(signed.as_bytes());
    let expected = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    expected == tag
}

fn signed_then_forged(ring: &Keyring, input: &mut Input) {
    let env = input.text(24);
    let sub = match input.u8() % 3 {
        0 => None,
        _ => Some(input.text(64)),
    };
    let iat = NOW + i64::from(input.i32());
    let ttl = Duration::from_secs(u64::from(input.u32()));
    let now = iat + i64::from(input.i32() >> 8);
    let token = ring.sign(&env, iat, ttl, sub.as_deref());
    let exp = iat.saturating_add(ttl.as_secs() as i64);
    let skew = CLOCK_SKEW.as_secs() as i64;

    let expected = if token.len() > MAX_TOKEN_LEN {
        Err(BypassError::TooLong)
    } else if iat > now + skew {
        Err(BypassError::NotYetValid)
    } else if exp <= now {
        Err(BypassError::Expired)
    } else if exp - iat > MAX_TTL.as_secs() as i64 {
        Err(BypassError::LifetimeTooLong {
            lifetime_secs: exp - iat,
            max_secs: MAX_TTL.as_secs(),
        })
    } else {
        Ok(())
    };
    match (ring.verify(&token, &env, now, MAX_TTL), expected) {
        (Ok(claims), Ok(())) => {
            assert_eq!(
                (
                    claims.env.as_str(),
                    claims.iat,
                    claims.exp,
                    claims.sub.as_deref()
                ),
                (env.as_str(), iat, exp, sub.as_deref())
            );
        }
        (got, expected) => assert_eq!(got.map(drop), expected, "{token}"),
    }

    // From here on, a token that is valid at `iat`: only tampering can make it fail.
    if token.len() > MAX_TOKEN_LEN || ttl.is_zero() || ttl > MAX_TTL {
        return;
    }
    assert!(ring.verify(&token, &env, iat, MAX_TTL).is_ok(), "{token}");
    let other_env = format!("{env}x");
    assert!(ring.verify(&token, &other_env, iat, MAX_TTL).is_err());
    let same_ids_other_secrets = keyring(&[
        ("k1", b"another-secret-another-secret-00"),
        ("k2", b"another-secret-another-secret-01"),
    ]);
    assert_eq!(
        same_ids_other_secrets.verify(&token, &env, iat, MAX_TTL),
        Err(BypassError::BadSignature)
    );

    let bytes = token.as_bytes();
    let at = usize::from(input.u8()) | usize::from(input.u8()) << 8;
    let at = at % bytes.len();
    // A printable ASCII byte other than the one there, so the token stays text.
    let mut with = b'!' + input.u8() % 94;
    if with == bytes[at] {
        with = if with == b'~' { b'!' } else { with + 1 };
    }
    let mut forged = bytes.to_vec();
    forged[at] = with;
    let forged = String::from_utf8(forged).expect("ASCII stays UTF-8");
    assert!(
        ring.verify(&forged, &env, iat, MAX_TTL).is_err(),
        "byte {at} changed to {:?} still verifies: {forged}",
        char::from(with)
    );
    let cut = usize::from(input.u8()) | usize::from(input.u8()) << 8;
    let cut = cut % bytes.len();
    assert!(
        ring.verify(&token[..cut], &env, iat, MAX_TTL).is_err(),
        "cut to {cut} bytes still verifies"
    );
}
