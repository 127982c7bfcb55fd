//! Signals through a real Prometheus, end to end: real `tollgate gateway` processes serving mock
//! backends, scraped by a real `prometheus` (Debian's 2.42 package), and `tollgate controller
//! --signals prometheus=URL` against a real API server. The same scenario also runs with the
//! default scrape signals, with the same assertions: the two modes must decide exactly alike.
//!
//! The scenario, in a fresh namespace:
//! 1. Two ModelRoutes over mock backends (`chat`: openai-mini, deepseek as a fallback tier;
//!    `summarize`: mistral failing every request, qwen) and two ProviderBudgets (`openai`, tiny,
//!    Deprioritize at 60%; `deepseek`, counting only). Two gateway processes follow the
//!    controller's ConfigMap through the API (`--from-configmap`); each is registered as a Pod
//!    (Ready, podIP 127.0.0.1, container port `metrics` = its metrics port) and, for Prometheus,
//!    as a static target carrying the `namespace` and `pod` labels the controller matches on.
//! 2. Spend: chat traffic on both gateways crosses the openai budget's Deprioritize threshold;
//!    openai-mini goes OverBudget in the ConfigMap, chat rotates to deepseek, and the budget's
//!    `status.spent` equals exactly the sum of the gateways' own `tollgate_cost_nanousd_total`.
//!    The gateways then serve chat from deepseek (the data plane followed the rotation).
//! 3. Error rate: summarize traffic until mistral has 12 failed attempts; mistral is Ejected and
//!    summarize rotates to qwen.
//! 4. Counter reset: one gateway is killed (SIGKILL) and started again on the same ports (same
//!    Pod: its counters restart from zero); more traffic; the deepseek budget's spend is exactly
//!    what it was plus the restarted gateway's new counter: nothing lost, nothing counted twice.
//! 5. Prometheus only: every PromQL expression of the chart's Grafana dashboard
//!    (charts/tollgate/files/grafana-dashboard.json, Grafana variables replaced) is accepted by
//!    the real Prometheus and returns data (all but the answers-without-usage series, which this
//!    traffic never creates); and the chart's alert rules, loaded by this Prometheus, fire
//!    TollgateBackendEjected for mistral.
//!
//! Skips, saying so, without `KUBECONFIG` (both tests) or without the `prometheus` binary (the
//! Prometheus test); a failure instead where `TOLLGATE_CI_PROVIDES` lists `kube` or
//! `prometheus` (tests/common/skip.rs). Processes are killed when the test ends (also on failure); every port comes
//! from binding 127.0.0.1:0, every temporary directory is unique to the test.

#[path = "common/cluster.rs"]
mod cluster;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cluster::{cluster_or_skip, create, eventually, free_port, fresh_namespace, install_crds, repo, skip};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use tollgate::api::{BackendState, ModelRoute, ProviderBudget};
use tollgate::config::GatewayConfig;
use tollgate::policy::{Money, Outcome};
use tollgate::signals::GatewayReading;

/// The controller's `--signal-interval`.
const INTERVAL: Duration = Duration::from_secs(2);
/// Prometheus' scrape and rule evaluation interval.
const SCRAPE: &str = "1s";
/// How long a decision may take to show: a scrape, a signal interval, a pass, a watch event.
const DECIDE: Duration = Duration::from_secs(20);

/// A child process killed when dropped (also when the test fails), its log tail printed then.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command, log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).unwrap();
        let child =
            cmd.stdout(Stdio::null()).stderr(file).spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self { name: name.to_string(), child, log }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!(
                "--- {} log {} (tail) ---\n{}",
                self.name,
                self.log.display(),
                lines[lines.len().saturating_sub(25)..].join("\n")
            );
        }
        self.kill();
    }
}

async fn http_get(url: &str) -> Option<(u16, String)> {
    let resp = reqwest::get(url).await.ok()?;
    let code = resp.status().as_u16();
    Some((code, resp.text().await.ok()?))
}

