//! The results folder of a load or fleet bench run: where it goes (`benches/runs/<date>-<name>`,
//! made unique), what its files may say (this machine's paths replaced by placeholders), and the
//! header of its setup notes (commit, machine, kernel, load average, the `drawbridge` version).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use time::OffsetDateTime;

/// The workspace root, from this package's location at build time.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The user's home folder (empty if unknown: then nothing is rewritten for it).
pub fn home_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// `benches/runs/<date>-<name>`, with `-2`, `-3`… if it exists.
pub fn unique_dir(name: &str) -> PathBuf {
    let date = OffsetDateTime::now_utc().date();
    let base = workspace_root().join("benches/runs");
    let mut dir = base.join(format!("{date}-{name}"));
    let mut n = 2;
    while dir.exists() {
        dir = base.join(format!("{date}-{name}-{n}"));
        n += 1;
    }
    dir
}

/// The first line a command prints (stdout or stderr), for tool versions.
pub fn first_line(program: &Path, args: &[&str]) -> String {
    match Command::new(program).args(args).output() {
        Ok(o) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            text.lines().next().unwrap_or("").trim().to_string()
        }
        Err(e) => format!("(cannot run: {e})"),
    }
}

/// The load averages and task counts of `/proc/loadavg`, as one line.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The first lines of a run's setup notes, as Markdown: the commit (and whether the tree had
/// uncommitted changes), the machine (CPUs, model and, with `memory`, its total memory), its
/// kernel, the load average at the start, and the version of the `drawbridge` binary measured.
pub fn setup_header(drawbridge: &Path, memory: bool) -> String {
    let root = workspace_root();
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let dirty = !git(&["status", "--porcelain"]).is_empty();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("")
        .trim();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let memory = if memory {
        let mem_total = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
        format!(", {mem_total:.0} GiB")
    } else {
        String::new()
    };
    format!(
        "- commit: {}{}\n\
         - machine: {cpus} CPU(s), {model}{memory}; kernel {}\n\
         - load average at start: {}\n\
         - drawbridge: {}\n",
        git(&["rev-parse", "HEAD"]),
        if dirty {
            " (with uncommitted changes)"
        } else {
            ""
        },
        first_line(Path::new("uname"), &["-r"]),
        load_average(),
        first_line(drawbridge, &["--version"]),
    )
}

/// The results folder of one run. Every file written there has this machine's paths replaced
/// by placeholders (the work folder by `RUN_DIR`, the project root by `.`, …), so a committed
/// run names none.
pub struct RunFolder {
    path: PathBuf,
    /// Longest path first, so a folder inside another becomes its own placeholder.
    redact: Vec<(String, String)>,
}

impl RunFolder {
    /// The folder at `path`, replacing each folder of `placeholders` by its placeholder.
    pub fn new(path: PathBuf, placeholders: impl IntoIterator<Item = (PathBuf, String)>) -> Self {
        let mut redact: Vec<(String, String)> = placeholders
            .into_iter()
            .map(|(folder, placeholder)| (folder.display().to_string(), placeholder))
            .filter(|(folder, _)| folder.len() > 1)
            .collect();
        redact.sort_by_key(|(folder, _)| std::cmp::Reverse(folder.len()));
        RunFolder { path, redact }
    }

    /// Writes `text`, redacted, to `name` (which may name a subfolder), creating the folders.
    pub fn write(&self, name: &str, text: &str) -> anyhow::Result<()> {
        let path = self.path.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let text = self
            .redact
            .iter()
            .fold(text.to_string(), |text, (folder, placeholder)| {
                text.replace(folder, placeholder)
            });
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_header_names_commit_machine_load_and_drawbridge() {
        for memory in [false, true] {
            let header = setup_header(Path::new("/nonexistent/drawbridge"), memory);
            let keys: Vec<&str> = header
                .lines()
                .map(|l| l.split(':').next().unwrap_or(""))
                .collect();
            assert_eq!(
                keys,
                [
                    "- commit",
                    "- machine",
                    "- load average at start",
                    "- drawbridge"
                ],
                "{header}"
            );
            let machine = header.lines().nth(1).unwrap_or("");
            assert_eq!(machine.contains(" GiB; kernel "), memory, "{machine}");
            assert!(
                header.ends_with(
                    "- drawbridge: (cannot run: No such file or directory (os error 2))\n"
                ),
                "{header}"
            );
        }
    }

    #[test]
    fn run_folder_writes_longest_folder_first_into_subfolders() {
        let dir =
            std::env::temp_dir().join(format!("drawbridge-run-folder-{}", std::process::id()));
        let work = dir.join("work");
        let folder = RunFolder::new(
            dir.join("out"),
            [
                (dir.clone(), "~".to_string()),
                (work.clone(), "RUN_DIR".to_string()),
                (PathBuf::from("/"), "root".to_string()),
            ],
        );
        let text = format!("{}/logs and {}/x", work.display(), dir.display());
        folder.write("configs/a.txt", &text).unwrap();
        let written = std::fs::read_to_string(dir.join("out/configs/a.txt")).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(written, "RUN_DIR/logs and ~/x");
    }
}
