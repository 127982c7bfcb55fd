//! Hard budgets in a cluster: the controller grants each gateway pod an allowance
//! of every Hard `ProviderBudget` and writes the grants as the allowances document
//! ([`crate::config::allowances`]) in its own ConfigMap per namespace (`tollgate-allowances`,
//! `--allowances-configmap-name`), never in the routing document (whose revision would churn).
//!
//! Each signal pass, per Hard budget of a namespace:
//! 1. **Restore first.** The first time a namespace is granted after the controller starts (a
//!    restart, a new leader), its allowances ConfigMap is read (`get`) and each budget's
//!    ledger restored from it, merged (per instance, the larger) with `status.hard.grants` when
//!    the status is of the same window. A read that fails (other than 404) grants nothing in
//!    that namespace this pass: granting from an empty ledger could hand out the window twice.
//!    A window with no grant yet counts the spend the policy already saw in it (e.g. while the
//!    budget was Soft) as the grant of a gone instance, [`BEFORE_GRANTS`].
//! 2. **Regrant.** A gateway is granted by the instance id it publishes on `/metrics`
//!    (`tollgate_hard_budget_instance_info`), else by its **pod UID**. The chart runs it with
//!    `--instance=$(POD_UID) --instance-per-process`: `<pod UID>.<random suffix>`, new for each
//!    process, so a restarted container is a new instance with no grant (its predecessor's
//!    grant stays counted) rather than a fresh ledger under a grant already spent. Instances
//!    read this round are alive; the others (not ready, unreadable, gone, restarted) keep
//!    their grant and get nothing more.
//!    [`crate::policy::allowance::regrant`] tops each alive pod up to a headroom of
//!    `max(--hard-grant-floor, 2 × its burn over the last interval)`, grants never shrink, and
//!    their sum never exceeds the limit. The gateway's own gauges (settled + reserved) say what
//!    is used of its grant; a pod without gauges for the budget counts as having used nothing.
//! 3. **Commit, then write.** The new grants enter the ledger before the write: a write whose
//!    outcome is unknown may have reached the gateways, so it counts as given. The document is
//!    server-side applied when it differs from the last one written (or read).
//!
//! Status: `status.hard` from the last gauges read in the window (settled summed over every
//! pod seen in it, reserved over those read this round), the ledger's grants and their sum
//! (the bound), and refusals counted from the gateways' counters (deltas; the first round
//! after a restore only sets baselines, as the restored count holds them). One Warning Event `HardBudgetRefusing` when a budget
//! starts refusing (a round with refusals after one without). A failed write is counted in
//! `tollgate_controller_config_not_applied_total{reason="AllowancesNotApplied"}`, with one
//! Warning Event per failure episode on the ConfigMap and a Normal one when writes succeed again.
//!
//! With `--signals prometheus=URL` the gauges are not read: every pod then counts as having
//! used nothing and is topped up to the floor only (the bound holds; big spenders wait).
//!
//! Edge cases, each deliberate:
//! - A new window starts a new ledger (its spend so far, as the policy counted it, entered as
//!   [`BEFORE_GRANTS`]). Gateways still on the previous window's grant until they read the new
//!   document settle into that window: what they held unspent at the boundary can be spent in
//!   the new window beyond its bound (at most one interval's headroom per gateway).
//! - A budget switched to Soft loses its ledger (and the gateways theirs, once they read a
//!   document without it); switched back to Hard in the same window, its grants start again
//!   from what the policy counted as spent, which lags the Soft spend by up to one interval.
//! - A Hard budget created between two signal passes is granted at the next one; until then
//!   the gateways do not know it is Hard.
//! - Grants of gone instances stay in the ledger (and the document) until the window ends.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference};
use kube::Resource;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use serde_json::json;
use tracing::{info, warn};

use super::engine::Engine;
use super::error::Error;
use crate::api::{Enforcement, Grant, HardStatus, ProviderBudget};
use crate::config::allowances::{ALLOWANCES_KEY, Allowances, HardBudgetGrants};
use crate::policy::ObjectKey;
use crate::policy::allowance::{GatewayView, GrantPolicy, regrant};
use crate::policy::money::Money;
use crate::signals::GatewayTarget;
use crate::signals::hard::{HardGauges, HardReading};

/// Instance id standing for the spend seen in a window before any grant of it.
pub const BEFORE_GRANTS: &str = "spent-before-grants";

/// What the pods read in one signal round report of their Hard budgets, by pod UID.
pub(super) type HardReadings = BTreeMap<String, HardReading>;

