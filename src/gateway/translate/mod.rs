//! Wire-format translation between OpenAI chat completions, Anthropic Messages and Gemini
//! `generateContent`: pure functions from one typed shape to another. No I/O, no clock, no
//! randomness: everything that varies (the `created` time, a default `max_tokens`) is a
//! parameter, so every rule is tested as a table (`tests/translate_golden.rs`).
//!
//! Modules, one per format and direction:
//! - [`openai`]: the OpenAI shapes (request, `chat.completion`, `chat.completion.chunk`, usage);
//! - [`anthropic`]: chat request → Messages request, Messages response → `chat.completion`;
//! - [`anthropic_stream`]: Messages SSE events → `chat.completion.chunk`s, incrementally;
//! - [`gemini`]: chat request → `generateContent`, answers → `chat.completion`; URL builder;
//! - [`gemini_stream`]: Gemini SSE chunks → `chat.completion.chunk`s, incrementally;
//! - [`inbound`]: the `/v1/messages` client surface (Messages request → chat request, chat
//!   answers → Messages answers, `model` replacement for Anthropic pass-through);
//! - [`inbound_stream`]: chat chunks → the Messages SSE event sequence;
//! - [`errors`]: provider error bodies → a failover classification and client error bodies;
//! - [`sse`]: the gateway's one server-sent-events framer and parser, fed arbitrary byte
//!   chunks (the metered pass-through frames its streams with it too).
//!
//! Rules shared by every module:
//! - What cannot map is refused with [`TranslateError::Unsupported`] naming the field (the
//!   gateway answers 400 with [`TranslateError::client_message`]); malformed input is
//!   [`TranslateError::Invalid`]; never a panic.
//! - What is silently meaningless upstream is dropped, and the dropped field names are returned
//!   next to the translation ([`Translated::dropped`]) so the gateway can log or expose them.
//! - Usage is read with the existing per-provider rules of [`crate::pricing::parse_usage`] into
//!   a [`UsageReport`] whose cost is exact ([`UsageReport::cost`]); it is never guessed as zero.
//! - Thinking budgets per `reasoning_effort` are one table, [`thinking_budget`].

pub mod anthropic;
pub mod anthropic_stream;
pub mod errors;
pub mod gemini;
pub mod gemini_stream;
pub mod inbound;
pub mod inbound_stream;
pub mod openai;
pub mod sse;

use serde_json::{Map, Value};

use crate::config::ProviderFamily;
use crate::policy::Money;
use crate::pricing::{Prices, TokenCounts, UsageError, parse_usage};

pub use anthropic::{AnthropicRequestOptions, chat_to_messages, messages_response_to_chat};
pub use anthropic_stream::{AnthropicStream, StreamOutput};
pub use errors::{ErrorClass, UpstreamError, anthropic_error, gemini_error, openai_error, openai_error_to_anthropic};
pub use gemini::{chat_to_gemini, gemini_response_to_chat, gemini_url};
pub use gemini_stream::GeminiStream;
pub use inbound::{InboundOptions, MessagesAnswer, chat_response_to_messages, messages_to_chat, replace_model};
pub use inbound_stream::{ChatToMessagesStream, MessagesEvent};
pub use sse::{SseEvent, SseParser};

/// Largest single SSE event (or line) a stream translator buffers before it gives up with
/// [`TranslateError::EventTooLarge`]: 4 MiB. Anthropic and OpenAI events are a few KiB (tool
/// arguments arrive in fragments), but Gemini sends a function call whole in one event, so a
/// tool call writing a large file needs room.
pub const MAX_EVENT_BYTES: usize = 4 << 20;

/// Why a translation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    /// The request uses a feature the target format cannot express (answer 400).
    #[error("`{field}` is not supported by the {target} backend: {why}")]
    Unsupported {
        /// The request field, as a JSON path (`n`, `messages[2].content[0].type`).
        field: String,
        /// The target wire format (`Anthropic Messages`, `Gemini`, `OpenAI`).
        target: &'static str,
        /// What exactly cannot map.
        why: String,
    },
    /// A field has a shape or value that is not valid input (answer 400 to a client; an
    /// upstream answer in this state is an upstream error).
    #[error("`{field}`: {why}")]
    Invalid {
        /// The field, as a JSON path.
        field: String,
        /// What is wrong with it.
        why: String,
    },
    /// One stream event (or line) exceeded [`MAX_EVENT_BYTES`] (or the parser's limit).
    #[error("a stream event exceeds the limit of {limit} bytes")]
    EventTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The stream ended before its terminal event.
    #[error("the {format} stream ended before {expected}")]
    Truncated {
        /// The stream's wire format.
        format: &'static str,
        /// What was missing (`message_stop`, `a finishReason`, `data: [DONE]`).
        expected: &'static str,
    },
    /// The upstream usage could not be read (never billed as zero).
    #[error("upstream usage: {0}")]
    Usage(#[from] UsageError),
    /// The upstream reported an error inside a stream.
    #[error("{0}")]
    Upstream(UpstreamError),
}

impl TranslateError {
    /// The message for a client 400 (names the field).
    pub fn client_message(&self) -> String {
        self.to_string()
    }

    /// The request field the error is about, if it is about one.
    pub fn field(&self) -> Option<&str> {
        match self {
            TranslateError::Unsupported { field, .. } | TranslateError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, why: impl Into<String>) -> Self {
        TranslateError::Invalid { field: field.into(), why: why.into() }
    }

    pub(crate) fn unsupported(field: impl Into<String>, target: &'static str, why: impl Into<String>) -> Self {
        TranslateError::Unsupported { field: field.into(), target, why: why.into() }
    }
}

/// A translated value and the names of the request fields that were dropped on the way
/// (accepted but meaningless or unavailable upstream).
#[derive(Debug, Clone, PartialEq)]
pub struct Translated<T> {
    /// The translation.
    pub value: T,
    /// Dropped field names, in request order, each once.
    pub dropped: Vec<String>,
}

/// The tokens of one answer, split into the disjoint billing kinds (Anthropic's 1-hour cache
/// writes are their own kind, [`TokenCounts::cache_write_1h`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageReport {
    /// Disjoint counts, by the provider's rule in [`crate::pricing::parse_usage`].
    pub counts: TokenCounts,
}

