//! The plan step: `validate → decide → build`, once, for the controller, `local` and `render`.
//!
//! Objects in (routes and budgets already parsed, of one namespace or of all; the objects the
//! adapter could not read, with why; the policy's observations, previous memory and time; the
//! Secrets' data when credentials are resolved), out: problems per object, the policy's
//! [`Decision`], one config document (and credentials) per namespace, and the status each
//! object should carry. Pure: no client, no clock, no I/O. Applying the documents, writing the
//! statuses and publishing Events stay in the adapters. [`plan`] runs it all; the controller
//! runs [`admit`] (validate) and [`plan_admitted`] (decide, build) apart, to restore the
//! policy's memory of the admitted routes from their statuses in between; `render` and `local`
//! run [`admit_validated`] (their objects were validated when read) and [`plan_admitted`].
//! Validation of many objects runs on every core.
//!
//! Rules, the same for every entry point:
//! - A route or budget whose spec fails validation (schema, CEL, what no schema says) gets an
//!   `InvalidSpec` problem. An invalid route is left out of the policy and the document; an
//!   invalid budget keeps counting spend (no money is lost) and is reported.
//! - **Duplicate aliases**: two routes of a namespace serving the same `model` — the oldest by
//!   `metadata.creationTimestamp` keeps the alias, ties (and objects without a timestamp, which
//!   sort first: manifest files carry none) broken by name; every other one gets an
//!   `InvalidSpec` problem on `spec.model` naming the route that keeps it. File order never
//!   matters.
//! - A route the document builder refuses is left out of that namespace's document and gets
//!   the builder's reason; the rest of the namespace is still served.
//! - With Secrets given, a referenced Secret or key that is missing is a non-blocking problem
//!   on every route using it (the route is served; its backend has no key).
//! - A budget no valid route of its namespace uses (provider and, when listed, models) gets a
//!   non-blocking note that keeps `Ready` True.
//! - Statuses: a route with a blocking problem gets an empty status (generation + `Ready`
//!   False); otherwise the policy's status. A problem replaces `Ready`, keeping
//!   `lastTransitionTime` when its status did not move (from the previous conditions given).

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;

use crate::api::validate::{FieldError, parallel_map, validate_value};
use crate::api::{ModelRoute, ModelRouteStatus, ProviderBudget, ProviderBudgetStatus, StatusCondition, condition};
use crate::config::{ConfigError, GatewayConfig, credential_refs};
use crate::policy::{
    ConditionSpec, Decision, DecisionState, Inputs, ObjectKey, ObjectKind, Observations, evaluate, merge_conditions,
};

#[cfg(test)]
mod tests;

/// Longest condition message or Event note (the API refuses 1024 bytes and more).
pub use crate::policy::common::MAX_MESSAGE as MAX_NOTE;

/// Cuts a note to fewer than 1024 bytes on a character boundary (the one clip of the policy).
pub fn clip_note(s: &str) -> String {
    crate::policy::clip(s)
}

/// Most problems a joined report lists (a condition message, the errors `render` and `local`
/// print); the rest are counted, so one object with 10,000 invalid backends gives a message of
/// a few kilobytes, not megabytes.
pub const MAX_LISTED: usize = 20;

/// `items` joined by `sep`: the first [`MAX_LISTED`], then `... and N more` for the rest.
pub fn join_bounded(items: impl IntoIterator<Item = String>, sep: &str) -> String {
    let mut out = String::new();
    let mut more = 0usize;
    for (i, item) in items.into_iter().enumerate() {
        if i >= MAX_LISTED {
            more += 1;
            continue;
        }
        if i > 0 {
            out.push_str(sep);
        }
        out.push_str(&item);
    }
    if more > 0 {
        out.push_str(sep);
        out.push_str(&format!("... and {more} more"));
    }
    out
}

/// A problem with one object, reported in its `Ready` condition (and by one Event).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// CamelCase reason (`InvalidSpec`, `SecretNotOptedIn`...).
    pub reason: &'static str,
    /// What is wrong, naming the field.
    pub message: String,
    /// The object is left out of the document (invalid); otherwise it is served.
    pub blocking: bool,
    /// `Ready` stays True (a note, not a failure).
    pub ready: bool,
}

