//! The environment as seen from outside: the gate key, what each proxy serves, what the public
//! URLs answer and each box's state. `status` prints it; `down` and `up` end by checking it, so
//! "verified" means the end state was observed, not that the planned steps ran.

use crate::config::{BoxAccess, BoxSettings, Environment, Role};
use crate::plan::EndState;
use crate::proxies::{self, Expect, Proxy};
use crate::remote::{self, BoxState};
use drawbridge_core::consul::{Client, QueryOptions};
use drawbridge_core::gate::{GateDoc, Mode};
use drawbridge_core::status::StatusReport;
use futures_util::stream::{self, StreamExt};
use std::future::Future;

/// The gate key as read from Consul.
#[derive(Debug, Clone)]
pub enum KeyState {
    /// No key: every proxy serves normal.
    Missing,
    /// A valid gate document at this index.
    Set { doc: GateDoc, index: u64 },
    /// A value that is not a gate document (proxies keep their last state).
    Invalid { error: String, index: u64 },
}

impl KeyState {
    /// The mode the key asks for, as a word (`invalid` for a value proxies refuse).
    pub fn mode_name(&self) -> String {
        match self {
            KeyState::Missing => Mode::Normal.to_string(),
            KeyState::Set { doc, .. } => doc.mode.to_string(),
            KeyState::Invalid { .. } => "invalid".to_string(),
        }
    }
}

/// One box's state, or why it could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BoxSeen {
    /// An API/UI box reached through its Consul agent: whether node maintenance is on.
    NodeMaintenance(bool),
    /// A box with a check command or URL.
    Check(BoxState),
    /// Not readable now.
    Unknown(String),
}

/// One box of the inventory, as seen.
#[derive(Debug, Clone)]
pub struct BoxView {
    pub name: String,
    pub role: Role,
    pub seen: BoxSeen,
}

impl BoxView {
    /// The state in a word or two, for tables.
    pub fn state_name(&self) -> String {
        match &self.seen {
            BoxSeen::NodeMaintenance(true) => "node maintenance".to_string(),
            BoxSeen::NodeMaintenance(false) => "serving".to_string(),
            BoxSeen::Check(BoxState::Running) => "running".to_string(),
            BoxSeen::Check(BoxState::Stopped) => "stopped".to_string(),
            BoxSeen::Unknown(_) => "unknown".to_string(),
        }
    }

    /// Whether the box is taken down (`true`), serving (`false`), or unknown (`None`).
    fn is_down(&self) -> Option<bool> {
        match &self.seen {
            BoxSeen::NodeMaintenance(on) => Some(*on),
            BoxSeen::Check(state) => Some(*state == BoxState::Stopped),
            BoxSeen::Unknown(_) => None,
        }
    }
}

/// One proxy's `/status`, or why it could not be read.
#[derive(Debug, Clone)]
pub struct ProxyView {
    pub name: String,
    pub report: Result<StatusReport, String>,
}

/// Everything observed, at one moment.
#[derive(Debug, Clone)]
pub struct Survey {
    pub key: KeyState,
    pub proxies: Result<Vec<ProxyView>, String>,
    pub boxes: Vec<BoxView>,
}

