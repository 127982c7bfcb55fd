//! A document too large for one ConfigMap, split across several: an index naming
//! the shards with the revision, and the shards, each a slice of the routes.
//!
//! Rules:
//! - The split form is used only when the document does not fit one ConfigMap even
//!   gzip-compressed ([`super::payload::store`]); smaller documents keep the single form, so
//!   their bytes and revisions do not change.
//! - Shard `i` (1-based) is ConfigMap `<name>-shard-<i>`, holding one `binaryData` key
//!   `shard-<i>.json.gz`: gzip of compact JSON `{revision, shard, routes}`. Keys differ across
//!   shards so that one projected volume can hold the index and every shard side by side.
//!   Routes keep the document's order (sorted by name) and are cut into contiguous slices of
//!   about equal compact-JSON size; a slice whose compressed form is still over
//!   [`super::payload::MAX_STORED`] makes the split try one more shard. At most [`MAX_SHARDS`]
//!   shards: beyond, the document is refused with the ceiling ([`super::TooLarge`]).
//! - The index is ConfigMap `<name>` itself, `data` key [`INDEX_KEY`]: compact JSON
//!   `{version, revision, namespace, shards: [{configMap, key, sha256, routes}]}`, where `sha256`
//!   is the hash of the shard's stored (compressed) bytes and `revision` the hash of the whole
//!   document, exactly as in the single form (the form never changes the revision).
//! - Writers write every shard first and the index last. Readers ([`assemble`]) start from the
//!   index and refuse, naming the shard, when one is missing, stale (its bytes do not hash to
//!   what the index says, or it names another revision or position), corrupt (does not
//!   decompress or parse), or has a different number of routes than the index says; the
//!   assembled document is then validated whole ([`GatewayConfig::validate`], which recomputes
//!   the revision). A reader that refuses keeps its last good config: a half-updated set of
//!   ConfigMaps is never served.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::payload::{MAX_STORED, gzip, unwrap_json};
use super::{CONFIG_VERSION, ConfigError, GatewayConfig, RouteConfig};

/// Key of the index in the ConfigMap `<name>` (`data`).
pub const INDEX_KEY: &str = "config.index.json";
/// Most shards a document is split into: the ceiling is about this many times
/// [`MAX_STORED`] bytes of compressed config.
pub const MAX_SHARDS: usize = 8;
/// Compressed bytes aimed at per shard when choosing how many shards to cut (below
/// [`MAX_STORED`], so slices of uneven compressibility rarely need another try).
const TARGET_SHARD: usize = 800_000;

/// Name of shard `i` (1-based) of ConfigMap `name`.
pub fn shard_configmap(name: &str, i: usize) -> String {
    format!("{name}-shard-{i}")
}

/// The key of shard `i` (1-based) inside its ConfigMap's `binaryData`.
pub fn shard_key(i: usize) -> String {
    format!("shard-{i}.json.gz")
}

/// The index document.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShardIndex {
    /// Schema version of the document ([`CONFIG_VERSION`]).
    pub version: u32,
    /// Revision of the whole document.
    pub revision: String,
    /// Namespace whose routes these are.
    pub namespace: String,
    /// The shards, in route order.
    pub shards: Vec<ShardRef>,
}

/// One shard as the index names it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShardRef {
    /// ConfigMap holding it.
    pub config_map: String,
    /// Its `binaryData` key (and file name in a projected volume).
    pub key: String,
    /// Hex SHA-256 of the stored (compressed) bytes.
    pub sha256: String,
    /// Number of routes in it.
    pub routes: usize,
}

/// The content of one shard (before compression).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct ShardDoc {
    /// Revision of the whole document.
    revision: String,
    /// 1-based position.
    shard: usize,
    /// Its slice of the routes.
    routes: Vec<RouteConfig>,
}

/// One shard ready to be written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardBlob {
    /// ConfigMap name.
    pub config_map: String,
    /// `binaryData` key.
    pub key: String,
    /// Gzip-compressed compact JSON.
    pub gz: Vec<u8>,
}

/// A split document: the index (compact JSON) and its shards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sharded {
    /// Compact JSON of the [`ShardIndex`].
    pub index: String,
    /// The shards, in order.
    pub shards: Vec<ShardBlob>,
}

impl Sharded {
    /// Total stored bytes (index and shards).
    pub fn len(&self) -> usize {
        self.index.len() + self.shards.iter().map(|s| s.gz.len()).sum::<usize>()
    }

    /// Never empty (an index is always written).
    pub fn is_empty(&self) -> bool {
        false
    }
}

