//! Native upstream wire formats through the gateway (issue 11): in-process fake Anthropic
//! Messages, Gemini and OpenAI-compatible upstreams on 127.0.0.1:0 that check each request as
//! the real provider would (path, auth headers, `anthropic-version`, `max_tokens`, role
//! alternation) and answer in its exact wire shape, whole and as SSE. Both client surfaces
//! (`/v1/chat/completions`, `/v1/messages`), cross-format failover, and the exact cost read
//! back from `/metrics` (`tollgate_cost_nanousd_total`).
//!
//! Prices (USD per million tokens) and the hand-worked cost of one answer of each fake:
//! - Anthropic (input 3, cache read 0.30, cache write 3.75, output 15, reasoning 15), usage
//!   `input_tokens` 300, `cache_read_input_tokens` 900, `cache_creation_input_tokens` 100,
//!   `output_tokens` 80: 300×3 + 900×0.30 + 100×3.75 + 80×15 = 900 + 270 + 375 + 1200
//!   = 2745 µUSD = **2_745_000 nUSD**.
//! - Gemini (input 1.25, cached 0.125, write 0, output 10, reasoning 10), `usageMetadata`
//!   prompt 500 (cached 100 inside), candidates 50, thoughts 100: 400×1.25 + 100×0.125 +
//!   50×10 + 100×10 = 500 + 12.5 + 500 + 1000 = 2012.5 µUSD = **2_012_500 nUSD**.
//! - OpenAI (input 2.50, cached 1.25, write 3.75, output 10, reasoning 10), prompt 1000
//!   (cached 200 inside), completion 500 (reasoning 100 inside): 800×2.5 + 200×1.25 + 400×10 +
//!   100×10 = 2000 + 250 + 4000 + 1000 = 7250 µUSD = **7_250_000 nUSD**.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
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
use tollgate::gateway::translate::replace_model;
use tollgate::gateway::{Gateway, GatewayOptions, ServeLimits, serve};
use tollgate::pricing::Prices;

const OPENAI_KEY: &str = "sk-test-openai-0123456789";
const ANTHROPIC_KEY: &str = "sk-ant-test-9876543210";
const GEMINI_KEY: &str = "AIza-test-gemini-55555";

const ANTHROPIC_NANOS: f64 = 2_745_000.0;
const GEMINI_NANOS: f64 = 2_012_500.0;
const OPENAI_NANOS: f64 = 7_250_000.0;

// ---------------------------------------------------------------------------------------------
// Fake upstreams
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Anthropic,
    Gemini,
    OpenAI,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    None,
    /// 529 `overloaded_error` (Anthropic) / 503 `UNAVAILABLE` (Gemini) / 503 (OpenAI).
    Overloaded,
    /// 429 `rate_limit_error` / `RESOURCE_EXHAUSTED`.
    RateLimited,
    /// 400 `invalid_request_error` / `INVALID_ARGUMENT`.
    Invalid,
    /// A stream that stops after `message_start` and one text delta (no `message_stop`).
    Truncated,
    /// A stream that sends a second `message_start` (tiny usage) after its `message_delta`.
    Restart,
}

#[derive(Clone, Debug)]
struct Seen {
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    raw: Bytes,
}

