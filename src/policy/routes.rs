//! Effective backend tables: tiers, strategies, budget and health decisions combined.
//!
//! Per backend, the state follows this precedence: Ejected (health) > budget Drain (OverBudget,
//! not serving) > budget Deprioritize (OverBudget, serving, moved to the last tier = highest
//! configured priority + 1) > Ramping (weight × stage percent) > Active. A backend is affected
//! by every budget of its namespace with its provider whose `models` is empty or contains its
//! model; the strongest action applies.
//!
//! Inside each tier the strategy sets the weights of the serving backends: `Weighted` keeps
//! them; `Priority` keeps the first (list order) and zeroes the others; `Cheapest` keeps the
//! backends with the lowest blended price (input + output per token, the input priced at the
//! prompt-cache share each backend achieved over the last hour: `cache_share`) and zeroes the
//! others;
//! `LowestLatency` multiplies each weight by a per-mille factor `1000 × lowest / own` of the
//! mean latencies, rounded to a multiple of 50 and at least 50 (so small jitter does not
//! rewrite the table); a backend with no known latency counts as the fastest.
//!
//! The best tier is the lowest tier with a serving backend of weight > 0; serving Active and
//! Ramping backends elsewhere (or with weight 0) become Standby and keep their weight for
//! failover. When serving backends remain but all have weight 0, those of the lowest such
//! tier are promoted to weight 1. When nothing serves: `Reject` → the route is Rejecting;
//! `Fallback` → fail open to one backend: healthy over-budget backends first, by lowest
//! spent/limit ratio, then ejected ones by earliest ejection end (then list order).
//!
//! What a restart must remember is written to typed `status.backends[]` fields (`trips`,
//! `ejectedUntil`, `rampStage`, `rampStageSince`, `failOpen`, `deprioritizedBy`); reasons and
//! messages are for people only (`controller::restore` reads the typed fields back).
//!
//! `DryRun`: `decided` is the decision, `table` the configured table; `RouteDecision::state`
//! is `Serving` (what the gateway does) while `status.state` and the transitions report the
//! decision.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::budget::BudgetEffect;
use super::common::{clip, invalid_spec_transition};
use super::health::{self, BackendHealth, HealthParams, Phase};
use super::table::{RowInput, Table, blended_price, budget_hit, build_table};
use super::{
    BackendKey, ConditionSpec, EffectiveBackend, Inputs, ObjectKind, RouteDecision, RouteInput, Transition,
    merge_conditions,
};
use crate::api::{
    BackendState, BackendStatus, Condition, Mode, ModelRouteStatus, Rotation, RouteState, Strategy, ThresholdAction,
    Time, condition,
};

/// What a route remembers between evaluations.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteMemory {
    /// The table last decided.
    pub table: Vec<EffectiveBackend>,
    /// Conditions last reported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Per backend: its decided state and since when.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub since: BTreeMap<String, BackendSince>,
    /// Route state last decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<RouteState>,
    /// The backend failed open to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_open: Option<String>,
    /// Traffic shares of the best tier last decided (`a=70,b=30`; `none`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<String>,
    /// The most recent rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation: Option<Rotation>,
}

/// A backend's decided state and when it entered it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendSince {
    /// State.
    pub state: BackendState,
    /// Since.
    pub since: Timestamp,
}

/// Traffic shares of the best tier in percent (largest remainder), `a=70,b=30`; `none`.
pub fn shares(rows: &[EffectiveBackend]) -> String {
    let best = rows.iter().filter(|r| r.serving && r.weight > 0).map(|r| r.tier).min();
    let live: Vec<&EffectiveBackend> =
        rows.iter().filter(|r| r.serving && r.weight > 0 && Some(r.tier) == best).collect();
    let total: u64 = live.iter().map(|r| u64::from(r.weight)).sum();
    if live.is_empty() || total == 0 {
        return "none".into();
    }
    let mut parts: Vec<(u64, u64)> =
        live.iter().map(|r| (u64::from(r.weight) * 100 / total, u64::from(r.weight) * 100 % total)).collect();
    let given: u64 = parts.iter().map(|p| p.0).sum();
    let mut order: Vec<usize> = (0..parts.len()).collect();
    order.sort_by(|&a, &b| parts[b].1.cmp(&parts[a].1).then(a.cmp(&b)));
    for &i in order.iter().take(100u64.saturating_sub(given) as usize) {
        parts[i].0 += 1;
    }
    live.iter().zip(parts).map(|(r, (s, _))| format!("{}={s}", r.name)).collect::<Vec<_>>().join(",")
}

