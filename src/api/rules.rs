//! The CRDs' CEL rules (`x-kubernetes-validations`), checked natively in Rust.
//!
//! The API server evaluates each rule on the defaulted object; evaluating them with a CEL
//! interpreter per object dominated the cost of validation at fleet scale, so each
//! rule has a pure function here, run on the typed object (serde applies the same defaults as
//! the schema: the schema's defaults are generated from them). Rules:
//! - every rule of the generated CRDs has exactly one entry in [`RULES`] (kind, schema path,
//!   rule text, message); a test walks the generated schema and fails on a rule without a
//!   native counterpart, or a counterpart whose text or message drifted;
//! - a failing rule gives the API server's error: the path of the node the rule is declared on
//!   (`spec.backends[1].endpoint`, indices as `[i]`) and the rule's message, verbatim;
//! - the checks run only on objects that passed the structural schema (as the API server
//!   does), so what the schema already bounds (a pattern, `minItems`) is relied on, never
//!   re-checked: `trip` and `recover` always parse as decimals here;
//! - errors come in a fixed order: the object's fields depth first, rules of a node in the
//!   order the CRD lists them (the CEL evaluator walks properties in hash order).
//!
//! The oracle tests (`validate_oracle_tests.rs`) evaluate the same rules with kube-cel on a
//! generated corpus, every rule's failing case included, and require the same errors.

use super::validate::FieldError;
use super::{ModelRouteSpec, Period, ProviderBudgetSpec};

/// One CEL rule of a CRD and where it is declared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NativeRule {
    /// `ModelRoute` or `ProviderBudget`.
    pub kind: &'static str,
    /// Schema path of the node the rule is declared on; array items as `[i]`.
    pub path: &'static str,
    /// The CEL rule text, as in the CRD.
    pub rule: &'static str,
    /// The message the API server gives when the rule fails.
    pub message: &'static str,
}

const fn rule(kind: &'static str, path: &'static str, rule: &'static str, message: &'static str) -> NativeRule {
    NativeRule { kind, path, rule, message }
}

const AFFINITY_KEYS: NativeRule = rule(
    "ModelRoute",
    "spec.affinity.keys",
    "self.all(a, self.exists_one(b, b == a))",
    "affinity.keys: each source at most once",
);
const BACKENDS_SIZE: NativeRule =
    rule("ModelRoute", "spec.backends", "size(self) > 0", "at least one backend is required");
const BACKENDS_UNIQUE: NativeRule = rule(
    "ModelRoute",
    "spec.backends",
    "self.all(b, self.exists_one(c, c.name == b.name))",
    "backend names must be unique",
);
const BACKENDS_WEIGHT: NativeRule = rule(
    "ModelRoute",
    "spec.backends",
    "self.exists(b, b.weight > 0)",
    "at least one backend needs a weight above zero",
);
/// Providers with a built-in endpoint (the list of the rule on `spec.backends[i]`).
const BUILT_IN_ENDPOINTS: [&str; 6] = ["openai", "anthropic", "deepseek", "gemini", "mistral", "qwen"];
const BACKEND_ENDPOINT: NativeRule = rule(
    "ModelRoute",
    "spec.backends[i]",
    "has(self.endpoint) || self.provider in ['openai', 'anthropic', 'deepseek', 'gemini', 'mistral', 'qwen']",
    "endpoint is required unless provider is one with a built-in endpoint (openai, anthropic, deepseek, gemini, mistral, qwen)",
);
const ENDPOINT_URL_OR_MOCK: NativeRule = rule(
    "ModelRoute",
    "spec.backends[i].endpoint",
    "!(has(self.baseUrl) && has(self.mock))",
    "set either baseUrl or mock, not both",
);
const ENDPOINT_MOCK_NO_KEY: NativeRule = rule(
    "ModelRoute",
    "spec.backends[i].endpoint",
    "!(has(self.mock) && has(self.apiKeySecretRef))",
    "apiKeySecretRef: a mock endpoint takes no API key",
);
const ENDPOINT_NO_USERINFO: NativeRule = rule(
    "ModelRoute",
    "spec.backends[i].endpoint.baseUrl",
    "!self.matches('^[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#]*@')",
    "baseUrl must not hold a user or password (user:password@host): it is written into the gateway ConfigMap in clear; put the API key in a Secret named by apiKeySecretRef",
);
const ERROR_RATE: NativeRule = rule(
    "ModelRoute",
    "spec.health.errorRate",
    "double(self.recover) < double(self.trip)",
    "recover must be below trip",
);
const RAMP_UP: NativeRule = rule(
    "ModelRoute",
    "spec.health.rampUp",
    "self.all(a, a >= 1 && a <= 100) && self.isSorted() && self.all(a, self.exists_one(b, b == a))",
    "stages must be percents in 1..100, strictly increasing",
);
const LATENCY_RECOVER_NOT_ABOVE_TRIP: NativeRule = rule(
    "ModelRoute",
    "spec.health.latency",
    "!has(self.recover) || duration(self.recover) <= duration(self.trip)",
    "latency.recover must not be above latency.trip",
);
const LATENCY_TRIP_RANGE: NativeRule = rule(
    "ModelRoute",
    "spec.health.latency.trip",
    "duration(self) >= duration('5ms') && duration(self) <= duration('5m')",
    "latency.trip must be between 5ms and 5m",
);
const LATENCY_RECOVER_RANGE: NativeRule = rule(
    "ModelRoute",
    "spec.health.latency.recover",
    "duration(self) >= duration('5ms') && duration(self) <= duration('5m')",
    "latency.recover must be between 5ms and 5m",
);
const LATENCY_WINDOW_POSITIVE: NativeRule = rule(
    "ModelRoute",
    "spec.health.latency.window",
    "duration(self) > duration('0s')",
    "latency.window must be longer than zero",
);
const THRESHOLDS: NativeRule = rule(
    "ProviderBudget",
    "spec.thresholds",
    "self.map(t, t.percent).isSorted() && self.all(a, self.exists_one(b, b.percent == a.percent))",
    "threshold percents must be strictly increasing",
);
const WINDOW_DURATION_REQUIRED: NativeRule = rule(
    "ProviderBudget",
    "spec.window",
    "self.period != 'Rolling' || has(self.duration)",
    "duration is required when period is Rolling",
);
const WINDOW_DURATION_ONLY_ROLLING: NativeRule = rule(
    "ProviderBudget",
    "spec.window",
    "self.period == 'Rolling' || !has(self.duration)",
    "duration is only allowed when period is Rolling",
);
const WINDOW_DURATION_POSITIVE: NativeRule = rule(
    "ProviderBudget",
    "spec.window.duration",
    "duration(self) > duration('0s')",
    "window.duration must be longer than zero",
);
const FORECAST_LOOKBACK_POSITIVE: NativeRule = rule(
    "ProviderBudget",
    "spec.forecast.lookback",
    "duration(self) > duration('0s')",
    "forecast.lookback must be longer than zero",
);