#[derive(Clone)]
struct Fake {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Fake {
    fn hits(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
    fn last(&self) -> Seen {
        self.seen.lock().unwrap().last().cloned().expect("a request reached the fake")
    }
}

fn bad(kind: Kind, why: String) -> Response {
    let body = match kind {
        Kind::Anthropic => json!({"type": "error", "error": {"type": "invalid_request_error", "message": why}}),
        Kind::Gemini => json!({"error": {"code": 400, "message": why, "status": "INVALID_ARGUMENT"}}),
        Kind::OpenAI => json!({"error": {"message": why, "type": "invalid_request_error", "code": null}}),
    };
    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// What a real provider would refuse, as the message of a 400 (`None`: acceptable).
fn check(kind: Kind, s: &Seen, req: &Value) -> Option<String> {
    match kind {
        Kind::Anthropic => {
            if s.path != "/v1/messages" {
                return Some(format!("path {}", s.path));
            }
            if header(&s.headers, "x-api-key") != Some(ANTHROPIC_KEY) {
                return Some("x-api-key missing or wrong".into());
            }
            if header(&s.headers, "anthropic-version") != Some("2023-06-01") {
                return Some("anthropic-version missing".into());
            }
            if s.headers.contains_key("authorization") {
                return Some("unexpected authorization header".into());
            }
            if !req["max_tokens"].is_u64() {
                return Some("max_tokens: Field required".into());
            }
            let msgs = req["messages"].as_array()?;
            for (i, m) in msgs.iter().enumerate() {
                let want = if i % 2 == 0 { "user" } else { "assistant" };
                if m["role"] != want {
                    return Some(format!("messages: roles must alternate, messages[{i}] is {}", m["role"]));
                }
            }
            None
        }
        Kind::Gemini => {
            let ok_path = s.path == "/v1beta/models/gem-model:generateContent"
                || (s.path == "/v1beta/models/gem-model:streamGenerateContent"
                    && s.query.as_deref() == Some("alt=sse"));
            if !ok_path {
                return Some(format!("path {} query {:?}", s.path, s.query));
            }
            if header(&s.headers, "x-goog-api-key") != Some(GEMINI_KEY) {
                return Some("x-goog-api-key missing or wrong".into());
            }
            let contents = req["contents"].as_array()?;
            for (i, c) in contents.iter().enumerate() {
                let want = if i % 2 == 0 { "user" } else { "model" };
                if c["role"] != want {
                    return Some(format!("contents[{i}].role is {}", c["role"]));
                }
            }
            None
        }
        Kind::OpenAI => {
            if s.path != "/v1/chat/completions" {
                return Some(format!("path {}", s.path));
            }
            if header(&s.headers, "authorization") != Some(&format!("Bearer {OPENAI_KEY}")) {
                return Some("bearer token missing".into());
            }
            None
        }
    }
}

fn sse_response(text: String) -> Response {
    ([("content-type", "text/event-stream")], text).into_response()
}

fn ev(name: &str, data: Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

fn anthropic_answer(req: &Value, fault: Fault) -> Response {
    let tools = req["tools"].as_array().is_some_and(|t| !t.is_empty());
    let stream = req["stream"].as_bool().unwrap_or(false);
    let usage = json!({"input_tokens": 300, "cache_read_input_tokens": 900, "cache_creation_input_tokens": 100, "output_tokens": 80});
    let model = req["model"].clone();
    if !stream {
        let mut content = vec![json!({"type": "text", "text": "Hello world"})];
        if tools {
            content
                .push(json!({"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}));
        }
        return axum::Json(json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": if tools { "tool_use" } else { "end_turn" }, "stop_sequence": null, "usage": usage,
        }))
        .into_response();
    }
    let mut s = ev(
        "message_start",
        json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 300, "cache_read_input_tokens": 900, "cache_creation_input_tokens": 100, "output_tokens": 1}}}),
    );
    s += &ev(
        "content_block_start",
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    );
    s += &ev("ping", json!({"type": "ping"}));
    s += &ev(
        "content_block_delta",
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}),
    );
    if fault == Fault::Truncated {
        return sse_response(s);
    }
    s += &ev(
        "content_block_delta",
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " world"}}),
    );
    s += &ev("content_block_stop", json!({"type": "content_block_stop", "index": 0}));
    if tools {
        s += &ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}}),
        );
        s += &ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"city\": "}}),
        );
        s += &ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "\"Paris\"}"}}),
        );
        s += &ev("content_block_stop", json!({"type": "content_block_stop", "index": 1}));
    }
    s += &ev(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": if tools { "tool_use" } else { "end_turn" }, "stop_sequence": null}, "usage": {"output_tokens": 80}}),
    );
    if fault == Fault::Restart {
        s += &ev(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_2", "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 1, "output_tokens": 1}}}),
        );
    }
    s += &ev("message_stop", json!({"type": "message_stop"}));
    sse_response(s)
}

