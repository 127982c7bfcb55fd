//! OpenAI chat completions ⇄ Gemini `generateContent` / `streamGenerateContent?alt=sse`.
//!
//! Request rules ([`chat_to_gemini`]):
//! - `system`/`developer` messages → `systemInstruction.parts`; `user` → role `user`;
//!   `assistant` → role `model`; consecutive same-role turns are merged. Text → `{text}`;
//!   base64 `data:` images → `inlineData`; http(s) images → `fileData` with the MIME type taken
//!   from the URL's extension (png, jpg/jpeg, webp, gif, heic, heif, pdf; any other extension is
//!   refused: Gemini requires the type).
//! - Assistant `tool_calls` → `functionCall {name, args}` parts; `tool` messages →
//!   `functionResponse {name, response}` parts in a `user` turn, the name looked up from the
//!   assistant call with the same id (unknown id: 400). The response is the tool's text parsed
//!   as a JSON object, else `{"result": <the JSON value or the text>}`.
//! - Gemini's thought signatures travel in the OpenAI tool-call id: an answer's call with a
//!   `thoughtSignature` gets the id `call_<n>__thought__<signature>`, and such an id sent back
//!   restores the signature (Gemini requires it when a thinking model's call is replayed).
//! - `tools` → one `{functionDeclarations: [{name, description, parametersJsonSchema}]}`;
//!   `tool_choice` none/auto/required/named → `toolConfig.functionCallingConfig.mode`
//!   `NONE`/`AUTO`/`ANY`/`ANY` + `allowedFunctionNames`.
//! - `generationConfig`: `maxOutputTokens` (from `max_completion_tokens`, else `max_tokens`,
//!   else absent), `temperature`, `topP`, `stopSequences`, `seed`, `presencePenalty`,
//!   `frequencyPenalty`, `thinkingConfig.thinkingBudget` by [`super::thinking_budget`],
//!   `response_format` json_object / json_schema → `responseMimeType: application/json`
//!   (+ `responseJsonSchema`).
//! - Refused: `n > 1`, `logprobs`, `top_logprobs`, `audio`, non-text `modalities`,
//!   `prediction`, `functions`/`function_call`, `web_search_options`, non-function tools,
//!   content parts other than text and images. Dropped and listed: `cache_control`,
//!   `image_url.detail`, `parallel_tool_calls`, `strict`, message `name`, unknown fields.
//!
//! Answer rules: the first candidate only; `text` parts → `content`, `thought: true` parts →
//! `reasoning_content`, `functionCall` parts → `tool_calls` (arguments JSON-encoded);
//! `finishReason` by [`finish_reason`] (`STOP` with a function call is `tool_calls`); no
//! candidate (prompt blocked) → empty content with `content_filter`. Usage by the Gemini
//! native rule of [`crate::pricing`] (`usageMetadata`).
//!
//! Streaming ([`super::GeminiStream`], in `gemini_stream.rs`): each SSE `data:` is a whole `GenerateContentResponse`; its
//! parts become chunks at once (a function call arrives whole, so its chunk carries the whole
//! arguments). The latest `usageMetadata` is the final usage; a body that ends before any
//! `finishReason` is [`TranslateError::Truncated`].

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::anthropic::parse_arguments;
use super::openai::{
    ChatCompletion, ChatRequest, Choice, ContentPart, FunctionCall, MessageContent, ResponseMessage, ToolCall,
};
use super::{
    ChatAnswer, TranslateError, Translated, UsageReport, drop_field, is_http_url, parse_data_url, thinking_budget,
};
use crate::config::ProviderFamily;

const TARGET: &str = "Gemini";
const SIGNATURE_SEP: &str = "__thought__";
const REFUSED: &[&str] = &["top_logprobs", "audio", "prediction", "functions", "function_call", "web_search_options"];

/// A `generateContent` request body.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GenerateContentRequest {
    /// The conversation.
    pub contents: Vec<Content>,
    /// System prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_instruction: Option<Content>,
    /// Sampling and output settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation_config: Option<Map<String, Value>>,
    /// Function declarations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Value>>,
    /// Function-calling mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_config: Option<Value>,
}

/// A turn (`role` is absent on `systemInstruction`).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct Content {
    /// `user | model`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Parts.
    #[serde(default)]
    pub parts: Vec<Part>,
}

