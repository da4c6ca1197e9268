//! The KV endpoints: a blocking-capable read where a missing key is a value, and writes with
//! check-and-set, lock acquisition and release.

use base64::Engine as _;
use reqwest::{Method, StatusCode};
use serde::Deserialize;

use super::{escape_key, Client, Error, QueryMeta, QueryOptions, Request};

/// One KV entry, with its value base64-decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    /// The full key.
    pub key: String,
    /// The value; `None` when Consul answers `null`, which 1.8.7 does for an empty value too,
    /// so treat `None` and `Some(vec![])` alike.
    pub value: Option<Vec<u8>>,
    /// The index that created the key.
    pub create_index: u64,
    /// The index of the last write; the `cas` value to update it safely.
    pub modify_index: u64,
    /// How many times a lock on this key was acquired; a write without `acquire` resets it to 0
    /// on Consul 1.8.7, so it is no fencing token.
    pub lock_index: u64,
    /// Opaque client flags.
    pub flags: u64,
    /// The session holding the lock on this key, if any.
    pub session: Option<String>,
}

/// The answer of [`Client::kv_get`]: the entry, or `None` for a missing key, and the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvRead {
    /// The entry; `None` when the key does not exist (Consul answered 404).
    pub entry: Option<KvEntry>,
    /// The index and freshness headers; present for a missing key too, so a watch can block
    /// until the key appears.
    pub meta: QueryMeta,
}

