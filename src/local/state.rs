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
//!
//! Loading refuses, with an error naming the file (and the entry and field), rather than use or
//! reset anything:
//! - a state path that is not a regular file after following symlinks (a FIFO, socket, device
//!   or directory): never opened for reading, so a FIFO cannot block the start and `/dev/zero`
//!   cannot grow the process; a file over [`MAX_STATE_FILE_BYTES`];
//! - a file that does not parse, or of another format version;
//! - an entry no evaluation writes ([`LocalState::check`]): a budget's spend, lifetime total or
//!   burn-rate sample below zero, a window whose end is before its start.
//!
//! A window that starts after `now` (the clock was ahead when it was opened, then corrected
//! backwards) or ends later than any window its spec gives is not refused: the policy moves it
//! to the window holding `now`, keeping its spend and action (`BudgetWindowRealigned`, see
//! `crate::policy::budget`), so no spend is lost and the budget rolls over at its boundaries.

use std::io::Write;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::api::validate::file_kind;
use crate::policy::{DecisionState, Money, Observations};

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
    /// Not a regular file (after following symlinks), or too large.
    #[error(
        "state file {path} {why}; refusing to start. Point --state at a regular file (or a path \
         that does not exist yet)"
    )]
    NotRegular {
        /// File.
        path: PathBuf,
        /// What it is.
        why: String,
    },
    /// Parses, but holds an entry no evaluation writes (a hand edit, a damaged copy).
    #[error(
        "state file {path} is invalid: {entry}: {why}; refusing to start rather than use it or \
         reset spend. Fix that entry, or move the file away to start from an empty state (its \
         spend is then forgotten)"
    )]
    Invalid {
        /// File.
        path: PathBuf,
        /// The entry and field (`decision.budgets["default/openai"].spent`).
        entry: String,
        /// What is wrong with it.
        why: String,
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

/// Largest state file read (1 GiB): far above the state of 10,000 routes, and a bound on what a
/// wrong `--state` can make the process read.
pub const MAX_STATE_FILE_BYTES: u64 = 1 << 30;

/// Refuses anything but a regular file within [`MAX_STATE_FILE_BYTES`].
fn check_regular(path: &Path, meta: &std::fs::Metadata) -> Result<(), StateError> {
    let why = if !meta.file_type().is_file() {
        format!("is {} (after following symlinks), not a regular file", file_kind(meta.file_type()))
    } else if meta.len() > MAX_STATE_FILE_BYTES {
        format!("is {} bytes, over the limit of {MAX_STATE_FILE_BYTES} bytes", meta.len())
    } else {
        return Ok(());
    };
    Err(StateError::NotRegular { path: path.into(), why })
}

/// The bytes of the state file; `None` when there is none. Checked before it is opened and
/// again on the open handle (opened non-blocking), so a path swapped for a FIFO in between
/// cannot block, and at most the limit plus one byte is read even if the file grows meanwhile.
fn read_state_file(path: &Path) -> Result<Option<Vec<u8>>, StateError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let read_err = |source| StateError::Read { path: path.into(), source };
    match std::fs::metadata(path) {
        Ok(meta) => check_regular(path, &meta)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    }
    let file = match std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    let meta = file.metadata().map_err(read_err)?;
    check_regular(path, &meta)?;
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(MAX_STATE_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(read_err)?;
    if bytes.len() as u64 > MAX_STATE_FILE_BYTES {
        return Err(StateError::NotRegular {
            path: path.into(),
            why: format!("grew over the limit of {MAX_STATE_FILE_BYTES} bytes while read"),
        });
    }
    Ok(Some(bytes))
}

impl LocalState {
    /// Reads `path`; a missing file is an empty state. Refused (see the module rules): a path
    /// that is not a regular file, a file that does not parse or has another version, and one
    /// that fails [`LocalState::check`].
    pub fn load(path: &Path) -> Result<LocalState, StateError> {
        let Some(bytes) = read_state_file(path)? else {
            return Ok(LocalState { version: STATE_VERSION, ..Default::default() });
        };
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| StateError::Corrupt { path: path.into(), why: e.to_string() })?;
        match value.get("version").and_then(serde_json::Value::as_u64) {
            Some(v) if v == u64::from(STATE_VERSION) => {}
            Some(v) => return Err(StateError::Version { path: path.into(), found: v as u32 }),
            None => return Err(StateError::Corrupt { path: path.into(), why: "no version field".into() }),
        }
        let state: LocalState =
            serde_json::from_value(value).map_err(|e| StateError::Corrupt { path: path.into(), why: e.to_string() })?;
        state.check().map_err(|(entry, why)| StateError::Invalid { path: path.into(), entry, why })?;
        Ok(state)
    }

    /// The first entry no evaluation writes, as (entry and field, what is wrong): a budget's
    /// spend, lifetime total and burn-rate samples are never below zero, and its window never
    /// ends before it starts. (A negative pending delta is a correction the policy ignores.) Windows in the future are the policy's to realign (module rules).
    pub fn check(&self) -> Result<(), (String, String)> {
        let negative = |m: Money| m.is_negative().then(|| format!("{m} is below zero"));
        for (key, b) in &self.decision.budgets {
            let entry = |field: &str| format!("decision.budgets[\"{key}\"].{field}");
            if let Some(why) = negative(b.spent) {
                return Err((entry("spent"), why));
            }
            if let Some(why) = negative(b.total) {
                return Err((entry("total"), why));
            }
            if b.window_end < b.window_start {
                return Err((entry("windowEnd"), format!("{} is before windowStart {}", b.window_end, b.window_start)));
            }
            for (i, sample) in b.samples.iter().enumerate() {
                if let Some(why) = negative(sample.total) {
                    return Err((entry(&format!("samples[{i}].total")), why));
                }
            }
        }
        Ok(())
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
    use crate::policy::SpendKey;

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
    fn entries_no_evaluation_writes_are_refused_naming_them() {
        use crate::policy::budget::{BudgetMemory, SpendSample};
        use crate::policy::{ObjectKey, testing::t};
        let key = ObjectKey::new("default", "openai");
        let with = |f: &dyn Fn(&mut BudgetMemory)| {
            let mut m = BudgetMemory::fresh(t("2025-05-14T00:00:00Z"), t("2025-05-15T00:00:00Z"));
            m.spent = Money::from_usd(2);
            m.total = Money::from_usd(3);
            f(&mut m);
            let mut s = LocalState { version: STATE_VERSION, ..Default::default() };
            s.decision.budgets.insert(key.clone(), m);
            s.check()
        };
        assert_eq!(with(&|_| {}), Ok(()));
        let err =
            |entry: &str, why: &str| Err((format!("decision.budgets[\"default/openai\"].{entry}"), why.to_string()));
        assert_eq!(with(&|m| m.spent = Money::from_usd(-1000)), err("spent", "-1000.000000 is below zero"));
        assert_eq!(with(&|m| m.total = Money::from_picos(-1)), err("total", "-0.000000000001 is below zero"));
        assert_eq!(
            with(&|m| m.window_end = t("2025-05-13T00:00:00Z")),
            err("windowEnd", "2025-05-13T00:00:00Z is before windowStart 2025-05-14T00:00:00Z")
        );
        assert_eq!(
            with(&|m| m.samples.push(SpendSample { at: t("2025-05-14T01:00:00Z"), total: Money::from_usd(-1) })),
            err("samples[0].total", "-1.000000 is below zero")
        );
        // An empty window (a budget whose spec was invalid on its first evaluation) and one in
        // the future (the policy realigns it) are states evaluations write.
        assert_eq!(with(&|m| m.window_end = m.window_start), Ok(()));
        assert_eq!(
            with(&|m| {
                m.window_start = t("2030-01-01T00:00:00Z");
                m.window_end = t("2030-01-02T00:00:00Z");
            }),
            Ok(())
        );
        // Through `load`: the file and the entry are named.
        let p = temp("invalid.json");
        let mut s = LocalState { version: STATE_VERSION, ..Default::default() };
        let mut m = BudgetMemory::fresh(t("2025-05-14T00:00:00Z"), t("2025-05-15T00:00:00Z"));
        m.spent = Money::from_usd(-1000);
        s.decision.budgets.insert(key.clone(), m);
        s.save(&p).unwrap();
        let e = LocalState::load(&p).unwrap_err().to_string();
        assert!(e.starts_with(&format!("state file {} is invalid: decision.budgets", p.display())), "{e}");
        std::fs::remove_file(&p).ok();
    }

    #[test]
    fn a_state_path_that_is_not_a_regular_file_is_refused_unread() {
        let dir = temp("special");
        std::fs::create_dir_all(&dir).unwrap();
        let zero = dir.join("zero.json");
        let _ = std::fs::remove_file(&zero);
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let e = LocalState::load(&zero).unwrap_err().to_string();
        assert!(e.contains("is a character device (after following symlinks)"), "{e}");
        let e = LocalState::load(&dir).unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
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