// ---- the cluster ---------------------------------------------------------------------------------

async fn config(client: &Client, ns: &str) -> Option<GatewayConfig> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns).get_opt("tollgate-gateway").await.ok()??;
    GatewayConfig::from_json(cm.data?.get("config.json")?.as_bytes()).ok()
}

fn backend_state(doc: &GatewayConfig, route: &str, backend: &str) -> String {
    doc.route(route)
        .and_then(|r| r.backends.iter().find(|b| b.name == backend))
        .map(|b| format!("{:?}", b.state))
        .unwrap_or_default()
}

async fn route(client: &Client, ns: &str, name: &str) -> ModelRoute {
    Api::<ModelRoute>::namespaced(client.clone(), ns).get(name).await.unwrap()
}

async fn budget_spent(client: &Client, ns: &str, name: &str) -> Option<String> {
    Api::<ProviderBudget>::namespaced(client.clone(), ns).get(name).await.ok()?.status?.spent
}

fn mock(extra: Value) -> Value {
    let mut m = json!({"latency": "5ms", "inputTokens": 1200, "cachedInputTokens": 400, "cacheWriteTokens": 100,
                       "outputTokens": 300, "reasoningTokens": 150});
    if let (Some(m), Some(e)) = (m.as_object_mut(), extra.as_object()) {
        m.extend(e.clone());
    }
    json!({"mock": m})
}

fn manifests() -> (Vec<Value>, Vec<Value>) {
    let routes = vec![
        json!({"metadata": {"name": "chat"}, "spec": {"backends": [
            {"name": "openai-mini", "provider": "openai", "model": "gpt-5-mini", "endpoint": mock(json!({})),
             "weight": 100, "priority": 0, "pricing": {"input": "0.25", "cachedInput": "0.025", "output": "2.00"}},
            {"name": "deepseek", "provider": "deepseek", "model": "deepseek-chat", "endpoint": mock(json!({})),
             "weight": 100, "priority": 1, "pricing": {"input": "0.28", "cachedInput": "0.028", "output": "0.42"}}
        ]}}),
        json!({"metadata": {"name": "summarize"}, "spec": {"backends": [
            {"name": "mistral", "provider": "mistral", "model": "mistral-small-latest",
             "endpoint": mock(json!({"errorRate": "1", "errorStatus": 503})), "weight": 50,
             "pricing": {"input": "0.10", "cachedInput": "0.01", "output": "0.30"}},
            {"name": "qwen", "provider": "qwen", "model": "qwen-plus", "endpoint": mock(json!({})), "weight": 50,
             "pricing": {"input": "0.40", "cachedInput": "0.08", "output": "1.20"}}
        ], "health": {"errorRate": {"trip": "0.20", "recover": "0.05", "window": "5m", "minRequests": 10},
                      "ejection": {"base": "10m", "max": "30m"}, "maxEjectedPercent": 50}}}),
    ];
    let budgets = vec![
        json!({"metadata": {"name": "openai-budget"}, "spec": {"provider": "openai", "limit": "0.05",
               "window": {"period": "Monthly", "timeZone": "UTC"},
               "thresholds": [{"percent": 30, "action": "Warn"}, {"percent": 60, "action": "Deprioritize"}]}}),
        json!({"metadata": {"name": "deepseek-budget"}, "spec": {"provider": "deepseek", "limit": "1000",
               "window": {"period": "Monthly", "timeZone": "UTC"},
               "thresholds": [{"percent": 90, "action": "Warn"}]}}),
    ];
    (routes, budgets)
}

// ---- gateways ------------------------------------------------------------------------------------

struct Gateway {
    pod: String,
    api: u16,
    metrics: u16,
    creds: PathBuf,
    proc: Option<Proc>,
}

impl Gateway {
    fn new(pod: &str, dir: &Path) -> Self {
        let creds = dir.join(format!("{pod}-credentials"));
        std::fs::create_dir_all(&creds).unwrap();
        Self { pod: pod.to_string(), api: free_port(), metrics: free_port(), creds, proc: None }
    }

