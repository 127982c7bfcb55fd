//! OpenAI chat chunks → the Anthropic Messages SSE event sequence (`/v1/messages` clients
//! served by an OpenAI-compatible or, through [`super::GeminiStream`], a Gemini backend).
//!
//! Rules: the first chunk yields `message_start` (its usage is zeros: OpenAI streams report
//! usage only at the end; the whole usage is in `message_delta`). Text opens a `text` block,
//! a tool call (a new `index`) opens a `tool_use` block, and a block closes
//! (`content_block_stop`) when a block of another kind or another tool call opens, or at the
//! end. Argument fragments are `input_json_delta`s. `reasoning_content` is dropped (a thinking
//! block needs a signature). At `data: [DONE]`, or at the end of a body whose `finish_reason`
//! came without it, `message_delta` (stop reason by [`stop_reason`], usage by the backend
//! family's rule) and `message_stop` follow. Chunks after that are ignored.
//!
//! Errors: a body that ends before any `finish_reason` is [`TranslateError::Truncated`]; usage
//! that never came is [`TranslateError::Usage`] (never zero); an `{"error": ...}` chunk yields
//! an Anthropic `error` event and [`TranslateError::Upstream`]. One SSE event is bounded by
//! [`super::MAX_EVENT_BYTES`].

use serde_json::{Value, json};

use super::errors::openai_error;
use super::inbound::stop_reason;
use super::openai::ChatChunk;
use super::sse::{SseParser, write_event};
use super::{MAX_EVENT_BYTES, TranslateError, UsageReport};
use crate::config::ProviderFamily;

/// One Anthropic SSE event.
#[derive(Debug, Clone, PartialEq)]
pub struct MessagesEvent {
    /// The event name (= the data's `type`).
    pub event: &'static str,
    /// The event data.
    pub data: Value,
}

impl MessagesEvent {
    /// `event: NAME\ndata: {...}\n\n`.
    pub fn to_sse(&self) -> String {
        write_event(self.event, &self.data.to_string())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    None,
    Text,
    Tool(u64),
}

/// Chat chunks (OpenAI SSE bytes, or chunk objects) → the Messages event sequence; see the
/// module docs.
#[derive(Debug, Clone)]
pub struct ChatToMessagesStream {
    sse: SseParser,
    family: ProviderFamily,
    model: String,
    started: bool,
    next_block: u64,
    open: Open,
    stop: Option<&'static str>,
    usage: Option<UsageReport>,
    done: bool,
}

impl ChatToMessagesStream {
    /// A translator for a backend of `family`, naming `model` in `message_start`.
    pub fn new(family: ProviderFamily, model: &str) -> Self {
        ChatToMessagesStream {
            sse: SseParser::new(MAX_EVENT_BYTES),
            family,
            model: model.to_string(),
            started: false,
            next_block: 0,
            open: Open::None,
            stop: None,
            usage: None,
            done: false,
        }
    }

    /// Feeds OpenAI SSE bytes.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<MessagesEvent>, TranslateError> {
        let mut out = Vec::new();
        for ev in self.sse.push(bytes)? {
            self.data(&ev.data, &mut out)?;
        }
        Ok(out)
    }

    /// Feeds one chunk (e.g. from [`super::GeminiStream`]).
    pub fn push_chunk(&mut self, chunk: &ChatChunk) -> Result<Vec<MessagesEvent>, TranslateError> {
        let v = serde_json::to_value(chunk).map_err(|e| TranslateError::invalid("(chunk)", e.to_string()))?;
        let mut out = Vec::new();
        self.value(&v, &mut out)?;
        Ok(out)
    }

    /// Sets the usage (when it came another way, e.g. a Gemini stream's `usageMetadata`).
    pub fn set_usage(&mut self, usage: UsageReport) {
        self.usage = Some(usage);
    }

    /// The end of the body: the closing events and the usage.
    pub fn finish(&mut self) -> Result<(Vec<MessagesEvent>, UsageReport), TranslateError> {
        let mut out = Vec::new();
        if let Some(ev) = self.sse.finish()? {
            self.data(&ev.data, &mut out)?;
        }
        if !self.done {
            if self.stop.is_none() {
                return Err(TranslateError::Truncated { format: "OpenAI chat", expected: "a finish_reason" });
            }
            self.close(&mut out)?;
        }
        let usage = self.usage.ok_or(TranslateError::Usage(crate::pricing::UsageError::Missing))?;
        Ok((out, usage))
    }

