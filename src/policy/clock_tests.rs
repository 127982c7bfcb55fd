//! The clock stepping back (an NTP correction, a clock that was wrong): budget windows, burn
//! rate and forecast, health ejection timers. `now` moves backwards by minutes and by hours
//! between evaluations; nothing panics, spend is neither lost nor reset by the step, a budget
//! keeps rolling over at its boundaries, an ejection is neither stretched by the step nor cut
//! short, and the burn rate is never negative or absurd.

use serde_json::{Value, json};

use super::budget::{BudgetEval, BudgetMemory, evaluate_budget};
use super::health::{BackendHealth, Phase};
use super::testing::{Obs, Sim, backend, budget, plus, reasons, route, t};
use super::{BackendKey, Money};
use crate::api::{BackendState, ProviderBudget, ThresholdAction};

fn daily(limit: &str) -> ProviderBudget {
    budget("b", json!({"provider": "openai", "limit": limit, "window": {"period": "Daily"}}))
}

fn run(b: &ProviderBudget, prev: Option<&BudgetMemory>, obs: &Obs, now: jiff::Timestamp) -> BudgetEval {
    evaluate_budget(&crate::api::convert::budget_input(b), &obs.0, prev, now)
}

fn window(ev: &BudgetEval) -> (String, String) {
    (ev.memory.window_start.to_string(), ev.memory.window_end.to_string())
}

fn day(d: &str) -> (String, String) {
    let start = t(&format!("{d}T00:00:00Z"));
    (start.to_string(), plus(start, 86_400).to_string())
}

#[test]
fn a_step_back_inside_a_window_keeps_the_window_and_the_spend() {
    let b = daily("100");
    let t0 = t("2025-05-14T10:00:00Z");
    let e0 = run(&b, None, &Obs::new().spend("openai", "10"), t0);
    // Minutes back.
    let e1 = run(&b, Some(&e0.memory), &Obs::new().spend("openai", "5"), plus(t0, -10 * 60));
    assert_eq!(window(&e1), day("2025-05-14"));
    assert_eq!(e1.memory.spent, Money::from_usd(15));
    assert!(e1.transitions.is_empty(), "{:?}", e1.transitions);
    // Hours back, still inside the day.
    let e2 = run(&b, Some(&e1.memory), &Obs::new().spend("openai", "1"), plus(t0, -7 * 3600));
    assert_eq!(window(&e2), day("2025-05-14"));
    assert_eq!(e2.memory.spent, Money::from_usd(16));
    assert_eq!(e2.memory.total, Money::from_usd(16));
    // The day still ends at midnight.
    let e3 = run(&b, Some(&e2.memory), &Obs::new().spend("openai", "2"), t("2025-05-15T00:00:00Z"));
    assert_eq!(window(&e3), day("2025-05-15"));
    assert_eq!(e3.memory.spent, Money::from_usd(2));
}

/// A step back across the window's start: the spend recorded "after midnight" was spent before
/// it in real time, so it moves into the window holding `now`, which rolls over at its end.
#[test]
fn a_step_back_across_the_window_start_keeps_the_spend_and_rolls_over_at_the_real_boundary() {
    let b = daily("100");
    let e0 = run(&b, None, &Obs::new().spend("openai", "85"), t("2025-05-15T00:30:00Z"));
    assert_eq!(e0.decision.action, Some(ThresholdAction::Warn));
    let e1 = run(&b, Some(&e0.memory), &Obs::new().spend("openai", "1"), t("2025-05-14T23:00:00Z"));
    assert_eq!(window(&e1), day("2025-05-14"));
    assert_eq!(e1.memory.spent, Money::from_usd(86), "nothing lost, nothing reset");
    assert_eq!(e1.decision.action, Some(ThresholdAction::Warn), "the action reached is kept");
    assert_eq!(reasons_of(&e1), ["BudgetWindowRealigned"]);
    assert!(e1.transitions[0].warning);
    assert_eq!(e1.transitions[0].evidence["spent"], "85.000000");
    // Realigned once.
    let e2 = run(&b, Some(&e1.memory), &Obs::new(), t("2025-05-14T23:30:00Z"));
    assert!(e2.transitions.is_empty());
    assert_eq!(e2.memory.spent, Money::from_usd(86));
    let e3 = run(&b, Some(&e2.memory), &Obs::new().spend("openai", "3"), t("2025-05-15T00:00:00Z"));
    assert_eq!(window(&e3), day("2025-05-15"));
    assert_eq!(e3.memory.spent, Money::from_usd(3));
    assert_eq!(e3.memory.total, Money::from_usd(89), "the lifetime total keeps everything");
}

fn reasons_of(ev: &BudgetEval) -> Vec<&str> {
    ev.transitions.iter().map(|t| t.reason.as_str()).collect()
}

