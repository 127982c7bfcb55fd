//! One pipeline: the same manifests through `tollgate render -f DIR`, `tollgate local -f DIR`
//! (a real process, read through `/status`) and the controller's plan step (a snapshot of the
//! reflector stores) give the same decision — the same config document (same revision) and the
//! same problems — including the one rule for duplicate aliases: in files (no
//! creationTimestamp) the route whose name sorts first keeps the alias, whatever the file order.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use kube::core::DeserializeGuard;
use serde_json::Value;
use tollgate::api::validate::load_dir;
use tollgate::controller::Snapshot;
use tollgate::controller::plan::plan_snapshot;
use tollgate::plan::Plan;
use tollgate::policy::{DecisionState, ObjectKey, Observations};

/// `zeta` comes first in the files but `alpha` sorts first: `alpha` keeps `chat`.
const ROUTES: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: ModelRoute
metadata: {name: zeta, namespace: team-a}
spec:
  model: chat
  backends:
    - {name: mistral, provider: mistral, model: mistral-small, endpoint: {mock: {latency: 1ms}}, pricing: {input: "0.1", output: "0.3"}}
---
apiVersion: tollgate.dev/v1alpha1
kind: ModelRoute
metadata: {name: alpha, namespace: team-a}
spec:
  model: chat
  backends:
    - {name: openai, provider: openai, model: gpt-5-mini, weight: 70, endpoint: {mock: {latency: 1ms}}, pricing: {input: "1", output: "2"}}
    - {name: deepseek, provider: deepseek, model: deepseek-chat, weight: 30, endpoint: {mock: {latency: 1ms}}, pricing: {input: "0.28", output: "0.42"}}
---
apiVersion: tollgate.dev/v1alpha1
kind: ModelRoute
metadata: {name: solo, namespace: team-a}
spec:
  backends:
    - {name: openai, provider: openai, model: gpt-5-mini, endpoint: {mock: {latency: 1ms}}, pricing: {input: "1", output: "2"}}
"#;

const BUDGETS: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: ProviderBudget
metadata: {name: openai, namespace: team-a}
spec: {provider: openai, limit: "100", window: {period: Monthly, timeZone: UTC}}
---
apiVersion: tollgate.dev/v1alpha1
kind: ProviderBudget
metadata: {name: nobody, namespace: team-a}
spec: {provider: anthropic, limit: "5", window: {period: Daily, timeZone: UTC}}
"#;

