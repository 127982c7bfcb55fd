//! Gemini usage, native (`usageMetadata`) and OpenAI-compatible; rules below.

use super::TokenCounts;
use super::openai::carve_cache;
use super::usage::*;

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
pub(super) fn gemini_native(m: &Fields<'_>) -> Result<TokenCounts, UsageError> {
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
        cache_write_1h: 0,
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
pub(super) fn gemini_openai_compat(u: &Fields<'_>) -> Result<TokenCounts, UsageError> {
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
    Ok(TokenCounts { input, cached_input, cache_write, cache_write_1h: 0, output, reasoning })
}
