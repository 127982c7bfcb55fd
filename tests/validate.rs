//! Manifest validation: what the API server enforces (schema + CEL), enforced in code.

use serde_json::{Value, json};
use tollgate::api::validate::{Manifests, Object, load_dir, parse_manifests, validate_value};

fn route() -> Value {
    json!({
        "apiVersion": "tollgate.dev/v1alpha1",
        "kind": "ModelRoute",
        "metadata": {"name": "chat", "namespace": "team-a"},
        "spec": {
            "backends": [
                {"name": "a", "provider": "openai", "model": "gpt-5-mini", "weight": 70,
                 "pricing": {"input": "0.25", "output": "2.00"}},
                {"name": "b", "provider": "deepseek", "model": "deepseek-chat", "weight": 30,
                 "pricing": {"input": "0.28", "output": "0.42"}}
            ]
        }
    })
}

fn budget() -> Value {
    json!({
        "apiVersion": "tollgate.dev/v1alpha1",
        "kind": "ProviderBudget",
        "metadata": {"name": "openai", "namespace": "team-a"},
        "spec": {"provider": "openai", "limit": "5000"}
    })
}

fn set(mut v: Value, pointer: &str, new: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let target = v.pointer_mut(parent).unwrap_or_else(|| panic!("no {parent}"));
    match target {
        Value::Object(m) => {
            m.insert(key.to_string(), new);
        }
        Value::Array(a) => a[key.parse::<usize>().unwrap()] = new,
        _ => panic!("cannot set {pointer}"),
    }
    v
}

/// (field, message) pairs of a rejected object.
fn rejected(v: Value) -> Vec<(String, String)> {
    match validate_value(v) {
        Ok(o) => panic!("accepted: {o:?}"),
        Err(e) => e.into_iter().map(|f| (f.field, f.message)).collect(),
    }
}

fn assert_rejects(v: Value, field: &str, message_part: &str) {
    let errors = rejected(v);
    assert!(
        errors.iter().any(|(f, m)| f == field && m.contains(message_part)),
        "expected {field}: …{message_part}…, got {errors:#?}"
    );
}

#[test]
fn valid_objects_get_their_defaults() {
    let Some(Object::ModelRoute(r)) = validate_value(route()).unwrap() else { panic!() };
    assert_eq!(r.alias(), "chat");
    assert_eq!(r.spec.health.error_rate.trip, "0.20");
    assert_eq!(r.spec.health.error_rate.window, "5m");
    assert_eq!(r.spec.health.ramp_up, vec![10, 50, 100]);
    assert_eq!(r.spec.health.max_ejected_percent, 50);
    let Some(Object::ProviderBudget(b)) = validate_value(budget()).unwrap() else { panic!() };
    assert_eq!(b.spec.window.time_zone, "UTC");
    assert_eq!(b.spec.thresholds.len(), 3);
    assert_eq!(b.spec.thresholds[2].percent, 100);
}

#[test]
fn other_kinds_are_skipped() {
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}});
    assert_eq!(validate_value(secret).unwrap(), None);
}

#[test]
fn cel_rules_are_enforced() {
    // no backends (also minItems)
    assert_rejects(set(route(), "/spec/backends", json!([])), "spec.backends", "");
    // duplicate names
    let dup = set(route(), "/spec/backends/1/name", json!("a"));
    assert_rejects(dup, "spec.backends", "backend names must be unique");
    // all-zero weights
    let zero = set(set(route(), "/spec/backends/0/weight", json!(0)), "/spec/backends/1/weight", json!(0));
    assert_rejects(zero, "spec.backends", "at least one backend needs a weight above zero");
    // recover >= trip
    let hyst = set(route(), "/spec/health", json!({"errorRate": {"trip": "0.10", "recover": "0.10"}}));
    assert_rejects(hyst, "spec.health.errorRate", "recover must be below trip");
    // ramp-up not increasing
    let ramp = set(route(), "/spec/health", json!({"rampUp": [50, 10, 100]}));
    assert_rejects(ramp, "spec.health.rampUp", "strictly increasing");
    // unknown provider without an endpoint
    let unknown = set(route(), "/spec/backends/1/provider", json!("my-vllm"));
    assert_rejects(unknown, "spec.backends[1]", "endpoint is required");
    // mock and baseUrl together
    let both = set(route(), "/spec/backends/1/endpoint", json!({"baseUrl": "https://x.example/v1", "mock": {}}));
    assert_rejects(both, "spec.backends[1].endpoint", "either baseUrl or mock");
    // thresholds not strictly increasing
    let th = set(
        budget(),
        "/spec/thresholds",
        json!([{"percent": 90, "action": "Warn"}, {"percent": 90, "action": "Drain"}]),
    );
    assert_rejects(th, "spec.thresholds", "strictly increasing");
    let th = set(
        budget(),
        "/spec/thresholds",
        json!([{"percent": 95, "action": "Warn"}, {"percent": 80, "action": "Drain"}]),
    );
    assert_rejects(th, "spec.thresholds", "strictly increasing");
    // rolling without a duration, and a duration without rolling
    assert_rejects(set(budget(), "/spec/window", json!({"period": "Rolling"})), "spec.window", "duration is required");
    assert_rejects(
        set(budget(), "/spec/window", json!({"period": "Daily", "duration": "24h"})),
        "spec.window",
        "only allowed when period is Rolling",
    );
    // affinity key sources at most once; prefixBytes and the header name bounded
    let dup = set(route(), "/spec/affinity", json!({"keys": ["User", "Header", "User"]}));
    assert_rejects(dup, "spec.affinity.keys", "each source at most once");
    assert_rejects(set(route(), "/spec/affinity", json!({"prefixBytes": 8})), "spec.affinity.prefixBytes", "");
    assert_rejects(set(route(), "/spec/affinity", json!({"header": "X Bad"})), "spec.affinity.header", "");
    assert_rejects(set(route(), "/spec/hints", json!({"prefer": ["Slowest"]})), "spec.hints.prefer[0]", "");
    assert!(validate_value(set(route(), "/spec/affinity", json!({}))).is_ok(), "affinity defaults are valid");
}

