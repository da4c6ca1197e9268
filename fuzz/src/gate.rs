//! The gate document as read from the Consul key, and as saved in the proxy's state file.

use drawbridge::state_file::{self, SavedState};
use drawbridge_core::gate::{GateDoc, GateDocError, Mode, MAX_DOC_BYTES};
use std::path::Path;

/// `GateDoc::parse` on any bytes.
///
/// Checks: a value over the size limit is refused before anything else; a document that parses
/// also validates, and what it writes back (`to_json`, as `maintctl` writes the key) parses to
/// the same document; the bare words give their documented modes; a JSON object that serde
/// reads and that validates is accepted as it is, never refused or changed by the extra rules.
pub fn gate_doc(data: &[u8]) {
    let parsed = GateDoc::parse(data);
    if data.len() > MAX_DOC_BYTES {
        assert_eq!(parsed, Err(GateDocError::TooLarge { size: data.len() }));
        return;
    }
    let doc = match parsed {
        Ok(doc) => doc,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            check_refusal_is_right(data);
            return;
        }
    };
    assert_eq!(doc.validate(), Ok(()), "{doc:?}");
    let json = doc.to_json();
    assert_eq!(
        GateDoc::parse(json.as_bytes()).as_ref(),
        Ok(&doc),
        "written back as {json}"
    );
    let text = std::str::from_utf8(data).expect("a parsed document is UTF-8");
    match text.trim_matches(|c: char| c.is_ascii_whitespace()) {
        "true" | "on" | "1" => assert_eq!(doc, GateDoc::with_mode(Mode::Maintenance)),
        "false" | "off" | "0" => assert_eq!(doc, GateDoc::normal()),
        object => {
            assert!(object.starts_with('{'), "accepted {object:?}");
            let direct: GateDoc = serde_json::from_str(object).expect("serde reads it too");
            assert_eq!(direct, doc);
        }
    }
}

/// A refused value is not one serde reads into a document that validates.
fn check_refusal_is_right(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let object = text.trim_matches(|c: char| c.is_ascii_whitespace());
    if !object.starts_with('{') {
        return;
    }
    if let Ok(doc) = serde_json::from_str::<GateDoc>(object) {
        assert!(
            doc.validate().is_err(),
            "refused a document serde reads and that validates: {object:?}"
        );
    }
}

/// The key the state-file target's files are saved for.
const STATE_KEY: &str = "drawbridge/prod/gate";

/// `state_file::parse` on any bytes (what `load` reads from the file).
///
/// Checks: a state that loads is for the key asked for, holds a document that validates, and
/// what `save` writes for it loads back the same; a refusal names the file and is never
/// `unreadable` (there is no I/O).
pub fn state_file(data: &[u8]) {
    let path = Path::new("/var/lib/drawbridge/gate-state.json");
    match state_file::parse::<GateDoc>(path, data, STATE_KEY) {
        Ok(saved) => {
            assert_eq!(saved.key, STATE_KEY);
            assert_eq!(saved.doc.validate(), Ok(()), "{saved:?}");
            let written = serde_json::to_vec_pretty(&saved).expect("a saved state serialises");
            let again: SavedState = state_file::parse(path, &written, STATE_KEY)
                .unwrap_or_else(|e| panic!("its own save is refused: {e}"));
            assert_eq!(again, saved);
        }
        Err(refusal) => {
            assert_eq!(refusal.path(), path);
            assert_ne!(refusal.reason(), "unreadable");
            let text = refusal.to_string();
            assert!(text.contains(&path.display().to_string()), "{text}");
        }
    }
}
