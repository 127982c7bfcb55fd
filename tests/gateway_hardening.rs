//! Adversarial loopback tests of the gateway (issue 10, gateway cases 1–5 and 8): idle and
//! stalled connections, the connection cap and file-descriptor exhaustion, keys echoed in any
//! encoding, an endless server-sent event, clients hanging up before the usage chunk, absurd
//! usage, `Retry-After`, the shutdown cut, h2c over-limit bodies and the memory budget.
//!
//! Servers and clients are written for the purpose (raw `TcpStream` where the point is what a
//! misbehaving peer does). Tests that measure memory or exhaust file descriptors run the real
//! binary as a child process (its own RSS, its own `ulimit -n`).

#[path = "common/skip.rs"]
mod skip;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::response::Response;
use base64::Engine;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use tollgate::api::{
    BackendState, MockEndpoint, Mode, Pricing, Protocol, ProviderFamily, RouteState, Strategy, WireApi,
};
use tollgate::config::{BackendConfig, CONFIG_VERSION, EndpointConfig, GatewayConfig, RouteConfig};
use tollgate::gateway::{Gateway, GatewayOptions, ServeLimits, serve};
use tollgate::policy::money::Money;
use tollgate::pricing::{Prices, TokenCounts};

const KEY: &str = "sk-proj/Ab+c_9xYz0123456789QRST";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "tollgate-hardening-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn prices() -> Prices {
    Prices::from_spec(&Pricing {
        input: "2.50".into(),
        cached_input: Some("1.25".into()),
        cache_write: Some("3.75".into()),
        cache_write_1h: None,
        output: "10".into(),
        reasoning: Some("10".into()),
    })
    .unwrap()
}

fn backend(name: &str, endpoint: EndpointConfig) -> BackendConfig {
    BackendConfig {
        name: name.into(),
        provider: "openai".into(),
        family: ProviderFamily::OpenAI,
        model: format!("{name}-model"),
        api: WireApi::OpenAI,
        tier: 0,
        weight: 1,
        state: BackendState::Active,
        serving: true,
        endpoint,
        pricing: prices(),
        max_output_tokens: None,
    }
}

fn config(backends: Vec<BackendConfig>) -> GatewayConfig {
    let route = RouteConfig {
        name: "chat".into(),
        model: "chat".into(),
        strategy: Strategy::Priority,
        mode: Mode::Enforce,
        state: RouteState::Serving,
        backends,
        max_input_tokens: None,
        media_input_tokens: None,
        affinity: None,
        hints: None,
    };
    let mut c = GatewayConfig {
        version: CONFIG_VERSION,
        revision: String::new(),
        namespace: "team-a".into(),
        routes: vec![route],
    };
    c.revision = c.compute_revision();
    c
}

fn mock() -> EndpointConfig {
    EndpointConfig::Mock(MockEndpoint { latency: "1ms".into(), ..MockEndpoint::default() })
}

fn http(addr: SocketAddr) -> EndpointConfig {
    EndpointConfig::Http {
        base_url: format!("http://{addr}/v1"),
        protocol: Protocol::OpenAI,
        api_key_file: Some("openai_api-key".into()),
    }
}

