//! Usage extraction from answers, and the metered pass-through of streams.
//!
//! A whole JSON answer is parsed once for its usage (only the usage-bearing fields are kept).
//! A server-sent-event stream is forwarded chunk by chunk as it arrives; complete events are
//! inspected on the side for usage (the final chunk or event carries it; Anthropic's
//! `message_start` input counts are merged into the final `message_delta`). When the gateway
//! itself asked upstream for stream usage, the usage-only chunk (`choices: []` + `usage`) is
//! removed before the client sees it, so the client gets exactly the stream it asked for.

use std::io;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use memchr::memmem;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Map, Value};
use tokio::time::Instant;

use crate::api::ProviderFamily;
use crate::pricing::{TokenCounts, UsageError, parse_usage};

/// A body as a stream of chunks.
pub(crate) type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, io::Error>> + Send>>;

#[derive(Deserialize, Default)]
struct MessageView {
    #[serde(default)]
    usage: Option<Value>,
}

#[derive(Deserialize, Default)]
struct ResponseView {
    #[serde(default)]
    usage: Option<Value>,
}

/// The usage-bearing fields of an answer or stream event; everything else is skipped while
/// parsing.
#[derive(Deserialize, Default)]
struct UsageView {
    #[serde(rename = "type", default)]
    kind: Option<Value>,
    #[serde(default)]
    usage: Option<Value>,
    #[serde(rename = "usageMetadata", default)]
    usage_metadata: Option<Value>,
    #[serde(default)]
    response: Option<ResponseView>,
    #[serde(default)]
    message: Option<MessageView>,
    #[serde(default)]
    choices: Option<Vec<IgnoredAny>>,
}

fn non_null(v: &Option<Value>) -> bool {
    v.as_ref().is_some_and(|v| !v.is_null())
}

impl UsageView {
    /// Parses a JSON object; `None` when the bytes are not a JSON object.
    fn parse(bytes: &[u8]) -> Option<Self> {
        // Only an object (a derived struct would also accept an array, field by position).
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return None;
        }
        match serde_json::from_slice::<UsageView>(bytes) {
            Ok(v) => Some(v),
            // Lenient path: odd shapes of the skipped fields (a string `message`, duplicate
            // keys...) must not hide the usage.
            Err(_) => match serde_json::from_slice::<Value>(bytes).ok()? {
                Value::Object(mut m) => Some(UsageView {
                    kind: m.remove("type"),
                    usage: m.remove("usage"),
                    usage_metadata: m.remove("usageMetadata"),
                    response: match m.remove("response") {
                        Some(Value::Object(mut r)) => Some(ResponseView { usage: r.remove("usage") }),
                        _ => None,
                    },
                    message: match m.remove("message") {
                        Some(Value::Object(mut r)) => Some(MessageView { usage: r.remove("usage") }),
                        _ => None,
                    },
                    choices: match m.remove("choices") {
                        Some(Value::Array(a)) => Some(a.iter().map(|_| IgnoredAny).collect()),
                        _ => None,
                    },
                }),
                _ => None,
            },
        }
    }

    fn kind(&self) -> Option<&str> {
        self.kind.as_ref().and_then(Value::as_str)
    }

    fn has_usage(&self) -> bool {
        non_null(&self.usage)
            || non_null(&self.usage_metadata)
            || self.response.as_ref().is_some_and(|r| non_null(&r.usage))
    }

    /// The usage-only chunk an OpenAI-shaped stream ends with when `include_usage` is set.
    fn is_usage_only_chunk(&self) -> bool {
        non_null(&self.usage) && self.choices.as_ref().is_some_and(Vec::is_empty)
    }

    /// A JSON object with just the fields [`parse_usage`] reads (moved out of the view).
    fn into_value(self) -> Value {
        let mut m = Map::new();
        if let Some(k) = self.kind {
            m.insert("type".into(), k);
        }
        if let Some(u) = self.usage {
            m.insert("usage".into(), u);
        }
        if let Some(u) = self.usage_metadata {
            m.insert("usageMetadata".into(), u);
        }
        if let Some(r) = self.response {
            let mut inner = Map::new();
            if let Some(u) = r.usage {
                inner.insert("usage".into(), u);
            }
            m.insert("response".into(), Value::Object(inner));
        }
        Value::Object(m)
    }

    /// A JSON object with just the fields [`parse_usage`] reads.
    fn to_value(&self) -> Value {
        let mut m = Map::new();
        if let Some(k) = &self.kind {
            m.insert("type".into(), k.clone());
        }
        if let Some(u) = &self.usage {
            m.insert("usage".into(), u.clone());
        }
        if let Some(u) = &self.usage_metadata {
            m.insert("usageMetadata".into(), u.clone());
        }
        if let Some(r) = &self.response {
            let mut inner = Map::new();
            if let Some(u) = &r.usage {
                inner.insert("usage".into(), u.clone());
            }
            m.insert("response".into(), Value::Object(inner));
        }
        Value::Object(m)
    }
}

