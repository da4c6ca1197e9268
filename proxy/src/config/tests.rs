//! The config checks, through the file text: defaults, problems named by key, the shipped files,
//! and which steps look at the machine.

use super::*;
use drawbridge_core::consul::Consistency;
use drawbridge_core::gate::Mode;
use std::time::Duration;

/// A machine named `testhost` where only `app.internal` resolves.
const TEST_MACHINE: Machine = Machine {
    host_name: || "testhost".to_string(),
    resolve: |host_port| match host_port {
        "app.internal:3000" => Some(SocketAddr::from(([10, 9, 8, 7], 3000))),
        _ => None,
    },
};

/// Checks and finishes `text` on [`TEST_MACHINE`], with `env` as the environment.
fn parse_with(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    parse_config(Path::new("test.toml"), text, |file, p| {
        check(file, p, env).finish(&TEST_MACHINE, p)
    })
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    parse_with(text, &|_| None)
}

const MINIMAL: &str = r#"
    [server]
    listen = ["127.0.0.1:8080"]
    pid_file = "/tmp/db.pid"
    upgrade_sock = "/tmp/db.sock"
    state_file = "/tmp/db-state.json"
    [consul]
    key = "drawbridge/test/gate"
    [pools.ui]
    servers = ["127.0.0.1:3000"]
    [[routes]]
    name = "ui"
    kind = "page"
    pool = "ui"
"#;

#[test]
fn minimal_config_gets_the_documented_defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.server.threads, 2);
    assert_eq!(c.server.grace_period, Duration::from_secs(10));
    assert_eq!(c.admin.listen, "127.0.0.1:9180".parse().unwrap());
    assert_eq!(c.consul.addresses, ["http://127.0.0.1:8500"]);
    assert_eq!(c.consul.consistency, Consistency::Default);
    assert_eq!(c.consul.wait, Duration::from_secs(60));
    assert_eq!(c.consul.stale_after, Duration::from_millis(63_750));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert_eq!(c.maintenance.default_retry_after, Duration::from_secs(300));
    assert_eq!(c.bypass.header, "x-drawbridge-bypass");
    assert_eq!(c.routes[0].path_prefix, "/");
    assert_eq!(c.consul.service_id, "drawbridge-testhost-8080");
    assert_eq!(c.consul.split_key, "drawbridge/test/gate/split");
    assert_eq!(c.consul.windows_key, "drawbridge/test/gate/windows");
    assert_eq!(
        c.maintenance.announce_before,
        Duration::from_secs(7 * 24 * 3600)
    );
    assert_eq!(c.server.unknown_state, Mode::Maintenance);
}

#[test]
fn a_windows_key_is_a_key_path_of_its_own() {
    let with = |windows_key: &str| {
        MINIMAL.replace(
            "[consul]",
            &format!("[consul]\nwindows_key = {windows_key:?}"),
        )
    };
    assert_eq!(
        parse(&with("drawbridge/test/windows"))
            .unwrap()
            .consul
            .windows_key,
        "drawbridge/test/windows"
    );
    for taken in ["drawbridge/test/gate", "drawbridge/test/gate/split"] {
        let err = parse(&with(taken)).unwrap_err().to_string();
        assert!(
            err.contains("consul.windows_key: is the gate key or the split key"),
            "{err}"
        );
    }
    let err = parse(&with("a//b")).unwrap_err().to_string();
    assert!(err.contains("consul.windows_key: "), "{err}");
}

#[test]
fn a_split_key_is_a_key_path_of_its_own() {
    let with = |split_key: &str| {
        MINIMAL.replace("[consul]", &format!("[consul]\nsplit_key = {split_key:?}"))
    };
    assert_eq!(
        parse(&with("drawbridge/test/split"))
            .unwrap()
            .consul
            .split_key,
        "drawbridge/test/split"
    );
    let err = parse(&with("drawbridge/test/gate"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("consul.split_key: is the gate key"), "{err}");
    for bad in ["/split", "split/", "a//b", ""] {
        let err = parse(&with(bad)).unwrap_err().to_string();
        assert!(err.contains("consul.split_key: "), "{bad:?}: {err}");
    }
}

#[test]
fn an_empty_service_id_is_refused() {
    let text = MINIMAL.replace("[consul]", "[consul]\nservice_id = \"\"");
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.contains("consul.service_id: is empty"), "{err}");
}