/// Every CEL rule of both CRDs that has a native check, in the order the checks run.
pub const RULES: [NativeRule; 19] = [
    AFFINITY_KEYS,
    BACKENDS_SIZE,
    BACKENDS_UNIQUE,
    BACKENDS_WEIGHT,
    BACKEND_ENDPOINT,
    ENDPOINT_URL_OR_MOCK,
    ENDPOINT_MOCK_NO_KEY,
    ENDPOINT_NO_USERINFO,
    ERROR_RATE,
    RAMP_UP,
    LATENCY_RECOVER_NOT_ABOVE_TRIP,
    LATENCY_TRIP_RANGE,
    LATENCY_RECOVER_RANGE,
    LATENCY_WINDOW_POSITIVE,
    THRESHOLDS,
    WINDOW_DURATION_REQUIRED,
    WINDOW_DURATION_ONLY_ROLLING,
    WINDOW_DURATION_POSITIVE,
    FORECAST_LOOKBACK_POSITIVE,
];

fn fail(out: &mut Vec<FieldError>, path: impl Into<String>, rule: &NativeRule) {
    out.push(FieldError { field: path.into(), message: rule.message.to_string() });
}

/// Whether `text` is a URL whose authority holds a user or password (`scheme://user:pass@host`):
/// an `@` between `://` and the first `/`, `?` or `#` after it
/// (`^[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#]*@`). Also used to keep such a URL out of error messages.
pub fn url_has_userinfo(text: &str) -> bool {
    let Some((scheme, rest)) = text.split_once("://") else {
        return false;
    };
    let mut chars = scheme.chars();
    let scheme_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-'));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    scheme_ok && authority.contains('@')
}

/// No two equal items (`self.all(a, self.exists_one(b, b == a))`).
fn all_distinct<T: PartialEq>(items: &[T]) -> bool {
    items.iter().enumerate().all(|(i, a)| !items[..i].contains(a))
}

/// Strictly increasing (`isSorted()` and every item once).
fn strictly_increasing(items: impl IntoIterator<Item = u32>) -> bool {
    let mut last = None;
    items.into_iter().all(|x| {
        let ok = last.is_none_or(|l| x > l);
        last = Some(x);
        ok
    })
}

/// A duration as CEL's `duration()` reads the schema's pattern (`None`: it does not read). Very
/// long texts (`3000000h`) read as kube-cel reads them, in full; cel-go would refuse durations
/// past 2^63 ns, which no rule here accepts anyway except the `> 0s` ones.
fn cel_duration_ms(text: &str) -> Option<i64> {
    crate::policy::money::parse_duration_ms(text).ok()
}

/// Between 5ms and 5m (`duration(self) >= duration('5ms') && duration(self) <= duration('5m')`).
fn in_latency_range(text: &str) -> bool {
    cel_duration_ms(text).is_some_and(|ms| (5..=300_000).contains(&ms))
}

