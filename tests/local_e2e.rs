//! `tollgate local` end to end: a real process on loopback, real traffic, the policy loop,
//! the state file, live manifest edits, SIGKILL and restart.
//!
//! The budget window is Rolling and ~8000 years long (aligned to the Unix epoch), so a run
//! cannot cross a window boundary (a Daily window failed runs crossing midnight UTC). Every
//! wait has a deadline; each test has its own directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Every openai request costs exactly 1000 input × $1/1M + 1000 output × $1/1M = $0.002000.
const ROUTES: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: ModelRoute
metadata: {name: chat}
spec:
  backends:
    - name: openai
      provider: openai
      model: gpt-5-mini
      endpoint: {mock: {latency: 1ms, inputTokens: 1000, cachedInputTokens: 0, cacheWriteTokens: 0, outputTokens: 1000, reasoningTokens: 0}}
      pricing: {input: "1.00", output: "1.00"}
    - name: deepseek
      provider: deepseek
      model: deepseek-chat
      priority: 1
      endpoint: {mock: {latency: 1ms}}
      pricing: {input: "0.28", output: "0.42"}
---
apiVersion: tollgate.dev/v1alpha1
kind: ModelRoute
metadata: {name: solo}
spec:
  backends:
    - name: openai
      provider: openai
      model: gpt-5-mini
      endpoint: {mock: {latency: 1ms, inputTokens: 1000, cachedInputTokens: 0, cacheWriteTokens: 0, outputTokens: 1000, reasoningTokens: 0}}
      pricing: {input: "1.00", output: "1.00"}
  budget: {onExhausted: Reject}
---
apiVersion: tollgate.dev/v1alpha1
kind: ModelRoute
metadata: {name: flaky}
spec:
  backends:
    - name: mistral
      provider: mistral
      model: mistral-small-latest
      endpoint: {mock: {latency: 1ms, errorRate: "ERROR_RATE", errorStatus: 503}}
      pricing: {input: "0.10", output: "0.30"}
    - name: qwen
      provider: qwen
      model: qwen-plus
      endpoint: {mock: {latency: 1ms}}
      pricing: {input: "0.40", output: "1.20"}
  health:
    errorRate: {trip: "0.50", recover: "0.10", window: 2s, minRequests: 4}
    ejection: {base: 1s, max: 4s}
    rampUp: [50, 100]
"#;

const BUDGETS: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: ProviderBudget
metadata: {name: openai-window}
spec:
  provider: openai
  limit: "0.02"
  window: {period: Rolling, duration: 70000000h}
  thresholds:
    - {percent: 50, action: Warn}
    - {percent: 80, action: Deprioritize}
    - {percent: 100, action: Drain}
"#;

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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn write_manifests(dir: &Path, error_rate: &str) {
    std::fs::write(dir.join("routes.yaml"), ROUTES.replace("ERROR_RATE", error_rate)).unwrap();
    std::fs::write(dir.join("budgets.yaml"), BUDGETS).unwrap();
}

fn start(dir: &Path, state: &Path) -> Local {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["local", "--interval", "300ms", "--table", "never", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-f")
        .arg(dir)
        .arg("--state")
        .arg(state)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Local { child, url: format!("http://127.0.0.1:{port}") }
}

async fn status(client: &reqwest::Client, url: &str) -> Option<Value> {
    client.get(format!("{url}/status")).send().await.ok()?.json().await.ok()
}

async fn wait_ready(client: &reqwest::Client, url: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(s) = status(client, url).await
            && s["time"].is_string()
        {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("tollgate local did not answer /status at {url}");
}

/// Waits until two more evaluations happened (so everything sent so far is evaluated).
async fn settle(client: &reqwest::Client, url: &str) -> Value {
    let first = wait_ready(client, url).await["time"].clone();
    let mut seen = 0;
    let mut last = first;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "{url}: no two policy evaluations within 20 s (interval 300ms)");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let Some(s) = status(client, url).await else { continue };
        if s["time"] != last {
            seen += 1;
            last = s["time"].clone();
            if seen == 2 {
                return s;
            }
        }
    }
}

async fn chat(client: &reqwest::Client, url: &str, model: &str) -> (u16, String, Value) {
    let r = client
        .post(format!("{url}/v1/chat/completions"))
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    let code = r.status().as_u16();
    let backend = r.headers().get("x-tollgate-backend").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    (code, backend, r.json().await.unwrap_or(Value::Null))
}

fn budget<'a>(s: &'a Value, name: &str) -> &'a Value {
    s["budgets"].as_array().unwrap().iter().find(|b| b["name"] == name).unwrap()
}

fn backend_state(s: &Value, route: &str, backend: &str) -> String {
    let r = s["routes"].as_array().unwrap().iter().find(|r| r["name"] == route).unwrap();
    let b = r["status"]["backends"].as_array().unwrap().iter().find(|b| b["name"] == backend).unwrap();
    b["state"].as_str().unwrap().to_string()
}

