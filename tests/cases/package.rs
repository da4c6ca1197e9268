//! The Debian package, as `scripts/package.sh --dev` builds it, installed into this machine with
//! dpkg: its files, conffiles and system users, its units (checked with `systemd-analyze`: CI's
//! container has no systemd as PID 1, so nothing is started, and the commands the units run are
//! run directly, as the units' users), its man pages and bash completions, a conffile the
//! operator edited kept across a re-install, and nothing but the users left after a purge. A failed check
//! purges the package too. Needs root, as CI has; skipped with a message otherwise.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use drawbridge_tests::consul::workspace_root;
use drawbridge_tests::process::{ChildGuard, TestDir};

const PACKAGE: &str = "drawbridge";

/// The package build: seconds with cargo-deb at hand, minutes the first time, when
/// package.sh installs it into .tools/cargo.
const BUILD_DEADLINE: Duration = Duration::from_secs(900);

/// One dpkg run (the man-db trigger takes most of it) or one check.
const RUN_DEADLINE: Duration = Duration::from_secs(120);

/// `systemd-analyze security` scores drawbridge.service 1.9 today; above this the unit has lost
/// some of its sandboxing.
const MAX_EXPOSURE: f64 = 3.0;

const PROXY_CONFIG: &str = "/etc/drawbridge/drawbridge.toml";
const MAINTCTL_CONFIG: &str = "/etc/maintctl/maintctl.toml";
const UNIT_DIR: &str = "/usr/lib/systemd/system";
const MAN_DIR: &str = "/usr/share/man/man1";

/// What the units' StateDirectory= and RuntimeDirectory= make when they start.
const STATE_DIR: &str = "/var/lib/drawbridge";
const RUNTIME_DIR: &str = "/run/drawbridge";

/// What the package puts on a machine, or makes there, and a purge removes.
const LEFT_BY_THE_PACKAGE: [&str; 7] = [
    "/usr/bin/drawbridge",
    "/usr/bin/maintctl",
    "/etc/drawbridge",
    "/etc/maintctl",
    STATE_DIR,
    "/var/lib/maintctl",
    RUNTIME_DIR,
];

/// The system users of the units, one per binary.
const USERS: [&str; 2] = ["drawbridge", "maintctl"];

/// The programs the test runs besides the package's (util-linux's setpriv runs a command as a
/// unit's user).
const TOOLS: [&str; 5] = ["dpkg", "systemd-analyze", "man", "setpriv", "bash"];

/// This process's PATH with the sbin folders root's PATH has, which dpkg and the maintainer
/// scripts need (ldconfig, adduser), added when a bare environment lacks them.
fn root_path() -> std::ffi::OsString {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for sbin in ["/usr/local/sbin", "/usr/sbin", "/sbin"] {
        if !dirs.iter().any(|d| d == Path::new(sbin)) {
            dirs.push(sbin.into());
        }
    }
    std::env::join_paths(dirs).expect("PATH folders hold no ':'")
}

fn on_path(program: &str) -> bool {
    std::env::split_paths(&root_path()).any(|dir| dir.join(program).is_file())
}

/// How a command run to its end finished, with what it wrote.
#[derive(Debug)]
struct Ran {
    what: String,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Ran {
    /// Itself, when it exited 0.
    ///
    /// # Panics
    /// Otherwise, with its output.
    fn ok(self) -> Ran {
        assert!(self.status.success(), "{} failed: {self}", self.what);
        self
    }

    fn quiet(&self) -> bool {
        self.stdout.trim().is_empty() && self.stderr.trim().is_empty()
    }
}

impl std::fmt::Display for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs commands to their end under a [`ChildGuard`] each (killed at its deadline), their
/// output in the test's folder, numbered in order.
struct Runner<'a> {
    dir: &'a TestDir,
    runs: u32,
}

