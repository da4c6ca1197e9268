//! Records the git commit the binaries are built from, for `--version`: `DRAWBRIDGE_COMMIT`
//! from the environment when set (a build from a source archive), else `git rev-parse` of the
//! workspace's own checkout, else "unknown".

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=DRAWBRIDGE_COMMIT");
    let commit = std::env::var("DRAWBRIDGE_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=DRAWBRIDGE_COMMIT={commit}");
}

/// The short hash of HEAD, when the workspace is a git checkout of its own (not a folder inside
/// another repository), and the files to watch so that a new commit rebuilds with it.
fn git_commit() -> Option<String> {
    let workspace = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").ok()?)
        .parent()?
        .canonicalize()
        .ok()?;
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .arg("-C")
            .arg(&workspace)
            .args(args)
            .output()
            .ok()?;
        let text = String::from_utf8(out.stdout).ok()?;
        out.status.success().then(|| text.trim().to_string())
    };
    let top = git(&["rev-parse", "--show-toplevel"])?;
    if Path::new(&top).canonicalize().ok()? != workspace {
        return None;
    }
    // HEAD moves to another branch or commit; logs/HEAD gets a line at every commit, checkout
    // and reset, whichever way the branch's ref is stored. A file named here that does not
    // exist would make every build run this again.
    for file in ["HEAD", "logs/HEAD"] {
        if let Some(path) = git(&["rev-parse", "--git-path", file]) {
            let path = workspace.join(path);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    git(&["rev-parse", "--short=12", "HEAD"])
}
