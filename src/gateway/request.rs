//! The client's request body: read once, rewritten per attempt.
//!
//! The body is kept as an ordered list of top-level keys with their raw JSON text, so everything
//! but `model` (and, when the gateway asks for stream usage, `stream_options`) reaches upstream
//! byte for byte, in the client's key order.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::errors::ApiError;
use crate::pricing::Text;

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
enum Key {
    At(Range<usize>),
    Decoded(String),
}

/// A parsed client request: the body, with its top-level keys and values as places in it
/// (nothing of it is copied).
pub(crate) struct ClientRequest {
    body: String,
    fields: Vec<(Key, Range<usize>)>,
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

impl ClientRequest {
    /// Parses a body: a JSON object with a string `model`.
    pub(crate) fn parse(body: Vec<u8>) -> Result<Self, ApiError> {
        let invalid = |e: &dyn fmt::Display| {
            ApiError::bad_request("invalid_json", format!("The request body is not a valid JSON object: {e}"))
        };
        let body = String::from_utf8(body).map_err(|e| invalid(&e))?;
        let RawObject(entries) = serde_json::from_str(&body).map_err(|e| invalid(&e))?;
        let fields: Vec<(Key, Range<usize>)> = entries
            .into_iter()
            .map(|(k, v)| {
                let key = match k {
                    Cow::Borrowed(k) => Key::At(span(&body, k)),
                    Cow::Owned(k) => Key::Decoded(k),
                };
                (key, span(&body, v.get()))
            })
            .collect();
        let mut req = Self { body, fields, model: String::new(), stream: false, include_usage: false };
        req.model = match req.raw("model") {
            None => {
                return Err(ApiError::bad_request(
                    "missing_model",
                    "The request body has no `model`: say which model alias to use.",
                ));
            }
            Some(raw) => serde_json::from_str::<String>(raw)
                .map_err(|_| ApiError::bad_request("invalid_model", "`model` must be a string."))?,
        };
        if req.model.is_empty() {
            return Err(ApiError::bad_request("missing_model", "`model` is empty: say which model alias to use."));
        }
        req.stream = match req.raw("stream") {
            None => false,
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
        serde_json::from_str::<u64>(self.raw(key)?).ok()
    }

    /// The raw JSON text of a top-level field (the last one when repeated, as `parse` reads).
    pub(crate) fn raw(&self, key: &str) -> Option<&str> {
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
                let _ = serde_json::to_writer(&mut out, upstream_model);
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
