//! Every usage field each provider family reports, and what tollgate does with it: **billed**
//! (read by that family's rule into a token kind) or **not billed**, with the reason. The list
//! is the contract of the usage rules with the providers' API references: a golden payload
//! carrying a field that is in neither list fails `tests/pricing_golden.rs`, and
//! `docs/usage-fields.md` holds [`markdown_table`] verbatim (a test compares them), so a field
//! a provider adds is either priced or its omission is explained where users read.
//!
//! Paths are relative to the usage object the family's rule reads (`usage`, `response.usage` or
//! Gemini's `usageMetadata`); `a.b` is a member of an object, `a[].b` a member of each item of
//! an array.

use crate::api::ProviderFamily;

/// What the gateway does with a usage field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Treatment {
    /// Read into the token kinds by the family's rule (what it becomes).
    Billed(&'static str),
    /// Not billed on its own, and why.
    NotBilled(&'static str),
}

/// Which usage shape a field belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// OpenAI chat completions, completions and embeddings; Mistral and Qwen (OpenAI-shaped).
    OpenAIChat,
    /// OpenAI Responses API.
    OpenAIResponses,
    /// DeepSeek chat completions.
    DeepSeek,
    /// Anthropic Messages API, native.
    Anthropic,
    /// Anthropic's OpenAI-compatible endpoint.
    AnthropicOpenAI,
    /// Gemini native `usageMetadata`.
    Gemini,
    /// Gemini's OpenAI-compatible endpoint.
    GeminiOpenAI,
}

impl Shape {
    /// The name shown in the docs.
    pub fn label(self) -> &'static str {
        match self {
            Shape::OpenAIChat => "OpenAI chat / completions / embeddings (also Mistral, Qwen)",
            Shape::OpenAIResponses => "OpenAI Responses",
            Shape::DeepSeek => "DeepSeek",
            Shape::Anthropic => "Anthropic Messages",
            Shape::AnthropicOpenAI => "Anthropic, OpenAI-compatible endpoint",
            Shape::Gemini => "Gemini `usageMetadata`",
            Shape::GeminiOpenAI => "Gemini, OpenAI-compatible endpoint",
        }
    }

    /// The shapes a family's answers may carry.
    pub fn of(family: ProviderFamily) -> &'static [Shape] {
        match family {
            ProviderFamily::OpenAI | ProviderFamily::Mistral | ProviderFamily::Qwen => {
                &[Shape::OpenAIChat, Shape::OpenAIResponses]
            }
            ProviderFamily::DeepSeek => &[Shape::DeepSeek],
            ProviderFamily::Anthropic => &[Shape::Anthropic, Shape::AnthropicOpenAI],
            ProviderFamily::Gemini => &[Shape::Gemini, Shape::GeminiOpenAI],
        }
    }
}

/// One usage field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsageField {
    /// The usage shape.
    pub shape: Shape,
    /// Path inside the usage object.
    pub path: &'static str,
    /// Billed or not, and how or why.
    pub treatment: Treatment,
}

use Shape::*;
use Treatment::{Billed, NotBilled};

const fn f(shape: Shape, path: &'static str, treatment: Treatment) -> UsageField {
    UsageField { shape, path, treatment }
}

const SUM: &str = "the sum of the billed counts, checked against them (an answer whose total disagrees is refused as inconsistent, never billed twice)";
const INSIDE_PROMPT: &str = "a breakdown of the prompt count by modality, billed inside it at the route's input price; a provider that prices this modality differently needs that price in the route's `input`";
const INSIDE_COMPLETION: &str = "a breakdown of the completion count, billed inside it at the route's output price";
const LABEL: &str = "a label of the breakdown's count, not a count";

