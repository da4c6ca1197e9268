//! The split document: the JSON value at the split key (by default `<gate key>/split`) that
//! sends part of a route's clients to a second pool (a canary), or all of them (blue-green).
//!
//! ```json
//! {"routes": {"api": {"to": "api-green", "percent": 10}}, "by": "ops@bastion"}
//! ```
//!
//! A client keeps its side: the proxy gives each one a bucket from 0 to 99 (by its address, and
//! in a cookie), and buckets below `percent` go to `to`. Raising the percentage moves more
//! buckets over and never sends one back. A missing key splits nothing.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The largest value accepted at the split key.
pub const MAX_SPLIT_DOC_BYTES: usize = 16 * 1024;

/// The most routes one document may split.
pub const MAX_SPLIT_ROUTES: usize = 64;

/// The split key of the environment whose gate key is `gate_key`, when the config names none.
pub fn default_split_key(gate_key: &str) -> String {
    format!("{gate_key}/split")
}

/// Why `key` cannot be a key path: Consul would read it otherwise than written.
pub fn key_path_problem(key: &str) -> Option<String> {
    (key.is_empty() || key.starts_with('/') || key.ends_with('/') || key.contains("//"))
        .then(|| format!("{key:?} must not be empty, start or end with '/' or contain '//'"))
}

/// Why `split_key` cannot be the split key of an environment whose gate key is `gate_key`, as
/// the proxies and `maintctl` both check it.
pub fn split_key_problem(gate_key: &str, split_key: &str) -> Option<String> {
    if split_key == gate_key {
        return Some("is the gate key: the split document needs a key of its own".to_string());
    }
    key_path_problem(split_key)
}

/// The split document as stored at the split key; the default splits nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitDoc {
    /// The split routes, by route name.
    pub routes: BTreeMap<String, RouteSplit>,
    /// Who wrote it (an operator name or a tool run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// How one route's traffic is split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSplit {
    /// The second pool, by name.
    pub to: String,
    /// The share of clients sent to `to`, in percent: 0 sends none, 100 all (blue-green).
    pub percent: u8,
}

/// Why a value at the split key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitDocError {
    #[error(
        "value is {size} bytes, more than the {MAX_SPLIT_DOC_BYTES} a split document may have"
    )]
    TooLarge { size: usize },
    #[error("value is not UTF-8 text")]
    NotUtf8,
    #[error("value is not a split document: {detail}")]
    Invalid { detail: String },
    #[error("route {route}: percent is {percent}, more than 100")]
    PercentOver100 { route: String, percent: u8 },
    #[error("route {route}: `to` is empty: name the pool its clients go to")]
    EmptyPool { route: String },
    #[error("{count} routes are split, more than the {MAX_SPLIT_ROUTES} a document may split")]
    TooManyRoutes { count: usize },
}

impl SplitDoc {
    /// Parses a value read from the split key.
    ///
    /// # Errors
    /// Every value that is not a valid document; the error says why.
    pub fn parse(raw: &[u8]) -> Result<SplitDoc, SplitDocError> {
        if raw.len() > MAX_SPLIT_DOC_BYTES {
            return Err(SplitDocError::TooLarge { size: raw.len() });
        }
        let text = std::str::from_utf8(raw).map_err(|_| SplitDocError::NotUtf8)?;
        let doc: SplitDoc = serde_json::from_str(text).map_err(|e| SplitDocError::Invalid {
            detail: e.to_string(),
        })?;
        doc.validate()?;
        Ok(doc)
    }

    /// Checks the limits a parsed document must keep.
    ///
    /// # Errors
    /// Too many routes, a share over 100, or an empty pool name.
    pub fn validate(&self) -> Result<(), SplitDocError> {
        if self.routes.len() > MAX_SPLIT_ROUTES {
            return Err(SplitDocError::TooManyRoutes {
                count: self.routes.len(),
            });
        }
        for (route, split) in &self.routes {
            if split.percent > 100 {
                return Err(SplitDocError::PercentOver100 {
                    route: route.clone(),
                    percent: split.percent,
                });
            }
            if split.to.trim().is_empty() {
                return Err(SplitDocError::EmptyPool {
                    route: route.clone(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_splits_routes_by_percent() {
        let doc = SplitDoc::parse(
            br#"{"routes": {"api": {"to": "api-green", "percent": 10}}, "by": "ops"}"#,
        )
        .unwrap();
        assert_eq!(
            doc.routes["api"],
            RouteSplit {
                to: "api-green".into(),
                percent: 10
            }
        );
        assert_eq!(doc.by.as_deref(), Some("ops"));
        assert!(SplitDoc::parse(br#"{"routes": {}}"#)
            .unwrap()
            .routes
            .is_empty());
    }

    #[test]
    fn bad_values_are_refused_with_the_reason() {
        let refused = |raw: &[u8]| SplitDoc::parse(raw).unwrap_err().to_string();
        assert!(refused(b"").contains("not a split document"));
        assert!(refused(b"true").contains("not a split document"));
        assert!(
            refused(br#"{"routes": {"api": {"to": "g", "percent": 101}}}"#)
                .contains("route api: percent is 101, more than 100")
        );
        assert!(
            refused(br#"{"routes": {"api": {"to": "g", "percent": 256}}}"#)
                .contains("not a split document")
        );
        assert!(
            refused(br#"{"routes": {"api": {"to": "g", "percent": -1}}}"#)
                .contains("not a split document")
        );
        assert!(
            refused(br#"{"routes": {"api": {"to": " ", "percent": 5}}}"#).contains("`to` is empty")
        );
        assert!(
            refused(br#"{"routes": {"api": {"to": "g", "percent": 5, "sticky": 1}}}"#)
                .contains("unknown field")
        );
        assert!(refused(br#"{"routes": {}, "mode": "normal"}"#).contains("unknown field"));
        assert!(refused(&[0xff, 0xfe]).contains("not UTF-8"));
        let big = vec![b' '; MAX_SPLIT_DOC_BYTES + 1];
        assert!(refused(&big).contains("more than the"));
        let many: Vec<String> = (0..=MAX_SPLIT_ROUTES)
            .map(|i| format!(r#""r{i}": {{"to": "g", "percent": 1}}"#))
            .collect();
        let many = format!(r#"{{"routes": {{{}}}}}"#, many.join(","));
        assert!(refused(many.as_bytes()).contains("routes are split"));
    }

    #[test]
    fn a_split_key_is_a_clean_key_path_other_than_the_gate_key() {
        let gate = "drawbridge/prod/gate";
        assert_eq!(split_key_problem(gate, "drawbridge/prod/split"), None);
        assert!(split_key_problem(gate, gate)
            .unwrap()
            .starts_with("is the gate key"));
        for bad in ["", "/split", "split/", "a//b"] {
            assert!(split_key_problem(gate, bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn the_default_key_sits_under_the_gate_key() {
        assert_eq!(
            default_split_key("drawbridge/prod/gate"),
            "drawbridge/prod/gate/split"
        );
    }
}