/// The clock said 2030 while the window was opened, then was corrected: the budget keeps its
/// spend and rolls over at the current window's end, not in 2030.
#[test]
fn a_window_opened_years_ahead_is_realigned_and_rolls_over() {
    let b = daily("100");
    let e0 = run(&b, None, &Obs::new().spend("openai", "90"), t("2030-01-01T10:00:00Z"));
    let now = t("2025-05-14T10:00:00Z");
    let e1 = run(&b, Some(&e0.memory), &Obs::new().spend("openai", "1"), now);
    assert_eq!(window(&e1), day("2025-05-14"));
    assert_eq!(e1.memory.spent, Money::from_usd(91));
    assert_eq!(e1.decision.action, Some(ThresholdAction::Warn));
    let status_window = e1.decision.status.window.clone().unwrap();
    assert_eq!(status_window.end.0, t("2025-05-15T00:00:00Z"));
    let e2 = run(&b, Some(&e1.memory), &Obs::new(), t("2025-05-15T00:00:01Z"));
    assert_eq!(window(&e2), day("2025-05-15"));
    assert_eq!(e2.memory.spent, Money::ZERO);
    assert_eq!(e2.decision.action, None);
}

/// A stored window that started in the past but ends far beyond any window of the spec (a
/// hand-edited state) would never roll over: it is realigned too, keeping the spend.
#[test]
fn a_stored_window_no_spec_gives_is_realigned() {
    let b = daily("100");
    let now = t("2025-05-14T10:00:00Z");
    let mut mem = run(&b, None, &Obs::new().spend("openai", "7"), now).memory;
    mem.window_end = t("2030-01-01T00:00:00Z");
    let e1 = run(&b, Some(&mem), &Obs::new(), plus(now, 60));
    assert_eq!(window(&e1), day("2025-05-14"));
    assert_eq!(e1.memory.spent, Money::from_usd(7));
    assert_eq!(reasons_of(&e1), ["BudgetWindowRealigned"]);
    // A spec changed mid-window (Monthly to Daily) keeps its stored month until it ends.
    let monthly = budget("b", json!({"provider": "openai", "limit": "100", "window": {"period": "Monthly"}}));
    let m = run(&monthly, None, &Obs::new().spend("openai", "7"), now).memory;
    let e2 = run(&b, Some(&m), &Obs::new(), plus(now, 60));
    assert_eq!(e2.memory.window_end, t("2025-06-01T00:00:00Z"));
    assert!(e2.transitions.is_empty());
}

/// Spend of $1 a minute for an hour, then the clock steps back an hour: the rate over samples
/// from the clock that was ahead would be the whole hour's spend over a few seconds
/// (thousands of dollars an hour) and the forecast would drain the provider. The samples are
/// dropped instead, the rate is measured again, and it is the real one a minute later.
#[test]
fn burn_rate_after_a_step_back_is_never_negative_nor_absurd() {
    let b = budget(
        "b",
        json!({"provider": "openai", "limit": "10000", "window": {"period": "Daily"},
               "forecast": {"enabled": true, "lookback": "1h"}}),
    );
    let t0 = t("2025-05-14T00:00:00Z");
    let mut mem = run(&b, None, &Obs::new(), t0).memory;
    for minute in 1..=60 {
        let ev = run(&b, Some(&mem), &Obs::new().spend("openai", "1"), plus(t0, minute * 60));
        assert_eq!(ev.decision.action, None);
        mem = ev.memory;
    }
    assert_eq!(mem.spent, Money::from_usd(60));
    // 20 seconds, an hour less 10 seconds, two hours less 10 seconds (into the previous day).
    for back in [30, 3600, 2 * 3600] {
        let now = plus(t0, 3600 - back + 10);
        let ev = run(&b, Some(&mem), &Obs::new().spend("openai", "1"), now);
        assert_eq!(ev.memory.spent, Money::from_usd(61), "step back {back}s: nothing lost");
        assert_eq!(ev.decision.status.burn_rate_per_hour, None, "step back {back}s: measured again");
        assert_eq!(ev.decision.status.projected_exhaustion, None);
        assert_eq!(ev.decision.action, None, "step back {back}s: no forecast from an absurd rate");
        // A minute later, $1 more: $60 an hour, the real rate.
        let next = run(&b, Some(&ev.memory), &Obs::new().spend("openai", "1"), plus(now, 60));
        assert_eq!(next.decision.status.burn_rate_per_hour.as_deref(), Some("60.00"), "step back {back}s");
        assert_eq!(next.decision.action, None);
    }
}

/// A budget whose rule cannot run (an unreadable lookback) still counts spend in its stored
/// window when the clock steps back before the window's start.
#[test]
fn an_invalid_budget_keeps_counting_after_a_step_back() {
    let good = daily("100");
    let e0 = run(&good, None, &Obs::new().spend("openai", "5"), t("2025-05-15T00:30:00Z"));
    let mut bad = good.clone();
    bad.spec.forecast.lookback = "soon".into();
    let e1 = run(&bad, Some(&e0.memory), &Obs::new().spend("openai", "2"), t("2025-05-14T23:50:00Z"));
    assert_eq!(e1.memory.spent, Money::from_usd(7), "nothing lost");
    assert_eq!(e1.decision.status.spent.as_deref(), Some("7.000000"));
}

