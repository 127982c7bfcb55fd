//! The client's request body: read once, rewritten per attempt.
//!
//! The body is kept as an ordered list of top-level keys with their raw JSON text, so everything
//! but `model` (and, when the gateway asks for stream usage, `stream_options`) reaches upstream
//! byte for byte, in the client's key order.
//!
//! The entries are found by the single-pass scanner of `pricing/scan.rs`; a body it does not
//! take on (an escaped top-level key, deep nesting, invalid JSON) is read by serde_json, whose
//! error message is the one the client gets. Both ways give the same entries (tested below).

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::errors::ApiError;
use crate::pricing::Text;
use crate::pricing::scan::{Fallback, Scan};

/// The API surface a request came in on (the metrics endpoint of its attempts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `POST /v1/chat/completions`
    ChatCompletions,
    /// `POST /v1/completions`
    Completions,
    /// `POST /v1/embeddings`
    Embeddings,
    /// `POST /v1/responses`
    Responses,
    /// `POST /v1/messages` (Anthropic clients; never an OpenAI-compatible upstream path: such a
    /// backend serves these requests on its chat-completions URL).
    Messages,
}

impl Endpoint {
    /// Path appended to an OpenAI-compatible backend's base URL.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions | Endpoint::Messages => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
            Endpoint::Responses => "/responses",
        }
    }

    /// The path clients call.
    pub fn client_path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
            Endpoint::Embeddings => "/v1/embeddings",
            Endpoint::Responses => "/v1/responses",
            Endpoint::Messages => "/v1/messages",
        }
    }

    /// The endpoint's label (`chat_completions`, `completions`, `embeddings`, `responses`,
    /// `messages`).
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat_completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Responses => "responses",
            Endpoint::Messages => "messages",
        }
    }

    /// Every endpoint, in [`index`](Self::index) order.
    pub const ALL: [Endpoint; 5] = [
        Endpoint::ChatCompletions,
        Endpoint::Completions,
        Endpoint::Embeddings,
        Endpoint::Responses,
        Endpoint::Messages,
    ];

    /// The endpoints with a URL of their own on an OpenAI-compatible backend, in
    /// [`index`](Self::index) order.
    pub const UPSTREAM: [Endpoint; 4] =
        [Endpoint::ChatCompletions, Endpoint::Completions, Endpoint::Embeddings, Endpoint::Responses];

    /// Position in [`ALL`](Self::ALL).
    pub fn index(self) -> usize {
        match self {
            Endpoint::ChatCompletions => 0,
            Endpoint::Completions => 1,
            Endpoint::Embeddings => 2,
            Endpoint::Responses => 3,
            Endpoint::Messages => 4,
        }
    }

    /// Whether a stream carries usage only when `stream_options.include_usage` is set.
    pub fn usage_needs_stream_options(self) -> bool {
        matches!(self, Endpoint::ChatCompletions | Endpoint::Completions)
    }
}