/// Every known usage field, by shape.
pub const USAGE_FIELDS: &[UsageField] = &[
    // OpenAI chat completions, completions, embeddings (and Mistral, Qwen).
    f(OpenAIChat, "prompt_tokens", Billed("input: what is left after cache reads and writes are carved out")),
    f(OpenAIChat, "completion_tokens", Billed("output: what is left after reasoning is carved out")),
    f(OpenAIChat, "total_tokens", NotBilled(SUM)),
    f(OpenAIChat, "prompt_tokens_details.cached_tokens", Billed("cached_input (inside prompt_tokens)")),
    f(OpenAIChat, "prompt_tokens_details.cache_write_tokens", Billed("cache_write (inside prompt_tokens)")),
    f(OpenAIChat, "prompt_tokens_details.cache_creation_input_tokens", Billed("cache_write (Qwen's name for it)")),
    f(
        OpenAIChat,
        "prompt_tokens_details.cache_creation.ephemeral_5m_input_tokens",
        NotBilled(
            "Qwen's breakdown of cache_creation_input_tokens by lifetime: its explicit cache has only the 5-minute one, billed as cache_write",
        ),
    ),
    f(OpenAIChat, "prompt_tokens_details.cache_type", NotBilled("a label (Qwen's cache kind), not a count")),
    f(OpenAIChat, "prompt_tokens_details.audio_tokens", NotBilled(INSIDE_PROMPT)),
    f(OpenAIChat, "prompt_tokens_details.image_tokens", NotBilled(INSIDE_PROMPT)),
    f(OpenAIChat, "prompt_tokens_details.text_tokens", NotBilled(INSIDE_PROMPT)),
    f(OpenAIChat, "completion_tokens_details.reasoning_tokens", Billed("reasoning (inside completion_tokens)")),
    f(OpenAIChat, "completion_tokens_details.audio_tokens", NotBilled(INSIDE_COMPLETION)),
    f(OpenAIChat, "completion_tokens_details.text_tokens", NotBilled(INSIDE_COMPLETION)),
    f(OpenAIChat, "completion_tokens_details.accepted_prediction_tokens", NotBilled(INSIDE_COMPLETION)),
    f(
        OpenAIChat,
        "completion_tokens_details.rejected_prediction_tokens",
        NotBilled(
            "inside completion_tokens, so billed as output, which is what OpenAI charges for rejected predicted tokens",
        ),
    ),
    // OpenAI Responses.
    f(OpenAIResponses, "input_tokens", Billed("input: what is left after cache reads and writes are carved out")),
    f(OpenAIResponses, "output_tokens", Billed("output: what is left after reasoning is carved out")),
    f(OpenAIResponses, "total_tokens", NotBilled(SUM)),
    f(OpenAIResponses, "input_tokens_details.cached_tokens", Billed("cached_input (inside input_tokens)")),
    f(OpenAIResponses, "input_tokens_details.cache_write_tokens", Billed("cache_write (inside input_tokens)")),
    f(OpenAIResponses, "output_tokens_details.reasoning_tokens", Billed("reasoning (inside output_tokens)")),
    // DeepSeek.
    f(DeepSeek, "prompt_tokens", Billed("checked: cache hits + misses")),
    f(DeepSeek, "prompt_cache_hit_tokens", Billed("cached_input")),
    f(DeepSeek, "prompt_cache_miss_tokens", Billed("input")),
    f(
        DeepSeek,
        "prompt_tokens_details.cached_tokens",
        Billed("cached_input when the hit count is absent (equal to it otherwise)"),
    ),
    f(DeepSeek, "completion_tokens", Billed("output: what is left after reasoning is carved out")),
    f(DeepSeek, "completion_tokens_details.reasoning_tokens", Billed("reasoning (inside completion_tokens)")),
    f(DeepSeek, "total_tokens", NotBilled(SUM)),
    // Anthropic Messages.
    f(Anthropic, "input_tokens", Billed("input")),
    f(Anthropic, "output_tokens", Billed("output (extended thinking is inside it and not broken out)")),
    f(Anthropic, "cache_read_input_tokens", Billed("cached_input")),
    f(Anthropic, "cache_creation_input_tokens", Billed("cache_write, less its 1-hour part")),
    f(Anthropic, "cache_creation.ephemeral_5m_input_tokens", Billed("cache_write (checked against the total)")),
    f(Anthropic, "cache_creation.ephemeral_1h_input_tokens", Billed("cache_write_1h, at `cacheWrite1h`")),
    f(
        Anthropic,
        "server_tool_use.web_search_requests",
        NotBilled("a fee per search, not a token price: not metered, so budgets under-count answers that searched"),
    ),
    f(
        Anthropic,
        "server_tool_use.web_fetch_requests",
        NotBilled("a count of requests; web fetch adds no fee beyond the tokens it brings, which are in input_tokens"),
    ),
    f(Anthropic, "service_tier", NotBilled("a label, not a count (a priced tier is a route's prices)")),
    f(Anthropic, "inference_geo", NotBilled("a label, not a count")),
    // Anthropic, OpenAI-compatible endpoint.
    f(
        AnthropicOpenAI,
        "prompt_tokens",
        Billed("input (cache counts outside it, unless total_tokens proves them inside)"),
    ),
    f(AnthropicOpenAI, "completion_tokens", Billed("output: what is left after reasoning is carved out")),
    f(
        AnthropicOpenAI,
        "total_tokens",
        NotBilled("decides whether cache counts are inside prompt_tokens, then checked"),
    ),
    f(AnthropicOpenAI, "cache_read_input_tokens", Billed("cached_input")),
    f(AnthropicOpenAI, "cache_creation_input_tokens", Billed("cache_write")),
    f(
        AnthropicOpenAI,
        "prompt_tokens_details.cached_tokens",
        Billed("cached_input (the same tokens as cache_read_input_tokens)"),
    ),
    f(AnthropicOpenAI, "completion_tokens_details.reasoning_tokens", Billed("reasoning (inside completion_tokens)")),
    // Gemini native.
    f(Gemini, "promptTokenCount", Billed("input: what is left after cachedContentTokenCount is carved out")),
    f(Gemini, "cachedContentTokenCount", Billed("cached_input (inside promptTokenCount)")),
    f(Gemini, "candidatesTokenCount", Billed("output")),
    f(Gemini, "thoughtsTokenCount", Billed("reasoning (outside candidatesTokenCount)")),
    f(
        Gemini,
        "toolUsePromptTokenCount",
        Billed("input (tool results fed back to the model, outside promptTokenCount)"),
    ),
    f(Gemini, "totalTokenCount", NotBilled(SUM)),
    f(
        Gemini,
        "responseTokenCount",
        NotBilled("the Live API's name for the candidates' total; generateContent answers do not carry it"),
    ),
    f(Gemini, "promptTokensDetails[].modality", NotBilled(LABEL)),
    f(Gemini, "promptTokensDetails[].tokenCount", NotBilled(INSIDE_PROMPT)),
    f(Gemini, "cacheTokensDetails[].modality", NotBilled(LABEL)),
    f(
        Gemini,
        "cacheTokensDetails[].tokenCount",
        NotBilled("a breakdown of cachedContentTokenCount by modality, billed inside it at the cached price"),
    ),
    f(Gemini, "candidatesTokensDetails[].modality", NotBilled(LABEL)),
    f(Gemini, "candidatesTokensDetails[].tokenCount", NotBilled(INSIDE_COMPLETION)),
    f(Gemini, "responseTokensDetails[].modality", NotBilled(LABEL)),
    f(Gemini, "responseTokensDetails[].tokenCount", NotBilled(INSIDE_COMPLETION)),
    f(Gemini, "toolUsePromptTokensDetails[].modality", NotBilled(LABEL)),
    f(
        Gemini,
        "toolUsePromptTokensDetails[].tokenCount",
        NotBilled("a breakdown of toolUsePromptTokenCount by modality, billed inside it"),
    ),
    f(Gemini, "trafficType", NotBilled("a label (on-demand or provisioned throughput), not a count")),
    f(Gemini, "serviceTier", NotBilled("a label, not a count (a priced tier is a route's prices)")),
    // Gemini, OpenAI-compatible endpoint.
    f(GeminiOpenAI, "prompt_tokens", Billed("input: what is left after cache reads are carved out")),
    f(GeminiOpenAI, "completion_tokens", Billed("output")),
    f(GeminiOpenAI, "total_tokens", Billed("reasoning: what it holds beyond prompt + completion")),
    f(GeminiOpenAI, "completion_tokens_details.reasoning_tokens", Billed("reasoning (checked against total_tokens)")),
    f(GeminiOpenAI, "reasoning_tokens", Billed("reasoning (Vertex AI's name; checked against total_tokens)")),
    f(GeminiOpenAI, "prompt_tokens_details.cached_tokens", Billed("cached_input (inside prompt_tokens)")),
    f(
        GeminiOpenAI,
        "extra_properties.google.traffic_type",
        NotBilled("a label (Vertex AI's traffic type), not a count"),
    ),
];

