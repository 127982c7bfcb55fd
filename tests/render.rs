//! `tollgate render` and the config document.

use std::path::Path;
use std::process::Command;

use jiff::Timestamp;
use tollgate::config::{EndpointConfig, GatewayConfig};

fn examples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

fn now() -> Timestamp {
    "2026-11-27T12:00:00Z".parse().unwrap()
}

#[test]
fn examples_render_to_a_valid_deterministic_document() {
    let doc = tollgate::render::render_dir(&examples(), None, now()).unwrap();
    assert_eq!(doc.version, 1);
    assert_eq!(doc.namespace, "team-a");
    let names: Vec<_> = doc.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["chat", "reasoning"], "routes sorted by name");
    let chat = doc.route("chat").unwrap();
    let backends: Vec<_> = chat.backends.iter().map(|b| (b.name.as_str(), b.tier, b.weight)).collect();
    assert_eq!(backends, [("openai-mini", 0, 70), ("deepseek", 0, 30), ("claude-haiku", 1, 1)], "declared order");
    // Defaults resolved: cachedInput given, cacheWrite defaults to input, reasoning to output.
    let p = &chat.backends[0].pricing;
    assert_eq!(p.cached_input.to_string(), "0.025");
    assert_eq!(p.cache_write, p.input);
    assert_eq!(p.reasoning, p.output);
    // Built-in base URL and credential file reference.
    match &chat.backends[0].endpoint {
        EndpointConfig::Http { base_url, api_key_file, .. } => {
            assert_eq!(base_url, "https://api.openai.com/v1");
            assert_eq!(api_key_file.as_deref(), Some("openai_api-key"));
        }
        other => panic!("{other:?}"),
    }
    // The document validates, its revision is its hash, and it round-trips.
    let json = doc.to_json_pretty();
    let back = GatewayConfig::from_json(json.as_bytes()).unwrap();
    assert_eq!(back, doc);
    assert!(doc.revision.starts_with("sha256:") && doc.revision.len() == 23, "{}", doc.revision);
    // Same input, same bytes (at another time too: the document has no timestamps).
    let again = tollgate::render::render_dir(&examples(), None, "2027-01-01T00:00:00Z".parse().unwrap()).unwrap();
    assert_eq!(again.to_json_pretty(), json);
}

#[test]
fn a_changed_document_gets_a_new_revision_and_a_tampered_one_is_refused() {
    let doc = tollgate::render::render_dir(&examples(), None, now()).unwrap();
    let mut changed = doc.clone();
    changed.routes[0].backends[0].weight = 1;
    assert_ne!(changed.compute_revision(), doc.revision);
    let tampered = serde_json::to_vec(&changed).unwrap();
    let err = GatewayConfig::from_json(&tampered).unwrap_err();
    assert!(err.to_string().contains("does not match its content"), "{err}");
    let mut unknown: serde_json::Value = serde_json::to_value(&doc).unwrap();
    unknown["extra"] = serde_json::json!(1);
    let err = GatewayConfig::from_json(&serde_json::to_vec(&unknown).unwrap()).unwrap_err();
    assert!(err.to_string().contains("unknown field"), "{err}");
}

