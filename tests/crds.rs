//! The committed CRDs must be exactly what the Rust types generate.

mod common;

const REGENERATE: &str = "cargo run -q -- crds > crds/tollgate.yaml";

#[test]
fn committed_crds_match_the_code() {
    let generated = tollgate::api::crds_yaml().expect("CRDs serialize");
    common::assert_committed_matches("crds/tollgate.yaml", &generated, REGENERATE);
}

#[test]
fn crds_have_the_documented_names_and_columns() {
    let crds = tollgate::api::crds();
    let route = &crds[0];
    assert_eq!(route.metadata.name.as_deref(), Some("modelroutes.tollgate.dev"));
    assert_eq!(route.spec.scope, "Namespaced");
    assert_eq!(route.spec.names.short_names.as_deref(), Some(&["mr".to_string()][..]));
    assert_eq!(route.spec.names.categories.as_deref(), Some(&["tollgate".to_string()][..]));
    let v = &route.spec.versions[0];
    assert_eq!(v.name, "v1alpha1");
    assert!(v.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(), "status subresource");
    let cols: Vec<_> = v.additional_printer_columns.iter().flatten().map(|c| c.name.as_str()).collect();
    assert_eq!(cols, ["Model", "Strategy", "Active", "State", "Age"]);

    let budget = &crds[1];
    assert_eq!(budget.metadata.name.as_deref(), Some("providerbudgets.tollgate.dev"));
    assert_eq!(budget.spec.names.short_names.as_deref(), Some(&["pb".to_string()][..]));
    let cols: Vec<_> =
        budget.spec.versions[0].additional_printer_columns.iter().flatten().map(|c| c.name.as_str()).collect();
    assert_eq!(cols, ["Provider", "Spent", "Limit", "Used", "State", "Age"]);
}

/// Every field of both schemas carries a description, so `kubectl explain` helps.
#[test]
fn every_spec_field_is_described() {
    fn walk(path: &str, schema: &serde_json::Value, missing: &mut Vec<String>) {
        if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
            for (k, sub) in props {
                let p = format!("{path}.{k}");
                // metadata/apiVersion/kind are Kubernetes' own; conditions are the standard type.
                let skip = path.is_empty() || p.contains(".conditions");
                if !skip && sub.get("description").is_none() {
                    missing.push(p.clone());
                }
                walk(&p, sub, missing);
            }
        }
        if let Some(items) = schema.get("items") {
            walk(&format!("{path}[]"), items, missing);
        }
    }
    let mut missing = vec![];
    for crd in tollgate::api::crds() {
        let schema = serde_json::to_value(&crd.spec.versions[0].schema.as_ref().unwrap().open_api_v3_schema).unwrap();
        walk("", &schema, &mut missing);
    }
    assert!(missing.is_empty(), "fields without a description: {missing:#?}");
}

/// Every CEL rule compiles, and kube-cel's cost estimate finds it within the API server's
/// budget (the API server refuses a CRD whose rule does not compile or may cost too much).
/// (Its scope analysis is not used: it mistakes comprehension variables for free ones.)
#[test]
fn every_cel_rule_compiles_within_cost() {
    use kube::core::cel::{cel::Program, compile_schema, estimate_rule_cost};
    fn rules(schema: &serde_json::Value, out: &mut Vec<(serde_json::Value, String)>) {
        if let Some(v) = schema.get("x-kubernetes-validations").and_then(|v| v.as_array()) {
            for r in v {
                out.push((schema.clone(), r["rule"].as_str().unwrap_or_default().to_string()));
            }
        }
        for key in ["properties", "items", "additionalProperties"] {
            match schema.get(key) {
                Some(serde_json::Value::Object(m)) if key == "properties" => m.values().for_each(|s| rules(s, out)),
                Some(s @ serde_json::Value::Object(_)) => rules(s, out),
                _ => {}
            }
        }
    }
    let mut count = 0;
    for crd in tollgate::api::crds() {
        let schema = serde_json::to_value(&crd.spec.versions[0].schema.as_ref().unwrap().open_api_v3_schema).unwrap();
        let mut found = vec![];
        rules(&schema, &mut found);
        for (sub, rule) in found {
            count += 1;
            let compiled = compile_schema(&sub);
            assert!(Program::compile(&rule).is_ok(), "rule {rule:?} does not compile");
            let warnings = estimate_rule_cost(&rule, &compiled);
            assert!(warnings.is_empty(), "rule {rule:?}: {warnings:?}");
        }
    }
    assert_eq!(count, 19, "the documented CEL rules");

    // The cost check can fail: the same uniqueness rule over an unbounded list of unbounded
    // strings is what the API server refuses.
    let unbounded =
        serde_json::json!({"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}}});
    let warnings = estimate_rule_cost("self.all(b, self.exists_one(c, c.name == b.name))", &compile_schema(&unbounded));
    assert!(!warnings.is_empty(), "an unbounded quadratic rule must be flagged");
}

/// tollgate's own `Condition` (the core names no Kubernetes crate) has the schema of the
/// standard one: the same fields with the same types and formats, the same required ones, and
/// `conditions` stays a list map keyed by `type`.
#[test]
fn conditions_keep_the_kubernetes_schema() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition as K8sCondition;
    let mut settings = schemars::generate::SchemaSettings::openapi3();
    settings.inline_subschemas = true;
    let k8s = serde_json::to_value(settings.into_generator().into_root_schema_for::<K8sCondition>()).unwrap();
    let shape = |s: &serde_json::Value| {
        let props = s["properties"].as_object().unwrap();
        let fields: Vec<(String, serde_json::Value, serde_json::Value)> =
            props.iter().map(|(k, v)| (k.clone(), v["type"].clone(), v["format"].clone())).collect();
        let mut required: Vec<String> =
            s["required"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_string()).collect();
        required.sort();
        (fields, required)
    };
    for crd in tollgate::api::crds() {
        let schema = serde_json::to_value(&crd.spec.versions[0].schema.as_ref().unwrap().open_api_v3_schema).unwrap();
        let conditions = &schema["properties"]["status"]["properties"]["conditions"];
        assert_eq!(conditions["x-kubernetes-list-type"], "map");
        assert_eq!(conditions["x-kubernetes-list-map-keys"], serde_json::json!(["type"]));
        assert_eq!(shape(&conditions["items"]), shape(&k8s), "{:?}", crd.metadata.name);
    }
}
