//! Operational claims of `tollgate gateway`, proved against the real binary over loopback:
//! what is failed over and what is not (a 403 with a spare backend), the connect timeout
//! against an address that never answers, the total timeout of a stream, the request-head size
//! limit and read timeout, SIGTERM with streams in flight, `/v1/completions` metered to the
//! pico-dollar, `x-request-id` passed back, and which outcomes count toward ejection (the
//! `outcome` label in `/metrics`, and the backend state `tollgate local` reaches), and idle
//! upstream connections closed after `--upstream-idle-timeout`.
//!
//! Rules: the gateway is a child process configured by `tollgate render` from manifests (no
//! library types), upstreams are fakes on 127.0.0.1:0, every wait has a deadline, and timeouts
//! are tight only in the test whose subject they are (bounds derive from the configured values).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::proc::{Proc, TempDir, free_port, request_outcomes, series, wait_until};
use common::upstream::{Fake, Seen, black_hole, paced_sse, reply};

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// A backend row of a manifest: name, base URL, priority (tier).
struct Row<'a>(&'a str, String, u32);

/// One ModelRoute manifest; every backend is `provider: openai`, model `<name>-model`, priced
/// $2.50 input / $10 output per 1M tokens.
fn route_yaml(name: &str, rows: &[Row<'_>], extra: &str) -> String {
    let mut s = format!(
        "apiVersion: tollgate.dev/v1alpha1\nkind: ModelRoute\nmetadata: {{name: {name}}}\nspec:\n  strategy: Priority\n  backends:\n"
    );
    for Row(b, url, priority) in rows {
        s.push_str(&format!(
            "    - name: {b}\n      provider: openai\n      model: {b}-model\n      priority: {priority}\n      endpoint: {{baseUrl: \"{url}\"}}\n      pricing: {{input: \"2.50\", output: \"10\"}}\n"
        ));
    }
    s.push_str(extra);
    s
}

struct Gw {
    proc: Proc,
    base: String,
    port: u16,
    metrics_url: String,
    client: reqwest::Client,
    _dir: TempDir,
}

/// Renders `manifests` with `tollgate render` and starts `tollgate gateway` on it with `flags`.
async fn gateway(tag: &str, manifests: &[String], flags: &[&str]) -> Gw {
    let dir = TempDir::new(tag);
    let mdir = dir.join("manifests");
    std::fs::create_dir(&mdir).unwrap();
    std::fs::write(mdir.join("routes.yaml"), manifests.join("---\n")).unwrap();
    let out = std::process::Command::new(common::proc::BIN).arg("render").arg("-f").arg(&mdir).output().unwrap();
    assert!(out.status.success(), "render failed: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(dir.join("config.json"), &out.stdout).unwrap();
    let (port, mport) = (free_port(), free_port());
    let mut args: Vec<String> = [
        "gateway",
        "--config",
        dir.join("config.json").to_str().unwrap(),
        "--credentials-dir",
        dir.path().to_str().unwrap(),
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--metrics-listen",
        &format!("127.0.0.1:{mport}"),
        "--workers",
        "2",
    ]
    .map(String::from)
    .to_vec();
    args.extend(flags.iter().map(|f| f.to_string()));
    let proc = Proc::spawn("tollgate gateway", &args, dir.join("gateway.log"));
    let gw = Gw {
        proc,
        base: format!("http://127.0.0.1:{port}"),
        port,
        metrics_url: format!("http://127.0.0.1:{mport}/metrics"),
        client: reqwest::Client::new(),
        _dir: dir,
    };
    let (client, url) = (gw.client.clone(), format!("{}/readyz", gw.base));
    let ready = async {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if client.get(&url).send().await.is_ok_and(|r| r.status() == 200) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    };
    assert!(ready.await, "the gateway did not become ready; log:\n{}", gw.proc.logs());
    gw
}

impl Gw {
    async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.client.post(format!("{}{path}", self.base)).json(&body).send().await.unwrap()
    }

    async fn metrics(&self) -> String {
        self.client.get(&self.metrics_url).send().await.unwrap().text().await.unwrap()
    }

    /// `(backend, outcome, count)` of one route, waiting until `expected` shows (streams are
    /// counted when they end, a moment after the client saw the end).
    async fn outcomes_become(&self, route: &str, expected: &[(&str, &str, u64)]) {
        let want: Vec<(String, String, u64)> =
            expected.iter().map(|(b, o, n)| (b.to_string(), o.to_string(), *n)).collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = request_outcomes(&self.metrics().await, route);
            if got == want {
                return;
            }
            assert!(Instant::now() < deadline, "route {route}: outcomes {got:?}, expected {want:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Status, `error.code`, `error.type`, `error.message`; fails unless the body is OpenAI-shaped.
async fn openai_error(r: reqwest::Response) -> (u16, String, String, String) {
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    let s = |k: &str| v["error"][k].as_str().unwrap_or_default().to_string();
    assert!(!s("message").is_empty() && !s("type").is_empty(), "not an OpenAI-shaped error: {v}");
    assert!(v["error"].get("code").is_some() && v["error"].get("param").is_some(), "not OpenAI-shaped: {v}");
    (status, s("code"), s("type"), s("message"))
}

/// Reads a stream to its end: the `data:` payloads, and `Err` when the stream broke.
async fn read_events(r: reqwest::Response) -> (Vec<String>, Result<(), String>) {
    let mut text = String::new();
    let mut s = r.bytes_stream();
    let mut end = Ok(());
    while let Some(c) = s.next().await {
        match c {
            Ok(c) => text.push_str(&String::from_utf8_lossy(&c)),
            Err(e) => {
                end = Err(format!("{e:?}"));
                break;
            }
        }
    }
    let events = text.split("\n\n").filter_map(|e| e.strip_prefix("data: ")).map(str::to_string).collect();
    (events, end)
}

fn content_chunk(i: usize) -> String {
    format!(
        "data: {}\n\n",
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
               "choices": [{"index": 0, "delta": {"content": format!("c{i} ")}, "finish_reason": null}]})
    )
}

/// `n` content chunks, a usage chunk (1000 input, 500 output tokens) and `[DONE]`.
fn chat_stream_events(n: usize) -> Vec<String> {
    let mut v: Vec<String> = (0..n).map(content_chunk).collect();
    v.push(format!(
        "data: {}\n\ndata: [DONE]\n\n",
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [],
               "usage": {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500}})
    ));
    v
}

