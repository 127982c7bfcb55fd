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
//! backends with the lowest blended price (input + output per token) and zeroes the others;
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
//! `DryRun`: `decided` is the decision, `table` the configured table; `RouteDecision::state`
//! is `Serving` (what the gateway does) while `status.state` and the transitions report the
//! decision.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde::{Deserialize, Serialize};

use super::budget::{self, BudgetEffect};
use super::health::{self, BackendHealth, HealthParams, Phase};
use super::{
    BackendKey, ConditionSpec, Decision, DecisionState, EffectiveBackend, Inputs, Money, ObjectKey, ObjectKind,
    PricePerMillion, RouteDecision, Transition, merge_conditions,
};
use crate::api::condition;
use crate::api::{
    Backend, BackendState, BackendStatus, Mode, ModelRoute, ModelRouteStatus, OnExhausted, Rotation, RouteState,
    Strategy, ThresholdAction,
};

/// Longest transition message (bytes), kept under the 1024 the Event API accepts.
const MAX_MESSAGE: usize = 1000;

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

/// `ts + ms`, saturating at the representable range.
pub(crate) fn add_ms(ts: Timestamp, ms: i64) -> Timestamp {
    ts.checked_add(SignedDuration::from_millis(ms)).unwrap_or(if ms >= 0 { Timestamp::MAX } else { Timestamp::MIN })
}

/// Cuts a message to fewer than 1024 bytes, on a character boundary.
pub(crate) fn clip_message(mut s: String) -> String {
    if s.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE - 3;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

/// An `InvalidSpec` warning, unless the previous Ready condition already said the same.
pub(crate) fn invalid_spec_transition(
    kind: ObjectKind,
    key: &ObjectKey,
    previous: &[Condition],
    message: &str,
    now: Timestamp,
) -> Option<Transition> {
    let same = previous.iter().any(|c| c.type_ == condition::READY && c.status == "False" && c.message == message);
    (!same).then(|| Transition {
        kind,
        object: key.clone(),
        reason: "InvalidSpec".into(),
        message: message.to_string(),
        warning: true,
        evidence: BTreeMap::from([("error".to_string(), message.to_string())]),
        time: now,
    })
}

/// Runs every rule once: budgets first, then each route (health, then table).
pub fn evaluate(inputs: Inputs<'_>) -> Decision {
    let now = inputs.now;
    let mut transitions = Vec::new();
    let mut state = DecisionState::default();
    let mut budgets = BTreeMap::new();
    let mut effects: Vec<BudgetEffect> = Vec::new();
    for b in inputs.budgets {
        let key = ObjectKey::of(b);
        let ev = budget::evaluate_budget(b, inputs.observations, inputs.previous.budgets.get(&key), now);
        transitions.extend(ev.transitions);
        state.budgets.insert(key.clone(), ev.memory);
        budgets.insert(key, ev.decision);
        effects.push(ev.effect);
    }
    effects.sort_by(|a, b| a.key.cmp(&b.key));

    let mut routes = BTreeMap::new();
    for r in inputs.routes {
        let ev = evaluate_route(r, &effects, &inputs);
        transitions.extend(ev.transitions);
        for (k, h) in ev.health {
            state.backends.insert(k, h);
        }
        state.routes.insert(ev.key.clone(), ev.memory);
        routes.insert(ev.key, ev.decision);
    }
    // Budgets first (they cause route changes), then by object; stable inside an object.
    transitions.sort_by(|a, b| {
        let rank = |k: ObjectKind| u8::from(k != ObjectKind::ProviderBudget);
        rank(a.kind).cmp(&rank(b.kind)).then_with(|| a.object.cmp(&b.object))
    });
    Decision { routes, budgets, transitions, state }
}

/// The strongest budget action on one backend.
#[derive(Clone, Debug, PartialEq)]
struct BudgetHit {
    action: ThresholdAction,
    budget: ObjectKey,
    /// spent/limit in millionths of the budget that applies (the most over among the strongest).
    ratio: i128,
}

/// Everything the table needs to know about one backend.
#[derive(Clone, Debug)]
struct RowInput<'a> {
    backend: &'a Backend,
    ejected_until: Option<Timestamp>,
    ramp: Option<(u32, u32, usize)>, // (percent, stage index, stages)
    suppressed: bool,
    budget: Option<BudgetHit>,
    latency_ms: Option<u64>,
    price: Option<Money>,
}

/// A decided table and how it came about.
#[derive(Clone, Debug, PartialEq)]
struct Table {
    rows: Vec<EffectiveBackend>,
    fail_open: Option<usize>,
    rejecting: bool,
    best_tier: Option<u32>,
}

fn budget_hit(effects: &[BudgetEffect], namespace: &str, b: &Backend) -> Option<BudgetHit> {
    effects
        .iter()
        .filter(|e| e.covers(namespace, &b.provider, &b.model))
        .filter_map(|e| e.action.map(|a| (a, e.ratio_millionths(), e)))
        // Strongest action, then most over, then the first key.
        .fold(None::<(ThresholdAction, i128, &BudgetEffect)>, |best, cur| match best {
            Some(b) if (b.0, b.1) >= (cur.0, cur.1) => Some(b),
            _ => Some(cur),
        })
        .map(|(action, ratio, e)| BudgetHit { action, budget: e.key.clone(), ratio })
}

fn blended_price(b: &Backend, i: usize) -> Result<Money, String> {
    let p = |field: &str, s: &str| {
        s.parse::<PricePerMillion>().map_err(|e| format!("spec.backends[{i}].pricing.{field}: {e}"))
    };
    Ok(p("input", &b.pricing.input)?.per_token() + p("output", &b.pricing.output)?.per_token())
}

