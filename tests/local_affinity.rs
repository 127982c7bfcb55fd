//! Cache affinity end to end (issue 15), against the real `tollgate local` binary: the same
//! conversation traffic with and without `spec.affinity`, through one budget-driven rotation,
//! on mock backends that model a prompt cache (`endpoint.mock.promptCache`).
//!
//! Setup: one route, four backends of one tier at equal weights and equal prices, each its own
//! provider with a budget. Provider `prov-a`'s budget is tiny and drains its backend after the
//! first phase (a rotation: `a` leaves, the others keep serving). 24 conversations × 6 turns,
//! sequential, turns 1–3 before the rotation and 4–6 after it (the test waits until `a` is
//! OverBudget in `/status`). A turn repeats its conversation's opening (system prompt + first
//! user message), which the mock caches per backend for 5 minutes: on the backend that saw it,
//! a turn reads 1500 of its 2000 prompt tokens from the cache.
//!
//! Prices: input $1/1M, cached input $0.10/1M, output $1/1M: a miss costs $0.0021, a hit
//! $0.00075. Without affinity a conversation's turns spread over the backends and each first
//! visit to a backend is a miss; with affinity a conversation misses once, plus once more if
//! its backend is drained. Printed: cached share (cached / prompt tokens, from the answers'
//! usage) and total spend (the four budgets' `spent` in `/status`, which the test first waits
//! to equal the spend it computes from the answers' usage, in pico-USD).

mod common;

use std::time::Duration;

use serde_json::{Value, json};

use common::local::Local;
use common::proc::{TempDir, usd_picos, wait_until};

const CONVERSATIONS: usize = 24;
const TURNS: usize = 6;
const BACKENDS: [&str; 4] = ["a", "b", "c", "d"];
/// Pico-USD per token: input $1/1M, cached input $0.10/1M, output $1/1M.
const INPUT: i128 = 1_000_000;
const CACHED: i128 = 100_000;
const OUTPUT: i128 = 1_000_000;

fn manifests(affinity: bool) -> String {
    let mut out = String::from(
        "apiVersion: tollgate.dev/v1alpha1\nkind: ModelRoute\nmetadata: {name: chat}\nspec:\n  backends:\n",
    );
    for b in BACKENDS {
        out.push_str(&format!(
            "    - name: {b}\n      provider: prov-{b}\n      model: m-{b}\n      weight: 25\n      endpoint: {{mock: {{latency: 1ms, inputTokens: 2000, cachedInputTokens: 1500, cacheWriteTokens: 0, outputTokens: 100, reasoningTokens: 0, promptCache: {{ttl: 5m}}}}}}\n      pricing: {{input: \"1.00\", cachedInput: \"0.10\", output: \"1.00\"}}\n"
        ));
    }
    if affinity {
        out.push_str("  affinity: {keys: [Prefix]}\n");
    }
    for b in BACKENDS {
        let limit = if b == "a" { "0.002" } else { "1000" };
        out.push_str(&format!(
            "---\napiVersion: tollgate.dev/v1alpha1\nkind: ProviderBudget\nmetadata: {{name: prov-{b}}}\nspec:\n  provider: prov-{b}\n  limit: \"{limit}\"\n  window: {{period: Rolling, duration: 70000000h}}\n  thresholds:\n    - {{percent: 100, action: Drain}}\n"
        ));
    }
    out
}

/// The body of one turn: the conversation's system prompt and opening, then earlier turns.
fn turn(conv: usize, n: usize) -> Value {
    let mut messages = vec![
        json!({"role": "system", "content": "You answer billing questions for the finance team, briefly."}),
        json!({"role": "user", "content": format!("Conversation {conv}: why did the invoice change?")}),
    ];
    for i in 1..n {
        messages.push(json!({"role": "assistant", "content": format!("Answer {i}.")}));
        messages.push(json!({"role": "user", "content": format!("Follow-up {i}?")}));
    }
    json!({"model": "chat", "messages": messages})
}

/// What one run measured.
#[derive(Debug, Default)]
struct Run {
    prompt_tokens: u64,
    cached_tokens: u64,
    /// Spend computed from the answers' usage, pico-USD.
    computed_picos: i128,
    /// Spend the budgets report, pico-USD.
    spent_picos: i128,
    /// Requests served by `a` after it was drained.
    after_rotation_on_a: usize,
}

