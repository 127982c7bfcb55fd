//! One reconcile pass over everything in scope:
//! `snapshot → plan (validate → decide → build) → apply → status → events`.
//!
//! Many resources feed one ConfigMap per namespace and the policy is one function of all of
//! them, so the unit of work is the whole snapshot of the reflector stores, not one object. A
//! pass is cheap (the pure plan step plus a diff against the stores); it writes only what
//! differs: the ConfigMap and credentials Secret of a namespace when their content changed, a
//! status when something other than time changed, one Event per transition. Failed writes are
//! retried at once for conflicts and server errors, and again by the next pass (everything is
//! level-based, except Events, which wait in an outbox).
//!
//! A pass on a spec change plans only the namespaces whose inputs changed; a signal pass plans
//! all ([`super::scope`]), and also reads back the shards of each split config (they are not
//! watched), applying again any found missing or changed ([`super::apply`]): once per signal
//! interval per namespace, not on watch events (unless the last repair failed).
//!
//! This file holds the pass and the engine's memory (restore from statuses, signals); the steps
//! live beside it: [`super::plan`] (snapshot → plan input), [`super::apply`],
//! [`super::status`], [`super::events`], [`super::pods`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::Api;
use kube::core::{ApiResource, DeserializeGuard, DynamicObject};
use kube::runtime::events::Reporter;
use kube::{Client, Resource};
use serde_json::Value;
use tracing::{debug, info, warn};

use super::apply::{ConfigWrite, stored_revision};
use super::error::Error;
use super::events::PendingEvent;
use super::metrics::ControllerMetrics;
use super::plan::SnapshotObjects;
use super::pods::gateway_targets;
use super::restore;
use crate::api::validate::validate_value;
use crate::api::{ModelRoute, ProviderBudget};
use crate::config::{Stored, TooLarge};
use crate::plan::{Problem, Unreadable, ValidationCache, admit_cached, kind_name, plan_admitted};
use crate::policy::{DecisionState, ObjectKey, ObjectKind, Observations, Transition};
use crate::signals::{CheckpointSeed, GatewayTarget, Observed, Signals, Tracker};

pub use super::apply::MANAGED_BY;

/// What the controller writes and how.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Field manager of the ConfigMap and Secret applies.
    pub field_manager: String,
    /// Field manager of status applies (separate, so the user's spec never conflicts).
    pub status_field_manager: String,
    /// Name of the gateway ConfigMap in each namespace.
    pub configmap_name: String,
    /// Name of the credentials Secret in each namespace.
    pub credentials_secret: String,
    /// Name of the gateway pods' container port serving `/metrics`.
    pub metrics_port_name: String,
    /// Attempts of one write when the API answers 409, 429 or 5xx.
    pub retry_attempts: u32,
    /// Pause before the first retry (doubled each time).
    pub retry_backoff: Duration,
    /// How long a write is trusted while the watch has not shown it yet.
    pub write_grace: Duration,
    /// Status writes per second at most (0: unbounded), so that a namespace of thousands of
    /// routes changing at once never floods the API server; writes past the burst wait.
    pub status_writes_per_second: u32,
    /// Status writes allowed at once before the rate applies.
    pub status_write_burst: u32,
    /// Status writes sent at once (each waits for the API server's answer); 1 sends them one
    /// after the other, in order.
    pub status_writes_in_flight: usize,
    /// How long one pass waits for the pace of status writes: those that do not fit are sent,
    /// as decided, by the next passes (started at once), so that thousands of statuses to write
    /// never hold up the next signal pass. Writes about a transition go first.
    pub status_write_window: Duration,
    /// Name of the allowances ConfigMap (Hard budgets' grants) in each namespace with Hard budgets.
    pub allowances_configmap: String,
    /// Headroom every live gateway pod is topped up to at least, per Hard budget.
    pub hard_grant_floor: crate::policy::Money,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            field_manager: "tollgate-controller".into(),
            status_field_manager: "tollgate-controller-status".into(),
            configmap_name: crate::config::CONFIGMAP_NAME.into(),
            credentials_secret: crate::config::CREDENTIALS_SECRET.into(),
            metrics_port_name: "metrics".into(),
            retry_attempts: 3,
            retry_backoff: Duration::from_millis(200),
            write_grace: Duration::from_secs(30),
            status_writes_per_second: 50,
            status_write_burst: 100,
            status_writes_in_flight: 1,
            status_write_window: Duration::from_secs(5),
            allowances_configmap: crate::config::allowances::ALLOWANCES_CONFIGMAP.into(),
            hard_grant_floor: crate::policy::allowance::GrantPolicy::default().floor,
        }
    }
}

