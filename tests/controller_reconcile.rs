//! Reconcile passes against a mocked API server (the controller-rs fixtures pattern): each
//! scenario lists the exact requests the controller must send (method, path and query, JSON
//! body) and answers them as a real API server would; a request that never comes, or one that
//! was not expected, fails the test (with a timeout for the first). The config documents the
//! ConfigMap must carry are written out by hand (their revisions pinned as golden values), never
//! built by the code under test.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use futures::FutureExt;
use futures::future::BoxFuture;
use http::{Request, Response};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::Client;
use kube::client::Body;
use kube::core::DeserializeGuard;
use kube::runtime::events::Reporter;
use serde_json::{Value, json};
use tollgate::api::{ModelRoute, ProviderBudget};
use tollgate::config::GatewayConfig;
use tollgate::controller::metrics::ControllerMetrics;
use tollgate::controller::{Context, Engine, Settings, Snapshot};
use tollgate::policy::{DecisionState, Inputs, Observations, evaluate};
use tollgate::signals::{GatewayReading, GatewayTarget, ReadingResult, Signals};

const NS: &str = "team-a";
const GW_UID: &str = "uid-gw-1";
const CM_URI: &str =
    "/api/v1/namespaces/team-a/configmaps/tollgate-gateway?&force=true&fieldManager=tollgate-controller";
const SECRET_URI: &str =
    "/api/v1/namespaces/team-a/secrets/tollgate-credentials?&force=true&fieldManager=tollgate-controller";
const EVENTS_URI: &str = "/apis/events.k8s.io/v1/namespaces/team-a/events?";

fn status_uri(plural: &str, name: &str) -> String {
    format!(
        "/apis/tollgate.dev/v1alpha1/namespaces/team-a/{plural}/{name}/status?&force=true&fieldManager=tollgate-controller-status"
    )
}

fn t0() -> Timestamp {
    "2025-05-14T12:00:00Z".parse().unwrap()
}

fn later(secs: i64) -> Timestamp {
    t0().checked_add(jiff::SignedDuration::from_secs(secs)).unwrap()
}

// ---- test objects -------------------------------------------------------------------------

fn route_json(name: &str, backends: Value, extra: Value) -> Value {
    let mut spec = json!({"backends": backends});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    json!({
        "apiVersion": "tollgate.dev/v1alpha1", "kind": "ModelRoute",
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-route-{name}"), "generation": 1,
                     "resourceVersion": "10", "creationTimestamp": "2025-05-01T00:00:00Z"},
        "spec": spec
    })
}

fn chat_backends() -> Value {
    json!([
        {"name": "openai-mini", "provider": "openai", "model": "gpt-5-mini", "weight": 70,
         "endpoint": {"apiKeySecretRef": {"name": "openai", "key": "api-key"}},
         "pricing": {"input": "0.25", "output": "2.00"}},
        {"name": "deepseek", "provider": "deepseek", "model": "deepseek-chat", "weight": 30,
         "endpoint": {"mock": {}}, "pricing": {"input": "0.28", "output": "0.42"}}
    ])
}

fn chat() -> Value {
    route_json("chat", chat_backends(), json!({}))
}

fn budget() -> Value {
    json!({
        "apiVersion": "tollgate.dev/v1alpha1", "kind": "ProviderBudget",
        "metadata": {"name": "openai-daily", "namespace": NS, "uid": "uid-budget", "generation": 1,
                     "resourceVersion": "11", "creationTimestamp": "2025-05-01T00:00:00Z"},
        "spec": {"provider": "openai", "limit": "10", "window": {"period": "Daily"}}
    })
}

fn with_status(mut obj: Value, status: &Value) -> Value {
    obj["status"] = status.clone();
    obj
}

fn openai_secret() -> Secret {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "openai", "namespace": NS, "uid": "uid-secret-openai",
                     "labels": {"tollgate.dev/provider-key": "true"}},
        "data": {"api-key": base64::engine::general_purpose::STANDARD.encode("sk-test")}
    }))
    .unwrap()
}

/// The same Secret without the opt-in label (issue 18): the watch never delivers it, and the
/// controller must not read it if it did.
fn unlabelled_openai_secret() -> Secret {
    let mut s = openai_secret();
    s.metadata.labels = None;
    s
}

fn gateway_pod() -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "gateway-1", "namespace": NS, "uid": GW_UID,
                     "labels": {"app.kubernetes.io/component": "gateway", "app.kubernetes.io/name": "tollgate"}},
        "spec": {"containers": [{"name": "gateway", "image": "tollgate",
                                 "ports": [{"name": "metrics", "containerPort": 9090}]}]},
        "status": {"podIP": "10.0.0.5", "conditions": [{"type": "Ready", "status": "True"}]}
    }))
    .unwrap()
}

fn guard<K: serde::de::DeserializeOwned + kube::Resource>(v: Value) -> Arc<DeserializeGuard<K>> {
    Arc::new(serde_json::from_value(v).unwrap())
}

struct World {
    routes: Vec<Value>,
    budgets: Vec<Value>,
    secrets: Vec<Secret>,
    configmaps: Vec<ConfigMap>,
}

impl World {
    fn new(routes: Vec<Value>, secrets: Vec<Secret>) -> Self {
        Self { routes, budgets: vec![budget()], secrets, configmaps: vec![] }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            routes: self.routes.iter().cloned().map(guard).collect(),
            budgets: self.budgets.iter().cloned().map(guard).collect(),
            secrets: self.secrets.iter().cloned().map(Arc::new).collect(),
            pods: vec![Arc::new(gateway_pod())],
            configmaps: self.configmaps.iter().cloned().map(Arc::new).collect(),
        }
    }
}

/// The config document the controller's own code renders for `routes` and `budgets` with no
/// observations: only where the document is not the subject (the split tests need one large
/// enough to shard); the routing tables are checked against documents written by hand below.
fn expected_doc_with(routes: &[Value], budgets: &[Value]) -> GatewayConfig {
    let routes: Vec<ModelRoute> = routes.iter().map(|r| serde_json::from_value(r.clone()).unwrap()).collect();
    let budgets: Vec<ProviderBudget> = budgets.iter().map(|b| serde_json::from_value(b.clone()).unwrap()).collect();
    let decision = evaluate(Inputs {
        routes: &tollgate::api::convert::route_inputs(&routes),
        budgets: &tollgate::api::convert::budget_inputs(&budgets),
        observations: &Observations::default(),
        previous: &DecisionState::default(),
        now: t0(),
    });
    GatewayConfig::build(NS, &routes, &decision).unwrap()
}

// ---- the documents the gateway must receive, written out by hand -----------------------------

/// Golden revisions (sha256 of the document without its revision, first 16 hex digits) of the
/// documents below; [`assert_configmap`] has the gateway's own check (`from_json`) recompute
/// each one where it is sent.
const CHAT_REV: &str = "sha256:4cbbfa2fec890d51";
const CHAT_OTHER_REV: &str = "sha256:9fafc8793ac6b026";
const CHAT_ROTATED_REV: &str = "sha256:bdc0e87389c7adc9";
const CHAT_ROTATED_OTHER_REV: &str = "sha256:04c3d145db463259";
const EMPTY_REV: &str = "sha256:65a1cdc17c46240c";

/// `endpoint.mock: {}` with the defaults the document spells out.
fn mock_endpoint_by_hand() -> Value {
    json!({"mock": {"latency": "20ms", "inputTokens": 1200, "cachedInputTokens": 400, "cacheWriteTokens": 100,
                    "outputTokens": 300, "reasoningTokens": 150, "errorRate": "0", "errorStatus": 503}})
}

/// `chat()` as the gateway reads it, no budget crossed: both backends serving at their weights.
fn chat_entry_by_hand() -> Value {
    json!({
        "name": "chat", "model": "chat", "strategy": "Weighted", "mode": "Enforce", "state": "Serving",
        "backends": [
            {"name": "openai-mini", "provider": "openai", "family": "OpenAI", "model": "gpt-5-mini",
             "tier": 0, "weight": 70, "state": "Active", "serving": true,
             "endpoint": {"http": {"baseUrl": "https://api.openai.com/v1", "protocol": "OpenAI",
                                   "apiKeyFile": "openai_api-key"}},
             // cachedInput and cacheWrite default to input, cacheWrite1h to twice input,
             // reasoning to output.
             "pricing": {"input": "0.25", "cachedInput": "0.25", "cacheWrite": "0.25", "cacheWrite1h": "0.50",
                         "output": "2.00", "reasoning": "2.00"}},
            {"name": "deepseek", "provider": "deepseek", "family": "DeepSeek", "model": "deepseek-chat",
             "tier": 0, "weight": 30, "state": "Active", "serving": true,
             "endpoint": mock_endpoint_by_hand(),
             "pricing": {"input": "0.28", "cachedInput": "0.28", "cacheWrite": "0.28", "cacheWrite1h": "0.56",
                         "output": "0.42", "reasoning": "0.42"}}
        ]
    })
}

/// `chat()` once the openai budget is exhausted: openai-mini out of rotation (weight 0, not
/// serving), deepseek alone at its own weight, the route degraded.
fn chat_rotated_entry_by_hand() -> Value {
    let mut e = chat_entry_by_hand();
    e["state"] = json!("Degraded");
    let openai = &mut e["backends"][0];
    openai["weight"] = json!(0);
    openai["state"] = json!("OverBudget");
    openai["serving"] = json!(false);
    e
}

/// `other_route()`: one mock backend, weight 1 by default, prices written with two decimals.
fn other_entry_by_hand() -> Value {
    json!({
        "name": "other", "model": "other", "strategy": "Weighted", "mode": "Enforce", "state": "Serving",
        "backends": [
            {"name": "m", "provider": "mistral", "family": "Mistral", "model": "small",
             "tier": 0, "weight": 1, "state": "Active", "serving": true,
             "endpoint": mock_endpoint_by_hand(),
             "pricing": {"input": "1.00", "cachedInput": "1.00", "cacheWrite": "1.00", "cacheWrite1h": "2.00",
                         "output": "1.00", "reasoning": "1.00"}}
        ]
    })
}

fn doc_by_hand(revision: &str, routes: Vec<Value>) -> Value {
    json!({"version": 1, "revision": revision, "namespace": NS, "routes": routes})
}

/// The document of `World::new(vec![chat()], ..)` on its first pass.
fn chat_doc_by_hand() -> Value {
    doc_by_hand(CHAT_REV, vec![chat_entry_by_hand()])
}

/// A document written by hand as the library type (to seed what the server holds).
fn typed(doc: &Value) -> GatewayConfig {
    GatewayConfig::from_json(doc.to_string().as_bytes()).expect("the document written by hand is valid")
}

