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

// ---- latency budget (health.latency) --------------------------------------------------------

use crate::signals::contract::LATENCY_BUCKETS;

/// Bucket indexes of `LATENCY_BOUNDS_MS`.
const B100MS: usize = 4;
const B500MS: usize = 6;
const B1S: usize = 7;
const B2500MS: usize = 8;

/// Adds answers to backend `name` of route `r`: `(bucket index, count)`.
fn answers(mut o: Obs, name: &str, per_bucket: &[(usize, u64)]) -> Obs {
    let mut v = [0u64; LATENCY_BUCKETS];
    for (i, n) in per_bucket {
        v[*i] += n;
    }
    let mut c = 0;
    let le: Vec<u64> = v
        .iter()
        .map(|n| {
            c += n;
            c
        })
        .collect();
    o.0.backends.entry(BackendKey::new("default", "r", name)).or_default().latency_le = le;
    o
}

fn slow_sim() -> Sim {
    sim(2, json!({"latency": {"trip": "1s", "recover": "500ms", "window": "1m", "minRequests": 10}}))
}

fn status<'a>(d: &'a Decision, name: &str) -> &'a crate::api::BackendStatus {
    d.routes.values().next().unwrap().status.backends.iter().find(|b| b.name == name).unwrap()
}

#[test]
fn latency_trips_at_p95_over_budget_with_min_requests_only() {
    let mut s = slow_sim();
    let t0 = t("2025-05-14T10:00:00Z");
    // 9 slow answers: below minRequests, nothing happens, but status shows the evidence.
    let d = s.step(t0, &answers(Obs::new().req("r", "a", 9, 0), "a", &[(B2500MS, 9)]));
    assert_eq!(row(&d, "a").state, BackendState::Active);
    assert!(d.transitions.is_empty());
    let st = status(&d, "a");
    assert_eq!(
        (st.latency_p95.as_deref(), st.latency_requests, st.latency_budget.as_deref()),
        (Some("2s500ms"), Some(9), Some("1s"))
    );
    // The 10th answer inside the window: p95 2s500ms > 1s with 10 answers.
    let d = s.step(plus(t0, 10), &answers(Obs::new().req("r", "a", 1, 0), "a", &[(B2500MS, 1)]));
    assert_eq!(row(&d, "a").state, BackendState::Ejected);
    assert_eq!(row(&d, "a").reason.as_deref(), Some("ejected for latency until 2025-05-14T10:00:40Z"));
    let tr = find(&d, "BackendEjected");
    assert!(tr.warning);
    assert_eq!(tr.evidence["latencyP95"], "2s500ms");
    assert_eq!(tr.evidence["requests"], "10");
    assert_eq!(tr.evidence["latencyBudget"], "1s");
    assert_eq!(tr.evidence["window"], "1m");
    assert_eq!(tr.evidence["ejection"], "30s");
    assert_eq!(tr.evidence["trips"], "1");
    assert_eq!(tr.evidence["errorRate"], "0.00");
    assert!(
        tr.message.contains("p95 latency 2s500ms over 1m (10 answers) above trip 1s; out for 30s"),
        "{}",
        tr.message
    );
    let st = status(&d, "a");
    assert_eq!(
        (st.latency_p95.as_deref(), st.latency_requests, st.latency_budget.as_deref()),
        (Some("2s500ms"), Some(10), Some("1s"))
    );
    assert_eq!(st.trips, Some(1));
    assert!(health(&s, "a").latency_samples.is_empty());
    // The fast backend is untouched and takes the traffic.
    assert_eq!((row(&d, "b").state, row(&d, "b").weight), (BackendState::Active, 30));
    // Answers older than the window do not count.
    let mut s = slow_sim();
    s.step(t0, &answers(Obs::new(), "a", &[(B2500MS, 9)]));
    let d = s.step(plus(t0, 61), &answers(Obs::new(), "a", &[(B2500MS, 1)]));
    assert_eq!(row(&d, "a").state, BackendState::Active);
}

