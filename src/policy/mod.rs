//! The pure decision core.
//!
//! [`evaluate`] takes the routes, the budgets, what the gateways observed since the previous
//! evaluation, the previous decision state and `now`, and returns the effective backend table
//! of every route, the status of every resource, the transitions (each with its evidence) and
//! the next decision state. No I/O, no clock reads, no randomness: the controller and `local`
//! call the same function, and every rule is unit- and property-tested.
//!
//! Layout: [`evaluate`] (here) runs the rule modules in order: `budget` (windows, spend,
//! escalation), then per route `health` (ejection and ramp-up) and `routes` (the effective
//! table); `coverage` says which backends a budget covers, `common` holds the helpers they
//! share (clipping, conditions, time), `money` the exact numbers and durations. The rule
//! modules import `common` and the types here, never each other's internals, except `routes`
//! which reads the results of `budget` and `health`.
//!
//! The core knows no Kubernetes: its inputs are [`RouteInput`]/[`BudgetInput`] (a key, a
//! generation and the spec; `crate::api::convert` builds them from the custom resources),
//! its conditions and times are `crate::api::meta` types. `tests/layering.rs` keeps it so.

pub mod allowance;
pub mod budget;
pub mod cache_share;
#[cfg(test)]
mod clock_tests;
pub mod common;
pub mod coverage;
pub mod health;
pub mod latency;
pub mod money;
pub mod routes;
mod table;
#[cfg(test)]
pub mod testing;
pub mod window;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::api::{
    BackendState, Mode, ModelRouteSpec, ModelRouteStatus, OnExhausted, ProviderBudgetSpec, ProviderBudgetStatus,
    RouteState, Strategy, ThresholdAction,
};
use budget::BudgetEffect;
pub use common::{ConditionSpec, clip, merge_conditions};
pub use money::{Money, Ppm, PricePerMillion};

/// Namespace + name of a resource.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// Namespace (`default` when a manifest names none).
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// Builds a key.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self { namespace: namespace.into(), name: name.into() }
    }
}

/// One backend of one route.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendKey {
    /// Namespace of the route.
    pub namespace: String,
    /// Route name.
    pub route: String,
    /// Backend name inside the route.
    pub backend: String,
}

impl BackendKey {
    /// Builds a key.
    pub fn new(namespace: impl Into<String>, route: impl Into<String>, backend: impl Into<String>) -> Self {
        Self { namespace: namespace.into(), route: route.into(), backend: backend.into() }
    }
}

/// Spend is attributed by namespace, provider and upstream model id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpendKey {
    /// Namespace of the route that spent it.
    pub namespace: String,
    /// Provider name.
    pub provider: String,
    /// Upstream model id.
    pub model: String,
}

impl SpendKey {
    /// Builds a key.
    pub fn new(namespace: impl Into<String>, provider: impl Into<String>, model: impl Into<String>) -> Self {
        Self { namespace: namespace.into(), provider: provider.into(), model: model.into() }
    }
}

// Keys serialize as slash-joined strings so they can be JSON map keys (state files, status).
macro_rules! slash_key {
    ($t:ty, $n:literal, [$($f:ident),+]) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let parts: [&str; $n] = [$(&self.$f),+];
                f.write_str(&parts.join("/"))
            }
        }
        impl FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                let parts: Vec<&str> = s.split('/').collect();
                if parts.len() != $n || parts.iter().any(|p| p.is_empty()) {
                    return Err(format!("{s:?}: expected {} non-empty parts joined by '/'", $n));
                }
                let mut it = parts.into_iter();
                Ok(Self { $($f: it.next().unwrap_or_default().to_string()),+ })
            }
        }
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
slash_key!(ObjectKey, 2, [namespace, name]);
slash_key!(BackendKey, 3, [namespace, route, backend]);
slash_key!(SpendKey, 3, [namespace, provider, model]);

/// Outcome of one upstream attempt, as the gateway counts it (`outcome` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// 2xx with a usable body.
    Ok,
    /// 4xx other than 429: the client's fault, not the backend's.
    ClientError,
    /// 429 from upstream.
    RateLimited,
    /// 5xx or an unusable body from upstream.
    UpstreamError,
    /// No first byte in time, or the total time ran out.
    Timeout,
    /// Could not connect.
    ConnectError,
    /// Refused by tollgate because the budget is exhausted (never reached upstream).
    BudgetRejected,
    /// The gateway itself could not serve the answer (its memory budget of whole answers was
    /// full): the gateway's failure, not the backend's.
    GatewayOverloaded,
}

