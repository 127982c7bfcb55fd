//! Cache-aware cost: the prompt-cache share each backend actually achieves, from its
//! metered tokens, and the blended price `Cheapest` compares.
//!
//! Rules:
//! - Input tokens are metered in disjoint kinds: uncached `input`, `cached_input` (cache reads)
//!   and `cache_write`. Each evaluation's deltas are kept per backend for [`WINDOW_MS`] (one
//!   hour), merged per minute so the memory stays small (at most 61 entries per backend).
//! - The achieved shares are whole percents, rounded down, of the window's input tokens:
//!   `cached = floor(100 × cached_input / all input)`, `write` likewise, `uncached` the rest. Whole
//!   percents keep a table from being rewritten for every token of jitter.
//! - The blended price per token is `input price × uncached% + cachedInput price × cached% +
//!   cacheWrite price × write%` (divided by 100, rounded down to the pico-dollar) plus the output
//!   price. With no input token in the window it is the list price (input + output), as before.
//! - Budgets need no such estimate: their spend and forecast come from the metered spend, which
//!   already bills cached input at its own price.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::Money;
use crate::pricing::TokenCounts;

/// How long token deltas count toward the achieved share.
pub const WINDOW_MS: i64 = 3_600_000;
/// Samples of the same minute are merged.
const MINUTE_MS: i64 = 60_000;

/// Input tokens of one minute of a backend.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InputSample {
    /// Start of the minute (time of its first delta, rounded down to the minute).
    pub at: Timestamp,
    /// Uncached input tokens.
    pub uncached: u64,
    /// Cache reads.
    pub cached: u64,
    /// Cache writes.
    pub write: u64,
}

/// Adds one evaluation's token delta at `now`, and prunes what left the window.
pub fn record(samples: &mut Vec<InputSample>, tokens: &TokenCounts, now: Timestamp) {
    let cutoff = now.as_millisecond().saturating_sub(WINDOW_MS);
    samples.retain(|s| s.at.as_millisecond() > cutoff);
    if tokens.prompt() == 0 {
        return;
    }
    let minute = now.as_millisecond().div_euclid(MINUTE_MS) * MINUTE_MS;
    let at = Timestamp::from_millisecond(minute).unwrap_or(now);
    match samples.last_mut() {
        Some(last) if last.at == at => {
            last.uncached = last.uncached.saturating_add(tokens.input);
            last.cached = last.cached.saturating_add(tokens.cached_input);
            last.write = last.write.saturating_add(tokens.cache_writes());
        }
        _ => samples.push(InputSample {
            at,
            uncached: tokens.input,
            cached: tokens.cached_input,
            write: tokens.cache_writes(),
        }),
    }
}

/// Achieved shares of the window's input tokens, whole percents `(uncached, cached, write)`
/// summing to 100; `None` without input tokens.
pub fn shares(samples: &[InputSample]) -> Option<(u32, u32, u32)> {
    let (u, c, w) = samples.iter().fold((0u128, 0u128, 0u128), |(u, c, w), s| {
        (u + u128::from(s.uncached), c + u128::from(s.cached), w + u128::from(s.write))
    });
    let all = u + c + w;
    if all == 0 {
        return None;
    }
    let pct = |n: u128| u32::try_from(n * 100 / all).unwrap_or(100);
    let (cached, write) = (pct(c), pct(w));
    Some((100 - cached - write, cached, write))
}

/// The blended price per token `Cheapest` compares (see the module rules): list prices per
/// token of uncached input, cache reads, cache writes and output.
pub fn blended(input: Money, cached: Money, write: Money, output: Money, shares: Option<(u32, u32, u32)>) -> Money {
    let Some((u, c, w)) = shares else {
        return input + output;
    };
    let sum = input.picos() * i128::from(u) + cached.picos() * i128::from(c) + write.picos() * i128::from(w);
    Money::from_picos(sum.div_euclid(100)) + output
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(input: u64, cached_input: u64, cache_write: u64) -> TokenCounts {
        TokenCounts { input, cached_input, cache_write, cache_write_1h: 0, output: 0, reasoning: 0 }
    }

    #[test]
    fn shares_are_whole_percents_of_the_window() {
        let t0: Timestamp = "2025-05-14T10:00:10Z".parse().unwrap();
        let mut s = Vec::new();
        record(&mut s, &tokens(500, 1500, 0), t0);
        // Same minute: merged.
        record(&mut s, &tokens(500, 1500, 0), t0.checked_add(jiff::SignedDuration::from_secs(30)).unwrap());
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].at, "2025-05-14T10:00:00Z".parse::<Timestamp>().unwrap());
        assert_eq!(shares(&s), Some((25, 75, 0)));
        // A third write: 1/3 rounds down to 33%, the rest is uncached.
        let mut w = Vec::new();
        record(&mut w, &tokens(1, 1, 1), t0);
        assert_eq!(shares(&w), Some((34, 33, 33)));
        // Outputs only: no share.
        let mut o = Vec::new();
        record(&mut o, &TokenCounts { output: 9, ..TokenCounts::default() }, t0);
        assert!(o.is_empty());
        assert_eq!(shares(&o), None);
        // An hour later the old minute is gone.
        record(&mut s, &tokens(100, 0, 0), t0.checked_add(jiff::SignedDuration::from_secs(3600)).unwrap());
        assert_eq!(shares(&s), Some((100, 0, 0)));
    }

    #[test]
    fn blended_price_follows_the_achieved_share() {
        let p = |picos: i128| Money::from_picos(picos);
        // $1/1M input, $0.10/1M cached, $1.25/1M write, $2/1M output.
        let (i, c, w, o) = (p(1_000_000), p(100_000), p(1_250_000), p(2_000_000));
        assert_eq!(blended(i, c, w, o, None), p(3_000_000));
        assert_eq!(blended(i, c, w, o, Some((100, 0, 0))), p(3_000_000));
        assert_eq!(blended(i, c, w, o, Some((25, 75, 0))), p(250_000 + 75_000 + 2_000_000));
        assert_eq!(blended(i, c, w, o, Some((34, 33, 33))), p(340_000 + 33_000 + 412_500 + 2_000_000));
    }
}
