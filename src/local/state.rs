//! The state file of `tollgate local`: everything the policy remembers plus the spend and
//! outcomes observed since the last evaluation, written atomically.
//!
//! Merging observations carried between evaluations uses the shared
//! [`crate::signals::delta::merge_observations`] (re-exported here).
//!
//! A save writes a temporary file beside the state file, fsyncs it and renames it over; on any
//! failure (full disk, read-only file system, immutable file) the temporary file is removed and
//! the error returned, never swallowed. [`LocalState::check_writable`] does one real save at
//! start, so a state path that cannot be written stops `local` before it serves anything.

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
    /// Could not be written when checked at start.
    #[error(
        "state file {path} cannot be written ({source}); refusing to start, as spend that cannot be \
         saved would be lost on restart. Make {dir} writable, with free space, or choose another --state"
    )]
    NotWritable {
        /// File.
        path: PathBuf,
        /// Its directory.
        dir: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
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
    /// On failure the temporary file is removed and the state file is left as it was.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        self.write_atomic(path).map_err(|source| StateError::Write { path: path.into(), source })
    }

    /// Saves `self` to `path` once, as the start-up check that the state file can be written
    /// (directory missing or read-only, disk full, file immutable): a [`StateError::NotWritable`]
    /// naming the directory otherwise.
    pub fn check_writable(&self, path: &Path) -> Result<(), StateError> {
        self.write_atomic(path).map_err(|source| StateError::NotWritable {
            path: path.into(),
            dir: parent_dir(path),
            source,
        })
    }

    fn write_atomic(&self, path: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        let dir = parent_dir(path);
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "state".into());
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let written = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, path)
        })();
        if let Err(e) = written {
            // Best effort: the directory may refuse the removal too (read-only), then nothing
            // was created in the first place.
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
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

    #[test]
    fn a_failed_save_is_an_error_and_leaves_no_temporary_file() {
        let dir = temp("faildir");
        std::fs::create_dir_all(&dir).unwrap();
        // The state path is a non-empty directory: the rename over it fails after the
        // temporary file was written.
        let path = dir.join("state.json");
        std::fs::create_dir_all(path.join("x")).unwrap();
        let s = LocalState { version: STATE_VERSION, ..Default::default() };
        let e = s.save(&path).unwrap_err().to_string();
        assert!(e.starts_with("cannot write state file") && e.contains("state.json"), "{e}");
        let e = s.check_writable(&path).unwrap_err().to_string();
        assert!(e.contains("refusing to start") && e.contains(&dir.display().to_string()), "{e}");
        let mut left: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(left, ["state.json"], "no temporary file left");
        // A missing directory is refused too.
        let e = s.check_writable(&dir.join("no/such/dir/state.json")).unwrap_err().to_string();
        assert!(e.contains("No such file"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
