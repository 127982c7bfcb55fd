//! The status step: each object's status as the plan decided it, plus what only the adapter
//! knows (how many gateways serve the namespace's current revision; a budget's per-gateway
//! checkpoints), server-side applied under the status field manager. A status that differs
//! from the stored one only in fields that move with time alone (burn rate, projected
//! exhaustion) is not written, nor one written within the write grace and not yet seen.
//! Writes are paced ([`WritePace`]: `Settings::status_writes_per_second` after a burst of
//! `status_write_burst`), so thousands of routes changing at once reach the API server at a
//! bounded rate, and sent with up to `Settings::status_writes_in_flight` at once (the pace, not
//! each write's round trip, bounds a pass). A pass waits for the pace at most
//! `Settings::status_write_window`: the writes left are not dropped but sent by the next
//! passes, which the runner starts at once, as decided, unless a pass plans their namespace
//! again (a spec change, a signal pass), which decides them anew. Writes about an object with
//! a transition go first, so a rotation's status is not queued behind thousands of first
//! writes. Results are taken in the order sent.

use std::collections::{BTreeMap, BTreeSet};

use std::sync::Arc;

use futures::StreamExt;
use jiff::Timestamp;
use kube::Resource;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::core::DeserializeGuard;
use serde_json::{Value, json};

use super::apply::retry_transient;
use super::engine::{Context, Engine, uid_of};
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
        // GCRA's tolerance: `burst` writes at once (the first needs none).
        let burst = interval.map(|i| i.saturating_mul(burst.max(1) - 1)).unwrap_or_default();
        Self { interval, burst, tat: None }
    }

    /// When one more write would fit the rate; `None`: now.
    pub(crate) fn ready_at(&self) -> Option<tokio::time::Instant> {
        self.interval?;
        let now = tokio::time::Instant::now();
        let tat = self.tat.map_or(now, |t| t.max(now));
        tat.checked_sub(self.burst).filter(|t| *t > now)
    }

    /// Waits until one more write fits the rate.
    pub(crate) async fn take(&mut self) {
        let Some(interval) = self.interval else { return };
        let now = tokio::time::Instant::now();
        if let Some(wait_until) = self.ready_at() {
            tokio::time::sleep_until(wait_until).await;
        }
        let tat = self.tat.map_or(now, |t| t.max(now));
        self.tat = Some(tat + interval);
    }
}

/// A status write a pass decided, not sent yet.
pub(super) struct StatusWrite {
    uid: String,
    kind: &'static str,
    resource: ApiResource,
    namespace: String,
    name: String,
    body: Value,
    desired: Value,
}

impl StatusWrite {
    /// Kind and key of the object.
    pub(super) fn id(&self) -> (&'static str, ObjectKey) {
        (self.kind, ObjectKey { namespace: self.namespace.clone(), name: self.name.clone() })
    }

    pub(super) fn uid(&self) -> &str {
        &self.uid
    }

    pub(super) fn namespace(&self) -> &str {
        &self.namespace
    }
}

/// Sends one status apply (retrying transient errors); gives the write back when done.
async fn send_status(ctx: Arc<Context>, w: StatusWrite) -> Result<StatusWrite, Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &w.namespace, &w.resource);
    let pp = PatchParams::apply(&ctx.settings.status_field_manager).force();
    let patch = Patch::Apply(&w.body);
    retry_transient(&ctx.settings, || api.patch_status(&w.name, &pp, &patch)).await.map_err(|e| {
        Error::ApplyStatus { source: Box::new(e), kind: w.kind, namespace: w.namespace.clone(), name: w.name.clone() }
    })?;
    Ok(w)
}

impl Engine {
    /// The status write of an object whose status differs from the stored one (and was not
    /// written within the write grace); `None` when there is nothing to write.
    fn status_write<K>(
        &self,
        obj: &DeserializeGuard<K>,
        kind: &'static str,
        current: Option<Value>,
        desired: Value,
        now: Timestamp,
    ) -> Option<StatusWrite>
    where
        K: Resource<DynamicType = ()>,
    {
        let uid = uid_of(obj);
        if current.as_ref().is_some_and(|c| strip_volatile(c) == strip_volatile(&desired))
            || self.recently(self.written.get(&uid), &desired, now)
        {
            return None;
        }
        let meta = obj.meta();
        let (Some(namespace), Some(name)) = (meta.namespace.clone(), meta.name.clone()) else {
            return None;
        };
        let body = json!({
            "apiVersion": API_VERSION,
            "kind": kind,
            "metadata": {"name": name},
            "status": desired,
        });
        Some(StatusWrite { uid, kind, resource: ApiResource::erase::<K>(&()), namespace, name, body, desired })
    }

