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
//!
//! Layout: `fields` lists every usage field of every family, billed or not and why; this file
//! holds the prices, the token kinds and [`parse_usage`], which finds the
//! usage object and hands it to one file per provider family (`openai`, `deepseek`,
//! `anthropic`, `gemini`); `usage` holds [`UsageError`] and the strict field reader they share;
//! `node` the read-only JSON tree ([`Node`]) the rules read, parsed straight from an answer's
//! bytes by the gateway or viewed over a `serde_json::Value` ([`parse_usage`]); `scan` the
//! single-pass JSON scanner in front of serde_json on the gateway's per-request reads.
//! Kubernetes-free (`tests/layering.rs` checks it).

mod anthropic;
mod deepseek;
pub mod fields;
mod gemini;
mod node;
mod openai;
pub(crate) mod scan;
mod usage;

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::{Pricing, ProviderFamily};
use crate::policy::money::{Money, ParseMoneyError, PricePerMillion};

use anthropic::{anthropic_native, anthropic_openai_compat};
use deepseek::deepseek;
use gemini::{gemini_native, gemini_openai_compat};
use openai::{openai_chat, openai_responses};
pub use usage::UsageError;
use usage::{Fields, malformed};

pub use node::{Node, Object, Text};

// ---------------------------------------------------------------------------------------------
// Prices
// ---------------------------------------------------------------------------------------------

/// The price of each token kind, in USD per one million tokens.
///
/// In the gateway config document, a `cacheWrite1h` left out (a document written by a
/// controller that predates the price) defaults by Anthropic's rule, like the spec field.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", from = "PricesDoc")]
pub struct Prices {
    /// Uncached, non-cache-write input tokens.
    pub input: PricePerMillion,
    /// Input tokens read from the prompt cache.
    pub cached_input: PricePerMillion,
    /// Input tokens written to the prompt cache with the provider's default (shortest)
    /// lifetime: Anthropic's 5-minute writes, and every other provider's writes.
    pub cache_write: PricePerMillion,
    /// Input tokens written to Anthropic's 1-hour prompt cache.
    pub cache_write_1h: PricePerMillion,
    /// Visible (non-reasoning) output tokens.
    pub output: PricePerMillion,
    /// Reasoning ("thinking") output tokens.
    pub reasoning: PricePerMillion,
}

/// [`Prices`] as read from a config document (`cacheWrite1h` optional).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PricesDoc {
    input: PricePerMillion,
    cached_input: PricePerMillion,
    cache_write: PricePerMillion,
    #[serde(default)]
    cache_write_1h: Option<PricePerMillion>,
    output: PricePerMillion,
    reasoning: PricePerMillion,
}

impl From<PricesDoc> for Prices {
    fn from(d: PricesDoc) -> Self {
        Prices {
            input: d.input,
            cached_input: d.cached_input,
            cache_write: d.cache_write,
            cache_write_1h: d.cache_write_1h.unwrap_or_else(|| one_hour_write_default(d.input)),
            output: d.output,
            reasoning: d.reasoning,
        }
    }
}

/// The 1-hour cache-write price when a route names none: Anthropic's rule, twice the base
/// input price (a 5-minute write is 1.25 times it; reads are 0.1 times it).
pub fn one_hour_write_default(input: PricePerMillion) -> PricePerMillion {
    input.times(2)
}

/// A price in a `ModelRoute`'s `pricing` that is not a valid USD-per-1M amount.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pricing.{field}: {source}")]
pub struct PricingError {
    /// The spec field, as written in the manifest (`input`, `cachedInput`, `cacheWrite`,
    /// `cacheWrite1h`, `output`, `reasoning`).
    pub field: &'static str,
    /// Why the value does not parse.
    pub source: ParseMoneyError,
}

impl Prices {
    /// Prices from a route's spec: `cachedInput` and `cacheWrite` default to `input`,
    /// `cacheWrite1h` to twice `input` ([`one_hour_write_default`]), `reasoning` to `output`.
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
            cache_write_1h: or_default("cacheWrite1h", spec.cache_write_1h.as_ref(), one_hour_write_default(input))?,
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
            TokenKind::CacheWrite1h => self.cache_write_1h,
            TokenKind::Output => self.output,
            TokenKind::Reasoning => self.reasoning,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Token counts
// ---------------------------------------------------------------------------------------------

/// One of the six disjoint kinds a token is billed as.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// Uncached, non-cache-write input.
    Input,
    /// Input read from the prompt cache.
    CachedInput,
    /// Input written to the prompt cache with the default (shortest) lifetime: Anthropic's
    /// 5-minute writes, every other provider's writes.
    CacheWrite,
    /// Input written to Anthropic's 1-hour prompt cache.
    CacheWrite1h,
    /// Visible (non-reasoning) output.
    Output,
    /// Reasoning output.
    Reasoning,
}

