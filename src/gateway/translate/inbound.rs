//! The `/v1/messages` client surface: Anthropic Messages clients served by any backend.
//!
//! - To an Anthropic backend the body passes through byte for byte except the `model` value:
//!   [`replace_model`] rewrites only that value's bytes (a top-level `model` that is missing,
//!   duplicated or not in a JSON object is refused).
//! - To an OpenAI-compatible backend (and, through [`super::chat_to_gemini`], to Gemini)
//!   [`messages_to_chat`] builds a chat request: `system` (string or text blocks) → one
//!   `system` message; `text` → text parts; `image` base64/url → `image_url` (data: URL or the
//!   URL); assistant `tool_use` → `tool_calls` (input JSON-encoded); user `tool_result` → one
//!   `tool` message each, before that turn's other content (text only; `is_error` is dropped);
//!   `stop_sequences` → `stop`; `temperature`, `top_p`; `max_tokens` → `max_tokens` or, for
//!   OpenAI itself, `max_completion_tokens`; `thinking.budget_tokens` → `reasoning_effort`
//!   (≤ 2048 `low`, ≤ 8192 `medium`, more `high`; a thinking mode without a budget is dropped); `tools` → function tools; `tool_choice`
//!   auto/any/tool/none → auto/required/named/none and `disable_parallel_tool_use` →
//!   `parallel_tool_calls: false`; `metadata.user_id` → `user`; a stream asks for usage
//!   (`stream_options.include_usage`). Refused: server tools (a tool with a `type` other than
//!   `custom`), `mcp_servers`, `document` and other non-text non-image blocks, images inside a
//!   tool result. Dropped and listed: `top_k`, `cache_control`, assistant `thinking` blocks,
//!   `is_error`, unknown fields.
//! - Answers back: [`chat_response_to_messages`] (text → a `text` block, `tool_calls` →
//!   `tool_use` blocks, `finish_reason` → `stop_reason`, usage by the backend family's rule →
//!   Anthropic usage; `reasoning_content` is dropped: a thinking block needs a signature this
//!   gateway cannot make). [`super::ChatToMessagesStream`] turns chat chunks into
//!   the Messages event sequence: `message_start`, per block `content_block_start`/`_delta`/`_stop` (a block closes
//!   when content of another kind or another tool call starts), then at `data: [DONE]` (or the
//!   end of a body whose `finish_reason` came) `message_delta` with the stop reason and the
//!   whole usage, and `message_stop`. A body that ends before any `finish_reason` is
//!   [`TranslateError::Truncated`]; an `error` object in the stream becomes an `error` event.

use serde::de::IgnoredAny;
use serde_json::{Map, Value, json};

use super::openai::ChatRequest;
use super::{TranslateError, Translated, UsageReport, drop_field};
use crate::config::ProviderFamily;

const TARGET: &str = "OpenAI-compatible";

/// What [`messages_to_chat`] needs besides the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundOptions {
    /// The backend's upstream model id.
    pub model: String,
    /// Write the cap as `max_completion_tokens` (OpenAI's current name) instead of `max_tokens`.
    pub max_completion_tokens: bool,
}

