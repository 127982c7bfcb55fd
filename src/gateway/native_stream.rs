//! The translated answer of a native attempt: upstream answer (whole, or SSE as it arrives)
//! → the client's shape, and the metering of streams.
//!
//! Rules:
//! - A [`Translator`] pairs an upstream [`Decoder`] (Anthropic Messages or Gemini SSE → chat
//!   chunks; none for an OpenAI-compatible upstream) with a client [`Encoder`] (chat chunks,
//!   the Messages event sequence, or the upstream bytes unchanged for Anthropic pass-through).
//! - Bytes go out as soon as the events they complete are translated; nothing is buffered
//!   beyond one incomplete event (bounded by the translators' 4 MiB limit).
//! - A stream bills exactly once (through [`super::answer::bill`], like the pass-through): at
//!   its end with the final usage; when cut short (upstream error event, broken or truncated
//!   stream, idle or total timeout, client gone, shutdown cut) with the usage known so far, or,
//!   when none is known, `usage_missing{reason}` and an estimate (request bytes, upstream data
//!   events; see [`super::limits`]). An error event in the client's shape ends a failed stream
//!   (a pass-through stream already carries the upstream's own). A client that leaves early
//!   does not stop metering: the upstream is drained for its usage ([`DrainBounds`]).

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde_json::{Value, json};
use tokio::time::{Instant, Sleep};

use super::CompiledBackend;
use super::codec::Surface;
use super::native::native_answer;
use super::request::Endpoint;
use super::stream::BodyStream;
use super::translate::{
    AnthropicStream, ChatToMessagesStream, GeminiStream, StreamOutput, TranslateError, UsageReport,
};
use crate::config::{ProviderFamily, WireApi};
use crate::policy::Outcome;
use crate::pricing::UsageError;

/// An upstream stream decoder into chat chunks.
pub(crate) enum Decoder {
    Anthropic(AnthropicStream),
    Gemini(GeminiStream),
}

impl Decoder {
    fn push(&mut self, bytes: &[u8]) -> Result<Vec<StreamOutput>, TranslateError> {
        match self {
            Decoder::Anthropic(d) => d.push(bytes),
            Decoder::Gemini(d) => d.push(bytes),
        }
    }
    fn finish(&mut self) -> Result<(Vec<StreamOutput>, UsageReport), TranslateError> {
        match self {
            Decoder::Anthropic(d) => d.finish(),
            Decoder::Gemini(d) => d.finish(),
        }
    }
    fn partial_usage(&self) -> Option<UsageReport> {
        match self {
            Decoder::Anthropic(d) => d.partial_usage(),
            Decoder::Gemini(d) => d.partial_usage(),
        }
    }
    /// As `push`, adding to `forwarded` the bytes the client gets unchanged: the complete
    /// events taken, so the client never gets an event that broke the stream.
    fn push_forwarding(&mut self, bytes: &[u8], forwarded: &mut Vec<u8>) -> Result<Vec<StreamOutput>, TranslateError> {
        match self {
            Decoder::Anthropic(d) => d.push_forwarding(bytes, forwarded),
            // No client surface speaks Gemini: its stream is never passed through.
            Decoder::Gemini(d) => {
                forwarded.extend_from_slice(bytes);
                d.push(bytes)
            }
        }
    }
    fn finish_forwarding(
        &mut self,
        forwarded: &mut Vec<u8>,
    ) -> Result<(Vec<StreamOutput>, UsageReport), TranslateError> {
        match self {
            Decoder::Anthropic(d) => d.finish_forwarding(forwarded),
            Decoder::Gemini(d) => d.finish(),
        }
    }
}

/// The client-side encoder.
pub(crate) enum Encoder {
    /// `chat.completion.chunk` SSE and `data: [DONE]`.
    Chat,
    /// The Messages event sequence (from chunks, or from raw OpenAI SSE when there is no decoder).
    Messages(Box<ChatToMessagesStream>),
    /// The upstream bytes unchanged (Anthropic to a `/v1/messages` client), event by event as
    /// each completes, up to an event that breaks the stream (a protocol error); the decoder
    /// meters.
    Raw,
}

/// Upstream answer → client answer, whole or streamed.
pub(crate) struct Translator {
    /// `None`: the upstream speaks OpenAI chat (only with [`Encoder::Messages`]).
    pub(crate) decoder: Option<Decoder>,
    pub(crate) encoder: Encoder,
    /// The `model` named in answers to a Messages client (the route alias).
    pub(crate) alias: String,
}

impl Translator {
    pub(crate) fn upstream_api(&self, b: &CompiledBackend) -> WireApi {
        match self.decoder {
            None => WireApi::OpenAI,
            Some(_) => b.cfg.api,
        }
    }

