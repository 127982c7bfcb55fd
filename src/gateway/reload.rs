//! Hot reload of the config file.
//!
//! A mounted ConfigMap changes by a symlink swap: `config.json -> ..data/config.json`, and the
//! kubelet atomically renames a new `..data` symlink over the old one. So the watcher watches
//! the file's *directory* (inotify events for the swap arrive there), and, in case events are
//! lost or unsupported (some network and overlay filesystems), it also polls: every interval it
//! reads the file through its symlinks and compares the bytes with the last ones seen. A new
//! document is validated completely ([`crate::config::GatewayConfig::from_json`]) and swapped in atomically; a
//! missing, unreadable or invalid document keeps the last good one and counts once in
//! `tollgate_config_reload_errors_total` (once per distinct bad content, not once per poll).
//! The file may be compressed: when `config.json` does not exist its sibling `config.json.gz`
//! is read (a mounted ConfigMap holds one or the other), and either is decoded by its bytes
//! ([`crate::config::payload`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::Gateway;

/// What the watcher last saw at the path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Nothing,
    Missing(String),
    Bytes(Vec<u8>),
}

/// Reads and applies the file; keeps track of what it saw so each change counts once.
pub(crate) struct FileSource {
    path: PathBuf,
    seen: Seen,
}

/// Result of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// Same bytes (or same failure) as last time: nothing done.
    Unchanged,
    /// A new valid document is being served.
    Applied(String),
    /// The file changed to something invalid, or disappeared; the last good config is kept.
    Refused(String),
}

impl FileSource {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self { path, seen: Seen::Nothing }
    }

    /// Reads the file and, if it changed, validates and applies it.
    pub(crate) fn check(&mut self, gw: &Gateway) -> ReloadOutcome {
        // Compressed form (issue 12): the file or its `.gz` sibling, decoded by content.
        match crate::config::payload::read_config_file(&self.path).map(|(_, bytes)| bytes) {
            Err(e) => {
                let why = format!("cannot read config file {}: {e}", self.path.display());
                if self.seen == Seen::Missing(why.clone()) {
                    return ReloadOutcome::Unchanged;
                }
                self.seen = Seen::Missing(why.clone());
                gw.record_reload_error();
                tracing::warn!(path = %self.path.display(), error = %e, "config file unreadable; keeping the last good config");
                ReloadOutcome::Refused(why)
            }
            Ok(bytes) => {
                if matches!(&self.seen, Seen::Bytes(b) if *b == bytes) {
                    return ReloadOutcome::Unchanged;
                }
                let parsed = crate::config::payload::decode(&bytes);
                self.seen = Seen::Bytes(bytes);
                match parsed {
                    Ok(cfg) => {
                        let rev = cfg.revision.clone();
                        match gw.swap_config(cfg) {
                            Ok(()) => {
                                tracing::info!(revision = %rev, path = %self.path.display(), "config loaded");
                                ReloadOutcome::Applied(rev)
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "config refused; keeping the last good config");
                                ReloadOutcome::Refused(e.to_string())
                            }
                        }
                    }
                    Err(e) => {
                        gw.record_reload_error();
                        tracing::warn!(path = %self.path.display(), error = %e, "config refused; keeping the last good config");
                        ReloadOutcome::Refused(e.to_string())
                    }
                }
            }
        }
    }
}

/// Loads `path` once now (so the gateway is ready as soon as possible), then watches it:
/// directory events (inotify) plus a poll every `poll`. The task runs until aborted.
pub fn watch_config_file(gw: Gateway, path: PathBuf, poll: Duration) -> JoinHandle<()> {
    let mut source = FileSource::new(path.clone());
    source.check(&gw);
    tokio::spawn(async move {
        let (tx, mut rx) = mpsc::channel::<()>(1);
        let _watcher = start_watcher(&path, tx);
        let mut tick = tokio::time::interval(poll.max(Duration::from_millis(50)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                Some(()) = rx.recv() => {
                    // Let a burst of events (the kubelet's rename dance) settle.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    while rx.try_recv().is_ok() {}
                }
            }
            source.check(&gw);
        }
    })
}

fn start_watcher(path: &Path, tx: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let handler = move |res: notify::Result<notify::Event>| {
        if res.is_ok() {
            // A full channel already holds a pending reload.
            let _ = tx.try_send(());
        }
    };
    match notify::recommended_watcher(handler) {
        Ok(mut w) => match w.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => Some(w),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the config directory; polling only");
                None
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "file watching unavailable; polling only");
            None
        }
    }
}