fn same_row(a: &EffectiveBackend, b: &EffectiveBackend) -> bool {
    a.tier == b.tier && a.weight == b.weight && a.serving == b.serving && a.state == b.state
}

fn rotation_reason(before: &[EffectiveBackend], after: &[EffectiveBackend], strategy: Strategy) -> String {
    let changed: Vec<String> = after
        .iter()
        .filter(|r| before.iter().find(|p| p.name == r.name).is_none_or(|p| !same_row(p, r)))
        .map(|r| format!("{}: {}", r.name, r.reason.clone().unwrap_or_else(|| format!("{:?}", r.state))))
        .collect();
    if changed.is_empty() {
        format!("strategy {strategy:?} reweighted")
    } else {
        let mut s = changed.join("; ");
        if s.len() > 512 {
            s = clip(s);
        }
        s
    }
}

/// What evaluating one route produced.
pub(crate) struct RouteEval {
    pub(crate) decision: RouteDecision,
    pub(crate) memory: RouteMemory,
    pub(crate) health: Vec<(BackendKey, BackendHealth)>,
    pub(crate) transitions: Vec<Transition>,
}

/// One route's evaluation in progress: the steps below fill it in order.
struct RouteCtx<'a> {
    route: &'a RouteInput,
    now: Timestamp,
    dry: bool,
    /// `"dry run: "` in DryRun mode, so every message says it.
    prefix: &'static str,
    prev: Option<&'a RouteMemory>,
    /// Spec problems found on the way (each names its field); they skip a rule, not the route.
    errors: Vec<String>,
    transitions: Vec<Transition>,
}

impl RouteCtx<'_> {
    fn push(&mut self, reason: &str, warning: bool, message: String, evidence: BTreeMap<String, String>) {
        self.transitions.push(Transition {
            kind: ObjectKind::ModelRoute,
            object: self.route.key.clone(),
            reason: reason.into(),
            message: clip(message),
            warning,
            evidence,
            time: self.now,
        });
    }
}

/// The decided table's verdict on the route.
struct Verdict {
    state: RouteState,
    out_of_rotation: Vec<String>,
    fail_open: Option<String>,
    /// Traffic shares of the decided table, and of the configured one.
    signature: String,
    base_signature: String,
}

/// Evaluates one route: health, row inputs, tables, verdict, transitions, conditions, status.
pub(crate) fn evaluate_route(r: &RouteInput, effects: &[BudgetEffect], inputs: &Inputs<'_>) -> RouteEval {
    let dry = r.spec.mode == Mode::DryRun;
    let mut cx = RouteCtx {
        route: r,
        now: inputs.now,
        dry,
        prefix: if dry { "dry run: " } else { "" },
        prev: inputs.previous.routes.get(&r.key),
        errors: Vec::new(),
        transitions: Vec::new(),
    };
    let (params, keys, healths) = health_step(&mut cx, inputs);
    let rows_in = row_inputs(&mut cx, params.as_ref(), &healths, effects);
    let spec = &r.spec;
    let decided = build_table(&rows_in, spec.strategy, spec.budget.on_exhausted, true);
    let baseline = build_table(&rows_in, spec.strategy, spec.budget.on_exhausted, false);
    let verdict = verdict(&decided, &baseline);
    let last_rotation = rotation_step(&mut cx, &decided, &baseline, &verdict);
    alert_transitions(&mut cx, &decided, &rows_in, &verdict);
    let conditions = route_conditions(&mut cx, &decided, &baseline, &verdict);
    let (backends, since) = backend_statuses(&cx, &decided, &rows_in, &healths, params.as_ref());

    let active = decided.rows.iter().filter(|r| r.serving && r.weight > 0 && Some(r.tier) == decided.best_tier).count();
    let status = ModelRouteStatus {
        observed_generation: r.generation,
        conditions: conditions.clone(),
        state: Some(verdict.state),
        active: Some(u32::try_from(active).unwrap_or(u32::MAX)),
        backends,
        last_rotation: last_rotation.clone(),
        gateways: None,
    };
    let memory = RouteMemory {
        table: decided.rows.clone(),
        conditions,
        since,
        state: Some(verdict.state),
        fail_open: verdict.fail_open,
        serving: Some(verdict.signature),
        last_rotation,
    };
    let configured = spec
        .backends
        .iter()
        .map(|b| EffectiveBackend {
            name: b.name.clone(),
            tier: b.priority,
            weight: b.weight,
            state: BackendState::Active,
            serving: true,
            reason: None,
        })
        .collect();
    let decision = RouteDecision {
        alias: r.alias(),
        strategy: spec.strategy,
        mode: spec.mode,
        on_exhausted: spec.budget.on_exhausted,
        state: if dry { RouteState::Serving } else { verdict.state },
        table: if dry { configured } else { decided.rows.clone() },
        decided: decided.rows,
        status,
    };
    RouteEval { decision, memory, health: keys.into_iter().zip(healths).collect(), transitions: cx.transitions }
}

