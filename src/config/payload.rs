//! How a config document is stored: compact JSON, gzip-compressed past a threshold.
//!
//! Rules:
//! - In the cluster the document is compact JSON (no pretty-printing: whitespace was most of
//!   the bytes). Up to [`COMPRESS_ABOVE`] bytes it is written as text under ConfigMap `data`
//!   key [`super::CONFIG_KEY`]; above, gzip-compressed under `binaryData` key
//!   [`CONFIG_GZ_KEY`] (never both). The revision is always the hash of the uncompressed
//!   content, so the form does not change the revision.
//! - A document whose stored form is still over [`MAX_STORED`] bytes (the API server refuses
//!   ConfigMaps over 1 MiB; some room is left for metadata) is not written: [`encode`] says
//!   how big it is and what the ceiling is.
//! - Readers ([`decode`]) tell the two forms apart by the gzip magic bytes (JSON never starts
//!   with 0x1f), so a file named either way, or a ConfigMap key, reads the same. Decompression
//!   is bounded by [`MAX_DOCUMENT`] bytes (a corrupt or hostile stream cannot exhaust memory).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

use super::{CONFIG_KEY, ConfigError, GatewayConfig};

/// Key of the gzip-compressed document in the ConfigMap's `binaryData`.
pub const CONFIG_GZ_KEY: &str = "config.json.gz";
/// Compact documents larger than this are written compressed.
pub const COMPRESS_ABOVE: usize = 512 * 1024;
/// Largest stored form written to a ConfigMap (the API server's limit is 1,048,576 bytes for
/// all keys together; the rest is left to metadata).
pub const MAX_STORED: usize = 1_000_000;
/// Largest uncompressed document a reader accepts.
pub const MAX_DOCUMENT: usize = 256 * 1024 * 1024;

/// A document as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stored {
    /// Compact JSON under `data` [`CONFIG_KEY`].
    Text(String),
    /// Gzip-compressed compact JSON under `binaryData` [`CONFIG_GZ_KEY`].
    Gzip(Vec<u8>),
}

impl Stored {
    /// Size of the stored form in bytes.
    pub fn len(&self) -> usize {
        match self {
            Stored::Text(t) => t.len(),
            Stored::Gzip(b) => b.len(),
        }
    }

    /// Whether the stored form is empty (never for a document).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ConfigMap key it is stored under.
    pub fn key(&self) -> &'static str {
        match self {
            Stored::Text(_) => CONFIG_KEY,
            Stored::Gzip(_) => CONFIG_GZ_KEY,
        }
    }
}

/// Why a document cannot be stored.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the gateway config is {json} bytes of compact JSON, {stored} bytes gzip-compressed: over the ceiling of {ceiling} bytes a ConfigMap can hold (split the routes across namespaces)"
)]
pub struct TooLarge {
    /// Compact JSON bytes.
    pub json: usize,
    /// Compressed bytes.
    pub stored: usize,
    /// [`MAX_STORED`].
    pub ceiling: usize,
}

/// Gzip of `bytes` (level 6: the default trade-off).
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::with_capacity(bytes.len() / 8), Compression::default());
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(bytes);
    enc.finish().unwrap_or_default()
}

/// The stored form of compact JSON `json`, or why it does not fit.
pub fn encode(json: String) -> Result<Stored, TooLarge> {
    if json.len() <= COMPRESS_ABOVE {
        return Ok(Stored::Text(json));
    }
    let gz = gzip(json.as_bytes());
    if gz.len() > MAX_STORED {
        return Err(TooLarge { json: json.len(), stored: gz.len(), ceiling: MAX_STORED });
    }
    Ok(Stored::Gzip(gz))
}

/// Whether `bytes` start with the gzip magic.
pub fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x1f, 0x8b])
}

/// The JSON of a stored form: `bytes` as they are, or decompressed (bounded).
pub fn unwrap_json(bytes: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, ConfigError> {
    if !is_gzip(bytes) {
        return Ok(std::borrow::Cow::Borrowed(bytes));
    }
    let mut out = Vec::new();
    let limit = u64::try_from(MAX_DOCUMENT).unwrap_or(u64::MAX).saturating_add(1);
    GzDecoder::new(bytes)
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|e| ConfigError::Parse(format!("gzip-compressed document: {e}")))?;
    if out.len() > MAX_DOCUMENT {
        return Err(ConfigError::Parse(format!("decompressed document is over {MAX_DOCUMENT} bytes")));
    }
    Ok(std::borrow::Cow::Owned(out))
}