/// An Anthropic Messages request body as a chat request; see the module docs.
pub fn messages_to_chat(body: &Value, opts: &InboundOptions) -> Result<Translated<ChatRequest>, TranslateError> {
    let Value::Object(req) = body else {
        return Err(TranslateError::invalid("(request body)", "expected a JSON object"));
    };
    let mut dropped = Vec::new();
    let mut out = Map::new();
    let mut messages = Vec::new();
    out.insert("model".into(), opts.model.clone().into());
    for (key, value) in req {
        match key.as_str() {
            "model" | "messages" | "system" | "tools" | "tool_choice" => {}
            "max_tokens" => {
                let k = if opts.max_completion_tokens { "max_completion_tokens" } else { "max_tokens" };
                out.insert(k.into(), value.clone());
            }
            "stop_sequences" => {
                out.insert("stop".into(), value.clone());
            }
            "temperature" | "top_p" => {
                out.insert(key.clone(), value.clone());
            }
            "stream" => {
                out.insert("stream".into(), value.clone());
                if value == &Value::Bool(true) {
                    out.insert("stream_options".into(), json!({ "include_usage": true }));
                }
            }
            "thinking" => match (value.get("type").and_then(Value::as_str), value.get("budget_tokens")) {
                (Some("enabled"), Some(b)) => {
                    let b = b
                        .as_u64()
                        .ok_or_else(|| TranslateError::invalid("thinking.budget_tokens", "not an integer"))?;
                    let effort = match b {
                        0..=2048 => "low",
                        2049..=8192 => "medium",
                        _ => "high",
                    };
                    out.insert("reasoning_effort".into(), effort.into());
                }
                (Some("disabled"), _) => {}
                // Another mode (e.g. one without a budget): no OpenAI equivalent to pick.
                _ => drop_field(&mut dropped, "thinking"),
            },
            "metadata" => {
                if let Some(u) = value.get("user_id").and_then(Value::as_str) {
                    out.insert("user".into(), u.into());
                }
            }
            "mcp_servers" => {
                return Err(TranslateError::unsupported(key.clone(), TARGET, "MCP servers run only on Anthropic"));
            }
            _ => drop_field(&mut dropped, key.clone()),
        }
    }
    if let Some(system) = req.get("system") {
        let text = text_of(system, "system", &mut dropped)?;
        if !text.is_empty() {
            messages.push(json!({ "role": "system", "content": text }));
        }
    }
    let turns = req
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| TranslateError::invalid("messages", "missing or not a list"))?;
    for (i, turn) in turns.iter().enumerate() {
        convert_turn(turn, &format!("messages[{i}]"), &mut messages, &mut dropped)?;
    }
    out.insert("messages".into(), Value::Array(messages));
    if let Some(tools) = req.get("tools").and_then(Value::as_array).filter(|t| !t.is_empty()) {
        let mut fns = Vec::new();
        for (i, t) in tools.iter().enumerate() {
            if let Some(kind) = t.get("type").and_then(Value::as_str).filter(|k| *k != "custom") {
                return Err(TranslateError::unsupported(
                    format!("tools[{i}].type"),
                    TARGET,
                    format!("server tool `{kind}` runs only on Anthropic"),
                ));
            }
            if t.get("cache_control").is_some() {
                drop_field(&mut dropped, "cache_control");
            }
            let name = t
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| TranslateError::invalid(format!("tools[{i}].name"), "missing"))?;
            let mut f = Map::new();
            f.insert("name".into(), name.into());
            if let Some(d) = t.get("description") {
                f.insert("description".into(), d.clone());
            }
            f.insert(
                "parameters".into(),
                t.get("input_schema").cloned().unwrap_or_else(|| json!({ "type": "object" })),
            );
            fns.push(json!({ "type": "function", "function": f }));
        }
        out.insert("tools".into(), Value::Array(fns));
        if let Some(tc) = req.get("tool_choice") {
            let choice = match tc.get("type").and_then(Value::as_str) {
                Some("auto") => json!("auto"),
                Some("any") => json!("required"),
                Some("none") => json!("none"),
                Some("tool") => {
                    let name = tc
                        .get("name")
                        .and_then(Value::as_str)
                        .ok_or_else(|| TranslateError::invalid("tool_choice.name", "missing"))?;
                    json!({ "type": "function", "function": { "name": name } })
                }
                _ => return Err(TranslateError::invalid("tool_choice.type", "expected auto, any, tool or none")),
            };
            out.insert("tool_choice".into(), choice);
            if tc.get("disable_parallel_tool_use") == Some(&Value::Bool(true)) {
                out.insert("parallel_tool_calls".into(), Value::Bool(false));
            }
        }
    }
    let value = serde_json::from_value(Value::Object(out))
        .map_err(|e| TranslateError::invalid("(request body)", e.to_string()))?;
    Ok(Translated { value, dropped })
}

