//! The Helm chart's copy of the CRDs must be exactly what the Rust types generate, and the
//! chart must agree with the code on the names both sides rely on. (`.ci/chart-check` renders
//! the chart with the real helm and checks it against a real API server.)

use std::path::Path;

mod common;

const REGENERATE: &str = "cargo run -q -- crds --helm > charts/tollgate/templates/crds.yaml";

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

#[test]
fn chart_crds_match_the_code() {
    let generated = tollgate::api::crds_helm_template().expect("CRDs serialize");
    common::assert_committed_matches(tollgate::api::HELM_CRDS_TEMPLATE, &generated, REGENERATE);
}

/// The chart's template is the plain CRDs plus the keep annotation and labels, gated by
/// `crds.enabled`: nothing else may differ from `crds/tollgate.yaml`.
#[test]
fn chart_crds_are_the_plain_crds_gated_and_kept() {
    let template = tollgate::api::crds_helm_template().unwrap();
    let lines: Vec<&str> = template.lines().collect();
    let open = lines.iter().position(|l| *l == "{{- if .Values.crds.enabled }}").expect("gated by crds.enabled");
    assert_eq!(lines.last(), Some(&"{{- end }}"), "the gate closes at the end");
    assert!(lines[..open].iter().all(|l| l.starts_with('#')), "only comments before the gate");
    assert_eq!(template.matches("{{").count(), 2, "no template action besides the gate");

    let body = lines[open + 1..lines.len() - 1].join("\n") + "\n";
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&body).unwrap();
    let docs: Vec<_> = docs.into_iter().filter(|d| !d.is_null()).collect();
    let plain: Vec<serde_json::Value> =
        tollgate::api::crds().iter().map(|c| serde_json::to_value(c).unwrap()).collect();
    assert_eq!(docs.len(), plain.len());
    for (mut doc, plain) in docs.into_iter().zip(plain) {
        let meta = doc["metadata"].as_object_mut().unwrap();
        let annotations = meta.remove("annotations").expect("annotations");
        assert_eq!(annotations, serde_json::json!({"helm.sh/resource-policy": "keep"}));
        assert_eq!(meta.remove("labels").expect("labels")["app.kubernetes.io/name"], "tollgate");
        assert_eq!(doc, plain, "the chart's CRD differs from `tollgate crds` beyond metadata");
    }
}

/// Names fixed in the code that the chart's templates spell out.
#[test]
fn chart_agrees_with_the_code() {
    let helpers = read("charts/tollgate/templates/_helpers.tpl");
    let values = read("charts/tollgate/values.yaml");
    let chart = read("charts/tollgate/Chart.yaml");

    let cm =
        format!(r#"{{{{- define "tollgate.configMapName" -}}}}{}{{{{- end }}}}"#, tollgate::config::CONFIGMAP_NAME);
    assert!(helpers.contains(&cm), "_helpers.tpl must define tollgate.configMapName as {cm}");
    let secret = format!(
        r#"{{{{- define "tollgate.credentialsSecretName" -}}}}{}{{{{- end }}}}"#,
        tollgate::config::CREDENTIALS_SECRET
    );
    assert!(helpers.contains(&secret), "_helpers.tpl must define tollgate.credentialsSecretName as {secret}");
    // The shard ConfigMaps the chart grants and mounts are the ones the controller may write.
    let shards = format!("range $i, $e := until {} }}}}", tollgate::config::shard::MAX_SHARDS);
    assert!(helpers.contains(&shards), "_helpers.tpl must list MAX_SHARDS shard names ({shards})");
    assert_eq!(tollgate::config::shard::shard_configmap("tollgate-gateway", 1), "tollgate-gateway-shard-1");
    assert!(helpers.contains("{{ $cm }}-shard-{{ add1 $i }}"), "shard names as in config::shard::shard_configmap");

    // The gateway pods must match the controller's default --gateway-selector, and the
    // credentials are mounted where the gateway looks by default.
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: tollgate::controller::ControllerArgs,
    }
    let defaults = Cli::parse_from(["controller"]).args;
    let selector = format!("gatewaySelector: {}", defaults.gateway_selector);
    assert!(values.contains(&selector), "values.yaml must default to the controller's selector: {selector}");
    let gateway = read("charts/tollgate/templates/gateway.yaml");
    assert!(gateway.contains(&format!("- name: {}\n", defaults.metrics_port_name)), "gateway port named metrics");
    assert!(gateway.contains(&format!("mountPath: {}\n", tollgate::gateway::DEFAULT_CREDENTIALS_DIR)));

    let app_version = format!("appVersion: \"{}\"", env!("CARGO_PKG_VERSION"));
    assert!(chart.contains(&app_version), "Chart.yaml must carry {app_version} (the crate's version)");
}

/// The first ModelRoute and ProviderBudget NOTES.txt tells users to apply are valid, and render
/// to a config with the route (the manifests have no namespace: `kubectl apply -n` gives one).
#[test]
fn notes_manifests_are_valid() {
    let notes = read("charts/tollgate/templates/NOTES.txt");
    let start = notes.find("<<'YAML'\n").expect("NOTES.txt has a <<'YAML' block") + "<<'YAML'\n".len();
    let end = start + notes[start..].find("\n   YAML\n").expect("the block ends with YAML");
    let yaml: String =
        notes[start..end].lines().map(|l| l.strip_prefix("   ").unwrap_or(l)).collect::<Vec<_>>().join("\n") + "\n";
    assert!(!yaml.contains("{{"), "no template action inside the manifests");
    let mut manifests = tollgate::api::validate::Manifests::default();
    tollgate::api::validate::parse_manifests("NOTES.txt", &yaml, &mut manifests)
        .unwrap_or_else(|e| panic!("NOTES.txt manifests are invalid: {e:?}"));
    assert_eq!((manifests.routes.len(), manifests.budgets.len()), (1, 1));
    let ns = tollgate::render::pick_namespace(&manifests, None).unwrap();
    let doc = tollgate::render::render_manifests(&manifests, &ns, jiff::Timestamp::now()).unwrap();
    assert!(doc.route("chat").is_some(), "the NOTES route serves model `chat`, as its curl example calls it");
}
