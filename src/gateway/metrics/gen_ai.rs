//! OpenTelemetry gen_ai semantic-convention metrics on the gateway's `/metrics`, beside the
//! `tollgate_*` families (which stay as they are: the controller reads those).
//!
//! Convention followed: OpenTelemetry semantic conventions v1.37.0 and later (GenAI metrics at
//! "Development" status), which name the provider `gen_ai.provider.name` (v1.36.0 and earlier
//! said `gen_ai.system`). Prometheus spelling: dots become underscores, the unit `s` becomes the
//! suffix `_seconds`, the annotation `{token}` adds nothing.
//!
//! | family | type | from | attributes |
//! |---|---|---|---|
//! | `gen_ai_client_token_usage` | histogram, buckets 1, 4, 16 … 4^13 | each answer whose usage was billed, once per token type | operation, provider, request model, `gen_ai_token_type` |
//! | `gen_ai_client_operation_duration_seconds` | histogram, buckets 0.01 … 81.92 (×2) | each upstream attempt, as `tollgate_request_duration_seconds` | operation, provider, request model, `error_type` when it failed |
//! | `gen_ai_server_time_to_first_token_seconds` | histogram, buckets 0.001 … 10 | each streaming answer's first chunk, as `tollgate_time_to_first_token_seconds` | operation, provider, request model |
//! | `tollgate_gen_ai_cost_usd_total` | counter (not in the convention) | exact spend of billed answers, rendered as a float at scrape | operation, provider, request model |
//!
//! Attribute values:
//! - `gen_ai_operation_name`: `chat` (`/v1/chat/completions` and `/v1/responses`),
//!   `text_completion` (`/v1/completions`), `embeddings` (`/v1/embeddings`).
//! - `gen_ai_provider_name`: the backend's `provider` as configured (name providers with the
//!   convention's well-known values, `openai`, `anthropic`, `aws.bedrock` …, to line up with
//!   other instrumentations).
//! - `gen_ai_request_model`: the upstream model id the gateway sent (the backend's `model`), not
//!   the route alias the client asked for.
//! - `gen_ai_token_type`: `input` = uncached + cached + cache-write input, `output` = visible +
//!   reasoning output (the convention counts every billed token of each direction; tollgate's
//!   kinds are disjoint parts of these). The cached and reasoning parts are in
//!   `tollgate_tokens_total{kind}`: the convention version followed defines only `input` and
//!   `output`, and extra types in the same histogram would be counted twice by a sum over types.
//!   Embeddings record no `output`.
//! - `error_type`: the outcome label of a failed attempt (`rate_limited`, `upstream_error`,
//!   `timeout`, `connect_error`, `client_error`); absent on success.
//! - `gen_ai.response.model` (Recommended) is not emitted: the gateway does not read the model
//!   field of answers. `server.address`/`server.port` are not emitted (cardinality, and the
//!   backend is already identified by `tollgate_*`'s `backend` label).
//!
//! Cardinality is bounded by configuration: every attribute value comes from a configured
//! backend (provider, model) or a fixed list (operations, token types, outcomes), never from a
//! request. The series of a (provider, model) no backend has any more leave with the last
//! tollgate series of that pair ([`GenAi::remove`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::gateway::request::Endpoint;
use crate::policy::Outcome;
use crate::policy::money::{Money, PICOS_PER_USD};
use crate::pricing::TokenCounts;
use crate::signals::contract::gen_ai as names;

