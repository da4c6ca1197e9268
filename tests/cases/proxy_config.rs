//! The configuration contract of the binary: `--check` accepts good files and refuses bad ones
//! with exit 2 (as maintctl) and the field named, and a normal start with a bad file fails the same way.

use std::path::{Path, PathBuf};
use std::time::Duration;

use drawbridge_tests::consul::workspace_root;
use drawbridge_tests::process::TestDir;
use drawbridge_tests::proxy::{run_drawbridge, Drawbridge, Route};
use drawbridge_tests::upstream::Upstream;

const RUN_DEADLINE: Duration = Duration::from_secs(20);

/// A valid configuration as a TOML table (nothing needs to run for `--check`).
fn valid_config(dir: &Path) -> toml::Table {
    let up = Upstream::start("unused");
    Drawbridge::builder("http://127.0.0.1:8500", "drawbridge/test/config/gate")
        .static_pool("ui", &[&up], None)
        .static_pool("api", &[&up], None)
        .route(Route::api("api", "/api/", "api"))
        .route(Route::page("ui", "/", "ui"))
        .bypass_key("e2e", "k1", "e2e-bypass-secret-0123456789abcdef-0123456789")
        .to_toml(dir)
}

fn write(dir: &TestDir, name: &str, table: &toml::Table) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, toml::to_string(table).expect("a table serialises")).unwrap();
    path
}

fn table<'a>(root: &'a mut toml::Table, key: &str) -> &'a mut toml::Table {
    root.get_mut(key)
        .and_then(toml::Value::as_table_mut)
        .unwrap_or_else(|| panic!("[{key}] in the valid config"))
}

fn first_route(root: &mut toml::Table) -> &mut toml::Table {
    root.get_mut("routes")
        .and_then(toml::Value::as_array_mut)
        .and_then(|routes| routes.first_mut())
        .and_then(toml::Value::as_table_mut)
        .expect("[[routes]] in the valid config")
}

type Breaker = fn(&mut toml::Table);

/// (what, how to break the valid config, words stderr must contain).
fn broken_configs() -> Vec<(&'static str, Breaker, &'static [&'static str])> {
    vec![
        (
            "route to an unknown pool",
            |c| {
                first_route(c).insert("pool".into(), "nope".into());
            },
            &["routes[0].pool", "unknown pool \"nope\""],
        ),
        (
            "listen address that does not parse",
            |c| {
                table(c, "server").insert("listen".into(), vec!["not-an-address"].into());
            },
            &["server.listen", "not-an-address"],
        ),
        (
            "unknown key in [server]",
            |c| {
                table(c, "server").insert("listen_port".into(), 8080.into());
            },
            &["listen_port"],
        ),
        (
            "unknown top-level section",
            |c| {
                let mut t = toml::Table::new();
                t.insert("x".into(), 1.into());
                c.insert("extras".into(), t.into());
            },
            &["extras"],
        ),
        (
            "duration that does not parse",
            |c| {
                table(c, "server").insert("grace_period".into(), "soon".into());
            },
            &["server.grace_period"],
        ),
        (
            "unknown route kind",
            |c| {
                first_route(c).insert("kind".into(), "web".into());
            },
            &["routes[0].kind"],
        ),
        (
            "bypass secret shorter than 32 bytes",
            |c| {
                let keys = table(c, "bypass")
                    .get_mut("keys")
                    .and_then(toml::Value::as_array_mut)
                    .expect("bypass keys");
                keys[0]
                    .as_table_mut()
                    .expect("a key table")
                    .insert("secret".into(), "short".into());
            },
            &["bypass.keys"],
        ),
        (
            "consul wait above 10 minutes",
            |c| {
                table(c, "consul").insert("wait".into(), "20m".into());
            },
            &["consul.wait"],
        ),
        (
            "unknown health check type",
            |c| {
                let pools = table(c, "pools");
                let ui = pools
                    .get_mut("ui")
                    .and_then(toml::Value::as_table_mut)
                    .expect("pool ui");
                let mut check = toml::Table::new();
                check.insert("type".into(), "icmp".into());
                ui.insert("health_check".into(), check.into());
            },
            &["pools.ui.health_check", "icmp"],
        ),
    ]
}

/// `--check` on a valid file exits 0 and prints "configuration is valid"; so does every
/// proxy config shipped in `config/` (maintctl's own files are skipped), with the folders of its
/// process files (which `--check` requires to exist) moved into the test's folder.
#[tokio::test]
async fn check_accepts_valid_configs() {
    let dir = TestDir::new("check_accepts_valid_configs");
    let mut files = vec![write(&dir, "valid.toml", &valid_config(dir.path()))];
    let shipped = workspace_root().join("config");
    for entry in std::fs::read_dir(&shipped).expect("config/ exists") {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.ends_with(".toml") && !name.starts_with("maintctl") {
            let here = format!("{}/", dir.path().display());
            let text = std::fs::read_to_string(&path)
                .unwrap()
                .replace("/run/drawbridge/", &here)
                .replace("/var/lib/drawbridge/", &here)
                .replace("/tmp/drawbridge-demo/", &here);
            let copy = dir.join(&name);
            std::fs::write(&copy, text).unwrap();
            files.push(copy);
        }
    }
    let mut failures = Vec::new();
    for file in files {
        let out = run_drawbridge(&file, &["--check"], RUN_DEADLINE).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() != Some(0) || !stdout.contains("configuration is valid") {
            failures.push(format!(
                "{}: exit {:?}\nstdout: {stdout}\nstderr: {stderr}",
                file.display(),
                out.status.code()
            ));
        }
    }
    assert!(failures.is_empty(), "refused:\n{}", failures.join("\n"));
}

/// `--check` on each broken file exits 2 and names the offending field in stderr.
#[tokio::test]
async fn check_refuses_bad_configs_naming_the_field() {
    let dir = TestDir::new("check_refuses_bad_configs_naming_the_field");
    for (n, (what, breaker, words)) in broken_configs().into_iter().enumerate() {
        let mut config = valid_config(dir.path());
        breaker(&mut config);
        let file = write(&dir, &format!("bad-{n}.toml"), &config);
        let out = run_drawbridge(&file, &["--check"], RUN_DEADLINE).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: stderr {stderr}");
        for word in words {
            assert!(
                stderr.contains(word),
                "{what}: stderr does not name {word:?}:\n{stderr}"
            );
        }
    }

    // A file that is not TOML at all: exit 2, and the message names the file.
    let file = dir.join("not-toml.toml");
    std::fs::write(&file, "[server\nlisten = ").unwrap();
    let out = run_drawbridge(&file, &["--check"], RUN_DEADLINE).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "not TOML: stderr {stderr}");
    assert!(
        stderr.contains("not-toml.toml"),
        "not TOML: stderr {stderr}"
    );
}

/// A normal start (no `--check`) with a bad file exits 2 at once with the same message, and
/// never listens.
#[tokio::test]
async fn start_with_a_bad_config_exits_2_naming_the_field() {
    let dir = TestDir::new("start_with_a_bad_config_exits_2");
    let mut config = valid_config(dir.path());
    first_route(&mut config).insert("pool".into(), "nope".into());
    let file = write(&dir, "bad.toml", &config);
    let out = run_drawbridge(&file, &[], RUN_DEADLINE).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr {stderr}");
    assert!(stderr.contains("routes[0].pool"), "stderr {stderr}");
    assert!(stderr.contains("unknown pool \"nope\""), "stderr {stderr}");
}