/// Usage of a whole (non-stream) JSON answer. `Err(())` when the body is not a JSON object
/// (upstream garbage).
pub(crate) fn body_usage(family: ProviderFamily, body: &[u8]) -> Result<Result<TokenCounts, UsageError>, ()> {
    let view = UsageView::parse(body).ok_or(())?;
    Ok(parse_usage(family, &view.into_value()))
}

/// Follows the usage of a stream, event by event.
pub(crate) struct UsageTracker {
    family: ProviderFamily,
    last: Option<UsageView>,
    anthropic_start: Option<Map<String, Value>>,
}

impl UsageTracker {
    pub(crate) fn new(family: ProviderFamily) -> Self {
        Self { family, last: None, anthropic_start: None }
    }

    fn observe(&mut self, view: UsageView) {
        if view.kind() == Some("message_start")
            && let Some(Value::Object(u)) = view.message.as_ref().and_then(|m| m.usage.as_ref())
        {
            self.anthropic_start = Some(u.clone());
            return;
        }
        if view.has_usage() {
            self.last = Some(view);
        }
    }

    /// The counts of the whole stream so far.
    pub(crate) fn result(&self) -> Result<TokenCounts, UsageError> {
        match (&self.last, &self.anthropic_start) {
            (Some(last), start) => {
                let mut v = last.to_value();
                if self.family == ProviderFamily::Anthropic
                    && last.kind() == Some("message_delta")
                    && let Some(start) = start
                    && let Some(Value::Object(u)) = v.get_mut("usage")
                {
                    for (k, val) in start {
                        if !u.contains_key(k) {
                            u.insert(k.clone(), val.clone());
                        }
                    }
                }
                parse_usage(self.family, &v)
            }
            (None, Some(start)) => {
                let mut m = Map::new();
                m.insert("usage".into(), Value::Object(start.clone()));
                parse_usage(self.family, &Value::Object(m))
            }
            (None, None) => Err(UsageError::Missing),
        }
    }
}

/// Splits a server-sent-event stream into events, forwards it, and reads usage on the side.
pub(crate) struct SseProcessor {
    strip_usage_chunk: bool,
    buf: Vec<u8>,
    tracker: UsageTracker,
}

/// End of the first complete event in `buf`: the index just past its blank line.
fn event_end(buf: &[u8]) -> Option<usize> {
    let lf = memmem::find(buf, b"\n\n").map(|i| i + 2);
    let crlf = memmem::find(buf, b"\r\n\r\n").map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The `data:` payload of an event (lines joined by `\n`).
fn event_data(event: &[u8]) -> Vec<u8> {
    let mut data = Vec::new();
    for line in event.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(rest) = line.strip_prefix(b"data:") {
            let rest = rest.strip_prefix(b" ").unwrap_or(rest);
            if !data.is_empty() {
                data.push(b'\n');
            }
            data.extend_from_slice(rest);
        }
    }
    data
}

/// Removes the `"usage":null` member that upstreams add to every chunk once
/// `include_usage` is set (only when the gateway set it, so the client sees the chunks it would
/// have seen without it). Works on bytes: inside a JSON string a quote is always escaped, so
/// these sequences only ever match the member itself.
fn without_null_usage(event: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    const PATTERNS: [&[u8]; 6] = [
        b",\"usage\":null",
        b", \"usage\": null",
        b",\"usage\": null",
        b"\"usage\":null,",
        b"\"usage\": null, ",
        b"\"usage\": null,",
    ];
    if memmem::find(event, b"\"usage\"").is_none() {
        return std::borrow::Cow::Borrowed(event);
    }
    let mut out = event.to_vec();
    for p in PATTERNS {
        while let Some(i) = memmem::find(&out, p) {
            out.drain(i..i + p.len());
        }
    }
    std::borrow::Cow::Owned(out)
}