/// A JSON object's top-level entries, borrowed from its text: each key (decoded; borrowed
/// when it has no escapes) and its value's raw text.
struct RawObject<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for RawObject<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawObject<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawObject<'de>, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((Text(k), v)) = map.next_entry::<Text<'de>, &'de RawValue>()? {
                    out.push((k, v));
                }
                Ok(RawObject(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// A top-level key: where its text is in the body (no escapes: written back as it came), or
/// decoded (it had escapes; written back escaped by serde_json).
#[derive(Debug, PartialEq)]
enum Key {
    At(Range<usize>),
    Decoded(String),
}

/// A parsed client request: the body, with its top-level keys and values as places in it
/// (nothing of it is copied).
pub(crate) struct ClientRequest {
    body: String,
    fields: Vec<(Key, Range<usize>)>,
    /// Bit `min(len, 63)` set for every key length present ([`len_bit`]): most lookups are
    /// of absent keys (`max_tokens`, `n`, `user`...), answered without a comparison.
    key_lens: u64,
    /// The alias the client asked for.
    pub(crate) model: String,
    /// `stream: true`.
    pub(crate) stream: bool,
    /// `stream_options.include_usage: true`.
    pub(crate) include_usage: bool,
}

/// Where `part` (a slice of `whole`) starts and ends in `whole`.
fn span(whole: &str, part: &str) -> Range<usize> {
    let start = part.as_ptr() as usize - whole.as_ptr() as usize;
    start..start + part.len()
}

/// The bit of a key length in [`ClientRequest::key_lens`].
fn len_bit(len: usize) -> u64 {
    1 << len.min(63)
}

/// A JSON string value (the raw text of a checked value) decoded; `None` when it is not one.
/// Without escapes it is the text between the quotes; otherwise serde_json decodes it.
fn json_string(raw: &str) -> Option<String> {
    match raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Some(inner) if !inner.contains('\\') => Some(inner.to_string()),
        _ => serde_json::from_str::<String>(raw).ok(),
    }
}

/// Writes `s` as a JSON string: as it is between quotes when nothing in it needs escaping
/// (a model id), else escaped by serde_json.
fn write_json_string(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\' && b != 0x7f) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Serializing a &str into a Vec cannot fail.
        let _ = serde_json::to_writer(out, s);
    }
}

/// The top-level entries by the single-pass [`Scan`] (no escaped key, see `pricing/scan.rs`).
fn scan_fields(body: &str) -> Result<Vec<(Key, Range<usize>)>, Fallback> {
    let mut fields = Vec::with_capacity(8);
    Scan::new(body).raw_entries(|k, v| fields.push((Key::At(span(body, k)), span(body, v))))?;
    Ok(fields)
}

/// The top-level entries by serde_json: every body the scan does not take on (its error is
/// the one the client gets).
fn serde_fields(body: &str) -> Result<Vec<(Key, Range<usize>)>, serde_json::Error> {
    let RawObject(entries) = serde_json::from_str(body)?;
    Ok(entries
        .into_iter()
        .map(|(k, v)| {
            let key = match k {
                Cow::Borrowed(k) => Key::At(span(body, k)),
                Cow::Owned(k) => Key::Decoded(k),
            };
            (key, span(body, v.get()))
        })
        .collect())
}

impl ClientRequest {
    /// Parses a body: a JSON object with a string `model`.
    pub(crate) fn parse(body: Vec<u8>) -> Result<Self, ApiError> {
        let invalid = |e: &dyn fmt::Display| {
            ApiError::bad_request("invalid_json", format!("The request body is not a valid JSON object: {e}"))
        };
        let body = String::from_utf8(body).map_err(|e| invalid(&e))?;
        let fields = match scan_fields(&body) {
            Ok(f) => f,
            Err(Fallback) => serde_fields(&body).map_err(|e| invalid(&e))?,
        };
        let mut key_lens = 0u64;
        for (k, _) in &fields {
            key_lens |= len_bit(match k {
                Key::At(r) => r.len(),
                Key::Decoded(d) => d.len(),
            });
        }
        let mut req = Self { body, fields, key_lens, model: String::new(), stream: false, include_usage: false };
        req.model = match req.raw("model") {
            None => {
                return Err(ApiError::bad_request(
                    "missing_model",
                    "The request body has no `model`: say which model alias to use.",
                ));
            }
            Some(raw) => {
                json_string(raw).ok_or_else(|| ApiError::bad_request("invalid_model", "`model` must be a string."))?
            }
        };
        if req.model.is_empty() {
            return Err(ApiError::bad_request("missing_model", "`model` is empty: say which model alias to use."));
        }
        req.stream = match req.raw("stream") {
            None | Some("false" | "null") => false,
            Some("true") => true,
            Some(raw) => serde_json::from_str::<Option<bool>>(raw)
                .map_err(|_| ApiError::bad_request("invalid_stream", "`stream` must be a boolean."))?
                .unwrap_or(false),
        };
        req.include_usage = req
            .raw("stream_options")
            .and_then(|raw| serde_json::from_str::<serde_json::Value>(raw).ok())
            .and_then(|v| v.get("include_usage").and_then(serde_json::Value::as_bool))
            .unwrap_or(false);
        Ok(req)
    }

