//! One reconcile pass over everything in scope:
//! `snapshot → validate → restore → signals → decide → render/apply → status → events`.
//!
//! Many resources feed one ConfigMap per namespace and the policy is one function of all of
//! them, so the unit of work is the whole snapshot of the reflector stores, not one object. A
//! pass is cheap (pure policy plus a diff against the stores); it writes only what differs:
//! the ConfigMap and credentials Secret of a namespace when their content changed, a status
//! when something other than time changed, one Event per transition. Failed writes are retried
//! at once for conflicts and server errors, and again by the next pass (everything is
//! level-based, except Events, which wait in an outbox).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, Patch, PatchParams};
use kube::core::{ApiResource, DeserializeGuard, DynamicObject};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use super::error::{Error, is_transient};
use super::metrics::ControllerMetrics;
use super::restore;
use crate::api::validate::validate_value;
use crate::api::{GatewaySync, ModelRoute, ModelRouteStatus, ProviderBudget, ProviderBudgetStatus, condition};
use crate::config::{CONFIG_KEY, ConfigError, GatewayConfig, credential_refs};
use crate::policy::{
    ConditionSpec, Decision, DecisionState, Inputs, ObjectKey, ObjectKind, Observations, Transition, evaluate,
    merge_conditions,
};
use crate::signals::{CheckpointSeed, GatewayTarget, Observed, Signals, Tracker, nanousd_decimal};

/// `app.kubernetes.io/managed-by` of the objects the controller writes.
pub const MANAGED_BY: &str = "tollgate-controller";
/// API version of the tollgate kinds.
const API_VERSION: &str = "tollgate.dev/v1alpha1";
/// Longest Event note (the API refuses 1024 bytes and more).
const MAX_NOTE: usize = 1000;
/// Attempts to publish one Event across passes.
const EVENT_ATTEMPTS: u32 = 5;

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
    /// Namespaces whose credentials Secret was applied.
    pub secrets_applied: Vec<String>,
    /// Statuses written (`Kind namespace/name`).
    pub statuses_written: Vec<String>,
    /// Events published.
    pub events_published: usize,
    /// Gateways read, by UID, with the revision they serve.
    pub gateways: BTreeMap<String, Option<String>>,
}

/// A problem with one resource, reported in its `Ready` condition.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Problem {
    reason: &'static str,
    message: String,
    /// The resource is left out of the config (invalid); otherwise it is served.
    blocking: bool,
    /// `Ready` stays True (a note, not a failure).
    ready: bool,
}

impl Problem {
    fn invalid(field: &str, message: &str) -> Self {
        Self { reason: "InvalidSpec", message: format!("{field}: {message}"), blocking: true, ready: false }
    }
}

struct PendingEvent {
    event: Event,
    reference: ObjectReference,
    object: String,
    attempts: u32,
}

/// The controller's memory between passes.
pub struct Engine {
    ctx: Arc<Context>,
    signals: Arc<dyn Signals>,
    tracker: Tracker,
    state: DecisionState,
    restored_budgets: BTreeSet<ObjectKey>,
    restored_routes: BTreeSet<ObjectKey>,
    /// Checkpoints of restored statuses whose gateway was not read yet: (budget, uid) → nano-USD.
    pending: BTreeMap<(ObjectKey, String), u64>,
    /// Revision each gateway served when last read.
    revisions: BTreeMap<String, Option<String>>,
    /// Last status written per object UID, and when.
    written: BTreeMap<String, (Value, Timestamp)>,
    /// Last ConfigMap document / credentials applied per namespace, and when.
    applied_config: BTreeMap<String, (String, Timestamp)>,
    applied_secret: BTreeMap<String, (BTreeMap<String, Vec<u8>>, Timestamp)>,
    /// Problems of objects the Rust types cannot read, per UID and resourceVersion.
    unreadable: BTreeMap<String, (String, Problem)>,
    /// Problems already announced by an Event, per object.
    reported: BTreeMap<(ObjectKind, ObjectKey), String>,
    outbox: VecDeque<PendingEvent>,
}