/// Shared by the engine, the runner and the HTTP server.
#[derive(Clone)]
pub struct Context {
    /// API client.
    pub client: Client,
    /// Who reports Events (controller name; instance = pod name).
    pub reporter: Reporter,
    /// Metrics.
    pub metrics: Arc<ControllerMetrics>,
    /// Settings.
    pub settings: Settings,
}

/// Everything the stores hold at the start of a pass.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// ModelRoutes (malformed ones included).
    pub routes: Vec<Arc<DeserializeGuard<ModelRoute>>>,
    /// ProviderBudgets (malformed ones included).
    pub budgets: Vec<Arc<DeserializeGuard<ProviderBudget>>>,
    /// Secrets in scope.
    pub secrets: Vec<Arc<Secret>>,
    /// Gateway pods (by the label selector).
    pub pods: Vec<Arc<Pod>>,
    /// Gateway ConfigMaps (by name).
    pub configmaps: Vec<Arc<ConfigMap>>,
}

/// What one pass did.
#[derive(Debug, Default)]
pub struct PassReport {
    /// Failures (the pass went on with the rest).
    pub errors: Vec<Error>,
    /// The policy's transitions.
    pub transitions: Vec<Transition>,
    /// Namespaces whose ConfigMap was applied.
    pub configs_applied: Vec<String>,
    /// Shard ConfigMaps (`namespace/name`) found missing or changed and applied again (signal
    /// passes check the shards of a split config whose index is in place).
    pub shards_repaired: Vec<String>,
    /// Namespaces whose credentials Secret was applied.
    pub secrets_applied: Vec<String>,
    /// Statuses written (`Kind namespace/name`).
    pub statuses_written: Vec<String>,
    /// Status writes left for the next passes (past `Settings::status_write_window`); the
    /// runner starts the next pass at once while there are some.
    pub statuses_deferred: usize,
    /// Events published.
    pub events_published: usize,
    /// Gateways read, by UID, with the revision they serve.
    pub gateways: BTreeMap<String, Option<String>>,
    /// Namespaces this pass planned (all on a signal pass; on a spec change, those whose
    /// inputs changed: [`super::scope`]).
    pub planned: Vec<String>,
    /// This replica was found not to hold the leader Lease (why): the pass stopped before its
    /// next write, and the runner steps down ([`super::fence`]).
    pub lost_lease: Option<String>,
}

