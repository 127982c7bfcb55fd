//! End to end against a real API server: whatever cluster `KUBECONFIG` names (the shared
//! kube-apiserver v1.20 of `.ci/run`, kind, k3d). Skips, saying so, when `KUBECONFIG` is not set
//! (a failure where `TOLLGATE_CI_PROVIDES` lists `kube`: tests/common/skip.rs).
//!
//! The suite installs the CRDs (created through the API, as `kubectl apply --validate=false`
//! would), starts the `tollgate controller` process, applies the example manifests into a fresh
//! namespace, registers a gateway Pod (status set through the /status subresource: Ready, podIP
//! 127.0.0.1) whose `metrics` port is a metrics server run by this test, then drives spend over a
//! budget threshold and an error rate over `trip`, and checks that each rotation shows in the
//! ConfigMap, the statuses and the Events within one signal interval. Finally it kills the
//! controller (SIGKILL) mid-window, adds spend while none runs, starts a new one and checks that
//! the window's spend is exact: neither lost nor counted twice.
//!
//! Beside it: a `--from-configmap` gateway given a document of a newer schema version (a
//! controller rolled out ahead of its gateways) refuses it clearly and keeps the last good one.

#[path = "common/cluster.rs"]
mod cluster;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster::{
    Controller, client_or_skip, create, events, events_of, eventually, fresh_namespace, http_get, install_crds,
    yaml_docs,
};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tollgate::api::{ModelRoute, ProviderBudget};
use tollgate::config::GatewayConfig;
use tollgate::kube_source::{self as source, SourceUpdate};

/// Held while a test looks at or installs the CRDs: the first test checks what a cluster without
/// them does, which another test installing them at the same time would spoil.
static CRDS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The controller's `--signal-interval` in this suite.
const INTERVAL: Duration = Duration::from_secs(2);
/// What "within one signal interval" may add: a pass, a watch event, an apply.
const SLACK: Duration = Duration::from_secs(3);

// ---- the fake gateway's /metrics --------------------------------------------------------------

#[derive(Clone, Copy, Default)]
struct Counters {
    ok: u64,
    errors: u64,
    nanousd: u64,
}

/// The example route `chat`'s backends: (backend, provider, upstream model).
const CHAT: [(&str, &str, &str); 2] =
    [("openai-mini", "openai", "gpt-5-mini"), ("deepseek", "deepseek", "deepseek-chat")];

#[derive(Clone, Default)]
struct Gauges {
    /// backend of route chat → (ok, upstream_error, nano-USD)
    series: BTreeMap<&'static str, Counters>,
    revision: String,
}

#[derive(Clone, Default)]
struct FakeGateway(Arc<Mutex<Gauges>>);

impl FakeGateway {
    fn set(&self, backend: &'static str, ok: u64, errors: u64, nanousd: u64) {
        self.0.lock().unwrap().series.insert(backend, Counters { ok, errors, nanousd });
    }

    fn serve_revision(&self, rev: &str) {
        self.0.lock().unwrap().revision = rev.to_string();
    }

    fn text(&self) -> String {
        let g = self.0.lock().unwrap();
        let mut out = String::from("# TYPE tollgate_requests counter\n");
        let labels = |b: &str| {
            let (_, p, m) = CHAT.iter().find(|c| c.0 == b).copied().unwrap_or_default();
            format!("route=\"chat\",backend=\"{b}\",provider=\"{p}\",model=\"{m}\"")
        };
        for (b, c) in &g.series {
            let l = labels(b);
            out.push_str(&format!("tollgate_requests_total{{{l},outcome=\"ok\"}} {}\n", c.ok));
            out.push_str(&format!("tollgate_requests_total{{{l},outcome=\"upstream_error\"}} {}\n", c.errors));
        }
        out.push_str("# TYPE tollgate_cost_nanousd counter\n");
        for (b, c) in &g.series {
            out.push_str(&format!("tollgate_cost_nanousd_total{{{}}} {}\n", labels(b), c.nanousd));
        }
        if !g.revision.is_empty() {
            out.push_str(&format!(
                "# TYPE tollgate_config_revision info\ntollgate_config_revision_info{{revision=\"{}\"}} 1\n",
                g.revision
            ));
        }
        out.push_str("# EOF\n");
        out
    }

