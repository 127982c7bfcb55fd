use tollgate::api::validate::{Manifests, parse_manifests};

fn errors_of(yaml: &str) -> Vec<String> {
    let mut m = Manifests::default();
    match parse_manifests("t.yaml", yaml, &mut m) {
        Ok(()) => vec![],
        Err(e) => e.into_iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn examples_are_valid() {
    let m = tollgate::api::validate::load_dir(std::path::Path::new("examples")).unwrap();
    assert_eq!(m.routes.len(), 2);
    assert_eq!(m.budgets.len(), 2);
}

#[test]
fn debug_cel() {
    let e = errors_of(r#"
apiVersion: tollgate.dev/v1alpha1
kind: ModelRoute
metadata: {name: x}
spec:
  backends:
    - {name: a, provider: openai, model: m, weight: 0, pricing: {input: "1", output: "2"}}
    - {name: a, provider: foo, model: m, weight: 0, pricing: {input: "1", output: "2"}}
  health:
    errorRate: {trip: "0.1", recover: "0.2"}
    rampUp: [50, 10]
"#);
    println!("{e:#?}");
    let e = errors_of(r#"
apiVersion: tollgate.dev/v1alpha1
kind: ProviderBudget
metadata: {name: x}
spec:
  provider: openai
  limit: "-5"
  bogus: 1
  thresholds: [{percent: 90, action: Warn}, {percent: 80, action: Drain}, {percent: 0, action: Nope}]
  window: {period: Rolling, timeZone: Mars/Base}
"#);
    println!("{e:#?}");
    panic!();
}