/// The entry for `path` in any of `family`'s shapes.
pub fn lookup(family: ProviderFamily, path: &str) -> Option<&'static UsageField> {
    let shapes = Shape::of(family);
    USAGE_FIELDS.iter().find(|u| u.path == path && shapes.contains(&u.shape))
}

/// The table of `docs/usage-fields.md`: one row per field, grouped by shape.
pub fn markdown_table() -> String {
    let mut out = String::from("| shape | field | billed | as / why not |\n| --- | --- | --- | --- |\n");
    for u in USAGE_FIELDS {
        let (billed, text) = match u.treatment {
            Billed(t) => ("yes", t),
            NotBilled(t) => ("no", t),
        };
        out.push_str(&format!("| {} | `{}` | {billed} | {text} |\n", u.shape.label(), u.path));
    }
    out
}

/// The leaf paths of a usage object, in [`UsageField::path`] notation.
pub fn leaf_paths(v: &serde_json::Value) -> Vec<String> {
    fn walk(v: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(x, &p, out);
                }
            }
            serde_json::Value::Array(items) => {
                for x in items {
                    walk(x, &format!("{prefix}[]"), out);
                }
            }
            _ => out.push(prefix.to_string()),
        }
    }
    let mut out = Vec::new();
    walk(v, "", &mut out);
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_field_is_listed_once_per_shape() {
        for (i, a) in USAGE_FIELDS.iter().enumerate() {
            for b in &USAGE_FIELDS[i + 1..] {
                assert!(!(a.shape == b.shape && a.path == b.path), "{a:?} listed twice");
            }
        }
    }

    #[test]
    fn leaf_paths_name_nested_members_and_array_items() {
        let v = serde_json::json!({"a": 1, "b": {"c": 2, "d": null}, "e": [{"f": 1}, {"f": 2, "g": "x"}]});
        assert_eq!(leaf_paths(&v), ["a", "b.c", "b.d", "e[].f", "e[].g"]);
    }

    #[test]
    fn lookup_follows_the_family_shapes() {
        let qwen_write = lookup(ProviderFamily::Qwen, "prompt_tokens_details.cache_creation_input_tokens");
        assert!(matches!(qwen_write.map(|u| u.treatment), Some(Billed(_))));
        assert!(lookup(ProviderFamily::DeepSeek, "cache_read_input_tokens").is_none());
        assert!(lookup(ProviderFamily::Anthropic, "server_tool_use.web_search_requests").is_some());
    }
}
