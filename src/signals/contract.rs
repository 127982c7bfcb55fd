//! The signal contract between the gateway (which writes `/metrics`) and the controller (which
//! reads it, by scraping or through Prometheus): metric names, label names and the series key,
//! defined once and used by both sides.
//!
//! Rules:
//! - This module depends on nothing but `serde` and std: no Kubernetes, no controller code. The
//!   gateway imports it to write; `signals` imports it to read.
//! - A *family* name is what the gateway registers (`tollgate_requests`); the exposition adds the
//!   suffix of its type (`_total` for counters, `_info` for info metrics, `_sum`/`_count`/`_bucket`
//!   for histograms), which is the *sample* name a reader sees. Both are spelled out below, and a
//!   test checks that each sample name is its family name plus the suffix.
//! - Label *values* of `outcome` and `kind` are [`crate::policy::Outcome::label`] and
//!   [`crate::pricing::TokenKind::label`] (one definition each, next to their enums); this
//!   module's tests pin every value, so renaming one fails here before it silently breaks a
//!   reader, a dashboard or an alert.
//! - An `outcome` names who failed. `client_error`, `budget_rejected` and `gateway_overloaded`
//!   (the client's fault, a budget refusal, the gateway's own overload) say nothing about the
//!   backend: a reader counts them neither as its requests nor as its errors
//!   ([`crate::policy::Outcome::counts_for_health`]), so they never eject it.
//! - Only the samples in [`READ_BY_CONTROLLER`] drive decisions. The other `tollgate_*` families
//!   and the OpenTelemetry gen_ai families ([`gen_ai`]) are for people, dashboards and alerts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Family: upstream attempts by route, backend, provider, model and outcome (counter).
pub const REQUESTS: &str = "tollgate_requests";
/// Sample of [`REQUESTS`].
pub const REQUESTS_TOTAL: &str = "tollgate_requests_total";
/// Family: exact spend in integer nano-USD, the floor of the exact pico-dollar total (counter).
pub const COST_NANOUSD: &str = "tollgate_cost_nanousd";
/// Sample of [`COST_NANOUSD`].
pub const COST_NANOUSD_TOTAL: &str = "tollgate_cost_nanousd_total";
/// Family: duration of each upstream attempt, seconds (histogram).
pub const REQUEST_DURATION: &str = "tollgate_request_duration_seconds";
/// `_sum` sample of [`REQUEST_DURATION`].
pub const REQUEST_DURATION_SUM: &str = "tollgate_request_duration_seconds_sum";
/// `_count` sample of [`REQUEST_DURATION`].
pub const REQUEST_DURATION_COUNT: &str = "tollgate_request_duration_seconds_count";
/// Family: the revision of the config document being served (info metric).
pub const CONFIG_REVISION: &str = "tollgate_config_revision";
/// Sample of [`CONFIG_REVISION`].
pub const CONFIG_REVISION_INFO: &str = "tollgate_config_revision_info";

/// Family: tokens billed, by kind (counter; read by the controller for the achieved
/// prompt-cache share of `Cheapest`).
pub const TOKENS: &str = "tollgate_tokens";
/// Sample of [`TOKENS`].
pub const TOKENS_TOTAL: &str = "tollgate_tokens_total";
/// Family: spend in USD as a float for humans (counter; not read by the controller).
pub const COST_USD: &str = "tollgate_cost_usd";
/// Family: successful answers whose usage could not be read, by reason (counter).
pub const USAGE_MISSING: &str = "tollgate_usage_missing";
/// Estimated spend (nano-USD) of the answers counted in [`USAGE_MISSING`]: written by the gateway,
/// not exact, kept apart from [`COST_NANOUSD`].
pub const COST_ESTIMATED_NANOUSD: &str = "tollgate_cost_estimated_nanousd";
/// Family: config documents refused (counter).
pub const CONFIG_RELOAD_ERRORS: &str = "tollgate_config_reload_errors";
/// Family: time from sending a streaming request to its first chunk, seconds (histogram).
pub const TIME_TO_FIRST_TOKEN: &str = "tollgate_time_to_first_token_seconds";

/// Family: latency of each successful upstream attempt as health sees it: time to the first
/// chunk for a streamed answer, total duration otherwise (histogram with the bounds
/// [`LATENCY_BOUNDS_MS`], counted exactly by the gateway's meter).
pub const HEALTH_LATENCY: &str = "tollgate_health_latency_seconds";
/// `_bucket` sample of [`HEALTH_LATENCY`] (cumulative counts, label [`LE`]).
pub const HEALTH_LATENCY_BUCKET: &str = "tollgate_health_latency_seconds_bucket";
/// Upper bounds of the [`HEALTH_LATENCY`] buckets, milliseconds, increasing; a last `+Inf`
/// bucket follows. Latency budgets are compared at this granularity.
pub const LATENCY_BOUNDS_MS: [u64; 15] =
    [5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 120_000, 300_000];
