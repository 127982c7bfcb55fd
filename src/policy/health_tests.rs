//! Unit tests of `health.rs` (kept apart so the rules stay short to read).

use serde_json::{Value, json};

use super::*;
use crate::api::BackendState;
use crate::policy::testing::{Obs, Sim, backend, find, plus, reasons, route, t};
use crate::policy::{Decision, EffectiveBackend};

fn sim(n: usize, health: Value) -> Sim {
    let names = ["a", "b", "c", "d"];
    let providers = ["openai", "deepseek", "mistral", "qwen"];
    let weights = [70, 30, 20, 10];
    let backends: Vec<Value> = (0..n).map(|i| backend(names[i], providers[i], weights[i], 0)).collect();
    Sim::new(vec![route("r", json!({"backends": backends, "health": health}))], vec![])
}

fn row<'a>(d: &'a Decision, name: &str) -> &'a EffectiveBackend {
    d.routes.values().next().unwrap().decided.iter().find(|r| r.name == name).unwrap()
}

fn health<'a>(s: &'a Sim, name: &str) -> &'a BackendHealth {
    &s.state.backends[&BackendKey::new("default", "r", name)]
}

#[test]
fn trips_at_the_threshold_with_enough_requests() {
    let mut s = sim(2, json!({}));
    let t0 = t("2025-05-14T10:00:00Z");
    // 5 errors in 20 requests = 0.25 ≥ 0.20.
    let d = s.step(t0, &Obs::new().req("r", "a", 15, 5).req("r", "b", 20, 0));
    let a = row(&d, "a");
    assert_eq!((a.state, a.serving, a.weight), (BackendState::Ejected, false, 0));
    assert_eq!(row(&d, "b").state, BackendState::Active);
    let tr = find(&d, "BackendEjected");
    assert!(tr.warning);
    assert_eq!(tr.evidence["backend"], "a");
    assert_eq!(tr.evidence["errorRate"], "0.25");
    assert_eq!(tr.evidence["requests"], "20");
    assert_eq!(tr.evidence["window"], "5m");
    assert_eq!(tr.evidence["trips"], "1");
    assert_eq!(tr.evidence["ejectedUntil"], "2025-05-14T10:00:30Z");
    assert_eq!(health(&s, "a").phase, Phase::Ejected { until: plus(t0, 30) });
    assert!(health(&s, "a").samples.is_empty());
    let st = &d.routes.values().next().unwrap().status;
    let bs = st.backends.iter().find(|b| b.name == "a").unwrap();
    assert_eq!(bs.ejected_until.as_ref().map(|t| t.0), Some(plus(t0, 30)));
    assert_eq!(bs.error_rate.as_deref(), Some("0.25"));
    assert_eq!(bs.requests, Some(20));
    assert_eq!(bs.trips, Some(1), "status carries the backoff so a controller restart keeps it");
    let other = st.backends.iter().find(|b| b.name != "a").unwrap();
    assert_eq!(other.trips, None);
}

#[test]
fn no_trip_below_min_requests_but_the_window_accumulates() {
    let mut s = sim(2, json!({}));
    let t0 = t("2025-05-14T10:00:00Z");
    let d = s.step(t0, &Obs::new().req("r", "a", 10, 9));
    assert_eq!(row(&d, "a").state, BackendState::Active);
    assert!(d.transitions.is_empty());
    // 20 requests inside the window now: 9/20 = 0.45.
    let d = s.step(plus(t0, 60), &Obs::new().req("r", "a", 1, 0));
    assert_eq!(row(&d, "a").state, BackendState::Ejected);
    // Samples older than the window do not count.
    let mut s = sim(2, json!({}));
    s.step(t0, &Obs::new().req("r", "a", 10, 9));
    let d = s.step(plus(t0, 301), &Obs::new().req("r", "a", 1, 0));
    assert_eq!(row(&d, "a").state, BackendState::Active);
}

#[test]
fn healthy_backends_trip_only_at_trip_not_at_recover() {
    let mut s = sim(2, json!({}));
    // 3/20 = 0.15: above recover (0.05) but below trip (0.20).
    let d = s.step(t("2025-05-14T10:00:00Z"), &Obs::new().req("r", "a", 17, 3));
    assert_eq!(row(&d, "a").state, BackendState::Active);
    // Exactly at trip: 4/20.
    let mut s = sim(2, json!({}));
    let d = s.step(t("2025-05-14T10:00:00Z"), &Obs::new().req("r", "a", 16, 4));
    assert_eq!(row(&d, "a").state, BackendState::Ejected);
}

