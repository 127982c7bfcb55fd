//! kube-cel as the oracle of the native rules ([`super::super::rules`]) and of the fast path of
//! [`validate_value`]:
//! - every CEL rule of the generated CRDs has a native counterpart with the same text and
//!   message (a new rule without one fails here);
//! - on a generated corpus of valid and invalid objects (every rule's failing case included),
//!   the native rules give the errors kube-cel's evaluation of the CRD gives (same fields, same
//!   messages; compared as sorted lists: kube-cel walks properties in hash order);
//! - the whole of [`validate_value`] gives what the previous pipeline gave (defaults applied to
//!   the JSON, structural errors on the defaulted copy, CEL by kube-cel, typed read of the
//!   defaulted copy): same object, or the same errors.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use kube::core::cel::{CompiledSchema, Validator, apply_defaults, compile_schema};
use proptest::prelude::*;
use serde_json::{Value, json};

use super::super::rules::{self, RULES};
use super::*;

/// Every `x-kubernetes-validations` rule of `schema`: (path, rule, message).
fn crd_rules(schema: &Value, path: &str, out: &mut Vec<(String, String, String)>) {
    for v in schema.get("x-kubernetes-validations").and_then(Value::as_array).into_iter().flatten() {
        let text = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
        out.push((path.to_string(), text("rule"), text("message")));
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (k, sub) in props {
            let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
            crd_rules(sub, &p, out);
        }
    }
    if let Some(items) = schema.get("items") {
        crd_rules(items, &format!("{path}[i]"), out);
    }
    if let Some(ap) = schema.get("additionalProperties").filter(|a| a.is_object()) {
        crd_rules(ap, &format!("{path}.*"), out);
    }
}

fn schema_of(kind: &str) -> &'static KindSchema {
    match kind_schema(kind) {
        Some(Ok(s)) => s,
        other => panic!("no schema for {kind}: {:?}", other.map(|r| r.as_ref().err())),
    }
}

#[test]
fn every_cel_rule_of_the_crds_has_a_native_counterpart() {
    let mut crd = BTreeSet::new();
    let mut count = 0;
    for kind in ["ModelRoute", "ProviderBudget"] {
        let mut found = Vec::new();
        crd_rules(&schema_of(kind).schema, "", &mut found);
        count += found.len();
        crd.extend(found.into_iter().map(|(p, r, m)| (kind.to_string(), p, r, m)));
    }
    let native: BTreeSet<_> = RULES
        .iter()
        .map(|r| (r.kind.to_string(), r.path.to_string(), r.rule.to_string(), r.message.to_string()))
        .collect();
    assert_eq!(count, RULES.len(), "rules in the CRDs vs native rules");
    assert_eq!(crd, native, "every CRD rule needs a native check with the same text and message");
}

/// The CEL rules of a kind, compiled by kube-cel.
fn cel_of(kind: &str) -> &'static CompiledSchema {
    static ROUTE: OnceLock<CompiledSchema> = OnceLock::new();
    static BUDGET: OnceLock<CompiledSchema> = OnceLock::new();
    let cell = if kind == "ModelRoute" { &ROUTE } else { &BUDGET };
    cell.get_or_init(|| compile_schema(&schema_of(kind).schema))
}

thread_local! {
    static CEL: Validator = Validator::new();
}

/// kube-cel's errors for `defaulted` (sorted).
fn cel_errors(kind: &str, defaulted: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = match CEL.with(|v| v.validate_compiled(cel_of(kind), defaulted, None)) {
        Ok(()) => Vec::new(),
        Err(e) => e
            .as_slice()
            .iter()
            .map(|e| {
                let field = if e.field_path.is_empty() { "(object)".to_string() } else { e.field_path.clone() };
                (field, e.message.clone())
            })
            .collect(),
    };
    out.sort();
    out
}

/// The native rules' errors for `value` read as its type (None: it does not read).
fn native_errors(kind: &str, value: &Value) -> Option<Vec<(String, String)>> {
    let mut errors = Vec::new();
    if kind == "ModelRoute" {
        rules::model_route(&serde_json::from_value::<ModelRoute>(value.clone()).ok()?.spec, &mut errors);
    } else {
        rules::provider_budget(&serde_json::from_value::<ProviderBudget>(value.clone()).ok()?.spec, &mut errors);
    }
    let mut out: Vec<(String, String)> = errors.into_iter().map(|e| (e.field, e.message)).collect();
    out.sort();
    Some(out)
}

