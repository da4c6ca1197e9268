//! Bypass tokens: short-lived, HMAC-signed passes through a closed gate for operators' smoke tests.
//!
//! `maintctl bypass` signs them and every proxy verifies them, with the same keyring. A token is
//! `dbt1.<key id>.<claims>.<mac>`: claims are base64url JSON (environment, issued-at, expiry, nonce),
//! the MAC is HMAC-SHA256 over everything before it, compared in constant time. Keys carry an id so a
//! secret can be rotated: the first key signs, every listed key verifies.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::time::Duration;

const PREFIX: &str = "dbt1";
/// Longest token accepted; anything longer is refused before any decoding.
pub const MAX_TOKEN_LEN: usize = 1024;
/// Shortest secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 32;
/// Clock difference tolerated between the signer and the proxy.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);
/// The request header a token is sent in unless configured otherwise (lower case, as HTTP/2
/// sends it).
pub const DEFAULT_HEADER: &str = "x-drawbridge-bypass";
/// The cookie a token is sent in unless configured otherwise.
pub const DEFAULT_COOKIE: &str = "drawbridge_bypass";
/// The answer header a proxy adds when a request passed a closed gate.
pub const BYPASSED_HEADER: &str = "x-drawbridge-bypassed";

/// One signing key.
#[derive(Clone)]
pub struct BypassKey {
    id: String,
    secret: Vec<u8>,
}

impl std::fmt::Debug for BypassKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BypassKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// What a token claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// The environment the token is for; a proxy of another environment refuses it.
    pub env: String,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Expires at, Unix seconds.
    pub exp: i64,
    /// Random, so two tokens issued in the same second differ and can be told apart in logs.
    pub nonce: String,
    /// Who asked for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
}

/// Why a token was refused (the proxy serves the maintenance response for all of them).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BypassError {
    #[error("token is longer than {MAX_TOKEN_LEN} bytes")]
    TooLong,
    #[error("token is not of the form dbt1.<key id>.<claims>.<mac>")]
    Malformed,
    #[error("token is signed with unknown key id `{0}`")]
    UnknownKey(String),
    #[error("token signature does not match")]
    BadSignature,
    #[error("token claims do not decode")]
    BadClaims,
    #[error("token is for environment `{token}`, this is `{expected}`")]
    WrongEnvironment { token: String, expected: String },
    #[error("token has expired")]
    Expired,
    #[error("token is issued in the future")]
    NotYetValid,
    #[error("token lifetime of {lifetime_secs}s exceeds the {max_secs}s maximum")]
    LifetimeTooLong { lifetime_secs: i64, max_secs: u64 },
}

/// Why a keyring could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("bypass key id `{0}` must be 1-32 characters of a-z, A-Z, 0-9, '-' or '_'")]
    BadId(String),
    #[error("bypass key `{id}` secret has {len} bytes; use at least {MIN_SECRET_LEN} random bytes (e.g. `openssl rand -hex 32`)")]
    ShortSecret { id: String, len: usize },
    #[error("bypass key id `{0}` is listed twice")]
    DuplicateId(String),
    #[error("no bypass key configured")]
    Empty,
}

impl BypassKey {
    /// A key with an id that goes into every token it signs.
    ///
    /// # Errors
    /// An id that is not a short token-safe word, or a secret shorter than [`MIN_SECRET_LEN`].
    pub fn new(id: &str, secret: &[u8]) -> Result<BypassKey, KeyError> {
        let id_ok = !id.is_empty()
            && id.len() <= 32
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !id_ok {
            return Err(KeyError::BadId(id.to_string()));
        }
        if secret.len() < MIN_SECRET_LEN {
            return Err(KeyError::ShortSecret {
                id: id.to_string(),
                len: secret.len(),
            });
        }
        Ok(BypassKey {
            id: id.to_string(),
            secret: secret.to_vec(),
        })
    }

    /// The key's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes a key of any length")
    }
}