fn kind_name(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::ModelRoute => "ModelRoute",
        ObjectKind::ProviderBudget => "ProviderBudget",
    }
}

/// Cuts a note to fewer than 1024 bytes on a character boundary.
pub fn clip_note(s: &str) -> String {
    if s.len() <= MAX_NOTE {
        return s.to_string();
    }
    let mut cut = MAX_NOTE - 3;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}...", &s[..cut])
}

fn uid_of<K: Resource>(o: &K) -> String {
    o.meta().uid.clone().unwrap_or_else(|| format!("{:?}/{:?}", o.meta().namespace, o.meta().name))
}

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

/// Sets the `Ready` condition a problem with the object calls for.
fn set_problem(
    conditions: &mut Vec<Condition>,
    previous: &[Condition],
    p: &Problem,
    generation: Option<i64>,
    now: Timestamp,
) {
    let ready = ConditionSpec {
        type_: condition::READY,
        status: p.ready,
        reason: p.reason.into(),
        message: clip_note(&p.message),
    };
    set_ready(conditions, previous, &ready, generation, now);
}

/// Replaces the `Ready` condition, keeping `lastTransitionTime` when its status did not move.
fn set_ready(
    conditions: &mut Vec<Condition>,
    previous: &[Condition],
    ready: &ConditionSpec,
    generation: Option<i64>,
    now: Timestamp,
) {
    let merged = merge_conditions(previous, std::slice::from_ref(ready), generation, now);
    conditions.retain(|c| c.type_ != condition::READY);
    conditions.splice(0..0, merged);
}

/// Gateway pods that can be read, and the UIDs of every gateway pod that exists.
pub fn gateway_targets(pods: &[Arc<Pod>], port_name: &str) -> (Vec<GatewayTarget>, BTreeSet<String>) {
    let mut targets = Vec::new();
    let mut existing = BTreeSet::new();
    for pod in pods {
        let Some(uid) = pod.metadata.uid.clone() else { continue };
        existing.insert(uid.clone());
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let status = pod.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let Some(ip) = status.and_then(|s| s.pod_ip.clone()).filter(|ip| !ip.is_empty()) else { continue };
        if !ready {
            continue;
        }
        let port = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(port_name))
            .map(|p| p.container_port);
        targets.push(GatewayTarget {
            uid,
            namespace: pod.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
            name: pod.metadata.name.clone().unwrap_or_default(),
            address: port.map(|p| crate::signals::scrape::socket_address(&ip, p)),
        });
    }
    targets.sort();
    (targets, existing)
}

