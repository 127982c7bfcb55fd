//! Rebuilding the policy's memory from the statuses the controller wrote, so a restart (or a
//! leader change) neither loses nor double-counts spend, and does not flap routes back to their
//! configured tables: budget windows, spend, the action reached and the per-gateway spend
//! checkpoints come from `ProviderBudget` status; ejections, ramp stages, tables and conditions
//! from `ModelRoute` status.

use std::collections::BTreeMap;

use crate::api::{BackendState, BudgetState, ModelRoute, ProviderBudget, ThresholdAction, condition};
use crate::policy::budget::{BudgetMemory, BudgetPolicy};
use crate::policy::health::{BackendHealth, Phase, TripEvidence};
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
    let forecast = st
        .conditions
        .iter()
        .any(|c| c.type_ == condition::WARNING && c.status == "True" && c.message.contains("reached by forecast"));
    Some(BudgetMemory {
        window_start: window.start.0,
        window_end: window.end.0,
        spent,
        action,
        forecast,
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

/// `ramping stage 2/3 at 50%` → stage index 1.
fn ramp_stage(reason: &str) -> Option<u32> {
    let rest = &reason[reason.find("ramping stage ")? + "ramping stage ".len()..];
    let n: u32 = rest.split('/').next()?.parse().ok()?;
    n.checked_sub(1)
}

fn is_serving(state: BackendState, reason: Option<&str>) -> bool {
    match state {
        BackendState::Active | BackendState::Ramping | BackendState::Standby => true,
        BackendState::Ejected | BackendState::OverBudget => {
            reason.is_some_and(|r| r.starts_with("fail open") || r.contains(": Deprioritize"))
        }
    }
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
    let mut fail_open = None;
    for b in &st.backends {
        let reason = b.reason.as_deref();
        if reason.is_some_and(|r| r.starts_with("fail open")) {
            fail_open = Some(b.name.clone());
        }
        table.push(EffectiveBackend {
            name: b.name.clone(),
            tier: b.tier,
            weight: b.effective_weight,
            state: b.state,
            serving: is_serving(b.state, reason),
            reason: b.reason.clone(),
        });
        if let Some(s) = &b.since {
            since.insert(b.name.clone(), BackendSince { state: b.state, since: s.0 });
        }
        let at = b.since.as_ref().map(|s| s.0);
        let trips = b.trips.unwrap_or(0);
        let phase = match (b.state, &b.ejected_until, reason.and_then(ramp_stage), at) {
            (_, Some(until), _, _) => Some(Phase::Ejected { until: until.0 }),
            (_, None, Some(stage), Some(started)) => {
                Some(Phase::Ramping { stage, stage_started: started, requests: 0, errors: 0 })
            }
            // Back in rotation after ejections: keep the backoff until it has been healthy
            // for `ejection.max` (counted from when it became Active, as the policy does).
            (BackendState::Active | BackendState::Standby, None, None, Some(_)) if trips > 0 => Some(Phase::Healthy),
            _ => None,
        };
        if let Some(phase) = phase {
            let last_trip = match (phase, at) {
                (Phase::Ejected { .. }, Some(at)) => Some(TripEvidence {
                    at,
                    error_rate: b.error_rate.as_deref().and_then(|e| e.parse::<Ppm>().ok()).unwrap_or_default(),
                    requests: b.requests.unwrap_or(0),
                    errors: 0,
                }),
                _ => None,
            };
            let healthy_since = matches!(phase, Phase::Healthy).then_some(at).flatten();
            health.push((
                BackendKey::new(&key.namespace, &key.name, &b.name),
                BackendHealth { phase, trips: trips.max(1), last_trip, healthy_since, ..BackendHealth::default() },
            ));
        }
    }
    let memory = RouteMemory {
        serving: Some(shares(&table)),
        table,
        conditions: st.conditions.clone(),
        since,
        state: st.state,
        fail_open,
        last_rotation: st.last_rotation.clone(),
    };
    Some((memory, health))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramp_stage_from_reason() {
        assert_eq!(ramp_stage("ramping stage 2/3 at 50%"), Some(1));
        assert_eq!(ramp_stage("budget x: Deprioritize, moved to tier 2; ramping stage 1/3 at 10%"), Some(0));
        assert_eq!(ramp_stage("standby: weight 0"), None);
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
