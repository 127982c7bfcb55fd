//! The document's JSON, serialized on every core (issue 12: `render` of 10,000 routes).
//!
//! [`GatewayConfig::json_parts`] gives the compact or pretty JSON of a document as consecutive
//! parts whose concatenation is byte for byte what `serde_json::to_vec` (or `to_vec_pretty`)
//! of the whole document gives: the revision hash, the stored form and `render` all rely on
//! that (the tests below compare both ways on documents of 0, 1 and many routes). Rules:
//! - the frame (every field, `routes` empty) is serialized by serde and cut just after the `[`
//!   of its empty `routes`; a frame not ending as expected (cannot happen) falls back to one
//!   serialization of the whole document;
//! - routes are serialized in contiguous runs, one per core, for 256 routes or more;
//! - pretty routes sit at depth 2: every line of a route after its first gains 4 spaces, which
//!   is exactly what nesting does, since a JSON string never holds a raw newline (escaped).

use serde::Serialize;

use super::{GatewayConfig, RouteConfig};
use crate::policy::common::parallel_runs;

impl GatewayConfig {
    /// The JSON of the document with `revision` as its revision, in consecutive parts whose
    /// concatenation is byte for byte `serde_json::to_vec(doc)` (or `to_vec_pretty`): the frame
    /// (every field, `routes` empty) is serialized by serde and cut at its empty `[]`, and the
    /// routes are serialized between, on every core for a large document (contiguous runs of
    /// routes, one part per run). Pretty routes sit at depth 2: each line after a route's first
    /// is indented by 4 more spaces, which is exactly what nesting does (a JSON string never
    /// holds a raw newline: serde escapes it).
    pub fn json_parts(&self, revision: &str, pretty: bool) -> Vec<JsonPart> {
        /// The document's fields, in its order, borrowed.
        #[derive(Serialize)]
        struct Frame<'a> {
            version: u32,
            revision: &'a str,
            namespace: &'a str,
            routes: &'a [RouteConfig],
        }
        let frame = Frame { version: self.version, revision, namespace: &self.namespace, routes: &[] };
        let frame = if pretty { serde_json::to_vec_pretty(&frame) } else { serde_json::to_vec(&frame) };
        // Serializing plain fields, vectors and enums cannot fail.
        let mut frame = frame.unwrap_or_default();
        let empty: &[u8] = if pretty { b"[]\n}" } else { b"[]}" };
        if self.routes.is_empty() || !frame.ends_with(empty) {
            if !self.routes.is_empty() {
                // Not the frame expected (cannot happen): one serialization of the whole.
                frame =
                    if pretty { serde_json::to_vec_pretty(self) } else { serde_json::to_vec(self) }.unwrap_or_default();
            }
            return vec![JsonPart::Owned(frame)];
        }
        let tail: &'static [u8] = if pretty { b"\n  ]\n}" } else { b"]}" };
        frame.truncate(frame.len() - empty.len() + 1);
        if pretty {
            frame.extend_from_slice(b"\n    ");
        }
        let separator: &'static [u8] = if pretty { b",\n    " } else { b"," };
        let runs = parallel_runs(&self.routes, |routes| {
            let mut out = Vec::new();
            for (i, r) in routes.iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(separator);
                }
                write_route(&mut out, r, pretty);
            }
            out
        });
        let mut parts = Vec::with_capacity(runs.len() * 2 + 1);
        parts.push(JsonPart::Owned(frame));
        for (i, run) in runs.into_iter().enumerate() {
            if i > 0 {
                parts.push(JsonPart::Static(separator));
            }
            parts.push(JsonPart::Owned(run));
        }
        parts.push(JsonPart::Static(tail));
        parts
    }
}

/// One part of a document's JSON ([`GatewayConfig::json_parts`]).
#[derive(Debug)]
pub enum JsonPart {
    /// Serialized text.
    Owned(Vec<u8>),
    /// Punctuation between parts.
    Static(&'static [u8]),
}

impl AsRef<[u8]> for JsonPart {
    fn as_ref(&self) -> &[u8] {
        match self {
            JsonPart::Owned(v) => v,
            JsonPart::Static(s) => s,
        }
    }
}

/// Appends one route's JSON; pretty at depth 2 (see [`GatewayConfig::json_parts`]).
fn write_route(out: &mut Vec<u8>, r: &RouteConfig, pretty: bool) {
    // Serializing plain fields, vectors and enums into a vector cannot fail.
    if !pretty {
        let _ = serde_json::to_writer(&mut *out, r);
        return;
    }
    let start = out.len();
    let _ = serde_json::to_writer_pretty(&mut *out, r);
    let newlines = memchr::memchr_iter(b'\n', &out[start..]).count();
    if newlines == 0 {
        return;
    }
    // Indent in place, from the end: each newline gains 4 spaces after it.
    let old_len = out.len();
    out.resize(old_len + 4 * newlines, b' ');
    let mut read = old_len;
    let mut write = out.len();
    while read > start {
        read -= 1;
        let b = out[read];
        if b == b'\n' {
            write -= 4;
            out[write..write + 4].copy_from_slice(b"    ");
        }
        write -= 1;
        out[write] = b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests_support::route;

    fn doc(n: usize) -> GatewayConfig {
        let mut routes: Vec<RouteConfig> = (0..n).map(|i| route(&format!("r{i:04}"))).collect();
        if let Some(r) = routes.get_mut(1) {
            // Strings that need escaping, and a route with optional fields.
            r.model = "a \"quoted\"\nline\u{e9}".into();
            r.max_input_tokens = Some(7);
        }
        let mut d = GatewayConfig { version: 1, revision: String::new(), namespace: "n\"s".into(), routes };
        d.revision = d.compute_revision();
        d
    }

    fn concat(parts: &[JsonPart]) -> Vec<u8> {
        parts.iter().flat_map(|p| p.as_ref().iter().copied()).collect()
    }

    #[test]
    fn parts_are_one_serialization_of_the_whole() {
        for n in [0, 1, 2, 255, 256, 257, 1000] {
            let d = doc(n);
            assert_eq!(concat(&d.json_parts(&d.revision, false)), serde_json::to_vec(&d).unwrap(), "{n} routes");
            assert_eq!(concat(&d.json_parts(&d.revision, true)), serde_json::to_vec_pretty(&d).unwrap(), "{n} routes");
            assert_eq!(d.to_json(), serde_json::to_string(&d).unwrap());
            assert_eq!(d.to_json_pretty(), format!("{}\n", serde_json::to_string_pretty(&d).unwrap()));
            let mut written = Vec::new();
            d.write_json_pretty(&mut written).unwrap();
            assert_eq!(written, d.to_json_pretty().into_bytes());
        }
    }

    #[test]
    fn the_revision_hashes_the_document_with_an_empty_revision() {
        use sha2::{Digest, Sha256};
        for n in [0, 3, 300] {
            let d = doc(n);
            let unrevised = GatewayConfig { revision: String::new(), ..d.clone() };
            let hash = hex::encode(Sha256::digest(serde_json::to_vec(&unrevised).unwrap()));
            assert_eq!(d.revision, format!("sha256:{}", &hash[..16]), "{n} routes");
            assert_eq!(GatewayConfig::from_json(d.to_json().as_bytes()), Ok(d));
        }
    }
}
