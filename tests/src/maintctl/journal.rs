//! maintctl's records in Consul KV, read back from outside: [`JournalView`] for the lock and
//! the journal under a prefix, [`RunView`] for one journalled run.

use std::time::Duration;

use drawbridge_core::consul::{Client, KvEntry, QueryOptions};
use serde_json::Value;

use crate::eventually::try_eventually;

/// The Consul KV prefix of maintctl's lock and journal for [`ENV`](super::ENV).
pub const PREFIX: &str = "maintctl/mock";

/// One journalled run, as JSON (`maintctl/<env>/runs/<id>`).
#[derive(Debug, Clone)]
pub struct RunView(pub Value);

impl std::fmt::Display for RunView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}",
            serde_json::to_string_pretty(&self.0).unwrap_or_default()
        )
    }
}

impl RunView {
    /// The run id.
    pub fn id(&self) -> &str {
        self.0["id"].as_str().unwrap_or_default()
    }

    /// `running`, `done`, `failed` or `interrupted`.
    pub fn status(&self) -> &str {
        self.0["status"].as_str().unwrap_or_default()
    }

    /// The command line that ran it.
    pub fn command(&self) -> &str {
        self.0["command"].as_str().unwrap_or_default()
    }

    /// `down` or `up`.
    pub fn direction(&self) -> &str {
        self.0["direction"].as_str().unwrap_or_default()
    }

    /// The ids of its steps, in order.
    pub fn step_ids(&self) -> Vec<String> {
        self.steps()
            .iter()
            .filter_map(|s| s["id"].as_str().map(str::to_owned))
            .collect()
    }

    fn steps(&self) -> Vec<Value> {
        self.0["steps"].as_array().cloned().unwrap_or_default()
    }

    /// The record of step `id`.
    pub fn step(&self, id: &str) -> Option<Value> {
        self.steps().into_iter().find(|s| s["id"] == id)
    }

    /// The status of step `id` (`pending`, `running`, `done`, `failed`).
    pub fn step_status(&self, id: &str) -> Option<String> {
        self.step(id)?["status"].as_str().map(str::to_owned)
    }

    /// The status of `target` in step `step` (`pending`, `intent`, `done`, `skipped`,
    /// `failed`).
    pub fn target_status(&self, step: &str, target: &str) -> Option<String> {
        self.target(step, target)?["status"]
            .as_str()
            .map(str::to_owned)
    }

    /// Asserts that step `id` has status `want`, showing the run when not.
    ///
    /// # Panics
    /// When the step's status is another or the step is missing.
    #[track_caller]
    pub fn assert_step(&self, id: &str, want: &str) {
        assert_eq!(self.step_status(id).as_deref(), Some(want), "{self}");
    }

    /// Asserts that `target` in step `step` has status `want`, showing the run when not.
    ///
    /// # Panics
    /// When the target's status is another or the target is missing.
    #[track_caller]
    pub fn assert_target(&self, step: &str, target: &str, want: &str) {
        assert_eq!(
            self.target_status(step, target).as_deref(),
            Some(want),
            "{self}"
        );
    }

    /// The record of `target` in step `step`.
    pub fn target(&self, step: &str, target: &str) -> Option<Value> {
        self.step(step)?["targets"]
            .as_array()?
            .iter()
            .find(|t| t["target"] == target)
            .cloned()
    }
}

/// Read-only access to maintctl's records in Consul KV under a prefix.
#[derive(Debug, Clone)]
pub struct JournalView {
    consul: Client,
    prefix: String,
}

impl JournalView {
    /// The records under `prefix` (e.g. [`PREFIX`]) in the Consul at `consul`.
    pub fn new(consul: Client, prefix: &str) -> JournalView {
        JournalView {
            consul,
            prefix: prefix.to_owned(),
        }
    }

    async fn get(&self, key: &str) -> Option<KvEntry> {
        self.consul
            .kv_get(key, &QueryOptions::default())
            .await
            .unwrap_or_else(|e| panic!("consul kv get {key}: {e}"))
            .entry
    }

    /// Every key under the prefix.
    pub async fn keys(&self) -> Vec<String> {
        let prefix = format!("{}/", self.prefix);
        self.consul
            .kv_list(&prefix)
            .await
            .unwrap_or_else(|e| panic!("consul kv list {prefix}: {e}"))
            .into_iter()
            .map(|e| e.key)
            .collect()
    }

    /// The id `<prefix>/last` names.
    pub async fn last_id(&self) -> Option<String> {
        let entry = self.get(&format!("{}/last", self.prefix)).await?;
        entry
            .value
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    /// The run `id`.
    ///
    /// # Panics
    /// When its value is not JSON.
    pub async fn run(&self, id: &str) -> Option<RunView> {
        let key = format!("{}/runs/{id}", self.prefix);
        let entry = self.get(&key).await?;
        let raw = entry.value.unwrap_or_default();
        Some(RunView(serde_json::from_slice(&raw).unwrap_or_else(|e| {
            panic!("{key} is not JSON ({e}): {}", String::from_utf8_lossy(&raw))
        })))
    }

    /// Every run of the journal, by start.
    pub async fn runs(&self) -> Vec<RunView> {
        let prefix = format!("{}/runs/", self.prefix);
        let mut runs: Vec<RunView> = Vec::new();
        for key in self.keys().await.iter().filter(|k| k.starts_with(&prefix)) {
            if let Some(run) = self.run(&key[prefix.len()..]).await {
                runs.push(run);
            }
        }
        runs.sort_by_key(|r| r.0["started_at"].as_str().unwrap_or_default().to_string());
        runs
    }

    /// The run `<prefix>/last` names.
    pub async fn latest(&self) -> Option<RunView> {
        let id = self.last_id().await?;
        self.run(&id).await
    }

    /// The lock's value (the holder JSON) and its session, when the key exists.
    pub async fn lock(&self) -> Option<(Option<Value>, Option<String>)> {
        let entry = self.get(&format!("{}/lock", self.prefix)).await?;
        let holder = entry
            .value
            .filter(|v| !v.is_empty())
            .and_then(|v| serde_json::from_slice(&v).ok());
        Some((holder, entry.session))
    }

    /// Waits until the latest run satisfies `check` and returns it.
    ///
    /// # Panics
    /// After `deadline`, with `what` and the last run seen.
    pub async fn wait_latest<F>(&self, what: &str, deadline: Duration, check: F) -> RunView
    where
        F: Fn(&RunView) -> bool,
    {
        let result = try_eventually(deadline, Duration::from_millis(25), || async {
            match self.latest().await {
                Some(run) if check(&run) => Ok(run),
                Some(run) => Err(run.to_string()),
                None => Err("no run in the journal yet".to_owned()),
            }
        })
        .await;
        match result {
            Ok(run) => run,
            Err(last) => panic!("journal: {what}: not within {deadline:?}; last run: {last}"),
        }
    }
}