impl Outcome {
    /// Every outcome, in label order.
    pub const ALL: [Outcome; 8] = [
        Outcome::Ok,
        Outcome::ClientError,
        Outcome::RateLimited,
        Outcome::UpstreamError,
        Outcome::Timeout,
        Outcome::ConnectError,
        Outcome::BudgetRejected,
        Outcome::GatewayOverloaded,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::ClientError => "client_error",
            Outcome::RateLimited => "rate_limited",
            Outcome::UpstreamError => "upstream_error",
            Outcome::Timeout => "timeout",
            Outcome::ConnectError => "connect_error",
            Outcome::BudgetRejected => "budget_rejected",
            Outcome::GatewayOverloaded => "gateway_overloaded",
        }
    }

    /// Parses a metric label.
    pub fn from_label(s: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.label() == s)
    }

    /// Whether it counts against the backend's health (and toward its request count).
    /// Client errors, budget refusals and the gateway's own overload say nothing about the
    /// backend.
    pub fn counts_for_health(self) -> bool {
        !matches!(self, Outcome::ClientError | Outcome::BudgetRejected | Outcome::GatewayOverloaded)
    }

    /// Whether it is a health error.
    pub fn is_health_error(self) -> bool {
        matches!(self, Outcome::RateLimited | Outcome::UpstreamError | Outcome::Timeout | Outcome::ConnectError)
    }
}

/// What one backend did since the previous evaluation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendObservation {
    /// Attempts by outcome.
    pub outcomes: BTreeMap<Outcome, u64>,
    /// Sum of the latency of successful attempts, milliseconds.
    pub latency_ms_sum: u64,
    /// Number of successful attempts whose latency is in `latency_ms_sum`.
    pub latency_count: u64,
    /// Latency histogram of the successful attempts (time to first chunk of a stream, total
    /// duration otherwise): cumulative counts per bucket of
    /// `crate::signals::contract::LATENCY_BOUNDS_MS` then `+Inf`; empty when none was seen.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latency_le: Vec<u64>,
    /// Tokens billed, by kind (the achieved prompt-cache share of `Cheapest`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub tokens: crate::pricing::TokenCounts,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

impl BackendObservation {
    /// Attempts that count for health.
    pub fn requests(&self) -> u64 {
        self.outcomes.iter().filter(|(o, _)| o.counts_for_health()).map(|(_, n)| n).sum()
    }

    /// Health errors.
    pub fn errors(&self) -> u64 {
        self.outcomes.iter().filter(|(o, _)| o.is_health_error()).map(|(_, n)| n).sum()
    }
}

/// Everything observed since the previous evaluation (deltas, not totals).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observations {
    /// Per backend.
    pub backends: BTreeMap<BackendKey, BackendObservation>,
    /// Spend per namespace, provider and upstream model.
    pub spend: BTreeMap<SpendKey, Money>,
}

/// The decision state carried from one evaluation to the next (persisted by `local`, and by
/// the controller in memory plus ProviderBudget status). Everything the rules remember.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DecisionState {
    /// Per budget: window, spend, escalation, burn samples.
    #[serde(default)]
    pub budgets: BTreeMap<ObjectKey, budget::BudgetMemory>,
    /// Per backend: health phase, trips, error samples, latency.
    #[serde(default)]
    pub backends: BTreeMap<BackendKey, health::BackendHealth>,
    /// Per route: last table, conditions, last rotation.
    #[serde(default)]
    pub routes: BTreeMap<ObjectKey, routes::RouteMemory>,
}

/// One ModelRoute as the policy sees it (`crate::api::convert` builds it from the resource).
#[derive(Clone, Debug, PartialEq)]
pub struct RouteInput {
    /// Namespace and name.
    pub key: ObjectKey,
    /// `metadata.generation`, reported back as `observedGeneration`.
    pub generation: Option<i64>,
    /// The spec (the API contract, used as data).
    pub spec: ModelRouteSpec,
}

impl RouteInput {
    /// The alias clients send as `model`: `spec.model`, else the resource name.
    pub fn alias(&self) -> String {
        self.spec.model.clone().unwrap_or_else(|| self.key.name.clone())
    }
}

/// One ProviderBudget as the policy sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct BudgetInput {
    /// Namespace and name.
    pub key: ObjectKey,
    /// `metadata.generation`, reported back as `observedGeneration`.
    pub generation: Option<i64>,
    /// The spec.
    pub spec: ProviderBudgetSpec,
}

/// Inputs of one evaluation.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a> {
    /// Every ModelRoute in scope (already validated).
    pub routes: &'a [RouteInput],
    /// Every ProviderBudget in scope (already validated).
    pub budgets: &'a [BudgetInput],
    /// Deltas since the previous evaluation.
    pub observations: &'a Observations,
    /// State returned by the previous evaluation (default on the first).
    pub previous: &'a DecisionState,
    /// The evaluation time.
    pub now: Timestamp,
}