/// The rules of `spec.health.latency`, node first, then its fields.
fn latency(l: &super::LatencyPolicy, out: &mut Vec<FieldError>) {
    if let Some(recover) = &l.recover {
        match (cel_duration_ms(recover), cel_duration_ms(&l.trip)) {
            (Some(r), Some(t)) if r <= t => {}
            _ => fail(out, LATENCY_RECOVER_NOT_ABOVE_TRIP.path, &LATENCY_RECOVER_NOT_ABOVE_TRIP),
        }
    }
    if !in_latency_range(&l.trip) {
        fail(out, LATENCY_TRIP_RANGE.path, &LATENCY_TRIP_RANGE);
    }
    if let Some(recover) = &l.recover
        && !in_latency_range(recover)
    {
        fail(out, LATENCY_RECOVER_RANGE.path, &LATENCY_RECOVER_RANGE);
    }
    if cel_duration_ms(&l.window).is_none_or(|ms| ms <= 0) {
        fail(out, LATENCY_WINDOW_POSITIVE.path, &LATENCY_WINDOW_POSITIVE);
    }
}

/// The rules of a ModelRoute spec that fail, as the API server reports them.
pub fn model_route(spec: &ModelRouteSpec, out: &mut Vec<FieldError>) {
    if let Some(affinity) = &spec.affinity
        && !all_distinct(&affinity.keys)
    {
        fail(out, AFFINITY_KEYS.path, &AFFINITY_KEYS);
    }
    let backends = &spec.backends;
    if backends.is_empty() {
        fail(out, BACKENDS_SIZE.path, &BACKENDS_SIZE);
    }
    let names: Vec<&str> = backends.iter().map(|b| b.name.as_str()).collect();
    if !all_distinct(&names) {
        fail(out, BACKENDS_UNIQUE.path, &BACKENDS_UNIQUE);
    }
    if !backends.iter().any(|b| b.weight > 0) {
        fail(out, BACKENDS_WEIGHT.path, &BACKENDS_WEIGHT);
    }
    for (i, b) in backends.iter().enumerate() {
        if b.endpoint.is_none() && !BUILT_IN_ENDPOINTS.contains(&b.provider.as_str()) {
            fail(out, format!("spec.backends[{i}]"), &BACKEND_ENDPOINT);
        }
        if let Some(e) = &b.endpoint {
            if e.base_url.is_some() && e.mock.is_some() {
                fail(out, format!("spec.backends[{i}].endpoint"), &ENDPOINT_URL_OR_MOCK);
            }
            if e.mock.is_some() && e.api_key_secret_ref.is_some() {
                fail(out, format!("spec.backends[{i}].endpoint"), &ENDPOINT_MOCK_NO_KEY);
            }
            if e.base_url.as_deref().is_some_and(url_has_userinfo) {
                fail(out, format!("spec.backends[{i}].endpoint.baseUrl"), &ENDPOINT_NO_USERINFO);
            }
        }
    }
    let rate = &spec.health.error_rate;
    // The schema's pattern makes both decimals; CEL compares them as doubles.
    match (rate.recover.parse::<f64>(), rate.trip.parse::<f64>()) {
        (Ok(recover), Ok(trip)) if recover < trip => {}
        _ => fail(out, ERROR_RATE.path, &ERROR_RATE),
    }
    let ramp = &spec.health.ramp_up;
    if !(ramp.iter().all(|a| (1..=100).contains(a)) && strictly_increasing(ramp.iter().copied())) {
        fail(out, RAMP_UP.path, &RAMP_UP);
    }
    if let Some(l) = &spec.health.latency {
        latency(l, out);
    }
}

/// The rules of a ProviderBudget spec that fail, as the API server reports them.
pub fn provider_budget(spec: &ProviderBudgetSpec, out: &mut Vec<FieldError>) {
    if !strictly_increasing(spec.thresholds.iter().map(|t| t.percent)) {
        fail(out, THRESHOLDS.path, &THRESHOLDS);
    }
    let rolling = spec.window.period == Period::Rolling;
    let duration = spec.window.duration.is_some();
    if rolling && !duration {
        fail(out, WINDOW_DURATION_REQUIRED.path, &WINDOW_DURATION_REQUIRED);
    }
    if !rolling && duration {
        fail(out, WINDOW_DURATION_ONLY_ROLLING.path, &WINDOW_DURATION_ONLY_ROLLING);
    }
    if let Some(d) = &spec.window.duration
        && cel_duration_ms(d).is_none_or(|ms| ms <= 0)
    {
        fail(out, WINDOW_DURATION_POSITIVE.path, &WINDOW_DURATION_POSITIVE);
    }
    if cel_duration_ms(&spec.forecast.lookback).is_none_or(|ms| ms <= 0) {
        fail(out, FORECAST_LOOKBACK_POSITIVE.path, &FORECAST_LOOKBACK_POSITIVE);
    }
}