fn hex_sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Splits `doc` into shards of ConfigMap `name`, each under [`MAX_STORED`] compressed bytes.
/// `compressed` is the size of the whole document compressed (to choose the first number of
/// shards). `Err(n)`: even [`MAX_SHARDS`] shards do not fit (`n`: the compressed size of the
/// largest shard at that count).
pub fn split(doc: &GatewayConfig, name: &str, compressed: usize) -> Result<Sharded, usize> {
    // Compact JSON size of each route, to cut slices of equal size.
    let sizes: Vec<usize> = doc.routes.iter().map(|r| serde_json::to_vec(r).map(|v| v.len()).unwrap_or(0)).collect();
    let total: usize = sizes.iter().sum();
    let mut count = compressed.div_ceil(TARGET_SHARD).clamp(2, MAX_SHARDS);
    loop {
        let mut shards = Vec::with_capacity(count);
        let mut largest = 0;
        let mut start = 0;
        let mut acc = 0;
        for i in 1..=count {
            // End of slice i: where the running size passes i/count of the total.
            let goal = total.saturating_mul(i) / count;
            let mut end = start;
            while end < doc.routes.len() && (acc < goal || i == count) {
                acc += sizes[end];
                end += 1;
            }
            let body = ShardDoc { revision: doc.revision.clone(), shard: i, routes: doc.routes[start..end].to_vec() };
            // Serializing plain fields cannot fail.
            let gz = gzip(serde_json::to_string(&body).unwrap_or_default().as_bytes());
            largest = largest.max(gz.len());
            shards.push((end - start, ShardBlob { config_map: shard_configmap(name, i), key: shard_key(i), gz }));
            start = end;
        }
        if largest <= MAX_STORED {
            let index = ShardIndex {
                version: CONFIG_VERSION,
                revision: doc.revision.clone(),
                namespace: doc.namespace.clone(),
                shards: shards
                    .iter()
                    .map(|(n, s)| ShardRef {
                        config_map: s.config_map.clone(),
                        key: s.key.clone(),
                        sha256: hex_sha256(&s.gz),
                        routes: *n,
                    })
                    .collect(),
            };
            return Ok(Sharded {
                index: serde_json::to_string(&index).unwrap_or_default(),
                shards: shards.into_iter().map(|(_, s)| s).collect(),
            });
        }
        if count >= MAX_SHARDS {
            return Err(largest);
        }
        count += 1;
    }
}

/// Parses an index document.
pub fn parse_index(bytes: &[u8]) -> Result<ShardIndex, ConfigError> {
    let index: ShardIndex = serde_json::from_slice(bytes).map_err(|e| {
        super::version_error(bytes).unwrap_or_else(|| ConfigError::Parse(format!("shard index {INDEX_KEY}: {e}")))
    })?;
    if index.version != CONFIG_VERSION {
        return Err(ConfigError::Version { found: index.version });
    }
    if index.shards.is_empty() || index.shards.len() > MAX_SHARDS {
        return Err(ConfigError::Shard {
            shard: INDEX_KEY.into(),
            message: format!("names {} shards (expected 1 to {MAX_SHARDS})", index.shards.len()),
        });
    }
    Ok(index)
}

