//! Gate writes whose answer was lost: a write answered 500 or timed out during an election may
//! still commit, and every proxy then applies it. After such an answer the key is re-read from
//! the leader, and a write found applied counts as applied; the journal says what was found.

use crate::steps::POLL_EVERY;
use drawbridge_core::consul::{self, KvEntry, KvRead};
use std::future::Future;
use std::time::Duration;

/// One write of the gate key, as sent: what [`judge`] compares the re-read with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GateWrite<'a> {
    /// `kv put` of exactly `value` with check-and-set on `cas` (0: only if the key is missing).
    /// The document carries `started_at`, so these bytes are this run's and no one else's.
    Put { value: &'a [u8], cas: u64 },
    /// `kv delete` with check-and-set on `cas`, the `modify_index` of the entry it deletes.
    Delete { cas: u64 },
}

impl GateWrite<'_> {
    fn noun(self) -> &'static str {
        match self {
            GateWrite::Put { .. } => "write",
            GateWrite::Delete { .. } => "delete",
        }
    }

    pub(crate) fn participle(self) -> &'static str {
        match self {
            GateWrite::Put { .. } => "written",
            GateWrite::Delete { .. } => "cleared",
        }
    }
}

/// What a leader-confirmed re-read says about a gate write whose answer was an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finding {
    /// The key is what the write made of it: it was applied.
    Landed,
    /// The key is as the write found it: it was not applied.
    NotLanded,
    /// The key is neither: someone else changed it meanwhile.
    Changed,
}

/// How a gate write that was applied ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Written {
    /// Consul answered that it applied it.
    Answered,
    /// Consul answered an error, but the re-read from the leader found it applied.
    Found {
        /// The key's entry as re-read (`None`: the key is gone).
        entry: Option<KvEntry>,
        /// What was found, for the journal and the operator.
        note: String,
    },
}

/// Whether a gate write that failed with `e` may nonetheless have been applied, so the key must
/// be re-read before the write is called failed.
///
/// Ambiguous (re-read):
/// * [`consul::Error::Status`] 500–599: Consul (or something in front of it) received the write
///   and failed afterwards. A leader that loses leadership while committing answers 500
///   "leadership lost while committing log", and the next leader may still commit the entry:
///   the case of the issue. A 502/503/504 from a balancer says nothing about what got through.
/// * [`consul::Error::NoLeader`]: Consul retries a write only after "no cluster leader", and says
///   no state changed then; but the error is recognised by its text in any 500 body, and an
///   election usually ends within the re-read's deadline, so the re-read costs little and
///   settles it instead of trusting the text.
/// * [`consul::Error::Timeout`]: the request was sent (a connect timeout is `Unreachable`) and
///   no answer came: it may have been applied at any point.
/// * [`consul::Error::Transport`]: the connection broke after it was made (a reset, a malformed
///   answer): the request may have been read and applied before.
/// * [`consul::Error::Decode`]: Consul answered 200, so it handled the write, but its
///   `true`/`false` could not be read.
///
/// Not ambiguous (the write was not applied; its error stands):
/// * [`consul::Error::Unreachable`]: no TCP connection (refused, or the connect timed out): the
///   request never reached Consul.
/// * [`consul::Error::NoServers`]: the agent knows no server, so it had nowhere to send the write
///   (a client agent retries a write only after "no cluster leader", which changed nothing).
/// * [`consul::Error::TooManyConnections`] (429), [`consul::Error::AclDenied`] (403) and other
///   4xx [`consul::Error::Status`]: Consul refused the request before applying it.
/// * Address, token and token-file errors, and anything else: nothing was sent.
pub(crate) fn is_ambiguous(e: &consul::Error) -> bool {
    use consul::Error as E;
    match e {
        E::Timeout { .. } | E::Transport { .. } | E::NoLeader { .. } | E::Decode { .. } => true,
        E::Status { code, .. } => (500..600).contains(code),
        _ => false,
    }
}

