//! Leader election of `tollgate controller` on a real API server (`KUBECONFIG`; skips without).
//!
//! Two replicas on one namespace: the Lease names the first as holder, only it writes (its
//! Events, its log says "applied", the standby's does not and reports `standby` on /readyz and
//! leader 0 on /metrics). SIGTERM of the holder releases the Lease and the standby holds it in
//! under a second (measured from the signal to the Lease naming the standby, printed). A third
//! replica takes over from a SIGKILLed holder within the lease duration plus slack (printed).
//! Finally the holder's Lease is taken over through the API (holderIdentity overwritten): the
//! replica exits non-zero, saying that it lost the lease. In the rolling-update order (the new
//! replica starts just before the old holder's SIGTERM, so its first read of the Lease may
//! come after the release) the new replica takes the released Lease at once too.
//!
//! A leader paused (SIGSTOP) past its Lease while the standby takes over and writes: woken
//! (SIGCONT), it writes nothing (ConfigMap, route and Event resourceVersions compared) and exits.

#[path = "common/cluster.rs"]
mod cluster;

use std::time::{Duration, Instant};

use cluster::*;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tollgate::api::ModelRoute;

/// The controllers' `--lease-duration` (see `Controller::start`).
const LEASE: Duration = Duration::from_secs(4);
/// Default `--lease-name`.
const LEASE_NAME: &str = "tollgate-controller";

fn route(weight: u32) -> serde_json::Value {
    json!({
        "apiVersion": "tollgate.dev/v1alpha1", "kind": "ModelRoute",
        "metadata": {"name": "chat"},
        "spec": {"backends": [
            {"name": "mock-a", "provider": "openai", "model": "gpt-5-mini", "weight": weight,
             "endpoint": {"mock": {"latency": "1ms"}}, "pricing": {"input": "0.25", "output": "2.00"}},
            {"name": "mock-b", "provider": "openai", "model": format!("gpt-5-nano-{weight}"), "weight": 10,
             "endpoint": {"mock": {"latency": "1ms"}}, "pricing": {"input": "0.05", "output": "0.40"}}
        ]}
    })
}