/// A fake upstream: every request is answered by `f`.
async fn fake<F, Fut>(f: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(Request) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response> + Send + 'static,
{
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let app = Router::new().fallback(move |req: Request| {
        h.fetch_add(1, Ordering::SeqCst);
        f.clone()(req)
    });
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (addr, hits)
}

struct Harness {
    gw: Gateway,
    api: SocketAddr,
    metrics: SocketAddr,
    shutdown: CancellationToken,
    _creds: TempDir,
}

async fn start(cfg: GatewayConfig, opts: impl FnOnce(&mut GatewayOptions), limits: ServeLimits) -> Harness {
    let creds = TempDir::new("creds");
    std::fs::write(creds.0.join("openai_api-key"), format!("{KEY}\n")).unwrap();
    let mut o = GatewayOptions {
        credentials_dir: creds.0.clone(),
        first_byte_timeout: Duration::from_secs(5),
        total_timeout: Duration::from_secs(30),
        ..GatewayOptions::default()
    };
    opts(&mut o);
    let gw = Gateway::new(Some(cfg), o).unwrap();
    let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let met = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (a, m) = (api.local_addr().unwrap(), met.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    tokio::spawn(serve(api, gw.api(), limits, shutdown.clone().cancelled_owned()));
    tokio::spawn(serve(met, gw.metrics_router(), limits, shutdown.clone().cancelled_owned()));
    Harness { gw, api: a, metrics: m, shutdown, _creds: creds }
}

fn quick_limits() -> ServeLimits {
    ServeLimits {
        header_read_timeout: Duration::from_millis(500),
        client_idle_timeout: Duration::from_millis(500),
        ..ServeLimits::default()
    }
}

/// Reads until the peer closes (or `within` passes: then `None`). Returns what was read.
async fn read_until_closed(s: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(out),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

fn chat_body(stream: bool) -> String {
    json!({"model": "chat", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}).to_string()
}

async fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < within, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn openai_usage(prompt: u64, completion: u64) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

// ---------------------------------------------------------------------------------------------
// Case 1: timeouts and the connection cap
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn silent_connections_are_closed_within_the_head_timeout_on_both_listeners() {
    let h = start(config(vec![backend("m", mock())]), |_| {}, quick_limits()).await;
    for addr in [h.api, h.metrics] {
        let t0 = Instant::now();
        let mut s = TcpStream::connect(addr).await.unwrap();
        let got = read_until_closed(&mut s, Duration::from_secs(5)).await;
        assert!(got.is_some(), "{addr}: a connection that never sends a byte is still open after 5 s");
        assert!(t0.elapsed() < Duration::from_secs(3), "{addr}: closed only after {:?}", t0.elapsed());
        // Half a request head, then silence.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        assert!(read_until_closed(&mut s, Duration::from_secs(5)).await.is_some(), "{addr}: partial head kept open");
    }
}

#[tokio::test]
async fn stalled_bodies_get_408_or_are_closed_and_idle_keep_alive_ends() {
    let h = start(
        config(vec![backend("m", mock())]),
        |o| o.body_read_timeout = Duration::from_millis(400),
        ServeLimits { client_idle_timeout: Duration::from_millis(600), ..quick_limits() },
    )
    .await;
    // Content-Length 1000, one byte sent.
    let mut s = TcpStream::connect(h.api).await.unwrap();
    s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
        .await
        .unwrap();
    let got = read_until_closed(&mut s, Duration::from_secs(5)).await.expect("stalled body still open after 5 s");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
    // Chunked body without its last chunk.
    let mut s = TcpStream::connect(h.api).await.unwrap();
    s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"mod\r\n")
        .await
        .unwrap();
    let got = read_until_closed(&mut s, Duration::from_secs(5)).await.expect("chunked stall still open after 5 s");
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 408"));
    // Same on the metrics listener (it never reads bodies): closed, not kept.
    let mut s = TcpStream::connect(h.metrics).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{").await.unwrap();
    assert!(read_until_closed(&mut s, Duration::from_secs(5)).await.is_some(), "metrics: stalled body kept open");
    // A served request, then an idle keep-alive connection: closed after the idle timeout.
    let mut s = TcpStream::connect(h.api).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let t0 = Instant::now();
    let got = read_until_closed(&mut s, Duration::from_secs(5)).await.expect("idle keep-alive kept open");
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    assert!(t0.elapsed() >= Duration::from_millis(500), "closed before the idle timeout: {:?}", t0.elapsed());
}

#[tokio::test]
async fn the_connection_cap_queues_new_connections_and_recovers() {
    let limits = ServeLimits { max_connections: 3, header_read_timeout: Duration::from_millis(800), ..quick_limits() };
    let h = start(config(vec![backend("m", mock())]), |_| {}, limits).await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(h.api).await.unwrap());
    }
    // The fourth connection is established by the kernel but not served while the three are
    // open.
    let mut s = TcpStream::connect(h.api).await.unwrap();
    let t0 = Instant::now();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut first = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(300), s.read(&mut first)).await;
    assert!(early.is_err(), "the connection over the cap was served while the cap was reached");
    // The idle ones time out, the queued one is then served.
    let got = read_until_closed(&mut s, Duration::from_secs(5)).await.expect("queued connection never served");
    let mut all = first.to_vec();
    all.extend_from_slice(&got);
    assert!(String::from_utf8_lossy(&all).contains("200 OK"), "{}", String::from_utf8_lossy(&all));
    assert!(t0.elapsed() >= Duration::from_millis(500));
    // Normal requests are served again.
    let r = reqwest::get(format!("http://{}/healthz", h.api)).await.unwrap();
    assert_eq!(r.status(), 200);
    drop(idle);
}

/// The binary under a tiny file-descriptor limit, with a cap above it: accept errors back off
/// (a handful of log lines, not thousands) and normal requests are served once the silent
/// connections time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_backs_off_without_a_log_storm() {
    let dir = TempDir::new("emfile");
    let cfg_path = dir.0.join("config.json");
    std::fs::write(&cfg_path, config(vec![backend("m", mock())]).to_json_pretty()).unwrap();
    let mut child = Gw::spawn(&cfg_path, &dir.0, 48, &["--max-connections", "1000", "--header-read-timeout", "1s"]);
    let api = child.api;
    child.wait_ready().await;
    let mut silent = Vec::new();
    for _ in 0..120 {
        match tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(api)).await {
            Ok(Ok(s)) => silent.push(s),
            _ => break,
        }
    }
    assert!(silent.len() > 48, "could not open more connections than the fd limit ({})", silent.len());
    // Everything is stuck for a while: the gateway has no descriptor left for new ones.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Wait until a normal request is served (the silent connections time out after 1 s).
    let client = reqwest::Client::new();
    let t0 = Instant::now();
    loop {
        let r = client.get(format!("http://{api}/healthz")).timeout(Duration::from_secs(2)).send().await;
        if r.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(15), "normal requests never served again");
    }
    let silent_count = silent.len();
    drop(silent);
    let log = child.stop();
    let storms = log.lines().filter(|l| l.contains("accept failed")).count();
    eprintln!(
        "{} silent connections under ulimit -n 48: {storms} 'accept failed' log line(s), served again after {:?}",
        silent_count,
        t0.elapsed()
    );
    assert!(storms >= 1, "expected the accept failure to be logged once: {log}");
    assert!(storms <= 3, "{storms} 'accept failed' lines: a log storm\n{log}");
}

// ---------------------------------------------------------------------------------------------
// The binary as a child process
// ---------------------------------------------------------------------------------------------

