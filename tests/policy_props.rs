//! Property tests of the pure decision core: random routes, budgets and observation sequences.
//!
//! Objects are built from manifests (`serde_json::from_value`), as users write them; one
//! property checks that the generated manifests pass the API validation, so every other
//! property is about validated inputs.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;
use serde_json::{Value, json};
use tollgate::api::convert;
use tollgate::api::{BackendState, Mode, ModelRoute, OnExhausted, ProviderBudget, RouteState, ThresholdAction};
use tollgate::policy::{
    BackendKey, BackendObservation, BudgetInput, Decision, DecisionState, Inputs, Money, ObjectKey, Observations,
    Outcome, RouteInput, SpendKey, evaluate,
};

const PROVIDERS: [&str; 3] = ["openai", "deepseek", "mistral"];
const MODELS: [&str; 2] = ["m1", "m2"];

#[derive(Clone, Debug)]
struct BackendGen {
    provider: usize,
    model: usize,
    weight: u32,
    priority: u32,
}

#[derive(Clone, Debug)]
struct RouteGen {
    backends: Vec<BackendGen>,
    strategy: &'static str,
    on_exhausted: &'static str,
    mode: &'static str,
    max_ejected: u32,
    ramp: Vec<u32>,
    min_requests: u32,
    window: &'static str,
    base: &'static str,
    max: &'static str,
}

#[derive(Clone, Debug)]
struct BudgetGen {
    provider: usize,
    only_m1: bool,
    limit: &'static str,
    period: &'static str,
    forecast: bool,
}

#[derive(Clone, Debug)]
struct StepGen {
    /// Seconds since the previous step.
    dt: i64,
    /// Per route, per backend: (ok, errors).
    requests: Vec<Vec<(u64, u64)>>,
    /// Per provider and model: cents (negative = a correction).
    spend: Vec<[i64; 2]>,
}

#[derive(Clone, Debug)]
struct Scenario {
    routes: Vec<RouteGen>,
    budgets: Vec<BudgetGen>,
    steps: Vec<StepGen>,
}

fn backend_gen() -> impl Strategy<Value = BackendGen> {
    (0..PROVIDERS.len(), 0..MODELS.len(), prop_oneof![Just(0u32), 1..100u32], 0..3u32)
        .prop_map(|(provider, model, weight, priority)| BackendGen { provider, model, weight, priority })
}

fn route_gen() -> impl Strategy<Value = RouteGen> {
    (
        prop::collection::vec(backend_gen(), 1..5),
        prop::sample::select(vec!["Weighted", "Priority", "Cheapest", "LowestLatency"]),
        prop::sample::select(vec!["Fallback", "Reject"]),
        prop::sample::select(vec!["Enforce", "Enforce", "DryRun"]),
        prop::sample::select(vec![0u32, 25, 50, 75, 100]),
        prop::sample::select(vec![vec![], vec![10, 50, 100], vec![50]]),
        1..25u32,
        prop::sample::select(vec!["1m", "5m"]),
        prop::sample::select(vec!["10s", "30s"]),
        prop::sample::select(vec!["1m", "30m"]),
    )
        .prop_map(
            |(mut backends, strategy, on_exhausted, mode, max_ejected, ramp, min_requests, window, base, max)| {
                if backends.iter().all(|b| b.weight == 0) {
                    backends[0].weight = 1;
                }
                RouteGen { backends, strategy, on_exhausted, mode, max_ejected, ramp, min_requests, window, base, max }
            },
        )
}

fn budget_gen() -> impl Strategy<Value = BudgetGen> {
    (
        0..PROVIDERS.len(),
        any::<bool>(),
        prop::sample::select(vec!["0", "1", "10", "100", "2.5"]),
        prop::sample::select(vec!["Daily", "Rolling", "Weekly"]),
        any::<bool>(),
    )
        .prop_map(|(provider, only_m1, limit, period, forecast)| BudgetGen {
            provider,
            only_m1,
            limit,
            period,
            forecast,
        })
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (prop::collection::vec(route_gen(), 1..3), prop::collection::vec(budget_gen(), 0..4)).prop_flat_map(
        |(routes, budgets)| {
            let shape: Vec<usize> = routes.iter().map(|r| r.backends.len()).collect();
            let step = (
                prop_oneof![Just(0i64), 1..120i64, 100..1200i64, Just(3600i64)],
                shape
                    .iter()
                    .map(|&n| {
                        prop::collection::vec(
                            prop_oneof![Just((0u64, 0u64)), (0..30u64, 0..3u64), (0..10u64, 0..30u64)],
                            n..=n,
                        )
                    })
                    .collect::<Vec<_>>(),
                prop::collection::vec(
                    prop::array::uniform2(prop_oneof![4 => 0..300i64, 1 => -100..0i64, 1 => 0..5000i64]),
                    PROVIDERS.len()..=PROVIDERS.len(),
                ),
            )
                .prop_map(|(dt, requests, spend)| StepGen { dt, requests, spend });
            (Just(routes), Just(budgets), prop::collection::vec(step, 1..25))
                .prop_map(|(routes, budgets, steps)| Scenario { routes, budgets, steps })
        },
    )
}