/// The text of a `system` or tool-result content: a string, or text blocks joined with `\n\n`.
fn text_of(v: &Value, path: &str, dropped: &mut Vec<String>) -> Result<String, TranslateError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => {
            let mut texts = Vec::new();
            for (k, b) in blocks.iter().enumerate() {
                if b.get("cache_control").is_some() {
                    drop_field(dropped, "cache_control");
                }
                match b.get("type").and_then(Value::as_str) {
                    Some("text") => texts.push(b.get("text").and_then(Value::as_str).unwrap_or_default()),
                    other => {
                        return Err(TranslateError::unsupported(
                            format!("{path}[{k}].type"),
                            TARGET,
                            format!("block type `{}` here (only text)", other.unwrap_or("(none)")),
                        ));
                    }
                }
            }
            Ok(texts.join("\n\n"))
        }
        Value::Null => Ok(String::new()),
        _ => Err(TranslateError::invalid(path, "expected a string or a list of blocks")),
    }
}

fn convert_turn(
    turn: &Value,
    path: &str,
    messages: &mut Vec<Value>,
    dropped: &mut Vec<String>,
) -> Result<(), TranslateError> {
    let role = turn.get("role").and_then(Value::as_str).unwrap_or_default();
    if role != "user" && role != "assistant" {
        return Err(TranslateError::invalid(format!("{path}.role"), format!("`{role}` (expected user or assistant)")));
    }
    let blocks = match turn.get("content") {
        Some(Value::String(s)) => {
            messages.push(json!({ "role": role, "content": s }));
            return Ok(());
        }
        Some(Value::Array(b)) => b,
        _ => return Err(TranslateError::invalid(format!("{path}.content"), "expected a string or a list of blocks")),
    };
    let mut parts = Vec::new();
    let mut calls = Vec::new();
    for (k, b) in blocks.iter().enumerate() {
        let bpath = format!("{path}.content[{k}]");
        if b.get("cache_control").is_some() {
            drop_field(dropped, "cache_control");
        }
        match b.get("type").and_then(Value::as_str).unwrap_or_default() {
            "text" => parts.push(json!({ "type": "text", "text": b.get("text").cloned().unwrap_or_default() })),
            "image" => {
                let src = b.get("source").cloned().unwrap_or_default();
                let url = match src.get("type").and_then(Value::as_str) {
                    Some("base64") => format!(
                        "data:{};base64,{}",
                        src.get("media_type").and_then(Value::as_str).unwrap_or_default(),
                        src.get("data").and_then(Value::as_str).unwrap_or_default()
                    ),
                    Some("url") => src.get("url").and_then(Value::as_str).unwrap_or_default().to_string(),
                    other => {
                        return Err(TranslateError::unsupported(
                            format!("{bpath}.source.type"),
                            TARGET,
                            format!("image source `{}` (base64 or url)", other.unwrap_or("(none)")),
                        ));
                    }
                };
                parts.push(json!({ "type": "image_url", "image_url": { "url": url } }));
            }
            "tool_use" if role == "assistant" => {
                let input = b.get("input").cloned().unwrap_or_else(|| json!({}));
                calls.push(json!({
                    "id": b.get("id").cloned().unwrap_or_default(),
                    "type": "function",
                    "function": { "name": b.get("name").cloned().unwrap_or_default(), "arguments": input.to_string() },
                }));
            }
            "tool_result" if role == "user" => {
                if b.get("is_error").is_some() {
                    drop_field(dropped, "is_error");
                }
                let content = text_of(b.get("content").unwrap_or(&Value::Null), &format!("{bpath}.content"), dropped)?;
                messages.push(json!({ "role": "tool", "tool_call_id": b.get("tool_use_id").cloned().unwrap_or_default(), "content": content }));
            }
            "thinking" | "redacted_thinking" if role == "assistant" => drop_field(dropped, "thinking blocks"),
            other => {
                return Err(TranslateError::unsupported(
                    format!("{bpath}.type"),
                    TARGET,
                    format!("block type `{other}` in a {role} turn"),
                ));
            }
        }
    }
    if role == "assistant" {
        if parts.is_empty() && calls.is_empty() {
            return Ok(());
        }
        let text: String = parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect();
        let mut m = json!({ "role": "assistant", "content": if text.is_empty() { Value::Null } else { text.into() } });
        if !calls.is_empty() {
            m["tool_calls"] = Value::Array(calls);
        }
        messages.push(m);
    } else if !parts.is_empty() {
        messages.push(json!({ "role": "user", "content": parts }));
    }
    Ok(())
}