impl Engine {
    /// A fresh engine (empty memory: it is rebuilt from statuses on the first pass).
    pub fn new(ctx: Arc<Context>, signals: Arc<dyn Signals>) -> Self {
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
            applied_secret: BTreeMap::new(),
            reported: BTreeMap::new(),
            unreadable: BTreeMap::new(),
            outbox: VecDeque::new(),
        }
    }

    /// The policy's current memory.
    pub fn state(&self) -> &DecisionState {
        &self.state
    }

    /// Runs one pass. `collect` reads the gateways' signals first (each interval); without it
    /// the policy runs on no new observations (spec changes).
    pub async fn pass(&mut self, snap: &Snapshot, now: Timestamp, collect: bool) -> PassReport {
        let _timer = self.ctx.metrics.time_pass();
        // Statuses carry whole seconds; deciding on whole seconds keeps them comparable.
        let now = Timestamp::from_second(now.as_second()).unwrap_or(now);
        let mut report = PassReport::default();

        // Validate.
        let mut route_problems: BTreeMap<ObjectKey, Problem> = BTreeMap::new();
        let mut budget_problems: BTreeMap<ObjectKey, Problem> = BTreeMap::new();
        let mut routes: Vec<ModelRoute> = Vec::new();
        for g in &snap.routes {
            let key = ObjectKey::of(g.as_ref());
            match &g.0 {
                Err(e) => {
                    let p = self.unreadable_problem(g.as_ref(), &e.error).await;
                    route_problems.insert(key, p);
                }
                Ok(r) => match validate(r) {
                    Some(p) => {
                        route_problems.insert(key, p);
                    }
                    None => routes.push(r.clone()),
                },
            }
        }
        duplicate_aliases(&routes, &mut route_problems);
        routes.retain(|r| !route_problems.contains_key(&ObjectKey::of(r)));
        let mut budgets: Vec<ProviderBudget> = Vec::new();
        for g in &snap.budgets {
            let key = ObjectKey::of(g.as_ref());
            match &g.0 {
                Err(e) => {
                    let p = self.unreadable_problem(g.as_ref(), &e.error).await;
                    budget_problems.insert(key, p);
                }
                Ok(b) => {
                    // A budget keeps counting spend even when its spec is invalid (no money
                    // is lost); the policy reports what it cannot evaluate.
                    if let Some(p) = validate(b) {
                        budget_problems.insert(key, p);
                    }
                    budgets.push(b.clone());
                }
            }
        }

        let uids: BTreeSet<String> = snap
            .routes
            .iter()
            .map(|g| uid_of(g.as_ref()))
            .chain(snap.budgets.iter().map(|g| uid_of(g.as_ref())))
            .collect();
        self.unreadable.retain(|uid, _| uids.contains(uid));
        self.written.retain(|uid, _| uids.contains(uid));

        self.restore(&routes, &budgets);

        // Signals.
        let (targets, existing) = gateway_targets(&snap.pods, &self.ctx.settings.metrics_port_name);
        self.tracker.retain(&existing);
        self.pending.retain(|(_, uid), _| existing.contains(uid));
        self.revisions.retain(|uid, _| existing.contains(uid));
        let observations = if collect {
            let observed = self.collect(&targets, &budgets).await;
            report.gateways = observed.revisions.clone();
            observed.observations
        } else {
            Observations::default()
        };

        // Decide.
        let decision = evaluate(Inputs {
            routes: &routes,
            budgets: &budgets,
            observations: &observations,
            previous: &self.state,
            now,
        });
        self.state = decision.state.clone();
        for t in &decision.transitions {
            self.ctx.metrics.transition(&t.reason);
            info!(kind = kind_name(t.kind), object = %t.object, reason = %t.reason, "{}", t.message);
        }

        // Render and apply, per namespace.
        let mut namespaces: BTreeSet<String> =
            snap.routes.iter().map(|g| ObjectKey::of(g.as_ref()).namespace).collect();
        namespaces.extend(
            snap.configmaps
                .iter()
                .filter(|cm| self.is_managed(cm.as_ref()))
                .filter_map(|cm| cm.metadata.namespace.clone()),
        );
        let mut revisions: BTreeMap<String, String> = BTreeMap::new();
        for ns in &namespaces {
            let mut served: Vec<ModelRoute> =
                routes.iter().filter(|r| &ObjectKey::of(*r).namespace == ns).cloned().collect();
            let doc = build_config(ns, &mut served, &decision, &mut route_problems, &mut report.errors);
            if let Some(doc) = doc {
                revisions.insert(ns.clone(), doc.revision.clone());
                match self.apply_configmap(snap, ns, &doc, now).await {
                    Ok(true) => report.configs_applied.push(ns.clone()),
                    Ok(false) => {}
                    Err(e) => report.errors.push(e),
                }
            }
            let data = credentials(snap, ns, &served, &mut route_problems);
            match self.apply_secret(snap, ns, data, now).await {
                Ok(true) => report.secrets_applied.push(ns.clone()),
                Ok(false) => {}
                Err(e) => report.errors.push(e),
            }
        }
        unused_budgets(&budgets, &routes, &mut budget_problems);

        // Status.
        for g in &snap.routes {
            match self.route_status(g, &decision, &route_problems, &targets, &revisions, now).await {
                Ok(Some(w)) => report.statuses_written.push(w),
                Ok(None) => {}
                Err(e) => report.errors.push(e),
            }
        }
        for g in &snap.budgets {
            match self.budget_status(g, &decision, &budget_problems, &existing, now).await {
                Ok(Some(w)) => report.statuses_written.push(w),
                Ok(None) => {}
                Err(e) => report.errors.push(e),
            }
        }

        // Events.
        self.queue_events(snap, &decision.transitions, &route_problems, &budget_problems);
        let (published, errors) = self.publish_events().await;
        report.events_published = published;
        report.errors.extend(errors);

        for e in &report.errors {
            self.ctx.metrics.failure(e.metric_label());
            warn!(error = %e, kind = e.metric_label(), "reconcile failure");
        }
        if report.errors.is_empty() {
            self.ctx.metrics.success_at(u64::try_from(now.as_second()).unwrap_or(0));
        }
        report.transitions = decision.transitions;
        report
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
                .map(|fields| Problem {
                    reason: "InvalidSpec",
                    message: fields
                        .iter()
                        .map(|f| format!("{}: {}", f.field, f.message))
                        .collect::<Vec<_>>()
                        .join("; "),
                    blocking: true,
                    ready: false,
                })
                .unwrap_or(fallback),
            Err(e) => {
                debug!(error = %e, "cannot fetch the unreadable object");
                fallback
            }
        };
        self.unreadable.insert(uid, (rv, problem.clone()));
        problem
    }

    fn is_managed(&self, cm: &ConfigMap) -> bool {
        cm.metadata.name.as_deref() == Some(self.ctx.settings.configmap_name.as_str())
            && cm
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("app.kubernetes.io/managed-by"))
                .is_some_and(|v| v == MANAGED_BY)
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

    async fn retrying<T, F, Fut>(&self, mut call: F) -> Result<T, kube::Error>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, kube::Error>>,
    {
        let mut attempt = 1;
        let mut pause = self.ctx.settings.retry_backoff;
        loop {
            match call().await {
                Err(e) if is_transient(&e) && attempt < self.ctx.settings.retry_attempts => {
                    debug!(error = %e, attempt, "transient API error, retrying");
                    tokio::time::sleep(pause).await;
                    pause = pause.saturating_mul(2);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn labels(&self, component: &str) -> Value {
        json!({
            "app.kubernetes.io/name": "tollgate",
            "app.kubernetes.io/component": component,
            "app.kubernetes.io/managed-by": MANAGED_BY,
        })
    }

    fn recently<T: PartialEq>(&self, cache: Option<&(T, Timestamp)>, desired: &T, now: Timestamp) -> bool {
        let grace = jiff::SignedDuration::try_from(self.ctx.settings.write_grace).unwrap_or_default();
        cache.is_some_and(|(v, at)| v == desired && now.duration_since(*at) < grace)
    }

    /// Applies the namespace's ConfigMap when its document differs; `Ok(true)` when written.
    async fn apply_configmap(
        &mut self,
        snap: &Snapshot,
        ns: &str,
        doc: &GatewayConfig,
        now: Timestamp,
    ) -> Result<bool, Error> {
        let name = self.ctx.settings.configmap_name.clone();
        let text = doc.to_json_pretty();
        let current = snap.configmaps.iter().find(|cm| {
            cm.metadata.namespace.as_deref() == Some(ns) && cm.metadata.name.as_deref() == Some(name.as_str())
        });
        let in_store = current
            .is_some_and(|cm| self.is_managed(cm) && cm.data.as_ref().and_then(|d| d.get(CONFIG_KEY)) == Some(&text));
        if in_store || self.recently(self.applied_config.get(ns), &text, now) {
            return Ok(false);
        }
        let body = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": name,
                "namespace": ns,
                "labels": self.labels("gateway-config"),
                "annotations": {"tollgate.dev/config-revision": doc.revision},
            },
            "data": {CONFIG_KEY: text},
        });
        let api: Api<ConfigMap> = Api::namespaced(self.ctx.client.clone(), ns);
        let pp = PatchParams::apply(&self.ctx.settings.field_manager).force();
        let patch = Patch::Apply(&body);
        self.retrying(|| api.patch(&name, &pp, &patch)).await.map_err(|e| Error::ApplyConfigMap {
            source: Box::new(e),
            namespace: ns.to_string(),
            name: name.clone(),
        })?;
        info!(namespace = ns, revision = %doc.revision, routes = doc.routes.len(), "applied gateway config");
        self.applied_config.insert(ns.to_string(), (text, now));
        Ok(true)
    }

    /// Applies the namespace's credentials Secret when its keys differ; `Ok(true)` when written.
    async fn apply_secret(
        &mut self,
        snap: &Snapshot,
        ns: &str,
        data: BTreeMap<String, Vec<u8>>,
        now: Timestamp,
    ) -> Result<bool, Error> {
        let name = self.ctx.settings.credentials_secret.clone();
        let current = snap
            .secrets
            .iter()
            .find(|s| s.metadata.namespace.as_deref() == Some(ns) && s.metadata.name.as_deref() == Some(name.as_str()));
        let in_store = current.is_some_and(|s| {
            let have: BTreeMap<String, Vec<u8>> =
                s.data.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())).collect();
            have == data
        });
        if in_store || self.recently(self.applied_secret.get(ns), &data, now) {
            return Ok(false);
        }
        let encoded: serde_json::Map<String, Value> = data
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(base64::engine::general_purpose::STANDARD.encode(v))))
            .collect();
        let body = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": ns, "labels": self.labels("gateway-credentials")},
            "type": "Opaque",
            "data": encoded,
        });
        let api: Api<Secret> = Api::namespaced(self.ctx.client.clone(), ns);
        let pp = PatchParams::apply(&self.ctx.settings.field_manager).force();
        let patch = Patch::Apply(&body);
        self.retrying(|| api.patch(&name, &pp, &patch)).await.map_err(|e| Error::ApplySecret {
            source: Box::new(e),
            namespace: ns.to_string(),
            name: name.clone(),
        })?;
        // Key names only: the values are API keys.
        info!(namespace = ns, keys = ?data.keys().collect::<Vec<_>>(), "applied gateway credentials");
        self.applied_secret.insert(ns.to_string(), (data, now));
        Ok(true)
    }

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

    async fn route_status(
        &mut self,
        g: &DeserializeGuard<ModelRoute>,
        decision: &Decision,
        problems: &BTreeMap<ObjectKey, Problem>,
        targets: &[GatewayTarget],
        revisions: &BTreeMap<String, String>,
        now: Timestamp,
    ) -> Result<Option<String>, Error> {
        let key = ObjectKey::of(g);
        let generation = g.meta().generation;
        let stored = g.0.as_ref().ok().and_then(|r| r.status.clone());
        let previous = self.previous_conditions(g, stored.as_ref().map(|s| s.conditions.as_slice()));
        let problem = problems.get(&key);
        let mut status = match (problem, decision.routes.get(&key)) {
            (Some(p), _) if p.blocking => ModelRouteStatus { observed_generation: generation, ..Default::default() },
            (_, Some(d)) => d.status.clone(),
            (_, None) => return Ok(None),
        };
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
        if let Some(p) = problem {
            set_problem(&mut status.conditions, &previous, p, generation, now);
        }
        let desired = to_value(&status, "ModelRoute status")?;
        let current = stored.map(|s| to_value(&s, "ModelRoute status")).transpose()?;
        self.write_status(g, "ModelRoute", current, desired, now).await
    }

    async fn budget_status(
        &mut self,
        g: &DeserializeGuard<ProviderBudget>,
        decision: &Decision,
        problems: &BTreeMap<ObjectKey, Problem>,
        existing: &BTreeSet<String>,
        now: Timestamp,
    ) -> Result<Option<String>, Error> {
        let key = ObjectKey::of(g);
        let generation = g.meta().generation;
        let stored = g.0.as_ref().ok().and_then(|b| b.status.clone());
        let previous = self.previous_conditions(g, stored.as_ref().map(|s| s.conditions.as_slice()));
        let problem = problems.get(&key);
        let mut status = match (g.0.as_ref().ok(), decision.budgets.get(&key)) {
            (Some(b), Some(d)) => {
                let mut s = d.status.clone();
                s.checkpoints = self.checkpoints(b, &key, existing);
                s
            }
            _ => ProviderBudgetStatus { observed_generation: generation, ..Default::default() },
        };
        if let Some(p) = problem {
            set_problem(&mut status.conditions, &previous, p, generation, now);
        }
        let desired = to_value(&status, "ProviderBudget status")?;
        let current = stored.map(|s| to_value(&s, "ProviderBudget status")).transpose()?;
        self.write_status(g, "ProviderBudget", current, desired, now).await
    }

    /// Conditions to keep `lastTransitionTime` from: the stored ones, or (for an object that
    /// cannot be read) the ones last written.
    fn previous_conditions<K: Resource>(&self, obj: &K, stored: Option<&[Condition]>) -> Vec<Condition> {
        if let Some(c) = stored {
            return c.to_vec();
        }
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

    fn queue_events(
        &mut self,
        snap: &Snapshot,
        transitions: &[Transition],
        route_problems: &BTreeMap<ObjectKey, Problem>,
        budget_problems: &BTreeMap<ObjectKey, Problem>,
    ) {
        let route_refs: BTreeMap<ObjectKey, ObjectReference> =
            snap.routes.iter().map(|g| (ObjectKey::of(g.as_ref()), g.object_ref(&()))).collect();
        let budget_refs: BTreeMap<ObjectKey, ObjectReference> =
            snap.budgets.iter().map(|g| (ObjectKey::of(g.as_ref()), g.object_ref(&()))).collect();
        let reference = |kind: ObjectKind, key: &ObjectKey| match kind {
            ObjectKind::ModelRoute => route_refs.get(key).cloned(),
            ObjectKind::ProviderBudget => budget_refs.get(key).cloned(),
        };
        let mut queue = Vec::new();
        for t in transitions {
            if let Some(r) = reference(t.kind, &t.object) {
                let event = Event {
                    type_: if t.warning { EventType::Warning } else { EventType::Normal },
                    reason: t.reason.clone(),
                    note: Some(clip_note(&t.message)),
                    action: "Evaluate".into(),
                    secondary: None,
                };
                queue.push((event, r, format!("{} {}", kind_name(t.kind), t.object)));
            }
        }
        // Problems found by the controller (not by the policy): one Event when they appear or change.
        let mut current: BTreeMap<(ObjectKind, ObjectKey), String> = BTreeMap::new();
        let problems = route_problems
            .iter()
            .map(|(k, p)| (ObjectKind::ModelRoute, k, p))
            .chain(budget_problems.iter().map(|(k, p)| (ObjectKind::ProviderBudget, k, p)));
        for (kind, key, p) in problems {
            let id = (kind, key.clone());
            if self.reported.get(&id) != Some(&p.message)
                && let Some(r) = reference(kind, key)
            {
                let event = Event {
                    type_: if p.ready { EventType::Normal } else { EventType::Warning },
                    reason: p.reason.into(),
                    note: Some(clip_note(&p.message)),
                    action: "Validate".into(),
                    secondary: None,
                };
                queue.push((event, r, format!("{} {key}", kind_name(kind))));
            }
            current.insert(id, p.message.clone());
        }
        self.reported = current;
        for (event, reference, object) in queue {
            self.outbox.push_back(PendingEvent { event, reference, object, attempts: 0 });
        }
    }

    async fn publish_events(&mut self) -> (usize, Vec<Error>) {
        let mut published = 0;
        let mut errors = Vec::new();
        let mut retry = VecDeque::new();
        while let Some(mut p) = self.outbox.pop_front() {
            // A recorder per Event: each transition is its own Event with its own evidence (a
            // shared recorder would fold a second rotation within minutes into a `series`
            // count of the first, keeping the first note). Repeats of an unchanged problem are
            // never published twice (see `reported`).
            let recorder = Recorder::new(self.ctx.client.clone(), self.ctx.reporter.clone());
            match self.retrying(|| recorder.publish(&p.event, &p.reference)).await {
                Ok(()) => published += 1,
                Err(source) => {
                    p.attempts += 1;
                    errors.push(Error::PublishEvent {
                        reason: p.event.reason.clone(),
                        object: p.object.clone(),
                        source: Box::new(source),
                    });
                    if p.attempts < EVENT_ATTEMPTS {
                        retry.push_back(p);
                    }
                }
            }
        }
        self.outbox = retry;
        (published, errors)
    }
}