/// Waits until the Lease names a replica of `name` (identities are `{pod name}-{8 hex}`).
async fn wait_holder(client: &Client, ns: &str, name: &str, limit: Duration) -> (String, Duration) {
    let start = Instant::now();
    let prefix = format!("{name}-");
    loop {
        if let Some(h) = lease_holder(client, ns, LEASE_NAME).await.filter(|h| h.starts_with(&prefix)) {
            return (h, start.elapsed());
        }
        assert!(
            start.elapsed() < limit,
            "the Lease did not name {name} within {limit:?} (holder {:?})",
            lease_holder(client, ns, LEASE_NAME).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn config_text(client: &Client, ns: &str) -> Option<String> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns).get_opt("tollgate-gateway").await.ok()??;
    cm.data?.get("config.json").cloned()
}

/// Changes the route (mock-b's model names `weight`) and waits until the ConfigMap has the new
/// model: a write only the leader can make.
async fn change_and_wait(client: &Client, ns: &str, weight: u32) -> Duration {
    let api = Api::<ModelRoute>::namespaced(client.clone(), ns);
    api.patch("chat", &PatchParams::default(), &Patch::Merge(json!({"spec": route(weight)["spec"]}))).await.unwrap();
    let want = format!("\"gpt-5-nano-{weight}\"");
    let (_, took) =
        eventually(&format!("the ConfigMap with model gpt-5-nano-{weight}"), Duration::from_secs(15), || {
            let (client, ns, want) = (client.clone(), ns.to_string(), want.clone());
            async move { config_text(&client, &ns).await.filter(|d| d.contains(&want)) }
        })
        .await;
    took
}

fn applied_lines(p: &Proc) -> usize {
    p.log_text().lines().filter(|l| l.contains("applied gateway config")).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_leader_fast_handover() {
    let suite = Instant::now();
    let Some(client) = client_or_skip("e2e_leader").await else { return };
    install_crds(&client).await;
    let ns = fresh_namespace(&client, "tollgate-leader").await;
    create::<ModelRoute>(&client, &ns, route(90)).await;

    // Replica a starts first and takes the Lease; replica b waits.
    let a = Controller::start(&ns, "leader-a", &[]);
    let (holder_a, took) = wait_holder(&client, &ns, "leader-a", Duration::from_secs(20)).await;
    println!("leader-a holds the Lease as {holder_a} {took:?} after its start");
    let mut a = a;
    let b = Controller::start(&ns, "leader-b", &[]);
    eventually("leader-b in standby", Duration::from_secs(15), || async {
        (b.phase().await.as_deref() == Some("standby")).then_some(())
    })
    .await;
    eventually("leader-a leading", Duration::from_secs(15), || async {
        (a.phase().await.as_deref() == Some("leading")).then_some(())
    })
    .await;
    assert_eq!(a.leader_gauge().await.as_deref(), Some("1"));
    assert_eq!(b.leader_gauge().await.as_deref(), Some("0"));
    assert_eq!(lease_holder(&client, &ns, LEASE_NAME).await.as_deref(), Some(holder_a.as_str()));

    // Only the holder writes: a change while both run is applied by a alone.
    eventually("the first ConfigMap", Duration::from_secs(15), || async {
        config_text(&client, &ns).await.filter(|d| d.contains("\"gpt-5-nano-90\""))
    })
    .await;
    let took = change_and_wait(&client, &ns, 80).await;
    println!("ConfigMap followed a route change in {took:?} (leader-a)");
    // (Its log line follows the write it reports.)
    eventually("leader-a's two \"applied gateway config\" lines", Duration::from_secs(5), || async {
        (applied_lines(&a.proc) >= 2).then_some(())
    })
    .await;
    assert_eq!(applied_lines(&b.proc), 0, "the standby wrote:\n{}", b.proc.log_text());
    assert!(!b.proc.log_text().contains("caches synced"), "the standby started its watchers");
    // The route change is a rotation: its Event comes from the leader.
    let (ev, _) = eventually("a RouteRotated Event", Duration::from_secs(10), || async {
        let ev = events(&client, &ns).await;
        (!events_of(&ev, "RouteRotated", "chat").is_empty()).then_some(ev)
    })
    .await;
    for e in &ev {
        assert_eq!(e.reporting_instance.as_deref(), Some("leader-a"), "{e:?}");
    }
    let cm = Api::<ConfigMap>::namespaced(client.clone(), &ns).get("tollgate-gateway").await.unwrap();
    let managers: Vec<String> =
        cm.metadata.managed_fields.unwrap_or_default().into_iter().filter_map(|m| m.manager).collect();
    println!("ConfigMap field managers: {managers:?}; {} Events, all reported by leader-a", ev.len());

    // SIGTERM: a releases the Lease on its way out and b takes it at once.
    a.proc.signal("-TERM");
    let (holder_b, handover) = wait_holder(&client, &ns, "leader-b", Duration::from_secs(10)).await;
    let status = a.proc.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "leader-a after SIGTERM: {status}\n{}", a.proc.log_tail(20));
    assert!(a.proc.log_text().contains("released the leader lease"), "{}", a.proc.log_tail(20));
    println!("TAKE-OVER after SIGTERM of the holder: {handover:?} (SIGTERM sent -> Lease names {holder_b})");
    assert!(handover < Duration::from_secs(1), "take-over after a released Lease took {handover:?}");
    eventually("leader-b leading", Duration::from_secs(10), || async {
        (b.phase().await.as_deref() == Some("leading")).then_some(())
    })
    .await;
    let took = change_and_wait(&client, &ns, 70).await;
    println!("ConfigMap followed a route change in {took:?} (leader-b)");
    eventually("leader-b's \"applied gateway config\" line", Duration::from_secs(5), || async {
        (applied_lines(&b.proc) >= 1).then_some(())
    })
    .await;
    assert_eq!(b.leader_gauge().await.as_deref(), Some("1"));

    // SIGKILL: no release; replica c takes over when b's lease expires.
    let mut b = b;
    let c = Controller::start(&ns, "leader-c", &[]);
    eventually("leader-c in standby", Duration::from_secs(15), || async {
        (c.phase().await.as_deref() == Some("standby")).then_some(())
    })
    .await;
    let renewed = Api::<Lease>::namespaced(client.clone(), &ns).get(LEASE_NAME).await.unwrap();
    b.proc.kill();
    let (holder_c, crash) = wait_holder(&client, &ns, "leader-c", LEASE + Duration::from_secs(3)).await;
    println!(
        "TAKE-OVER after SIGKILL of the holder: {crash:?} (lease duration {LEASE:?}; last renewal {:?})",
        renewed.spec.and_then(|s| s.renew_time).map(|t| t.0.to_string())
    );
    assert!(crash <= LEASE + Duration::from_millis(1500), "take-over after a crash took {crash:?}");
    eventually("leader-c leading", Duration::from_secs(10), || async {
        (c.phase().await.as_deref() == Some("leading")).then_some(())
    })
    .await;

    // Someone else takes the Lease through the API: c notices at its next renewal and exits 1.
    let mut c = c;
    let stolen = Instant::now();
    Api::<Lease>::namespaced(client.clone(), &ns)
        .patch(
            LEASE_NAME,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"holderIdentity": "intruder", "leaseDurationSeconds": 60,
                "renewTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(jiff::Timestamp::now())}})),
        )
        .await
        .unwrap();
    let status = c.proc.wait_exit(LEASE + Duration::from_secs(3)).await;
    println!("replica that lost its Lease ({holder_c}) exited {status} {:?} after the overwrite", stolen.elapsed());
    assert!(!status.success(), "a replica that lost its lease must exit non-zero");
    assert!(c.proc.log_text().contains("lost the leader lease"), "{}", c.proc.log_tail(20));
    println!("e2e_leader took {:?}", suite.elapsed());
}

/// What the controllers have written in `ns`: the ConfigMap's resourceVersion and config, each
/// route's resourceVersion (status writes move it), and the Events by reporting replica.
#[derive(Debug, PartialEq)]
struct Written {
    configmap: Option<(String, String)>,
    routes: Vec<(String, String)>,
    events: Vec<(String, String)>,
}

async fn written(client: &Client, ns: &str) -> Written {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns).get_opt("tollgate-gateway").await.unwrap();
    let configmap = cm.map(|c| {
        (c.metadata.resource_version.clone().unwrap_or_default(), c.data.unwrap_or_default()["config.json"].clone())
    });
    let mut routes: Vec<(String, String)> = Api::<ModelRoute>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|r| (kube::ResourceExt::name_any(&r), r.metadata.resource_version.unwrap_or_default()))
        .collect();
    routes.sort();
    let mut events: Vec<(String, String)> = events(client, ns)
        .await
        .into_iter()
        .map(|e| (e.reporting_instance.clone().unwrap_or_default(), kube::ResourceExt::name_any(&e)))
        .collect();
    events.sort();
    Written { configmap, routes, events }
}