fn base_row(inp: &RowInput<'_>, last_tier: u32, interventions: bool) -> EffectiveBackend {
    let b = inp.backend;
    let row = |state, tier, weight, serving, reason: Option<String>| EffectiveBackend {
        name: b.name.clone(),
        tier,
        weight,
        state,
        serving,
        reason,
    };
    if !interventions {
        return row(BackendState::Active, b.priority, b.weight, true, None);
    }
    if let Some(until) = inp.ejected_until {
        return row(BackendState::Ejected, b.priority, 0, false, Some(format!("ejected for errors until {until}")));
    }
    if let Some(hit) = inp.budget.as_ref().filter(|h| h.action == ThresholdAction::Drain) {
        return row(BackendState::OverBudget, b.priority, 0, false, Some(format!("budget {}: Drain", hit.budget)));
    }
    let weight = inp.ramp.map_or(b.weight, |(p, _, _)| health::ramp_weight(b.weight, p));
    let ramp_note = inp.ramp.map(|(p, s, n)| format!("ramping stage {}/{n} at {p}%", s + 1));
    if let Some(hit) = inp.budget.as_ref().filter(|h| h.action == ThresholdAction::Deprioritize) {
        let mut reason = format!("budget {}: Deprioritize, moved to tier {last_tier}", hit.budget);
        if let Some(n) = ramp_note {
            reason = format!("{reason}; {n}");
        }
        return row(BackendState::OverBudget, last_tier, weight, true, Some(reason));
    }
    if let Some(n) = ramp_note {
        return row(BackendState::Ramping, b.priority, weight, true, Some(n));
    }
    let reason = inp.suppressed.then(|| "would eject: maxEjectedPercent reached".to_string());
    row(BackendState::Active, b.priority, b.weight, true, reason)
}

/// Rounds a per-mille latency factor to a multiple of 50 in 50..=1000.
fn latency_factor(lowest: u64, own: u64) -> u32 {
    let f = lowest.max(1).saturating_mul(1000) / own.max(1);
    let q = (f + 25) / 50 * 50;
    u32::try_from(q.clamp(50, 1000)).unwrap_or(1000)
}

fn apply_strategy(rows: &mut [EffectiveBackend], inputs: &[RowInput<'_>], strategy: Strategy) {
    let mut tiers: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        if r.serving && r.weight > 0 {
            tiers.entry(r.tier).or_default().push(i);
        }
    }
    for group in tiers.values() {
        match strategy {
            Strategy::Weighted => {}
            Strategy::Priority => {
                let first = rows[group[0]].name.clone();
                for &i in &group[1..] {
                    rows[i].weight = 0;
                    rows[i].reason = Some(format!("strategy Priority: {first} serves first"));
                }
            }
            Strategy::Cheapest => {
                let prices: Option<Vec<Money>> = group.iter().map(|&i| inputs[i].price).collect();
                let Some(prices) = prices else { continue };
                let Some(min) = prices.iter().min().copied() else {
                    continue;
                };
                let cheapest: Vec<String> =
                    group.iter().zip(&prices).filter(|(_, p)| **p == min).map(|(&i, _)| rows[i].name.clone()).collect();
                for (&i, p) in group.iter().zip(&prices) {
                    if *p != min {
                        rows[i].weight = 0;
                        rows[i].reason = Some(format!("strategy Cheapest: {} cheaper", cheapest.join(",")));
                    }
                }
            }
            Strategy::LowestLatency => {
                let Some(lowest) = group.iter().filter_map(|&i| inputs[i].latency_ms).min() else {
                    continue;
                };
                for &i in group {
                    let factor = inputs[i].latency_ms.map_or(1000, |own| latency_factor(lowest, own));
                    rows[i].weight = rows[i].weight.saturating_mul(factor);
                    if factor < 1000 {
                        rows[i].reason = Some(format!("strategy LowestLatency: {}‰ of the fastest", factor));
                    }
                }
            }
        }
    }
}

fn build_table(inputs: &[RowInput<'_>], strategy: Strategy, on_exhausted: OnExhausted, interventions: bool) -> Table {
    let last_tier = inputs.iter().map(|i| i.backend.priority).max().unwrap_or(0).saturating_add(1);
    let mut rows: Vec<EffectiveBackend> = inputs.iter().map(|i| base_row(i, last_tier, interventions)).collect();
    apply_strategy(&mut rows, inputs, strategy);

    let mut fail_open = None;
    let mut rejecting = false;
    if !rows.iter().any(|r| r.serving) {
        match on_exhausted {
            OnExhausted::Reject => rejecting = true,
            OnExhausted::Fallback => {
                let pick = inputs
                    .iter()
                    .enumerate()
                    .min_by_key(|(i, inp)| {
                        let ejected = inp.ejected_until.map(|t| t.as_millisecond());
                        let ratio = inp.budget.as_ref().map_or(0, |h| h.ratio);
                        (inp.backend.weight == 0, ejected.is_some(), ejected.unwrap_or(0), ratio, *i)
                    })
                    .map(|(i, _)| i);
                if let Some(i) = pick {
                    let inp = &inputs[i];
                    let why = if inp.ejected_until.is_some() {
                        "fail open: nothing else serves, its ejection ends first".to_string()
                    } else {
                        let b = inp.budget.as_ref().map_or(String::new(), |h| format!(" ({})", h.budget));
                        format!("fail open: nothing else serves, least over budget{b}")
                    };
                    let row = &mut rows[i];
                    row.serving = true;
                    row.weight = inp.backend.weight.max(1);
                    row.tier = inp.backend.priority;
                    row.reason = Some(why);
                    fail_open = Some(i);
                }
            }
        }
    }
    if rows.iter().any(|r| r.serving) && !rows.iter().any(|r| r.serving && r.weight > 0) {
        let tier = rows.iter().filter(|r| r.serving).map(|r| r.tier).min();
        for r in rows.iter_mut().filter(|r| r.serving && Some(r.tier) == tier) {
            r.weight = 1;
            r.reason = Some("standby promoted: nothing else serves".into());
        }
    }
    let best_tier = rows.iter().filter(|r| r.serving && r.weight > 0).map(|r| r.tier).min();
    for r in rows.iter_mut() {
        if !r.serving || !matches!(r.state, BackendState::Active | BackendState::Ramping) {
            continue;
        }
        if Some(r.tier) != best_tier {
            let note = format!("standby: tier {} serves", best_tier.unwrap_or_default());
            r.reason = Some(match r.reason.take() {
                Some(prev) if r.state == BackendState::Ramping => format!("{prev}; {note}"),
                _ => note,
            });
            r.state = BackendState::Standby;
        } else if r.weight == 0 {
            if r.reason.is_none() {
                r.reason = Some("standby: weight 0".into());
            }
            r.state = BackendState::Standby;
        }
    }
    Table { rows, fail_open, rejecting, best_tier }
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
            s = clip_message(s);
        }
        s
    }
}

