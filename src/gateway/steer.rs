//! Per-request steering: the affinity key and the request hints of one request,
//! turned into a [`Steer`] for [`super::select`]. Shared by every client surface
//! (`/v1/chat/completions` and the other OpenAI endpoints, `/v1/messages`); each surface says
//! what it read ([`Input`]) and words the refusal in its own error shape.
//!
//! Hints (headers, documented in docs/routing.md), each only where the route allows it
//! (`spec.hints`); a hint the route does not allow, or a malformed one, is a 400 naming the
//! header:
//! - `x-tollgate-max-cost-usd: <decimal USD>` — rows whose worst-case cost exceeds it are
//!   skipped. The worst case is Hard admission's ([`super::admission::worst_case`] of the
//!   request's [`CostBound`]): body bytes + overhead + media parts as input at the dearest
//!   input-side price, the output bound (the largest output field, clamped by the row's cap)
//!   times the choices (`n`, `best_of`) at the dearest output-side price. Without an output
//!   bound the cost has no bound and the hint is refused (400 `invalid_hint`), as it is for a
//!   cost field that is not an integer (400 `invalid_cost_field`) or media parts the route
//!   bounds no size for (400 `unbounded_input`). When no serving row fits: 400
//!   `max_cost_exceeded` with the cheapest worst case.
//! - `x-tollgate-prefer: cheapest | fastest` — sorts the best tier's serving rows by blended
//!   price (input + output per token, the input side at the price each backend actually
//!   achieved: uncached and cached input tokens this gateway metered on it, weighted by their
//!   prices; list `input` before any was metered) or by observed latency (never-observed rows
//!   last).
//! - A preference overrides affinity for that request; a max cost can move an affinity key off
//!   its backend for that request only (the key's backend does not change for others).
//! - A hint header sent more than once is refused (400 `invalid_hint`): proxies and clients
//!   disagree on which of two values wins, so the gateway picks neither.

use axum::http::{HeaderMap, HeaderName, StatusCode};
use serde_json::Value;

use super::CompiledRoute;
use super::admission::{CostBound, hard_output, worst_case};
use super::affinity::{self, KeyParts, PROMPT_FIELDS};
use super::request::{ClientRequest, Endpoint};
use super::select::Steer;
use crate::config::Preference;
use crate::policy::money::Money;

/// Request header: the most one request may cost, USD.
pub(crate) static MAX_COST_HEADER: HeaderName = HeaderName::from_static("x-tollgate-max-cost-usd");
/// Request header: `cheapest` or `fastest`.
pub(crate) static PREFER_HEADER: HeaderName = HeaderName::from_static("x-tollgate-prefer");

/// What a surface read from one request.
pub(crate) struct Input<'a> {
    /// Client headers.
    pub(crate) headers: &'a HeaderMap,
    /// Affinity key material (the header is filled here from `headers`).
    pub(crate) parts: KeyParts<'a>,
    /// Where the prompt is (read only when the `Prefix` key source is reached).
    pub(crate) prompt: Prompt<'a>,
    /// The surface's endpoint (which output field bounds the answer).
    pub(crate) endpoint: Endpoint,
    /// What bounds the request's cost.
    pub(crate) bound: &'a CostBound,
    /// The input tokens of the request's media parts, or why they have no bound.
    pub(crate) media_tokens: &'a dyn Fn() -> Result<u64, String>,
}

/// The prompt of a request, unparsed until needed.
pub(crate) enum Prompt<'a> {
    /// An OpenAI-surface body (raw top-level fields).
    Raw(&'a ClientRequest),
    /// A parsed body (`/v1/messages`).
    Parsed(&'a Value),
}

impl Prompt<'_> {
    fn opening(&self) -> Vec<String> {
        match self {
            Prompt::Parsed(v) => affinity::opening_texts(v),
            Prompt::Raw(creq) => {
                let fields: serde_json::Map<String, Value> = PROMPT_FIELDS
                    .iter()
                    .filter_map(|k| Some((k.to_string(), serde_json::from_str(creq.raw(k)?).ok()?)))
                    .collect();
                affinity::opening_texts(&Value::Object(fields))
            }
        }
    }
}