/// An OpenAI chat provider answering at once: 1000 input and 500 output tokens, `$0.0075` at
/// the manifests' prices (1000 × $2.50 + 500 × $10 per 1M).
async fn chat_provider() -> Fake {
    Fake::start(|s: &Seen, _| {
        if s.body["stream"] == true {
            paced_sse(chat_stream_events(2), Duration::ZERO, &[])
        } else {
            reply(
                200,
                json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "served",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500}})
                .to_string(),
                &[],
            )
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Failover rules
// ---------------------------------------------------------------------------------------------

/// docs/routing.md (failover): "never on another 4xx (passed back with its status [...]; an
/// upstream 401/403 becomes 502 `upstream_auth_failed`)". A spare backend exists and is never called.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_403_or_422_with_a_spare_backend_is_not_failed_over() {
    let forbidden = Fake::fixed(
        403,
        r#"{"error":{"message":"Project proj_1 does not have access to model a-model","type":"invalid_request_error","param":null,"code":"model_not_found"}}"#,
        &[],
    )
    .await;
    let unprocessable = Fake::fixed(
        422,
        r#"{"error":{"message":"temperature must be at most 2","type":"invalid_request_error","param":"temperature","code":null}}"#,
        &[],
    )
    .await;
    let spare = chat_provider().await;
    let gw = gateway(
        "gw403",
        &[
            route_yaml("chat", &[Row("a", forbidden.base_url(), 0), Row("b", spare.base_url(), 1)], ""),
            route_yaml("strict", &[Row("c", unprocessable.base_url(), 0), Row("d", spare.base_url(), 1)], ""),
        ],
        &[],
    )
    .await;

    let r = gw.post("/v1/chat/completions", json!({"model": "chat", "messages": []})).await;
    assert_eq!(header(&r, "x-tollgate-backend"), Some("a"), "answered for the first backend");
    assert_eq!(header(&r, "x-tollgate-attempts"), None, "one attempt only");
    let (status, code, kind, message) = openai_error(r).await;
    assert_eq!((status, code.as_str(), kind.as_str()), (502, "upstream_auth_failed", "api_error"));
    assert_eq!(
        message,
        "Backend `a` refused the gateway's credentials (403): Project proj_1 does not have access to model a-model"
    );

    let r = gw.post("/v1/chat/completions", json!({"model": "strict", "temperature": 9})).await;
    assert_eq!(r.status(), 422);
    assert_eq!(header(&r, "x-tollgate-backend"), Some("c"));
    // Upstream 4xx bodies are rebuilt from their known fields only (issue 10: no echoed key can
    // pass through an unknown field), so the client gets the same error, not the same bytes.
    let body: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(
        body,
        json!({"error": {"message": "temperature must be at most 2", "type": "invalid_request_error", "param": "temperature", "code": null}}),
        "the upstream's error, rebuilt from its known fields"
    );

    assert_eq!((forbidden.hits(), unprocessable.hits(), spare.hits()), (1, 1, 0), "the spare was never called");
    gw.outcomes_become("chat", &[("a", "client_error", 1)]).await;
    gw.outcomes_become("strict", &[("c", "client_error", 1)]).await;
}