    /// A whole answer: the client body and the usage.
    pub(crate) fn whole(&self, b: &CompiledBackend, v: &Value) -> Result<(Value, UsageReport), TranslateError> {
        let alias = self.alias.as_str();
        match (&self.decoder, &self.encoder) {
            (Some(_), Encoder::Chat) => {
                let a = native_answer(b.cfg.api, &b.cfg.model, v)?;
                let body = serde_json::to_value(&a.completion)
                    .map_err(|e| TranslateError::invalid("(answer)", e.to_string()))?;
                Ok((body, a.usage))
            }
            (Some(_), Encoder::Messages(_)) => {
                let a = native_answer(b.cfg.api, &b.cfg.model, v)?;
                let chat = serde_json::to_value(&a.completion)
                    .map_err(|e| TranslateError::invalid("(answer)", e.to_string()))?;
                // The translated completion carries OpenAI-shaped usage.
                let mut m = super::translate::chat_response_to_messages(&chat, ProviderFamily::OpenAI, alias)?;
                // The native usage (cache writes, thinking) is the billed one.
                m.body["usage"] = a.usage.anthropic_usage();
                Ok((m.body, a.usage))
            }
            (_, Encoder::Raw) => Ok((v.clone(), UsageReport::parse(b.cfg.family, v)?)),
            (None, _) => {
                let m = super::translate::chat_response_to_messages(v, b.cfg.family, alias)?;
                Ok((m.body, m.usage))
            }
        }
    }

    /// Feeds upstream bytes; returns how many data events (chunks) they completed.
    fn push(&mut self, bytes: &[u8], out: &mut Vec<Bytes>) -> Result<u64, TranslateError> {
        match (&mut self.decoder, &mut self.encoder) {
            (None, Encoder::Messages(enc)) => {
                let evs = enc.push(bytes)?;
                out.extend(evs.iter().map(|ev| Bytes::from(ev.to_sse())));
                Ok(evs.len() as u64)
            }
            (None, Encoder::Chat | Encoder::Raw) => {
                out.push(Bytes::copy_from_slice(bytes));
                Ok(1)
            }
            (Some(dec), Encoder::Raw) => {
                // Chunks are discarded; an upstream `error` event goes out as is.
                let mut forwarded = Vec::new();
                let r = dec.push_forwarding(bytes, &mut forwarded);
                if !forwarded.is_empty() {
                    out.push(Bytes::from(forwarded));
                }
                r.map(|outs| outs.len() as u64)
            }
            (Some(dec), enc) => {
                let outs = dec.push(bytes)?;
                let n = outs.len() as u64;
                encode(outs, enc, out).map(|()| n)
            }
        }
    }

    fn finish(&mut self, out: &mut Vec<Bytes>) -> Result<UsageReport, TranslateError> {
        match (&mut self.decoder, &mut self.encoder) {
            (None, Encoder::Messages(enc)) => {
                let (evs, usage) = enc.finish()?;
                out.extend(evs.iter().map(|e| Bytes::from(e.to_sse())));
                Ok(usage)
            }
            (None, Encoder::Chat | Encoder::Raw) => {
                Err(TranslateError::Truncated { format: "OpenAI chat", expected: "usage" })
            }
            (Some(dec), Encoder::Raw) => {
                let mut forwarded = Vec::new();
                let r = dec.finish_forwarding(&mut forwarded);
                if !forwarded.is_empty() {
                    out.push(Bytes::from(forwarded));
                }
                Ok(r?.1)
            }
            (Some(dec), enc) => {
                let (outs, usage) = dec.finish()?;
                encode(outs, enc, out)?;
                match enc {
                    Encoder::Chat => out.push(Bytes::from_static(b"data: [DONE]\n\n")),
                    Encoder::Raw => {}
                    Encoder::Messages(m) => {
                        m.set_usage(usage);
                        let (evs, _) = m.finish()?;
                        out.extend(evs.iter().map(|e| Bytes::from(e.to_sse())));
                    }
                }
                Ok(usage)
            }
        }
    }

    fn partial_usage(&self) -> Option<UsageReport> {
        self.decoder.as_ref().and_then(Decoder::partial_usage)
    }
}

fn encode(outs: Vec<StreamOutput>, enc: &mut Encoder, out: &mut Vec<Bytes>) -> Result<(), TranslateError> {
    for o in outs {
        match o {
            StreamOutput::Chunk(c) => match enc {
                Encoder::Chat => out.push(Bytes::from(c.to_sse())),
                Encoder::Raw => {}
                Encoder::Messages(m) => {
                    for ev in m.push_chunk(&c)? {
                        out.push(Bytes::from(ev.to_sse()));
                    }
                }
            },
            StreamOutput::Error(e) => return Err(TranslateError::Upstream(e)),
        }
    }
    Ok(())
}