#[test]
fn client_errors_do_not_count() {
    let mut s = sim(2, json!({}));
    let mut o = Obs::new().req("r", "a", 20, 0);
    let entry = o.0.backends.get_mut(&BackendKey::new("default", "r", "a")).unwrap();
    entry.outcomes.insert(crate::policy::Outcome::ClientError, 100);
    entry.outcomes.insert(crate::policy::Outcome::BudgetRejected, 100);
    let d = s.step(t("2025-05-14T10:00:00Z"), &o);
    assert_eq!(row(&d, "a").state, BackendState::Active);
}

#[test]
fn ejection_time_doubles_up_to_max() {
    let mut s = sim(2, json!({"ejection": {"base": "30s", "max": "100s"}, "rampUp": []}));
    let mut now = t("2025-05-14T10:00:00Z");
    let mut seen = Vec::new();
    for _ in 0..4 {
        let d = s.step(now, &Obs::new().req("r", "a", 0, 20));
        let tr = find(&d, "BackendEjected");
        seen.push((tr.evidence["trips"].clone(), tr.evidence["ejection"].clone()));
        let until = health(&s, "a").ejected_until().unwrap();
        // Still out one second before the end; back (no ramp stages) at the end.
        let d = s.idle(plus(until, -1));
        assert_eq!(row(&d, "a").state, BackendState::Ejected);
        let d = s.idle(until);
        assert_eq!(reasons(&d), ["BackendRestored", "RouteRotated"]);
        assert_eq!(row(&d, "a").state, BackendState::Active);
        now = plus(until, 1);
    }
    let got: Vec<(&str, &str)> = seen.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    assert_eq!(got, [("1", "30s"), ("2", "1m"), ("3", "1m40s"), ("4", "1m40s")]);
    let p = HealthParams::parse(&serde_json::from_value(json!({})).unwrap()).unwrap();
    assert_eq!(p.ejection_ms(1), 30_000);
    assert_eq!(p.ejection_ms(7), 1_800_000);
    assert_eq!(p.ejection_ms(u32::MAX), 1_800_000);
}

#[test]
fn returns_through_ramp_stages() {
    let mut s = sim(2, json!({}));
    let t0 = t("2025-05-14T10:00:00Z");
    s.step(t0, &Obs::new().req("r", "a", 0, 20));
    // Observations during the ejection are dropped.
    let d = s.step(plus(t0, 20), &Obs::new().req("r", "a", 0, 50));
    assert!(d.transitions.is_empty());
    let d = s.idle(plus(t0, 30));
    let a = row(&d, "a");
    assert_eq!((a.state, a.weight, a.serving), (BackendState::Ramping, 7, true));
    let tr = find(&d, "BackendRamping");
    assert_eq!((tr.evidence["stage"].as_str(), tr.evidence["percent"].as_str()), ("1/3", "10"));
    let rot = find(&d, "RouteRotated");
    assert_eq!((rot.evidence["from"].as_str(), rot.evidence["to"].as_str()), ("b=100", "a=19,b=81"));
    assert!(health(&s, "a").samples.is_empty());

    // The stage lasts one window (5m).
    let d = s.step(plus(t0, 30 + 299), &Obs::new().req("r", "a", 5, 0));
    assert_eq!(row(&d, "a").weight, 7);
    let d = s.step(plus(t0, 30 + 300), &Obs::new().req("r", "a", 5, 0));
    assert_eq!((row(&d, "a").state, row(&d, "a").weight), (BackendState::Ramping, 35));
    // A stage without requests advances too.
    let d = s.idle(plus(t0, 30 + 600));
    assert_eq!((row(&d, "a").state, row(&d, "a").weight), (BackendState::Ramping, 70));
    let d = s.idle(plus(t0, 30 + 900));
    assert_eq!((row(&d, "a").state, row(&d, "a").weight), (BackendState::Active, 70));
    assert!(reasons(&d).contains(&"BackendRestored"));
    assert_eq!(health(&s, "a").phase, Phase::Healthy);
    assert_eq!(health(&s, "a").trips, 1);
}

#[test]
fn ramp_weight_is_at_least_one() {
    assert_eq!(ramp_weight(3, 10), 1);
    assert_eq!(ramp_weight(0, 10), 0);
    assert_eq!(ramp_weight(70, 50), 35);
    assert_eq!(ramp_weight(1_000_000, 100), 1_000_000);
}

