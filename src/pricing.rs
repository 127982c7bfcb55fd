//! Usage → cost: what each provider's usage counts include, and the exact price of a request.
//!
//! Upstreams disagree on which counts include which. [`parse_usage`] applies one explicit rule
//! per [`ProviderFamily`] and returns [`TokenCounts`] whose five kinds are **disjoint**: every
//! token the upstream billed lands in exactly one kind, so [`TokenCounts::total`] equals the
//! provider's own total and [`TokenCounts::cost`] bills each token exactly once.
//!
//! Nothing here is ever guessed as zero: a response without usage is [`UsageError::Missing`], a
//! count of the wrong type is [`UsageError::Malformed`], and counts that contradict each other
//! (a part larger than its whole, a total that is not the sum) are [`UsageError::Inconsistent`].
//! Optional *detail* fields (cached, reasoning, cache-write breakdowns) may be absent and then
//! count as zero; the totals they are carved out of may not.
//!
//! Money is exact ([`Money`] is integer pico-dollars, [`PricePerMillion`] an integer per-token
//! price): there is no floating point anywhere in this module, and a count written as a JSON
//! float (`12.0`) is rejected rather than converted.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::api::{Pricing, ProviderFamily};
use crate::policy::money::{Money, ParseMoneyError, PricePerMillion};

// ---------------------------------------------------------------------------------------------
// Prices
// ---------------------------------------------------------------------------------------------

/// The price of each token kind, in USD per one million tokens.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Prices {
    /// Uncached, non-cache-write input tokens.
    pub input: PricePerMillion,
    /// Input tokens read from the prompt cache.
    pub cached_input: PricePerMillion,
    /// Input tokens written to the prompt cache.
    pub cache_write: PricePerMillion,
    /// Visible (non-reasoning) output tokens.
    pub output: PricePerMillion,
    /// Reasoning ("thinking") output tokens.
    pub reasoning: PricePerMillion,
}

/// A price in a `ModelRoute`'s `pricing` that is not a valid USD-per-1M amount.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pricing.{field}: {source}")]
pub struct PricingError {
    /// The spec field, as written in the manifest (`input`, `cachedInput`, `cacheWrite`,
    /// `output`, `reasoning`).
    pub field: &'static str,
    /// Why the value does not parse.
    pub source: ParseMoneyError,
}

impl Prices {
    /// Prices from a route's spec: `cachedInput` and `cacheWrite` default to `input`,
    /// `reasoning` defaults to `output`.
    pub fn from_spec(spec: &Pricing) -> Result<Prices, PricingError> {
        fn price(field: &'static str, s: &str) -> Result<PricePerMillion, PricingError> {
            s.parse().map_err(|source| PricingError { field, source })
        }
        fn or_default(
            field: &'static str,
            s: Option<&String>,
            default: PricePerMillion,
        ) -> Result<PricePerMillion, PricingError> {
            s.map_or(Ok(default), |s| price(field, s))
        }
        let input = price("input", &spec.input)?;
        let output = price("output", &spec.output)?;
        Ok(Prices {
            input,
            cached_input: or_default("cachedInput", spec.cached_input.as_ref(), input)?,
            cache_write: or_default("cacheWrite", spec.cache_write.as_ref(), input)?,
            output,
            reasoning: or_default("reasoning", spec.reasoning.as_ref(), output)?,
        })
    }

    /// The price of one kind.
    pub fn get(&self, kind: TokenKind) -> PricePerMillion {
        match kind {
            TokenKind::Input => self.input,
            TokenKind::CachedInput => self.cached_input,
            TokenKind::CacheWrite => self.cache_write,
            TokenKind::Output => self.output,
            TokenKind::Reasoning => self.reasoning,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Token counts
// ---------------------------------------------------------------------------------------------

/// One of the five disjoint kinds a token is billed as.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// Uncached, non-cache-write input.
    Input,
    /// Input read from the prompt cache.
    CachedInput,
    /// Input written to the prompt cache.
    CacheWrite,
    /// Visible (non-reasoning) output.
    Output,
    /// Reasoning output.
    Reasoning,
}

impl TokenKind {
    /// Every kind, in label order.
    pub const ALL: [TokenKind; 5] =
        [TokenKind::Input, TokenKind::CachedInput, TokenKind::CacheWrite, TokenKind::Output, TokenKind::Reasoning];

    /// The metric label value (`tollgate_tokens_total{kind=...}`).
    pub const fn label(self) -> &'static str {
        match self {
            TokenKind::Input => "input",
            TokenKind::CachedInput => "cached_input",
            TokenKind::CacheWrite => "cache_write",
            TokenKind::Output => "output",
            TokenKind::Reasoning => "reasoning",
        }
    }
}

impl fmt::Display for TokenKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Tokens of one request (or a sum of requests), split into disjoint kinds: each upstream token
/// is counted in exactly one field.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TokenCounts {
    /// Uncached input that was neither read from nor written to the prompt cache.
    pub input: u64,
    /// Input read from the prompt cache.
    pub cached_input: u64,
    /// Input written to the prompt cache.
    pub cache_write: u64,
    /// Visible (non-reasoning) output.
    pub output: u64,
    /// Reasoning output.
    pub reasoning: u64,
}

impl TokenCounts {
    /// The count of one kind.
    pub fn get(&self, kind: TokenKind) -> u64 {
        match kind {
            TokenKind::Input => self.input,
            TokenKind::CachedInput => self.cached_input,
            TokenKind::CacheWrite => self.cache_write,
            TokenKind::Output => self.output,
            TokenKind::Reasoning => self.reasoning,
        }
    }

    /// `(kind, count)` for every kind, in [`TokenKind::ALL`] order; `kind.label()` is the metric
    /// label value.
    pub fn by_kind(&self) -> [(TokenKind, u64); 5] {
        TokenKind::ALL.map(|k| (k, self.get(k)))
    }

    /// All tokens, every kind once (saturating, which real counts never reach).
    pub fn total(&self) -> u64 {
        self.by_kind().iter().fold(0u64, |acc, (_, n)| acc.saturating_add(*n))
    }

    /// The cost of each kind, exact.
    pub fn cost_by_kind(&self, prices: &Prices) -> [(TokenKind, Money); 5] {
        TokenKind::ALL.map(|k| (k, prices.get(k).cost(self.get(k))))
    }