/// Checks a ConfigMap apply against the document written by hand: the object (name, labels,
/// revision annotation, nothing else), `config.json` equal to `doc` as compact JSON on one line
/// (the cluster form), and the gateway accepting it (its revision recomputed).
fn assert_configmap(b: &Value, doc: &Value) {
    let rev = doc["revision"].as_str().unwrap();
    let keys: Vec<&String> = b.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["apiVersion", "data", "kind", "metadata"], "{b:#}");
    assert_eq!((&b["apiVersion"], &b["kind"]), (&json!("v1"), &json!("ConfigMap")));
    assert_eq!(
        b["metadata"],
        json!({"name": "tollgate-gateway", "namespace": NS, "labels": labels("gateway-config"),
               "annotations": {"tollgate.dev/config-revision": rev}})
    );
    let data: Vec<&String> = b["data"].as_object().unwrap().keys().collect();
    assert_eq!(data, ["config.json"]);
    let text = b["data"]["config.json"].as_str().unwrap();
    let sent: Value = serde_json::from_str(text).unwrap();
    assert_eq!(&sent, doc, "config.json differs from the document written by hand");
    assert!(!text.trim_end().contains('\n'), "compact JSON on one line (the cluster form)");
    let parsed = GatewayConfig::from_json(text.as_bytes()).expect("the gateway accepts it (revision included)");
    assert_eq!(parsed.revision, rev);
}

// ---- signals --------------------------------------------------------------------------------

#[derive(Clone, Default)]
struct FakeSignals(Arc<Mutex<String>>);

impl FakeSignals {
    fn set(&self, ok: u64, errors: u64, openai_nanousd: u64, revision: &str) {
        *self.0.lock().unwrap() = format!(
            "tollgate_requests_total{{route=\"chat\",backend=\"openai-mini\",provider=\"openai\",model=\"gpt-5-mini\",outcome=\"ok\"}} {ok}\n\
             tollgate_requests_total{{route=\"chat\",backend=\"openai-mini\",provider=\"openai\",model=\"gpt-5-mini\",outcome=\"upstream_error\"}} {errors}\n\
             tollgate_cost_nanousd_total{{route=\"chat\",backend=\"openai-mini\",provider=\"openai\",model=\"gpt-5-mini\"}} {openai_nanousd}\n\
             tollgate_config_revision_info{{revision=\"{revision}\"}} 1\n"
        );
    }
}

impl Signals for FakeSignals {
    fn describe(&self) -> String {
        "fake".into()
    }

    fn collect<'a>(&'a self, targets: &'a [GatewayTarget]) -> BoxFuture<'a, BTreeMap<String, ReadingResult>> {
        let text = self.0.lock().unwrap().clone();
        async move { targets.iter().map(|t| (t.uid.clone(), Ok(GatewayReading::from_text(&text)))).collect() }.boxed()
    }
}

// ---- the mocked API server ------------------------------------------------------------------

type Check = Box<dyn Fn(&Value) + Send>;

struct Expect {
    method: &'static str,
    uri: String,
    check: Check,
    status: u16,
    reply: Option<Value>,
    /// When set: whether the request asks for metadata only (`Accept: ...PartialObjectMetadata`).
    metadata_only: Option<bool>,
}

fn expect(method: &'static str, uri: impl Into<String>, check: impl Fn(&Value) + Send + 'static) -> Expect {
    Expect { method, uri: uri.into(), check: Box::new(check), status: 200, reply: None, metadata_only: None }
}

impl Expect {
    /// Answer with an error status (as a real server: a `Status` object).
    fn fail(mut self, code: u16, reason: &str) -> Self {
        self.status = code;
        self.reply = Some(json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                 "message": format!("injected {reason}"), "reason": reason, "code": code}));
        self
    }

    fn reply(mut self, v: Value) -> Self {
        self.reply = Some(v);
        self
    }

    /// Checks that the request asks for the object's metadata only (`true`) or the whole object.
    fn metadata_only(mut self, yes: bool) -> Self {
        self.metadata_only = Some(yes);
        self
    }
}

/// What a real server answers to an apply or create: the object, with server-set metadata.
fn server_echo(body: &Value) -> Value {
    let mut v = body.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.entry("uid").or_insert(json!("server-uid"));
        m.insert("resourceVersion".into(), json!("100"));
        m.entry("namespace").or_insert(json!(NS));
        m.entry("creationTimestamp").or_insert(json!("2025-05-01T00:00:00Z"));
    }
    v
}

type Log = Arc<Mutex<Vec<(String, Value)>>>;

async fn serve(mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>, expects: Vec<Expect>, log: Log) {
    for e in expects {
        let Some((req, send)) = handle.next_request().await else {
            panic!("expected {} {} but the client went away", e.method, e.uri);
        };
        let method = req.method().to_string();
        let uri = req.uri().to_string();
        let accept = req.headers().get(http::header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        if let Some(yes) = e.metadata_only {
            assert_eq!(accept.contains("as=PartialObjectMetadata"), yes, "{method} {uri}: Accept {accept:?}");
        }
        let bytes = req.into_body().collect_bytes().await.unwrap();
        let body: Value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
        assert_eq!((method.as_str(), uri.as_str()), (e.method, e.uri.as_str()), "unexpected request, body {body:#}");
        (e.check)(&body);
        let reply = e.reply.clone().unwrap_or_else(|| server_echo(&body));
        log.lock().unwrap().push((format!("{method} {uri}"), body));
        send.send_response(
            Response::builder().status(e.status).body(Body::from(serde_json::to_vec(&reply).unwrap())).unwrap(),
        );
    }
    if let Some((req, _)) = handle.next_request().await {
        panic!("unexpected request {} {}", req.method(), req.uri());
    }
}

struct Harness {
    engine: Option<Engine>,
    server: tokio::task::JoinHandle<()>,
    log: Log,
    signals: FakeSignals,
    metrics: Arc<ControllerMetrics>,
}

fn harness(expects: Vec<Expect>) -> Harness {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    let reporter =
        Reporter { controller: "tollgate-controller".into(), instance: Some("tollgate-controller-0".into()) };
    let metrics = Arc::new(ControllerMetrics::new());
    let settings = Settings { retry_backoff: Duration::from_millis(5), ..Settings::default() };
    let ctx = Arc::new(Context { client: client.clone(), reporter, metrics: metrics.clone(), settings });
    let signals = FakeSignals::default();
    let engine = Engine::new(ctx, Arc::new(signals.clone()));
    let log: Log = Arc::default();
    let server = tokio::spawn(serve(handle, expects, log.clone()));
    Harness { engine: Some(engine), server, log, signals, metrics }
}

impl Harness {
    async fn pass(&mut self, world: &World, now: Timestamp, collect: bool) -> tollgate::controller::PassReport {
        let engine = self.engine.as_mut().unwrap();
        tokio::time::timeout(Duration::from_secs(10), engine.pass(&world.snapshot(), now, collect))
            .await
            .expect("the pass timed out: an expected request never came")
    }

    /// Drops the client and waits for the scenario to finish (every request seen, no extra).
    async fn finish(mut self) -> Vec<(String, Value)> {
        self.engine.take();
        match tokio::time::timeout(Duration::from_secs(10), self.server).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Ok(Err(e)) => panic!("scenario task failed: {e}"),
            Err(_) => panic!("scenario timed out"),
        }
        Arc::try_unwrap(self.log).map(|m| m.into_inner().unwrap()).unwrap_or_default()
    }

    /// The bodies sent so far, by request line.
    fn sent(&self, line: &str) -> Value {
        self.log
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(l, _)| l == line)
            .map(|(_, b)| b.clone())
            .unwrap_or_else(|| panic!("no request {line}"))
    }
}

// ---- checks ---------------------------------------------------------------------------------

fn labels(component: &str) -> Value {
    json!({"app.kubernetes.io/name": "tollgate", "app.kubernetes.io/component": component,
           "app.kubernetes.io/managed-by": "tollgate-controller"})
}

fn configmap_body(doc: &GatewayConfig) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "tollgate-gateway", "namespace": NS, "labels": labels("gateway-config"),
                     "annotations": {"tollgate.dev/config-revision": doc.revision}},
        "data": {"config.json": doc.to_json()}
    })
}

fn secret_body(data: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "tollgate-credentials", "namespace": NS, "labels": labels("gateway-credentials")},
        "type": "Opaque", "data": data
    })
}

/// A status apply carries only apiVersion, kind, metadata.name and status.
fn status_envelope(kind: &str, name: &str, body: &Value) -> Value {
    assert_eq!(body["apiVersion"], "tollgate.dev/v1alpha1");
    assert_eq!(body["kind"], kind);
    assert_eq!(body["metadata"], json!({"name": name}), "status apply must not carry other metadata");
    let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["apiVersion", "kind", "metadata", "status"], "status apply must carry nothing else");
    body["status"].clone()
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == type_).unwrap()
}

fn doc_of(cm: &Value) -> GatewayConfig {
    GatewayConfig::from_json(cm["data"]["config.json"].as_str().unwrap().as_bytes()).unwrap()
}

/// The objects as the server holds them after the writes of a pass.
fn apply_writes(world: &mut World, h: &Harness) {
    for (line, body) in h.log.lock().unwrap().iter() {
        if line.starts_with("PATCH /api/v1/namespaces/team-a/configmaps/") {
            world.configmaps = vec![serde_json::from_value(server_echo(body)).unwrap()];
        } else if line.starts_with("PATCH /api/v1/namespaces/team-a/secrets/") {
            world.secrets.retain(|s| s.metadata.name.as_deref() != Some("tollgate-credentials"));
            world.secrets.push(serde_json::from_value(server_echo(body)).unwrap());
        } else if line.contains("/modelroutes/") {
            let name = body["metadata"]["name"].as_str().unwrap();
            for r in &mut world.routes {
                if r["metadata"]["name"] == name {
                    *r = with_status(r.clone(), &body["status"]);
                }
            }
        } else if line.contains("/providerbudgets/") {
            world.budgets = vec![with_status(budget(), &body["status"])];
        }
    }
}

/// The first pass of a namespace whose config is `doc` (written by hand): the ConfigMap, the
/// credentials, chat's and the budget's status.
fn first_pass_expects(doc: &Value) -> Vec<Expect> {
    let cm = doc.clone();
    let rev = doc["revision"].as_str().unwrap().to_string();
    vec![
        expect("PATCH", CM_URI, move |b| assert_configmap(b, &cm)),
        expect("PATCH", SECRET_URI, |b| {
            let key = base64::engine::general_purpose::STANDARD.encode("sk-test");
            assert_eq!(b, &secret_body(json!({"openai_api-key": key})));
        }),
        expect("PATCH", status_uri("modelroutes", "chat"), move |b| {
            let s = status_envelope("ModelRoute", "chat", b);
            assert_eq!(s["observedGeneration"], 1);
            assert_eq!(condition(&s, "Ready")["status"], "True");
            assert_eq!(condition(&s, "Ready")["reason"], "Enforced");
            assert_eq!(s["state"], "Serving");
            assert_eq!(s["active"], 2);
            assert_eq!(s["gateways"], json!({"inSync": 1, "total": 1, "configRevision": rev}));
            assert_eq!(s["backends"][0]["name"], "openai-mini");
            assert_eq!(s["backends"][0]["state"], "Active");
            assert_eq!(s["backends"][0]["effectiveWeight"], 70);
        }),
        expect("PATCH", status_uri("providerbudgets", "openai-daily"), |b| {
            let s = status_envelope("ProviderBudget", "openai-daily", b);
            assert_eq!(s["observedGeneration"], 1);
            assert_eq!(s["spent"], "1.000000");
            assert_eq!(s["percentUsed"], "10.00");
            assert_eq!(s["state"], "Ok");
            assert_eq!(s["window"], json!({"start": "2025-05-14T00:00:00Z", "end": "2025-05-15T00:00:00Z"}));
            assert_eq!(s["checkpoints"], json!([{"gateway": GW_UID, "counter": "1"}]));
            assert_eq!(condition(&s, "Ready")["status"], "True");
        }),
    ]
}

