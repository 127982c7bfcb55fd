//! Several gateway pods and the policy's Events through `tollgate controller` on a real API
//! server (`KUBECONFIG`; skips without).
//!
//! `several_gateway_pods_exact_spend`: two fake gateway Pods, each with its own `/metrics` (run
//! by the test), spend on one budget. Both get a checkpoint in the ProviderBudget status; one
//! pod's counters go down (a restarted gateway: counted from zero) while the other's go up; then
//! a pod is replaced by a new one (new UID): its checkpoint is dropped and the new pod's spend
//! counts from zero. After each step the spend is the exact decimal sum, written out by hand.
//!
//! `policy_events_on_the_api_server`: `BudgetWarning` (spend past the 80 % Warn threshold),
//! `RouteRejecting` (`onExhausted: Reject`, every backend drained by the budget),
//! `RouteFailOpen` (`onExhausted: Fallback`, same budget), `BackendEjected` then
//! `BackendRestored` (error rate over `trip`, a 2 s ejection, no ramp-up), each read back from
//! events.k8s.io on the server.
//!
//! Budgets use a Rolling window of 8760 h aligned to the Unix epoch, so a run does not cross a
//! window boundary (a Daily window would reset at midnight).

#[path = "common/cluster.rs"]
mod cluster;

use std::time::{Duration, Instant};

use cluster::*;
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::Api;
use serde_json::json;
use tollgate::api::{ModelRoute, ProviderBudget};

/// One signal interval (the controllers run with `--signal-interval 2s`) plus a pass, a watch
/// event and a status write.
const STEP: Duration = Duration::from_secs(8);

fn mock_backend(name: &str, provider: &str, model: &str) -> serde_json::Value {
    json!({"name": name, "provider": provider, "model": model, "endpoint": {"mock": {"latency": "1ms"}},
           "pricing": {"input": "1.00", "output": "2.00"}})
}

fn budget_doc(name: &str, provider: &str, limit: &str) -> serde_json::Value {
    json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "ProviderBudget", "metadata": {"name": name},
           "spec": {"provider": provider, "limit": limit, "window": {"period": "Rolling", "duration": "8760h"}}})
}

fn usd(nano: u64) -> Counters {
    Counters { ok: nano / 1_000_000, errors: 0, nanousd: nano }
}

/// (spent, sorted checkpoints (gateway UID, counter)) of a budget.
async fn spend(client: &Client, ns: &str, name: &str) -> Option<(String, Vec<(String, String)>)> {
    let st = Api::<ProviderBudget>::namespaced(client.clone(), ns).get(name).await.ok()?.status?;
    let mut cps: Vec<(String, String)> = st.checkpoints.into_iter().map(|c| (c.gateway, c.counter)).collect();
    cps.sort();
    Some((st.spent?, cps))
}