/// One part; exactly one of the data fields is set.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Part {
    /// Text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// `{mimeType, data}` inline bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline_data: Option<Value>,
    /// `{mimeType, fileUri}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_data: Option<Value>,
    /// `{name, args, id?}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function_call: Option<Value>,
    /// `{name, response}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function_response: Option<Value>,
    /// A thought (reasoning) part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thought: Option<bool>,
    /// Opaque signature of the model's thinking, to replay with the call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thought_signature: Option<String>,
}

/// `{base}/v1beta/models/{model}:generateContent`, or `:streamGenerateContent?alt=sse`.
/// A trailing `/` or `/v1beta` on `base` and a `models/` prefix on `model` are not doubled;
/// a model id with characters outside `[A-Za-z0-9._-]` is refused (it would change the path).
pub fn gemini_url(base: &str, model: &str, stream: bool) -> Result<String, TranslateError> {
    let model = model.strip_prefix("models/").unwrap_or(model);
    if model.is_empty() || !model.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        return Err(TranslateError::invalid("model", format!("`{model}` is not a Gemini model id")));
    }
    let base = base.trim_end_matches('/');
    let base = base.strip_suffix("/v1beta").unwrap_or(base);
    let method = if stream { "streamGenerateContent?alt=sse" } else { "generateContent" };
    Ok(format!("{base}/v1beta/models/{model}:{method}"))
}

/// A chat request as a `generateContent` body; see the module docs for every rule.
pub fn chat_to_gemini(req: &ChatRequest) -> Result<Translated<GenerateContentRequest>, TranslateError> {
    let mut dropped = Vec::new();
    if req.n.is_some_and(|n| n > 1) {
        return Err(TranslateError::unsupported("n", TARGET, "only one choice per request (n = 1)"));
    }
    if req.logprobs == Some(true) {
        return Err(TranslateError::unsupported("logprobs", TARGET, "token log probabilities are not returned"));
    }
    let mut config = Map::new();
    for (key, value) in &req.extra {
        if REFUSED.contains(&key.as_str()) {
            return Err(TranslateError::unsupported(key.clone(), TARGET, "no generateContent equivalent"));
        }
        match key.as_str() {
            "modalities" if value.as_array().is_some_and(|m| m.iter().any(|x| x != "text")) => {
                return Err(TranslateError::unsupported("modalities", TARGET, "only text output"));
            }
            "seed" => insert_non_null(&mut config, "seed", value),
            "presence_penalty" => insert_non_null(&mut config, "presencePenalty", value),
            "frequency_penalty" => insert_non_null(&mut config, "frequencyPenalty", value),
            "modalities" | "n" => {}
            _ => drop_field(&mut dropped, key.clone()),
        }
    }
    if let Some(max) = req.max_completion_tokens.or(req.max_tokens) {
        config.insert("maxOutputTokens".into(), max.into());
    }
    if let Some(t) = req.temperature {
        config.insert("temperature".into(), json!(t));
    }
    if let Some(p) = req.top_p {
        config.insert("topP".into(), json!(p));
    }
    if let Some(stop) = req.stop.clone().map(super::openai::Stop::into_vec).filter(|s| !s.is_empty()) {
        config.insert("stopSequences".into(), json!(stop));
    }
    if let Some(effort) = &req.reasoning_effort
        && let Some(budget) = thinking_budget(effort, true)?
    {
        config.insert("thinkingConfig".into(), json!({ "thinkingBudget": budget }));
    }
    match req.response_format.as_ref().and_then(|v| v.get("type")).and_then(Value::as_str) {
        None | Some("text") => {}
        Some("json_object") => {
            config.insert("responseMimeType".into(), "application/json".into());
        }
        Some("json_schema") => {
            let schema = req
                .response_format
                .as_ref()
                .and_then(|v| v.get("json_schema"))
                .and_then(|s| s.get("schema"))
                .ok_or_else(|| TranslateError::invalid("response_format.json_schema.schema", "missing"))?;
            config.insert("responseMimeType".into(), "application/json".into());
            config.insert("responseJsonSchema".into(), schema.clone());
        }
        Some(other) => {
            return Err(TranslateError::unsupported(
                "response_format.type",
                TARGET,
                format!("`{other}` (text, json_object or json_schema)"),
            ));
        }
    }
    if req.parallel_tool_calls.is_some() {
        drop_field(&mut dropped, "parallel_tool_calls");
    }
    if req.stream_options.is_some() {
        drop_field(&mut dropped, "stream_options");
    }
    let (system, contents) = convert_messages(req, &mut dropped)?;
    let tools = convert_tools(req, &mut dropped)?;
    let tool_config = match (&req.tool_choice, &tools) {
        (Some(tc), Some(_)) => Some(convert_tool_choice(tc)?),
        (Some(_), None) => {
            drop_field(&mut dropped, "tool_choice");
            None
        }
        _ => None,
    };
    let value = GenerateContentRequest {
        contents,
        system_instruction: system,
        generation_config: (!config.is_empty()).then_some(config),
        tools,
        tool_config,
    };
    Ok(Translated { value, dropped })
}

