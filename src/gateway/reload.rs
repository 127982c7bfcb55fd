//! Hot reload of the config file.
//!
//! A mounted ConfigMap changes by a symlink swap: `config.json -> ..data/config.json`, and the
//! kubelet atomically renames a new `..data` symlink over the old one. So the watcher watches
//! the file's *directory* (inotify events for the swap arrive there), and, in case events are
//! lost or unsupported (some network and overlay filesystems), it also polls: every interval it
//! looks at the file's metadata through its symlinks (size, modification and change times,
//! inode, device) and reads the file only when that changed; what it read is compared by
//! SHA-256 with the last content seen, so a large document left in place (valid or not) is
//! neither re-read nor re-parsed each poll. A file larger than [`MAX_CONFIG_BYTES`] is refused
//! without being read. The document may be compressed (`config.json.gz` beside a missing `config.json`, as a
//! ConfigMap with `binaryData` mounts; decoded by content). A new document is validated completely ([`GatewayConfig::from_json`]) and swapped in atomically; a
//! missing, unreadable or invalid document keeps the last good one and counts once in
//! `tollgate_config_reload_errors_total` (once per distinct bad content, not once per poll).
//! The file may be compressed: when `config.json` does not exist its sibling `config.json.gz`
//! is read (a mounted ConfigMap holds one or the other), and either is decoded by its bytes
//! ([`crate::config::payload`]). When neither exists, the shard index `config.index.json`
//! beside it is read and the document assembled from the shard files it names
//! ([`crate::config::shard`]); the metadata and content of those files count as the
//! document's, so a shard that arrives after its index is picked up, and a missing, stale or
//! corrupt shard keeps the last good config.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::Gateway;
use crate::config::payload::{decode_file, is_index_file, locate_config_file, shard_files};
use crate::config::shard::parse_index;

/// Largest config document read, bytes.
pub const MAX_CONFIG_BYTES: u64 = 32 * 1024 * 1024;

/// What the watcher last saw at the path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Nothing,
    Missing(String),
    Content([u8; 32]),
}

/// Metadata that changes when the file (or the target of its symlinks) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    len: u64,
    modified: Option<std::time::SystemTime>,
    #[cfg(unix)]
    ids: (u64, u64, i64, i64),
}

impl Fingerprint {
    fn of(m: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt;
        Self {
            len: m.len(),
            modified: m.modified().ok(),
            #[cfg(unix)]
            ids: (m.dev(), m.ino(), m.ctime(), m.ctime_nsec()),
        }
    }
}

