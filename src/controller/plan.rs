//! The plan glue: the reflector stores' snapshot → the input of the shared plan step
//! ([`crate::plan`]). Pure: the readable objects, the Secrets' data, and the namespaces whose
//! managed ConfigMap must be re-rendered even with no route left. Objects the Rust types cannot
//! read come from the engine (it fetches them raw to name the bad fields).

use std::collections::BTreeSet;

use jiff::Timestamp;

use super::apply::is_managed;
use super::engine::Snapshot;
use crate::api::{ModelRoute, ProviderBudget};
use crate::plan::{Plan, PlanInput, SecretData, Unreadable, plan};
use crate::policy::{DecisionState, ObjectKey, Observations};

/// What a snapshot gives the plan step, owned.
#[derive(Clone, Debug, Default)]
pub struct SnapshotObjects {
    /// Routes the Rust type could read.
    pub routes: Vec<ModelRoute>,
    /// Budgets the Rust type could read.
    pub budgets: Vec<ProviderBudget>,
    /// Data of the Secrets in the snapshot.
    pub secrets: SecretData,
    /// Namespaces holding a ConfigMap the controller manages.
    pub namespaces: BTreeSet<String>,
}

impl SnapshotObjects {
    /// Reads a snapshot; `configmap_name` is the gateway ConfigMap's name.
    pub fn of(snap: &Snapshot, configmap_name: &str) -> Self {
        let routes = snap.routes.iter().filter_map(|g| g.0.as_ref().ok().cloned()).collect();
        let budgets = snap.budgets.iter().filter_map(|g| g.0.as_ref().ok().cloned()).collect();
        let secrets = snap
            .secrets
            .iter()
            // Defence in depth: only opted-in Secrets, whatever the store holds.
            .filter(|s| {
                s.metadata.labels.as_ref().and_then(|l| l.get(crate::config::PROVIDER_KEY_LABEL)).map(String::as_str)
                    == Some("true")
            })
            .filter_map(|s| {
                let key = ObjectKey::new(s.metadata.namespace.clone()?, s.metadata.name.clone()?);
                let data = s.data.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())).collect();
                Some((key, data))
            })
            .collect();
        let namespaces = snap
            .configmaps
            .iter()
            .filter(|cm| is_managed(cm, configmap_name))
            .filter_map(|cm| cm.metadata.namespace.clone())
            .collect();
        Self { routes, budgets, secrets, namespaces }
    }

    /// The plan step's input (credentials resolved from the Secrets).
    pub fn input<'a>(
        &'a self,
        unreadable: &'a [Unreadable],
        observations: &'a Observations,
        previous: &'a DecisionState,
        now: Timestamp,
    ) -> PlanInput<'a> {
        PlanInput {
            routes: &self.routes,
            budgets: &self.budgets,
            unreadable,
            namespaces: &self.namespaces,
            secrets: Some(&self.secrets),
            observations,
            previous,
            now,
        }
    }
}

/// The controller's plan of a snapshot, as one pass makes it (without the memory restored
/// from statuses and the signals, which need the engine).
pub fn plan_snapshot(
    snap: &Snapshot,
    configmap_name: &str,
    unreadable: &[Unreadable],
    observations: &Observations,
    previous: &DecisionState,
    now: Timestamp,
) -> Plan {
    let objects = SnapshotObjects::of(snap, configmap_name);
    plan(objects.input(unreadable, observations, previous, now))
}