#[test]
fn a_ramp_stage_advances_only_below_recover() {
    let mut s = sim(2, json!({}));
    let t0 = t("2025-05-14T10:00:00Z");
    s.step(t0, &Obs::new().req("r", "a", 0, 20));
    s.idle(plus(t0, 30));
    // 1/10 = 0.10 ≥ recover 0.05 but fewer than minRequests: the stage repeats.
    let d = s.step(plus(t0, 330), &Obs::new().req("r", "a", 9, 1));
    assert_eq!(row(&d, "a").weight, 7);
    assert!(matches!(health(&s, "a").phase, Phase::Ramping { stage: 0, .. }));
    assert!(d.transitions.is_empty());
    // Below recover during the repeated stage: advances.
    let d = s.step(plus(t0, 630), &Obs::new().req("r", "a", 19, 0));
    assert_eq!(row(&d, "a").weight, 35);
}

#[test]
fn ramping_backends_are_ejected_again_with_doubled_time() {
    let mut s = sim(2, json!({}));
    let t0 = t("2025-05-14T10:00:00Z");
    s.step(t0, &Obs::new().req("r", "a", 0, 20));
    s.idle(plus(t0, 30));
    // 2/20 = 0.10 ≥ recover with minRequests: out again.
    let d = s.step(plus(t0, 60), &Obs::new().req("r", "a", 18, 2));
    let tr = find(&d, "BackendEjected");
    assert_eq!(tr.evidence["trips"], "2");
    assert_eq!(tr.evidence["ejection"], "1m");
    assert_eq!(tr.evidence["recover"], "0.05");
    assert!(tr.message.contains("while ramping"));
    assert_eq!(health(&s, "a").ejected_until(), Some(plus(t0, 120)));
    // Below recover: keeps ramping.
    let mut s = sim(2, json!({}));
    s.step(t0, &Obs::new().req("r", "a", 0, 20));
    s.idle(plus(t0, 30));
    let d = s.step(plus(t0, 60), &Obs::new().req("r", "a", 99, 1));
    assert_eq!(row(&d, "a").state, BackendState::Ramping);
}

#[test]
fn empty_ramp_up_returns_straight_to_active() {
    let mut s = sim(2, json!({"rampUp": []}));
    let t0 = t("2025-05-14T10:00:00Z");
    s.step(t0, &Obs::new().req("r", "a", 0, 20));
    let d = s.idle(plus(t0, 30));
    assert_eq!((row(&d, "a").state, row(&d, "a").weight), (BackendState::Active, 70));
    assert_eq!(find(&d, "BackendRestored").evidence["trips"], "1");
}

#[test]
fn max_ejected_percent_is_never_exceeded_and_reported_once() {
    // Two backends at 50%: one may be out.
    let mut s = sim(2, json!({}));
    let t0 = t("2025-05-14T10:00:00Z");
    let d = s.step(t0, &Obs::new().req("r", "a", 15, 5).req("r", "b", 10, 10));
    // The worse one goes; the other is reported.
    assert_eq!(row(&d, "b").state, BackendState::Ejected);
    let a = row(&d, "a");
    assert_eq!((a.state, a.serving), (BackendState::Active, true));
    assert_eq!(a.reason.as_deref(), Some("would eject: maxEjectedPercent reached"));
    let tr = find(&d, "EjectionSuppressed");
    assert!(tr.warning);
    assert_eq!(tr.evidence["backend"], "a");
    assert!(tr.message.starts_with("would eject: maxEjectedPercent reached"));
    // Still failing: no new event.
    let d = s.step(plus(t0, 10), &Obs::new().req("r", "a", 0, 10));
    assert!(!reasons(&d).contains(&"EjectionSuppressed"));
    assert_eq!(row(&d, "a").state, BackendState::Active);
    // maxEjectedPercent 0: never eject.
    let mut s = sim(1, json!({"maxEjectedPercent": 0}));
    let d = s.step(t0, &Obs::new().req("r", "a", 0, 100));
    assert_eq!(row(&d, "a").state, BackendState::Active);
    // One backend at the default 50%: floor(0.5) = 0, never ejected.
    let mut s = sim(1, json!({}));
    let d = s.step(t0, &Obs::new().req("r", "a", 0, 100));
    assert_eq!(row(&d, "a").state, BackendState::Active);
    assert_eq!(reasons(&d), ["EjectionSuppressed"]);
    // Four backends at 50%: two may be out.
    let mut s = sim(4, json!({}));
    let d = s.step(t0, &Obs::new().req("r", "a", 0, 20).req("r", "b", 0, 20).req("r", "c", 0, 20).req("r", "d", 5, 15));
    let out = d.routes.values().next().unwrap().decided.iter().filter(|r| r.state == BackendState::Ejected).count();
    assert_eq!(out, 2);
    assert_eq!(row(&d, "d").state, BackendState::Active);
}