/// Step 1: the health rule (skipped, keeping the previous health, when the policy is invalid).
fn health_step(
    cx: &mut RouteCtx<'_>,
    inputs: &Inputs<'_>,
) -> (Option<HealthParams>, Vec<BackendKey>, Vec<BackendHealth>) {
    let route = cx.route;
    let (key, spec) = (&route.key, &route.spec);
    let params = HealthParams::parse(&spec.health).map_err(|e| cx.errors.push(e)).ok();
    let keys: Vec<BackendKey> =
        spec.backends.iter().map(|b| BackendKey::new(&key.namespace, &key.name, &b.name)).collect();
    let healths = match &params {
        Some(p) => {
            let prev = &inputs.previous.backends;
            let (h, t) = health::evaluate_route(key, &spec.backends, p, prev, inputs.observations, cx.now, cx.dry);
            cx.transitions.extend(t);
            h
        }
        None => keys.iter().map(|k| inputs.previous.backends.get(k).cloned().unwrap_or_default()).collect(),
    };
    (params, keys, healths)
}

/// Step 2: what the table needs to know about each backend.
fn row_inputs<'a>(
    cx: &mut RouteCtx<'a>,
    params: Option<&HealthParams>,
    healths: &[BackendHealth],
    effects: &[BudgetEffect],
) -> Vec<RowInput<'a>> {
    let route: &'a RouteInput = cx.route;
    let spec = &route.spec;
    let mut rows_in = Vec::with_capacity(spec.backends.len());
    for (i, b) in spec.backends.iter().enumerate() {
        let h = &healths[i];
        let price = if spec.strategy == Strategy::Cheapest {
            blended_price(b, i, super::cache_share::shares(&h.input_samples)).map_err(|e| cx.errors.push(e)).ok()
        } else {
            None
        };
        let (ejected_until, ramp, suppressed) = match params {
            Some(p) => (
                h.ejected_until(),
                match h.phase {
                    Phase::Ramping { stage, .. } => h.ramp_percent(&p.ramp_up).map(|pc| (pc, stage, p.ramp_up.len())),
                    _ => None,
                },
                h.suppressed,
            ),
            // The health rule could not run: no health decision applies.
            None => (None, None, false),
        };
        rows_in.push(RowInput {
            backend: b,
            ejected_until,
            slow: ejected_until.is_some() && h.latency_trip.is_some(),
            ramp,
            suppressed,
            budget: budget_hit(effects, &route.key.namespace, b),
            latency_ms: h.latency_ms,
            price,
        });
    }
    rows_in
}

/// Step 3: the route's state and traffic shares from the decided table.
fn verdict(decided: &Table, baseline: &Table) -> Verdict {
    let out_of_rotation: Vec<String> = decided
        .rows
        .iter()
        .filter(|r| matches!(r.state, BackendState::Ejected | BackendState::OverBudget))
        .map(|r| format!("{} {:?}", r.name, r.state))
        .collect();
    let fail_open = decided.fail_open.map(|i| decided.rows[i].name.clone());
    let state = if decided.rejecting {
        RouteState::Rejecting
    } else if fail_open.is_some() || !out_of_rotation.is_empty() {
        RouteState::Degraded
    } else {
        RouteState::Serving
    };
    Verdict {
        state,
        out_of_rotation,
        fail_open,
        signature: shares(&decided.rows),
        base_signature: shares(&baseline.rows),
    }
}

