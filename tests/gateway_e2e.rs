//! Loopback end-to-end tests of the gateway: in-process fake upstreams (axum on 127.0.0.1:0)
//! speaking each provider family's wire format, faults, and hot reload. Every test asserts what
//! the client received AND what the meter / `/metrics` counted, cost exact to the pico-dollar.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use tollgate::api::{
    BackendState, MockEndpoint, Mode, Pricing, Protocol, ProviderFamily, RouteState, Strategy, WireApi,
};
use tollgate::config::{BackendConfig, CONFIG_VERSION, EndpointConfig, GatewayConfig, RouteConfig};
use tollgate::gateway::{Gateway, GatewayOptions, ServeLimits, serve, watch_config_file};
use tollgate::policy::money::Money;
use tollgate::policy::{BackendKey, Outcome, SpendKey};
use tollgate::pricing::{Prices, TokenCounts};

// ---------------------------------------------------------------------------------------------
// Fake upstreams
// ---------------------------------------------------------------------------------------------

/// Usage payloads in each family's real wire shape, and what they bill.
mod usage {
    use super::*;

    /// OpenAI chat: cached ⊂ prompt, reasoning ⊂ completion → input 800, cached 200,
    /// output 400, reasoning 100.
    pub fn openai_chat() -> Value {
        json!({"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500,
               "prompt_tokens_details": {"cached_tokens": 200}, "completion_tokens_details": {"reasoning_tokens": 100}})
    }
    /// OpenAI Responses: same counts as `openai_chat`.
    pub fn openai_responses() -> Value {
        json!({"input_tokens": 1000, "input_tokens_details": {"cached_tokens": 200}, "output_tokens": 500,
               "output_tokens_details": {"reasoning_tokens": 100}, "total_tokens": 1500})
    }
    /// Embeddings → input 12.
    pub fn openai_embeddings() -> Value {
        json!({"prompt_tokens": 12, "total_tokens": 12})
    }
    /// Anthropic-compatible: cache reads/writes outside prompt_tokens → input 300, cached 900,
    /// cache_write 100, output 80.
    pub fn anthropic() -> Value {
        json!({"prompt_tokens": 300, "completion_tokens": 80, "total_tokens": 1380,
               "cache_read_input_tokens": 900, "cache_creation_input_tokens": 100})
    }
    /// DeepSeek: hit + miss = prompt → input 400, cached 600, output 100, reasoning 200.
    pub fn deepseek() -> Value {
        json!({"prompt_tokens": 1000, "completion_tokens": 300, "total_tokens": 1300,
               "prompt_cache_hit_tokens": 600, "prompt_cache_miss_tokens": 400,
               "completion_tokens_details": {"reasoning_tokens": 200}})
    }
    /// Gemini-compatible: thoughts only in total_tokens → input 400, cached 100, output 50,
    /// reasoning 100.
    pub fn gemini() -> Value {
        json!({"prompt_tokens": 500, "completion_tokens": 50, "total_tokens": 650,
               "prompt_tokens_details": {"cached_tokens": 100}})
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    OpenAI,
    Anthropic,
    DeepSeek,
    Gemini,
}

/// What a fake upstream does.
#[derive(Clone)]
enum Behavior {
    /// Answers like a provider of this shape: chat (stream or not), responses, embeddings.
    Provider(Shape),
    /// A fixed status and body.
    Fixed(u16, &'static str),
    /// Sleeps, then behaves.
    Delay(Duration, Box<Behavior>),
    /// Streams: headers at once, the first chunk after `first`, then one chunk every `every`;
    /// with `break_after`, the connection is reset after that many chunks.
    Stream { first: Duration, every: Duration, chunks: usize, break_after: Option<usize> },
}

#[derive(Clone, Debug)]
struct Seen {
    path: String,
    headers: HeaderMap,
    raw: Bytes,
}

#[derive(Clone)]
struct Fake {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Fake {
    fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
    fn hits(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
    fn last(&self) -> Seen {
        self.seen.lock().unwrap().last().cloned().expect("a request reached the fake")
    }
}

fn sse(events: &[Value]) -> String {
    let mut s: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    s.push_str("data: [DONE]\n\n");
    s
}

fn chat_chunk(model: &str, choices: Value, usage: Option<Value>, with_usage_field: bool) -> Value {
    let mut v = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": choices});
    if with_usage_field {
        v["usage"] = usage.unwrap_or(Value::Null);
    }
    v
}

/// Answers like a provider; every answer carries `x-request-id: req-<calls>` (unique per
/// request to this fake), as real providers send one.
fn provider_answer(shape: Shape, path: &str, req: &Value, calls: usize) -> Response {
    let mut resp = provider_body(shape, path, req);
    resp.headers_mut().insert("x-request-id", format!("req-{calls}").parse().unwrap());
    resp
}

fn provider_body(shape: Shape, path: &str, req: &Value) -> Response {
    let upstream_model = format!("{}-served", req["model"].as_str().unwrap_or("?"));
    let chat_usage = match shape {
        Shape::OpenAI => usage::openai_chat(),
        Shape::Anthropic => usage::anthropic(),
        Shape::DeepSeek => usage::deepseek(),
        Shape::Gemini => usage::gemini(),
    };
    let stream = req["stream"].as_bool().unwrap_or(false);
    let include_usage = req["stream_options"]["include_usage"].as_bool().unwrap_or(false);
    let sse_response = |text: String| ([("content-type", "text/event-stream")], text).into_response();
    match path {
        "/v1/chat/completions" if stream => {
            let mut events = vec![
                chat_chunk(&upstream_model, json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]), None, include_usage),
                chat_chunk(&upstream_model, json!([{"index": 0, "delta": {"content": "Hello"}, "finish_reason": null}]), None, include_usage),
                chat_chunk(&upstream_model, json!([{"index": 0, "delta": {"content": " world"}, "finish_reason": "stop"}]), None, include_usage),
            ];
            if include_usage {
                events.push(chat_chunk(&upstream_model, json!([]), Some(chat_usage), true));
            }
            sse_response(sse(&events))
        }
        "/v1/chat/completions" => axum::Json(json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": upstream_model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello world"}, "finish_reason": "stop"}],
            "usage": chat_usage,
        }))
        .into_response(),
        "/v1/responses" => {
            let done = json!({"id": "resp_1", "object": "response", "status": "completed", "model": upstream_model,
                "output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello world"}]}],
                "usage": usage::openai_responses()});
            if stream {
                let text = format!(
                    "event: response.created\ndata: {}\n\nevent: response.output_text.delta\ndata: {}\n\nevent: response.completed\ndata: {}\n\n",
                    json!({"type": "response.created", "response": {"id": "resp_1", "status": "in_progress", "usage": null}}),
                    json!({"type": "response.output_text.delta", "delta": "Hello world"}),
                    json!({"type": "response.completed", "response": done}),
                );
                sse_response(text)
            } else {
                axum::Json(done).into_response()
            }
        }
        "/v1/embeddings" => axum::Json(json!({"object": "list", "model": upstream_model,
            "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}], "usage": usage::openai_embeddings()}))
        .into_response(),
        _ => (StatusCode::NOT_FOUND, "no such path").into_response(),
    }
}

async fn behave(b: Behavior, path: String, req: Value, calls: usize) -> Response {
    match b {
        Behavior::Provider(shape) => provider_answer(shape, &path, &req, calls),
        Behavior::Fixed(status, body) => {
            (StatusCode::from_u16(status).unwrap(), [("content-type", "application/json")], body).into_response()
        }
        Behavior::Delay(d, inner) => {
            tokio::time::sleep(d).await;
            Box::pin(behave(*inner, path, req, calls)).await
        }
        Behavior::Stream { first, every, chunks, break_after } => {
            let s = futures::stream::unfold(0usize, move |i| async move {
                if i > chunks {
                    return None;
                }
                tokio::time::sleep(if i == 0 { first } else { every }).await;
                if break_after == Some(i) {
                    return Some((Err(std::io::Error::other("reset")), i + 1));
                }
                let item = if i == chunks {
                    Bytes::from(format!(
                        "data: {}\n\ndata: [DONE]\n\n",
                        chat_chunk("slow", json!([]), Some(usage::openai_chat()), true)
                    ))
                } else {
                    Bytes::from(format!(
                        "data: {}\n\n",
                        chat_chunk("slow", json!([{"index": 0, "delta": {"content": format!("c{i} ")}}]), None, true)
                    ))
                };
                Some((Ok::<Bytes, std::io::Error>(item), i + 1))
            });
            ([("content-type", "text/event-stream")], Body::from_stream(s)).into_response()
        }
    }
}

async fn fake(b: Behavior) -> Fake {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let seen2 = seen.clone();
    let app = Router::new().fallback(move |req: Request| {
        let seen = seen2.clone();
        let b = b.clone();
        async move {
            let (parts, body) = req.into_parts();
            let raw = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
            let req: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
            let calls = {
                let mut s = seen.lock().unwrap();
                s.push(Seen { path: parts.uri.path().to_string(), headers: parts.headers.clone(), raw });
                s.len()
            };
            behave(b, parts.uri.path().to_string(), req, calls).await
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Fake { addr, seen }
}

// ---------------------------------------------------------------------------------------------
// Config builders
// ---------------------------------------------------------------------------------------------

fn prices(input: &str, cached: &str, write: &str, output: &str, reasoning: &str) -> Prices {
    Prices::from_spec(&Pricing {
        input: input.into(),
        cached_input: Some(cached.into()),
        cache_write: Some(write.into()),
        cache_write_1h: None,
        output: output.into(),
        reasoning: Some(reasoning.into()),
    })
    .unwrap()
}

fn openai_prices() -> Prices {
    prices("2.50", "1.25", "3.75", "10", "10")
}

fn http(f: &Fake, protocol: Protocol, key_file: Option<&str>) -> EndpointConfig {
    EndpointConfig::Http { base_url: f.url(), protocol, api_key_file: key_file.map(str::to_string) }
}

fn closed_port_endpoint() -> EndpointConfig {
    // Bind then drop: nothing listens there any more.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    EndpointConfig::Http { base_url: format!("http://{addr}/v1"), protocol: Protocol::OpenAI, api_key_file: None }
}

fn backend(
    name: &str,
    provider: &str,
    family: ProviderFamily,
    endpoint: EndpointConfig,
    pricing: Prices,
) -> BackendConfig {
    BackendConfig {
        name: name.into(),
        provider: provider.into(),
        family,
        model: format!("{name}-model"),
        api: WireApi::OpenAI,
        tier: 0,
        weight: 1,
        state: BackendState::Active,
        serving: true,
        endpoint,
        pricing,
        max_output_tokens: None,
    }
}

fn tiered(mut b: BackendConfig, tier: u32, weight: u32) -> BackendConfig {
    b.tier = tier;
    b.weight = weight;
    b
}

fn route(name: &str, strategy: Strategy, backends: Vec<BackendConfig>) -> RouteConfig {
    RouteConfig {
        name: name.into(),
        model: name.into(),
        strategy,
        mode: Mode::Enforce,
        state: RouteState::Serving,
        backends,
        max_input_tokens: None,
        media_input_tokens: None,
        affinity: None,
        hints: None,
    }
}

fn config(routes: Vec<RouteConfig>) -> GatewayConfig {
    let mut c = GatewayConfig { version: CONFIG_VERSION, revision: String::new(), namespace: "team-a".into(), routes };
    c.revision = c.compute_revision();
    c
}

fn mock(latency: &str) -> EndpointConfig {
    EndpointConfig::Mock(MockEndpoint { latency: latency.into(), ..MockEndpoint::default() })
}

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

struct Harness {
    gw: Gateway,
    base: String,
    metrics_url: String,
    client: reqwest::Client,
    _creds: TempDir,
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "tollgate-gw-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const OPENAI_KEY: &str = "sk-test-openai-0123456789";
const ANTHROPIC_KEY: &str = "sk-ant-test-9876543210";

/// Generous timeouts, so a loaded machine does not fail a test that is not about timing; the
/// tests about timeouts set tight ones themselves.
fn test_opts(creds: &Path) -> GatewayOptions {
    GatewayOptions {
        credentials_dir: creds.to_path_buf(),
        first_byte_timeout: Duration::from_secs(30),
        idle_stream_timeout: Duration::from_secs(30),
        total_timeout: Duration::from_secs(60),
        ..GatewayOptions::default()
    }
}

async fn start_with(cfg: Option<GatewayConfig>, tweak: impl FnOnce(&mut GatewayOptions)) -> Harness {
    let creds = TempDir::new("creds");
    std::fs::write(creds.path().join("openai_api-key"), format!("{OPENAI_KEY}\n")).unwrap();
    std::fs::write(creds.path().join("anthropic_api-key"), ANTHROPIC_KEY).unwrap();
    let mut opts = test_opts(creds.path());
    tweak(&mut opts);
    let gw = Gateway::new(cfg, opts).unwrap();
    let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let met = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", api.local_addr().unwrap());
    let metrics_url = format!("http://{}/metrics", met.local_addr().unwrap());
    tokio::spawn(serve(api, gw.api(), ServeLimits::default(), std::future::pending()));
    tokio::spawn(serve(met, gw.metrics_router(), ServeLimits::default(), std::future::pending()));
    Harness { gw, base, metrics_url, client: reqwest::Client::new(), _creds: creds }
}

async fn start(cfg: GatewayConfig) -> Harness {
    start_with(Some(cfg), |_| {}).await
}

impl Harness {
    async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.client.post(format!("{}{path}", self.base)).json(&body).send().await.unwrap()
    }

    async fn metrics(&self) -> String {
        self.client.get(&self.metrics_url).send().await.unwrap().text().await.unwrap()
    }

    /// The value of one series in `/metrics`, 0 when absent.
    async fn series(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self.metrics().await;
        let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        let prefix = format!("{name}{{{}}} ", l.join(","));
        text.lines().find_map(|line| line.strip_prefix(&prefix)).map(|v| v.parse().unwrap()).unwrap_or(0.0)
    }

    async fn requests(&self, route: &str, backend: &str, provider: &str, outcome: &str) -> f64 {
        let model = format!("{backend}-model");
        self.series(
            "tollgate_requests_total",
            &[("route", route), ("backend", backend), ("provider", provider), ("model", &model), ("outcome", outcome)],
        )
        .await
    }

    async fn nanousd(&self, route: &str, backend: &str, provider: &str) -> f64 {
        let model = format!("{backend}-model");
        self.series(
            "tollgate_cost_nanousd_total",
            &[("route", route), ("backend", backend), ("provider", provider), ("model", &model)],
        )
        .await
    }

    fn entry(&self, route: &str, backend: &str) -> tollgate::gateway::MeterEntry {
        self.gw.meter().snapshot().backend(route, backend)
    }
}

fn usd(s: &str) -> Money {
    s.parse().unwrap()
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn error_code(r: reqwest::Response) -> (u16, String, Value) {
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    let code = v["error"]["code"].as_str().unwrap_or_default().to_string();
    assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "OpenAI-shaped error: {v}");
    assert!(v["error"]["type"].is_string(), "OpenAI-shaped error: {v}");
    (status, code, v)
}

/// Reads a stream to its end; `Err` when it broke.
async fn read_stream(r: reqwest::Response) -> (String, Result<(), String>, Vec<Duration>) {
    let t0 = Instant::now();
    let mut out = Vec::new();
    let mut at = Vec::new();
    let mut s = r.bytes_stream();
    while let Some(c) = s.next().await {
        match c {
            Ok(c) => {
                at.push(t0.elapsed());
                out.extend_from_slice(&c);
            }
            Err(e) => return (String::from_utf8_lossy(&out).into_owned(), Err(e.to_string()), at),
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), Ok(()), at)
}

fn data_events(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Provider families, streaming and not
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn openai_chat_is_proxied_untouched_and_billed_exactly() {
    let up = fake(Behavior::Provider(Shape::OpenAI)).await;
    let h = start(config(vec![route(
        "chat",
        Strategy::Weighted,
        vec![backend(
            "oa",
            "openai",
            ProviderFamily::OpenAI,
            http(&up, Protocol::OpenAI, Some("openai_api-key")),
            openai_prices(),
        )],
    )]))
    .await;
    // Unusual key order and formatting: only `model` may change.
    let body = r#"{"temperature":0.25,"messages":[{"role":"user","content":"h\u00e9llo  "}],"model":"chat","extra":{"b":1,"a":[1.50,2]}}"#;
    let r = h
        .client
        .post(format!("{}/v1/chat/completions", h.base))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-tollgate-route"), Some("chat"));
    assert_eq!(header(&r, "x-tollgate-backend"), Some("oa"));
    assert_eq!(header(&r, "x-tollgate-provider"), Some("openai"));
    assert_eq!(header(&r, "x-tollgate-attempts"), None);
    assert_eq!(header(&r, "x-request-id"), Some("req-1"), "upstream's request id reaches the client");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["model"], "oa-model-served", "the response keeps upstream's model");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello world");

    let seen = up.last();
    assert_eq!(seen.path, "/v1/chat/completions");
    assert_eq!(
        std::str::from_utf8(&seen.raw).unwrap(),
        r#"{"temperature":0.25,"messages":[{"role":"user","content":"h\u00e9llo  "}],"model":"oa-model","extra":{"b":1,"a":[1.50,2]}}"#
    );
    assert_eq!(seen.headers["authorization"], format!("Bearer {OPENAI_KEY}"));
    assert!(seen.headers.get("x-api-key").is_none());

    // 800 input × $2.50 + 200 cached × $1.25 + 400 output × $10 + 100 reasoning × $10, per 1M
    // = (2000 + 250 + 4000 + 1000) / 1e6 = $0.00725
    let e = h.entry("chat", "oa");
    assert_eq!(e.cost, usd("0.00725"));
    assert_eq!(
        e.tokens,
        TokenCounts { input: 800, cached_input: 200, cache_write: 0, cache_write_1h: 0, output: 400, reasoning: 100 }
    );
    assert_eq!(e.count(Outcome::Ok), 1);
    assert_eq!(h.requests("chat", "oa", "openai", "ok").await, 1.0);
    assert_eq!(h.nanousd("chat", "oa", "openai").await, 7_250_000.0);
    let text = h.metrics().await;
    assert!(text.contains(r#"tollgate_tokens_total{route="chat",backend="oa",provider="openai",model="oa-model",kind="cached_input"} 200"#), "{text}");
    assert!(
        text.contains(
            r#"tollgate_cost_usd_total{route="chat",backend="oa",provider="openai",model="oa-model"} 0.00725"#
        ),
        "{text}"
    );
    assert!(text.contains("tollgate_request_duration_seconds_count{"), "{text}");
    assert!(text.contains(&format!("tollgate_config_revision_info{{revision=\"{}\"}} 1", h.gw.revision().unwrap())));
    assert!(!text.contains(OPENAI_KEY));

    // The meter diffs into the policy's observations.
    let obs = h.gw.meter().snapshot().to_observations_since(&Default::default(), "team-a");
    assert_eq!(obs.backends[&BackendKey::new("team-a", "chat", "oa")].outcomes[&Outcome::Ok], 1);
    assert_eq!(obs.spend[&SpendKey::new("team-a", "openai", "oa-model")], usd("0.00725"));
}

#[tokio::test]
async fn streaming_chat_without_include_usage_gets_exactly_what_it_asked_for() {
    let up = fake(Behavior::Provider(Shape::OpenAI)).await;
    let h = start(config(vec![route(
        "chat",
        Strategy::Weighted,
        vec![backend(
            "oa",
            "openai",
            ProviderFamily::OpenAI,
            http(&up, Protocol::OpenAI, Some("openai_api-key")),
            openai_prices(),
        )],
    )]))
    .await;
    let r = h.post("/v1/chat/completions", json!({"model": "chat", "stream": true, "messages": []})).await;
    assert_eq!(r.status(), 200);
    assert!(header(&r, "content-type").unwrap().starts_with("text/event-stream"));
    assert_eq!(header(&r, "x-request-id"), Some("req-1"), "upstream's request id reaches a streaming client");
    let (text, end, _) = read_stream(r).await;
    end.unwrap();
    // The gateway asked upstream for usage...
    let sent: Value = serde_json::from_slice(&up.last().raw).unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);
    // ...and removed the usage-only chunk before the client saw it.
    let events = data_events(&text);
    assert_eq!(events.len(), 3, "{text}");
    assert!(events.iter().all(|e| !e["choices"].as_array().unwrap().is_empty()));
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert!(!text.contains("usage"), "not even the usage:null members: {text}");
    let content: String = events.iter().filter_map(|e| e["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(content, "Hello world");
    // Billed from the stripped chunk.
    assert_eq!(h.entry("chat", "oa").cost, usd("0.00725"));
    assert_eq!(h.nanousd("chat", "oa", "openai").await, 7_250_000.0);
    let ttft = h.metrics().await;
    assert!(ttft.contains(r#"tollgate_time_to_first_token_seconds_count{route="chat",backend="oa",provider="openai",model="oa-model"} 1"#), "{ttft}");

    // With include_usage the client gets the usage chunk, untouched.
    let r = h
        .post(
            "/v1/chat/completions",
            json!({"model": "chat", "stream": true, "stream_options": {"include_usage": true}, "messages": []}),
        )
        .await;
    let (text, end, _) = read_stream(r).await;
    end.unwrap();
    let events = data_events(&text);
    assert_eq!(events.len(), 4);
    assert_eq!(events[3]["choices"], json!([]));
    assert_eq!(events[3]["usage"]["prompt_tokens"], 1000);
    assert_eq!(h.entry("chat", "oa").cost, usd("0.0145"));
    assert_eq!(h.entry("chat", "oa").count(Outcome::Ok), 2);
}

#[tokio::test]
async fn responses_and_embeddings_are_metered() {
    let up = fake(Behavior::Provider(Shape::OpenAI)).await;
    let h = start(config(vec![
        route(
            "resp",
            Strategy::Weighted,
            vec![backend("oa", "openai", ProviderFamily::OpenAI, http(&up, Protocol::OpenAI, None), openai_prices())],
        ),
        route(
            "embed",
            Strategy::Weighted,
            vec![backend(
                "emb",
                "openai",
                ProviderFamily::OpenAI,
                http(&up, Protocol::OpenAI, None),
                prices("0.02", "0.02", "0.02", "0", "0"),
            )],
        ),
    ]))
    .await;
    let r = h.post("/v1/responses", json!({"model": "resp", "input": "hi"})).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "response");
    assert_eq!(up.last().path, "/v1/responses");
    assert!(up.last().headers.get("authorization").is_none(), "no key file, no auth header");
    assert_eq!(h.entry("resp", "oa").cost, usd("0.00725"));

    // Streaming Responses: usage from the response.completed event; nothing is stripped.
    let r = h.post("/v1/responses", json!({"model": "resp", "input": "hi", "stream": true})).await;
    let (text, end, _) = read_stream(r).await;
    end.unwrap();
    assert!(text.contains("event: response.completed"));
    let sent: Value = serde_json::from_slice(&up.last().raw).unwrap();
    assert!(sent.get("stream_options").is_none(), "Responses streams always carry usage");
    assert_eq!(h.entry("resp", "oa").cost, usd("0.0145"));

    // Embeddings: 12 input tokens × $0.02 / 1M = $0.00000024
    let r = h.post("/v1/embeddings", json!({"model": "embed", "input": "hello"})).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["data"][0]["embedding"], json!([0.1, 0.2]));
    let e = h.entry("embed", "emb");
    assert_eq!(e.cost, usd("0.00000024"));
    assert_eq!(e.tokens.input, 12);
    assert_eq!(h.nanousd("embed", "emb", "openai").await, 240.0);
}

#[tokio::test]
async fn anthropic_deepseek_and_gemini_wire_formats() {
    let anth = fake(Behavior::Provider(Shape::Anthropic)).await;
    let ds = fake(Behavior::Provider(Shape::DeepSeek)).await;
    let gem = fake(Behavior::Provider(Shape::Gemini)).await;
    let h = start(config(vec![
        route(
            "claude",
            Strategy::Weighted,
            vec![backend(
                "an",
                "anthropic",
                ProviderFamily::Anthropic,
                http(&anth, Protocol::Anthropic, Some("anthropic_api-key")),
                prices("3", "0.30", "3.75", "15", "15"),
            )],
        ),
        route(
            "ds",
            Strategy::Weighted,
            vec![backend(
                "dsk",
                "deepseek",
                ProviderFamily::DeepSeek,
                http(&ds, Protocol::OpenAI, None),
                prices("0.27", "0.07", "0.27", "1.10", "2.19"),
            )],
        ),
        route(
            "gem",
            Strategy::Weighted,
            vec![backend(
                "gm",
                "gemini",
                ProviderFamily::Gemini,
                http(&gem, Protocol::OpenAI, None),
                prices("1.25", "0.3125", "1.25", "10", "10"),
            )],
        ),
    ]))
    .await;

    for stream in [false, true] {
        let r = h.post("/v1/chat/completions", json!({"model": "claude", "stream": stream, "messages": []})).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-tollgate-provider"), Some("anthropic"));
        let _ = r.bytes().await.unwrap();
        let seen = anth.last();
        assert_eq!(seen.headers["x-api-key"], ANTHROPIC_KEY);
        assert_eq!(seen.headers["anthropic-version"], "2023-06-01");
        assert!(seen.headers.get("authorization").is_none());
        for model in ["ds", "gem"] {
            let r = h.post("/v1/chat/completions", json!({"model": model, "stream": stream, "messages": []})).await;
            assert_eq!(r.status(), 200);
            let _ = r.bytes().await.unwrap();
        }
    }
    // Anthropic: 300 × $3 + 900 × $0.30 + 100 × $3.75 + 80 × $15 = 900 + 270 + 375 + 1200
    // = $0.002745 per request; two requests.
    let e = h.entry("claude", "an");
    assert_eq!(
        e.tokens,
        TokenCounts { input: 600, cached_input: 1800, cache_write: 200, cache_write_1h: 0, output: 160, reasoning: 0 }
    );
    assert_eq!(e.cost, usd("0.00549"));
    // DeepSeek: 400 × $0.27 + 600 × $0.07 + 100 × $1.10 + 200 × $2.19 = 108 + 42 + 110 + 438
    // = $0.000698 per request.
    assert_eq!(h.entry("ds", "dsk").cost, usd("0.001396"));
    // Gemini: 400 × $1.25 + 100 × $0.3125 + 50 × $10 + 100 × $10 = 500 + 31.25 + 500 + 1000
    // = $0.00203125 per request.
    let g = h.entry("gem", "gm");
    assert_eq!(g.tokens.reasoning, 200);
    assert_eq!(g.cost, usd("0.0040625"));
    assert_eq!(h.nanousd("gem", "gm", "gemini").await, 4_062_500.0);
    assert_eq!(h.gw.meter().snapshot().total_cost(), usd("0.0109485"));
}

// ---------------------------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn connection_reset_mid_stream_is_not_retried_and_counted() {
    let broken = fake(Behavior::Stream {
        first: Duration::ZERO,
        every: Duration::from_millis(10),
        chunks: 5,
        break_after: Some(2),
    })
    .await;
    let spare = fake(Behavior::Provider(Shape::OpenAI)).await;
    let h = start(config(vec![route(
        "chat",
        Strategy::Priority,
        vec![
            backend("a", "openai", ProviderFamily::OpenAI, http(&broken, Protocol::OpenAI, None), openai_prices()),
            backend("b", "openai", ProviderFamily::OpenAI, http(&spare, Protocol::OpenAI, None), openai_prices()),
        ],
    )]))
    .await;
    let r = h
        .post(
            "/v1/chat/completions",
            json!({"model": "chat", "stream": true, "stream_options": {"include_usage": true}}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let (text, end, _) = read_stream(r).await;
    assert!(text.contains("c0 ") && text.contains("c1 "), "bytes before the reset reached the client: {text}");
    assert!(end.is_err(), "the client sees a broken stream, not a clean end");
    assert_eq!(spare.hits(), 0, "never retried after bytes reached the client");
    wait_for("the broken stream metered", || h.entry("chat", "a").count(Outcome::UpstreamError) == 1).await;
    let e = h.entry("chat", "a");
    assert_eq!(e.count(Outcome::UpstreamError), 1);
    assert_eq!(e.usage_missing["stream_interrupted"], 1);
    assert_eq!(e.cost, Money::ZERO);
    assert_eq!(
        h.series(
            "tollgate_usage_missing_total",
            &[
                ("route", "chat"),
                ("backend", "a"),
                ("provider", "openai"),
                ("model", "a-model"),
                ("reason", "stream_interrupted")
            ]
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn timeout_before_first_byte_fails_over() {
    let first_byte = Duration::from_secs(1);
    let upstream_delay = Duration::from_secs(30);
    let slow_headers = fake(Behavior::Delay(upstream_delay, Box::new(Behavior::Provider(Shape::OpenAI)))).await;
    let slow_first_chunk =
        fake(Behavior::Stream { first: upstream_delay, every: Duration::ZERO, chunks: 1, break_after: None }).await;
    let good = fake(Behavior::Provider(Shape::OpenAI)).await;
    let cfg = config(vec![route(
        "chat",
        Strategy::Priority,
        vec![
            backend(
                "hdr",
                "openai",
                ProviderFamily::OpenAI,
                http(&slow_headers, Protocol::OpenAI, None),
                openai_prices(),
            ),
            backend(
                "chunk",
                "openai",
                ProviderFamily::OpenAI,
                http(&slow_first_chunk, Protocol::OpenAI, None),
                openai_prices(),
            ),
            backend("good", "openai", ProviderFamily::OpenAI, http(&good, Protocol::OpenAI, None), openai_prices()),
        ],
    )]);
    let h = start_with(Some(cfg), |o| o.first_byte_timeout = first_byte).await;
    let t0 = Instant::now();
    let r = h.post("/v1/chat/completions", json!({"model": "chat", "stream": true})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-tollgate-backend"), Some("good"));
    assert_eq!(header(&r, "x-tollgate-attempts"), Some("3"));
    let (text, end, _) = read_stream(r).await;
    end.unwrap();
    assert!(text.contains("Hello"));
    // Two attempts each waited for the whole first-byte timeout, and neither for the upstream.
    let took = t0.elapsed();
    assert!(took >= first_byte * 2, "both slow attempts ran to the first-byte timeout: {took:?}");
    assert!(took < upstream_delay, "each attempt bounded by the first-byte timeout: {took:?}");
    assert_eq!(h.entry("chat", "hdr").count(Outcome::Timeout), 1);
    assert_eq!(h.entry("chat", "chunk").count(Outcome::Timeout), 1);
    assert_eq!(h.entry("chat", "good").count(Outcome::Ok), 1);
    assert_eq!(h.requests("chat", "hdr", "openai", "timeout").await, 1.0);
    assert_eq!(h.entry("chat", "good").cost, usd("0.00725"));
}

#[tokio::test]
async fn slow_stream_passes_through_without_buffering_and_idle_streams_time_out() {
    let slow = fake(Behavior::Stream {
        first: Duration::ZERO,
        every: Duration::from_millis(150),
        chunks: 4,
        break_after: None,
    })
    .await;
    let stuck =
        fake(Behavior::Stream { first: Duration::ZERO, every: Duration::from_secs(5), chunks: 3, break_after: None })
            .await;
    let cfg = config(vec![
        route(
            "slow",
            Strategy::Weighted,
            vec![backend("s", "openai", ProviderFamily::OpenAI, http(&slow, Protocol::OpenAI, None), openai_prices())],
        ),
        route(
            "stuck",
            Strategy::Weighted,
            vec![backend("t", "openai", ProviderFamily::OpenAI, http(&stuck, Protocol::OpenAI, None), openai_prices())],
        ),
    ]);
    // Tight idle timeout: this test is about it (the slow stream's 150 ms gaps stay under it).
    let h = start_with(Some(cfg), |o| o.idle_stream_timeout = Duration::from_secs(1)).await;
    let r = h
        .post(
            "/v1/chat/completions",
            json!({"model": "slow", "stream": true, "stream_options": {"include_usage": true}}),
        )
        .await;
    let (text, end, at) = read_stream(r).await;
    end.unwrap();
    assert_eq!(data_events(&text).len(), 5);
    // The first chunk reached the client long before the stream ended: no buffering.
    assert!(at.len() >= 4, "chunks arrive separately: {at:?}");
    assert!(*at.last().unwrap() - at[0] >= Duration::from_millis(450), "{at:?}");
    assert_eq!(h.entry("slow", "s").count(Outcome::Ok), 1);
    assert_eq!(h.entry("slow", "s").cost, usd("0.00725"));

    // A stream silent for longer than the idle timeout is cut, counted as a timeout.
    let r = h.post("/v1/chat/completions", json!({"model": "stuck", "stream": true})).await;
    assert_eq!(r.status(), 200);
    let (text, end, _) = read_stream(r).await;
    assert!(text.contains("c0 "));
    assert!(end.is_err());
    wait_for("the idle stream metered", || h.entry("stuck", "t").count(Outcome::Timeout) == 1).await;
    let e = h.entry("stuck", "t");
    assert_eq!(e.count(Outcome::Timeout), 1);
    assert_eq!(e.usage_missing["stream_interrupted"], 1);
}

#[tokio::test]
async fn rate_limited_then_success_on_the_next_backend() {
    let limited = fake(Behavior::Fixed(
        429,
        r#"{"error":{"message":"slow down","type":"requests","code":"rate_limit_exceeded"}}"#,
    ))
    .await;
    let good = fake(Behavior::Provider(Shape::DeepSeek)).await;
    let h = start(config(vec![route(
        "chat",
        Strategy::Priority,
        vec![
            backend("a", "openai", ProviderFamily::OpenAI, http(&limited, Protocol::OpenAI, None), openai_prices()),
            tiered(
                backend(
                    "b",
                    "deepseek",
                    ProviderFamily::DeepSeek,
                    http(&good, Protocol::OpenAI, None),
                    prices("0.27", "0.07", "0.27", "1.10", "2.19"),
                ),
                1,
                0,
            ),
        ],
    )]))
    .await;
    let r = h.post("/v1/chat/completions", json!({"model": "chat", "messages": []})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-tollgate-backend"), Some("b"));
    assert_eq!(header(&r, "x-tollgate-provider"), Some("deepseek"));
    assert_eq!(header(&r, "x-tollgate-attempts"), Some("2"));
    assert_eq!(limited.hits(), 1);
    assert_eq!(h.requests("chat", "a", "openai", "rate_limited").await, 1.0);
    assert_eq!(h.requests("chat", "b", "deepseek", "ok").await, 1.0);
    assert_eq!(h.entry("chat", "a").cost, Money::ZERO);
    assert_eq!(h.entry("chat", "b").cost, usd("0.000698"));

    // A 429 from the last backend is answered as a 429.
    let h2 = start(config(vec![route(
        "chat",
        Strategy::Weighted,
        vec![backend("a", "openai", ProviderFamily::OpenAI, http(&limited, Protocol::OpenAI, None), openai_prices())],
    )]))
    .await;
    let r = h2.post("/v1/chat/completions", json!({"model": "chat"})).await;
    let (status, code, v) = error_code(r).await;
    assert_eq!((status, code.as_str()), (429, "rate_limit_exceeded"));
    assert!(v["error"]["message"].as_str().unwrap().contains("slow down"));
}

#[tokio::test]
async fn five_xx_storm_is_bounded_by_max_attempts() {
    let mut fakes = Vec::new();
    for _ in 0..4 {
        fakes.push(fake(Behavior::Fixed(503, r#"{"error":{"message":"overloaded"}}"#)).await);
    }
    let backends = fakes
        .iter()
        .enumerate()
        .map(|(i, f)| {
            backend(
                &format!("b{i}"),
                "openai",
                ProviderFamily::OpenAI,
                http(f, Protocol::OpenAI, None),
                openai_prices(),
            )
        })
        .collect();
    let h = start(config(vec![route("chat", Strategy::Weighted, backends)])).await;
    for _ in 0..5 {
        let r = h.post("/v1/chat/completions", json!({"model": "chat"})).await;
        assert_eq!(header(&r, "x-tollgate-attempts"), Some("3"));
        let (status, code, v) = error_code(r).await;
        assert_eq!((status, code.as_str()), (502, "upstream_error"));
        assert!(v["error"]["message"].as_str().unwrap().contains("503"));
    }
    let total: usize = fakes.iter().map(Fake::hits).sum();
    assert_eq!(total, 15, "3 attempts per request, never more");
    let snap = h.gw.meter().snapshot();
    let errors: u64 = (0..4).map(|i| snap.backend("chat", &format!("b{i}")).count(Outcome::UpstreamError)).sum();
    assert_eq!(errors, 15);
    assert_eq!(snap.total_cost(), Money::ZERO);
}

#[tokio::test]
async fn malformed_json_missing_usage_and_client_errors() {
    let garbage = fake(Behavior::Fixed(200, "{\"id\": \"x\", oops")).await;
    let no_usage = fake(Behavior::Fixed(200, r#"{"id":"x","object":"chat.completion","choices":[]}"#)).await;
    let bad_request = fake(Behavior::Fixed(
        400,
        r#"{"error":{"message":"messages is required","type":"invalid_request_error","code":null}}"#,
    ))
    .await;
    let spare = fake(Behavior::Provider(Shape::OpenAI)).await;
    let h = start(config(vec![
        route(
            "garbage",
            Strategy::Priority,
            vec![
                backend("g", "openai", ProviderFamily::OpenAI, http(&garbage, Protocol::OpenAI, None), openai_prices()),
                backend("s1", "openai", ProviderFamily::OpenAI, http(&spare, Protocol::OpenAI, None), openai_prices()),
            ],
        ),
        route(
            "nousage",
            Strategy::Weighted,
            vec![backend(
                "n",
                "openai",
                ProviderFamily::OpenAI,
                http(&no_usage, Protocol::OpenAI, None),
                openai_prices(),
            )],
        ),
        route(
            "bad",
            Strategy::Priority,
            vec![
                backend(
                    "c",
                    "openai",
                    ProviderFamily::OpenAI,
                    http(&bad_request, Protocol::OpenAI, None),
                    openai_prices(),
                ),
                backend("s2", "openai", ProviderFamily::OpenAI, http(&spare, Protocol::OpenAI, None), openai_prices()),
            ],
        ),
    ]))
    .await;
    let r = h.post("/v1/chat/completions", json!({"model": "garbage"})).await;
    let (status, code, _) = error_code(r).await;
    assert_eq!((status, code.as_str()), (502, "upstream_invalid_response"));
    let e = h.entry("garbage", "g");
    assert_eq!(e.count(Outcome::UpstreamError), 1);
    assert_eq!(e.usage_missing["unparseable_body"], 1);

    // No usage: the answer is served, and counted as unbilled (never as zero cost silently).
    let r = h.post("/v1/chat/completions", json!({"model": "nousage"})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["id"], "x");
    let e = h.entry("nousage", "n");
    assert_eq!(e.count(Outcome::Ok), 1);
    assert_eq!(e.usage_missing["missing"], 1);
    assert_eq!(
        h.series(
            "tollgate_usage_missing_total",
            &[
                ("route", "nousage"),
                ("backend", "n"),
                ("provider", "openai"),
                ("model", "n-model"),
                ("reason", "missing")
            ]
        )
        .await,
        1.0
    );

    // A 400 is the client's: passed back as is, never retried.
    let r = h.post("/v1/chat/completions", json!({"model": "bad"})).await;
    let (status, _, v) = error_code(r).await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["message"], "messages is required");
    assert_eq!(h.entry("bad", "c").count(Outcome::ClientError), 1);
    assert_eq!(spare.hits(), 0);
}

#[tokio::test]
async fn connect_errors_fail_over_and_keys_never_leak() {
    let good = fake(Behavior::Provider(Shape::OpenAI)).await;
    let echo_key = fake(Behavior::Fixed(401, r#"{"error":{"message":"Incorrect API key provided: sk-test-openai-0123456789","type":"invalid_request_error"}}"#)).await;
    let h = start(config(vec![
        route(
            "chat",
            Strategy::Priority,
            vec![
                backend("down", "openai", ProviderFamily::OpenAI, closed_port_endpoint(), openai_prices()),
                backend(
                    "nokey",
                    "openai",
                    ProviderFamily::OpenAI,
                    http(&good, Protocol::OpenAI, Some("missing_file")),
                    openai_prices(),
                ),
                backend(
                    "up",
                    "openai",
                    ProviderFamily::OpenAI,
                    http(&good, Protocol::OpenAI, Some("openai_api-key")),
                    openai_prices(),
                ),
            ],
        ),
        route(
            "auth",
            Strategy::Weighted,
            vec![backend(
                "x",
                "openai",
                ProviderFamily::OpenAI,
                http(&echo_key, Protocol::OpenAI, Some("openai_api-key")),
                openai_prices(),
            )],
        ),
    ]))
    .await;
    let r = h.post("/v1/chat/completions", json!({"model": "chat"})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-tollgate-backend"), Some("up"));
    assert_eq!(header(&r, "x-tollgate-attempts"), Some("3"));
    assert_eq!(h.entry("chat", "down").count(Outcome::ConnectError), 1);
    assert_eq!(h.entry("chat", "nokey").count(Outcome::ConnectError), 1);
    assert_eq!(good.hits(), 1, "a backend whose key file is missing is not called");

    let r = h.post("/v1/chat/completions", json!({"model": "auth"})).await;
    let (status, code, v) = error_code(r).await;
    assert_eq!((status, code.as_str()), (502, "upstream_auth_failed"));
    assert!(!v.to_string().contains(OPENAI_KEY), "{v}");
    assert!(v.to_string().contains("[redacted]"));
    assert!(!h.metrics().await.contains(OPENAI_KEY));
}

#[tokio::test]
async fn budget_rejection_unknown_models_and_bad_requests() {
    let up = fake(Behavior::Provider(Shape::OpenAI)).await;
    let mut rejecting = route(
        "capped",
        Strategy::Weighted,
        vec![backend("a", "openai", ProviderFamily::OpenAI, http(&up, Protocol::OpenAI, None), openai_prices())],
    );
    rejecting.state = RouteState::Rejecting;
    let mut standby =
        backend("off", "openai", ProviderFamily::OpenAI, http(&up, Protocol::OpenAI, None), openai_prices());
    standby.serving = false;
    let h = start_with(
        Some(config(vec![
            rejecting,
            route(
                "chat",
                Strategy::Weighted,
                vec![backend(
                    "b",
                    "openai",
                    ProviderFamily::OpenAI,
                    http(&up, Protocol::OpenAI, None),
                    openai_prices(),
                )],
            ),
            route("drained", Strategy::Weighted, vec![standby]),
        ])),
        |o| o.max_body_bytes = 2048,
    )
    .await;

    let r = h.post("/v1/chat/completions", json!({"model": "capped"})).await;
    assert_eq!(header(&r, "x-tollgate-route"), Some("capped"));
    let (status, code, v) = error_code(r).await;
    assert_eq!((status, code.as_str()), (429, "budget_exhausted"));
    assert_eq!(v["error"]["type"], "insufficient_quota");
    assert_eq!(up.hits(), 0, "a budget refusal never reaches upstream");
    assert_eq!(h.requests("capped", "a", "openai", "budget_rejected").await, 1.0);

    let r = h.post("/v1/chat/completions", json!({"model": "drained"})).await;
    assert_eq!(error_code(r).await.1, "no_backend_available");
    assert_eq!(up.hits(), 0);

    let r = h.post("/v1/chat/completions", json!({"model": "nope"})).await;
    let (status, code, _) = error_code(r).await;
    assert_eq!((status, code.as_str()), (404, "model_not_found"));

    for (body, code) in
        [("{\"model\": ", "invalid_json"), ("{\"messages\": []}", "missing_model"), ("[]", "invalid_json")]
    {
        let r = h.client.post(format!("{}/v1/chat/completions", h.base)).body(body).send().await.unwrap();
        let (status, c, _) = error_code(r).await;
        assert_eq!((status, c.as_str()), (400, code), "{body}");
    }
    let big = json!({"model": "chat", "input": "x".repeat(4096)});
    let r = h.post("/v1/embeddings", big).await;
    let (status, code, _) = error_code(r).await;
    assert_eq!((status, code.as_str()), (413, "request_too_large"));
    // Chunked (no content-length) bodies are limited too.
    let chunks = futures::stream::iter((0..10).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b' '; 512]))));
    let r = h
        .client
        .post(format!("{}/v1/embeddings", h.base))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);

    let r = h.client.get(format!("{}/v1/nothing", h.base)).send().await.unwrap();
    assert_eq!(error_code(r).await.0, 404);
    let r = h.client.get(format!("{}/v1/chat/completions", h.base)).send().await.unwrap();
    assert_eq!(error_code(r).await.0, 405);

    let models: Value = h.client.get(format!("{}/v1/models", h.base)).send().await.unwrap().json().await.unwrap();
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["capped", "chat", "drained"]);
    assert_eq!(h.client.get(format!("{}/v1/models/chat", h.base)).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn readiness_follows_the_config() {
    let h = start_with(None, |_| {}).await;
    assert_eq!(h.client.get(format!("{}/healthz", h.base)).send().await.unwrap().status(), 200);
    assert_eq!(h.client.get(format!("{}/readyz", h.base)).send().await.unwrap().status(), 503);
    let r = h.post("/v1/chat/completions", json!({"model": "chat"})).await;
    assert_eq!(error_code(r).await.1, "config_not_loaded");
    h.gw.swap_config(config(vec![route(
        "chat",
        Strategy::Weighted,
        vec![backend("m", "openai", ProviderFamily::OpenAI, mock("0ms"), openai_prices())],
    )]))
    .unwrap();
    assert_eq!(h.client.get(format!("{}/readyz", h.base)).send().await.unwrap().status(), 200);
    assert_eq!(h.post("/v1/chat/completions", json!({"model": "chat"})).await.status(), 200);
    // A document whose revision does not match its content is refused and counted.
    let mut bad = config(vec![]);
    bad.revision = "sha256:0000000000000000".into();
    assert!(h.gw.swap_config(bad).is_err());
    assert_eq!(h.gw.meter().reload_errors(), 1);
    assert!(h.metrics().await.contains("tollgate_config_reload_errors_total 1"));
}

#[tokio::test]
async fn mock_backends_answer_and_bill_like_their_provider() {
    let m = MockEndpoint { latency: "0ms".into(), ..MockEndpoint::default() };
    let h = start(config(vec![route(
        "demo",
        Strategy::Weighted,
        vec![backend(
            "claude",
            "anthropic",
            ProviderFamily::Anthropic,
            EndpointConfig::Mock(m.clone()),
            prices("3", "0.30", "3.75", "15", "15"),
        )],
    )]))
    .await;
    let r =
        h.post("/v1/chat/completions", json!({"model": "demo", "messages": [{"role": "user", "content": "hi"}]})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-tollgate-provider"), Some("anthropic"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["model"], "claude-model");
    // Defaults: 1200 prompt tokens of which 400 cached, 100 cache writes, 300 output, 150
    // reasoning → 800 × $3 + 400 × $0.30 + 100 × $3.75 + 300 × $15 + 150 × $15
    // = 2400 + 120 + 375 + 4500 + 2250 = $0.009645
    let e = h.entry("demo", "claude");
    assert_eq!(
        e.tokens,
        TokenCounts { input: 800, cached_input: 400, cache_write: 100, cache_write_1h: 0, output: 300, reasoning: 150 }
    );
    assert_eq!(e.cost, usd("0.009645"));
    let r = h.post("/v1/chat/completions", json!({"model": "demo", "stream": true})).await;
    let (text, end, _) = read_stream(r).await;
    end.unwrap();
    assert!(!text.contains("\"usage\""), "the usage chunk the gateway asked for is stripped");
    assert_eq!(h.entry("demo", "claude").cost, usd("0.01929"));
}

/// A mock's token counts priced by hand, read back as the nano-USD counter the controller
/// scrapes: nothing here is computed by the pricing code.
#[tokio::test]
async fn a_mock_backends_cost_worked_out_by_hand() {
    let m = MockEndpoint {
        latency: "0ms".into(),
        input_tokens: 1234,
        cached_input_tokens: 0,
        cache_write_tokens: 0,
        output_tokens: 567,
        reasoning_tokens: 0,
        ..MockEndpoint::default()
    };
    let h = start(config(vec![route(
        "priced",
        Strategy::Weighted,
        vec![backend(
            "m",
            "openai",
            ProviderFamily::OpenAI,
            EndpointConfig::Mock(m),
            prices("0.15", "0.075", "0.15", "0.60", "0.60"),
        )],
    )]))
    .await;
    for _ in 0..3 {
        let r = h.post("/v1/chat/completions", json!({"model": "priced", "messages": []})).await;
        assert_eq!(r.status(), 200);
    }
    // One answer: 1234 input tokens × $0.15 / 1M = $0.0001851 = 185_100 nano-USD, plus
    // 567 output tokens × $0.60 / 1M = $0.0003402 = 340_200 nano-USD: 525_300 nano-USD.
    // Three answers: 1_575_900 nano-USD.
    assert_eq!(h.nanousd("priced", "m", "openai").await, 1_575_900.0);
    assert_eq!(h.entry("priced", "m").cost, usd("0.0015759"));
}

// ---------------------------------------------------------------------------------------------
// Hot reload
// ---------------------------------------------------------------------------------------------

/// A ConfigMap-like volume: `config.json -> ..data/config.json`, `..data -> ..<version>`.
struct ConfigVolume {
    dir: TempDir,
    n: usize,
}

impl ConfigVolume {
    fn new(first: &[u8]) -> Self {
        let mut v = ConfigVolume { dir: TempDir::new("cm"), n: 0 };
        v.swap(first);
        std::os::unix::fs::symlink("..data/config.json", v.file()).unwrap();
        v
    }
    fn file(&self) -> PathBuf {
        self.dir.path().join("config.json")
    }
    /// What the kubelet does: write a new timestamped dir, point `..data_tmp` at it, rename
    /// `..data_tmp` over `..data`.
    fn swap(&mut self, content: &[u8]) {
        self.n += 1;
        let version = format!("..2026_01_01_00_00_{:02}.{}", self.n, self.n);
        std::fs::create_dir(self.dir.path().join(&version)).unwrap();
        std::fs::write(self.dir.path().join(&version).join("config.json"), content).unwrap();
        let tmp = self.dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(&version, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.path().join("..data")).unwrap();
    }
}

fn mock_route_config(backend_name: &str) -> GatewayConfig {
    config(vec![route(
        "chat",
        Strategy::Weighted,
        vec![backend(backend_name, "openai", ProviderFamily::OpenAI, mock("1ms"), openai_prices())],
    )])
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < Duration::from_secs(10), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hot_reload_under_load_with_symlink_swaps_and_bad_configs() {
    let v1 = mock_route_config("one");
    let mut volume = ConfigVolume::new(v1.to_json_pretty().as_bytes());
    let h = start_with(None, |_| {}).await;
    let watcher = watch_config_file(h.gw.clone(), volume.file(), Duration::from_millis(200));
    assert_eq!(h.gw.revision(), Some(v1.revision.clone()), "the first load is synchronous");

    // Load: 8 clients in a loop; every request must succeed.
    let stop = Arc::new(AtomicBool::new(false));
    let served: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let failures = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (stop, served, failures) = (stop.clone(), served.clone(), failures.clone());
        let (client, url) = (h.client.clone(), format!("{}/v1/chat/completions", h.base));
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match client.post(&url).json(&json!({"model": "chat", "stream": true})).send().await {
                    Ok(r) if r.status() == 200 => {
                        let b = header(&r, "x-tollgate-backend").unwrap_or_default().to_string();
                        let (_, end, _) = read_stream(r).await;
                        if end.is_err() {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                        *served.lock().unwrap().entry(b).or_default() += 1;
                    }
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let seen = |b: &str| served.lock().unwrap().get(b).copied().unwrap_or(0);
    wait_for("traffic on v1", || seen("one") > 20).await;

    // 1. ConfigMap-style symlink swap to v2.
    let v2 = mock_route_config("two");
    volume.swap(v2.to_json_pretty().as_bytes());
    wait_for("v2 served", || h.gw.revision() == Some(v2.revision.clone())).await;
    wait_for("traffic on v2", || seen("two") > 20).await;

    // 2. A broken document (truncated JSON) is refused: v2 keeps serving.
    let errors_before = h.gw.meter().reload_errors();
    let text = v2.to_json_pretty();
    volume.swap(&text.as_bytes()[..text.len() / 2]);
    wait_for("reload error counted", || h.gw.meter().reload_errors() == errors_before + 1).await;
    // 3. A well-formed document that fails validation (edited by hand: revision mismatch).
    let mut edited = mock_route_config("three");
    edited.routes[0].backends[0].weight = 7;
    volume.swap(edited.to_json_pretty().as_bytes());
    wait_for("second reload error counted", || h.gw.meter().reload_errors() == errors_before + 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.gw.meter().reload_errors(), errors_before + 2, "counted once per bad content, not per poll");
    assert_eq!(h.gw.revision(), Some(v2.revision.clone()));
    let before = seen("two");
    wait_for("v2 still serving", || seen("two") > before + 20).await;

    // 4. A plain file replaced in place (no ConfigMap): atomic rename of a new file.
    let v3 = mock_route_config("three");
    let tmp = volume.dir.path().join("new.json");
    std::fs::write(&tmp, v3.to_json_pretty()).unwrap();
    // rename(2) replaces the symlink in one step: the watcher never sees the file missing.
    std::fs::rename(&tmp, volume.file()).unwrap();
    wait_for("v3 served", || h.gw.revision() == Some(v3.revision.clone())).await;
    wait_for("traffic on v3", || seen("three") > 20).await;

    // 5. The file disappears: the last good config keeps serving.
    std::fs::remove_file(volume.file()).unwrap();
    wait_for("missing file counted", || h.gw.meter().reload_errors() == errors_before + 3).await;
    let before = seen("three");
    wait_for("v3 still serving", || seen("three") > before + 20).await;

    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    watcher.abort();
    assert_eq!(failures.load(Ordering::Relaxed), 0, "no request failed during reloads: {:?}", served.lock().unwrap());
    let text = h.metrics().await;
    assert!(text.contains(&format!("tollgate_config_revision_info{{revision=\"{}\"}} 1", v3.revision)));
    assert!(text.contains(&format!("tollgate_config_reload_errors_total {}", errors_before + 3)));
    // Every request was billed: the mock reports usage even though clients did not ask for it.
    let snap = h.gw.meter().snapshot();
    let total: u64 = ["one", "two", "three"].iter().map(|b| snap.backend("chat", b).count(Outcome::Ok)).sum();
    let billed: Money = ["one", "two", "three"].iter().map(|b| snap.backend("chat", b).cost).sum();
    // Worked out by hand: the default mock reports 1200 prompt tokens of which 400 cached, 100
    // cache writes, 300 output and 150 reasoning; at openai_prices() (USD per 1M: input 2.50,
    // cached 1.25, cache write 3.75, output 10, reasoning 10) one answer costs
    // 800 × 2.50 + 400 × 1.25 + 100 × 3.75 + 300 × 10 + 150 × 10 = 7375 USD per 1M requests,
    // i.e. $0.007375 = 7_375_000 nano-USD.
    let per_request = usd("0.007375");
    assert_eq!(billed, per_request.times(total));
    assert_eq!(total as usize, served.lock().unwrap().values().sum::<usize>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thread_per_core_server_serves_every_connection_and_shuts_down() {
    let up = fake(Behavior::Provider(Shape::OpenAI)).await;
    let cfg = config(vec![route(
        "chat",
        Strategy::Weighted,
        vec![backend("oa", "openai", ProviderFamily::OpenAI, http(&up, Protocol::OpenAI, None), openai_prices())],
    )]);
    let gw = Gateway::new(Some(cfg), GatewayOptions::default()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let token = tokio_util::sync::CancellationToken::new();
    let server =
        tokio::spawn(tollgate::gateway::serve_sharded(listener, gw.api(), ServeLimits::default(), 3, token.clone()));
    // Separate clients: separate connections, handed to the workers in turn.
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let url = format!("{base}/v1/chat/completions");
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            for stream in [false, true] {
                let r = client.post(&url).json(&json!({"model": "chat", "stream": stream})).send().await.unwrap();
                assert_eq!(r.status(), 200);
                let _ = r.bytes().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let e = gw.meter().snapshot().backend("chat", "oa");
    assert_eq!(e.count(Outcome::Ok), 12);
    assert_eq!(e.cost, usd("0.00725").times(12));
    token.cancel();
    tokio::time::timeout(Duration::from_secs(5), server).await.expect("shuts down").unwrap().unwrap();
}

/// The controller writes a large document gzip-compressed (ConfigMap `binaryData` key
/// `config.json.gz`): the mounted volume then holds `config.json.gz` instead of `config.json`
/// after one atomic kubelet swap. The gateway started on `config.json` follows it, serving
/// each form, and back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_switching_to_the_compressed_form_reloads() {
    let v1 = mock_route_config("one");
    let mut volume = ConfigVolume::new(v1.to_json().as_bytes());
    let h = start_with(None, |_| {}).await;
    let watcher = watch_config_file(h.gw.clone(), volume.file(), Duration::from_millis(100));
    assert_eq!(h.gw.revision(), Some(v1.revision.clone()));

    // The new `..data` holds only config.json.gz; the kubelet adds its top-level link.
    let v2 = mock_route_config("two");
    volume.n += 1;
    let version = format!("..2026_01_01_00_01_{:02}.{}", volume.n, volume.n);
    std::fs::create_dir(volume.dir.path().join(&version)).unwrap();
    let gz = tollgate::config::payload::gzip(v2.to_json().as_bytes());
    std::fs::write(volume.dir.path().join(&version).join("config.json.gz"), gz).unwrap();
    let tmp = volume.dir.path().join("..data_tmp");
    std::os::unix::fs::symlink(&version, &tmp).unwrap();
    std::fs::rename(&tmp, volume.dir.path().join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/config.json.gz", volume.dir.path().join("config.json.gz")).unwrap();
    wait_for("the compressed document served", || h.gw.revision() == Some(v2.revision.clone())).await;
    let errors = h.gw.meter().reload_errors();

    // Back to the text form.
    let v3 = mock_route_config("three");
    volume.swap(v3.to_json().as_bytes());
    wait_for("the text document served", || h.gw.revision() == Some(v3.revision.clone())).await;
    assert_eq!(h.gw.meter().reload_errors(), errors, "no reload error on either switch");
    watcher.abort();
}

// ---------------------------------------------------------------------------------------------
// Metrics cardinality
// ---------------------------------------------------------------------------------------------

/// Every series of `/metrics` by name and labels (values left out).
fn series_set(text: &str) -> std::collections::BTreeSet<String> {
    common::prom::samples(text).into_iter().map(|s| format!("{}{:?}", s.name, s.labels)).collect()
}

/// A reload that removes a route drops that route's series from `/metrics` (every family that
/// carries `route`: outcomes, tokens, cost, latency histograms), once no request in flight
/// uses them and their retention (zero here) has passed; the route that stays keeps its counts.
#[tokio::test]
async fn a_route_removed_by_a_reload_drops_its_series() {
    let routes = |names: &[&str]| {
        config(
            names
                .iter()
                .map(|r| {
                    let b = backend(&format!("{r}-b"), "openai", ProviderFamily::OpenAI, mock("0ms"), openai_prices());
                    route(r, Strategy::Weighted, vec![b])
                })
                .collect(),
        )
    };
    let h = start_with(Some(routes(&["chat", "gone"])), |o| o.retired_series_retention = Duration::ZERO).await;
    for model in ["chat", "gone"] {
        for stream in [false, true] {
            let r = h.post("/v1/chat/completions", json!({"model": model, "stream": stream})).await;
            assert_eq!(r.status(), 200);
            let _ = r.bytes().await.unwrap();
        }
    }
    let before = h.metrics().await;
    let all = common::prom::samples(&before);
    let with_route = |route: &str| -> std::collections::BTreeSet<String> {
        all.iter().filter(|s| s.has(&[("route", route)])).map(|s| s.name.clone()).collect()
    };
    let families = with_route("gone");
    for f in [
        "tollgate_requests_total",
        "tollgate_tokens_total",
        "tollgate_cost_nanousd_total",
        "tollgate_cost_usd_total",
        "tollgate_request_duration_seconds_bucket",
        "tollgate_time_to_first_token_seconds_bucket",
        "tollgate_health_latency_seconds_bucket",
    ] {
        assert!(families.contains(f), "no {f} series of route gone before the reload: {families:?}");
    }
    assert_eq!(families, with_route("chat"), "both routes export the same families");

    h.gw.swap_config(routes(&["chat"])).unwrap();
    let after = h.metrics().await;
    common::prom::assert_no_series_with(&after, "tollgate_", &[("route", "gone")]);
    assert_eq!(h.requests("chat", "chat-b", "openai", "ok").await, 2.0, "the route that stays keeps its counts");
    // Nothing else went, and nothing came but the new revision: the gen_ai series of the
    // removed backend's model (no other backend has it) went with it.
    let gone = |s: &String| {
        s.contains("\"route\": \"gone\"")
            || s.contains("\"gen_ai_request_model\": \"gone-b-model\"")
            || s.starts_with("tollgate_config_revision_info")
    };
    assert!(series_set(&before).iter().any(|s| s.contains("\"gen_ai_request_model\": \"gone-b-model\"")));
    let kept: std::collections::BTreeSet<String> = series_set(&before).into_iter().filter(|s| !gone(s)).collect();
    let now: std::collections::BTreeSet<String> = series_set(&after).into_iter().filter(|s| !gone(s)).collect();
    assert_eq!(now, kept, "only the removed route's series went");
    common::prom::assert_no_series_with(&after, "gen_ai_", &[("gen_ai_request_model", "gone-b-model")]);
    assert!(!after.contains("gone-b-model"), "{after}");
}

/// Thousands of requests naming models no route serves, on every client surface, are refused
/// (404) and add no series: nothing in `/metrics` is labelled by what a client sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arbitrary_client_model_names_add_no_series() {
    let h = start(config(vec![route(
        "chat",
        Strategy::Weighted,
        vec![backend("m", "openai", ProviderFamily::OpenAI, mock("0ms"), openai_prices())],
    )]))
    .await;
    // Some traffic first, so every family a request can create exists.
    for stream in [false, true] {
        let r = h.post("/v1/chat/completions", json!({"model": "chat", "stream": stream})).await;
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await.unwrap();
    }
    let before = series_set(&h.metrics().await);
    let paths = ["/v1/chat/completions", "/v1/messages", "/v1/responses", "/v1/embeddings", "/v1/completions"];
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let (client, base) = (h.client.clone(), h.base.clone());
            tokio::spawn(async move {
                for i in 0..250 {
                    let path = paths[i % paths.len()];
                    let model = format!("client-{t}-{i}-{:08x}", rand::random::<u32>());
                    let body = json!({"model": model, "stream": i % 2 == 0, "max_tokens": 5, "input": "x",
                                      "prompt": "x", "messages": [{"role": "user", "content": "hi"}]});
                    let r = client.post(format!("{base}{path}")).json(&body).send().await.unwrap();
                    assert_eq!(r.status(), 404, "{path} {model}");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let after = h.metrics().await;
    assert_eq!(series_set(&after), before, "2,000 unknown models added series");
    assert!(!after.contains("client-"), "a client's model name is in /metrics");
}
