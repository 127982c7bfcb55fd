//! The document's JSON, serialized on every core (`render` of 10,000 routes).
//!
//! [`GatewayConfig::for_each_part`] gives the compact or pretty JSON of a document as
//! consecutive parts whose concatenation is byte for byte what `serde_json::to_vec` (or `to_vec_pretty`)
//! of the whole document gives: the revision hash, the stored form and `render` all rely on
//! that (the tests below compare both ways on documents of 0, 1 and many routes). Rules:
//! - the frame (every field, `routes` empty) is serialized by serde and cut just after the `[`
//!   of its empty `routes`; a frame not ending as expected (cannot happen) falls back to one
//!   serialization of the whole document;
//! - routes are serialized in batches of [`BATCH_ROUTES`], each in contiguous runs, one per
//!   core, for 256 routes or more; a part is handed over before the next batch is serialized,
//!   so the whole text is never held (`render` writes it to stdout, the revision hashes it);
//! - pretty routes sit at depth 2: every line of a route after its first gains 4 spaces, which
//!   is exactly what nesting does, since a JSON string never holds a raw newline (escaped).

use serde::Serialize;

use super::{GatewayConfig, RouteConfig};
use crate::policy::common::parallel_runs;

impl GatewayConfig {
    /// Hands the JSON of the document with `revision` as its revision to `sink` in
    /// consecutive parts whose concatenation is byte for byte `serde_json::to_vec(doc)` (or
    /// `to_vec_pretty`); the first error of `sink` stops it. The frame (every field, `routes`
    /// empty) is serialized by serde and cut at its empty `[]`; the routes are serialized
    /// between, in batches of [`BATCH_ROUTES`], each batch on every core (contiguous runs, one
    /// part per run), so at most one batch's text is held at a time.
    pub fn for_each_part(
        &self,
        revision: &str,
        pretty: bool,
        sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
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
        // Serializing plain fields, vectors and enums cannot fail (an error is still passed on).
        let mut frame = frame.map_err(std::io::Error::other)?;
        let empty: &[u8] = if pretty { b"[]\n}" } else { b"[]}" };
        if self.routes.is_empty() || !frame.ends_with(empty) {
            if !self.routes.is_empty() {
                // Not the frame expected (cannot happen): one serialization of the whole.
                let whole = Frame { version: self.version, revision, namespace: &self.namespace, routes: &self.routes };
                frame = if pretty { serde_json::to_vec_pretty(&whole) } else { serde_json::to_vec(&whole) }
                    .map_err(std::io::Error::other)?;
            }
            return sink(&frame);
        }
        frame.truncate(frame.len() - empty.len() + 1);
        if pretty {
            frame.extend_from_slice(b"\n    ");
        }
        sink(&frame)?;
        let separator: &[u8] = if pretty { b",\n    " } else { b"," };
        for (b, batch) in self.routes.chunks(BATCH_ROUTES).enumerate() {
            let runs = parallel_runs(batch, |routes| {
                let mut out = Vec::new();
                for (i, r) in routes.iter().enumerate() {
                    if i > 0 {
                        out.extend_from_slice(separator);
                    }
                    write_route(&mut out, r, pretty);
                }
                out
            });
            for (i, run) in runs.iter().enumerate() {
                if b > 0 || i > 0 {
                    sink(separator)?;
                }
                sink(run)?;
            }
        }
        sink(if pretty { b"\n  ]\n}" } else { b"]}" })
    }
}

/// Routes serialized per batch by [`GatewayConfig::for_each_part`] (one run per core each).
pub const BATCH_ROUTES: usize = 1024;

/// Appends one route's JSON; pretty at depth 2 (see [`GatewayConfig::for_each_part`]).
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

    fn concat(d: &GatewayConfig, pretty: bool) -> Vec<u8> {
        let mut out = Vec::new();
        d.for_each_part(&d.revision, pretty, &mut |part| {
            out.extend_from_slice(part);
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn parts_are_one_serialization_of_the_whole() {
        for n in [0, 1, 2, 255, 256, 257, 1000, BATCH_ROUTES, 2 * BATCH_ROUTES + 3] {
            let d = doc(n);
            assert_eq!(concat(&d, false), serde_json::to_vec(&d).unwrap(), "{n} routes");
            assert_eq!(concat(&d, true), serde_json::to_vec_pretty(&d).unwrap(), "{n} routes");
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
        for n in [0, 3, 300, BATCH_ROUTES + 1] {
            let d = doc(n);
            let unrevised = GatewayConfig { revision: String::new(), ..d.clone() };
            let hash = hex::encode(Sha256::digest(serde_json::to_vec(&unrevised).unwrap()));
            assert_eq!(d.revision, format!("sha256:{}", &hash[..16]), "{n} routes");
            assert_eq!(GatewayConfig::from_json(d.to_json().as_bytes()), Ok(d));
        }
    }
}