/// How [`Client::kv_put`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode<'a> {
    /// Write unconditionally. NOTE: this succeeds even when another session holds the lock on
    /// the key; locks in Consul only exclude other `acquire` calls.
    Always,
    /// Write only if the key's `ModifyIndex` is this; 0 means "only if the key does not exist".
    Cas(u64),
    /// Write and take the lock for this session; `false` when another session holds it.
    Acquire(&'a str),
    /// Write and release this session's lock; `false` when the session does not hold it.
    Release(&'a str),
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireEntry {
    key: String,
    value: Option<String>,
    #[serde(default)]
    create_index: u64,
    #[serde(default)]
    modify_index: u64,
    #[serde(default)]
    lock_index: u64,
    #[serde(default)]
    flags: u64,
    #[serde(default)]
    session: Option<String>,
}

impl WireEntry {
    fn decode(self) -> Result<KvEntry, base64::DecodeError> {
        let value = match self.value {
            None => None,
            Some(v) => Some(base64::engine::general_purpose::STANDARD.decode(v)?),
        };
        Ok(KvEntry {
            key: self.key,
            value,
            create_index: self.create_index,
            modify_index: self.modify_index,
            lock_index: self.lock_index,
            flags: self.flags,
            session: self.session.filter(|s| !s.is_empty()),
        })
    }
}

impl Client {
    /// Reads one key; blocks when `q.index > 0` until the key's index passes it or `q.wait` ends.
    ///
    /// A return is no guarantee of a change (timeouts and idempotent writes also return):
    /// compare `modify_index` and the value before acting.
    ///
    /// # Errors
    /// Transport, ACL, leader and decode failures as [`Error`] variants; a missing key is not
    /// an error.
    pub async fn kv_get(&self, key: &str, q: &QueryOptions) -> Result<KvRead, Error> {
        let what = format!("kv get {key}");
        let req = Request::get(&what, format!("/v1/kv/{}", escape_key(key))).options(q);
        let answer = self.call(req).await?;
        let entry = match answer.status {
            // Consul sets the index headers before writing the 404 (`agent/kvs_endpoint.go`).
            StatusCode::NOT_FOUND => None,
            StatusCode::OK => {
                let entries: Vec<WireEntry> = self.json(&what, &answer)?;
                match entries.into_iter().next() {
                    None => None,
                    Some(e) => Some(e.decode().map_err(|e| self.decode_error(&what, e))?),
                }
            }
            _ => return Err(self.status_error(&what, &answer)),
        };
        Ok(KvRead {
            entry,
            meta: self.query_meta(&what, &answer)?,
        })
    }

    /// Writes `value` at `key`; returns whether Consul applied the write (the `true`/`false`
    /// body), which is `false` only for a failed cas, acquire or release.
    ///
    /// # Errors
    /// Transport, ACL, leader and decode failures; Consul refuses values above 512 KB with
    /// [`Error::Status`] 413.
    pub async fn kv_put(&self, key: &str, value: &[u8], mode: PutMode<'_>) -> Result<bool, Error> {
        let what = format!("kv put {key}");
        let mut req =
            Request::put(&what, format!("/v1/kv/{}", escape_key(key))).body(value.to_vec());
        match mode {
            PutMode::Always => {}
            PutMode::Cas(index) => req.query.pair("cas", &index.to_string()),
            PutMode::Acquire(session) => req.query.pair("acquire", session),
            PutMode::Release(session) => req.query.pair("release", session),
        }
        let answer = self.call_ok(req).await?;
        self.bool_body(&what, &answer)
    }

    /// Deletes `key` (idempotent: a missing key is `true`); with `cas`, only if its
    /// `ModifyIndex` is that value, else `false`.
    ///
    /// # Errors
    /// Transport, ACL, leader and decode failures.
    pub async fn kv_delete(&self, key: &str, cas: Option<u64>) -> Result<bool, Error> {
        let what = format!("kv delete {key}");
        let mut req = Request::new(&what, Method::DELETE, format!("/v1/kv/{}", escape_key(key)));
        if let Some(index) = cas {
            req.query.pair("cas", &index.to_string());
        }
        let answer = self.call_ok(req).await?;
        self.bool_body(&what, &answer)
    }

    /// Lists every entry under `prefix` (recursively), sorted by key; empty when none exist.
    ///
    /// # Errors
    /// Transport, ACL, leader and decode failures.
    pub async fn kv_list(&self, prefix: &str) -> Result<Vec<KvEntry>, Error> {
        let what = format!("kv list {prefix}");
        let mut req = Request::get(&what, format!("/v1/kv/{}", escape_key(prefix)));
        req.query.flag("recurse");
        let answer = self.call(req).await?;
        match answer.status {
            StatusCode::NOT_FOUND => Ok(Vec::new()),
            StatusCode::OK => {
                let entries: Vec<WireEntry> = self.json(&what, &answer)?;
                entries
                    .into_iter()
                    .map(|e| e.decode().map_err(|e| self.decode_error(&what, e)))
                    .collect()
            }
            _ => Err(self.status_error(&what, &answer)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_value_is_base64_decoded_and_null_stays_none() {
        let json = r#"[{"LockIndex":1,"Key":"a/b","Flags":7,"Value":"aGVsbG8=","Session":"s1",
            "CreateIndex":3,"ModifyIndex":4},{"Key":"c","Value":null,"CreateIndex":5,
            "ModifyIndex":5,"LockIndex":0,"Flags":0}]"#;
        let entries: Vec<WireEntry> = serde_json::from_str(json).unwrap();
        let decoded: Vec<KvEntry> = entries.into_iter().map(|e| e.decode().unwrap()).collect();
        assert_eq!(decoded[0].value.as_deref(), Some(&b"hello"[..]));
        assert_eq!(decoded[0].session.as_deref(), Some("s1"));
        assert_eq!(
            (
                decoded[0].modify_index,
                decoded[0].lock_index,
                decoded[0].flags
            ),
            (4, 1, 7)
        );
        assert_eq!(decoded[1].value, None);
        assert_eq!(decoded[1].session, None);
    }

    #[test]
    fn bad_base64_is_a_decode_error() {
        let entries: Vec<WireEntry> =
            serde_json::from_str(r#"[{"Key":"a","Value":"!!","ModifyIndex":1}]"#).unwrap();
        assert!(entries.into_iter().next().unwrap().decode().is_err());
    }
}