impl<'a> Input<'a> {
    /// What an OpenAI-surface request carries (`/v1/chat/completions`, `/v1/completions`,
    /// `/v1/responses`, `/v1/embeddings`).
    pub(crate) fn openai(
        headers: &'a HeaderMap,
        creq: &'a ClientRequest,
        endpoint: Endpoint,
        bound: &'a CostBound,
        media_tokens: &'a dyn Fn() -> Result<u64, String>,
    ) -> Self {
        let string = |k: &str| creq.str_field(k);
        Input {
            headers,
            parts: KeyParts { header: None, prompt_cache_key: string("prompt_cache_key"), user: string("user") },
            prompt: Prompt::Raw(creq),
            endpoint,
            bound,
            media_tokens,
        }
    }

    /// What a `/v1/messages` request carries.
    pub(crate) fn messages(
        headers: &'a HeaderMap,
        body: &'a Value,
        endpoint: Endpoint,
        bound: &'a CostBound,
        media_tokens: &'a dyn Fn() -> Result<u64, String>,
    ) -> Self {
        Input {
            headers,
            parts: KeyParts {
                header: None,
                prompt_cache_key: None,
                user: body.pointer("/metadata/user_id").and_then(Value::as_str).map(str::to_owned),
            },
            prompt: Prompt::Parsed(body),
            endpoint,
            bound,
            media_tokens,
        }
    }
}

/// A refused hint: status, machine code and message (each surface shapes it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

fn refuse(code: &'static str, message: String) -> Refusal {
    Refusal { status: StatusCode::BAD_REQUEST, code, message }
}

/// The request's steering on `route`.
pub(crate) fn steer(route: &CompiledRoute, mut input: Input<'_>) -> Result<Steer, Refusal> {
    let mut out = Steer::default();
    if let Some(policy) = &route.affinity {
        let name = HeaderName::from_bytes(policy.header.as_bytes()).ok();
        input.parts.header = name.and_then(|n| input.headers.get(n)).and_then(|v| v.to_str().ok());
        out.key = affinity::key(policy, &input.parts, || input.prompt.opening());
    }
    let hints = route.hints.clone().unwrap_or_default();
    // The first value of each hint header, in one walk over the request's headers (most
    // requests carry neither).
    let [prefer, max_cost] = super::first_values(input.headers, [&PREFER_HEADER, &MAX_COST_HEADER]);
    for (name, present) in [(&PREFER_HEADER, prefer.is_some()), (&MAX_COST_HEADER, max_cost.is_some())] {
        if present && input.headers.get_all(name).iter().nth(1).is_some() {
            return Err(refuse("invalid_hint", format!("header {name} is sent more than once: send it once")));
        }
    }
    if let Some(v) = prefer {
        let value = v.to_str().unwrap_or("").trim().to_ascii_lowercase();
        let pref = match value.as_str() {
            "cheapest" => Preference::Cheapest,
            "fastest" => Preference::Fastest,
            _ => {
                return Err(refuse(
                    "invalid_hint",
                    format!("header {PREFER_HEADER}: {value:?} is not a preference (cheapest, fastest)"),
                ));
            }
        };
        if !hints.prefer.contains(&pref) {
            return Err(refuse(
                "hint_not_allowed",
                format!(
                    "header {PREFER_HEADER}: route `{}` does not accept the preference {value:?} (spec.hints.prefer)",
                    route.name
                ),
            ));
        }
        out.prefer = Some(
            route
                .backends
                .iter()
                .map(|b| match pref {
                    Preference::Cheapest => {
                        let p = achieved_input(&b.cfg.pricing, &b.cell.tokens()) + b.cfg.pricing.output.per_million();
                        u64::try_from(p.picos()).unwrap_or(u64::MAX)
                    }
                    Preference::Fastest => b.cell.latency_estimate_us().unwrap_or(u64::MAX),
                })
                .collect(),
        );
    }
    if let Some(v) = max_cost {
        if !hints.max_cost {
            return Err(refuse(
                "hint_not_allowed",
                format!(
                    "header {MAX_COST_HEADER}: route `{}` does not accept a max cost per request (spec.hints.maxCost)",
                    route.name
                ),
            ));
        }
        let raw = v.to_str().unwrap_or("").trim();
        let max: Money = match raw.parse::<Money>() {
            Ok(m) if !m.is_negative() => m,
            _ => {
                return Err(refuse(
                    "invalid_hint",
                    format!("header {MAX_COST_HEADER}: {raw:?} is not a non-negative decimal USD amount"),
                ));
            }
        };
        if let Some(msg) = &input.bound.unreadable {
            return Err(refuse("invalid_cost_field", format!("header {MAX_COST_HEADER}: {msg}")));
        }
        let media = (input.media_tokens)()
            .map_err(|msg| refuse("unbounded_input", format!("header {MAX_COST_HEADER}: {msg}")))?;
        let Some(max_output) = input.bound.output else {
            return Err(refuse(
                "invalid_hint",
                format!(
                    "header {MAX_COST_HEADER}: the request sets no output bound (max_tokens, max_completion_tokens or max_output_tokens), so its worst-case cost is unbounded"
                ),
            ));
        };
        let prompt = input.bound.text_input().saturating_add(media);
        let worst: Vec<Money> = route
            .backends
            .iter()
            .map(|b| {
                let output = hard_output(&b.cfg, Some(max_output)).saturating_mul(input.bound.choices);
                worst_case(&b.cfg, input.endpoint, prompt, output)
            })
            .collect();
        out.skip = worst.iter().map(|&w| w > max).collect();
        let serving = || route.candidates.iter().enumerate().filter(|(_, c)| c.serving);
        if serving().count() > 0 && serving().all(|(i, _)| out.skip[i]) {
            let cheapest = serving().map(|(i, _)| worst[i]).min().unwrap_or(Money::ZERO);
            return Err(refuse(
                "max_cost_exceeded",
                format!(
                    "header {MAX_COST_HEADER}: no backend of route `{}` fits {raw} USD; the cheapest worst case for this request is {} USD",
                    route.name,
                    cheapest.to_decimal(6)
                ),
            ));
        }
    }
    Ok(out)
}