/// Reads the key, every proxy and every box of `env`.
///
/// # Errors
/// The key cannot be read (without it nothing can be judged).
pub async fn survey(
    env: &Environment,
    consul: &Client,
    http: &reqwest::Client,
) -> Result<Survey, String> {
    let read = consul
        .kv_get(&env.key, &QueryOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let key = match read.entry {
        None => KeyState::Missing,
        Some(e) => match GateDoc::parse(e.value.as_deref().unwrap_or_default()) {
            Ok(doc) => KeyState::Set {
                doc,
                index: e.modify_index,
            },
            Err(err) => KeyState::Invalid {
                error: err.to_string(),
                index: e.modify_index,
            },
        },
    };
    let proxies = async {
        match proxies::discover(env, consul).await {
            Ok(list) => Ok(read_proxies(env, http, &list).await),
            Err(e) => Err(e),
        }
    };
    let looks = env
        .boxes
        .iter()
        .map(|b| look_at_box(env, consul, http, b))
        .collect();
    let (proxies, boxes) = tokio::join!(proxies, all_at_once(env, looks));
    Ok(Survey {
        key,
        proxies,
        boxes,
    })
}

/// Awaits every look, at most `env.parallel` at a time (a survey of a large fleet takes the time
/// of its slowest box, not of all of them); the answers keep the looks' order. The proxies and
/// the boxes are looked at side by side, each kind with its own `parallel`.
async fn all_at_once<Fut: Future>(env: &Environment, looks: Vec<Fut>) -> Vec<Fut::Output> {
    stream::iter(looks).buffered(env.parallel).collect().await
}

/// What `b` is now: node maintenance through Consul for an API/UI box, its check otherwise.
async fn look_at_box(
    env: &Environment,
    consul: &Client,
    http: &reqwest::Client,
    b: &BoxSettings,
) -> BoxView {
    let seen = match &b.access {
        BoxAccess::ConsulAgent(_) => match consul.health_node(&b.node).await {
            Ok(checks) => BoxSeen::NodeMaintenance(checks.iter().any(|c| c.is_node_maintenance())),
            Err(e) => BoxSeen::Unknown(e.to_string()),
        },
        _ => match remote::check(
            http,
            env.ssh_config.as_deref(),
            b,
            "status",
            env.step_timeout,
        )
        .await
        {
            Ok(state) => BoxSeen::Check(state),
            Err(e) => BoxSeen::Unknown(e),
        },
    };
    BoxView {
        name: b.name.clone(),
        role: b.role,
        seen,
    }
}

async fn read_proxies(env: &Environment, http: &reqwest::Client, list: &[Proxy]) -> Vec<ProxyView> {
    let reads = list.iter().map(|p| read_proxy(env, http, p)).collect();
    all_at_once(env, reads).await
}

/// One proxy's `/status`, or why it could not be read.
async fn read_proxy(env: &Environment, http: &reqwest::Client, p: &Proxy) -> ProxyView {
    ProxyView {
        name: p.name.clone(),
        report: proxies::status(http, env, p).await,
    }
}

/// What the public URLs of `env` answer that they should not when the environment is `want`
/// (down: the page and problem+json; up: open).
pub async fn public_differences(
    env: &Environment,
    http: &reqwest::Client,
    want: EndState,
) -> Vec<String> {
    let (page, api) = match want {
        EndState::Down => (Expect::Page, Expect::Problem),
        EndState::Up => (Expect::Open, Expect::Open),
    };
    let urls = (env.public_page_urls.iter().map(move |u| (u, page)))
        .chain(env.public_api_urls.iter().map(move |u| (u, api)));
    let checks = urls
        .map(|(url, expect)| proxies::check_public(http, url, expect))
        .collect();
    all_at_once(env, checks)
        .await
        .into_iter()
        .filter_map(Result::err)
        .collect()
}

impl Survey {
    /// Everything that is not as the environment should be when `want` (down: the key in
    /// maintenance for every route, every proxy serving it, every box taken down; up: no
    /// maintenance, every proxy open, every box serving), one line each; empty when all is so.
    pub fn differences(&self, want: EndState) -> Vec<String> {
        let mut found = Vec::new();
        let mode = match want {
            EndState::Down => Mode::Maintenance,
            EndState::Up => Mode::Normal,
        };
        let index = match (&self.key, want) {
            (KeyState::Set { doc, index }, EndState::Down)
                if doc.mode == Mode::Maintenance && doc.scope.is_none() =>
            {
                Some(*index)
            }
            (KeyState::Set { doc, index }, EndState::Up) if doc.mode == Mode::Normal => {
                Some(*index)
            }
            (KeyState::Missing, EndState::Up) => Some(0),
            (KeyState::Set { doc, .. }, EndState::Down) if doc.scope.is_some() => {
                let routes = doc.scope.as_deref().unwrap_or_default().join(", ");
                found.push(format!(
                    "the gate key closes only some routes ({routes}), not all"
                ));
                None
            }
            (KeyState::Invalid { error, index }, _) => {
                found.push(format!(
                    "the gate key holds an invalid value at index {index}: {error}"
                ));
                None
            }
            (key, _) => {
                found.push(format!("the gate key says {}, not {mode}", key.mode_name()));
                None
            }
        };
        match &self.proxies {
            Err(e) => found.push(format!("the proxies cannot be listed: {e}")),
            Ok(list) if list.is_empty() => found.push("no proxy is registered".to_string()),
            Ok(list) => {
                for p in list {
                    let confirmed = match (&p.report, index) {
                        (Err(e), _) => Err(e.clone()),
                        (Ok(report), Some(index)) => proxies::confirms(report, mode, index),
                        (Ok(report), None) => Err(format!("serves {}", report.gate.mode)),
                    };
                    if let Err(e) = confirmed {
                        found.push(format!("proxy {}: {e}", p.name));
                    }
                }
            }
        }
        for b in &self.boxes {
            match (b.is_down(), want) {
                (Some(true), EndState::Down) | (Some(false), EndState::Up) => {}
                (None, _) => found.push(format!(
                    "box {} ({}): cannot be read: {}",
                    b.name,
                    b.role.as_str(),
                    match &b.seen {
                        BoxSeen::Unknown(e) => e.as_str(),
                        _ => "",
                    }
                )),
                _ => found.push(format!(
                    "box {} ({}): {}",
                    b.name,
                    b.role.as_str(),
                    b.state_name()
                )),
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn survey(key: KeyState, boxes: Vec<(Role, BoxSeen)>) -> Survey {
        Survey {
            key,
            proxies: Ok(Vec::new()),
            boxes: boxes
                .into_iter()
                .enumerate()
                .map(|(i, (role, seen))| BoxView {
                    name: format!("box{i}"),
                    role,
                    seen,
                })
                .collect(),
        }
    }

    #[test]
    fn an_environment_is_up_only_when_every_part_is() {
        let open = survey(
            KeyState::Missing,
            vec![
                (Role::ApiUi, BoxSeen::NodeMaintenance(false)),
                (Role::Worker, BoxSeen::Check(BoxState::Running)),
            ],
        );
        assert_eq!(open.differences(EndState::Up), ["no proxy is registered"]);
        let half = survey(
            KeyState::Set {
                doc: GateDoc::parse(br#"{"mode":"maintenance"}"#).unwrap(),
                index: 9,
            },
            vec![
                (Role::ApiUi, BoxSeen::NodeMaintenance(true)),
                (Role::Worker, BoxSeen::Check(BoxState::Running)),
                (Role::Scheduler, BoxSeen::Unknown("ssh: timed out".into())),
            ],
        );
        let up = half.differences(EndState::Up);
        assert!(
            up.contains(&"the gate key says maintenance, not normal".to_string()),
            "{up:?}"
        );
        assert!(
            up.contains(&"box box0 (api_ui): node maintenance".to_string()),
            "{up:?}"
        );
        assert!(
            up.iter()
                .any(|d| d.contains("box2 (scheduler): cannot be read: ssh: timed out")),
            "{up:?}"
        );
        let down = half.differences(EndState::Down);
        assert!(
            down.contains(&"box box1 (worker): running".to_string()),
            "{down:?}"
        );
        assert!(!down.iter().any(|d| d.contains("gate key")), "{down:?}");
    }

    #[test]
    fn a_scoped_maintenance_is_not_a_whole_take_down() {
        let scoped = survey(
            KeyState::Set {
                doc: GateDoc::parse(br#"{"mode":"maintenance","scope":["api"]}"#).unwrap(),
                index: 4,
            },
            Vec::new(),
        );
        assert_eq!(
            scoped.differences(EndState::Down)[0],
            "the gate key closes only some routes (api), not all"
        );
    }
}