struct Gw {
    child: Child,
    api: SocketAddr,
    log: Arc<Mutex<String>>,
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

impl Gw {
    fn spawn(cfg: &Path, creds: &Path, nofile: u32, extra: &[&str]) -> Self {
        std::fs::write(creds.join("openai_api-key"), KEY).unwrap();
        let (api, met) = (free_port(), free_port());
        let mut cmd = format!(
            "ulimit -n {nofile} && exec '{}' gateway --config '{}' --credentials-dir '{}' --listen {api} --metrics-listen {met} --workers 1 --reload-interval 1h",
            env!("CARGO_BIN_EXE_tollgate"),
            cfg.display(),
            creds.display()
        );
        for a in extra {
            cmd.push(' ');
            cmd.push_str(a);
        }
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let l2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut g = l2.lock().unwrap();
                g.push_str(&line);
                g.push('\n');
            }
        });
        Self { child, api, log }
    }

    async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        let t0 = Instant::now();
        loop {
            if let Ok(r) = client.get(format!("http://{}/readyz", self.api)).send().await
                && r.status() == 200
            {
                return;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "gateway never ready: {}", self.log.lock().unwrap());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn rss_kb(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    fn stop(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(50));
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Gw {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Case 2: keys echoed in any encoding
// ---------------------------------------------------------------------------------------------

fn encodings_of_key() -> Vec<String> {
    let json_u: String = KEY.chars().map(|c| format!("\\u{:04x}", c as u32)).collect();
    let url: String = KEY.bytes().map(|b| format!("%{b:02X}")).collect();
    vec![
        KEY.replace('/', "\\/"),
        json_u,
        KEY.replacen('s', "\\u0073", 1).replace('/', "\\/"),
        url,
        base64::engine::general_purpose::STANDARD.encode(format!("user:{KEY}")),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(KEY),
    ]
}

/// Whether `text` holds the key in any of the forms a client could decode.
fn leaks(text: &str) -> Option<String> {
    if text.contains(KEY) {
        return Some("literal".into());
    }
    let core = &KEY[8..24];
    if text.contains(core) {
        return Some("core".into());
    }
    if json_unescape(text).contains(core) {
        return Some("json escapes".into());
    }
    let decoded = percent_decode(text);
    if decoded.contains(core) {
        return Some("url".into());
    }
    for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || "+/=-_".contains(c))) {
        for engine in [&base64::engine::general_purpose::STANDARD, &base64::engine::general_purpose::URL_SAFE_NO_PAD] {
            if let Ok(b) = engine.decode(word.trim_end_matches('='))
                && String::from_utf8_lossy(&b).contains(core)
            {
                return Some(format!("base64 {word}"));
            }
        }
        if let Ok(b) = base64::engine::general_purpose::STANDARD.decode(word)
            && String::from_utf8_lossy(&b).contains(core)
        {
            return Some(format!("base64 {word}"));
        }
    }
    None
}

/// Decodes JSON string escapes (`\/`, `\\`, `\"`, `\uXXXX` in the BMP) wherever they are.
fn json_unescape(s: &str) -> String {
    let mut out = String::new();
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('u') => {
                let hex: String = (0..4).filter_map(|_| it.next()).collect();
                match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                    Some(ch) => out.push(ch),
                    None => out.push_str(&hex),
                }
            }
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_key_echoed_in_any_encoding_never_reaches_the_client() {
    let forms = encodings_of_key();
    for f in &forms {
        assert!(leaks(f).is_some(), "the leak detector misses {f}");
    }
    let f2 = forms.clone();
    let (up, _) = fake(move |req: Request| {
        let forms = f2.clone();
        async move {
            let path = req.uri().path().to_string();
            let body = String::from_utf8_lossy(&axum::body::to_bytes(req.into_body(), 1 << 20).await.unwrap()).into_owned();
            let stream = body.contains("\"stream\":true");
            let echo = forms.join(" | ");
            let b = Response::builder()
                .header("x-request-id", format!("req-{}", forms[3]))
                .header("openai-processing-ms", forms[4].clone())
                .header("request-id", forms[1].clone());
            if path.ends_with("/embeddings") {
                // 4xx: echoed in the message and in unknown fields.
                let text = format!(
                    r#"{{"error":{{"message":"Incorrect API key provided: {echo}","type":"invalid_request_error","code":"invalid_api_key","param":"{}","leak":"{KEY}"}},"echo":"{}"}}"#,
                    forms[0], forms[1]
                );
                b.status(400).header("content-type", "application/json").body(Body::from(text)).unwrap()
            } else if stream {
                let ev = json!({"choices": [{"delta": {"content": "x"}}]}).to_string();
                let text = format!(
                    "data: {ev}\n\ndata: {{\"choices\":[{{\"delta\":{{\"content\":\"{}\"}}}}]}}\n\ndata: {}\n\ndata: [DONE]\n\n",
                    forms[2],
                    json!({"choices": [], "usage": openai_usage(5, 2)})
                );
                b.status(200).header("content-type", "text/event-stream").body(Body::from(text)).unwrap()
            } else {
                let text = format!(
                    r#"{{"choices":[{{"message":{{"content":"{echo}"}}}}],"usage":{}}}"#,
                    openai_usage(5, 2)
                );
                b.status(200).header("content-type", "application/json").body(Body::from(text)).unwrap()
            }
        }
    })
    .await;
    let h = start(config(vec![backend("up", http(up))]), |_| {}, ServeLimits::default()).await;
    let client = reqwest::Client::new();
    for (path, body) in [
        ("/v1/embeddings", json!({"model": "chat", "input": "x"}).to_string()),
        ("/v1/chat/completions", chat_body(false)),
        ("/v1/chat/completions", chat_body(true)),
    ] {
        let r = client.post(format!("http://{}{path}", h.api)).body(body).send().await.unwrap();
        let status = r.status();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap();
        if let Some(how) = leaks(&text) {
            panic!("{path} ({status}): the key reached the client ({how}) in the body: {text}");
        }
        assert!(text.contains("[redacted]"), "{path}: {text}");
        for (name, v) in &headers {
            let v = String::from_utf8_lossy(v.as_bytes());
            assert!(leaks(&v).is_none(), "{path}: the key reached the client in header {name}: {v}");
        }
        assert!(headers.contains_key("x-request-id"), "{path}: passed-through headers are kept (scrubbed)");
    }
}

// ---------------------------------------------------------------------------------------------
// Case 3: bounded buffers
// ---------------------------------------------------------------------------------------------

/// An upstream `data:` line without a blank line for 96 MiB: the gateway's RSS stays bounded
/// and the client gets the error event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_event_is_cut_with_an_error_event_and_bounded_memory() {
    const TOTAL: usize = 96 * 1024 * 1024;
    let (up, _) = fake(|_req: Request| async move {
        let chunk = Bytes::from(vec![b'a'; 64 * 1024]);
        let head = futures::stream::once(async { Ok::<_, std::io::Error>(Bytes::from_static(b"data: {\"x\":\"")) });
        let body = head.chain(futures::stream::iter((0..TOTAL / chunk.len()).map(move |_| Ok(chunk.clone()))));
        Response::builder().header("content-type", "text/event-stream").body(Body::from_stream(body)).unwrap()
    })
    .await;
    let dir = TempDir::new("rss");
    let cfg_path = dir.0.join("config.json");
    std::fs::write(&cfg_path, config(vec![backend("up", http(up))]).to_json_pretty()).unwrap();
    let mut child = Gw::spawn(&cfg_path, &dir.0, 1024, &["--max-sse-event-bytes", "1048576"]);
    child.wait_ready().await;
    let before = child.rss_kb();
    let peak = Arc::new(AtomicUsize::new(0));
    let (p2, pid) = (peak.clone(), child.child.id());
    let sampler = tokio::spawn(async move {
        loop {
            let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            if let Some(kb) = s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)) {
                p2.fetch_max(kb.parse().unwrap_or(0), Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let r = reqwest::Client::new()
        .post(format!("http://{}/v1/chat/completions", child.api))
        .body(chat_body(true))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap_or_default();
    sampler.abort();
    let peak = peak.load(Ordering::Relaxed) as u64;
    let log = child.stop();
    eprintln!("gateway VmRSS before {before} kB, peak {peak} kB while the upstream sent a 96 MiB event");
    assert!(text.contains("upstream_event_too_large"), "the client got no error event: {:.300}", text);
    assert!(peak.saturating_sub(before) < 24 * 1024, "RSS grew from {before} kB to {peak} kB\n{log}");
}

#[tokio::test]
async fn whole_answers_over_the_memory_budget_get_503() {
    let big = format!(
        r#"{{"choices":[{{"message":{{"content":"{}"}}}}],"usage":{}}}"#,
        "a".repeat(600_000),
        openai_usage(3, 4)
    );
    let big_len = big.len();
    let (up, _) = fake(move |_req: Request| {
        let big = big.clone();
        async move { Response::builder().header("content-type", "application/json").body(Body::from(big)).unwrap() }
    })
    .await;
    let h = start(config(vec![backend("up", http(up))]), |o| o.max_buffered_bytes = 1_000_000, ServeLimits::default())
        .await;
    let client = reqwest::Client::new();
    let url = format!("http://{}/v1/chat/completions", h.api);
    // One answer fits.
    let r = client.post(&url).body(chat_body(false)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), big_len);
    // The budget is released after each answer: several in a row all fit.
    for _ in 0..3 {
        assert_eq!(client.post(&url).body(chat_body(false)).send().await.unwrap().status(), 200);
    }
    // Now the budget is smaller than one answer.
    let h2 =
        start(config(vec![backend("up", http(up))]), |o| o.max_buffered_bytes = 500_000, ServeLimits::default()).await;
    let r = client.post(format!("http://{}/v1/chat/completions", h2.api)).body(chat_body(false)).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "gateway_overloaded");
    let e = h2.gw.meter().snapshot().backend("chat", "up");
    assert_eq!(e.usage_missing.get("over_memory_budget"), Some(&1));
    assert!(e.estimated_cost > Money::ZERO);
    // The gateway's own overload: the backend's requests and errors did not grow (nothing for
    // its error rate, nothing to eject it for), and the outcome says who failed.
    let obs = h2.gw.meter().snapshot().to_observations_since(&Default::default(), "team-a");
    let o = obs.backends.values().next().expect("the refusal is metered");
    assert_eq!((o.requests(), o.errors()), (0, 0), "{:?}", o.outcomes);
    let outcomes = outcomes_on_metrics(h2.metrics).await;
    assert!(outcomes.contains(&("gateway_overloaded".into(), 1)), "{outcomes:?}");
    assert!(!outcomes.iter().any(|(o, _)| o == "upstream_error"), "{outcomes:?}");
}

// ---------------------------------------------------------------------------------------------
// Case 4: a client hanging up before the usage chunk
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_client_hanging_up_after_finish_reason_is_billed_exactly() {
    let (up, _) = fake(|_req: Request| async move {
        let events = [
            json!({"choices": [{"delta": {"content": "hel"}, "finish_reason": null}], "usage": null}),
            json!({"choices": [{"delta": {"content": "lo"}, "finish_reason": null}], "usage": null}),
            json!({"choices": [{"delta": {}, "finish_reason": "stop"}], "usage": null}),
        ];
        let head: Vec<Result<Bytes, std::io::Error>> =
            events.iter().map(|e| Ok(Bytes::from(format!("data: {e}\n\n")))).collect();
        let tail = futures::stream::once(async {
            // The usage chunk comes late: the client is gone by then.
            tokio::time::sleep(Duration::from_millis(400)).await;
            let u = json!({"choices": [], "usage": openai_usage(1200, 345)});
            Ok(Bytes::from(format!("data: {u}\n\ndata: [DONE]\n\n")))
        });
        let body = futures::stream::iter(head).chain(tail);
        Response::builder().header("content-type", "text/event-stream").body(Body::from_stream(body)).unwrap()
    })
    .await;
    let h = start(config(vec![backend("up", http(up))]), |_| {}, ServeLimits::default()).await;
    for _ in 0..3 {
        let mut s = TcpStream::connect(h.api).await.unwrap();
        let body = chat_body(true);
        s.write_all(
            format!("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains("finish_reason\":\"stop") {
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
            assert!(n > 0, "stream ended early");
            seen.extend_from_slice(&buf[..n]);
        }
        drop(s); // hang up before the usage chunk
    }
    // Three answers of 1200 input and 345 output tokens at $2.50 and $10 per 1M:
    // 1200 × 2.50 / 1e6 = $0.003 and 345 × 10 / 1e6 = $0.00345, so $0.00645 each;
    // × 3 = $0.01935 = 19 350 000 000 pico-USD (10^12 per dollar).
    let want = Money::from_picos(19_350_000_000);
    let gw = h.gw.clone();
    wait_for("the drained usage to be metered", Duration::from_secs(10), || {
        gw.meter().snapshot().backend("chat", "up").cost == want
    })
    .await;
    let e = h.gw.meter().snapshot().backend("chat", "up");
    assert_eq!(e.tokens.input, 3 * 1200);
    assert_eq!(e.tokens.output, 3 * 345);
    assert!(e.usage_missing.is_empty(), "{:?}", e.usage_missing);
}

#[tokio::test]
async fn a_client_leaving_a_stream_that_never_sends_usage_is_metered_as_an_estimate() {
    let (up, _) = fake(|_req: Request| async move {
        let ev = json!({"choices": [{"delta": {"content": "x"}}]});
        let body =
            futures::stream::iter((0..4).map(move |_| Ok::<_, std::io::Error>(Bytes::from(format!("data: {ev}\n\n")))))
                .chain(futures::stream::pending());
        Response::builder().header("content-type", "text/event-stream").body(Body::from_stream(body)).unwrap()
    })
    .await;
    let h = start(
        config(vec![backend("up", http(up))]),
        |o| o.disconnect_drain_timeout = Duration::from_millis(300),
        ServeLimits::default(),
    )
    .await;
    let r = reqwest::Client::new()
        .post(format!("http://{}/v1/chat/completions", h.api))
        .body(chat_body(true))
        .send()
        .await
        .unwrap();
    let mut stream = r.bytes_stream();
    let _ = stream.next().await;
    drop(stream);
    let gw = h.gw.clone();
    wait_for("the estimate", Duration::from_secs(10), || {
        gw.meter().snapshot().backend("chat", "up").usage_missing.contains_key("client_disconnected")
    })
    .await;
    let e = h.gw.meter().snapshot().backend("chat", "up");
    assert_eq!(e.cost, Money::ZERO);
    assert!(e.estimated_cost > Money::ZERO);
    let text = reqwest::get(format!("http://{}/metrics", h.metrics)).await.unwrap().text().await.unwrap();
    assert!(text.contains("tollgate_cost_estimated_nanousd_total{route=\"chat\",backend=\"up\""), "{text}");
}

// ---------------------------------------------------------------------------------------------
// Case 5: absurd usage
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn absurd_usage_is_refused_not_saturated() {
    let (up, _) = fake(|_req: Request| async move {
        let big: u64 = (1 << 53) - 1;
        let text = json!({"choices": [], "usage": {"prompt_tokens": big, "completion_tokens": 0, "total_tokens": big}});
        Response::builder().header("content-type", "application/json").body(Body::from(text.to_string())).unwrap()
    })
    .await;
    let h = start(config(vec![backend("up", http(up))]), |_| {}, ServeLimits::default()).await;
    let client = reqwest::Client::new();
    for _ in 0..3 {
        let r =
            client.post(format!("http://{}/v1/chat/completions", h.api)).body(chat_body(false)).send().await.unwrap();
        assert_eq!(r.status(), 502);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "upstream_invalid_usage");
    }
    let e = h.gw.meter().snapshot().backend("chat", "up");
    assert_eq!(e.cost, Money::ZERO);
    assert_eq!(e.tokens, TokenCounts::default());
    assert_eq!(e.usage_missing.get("malformed"), Some(&3));
    let text = reqwest::get(format!("http://{}/metrics", h.metrics)).await.unwrap().text().await.unwrap();
    assert!(!text.contains(&u64::MAX.to_string()), "a counter saturated: {text}");
}

// ---------------------------------------------------------------------------------------------
// Case 8
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn retry_after_pauses_the_backend_and_reaches_the_client() {
    let (limited, limited_hits) = fake(|_req: Request| async move {
        Response::builder()
            .status(429)
            .header("retry-after", "3600")
            .header("content-type", "application/json")
            .body(Body::from(r#"{"error":{"message":"slow down","type":"rate_limit_error"}}"#))
            .unwrap()
    })
    .await;
    let (ok, ok_hits) = fake(|_req: Request| async move {
        let text = json!({"choices": [], "usage": openai_usage(1, 1)}).to_string();
        Response::builder().header("content-type", "application/json").body(Body::from(text)).unwrap()
    })
    .await;
    let mut second = backend("ok", http(ok));
    second.tier = 1;
    let h = start(config(vec![backend("limited", http(limited)), second]), |_| {}, ServeLimits::default()).await;
    let client = reqwest::Client::new();
    let url = format!("http://{}/v1/chat/completions", h.api);
    for _ in 0..4 {
        assert_eq!(client.post(&url).body(chat_body(false)).send().await.unwrap().status(), 200);
    }
    assert_eq!(limited_hits.load(Ordering::SeqCst), 1, "the paused backend was tried again");
    assert_eq!(ok_hits.load(Ordering::SeqCst), 4);

    // Only the rate-limited backend: the client's 429 carries Retry-After.
    let h = start(config(vec![backend("limited", http(limited))]), |_| {}, ServeLimits::default()).await;
    for n in 0..2 {
        let r =
            client.post(format!("http://{}/v1/chat/completions", h.api)).body(chat_body(false)).send().await.unwrap();
        assert_eq!(r.status(), 429);
        let ra: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((3590..=3600).contains(&ra), "attempt {n}: Retry-After {ra}");
    }
    assert_eq!(limited_hits.load(Ordering::SeqCst), 2, "second gateway: one upstream attempt, then skipped");
}

#[tokio::test]
async fn a_stream_cut_by_the_shutdown_grace_is_labelled_as_such() {
    let (up, _) = fake(|_req: Request| async move {
        let ev = json!({"choices": [{"delta": {"content": "x"}}]});
        let body = futures::stream::unfold(0u32, move |n| {
            let ev = ev.clone();
            async move {
                if n > 0 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Some((Ok::<_, std::io::Error>(Bytes::from(format!("data: {ev}\n\n"))), n + 1))
            }
        });
        Response::builder().header("content-type", "text/event-stream").body(Body::from_stream(body)).unwrap()
    })
    .await;
    let limits = ServeLimits { shutdown_grace: Duration::from_millis(300), ..ServeLimits::default() };
    let h = start(config(vec![backend("up", http(up))]), |_| {}, limits).await;
    let r = reqwest::Client::new()
        .post(format!("http://{}/v1/chat/completions", h.api))
        .body(chat_body(true))
        .send()
        .await
        .unwrap();
    let mut stream = r.bytes_stream();
    stream.next().await.unwrap().unwrap();
    h.shutdown.cancel();
    let reader = tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
    let gw = h.gw.clone();
    wait_for("the cut stream to be metered", Duration::from_secs(10), || {
        !gw.meter().snapshot().backend("chat", "up").usage_missing.is_empty()
    })
    .await;
    let e = h.gw.meter().snapshot().backend("chat", "up");
    assert_eq!(e.usage_missing.get("shutdown_cut"), Some(&1), "{:?}", e.usage_missing);
    assert!(!e.usage_missing.contains_key("client_disconnected"));
    reader.abort();
}

#[tokio::test]
async fn an_over_limit_body_over_h2c_gets_413() {
    let h = start(config(vec![backend("m", mock())]), |o| o.max_body_bytes = 64 * 1024, ServeLimits::default()).await;
    let client = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let url = format!("http://{}/v1/chat/completions", h.api);
    // Declared length over the limit.
    let r = client.post(&url).body(vec![b' '; 200 * 1024]).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 413);
    // Streamed without a length.
    let chunks = futures::stream::iter((0..50).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b' '; 8 * 1024]))));
    let r = client.post(&url).body(reqwest::Body::wrap_stream(chunks)).send().await.unwrap();
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "request_too_large");
}