fn insert_non_null(config: &mut Map<String, Value>, key: &str, value: &Value) {
    if !value.is_null() {
        config.insert(key.into(), value.clone());
    }
}

fn convert_messages(
    req: &ChatRequest,
    dropped: &mut Vec<String>,
) -> Result<(Option<Content>, Vec<Content>), TranslateError> {
    let mut system = Vec::new();
    let mut turns: Vec<Content> = Vec::new();
    let mut call_names: Vec<(String, String)> = Vec::new();
    for (i, m) in req.messages.iter().enumerate() {
        let path = format!("messages[{i}]");
        if m.name.is_some() {
            drop_field(dropped, "messages[].name");
        }
        let (role, parts) = match m.role.as_str() {
            "system" | "developer" => {
                system.extend(parts_of(m.content.as_ref(), &path, false, dropped)?);
                continue;
            }
            "user" => ("user", parts_of(m.content.as_ref(), &path, true, dropped)?),
            "assistant" => {
                let mut parts = parts_of(m.content.as_ref(), &path, false, dropped)?;
                for (j, tc) in m.tool_calls.iter().flatten().enumerate() {
                    let args = parse_arguments(&tc.function.arguments, &format!("{path}.tool_calls[{j}]"))?;
                    call_names.push((tc.id.clone(), tc.function.name.clone()));
                    let signature = tc.id.split_once(SIGNATURE_SEP).map(|(_, s)| s.to_string());
                    parts.push(Part {
                        function_call: Some(json!({ "name": tc.function.name, "args": args })),
                        thought_signature: signature,
                        ..Part::default()
                    });
                }
                ("model", parts)
            }
            "tool" => {
                let id = m.tool_call_id.as_deref().ok_or_else(|| {
                    TranslateError::invalid(format!("{path}.tool_call_id"), "required on a tool message")
                })?;
                let name = call_names.iter().rev().find(|(c, _)| c == id).map(|(_, n)| n.clone()).ok_or_else(|| {
                    TranslateError::invalid(
                        format!("{path}.tool_call_id"),
                        format!("`{id}` answers no earlier assistant tool call (Gemini needs the function name)"),
                    )
                })?;
                let text = tool_text(m.content.as_ref(), &path)?;
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(v @ Value::Object(_)) => v,
                    Ok(v) => json!({ "result": v }),
                    Err(_) => json!({ "result": text }),
                };
                let part =
                    Part { function_response: Some(json!({ "name": name, "response": response })), ..Part::default() };
                ("user", vec![part])
            }
            other => {
                return Err(TranslateError::unsupported(
                    format!("{path}.role"),
                    TARGET,
                    format!("role `{other}` (expected system, developer, user, assistant or tool)"),
                ));
            }
        };
        if parts.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some(last) if last.role.as_deref() == Some(role) => last.parts.extend(parts),
            _ => turns.push(Content { role: Some(role.to_string()), parts }),
        }
    }
    if turns.is_empty() {
        return Err(TranslateError::invalid("messages", "no user or assistant message with content"));
    }
    Ok(((!system.is_empty()).then_some(Content { role: None, parts: system }), turns))
}

fn tool_text(content: Option<&MessageContent>, path: &str) -> Result<String, TranslateError> {
    match content {
        None => Ok(String::new()),
        Some(MessageContent::Text(t)) => Ok(t.clone()),
        Some(MessageContent::Parts(parts)) => {
            let mut s = String::new();
            for (k, p) in parts.iter().enumerate() {
                match (p.kind.as_str(), &p.text) {
                    ("text", Some(t)) => s.push_str(t),
                    (kind, _) => {
                        return Err(TranslateError::unsupported(
                            format!("{path}.content[{k}].type"),
                            TARGET,
                            format!("`{kind}` in a tool result (only text)"),
                        ));
                    }
                }
            }
            Ok(s)
        }
    }
}

