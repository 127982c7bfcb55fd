//! The state file of `tollgate local`: everything the policy remembers plus the spend and
//! outcomes observed since the last evaluation, written atomically.
//!
//! Merging observations carried between evaluations uses the shared
//! [`crate::signals::delta::merge_observations`] (re-exported here).

use std::io::Write;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::policy::{DecisionState, Observations};

/// Version of the state file format.
pub const STATE_VERSION: u32 = 1;

/// What `local` persists.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalState {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// When it was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saved_at: Option<Timestamp>,
    /// The policy's state after the last evaluation (windows, spend, escalations, health).
    pub decision: DecisionState,
    /// Observed since the last evaluation and not yet evaluated (fed into the next one, so a
    /// crash between two evaluations loses at most what happened since the last save).
    #[serde(default)]
    pub pending: Observations,
}

/// Why the state file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Unreadable.
    #[error("cannot read state file {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Not a state file, or damaged. Never reset silently: spend would be lost.
    #[error(
        "state file {path} is corrupt ({why}); refusing to start rather than reset spend to zero. \
         Restore it, or move it away to start from an empty state"
    )]
    Corrupt {
        /// File.
        path: PathBuf,
        /// Parser's word.
        why: String,
    },
    /// Written by another format version.
    #[error("state file {path} has version {found}, this tollgate reads version {STATE_VERSION}")]
    Version {
        /// File.
        path: PathBuf,
        /// Version found.
        found: u32,
    },
    /// Could not be written.
    #[error("cannot write state file {path}: {source}")]
    Write {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

impl LocalState {
    /// Reads `path`; a missing file is an empty state.
    pub fn load(path: &Path) -> Result<LocalState, StateError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(LocalState { version: STATE_VERSION, ..Default::default() });
            }
            Err(source) => return Err(StateError::Read { path: path.into(), source }),
        };
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| StateError::Corrupt { path: path.into(), why: e.to_string() })?;
        match value.get("version").and_then(serde_json::Value::as_u64) {
            Some(v) if v == u64::from(STATE_VERSION) => {}
            Some(v) => return Err(StateError::Version { path: path.into(), found: v as u32 }),
            None => return Err(StateError::Corrupt { path: path.into(), why: "no version field".into() }),
        }
        serde_json::from_value(value).map_err(|e| StateError::Corrupt { path: path.into(), why: e.to_string() })
    }

    /// Writes `path` atomically: a temporary file beside it, fsync, rename, fsync the directory.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let err = |source| StateError::Write { path: path.into(), source };
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| err(std::io::Error::other(e)))?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "state".into());
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        {
            let mut f = std::fs::File::create(&tmp).map_err(err)?;
            f.write_all(&bytes).map_err(err)?;
            f.write_all(b"\n").map_err(err)?;
            f.sync_all().map_err(err)?;
        }
        std::fs::rename(&tmp, path).map_err(err)?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// Adds `more` into `into`: the one definition lives in [`crate::signals::delta`].
pub use crate::signals::delta::merge_observations;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Money, SpendKey};

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("tollgate-state-{}-{name}", std::process::id()))
    }

    #[test]
    fn missing_is_empty_and_saved_state_round_trips() {
        let p = temp("roundtrip.json");
        let _ = std::fs::remove_file(&p);
        let mut s = LocalState::load(&p).unwrap();
        assert_eq!(s.version, STATE_VERSION);
        s.pending.spend.insert(SpendKey::new("default", "openai", "gpt-5"), Money::from_picos(1_234_567));
        s.save(&p).unwrap();
        assert_eq!(LocalState::load(&p).unwrap(), s);
        std::fs::remove_file(&p).ok();
    }

    #[test]
    fn corrupt_and_foreign_files_are_refused() {
        let p = temp("corrupt.json");
        std::fs::write(&p, b"{\"version\": 1, \"decision\": {\"budgets\": 7}}").unwrap();
        assert!(matches!(LocalState::load(&p), Err(StateError::Corrupt { .. })));
        std::fs::write(&p, b"garbage").unwrap();
        let e = LocalState::load(&p).unwrap_err().to_string();
        assert!(e.contains("is corrupt") && e.contains("refusing to start"), "{e}");
        std::fs::write(&p, b"{\"version\": 9, \"decision\": {}}").unwrap();
        assert!(matches!(LocalState::load(&p), Err(StateError::Version { found: 9, .. })));
        std::fs::remove_file(&p).ok();
    }
}
