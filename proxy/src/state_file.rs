//! The local copy of the last applied gate state, so a proxy restarted while Consul is down
//! comes back in the state it had. Written atomically (temporary file, fsync, rename).

use drawbridge_core::gate::GateDoc;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

/// What the file holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedState {
    /// The key the state was read from; a file for another key is ignored.
    pub key: String,
    pub doc: GateDoc,
    pub applied_index: u64,
}

/// Writes the state so that a crash leaves either the old or the new file, never half of one.
///
/// # Errors
/// The file or its folder cannot be written.
pub fn save(path: &Path, saved: &SavedState) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(saved).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("tmp");
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&json)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Reads the state saved for `key`: `Ok(None)` when there is no file or it is for another key.
///
/// # Errors
/// The file exists but cannot be read or does not parse; the message says which file.
pub fn load(path: &Path, key: &str) -> Result<Option<SavedState>, String> {
    let raw = match std::fs::read(path) {
        Ok(raw) => raw,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read state file {}: {e}", path.display())),
    };
    let saved: SavedState = serde_json::from_slice(&raw)
        .map_err(|e| format!("state file {} is damaged: {e}", path.display()))?;
    saved.doc.validate().map_err(|e| {
        format!(
            "state file {} holds an invalid document: {e}",
            path.display()
        )
    })?;
    Ok((saved.key == key).then_some(saved))
}

#[cfg(test)]
mod tests {
    use super::*;
    use drawbridge_core::gate::Mode;

    fn temp(name: &str) -> std::path::PathBuf {
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
        assert_eq!(load(&path, "b/gate").unwrap(), None);
    }

    #[test]
    fn damaged_files_are_reported_not_trusted() {
        let path = temp("damaged");
        assert_eq!(load(&path, "k").unwrap(), None);
        for junk in [
            &b""[..],
            b"{\"key\":",
            b"\x00\xff garbage",
            b"{\"key\":\"k\"}",
        ] {
            std::fs::write(&path, junk).unwrap();
            let err = load(&path, "k").unwrap_err();
            assert!(err.contains("damaged"), "{err}");
        }
    }
}