fn parts_of(
    content: Option<&MessageContent>,
    path: &str,
    images: bool,
    dropped: &mut Vec<String>,
) -> Result<Vec<Part>, TranslateError> {
    let text = |t: &str| Part { text: Some(t.to_string()), ..Part::default() };
    match content {
        None => Ok(Vec::new()),
        Some(MessageContent::Text(t)) if t.is_empty() => Ok(Vec::new()),
        Some(MessageContent::Text(t)) => Ok(vec![text(t)]),
        Some(MessageContent::Parts(parts)) => {
            let mut out = Vec::new();
            for (k, p) in parts.iter().enumerate() {
                if p.cache_control.is_some() {
                    drop_field(dropped, "cache_control");
                }
                let part_path = format!("{path}.content[{k}]");
                match p.kind.as_str() {
                    "text" | "refusal" => {
                        let t = p
                            .text
                            .clone()
                            .or_else(|| p.extra.get("refusal").and_then(Value::as_str).map(str::to_string));
                        if let Some(t) = t.filter(|t| !t.is_empty()) {
                            out.push(text(&t));
                        }
                    }
                    "image_url" if images => out.push(image_part(p, &part_path, dropped)?),
                    other => {
                        return Err(TranslateError::unsupported(
                            format!("{part_path}.type"),
                            TARGET,
                            format!("content part type `{other}` in this message"),
                        ));
                    }
                }
            }
            Ok(out)
        }
    }
}

fn image_part(p: &ContentPart, path: &str, dropped: &mut Vec<String>) -> Result<Part, TranslateError> {
    let img = p.image_url.as_ref().ok_or_else(|| TranslateError::invalid(format!("{path}.image_url"), "missing"))?;
    if img.detail.is_some() {
        drop_field(dropped, "image_url.detail");
    }
    if let Some((media, data)) = parse_data_url(&img.url) {
        return Ok(Part { inline_data: Some(json!({ "mimeType": media, "data": data })), ..Part::default() });
    }
    if !is_http_url(&img.url) {
        return Err(TranslateError::invalid(
            format!("{path}.image_url.url"),
            "expected an http(s) URL or a base64 data: URL",
        ));
    }
    let file = img.url.split(['?', '#']).next().unwrap_or_default();
    let ext = file.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    let mime = match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "heic" => "image/heic",
        "heif" => "image/heif",
        "pdf" => "application/pdf",
        _ => {
            return Err(TranslateError::unsupported(
                format!("{path}.image_url.url"),
                TARGET,
                "an image URL must end in .png, .jpg, .jpeg, .webp, .gif, .heic, .heif or .pdf (Gemini needs its \
                 MIME type); send a data: URL instead",
            ));
        }
    };
    Ok(Part { file_data: Some(json!({ "mimeType": mime, "fileUri": img.url })), ..Part::default() })
}

fn convert_tools(req: &ChatRequest, dropped: &mut Vec<String>) -> Result<Option<Vec<Value>>, TranslateError> {
    let Some(functions) = super::function_tools(req, TARGET, dropped)? else {
        return Ok(None);
    };
    let mut decls = Vec::with_capacity(functions.len());
    for f in functions {
        let mut d = Map::new();
        d.insert("name".into(), f.name.clone().into());
        if let Some(desc) = &f.description {
            d.insert("description".into(), desc.clone().into());
        }
        if let Some(p) = &f.parameters {
            d.insert("parametersJsonSchema".into(), p.clone());
        }
        decls.push(Value::Object(d));
    }
    Ok(Some(vec![json!({ "functionDeclarations": decls })]))
}

fn convert_tool_choice(tc: &Value) -> Result<Value, TranslateError> {
    let cfg = match tc {
        Value::String(s) => match s.as_str() {
            "none" => json!({ "mode": "NONE" }),
            "auto" => json!({ "mode": "AUTO" }),
            "required" => json!({ "mode": "ANY" }),
            other => return Err(TranslateError::invalid("tool_choice", format!("unknown value `{other}`"))),
        },
        Value::Object(m) => match m.get("function").and_then(|f| f.get("name")).and_then(Value::as_str) {
            Some(name) => json!({ "mode": "ANY", "allowedFunctionNames": [name] }),
            None => return Err(TranslateError::invalid("tool_choice.function.name", "missing")),
        },
        _ => return Err(TranslateError::invalid("tool_choice", "expected a string or an object")),
    };
    Ok(json!({ "functionCallingConfig": cfg }))
}

