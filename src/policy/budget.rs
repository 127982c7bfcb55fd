//! Budget spend, threshold escalation, burn rate and forecast (windows: `window.rs`).
//!
//! Rules (all pure, `now` is an input):
//! - The window is the calendar or rolling window containing `now` (see `window.rs`).
//! - Spend accumulates the matching deltas (same namespace; provider and model as
//!   `coverage::covers` says). Negative deltas (corrections) are ignored, so spend never decreases
//!   inside a window. Spend resets only when `now` reaches the stored window end; the deltas of
//!   that evaluation count in the new window.
//! - The action in force is the highest of: the action already reached this window, the highest
//!   action of a threshold whose amount is ≤ spent and, with `forecast.enabled`, the highest
//!   action of a threshold crossed by the spend projected at the window end. Actions never
//!   de-escalate inside a window for a fixed policy. When the limit, the thresholds or
//!   `forecast.enabled` change, the reached action is recomputed from the current spend under
//!   the new policy (so raising the limit lifts a Drain at once); this is reported as a
//!   `BudgetPolicyChanged` transition when it lowers the action.
//! - The status says whether the action in force was reached by the forecast
//!   (`forecastTriggered`), so a restart remembers it without reading condition messages.
//! - Burn rate: samples of the lifetime cumulative spend (which never resets, so a window
//!   boundary does not distort it) are kept for `forecast.lookback`; the rate is the spend since
//!   the oldest sample older than `now` divided by the time since it. Integers only.
//! - Changes to `spec.window` take effect at the next window boundary (the stored window is
//!   kept until it ends, so spend only ever resets at a boundary).
//! - A stored window is kept only while it holds `now` and ends no later than the window the
//!   spec gives for `now`, or [`LONGEST_CALENDAR_WINDOW_MS`] from `now` when that is later (room
//!   for a spec changed mid-window). A stored window that starts after `now` (it was opened
//!   while the clock was ahead, then the clock was corrected backwards) or ends beyond that
//!   bound (a state that no spec gives) is **realigned**: the window becomes the one the spec
//!   gives for `now`, the spend, the lifetime total and the action reached are kept, and a
//!   `BudgetWindowRealigned` Warning says so. So spend is never lost to a clock step, and a
//!   budget never stops rolling over at its boundaries.
//! - The clock stepping back: a burn-rate sample later than `now` means the samples' times can
//!   no longer be compared with `now` (a rate over them could be any size); they are dropped and
//!   the rate is measured again from `now`. The lifetime total is kept.
//! - A budget whose limit or window cannot be read (a spec that skipped validation) cannot bound
//!   spend: it fails closed, its action is `Drain` until the spec is fixed, with `Ready` False
//!   naming the field. A spec whose other fields are unreadable (the forecast lookback) keeps the
//!   action reached in its stored window.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::common::{add_ms, clip, invalid_spec_transition};
use super::coverage::covers;
use super::money::parse_duration_ms;
pub use super::window::window_for;
use super::{
    BudgetDecision, BudgetInput, ConditionSpec, Money, ObjectKey, ObjectKind, Observations, Transition,
    merge_conditions,
};
use crate::api::{
    BudgetState, Condition, ProviderBudgetSpec, ProviderBudgetStatus, Threshold, ThresholdAction, Time, WindowStatus,
    condition,
};

const MS_PER_HOUR: i128 = 3_600_000;
/// Longer than any calendar window (31 days plus a DST hour): how far past `now` a stored
/// window may end when the spec's own window for `now` ends sooner.
pub const LONGEST_CALENDAR_WINDOW_MS: i64 = 32 * 24 * 3_600_000;
/// Burn-rate samples are kept at least `lookback / SAMPLE_SLOTS` apart (bounded memory).
const SAMPLE_SLOTS: i64 = 60;