fn error_event(surface: Surface, e: &TranslateError) -> Bytes {
    let (status, kind, message) = match e {
        TranslateError::Upstream(u) => (u.client_status(), None, u.to_string()),
        other => (502, Some("api_error"), other.to_string()),
    };
    match surface {
        Surface::OpenAI(_) => {
            let body = match e {
                TranslateError::Upstream(u) => u.openai_body(),
                _ => {
                    json!({ "error": { "message": message, "type": "api_error", "param": null, "code": "upstream_stream_error" } })
                }
            };
            Bytes::from(format!("data: {body}\n\n"))
        }
        Surface::Messages => {
            let kind = kind.unwrap_or_else(|| super::translate::errors::anthropic_type_for_status(status));
            let body = json!({ "type": "error", "error": { "type": kind, "message": message } });
            Bytes::from(format!("event: error\ndata: {body}\n\n"))
        }
    }
}

pub(crate) struct StreamMeter {
    pub(crate) b: Arc<CompiledBackend>,
    pub(crate) endpoint: Endpoint,
    pub(crate) started: Instant,
    pub(crate) ttfb: Duration,
    pub(crate) surface: Surface,
    /// The Hard budget reservation of the attempt, settled by the bill.
    pub(crate) hold: Option<super::admission::Hold>,
    /// The client's request size (the estimate's input when no usage is known).
    pub(crate) request_bytes: usize,
}

/// The translated stream; bills once, when it ends or is dropped (client gone).
pub(crate) struct TranslatedStream {
    first: Option<Bytes>,
    body: BodyStream,
    translator: Translator,
    pending: VecDeque<Bytes>,
    idle: Duration,
    idle_timer: Pin<Box<Sleep>>,
    total_timer: Pin<Box<Sleep>>,
    done: bool,
    meter: Option<StreamMeter>,
    /// Upstream data events received (the estimate's output when no usage is known).
    data_events: u64,
    /// What happens when the client leaves first (see [`DrainBounds`]).
    drain: DrainBounds,
    deadline: Instant,
}

/// When the client leaves before the end, the upstream is read on in the background (at most
/// `timeout` and `bytes`, never past the request's deadline) so the usage the provider bills is
/// metered exactly, as on the pass-through; a stream cut by the shutdown grace (`cut`
/// cancelled) is not drained and bills what is known as `shutdown_cut`.
#[derive(Default)]
pub(crate) struct DrainBounds {
    pub(crate) cut: Option<tokio_util::sync::CancellationToken>,
    pub(crate) timeout: Duration,
    pub(crate) bytes: usize,
}

impl TranslatedStream {
    /// A stream starting with the upstream's `first` chunk; ends at `deadline` or after `idle`
    /// without a chunk.
    pub(crate) fn new(
        first: Bytes,
        body: BodyStream,
        translator: Translator,
        idle: Duration,
        deadline: Instant,
        meter: StreamMeter,
    ) -> Self {
        TranslatedStream {
            first: Some(first),
            body,
            translator,
            pending: VecDeque::new(),
            idle,
            idle_timer: Box::pin(tokio::time::sleep(idle)),
            total_timer: Box::pin(tokio::time::sleep_until(deadline)),
            done: false,
            meter: Some(meter),
            data_events: 0,
            drain: DrainBounds::default(),
            deadline,
        }
    }

    /// The stream with its client-gone bounds (see [`DrainBounds`]).
    pub(crate) fn with_drain(mut self, drain: DrainBounds) -> Self {
        self.drain = drain;
        self
    }

    fn end(&mut self, outcome: Outcome, usage: Option<UsageReport>, missing: &str) {
        let Some(m) = self.meter.take() else { return };
        settle(m, &self.translator, self.data_events, outcome, usage, missing);
    }

    fn surface(&self) -> Surface {
        self.meter.as_ref().map_or(Surface::OpenAI(Endpoint::ChatCompletions), |m| m.surface)
    }

    fn fail(&mut self, outcome: Outcome, e: &TranslateError, missing: &str) {
        let forwarded = matches!(self.translator.encoder, Encoder::Raw) && matches!(e, TranslateError::Upstream(_));
        if !forwarded {
            let ev = error_event(self.surface(), e);
            self.pending.push_back(ev);
        }
        self.end(outcome, None, missing);
        self.done = true;
    }

