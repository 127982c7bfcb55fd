//! Anthropic Messages SSE → OpenAI `chat.completion.chunk`s, incrementally.
//!
//! [`AnthropicStream`] is fed the upstream body in byte chunks of any size (split anywhere,
//! even inside a UTF-8 character) and returns, per chunk, the client chunks completed by it —
//! nothing is held back beyond the current partial event, which is bounded by
//! [`super::MAX_EVENT_BYTES`] ([`TranslateError::EventTooLarge`] past it).
//!
//! Event rules (the JSON `type` decides; the SSE `event:` name is not needed):
//! - `message_start` → the first chunk, `delta: {role: "assistant", content: ""}`; its `id` and
//!   `model` are used for every chunk; its `usage` starts the usage. A stream has one: a second
//!   `message_start` (before `message_stop`) would replace the usage already reported with its
//!   own, so it is [`TranslateError::Invalid`] and ends the stream; the usage stays what was
//!   seen before it ([`AnthropicStream::partial_usage`]).
//! - `content_block_start`: `text` → a content chunk if it carries text; `tool_use` → a
//!   `tool_calls` chunk with the call's `index` (0-based among the turn's tool calls), `id`,
//!   `type`, `function.name` and empty `arguments`; `thinking` → `reasoning_content` if any.
//! - `content_block_delta`: `text_delta` → `content`; `input_json_delta` → a `tool_calls`
//!   chunk with the argument fragment; `thinking_delta` → `reasoning_content`;
//!   `signature_delta` and `citations_delta` → nothing.
//! - `message_delta` → a chunk with an empty delta and the mapped `finish_reason`; its `usage`
//!   (cumulative) overrides the `message_start` counts key by key.
//! - `message_stop` → the usage is final; a usage chunk (`choices: []`) follows if the client
//!   asked for it (`include_usage`). Events after it are ignored.
//! - `ping`, `content_block_stop`, unknown event types → nothing.
//! - `error` → [`StreamOutput::Error`] (classified like a non-streamed error body); the stream
//!   is over and [`AnthropicStream::finish`] reports [`TranslateError::Upstream`].
//!
//! A body that ends before `message_stop` is [`TranslateError::Truncated`] from
//! [`AnthropicStream::finish`]; [`AnthropicStream::partial_usage`] then gives what can still be
//! metered (the input counts from `message_start` and the latest output count).

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use super::anthropic::finish_reason;
use super::errors::{UpstreamError, anthropic_error};
use super::openai::{ChatChunk, Delta, FunctionDelta, ToolCallDelta};
use super::sse::{SseEvent, SseParser};
use super::{MAX_EVENT_BYTES, TranslateError, UsageReport};
use crate::config::ProviderFamily;

/// One translated output of a stream.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamOutput {
    /// A client chunk.
    Chunk(ChatChunk),
    /// The upstream reported an error inside the stream.
    Error(UpstreamError),
}

/// The incremental translator; see the module docs.
#[derive(Debug, Clone)]
pub struct AnthropicStream {
    sse: SseParser,
    created: u64,
    include_usage: bool,
    id: String,
    model: String,
    usage: Map<String, Value>,
    tool_index: HashMap<u64, u32>,
    next_tool: u32,
    started: bool,
    stopped: bool,
    failed: Option<UpstreamError>,
    final_usage: Option<UsageReport>,
}

impl AnthropicStream {
    /// A translator whose chunks carry `created`; `include_usage` adds the usage chunk.
    pub fn new(created: u64, include_usage: bool) -> Self {
        Self::with_limit(created, include_usage, MAX_EVENT_BYTES)
    }

    /// As [`AnthropicStream::new`] with another per-event byte limit.
    pub fn with_limit(created: u64, include_usage: bool, max_event_bytes: usize) -> Self {
        AnthropicStream {
            sse: SseParser::new(max_event_bytes),
            created,
            include_usage,
            id: String::new(),
            model: String::new(),
            usage: Map::new(),
            tool_index: HashMap::new(),
            next_tool: 0,
            started: false,
            stopped: false,
            failed: None,
            final_usage: None,
        }
    }