impl TokenKind {
    /// Every kind, in label order.
    pub const ALL: [TokenKind; 6] = [
        TokenKind::Input,
        TokenKind::CachedInput,
        TokenKind::CacheWrite,
        TokenKind::CacheWrite1h,
        TokenKind::Output,
        TokenKind::Reasoning,
    ];

    /// The metric label value (`tollgate_tokens_total{kind=...}`).
    pub const fn label(self) -> &'static str {
        match self {
            TokenKind::Input => "input",
            TokenKind::CachedInput => "cached_input",
            TokenKind::CacheWrite => "cache_write",
            TokenKind::CacheWrite1h => "cache_write_1h",
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
    /// Input written to the prompt cache with the default (shortest) lifetime.
    pub cache_write: u64,
    /// Input written to Anthropic's 1-hour prompt cache (absent from documents written before
    /// the kind existed: zero).
    #[serde(default)]
    pub cache_write_1h: u64,
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
            TokenKind::CacheWrite1h => self.cache_write_1h,
            TokenKind::Output => self.output,
            TokenKind::Reasoning => self.reasoning,
        }
    }

    /// The count of one kind, to change it.
    pub fn get_mut(&mut self, kind: TokenKind) -> &mut u64 {
        match kind {
            TokenKind::Input => &mut self.input,
            TokenKind::CachedInput => &mut self.cached_input,
            TokenKind::CacheWrite => &mut self.cache_write,
            TokenKind::CacheWrite1h => &mut self.cache_write_1h,
            TokenKind::Output => &mut self.output,
            TokenKind::Reasoning => &mut self.reasoning,
        }
    }

    /// `(kind, count)` for every kind, in [`TokenKind::ALL`] order; `kind.label()` is the metric
    /// label value.
    pub fn by_kind(&self) -> [(TokenKind, u64); 6] {
        TokenKind::ALL.map(|k| (k, self.get(k)))
    }

    /// Adds `other` kind by kind (saturating, which real counts never reach).
    pub fn add(&mut self, other: &TokenCounts) {
        for k in TokenKind::ALL {
            let n = self.get_mut(k);
            *n = n.saturating_add(other.get(k));
        }
    }

    /// Cache writes of every lifetime.
    pub fn cache_writes(&self) -> u64 {
        self.cache_write.saturating_add(self.cache_write_1h)
    }

    /// All input: uncached, read from the cache and written to it (every lifetime).
    pub fn prompt(&self) -> u64 {
        self.input.saturating_add(self.cached_input).saturating_add(self.cache_writes())
    }

    /// All tokens, every kind once (saturating, which real counts never reach).
    pub fn total(&self) -> u64 {
        self.by_kind().iter().fold(0u64, |acc, (_, n)| acc.saturating_add(*n))
    }

    /// The cost of each kind, exact.
    pub fn cost_by_kind(&self, prices: &Prices) -> [(TokenKind, Money); 6] {
        TokenKind::ALL.map(|k| (k, prices.get(k).cost(self.get(k))))
    }

    /// The cost of the request: the sum of the per-kind costs, exact.
    pub fn cost(&self, prices: &Prices) -> Money {
        self.cost_by_kind(prices).into_iter().map(|(_, m)| m).sum()
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
    parse_usage_node(family, &Node::of_value(body))
}

/// [`parse_usage`] of a [`Node`] tree: the same rules, read without building a `Value` (the
/// gateway parses answers straight into a [`Node`]).
pub fn parse_usage_node(family: ProviderFamily, body: &Node<'_>) -> Result<TokenCounts, UsageError> {
    let Node::Object(map) = body else {
        return Err(malformed("(response body)".to_string(), format!("expected a JSON object, got {}", body.kind())));
    };
    let root = Fields::root(map);

    if family == ProviderFamily::Gemini
        && let Some(meta) = root.child("usageMetadata")?
    {
        return gemini_native(&meta);
    }

    // An OpenAI Responses stream event wraps the whole response object.
    let response = match (map.get("usage"), map.get("response")) {
        (None | Some(Node::Null), Some(Node::Object(_))) => root.child("response")?,
        _ => None,
    };
    let usage = match (root.child("usage")?, &response) {
        (Some(usage), _) => usage,
        (None, Some(response)) => response.child("usage")?.ok_or(UsageError::Missing)?,
        (None, None) => return Err(UsageError::Missing),
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
                let is_delta = map.get("type").and_then(Node::as_str) == Some("message_delta");
                anthropic_native(&usage, is_delta)
            }
        }
        ProviderFamily::Gemini => gemini_openai_compat(&usage),
    }
}

#[cfg(test)]
mod node_tests;
#[cfg(test)]
mod tests;
