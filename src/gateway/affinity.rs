//! Cache affinity: which backend a request's affinity key sticks to. Pure: no clock,
//! no state, no I/O, so every gateway replica computes the same answer for the same config.
//!
//! Rules:
//! - The key comes from the first source the route allows that the request carries
//!   ([`AffinityKeySource`], in the route's order): the affinity header, `prompt_cache_key`,
//!   `user` (Anthropic: `metadata.user_id`), or a hash of the first `prefixBytes` bytes of the
//!   conversation's opening ([`opening_texts`]: system prompt + messages up to the first user
//!   message), which every later turn repeats. Empty values count as absent. Key material is hashed with SHA-256 under a
//!   per-source tag, so the same text from two sources gives two keys; the key itself never
//!   leaves this module (never logged).
//! - The backend is chosen by weighted rendezvous (highest random weight) hashing: each
//!   candidate row scores `weight / -ln(u)`, `u` in (0, 1) a hash of (key, backend name); the
//!   highest score wins, ties by the lower backend id. A key's winner changes only when its
//!   winner leaves the candidate set or weights change; removing backend B moves exactly the
//!   keys that were on B, and a new key lands on a row with probability weight / total weight.
//! - Backends are identified by a hash of their name, not their position, so reordering the
//!   route's list does not move keys.
//! - The candidate set (serving rows of the best tier with weight > 0) is decided elsewhere
//!   ([`super::select`]): affinity never brings back a backend the policy took out.
//! - Rendezvous uses `f64` for the score (a choice, not money); the same binary computes the
//!   same bits on every replica.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::{AffinityKeySource, AffinityPolicy};

/// A stable 64-bit hash of bytes under a tag.
fn hash64(tag: &[u8], bytes: &[u8]) -> u64 {
    let mut h = Sha256::new();
    h.update((tag.len() as u64).to_le_bytes());
    h.update(tag);
    h.update(bytes);
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_le_bytes(b)
}

/// The id rendezvous uses for a backend: a hash of its name.
pub(crate) fn backend_id(name: &str) -> u64 {
    hash64(b"tollgate-backend", name.as_bytes())
}

/// SplitMix64 finaliser: a bijective 64-bit mixer.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The rendezvous score of one backend for one key (higher wins); 0 for weight 0.
pub(crate) fn score(key: u64, id: u64, weight: u32) -> f64 {
    if weight == 0 {
        return 0.0;
    }
    let h = mix(key ^ mix(id));
    // 53 random bits into the open interval (0, 1).
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    f64::from(weight) / -u.ln()
}

/// The winner among `rows` (`(index, backend id, weight)`): the index with the highest score.
pub(crate) fn choose(key: u64, rows: impl IntoIterator<Item = (usize, u64, u32)>) -> Option<usize> {
    let mut best: Option<(f64, u64, usize)> = None;
    for (i, id, w) in rows {
        if w == 0 {
            continue;
        }
        let s = score(key, id, w);
        let better = match best {
            None => true,
            Some((bs, bid, _)) => s > bs || (s == bs && id < bid),
        };
        if better {
            best = Some((s, id, i));
        }
    }
    best.map(|(_, _, i)| i)
}

/// Where the key material of one request is read from (each surface fills what it has).
#[derive(Default)]
pub(crate) struct KeyParts<'a> {
    /// The affinity header's value.
    pub(crate) header: Option<&'a str>,
    /// `prompt_cache_key`.
    pub(crate) prompt_cache_key: Option<String>,
    /// `user` / `metadata.user_id`.
    pub(crate) user: Option<String>,
}

/// The request's affinity key under `policy`, if any source is present. `opening` gives the
/// conversation's opening ([`opening_texts`]); it is called only when the `Prefix` source is
/// reached.
pub(crate) fn key(policy: &AffinityPolicy, parts: &KeyParts<'_>, opening: impl FnOnce() -> Vec<String>) -> Option<u64> {
    for source in &policy.keys {
        let found = match source {
            AffinityKeySource::Header => parts.header.filter(|s| !s.is_empty()).map(|s| (b"h".as_slice(), s)),
            AffinityKeySource::PromptCacheKey => {
                parts.prompt_cache_key.as_deref().filter(|s| !s.is_empty()).map(|s| (b"k".as_slice(), s))
            }
            AffinityKeySource::User => parts.user.as_deref().filter(|s| !s.is_empty()).map(|s| (b"u".as_slice(), s)),
            AffinityKeySource::Prefix => {
                let texts = opening();
                return prefix_hash(texts.iter().map(String::as_str), policy.prefix_bytes as usize);
            }
        };
        if let Some((tag, value)) = found {
            return Some(hash64(tag, value.as_bytes()));
        }
    }
    None
}

/// A hash of the first `n` bytes of the concatenated parts; `None` when they are empty.
pub(crate) fn prefix_hash<'a>(parts: impl IntoIterator<Item = &'a str>, n: usize) -> Option<u64> {
    let mut buf = Vec::with_capacity(n);
    for p in parts {
        if buf.len() >= n {
            break;
        }
        let take = (n - buf.len()).min(p.len());
        buf.extend_from_slice(&p.as_bytes()[..take]);
    }
    if buf.is_empty() {
        return None;
    }
    Some(hash64(b"p", &buf))
}

/// The body fields that make up the prompt, in the order they are read.
pub(crate) const PROMPT_FIELDS: [&str; 6] = ["system", "instructions", "messages", "input", "prompt", "contents"];

/// A conversation's opening in a parsed JSON body, as JSON text: `system` / `instructions` as
/// they are, and of a list (`messages`, `input`, `contents`) its items up to and including the
/// first with `role: "user"` (all of them when none has it); a string prompt whole. Later
/// turns of the same conversation repeat the opening, so they share the `Prefix` key.
pub(crate) fn opening_texts(body: &Value) -> Vec<String> {
    PROMPT_FIELDS
        .iter()
        .filter_map(|k| body.get(*k))
        .filter(|v| !v.is_null())
        .map(|v| match v {
            Value::Array(items) => {
                let end = items
                    .iter()
                    .position(|m| m.get("role").and_then(Value::as_str) == Some("user"))
                    .map_or(items.len(), |p| p + 1);
                Value::Array(items[..end].to_vec()).to_string()
            }
            other => other.to_string(),
        })
        .collect()
}

#[cfg(test)]
#[path = "affinity_tests.rs"]
mod tests;