#[test]
fn schema_constraints_are_enforced() {
    assert_rejects(set(route(), "/spec/backends/0/weight", json!(-5)), "spec.backends[0].weight", "minimum");
    assert_rejects(set(route(), "/spec/strategy", json!("Random")), "spec.strategy", "Random");
    assert_rejects(
        set(route(), "/spec/backends/0/pricing/input", json!("1.2345678")),
        "spec.backends[0].pricing.input",
        "does not match",
    );
    assert_rejects(
        set(route(), "/spec/backends/0/pricing/output", json!(2.0)),
        "spec.backends[0].pricing.output",
        "string",
    );
    assert_rejects(set(route(), "/spec/backends/0/name", json!("Bad_Name")), "spec.backends[0].name", "does not match");
    assert_rejects(
        set(route(), "/spec/health", json!({"errorRate": {"window": "5 minutes"}})),
        "spec.health.errorRate.window",
        "does not match",
    );
    assert_rejects(set(route(), "/spec/health", json!({"rampUp": [0, 100]})), "spec.health.rampUp[0]", "minimum");
    assert_rejects(
        set(route(), "/spec/health", json!({"maxEjectedPercent": 101})),
        "spec.health.maxEjectedPercent",
        "maximum",
    );
    assert_rejects(set(budget(), "/spec/limit", json!("-5")), "spec.limit", "does not match");
    assert_rejects(
        set(budget(), "/spec/thresholds", json!([{"percent": 0, "action": "Warn"}])),
        "spec.thresholds[0].percent",
        "minimum",
    );
    assert_rejects(
        set(budget(), "/spec/thresholds", json!([{"percent": 1001, "action": "Warn"}])),
        "spec.thresholds[0].percent",
        "maximum",
    );
    assert_rejects(
        set(budget(), "/spec/thresholds", json!([{"percent": 50, "action": "Panic"}])),
        "spec.thresholds[0].action",
        "Panic",
    );
    assert_rejects(set(budget(), "/spec/window", json!({"anchorDay": 32})), "spec.window.anchorDay", "maximum");
    let mut no_provider = budget();
    no_provider["spec"].as_object_mut().unwrap().remove("provider");
    assert_rejects(no_provider, "spec", "provider");
}

#[test]
fn unknown_fields_and_bad_metadata_are_refused() {
    assert_rejects(set(route(), "/spec/backends/0/wieght", json!(3)), "spec.backends[0].wieght", "unknown field");
    assert_rejects(set(route(), "/metadata/name", json!("Chat!")), "metadata.name", "RFC 1123");
    assert_rejects(set(route(), "/apiVersion", json!("tollgate.dev/v2")), "apiVersion", "not served");
    let mut nameless = route();
    nameless["metadata"].as_object_mut().unwrap().remove("name");
    assert_rejects(nameless, "metadata.name", "required");
}

#[test]
fn unknown_time_zone_is_refused() {
    let b = set(budget(), "/spec/window", json!({"period": "Daily", "timeZone": "Mars/Olympus"}));
    assert_rejects(b, "spec.window.timeZone", "not a known IANA time zone");
}

#[test]
fn errors_name_file_document_object_and_field() {
    let yaml = r#"
apiVersion: tollgate.dev/v1alpha1
kind: ProviderBudget
metadata: {name: fine}
spec: {provider: openai, limit: "10"}
---
apiVersion: tollgate.dev/v1alpha1
kind: ModelRoute
metadata: {name: chat, namespace: team-a}
spec:
  backends:
    - {name: a, provider: openai, model: m, weight: -1, pricing: {input: "1", output: "2"}}
"#;
    let mut m = Manifests::default();
    let errors = parse_manifests("routes.yaml", yaml, &mut m).unwrap_err();
    let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].starts_with("routes.yaml: document 2: ModelRoute team-a/chat: spec.backends[0].weight: "),
        "{}",
        lines[0]
    );
    assert_eq!(m.budgets.len(), 1, "the valid object is still read");
}