    /// The cost of the request: the sum of the per-kind costs, exact.
    pub fn cost(&self, prices: &Prices) -> Money {
        self.cost_by_kind(prices).into_iter().map(|(_, m)| m).sum()
    }
}

// ---------------------------------------------------------------------------------------------
// Usage errors
// ---------------------------------------------------------------------------------------------

/// Why an upstream response's usage could not be turned into [`TokenCounts`]. Never a reason to
/// bill zero.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    /// The response (or stream event) carries no usage object at all, or it is `null`.
    #[error("the upstream response carries no usage object (usage is never assumed to be zero)")]
    Missing,
    /// A usage field is absent though required, or not a non-negative integer.
    #[error("usage field {field}: {why}")]
    Malformed {
        /// JSON path of the field, e.g. `usage.prompt_tokens_details.cached_tokens`.
        field: String,
        /// What is wrong with it.
        why: String,
    },
    /// The counts contradict each other (a part larger than its whole, a total that is not the
    /// sum of its parts).
    #[error("inconsistent usage: {why}")]
    Inconsistent {
        /// Which counts disagree, with their values.
        why: String,
    },
}

impl UsageError {
    /// Label value for an error-kind metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            UsageError::Missing => "missing",
            UsageError::Malformed { .. } => "malformed",
            UsageError::Inconsistent { .. } => "inconsistent",
        }
    }
}

fn malformed(field: String, why: impl Into<String>) -> UsageError {
    UsageError::Malformed { field, why: why.into() }
}

fn inconsistent(why: String) -> UsageError {
    UsageError::Inconsistent { why }
}

/// Largest accepted count (2^53 - 1, the largest integer every JSON implementation keeps
/// exact). Far beyond any real request, and it keeps every sum below in `u64`.
const MAX_TOKENS: u64 = (1 << 53) - 1;

/// A JSON object of usage counts, with the path it was found at (for error messages).
struct Fields<'a> {
    map: &'a Map<String, Value>,
    path: String,
}

impl<'a> Fields<'a> {
    fn new(map: &'a Map<String, Value>, path: String) -> Self {
        Fields { map, path }
    }

    fn name(&self, key: &str) -> String {
        if self.path.is_empty() { key.to_string() } else { format!("{}.{key}", self.path) }
    }

    /// Present and not `null`.
    fn has(&self, key: &str) -> bool {
        self.map.get(key).is_some_and(|v| !v.is_null())
    }