/// Gemini `finishReason` → OpenAI `finish_reason` (`had_calls`: the turn called a function).
pub fn finish_reason(reason: &str, had_calls: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => "content_filter",
        _ if had_calls => "tool_calls",
        // STOP, MALFORMED_FUNCTION_CALL, OTHER, LANGUAGE, FINISH_REASON_UNSPECIFIED...
        _ => "stop",
    }
}

/// The pieces of one response's first candidate.
#[derive(Default)]
pub(super) struct Pieces {
    pub(super) text: String,
    pub(super) thoughts: String,
    pub(super) calls: Vec<(Option<String>, String, String)>,
    pub(super) finish: Option<String>,
    pub(super) blocked: bool,
}

pub(super) fn pieces(body: &Value) -> Result<Pieces, TranslateError> {
    let mut p = Pieces::default();
    let Some(cand) = body.get("candidates").and_then(Value::as_array).and_then(|c| c.first()) else {
        p.blocked = body.get("promptFeedback").and_then(|f| f.get("blockReason")).is_some();
        return Ok(p);
    };
    p.finish = cand.get("finishReason").and_then(Value::as_str).map(str::to_string);
    let parts = cand.get("content").and_then(|c| c.get("parts")).cloned().unwrap_or(Value::Array(Vec::new()));
    let parts: Vec<Part> = serde_json::from_value(parts)
        .map_err(|e| TranslateError::invalid("candidates[0].content.parts", e.to_string()))?;
    for part in parts {
        if let Some(fc) = &part.function_call {
            let name = fc.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
            let args = fc.get("args").cloned().unwrap_or_else(|| Value::Object(Map::new())).to_string();
            let id = fc.get("id").and_then(Value::as_str).map(str::to_string);
            let id = match (id, part.thought_signature) {
                (Some(id), None) => Some(id),
                (id, Some(sig)) => Some(format!("{}{SIGNATURE_SEP}{sig}", id.unwrap_or_default())),
                (None, None) => None,
            };
            p.calls.push((id, name, args));
        } else if let Some(t) = part.text {
            if part.thought == Some(true) {
                p.thoughts.push_str(&t);
            } else {
                p.text.push_str(&t);
            }
        }
    }
    Ok(p)
}

/// A call id: Gemini's own (with the signature), else `call_<n>` (`call_<n>__thought__<sig>`).
pub(super) fn call_id(id: Option<String>, n: u32) -> String {
    match id {
        Some(id) if id.starts_with(SIGNATURE_SEP) => format!("call_{n}{id}"),
        Some(id) => id,
        None => format!("call_{n}"),
    }
}

/// A `generateContent` answer as a `chat.completion` for `model`, created at `created`.
pub fn gemini_response_to_chat(body: &Value, model: &str, created: u64) -> Result<ChatAnswer, TranslateError> {
    let usage = UsageReport::parse(ProviderFamily::Gemini, body)?;
    let p = pieces(body)?;
    let had_calls = !p.calls.is_empty();
    let tool_calls: Vec<ToolCall> = p
        .calls
        .into_iter()
        .zip(0u32..)
        .map(|((id, name, arguments), n)| ToolCall {
            id: call_id(id, n),
            kind: "function".into(),
            function: FunctionCall { name, arguments },
        })
        .collect();
    let finish =
        if p.blocked { "content_filter" } else { finish_reason(p.finish.as_deref().unwrap_or("STOP"), had_calls) };
    let completion = ChatCompletion {
        id: body.get("responseId").and_then(Value::as_str).unwrap_or("gemini").to_string(),
        object: "chat.completion".into(),
        created,
        model: body.get("modelVersion").and_then(Value::as_str).unwrap_or(model).to_string(),
        choices: vec![Choice {
            index: 0,
            message: ResponseMessage {
                role: "assistant".into(),
                content: (!p.text.is_empty() || !had_calls).then_some(p.text),
                reasoning_content: (!p.thoughts.is_empty()).then_some(p.thoughts),
                tool_calls: had_calls.then_some(tool_calls),
            },
            finish_reason: Some(finish.to_string()),
        }],
        usage: Some(usage.openai_usage()),
    };
    Ok(ChatAnswer { completion, usage })
}