// ---- scenarios ------------------------------------------------------------------------------

/// Create, then a pass with nothing new (no request at all), then a rotation (update + status +
/// events).
#[tokio::test]
async fn create_noop_then_rotate_on_spend() {
    let mut world = World::new(vec![chat()], vec![openai_secret()]);
    let rev = CHAT_REV;
    let mut expects = first_pass_expects(&chat_doc_by_hand());
    // The third pass: spend crosses the Drain threshold; openai-mini leaves the rotation.
    expects.push(expect("PATCH", CM_URI, |b| {
        assert_configmap(b, &doc_by_hand(CHAT_ROTATED_REV, vec![chat_rotated_entry_by_hand()]));
    }));
    expects.push(expect("PATCH", status_uri("modelroutes", "chat"), |b| {
        let s = status_envelope("ModelRoute", "chat", b);
        assert_eq!(s["state"], "Degraded");
        assert_eq!(condition(&s, "Rotated")["status"], "True");
        assert_eq!(condition(&s, "Degraded")["reason"], "BackendsOutOfRotation");
        assert_eq!(s["lastRotation"]["from"], "openai-mini=70,deepseek=30");
        assert_eq!(s["lastRotation"]["to"], "deepseek=100");
        assert_eq!(s["backends"][0]["state"], "OverBudget");
        // The gateway still serves the previous revision.
        assert_eq!(s["gateways"]["inSync"], 0);
    }));
    expects.push(expect("PATCH", status_uri("providerbudgets", "openai-daily"), |b| {
        let s = status_envelope("ProviderBudget", "openai-daily", b);
        assert_eq!(s["spent"], "10.500000");
        assert_eq!(s["percentUsed"], "105.00");
        assert_eq!(s["state"], "Exhausted");
        assert_eq!(condition(&s, "Exhausted")["status"], "True");
        assert_eq!(s["checkpoints"], json!([{"gateway": GW_UID, "counter": "10.5"}]));
    }));
    expects.push(expect("POST", EVENTS_URI, |b| {
        assert_eq!(b["reason"], "BudgetExhausted");
        assert_eq!(b["type"], "Warning");
        assert_eq!(b["action"], "Evaluate");
        assert_eq!(b["regarding"]["kind"], "ProviderBudget");
        assert_eq!(b["regarding"]["name"], "openai-daily");
        assert_eq!(b["reportingController"], "tollgate-controller");
        assert_eq!(b["reportingInstance"], "tollgate-controller-0");
        let note = b["note"].as_str().unwrap();
        assert!(note.contains("spent 10.500000 of 10"), "{note}");
        assert!(note.len() < 1024);
    }));
    expects.push(expect("POST", EVENTS_URI, |b| {
        assert_eq!(b["reason"], "RouteRotated");
        assert_eq!(b["type"], "Normal");
        assert_eq!(b["regarding"]["kind"], "ModelRoute");
        assert_eq!(b["regarding"]["name"], "chat");
        assert!(b["note"].as_str().unwrap().contains("rotated from openai-mini=70,deepseek=30 to deepseek=100"));
    }));
    let mut h = harness(expects);

    h.signals.set(10, 0, 1_000_000_000, rev);
    let r = h.pass(&world, t0(), true).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.configs_applied, vec![NS.to_string()]);
    assert_eq!(r.statuses_written.len(), 2);
    apply_writes(&mut world, &h);

    // Nothing changed but time: no request at all.
    let r = h.pass(&world, later(15), true).await;
    assert!(r.errors.is_empty() && r.configs_applied.is_empty() && r.statuses_written.is_empty(), "{r:?}");
    let r = h.pass(&world, later(20), false).await;
    assert!(r.statuses_written.is_empty() && r.events_published == 0, "{r:?}");

    // Spend crosses 100% of the limit: the openai backend is drained.
    h.signals.set(20, 0, 10_500_000_000, rev);
    let r = h.pass(&world, later(30), true).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let reasons: Vec<&str> = r.transitions.iter().map(|t| t.reason.as_str()).collect();
    assert_eq!(reasons, ["BudgetExhausted", "RouteRotated"]);
    assert_eq!(r.events_published, 2);
    let metrics = h.metrics.encode();
    assert!(metrics.contains("tollgate_controller_rotations_total{reason=\"RouteRotated\"} 1"), "{metrics}");
    assert!(metrics.contains("tollgate_controller_reconcile_duration_seconds_count 4"), "{metrics}");
    h.finish().await;
}

/// A route beside `chat` that no budget touches (one mock backend).
fn other_route() -> Value {
    route_json(
        "other",
        json!([{"name": "m", "provider": "mistral", "model": "small",
                "endpoint": {"mock": {}}, "pricing": {"input": "1", "output": "1"}}]),
        json!({}),
    )
}

/// A rotation of one route makes a new revision of the namespace's config, but only that
/// route's status moves: another route keeps the revision its own entry last changed in, and
/// its gateways stay in sync while they move to the new revision (issue 12: one rotation in a
/// namespace of 10,000 routes writes one route status, not 10,000).
#[tokio::test]
async fn a_rotation_rewrites_the_rotated_route_status_only() {
    let other = other_route();
    let mut world = World::new(vec![chat(), other], vec![openai_secret()]);
    let rev = CHAT_OTHER_REV.to_string();
    let mut expects =
        first_pass_expects(&doc_by_hand(CHAT_OTHER_REV, vec![chat_entry_by_hand(), other_entry_by_hand()]));
    let r1 = rev.clone();
    expects.insert(
        3,
        expect("PATCH", status_uri("modelroutes", "other"), move |b| {
            let s = status_envelope("ModelRoute", "other", b);
            assert_eq!(s["gateways"], json!({"inSync": 1, "total": 1, "configRevision": r1}));
        }),
    );
    // The rotation: the config, chat's status (its entry changed: the new revision, no gateway
    // on it yet), the budget's, the Events. Not `other`'s.
    let rotated = CHAT_ROTATED_OTHER_REV;
    expects.push(expect("PATCH", CM_URI, move |b| {
        assert_configmap(b, &doc_by_hand(rotated, vec![chat_rotated_entry_by_hand(), other_entry_by_hand()]));
    }));
    expects.push(expect("PATCH", status_uri("modelroutes", "chat"), move |b| {
        let s = status_envelope("ModelRoute", "chat", b);
        assert_eq!(s["gateways"], json!({"inSync": 0, "total": 1, "configRevision": rotated}));
    }));
    expects.push(expect("PATCH", status_uri("providerbudgets", "openai-daily"), |_| {}));
    expects.push(expect("POST", EVENTS_URI, |b| assert_eq!(b["reason"], "BudgetExhausted")));
    expects.push(expect("POST", EVENTS_URI, |b| assert_eq!(b["reason"], "RouteRotated")));
    // The gateway loads the new revision: chat is in sync again; `other` still not written.
    expects.push(expect("PATCH", status_uri("modelroutes", "chat"), move |b| {
        let s = status_envelope("ModelRoute", "chat", b);
        assert_eq!(s["gateways"], json!({"inSync": 1, "total": 1, "configRevision": rotated}));
    }));
    let mut h = harness(expects);

    h.signals.set(10, 0, 1_000_000_000, &rev);
    let r = h.pass(&world, t0(), true).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.statuses_written.len(), 3, "{:?}", r.statuses_written);
    apply_writes(&mut world, &h);
    h.log.lock().unwrap().clear();

    h.signals.set(20, 0, 10_500_000_000, &rev);
    let r = h.pass(&world, later(30), true).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.configs_applied, [NS]);
    assert_eq!(r.statuses_written, ["ModelRoute team-a/chat", "ProviderBudget team-a/openai-daily"]);
    apply_writes(&mut world, &h);
    h.log.lock().unwrap().clear();

    h.signals.set(20, 0, 10_500_000_000, rotated);
    let r = h.pass(&world, later(45), true).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.statuses_written, ["ModelRoute team-a/chat"]);
    apply_writes(&mut world, &h);
    let other = world.routes.iter().find(|r| r["metadata"]["name"] == "other").unwrap();
    assert_eq!(other["status"]["gateways"], json!({"inSync": 1, "total": 1, "configRevision": rev}));
    h.finish().await;
}

/// Status writes the pace would hold past the window are left to the next passes, which send
/// them as decided without planning again; writes about a transition go first.
#[tokio::test]
async fn status_writes_past_the_window_are_left_to_the_next_passes() {
    let other = other_route();
    // `other` comes first in the store, but chat and the budget have transitions (the first
    // signals already cross the budget's limit), so theirs are written first.
    let world = World::new(vec![other, chat()], vec![openai_secret()]);
    let mut expects = vec![
        expect("PATCH", CM_URI, |_| {}),
        expect("PATCH", SECRET_URI, |_| {}),
        expect("PATCH", status_uri("modelroutes", "chat"), |b| {
            assert_eq!(status_envelope("ModelRoute", "chat", b)["state"], "Degraded");
        }),
        // The first pass's Events, then the leftover writes of the next passes.
        expect("POST", EVENTS_URI, |b| assert_eq!(b["reason"], "BudgetExhausted")),
        expect("POST", EVENTS_URI, |b| assert_eq!(b["reason"], "RouteRotated")),
    ];
    expects.push(expect("PATCH", status_uri("providerbudgets", "openai-daily"), |b| {
        assert_eq!(status_envelope("ProviderBudget", "openai-daily", b)["state"], "Exhausted");
    }));
    expects.push(expect("PATCH", status_uri("modelroutes", "other"), |b| {
        assert_eq!(status_envelope("ModelRoute", "other", b)["state"], "Serving");
    }));
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    let reporter =
        Reporter { controller: "tollgate-controller".into(), instance: Some("tollgate-controller-0".into()) };
    // One write at once, then one per 200 ms; a pass waits for none.
    let settings = Settings {
        retry_backoff: Duration::from_millis(5),
        status_writes_per_second: 5,
        status_write_burst: 1,
        status_write_window: Duration::ZERO,
        ..Settings::default()
    };
    let metrics = Arc::new(ControllerMetrics::new());
    let ctx = Arc::new(Context { client, reporter, metrics, settings });
    let signals = FakeSignals::default();
    let log: Log = Arc::default();
    let server = tokio::spawn(serve(handle, expects, log.clone()));
    let mut engine = Engine::new(ctx, Arc::new(signals.clone()));
    signals.set(10, 0, 10_500_000_000, "sha256:none");

    let r = engine.pass(&world.snapshot(), t0(), true).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(
        (r.statuses_written.as_slice(), r.statuses_deferred),
        (["ModelRoute team-a/chat".to_string()].as_slice(), 2)
    );
    // The next passes (no spec change: nothing planned) send the leftovers as decided, one each
    // as the pace allows.
    let mut written = Vec::new();
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = engine.pass(&world.snapshot(), t0(), false).await;
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert!(r.statuses_written.len() <= 1, "{:?}", r.statuses_written);
        assert!(r.planned.is_empty(), "{:?}", r.planned);
        written.extend(r.statuses_written);
        if r.statuses_deferred == 0 {
            break;
        }
    }
    assert_eq!(written, ["ProviderBudget team-a/openai-daily", "ModelRoute team-a/other"]);
    // Nothing left: the next pass plans nothing.
    let r = engine.pass(&world.snapshot(), t0(), false).await;
    assert!(r.planned.is_empty() && r.statuses_written.is_empty(), "{r:?}");
    drop(engine);
    tokio::time::timeout(Duration::from_secs(10), server).await.unwrap().unwrap();
}