fn to_value<T: serde::Serialize>(v: &T, what: &str) -> Result<Value, Error> {
    serde_json::to_value(v).map_err(|source| Error::Serialize { what: what.into(), source })
}

/// Validates an object as the API server would (schema, CEL) plus what no schema says.
fn validate<K: serde::Serialize>(obj: &K) -> Option<Problem> {
    let mut value = match serde_json::to_value(obj) {
        Ok(v) => v,
        Err(e) => return Some(Problem::invalid("(object)", &e.to_string())),
    };
    if let Some(m) = value.as_object_mut() {
        m.remove("status");
    }
    match validate_value(value) {
        Ok(_) => None,
        Err(fields) => {
            let message = fields.iter().map(|f| format!("{}: {}", f.field, f.message)).collect::<Vec<_>>().join("; ");
            Some(Problem { reason: "InvalidSpec", message, blocking: true, ready: false })
        }
    }
}

/// Two routes of a namespace serving the same alias: the older one keeps it.
fn duplicate_aliases(routes: &[ModelRoute], problems: &mut BTreeMap<ObjectKey, Problem>) {
    let mut sorted: Vec<&ModelRoute> = routes.iter().collect();
    sorted.sort_by_key(|r| (r.metadata.creation_timestamp.clone().map(|t| t.0), ObjectKey::of(*r)));
    let mut seen: BTreeMap<(String, String), String> = BTreeMap::new();
    for r in sorted {
        let key = ObjectKey::of(r);
        let alias = r.alias();
        match seen.get(&(key.namespace.clone(), alias.clone())) {
            Some(first) => {
                problems.insert(
                    key,
                    Problem::invalid("spec.model", &format!("model {alias:?} is already served by ModelRoute {first}")),
                );
            }
            None => {
                seen.insert((key.namespace.clone(), alias), key.name.clone());
            }
        }
    }
}