    fn data(&mut self, data: &str, out: &mut Vec<MessagesEvent>) -> Result<(), TranslateError> {
        if data.trim() == "[DONE]" {
            if !self.done {
                self.close(out)?;
            }
            return Ok(());
        }
        let v: Value = serde_json::from_str(data)
            .map_err(|e| TranslateError::invalid("(stream chunk)", format!("not JSON: {e}")))?;
        self.value(&v, out)
    }

    fn close_block(&mut self, out: &mut Vec<MessagesEvent>) {
        if self.open != Open::None {
            out.push(ev("content_block_stop", json!({ "type": "content_block_stop", "index": self.next_block - 1 })));
            self.open = Open::None;
        }
    }

    fn open_block(&mut self, open: Open, block: Value, out: &mut Vec<MessagesEvent>) {
        self.close_block(out);
        out.push(ev(
            "content_block_start",
            json!({ "type": "content_block_start", "index": self.next_block, "content_block": block }),
        ));
        self.next_block += 1;
        self.open = open;
    }

    fn close(&mut self, out: &mut Vec<MessagesEvent>) -> Result<(), TranslateError> {
        self.done = true;
        self.close_block(out);
        let usage = self.usage.ok_or(TranslateError::Usage(crate::pricing::UsageError::Missing))?;
        out.push(ev(
            "message_delta",
            json!({ "type": "message_delta", "delta": { "stop_reason": self.stop.unwrap_or("end_turn"), "stop_sequence": null }, "usage": usage.anthropic_usage() }),
        ));
        out.push(ev("message_stop", json!({ "type": "message_stop" })));
        Ok(())
    }

    fn value(&mut self, v: &Value, out: &mut Vec<MessagesEvent>) -> Result<(), TranslateError> {
        if self.done {
            return Ok(());
        }
        if v.get("error").is_some() {
            self.done = true;
            let e = openai_error(0, v.to_string().as_bytes());
            out.push(ev("error", e.anthropic_body()));
            return Err(TranslateError::Upstream(e));
        }
        if !self.started {
            self.started = true;
            out.push(ev(
                "message_start",
                json!({ "type": "message_start", "message": {
                    "id": v.get("id").cloned().unwrap_or_default(), "type": "message", "role": "assistant",
                    "content": [], "model": self.model, "stop_reason": null, "stop_sequence": null,
                    "usage": { "input_tokens": 0, "output_tokens": 0 } } }),
            ));
        }
        if v.get("usage").is_some_and(|u| !u.is_null()) {
            self.usage = Some(UsageReport::parse(self.family, v)?);
        }
        let Some(choice) = v.get("choices").and_then(Value::as_array).and_then(|c| c.first()) else {
            return Ok(());
        };
        let delta = choice.get("delta").cloned().unwrap_or_default();
        if let Some(t) = delta.get("content").and_then(Value::as_str).filter(|t| !t.is_empty()) {
            if self.open != Open::Text {
                self.open_block(Open::Text, json!({ "type": "text", "text": "" }), out);
            }
            out.push(ev("content_block_delta", json!({ "type": "content_block_delta", "index": self.next_block - 1, "delta": { "type": "text_delta", "text": t } })));
        }
        for tc in delta.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
            let idx = tc.get("index").and_then(Value::as_u64).unwrap_or(0);
            if self.open != Open::Tool(idx) {
                let f = tc.get("function").cloned().unwrap_or_default();
                self.open_block(
                    Open::Tool(idx),
                    json!({ "type": "tool_use", "id": tc.get("id").cloned().unwrap_or_default(), "name": f.get("name").cloned().unwrap_or_default(), "input": {} }),
                    out,
                );
            }
            if let Some(a) =
                tc.get("function").and_then(|f| f.get("arguments")).and_then(Value::as_str).filter(|a| !a.is_empty())
            {
                out.push(ev("content_block_delta", json!({ "type": "content_block_delta", "index": self.next_block - 1, "delta": { "type": "input_json_delta", "partial_json": a } })));
            }
        }
        if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
            self.stop = Some(stop_reason(f));
        }
        Ok(())
    }
}

fn ev(event: &'static str, data: Value) -> MessagesEvent {
    MessagesEvent { event, data }
}
