//! A fleet in one namespace through `tollgate controller` and a real `tollgate gateway
//! --from-configmap` on a real API server (`KUBECONFIG`; skips without). Issue 12.
//!
//! `fleet_of_routes_in_one_namespace`: 2,000 ModelRoutes of 5 mock backends each
//! (`TOLLGATE_E2E_FLEET_ROUTES` sets another number). Every backend's upstream model name
//! carries 224 pseudo-random hex digits (`TOLLGATE_E2E_FLEET_NOISE` blocks of 16: 14), so 2,000 routes are over one ConfigMap even
//! gzip-compressed: the controller writes the document split (an index in `tollgate-gateway`
//! and shard ConfigMaps), and the gateway assembles the shards.
//! Checked, each against a deadline:
//! - the ConfigMap holds the index, every shard it names exists, and the gateway serves the
//!   revision the ConfigMap announces;
//! - a route picked at random is served by the gateway (its alias, 200, `x-tollgate-route`);
//! - every route reaches `Ready=True` (statuses paced at 200 writes/s here, so this takes
//!   about N/200 s);
//! - a rotation: one route's tier-0 backend fails every request; the gateway's own `/metrics`
//!   (a Pod object points the controller at it) show the errors, the controller ejects the
//!   backend, and the gateway serves the new revision, with the backend out of rotation, within
//!   one signal interval (the default, 15 s) of the ConfigMap write; the time is printed;
//! - shard repair (split form only): one shard ConfigMap is deleted and another edited by hand
//!   (other bytes under its key); the controller, which watches only the index, reads the
//!   shards back on its signal passes and restores both with the bytes the index names and the
//!   revision (its `tollgate_controller_config_shard_repairs_total` counts a `Missing` and a
//!   `Changed`); a gateway started after that loads the config.

#[path = "common/cluster.rs"]
mod cluster;

use std::time::{Duration, Instant};

use cluster::*;
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
use tollgate::api::ModelRoute;

/// The controller's default signal interval (`--signal-interval`; the controller here reads
/// signals every 2 s to keep the suite short, but a 2,000-route document takes a debug-build
/// gateway seconds to assemble under a loaded CI machine): a rotation must reach the gateway
/// within one of these.
const SIGNAL_INTERVAL: Duration = Duration::from_secs(15);

fn routes_wanted() -> usize {
    std::env::var("TOLLGATE_E2E_FLEET_ROUTES").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000)
}

/// How many blocks of 16 hex digits each upstream model name carries: 14 (224 digits), or
/// `TOLLGATE_E2E_FLEET_NOISE` (e.g. 3, as `DISTINCT=1 bench/scale.sh`, for 10,000 routes within
/// the ceiling of 8 shards).
fn noise_blocks() -> usize {
    std::env::var("TOLLGATE_E2E_FLEET_NOISE").ok().and_then(|v| v.parse().ok()).unwrap_or(14)
}

/// Hex digits that differ per (route, backend): deterministic, not compressible.
fn noise(i: usize, b: usize) -> String {
    let mut x = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (b as u64).wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
    (0..noise_blocks())
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!("{x:016x}")
        })
        .collect()
}

fn route(i: usize) -> Value {
    let backends: Vec<Value> = (0..5)
        .map(|b| {
            json!({"name": format!("b{b}"), "provider": format!("provider-{b}"),
                   "model": format!("model-{b}-{}", noise(i, b)), "endpoint": {"mock": {"latency": "1ms"}},
                   "weight": 10, "priority": b % 2, "pricing": {"input": "0.25", "output": "2.00"}})
        })
        .collect();
    json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "ModelRoute", "metadata": {"name": format!("route-{i:05}")},
           "spec": {"model": format!("alias-{i:05}"), "backends": backends}})
}

/// The route that rotates: tier 0 fails every request, tier 1 serves.
fn rotating_route() -> Value {
    json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "ModelRoute", "metadata": {"name": "rotating"},
           "spec": {"model": "rotating", "strategy": "Priority",
                    "health": {"errorRate": {"trip": "0.5", "recover": "0.1", "window": "5m", "minRequests": 4},
                               "ejection": {"base": "10m", "max": "30m"}},
                    "backends": [
                        {"name": "broken", "provider": "provider-0", "model": "m", "priority": 0,
                         "endpoint": {"mock": {"errorRate": "1"}}, "pricing": {"input": "0.25", "output": "2.00"}},
                        {"name": "spare", "provider": "provider-1", "model": "m", "priority": 1,
                         "endpoint": {"mock": {}}, "pricing": {"input": "0.25", "output": "2.00"}}]}})
}