/// A connect that never completes (SYNs dropped on loopback) ends at `--connect-timeout`, is
/// counted `connect_error` (src/gateway/upstream.rs: "Could not connect (refused, DNS, TLS
/// handshake, connect timeout)") and fails over; with no spare, the client gets 502 `upstream_unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_to_a_silent_address_fails_over_as_connect_error() {
    let (hole, _listener, _held) = black_hole().await;
    let spare = chat_provider().await;
    let hole_url = format!("http://{hole}/v1");
    let connect_timeout = Duration::from_millis(400);
    let first_byte_timeout = Duration::from_secs(20);
    let gw = gateway(
        "gwconnect",
        &[
            route_yaml("chat", &[Row("hole", hole_url.clone(), 0), Row("spare", spare.base_url(), 1)], ""),
            route_yaml("alone", &[Row("hole2", hole_url, 0)], ""),
        ],
        &["--connect-timeout", "400ms", "--first-byte-timeout", "20s", "--max-attempts", "2"],
    )
    .await;

    let t0 = Instant::now();
    let r = gw.post("/v1/chat/completions", json!({"model": "chat", "messages": []})).await;
    let took = t0.elapsed();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-tollgate-backend"), Some("spare"));
    assert_eq!(header(&r, "x-tollgate-attempts"), Some("2"));
    assert!(took >= connect_timeout, "the connect attempt was waited for: {took:?}");
    assert!(took < first_byte_timeout, "ended by the connect timeout, not the first-byte one: {took:?}");
    assert_eq!(spare.hits(), 1);
    gw.outcomes_become("chat", &[("hole", "connect_error", 1), ("spare", "ok", 1)]).await;

    let t0 = Instant::now();
    let r = gw.post("/v1/chat/completions", json!({"model": "alone"})).await;
    let took = t0.elapsed();
    let (status, code, _, message) = openai_error(r).await;
    assert_eq!((status, code.as_str()), (502, "upstream_unavailable"), "{message}");
    assert!(message.starts_with("All upstreams failed (1 attempt); last: backend `hole2` is unreachable"), "{message}");
    assert!(took >= connect_timeout && took < first_byte_timeout, "{took:?}");
    gw.outcomes_become("alone", &[("hole2", "connect_error", 1)]).await;
}

// ---------------------------------------------------------------------------------------------
// Config documents
// ---------------------------------------------------------------------------------------------