#[test]
fn limits_get_their_defaults_and_bad_ones_are_named() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.limits.max_connections, 10_000);
    assert_eq!(c.limits.header_timeout, Duration::from_secs(10));
    assert_eq!(c.limits.max_body_bytes, 16 * 1024 * 1024);
    let text = format!(
        "{MINIMAL}\n[limits]\nmax_connections = 10\nmax_connections_per_client = 11\n\
         header_timeout = \"0s\"\nmax_headers = 300\nmax_header_bytes = 10\nsend_timeout = \"2h\"\n\
         h2_max_streams = 0\n"
    );
    let err = parse(&text).unwrap_err().to_string();
    for key in [
        "limits.max_connections_per_client: must be between 1 and limits.max_connections (10)",
        "limits.header_timeout: must be between",
        "limits.max_headers: 300 is not between 16 and 256",
        "limits.max_header_bytes: 10 is not between 1024",
        "limits.send_timeout: must be between",
        "limits.h2_max_streams: 0 is not between 1 and 1000",
    ] {
        assert!(err.contains(key), "{key} missing in {err}");
    }
}

#[test]
fn http2_is_offered_over_tls_and_h2c_and_the_https_redirect_are_asked_for() {
    let c = parse(MINIMAL).unwrap();
    assert!(c.tls.http2);
    assert!(!c.server.h2c && !c.server.https_redirect);
    assert_eq!(c.tls.hsts, None);
    assert_eq!(c.limits.h2_max_streams, 100);
    // Neither a redirect to nor HSTS for a TLS listener that is not there.
    let text = MINIMAL.replace(
        "[server]",
        "[tls]\nhsts = \"max-age=60\"\n[server]\nhttps_redirect = true\nh2c = true",
    );
    let err = parse(&text).unwrap_err().to_string();
    for key in [
        "server.https_redirect: redirects to HTTPS need a TLS listener",
        "tls.hsts: is sent on answers over TLS, and there is no TLS listener",
    ] {
        assert!(err.contains(key), "{key} missing in {err}");
    }
}

#[test]
fn hsts_is_a_max_age_with_the_known_directives() {
    let mut p = Problems::default();
    for good in [
        "max-age=0",
        "max-age=63072000; includeSubDomains; preload",
        "max-age=5;PRELOAD",
    ] {
        assert!(tls::check_hsts(good, &mut p).is_some(), "{good}");
    }
    for bad in [
        "",
        "max-age=",
        "max-age=-1",
        "max-age=1; foo",
        "includeSubDomains",
        "max-age=1\n",
    ] {
        assert!(tls::check_hsts(bad, &mut p).is_none(), "{bad:?}");
    }
    let err = p.into_result(()).unwrap_err().join("\n");
    assert!(
        err.contains("tls.hsts: \"max-age=-1\" is not a Strict-Transport-Security value"),
        "{err}"
    );
}

#[test]
fn unknown_state_takes_a_gate_mode_and_refuses_anything_else() {
    let with = |value: &str| {
        MINIMAL.replace(
            "[consul]",
            &format!("unknown_state = \"{value}\"\n[consul]"),
        )
    };
    for (value, mode) in [
        ("maintenance", Mode::Maintenance),
        ("read_only", Mode::ReadOnly),
        ("normal", Mode::Normal),
    ] {
        assert_eq!(parse(&with(value)).unwrap().server.unknown_state, mode);
    }
    let err = parse(&with("closed")).unwrap_err().problems.join("\n");
    assert_eq!(
        err,
        "server.unknown_state: \"closed\" is not one of \"maintenance\" (the default: fail closed), \"read_only\", \"normal\""
    );
}

#[test]
fn consul_variables_fill_what_the_file_leaves_out() {
    let env = |name: &str| match name {
        "CONSUL_HTTP_ADDR" => Some("http://10.1.2.3:8500".to_string()),
        "CONSUL_HTTP_TOKEN" => Some("secret-token".to_string()),
        _ => None,
    };
    let c = parse_with(MINIMAL, &env).unwrap();
    assert_eq!(c.consul.addresses, ["http://10.1.2.3:8500"]);
    assert_eq!(c.consul.token.as_deref(), Some("secret-token"));
}

