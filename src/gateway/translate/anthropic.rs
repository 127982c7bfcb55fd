//! OpenAI chat completions ⇄ Anthropic Messages (`POST {baseUrl}/v1/messages`).
//!
//! Request rules ([`chat_to_messages`]):
//! - `system`/`developer` messages (wherever they are) become top-level `system` blocks, in
//!   order; the remaining turns alternate: consecutive same-role turns are merged, and `tool`
//!   messages become `tool_result` blocks of a user turn (before that turn's other content).
//! - Text parts → `text` blocks (empty text is skipped: Anthropic rejects it); `image_url` with a
//!   base64 `data:` URL → `image` with `source.type=base64`, with an http(s) URL →
//!   `source.type=url`; `cache_control` on a part is passed through unchanged.
//! - Assistant `tool_calls` → `tool_use` blocks (arguments must be a JSON object);
//!   `tools` → `{name, description, input_schema}`; `tool_choice` none/auto/required/named →
//!   `none`/`auto`/`any`/`tool`; `parallel_tool_calls: false` → `disable_parallel_tool_use`.
//! - `max_tokens` is required upstream: `max_completion_tokens`, else `max_tokens`, else the
//!   caller's default. `reasoning_effort` → `thinking.budget_tokens` by [`super::thinking_budget`];
//!   the budget must stay below `max_tokens`: a defaulted `max_tokens` is raised to
//!   budget + default, a client's `max_tokens` clamps the budget, and a client `max_tokens` that
//!   leaves less than Anthropic's 1024-token minimum is refused. With thinking on, `temperature`
//!   and `top_p` are dropped (Anthropic rejects them) and a forced `tool_choice` is refused.
//! - Refused (400 naming the field): `n > 1`, `logprobs`, `top_logprobs`, `audio`, non-text
//!   `modalities`, `prediction`, legacy `functions`/`function_call`, `web_search_options`,
//!   `response_format` other than `text`, non-function tools, content parts other than text and
//!   images, the legacy `function` role. Every other unknown field is dropped and listed.
//!
//! Answer rules ([`messages_response_to_chat`]): `text` blocks are concatenated into `content`;
//! `tool_use` → `tool_calls` (input re-encoded as JSON text); `thinking` text → the message's
//! `reasoning_content` (signatures and `redacted_thinking` are dropped, so a thinking turn cannot
//! be replayed to Anthropic through the OpenAI surface); `stop_reason` → `finish_reason` by
//! [`finish_reason`]; usage by the Anthropic native rule of [`crate::pricing`].

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::openai::{
    ChatCompletion, ChatRequest, Choice, ContentPart, FunctionCall, MessageContent, ResponseMessage, ToolCall,
};
use super::{
    ChatAnswer, TranslateError, Translated, UsageReport, drop_field, is_http_url, parse_data_url, thinking_budget,
};
use crate::config::ProviderFamily;

const TARGET: &str = "Anthropic Messages";
/// Anthropic's smallest thinking budget.
pub const MIN_THINKING_BUDGET: u32 = 1024;

/// A Messages API request body.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct MessagesRequest {
    /// Upstream model id.
    pub model: String,
    /// Output cap (required).
    pub max_tokens: u32,
    /// Alternating user/assistant turns.
    pub messages: Vec<Message>,
    /// System prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<Vec<Block>>,
    /// Stop sequences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_sequences: Option<Vec<String>>,
    /// Temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Server-sent events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Value>>,
    /// Tool choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    /// `{"type":"enabled","budget_tokens":N}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinking: Option<Value>,
    /// `{"user_id": ...}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

/// One turn.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct Message {
    /// `user | assistant`.
    pub role: String,
    /// Content blocks.
    pub content: Vec<Block>,
}