impl Runner<'_> {
    fn run(&mut self, program: &str, args: &[&str]) -> Ran {
        self.run_with(program, args, RUN_DEADLINE, |_| {})
    }

    fn run_with(
        &mut self,
        program: &str,
        args: &[&str],
        deadline: Duration,
        adjust: impl FnOnce(&mut Command),
    ) -> Ran {
        self.runs += 1;
        let what = format!("{program} {}", args.join(" "));
        let stem = Path::new(program)
            .file_name()
            .map_or(program.into(), |n| n.to_string_lossy());
        let name = format!("{:02}-{stem}", self.runs);
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(self.dir.path())
            .env("PATH", root_path())
            .env("DEBIAN_FRONTEND", "noninteractive");
        adjust(&mut cmd);
        let mut child = ChildGuard::spawn_with_lifetime(&name, cmd, self.dir.path(), deadline * 2);
        let Some(status) = child.wait_timeout(deadline) else {
            panic!(
                "{what} did not end within {deadline:?}\n{}",
                child.log_tail(40)
            );
        };
        Ran {
            what,
            status,
            stdout: std::fs::read_to_string(child.stdout_path()).unwrap_or_default(),
            stderr: std::fs::read_to_string(child.stderr_path()).unwrap_or_default(),
        }
    }
}

/// The package installed on this machine: purged on drop unless the test purged it itself, so
/// a failed check leaves nothing behind, with the runtime folder the test made in systemd's
/// place.
struct Installed {
    purged: bool,
}