#[test]
fn a_duplicate_alias_goes_to_the_route_whose_name_sorts_first() {
    // The controller's rule (oldest creationTimestamp, then name); files carry no timestamps,
    // so the name decides, whatever the file order.
    let dir = std::env::temp_dir().join(format!("tollgate-alias-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let route = |name: &str| {
        format!(
            "apiVersion: tollgate.dev/v1alpha1\nkind: ModelRoute\nmetadata: {{name: {name}}}\nspec:\n  model: chat\n  backends:\n    - {{name: a, provider: openai, model: m, pricing: {{input: \"1\", output: \"2\"}}}}\n"
        )
    };
    std::fs::write(dir.join("a.yaml"), route("two")).unwrap();
    std::fs::write(dir.join("b.yaml"), route("one")).unwrap();
    let m = tollgate::api::validate::load_dir(&dir).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    let rendered = tollgate::render::render(&m, "default", now()).unwrap();
    assert_eq!(rendered.config.routes.len(), 1);
    assert_eq!(rendered.config.route("chat").unwrap().name, "one");
    let notes = tollgate::render::notes(&m, Some(&rendered.plan));
    assert_eq!(
        notes,
        ["ModelRoute default/two: InvalidSpec: spec.model: model \"chat\" is already served by ModelRoute one"]
    );
}

#[test]
fn the_document_never_holds_key_material() {
    // A Secret in the manifest directory is skipped, and its value never reaches the document.
    let dir = std::env::temp_dir().join(format!("tollgate-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["routes.yaml", "budgets.yaml"] {
        std::fs::copy(examples().join(f), dir.join(f)).unwrap();
    }
    std::fs::write(
        dir.join("secret.yaml"),
        "apiVersion: v1\nkind: Secret\nmetadata: {name: openai, namespace: team-a}\nstringData: {api-key: sk-live-SECRET-VALUE}\n",
    )
    .unwrap();
    let doc = tollgate::render::render_dir(&dir, None, now()).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    let json = doc.to_json_pretty();
    assert!(!json.contains("sk-live"), "key material in the document");
    assert!(json.contains("\"apiKeyFile\": \"openai_api-key\""));
}

#[test]
fn cli_render_prints_the_document_and_names_the_bad_field() {
    let bin = env!("CARGO_BIN_EXE_tollgate");
    let out = Command::new(bin).args(["render", "-f"]).arg(examples()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc = GatewayConfig::from_json(&out.stdout).unwrap();
    assert_eq!(doc.routes.len(), 2);

    let dir = std::env::temp_dir().join(format!("tollgate-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(examples().join("routes.yaml")).unwrap();
    std::fs::write(dir.join("routes.yaml"), text.replace("weight: 30", "weight: -30")).unwrap();
    let out = Command::new(bin).args(["render", "-f"]).arg(&dir).output().unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("routes.yaml: document 1: ModelRoute team-a/chat: spec.backends[1].weight: -30 is less than the minimum of 0"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn cli_crds_prints_both_crds() {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate")).arg("crds").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text, tollgate::api::crds_yaml().unwrap());
    assert_eq!(text.matches("kind: CustomResourceDefinition").count(), 2);
}

/// One generated file of 5,000 documents (past the YAML parser's default budget of 1,024)
/// renders, every route in it.
#[test]
fn a_file_of_5000_documents_renders() {
    let dir = std::env::temp_dir().join(format!(
        "tollgate-render-5000-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut text = String::new();
    for i in 0..5_000 {
        text.push_str(&format!(
            "---\napiVersion: tollgate.dev/v1alpha1\nkind: ModelRoute\nmetadata:\n  name: route-{i:05}\n  namespace: big\nspec:\n  model: alias-{i:05}\n  backends:\n    - name: a\n      provider: openai\n      model: gpt-5-mini\n      weight: 70\n      pricing: {{input: \"0.25\", output: \"2.00\"}}\n    - name: b\n      provider: deepseek\n      model: deepseek-chat\n      weight: 30\n      pricing: {{input: \"0.28\", output: \"0.42\"}}\n"
        ));
    }
    std::fs::write(dir.join("routes.yaml"), &text).unwrap();
    let doc = match tollgate::render::render_dir(&dir, None, now()) {
        Ok(d) => d,
        Err(e) => panic!("{}", e.to_string().chars().take(2000).collect::<String>()),
    };
    assert_eq!(doc.routes.len(), 5_000);
    assert_eq!(doc.routes[4_999].name, "route-04999");
    assert_eq!(doc.route("alias-02500").unwrap().backends.len(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A manifest text over the size bound gets an error naming the file and the limit.
#[test]
fn an_oversized_manifest_names_the_limit() {
    let limit = tollgate::api::validate::MAX_MANIFEST_BYTES;
    let text = "#".repeat(limit + 1);
    let mut m = tollgate::api::validate::Manifests::default();
    let errs = tollgate::api::validate::parse_manifests("huge.yaml", &text, &mut m).unwrap_err();
    assert_eq!(errs.len(), 1);
    let e = errs[0].to_string();
    assert!(e.contains("huge.yaml") && e.contains(&limit.to_string()), "{e}");
}

/// A fresh temporary directory holding `routes.yaml` with `text`.
fn manifest_dir(tag: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tollgate-render-{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("routes.yaml"), text).unwrap();
    dir
}

/// A user and password in `baseUrl` would be written in clear into the ConfigMap: refused,
/// naming the field and `apiKeySecretRef`, and the refusal does not repeat the password.
#[test]
fn cli_render_refuses_credentials_in_a_base_url_without_echoing_them() {
    let text = "apiVersion: tollgate.dev/v1alpha1\nkind: ModelRoute\nmetadata: {name: chat}\nspec:\n  backends:\n    - name: a\n      provider: self-hosted\n      model: m\n      endpoint: {baseUrl: \"http://admin:hunter2-secret@vllm.internal:8000/v1\"}\n      pricing: {input: \"1\", output: \"2\"}\n";
    let dir = manifest_dir("userinfo", text);
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate")).args(["render", "-f"]).arg(&dir).output().unwrap();
    std::fs::remove_dir_all(&dir).ok();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(out.stdout.is_empty(), "no document is printed");
    assert!(stderr.contains("spec.backends[0].endpoint.baseUrl") && stderr.contains("apiKeySecretRef"), "{stderr}");
    assert!(!stderr.contains("hunter2-secret"), "the password is echoed: {stderr}");
}

/// 10,000 invalid backends in one route: the report stays short (the list is never echoed,
/// the errors past the first few are counted, not listed).
#[test]
fn cli_render_bounds_the_report_of_a_route_with_10000_backends() {
    let mut text = String::from(
        "apiVersion: tollgate.dev/v1alpha1\nkind: ModelRoute\nmetadata: {name: chat}\nspec:\n  backends:\n",
    );
    for i in 0..10_000 {
        text.push_str(&format!(
            "    - {{name: b{i}, provider: openai, model: m, weight: -1, pricing: {{input: \"1\", output: \"2\"}}}}\n"
        ));
    }
    let dir = manifest_dir("10000", &text);
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate")).args(["render", "-f"]).arg(&dir).output().unwrap();
    std::fs::remove_dir_all(&dir).ok();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.len() < 8 * 1024, "{} bytes of errors", stderr.len());
    assert!(stderr.contains("spec.backends: value has more than 32 items"), "{stderr}");
    // 10,000 weights below the minimum and the list's size: all but the listed ones counted.
    let listed = tollgate::plan::MAX_LISTED;
    assert!(stderr.contains(&format!("... and {} more", 10_001 - listed)), "{stderr}");
}
