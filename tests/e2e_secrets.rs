//! Issue 18 on a real API server (`KUBECONFIG`; skips without): a ModelRoute is not a way to
//! read the namespace's other Secrets.
//!
//! A ServiceAccount bound to a Role that may write ModelRoutes but not read Secrets (its token
//! from the TokenRequest API, a kube client built with that bearer token) first shows that it
//! cannot read Secret `db-password`, then creates route `exfil` whose backend's `baseUrl` is a
//! fake upstream run by this test and whose `apiKeySecretRef` names that unlabelled Secret. The
//! route gets `Ready=False`/`SecretNotOptedIn` naming the Secret and the label to add, one
//! Warning Event; the value appears in no object of the namespace (credentials Secret,
//! ConfigMaps, statuses, Events), not in the controller's or the gateway's log, and a request
//! through a real `tollgate gateway --from-configmap` never reaches the upstream with it, while
//! route `good` (a labelled Secret) keeps working. Once the Secret's owner labels it
//! `tollgate.dev/provider-key=true`, the route is Ready and the key reaches the upstream as
//! `Authorization: Bearer ...`.
//!
//! A provider key's Secret rotated, then one losing its label, then one deleted: one whole
//! controller pass after each (counted on the controller's `/metrics`), `tollgate-credentials`
//! holds the new value or no longer the key, and a `--from-configmap` gateway follows (its files,
//! and the Authorization it sends upstream).

#[path = "common/cluster.rs"]
mod cluster;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster::*;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tollgate::api::Condition;
use tollgate::api::{ModelRoute, ProviderBudget};

const LABEL: &str = "tollgate.dev/provider-key";

/// Requests the fake upstream received: (path, Authorization header).
type Seen = Arc<Mutex<Vec<(String, String)>>>;

async fn fake_upstream() -> (u16, Seen) {
    let seen: Seen = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let s = seen.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let s = s.clone();
        async move {
            let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
            s.lock().unwrap().push((req.uri().path().to_string(), auth));
            axum::Json(json!({
                "id": "chatcmpl-e2e", "object": "chat.completion", "created": 0, "model": "m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
            }))
        }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (port, seen)
}

/// A client acting as ServiceAccount `sa` of `ns`, with a token from the TokenRequest API.
async fn client_as(admin: &Client, ns: &str, sa: &str) -> Client {
    let tr: TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 3600}})).unwrap();
    let token = Api::<ServiceAccount>::namespaced(admin.clone(), ns)
        .create_token_request(sa, &PostParams::default(), &tr)
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    let mut config = kube::Config::infer().await.unwrap();
    config.auth_info = serde_json::from_value(json!({"token": token})).unwrap();
    Client::try_from(config).unwrap()
}

fn ready(conditions: &[Condition]) -> Option<(String, String, String)> {
    conditions.iter().find(|c| c.type_ == "Ready").map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn route_ready(client: &Client, ns: &str, name: &str) -> Option<(String, String, String)> {
    let r = Api::<ModelRoute>::namespaced(client.clone(), ns).get(name).await.ok()?;
    ready(&r.status?.conditions)
}

/// Every place in the namespace where the value must not be: (where, text).
async fn namespace_texts(client: &Client, ns: &str, skip_secret: &[&str]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for s in Api::<Secret>::namespaced(client.clone(), ns).list(&Default::default()).await.unwrap() {
        if skip_secret.contains(&s.name_any().as_str()) {
            continue;
        }
        let mut text = serde_json::to_string(&s).unwrap();
        for v in s.data.iter().flat_map(|d| d.values()) {
            text.push_str(&String::from_utf8_lossy(&v.0));
        }
        out.push((format!("Secret {}", s.name_any()), text));
    }
    for c in Api::<ConfigMap>::namespaced(client.clone(), ns).list(&Default::default()).await.unwrap() {
        out.push((format!("ConfigMap {}", c.name_any()), serde_json::to_string(&c).unwrap()));
    }
    for r in Api::<ModelRoute>::namespaced(client.clone(), ns).list(&Default::default()).await.unwrap() {
        out.push((format!("ModelRoute {}", r.name_any()), serde_json::to_string(&r).unwrap()));
    }
    for b in Api::<ProviderBudget>::namespaced(client.clone(), ns).list(&Default::default()).await.unwrap() {
        out.push((format!("ProviderBudget {}", b.name_any()), serde_json::to_string(&b).unwrap()));
    }
    for e in events(client, ns).await {
        out.push((format!("Event {}", e.name_any()), serde_json::to_string(&e).unwrap()));
    }
    out
}

fn assert_absent(value: &str, texts: &[(String, String)]) {
    // Also as base64, as a Secret's data is serialized.
    let b64 = serde_json::to_string(&k8s_openapi::ByteString(value.as_bytes().to_vec())).unwrap();
    let b64 = b64.trim_matches('"');
    for (place, text) in texts {
        assert!(!text.contains(value) && !text.contains(b64), "the Secret's value is in {place}");
    }
}

/// A chat completion through the gateway: (status, body); status 0 while it does not listen.
async fn chat(port: u16, model: &str) -> (u16, String) {
    let resp = match reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => return (0, e.to_string()),
    };
    let code = resp.status().as_u16();
    (code, resp.text().await.unwrap_or_default())
}