fn gemini_answer(stream: bool) -> Response {
    let usage = json!({"promptTokenCount": 500, "cachedContentTokenCount": 100, "candidatesTokenCount": 50,
        "thoughtsTokenCount": 100, "totalTokenCount": 650});
    if !stream {
        return axum::Json(json!({
            "candidates": [{"content": {"role": "model", "parts": [{"text": "Hello world"}]}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": usage, "modelVersion": "gem-model",
        }))
        .into_response();
    }
    let a = json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Hello"}]}, "index": 0}], "modelVersion": "gem-model"});
    let b = json!({"candidates": [{"content": {"role": "model", "parts": [{"text": " world"}]}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": usage, "modelVersion": "gem-model"});
    sse_response(format!("data: {a}\r\n\r\ndata: {b}\r\n\r\n"))
}

fn openai_answer(req: &Value) -> Response {
    let usage = json!({"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500,
        "prompt_tokens_details": {"cached_tokens": 200}, "completion_tokens_details": {"reasoning_tokens": 100}});
    let model = req["model"].clone();
    if !req["stream"].as_bool().unwrap_or(false) {
        return axum::Json(json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello world"}, "finish_reason": "stop"}],
            "usage": usage}))
        .into_response();
    }
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let mut s = String::new();
    for c in [
        chunk(json!({"role": "assistant", "content": ""}), Value::Null),
        chunk(json!({"content": "Hello"}), Value::Null),
        chunk(json!({"content": " world"}), json!("stop")),
    ] {
        s += &format!("data: {c}\n\n");
    }
    if req["stream_options"]["include_usage"].as_bool() == Some(true) {
        let u = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [], "usage": usage});
        s += &format!("data: {u}\n\n");
    }
    s += "data: [DONE]\n\n";
    sse_response(s)
}

fn fault_answer(kind: Kind, fault: Fault) -> Option<Response> {
    let (status, body) = match (kind, fault) {
        (_, Fault::None | Fault::Truncated | Fault::Restart) => return None,
        (Kind::Anthropic, Fault::Overloaded) => {
            (529, json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))
        }
        (Kind::Anthropic, Fault::RateLimited) => {
            (429, json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}))
        }
        (Kind::Anthropic, Fault::Invalid) => (
            400,
            json!({"type": "error", "error": {"type": "invalid_request_error", "message": "messages.0: bad block"}}),
        ),
        (Kind::Gemini, Fault::Overloaded) => {
            (503, json!({"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}}))
        }
        (Kind::Gemini, Fault::RateLimited) => {
            (429, json!({"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED"}}))
        }
        (Kind::Gemini, Fault::Invalid) => {
            (400, json!({"error": {"code": 400, "message": "bad", "status": "INVALID_ARGUMENT"}}))
        }
        (Kind::OpenAI, _) => (503, json!({"error": {"message": "down", "type": "server_error"}})),
    };
    Some((StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response())
}

async fn fake(kind: Kind, fault: Fault) -> Fake {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let seen2 = seen.clone();
    let app = Router::new().fallback(move |req: Request| {
        let seen = seen2.clone();
        async move {
            let (parts, body) = req.into_parts();
            let raw = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
            let req: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
            let s = Seen {
                path: parts.uri.path().to_string(),
                query: parts.uri.query().map(str::to_string),
                headers: parts.headers.clone(),
                raw,
            };
            seen.lock().unwrap().push(s.clone());
            if let Some(why) = check(kind, &s, &req) {
                return bad(kind, why);
            }
            if let Some(r) = fault_answer(kind, fault) {
                return r;
            }
            match kind {
                Kind::Anthropic => anthropic_answer(&req, fault),
                Kind::Gemini => gemini_answer(s.path.ends_with(":streamGenerateContent")),
                Kind::OpenAI => openai_answer(&req),
            }
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
// Config and harness
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

/// A backend of `kind` on `fake` (model `<name>-model`, Gemini's `gem-model`), at `tier`.
fn backend(name: &str, kind: Kind, fake: &Fake, tier: u32) -> BackendConfig {
    let (provider, family, api, base, key, pricing) = match kind {
        Kind::Anthropic => (
            "anthropic",
            ProviderFamily::Anthropic,
            WireApi::AnthropicMessages,
            format!("http://{}/v1", fake.addr),
            "anthropic_api-key",
            prices("3", "0.30", "3.75", "15", "15"),
        ),
        Kind::Gemini => (
            "gemini",
            ProviderFamily::Gemini,
            WireApi::Gemini,
            format!("http://{}", fake.addr),
            "gemini_api-key",
            prices("1.25", "0.125", "0", "10", "10"),
        ),
        Kind::OpenAI => (
            "openai",
            ProviderFamily::OpenAI,
            WireApi::OpenAI,
            format!("http://{}/v1", fake.addr),
            "openai_api-key",
            prices("2.50", "1.25", "3.75", "10", "10"),
        ),
    };
    BackendConfig {
        name: name.into(),
        provider: provider.into(),
        family,
        model: if kind == Kind::Gemini { "gem-model".into() } else { format!("{name}-model") },
        api,
        tier,
        weight: 1,
        state: BackendState::Active,
        serving: true,
        endpoint: EndpointConfig::Http { base_url: base, protocol: Protocol::OpenAI, api_key_file: Some(key.into()) },
        pricing,
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

struct Harness {
    base: String,
    metrics_url: String,
    client: reqwest::Client,
    creds: PathBuf,
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.creds);
    }
}

async fn start(cfg: GatewayConfig) -> Harness {
    static N: AtomicUsize = AtomicUsize::new(0);
    let creds = std::env::temp_dir().join(format!(
        "tollgate-native-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&creds).unwrap();
    std::fs::write(creds.join("openai_api-key"), OPENAI_KEY).unwrap();
    std::fs::write(creds.join("anthropic_api-key"), ANTHROPIC_KEY).unwrap();
    std::fs::write(creds.join("gemini_api-key"), format!("{GEMINI_KEY}\n")).unwrap();
    let opts = GatewayOptions {
        credentials_dir: creds.clone(),
        first_byte_timeout: Duration::from_secs(30),
        idle_stream_timeout: Duration::from_secs(30),
        total_timeout: Duration::from_secs(60),
        ..GatewayOptions::default()
    };
    let gw = Gateway::new(Some(cfg), opts).unwrap();
    let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let met = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", api.local_addr().unwrap());
    let metrics_url = format!("http://{}/metrics", met.local_addr().unwrap());
    tokio::spawn(serve(api, gw.api(), ServeLimits::default(), std::future::pending()));
    tokio::spawn(serve(met, gw.metrics_router(), ServeLimits::default(), std::future::pending()));
    Harness { base, metrics_url, client: reqwest::Client::new(), creds }
}

impl Harness {
    async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client.post(format!("{}{path}", self.base)).json(body).send().await.unwrap()
    }

    /// A series of `/metrics` whose labels include all of `labels` (0 when absent).
    async fn series(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self.client.get(&self.metrics_url).send().await.unwrap().text().await.unwrap();
        // A zero read from a metric that is not there at all would prove nothing.
        common::prom::assert_declared(&text, name);
        common::proc::series_sum(&text, name, labels)
    }

    async fn nanousd(&self, backend: &str) -> f64 {
        self.series("tollgate_cost_nanousd_total", &[("backend", backend)]).await
    }

    async fn outcome(&self, backend: &str, outcome: &str) -> f64 {
        self.series("tollgate_requests_total", &[("backend", backend), ("outcome", outcome)]).await
    }

    /// Waits until the stream of the last request was metered (billing happens as the body ends).
    async fn wait_cost(&self, backend: &str, want: f64) -> f64 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.nanousd(backend).await;
            if got == want || tokio::time::Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn chat_request(stream: bool) -> Value {
    // A system message and two consecutive user turns: Anthropic needs them moved to `system`
    // and merged; Gemini to `systemInstruction` and one `user` content.
    let mut v = json!({
        "model": "chat",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "user", "content": [{"type": "text", "text": "there"}]},
        ],
    });
    if stream {
        v["stream"] = json!(true);
        v["stream_options"] = json!({"include_usage": true});
    }
    v
}

fn messages_request(stream: bool) -> Value {
    json!({
        "model": "chat",
        "max_tokens": 256,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "Hi there"}],
        "stream": stream,
    })
}

async fn body_text(r: reqwest::Response) -> String {
    let mut out = Vec::new();
    let mut s = r.bytes_stream();
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c.expect("stream chunk"));
    }
    String::from_utf8(out).unwrap()
}

fn data_events(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

fn event_names(text: &str) -> Vec<String> {
    text.split("\n\n").filter_map(|e| e.lines().find_map(|l| l.strip_prefix("event: "))).map(str::to_string).collect()
}

fn chunk_text(events: &[Value]) -> String {
    events.iter().filter_map(|e| e["choices"][0]["delta"]["content"].as_str()).collect()
}

fn messages_text(events: &[Value]) -> String {
    events.iter().filter(|e| e["type"] == "content_block_delta").filter_map(|e| e["delta"]["text"].as_str()).collect()
}

// ---------------------------------------------------------------------------------------------
// /v1/chat/completions → native upstreams
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn chat_to_anthropic_whole_is_translated_and_billed_exactly() {
    let a = fake(Kind::Anthropic, Fault::None).await;
    let h = start(config(vec![backend("claude", Kind::Anthropic, &a, 0)])).await;
    let r = h.post("/v1/chat/completions", &chat_request(false)).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello world");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // OpenAI nesting: cache reads and writes inside prompt_tokens (300 + 900 + 100).
    assert_eq!(v["usage"]["prompt_tokens"], 1300);
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 900);
    assert_eq!(v["usage"]["completion_tokens"], 80);
    let up: Value = serde_json::from_slice(&a.last().raw).unwrap();
    assert_eq!(up["model"], "claude-model");
    assert_eq!(up["max_tokens"], 4096, "the documented default max_tokens");
    assert_eq!(up["system"][0]["text"], "Be brief.");
    assert_eq!(up["messages"].as_array().unwrap().len(), 1, "consecutive user turns merged: {up}");
    assert_eq!(h.nanousd("claude").await, ANTHROPIC_NANOS);
    assert_eq!(h.outcome("claude", "ok").await, 1.0);
}

#[tokio::test]
async fn chat_to_anthropic_stream_is_translated_and_billed_exactly() {
    let a = fake(Kind::Anthropic, Fault::None).await;
    let h = start(config(vec![backend("claude", Kind::Anthropic, &a, 0)])).await;
    let mut req = chat_request(true);
    req["max_tokens"] = json!(100);
    let r = h.post("/v1/chat/completions", &req).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let text = body_text(r).await;
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let events = data_events(&text);
    assert!(events.iter().all(|e| e["object"] == "chat.completion.chunk"), "{text}");
    assert_eq!(chunk_text(&events), "Hello world");
    assert!(events.iter().any(|e| e["choices"][0]["finish_reason"] == "stop"), "{text}");
    let usage = events.iter().find(|e| e["usage"].is_object()).expect("usage chunk (include_usage)");
    assert_eq!(usage["usage"]["prompt_tokens"], 1300);
    assert_eq!(usage["usage"]["completion_tokens"], 80);
    let up: Value = serde_json::from_slice(&a.last().raw).unwrap();
    assert_eq!(up["max_tokens"], 100);
    assert_eq!(up["stream"], true);
    assert_eq!(h.wait_cost("claude", ANTHROPIC_NANOS).await, ANTHROPIC_NANOS);
}

#[tokio::test]
async fn chat_tools_round_trip_through_anthropic_whole_and_streamed() {
    let a = fake(Kind::Anthropic, Fault::None).await;
    let h = start(config(vec![backend("claude", Kind::Anthropic, &a, 0)])).await;
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let mut req = chat_request(false);
    req["tools"] = tools.clone();
    let v: Value = h.post("/v1/chat/completions", &req).await.json().await.unwrap();
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(
        serde_json::from_str::<Value>(call["function"]["arguments"].as_str().unwrap()).unwrap(),
        json!({"city": "Paris"})
    );
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    let up: Value = serde_json::from_slice(&a.last().raw).unwrap();
    assert_eq!(up["tools"][0]["name"], "get_weather");
    assert!(up["tools"][0]["input_schema"].is_object());

    let mut req = chat_request(true);
    req["tools"] = tools;
    let text = body_text(h.post("/v1/chat/completions", &req).await).await;
    let events = data_events(&text);
    let args: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(serde_json::from_str::<Value>(&args).unwrap(), json!({"city": "Paris"}), "{text}");
    assert!(events.iter().any(|e| e["choices"][0]["finish_reason"] == "tool_calls"), "{text}");
    assert_eq!(h.wait_cost("claude", 2.0 * ANTHROPIC_NANOS).await, 2.0 * ANTHROPIC_NANOS);
}

#[tokio::test]
async fn chat_to_gemini_whole_and_streamed_are_billed_exactly() {
    let g = fake(Kind::Gemini, Fault::None).await;
    let h = start(config(vec![backend("gem", Kind::Gemini, &g, 0)])).await;
    let v: Value = h.post("/v1/chat/completions", &chat_request(false)).await.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "Hello world");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], 500);
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 100);
    assert_eq!(v["usage"]["completion_tokens"], 150, "candidates 50 + thoughts 100");
    let up: Value = serde_json::from_slice(&g.last().raw).unwrap();
    assert_eq!(up["systemInstruction"]["parts"][0]["text"], "Be brief.");
    assert_eq!(up["contents"].as_array().unwrap().len(), 1, "{up}");
    assert_eq!(h.nanousd("gem").await, GEMINI_NANOS);

    let text = body_text(h.post("/v1/chat/completions", &chat_request(true)).await).await;
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let events = data_events(&text);
    assert_eq!(chunk_text(&events), "Hello world");
    assert!(events.iter().any(|e| e["usage"]["prompt_tokens"] == 500), "{text}");
    assert_eq!(g.last().path, "/v1beta/models/gem-model:streamGenerateContent");
    assert_eq!(h.wait_cost("gem", 2.0 * GEMINI_NANOS).await, 2.0 * GEMINI_NANOS);
}

