//! The inventory `maintctl` reads, written as TOML: [`Inventory`] with its boxes, extra steps,
//! smoke tests and bypass keys, and [`ENV`], the environment it is written as.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// The environment of the scene's inventory.
pub const ENV: &str = "mock";

/// One `[[environments.NAME.smoke]]` entry.
#[derive(Debug, Clone, Serialize)]
pub struct SmokeTest {
    pub name: String,
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect_body: Option<String>,
}

/// One `[[environments.NAME.boxes]]` entry.
#[derive(Debug, Clone, Default, Serialize)]
pub struct InventoryBox {
    pub name: String,
    pub role: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consul_agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
}

impl InventoryBox {
    /// An `api_ui` box put into node maintenance through its own Consul agent.
    pub fn api_ui(name: &str, consul_agent: &str) -> InventoryBox {
        InventoryBox {
            name: name.to_owned(),
            role: "api_ui".to_owned(),
            consul_agent: Some(consul_agent.to_owned()),
            ..InventoryBox::default()
        }
    }

    /// The `api_ui` box of `agent`, named as its node.
    pub fn api_ui_of(agent: &crate::consul::ConsulClientAgent) -> InventoryBox {
        InventoryBox::api_ui(agent.node_name(), &agent.http_addr())
    }

    /// A box of `role` (`worker` or `scheduler`) reached with `ssh <alias>`, with its commands.
    pub fn over_ssh(
        name: &str,
        role: &str,
        alias: &str,
        stop: &Path,
        start: &Path,
        check: &Path,
    ) -> InventoryBox {
        InventoryBox {
            name: name.to_owned(),
            role: role.to_owned(),
            ssh: Some(alias.to_owned()),
            stop: Some(stop.display().to_string()),
            start: Some(start.display().to_string()),
            check: Some(check.display().to_string()),
            ..InventoryBox::default()
        }
    }
}

/// One `[[environments.NAME.steps]]` entry: a command or a webhook.
#[derive(Debug, Clone, Serialize)]
pub struct ExtraStep {
    pub name: String,
    /// `before_down`, `after_down`, `before_up` or `after_up`.
    pub when: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
}

impl ExtraStep {
    /// A step that runs `command` with `sh -c`.
    pub fn command(name: &str, when: &str, command: &str) -> ExtraStep {
        ExtraStep {
            name: name.to_owned(),
            when: when.to_owned(),
            command: Some(command.to_owned()),
            webhook: None,
        }
    }

    /// A step that POSTs the run's details to `url`.
    pub fn webhook(name: &str, when: &str, url: &str) -> ExtraStep {
        ExtraStep {
            name: name.to_owned(),
            when: when.to_owned(),
            command: None,
            webhook: Some(url.to_owned()),
        }
    }
}

/// `[[environments.NAME.bypass.keys]]`.
#[derive(Debug, Clone, Serialize)]
pub struct BypassKey {
    pub id: String,
    pub secret: String,
}

/// `[environments.NAME.bypass]`.
#[derive(Debug, Clone, Serialize)]
pub struct Bypass {
    pub environment: String,
    pub keys: Vec<BypassKey>,
}

/// One `[environments.NAME]`, as the file says it; fields are public so a test can change any
/// before writing it with [`Maintctl::write_inventory`](super::Maintctl::write_inventory).
#[derive(Debug, Clone, Serialize)]
pub struct Inventory {
    pub consul: String,
    pub key: String,
    pub verify_timeout: String,
    pub step_timeout: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh_config: Option<PathBuf>,
    pub proxy_service: String,
    pub public_page_urls: Vec<String>,
    pub public_api_urls: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bypass: Option<Bypass>,
    pub smoke: Vec<SmokeTest>,
    pub boxes: Vec<InventoryBox>,
    pub steps: Vec<ExtraStep>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roll: Option<Roll>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rehearsals: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_window: Option<String>,
    /// `[environments.NAME.notices]`, as a test writes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notices: Option<toml::Table>,
}

/// `[environments.NAME.roll]`: how `maintctl roll` replaces a box (here always by a call).
#[derive(Debug, Clone, Serialize)]
pub struct Roll {
    pub url: String,
    pub healthy_for: String,
    pub healthy_timeout: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smoke_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smoke_expect_body: Option<String>,
}

/// `[environments.NAME.canary]`: when `maintctl canary` rolls back.
#[derive(Debug, Clone, Serialize)]
pub struct Canary {
    pub max_error_rate: f64,
    pub max_p99_ratio: f64,
    pub min_requests: u64,
}

impl Inventory {
    /// The inventory of `boxes`, with Consul at `consul`, gate key `key` and proxies
    /// registered as `drawbridge`; verifications wait 10 s, steps 20 s; no public URL, smoke
    /// test, bypass key or extra step.
    pub fn new(consul: String, key: &str, boxes: Vec<InventoryBox>) -> Inventory {
        Inventory {
            consul,
            key: key.to_owned(),
            verify_timeout: "10s".to_owned(),
            step_timeout: "20s".to_owned(),
            ssh_config: None,
            proxy_service: "drawbridge".to_owned(),
            public_page_urls: Vec::new(),
            public_api_urls: Vec::new(),
            bypass: None,
            smoke: Vec::new(),
            boxes,
            steps: Vec::new(),
            canary: None,
            roll: None,
            rehearsals: Vec::new(),
            max_window: None,
            notices: None,
        }
    }

    /// The whole file with this inventory as environment `env`.
    pub fn to_toml(&self, env: &str) -> String {
        #[derive(Serialize)]
        struct File<'a> {
            environments: BTreeMap<&'a str, &'a Inventory>,
        }
        let file = File {
            environments: BTreeMap::from([(env, self)]),
        };
        toml::to_string(&file).expect("the inventory always serialises")
    }

    /// The smoke test called `name`, to change it.
    ///
    /// # Panics
    /// When there is none.
    pub fn smoke_mut(&mut self, name: &str) -> &mut SmokeTest {
        self.smoke
            .iter_mut()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no smoke test {name:?} in the inventory"))
    }

    /// The box called `name`, to change it.
    ///
    /// # Panics
    /// When there is none.
    pub fn box_mut(&mut self, name: &str) -> &mut InventoryBox {
        self.boxes
            .iter_mut()
            .find(|b| b.name == name)
            .unwrap_or_else(|| panic!("no box {name:?} in the inventory"))
    }
}