/// Number of [`HEALTH_LATENCY`] buckets: the bounds plus `+Inf`.
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;

/// The samples the controller reads; everything else in an exposition is ignored by it.
pub const READ_BY_CONTROLLER: [&str; 7] = [
    REQUESTS_TOTAL,
    COST_NANOUSD_TOTAL,
    TOKENS_TOTAL,
    REQUEST_DURATION_SUM,
    REQUEST_DURATION_COUNT,
    HEALTH_LATENCY_BUCKET,
    CONFIG_REVISION_INFO,
];

/// Label: ModelRoute name.
pub const ROUTE: &str = "route";
/// Label: backend name inside the route.
pub const BACKEND: &str = "backend";
/// Label: provider of the backend.
pub const PROVIDER: &str = "provider";
/// Label: upstream model id of the backend.
pub const MODEL: &str = "model";
/// Label of [`REQUESTS`]: an [`crate::policy::Outcome::label`].
pub const OUTCOME: &str = "outcome";
/// Label of [`TOKENS`]: a [`crate::pricing::TokenKind::label`].
pub const KIND: &str = "kind";
/// Label of [`USAGE_MISSING`]: why usage was missing.
pub const REASON: &str = "reason";
/// Label of [`CONFIG_REVISION`]: the revision served.
pub const REVISION: &str = "revision";
/// Label of a histogram bucket: its upper bound in seconds, or `+Inf`.
pub const LE: &str = "le";

/// The index in [`LATENCY_BOUNDS_MS`] (or [`LATENCY_BOUNDS_MS`]`.len()` for `+Inf`) of a
/// bucket's `le` label value, as the gateway writes it (`0.005`, `1.0`, `+Inf`) or as
/// Prometheus returns it (`1`); `None` for a bound that is not one of ours.
pub fn latency_bucket_index(le: &str) -> Option<usize> {
    if le == "+Inf" {
        return Some(LATENCY_BOUNDS_MS.len());
    }
    let secs: f64 = le.parse().ok()?;
    if !secs.is_finite() || secs <= 0.0 {
        return None;
    }
    // A bound is a whole number of milliseconds: compare at micro-second precision.
    let us = (secs * 1_000_000.0).round();
    LATENCY_BOUNDS_MS.iter().position(|ms| (*ms as f64) * 1000.0 == us)
}

/// Identity of one metered series: route + backend, with the provider and upstream model the
/// backend had when it served (a reload may change them). The gateway's meter keys its cells
/// with it (`gateway::MeterKey` is this type) and readers rebuild it from the four labels.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SeriesKey {
    /// Route (ModelRoute name).
    pub route: String,
    /// Backend name inside the route.
    pub backend: String,
    /// Provider name.
    pub provider: String,
    /// Upstream model id.
    pub model: String,
}

impl SeriesKey {
    /// Builds a key.
    pub fn new(
        route: impl Into<String>,
        backend: impl Into<String>,
        provider: impl Into<String>,
        model: impl Into<String>,
    ) -> Self {
        Self { route: route.into(), backend: backend.into(), provider: provider.into(), model: model.into() }
    }

    /// The four series labels, in exposition order.
    pub fn labels(&self) -> [(&'static str, &str); 4] {
        [(ROUTE, &self.route), (BACKEND, &self.backend), (PROVIDER, &self.provider), (MODEL, &self.model)]
    }

    /// The key of a sample's labels: `None` without `route` or `backend`; a missing `provider`
    /// or `model` reads as empty (a gateway always writes all four).
    pub fn from_labels(labels: &BTreeMap<String, String>) -> Option<Self> {
        Some(Self {
            route: labels.get(ROUTE)?.clone(),
            backend: labels.get(BACKEND)?.clone(),
            provider: labels.get(PROVIDER).cloned().unwrap_or_default(),
            model: labels.get(MODEL).cloned().unwrap_or_default(),
        })
    }
}

/// The OpenTelemetry gen_ai semantic-convention families the gateway also exposes (semantic
/// conventions v1.37.0 and later, GenAI at "Development" status: `gen_ai.provider.name`, not the
/// deprecated `gen_ai.system`). Prometheus names: dots become underscores and the unit is a
/// suffix (`s` → `_seconds`; the annotation `{token}` adds none). Not read by the controller.
pub mod gen_ai {
    /// `gen_ai.client.token.usage` (histogram, `{token}`).
    pub const CLIENT_TOKEN_USAGE: &str = "gen_ai_client_token_usage";
    /// `gen_ai.client.operation.duration` (histogram, `s`).
    pub const CLIENT_OPERATION_DURATION: &str = "gen_ai_client_operation_duration_seconds";
    /// `gen_ai.server.time_to_first_token` (histogram, `s`).
    pub const SERVER_TIME_TO_FIRST_TOKEN: &str = "gen_ai_server_time_to_first_token_seconds";
    /// Spend in USD with the gen_ai attributes (counter). Not in the convention, which defines
    /// no cost metric; hence tollgate's prefix.
    pub const COST_USD: &str = "tollgate_gen_ai_cost_usd";

