//! Hard budgets in the gateway: admission by reservation, settlement with the exact
//! metered cost, and the output-token caps applied on the way upstream.
//!
//! Admission: before an attempt on a backend covered by a Hard budget (per the allowances
//! document, [`crate::config::allowances`]), the gateway reserves the request's worst-case
//! cost from its grant ([`crate::policy::allowance::Ledger`]). No room: the backend is skipped
//! for this request like an over-budget backend, and when no backend of the plan is left the
//! client gets 429 `budget_exhausted`. A gateway with no allowances document enforces nothing
//! (it does not know any budget is Hard); one that has the document but is not listed in a
//! budget's grants admits nothing to that budget's backends.
//!
//! Worst case of a request ([`worst_case`], the one definition the max-cost hint uses too), at
//! the backend's prices, each kind at the dearest price it could be billed at (input: max of
//! input, cached input, cache write and, for the Anthropic family, the only one that reports
//! them, 1-hour cache write; output: max of output and reasoning), for
//! the request's [`CostBound`] (`bound`: the output bound, choices and media rules):
//! - input tokens ≤ body bytes + [`INPUT_TOKEN_OVERHEAD`] + the media parts' tokens;
//! - output tokens ≤ the request's bound clamped by the backend's cap, else the cap, else
//!   [`DEFAULT_HARD_OUTPUT_CAP`]; that number is always written upstream as the cap on a Hard
//!   budget's backend (every output field the request carries is clamped to it, one is
//!   inserted when it carries none), once per choice. Reasoning is inside that bound (OpenAI,
//!   Anthropic and Gemini count it there);
//! - a mock backend reports its configured counts whatever the request: its worst case is at
//!   least those counts.
//!
//! Settlement: the reservation rides with the attempt in a [`Hold`] (task-local while the
//! attempt runs, captured by the stream's end callback for streams). Billing settles it with
//! the exact metered cost; an answer whose usage cannot be read settles at the full
//! reservation (the provider may have billed it all); an attempt that failed before any
//! answer (connect error, 5xx, 429, an error answer) releases it; and a hold dropped without
//! any of these (a cancelled request) settles at the full reservation. So nothing stays
//! reserved once a request has ended, however it ended.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use serde_json::{Map, Value};

mod bound;
mod splice;

pub(crate) use bound::{CostBound, media};
pub use bound::{DEFAULT_IMAGE_TOKENS, INPUT_TOKEN_OVERHEAD};

use super::request::Endpoint;

use crate::config::allowances::{Allowances, HardBudgetGrants};
use crate::config::{BackendConfig, EndpointConfig, ProviderFamily, WireApi};
use crate::policy::allowance::{Ledger, Reservation};
use crate::policy::money::{Money, PICOS_PER_USD};

/// Output cap inserted for a Hard budget's backend when neither the request nor the route or
/// backend bounds the output.
pub const DEFAULT_HARD_OUTPUT_CAP: u32 = 4096;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One Hard budget as this gateway enforces it.
pub(crate) struct HardBudget {
    grants: Mutex<HardBudgetGrants>,
    ledger: Mutex<Ledger>,
    admitted: AtomicU64,
    refused: AtomicU64,
    overrun: AtomicU64,
}

/// What a Hard budget looks like from this gateway (for `local`'s status and tests).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HardUsage {
    /// ProviderBudget name.
    pub budget: String,
    /// Window start of the current grant, Unix seconds.
    pub window_start: i64,
    /// This gateway's cumulative grant in the window.
    pub granted: Money,
    /// Settled spend in the window.
    pub settled: Money,
    /// Reserved by requests in flight.
    pub reserved: Money,
    /// Reservations admitted since start.
    pub admitted: u64,
    /// Reservations refused since start.
    pub refused: u64,
}

/// The gateway's Hard budgets.
#[derive(Default)]
pub(crate) struct Admission {
    instance: Mutex<String>,
    budgets: Mutex<Vec<Arc<HardBudget>>>,
}

impl Admission {
    /// Applies a validated allowances document for gateway instance `instance`. Ledgers of
    /// budgets still listed keep their spend and reservations.
    pub(crate) fn apply(&self, instance: &str, doc: &Allowances) {
        *lock(&self.instance) = instance.to_string();
        let mut budgets = lock(&self.budgets);
        let mut next = Vec::with_capacity(doc.budgets.len());
        for g in &doc.budgets {
            let existing = budgets.iter().find(|b| lock(&b.grants).name == g.name).cloned();
            let b = existing.unwrap_or_else(|| {
                Arc::new(HardBudget {
                    grants: Mutex::new(g.clone()),
                    ledger: Mutex::new(Ledger::new()),
                    admitted: AtomicU64::new(0),
                    refused: AtomicU64::new(0),
                    overrun: AtomicU64::new(0),
                })
            });
            *lock(&b.grants) = g.clone();
            lock(&b.ledger).grant(g.window_start, g.grant_of(instance));
            next.push(b);
        }
        *budgets = next;
    }