impl Problem {
    /// An invalid field: blocking, `Ready` False.
    pub fn invalid(field: &str, message: &str) -> Self {
        Self { reason: "InvalidSpec", message: format!("{field}: {message}"), blocking: true, ready: false }
    }

    /// Every invalid field of one object, in one message: the first [`MAX_LISTED`], then how
    /// many more ([`join_bounded`]).
    pub fn invalid_fields(fields: &[FieldError]) -> Self {
        let message = join_bounded(fields.iter().map(|f| format!("{}: {}", f.field, f.message)), "; ");
        Self { reason: "InvalidSpec", message, blocking: true, ready: false }
    }
}

/// An object the adapter holds but cannot read into its Rust type (a malformed object seen
/// through `DeserializeGuard`): only its identity, why, and the conditions it last carried.
#[derive(Clone, Debug, PartialEq)]
pub struct Unreadable {
    /// Kind.
    pub kind: ObjectKind,
    /// Namespace and name.
    pub key: ObjectKey,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// Why it cannot be used.
    pub problem: Problem,
    /// Conditions to keep `lastTransitionTime` from.
    pub previous: Vec<StatusCondition>,
}

/// Data of the Secrets in scope: `namespace/name` → key → value.
pub type SecretData = BTreeMap<ObjectKey, BTreeMap<String, Vec<u8>>>;

/// What one plan is made from.
#[derive(Clone, Copy, Debug)]
pub struct PlanInput<'a> {
    /// ModelRoutes (any namespaces, any order).
    pub routes: &'a [ModelRoute],
    /// ProviderBudgets.
    pub budgets: &'a [ProviderBudget],
    /// Objects that could not be read.
    pub unreadable: &'a [Unreadable],
    /// Namespaces to render besides those of the routes (the controller's: every namespace
    /// holding a ConfigMap it manages, so removing the last route empties the document).
    pub namespaces: &'a BTreeSet<String>,
    /// Secrets to resolve credentials from; `None`: credentials are not resolved (files).
    pub secrets: Option<&'a SecretData>,
    /// Observations since the previous evaluation.
    pub observations: &'a Observations,
    /// The policy's memory.
    pub previous: &'a DecisionState,
    /// Time of the evaluation.
    pub now: Timestamp,
}

/// One namespace's output.
#[derive(Clone, Debug, PartialEq)]
pub struct NamespacePlan {
    /// The config document, or why it could not be built at all.
    pub config: Result<GatewayConfig, ConfigError>,
    /// Routes in the document.
    pub served: Vec<ObjectKey>,
    /// The credentials Secret's data (file name → API key); empty when Secrets were not given.
    pub credentials: BTreeMap<String, Vec<u8>>,
}

/// Everything one plan decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The policy's decision (its `state` is the memory for the next plan).
    pub decision: Decision,
    /// Problems of routes.
    pub route_problems: BTreeMap<ObjectKey, Problem>,
    /// Problems of budgets.
    pub budget_problems: BTreeMap<ObjectKey, Problem>,
    /// Per namespace.
    pub namespaces: BTreeMap<String, NamespacePlan>,
    /// The status each route should carry (none: nothing to say yet).
    pub route_statuses: BTreeMap<ObjectKey, ModelRouteStatus>,
    /// The status each budget should carry.
    pub budget_statuses: BTreeMap<ObjectKey, ProviderBudgetStatus>,
}

impl Plan {
    /// Problems of both kinds, routes first, in key order.
    pub fn problems(&self) -> impl Iterator<Item = (ObjectKind, &ObjectKey, &Problem)> {
        self.route_problems
            .iter()
            .map(|(k, p)| (ObjectKind::ModelRoute, k, p))
            .chain(self.budget_problems.iter().map(|(k, p)| (ObjectKind::ProviderBudget, k, p)))
    }

    /// The document of `namespace`, when it could be built.
    pub fn config(&self, namespace: &str) -> Option<&GatewayConfig> {
        self.namespaces.get(namespace).and_then(|n| n.config.as_ref().ok())
    }
}

/// `ModelRoute` / `ProviderBudget`.
pub fn kind_name(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::ModelRoute => "ModelRoute",
        ObjectKind::ProviderBudget => "ProviderBudget",
    }
}

