//! Builders for policy unit tests: objects are built from manifests (as users write them).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use jiff::Timestamp;
use serde_json::{Value, json};

use super::{
    BackendKey, BackendObservation, Decision, DecisionState, Inputs, Money, Observations, Outcome, SpendKey,
    Transition, evaluate,
};
use crate::api::convert::{budget_inputs, route_inputs};
use crate::api::{Condition, ModelRoute, ProviderBudget};

/// A timestamp from RFC 3339.
pub fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

/// `t + secs`.
pub fn plus(ts: Timestamp, secs: i64) -> Timestamp {
    ts.checked_add(jiff::SignedDuration::from_secs(secs)).unwrap()
}

/// A backend entry (pricing 1/1 USD per 1M tokens).
pub fn backend(name: &str, provider: &str, weight: u32, priority: u32) -> Value {
    json!({
        "name": name, "provider": provider, "model": format!("{provider}-model"),
        "weight": weight, "priority": priority,
        "pricing": {"input": "1", "output": "1"}
    })
}

/// A ModelRoute in namespace `default` with `spec`.
pub fn route(name: &str, spec: Value) -> ModelRoute {
    route_in("default", name, spec)
}

/// A ModelRoute in `ns`.
pub fn route_in(ns: &str, name: &str, spec: Value) -> ModelRoute {
    serde_json::from_value(json!({
        "apiVersion": "tollgate.dev/v1alpha1", "kind": "ModelRoute",
        "metadata": {"name": name, "namespace": ns, "generation": 1},
        "spec": spec
    }))
    .unwrap()
}

/// A ProviderBudget in namespace `default`.
pub fn budget(name: &str, spec: Value) -> ProviderBudget {
    budget_in("default", name, spec)
}

/// A ProviderBudget in `ns`.
pub fn budget_in(ns: &str, name: &str, spec: Value) -> ProviderBudget {
    serde_json::from_value(json!({
        "apiVersion": "tollgate.dev/v1alpha1", "kind": "ProviderBudget",
        "metadata": {"name": name, "namespace": ns, "generation": 1},
        "spec": spec
    }))
    .unwrap()
}

/// Observations builder.
#[derive(Default, Clone)]
pub struct Obs(pub Observations);

impl Obs {
    pub fn new() -> Self {
        Self::default()
    }

    /// `ok` successes and `errors` upstream errors for a backend of a route in `default`.
    pub fn req(mut self, route: &str, backend: &str, ok: u64, errors: u64) -> Self {
        let o = self.0.backends.entry(BackendKey::new("default", route, backend)).or_default();
        *o.outcomes.entry(Outcome::Ok).or_default() += ok;
        *o.outcomes.entry(Outcome::UpstreamError).or_default() += errors;
        self
    }

    /// Latency of `count` successes averaging `mean_ms`.
    pub fn lat(mut self, route: &str, backend: &str, mean_ms: u64, count: u64) -> Self {
        let o: &mut BackendObservation = self.0.backends.entry(BackendKey::new("default", route, backend)).or_default();
        o.latency_ms_sum += mean_ms * count;
        o.latency_count += count;
        *o.outcomes.entry(Outcome::Ok).or_default() += count;
        self
    }

    /// Spend in `ns` for provider/model.
    pub fn spend_in(mut self, ns: &str, provider: &str, model: &str, usd: &str) -> Self {
        let m: Money = usd.parse().unwrap();
        *self.0.spend.entry(SpendKey::new(ns, provider, model)).or_default() += m;
        self
    }

    /// Spend in `default` for `provider`/`{provider}-model`.
    pub fn spend(self, provider: &str, usd: &str) -> Self {
        let model = format!("{provider}-model");
        self.spend_in("default", provider, &model, usd)
    }
}

/// Runs evaluations, carrying the state.
#[derive(Default)]
pub struct Sim {
    pub routes: Vec<ModelRoute>,
    pub budgets: Vec<ProviderBudget>,
    pub state: DecisionState,
}

impl Sim {
    pub fn new(routes: Vec<ModelRoute>, budgets: Vec<ProviderBudget>) -> Self {
        Self { routes, budgets, state: DecisionState::default() }
    }

    pub fn step(&mut self, now: Timestamp, obs: &Obs) -> Decision {
        let d = evaluate(Inputs {
            routes: &route_inputs(&self.routes),
            budgets: &budget_inputs(&self.budgets),
            observations: &obs.0,
            previous: &self.state,
            now,
        });
        self.state = d.state.clone();
        d
    }

    pub fn idle(&mut self, now: Timestamp) -> Decision {
        self.step(now, &Obs::new())
    }
}

/// Reasons of the transitions, in order.
pub fn reasons(d: &Decision) -> Vec<&str> {
    d.transitions.iter().map(|t| t.reason.as_str()).collect()
}

/// The first transition with `reason`.
pub fn find<'a>(d: &'a Decision, reason: &str) -> &'a Transition {
    d.transitions
        .iter()
        .find(|t| t.reason == reason)
        .unwrap_or_else(|| panic!("no {reason} transition in {:?}", reasons(d)))
}

/// Condition `type_` of a list.
pub fn cond<'a>(conds: &'a [Condition], type_: &str) -> &'a Condition {
    conds.iter().find(|c| c.type_ == type_).unwrap()
}