    fn start(&mut self, ns: &str, dir: &Path, generation: u32) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
        cmd.args(["gateway", "--from-configmap", &format!("{ns}/tollgate-gateway"), "--credentials-dir"])
            .arg(&self.creds)
            .args(["--listen", &format!("127.0.0.1:{}", self.api)])
            .args(["--metrics-listen", &format!("127.0.0.1:{}", self.metrics), "--workers", "1"]);
        let log = dir.join(format!("{}-{generation}.log", self.pod));
        self.proc = Some(Proc::spawn(&self.pod, &mut cmd, log));
    }

    fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    async fn reading(&self) -> GatewayReading {
        let (code, body) =
            http_get(&format!("http://127.0.0.1:{}/metrics", self.metrics)).await.expect("gateway /metrics");
        assert_eq!(code, 200, "{body}");
        GatewayReading::from_text(&body)
    }

    async fn chat(&self, client: &reqwest::Client, model: &str, stream: bool) {
        let body = json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hello"}]});
        let resp = client
            .post(format!("http://127.0.0.1:{}/v1/chat/completions", self.api))
            .json(&body)
            .send()
            .await
            .expect("POST /v1/chat/completions");
        let code = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        assert_eq!(code, 200, "{model} on {}: {text}", self.pod);
    }
}

fn attempts(r: &GatewayReading, route: &str, backend: &str, outcome: Outcome) -> u64 {
    r.requests
        .iter()
        .filter(|((k, o), _)| k.route == route && k.backend == backend && *o == outcome)
        .map(|(_, n)| n)
        .sum()
}

fn total_cost(readings: &[GatewayReading], provider: &str) -> u64 {
    readings.iter().map(|r| r.cost_matching(provider, &[])).sum()
}

fn spent(nanousd: u64) -> String {
    Money::from_picos(i128::from(nanousd) * 1000).to_string()
}

async fn register_pod(client: &Client, ns: &str, gw: &Gateway) {
    create::<Pod>(
        client,
        ns,
        json!({
            "metadata": {"name": gw.pod,
                         "labels": {"app.kubernetes.io/component": "gateway", "app.kubernetes.io/name": "tollgate"}},
            "spec": {"containers": [{"name": "gateway", "image": "tollgate:e2e",
                                     "ports": [{"name": "metrics", "containerPort": gw.metrics}]}]}
        }),
    )
    .await;
    Api::<Pod>::namespaced(client.clone(), ns)
        .patch_status(
            &gw.pod,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
                "conditions": [{"type": "Ready", "status": "True"}]}})),
        )
        .await
        .unwrap();
}

// ---- Prometheus ----------------------------------------------------------------------------------

struct Prometheus {
    url: String,
    _proc: Proc,
}