/// Builds a namespace's document; a route the document refuses is left out and reported.
fn build_config(
    ns: &str,
    served: &mut Vec<ModelRoute>,
    decision: &Decision,
    problems: &mut BTreeMap<ObjectKey, Problem>,
    errors: &mut Vec<Error>,
) -> Option<GatewayConfig> {
    for _ in 0..=served.len() {
        let culprit = match GatewayConfig::build(ns, served, decision) {
            Ok(doc) => return Some(doc),
            Err(ConfigError::Invalid { route, field, message }) => {
                (route.clone(), Problem::invalid(&format!("spec.{field}"), &message))
            }
            Err(ConfigError::DuplicateAlias { alias, first, second }) => (
                second,
                Problem::invalid("spec.model", &format!("model {alias:?} is already served by ModelRoute {first}")),
            ),
            Err(source) => {
                errors.push(Error::BuildConfig { namespace: ns.to_string(), source });
                return None;
            }
        };
        served.retain(|r| r.metadata.name.as_deref() != Some(culprit.0.as_str()));
        problems.insert(ObjectKey::new(ns, culprit.0), culprit.1);
    }
    None
}

/// The credentials Secret's data for the served routes; missing Secrets and keys are reported
/// on the routes that reference them (the rest keeps working). Only Secrets labelled
/// `tollgate.dev/provider-key=true` are read: the watch sees no other, and the label is checked
/// here again (defence in depth), so an unlabelled or missing one is `SecretNotOptedIn` and its
/// value is never copied.
fn credentials(
    snap: &Snapshot,
    ns: &str,
    served: &[ModelRoute],
    problems: &mut BTreeMap<ObjectKey, Problem>,
) -> BTreeMap<String, Vec<u8>> {
    let mut data = BTreeMap::new();
    for (file, r) in credential_refs(served) {
        let label = crate::config::PROVIDER_KEY_LABEL;
        let secret = snap.secrets.iter().find(|s| {
            s.metadata.namespace.as_deref() == Some(ns)
                && s.metadata.name.as_deref() == Some(&r.name)
                && s.metadata.labels.as_ref().and_then(|l| l.get(label)).map(String::as_str) == Some("true")
        });
        let missing = match secret {
            None => Some((
                "SecretNotOptedIn",
                format!(
                    "Secret {ns}/{name} is missing or not labelled {label}=true, so tollgate may not read it; \
                     if it holds this provider's key, its owner can opt it in with \
                     `kubectl label secret -n {ns} {name} {label}=true`",
                    name = r.name
                ),
            )),
            Some(s) => match s.data.as_ref().and_then(|d| d.get(&r.key)) {
                Some(v) => {
                    data.insert(file, v.0.clone());
                    None
                }
                None => Some(("SecretKeyNotFound", format!("Secret {ns}/{} has no key {:?}", r.name, r.key))),
            },
        };
        let Some((reason, what)) = missing else { continue };
        for route in served {
            for (i, b) in route.spec.backends.iter().enumerate() {
                if b.endpoint.as_ref().and_then(|e| e.api_key_secret_ref.as_ref()) == Some(&r) {
                    let key = ObjectKey::of(route);
                    let message = format!("spec.backends[{i}].endpoint.apiKeySecretRef: {what}");
                    let entry = problems.entry(key).or_insert(Problem {
                        reason,
                        message: String::new(),
                        blocking: false,
                        ready: false,
                    });
                    if !entry.blocking {
                        if !entry.message.is_empty() {
                            entry.message.push_str("; ");
                        }
                        entry.message.push_str(&message);
                    }
                }
            }
        }
    }
    data
}

/// A budget whose provider no valid route of its namespace uses: a note in its `Ready`.
fn unused_budgets(budgets: &[ProviderBudget], routes: &[ModelRoute], problems: &mut BTreeMap<ObjectKey, Problem>) {
    for b in budgets {
        let key = ObjectKey::of(b);
        if problems.contains_key(&key) {
            continue;
        }
        let used = routes.iter().filter(|r| ObjectKey::of(*r).namespace == key.namespace).any(|r| {
            r.spec.backends.iter().any(|x| {
                x.provider == b.spec.provider && (b.spec.models.is_empty() || b.spec.models.contains(&x.model))
            })
        });
        if !used {
            let models =
                if b.spec.models.is_empty() { String::new() } else { format!(" and models {:?}", b.spec.models) };
            problems.insert(
                key.clone(),
                Problem {
                    reason: "NoRouteUsesProvider",
                    message: format!(
                        "spec.provider: no ModelRoute in namespace {} has a backend with provider {:?}{models}; the budget limits nothing",
                        key.namespace, b.spec.provider
                    ),
                    blocking: false,
                    ready: true,
                },
            );
        }
    }
}
