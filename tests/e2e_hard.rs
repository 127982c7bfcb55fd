//! Hard budgets in a cluster (issue 13), on a real API server (`KUBECONFIG`; skips without):
//! `tollgate controller` grants, three real `tollgate gateway --from-configmap` processes
//! enforce, under concurrent load.
//!
//! Each gateway is a Pod object (created first, so its UID is known) whose `metrics` port is
//! the gateway's loopback metrics port, and the gateway runs as the chart runs it,
//! `--instance <that UID> --instance-per-process`: the controller scrapes it, reads its
//! instance id (`<UID>.<suffix>`) there, grants it in ConfigMap `tollgate-allowances`, and the
//! gateway watches that ConfigMap through the API.
//!
//! Two routes, same load, same prices, same limit ($0.10), side by side in one run:
//! - `hard`: backend `openai` (tier 0) under ProviderBudget `openai-hard` (`enforcement: Hard`),
//!   then a free fallback;
//! - `soft`: backend `acme` (tier 0) under ProviderBudget `acme-soft` (Soft: Drain at 100%, as
//!   the controller sees the spend), then a free fallback.
//!
//! Every tier-0 answer costs exactly $0.002 (mock: 1000 input + 1000 output tokens at $1/1M),
//! and its worst case is the same. Mid-run, gateway 3 is killed (SIGKILL, its Pod deleted, as a
//! crashed pod's ReplicaSet would replace it), the controller is killed and replaced, and
//! gateway 2's process is killed and started again in its Pod (a container restart). Checked:
//! - the exact metered spend (`tollgate_cost_nanousd_total`) of the Hard budget summed over
//!   the gateways (the killed one: its answers counted by the clients, each $0.002 exactly, as
//!   its /metrics died with it) is ≤ the limit to the nano-dollar, and reaches most of it;
//! - after the kill (and the controller's: SIGKILL, then a new controller, which restores the
//!   grants before granting), the two others still keep the total within the limit, the load
//!   going on until the whole limit is granted and two signal intervals more;
//! - the grants in the ConfigMap never sum above the limit; one instance per process (gw-2's
//!   restarted process is a new one, its first process's grant stays counted); `status.hard`
//!   lists them; a `HardBudgetRefusing` Event;
//! - the Soft budget's overshoot is printed beside the Hard one.

#[path = "common/cluster.rs"]
mod cluster;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cluster::*;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use serde_json::{Value, json};
use tollgate::api::{ModelRoute, ProviderBudget};
use tollgate::config::allowances::Allowances;

const LIMIT_NANOS: u64 = 100_000_000;
const COST_NANOS: u64 = 2_000_000;
const CLIENTS_PER_ROUTE: usize = 2;

fn route(name: &str, provider: &str) -> Value {
    let mock = |n: u32| {
        json!({"mock": {"latency": "100ms", "inputTokens": n, "cachedInputTokens": 0, "cacheWriteTokens": 0,
                        "outputTokens": n, "reasoningTokens": 0}})
    };
    json!({
        "apiVersion": "tollgate.dev/v1alpha1", "kind": "ModelRoute",
        "metadata": {"name": name},
        "spec": {"model": name, "strategy": "Priority", "backends": [
            {"name": provider, "provider": provider, "model": format!("{provider}-model"), "priority": 0,
             "endpoint": mock(1000), "pricing": {"input": "1.00", "cachedInput": "1.00", "output": "1.00"}},
            {"name": "free", "provider": "free-local", "model": "free-model", "priority": 1,
             "endpoint": mock(10), "pricing": {"input": "0", "output": "0"}}
        ]}
    })
}

fn budget(name: &str, provider: &str, hard: bool) -> Value {
    let mut spec = json!({"provider": provider, "limit": "0.10", "window": {"period": "Daily"}});
    if hard {
        spec["enforcement"] = json!("Hard");
    }
    json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "ProviderBudget", "metadata": {"name": name}, "spec": spec})
}

