//! Budget windows, spend, threshold escalation, burn rate and forecast.
//!
//! Rules (all pure, `now` is an input):
//! - A window is calendar-aligned in the budget's IANA time zone (`Daily`, `Weekly` from Monday
//!   00:00, `Monthly` from `anchorDay` 00:00 clamped to the month's length) or `Rolling`:
//!   consecutive windows of `duration` aligned to the Unix epoch (so the windows are the same
//!   whoever evaluates them, and a restart does not move them).
//! - Spend accumulates the matching deltas (same namespace and provider, `models` empty or
//!   containing the model). Negative deltas (corrections) are ignored, so spend never decreases
//!   inside a window. Spend resets only when `now` reaches the stored window end; the deltas of
//!   that evaluation count in the new window.
//! - The action in force is the highest of: the action already reached this window, the highest
//!   action of a threshold whose amount is ≤ spent and, with `forecast.enabled`, the highest
//!   action of a threshold crossed by the spend projected at the window end. Actions never
//!   de-escalate inside a window for a fixed policy. When the limit, the thresholds or
//!   `forecast.enabled` change, the reached action is recomputed from the current spend under
//!   the new policy (so raising the limit lifts a Drain at once); this is reported as a
//!   `BudgetPolicyChanged` transition when it lowers the action.
//! - Burn rate: samples of the lifetime cumulative spend (which never resets, so a window
//!   boundary does not distort it) are kept for `forecast.lookback`; the rate is the spend since
//!   the oldest sample older than `now` divided by the time since it. Integers only.
//! - Changes to `spec.window` take effect at the next window boundary (the stored window is
//!   kept until it ends, so spend only ever resets at a boundary).

use std::collections::BTreeMap;

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde::{Deserialize, Serialize};

use super::money::parse_duration_ms;
use super::routes::{add_ms, clip_message, invalid_spec_transition};
use super::{BudgetDecision, ConditionSpec, Money, ObjectKey, ObjectKind, Observations, Transition, merge_conditions};
use crate::api::condition;
use crate::api::{
    BudgetState, BudgetWindow, Period, ProviderBudget, ProviderBudgetSpec, ProviderBudgetStatus, Threshold,
    ThresholdAction, WindowStatus,
};

const MS_PER_HOUR: i128 = 3_600_000;
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
    /// Whether this budget covers a backend of `provider`/`model` in `namespace`.
    pub fn covers(&self, namespace: &str, provider: &str, model: &str) -> bool {
        self.key.namespace == namespace
            && self.provider == provider
            && (self.models.is_empty() || self.models.iter().any(|m| m == model))
    }

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

/// The window `[start, end)` containing `now`.
pub fn window_for(window: &BudgetWindow, now: Timestamp) -> Result<(Timestamp, Timestamp), String> {
    if window.period == Period::Rolling {
        let raw = window.duration.as_deref().unwrap_or("");
        let d = parse_duration_ms(raw).map_err(|e| format!("spec.window.duration: {e}"))?;
        if d <= 0 {
            return Err(format!("spec.window.duration: {raw:?} must be longer than zero"));
        }
        // Consecutive windows of `duration` aligned to the Unix epoch.
        let start = now.as_millisecond().div_euclid(d).saturating_mul(d);
        let s = Timestamp::from_millisecond(start).map_err(|e| format!("spec.window.duration: {e}"))?;
        let e = Timestamp::from_millisecond(start.saturating_add(d))
            .map_err(|_| format!("spec.window.duration: {raw:?} is too long"))?;
        return Ok((s, e));
    }
    let tz = TimeZone::get(&window.time_zone)
        .map_err(|e| format!("spec.window.timeZone: {:?} is not a known IANA time zone ({e})", window.time_zone))?;
    let today = now.to_zoned(tz.clone()).date();
    let err = |e: jiff::Error| format!("spec.window: cannot compute the window: {e}");
    let (start, end) = match window.period {
        Period::Daily => (today, today.tomorrow().map_err(err)?),
        Period::Weekly => {
            let back = i64::from(today.weekday().to_monday_zero_offset());
            let start = today.checked_sub(jiff::Span::new().days(back)).map_err(err)?;
            (start, start.checked_add(jiff::Span::new().days(7)).map_err(err)?)
        }
        Period::Monthly | Period::Rolling => {
            let anchor = window.anchor_day.clamp(1, 31) as i8;
            let this = anchored(today.first_of_month(), anchor).map_err(err)?;
            let start = if today >= this {
                this
            } else {
                let prev_month = today.first_of_month().yesterday().map_err(err)?.first_of_month();
                anchored(prev_month, anchor).map_err(err)?
            };
            let next_month = start.last_of_month().tomorrow().map_err(err)?;
            (start, anchored(next_month, anchor).map_err(err)?)
        }
    };
    // Local midnight; in a DST gap jiff picks the first instant after it.
    let s = start.to_zoned(tz.clone()).map_err(err)?.timestamp();
    let e = end.to_zoned(tz).map_err(err)?.timestamp();
    Ok((s, e))
}