impl Prometheus {
    /// Starts `prometheus` scraping the gateways (with their `namespace` and `pod` labels) and
    /// the controller (`honor_labels`, as the chart's ServiceMonitor does), with the chart's
    /// alert rules loaded.
    async fn start(dir: &Path, ns: &str, gateways: &[&Gateway], controller_port: u16) -> Self {
        let port = free_port();
        let targets: Vec<Value> = gateways
            .iter()
            .map(
                |g| json!({"targets": [format!("127.0.0.1:{}", g.metrics)], "labels": {"namespace": ns, "pod": g.pod}}),
            )
            .collect();
        let config = json!({
            "global": {"scrape_interval": SCRAPE, "scrape_timeout": SCRAPE, "evaluation_interval": SCRAPE},
            "rule_files": [repo("charts/tollgate/files/prometheus-rules.yaml")],
            "scrape_configs": [
                {"job_name": "tollgate-gateway", "static_configs": targets},
                {"job_name": "tollgate-controller", "honor_labels": true,
                 "static_configs": [{"targets": [format!("127.0.0.1:{controller_port}")]}]}
            ]
        });
        // JSON is YAML.
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, serde_json::to_string_pretty(&config).unwrap()).unwrap();
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .args(["--storage.tsdb.retention.time=1h", "--log.level=warn"]);
        let proc = Proc::spawn("prometheus", &mut cmd, dir.join("prometheus.log"));
        let url = format!("http://127.0.0.1:{port}");
        let ready = format!("{url}/-/ready");
        let (_, took) = eventually("prometheus /-/ready", Duration::from_secs(30), || {
            let ready = ready.clone();
            async move { http_get(&ready).await.filter(|(c, _)| *c == 200) }
        })
        .await;
        println!("prometheus ready at {url} after {took:?}");
        Self { url, _proc: proc }
    }

    /// An instant query: `Err` with Prometheus' error when it refuses the expression.
    async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let resp = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", expr)])
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let body: Value = resp.json().await.map_err(|e| e.to_string())?;
        if body["status"] != "success" {
            return Err(format!("{}: {}", body["errorType"], body["error"]));
        }
        Ok(body["data"]["result"].as_array().cloned().unwrap_or_default())
    }
}

/// Every PromQL expression of the dashboard, with Grafana's variables replaced.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo("charts/tollgate/files/grafana-dashboard.json")).unwrap();
    let dash: Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    fn walk(v: &Value, title: &str, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(o) => {
                let title = o.get("title").and_then(Value::as_str).unwrap_or(title);
                if let Some(e) = o.get("expr").and_then(Value::as_str) {
                    out.push((title.to_string(), e.to_string()));
                }
                for v in o.values() {
                    walk(v, title, out);
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, title, out)),
            _ => {}
        }
    }
    walk(&dash["panels"], "", &mut out);
    out.into_iter()
        .map(|(t, e)| {
            let e = e
                .replace("$__rate_interval", "1m")
                .replace("$__range", "10m")
                .replace("$namespace", ".*")
                .replace("$route", ".*");
            (t, e)
        })
        .collect()
}

// ---- the scenario --------------------------------------------------------------------------------

#[derive(Debug, PartialEq)]
struct Outcomes {
    spend_rotation_to: String,
    errors_rotation_to: String,
    mistral_error_rate: String,
    deepseek_spent_exact_after_restart: bool,
}