/// A content block.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Block {
    /// Text.
    Text {
        /// The text.
        text: String,
        /// Prompt-caching marker.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cache_control: Option<Value>,
    },
    /// An image.
    Image {
        /// Where the bytes are.
        source: ImageSource,
        /// Prompt-caching marker.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cache_control: Option<Value>,
    },
    /// A tool call (assistant).
    ToolUse {
        /// Call id.
        id: String,
        /// Tool name.
        name: String,
        /// Arguments (a JSON object).
        input: Value,
    },
    /// A tool result (user).
    ToolResult {
        /// The call answered.
        tool_use_id: String,
        /// Result text or blocks.
        content: Value,
        /// Prompt-caching marker.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cache_control: Option<Value>,
    },
}

/// An image source.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ImageSource {
    /// Inline bytes.
    Base64 {
        /// `image/png`, ...
        media_type: String,
        /// Base64 payload.
        data: String,
    },
    /// A URL Anthropic fetches.
    Url {
        /// http(s) URL.
        url: String,
    },
}

/// What [`chat_to_messages`] needs besides the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnthropicRequestOptions {
    /// The backend's upstream model id (replaces the alias).
    pub model: String,
    /// `max_tokens` when the request has none (the route's default, else a documented one).
    pub default_max_tokens: u32,
}

/// Fields refused outright (no Anthropic equivalent that keeps the client's meaning).
const REFUSED: &[&str] = &["top_logprobs", "audio", "prediction", "functions", "function_call", "web_search_options"];

/// A chat request as a Messages request; see the module docs for every rule.
pub fn chat_to_messages(
    req: &ChatRequest,
    opts: &AnthropicRequestOptions,
) -> Result<Translated<MessagesRequest>, TranslateError> {
    let mut dropped = Vec::new();
    if req.n.is_some_and(|n| n > 1) {
        return Err(TranslateError::unsupported("n", TARGET, "only one choice per request (n = 1)"));
    }
    if req.logprobs == Some(true) {
        return Err(TranslateError::unsupported("logprobs", TARGET, "token log probabilities are not returned"));
    }
    check_response_format(req.response_format.as_ref(), TARGET)?;
    let mut metadata = None;
    for (key, value) in &req.extra {
        if REFUSED.contains(&key.as_str()) {
            return Err(TranslateError::unsupported(key.clone(), TARGET, "no Messages API equivalent"));
        }
        match key.as_str() {
            "modalities" if value.as_array().is_some_and(|m| m.iter().any(|x| x != "text")) => {
                return Err(TranslateError::unsupported("modalities", TARGET, "only text output"));
            }
            "user" => metadata = value.as_str().map(|u| json!({ "user_id": u })),
            "modalities" | "n" => {}
            _ => drop_field(&mut dropped, key.clone()),
        }
    }
    let (system, messages) = convert_messages(req, &mut dropped)?;
    let tools = convert_tools(req, &mut dropped)?;
    let mut tool_choice = match (&req.tool_choice, &tools) {
        (Some(tc), Some(_)) => Some(convert_tool_choice(tc)?),
        (Some(_), None) => {
            drop_field(&mut dropped, "tool_choice");
            None
        }
        _ => None,
    };
    if req.parallel_tool_calls == Some(false) && tools.is_some() {
        let tc = tool_choice.get_or_insert_with(|| json!({ "type": "auto" }));
        if tc["type"] != "none"
            && let Some(m) = tc.as_object_mut()
        {
            m.insert("disable_parallel_tool_use".into(), Value::Bool(true));
        }
    } else if req.parallel_tool_calls.is_some() {
        drop_field(&mut dropped, "parallel_tool_calls");
    }

    let client_max = req.max_completion_tokens.or(req.max_tokens);
    let mut max_tokens = client_max.unwrap_or(opts.default_max_tokens);
    let mut temperature = req.temperature;
    let mut top_p = req.top_p;
    let mut thinking = None;
    if let Some(effort) = &req.reasoning_effort
        && let Some(budget) = thinking_budget(effort, false)?
    {
        let budget = match client_max {
            None => {
                max_tokens = opts.default_max_tokens.saturating_add(budget);
                budget
            }
            Some(max) if max > budget => budget,
            Some(max) if max > MIN_THINKING_BUDGET => max - 1,
            Some(max) => {
                let field = if req.max_completion_tokens.is_some() { "max_completion_tokens" } else { "max_tokens" };
                return Err(TranslateError::unsupported(
                    field,
                    TARGET,
                    format!(
                        "{field}={max} leaves no room for thinking (reasoning_effort={effort} needs a budget of at \
                         least {MIN_THINKING_BUDGET} tokens below {field})"
                    ),
                ));
            }
        };
        if tool_choice.as_ref().is_some_and(|tc| tc["type"] == "any" || tc["type"] == "tool") {
            return Err(TranslateError::unsupported(
                "tool_choice",
                TARGET,
                "a forced tool choice cannot be combined with reasoning_effort (thinking)",
            ));
        }
        if temperature.take().is_some() {
            drop_field(&mut dropped, "temperature");
        }
        if top_p.take().is_some() {
            drop_field(&mut dropped, "top_p");
        }
        thinking = Some(json!({ "type": "enabled", "budget_tokens": budget }));
    }
    if req.stream_options.is_some() && req.stream != Some(true) {
        drop_field(&mut dropped, "stream_options");
    }
    let stop_sequences = req.stop.clone().map(super::openai::Stop::into_vec).filter(|s| !s.is_empty());
    let value = MessagesRequest {
        model: opts.model.clone(),
        max_tokens,
        messages,
        system,
        stop_sequences,
        temperature,
        top_p,
        stream: req.stream,
        tools,
        tool_choice,
        thinking,
        metadata,
    };
    Ok(Translated { value, dropped })
}