/// A 409 and a 503 are retried at once; a persistent 500 is reported (by kind) and retried by
/// the next pass, while what succeeded is not written again.
#[tokio::test]
async fn conflicts_and_server_errors_are_retried() {
    let world = World::new(vec![chat()], vec![openai_secret()]);
    let mut e = first_pass_expects(&chat_doc_by_hand());
    let budget_status = e.pop().unwrap();
    let route_status = e.pop().unwrap();
    let secret = e.pop().unwrap();
    let cm = e.pop().unwrap();
    let expects = vec![
        expect("PATCH", CM_URI, |_| {}).fail(409, "Conflict"),
        cm,
        expect("PATCH", SECRET_URI, |_| {}).fail(503, "ServiceUnavailable"),
        secret,
        route_status,
        expect("PATCH", status_uri("providerbudgets", "openai-daily"), |_| {}).fail(500, "InternalError"),
        expect("PATCH", status_uri("providerbudgets", "openai-daily"), |_| {}).fail(500, "InternalError"),
        expect("PATCH", status_uri("providerbudgets", "openai-daily"), |_| {}).fail(500, "InternalError"),
        // The next pass: only the budget status is still to be written.
        budget_status,
    ];
    let mut h = harness(expects);
    h.signals.set(10, 0, 1_000_000_000, CHAT_REV);
    let r = h.pass(&world, t0(), true).await;
    assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
    assert_eq!(r.errors[0].metric_label(), "apply_status");
    assert!(h.metrics.encode().contains("tollgate_controller_reconcile_failures_total{kind=\"apply_status\"} 1"));
    // The store has not caught up with the first pass's writes yet: they are not repeated.
    let r = h.pass(&world, later(1), false).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.statuses_written, vec!["ProviderBudget team-a/openai-daily".to_string()]);
    h.finish().await;
}

/// A Secret not opted in, a route that breaks a CEL rule and a route the Rust type cannot read: each
/// gets a condition naming the field and one Event; the rest of the namespace keeps working.
#[tokio::test]
async fn bad_input_is_reported_not_fatal() {
    let broken = route_json(
        "broken",
        json!([{"name": "a", "provider": "openai", "model": "m", "weight": 1, "pricing": {"input": "1", "output": "1"}}]),
        json!({"health": {"errorRate": {"trip": "0.10", "recover": "0.50"}}}),
    );
    let unreadable = route_json("unreadable", chat_backends(), json!({"strategy": "Fastest"}));
    // The Secret is in the store but not opted in (as if the watch had delivered it anyway).
    let world = World::new(vec![broken.clone(), chat(), unreadable.clone()], vec![unlabelled_openai_secret()]);
    let raw = unreadable.clone();
    let expects = vec![
        // The object the Rust type cannot read is fetched raw, once, to name the bad field.
        expect("GET", "/apis/tollgate.dev/v1alpha1/namespaces/team-a/modelroutes/unreadable", |b| assert!(b.is_null()))
            .reply(raw),
        // Only the valid route is served.
        expect("PATCH", CM_URI, |b| assert_configmap(b, &chat_doc_by_hand())),
        // The referenced Secret is not opted in: the credentials Secret has no key for it.
        expect("PATCH", SECRET_URI, |b| assert_eq!(b, &secret_body(json!({})))),
        expect("PATCH", status_uri("modelroutes", "broken"), |b| {
            let s = status_envelope("ModelRoute", "broken", b);
            let ready = condition(&s, "Ready");
            assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("False"), Some("InvalidSpec")));
            let msg = ready["message"].as_str().unwrap();
            assert!(msg.contains("spec.health.errorRate") && msg.contains("recover must be below trip"), "{msg}");
            assert_eq!(s["observedGeneration"], 1);
        }),
        expect("PATCH", status_uri("modelroutes", "chat"), |b| {
            let s = status_envelope("ModelRoute", "chat", b);
            let ready = condition(&s, "Ready");
            assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("False"), Some("SecretNotOptedIn")));
            assert_eq!(
                ready["message"],
                "spec.backends[0].endpoint.apiKeySecretRef: Secret team-a/openai is missing or not labelled \
                 tollgate.dev/provider-key=true, so tollgate may not read it; if it holds this provider's key, its \
                 owner can opt it in with `kubectl label secret -n team-a openai tollgate.dev/provider-key=true`"
            );
            // Still decided and served.
            assert_eq!(s["state"], "Serving");
        }),
        expect("PATCH", status_uri("modelroutes", "unreadable"), |b| {
            let s = status_envelope("ModelRoute", "unreadable", b);
            let ready = condition(&s, "Ready");
            assert_eq!(ready["reason"], "InvalidSpec");
            let msg = ready["message"].as_str().unwrap();
            assert!(msg.starts_with("spec.strategy: "), "{msg}");
        }),
        expect("PATCH", status_uri("providerbudgets", "openai-daily"), |b| {
            let s = status_envelope("ProviderBudget", "openai-daily", b);
            assert_eq!(condition(&s, "Ready")["status"], "True");
        }),
        expect("POST", EVENTS_URI, |b| {
            assert_eq!((b["reason"].as_str(), b["type"].as_str()), (Some("InvalidSpec"), Some("Warning")));
            assert_eq!(b["regarding"]["name"], "broken");
        }),
        expect("POST", EVENTS_URI, |b| {
            assert_eq!(b["reason"], "SecretNotOptedIn");
            assert_eq!(b["type"], "Warning");
            assert_eq!(b["regarding"]["name"], "chat");
            assert!(b["note"].as_str().unwrap().contains("apiKeySecretRef"));
        }),
        expect("POST", EVENTS_URI, |b| {
            assert_eq!(b["reason"], "InvalidSpec");
            assert_eq!(b["regarding"]["name"], "unreadable");
        }),
    ];
    let mut h = harness(expects);
    h.signals.set(0, 0, 0, "sha256:none");
    let r = h.pass(&world, t0(), true).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.events_published, 3);
    let sent = h.sent(&format!("PATCH {}", status_uri("modelroutes", "chat")));
    assert!(sent["status"]["backends"].as_array().is_some_and(|b| b.len() == 2));
    h.finish().await;
}

/// Two routes serving one alias: the older keeps it, even when the newer one's name sorts
/// first (the one rule `render` and `local` apply too, by name, as files carry no timestamps).
#[tokio::test]
async fn a_duplicate_alias_stays_with_the_older_route() {
    let mut copy = route_json(
        "aaa-copy",
        json!([{"name": "m", "provider": "mistral", "model": "small", "endpoint": {"mock": {}},
                "pricing": {"input": "1", "output": "1"}}]),
        json!({"model": "chat"}),
    );
    copy["metadata"]["creationTimestamp"] = json!("2025-05-10T00:00:00Z");
    let world = World::new(vec![copy, chat()], vec![openai_secret()]);
    let expects = vec![
        // Only the older route is served.
        expect("PATCH", CM_URI, |b| assert_configmap(b, &chat_doc_by_hand())),
        expect("PATCH", SECRET_URI, |_| {}),
        expect("PATCH", status_uri("modelroutes", "aaa-copy"), |b| {
            let s = status_envelope("ModelRoute", "aaa-copy", b);
            let ready = condition(&s, "Ready");
            assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("False"), Some("InvalidSpec")));
            assert_eq!(ready["message"], "spec.model: model \"chat\" is already served by ModelRoute chat");
            assert!(s.get("state").is_none(), "{s}");
        }),
        expect("PATCH", status_uri("modelroutes", "chat"), |b| {
            let s = status_envelope("ModelRoute", "chat", b);
            assert_eq!(condition(&s, "Ready")["status"], "True");
            assert_eq!(s["state"], "Serving");
        }),
        expect("PATCH", status_uri("providerbudgets", "openai-daily"), |_| {}),
        expect("POST", EVENTS_URI, |b| {
            assert_eq!(b["reason"], "InvalidSpec");
            assert_eq!(b["regarding"]["name"], "aaa-copy");
            assert!(b["note"].as_str().unwrap().contains("already served by ModelRoute chat"));
        }),
    ];
    let mut h = harness(expects);
    h.signals.set(0, 0, 0, "sha256:none");
    let r = h.pass(&world, t0(), true).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.events_published, 1);
    h.finish().await;
}

/// The last route removed: the ConfigMap stays, with an empty route list.
#[tokio::test]
async fn last_route_removed_leaves_an_empty_config() {
    let mut world = World::new(vec![], vec![openai_secret()]);
    world.configmaps = vec![serde_json::from_value(server_echo(&configmap_body(&typed(&chat_doc_by_hand())))).unwrap()];
    let expects = vec![
        expect("PATCH", CM_URI, |b| assert_configmap(b, &doc_by_hand(EMPTY_REV, vec![]))),
        expect("PATCH", SECRET_URI, |b| assert_eq!(b, &secret_body(json!({})))),
        expect("PATCH", status_uri("providerbudgets", "openai-daily"), |b| {
            let s = status_envelope("ProviderBudget", "openai-daily", b);
            let ready = condition(&s, "Ready");
            assert_eq!(
                (ready["status"].as_str(), ready["reason"].as_str()),
                (Some("True"), Some("NoRouteUsesProvider"))
            );
            assert!(ready["message"].as_str().unwrap().starts_with("spec.provider: "));
        }),
        expect("POST", EVENTS_URI, |b| assert_eq!(b["reason"], "NoRouteUsesProvider")),
    ];
    let mut h = harness(expects);
    let r = h.pass(&world, t0(), false).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    h.finish().await;
}

