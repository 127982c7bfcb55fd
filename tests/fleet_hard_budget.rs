//! Three `tollgate gateway` processes on one Hard budget (issue 13), with the test playing the
//! controller's re-grant role: every 150 ms it scrapes each live gateway's exact openai spend
//! from `/metrics`, runs the pure `regrant` (the function a controller uses) and rewrites the
//! allowances file each gateway polls (`--allowances`, `--instance`). One gateway is killed
//! (SIGKILL) mid-run; it keeps its grant counted, the others keep within the limit.
//!
//! Every openai request costs exactly $0.002 (mock: 1000 input + 1000 output tokens at $1/1M)
//! and its worst case is the same (the mock reports those counts whatever it is asked), so the
//! spend is counted exactly from the answers: 200s with `x-tollgate-backend: openai`. The sum
//! over the three gateways must be ≤ the $0.10 limit, while the load (3 × 4 clients × 40
//! requests, $0.96 if all went to openai) would overshoot it nearly tenfold. Each live
//! gateway's metered openai spend must also equal its ledger's settled spend (both on
//! `/metrics`): an answer served before a gateway knew the Hard budget would be metered but
//! never reserved, spent outside every grant. (That happened: the allowances file was first
//! read by a polling task, which on a loaded machine could run after the gateway had started
//! serving; the load starts as soon as the last gateway is ready.)
//!
//! This exercises the data plane and the grant logic across real processes; the controller's
//! own grants in a cluster are tested by `tests/e2e_hard.rs` (docs/budgets.md, in a cluster).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::proc::{Proc, TempDir, free_port, series, wait_until, write_atomic};
use serde_json::json;
use tollgate::config::allowances::{Allowances, HardBudgetGrants};
use tollgate::config::{CONFIG_VERSION, GatewayConfig};
use tollgate::policy::allowance::{GatewayView, GrantPolicy, regrant};
use tollgate::policy::money::Money;

const COST_PICOS: i128 = 2_000_000_000;
const LIMIT: &str = "0.10";

fn config() -> GatewayConfig {
    let mock = |n: u32| json!({"mock": {"latency": "50ms", "inputTokens": n, "cachedInputTokens": 0, "cacheWriteTokens": 0, "outputTokens": n, "reasoningTokens": 0}});
    let b = |name: &str, provider: &str, tier: u32| {
        json!({"name": name, "provider": provider, "family": "OpenAI", "model": format!("{name}-model"), "tier": tier,
               "weight": 1, "state": "Active", "serving": true, "endpoint": mock(1000),
               "pricing": {"input": "1.00", "cachedInput": "1.00", "cacheWrite": "1.00", "output": "1.00", "reasoning": "1.00"}})
    };
    let route = json!({"name": "chat", "model": "chat", "strategy": "Priority", "mode": "Enforce", "state": "Serving",
                       "backends": [b("openai", "openai", 0), b("deepseek", "deepseek", 1)]});
    let mut c: GatewayConfig = serde_json::from_value(
        json!({"version": CONFIG_VERSION, "revision": "", "namespace": "team-a", "routes": [route]}),
    )
    .unwrap();
    c.revision = c.compute_revision();
    c
}

struct Gw {
    id: String,
    proc: Proc,
    url: String,
    metrics: String,
}

fn spawn(dir: &TempDir, id: &str) -> Gw {
    let (port, mport) = (free_port(), free_port());
    let args: Vec<String> = [
        "gateway",
        "--config",
        dir.join("config.json").to_str().unwrap(),
        "--allowances",
        dir.join("allowances.json").to_str().unwrap(),
        "--instance",
        id,
        "--reload-interval",
        "50ms",
        "--workers",
        "1",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--metrics-listen",
        &format!("127.0.0.1:{mport}"),
    ]
    .map(String::from)
    .to_vec();
    Gw {
        id: id.to_string(),
        proc: Proc::spawn(&format!("gateway {id}"), &args, dir.join(&format!("{id}.log"))),
        url: format!("http://127.0.0.1:{port}"),
        metrics: format!("http://127.0.0.1:{mport}/metrics"),
    }
}