/// A controller rolled out ahead of its gateways writes a document of a newer schema version,
/// with fields this gateway has never heard of: the gateway refuses it saying which version it
/// found and which it reads (not "unknown field"), counts it in
/// `tollgate_config_reload_errors_total` and keeps serving the last good document. The same for
/// a split document's index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_of_a_newer_schema_version_is_refused_and_the_last_good_one_serves() {
    let up = chat_provider().await;
    let gw =
        gateway("gwnewer", &[route_yaml("chat", &[Row("a", up.base_url(), 0)], "")], &["--reload-interval", "100ms"])
            .await;
    let path = gw._dir.join("config.json");
    let good: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let good_rev = good["revision"].as_str().unwrap().to_string();
    let text = gw.metrics().await;
    assert_eq!(series(&text, "tollgate_config_reload_errors_total", &[]), Some(0.0), "{text}");

    // Version 2, as a newer controller writes it: a field at the top and one in a route.
    let mut newer = good.clone();
    newer["version"] = json!(2);
    newer["revision"] = json!("sha256:0123456789abcdef");
    newer["spendLimits"] = json!([{"provider": "openai", "limit": "1"}]);
    newer["routes"][0]["budgetRefs"] = json!(["openai-daily"]);
    common::proc::write_atomic(&path, newer.to_string().as_bytes());
    let errors = |text: &str| series(text, "tollgate_config_reload_errors_total", &[]);
    wait_until("the newer document counted as refused", Duration::from_secs(10), || async {
        errors(&gw.metrics().await) == Some(1.0)
    })
    .await;
    let text = gw.metrics().await;
    let logs = gw.proc.logs();
    let line =
        logs.lines().find(|l| l.contains("config refused")).unwrap_or_else(|| panic!("no refusal logged:\n{logs}"));
    assert!(line.contains("config version 2 is newer than this gateway reads (version 1)"), "{line}");
    assert!(!line.contains("unknown field"), "the version is the reason, not its new fields: {line}");
    assert_eq!(series(&text, "tollgate_config_revision_info", &[("revision", &good_rev)]), Some(1.0), "{text}");
    let r = gw.post("/v1/chat/completions", json!({"model": "chat"})).await;
    assert_eq!(r.status(), 200, "the last good document serves");

    // A split document's index of the newer version (the reader falls back to it once
    // config.json is gone).
    let index = json!({"version": 2, "revision": "sha256:0123456789abcdef", "shards": [{"key": "shard-1.json.gz",
                       "sha256": "00", "routes": 1}], "compression": "zstd"});
    common::proc::write_atomic(&gw._dir.join("config.index.json"), index.to_string().as_bytes());
    std::fs::remove_file(&path).unwrap();
    wait_until("the newer index counted as refused", Duration::from_secs(10), || async {
        errors(&gw.metrics().await) == Some(2.0)
    })
    .await;
    let text = gw.metrics().await;
    let logs = gw.proc.logs();
    let line = logs.lines().filter(|l| l.contains("config refused")).nth(1).unwrap_or_else(|| panic!("{logs}"));
    assert!(line.contains("config version 2 is newer than this gateway reads (version 1)"), "{line}");
    assert_eq!(series(&text, "tollgate_config_revision_info", &[("revision", &good_rev)]), Some(1.0), "{text}");
    assert_eq!(gw.post("/v1/chat/completions", json!({"model": "chat"})).await.status(), 200);
}

// ---------------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------------

/// `--total-timeout` bounds a whole request, streams included: a stream still going when it
/// runs out is cut (the client sees a broken stream, never `[DONE]`), counted `timeout`, and its
/// usage counted missing (`stream_interrupted`), not billed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn total_timeout_cuts_a_slow_stream() {
    let every = Duration::from_millis(100);
    let chunks = 40; // 4 s of stream
    let slow = Fake::start(move |_, _| paced_sse(chat_stream_events(chunks), every, &[])).await;
    let total = Duration::from_secs(1);
    let gw = gateway(
        "gwtotal",
        &[route_yaml("chat", &[Row("s", slow.base_url(), 0)], "")],
        &["--total-timeout", "1s", "--idle-stream-timeout", "30s", "--first-byte-timeout", "30s"],
    )
    .await;
    let t0 = Instant::now();
    let r = gw.post("/v1/chat/completions", json!({"model": "chat", "stream": true})).await;
    assert_eq!(r.status(), 200);
    let (events, end) = read_events(r).await;
    let took = t0.elapsed();
    assert!(end.is_err(), "a cut stream must not look complete: {events:?}");
    assert!(!events.iter().any(|e| e == "[DONE]"));
    assert!(!events.is_empty() && events.len() < chunks, "cut part way: {} events", events.len());
    assert!(took >= total, "not before the total timeout: {took:?}");
    assert!(took < every * chunks as u32, "before the stream's own end: {took:?}");
    gw.outcomes_become("chat", &[("s", "timeout", 1)]).await;
    let text = gw.metrics().await;
    let labels = [("route", "chat"), ("backend", "s"), ("provider", "openai"), ("model", "s-model")];
    let mut missing = labels.to_vec();
    missing.push(("reason", "stream_interrupted"));
    assert_eq!(series(&text, "tollgate_usage_missing_total", &missing), Some(1.0), "{text}");
    // The idle series is exported at 0 from the config's load: present, and nothing billed.
    assert_eq!(series(&text, "tollgate_cost_nanousd_total", &labels), Some(0.0), "{text}");
}