/// A new controller (a restart, or another replica taking the lease) rebuilds its memory from
/// the statuses: it writes nothing but the spend the gateway made meanwhile, counted once.
#[tokio::test]
async fn restart_neither_loses_nor_double_counts_spend() {
    let mut world = World::new(vec![chat()], vec![openai_secret()]);
    let mut h = harness(first_pass_expects(&chat_doc_by_hand()));
    h.signals.set(10, 0, 1_000_000_000, CHAT_REV);
    let r = h.pass(&world, t0(), true).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    apply_writes(&mut world, &h);
    h.finish().await;

    // The gateway spent 2.5 USD more while no controller ran.
    let mut h = harness(vec![expect("PATCH", status_uri("providerbudgets", "openai-daily"), |b| {
        let s = status_envelope("ProviderBudget", "openai-daily", b);
        assert_eq!(s["spent"], "3.500000");
        assert_eq!(s["checkpoints"], json!([{"gateway": GW_UID, "counter": "3.5"}]));
        assert_eq!(condition(&s, "Ready")["lastTransitionTime"], "2025-05-14T12:00:00Z");
    })]);
    h.signals.set(10, 0, 3_500_000_000, CHAT_REV);
    let r = h.pass(&world, later(60), true).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(r.transitions.is_empty(), "{:?}", r.transitions);
    h.finish().await;
}

/// The ConfigMap apply is refused (422 Too long): the routes and the budget say `Ready=False`
/// `ConfigNotApplied` with the API server's message, the status claims no revision, one
/// Warning Event is posted (not one per pass), and the failure is counted; when a later write
/// succeeds, `Ready` is True again and one Normal Event says so.
#[tokio::test]
async fn a_config_that_is_not_written_is_not_ready() {
    let mut world = World::new(vec![chat()], vec![openai_secret()]);
    let rev = CHAT_REV;
    let too_long = "ConfigMap \"tollgate-gateway\" is invalid: []: Too long: must have at most 1048576 bytes";
    let refused = || {
        let mut e = expect("PATCH", CM_URI, |_| {}).fail(422, "Invalid");
        e.reply = Some(json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                              "message": too_long, "reason": "Invalid", "code": 422}));
        e
    };
    let not_ready = |s: &Value| {
        let ready = condition(s, "Ready");
        assert_eq!(ready["status"], "False", "{s:#}");
        assert_eq!(ready["reason"], "ConfigNotApplied");
        let message = ready["message"].as_str().unwrap();
        assert!(message.contains("Too long: must have at most 1048576 bytes"), "{message}");
        assert!(message.contains("team-a/tollgate-gateway"), "{message}");
    };
    let expects = vec![
        // Pass 1: refused (422 is not retried), the rest goes on.
        refused(),
        expect("PATCH", SECRET_URI, |_| {}),
        expect("PATCH", status_uri("modelroutes", "chat"), move |b| {
            let s = status_envelope("ModelRoute", "chat", b);
            not_ready(&s);
            // No ConfigMap holds any revision: the status claims none.
            assert!(s.get("gateways").is_none(), "{s:#}");
        }),
        expect("PATCH", status_uri("providerbudgets", "openai-daily"), move |b| {
            not_ready(&status_envelope("ProviderBudget", "openai-daily", b));
        }),
        expect("POST", EVENTS_URI, |b| {
            assert_eq!(b["reason"], "ConfigNotApplied");
            assert_eq!(b["type"], "Warning");
            assert_eq!(b["regarding"]["kind"], "ConfigMap");
            assert_eq!(b["regarding"]["name"], "tollgate-gateway");
            let note = b["note"].as_str().unwrap();
            assert!(note.contains("Too long") && note.len() < 1024, "{note}");
        }),
        // Pass 2: refused again; statuses unchanged (not rewritten), no second Event.
        refused(),
        // Pass 3: written; Ready back to True, one Normal Event.
        expect("PATCH", CM_URI, |b| assert_configmap(b, &chat_doc_by_hand())),
        expect("PATCH", status_uri("modelroutes", "chat"), move |b| {
            let s = status_envelope("ModelRoute", "chat", b);
            assert_eq!(condition(&s, "Ready")["status"], "True", "{s:#}");
            assert_eq!(condition(&s, "Ready")["reason"], "Enforced");
            assert_eq!(s["gateways"], json!({"inSync": 1, "total": 1, "configRevision": rev}));
        }),
        expect("PATCH", status_uri("providerbudgets", "openai-daily"), |b| {
            let s = status_envelope("ProviderBudget", "openai-daily", b);
            assert_eq!(condition(&s, "Ready")["status"], "True", "{s:#}");
        }),
        expect("POST", EVENTS_URI, |b| {
            assert_eq!(b["reason"], "ConfigApplied");
            assert_eq!(b["type"], "Normal");
            assert_eq!(b["regarding"]["kind"], "ConfigMap");
        }),
    ];
    let mut h = harness(expects);
    h.signals.set(10, 0, 1_000_000_000, CHAT_REV);
    let r = h.pass(&world, t0(), true).await;
    assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
    assert_eq!(r.errors[0].metric_label(), "apply_configmap");
    assert!(r.configs_applied.is_empty());
    assert_eq!(r.events_published, 1);
    apply_writes(&mut world, &h);
    // The log holds the refused ConfigMap apply too: the server kept nothing.
    world.configmaps.clear();

    let r = h.pass(&world, later(15), false).await;
    assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
    assert!(r.statuses_written.is_empty() && r.events_published == 0, "{r:?}");
    let metrics = h.metrics.encode();
    assert!(
        metrics.contains("tollgate_controller_config_not_applied_total{reason=\"ConfigNotApplied\"} 2"),
        "{metrics}"
    );

    let r = h.pass(&world, later(30), false).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.configs_applied, vec![NS.to_string()]);
    assert_eq!(r.statuses_written.len(), 2, "{r:?}");
    assert_eq!(r.events_published, 1);
    h.finish().await;
}

// ---- Events that cannot be posted ------------------------------------------------------------

/// No route at all, one budget: the first pass writes the budget status (no namespace has a
/// config to write) and posts one `NoRouteUsesProvider` Event, answered with `events_first`.
fn no_route_world() -> World {
    World::new(vec![], vec![openai_secret()])
}

fn no_route_expects(events_first: Vec<Expect>) -> Vec<Expect> {
    let mut v = vec![expect("PATCH", status_uri("providerbudgets", "openai-daily"), |b| {
        let s = status_envelope("ProviderBudget", "openai-daily", b);
        assert_eq!(condition(&s, "Ready")["reason"], "NoRouteUsesProvider");
    })];
    v.extend(events_first);
    v
}

fn event_post(code: Option<(u16, &'static str)>) -> Expect {
    let e = expect("POST", EVENTS_URI, |b| {
        assert_eq!(b["reason"], "NoRouteUsesProvider");
        assert_eq!(b["regarding"]["kind"], "ProviderBudget");
        assert_eq!(b["regarding"]["name"], "openai-daily");
    });
    match code {
        Some((code, reason)) => e.fail(code, reason),
        None => e,
    }
}

/// Log lines, written by a `tracing` subscriber.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

fn publish_errors(r: &tollgate::controller::PassReport) -> Vec<String> {
    r.errors.iter().map(|e| format!("{} {e}", e.metric_label())).collect()
}

/// An Event POST answered 500 (retried at once, as every transient error) and then 403 stays
/// in the outbox: each pass reports the failure and posts it again, nothing else is written;
/// after `EVENT_ATTEMPTS` (5) failed passes it is dropped and never posted again.
#[tokio::test]
async fn an_event_that_cannot_be_posted_is_retried_by_the_next_passes_then_dropped() {
    let mut world = no_route_world();
    let mut expects = no_route_expects(vec![
        // Pass 1: a 500 is retried at once, `retry_attempts` (3) times in all: one failed attempt.
        event_post(Some((500, "InternalError"))),
        event_post(Some((500, "InternalError"))),
        event_post(Some((500, "InternalError"))),
    ]);
    // Passes 2 to 5: one POST each, refused (403 is not retried at once).
    for _ in 2..=5 {
        expects.push(event_post(Some((403, "Forbidden"))));
    }
    // Pass 6 and later: no request at all.
    // The log lines of this test (a current-thread runtime: every pass runs on this thread).
    let logs = LogBuffer::default();
    let _log = tracing::subscriber::set_default(
        tracing_subscriber::fmt().with_writer(logs.clone()).with_ansi(false).without_time().finish(),
    );
    let mut h = harness(expects);
    let r = h.pass(&world, t0(), false).await;
    assert_eq!(r.events_published, 0);
    let errors = publish_errors(&r);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].starts_with("publish_event "), "{errors:?}");
    assert!(errors[0].contains("NoRouteUsesProvider") && errors[0].contains("openai-daily"), "{errors:?}");
    apply_writes(&mut world, &h);
    for pass in 2..=5 {
        let r = h.pass(&world, later(pass * 10), false).await;
        assert_eq!(r.events_published, 0, "pass {pass}");
        let errors = publish_errors(&r);
        assert_eq!(errors.len(), 1, "pass {pass}: {errors:?}");
        assert!(errors[0].starts_with("publish_event ") && errors[0].contains("NoRouteUsesProvider"), "{errors:?}");
        assert!(r.configs_applied.is_empty() && r.statuses_written.is_empty(), "pass {pass}: {r:?}");
    }
    assert!(
        h.metrics.encode().contains("tollgate_controller_reconcile_failures_total{kind=\"publish_event\"} 5"),
        "{}",
        h.metrics.encode()
    );
    let dropped = |text: &str| text.lines().filter(|l| l.contains("event dropped")).count();
    let text = logs.text();
    assert_eq!(dropped(&text), 1, "{text}");
    let line = text.lines().find(|l| l.contains("event dropped")).unwrap();
    assert!(line.contains("WARN") && line.contains("NoRouteUsesProvider") && line.contains("attempts=5"), "{line}");
    assert!(line.contains("ProviderBudget team-a/openai-daily"), "{line}");
    // Dropped: the next passes post nothing and report nothing.
    for pass in 6..=7 {
        let r = h.pass(&world, later(pass * 10), false).await;
        assert!(r.errors.is_empty(), "pass {pass}: {:?}", r.errors);
        assert_eq!(r.events_published, 0);
    }
    let log = h.finish().await;
    let posts = log.iter().filter(|(l, _)| l == &format!("POST {EVENTS_URI}")).count();
    assert_eq!(posts, 3 + 4, "three tries in the first pass, one in each of the next four");
    assert_eq!(dropped(&logs.text()), 1, "dropped once, not logged again");
}

/// An Event refused once is posted by the next pass, once: published, not duplicated.
#[tokio::test]
async fn an_event_refused_once_is_published_by_the_next_pass() {
    let mut world = no_route_world();
    let mut expects = no_route_expects(vec![event_post(Some((403, "Forbidden")))]);
    expects.push(event_post(None));
    let mut h = harness(expects);
    let r = h.pass(&world, t0(), false).await;
    assert_eq!((r.events_published, r.errors.len()), (0, 1), "{:?}", r.errors);
    apply_writes(&mut world, &h);
    let r = h.pass(&world, later(10), false).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.events_published, 1);
    let r = h.pass(&world, later(20), false).await;
    assert!(r.errors.is_empty() && r.events_published == 0, "{r:?}");
    h.finish().await;
}

