//! The effective table of one route: each backend's row from its health and budget, the
//! strategy's weights inside each tier, fail-open or reject when nothing serves, and standby.
//!
//! Rules: see `routes.rs` (precedence Ejected > Drain > Deprioritize > Ramping > Active; the
//! strategies; the best tier; fail-open order). Pure functions of the row inputs.

use std::collections::BTreeMap;

use jiff::Timestamp;

use super::budget::BudgetEffect;
use super::coverage::covers;
use super::health;
use super::{EffectiveBackend, Money, ObjectKey};
use crate::api::{Backend, BackendState, OnExhausted, Strategy, ThresholdAction};

/// The strongest budget action on one backend.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct BudgetHit {
    pub(super) action: ThresholdAction,
    pub(super) budget: ObjectKey,
    /// spent/limit in millionths of the budget that applies (the most over among the strongest).
    pub(super) ratio: i128,
}

/// Everything the table needs to know about one backend.
#[derive(Clone, Debug)]
pub(super) struct RowInput<'a> {
    pub(super) backend: &'a Backend,
    pub(super) ejected_until: Option<Timestamp>,
    /// The ejection is for latency (`health.latency`), not for errors.
    pub(super) slow: bool,
    pub(super) ramp: Option<(u32, u32, usize)>, // (percent, stage index, stages)
    pub(super) suppressed: bool,
    pub(super) budget: Option<BudgetHit>,
    pub(super) latency_ms: Option<u64>,
    pub(super) price: Option<Money>,
}

/// A decided table and how it came about.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Table {
    pub(super) rows: Vec<EffectiveBackend>,
    pub(super) fail_open: Option<usize>,
    pub(super) rejecting: bool,
    pub(super) best_tier: Option<u32>,
}

pub(super) fn budget_hit(effects: &[BudgetEffect], namespace: &str, b: &Backend) -> Option<BudgetHit> {
    effects
        .iter()
        .filter(|e| e.key.namespace == namespace && covers(&e.provider, &e.models, &b.provider, &b.model))
        .filter_map(|e| e.action.map(|a| (a, e.ratio_millionths(), e)))
        // Strongest action, then most over, then the first key.
        .fold(None::<(ThresholdAction, i128, &BudgetEffect)>, |best, cur| match best {
            Some(b) if (b.0, b.1) >= (cur.0, cur.1) => Some(b),
            _ => Some(cur),
        })
        .map(|(action, ratio, e)| BudgetHit { action, budget: e.key.clone(), ratio })
}

/// The blended price per token of `Cheapest`: list prices weighted by the backend's achieved
/// input shares (`super::cache_share`), list input + output without them.
pub(super) fn blended_price(b: &Backend, i: usize, shares: Option<(u32, u32, u32)>) -> Result<Money, String> {
    let p = crate::pricing::Prices::from_spec(&b.pricing).map_err(|e| format!("spec.backends[{i}].{e}"))?;
    Ok(super::cache_share::blended(
        p.input.per_token(),
        p.cached_input.per_token(),
        p.cache_write.per_token(),
        p.output.per_token(),
        shares,
    ))
}

pub(super) fn base_row(inp: &RowInput<'_>, last_tier: u32, interventions: bool) -> EffectiveBackend {
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
        let why = if inp.slow { "latency" } else { "errors" };
        return row(BackendState::Ejected, b.priority, 0, false, Some(format!("ejected for {why} until {until}")));
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
pub(super) fn latency_factor(lowest: u64, own: u64) -> u32 {
    let f = lowest.max(1).saturating_mul(1000) / own.max(1);
    let q = (f + 25) / 50 * 50;
    u32::try_from(q.clamp(50, 1000)).unwrap_or(1000)
}

pub(super) fn apply_strategy(rows: &mut [EffectiveBackend], inputs: &[RowInput<'_>], strategy: Strategy) {
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

pub(super) fn build_table(
    inputs: &[RowInput<'_>],
    strategy: Strategy,
    on_exhausted: OnExhausted,
    interventions: bool,
) -> Table {
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