/// Assembles the document an index names. `fetch` returns the stored bytes of a shard, or
/// `None` when it is missing. Every refusal names the shard (see the module rules).
pub fn assemble(
    index: &ShardIndex,
    mut fetch: impl FnMut(&ShardRef) -> Option<Vec<u8>>,
) -> Result<GatewayConfig, ConfigError> {
    let expected: usize = index.shards.iter().map(|s| s.routes).sum();
    let mut routes = Vec::with_capacity(expected);
    for (i, r) in index.shards.iter().enumerate() {
        let refuse = |message: String| ConfigError::Shard { shard: format!("{}/{}", r.config_map, r.key), message };
        let Some(bytes) = fetch(r) else {
            return Err(refuse(format!("missing (revision {})", index.revision)));
        };
        let found = hex_sha256(&bytes);
        if found != r.sha256 {
            return Err(refuse(format!(
                "stale: its bytes hash to {}, the index of revision {} names {}",
                &found[..16.min(found.len())],
                index.revision,
                &r.sha256[..16.min(r.sha256.len())]
            )));
        }
        let json = unwrap_json(&bytes).map_err(|e| refuse(format!("corrupt: {e}")))?;
        let doc: ShardDoc = serde_json::from_slice(&json).map_err(|e| refuse(format!("corrupt: {e}")))?;
        if doc.revision != index.revision || doc.shard != i + 1 {
            return Err(refuse(format!(
                "stale: shard {} of revision {}, the index wants shard {} of revision {}",
                doc.shard,
                doc.revision,
                i + 1,
                index.revision
            )));
        }
        if doc.routes.len() != r.routes {
            return Err(refuse(format!("holds {} routes, the index says {}", doc.routes.len(), r.routes)));
        }
        routes.extend(doc.routes);
    }
    let doc = GatewayConfig {
        version: index.version,
        revision: index.revision.clone(),
        namespace: index.namespace.clone(),
        routes,
    };
    doc.validate()?;
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// A document of `n` routes whose names and upstream models do not repeat (compresses
    /// like a real fleet, not like copies).
    fn doc(n: usize) -> GatewayConfig {
        let template = crate::config::tests_support::route("r0");
        let mut d = GatewayConfig { version: 1, revision: String::new(), namespace: "n".into(), routes: vec![] };
        for i in 0..n {
            let mut r = template.clone();
            r.name = format!("route-{i:05}-{:016x}", (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            r.model = format!("alias-{i:05}-{:016x}", (i as u64).wrapping_mul(0xc2b2_ae3d_27d4_eb4f));
            for (b, backend) in r.backends.iter_mut().enumerate() {
                // 256 pseudo-random hex digits (xorshift): about 128 incompressible bytes.
                let mut x = (i as u64 * 8 + b as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                let noise: String = (0..16)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        format!("{x:016x}")
                    })
                    .collect();
                backend.model = format!("model-{b}-{noise}");
            }
            d.routes.push(r);
        }
        d.revision = d.compute_revision();
        d
    }

    fn files(s: &Sharded) -> BTreeMap<String, Vec<u8>> {
        s.shards.iter().map(|b| (b.key.clone(), b.gz.clone())).collect()
    }

    fn assemble_files(s: &Sharded, files: &BTreeMap<String, Vec<u8>>) -> Result<GatewayConfig, ConfigError> {
        let index = parse_index(s.index.as_bytes())?;
        assemble(&index, |r| files.get(&r.key).cloned())
    }

    #[test]
    fn split_then_assemble_gives_back_the_document() {
        let d = doc(600);
        let compressed = gzip(d.to_json().as_bytes()).len();
        // Force several shards whatever the size: a small target through `compressed`.
        let s = split(&d, "tollgate-gateway", compressed.max(3 * TARGET_SHARD)).unwrap();
        assert_eq!(s.shards.len(), 3);
        assert_eq!(
            s.shards.iter().map(|b| b.config_map.as_str()).collect::<Vec<_>>(),
            ["tollgate-gateway-shard-1", "tollgate-gateway-shard-2", "tollgate-gateway-shard-3"]
        );
        let index = parse_index(s.index.as_bytes()).unwrap();
        assert_eq!(index.revision, d.revision);
        assert_eq!(index.shards.iter().map(|r| r.routes).sum::<usize>(), 600);
        // About equal slices, none empty.
        assert!(index.shards.iter().all(|r| (150..=250).contains(&r.routes)), "{:?}", index.shards);
        assert_eq!(assemble_files(&s, &files(&s)).unwrap(), d);
        // Deterministic: the same document gives the same bytes.
        assert_eq!(split(&d, "tollgate-gateway", compressed.max(3 * TARGET_SHARD)).unwrap(), s);
    }

    #[test]
    fn a_large_fleet_splits_under_the_limit_and_beyond_the_ceiling_is_refused() {
        // 2,000 routes of distinct models: over one ConfigMap even compressed.
        let d = doc(2_000);
        let json = d.to_json();
        let gz = gzip(json.as_bytes()).len();
        assert!(gz > MAX_STORED, "the test document must not fit one ConfigMap ({gz} bytes)");
        let s = split(&d, "cm", gz).unwrap();
        assert!(s.shards.len() >= 2);
        assert!(s.shards.iter().all(|b| b.gz.len() <= MAX_STORED));
        assert_eq!(assemble_files(&s, &files(&s)).unwrap().revision, d.revision);
        // Pretend the compressed size is past the ceiling: the split needs more than MAX_SHARDS.
        let huge = doc(60);
        let template = huge.routes[0].clone();
        let mut big = huge.clone();
        // Incompressible upstream model names make each route large.
        let mut x: u64 = 7;
        big.routes = (0..MAX_SHARDS * 2)
            .map(|i| {
                let mut r = template.clone();
                r.name = format!("r{i}");
                r.model = format!("a{i}");
                let mut s = String::new();
                while s.len() < MAX_STORED {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    s.push_str(&format!("{x:016x}"));
                }
                r.backends[0].model = s;
                r
            })
            .collect();
        big.revision = big.compute_revision();
        let largest = split(&big, "cm", MAX_SHARDS * MAX_STORED * 2).unwrap_err();
        assert!(largest > MAX_STORED);
    }

    #[test]
    fn a_half_updated_set_is_refused_naming_the_shard() {
        let old = doc(300);
        let mut new = old.clone();
        new.routes[0].backends[0].weight = 99;
        new.revision = new.compute_revision();
        let forced = 2 * TARGET_SHARD;
        let (s_old, s_new) = (split(&old, "cm", forced).unwrap(), split(&new, "cm", forced).unwrap());
        // Only route 0 changed, yet shard 2 differs too: it names the new revision.
        assert_ne!(s_old.shards[1].gz, s_new.shards[1].gz);

        // New shards written, old index still in place (the writer writes the index last):
        // the old index refuses the new shard 1 as stale.
        let err = assemble_files(&s_old, &files(&s_new)).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Shard { shard, message } if shard == "cm-shard-1/shard-1.json.gz" && message.starts_with("stale")),
            "{err}"
        );
        // New index, shard 2 still old: refused.
        let mut mixed = files(&s_new);
        mixed.insert(shard_key(2), s_old.shards[1].gz.clone());
        let err = assemble_files(&s_new, &mixed).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Shard { shard, message } if shard.starts_with("cm-shard-2") && message.starts_with("stale")),
            "{err}"
        );
        // A shard missing.
        let mut missing = files(&s_new);
        missing.remove(&shard_key(2));
        let err = assemble_files(&s_new, &missing).unwrap_err();
        assert!(err.to_string().contains("cm-shard-2") && err.to_string().contains("missing"), "{err}");
        // A corrupt shard whose hash the index matches (an index written for bad bytes).
        let mut index = parse_index(s_new.index.as_bytes()).unwrap();
        let garbage = b"\x1f\x8b not gzip".to_vec();
        index.shards[0].sha256 = hex_sha256(&garbage);
        let mut corrupt = files(&s_new);
        corrupt.insert(shard_key(1), garbage);
        let err = assemble(&index, |r| corrupt.get(&r.key).cloned()).unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
        // Shards swapped between positions (hashes fixed up): refused for position.
        let mut index = parse_index(s_new.index.as_bytes()).unwrap();
        index.shards.swap(0, 1);
        let err = assemble(&index, |r| files(&s_new).get(&r.key).cloned()).unwrap_err();
        assert!(err.to_string().contains("stale: shard 2"), "{err}");
        // Fully updated: the new document.
        assert_eq!(assemble_files(&s_new, &files(&s_new)).unwrap(), new);
    }

    #[test]
    fn bad_indexes_are_refused() {
        assert!(parse_index(b"{").is_err());
        let empty = ShardIndex { version: 1, revision: "sha256:x".into(), namespace: "n".into(), shards: vec![] };
        assert!(parse_index(serde_json::to_string(&empty).unwrap().as_bytes()).is_err());
        let future = ShardIndex { version: 2, ..empty };
        assert!(matches!(
            parse_index(serde_json::to_string(&future).unwrap().as_bytes()),
            Err(ConfigError::Version { found: 2 })
        ));
    }

    #[test]
    fn store_picks_the_form_and_a_projected_volume_of_the_split_form_reads_back() {
        use crate::config::payload::{Stored, decode_file, read_config_file, store};
        assert!(matches!(store(&doc(3), "cm"), Ok(Stored::Text(_))));
        let big = doc(2_000);
        let Ok(Stored::Sharded(s)) = store(&big, "cm") else { panic!("2,000 distinct routes are split") };
        // As a projected volume of ConfigMap `cm` and its shards holds them.
        let dir = crate::test_dir("shard");
        std::fs::write(dir.join(INDEX_KEY), &s.index).unwrap();
        for b in &s.shards {
            std::fs::write(dir.join(&b.key), &b.gz).unwrap();
        }
        let (read, bytes) = read_config_file(&dir.join("config.json")).unwrap();
        assert_eq!(read, dir.join(INDEX_KEY));
        assert_eq!(decode_file(&read, &bytes, u64::MAX).unwrap(), big);
        // A shard file over the size limit is not read, and refused.
        assert!(decode_file(&read, &bytes, 10).unwrap_err().to_string().contains("stale"));
        std::fs::remove_file(dir.join(shard_key(2))).unwrap();
        let err = decode_file(&read, &bytes, u64::MAX).unwrap_err();
        assert!(err.to_string().contains("cm-shard-2") && err.to_string().contains("missing"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