    /// Attribute `gen_ai.operation.name`.
    pub const OPERATION_NAME: &str = "gen_ai_operation_name";
    /// Attribute `gen_ai.provider.name`.
    pub const PROVIDER_NAME: &str = "gen_ai_provider_name";
    /// Attribute `gen_ai.request.model`.
    pub const REQUEST_MODEL: &str = "gen_ai_request_model";
    /// Attribute `gen_ai.token.type`.
    pub const TOKEN_TYPE: &str = "gen_ai_token_type";
    /// Attribute `error.type`.
    pub const ERROR_TYPE: &str = "error_type";

    /// `gen_ai.token.type` of input tokens (uncached + cached + cache-write: the convention
    /// counts every input token).
    pub const TOKEN_INPUT: &str = "input";
    /// `gen_ai.token.type` of output tokens (visible + reasoning).
    pub const TOKEN_OUTPUT: &str = "output";
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Outcome;
    use crate::pricing::TokenKind;

    #[test]
    fn sample_names_are_family_names_plus_their_suffix() {
        assert_eq!(REQUESTS_TOTAL, format!("{REQUESTS}_total"));
        assert_eq!(COST_NANOUSD_TOTAL, format!("{COST_NANOUSD}_total"));
        assert_eq!(REQUEST_DURATION_SUM, format!("{REQUEST_DURATION}_sum"));
        assert_eq!(REQUEST_DURATION_COUNT, format!("{REQUEST_DURATION}_count"));
        assert_eq!(CONFIG_REVISION_INFO, format!("{CONFIG_REVISION}_info"));
        assert_eq!(HEALTH_LATENCY_BUCKET, format!("{HEALTH_LATENCY}_bucket"));
        assert_eq!(TOKENS_TOTAL, format!("{TOKENS}_total"));
    }

    #[test]
    fn bucket_bounds_read_back_from_le_labels() {
        assert!(LATENCY_BOUNDS_MS.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(latency_bucket_index("0.005"), Some(0));
        assert_eq!(latency_bucket_index("1.0"), Some(7));
        assert_eq!(latency_bucket_index("1"), Some(7));
        assert_eq!(latency_bucket_index("2.5"), Some(8));
        assert_eq!(latency_bucket_index("300.0"), Some(14));
        assert_eq!(latency_bucket_index("+Inf"), Some(15));
        assert_eq!(latency_bucket_index("0.2"), None);
        assert_eq!(latency_bucket_index("NaN"), None);
        assert_eq!(latency_bucket_index("-1"), None);
    }

    #[test]
    fn label_values_are_pinned() {
        let outcomes: Vec<&str> = Outcome::ALL.iter().map(|o| o.label()).collect();
        assert_eq!(
            outcomes,
            [
                "ok",
                "client_error",
                "rate_limited",
                "upstream_error",
                "timeout",
                "connect_error",
                "budget_rejected",
                "gateway_overloaded"
            ]
        );
        for o in Outcome::ALL {
            assert_eq!(Outcome::from_label(o.label()), Some(o));
        }
        let kinds: Vec<&str> = TokenKind::ALL.iter().map(|k| k.label()).collect();
        assert_eq!(kinds, ["input", "cached_input", "cache_write", "cache_write_1h", "output", "reasoning"]);
    }

    #[test]
    fn series_key_round_trips_through_labels() {
        let k = SeriesKey::new("chat", "a", "openai", "gpt-5");
        let labels: BTreeMap<String, String> =
            k.labels().iter().map(|(n, v)| ((*n).to_string(), (*v).to_string())).collect();
        assert_eq!(SeriesKey::from_labels(&labels), Some(k));
        assert_eq!(SeriesKey::from_labels(&BTreeMap::from([(ROUTE.to_string(), "chat".to_string())])), None);
    }
}