/// A pass on a spec change plans only the namespaces whose inputs changed (issue 12): a route
/// created in team-b is written at once, while team-a, whose budget's daily window has rolled
/// over meanwhile (a change of time, not of input), is left to the next signal pass, which
/// plans every namespace.
#[tokio::test]
async fn a_spec_change_plans_only_the_namespaces_it_touches() {
    let mut world = World::new(vec![chat()], vec![openai_secret()]);
    let rev = CHAT_REV;
    let b_uri = |path: &str| format!("/api/v1/namespaces/team-b/{path}?&force=true&fieldManager=tollgate-controller");
    let mut expects = first_pass_expects(&chat_doc_by_hand());
    // The spec-change pass, a day later: team-b's config, credentials and route status only.
    expects.push(expect("PATCH", b_uri("configmaps/tollgate-gateway"), |b| {
        let d = doc_of(b);
        assert_eq!((d.namespace.as_str(), d.routes.len()), ("team-b", 1));
    }));
    expects.push(expect("PATCH", b_uri("secrets/tollgate-credentials"), |b| assert_eq!(b["data"], json!({}))));
    expects.push(expect(
        "PATCH",
        "/apis/tollgate.dev/v1alpha1/namespaces/team-b/modelroutes/solo/status?&force=true&fieldManager=tollgate-controller-status",
        |b| assert_eq!(status_envelope("ModelRoute", "solo", b)["observedGeneration"], 1),
    ));
    // The signal pass: every namespace, so team-a's budget gets its new window.
    expects.push(expect("PATCH", status_uri("providerbudgets", "openai-daily"), |b| {
        let s = status_envelope("ProviderBudget", "openai-daily", b);
        assert_eq!(s["window"], json!({"start": "2025-05-15T00:00:00Z", "end": "2025-05-16T00:00:00Z"}));
    }));
    let mut h = harness(expects);
    h.signals.set(10, 0, 1_000_000_000, rev);
    let r = h.pass(&world, t0(), true).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.planned, [NS]);
    apply_writes(&mut world, &h);
    // The writes of that pass (ConfigMap, Secret) are team-a's new inputs: planned once more,
    // nothing to write.
    let r = h.pass(&world, later(15), false).await;
    assert_eq!(
        (r.planned.as_slice(), r.statuses_written.len(), r.configs_applied.len()),
        ([NS.to_string()].as_slice(), 0, 0)
    );

    let mut solo = route_json(
        "solo",
        json!([{"name": "m", "provider": "mistral", "model": "small",
                                              "endpoint": {"mock": {}}, "pricing": {"input": "1", "output": "1"}}]),
        json!({}),
    );
    solo["metadata"]["namespace"] = json!("team-b");
    solo["metadata"]["uid"] = json!("uid-route-solo");
    world.routes.push(solo);
    let r = h.pass(&world, later(86_400), false).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.planned, ["team-b"]);
    assert_eq!(r.configs_applied, ["team-b"]);
    assert_eq!(r.statuses_written, ["ModelRoute team-b/solo"]);

    let r = h.pass(&world, later(86_400), true).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.planned, [NS, "team-b"]);
    assert_eq!(r.statuses_written, ["ProviderBudget team-a/openai-daily"]);
    h.finish().await;
}

// ---- Hard budgets (issue 13) ------------------------------------------------------------------

const ALLOWANCES_URI: &str =
    "/api/v1/namespaces/team-a/configmaps/tollgate-allowances?&force=true&fieldManager=tollgate-controller";
const ALLOWANCES_GET: &str = "/api/v1/namespaces/team-a/configmaps/tollgate-allowances";

fn hard_budget(status: Option<Value>) -> Value {
    let mut b = budget();
    b["spec"]["enforcement"] = json!("Hard");
    if let Some(s) = status {
        b["status"] = s;
    }
    b
}

fn window_start() -> i64 {
    "2025-05-14T00:00:00Z".parse::<Timestamp>().unwrap().as_second()
}

/// The allowances document the controller should write for the one Hard budget.
fn allowances_doc(grants: &[(&str, &str)]) -> String {
    use tollgate::config::allowances::{Allowances, HardBudgetGrants};
    Allowances {
        namespace: NS.into(),
        budgets: vec![HardBudgetGrants {
            name: "openai-daily".into(),
            provider: "openai".into(),
            models: vec![],
            limit: "10".into(),
            window_start: window_start(),
            grants: grants.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }],
    }
    .to_json()
}

fn allowances_body(grants: &[(&str, &str)]) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "tollgate-allowances", "namespace": NS, "labels": labels("gateway-allowances")},
        "data": {"allowances.json": allowances_doc(grants)}
    })
}

/// Signals with the gateway's Hard budget gauges for `openai-daily`.
fn hard_signals(nanousd: u64, granted: &str, settled: &str, reserved: &str, refused: u64, rev: &str) -> String {
    format!(
        "tollgate_requests_total{{route=\"chat\",backend=\"openai-mini\",provider=\"openai\",model=\"gpt-5-mini\",outcome=\"ok\"}} 10\n\
         tollgate_cost_nanousd_total{{route=\"chat\",backend=\"openai-mini\",provider=\"openai\",model=\"gpt-5-mini\"}} {nanousd}\n\
         tollgate_config_revision_info{{revision=\"{rev}\"}} 1\n\
         tollgate_hard_budget_reservations_total{{budget=\"openai-daily\",result=\"admitted\"}} 5\n\
         tollgate_hard_budget_reservations_total{{budget=\"openai-daily\",result=\"refused\"}} {refused}\n\
         tollgate_hard_budget_granted_usd{{budget=\"openai-daily\"}} {granted}\n\
         tollgate_hard_budget_settled_usd{{budget=\"openai-daily\"}} {settled}\n\
         tollgate_hard_budget_reserved_usd{{budget=\"openai-daily\"}} {reserved}\n"
    )
}

fn hard_of(b: &Value) -> Value {
    status_envelope("ProviderBudget", "openai-daily", b)["hard"].clone()
}

/// The controller grants a Hard budget to the gateway pod by UID in ConfigMap
/// tollgate-allowances (read back first: 404 on a new namespace), counting the spend seen before
/// any grant; tops it up from its gauges; fills status.hard; one Warning Event when it starts
/// refusing; a failed write is counted and announced once, and its grants count as given.
#[tokio::test]
async fn hard_budget_grants_are_written_restored_first_and_reported() {
    let mut world = World::new(vec![chat()], vec![openai_secret()]);
    world.budgets = vec![hard_budget(None)];
    let expects = vec![
        // Pass 1: read back (none yet), then the first grants: the floor for the pod, and the
        // $1 seen before any grant counted as given. Before the routing config.
        expect("GET", ALLOWANCES_GET, |_| {}).fail(404, "NotFound"),
        expect("PATCH", ALLOWANCES_URI, |b| {
            assert_eq!(b, &allowances_body(&[("spent-before-grants", "1"), (GW_UID, "0.01")]));
        }),
        expect("PATCH", CM_URI, |_| {}),
        expect("PATCH", SECRET_URI, |_| {}),
        expect("PATCH", status_uri("modelroutes", "chat"), |_| {}),
        expect("PATCH", status_uri("providerbudgets", "openai-daily"), |b| {
            assert_eq!(
                hard_of(b),
                json!({"reserved": "0.000000", "settled": "0.000000", "bound": "1.010000", "refused": 0,
                       "grants": [{"gateway": "spent-before-grants", "granted": "1.000000"},
                                  {"gateway": GW_UID, "granted": "0.010000"}]})
            );
        }),
        // Pass 2: the pod used 0.009 of 0.01 (settled + reserved) and refused 3: topped up to
        // the floor again, one Event.
        expect("PATCH", ALLOWANCES_URI, |b| {
            assert_eq!(b, &allowances_body(&[("spent-before-grants", "1"), (GW_UID, "0.019")]));
        }),
        expect("PATCH", status_uri("providerbudgets", "openai-daily"), |b| {
            let h = hard_of(b);
            assert_eq!(
                (&h["reserved"], &h["settled"], &h["bound"], &h["refused"]),
                (&json!("0.001000"), &json!("0.008000"), &json!("1.019000"), &json!(3))
            );
        }),
        expect("POST", EVENTS_URI, |b| {
            assert_eq!((&b["reason"], &b["type"]), (&json!("HardBudgetRefusing"), &json!("Warning")));
            assert_eq!(b["regarding"]["name"], "openai-daily");
            assert!(b["note"].as_str().unwrap().contains("refused 3 requests"), "{b}");
        }),
        // Pass 3: it burnt 0.010 in the interval: headroom target two intervals (0.02). The
        // write is refused: counted, one Warning Event; the grants count as given.
        expect("PATCH", ALLOWANCES_URI, |b| {
            assert_eq!(b, &allowances_body(&[("spent-before-grants", "1"), (GW_UID, "0.038")]));
        })
        .fail(422, "Invalid"),
        expect("PATCH", status_uri("providerbudgets", "openai-daily"), |b| {
            assert_eq!(hard_of(b)["bound"], "1.038000");
        }),
        expect("POST", EVENTS_URI, |b| {
            assert_eq!((&b["reason"], &b["type"]), (&json!("AllowancesNotApplied"), &json!("Warning")));
            assert_eq!(b["regarding"]["name"], "tollgate-allowances");
        }),
        // Pass 4: the same grants written again, and said so.
        expect("PATCH", ALLOWANCES_URI, |b| {
            assert_eq!(b, &allowances_body(&[("spent-before-grants", "1"), (GW_UID, "0.038")]));
        }),
        expect("POST", EVENTS_URI, |b| {
            assert_eq!((&b["reason"], &b["type"]), (&json!("AllowancesApplied"), &json!("Normal")));
        }),
    ];
    let mut h = harness(expects);
    let rev = CHAT_REV;
    h.signals.set(10, 0, 1_000_000_000, rev);
    let r = h.pass(&world, t0(), true).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let pb = h.sent(&format!("PATCH {}", status_uri("providerbudgets", "openai-daily")));
    world.budgets = vec![hard_budget(Some(pb["status"].clone()))];
    world.configmaps = vec![serde_json::from_value(server_echo(&h.sent(&format!("PATCH {CM_URI}")))).unwrap()];
    world.secrets.push(serde_json::from_value(server_echo(&h.sent(&format!("PATCH {SECRET_URI}")))).unwrap());
    let mr = h.sent(&format!("PATCH {}", status_uri("modelroutes", "chat")));
    world.routes = vec![with_status(chat(), &mr["status"])];
    let set = |h: &Harness, text: String| *h.signals.0.lock().unwrap() = text;

    set(&h, hard_signals(1_008_000_000, "0.01", "0.008", "0.001", 3, rev));
    let r = h.pass(&world, later(15), true).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.events_published, 1);
    let pb = h.sent(&format!("PATCH {}", status_uri("providerbudgets", "openai-daily")));
    world.budgets = vec![hard_budget(Some(pb["status"].clone()))];

    set(&h, hard_signals(1_018_000_000, "0.019", "0.018", "0", 3, rev));
    let r = h.pass(&world, later(30), true).await;
    let kinds: Vec<&str> = r.errors.iter().map(|e| e.metric_label()).collect();
    assert_eq!(kinds, ["apply_allowances"]);
    assert!(r.errors[0].to_string().contains("tollgate-allowances"), "{}", r.errors[0]);
    let metrics = h.metrics.encode();
    assert!(
        metrics.contains("tollgate_controller_config_not_applied_total{reason=\"AllowancesNotApplied\"} 1"),
        "{metrics}"
    );
    let pb = h.sent(&format!("PATCH {}", status_uri("providerbudgets", "openai-daily")));
    world.budgets = vec![hard_budget(Some(pb["status"].clone()))];

    let r = h.pass(&world, later(45), true).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    h.finish().await;
}