/// What a budget remembers between evaluations.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BudgetMemory {
    /// Current window start.
    pub window_start: Timestamp,
    /// Current window end (exclusive). Equal to `window_start` when no window could be computed
    /// yet (invalid spec on the first evaluation).
    pub window_end: Timestamp,
    /// Spend in the current window.
    pub spent: Money,
    /// Highest action reached in this window.
    pub action: Option<ThresholdAction>,
    /// Whether `action` was reached by the forecast before the spend itself crossed it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forecast: bool,
    /// Lifetime cumulative spend (never reset), on which burn-rate samples are taken.
    #[serde(default)]
    pub total: Money,
    /// Burn-rate samples of `total`, oldest first, pruned to `forecast.lookback`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<SpendSample>,
    /// The policy the action was reached under (limit, thresholds, forecast switch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<BudgetPolicy>,
    /// Conditions last reported (so `lastTransitionTime` only moves on a flip).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl BudgetMemory {
    /// The memory of a budget never evaluated before: window `[start, end)`, nothing spent.
    pub fn fresh(window_start: Timestamp, window_end: Timestamp) -> Self {
        Self {
            window_start,
            window_end,
            spent: Money::ZERO,
            action: None,
            forecast: false,
            total: Money::ZERO,
            samples: Vec::new(),
            policy: None,
            conditions: Vec::new(),
        }
    }
}

/// One burn-rate sample.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpendSample {
    /// When it was taken.
    pub at: Timestamp,
    /// Lifetime cumulative spend at that time.
    pub total: Money,
}

/// The parts of a budget spec that decide the action; a change allows de-escalation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BudgetPolicy {
    /// Limit.
    pub limit: Money,
    /// Thresholds.
    pub thresholds: Vec<Threshold>,
    /// Forecast switch.
    pub forecast: bool,
}

/// What one budget imposes on the backends it covers (used by the route rules).
#[derive(Clone, Debug, PartialEq)]
pub struct BudgetEffect {
    /// The budget.
    pub key: ObjectKey,
    /// Provider it covers.
    pub provider: String,
    /// Models it covers (empty = all).
    pub models: Vec<String>,
    /// Action in force.
    pub action: Option<ThresholdAction>,
    /// Spend in the window.
    pub spent: Money,
    /// Limit, if it parses.
    pub limit: Option<Money>,
}

impl BudgetEffect {
    /// spent / limit in millionths (saturating; `i128::MAX` for a zero limit with spend).
    pub fn ratio_millionths(&self) -> i128 {
        match self.limit {
            Some(l) if l.picos() > 0 => self.spent.picos().saturating_mul(1_000_000) / l.picos(),
            _ if self.spent.picos() <= 0 => 0,
            _ => i128::MAX,
        }
    }
}

/// Result of evaluating one budget.
#[derive(Clone, Debug, PartialEq)]
pub struct BudgetEval {
    /// The budget.
    pub key: ObjectKey,
    /// Decision (action + status).
    pub decision: BudgetDecision,
    /// Memory for the next evaluation.
    pub memory: BudgetMemory,
    /// Transitions, in order.
    pub transitions: Vec<Transition>,
    /// Effect on backends.
    pub effect: BudgetEffect,
}

/// Sum of the (non-negative) spend deltas this budget covers.
fn matching_spend(namespace: &str, spec: &ProviderBudgetSpec, obs: &Observations) -> Money {
    obs.spend
        .iter()
        .filter(|(k, _)| k.namespace == namespace && covers(&spec.provider, &spec.models, &k.provider, &k.model))
        .map(|(_, m)| if m.is_negative() { Money::ZERO } else { *m })
        .sum()
}

/// Highest action among the thresholds whose amount is ≤ `amount`.
fn action_at(amount: Money, limit: Money, thresholds: &[Threshold]) -> Option<ThresholdAction> {
    thresholds.iter().filter(|t| crosses(amount, limit, t.percent)).map(|t| t.action).max()
}

/// `amount ≥ limit × percent / 100`, exactly.
fn crosses(amount: Money, limit: Money, percent: u32) -> bool {
    amount.picos().saturating_mul(100) >= limit.picos().saturating_mul(i128::from(percent))
}

/// Lowest threshold carrying `action` (for evidence).
fn threshold_for(action: ThresholdAction, thresholds: &[Threshold]) -> Option<&Threshold> {
    thresholds.iter().filter(|t| t.action == action).min_by_key(|t| t.percent)
}

/// `"82.47"`: percent of the limit, two decimals, floored.
pub fn percent_string(spent: Money, limit: Money) -> Option<String> {
    match spent.percent_hundredths_of(limit) {
        Some(h) => {
            let h = h.max(0);
            Some(format!("{}.{:02}", h / 100, h % 100))
        }
        None if spent.picos() <= 0 => Some("0.00".into()),
        None => None,
    }
}

