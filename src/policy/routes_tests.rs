//! Unit tests of `routes.rs` (kept apart so the rules stay short to read).

use serde_json::{Value, json};

use super::*;
use crate::policy::table::latency_factor;
use crate::policy::testing::{Obs, Sim, backend, budget, budget_in, cond, find, plus, reasons, route, t};
use crate::policy::{Decision, DecisionState, evaluate};

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

fn w(name: &str, state: BackendState, tier: u32, weight: u32, serving: bool) -> (String, BackendState, u32, u32, bool) {
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
    let other_ns = budget_in("other", "x", json!({"provider": "openai", "limit": "1", "window": {"period": "Daily"}}));
    let other_model =
        budget("y", json!({"provider": "openai", "models": ["gpt-5"], "limit": "1", "window": {"period": "Daily"}}));
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
    let route = route("chat", json!({"backends": [backend("a", "openai", 70, 0), backend("b", "deepseek", 30, 0)]}));
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
fn cheapest_prices_input_at_the_cache_share_each_backend_achieves() {
    // `cached` lists $3 input but $0.30 cached input; `listed` is cheaper on paper ($2 input,
    // no cache discount). Output $1 for both.
    let route = route(
        "r",
        json!({"strategy": "Cheapest", "backends": [
            {"name": "cached", "provider": "anthropic", "model": "m", "weight": 50,
             "pricing": {"input": "3.00", "cachedInput": "0.30", "output": "1"}},
            {"name": "listed", "provider": "openai", "model": "m", "weight": 50,
             "pricing": {"input": "2.00", "output": "1"}}
        ]}),
    );
    let tokens = |input: u64, cached_input: u64| crate::pricing::TokenCounts {
        input,
        cached_input,
        output: 100,
        ..crate::pricing::TokenCounts::default()
    };
    let with = |o: Obs, name: &str, t: crate::pricing::TokenCounts| {
        let mut o = o;
        o.0.backends.entry(crate::policy::BackendKey::new("default", "r", name)).or_default().tokens = t;
        o
    };
    let mut s = Sim::new(vec![route], vec![]);
    // No tokens yet: list prices, `listed` ($3/1M blended) beats `cached` ($4/1M).
    let d = s.idle(t(T0));
    assert_eq!((row(&d, "listed").weight, row(&d, "cached").weight), (50, 0));
    // `cached` achieves 80% cache reads, `listed` none: $3 × 20% + $0.30 × 80% + $1 = $1.84/1M
    // against $3/1M. The one with the higher list price wins.
    let d = s.step(plus(t(T0), 10), &with(with(Obs::new(), "cached", tokens(200, 800)), "listed", tokens(1000, 0)));
    assert_eq!((row(&d, "cached").weight, row(&d, "listed").weight), (50, 0));
    assert_eq!(row(&d, "listed").reason.as_deref(), Some("strategy Cheapest: cached cheaper"));
    // The share is of the last hour: once it is gone, list prices decide again.
    let d = s.idle(plus(t(T0), 10 + 3600));
    assert_eq!((row(&d, "listed").weight, row(&d, "cached").weight), (50, 0));
    // A low share is not enough: 20% reads give $3 × 80% + $0.30 × 20% + $1 = $3.46/1M.
    let d = s.step(plus(t(T0), 7300), &with(Obs::new(), "cached", tokens(800, 200)));
    assert_eq!((row(&d, "listed").weight, row(&d, "cached").weight), (50, 0));
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
    let since =
        |d: &Decision, n: &str| rd(d).status.backends.iter().find(|b| b.name == n).unwrap().since.clone().unwrap().0;
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
    assert_eq!(crate::policy::clip("é".repeat(2000)).len(), 999);
    // Deterministic: the same inputs give the same decision.
    let again = evaluate(Inputs {
        routes: &crate::api::convert::route_inputs(&s.routes),
        budgets: &crate::api::convert::budget_inputs(&s.budgets),
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