/// Refuses a `response_format` other than `text` (neither Anthropic nor the OpenAI surface has
/// a JSON mode this gateway could honour without changing the prompt).
fn check_response_format(rf: Option<&Value>, target: &'static str) -> Result<(), TranslateError> {
    match rf.and_then(|v| v.get("type")).and_then(Value::as_str) {
        None | Some("text") => Ok(()),
        Some(other) => Err(TranslateError::unsupported(
            "response_format.type",
            target,
            format!("`{other}` has no equivalent; only `text`"),
        )),
    }
}

fn convert_messages(
    req: &ChatRequest,
    dropped: &mut Vec<String>,
) -> Result<(Option<Vec<Block>>, Vec<Message>), TranslateError> {
    let mut system = Vec::new();
    let mut turns: Vec<Message> = Vec::new();
    for (i, m) in req.messages.iter().enumerate() {
        let path = format!("messages[{i}]");
        if m.name.is_some() {
            drop_field(dropped, "messages[].name");
        }
        let (role, blocks) = match m.role.as_str() {
            "system" | "developer" => {
                system.extend(content_blocks(m.content.as_ref(), &path, false, dropped)?);
                continue;
            }
            "user" => ("user", content_blocks(m.content.as_ref(), &path, true, dropped)?),
            "assistant" => {
                let mut blocks = content_blocks(m.content.as_ref(), &path, false, dropped)?;
                for (j, tc) in m.tool_calls.iter().flatten().enumerate() {
                    let input = parse_arguments(&tc.function.arguments, &format!("{path}.tool_calls[{j}]"))?;
                    blocks.push(Block::ToolUse { id: tc.id.clone(), name: tc.function.name.clone(), input });
                }
                ("assistant", blocks)
            }
            "tool" => {
                let id = m.tool_call_id.clone().ok_or_else(|| {
                    TranslateError::invalid(format!("{path}.tool_call_id"), "required on a tool message")
                })?;
                let content = tool_result_content(m.content.as_ref(), &path, dropped)?;
                ("user", vec![Block::ToolResult { tool_use_id: id, content, cache_control: None }])
            }
            other => {
                return Err(TranslateError::unsupported(
                    format!("{path}.role"),
                    TARGET,
                    format!("role `{other}` (expected system, developer, user, assistant or tool)"),
                ));
            }
        };
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some(last) if last.role == role => {
                // Tool results lead a user turn.
                if m.role == "tool" {
                    let at = last.content.iter().take_while(|b| matches!(b, Block::ToolResult { .. })).count();
                    last.content.splice(at..at, blocks);
                } else {
                    last.content.extend(blocks);
                }
            }
            _ => turns.push(Message { role: role.to_string(), content: blocks }),
        }
    }
    if turns.is_empty() {
        return Err(TranslateError::invalid("messages", "no user or assistant message with content"));
    }
    Ok(((!system.is_empty()).then_some(system), turns))
}

