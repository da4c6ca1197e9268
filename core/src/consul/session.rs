//! Sessions: the lease behind a KV lock. Create, renew (a 404 means the lock is lost),
//! destroy, info.

use std::time::Duration;

use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

use super::{duration, escape_segment, Client, Error, Request};

/// What happens to the locks of a session when it is invalidated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SessionBehavior {
    /// The locks are released, the keys stay (Consul's default).
    #[default]
    Release,
    /// The locked keys are deleted.
    Delete,
}

impl SessionBehavior {
    fn as_str(self) -> &'static str {
        match self {
            SessionBehavior::Release => "release",
            SessionBehavior::Delete => "delete",
        }
    }
}

/// The parameters of a new session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRequest {
    /// A human-readable name, shown by `consul` tooling.
    pub name: String,
    /// Time to live without a renew (Consul accepts 10 s to 24 h); `None` for no TTL.
    /// Consul may take up to twice the TTL to reap an expired session.
    pub ttl: Option<Duration>,
    /// What happens to held locks on invalidation.
    pub behavior: SessionBehavior,
    /// How long the locks of an invalidated session stay unacquirable. Always sent; zero
    /// disables it (checked on Consul 1.8.7), omitting it would mean Consul's 15 s.
    pub lock_delay: Duration,
    /// Node checks that invalidate the session when critical; `None` keeps Consul's default
    /// (`serfHealth`), an empty list ties the session to the TTL only.
    pub node_checks: Option<Vec<String>>,
    /// The node the session belongs to; `None` means the node of the agent called.
    pub node: Option<String>,
}