    /// An optional count: absent or `null` is `None`; anything but a non-negative integer is
    /// malformed.
    fn opt(&self, key: &str) -> Result<Option<u64>, UsageError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(v) if v <= MAX_TOKENS => Ok(Some(v)),
                Some(v) => {
                    Err(malformed(self.name(key), format!("{v} is not a plausible token count (above 2^53 - 1)")))
                }
                None if n.is_i64() => Err(malformed(self.name(key), format!("{n} is negative"))),
                None => Err(malformed(self.name(key), format!("{n} is not an integer"))),
            },
            Some(other) => {
                Err(malformed(self.name(key), format!("expected a non-negative integer, got {}", json_kind(other))))
            }
        }
    }

    /// A required count.
    fn req(&self, key: &str) -> Result<u64, UsageError> {
        self.opt(key)?.ok_or_else(|| malformed(self.name(key), "missing"))
    }

    /// A nested object: absent or `null` is `None`.
    fn child(&self, key: &str) -> Result<Option<Fields<'a>>, UsageError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(m)) => Ok(Some(Fields::new(m, self.name(key)))),
            Some(other) => Err(malformed(self.name(key), format!("expected an object, got {}", json_kind(other)))),
        }
    }

    /// An optional count inside an optional nested object.
    fn nested(&self, child: &str, key: &str) -> Result<Option<u64>, UsageError> {
        match self.child(child)? {
            Some(c) => c.opt(key),
            None => Ok(None),
        }
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `whole - part`, or an inconsistency naming both.
fn carve(whole: (&str, u64), part: (&str, u64)) -> Result<u64, UsageError> {
    whole
        .1
        .checked_sub(part.1)
        .ok_or_else(|| inconsistent(format!("{}={} exceeds {}={}", part.0, part.1, whole.0, whole.1)))
}

/// Reasoning reported inside an output total (`<total>_details.reasoning_tokens` ⊂ `<total>`):
/// returns (visible output, reasoning), so each token is billed once.
fn reasoning_inside(u: &Fields<'_>, total_field: &str, total: u64) -> Result<(u64, u64), UsageError> {
    let details = format!("{total_field}_details");
    let reasoning = u.nested(&details, "reasoning_tokens")?.unwrap_or(0);
    let output = carve((&u.name(total_field), total), (&u.name(&format!("{details}.reasoning_tokens")), reasoning))?;
    Ok((output, reasoning))
}

/// Two fields that report the same tokens under different names: either may be given; if both
/// are, they must agree.
fn same_tokens(a: (&str, Option<u64>), b: (&str, Option<u64>)) -> Result<Option<u64>, UsageError> {
    match (a.1, b.1) {
        (Some(x), Some(y)) if x != y => {
            Err(inconsistent(format!("{}={x} and {}={y} report the same tokens but disagree", a.0, b.0)))
        }
        (Some(x), _) | (None, Some(x)) => Ok(Some(x)),
        (None, None) => Ok(None),
    }
}

// ---------------------------------------------------------------------------------------------
// Locating the usage object
// ---------------------------------------------------------------------------------------------

/// The token counts of one upstream response.
///
/// `body` is a whole response JSON object or the final stream chunk / event. The usage object is
/// looked up at:
/// - `usageMetadata` — Gemini native (`generateContent`, and each `streamGenerateContent`
///   chunk, whose last one carries the final counts); only for [`ProviderFamily::Gemini`];
/// - `usage` — OpenAI chat/completions/embeddings/Responses objects, the final
///   `chat.completion.chunk` of a stream with `stream_options.include_usage`, DeepSeek, Mistral,
///   Qwen, Gemini's and Anthropic's OpenAI-compatible endpoints, an Anthropic native message,
///   and an Anthropic `message_delta` stream event;
/// - `response.usage` — an OpenAI Responses stream event (`response.completed`,
///   `response.incomplete`), whose `response` is the whole response object.
///
/// A `usage` that is absent or `null` (every non-final chunk of an OpenAI stream) is
/// [`UsageError::Missing`].
pub fn parse_usage(family: ProviderFamily, body: &Value) -> Result<TokenCounts, UsageError> {
    let Value::Object(map) = body else {
        return Err(malformed(
            "(response body)".to_string(),
            format!("expected a JSON object, got {}", json_kind(body)),
        ));
    };
    let root = Fields::new(map, String::new());

    if family == ProviderFamily::Gemini
        && let Some(meta) = root.child("usageMetadata")?
    {
        return gemini_native(&meta);
    }

    let usage = match root.child("usage")? {
        Some(usage) => usage,
        None => match map.get("response") {
            // An OpenAI Responses stream event wraps the whole response object.
            Some(Value::Object(_)) => match root.child("response")? {
                Some(response) => response.child("usage")?.ok_or(UsageError::Missing)?,
                None => return Err(UsageError::Missing),
            },
            _ => return Err(UsageError::Missing),
        },
    };

    match family {
        ProviderFamily::OpenAI | ProviderFamily::Mistral | ProviderFamily::Qwen => {
            if !usage.has("prompt_tokens") && usage.has("input_tokens") {
                openai_responses(&usage)
            } else {
                openai_chat(&usage)
            }
        }
        ProviderFamily::DeepSeek => deepseek(&usage),
        ProviderFamily::Anthropic => {
            if usage.has("prompt_tokens") {
                anthropic_openai_compat(&usage)
            } else {
                let is_delta = map.get("type").and_then(Value::as_str) == Some("message_delta");
                anthropic_native(&usage, is_delta)
            }
        }
        ProviderFamily::Gemini => gemini_openai_compat(&usage),
    }
}

// ---------------------------------------------------------------------------------------------
// OpenAI (and the OpenAI-shaped Mistral and Qwen)
// ---------------------------------------------------------------------------------------------

/// `prompt_tokens` (required) and `completion_tokens`, with `total_tokens` checked against their
/// sum when present.
///
/// Embeddings report only `prompt_tokens` and `total_tokens`: an absent `completion_tokens` is
/// zero only when `total_tokens` is present and equal to `prompt_tokens`, i.e. when the upstream
/// itself says there was no output.
fn prompt_and_completion(u: &Fields<'_>) -> Result<(u64, u64), UsageError> {
    let prompt = u.req("prompt_tokens")?;
    let total = u.opt("total_tokens")?;
    let completion = match (u.opt("completion_tokens")?, total) {
        (Some(c), _) => c,
        (None, Some(t)) if t == prompt => 0,
        (None, Some(t)) => {
            return Err(inconsistent(format!(
                "{} is absent but {}={t} differs from {}={prompt}",
                u.name("completion_tokens"),
                u.name("total_tokens"),
                u.name("prompt_tokens"),
            )));
        }
        (None, None) => {
            return Err(malformed(
                u.name("completion_tokens"),
                "missing (and no total_tokens shows the request had no output)",
            ));
        }
    };
    if let Some(t) = total
        && t != prompt + completion
    {
        return Err(inconsistent(format!(
            "{}={t} is not {}={prompt} + {}={completion}",
            u.name("total_tokens"),
            u.name("prompt_tokens"),
            u.name("completion_tokens"),
        )));
    }
    Ok((prompt, completion))
}

/// Cache reads and cache writes carved out of an input total that includes both.
///
/// `details` is `prompt_tokens_details` / `input_tokens_details`: `cached_tokens` are cache
/// reads; cache writes are `cache_write_tokens` (OpenAI, GPT-5.6 and later) or
/// `cache_creation_input_tokens` (Qwen / DashScope explicit cache) — the same tokens under two
/// names, so if both are given they must agree. Reads and writes are disjoint.
fn carve_cache(u: &Fields<'_>, total_key: &str, total: u64, details_key: &str) -> Result<(u64, u64, u64), UsageError> {
    let (cached, write) = match u.child(details_key)? {
        Some(d) => {
            let cached = d.opt("cached_tokens")?.unwrap_or(0);
            let write = same_tokens(
                (&d.name("cache_write_tokens"), d.opt("cache_write_tokens")?),
                (&d.name("cache_creation_input_tokens"), d.opt("cache_creation_input_tokens")?),
            )?
            .unwrap_or(0);
            (cached, write)
        }
        None => (0, 0),
    };
    let name = u.name(total_key);
    let dname = u.name(details_key);
    let input = carve((&name, total), (&format!("{dname}.cached_tokens"), cached))?;
    let input = carve((&format!("{name} - {dname}.cached_tokens"), input), (&format!("{dname} cache writes"), write))?;
    Ok((input, cached, write))
}

/// OpenAI Chat Completions / legacy Completions / Embeddings, and the same shape from Mistral
/// and Qwen (DashScope compatible mode).
///
/// Rule: `prompt_tokens` ⊇ `prompt_tokens_details.cached_tokens` ⊎ cache writes;
/// `completion_tokens` ⊇ `completion_tokens_details.reasoning_tokens`;
/// `total_tokens` = `prompt_tokens` + `completion_tokens`.
/// - OpenAI: "cached tokens are included in prompt_tokens"; reasoning tokens are part of
///   completion tokens (Chat Completions reference); GPT-5.6+ reports billed cache writes as
///   `prompt_tokens_details.cache_write_tokens`, a part of `prompt_tokens` disjoint from
///   `cached_tokens` (OpenAI prompt-caching guide).
/// - Mistral: cache hits in `usage.prompt_tokens_details.cached_tokens` (Mistral prompt-caching
///   docs); reasoning is not broken out, so it is billed as output.
/// - Qwen: implicit-cache hits in `prompt_tokens_details.cached_tokens`, explicit-cache writes in
///   `prompt_tokens_details.cache_creation_input_tokens`, both inside `prompt_tokens`; thinking
///   tokens in `completion_tokens_details.reasoning_tokens`, inside `completion_tokens`.
///
/// A provider that reports reasoning *outside* `completion_tokens` under this family fails the
/// `total_tokens` check as [`UsageError::Inconsistent`] instead of being under-billed.
fn openai_chat(u: &Fields<'_>) -> Result<TokenCounts, UsageError> {
    let (prompt, completion) = prompt_and_completion(u)?;
    let (input, cached_input, cache_write) = carve_cache(u, "prompt_tokens", prompt, "prompt_tokens_details")?;
    let (output, reasoning) = reasoning_inside(u, "completion_tokens", completion)?;
    Ok(TokenCounts { input, cached_input, cache_write, output, reasoning })
}

/// OpenAI Responses API (`usage` of a response object or of a `response.completed` event).
///
/// Rule: `input_tokens` ⊇ `input_tokens_details.cached_tokens` ⊎
/// `input_tokens_details.cache_write_tokens`; `output_tokens` ⊇
/// `output_tokens_details.reasoning_tokens`; `total_tokens` = `input_tokens` + `output_tokens`.
fn openai_responses(u: &Fields<'_>) -> Result<TokenCounts, UsageError> {
    let input_total = u.req("input_tokens")?;
    let output_total = u.req("output_tokens")?;
    if let Some(t) = u.opt("total_tokens")?
        && t != input_total + output_total
    {
        return Err(inconsistent(format!(
            "{}={t} is not {}={input_total} + {}={output_total}",
            u.name("total_tokens"),
            u.name("input_tokens"),
            u.name("output_tokens"),
        )));
    }
    let (input, cached_input, cache_write) = carve_cache(u, "input_tokens", input_total, "input_tokens_details")?;
    let (output, reasoning) = reasoning_inside(u, "output_tokens", output_total)?;
    Ok(TokenCounts { input, cached_input, cache_write, output, reasoning })
}

// ---------------------------------------------------------------------------------------------
// DeepSeek
// ---------------------------------------------------------------------------------------------

/// DeepSeek chat completions (`deepseek-chat`, `deepseek-reasoner`).
///
/// Rule: `prompt_tokens` = `prompt_cache_hit_tokens` + `prompt_cache_miss_tokens`; hits are
/// cached input, misses are input. If only one of the two is given the other is the rest of
/// `prompt_tokens`; if neither is, `prompt_tokens_details.cached_tokens` (which newer responses
/// also carry, equal to the hits) stands for the hits. `completion_tokens` ⊇
/// `completion_tokens_details.reasoning_tokens`; `total_tokens` = prompt + completion.
/// DeepSeek has no cache-write charge, so `cache_write` is always zero.
fn deepseek(u: &Fields<'_>) -> Result<TokenCounts, UsageError> {
    let (prompt, completion) = prompt_and_completion(u)?;
    let hit_name = u.name("prompt_cache_hit_tokens");
    let miss_name = u.name("prompt_cache_miss_tokens");
    let prompt_name = u.name("prompt_tokens");
    let details_cached = u.nested("prompt_tokens_details", "cached_tokens")?;
    let (hit, miss) = match (u.opt("prompt_cache_hit_tokens")?, u.opt("prompt_cache_miss_tokens")?) {
        (Some(hit), Some(miss)) => {
            if hit + miss != prompt {
                return Err(inconsistent(format!(
                    "{hit_name}={hit} + {miss_name}={miss} is not {prompt_name}={prompt}"
                )));
            }
            (hit, miss)
        }
        (Some(hit), None) => (hit, carve((&prompt_name, prompt), (&hit_name, hit))?),
        (None, Some(miss)) => (carve((&prompt_name, prompt), (&miss_name, miss))?, miss),
        (None, None) => {
            let hit = details_cached.unwrap_or(0);
            let name = u.name("prompt_tokens_details.cached_tokens");
            (hit, carve((&prompt_name, prompt), (&name, hit))?)
        }
    };
    if let Some(d) = details_cached
        && d != hit
    {
        return Err(inconsistent(format!(
            "{}={d} disagrees with {hit_name}={hit}",
            u.name("prompt_tokens_details.cached_tokens")
        )));
    }
    let (output, reasoning) = reasoning_inside(u, "completion_tokens", completion)?;
    Ok(TokenCounts { input: miss, cached_input: hit, cache_write: 0, output, reasoning })
}

// ---------------------------------------------------------------------------------------------
// Anthropic
// ---------------------------------------------------------------------------------------------

/// Anthropic Messages API: a message's `usage`, or a `message_delta` event's `usage` (whose
/// counts are cumulative, so the last one is the whole request).
///
/// Rule: `input_tokens`, `cache_read_input_tokens`, `cache_creation_input_tokens` and
/// `output_tokens` are disjoint and **added**: "total input tokens in a request is the summation
/// of input_tokens, cache_creation_input_tokens, and cache_read_input_tokens". Extended-thinking
/// tokens are inside `output_tokens` and not broken out, so they are billed as output and
/// `reasoning` is zero. `cache_creation` (5-minute vs 1-hour writes) is a breakdown of
/// `cache_creation_input_tokens` and is not added again. `server_tool_use` counts requests,
/// not tokens.
///
/// `input_tokens` is required: a `message_delta` from an API version that reports only
/// `output_tokens` there must be merged with the `message_start` usage before it is parsed.
fn anthropic_native(u: &Fields<'_>, is_message_delta: bool) -> Result<TokenCounts, UsageError> {
    let input = match u.opt("input_tokens")? {
        Some(n) => n,
        None if is_message_delta => {
            return Err(malformed(
                u.name("input_tokens"),
                "missing from this message_delta (it carries only output counts); merge the \
                 message_start usage into it first",
            ));
        }
        None => return Err(malformed(u.name("input_tokens"), "missing")),
    };
    Ok(TokenCounts {
        input,
        cached_input: u.opt("cache_read_input_tokens")?.unwrap_or(0),
        cache_write: u.opt("cache_creation_input_tokens")?.unwrap_or(0),
        output: u.req("output_tokens")?,
        reasoning: 0,
    })
}

/// Anthropic's OpenAI-compatible endpoint (`/v1/chat/completions` at `api.anthropic.com`).
///
/// Anthropic documents this layer as not supporting prompt caching and maps the native counts
/// onto `prompt_tokens` / `completion_tokens` / `total_tokens`, so `prompt_tokens` is the native
/// `input_tokens`: uncached input only. Cache counts, when some layer reports them anyway, are
/// read from the native names at the top of `usage` (`cache_read_input_tokens`,
/// `cache_creation_input_tokens`) or, for reads, from `prompt_tokens_details.cached_tokens`
/// (the same tokens; if both are non-zero they must agree).
///
/// Rule: cache reads and writes are **outside** `prompt_tokens` (Anthropic semantics) — unless
/// `total_tokens` proves otherwise: if `total_tokens` = `prompt_tokens` + `completion_tokens`
/// while cache counts are non-zero, they are inside `prompt_tokens` (OpenAI semantics) and are
/// carved out of it. Any other `total_tokens` is inconsistent. Reasoning, if reported in
/// `completion_tokens_details.reasoning_tokens`, is inside `completion_tokens`.
fn anthropic_openai_compat(u: &Fields<'_>) -> Result<TokenCounts, UsageError> {
    let prompt = u.req("prompt_tokens")?;
    let completion = u.req("completion_tokens")?;
    let total = u.opt("total_tokens")?;
    let read_top = u.opt("cache_read_input_tokens")?;
    // A zero `prompt_tokens_details.cached_tokens` next to a real top-level count is a
    // placeholder, not a disagreement.
    let read_details = u.nested("prompt_tokens_details", "cached_tokens")?.filter(|&n| n > 0);
    let cached_input = same_tokens(
        (&u.name("cache_read_input_tokens"), read_top),
        (&u.name("prompt_tokens_details.cached_tokens"), read_details),
    )?
    .unwrap_or(0);
    let cache_write = u.opt("cache_creation_input_tokens")?.unwrap_or(0);
    let cache = cached_input + cache_write;

    let outside = prompt + completion + cache;
    let inside = prompt + completion;
    let input = match total {
        None => prompt,
        Some(t) if t == outside => prompt,
        Some(t) if t == inside => carve(
            (&u.name("prompt_tokens"), prompt),
            (&format!("cache reads + writes ({cached_input} + {cache_write})"), cache),
        )?,
        Some(t) => {
            return Err(inconsistent(format!(
                "{}={t} is neither prompt + completion ({inside}) nor prompt + completion + \
                 cache reads + cache writes ({outside})",
                u.name("total_tokens")
            )));
        }
    };
    let (output, reasoning) = reasoning_inside(u, "completion_tokens", completion)?;
    Ok(TokenCounts { input, cached_input, cache_write, output, reasoning })
}

// ---------------------------------------------------------------------------------------------
// Gemini
// ---------------------------------------------------------------------------------------------

/// Gemini native `usageMetadata` (`generateContent`, `streamGenerateContent` chunks).
///
/// Rule: `promptTokenCount` ⊇ `cachedContentTokenCount` ("when cached_content is set, this is
/// still the total effective prompt size"); `toolUsePromptTokenCount` (tool results fed back to
/// the model) and `thoughtsTokenCount` are **outside** both `promptTokenCount` and
/// `candidatesTokenCount`: `totalTokenCount` = prompt + candidates + toolUsePrompt + thoughts.
/// Tool-use prompt tokens are input; thoughts are reasoning. `promptTokenCount` is required;
/// `candidatesTokenCount` is absent when the model produced only thoughts; `totalTokenCount`,
/// when present, must equal the sum.
fn gemini_native(m: &Fields<'_>) -> Result<TokenCounts, UsageError> {
    let prompt = m.req("promptTokenCount")?;
    let cached = m.opt("cachedContentTokenCount")?.unwrap_or(0);
    let candidates = m.opt("candidatesTokenCount")?.unwrap_or(0);
    let thoughts = m.opt("thoughtsTokenCount")?.unwrap_or(0);
    let tool_prompt = m.opt("toolUsePromptTokenCount")?.unwrap_or(0);
    let sum = prompt + candidates + tool_prompt + thoughts;
    if let Some(t) = m.opt("totalTokenCount")?
        && t != sum
    {
        return Err(inconsistent(format!(
            "{}={t} is not promptTokenCount + candidatesTokenCount + toolUsePromptTokenCount + \
             thoughtsTokenCount = {prompt} + {candidates} + {tool_prompt} + {thoughts} = {sum}",
            m.name("totalTokenCount")
        )));
    }
    let uncached = carve((&m.name("promptTokenCount"), prompt), (&m.name("cachedContentTokenCount"), cached))?;
    Ok(TokenCounts {
        input: uncached + tool_prompt,
        cached_input: cached,
        cache_write: 0,
        output: candidates,
        reasoning: thoughts,
    })
}

/// Gemini's OpenAI-compatible endpoint (`/v1beta/openai/chat/completions`, and Vertex AI's).
///
/// Google maps `promptTokenCount` to `prompt_tokens` and `candidatesTokenCount` to
/// `completion_tokens`, and counts thoughts only in `total_tokens` — so `prompt_tokens` +
/// `completion_tokens` < `total_tokens` for a thinking model. Some layers also report the
/// thoughts as `completion_tokens_details.reasoning_tokens` or a top-level `reasoning_tokens`
/// (Vertex AI), and some gateways fold them into `completion_tokens` instead.
///
/// Rule: `total_tokens` is required and decides where reasoning is. With
/// gap = `total_tokens` − `prompt_tokens` − `completion_tokens`:
/// - gap > 0: the gap is reasoning, outside `completion_tokens`; a reported reasoning count must
///   equal it;
/// - gap = 0: reported reasoning (if any) is inside `completion_tokens`;
/// - gap < 0: inconsistent.
///
/// `prompt_tokens_details.cached_tokens`, if present, is inside `prompt_tokens`.
fn gemini_openai_compat(u: &Fields<'_>) -> Result<TokenCounts, UsageError> {
    let prompt = u.req("prompt_tokens")?;
    let total = u.req("total_tokens")?;
    let completion = match u.opt("completion_tokens")? {
        Some(c) => c,
        None if total == prompt => 0,
        None => return Err(malformed(u.name("completion_tokens"), "missing")),
    };
    let reported = same_tokens(
        (
            &u.name("completion_tokens_details.reasoning_tokens"),
            u.nested("completion_tokens_details", "reasoning_tokens")?,
        ),
        (&u.name("reasoning_tokens"), u.opt("reasoning_tokens")?),
    )?;
    let visible = prompt + completion;
    let gap = carve(
        (&u.name("total_tokens"), total),
        (&format!("prompt_tokens + completion_tokens ({prompt} + {completion})"), visible),
    )?;
    let (output, reasoning) = if gap > 0 {
        if let Some(r) = reported
            && r != gap
        {
            return Err(inconsistent(format!(
                "reported reasoning tokens ({r}) differ from total_tokens - prompt_tokens - \
                 completion_tokens ({gap})"
            )));
        }
        (completion, gap)
    } else {
        let r = reported.unwrap_or(0);
        let out = carve(
            (&u.name("completion_tokens"), completion),
            (&format!("reported reasoning tokens (total_tokens leaves no room outside) {r}"), r),
        )?;
        (out, r)
    };
    let (input, cached_input, cache_write) = carve_cache(u, "prompt_tokens", prompt, "prompt_tokens_details")?;
    Ok(TokenCounts { input, cached_input, cache_write, output, reasoning })
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec(input: &str, output: &str) -> Pricing {
        Pricing { input: input.into(), cached_input: None, cache_write: None, output: output.into(), reasoning: None }
    }

    fn p(s: &str) -> PricePerMillion {
        s.parse().unwrap()
    }

    #[test]
    fn prices_default_cache_to_input_and_reasoning_to_output() {
        let prices = Prices::from_spec(&spec("3", "15")).unwrap();
        assert_eq!(prices.input, p("3"));
        assert_eq!(prices.cached_input, p("3"));
        assert_eq!(prices.cache_write, p("3"));
        assert_eq!(prices.output, p("15"));
        assert_eq!(prices.reasoning, p("15"));
    }

    #[test]
    fn prices_take_explicit_values() {
        let s = Pricing {
            input: "3".into(),
            cached_input: Some("0.30".into()),
            cache_write: Some("3.75".into()),
            output: "15".into(),
            reasoning: Some("20".into()),
        };
        let prices = Prices::from_spec(&s).unwrap();
        assert_eq!(prices.cached_input, p("0.3"));
        assert_eq!(prices.cache_write, p("3.75"));
        assert_eq!(prices.reasoning, p("20"));
        let got: Vec<PricePerMillion> = TokenKind::ALL.iter().map(|k| prices.get(*k)).collect();
        assert_eq!(got, [p("3"), p("0.3"), p("3.75"), p("15"), p("20")]);
    }

    #[test]
    fn price_errors_name_the_field() {
        let mut s = spec("3", "15");
        s.cached_input = Some("0.1234567".into());
        let err = Prices::from_spec(&s).unwrap_err();
        assert_eq!(err.field, "cachedInput");
        assert_eq!(
            err.to_string(),
            r#"pricing.cachedInput: "0.1234567" is not a decimal USD amount (more than six decimals)"#
        );

        let err = Prices::from_spec(&spec("-1", "15")).unwrap_err();
        assert_eq!(err.field, "input");
        assert!(err.to_string().starts_with(r#"pricing.input: "-1""#), "{err}");

        let err = Prices::from_spec(&spec("1", "abc")).unwrap_err();
        assert_eq!(err.field, "output");

        let mut s = spec("1", "2");
        s.cache_write = Some("1e3".into());
        assert_eq!(Prices::from_spec(&s).unwrap_err().field, "cacheWrite");

        let mut s = spec("1", "2");
        s.reasoning = Some("".into());
        assert_eq!(Prices::from_spec(&s).unwrap_err().field, "reasoning");
    }

    #[test]
    fn prices_round_trip_through_serde() {
        let prices = Prices::from_spec(&spec("0.27", "1.10")).unwrap();
        let v = serde_json::to_value(prices).unwrap();
        assert_eq!(
            v,
            json!({"input": "0.27", "cachedInput": "0.27", "cacheWrite": "0.27", "output": "1.10", "reasoning": "1.10"})
        );
        let back: Prices = serde_json::from_value(v).unwrap();
        assert_eq!(back, prices);
    }

    #[test]
    fn counts_label_total_and_cost() {
        let c = TokenCounts { input: 1, cached_input: 2, cache_write: 3, output: 4, reasoning: 5 };
        let labels: Vec<(&str, u64)> = c.by_kind().iter().map(|(k, n)| (k.label(), *n)).collect();
        assert_eq!(labels, [("input", 1), ("cached_input", 2), ("cache_write", 3), ("output", 4), ("reasoning", 5)]);
        assert_eq!(c.total(), 15);
        let prices = Prices {
            input: p("1"),
            cached_input: p("10"),
            cache_write: p("100"),
            output: p("1000"),
            reasoning: p("10000"),
        };
        // 1×1 + 2×10 + 3×100 + 4×1000 + 5×10000 = 54321 USD-per-million units.
        assert_eq!(c.cost(&prices), "0.054321".parse().unwrap());
        assert_eq!(TokenKind::CachedInput.to_string(), "cached_input");
        let saturated = TokenCounts { input: u64::MAX, output: 1, ..TokenCounts::default() };
        assert_eq!(saturated.total(), u64::MAX);
    }

    fn err(family: ProviderFamily, body: Value) -> UsageError {
        parse_usage(family, &body).unwrap_err()
    }

    #[test]
    fn missing_usage_is_an_error_not_zero() {
        use ProviderFamily::*;
        assert_eq!(err(OpenAI, json!({"id": "x", "choices": []})), UsageError::Missing);
        assert_eq!(err(OpenAI, json!({"choices": [], "usage": null})), UsageError::Missing);
        assert_eq!(err(Anthropic, json!({"type": "message_stop"})), UsageError::Missing);
        assert_eq!(err(Gemini, json!({"candidates": []})), UsageError::Missing);
        assert_eq!(err(OpenAI, json!({"type": "response.created", "response": {"usage": null}})), UsageError::Missing);
        // Ollama-style `response` string is not a Responses event.
        assert_eq!(err(Mistral, json!({"response": "hi"})), UsageError::Missing);
        assert_eq!(UsageError::Missing.metric_label(), "missing");
        assert!(UsageError::Missing.to_string().contains("never assumed to be zero"));
    }

    #[test]
    fn malformed_counts_name_the_field() {
        use ProviderFamily::*;
        let cases = [
            (json!({"usage": {"prompt_tokens": -3, "completion_tokens": 1}}), "usage.prompt_tokens", "-3 is negative"),
            (
                json!({"usage": {"prompt_tokens": 12.5, "completion_tokens": 1}}),
                "usage.prompt_tokens",
                "12.5 is not an integer",
            ),
            (
                json!({"usage": {"prompt_tokens": 12.0, "completion_tokens": 1}}),
                "usage.prompt_tokens",
                "12.0 is not an integer",
            ),
            (
                json!({"usage": {"prompt_tokens": "12", "completion_tokens": 1}}),
                "usage.prompt_tokens",
                "expected a non-negative integer, got a string",
            ),
            (json!({"usage": {"completion_tokens": 1}}), "usage.prompt_tokens", "missing"),
            (
                json!({"usage": {"prompt_tokens": 5}}),
                "usage.completion_tokens",
                "missing (and no total_tokens shows the request had no output)",
            ),
            (
                json!({"usage": {"prompt_tokens": 5, "completion_tokens": 1, "prompt_tokens_details": 7}}),
                "usage.prompt_tokens_details",
                "expected an object, got a number",
            ),
            (
                json!({"usage": {"prompt_tokens": 5, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": true}}}),
                "usage.prompt_tokens_details.cached_tokens",
                "expected a non-negative integer, got a boolean",
            ),
            (
                json!({"usage": {"prompt_tokens": 9_007_199_254_740_992u64, "completion_tokens": 1}}),
                "usage.prompt_tokens",
                "9007199254740992 is not a plausible token count (above 2^53 - 1)",
            ),
            (json!({"usage": 5}), "usage", "expected an object, got a number"),
        ];
        for (body, field, why) in cases {
            let e = err(OpenAI, body.clone());
            assert_eq!(e, UsageError::Malformed { field: field.into(), why: why.into() }, "body {body}");
            assert_eq!(e.metric_label(), "malformed");
        }
        assert_eq!(
            err(OpenAI, json!([1, 2])),
            UsageError::Malformed {
                field: "(response body)".into(),
                why: "expected a JSON object, got an array".into()
            }
        );
        let e = err(Anthropic, json!({"type": "message_delta", "usage": {"output_tokens": 15}}));
        let UsageError::Malformed { field, why } = &e else { panic!("{e:?}") };
        assert_eq!(field, "usage.input_tokens");
        assert!(why.contains("merge the message_start usage"), "{why}");
        assert_eq!(
            err(Anthropic, json!({"usage": {"output_tokens": 15}})),
            UsageError::Malformed { field: "usage.input_tokens".into(), why: "missing".into() }
        );
        assert_eq!(
            err(Anthropic, json!({"usage": {"input_tokens": 15}})),
            UsageError::Malformed { field: "usage.output_tokens".into(), why: "missing".into() }
        );
        assert_eq!(
            err(Gemini, json!({"usageMetadata": {"candidatesTokenCount": 3}})),
            UsageError::Malformed { field: "usageMetadata.promptTokenCount".into(), why: "missing".into() }
        );
        assert_eq!(
            err(Gemini, json!({"usage": {"prompt_tokens": 3, "completion_tokens": 4}})),
            UsageError::Malformed { field: "usage.total_tokens".into(), why: "missing".into() }
        );
        assert_eq!(
            err(OpenAI, json!({"type": "response.completed", "response": {"usage": {"input_tokens": 3}}})),
            UsageError::Malformed { field: "response.usage.output_tokens".into(), why: "missing".into() }
        );
        assert_eq!(
            err(OpenAI, json!({"usage": {"completion_tokens": 4}})).to_string(),
            "usage field usage.prompt_tokens: missing"
        );
    }

    #[test]
    fn inconsistent_counts_are_typed() {
        use ProviderFamily::*;
        let cases = [
            (
                OpenAI,
                json!({"usage": {"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 11}}}),
                "usage.prompt_tokens_details.cached_tokens=11 exceeds usage.prompt_tokens=10",
            ),
            (
                OpenAI,
                json!({"usage": {"prompt_tokens": 10, "completion_tokens": 5, "completion_tokens_details": {"reasoning_tokens": 6}}}),
                "usage.completion_tokens_details.reasoning_tokens=6 exceeds usage.completion_tokens=5",
            ),
            (
                OpenAI,
                json!({"usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 16}}),
                "usage.total_tokens=16 is not usage.prompt_tokens=10 + usage.completion_tokens=5",
            ),
            (
                OpenAI,
                json!({"usage": {"prompt_tokens": 10, "total_tokens": 12}}),
                "usage.completion_tokens is absent but usage.total_tokens=12 differs from usage.prompt_tokens=10",
            ),
            (
                OpenAI,
                json!({"usage": {"prompt_tokens": 10, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 6, "cache_write_tokens": 5}}}),
                "usage.prompt_tokens_details cache writes=5 exceeds usage.prompt_tokens - usage.prompt_tokens_details.cached_tokens=4",
            ),
            (
                Qwen,
                json!({"usage": {"prompt_tokens": 10, "completion_tokens": 1, "prompt_tokens_details": {"cache_write_tokens": 6, "cache_creation_input_tokens": 5}}}),
                "usage.prompt_tokens_details.cache_write_tokens=6 and usage.prompt_tokens_details.cache_creation_input_tokens=5 report the same tokens but disagree",
            ),
            (
                OpenAI,
                json!({"usage": {"input_tokens": 10, "output_tokens": 5, "total_tokens": 14}}),
                "usage.total_tokens=14 is not usage.input_tokens=10 + usage.output_tokens=5",
            ),
            (
                DeepSeek,
                json!({"usage": {"prompt_tokens": 100, "completion_tokens": 5, "prompt_cache_hit_tokens": 64, "prompt_cache_miss_tokens": 40}}),
                "usage.prompt_cache_hit_tokens=64 + usage.prompt_cache_miss_tokens=40 is not usage.prompt_tokens=100",
            ),
            (
                DeepSeek,
                json!({"usage": {"prompt_tokens": 100, "completion_tokens": 5, "prompt_cache_hit_tokens": 64, "prompt_cache_miss_tokens": 36, "prompt_tokens_details": {"cached_tokens": 32}}}),
                "usage.prompt_tokens_details.cached_tokens=32 disagrees with usage.prompt_cache_hit_tokens=64",
            ),
            (
                DeepSeek,
                json!({"usage": {"prompt_tokens": 10, "completion_tokens": 5, "prompt_cache_hit_tokens": 11}}),
                "usage.prompt_cache_hit_tokens=11 exceeds usage.prompt_tokens=10",
            ),
            (
                Anthropic,
                json!({"usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 20, "cache_read_input_tokens": 8}}),
                "usage.total_tokens=20 is neither prompt + completion (15) nor prompt + completion + cache reads + cache writes (23)",
            ),
            (
                Anthropic,
                json!({"usage": {"prompt_tokens": 10, "completion_tokens": 5, "cache_read_input_tokens": 8, "prompt_tokens_details": {"cached_tokens": 7}}}),
                "usage.cache_read_input_tokens=8 and usage.prompt_tokens_details.cached_tokens=7 report the same tokens but disagree",
            ),
            (
                Gemini,
                json!({"usageMetadata": {"promptTokenCount": 20, "candidatesTokenCount": 198, "thoughtsTokenCount": 405, "totalTokenCount": 218}}),
                "usageMetadata.totalTokenCount=218 is not promptTokenCount + candidatesTokenCount + toolUsePromptTokenCount + thoughtsTokenCount = 20 + 198 + 0 + 405 = 623",
            ),
            (
                Gemini,
                json!({"usageMetadata": {"promptTokenCount": 20, "cachedContentTokenCount": 21, "totalTokenCount": 20}}),
                "usageMetadata.cachedContentTokenCount=21 exceeds usageMetadata.promptTokenCount=20",
            ),
            (
                Gemini,
                json!({"usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 14}}),
                "prompt_tokens + completion_tokens (10 + 5)=15 exceeds usage.total_tokens=14",
            ),
            (
                Gemini,
                json!({"usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 25, "completion_tokens_details": {"reasoning_tokens": 9}}}),
                "reported reasoning tokens (9) differ from total_tokens - prompt_tokens - completion_tokens (10)",
            ),
        ];
        for (family, body, why) in cases {
            let e = err(family, body.clone());
            assert_eq!(e, UsageError::Inconsistent { why: why.into() }, "{family:?} {body}");
            assert_eq!(e.metric_label(), "inconsistent");
            assert_eq!(e.to_string(), format!("inconsistent usage: {why}"));
        }
    }

    fn counts(family: ProviderFamily, body: Value) -> TokenCounts {
        parse_usage(family, &body).unwrap()
    }

    fn tc(input: u64, cached_input: u64, cache_write: u64, output: u64, reasoning: u64) -> TokenCounts {
        TokenCounts { input, cached_input, cache_write, output, reasoning }
    }

    #[test]
    fn optional_details_default_to_zero_and_null_is_absent() {
        use ProviderFamily::*;
        let body = json!({"usage": {"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29,
            "prompt_tokens_details": null, "completion_tokens_details": null}});
        assert_eq!(counts(OpenAI, body.clone()), tc(19, 0, 0, 10, 0));
        assert_eq!(counts(Mistral, body.clone()), tc(19, 0, 0, 10, 0));
        assert_eq!(counts(DeepSeek, body), tc(19, 0, 0, 10, 0));
        // Embeddings: total_tokens == prompt_tokens pins the output to zero.
        assert_eq!(counts(OpenAI, json!({"usage": {"prompt_tokens": 8, "total_tokens": 8}})), tc(8, 0, 0, 0, 0));
        assert_eq!(counts(Anthropic, json!({"usage": {"input_tokens": 7, "output_tokens": 3}})), tc(7, 0, 0, 3, 0));
        assert_eq!(counts(Gemini, json!({"usageMetadata": {"promptTokenCount": 7}})), tc(7, 0, 0, 0, 0));
    }

    #[test]
    fn deepseek_derives_the_missing_half() {
        use ProviderFamily::DeepSeek;
        let only_hit = json!({"usage": {"prompt_tokens": 100, "completion_tokens": 5, "prompt_cache_hit_tokens": 64}});
        assert_eq!(counts(DeepSeek, only_hit), tc(36, 64, 0, 5, 0));
        let only_miss =
            json!({"usage": {"prompt_tokens": 100, "completion_tokens": 5, "prompt_cache_miss_tokens": 36}});
        assert_eq!(counts(DeepSeek, only_miss), tc(36, 64, 0, 5, 0));
        let details_only = json!({"usage": {"prompt_tokens": 100, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 64}}});
        assert_eq!(counts(DeepSeek, details_only), tc(36, 64, 0, 5, 0));
    }

    #[test]
    fn anthropic_compat_places_cache_by_total() {
        use ProviderFamily::Anthropic;
        // No total: Anthropic semantics, cache counts are outside prompt_tokens.
        let no_total = json!({"usage": {"prompt_tokens": 40, "completion_tokens": 200,
            "cache_read_input_tokens": 8192, "cache_creation_input_tokens": 2048}});
        assert_eq!(counts(Anthropic, no_total), tc(40, 8192, 2048, 200, 0));
        // Total equals prompt + completion: cache counts were inside prompt_tokens.
        let inside = json!({"usage": {"prompt_tokens": 10280, "completion_tokens": 200, "total_tokens": 10480,
            "prompt_tokens_details": {"cached_tokens": 8192}, "cache_creation_input_tokens": 2048}});
        assert_eq!(counts(Anthropic, inside), tc(40, 8192, 2048, 200, 0));
        // A zero placeholder in prompt_tokens_details does not contradict the top-level count.
        let placeholder = json!({"usage": {"prompt_tokens": 40, "completion_tokens": 200, "total_tokens": 8432,
            "cache_read_input_tokens": 8192, "prompt_tokens_details": {"cached_tokens": 0}}});
        assert_eq!(counts(Anthropic, placeholder), tc(40, 8192, 0, 200, 0));
    }

    #[test]
    fn gemini_compat_reasoning_inside_when_total_leaves_no_gap() {
        use ProviderFamily::Gemini;
        // A gateway that folds thoughts into completion_tokens (and reports them as reasoning).
        let folded = json!({"usage": {"prompt_tokens": 21, "completion_tokens": 60, "total_tokens": 81,
            "completion_tokens_details": {"reasoning_tokens": 60}}});
        assert_eq!(counts(Gemini, folded), tc(21, 0, 0, 0, 60));
        // Google's own: thoughts only in total_tokens.
        let google = json!({"usage": {"prompt_tokens": 21, "completion_tokens": 0, "total_tokens": 81}});
        assert_eq!(counts(Gemini, google), tc(21, 0, 0, 0, 60));
        // Cached tokens inside prompt_tokens.
        let cached = json!({"usage": {"prompt_tokens": 2100, "completion_tokens": 10, "total_tokens": 2110,
            "prompt_tokens_details": {"cached_tokens": 2048}}});
        assert_eq!(counts(Gemini, cached), tc(52, 2048, 0, 10, 0));
        // Folded reasoning larger than completion is inconsistent.
        let bad = json!({"usage": {"prompt_tokens": 21, "completion_tokens": 5, "total_tokens": 26,
            "completion_tokens_details": {"reasoning_tokens": 60}}});
        assert!(matches!(parse_usage(Gemini, &bad), Err(UsageError::Inconsistent { .. })));
    }

    #[test]
    fn gemini_native_is_preferred_over_a_usage_key() {
        let body = json!({"usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 2, "totalTokenCount": 7},
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}});
        assert_eq!(counts(ProviderFamily::Gemini, body.clone()), tc(5, 0, 0, 2, 0));
        // Other families never look at usageMetadata.
        assert_eq!(counts(ProviderFamily::OpenAI, body), tc(1, 0, 0, 1, 0));
    }
}
