//! How a config document is stored: compact JSON, gzip-compressed past a threshold.
//!
//! Rules:
//! - In the cluster the document is compact JSON (no pretty-printing: whitespace was most of
//!   the bytes). Up to [`COMPRESS_ABOVE`] bytes it is written as text under ConfigMap `data`
//!   key [`super::CONFIG_KEY`]; above, gzip-compressed under `binaryData` key
//!   [`CONFIG_GZ_KEY`] (never both). The revision is always the hash of the uncompressed
//!   content, so the form does not change the revision.
//! - A document whose compressed form is still over [`MAX_STORED`] bytes (the API server
//!   refuses ConfigMaps over 1 MiB; some room is left for metadata) is split across several
//!   ConfigMaps by [`store`] ([`super::shard`]: an index and up to
//!   [`super::shard::MAX_SHARDS`] shards). Beyond that ceiling it is not written: the error
//!   says how big it is and what the ceiling is.
//! - Readers ([`decode`]) tell the two forms apart by the gzip magic bytes (JSON never starts
//!   with 0x1f), so a file named either way, or a ConfigMap key, reads the same. Decompression
//!   is bounded by [`MAX_DOCUMENT`] bytes (a corrupt or hostile stream cannot exhaust memory),
//!   into one buffer sized from the gzip trailer (a hint only, bounded too), not a doubling
//!   series of buffers the allocator would keep.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

use super::shard::{INDEX_KEY, MAX_SHARDS, ShardIndex, Sharded, assemble, parse_index, split};
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
    /// Split across ConfigMaps: the index under `data` [`super::shard::INDEX_KEY`] and the
    /// shards in their own ConfigMaps.
    Sharded(Sharded),
}

impl Stored {
    /// Size of the stored form in bytes.
    pub fn len(&self) -> usize {
        match self {
            Stored::Text(t) => t.len(),
            Stored::Gzip(b) => b.len(),
            Stored::Sharded(s) => s.len(),
        }
    }

    /// Whether the stored form is empty (never for a document).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// In words: which form, and how many ConfigMaps.
    pub fn describe(&self) -> String {
        match self {
            Stored::Text(_) => format!("one ConfigMap, data key {CONFIG_KEY}"),
            Stored::Gzip(_) => format!("one ConfigMap, binaryData key {CONFIG_GZ_KEY}"),
            Stored::Sharded(s) => format!("an index ({INDEX_KEY}) and {} shard ConfigMaps", s.shards.len()),
        }
    }

    /// The ConfigMap key it is stored under.
    pub fn key(&self) -> &'static str {
        match self {
            Stored::Text(_) => CONFIG_KEY,
            Stored::Gzip(_) => CONFIG_GZ_KEY,
            Stored::Sharded(_) => INDEX_KEY,
        }
    }
}

/// Why a document cannot be stored.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the gateway config is {json} bytes of compact JSON, {stored} bytes gzip-compressed: over the ceiling of {shards} ConfigMaps of {ceiling} bytes each (split the routes across namespaces)"
)]
pub struct TooLarge {
    /// Compact JSON bytes.
    pub json: usize,
    /// Compressed bytes.
    pub stored: usize,
    /// [`MAX_STORED`]: bytes per ConfigMap.
    pub ceiling: usize,
    /// Most ConfigMaps one document is split into ([`super::shard::MAX_SHARDS`]; 1 for
    /// [`encode`], which does not split).
    pub shards: usize,
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
        return Err(TooLarge { json: json.len(), stored: gz.len(), ceiling: MAX_STORED, shards: 1 });
    }
    Ok(Stored::Gzip(gz))
}

/// The stored form of `doc` as the controller writes it in ConfigMap `configmap`: one
/// ConfigMap when it fits ([`encode`]), else split into shards ([`super::shard::split`]), or
/// why it does not fit even then.
pub fn store(doc: &GatewayConfig, configmap: &str) -> Result<Stored, TooLarge> {
    match encode(doc.to_json()) {
        Err(too) => match split(doc, configmap, too.stored) {
            Ok(s) => Ok(Stored::Sharded(s)),
            Err(_) => Err(TooLarge { shards: MAX_SHARDS, ..too }),
        },
        ok => ok,
    }
}