/// Sends raw bytes on a fresh connection and reads until the server closes it or `limit`.
async fn raw_exchange(port: u16, request: &[u8], limit: Duration) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// `--max-header-bytes`: a request head over the limit gets 431 (one under it is served);
/// `--header-read-timeout`: a client trickling its headers (slowloris) is disconnected once the
/// timeout has passed, without an answer (hyper closes the connection; no 408 is sent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_head_size_limit_and_header_read_timeout() {
    let gw = gateway(
        "gwheaders",
        &[route_yaml("chat", &[Row("x", "http://127.0.0.1:9/v1".into(), 0)], "")],
        &["--max-header-bytes", "8192", "--header-read-timeout", "1s"],
    )
    .await;
    let get = |value_len: usize| {
        format!("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: {}\r\n\r\n", "a".repeat(value_len))
    };
    let small = raw_exchange(gw.port, get(4_000).as_bytes(), Duration::from_secs(10)).await;
    assert!(small.starts_with("HTTP/1.1 200"), "a 4 KB head is under the limit: {small}");
    let big = raw_exchange(gw.port, get(20_000).as_bytes(), Duration::from_secs(10)).await;
    assert!(big.starts_with("HTTP/1.1 431"), "a 20 KB head is over the 8 KB limit: {big:?}");

    // Slowloris: the request line and one header, then one more header line every 100 ms, never
    // the blank line that ends the head.
    let timeout = Duration::from_secs(1);
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    let t0 = Instant::now();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let trickle = tokio::spawn(async move {
        for i in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if wr.write_all(format!("X-Slow-{i}: 1\r\n").as_bytes()).await.is_err() {
                return;
            }
        }
    });
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(8), rd.read_to_end(&mut out)).await;
    let took = t0.elapsed();
    trickle.abort();
    assert!(read.is_ok(), "the connection was still open after {took:?}");
    assert!(took >= timeout, "closed before the header read timeout: {took:?}");
    assert_eq!(String::from_utf8_lossy(&out), "", "closed without an answer");
}

// ---------------------------------------------------------------------------------------------
// SIGTERM
// ---------------------------------------------------------------------------------------------

async fn refused(port: u16) -> bool {
    matches!(
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

/// SIGTERM: the listener closes at once (new connections refused), a stream in flight runs to
/// its end inside `--shutdown-grace`, and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_streams_in_flight_finish_and_refuses_new_connections() {
    let chunks = 25;
    let slow = Fake::start(move |_, _| paced_sse(chat_stream_events(chunks), Duration::from_millis(100), &[])).await;
    let mut gw =
        gateway("gwterm", &[route_yaml("chat", &[Row("s", slow.base_url(), 0)], "")], &["--shutdown-grace", "20s"])
            .await;
    let r = gw.post("/v1/chat/completions", json!({"model": "chat", "stream": true})).await;
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("c0 "));

    gw.proc.signal("TERM");
    let port = gw.port;
    wait_until("the API listener to refuse connections after SIGTERM", Duration::from_secs(5), || refused(port)).await;
    let refused_at = Instant::now();
    assert!(gw.proc.running(), "the process waits for the stream in flight");

    let mut text = String::from_utf8_lossy(&first).into_owned();
    while let Some(c) = body.next().await {
        text.push_str(&String::from_utf8_lossy(&c.expect("the stream in flight is not cut")));
    }
    let ended_at = Instant::now();
    assert!(ended_at > refused_at);
    let events: Vec<&str> = text.split("\n\n").filter_map(|e| e.strip_prefix("data: ")).collect();
    assert_eq!(events.len(), chunks + 1, "every content chunk and [DONE], the usage chunk removed: {text}");
    assert_eq!(events.last(), Some(&"[DONE]"));
    assert!(text.contains(&format!("c{} ", chunks - 1)));

    let status = gw.proc.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "{}", gw.proc.logs());
    assert!(gw.proc.logs().contains("shutting down"), "{}", gw.proc.logs());
}

