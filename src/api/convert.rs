//! The adapter edge between the custom resources and the Kubernetes-free policy core.
//!
//! Rules: an object's key is its namespace (`default` when a manifest names none) and its name
//! (empty when missing; validation reports that separately). A route or budget becomes a
//! policy input carrying its key, `metadata.generation` and a copy of its spec; nothing else of
//! the Kubernetes object (labels, status, owner references) reaches the core.

use crate::api::{ModelRoute, ProviderBudget};
use crate::policy::{BudgetInput, ObjectKey, RouteInput};

impl ObjectKey {
    /// The key of any Kubernetes object (namespace defaults to `default`). Defined here, at the
    /// edge, so that `policy` itself never names a Kubernetes type.
    pub fn of<K: kube::Resource>(obj: &K) -> Self {
        object_key(obj)
    }
}

/// The key of any Kubernetes object (namespace defaults to `default`).
pub fn object_key<K: kube::Resource>(obj: &K) -> ObjectKey {
    let meta = obj.meta();
    ObjectKey::new(meta.namespace.clone().unwrap_or_else(|| "default".into()), meta.name.clone().unwrap_or_default())
}

/// A ModelRoute as the policy sees it.
pub fn route_input(r: &ModelRoute) -> RouteInput {
    RouteInput { key: object_key(r), generation: r.metadata.generation, spec: r.spec.clone() }
}

/// A ProviderBudget as the policy sees it.
pub fn budget_input(b: &ProviderBudget) -> BudgetInput {
    BudgetInput { key: object_key(b), generation: b.metadata.generation, spec: b.spec.clone() }
}

/// Every route as a policy input, in the same order.
pub fn route_inputs(routes: &[ModelRoute]) -> Vec<RouteInput> {
    routes.iter().map(route_input).collect()
}

/// Every budget as a policy input, in the same order.
pub fn budget_inputs(budgets: &[ProviderBudget]) -> Vec<BudgetInput> {
    budgets.iter().map(budget_input).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_carry_key_generation_and_spec() {
        let r: ModelRoute = serde_json::from_value(serde_json::json!({
            "apiVersion": "tollgate.dev/v1alpha1", "kind": "ModelRoute",
            "metadata": {"name": "chat", "generation": 4},
            "spec": {"backends": [{"name": "a", "provider": "openai", "model": "m", "pricing": {"input": "1", "output": "1"}}]}
        }))
        .unwrap();
        let input = route_input(&r);
        assert_eq!(input.key, ObjectKey::new("default", "chat"));
        assert_eq!(input.generation, Some(4));
        assert_eq!(input.spec, r.spec);
        assert_eq!(input.alias(), r.alias());
        assert_eq!(ObjectKey::of(&r), input.key);
    }
}