/// A directory of its own per call (pid + counter), so no two tests share files.
fn temp_dir(name: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("tollgate-local-{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_cross_routes_rotate_backends_recover_and_spend_survives_sigkill() {
    let dir = temp_dir("loop");
    let state = dir.join("state.json");
    write_manifests(&dir, "1");
    let client = reqwest::Client::new();
    let mut local = start(&dir, &state);
    wait_ready(&client, &local.url).await;

    // 1. Budget: each step spends $0.002 on `solo` (10% of the limit) and asks `chat` who serves.
    let mut states = vec![];
    let mut chat_backends = vec![];
    let mut openai_served = 0u64;
    let mut solo_codes = vec![];
    for _ in 0..14 {
        let (code, backend, body) = chat(&client, &local.url, "solo").await;
        solo_codes.push((code, body["error"]["code"].as_str().unwrap_or("").to_string()));
        if code == 200 {
            assert_eq!(backend, "openai");
            openai_served += 1;
        }
        let (code, backend, _) = chat(&client, &local.url, "chat").await;
        assert_eq!(code, 200, "chat always has a backend");
        if backend == "openai" {
            openai_served += 1;
        }
        chat_backends.push(backend);
        let s = settle(&client, &local.url).await;
        let st = budget(&s, "openai-window")["status"]["state"].as_str().unwrap_or("Ok").to_string();
        if states.last() != Some(&st) {
            states.push(st);
        }
    }
    assert_eq!(states, ["Ok", "Warning", "Deprioritized", "Exhausted"], "escalation order");
    // What clients received: chat moved from openai to deepseek; solo went to 429 budget_exhausted.
    assert_eq!(chat_backends.first().map(String::as_str), Some("openai"));
    assert_eq!(chat_backends.last().map(String::as_str), Some("deepseek"));
    let first_rejection = solo_codes.iter().position(|(c, _)| *c == 429).expect("solo rejected after Drain");
    assert!(solo_codes[first_rejection..].iter().all(|(c, e)| *c == 429 && e == "budget_exhausted"), "{solo_codes:?}");
    assert!(solo_codes[..first_rejection].iter().all(|(c, _)| *c == 200));

    // Spend is exact: $0.002000 per openai answer, nothing else.
    let s = settle(&client, &local.url).await;
    let spent = budget(&s, "openai-window")["status"]["spent"].as_str().unwrap().to_string();
    let expected = format!("0.{:06}", openai_served * 2000);
    assert_eq!(spent, expected, "{openai_served} openai answers");

    // 2. Health: mistral fails every request; clients still get answers (failover to qwen).
    // 40 requests: mistral is picked first for about half of them (weighted choice), so it sees
    // at least minRequests (4) attempts except with odds of about 1e-8.
    for _ in 0..40 {
        let (code, backend, _) = chat(&client, &local.url, "flaky").await;
        assert_eq!((code, backend.as_str()), (200, "qwen"));
    }
    let s = settle(&client, &local.url).await;
    assert_eq!(backend_state(&s, "flaky", "mistral"), "Ejected");
    // Fix the backend by editing the manifest: applied live, then staged recovery.
    write_manifests(&dir, "0");
    let mut seen = vec!["Ejected".to_string()];
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && seen.last().map(String::as_str) != Some("Active") {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let s = status(&client, &local.url).await.unwrap();
        let st = backend_state(&s, "flaky", "mistral");
        if seen.last() != Some(&st) {
            seen.push(st);
        }
    }
    assert_eq!(seen, ["Ejected", "Ramping", "Active"], "ejection then staged recovery");

    // 3. SIGKILL mid-window, restart on the same state file: spend exactly preserved.
    let before = settle(&client, &local.url).await;
    let spent_before = budget(&before, "openai-window")["status"]["spent"].clone();
    local.child.kill().unwrap(); // SIGKILL
    local.child.wait().unwrap();
    let local = start(&dir, &state);
    let after = settle(&client, &local.url).await;
    assert_eq!(budget(&after, "openai-window")["status"]["spent"], spent_before, "spend preserved exactly");
    assert_eq!(budget(&after, "openai-window")["status"]["state"], "Exhausted", "no de-escalation inside the window");
    let after = settle(&client, &local.url).await;
    assert_eq!(budget(&after, "openai-window")["status"]["spent"], spent_before, "nothing counted twice");
    let (code, _, body) = chat(&client, &local.url, "solo").await;
    assert_eq!((code, body["error"]["code"].as_str()), (429, Some("budget_exhausted")));
    drop(local);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_corrupt_state_file_is_refused_clearly() {
    let dir = temp_dir("corrupt");
    write_manifests(&dir, "0");
    let state = dir.join("state.json");
    std::fs::write(&state, b"{\"version\": 1, \"decision\": {\"budgets\": [tru").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["local", "--listen", "127.0.0.1:0", "-f"])
        .arg(&dir)
        .arg("--state")
        .arg(&state)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is corrupt") && stderr.contains("refusing to start rather than reset spend"), "{stderr}");
    // The file is left as it was.
    assert!(std::fs::read_to_string(&state).unwrap().ends_with("[tru"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn invalid_manifests_refuse_to_start_naming_the_field() {
    let dir = temp_dir("invalid");
    std::fs::write(dir.join("routes.yaml"), ROUTES.replace("ERROR_RATE", "2")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["local", "--listen", "127.0.0.1:0", "-f"])
        .arg(&dir)
        .arg("--state")
        .arg(dir.join("s.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("document 3: ModelRoute default/flaky: spec.backends[0].endpoint.mock.errorRate"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