/// Validates an object as the API server would (schema, CEL) plus what no schema says.
pub fn validate<K: serde::Serialize>(obj: &K) -> Option<Problem> {
    let mut value = match serde_json::to_value(obj) {
        Ok(v) => v,
        Err(e) => return Some(Problem::invalid("(object)", &e.to_string())),
    };
    if let Some(m) = value.as_object_mut() {
        m.remove("status");
    }
    validate_value(value).err().map(|fields| Problem::invalid_fields(&fields))
}

/// Objects admitted to the policy, and the problems found so far.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Admitted {
    /// Valid routes whose alias is their own (the policy and the documents see only these).
    pub routes: Vec<ModelRoute>,
    /// Problems of routes (unreadable, invalid, duplicate alias).
    pub route_problems: BTreeMap<ObjectKey, Problem>,
    /// Problems of budgets (unreadable, invalid; an invalid budget is still decided).
    pub budget_problems: BTreeMap<ObjectKey, Problem>,
}

/// Validation results by object UID, kept while the generation stays the same: the spec
/// cannot change within a generation, and what is validated besides it (name, namespace) is
/// immutable, so the controller validates an object once per generation, not once per pass.
/// Objects without a UID or generation (manifest files) are validated every time.
#[derive(Debug, Default)]
pub struct ValidationCache {
    entries: std::collections::HashMap<(ObjectKind, String), (i64, Option<Problem>)>,
}

impl ValidationCache {
    /// The problems of `objects` (`None`: valid), reusing the results of objects whose
    /// generation did not change and validating the others on every core.
    fn check_all<K: serde::Serialize + kube::Resource + Sync>(
        &mut self,
        kind: ObjectKind,
        objects: &[K],
    ) -> Vec<Option<Problem>> {
        let key = |obj: &K| {
            let meta = obj.meta();
            meta.uid.clone().zip(meta.generation)
        };
        let mut known: Vec<Option<Option<Problem>>> = objects
            .iter()
            .map(|obj| {
                let (uid, generation) = key(obj)?;
                match self.entries.get(&(kind, uid)) {
                    Some((g, p)) if *g == generation => Some(p.clone()),
                    _ => None,
                }
            })
            .collect();
        let missing: Vec<usize> = known.iter().enumerate().filter(|(_, p)| p.is_none()).map(|(i, _)| i).collect();
        let fresh = parallel_map(missing.clone(), |i| validate(&objects[i]));
        for (i, p) in missing.into_iter().zip(fresh) {
            if let Some((uid, generation)) = key(&objects[i]) {
                self.entries.insert((kind, uid), (generation, p.clone()));
            }
            known[i] = Some(p);
        }
        known.into_iter().map(Option::flatten).collect()
    }