impl UsageReport {
    /// Reads `body` (an answer, or a final stream event / chunk) with the family's usage rule.
    pub fn parse(family: ProviderFamily, body: &Value) -> Result<UsageReport, TranslateError> {
        Ok(UsageReport { counts: parse_usage(family, body)? })
    }

    /// The exact cost at `prices` (every token billed once, each kind at its own price).
    pub fn cost(&self, prices: &Prices) -> Money {
        self.counts.cost(prices)
    }

    /// The OpenAI `usage` object for these counts, in OpenAI's nesting: cache reads and writes
    /// inside `prompt_tokens` (reads also as `prompt_tokens_details.cached_tokens`), reasoning
    /// inside `completion_tokens` (also as `completion_tokens_details.reasoning_tokens`).
    pub fn openai_usage(&self) -> openai::Usage {
        let c = &self.counts;
        let prompt = c.prompt();
        let completion = c.output + c.reasoning;
        openai::Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            prompt_tokens_details: Some(openai::PromptTokensDetails { cached_tokens: c.cached_input }),
            completion_tokens_details: (c.reasoning > 0)
                .then_some(openai::CompletionTokensDetails { reasoning_tokens: c.reasoning }),
        }
    }

    /// The Anthropic `usage` object for these counts (cache reads and writes outside
    /// `input_tokens`; reasoning inside `output_tokens`, as Anthropic reports thinking).
    pub fn anthropic_usage(&self) -> Value {
        let c = &self.counts;
        let mut m = Map::new();
        m.insert("input_tokens".into(), c.input.into());
        m.insert("cache_creation_input_tokens".into(), c.cache_writes().into());
        if c.cache_write_1h > 0 {
            m.insert(
                "cache_creation".into(),
                serde_json::json!({"ephemeral_5m_input_tokens": c.cache_write, "ephemeral_1h_input_tokens": c.cache_write_1h}),
            );
        }
        m.insert("cache_read_input_tokens".into(), c.cached_input.into());
        m.insert("output_tokens".into(), (c.output + c.reasoning).into());
        Value::Object(m)
    }
}

/// A translated non-streamed answer and its metered usage.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatAnswer {
    /// The `chat.completion`.
    pub completion: openai::ChatCompletion,
    /// Exact usage.
    pub usage: UsageReport,
}

/// OpenAI `reasoning_effort` values and the thinking budget (tokens) each becomes upstream.
///
/// | effort | Anthropic `thinking.budget_tokens` | Gemini `thinkingBudget` |
/// | --- | --- | --- |
/// | `none` | thinking off (field omitted) | 0 |
/// | `minimal` | 1024 (Anthropic's minimum) | 512 |
/// | `low` | 2048 | 2048 |
/// | `medium` | 8192 | 8192 |
/// | `high` | 24576 | 24576 |
///
/// Any other value is [`TranslateError::Invalid`].
pub fn thinking_budget(effort: &str, gemini: bool) -> Result<Option<u32>, TranslateError> {
    Ok(match effort {
        "none" if gemini => Some(0),
        "none" => None,
        "minimal" if gemini => Some(512),
        "minimal" => Some(1024),
        "low" => Some(2048),
        "medium" => Some(8192),
        "high" => Some(24576),
        other => {
            return Err(TranslateError::invalid(
                "reasoning_effort",
                format!("unknown value `{other}` (expected none, minimal, low, medium or high)"),
            ));
        }
    })
}

/// A `data:` URL split into its media type and base64 payload; `None` if `url` is not a base64
/// data URL.
pub(crate) fn parse_data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let media = meta.strip_suffix(";base64")?;
    Some((media, data))
}

/// `true` for an `http://` or `https://` URL.
pub(crate) fn is_http_url(url: &str) -> bool {
    let lower = url.get(..8).map(str::to_ascii_lowercase).unwrap_or_default();
    lower.starts_with("http://") || lower.starts_with("https://")
}

/// The function definitions of a request's `tools` (`None` when it has none), for a target
/// that only takes `function` tools: any other type is refused naming `tools[i].type`, and a
/// `strict` flag is listed as dropped.
pub(crate) fn function_tools<'a>(
    req: &'a openai::ChatRequest,
    target: &'static str,
    dropped: &mut Vec<String>,
) -> Result<Option<Vec<&'a openai::FunctionDef>>, TranslateError> {
    let Some(tools) = req.tools.as_ref().filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let mut out = Vec::with_capacity(tools.len());
    for (i, t) in tools.iter().enumerate() {
        let f = match (t.kind.as_str(), &t.function) {
            ("function", Some(f)) => f,
            (kind, _) => {
                return Err(TranslateError::unsupported(
                    format!("tools[{i}].type"),
                    target,
                    format!("tool type `{kind}` (only `function` with a `function` object)"),
                ));
            }
        };
        if f.strict.is_some() {
            drop_field(dropped, "tools[].function.strict");
        }
        out.push(f);
    }
    Ok(Some(out))
}

/// Pushes `name` to `dropped` once.
pub(crate) fn drop_field(dropped: &mut Vec<String>, name: impl Into<String>) {
    let name = name.into();
    if !dropped.contains(&name) {
        dropped.push(name);
    }
}