struct RouteEval {
    key: ObjectKey,
    decision: RouteDecision,
    memory: RouteMemory,
    health: Vec<(BackendKey, BackendHealth)>,
    transitions: Vec<Transition>,
}

fn evaluate_route(r: &ModelRoute, effects: &[BudgetEffect], inputs: &Inputs<'_>) -> RouteEval {
    let key = ObjectKey::of(r);
    let now = inputs.now;
    let spec = &r.spec;
    let generation = r.metadata.generation;
    let dry = spec.mode == Mode::DryRun;
    let prefix = if dry { "dry run: " } else { "" };
    let prev = inputs.previous.routes.get(&key);
    let mut errors: Vec<String> = Vec::new();

    let params = HealthParams::parse(&spec.health).map_err(|e| errors.push(e)).ok();
    let keys: Vec<BackendKey> =
        spec.backends.iter().map(|b| BackendKey::new(&key.namespace, &key.name, &b.name)).collect();
    let (healths, mut transitions) = match &params {
        Some(p) => {
            health::evaluate_route(&key, &spec.backends, p, &inputs.previous.backends, inputs.observations, now, dry)
        }
        None => {
            (keys.iter().map(|k| inputs.previous.backends.get(k).cloned().unwrap_or_default()).collect(), Vec::new())
        }
    };

    let mut rows_in = Vec::with_capacity(spec.backends.len());
    for (i, b) in spec.backends.iter().enumerate() {
        let h = &healths[i];
        let price = if spec.strategy == Strategy::Cheapest {
            blended_price(b, i).map_err(|e| errors.push(e)).ok()
        } else {
            None
        };
        let (ejected_until, ramp, suppressed) = match &params {
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
            ramp,
            suppressed,
            budget: budget_hit(effects, &key.namespace, b),
            latency_ms: h.latency_ms,
            price,
        });
    }

    let decided = build_table(&rows_in, spec.strategy, spec.budget.on_exhausted, true);
    let baseline = build_table(&rows_in, spec.strategy, spec.budget.on_exhausted, false);
    let configured: Vec<EffectiveBackend> = spec
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

    let out_of_rotation: Vec<String> = decided
        .rows
        .iter()
        .filter(|r| matches!(r.state, BackendState::Ejected | BackendState::OverBudget))
        .map(|r| format!("{} {:?}", r.name, r.state))
        .collect();
    let fail_open_name = decided.fail_open.map(|i| decided.rows[i].name.clone());
    let decided_state = if decided.rejecting {
        RouteState::Rejecting
    } else if fail_open_name.is_some() || !out_of_rotation.is_empty() {
        RouteState::Degraded
    } else {
        RouteState::Serving
    };

    // Rotation: the best tier's traffic shares changed.
    let signature = shares(&decided.rows);
    let base_signature = shares(&baseline.rows);
    let prev_signature = prev.and_then(|m| m.serving.clone()).unwrap_or_else(|| base_signature.clone());
    let mut last_rotation = prev.and_then(|m| m.last_rotation.clone());
    if signature != prev_signature {
        let before = prev.map_or(&baseline.rows, |m| &m.table);
        let reason = rotation_reason(before, &decided.rows, spec.strategy);
        let mut ev = BTreeMap::new();
        ev.insert("from".into(), prev_signature.clone());
        ev.insert("to".into(), signature.clone());
        ev.insert("reason".into(), reason.clone());
        ev.insert("mode".into(), format!("{:?}", spec.mode));
        transitions.push(Transition {
            kind: ObjectKind::ModelRoute,
            object: key.clone(),
            reason: "RouteRotated".into(),
            message: clip_message(format!(
                "{prefix}route {} rotated from {prev_signature} to {signature}: {reason}",
                key.name
            )),
            warning: false,
            evidence: ev,
            time: now,
        });
        last_rotation = Some(Rotation { time: Time(now), from: prev_signature, to: signature.clone(), reason });
    }
    let prev_state = prev.and_then(|m| m.state);
    if decided_state == RouteState::Rejecting && prev_state != Some(RouteState::Rejecting) {
        let states = decided.rows.iter().map(|r| format!("{}={:?}", r.name, r.state)).collect::<Vec<_>>().join(",");
        let mut ev = BTreeMap::new();
        ev.insert("backends".into(), states.clone());
        ev.insert("onExhausted".into(), "Reject".into());
        transitions.push(Transition {
            kind: ObjectKind::ModelRoute,
            object: key.clone(),
            reason: "RouteRejecting".into(),
            message: clip_message(format!(
                "{prefix}route {} rejects requests (429 budget_exhausted): no backend can serve ({states})",
                key.name
            )),
            warning: true,
            evidence: ev,
            time: now,
        });
    }
    if let Some(name) = &fail_open_name
        && prev.and_then(|m| m.fail_open.as_ref()) != Some(name)
    {
        let i = decided.fail_open.unwrap_or_default();
        let why = decided.rows[i].reason.clone().unwrap_or_default();
        let mut ev = BTreeMap::new();
        ev.insert("backend".into(), name.clone());
        ev.insert("onExhausted".into(), "Fallback".into());
        if let Some(h) = &rows_in[i].budget {
            ev.insert("budget".into(), h.budget.to_string());
            ev.insert("usedPpm".into(), h.ratio.to_string());
        }
        if let Some(u) = rows_in[i].ejected_until {
            ev.insert("ejectedUntil".into(), u.to_string());
        }
        transitions.push(Transition {
            kind: ObjectKind::ModelRoute,
            object: key.clone(),
            reason: "RouteFailOpen".into(),
            message: clip_message(format!("{prefix}route {} fails open to backend {name}: {why}", key.name)),
            warning: true,
            evidence: ev,
            time: now,
        });
    }

    // Conditions.
    let prev_conditions: &[Condition] = prev.map_or(&[], |m| &m.conditions);
    let ready = if errors.is_empty() {
        if dry {
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
        let message = clip_message(format!("{prefix}rule skipped: {}", errors.join("; ")));
        if let Some(t) = invalid_spec_transition(ObjectKind::ModelRoute, &key, prev_conditions, &message, now) {
            transitions.push(t);
        }
        ConditionSpec { type_: condition::READY, status: false, reason: "InvalidSpec".into(), message }
    };
    let degraded = match decided_state {
        RouteState::Rejecting => ConditionSpec {
            type_: condition::DEGRADED,
            status: true,
            reason: "Rejecting".into(),
            message: format!("{prefix}no backend can serve; requests are rejected"),
        },
        RouteState::Degraded if fail_open_name.is_some() => ConditionSpec {
            type_: condition::DEGRADED,
            status: true,
            reason: "FailOpen".into(),
            message: format!("{prefix}failing open to {}", fail_open_name.clone().unwrap_or_default()),
        },
        RouteState::Degraded => ConditionSpec {
            type_: condition::DEGRADED,
            status: true,
            reason: "BackendsOutOfRotation".into(),
            message: clip_message(format!("{prefix}{}", out_of_rotation.join(", "))),
        },
        RouteState::Serving => ConditionSpec {
            type_: condition::DEGRADED,
            status: false,
            reason: "Serving".into(),
            message: format!("{prefix}no backend is ejected or over budget"),
        },
    };
    let rotated = decided.rows.len() != baseline.rows.len()
        || decided.rows.iter().zip(&baseline.rows).any(|(a, b)| !same_row(a, b));
    let rotated = if rotated {
        ConditionSpec {
            type_: condition::ROTATED,
            status: true,
            reason: "TableRotated".into(),
            message: format!("{prefix}serving {signature} (configured: {base_signature})"),
        }
    } else {
        ConditionSpec {
            type_: condition::ROTATED,
            status: false,
            reason: "AsConfigured".into(),
            message: format!("{prefix}the decided table is the configured one"),
        }
    };
    let conditions = merge_conditions(prev_conditions, &[ready, degraded, rotated], generation, now);

    // Per-backend status.
    let mut since = BTreeMap::new();
    let mut backends = Vec::with_capacity(decided.rows.len());
    for (i, row) in decided.rows.iter().enumerate() {
        let s = match prev.and_then(|m| m.since.get(&row.name)) {
            Some(p) if p.state == row.state => p.since,
            _ => now,
        };
        since.insert(row.name.clone(), BackendSince { state: row.state, since: s });
        let h = &healths[i];
        let (error_rate, requests) = match (&params, &h.last_trip, h.phase) {
            (None, _, _) => (None, None),
            (Some(_), Some(t), Phase::Ejected { .. }) => (Some(t.error_rate.to_decimal()), Some(t.requests)),
            (Some(_), _, _) => {
                let (req, _) = h.window_totals();
                (h.error_rate().map(|p| p.to_decimal()), Some(req))
            }
        };
        backends.push(BackendStatus {
            name: row.name.clone(),
            state: row.state,
            effective_weight: row.weight,
            tier: row.tier,
            reason: row.reason.clone(),
            since: Some(Time(s)),
            error_rate,
            requests,
            ejected_until: rows_in[i].ejected_until.map(Time),
            trips: (h.trips > 0).then_some(h.trips),
        });
    }
    let active = decided.rows.iter().filter(|r| r.serving && r.weight > 0 && Some(r.tier) == decided.best_tier).count();
    let status = ModelRouteStatus {
        observed_generation: generation,
        conditions: conditions.clone(),
        state: Some(decided_state),
        active: Some(u32::try_from(active).unwrap_or(u32::MAX)),
        backends,
        last_rotation: last_rotation.clone(),
        gateways: None,
    };
    let memory = RouteMemory {
        table: decided.rows.clone(),
        conditions,
        since,
        state: Some(decided_state),
        fail_open: fail_open_name,
        serving: Some(signature),
        last_rotation,
    };
    let decision = RouteDecision {
        alias: r.alias(),
        strategy: spec.strategy,
        mode: spec.mode,
        on_exhausted: spec.budget.on_exhausted,
        state: if dry { RouteState::Serving } else { decided_state },
        table: if dry { configured } else { decided.rows.clone() },
        decided: decided.rows,
        status,
    };
    RouteEval { key, decision, memory, health: keys.into_iter().zip(healths).collect(), transitions }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::policy::testing::{Obs, Sim, backend, budget, budget_in, cond, find, plus, reasons, route, t};
    use crate::policy::{Decision, evaluate};

    fn drain(provider: &str, limit: &str) -> crate::api::ProviderBudget {
        budget(provider, json!({"provider": provider, "limit": limit, "window": {"period": "Daily"}}))
    }

    fn rd(d: &Decision) -> &RouteDecision {
        d.routes.values().next().unwrap()
    }

    fn row<'a>(d: &'a Decision, name: &str) -> &'a EffectiveBackend {
        rd(d).decided.iter().find(|r| r.name == name).unwrap()
    }

    fn weights(rows: &[EffectiveBackend]) -> Vec<(String, BackendState, u32, u32, bool)> {
        rows.iter().map(|r| (r.name.clone(), r.state, r.tier, r.weight, r.serving)).collect()
    }

    fn w(
        name: &str,
        state: BackendState,
        tier: u32,
        weight: u32,
        serving: bool,
    ) -> (String, BackendState, u32, u32, bool) {
        (name.to_string(), state, tier, weight, serving)
    }

    fn three(extra: Value) -> crate::api::ModelRoute {
        let mut spec = json!({"backends": [
            backend("openai", "openai", 70, 0),
            backend("deepseek", "deepseek", 30, 0),
            backend("mistral", "mistral", 10, 1),
        ]});
        if let (Some(m), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                m.insert(k.clone(), v.clone());
            }
        }
        route("chat", spec)
    }

    const T0: &str = "2025-05-14T10:00:00Z";

    #[test]
    fn configured_table_when_nothing_happens() {
        let mut s = Sim::new(vec![three(json!({}))], vec![]);
        let d = s.idle(t(T0));
        let r = rd(&d);
        assert_eq!(
            weights(&r.decided),
            [
                w("openai", BackendState::Active, 0, 70, true),
                w("deepseek", BackendState::Active, 0, 30, true),
                w("mistral", BackendState::Standby, 1, 10, true),
            ]
        );
        assert_eq!(r.table, r.decided);
        assert_eq!(r.state, RouteState::Serving);
        assert_eq!(r.alias, "chat");
        assert_eq!(r.status.active, Some(2));
        assert_eq!(r.status.state, Some(RouteState::Serving));
        assert_eq!(r.status.observed_generation, Some(1));
        assert_eq!(cond(&r.status.conditions, "Ready").status, "True");
        assert_eq!(cond(&r.status.conditions, "Degraded").status, "False");
        assert_eq!(cond(&r.status.conditions, "Rotated").status, "False");
        assert!(r.status.last_rotation.is_none());
        assert!(r.status.gateways.is_none());
        assert!(d.transitions.is_empty());
    }

    #[test]
    fn deprioritize_moves_the_provider_to_the_last_tier() {
        let mut s = Sim::new(vec![three(json!({}))], vec![drain("openai", "100")]);
        let d = s.step(t(T0), &Obs::new().spend("openai", "95"));
        let o = row(&d, "openai");
        assert_eq!((o.state, o.tier, o.weight, o.serving), (BackendState::OverBudget, 2, 70, true));
        assert!(o.reason.as_deref().unwrap().contains("Deprioritize"));
        assert_eq!(row(&d, "deepseek").state, BackendState::Active);
        assert_eq!(row(&d, "mistral").state, BackendState::Standby);
        assert_eq!(rd(&d).status.state, Some(RouteState::Degraded));
        assert_eq!(reasons(&d), ["BudgetDeprioritized", "RouteRotated"]);
        let rot = find(&d, "RouteRotated");
        assert_eq!(rot.evidence["from"], "openai=70,deepseek=30");
        assert_eq!(rot.evidence["to"], "deepseek=100");
        let lr = rd(&d).status.last_rotation.clone().unwrap();
        assert_eq!((lr.from.as_str(), lr.to.as_str(), lr.time.0), ("openai=70,deepseek=30", "deepseek=100", t(T0)));
        assert!(lr.reason.contains("openai"), "{}", lr.reason);
    }

    #[test]
    fn drain_takes_the_provider_out_and_the_next_tier_serves() {
        let route = route(
            "chat",
            json!({"backends": [backend("a", "openai", 70, 0), backend("b", "openai", 30, 0), backend("c", "mistral", 5, 1)]}),
        );
        let mut s = Sim::new(vec![route], vec![drain("openai", "100")]);
        let d = s.step(t(T0), &Obs::new().spend("openai", "100"));
        assert_eq!(
            weights(&rd(&d).decided),
            [
                w("a", BackendState::OverBudget, 0, 0, false),
                w("b", BackendState::OverBudget, 0, 0, false),
                w("c", BackendState::Active, 1, 5, true),
            ]
        );
        assert_eq!(rd(&d).status.active, Some(1));
        assert_eq!(rd(&d).state, RouteState::Degraded);
        assert_eq!(find(&d, "RouteRotated").evidence["to"], "c=100");
        // A new window brings them back.
        let d = s.idle(t("2025-05-15T00:00:00Z"));
        assert_eq!(row(&d, "a").state, BackendState::Active);
        assert_eq!(reasons(&d), ["BudgetWindowReset", "RouteRotated"]);
    }

    #[test]
    fn budgets_apply_by_namespace_provider_and_model_and_the_strongest_wins() {
        let route = route("chat", json!({"backends": [backend("a", "openai", 1, 0), backend("b", "deepseek", 1, 0)]}));
        let other_ns =
            budget_in("other", "x", json!({"provider": "openai", "limit": "1", "window": {"period": "Daily"}}));
        let other_model = budget(
            "y",
            json!({"provider": "openai", "models": ["gpt-5"], "limit": "1", "window": {"period": "Daily"}}),
        );
        let mut s = Sim::new(vec![route.clone()], vec![other_ns, other_model]);
        let d = s.step(
            t(T0),
            &Obs::new().spend_in("other", "openai", "openai-model", "5").spend_in("default", "openai", "gpt-5", "5"),
        );
        assert_eq!(row(&d, "a").state, BackendState::Active);
        // Two budgets on the same backend: Warn and Drain → Drain.
        let warn = budget("w", json!({"provider": "openai", "limit": "100", "window": {"period": "Daily"}}));
        let tight = budget(
            "z",
            json!({"provider": "openai", "models": ["openai-model"], "limit": "10", "window": {"period": "Daily"}}),
        );
        let mut s = Sim::new(vec![route], vec![warn, tight]);
        let d = s.step(t(T0), &Obs::new().spend("openai", "85"));
        let a = row(&d, "a");
        assert_eq!((a.state, a.serving), (BackendState::OverBudget, false));
        assert_eq!(a.reason.as_deref(), Some("budget default/z: Drain"));
    }

    #[test]
    fn health_ejection_takes_precedence_over_budgets() {
        let mut s = Sim::new(vec![three(json!({}))], vec![drain("openai", "100")]);
        let d = s.step(t(T0), &Obs::new().spend("openai", "100").req("chat", "openai", 0, 20));
        let o = row(&d, "openai");
        assert_eq!((o.state, o.serving), (BackendState::Ejected, false));
        // Once back from the ejection, the budget still holds it out.
        let d = s.idle(plus(t(T0), 30));
        assert_eq!(row(&d, "openai").state, BackendState::OverBudget);
        // Deprioritized while ramping: OverBudget in the last tier at the ramp weight.
        let mut s = Sim::new(vec![three(json!({}))], vec![drain("openai", "100")]);
        s.step(t(T0), &Obs::new().spend("openai", "95").req("chat", "openai", 0, 20));
        let d = s.idle(plus(t(T0), 30));
        let o = row(&d, "openai");
        assert_eq!((o.state, o.tier, o.weight, o.serving), (BackendState::OverBudget, 2, 7, true));
    }

    #[test]
    fn reject_when_nothing_serves() {
        let route = route(
            "chat",
            json!({"budget": {"onExhausted": "Reject"}, "backends": [backend("a", "openai", 70, 0), backend("b", "openai", 30, 1)]}),
        );
        let mut s = Sim::new(vec![route], vec![drain("openai", "100")]);
        let d = s.step(t(T0), &Obs::new().spend("openai", "100"));
        let r = rd(&d);
        assert_eq!(r.state, RouteState::Rejecting);
        assert!(r.table.iter().all(|e| !e.serving));
        assert_eq!(r.status.active, Some(0));
        let tr = find(&d, "RouteRejecting");
        assert!(tr.warning);
        assert_eq!(find(&d, "RouteRotated").evidence["to"], "none");
        assert_eq!(cond(&r.status.conditions, "Degraded").reason, "Rejecting");
        // Not repeated.
        let d = s.idle(plus(t(T0), 60));
        assert!(d.transitions.is_empty());
    }

    #[test]
    fn fallback_fails_open_to_the_least_over_budget() {
        let route =
            route("chat", json!({"backends": [backend("a", "openai", 70, 0), backend("b", "deepseek", 30, 0)]}));
        let mut s = Sim::new(vec![route], vec![drain("openai", "100"), drain("deepseek", "100")]);
        let d = s.step(t(T0), &Obs::new().spend("openai", "150").spend("deepseek", "110"));
        let r = rd(&d);
        assert_eq!(r.state, RouteState::Degraded);
        let b = row(&d, "b");
        assert_eq!((b.state, b.serving, b.weight), (BackendState::OverBudget, true, 30));
        assert!(b.reason.as_deref().unwrap().starts_with("fail open"));
        assert!(!row(&d, "a").serving);
        let tr = find(&d, "RouteFailOpen");
        assert!(tr.warning);
        assert_eq!(tr.evidence["backend"], "b");
        assert_eq!(tr.evidence["budget"], "default/deepseek");
        assert_eq!(cond(&r.status.conditions, "Degraded").reason, "FailOpen");
        assert_eq!(r.status.active, Some(1));
        // Stable: no repeat.
        let d = s.idle(plus(t(T0), 60));
        assert!(d.transitions.is_empty());
        // Switches when the other becomes less over.
        let d = s.step(plus(t(T0), 120), &Obs::new().spend("deepseek", "100"));
        assert_eq!(find(&d, "RouteFailOpen").evidence["backend"], "a");
    }

    #[test]
    fn fallback_for_health_only_uses_the_ejection_ending_first() {
        let route = route(
            "chat",
            json!({"health": {"maxEjectedPercent": 100}, "backends": [backend("a", "openai", 70, 0), backend("b", "deepseek", 30, 0)]}),
        );
        let mut s = Sim::new(vec![route], vec![]);
        s.step(t(T0), &Obs::new().req("chat", "b", 0, 20));
        let d = s.step(plus(t(T0), 10), &Obs::new().req("chat", "a", 0, 20));
        let b = row(&d, "b");
        assert_eq!((b.state, b.serving), (BackendState::Ejected, true));
        assert!(!row(&d, "a").serving);
        assert_eq!(find(&d, "RouteFailOpen").evidence["backend"], "b");
        assert_eq!(rd(&d).state, RouteState::Degraded);
    }

    #[test]
    fn weighted_strategy_keeps_weights() {
        let mut s = Sim::new(vec![three(json!({"strategy": "Weighted"}))], vec![]);
        let d = s.idle(t(T0));
        assert_eq!(row(&d, "openai").weight, 70);
        assert_eq!(row(&d, "deepseek").weight, 30);
    }

    #[test]
    fn priority_strategy_serves_the_first_serving_backend() {
        let mut s = Sim::new(vec![three(json!({"strategy": "Priority"}))], vec![drain("openai", "100")]);
        let d = s.idle(t(T0));
        assert_eq!(
            weights(&rd(&d).decided),
            [
                w("openai", BackendState::Active, 0, 70, true),
                w("deepseek", BackendState::Standby, 0, 0, true),
                w("mistral", BackendState::Standby, 1, 10, true),
            ]
        );
        assert_eq!(cond(&rd(&d).status.conditions, "Rotated").status, "False");
        let d = s.step(plus(t(T0), 60), &Obs::new().spend("openai", "100"));
        assert_eq!((row(&d, "deepseek").state, row(&d, "deepseek").weight), (BackendState::Active, 30));
        assert_eq!(find(&d, "RouteRotated").evidence["to"], "deepseek=100");
    }

    #[test]
    fn cheapest_strategy_keeps_the_lowest_blended_price() {
        let mut route = three(json!({"strategy": "Cheapest"}));
        route.spec.backends[0].pricing.input = "2.50".into();
        route.spec.backends[0].pricing.output = "10".into();
        route.spec.backends[1].pricing.input = "0.27".into();
        route.spec.backends[1].pricing.output = "1.10".into();
        let mut s = Sim::new(vec![route.clone()], vec![]);
        let d = s.idle(t(T0));
        assert_eq!((row(&d, "openai").state, row(&d, "openai").weight), (BackendState::Standby, 0));
        assert_eq!((row(&d, "deepseek").state, row(&d, "deepseek").weight), (BackendState::Active, 30));
        // Ties keep both.
        route.spec.backends[0].pricing.input = "0.37".into();
        route.spec.backends[0].pricing.output = "1".into();
        let d = Sim::new(vec![route.clone()], vec![]).idle(t(T0));
        assert_eq!(rd(&d).status.active, Some(2));
        // An unparsable price is reported and the strategy skipped.
        route.spec.backends[0].pricing.input = "cheap".into();
        let d = Sim::new(vec![route], vec![]).idle(t(T0));
        let ready = cond(&rd(&d).status.conditions, "Ready");
        assert_eq!(ready.status, "False");
        assert!(ready.message.contains("spec.backends[0].pricing.input"));
        assert_eq!(rd(&d).status.active, Some(2));
    }

    #[test]
    fn lowest_latency_strategy_scales_weights_and_explores_unknowns() {
        let route = route(
            "chat",
            json!({"strategy": "LowestLatency", "backends": [backend("a", "openai", 1, 0), backend("b", "deepseek", 1, 0), backend("c", "mistral", 1, 0)]}),
        );
        let mut s = Sim::new(vec![route], vec![]);
        let d = s.step(t(T0), &Obs::new().lat("chat", "a", 100, 10).lat("chat", "b", 400, 10));
        assert_eq!(row(&d, "a").weight, 1000);
        assert_eq!(row(&d, "b").weight, 250);
        // No latency known yet: counts as the fastest.
        assert_eq!(row(&d, "c").weight, 1000);
        assert!(row(&d, "b").reason.as_deref().unwrap().contains("LowestLatency"));
        assert_eq!(cond(&rd(&d).status.conditions, "Rotated").status, "False");
        assert_eq!(latency_factor(100, 110), 900);
        assert_eq!(latency_factor(1, 100_000), 50);
    }

    #[test]
    fn zero_weight_backends_are_standby_and_promoted_when_alone() {
        let route = route("chat", json!({"backends": [backend("a", "openai", 10, 0), backend("z", "deepseek", 0, 0)]}));
        let mut s = Sim::new(vec![route], vec![drain("openai", "1")]);
        let d = s.idle(t(T0));
        let z = row(&d, "z");
        assert_eq!((z.state, z.weight, z.serving), (BackendState::Standby, 0, true));
        let d = s.step(plus(t(T0), 1), &Obs::new().spend("openai", "1"));
        let z = row(&d, "z");
        assert_eq!((z.state, z.weight, z.serving), (BackendState::Active, 1, true));
        assert_eq!(find(&d, "RouteRotated").evidence["to"], "z=100");
    }

    #[test]
    fn dry_run_reports_decisions_but_renders_the_configured_table() {
        let mut s = Sim::new(vec![three(json!({"mode": "DryRun"}))], vec![drain("openai", "100")]);
        let d = s.step(t(T0), &Obs::new().spend("openai", "100").req("chat", "deepseek", 0, 20));
        let r = rd(&d);
        assert_eq!(
            weights(&r.table),
            [
                w("openai", BackendState::Active, 0, 70, true),
                w("deepseek", BackendState::Active, 0, 30, true),
                w("mistral", BackendState::Active, 1, 10, true),
            ]
        );
        assert_eq!(row(&d, "openai").state, BackendState::OverBudget);
        // maxEjectedPercent 50 of 3 backends: one may be ejected.
        assert_eq!(row(&d, "deepseek").state, BackendState::Ejected);
        assert_eq!(r.state, RouteState::Serving);
        assert_eq!(r.status.state, Some(RouteState::Degraded));
        assert_eq!(r.status.backends[0].state, BackendState::OverBudget);
        assert_eq!(cond(&r.status.conditions, "Ready").reason, "DryRun");
        assert_eq!(cond(&r.status.conditions, "Rotated").status, "True");
        let route_transitions: Vec<&Transition> =
            d.transitions.iter().filter(|t| t.kind == ObjectKind::ModelRoute).collect();
        assert!(!route_transitions.is_empty());
        assert!(route_transitions.iter().all(|t| t.message.starts_with("dry run: ")));
        assert_eq!(find(&d, "RouteRotated").evidence["to"], "mistral=100");
    }

    #[test]
    fn conditions_and_since_only_move_on_a_change() {
        let mut s = Sim::new(vec![three(json!({}))], vec![drain("openai", "100")]);
        let t0 = t(T0);
        s.idle(t0);
        let d = s.step(plus(t0, 60), &Obs::new().spend("openai", "100"));
        let st = &rd(&d).status;
        assert_eq!(cond(&st.conditions, "Degraded").last_transition_time.0, plus(t0, 60));
        assert_eq!(cond(&st.conditions, "Ready").last_transition_time.0, t0);
        let since = |d: &Decision, n: &str| {
            rd(d).status.backends.iter().find(|b| b.name == n).unwrap().since.clone().unwrap().0
        };
        assert_eq!(since(&d, "openai"), plus(t0, 60));
        assert_eq!(since(&d, "deepseek"), t0);
        let d = s.idle(plus(t0, 120));
        let st = &rd(&d).status;
        assert_eq!(cond(&st.conditions, "Degraded").last_transition_time.0, plus(t0, 60));
        assert_eq!(cond(&st.conditions, "Rotated").last_transition_time.0, plus(t0, 60));
        assert_eq!(since(&d, "openai"), plus(t0, 60));
        assert_eq!(st.last_rotation.as_ref().unwrap().time.0, plus(t0, 60));
    }

    #[test]
    fn deleted_objects_are_dropped_from_the_state() {
        let mut s = Sim::new(
            vec![three(json!({})), route("other", json!({"backends": [backend("x", "openai", 1, 0)]}))],
            vec![drain("openai", "100")],
        );
        s.step(t(T0), &Obs::new().req("chat", "openai", 10, 0));
        assert_eq!(s.state.routes.len(), 2);
        assert_eq!(s.state.backends.len(), 4);
        s.routes.truncate(1);
        s.routes[0].spec.backends.pop();
        s.budgets.clear();
        let d = s.idle(plus(t(T0), 1));
        assert_eq!(d.state.routes.len(), 1);
        assert_eq!(d.state.backends.len(), 2);
        assert!(d.state.budgets.is_empty());
        assert!(d.budgets.is_empty());
    }

    #[test]
    fn transitions_are_sorted_and_short() {
        let routes = vec![
            route("z", json!({"backends": [backend("a", "openai", 1, 0), backend("b", "deepseek", 1, 0)]})),
            route("a", json!({"backends": [backend("a", "openai", 1, 0), backend("b", "deepseek", 1, 0)]})),
        ];
        let mut s = Sim::new(routes, vec![drain("openai", "100"), drain("deepseek", "100")]);
        let d = s.step(t(T0), &Obs::new().spend("openai", "100").spend("deepseek", "96"));
        let keys: Vec<(ObjectKind, String)> = d.transitions.iter().map(|t| (t.kind, t.object.name.clone())).collect();
        assert_eq!(
            keys,
            [
                (ObjectKind::ProviderBudget, "deepseek".to_string()),
                (ObjectKind::ProviderBudget, "openai".to_string()),
                (ObjectKind::ModelRoute, "a".to_string()),
                (ObjectKind::ModelRoute, "z".to_string()),
            ]
        );
        assert!(d.transitions.iter().all(|t| t.message.len() < 1024 && t.time == t0()));
        assert_eq!(clip_message("é".repeat(2000)).len(), 999);
        // Deterministic: the same inputs give the same decision.
        let again = evaluate(Inputs {
            routes: &s.routes,
            budgets: &s.budgets,
            observations: &Obs::new().spend("openai", "100").spend("deepseek", "96").0,
            previous: &DecisionState::default(),
            now: t(T0),
        });
        assert_eq!(again, d);
    }

    fn t0() -> Timestamp {
        t(T0)
    }

    #[test]
    fn shares_use_the_largest_remainder() {
        let r = |name: &str, weight: u32, tier: u32| EffectiveBackend {
            name: name.into(),
            tier,
            weight,
            state: BackendState::Active,
            serving: true,
            reason: None,
        };
        assert_eq!(shares(&[r("a", 7, 0), r("b", 30, 0)]), "a=19,b=81");
        assert_eq!(shares(&[r("a", 1, 0), r("b", 1, 0), r("c", 1, 0)]), "a=34,b=33,c=33");
        assert_eq!(shares(&[r("a", 1, 1), r("b", 5, 0)]), "b=100");
        assert_eq!(shares(&[]), "none");
    }

    #[test]
    fn route_memory_round_trips_through_json() {
        let mut s = Sim::new(vec![three(json!({}))], vec![drain("openai", "100")]);
        s.step(t(T0), &Obs::new().spend("openai", "100"));
        let json = serde_json::to_string(&s.state).unwrap();
        let back: DecisionState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s.state);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["routes"]["default/chat"]["serving"], "deepseek=100");
        assert_eq!(v["budgets"]["default/openai"]["action"], "Drain");
    }
}