    /// Forgets objects whose UID is not in `uids` (deleted).
    pub fn retain(&mut self, uids: &BTreeSet<String>) {
        self.entries.retain(|(_, uid), _| uids.contains(uid));
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The validate step alone: which routes the policy sees (the controller restores their
/// memory from status before deciding).
pub fn admit(routes: &[ModelRoute], budgets: &[ProviderBudget], unreadable: &[Unreadable]) -> Admitted {
    admit_cached(routes, budgets, unreadable, &mut ValidationCache::default())
}

/// [`admit`], reusing the validation of objects whose generation did not change.
pub fn admit_cached(
    routes: &[ModelRoute],
    budgets: &[ProviderBudget],
    unreadable: &[Unreadable],
    cache: &mut ValidationCache,
) -> Admitted {
    let route_checks = cache.check_all(ObjectKind::ModelRoute, routes);
    let budget_checks = cache.check_all(ObjectKind::ProviderBudget, budgets);
    admit_checked(routes, budgets, unreadable, route_checks, budget_checks)
}

/// [`admit`] for objects validated when they were read (`render` and `local`: by
/// [`crate::api::validate::load_dir`], which only returns valid objects): not validated
/// again, only the rules across objects (duplicate aliases) apply.
pub fn admit_validated(routes: &[ModelRoute], budgets: &[ProviderBudget], unreadable: &[Unreadable]) -> Admitted {
    admit_checked(routes, budgets, unreadable, vec![None; routes.len()], vec![None; budgets.len()])
}

/// Admission from each object's validation problem (same order as the objects).
fn admit_checked(
    routes: &[ModelRoute],
    budgets: &[ProviderBudget],
    unreadable: &[Unreadable],
    route_checks: Vec<Option<Problem>>,
    budget_checks: Vec<Option<Problem>>,
) -> Admitted {
    let mut out = Admitted::default();
    for u in unreadable {
        let problems = match u.kind {
            ObjectKind::ModelRoute => &mut out.route_problems,
            ObjectKind::ProviderBudget => &mut out.budget_problems,
        };
        problems.insert(u.key.clone(), u.problem.clone());
    }
    for (r, problem) in routes.iter().zip(route_checks) {
        match problem {
            Some(p) => {
                out.route_problems.insert(ObjectKey::of(r), p);
            }
            None => out.routes.push(r.clone()),
        }
    }
    duplicate_aliases(&out.routes, &mut out.route_problems);
    let problems = &out.route_problems;
    out.routes.retain(|r| !problems.contains_key(&ObjectKey::of(r)));
    for (b, problem) in budgets.iter().zip(budget_checks) {
        if let Some(p) = problem {
            out.budget_problems.insert(ObjectKey::of(b), p);
        }
    }
    out
}

/// Runs the whole plan: [`admit`], then [`plan_admitted`].
pub fn plan(input: PlanInput<'_>) -> Plan {
    plan_admitted(input, admit(input.routes, input.budgets, input.unreadable))
}

/// Decides and builds from objects already admitted (from the same `input`).
pub fn plan_admitted(input: PlanInput<'_>, admitted: Admitted) -> Plan {
    let Admitted { routes, mut route_problems, mut budget_problems } = admitted;

    // Decide.
    let decision = evaluate(Inputs {
        routes: &crate::api::convert::route_inputs(&routes),
        budgets: &crate::api::convert::budget_inputs(input.budgets),
        observations: input.observations,
        previous: input.previous,
        now: input.now,
    });

    // Build, per namespace.
    let mut namespaces: BTreeSet<String> = input.namespaces.clone();
    namespaces.extend(input.routes.iter().map(|r| ObjectKey::of(r).namespace));
    namespaces
        .extend(input.unreadable.iter().filter(|u| u.kind == ObjectKind::ModelRoute).map(|u| u.key.namespace.clone()));
    let mut out = BTreeMap::new();
    for ns in namespaces {
        let mut served: Vec<&ModelRoute> = routes.iter().filter(|r| ObjectKey::of(*r).namespace == ns).collect();
        let config = build_config(&ns, &mut served, &decision, &mut route_problems);
        let credentials = match input.secrets {
            Some(secrets) => credentials(secrets, &ns, &served, &mut route_problems),
            None => BTreeMap::new(),
        };
        let served = served.iter().map(|r| ObjectKey::of(*r)).collect();
        out.insert(ns, NamespacePlan { config, served, credentials });
    }
    unused_budgets(input.budgets, &routes, &mut budget_problems);

    // Statuses.
    let mut route_statuses = BTreeMap::new();
    for r in input.routes {
        let key = ObjectKey::of(r);
        let previous = r.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
        let problem = route_problems.get(&key);
        let generation = r.metadata.generation;
        let mut status = match (problem, decision.routes.get(&key)) {
            (Some(p), _) if p.blocking => ModelRouteStatus { observed_generation: generation, ..Default::default() },
            (_, Some(d)) => d.status.clone(),
            (_, None) => continue,
        };
        if let Some(p) = problem {
            set_problem(&mut status.conditions, &previous, p, generation, input.now);
        }
        route_statuses.insert(key, status);
    }
    let mut budget_statuses = BTreeMap::new();
    for b in input.budgets {
        let key = ObjectKey::of(b);
        let previous = b.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
        let generation = b.metadata.generation;
        let mut status = match decision.budgets.get(&key) {
            Some(d) => d.status.clone(),
            None => ProviderBudgetStatus { observed_generation: generation, ..Default::default() },
        };
        if let Some(p) = budget_problems.get(&key) {
            set_problem(&mut status.conditions, &previous, p, generation, input.now);
        }
        budget_statuses.insert(key, status);
    }
    for u in input.unreadable {
        match u.kind {
            ObjectKind::ModelRoute => {
                let mut s = ModelRouteStatus { observed_generation: u.generation, ..Default::default() };
                set_problem(&mut s.conditions, &u.previous, &u.problem, u.generation, input.now);
                route_statuses.insert(u.key.clone(), s);
            }
            ObjectKind::ProviderBudget => {
                let mut s = ProviderBudgetStatus { observed_generation: u.generation, ..Default::default() };
                set_problem(&mut s.conditions, &u.previous, &u.problem, u.generation, input.now);
                budget_statuses.insert(u.key.clone(), s);
            }
        }
    }

    Plan { decision, route_problems, budget_problems, namespaces: out, route_statuses, budget_statuses }
}

/// Sets the `Ready` condition a problem with the object calls for, keeping
/// `lastTransitionTime` when its status did not move.
pub fn set_problem(
    conditions: &mut Vec<StatusCondition>,
    previous: &[StatusCondition],
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
    let merged = merge_conditions(previous, std::slice::from_ref(&ready), generation, now);
    conditions.retain(|c| c.type_ != condition::READY);
    conditions.splice(0..0, merged);
}

/// Two routes of a namespace serving the same alias: the oldest keeps it (ties and missing
/// timestamps: by name); the others get a problem naming it.
pub fn duplicate_aliases(routes: &[ModelRoute], problems: &mut BTreeMap<ObjectKey, Problem>) {
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
    served: &mut Vec<&ModelRoute>,
    decision: &Decision,
    problems: &mut BTreeMap<ObjectKey, Problem>,
) -> Result<GatewayConfig, ConfigError> {
    loop {
        let culprit = match GatewayConfig::build(ns, served.iter().copied(), decision) {
            Ok(doc) => return Ok(doc),
            Err(ConfigError::Invalid { route, field, message }) => {
                (route.clone(), Problem::invalid(&format!("spec.{field}"), &message))
            }
            Err(ConfigError::DuplicateAlias { alias, first, second }) => (
                second,
                Problem::invalid("spec.model", &format!("model {alias:?} is already served by ModelRoute {first}")),
            ),
            Err(other) => return Err(other),
        };
        let before = served.len();
        served.retain(|r| r.metadata.name.as_deref() != Some(culprit.0.as_str()));
        if served.len() == before {
            // The builder named a route that is not there: stop rather than loop.
            return Err(ConfigError::Invalid { route: culprit.0, field: "(route)".into(), message: culprit.1.message });
        }
        problems.insert(ObjectKey::new(ns, culprit.0), culprit.1);
    }
}

/// The credentials Secret's data for the served routes; missing Secrets and keys are reported
/// on the routes that reference them (the rest keeps working). `secrets` holds only Secrets
/// labelled `tollgate.dev/provider-key=true` (the adapter filters them), so a missing
/// or unlabelled one is `SecretNotOptedIn` and its value is never copied.
fn credentials(
    secrets: &SecretData,
    ns: &str,
    served: &[&ModelRoute],
    problems: &mut BTreeMap<ObjectKey, Problem>,
) -> BTreeMap<String, Vec<u8>> {
    let mut data = BTreeMap::new();
    for (file, r) in credential_refs(served.iter().copied()) {
        let missing = match secrets.get(&ObjectKey::new(ns, r.name.clone())) {
            None => {
                let label = crate::config::PROVIDER_KEY_LABEL;
                Some((
                    "SecretNotOptedIn",
                    format!(
                        "Secret {ns}/{name} is missing or not labelled {label}=true, so tollgate may not read it; \
                         if it holds this provider's key, its owner can opt it in with \
                         `kubectl label secret -n {ns} {name} {label}=true`",
                        name = r.name
                    ),
                ))
            }
            Some(s) => match s.get(&r.key) {
                Some(v) => {
                    data.insert(file, v.clone());
                    None
                }
                None => Some(("SecretKeyNotFound", format!("Secret {ns}/{} has no key {:?}", r.name, r.key))),
            },
        };
        let Some((reason, what)) = missing else { continue };
        for &route in served {
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
            r.spec
                .backends
                .iter()
                .any(|x| crate::policy::coverage::covers(&b.spec.provider, &b.spec.models, &x.provider, &x.model))
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
