//! Hard budgets in `tollgate local` (issue 13), against the real binary: the quick start's
//! routes (examples/quickstart/routes.yaml, unchanged) and its `openai-daily` budget of $3.00,
//! once as shipped (Soft) and once with `enforcement: Hard`, under the same concurrent burst
//! in the same run: 16 clients × 50 requests alternating `chat` and `reasoning`, enough to
//! spend about $4.9 on openai if nothing stopped it.
//!
//! Hard: the openai spend ends ≤ $3.00 exactly (pico-dollars, no floats), equal to the settled
//! spend of the gateway's ledger; `chat` is rerouted off openai and `reasoning` (openai only)
//! answers 429 `budget_exhausted`. Soft: its overshoot is printed beside it (run with
//! `--nocapture` to see both). The window is Rolling and ~8000 years long (epoch-aligned) so no
//! run crosses a boundary; the policy interval is local's default (5 s), as a new user runs it.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::local::Local;
use common::proc::{TempDir, free_port, usd_picos};

const LIMIT_PICOS: i128 = 3_000_000_000_000;

fn budgets(enforcement: &str) -> String {
    format!(
        r#"
apiVersion: tollgate.dev/v1alpha1
kind: ProviderBudget
metadata:
  name: openai-daily
spec:
  provider: openai
  limit: "3.00"
  window: {{period: Rolling, duration: 70000000h}}
  thresholds:
    - {{percent: 50, action: Warn}}
    - {{percent: 80, action: Deprioritize}}
    - {{percent: 100, action: Drain}}{enforcement}
---
apiVersion: tollgate.dev/v1alpha1
kind: ProviderBudget
metadata:
  name: deepseek-daily
spec:
  provider: deepseek
  limit: "20"
  window: {{period: Rolling, duration: 70000000h}}
"#
    )
}

async fn start(tag: &str, enforcement: &str) -> (Local, TempDir, String) {
    let dir = TempDir::new(tag);
    let manifests = dir.join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    let routes =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/quickstart/routes.yaml")).unwrap();
    std::fs::write(manifests.join("routes.yaml"), routes).unwrap();
    std::fs::write(manifests.join("budgets.yaml"), budgets(enforcement)).unwrap();
    let metrics_port = free_port();
    let local = Local::start(dir.path(), &manifests, &["--metrics-listen", &format!("127.0.0.1:{metrics_port}")]).await;
    (local, dir, format!("http://127.0.0.1:{metrics_port}/metrics"))
}

/// (route, backend or "-", status, error code) → count.
type Tally = BTreeMap<(String, String, u16, String), u64>;