#[test]
fn lowering_max_ejected_percent_returns_backends_early() {
    let mut s = sim(2, json!({"maxEjectedPercent": 100, "ejection": {"base": "10m"}}));
    let t0 = t("2025-05-14T10:00:00Z");
    s.step(t0, &Obs::new().req("r", "a", 0, 20));
    s.step(plus(t0, 1), &Obs::new().req("r", "b", 0, 20));
    s.routes[0].spec.health.max_ejected_percent = 50;
    let d = s.idle(plus(t0, 2));
    // a's ejection ends first: it returns.
    assert_eq!(row(&d, "a").state, BackendState::Ramping);
    assert_eq!(row(&d, "b").state, BackendState::Ejected);
}

#[test]
fn trips_reset_after_max_of_continuous_health() {
    let mut s = sim(2, json!({"rampUp": [], "ejection": {"base": "30s", "max": "30m"}}));
    let t0 = t("2025-05-14T10:00:00Z");
    s.step(t0, &Obs::new().req("r", "a", 0, 20));
    s.idle(plus(t0, 30));
    s.idle(plus(t0, 30 + 1799));
    assert_eq!(health(&s, "a").trips, 1);
    s.idle(plus(t0, 30 + 1800));
    assert_eq!(health(&s, "a").trips, 0);
    let d = s.step(plus(t0, 2000), &Obs::new().req("r", "a", 0, 20));
    assert_eq!(find(&d, "BackendEjected").evidence["ejection"], "30s");
    // Without the reset the second trip doubles.
    let mut s = sim(2, json!({"rampUp": []}));
    s.step(t0, &Obs::new().req("r", "a", 0, 20));
    s.idle(plus(t0, 30));
    let d = s.step(plus(t0, 60), &Obs::new().req("r", "a", 0, 20));
    assert_eq!(find(&d, "BackendEjected").evidence["ejection"], "1m");
}

#[test]
fn latency_is_the_windowed_mean_and_kept_when_idle() {
    let mut s = sim(2, json!({}));
    let t0 = t("2025-05-14T10:00:00Z");
    s.step(t0, &Obs::new().lat("r", "a", 100, 10));
    s.step(plus(t0, 60), &Obs::new().lat("r", "a", 400, 10));
    assert_eq!(health(&s, "a").latency_ms, Some(250));
    s.idle(plus(t0, 1000));
    assert!(health(&s, "a").samples.is_empty());
    assert_eq!(health(&s, "a").latency_ms, Some(250));
}

#[test]
fn invalid_health_policy_is_reported_and_skipped() {
    let mut s = sim(2, json!({"errorRate": {"window": "5 minutes"}}));
    let d = s.step(t("2025-05-14T10:00:00Z"), &Obs::new().req("r", "a", 0, 100));
    let r = d.routes.values().next().unwrap();
    assert_eq!(row(&d, "a").state, BackendState::Active);
    let ready = r.status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.status, "False");
    assert!(ready.message.contains("spec.health.errorRate.window"), "{}", ready.message);
    assert_eq!(reasons(&d), ["InvalidSpec"]);
    let d = s.idle(t("2025-05-14T10:01:00Z"));
    assert!(d.transitions.is_empty());
    let mut s = sim(2, json!({"ejection": {"base": "0s"}}));
    let d = s.idle(t("2025-05-14T10:00:00Z"));
    assert!(find(&d, "InvalidSpec").message.contains("spec.health.ejection.base"));
}

#[test]
fn health_memory_round_trips_through_json() {
    let mut s = sim(2, json!({}));
    let t0 = t("2025-05-14T10:00:00Z");
    s.step(t0, &Obs::new().req("r", "a", 0, 20).lat("r", "b", 120, 20));
    s.idle(plus(t0, 30));
    let json = serde_json::to_value(&s.state).unwrap();
    assert_eq!(json["backends"]["default/r/a"]["phase"]["name"], "Ramping");
    assert_eq!(json["backends"]["default/r/a"]["trips"], 1);
    let back: crate::policy::DecisionState = serde_json::from_value(json).unwrap();
    assert_eq!(back, s.state);
}

#[test]
fn durations_format_like_kubernetes() {
    assert_eq!(fmt_ms(30_000), "30s");
    assert_eq!(fmt_ms(5_400_000), "1h30m");
    assert_eq!(fmt_ms(250), "250ms");
    assert_eq!(fmt_ms(0), "0s");
}
