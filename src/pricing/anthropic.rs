//! Anthropic usage, native (`message`, `message_delta`) and OpenAI-compatible; rules below.

use super::TokenCounts;
use super::usage::*;

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
/// `reasoning` is zero. `server_tool_use` counts requests, not tokens.
///
/// Cache writes by lifetime: `cache_creation.ephemeral_1h_input_tokens` and
/// `cache_creation.ephemeral_5m_input_tokens` split `cache_creation_input_tokens` (they are a
/// breakdown, not added again). The 1-hour part is its own kind ([`TokenCounts::cache_write_1h`],
/// billed at `cacheWrite1h`); the rest of `cache_creation_input_tokens` stays `cache_write`
/// (5-minute writes, billed at `cacheWrite`). When both parts are given they must sum to the
/// total; a 1-hour part larger than the total is inconsistent. Without a breakdown every write
/// is a 5-minute write (the API's default lifetime).
///
/// `input_tokens` is required: a `message_delta` from an API version that reports only
/// `output_tokens` there must be merged with the `message_start` usage before it is parsed.
pub(super) fn anthropic_native(u: &Fields<'_>, is_message_delta: bool) -> Result<TokenCounts, UsageError> {
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
    let (cache_write, cache_write_1h) = cache_writes_by_lifetime(u)?;
    Ok(TokenCounts {
        input,
        cached_input: u.opt("cache_read_input_tokens")?.unwrap_or(0),
        cache_write,
        cache_write_1h,
        output: u.req("output_tokens")?,
        reasoning: 0,
    })
}

/// `cache_creation_input_tokens` split into (5-minute, 1-hour) writes by `cache_creation`.
fn cache_writes_by_lifetime(u: &Fields<'_>) -> Result<(u64, u64), UsageError> {
    let total = u.opt("cache_creation_input_tokens")?;
    let five = u.nested("cache_creation", "ephemeral_5m_input_tokens")?;
    let hour = u.nested("cache_creation", "ephemeral_1h_input_tokens")?;
    let Some(total) = total else {
        // A breakdown with no total: the breakdown is the whole.
        return Ok((five.unwrap_or(0), hour.unwrap_or(0)));
    };
    let hour = hour.unwrap_or(0);
    let rest = carve(
        (&u.name("cache_creation_input_tokens"), total),
        (&u.name("cache_creation.ephemeral_1h_input_tokens"), hour),
    )?;
    if let Some(five) = five
        && five != rest
    {
        return Err(inconsistent(format!(
            "{}={five} + {}={hour} is not {}={total}",
            u.name("cache_creation.ephemeral_5m_input_tokens"),
            u.name("cache_creation.ephemeral_1h_input_tokens"),
            u.name("cache_creation_input_tokens"),
        )));
    }
    Ok((rest, hour))
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
pub(super) fn anthropic_openai_compat(u: &Fields<'_>) -> Result<TokenCounts, UsageError> {
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
    Ok(TokenCounts { input, cached_input, cache_write, cache_write_1h: 0, output, reasoning })
}