/// A leader paused (SIGSTOP) past its Lease while the standby takes over and writes a newer
/// config: when it wakes (SIGCONT) it writes nothing (no ConfigMap, status or Event: the objects'
/// resourceVersions stay as the new leader left them, its own log shows no write after the
/// pause) and stands down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_paused_past_its_lease_writes_nothing_when_it_wakes() {
    let suite = Instant::now();
    let Some(client) = client_or_skip("e2e_leader").await else { return };
    install_crds(&client).await;
    let ns = fresh_namespace(&client, "tollgate-pause").await;
    create::<ModelRoute>(&client, &ns, route(90)).await;
    let mut a = Controller::start(&ns, "pause-a", &[]);
    wait_holder(&client, &ns, "pause-a", Duration::from_secs(20)).await;
    eventually("pause-a leading", Duration::from_secs(15), || async {
        (a.phase().await.as_deref() == Some("leading")).then_some(())
    })
    .await;
    eventually("pause-a's ConfigMap", Duration::from_secs(15), || async {
        config_text(&client, &ns).await.filter(|d| d.contains("\"gpt-5-nano-90\""))
    })
    .await;
    let b = Controller::start(&ns, "pause-b", &[]);
    eventually("pause-b in standby", Duration::from_secs(15), || async {
        (b.phase().await.as_deref() == Some("standby")).then_some(())
    })
    .await;

    // a stops mid-lease, its writes so far counted.
    let applied_before = applied_lines(&a.proc);
    let log_before = a.proc.log_text().len();
    a.proc.signal("-STOP");
    let paused = Instant::now();
    let (holder_b, took) = wait_holder(&client, &ns, "pause-b", LEASE + Duration::from_secs(10)).await;
    println!("pause-b ({holder_b}) took the Lease {took:?} after pause-a was stopped");
    eventually("pause-b leading", Duration::from_secs(10), || async {
        (b.phase().await.as_deref() == Some("leading")).then_some(())
    })
    .await;
    // The new leader writes a newer config: what a remembers is now stale.
    let took = change_and_wait(&client, &ns, 80).await;
    println!("pause-b applied a route change in {took:?}");
    // Past a's lease by more than its duration again, so a wakes to timers long due.
    let since = paused.elapsed();
    if since < LEASE * 2 {
        tokio::time::sleep(LEASE * 2 - since).await;
    }
    let before = written(&client, &ns).await;

    a.proc.signal("-CONT");
    let woke = Instant::now();
    // It stands down (exits) at once; the writes are checked first, whether or not it does.
    let mut status = None;
    while status.is_none() && woke.elapsed() < LEASE + Duration::from_secs(10) {
        status = a.proc.child.try_wait().unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("pause-a after SIGCONT: {status:?} ({:?})", woke.elapsed());
    let after_wake = a.proc.log_text()[log_before..].to_string();
    // A write a sent before it exited has landed by now; b still leads.
    eventually("pause-b still leading", Duration::from_secs(10), || async {
        (b.phase().await.as_deref() == Some("leading")).then_some(())
    })
    .await;
    let after = written(&client, &ns).await;
    assert_eq!(applied_lines(&a.proc), applied_before, "pause-a applied a config after waking:\n{after_wake}");
    assert_eq!(after.configmap, before.configmap, "the ConfigMap was written after pause-a woke:\n{after_wake}");
    assert!(after.configmap.as_ref().is_some_and(|(_, c)| c.contains("\"gpt-5-nano-80\"")), "{after:?}");
    assert_eq!(after.routes, before.routes, "a route (status) was written after pause-a woke:\n{after_wake}");
    let new_a_events: Vec<_> = after.events.iter().filter(|e| e.0 == "pause-a" && !before.events.contains(e)).collect();
    assert!(new_a_events.is_empty(), "pause-a posted Events after waking: {new_a_events:?}");
    let status = status.unwrap_or_else(|| panic!("pause-a did not stand down after waking:\n{after_wake}"));
    assert!(!status.success(), "a replica that lost its lease must exit non-zero:\n{after_wake}");
    assert_eq!(lease_holder(&client, &ns, LEASE_NAME).await.as_deref(), Some(holder_b.as_str()));
    println!("pause-a wrote nothing after waking; e2e_leader (pause) took {:?}", suite.elapsed());
}

