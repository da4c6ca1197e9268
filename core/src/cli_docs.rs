//! What the package ships beside each binary, made from its clap definition: the man page(s)
//! and the bash, zsh and fish completions. `scripts/package.sh` runs each binary with
//! `DRAWBRIDGE_GENERATE_DOCS=DIR` in its environment (not a flag, so the pages and completions do
//! not list it).

use clap_complete::Shell;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;

/// The commit the binaries were built from (short hash), or "unknown" outside a git checkout.
pub const COMMIT: &str = env!("DRAWBRIDGE_COMMIT");

/// The version both binaries print: the workspace version and the commit built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("DRAWBRIDGE_COMMIT"),
    ")"
);

/// The environment variable that makes a binary write its docs into the directory it names,
/// then exit.
pub const GENERATE_DOCS: &str = "DRAWBRIDGE_GENERATE_DOCS";

/// With `DRAWBRIDGE_GENERATE_DOCS=DIR` set, writes the docs of `command()` into DIR and returns the exit
/// code (0, or 1 with the error on stderr); without it, `None`: run as usual.
pub fn generate_if_asked(command: impl FnOnce() -> clap::Command) -> Option<ExitCode> {
    let dir = std::env::var_os(GENERATE_DOCS)?;
    let command = command();
    let name = command.get_name().to_string();
    Some(match generate(command, Path::new(&dir)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: writing the man pages and completions: {e}");
            ExitCode::FAILURE
        }
    })
}

/// Writes into `dir`: `NAME.1`, and `NAME-SUBCOMMAND.1` for each visible subcommand, and
/// `completions/NAME.bash`, `completions/_NAME` (zsh) and `completions/NAME.fish`.
///
/// # Errors
/// A file that cannot be written, named.
pub fn generate(mut command: clap::Command, dir: &Path) -> io::Result<()> {
    let name = command.get_name().to_string();
    clap_mangen::generate_to(command.clone(), dir).map_err(|e| named(dir, e))?;
    let completions = dir.join("completions");
    std::fs::create_dir_all(&completions).map_err(|e| named(&completions, e))?;
    for (shell, file) in [
        (Shell::Bash, format!("{name}.bash")),
        (Shell::Zsh, format!("_{name}")),
        (Shell::Fish, format!("{name}.fish")),
    ] {
        write_file(&completions.join(file), |out| {
            clap_complete::generate(shell, &mut command, &name, out);
            Ok(())
        })?;
    }
    Ok(())
}

fn write_file(path: &Path, body: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> io::Result<()> {
    let mut out = BufWriter::new(File::create(path).map_err(|e| named(path, e))?);
    body(&mut out)
        .and_then(|()| out.flush())
        .map_err(|e| named(path, e))
}

fn named(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_per_visible_subcommand_and_three_completions() {
        let command = clap::Command::new("tool")
            .about("A tool")
            .subcommand(clap::Command::new("down").about("Take it down"))
            .subcommand(clap::Command::new("secret").hide(true));
        let dir = std::env::temp_dir().join(format!("cli-docs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        generate(command, &dir).unwrap();
        let mut files: Vec<String> = walk(&dir);
        files.sort();
        assert_eq!(
            files,
            [
                "completions/_tool",
                "completions/tool.bash",
                "completions/tool.fish",
                "tool-down.1",
                "tool.1"
            ]
        );
        let page = std::fs::read_to_string(dir.join("tool-down.1")).unwrap();
        assert!(page.contains("tool\\-down"), "{page}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn walk(dir: &Path) -> Vec<String> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                let sub = path.file_name().unwrap().to_string_lossy().to_string();
                found.extend(walk(&path).into_iter().map(|f| format!("{sub}/{f}")));
            } else {
                found.push(path.file_name().unwrap().to_string_lossy().to_string());
            }
        }
        found
    }
}