    fn key<'s>(&'s self, key: &'s Key) -> &'s str {
        match key {
            Key::At(r) => &self.body[r.clone()],
            Key::Decoded(k) => k,
        }
    }

    /// A top-level field as an unsigned integer (`None`: absent, null or not one).
    pub(crate) fn u64_field(&self, key: &str) -> Option<u64> {
        let raw = self.raw(key)?;
        // A plain integer short enough for a u64 is read here; anything else by serde_json.
        if raw.len() <= 19 && raw.bytes().all(|b| b.is_ascii_digit()) {
            return raw.parse().ok();
        }
        serde_json::from_str::<u64>(raw).ok()
    }

    /// A top-level field as a string (`None`: absent or not one).
    pub(crate) fn str_field(&self, key: &str) -> Option<String> {
        json_string(self.raw(key)?)
    }

    /// The raw JSON text of a top-level field (the last one when repeated, as `parse` reads).
    #[inline]
    pub(crate) fn raw(&self, key: &str) -> Option<&str> {
        // No key of this length: absent, without comparing any.
        if self.key_lens & len_bit(key.len()) == 0 {
            return None;
        }
        let is = |k: &Key| match k {
            Key::At(r) => self.body.as_bytes().get(r.clone()) == Some(key.as_bytes()),
            Key::Decoded(d) => d == key,
        };
        self.fields.iter().rev().find(|(k, _)| is(k)).map(|(_, v)| &self.body[v.clone()])
    }