async fn scenario(with_prometheus: bool) -> Outcomes {
    let suite = Instant::now();
    let mode = if with_prometheus { "prometheus" } else { "scrape" };
    let client = Client::try_default().await.expect("KUBECONFIG is set but no client could be built from it");
    install_crds(&client).await;
    let ns = fresh_namespace(&client, &format!("tollgate-{mode}")).await;
    let dir = std::env::temp_dir().join(&ns);
    std::fs::create_dir_all(&dir).unwrap();
    println!("[{mode}] namespace {ns}, files in {}", dir.display());

    let (routes, budgets) = manifests();
    for r in routes {
        create::<ModelRoute>(&client, &ns, r).await;
    }
    for b in budgets {
        create::<ProviderBudget>(&client, &ns, b).await;
    }
    let mut gateways = [Gateway::new("gateway-0", &dir), Gateway::new("gateway-1", &dir)];
    let controller_port = free_port();
    let prometheus = if with_prometheus {
        Some(Prometheus::start(&dir, &ns, &[&gateways[0], &gateways[1]], controller_port).await)
    } else {
        None
    };
    let signals = prometheus.as_ref().map_or("scrape".to_string(), |p| format!("prometheus={}", p.url));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    cmd.args(["controller", "--namespaces", &ns, "--signal-interval", &format!("{}s", INTERVAL.as_secs())])
        .args(["--signals", &signals, "--leader-election=false", "--pod-name", "controller-0"])
        .args(["--listen", &format!("127.0.0.1:{controller_port}"), "--log-format", "json"])
        .env("RUST_LOG", "info,tollgate=debug");
    let _controller = Proc::spawn("controller", &mut cmd, dir.join("controller.log"));

    let (doc, took) = eventually("the gateway ConfigMap with both routes", Duration::from_secs(30), || {
        let (client, ns) = (client.clone(), ns.clone());
        async move { config(&client, &ns).await.filter(|d| d.route("chat").is_some() && d.route("summarize").is_some()) }
    })
    .await;
    println!("[{mode}] config {} rendered after {took:?}", doc.revision);

    for gw in &mut gateways {
        gw.start(&ns, &dir, 0);
    }
    for gw in &gateways {
        let want = format!("tollgate_config_revision_info{{revision=\"{}\"}} 1", doc.revision);
        let url = format!("http://127.0.0.1:{}/metrics", gw.metrics);
        eventually(&format!("{} serves the config", gw.pod), Duration::from_secs(20), || {
            let (url, want) = (url.clone(), want.clone());
            async move { http_get(&url).await.filter(|(c, t)| *c == 200 && t.contains(&want)) }
        })
        .await;
        register_pod(&client, &ns, gw).await;
    }
    let (_, took) = eventually("both gateways read and in sync in chat's status", DECIDE, || {
        let (client, ns) = (client.clone(), ns.clone());
        async move {
            let g = route(&client, &ns, "chat").await.status?.gateways?;
            (g.in_sync == 2 && g.total == 2).then_some(())
        }
    })
    .await;
    println!("[{mode}] both gateways in sync after {took:?}");

    // 2. Spend over the openai budget's Deprioritize threshold (60% of 0.05 USD).
    let http = reqwest::Client::new();
    for gw in &gateways {
        for i in 0..20 {
            gw.chat(&http, "chat", i % 5 == 0).await;
        }
    }
    let (doc, took) = eventually("openai-mini OverBudget in the ConfigMap", DECIDE, || {
        let (client, ns) = (client.clone(), ns.clone());
        async move { config(&client, &ns).await.filter(|d| backend_state(d, "chat", "openai-mini") == "OverBudget") }
    })
    .await;
    println!(
        "[{mode}] spend rotation in the ConfigMap {took:?} after the traffic ({}s signal interval)",
        INTERVAL.as_secs()
    );
    let mut readings = Vec::new();
    for gw in &gateways {
        readings.push(gw.reading().await);
    }
    let openai = total_cost(&readings, "openai");
    assert!(openai > 30_000_000, "the traffic spent {openai} nano-USD on openai, less than the threshold");
    let want = spent(openai);
    let (got, took) = eventually("openai-budget spent equals the gateways' exact counters", DECIDE, || {
        let (client, ns, want) = (client.clone(), ns.clone(), want.clone());
        async move { budget_spent(&client, &ns, "openai-budget").await.filter(|s| *s == want) }
    })
    .await;
    println!(
        "[{mode}] openai-budget spent {got} USD = the gateways' tollgate_cost_nanousd_total ({openai}) after {took:?}"
    );
    let chat = route(&client, &ns, "chat").await.status.unwrap();
    let spend_rotation_to = chat.last_rotation.as_ref().map(|r| r.to.clone()).unwrap_or_default();
    println!("[{mode}] chat lastRotation -> {spend_rotation_to} ({})", chat.last_rotation.as_ref().unwrap().reason);
    // The gateways follow the rotation: chat now lands on deepseek only.
    for gw in &gateways {
        let url = format!("http://127.0.0.1:{}/metrics", gw.metrics);
        let want = format!("tollgate_config_revision_info{{revision=\"{}\"}} 1", doc.revision);
        eventually(&format!("{} serves the rotated config", gw.pod), Duration::from_secs(10), || {
            let (url, want) = (url.clone(), want.clone());
            async move { http_get(&url).await.filter(|(c, t)| *c == 200 && t.contains(&want)) }
        })
        .await;
        let before = gw.reading().await;
        for i in 0..5 {
            gw.chat(&http, "chat", i == 0).await;
        }
        let after = gw.reading().await;
        assert_eq!(
            attempts(&after, "chat", "openai-mini", Outcome::Ok),
            attempts(&before, "chat", "openai-mini", Outcome::Ok)
        );
        assert_eq!(
            attempts(&after, "chat", "deepseek", Outcome::Ok),
            attempts(&before, "chat", "deepseek", Outcome::Ok) + 5
        );
    }

    // 3. Error rate: mistral fails every attempt (each retried on qwen) until it has 12.
    let mut failed = 0;
    while failed < 12 {
        for _ in 0..5 {
            gateways[0].chat(&http, "summarize", false).await;
        }
        failed = attempts(&gateways[0].reading().await, "summarize", "mistral", Outcome::UpstreamError);
    }
    let (_, took) = eventually("mistral Ejected in the ConfigMap", DECIDE, || {
        let (client, ns) = (client.clone(), ns.clone());
        async move { config(&client, &ns).await.filter(|d| backend_state(d, "summarize", "mistral") == "Ejected") }
    })
    .await;
    println!("[{mode}] error-rate rotation ({failed} failed attempts) in the ConfigMap after {took:?}");
    let (summarize, _) = eventually("summarize status shows the ejection", DECIDE, || {
        let (client, ns) = (client.clone(), ns.clone());
        async move {
            let st = route(&client, &ns, "summarize").await.status?;
            let b = st.backends.iter().find(|b| b.name == "mistral")?;
            (b.state == BackendState::Ejected).then_some(st)
        }
    })
    .await;
    let mistral = summarize.backends.iter().find(|b| b.name == "mistral").unwrap();
    let errors_rotation_to = summarize.last_rotation.as_ref().map(|r| r.to.clone()).unwrap_or_default();
    println!(
        "[{mode}] summarize: mistral {:?} errorRate {:?} over {:?} requests; lastRotation -> {errors_rotation_to}",
        mistral.state, mistral.error_rate, mistral.requests
    );

    // 4. Counter reset: the deepseek budget has counted both gateways exactly; gateway-1 restarts.
    let mut readings = Vec::new();
    for gw in &gateways {
        readings.push(gw.reading().await);
    }
    let deepseek_before = total_cost(&readings, "deepseek");
    assert!(deepseek_before > 0);
    let want = spent(deepseek_before);
    eventually("deepseek-budget spent equals the gateways' counters before the restart", DECIDE, || {
        let (client, ns, want) = (client.clone(), ns.clone(), want.clone());
        async move { budget_spent(&client, &ns, "deepseek-budget").await.filter(|s| *s == want) }
    })
    .await;
    let old = readings[1].cost_matching("deepseek", &[]);
    gateways[1].kill();
    gateways[1].start(&ns, &dir, 1);
    let url = format!("http://127.0.0.1:{}/readyz", gateways[1].api);
    eventually("the restarted gateway-1 is ready", Duration::from_secs(20), || {
        let url = url.clone();
        async move { http_get(&url).await.filter(|(c, _)| *c == 200) }
    })
    .await;
    for i in 0..8 {
        gateways[1].chat(&http, "chat", i % 4 == 0).await;
    }
    let new = gateways[1].reading().await.cost_matching("deepseek", &[]);
    // More than before the restart: a plain difference (new - old) would under-count; the reset is
    // known from the counters that went down (openai-mini's and summarize's are gone).
    assert!(new > old, "the restarted gateway's deepseek counter ({new}) should exceed its old one ({old})");
    let want = spent(deepseek_before + new);
    let (got, took) = eventually("deepseek-budget counts the restarted gateway from zero", DECIDE, || {
        let (client, ns, want) = (client.clone(), ns.clone(), want.clone());
        async move { budget_spent(&client, &ns, "deepseek-budget").await.filter(|s| *s == want) }
    })
    .await;
    println!(
        "[{mode}] after gateway-1's restart: deepseek-budget spent {got} = {deepseek_before} before + {new} since (its old counter {old}), after {took:?}"
    );
    // And it stays so: nothing counted twice on later rounds.
    tokio::time::sleep(INTERVAL * 2).await;
    let later = budget_spent(&client, &ns, "deepseek-budget").await;
    let deepseek_spent_exact_after_restart = later.as_deref() == Some(want.as_str());

    // 5. The dashboard's queries and the alert rules on the real Prometheus.
    if let Some(prom) = &prometheus {
        let queries = dashboard_queries();
        assert!(queries.len() >= 15, "{} dashboard queries", queries.len());
        let mut empty = Vec::new();
        for (title, expr) in &queries {
            let result = prom
                .query(expr)
                .await
                .unwrap_or_else(|e| panic!("dashboard panel {title:?}: Prometheus refused {expr}: {e}"));
            println!("[{mode}] dashboard {title:?}: {} series", result.len());
            if result.is_empty() {
                empty.push(format!("{title}: {expr}"));
            }
        }
        // This traffic reads usage from every answer: the usage-missing series is never created.
        let unexpected: Vec<&String> = empty.iter().filter(|e| !e.contains("tollgate_usage_missing_total")).collect();
        assert!(unexpected.is_empty(), "dashboard queries without data after the traffic: {unexpected:#?}");
        let (alert, took) =
            eventually("TollgateBackendEjected firing for mistral", Duration::from_secs(30), || async {
                let body: Value = reqwest::get(format!("{}/api/v1/alerts", prom.url)).await.ok()?.json().await.ok()?;
                body["data"]["alerts"]
                    .as_array()?
                    .iter()
                    .find(|a| {
                        a["labels"]["alertname"] == "TollgateBackendEjected"
                            && a["labels"]["backend"] == "mistral"
                            && a["labels"]["namespace"] == ns.as_str()
                            && a["state"] == "firing"
                    })
                    .cloned()
            })
            .await;
        println!("[{mode}] alert firing after {took:?}: {}", alert["annotations"]["summary"]);
    }

    // Leave nothing behind: the namespace goes (the API server has no namespace controller, so
    // its objects stay until the server is torn down, harmlessly).
    drop(_controller);
    for gw in &mut gateways {
        gw.kill();
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("[{mode}] scenario took {:?}", suite.elapsed());
    Outcomes {
        spend_rotation_to,
        errors_rotation_to,
        mistral_error_rate: mistral.error_rate.clone().unwrap_or_default(),
        deepseek_spent_exact_after_restart,
    }
}

/// What both modes must decide.
fn expected() -> Outcomes {
    Outcomes {
        spend_rotation_to: "deepseek=100".into(),
        errors_rotation_to: "qwen=100".into(),
        mistral_error_rate: "1.00".into(),
        deepseek_spent_exact_after_restart: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotations_with_scrape_signals() {
    if !cluster_or_skip("prometheus_e2e", "prometheus_e2e (scrape)") {
        return;
    }
    assert_eq!(scenario(false).await, expected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotations_with_prometheus_signals() {
    if !cluster_or_skip("prometheus_e2e", "prometheus_e2e (prometheus)") {
        return;
    }
    if Command::new("prometheus").arg("--version").output().is_err() {
        skip::skip(
            skip::PROMETHEUS,
            "prometheus_e2e (prometheus)",
            "no `prometheus` binary on PATH (Debian: apt-get install prometheus; .ci/run installs it)",
        );
        return;
    }
    assert_eq!(scenario(true).await, expected());
}

#[test]
fn dashboard_queries_are_found() {
    // The walk above finds every target of every panel (a guard for the Prometheus test).
    let q = dashboard_queries();
    assert!(q.iter().any(|(_, e)| e.contains("tollgate_controller_budget_limit_usd")));
    assert!(q.iter().any(|(_, e)| e.contains("tollgate_time_to_first_token_seconds_bucket")));
    assert!(q.iter().all(|(_, e)| !e.contains('$')), "a Grafana variable was left: {q:#?}");
}