fn sim(health: Value) -> Sim {
    let backends = vec![backend("a", "openai", 70, 0), backend("b", "deepseek", 30, 0)];
    Sim::new(vec![route("r", json!({"backends": backends, "health": health}))], vec![])
}

fn health<'a>(s: &'a Sim, name: &str) -> &'a BackendHealth {
    &s.state.backends[&BackendKey::new("default", "r", name)]
}

fn state_of(d: &super::Decision, name: &str) -> BackendState {
    d.routes.values().next().unwrap().decided.iter().find(|r| r.name == name).unwrap().state
}

/// Ejected for 30 s, then the clock steps back: the ejection ends 30 s after the step at the
/// latest (not 30 s plus the step), and not at once either.
#[test]
fn an_ejection_is_not_stretched_by_a_step_back_nor_cut_short() {
    for back in [5 * 60, 3 * 3600] {
        let mut s = sim(json!({}));
        let t0 = t("2025-05-14T10:00:00Z");
        let d = s.step(t0, &Obs::new().req("r", "a", 15, 5).req("r", "b", 20, 0));
        assert_eq!(state_of(&d, "a"), BackendState::Ejected);
        let now = plus(t0, 1 - back);
        let d = s.idle(now);
        assert_eq!(state_of(&d, "a"), BackendState::Ejected, "back {back}s: still out right after the step");
        assert_eq!(health(&s, "a").phase, Phase::Ejected { until: plus(now, 30) });
        let d = s.idle(plus(now, 29));
        assert_eq!(state_of(&d, "a"), BackendState::Ejected, "back {back}s");
        let d = s.idle(plus(now, 30));
        assert_eq!(state_of(&d, "a"), BackendState::Ramping, "back {back}s: the ejection is over after its 30s");
    }
}

/// Ramping: a stage lasts one window (5m) from its start; after a step back it lasts one
/// window from the step, not the step plus a window.
#[test]
fn a_ramp_stage_is_not_stretched_by_a_step_back() {
    let mut s = sim(json!({}));
    let t0 = t("2025-05-14T10:00:00Z");
    s.step(t0, &Obs::new().req("r", "a", 15, 5).req("r", "b", 20, 0));
    let d = s.idle(plus(t0, 30));
    assert_eq!(state_of(&d, "a"), BackendState::Ramping);
    let now = plus(t0, 60 - 2 * 3600);
    s.step(now, &Obs::new().req("r", "a", 5, 0));
    let d = s.step(plus(now, 5 * 60), &Obs::new().req("r", "a", 5, 0));
    assert!(reasons(&d).contains(&"BackendRamping"), "{:?}", reasons(&d));
    assert!(matches!(health(&s, "a").phase, Phase::Ramping { stage: 1, .. }), "{:?}", health(&s, "a").phase);
}

/// Errors recorded before a step back leave the window one window after the step, so they
/// cannot add to errors an hour (of real time) later and trip the backend.
#[test]
fn samples_from_before_a_step_back_leave_the_window_in_time() {
    let mut s = sim(json!({}));
    let t0 = t("2025-05-14T10:00:00Z");
    // 19 errors: below minRequests (20), no trip.
    let d = s.step(t0, &Obs::new().req("r", "a", 0, 19));
    assert_eq!(state_of(&d, "a"), BackendState::Active);
    let now = plus(t0, -3600);
    s.idle(now);
    // Six minutes later (past the 5m window), one more error: 1 in 1, below minRequests.
    let d = s.step(plus(now, 6 * 60), &Obs::new().req("r", "a", 0, 1));
    assert_eq!(state_of(&d, "a"), BackendState::Active, "{:?}", reasons(&d));
    assert_eq!(health(&s, "a").window_totals(), (1, 1));
}

/// `trips` resets after `ejection.max` (30m) of continuous health, counted from the step when
/// the clock stepped back, not from a time in the future.
#[test]
fn the_trips_reset_is_not_delayed_by_a_step_back() {
    let mut s = sim(json!({"rampUp": []}));
    let t0 = t("2025-05-14T10:00:00Z");
    s.step(t0, &Obs::new().req("r", "a", 15, 5).req("r", "b", 20, 0));
    s.idle(plus(t0, 30));
    assert_eq!(health(&s, "a").phase, Phase::Healthy);
    assert_eq!(health(&s, "a").trips, 1);
    let now = plus(t0, 60 - 3 * 3600);
    s.idle(now);
    s.idle(plus(now, 30 * 60));
    assert_eq!(health(&s, "a").trips, 0, "30m of health after the step");
}
