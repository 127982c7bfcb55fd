//! Latency health end to end (issue 15), against the real `tollgate local` binary: a slow mock
//! backend is ejected for latency, with its evidence in `/status` and in the printed events,
//! and traffic moves to the fast one.
//!
//! Setup: one route, two mock backends of one tier at equal weights: `fast` answers after 5ms,
//! `slow` after 400ms (its p95 bucket is (250ms, 500ms]). `health.latency`: trip 250ms over 1m
//! with at least 10 answers; `maxEjectedPercent: 50` lets one of the two go; the ejection lasts
//! 10m, longer than the test. Phase 1 sends requests (half of them streamed, where the time to
//! the first chunk counts) in rounds of 8 concurrent ones until `/status` shows `slow` Ejected;
//! phase 2 sends 40 more. Printed: time from the first request to the ejection seen in
//! `/status`, the requests it took, and each phase's traffic shares.

mod common;

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::local::Local;
use common::proc::{TempDir, free_port, series, wait_until};

const MANIFEST: &str = "apiVersion: tollgate.dev/v1alpha1
kind: ModelRoute
metadata: {name: chat}
spec:
  backends:
    - name: fast
      provider: prov-fast
      model: m-fast
      weight: 50
      endpoint: {mock: {latency: 5ms}}
      pricing: {input: \"1.00\", output: \"1.00\"}
    - name: slow
      provider: prov-slow
      model: m-slow
      weight: 50
      endpoint: {mock: {latency: 400ms}}
      pricing: {input: \"1.00\", output: \"1.00\"}
  health:
    latency: {trip: 250ms, window: 1m, minRequests: 10}
    ejection: {base: 10m, max: 30m}
    maxEjectedPercent: 50
";

fn backend(s: &Value, name: &str) -> Value {
    let r = s["routes"].as_array().unwrap().iter().find(|r| r["name"] == "chat").unwrap();
    r["status"]["backends"].as_array().unwrap().iter().find(|b| b["name"] == name).unwrap().clone()
}

/// One request (streamed when `stream`); returns the backend that answered.
async fn ask(client: reqwest::Client, url: String, stream: bool) -> String {
    let body = json!({"model": "chat", "stream": stream, "messages": [{"role": "user", "content": "hi"}]});
    let r = client.post(format!("{url}/v1/chat/completions")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let backend = r.headers()["x-tollgate-backend"].to_str().unwrap().to_string();
    r.bytes().await.unwrap();
    backend
}

/// A round of `n` concurrent requests, every other one streamed; the backends that answered.
async fn round(local: &Local, n: usize) -> Vec<String> {
    let tasks: Vec<_> =
        (0..n).map(|i| tokio::spawn(ask(local.client.clone(), local.url.clone(), i % 2 == 0))).collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn share(answers: &[String], name: &str) -> f64 {
    answers.iter().filter(|b| *b == name).count() as f64 / answers.len() as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_backend_is_ejected_for_latency_and_traffic_moves_to_the_fast_one() {
    let root = TempDir::new("latency");
    let dir = root.join("manifests");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("route.yaml"), MANIFEST).unwrap();
    let metrics_port = free_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let local = Local::start(root.path(), &dir, &["--interval", "200ms", "--metrics-listen", &metrics]).await;
    let first = local.ready().await;
    assert_eq!(backend(&first, "slow")["state"], "Active");

    // Phase 1: traffic until the slow backend is out (at most 30 rounds of 8).
    let start = Instant::now();
    let mut before = Vec::new();
    let mut ejected = None;
    for _ in 0..30 {
        before.extend(round(&local, 8).await);
        let s = local.status().await.unwrap();
        if backend(&s, "slow")["state"] == "Ejected" {
            ejected = Some(s);
            break;
        }
    }
    let s = match ejected {
        Some(s) => s,
        None => {
            // The last answers may still be on their way into an evaluation.
            wait_until("slow Ejected in /status", Duration::from_secs(10), || async {
                local.status().await.is_some_and(|s| backend(&s, "slow")["state"] == "Ejected")
            })
            .await;
            local.status().await.unwrap()
        }
    };
    let to_eject = start.elapsed();
    let slow = backend(&s, "slow");
    // 400ms answers land in (250ms, 500ms]; a loaded machine may push a few past 500ms.
    let slow_p95 = slow["latencyP95"].as_str().unwrap().to_string();
    assert!(["500ms", "1s"].contains(&slow_p95.as_str()), "{slow}");
    assert_eq!(slow["latencyBudget"], "250ms", "{slow}");
    let answers = slow["latencyRequests"].as_u64().unwrap();
    assert!(answers >= 10, "{slow}");
    assert_eq!(slow["trips"], 1);
    assert!(slow["reason"].as_str().unwrap().starts_with("ejected for latency until "), "{slow}");
    let fast = backend(&s, "fast");
    assert_eq!(fast["state"], "Active");
    assert_eq!(fast["latencyBudget"], "250ms");
    let fast_p95 = fast["latencyP95"].as_str().unwrap().to_string();
    assert!(["5ms", "10ms", "25ms", "50ms", "100ms", "250ms"].contains(&fast_p95.as_str()), "{fast}");

    // The event, with its evidence, as `local` prints it.
    wait_until("the BackendEjected event in the output", Duration::from_secs(10), || async {
        local.proc.stdout().contains("BackendEjected")
    })
    .await;
    let out = local.proc.stdout();
    let event = out.lines().find(|l| l.contains("BackendEjected")).unwrap().to_string();
    assert!(event.contains(&format!("backend slow ejected: p95 latency {slow_p95} over 1m")), "{event}");
    assert!(event.contains("above trip 250ms; out for 10m"), "{event}");
    assert!(!out.lines().any(|l| l.contains("BackendEjected") && l.contains("backend fast")), "{out}");

    // The exposition the controller would read: none of the slow backend's answers within 250ms,
    // every one it answered counted.
    let text = local.client.get(format!("http://127.0.0.1:{metrics_port}/metrics")).send().await.unwrap();
    let text = text.text().await.unwrap();
    let l = |le: &'static str| {
        [("route", "chat"), ("backend", "slow"), ("provider", "prov-slow"), ("model", "m-slow"), ("le", le)]
    };
    let in_250 = series(&text, "tollgate_health_latency_seconds_bucket", &l("0.25")).unwrap();
    let all = series(&text, "tollgate_health_latency_seconds_bucket", &l("+Inf")).unwrap();
    assert_eq!(in_250, 0.0, "{text}");
    let slow_before = before.iter().filter(|b| *b == "slow").count();
    assert!(all >= slow_before as f64);

    // Phase 2: everything goes to the fast backend.
    let mut after = Vec::new();
    for _ in 0..5 {
        after.extend(round(&local, 8).await);
    }
    println!(
        "latency ejection: slow (400ms mock, p95 bucket {}) ejected {:.2}s after the first request, after {} requests ({} answered by slow, {answers} in its window); fast p95 {fast_p95}",
        slow["latencyP95"].as_str().unwrap(),
        to_eject.as_secs_f64(),
        before.len(),
        slow_before,
    );
    println!(
        "traffic shares: before ejection fast {:.0}% / slow {:.0}% of {}; after fast {:.0}% / slow {:.0}% of {}",
        100.0 * share(&before, "fast"),
        100.0 * share(&before, "slow"),
        before.len(),
        100.0 * share(&after, "fast"),
        100.0 * share(&after, "slow"),
        after.len()
    );
    println!("event: {event}");
    assert!(slow_before > 0, "slow served before its ejection");
    assert_eq!(share(&after, "fast"), 1.0, "{after:?}");
}