/// Reads and applies the file; keeps track of what it saw so each change counts once.
pub(crate) struct FileSource {
    path: PathBuf,
    seen: Seen,
    /// Metadata of the file read and of the shard files its index names, when last read.
    fingerprint: Option<Vec<Option<Fingerprint>>>,
    /// Shard files named by the last index read (empty for a whole document).
    shard_files: Vec<PathBuf>,
    /// Whole reads of the file (to show that an unchanged file is not re-read).
    pub(crate) reads: u64,
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
        Self { path, seen: Seen::Nothing, fingerprint: None, shard_files: Vec::new(), reads: 0 }
    }

    /// The file to read and the metadata of it and of the shard files the last index named.
    fn fingerprints(&self, path: &Path) -> Vec<Option<Fingerprint>> {
        std::iter::once(path)
            .chain(self.shard_files.iter().map(PathBuf::as_path))
            .map(|p| std::fs::metadata(p).ok().map(|m| Fingerprint::of(&m)))
            .collect()
    }

    /// Reads the config file (or its `.gz` sibling, or the shard index beside it) when it, or
    /// one of the shard files the index names, changed. Returns the file read, its bytes and,
    /// for an index, the document assembled from its shards.
    fn read(&mut self) -> std::io::Result<(PathBuf, Vec<u8>)> {
        let path = locate_config_file(&self.path).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, format!("{} not found", self.path.display()))
        })?;
        let fp = self.fingerprints(&path);
        if self.fingerprint.as_ref() == Some(&fp) {
            return Err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, "unchanged"));
        }
        self.fingerprint = Some(fp);
        let meta = std::fs::metadata(&path)?;
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(std::io::Error::other(format!(
                "{} bytes, larger than the limit of {MAX_CONFIG_BYTES} bytes",
                meta.len()
            )));
        }
        if !meta.is_file() {
            return Err(std::io::Error::other("not a regular file"));
        }
        self.reads += 1;
        let bytes = std::fs::read(&path)?;
        if is_index_file(&path) {
            // Watch the shard files this index names from now on.
            let files = parse_index(&bytes).map(|i| shard_files(&path, &i)).unwrap_or_default();
            if files != self.shard_files {
                self.shard_files = files;
                self.fingerprint = Some(self.fingerprints(&path));
            }
        } else {
            self.shard_files.clear();
        }
        Ok((path, bytes))
    }

    /// Reads the file and, if it changed, validates and applies it.
    pub(crate) fn check(&mut self, gw: &Gateway) -> ReloadOutcome {
        let read = self.read();
        if read.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::AlreadyExists) {
            return ReloadOutcome::Unchanged;
        }
        if read.is_err() {
            // Look again next time: the file may come back with the same metadata.
            self.fingerprint = None;
        }
        match read {
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
            Ok((read, bytes)) => {
                // For an index, the content is the index and every shard it names.
                let mut hasher = Sha256::new();
                hasher.update(&bytes);
                for f in &self.shard_files {
                    hasher.update(std::fs::read(f).map(|b| Sha256::digest(b).to_vec()).unwrap_or_default());
                }
                let hash: [u8; 32] = hasher.finalize().into();
                if self.seen == Seen::Content(hash) {
                    return ReloadOutcome::Unchanged;
                }
                let parsed = decode_file(&read, &bytes, MAX_CONFIG_BYTES);
                drop(bytes);
                self.seen = Seen::Content(hash);
                match parsed {
                    Ok(cfg) => {
                        // `decode_file` validated it (whole, assembled from its shards).
                        let rev = cfg.revision.clone();
                        gw.swap_validated(cfg);
                        tracing::info!(revision = %rev, path = %self.path.display(), "config loaded");
                        ReloadOutcome::Applied(rev)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::GatewayOptions;
    use std::sync::Arc;

    /// The gateway takes the document apart to serve it (each backend row moves into its
    /// compiled backend); what it reports serving is still exactly the document loaded.
    #[test]
    fn the_document_served_is_the_document_loaded() {
        use crate::config::{EndpointConfig, GatewayConfig, MockEndpoint, tests_support::route};
        let mut routes: Vec<_> = (0..40).map(|i| route(&format!("r{i:03}"))).collect();
        routes[3].backends[1].endpoint = EndpointConfig::Mock(MockEndpoint::default());
        routes[5].max_input_tokens = Some(9);
        let mut doc = GatewayConfig { version: 1, revision: String::new(), namespace: "ns".into(), routes };
        doc.revision = doc.compute_revision();
        let gw = Gateway::new(Some(doc.clone()), GatewayOptions::default()).unwrap();
        assert_eq!(gw.config().as_deref(), Some(&doc));
        assert_eq!(gw.revision(), Some(doc.revision.clone()));
        let served = gw.inner.current.load_full().unwrap();
        let aliases: Vec<&str> = served.order.iter().map(|r| r.doc.model.as_str()).collect();
        assert_eq!(aliases, doc.routes.iter().map(|r| r.model.as_str()).collect::<Vec<_>>());
        // Rows of the same provider and upstream model share their gen_ai instruments.
        let (a, b) = (&served.routes["r000"].backends[0], &served.routes["r001"].backends[0]);
        assert!(Arc::ptr_eq(&a.gen_ai, &b.gen_ai));
        assert!(!Arc::ptr_eq(&a.gen_ai, &served.routes["r000"].backends[1].gen_ai), "another model");
        assert!(served.routes["r003"].backends[1].uris.is_none(), "a mock backend has no upstream URIs");
        assert!(served.routes["r003"].backends[0].uris.is_some());
        // Its upstream request headers: none for a mock backend, one map per host.
        assert!(served.routes["r003"].backends[1].base_headers.is_none());
        let (ha, hb) = (a.base_headers.as_ref().expect("an HTTP backend"), b.base_headers.as_ref().expect("HTTP"));
        assert!(Arc::ptr_eq(ha, hb), "the same host");
        assert_eq!(ha.get(axum::http::header::HOST).map(|h| h.as_bytes()), Some(&b"api.openai.com"[..]));
    }

    #[test]
    fn an_invalid_file_left_in_place_is_read_once() {
        let dir = crate::test_dir("reload");
        let path = dir.join("config.json");
        std::fs::write(&path, vec![b'x'; 2 * 1024 * 1024]).unwrap();
        let gw = Gateway::new(None, GatewayOptions::default()).unwrap();
        let mut src = FileSource::new(path.clone());
        assert!(matches!(src.check(&gw), ReloadOutcome::Refused(_)));
        for _ in 0..20 {
            assert_eq!(src.check(&gw), ReloadOutcome::Unchanged);
        }
        assert_eq!(src.reads, 1, "an unchanged file is not read again");
        assert_eq!(gw.meter().reload_errors(), 1);
        // A change (other size) is seen; the same bad content under new metadata counts once.
        std::fs::write(&path, b"{").unwrap();
        assert!(matches!(src.check(&gw), ReloadOutcome::Refused(_)));
        assert_eq!(src.reads, 2);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