/// Step 4: a `RouteRotated` transition when the best tier's traffic shares changed; returns
/// the most recent rotation.
fn rotation_step(cx: &mut RouteCtx<'_>, decided: &Table, baseline: &Table, v: &Verdict) -> Option<Rotation> {
    let prev = cx.prev;
    let prev_signature = prev.and_then(|m| m.serving.clone()).unwrap_or_else(|| v.base_signature.clone());
    let last_rotation = prev.and_then(|m| m.last_rotation.clone());
    if v.signature == prev_signature {
        return last_rotation;
    }
    let spec = &cx.route.spec;
    let before = prev.map_or(&baseline.rows, |m| &m.table);
    let reason = rotation_reason(before, &decided.rows, spec.strategy);
    let mut ev = BTreeMap::new();
    ev.insert("from".into(), prev_signature.clone());
    ev.insert("to".into(), v.signature.clone());
    ev.insert("reason".into(), reason.clone());
    ev.insert("mode".into(), format!("{:?}", spec.mode));
    let message =
        format!("{}route {} rotated from {prev_signature} to {}: {reason}", cx.prefix, cx.route.key.name, v.signature);
    cx.push("RouteRotated", false, message, ev);
    Some(Rotation { time: Time(cx.now), from: prev_signature, to: v.signature.clone(), reason })
}

/// Step 5: `RouteRejecting` and `RouteFailOpen`, once each when they start.
fn alert_transitions(cx: &mut RouteCtx<'_>, decided: &Table, rows_in: &[RowInput<'_>], v: &Verdict) {
    let (prefix, name) = (cx.prefix, cx.route.key.name.clone());
    let prev_state = cx.prev.and_then(|m| m.state);
    if v.state == RouteState::Rejecting && prev_state != Some(RouteState::Rejecting) {
        let states = decided.rows.iter().map(|r| format!("{}={:?}", r.name, r.state)).collect::<Vec<_>>().join(",");
        let mut ev = BTreeMap::new();
        ev.insert("backends".into(), states.clone());
        ev.insert("onExhausted".into(), "Reject".into());
        let message =
            format!("{prefix}route {name} rejects requests (429 budget_exhausted): no backend can serve ({states})");
        cx.push("RouteRejecting", true, message, ev);
    }
    if let (Some(backend), Some(i)) = (&v.fail_open, decided.fail_open)
        && cx.prev.and_then(|m| m.fail_open.as_ref()) != Some(backend)
    {
        let why = decided.rows[i].reason.clone().unwrap_or_default();
        let mut ev = BTreeMap::new();
        ev.insert("backend".into(), backend.clone());
        ev.insert("onExhausted".into(), "Fallback".into());
        if let Some(h) = &rows_in[i].budget {
            ev.insert("budget".into(), h.budget.to_string());
            ev.insert("usedPpm".into(), h.ratio.to_string());
        }
        if let Some(u) = rows_in[i].ejected_until {
            ev.insert("ejectedUntil".into(), u.to_string());
        }
        cx.push("RouteFailOpen", true, format!("{prefix}route {name} fails open to backend {backend}: {why}"), ev);
    }
}

/// Step 6: `Ready`, `Degraded` and `Rotated` (and an `InvalidSpec` transition for new errors).
fn route_conditions(cx: &mut RouteCtx<'_>, decided: &Table, baseline: &Table, v: &Verdict) -> Vec<Condition> {
    let (prefix, now) = (cx.prefix, cx.now);
    let prev_conditions: &[Condition] = cx.prev.map_or(&[], |m| &m.conditions);
    let signature = &v.signature;
    let ready = if cx.errors.is_empty() {
        if cx.dry {
            ConditionSpec {
                type_: condition::READY,
                status: true,
                reason: "DryRun".into(),
                message: format!(
                    "dry run: decisions are reported, the configured table is rendered (decided: {signature})"
                ),
            }
        } else {
            ConditionSpec {
                type_: condition::READY,
                status: true,
                reason: "Enforced".into(),
                message: format!("decisions applied to the backend table (serving: {signature})"),
            }
        }
    } else {
        let message = clip(format!("{prefix}rule skipped: {}", cx.errors.join("; ")));
        let key = &cx.route.key;
        if let Some(t) = invalid_spec_transition(ObjectKind::ModelRoute, key, prev_conditions, &message, now) {
            cx.transitions.push(t);
        }
        ConditionSpec { type_: condition::READY, status: false, reason: "InvalidSpec".into(), message }
    };
    let degraded = |status, reason: &str, message| ConditionSpec {
        type_: condition::DEGRADED,
        status,
        reason: reason.into(),
        message,
    };
    let degraded = match (v.state, &v.fail_open) {
        (RouteState::Rejecting, _) => {
            degraded(true, "Rejecting", format!("{prefix}no backend can serve; requests are rejected"))
        }
        (RouteState::Degraded, Some(b)) => degraded(true, "FailOpen", format!("{prefix}failing open to {b}")),
        (RouteState::Degraded, None) => {
            degraded(true, "BackendsOutOfRotation", clip(format!("{prefix}{}", v.out_of_rotation.join(", "))))
        }
        (RouteState::Serving, _) => degraded(false, "Serving", format!("{prefix}no backend is ejected or over budget")),
    };
    let rotated = decided.rows.len() != baseline.rows.len()
        || decided.rows.iter().zip(&baseline.rows).any(|(a, b)| !same_row(a, b));
    let rotated = if rotated {
        ConditionSpec {
            type_: condition::ROTATED,
            status: true,
            reason: "TableRotated".into(),
            message: format!("{prefix}serving {signature} (configured: {})", v.base_signature),
        }
    } else {
        ConditionSpec {
            type_: condition::ROTATED,
            status: false,
            reason: "AsConfigured".into(),
            message: format!("{prefix}the decided table is the configured one"),
        }
    };
    merge_conditions(prev_conditions, &[ready, degraded, rotated], cx.route.generation, now)
}