    /// Feeds upstream bytes; returns the outputs they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<StreamOutput>, TranslateError> {
        self.push_inner(bytes, None)
    }

    /// As [`push`](Self::push), appending to `forwarded` the exact bytes of every event taken
    /// (for a pass-through of the upstream stream): an event that breaks the stream, and what
    /// follows it, is not among them; an incomplete event is added once complete.
    pub fn push_forwarding(
        &mut self,
        bytes: &[u8],
        forwarded: &mut Vec<u8>,
    ) -> Result<Vec<StreamOutput>, TranslateError> {
        self.push_inner(bytes, Some(forwarded))
    }

    fn push_inner(
        &mut self,
        bytes: &[u8],
        mut forwarded: Option<&mut Vec<u8>>,
    ) -> Result<Vec<StreamOutput>, TranslateError> {
        let mut out = Vec::new();
        // The parser is taken out while its events are handled (they need `self`).
        let mut sse = std::mem::replace(&mut self.sse, SseParser::new(0));
        let r = sse.push_each(bytes, |ev, raw| {
            if let Some(ev) = ev {
                self.event(&ev, &mut out)?;
            }
            if let Some(f) = forwarded.as_deref_mut() {
                f.extend_from_slice(raw);
            }
            Ok(())
        });
        self.sse = sse;
        r.map(|()| out)
    }

    /// The end of the upstream body: the final usage, or why there is none.
    pub fn finish(&mut self) -> Result<(Vec<StreamOutput>, UsageReport), TranslateError> {
        self.finish_inner(None)
    }

    /// As [`finish`](Self::finish), appending the bytes of a last event without its blank line
    /// to `forwarded` (see [`push_forwarding`](Self::push_forwarding)).
    pub fn finish_forwarding(
        &mut self,
        forwarded: &mut Vec<u8>,
    ) -> Result<(Vec<StreamOutput>, UsageReport), TranslateError> {
        self.finish_inner(Some(forwarded))
    }

    fn finish_inner(
        &mut self,
        forwarded: Option<&mut Vec<u8>>,
    ) -> Result<(Vec<StreamOutput>, UsageReport), TranslateError> {
        let mut out = Vec::new();
        let mut sse = std::mem::replace(&mut self.sse, SseParser::new(0));
        let r = sse.finish_each(|ev, raw| {
            if let Some(ev) = ev {
                self.event(&ev, &mut out)?;
            }
            if let Some(f) = forwarded {
                f.extend_from_slice(raw);
            }
            Ok(())
        });
        self.sse = sse;
        r?;
        if let Some(e) = &self.failed {
            return Err(TranslateError::Upstream(e.clone()));
        }
        match self.final_usage {
            Some(u) => Ok((out, u)),
            None => Err(TranslateError::Truncated { format: "Anthropic Messages", expected: "message_stop" }),
        }
    }

    /// The usage known so far (for metering a stream cut short); `None` before `message_start`.
    pub fn partial_usage(&self) -> Option<UsageReport> {
        if self.usage.is_empty() {
            return None;
        }
        let mut usage = self.usage.clone();
        usage.entry("output_tokens").or_insert(Value::from(0u64));
        UsageReport::parse(ProviderFamily::Anthropic, &json!({ "usage": usage })).ok()
    }

    fn chunk(&self, delta: Delta, finish: Option<String>) -> StreamOutput {
        StreamOutput::Chunk(ChatChunk::delta(&self.id, self.created, &self.model, delta, finish))
    }

    fn tool_chunk(&self, call: ToolCallDelta) -> StreamOutput {
        self.chunk(Delta { tool_calls: Some(vec![call]), ..Delta::default() }, None)
    }

    fn event(&mut self, ev: &SseEvent, out: &mut Vec<StreamOutput>) -> Result<(), TranslateError> {
        if self.stopped || self.failed.is_some() {
            return Ok(());
        }
        let data: Value = serde_json::from_str(&ev.data)
            .map_err(|e| TranslateError::invalid("(stream event data)", format!("not JSON: {e}")))?;
        let kind = data.get("type").and_then(Value::as_str).unwrap_or_default();
        let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
        match kind {
            "message_start" => {
                if self.started {
                    return Err(TranslateError::invalid(
                        "(stream event).type",
                        "a second `message_start` in one stream (a stream has one; the usage already reported stands)",
                    ));
                }
                self.started = true;
                let msg = data.get("message").cloned().unwrap_or_default();
                self.id = text(&msg, "id");
                self.model = text(&msg, "model");
                if let Some(Value::Object(u)) = msg.get("usage") {
                    self.usage = u.clone();
                }
                out.push(self.chunk(
                    Delta { role: Some("assistant".into()), content: Some(String::new()), ..Delta::default() },
                    None,
                ));
            }
            "content_block_start" => {
                let index = block_index(&data)?;
                let block = data.get("content_block").cloned().unwrap_or_default();
                match block.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        let t = text(&block, "text");
                        if !t.is_empty() {
                            out.push(self.chunk(Delta { content: Some(t), ..Delta::default() }, None));
                        }
                    }
                    Some("thinking") => {
                        let t = text(&block, "thinking");
                        if !t.is_empty() {
                            out.push(self.chunk(Delta { reasoning_content: Some(t), ..Delta::default() }, None));
                        }
                    }
                    Some("tool_use") => {
                        let call = self.next_tool;
                        self.next_tool += 1;
                        self.tool_index.insert(index, call);
                        out.push(self.tool_chunk(ToolCallDelta {
                            index: call,
                            id: Some(text(&block, "id")),
                            kind: Some("function".into()),
                            function: Some(FunctionDelta {
                                name: Some(text(&block, "name")),
                                arguments: Some(String::new()),
                            }),
                        }));
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let index = block_index(&data)?;
                let delta = data.get("delta").cloned().unwrap_or_default();
                match delta.get("type").and_then(Value::as_str) {
                    Some("text_delta") => {
                        out.push(self.chunk(Delta { content: Some(text(&delta, "text")), ..Delta::default() }, None));
                    }
                    Some("thinking_delta") => {
                        out.push(self.chunk(
                            Delta { reasoning_content: Some(text(&delta, "thinking")), ..Delta::default() },
                            None,
                        ))
                    }
                    Some("input_json_delta") => {
                        let call = *self.tool_index.get(&index).ok_or_else(|| {
                            TranslateError::invalid(
                                "content_block_delta.index",
                                format!("input_json_delta for block {index}, which is not a tool_use block"),
                            )
                        })?;
                        let part = text(&delta, "partial_json");
                        if !part.is_empty() {
                            out.push(self.tool_chunk(ToolCallDelta {
                                index: call,
                                id: None,
                                kind: None,
                                function: Some(FunctionDelta { name: None, arguments: Some(part) }),
                            }));
                        }
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(Value::Object(u)) = data.get("usage") {
                    for (k, v) in u {
                        if !v.is_null() {
                            self.usage.insert(k.clone(), v.clone());
                        }
                    }
                }
                if let Some(reason) = data.get("delta").and_then(|d| d.get("stop_reason")).and_then(Value::as_str) {
                    out.push(self.chunk(Delta::default(), Some(finish_reason(reason).to_string())));
                }
            }
            "message_stop" => {
                self.stopped = true;
                let usage = UsageReport::parse(ProviderFamily::Anthropic, &json!({ "usage": self.usage }))?;
                self.final_usage = Some(usage);
                if self.include_usage {
                    out.push(StreamOutput::Chunk(ChatChunk::usage(
                        &self.id,
                        self.created,
                        &self.model,
                        usage.openai_usage(),
                    )));
                }
            }
            "error" => {
                // A stream error has no HTTP status of its own; 529 and 500 are what the same
                // error types carry outside a stream, and the classification follows the type.
                let e = anthropic_error(0, ev.data.as_bytes());
                self.failed = Some(e.clone());
                out.push(StreamOutput::Error(e));
            }
            _ => {}
        }
        Ok(())
    }
}

fn block_index(data: &Value) -> Result<u64, TranslateError> {
    data.get("index")
        .and_then(Value::as_u64)
        .ok_or_else(|| TranslateError::invalid("(stream event).index", "missing or not a non-negative integer"))
}