/// OpenAI `finish_reason` → Anthropic `stop_reason`.
pub fn stop_reason(finish: &str) -> &'static str {
    match finish {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

/// A translated non-streamed `/v1/messages` answer and its metered usage.
#[derive(Debug, Clone, PartialEq)]
pub struct MessagesAnswer {
    /// The Messages API answer.
    pub body: Value,
    /// Exact usage.
    pub usage: UsageReport,
}

/// A `chat.completion` from a backend of `family` as a Messages answer naming `model`.
pub fn chat_response_to_messages(
    body: &Value,
    family: ProviderFamily,
    model: &str,
) -> Result<MessagesAnswer, TranslateError> {
    let usage = UsageReport::parse(family, body)?;
    let choice = body
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
        .ok_or_else(|| TranslateError::invalid("choices", "missing or empty"))?;
    let msg = choice.get("message").cloned().unwrap_or_default();
    let mut content = Vec::new();
    if let Some(t) = msg.get("content").and_then(Value::as_str).filter(|t| !t.is_empty()) {
        content.push(json!({ "type": "text", "text": t }));
    }
    for (j, tc) in msg.get("tool_calls").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let path = format!("choices[0].message.tool_calls[{j}]");
        let args = tc.get("function").and_then(|f| f.get("arguments")).and_then(Value::as_str).unwrap_or_default();
        let input = super::anthropic::parse_arguments(args, &path)?;
        content.push(json!({
            "type": "tool_use",
            "id": tc.get("id").cloned().unwrap_or_default(),
            "name": tc.get("function").and_then(|f| f.get("name")).cloned().unwrap_or_default(),
            "input": input,
        }));
    }
    let finish = choice.get("finish_reason").and_then(Value::as_str).unwrap_or("stop");
    let out = json!({
        "id": body.get("id").cloned().unwrap_or_default(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(finish),
        "stop_sequence": null,
        "usage": usage.anthropic_usage(),
    });
    Ok(MessagesAnswer { body: out, usage })
}

/// `body` with only the top-level `model` value replaced by `model` (every other byte kept).
pub fn replace_model(body: &[u8], model: &str) -> Result<Vec<u8>, TranslateError> {
    let bad = |why: &str| TranslateError::invalid("(request body)", why.to_string());
    serde_json::from_slice::<IgnoredAny>(body).map_err(|e| bad(&format!("not JSON: {e}")))?;
    let skip_ws = |mut i: usize| {
        while body.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        i
    };
    let mut i = skip_ws(0);
    if body.get(i) != Some(&b'{') {
        return Err(bad("expected a JSON object"));
    }
    i += 1;
    let mut span = None;
    loop {
        i = skip_ws(i);
        match body.get(i) {
            Some(b'}') => break,
            Some(b',') => {
                i += 1;
                continue;
            }
            _ => {}
        }
        let key_len = value_len(&body[i..]).ok_or_else(|| bad("unreadable key"))?;
        let key: String = serde_json::from_slice(&body[i..i + key_len]).map_err(|_| bad("unreadable key"))?;
        i = skip_ws(i + key_len);
        if body.get(i) != Some(&b':') {
            return Err(bad("expected `:`"));
        }
        i = skip_ws(i + 1);
        let len = value_len(&body[i..]).ok_or_else(|| bad("unreadable value"))?;
        if key == "model" {
            if span.is_some() {
                return Err(TranslateError::invalid("model", "appears twice"));
            }
            span = Some((i, i + len));
        }
        i += len;
    }
    let (start, end) = span.ok_or_else(|| TranslateError::invalid("model", "missing"))?;
    let quoted = serde_json::to_string(model).map_err(|e| bad(&e.to_string()))?;
    let mut out = Vec::with_capacity(body.len() + quoted.len());
    out.extend_from_slice(&body[..start]);
    out.extend_from_slice(quoted.as_bytes());
    out.extend_from_slice(&body[end..]);
    Ok(out)
}

/// The byte length of the JSON value at the start of `s`.
fn value_len(s: &[u8]) -> Option<usize> {
    let mut it = serde_json::Deserializer::from_slice(s).into_iter::<IgnoredAny>();
    match it.next() {
        Some(Ok(_)) => Some(it.byte_offset()),
        _ => None,
    }
}
