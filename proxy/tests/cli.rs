//! The `drawbridge` command line's contract: `--check` exit codes and messages, usage errors.
//! No Consul needed: `--check` reads and checks the file only.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn drawbridge(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_drawbridge"))
        .args(args)
        .env_remove("CONSUL_HTTP_ADDR")
        .output()
        .expect("the drawbridge binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A config file in its own temp folder, with the process files inside that folder.
fn config_file(name: &str, body: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("drawbridge-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.display();
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:18080\"]\npid_file = \"{d}/pid\"\nupgrade_sock = \"{d}/sock\"\nstate_file = \"{d}/state.json\"\n{body}"
    );
    let path = dir.join("drawbridge.toml");
    std::fs::write(&path, text).unwrap();
    path
}

const VALID_REST: &str = "[consul]\nkey = \"t/gate\"\n[pools.ui]\nservers = [\"127.0.0.1:3000\"]\n[[routes]]\nname = \"ui\"\nkind = \"page\"\npool = \"ui\"\n";

/// A valid file: exit 0 and "configuration is valid".
#[test]
fn check_accepts_a_valid_config() {
    let path = config_file("valid", VALID_REST);
    let out = drawbridge(&["--config", path.to_str().unwrap(), "--check"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("configuration is valid"));
}

/// Every problem is listed with the key it is about, and the exit code is 2 (as for maintctl).
#[test]
fn check_names_every_bad_field() {
    let body = VALID_REST
        .replace("pool = \"ui\"", "pool = \"nope\"")
        .replace("key = \"t/gate\"", "key = \"t/gate\"\nwait = \"forever\"");
    let path = config_file("bad", &body);
    let out = drawbridge(&["--config", path.to_str().unwrap(), "--check"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("routes[0].pool: unknown pool \"nope\""),
        "{err}"
    );
    assert!(
        err.contains("consul.wait: \"forever\" is not a duration"),
        "{err}"
    );
}

/// A bad config is refused at start too, before anything listens.
#[test]
fn start_refuses_a_bad_config() {
    let path = config_file(
        "bad-start",
        &VALID_REST.replace("kind = \"page\"", "kind = \"web\""),
    );
    let out = drawbridge(&["--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("routes[0].kind: \"web\" is not one of"));
}

/// A missing file says which file.
#[test]
fn missing_file_is_named() {
    let out = drawbridge(&["--config", "/nonexistent/drawbridge.toml", "--check"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("/nonexistent/drawbridge.toml"));
}

/// Usage errors exit 2, as documented in --help.
#[test]
fn usage_errors_exit_2() {
    let out = drawbridge(&["--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
    let help = drawbridge(&["--help"]);
    assert!(text(&help.stdout).contains("Exit codes"));
}

/// The shipped demo config passes --check once its folder exists.
#[test]
fn demo_config_checks() {
    std::fs::create_dir_all("/tmp/drawbridge-demo").unwrap();
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/demo.toml");
    let out = drawbridge(&["--config", demo.to_str().unwrap(), "--check"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// `--version` names the commit the binary was built from (this checkout's HEAD).
#[test]
fn version_names_the_commit() {
    let out = drawbridge(&["--version"]);
    assert!(out.status.success());
    let version = text(&out.stdout);
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success());
    let commit = head.map_or_else(
        || "unknown".to_string(),
        |o| text(&o.stdout).trim().to_string(),
    );
    assert_eq!(
        version.trim(),
        format!("drawbridge {} (commit {commit})", env!("CARGO_PKG_VERSION"))
    );
}

/// `DRAWBRIDGE_GENERATE_DOCS=DIR` writes the man page and the three completions, which name every option.
#[test]
fn generate_docs_writes_the_man_page_and_completions() {
    let dir = std::env::temp_dir().join(format!("drawbridge-cli-{}-docs", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_drawbridge"))
        .env("DRAWBRIDGE_GENERATE_DOCS", &dir)
        .output()
        .expect("the drawbridge binary runs");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let page = std::fs::read_to_string(dir.join("drawbridge.1")).unwrap();
    let bash = std::fs::read_to_string(dir.join("completions/drawbridge.bash")).unwrap();
    for option in ["config", "check", "upgrade", "daemon"] {
        assert!(
            page.contains(&format!("\\-\\-{option}")),
            "{option} in {page}"
        );
        assert!(bash.contains(&format!("--{option}")), "{option} in {bash}");
    }
    assert!(dir.join("completions/_drawbridge").is_file());
    assert!(dir.join("completions/drawbridge.fish").is_file());
    std::fs::remove_dir_all(&dir).unwrap();
}
