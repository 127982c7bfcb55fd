//! Effective backend tables: tiers, strategies, budget and health decisions combined.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Decision, EffectiveBackend, Inputs, ObjectKey, RouteDecision};
use crate::api::{BackendState, ModelRouteStatus, RouteState};

/// What a route remembers between evaluations.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteMemory {
    /// The table last decided.
    pub table: Vec<EffectiveBackend>,
}

/// Evaluates every route (placeholder: the configured table).
pub fn evaluate(inputs: Inputs<'_>) -> Decision {
    let mut routes = BTreeMap::new();
    for r in inputs.routes {
        let table: Vec<EffectiveBackend> = r
            .spec
            .backends
            .iter()
            .map(|b| EffectiveBackend {
                name: b.name.clone(),
                tier: b.priority,
                weight: b.weight,
                state: BackendState::Active,
                serving: true,
                reason: None,
            })
            .collect();
        routes.insert(
            ObjectKey::of(r),
            RouteDecision {
                alias: r.alias(),
                strategy: r.spec.strategy,
                mode: r.spec.mode,
                on_exhausted: r.spec.budget.on_exhausted,
                state: RouteState::Serving,
                decided: table.clone(),
                table,
                status: ModelRouteStatus::default(),
            },
        );
    }
    Decision { routes, budgets: BTreeMap::new(), transitions: vec![], state: inputs.previous.clone() }
}