/// One Hard budget's grants in its current window.
#[derive(Clone, Debug, Default)]
struct BudgetLedger {
    window: i64,
    grants: BTreeMap<String, Money>,
    /// Last gauges of each pod seen in this window.
    seen: BTreeMap<String, HardGauges>,
    /// Reserved by the pods read in the last round.
    reserved: Money,
    /// Refusals counted in this window.
    refused: u64,
    /// Last refusal counter per pod (kept across windows: deltas only).
    refused_last: BTreeMap<String, u64>,
    /// Whether the last round had refusals.
    refusing: bool,
    /// Restored and not granted yet: the pods' refusal counters seen first are baselines
    /// (the restored `refused` already counts them).
    restored: bool,
}

/// The controller's memory of Hard budgets.
#[derive(Debug, Default)]
pub(super) struct HardMemory {
    ledgers: BTreeMap<ObjectKey, BudgetLedger>,
    /// Namespaces whose ConfigMap was read since start.
    restored: BTreeSet<String>,
    /// Document last written (or read) per namespace.
    applied: BTreeMap<String, Allowances>,
    /// Namespaces whose last write failed (an episode, one Event).
    failing: BTreeSet<String>,
    /// Gauges of this pass's signal round (`None`: no round this pass).
    pub(super) readings: Option<HardReadings>,
}

impl HardMemory {
    /// `status.hard` of a Hard budget, once its ledger exists.
    pub(super) fn status(&self, key: &ObjectKey) -> Option<HardStatus> {
        let l = self.ledgers.get(key)?;
        let settled: Money = l.seen.values().map(|g| g.settled).sum();
        let bound: Money = l.grants.values().copied().sum();
        Some(HardStatus {
            reserved: l.reserved.to_decimal(6),
            settled: settled.to_decimal(6),
            bound: bound.to_decimal(6),
            refused: l.refused,
            grants: l.grants.iter().map(|(k, v)| Grant { gateway: k.clone(), granted: v.to_decimal(6) }).collect(),
        })
    }
}

/// The grants a document (or status) holds for `name` in `window`.
fn grants_in(doc: Option<&Allowances>, name: &str, window: i64) -> BTreeMap<String, Money> {
    doc.and_then(|d| d.budgets.iter().find(|b| b.name == name && b.window_start == window))
        .map(|b| b.grants.iter().filter_map(|(k, v)| Some((k.clone(), v.parse::<Money>().ok()?))).collect())
        .unwrap_or_default()
}

fn merge_max(into: &mut BTreeMap<String, Money>, from: BTreeMap<String, Money>) {
    for (k, v) in from {
        let e = into.entry(k).or_insert(Money::ZERO);
        *e = (*e).max(v);
    }
}

impl Engine {
    /// One round of grants (signal passes only): restore, regrant, write, Events.
    pub(super) async fn hard_pass(&mut self, budgets: &[ProviderBudget], targets: &[GatewayTarget]) -> Vec<Error> {
        let mut errors = Vec::new();
        let Some(readings) = self.hard.readings.take() else { return errors };
        let hard: Vec<&ProviderBudget> = budgets
            .iter()
            .filter(|b| b.spec.enforcement == Enforcement::Hard && b.spec.limit.parse::<Money>().is_ok())
            .filter(|b| self.state.budgets.contains_key(&ObjectKey::of(*b)))
            .collect();
        let keys: BTreeSet<ObjectKey> = hard.iter().map(|b| ObjectKey::of(*b)).collect();
        self.hard.ledgers.retain(|k, _| keys.contains(k));
        // Namespaces with Hard budgets, and those whose document still lists some (to empty it).
        let mut namespaces: BTreeSet<String> = keys.iter().map(|k| k.namespace.clone()).collect();
        namespaces.extend(self.hard.applied.iter().filter(|(_, d)| !d.budgets.is_empty()).map(|(ns, _)| ns.clone()));
        for ns in namespaces {
            let in_ns: Vec<&ProviderBudget> =
                hard.iter().copied().filter(|b| b.metadata.namespace.as_deref() == Some(ns.as_str())).collect();
            if !self.hard.restored.contains(&ns) {
                match self.read_allowances(&ns).await {
                    Ok(doc) => {
                        self.restore_ledgers(&in_ns, doc.as_ref());
                        self.hard.applied.insert(ns.clone(), doc.unwrap_or_default());
                        self.hard.restored.insert(ns.clone());
                    }
                    Err(e) => {
                        errors.push(e);
                        continue;
                    }
                }
            }
            let mut doc = Allowances { namespace: ns.clone(), budgets: Vec::new() };
            for b in in_ns {
                if let Some(g) = self.regrant_budget(b, targets, &readings) {
                    doc.budgets.push(g);
                }
            }
            doc.budgets.sort_by(|a, b| a.name.cmp(&b.name));
            if self.hard.applied.get(&ns) == Some(&doc) {
                continue;
            }
            match self.apply_allowances(&ns, &doc).await {
                Ok(()) => {
                    if self.hard.failing.remove(&ns) {
                        self.allowances_event(
                            &ns,
                            EventType::Normal,
                            "AllowancesApplied",
                            format!("the Hard budgets' grants of namespace {ns} are written again"),
                        );
                    }
                    self.hard.applied.insert(ns.clone(), doc);
                }
                Err(e) => {
                    self.ctx.metrics.config_not_applied("AllowancesNotApplied");
                    if self.hard.failing.insert(ns.clone()) {
                        let note = format!("{e}; gateways keep the grants last written (they spend at most those)");
                        self.allowances_event(
                            &ns,
                            EventType::Warning,
                            "AllowancesNotApplied",
                            crate::plan::clip_note(&note),
                        );
                    }
                    errors.push(e);
                }
            }
        }
        errors
    }

