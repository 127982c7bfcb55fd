//! Helpers of the end-to-end suites that run against a real API server (`KUBECONFIG`): skip
//! when none is configured (through `skip.rs`: a failure where CI promises a cluster), CRDs,
//! fresh namespaces, objects from JSON, waiting with a deadline, the `tollgate` binary as a
//! child process (killed when dropped, its log printed when the test fails), fake gateway pods
//! with their own `/metrics`, Events and the Lease.
//!
//! Rules: every wait has a deadline (no fixed sleeps that a condition can replace); every port
//! comes from binding 127.0.0.1:0; every temporary file or directory is unique per test (it
//! embeds the test's random namespace). The suites drive the *binary* and talk to the API with
//! kube directly, never through tollgate's internal modules.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

#[path = "skip.rs"]
pub mod skip;

pub fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

pub fn yaml_docs(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(repo(path)).unwrap();
    serde_saphyr::from_multiple::<Value>(&text).unwrap().into_iter().filter(|d| !d.is_null()).collect()
}

/// Whether `KUBECONFIG` names a cluster; when not, skips `test` (a failure where
/// `TOLLGATE_CI_PROVIDES` lists `kube`) saying how to run `suite`.
pub fn cluster_or_skip(suite: &str, test: &str) -> bool {
    match std::env::var("KUBECONFIG") {
        Ok(k) if !k.is_empty() => true,
        _ => {
            skip::skip(
                skip::KUBE,
                test,
                &format!(
                    "KUBECONFIG is not set. Start a cluster (e.g. `../shared/k8s/apiserver up DIR`, kind or k3d), \
                     export KUBECONFIG and run `cargo test --test {suite} -- --nocapture`."
                ),
            );
            false
        }
    }
}

/// A client for `KUBECONFIG`, or `None` (skipped through [`cluster_or_skip`]) when it is unset.
pub async fn client_or_skip(suite: &str) -> Option<Client> {
    if !cluster_or_skip(suite, suite) {
        return None;
    }
    Some(Client::try_default().await.expect("KUBECONFIG is set but no client could be built from it"))
}

/// Polls `f` until it returns `Some`, or fails with `what` after `limit`; returns the value and
/// the time it took.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> (T, Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return (v, start.elapsed());
        }
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates or replaces the CRDs of crds/ and waits until they are Established.
pub async fn install_crds(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for doc in yaml_docs("crds/tollgate.yaml") {
        let crd: CustomResourceDefinition = serde_json::from_value(doc).unwrap();
        let name = crd.name_any();
        match api.create(&PostParams::default(), &crd).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let mut crd = crd;
                crd.metadata.resource_version = api.get(&name).await.unwrap().resource_version();
                // Another suite may replace it at the same time: a conflict means it is current.
                match api.replace(&name, &PostParams::default(), &crd).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(e) => panic!("replace CRD {name}: {e}"),
                }
            }
            Err(e) => panic!("create CRD {name}: {e}"),
        }
        eventually(&format!("CRD {name} Established"), Duration::from_secs(30), || {
            let api = api.clone();
            let name = name.clone();
            async move {
                let c = api.get(&name).await.ok()?;
                c.status?.conditions?.iter().any(|c| c.type_ == "Established" && c.status == "True").then_some(())
            }
        })
        .await;
    }
}

/// A fresh namespace `{prefix}-{random}` with the `default` ServiceAccount (the test server has
/// no controller-manager to create it).
pub async fn fresh_namespace(client: &Client, prefix: &str) -> String {
    let ns = format!("{prefix}-{:06x}", rand::random::<u32>() & 0xff_ffff);
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap())
        .await
        .unwrap();
    let _ = Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap())
        .await;
    println!("namespace {ns}");
    ns
}

/// Creates `obj` (JSON) in `ns`.
pub async fn create<K>(client: &Client, ns: &str, mut obj: Value) -> K
where
    K: kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    obj["metadata"]["namespace"] = json!(ns);
    let k: K = serde_json::from_value(obj).unwrap();
    Api::<K>::namespaced(client.clone(), ns).create(&PostParams::default(), &k).await.unwrap()
}

pub async fn events(client: &Client, ns: &str) -> Vec<Event> {
    Api::<Event>::namespaced(client.clone(), ns).list(&Default::default()).await.unwrap().items
}