#[tokio::test]
async fn anthropic_invalid_request_is_a_400_without_failover() {
    let a = fake(Kind::Anthropic, Fault::Invalid).await;
    let o = fake(Kind::OpenAI, Fault::None).await;
    let h = start(config(vec![backend("claude", Kind::Anthropic, &a, 0), backend("gpt", Kind::OpenAI, &o, 1)])).await;
    let r = h.post("/v1/chat/completions", &chat_request(false)).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("bad block"), "{v}");
    assert_eq!(o.hits(), 0, "a client error does not fail over");
    assert_eq!(h.outcome("claude", "client_error").await, 1.0);
    assert_eq!(h.nanousd("claude").await, 0.0);
}

#[tokio::test]
async fn rate_limits_fail_over_and_count_as_rate_limited() {
    let a = fake(Kind::Anthropic, Fault::RateLimited).await;
    let g = fake(Kind::Gemini, Fault::RateLimited).await;
    let o = fake(Kind::OpenAI, Fault::None).await;
    let h = start(config(vec![
        backend("claude", Kind::Anthropic, &a, 0),
        backend("gem", Kind::Gemini, &g, 1),
        backend("gpt", Kind::OpenAI, &o, 2),
    ]))
    .await;
    let r = h.post("/v1/chat/completions", &chat_request(false)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-tollgate-backend"], "gpt");
    assert_eq!(r.headers()["x-tollgate-attempts"], "3");
    assert_eq!(h.outcome("claude", "rate_limited").await, 1.0);
    assert_eq!(h.outcome("gem", "rate_limited").await, 1.0);
    assert_eq!(h.nanousd("gpt").await, OPENAI_NANOS);
}

#[tokio::test]
async fn chat_fails_over_from_anthropic_529_to_openai_whole_and_streamed() {
    let a = fake(Kind::Anthropic, Fault::Overloaded).await;
    let o = fake(Kind::OpenAI, Fault::None).await;
    let h = start(config(vec![backend("claude", Kind::Anthropic, &a, 0), backend("gpt", Kind::OpenAI, &o, 1)])).await;
    let r = h.post("/v1/chat/completions", &chat_request(false)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-tollgate-backend"], "gpt");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "Hello world");
    let r = h.post("/v1/chat/completions", &chat_request(true)).await;
    assert_eq!(r.headers()["x-tollgate-backend"], "gpt");
    let text = body_text(r).await;
    assert_eq!(chunk_text(&data_events(&text)), "Hello world");
    assert_eq!(a.hits(), 2);
    assert_eq!(h.outcome("claude", "upstream_error").await, 2.0);
    assert_eq!(h.wait_cost("gpt", 2.0 * OPENAI_NANOS).await, 2.0 * OPENAI_NANOS);
    assert_eq!(h.nanousd("claude").await, 0.0);
}

#[tokio::test]
async fn a_truncated_anthropic_stream_bills_the_input_known_and_tells_the_client() {
    let a = fake(Kind::Anthropic, Fault::Truncated).await;
    let h = start(config(vec![backend("claude", Kind::Anthropic, &a, 0)])).await;
    let text = body_text(h.post("/v1/chat/completions", &chat_request(true)).await).await;
    assert!(!text.contains("[DONE]"), "{text}");
    let events = data_events(&text);
    assert!(events.last().unwrap()["error"].is_object(), "an error chunk ends the stream: {text}");
    // message_start's counts: 300×3 + 900×0.30 + 100×3.75 + 1×15 = 900 + 270 + 375 + 15 = 1560 µUSD.
    assert_eq!(h.wait_cost("claude", 1_560_000.0).await, 1_560_000.0);
    assert_eq!(h.outcome("claude", "upstream_error").await, 1.0);
}

// ---------------------------------------------------------------------------------------------
// /v1/messages
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn messages_pass_through_to_anthropic_byte_for_byte_except_model() {
    let a = fake(Kind::Anthropic, Fault::None).await;
    let h = start(config(vec![backend("claude", Kind::Anthropic, &a, 0)])).await;
    // Odd spacing and key order: only `model` may change.
    let raw = br#"{ "max_tokens":256,"model" : "chat", "messages":[{"role":"user","content":[{"type":"text","text":"Hi","cache_control":{"type":"ephemeral"}}]}] }"#;
    let r = h
        .client
        .post(format!("{}/v1/messages", h.base))
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01")
        .body(raw.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(v["content"][0]["text"], "Hello world");
    assert_eq!(v["usage"]["cache_read_input_tokens"], 900);
    assert_eq!(a.last().raw.as_ref(), replace_model(raw, "claude-model").unwrap().as_slice());
    assert_eq!(h.nanousd("claude").await, ANTHROPIC_NANOS);

    let text = body_text(h.post("/v1/messages", &messages_request(true)).await).await;
    let names = event_names(&text);
    assert_eq!(names.first().map(String::as_str), Some("message_start"));
    assert_eq!(names.last().map(String::as_str), Some("message_stop"));
    assert!(names.iter().any(|n| n == "ping"), "passed through unchanged: {text}");
    assert_eq!(messages_text(&data_events(&text)), "Hello world");
    assert_eq!(h.wait_cost("claude", 2.0 * ANTHROPIC_NANOS).await, 2.0 * ANTHROPIC_NANOS);
}

#[tokio::test]
async fn messages_to_openai_backend_come_back_in_messages_shape() {
    let o = fake(Kind::OpenAI, Fault::None).await;
    let h = start(config(vec![backend("gpt", Kind::OpenAI, &o, 0)])).await;
    let r = h.post("/v1/messages", &messages_request(false)).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["model"], "chat");
    assert_eq!(v["content"][0], json!({"type": "text", "text": "Hello world"}));
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["usage"]["input_tokens"], 800);
    assert_eq!(v["usage"]["cache_read_input_tokens"], 200);
    let up: Value = serde_json::from_slice(&o.last().raw).unwrap();
    assert_eq!(up["model"], "gpt-model");
    assert_eq!(up["messages"][0], json!({"role": "system", "content": "Be brief."}));
    assert_eq!(h.nanousd("gpt").await, OPENAI_NANOS);

    let text = body_text(h.post("/v1/messages", &messages_request(true)).await).await;
    let names = event_names(&text);
    assert_eq!(names.first().map(String::as_str), Some("message_start"), "{text}");
    assert_eq!(names.last().map(String::as_str), Some("message_stop"), "{text}");
    let events = data_events(&text);
    assert_eq!(messages_text(&events), "Hello world");
    let delta = events.iter().find(|e| e["type"] == "message_delta").expect("message_delta");
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    let up: Value = serde_json::from_slice(&o.last().raw).unwrap();
    assert_eq!(up["stream_options"]["include_usage"], true, "the gateway asks for stream usage");
    assert_eq!(h.wait_cost("gpt", 2.0 * OPENAI_NANOS).await, 2.0 * OPENAI_NANOS);
}

#[tokio::test]
async fn messages_to_gemini_backend_whole_and_streamed() {
    let g = fake(Kind::Gemini, Fault::None).await;
    let h = start(config(vec![backend("gem", Kind::Gemini, &g, 0)])).await;
    let v: Value = h.post("/v1/messages", &messages_request(false)).await.json().await.unwrap();
    assert_eq!(v["type"], "message", "{v}");
    assert_eq!(v["content"][0]["text"], "Hello world");
    assert_eq!(v["usage"]["input_tokens"], 400);
    assert_eq!(v["usage"]["cache_read_input_tokens"], 100);
    assert_eq!(v["usage"]["output_tokens"], 150, "thinking inside output_tokens");
    assert_eq!(h.nanousd("gem").await, GEMINI_NANOS);
    let text = body_text(h.post("/v1/messages", &messages_request(true)).await).await;
    assert_eq!(messages_text(&data_events(&text)), "Hello world", "{text}");
    assert_eq!(event_names(&text).last().map(String::as_str), Some("message_stop"));
    assert_eq!(h.wait_cost("gem", 2.0 * GEMINI_NANOS).await, 2.0 * GEMINI_NANOS);
}

#[tokio::test]
async fn messages_fail_over_from_anthropic_529_to_openai_whole_and_streamed() {
    let a = fake(Kind::Anthropic, Fault::Overloaded).await;
    let o = fake(Kind::OpenAI, Fault::None).await;
    let h = start(config(vec![backend("claude", Kind::Anthropic, &a, 0), backend("gpt", Kind::OpenAI, &o, 1)])).await;
    let r = h.post("/v1/messages", &messages_request(false)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-tollgate-backend"], "gpt");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(v["content"][0]["text"], "Hello world");
    let r = h.post("/v1/messages", &messages_request(true)).await;
    assert_eq!(r.headers()["x-tollgate-backend"], "gpt");
    let text = body_text(r).await;
    assert_eq!(messages_text(&data_events(&text)), "Hello world", "{text}");
    assert_eq!(event_names(&text).last().map(String::as_str), Some("message_stop"));
    assert_eq!(a.hits(), 2);
    assert_eq!(h.outcome("claude", "upstream_error").await, 2.0);
    assert_eq!(h.wait_cost("gpt", 2.0 * OPENAI_NANOS).await, 2.0 * OPENAI_NANOS);
}

#[tokio::test]
async fn messages_errors_are_anthropic_shaped() {
    let a = fake(Kind::Anthropic, Fault::Overloaded).await;
    let h = start(config(vec![backend("claude", Kind::Anthropic, &a, 0)])).await;
    let mut req = messages_request(false);
    req["model"] = json!("nope");
    let r = h.post("/v1/messages", &req).await;
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "not_found_error");
    let r = h.post("/v1/messages", &messages_request(false)).await;
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "overloaded_error", "{v}");
    let r = h.post("/v1/messages", &json!({"max_tokens": 5, "messages": []})).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
}