#[test]
fn latency_p95_is_conservative_and_exact_on_bucket_bounds() {
    // 95 fast, 5 slow: p95 is 100ms, healthy.
    let mut s = slow_sim();
    let t0 = t("2025-05-14T10:00:00Z");
    let d = s.step(t0, &answers(Obs::new(), "a", &[(B100MS, 95), (B2500MS, 5)]));
    assert_eq!(row(&d, "a").state, BackendState::Active);
    assert_eq!(status(&d, "a").latency_p95.as_deref(), Some("100ms"));
    // 94 fast, 6 slow: the 95th answer is slow.
    let mut s = slow_sim();
    let d = s.step(t0, &answers(Obs::new(), "a", &[(B100MS, 94), (B2500MS, 6)]));
    assert_eq!(row(&d, "a").state, BackendState::Ejected);
    // All in the (500ms, 1s] bucket: p95 ≤ 1s is not over a 1s budget (a bound: exact).
    let mut s = slow_sim();
    let d = s.step(t0, &answers(Obs::new(), "a", &[(B1S, 50)]));
    assert_eq!(row(&d, "a").state, BackendState::Active);
    assert_eq!(status(&d, "a").latency_p95.as_deref(), Some("1s"));
    // Healthy backends trip at `trip`, not at `recover` (500ms).
    assert!(d.transitions.is_empty());
    // Without a latency budget nothing about latency is kept or shown.
    let mut s = sim(2, json!({}));
    let d = s.step(t0, &answers(Obs::new(), "a", &[(B2500MS, 100)]));
    assert_eq!(row(&d, "a").state, BackendState::Active);
    assert!(health(&s, "a").latency_samples.is_empty());
    let st = status(&d, "a");
    assert_eq!((st.latency_p95.as_ref(), st.latency_requests, st.latency_budget.as_ref()), (None, None, None));
}

#[test]
fn latency_recovers_with_hysteresis_and_doubled_backoff() {
    let mut s = slow_sim();
    let t0 = t("2025-05-14T10:00:00Z");
    s.step(t0, &answers(Obs::new(), "a", &[(B2500MS, 20)]));
    // Slow answers during the ejection are dropped.
    let d = s.step(plus(t0, 20), &answers(Obs::new(), "a", &[(B2500MS, 50)]));
    assert!(d.transitions.is_empty());
    let d = s.idle(plus(t0, 30));
    assert_eq!((row(&d, "a").state, row(&d, "a").weight), (BackendState::Ramping, 7));
    assert_eq!(status(&d, "a").latency_budget.as_deref(), Some("500ms"), "ramping is judged against recover");
    // p95 ≤ 1s: under trip but over recover (500ms), with minRequests: out again, 1m.
    let d = s.step(plus(t0, 40), &answers(Obs::new(), "a", &[(B1S, 10)]));
    let tr = find(&d, "BackendEjected");
    assert_eq!(tr.evidence["trips"], "2");
    assert_eq!(tr.evidence["ejection"], "1m");
    assert_eq!(tr.evidence["latencyBudget"], "500ms");
    assert!(tr.message.contains("ejected while ramping: p95 latency 1s over 1m (10 answers) above recover 500ms"));
    assert_eq!(health(&s, "a").ejected_until(), Some(plus(t0, 100)));
    // Third trip: 2m (doubling again).
    s.idle(plus(t0, 100));
    let d = s.step(plus(t0, 110), &answers(Obs::new(), "a", &[(B2500MS, 10)]));
    assert_eq!(find(&d, "BackendEjected").evidence["ejection"], "2m");
    // Fast enough (≤ recover) while ramping: keeps ramping.
    let mut s = slow_sim();
    s.step(t0, &answers(Obs::new(), "a", &[(B2500MS, 20)]));
    s.idle(plus(t0, 30));
    let d = s.step(plus(t0, 40), &answers(Obs::new(), "a", &[(B500MS, 30)]));
    assert_eq!(row(&d, "a").state, BackendState::Ramping);
    assert!(d.transitions.is_empty());
}