/// The controller's memory between passes.
pub struct Engine {
    pub(super) ctx: Arc<Context>,
    pub(super) signals: Arc<dyn Signals>,
    pub(super) tracker: Tracker,
    pub(super) state: DecisionState,
    pub(super) restored_budgets: BTreeSet<ObjectKey>,
    pub(super) restored_routes: BTreeSet<ObjectKey>,
    /// Checkpoints of restored statuses whose gateway was not read yet: (budget, uid) → nano-USD.
    pub(super) pending: BTreeMap<(ObjectKey, String), u64>,
    /// Revision each gateway served when last read.
    pub(super) revisions: BTreeMap<String, Option<String>>,
    /// Last status written per object UID, and when.
    pub(super) written: BTreeMap<String, (Value, Timestamp)>,
    /// Last ConfigMap document (stored form) / credentials applied per namespace, and when.
    pub(super) applied_config: BTreeMap<String, (Stored, Timestamp)>,
    /// Stored form of each namespace's document, by revision (compressed once per revision).
    pub(super) encoded: BTreeMap<String, (String, Result<Stored, TooLarge>)>,
    /// Per namespace of the split form: the revision its shards were last written or checked
    /// for, and each shard's `resourceVersion` then ([`super::apply`]).
    pub(super) shard_versions: BTreeMap<String, (String, BTreeMap<String, String>)>,
    /// Whether a shard check was already refused (403) and warned about.
    pub(super) shard_check_forbidden: bool,
    /// Namespaces where applying a shard again failed: checked on every pass until it works.
    pub(super) shard_repair_failed: BTreeSet<String>,
    /// Namespaces whose config is not in the cluster, with the reason already announced.
    pub(super) config_failures: BTreeMap<String, &'static str>,
    pub(super) applied_secret: BTreeMap<String, (BTreeMap<String, Vec<u8>>, Timestamp)>,
    /// Problems of objects the Rust types cannot read, per UID and resourceVersion.
    pub(super) unreadable: BTreeMap<String, (String, Problem)>,
    /// Problems already announced by an Event, per object.
    pub(super) reported: BTreeMap<(ObjectKind, ObjectKey), String>,
    pub(super) outbox: VecDeque<PendingEvent>,
    /// Validation per object and generation.
    pub(super) validation: ValidationCache,
    /// Pace of status writes.
    pub(super) status_pace: super::status::WritePace,
    /// Fingerprint of each namespace's inputs at the last pass (`None`: plan everything next).
    pub(super) last_inputs: Option<BTreeMap<String, u64>>,
    /// Hard budgets' grants ([`super::hard`]).
    pub(super) hard: super::hard::HardMemory,
    /// The leader's write fence; `None` (tests, a single replica without election) writes
    /// unfenced.
    fence: Option<Arc<super::fence::Fence>>,
    /// Per namespace: the revision each route's entry has been in since it last changed
    /// ([`super::sync`]).
    pub(super) route_sync: BTreeMap<String, super::sync::NamespaceSync>,
    /// Status writes the last pass left (past the window), as decided then: the next pass
    /// sends them unless it plans their namespace again (then it decides them anew).
    pub(super) status_leftover: Vec<super::status::StatusWrite>,
    /// Objects about which a transition's status write was left: written first by the next.
    pub(super) status_urgent: BTreeSet<(&'static str, ObjectKey)>,
}

/// The UID of an object (namespace/name when it has none yet).
pub(super) fn uid_of<K: Resource>(o: &K) -> String {
    o.meta().uid.clone().unwrap_or_else(|| format!("{:?}/{:?}", o.meta().namespace, o.meta().name))
}

fn ctx_status_rate(ctx: &Context) -> (u32, u32) {
    (ctx.settings.status_writes_per_second, ctx.settings.status_write_burst)
}

impl Engine {
    /// A fresh engine (empty memory: it is rebuilt from statuses on the first pass).
    pub fn new(ctx: Arc<Context>, signals: Arc<dyn Signals>) -> Self {
        let status_pace = super::status::WritePace::new(ctx_status_rate(&ctx));
        Self {
            ctx,
            signals,
            tracker: Tracker::new(),
            state: DecisionState::default(),
            restored_budgets: BTreeSet::new(),
            restored_routes: BTreeSet::new(),
            pending: BTreeMap::new(),
            revisions: BTreeMap::new(),
            written: BTreeMap::new(),
            applied_config: BTreeMap::new(),
            encoded: BTreeMap::new(),
            shard_versions: BTreeMap::new(),
            shard_check_forbidden: false,
            shard_repair_failed: BTreeSet::new(),
            config_failures: BTreeMap::new(),
            applied_secret: BTreeMap::new(),
            reported: BTreeMap::new(),
            unreadable: BTreeMap::new(),
            outbox: VecDeque::new(),
            validation: ValidationCache::default(),
            status_pace,
            last_inputs: None,
            hard: super::hard::HardMemory::default(),
            fence: None,
            route_sync: BTreeMap::new(),
            status_leftover: Vec::new(),
            status_urgent: BTreeSet::new(),
        }
    }