/// Every proxied answer states its length, over HTTP/1 and over h2c, a 200 and an error alike
/// (hyper writes it from the body's known size; the gateway no longer sets it itself).
#[tokio::test]
async fn proxied_answers_state_their_content_length_over_h1_and_h2c() {
    let h = start(config(vec![backend("m", mock())]), |_| {}, ServeLimits::default()).await;
    let url = format!("http://{}/v1/chat/completions", h.api);
    let h1 = reqwest::Client::new();
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    for (client, version) in [(&h1, reqwest::Version::HTTP_11), (&h2, reqwest::Version::HTTP_2)] {
        for (model, status) in [("chat", 200), ("no-such-route", 404)] {
            let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}).to_string();
            let r = client.post(&url).header("content-type", "application/json").body(body).send().await.unwrap();
            assert_eq!((r.version(), r.status().as_u16()), (version, status));
            let stated: Option<usize> =
                r.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
            let got = r.bytes().await.unwrap();
            assert!(!got.is_empty());
            assert_eq!(stated, Some(got.len()), "{version:?} {status}: {}", String::from_utf8_lossy(&got));
        }
    }
}

/// curl over h2c with a body over the limit: the 413 every time, not a stream reset (curl shows
/// a reset that arrives while it is still uploading as error 92). Skipped without an
/// HTTP/2-capable curl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_over_h2c_sees_the_413_not_a_reset() {
    let has_h2 = Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("HTTP2"));
    if !has_h2 {
        skip::skip(skip::CURL, "curl_over_h2c_sees_the_413_not_a_reset", "no curl with HTTP/2 support on PATH");
        return;
    }
    let h = start(config(vec![backend("m", mock())]), |o| o.max_body_bytes = 64 * 1024, ServeLimits::default()).await;
    let dir = TempDir::new("curl");
    let file = dir.0.join("big.json");
    std::fs::write(&file, vec![b' '; 300 * 1024]).unwrap();
    let url = format!("http://{}/v1/chat/completions", h.api);
    for n in 0..8 {
        let mut args = vec![
            "-s".to_string(),
            "-o".into(),
            "/dev/null".into(),
            "-w".into(),
            "%{http_code}".into(),
            "--http2-prior-knowledge".into(),
            "--data-binary".into(),
            format!("@{}", file.display()),
        ];
        if n % 2 == 1 {
            args.extend(["-H".into(), "transfer-encoding: chunked".into()]);
        }
        args.push(url.clone());
        let out = tokio::process::Command::new("curl").args(&args).output().await.unwrap();
        let code = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(code, "413", "attempt {n}: curl exit {:?}, code {code}", out.status.code());
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/2: flow control, the header list, idle connections
// ---------------------------------------------------------------------------------------------

/// A raw HTTP/2 client (prior knowledge) that announces `window` as its initial stream window
/// and never sends a WINDOW_UPDATE unless told to. The task ends when the connection closes.
async fn h2_client(addr: SocketAddr, window: u32) -> (h2::client::SendRequest<Bytes>, tokio::task::JoinHandle<()>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::Builder::new().initial_window_size(window).handshake::<_, Bytes>(tcp).await.unwrap();
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (send, task)
}

/// Sends one chat request on `send` and waits for the answer's head.
async fn h2_chat(send: &h2::client::SendRequest<Bytes>, stream: bool) -> http::Response<h2::RecvStream> {
    let mut send = send.clone().ready().await.unwrap();
    let req = http::Request::post("http://gateway/v1/chat/completions")
        .header("content-type", "application/json")
        .body(())
        .unwrap();
    let (resp, mut body) = send.send_request(req, false).unwrap();
    body.send_data(Bytes::from(chat_body(stream)), true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), resp).await.expect("no answer head within 10 s").unwrap()
}