async fn configmap(client: &Client, ns: &str, name: &str) -> Option<ConfigMap> {
    Api::<ConfigMap>::namespaced(client.clone(), ns).get_opt(name).await.ok()?
}

fn revision_of(cm: &ConfigMap) -> Option<String> {
    cm.metadata.annotations.as_ref()?.get("tollgate.dev/config-revision").cloned()
}

/// The revision a gateway's `/metrics` says it serves.
async fn served_revision(metrics_port: u16) -> Option<String> {
    let (_, text) = http_get(metrics_port, "/metrics").await?;
    let line = text.lines().find(|l| l.starts_with("tollgate_config_revision_info{"))?;
    Some(line.split('"').nth(1)?.to_string())
}

async fn chat(port: u16, alias: &str) -> (u16, Option<String>) {
    let resp = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .json(&json!({"model": alias, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    let route = resp.headers().get("x-tollgate-route").and_then(|v| v.to_str().ok()).map(str::to_string);
    (resp.status().as_u16(), route)
}

fn ready(r: &ModelRoute) -> bool {
    r.status.as_ref().is_some_and(|s| {
        s.observed_generation == r.metadata.generation
            && s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_of_routes_in_one_namespace() {
    let suite = Instant::now();
    let Some(client) = client_or_skip("e2e_scale").await else { return };
    let n = routes_wanted();
    install_crds(&client).await;
    let ns = fresh_namespace(&client, "tollgate-scale").await;

    // The fleet, 48 creations at a time.
    let t = Instant::now();
    let created = futures::stream::iter((0..n).map(|i| {
        let (client, ns) = (client.clone(), ns.clone());
        async move { create::<ModelRoute>(&client, &ns, route(i)).await }
    }))
    .buffer_unordered(48)
    .count()
    .await;
    create::<ModelRoute>(&client, &ns, rotating_route()).await;
    assert_eq!(created, n);
    println!("{n} routes created in {:?}", t.elapsed());

    // The real gateway, reading the config through the API; a Pod object points the
    // controller at its /metrics (no kubelet here: the test server only stores objects).
    let gateway = ApiGateway::start(&ns, &[], &[("RUST_LOG", "info")]);
    let (port, metrics) = (gateway.api, gateway.metrics);
    gateway_pod(&client, &ns, "gateway-0", metrics).await;
    let t = Instant::now();
    // Statuses at 200 writes/s (default 50) to keep the suite short.
    let controller =
        Controller::start(&ns, "scale-controller", &["--leader-election=false", "--status-writes-per-second=200"]);

    // The document is written; at 2,000 routes and more it is split: an index and the shards
    // it names, each written with the same revision.
    let ((cm, revision), took) = eventually("the config is written", Duration::from_secs(180), || {
        let (client, ns) = (client.clone(), ns.clone());
        async move {
            let cm = configmap(&client, &ns, "tollgate-gateway").await?;
            let revision = revision_of(&cm)?;
            Some((cm, revision))
        }
    })
    .await;
    match cm.data.as_ref().and_then(|d| d.get("config.index.json")) {
        Some(index) => {
            let index: Value = serde_json::from_str(index).unwrap();
            let shards = index["shards"].as_array().unwrap();
            assert!(shards.len() >= 2, "a split config has several shards: {index}");
            assert_eq!(index["revision"].as_str(), Some(revision.as_str()));
            for s in shards {
                let name = s["configMap"].as_str().unwrap();
                let shard = configmap(&client, &ns, name).await.unwrap_or_else(|| panic!("shard {name} missing"));
                let key = s["key"].as_str().unwrap();
                let bytes = shard.binary_data.as_ref().and_then(|d| d.get(key)).map(|b| b.0.len()).unwrap_or(0);
                assert!(bytes > 0 && bytes <= 1_000_000, "shard {name}/{key}: {bytes} bytes");
                assert_eq!(revision_of(&shard).as_deref(), Some(revision.as_str()), "shard {name} names the revision");
            }
            println!("config written as an index and {} shards in {took:?} (revision {revision})", shards.len());
        }
        None => {
            assert!(n < 2_000 || noise_blocks() < 14, "{n} routes of distinct models must be split across ConfigMaps");
            println!("config written in one ConfigMap in {took:?} (revision {revision})");
        }
    }

    // The gateway serves that revision, and a route picked at random.
    eventually("the gateway serves the written revision", Duration::from_secs(60), || {
        let revision = revision.clone();
        async move { (served_revision(metrics).await? == revision).then_some(()) }
    })
    .await;
    let pick = rand::random_range(0..n);
    let (code, served_by) = chat(port, &format!("alias-{pick:05}")).await;
    assert_eq!((code, served_by.as_deref()), (200, Some(format!("route-{pick:05}").as_str())), "route {pick}");
    println!("gateway serves route {pick} ({:?} after the controller started)", t.elapsed());

    // Every route reaches Ready=True.
    let routes: Api<ModelRoute> = Api::namespaced(client.clone(), &ns);
    let budget = Duration::from_secs(60 + (n as u64) / 20);
    let (_, took) = eventually(&format!("all {} routes Ready=True", n + 1), budget, || {
        let routes = routes.clone();
        async move {
            let list = routes.list(&ListParams::default()).await.ok()?;
            (list.items.iter().filter(|r| ready(r)).count() == n + 1).then_some(())
        }
    })
    .await;
    println!("every route Ready=True {took:?} after the config was written");

    // Rotation: the broken backend fails every request (the gateway retries on the spare, so
    // clients still get 200); the controller reads the errors from the gateway's /metrics and
    // ejects it.
    for _ in 0..6 {
        let (code, _) = chat(port, "rotating").await;
        assert_eq!(code, 200, "the spare serves while the broken backend fails");
    }
    // Deciding takes one signal pass; a pass over 2,000 routes in a debug build on a loaded
    // machine takes seconds, hence the generous bound here (the bound that matters is below).
    let ((new_revision, written_at), took) =
        eventually("a config without the broken backend", Duration::from_secs(120), || {
            let (client, ns, old) = (client.clone(), ns.clone(), revision.clone());
            async move {
                let cm = configmap(&client, &ns, "tollgate-gateway").await?;
                let rev = revision_of(&cm)?;
                (rev != old).then_some((rev, Instant::now()))
            }
        })
        .await;
    println!("rotated config written {took:?} after the failing requests");
    eventually("the gateway serves the rotated config", SIGNAL_INTERVAL * 2, || {
        let rev = new_revision.clone();
        async move { (served_revision(metrics).await? == rev).then_some(()) }
    })
    .await;
    // From when this test saw the ConfigMap change (a little after the write) to the gateway.
    let lag = written_at.elapsed();
    println!("rotation reached the gateway {lag:?} after the ConfigMap change was seen (revision {new_revision})");
    assert!(lag <= SIGNAL_INTERVAL, "the rotation took {lag:?}, more than one signal interval");
    eventually("the rotating route's status shows the ejection", Duration::from_secs(60), || {
        let routes = routes.clone();
        async move {
            let status = routes.get("rotating").await.ok()?.status?;
            let broken = status.backends.iter().find(|b| b.name == "broken")?;
            (format!("{:?}", broken.state) == "Ejected").then_some(())
        }
    })
    .await;
    // The gateway no longer sends to the broken backend.
    for _ in 0..3 {
        let resp = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
            .json(&json!({"model": "rotating", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        let backend = resp.headers().get("x-tollgate-backend").and_then(|v| v.to_str().ok()).map(str::to_string);
        assert_eq!(backend.as_deref(), Some("spare"));
        // One attempt: the header appears only after a retry.
        assert!(resp.headers().get("x-tollgate-attempts").is_none(), "{:?}", resp.headers());
    }

    if cm.data.as_ref().is_some_and(|d| d.contains_key("config.index.json")) {
        repair_shards(&client, &ns, &controller).await;
    }
    drop(gateway.proc);
    let _ = std::fs::remove_dir_all(&gateway.creds);
    println!("e2e_scale: {n} routes in {:?}", suite.elapsed());
}

/// The shards the index in `tollgate-gateway` names: (ConfigMap, key, sha256), and the revision.
async fn index_of(client: &Client, ns: &str) -> (Vec<(String, String, String)>, String) {
    let cm = configmap(client, ns, "tollgate-gateway").await.expect("the index ConfigMap");
    let index: Value = serde_json::from_str(&cm.data.as_ref().unwrap()["config.index.json"]).unwrap();
    let shards = index["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let field = |k: &str| s[k].as_str().unwrap().to_string();
            (field("configMap"), field("key"), field("sha256"))
        })
        .collect();
    (shards, index["revision"].as_str().unwrap().to_string())
}

/// Whether shard ConfigMap `name` holds bytes hashing to `sha256` under `key`, for `revision`.
async fn shard_intact(
    client: &Client,
    ns: &str,
    (name, key, sha256): &(String, String, String),
    revision: &str,
) -> bool {
    use sha2::Digest;
    let Some(cm) = configmap(client, ns, name).await else { return false };
    let bytes = cm.binary_data.as_ref().and_then(|d| d.get(key)).map(|b| b.0.clone()).unwrap_or_default();
    hex::encode(sha2::Sha256::digest(&bytes)) == *sha256 && revision_of(&cm).as_deref() == Some(revision)
}

/// `tollgate_controller_config_shard_repairs_total{reason}` as the controller's /metrics says.
async fn repairs(controller: &Controller, reason: &str) -> Option<f64> {
    let (_, text) = http_get(controller.health, "/metrics").await?;
    let prefix = format!("tollgate_controller_config_shard_repairs_total{{reason=\"{reason}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
}

/// One shard deleted, another edited by hand: the controller restores both, and a gateway
/// started afterwards loads the config.
async fn repair_shards(client: &Client, ns: &str, controller: &Controller) {
    use base64::Engine as _;
    let (shards, revision) = index_of(client, ns).await;
    assert!(shards.len() >= 2, "{shards:?}");
    let (deleted, edited) = (&shards[0], &shards[shards.len() - 1]);
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let writes = |log: &str| log.lines().filter(|l| l.contains("applied gateway config")).count();
    let writes_before = writes(&controller.proc.log_text());
    let t = Instant::now();
    api.delete(&deleted.0, &kube::api::DeleteParams::default()).await.unwrap();
    // As `kubectl edit` would: another field manager, other bytes under the key.
    let hand = json!({"binaryData": {&edited.1: base64::engine::general_purpose::STANDARD.encode(b"edited by hand")}});
    api.patch(
        &edited.0,
        &kube::api::PatchParams { field_manager: Some("e2e-hand-edit".into()), ..Default::default() },
        &kube::api::Patch::Merge(&hand),
    )
    .await
    .unwrap();
    assert!(!shard_intact(client, ns, deleted, &revision).await && !shard_intact(client, ns, edited, &revision).await);
    // The controller reads signals every 2 s here, but a pass over this namespace takes
    // seconds in a debug build on a loaded machine (13 s and 33 s measured at a load of 4 on 2
    // cores), hence the bound of the other steps.
    let (_, took) = eventually("the deleted and the edited shard restored", Duration::from_secs(120), || async {
        (shard_intact(client, ns, deleted, &revision).await && shard_intact(client, ns, edited, &revision).await)
            .then_some(())
    })
    .await;
    println!(
        "shards {} (deleted) and {} (edited) restored {took:?} after the change ({:?} in all)",
        deleted.0,
        edited.0,
        t.elapsed()
    );
    // The index was not rewritten (the same revision, the same shard hashes, no config write):
    // the two shards alone were applied again, each with a warning naming it.
    assert_eq!(index_of(client, ns).await, (shards.clone(), revision.clone()));
    let log = controller.proc.log_text();
    assert_eq!(writes(&log), writes_before, "the config was written again instead of repaired");
    for (shard, reason) in [(deleted, "missing"), (edited, "changed")] {
        let named = format!("\"configmap\":\"{}\"", shard.0);
        assert!(
            log.lines()
                .any(|l| l.contains("WARN") && l.contains(&format!("config shard {reason}")) && l.contains(&named)),
            "no warning of shard {} {reason}",
            shard.0
        );
    }
    eventually("the repairs counted", Duration::from_secs(30), || async {
        (repairs(controller, "Missing").await? >= 1.0 && repairs(controller, "Changed").await? >= 1.0).then_some(())
    })
    .await;
    // A gateway that starts now can load the config (with a shard missing it could not).
    let late = ApiGateway::start_on(ns, "late", free_port(), free_port(), &[], &[("RUST_LOG", "info")]);
    let (_, took) =
        eventually("a gateway started after the repair serves the revision", Duration::from_secs(120), || {
            let revision = revision.clone();
            async move { (served_revision(late.metrics).await? == revision).then_some(()) }
        })
        .await;
    println!("a gateway started after the repair loaded revision {revision} in {took:?}");
    drop(late.proc);
    let _ = std::fs::remove_dir_all(&late.creds);
}
