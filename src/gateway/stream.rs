//! Usage extraction from answers, and the metered pass-through of streams.
//!
//! A whole JSON answer is parsed once for its usage (only the usage-bearing fields are kept).
//! A server-sent-event stream is forwarded event by event as complete events arrive (each
//! scrubbed of API keys), framed by the gateway's one SSE framer
//! ([`super::translate::sse::SseFramer`]: `\n`, `\r\n` and bare `\r` line ends, split
//! anywhere). The client gets the upstream's bytes unchanged, apart from what is removed below:
//! an event that arrived whole in one upstream chunk and is forwarded unchanged goes out as a
//! slice of that chunk (no copy). Events are inspected on the side for usage (the final chunk
//! or event carries it; Anthropic's `message_start` input counts are merged into the final
//! `message_delta`). When the gateway itself asked upstream for stream usage, the usage-only
//! chunk (`choices: []` + `usage`) is removed before the client sees it, so the client gets
//! exactly the stream it asked for.
//!
//! Protocol errors: a second `message_start` in one stream (it would replace the usage already
//! reported with its own) ends the stream there with a `data: {"error":...,"code":
//! "upstream_stream_error"}` event, unforwarded itself, and the stream bills the usage seen
//! before it (outcome `upstream_error`).
//!
//! Bounds: an event (complete or not) is at most `max_sse_event_bytes`; past it the stream ends
//! with a `data: {"error":...,"code":"upstream_event_too_large"}` event (metered as
//! `event_too_large`). Each byte is scanned once for line ends (memchr), so a huge event costs
//! linear time. When the client leaves before the end, the upstream is read on in the
//! background (at most `disconnect_drain_timeout` and `disconnect_drain_bytes`) so the usage
//! the provider bills is metered exactly; a stream cut by the shutdown grace is not drained and
//! ends as [`StreamEnd::ShutdownCut`].

use std::borrow::Cow;
use std::io;
use std::ops::{ControlFlow, Range};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use memchr::memmem;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::redact::Redactor;
use super::translate::sse::{self, Piece, SseFramer};
use crate::config::ProviderFamily;
use crate::pricing::{Node, Object, TokenCounts, UsageError, parse_usage_node};

/// A body as a stream of chunks.
pub(crate) type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, io::Error>> + Send>>;

fn non_null(v: Option<&Node<'_>>) -> bool {
    v.is_some_and(|v| !v.is_null())
}

/// The `type` of an event (Anthropic's `message_start`, `message_delta`...).
fn kind<'n>(root: &'n Node<'_>) -> Option<&'n str> {
    root.as_object()?.get("type")?.as_str()
}

/// Whether an answer or event carries usage where [`parse_usage_node`] looks for it.
fn has_usage(root: &Node<'_>) -> bool {
    let Some(o) = root.as_object() else { return false };
    non_null(o.get("usage"))
        || non_null(o.get("usageMetadata"))
        || non_null(o.get("response").and_then(Node::as_object).and_then(|r| r.get("usage")))
}

/// The usage-only chunk an OpenAI-shaped stream ends with when `include_usage` is set.
fn is_usage_only_chunk(root: &Node<'_>) -> bool {
    let Some(o) = root.as_object() else { return false };
    non_null(o.get("usage")) && matches!(o.get("choices"), Some(Node::Array(0)))
}

/// Usage of a whole (non-stream) JSON answer. `Err(())` when the body is not a JSON object
/// (upstream garbage).
pub(crate) fn body_usage(family: ProviderFamily, body: &[u8]) -> Result<Result<TokenCounts, UsageError>, ()> {
    let root = Node::usage_of_answer(body).ok_or(())?;
    Ok(parse_usage_node(family, &root))
}

/// Follows the usage of a stream, event by event.
pub(crate) struct UsageTracker {
    family: ProviderFamily,
    last: Option<Node<'static>>,
    anthropic_start: Option<Object<'static>>,
    /// A `message_start` was seen.
    started: bool,
}

impl UsageTracker {
    pub(crate) fn new(family: ProviderFamily) -> Self {
        Self { family, last: None, anthropic_start: None, started: false }
    }