/// Labels of one gen_ai series: name/value pairs in exposition order.
type Labels = Vec<(&'static str, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;
/// A spend series: (operation, provider, request model).
type CostKey = (&'static str, String, String);

// Bucket boundaries: the ones each metric's convention text recommends.
fn token_histogram() -> Histogram {
    Histogram::new([
        1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
        67108864.0,
    ])
}

fn duration_histogram() -> Histogram {
    Histogram::new([0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92])
}

fn ttft_histogram() -> Histogram {
    Histogram::new([0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0])
}

/// `gen_ai.operation.name` of an endpoint.
pub(crate) fn operation_name(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::ChatCompletions | Endpoint::Responses | Endpoint::Messages => "chat",
        Endpoint::Completions => "text_completion",
        Endpoint::Embeddings => "embeddings",
    }
}

/// The gen_ai families of one gateway.
#[derive(Debug)]
pub(crate) struct GenAi {
    tokens: HistogramFamily,
    duration: HistogramFamily,
    ttft: HistogramFamily,
    /// Exact spend per (operation, provider, request model).
    /// Spend per (operation, provider, model): one shared cell per series, which every backend
    /// with those labels adds to.
    cost: Mutex<BTreeMap<CostKey, Arc<Mutex<Money>>>>,
}

impl GenAi {
    /// Registers the families (and the cost collector) in `registry`.
    pub(crate) fn register(registry: &mut Registry) -> Arc<GenAi> {
        let g = Arc::new(GenAi {
            tokens: Family::new_with_constructor(token_histogram),
            duration: Family::new_with_constructor(duration_histogram),
            ttft: Family::new_with_constructor(ttft_histogram),
            cost: Mutex::new(BTreeMap::new()),
        });
        registry.register(
            names::CLIENT_TOKEN_USAGE,
            "Number of input and output tokens used (OpenTelemetry gen_ai.client.token.usage)",
            g.tokens.clone(),
        );
        registry.register(
            names::CLIENT_OPERATION_DURATION,
            "GenAI operation duration (OpenTelemetry gen_ai.client.operation.duration)",
            g.duration.clone(),
        );
        registry.register(
            names::SERVER_TIME_TO_FIRST_TOKEN,
            "Time to the first chunk of streaming answers (OpenTelemetry gen_ai.server.time_to_first_token)",
            g.ttft.clone(),
        );
        registry.register_collector(Box::new(CostCollector(g.clone())));
        g
    }

    /// Drops every series of `provider` and `model` (once no backend has them: no handle of
    /// theirs is used again).
    pub(crate) fn remove(&self, provider: &str, model: &str) {
        let mut ops: Vec<&'static str> = Endpoint::ALL.iter().map(|e| operation_name(*e)).collect();
        ops.dedup();
        for op in ops {
            let base: Labels = vec![
                (names::OPERATION_NAME, op.to_string()),
                (names::PROVIDER_NAME, provider.to_string()),
                (names::REQUEST_MODEL, model.to_string()),
            ];
            let with = |k: &'static str, v: &str| {
                let mut l = base.clone();
                l.push((k, v.to_string()));
                l
            };
            self.duration.remove(&base);
            self.ttft.remove(&base);
            for o in Outcome::ALL.iter().filter(|o| **o != Outcome::Ok) {
                self.duration.remove(&with(names::ERROR_TYPE, o.label()));
            }
            for t in [names::TOKEN_INPUT, names::TOKEN_OUTPUT] {
                self.tokens.remove(&with(names::TOKEN_TYPE, t));
            }
        }
        let mut costs = self.cost.lock().unwrap_or_else(PoisonError::into_inner);
        costs.retain(|(_, p, m), _| !(p == provider && m == model));
    }
}

/// Per endpoint ([`Endpoint::index`]): a series handle, taken from its family at first use.
type PerEndpoint<T> = [OnceLock<T>; Endpoint::ALL.len()];

/// The gen_ai instruments of one backend (its provider and upstream model). The series of the
/// request path (token usage, successful durations, time to first token, spend) are looked up
/// in their families once, at their first use, and kept: a request formats no label and
/// hashes no label set. Failed durations (one series per error type) are looked up each time.
#[derive(Clone, Debug)]
pub(crate) struct GenAiBackend {
    families: Arc<GenAi>,
    provider: String,
    model: String,
    series: Arc<Series>,
}

#[derive(Debug, Default)]
struct Series {
    input_tokens: PerEndpoint<Histogram>,
    output_tokens: PerEndpoint<Histogram>,
    duration_ok: PerEndpoint<Histogram>,
    ttft: PerEndpoint<Histogram>,
    cost: PerEndpoint<Arc<Mutex<Money>>>,
}