    fn feed(&mut self, chunk: &[u8]) {
        let mut out = Vec::new();
        match self.translator.push(chunk, &mut out) {
            Ok(n) => {
                self.data_events = self.data_events.saturating_add(n);
                self.pending.extend(out);
            }
            Err(e) => {
                self.pending.extend(out);
                self.fail(Outcome::UpstreamError, &e, "stream_interrupted");
            }
        }
    }
}

/// Meters a finished stream: outcome, durations, and its usage (else the partial usage known,
/// else `usage_missing{missing}` and an estimate).
fn settle(
    m: StreamMeter,
    translator: &Translator,
    data_events: u64,
    outcome: Outcome,
    usage: Option<UsageReport>,
    missing: &str,
) {
    let latency = (outcome == Outcome::Ok).then_some(m.ttfb);
    m.b.cell.record_outcome(outcome, latency);
    let secs = m.started.elapsed().as_secs_f64();
    m.b.duration.observe(secs);
    m.b.gen_ai.duration(m.endpoint, outcome, secs);
    let usage = usage.or_else(|| translator.partial_usage()).map(|u| u.counts).ok_or(UsageError::Missing);
    super::admission::scoped_sync(m.hold, || {
        super::answer::bill(&m.b, m.endpoint, usage, Some(missing), m.request_bytes, data_events)
    });
}

/// Reads the rest of a stream whose client left, for its usage (see [`DrainBounds`]).
async fn drain(
    mut body: BodyStream,
    mut tr: Translator,
    m: StreamMeter,
    until: Instant,
    max_bytes: usize,
    events: u64,
) {
    let read = async {
        let (mut seen, mut events, mut sink) = (0usize, events, Vec::new());
        while let Some(Ok(chunk)) = body.next().await {
            seen = seen.saturating_add(chunk.len());
            sink.clear();
            match tr.push(&chunk, &mut sink) {
                Ok(n) => events = events.saturating_add(n),
                Err(_) => return (None, events),
            }
            if seen > max_bytes {
                return (None, events);
            }
        }
        sink.clear();
        (tr.finish(&mut sink).ok(), events)
    };
    let (usage, events) = match tokio::time::timeout_at(until, read).await {
        Ok(r) => r,
        Err(_) => (None, events),
    };
    settle(m, &tr, events, Outcome::Ok, usage, "client_disconnected");
}

impl Drop for TranslatedStream {
    fn drop(&mut self) {
        let Some(m) = self.meter.take() else { return };
        if self.drain.cut.as_ref().is_some_and(tokio_util::sync::CancellationToken::is_cancelled) {
            settle(m, &self.translator, self.data_events, Outcome::Ok, None, "shutdown_cut");
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let until = self.deadline.min(Instant::now() + self.drain.timeout);
                let body = std::mem::replace(&mut self.body, Box::pin(futures::stream::empty()));
                let placeholder = Translator { decoder: None, encoder: Encoder::Raw, alias: String::new() };
                let tr = std::mem::replace(&mut self.translator, placeholder);
                rt.spawn(drain(body, tr, m, until, self.drain.bytes, self.data_events));
            }
            Err(_) => settle(m, &self.translator, self.data_events, Outcome::Ok, None, "client_disconnected"),
        }
    }
}

impl Stream for TranslatedStream {
    type Item = Result<Bytes, io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(b) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(b)));
            }
            if this.done {
                return Poll::Ready(None);
            }
            if let Some(first) = this.first.take() {
                this.feed(&first);
                continue;
            }
            if this.total_timer.as_mut().poll(cx).is_ready() {
                let e = TranslateError::invalid("(stream)", "the request's total time limit passed");
                this.fail(Outcome::Timeout, &e, "stream_interrupted");
                continue;
            }
            if this.idle_timer.as_mut().poll(cx).is_ready() {
                let e = TranslateError::invalid("(stream)", "the upstream stream went silent past the idle timeout");
                this.fail(Outcome::Timeout, &e, "stream_interrupted");
                continue;
            }
            match this.body.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => {
                    let idle = this.idle;
                    this.idle_timer.as_mut().reset(Instant::now() + idle);
                    this.feed(&chunk);
                }
                Poll::Ready(Some(Err(e))) => {
                    let e = TranslateError::invalid("(stream)", format!("the upstream stream broke: {e}"));
                    this.fail(Outcome::UpstreamError, &e, "stream_interrupted");
                }
                Poll::Ready(None) => {
                    let mut out = Vec::new();
                    match this.translator.finish(&mut out) {
                        Ok(usage) => {
                            this.pending.extend(out);
                            this.end(Outcome::Ok, Some(usage), "stream_interrupted");
                            this.done = true;
                        }
                        Err(e) => {
                            this.pending.extend(out);
                            this.fail(Outcome::UpstreamError, &e, "stream_interrupted");
                        }
                    }
                }
            }
        }
    }
}