    /// Takes one event's usage. `Err`: a second `message_start` (a stream has one; its usage
    /// would replace what the stream already reported), a protocol error; the usage stays as
    /// it was.
    fn observe(&mut self, mut event: Node<'_>) -> Result<(), String> {
        if kind(&event) == Some("message_start") {
            if self.started {
                return Err("the upstream sent a second `message_start` in one stream".into());
            }
            self.started = true;
            if let Some(u) = event
                .as_object_mut()
                .and_then(|o| o.get_mut("message"))
                .and_then(Node::as_object_mut)
                .and_then(|m| m.get_mut("usage"))
                .and_then(Node::as_object_mut)
            {
                self.anthropic_start = Some(std::mem::take(u).into_owned());
            }
            return Ok(());
        }
        if has_usage(&event) {
            self.last = Some(event.into_owned());
        }
        Ok(())
    }

    /// The counts of the whole stream so far.
    pub(crate) fn result(&self) -> Result<TokenCounts, UsageError> {
        match (&self.last, &self.anthropic_start) {
            (Some(last), start) => {
                if self.family == ProviderFamily::Anthropic
                    && kind(last) == Some("message_delta")
                    && let Some(start) = start
                    && let Node::Object(root) = last
                    && let Some(Node::Object(_)) = root.get("usage")
                {
                    // The delta's own counts win; the start fills in what it lacks.
                    let mut root = root.clone();
                    if let Some(Node::Object(u)) = root.get_mut("usage") {
                        for (k, val) in start.iter() {
                            if !u.contains_key(k) {
                                u.insert(k.to_owned(), val.clone());
                            }
                        }
                    }
                    return parse_usage_node(self.family, &Node::Object(root));
                }
                parse_usage_node(self.family, last)
            }
            (None, Some(start)) => {
                let mut root = Object::default();
                root.insert("usage", Node::Object(start.clone()));
                parse_usage_node(self.family, &Node::Object(root))
            }
            (None, None) => Err(UsageError::Missing),
        }
    }
}

/// Splits a server-sent-event stream into events ([`SseFramer`], the gateway's one framer),
/// forwards them, and reads usage on the side.
pub(crate) struct SseProcessor {
    framer: SseFramer,
    inspector: Inspector,
    overflowed: bool,
}

/// What is read of the events on the side.
struct Inspector {
    strip_usage_chunk: bool,
    data_events: u64,
    tracker: UsageTracker,
    redactor: Arc<Redactor>,
    /// Why the upstream broke the protocol (the stream ends there).
    failed: Option<String>,
    /// The last event was removed (its tail goes with it).
    dropped: bool,
}

/// What becomes of one event.
enum Fate {
    Forward,
    /// The usage-only chunk the gateway asked for.
    Drop,
    /// A protocol error: neither it nor anything after it is forwarded.
    Stop,
}

impl Inspector {
    fn inspect(&mut self, event: &[u8]) -> Fate {
        if memmem::find(event, b"data:").is_some() {
            self.data_events += 1;
        }
        let anthropic = self.tracker.family == ProviderFamily::Anthropic;
        if memmem::find(event, b"usage").is_none() && !(anthropic && memmem::find(event, b"message_start").is_some()) {
            return Fate::Forward;
        }
        let data = sse::event_data(event);
        let Some(event) = Node::parse_object(&data) else {
            return Fate::Forward;
        };
        let drop_it = self.strip_usage_chunk && is_usage_only_chunk(&event);
        if let Err(why) = self.tracker.observe(event) {
            self.failed = Some(why);
            return Fate::Stop;
        }
        if drop_it { Fate::Drop } else { Fate::Forward }
    }

    /// Forwards one piece (stripped and scrubbed) into `out`, which is built from the chunk
    /// the piece's offsets name.
    fn forward(&mut self, piece: Piece<'_>, out: &mut Output<'_>) -> ControlFlow<()> {
        let Piece { bytes: event, at, tail } = piece;
        let fate = if tail && self.dropped { Fate::Drop } else { self.inspect(event) };
        self.dropped = false;
        match fate {
            Fate::Forward => {}
            Fate::Drop => {
                self.dropped = true;
                return ControlFlow::Continue(());
            }
            Fate::Stop => return ControlFlow::Break(()),
        }
        let stripped = if self.strip_usage_chunk { without_null_usage(event) } else { Cow::Borrowed(event) };
        let scrubbed = self.redactor.redact(&stripped);
        match (&stripped, &scrubbed, at) {
            (Cow::Borrowed(_), Cow::Borrowed(_), Some(at)) => out.keep(at),
            _ => out.push(&scrubbed),
        }
        ControlFlow::Continue(())
    }
}