/// A new controller (restart, new leader) restores the grants before granting: from the
/// ConfigMap it wrote and from status.hard.grants (per pod, the larger), and never grants
/// the sum above the limit. A ConfigMap it cannot read grants nothing that pass.
#[tokio::test]
async fn a_new_controller_restores_grants_before_granting_and_never_exceeds_the_limit() {
    let mut world = World::new(vec![chat()], vec![openai_secret()]);
    world.configmaps = vec![serde_json::from_value(server_echo(&configmap_body(&typed(&chat_doc_by_hand())))).unwrap()];
    let key = base64::engine::general_purpose::STANDARD.encode("sk-test");
    world.secrets.push(serde_json::from_value(server_echo(&secret_body(json!({"openai_api-key": key})))).unwrap());
    // The status (newer) knows a larger grant and a pod since gone; the ConfigMap an older one.
    let status = json!({
        "observedGeneration": 1, "spent": "1.008", "percentUsed": "10.08", "state": "Ok",
        "window": {"start": "2025-05-14T00:00:00Z", "end": "2025-05-15T00:00:00Z"},
        "checkpoints": [{"gateway": GW_UID, "counter": "1.008"}],
        "conditions": [{"type": "Ready", "status": "True", "reason": "WithinBudget", "message": "ok",
                        "lastTransitionTime": "2025-05-14T12:00:00Z", "observedGeneration": 1}],
        "hard": {"reserved": "0", "settled": "8.9", "bound": "9.998", "refused": 3,
                 "grants": [{"gateway": "spent-before-grants", "granted": "1"}, {"gateway": GW_UID, "granted": "8.995"},
                            {"gateway": "uid-gone", "granted": "0.003"}]}
    });
    world.budgets = vec![hard_budget(Some(status))];
    let stored = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "tollgate-allowances", "namespace": NS, "uid": "uid-a", "resourceVersion": "7"},
        "data": {"allowances.json": allowances_doc(&[("spent-before-grants", "1"), (GW_UID, "0.019")])}});
    let expects = vec![
        // Pass 1: the read is refused: no grant at all this pass.
        expect("GET", ALLOWANCES_GET, |_| {}).fail(403, "Forbidden"),
        expect("PATCH", status_uri("modelroutes", "chat"), |_| {}),
        expect("PATCH", status_uri("providerbudgets", "openai-daily"), |b| {
            // Until restored, status.hard stays as stored.
            assert_eq!(hard_of(b)["bound"], "9.998");
        }),
        // Pass 2: restored (max of both), then topped up by only what is left of the limit.
        expect("GET", ALLOWANCES_GET, |_| {}).reply(stored),
        expect("PATCH", ALLOWANCES_URI, |b| {
            assert_eq!(b, &allowances_body(&[("spent-before-grants", "1"), (GW_UID, "8.997"), ("uid-gone", "0.003")]));
        }),
        expect("PATCH", status_uri("providerbudgets", "openai-daily"), |b| {
            let h = hard_of(b);
            assert_eq!((&h["bound"], &h["refused"]), (&json!("10.000000"), &json!(3)));
        }),
    ];
    let mut h = harness(expects);
    // The pod used 8.99 of its 8.995: it needs the floor (0.01), only 0.002 is left.
    *h.signals.0.lock().unwrap() = hard_signals(1_008_000_000, "8.995", "8.99", "0", 3, CHAT_REV);
    let r = h.pass(&world, later(30), true).await;
    let kinds: Vec<&str> = r.errors.iter().map(|e| e.metric_label()).collect();
    assert_eq!(kinds, ["read_allowances"]);
    let pb = h.sent(&format!("PATCH {}", status_uri("providerbudgets", "openai-daily")));
    world.budgets = vec![hard_budget(Some(pb["status"].clone()))];
    let mr = h.sent(&format!("PATCH {}", status_uri("modelroutes", "chat")));
    world.routes = vec![with_status(chat(), &mr["status"])];
    let r = h.pass(&world, later(45), true).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let sent = h.sent(&format!("PATCH {ALLOWANCES_URI}"));
    let written = tollgate::config::allowances::Allowances::from_json(
        sent["data"]["allowances.json"].as_str().unwrap().as_bytes(),
    )
    .expect("a valid document: grants within the limit");
    let sum: tollgate::policy::Money =
        written.budgets[0].grants.values().map(|g| g.parse::<tollgate::policy::Money>().unwrap()).sum();
    assert_eq!(sum, "10".parse().unwrap());
    h.finish().await;
}

/// A gateway that publishes its instance id (`--instance-per-process`) is granted by it, not
/// by its pod UID.
#[tokio::test]
async fn a_gateway_is_granted_by_the_instance_id_it_publishes() {
    let mut world = World::new(vec![chat()], vec![openai_secret()]);
    world.budgets = vec![hard_budget(None)];
    let instance = format!("{GW_UID}.0a1b2c3d");
    let expected = allowances_body(&[(instance.as_str(), "0.01")]);
    let expects = vec![
        expect("GET", ALLOWANCES_GET, |_| {}).fail(404, "NotFound"),
        expect("PATCH", ALLOWANCES_URI, move |b| assert_eq!(b, &expected)),
        expect("PATCH", CM_URI, |_| {}),
        expect("PATCH", SECRET_URI, |_| {}),
        expect("PATCH", status_uri("modelroutes", "chat"), |_| {}),
        expect("PATCH", status_uri("providerbudgets", "openai-daily"), |b| {
            assert_eq!(hard_of(b)["grants"], json!([{"gateway": format!("{GW_UID}.0a1b2c3d"), "granted": "0.010000"}]));
        }),
    ];
    let mut h = harness(expects);
    let rev = CHAT_REV;
    *h.signals.0.lock().unwrap() = format!(
        "tollgate_config_revision_info{{revision=\"{rev}\"}} 1\n\
         tollgate_hard_budget_instance_info{{instance=\"{instance}\"}} 1\n"
    );
    let r = h.pass(&world, t0(), true).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    h.finish().await;
}

// ---- a split config's shards (issue 12) -------------------------------------------------------

const SHARD_COUNT: usize = 3;

fn shard_name(i: usize) -> String {
    format!("tollgate-gateway-shard-{i}")
}

fn shard_uri(i: usize) -> String {
    format!("/api/v1/namespaces/team-a/configmaps/{}?&force=true&fieldManager=tollgate-controller", shard_name(i))
}

fn shard_get(i: usize) -> String {
    format!("/api/v1/namespaces/team-a/configmaps/{}", shard_name(i))
}

/// `n` characters of [0-9A-Za-z] that differ per `seed`: deterministic, hardly compressible.
fn noise(seed: u64, n: usize) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut x = seed.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ALPHABET[(x % 62) as usize] as char
        })
        .collect()
}

/// A route of 32 keyless HTTP backends whose base URLs carry 2,000 characters of noise: about
/// 50 KB gzip-compressed, so a few dozen are over one ConfigMap.
fn big_route(i: usize) -> Value {
    let backends: Vec<Value> = (0..32)
        .map(|b| {
            json!({"name": format!("b{b}"), "provider": format!("provider-{b}"), "model": format!("m{b}"),
                   "endpoint": {"baseUrl": format!("https://example.com/{}", noise((i * 32 + b) as u64, 2_000))},
                   "pricing": {"input": "1", "output": "1"}})
        })
        .collect();
    route_json(&format!("r{i:03}"), json!(backends), json!({}))
}

/// A namespace whose document is split in [`SHARD_COUNT`] shards: its routes, document and
/// stored form.
fn split_world() -> (World, GatewayConfig, tollgate::config::shard::Sharded) {
    let world =
        World { routes: (0..44).map(big_route).collect(), budgets: vec![], secrets: vec![], configmaps: vec![] };
    let doc = expected_doc_with(&world.routes, &[]);
    let Ok(tollgate::config::Stored::Sharded(sharded)) = tollgate::config::payload::store(&doc, "tollgate-gateway")
    else {
        panic!("the test document must be split")
    };
    assert_eq!(sharded.shards.len(), SHARD_COUNT, "the test document is split in {SHARD_COUNT} shards");
    (world, doc, sharded)
}

/// The apply body of shard `i` (1-based) of `sharded`, written out as the gateway expects it.
fn shard_body(sharded: &tollgate::config::shard::Sharded, i: usize, rev: &str) -> Value {
    let shard = &sharded.shards[i - 1];
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": shard_name(i), "namespace": NS, "labels": labels("gateway-config"),
                     "annotations": {"tollgate.dev/config-revision": rev, "tollgate.dev/config-shard-of": "tollgate-gateway"}},
        "binaryData": {format!("shard-{i}.json.gz"): base64::engine::general_purpose::STANDARD.encode(&shard.gz)}
    })
}

/// The first controller writes the split config (every shard, then the index, the empty
/// credentials Secret, every route's status); the world as the server then holds it, and the
/// shard objects it holds, by index (1-based).
async fn written_split_world() -> (World, GatewayConfig, tollgate::config::shard::Sharded, Vec<Value>) {
    let (mut world, doc, sharded) = split_world();
    let rev = doc.revision.clone();
    let mut expects: Vec<Expect> = (1..=SHARD_COUNT)
        .map(|i| {
            let body = shard_body(&sharded, i, &rev);
            expect("PATCH", shard_uri(i), move |b| assert_eq!(b, &body))
        })
        .collect();
    let index = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "tollgate-gateway", "namespace": NS, "labels": labels("gateway-config"),
                     "annotations": {"tollgate.dev/config-revision": rev}},
        "data": {"config.index.json": sharded.index}
    });
    expects.push(expect("PATCH", CM_URI, move |b| assert_eq!(b, &index)));
    expects.push(expect("PATCH", SECRET_URI, |b| assert_eq!(b["data"], json!({}))));
    for r in &world.routes {
        let name = r["metadata"]["name"].as_str().unwrap().to_string();
        expects.push(expect("PATCH", status_uri("modelroutes", &name), |_| {}));
    }
    let mut h = harness(expects);
    h.signals.set(0, 0, 0, &rev);
    let r = h.pass(&world, t0(), true).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!((r.configs_applied.as_slice(), r.shards_repaired.len()), ([NS.to_string()].as_slice(), 0));
    let shards: Vec<Value> =
        (1..=SHARD_COUNT).map(|i| server_echo(&h.sent(&format!("PATCH {}", shard_uri(i))))).collect();
    apply_writes(&mut world, &h);
    assert_eq!(world.configmaps.len(), 1, "the store holds the index only (shards are not watched)");
    h.finish().await;
    (world, doc, sharded, shards)
}