/// Whether `bytes` start with the gzip magic.
pub fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x1f, 0x8b])
}

/// Capacity to decompress `gz` into: the size its trailer states (ISIZE, the uncompressed
/// length modulo 2^32), so the text is written into one allocation instead of a doubling
/// series of them (at fleet scale those copies were tens of megabytes the allocator kept).
/// The trailer is not trusted beyond a hint: at most [`MAX_DOCUMENT`] bytes and at most what
/// deflate's best ratio (1032:1) can give from this input, one byte more so that `read_to_end`
/// sees the end without growing.
fn decompressed_size_hint(gz: &[u8]) -> usize {
    let Some(trailer) = gz.len().checked_sub(4).and_then(|at| gz.get(at..)) else {
        return 0;
    };
    let stated = trailer.try_into().map(u32::from_le_bytes).map_or(0, |n| n as usize);
    stated.min(MAX_DOCUMENT).min(gz.len().saturating_mul(1032)).saturating_add(1)
}

/// The JSON of a stored form: `bytes` as they are, or decompressed (bounded).
pub fn unwrap_json(bytes: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, ConfigError> {
    if !is_gzip(bytes) {
        return Ok(std::borrow::Cow::Borrowed(bytes));
    }
    let mut out = Vec::with_capacity(decompressed_size_hint(bytes));
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

/// Writes a stored form into `dir` as a (projected) ConfigMap volume holds it: `config.json`,
/// `config.json.gz`, or the index `config.index.json` with its shard files beside it. Each
/// file is written whole then renamed into place, shards before the index, and the files of
/// the other forms are removed afterwards (the reader prefers `config.json`, then `.gz`).
pub fn write_volume(stored: &Stored, dir: &Path) -> std::io::Result<()> {
    let put = |name: &str, bytes: &[u8]| -> std::io::Result<()> {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, dir.join(name))
    };
    std::fs::create_dir_all(dir)?;
    match stored {
        Stored::Text(t) => put(CONFIG_KEY, t.as_bytes())?,
        Stored::Gzip(b) => put(CONFIG_GZ_KEY, b)?,
        Stored::Sharded(s) => {
            for shard in &s.shards {
                put(&shard.key, &shard.gz)?;
            }
            put(INDEX_KEY, s.index.as_bytes())?;
        }
    }
    for other in [CONFIG_KEY, CONFIG_GZ_KEY, INDEX_KEY] {
        if other != stored.key() {
            match std::fs::remove_file(dir.join(other)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
    }
    Ok(())
}

/// The file a config path stands for: `path` itself; when it does not exist, its compressed
/// sibling (`config.json` → `config.json.gz`, as a mounted ConfigMap holds one or the other);
/// when neither exists, the shard index [`INDEX_KEY`] in the same directory (a projected
/// volume of the index and its shards). `None`: none of them exists.
pub fn locate_config_file(path: &Path) -> Option<PathBuf> {
    if std::fs::metadata(path).is_ok() {
        return Some(path.to_path_buf());
    }
    let mut gz = path.as_os_str().to_owned();
    gz.push(".gz");
    let gz = PathBuf::from(gz);
    if std::fs::metadata(&gz).is_ok() {
        return Some(gz);
    }
    let index = path.parent().unwrap_or_else(|| Path::new(".")).join(INDEX_KEY);
    std::fs::metadata(&index).is_ok().then_some(index)
}

/// Whether `path` (as [`locate_config_file`] found it) is a shard index.
pub fn is_index_file(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n == INDEX_KEY)
}

/// The files of the shards an index names, beside the index `index_path`.
pub fn shard_files(index_path: &Path, index: &ShardIndex) -> Vec<PathBuf> {
    let dir = index_path.parent().unwrap_or_else(|| Path::new("."));
    index.shards.iter().map(|r| dir.join(&r.key)).collect()
}

/// Reads the config file at `path` ([`locate_config_file`]). Returns the file read and its
/// raw bytes; a missing file is reported under the path asked for.
pub fn read_config_file(path: &Path) -> std::io::Result<(PathBuf, Vec<u8>)> {
    match locate_config_file(path) {
        Some(p) => std::fs::read(&p).map(|b| (p, b)),
        None => Err(std::io::Error::new(std::io::ErrorKind::NotFound, format!("{} not found", path.display()))),
    }
}

/// The document of a config file read by [`read_config_file`]: decoded in place, or, for a
/// shard index, assembled from the shard files beside it (each read up to `max_shard` bytes).
pub fn decode_file(read: &Path, bytes: &[u8], max_shard: u64) -> Result<GatewayConfig, ConfigError> {
    if !is_index_file(read) {
        return decode(bytes);
    }
    let index = parse_index(bytes)?;
    let files = shard_files(read, &index);
    let mut files = files.iter();
    assemble(&index, |_| {
        let f = files.next()?;
        let meta = std::fs::metadata(f).ok()?;
        if meta.len() > max_shard {
            // Refused as stale (its hash cannot match): never read.
            return Some(Vec::new());
        }
        std::fs::read(f).ok()
    })
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
    fn revision_hashes_the_compact_document_with_an_empty_revision() {
        use sha2::{Digest, Sha256};
        let d = doc(3);
        let mut unhashed = d.clone();
        unhashed.revision.clear();
        let digest = Sha256::digest(serde_json::to_vec(&unhashed).unwrap());
        assert_eq!(d.compute_revision(), format!("sha256:{}", &hex::encode(digest)[..16]));
    }

    #[test]
    fn the_size_hint_is_the_trailer_bounded() {
        let json = doc(300).to_json();
        let gz = gzip(json.as_bytes());
        assert_eq!(decompressed_size_hint(&gz), json.len() + 1);
        let std::borrow::Cow::Owned(text) = unwrap_json(&gz).unwrap() else { panic!("decompressed") };
        assert_eq!(text, json.as_bytes());
        assert!(text.capacity() <= json.len() + 64, "one allocation: {} for {}", text.capacity(), json.len());
        // A trailer claiming 4 GiB from a few bytes is bounded by the deflate ratio.
        let mut lying = gz[..gz.len() - 4].to_vec();
        lying.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decompressed_size_hint(&lying), lying.len() * 1032 + 1);
        assert!(decode(&lying).is_err(), "the content no longer matches its trailer");
        assert_eq!(decompressed_size_hint(&[0x1f, 0x8b]), 0);
    }

    #[test]
    fn corrupt_gzip_is_refused_not_panicking() {
        let gz = gzip(b"{\"version\": 1}");
        assert!(decode(&gz[..gz.len() / 2]).is_err());
        assert!(decode(&gz).is_err(), "not a full document");
    }

    #[test]
    fn reads_the_compressed_sibling() {
        let dir = crate::test_dir("payload");
        let d = doc(3);
        std::fs::write(dir.join("config.json.gz"), gzip(d.to_json().as_bytes())).unwrap();
        let (read, bytes) = read_config_file(&dir.join("config.json")).unwrap();
        assert_eq!(read, dir.join("config.json.gz"));
        assert_eq!(decode(&bytes).unwrap(), d);
        std::fs::write(dir.join("config.json"), d.to_json()).unwrap();
        assert_eq!(read_config_file(&dir.join("config.json")).unwrap().0, dir.join("config.json"));
        std::fs::remove_file(dir.join("config.json.gz")).unwrap();
        std::fs::remove_file(dir.join("config.json")).unwrap();
        let err = read_config_file(&dir.join("config.json")).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
