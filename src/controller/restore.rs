//! Rebuilding the policy's memory from the statuses the controller wrote, so a restart (or a
//! leader change) neither loses nor double-counts spend, and does not flap routes back to their
//! configured tables.
//!
//! Rules: only typed status fields are read, never prose (messages, reasons and condition
//! texts are for people and may be reworded freely). From `ProviderBudget` status: the window,
//! `spent`, the action in force (`state`), `forecastTriggered` and the per-gateway
//! `checkpoints`. From each `ModelRoute` `status.backends[]` entry: `state`, `effectiveWeight`,
//! `tier`, `since`, `ejectedUntil`, `trips`, `healthySince`, `rampStage`/`rampStageSince`, `failOpen`,
//! `deprioritizedBy`, and for an Ejected backend with `latencyP95` (only a latency trip leaves
//! one on an ejected backend) the latency evidence (`latencyP95`, `latencyRequests`,
//! `latencyBudget`). What the statuses do not hold (burn-rate samples, error-rate and latency
//! windows, the current ramp stage's request counts and latency histogram) starts empty.

use std::collections::BTreeMap;

use crate::api::{BackendState, BackendStatus, BudgetState, ModelRoute, ProviderBudget, ThresholdAction};
use crate::policy::budget::{BudgetMemory, BudgetPolicy};
use crate::policy::health::{BackendHealth, Phase, TripEvidence};
use crate::policy::latency::{LatencyEvidence, P95};
use crate::policy::money::parse_duration_ms;
use crate::policy::routes::{BackendSince, RouteMemory, shares};
use crate::policy::{BackendKey, EffectiveBackend, Money, ObjectKey, Ppm};
use crate::signals::checkpoint_nanousd;

/// The budget memory its status describes, if the status has a window and a spend.
pub fn budget_memory(b: &ProviderBudget) -> Option<BudgetMemory> {
    let st = b.status.as_ref()?;
    let window = st.window.as_ref()?;
    let spent: Money = st.spent.as_ref()?.parse().ok()?;
    let action = match st.state? {
        BudgetState::Ok => None,
        BudgetState::Warning => Some(ThresholdAction::Warn),
        BudgetState::Deprioritized => Some(ThresholdAction::Deprioritize),
        BudgetState::Exhausted => Some(ThresholdAction::Drain),
    };
    let spec = &b.spec;
    let policy = if st.observed_generation.is_some() && st.observed_generation == b.metadata.generation {
        spec.limit.parse::<Money>().ok().map(|limit| BudgetPolicy {
            limit,
            thresholds: spec.thresholds.clone(),
            forecast: spec.forecast.enabled,
        })
    } else {
        // The spec changed while no controller ran: make the policy re-evaluate the action
        // under the current spec (an impossible limit never equals a real one).
        Some(BudgetPolicy { limit: Money::from_picos(-1), thresholds: Vec::new(), forecast: false })
    };
    Some(BudgetMemory {
        window_start: window.start.0,
        window_end: window.end.0,
        spent,
        action,
        forecast: st.forecast_triggered && action.is_some(),
        total: spent,
        samples: Vec::new(),
        policy,
        conditions: st.conditions.clone(),
    })
}

/// The per-gateway checkpoints of a budget's status (gateway UID → nano-USD).
pub fn budget_checkpoints(b: &ProviderBudget) -> BTreeMap<String, u64> {
    b.status
        .iter()
        .flat_map(|s| s.checkpoints.iter())
        .filter_map(|c| Some((c.gateway.clone(), checkpoint_nanousd(&c.counter)?)))
        .collect()
}

/// Whether the gateway may send the backend traffic: in rotation, or out of rotation but still
/// serving (failed open to, or only moved to the last tier by a `Deprioritize` budget).
fn is_serving(b: &BackendStatus) -> bool {
    match b.state {
        BackendState::Active | BackendState::Ramping | BackendState::Standby => true,
        BackendState::Ejected | BackendState::OverBudget => b.fail_open || b.deprioritized_by.is_some(),
    }
}