/// The rolling-update order: replica b starts, and the holder a gets its SIGTERM as soon as b
/// logs that it waits for the Lease: b's first read finds it held, a's release comes before b's
/// next read. b must take the released Lease at
/// once (within the same bound as a normal handover), not when a's lease would have expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_started_just_before_the_release_takes_over_at_once() {
    let Some(client) = client_or_skip("e2e_leader").await else { return };
    install_crds(&client).await;
    let ns = fresh_namespace(&client, "tollgate-rolling").await;
    create::<ModelRoute>(&client, &ns, route(90)).await;
    let mut a = Controller::start(&ns, "rolling-a", &[]);
    wait_holder(&client, &ns, "rolling-a", Duration::from_secs(20)).await;
    eventually("rolling-a leading", Duration::from_secs(15), || async {
        (a.phase().await.as_deref() == Some("leading")).then_some(())
    })
    .await;
    let b = Controller::start(&ns, "rolling-b", &[]);
    // The moment b starts waiting (its log line comes just before its first read of the Lease).
    let deadline = Instant::now() + Duration::from_secs(15);
    while !b.proc.log_text().contains("waiting for the leader lease") {
        assert!(Instant::now() < deadline, "rolling-b never went on standby:\n{}", b.proc.log_tail(20));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    a.proc.signal("-TERM");
    let (holder_b, handover) = wait_holder(&client, &ns, "rolling-b", Duration::from_secs(10)).await;
    let status = a.proc.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "rolling-a after SIGTERM: {status}\n{}", a.proc.log_tail(20));
    println!("TAKE-OVER by a replica started just before the SIGTERM: {handover:?} (Lease names {holder_b})");
    assert!(
        handover < Duration::from_secs(1),
        "take-over of a Lease released before the standby's first reads took {handover:?} (lease {LEASE:?})"
    );
}