/// Parses tool-call arguments (a JSON object as text; empty means `{}`).
pub(crate) fn parse_arguments(args: &str, path: &str) -> Result<Value, TranslateError> {
    if args.trim().is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    match serde_json::from_str::<Value>(args) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(TranslateError::invalid(format!("{path}.function.arguments"), "must be a JSON object")),
        Err(e) => Err(TranslateError::invalid(format!("{path}.function.arguments"), format!("not JSON: {e}"))),
    }
}

fn content_blocks(
    content: Option<&MessageContent>,
    path: &str,
    images: bool,
    dropped: &mut Vec<String>,
) -> Result<Vec<Block>, TranslateError> {
    match content {
        None => Ok(Vec::new()),
        Some(MessageContent::Text(t)) if t.is_empty() => Ok(Vec::new()),
        Some(MessageContent::Text(t)) => Ok(vec![Block::Text { text: t.clone(), cache_control: None }]),
        Some(MessageContent::Parts(parts)) => {
            let mut out = Vec::new();
            for (k, p) in parts.iter().enumerate() {
                if let Some(b) = part_block(p, &format!("{path}.content[{k}]"), images, dropped)? {
                    out.push(b);
                }
            }
            Ok(out)
        }
    }
}

fn part_block(
    p: &ContentPart,
    path: &str,
    images: bool,
    dropped: &mut Vec<String>,
) -> Result<Option<Block>, TranslateError> {
    let cache_control = p.cache_control.clone();
    match p.kind.as_str() {
        "text" | "refusal" => {
            let text = p.text.clone().or_else(|| p.extra.get("refusal").and_then(Value::as_str).map(str::to_string));
            Ok(text.filter(|t| !t.is_empty()).map(|text| Block::Text { text, cache_control }))
        }
        "image_url" if images => {
            let img =
                p.image_url.as_ref().ok_or_else(|| TranslateError::invalid(format!("{path}.image_url"), "missing"))?;
            if img.detail.is_some() {
                drop_field(dropped, "image_url.detail");
            }
            let source = if let Some((media, data)) = parse_data_url(&img.url) {
                ImageSource::Base64 { media_type: media.to_string(), data: data.to_string() }
            } else if is_http_url(&img.url) {
                ImageSource::Url { url: img.url.clone() }
            } else {
                return Err(TranslateError::invalid(
                    format!("{path}.image_url.url"),
                    "expected an http(s) URL or a base64 data: URL",
                ));
            };
            Ok(Some(Block::Image { source, cache_control }))
        }
        other => Err(TranslateError::unsupported(
            format!("{path}.type"),
            TARGET,
            format!("content part type `{other}` in this message"),
        )),
    }
}

fn tool_result_content(
    content: Option<&MessageContent>,
    path: &str,
    dropped: &mut Vec<String>,
) -> Result<Value, TranslateError> {
    match content {
        None => Ok(Value::String(String::new())),
        Some(MessageContent::Text(t)) => Ok(Value::String(t.clone())),
        Some(c) => {
            let blocks = content_blocks(Some(c), path, true, dropped)?;
            serde_json::to_value(blocks).map_err(|e| TranslateError::invalid(format!("{path}.content"), e.to_string()))
        }
    }
}