impl Drop for Installed {
    fn drop(&mut self) {
        if !self.purged {
            match Command::new("dpkg")
                .args(["--purge", PACKAGE])
                .env("PATH", root_path())
                .stdin(Stdio::null())
                .output()
            {
                Ok(out) if out.status.success() => {}
                Ok(out) => eprintln!(
                    "package test: dpkg --purge {PACKAGE} failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                ),
                Err(e) => eprintln!("package test: cannot run dpkg --purge {PACKAGE}: {e}"),
            }
        }
        let _ = std::fs::remove_dir_all(RUNTIME_DIR);
    }
}

/// A system user as `getent passwd` shows it.
#[derive(Debug)]
struct SystemUser {
    uid: u32,
    gid: u32,
    home: String,
    shell: String,
}

fn system_user(runner: &mut Runner<'_>, name: &str) -> Option<SystemUser> {
    let out = runner.run("getent", &["passwd", name]);
    if !out.status.success() {
        return None;
    }
    let fields: Vec<&str> = out.stdout.trim().split(':').collect();
    assert_eq!(fields.len(), 7, "getent passwd {name}: {}", out.stdout);
    Some(SystemUser {
        uid: fields[2].parse().expect("a numeric uid"),
        gid: fields[3].parse().expect("a numeric gid"),
        home: fields[5].to_string(),
        shell: fields[6].to_string(),
    })
}

fn group_exists(runner: &mut Runner<'_>, name: &str) -> bool {
    runner.run("getent", &["group", name]).status.success()
}

fn package_installed(runner: &mut Runner<'_>) -> bool {
    let out = runner.run("dpkg-query", &["-W", "-f=${Status}", PACKAGE]);
    out.status.success()
        && out.stdout.contains("installed")
        && !out.stdout.contains("not-installed")
}

/// What of the package is on this machine (nothing, before the test and after its purge).
fn traces_of_the_package(runner: &mut Runner<'_>) -> Vec<String> {
    let mut found = Vec::new();
    if package_installed(runner) {
        found.push(format!("the package {PACKAGE} is installed"));
    }
    for path in LEFT_BY_THE_PACKAGE {
        if Path::new(path).exists() {
            found.push(path.to_string());
        }
    }
    found
}

fn read(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The bash completion of `command` from `file`, loaded in a plain bash (no bash-completion
/// package needed), asked to complete `word` after the command: `complete -p` and the answer.
fn bash_completion(runner: &mut Runner<'_>, file: &str, command: &str, word: &str) -> Ran {
    const SCRIPT: &str = r#"set -e
source "$1"
spec="$(complete -p "$2")"
echo "$spec"
fn="${spec##* -F }"
fn="${fn%% *}"
COMP_WORDS=("$2" "$3")
COMP_CWORD=1
COMP_LINE="$2 $3"
COMP_POINT=${#COMP_LINE}
"$fn" "$2" "$3" "$2"
echo "${COMPREPLY[*]}""#;
    runner.run("bash", &["-c", SCRIPT, "bash", file, command, word])
}

#[test]
fn the_package_installs_checks_out_and_purges_cleanly() {
    if std::fs::metadata("/proc/self").map(|m| m.uid()).ok() != Some(0) {
        eprintln!(
            "SKIPPED the package test: it installs the package with dpkg, which needs root \
             (CI runs as root)"
        );
        return;
    }
    let missing: Vec<&str> = TOOLS.into_iter().filter(|t| !on_path(t)).collect();
    assert!(
        missing.is_empty(),
        "the package test needs {missing:?}: run scripts/setup.sh (or: apt-get install -y \
         systemd man-db)"
    );
    let dir = TestDir::new("package");
    let root = workspace_root();
    let mut runner = Runner { dir: &dir, runs: 0 };

    let before = traces_of_the_package(&mut runner);
    assert!(
        before.is_empty(),
        "the package test installs and purges {PACKAGE} on this machine, which must not have \
         it yet; found: {} (a leftover of an interrupted run: dpkg --purge {PACKAGE}, then \
         remove the rest)",
        before.join(", ")
    );

    // The package, from the debug binaries the suite built.
    let script = root.join("scripts/package.sh");
    let built = runner
        .run_with(
            &script.to_string_lossy(),
            &["--dev"],
            BUILD_DEADLINE,
            |cmd| {
                cmd.current_dir(&root);
            },
        )
        .ok();
    let deb = PathBuf::from(built.stdout.lines().last().unwrap_or_default());
    let deb_name = deb
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    assert!(
        deb.is_file() && deb_name.starts_with(&format!("{PACKAGE}_{}-", env!("CARGO_PKG_VERSION"))),
        "package.sh's last line is not the package file: {built}"
    );
    let deb = deb.to_string_lossy().into_owned();

    let mut installed = Installed { purged: false };
    runner.run("dpkg", &["-i", &deb]).ok();

    // The files, where Debian expects them.
    let listed = runner.run("dpkg", &["-L", PACKAGE]).ok().stdout;
    let listed: Vec<&str> = listed.lines().collect();
    let mut expected: Vec<String> = [
        "/usr/bin/drawbridge",
        "/usr/bin/maintctl",
        "/usr/share/drawbridge/maintenance.html",
        "/usr/share/doc/drawbridge/copyright",
        "/usr/share/doc/drawbridge/examples/drawbridge.example.toml",
        "/usr/share/doc/drawbridge/examples/maintctl.example.toml",
        "/usr/share/doc/drawbridge/examples/prometheus/drawbridge.rules.yml",
        "/usr/share/doc/drawbridge/examples/grafana/drawbridge-dashboard.json",
        PROXY_CONFIG,
        MAINTCTL_CONFIG,
        "/usr/share/man/man1/drawbridge.1.gz",
        "/usr/share/man/man1/maintctl.1.gz",
        "/usr/share/man/man1/maintctl-down.1.gz",
        "/usr/share/man/man1/maintctl-up.1.gz",
        "/usr/share/bash-completion/completions/drawbridge",
        "/usr/share/bash-completion/completions/maintctl",
        "/usr/share/zsh/vendor-completions/_drawbridge",
        "/usr/share/zsh/vendor-completions/_maintctl",
        "/usr/share/fish/vendor_completions.d/drawbridge.fish",
        "/usr/share/fish/vendor_completions.d/maintctl.fish",
    ]
    .map(String::from)
    .to_vec();
    for entry in std::fs::read_dir(root.join("config/notices")).expect("config/notices") {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        expected.push(format!("/usr/share/doc/drawbridge/examples/notices/{name}"));
    }
    let missing: Vec<&String> = expected
        .iter()
        .filter(|path| !listed.contains(&path.as_str()) || !Path::new(path).is_file())
        .collect();
    assert!(
        missing.is_empty(),
        "not installed: {missing:?}\ndpkg -L {PACKAGE}:\n{}",
        listed.join("\n")
    );
    // Exactly the two units of config/, under their own names and as written there.
    let mut units: Vec<&str> = listed
        .iter()
        .copied()
        .filter(|p| p.starts_with(&format!("{UNIT_DIR}/")))
        .collect();
    units.sort_unstable();
    assert_eq!(
        units,
        [
            format!("{UNIT_DIR}/drawbridge.service"),
            format!("{UNIT_DIR}/maintctl-daemon@.service")
        ]
    );
    for unit in ["drawbridge.service", "maintctl-daemon@.service"] {
        assert_eq!(
            read(format!("{UNIT_DIR}/{unit}")),
            read(root.join("config").join(unit)),
            "{unit} is not config/{unit}"
        );
    }
    assert_eq!(
        read(PROXY_CONFIG),
        read(root.join("packaging/etc/drawbridge.toml"))
    );
    assert_eq!(
        read(MAINTCTL_CONFIG),
        read(root.join("packaging/etc/maintctl.toml"))
    );
    assert!(
        read("/usr/share/drawbridge/maintenance.html").contains("{{message}}"),
        "the installed page is not the template"
    );

    // The two files in /etc are the conffiles, and only they.
    let conffiles = read(format!("/var/lib/dpkg/info/{PACKAGE}.conffiles"));
    let mut conffiles: Vec<&str> = conffiles.lines().map(str::trim).collect();
    conffiles.sort_unstable();
    assert_eq!(conffiles, [PROXY_CONFIG, MAINTCTL_CONFIG]);

    // One system user (and group) per unit, without a login shell.
    let mut users = Vec::new();
    for name in USERS {
        let user = system_user(&mut runner, name)
            .unwrap_or_else(|| panic!("no user {name} after the install"));
        assert!(user.uid < 1000, "{name} is not a system user: {user:?}");
        assert!(
            user.shell.ends_with("nologin"),
            "{name} can log in: {user:?}"
        );
        assert_eq!(user.home, format!("/var/lib/{name}"), "{name}: {user:?}");
        assert!(group_exists(&mut runner, name), "no group {name}");
        users.push(user);
    }
    let (proxy_user, maintctl_user) = (&users[0], &users[1]);

    // The binaries name the commit they were built from.
    for bin in ["/usr/bin/drawbridge", "/usr/bin/maintctl"] {
        let version = runner.run(bin, &["--version"]).ok().stdout;
        let name = bin.rsplit('/').next().unwrap_or(bin);
        assert!(
            version.starts_with(&format!("{name} {} (commit ", env!("CARGO_PKG_VERSION")))
                && version.trim_end().ends_with(')'),
            "{bin} --version: {version}"
        );
    }

    // The units' checks of the default configs, as the units run them: drawbridge's after
    // systemd made its folders (StateDirectory=, RuntimeDirectory=: owned by the unit's user).
    for folder in [STATE_DIR, RUNTIME_DIR] {
        std::fs::create_dir_all(folder).unwrap_or_else(|e| panic!("{folder}: {e}"));
        std::os::unix::fs::chown(folder, Some(proxy_user.uid), Some(proxy_user.gid))
            .unwrap_or_else(|e| panic!("chown {folder}: {e}"));
    }
    for (user, command) in [
        (
            proxy_user,
            ["/usr/bin/drawbridge", "--config", PROXY_CONFIG, "--check"],
        ),
        (
            maintctl_user,
            [
                "/usr/bin/maintctl",
                "--config",
                MAINTCTL_CONFIG,
                "check-config",
            ],
        ),
    ] {
        let reuid = format!("--reuid={}", user.uid);
        let regid = format!("--regid={}", user.gid);
        let mut args = vec![reuid.as_str(), regid.as_str(), "--clear-groups"];
        args.extend(command);
        let check = runner.run("setpriv", &args).ok();
        assert!(check.stdout.contains("configuration is valid"), "{check}");
    }

    // The units as systemd would load them: every command and man page they name exists,
    // and the template works for an environment; the proxy's sandbox keeps its score.
    let proxy_unit = format!("{UNIT_DIR}/drawbridge.service");
    let instance = dir.join("maintctl-daemon@prod.service");
    std::fs::copy(format!("{UNIT_DIR}/maintctl-daemon@.service"), &instance).unwrap();
    for unit in [proxy_unit.clone(), instance.to_string_lossy().into_owned()] {
        let verify = runner.run("systemd-analyze", &["verify", &unit]).ok();
        assert!(verify.quiet(), "systemd-analyze verify {unit}: {verify}");
    }
    let security = runner
        .run(
            "systemd-analyze",
            &["security", "--offline=true", &proxy_unit],
        )
        .ok();
    let exposure: f64 = security
        .stdout
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for drawbridge.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level: {security}"));
    assert!(
        exposure <= MAX_EXPOSURE,
        "drawbridge.service exposure {exposure} is above {MAX_EXPOSURE}: {security}"
    );

    // The bash completions load and complete.
    for (command, word, answer) in [
        ("drawbridge", "--ch", "--check"),
        ("maintctl", "do", "down"),
    ] {
        let file = format!("/usr/share/bash-completion/completions/{command}");
        let ran = bash_completion(&mut runner, &file, command, word).ok();
        let mut lines = ran.stdout.lines();
        let spec = lines.next().unwrap_or_default();
        assert!(
            spec.starts_with("complete ") && spec.ends_with(&format!(" {command}")),
            "{file}: {ran}"
        );
        assert!(
            lines
                .last()
                .unwrap_or_default()
                .split(' ')
                .any(|w| w == answer),
            "{file}: {command} {word}<TAB> does not offer {answer}: {ran}"
        );
    }

    // Every man page renders without a warning.
    let pages: Vec<&str> = listed
        .iter()
        .copied()
        .filter(|p| p.starts_with(&format!("{MAN_DIR}/")) && p.ends_with(".1.gz"))
        .collect();
    for page in &pages {
        let rendered = runner.run_with("man", &["--warnings", "-l", page], RUN_DEADLINE, |cmd| {
            cmd.env("MANWIDTH", "80")
                .env("MANPAGER", "cat")
                .env("PAGER", "cat");
        });
        let title = page
            .rsplit('/')
            .next()
            .and_then(|f| f.strip_suffix(".1.gz"))
            .unwrap_or(page);
        assert!(
            rendered.status.success()
                && rendered.stderr.trim().is_empty()
                && rendered.stdout.contains("NAME")
                && rendered.stdout.contains(title),
            "man -l {page}: {rendered}"
        );
    }

    // A conffile the operator edited survives a re-install, and the users stay as they were.
    let edited = format!("{}# the operator's own line\n", read(PROXY_CONFIG));
    std::fs::write(PROXY_CONFIG, &edited).unwrap();
    runner.run("dpkg", &["-i", "--force-confold", &deb]).ok();
    assert_eq!(
        read(PROXY_CONFIG),
        edited,
        "the edited conffile was replaced"
    );
    let strays: Vec<String> = std::fs::read_dir("/etc/drawbridge")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name != "drawbridge.toml")
        .collect();
    assert!(strays.is_empty(), "files beside the conffile: {strays:?}");
    for (name, user) in USERS.iter().zip(&users) {
        let again = system_user(&mut runner, name).expect("the user is still there");
        assert_eq!((again.uid, again.gid), (user.uid, user.gid), "{name}");
    }

    // A purge leaves nothing but the system users (as Debian's packages do: files they own
    // may remain): no files, conffiles or state.
    installed.purged = true;
    runner.run("dpkg", &["--purge", PACKAGE]).ok();
    std::fs::remove_dir_all(RUNTIME_DIR).unwrap();
    let after = traces_of_the_package(&mut runner);
    assert!(
        after.is_empty(),
        "left after the purge: {}",
        after.join(", ")
    );
    for (name, user) in USERS.iter().zip(&users) {
        let kept = system_user(&mut runner, name).expect("the user stays after a purge");
        assert_eq!((kept.uid, kept.gid), (user.uid, user.gid), "{name}");
        assert!(group_exists(&mut runner, name), "the group {name} stays");
    }
}