fn backend(name: &str, upstream: u16, path: &str, secret: &str, key: &str) -> Value {
    json!({"name": name, "provider": "openai", "model": "gpt-5-mini",
           "endpoint": {"baseUrl": format!("http://127.0.0.1:{upstream}/{path}/v1"),
                        "apiKeySecretRef": {"name": secret, "key": key}},
           "pricing": {"input": "0.25", "output": "2.00"}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_cannot_read_an_unlabelled_secret() {
    let suite = Instant::now();
    let Some(admin) = client_or_skip("e2e_secrets").await else { return };
    install_crds(&admin).await;
    let ns = fresh_namespace(&admin, "tollgate-secrets").await;
    let secret_value = format!("db-pass-{:016x}", rand::random::<u64>());
    let team_key = format!("sk-team-{:016x}", rand::random::<u64>());

    // The Secrets' owner: a database password (unlabelled) and a provider key (labelled).
    create::<Secret>(
        &admin,
        &ns,
        json!({"metadata": {"name": "db-password"}, "stringData": {"password": secret_value}}),
    )
    .await;
    create::<Secret>(
        &admin,
        &ns,
        json!({"metadata": {"name": "team-key", "labels": {LABEL: "true"}}, "stringData": {"api-key": team_key}}),
    )
    .await;

    // A route writer who may not read Secrets.
    create::<ServiceAccount>(&admin, &ns, json!({"metadata": {"name": "route-writer"}})).await;
    create::<Role>(
        &admin,
        &ns,
        json!({"metadata": {"name": "route-writer"}, "rules": [
            {"apiGroups": ["tollgate.dev"], "resources": ["modelroutes", "providerbudgets"],
             "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]}]}),
    )
    .await;
    create::<RoleBinding>(
        &admin,
        &ns,
        json!({"metadata": {"name": "route-writer"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "route-writer"},
               "subjects": [{"kind": "ServiceAccount", "name": "route-writer", "namespace": ns}]}),
    )
    .await;
    let writer = client_as(&admin, &ns, "route-writer").await;
    let denied = Api::<Secret>::namespaced(writer.clone(), &ns).get("db-password").await;
    assert!(matches!(&denied, Err(kube::Error::Api(s)) if s.code == 403), "{denied:?}");
    let denied = Api::<Secret>::namespaced(writer.clone(), &ns).list(&Default::default()).await;
    assert!(matches!(&denied, Err(kube::Error::Api(s)) if s.code == 403), "{:?}", denied.map(|_| ()));
    println!("route-writer may not get or list Secrets (403)");

    let (upstream, seen) = fake_upstream().await;
    let controller = Controller::start(&ns, "secrets-controller", &["--leader-election=false"]);
    for (name, path, secret, key) in
        [("good", "good", "team-key", "api-key"), ("exfil", "exfil", "db-password", "password")]
    {
        create::<ModelRoute>(
            &writer,
            &ns,
            json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "ModelRoute", "metadata": {"name": name},
                   "spec": {"backends": [backend(name, upstream, path, secret, key)]}}),
        )
        .await;
    }
    println!("route-writer created ModelRoutes good (team-key) and exfil (db-password, baseUrl = the test's upstream)");

    let ((status, reason, message), took) =
        eventually("exfil Ready=False SecretNotOptedIn", Duration::from_secs(20), || async {
            route_ready(&admin, &ns, "exfil").await.filter(|r| r.1 == "SecretNotOptedIn")
        })
        .await;
    println!("exfil after {took:?}: Ready={status} {reason}: {message}");
    assert_eq!(status, "False");
    let fix = format!("kubectl label secret -n {ns} db-password tollgate.dev/provider-key=true");
    assert!(message.contains(&format!("Secret {ns}/db-password")) && message.contains(&fix), "{message}");
    let (good, _) = eventually("good Ready=True", Duration::from_secs(20), || async {
        route_ready(&admin, &ns, "good").await.filter(|r| r.0 == "True")
    })
    .await;
    println!("good: Ready={} {}", good.0, good.1);
    let creds = Api::<Secret>::namespaced(admin.clone(), &ns).get("tollgate-credentials").await.unwrap();
    let keys: Vec<String> = creds.data.unwrap_or_default().keys().cloned().collect();
    assert_eq!(keys, ["team-key_api-key"], "only the labelled Secret's key is copied");

    // A real gateway following the ConfigMap and the credentials Secret through the API.
    let gateway = ApiGateway::start(&ns, &["--max-attempts", "1"], &[]);
    let gw_api = gateway.api;
    eventually("the gateway serves good", Duration::from_secs(20), || async {
        let (code, _) = chat(gw_api, "good").await;
        (code == 200).then_some(())
    })
    .await;
    let (code, body) = chat(gw_api, "exfil").await;
    println!("request to exfil through the gateway: {code} {}", body.trim());
    assert_ne!(code, 200, "{body}");
    {
        let seen = seen.lock().unwrap();
        println!("upstream saw: {:?}", seen.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>());
        assert!(seen.iter().any(|(p, a)| p == "/good/v1/chat/completions" && *a == format!("Bearer {team_key}")));
        assert!(!seen.iter().any(|(p, _)| p.starts_with("/exfil")), "the exfil route reached the upstream");
        assert!(!seen.iter().any(|(_, a)| a.contains(&secret_value)));
    }

    // A few more passes: still exactly one Warning Event, and the value is nowhere.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let all = events(&admin, &ns).await;
    let warned = events_of(&all, "SecretNotOptedIn", "exfil");
    assert_eq!(warned.len(), 1, "one Event per problem");
    print_event(warned[0]);
    assert_eq!(warned[0].type_.as_deref(), Some("Warning"));
    assert!(warned[0].series.is_none(), "repeated: {:?}", warned[0].series);
    assert_absent(&secret_value, &namespace_texts(&admin, &ns, &["db-password"]).await);
    assert!(!controller.proc.log_text().contains(&secret_value), "the value is in the controller's log");
    assert!(!gateway.proc.log_text().contains(&secret_value), "the value is in the gateway's log");
    for f in std::fs::read_dir(&gateway.creds).unwrap() {
        let f = f.unwrap();
        let text = std::fs::read_to_string(f.path()).unwrap_or_default();
        assert!(!text.contains(&secret_value), "the value is in the gateway's credential file {:?}", f.file_name());
    }
    println!("the value of db-password is in no object, log, credential file or upstream request");

    // The Secret's owner opts it in: the route becomes Ready and the key reaches the upstream.
    let labelled = Instant::now();
    Api::<Secret>::namespaced(admin.clone(), &ns)
        .patch("db-password", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {LABEL: "true"}}})))
        .await
        .unwrap();
    let (_, took) = eventually("exfil Ready=True after the label", Duration::from_secs(20), || async {
        route_ready(&admin, &ns, "exfil").await.filter(|r| r.0 == "True")
    })
    .await;
    println!("exfil Ready {took:?} after the Secret was labelled");
    let (_, took) = eventually("the key reaches the upstream", Duration::from_secs(20), || async {
        let (code, _) = chat(gw_api, "exfil").await;
        (code == 200).then_some(())
    })
    .await;
    println!("exfil answered 200 through the gateway {took:?} later ({:?} after the label)", labelled.elapsed());
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .any(|(p, a)| p == "/exfil/v1/chat/completions" && *a == format!("Bearer {secret_value}")),
        "the labelled Secret's key did not reach the upstream as a Bearer token"
    );
    // Still never in a ConfigMap, a status, an Event or a log (only the credentials Secret).
    assert_absent(&secret_value, &namespace_texts(&admin, &ns, &["db-password", "tollgate-credentials"]).await);
    assert!(!controller.proc.log_text().contains(&secret_value), "the value is in the controller's log");
    assert!(!gateway.proc.log_text().contains(&secret_value), "the value is in the gateway's log");
    drop(gateway.proc);
    std::fs::remove_dir_all(&gateway.creds).ok();
    println!("e2e_secrets took {:?}", suite.elapsed());
}