    async fn start(&self) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let me = self.clone();
        let app = axum::Router::new().route("/metrics", axum::routing::get(move || async move { me.text() }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        port
    }
}

/// Kills the child when dropped (also when the test fails).
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---- cluster helpers ---------------------------------------------------------------------------

async fn config(client: &Client, ns: &str) -> Option<GatewayConfig> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns).get_opt("tollgate-gateway").await.ok()??;
    GatewayConfig::from_json(cm.data?.get("config.json")?.as_bytes()).ok()
}

async fn route(client: &Client, ns: &str, name: &str) -> ModelRoute {
    Api::<ModelRoute>::namespaced(client.clone(), ns).get(name).await.unwrap()
}

async fn budget(client: &Client, ns: &str, name: &str) -> ProviderBudget {
    Api::<ProviderBudget>::namespaced(client.clone(), ns).get(name).await.unwrap()
}

fn backend_state(doc: &GatewayConfig, route: &str, backend: &str) -> String {
    doc.route(route)
        .and_then(|r| r.backends.iter().find(|b| b.name == backend))
        .map(|b| format!("{:?}", b.state))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_end_to_end() {
    let suite = Instant::now();
    let Some(client) = client_or_skip("e2e_cluster").await else { return };
    let crds_lock = CRDS.lock().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    if crds.get_opt("modelroutes.tollgate.dev").await.unwrap().is_none() {
        // A fresh cluster: the controller must refuse to start, saying why.
        let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["controller", "--leader-election=false", "--listen", "127.0.0.1:0"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        let line = err.lines().find(|l| l.starts_with("error: ")).unwrap_or_default();
        assert!(line.contains("modelroutes.tollgate.dev is not installed"), "{err}");
        println!("without the CRDs: exit {:?}, {line}", out.status.code());
    }
    install_crds(&client).await;
    drop(crds_lock);

    // With the default ServiceAccount Pods expect (no controller-manager on the test server).
    let ns = fresh_namespace(&client, "tollgate-e2e").await;

    // The referenced Secrets (opted in with the provider-key label), then the example manifests (chat's ejection lengthened so that it
    // outlasts the restart below).
    for name in ["openai", "deepseek", "anthropic", "gemini"] {
        let s = json!({"metadata": {"name": name, "labels": {"tollgate.dev/provider-key": "true"}},
                       "stringData": {"api-key": format!("sk-{name}-e2e")}});
        create::<Secret>(&client, &ns, s).await;
    }
    let mut controller = Controller::start(&ns, "e2e-controller-1", &[]);
    for mut doc in yaml_docs("examples/routes.yaml") {
        if doc["metadata"]["name"] == "chat" {
            doc["spec"]["health"]["ejection"]["base"] = json!("10m");
        }
        create::<ModelRoute>(&client, &ns, doc).await;
    }
    for doc in yaml_docs("examples/budgets.yaml") {
        create::<ProviderBudget>(&client, &ns, doc).await;
    }

    // ConfigMap, credentials, statuses.
    let (doc, took) = eventually("the gateway ConfigMap with both example routes", Duration::from_secs(30), || {
        let client = client.clone();
        let ns = ns.clone();
        async move { config(&client, &ns).await.filter(|d| d.route("chat").is_some() && d.route("reasoning").is_some()) }
    })
    .await;
    println!("config rendered {took:?} after the manifests: revision {}", doc.revision);
    assert_eq!(backend_state(&doc, "chat", "openai-mini"), "Active");
    let (keys, _) = eventually("the credentials Secret", Duration::from_secs(10), || {
        let (client, ns) = (client.clone(), ns.clone());
        async move {
            let s = Api::<Secret>::namespaced(client, &ns).get_opt("tollgate-credentials").await.ok()??;
            Some(s.data.unwrap_or_default().keys().cloned().collect::<Vec<String>>())
        }
    })
    .await;
    assert_eq!(keys, ["anthropic_api-key", "deepseek_api-key", "gemini_api-key", "openai_api-key"]);
    let (chat, _) = eventually("ModelRoute chat Ready", Duration::from_secs(20), || {
        let (client, ns) = (client.clone(), ns.clone());
        async move {
            let r = route(&client, &ns, "chat").await;
            let st = r.status.clone()?;
            (st.observed_generation == Some(1)
                && st.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            .then_some(r)
        }
    })
    .await;
    println!(
        "chat status: state {:?}, active {:?}",
        chat.status.as_ref().unwrap().state,
        chat.status.as_ref().unwrap().active
    );

    // The controller's own endpoints.
    let (code, text) = http_get(controller.health, "/readyz").await.unwrap();
    assert_eq!((code, text.trim()), (200, "leading"));
    let (code, text) = http_get(controller.health, "/metrics").await.unwrap();
    assert!(code == 200 && text.contains("tollgate_controller_reconcile_duration_seconds"), "{text}");

    // A gateway pod whose metrics port is this test's metrics server.
    let gateway = FakeGateway::default();
    gateway.set("openai-mini", 0, 0, 0);
    gateway.set("deepseek", 0, 0, 0);
    gateway.serve_revision(&doc.revision);
    let port = gateway.start().await;
    let pod = create::<Pod>(
        &client,
        &ns,
        json!({
            "metadata": {"name": "gateway-0",
                         "labels": {"app.kubernetes.io/component": "gateway", "app.kubernetes.io/name": "tollgate"}},
            "spec": {"containers": [{"name": "gateway", "image": "tollgate:e2e",
                                     "ports": [{"name": "metrics", "containerPort": port}]}]}
        }),
    )
    .await;
    Api::<Pod>::namespaced(client.clone(), &ns)
        .patch_status(
            "gateway-0",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
                "conditions": [{"type": "Ready", "status": "True"}]}})),
        )
        .await
        .unwrap();
    let gw_uid = pod.uid().unwrap();
    let (_, took) = eventually("gateways in sync in chat's status", Duration::from_secs(20), || {
        let (client, ns) = (client.clone(), ns.clone());
        async move {
            let g = route(&client, &ns, "chat").await.status?.gateways?;
            (g.in_sync == 1 && g.total == 1).then_some(())
        }
    })
    .await;
    println!("gateway pod {gw_uid} scraped and in sync after {took:?}");

    // What `tollgate gateway --from-configmap NS/tollgate-gateway` follows through the API.
    let seen: Arc<Mutex<Vec<(Instant, SourceUpdate)>>> = Arc::default();
    {
        let seen = seen.clone();
        let stream = source::updates(client.clone(), &ns, "tollgate-gateway", "tollgate-credentials");
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(u) = stream.next().await {
                seen.lock().unwrap().push((Instant::now(), u));
            }
        });
    }
    let source_revision = |seen: &Arc<Mutex<Vec<(Instant, SourceUpdate)>>>| {
        seen.lock().unwrap().iter().rev().find_map(|(at, u)| match u {
            SourceUpdate::Config(c) => Some((*at, c.revision.clone())),
            _ => None,
        })
    };
    let ((_, rev), _) = eventually("the config source's first document", Duration::from_secs(10), || {
        let seen = seen.clone();
        async move { source_revision(&seen) }
    })
    .await;
    assert_eq!(rev, doc.revision);
    assert!(seen.lock().unwrap().iter().any(|(_, u)| matches!(u, SourceUpdate::Credentials(c) if c.len() == 4)));

    // And the real thing: a `tollgate gateway --from-configmap` process following the API.
    let gw_api = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let gw_metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let creds = std::env::temp_dir().join(format!("tollgate-e2e-creds-{ns}"));
    let mut from_api = ChildGuard(
        Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["gateway", "--from-configmap", &format!("{ns}/tollgate-gateway"), "--credentials-dir"])
            .arg(&creds)
            .args(["--listen", &format!("127.0.0.1:{gw_api}"), "--metrics-listen", &format!("127.0.0.1:{gw_metrics}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let revision_line = |rev: &str| format!("tollgate_config_revision_info{{revision=\"{rev}\"}} 1");
    let (_, took) = eventually("gateway --from-configmap serves the document", Duration::from_secs(15), || {
        let want = revision_line(&doc.revision);
        async move { http_get(gw_metrics, "/metrics").await.filter(|(c, t)| *c == 200 && t.contains(&want)) }
    })
    .await;
    assert_eq!(http_get(gw_api, "/readyz").await.map(|(c, _)| c), Some(200));
    let mut files: Vec<String> =
        std::fs::read_dir(&creds).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    files.sort();
    assert_eq!(files.len(), 4, "one key file per referenced Secret key: {files:?}");
    println!("gateway --from-configmap process ready with revision {} after {took:?}", doc.revision);

    // Spend over a threshold: deepseek-daily (limit 200, Deprioritize at 95%) → 196 USD.
    gateway.set("deepseek", 100, 0, 196_000_000_000);
    let (doc, took) = eventually("deepseek deprioritized in the ConfigMap", INTERVAL + SLACK, || {
        let (client, ns) = (client.clone(), ns.clone());
        async move { config(&client, &ns).await.filter(|d| backend_state(d, "chat", "deepseek") == "OverBudget") }
    })
    .await;
    println!("spend rotation in the ConfigMap after {took:?} (signal interval {INTERVAL:?})");
    let cm_seen = Instant::now();
    let ((at, _), _) = eventually("the config source follows the rotation", Duration::from_secs(5), || {
        let (seen, rev) = (seen.clone(), doc.revision.clone());
        async move { source_revision(&seen).filter(|(_, r)| *r == rev) }
    })
    .await;
    println!(
        "the API config source (gateway --from-configmap) had the new revision {:?} after this test saw the ConfigMap (0 = already before its 100 ms poll)",
        at.saturating_duration_since(cm_seen)
    );
    let (_, took) = eventually("gateway --from-configmap follows the rotation", Duration::from_secs(5), || {
        let want = revision_line(&doc.revision);
        async move { http_get(gw_metrics, "/metrics").await.filter(|(c, t)| *c == 200 && t.contains(&want)) }
    })
    .await;
    println!("gateway --from-configmap process serves the rotated revision {:?} after the ConfigMap changed", took);
    from_api.0.kill().ok();
    std::fs::remove_dir_all(&creds).ok();
    let deepseek = doc.route("chat").unwrap().backends.iter().find(|b| b.name == "deepseek").unwrap().clone();
    assert_eq!((deepseek.tier, deepseek.serving), (2, true), "moved to the last tier, still a fallback");
    gateway.serve_revision(&doc.revision);
    let (b, _) = eventually("deepseek-daily Deprioritized with the spend", SLACK, || {
        let (client, ns) = (client.clone(), ns.clone());
        async move {
            let b = budget(&client, &ns, "deepseek-daily").await;
            let st = b.status.clone()?;
            (st.state == Some(tollgate::api::BudgetState::Deprioritized)).then_some(b)
        }
    })
    .await;
    let st = b.status.unwrap();
    println!(
        "ProviderBudget deepseek-daily: spent {:?} percentUsed {:?} state {:?} checkpoints {:?}",
        st.spent, st.percent_used, st.state, st.checkpoints
    );
    assert_eq!(st.spent.as_deref(), Some("196.000000"));
    assert_eq!(st.checkpoints.len(), 1);
    assert_eq!((st.checkpoints[0].gateway.as_str(), st.checkpoints[0].counter.as_str()), (gw_uid.as_str(), "196"));
    let chat = route(&client, &ns, "chat").await.status.unwrap();
    let rot = chat.last_rotation.clone().unwrap();
    println!("ModelRoute chat: lastRotation {} -> {} ({})", rot.from, rot.to, rot.reason);
    assert_eq!(rot.to, "openai-mini=100");
    let (ev, _) = eventually("BudgetDeprioritized and RouteRotated Events", SLACK, || {
        let (client, ns) = (client.clone(), ns.clone());
        async move {
            let ev = events(&client, &ns).await;
            (!events_of(&ev, "BudgetDeprioritized", "deepseek-daily").is_empty()
                && !events_of(&ev, "RouteRotated", "chat").is_empty())
            .then_some(ev)
        }
    })
    .await;
    for e in ev.iter().filter(|e| e.reason.as_deref() != Some("NoRouteUsesProvider")) {
        println!(
            "Event {} {} on {}: {}",
            e.type_.as_deref().unwrap_or(""),
            e.reason.as_deref().unwrap_or(""),
            e.regarding.as_ref().and_then(|r| r.name.as_deref()).unwrap_or(""),
            e.note.as_deref().unwrap_or("")
        );
        assert_eq!(e.reporting_instance.as_deref(), Some("e2e-controller-1"));
    }

    // Error rate over trip: openai-mini 30 requests, 10 upstream errors (33% ≥ 20%).
    gateway.set("openai-mini", 20, 10, 0);
    let (doc, took) = eventually("openai-mini ejected in the ConfigMap", INTERVAL + SLACK, || {
        let (client, ns) = (client.clone(), ns.clone());
        async move { config(&client, &ns).await.filter(|d| backend_state(d, "chat", "openai-mini") == "Ejected") }
    })
    .await;
    println!("error-rate rotation in the ConfigMap after {took:?}");
    gateway.serve_revision(&doc.revision);
    let (chat, _) = eventually("chat status shows the ejection", SLACK, || {
        let (client, ns) = (client.clone(), ns.clone());
        async move {
            let st = route(&client, &ns, "chat").await.status?;
            let b = st.backends.iter().find(|b| b.name == "openai-mini")?;
            (b.state == tollgate::api::BackendState::Ejected).then_some(st)
        }
    })
    .await;
    let b = chat.backends.iter().find(|b| b.name == "openai-mini").unwrap();
    println!(
        "ModelRoute chat: openai-mini {:?} errorRate {:?} requests {:?} until {:?}; lastRotation -> {}",
        b.state,
        b.error_rate,
        b.requests,
        b.ejected_until.as_ref().map(|t| t.0.to_string()),
        chat.last_rotation.as_ref().unwrap().to
    );
    assert_eq!(b.error_rate.as_deref(), Some("0.333333"));
    assert_eq!(chat.last_rotation.as_ref().unwrap().to, "claude-haiku=100");
    eventually("a BackendEjected Event", SLACK, || {
        let (client, ns) = (client.clone(), ns.clone());
        async move { (!events_of(&events(&client, &ns).await, "BackendEjected", "chat").is_empty()).then_some(()) }
    })
    .await;

    // The pass publishes its Events one after another (BackendEjected before RouteRotated), so
    // the second rotation's Event may land a moment after the ejection's: wait for it.
    let (rotations, _) = eventually("a RouteRotated Event for each of the two rotations", SLACK, || {
        let (client, ns) = (client.clone(), ns.clone());
        async move {
            let notes = events(&client, &ns)
                .await
                .into_iter()
                .filter(|e| e.reason.as_deref() == Some("RouteRotated"))
                .filter_map(|e| e.note)
                .collect::<Vec<_>>();
            (notes.len() >= 2).then_some(notes)
        }
    })
    .await;
    assert_eq!(rotations.len(), 2, "one Event per rotation, each with its own evidence: {rotations:?}");

    // Restart mid-window: SIGKILL (no goodbye), 2 USD more spend while no controller runs.
    controller.proc.kill();
    gateway.set("deepseek", 110, 0, 198_000_000_000);
    let restarted = Instant::now();
    let controller2 = Controller::start(&ns, "e2e-controller-2", &[]);
    let (spent, took) =
        eventually("the new controller counts exactly the spend made while none ran", Duration::from_secs(30), || {
            let (client, ns) = (client.clone(), ns.clone());
            async move {
                let st = budget(&client, &ns, "deepseek-daily").await.status?;
                (st.spent.as_deref() != Some("196.000000")).then_some(st.spent)
            }
        })
        .await;
    println!("after the restart ({took:?}, lease takeover included): deepseek-daily spent {spent:?}");
    assert_eq!(spent.as_deref(), Some("198.000000"), "spend lost or counted twice across the restart");
    gateway.set("deepseek", 120, 0, 199_500_000_000);
    let (spent, _) = eventually("spend after the restart", INTERVAL + SLACK, || {
        let (client, ns) = (client.clone(), ns.clone());
        async move {
            let st = budget(&client, &ns, "deepseek-daily").await.status?;
            (st.spent.as_deref() != Some("198.000000")).then_some(st.spent)
        }
    })
    .await;
    assert_eq!(spent.as_deref(), Some("199.500000"));
    let b = budget(&client, &ns, "deepseek-daily").await.status.unwrap();
    assert_eq!(b.checkpoints[0].counter, "199.5");
    // The decisions survived the restart: no new escalation, the ejection still holds.
    let doc = config(&client, &ns).await.unwrap();
    assert_eq!(backend_state(&doc, "chat", "openai-mini"), "Ejected");
    assert_eq!(backend_state(&doc, "chat", "deepseek"), "OverBudget");
    let ev = events(&client, &ns).await;
    let repeated: Vec<&Event> = ev
        .iter()
        .filter(|e| e.reporting_instance.as_deref() == Some("e2e-controller-2"))
        .filter(|e| matches!(e.reason.as_deref(), Some("BudgetDeprioritized" | "BackendEjected" | "RouteRotated")))
        .collect();
    assert!(repeated.is_empty(), "decisions repeated after the restart: {repeated:?}");
    println!("restart checked {:?} after the kill", restarted.elapsed());
    let chat = route(&client, &ns, "chat").await.status.unwrap();
    println!("final ModelRoute chat status:\n{}", serde_json::to_string_pretty(&chat).unwrap());
    let b = budget(&client, &ns, "deepseek-daily").await.status.unwrap();
    for e in events(&client, &ns).await {
        println!(
            "Event {} {} on {} {} by {}{}: {}",
            e.type_.as_deref().unwrap_or(""),
            e.reason.as_deref().unwrap_or(""),
            e.regarding.as_ref().and_then(|r| r.kind.as_deref()).unwrap_or(""),
            e.regarding.as_ref().and_then(|r| r.name.as_deref()).unwrap_or(""),
            e.reporting_instance.as_deref().unwrap_or(""),
            e.series.as_ref().map(|s| format!(" (x{})", s.count)).unwrap_or_default(),
            e.note.as_deref().unwrap_or("")
        );
    }
    println!("final ProviderBudget deepseek-daily status:\n{}", serde_json::to_string_pretty(&b).unwrap());

    // Graceful shutdown: SIGTERM → exit 0.
    let mut controller2 = controller2;
    controller2.proc.signal("-TERM");
    let status = controller2.proc.wait_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "exit status after SIGTERM: {status}");
    println!("e2e suite took {:?}", suite.elapsed());
}

/// A controller rolled out ahead of its gateways writes a document of a newer schema version:
/// a `--from-configmap` gateway refuses it, saying which version it found and which it reads,
/// counts it in `tollgate_config_reload_errors_total` and keeps serving the last good one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_behind_its_controller_keeps_the_last_good_config() {
    let Some(client) = client_or_skip("e2e_cluster").await else { return };
    {
        let _crds = CRDS.lock().await;
        install_crds(&client).await;
    }
    let ns = fresh_namespace(&client, "tollgate-newer").await;
    create::<ModelRoute>(
        &client,
        &ns,
        json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "ModelRoute", "metadata": {"name": "chat"},
               "spec": {"backends": [{"name": "m", "provider": "openai", "model": "gpt-5-mini",
                                      "endpoint": {"mock": {"latency": "1ms"}},
                                      "pricing": {"input": "0.25", "output": "2.00"}}]}}),
    )
    .await;
    // The controller writes version 1; then it is gone, and the ConfigMap is what a newer
    // controller writes: version 2 with a field this gateway has never heard of.
    let mut controller = Controller::start(&ns, "newer-controller", &["--leader-election=false"]);
    let (good, _) =
        eventually("the controller's config", Duration::from_secs(20), || async { config(&client, &ns).await }).await;
    let gateway = cluster::ApiGateway::start(&ns, &[], &[]);
    let chat = || async {
        let r = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{}/v1/chat/completions", gateway.api))
            .json(&json!({"model": "chat"}))
            .send()
            .await
            .ok()?;
        Some(r.status().as_u16())
    };
    eventually("the gateway serves chat", Duration::from_secs(20), || async {
        (chat().await == Some(200)).then_some(())
    })
    .await;
    controller.proc.kill();
    let mut newer: serde_json::Value = serde_json::from_str(&good.to_json()).unwrap();
    newer["version"] = json!(2);
    newer["revision"] = json!("sha256:0123456789abcdef");
    newer["spendLimits"] = json!([{"provider": "openai", "limit": "1"}]);
    Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .patch(
            "tollgate-gateway",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"config.json": newer.to_string()}})),
        )
        .await
        .unwrap();
    let metric = |text: &str, prefix: &str| text.lines().find(|l| l.starts_with(prefix)).map(str::to_string);
    let (text, took) = eventually("the newer document refused", Duration::from_secs(20), || async {
        let (_, text) = http_get(gateway.metrics, "/metrics").await?;
        (metric(&text, "tollgate_config_reload_errors_total ").as_deref()
            == Some("tollgate_config_reload_errors_total 1"))
        .then_some(text)
    })
    .await;
    println!("the gateway refused the version-2 document {took:?} after it was written");
    let log = gateway.proc.log_text();
    let line = log.lines().find(|l| l.contains("refused")).unwrap_or_else(|| panic!("no refusal logged:\n{log}"));
    println!("{line}");
    assert!(line.contains("config version 2 is newer than this gateway reads (version 1)"), "{line}");
    assert_eq!(
        metric(&text, "tollgate_config_revision_info"),
        Some(format!("tollgate_config_revision_info{{revision=\"{}\"}} 1", good.revision)),
        "{text}"
    );
    assert_eq!(chat().await, Some(200), "the last good config serves");
}