/// Parses and validates a document in either stored form.
pub fn decode(bytes: &[u8]) -> Result<GatewayConfig, ConfigError> {
    GatewayConfig::from_json(&unwrap_json(bytes)?)
}

/// Reads the config file at `path`; when it does not exist, its compressed sibling
/// (`config.json` → `config.json.gz`, as a mounted ConfigMap holds one or the other). Returns
/// the file read and its raw bytes.
pub fn read_config_file(path: &Path) -> std::io::Result<(PathBuf, Vec<u8>)> {
    match std::fs::read(path) {
        Ok(b) => Ok((path.to_path_buf(), b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut gz = path.as_os_str().to_owned();
            gz.push(".gz");
            let gz = PathBuf::from(gz);
            match std::fs::read(&gz) {
                Ok(b) => Ok((gz, b)),
                // Report the path asked for.
                Err(_) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(routes: usize) -> GatewayConfig {
        let mut d = GatewayConfig { version: 1, revision: String::new(), namespace: "n".into(), routes: vec![] };
        let template = crate::config::tests_support::route("r0");
        for i in 0..routes {
            let mut r = template.clone();
            r.name = format!("route-{i:05}");
            r.model = format!("alias-{i:05}");
            d.routes.push(r);
        }
        d.revision = d.compute_revision();
        d
    }

    #[test]
    fn small_is_text_large_is_gzip_and_both_decode_to_the_same_revision() {
        let small = doc(1);
        let Ok(Stored::Text(t)) = encode(small.to_json()) else { panic!("a small document is text") };
        assert!(!t.contains('\n'), "compact");
        assert_eq!(decode(t.as_bytes()).unwrap(), small);

        let big = doc(2_000);
        let json = big.to_json();
        assert!(json.len() > COMPRESS_ABOVE, "{}", json.len());
        let Ok(Stored::Gzip(gz)) = encode(json.clone()) else { panic!("a large document is compressed") };
        assert!(gz.len() < json.len() / 5, "{} vs {}", gz.len(), json.len());
        assert_eq!(decode(&gz).unwrap().revision, big.revision);
        // Deterministic: the same document gives the same bytes (no rewrite without a change).
        assert_eq!(gzip(json.as_bytes()), gz);
    }

    #[test]
    fn too_large_names_sizes_and_ceiling() {
        // Incompressible content past the ceiling.
        let mut s = String::from("\"");
        let mut x: u64 = 1;
        while s.len() < 2 * MAX_STORED {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            s.push_str(&format!("{:016x}", x));
        }
        let err = encode(s).unwrap_err();
        assert_eq!(err.ceiling, MAX_STORED);
        assert!(err.stored > MAX_STORED);
        assert!(err.to_string().contains(&MAX_STORED.to_string()), "{err}");
    }

    #[test]
    fn corrupt_gzip_is_refused_not_panicking() {
        let gz = gzip(b"{\"version\": 1}");
        assert!(decode(&gz[..gz.len() / 2]).is_err());
        assert!(decode(&gz).is_err(), "not a full document");
    }

    #[test]
    fn reads_the_compressed_sibling() {
        let dir = std::env::temp_dir().join(format!(
            "tollgate-payload-{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let d = doc(3);
        std::fs::write(dir.join("config.json.gz"), gzip(d.to_json().as_bytes())).unwrap();
        let (read, bytes) = read_config_file(&dir.join("config.json")).unwrap();
        assert_eq!(read, dir.join("config.json.gz"));
        assert_eq!(decode(&bytes).unwrap(), d);
        std::fs::write(dir.join("config.json"), d.to_json()).unwrap();
        assert_eq!(read_config_file(&dir.join("config.json")).unwrap().0, dir.join("config.json"));
        let err = read_config_file(&dir.join("missing.json")).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
