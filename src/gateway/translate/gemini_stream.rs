//! Gemini `streamGenerateContent?alt=sse` → OpenAI `chat.completion.chunk`s, incrementally.
//!
//! Each SSE `data:` is a whole `GenerateContentResponse`, translated by the answer rules of
//! [`super::gemini`] as soon as its event is complete (bytes may be split anywhere; one event is
//! bounded by [`super::MAX_EVENT_BYTES`]). The first event yields the role chunk; thought parts
//! → `reasoning_content`, text → `content`, a function call (Gemini sends it whole) → one
//! `tool_calls` chunk with the whole arguments; the first `finishReason` (or a blocked prompt)
//! → the finishing chunk, after which parts are ignored but a later `usageMetadata` still
//! updates the usage. The latest `usageMetadata` is final: [`GeminiStream::finish`] returns it
//! and, if the client asked, emits the usage chunk. A body that ends before any `finishReason`
//! is [`TranslateError::Truncated`]; an `{"error": ...}` event is [`StreamOutput::Error`] and
//! then [`TranslateError::Upstream`] from `finish`.

use serde_json::{Value, json};

use super::anthropic_stream::StreamOutput;
use super::errors::{UpstreamError, gemini_error};
use super::gemini::{call_id, finish_reason, pieces};
use super::openai::{ChatChunk, Delta, FunctionDelta, ToolCallDelta};
use super::sse::SseParser;
use super::{MAX_EVENT_BYTES, TranslateError, UsageReport};
use crate::config::ProviderFamily;

/// The incremental `streamGenerateContent?alt=sse` translator; see the module docs.
#[derive(Debug, Clone)]
pub struct GeminiStream {
    sse: SseParser,
    model: String,
    created: u64,
    include_usage: bool,
    id: Option<String>,
    started: bool,
    next_call: u32,
    finished: bool,
    failed: Option<UpstreamError>,
    usage: Option<Value>,
}

impl GeminiStream {
    /// A translator for `model` whose chunks carry `created`; `include_usage` adds the usage
    /// chunk at the end.
    pub fn new(model: &str, created: u64, include_usage: bool) -> Self {
        Self::with_limit(model, created, include_usage, MAX_EVENT_BYTES)
    }

    /// As [`GeminiStream::new`] with another per-event byte limit.
    pub fn with_limit(model: &str, created: u64, include_usage: bool, max_event_bytes: usize) -> Self {
        GeminiStream {
            sse: SseParser::new(max_event_bytes),
            model: model.to_string(),
            created,
            include_usage,
            id: None,
            started: false,
            next_call: 0,
            finished: false,
            failed: None,
            usage: None,
        }
    }

    fn id(&self) -> &str {
        self.id.as_deref().unwrap_or("gemini")
    }

    fn chunk(&self, delta: Delta, finish: Option<String>) -> StreamOutput {
        StreamOutput::Chunk(ChatChunk::delta(self.id(), self.created, &self.model, delta, finish))
    }

    /// Feeds upstream bytes; returns the outputs they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<StreamOutput>, TranslateError> {
        let mut out = Vec::new();
        for ev in self.sse.push(bytes)? {
            self.data(&ev.data, &mut out)?;
        }
        Ok(out)
    }

    /// The end of the upstream body: the last outputs (the usage chunk if asked) and the usage.
    pub fn finish(&mut self) -> Result<(Vec<StreamOutput>, UsageReport), TranslateError> {
        let mut out = Vec::new();
        if let Some(ev) = self.sse.finish()? {
            self.data(&ev.data, &mut out)?;
        }
        if let Some(e) = &self.failed {
            return Err(TranslateError::Upstream(e.clone()));
        }
        if !self.finished {
            return Err(TranslateError::Truncated { format: "Gemini", expected: "a finishReason" });
        }
        let meta = self.usage.clone().ok_or(TranslateError::Usage(crate::pricing::UsageError::Missing))?;
        let usage = UsageReport::parse(ProviderFamily::Gemini, &json!({ "usageMetadata": meta }))?;
        if self.include_usage {
            out.push(StreamOutput::Chunk(ChatChunk::usage(self.id(), self.created, &self.model, usage.openai_usage())));
        }
        Ok((out, usage))
    }

    /// The usage known so far (for metering a stream cut short).
    pub fn partial_usage(&self) -> Option<UsageReport> {
        let meta = self.usage.clone()?;
        UsageReport::parse(ProviderFamily::Gemini, &json!({ "usageMetadata": meta })).ok()
    }

    fn data(&mut self, data: &str, out: &mut Vec<StreamOutput>) -> Result<(), TranslateError> {
        if self.failed.is_some() {
            return Ok(());
        }
        let body: Value = serde_json::from_str(data)
            .map_err(|e| TranslateError::invalid("(stream event data)", format!("not JSON: {e}")))?;
        if body.get("error").is_some() {
            let e = gemini_error(0, data.as_bytes());
            self.failed = Some(e.clone());
            out.push(StreamOutput::Error(e));
            return Ok(());
        }
        // A chunk after the finishing one may still carry (final) usage.
        if let Some(m) = body.get("usageMetadata").filter(|m| !m.is_null()) {
            self.usage = Some(m.clone());
        }
        if self.finished {
            return Ok(());
        }
        if self.id.is_none() {
            self.id = body.get("responseId").and_then(Value::as_str).map(str::to_string);
        }
        if !self.started {
            self.started = true;
            out.push(self.chunk(
                Delta { role: Some("assistant".into()), content: Some(String::new()), ..Delta::default() },
                None,
            ));
        }
        let p = pieces(&body)?;
        if !p.thoughts.is_empty() {
            out.push(self.chunk(Delta { reasoning_content: Some(p.thoughts), ..Delta::default() }, None));
        }
        if !p.text.is_empty() {
            out.push(self.chunk(Delta { content: Some(p.text), ..Delta::default() }, None));
        }
        for (id, name, arguments) in p.calls {
            let n = self.next_call;
            self.next_call += 1;
            let call = ToolCallDelta {
                index: n,
                id: Some(call_id(id, n)),
                kind: Some("function".into()),
                function: Some(FunctionDelta { name: Some(name), arguments: Some(arguments) }),
            };
            out.push(self.chunk(Delta { tool_calls: Some(vec![call]), ..Delta::default() }, None));
        }
        if p.finish.is_some() || p.blocked {
            self.finished = true;
            let reason = if p.blocked {
                "content_filter"
            } else {
                finish_reason(p.finish.as_deref().unwrap_or("STOP"), self.next_call > 0)
            };
            out.push(self.chunk(Delta::default(), Some(reason.to_string())));
        }
        Ok(())
    }
}