    /// The Hard budgets covering a backend.
    fn covering(&self, b: &BackendConfig) -> Vec<Arc<HardBudget>> {
        lock(&self.budgets).iter().filter(|h| lock(&h.grants).covers(&b.provider, &b.model)).cloned().collect()
    }

    /// Whether any Hard budget covers the backend.
    pub(crate) fn is_hard(&self, b: &BackendConfig) -> bool {
        lock(&self.budgets).iter().any(|h| lock(&h.grants).covers(&b.provider, &b.model))
    }

    /// Reserves `worst` on every Hard budget covering `b` (all or none).
    pub(crate) fn admit(&self, b: &BackendConfig, worst: Money, cap: Option<u32>) -> Admit {
        let covering = self.covering(b);
        if covering.is_empty() {
            return Admit::Free;
        }
        let mut parts = Vec::with_capacity(covering.len());
        for h in covering {
            let r = lock(&h.ledger).reserve(worst);
            match r {
                Some(r) => parts.push((h, r)),
                None => {
                    h.refused.fetch_add(1, Ordering::Relaxed);
                    let name = lock(&h.grants).name.clone();
                    for (h, r) in parts {
                        let _ = lock(&h.ledger).release(r);
                    }
                    return Admit::Refused(name);
                }
            }
        }
        for (h, _) in &parts {
            h.admitted.fetch_add(1, Ordering::Relaxed);
        }
        Admit::Held(Hold(Arc::new(HoldInner { parts: Mutex::new(parts), cap })))
    }

    /// Admission of one attempt on `b` for a request bounded by `bound` whose media parts add
    /// `media_tokens` input tokens; the hold carries the output cap to write upstream.
    pub(crate) fn admit_attempt(
        &self,
        b: &BackendConfig,
        endpoint: Endpoint,
        bound: &CostBound,
        media_tokens: u64,
    ) -> Admit {
        let output = hard_output(b, bound.output);
        let input = bound.text_input().saturating_add(media_tokens);
        let worst = worst_case(b, endpoint, input, output.saturating_mul(bound.choices));
        self.admit(b, worst, Some(u32::try_from(output).unwrap_or(u32::MAX)))
    }

    /// Every Hard budget as seen from here.
    pub(crate) fn usage(&self) -> Vec<HardUsage> {
        lock(&self.budgets)
            .iter()
            .map(|h| {
                let l = lock(&h.ledger);
                HardUsage {
                    budget: lock(&h.grants).name.clone(),
                    window_start: l.window(),
                    granted: l.granted(),
                    settled: l.settled(),
                    reserved: l.reserved(),
                    admitted: h.admitted.load(Ordering::Relaxed),
                    refused: h.refused.load(Ordering::Relaxed),
                }
            })
            .collect()
    }
}

/// The outcome of admission for one attempt.
pub(crate) enum Admit {
    /// No Hard budget covers the backend.
    Free,
    /// Reserved.
    Held(Hold),
    /// No room in this Hard budget.
    Refused(String),
}

struct HoldInner {
    parts: Mutex<Vec<(Arc<HardBudget>, Reservation)>>,
    cap: Option<u32>,
}

/// The reservations of one attempt; settled once (later calls do nothing).
#[derive(Clone)]
pub(crate) struct Hold(Arc<HoldInner>);

impl Hold {
    /// Settles with the exact cost (`None`: the cost is unknown, the whole reservation counts).
    pub(crate) fn settle(&self, cost: Option<Money>) {
        let parts = std::mem::take(&mut *lock(&self.0.parts));
        for (h, r) in parts {
            let amount = r.amount();
            let s = lock(&h.ledger).settle(r, cost.unwrap_or(amount));
            if s.overrun > Money::ZERO {
                h.overrun.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(budget = %lock(&h.grants).name, overrun = %s.overrun, "a request cost more than its reservation");
            }
        }
    }

    /// Gives the reservations back: nothing was billed.
    pub(crate) fn release(&self) {
        self.settle(Some(Money::ZERO));
    }

    /// The output cap the reservation assumed.
    pub(crate) fn cap(&self) -> Option<u32> {
        self.0.cap
    }
}