// ---------------------------------------------------------------------------------------------
// Mock backends answer in their native format
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn native_mocks_go_through_the_same_translation() {
    let mock = MockEndpoint {
        latency: "0ms".into(),
        input_tokens: 1000,
        cached_input_tokens: 400,
        cache_write_tokens: 50,
        output_tokens: 200,
        reasoning_tokens: 0,
        ..MockEndpoint::default()
    };
    let mut claude = backend("claude", Kind::Anthropic, &fake(Kind::OpenAI, Fault::None).await, 0);
    claude.endpoint = EndpointConfig::Mock(mock.clone());
    let mut gem = backend("gem", Kind::Gemini, &fake(Kind::OpenAI, Fault::None).await, 0);
    gem.endpoint = EndpointConfig::Mock(mock);
    let mut cfg = config(vec![claude]);
    let mut route2 = cfg.routes[0].clone();
    route2.name = "gchat".into();
    route2.model = "gchat".into();
    route2.backends = vec![gem];
    cfg.routes.push(route2);
    cfg.revision = cfg.compute_revision();
    let h = start(cfg).await;

    // Anthropic mock: input 600 (1000 − 400 cached) ×3 + 400×0.30 + 50×3.75 + 200×15
    // = 1800 + 120 + 187.5 + 3000 = 5107.5 µUSD = 5_107_500 nUSD per answer.
    let v: Value = h.post("/v1/chat/completions", &chat_request(false)).await.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"].as_str().map(|s| s.contains("mock")), Some(true), "{v}");
    assert_eq!(v["usage"]["prompt_tokens"], 1050);
    let text = body_text(h.post("/v1/chat/completions", &chat_request(true)).await).await;
    assert!(chunk_text(&data_events(&text)).contains("mock"), "{text}");
    assert_eq!(h.wait_cost("claude", 2.0 * 5_107_500.0).await, 2.0 * 5_107_500.0);

    // Gemini mock (no cache-write count): 600×1.25 + 400×0.125 + 200×10 = 750 + 50 + 2000
    // = 2800 µUSD per answer.
    let mut req = messages_request(false);
    req["model"] = json!("gchat");
    let v: Value = h.post("/v1/messages", &req).await.json().await.unwrap();
    assert_eq!(v["type"], "message", "{v}");
    req["stream"] = json!(true);
    let text = body_text(h.post("/v1/messages", &req).await).await;
    assert!(messages_text(&data_events(&text)).contains("mock"), "{text}");
    assert_eq!(h.wait_cost("gem", 2.0 * 2_800_000.0).await, 2.0 * 2_800_000.0);
}

