//! Which namespaces a pass plans (the cost of a pass grows with what changed).
//!
//! Rules:
//! - A pass that reads signals (every `--signal-interval`) plans every namespace: observations
//!   and time (ejections ending, ramp-up stages, budget windows, forecasts) can change any of
//!   them. It is the periodic full pass.
//! - A pass triggered by a watch event (a spec change) plans only the namespaces whose inputs
//!   changed since the previous pass: a namespace's inputs are its ModelRoutes and
//!   ProviderBudgets (UID and generation; an object the Rust types cannot read, by
//!   resourceVersion), its opted-in Secrets and its gateway ConfigMap (by resourceVersion).
//!   Status writes change a resourceVersion but not a generation, so the controller's own
//!   status writes do not make a namespace "changed".
//! - The first pass, and any pass after one that failed, plans everything (a failed write is
//!   retried in full, as before).
//! - What a pass did not plan keeps its policy memory as it was; the policy gauges keep the
//!   values of the last full pass.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};

use kube::Resource;

use super::engine::Snapshot;
use crate::plan::{Admitted, Unreadable};
use crate::policy::DecisionState;

/// A fingerprint of each namespace's inputs.
pub(super) fn namespace_inputs(snap: &Snapshot) -> BTreeMap<String, u64> {
    let mut parts: BTreeMap<String, Vec<(u8, String, String)>> = BTreeMap::new();
    let mut add = |ns: Option<&String>, kind: u8, id: String, version: String| {
        parts.entry(ns.cloned().unwrap_or_default()).or_default().push((kind, id, version));
    };
    for g in &snap.routes {
        let m = g.meta();
        let version = match &g.0 {
            Ok(_) => format!("g{:?}", m.generation),
            Err(_) => format!("rv{:?}", m.resource_version),
        };
        add(m.namespace.as_ref(), 0, format!("{:?}/{:?}", m.uid, m.name), version);
    }
    for g in &snap.budgets {
        let m = g.meta();
        let version = match &g.0 {
            Ok(_) => format!("g{:?}", m.generation),
            Err(_) => format!("rv{:?}", m.resource_version),
        };
        add(m.namespace.as_ref(), 1, format!("{:?}/{:?}", m.uid, m.name), version);
    }
    for s in &snap.secrets {
        let m = &s.metadata;
        add(m.namespace.as_ref(), 2, format!("{:?}", m.name), format!("{:?}", m.resource_version));
    }
    for c in &snap.configmaps {
        let m = &c.metadata;
        add(m.namespace.as_ref(), 3, format!("{:?}", m.name), format!("{:?}", m.resource_version));
    }
    parts
        .into_iter()
        .map(|(ns, mut p)| {
            p.sort();
            let mut h = DefaultHasher::new();
            p.hash(&mut h);
            (ns, h.finish())
        })
        .collect()
}

/// The namespaces whose fingerprint differs between `before` and `now` (appeared, changed or
/// gone).
pub(super) fn changed(before: &BTreeMap<String, u64>, now: &BTreeMap<String, u64>) -> BTreeSet<String> {
    let mut out: BTreeSet<String> =
        now.iter().filter(|(ns, h)| before.get(*ns) != Some(*h)).map(|(ns, _)| ns.clone()).collect();
    out.extend(before.keys().filter(|ns| !now.contains_key(*ns)).cloned());
    out
}

/// Keeps, of what the plan step gets, only the namespaces in `scope`.
pub(super) fn restrict(
    scope: &BTreeSet<String>,
    admitted: Admitted,
    unreadable: &mut Vec<Unreadable>,
    objects: &mut super::plan::SnapshotObjects,
) -> Admitted {
    let Admitted { mut routes, mut route_problems, mut budget_problems } = admitted;
    let inside = |ns: &Option<String>| scope.contains(ns.as_deref().unwrap_or_default());
    routes.retain(|r| inside(&r.metadata.namespace));
    route_problems.retain(|k, _| scope.contains(&k.namespace));
    budget_problems.retain(|k, _| scope.contains(&k.namespace));
    unreadable.retain(|u| scope.contains(&u.key.namespace));
    objects.routes.retain(|r| inside(&r.metadata.namespace));
    objects.budgets.retain(|b| inside(&b.metadata.namespace));
    objects.secrets.retain(|k, _| scope.contains(&k.namespace));
    objects.namespaces.retain(|ns| scope.contains(ns));
    Admitted { routes, route_problems, budget_problems }
}

/// The policy memory after a pass that planned only `scope`: the plan's for those
/// namespaces, the previous one for the others.
pub(super) fn merge_state(scope: &BTreeSet<String>, previous: &DecisionState, planned: DecisionState) -> DecisionState {
    let mut out = planned;
    for (k, v) in &previous.budgets {
        if !scope.contains(&k.namespace) {
            out.budgets.insert(k.clone(), v.clone());
        }
    }
    for (k, v) in &previous.routes {
        if !scope.contains(&k.namespace) {
            out.routes.insert(k.clone(), v.clone());
        }
    }
    for (k, v) in &previous.backends {
        if !scope.contains(&k.namespace) {
            out.backends.insert(k.clone(), v.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_namespaces_are_the_ones_whose_fingerprint_moved() {
        let before = BTreeMap::from([("a".to_string(), 1), ("b".to_string(), 2), ("gone".to_string(), 3)]);
        let now = BTreeMap::from([("a".to_string(), 1), ("b".to_string(), 9), ("new".to_string(), 4)]);
        assert_eq!(changed(&before, &now), BTreeSet::from(["b".into(), "gone".into(), "new".into()]));
        assert!(changed(&now, &now).is_empty());
    }
}