impl Drop for HoldInner {
    fn drop(&mut self) {
        // Neither billed nor released: the request was cancelled with the provider possibly
        // billing it. Count the whole reservation.
        let parts = std::mem::take(&mut *lock(&self.parts));
        for (h, r) in parts {
            let amount = r.amount();
            let _ = lock(&h.ledger).settle(r, amount);
        }
    }
}

tokio::task_local! {
    static CURRENT: Option<Hold>;
}

/// Runs an attempt with `hold` as the current hold (what [`settle_current`] settles). Without
/// a hold no scope is entered: outside one, [`current`] and [`settle_current`] see the same
/// `None` (attempts never nest, so there is no outer hold to hide).
pub(crate) async fn scoped<F: std::future::Future>(hold: Option<Hold>, f: F) -> F::Output {
    match hold {
        None => f.await,
        hold => CURRENT.scope(hold, f).await,
    }
}

/// Runs `f` with `hold` as the current hold (for stream end callbacks, outside the attempt).
pub(crate) fn scoped_sync<R>(hold: Option<Hold>, f: impl FnOnce() -> R) -> R {
    CURRENT.sync_scope(hold, f)
}

/// The current hold, to capture into a stream's end callback.
pub(crate) fn current() -> Option<Hold> {
    CURRENT.try_with(Clone::clone).ok().flatten()
}

/// Settles the current hold, if any (called by billing).
pub(crate) fn settle_current(cost: Option<Money>) {
    let _ = CURRENT.try_with(|h| {
        if let Some(h) = h {
            h.settle(cost);
        }
    });
}

/// After an attempt: a failure or an error answer releases what billing did not settle.
pub(crate) fn after_attempt(hold: Option<&Hold>, answered_ok: bool) {
    if let Some(h) = hold
        && !answered_ok
    {
        h.release();
    }
}

/// `maxInputTokens`: a request whose input bound (body bytes + overhead) is above it is refused
/// before any upstream call. The message names the field and both numbers.
pub(crate) fn input_too_large(max_input_tokens: Option<u32>, route: &str, body_bytes: usize) -> Option<String> {
    let max = max_input_tokens?;
    let bound = (body_bytes as u64).saturating_add(INPUT_TOKEN_OVERHEAD);
    (bound > u64::from(max)).then(|| {
        format!(
            "The request may hold up to {bound} input tokens (bounded from its {body_bytes} body bytes), above the maxInputTokens of {max} of model route `{route}`."
        )
    })
}

// ---------------------------------------------------------------------------------------------
// Worst case and output caps
// ---------------------------------------------------------------------------------------------

/// The output bound per choice on a Hard budget's backend: the request's own bound clamped by
/// the backend's (route's) cap, else the cap, else [`DEFAULT_HARD_OUTPUT_CAP`]. It is written
/// upstream as the cap, so upstream can generate no more than this whatever field it honours.
pub(crate) fn hard_output(b: &BackendConfig, requested: Option<u64>) -> u64 {
    match (requested, b.max_output_tokens) {
        (Some(r), Some(c)) => r.min(u64::from(c)),
        (Some(r), None) => r,
        (None, Some(c)) => u64::from(c),
        (None, None) => u64::from(DEFAULT_HARD_OUTPUT_CAP),
    }
}

/// Worst-case cost on `b` of `input` input tokens and `output` output tokens (all choices).
pub(crate) fn worst_case(b: &BackendConfig, endpoint: Endpoint, input: u64, output: u64) -> Money {
    let p = &b.pricing;
    let mut input = input;
    let mut out = if endpoint == Endpoint::Embeddings { 0 } else { output };
    if let EndpointConfig::Mock(m) = &b.endpoint {
        input = input.max(u64::from(m.input_tokens).saturating_add(u64::from(m.cache_write_tokens)));
        if endpoint != Endpoint::Embeddings {
            out = out.max(u64::from(m.output_tokens).saturating_add(u64::from(m.reasoning_tokens)));
        }
    }
    // Only Anthropic's native usage reports 1-hour writes; elsewhere that price never applies.
    let hour = if b.family == ProviderFamily::Anthropic { p.cache_write_1h } else { p.input };
    let in_price = p.input.max(p.cached_input).max(p.cache_write).max(hour);
    let out_price = p.output.max(p.reasoning);
    in_price.cost(input) + out_price.cost(out)
}

fn clamp_or_insert(obj: &mut Map<String, Value>, present: &[&str], insert: &str, cap: u32) {
    let mut any = false;
    for k in present {
        if let Some(v) = obj.get_mut(*k)
            && !v.is_null()
        {
            any = true;
            if v.as_u64().is_none_or(|n| n > u64::from(cap)) {
                *v = Value::from(cap);
            }
        }
    }
    if !any {
        obj.insert(insert.to_string(), Value::from(cap));
    }
}