/// SIGTERM with a stream longer than `--shutdown-grace`: the stream is cut when the grace ends
/// (the client sees a broken stream, no `[DONE]`), and the process still exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_cuts_streams_still_running_at_the_end_of_the_grace() {
    let every = Duration::from_millis(100);
    let chunks = 100; // 10 s of stream
    let slow = Fake::start(move |_, _| paced_sse(chat_stream_events(chunks), every, &[])).await;
    let grace = Duration::from_millis(500);
    let mut gw =
        gateway("gwgrace", &[route_yaml("chat", &[Row("s", slow.base_url(), 0)], "")], &["--shutdown-grace", "500ms"])
            .await;
    let r = gw.post("/v1/chat/completions", json!({"model": "chat", "stream": true})).await;
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let _ = body.next().await.unwrap().unwrap();
    let t_sig = Instant::now();
    gw.proc.signal("TERM");
    let mut text = String::new();
    let mut broke = false;
    while let Some(c) = body.next().await {
        match c {
            Ok(c) => text.push_str(&String::from_utf8_lossy(&c)),
            Err(_) => {
                broke = true;
                break;
            }
        }
    }
    let cut_after = t_sig.elapsed();
    assert!(broke, "a cut stream must not look complete: {text}");
    assert!(!text.contains("[DONE]"));
    assert!(cut_after >= grace, "not cut before the grace: {cut_after:?}");
    assert!(cut_after < every * chunks as u32, "cut, not run to its end: {cut_after:?}");
    let status = gw.proc.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", gw.proc.logs());
    assert!(gw.proc.logs().contains("shutdown grace period over"), "{}", gw.proc.logs());
}

// ---------------------------------------------------------------------------------------------
// /v1/completions and x-request-id
// ---------------------------------------------------------------------------------------------

