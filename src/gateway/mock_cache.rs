//! The mock backends' prompt caches (`endpoint.mock.promptCache`): per backend
//! (route + backend name, so a cache survives config reloads) and prompt prefix, with a TTL
//! refreshed on every use, as providers do.
//!
//! Rules: the prefix is the first `prefixBytes` bytes of the conversation's opening as the mock
//! receives it ([`affinity::opening_texts`]: system prompt and messages up to the first user
//! message, which every later turn repeats); a request whose prefix this backend holds unexpired reports the mock's
//! `cachedInputTokens` as cache reads, any other (first sight, expired, no prompt, unparsable
//! body) reports none and is remembered. Memory is bounded: past [`MAX_ENTRIES`] prefixes,
//! expired ones are dropped, and if none expired the new prefix is not remembered (it then
//! reports misses, which only understates the saving). Time is the runtime's monotonic clock.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::affinity;
use crate::config::MockEndpoint;
use crate::policy::money::parse_duration_ms;

/// Most prefixes remembered, all mock backends together.
pub(crate) const MAX_ENTRIES: usize = 100_000;

/// Every mock backend's prompt cache.
#[derive(Default)]
pub(crate) struct PromptCaches {
    map: Mutex<HashMap<(String, String, u64), Instant>>,
}

impl PromptCaches {
    /// The mock as it answers this request: `cachedInputTokens` kept on a cache hit, zero on a
    /// miss; unchanged when the mock models no prompt cache.
    pub(crate) fn view<'a>(
        &self,
        route: &str,
        backend: &str,
        m: &'a MockEndpoint,
        body: &[u8],
    ) -> Cow<'a, MockEndpoint> {
        let Some(pc) = &m.prompt_cache else {
            return Cow::Borrowed(m);
        };
        let ttl =
            Duration::from_millis(parse_duration_ms(&pc.ttl).ok().and_then(|v| u64::try_from(v).ok()).unwrap_or(0));
        let prefix = serde_json::from_slice::<serde_json::Value>(body).ok().and_then(|v| {
            let texts = affinity::opening_texts(&v);
            affinity::prefix_hash(texts.iter().map(String::as_str), pc.prefix_bytes as usize)
        });
        let hit = prefix.is_some_and(|p| self.touch(route, backend, p, ttl));
        let mut out = m.clone();
        if !hit {
            out.cached_input_tokens = 0;
        }
        Cow::Owned(out)
    }

    /// Whether `prefix` was cached on this backend (unexpired); remembers it for `ttl` either way.
    fn touch(&self, route: &str, backend: &str, prefix: u64, ttl: Duration) -> bool {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (route.to_string(), backend.to_string(), prefix);
        let hit = map.get(&key).is_some_and(|&until| until > now);
        if !map.contains_key(&key) && map.len() >= MAX_ENTRIES {
            map.retain(|_, until| *until > now);
            if map.len() >= MAX_ENTRIES {
                return hit;
            }
        }
        map.insert(key, now + ttl);
        hit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MockPromptCache;

    fn caching(ttl: &str) -> MockEndpoint {
        MockEndpoint {
            cached_input_tokens: 700,
            prompt_cache: Some(MockPromptCache { ttl: ttl.into(), prefix_bytes: 64 }),
            ..MockEndpoint::default()
        }
    }

    const TURN1: &[u8] = br#"{"model":"m","messages":[{"role":"system","content":"You are a helpful assistant for the billing team."},{"role":"user","content":"one"}]}"#;
    const TURN2: &[u8] = br#"{"model":"m","messages":[{"role":"system","content":"You are a helpful assistant for the billing team."},{"role":"user","content":"one"},{"role":"assistant","content":"1"},{"role":"user","content":"two"}]}"#;

    #[tokio::test(start_paused = true)]
    async fn a_repeat_prefix_on_the_same_backend_hits_until_the_ttl() {
        let c = PromptCaches::default();
        let m = caching("5m");
        assert_eq!(c.view("r", "a", &m, TURN1).cached_input_tokens, 0, "first sight: miss");
        assert_eq!(c.view("r", "a", &m, TURN2).cached_input_tokens, 700, "same prefix, same backend: hit");
        assert_eq!(c.view("r", "b", &m, TURN2).cached_input_tokens, 0, "another backend has its own cache");
        assert_eq!(c.view("other", "a", &m, TURN2).cached_input_tokens, 0, "another route too");
        tokio::time::advance(Duration::from_secs(299)).await;
        assert_eq!(c.view("r", "a", &m, TURN1).cached_input_tokens, 700, "a use refreshes the TTL");
        tokio::time::advance(Duration::from_secs(301)).await;
        assert_eq!(c.view("r", "a", &m, TURN1).cached_input_tokens, 0, "expired");
        assert_eq!(c.view("r", "a", &m, b"not json").cached_input_tokens, 0);
        // Without promptCache the mock reports its cached tokens every time.
        let plain = MockEndpoint { cached_input_tokens: 700, ..MockEndpoint::default() };
        assert!(matches!(c.view("r", "a", &plain, TURN1), Cow::Borrowed(_)));
    }
}
