//! The local copy of the last applied gate state (and split and windows documents), so a proxy restarted
//! while Consul is down comes back in the state it had. Written atomically (a temporary file of
//! this process beside it, fsync, rename, fsync of the folder); a file that cannot be used is
//! refused with what is wrong ([`Unusable`]), never half-trusted: the gate watcher then serves
//! `server.unknown_state`, the other watchers apply their default document.

use drawbridge_core::gate::GateDoc;
use drawbridge_core::split::SplitDoc;
use drawbridge_core::windows::WindowsDoc;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Largest state file read: a saved state is a document (at most 64 KiB as stored, a windows
/// document; more once pretty-printed) and two fields.
pub const MAX_FILE_BYTES: usize = 4 * drawbridge_core::windows::MAX_WINDOWS_DOC_BYTES;

/// A document a state file may hold, with the check it must pass when read back.
pub trait Document: Serialize + DeserializeOwned {
    /// Why the document is invalid, if it is.
    fn check(&self) -> Result<(), String>;
}

impl Document for GateDoc {
    fn check(&self) -> Result<(), String> {
        self.validate().map_err(|e| e.to_string())
    }
}

impl Document for SplitDoc {
    fn check(&self) -> Result<(), String> {
        self.validate().map_err(|e| e.to_string())
    }
}

impl Document for WindowsDoc {
    fn check(&self) -> Result<(), String> {
        WindowsDoc::check(self).map_err(|e| e.to_string())
    }
}

/// What the file holds: a gate document, unless said otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedState<D = GateDoc> {
    /// The key the state was read from; a file for another key is refused.
    pub key: String,
    pub doc: D,
    pub applied_index: u64,
}

/// The file's shape, before its document is checked: a document that does not check is told
/// apart from a file that is not a saved state at all.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedShape {
    key: String,
    doc: serde_json::Value,
    applied_index: u64,
}

/// Why a state file that exists was not used.
#[derive(Debug)]
pub enum Unusable {
    /// It cannot be read (permissions, a folder at its path, an I/O error).
    Unreadable {
        path: PathBuf,
        error: std::io::Error,
    },
    /// It is not a saved state: empty, truncated, not JSON, too large, or another shape.
    Damaged { path: PathBuf, detail: String },
    /// Its gate document does not check, or does not fit this proxy's routes.
    InvalidDocument { path: PathBuf, detail: String },
    /// It was written for another key.
    OtherKey {
        path: PathBuf,
        found: String,
        wanted: String,
    },
}

impl Unusable {
    /// A short, stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Unusable::Unreadable { .. } => "unreadable",
            Unusable::Damaged { .. } => "damaged",
            Unusable::InvalidDocument { .. } => "invalid_document",
            Unusable::OtherKey { .. } => "other_key",
        }
    }

    /// The file refused.
    pub fn path(&self) -> &Path {
        match self {
            Unusable::Unreadable { path, .. }
            | Unusable::Damaged { path, .. }
            | Unusable::InvalidDocument { path, .. }
            | Unusable::OtherKey { path, .. } => path,
        }
    }
}

impl fmt::Display for Unusable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unusable::Unreadable { path, error } => write!(
                f,
                "cannot read the state file {}: {error} (check its permissions and the disk)",
                path.display()
            ),
            Unusable::Damaged { path, detail } => write!(
                f,
                "the state file {} is damaged, not a saved state ({detail}); Consul's next \
                 answer rewrites it",
                path.display()
            ),
            Unusable::InvalidDocument { path, detail } => write!(
                f,
                "the state file {} holds an invalid document ({detail}); Consul's next \
                 answer rewrites it",
                path.display()
            ),
            Unusable::OtherKey {
                path,
                found,
                wanted,
            } => write!(
                f,
                "the state file {} was written for the key {found:?}, not {wanted:?}: give each \
                 proxy its own server.state_file (Consul's next answer rewrites it)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for Unusable {}

/// The temporary file a save writes first: the state file's whole name plus this process's id
/// and `.tmp`, in the same folder (a rename is atomic only within one file system). The whole
/// name keeps it apart from any file named like the state file with another extension; the
/// process id keeps the old and the new process of a graceful upgrade, which both run a
/// watcher for a moment, from writing into the same temporary file.
fn temp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "gate-state".into());
    name.push(format!(".{}.tmp", std::process::id()));
    path.with_file_name(name)
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Writes the state so that a crash leaves either the old or the new file, never half of one.
///
/// # Errors
/// The file or its folder cannot be written; the temporary file is removed again.
pub fn save<D: Serialize>(path: &Path, saved: &SavedState<D>) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(saved).map_err(std::io::Error::other)?;
    let tmp = temp_path(path);
    if let Err(e) = write_synced(&tmp, &json).and_then(|()| std::fs::rename(&tmp, path)) {
        // Best effort: the error that matters is the one returned.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

/// Reads the state saved for `key`: `Ok(None)` when there is no file.
///
/// # Errors
/// The file exists but cannot be read, is not a saved state, holds an invalid document, or was
/// written for another key; the refusal names the file and says what is wrong.
pub fn load<D: Document>(path: &Path, key: &str) -> Result<Option<SavedState<D>>, Unusable> {
    let mut raw = Vec::new();
    let read = std::fs::File::open(path).and_then(|file| {
        file.take(MAX_FILE_BYTES as u64 + 1)
            .read_to_end(&mut raw)
            .map(drop)
    });
    match read {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(Unusable::Unreadable {
                path: path.to_owned(),
                error,
            })
        }
    }
    parse(path, &raw, key).map(Some)
}