/// Day `anchor` of the month of `first`, clamped to the month's length.
fn anchored(first: Date, anchor: i8) -> Result<Date, jiff::Error> {
    let day = anchor.min(first.days_in_month());
    Date::new(first.year(), first.month(), day)
}

/// Sum of the (non-negative) spend deltas this budget covers.
fn matching_spend(namespace: &str, spec: &ProviderBudgetSpec, obs: &Observations) -> Money {
    obs.spend
        .iter()
        .filter(|(k, _)| {
            k.namespace == namespace
                && k.provider == spec.provider
                && (spec.models.is_empty() || spec.models.contains(&k.model))
        })
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
pub fn evaluate_budget(
    b: &ProviderBudget,
    obs: &Observations,
    prev: Option<&BudgetMemory>,
    now: Timestamp,
) -> BudgetEval {
    let key = ObjectKey::of(b);
    let spec = &b.spec;
    let generation = b.metadata.generation;
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
        _ => {
            return invalid_budget(b, key, prev, delta, errors, generation, now);
        }
    };

    // Window: keep the stored one until it ends.
    let mut mem = match prev {
        Some(p) if now < p.window_end => p.clone(),
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
                    message: clip_message(format!(
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
        None => BudgetMemory {
            window_start: window.0,
            window_end: window.1,
            spent: Money::ZERO,
            action: None,
            forecast: false,
            total: Money::ZERO,
            samples: Vec::new(),
            policy: None,
            conditions: Vec::new(),
        },
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

    // Burn rate over the lookback.
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
            message: clip_message(format!(
                "budget for provider {}: {how} in window {window_ev}; {what}",
                spec.provider
            )),
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
            message: clip_message(format!(
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
        burn_rate_per_hour: burn.map(|b| b.per_hour().to_fixed(2)),
        projected_exhaustion: projected_exhaustion.map(Time),
        checkpoints: Vec::new(),
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

/// A budget whose rule cannot run: Ready=False naming the field; spend is still added to a
/// stored window that covers `now` (so no money is lost), and its action stays in force until
/// that window ends.
fn invalid_budget(
    b: &ProviderBudget,
    key: ObjectKey,
    prev: Option<&BudgetMemory>,
    delta: Money,
    errors: Vec<String>,
    generation: Option<i64>,
    now: Timestamp,
) -> BudgetEval {
    let spec = &b.spec;
    let mut mem = prev.cloned().unwrap_or(BudgetMemory {
        window_start: now,
        window_end: now,
        spent: Money::ZERO,
        action: None,
        forecast: false,
        total: Money::ZERO,
        samples: Vec::new(),
        policy: None,
        conditions: Vec::new(),
    });
    let in_window = mem.window_start <= now && now < mem.window_end;
    if in_window {
        mem.spent += delta;
        mem.total += delta;
    }
    let action = if in_window { mem.action } else { None };
    let message = clip_message(format!("budget rule skipped: {}", errors.join("; ")));
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
        burn_rate_per_hour: None,
        projected_exhaustion: None,
        checkpoints: Vec::new(),
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
mod tests {
    use serde_json::json;

    use super::*;
    use crate::policy::testing::{Obs, budget, cond, plus, t};

    fn win(spec: serde_json::Value, now: &str) -> (String, String) {
        let w: BudgetWindow = serde_json::from_value(spec).unwrap();
        let (s, e) = window_for(&w, t(now)).unwrap();
        (s.to_string(), e.to_string())
    }

    fn pair(a: &str, b: &str) -> (String, String) {
        (a.to_string(), b.to_string())
    }

    fn daily(limit: &str) -> ProviderBudget {
        budget("openai", json!({"provider": "openai", "limit": limit, "window": {"period": "Daily"}}))
    }

    fn run(b: &ProviderBudget, prev: Option<&BudgetMemory>, obs: &Obs, now: Timestamp) -> BudgetEval {
        evaluate_budget(b, &obs.0, prev, now)
    }

    #[test]
    fn daily_window_is_local_midnight_to_midnight() {
        assert_eq!(
            win(json!({"period": "Daily"}), "2025-05-14T13:45:00Z"),
            pair("2025-05-14T00:00:00Z", "2025-05-15T00:00:00Z")
        );
        assert_eq!(
            win(json!({"period": "Daily", "timeZone": "Asia/Tokyo"}), "2025-05-14T16:00:00Z"),
            pair("2025-05-14T15:00:00Z", "2025-05-15T15:00:00Z")
        );
    }

    #[test]
    fn weekly_window_starts_monday() {
        // 2025-05-14 is a Wednesday.
        let w = pair("2025-05-12T00:00:00Z", "2025-05-19T00:00:00Z");
        assert_eq!(win(json!({"period": "Weekly"}), "2025-05-14T13:45:00Z"), w);
        assert_eq!(win(json!({"period": "Weekly"}), "2025-05-12T00:00:00Z"), w);
        assert_eq!(win(json!({"period": "Weekly"}), "2025-05-18T23:59:59Z"), w);
        assert_eq!(
            win(json!({"period": "Weekly"}), "2025-05-19T00:00:00Z"),
            pair("2025-05-19T00:00:00Z", "2025-05-26T00:00:00Z")
        );
    }

    #[test]
    fn monthly_window_clamps_the_anchor_day() {
        let m31 = json!({"period": "Monthly", "anchorDay": 31});
        // Jan 31 → Feb 28 (2025) / Feb 29 (2024, leap year).
        assert_eq!(win(m31.clone(), "2025-01-31T10:00:00Z"), pair("2025-01-31T00:00:00Z", "2025-02-28T00:00:00Z"));
        assert_eq!(win(m31.clone(), "2024-01-31T10:00:00Z"), pair("2024-01-31T00:00:00Z", "2024-02-29T00:00:00Z"));
        // Before the clamped anchor: still the January window.
        assert_eq!(win(m31.clone(), "2025-02-27T23:00:00Z"), pair("2025-01-31T00:00:00Z", "2025-02-28T00:00:00Z"));
        // From the clamped anchor on, the next window ends on the next month's anchor.
        assert_eq!(win(m31.clone(), "2025-02-28T00:00:00Z"), pair("2025-02-28T00:00:00Z", "2025-03-31T00:00:00Z"));
        assert_eq!(win(m31.clone(), "2025-03-01T00:00:00Z"), pair("2025-02-28T00:00:00Z", "2025-03-31T00:00:00Z"));
        assert_eq!(win(m31.clone(), "2024-02-29T12:00:00Z"), pair("2024-02-29T00:00:00Z", "2024-03-31T00:00:00Z"));
        assert_eq!(win(m31, "2025-04-30T01:00:00Z"), pair("2025-04-30T00:00:00Z", "2025-05-31T00:00:00Z"));
        // Anchor after today: the window started last month.
        let m15 = json!({"period": "Monthly", "anchorDay": 15});
        assert_eq!(win(m15, "2025-03-10T00:00:00Z"), pair("2025-02-15T00:00:00Z", "2025-03-15T00:00:00Z"));
        // Year boundary.
        assert_eq!(
            win(json!({"period": "Monthly"}), "2025-12-31T23:59:59Z"),
            pair("2025-12-01T00:00:00Z", "2026-01-01T00:00:00Z")
        );
        assert_eq!(
            win(json!({"period": "Monthly", "anchorDay": 31}), "2026-01-05T00:00:00Z"),
            pair("2025-12-31T00:00:00Z", "2026-01-31T00:00:00Z")
        );
    }

    #[test]
    fn windows_follow_dst_in_the_time_zone() {
        let berlin = json!({"period": "Daily", "timeZone": "Europe/Berlin"});
        // Spring forward: a 23-hour day.
        assert_eq!(win(berlin.clone(), "2025-03-30T12:00:00Z"), pair("2025-03-29T23:00:00Z", "2025-03-30T22:00:00Z"));
        // Fall back: a 25-hour day.
        assert_eq!(win(berlin, "2025-10-26T12:00:00Z"), pair("2025-10-25T22:00:00Z", "2025-10-26T23:00:00Z"));
        // Monthly across the DST change: local midnight both ends.
        assert_eq!(
            win(json!({"period": "Monthly", "timeZone": "Europe/Berlin"}), "2025-03-30T12:00:00Z"),
            pair("2025-02-28T23:00:00Z", "2025-03-31T22:00:00Z")
        );
        // Weekly in New York across the US change (2025-03-09).
        assert_eq!(
            win(json!({"period": "Weekly", "timeZone": "America/New_York"}), "2025-03-12T12:00:00Z"),
            pair("2025-03-10T04:00:00Z", "2025-03-17T04:00:00Z")
        );
        // Daily windows are contiguous even where local midnight does not exist (Santiago, 2024-09-08).
        let santiago: BudgetWindow =
            serde_json::from_value(json!({"period": "Daily", "timeZone": "America/Santiago"})).unwrap();
        let mut now = t("2024-09-06T12:00:00Z");
        let (_, mut prev_end) = window_for(&santiago, now).unwrap();
        for _ in 0..4 {
            now = plus(prev_end, 1);
            let (s, e) = window_for(&santiago, now).unwrap();
            assert_eq!(s, prev_end);
            assert!(s <= now && now < e);
            prev_end = e;
        }
    }

    #[test]
    fn rolling_windows_are_aligned_to_the_epoch() {
        assert_eq!(
            win(json!({"period": "Rolling", "duration": "7h"}), "1970-01-01T10:00:00Z"),
            pair("1970-01-01T07:00:00Z", "1970-01-01T14:00:00Z")
        );
        assert_eq!(
            win(json!({"period": "Rolling", "duration": "24h"}), "2025-05-14T13:45:00Z"),
            pair("2025-05-14T00:00:00Z", "2025-05-15T00:00:00Z")
        );
        let w: BudgetWindow = serde_json::from_value(json!({"period": "Rolling", "duration": "90m"})).unwrap();
        let (s, e) = window_for(&w, t("2025-05-14T13:45:00Z")).unwrap();
        assert_eq!((e.as_millisecond() - s.as_millisecond()), 90 * 60_000);
        assert_eq!(s.as_millisecond() % (90 * 60_000), 0);
        assert!(s <= t("2025-05-14T13:45:00Z"));
    }

    #[test]
    fn bad_window_fields_are_reported_not_panicked() {
        let bad_tz = budget(
            "b",
            json!({"provider": "openai", "limit": "10", "window": {"period": "Daily", "timeZone": "Mars/Olympus"}}),
        );
        let now = t("2025-05-14T00:00:00Z");
        let ev = run(&bad_tz, None, &Obs::new().spend("openai", "50"), now);
        let ready = cond(&ev.decision.status.conditions, "Ready");
        assert_eq!(ready.status, "False");
        assert!(ready.message.contains("spec.window.timeZone"), "{}", ready.message);
        assert_eq!(ev.decision.action, None);
        assert_eq!(ev.transitions.len(), 1);
        assert_eq!(ev.transitions[0].reason, "InvalidSpec");
        // Reported once.
        let again = run(&bad_tz, Some(&ev.memory), &Obs::new(), plus(now, 60));
        assert!(again.transitions.is_empty());

        let bad_rolling = budget(
            "b",
            json!({"provider": "openai", "limit": "10", "window": {"period": "Rolling", "duration": "0s"}}),
        );
        let ev = run(&bad_rolling, None, &Obs::new(), now);
        assert!(cond(&ev.decision.status.conditions, "Ready").message.contains("spec.window.duration"));
        let bad_lookback = budget(
            "b",
            json!({"provider": "openai", "limit": "10", "forecast": {"enabled": true, "lookback": "soon"}}),
        );
        let ev = run(&bad_lookback, None, &Obs::new(), now);
        assert!(cond(&ev.decision.status.conditions, "Ready").message.contains("spec.forecast.lookback"));
    }

    #[test]
    fn invalid_spec_keeps_counting_and_keeps_the_action_until_the_window_ends() {
        let good = daily("100");
        let now = t("2025-05-14T10:00:00Z");
        let ev = run(&good, None, &Obs::new().spend("openai", "100"), now);
        assert_eq!(ev.decision.action, Some(ThresholdAction::Drain));
        let mut bad = good.clone();
        bad.spec.window.time_zone = "Nowhere/Land".into();
        let ev2 = run(&bad, Some(&ev.memory), &Obs::new().spend("openai", "1"), plus(now, 60));
        assert_eq!(ev2.decision.action, Some(ThresholdAction::Drain));
        assert_eq!(ev2.memory.spent, Money::from_usd(101));
        let ev3 = run(&bad, Some(&ev2.memory), &Obs::new(), t("2025-05-15T00:00:01Z"));
        assert_eq!(ev3.decision.action, None);
    }

    #[test]
    fn spend_counts_only_matching_deltas() {
        let b = budget(
            "b",
            json!({"provider": "openai", "models": ["gpt-4o"], "limit": "100", "window": {"period": "Daily"}}),
        );
        let obs = Obs::new()
            .spend_in("default", "openai", "gpt-4o", "1.25")
            .spend_in("default", "openai", "gpt-4o-mini", "7")
            .spend_in("default", "anthropic", "gpt-4o", "7")
            .spend_in("other", "openai", "gpt-4o", "7");
        let ev = run(&b, None, &obs, t("2025-05-14T10:00:00Z"));
        assert_eq!(ev.memory.spent, "1.25".parse().unwrap());
        assert_eq!(ev.decision.status.spent.as_deref(), Some("1.250000"));
        // A negative correction is ignored: spend never decreases.
        let ev = run(
            &b,
            Some(&ev.memory),
            &Obs::new().spend_in("default", "openai", "gpt-4o", "-0.25"),
            t("2025-05-14T10:01:00Z"),
        );
        assert_eq!(ev.memory.spent, "1.25".parse().unwrap());
        // Empty models: every model of the provider.
        let all = daily("100");
        let ev = run(
            &all,
            None,
            &Obs::new().spend_in("default", "openai", "a", "1").spend_in("default", "openai", "b", "2"),
            t("2025-05-14T10:00:00Z"),
        );
        assert_eq!(ev.memory.spent, Money::from_usd(3));
    }

    #[test]
    fn thresholds_escalate_with_evidence() {
        let b = daily("100");
        let t0 = t("2025-05-14T10:00:00Z");
        let e1 = run(&b, None, &Obs::new().spend("openai", "79.99"), t0);
        assert_eq!(e1.decision.action, None);
        assert_eq!(e1.decision.status.state, Some(BudgetState::Ok));
        assert!(e1.transitions.is_empty());

        let e2 = run(&b, Some(&e1.memory), &Obs::new().spend("openai", "0.01"), plus(t0, 60));
        assert_eq!(e2.decision.action, Some(ThresholdAction::Warn));
        assert_eq!(e2.decision.status.state, Some(BudgetState::Warning));
        assert_eq!(e2.transitions.len(), 1);
        let tr = &e2.transitions[0];
        assert_eq!((tr.reason.as_str(), tr.warning, tr.kind), ("BudgetWarning", true, ObjectKind::ProviderBudget));
        assert_eq!(tr.evidence["spent"], "80.000000");
        assert_eq!(tr.evidence["limit"], "100.000000");
        assert_eq!(tr.evidence["percent"], "80.00");
        assert_eq!(tr.evidence["threshold"], "80%");
        assert_eq!(tr.evidence["window"], "2025-05-14T00:00:00Z/2025-05-15T00:00:00Z");
        assert!(!tr.evidence.contains_key("forecast"));
        assert_eq!(cond(&e2.decision.status.conditions, "Warning").status, "True");
        assert_eq!(cond(&e2.decision.status.conditions, "Exhausted").status, "False");

        let e3 = run(&b, Some(&e2.memory), &Obs::new().spend("openai", "15"), plus(t0, 120));
        assert_eq!(e3.decision.action, Some(ThresholdAction::Deprioritize));
        assert_eq!(e3.decision.status.state, Some(BudgetState::Deprioritized));
        assert_eq!(e3.transitions[0].reason, "BudgetDeprioritized");

        // Jumping over a level reports the level reached.
        let e4 = run(&b, Some(&e3.memory), &Obs::new().spend("openai", "50"), plus(t0, 180));
        assert_eq!(e4.decision.action, Some(ThresholdAction::Drain));
        assert_eq!(e4.decision.status.state, Some(BudgetState::Exhausted));
        assert_eq!(e4.transitions.iter().map(|t| t.reason.as_str()).collect::<Vec<_>>(), ["BudgetExhausted"]);
        assert_eq!(cond(&e4.decision.status.conditions, "Exhausted").status, "True");
        assert_eq!(e4.decision.status.percent_used.as_deref(), Some("145.00"));
        // Nothing new when nothing changes.
        let e5 = run(&b, Some(&e4.memory), &Obs::new().spend("openai", "1"), plus(t0, 240));
        assert!(e5.transitions.is_empty());
    }

    #[test]
    fn actions_never_de_escalate_inside_a_window() {
        // Reached by forecast, then the burn stops: the action stays.
        let b = budget(
            "b",
            json!({"provider": "openai", "limit": "100", "window": {"period": "Daily"}, "forecast": {"enabled": true, "lookback": "1h"}}),
        );
        let t0 = t("2025-05-14T00:00:00Z");
        let e0 = run(&b, None, &Obs::new(), t0);
        let e1 = run(&b, Some(&e0.memory), &Obs::new().spend("openai", "5"), plus(t0, 3600));
        assert_eq!(e1.decision.action, Some(ThresholdAction::Drain));
        let mut mem = e1.memory;
        for h in 2..23 {
            let e = run(&b, Some(&mem), &Obs::new(), plus(t0, h * 3600));
            assert_eq!(e.decision.action, Some(ThresholdAction::Drain), "hour {h}");
            assert!(e.transitions.is_empty());
            mem = e.memory;
        }
    }

    #[test]
    fn spend_resets_only_at_the_window_end() {
        let b = daily("100");
        let t0 = t("2025-05-14T10:00:00Z");
        let e1 = run(&b, None, &Obs::new().spend("openai", "90"), t0);
        assert_eq!(e1.decision.action, Some(ThresholdAction::Warn));
        let e2 = run(&b, Some(&e1.memory), &Obs::new().spend("openai", "1"), t("2025-05-14T23:59:59.999Z"));
        assert_eq!(e2.memory.spent, Money::from_usd(91));
        assert!(e2.transitions.is_empty());
        let e3 = run(&b, Some(&e2.memory), &Obs::new().spend("openai", "2"), t("2025-05-15T00:00:00Z"));
        assert_eq!(e3.memory.spent, Money::from_usd(2));
        assert_eq!(e3.decision.action, None);
        assert_eq!(e3.decision.status.state, Some(BudgetState::Ok));
        let w = e3.decision.status.window.clone().unwrap();
        assert_eq!((w.start.0.to_string(), w.end.0.to_string()), pair("2025-05-15T00:00:00Z", "2025-05-16T00:00:00Z"));
        assert_eq!(e3.transitions.len(), 1);
        let tr = &e3.transitions[0];
        assert_eq!((tr.reason.as_str(), tr.warning), ("BudgetWindowReset", false));
        assert_eq!(tr.evidence["previousSpent"], "91.000000");
        assert_eq!(tr.evidence["previousAction"], "Warn");
        // A window without an action resets silently.
        let e4 = run(&b, Some(&e3.memory), &Obs::new(), t("2025-05-16T00:00:00Z"));
        assert!(e4.transitions.is_empty());
        assert_eq!(e4.memory.spent, Money::ZERO);
    }

    #[test]
    fn burn_rate_and_projected_exhaustion() {
        let b = budget(
            "b",
            json!({"provider": "openai", "limit": "100", "window": {"period": "Daily"}, "forecast": {"lookback": "2h"}}),
        );
        let t0 = t("2025-05-14T00:00:00Z");
        let e0 = run(&b, None, &Obs::new(), t0);
        assert_eq!(e0.decision.status.burn_rate_per_hour, None);
        let e1 = run(&b, Some(&e0.memory), &Obs::new().spend("openai", "10"), plus(t0, 3600));
        assert_eq!(e1.decision.status.burn_rate_per_hour.as_deref(), Some("10.00"));
        // 90 left at 10/h: 9 hours later, inside the window.
        assert_eq!(e1.decision.status.projected_exhaustion.as_ref().map(|t| t.0), Some(t("2025-05-14T10:00:00Z")));
        // Forecast disabled: no action from the projection.
        assert_eq!(e1.decision.action, None);
        // Half an hour later with 2.5 more: 12.5 over 1.5h.
        let e2 = run(&b, Some(&e1.memory), &Obs::new().spend("openai", "2.5"), plus(t0, 5400));
        assert_eq!(e2.decision.status.burn_rate_per_hour.as_deref(), Some("8.33"));
        // Samples older than the lookback are pruned: 3h later only the last 2h count.
        let e3 = run(&b, Some(&e2.memory), &Obs::new().spend("openai", "1"), plus(t0, 3 * 3600));
        assert!(e3.memory.samples.iter().all(|s| s.at >= plus(t0, 3600)));
        // Oldest sample kept is 01:00 (total 10): 3.5 over 2h.
        assert_eq!(e3.decision.status.burn_rate_per_hour.as_deref(), Some("1.75"));
        // Exhaustion beyond the window end is not projected.
        let big = budget("b", json!({"provider": "openai", "limit": "1000", "window": {"period": "Daily"}}));
        let e0 = run(&big, None, &Obs::new(), t0);
        let e1 = run(&big, Some(&e0.memory), &Obs::new().spend("openai", "10"), plus(t0, 3600));
        assert_eq!(e1.decision.status.projected_exhaustion, None);
        assert_eq!(e1.decision.status.burn_rate_per_hour.as_deref(), Some("10.00"));
    }

    #[test]
    fn burn_rate_survives_a_window_reset() {
        let b = budget(
            "b",
            json!({"provider": "openai", "limit": "1000", "window": {"period": "Daily"}, "forecast": {"lookback": "3h"}}),
        );
        let e0 = run(&b, None, &Obs::new().spend("openai", "5"), t("2025-05-14T23:00:00Z"));
        let e1 = run(&b, Some(&e0.memory), &Obs::new().spend("openai", "4"), t("2025-05-15T01:00:00Z"));
        assert_eq!(e1.memory.spent, Money::from_usd(4));
        assert_eq!(e1.decision.status.burn_rate_per_hour.as_deref(), Some("2.00"));
    }

    #[test]
    fn forecast_applies_an_action_early() {
        let b = budget(
            "b",
            json!({"provider": "openai", "limit": "100", "window": {"period": "Daily"}, "forecast": {"enabled": true, "lookback": "1h"}}),
        );
        let t0 = t("2025-05-14T00:00:00Z");
        let e0 = run(&b, None, &Obs::new(), t0);
        // 2/h: projected 2 + 2 × 23 = 48 at the window end: nothing.
        let e1 = run(&b, Some(&e0.memory), &Obs::new().spend("openai", "2"), plus(t0, 3600));
        assert_eq!(e1.decision.action, None);
        // 3.5/h: projected 5.5 + 3.5 × 22 = 82.5 ≥ 80%: Warn, by forecast.
        let e2 = run(&b, Some(&e1.memory), &Obs::new().spend("openai", "3.5"), plus(t0, 7200));
        assert_eq!(e2.decision.action, Some(ThresholdAction::Warn));
        let tr = &e2.transitions[0];
        assert_eq!(tr.reason, "BudgetWarning");
        assert_eq!(tr.evidence["forecast"], "82.500000");
        assert_eq!(tr.evidence["spent"], "5.500000");
        assert!(tr.message.contains("projected"), "{}", tr.message);
        assert!(cond(&e2.decision.status.conditions, "Warning").message.contains("forecast"));
        // 5/h: 10.5 + 5 × 21 = 115.5 ≥ 100%: Drain.
        let e3 = run(&b, Some(&e2.memory), &Obs::new().spend("openai", "5"), plus(t0, 3 * 3600));
        assert_eq!(e3.decision.action, Some(ThresholdAction::Drain));
        assert_eq!(e3.transitions[0].reason, "BudgetExhausted");
        assert_eq!(e3.decision.status.state, Some(BudgetState::Exhausted));
    }

    #[test]
    fn raising_the_limit_re_evaluates_the_action() {
        let b = daily("100");
        let t0 = t("2025-05-14T10:00:00Z");
        let e1 = run(&b, None, &Obs::new().spend("openai", "100"), t0);
        assert_eq!(e1.decision.action, Some(ThresholdAction::Drain));
        let raised = daily("200");
        let e2 = run(&raised, Some(&e1.memory), &Obs::new(), plus(t0, 60));
        assert_eq!(e2.decision.action, None);
        assert_eq!(e2.transitions[0].reason, "BudgetPolicyChanged");
        assert!(!e2.transitions[0].warning);
        assert_eq!(e2.memory.spent, Money::from_usd(100));
        // Lowering it again escalates at once.
        let e3 = run(&b, Some(&e2.memory), &Obs::new(), plus(t0, 120));
        assert_eq!(e3.decision.action, Some(ThresholdAction::Drain));
        assert_eq!(e3.transitions[0].reason, "BudgetExhausted");
    }

    #[test]
    fn status_reports_exact_figures() {
        let b = budget("b", json!({"provider": "openai", "limit": "5000", "window": {"period": "Monthly"}}));
        let ev = run(&b, None, &Obs::new().spend("openai", "4123.5512"), t("2025-05-14T10:00:00Z"));
        let s = &ev.decision.status;
        assert_eq!(s.spent.as_deref(), Some("4123.551200"));
        assert_eq!(s.percent_used.as_deref(), Some("82.47"));
        assert_eq!(s.state, Some(BudgetState::Warning));
        assert_eq!(s.observed_generation, Some(1));
        assert!(s.checkpoints.is_empty());
        assert_eq!(ev.decision.provider, "openai");
        assert_eq!(cond(&s.conditions, "Ready").status, "True");
        assert_eq!(percent_string(Money::ZERO, Money::ZERO).as_deref(), Some("0.00"));
        assert_eq!(percent_string(Money::from_usd(1), Money::from_usd(3)).as_deref(), Some("33.33"));
    }

    #[test]
    fn condition_transition_times_only_move_on_a_flip() {
        let b = daily("100");
        let t0 = t("2025-05-14T10:00:00Z");
        let e1 = run(&b, None, &Obs::new().spend("openai", "85"), t0);
        let e2 = run(&b, Some(&e1.memory), &Obs::new().spend("openai", "1"), plus(t0, 60));
        for ty in ["Ready", "Warning", "Exhausted"] {
            assert_eq!(cond(&e2.decision.status.conditions, ty).last_transition_time.0, t0, "{ty}");
        }
        let e3 = run(&b, Some(&e2.memory), &Obs::new().spend("openai", "20"), plus(t0, 120));
        assert_eq!(cond(&e3.decision.status.conditions, "Exhausted").last_transition_time.0, plus(t0, 120));
        assert_eq!(cond(&e3.decision.status.conditions, "Warning").last_transition_time.0, t0);
    }

    #[test]
    fn memory_round_trips_through_json() {
        let b = budget(
            "b",
            json!({"provider": "openai", "limit": "100", "window": {"period": "Daily"}, "forecast": {"enabled": true}}),
        );
        let t0 = t("2025-05-14T10:00:00Z");
        let e0 = run(&b, None, &Obs::new().spend("openai", "1"), t0);
        let e1 = run(&b, Some(&e0.memory), &Obs::new().spend("openai", "90"), plus(t0, 60));
        let json = serde_json::to_value(&e1.memory).unwrap();
        assert_eq!(json["spent"], "91.000000");
        assert_eq!(json["windowStart"], "2025-05-14T00:00:00Z");
        // 90 in a minute: the forecast drains it.
        assert_eq!(json["action"], "Drain");
        assert_eq!(json["forecast"], true);
        let back: BudgetMemory = serde_json::from_value(json).unwrap();
        assert_eq!(back, e1.memory);
        // The four documented fields are enough to resume.
        let minimal: BudgetMemory = serde_json::from_value(json!({
            "windowStart": "2025-05-14T00:00:00Z", "windowEnd": "2025-05-15T00:00:00Z", "spent": "3", "action": null
        }))
        .unwrap();
        let e = run(&b, Some(&minimal), &Obs::new().spend("openai", "1"), t0);
        assert_eq!(e.memory.spent, Money::from_usd(4));
    }
}