/// The health phase a backend status describes, if the policy must remember one.
fn phase_of(b: &BackendStatus) -> Option<Phase> {
    let since = b.since.as_ref().map(|s| s.0);
    if let Some(until) = &b.ejected_until {
        return Some(Phase::Ejected { until: until.0 });
    }
    if let Some(stage) = b.ramp_stage.and_then(|n| n.checked_sub(1)) {
        let started = b.ramp_stage_since.as_ref().map(|s| s.0).or(since)?;
        return Some(Phase::Ramping { stage, stage_started: started, requests: 0, errors: 0 });
    }
    // Back in rotation after ejections: keep the backoff until it has been healthy for
    // `ejection.max` (counted from when it entered its state).
    (b.trips.unwrap_or(0) > 0 && since.is_some()).then_some(Phase::Healthy)
}

/// The route memory and backend health its status describes, if it has per-backend status.
pub fn route_memory(r: &ModelRoute) -> Option<(RouteMemory, Vec<(BackendKey, BackendHealth)>)> {
    let st = r.status.as_ref()?;
    if st.backends.is_empty() {
        return None;
    }
    let key = ObjectKey::of(r);
    let mut table = Vec::with_capacity(st.backends.len());
    let mut since = BTreeMap::new();
    let mut health = Vec::new();
    for b in &st.backends {
        table.push(EffectiveBackend {
            name: b.name.clone(),
            tier: b.tier,
            weight: b.effective_weight,
            state: b.state,
            serving: is_serving(b),
            reason: b.reason.clone(),
        });
        let at = b.since.as_ref().map(|s| s.0);
        if let Some(s) = at {
            since.insert(b.name.clone(), BackendSince { state: b.state, since: s });
        }
        let Some(phase) = phase_of(b) else { continue };
        let last_trip = match (phase, at) {
            (Phase::Ejected { .. }, Some(at)) => Some(TripEvidence {
                at,
                error_rate: b.error_rate.as_deref().and_then(|e| e.parse::<Ppm>().ok()).unwrap_or_default(),
                requests: b.requests.unwrap_or(0),
                errors: 0,
            }),
            _ => None,
        };
        // `healthySince` when written; statuses from before the field fall back to `since`
        // (the entry into the current state: never earlier, so the backoff lasts no less).
        let healthy_since =
            matches!(phase, Phase::Healthy).then(|| b.healthy_since.as_ref().map(|t| t.0).or(at)).flatten();
        let latency_trip = match (phase, &b.latency_p95, &b.latency_budget) {
            (Phase::Ejected { .. }, Some(p95), Some(budget)) => P95::parse_display(p95).and_then(|p95| {
                Some(LatencyEvidence {
                    p95,
                    requests: b.latency_requests.unwrap_or(0),
                    budget_ms: parse_duration_ms(budget).ok()?,
                })
            }),
            _ => None,
        };
        health.push((
            BackendKey::new(&key.namespace, &key.name, &b.name),
            BackendHealth {
                phase,
                trips: b.trips.unwrap_or(0).max(1),
                last_trip,
                healthy_since,
                latency_trip,
                ..BackendHealth::default()
            },
        ));
    }
    let memory = RouteMemory {
        serving: Some(shares(&table)),
        fail_open: st.backends.iter().find(|b| b.fail_open).map(|b| b.name.clone()),
        table,
        conditions: st.conditions.clone(),
        since,
        state: st.state,
        last_rotation: st.last_rotation.clone(),
    };
    Some((memory, health))
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;
    use serde_json::json;

    use super::*;
    use crate::policy::testing::{Obs, Sim, backend, budget, plus, route, t};
    use crate::policy::{Decision, DecisionState};

    /// Routes and budgets with the statuses of `d`, as a restarted controller reads them back
    /// from the API server (through JSON, so times lose their sub-seconds as they would).
    fn stored(sim: &Sim, d: &Decision) -> (Vec<ModelRoute>, Vec<ProviderBudget>) {
        fn round<T: serde::Serialize, U: serde::de::DeserializeOwned>(v: &T) -> U {
            serde_json::from_value(serde_json::to_value(v).unwrap()).unwrap()
        }
        let routes = sim
            .routes
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r.status = Some(round(&d.routes[&ObjectKey::of(&r)].status));
                r
            })
            .collect();
        let budgets = sim
            .budgets
            .iter()
            .map(|b| {
                let mut b = b.clone();
                b.status = Some(round(&d.budgets[&ObjectKey::of(&b)].status));
                b
            })
            .collect();
        (routes, budgets)
    }

    /// The decision state a restarted controller rebuilds from the statuses.
    fn restored(routes: &[ModelRoute], budgets: &[ProviderBudget]) -> DecisionState {
        let mut state = DecisionState::default();
        for b in budgets {
            if let Some(m) = budget_memory(b) {
                state.budgets.insert(ObjectKey::of(b), m);
            }
        }
        for r in routes {
            if let Some((m, health)) = route_memory(r) {
                state.routes.insert(ObjectKey::of(r), m);
                state.backends.extend(health);
            }
        }
        state
    }

    /// The state without its prose (messages, reasons, condition texts), which is for people.
    fn without_prose(mut s: DecisionState) -> DecisionState {
        for m in s.routes.values_mut() {
            m.conditions.clear();
            m.table.iter_mut().for_each(|r| r.reason = None);
            if let Some(r) = &mut m.last_rotation {
                r.reason.clear();
            }
        }
        s.budgets.values_mut().for_each(|m| m.conditions.clear());
        s
    }

    /// Ramping, ejection trips (doubling), fail-open and a budget deprioritizing by forecast.
    fn scenario() -> (Sim, Vec<(Timestamp, Obs)>) {
        let health = json!({"maxEjectedPercent": 100});
        let chat = route(
            "chat",
            json!({"health": health, "backends": [
                backend("a", "openai", 70, 0), backend("b", "deepseek", 30, 0), backend("c", "mistral", 10, 1)]}),
        );
        let solo = route(
            "solo",
            json!({"health": health, "backends": [backend("x", "mistral", 10, 0), backend("y", "qwen", 10, 0)]}),
        );
        let openai = budget(
            "openai",
            json!({"provider": "openai", "limit": "100", "window": {"period": "Daily"},
                   "thresholds": [{"percent": 50, "action": "Deprioritize"}],
                   "forecast": {"enabled": true, "lookback": "1h"}}),
        );
        let t0 = t("2025-05-14T00:00:00Z");
        let at = |s: i64| plus(t0, s);
        let steps = vec![
            (at(0), Obs::new()),
            (at(3600), Obs::new().spend("openai", "10")),
            (at(3610), Obs::new().req("chat", "b", 0, 20).req("solo", "x", 0, 20)),
            (at(3620), Obs::new().req("solo", "y", 0, 20)),
            (at(3640), Obs::new()),
            (at(3645), Obs::new().req("chat", "b", 0, 20)),
            (at(3650), Obs::new()),
            (at(3705), Obs::new()),
            (at(3950), Obs::new()),
            (at(4005), Obs::new()),
            (at(4305), Obs::new()),
            (at(4605), Obs::new()),
            (at(4700), Obs::new().req("chat", "b", 0, 20)),
            (at(4820), Obs::new()),
            (at(6000), Obs::new()),
        ];
        (Sim::new(vec![chat, solo], vec![openai]), steps)
    }

    /// What a decision decides: tables, route states, budget actions, transitions, health.
    fn decided(d: &Decision) -> impl PartialEq + std::fmt::Debug {
        let routes: Vec<_> =
            d.routes.iter().map(|(k, r)| (k.clone(), r.decided.clone(), r.table.clone(), r.state)).collect();
        let budgets: Vec<_> = d.budgets.iter().map(|(k, b)| (k.clone(), b.action, b.status.state)).collect();
        let health: Vec<_> = d.state.backends.iter().map(|(k, h)| (k.clone(), h.phase, h.trips)).collect();
        (routes, budgets, d.transitions.clone(), health)
    }

    #[test]
    fn the_scenario_covers_what_must_be_remembered() {
        let (mut sim, steps) = scenario();
        let (mut ramping, mut fail_open, mut deprioritized, mut forecast, mut max_trips) = (0, 0, 0, 0, 0);
        for (now, obs) in &steps {
            let d = sim.step(*now, obs);
            for r in d.routes.values() {
                ramping += r.status.backends.iter().filter(|b| b.ramp_stage.is_some()).count();
                fail_open += r.status.backends.iter().filter(|b| b.fail_open).count();
                deprioritized += r.status.backends.iter().filter(|b| b.deprioritized_by.is_some()).count();
                max_trips = r.status.backends.iter().filter_map(|b| b.trips).fold(max_trips, u32::max);
            }
            forecast += d.budgets.values().filter(|b| b.status.forecast_triggered).count();
        }
        assert!(
            ramping > 0 && fail_open > 0 && deprioritized > 0 && forecast > 0,
            "{ramping} {fail_open} {deprioritized} {forecast}"
        );
        assert!(max_trips >= 3, "{max_trips}");
    }

    #[test]
    fn restore_reads_no_prose() {
        let (mut sim, steps) = scenario();
        for (now, obs) in &steps {
            let d = sim.step(*now, obs);
            let (mut routes, mut budgets) = stored(&sim, &d);
            let before = restored(&routes, &budgets);
            for r in &mut routes {
                let st = r.status.as_mut().unwrap();
                st.conditions.iter_mut().for_each(|c| (c.message, c.reason) = ("x".into(), "x".into()));
                st.backends.iter_mut().for_each(|b| b.reason = Some("x".into()));
                if let Some(rot) = &mut st.last_rotation {
                    rot.reason = "x".into();
                }
            }
            for b in &mut budgets {
                let st = b.status.as_mut().unwrap();
                st.conditions.iter_mut().for_each(|c| (c.message, c.reason) = ("x".into(), "x".into()));
            }
            let after = restored(&routes, &budgets);
            assert_eq!(without_prose(after), without_prose(before), "at {now}");
        }
    }

    #[test]
    fn a_restored_memory_decides_as_the_one_that_kept_running() {
        let (_, steps) = scenario();
        // From step 1 on: burn-rate samples are not status (a restart starts the forecast's
        // lookback afresh), so a restart before the forecast first fires would delay it.
        for restart in 1..steps.len() {
            let (mut running, _) = scenario();
            let mut decisions = Vec::new();
            for (now, obs) in &steps[..=restart] {
                decisions.push(running.step(*now, obs));
            }
            let (routes, budgets) = stored(&running, &decisions[restart]);
            let mut fresh = Sim::new(running.routes.clone(), running.budgets.clone());
            fresh.state = restored(&routes, &budgets);
            for (now, obs) in &steps[restart + 1..] {
                let (a, b) = (running.step(*now, obs), fresh.step(*now, obs));
                assert_eq!(decided(&b), decided(&a), "restarted after step {restart}, differs at {now}");
            }
        }
    }

    #[test]
    fn ejection_backoff_survives_a_restart() {
        let r: ModelRoute = serde_json::from_value(serde_json::json!({
            "apiVersion": "tollgate.dev/v1alpha1", "kind": "ModelRoute",
            "metadata": {"name": "chat", "namespace": "n"},
            "spec": {"backends": [
                {"name": "a", "provider": "openai", "model": "m", "pricing": {"input": "1", "output": "1"}},
                {"name": "b", "provider": "openai", "model": "m", "pricing": {"input": "1", "output": "1"}},
                {"name": "c", "provider": "openai", "model": "m", "pricing": {"input": "1", "output": "1"}}]},
            "status": {"backends": [
                {"name": "a", "state": "Ejected", "effectiveWeight": 0, "since": "2026-11-27T10:00:00Z",
                 "ejectedUntil": "2026-11-27T10:01:00Z", "errorRate": "0.5", "requests": 40, "trips": 2},
                {"name": "b", "state": "Active", "effectiveWeight": 1, "since": "2026-11-27T09:00:00Z", "trips": 1},
                {"name": "c", "state": "Active", "effectiveWeight": 1, "since": "2026-11-27T08:00:00Z"}]}
        }))
        .unwrap();
        let (_, health) = route_memory(&r).unwrap();
        let by_name: BTreeMap<&str, &BackendHealth> = health.iter().map(|(k, h)| (k.backend.as_str(), h)).collect();
        assert_eq!(by_name["a"].trips, 2, "the next trip doubles from 2, not from 1");
        assert!(matches!(by_name["a"].phase, Phase::Ejected { .. }));
        assert_eq!(by_name["b"].trips, 1);
        assert!(matches!(by_name["b"].phase, Phase::Healthy));
        assert_eq!(by_name["b"].healthy_since, Some("2026-11-27T09:00:00Z".parse().unwrap()));
        assert!(!by_name.contains_key("c"), "a backend with no trips needs no memory");
    }

    #[test]
    fn a_latency_ejection_keeps_its_evidence_across_a_restart() {
        let le = |n: u64| {
            let mut v = vec![0u64; crate::signals::contract::LATENCY_BUCKETS];
            v[8..].iter_mut().for_each(|c| *c = n);
            v
        };
        let chat = route(
            "chat",
            json!({
                "backends": [backend("a", "openai", 50, 0), backend("b", "mistral", 50, 0)],
                "health": {"latency": {"trip": "1s", "minRequests": 10}}
            }),
        );
        let mut sim = Sim::new(vec![chat], vec![]);
        let mut o = Obs::new();
        o.0.backends.entry(crate::policy::BackendKey::new("default", "chat", "a")).or_default().latency_le = le(12);
        let d = sim.step(t("2026-11-27T10:00:00Z"), &o);
        let (routes, budgets) = stored(&sim, &d);
        let st = &routes[0].status.as_ref().unwrap().backends[0];
        assert_eq!((st.latency_p95.as_deref(), st.latency_requests), (Some("2s500ms"), Some(12)));
        let state = restored(&routes, &budgets);
        let key = crate::policy::BackendKey::new("default", "chat", "a");
        assert_eq!(state.backends[&key].latency_trip, sim.state.backends[&key].latency_trip);
        assert!(state.backends[&key].latency_trip.is_some());
        // Decided from the restored memory, the status reads the same.
        let mut again = Sim::new(sim.routes.clone(), vec![]);
        again.state = state;
        let next = again.idle(plus(t("2026-11-27T10:00:00Z"), 1));
        let before = &d.routes[&ObjectKey::of(&routes[0])].status.backends[0];
        let after = &next.routes[&ObjectKey::of(&routes[0])].status.backends[0];
        assert_eq!(
            (&after.latency_p95, after.latency_requests, &after.latency_budget, &after.reason),
            (&before.latency_p95, before.latency_requests, &before.latency_budget, &before.reason)
        );
    }

    #[test]
    fn budget_memory_from_status() {
        let b: ProviderBudget = serde_json::from_value(serde_json::json!({
            "apiVersion": "tollgate.dev/v1alpha1", "kind": "ProviderBudget",
            "metadata": {"name": "b", "namespace": "n", "generation": 2},
            "spec": {"provider": "openai", "limit": "10"},
            "status": {"observedGeneration": 2, "spent": "9.5", "state": "Deprioritized",
                       "window": {"start": "2025-05-01T00:00:00Z", "end": "2025-06-01T00:00:00Z"},
                       "checkpoints": [{"gateway": "u1", "counter": "1.000000001"}, {"gateway": "u2", "counter": "x"}]}
        }))
        .unwrap();
        let m = budget_memory(&b).unwrap();
        assert_eq!(m.spent, "9.5".parse().unwrap());
        assert_eq!(m.action, Some(ThresholdAction::Deprioritize));
        assert_eq!(m.policy.unwrap().limit, Money::from_usd(10));
        assert_eq!(budget_checkpoints(&b), BTreeMap::from([("u1".to_string(), 1_000_000_001)]));
    }
}