impl Run {
    fn cached_share(&self) -> f64 {
        self.cached_tokens as f64 / self.prompt_tokens as f64
    }
}

fn total_spent(s: &Value) -> i128 {
    s["budgets"].as_array().unwrap().iter().map(|b| b["status"]["spent"].as_str().map(usd_picos).unwrap_or(0)).sum()
}

fn backend_state(s: &Value, backend: &str) -> String {
    let r = s["routes"].as_array().unwrap().iter().find(|r| r["name"] == "chat").unwrap();
    let b = r["status"]["backends"].as_array().unwrap().iter().find(|b| b["name"] == backend).unwrap();
    b["state"].as_str().unwrap_or_default().to_string()
}

async fn run(affinity: bool) -> Run {
    let root = TempDir::new(if affinity { "affinity-on" } else { "affinity-off" });
    let dir = root.join("manifests");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("routes.yaml"), manifests(affinity)).unwrap();
    let local = Local::start(root.path(), &dir, &["--interval", "200ms"]).await;

    let mut out = Run::default();
    for phase in [1..=3, 4..=TURNS] {
        let after = *phase.start() > 1;
        for n in phase {
            for conv in 0..CONVERSATIONS {
                let r = local
                    .client
                    .post(format!("{}/v1/chat/completions", local.url))
                    .json(&turn(conv, n))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "turn {n} of conversation {conv}");
                let backend = r.headers()["x-tollgate-backend"].to_str().unwrap().to_string();
                let v: Value = r.json().await.unwrap();
                let prompt = v["usage"]["prompt_tokens"].as_u64().unwrap();
                let cached = v["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap();
                let output = v["usage"]["completion_tokens"].as_u64().unwrap();
                out.prompt_tokens += prompt;
                out.cached_tokens += cached;
                out.computed_picos +=
                    i128::from(prompt - cached) * INPUT + i128::from(cached) * CACHED + i128::from(output) * OUTPUT;
                if after && backend == "a" {
                    out.after_rotation_on_a += 1;
                }
            }
        }
        if !after {
            // The rotation: prov-a's budget drains backend `a` (one miss, $0.0021, is past its $0.002).
            wait_until("backend a drained (OverBudget)", Duration::from_secs(20), || async {
                local.status().await.is_some_and(|s| backend_state(&s, "a") == "OverBudget")
            })
            .await;
        }
    }
    let want = out.computed_picos;
    wait_until("the budgets' spend to reach the answers' spend", Duration::from_secs(20), || async {
        local.status().await.is_some_and(|s| total_spent(&s) == want)
    })
    .await;
    out.spent_picos = total_spent(&local.status().await.unwrap());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn affinity_keeps_prompt_caches_warm_through_a_budget_rotation() {
    let without = run(false).await;
    let with = run(true).await;
    let usd = |p: i128| format!("{}.{:012}", p / 1_000_000_000_000, p % 1_000_000_000_000);
    for (name, r) in [("without affinity", &without), ("with affinity", &with)] {
        println!(
            "{name}: cached share {:.1}% ({} of {} prompt tokens), total spend ${}, requests on drained `a` after the rotation: {}",
            100.0 * r.cached_share(),
            r.cached_tokens,
            r.prompt_tokens,
            usd(r.spent_picos),
            r.after_rotation_on_a
        );
    }
    println!(
        "affinity/without: spend ratio {:.3}, cached share +{:.1} points",
        with.spent_picos as f64 / without.spent_picos as f64,
        100.0 * (with.cached_share() - without.cached_share())
    );
    // Same traffic in both runs.
    assert_eq!(with.prompt_tokens, without.prompt_tokens);
    // The rotation held in both runs: nothing reached `a` once drained.
    assert_eq!((with.after_rotation_on_a, without.after_rotation_on_a), (0, 0));
    // Affinity: one miss per conversation, plus one per conversation moved off `a`; so at
    // least (6 − 2) / 6 of the turns hit. Without it, every first visit to one of four
    // backends misses (about 3.3 of 6 turns hit nothing).
    let floor = CONVERSATIONS as u64 * (TURNS as u64 - 2) * 1500;
    assert!(with.cached_tokens >= floor, "{with:?}");
    assert!(with.cached_share() > without.cached_share(), "with {with:?} / without {without:?}");
    assert!(with.spent_picos < without.spent_picos, "with {with:?} / without {without:?}");
}