    /// The policy's current memory.
    pub fn state(&self) -> &DecisionState {
        &self.state
    }
    /// Runs one pass. `collect` reads the gateways' signals first (each interval); without it
    /// the policy runs on no new observations (spec changes).
    /// Fences every later pass's writes with the leader's Lease.
    pub fn set_fence(&mut self, fence: Arc<super::fence::Fence>) {
        self.fence = Some(fence);
    }

    /// Whether the pass may go on writing; records why not in `report`.
    async fn may_write(&self, report: &mut PassReport) -> bool {
        let Some(fence) = &self.fence else {
            return true;
        };
        match fence.holds().await {
            super::fence::Held::Yes => true,
            super::fence::Held::Lost(why) => {
                report.lost_lease = Some(why);
                false
            }
            super::fence::Held::Unknown(why) => {
                report.errors.push(Error::Lease(why));
                false
            }
        }
    }

    /// A pass cut short by the fence: the next one plans everything again.
    fn fenced(&mut self, report: PassReport) -> PassReport {
        for e in &report.errors {
            self.ctx.metrics.failure(e.metric_label());
            warn!(error = %e, kind = e.metric_label(), "reconcile failure");
        }
        self.last_inputs = None;
        report
    }

    pub async fn pass(&mut self, snap: &Snapshot, now: Timestamp, collect: bool) -> PassReport {
        let _timer = self.ctx.metrics.time_pass();
        let mut report = PassReport::default();
        // A replica that woke from a pause decides nothing from its old memory.
        if !self.may_write(&mut report).await {
            return self.fenced(report);
        }
        // Statuses carry whole seconds; deciding on whole seconds keeps them comparable.
        let now = Timestamp::from_second(now.as_second()).unwrap_or(now);

        // Scope: every namespace on a signal pass, else only those whose inputs changed.
        let inputs = super::scope::namespace_inputs(snap);
        let scope = match (&self.last_inputs, collect) {
            (Some(before), false) => Some(super::scope::changed(before, &inputs)),
            _ => None,
        };
        self.last_inputs = Some(inputs);

        // Validate.
        let mut objects = SnapshotObjects::of(snap, &self.ctx.settings.configmap_name);
        let mut unreadable = self.unreadable(snap).await;
        let uids: BTreeSet<String> = snap
            .routes
            .iter()
            .map(|g| uid_of(g.as_ref()))
            .chain(snap.budgets.iter().map(|g| uid_of(g.as_ref())))
            .collect();
        self.unreadable.retain(|uid, _| uids.contains(uid));
        self.written.retain(|uid, _| uids.contains(uid));
        self.validation.retain(&uids);
        let admitted = admit_cached(&objects.routes, &objects.budgets, &unreadable, &mut self.validation);

        self.restore(&admitted.routes, &objects.budgets);
        let admitted = match &scope {
            Some(scope) => super::scope::restrict(scope, admitted, &mut unreadable, &mut objects),
            None => admitted,
        };

        // Signals.
        let (targets, existing) = gateway_targets(&snap.pods, &self.ctx.settings.metrics_port_name);
        self.tracker.retain(&existing);
        self.pending.retain(|(_, uid), _| existing.contains(uid));
        self.revisions.retain(|uid, _| existing.contains(uid));
        let observations = if collect {
            let observed = self.collect(&targets, &objects.budgets).await;
            report.gateways = observed.revisions.clone();
            observed.observations
        } else {
            Observations::default()
        };

        // Decide and build.
        let mut plan = plan_admitted(objects.input(&unreadable, &observations, &self.state, now), admitted);
        self.state = match &scope {
            Some(scope) => super::scope::merge_state(scope, &self.state, plan.decision.state.clone()),
            None => plan.decision.state.clone(),
        };
        for t in &plan.decision.transitions {
            self.ctx.metrics.transition(&t.reason);
            info!(kind = kind_name(t.kind), object = %t.object, reason = %t.reason, "{}", t.message);
        }

        // The writes: each group only while this replica still leads (reading the signals
        // may have taken long enough for the lease to pass on).
        if !self.may_write(&mut report).await {
            return self.fenced(report);
        }

        // Hard budgets' grants (signal passes only: they need this round's gauges), written
        // before the routing config, so that a gateway that loads a config also finds grants.
        let hard_errors = self.hard_pass(&objects.budgets, &targets).await;
        report.errors.extend(hard_errors);

        // Apply, per namespace. `revisions`: what the cluster holds (the new revision once
        // written; else the one the ConfigMap still holds), so statuses claim only that.
        let mut revisions: BTreeMap<String, String> = BTreeMap::new();
        let mut not_applied: BTreeMap<String, (&'static str, String)> = BTreeMap::new();
        for (ns, out) in &plan.namespaces {
            match &out.config {
                Ok(doc) => match self.apply_configmap(snap, ns, doc, now, collect).await {
                    Ok(written) => {
                        revisions.insert(ns.clone(), doc.revision.clone());
                        self.route_sync.entry(ns.clone()).or_default().observe(&doc.revision, Some(&doc.routes));
                        match written {
                            ConfigWrite::Written => report.configs_applied.push(ns.clone()),
                            ConfigWrite::Repaired(names) => {
                                report.shards_repaired.extend(names.into_iter().map(|n| format!("{ns}/{n}")));
                            }
                            ConfigWrite::Unchanged => {}
                        }
                    }
                    Err(e) => {
                        if let Some(why) = e.config_not_applied() {
                            not_applied.insert(ns.clone(), why);
                        }
                        if let Some(rev) = self.stored_config(snap, ns).and_then(|cm| stored_revision(&cm)) {
                            self.route_sync.entry(ns.clone()).or_default().observe(&rev, None);
                            revisions.insert(ns.clone(), rev);
                        }
                        report.errors.push(e);
                    }
                },
                Err(source) => report.errors.push(Error::BuildConfig { namespace: ns.clone(), source: source.clone() }),
            }
            match self.apply_secret(snap, ns, out.credentials.clone(), now).await {
                Ok(true) => report.secrets_applied.push(ns.clone()),
                Ok(false) => {}
                Err(e) => report.errors.push(e),
            }
        }
        if scope.is_none() {
            // The gauges describe every namespace: a partial pass leaves them as they are.
            self.ctx.metrics.observe_policy(&plan.decision, &objects.budgets, &revisions, &targets, &self.revisions);
            self.encoded.retain(|ns, _| plan.namespaces.contains_key(ns));
            self.shard_versions.retain(|ns, _| plan.namespaces.contains_key(ns));
            self.shard_repair_failed.retain(|ns| plan.namespaces.contains_key(ns));
            self.route_sync.retain(|ns, _| plan.namespaces.contains_key(ns));
        }
        self.config_outcomes(snap, &mut plan, &objects, &not_applied, scope.as_ref(), now);

        // Status.
        if !self.may_write(&mut report).await {
            return self.fenced(report);
        }
        let mut writes = Vec::new();
        for g in &snap.routes {
            match self.route_status(g, &plan, &targets, &revisions, now) {
                Ok(w) => writes.extend(w),
                Err(e) => report.errors.push(e),
            }
        }
        for g in &snap.budgets {
            match self.budget_status(g, &plan, &existing, now) {
                Ok(w) => writes.extend(w),
                Err(e) => report.errors.push(e),
            }
        }
        // Writes about a transition go first, this pass and the next ones until written.
        let mut urgent = std::mem::take(&mut self.status_urgent);
        urgent.extend(plan.decision.transitions.iter().map(|t| (kind_name(t.kind), t.object.clone())));
        // The last pass's leftovers, as decided then, for objects still there in namespaces
        // this pass did not plan (their inputs and, without signals, their gateways are the
        // same; a planned namespace's statuses were just decided anew).
        let leftover = std::mem::take(&mut self.status_leftover);
        writes.extend(
            leftover
                .into_iter()
                .filter(|w| uids.contains(w.uid()) && scope.as_ref().is_some_and(|s| !s.contains(w.namespace()))),
        );
        let (written, leftover, errors) = self.send_statuses(writes, &urgent, now).await;
        report.statuses_written = written;
        report.statuses_deferred = leftover.len();
        self.status_urgent = leftover.iter().map(|w| w.id()).filter(|d| urgent.contains(d)).collect();
        self.status_leftover = leftover;
        report.errors.extend(errors);

        // Events.
        // Problems already announced in namespaces this pass did not plan stay announced.
        let kept: Vec<((ObjectKind, ObjectKey), String)> = match &scope {
            Some(s) => self
                .reported
                .iter()
                .filter(|((_, k), _)| !s.contains(&k.namespace))
                .map(|(id, m)| (id.clone(), m.clone()))
                .collect(),
            None => Vec::new(),
        };
        self.queue_events(snap, &plan.decision.transitions, &plan.route_problems, &plan.budget_problems);
        self.reported.extend(kept);
        if !self.may_write(&mut report).await {
            return self.fenced(report);
        }
        let (published, errors) = self.publish_events().await;
        report.events_published = published;
        report.errors.extend(errors);

        for e in &report.errors {
            self.ctx.metrics.failure(e.metric_label());
            warn!(error = %e, kind = e.metric_label(), "reconcile failure");
        }
        if report.errors.is_empty() {
            self.ctx.metrics.success_at(u64::try_from(now.as_second()).unwrap_or(0));
        } else {
            // The next pass plans everything again (its writes are retried in full).
            self.last_inputs = None;
        }
        report.planned = scope.map_or_else(|| plan.namespaces.keys().cloned().collect(), |s| s.into_iter().collect());
        report.transitions = plan.decision.transitions;
        report
    }

    /// The objects of the snapshot the Rust types cannot read, each with why.
    async fn unreadable(&mut self, snap: &Snapshot) -> Vec<Unreadable> {
        let mut out = Vec::new();
        for g in &snap.routes {
            if let Err(e) = &g.0 {
                let problem = self.unreadable_problem(g.as_ref(), &e.error).await;
                out.push(self.unreadable_entry(ObjectKind::ModelRoute, g.as_ref(), problem));
            }
        }
        for g in &snap.budgets {
            if let Err(e) = &g.0 {
                let problem = self.unreadable_problem(g.as_ref(), &e.error).await;
                out.push(self.unreadable_entry(ObjectKind::ProviderBudget, g.as_ref(), problem));
            }
        }
        out
    }

    fn unreadable_entry<K: Resource>(&self, kind: ObjectKind, obj: &K, problem: Problem) -> Unreadable {
        Unreadable {
            kind,
            key: ObjectKey::of(obj),
            generation: obj.meta().generation,
            problem,
            previous: self.written_conditions(obj),
        }
    }

    /// Why an object the Rust type cannot read is invalid, naming the fields: the raw object
    /// is fetched once per resourceVersion and validated like a manifest.
    async fn unreadable_problem<K>(&mut self, obj: &DeserializeGuard<K>, error: &str) -> Problem
    where
        K: Resource<DynamicType = ()>,
    {
        let meta = obj.meta();
        let uid = uid_of(obj);
        let rv = meta.resource_version.clone().unwrap_or_default();
        if let Some((seen, p)) = self.unreadable.get(&uid)
            && *seen == rv
        {
            return p.clone();
        }
        let fallback = Problem::invalid("spec", &format!("cannot be read: {error}"));
        let (Some(ns), Some(name)) = (meta.namespace.as_deref(), meta.name.as_deref()) else {
            return fallback;
        };
        let api: Api<DynamicObject> = Api::namespaced_with(self.ctx.client.clone(), ns, &ApiResource::erase::<K>(&()));
        let problem = match api.get(name).await {
            Ok(raw) => serde_json::to_value(&raw)
                .ok()
                .and_then(|mut v| {
                    if let Some(m) = v.as_object_mut() {
                        m.remove("status");
                    }
                    validate_value(v).err()
                })
                .map(|fields| Problem::invalid_fields(&fields))
                .unwrap_or(fallback),
            Err(e) => {
                debug!(error = %e, "cannot fetch the unreadable object");
                fallback
            }
        };
        self.unreadable.insert(uid, (rv, problem.clone()));
        problem
    }

    /// Rebuilds the memory of resources seen for the first time from their status.
    fn restore(&mut self, routes: &[ModelRoute], budgets: &[ProviderBudget]) {
        let budget_keys: BTreeSet<ObjectKey> = budgets.iter().map(ObjectKey::of).collect();
        self.restored_budgets.retain(|k| budget_keys.contains(k));
        self.pending.retain(|(k, _), _| budget_keys.contains(k));
        for b in budgets {
            let key = ObjectKey::of(b);
            if !self.restored_budgets.insert(key.clone()) || self.state.budgets.contains_key(&key) {
                continue;
            }
            if let Some(m) = restore::budget_memory(b) {
                info!(budget = %key, spent = %m.spent, "restored budget window and spend from status");
                self.state.budgets.insert(key.clone(), m);
                for (uid, n) in restore::budget_checkpoints(b) {
                    self.pending.insert((key.clone(), uid), n);
                }
            }
        }
        let route_keys: BTreeSet<ObjectKey> = routes.iter().map(ObjectKey::of).collect();
        self.restored_routes.retain(|k| route_keys.contains(k));
        for r in routes {
            let key = ObjectKey::of(r);
            if !self.restored_routes.insert(key.clone()) || self.state.routes.contains_key(&key) {
                continue;
            }
            if let Some((memory, health)) = restore::route_memory(r) {
                debug!(route = %key, "restored route decisions from status");
                self.state.routes.insert(key, memory);
                self.state.backends.extend(health);
            }
        }
    }

    async fn collect(&mut self, targets: &[GatewayTarget], budgets: &[ProviderBudget]) -> Observed {
        let readings = self.signals.collect(targets).await;
        self.hard.readings =
            Some(readings.iter().filter_map(|(uid, r)| Some((uid.clone(), r.as_ref().ok()?.hard.clone()))).collect());
        let mut seeds: BTreeMap<String, Vec<CheckpointSeed>> = BTreeMap::new();
        for ((key, uid), n) in &self.pending {
            if self.tracker.knows(uid) {
                continue;
            }
            if let Some(b) = budgets.iter().find(|b| &ObjectKey::of(*b) == key) {
                seeds.entry(uid.clone()).or_default().push(CheckpointSeed {
                    provider: b.spec.provider.clone(),
                    models: b.spec.models.clone(),
                    nanousd: *n,
                });
            }
        }
        let observed = self.tracker.observe(targets, readings, &seeds);
        for uid in &observed.first_seen {
            self.pending.retain(|(_, u), _| u != uid);
        }
        for (uid, e) in &observed.unreadable {
            self.ctx.metrics.signal_errors.inc();
            warn!(gateway = %uid, error = %e, "cannot read gateway signals");
        }
        for uid in &observed.resets {
            info!(gateway = %uid, "gateway counters went down (gateway restarted): counting from zero");
        }
        self.ctx.metrics.gateways.set(i64::try_from(targets.len()).unwrap_or(i64::MAX));
        self.revisions.extend(observed.revisions.clone());
        observed
    }
}