impl GenAiBackend {
    pub(crate) fn new(families: Arc<GenAi>, provider: &str, model: &str) -> Self {
        Self { families, provider: provider.to_string(), model: model.to_string(), series: Arc::default() }
    }

    fn labels(&self, endpoint: Endpoint) -> Labels {
        vec![
            (names::OPERATION_NAME, operation_name(endpoint).to_string()),
            (names::PROVIDER_NAME, self.provider.clone()),
            (names::REQUEST_MODEL, self.model.clone()),
        ]
    }

    fn histogram(
        &self,
        slot: &PerEndpoint<Histogram>,
        family: &HistogramFamily,
        endpoint: Endpoint,
        extra: Option<(&'static str, &str)>,
    ) -> Histogram {
        slot[endpoint.index()]
            .get_or_init(|| {
                let mut labels = self.labels(endpoint);
                if let Some((k, v)) = extra {
                    labels.push((k, v.to_string()));
                }
                family.get_or_create(&labels).clone()
            })
            .clone()
    }

    /// One upstream attempt ended with `outcome` after `seconds`.
    pub(crate) fn duration(&self, endpoint: Endpoint, outcome: Outcome, seconds: f64) {
        if outcome == Outcome::Ok {
            self.histogram(&self.series.duration_ok, &self.families.duration, endpoint, None).observe(seconds);
            return;
        }
        let mut labels = self.labels(endpoint);
        labels.push((names::ERROR_TYPE, outcome.label().to_string()));
        self.families.duration.get_or_create(&labels).observe(seconds);
    }

    /// A streaming answer's first chunk came after `seconds`.
    pub(crate) fn time_to_first_token(&self, endpoint: Endpoint, seconds: f64) {
        self.histogram(&self.series.ttft, &self.families.ttft, endpoint, None).observe(seconds);
    }

    /// An answer's usage was billed: `tokens` for `cost`.
    pub(crate) fn usage(&self, endpoint: Endpoint, tokens: &TokenCounts, cost: Money) {
        let input = tokens.prompt();
        let output = tokens.output.saturating_add(tokens.reasoning);
        let s = &self.series;
        let tokens_family = &self.families.tokens;
        // Token counts as histogram samples: exact below 2^53.
        self.histogram(&s.input_tokens, tokens_family, endpoint, Some((names::TOKEN_TYPE, names::TOKEN_INPUT)))
            .observe(input as f64);
        if endpoint != Endpoint::Embeddings {
            self.histogram(&s.output_tokens, tokens_family, endpoint, Some((names::TOKEN_TYPE, names::TOKEN_OUTPUT)))
                .observe(output as f64);
        }
        let cell = s.cost[endpoint.index()].get_or_init(|| {
            let mut costs = self.families.cost.lock().unwrap_or_else(PoisonError::into_inner);
            costs.entry((operation_name(endpoint), self.provider.clone(), self.model.clone())).or_default().clone()
        });
        *cell.lock().unwrap_or_else(PoisonError::into_inner) += cost;
    }
}

#[derive(Debug)]
struct CostCollector(Arc<GenAi>);

impl Collector for CostCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let costs = self.0.cost.lock().unwrap_or_else(PoisonError::into_inner).clone();
        if costs.is_empty() {
            return Ok(());
        }
        let mut fam = encoder.encode_descriptor(
            names::COST_USD,
            "Spend in USD by gen_ai operation, provider and request model (float for humans, from the exact total)",
            None,
            MetricType::Counter,
        )?;
        for ((op, provider, model), m) in &costs {
            let m = *m.lock().unwrap_or_else(PoisonError::into_inner);
            let usd = m.picos() as f64 / PICOS_PER_USD as f64;
            let labels = [
                (names::OPERATION_NAME, *op),
                (names::PROVIDER_NAME, provider.as_str()),
                (names::REQUEST_MODEL, model.as_str()),
            ];
            ConstCounter::new(usd).encode(fam.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "gen_ai_tests.rs"]
mod tests;