/// What the client gets for one chunk: unchanged runs of the chunk stay slices of it (no
/// copy); only when an event was changed or removed are the kept bytes copied together.
struct Output<'c> {
    chunk: &'c Bytes,
    run: Option<Range<usize>>,
    owned: Vec<u8>,
}

impl<'c> Output<'c> {
    fn new(chunk: &'c Bytes) -> Self {
        Self { chunk, run: None, owned: Vec::new() }
    }

    fn flush(&mut self) {
        if let Some(r) = self.run.take() {
            self.owned.extend_from_slice(&self.chunk[r]);
        }
    }

    /// Keeps `chunk[at]` unchanged.
    fn keep(&mut self, at: Range<usize>) {
        match &mut self.run {
            Some(run) if run.end == at.start => run.end = at.end,
            _ => {
                self.flush();
                self.run = Some(at);
            }
        }
    }

    /// Appends bytes that are not a run of the chunk.
    fn push(&mut self, bytes: &[u8]) {
        self.flush();
        self.owned.extend_from_slice(bytes);
    }

    fn finish(mut self) -> Bytes {
        if self.owned.is_empty() {
            return self.run.map_or_else(Bytes::new, |r| self.chunk.slice(r));
        }
        self.flush();
        Bytes::from(self.owned)
    }
}

/// Removes the `"usage":null` member that upstreams add to every chunk once
/// `include_usage` is set (only when the gateway set it, so the client sees the chunks it would
/// have seen without it). Works on bytes: inside a JSON string a quote is always escaped, so
/// these sequences only ever match the member itself.
fn without_null_usage(event: &[u8]) -> Cow<'_, [u8]> {
    const PATTERNS: [&[u8]; 6] = [
        b",\"usage\":null",
        b", \"usage\": null",
        b",\"usage\": null",
        b"\"usage\":null,",
        b"\"usage\": null, ",
        b"\"usage\": null,",
    ];
    if memmem::find(event, b"\"usage\"").is_none() {
        return Cow::Borrowed(event);
    }
    let mut out = event.to_vec();
    for p in PATTERNS {
        while let Some(i) = memmem::find(&out, p) {
            out.drain(i..i + p.len());
        }
    }
    Cow::Owned(out)
}

/// An OpenAI-shaped error event that ends a stream.
fn error_event(code: &str, message: String) -> Bytes {
    let body = serde_json::json!({"error": {"message": message, "type": "api_error", "param": null, "code": code}});
    Bytes::from(format!("data: {body}\n\n"))
}

/// The event that ends a stream whose upstream broke the protocol (`why`).
pub(crate) fn protocol_error_event(why: &str) -> Bytes {
    error_event("upstream_stream_error", format!("{why}; the stream was ended."))
}

/// The event sent to the client when an upstream event is over the size limit.
pub(crate) fn too_large_event(limit: usize) -> Bytes {
    error_event(
        "upstream_event_too_large",
        format!(
            "The upstream sent a server-sent event larger than the gateway's limit of {limit} bytes; the stream was ended."
        ),
    )
}

impl SseProcessor {
    /// `strip_usage_chunk`: the gateway set `include_usage` itself, so the usage-only chunk is
    /// removed from what the client receives. `max_event`: largest event, bytes.
    pub(crate) fn new(
        family: ProviderFamily,
        strip_usage_chunk: bool,
        max_event: usize,
        redactor: Arc<Redactor>,
    ) -> Self {
        Self {
            framer: SseFramer::new(max_event),
            inspector: Inspector {
                strip_usage_chunk,
                data_events: 0,
                tracker: UsageTracker::new(family),
                redactor,
                failed: None,
                dropped: false,
            },
            overflowed: false,
        }
    }