/// One row of a route's effective backend table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveBackend {
    /// Backend name (joins the route spec's backend).
    pub name: String,
    /// Tier after budget decisions (lower is preferred).
    pub tier: u32,
    /// Weight inside the tier (0 = only tried on failover, or never if not serving).
    pub weight: u32,
    /// Decided state.
    pub state: BackendState,
    /// Whether the gateway may send it traffic at all (false for Ejected and drained).
    pub serving: bool,
    /// Why, in a few words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Decision for one route.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteDecision {
    /// The alias clients send.
    pub alias: String,
    /// Strategy.
    pub strategy: Strategy,
    /// Mode.
    pub mode: Mode,
    /// onExhausted.
    pub on_exhausted: OnExhausted,
    /// Serving, Degraded or Rejecting.
    pub state: RouteState,
    /// What the gateway gets: the decided table in Enforce mode, the configured one in DryRun.
    pub table: Vec<EffectiveBackend>,
    /// What the policy decided (equal to `table` in Enforce mode).
    pub decided: Vec<EffectiveBackend>,
    /// Status to write (everything but `gateways`, which only the controller knows).
    pub status: ModelRouteStatus,
}

/// Decision for one budget.
#[derive(Clone, Debug, PartialEq)]
pub struct BudgetDecision {
    /// Provider.
    pub provider: String,
    /// The action in force this window, if any.
    pub action: Option<ThresholdAction>,
    /// Status to write (everything but `checkpoints`, which only the controller knows).
    pub status: ProviderBudgetStatus,
}

/// Kind of the resource a transition concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ObjectKind {
    /// A ModelRoute.
    ModelRoute,
    /// A ProviderBudget.
    ProviderBudget,
}

/// A change the policy made, with its evidence: one Event and one log line each.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// Resource kind.
    pub kind: ObjectKind,
    /// Resource.
    pub object: ObjectKey,
    /// CamelCase reason (`BudgetDeprioritized`, `BackendEjected`, `BackendRestored`, ...).
    pub reason: String,
    /// Human sentence with the evidence, under 1024 characters.
    pub message: String,
    /// Whether this is bad news (a Warning event) rather than Normal.
    pub warning: bool,
    /// Evidence as key/value pairs (spend, limit, percent, error rate, window...).
    pub evidence: BTreeMap<String, String>,
    /// When.
    pub time: Timestamp,
}

/// Everything one evaluation decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// Per route.
    pub routes: BTreeMap<ObjectKey, RouteDecision>,
    /// Per budget.
    pub budgets: BTreeMap<ObjectKey, BudgetDecision>,
    /// Changes, in a stable order.
    pub transitions: Vec<Transition>,
    /// State for the next evaluation.
    pub state: DecisionState,
}

/// Runs every rule once: budgets first, then each route (health, then table). Pure: same
/// inputs, same outputs. Transitions come budgets first (they cause route changes), then by
/// object; stable inside an object.
pub fn evaluate(inputs: Inputs<'_>) -> Decision {
    let mut transitions = Vec::new();
    let mut state = DecisionState::default();
    let mut budgets = BTreeMap::new();
    let mut effects: Vec<BudgetEffect> = Vec::new();
    for b in inputs.budgets {
        let ev = budget::evaluate_budget(b, inputs.observations, inputs.previous.budgets.get(&b.key), inputs.now);
        transitions.extend(ev.transitions);
        state.budgets.insert(b.key.clone(), ev.memory);
        budgets.insert(b.key.clone(), ev.decision);
        effects.push(ev.effect);
    }
    effects.sort_by(|a, b| a.key.cmp(&b.key));

    let mut routes = BTreeMap::new();
    // Routes are independent of each other: evaluated on every core, merged in input order.
    let evaluated = common::parallel_runs(inputs.routes, |run| {
        run.iter().map(|r| routes::evaluate_route(r, &effects, &inputs)).collect::<Vec<_>>()
    });
    for (r, ev) in inputs.routes.iter().zip(evaluated.into_iter().flatten()) {
        transitions.extend(ev.transitions);
        state.backends.extend(ev.health);
        state.routes.insert(r.key.clone(), ev.memory);
        routes.insert(r.key.clone(), ev.decision);
    }
    transitions.sort_by(|a, b| {
        let rank = |k: ObjectKind| u8::from(k != ObjectKind::ProviderBudget);
        rank(a.kind).cmp(&rank(b.kind)).then_with(|| a.object.cmp(&b.object))
    });
    Decision { routes, budgets, transitions, state }
}