/// The Events of `reason` about the object named `regarding`.
pub fn events_of<'a>(events: &'a [Event], reason: &str, regarding: &str) -> Vec<&'a Event> {
    events
        .iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(regarding)
        })
        .collect()
}

pub fn print_event(e: &Event) {
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

/// The Lease's holder identity (`None`: no Lease or no holder).
pub async fn lease_holder(client: &Client, ns: &str, name: &str) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), ns).get_opt(name).await.ok()??.spec?.holder_identity
}

pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let resp = reqwest::get(format!("http://127.0.0.1:{port}{path}")).await.ok()?;
    let code = resp.status().as_u16();
    Some((code, resp.text().await.ok()?))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

// ---- tollgate processes ------------------------------------------------------------------------

/// A `tollgate` child process with its stderr in a log file; killed when dropped, its log tail
/// printed when the test is failing (the log is kept then, removed otherwise).
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, log_key: &str, args: &[String], env: &[(&str, &str)]) -> Self {
        let log = std::env::temp_dir().join(format!("tollgate-{log_key}-{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
        cmd.args(args).stdout(Stdio::null()).stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self { child: cmd.spawn().unwrap(), log, name: name.to_string() }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self, n: usize) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    pub fn signal(&self, sig: &str) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args([sig, &pid]).status();
    }

    /// Waits for the exit, failing after `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "{} did not exit within {limit:?}:\n{}", self.name, self.log_tail(30));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- {} log {} (tail) ---\n{}", self.name, self.log.display(), self.log_tail(40));
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// A real `tollgate gateway` following `ns/tollgate-gateway` and its credentials through the
/// API (`--from-configmap`), with `extra` flags; the API and metrics ports are free ones.
pub struct ApiGateway {
    pub proc: Proc,
    pub api: u16,
    pub metrics: u16,
    /// Where it writes the API keys it reads.
    pub creds: PathBuf,
}

impl ApiGateway {
    pub fn start(ns: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_on(ns, "gateway", free_port(), free_port(), extra, env)
    }

    /// One of several gateways in `ns`: its own `name` (log and credentials directory) and the
    /// given API and metrics ports (e.g. a metrics port a fake Pod object already points at).
    pub fn start_on(ns: &str, name: &str, api: u16, metrics: u16, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = if name == "gateway" { String::new() } else { format!("-{name}") };
        let creds = std::env::temp_dir().join(format!("tollgate-{ns}{dir}-credentials"));
        let mut args: Vec<String> = vec![
            "gateway".into(),
            "--from-configmap".into(),
            format!("{ns}/tollgate-gateway"),
            "--credentials-dir".into(),
            creds.display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{api}"),
            "--metrics-listen".into(),
            format!("127.0.0.1:{metrics}"),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Self { proc: Proc::spawn(name, ns, &args, env), api, metrics, creds }
    }
}

/// `tollgate controller` on namespace `ns` (signal interval 2 s, lease 4 s in `ns`), `/readyz`
/// and `/metrics` on `health`.
pub struct Controller {
    pub proc: Proc,
    pub health: u16,
}

impl Controller {
    pub fn start(ns: &str, name: &str, extra: &[&str]) -> Self {
        let health = free_port();
        let mut args: Vec<String> = [
            "controller",
            "--namespaces",
            ns,
            "--signal-interval",
            "2s",
            "--lease-duration",
            "4s",
            "--lease-namespace",
            ns,
            "--pod-name",
            name,
            "--log-format",
            "json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push("--listen".into());
        args.push(format!("127.0.0.1:{health}"));
        args.extend(extra.iter().map(|s| s.to_string()));
        Self { proc: Proc::spawn(name, ns, &args, &[("RUST_LOG", "info,tollgate=debug")]), health }
    }

    /// `/readyz` body's first word (`leading`, `standby`, ...), `None` while not answering.
    pub async fn phase(&self) -> Option<String> {
        let (_, text) = http_get(self.health, "/readyz").await?;
        Some(text.split(|c: char| c == ':' || c.is_whitespace()).next().unwrap_or_default().to_string())
    }

    /// The `tollgate_controller_leader` gauge.
    pub async fn leader_gauge(&self) -> Option<String> {
        let (_, text) = http_get(self.health, "/metrics").await?;
        text.lines()
            .find(|l| l.starts_with("tollgate_controller_leader ") || l.starts_with("tollgate_controller_leader{"))
            .and_then(|l| l.split_whitespace().last())
            .map(str::to_string)
    }
}

// ---- fake gateway pods -------------------------------------------------------------------------

/// Cumulative counters of one (route, backend, provider, model) series.
#[derive(Clone, Copy, Default, Debug)]
pub struct Counters {
    pub ok: u64,
    pub errors: u64,
    pub nanousd: u64,
}

/// Counters by [route, backend, provider, model], and the config revision served.
type Gauges = (BTreeMap<[String; 4], Counters>, String);

/// What a fake gateway's `/metrics` serves: the gateway's own metric families, written by hand.
#[derive(Clone, Default)]
pub struct FakeGateway(Arc<Mutex<Gauges>>);

impl FakeGateway {
    /// Sets the counters of route/backend (provider, model) to these cumulative values.
    pub fn set(&self, route: &str, backend: &str, provider: &str, model: &str, c: Counters) {
        let key = [route, backend, provider, model].map(str::to_string);
        self.0.lock().unwrap().0.insert(key, c);
    }

    pub fn serve_revision(&self, rev: &str) {
        self.0.lock().unwrap().1 = rev.to_string();
    }

    pub fn text(&self) -> String {
        let g = self.0.lock().unwrap();
        let labels = |k: &[String; 4]| {
            format!("route=\"{}\",backend=\"{}\",provider=\"{}\",model=\"{}\"", k[0], k[1], k[2], k[3])
        };
        let mut out = String::from("# TYPE tollgate_requests counter\n");
        for (k, c) in &g.0 {
            let l = labels(k);
            out.push_str(&format!("tollgate_requests_total{{{l},outcome=\"ok\"}} {}\n", c.ok));
            out.push_str(&format!("tollgate_requests_total{{{l},outcome=\"upstream_error\"}} {}\n", c.errors));
        }
        out.push_str("# TYPE tollgate_cost_nanousd counter\n");
        for (k, c) in &g.0 {
            out.push_str(&format!("tollgate_cost_nanousd_total{{{}}} {}\n", labels(k), c.nanousd));
        }
        if !g.1.is_empty() {
            out.push_str(&format!(
                "# TYPE tollgate_config_revision info\ntollgate_config_revision_info{{revision=\"{}\"}} 1\n",
                g.1
            ));
        }
        out.push_str("# EOF\n");
        out
    }

    /// Serves `/metrics` on a new loopback port until the returned handle is aborted.
    pub async fn start(&self) -> (u16, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let me = self.clone();
        let app = axum::Router::new().route("/metrics", axum::routing::get(move || async move { me.text() }));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (port, task)
    }
}

/// Registers a Ready gateway Pod `name` whose `metrics` port is `port` on 127.0.0.1 (status set
/// through the /status subresource); returns its UID.
pub async fn gateway_pod(client: &Client, ns: &str, name: &str, port: u16) -> String {
    let pod = create::<Pod>(
        client,
        ns,
        json!({
            "metadata": {"name": name,
                         "labels": {"app.kubernetes.io/component": "gateway", "app.kubernetes.io/name": "tollgate"}},
            "spec": {"containers": [{"name": "gateway", "image": "tollgate:e2e",
                                     "ports": [{"name": "metrics", "containerPort": port}]}]}
        }),
    )
    .await;
    Api::<Pod>::namespaced(client.clone(), ns)
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
                "conditions": [{"type": "Ready", "status": "True"}]}})),
        )
        .await
        .unwrap();
    pod.uid().unwrap()
}

/// Deletes Pod `name` at once (no kubelet runs on the test server) and waits until it is gone.
pub async fn delete_pod(client: &Client, ns: &str, name: &str) {
    let api = Api::<Pod>::namespaced(client.clone(), ns);
    api.delete(name, &DeleteParams::default().grace_period(0)).await.unwrap();
    eventually(&format!("Pod {name} gone"), Duration::from_secs(10), || {
        let api = api.clone();
        async move { api.get_opt(name).await.ok()?.is_none().then_some(()) }
    })
    .await;
}