#[test]
fn yaml_syntax_errors_are_reported() {
    let mut m = Manifests::default();
    let errors = parse_manifests("broken.yaml", "kind: [unclosed", &mut m).unwrap_err();
    assert_eq!(errors[0].source_name, "broken.yaml");
    assert_eq!(errors[0].field, "(yaml)");
}

#[test]
fn examples_directory_is_valid() {
    let m = load_dir(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/examples"))).unwrap();
    assert_eq!(m.routes.len(), 2);
    assert_eq!(m.budgets.len(), 2);
}

#[test]
fn duplicates_across_files_are_refused() {
    let dir = std::env::temp_dir().join(format!("tollgate-dup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let y = serde_json::to_string(&budget()).unwrap();
    std::fs::write(dir.join("a.yaml"), &y).unwrap();
    std::fs::write(dir.join("b.yml"), &y).unwrap();
    let errors = load_dir(&dir).unwrap_err();
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        errors.iter().any(|e| e.message == "defined more than once" && e.object == "ProviderBudget team-a/openai"),
        "{errors:#?}"
    );
}

#[test]
fn a_rolling_window_or_a_lookback_of_zero_is_refused_naming_the_field() {
    for zero in ["0s", "0ms", "0h0m"] {
        let b = set(budget(), "/spec/window", json!({"period": "Rolling", "duration": zero}));
        assert_rejects(b, "spec.window.duration", "window.duration must be longer than zero");
        let b = set(budget(), "/spec/forecast", json!({"enabled": true, "lookback": zero}));
        assert_rejects(b, "spec.forecast.lookback", "forecast.lookback must be longer than zero");
    }
    let ok = set(budget(), "/spec/window", json!({"period": "Rolling", "duration": "1ms"}));
    assert!(validate_value(ok).is_ok(), "a positive duration is valid");
}

#[test]
fn credentials_in_a_base_url_are_refused_without_echoing_them() {
    for url in [
        "http://user:hunter2-secret@x.example/v1",
        "https://hunter2-secret@x.example",
        "https://user:hunter2-secret@x.example:8443/v1?x=y",
    ] {
        let r = set(route(), "/spec/backends/1/endpoint", json!({"baseUrl": url}));
        let errors = rejected(r);
        assert!(
            errors.iter().any(|(f, m)| f == "spec.backends[1].endpoint.baseUrl" && m.contains("apiKeySecretRef")),
            "{errors:#?}"
        );
        let text = format!("{errors:?}");
        assert!(!text.contains("hunter2-secret"), "the message echoes the password: {text}");
    }
    // A URL that breaks the schema's pattern as well (a space) is not echoed either.
    let r = set(route(), "/spec/backends/1/endpoint", json!({"baseUrl": "http://user:hunter2-secret@x.example/a b"}));
    let text = format!("{:?}", rejected(r));
    assert!(!text.contains("hunter2-secret"), "the message echoes the password: {text}");
    // An `@` after the host (in the path or the query) is no credential.
    for url in ["https://x.example/v1/@team", "https://x.example/v1?who=a@b"] {
        let r = set(route(), "/spec/backends/1/endpoint", json!({"baseUrl": url}));
        assert!(validate_value(r).is_ok(), "{url} is valid");
    }
}

#[test]
fn the_errors_of_a_route_with_10000_backends_are_bounded() {
    let backends: Vec<Value> = (0..10_000)
        .map(|i| {
            json!({"name": format!("b{i}"), "provider": "openai", "model": "m", "weight": -1,
                   "pricing": {"input": "1", "output": "2"}})
        })
        .collect();
    let r = set(route(), "/spec/backends", json!(backends));
    let errors = rejected(r.clone());
    // Each message is short: the 10,000-item list is never echoed.
    for (f, m) in &errors {
        assert!(m.len() < 200, "{f}: {} bytes: {}", m.len(), &m[..200]);
    }
    assert!(errors.iter().any(|(f, m)| f == "spec.backends" && m.contains("more than 32 items")), "{:?}", &errors[..3]);
    // Joined into one status message or one CLI report, they stay bounded and say how many were left out.
    let fields: Vec<tollgate::api::validate::FieldError> = validate_value(r).unwrap_err();
    let problem = tollgate::plan::Problem::invalid_fields(&fields);
    assert!(problem.message.len() < 4096, "{} bytes", problem.message.len());
    assert!(
        problem.message.contains(&format!("and {} more", fields.len() - tollgate::plan::MAX_LISTED)),
        "{}",
        problem.message
    );
}
