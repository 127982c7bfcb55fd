//! What the `tollgate controller` binary asks the API server for, against a mocked API server
//! (plain HTTP on loopback, a kubeconfig pointing at it): every Secret list and watch carries the
//! label selector `tollgate.dev/provider-key=true` (issue 18), so Secrets without the label are
//! never sent to the controller, let alone cached.
//!
//! The mock answers every list with an empty list and every watch with an empty stream (so the
//! watchers list and watch again); it records each request's path and query.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

const SELECTOR: &str = "labelSelector=tollgate.dev%2Fprovider-key%3Dtrue";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secret_list_and_watch_carry_the_provider_key_selector() {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let s = seen.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let s = s.clone();
        async move {
            let uri = req.uri().to_string();
            s.lock().unwrap().push(format!("{} {uri}", req.method()));
            let query = req.uri().query().unwrap_or_default();
            if query.contains("watch=true") {
                return (axum::http::StatusCode::OK, String::new());
            }
            let kind = req.uri().path().rsplit('/').next().unwrap_or_default().to_string();
            let list = json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": [],
                              "_for": kind});
            (axum::http::StatusCode::OK, list.to_string())
        }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let dir = std::env::temp_dir().join(format!("tollgate-controller-watch-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: mock\nclusters:\n- name: mock\n  cluster: {{server: \"http://127.0.0.1:{port}\"}}\n\
             users:\n- name: mock\n  user: {{token: mock-token}}\ncontexts:\n- name: mock\n  context: {{cluster: mock, user: mock, namespace: team-a}}\n"
        ),
    )
    .unwrap();
    let health = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["controller", "--leader-election=false", "--namespaces", "team-a", "--signal-interval", "2s"])
        .args(["--listen", &format!("127.0.0.1:{health}")])
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let secrets = |seen: &Arc<Mutex<Vec<String>>>| -> Vec<String> {
        seen.lock().unwrap().iter().filter(|l| l.contains("/api/v1/namespaces/team-a/secrets")).cloned().collect()
    };
    let start = Instant::now();
    let got = loop {
        let s = secrets(&seen);
        let lists = s.iter().any(|l| l.starts_with("GET ") && !l.contains("watch=true") && l.contains(SELECTOR));
        let watches = s.iter().any(|l| l.starts_with("GET ") && l.contains("watch=true") && l.contains(SELECTOR));
        if lists && watches {
            break s;
        }
        if start.elapsed() > Duration::from_secs(20) || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            panic!("no Secret list and watch within 20 s; requests: {:#?}", seen.lock().unwrap());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    std::fs::remove_dir_all(&dir).ok();
    // Every Secret request is narrowed: to opted-in Secrets by label, or to the controller's own
    // credentials Secret by name (watched only to skip writes that change nothing).
    let own = "fieldSelector=metadata.name%3Dtollgate-credentials";
    for line in &got {
        println!("{line}");
        assert!(
            line.contains(SELECTOR) || line.contains(own),
            "a Secret request without the provider-key selector or the own-Secret name: {line}"
        );
    }
    assert!(got.iter().any(|l| l.contains(SELECTOR)), "no Secret request with the provider-key selector: {got:#?}");
    // The other watches are not narrowed by mistake: the ConfigMap watch is by name, routes are all.
    let all = seen.lock().unwrap().clone();
    assert!(
        all.iter().any(|l| l.contains("/namespaces/team-a/configmaps?") && l.contains("fieldSelector=metadata.name"))
    );
    assert!(all.iter().any(|l| l.contains("/namespaces/team-a/modelroutes?") && !l.contains("labelSelector")));
}