/// The keys a signer or verifier holds; the first one signs.
#[derive(Debug, Clone)]
pub struct Keyring {
    keys: Vec<BypassKey>,
}

impl Keyring {
    /// A keyring; the first key signs new tokens, all of them verify.
    ///
    /// # Errors
    /// No key, or an id used twice.
    pub fn new(keys: Vec<BypassKey>) -> Result<Keyring, KeyError> {
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
        for (i, key) in keys.iter().enumerate() {
            if keys[..i].iter().any(|k| k.id == key.id) {
                return Err(KeyError::DuplicateId(key.id.clone()));
            }
        }
        Ok(Keyring { keys })
    }

    /// Signs a token for `env`, valid from `now` (Unix seconds) for `ttl`.
    pub fn sign(&self, env: &str, now: i64, ttl: Duration, sub: Option<&str>) -> String {
        let claims = Claims {
            env: env.to_string(),
            iat: now,
            exp: now.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)),
            nonce: format!("{:016x}", rand::random::<u64>()),
            sub: sub.map(str::to_string),
        };
        let key = &self.keys[0];
        let claims_b64 =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("claims always serialise"));
        let signed = format!("{PREFIX}.{}.{claims_b64}", key.id);
        let mut mac = key.mac();
        mac.update(signed.as_bytes());
        let tag = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{signed}.{tag}")
    }

    /// Checks a token for environment `env` at `now` (Unix seconds); a lifetime above `max_ttl`
    /// is refused so a leaked long-lived token cannot outlive the policy.
    ///
    /// # Errors
    /// Every reason a token is not a valid pass, see [`BypassError`].
    pub fn verify(
        &self,
        token: &str,
        env: &str,
        now: i64,
        max_ttl: Duration,
    ) -> Result<Claims, BypassError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(BypassError::TooLong);
        }
        let (signed, tag_b64) = token.rsplit_once('.').ok_or(BypassError::Malformed)?;
        let mut parts = signed.splitn(3, '.');
        let (Some(PREFIX), Some(key_id), Some(claims_b64)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(BypassError::Malformed);
        };
        let key = self
            .keys
            .iter()
            .find(|k| k.id == key_id)
            .ok_or_else(|| BypassError::UnknownKey(key_id.chars().take(32).collect()))?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag_b64)
            .map_err(|_| BypassError::Malformed)?;
        let mut mac = key.mac();
        mac.update(signed.as_bytes());
        // verify_slice compares in constant time.
        mac.verify_slice(&tag)
            .map_err(|_| BypassError::BadSignature)?;
        let claims: Claims = URL_SAFE_NO_PAD
            .decode(claims_b64)
            .ok()
            .and_then(|raw| serde_json::from_slice(&raw).ok())
            .ok_or(BypassError::BadClaims)?;
        if claims.env != env {
            return Err(BypassError::WrongEnvironment {
                token: claims.env,
                expected: env.to_string(),
            });
        }
        let skew = CLOCK_SKEW.as_secs() as i64;
        if claims.iat > now.saturating_add(skew) {
            return Err(BypassError::NotYetValid);
        }
        if claims.exp <= now {
            return Err(BypassError::Expired);
        }
        let lifetime = claims.exp.saturating_sub(claims.iat);
        if lifetime > i64::try_from(max_ttl.as_secs()).unwrap_or(i64::MAX) {
            return Err(BypassError::LifetimeTooLong {
                lifetime_secs: lifetime,
                max_secs: max_ttl.as_secs(),
            });
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;
    const HOUR: Duration = Duration::from_secs(3600);

    fn ring(id: &str, secret: &str) -> Keyring {
        Keyring::new(vec![BypassKey::new(id, secret.as_bytes()).unwrap()]).unwrap()
    }

    fn prod() -> Keyring {
        ring("k1", "0123456789abcdef0123456789abcdef")
    }

    #[test]
    fn a_signed_token_verifies() {
        let token = prod().sign("prod", NOW, Duration::from_secs(1800), Some("alice"));
        let claims = prod().verify(&token, "prod", NOW + 60, HOUR).unwrap();
        assert_eq!(claims.sub.as_deref(), Some("alice"));
        assert_eq!(claims.exp, NOW + 1800);
    }

    #[test]
    fn expired_future_and_overlong_tokens_are_refused() {
        let token = prod().sign("prod", NOW, Duration::from_secs(60), None);
        assert_eq!(
            prod().verify(&token, "prod", NOW + 60, HOUR),
            Err(BypassError::Expired)
        );
        assert_eq!(
            prod().verify(&token, "prod", NOW - 61, HOUR),
            Err(BypassError::NotYetValid)
        );
        let long = prod().sign("prod", NOW, 2 * HOUR, None);
        assert!(matches!(
            prod().verify(&long, "prod", NOW, HOUR),
            Err(BypassError::LifetimeTooLong { .. })
        ));
    }

    #[test]
    fn forged_tokens_are_refused() {
        let token = prod().sign("prod", NOW, HOUR, None);
        let other_secret =
            ring("k1", "ffffffffffffffffffffffffffffffff").sign("prod", NOW, HOUR, None);
        assert_eq!(
            prod().verify(&other_secret, "prod", NOW, HOUR),
            Err(BypassError::BadSignature)
        );
        assert!(matches!(
            prod().verify(&token, "staging", NOW, HOUR),
            Err(BypassError::WrongEnvironment { .. })
        ));
        let unknown = ring("k2", "0123456789abcdef0123456789abcdef").sign("prod", NOW, HOUR, None);
        assert_eq!(
            prod().verify(&unknown, "prod", NOW, HOUR),
            Err(BypassError::UnknownKey("k2".into()))
        );
        // Flip every character of the token once: none of the variants may verify.
        for i in 0..token.len() {
            let mut bytes = token.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let forged = String::from_utf8(bytes).unwrap();
            if forged != token {
                assert!(
                    prod().verify(&forged, "prod", NOW, HOUR).is_err(),
                    "{forged}"
                );
            }
        }
        for junk in [
            "",
            ".",
            "dbt1",
            "dbt1.k1",
            "dbt1.k1.x.y",
            "dbt2.k1.a.b",
            "a.b.c.d.e",
        ] {
            assert!(prod().verify(junk, "prod", NOW, HOUR).is_err(), "{junk:?}");
        }
        assert_eq!(
            prod().verify(&"a".repeat(MAX_TOKEN_LEN + 1), "prod", NOW, HOUR),
            Err(BypassError::TooLong)
        );
    }

    #[test]
    fn rotation_keeps_old_tokens_valid_while_their_key_is_listed() {
        let old = prod().sign("prod", NOW, HOUR, None);
        let rotated = Keyring::new(vec![
            BypassKey::new("k2", b"new-secret-new-secret-new-secret").unwrap(),
            BypassKey::new("k1", b"0123456789abcdef0123456789abcdef").unwrap(),
        ])
        .unwrap();
        assert!(rotated.verify(&old, "prod", NOW, HOUR).is_ok());
        let fresh = rotated.sign("prod", NOW, HOUR, None);
        assert!(fresh.starts_with("dbt1.k2."));
        assert!(prod().verify(&fresh, "prod", NOW, HOUR).is_err());
    }

    #[test]
    fn weak_keys_are_refused() {
        assert!(matches!(
            BypassKey::new("k1", b"short"),
            Err(KeyError::ShortSecret { .. })
        ));
        assert!(matches!(
            BypassKey::new("k 1", &[0; 32]),
            Err(KeyError::BadId(_))
        ));
        let k = BypassKey::new("k1", &[0; 32]).unwrap();
        assert!(matches!(
            Keyring::new(vec![k.clone(), k]),
            Err(KeyError::DuplicateId(_))
        ));
    }
}