fn route_manifest(i: usize, r: &RouteGen) -> Value {
    let backends: Vec<Value> = r
        .backends
        .iter()
        .enumerate()
        .map(|(j, b)| {
            json!({
                "name": format!("b{j}"),
                "provider": PROVIDERS[b.provider],
                "model": MODELS[b.model],
                "weight": b.weight,
                "priority": b.priority,
                "pricing": {"input": format!("{}.5", j % 3), "output": "1"}
            })
        })
        .collect();
    json!({
        "apiVersion": "tollgate.dev/v1alpha1", "kind": "ModelRoute",
        "metadata": {"name": format!("r{i}"), "namespace": "default", "generation": 1},
        "spec": {
            "strategy": r.strategy,
            "mode": r.mode,
            "budget": {"onExhausted": r.on_exhausted},
            "health": {
                "errorRate": {"trip": "0.20", "recover": "0.05", "window": r.window, "minRequests": r.min_requests},
                "ejection": {"base": r.base, "max": r.max},
                "rampUp": r.ramp,
                "maxEjectedPercent": r.max_ejected
            },
            "backends": backends
        }
    })
}

fn budget_manifest(i: usize, b: &BudgetGen) -> Value {
    let window = if b.period == "Rolling" {
        json!({"period": "Rolling", "duration": "2h"})
    } else {
        json!({"period": b.period, "timeZone": "Europe/Berlin"})
    };
    let models: Vec<&str> = if b.only_m1 { vec!["m1"] } else { vec![] };
    json!({
        "apiVersion": "tollgate.dev/v1alpha1", "kind": "ProviderBudget",
        "metadata": {"name": format!("pb{i}"), "namespace": "default", "generation": 1},
        "spec": {
            "provider": PROVIDERS[b.provider],
            "models": models,
            "limit": b.limit,
            "window": window,
            "forecast": {"enabled": b.forecast, "lookback": "30m"}
        }
    })
}

fn objects(s: &Scenario) -> (Vec<ModelRoute>, Vec<ProviderBudget>) {
    let routes =
        s.routes.iter().enumerate().map(|(i, r)| serde_json::from_value(route_manifest(i, r)).unwrap()).collect();
    let budgets =
        s.budgets.iter().enumerate().map(|(i, b)| serde_json::from_value(budget_manifest(i, b)).unwrap()).collect();
    (routes, budgets)
}

fn observations(s: &Scenario, step: &StepGen) -> Observations {
    let mut o = Observations::default();
    for (i, per_backend) in step.requests.iter().enumerate() {
        for (j, &(ok, errors)) in per_backend.iter().enumerate() {
            if ok == 0 && errors == 0 {
                continue;
            }
            let mut outcomes = BTreeMap::new();
            outcomes.insert(Outcome::Ok, ok);
            outcomes.insert(Outcome::UpstreamError, errors);
            // Latency differs per backend so LowestLatency has something to rank.
            let lat = 50 + 40 * j as u64 + s.routes[i].backends.len() as u64;
            o.backends.insert(
                BackendKey::new("default", format!("r{i}"), format!("b{j}")),
                BackendObservation { outcomes, latency_ms_sum: lat * ok, latency_count: ok },
            );
        }
    }
    for (p, cents) in step.spend.iter().enumerate() {
        for (m, &c) in cents.iter().enumerate() {
            if c != 0 {
                o.spend.insert(
                    SpendKey::new("default", PROVIDERS[p], MODELS[m]),
                    Money::from_picos(i128::from(c) * 10_000_000_000),
                );
            }
        }
    }
    o
}

