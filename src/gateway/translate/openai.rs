//! The OpenAI chat-completions shapes the translators read and write.
//!
//! Requests are read leniently: every field the translators know is typed; anything else lands
//! in `extra` (so a translator can refuse or drop it *by name*, never silently). Content parts
//! are a struct with a `type` string rather than a tagged enum, so an unknown part type is
//! refused with its JSON path instead of a generic serde error. Answers and chunks are written
//! in OpenAI's exact nesting (`content: null` next to `tool_calls`, `finish_reason: null` on
//! non-final chunks, usage only on the usage chunk).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `POST /v1/chat/completions` body.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct ChatRequest {
    /// Model (alias on the way in, upstream model on the way out).
    #[serde(default)]
    pub model: String,
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Legacy output cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Output cap (reasoning included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Number of choices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    /// Stop sequences (a string or a list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    /// Server-sent events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// `{"include_usage": true}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// Function tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Tool>>,
    /// `"none" | "auto" | "required" | {"type":"function","function":{"name":...}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    /// Whether the model may call several tools in one turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    /// `none | minimal | low | medium | high`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_effort: Option<String>,
    /// `{"type": "text" | "json_object" | "json_schema", ...}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<Value>,
    /// Token log probabilities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<bool>,
    /// Every other field, by name.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `stop`: one sequence or several.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(untagged)]
pub enum Stop {
    /// One sequence.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl Stop {
    /// The sequences as a list.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

/// `stream_options`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamOptions {
    /// Ask for a final usage chunk.
    #[serde(default)]
    pub include_usage: bool,
}

/// One message of the conversation.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct ChatMessage {
    /// `system | developer | user | assistant | tool`.
    pub role: String,
    /// Text or parts; absent or null on an assistant turn that only calls tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<MessageContent>,
    /// Participant name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Assistant tool calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// The call a `tool` message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// Every other field.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `content`: a string or a list of parts.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(untagged)]
pub enum MessageContent {
    /// Plain text.
    Text(String),
    /// Typed parts.
    Parts(Vec<ContentPart>),
}

/// One content part (`text`, `image_url`, or a type a translator refuses by name).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct ContentPart {
    /// Part type.
    #[serde(rename = "type")]
    pub kind: String,
    /// `text` parts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// `image_url` parts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_url: Option<ImageUrl>,
    /// Anthropic prompt-caching marker, passed through to Anthropic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<Value>,
    /// Every other field.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `image_url`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageUrl {
    /// `https://...` or `data:<media type>;base64,<data>`.
    pub url: String,
    /// `auto | low | high` (dropped by the native formats).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A complete tool call (assistant message, non-streamed answer).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolCall {
    /// Call id.
    pub id: String,
    /// Always `function`.
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    /// Name and JSON-encoded arguments.
    pub function: FunctionCall,
}

fn function_type() -> String {
    "function".to_string()
}

/// `function` of a tool call.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct FunctionCall {
    /// Function name.
    pub name: String,
    /// Arguments as a JSON text.
    #[serde(default)]
    pub arguments: String,
}

/// A tool the model may call.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct Tool {
    /// Only `function` maps.
    #[serde(rename = "type")]
    pub kind: String,
    /// The function.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<FunctionDef>,
}

/// A function declaration.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct FunctionDef {
    /// Name.
    pub name: String,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON Schema of the arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    /// Strict schema adherence (OpenAI only; dropped by the native formats).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// `chat.completion`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct ChatCompletion {
    /// Answer id.
    #[serde(default)]
    pub id: String,
    /// `chat.completion`.
    #[serde(default)]
    pub object: String,
    /// Unix seconds.
    #[serde(default)]
    pub created: u64,
    /// Model that answered.
    #[serde(default)]
    pub model: String,
    /// Choices (exactly one from the translators).
    #[serde(default)]
    pub choices: Vec<Choice>,
    /// Usage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// One choice of a `chat.completion`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct Choice {
    /// Index.
    #[serde(default)]
    pub index: u32,
    /// The message.
    #[serde(default)]
    pub message: ResponseMessage,
    /// `stop | length | tool_calls | content_filter`.
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// The assistant message of an answer.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct ResponseMessage {
    /// `assistant`.
    #[serde(default)]
    pub role: String,
    /// Text (null when the turn only calls tools).
    #[serde(default)]
    pub content: Option<String>,
    /// Thinking text (the `reasoning_content` convention of DeepSeek and vLLM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// Tool calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
}

