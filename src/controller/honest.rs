//! Honest status: a route's `Ready` says what reached the gateways, not what was decided.
//!
//! When a namespace's config document could not be written (the API server refused the
//! ConfigMap, e.g. 422 `Too long`, or the document is over the ceiling even compressed), every
//! route served by that document and every budget of the namespace (whose actions live in that
//! document) gets `Ready=False` with reason `ConfigNotApplied` or `ConfigTooLarge` and the
//! cause (the API server's message, clipped), replacing the policy's `Ready`. Objects already
//! invalid keep their own reason. One Warning Event per failure episode and namespace
//! (regarding the ConfigMap: a namespace of 10,000 routes gets one Event, not 10,000), none
//! while it repeats unchanged, one Normal `ConfigApplied` when a write succeeds again; the
//! statuses go back to the policy's `Ready` on that pass. Every failed write is counted in
//! `tollgate_controller_config_not_applied_total{reason}`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference};
use kube::runtime::events::{Event, EventType};
use tracing::{info, warn};

use super::engine::{Engine, Snapshot};
use super::plan::SnapshotObjects;
use crate::plan::{Plan, Problem, set_problem};
use crate::policy::ObjectKey;

impl Engine {
    /// The namespace's gateway ConfigMap in the store.
    pub(super) fn stored_config(&self, snap: &Snapshot, ns: &str) -> Option<Arc<ConfigMap>> {
        let name = self.ctx.settings.configmap_name.as_str();
        snap.configmaps
            .iter()
            .find(|cm| cm.metadata.namespace.as_deref() == Some(ns) && cm.metadata.name.as_deref() == Some(name))
            .cloned()
    }

    /// Applies the outcome of the config writes to the plan's statuses and queues the
    /// episode's Events. `failed`: namespace → (reason, message) of the failed writes.
    pub(super) fn config_outcomes(
        &mut self,
        snap: &Snapshot,
        plan: &mut Plan,
        objects: &SnapshotObjects,
        failed: &BTreeMap<String, (&'static str, String)>,
        scope: Option<&BTreeSet<String>>,
        now: Timestamp,
    ) {
        // Events: one per episode and namespace.
        for (ns, (reason, message)) in failed {
            self.ctx.metrics.config_not_applied(reason);
            warn!(namespace = %ns, reason, "{message}");
            if self.config_failures.get(ns) != Some(reason) {
                let event = Event {
                    type_: EventType::Warning,
                    reason: (*reason).into(),
                    note: Some(message.clone()),
                    action: "ApplyConfig".into(),
                    secondary: None,
                };
                let reference = self.config_reference(snap, ns);
                self.queue_event(event, reference, format!("ConfigMap {ns}/{}", self.ctx.settings.configmap_name));
            }
        }
        let recovered: Vec<String> = self
            .config_failures
            .keys()
            .filter(|ns| !failed.contains_key(*ns) && plan.config(ns).is_some())
            .cloned()
            .collect();
        for ns in recovered {
            info!(namespace = %ns, "gateway config written again");
            let event = Event {
                type_: EventType::Normal,
                reason: "ConfigApplied".into(),
                note: Some(format!("the gateway config of namespace {ns} is written again")),
                action: "ApplyConfig".into(),
                secondary: None,
            };
            let reference = self.config_reference(snap, &ns);
            self.queue_event(event, reference, format!("ConfigMap {ns}/{}", self.ctx.settings.configmap_name));
        }
        // A pass that planned only some namespaces keeps the episodes of the others open.
        self.config_failures.retain(|ns, _| scope.is_some_and(|s| !s.contains(ns)));
        self.config_failures.extend(failed.iter().map(|(ns, (reason, _))| (ns.clone(), *reason)));
        if failed.is_empty() {
            return;
        }

        // Statuses: the namespace's valid objects are not Ready.
        let problem = |ns: &str| {
            failed.get(ns).map(|(reason, message)| Problem {
                reason,
                message: message.clone(),
                blocking: false,
                ready: false,
            })
        };
        for r in &objects.routes {
            let key = ObjectKey::of(r);
            let Some(p) = problem(&key.namespace) else { continue };
            if plan.route_problems.get(&key).is_some_and(|x| x.blocking) {
                continue;
            }
            if let Some(status) = plan.route_statuses.get_mut(&key) {
                let previous = r.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
                set_problem(&mut status.conditions, &previous, &p, r.metadata.generation, now);
            }
        }
        for b in &objects.budgets {
            let key = ObjectKey::of(b);
            let Some(p) = problem(&key.namespace) else { continue };
            if plan.budget_problems.get(&key).is_some_and(|x| x.blocking) {
                continue;
            }
            if let Some(status) = plan.budget_statuses.get_mut(&key) {
                let previous = b.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
                set_problem(&mut status.conditions, &previous, &p, b.metadata.generation, now);
            }
        }
    }

    /// The Event's object: the namespace's gateway ConfigMap (it may not exist yet).
    fn config_reference(&self, snap: &Snapshot, ns: &str) -> ObjectReference {
        ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("ConfigMap".into()),
            namespace: Some(ns.to_string()),
            name: Some(self.ctx.settings.configmap_name.clone()),
            uid: self.stored_config(snap, ns).and_then(|cm| cm.metadata.uid.clone()),
            ..Default::default()
        }
    }
}
