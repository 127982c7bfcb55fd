//! The status step: each object's status as the plan decided it, plus what only the adapter
//! knows (how many gateways serve the namespace's current revision; a budget's per-gateway
//! checkpoints), server-side applied under the status field manager. A status that differs
//! from the stored one only in fields that move with time alone (burn rate, projected
//! exhaustion) is not written, nor one written within the write grace and not yet seen.
//! Writes are paced ([`WritePace`]: `Settings::status_writes_per_second` after a burst of
//! `status_write_burst`), so thousands of routes changing at once reach the API server at a
//! bounded rate (the pass waits; nothing is dropped).

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use kube::Resource;
use kube::api::{Api, Patch, PatchParams};
use kube::core::DeserializeGuard;
use serde_json::{Value, json};

use super::engine::{Engine, uid_of};
use super::error::Error;
use crate::api::{GatewaySync, ModelRoute, ProviderBudget, StatusCondition};
use crate::plan::Plan;
use crate::policy::ObjectKey;
use crate::signals::{GatewayTarget, nanousd_decimal};

/// API version of the tollgate kinds.
const API_VERSION: &str = "tollgate.dev/v1alpha1";

/// Fields a status may change with time alone; a difference in only these is not written.
const VOLATILE: [&str; 2] = ["burnRatePerHour", "projectedExhaustion"];

fn strip_volatile(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        for k in VOLATILE {
            m.remove(k);
        }
    }
    v
}

fn to_value<T: serde::Serialize>(v: &T, what: &str) -> Result<Value, Error> {
    serde_json::to_value(v).map_err(|source| Error::Serialize { what: what.into(), source })
}

/// A client-side rate of writes (GCRA: a burst, then one write per interval).
#[derive(Debug)]
pub(crate) struct WritePace {
    interval: Option<std::time::Duration>,
    burst: std::time::Duration,
    /// Theoretical arrival time of the next write.
    tat: Option<tokio::time::Instant>,
}

impl WritePace {
    /// `(per_second, burst)`; a rate of 0 is unbounded.
    pub(crate) fn new((per_second, burst): (u32, u32)) -> Self {
        let interval = (per_second > 0).then(|| std::time::Duration::from_secs(1) / per_second);
        let burst = interval.map(|i| i.saturating_mul(burst.max(1))).unwrap_or_default();
        Self { interval, burst, tat: None }
    }

    /// Waits until one more write fits the rate.
    pub(crate) async fn take(&mut self) {
        let Some(interval) = self.interval else { return };
        let now = tokio::time::Instant::now();
        let tat = self.tat.map_or(now, |t| t.max(now));
        if let Some(wait_until) = tat.checked_sub(self.burst).filter(|t| *t > now) {
            tokio::time::sleep_until(wait_until).await;
        }
        self.tat = Some(tat + interval);
    }
}