    /// Restores the ledgers of `budgets` (one namespace) from the ConfigMap's document and
    /// their statuses.
    fn restore_ledgers(&mut self, budgets: &[&ProviderBudget], doc: Option<&Allowances>) {
        for b in budgets {
            let key = ObjectKey::of(*b);
            let Some(mem) = self.state.budgets.get(&key) else { continue };
            let window = mem.window_start.as_second();
            let mut grants = grants_in(doc, &key.name, window);
            let status =
                b.status.as_ref().filter(|s| s.window.as_ref().is_some_and(|w| w.start.0.as_second() == window));
            let hard = status.and_then(|s| s.hard.as_ref());
            if let Some(h) = hard {
                merge_max(
                    &mut grants,
                    h.grants.iter().filter_map(|g| Some((g.gateway.clone(), g.granted.parse().ok()?))).collect(),
                );
            }
            if !grants.is_empty() {
                info!(budget = %key, window, gateways = grants.len(), "restored Hard budget grants");
            }
            let ledger = BudgetLedger {
                window,
                grants,
                refused: hard.map_or(0, |h| h.refused),
                restored: true,
                ..Default::default()
            };
            self.hard.ledgers.insert(key, ledger);
        }
    }

    /// The new grants of one Hard budget, committed to its ledger; `None` when its window or
    /// limit is unknown.
    fn regrant_budget(
        &mut self,
        b: &ProviderBudget,
        targets: &[GatewayTarget],
        readings: &HardReadings,
    ) -> Option<HardBudgetGrants> {
        let key = ObjectKey::of(b);
        let limit = b.spec.limit.parse::<Money>().ok()?;
        let mem = self.state.budgets.get(&key)?;
        let window = mem.window_start.as_second();
        let spent_before = mem.spent;
        let floor = self.ctx.settings.hard_grant_floor;
        let ledger = self.hard.ledgers.entry(key.clone()).or_default();
        let first_round = std::mem::take(&mut ledger.restored);
        if ledger.window != window || ledger.grants.is_empty() {
            if ledger.window != window {
                *ledger = BudgetLedger {
                    window,
                    refused_last: std::mem::take(&mut ledger.refused_last),
                    ..Default::default()
                };
            }
            // Spend of this window that no grant covers (the budget was Soft, or the window
            // began before the gateways had its grants).
            if spent_before > Money::ZERO {
                ledger.grants.insert(BEFORE_GRANTS.to_string(), spent_before);
            }
        }
        let mut views: BTreeMap<String, GatewayView> = ledger
            .grants
            .iter()
            .map(|(k, g)| (k.clone(), GatewayView { granted: *g, spent: *g, burn: Money::ZERO, alive: false }))
            .collect();
        let mut reserved = Money::ZERO;
        let mut refused_now = 0u64;
        for t in targets.iter().filter(|t| t.namespace == key.namespace) {
            let Some(read) = readings.get(&t.uid) else { continue };
            // The id the gateway process reads its grants as (a restarted process is a new
            // instance), else its pod UID.
            let id = read.instance.clone().unwrap_or_else(|| t.uid.clone());
            let granted = ledger.grants.get(&id).copied().unwrap_or(Money::ZERO);
            let gauges = read.budgets.get(&key.name).copied();
            let (spent, burn) = match gauges {
                Some(g) => {
                    let before = ledger.seen.get(&id).map_or(g.settled, |p: &HardGauges| p.settled);
                    reserved += g.reserved;
                    let last = ledger.refused_last.insert(id.clone(), g.refused);
                    refused_now += match last {
                        Some(l) if g.refused >= l => g.refused - l,
                        Some(_) => g.refused,
                        None if first_round => 0,
                        None => g.refused,
                    };
                    ledger.seen.insert(id.clone(), g);
                    (g.settled + g.reserved, g.settled.saturating_sub(before))
                }
                None => (Money::ZERO, Money::ZERO),
            };
            views.insert(id, GatewayView { granted, spent, burn, alive: true });
        }
        ledger.reserved = reserved;
        ledger.refused += refused_now;
        let started = refused_now > 0 && !ledger.refusing;
        ledger.refusing = refused_now > 0;
        let grants = regrant(limit, &views, GrantPolicy { floor, burn_intervals: 2 });
        // Commit before writing: a write of unknown outcome counts as given.
        for (k, g) in &grants {
            let e = ledger.grants.entry(k.clone()).or_insert(Money::ZERO);
            *e = (*e).max(*g);
        }
        let out = HardBudgetGrants {
            name: key.name.clone(),
            provider: b.spec.provider.clone(),
            models: b.spec.models.clone(),
            limit: limit.to_decimal(0),
            window_start: window,
            grants: ledger.grants.iter().map(|(k, v)| (k.clone(), v.to_decimal(0))).collect(),
        };
        if started {
            let bound: Money = ledger.grants.values().copied().sum();
            let note = format!(
                "Hard budget {key} refused {refused_now} requests for want of allowance (limit ${limit}, granted ${bound} to {} gateways in the window)",
                ledger.grants.len()
            );
            warn!(budget = %key, refused = refused_now, "Hard budget started refusing requests");
            let event = Event {
                type_: EventType::Warning,
                reason: "HardBudgetRefusing".into(),
                note: Some(crate::plan::clip_note(&note)),
                action: "Admit".into(),
                secondary: None,
            };
            self.queue_event(event, b.object_ref(&()), format!("ProviderBudget {key}"));
        }
        Some(out)
    }