/// The pipeline before native rules: defaults on the JSON, structure, then CEL by kube-cel.
fn reference(mut value: Value) -> Result<Option<Object>, Vec<FieldError>> {
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
    let schema = schema_of(&kind);
    let mut errors = first_checks(&mut value)?;
    let defaulted = defaulted_with_structure_errors(schema, &value, &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    let cel = cel_errors(&kind, &defaulted);
    if !cel.is_empty() {
        return Err(cel.into_iter().map(|(f, m)| FieldError::new(f, m)).collect());
    }
    let object = match kind.as_str() {
        "ModelRoute" => serde_json::from_value::<ModelRoute>(defaulted).map(|r| Object::ModelRoute(Box::new(r))),
        _ => serde_json::from_value::<ProviderBudget>(defaulted).map(|b| Object::ProviderBudget(Box::new(b))),
    }
    .map_err(|e| vec![FieldError::new("(object)", e.to_string())])?;
    semantic_errors(&object, &mut errors);
    if errors.is_empty() { Ok(Some(object)) } else { Err(errors) }
}

/// Errors sorted (the CEL evaluator's order is not defined).
fn normalized(r: Result<Option<Object>, Vec<FieldError>>) -> Result<Option<Object>, Vec<(String, String)>> {
    r.map_err(|e| {
        let mut e: Vec<_> = e.into_iter().map(|f| (f.field, f.message)).collect();
        e.sort();
        e
    })
}

/// Both oracles on one object; returns the native rule errors (for coverage).
fn check(value: &Value) -> Vec<(String, String)> {
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
    // Null fields are absent fields, for both (as in `validate_value`).
    let mut present = value.clone();
    drop_nulls(&mut present);
    let native = native_errors(&kind, &present);
    if let Some(native) = &native {
        let cel = cel_errors(&kind, &apply_defaults(&schema_of(&kind).schema, &present));
        assert_eq!(native, &cel, "native rules vs kube-cel for {value}");
    }
    assert_eq!(normalized(validate_value(value.clone())), normalized(reference(value.clone())), "for {value}");
    native.unwrap_or_default()
}

fn route(spec: Value) -> Value {
    json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "ModelRoute",
           "metadata": {"name": "chat", "namespace": "team-a"}, "spec": spec})
}

fn budget(spec: Value) -> Value {
    json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "ProviderBudget",
           "metadata": {"name": "openai", "namespace": "team-a"}, "spec": spec})
}

fn backend(name: &str, provider: &str, weight: i64, endpoint: Option<Value>) -> Value {
    let mut b = json!({"name": name, "provider": provider, "model": "m", "weight": weight,
                       "pricing": {"input": "0.25", "output": "2.00"}});
    if let Some(e) = endpoint {
        b["endpoint"] = e;
    }
    b
}

/// One object per rule that fails it (and nothing else), plus valid ones.
fn failing_cases() -> Vec<Value> {
    let ok = || backend("a", "openai", 1, None);
    let mock_key = json!({"mock": {}, "apiKeySecretRef": {"name": "s", "key": "k"}});
    vec![
        route(json!({"backends": [ok()], "affinity": {"keys": ["User", "Header", "User"]}})),
        route(json!({"backends": []})),
        route(json!({"backends": [ok(), backend("a", "qwen", 2, None)]})),
        route(json!({"backends": [backend("a", "openai", 0, None), backend("b", "openai", 0, None)]})),
        route(json!({"backends": [ok(), backend("b", "acme", 1, None)]})),
        route(
            json!({"backends": [backend("a", "acme", 1, Some(json!({"baseUrl": "https://x.example", "mock": {}})))]}),
        ),
        route(json!({"backends": [backend("a", "acme", 1, Some(mock_key))]})),
        route(json!({"backends": [backend("a", "acme", 1, Some(json!({"baseUrl": "http://u:p@x.example/v1"})))]})),
        route(json!({"backends": [ok()], "health": {"errorRate": {"trip": "0.2", "recover": "0.200"}}})),
        route(json!({"backends": [ok()], "health": {"rampUp": [50, 10]}})),
        route(json!({"backends": [ok()], "health": {"latency": {"trip": "1s", "recover": "2s"}}})),
        route(json!({"backends": [ok()], "health": {"latency": {"trip": "4ms"}}})),
        route(json!({"backends": [ok()], "health": {"latency": {"trip": "5m", "recover": "1ms"}}})),
        route(json!({"backends": [ok()], "health": {"latency": {"trip": "1s", "window": "0s"}}})),
        budget(json!({"provider": "openai", "limit": "5", "thresholds": [
            {"percent": 90, "action": "Warn"}, {"percent": 90, "action": "Drain"}]})),
        budget(json!({"provider": "openai", "limit": "5", "window": {"period": "Rolling"}})),
        budget(json!({"provider": "openai", "limit": "5", "window": {"period": "Daily", "duration": "24h"}})),
        budget(json!({"provider": "openai", "limit": "5", "window": {"period": "Rolling", "duration": "0s"}})),
        budget(json!({"provider": "openai", "limit": "5", "forecast": {"enabled": true, "lookback": "0m0s"}})),
        route(json!({"backends": [ok()]})),
        budget(json!({"provider": "openai", "limit": "5"})),
    ]
}

