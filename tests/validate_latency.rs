//! `spec.health.latency` (issue 15): the schema and CEL rules of the CRD, evaluated as the API
//! server would (`validate_value`), with messages naming the field; a route without the field is
//! unchanged.

use serde_json::{Value, json};
use tollgate::api::validate::{Object, validate_value};

fn route(latency: Option<Value>) -> Value {
    let mut v = json!({
        "apiVersion": "tollgate.dev/v1alpha1",
        "kind": "ModelRoute",
        "metadata": {"name": "chat", "namespace": "team-a"},
        "spec": {
            "backends": [
                {"name": "a", "provider": "openai", "model": "gpt-5-mini", "weight": 70,
                 "pricing": {"input": "0.25", "output": "2.00"}}
            ]
        }
    });
    if let Some(l) = latency {
        v["spec"]["health"] = json!({ "latency": l });
    }
    v
}

fn rejected(v: Value) -> Vec<(String, String)> {
    match validate_value(v) {
        Ok(o) => panic!("accepted: {o:?}"),
        Err(e) => e.into_iter().map(|f| (f.field, f.message)).collect(),
    }
}

fn assert_rejects(latency: Value, field: &str, message_part: &str) {
    let errors = rejected(route(Some(latency)));
    assert!(
        errors.iter().any(|(f, m)| f.starts_with(field) && m.contains(message_part)),
        "expected {field}: …{message_part}…, got {errors:#?}"
    );
}

#[test]
fn latency_budgets_are_validated_with_field_names() {
    assert_rejects(json!({"trip": "0s"}), "spec.health.latency.trip", "between 5ms and 5m");
    assert_rejects(json!({"trip": "4ms"}), "spec.health.latency.trip", "between 5ms and 5m");
    assert_rejects(json!({"trip": "6m"}), "spec.health.latency.trip", "between 5ms and 5m");
    assert_rejects(json!({"trip": "1 s"}), "spec.health.latency.trip", "");
    assert_rejects(json!({"trip": "1s", "recover": "2s"}), "spec.health.latency", "recover must not be above");
    assert_rejects(json!({"trip": "1s", "window": "0m"}), "spec.health.latency.window", "longer than zero");
    assert_rejects(json!({"trip": "1s", "minRequests": 0}), "spec.health.latency.minRequests", "");
    assert_rejects(json!({"recover": "1s"}), "spec.health.latency", "trip");
}

#[test]
fn a_valid_latency_budget_gets_its_defaults_and_none_is_unchanged() {
    let Ok(Some(Object::ModelRoute(r))) = validate_value(route(Some(json!({"trip": "2s500ms", "recover": "1s"}))))
    else {
        panic!("rejected");
    };
    let l = r.spec.health.latency.clone().unwrap();
    assert_eq!(
        (l.trip.as_str(), l.recover.as_deref(), l.window.as_str(), l.min_requests),
        ("2s500ms", Some("1s"), "5m", 20)
    );
    let Ok(Some(Object::ModelRoute(r))) = validate_value(route(None)) else { panic!("rejected") };
    assert_eq!(r.spec.health.latency, None);
    // Serialized back, a route without the field does not grow one.
    assert!(serde_json::to_value(&r.spec.health).unwrap().get("latency").is_none());
}
