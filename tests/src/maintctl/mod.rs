//! The `maintctl` fixture: the binary, its inventory, runs with a deadline (in the foreground,
//! or in the background to be killed mid-run), a read-only view of its journal in Consul, and
//! [`MaintScene`], the whole fleet it acts on.
//!
//! ```ignore
//! let scene = MaintScene::start("maintctl_cycle").await;   // Consul, boxes, proxies, upstreams
//! scene.maintctl.run(&["down", "--env", "mock", "--reason", "db", "--yes"]).await.assert_success();
//! assert!(scene.node_in_maintenance("api1").await);
//! let run = scene.journal().latest().await.expect("a run");
//! assert_eq!(run.step_status("stop_workers"), Some("done"));
//! ```
//!
//! Every effect is checked from outside maintctl: Consul's catalog and KV, the processes of
//! the services (`/proc`), the proxies' answers and `/status`.
//!
//! # Layout
//! * `inventory`: the inventory types, written as the TOML file.
//! * `run`: running the binary, in the foreground or the background.
//! * `journal`: maintctl's lock and journal, read back from Consul.
//! * `scene`: [`MaintScene`], with its names, addresses and waits.

mod inventory;
mod journal;
mod run;
mod scene;

pub use inventory::{
    Bypass, BypassKey, Canary, ExtraStep, Inventory, InventoryBox, Roll, SmokeTest, ENV,
};
pub use journal::{JournalView, RunView, PREFIX};
pub use run::{
    maintctl_bin, run_to_end, BackgroundRun, Maintctl, MaintctlOutput, BACKGROUND_LIFETIME,
    OPERATOR, RUN_DEADLINE,
};
pub use scene::{
    api_edges, content_type, register_api, wait_registered, MaintScene, API1_IP, API2_IP,
    BYPASS_KEY_ID, BYPASS_SECRET, GATE_KEY, SCHED1_IP, WORKER1_IP, WORKER2_IP, WORKER_PROCESSES,
};