#[test]
fn every_rule_fails_on_its_case_as_kube_cel_says() {
    let mut failed = BTreeSet::new();
    for case in failing_cases() {
        for (_, message) in check(&case) {
            failed.insert(message);
        }
    }
    let all: BTreeSet<String> = RULES.iter().map(|r| r.message.to_string()).collect();
    assert_eq!(failed, all, "each native rule has a failing case");
}

prop_compose! {
    fn any_backend()(
        name in prop::sample::select(vec!["a", "b", "c"]),
        provider in prop::sample::select(vec!["openai", "qwen", "acme", "self-hosted"]),
        weight in prop::sample::select(vec![0i64, 1, 50, -1]),
        endpoint in prop::sample::select(vec![
            Value::Null,
            json!({"baseUrl": "https://x.example/v1"}),
            json!({"mock": {}}),
            json!({"baseUrl": "https://x.example/v1", "mock": {}}),
            json!({"mock": {"latency": "1ms"}, "apiKeySecretRef": {"name": "s", "key": "k"}}),
            json!({"baseUrl": "https://x.example/v1", "apiKeySecretRef": {"name": "s", "key": "k"}}),
            json!({"baseUrl": "https://x.example/v1", "mock": {}, "apiKeySecretRef": {"name": "s", "key": "k"}}),
            json!({"baseUrl": "not a url"}),
            json!({"baseUrl": "https://user:pass@x.example/v1"}),
            json!({"baseUrl": "https://token@x.example"}),
            json!({"baseUrl": "https://x.example/v1/@team?a=b@c"}),
            json!({"baseUrl": "https://x.example?q=u@h"}),
            json!({"mock": {}, "wieght": 3}),
        ]),
        priority in 0u32..3,
    ) -> Value {
        let mut b = backend(name, provider, weight, (!endpoint.is_null()).then_some(endpoint));
        b["priority"] = json!(priority);
        b
    }
}

prop_compose! {
    fn any_route()(
        backends in prop::collection::vec(any_backend(), 0..5),
        trip in prop::sample::select(vec!["0.20", "0.5", "0.1", "1", "1.5"]),
        recover in prop::sample::select(vec!["0.10", "0.5", "0.3", "0"]),
        ramp in prop::sample::select(vec![json!(null), json!([]), json!([10, 50, 100]), json!([50, 10]),
                                          json!([10, 10]), json!([0, 100]), json!([100])]),
        keys in prop::sample::select(vec![json!(null), json!({}), json!({"keys": ["User"]}),
                                          json!({"keys": ["User", "Prefix", "User"]}), json!({"keys": ["Header", "Prefix"]})]),
        health in any::<bool>(),
        model in prop::sample::select(vec![json!(null), json!("alias"), json!("")]),
        latency in prop::option::of((
            prop::sample::select(vec!["1ms", "5ms", "250ms", "1s", "2s500ms", "5m", "5m1ms", "1h"]),
            prop::sample::select(vec![json!(null), json!("4ms"), json!("5ms"), json!("1s"), json!("10m")]),
            prop::sample::select(vec![json!(null), json!("0s"), json!("0ms0s"), json!("1m"), json!("3000000h")]),
        )),
    ) -> Value {
        let mut spec = json!({"backends": backends, "model": model, "affinity": keys});
        if health {
            spec["health"] = json!({"errorRate": {"trip": trip, "recover": recover}, "rampUp": ramp});
            if let Some((trip, recover, window)) = latency {
                spec["health"]["latency"] = json!({"trip": trip, "recover": recover, "window": window});
            }
        }
        route(spec)
    }
}

prop_compose! {
    fn any_budget()(
        period in prop::sample::select(vec!["Daily", "Weekly", "Monthly", "Rolling"]),
        duration in prop::sample::select(vec![json!(null), json!("24h"), json!("0s"), json!("0h0ms"), json!("1ms")]),
        lookback in prop::sample::select(vec![json!(null), json!("1h"), json!("0s"), json!("3000000h")]),
        tz in prop::sample::select(vec!["UTC", "Europe/Paris", "Mars/Olympus"]),
        percents in prop::collection::vec(prop::sample::select(vec![10u32, 50, 90, 100, 150]), 0..4),
        window in any::<bool>(),
    ) -> Value {
        let thresholds: Vec<Value> = percents.iter().map(|p| json!({"percent": p, "action": "Warn"})).collect();
        let mut spec = json!({"provider": "openai", "limit": "100", "thresholds": thresholds});
        if window {
            spec["window"] = json!({"period": period, "duration": duration, "timeZone": tz});
        }
        if !lookback.is_null() {
            spec["forecast"] = json!({"lookback": lookback});
        }
        budget(spec)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn routes_native_equals_kube_cel(v in any_route()) {
        check(&v);
    }

    #[test]
    fn budgets_native_equals_kube_cel(v in any_budget()) {
        check(&v);
    }
}