/// Whether `write` was applied, from the key's entry as the leader has it now (`None`: missing).
///
/// A put landed iff the key holds exactly the bytes written; it did not land iff the key is
/// as the write found it (missing for `cas` 0, else still at index `cas`). A delete landed iff
/// the key is missing; it did not land iff the key is still at index `cas`. Anything else is
/// someone else's change.
pub(crate) fn judge(write: GateWrite<'_>, now: Option<&KvEntry>) -> Finding {
    match (write, now) {
        (GateWrite::Put { value, .. }, Some(e))
            if e.value.as_deref().unwrap_or_default() == value =>
        {
            Finding::Landed
        }
        (GateWrite::Put { cas: 0, .. }, None) => Finding::NotLanded,
        (GateWrite::Put { .. }, None) => Finding::Changed,
        (GateWrite::Delete { .. }, None) => Finding::Landed,
        (GateWrite::Put { cas, .. } | GateWrite::Delete { cas }, Some(e)) => {
            if e.modify_index == cas {
                Finding::NotLanded
            } else {
                Finding::Changed
            }
        }
    }
}

/// How an error answer reads in the journal: "was answered 500", "got no answer within 10s".
pub(crate) fn answer_of(e: &consul::Error) -> String {
    match e {
        consul::Error::Timeout { timeout, .. } => format!("got no answer within {timeout:?}"),
        consul::Error::Transport { .. } => "lost its connection before the answer".to_string(),
        consul::Error::Decode { .. } => "got an unreadable answer".to_string(),
        e => match e.http_status() {
            Some(code) => format!("was answered {code}"),
            None => "failed".to_string(),
        },
    }
}

/// Decides a gate write of `key` in environment `env` that failed with the ambiguous `error`,
/// from the leader-confirmed re-read (or why it kept failing for `within`).
///
/// # Errors
/// The message for the journal: the write did not land (the original error, and that the
/// re-read found it not applied), someone else changed the key, or the outcome is unknown.
pub(crate) fn settle(
    key: &str,
    env: &str,
    write: GateWrite<'_>,
    error: &consul::Error,
    reread: Result<KvRead, String>,
    within: Duration,
) -> Result<Written, String> {
    let noun = write.noun();
    let read = reread.map_err(|why| {
        format!(
            "{error}; whether the {noun} was applied is unknown: re-reading {key} from the \
             leader kept failing for {within:?} ({why}); see the key with `maintctl status \
             --env {env}`, then run `maintctl resume --env {env}` once Consul has a leader \
             (it checks the key before writing again)"
        )
    })?;
    let answered = answer_of(error);
    match judge(write, read.entry.as_ref()) {
        Finding::Landed => {
            let note = match &read.entry {
                Some(e) => format!(
                    "the {noun} {answered} ({error}) but landed at index {}",
                    e.modify_index
                ),
                None => format!(
                    "the {noun} {answered} ({error}) but landed: the key is gone (read at \
                     index {})",
                    read.meta.index
                ),
            };
            Ok(Written::Found {
                entry: read.entry,
                note,
            })
        }
        Finding::NotLanded => Err(format!(
            "{error}; a re-read from the leader found the {noun} not applied"
        )),
        Finding::Changed => Err(format!(
            "the {noun} {answered} ({error}) and a re-read from the leader found {key} changed \
             by someone else ({}); check it and run again",
            match &read.entry {
                Some(e) => format!("now at index {}", e.modify_index),
                None => "now missing".to_string(),
            }
        )),
    }
}

