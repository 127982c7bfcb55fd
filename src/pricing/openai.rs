//! OpenAI usage (chat/completions, embeddings, Responses), also used for the OpenAI-shaped
//! Mistral and Qwen: rules in the comments of each function below.

use super::TokenCounts;
use super::usage::*;

// ---------------------------------------------------------------------------------------------
// OpenAI (and the OpenAI-shaped Mistral and Qwen)
// ---------------------------------------------------------------------------------------------

/// `prompt_tokens` (required) and `completion_tokens`, with `total_tokens` checked against their
/// sum when present.
///
/// Embeddings report only `prompt_tokens` and `total_tokens`: an absent `completion_tokens` is
/// zero only when `total_tokens` is present and equal to `prompt_tokens`, i.e. when the upstream
/// itself says there was no output.
pub(super) fn prompt_and_completion(u: &Fields<'_>) -> Result<(u64, u64), UsageError> {
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
pub(super) fn carve_cache(
    u: &Fields<'_>,
    total_key: &str,
    total: u64,
    details_key: &str,
) -> Result<(u64, u64, u64), UsageError> {
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
    let (name, dname) = (u.name(total_key), u.name(details_key));
    let input = carve((&name, total), (lazy(|f| write!(f, "{dname}.cached_tokens")), cached))?;
    let input = carve(
        (lazy(|f| write!(f, "{name} - {dname}.cached_tokens")), input),
        (lazy(|f| write!(f, "{dname} cache writes")), write),
    )?;
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
pub(super) fn openai_chat(u: &Fields<'_>) -> Result<TokenCounts, UsageError> {
    let (prompt, completion) = prompt_and_completion(u)?;
    let (input, cached_input, cache_write) = carve_cache(u, "prompt_tokens", prompt, "prompt_tokens_details")?;
    let (output, reasoning) = reasoning_inside(u, "completion_tokens", completion)?;
    Ok(TokenCounts { input, cached_input, cache_write, cache_write_1h: 0, output, reasoning })
}

/// OpenAI Responses API (`usage` of a response object or of a `response.completed` event).
///
/// Rule: `input_tokens` ⊇ `input_tokens_details.cached_tokens` ⊎
/// `input_tokens_details.cache_write_tokens`; `output_tokens` ⊇
/// `output_tokens_details.reasoning_tokens`; `total_tokens` = `input_tokens` + `output_tokens`.
pub(super) fn openai_responses(u: &Fields<'_>) -> Result<TokenCounts, UsageError> {
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
    Ok(TokenCounts { input, cached_input, cache_write, cache_write_1h: 0, output, reasoning })
}