/// Sum of `tollgate_cost_nanousd_total` samples of `provider` in a /metrics text.
fn metered(text: &str, provider: &str) -> u64 {
    let needle = format!("provider=\"{provider}\"");
    text.lines()
        .filter(|l| l.starts_with("tollgate_cost_nanousd_total{") && l.contains(&needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn gauge(text: &str, name: &str, budget: &str) -> Option<f64> {
    let prefix = format!("{name}{{budget=\"{budget}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
}

/// Client-side tally of one gateway: tier-0 answers per route.
#[derive(Default)]
struct Tally {
    hard: AtomicU64,
    soft: AtomicU64,
    outcomes: std::sync::Mutex<BTreeMap<String, u64>>,
}

fn usd(nanos: u64) -> String {
    format!("${}.{:09}", nanos / 1_000_000_000, nanos % 1_000_000_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_gateways_hold_a_hard_budget_to_the_nano_dollar_beside_a_soft_one() {
    let Some(client) = client_or_skip("e2e_hard").await else { return };
    install_crds(&client).await;
    let ns = fresh_namespace(&client, "hard").await;
    for r in [route("hard", "openai"), route("soft", "acme")] {
        create::<ModelRoute>(&client, &ns, r).await;
    }
    create::<ProviderBudget>(&client, &ns, budget("openai-hard", "openai", true)).await;
    create::<ProviderBudget>(&client, &ns, budget("acme-soft", "acme", false)).await;

    // Three gateway Pods (their UIDs are the instance ids), then the gateways, then the controller.
    let mut gws = Vec::new();
    for i in 1..=3 {
        let (api, metrics) = (free_port(), free_port());
        let name = format!("gw-{i}");
        let uid = gateway_pod(&client, &ns, &name, metrics).await;
        let gw = ApiGateway::start_on(
            &ns,
            &name,
            api,
            metrics,
            &["--instance", &uid, "--instance-per-process", "--workers", "1"],
            &[("RUST_LOG", "info")],
        );
        gws.push((name, uid, gw));
    }
    // Their listeners are bound before the controller picks its own free port.
    for (name, _, gw) in &gws {
        eventually(&format!("{name} serving /metrics"), Duration::from_secs(30), || async {
            http_get(gw.metrics, "/metrics").await.map(|_| ())
        })
        .await;
    }
    let controller_args = ["--leader-election=false", "--hard-grant-floor", "0.01"];
    let mut controller = Controller::start(&ns, "controller-hard", &controller_args);

    // Every gateway serves the routes and holds a grant before the load starts.
    for (name, _, gw) in &gws {
        eventually(&format!("{name} ready with a Hard grant"), Duration::from_secs(60), || async {
            let (code, _) = http_get(gw.api, "/readyz").await?;
            let (_, text) = http_get(gw.metrics, "/metrics").await?;
            (code == 200 && gauge(&text, "tollgate_hard_budget_granted_usd", "openai-hard")? > 0.0).then_some(())
        })
        .await;
    }
    println!("three gateways ready, each with a grant of openai-hard");

    // The load: per gateway, CLIENTS_PER_ROUTE clients on each route, until told to stop.
    let http = reqwest::Client::new();
    let stop = Arc::new(AtomicBool::new(false));
    let tallies: Vec<Arc<Tally>> = gws.iter().map(|_| Arc::default()).collect();
    let mut tasks = Vec::new();
    for ((_, _, gw), tally) in gws.iter().zip(&tallies) {
        for model in ["hard", "soft"] {
            for _ in 0..CLIENTS_PER_ROUTE {
                let (http, stop, tally) = (http.clone(), stop.clone(), tally.clone());
                let url = format!("http://127.0.0.1:{}/v1/chat/completions", gw.api);
                tasks.push(tokio::spawn(async move {
                    while !stop.load(Ordering::SeqCst) {
                        let body =
                            json!({"model": model, "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]});
                        let outcome = match http.post(&url).json(&body).send().await {
                            Err(_) => {
                                // Killed: this gateway is gone for good.
                                tally
                                    .outcomes
                                    .lock()
                                    .unwrap()
                                    .entry(format!("{model} unreachable"))
                                    .and_modify(|n| *n += 1)
                                    .or_insert(1);
                                tokio::time::sleep(Duration::from_millis(200)).await;
                                continue;
                            }
                            Ok(r) => {
                                let backend = r
                                    .headers()
                                    .get("x-tollgate-backend")
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("-")
                                    .to_string();
                                let code = r.status().as_u16();
                                let complete = r.bytes().await.is_ok();
                                if code == 200 && complete && backend == "openai" {
                                    tally.hard.fetch_add(1, Ordering::SeqCst);
                                }
                                if code == 200 && complete && backend == "acme" {
                                    tally.soft.fetch_add(1, Ordering::SeqCst);
                                }
                                format!("{model} {code} {backend}")
                            }
                        };
                        *tally.outcomes.lock().unwrap().entry(outcome).or_insert(0) += 1;
                    }
                }));
            }
        }
    }
    let started = Instant::now();

    // Kill gateway 3 once two fifths of the Hard budget are spent (fleet-wide, by the answers):
    // past the first grants (the floors), so it dies holding a re-grant.
    let spent_answers = |tallies: &[Arc<Tally>]| tallies.iter().map(|t| t.hard.load(Ordering::SeqCst)).sum::<u64>();
    eventually("two fifths of the Hard budget spent", Duration::from_secs(30), || async {
        (spent_answers(&tallies) * COST_NANOS >= LIMIT_NANOS * 2 / 5).then_some(())
    })
    .await;
    let (_, _, dead) = &mut gws[2];
    dead.proc.signal("-KILL");
    let _ = dead.proc.wait_exit(Duration::from_secs(10)).await;
    delete_pod(&client, &ns, "gw-3").await;
    let killed_at = started.elapsed();
    let dead_spent = tallies[2].hard.load(Ordering::SeqCst) * COST_NANOS;
    let live_answers = |tallies: &[Arc<Tally>]| tallies[..2].iter().map(|t| t.hard.load(Ordering::SeqCst)).sum::<u64>();
    let live_at_kill = live_answers(&tallies);
    println!("gw-3 killed at {killed_at:?}, having spent {} of openai-hard", usd(dead_spent));

    // The controller too (SIGKILL): a new one must restore the grants (ConfigMap and status)
    // before it grants, or it would hand the window out a second time.
    controller.proc.signal("-KILL");
    let _ = controller.proc.wait_exit(Duration::from_secs(10)).await;
    controller = Controller::start(&ns, "controller-hard-2", &controller_args);
    println!("controller killed and replaced at {:?}", started.elapsed());

    // Gateway 2's process dies and starts again in place (same Pod, same ports, same
    // `--instance`), as a container restart does: with `--instance-per-process` it is a new
    // instance with no grant, and its predecessor's grant stays counted (otherwise it would
    // spend that grant a second time). What the first process spent: by its answers.
    let (_, uid2, gw2) = &mut gws[1];
    gw2.proc.signal("-KILL");
    let _ = gw2.proc.wait_exit(Duration::from_secs(10)).await;
    let first_process = [tallies[1].hard.load(Ordering::SeqCst), tallies[1].soft.load(Ordering::SeqCst)];
    let gw2_args = ["--instance", uid2.as_str(), "--instance-per-process", "--workers", "1"];
    *gw2 = ApiGateway::start_on(&ns, "gw-2-restarted", gw2.api, gw2.metrics, &gw2_args, &[("RUST_LOG", "info")]);
    println!(
        "gw-2 restarted in place at {:?}; its first process spent {} of openai-hard",
        started.elapsed(),
        usd(first_process[0] * COST_NANOS)
    );

    // The Hard budget is refused on both live gateways (answered by the fallback) for a while,
    // and the Soft one has been drained; then the load stops.
    let pb: Api<ProviderBudget> = Api::namespaced(client.clone(), &ns);
    eventually("openai-hard refusing and acme-soft drained", Duration::from_secs(60), || async {
        let refusing = pb.get("openai-hard").await.ok()?.status?.hard?.refused > 0;
        let drained = pb.get("acme-soft").await.ok()?.status?.state == Some(tollgate::api::BudgetState::Exhausted);
        (refusing && drained).then_some(())
    })
    .await;
    // Then until the whole limit is granted, and two more signal intervals of load.
    eventually("the whole limit of openai-hard granted", Duration::from_secs(60), || async {
        (pb.get("openai-hard").await.ok()?.status?.hard?.bound == "0.100000").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed();

    // Exact metered spend: the live gateways' /metrics, the killed one's answers.
    let mut hard_total = dead_spent;
    let mut soft_total = tallies[2].soft.load(Ordering::SeqCst) * COST_NANOS;
    let mut rows = Vec::new();
    for (i, (name, _, gw)) in gws.iter().enumerate().take(2) {
        let (_, text) = http_get(gw.metrics, "/metrics").await.expect("a live gateway answers /metrics");
        let (h, s) = (metered(&text, "openai"), metered(&text, "acme"));
        // gw-2's /metrics are its second process's: the first one's answers are added apart.
        let before = if i == 1 { first_process } else { [0, 0] };
        let answers = |n: &AtomicU64, b: u64| (n.load(Ordering::SeqCst) - b) * COST_NANOS;
        assert_eq!(h, answers(&tallies[i].hard, before[0]), "{name}: metered ≠ answers × $0.002");
        assert_eq!(s, answers(&tallies[i].soft, before[1]), "{name}: metered ≠ answers × $0.002");
        if i == 1 {
            let (h0, s0) = (before[0] * COST_NANOS, before[1] * COST_NANOS);
            rows.push(format!("{name} (first process, by its answers): hard {} soft {}", usd(h0), usd(s0)));
            hard_total += h0;
            soft_total += s0;
        }
        rows.push(format!("{name}: hard {} soft {}", usd(h), usd(s)));
        hard_total += h;
        soft_total += s;
    }
    rows.push(format!(
        "gw-3 (killed): hard {} soft {} (by its answers)",
        usd(dead_spent),
        usd(tallies[2].soft.load(Ordering::SeqCst) * COST_NANOS)
    ));
    let cm: ConfigMap = Api::namespaced(client.clone(), &ns).get("tollgate-allowances").await.unwrap();
    let doc = Allowances::from_json(cm.data.unwrap()["allowances.json"].as_bytes()).expect("grants within the limit");
    let grants = &doc.budgets.iter().find(|b| b.name == "openai-hard").unwrap().grants;
    let status = pb.get("openai-hard").await.unwrap().status.unwrap();
    let hard_status = status.hard.clone().unwrap();
    let soft_spent = pb.get("acme-soft").await.unwrap().status.unwrap().spent.unwrap_or_default();

    println!("load ran {elapsed:?} ({CLIENTS_PER_ROUTE} clients per route per gateway, 100 ms mock latency)");
    for r in &rows {
        println!("  {r}");
    }
    println!(
        "HARD openai-hard: spent {} of {} ({} left; overshoot {}); the two live gateways spent {} after the kill",
        usd(hard_total),
        usd(LIMIT_NANOS),
        usd(LIMIT_NANOS.saturating_sub(hard_total)),
        usd(hard_total.saturating_sub(LIMIT_NANOS)),
        usd((live_answers(&tallies) - live_at_kill) * COST_NANOS),
    );
    println!(
        "SOFT acme-soft: spent {} of {} (overshoot {}, {:.0}% of the limit); status.spent {soft_spent}",
        usd(soft_total),
        usd(LIMIT_NANOS),
        usd(soft_total.saturating_sub(LIMIT_NANOS)),
        soft_total as f64 * 100.0 / LIMIT_NANOS as f64
    );
    println!("grants: {grants:?}");
    println!("status.hard: {hard_status:?}");
    for (i, t) in tallies.iter().enumerate() {
        println!("  gw-{} outcomes: {:?}", i + 1, t.outcomes.lock().unwrap());
    }

    assert!(
        hard_total <= LIMIT_NANOS,
        "the fleet overshot the Hard budget: {} > {}",
        usd(hard_total),
        usd(LIMIT_NANOS)
    );
    // What the killed gateway held unspent is lost (grants never shrink); otherwise the live
    // ones get close to the limit: the test would prove nothing if nothing was admitted.
    assert!(hard_total >= LIMIT_NANOS / 2, "the fleet spent only {} of {}", usd(hard_total), usd(LIMIT_NANOS));
    let sum: u64 = grants.values().map(|g| tollgate::signals::checkpoint_nanousd(g).unwrap_or(u64::MAX)).sum();
    assert!(sum <= LIMIT_NANOS, "grants sum to {}", usd(sum));
    // Each process is granted as `<pod UID>.<its suffix>` (`--instance-per-process`).
    for (_, uid, _) in &gws {
        let prefix = format!("{uid}.");
        assert!(grants.keys().any(|k| k.starts_with(&prefix)), "no grant for pod {uid}: {grants:?}");
        assert!(hard_status.grants.iter().any(|g| g.gateway.starts_with(&prefix)), "status.hard lacks {uid}");
    }
    assert_eq!(grants.len(), 4, "one instance per process (gw-2 had two): {grants:?}");
    let gw2_instances = grants.keys().filter(|k| k.starts_with(&format!("{}.", gws[1].1))).count();
    assert_eq!(gw2_instances, 2, "gw-2's restarted process is a new instance: {grants:?}");
    let events = events(&client, &ns).await;
    let refusing = events_of(&events, "HardBudgetRefusing", "openai-hard");
    assert!(!refusing.is_empty(), "no HardBudgetRefusing Event");
    print_event(refusing[0]);
    for (name, _, gw) in gws.iter().take(2) {
        assert!(gw.proc.log_text().contains("allowances applied"), "{name} never applied allowances");
    }
    let log = controller.proc.log_text();
    assert!(log.contains("restored Hard budget grants"), "the new controller did not restore the grants");
    drop(controller);
}
