//! Unit tests of `budget.rs` (kept apart so the rules stay short to read).

use serde_json::json;

use super::*;
use crate::api::{BudgetWindow, ProviderBudget};
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
    evaluate_budget(&crate::api::convert::budget_input(b), &obs.0, prev, now)
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
    // No window: the budget cannot bound spend, so it fails closed.
    assert_eq!(ev.decision.action, Some(ThresholdAction::Drain));
    assert_eq!(ev.effect.action, Some(ThresholdAction::Drain));
    assert_eq!(ev.transitions.len(), 1);
    assert_eq!(ev.transitions[0].reason, "InvalidSpec");
    // Reported once.
    let again = run(&bad_tz, Some(&ev.memory), &Obs::new(), plus(now, 60));
    assert!(again.transitions.is_empty());

    let bad_rolling =
        budget("b", json!({"provider": "openai", "limit": "10", "window": {"period": "Rolling", "duration": "0s"}}));
    let ev = run(&bad_rolling, None, &Obs::new(), now);
    assert!(cond(&ev.decision.status.conditions, "Ready").message.contains("spec.window.duration"));
    let bad_lookback =
        budget("b", json!({"provider": "openai", "limit": "10", "forecast": {"enabled": true, "lookback": "soon"}}));
    let ev = run(&bad_lookback, None, &Obs::new(), now);
    assert!(cond(&ev.decision.status.conditions, "Ready").message.contains("spec.forecast.lookback"));
    // Only the forecast is unreadable: the limit and the window still hold, nothing is drained.
    assert_eq!(ev.decision.action, None);
}

/// A zero Rolling window that skipped validation (an API server without CEL, a hand-made
/// state) fails closed: the provider's backends are drained, the condition names the field, and
/// spend already counted in the stored window is kept.
#[test]
fn a_zero_rolling_window_fails_closed() {
    let now = t("2025-05-14T10:00:00Z");
    let good =
        budget("b", json!({"provider": "openai", "limit": "10", "window": {"period": "Rolling", "duration": "1h"}}));
    let ev = run(&good, None, &Obs::new().spend("openai", "1"), now);
    assert_eq!(ev.decision.action, None);
    for zero in ["0s", "0ms0h"] {
        let mut bad = good.clone();
        bad.spec.window.duration = Some(zero.into());
        let first = run(&bad, None, &Obs::new().spend("openai", "1"), now);
        assert_eq!(first.decision.action, Some(ThresholdAction::Drain), "{zero}");
        assert_eq!(first.effect.action, Some(ThresholdAction::Drain), "{zero}");
        let ready = cond(&first.decision.status.conditions, "Ready");
        assert_eq!(ready.status, "False");
        assert!(
            ready.message.contains("spec.window.duration") && ready.message.contains("drained"),
            "{}",
            ready.message
        );
        let exhausted = cond(&first.decision.status.conditions, "Exhausted");
        assert_eq!(exhausted.status, "True");
        // From a stored window: the spend keeps counting there.
        let later = run(&bad, Some(&ev.memory), &Obs::new().spend("openai", "2"), plus(now, 60));
        assert_eq!(later.decision.action, Some(ThresholdAction::Drain));
        assert_eq!(later.memory.spent, Money::from_usd(3));
    }
}

#[test]
fn invalid_spec_keeps_counting_and_keeps_the_action_until_the_window_ends() {
    let good = daily("100");
    let now = t("2025-05-14T10:00:00Z");
    let ev = run(&good, None, &Obs::new().spend("openai", "100"), now);
    assert_eq!(ev.decision.action, Some(ThresholdAction::Drain));
    // Only the forecast is unreadable: the stored window's action holds until it ends.
    let mut bad = good.clone();
    bad.spec.forecast.lookback = "soon".into();
    let ev2 = run(&bad, Some(&ev.memory), &Obs::new().spend("openai", "1"), plus(now, 60));
    assert_eq!(ev2.decision.action, Some(ThresholdAction::Drain));
    assert_eq!(ev2.memory.spent, Money::from_usd(101));
    let ev3 = run(&bad, Some(&ev2.memory), &Obs::new(), t("2025-05-15T00:00:01Z"));
    assert_eq!(ev3.decision.action, None);
    // No window can be computed (an unknown time zone): drained, in the window and past it.
    let mut no_window = good.clone();
    no_window.spec.window.time_zone = "Nowhere/Land".into();
    let ev2 = run(&no_window, Some(&ev.memory), &Obs::new().spend("openai", "1"), plus(now, 60));
    assert_eq!(ev2.decision.action, Some(ThresholdAction::Drain));
    assert_eq!(ev2.memory.spent, Money::from_usd(101));
    let ev3 = run(&no_window, Some(&ev2.memory), &Obs::new(), t("2025-05-15T00:00:01Z"));
    assert_eq!(ev3.decision.action, Some(ThresholdAction::Drain));
    // Fixed, the new window starts from zero.
    let ev4 = run(&good, Some(&ev3.memory), &Obs::new(), t("2025-05-15T00:00:02Z"));
    assert_eq!(ev4.decision.action, None);
    assert_eq!(ev4.memory.spent, Money::ZERO);
}

#[test]
fn spend_counts_only_matching_deltas() {
    let b =
        budget("b", json!({"provider": "openai", "models": ["gpt-4o"], "limit": "100", "window": {"period": "Daily"}}));
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
