//! The one writer of the gate key: every write is a new document with a unique reason, sent as
//! a one-operation Consul transaction so its answer carries the key's new `ModifyIndex` (a plain
//! KV PUT answers only `true`, and a read after it could meet the next election). Every attempt
//! is recorded, acknowledged or not: a write that failed may still have been committed.

use std::time::Duration;

use base64::Engine;
use serde::Serialize;
use time::OffsetDateTime;

use crate::applied::unix_us;

/// The two documents written, alternately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Maintenance,
    Normal,
}

impl Mode {
    /// The `mode` field of the document, as the proxy logs it too.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Maintenance => "maintenance",
            Mode::Normal => "normal",
        }
    }

    fn other(self) -> Mode {
        match self {
            Mode::Maintenance => Mode::Normal,
            Mode::Normal => Mode::Maintenance,
        }
    }
}

/// One write attempt.
#[derive(Debug, Clone, Serialize)]
pub struct Write {
    /// 1-based, in the order sent; the document's reason is `fleet-<seq>`.
    pub seq: u64,
    /// The part of the run: `initial`, `propagation`, `election`, `restart`, `settle`, `final`.
    pub phase: &'static str,
    pub mode: Mode,
    pub reason: String,
    /// The server it was sent to.
    pub via: usize,
    pub sent_us: i64,
    /// When the answer arrived (wall clock), for acknowledged writes.
    pub acked_us: Option<i64>,
    /// The key's `ModifyIndex` after the write, for acknowledged writes.
    pub index: Option<u64>,
    pub error: Option<String>,
}

/// Writes the gate key through the servers' HTTP APIs.
#[derive(Debug)]
pub struct Writer {
    http: reqwest::Client,
    addrs: Vec<String>,
    key: String,
    /// The mode the next switch writes.
    next: Mode,
    /// Every attempt so far.
    pub writes: Vec<Write>,
}

impl Writer {
    /// A writer of `key` through the servers at `addrs` (`http://ip:port`).
    pub fn new(addrs: Vec<String>, key: &str) -> anyhow::Result<Writer> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(2))
            .build()?;
        Ok(Writer {
            http,
            addrs,
            key: key.to_string(),
            next: Mode::Normal,
            writes: Vec::new(),
        })
    }

    /// Writes the next document (maintenance and normal alternate) through the servers in
    /// `order`, one attempt after another (each with a fresh reason), until one is acknowledged
    /// or `deadline` has passed; the acknowledged write.
    ///
    /// An attempt waits up to `attempt_timeout`. After the leader is killed, a server that still
    /// names it fails a write at once (the forward cannot connect) and one without a leader holds
    /// it for up to 7 s (Consul's `rpc_hold_timeout`); attempts follow each other 20 ms apart, so
    /// the first acknowledgement marks the end of the election within about that.
    pub async fn switch(
        &mut self,
        phase: &'static str,
        order: &[usize],
        attempt_timeout: Duration,
        deadline: Duration,
    ) -> anyhow::Result<Write> {
        let mode = self.next;
        let end = tokio::time::Instant::now() + deadline;
        for via in order.iter().cycle() {
            let write = self.attempt(phase, mode, *via, attempt_timeout).await;
            if write.index.is_some() {
                self.next = mode.other();
                return Ok(write);
            }
            if tokio::time::Instant::now() >= end {
                anyhow::bail!(
                    "no {phase} write acknowledged within {deadline:?}; last error: {}",
                    write.error.unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        anyhow::bail!("no server to write through")
    }

    async fn attempt(
        &mut self,
        phase: &'static str,
        mode: Mode,
        via: usize,
        timeout: Duration,
    ) -> Write {
        let seq = self.writes.len() as u64 + 1;
        let reason = format!("fleet-{seq}");
        let doc = serde_json::json!({ "mode": mode.as_str(), "reason": reason }).to_string();
        let op = serde_json::json!([{ "KV": {
            "Verb": "set",
            "Key": self.key,
            "Value": base64::engine::general_purpose::STANDARD.encode(doc),
        }}]);
        let sent = OffsetDateTime::now_utc();
        let answer = self
            .http
            .put(format!("{}/v1/txn", self.addrs[via]))
            .timeout(timeout)
            .body(op.to_string())
            .send()
            .await;
        let acked = OffsetDateTime::now_utc();
        let outcome = match answer {
            Ok(response) => {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                if status == 200 {
                    modify_index(&body)
                } else {
                    Err(format!("{status}: {}", body.trim()))
                }
            }
            Err(e) => Err(format!("{e}")),
        };
        let write = Write {
            seq,
            phase,
            mode,
            reason,
            via,
            sent_us: unix_us(sent),
            acked_us: outcome.is_ok().then(|| unix_us(acked)),
            index: outcome.as_ref().ok().copied(),
            error: outcome.err(),
        };
        self.writes.push(write.clone());
        write
    }
}

/// The `ModifyIndex` in a transaction's answer: `{"Results":[{"KV":{…,"ModifyIndex":42}}]}`.
fn modify_index(body: &str) -> Result<u64, String> {
    let json: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("txn answer is not JSON ({e}): {body}"))?;
    json["Results"][0]["KV"]["ModifyIndex"]
        .as_u64()
        .ok_or_else(|| format!("no ModifyIndex in the txn answer: {body}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_is_read_from_the_txn_answer() {
        let body = r#"{"Results":[{"KV":{"LockIndex":0,"Key":"k","Flags":0,"Value":null,"CreateIndex":40,"ModifyIndex":42}}],"Errors":null}"#;
        assert_eq!(modify_index(body), Ok(42));
        assert!(modify_index(r#"{"Results":null}"#).is_err());
    }
}
