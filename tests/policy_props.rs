//! Property tests of the pure decision core: random routes, budgets and observation sequences.
//!
//! Objects are built from manifests (`serde_json::from_value`), as users write them; one
//! property checks that the generated manifests pass the API validation, so every other
//! property is about validated inputs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};

use jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use serde_json::{Value, json};
use tollgate::api::convert;
use tollgate::api::{BackendState, Mode, ModelRoute, OnExhausted, ProviderBudget, RouteState, ThresholdAction};
use tollgate::controller::restore;
use tollgate::policy::coverage::covers;
use tollgate::policy::health::Phase;
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
    /// Per route, per backend: attempts by outcome, in `Outcome::ALL` order.
    requests: Vec<Vec<[u64; 8]>>,
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

/// Attempts of one backend in one step, by outcome (`Outcome::ALL` order: ok, client_error,
/// rate_limited, upstream_error, timeout, connect_error, budget_rejected, gateway_overloaded).
/// Every outcome is generated: mostly healthy traffic, error storms spread over the four health
/// errors, and floods of client errors, budget refusals and the gateway's own overload, which
/// say nothing about the backend.
fn outcome_counts() -> impl Strategy<Value = [u64; 8]> {
    prop_oneof![
        2 => Just([0u64; 8]),
        3 => (0..30u64, 0..3u64, prop::array::uniform4(0..2u64), 0..3u64, 0..3u64)
            .prop_map(|(ok, client, [rl, up, to, ce], rej, over)| [ok, client, rl, up, to, ce, rej, over]),
        3 => (0..10u64, 0..3u64, prop::array::uniform4(0..10u64), 0..3u64, 0..3u64)
            .prop_map(|(ok, client, [rl, up, to, ce], rej, over)| [ok, client, rl, up, to, ce, rej, over]),
        1 => (0..5u64, 0..40u64, 0..40u64, 0..40u64)
            .prop_map(|(ok, client, rej, over)| [ok, client, 0, 0, 0, 0, rej, over]),
    ]
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
                shape.iter().map(|&n| prop::collection::vec(outcome_counts(), n..=n)).collect::<Vec<_>>(),
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
        for (j, counts) in per_backend.iter().enumerate() {
            if counts.iter().all(|&n| n == 0) {
                continue;
            }
            let outcomes: BTreeMap<Outcome, u64> =
                Outcome::ALL.into_iter().zip(counts.iter().copied()).filter(|&(_, n)| n > 0).collect();
            let ok = counts[0];
            // Latency differs per backend so LowestLatency has something to rank.
            let lat = 50 + 40 * j as u64 + s.routes[i].backends.len() as u64;
            o.backends.insert(
                BackendKey::new("default", format!("r{i}"), format!("b{j}")),
                BackendObservation { outcomes, latency_ms_sum: lat * ok, latency_count: ok, ..Default::default() },
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

// ---- properties whose cases are counted ------------------------------------------------------
//
// These run through a `TestRunner` by hand so that, after every case passed, the test can also
// check that the cases it is about were reached often enough (a property that never meets its
// case proves nothing). Thresholds sit far below the shares measured (see each test), so a
// random seed cannot make them fail.

/// How many cases reached something.
#[derive(Default)]
struct Reached(AtomicU32);

impl Reached {
    fn hit(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }
}

const CASES: u32 = 200;

/// Runs `test` on `CASES` scenarios (panics name the minimal failing scenario).
fn for_scenarios(strategy: impl Strategy<Value = Scenario>, test: impl Fn(&Scenario)) {
    let mut runner =
        TestRunner::new(ProptestConfig { cases: CASES, failure_persistence: None, ..ProptestConfig::default() });
    if let Err(e) = runner.run(&strategy, |s| {
        test(&s);
        Ok(())
    }) {
        panic!("{e}");
    }
}

/// Asserts that at least `min_percent` of the cases reached `what`.
fn assert_reached(what: &str, r: &Reached, min_percent: u32) {
    let got = r.get();
    eprintln!("{what}: reached in {got} of {CASES} cases");
    assert!(got * 100 >= CASES * min_percent, "{what}: reached in only {got} of {CASES} cases");
}

/// The window containing `now`, computed here with jiff alone (not with `window_for`): Daily
/// and Weekly in Europe/Berlin from local midnight (Monday for Weekly), Rolling 2h aligned to
/// the Unix epoch.
fn window_by_hand(period: &str, now: Timestamp) -> (Timestamp, Timestamp) {
    let ts = |z: jiff::Zoned| z.timestamp();
    match period {
        "Rolling" => {
            let start = now.as_second().div_euclid(7200) * 7200;
            (Timestamp::from_second(start).unwrap(), Timestamp::from_second(start + 7200).unwrap())
        }
        "Daily" | "Weekly" => {
            let tz = jiff::tz::TimeZone::get("Europe/Berlin").unwrap();
            let today = now.to_zoned(tz.clone()).date();
            let (start, days) = if period == "Daily" {
                (today, 1)
            } else {
                let back = i64::from(today.weekday().to_monday_zero_offset());
                (today.checked_sub(jiff::Span::new().days(back)).unwrap(), 7)
            };
            let end = start.checked_add(jiff::Span::new().days(days)).unwrap();
            (ts(start.to_zoned(tz.clone()).unwrap()), ts(end.to_zoned(tz).unwrap()))
        }
        other => panic!("no hand window for {other}"),
    }
}

/// Spend never decreases inside a window, and more: the window total is exactly the sum of the
/// positive spend deltas the budget covers (`coverage::covers`) observed since the window
/// started; negative deltas (corrections) are ignored; the total resets to the deltas of the
/// evaluation exactly when `now` leaves the window (computed by hand); the action in force
/// never de-escalates inside a window. Code that never adds spend fails this.
#[test]
fn budget_spend_is_exactly_the_covered_positive_deltas_of_its_window() {
    let (spent, reset) = (Reached::default(), Reached::default());
    for_scenarios(scenario(), |s| {
        let (mut any_spent, mut any_reset) = (false, false);
        // Per budget: (window start, expected total).
        let mut expected: BTreeMap<ObjectKey, (Timestamp, Money)> = BTreeMap::new();
        run(s, |prev, d, step| {
            let now = step.now;
            for (i, (g, b)) in s.budgets.iter().zip(step.budgets).enumerate() {
                let k = ObjectKey::of(b);
                assert_eq!(k.name, format!("pb{i}"));
                let m = &d.state.budgets[&k];
                let (start, end) = window_by_hand(g.period, now);
                assert_eq!((m.window_start, m.window_end), (start, end), "{k} at {now}");
                let delta: Money = step
                    .observations
                    .spend
                    .iter()
                    .filter(|(sk, v)| {
                        sk.namespace == "default"
                            && covers(&b.spec.provider, &b.spec.models, &sk.provider, &sk.model)
                            && !v.is_negative()
                    })
                    .map(|(_, v)| *v)
                    .sum();
                let entry = expected.entry(k.clone()).or_insert((start, Money::ZERO));
                if entry.0 != start {
                    // A new window: only when the previous one ended.
                    let p = &prev.unwrap().state.budgets[&k];
                    assert!(now >= p.window_end && p.window_end <= start, "{k}: reset inside a window");
                    *entry = (start, Money::ZERO);
                    any_reset = true;
                }
                entry.1 += delta;
                assert_eq!(m.spent, entry.1, "{k} at {now}: window total is not the covered deltas");
                any_spent |= entry.1 > Money::ZERO;
                if let Some(p) = prev.and_then(|p| p.state.budgets.get(&k))
                    && p.window_start == m.window_start
                {
                    assert!(m.action >= p.action, "{k}: action de-escalated from {:?} to {:?}", p.action, m.action);
                }
                assert_eq!(d.budgets[&k].status.spent.as_deref(), Some(m.spent.to_string().as_str()));
            }
        });
        if any_spent {
            spent.hit();
        }
        if any_reset {
            reset.hit();
        }
    });
    assert_reached("a budget with covered spend", &spent, 30);
    assert_reached("a budget window reset", &reset, 10);
}

/// Whether a budget whose action is Drain covers the backend.
fn drained(d: &Decision, budgets: &[ProviderBudget], b: &tollgate::api::Backend) -> bool {
    budgets.iter().any(|pb| {
        covered_by(pb, &b.provider, &b.model) && d.budgets[&ObjectKey::of(pb)].action == Some(ThresholdAction::Drain)
    })
}

/// A backend covered by a budget whose action is Drain never serves (in `decided`, and in
/// `table` in Enforce mode) — except the single fail-open backend of an `onExhausted:
/// Fallback` route when no other backend serves: then it is the only serving row, its reason
/// starts with "fail open" and the route is Degraded. Both branches are reached often.
#[test]
fn drained_backends_never_serve_except_the_fail_open_one() {
    let (drain, fail_open) = (Reached::default(), Reached::default());
    for_scenarios(scenario(), |s| {
        let (mut saw_drain, mut saw_fail_open) = (false, false);
        run(s, |_, d, step| {
            let (routes, budgets) = (step.routes, step.budgets);
            for r in routes {
                let rd = &d.routes[&ObjectKey::of(r)];
                for (b, row) in r.spec.backends.iter().zip(&rd.decided) {
                    let drained = drained(d, budgets, b);
                    saw_drain |= drained;
                    if drained && row.serving {
                        saw_fail_open = true;
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
        if saw_drain {
            drain.hit();
        }
        if saw_fail_open {
            fail_open.hit();
        }
    });
    assert_reached("a drained backend", &drain, 25);
    assert_reached("a drained backend failed open to", &fail_open, 3);
}

/// Never more than floor(n × maxEjectedPercent / 100) backends of a route are Ejected; a trip
/// beyond the cap is suppressed (EjectionSuppressed) while exactly `cap` are out. Cases where
/// the cap (≥ 1) is full and another backend wants out are reached often.
#[test]
fn never_more_than_max_ejected_percent() {
    let capped = Reached::default();
    for_scenarios(scenario(), |s| {
        let mut saw_cap = false;
        run(s, |_, d, step| {
            for r in step.routes {
                let key = ObjectKey::of(r);
                let rd = &d.routes[&key];
                let ejected = rd.decided.iter().filter(|x| x.state == BackendState::Ejected).count();
                let cap = r.spec.backends.len() * r.spec.health.max_ejected_percent as usize / 100;
                assert!(ejected <= cap, "{} ejected, cap {cap}", ejected);
                let suppressed = d.transitions.iter().filter(|t| t.object == key && t.reason == "EjectionSuppressed");
                for t in suppressed {
                    assert_eq!(t.evidence["ejected"], cap.to_string(), "{t:?}");
                    saw_cap |= cap >= 1;
                }
            }
        });
        if saw_cap {
            capped.hit();
        }
    });
    assert_reached("an ejection suppressed by a full cap of at least one", &capped, 10);
}

/// The outcome contract, written out: client errors, budget refusals and the gateway's own
/// overload say nothing about the backend; 429, 5xx, timeouts and connect errors are health errors; Ok counts, as no error.
#[test]
fn outcome_classes_are_the_documented_ones() {
    let table = [
        (Outcome::Ok, true, false),
        (Outcome::ClientError, false, false),
        (Outcome::RateLimited, true, true),
        (Outcome::UpstreamError, true, true),
        (Outcome::Timeout, true, true),
        (Outcome::ConnectError, true, true),
        (Outcome::BudgetRejected, false, false),
        (Outcome::GatewayOverloaded, false, false),
    ];
    assert_eq!(table.map(|(o, ..)| o), Outcome::ALL);
    for (o, counts, error) in table {
        assert_eq!((o.counts_for_health(), o.is_health_error()), (counts, error), "{o:?}");
    }
}

/// Every outcome is generated, and the health rules record exactly the attempts that count
/// for health and the health errors (the classes above, summed here by hand): each
/// evaluation's sample of a backend not ejected before holds those sums; a backend ejected
/// before records nothing; a backend ejected now starts with an empty window. A backend that
/// only saw client errors, budget refusals and gateway overloads never trips.
#[test]
fn health_counts_exactly_the_outcomes_that_count() {
    let (errors, only_neutral) = (Reached::default(), Reached::default());
    for_scenarios(scenario(), |s| {
        let (mut saw_errors, mut saw_neutral) = (false, false);
        run(s, |_, d, step| {
            for (i, r) in step.routes.iter().enumerate() {
                for b in &r.spec.backends {
                    let key = BackendKey::new("default", format!("r{i}"), b.name.clone());
                    let counts = step
                        .observations
                        .backends
                        .get(&key)
                        .map(|o| Outcome::ALL.map(|x| o.outcomes.get(&x).copied().unwrap_or(0)))
                        .unwrap_or([0; 8]);
                    // ok + rate_limited + upstream_error + timeout + connect_error.
                    let requests = counts[0] + counts[2] + counts[3] + counts[4] + counts[5];
                    let errs = counts[2] + counts[3] + counts[4] + counts[5];
                    saw_errors |= counts[2] > 0 && counts[4] > 0 && counts[5] > 0;
                    let before = step.previous.backends.get(&key).map(|h| h.phase).unwrap_or_default();
                    let h = &d.state.backends[&key];
                    // Steps may share `now` (dt = 0): count this evaluation's sample only.
                    let at_now = |samples: &[tollgate::policy::health::HealthSample]| {
                        samples.iter().filter(|x| x.at == step.now).count()
                    };
                    let had = step.previous.backends.get(&key).map_or(0, |p| at_now(&p.samples));
                    let recorded = at_now(&h.samples) > had;
                    let sample = h.samples.iter().rfind(|x| x.at == step.now).filter(|_| recorded);
                    match (before, h.phase) {
                        (Phase::Ejected { .. }, _) => {
                            assert_eq!(at_now(&h.samples), 0, "{key}: recorded while ejected")
                        }
                        (_, Phase::Ejected { until }) if until > step.now => {
                            assert!(h.samples.is_empty(), "{key}: a new ejection starts with an empty window")
                        }
                        _ if requests == 0 && counts[0] == 0 => {
                            assert_eq!(at_now(&h.samples), had, "{key}: {counts:?} recorded");
                            if counts[1] + counts[6] + counts[7] > 0 {
                                saw_neutral = true;
                            }
                        }
                        _ => {
                            let sample = sample.unwrap_or_else(|| panic!("{key}: {counts:?} not recorded"));
                            assert_eq!((sample.requests, sample.errors), (requests, errs), "{key}: {counts:?}");
                        }
                    }
                }
            }
            // No trip without health errors in the window.
            for t in d.transitions.iter().filter(|t| t.reason == "BackendEjected") {
                assert_ne!(t.evidence["errors"], "0", "{t:?}");
            }
        });
        if saw_errors {
            errors.hit();
        }
        if saw_neutral {
            only_neutral.hit();
        }
    });
    assert_reached("rate-limited, timeout and connect errors in one observation", &errors, 30);
    assert_reached("a backend that saw only client errors, budget refusals or gateway overloads", &only_neutral, 30);
}

// ---- restore -----------------------------------------------------------------------------------

/// What a decision decides: tables, route states, budget actions, transitions, health phases.
type Decided = (
    Vec<(ObjectKey, Vec<tollgate::policy::EffectiveBackend>, Vec<tollgate::policy::EffectiveBackend>, RouteState)>,
    Vec<(ObjectKey, Option<ThresholdAction>)>,
    Vec<tollgate::policy::Transition>,
    Vec<(BackendKey, Phase, u32)>,
);

fn decided(d: &Decision) -> Decided {
    (
        d.routes.iter().map(|(k, r)| (k.clone(), r.decided.clone(), r.table.clone(), r.state)).collect(),
        d.budgets.iter().map(|(k, b)| (k.clone(), b.action)).collect(),
        d.transitions.clone(),
        d.state.backends.iter().map(|(k, h)| (k.clone(), h.phase, h.trips)).collect(),
    )
}

/// The decision state a restarted controller rebuilds from the statuses of `d`, read back
/// through JSON as from the API server (`controller::restore`, as the engine calls it).
fn restored_from_statuses(routes: &[ModelRoute], budgets: &[ProviderBudget], d: &Decision) -> DecisionState {
    fn round<T: serde::Serialize, U: serde::de::DeserializeOwned>(v: &T) -> U {
        serde_json::from_value(serde_json::to_value(v).unwrap()).unwrap()
    }
    let mut state = DecisionState::default();
    for b in budgets {
        let mut b = b.clone();
        b.status = Some(round(&d.budgets[&ObjectKey::of(&b)].status));
        if let Some(m) = restore::budget_memory(&b) {
            state.budgets.insert(ObjectKey::of(&b), m);
        }
    }
    for r in routes {
        let mut r = r.clone();
        r.status = Some(round(&d.routes[&ObjectKey::of(&r)].status));
        if let Some((m, health)) = restore::route_memory(&r) {
            state.routes.insert(ObjectKey::of(&r), m);
            state.backends.extend(health);
        }
    }
    state
}

/// Copies into `restored` what the statuses do not hold, by design (the documented limit of
/// `controller::restore`): burn-rate samples and lifetime total of budgets; error-rate window
/// samples, last mean latency, the suppressed-trip flag, the last trip's evidence and the
/// current ramp stage's request counts of backends; the latency window, the latency trip's
/// evidence and the ramp stage's latency histogram (`health.latency`); the input tokens behind
/// `Cheapest`'s achieved cache share.
fn with_non_status_memory(mut restored: DecisionState, running: &Decision) -> DecisionState {
    let running = &running.state;
    for (k, m) in &mut restored.budgets {
        if let Some(r) = running.budgets.get(k) {
            m.samples = r.samples.clone();
            m.total = r.total;
        }
    }
    for (k, r) in &running.backends {
        let h = restored.backends.entry(k.clone()).or_default();
        h.samples = r.samples.clone();
        h.latency_ms = r.latency_ms;
        h.suppressed = r.suppressed;
        h.last_trip = r.last_trip.clone();
        h.latency_samples = r.latency_samples.clone();
        h.latency_trip = r.latency_trip.clone();
        h.stage_latency_le = r.stage_latency_le.clone();
        h.input_samples = r.input_samples.clone();
        if let (
            Phase::Ramping { stage, stage_started, .. },
            Phase::Ramping { stage: rs, stage_started: rss, requests, errors },
        ) = (h.phase, r.phase)
            && (stage, stage_started) == (rs, rss)
        {
            h.phase = Phase::Ramping { stage, stage_started, requests, errors };
        }
    }
    restored
}

/// A controller restarted at a random step, its memory rebuilt from the statuses written so
/// far (plus, by design, what the statuses do not hold: see `with_non_status_memory`), decides
/// every later step as the one that kept running: same tables, route states, budget actions,
/// transitions and health phases and trips.
#[test]
fn a_restored_controller_decides_as_the_one_that_kept_running() {
    let restarted_with_memory = Reached::default();
    let strategy = (scenario(), any::<prop::sample::Index>());
    let mut runner =
        TestRunner::new(ProptestConfig { cases: CASES, failure_persistence: None, ..ProptestConfig::default() });
    let result = runner.run(&strategy, |(s, at)| {
        let restart = at.index(s.steps.len());
        let (routes, budgets) = objects(&s);
        let mut decisions: Vec<Decision> = Vec::new();
        run(&s, |_, d, _| decisions.push(d.clone()));
        // Replay from the restart: the same inputs, previous state rebuilt from statuses.
        let (route_inputs, budget_inputs) = (convert::route_inputs(&routes), convert::budget_inputs(&budgets));
        let mut now: Timestamp = "2025-03-29T20:00:00Z".parse().unwrap();
        for step in &s.steps[..=restart] {
            now = now.checked_add(SignedDuration::from_secs(step.dt)).unwrap();
        }
        let running = &decisions[restart];
        let mut state = with_non_status_memory(restored_from_statuses(&routes, &budgets, running), running);
        let remembers = running.state.backends.values().any(|h| h.trips > 0)
            || running.state.budgets.values().any(|m| m.action.is_some());
        if remembers && restart + 1 < s.steps.len() {
            restarted_with_memory.hit();
        }
        for (i, step) in s.steps.iter().enumerate().skip(restart + 1) {
            now = now.checked_add(SignedDuration::from_secs(step.dt)).unwrap();
            let obs = observations(&s, step);
            let d = evaluate(Inputs {
                routes: &route_inputs,
                budgets: &budget_inputs,
                observations: &obs,
                previous: &state,
                now,
            });
            prop_assert_eq!(
                decided(&d),
                decided(&decisions[i]),
                "restarted after step {}, differs at step {}",
                restart,
                i
            );
            state = d.state;
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    assert_reached(
        "a restart, with trips or a budget action to rebuild, before a later step",
        &restarted_with_memory,
        20,
    );
}