/// Waits until the budget shows exactly `spent` and these checkpoints.
async fn expect_spend(client: &Client, ns: &str, what: &str, spent: &str, mut cps: Vec<(&str, &str)>) {
    cps.sort();
    let want: Vec<(String, String)> = cps.iter().map(|(g, c)| (g.to_string(), c.to_string())).collect();
    let last = std::sync::Arc::new(std::sync::Mutex::new(None));
    let start = Instant::now();
    loop {
        let got = spend(client, ns, "fleet").await;
        if got.as_ref().is_some_and(|(s, c)| s == spent && *c == want) {
            println!("{what}: spent {spent}, checkpoints {want:?} ({:?})", start.elapsed());
            return;
        }
        *last.lock().unwrap() = got;
        assert!(
            start.elapsed() < STEP,
            "{what}: wanted spent {spent} and checkpoints {want:?}, last seen {:?}",
            last.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_gateway_pods_exact_spend() {
    let suite = Instant::now();
    let Some(client) = client_or_skip("e2e_fleet").await else { return };
    install_crds(&client).await;
    let ns = fresh_namespace(&client, "tollgate-fleet").await;
    let route = json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "ModelRoute", "metadata": {"name": "chat"},
                       "spec": {"backends": [mock_backend("m", "openai", "gpt-5-mini")]}});
    create::<ModelRoute>(&client, &ns, route).await;
    create::<ProviderBudget>(&client, &ns, budget_doc("fleet", "openai", "1000")).await;
    let _controller = Controller::start(&ns, "fleet-controller", &["--leader-election=false"]);

    let series = |g: &FakeGateway, nano: u64| g.set("chat", "m", "openai", "gpt-5-mini", usd(nano));
    // Two pods, each with its own counters: 1.5 and 2.25 USD.
    let (a, b) = (FakeGateway::default(), FakeGateway::default());
    series(&a, 1_500_000_000);
    series(&b, 2_250_000_000);
    let (pa, _task_a) = a.start().await;
    let (pb, _task_b) = b.start().await;
    let uid_a = gateway_pod(&client, &ns, "gateway-a", pa).await;
    let uid_b = gateway_pod(&client, &ns, "gateway-b", pb).await;
    expect_spend(&client, &ns, "two pods", "3.750000", vec![(&uid_a, "1.5"), (&uid_b, "2.25")]).await;

    // Pod a restarts: its metrics come back lower (0.5 USD, counted from zero) while b's go on
    // (2.25 → 3 USD, +0.75): 3.75 + 0.5 + 0.75 = 5.
    // (The same metrics server answers with the restarted gateway's counters: to the scraper a
    // restart is exactly counters that went down.)
    a.set("chat", "m", "openai", "gpt-5-mini", Counters { ok: 1, errors: 0, nanousd: 500_000_000 });
    series(&b, 3_000_000_000);
    expect_spend(&client, &ns, "pod a reset, pod b not", "5.000000", vec![(&uid_a, "0.5"), (&uid_b, "3")]).await;

    // Pod a is replaced by a new pod (new UID) whose counters start at 0.8 USD: a's checkpoint is
    // dropped, its counted 0.5 stays counted, the new pod's 0.8 is added once: 5.8.
    delete_pod(&client, &ns, "gateway-a").await;
    let c = FakeGateway::default();
    series(&c, 800_000_000);
    let (pc, _task_c) = c.start().await;
    let uid_c = gateway_pod(&client, &ns, "gateway-c", pc).await;
    assert_ne!(uid_c, uid_a);
    expect_spend(&client, &ns, "pod a replaced by pod c", "5.800000", vec![(&uid_b, "3"), (&uid_c, "0.8")]).await;

    // And nothing moves while the counters stand still (no double count over more passes).
    tokio::time::sleep(Duration::from_secs(5)).await;
    expect_spend(&client, &ns, "two passes later", "5.800000", vec![(&uid_b, "3"), (&uid_c, "0.8")]).await;
    println!("e2e_fleet pods took {:?}", suite.elapsed());
}

async fn wait_event(client: &Client, ns: &str, reason: &str, regarding: &str, limit: Duration) -> (Event, Duration) {
    eventually(&format!("Event {reason} on {regarding}"), limit, || async {
        events_of(&events(client, ns).await, reason, regarding).first().map(|e| (*e).clone())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_events_on_the_api_server() {
    let suite = Instant::now();
    let Some(client) = client_or_skip("e2e_fleet").await else { return };
    install_crds(&client).await;
    let ns = fresh_namespace(&client, "tollgate-events").await;
    let routes = [
        json!({"metadata": {"name": "reject-route"}, "spec": {"backends": [mock_backend("x1", "acme", "acme-1")],
               "budget": {"onExhausted": "Reject"}}}),
        json!({"metadata": {"name": "failopen-route"}, "spec": {"backends": [mock_backend("y1", "acme", "acme-1")],
               "budget": {"onExhausted": "Fallback"}}}),
        json!({"metadata": {"name": "health-route"}, "spec": {
            "backends": [mock_backend("h1", "other", "o-1"), mock_backend("h2", "other", "o-1")],
            "health": {"errorRate": {"trip": "0.50", "recover": "0.10", "window": "1m", "minRequests": 10},
                       "ejection": {"base": "2s", "max": "10s"}, "rampUp": [], "maxEjectedPercent": 50}}}),
    ];
    for mut r in routes {
        r["apiVersion"] = json!("tollgate.dev/v1alpha1");
        r["kind"] = json!("ModelRoute");
        create::<ModelRoute>(&client, &ns, r).await;
    }
    // Default thresholds: Warn 80 %, Deprioritize 95 %, Drain 100 % of 10 USD.
    create::<ProviderBudget>(&client, &ns, budget_doc("acme-budget", "acme", "10")).await;
    let _controller = Controller::start(&ns, "events-controller", &["--leader-election=false"]);
    let g = FakeGateway::default();
    g.set("reject-route", "x1", "acme", "acme-1", usd(0));
    g.set("health-route", "h1", "other", "o-1", Counters::default());
    let (port, _task) = g.start().await;
    gateway_pod(&client, &ns, "gateway-0", port).await;
    eventually("the gateway pod counted", Duration::from_secs(15), || async {
        let st = Api::<ProviderBudget>::namespaced(client.clone(), &ns).get("acme-budget").await.ok()?.status?;
        (st.checkpoints.len() == 1).then_some(())
    })
    .await;

    // 8.5 of 10 USD: past Warn (80 %), below Deprioritize (95 %).
    g.set("reject-route", "x1", "acme", "acme-1", usd(8_500_000_000));
    let (e, took) = wait_event(&client, &ns, "BudgetWarning", "acme-budget", STEP).await;
    println!("BudgetWarning after {took:?}");
    print_event(&e);
    assert_eq!(e.type_.as_deref(), Some("Warning"));

    // 10.5 USD: Drain; acme's backends leave rotation. Reject → RouteRejecting, Fallback →
    // RouteFailOpen.
    g.set("reject-route", "x1", "acme", "acme-1", usd(10_500_000_000));
    let (e, took) = wait_event(&client, &ns, "RouteRejecting", "reject-route", STEP).await;
    println!("RouteRejecting after {took:?}");
    print_event(&e);
    assert_eq!(e.type_.as_deref(), Some("Warning"));
    let (e, _) = wait_event(&client, &ns, "RouteFailOpen", "failopen-route", STEP).await;
    print_event(&e);
    assert_eq!(e.type_.as_deref(), Some("Warning"));
    assert!(e.note.as_deref().unwrap_or_default().contains("y1"), "{e:?}");
    let st = Api::<ProviderBudget>::namespaced(client.clone(), &ns).get("acme-budget").await.unwrap().status.unwrap();
    assert_eq!(st.spent.as_deref(), Some("10.500000"));

    // h1: 20 requests, 15 upstream errors (75 % ≥ 50 %): ejected for 2 s, then straight back.
    g.set("health-route", "h1", "other", "o-1", Counters { ok: 5, errors: 15, nanousd: 0 });
    let (e, took) = wait_event(&client, &ns, "BackendEjected", "health-route", STEP).await;
    println!("BackendEjected after {took:?}");
    print_event(&e);
    let (e, took) = wait_event(&client, &ns, "BackendRestored", "health-route", STEP).await;
    println!("BackendRestored {took:?} after the ejection was seen");
    print_event(&e);
    assert_eq!(e.type_.as_deref(), Some("Normal"));
    assert!(e.note.as_deref().unwrap_or_default().contains("h1"), "{e:?}");

    // Each is published once.
    let all = events(&client, &ns).await;
    for (reason, on) in [
        ("BudgetWarning", "acme-budget"),
        ("RouteRejecting", "reject-route"),
        ("RouteFailOpen", "failopen-route"),
        ("BackendRestored", "health-route"),
    ] {
        assert_eq!(events_of(&all, reason, on).len(), 1, "{reason} on {on}");
    }
    println!("e2e_fleet events took {:?}", suite.elapsed());
}