/// `/v1/completions`, whole and streamed, end to end: the upstream path and model, the
/// upstream's `x-request-id` passed back, usage asked for upstream and removed for a client
/// that did not ask, and the exact cost: 1000 input × $2.50 + 500 output × $10 per 1M =
/// $0.0075 = 7 500 000 nano-USD per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_end_to_end_with_exact_cost_and_request_ids() {
    let up = Fake::start(|s: &Seen, n| {
        let id = format!("up-req-{n}");
        let usage = json!({"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500});
        if s.body["stream"] == true {
            let chunk = |text: &str| {
                format!(
                    "data: {}\n\n",
                    json!({"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "served",
                           "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": null}]})
                )
            };
            let mut events = vec![chunk("Once"), chunk(" upon")];
            if s.body["stream_options"]["include_usage"] == true {
                events.push(format!(
                    "data: {}\n\n",
                    json!({"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "served",
                           "choices": [], "usage": usage})
                ));
            }
            events.push("data: [DONE]\n\n".into());
            let mut r = paced_sse(events, Duration::ZERO, &[]);
            r.headers_mut().insert("x-request-id", id.parse().unwrap());
            r
        } else {
            let mut r = reply(
                200,
                json!({"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "served",
                       "choices": [{"index": 0, "text": "Once upon", "logprobs": null, "finish_reason": "stop"}],
                       "usage": usage})
                .to_string(),
                &[],
            );
            r.headers_mut().insert("x-request-id", id.parse().unwrap());
            r
        }
    })
    .await;
    let gw = gateway("gwcompl", &[route_yaml("legacy", &[Row("t", up.base_url(), 0)], "")], &[]).await;

    let r = gw
        .client
        .post(format!("{}/v1/completions", gw.base))
        .header("x-request-id", "client-req-7")
        .json(&json!({"model": "legacy", "prompt": "Once", "max_tokens": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-request-id"), Some("up-req-1"), "the upstream's request id reaches the client");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["choices"][0]["text"], "Once upon");
    let seen = up.seen(0);
    assert_eq!(seen.path, "/v1/completions");
    assert_eq!(seen.body, json!({"model": "t-model", "prompt": "Once", "max_tokens": 5}));

    let r = gw.post("/v1/completions", json!({"model": "legacy", "prompt": "Once", "stream": true})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-request-id"), Some("up-req-2"), "also on a stream");
    let (events, end) = read_events(r).await;
    end.unwrap();
    assert_eq!(up.seen(1).body["stream_options"]["include_usage"], true, "usage asked for upstream");
    assert_eq!(events.len(), 3, "two text chunks and [DONE], the usage chunk removed: {events:?}");
    assert!(events.iter().all(|e| !e.contains("usage")), "{events:?}");

    gw.outcomes_become("legacy", &[("t", "ok", 2)]).await;
    let text = gw.metrics().await;
    let labels = [("route", "legacy"), ("backend", "t"), ("provider", "openai"), ("model", "t-model")];
    assert_eq!(series(&text, "tollgate_cost_nanousd_total", &labels), Some(15_000_000.0), "{text}");
    let kind = |k: &'static str| {
        let mut l = labels.to_vec();
        l.push(("kind", k));
        series(&text, "tollgate_tokens_total", &l)
    };
    assert_eq!((kind("input"), kind("output")), (Some(2000.0), Some(1000.0)));
    assert_eq!(series(&text, "tollgate_cost_usd_total", &labels), Some(0.015));
}

// ---------------------------------------------------------------------------------------------
// Which outcomes count toward ejection
// ---------------------------------------------------------------------------------------------

/// The `outcome` label of each kind of failure, one route per kind, each with a spare: 429 →
/// `rate_limited`, 5xx → `upstream_error`, no first byte in time → `timeout`, refused →
/// `connect_error` (all failed over: the spare answers), 4xx → `client_error` (not failed over).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_failure_is_labelled_by_its_outcome() {
    let limited =
        Fake::fixed(429, r#"{"error":{"message":"slow down","type":"requests","code":"rate_limit_exceeded"}}"#, &[])
            .await;
    let broken = Fake::fixed(503, r#"{"error":{"message":"overloaded"}}"#, &[]).await;
    let bad =
        Fake::fixed(400, r#"{"error":{"message":"bad","type":"invalid_request_error","param":null,"code":null}}"#, &[])
            .await;
    let first_byte = Duration::from_secs(1);
    let slow =
        Fake::start(move |_, _| paced_sse(vec![String::new(), content_chunk(0)], Duration::from_secs(20), &[])).await;
    let closed = format!("http://127.0.0.1:{}/v1", free_port());
    let spare = chat_provider().await;
    let routes: Vec<String> = [
        ("r429", limited.base_url()),
        ("r503", broken.base_url()),
        ("rtimeout", slow.base_url()),
        ("rconnect", closed),
        ("r400", bad.base_url()),
    ]
    .iter()
    .map(|(r, url)| route_yaml(r, &[Row("first", url.clone(), 0), Row("spare", spare.base_url(), 1)], ""))
    .collect();
    let gw = gateway("gwoutcomes", &routes, &["--first-byte-timeout", "1s"]).await;
    for (route, outcome) in
        [("r429", "rate_limited"), ("r503", "upstream_error"), ("rtimeout", "timeout"), ("rconnect", "connect_error")]
    {
        let t0 = Instant::now();
        let r = gw.post("/v1/chat/completions", json!({"model": route, "stream": route == "rtimeout"})).await;
        assert_eq!((r.status().as_u16(), header(&r, "x-tollgate-backend")), (200, Some("spare")), "{route}");
        let _ = r.bytes().await.unwrap();
        if route == "rtimeout" {
            assert!(t0.elapsed() >= first_byte, "waited for the first-byte timeout");
        }
        gw.outcomes_become(route, &[("first", outcome, 1), ("spare", "ok", 1)]).await;
    }
    let r = gw.post("/v1/chat/completions", json!({"model": "r400"})).await;
    assert_eq!(r.status(), 400);
    gw.outcomes_become("r400", &[("first", "client_error", 1)]).await;
    assert_eq!(spare.hits(), 4);
}

/// The negative checks of tests/common/prom.rs fail on a metric or label that is not there.
#[test]
fn prom_text_is_parsed_and_absence_needs_a_sibling() {
    use common::prom::{assert_no_series, samples};
    let text = "# TYPE a counter\na_total{route=\"x\",msg=\"q\\\"u,o}te\"} 3\na_total{route=\"y\"} 0\nb 1.5\nc_bucket{le=\"+Inf\"} +Inf\n";
    let all = samples(text);
    assert_eq!(all.len(), 4);
    assert_eq!(all[0].labels["msg"], "q\"u,o}te");
    assert_eq!((all[0].value, all[2].name.as_str(), all[2].value), (3.0, "b", 1.5));
    assert_no_series(text, "a_total", &[("route", "z")]);
    let renamed = std::panic::catch_unwind(|| assert_no_series(text, "a_totals", &[("route", "z")]));
    assert!(renamed.is_err(), "a metric that is not there must not pass as absent");
    let relabelled = std::panic::catch_unwind(|| assert_no_series(text, "a_total", &[("path", "z")]));
    assert!(relabelled.is_err(), "a label no sample has must not pass as absent");
    let present = std::panic::catch_unwind(|| assert_no_series(text, "a_total", &[("route", "y")]));
    assert!(present.is_err());
}

// ---------------------------------------------------------------------------------------------
// The upstream connection pool: an upstream connection left idle longer than
// `--upstream-idle-timeout` is closed by the gateway (its descriptor released, even when no
// request ever comes again and the upstream never closes it), and one reused within it is kept
// alive. The upstream is a hand-written HTTP/1.1 server that never closes a connection itself
// and counts the connections it accepted and those the gateway closed.
// ---------------------------------------------------------------------------------------------

const POOL_ANSWER: &str = r#"{"id":"c1","object":"chat.completion","created":1,"model":"up-model","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;

/// Connections the upstream accepted, and those whose peer (the gateway) closed them.
#[derive(Default)]
struct Conns {
    accepted: AtomicUsize,
    closed_by_gateway: AtomicUsize,
}

/// A keep-alive upstream answering every request with [`POOL_ANSWER`]; it never closes a connection.
async fn pool_upstream() -> (String, Arc<Conns>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", l.local_addr().unwrap());
    let conns = Arc::new(Conns::default());
    let c = conns.clone();
    tokio::spawn(async move {
        loop {
            let (sock, _) = l.accept().await.unwrap();
            c.accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(pool_serve(sock, c.clone()));
        }
    });
    (base, conns)
}

async fn pool_serve(mut sock: TcpStream, conns: Arc<Conns>) {
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
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{POOL_ANSWER}",
            POOL_ANSWER.len()
        );
        sock.write_all(reply.as_bytes()).await.unwrap();
    }
}

async fn pool_chat(client: &reqwest::Client, gw: &Gw) {
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
    let (up, conns) = pool_upstream().await;
    let idle = Duration::from_millis(300);
    let gw =
        gateway("pool-idle", &[route_yaml("chat", &[Row("up", up, 0)], "")], &["--upstream-idle-timeout", "300ms"])
            .await;
    // Concurrent requests, so that the pool holds more than one idle connection afterwards.
    let client = reqwest::Client::new();
    futures::future::join_all((0..4).map(|_| pool_chat(&client, &gw))).await;
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
    let (up, conns) = pool_upstream().await;
    let gw = gateway("pool-reuse", &[route_yaml("chat", &[Row("up", up, 0)], "")], &["--upstream-idle-timeout", "60s"])
        .await;
    // One client connection: the gateway serves it on one thread, whose pool holds the upstream
    // connection.
    let client = reqwest::Client::new();
    pool_chat(&client, &gw).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    pool_chat(&client, &gw).await;
    assert_eq!(conns.accepted.load(Ordering::SeqCst), 1, "the second request reused the pooled connection");
    assert_eq!(conns.closed_by_gateway.load(Ordering::SeqCst), 0);
}