/// Step 7: per-backend status, with the typed memory a restart reads back (trips, ejection
/// end, ramp stage, fail-open, deprioritizing budget), and each backend's state-since.
fn backend_statuses(
    cx: &RouteCtx<'_>,
    decided: &Table,
    rows_in: &[RowInput<'_>],
    healths: &[BackendHealth],
    params: Option<&HealthParams>,
) -> (Vec<BackendStatus>, BTreeMap<String, BackendSince>) {
    let health_ran = params.is_some();
    let now = cx.now;
    let mut since = BTreeMap::new();
    let mut backends = Vec::with_capacity(decided.rows.len());
    for (i, row) in decided.rows.iter().enumerate() {
        let s = match cx.prev.and_then(|m| m.since.get(&row.name)) {
            Some(p) if p.state == row.state => p.since,
            _ => now,
        };
        since.insert(row.name.clone(), BackendSince { state: row.state, since: s });
        let h = &healths[i];
        let (error_rate, requests) = match (health_ran, &h.last_trip, h.phase) {
            (false, _, _) => (None, None),
            (true, Some(t), Phase::Ejected { .. }) => (Some(t.error_rate.to_decimal()), Some(t.requests)),
            (true, _, _) => {
                let (req, _) = h.window_totals();
                (h.error_rate().map(|p| p.to_decimal()), Some(req))
            }
        };
        let lat = latency_status(params, h);
        let (ramp_stage, ramp_stage_since) = match h.phase {
            Phase::Ramping { stage, stage_started, .. } => (Some(stage.saturating_add(1)), Some(Time(stage_started))),
            _ => (None, None),
        };
        let deprioritized_by = rows_in[i]
            .budget
            .as_ref()
            .filter(|hit| hit.action == ThresholdAction::Deprioritize && row.state == BackendState::OverBudget)
            .map(|hit| hit.budget.name.clone());
        backends.push(BackendStatus {
            name: row.name.clone(),
            state: row.state,
            effective_weight: row.weight,
            tier: row.tier,
            reason: row.reason.clone(),
            since: Some(Time(s)),
            error_rate,
            requests,
            latency_p95: lat.as_ref().and_then(|l| l.0.clone()),
            latency_requests: lat.as_ref().map(|l| l.1),
            latency_budget: lat.map(|l| l.2),
            ejected_until: rows_in[i].ejected_until.map(Time),
            trips: (h.trips > 0).then_some(h.trips),
            healthy_since: h.healthy_since.filter(|_| h.trips > 0 && h.phase == Phase::Healthy).map(Time),
            ramp_stage,
            ramp_stage_since,
            fail_open: decided.fail_open == Some(i),
            deprioritized_by,
        });
    }
    (backends, since)
}

/// A backend's latency evidence for status, with `health.latency`: (p95, answers, budget) of
/// the trip while ejected for latency, else of the current window (p95 `None` without answers).
fn latency_status(params: Option<&HealthParams>, h: &BackendHealth) -> Option<(Option<String>, u64, String)> {
    let lp = params?.latency.as_ref()?;
    if let (Phase::Ejected { .. }, Some(t)) = (h.phase, &h.latency_trip) {
        return Some((Some(t.p95.display()), t.requests, health::fmt_ms(t.budget_ms)));
    }
    let le = super::latency::window(&h.latency_samples, None);
    let budget = match h.phase {
        Phase::Ramping { .. } => lp.recover_ms,
        _ => lp.trip_ms,
    };
    Some((super::latency::p95(&le).map(|p| p.display()), super::latency::answers(&le), health::fmt_ms(budget)))
}

#[cfg(test)]
#[path = "routes_tests.rs"]
mod tests;