    /// Takes one upstream chunk; returns what the client gets now: the complete events (an
    /// event that lay whole in `chunk`, forwarded unchanged, is a slice of it). Once an event
    /// is larger than the limit, [`overflowed`](Self::overflowed) is set, the held bytes are
    /// freed and nothing more is taken; after a protocol error ([`failed`](Self::failed)),
    /// neither.
    pub(crate) fn feed(&mut self, chunk: Bytes) -> Bytes {
        if self.overflowed || self.inspector.failed.is_some() {
            return Bytes::new();
        }
        let mut out = Output::new(&chunk);
        let inspector = &mut self.inspector;
        if self.framer.feed(&chunk, |piece| inspector.forward(piece, &mut out)).is_err() {
            self.overflowed = true;
        }
        out.finish()
    }

    /// Whether an event over the size limit ended the stream.
    pub(crate) fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// Why the upstream broke the stream's protocol, if it did (the stream ends there).
    pub(crate) fn failed(&self) -> Option<&str> {
        self.inspector.failed.as_deref()
    }

    /// The largest event, bytes.
    pub(crate) fn max_event(&self) -> usize {
        self.framer.limit()
    }

    /// Events with a `data:` line seen so far.
    pub(crate) fn data_events(&self) -> u64 {
        self.inspector.data_events
    }

    /// The upstream ended: whatever is left (an event without its final blank line).
    pub(crate) fn finish(&mut self) -> Bytes {
        if self.inspector.failed.is_some() {
            return Bytes::new();
        }
        let Ok(rest) = self.framer.finish() else { return Bytes::new() };
        if rest.is_empty() || rest.iter().all(u8::is_ascii_whitespace) {
            return Bytes::from(rest);
        }
        let rest = Bytes::from(rest);
        let mut out = Output::new(&rest);
        let _ = self.inspector.forward(Piece { bytes: &rest, at: Some(0..rest.len()), tail: false }, &mut out);
        out.finish()
    }

    /// The usage of the stream so far.
    pub(crate) fn usage(&self) -> Result<TokenCounts, UsageError> {
        self.inspector.tracker.result()
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
    /// The client went away before the end (the upstream was then read on, within the drain
    /// bounds, for its usage).
    ClientGone,
    /// The shutdown grace period ran out with the stream still open.
    ShutdownCut,
    /// An upstream event was larger than the limit.
    EventTooLarge,
}

/// How a stream ended and what was read of it.
pub(crate) struct StreamSummary {
    pub(crate) end: StreamEnd,
    pub(crate) usage: Result<TokenCounts, UsageError>,
    /// Events with a `data:` line received.
    pub(crate) data_events: u64,
}

/// Called once when a stream ends.
pub(crate) type OnEnd = Box<dyn FnOnce(StreamSummary) + Send>;

/// Time and size bounds of a forwarded stream.
#[derive(Clone)]
pub(crate) struct StreamBounds {
    /// Longest silence between two upstream chunks.
    pub(crate) idle: Duration,
    /// End of the request's total time.
    pub(crate) deadline: Instant,
    /// After the client left: longest time the upstream is still read.
    pub(crate) drain_timeout: Duration,
    /// After the client left: most upstream bytes still read.
    pub(crate) drain_bytes: usize,
    /// Cancelled when the shutdown grace is over.
    pub(crate) cut: Option<CancellationToken>,
}

/// The upstream side of a stream and its meter callback. Dropped with the callback still
/// pending (e.g. the runtime shuts down in the middle of a drain), it meters what it read.
struct Tail {
    rest: BodyStream,
    sse: SseProcessor,
    on_end: Option<OnEnd>,
}

impl Tail {
    fn finish(&mut self, end: StreamEnd) {
        if let Some(f) = self.on_end.take() {
            f(StreamSummary { end, usage: self.sse.usage(), data_events: self.sse.data_events() });
        }
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        self.finish(StreamEnd::ClientGone);
    }
}

/// Reads the upstream on after the client left, for its usage, within the drain bounds.
async fn drain_for_usage(mut tail: Tail, until: Instant, max_bytes: usize) {
    let mut read = 0usize;
    loop {
        match tokio::time::timeout_at(until, tail.rest.next()).await {
            Ok(Some(Ok(chunk))) => {
                read = read.saturating_add(chunk.len());
                tail.sse.feed(chunk);
                if tail.sse.overflowed() || tail.sse.failed().is_some() || read > max_bytes {
                    break;
                }
            }
            Ok(None) => {
                tail.sse.finish();
                break;
            }
            Ok(Some(Err(_))) | Err(_) => break,
        }
    }
    tail.finish(StreamEnd::ClientGone);
}

struct Metered {
    first: Option<Bytes>,
    tail: Option<Tail>,
    bounds: StreamBounds,
    done: bool,
}

impl Metered {
    fn end(&mut self, how: StreamEnd) {
        self.done = true;
        if let Some(mut t) = self.tail.take() {
            t.finish(how);
        }
    }