/// The input price per million tokens a backend achieved: its metered uncached and cached
/// input tokens weighted by their prices (cache writes count as uncached input); the list
/// `input` price before any input was metered.
pub(crate) fn achieved_input(p: &crate::pricing::Prices, t: &crate::pricing::TokenCounts) -> Money {
    let uncached = t.input.saturating_add(t.cache_writes());
    let total = uncached.saturating_add(t.cached_input);
    if total == 0 {
        return p.input.per_million();
    }
    let sum = p.input.per_million().picos() * i128::from(uncached)
        + p.cached_input.per_million().picos() * i128::from(t.cached_input);
    Money::from_picos(sum / i128::from(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pricing::{Prices, TokenCounts};

    fn prices(input: &str, cached: &str, write: &str, output: &str, reasoning: &str) -> Prices {
        serde_json::from_value(serde_json::json!({
            "input": input, "cachedInput": cached, "cacheWrite": write, "output": output, "reasoning": reasoning
        }))
        .unwrap()
    }

    fn usd(s: &str) -> Money {
        s.parse().unwrap()
    }

    #[test]
    fn the_achieved_input_price_weighs_cached_reads() {
        let p = prices("1.00", "0.10", "1.00", "4.00", "4.00");
        let t = |input, cached_input| TokenCounts { input, cached_input, ..Default::default() };
        assert_eq!(achieved_input(&p, &t(0, 0)), usd("1.00"), "list price before any traffic");
        assert_eq!(achieved_input(&p, &t(100, 0)), usd("1.00"));
        // 75% cached: 0.25 × $1 + 0.75 × $0.10 = $0.325 per 1M.
        assert_eq!(achieved_input(&p, &t(500, 1500)), usd("0.325"));
        // So a backend listing $1 that caches 75% beats one listing $0.50 that caches nothing.
        let other = prices("0.50", "0.50", "0.50", "4.00", "4.00");
        assert!(achieved_input(&p, &t(500, 1500)) < achieved_input(&other, &t(2000, 0)));
    }
}
