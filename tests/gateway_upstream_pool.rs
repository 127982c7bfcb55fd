//! The gateway's upstream connection pool, proved against the real binary over loopback: an
//! upstream connection left idle longer than `--upstream-idle-timeout` is closed by the gateway
//! (its descriptor released, even when no request ever comes again and the upstream never
//! closes it), and one reused within it is kept alive.
//!
//! Rules: the gateway is a child process configured by `tollgate render` from a manifest; the
//! upstream is a hand-written HTTP/1.1 server on 127.0.0.1:0 that never closes a connection
//! itself and counts the connections it accepted and those the gateway closed; every wait has a
//! deadline derived from the configured timeout.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::proc::{Proc, TempDir, free_port, wait_until};

const ANSWER: &str = r#"{"id":"c1","object":"chat.completion","created":1,"model":"up-model","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;

/// Connections the upstream accepted, and those whose peer (the gateway) closed them.
#[derive(Default)]
struct Conns {
    accepted: AtomicUsize,
    closed_by_gateway: AtomicUsize,
}

/// A keep-alive upstream answering every request with [`ANSWER`]; it never closes a connection.
async fn upstream() -> (String, Arc<Conns>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", l.local_addr().unwrap());
    let conns = Arc::new(Conns::default());
    let c = conns.clone();
    tokio::spawn(async move {
        loop {
            let (sock, _) = l.accept().await.unwrap();
            c.accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(sock, c.clone()));
        }
    });
    (base, conns)
}

async fn serve(mut sock: TcpStream, conns: Arc<Conns>) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    conns.closed_by_gateway.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_end + len);
        let reply = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{ANSWER}",
            ANSWER.len()
        );
        sock.write_all(reply.as_bytes()).await.unwrap();
    }
}

struct Gw {
    _proc: Proc,
    base: String,
    _dir: TempDir,
}

/// `tollgate gateway` with one route (`chat`) to `upstream`, and `flags`.
async fn gateway(tag: &str, upstream: &str, flags: &[&str]) -> Gw {
    let dir = TempDir::new(tag);
    let mdir = dir.join("manifests");
    std::fs::create_dir(&mdir).unwrap();
    std::fs::write(
        mdir.join("route.yaml"),
        format!(
            "apiVersion: tollgate.dev/v1alpha1\nkind: ModelRoute\nmetadata: {{name: chat}}\nspec:\n  backends:\n    - name: up\n      provider: openai\n      model: up-model\n      endpoint: {{baseUrl: \"{upstream}\"}}\n      pricing: {{input: \"2.50\", output: \"10\"}}\n"
        ),
    )
    .unwrap();
    let out = std::process::Command::new(common::proc::BIN).arg("render").arg("-f").arg(&mdir).output().unwrap();
    assert!(out.status.success(), "render failed: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(dir.join("config.json"), &out.stdout).unwrap();
    let port = free_port();
    let mut args: Vec<String> = [
        "gateway",
        "--config",
        dir.join("config.json").to_str().unwrap(),
        "--credentials-dir",
        dir.path().to_str().unwrap(),
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--metrics-listen",
        &format!("127.0.0.1:{}", free_port()),
        "--workers",
        "2",
    ]
    .map(String::from)
    .to_vec();
    args.extend(flags.iter().map(|f| f.to_string()));
    let proc = Proc::spawn("tollgate gateway", &args, dir.join("gateway.log"));
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !client.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status() == 200) {
        assert!(Instant::now() < deadline, "the gateway did not become ready; log:\n{}", proc.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Gw { _proc: proc, base, _dir: dir }
}

async fn chat(client: &reqwest::Client, gw: &Gw) {
    let r = client
        .post(format!("{}/v1/chat/completions", gw.base))
        .json(&json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "hi");
}

#[tokio::test]
async fn idle_upstream_connections_are_closed_after_the_idle_timeout() {
    let (up, conns) = upstream().await;
    let idle = Duration::from_millis(300);
    let gw = gateway("pool-idle", &up, &["--upstream-idle-timeout", "300ms"]).await;
    // Concurrent requests, so that the pool holds more than one idle connection afterwards.
    let client = reqwest::Client::new();
    futures::future::join_all((0..4).map(|_| chat(&client, &gw))).await;
    let opened = conns.accepted.load(Ordering::SeqCst);
    assert!(opened >= 1);
    // No request follows: only the pool's own eviction can close them. It checks every idle
    // timeout, so a connection goes within two timeouts of its last use; the bound leaves room
    // for a loaded machine.
    wait_until("the gateway to close its idle upstream connections", idle * 2 + Duration::from_secs(10), || {
        let c = conns.clone();
        async move { c.closed_by_gateway.load(Ordering::SeqCst) == c.accepted.load(Ordering::SeqCst) }
    })
    .await;
    assert_eq!(conns.accepted.load(Ordering::SeqCst), opened, "no connection was opened after the requests");
}

#[tokio::test]
async fn an_upstream_connection_reused_within_the_idle_timeout_stays_open() {
    let (up, conns) = upstream().await;
    let gw = gateway("pool-reuse", &up, &["--upstream-idle-timeout", "60s"]).await;
    // One client connection: the gateway serves it on one thread, whose pool holds the upstream
    // connection.
    let client = reqwest::Client::new();
    chat(&client, &gw).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    chat(&client, &gw).await;
    assert_eq!(conns.accepted.load(Ordering::SeqCst), 1, "the second request reused the pooled connection");
    assert_eq!(conns.closed_by_gateway.load(Ordering::SeqCst), 0);
}