fn doc(grants: &BTreeMap<String, Money>) -> Vec<u8> {
    let a = Allowances {
        namespace: "team-a".into(),
        budgets: vec![HardBudgetGrants {
            name: "openai-hard".into(),
            provider: "openai".into(),
            models: vec![],
            limit: LIMIT.into(),
            window_start: 0,
            grants: grants.iter().map(|(k, v)| (k.clone(), v.to_decimal(6))).collect(),
        }],
    };
    a.to_json().into_bytes()
}

/// A gateway's `/metrics` text, `None` when it does not answer.
async fn metrics_text(client: &reqwest::Client, g: &Gw) -> Option<String> {
    client.get(&g.metrics).send().await.ok()?.text().await.ok()
}

/// A gateway's exact openai spend from `/metrics` (`tollgate_cost_nanousd_total`, exported at 0
/// from the config's load, so an absent series fails), `None` when it does not answer.
async fn spend(client: &reqwest::Client, g: &Gw) -> Option<Money> {
    Some(metered(&metrics_text(client, g).await?))
}

fn metered(text: &str) -> Money {
    let labels = [("route", "chat"), ("backend", "openai"), ("provider", "openai"), ("model", "openai-model")];
    let nanos = series(text, "tollgate_cost_nanousd_total", &labels)
        .unwrap_or_else(|| panic!("no tollgate_cost_nanousd_total{labels:?} in /metrics:\n{text}"));
    Money::from_picos(nanos as i128 * 1000)
}

/// One gateway's openai spend as metered, and its Hard budget's ledger as it exposes it.
#[derive(Debug)]
struct Books {
    metered: Money,
    settled: Money,
    granted: Money,
}