/// How an answer body the client never reads ends within `within`: `Some(error)` when the
/// stream was reset or the connection closed, `None` when it is still open.
async fn h2_end_of_unread_body(body: &mut h2::RecvStream, within: Duration) -> Option<String> {
    match tokio::time::timeout(within, body.data()).await {
        Err(_) => None,
        Ok(Some(Err(e))) => Some(format!("{e} (reset: {:?})", e.reason())),
        Ok(Some(Ok(b))) => panic!("{} bytes arrived through a zero window", b.len()),
        Ok(None) => panic!("the body ended cleanly through a zero window"),
    }
}

/// The `tollgate_requests_total` samples of route `chat`, backend `up`, by outcome.
async fn outcomes_on_metrics(metrics: SocketAddr) -> Vec<(String, u64)> {
    let text = reqwest::get(format!("http://{metrics}/metrics")).await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with("tollgate_requests_total{") && l.contains("backend=\"up\""))
        .filter_map(|l| {
            let outcome = l.split("outcome=\"").nth(1)?.split('"').next()?.to_string();
            Some((outcome, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect()
}

/// An HTTP/2 client that opens streams and never opens their flow-control window holds whole
/// answers in the memory budget: each such stream is reset once its answer made no progress
/// for `--client-idle-timeout`, which frees the budget for everyone else. The stalled answers
/// were billed exactly (their usage was read), and the refusals meanwhile are the gateway's
/// own overload, not an error of the backend.
#[tokio::test]
async fn h2_streams_that_never_open_their_window_are_cut_and_free_the_memory_budget() {
    // Each answer: 1000 input and 500 output tokens, about 1 MB.
    let big = format!(
        r#"{{"choices":[{{"message":{{"content":"{}"}}}}],"usage":{}}}"#,
        "a".repeat(1_000_000),
        openai_usage(1000, 500)
    );
    let big_len = big.len();
    let (up, _) = fake(move |_req: Request| {
        let big = big.clone();
        async move { Response::builder().header("content-type", "application/json").body(Body::from(big)).unwrap() }
    })
    .await;
    // Room for two answers, not three.
    let limits = ServeLimits { client_idle_timeout: Duration::from_secs(1), ..ServeLimits::default() };
    let h = start(config(vec![backend("up", http(up))]), |o| o.max_buffered_bytes = 2_500_000, limits).await;
    let (send, _conn) = h2_client(h.api, 0).await;
    let mut first = h2_chat(&send, false).await;
    let mut second = h2_chat(&send, false).await;
    assert_eq!((first.status().as_u16(), second.status().as_u16()), (200, 200));
    let stalled_at = Instant::now();
    // The two stalled answers hold the budget: a third client's answer does not fit.
    let client = reqwest::Client::new();
    let url = format!("http://{}/v1/chat/completions", h.api);
    let r = client.post(&url).body(chat_body(false)).send().await.unwrap();
    assert_eq!(r.status(), 503, "the stalled answers do not hold the budget: the test proves nothing");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "gateway_overloaded");
    // Both stalled streams are reset within the timeout (and a margin), not before it.
    for body in [first.body_mut(), second.body_mut()] {
        let end = h2_end_of_unread_body(body, Duration::from_secs(10)).await;
        let end = end.expect("a stream stalled by its zero window is still open after 10 s");
        assert!(end.contains("CANCEL"), "not a stream reset: {end}");
    }
    let cut_after = stalled_at.elapsed();
    assert!(cut_after >= Duration::from_millis(800), "cut before the idle timeout: {cut_after:?}");
    // The budget is free again: other clients' large answers succeed.
    for _ in 0..2 {
        let r = client.post(&url).body(chat_body(false)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap().len(), big_len);
    }
    // Four answers billed exactly: 4 × (1000 × $2.50 + 500 × $10) per 1M tokens
    // = 4 × ($0.0025 + $0.005) = $0.03 = 30 000 000 000 pico-USD.
    let e = h.gw.meter().snapshot().backend("chat", "up");
    assert_eq!(e.cost, Money::from_picos(30_000_000_000));
    assert_eq!((e.tokens.input, e.tokens.output), (4000, 2000));
    // The refusal is the gateway's overload: no health error of the backend.
    let obs = h.gw.meter().snapshot().to_observations_since(&Default::default(), "team-a");
    let o = obs.backends.values().next().unwrap();
    assert_eq!((o.requests(), o.errors()), (4, 0), "{:?}", o.outcomes);
    let outcomes = outcomes_on_metrics(h.metrics).await;
    assert!(outcomes.contains(&("gateway_overloaded".into(), 1)), "{outcomes:?}");
    assert!(!outcomes.iter().any(|(o, _)| o == "upstream_error"), "{outcomes:?}");
}

/// A streamed answer to an HTTP/2 client that never opens its window is cut once it made no
/// progress for `--idle-stream-timeout`: the upstream stream is then released (after the usual
/// drain for usage), and the request is metered as a client that left.
#[tokio::test]
async fn an_h2_stream_the_client_never_reads_is_cut_and_releases_its_upstream() {
    struct Dropped(Arc<AtomicUsize>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let released = Arc::new(AtomicUsize::new(0));
    let r2 = released.clone();
    let (up, _) = fake(move |_req: Request| {
        let guard = Dropped(r2.clone());
        async move {
            let ev = json!({"choices": [{"delta": {"content": "x"}}]});
            // Endless: one event every 20 ms, never the usage chunk.
            let body = futures::stream::unfold(guard, move |g| {
                let ev = ev.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Some((Ok::<_, std::io::Error>(Bytes::from(format!("data: {ev}\n\n"))), g))
                }
            });
            Response::builder().header("content-type", "text/event-stream").body(Body::from_stream(body)).unwrap()
        }
    })
    .await;
    let h = start(
        config(vec![backend("up", http(up))]),
        |o| {
            o.idle_stream_timeout = Duration::from_secs(1);
            o.disconnect_drain_timeout = Duration::from_millis(300);
        },
        // As `tollgate gateway` sets both from `--idle-stream-timeout`; the connection's own
        // idle timeout is far longer, so the stream's bound is the one that cuts.
        ServeLimits {
            stream_idle_timeout: Duration::from_secs(1),
            client_idle_timeout: Duration::from_secs(60),
            ..ServeLimits::default()
        },
    )
    .await;
    let (send, _conn) = h2_client(h.api, 0).await;
    let mut resp = h2_chat(&send, true).await;
    assert_eq!(resp.status(), 200);
    let end = h2_end_of_unread_body(resp.body_mut(), Duration::from_secs(10)).await;
    let end = end.expect("a stream stalled by its zero window is still open after 10 s");
    assert!(end.contains("CANCEL"), "not a stream reset: {end}");
    wait_for("the upstream stream to be released", Duration::from_secs(10), || released.load(Ordering::SeqCst) == 1)
        .await;
    let gw = h.gw.clone();
    wait_for("the cut stream to be metered", Duration::from_secs(10), || {
        !gw.meter().snapshot().backend("chat", "up").usage_missing.is_empty()
    })
    .await;
    let e = h.gw.meter().snapshot().backend("chat", "up");
    assert_eq!(e.usage_missing.get("client_disconnected"), Some(&1), "{:?}", e.usage_missing);
    assert!(e.estimated_cost > Money::ZERO);
    assert_eq!(e.count(tollgate::policy::Outcome::Ok), 1, "{:?}", e.outcomes);
}

/// `--max-header-bytes` bounds an HTTP/2 request's header list too (h2's accounting: name +
/// value + 32 bytes per field), with a value other than hyper's 16 KiB default: a header list
/// under the flag is served, one over it gets 431.
#[tokio::test]
async fn h2_header_lists_are_bounded_by_max_header_bytes() {
    let limits = ServeLimits { max_header_bytes: 40 * 1024, ..ServeLimits::default() };
    let h = start(config(vec![backend("m", mock())]), |_| {}, limits).await;
    let client = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let url = format!("http://{}/healthz", h.api);
    // 24 KiB: over hyper's default, under the flag.
    let r = client.get(&url).header("x-pad", "a".repeat(24 * 1024)).send().await.unwrap();
    assert_eq!((r.version(), r.status().as_u16()), (reqwest::Version::HTTP_2, 200));
    // 48 KiB: over the flag.
    let (send, _conn) = h2_client(h.api, 65_535).await;
    let mut send = send.ready().await.unwrap();
    let req = http::Request::get("http://gateway/healthz").header("x-pad", "a".repeat(48 * 1024)).body(()).unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), resp).await.expect("no answer within 10 s");
    assert_eq!(resp.unwrap().status(), 431);
    // Served again on a new connection.
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

/// An HTTP/2 connection with no open stream is closed after `--client-idle-timeout`, even when
/// the client keeps pinging it; a new one that never opens a stream is closed after
/// `--header-read-timeout`, as an HTTP/1 connection that never sends a request.
#[tokio::test]
async fn idle_h2_connections_are_closed() {
    let limits = ServeLimits {
        header_read_timeout: Duration::from_millis(700),
        client_idle_timeout: Duration::from_millis(700),
        ..ServeLimits::default()
    };
    let h = start(config(vec![backend("m", mock())]), |_| {}, limits).await;
    // A new connection that never opens a stream.
    let t0 = Instant::now();
    let (_send, conn) = h2_client(h.api, 65_535).await;
    tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("a connection without a stream is still open")
        .unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(600), "closed before the timeout: {:?}", t0.elapsed());

    // One request, then pings only: closed after the idle timeout, pings or not.
    let limits = ServeLimits { header_read_timeout: Duration::from_secs(30), ..limits };
    let h = start(config(vec![backend("m", mock())]), |_| {}, limits).await;
    let tcp = TcpStream::connect(h.api).await.unwrap();
    let (send, mut conn) = h2::client::handshake(tcp).await.unwrap();
    let mut pings = conn.ping_pong().unwrap();
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut resp = h2_chat(&send, false).await;
    assert_eq!(resp.status(), 200);
    while let Some(chunk) = resp.body_mut().data().await {
        let chunk = chunk.unwrap();
        let _ = resp.body_mut().flow_control().release_capacity(chunk.len());
    }
    let idle_from = Instant::now();
    let pinger = tokio::spawn(async move {
        loop {
            if pings.ping(h2::Ping::opaque()).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("an idle, pinging connection is still open")
        .unwrap();
    let idle = idle_from.elapsed();
    assert!(idle >= Duration::from_millis(600), "closed before the idle timeout: {idle:?}");
    pinger.abort();
}

/// An HTTP/2 answer of known length ends only once the client's window holds all of it: a
/// client whose window is smaller than the answer and never grows gets part of it, then the
/// stream is reset after `--client-idle-timeout`, instead of the rest waiting in the
/// gateway's buffers for as long as the connection lives (here kept open by a stalled stream
/// with a longer bound).
#[tokio::test]
async fn an_h2_answer_larger_than_a_window_that_never_grows_is_reset() {
    let limits = ServeLimits {
        client_idle_timeout: Duration::from_secs(1),
        stream_idle_timeout: Duration::from_secs(30),
        ..ServeLimits::default()
    };
    let h =
        start(config(vec![backend("m", mock())]), |o| o.idle_stream_timeout = Duration::from_secs(30), limits).await;
    let (send, _conn) = h2_client(h.api, 100).await;
    let streamed = h2_chat(&send, true).await;
    assert_eq!(streamed.status(), 200);
    let mut resp = h2_chat(&send, false).await;
    assert_eq!(resp.status(), 200);
    let stated: usize = resp.headers()["content-length"].to_str().unwrap().parse().unwrap();
    assert!(stated > 100, "the answer fits the window: the test proves nothing ({stated} bytes)");
    let mut got = 0;
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(10), resp.body_mut().data()).await {
            Err(_) => panic!("the stream is still open after 10 s with {got} of {stated} bytes received"),
            Ok(Some(Ok(b))) => got += b.len(),
            Ok(Some(Err(e))) => break format!("{e} (reset: {:?})", e.reason()),
            Ok(None) => panic!("the body ended cleanly through a closed window"),
        }
    };
    assert_eq!(got, 100, "more than the window arrived");
    assert!(end.contains("CANCEL"), "not a stream reset: {end}");
    drop(streamed);
}