    /// The body for one upstream: `model` replaced by `upstream_model`; with `ask_usage`,
    /// `stream_options.include_usage` set to `true` (other `stream_options` keys kept).
    pub(crate) fn upstream_body(&self, upstream_model: &str, ask_usage: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + upstream_model.len() + 48);
        out.push(b'{');
        let mut first = true;
        let mut push_key = |out: &mut Vec<u8>, k: &Key| {
            if !first {
                out.push(b',');
            }
            first = false;
            match k {
                Key::At(r) => {
                    out.push(b'"');
                    out.extend_from_slice(&self.body.as_bytes()[r.clone()]);
                    out.push(b'"');
                }
                // Serializing a &str into a Vec cannot fail.
                Key::Decoded(k) => {
                    let _ = serde_json::to_writer(&mut *out, k);
                }
            }
            out.push(b':');
        };
        let mut saw_options = false;
        for (k, v) in &self.fields {
            push_key(&mut out, k);
            let (k, v) = (self.key(k), &self.body[v.clone()]);
            if k == "model" {
                write_json_string(&mut out, upstream_model);
            } else if k == "stream_options" && ask_usage {
                saw_options = true;
                let mut opts = match serde_json::from_str::<serde_json::Value>(v) {
                    Ok(serde_json::Value::Object(m)) => m,
                    _ => serde_json::Map::new(),
                };
                opts.insert("include_usage".into(), serde_json::Value::Bool(true));
                let _ = serde_json::to_writer(&mut out, &opts);
            } else {
                out.extend_from_slice(v.as_bytes());
            }
        }
        if ask_usage && !saw_options {
            push_key(&mut out, &Key::Decoded("stream_options".into()));
            out.extend_from_slice(br#"{"include_usage":true}"#);
        }
        out.push(b'}');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_model_changes_and_key_order_is_kept() {
        let body = br#"{"z":1,"model":"chat","messages":[{"role":"user","content":"h\u00e9"}],"a":{"y":2,"b":1.50}}"#;
        let r = ClientRequest::parse(body.to_vec()).unwrap();
        assert_eq!(r.model, "chat");
        assert!(!r.stream);
        let out = String::from_utf8(r.upstream_body("gpt-4o-\"mini\"", false)).unwrap();
        assert_eq!(
            out,
            r#"{"z":1,"model":"gpt-4o-\"mini\"","messages":[{"role":"user","content":"h\u00e9"}],"a":{"y":2,"b":1.50}}"#
        );
    }

    #[test]
    fn model_ids_are_written_as_serde_json_writes_them() {
        for m in ["gpt-4o", "", "h\u{e9}/\u{1F600}", "a\"b", "a\\b", "tab\there", "\u{1}", "del\u{7f}", "x/y"] {
            let mut out = Vec::new();
            write_json_string(&mut out, m);
            assert_eq!(out, serde_json::to_vec(m).unwrap(), "{m:?}");
        }
    }

    #[test]
    fn escaped_keys_are_read_decoded_and_written_escaped() {
        let body = br#"{"mo\u0064el":"chat","x\"y":1,"stream":true}"#;
        let r = ClientRequest::parse(body.to_vec()).unwrap();
        assert_eq!((r.model.as_str(), r.stream), ("chat", true));
        assert_eq!(r.raw("x\"y"), Some("1"));
        assert_eq!(String::from_utf8(r.upstream_body("u", false)).unwrap(), r#"{"model":"u","x\"y":1,"stream":true}"#);
    }

    #[test]
    fn asks_for_stream_usage() {
        let r = ClientRequest::parse(br#"{"model":"m","stream":true}"#.to_vec()).unwrap();
        assert!(r.stream && !r.include_usage);
        assert_eq!(
            String::from_utf8(r.upstream_body("u", true)).unwrap(),
            r#"{"model":"u","stream":true,"stream_options":{"include_usage":true}}"#
        );
        let r = ClientRequest::parse(
            br#"{"stream_options":{"x":1,"include_usage":false},"model":"m","stream":true}"#.to_vec(),
        )
        .unwrap();
        assert!(!r.include_usage);
        assert_eq!(
            String::from_utf8(r.upstream_body("u", true)).unwrap(),
            r#"{"stream_options":{"include_usage":true,"x":1},"model":"u","stream":true}"#
        );
        let r =
            ClientRequest::parse(br#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#.to_vec())
                .unwrap();
        assert!(r.include_usage);
    }

    /// Pieces of request text, right and wrong (see `pricing/node_tests.rs` for the answer's).
    const KEYS: &[&str] = &["\"model\"", "\"stream\"", "\"mo\\u0064el\"", "\"n\"", "\"x\\q\"", "\"h\u{e9}\""];
    const VALUES: &[&str] = &[
        "\"m\"",
        "\"\"",
        "\"a\\q\"",
        "\"\\ud800\"",
        "\"\u{1}\"",
        "\"h\u{e9}\"",
        "\"\\n\\u00e9\"",
        "\"\\u00g1\"",
        "0",
        "12",
        "-3",
        "01",
        "1.",
        "2.5e3",
        "1e",
        "-",
        "18446744073709551616",
        "true",
        "false",
        "null",
        "nul",
        "[1,{\"a\":[]}]",
        "{}",
        "[1,]",
        "{\"a\"}",
        "\"m",
    ];
    const NOISE: &[&str] = &["{", "}", "[", "]", ":", ",", " ", "\n", "\"", "\\", "x"];

    /// A request object from [`KEYS`] and [`VALUES`], then a few edits (noise inserted, a
    /// byte removed, the text cut short).
    fn request_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let entries = proptest::collection::vec((0..KEYS.len(), 0..VALUES.len(), "[ \n]{0,1}"), 0..5);
        let edits = proptest::collection::vec((0u8..3, any::<proptest::sample::Index>(), 0..NOISE.len()), 0..3);
        (entries, edits).prop_map(|(entries, edits)| {
            let inner: Vec<String> =
                entries.iter().map(|(k, v, ws)| format!("{ws}{}{ws}:{ws}{}", KEYS[*k], VALUES[*v])).collect();
            let mut body = format!("{{{}}}", inner.join(","));
            for (op, at, noise) in edits {
                let mut i = at.index(body.len() + 1);
                while !body.is_char_boundary(i) {
                    i -= 1;
                }
                match op {
                    0 => body.insert_str(i, NOISE[noise]),
                    1 if i < body.len() => {
                        body.remove(i);
                    }
                    _ => body.truncate(i),
                }
            }
            body
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 3000, ..Default::default() })]

        /// The scan finds the entries serde_json finds, and refuses whatever serde_json
        /// refuses (serde_json then gives the client its error).
        #[test]
        fn the_scan_finds_the_entries_serde_json_finds(body in request_text()) {
            let reference = serde_fields(&body);
            if let Ok(fast) = scan_fields(&body) {
                proptest::prop_assert_eq!(Some(&fast), reference.as_ref().ok(), "{}", body);
            }
            // The whole parse: as by serde_json alone, whichever way the entries were found.
            let parsed = ClientRequest::parse(body.clone().into_bytes());
            match (&parsed, reference) {
                (Ok(p), Ok(fields)) => {
                    proptest::prop_assert_eq!(&p.fields, &fields, "{}", body);
                    for (k, v) in &fields {
                        let (k, raw) = (p.key(k), &body[v.clone()]);
                        proptest::prop_assert_eq!(p.raw(k).is_some(), true);
                        proptest::prop_assert_eq!(json_string(raw), serde_json::from_str::<String>(raw).ok(), "{}", raw);
                        proptest::prop_assert_eq!(p.u64_field(k), serde_json::from_str::<u64>(p.raw(k).unwrap_or("")).ok());
                    }
                }
                (Err(e), Err(r)) => {
                    proptest::prop_assert_eq!(&e.message, &format!("The request body is not a valid JSON object: {r}"));
                }
                (Err(e), Ok(_)) => proptest::prop_assert!(e.code != "invalid_json", "{}: {}", body, e.message),
                (Ok(_), Err(r)) => proptest::prop_assert!(false, "{}: serde_json refused it: {}", body, r),
            }
        }
    }

    #[test]
    fn the_scan_reads_requests_and_leaves_the_rest_to_serde_json() {
        let body = r#" {"model":"chat","messages":[{"role":"user","content":"h\u00e9 \"x\""}],"n":2,"max_tokens":18446744073709551615,"t":1.5e3,"s":-1} "#;
        let fast = scan_fields(body).unwrap();
        assert_eq!(fast, serde_fields(body).unwrap());
        let r = ClientRequest::parse(body.as_bytes().to_vec()).unwrap();
        assert_eq!(
            (r.u64_field("n"), r.u64_field("max_tokens"), r.u64_field("t"), r.u64_field("s")),
            (Some(2), Some(u64::MAX), None, None)
        );
        assert_eq!((r.str_field("model").as_deref(), r.raw("user")), (Some("chat"), None));
        for left in [r#"{"mo\u0064el":"chat"}"#, r#"{"model":"chat""#, r#"{"model":"chat"} x"#, "[1]"] {
            assert_eq!(scan_fields(left), Err(Fallback), "{left}");
        }
        // The client gets serde_json's message.
        let e = ClientRequest::parse(br#"{"model":"chat",}"#.to_vec()).err().unwrap();
        assert!(e.message.contains("trailing comma"), "{}", e.message);
    }

    #[test]
    fn rejects_what_cannot_be_routed() {
        for (body, code) in [
            (&b"not json"[..], "invalid_json"),
            (b"[1,2]", "invalid_json"),
            (b"{\"model\":\"a\"", "invalid_json"),
            (b"{}", "missing_model"),
            (b"{\"model\":\"\"}", "missing_model"),
            (b"{\"model\":5}", "invalid_model"),
            (b"{\"model\":\"a\",\"stream\":\"yes\"}", "invalid_stream"),
            (b"{\"model\":\"a\xff\"}", "invalid_json"),
        ] {
            let e = ClientRequest::parse(body.to_vec()).err().unwrap();
            assert_eq!(e.code, code, "{}", String::from_utf8_lossy(body));
            assert_eq!(e.status.as_u16(), 400);
        }
    }
}