/// Passes the controller has completed (`tollgate_controller_reconcile_duration_seconds_count`).
async fn passes_done(c: &Controller) -> u64 {
    let (_, text) = http_get(c.health, "/metrics").await.expect("the controller's /metrics answers");
    let line = text
        .lines()
        .find(|l| l.starts_with("tollgate_controller_reconcile_duration_seconds_count"))
        .unwrap_or_else(|| panic!("no pass count in the controller's /metrics:\n{text}"));
    line.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64
}

/// Waits until the controller has completed two passes since now: the second began after the
/// first ended, so after this call; what one pass does is then done.
async fn one_whole_pass(c: &Controller) {
    let start = passes_done(c).await;
    eventually("two more controller passes", Duration::from_secs(20), || async {
        (passes_done(c).await >= start + 2).then_some(())
    })
    .await;
}

/// The keys of `tollgate-credentials` and their values (`None` before it exists).
async fn credentials(client: &Client, ns: &str) -> Option<Vec<(String, String)>> {
    let s = Api::<Secret>::namespaced(client.clone(), ns).get_opt("tollgate-credentials").await.unwrap()?;
    Some(s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, String::from_utf8_lossy(&v.0).to_string())).collect())
}

/// The credential files a gateway wrote, and their contents.
fn gateway_files(g: &ApiGateway) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir(&g.creds)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .map(|e| {
                    (e.file_name().to_string_lossy().to_string(), std::fs::read_to_string(e.path()).unwrap_or_default())
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// A provider key's Secret rotated, losing its opt-in label, or deleted: within one controller
/// pass `tollgate-credentials` holds the new value, or no longer the key; a gateway following
/// it through the API rewrites or removes its file and sends the new key (or none) upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_key_rotated_unlabelled_or_deleted_leaves_the_credentials() {
    let suite = Instant::now();
    let Some(admin) = client_or_skip("e2e_secrets").await else { return };
    install_crds(&admin).await;
    let ns = fresh_namespace(&admin, "tollgate-keys").await;
    let value = |tag: &str| format!("sk-{tag}-{:016x}", rand::random::<u64>());
    let (a1, a2, b1) = (value("a1"), value("a2"), value("b1"));
    for (name, v) in [("key-a", &a1), ("key-b", &b1)] {
        create::<Secret>(
            &admin,
            &ns,
            json!({"metadata": {"name": name, "labels": {LABEL: "true"}}, "stringData": {"api-key": v}}),
        )
        .await;
    }
    let (upstream, seen) = fake_upstream().await;
    for (route, secret) in [("ra", "key-a"), ("rb", "key-b")] {
        create::<ModelRoute>(
            &admin,
            &ns,
            json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "ModelRoute", "metadata": {"name": route},
                   "spec": {"backends": [backend(route, upstream, route, secret, "api-key")]}}),
        )
        .await;
    }
    let controller = Controller::start(&ns, "keys-controller", &["--leader-election=false"]);
    let both = vec![("key-a_api-key".to_string(), a1.clone()), ("key-b_api-key".to_string(), b1.clone())];
    eventually("both keys in tollgate-credentials", Duration::from_secs(20), || async {
        (credentials(&admin, &ns).await == Some(both.clone())).then_some(())
    })
    .await;
    let gateway = ApiGateway::start(&ns, &["--max-attempts", "1"], &[]);
    let gw = gateway.api;
    eventually("the gateway has both keys", Duration::from_secs(20), || async {
        (gateway_files(&gateway) == both).then_some(())
    })
    .await;
    for route in ["ra", "rb"] {
        eventually(&format!("{route} served"), Duration::from_secs(20), || async {
            (chat(gw, route).await.0 == 200).then_some(())
        })
        .await;
    }
    let auth_of = |path: &str| -> Vec<String> {
        seen.lock().unwrap().iter().filter(|(p, _)| p.starts_with(path)).map(|(_, a)| a.clone()).collect()
    };
    assert_eq!(auth_of("/ra/").last(), Some(&format!("Bearer {a1}")));
    let secrets = Api::<Secret>::namespaced(admin.clone(), &ns);

    // 1. key-a rotated.
    secrets
        .patch("key-a", &PatchParams::default(), &Patch::Merge(json!({"stringData": {"api-key": a2}})))
        .await
        .unwrap();
    one_whole_pass(&controller).await;
    let rotated = vec![("key-a_api-key".to_string(), a2.clone()), ("key-b_api-key".to_string(), b1.clone())];
    assert_eq!(credentials(&admin, &ns).await, Some(rotated.clone()), "one pass after the rotation");
    let (_, took) = eventually("the gateway has the rotated key", Duration::from_secs(10), || async {
        (gateway_files(&gateway) == rotated).then_some(())
    })
    .await;
    println!("rotated key-a: in tollgate-credentials within one pass, in the gateway's files {took:?} later");
    let (_, took) = eventually("the rotated key upstream", Duration::from_secs(10), || async {
        (chat(gw, "ra").await.0 == 200 && auth_of("/ra/").last() == Some(&format!("Bearer {a2}"))).then_some(())
    })
    .await;
    println!("the gateway sends the rotated key {took:?} after it wrote the file (its key cache lasts 1 s)");

    // 2. key-b loses its opt-in label: no longer the controller's to copy.
    secrets
        .patch("key-b", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {LABEL: null}}})))
        .await
        .unwrap();
    one_whole_pass(&controller).await;
    let only_a = vec![("key-a_api-key".to_string(), a2.clone())];
    assert_eq!(credentials(&admin, &ns).await, Some(only_a.clone()), "one pass after the label went");
    let (_, took) = eventually("the gateway dropped key-b", Duration::from_secs(10), || async {
        (gateway_files(&gateway) == only_a).then_some(())
    })
    .await;
    println!(
        "unlabelled key-b: out of tollgate-credentials within one pass, out of the gateway's files {took:?} later"
    );
    let (ready, _) = eventually("rb Ready=False SecretNotOptedIn", Duration::from_secs(10), || async {
        route_ready(&admin, &ns, "rb").await.filter(|r| r.1 == "SecretNotOptedIn")
    })
    .await;
    assert_eq!(ready.0, "False");
    let (_, took) = eventually("the unlabelled key no longer upstream", Duration::from_secs(10), || async {
        let before = auth_of("/rb/").len();
        let _ = chat(gw, "rb").await;
        auth_of("/rb/").iter().skip(before).all(|a| !a.contains(&b1)).then_some(())
    })
    .await;
    println!("the gateway stopped sending the unlabelled key {took:?} after it removed the file");

    // 3. key-a deleted.
    secrets.delete("key-a", &Default::default()).await.unwrap();
    one_whole_pass(&controller).await;
    assert_eq!(credentials(&admin, &ns).await, Some(vec![]), "one pass after the deletion");
    let (_, took) = eventually("the gateway dropped key-a", Duration::from_secs(10), || async {
        gateway_files(&gateway).is_empty().then_some(())
    })
    .await;
    println!("deleted key-a: out of tollgate-credentials within one pass, out of the gateway's files {took:?} later");
    let (_, took) = eventually("the deleted key no longer upstream", Duration::from_secs(10), || async {
        let before = auth_of("/ra/").len();
        let _ = chat(gw, "ra").await;
        auth_of("/ra/").iter().skip(before).all(|a| !a.contains(&a2)).then_some(())
    })
    .await;
    println!("the gateway stopped sending the deleted key {took:?} after it removed the file");
    for v in [&a1, &a2, &b1] {
        assert!(!controller.proc.log_text().contains(v.as_str()), "a key is in the controller's log");
        assert!(!gateway.proc.log_text().contains(v.as_str()), "a key is in the gateway's log");
    }
    drop(gateway.proc);
    std::fs::remove_dir_all(&gateway.creds).ok();
    println!("e2e_secrets (keys) took {:?}", suite.elapsed());
}
