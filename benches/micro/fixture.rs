//! What the micro-benches share: a proxy config checked by the real `Config::parse` (a page and
//! an api route, a trusted CIDR and proxy network, one bypass key), its router, and gate states built by the real
//! `StateBuilder`, as the proxy holds them on the request path.

use drawbridge::config::Config;
use drawbridge::gate_state::{GateState, StateBuilder, StateSource};
use drawbridge::router::Router;
use drawbridge_core::gate::GateDoc;
use std::time::Duration;
use time::OffsetDateTime;

/// The environment tokens are issued for.
pub const ENVIRONMENT: &str = "bench";
/// "now" for token checks and `Retry-After` (Unix seconds), fixed so every run measures the same.
pub const NOW: i64 = 1_795_000_000;

pub struct Fixture {
    pub config: Config,
    pub router: Router,
    /// A valid token for `ENVIRONMENT`, issued at `NOW` for 1 h.
    pub token: String,
}

impl Fixture {
    /// Writes the config and key file to a temp folder, parses them, and removes the folder
    /// (the key is read at parse time).
    pub fn set_up() -> Fixture {
        let dir = std::env::temp_dir().join(format!("drawbridge-micro-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the bench's temp folder");
        let secret = dir.join("bypass.key");
        std::fs::write(&secret, "0123456789abcdef0123456789abcdef0123456789abcdef")
            .expect("write the bench's key file");
        let d = dir.display();
        let text = format!(
            r#"
[server]
listen = ["127.0.0.1:18080"]
pid_file = "{d}/pid"
upgrade_sock = "{d}/sock"
state_file = "{d}/state.json"

[consul]
key = "bench/gate"

[bypass]
trusted_cidrs = ["10.9.0.0/16"]
trusted_proxies = ["192.168.0.0/16"]
environment = "{ENVIRONMENT}"

[[bypass.keys]]
id = "k1"
secret_file = "{d}/bypass.key"

[pools.ui]
servers = ["127.0.0.1:3000"]

[pools.api]
servers = ["127.0.0.1:3001"]

[[routes]]
name = "api"
path_prefix = "/api/"
kind = "api"
pool = "api"

[[routes]]
name = "ui"
kind = "page"
pool = "ui"
"#
        );
        let parse = || {
            Config::parse(&dir.join("drawbridge.toml"), &text, &|_| None)
                .unwrap_or_else(|e| panic!("the bench config is invalid: {e}"))
        };
        let config = parse();
        // The router owns its routes, which are not `Clone`: it gets those of a second parse.
        let router = Router::new(parse().routes);
        let _ = std::fs::remove_dir_all(&dir);
        let token = config
            .bypass
            .keyring
            .as_ref()
            .expect("the bench config has a key")
            .sign(ENVIRONMENT, NOW, Duration::from_secs(3600), Some("bench"));
        Fixture {
            config,
            router,
            token,
        }
    }

    /// The state a gate document `raw` (as read from Consul) becomes.
    pub fn state(&self, raw: &str) -> GateState {
        let doc = GateDoc::parse(raw.as_bytes()).expect("a valid gate document");
        StateBuilder::new(&self.config)
            .build(doc, 1, StateSource::Consul, OffsetDateTime::now_utc())
            .expect("the document fits the routes")
    }
}
