//! One controller pass's pure work at scale (issue 12), printed, not asserted: for N routes of
//! 5 backends in one namespace, the validate → decide → build step as the controller runs it
//! (first pass: every object validated; next pass: validation reused per generation), then
//! the stored form as the controller writes it (compact JSON, gzip, or split across shard
//! ConfigMaps: `payload::store`). No API server: the writes are not timed here.
//!
//! `cargo bench --bench scale_pass -- 1000 5000 10000`

use std::collections::BTreeSet;
use std::time::Instant;

use tollgate::api::ModelRoute;
use tollgate::config::payload;
use tollgate::plan::{PlanInput, ValidationCache, admit_cached, plan_admitted};
use tollgate::policy::{DecisionState, Observations};

fn routes(n: usize) -> Vec<ModelRoute> {
    (0..n)
        .map(|i| {
            let backends: Vec<serde_json::Value> = (0..5)
                .map(|b| {
                    serde_json::json!({
                        "name": format!("backend-{b}"), "provider": format!("provider-{b}"),
                        "model": format!("upstream-model-{b}"), "endpoint": {"mock": {}},
                        "weight": if b == 0 { 50 } else { 10 }, "priority": b % 2,
                        "pricing": {"input": "0.25", "cachedInput": "0.025", "output": "2.00"}
                    })
                })
                .collect();
            serde_json::from_value(serde_json::json!({
                "apiVersion": "tollgate.dev/v1alpha1", "kind": "ModelRoute",
                "metadata": {"name": format!("route-{i:05}"), "namespace": "bench", "uid": format!("uid-{i}"),
                             "generation": 1, "creationTimestamp": "2026-01-01T00:00:00Z"},
                "spec": {"model": format!("alias-{i:05}"), "backends": backends}
            }))
            .unwrap_or_else(|e| panic!("route {i}: {e}"))
        })
        .collect()
}

fn main() {
    let sizes: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![1_000, 5_000, 10_000] } else { sizes };
    println!("routes  pass1_s  pass2_s  us_per_route(pass2)  json_s  store_s json_bytes  stored_bytes form");
    for n in sizes {
        let routes = routes(n);
        let namespaces = BTreeSet::new();
        let observations = Observations::default();
        let mut state = DecisionState::default();
        let mut cache = ValidationCache::default();
        let now: jiff::Timestamp = "2026-06-01T00:00:00Z".parse().unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        let mut times = Vec::new();
        let mut doc = None;
        for _ in 0..2 {
            let t = Instant::now();
            let input = PlanInput {
                routes: &routes,
                budgets: &[],
                unreadable: &[],
                namespaces: &namespaces,
                secrets: None,
                observations: &observations,
                previous: &state,
                now,
            };
            let admitted = admit_cached(&routes, &[], &[], &mut cache);
            let plan = plan_admitted(input, admitted);
            times.push(t.elapsed().as_secs_f64());
            state = plan.decision.state.clone();
            doc = plan.config("bench").cloned();
        }
        let Some(doc) = doc else {
            println!("{n}: no document");
            continue;
        };
        let t = Instant::now();
        let json = doc.to_json();
        let json_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let stored = payload::store(&doc, tollgate::config::CONFIGMAP_NAME);
        let store_s = t.elapsed().as_secs_f64();
        let (bytes, form) = match &stored {
            Ok(s) => (s.len(), s.describe()),
            Err(e) => (e.stored, e.to_string()),
        };
        println!(
            "{n:<7} {:<8.3} {:<8.3} {:<20.0} {json_s:<7.3} {store_s:<7.3} {:<11} {bytes:<12} {form}",
            times[0],
            times[1],
            times[1] * 1e6 / n as f64,
            json.len(),
        );
    }
}