fn convert_tools(req: &ChatRequest, dropped: &mut Vec<String>) -> Result<Option<Vec<Value>>, TranslateError> {
    let Some(functions) = super::function_tools(req, TARGET, dropped)? else {
        return Ok(None);
    };
    let mut out = Vec::with_capacity(functions.len());
    for f in functions {
        let mut m = Map::new();
        m.insert("name".into(), f.name.clone().into());
        if let Some(d) = &f.description {
            m.insert("description".into(), d.clone().into());
        }
        m.insert(
            "input_schema".into(),
            f.parameters.clone().unwrap_or_else(|| json!({ "type": "object", "properties": {} })),
        );
        out.push(Value::Object(m));
    }
    Ok(Some(out))
}

fn convert_tool_choice(tc: &Value) -> Result<Value, TranslateError> {
    match tc {
        Value::String(s) => match s.as_str() {
            "none" => Ok(json!({ "type": "none" })),
            "auto" => Ok(json!({ "type": "auto" })),
            "required" => Ok(json!({ "type": "any" })),
            other => Err(TranslateError::invalid("tool_choice", format!("unknown value `{other}`"))),
        },
        Value::Object(m) => match m.get("function").and_then(|f| f.get("name")).and_then(Value::as_str) {
            Some(name) => Ok(json!({ "type": "tool", "name": name })),
            None => Err(TranslateError::invalid("tool_choice.function.name", "missing")),
        },
        _ => Err(TranslateError::invalid("tool_choice", "expected a string or an object")),
    }
}

/// Anthropic `stop_reason` → OpenAI `finish_reason`.
pub fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        // end_turn, stop_sequence, pause_turn, and any reason added later.
        _ => "stop",
    }
}

/// A Messages API answer (`type: message`) as a `chat.completion` created at `created`.
pub fn messages_response_to_chat(body: &Value, created: u64) -> Result<ChatAnswer, TranslateError> {
    let str_field = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
    if body.get("type").and_then(Value::as_str) != Some("message") {
        return Err(TranslateError::invalid("type", "an Anthropic answer must have type `message`"));
    }
    let usage = UsageReport::parse(ProviderFamily::Anthropic, body)?;
    let blocks = body
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| TranslateError::invalid("content", "missing or not a list"))?;
    let mut text = String::new();
    let mut thinking = String::new();
    let mut tool_calls = Vec::new();
    for (i, b) in blocks.iter().enumerate() {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(b.get("text").and_then(Value::as_str).unwrap_or_default()),
            Some("thinking") => thinking.push_str(b.get("thinking").and_then(Value::as_str).unwrap_or_default()),
            Some("tool_use") => {
                let input = b.get("input").cloned().unwrap_or_else(|| Value::Object(Map::new()));
                tool_calls.push(ToolCall {
                    id: b.get("id").and_then(Value::as_str).unwrap_or_default().to_string(),
                    kind: "function".into(),
                    function: FunctionCall {
                        name: b
                            .get("name")
                            .and_then(Value::as_str)
                            .ok_or_else(|| TranslateError::invalid(format!("content[{i}].name"), "missing"))?
                            .to_string(),
                        arguments: input.to_string(),
                    },
                });
            }
            // redacted_thinking, server tool blocks: not representable, dropped.
            _ => {}
        }
    }
    let stop = body.get("stop_reason").and_then(Value::as_str).unwrap_or("end_turn");
    let completion = ChatCompletion {
        id: str_field("id"),
        object: "chat.completion".into(),
        created,
        model: str_field("model"),
        choices: vec![Choice {
            index: 0,
            message: ResponseMessage {
                role: "assistant".into(),
                content: (!text.is_empty() || tool_calls.is_empty()).then_some(text),
                reasoning_content: (!thinking.is_empty()).then_some(thinking),
                tool_calls: (!tool_calls.is_empty()).then_some(tool_calls),
            },
            finish_reason: Some(finish_reason(stop).to_string()),
        }],
        usage: Some(usage.openai_usage()),
    };
    Ok(ChatAnswer { completion, usage })
}