/// `chat.completion.chunk`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct ChatChunk {
    /// Stream id (the same on every chunk).
    #[serde(default)]
    pub id: String,
    /// `chat.completion.chunk`.
    #[serde(default)]
    pub object: String,
    /// Unix seconds.
    #[serde(default)]
    pub created: u64,
    /// Model.
    #[serde(default)]
    pub model: String,
    /// One choice, or none on the usage chunk.
    #[serde(default)]
    pub choices: Vec<ChunkChoice>,
    /// Only on the usage chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// A chunk's choice.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct ChunkChoice {
    /// Index.
    #[serde(default)]
    pub index: u32,
    /// What is new.
    #[serde(default)]
    pub delta: Delta,
    /// Set on the last content chunk.
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// A chunk's delta.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct Delta {
    /// `assistant`, on the first chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Thinking text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// Tool-call fragments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
}

/// A fragment of a streamed tool call: the first carries `id` and `name`, later ones
/// argument text.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolCallDelta {
    /// Which tool call of the turn (0-based).
    pub index: u32,
    /// Call id (first fragment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `function` (first fragment).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Name and/or argument text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<FunctionDelta>,
}

/// The function part of a tool-call fragment.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct FunctionDelta {
    /// Name (first fragment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Argument text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

/// OpenAI `usage` (cached ⊂ prompt, reasoning ⊂ completion).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// All input tokens.
    pub prompt_tokens: u64,
    /// All output tokens.
    pub completion_tokens: u64,
    /// Sum.
    pub total_tokens: u64,
    /// Cache reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
    /// Reasoning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens_details: Option<CompletionTokensDetails>,
}

/// `prompt_tokens_details`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct PromptTokensDetails {
    /// Tokens read from the prompt cache.
    #[serde(default)]
    pub cached_tokens: u64,
}

/// `completion_tokens_details`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct CompletionTokensDetails {
    /// Reasoning tokens.
    #[serde(default)]
    pub reasoning_tokens: u64,
}

impl ChatChunk {
    /// A chunk with one choice carrying `delta`.
    pub fn delta(id: &str, created: u64, model: &str, delta: Delta, finish_reason: Option<String>) -> Self {
        ChatChunk {
            id: id.to_string(),
            object: "chat.completion.chunk".to_string(),
            created,
            model: model.to_string(),
            choices: vec![ChunkChoice { index: 0, delta, finish_reason }],
            usage: None,
        }
    }

    /// The usage chunk (`choices: []`).
    pub fn usage(id: &str, created: u64, model: &str, usage: Usage) -> Self {
        ChatChunk {
            id: id.to_string(),
            object: "chat.completion.chunk".to_string(),
            created,
            model: model.to_string(),
            choices: Vec::new(),
            usage: Some(usage),
        }
    }

    /// The chunk as one SSE event (`data: {...}\n\n`).
    pub fn to_sse(&self) -> String {
        format!("data: {}\n\n", serde_json::to_string(self).unwrap_or_default())
    }
}

/// The OpenAI stream terminator.
pub const SSE_DONE: &str = "data: [DONE]\n\n";

/// Parses a request body into a [`ChatRequest`], naming the failing field.
pub fn parse_chat_request(body: &[u8]) -> Result<ChatRequest, super::TranslateError> {
    serde_json::from_slice(body).map_err(|e| super::TranslateError::invalid("(request body)", e.to_string()))
}