impl Engine {
    /// Writes a status when it differs from the stored one; `Ok(Some(..))` when written.
    async fn write_status<K>(
        &mut self,
        obj: &DeserializeGuard<K>,
        kind: &'static str,
        current: Option<Value>,
        desired: Value,
        now: Timestamp,
    ) -> Result<Option<String>, Error>
    where
        K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let uid = uid_of(obj);
        if current.as_ref().is_some_and(|c| strip_volatile(c) == strip_volatile(&desired))
            || self.recently(self.written.get(&uid), &desired, now)
        {
            return Ok(None);
        }
        let meta = obj.meta();
        let (Some(ns), Some(name)) = (meta.namespace.clone(), meta.name.clone()) else {
            return Ok(None);
        };
        let body = json!({
            "apiVersion": API_VERSION,
            "kind": kind,
            "metadata": {"name": name},
            "status": desired,
        });
        self.status_pace.take().await;
        let api: Api<DeserializeGuard<K>> = Api::namespaced(self.ctx.client.clone(), &ns);
        let pp = PatchParams::apply(&self.ctx.settings.status_field_manager).force();
        let patch = Patch::Apply(&body);
        self.retrying(|| api.patch_status(&name, &pp, &patch)).await.map_err(|e| Error::ApplyStatus {
            source: Box::new(e),
            kind,
            namespace: ns.clone(),
            name: name.clone(),
        })?;
        self.written.insert(uid, (desired, now));
        Ok(Some(format!("{kind} {ns}/{name}")))
    }

    /// Writes a route's status: the plan's, plus how many gateways serve its revision.
    pub(super) async fn route_status(
        &mut self,
        g: &DeserializeGuard<ModelRoute>,
        plan: &Plan,
        targets: &[GatewayTarget],
        revisions: &BTreeMap<String, String>,
        now: Timestamp,
    ) -> Result<Option<String>, Error> {
        let key = ObjectKey::of(g);
        let Some(mut status) = plan.route_statuses.get(&key).cloned() else { return Ok(None) };
        let problem = plan.route_problems.get(&key);
        if let Some(rev) = revisions.get(&key.namespace).filter(|_| problem.is_none_or(|p| !p.blocking)) {
            let in_ns: Vec<&GatewayTarget> = targets.iter().filter(|t| t.namespace == key.namespace).collect();
            let in_sync =
                in_ns.iter().filter(|t| self.revisions.get(&t.uid).and_then(|r| r.as_deref()) == Some(rev)).count();
            status.gateways = Some(GatewaySync {
                in_sync: u32::try_from(in_sync).unwrap_or(u32::MAX),
                total: u32::try_from(in_ns.len()).unwrap_or(u32::MAX),
                config_revision: rev.clone(),
            });
        }
        let stored = g.0.as_ref().ok().and_then(|r| r.status.clone());
        let desired = to_value(&status, "ModelRoute status")?;
        let current = stored.map(|s| to_value(&s, "ModelRoute status")).transpose()?;
        self.write_status(g, "ModelRoute", current, desired, now).await
    }

    /// Writes a budget's status: the plan's, plus the per-gateway checkpoints.
    pub(super) async fn budget_status(
        &mut self,
        g: &DeserializeGuard<ProviderBudget>,
        plan: &Plan,
        existing: &BTreeSet<String>,
        now: Timestamp,
    ) -> Result<Option<String>, Error> {
        let key = ObjectKey::of(g);
        let Some(mut status) = plan.budget_statuses.get(&key).cloned() else { return Ok(None) };
        if let Ok(b) = &g.0
            && plan.decision.budgets.contains_key(&key)
        {
            status.checkpoints = self.checkpoints(b, &key, existing);
        }
        let stored = g.0.as_ref().ok().and_then(|b| b.status.clone());
        let desired = to_value(&status, "ProviderBudget status")?;
        let current = stored.map(|s| to_value(&s, "ProviderBudget status")).transpose()?;
        self.write_status(g, "ProviderBudget", current, desired, now).await
    }

    /// Conditions last written for an object (to keep `lastTransitionTime` of one that
    /// cannot be read, whose stored status the watch cannot show).
    pub(super) fn written_conditions<K: Resource>(&self, obj: &K) -> Vec<StatusCondition> {
        self.written
            .get(&uid_of(obj))
            .and_then(|(v, _)| v.get("conditions").cloned())
            .and_then(|c| serde_json::from_value(c).ok())
            .unwrap_or_default()
    }

    /// The budget's checkpoints: every gateway of its namespace read so far, plus restored ones
    /// not read again yet.
    fn checkpoints(
        &self,
        b: &ProviderBudget,
        key: &ObjectKey,
        existing: &BTreeSet<String>,
    ) -> Vec<crate::api::Checkpoint> {
        let mut out: BTreeMap<String, u64> = BTreeMap::new();
        for uid in self.tracker.known() {
            if let Some(n) = self.tracker.checkpoint(uid, &key.namespace, &b.spec.provider, &b.spec.models) {
                out.insert(uid.to_string(), n);
            }
        }
        for ((k, uid), n) in &self.pending {
            if k == key && existing.contains(uid) {
                out.entry(uid.clone()).or_insert(*n);
            }
        }
        out.into_iter().map(|(gateway, n)| crate::api::Checkpoint { gateway, counter: nanousd_decimal(n) }).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::WritePace;

    #[tokio::test(start_paused = true)]
    async fn writes_past_the_burst_are_paced() {
        let mut pace = WritePace::new((10, 5));
        let start = tokio::time::Instant::now();
        for _ in 0..5 {
            pace.take().await;
        }
        assert_eq!(start.elapsed(), std::time::Duration::ZERO, "the burst goes at once");
        for _ in 0..10 {
            pace.take().await;
        }
        // Ten more at ten per second: about one second (the clock is paused: exact).
        let elapsed = start.elapsed();
        assert!(
            elapsed >= std::time::Duration::from_millis(900) && elapsed <= std::time::Duration::from_millis(1100),
            "{elapsed:?}"
        );
        let mut free = WritePace::new((0, 0));
        let t = tokio::time::Instant::now();
        for _ in 0..1000 {
            free.take().await;
        }
        assert_eq!(t.elapsed(), std::time::Duration::ZERO);
    }
}