/// Calls `read` until it succeeds, retrying transient failures until `within` has passed (each
/// try is cut off at that deadline too).
///
/// # Errors
/// The first failure that is not transient, or the last one when the deadline passed.
pub(crate) async fn reread_until<T, F, Fut>(within: Duration, mut read: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, consul::Error>>,
{
    let deadline = tokio::time::Instant::now() + within;
    let mut last = String::from("no answer");
    loop {
        match tokio::time::timeout_at(deadline, read()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) if e.is_transient() => last = e.to_string(),
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(format!("{last}; then a read hung until the deadline")),
        }
        if tokio::time::Instant::now() + POLL_EVERY >= deadline {
            return Err(last);
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drawbridge_core::consul::{Error, QueryMeta};
    use std::time::Instant;

    const KEY: &str = "drawbridge/mock/gate";
    const DOC: &[u8] = br#"{"mode":"maintenance","started_at":"2026-01-02T03:04:05.123Z"}"#;

    fn entry(value: &[u8], modify_index: u64) -> KvEntry {
        KvEntry {
            key: KEY.to_string(),
            value: Some(value.to_vec()),
            create_index: 3,
            modify_index,
            lock_index: 0,
            flags: 0,
            session: None,
        }
    }

    fn read(entry: Option<KvEntry>, index: u64) -> KvRead {
        KvRead {
            entry,
            meta: QueryMeta {
                index,
                known_leader: true,
                last_contact: Duration::ZERO,
            },
        }
    }

    fn what() -> (String, String) {
        (format!("kv put {KEY}"), "http://127.0.0.1:8500".to_string())
    }

    fn status(code: u16, body: &str) -> Error {
        let (what, address) = what();
        Error::Status {
            what,
            address,
            code,
            body: body.to_string(),
        }
    }

    fn timeout() -> Error {
        let (what, address) = what();
        Error::Timeout {
            what,
            address,
            timeout: Duration::from_secs(10),
        }
    }

    fn no_leader() -> Error {
        let (what, address) = what();
        Error::NoLeader { what, address }
    }

    /// A real `reqwest::Error` (a bad URL), for the variants that carry one.
    fn reqwest_error() -> reqwest::Error {
        drawbridge_core::install_crypto_provider();
        reqwest::Client::new()
            .get("http://[::1")
            .build()
            .expect_err("the URL does not parse")
    }

    const PUT_NEW: GateWrite<'static> = GateWrite::Put { value: DOC, cas: 0 };
    const PUT_OVER: GateWrite<'static> = GateWrite::Put { value: DOC, cas: 7 };
    const DELETE: GateWrite<'static> = GateWrite::Delete { cas: 7 };

    #[test]
    fn a_put_landed_when_the_key_holds_exactly_its_bytes() {
        assert_eq!(judge(PUT_NEW, Some(&entry(DOC, 9))), Finding::Landed);
        assert_eq!(judge(PUT_OVER, Some(&entry(DOC, 9))), Finding::Landed);
    }

    #[test]
    fn a_put_did_not_land_when_the_key_is_as_it_found_it() {
        assert_eq!(judge(PUT_NEW, None), Finding::NotLanded);
        let before = entry(br#"{"mode":"normal"}"#, 7);
        assert_eq!(judge(PUT_OVER, Some(&before)), Finding::NotLanded);
    }

    #[test]
    fn a_put_meets_someone_elses_change_otherwise() {
        // Other bytes at another index, whether the key was missing or not before.
        let other = entry(
            br#"{"mode":"maintenance","started_at":"2026-01-02T03:04:06Z"}"#,
            9,
        );
        assert_eq!(judge(PUT_NEW, Some(&other)), Finding::Changed);
        assert_eq!(judge(PUT_OVER, Some(&other)), Finding::Changed);
        // The key it overwrote is gone.
        assert_eq!(judge(PUT_OVER, None), Finding::Changed);
        // An empty value is not the document.
        let mut empty = entry(b"", 9);
        empty.value = None;
        assert_eq!(judge(PUT_NEW, Some(&empty)), Finding::Changed);
    }

    #[test]
    fn a_delete_landed_when_the_key_is_missing_and_not_when_it_is_unchanged() {
        assert_eq!(judge(DELETE, None), Finding::Landed);
        assert_eq!(judge(DELETE, Some(&entry(DOC, 7))), Finding::NotLanded);
        assert_eq!(judge(DELETE, Some(&entry(DOC, 8))), Finding::Changed);
    }

    #[test]
    fn only_answers_that_may_hide_an_applied_write_are_ambiguous() {
        let (what, address) = what();
        let ambiguous = [
            status(500, "leadership lost while committing log"),
            status(502, "bad gateway"),
            status(503, ""),
            status(599, ""),
            no_leader(),
            timeout(),
            Error::Transport {
                what: what.clone(),
                address: address.clone(),
                source: reqwest_error(),
            },
            Error::Decode {
                what: what.clone(),
                address: address.clone(),
                source: "expected true or false".into(),
            },
        ];
        for e in &ambiguous {
            assert!(is_ambiguous(e), "{e}");
        }
        let certain = [
            Error::Unreachable {
                what: what.clone(),
                address: address.clone(),
                source: reqwest_error(),
            },
            Error::NoServers {
                what: what.clone(),
                address: address.clone(),
            },
            Error::TooManyConnections {
                what: what.clone(),
                address: address.clone(),
            },
            Error::AclDenied {
                what: what.clone(),
                address: address.clone(),
                body: "Permission denied".to_string(),
            },
            Error::SessionNotFound {
                what: what.clone(),
                address: address.clone(),
                id: "s1".to_string(),
            },
            status(400, "bad request"),
            status(404, ""),
            status(413, "too large"),
            status(600, ""),
            Error::InvalidAddress {
                address: address.clone(),
                reason: "https".to_string(),
            },
            Error::InvalidToken {
                reason: "newline".to_string(),
            },
        ];
        for e in &certain {
            assert!(!is_ambiguous(e), "{e}");
        }
    }

    #[test]
    fn the_answer_is_named_for_the_journal() {
        assert_eq!(answer_of(&status(500, "x")), "was answered 500");
        assert_eq!(answer_of(&no_leader()), "was answered 500");
        assert_eq!(answer_of(&timeout()), "got no answer within 10s");
        let (what, address) = what();
        let reset = Error::Transport {
            what: what.clone(),
            address: address.clone(),
            source: reqwest_error(),
        };
        assert_eq!(answer_of(&reset), "lost its connection before the answer");
        let decode = Error::Decode {
            what,
            address,
            source: "x".into(),
        };
        assert_eq!(answer_of(&decode), "got an unreadable answer");
        let token = Error::InvalidToken {
            reason: "x".to_string(),
        };
        assert_eq!(answer_of(&token), "failed");
    }

    const WITHIN: Duration = Duration::from_secs(3);

    #[test]
    fn a_landed_put_goes_on_with_its_index_and_says_what_was_found() {
        let error = status(500, "leadership lost while committing log");
        let found = settle(
            KEY,
            "mock",
            PUT_NEW,
            &error,
            Ok(read(Some(entry(DOC, 42)), 42)),
            WITHIN,
        );
        let Ok(Written::Found {
            entry: Some(e),
            note,
        }) = found
        else {
            panic!("{found:?}");
        };
        assert_eq!(e.modify_index, 42);
        assert!(
            note.starts_with("the write was answered 500 (consul kv put drawbridge/mock/gate"),
            "{note}"
        );
        assert!(
            note.contains("leadership lost while committing log"),
            "{note}"
        );
        assert!(note.ends_with("but landed at index 42"), "{note}");
    }

    #[test]
    fn a_landed_delete_goes_on_and_says_the_key_is_gone() {
        let found = settle(KEY, "mock", DELETE, &timeout(), Ok(read(None, 50)), WITHIN);
        let Ok(Written::Found { entry: None, note }) = found else {
            panic!("{found:?}");
        };
        assert!(
            note.starts_with("the delete got no answer within 10s ("),
            "{note}"
        );
        assert!(
            note.ends_with("but landed: the key is gone (read at index 50)"),
            "{note}"
        );
    }

    #[test]
    fn a_write_that_did_not_land_keeps_its_error() {
        let error = no_leader();
        let m = settle(KEY, "mock", PUT_NEW, &error, Ok(read(None, 50)), WITHIN).unwrap_err();
        assert!(m.starts_with(&error.to_string()), "{m}");
        assert!(
            m.ends_with("a re-read from the leader found the write not applied"),
            "{m}"
        );
        let m = settle(
            KEY,
            "mock",
            DELETE,
            &error,
            Ok(read(Some(entry(DOC, 7)), 50)),
            WITHIN,
        )
        .unwrap_err();
        assert!(m.ends_with("found the delete not applied"), "{m}");
    }

    #[test]
    fn someone_elses_change_is_a_failure_asking_to_run_again() {
        let other = entry(br#"{"mode":"normal"}"#, 60);
        let m = settle(
            KEY,
            "mock",
            PUT_NEW,
            &timeout(),
            Ok(read(Some(other.clone()), 60)),
            WITHIN,
        )
        .unwrap_err();
        assert!(
            m.contains("changed by someone else (now at index 60)"),
            "{m}"
        );
        assert!(m.ends_with("check it and run again"), "{m}");
        let m = settle(
            KEY,
            "mock",
            DELETE,
            &timeout(),
            Ok(read(Some(other), 60)),
            WITHIN,
        )
        .unwrap_err();
        assert!(m.contains("changed by someone else"), "{m}");
        let m = settle(
            KEY,
            "mock",
            PUT_OVER,
            &timeout(),
            Ok(read(None, 60)),
            WITHIN,
        )
        .unwrap_err();
        assert!(m.contains("(now missing)"), "{m}");
    }

    #[test]
    fn an_unanswered_reread_leaves_the_outcome_unknown_and_says_what_to_do() {
        let error = status(500, "leadership lost while committing log");
        let m = settle(
            KEY,
            "mock",
            PUT_NEW,
            &error,
            Err("no cluster leader".to_string()),
            WITHIN,
        )
        .unwrap_err();
        assert!(m.starts_with(&error.to_string()), "{m}");
        assert!(
            m.contains("whether the write was applied is unknown"),
            "{m}"
        );
        assert!(m.contains("kept failing for 3s (no cluster leader)"), "{m}");
        assert!(m.contains("maintctl status --env mock"), "{m}");
        assert!(m.contains("maintctl resume --env mock"), "{m}");
    }

    #[tokio::test]
    async fn the_reread_retries_transient_failures() {
        let mut calls = 0;
        let got = reread_until(WITHIN, || {
            calls += 1;
            let n = calls;
            async move {
                if n < 3 {
                    Err(no_leader())
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(got, Ok(3));
    }

    #[tokio::test]
    async fn the_reread_stops_at_a_failure_that_is_not_transient() {
        let mut calls = 0;
        let got: Result<(), String> = reread_until(WITHIN, || {
            calls += 1;
            async { Err(status(403, "Permission denied")) }
        })
        .await;
        assert_eq!(calls, 1);
        assert!(got.unwrap_err().contains("http 403"));
    }

    #[tokio::test]
    async fn the_reread_gives_up_at_its_deadline() {
        let started = Instant::now();
        let got: Result<(), String> =
            reread_until(Duration::from_millis(700), || async { Err(no_leader()) }).await;
        assert!(got.unwrap_err().contains("no cluster leader"));
        assert!(started.elapsed() < Duration::from_secs(2));
        // A read that hangs is cut off at the deadline too.
        let started = Instant::now();
        let got: Result<(), String> = reread_until(Duration::from_millis(300), || async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(())
        })
        .await;
        assert!(got.unwrap_err().contains("hung until the deadline"));
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