impl SseProcessor {
    /// `strip_usage_chunk`: the gateway set `include_usage` itself, so the usage-only chunk is
    /// removed from what the client receives.
    pub(crate) fn new(family: ProviderFamily, strip_usage_chunk: bool) -> Self {
        Self { strip_usage_chunk, buf: Vec::new(), tracker: UsageTracker::new(family) }
    }

    /// Inspects one event; `true` when it is to be forwarded.
    fn inspect(&mut self, event: &[u8]) -> bool {
        if memmem::find(event, b"usage").is_none() {
            return true;
        }
        let data = event_data(event);
        let Some(view) = UsageView::parse(&data) else {
            return true;
        };
        let drop_it = self.strip_usage_chunk && view.is_usage_only_chunk();
        self.tracker.observe(view);
        !drop_it
    }

    /// Takes one upstream chunk; returns what the client gets now.
    pub(crate) fn feed(&mut self, chunk: Bytes) -> Bytes {
        self.buf.extend_from_slice(&chunk);
        if !self.strip_usage_chunk {
            // Pure pass-through: the chunk goes out as it came; complete events are read on
            // the side.
            while let Some(end) = event_end(&self.buf) {
                let event: Vec<u8> = self.buf.drain(..end).collect();
                self.inspect(&event);
            }
            return chunk;
        }
        let mut out = Vec::with_capacity(chunk.len());
        while let Some(end) = event_end(&self.buf) {
            let event: Vec<u8> = self.buf.drain(..end).collect();
            if self.inspect(&event) {
                out.extend_from_slice(&without_null_usage(&event));
            }
        }
        Bytes::from(out)
    }

    /// The upstream ended: whatever is left (an event without its final blank line).
    pub(crate) fn finish(&mut self) -> Bytes {
        let rest = std::mem::take(&mut self.buf);
        if rest.iter().all(u8::is_ascii_whitespace) {
            return if self.strip_usage_chunk { Bytes::from(rest) } else { Bytes::new() };
        }
        let keep = self.inspect(&rest);
        if self.strip_usage_chunk && keep { Bytes::from(without_null_usage(&rest).into_owned()) } else { Bytes::new() }
    }

    /// The usage of the stream so far.
    pub(crate) fn usage(&self) -> Result<TokenCounts, UsageError> {
        self.tracker.result()
    }
}

/// How a forwarded stream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StreamEnd {
    /// Upstream finished the stream.
    Complete,
    /// Upstream broke the stream (reset, protocol error).
    UpstreamError,
    /// No chunk within the idle timeout.
    IdleTimeout,
    /// The total time ran out.
    TotalTimeout,
    /// The client went away before the end.
    ClientGone,
}

/// Called once when a stream ends, with the usage read from it.
pub(crate) type OnEnd = Box<dyn FnOnce(StreamEnd, Result<TokenCounts, UsageError>) + Send>;

struct Metered {
    first: Option<Bytes>,
    rest: BodyStream,
    sse: SseProcessor,
    idle: Duration,
    deadline: Instant,
    on_end: Option<OnEnd>,
    done: bool,
}

impl Metered {
    fn end(&mut self, how: StreamEnd) {
        self.done = true;
        if let Some(f) = self.on_end.take() {
            f(how, self.sse.usage());
        }
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        self.end(StreamEnd::ClientGone);
    }
}