// ---------------------------------------------------------------------------------------------
// The config document carries `api` deterministically
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_config_document_omits_the_default_api_and_carries_native_ones() {
    let f = fake(Kind::OpenAI, Fault::None).await;
    let openai_only = config(vec![backend("gpt", Kind::OpenAI, &f, 0)]);
    let text = openai_only.to_json_pretty();
    assert!(!text.contains("\"api\""), "documents without native backends are unchanged: {text}");
    let native = config(vec![backend("claude", Kind::Anthropic, &f, 0), backend("gem", Kind::Gemini, &f, 1)]);
    let text = native.to_json_pretty();
    assert!(text.contains("\"api\": \"AnthropicMessages\"") && text.contains("\"api\": \"Gemini\""), "{text}");
    let back = GatewayConfig::from_json(text.as_bytes()).unwrap();
    assert_eq!(back, native);
    assert_eq!(back.compute_revision(), native.revision, "deterministic revision");
    assert_eq!(
        tollgate::config::builtin_base_url_for("gemini", WireApi::Gemini),
        Some("https://generativelanguage.googleapis.com")
    );
    assert_eq!(
        tollgate::config::builtin_base_url_for("gemini", WireApi::OpenAI),
        tollgate::config::builtin_base_url("gemini")
    );
    assert_eq!(
        tollgate::gateway::anthropic_url("https://api.anthropic.com/v1"),
        "https://api.anthropic.com/v1/messages"
    );
    assert_eq!(tollgate::gateway::anthropic_url("http://h:1/"), "http://h:1/v1/messages");
}

