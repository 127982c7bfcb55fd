//! DeepSeek usage: cache hits and misses split the prompt; rules below.

use super::TokenCounts;
use super::openai::prompt_and_completion;
use super::usage::*;

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
pub(super) fn deepseek(u: &Fields<'_>) -> Result<TokenCounts, UsageError> {
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
    Ok(TokenCounts { input: miss, cached_input: hit, cache_write: 0, cache_write_1h: 0, output, reasoning })
}