    /// Sends the pass's status writes, paced ([`WritePace`]) and with at most
    /// `Settings::status_writes_in_flight` at once (one at a time is minutes for thousands of
    /// routes, since each write waits for the API server), those about an object with a
    /// transition (`urgent`: kind and key) first. Writes the pace would hold past
    /// `Settings::status_write_window` are left for the next passes. Returns what was written
    /// (`Kind namespace/name`, in the order sent), the writes left, and the failures.
    pub(super) async fn send_statuses(
        &mut self,
        mut writes: Vec<StatusWrite>,
        urgent: &BTreeSet<(&'static str, ObjectKey)>,
        now: Timestamp,
    ) -> (Vec<String>, Vec<StatusWrite>, Vec<Error>) {
        writes.sort_by_cached_key(|w| !urgent.contains(&w.id()));
        let in_flight = self.ctx.settings.status_writes_in_flight.max(1);
        let until = tokio::time::Instant::now() + self.ctx.settings.status_write_window;
        let mut pending = futures::stream::FuturesOrdered::new();
        let mut results = Vec::with_capacity(writes.len());
        let mut deferred = Vec::new();
        let mut writes = writes.into_iter();
        for w in writes.by_ref() {
            if self.status_pace.ready_at().is_some_and(|at| at > until) {
                deferred.push(w);
                break;
            }
            while pending.len() >= in_flight {
                if let Some(r) = pending.next().await {
                    results.push(r);
                }
            }
            self.status_pace.take().await;
            pending.push_back(send_status(self.ctx.clone(), w));
        }
        deferred.extend(writes);
        while let Some(r) = pending.next().await {
            results.push(r);
        }
        let (mut written, mut errors) = (Vec::new(), Vec::new());
        for r in results {
            match r {
                Ok(w) => {
                    written.push(format!("{} {}/{}", w.kind, w.namespace, w.name));
                    self.written.insert(w.uid, (w.desired, now));
                }
                Err(e) => errors.push(e),
            }
        }
        (written, deferred, errors)
    }

    /// A route's status write: the plan's, plus how many gateways serve its entry as decided:
    /// those serving the revision its entry last changed in, or a later one ([`super::sync`]),
    /// so that another route's change does not move this route's status.
    pub(super) fn route_status(
        &self,
        g: &DeserializeGuard<ModelRoute>,
        plan: &Plan,
        targets: &[GatewayTarget],
        revisions: &BTreeMap<String, String>,
        now: Timestamp,
    ) -> Result<Option<StatusWrite>, Error> {
        let key = ObjectKey::of(g);
        let Some(mut status) = plan.route_statuses.get(&key).cloned() else { return Ok(None) };
        let problem = plan.route_problems.get(&key);
        let sync = self.route_sync.get(&key.namespace).filter(|_| revisions.contains_key(&key.namespace));
        if let Some(sync) = sync.filter(|_| problem.is_none_or(|p| !p.blocking))
            && let Some(since) = sync.since(&key.name)
        {
            let in_ns: Vec<&GatewayTarget> = targets.iter().filter(|t| t.namespace == key.namespace).collect();
            let in_sync = in_ns
                .iter()
                .filter(|t| {
                    self.revisions.get(&t.uid).and_then(|r| r.as_deref()).is_some_and(|r| sync.serves(&key.name, r))
                })
                .count();
            status.gateways = Some(GatewaySync {
                in_sync: u32::try_from(in_sync).unwrap_or(u32::MAX),
                total: u32::try_from(in_ns.len()).unwrap_or(u32::MAX),
                config_revision: since.to_string(),
            });
        }
        let stored = g.0.as_ref().ok().and_then(|r| r.status.clone());
        let desired = to_value(&status, "ModelRoute status")?;
        let current = stored.map(|s| to_value(&s, "ModelRoute status")).transpose()?;
        Ok(self.status_write(g, "ModelRoute", current, desired, now))
    }

    /// A budget's status write: the plan's, plus the per-gateway checkpoints.
    pub(super) fn budget_status(
        &self,
        g: &DeserializeGuard<ProviderBudget>,
        plan: &Plan,
        existing: &BTreeSet<String>,
        now: Timestamp,
    ) -> Result<Option<StatusWrite>, Error> {
        let key = ObjectKey::of(g);
        let Some(mut status) = plan.budget_statuses.get(&key).cloned() else { return Ok(None) };
        if let Ok(b) = &g.0
            && plan.decision.budgets.contains_key(&key)
        {
            status.checkpoints = self.checkpoints(b, &key, existing);
            status.hard = super::hard::hard_status(&self.hard, b);
        }
        let stored = g.0.as_ref().ok().and_then(|b| b.status.clone());
        let desired = to_value(&status, "ProviderBudget status")?;
        let current = stored.map(|s| to_value(&s, "ProviderBudget status")).transpose()?;
        Ok(self.status_write(g, "ProviderBudget", current, desired, now))
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