fn unique_dir(test: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let dir = std::env::temp_dir().join(format!("tollgate-one-{test}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_manifests(dir: &Path) {
    // File names make the file order zeta, alpha, solo, then the budgets.
    std::fs::write(dir.join("a-routes.yaml"), ROUTES).unwrap();
    std::fs::write(dir.join("b-budgets.yaml"), BUDGETS).unwrap();
}

fn now() -> Timestamp {
    "2026-03-01T12:00:00Z".parse().unwrap()
}

/// The controller's plan of the same objects, seen as the stores would hold them.
fn controller_plan(dir: &Path) -> Plan {
    let m = load_dir(dir).unwrap();
    let snap = Snapshot {
        routes: m.routes.iter().map(|r| Arc::new(DeserializeGuard(Ok(r.clone())))).collect(),
        budgets: m.budgets.iter().map(|b| Arc::new(DeserializeGuard(Ok(b.clone())))).collect(),
        ..Snapshot::default()
    };
    plan_snapshot(
        &snap,
        tollgate::config::CONFIGMAP_NAME,
        &[],
        &Observations::default(),
        &DecisionState::default(),
        now(),
    )
}

/// `(kind, name) → (reason, message)` of every problem.
fn problems(plan: &Plan) -> BTreeMap<(String, String), (String, String)> {
    plan.problems()
        .map(|(kind, key, p)| ((format!("{kind:?}"), key.name.clone()), (p.reason.to_string(), p.message.clone())))
        .collect()
}

#[test]
fn render_and_the_controller_plan_step_agree() {
    let dir = unique_dir("agree");
    write_manifests(&dir);
    let m = load_dir(&dir).unwrap();
    let rendered = tollgate::render::render(&m, "team-a", now()).unwrap();
    let controller = controller_plan(&dir);
    std::fs::remove_dir_all(&dir).ok();

    assert_eq!(controller.config("team-a"), Some(&rendered.config));
    assert_eq!(problems(&controller), problems(&rendered.plan));
    assert_eq!(controller.decision, rendered.plan.decision);
    assert_eq!(controller.route_statuses, rendered.plan.route_statuses);
    assert_eq!(controller.budget_statuses, rendered.plan.budget_statuses);

    // What they agree on: alpha keeps `chat`, zeta is refused naming alpha, the unused budget
    // is a note.
    let names: Vec<&str> = rendered.config.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["alpha", "solo"]);
    assert_eq!(rendered.config.route("chat").unwrap().name, "alpha");
    let p = problems(&controller);
    assert_eq!(
        p[&("ModelRoute".into(), "zeta".into())],
        ("InvalidSpec".into(), "spec.model: model \"chat\" is already served by ModelRoute alpha".into())
    );
    assert_eq!(p[&("ProviderBudget".into(), "nobody".into())].0, "NoRouteUsesProvider");
    assert_eq!(p.len(), 2, "{p:?}");
}

#[test]
fn cli_render_prints_the_document_and_the_refused_duplicate() {
    let dir = unique_dir("cli");
    write_manifests(&dir);
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate")).args(["render", "-f"]).arg(&dir).output().unwrap();
    let controller = controller_plan(&dir);
    std::fs::remove_dir_all(&dir).ok();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let doc = tollgate::config::GatewayConfig::from_json(&out.stdout).unwrap();
    // The document does not depend on the time of the render.
    assert_eq!(Some(&doc), controller.config("team-a"));
    assert!(
        stderr.contains(
            "note: ModelRoute team-a/zeta: InvalidSpec: spec.model: model \"chat\" is already served by ModelRoute alpha"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("note: ProviderBudget team-a/nobody: NoRouteUsesProvider: "), "{stderr}");
}

struct Local {
    child: Child,
    url: String,
}

impl Drop for Local {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ready_condition(status: &Value) -> Option<(String, String, String)> {
    let c = status["conditions"].as_array()?.iter().find(|c| c["type"] == "Ready")?;
    Some((c["status"].as_str()?.into(), c["reason"].as_str()?.into(), c["message"].as_str()?.into()))
}

fn plan_ready(conditions: &[tollgate::api::Condition]) -> (String, String, String) {
    let c = conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

#[tokio::test]
async fn local_serves_what_render_and_the_controller_decide() {
    let dir = unique_dir("local");
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    write_manifests(&manifests);
    let controller = controller_plan(&manifests);
    let doc = controller.config("team-a").unwrap().clone();

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let local = Local {
        child: Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["local", "--interval", "300ms", "--table", "never", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-f")
            .arg(&manifests)
            .arg("--state")
            .arg(dir.join("state.json"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        url: format!("http://127.0.0.1:{port}"),
    };
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status: Value = loop {
        assert!(Instant::now() < deadline, "tollgate local did not answer /status at {}", local.url);
        let got = async { client.get(format!("{}/status", local.url)).send().await.ok()?.json::<Value>().await.ok() };
        if let Some(s) = got.await
            && s["configRevision"].is_string()
        {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    drop(local);
    std::fs::remove_dir_all(&dir).ok();

    // The same document: its revision is a hash of its whole content.
    assert_eq!(status["configRevision"], doc.revision.as_str(), "{status}");
    // The same problems, in the same Ready conditions the controller would write.
    for r in status["routes"].as_array().unwrap() {
        let key = ObjectKey::new("team-a", r["name"].as_str().unwrap());
        let expected = plan_ready(&controller.route_statuses[&key].conditions);
        assert_eq!(ready_condition(&r["status"]), Some(expected), "{r}");
    }
    let route_names: Vec<&str> =
        status["routes"].as_array().unwrap().iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(route_names, ["zeta", "alpha", "solo"], "every route of the files is reported");
    let zeta = &status["routes"][0]["status"];
    assert!(ready_condition(zeta).unwrap().2.contains("already served by ModelRoute alpha"), "{zeta}");
    for b in status["budgets"].as_array().unwrap() {
        let key = ObjectKey::new("team-a", b["name"].as_str().unwrap());
        let expected = plan_ready(&controller.budget_statuses[&key].conditions);
        assert_eq!(ready_condition(&b["status"]).map(|c| (c.0, c.1)), Some((expected.0, expected.1)), "{b}");
    }
}