/// Reads the bytes of a state file saved for `key`; `path` only names the file in a refusal.
///
/// # Errors
/// As [`load`], except that there is no file to read.
pub fn parse<D: Document>(path: &Path, raw: &[u8], key: &str) -> Result<SavedState<D>, Unusable> {
    let damaged = |detail: String| Unusable::Damaged {
        path: path.to_owned(),
        detail,
    };
    if raw.len() > MAX_FILE_BYTES {
        return Err(damaged(format!(
            "more than {MAX_FILE_BYTES} bytes, far more than a saved state has"
        )));
    }
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Err(damaged("the file is empty".to_owned()));
    }
    let shape: SavedShape = serde_json::from_slice(raw).map_err(|e| damaged(e.to_string()))?;
    if shape.key != key {
        return Err(Unusable::OtherKey {
            path: path.to_owned(),
            found: shape.key,
            wanted: key.to_owned(),
        });
    }
    let invalid = |detail: String| Unusable::InvalidDocument {
        path: path.to_owned(),
        detail,
    };
    let doc: D = serde_json::from_value(shape.doc).map_err(|e| invalid(e.to_string()))?;
    doc.check().map_err(invalid)?;
    Ok(SavedState {
        key: shape.key,
        doc,
        applied_index: shape.applied_index,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use drawbridge_core::gate::Mode;

    fn temp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("drawbridge-state-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("state.json")
    }

    #[test]
    fn saved_state_loads_back_for_its_key_only() {
        let path = temp("roundtrip");
        let saved = SavedState {
            key: "a/gate".into(),
            doc: GateDoc::with_mode(Mode::Maintenance),
            applied_index: 42,
        };
        save(&path, &saved).unwrap();
        assert_eq!(load(&path, "a/gate").unwrap(), Some(saved));
        let other = load::<GateDoc>(&path, "b/gate").unwrap_err();
        assert_eq!(other.reason(), "other_key");
        let text = other.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("\"a/gate\", not \"b/gate\""), "{text}");
    }

    #[test]
    fn a_missing_file_is_no_state_and_no_refusal() {
        let path = temp("missing");
        let _ = std::fs::remove_file(&path);
        assert_eq!(load::<GateDoc>(&path, "k").unwrap(), None);
    }

    #[test]
    fn unusable_files_are_refused_with_what_is_wrong() {
        let path = temp("damaged");
        let long_reason = format!(
            r#"{{"key":"k","doc":{{"mode":"maintenance","reason":"{}"}},"applied_index":3}}"#,
            "x".repeat(201)
        );
        let too_large = vec![b' '; MAX_FILE_BYTES + 1];
        let cases: [(&[u8], &str, &str); 10] = [
            (b"", "damaged", "empty"),
            (b"\n  \n", "damaged", "empty"),
            (b"{\"key\":", "damaged", "EOF"),
            (b"\x00\xff garbage", "damaged", "expected value"),
            (b"{\"key\":\"k\"}", "damaged", "missing field"),
            (&too_large, "damaged", "bytes"),
            (
                br#"{"key":"k","doc":{"mode":"closed"},"applied_index":3}"#,
                "invalid_document",
                "closed",
            ),
            (long_reason.as_bytes(), "invalid_document", "reason"),
            (
                br#"{"key":"k","doc":{"mode":"maintenance","scope":[]},"applied_index":3}"#,
                "invalid_document",
                "scope",
            ),
            (
                br#"{"key":"other/gate","doc":{"mode":"normal"},"applied_index":3}"#,
                "other_key",
                "other/gate",
            ),
        ];
        for (content, reason, mention) in cases {
            std::fs::write(&path, content).unwrap();
            let refusal = load::<GateDoc>(&path, "k").unwrap_err();
            let text = refusal.to_string();
            assert_eq!(refusal.reason(), reason, "{text}");
            assert_eq!(refusal.path(), path);
            assert!(text.contains(&path.display().to_string()), "{text}");
            assert!(text.contains(mention), "{mention:?} not in {text}");
        }
    }

    #[test]
    fn a_file_that_cannot_be_read_is_refused() {
        let path = temp("unreadable");
        let _ = std::fs::remove_file(&path);
        std::fs::create_dir_all(&path).unwrap();
        let refusal = load::<GateDoc>(&path, "k").unwrap_err();
        std::fs::remove_dir(&path).unwrap();
        assert_eq!(refusal.reason(), "unreadable", "{refusal}");
    }

    #[test]
    fn saves_go_through_a_temporary_file_of_their_own() {
        let path = temp("temp-name");
        let tmp = temp_path(&path);
        assert_eq!(tmp.parent(), path.parent());
        assert_eq!(
            tmp.file_name().unwrap().to_string_lossy(),
            format!("state.json.{}.tmp", std::process::id())
        );
        // A file named like the state file with another extension is left alone.
        let neighbour = path.with_extension("tmp");
        std::fs::write(&neighbour, "not ours").unwrap();
        let saved = SavedState {
            key: "k".into(),
            doc: GateDoc::with_mode(Mode::ReadOnly),
            applied_index: 7,
        };
        save(&path, &saved).unwrap();
        assert_eq!(std::fs::read_to_string(&neighbour).unwrap(), "not ours");
        assert!(!tmp.exists(), "the temporary file was renamed");
        assert_eq!(load(&path, "k").unwrap(), Some(saved));
    }

    #[test]
    fn a_failed_save_leaves_no_temporary_file() {
        let path = temp("failed-save");
        let _ = std::fs::remove_file(&path);
        // A folder in the way of the rename.
        std::fs::create_dir_all(path.join("occupied")).unwrap();
        let saved = SavedState {
            key: "k".into(),
            doc: GateDoc::normal(),
            applied_index: 1,
        };
        assert!(save(&path, &saved).is_err());
        assert!(!temp_path(&path).exists());
        std::fs::remove_dir_all(&path).unwrap();
    }
}