/// The upstream body with the output cap applied in `api`'s wire format: the request's field
/// clamped to `cap`, or inserted when absent. Bodies that are not JSON objects pass unchanged
/// (the upstream refuses them); embeddings have no output.
pub(crate) fn cap_body(body: &[u8], api: WireApi, endpoint: Endpoint, provider: &str, cap: u32) -> Option<Vec<u8>> {
    if endpoint == Endpoint::Embeddings {
        return None;
    }
    // Top-level fields: spliced into the bytes (no re-serialisation; see `splice`).
    let top_level: Option<(&[&str], &str)> = match (api, endpoint) {
        (WireApi::AnthropicMessages, _) => Some((&["max_tokens"], "max_tokens")),
        (WireApi::OpenAI, Endpoint::ChatCompletions) => Some((
            &["max_completion_tokens", "max_tokens"],
            if provider == "openai" { "max_completion_tokens" } else { "max_tokens" },
        )),
        (WireApi::OpenAI, Endpoint::Completions | Endpoint::Messages) => Some((&["max_tokens"], "max_tokens")),
        (WireApi::OpenAI, Endpoint::Responses) => Some((&["max_output_tokens"], "max_output_tokens")),
        (WireApi::Gemini, _) | (WireApi::OpenAI, Endpoint::Embeddings) => None,
    };
    if let Some((present, insert)) = top_level
        && let Some(out) = splice::cap_top_level(body, present, insert, cap)
    {
        return Some(out);
    }
    let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(body) else {
        return None;
    };
    match (top_level, api) {
        // A repeated capped key: the parsed object keeps the last value, as JSON readers do.
        (Some((present, insert)), _) => clamp_or_insert(&mut obj, present, insert, cap),
        (None, WireApi::Gemini) => {
            let gc = obj.entry("generationConfig").or_insert_with(|| Value::Object(Map::new()));
            if !gc.is_object() {
                *gc = Value::Object(Map::new());
            }
            if let Value::Object(gc) = gc {
                clamp_or_insert(gc, &["maxOutputTokens"], "maxOutputTokens", cap);
            }
        }
        (None, _) => return None,
    }
    serde_json::to_vec(&Value::Object(obj)).ok()
}

/// The output cap of the current attempt on `b`: the hold's on a Hard budget's backend (never
/// above the configured cap, see [`hard_output`]), else the configured one.
pub(crate) fn current_cap(b: &BackendConfig) -> Option<u32> {
    current().and_then(|h| h.cap()).or(b.max_output_tokens)
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

/// Exposes the Hard budgets on `/metrics`.
#[derive(Debug)]
pub(crate) struct AdmissionCollector(pub(crate) Arc<Admission>);

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission").field("budgets", &lock(&self.budgets).len()).finish()
    }
}

fn usd(m: Money) -> f64 {
    m.picos() as f64 / PICOS_PER_USD as f64
}

impl Collector for AdmissionCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let usage = self.0.usage();
        // The instance id the grants are read for: the controller grants this pod by it.
        let instance = lock(&self.0.instance).clone();
        if !instance.is_empty() {
            let mut fam = encoder.encode_descriptor(
                "tollgate_hard_budget_instance",
                "This gateway's instance id in the allowances (Hard budgets' grants)",
                None,
                MetricType::Info,
            )?;
            fam.encode_info(&[("instance", instance.as_str())])?;
        }
        let mut fam = encoder.encode_descriptor(
            "tollgate_hard_budget_reservations",
            "Hard budget reservations by result (admitted, refused)",
            None,
            MetricType::Counter,
        )?;
        for u in &usage {
            for (result, n) in [("admitted", u.admitted), ("refused", u.refused)] {
                let labels = [("budget", u.budget.as_str()), ("result", result)];
                ConstCounter::new(n).encode(fam.encode_family(&labels)?)?;
            }
        }
        for (name, help, get) in [
            (
                "tollgate_hard_budget_granted_usd",
                "This gateway's cumulative allowance in the window",
                (|u: &HardUsage| u.granted) as fn(&HardUsage) -> Money,
            ),
            ("tollgate_hard_budget_settled_usd", "Settled spend in the window (exact metered cost)", |u| u.settled),
            ("tollgate_hard_budget_reserved_usd", "Reserved by requests in flight", |u| u.reserved),
        ] {
            let mut fam = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for u in &usage {
                ConstGauge::new(usd(get(u))).encode(fam.encode_family(&[("budget", u.budget.as_str())])?)?;
            }
        }
        Ok(())
    }
}