#[test]
fn latency_ramp_stages_advance_only_when_fast() {
    let mut s = slow_sim();
    let t0 = t("2025-05-14T10:00:00Z");
    s.step(t0, &answers(Obs::new(), "a", &[(B2500MS, 20)]));
    s.idle(plus(t0, 30));
    // Stage 1 (5m, the errorRate window): a few slow answers, fewer than minRequests: not
    // ejected, but the stage is not fast: it repeats.
    s.step(plus(t0, 100), &answers(Obs::new(), "a", &[(B2500MS, 3)]));
    let d = s.idle(plus(t0, 330));
    assert_eq!(row(&d, "a").weight, 7);
    assert!(matches!(health(&s, "a").phase, Phase::Ramping { stage: 0, .. }));
    assert!(d.transitions.is_empty());
    // The repeated stage sees fast answers only: it advances, then the next ones too.
    s.step(plus(t0, 400), &answers(Obs::new(), "a", &[(B100MS, 5)]));
    let d = s.idle(plus(t0, 630));
    assert_eq!((row(&d, "a").state, row(&d, "a").weight), (BackendState::Ramping, 35));
    let d = s.idle(plus(t0, 930));
    assert_eq!(row(&d, "a").weight, 70);
    let d = s.idle(plus(t0, 1230));
    assert_eq!((row(&d, "a").state, row(&d, "a").weight), (BackendState::Active, 70));
    assert!(reasons(&d).contains(&"BackendRestored"));
    assert_eq!(health(&s, "a").trips, 1);
}

#[test]
fn latency_trips_respect_max_ejected_percent() {
    let mut s = sim(1, json!({"latency": {"trip": "1s", "minRequests": 10}}));
    let t0 = t("2025-05-14T10:00:00Z");
    let d = s.step(t0, &answers(Obs::new(), "a", &[(B2500MS, 10)]));
    assert_eq!(row(&d, "a").state, BackendState::Active);
    let tr = find(&d, "EjectionSuppressed");
    assert_eq!(tr.evidence["latencyP95"], "2s500ms");
    assert!(
        tr.message.contains("has p95 latency 2s500ms over 5m (10 answers) above trip 1s but 0 of 1"),
        "{}",
        tr.message
    );
    // An error-rate trip wins over a latency trip when only one may go.
    let mut s = sim(2, json!({"latency": {"trip": "1s", "minRequests": 10}}));
    let d = s.step(t0, &answers(Obs::new().req("r", "b", 0, 20), "a", &[(B2500MS, 10)]));
    assert_eq!(row(&d, "b").state, BackendState::Ejected);
    assert_eq!(row(&d, "a").state, BackendState::Active);
    assert!(find(&d, "EjectionSuppressed").evidence.contains_key("latencyP95"));
}

#[test]
fn invalid_latency_budget_is_reported_with_its_field() {
    for (latency, field) in [
        (json!({"trip": "0s"}), "spec.health.latency.trip"),
        (json!({"trip": "1s", "recover": "2s"}), "spec.health.latency.recover"),
        (json!({"trip": "1s", "window": "0s"}), "spec.health.latency.window"),
    ] {
        let mut s = sim(2, json!({ "latency": latency }));
        let d = s.idle(t("2025-05-14T10:00:00Z"));
        assert!(find(&d, "InvalidSpec").message.contains(field), "{field}");
    }
}

#[test]
fn latency_memory_round_trips_through_json() {
    let mut s = slow_sim();
    let t0 = t("2025-05-14T10:00:00Z");
    s.step(t0, &answers(Obs::new(), "a", &[(B100MS, 3)]));
    s.step(plus(t0, 1), &answers(Obs::new(), "b", &[(B2500MS, 20)]));
    let json = serde_json::to_value(&s.state).unwrap();
    assert_eq!(json["backends"]["default/r/b"]["latencyTrip"]["p95"], json!({"kind": "AtMost", "ms": 2500}));
    let back: crate::policy::DecisionState = serde_json::from_value(json).unwrap();
    assert_eq!(back, s.state);
}
