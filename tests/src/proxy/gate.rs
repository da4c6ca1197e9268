//! The gate key seen from a test: its name ([`test_key`]), writing and deleting it in Consul
//! ([`set_gate`], [`clear_gate`], which return the index to wait for), and the clock its
//! `until` times and bypass tokens are written against ([`now_unix`], [`rfc3339_in`]).

use drawbridge_core::consul::{Client, PutMode, QueryOptions};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Writes `value` at `key` and returns the key's new ModifyIndex.
///
/// # Panics
/// When Consul refuses or does not answer.
pub async fn set_gate(consul: &Client, key: &str, value: impl AsRef<[u8]>) -> u64 {
    let written = consul
        .kv_put(key, value.as_ref(), PutMode::Always)
        .await
        .unwrap_or_else(|e| panic!("consul kv put {key}: {e}"));
    assert!(written, "consul kv put {key} answered false");
    let read = consul
        .kv_get(key, &QueryOptions::default())
        .await
        .unwrap_or_else(|e| panic!("consul kv get {key}: {e}"));
    read.entry
        .unwrap_or_else(|| panic!("{key} missing right after the put"))
        .modify_index
}

/// Deletes `key` and returns the index Consul answers for the missing key.
///
/// # Panics
/// When Consul refuses or does not answer.
pub async fn clear_gate(consul: &Client, key: &str) -> u64 {
    consul
        .kv_delete(key, None)
        .await
        .unwrap_or_else(|e| panic!("consul kv delete {key}: {e}"));
    let read = consul
        .kv_get(key, &QueryOptions::default())
        .await
        .unwrap_or_else(|e| panic!("consul kv get {key}: {e}"));
    assert!(read.entry.is_none(), "{key} still there after the delete");
    read.meta.index
}

/// Now, as Unix seconds.
pub fn now_unix() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// `now + offset_secs` as RFC 3339 (whole seconds, UTC).
pub fn rfc3339_in(offset_secs: i64) -> String {
    let at = OffsetDateTime::from_unix_timestamp(now_unix() + offset_secs)
        .expect("a time near now is in range");
    at.format(&Rfc3339).expect("a UTC time always formats")
}

/// A gate key unique to one test, under `drawbridge/test/`.
pub fn test_key(test: &str) -> String {
    format!("drawbridge/test/{test}/gate")
}