    /// What to send for a chunk the processor turned into `out`; `None`: nothing yet.
    fn after_feed(&mut self, out: Bytes) -> Option<Bytes> {
        let Some(t) = self.tail.as_ref() else { return (!out.is_empty()).then_some(out) };
        let (end, event) = match (t.sse.overflowed(), t.sse.failed()) {
            (true, _) => (StreamEnd::EventTooLarge, too_large_event(t.sse.max_event())),
            (false, Some(why)) => (StreamEnd::UpstreamError, protocol_error_event(why)),
            (false, None) => return (!out.is_empty()).then_some(out),
        };
        self.end(end);
        let mut v = out.to_vec();
        v.extend_from_slice(&event);
        Some(Bytes::from(v))
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        let Some(mut tail) = self.tail.take() else {
            return;
        };
        if self.bounds.cut.as_ref().is_some_and(CancellationToken::is_cancelled) {
            tail.finish(StreamEnd::ShutdownCut);
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let until = self.bounds.deadline.min(Instant::now() + self.bounds.drain_timeout);
                rt.spawn(drain_for_usage(tail, until, self.bounds.drain_bytes));
            }
            Err(_) => tail.finish(StreamEnd::ClientGone),
        }
    }
}

/// The client-facing stream: `first` (already received) then the rest of upstream, forwarded
/// event by event as complete events arrive, metered, bounded by the idle and total timeouts.
/// On an upstream error or a timeout the stream ends with an error, so the client sees a
/// broken transfer rather than a clean end; an event over the size limit ends it with an error
/// event. When the client leaves first, the upstream is read on (within the drain bounds) so
/// the usage the provider bills is still metered.
pub(crate) fn metered(
    first: Bytes,
    rest: BodyStream,
    sse: SseProcessor,
    bounds: StreamBounds,
    on_end: OnEnd,
) -> BodyStream {
    let state =
        Metered { first: Some(first), tail: Some(Tail { rest, sse, on_end: Some(on_end) }), bounds, done: false };
    Box::pin(futures::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        if let Some(first) = st.first.take()
            && let Some(t) = st.tail.as_mut()
        {
            let out = t.sse.feed(first);
            if let Some(out) = st.after_feed(out) {
                return Some((Ok(out), st));
            }
        }
        loop {
            let wait = st.bounds.deadline.min(Instant::now() + st.bounds.idle);
            let t = st.tail.as_mut()?;
            match tokio::time::timeout_at(wait, t.rest.next()).await {
                Ok(Some(Ok(chunk))) => {
                    let out = t.sse.feed(chunk);
                    if let Some(out) = st.after_feed(out) {
                        return Some((Ok(out), st));
                    }
                }
                Ok(Some(Err(e))) => {
                    st.end(StreamEnd::UpstreamError);
                    return Some((Err(io::Error::other(format!("upstream stream broke: {e}"))), st));
                }
                Ok(None) => {
                    let tail = t.sse.finish();
                    if t.sse.failed().is_some() {
                        // The last event, without its blank line, broke the protocol.
                        return st.after_feed(tail).map(|out| (Ok(out), st));
                    }
                    st.end(StreamEnd::Complete);
                    return if tail.is_empty() { None } else { Some((Ok(tail), st)) };
                }
                Err(_) => {
                    let how = if Instant::now() >= st.bounds.deadline {
                        StreamEnd::TotalTimeout
                    } else {
                        StreamEnd::IdleTimeout
                    };
                    st.end(how);
                    return Some((Err(io::Error::new(io::ErrorKind::TimedOut, "upstream stream timed out")), st));
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    /// Feeds a copy of `bytes`.
    fn feed(p: &mut SseProcessor, bytes: &[u8]) -> Bytes {
        p.feed(Bytes::copy_from_slice(bytes))
    }

    /// What the client receives when the upstream's `bytes` arrive in two reads cut at `split`.
    fn through_split(p: &mut SseProcessor, bytes: &[u8], split: usize) -> String {
        let mut out = Vec::new();
        out.extend_from_slice(&feed(p, &bytes[..split]));
        out.extend_from_slice(&feed(p, &bytes[split..]));
        out.extend_from_slice(&p.finish());
        String::from_utf8(out).unwrap()
    }

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
            let mut p = SseProcessor::new(ProviderFamily::OpenAI, true, 1 << 20, Arc::default());
            let out = through_split(&mut p, bytes, split);
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
        let mut p = SseProcessor::new(ProviderFamily::OpenAI, false, 1 << 20, Arc::default());
        let out = feed(&mut p, text.as_bytes());
        assert_eq!(out, Bytes::from(text));
        assert!(p.finish().is_empty());
        assert_eq!(p.usage().unwrap().input, 3);
    }

    /// A stream whose lines end with `end`: two content chunks, `usage: null` on each (the
    /// gateway asked for usage), the usage-only chunk, `[DONE]`.
    fn stream_with(end: &str) -> (String, String) {
        let chunk = |c: &str| json!({"choices": [{"delta": {"content": c}}], "usage": null});
        let usage = json!({"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}});
        let ev = |v: &Value| format!("data: {v}{end}{end}");
        let upstream = format!(
            ": keep-alive{end}{end}{}{}{}data: [DONE]{end}{end}",
            ev(&chunk("he")),
            ev(&chunk("llo")),
            ev(&usage)
        );
        let chunk = |c: &str| json!({"choices": [{"delta": {"content": c}}]});
        let client = format!(": keep-alive{end}{end}{}{}data: [DONE]{end}{end}", ev(&chunk("he")), ev(&chunk("llo")));
        (upstream, client)
    }

    #[test]
    fn bare_cr_and_crlf_streams_split_at_every_byte_bill_exactly_and_hide_the_usage_chunk() {
        for end in ["\r", "\r\n", "\n"] {
            let (upstream, client) = stream_with(end);
            let bytes = upstream.as_bytes();
            for split in 0..=bytes.len() {
                let mut p = SseProcessor::new(ProviderFamily::OpenAI, true, 1 << 20, Arc::default());
                assert_eq!(through_split(&mut p, bytes, split), client, "{end:?} split at {split}");
                assert_eq!(p.usage().map(|t| (t.input, t.output)), Ok((11, 7)), "{end:?} split at {split}");
                assert_eq!(p.data_events(), 4);
            }
            // Byte by byte.
            let mut p = SseProcessor::new(ProviderFamily::OpenAI, true, 1 << 20, Arc::default());
            let mut out = Vec::new();
            for b in bytes {
                out.extend_from_slice(&feed(&mut p, std::slice::from_ref(b)));
            }
            out.extend_from_slice(&p.finish());
            assert_eq!(String::from_utf8(out).unwrap(), client, "{end:?} byte by byte");
            assert_eq!(p.usage().map(|t| (t.input, t.output)), Ok((11, 7)));
        }
    }

    #[test]
    fn whole_events_forwarded_unchanged_are_slices_of_the_upstream_chunk() {
        let text = sse(&[json!({"choices": [{"delta": {"content": "hi"}}]})]);
        let mut p = SseProcessor::new(ProviderFamily::OpenAI, false, 1 << 20, Arc::default());
        let chunk = Bytes::from(format!("{text}data: {{\"part"));
        let out = p.feed(chunk.clone());
        assert_eq!(out, Bytes::from(text.clone()));
        assert_eq!(out.as_ptr(), chunk.as_ptr(), "no copy");
        // The event completed across chunks is assembled; the whole one after it is a slice.
        let chunk = Bytes::from(format!("\":1}}\n\n{text}"));
        let out = p.feed(chunk.clone());
        assert_eq!(out, Bytes::from(format!("data: {{\"part\":1}}\n\n{text}")));
    }

    #[test]
    fn a_second_message_start_ends_the_stream_and_keeps_the_usage_seen() {
        let start = |input: u64, output: u64| {
            format!(
                "event: message_start\ndata: {}\n\n",
                json!({"type": "message_start", "message": {"usage": {"input_tokens": input, "output_tokens": output}}})
            )
        };
        let delta = "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":40}}\n\n";
        let later = "data: {\"type\":\"ping\"}\n\n";
        let text = format!("{}{delta}{}{later}", start(20, 1), start(1, 1));
        let bytes = text.as_bytes();
        for split in 0..=bytes.len() {
            let mut p = SseProcessor::new(ProviderFamily::Anthropic, false, 1 << 20, Arc::default());
            let out = through_split(&mut p, bytes, split);
            assert!(p.failed().is_some_and(|w| w.contains("second `message_start`")), "split at {split}");
            assert_eq!(out, format!("{}{delta}", start(20, 1)), "split at {split}");
            let t = p.usage().unwrap();
            assert_eq!((t.input, t.output), (20, 40), "split at {split}: the usage seen before it");
        }
        // As the last event, without its blank line: found at the end of the body.
        let mut p = SseProcessor::new(ProviderFamily::Anthropic, false, 1 << 20, Arc::default());
        assert_eq!(feed(&mut p, format!("{}{}", start(20, 1), start(1, 1).trim_end()).as_bytes()), start(20, 1));
        assert!(p.failed().is_none());
        assert!(p.finish().is_empty());
        assert!(p.failed().is_some());
        assert_eq!(p.usage().unwrap().input, 20);
        // One without usage counts as well.
        let mut p = SseProcessor::new(ProviderFamily::Anthropic, false, 1 << 20, Arc::default());
        feed(&mut p, format!("{}data: {{\"type\":\"message_start\",\"message\":{{}}}}\n\n", start(5, 1)).as_bytes());
        assert!(p.failed().is_some());
    }

    #[test]
    fn anthropic_message_start_is_merged_into_message_delta() {
        let text = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":20,\"cache_read_input_tokens\":7,\"cache_creation_input_tokens\":3,\"output_tokens\":1}}}\r\n\r\n\
                    event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":40}}\r\n\r\n";
        let mut p = SseProcessor::new(ProviderFamily::Anthropic, false, 1 << 20, Arc::default());
        feed(&mut p, text.as_bytes());
        let t = p.usage().unwrap();
        assert_eq!(
            t,
            TokenCounts { input: 20, cached_input: 7, cache_write: 3, cache_write_1h: 0, output: 40, reasoning: 0 }
        );
    }

    #[test]
    fn responses_completed_event_and_missing_usage() {
        let text = "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"usage\":null}}\n\n\
                    event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"output\":[],\"usage\":{\"input_tokens\":9,\"output_tokens\":4,\"total_tokens\":13}}}\n\n";
        let mut p = SseProcessor::new(ProviderFamily::OpenAI, false, 1 << 20, Arc::default());
        feed(&mut p, text.as_bytes());
        assert_eq!(p.usage().unwrap().input, 9);
        let mut p = SseProcessor::new(ProviderFamily::OpenAI, false, 1 << 20, Arc::default());
        feed(&mut p, sse(&[json!({"choices": [{"delta": {}}]})]).as_bytes());
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

    #[test]
    fn a_huge_event_is_cut_at_the_limit_and_scanned_once() {
        let mut p = SseProcessor::new(ProviderFamily::OpenAI, false, 1 << 20, Arc::default());
        assert_eq!(feed(&mut p, b"data: {\"a\":1}\n\ndata: \"").as_ref(), b"data: {\"a\":1}\n\n");
        let chunk = vec![b'a'; 64 * 1024];
        let mut fed = 0;
        while !p.overflowed() {
            assert!(feed(&mut p, &chunk).is_empty());
            fed += chunk.len();
            assert!(fed < 2 << 20, "never overflowed");
        }
        assert!(p.framer.is_idle(), "the held bytes are freed at the limit");
        assert!(feed(&mut p, b"\n\n").is_empty(), "nothing more is taken");
        assert_eq!(p.data_events(), 1);
        let ev = String::from_utf8(too_large_event(1 << 20).to_vec()).unwrap();
        assert!(ev.starts_with("data: {\"error\":") && ev.ends_with("\n\n") && ev.contains("upstream_event_too_large"));
    }

    mod props {
        use proptest::prelude::*;

        use super::*;

        const KEY: &str = "sk-test-Zq9/abcdefghijklmnop";

        fn stream_of(sizes: &[(usize, bool)]) -> Vec<u8> {
            let mut s = Vec::new();
            for (i, &(size, key)) in sizes.iter().enumerate() {
                let pad = "x".repeat(size);
                let content = if key { format!("{pad}{}", KEY.replace('/', "\\/")) } else { pad };
                let sep = if i % 3 == 0 { "\r\n\r\n" } else { "\n\n" };
                s.extend_from_slice(format!("data: {{\"i\":{i},\"c\":\"{content}\"}}{sep}").as_bytes());
            }
            let usage =
                json!({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}});
            s.extend_from_slice(format!("data: {usage}\n\ndata: [DONE]\n\n").as_bytes());
            s
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

            /// Any split of any stream: the client gets exactly the events (keys scrubbed), the
            /// usage is read, and the size limit trips only for an event over it.
            #[test]
            fn splits_never_change_what_the_client_gets(
                sizes in proptest::collection::vec((0usize..3000, proptest::bool::weighted(0.2)), 0..12),
                cuts in proptest::collection::vec(0usize..40_000, 0..20),
                limit in 1000usize..4000,
            ) {
                let input = stream_of(&sizes);
                let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (input.len() + 1)).collect();
                cuts.push(0);
                cuts.push(input.len());
                cuts.sort_unstable();
                let red = Arc::new(Redactor::new([KEY]));
                let mut p = SseProcessor::new(ProviderFamily::OpenAI, false, limit, red.clone());
                let mut out = Vec::new();
                for w in cuts.windows(2) {
                    out.extend_from_slice(&feed(&mut p, &input[w[0]..w[1]]));
                }
                out.extend_from_slice(&p.finish());
                // Largest event, blank line included.
                let biggest = sizes.iter().map(|&(n, k)| n + if k { KEY.len() + 1 } else { 0 } + 40).max().unwrap_or(0);
                if p.overflowed() {
                    prop_assert!(biggest > limit, "overflowed with events of at most {} bytes (limit {})", biggest, limit);
                } else {
                    prop_assert_eq!(&out, &red.redact(&input).into_owned());
                    prop_assert!(memmem::find(&out, b"abcdefghijklmnop").is_none());
                    let t = p.usage().unwrap();
                    prop_assert_eq!((t.input, t.output), (7, 3));
                    prop_assert_eq!(p.data_events(), sizes.len() as u64 + 2);
                }
                if biggest + 64 < limit {
                    prop_assert!(!p.overflowed());
                }
            }

            /// Arbitrary bytes never panic the usage parsers or the processor, and usage read
            /// from them is never above the plausible maximum once checked.
            #[test]
            fn arbitrary_bytes_never_panic(
                bytes in proptest::collection::vec(any::<u8>(), 0..2000),
                usage in (any::<i64>(), any::<u64>(), 0u8..4),
            ) {
                let _ = body_usage(ProviderFamily::OpenAI, &bytes);
                let _ = body_usage(ProviderFamily::Anthropic, &bytes);
                let _ = body_usage(ProviderFamily::Gemini, &bytes);
                let mut p = SseProcessor::new(ProviderFamily::Anthropic, true, 512, Arc::new(Redactor::new([KEY])));
                let _ = feed(&mut p, &bytes);
                let _ = p.finish();
                let _ = p.usage();
                let (a, b, shape) = usage;
                let body = match shape {
                    0 => json!({"usage": {"prompt_tokens": a, "completion_tokens": b, "total_tokens": b}}),
                    1 => json!({"usage": {"prompt_tokens": b, "completion_tokens": b, "total_tokens": a}}),
                    2 => json!({"usage": {"input_tokens": a as f64 / 3.0, "output_tokens": b}}),
                    _ => json!({"usageMetadata": {"promptTokenCount": b, "candidatesTokenCount": a}}),
                };
                if let Ok(Ok(t)) = body_usage(ProviderFamily::OpenAI, body.to_string().as_bytes())
                    && let Ok(t) = crate::gateway::limits::plausible(t)
                {
                    prop_assert!(t.total() <= crate::gateway::limits::MAX_TOKENS_PER_ANSWER);
                }
            }
        }
    }
}