#[tokio::test]
async fn a_second_message_start_ends_the_stream_in_the_clients_shape_and_bills_the_usage_seen() {
    for path in ["/v1/chat/completions", "/v1/messages"] {
        let a = fake(Kind::Anthropic, Fault::Restart).await;
        let h = start(config(vec![backend("claude", Kind::Anthropic, &a, 0)])).await;
        let req = if path == "/v1/messages" { messages_request(true) } else { chat_request(true) };
        let text = body_text(h.post(path, &req).await).await;
        if path == "/v1/messages" {
            // The Anthropic stream passes through until the protocol error, then an error event.
            assert_eq!(event_names(&text).last().map(String::as_str), Some("error"), "{text}");
            let last = data_events(&text).pop().unwrap();
            assert_eq!(
                (last["type"].as_str(), last["error"]["type"].as_str()),
                (Some("error"), Some("api_error")),
                "{text}"
            );
            assert!(!text.contains("message_stop"), "{text}");
        } else {
            assert!(!text.contains("[DONE]"), "{text}");
            let events = data_events(&text);
            let last = events.last().unwrap();
            assert_eq!(last["error"]["code"], "upstream_stream_error", "{text}");
            assert!(last["error"]["message"].as_str().unwrap().contains("message_start"), "{text}");
            assert!(events.iter().all(|e| e.get("usage").is_none_or(Value::is_null)), "no usage chunk: {text}");
        }
        // Billed the first message_start's input and the message_delta's 80 output tokens (the
        // second message_start's 1 + 1 would be 18_000).
        assert_eq!(h.wait_cost("claude", ANTHROPIC_NANOS).await, ANTHROPIC_NANOS, "{path}");
        assert_eq!(h.outcome("claude", "upstream_error").await, 1.0, "{path}");
    }
}