fn state_of(action: Option<ThresholdAction>) -> BudgetState {
    match action {
        None => BudgetState::Ok,
        Some(ThresholdAction::Warn) => BudgetState::Warning,
        Some(ThresholdAction::Deprioritize) => BudgetState::Deprioritized,
        Some(ThresholdAction::Drain) => BudgetState::Exhausted,
    }
}

fn reason_of(action: ThresholdAction) -> &'static str {
    match action {
        ThresholdAction::Warn => "BudgetWarning",
        ThresholdAction::Deprioritize => "BudgetDeprioritized",
        ThresholdAction::Drain => "BudgetExhausted",
    }
}

/// Burn measurement: spend `delta` over `elapsed_ms` (> 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Burn {
    delta: i128,
    elapsed_ms: i128,
}

impl Burn {
    fn per_hour(self) -> Money {
        Money::from_picos(self.delta.saturating_mul(MS_PER_HOUR) / self.elapsed_ms)
    }

    /// Spend expected after `ms` more milliseconds.
    fn over(self, ms: i128) -> Money {
        Money::from_picos(self.delta.saturating_mul(ms) / self.elapsed_ms)
    }
}

/// Evaluates one budget.
pub fn evaluate_budget(b: &BudgetInput, obs: &Observations, prev: Option<&BudgetMemory>, now: Timestamp) -> BudgetEval {
    let key = b.key.clone();
    let spec = &b.spec;
    let generation = b.generation;
    let delta = matching_spend(&key.namespace, spec, obs);

    let mut errors = Vec::new();
    let limit = match spec.limit.parse::<Money>() {
        Ok(l) if !l.is_negative() => Some(l),
        Ok(_) => {
            errors.push(format!("spec.limit: {:?} must not be negative", spec.limit));
            None
        }
        Err(e) => {
            errors.push(format!("spec.limit: {e}"));
            None
        }
    };
    let lookback = match parse_duration_ms(&spec.forecast.lookback) {
        Ok(ms) if ms > 0 => Some(ms),
        Ok(_) => {
            errors.push(format!("spec.forecast.lookback: {:?} must be longer than zero", spec.forecast.lookback));
            None
        }
        Err(e) => {
            errors.push(format!("spec.forecast.lookback: {e}"));
            None
        }
    };
    let window = window_for(&spec.window, now).map_err(|e| errors.push(e)).ok();

    let mut transitions = Vec::new();
    let prev_conditions = prev.map(|m| m.conditions.clone()).unwrap_or_default();

    let (limit, lookback, window) = match (limit, lookback, window) {
        (Some(l), Some(lb), Some(w)) if errors.is_empty() => (l, lb, w),
        (l, _, w) => {
            let fail_closed = l.is_none() || w.is_none();
            return invalid_budget(b, key, prev, delta, errors, fail_closed, generation, now);
        }
    };

    // Window: keep the stored one while it holds `now` and ends within bounds; realign one from
    // a clock that was ahead (or a state no spec gives); reset when it ended.
    let mut mem = match prev {
        Some(p) if stored_window_holds(p, window, now) => p.clone(),
        Some(p) if now < p.window_end => {
            let mut ev = BTreeMap::new();
            ev.insert("storedWindow".into(), format!("{}/{}", p.window_start, p.window_end));
            ev.insert("window".into(), format!("{}/{}", window.0, window.1));
            ev.insert("spent".into(), p.spent.to_string());
            ev.insert("now".into(), now.to_string());
            let why = if now < p.window_start {
                "starts after now (the clock was ahead when it was opened)"
            } else {
                "ends later than any window of the spec"
            };
            transitions.push(Transition {
                kind: ObjectKind::ProviderBudget,
                object: key.clone(),
                reason: "BudgetWindowRealigned".into(),
                message: clip(format!(
                    "stored budget window {} to {} {why}: moved to the window {} to {} for provider {}, keeping the spend {}",
                    p.window_start, p.window_end, window.0, window.1, spec.provider, p.spent
                )),
                warning: true,
                evidence: ev,
                time: now,
            });
            BudgetMemory { window_start: window.0, window_end: window.1, ..p.clone() }
        }
        Some(p) => {
            if let Some(action) = p.action {
                let mut ev = BTreeMap::new();
                ev.insert("previousWindow".into(), format!("{}/{}", p.window_start, p.window_end));
                ev.insert("previousSpent".into(), p.spent.to_string());
                ev.insert("previousAction".into(), format!("{action:?}"));
                ev.insert("window".into(), format!("{}/{}", window.0, window.1));
                ev.insert("limit".into(), limit.to_string());
                transitions.push(Transition {
                    kind: ObjectKind::ProviderBudget,
                    object: key.clone(),
                    reason: "BudgetWindowReset".into(),
                    message: clip(format!(
                        "new budget window {} to {} for provider {}: spend reset from {} (action {action:?} lifted)",
                        window.0, window.1, spec.provider, p.spent
                    )),
                    warning: false,
                    evidence: ev,
                    time: now,
                });
            }
            BudgetMemory {
                window_start: window.0,
                window_end: window.1,
                spent: Money::ZERO,
                action: None,
                forecast: false,
                ..p.clone()
            }
        }
        None => BudgetMemory::fresh(window.0, window.1),
    };
    mem.spent += delta;
    mem.total += delta;

    // Policy change: recompute the reached action under the new policy.
    let policy = BudgetPolicy { limit, thresholds: spec.thresholds.clone(), forecast: spec.forecast.enabled };
    let policy_changed = mem.policy.as_ref().is_some_and(|p| *p != policy);
    let before = mem.action;
    if policy_changed {
        mem.action = None;
        mem.forecast = false;
    }
    mem.policy = Some(policy);

    // Burn rate over the lookback; samples from a clock that was ahead are dropped.
    if mem.samples.iter().any(|s| s.at > now) {
        mem.samples.clear();
    }
    let cutoff = now.as_millisecond().saturating_sub(lookback);
    mem.samples.retain(|s| s.at.as_millisecond() >= cutoff);
    let burn = mem.samples.first().filter(|s| s.at < now).map(|s| Burn {
        delta: (mem.total - s.total).picos().max(0),
        elapsed_ms: i128::from(now.as_millisecond()) - i128::from(s.at.as_millisecond()),
    });
    let burn = burn.filter(|b| b.elapsed_ms > 0);
    let spacing = (lookback / SAMPLE_SLOTS).max(1);
    if mem.samples.last().is_none_or(|s| now.as_millisecond() - s.at.as_millisecond() >= spacing) {
        mem.samples.push(SpendSample { at: now, total: mem.total });
    }

    let remaining_ms = (i128::from(mem.window_end.as_millisecond()) - i128::from(now.as_millisecond())).max(0);
    let projected = burn.map(|b| mem.spent + b.over(remaining_ms));
    let spent_action = action_at(mem.spent, limit, &spec.thresholds);
    let forecast_action =
        if spec.forecast.enabled { projected.and_then(|p| action_at(p, limit, &spec.thresholds)) } else { None };
    let new_action = mem.action.max(spent_action).max(forecast_action);
    if new_action > mem.action {
        mem.forecast = spent_action < new_action;
    } else if spent_action >= new_action {
        mem.forecast = false;
    }
    let escalated = new_action > before;
    mem.action = new_action;

    let percent = percent_string(mem.spent, limit);
    let window_ev = format!("{}/{}", mem.window_start, mem.window_end);
    let projected_exhaustion = burn.and_then(|b| {
        if b.delta <= 0 || mem.spent >= limit {
            return None;
        }
        let need = (limit - mem.spent).picos();
        let ms = need.saturating_mul(b.elapsed_ms).saturating_add(b.delta - 1) / b.delta;
        let at = add_ms(now, i64::try_from(ms).unwrap_or(i64::MAX));
        (at < mem.window_end).then_some(at)
    });

    if let Some(action) = new_action.filter(|_| escalated) {
        let t = threshold_for(action, &spec.thresholds);
        let mut ev = BTreeMap::new();
        ev.insert("provider".into(), spec.provider.clone());
        ev.insert("spent".into(), mem.spent.to_string());
        ev.insert("limit".into(), limit.to_string());
        ev.insert("percent".into(), percent.clone().unwrap_or_else(|| "n/a".into()));
        ev.insert("window".into(), window_ev.clone());
        if let Some(t) = t {
            ev.insert("threshold".into(), format!("{}%", t.percent));
        }
        let by_forecast = mem.forecast;
        if by_forecast && let Some(p) = projected {
            ev.insert("forecast".into(), p.to_string());
        }
        let how = if by_forecast {
            format!(
                "projected spend {} at window end {} crosses {}% of the limit",
                projected.unwrap_or_default(),
                mem.window_end,
                t.map_or(0, |t| t.percent)
            )
        } else {
            format!("spent {} of {} ({}%)", mem.spent, limit, percent.clone().unwrap_or_else(|| "n/a".into()))
        };
        let what = match action {
            ThresholdAction::Warn => "warning".to_string(),
            ThresholdAction::Deprioritize => {
                format!("{} backends moved to the last tier", spec.provider)
            }
            ThresholdAction::Drain => format!("{} backends drained", spec.provider),
        };
        transitions.push(Transition {
            kind: ObjectKind::ProviderBudget,
            object: key.clone(),
            reason: reason_of(action).into(),
            message: clip(format!("budget for provider {}: {how} in window {window_ev}; {what}", spec.provider)),
            warning: true,
            evidence: ev,
            time: now,
        });
    } else if policy_changed && new_action < before {
        let mut ev = BTreeMap::new();
        ev.insert("spent".into(), mem.spent.to_string());
        ev.insert("limit".into(), limit.to_string());
        ev.insert("previousAction".into(), before.map_or("None".into(), |a| format!("{a:?}")));
        ev.insert("action".into(), new_action.map_or("None".into(), |a| format!("{a:?}")));
        transitions.push(Transition {
            kind: ObjectKind::ProviderBudget,
            object: key.clone(),
            reason: "BudgetPolicyChanged".into(),
            message: clip(format!(
                "budget for provider {} changed: action re-evaluated from {} to {} (spent {} of {})",
                spec.provider,
                before.map_or("none".into(), |a| format!("{a:?}")),
                new_action.map_or("none".into(), |a| format!("{a:?}")),
                mem.spent,
                limit
            )),
            warning: false,
            evidence: ev,
            time: now,
        });
    }

    // Status.
    let state = state_of(new_action);
    let pct = percent.clone().unwrap_or_else(|| "n/a".into());
    let summary = format!("spent {} of {} ({pct}%) in window {window_ev}", mem.spent, limit);
    let forecast_note = if mem.forecast { " (reached by forecast)" } else { "" };
    let desired = vec![
        ConditionSpec { type_: condition::READY, status: true, reason: "Evaluated".into(), message: summary.clone() },
        match new_action {
            Some(a) => ConditionSpec {
                type_: condition::WARNING,
                status: true,
                reason: "ThresholdReached".into(),
                message: format!("{a:?} threshold reached{forecast_note}: {summary}"),
            },
            None => ConditionSpec {
                type_: condition::WARNING,
                status: false,
                reason: "BelowThresholds".into(),
                message: format!("below every threshold: {summary}"),
            },
        },
        if new_action == Some(ThresholdAction::Drain) {
            ConditionSpec {
                type_: condition::EXHAUSTED,
                status: true,
                reason: "DrainThresholdReached".into(),
                message: format!("{} backends drained{forecast_note}: {summary}", spec.provider),
            }
        } else {
            ConditionSpec {
                type_: condition::EXHAUSTED,
                status: false,
                reason: "WithinBudget".into(),
                message: format!("not exhausted: {summary}"),
            }
        },
    ];
    let conditions = merge_conditions(&prev_conditions, &desired, generation, now);
    mem.conditions = conditions.clone();
    let status = ProviderBudgetStatus {
        observed_generation: generation,
        conditions,
        window: Some(WindowStatus { start: Time(mem.window_start), end: Time(mem.window_end) }),
        spent: Some(mem.spent.to_string()),
        percent_used: percent,
        state: Some(state),
        forecast_triggered: mem.forecast && new_action.is_some(),
        burn_rate_per_hour: burn.map(|b| b.per_hour().to_fixed(2)),
        projected_exhaustion: projected_exhaustion.map(Time),
        checkpoints: Vec::new(),
        hard: None,
    };
    let effect = BudgetEffect {
        key: key.clone(),
        provider: spec.provider.clone(),
        models: spec.models.clone(),
        action: new_action,
        spent: mem.spent,
        limit: Some(limit),
    };
    BudgetEval {
        key,
        decision: BudgetDecision { provider: spec.provider.clone(), action: new_action, status },
        memory: mem,
        transitions,
        effect,
    }
}