async fn burst(local: &Local) -> Tally {
    let tally: Arc<Mutex<Tally>> = Arc::default();
    let mut tasks = Vec::new();
    for c in 0..16 {
        let (client, url, tally) = (local.client.clone(), local.url.clone(), tally.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                let model = if (c + i) % 2 == 0 { "chat" } else { "reasoning" };
                let r = client
                    .post(format!("{url}/v1/chat/completions"))
                    .json(&json!({"model": model, "messages": [{"role": "user", "content": "Say hello."}]}))
                    .send()
                    .await
                    .unwrap();
                let code = r.status().as_u16();
                let backend = r.headers().get("x-tollgate-backend").and_then(|v| v.to_str().ok()).unwrap_or("-");
                let backend = backend.to_string();
                let body: Value = r.json().await.unwrap_or(Value::Null);
                let err = body["error"]["code"].as_str().unwrap_or("").to_string();
                *tally.lock().unwrap().entry((model.to_string(), backend, code, err)).or_default() += 1;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    std::mem::take(&mut *tally.lock().unwrap())
}

/// Waits until an evaluation after `after` has seen every request (two more evaluations).
async fn evaluated(local: &Local) -> Value {
    let mut last = local.ready().await["time"].clone();
    let mut seen = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "no two evaluations within 30 s; log:\n{}", local.proc.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Some(s) = local.status().await else { continue };
        if s["time"] != last {
            seen += 1;
            last = s["time"].clone();
            if seen == 2 {
                return s;
            }
        }
    }
}

fn openai(s: &Value) -> Value {
    s["budgets"].as_array().unwrap().iter().find(|b| b["name"] == "openai-daily").unwrap()["status"].clone()
}

fn count(t: &Tally, f: impl Fn(&(String, String, u16, String)) -> bool) -> u64 {
    t.iter().filter(|(k, _)| f(k)).map(|(_, n)| n).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hard_budget_holds_the_quickstart_limit_where_soft_overshoots() {
    let (soft, _soft_dir, _) = start("hard-budget-soft", "").await;
    let (hard, _hard_dir, hard_metrics) = start("hard-budget-hard", "\n  enforcement: Hard").await;

    let soft_tally = burst(&soft).await;
    let hard_tally = burst(&hard).await;
    let soft_status = openai(&evaluated(&soft).await);
    let hard_status = openai(&evaluated(&hard).await);

    let soft_spent = usd_picos(soft_status["spent"].as_str().unwrap());
    let hard_spent = usd_picos(hard_status["spent"].as_str().unwrap());
    let pct = |p: i128| format!("{}.{:02}%", p * 100 / LIMIT_PICOS, p * 10_000 / LIMIT_PICOS % 100);
    println!("limit $3.00, 16 clients × 50 requests (chat/reasoning alternating), local default interval:");
    println!("  Soft: openai spent ${} ({})", soft_status["spent"].as_str().unwrap(), pct(soft_spent));
    println!("  Hard: openai spent ${} ({})", hard_status["spent"].as_str().unwrap(), pct(hard_spent));
    println!("  Soft outcomes: {soft_tally:?}");
    println!("  Hard outcomes: {hard_tally:?}");
    println!("  Hard status.hard: {}", hard_status["hard"]);

    assert!(hard_spent <= LIMIT_PICOS, "Hard budget overshot: {hard_spent} picos; log:\n{}", hard.proc.logs());
    let hard_block = &hard_status["hard"];
    assert_eq!(
        usd_picos(hard_block["settled"].as_str().unwrap()),
        hard_spent,
        "the ledger's settled spend is the metered spend: {hard_block}"
    );
    assert_eq!(usd_picos(hard_block["reserved"].as_str().unwrap()), 0, "nothing reserved after the burst");
    assert!(usd_picos(hard_block["bound"].as_str().unwrap()) <= LIMIT_PICOS, "{hard_block}");
    assert!(hard_block["refused"].as_u64().unwrap() > 0, "{hard_block}");
    // The limit was actually approached: within one worst case of `reasoning` ($0.0435).
    assert!(hard_spent > LIMIT_PICOS - 50_000_000_000, "Hard stopped far below the limit: {hard_spent}");
    // Rerouted, then refused: chat attempts refused on openai-mini by admission (every chat
    // request still answered 200, by another backend), and reasoning (openai only) 429s.
    let text = hard.client.get(&hard_metrics).send().await.unwrap().text().await.unwrap();
    let outcomes = common::proc::request_outcomes(&text, "chat");
    let rerouted = outcomes.iter().find(|(b, o, _)| b == "openai-mini" && o == "budget_rejected").map_or(0, |x| x.2);
    println!("  Hard chat outcomes (metrics): {outcomes:?}");
    assert!(rerouted > 0, "no chat request was rerouted off openai-mini by admission: {outcomes:?}");
    assert_eq!(count(&hard_tally, |(m, _, c, _)| m == "chat" && *c != 200), 0, "{hard_tally:?}");
    let refused_metric = common::proc::series(
        &text,
        "tollgate_hard_budget_reservations_total",
        &[("budget", "openai-daily"), ("result", "refused")],
    );
    assert_eq!(refused_metric, hard_block["refused"].as_f64(), "the metric and status.hard agree");
    let refused = count(&hard_tally, |(m, _, c, e)| m == "reasoning" && *c == 429 && e == "budget_exhausted");
    assert!(refused > 0, "reasoning was never refused: {hard_tally:?}");
    assert_eq!(count(&hard_tally, |(_, _, c, _)| *c >= 500), 0, "{hard_tally:?}");
    // The comparison is only meaningful if the same burst overshoots without Hard enforcement.
    assert!(soft_spent > LIMIT_PICOS, "Soft did not overshoot in this run: {soft_spent}");
}
