//! The pure decision core.
//!
//! [`evaluate`] takes the routes, the budgets, what the gateways observed since the previous
//! evaluation, the previous decision state and `now`, and returns the effective backend table
//! of every route, the status of every resource, the transitions (each with its evidence) and
//! the next decision state. No I/O, no clock reads, no randomness: the controller and `local`
//! call the same function, and every rule is unit- and property-tested.

pub mod budget;
pub mod health;
pub mod money;
pub mod routes;
#[cfg(test)]
pub mod testing;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::api::{
    BackendState, Mode, ModelRoute, ModelRouteStatus, OnExhausted, ProviderBudget, ProviderBudgetStatus, RouteState,
    Strategy, ThresholdAction,
};
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

    /// The key of any Kubernetes object (namespace defaults to `default`).
    pub fn of<K: kube::Resource>(obj: &K) -> Self {
        let meta = obj.meta();
        Self::new(meta.namespace.clone().unwrap_or_else(|| "default".into()), meta.name.clone().unwrap_or_default())
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
}

impl Outcome {
    /// Every outcome, in label order.
    pub const ALL: [Outcome; 7] = [
        Outcome::Ok,
        Outcome::ClientError,
        Outcome::RateLimited,
        Outcome::UpstreamError,
        Outcome::Timeout,
        Outcome::ConnectError,
        Outcome::BudgetRejected,
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
        }
    }

    /// Parses a metric label.
    pub fn from_label(s: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.label() == s)
    }

    /// Whether it counts against the backend's health (and toward its request count).
    /// Client errors and budget refusals say nothing about the backend.
    pub fn counts_for_health(self) -> bool {
        !matches!(self, Outcome::ClientError | Outcome::BudgetRejected)
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

/// Inputs of one evaluation.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a> {
    /// Every ModelRoute in scope (already validated).
    pub routes: &'a [ModelRoute],
    /// Every ProviderBudget in scope (already validated).
    pub budgets: &'a [ProviderBudget],
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

/// Desired condition before merge with the previous ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConditionSpec {
    /// Type.
    pub type_: &'static str,
    /// True / False / Unknown.
    pub status: bool,
    /// CamelCase reason.
    pub reason: String,
    /// Non-empty message (the 1.20 API server rejects empty strings).
    pub message: String,
}

/// Builds conditions from desired ones, keeping `lastTransitionTime` of a condition whose
/// status did not change (so status is not rewritten when only time passed).
pub fn merge_conditions(
    previous: &[Condition],
    desired: &[ConditionSpec],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    desired
        .iter()
        .map(|d| {
            let status = if d.status { "True" } else { "False" };
            let last = previous
                .iter()
                .find(|p| p.type_ == d.type_ && p.status == status)
                .map(|p| p.last_transition_time.clone())
                .unwrap_or(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now));
            Condition {
                type_: d.type_.to_string(),
                status: status.to_string(),
                reason: d.reason.clone(),
                message: if d.message.is_empty() { d.reason.clone() } else { d.message.clone() },
                last_transition_time: last,
                observed_generation: generation,
            }
        })
        .collect()
}

/// Runs every rule once. Pure: same inputs, same outputs.
pub fn evaluate(inputs: Inputs<'_>) -> Decision {
    routes::evaluate(inputs)
}