/// What one step was evaluated with.
struct Step<'a> {
    routes: &'a [ModelRoute],
    budgets: &'a [ProviderBudget],
    route_inputs: &'a [RouteInput],
    budget_inputs: &'a [BudgetInput],
    observations: &'a Observations,
    previous: &'a DecisionState,
    now: Timestamp,
}

impl Step<'_> {
    fn inputs(&self) -> Inputs<'_> {
        Inputs {
            routes: self.route_inputs,
            budgets: self.budget_inputs,
            observations: self.observations,
            previous: self.previous,
            now: self.now,
        }
    }
}

/// Runs a scenario, calling `check(previous decision, decision, step)` after every step.
fn run(s: &Scenario, mut check: impl FnMut(Option<&Decision>, &Decision, &Step<'_>)) {
    let (routes, budgets) = objects(s);
    let (route_inputs, budget_inputs) = (convert::route_inputs(&routes), convert::budget_inputs(&budgets));
    let mut now: Timestamp = "2025-03-29T20:00:00Z".parse().unwrap();
    let mut state = DecisionState::default();
    let mut prev: Option<Decision> = None;
    for step in &s.steps {
        now = now.checked_add(SignedDuration::from_secs(step.dt)).unwrap();
        let obs = observations(s, step);
        let ctx = Step {
            routes: &routes,
            budgets: &budgets,
            route_inputs: &route_inputs,
            budget_inputs: &budget_inputs,
            observations: &obs,
            previous: &state,
            now,
        };
        let d = evaluate(ctx.inputs());
        check(prev.as_ref(), &d, &ctx);
        state = d.state.clone();
        prev = Some(d);
    }
}

fn covered_by(b: &ProviderBudget, provider: &str, model: &str) -> bool {
    b.spec.provider == provider && (b.spec.models.is_empty() || b.spec.models.iter().any(|m| m == model))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]

    /// Spend never decreases inside a window; a window only ever moves forward; and for a fixed
    /// spec the action in force never de-escalates inside a window.
    #[test]
    fn spend_never_decreases_inside_a_window(s in scenario()) {
        run(&s, |prev, d, step| {
            let now = step.now;
            for (k, m) in &d.state.budgets {
                assert!(m.window_start <= now && now < m.window_end, "{k}: now outside its window");
                assert!(!m.spent.is_negative());
                if let Some(p) = prev.and_then(|p| p.state.budgets.get(k)) {
                    if p.window_start == m.window_start {
                        assert!(m.spent >= p.spent, "{k}: spend decreased from {} to {}", p.spent, m.spent);
                        assert!(m.action >= p.action, "{k}: action de-escalated from {:?} to {:?}", p.action, m.action);
                    } else {
                        assert!(m.window_start >= p.window_end, "{k}: window moved backwards");
                    }
                }
                let status = &d.budgets[k].status;
                assert_eq!(status.spent.as_deref(), Some(m.spent.to_string().as_str()));
            }
        });
    }

    /// A backend covered by a budget whose action is Drain never serves (in `decided`, and in
    /// `table` in Enforce mode) — except the single fail-open backend of an `onExhausted:
    /// Fallback` route when no other backend serves: then it is the only serving row, its reason
    /// starts with "fail open" and the route is Degraded.
    #[test]
    fn drained_backends_never_serve_except_the_fail_open_one(s in scenario()) {
        run(&s, |_, d, step| {
            let (routes, budgets) = (step.routes, step.budgets);
            for r in routes {
                let rd = &d.routes[&ObjectKey::of(r)];
                for (b, row) in r.spec.backends.iter().zip(&rd.decided) {
                    let drained = budgets.iter().any(|pb| {
                        covered_by(pb, &b.provider, &b.model) && d.budgets[&ObjectKey::of(pb)].action == Some(ThresholdAction::Drain)
                    });
                    if drained && row.serving {
                        assert_eq!(r.spec.budget.on_exhausted, OnExhausted::Fallback);
                        assert!(row.reason.as_deref().unwrap_or("").starts_with("fail open"), "{row:?}");
                        assert_eq!(rd.decided.iter().filter(|x| x.serving).count(), 1);
                        assert_eq!(rd.status.state, Some(RouteState::Degraded));
                    }
                    if drained {
                        assert_ne!(row.state, BackendState::Active);
                    }
                }
                if r.spec.mode == Mode::Enforce {
                    assert_eq!(rd.table, rd.decided);
                }
            }
        });
    }

    /// Never more than floor(n × maxEjectedPercent / 100) backends of a route are Ejected.
    #[test]
    fn never_more_than_max_ejected_percent(s in scenario()) {
        run(&s, |_, d, step| {
            let routes = step.routes;
            for r in routes {
                let rd = &d.routes[&ObjectKey::of(r)];
                let ejected = rd.decided.iter().filter(|x| x.state == BackendState::Ejected).count();
                let cap = r.spec.backends.len() * r.spec.health.max_ejected_percent as usize / 100;
                assert!(ejected <= cap, "{} ejected, cap {cap}", ejected);
            }
        });
    }

    /// Evaluating again at the same `now`, with no new observations and the state just
    /// returned, yields no transition and the same tables and statuses.
    #[test]
    fn re_evaluation_without_news_is_quiet(s in scenario()) {
        run(&s, |_, d, step| {
            let empty = Observations::default();
            let again = evaluate(Inputs { observations: &empty, previous: &d.state, ..step.inputs() });
            assert!(again.transitions.is_empty(), "new transitions: {:?}", again.transitions);
            for (k, r) in &d.routes {
                assert_eq!(again.routes[k].decided, r.decided, "{k}");
                assert_eq!(again.routes[k].table, r.table, "{k}");
                assert_eq!(again.routes[k].status, r.status, "{k}");
            }
            for (k, b) in &d.budgets {
                assert_eq!(again.budgets[k].action, b.action, "{k}");
                assert_eq!(again.budgets[k].status.spent, b.status.spent, "{k}");
                assert_eq!(again.budgets[k].status.conditions, b.status.conditions, "{k}");
            }
        });
    }

    /// Unless `onExhausted: Reject` applies, every route keeps at least one serving backend;
    /// Rejecting happens only under Reject and exactly when nothing serves.
    #[test]
    fn a_route_keeps_a_serving_backend_unless_it_rejects(s in scenario()) {
        run(&s, |_, d, step| {
            let routes = step.routes;
            for r in routes {
                let rd = &d.routes[&ObjectKey::of(r)];
                let serving = rd.decided.iter().any(|x| x.serving);
                let rejecting = rd.status.state == Some(RouteState::Rejecting);
                assert_eq!(rejecting, !serving, "{rd:?}");
                if rejecting {
                    assert_eq!(r.spec.budget.on_exhausted, OnExhausted::Reject);
                }
                assert!(rd.table.iter().any(|x| x.serving) || rd.state == RouteState::Rejecting);
                if serving {
                    assert!(rd.status.active.unwrap_or(0) >= 1, "{rd:?}");
                }
            }
        });
    }

    /// Same inputs, same decision; transitions are sorted with short messages; the state
    /// survives a JSON round trip (as `local` persists it).
    #[test]
    fn deterministic_sorted_and_persistable(s in scenario()) {
        run(&s, |_, d, step| {
            let now = step.now;
            assert_eq!(&evaluate(step.inputs()), d);
            let ranks: Vec<(u8, &ObjectKey)> = d
                .transitions
                .iter()
                .map(|t| (u8::from(t.kind != tollgate::policy::ObjectKind::ProviderBudget), &t.object))
                .collect();
            assert!(ranks.windows(2).all(|w| w[0] <= w[1]), "unsorted: {ranks:?}");
            assert!(d.transitions.iter().all(|t| t.message.len() < 1024 && !t.message.is_empty() && t.time == now));
            let json = serde_json::to_string(&d.state).unwrap();
            let back: DecisionState = serde_json::from_str(&json).unwrap();
            assert_eq!(back, d.state);
        });
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    /// The generated manifests are valid (schema + CEL), so the properties above are about
    /// inputs the API server would accept.
    #[test]
    fn generated_manifests_are_valid(s in scenario()) {
        for (i, r) in s.routes.iter().enumerate() {
            let v = route_manifest(i, r);
            assert!(tollgate::api::validate::validate_value(v.clone()).is_ok(), "{v}");
        }
        for (i, b) in s.budgets.iter().enumerate() {
            let v = budget_manifest(i, b);
            assert!(tollgate::api::validate::validate_value(v.clone()).is_ok(), "{v}");
        }
    }
}