/// The client-facing stream: `first` (already received) then the rest of upstream, forwarded
/// without buffering, metered, bounded by the idle and total timeouts. On an upstream error or a
/// timeout the stream ends with an error, so the client sees a broken transfer rather than a
/// clean end.
pub(crate) fn metered(
    first: Bytes,
    rest: BodyStream,
    sse: SseProcessor,
    idle: Duration,
    deadline: Instant,
    on_end: OnEnd,
) -> BodyStream {
    let state = Metered { first: Some(first), rest, sse, idle, deadline, on_end: Some(on_end), done: false };
    Box::pin(futures::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        if let Some(first) = st.first.take() {
            let out = st.sse.feed(first);
            if !out.is_empty() {
                return Some((Ok(out), st));
            }
        }
        loop {
            let wait = st.deadline.min(Instant::now() + st.idle);
            match tokio::time::timeout_at(wait, st.rest.next()).await {
                Ok(Some(Ok(chunk))) => {
                    let out = st.sse.feed(chunk);
                    if !out.is_empty() {
                        return Some((Ok(out), st));
                    }
                }
                Ok(Some(Err(e))) => {
                    st.end(StreamEnd::UpstreamError);
                    return Some((Err(io::Error::other(format!("upstream stream broke: {e}"))), st));
                }
                Ok(None) => {
                    let tail = st.sse.finish();
                    st.end(StreamEnd::Complete);
                    return if tail.is_empty() { None } else { Some((Ok(tail), st)) };
                }
                Err(_) => {
                    let how =
                        if Instant::now() >= st.deadline { StreamEnd::TotalTimeout } else { StreamEnd::IdleTimeout };
                    st.end(how);
                    return Some((Err(io::Error::new(io::ErrorKind::TimedOut, "upstream stream timed out")), st));
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sse(events: &[Value]) -> String {
        let mut s = String::new();
        for e in events {
            s.push_str(&format!("data: {e}\n\n"));
        }
        s.push_str("data: [DONE]\n\n");
        s
    }

    #[test]
    fn strips_the_usage_chunk_it_asked_for_even_when_split_across_chunks() {
        let usage = json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15});
        let text = sse(&[
            json!({"choices": [{"delta": {"content": "hi"}}], "usage": null}),
            json!({"choices": [], "usage": usage}),
        ]);
        let bytes = text.as_bytes();
        for split in 1..bytes.len() {
            let mut p = SseProcessor::new(ProviderFamily::OpenAI, true);
            let mut out = Vec::new();
            out.extend_from_slice(&p.feed(Bytes::copy_from_slice(&bytes[..split])));
            out.extend_from_slice(&p.feed(Bytes::copy_from_slice(&bytes[split..])));
            out.extend_from_slice(&p.finish());
            let out = String::from_utf8(out).unwrap();
            assert!(!out.contains("\"choices\":[]"), "{out}");
            assert!(!out.contains("usage"), "{out}");
            assert!(out.contains("hi") && out.ends_with("data: [DONE]\n\n"));
            let t = p.usage().unwrap();
            assert_eq!((t.input, t.output), (10, 5));
        }
    }

    #[test]
    fn passes_through_untouched_when_the_client_asked_for_usage() {
        let text =
            sse(&[json!({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})]);
        let mut p = SseProcessor::new(ProviderFamily::OpenAI, false);
        let out = p.feed(Bytes::from(text.clone()));
        assert_eq!(out, Bytes::from(text));
        assert!(p.finish().is_empty());
        assert_eq!(p.usage().unwrap().input, 3);
    }

    #[test]
    fn anthropic_message_start_is_merged_into_message_delta() {
        let text = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":20,\"cache_read_input_tokens\":7,\"cache_creation_input_tokens\":3,\"output_tokens\":1}}}\r\n\r\n\
                    event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":40}}\r\n\r\n";
        let mut p = SseProcessor::new(ProviderFamily::Anthropic, false);
        p.feed(Bytes::from(text));
        let t = p.usage().unwrap();
        assert_eq!(t, TokenCounts { input: 20, cached_input: 7, cache_write: 3, output: 40, reasoning: 0 });
    }

    #[test]
    fn responses_completed_event_and_missing_usage() {
        let text = "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"usage\":null}}\n\n\
                    event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"output\":[],\"usage\":{\"input_tokens\":9,\"output_tokens\":4,\"total_tokens\":13}}}\n\n";
        let mut p = SseProcessor::new(ProviderFamily::OpenAI, false);
        p.feed(Bytes::from(text));
        assert_eq!(p.usage().unwrap().input, 9);
        let mut p = SseProcessor::new(ProviderFamily::OpenAI, false);
        p.feed(Bytes::from(sse(&[json!({"choices": [{"delta": {}}]})])));
        assert_eq!(p.usage(), Err(UsageError::Missing));
    }

    #[test]
    fn whole_bodies() {
        let body = br#"{"id":"x","choices":[{"message":{"content":"usage"}}],"usage":{"prompt_tokens":2,"completion_tokens":3,"total_tokens":5}}"#;
        assert_eq!(body_usage(ProviderFamily::OpenAI, body).unwrap().unwrap().output, 3);
        assert_eq!(body_usage(ProviderFamily::OpenAI, br#"{"id":"x"}"#).unwrap(), Err(UsageError::Missing));
        assert!(body_usage(ProviderFamily::OpenAI, b"<html>").is_err());
        assert!(body_usage(ProviderFamily::OpenAI, b"[1]").is_err());
        let gemini = br#"{"candidates":[],"usageMetadata":{"promptTokenCount":10,"candidatesTokenCount":4,"thoughtsTokenCount":6,"totalTokenCount":20}}"#;
        assert_eq!(body_usage(ProviderFamily::Gemini, gemini).unwrap().unwrap().reasoning, 6);
    }
}