impl SessionRequest {
    /// A session named `name` with a TTL, `release` behaviour, no lock delay and the default
    /// node checks.
    pub fn with_ttl(name: &str, ttl: Duration) -> SessionRequest {
        SessionRequest {
            name: name.to_owned(),
            ttl: Some(ttl),
            behavior: SessionBehavior::Release,
            lock_delay: Duration::ZERO,
            node_checks: None,
            node: None,
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct WireCreate<'a> {
    name: &'a str,
    #[serde(rename = "TTL", skip_serializing_if = "Option::is_none")]
    ttl: Option<String>,
    behavior: &'static str,
    lock_delay: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    node_checks: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<&'a str>,
}

impl<'a> From<&'a SessionRequest> for WireCreate<'a> {
    fn from(req: &'a SessionRequest) -> Self {
        WireCreate {
            name: &req.name,
            ttl: req.ttl.map(duration::format),
            behavior: req.behavior.as_str(),
            lock_delay: duration::format(req.lock_delay),
            node_checks: req.node_checks.as_deref(),
            node: req.node.as_deref(),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireId {
    #[serde(rename = "ID")]
    id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireInfo {
    #[serde(rename = "ID")]
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    node: String,
    /// Nanoseconds.
    #[serde(default)]
    lock_delay: u64,
    #[serde(default)]
    behavior: String,
    #[serde(rename = "TTL", default)]
    ttl: String,
    #[serde(default)]
    node_checks: Option<Vec<String>>,
    #[serde(default)]
    create_index: u64,
    #[serde(default)]
    modify_index: u64,
}

/// A session as Consul describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The session id.
    pub id: String,
    /// The name given at creation.
    pub name: String,
    /// The node it belongs to.
    pub node: String,
    /// Its lock delay.
    pub lock_delay: Duration,
    /// Its behaviour on invalidation.
    pub behavior: SessionBehavior,
    /// Its TTL; zero when it has none.
    pub ttl: Duration,
    /// The node checks it depends on.
    pub node_checks: Vec<String>,
    /// The index that created it.
    pub create_index: u64,
    /// The index of its last change.
    pub modify_index: u64,
}

impl WireInfo {
    fn decode(self) -> Result<SessionInfo, String> {
        Ok(SessionInfo {
            ttl: duration::parse(&self.ttl)?,
            behavior: if self.behavior == "delete" {
                SessionBehavior::Delete
            } else {
                SessionBehavior::Release
            },
            id: self.id,
            name: self.name,
            node: self.node,
            lock_delay: Duration::from_nanos(self.lock_delay),
            node_checks: self.node_checks.unwrap_or_default(),
            create_index: self.create_index,
            modify_index: self.modify_index,
        })
    }
}

impl Client {
    /// Creates a session on the node of the agent called (or `req.node`); returns its id.
    ///
    /// # Errors
    /// Transport, ACL and leader failures; [`Error::Status`] 500 when Consul refuses the
    /// parameters (e.g. a TTL outside 10 s to 24 h, or an unknown node check).
    pub async fn session_create(&self, req: &SessionRequest) -> Result<String, Error> {
        let what = format!("session create {}", req.name);
        let body =
            serde_json::to_vec(&WireCreate::from(req)).map_err(|e| self.decode_error(&what, e))?;
        let answer = self
            .call_ok(Request::put(&what, "/v1/session/create".into()).body(body))
            .await?;
        let id: WireId = self.json(&what, &answer)?;
        Ok(id.id)
    }

    /// Renews a session; returns the TTL Consul answered, which can be higher than asked under
    /// load and should then be honoured.
    ///
    /// # Errors
    /// [`Error::SessionNotFound`] when the session expired or was destroyed: the caller has
    /// lost its lock. Transport, ACL and leader failures otherwise.
    pub async fn session_renew(&self, id: &str) -> Result<Duration, Error> {
        let what = format!("session renew {id}");
        let req = Request::put(&what, format!("/v1/session/renew/{}", escape_segment(id)));
        let answer = self.call(req).await?;
        match answer.status {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => {
                return Err(Error::SessionNotFound {
                    what,
                    address: self.address.clone(),
                    id: id.to_owned(),
                })
            }
            _ => return Err(self.status_error(&what, &answer)),
        }
        let infos: Vec<WireInfo> = self.json(&what, &answer)?;
        let info = infos
            .into_iter()
            .next()
            .ok_or_else(|| self.decode_error(&what, "an empty list for a renewed session"))?;
        let info = info.decode().map_err(|e| self.decode_error(&what, e))?;
        Ok(info.ttl)
    }

    /// Destroys a session, releasing (or deleting, per its behaviour) its locks; idempotent.
    ///
    /// # Errors
    /// Transport, ACL and leader failures; [`Error::Status`] 500 for an id that is not a UUID.
    pub async fn session_destroy(&self, id: &str) -> Result<(), Error> {
        let what = format!("session destroy {id}");
        let req = Request::put(&what, format!("/v1/session/destroy/{}", escape_segment(id)));
        // The body is `true`; a 200 is all that matters.
        self.call_ok(req).await?;
        Ok(())
    }

    /// Describes a session; `None` when it does not exist (Consul 1.8.7 answers `[]`).
    ///
    /// # Errors
    /// Transport, ACL, leader and decode failures.
    pub async fn session_info(&self, id: &str) -> Result<Option<SessionInfo>, Error> {
        let what = format!("session info {id}");
        let req = Request::get(&what, format!("/v1/session/info/{}", escape_segment(id)));
        let answer = self.call(req).await?;
        match answer.status {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(None),
            _ => return Err(self.status_error(&what, &answer)),
        }
        let infos: Option<Vec<WireInfo>> = self.json(&what, &answer)?;
        match infos.unwrap_or_default().into_iter().next() {
            None => Ok(None),
            Some(info) => info
                .decode()
                .map(Some)
                .map_err(|e| self.decode_error(&what, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_body_always_carries_lock_delay() {
        let req = SessionRequest::with_ttl("maintctl", Duration::from_secs(15));
        let json = serde_json::to_string(&WireCreate::from(&req)).unwrap();
        assert_eq!(
            json,
            r#"{"Name":"maintctl","TTL":"15s","Behavior":"release","LockDelay":"0s"}"#
        );
    }

    #[test]
    fn info_decodes_what_consul_1_8_7_answers() {
        let json = r#"[{"ID":"2ccf87c2-ba7f-7600-d29f-307b96a32857","Name":"b","Node":"consul-server",
            "LockDelay":15000000000,"Behavior":"delete","TTL":"1m0s","NodeChecks":["serfHealth"],
            "ServiceChecks":null,"CreateIndex":12,"ModifyIndex":13}]"#;
        let infos: Vec<WireInfo> = serde_json::from_str(json).unwrap();
        let info = infos.into_iter().next().unwrap().decode().unwrap();
        assert_eq!(info.ttl, Duration::from_secs(60));
        assert_eq!(info.lock_delay, Duration::from_secs(15));
        assert_eq!(info.behavior, SessionBehavior::Delete);
        assert_eq!(info.node_checks, vec!["serfHealth".to_owned()]);
        assert_eq!((info.create_index, info.modify_index), (12, 13));
    }
}