/// The books of a gateway that holds the Hard budget (every series must be there: an absent
/// one would read as zero and satisfy `settled <= granted`), `None` when it does not answer.
async fn ledger(client: &reqwest::Client, g: &Gw) -> Option<Books> {
    let text = metrics_text(client, g).await?;
    // The ledger's gauges are in USD (f64): read to the nearest nano-USD, exact for the spend
    // (multiples of $0.002), within a nano-USD for a grant.
    let usd = |name: &str| {
        let v = series(&text, name, &[("budget", "openai-hard")])
            .unwrap_or_else(|| panic!("{}: no {name}{{budget=\"openai-hard\"}} in /metrics:\n{text}", g.id));
        Money::from_picos((v * 1e9).round() as i128 * 1000)
    };
    Some(Books {
        metered: metered(&text),
        settled: usd("tollgate_hard_budget_settled_usd"),
        granted: usd("tollgate_hard_budget_granted_usd"),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_gateways_stay_within_one_hard_budget_and_a_killed_one_spends_only_its_grant() {
    let dir = TempDir::new("fleet-hard");
    write_atomic(&dir.join("config.json"), config().to_json().as_bytes());
    let limit: Money = LIMIT.parse().unwrap();
    let mut grants: BTreeMap<String, Money> = BTreeMap::new();
    write_atomic(&dir.join("allowances.json"), &doc(&grants));
    let gws: Vec<Gw> = (0..3).map(|i| spawn(&dir, &format!("gw-{i}"))).collect();
    let client = reqwest::Client::new();
    for g in &gws {
        wait_until(&format!("{} ready", g.id), Duration::from_secs(20), || async {
            client.get(format!("{}/readyz", g.url)).send().await.is_ok_and(|r| r.status() == 200)
        })
        .await;
    }

    // The load: 4 clients per gateway, 40 requests each.
    let openai_ok = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for g in &gws {
        for _ in 0..4 {
            let (client, url, openai_ok) = (client.clone(), g.url.clone(), openai_ok.clone());
            tasks.push(tokio::spawn(async move {
                let mut codes = BTreeMap::<String, u64>::new();
                for _ in 0..40 {
                    let body =
                        json!({"model": "chat", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]});
                    let Ok(r) = client.post(format!("{url}/v1/chat/completions")).json(&body).send().await else {
                        *codes.entry("unreachable".into()).or_default() += 1;
                        continue;
                    };
                    let backend = r.headers().get("x-tollgate-backend").and_then(|v| v.to_str().ok()).unwrap_or("-");
                    if r.status() == 200 && backend == "openai" {
                        openai_ok.fetch_add(1, Ordering::SeqCst);
                    }
                    *codes.entry(format!("{} {backend}", r.status().as_u16())).or_default() += 1;
                    let _ = r.bytes().await;
                }
                codes
            }));
        }
    }

    // The controller's role: scrape, re-grant, write; kill gw-1 after a few rounds.
    let policy = GrantPolicy { floor: "0.01".parse().unwrap(), burn_intervals: 2 };
    let mut alive: BTreeMap<String, bool> = gws.iter().map(|g| (g.id.clone(), true)).collect();
    let mut last_spend: BTreeMap<String, Money> = BTreeMap::new();
    let started = Instant::now();
    let mut round = 0;
    let loader = tokio::spawn(async move {
        let mut all = BTreeMap::<String, u64>::new();
        for t in tasks {
            for (k, n) in t.await.unwrap() {
                *all.entry(k).or_default() += n;
            }
        }
        all
    });
    while !loader.is_finished() {
        assert!(started.elapsed() < Duration::from_secs(120), "the load did not finish in 120 s");
        round += 1;
        if round == 4 {
            gws[1].proc.signal("KILL");
            alive.insert("gw-1".into(), false);
        }
        let mut views = BTreeMap::new();
        for g in &gws {
            let is_alive = alive[&g.id];
            let spent = if is_alive { spend(&client, g).await } else { None };
            let spent = spent.or_else(|| last_spend.get(&g.id).copied()).unwrap_or(Money::ZERO);
            let burn = spent.saturating_sub(last_spend.get(&g.id).copied().unwrap_or(Money::ZERO));
            last_spend.insert(g.id.clone(), spent);
            let granted = grants.get(&g.id).copied().unwrap_or(Money::ZERO);
            views.insert(g.id.clone(), GatewayView { granted, spent, burn, alive: is_alive });
        }
        grants = regrant(limit, &views, policy);
        assert!(grants.values().copied().sum::<Money>() <= limit);
        write_atomic(&dir.join("allowances.json"), &doc(&grants));
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let outcomes = loader.await.unwrap();

    let total = Money::from_picos(COST_PICOS * openai_ok.load(Ordering::SeqCst) as i128);
    let mut metered = Money::ZERO;
    let mut books = BTreeMap::new();
    for g in gws.iter().filter(|g| alive[&g.id]) {
        let b = ledger(&client, g).await.unwrap();
        metered += b.metered;
        books.insert(g.id.clone(), b);
    }
    println!("three gateways, one Hard budget of ${LIMIT}, gw-1 killed at round 4 of {round}:");
    println!("  openai spend from the answers: ${total} (limit ${limit}); live gateways' metered: ${metered}");
    println!("  grants: {grants:?}");
    println!("  live gateways' books: {books:?}");
    println!("  outcomes: {outcomes:?}");
    // Every openai dollar a live gateway metered went through its ledger (an answer served
    // while the gateway knew no Hard budget yet would be metered but never reserved), and its
    // ledger kept within the grant it holds.
    for (id, b) in &books {
        assert_eq!(b.metered, b.settled, "{id} metered openai spend its Hard budget ledger never held: {b:?}");
        assert!(b.settled <= b.granted, "{id} spent beyond its grant: {b:?}");
    }
    assert!(total <= limit, "the fleet overshot the Hard budget: {total} > {limit}");
    assert!(metered <= total, "live gateways metered {metered}, more than the answers show ({total})");
    // What the killed gateway was granted and had not spent when last scraped is lost to the
    // others (grants never shrink); besides that, the live gateways use up the limit to within
    // one worst case each.
    let dead_unspent = grants["gw-1"].saturating_sub(last_spend["gw-1"]);
    let floor = limit.saturating_sub(dead_unspent).saturating_sub(Money::from_picos(COST_PICOS * 3));
    assert!(total >= floor, "the fleet stopped far below the limit: {total} < {floor}");
    assert!(outcomes.keys().any(|k| k == "200 deepseek"), "nothing fell over to deepseek: {outcomes:?}");
    for g in &gws {
        if alive[&g.id] {
            let logs = g.proc.logs();
            assert!(logs.contains("allowances applied"), "{} never applied allowances:\n{logs}", g.id);
        }
    }
}