    /// The namespace's allowances document as the ConfigMap holds it (`None`: no ConfigMap,
    /// or one without a valid document, which is then logged).
    async fn read_allowances(&self, ns: &str) -> Result<Option<Allowances>, Error> {
        let name = self.ctx.settings.allowances_configmap.clone();
        let api: Api<ConfigMap> = Api::namespaced(self.ctx.client.clone(), ns);
        let cm = self.retrying(|| api.get_opt(&name)).await.map_err(|e| Error::ReadAllowances {
            namespace: ns.to_string(),
            name: name.clone(),
            source: Box::new(e),
        })?;
        let Some(text) = cm.as_ref().and_then(|c| c.data.as_ref()).and_then(|d| d.get(ALLOWANCES_KEY)) else {
            return Ok(None);
        };
        match Allowances::from_json(text.as_bytes()) {
            Ok(doc) => Ok(Some(doc)),
            Err(e) => {
                // Not ours to trust: the statuses' grants still restore what they hold.
                warn!(namespace = ns, configmap = %name, error = %e, "allowances ConfigMap unreadable; restoring from statuses only");
                Ok(None)
            }
        }
    }

    async fn apply_allowances(&self, ns: &str, doc: &Allowances) -> Result<(), Error> {
        let name = self.ctx.settings.allowances_configmap.clone();
        let body = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": ns, "labels": self.labels("gateway-allowances")},
            "data": {ALLOWANCES_KEY: doc.to_json()},
        });
        let api: Api<ConfigMap> = Api::namespaced(self.ctx.client.clone(), ns);
        let pp = PatchParams::apply(&self.ctx.settings.field_manager).force();
        let patch = Patch::Apply(&body);
        self.retrying(|| api.patch(&name, &pp, &patch)).await.map_err(|e| Error::ApplyAllowances {
            namespace: ns.to_string(),
            name: name.clone(),
            source: Box::new(e),
        })?;
        info!(namespace = ns, budgets = doc.budgets.len(), "applied Hard budget grants");
        Ok(())
    }

    fn allowances_event(&mut self, ns: &str, type_: EventType, reason: &str, note: String) {
        let name = self.ctx.settings.allowances_configmap.clone();
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("ConfigMap".into()),
            namespace: Some(ns.to_string()),
            name: Some(name.clone()),
            ..Default::default()
        };
        let event =
            Event { type_, reason: reason.into(), note: Some(note), action: "ApplyAllowances".into(), secondary: None };
        self.queue_event(event, reference, format!("ConfigMap {ns}/{name}"));
    }
}

/// Keeps `status.hard` of a Hard budget whose ledger is not restored yet (the first passes
/// after a start), drops it from a Soft one.
pub(super) fn hard_status(memory: &HardMemory, b: &ProviderBudget) -> Option<HardStatus> {
    if b.spec.enforcement != Enforcement::Hard {
        return None;
    }
    memory.status(&ObjectKey::of(b)).or_else(|| b.status.as_ref().and_then(|s| s.hard.clone()))
}