#[test]
fn consul_address_may_list_agents_to_fail_over_along() {
    let with =
        |address: &str| MINIMAL.replace("[consul]", &format!("[consul]\naddress = {address}"));
    let c = parse(&with(r#"["127.0.0.1:8500", "http://10.0.0.2:8500"]"#)).unwrap();
    assert_eq!(
        c.consul.addresses,
        ["127.0.0.1:8500", "http://10.0.0.2:8500"]
    );
    let err = parse(&with("[]")).unwrap_err().problems.join("\n");
    assert!(err.contains("consul.address: the list is empty"), "{err}");
    let err = parse(&with(r#"["127.0.0.1:8500", "https://10.0.0.2"]"#))
        .unwrap_err()
        .problems
        .join("\n");
    assert!(err.contains("consul.address[1]: "), "{err}");
}

#[test]
fn stale_after_below_one_wait_is_raised_with_a_warning() {
    let text = MINIMAL.replace("[consul]", "[consul]\nwait = \"16s\"\nstale_after = \"5s\"");
    let c = parse(&text).unwrap();
    assert_eq!(c.consul.stale_after, Duration::from_secs(17));
    assert_eq!(
        c.warnings,
        ["consul.stale_after: 5s is below consul.wait + wait/16, raised to 17s"]
    );
}

#[test]
fn problems_name_their_key() {
    let text = MINIMAL
        .replace("pool = \"ui\"", "pool = \"nope\"")
        .replace("kind = \"page\"", "kind = \"web\"")
        .replace("127.0.0.1:8080", "localhost");
    let err = parse(&text).unwrap_err();
    let all = err.problems.join("\n");
    assert!(
        all.contains("routes[0].pool: unknown pool \"nope\""),
        "{all}"
    );
    assert!(
        all.contains("routes[0].kind: \"web\" is not one of"),
        "{all}"
    );
    assert!(
        all.contains("server.listen[0]: \"localhost\" is not an \"ip:port\""),
        "{all}"
    );
}

#[test]
fn bypass_header_is_read_once_in_lower_case_and_a_bad_one_is_refused() {
    let with_header = |name: &str| format!("{MINIMAL}\n[bypass]\nheader = \"{name}\"\n");
    let c = parse(&with_header("X-Ops-Bypass")).unwrap();
    assert_eq!(c.bypass.header, "x-ops-bypass");
    let err = parse(&with_header("x ops")).unwrap_err();
    assert!(
        err.problems
            .iter()
            .any(|p| p == "bypass.header: \"x ops\" is not a header name"),
        "{err}"
    );
}

#[test]
fn unknown_keys_are_refused() {
    let err = parse(&MINIMAL.replace("[consul]", "[consul]\nkee = \"x\"")).unwrap_err();
    assert!(err.to_string().contains("unknown field `kee`"), "{err}");
}

#[test]
fn public_admin_listener_needs_a_token() {
    let text = format!("{MINIMAL}\n[admin]\nlisten = \"0.0.0.0:9180\"\n");
    let err = parse(&text).unwrap_err();
    assert!(err.problems[0].starts_with("admin.listen:"), "{err}");
    let with_token =
        format!("{MINIMAL}\n[admin]\nlisten = \"0.0.0.0:9180\"\ntoken = \"0123456789abcdef\"\n");
    assert!(parse(&with_token).is_ok());
}

#[test]
fn admin_tokens_shorter_than_16_characters_are_refused() {
    let with_token = |token: &str| format!("{MINIMAL}\n[admin]\ntoken = \"{token}\"\n");
    let err = parse(&with_token("short")).unwrap_err().problems.join("\n");
    assert_eq!(
        err,
        "admin.token: has 5 characters; use at least 16 random ones (e.g. `openssl rand -hex 16`)"
    );
    assert!(parse(&with_token(&"x".repeat(15))).is_err());
    assert!(parse(&with_token(&"x".repeat(16))).is_ok());
    // An empty token is refused once, as empty.
    let err = parse(&with_token("")).unwrap_err().problems;
    assert_eq!(err, ["admin.token: is empty"]);
}

#[test]
fn bypass_keys_need_strong_secrets_and_an_environment() {
    let text = format!("{MINIMAL}\n[bypass]\n[[bypass.keys]]\nid = \"k1\"\nsecret = \"short\"\n");
    let err = parse(&text).unwrap_err().problems.join("\n");
    assert!(
        err.contains("bypass.keys[0]: bypass key `k1` secret has 5 bytes"),
        "{err}"
    );
    let text = format!(
        "{MINIMAL}\n[bypass]\n[[bypass.keys]]\nid = \"k1\"\nsecret = \"{}\"\n",
        "s".repeat(32)
    );
    let err = parse(&text).unwrap_err().problems.join("\n");
    assert!(err.contains("bypass.environment: is required"), "{err}");
}

#[test]
fn pools_need_exactly_one_source() {
    let text = MINIMAL.replace(
        "servers = [\"127.0.0.1:3000\"]",
        "servers = [\"127.0.0.1:3000\"]\nconsul_service = \"ui\"",
    );
    let err = parse(&text).unwrap_err();
    assert!(err.problems[0].starts_with("pools.ui:"), "{err}");
}

#[test]
fn shipped_example_configs_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = root.join("config");
    let package_default = root.join("packaging/etc/drawbridge.toml");
    let mut seen = 0;
    let files = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .chain([package_default]);
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !(name.starts_with("drawbridge") && name.ends_with(".toml")) && name != "demo.toml" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        // The example's process paths live in folders of a production host; point them here.
        let text = text
            .replace("/run/drawbridge/", "/tmp/")
            .replace("/var/lib/drawbridge/", "/tmp/")
            .replace("/tmp/drawbridge-demo/", "/tmp/")
            .replace(
                "/usr/share/drawbridge/",
                &format!("{}/static/", root.display()),
            )
            .replace("10.0.1.10:3000", "127.0.0.1:3000")
            .replace("10.0.1.11:3000", "127.0.0.1:3001");
        if let Err(e) = parse(&text) {
            panic!("{e}");
        }
        seen += 1;
    }
    assert!(
        seen >= 3,
        "expected the example and the demo config in {}, and the package's default",
        dir.display()
    );
}

/// [`MINIMAL`] with pool `ui` listing `servers` (a TOML array).
fn with_servers(servers: &str) -> String {
    MINIMAL.replace(
        "servers = [\"127.0.0.1:3000\"]",
        &format!("servers = {servers}"),
    )
}

#[test]
fn pool_host_names_are_resolved_when_finished_and_refused_with_their_key() {
    let c = parse(&with_servers(r#"["app.internal:3000", "127.0.0.1:3001"]"#)).unwrap();
    assert_eq!(
        c.pools[0].source,
        PoolSource::Static(vec![
            "10.9.8.7:3000".parse().unwrap(),
            "127.0.0.1:3001".parse().unwrap()
        ])
    );
    let err = parse(&with_servers(
        r#"["app.internal:3000", "nowhere.invalid:3000"]"#,
    ))
    .unwrap_err()
    .problems
    .join("\n");
    assert_eq!(
        err,
        "pools.ui.servers[1]: \"nowhere.invalid:3000\" is not a reachable \"host:port\" (it does not resolve)"
    );
}

#[test]
fn checking_alone_looks_no_name_up_but_refuses_a_malformed_server() {
    let path = std::env::temp_dir().join(format!("drawbridge-check-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        with_servers(r#"["nowhere.invalid:3000", "[::1]:3001"]"#),
    )
    .unwrap();
    let checked = Config::check_file(&path);
    std::fs::write(
        &path,
        with_servers(r#"["app.internal", "http://app:3000", ":3000"]"#),
    )
    .unwrap();
    let malformed = Config::check_file(&path);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(checked.unwrap(), Vec::<String>::new());
    let err = malformed.unwrap_err().problems.join("\n");
    for (i, raw) in ["app.internal", "http://app:3000", ":3000"]
        .iter()
        .enumerate()
    {
        assert!(
            err.contains(&format!(
                "pools.ui.servers[{i}]: {raw:?} is not a \"host:port\" like"
            )),
            "{err}"
        );
    }
}