/// Whether the stored window `p` is still the one to use at `now` (see the module rules):
/// it holds `now` and ends no later than the spec's window for `now`, or than
/// [`LONGEST_CALENDAR_WINDOW_MS`] from `now`.
fn stored_window_holds(p: &BudgetMemory, current: (Timestamp, Timestamp), now: Timestamp) -> bool {
    let bound = current.1.max(add_ms(now, LONGEST_CALENDAR_WINDOW_MS));
    p.window_start <= now && now < p.window_end && p.window_end <= bound
}

/// A budget whose rule cannot run: Ready=False naming the field; spend is still added to a
/// stored window that has not ended (one that starts after `now` included: the clock stepped
/// back), so no money is lost. With `fail_closed` (the limit or the window cannot be read) the
/// action is `Drain`; otherwise the stored window's action stays in force until it ends.
#[allow(clippy::too_many_arguments)]
fn invalid_budget(
    b: &BudgetInput,
    key: ObjectKey,
    prev: Option<&BudgetMemory>,
    delta: Money,
    errors: Vec<String>,
    fail_closed: bool,
    generation: Option<i64>,
    now: Timestamp,
) -> BudgetEval {
    let spec = &b.spec;
    let mut mem = prev.cloned().unwrap_or_else(|| BudgetMemory::fresh(now, now));
    let in_window = mem.window_start < mem.window_end && now < mem.window_end;
    if in_window {
        mem.spent += delta;
        mem.total += delta;
    }
    let action = if fail_closed {
        Some(ThresholdAction::Drain)
    } else if in_window {
        mem.action
    } else {
        None
    };
    let message = if fail_closed {
        clip(format!(
            "budget rule cannot run, so the provider's backends are drained until the spec is fixed: {}",
            errors.join("; ")
        ))
    } else {
        clip(format!("budget rule skipped: {}", errors.join("; ")))
    };
    let mut transitions = Vec::new();
    if let Some(t) = invalid_spec_transition(ObjectKind::ProviderBudget, &key, &mem.conditions, &message, now) {
        transitions.push(t);
    }
    let desired = vec![
        ConditionSpec {
            type_: condition::READY,
            status: false,
            reason: "InvalidSpec".into(),
            message: message.clone(),
        },
        ConditionSpec {
            type_: condition::WARNING,
            status: action.is_some(),
            reason: if action.is_some() { "ThresholdReached".into() } else { "BelowThresholds".into() },
            message: format!("action in force: {}", action.map_or("none".into(), |a| format!("{a:?}"))),
        },
        ConditionSpec {
            type_: condition::EXHAUSTED,
            status: action == Some(ThresholdAction::Drain),
            reason: if action == Some(ThresholdAction::Drain) {
                "DrainThresholdReached".into()
            } else {
                "WithinBudget".into()
            },
            message: format!("action in force: {}", action.map_or("none".into(), |a| format!("{a:?}"))),
        },
    ];
    let conditions = merge_conditions(&mem.conditions, &desired, generation, now);
    mem.conditions = conditions.clone();
    let limit = spec.limit.parse::<Money>().ok();
    let status = ProviderBudgetStatus {
        observed_generation: generation,
        conditions,
        window: in_window.then_some(WindowStatus { start: Time(mem.window_start), end: Time(mem.window_end) }),
        spent: in_window.then(|| mem.spent.to_string()),
        percent_used: if in_window { limit.and_then(|l| percent_string(mem.spent, l)) } else { None },
        state: Some(state_of(action)),
        forecast_triggered: !fail_closed && mem.forecast && action.is_some(),
        burn_rate_per_hour: None,
        projected_exhaustion: None,
        checkpoints: Vec::new(),
        hard: None,
    };
    let effect = BudgetEffect {
        key: key.clone(),
        provider: spec.provider.clone(),
        models: spec.models.clone(),
        action,
        spent: mem.spent,
        limit,
    };
    BudgetEval {
        key,
        decision: BudgetDecision { provider: spec.provider.clone(), action, status },
        memory: mem,
        transitions,
        effect,
    }
}

#[cfg(test)]
#[path = "budget_tests.rs"]
mod tests;