/// What a real server answers to a metadata-only GET of `obj`.
fn metadata_of(obj: &Value) -> Value {
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": obj["metadata"]})
}

/// A restarted controller (no memory of the shards) on a signal pass reads every shard back in
/// full; shard 2 is gone (404): it is applied again, alone, with the bytes the index names, and
/// nothing else is written (not the index, no status). A pass on a watch event reads nothing;
/// the next signal pass reads metadata only, every shard's resourceVersion being the one it
/// knows.
#[tokio::test]
async fn a_deleted_shard_is_applied_again_alone() {
    let (world, doc, sharded, shards) = written_split_world().await;
    let rev = doc.revision.clone();
    let repaired = shard_body(&sharded, 2, &rev);
    let mut expects = vec![
        expect("GET", shard_get(1), |_| {}).metadata_only(false).reply(shards[0].clone()),
        expect("GET", shard_get(2), |_| {}).metadata_only(false).fail(404, "NotFound"),
        expect("PATCH", shard_uri(2), move |b| assert_eq!(b, &repaired)),
        expect("GET", shard_get(3), |_| {}).metadata_only(false).reply(shards[2].clone()),
    ];
    // The next signal pass: metadata only (shard 2's version is the one its apply returned).
    for (i, shard) in shards.iter().enumerate() {
        expects.push(expect("GET", shard_get(i + 1), |_| {}).metadata_only(true).reply(metadata_of(shard)));
    }
    let mut h = harness(expects);
    h.signals.set(0, 0, 0, &rev);
    let r = h.pass(&world, later(15), true).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.shards_repaired, [format!("{NS}/{}", shard_name(2))]);
    assert!(r.configs_applied.is_empty() && r.statuses_written.is_empty() && r.events_published == 0, "{r:?}");
    let metrics = h.metrics.encode();
    assert!(metrics.contains("tollgate_controller_config_shard_repairs_total{reason=\"Missing\"} 1"), "{metrics}");

    // A watch event: no shard is read.
    let r = h.pass(&world, later(16), false).await;
    assert!(r.errors.is_empty() && r.shards_repaired.is_empty(), "{r:?}");

    let r = h.pass(&world, later(30), true).await;
    assert!(r.errors.is_empty() && r.shards_repaired.is_empty(), "{r:?}");
    assert!(r.configs_applied.is_empty() && r.statuses_written.is_empty(), "{r:?}");
    h.finish().await;
}

/// Shards that hold what the index names are not written. A shard edited by hand (other
/// bytes under its key, or another revision in its annotation) is applied again; a shard whose
/// resourceVersion moved but whose content did not (a label added) is read in full once and
/// left alone.
#[tokio::test]
async fn matching_shards_are_not_written_and_edited_ones_are_restored() {
    let (world, doc, sharded, shards) = written_split_world().await;
    let rev = doc.revision.clone();
    let mut edited_bytes = shards[0].clone();
    edited_bytes["binaryData"]["shard-1.json.gz"] = json!(base64::engine::general_purpose::STANDARD.encode(b"edited"));
    edited_bytes["metadata"]["resourceVersion"] = json!("101");
    let mut edited_revision = shards[2].clone();
    edited_revision["metadata"]["annotations"]["tollgate.dev/config-revision"] = json!("sha256:0000000000000000");
    edited_revision["metadata"]["resourceVersion"] = json!("102");
    let mut relabelled = shards[1].clone();
    relabelled["metadata"]["labels"]["team"] = json!("a");
    relabelled["metadata"]["resourceVersion"] = json!("103");
    let (body1, body3) = (shard_body(&sharded, 1, &rev), shard_body(&sharded, 3, &rev));
    let mut expects: Vec<Expect> = shards
        .iter()
        .enumerate()
        .map(|(i, s)| expect("GET", shard_get(i + 1), |_| {}).metadata_only(false).reply(s.clone()))
        .collect();
    expects.extend([
        // All three as known: metadata only, versions moved for shards 1 and 3 (edited) and 2
        // (relabelled), so each is read in full.
        expect("GET", shard_get(1), |_| {}).metadata_only(true).reply(metadata_of(&edited_bytes)),
        expect("GET", shard_get(1), |_| {}).metadata_only(false).reply(edited_bytes),
        expect("PATCH", shard_uri(1), move |b| assert_eq!(b, &body1)),
        expect("GET", shard_get(2), |_| {}).metadata_only(true).reply(metadata_of(&relabelled)),
        expect("GET", shard_get(2), |_| {}).metadata_only(false).reply(relabelled.clone()),
        expect("GET", shard_get(3), |_| {}).metadata_only(true).reply(metadata_of(&edited_revision)),
        expect("GET", shard_get(3), |_| {}).metadata_only(false).reply(edited_revision),
        expect("PATCH", shard_uri(3), move |b| assert_eq!(b, &body3)),
        // And then: shard 2 is known by its new version.
        expect("GET", shard_get(1), |_| {}).metadata_only(true).reply(metadata_of(&shards[0])),
        expect("GET", shard_get(2), |_| {}).metadata_only(true).reply(metadata_of(&relabelled)),
        expect("GET", shard_get(3), |_| {}).metadata_only(true).reply(metadata_of(&shards[2])),
    ]);
    let mut h = harness(expects);
    h.signals.set(0, 0, 0, &rev);
    let r = h.pass(&world, later(15), true).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(r.shards_repaired.is_empty() && r.configs_applied.is_empty() && r.statuses_written.is_empty(), "{r:?}");

    let r = h.pass(&world, later(30), true).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.shards_repaired, [format!("{NS}/{}", shard_name(1)), format!("{NS}/{}", shard_name(3))]);
    let metrics = h.metrics.encode();
    assert!(metrics.contains("tollgate_controller_config_shard_repairs_total{reason=\"Changed\"} 2"), "{metrics}");
    common::prom::assert_no_series(
        &metrics,
        "tollgate_controller_config_shard_repairs_total",
        &[("reason", "Missing")],
    );

    let r = h.pass(&world, later(45), true).await;
    assert!(r.errors.is_empty() && r.shards_repaired.is_empty(), "{r:?}");
    h.finish().await;
}

/// The RBAC of an older chart (no `get` on the shard names): the GET is refused (403), the
/// pass goes on without error, the other shards are not tried, one warning is logged (not one
/// per pass), and the check is tried again on the next signal pass.
#[tokio::test]
async fn a_forbidden_shard_get_skips_the_check_with_one_warning() {
    let (world, doc, _, _) = written_split_world().await;
    let logs = LogBuffer::default();
    let _log = tracing::subscriber::set_default(
        tracing_subscriber::fmt().with_writer(logs.clone()).with_ansi(false).without_time().finish(),
    );
    let expects = vec![
        expect("GET", shard_get(1), |_| {}).fail(403, "Forbidden"),
        expect("GET", shard_get(1), |_| {}).fail(403, "Forbidden"),
    ];
    let mut h = harness(expects);
    h.signals.set(0, 0, 0, &doc.revision);
    for at in [15, 30] {
        let r = h.pass(&world, later(at), true).await;
        assert!(r.errors.is_empty() && r.shards_repaired.is_empty(), "{:?}", r.errors);
    }
    h.finish().await;
    let text = logs.text();
    let warnings: Vec<&str> = text.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "{text}");
    assert!(
        warnings[0].contains("lacks get on the shard ConfigMaps") && warnings[0].contains(&shard_name(1)),
        "{text}"
    );
}

/// Applying a missing shard again is refused (422): the namespace's routes say
/// `ConfigNotApplied` with one Warning Event, as for any config write that failed; the retry
/// pass that follows (a non-signal pass) checks the shards again instead of calling the config
/// applied, repairs the shard, and `Ready` comes back with one `ConfigApplied` Event.
#[tokio::test]
async fn a_failed_repair_is_reported_and_retried_by_the_next_pass() {
    let (world, doc, sharded, shards) = written_split_world().await;
    let rev = doc.revision.clone();
    let names: Vec<String> = world.routes.iter().map(|r| r["metadata"]["name"].as_str().unwrap().to_string()).collect();
    let repaired = shard_body(&sharded, 1, &rev);
    let world_index = world.configmaps.clone();
    let mut expects = vec![
        expect("GET", shard_get(1), |_| {}).fail(404, "NotFound"),
        expect("PATCH", shard_uri(1), |_| {}).fail(422, "Invalid"),
    ];
    for name in &names {
        expects.push(expect("PATCH", status_uri("modelroutes", name), |b| {
            let s = b["status"].clone();
            assert_eq!(
                (condition(&s, "Ready")["status"].as_str(), condition(&s, "Ready")["reason"].as_str()),
                (Some("False"), Some("ConfigNotApplied")),
                "{s:#}"
            );
            assert!(condition(&s, "Ready")["message"].as_str().unwrap().contains("tollgate-gateway-shard-1"), "{s:#}");
        }));
    }
    expects.push(expect("POST", EVENTS_URI, |b| assert_eq!(b["reason"], "ConfigNotApplied")));
    // The retry pass: shard 1 checked (still missing) and written; the rest as they were.
    expects.push(expect("GET", shard_get(1), |_| {}).fail(404, "NotFound"));
    expects.push(expect("PATCH", shard_uri(1), move |b| assert_eq!(b, &repaired)));
    expects.push(expect("GET", shard_get(2), |_| {}).metadata_only(false).reply(shards[1].clone()));
    expects.push(expect("GET", shard_get(3), |_| {}).metadata_only(false).reply(shards[2].clone()));
    for name in &names {
        expects.push(expect("PATCH", status_uri("modelroutes", name), |b| {
            assert_eq!(condition(&b["status"], "Ready")["status"], "True", "{b:#}");
        }));
    }
    expects.push(expect("POST", EVENTS_URI, |b| assert_eq!(b["reason"], "ConfigApplied")));
    let mut h = harness(expects);
    h.signals.set(0, 0, 0, &rev);
    let r = h.pass(&world, later(15), true).await;
    let errors: Vec<String> = r.errors.iter().map(|e| format!("{} {e}", e.metric_label())).collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("apply_configmap ") && errors[0].contains("team-a/tollgate-gateway-shard-1"),
        "{errors:?}"
    );
    assert!(r.shards_repaired.is_empty(), "{r:?}");
    // The statuses as written; the store still holds the index only (the log holds the
    // refused shard apply too, which the server did not keep).
    let (mut world, index) = (world, world_index);
    apply_writes(&mut world, &h);
    world.configmaps = index;

    let r = h.pass(&world, later(16), false).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.shards_repaired, [format!("{NS}/{}", shard_name(1))]);
    assert_eq!((r.statuses_written.len(), r.events_published), (names.len(), 1), "{r:?}");
    h.finish().await;
}
