//! One attempt pipeline for every surface (issue 11): the features of the OpenAI pass-through
//! hold for native upstreams (Anthropic Messages, Gemini) on both client surfaces
//! (`/v1/chat/completions`, `/v1/messages`), in-process on loopback with fake upstreams:
//! - a 429 with `Retry-After` pauses the backend (the next request skips it; with no other
//!   backend the client gets 429 + `Retry-After` in its own error shape);
//! - an upstream that stalls mid-body gets a 504 in the client's shape, metered as an estimate,
//!   and its Hard budget reservation is released;
//! - a whole answer over the memory budget is a 503 in the client's shape, metered as an
//!   estimate, and the budget is free again for the next answer;
//! - native backends are skipped for `/v1/completions`, `/v1/embeddings`, `/v1/responses`
//!   (400 `endpoint_not_supported` when no backend can serve);
//! - `/v1/messages/count_tokens` passes through to an Anthropic backend (not metered) or
//!   answers an estimate.

mod common;

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::Response;
use common::upstream::{Fake, Seen, reply};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tollgate::config::allowances::{Allowances, HardBudgetGrants};
use tollgate::config::{CONFIG_VERSION, GatewayConfig};
use tollgate::gateway::{Gateway, GatewayOptions, ServeLimits, serve};
use tollgate::policy::money::Money;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Native {
    Anthropic,
    Gemini,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Client {
    Chat,
    Messages,
}

const COMBOS: [(Client, Native); 4] = [
    (Client::Chat, Native::Anthropic),
    (Client::Chat, Native::Gemini),
    (Client::Messages, Native::Anthropic),
    (Client::Messages, Native::Gemini),
];

fn backend(name: &str, api: &str, base: &str, tier: u32) -> Value {
    let (provider, family) = match api {
        "AnthropicMessages" => ("anthropic", "Anthropic"),
        "Gemini" => ("gemini", "Gemini"),
        _ => ("openai", "OpenAI"),
    };
    let mut b = json!({
        "name": name, "provider": provider, "family": family,
        "model": format!("{name}-model"), "tier": tier, "weight": 1, "state": "Active", "serving": true,
        "endpoint": {"http": {"baseUrl": base, "protocol": "OpenAI"}},
        "pricing": {"input": "1.00", "cachedInput": "1.00", "cacheWrite": "1.00", "output": "1.00", "reasoning": "1.00"}
    });
    if api != "OpenAI" {
        b["api"] = json!(api);
    }
    b
}

fn native_backend(name: &str, kind: Native, fake: &Fake, tier: u32) -> Value {
    match kind {
        Native::Anthropic => backend(name, "AnthropicMessages", &fake.base_url(), tier),
        Native::Gemini => backend(name, "Gemini", &format!("http://{}", fake.addr), tier),
    }
}

fn config(backends: Vec<Value>) -> GatewayConfig {
    let route = json!({"name": "chat", "model": "chat", "strategy": "Priority", "mode": "Enforce",
        "state": "Serving", "backends": backends});
    let mut c: GatewayConfig = serde_json::from_value(
        json!({"version": CONFIG_VERSION, "revision": "", "namespace": "team-a", "routes": [route]}),
    )
    .unwrap();
    c.revision = c.compute_revision();
    c
}

async fn start(cfg: GatewayConfig, opts: GatewayOptions) -> (Gateway, String) {
    let gw = Gateway::new(Some(cfg), opts).unwrap();
    let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", api.local_addr().unwrap());
    tokio::spawn(serve(api, gw.api(), ServeLimits::default(), std::future::pending()));
    (gw, base)
}

fn opts() -> GatewayOptions {
    GatewayOptions {
        first_byte_timeout: Duration::from_secs(20),
        total_timeout: Duration::from_secs(30),
        ..GatewayOptions::default()
    }
}

fn path(c: Client) -> &'static str {
    match c {
        Client::Chat => "/v1/chat/completions",
        Client::Messages => "/v1/messages",
    }
}

fn request(c: Client) -> Value {
    match c {
        Client::Chat => json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}),
        Client::Messages => {
            json!({"model": "chat", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]})
        }
    }
}

async fn post(client: &reqwest::Client, url: String, body: &Value) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = client.post(url).json(body).send().await.unwrap();
    let code = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    (code, headers, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// Checks `v` is an error in `c`'s shape: OpenAI's `error.code`, or Anthropic's `error.type`.
fn assert_shape(c: Client, v: &Value, openai_code: &str, anthropic_type: &str) {
    match c {
        Client::Chat => {
            assert_eq!(v["error"]["code"], openai_code, "OpenAI-shaped error: {v}");
            assert!(v.get("type").is_none(), "{v}");
        }
        Client::Messages => {
            assert_eq!(v["type"], "error", "Anthropic-shaped error: {v}");
            assert_eq!(v["error"]["type"], anthropic_type, "{v}");
            assert!(v["error"]["message"].is_string(), "{v}");
        }
    }
}

/// A whole answer in `kind`'s wire format: `text`, 10 input and 5 output tokens.
fn native_answer(kind: Native, text: &str) -> Response {
    let body = match kind {
        Native::Anthropic => json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "m",
            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": 10, "output_tokens": 5}}),
        Native::Gemini => {
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 5, "totalTokenCount": 15}})
        }
    };
    reply(200, body.to_string(), &[])
}

fn openai_answer(s: &Seen, _: usize) -> Response {
    let body = if s.path.ends_with("/embeddings") {
        json!({"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.1]}], "model": "m",
               "usage": {"prompt_tokens": 3, "total_tokens": 3}})
    } else if s.path.ends_with("/responses") {
        json!({"id": "resp_1", "object": "response", "status": "completed", "output": [],
               "usage": {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}})
    } else {
        json!({"id": "c1", "object": "chat.completion", "created": 0, "model": "m",
               "choices": [{"index": 0, "message": {"role": "assistant", "content": "from openai"}, "finish_reason": "stop"}],
               "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})
    };
    reply(200, body.to_string(), &[])
}

fn rate_limited(kind: Native) -> Response {
    let body = match kind {
        Native::Anthropic => json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}),
        Native::Gemini => json!({"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED"}}),
    };
    reply(429, body.to_string(), &[("retry-after", "120")])
}

/// One metric line's value (0 when absent): `name{...}` containing every label of `labels`.
fn metric(gw: &Gateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = gw.encode_metrics();
    // A zero read from a metric that is not there at all would prove nothing.
    common::prom::assert_declared(&text, name);
    common::proc::series_sum(&text, name, labels)
}

#[tokio::test]
async fn native_paths_honour_retry_after() {
    let client = reqwest::Client::new();
    for (c, kind) in COMBOS {
        // A paused native backend is skipped by the next request; the OpenAI tier serves.
        let native = Fake::start(move |_, _| rate_limited(kind)).await;
        let openai = Fake::start(openai_answer).await;
        let cfg =
            config(vec![native_backend("native", kind, &native, 0), backend("up", "OpenAI", &openai.base_url(), 1)]);
        let (_gw, url) = start(cfg, opts()).await;
        let (code, h, v) = post(&client, format!("{url}{}", path(c)), &request(c)).await;
        assert_eq!(code, 200, "{c:?}/{kind:?}: {v}");
        assert_eq!(h["x-tollgate-backend"], "up");
        assert_eq!(h["x-tollgate-attempts"], "2");
        let (code, h, v) = post(&client, format!("{url}{}", path(c)), &request(c)).await;
        assert_eq!(code, 200, "{c:?}/{kind:?}: {v}");
        assert_eq!(h["x-tollgate-backend"], "up");
        assert!(h.get("x-tollgate-attempts").is_none(), "the paused backend was not tried: {h:?}");
        assert_eq!(native.hits(), 1, "{c:?}/{kind:?}: paused after its Retry-After");
        assert_eq!(openai.hits(), 2);

        // Alone on its route: 429 with Retry-After, then 429 without calling it again.
        let native = Fake::start(move |_, _| rate_limited(kind)).await;
        let (_gw, url) = start(config(vec![native_backend("native", kind, &native, 0)]), opts()).await;
        let (code, h, v) = post(&client, format!("{url}{}", path(c)), &request(c)).await;
        assert_eq!(code, 429, "{c:?}/{kind:?}: {v}");
        let secs: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=120).contains(&secs), "{secs}");
        assert_shape(c, &v, "rate_limit_exceeded", "rate_limit_error");
        let (code, h, v) = post(&client, format!("{url}{}", path(c)), &request(c)).await;
        assert_eq!(code, 429, "{c:?}/{kind:?}: {v}");
        assert!(h.contains_key("retry-after"));
        assert_shape(c, &v, "rate_limit_exceeded", "rate_limit_error");
        assert!(v.to_string().contains("asked to pause"), "{v}");
        assert_eq!(native.hits(), 1, "{c:?}/{kind:?}: not called while paused");
    }
}

/// A 200 whose body sends its first bytes and then stalls for good.
fn stalled(_: &Seen, _: usize) -> Response {
    let first = futures::stream::once(async { Ok::<Bytes, std::io::Error>(Bytes::from_static(b"{\"id\":\"x\",")) });
    let s = futures::StreamExt::chain(first, futures::stream::pending());
    let mut r = Response::new(Body::from_stream(s));
    r.headers_mut().insert("content-type", "application/json".parse().unwrap());
    r
}

fn grants(provider: &str) -> Allowances {
    let mut g = std::collections::BTreeMap::new();
    g.insert("gw".to_string(), "0.5".to_string());
    Allowances {
        namespace: "team-a".into(),
        budgets: vec![HardBudgetGrants {
            name: format!("{provider}-hard"),
            provider: provider.into(),
            models: vec![],
            limit: "1".into(),
            window_start: 0,
            grants: g,
        }],
    }
}

#[tokio::test]
async fn native_paths_time_out_a_body_that_stalls_mid_answer() {
    let client = reqwest::Client::new();
    for (c, kind) in COMBOS {
        let native = Fake::start(stalled).await;
        let opts = GatewayOptions {
            first_byte_timeout: Duration::from_millis(800),
            total_timeout: Duration::from_millis(800),
            ..GatewayOptions::default()
        };
        let (gw, url) = start(config(vec![native_backend("native", kind, &native, 0)]), opts).await;
        let provider = if kind == Native::Anthropic { "anthropic" } else { "gemini" };
        gw.set_allowances("gw", &grants(provider)).unwrap();
        let (code, _, v) = post(&client, format!("{url}{}", path(c)), &request(c)).await;
        assert_eq!(code, 504, "{c:?}/{kind:?}: {v}");
        assert_shape(c, &v, "upstream_timeout", "timeout_error");
        assert_eq!(native.hits(), 1);
        // Metered like the pass-through: a timeout, usage missing, an estimate; nothing reserved.
        assert_eq!(metric(&gw, "tollgate_requests_total", &[("backend", "native"), ("outcome", "timeout")]), 1.0);
        assert_eq!(metric(&gw, "tollgate_usage_missing_total", &[("reason", "unreadable_body")]), 1.0);
        assert!(metric(&gw, "tollgate_cost_estimated_nanousd_total", &[("backend", "native")]) > 0.0);
        let u = gw.hard_usage()[0].clone();
        assert_eq!(u.admitted, 1, "{u:?}");
        assert_eq!(u.reserved, Money::ZERO, "{c:?}/{kind:?}: the reservation was released: {u:?}");
    }
}

#[tokio::test]
async fn native_paths_respect_the_memory_budget() {
    let client = reqwest::Client::new();
    for (c, kind) in COMBOS {
        // The first answer is larger than the whole budget; the second fits.
        let big = "x".repeat(8 * 1024);
        let native = Fake::start(move |_, n| native_answer(kind, if n == 1 { &big } else { "small" })).await;
        let opts = GatewayOptions { max_buffered_bytes: 4096, ..opts() };
        let (gw, url) = start(config(vec![native_backend("native", kind, &native, 0)]), opts).await;
        let (code, _, v) = post(&client, format!("{url}{}", path(c)), &request(c)).await;
        assert_eq!(code, 503, "{c:?}/{kind:?}: {v}");
        assert_shape(c, &v, "gateway_overloaded", "overloaded_error");
        assert_eq!(metric(&gw, "tollgate_usage_missing_total", &[("reason", "over_memory_budget")]), 1.0);
        assert!(metric(&gw, "tollgate_cost_estimated_nanousd_total", &[("backend", "native")]) > 0.0);
        // The budget was given back: the next answer is served and billed exactly (15 tokens at $1/1M).
        let (code, _, v) = post(&client, format!("{url}{}", path(c)), &request(c)).await;
        assert_eq!(code, 200, "{c:?}/{kind:?}: {v}");
        assert!(v.to_string().contains("small"), "{v}");
        assert_eq!(metric(&gw, "tollgate_cost_nanousd_total", &[("backend", "native")]), 15_000.0);
    }
}

#[tokio::test]
async fn native_backends_are_skipped_for_endpoints_they_cannot_serve() {
    let client = reqwest::Client::new();
    let claude = Fake::start(|_, _| native_answer(Native::Anthropic, "hi")).await;
    let gem = Fake::start(|_, _| native_answer(Native::Gemini, "hi")).await;
    let openai = Fake::start(openai_answer).await;
    let cfg = config(vec![
        native_backend("claude", Native::Anthropic, &claude, 0),
        native_backend("gem", Native::Gemini, &gem, 0),
        backend("up", "OpenAI", &openai.base_url(), 1),
    ]);
    let (gw, url) = start(cfg, opts()).await;
    for (p, body) in [
        ("/v1/embeddings", json!({"model": "chat", "input": "hi"})),
        ("/v1/responses", json!({"model": "chat", "input": "hi"})),
        ("/v1/completions", json!({"model": "chat", "prompt": "hi"})),
    ] {
        let (code, h, v) = post(&client, format!("{url}{p}"), &body).await;
        assert_eq!(code, 200, "{p}: {v}");
        assert_eq!(h["x-tollgate-backend"], "up", "{p}");
        assert!(h.get("x-tollgate-attempts").is_none(), "{p}: skipped backends are not attempts");
    }
    assert_eq!((claude.hits(), gem.hits(), openai.hits()), (0, 0, 3));
    assert_eq!(metric(&gw, "tollgate_requests_total", &[("backend", "claude")]), 0.0);

    // Only native backends: a clear 400 naming them, nothing sent upstream.
    let cfg = config(vec![
        native_backend("claude", Native::Anthropic, &claude, 0),
        native_backend("gem", Native::Gemini, &gem, 1),
    ]);
    let (_gw, url) = start(cfg, opts()).await;
    let (code, _, v) = post(&client, format!("{url}/v1/embeddings"), &json!({"model": "chat", "input": "hi"})).await;
    assert_eq!(code, 400, "{v}");
    assert_eq!(v["error"]["code"], "endpoint_not_supported");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("/v1/embeddings") && msg.contains("`claude` (AnthropicMessages)"), "{msg}");
    assert!(msg.contains("`gem` (Gemini)"), "{msg}");
    assert_eq!((claude.hits(), gem.hits()), (0, 0));
}

#[tokio::test]
async fn messages_are_metered_as_chat_operations_in_the_same_cells() {
    let client = reqwest::Client::new();
    let claude = Fake::start(|_, _| native_answer(Native::Anthropic, "hi")).await;
    let (gw, url) = start(config(vec![native_backend("claude", Native::Anthropic, &claude, 0)]), opts()).await;
    let (code, _, v) = post(&client, format!("{url}/v1/messages"), &request(Client::Messages)).await;
    assert_eq!(code, 200, "{v}");
    let (code, _, v) = post(&client, format!("{url}/v1/chat/completions"), &request(Client::Chat)).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(metric(&gw, "tollgate_cost_nanousd_total", &[("backend", "claude")]), 30_000.0);
    let ops = metric(
        &gw,
        "gen_ai_client_operation_duration_seconds_count",
        &[("gen_ai_operation_name", "chat"), ("gen_ai_provider_name", "anthropic")],
    );
    assert_eq!(ops, 2.0, "both surfaces are gen_ai `chat` operations");
}

#[tokio::test]
async fn count_tokens_passes_through_to_anthropic_or_answers_an_estimate() {
    let client = reqwest::Client::new();
    let claude = Fake::start(|s, _| {
        assert_eq!(s.path, "/v1/messages/count_tokens");
        assert_eq!(s.body["model"], "claude-model", "the alias is replaced");
        assert_eq!(s.headers["anthropic-version"], "2023-06-01");
        reply(200, json!({"input_tokens": 42}).to_string(), &[])
    })
    .await;
    let openai = Fake::start(openai_answer).await;
    let cfg = config(vec![
        backend("up", "OpenAI", &openai.base_url(), 0),
        native_backend("claude", Native::Anthropic, &claude, 1),
    ]);
    let (gw, url) = start(cfg, opts()).await;
    let body = json!({"model": "chat", "messages": [{"role": "user", "content": "hello there"}]});
    let (code, h, v) = post(&client, format!("{url}/v1/messages/count_tokens"), &body).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v, json!({"input_tokens": 42}));
    assert_eq!(h["x-tollgate-backend"], "claude");
    assert!(h.get("x-tollgate-token-count").is_none());
    assert_eq!((claude.hits(), openai.hits()), (1, 0));
    assert_eq!(metric(&gw, "tollgate_requests_total", &[("backend", "claude")]), 0.0, "not metered");

    // No Anthropic-native backend: an estimate (body bytes / 4, rounded up), marked as one.
    let (_gw, url) = start(config(vec![backend("up", "OpenAI", &openai.base_url(), 0)]), opts()).await;
    let raw = serde_json::to_vec(&body).unwrap();
    let (code, h, v) = post(&client, format!("{url}/v1/messages/count_tokens"), &body).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["input_tokens"], raw.len().div_ceil(4) as u64);
    assert_eq!(h["x-tollgate-token-count"], "estimate");
    assert_eq!(openai.hits(), 0);
    let (code, _, v) =
        post(&client, format!("{url}/v1/messages/count_tokens"), &json!({"model": "nope", "messages": []})).await;
    assert_eq!(code, 404);
    assert_eq!(v["error"]["type"], "not_found_error");
}

fn anthropic_events() -> Vec<String> {
    let ev = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    vec![
        ev(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
            "model": "m", "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 10, "output_tokens": 1}}}),
        ),
        ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}),
        ),
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " world"}}),
        ),
        ev("content_block_stop", json!({"type": "content_block_stop", "index": 0})),
        ev(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"output_tokens": 5}}),
        ),
        ev("message_stop", json!({"type": "message_stop"})),
    ]
}

#[tokio::test]
async fn a_client_that_leaves_a_translated_stream_early_is_billed_the_final_usage() {
    let client = reqwest::Client::new();
    for c in [Client::Chat, Client::Messages] {
        let claude =
            Fake::start(|_, _| common::upstream::paced_sse(anthropic_events(), Duration::from_millis(150), &[])).await;
        let (gw, url) = start(config(vec![native_backend("claude", Native::Anthropic, &claude, 0)]), opts()).await;
        let mut body = request(c);
        body["stream"] = json!(true);
        let r = client.post(format!("{url}{}", path(c))).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let mut s = r.bytes_stream();
        let first = futures::StreamExt::next(&mut s).await.unwrap().unwrap();
        assert!(!first.is_empty());
        drop(s); // the client leaves after the first event
        // Drained for its usage: message_start's 10 input + message_delta's 5 output at $1/1M
        // (what was known when the client left, 10 + 1, would be 11_000).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let got = metric(&gw, "tollgate_cost_nanousd_total", &[("backend", "claude")]);
            if got == 15_000.0 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{c:?}: billed {got}, want 15000");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(metric(&gw, "tollgate_usage_missing_total", &[("backend", "claude")]), 0.0);
    }
}

#[tokio::test]
async fn a_stalled_messages_body_gets_an_anthropic_shaped_408_and_the_connection_closes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let claude = Fake::start(|_, _| native_answer(Native::Anthropic, "hi")).await;
    let opts = GatewayOptions { body_read_timeout: Duration::from_millis(300), ..opts() };
    let (_gw, url) = start(config(vec![native_backend("claude", Native::Anthropic, &claude, 0)]), opts).await;
    let addr = url.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Content-Length 1000, one byte sent.
    s.write_all(
        b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got))
        .await
        .expect("the stalled body's connection is closed")
        .unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    let body = text.split("\r\n\r\n").nth(1).unwrap();
    let v: Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    assert_eq!(claude.hits(), 0);
}

// ---------------------------------------------------------------------------------------------
// 429 pauses scoped to what they were about
// ---------------------------------------------------------------------------------------------

/// OpenAI's answer to one request larger than its tokens-per-minute limit, with an hour-long
/// `Retry-After`.
fn openai_too_large() -> Response {
    let body = json!({"error": {"message": "Request too large for gpt-4o in organization org-x on tokens per min (TPM): Limit 30000, Requested 49213. The input or output tokens must be reduced in order to run successfully.", "type": "tokens", "param": null, "code": "rate_limit_exceeded"}});
    reply(429, body.to_string(), &[("retry-after", "3600"), ("x-ratelimit-limit-tokens", "30000")])
}

/// Anthropic's answer to one request larger than its input-tokens-per-minute limit: the bucket
/// is full (nothing of it used), the request alone does not fit.
fn anthropic_too_large() -> Response {
    let body = json!({"type": "error", "error": {"type": "rate_limit_error", "message": "This request would exceed the rate limit for your organization (org) of 20,000 input tokens per minute. Please reduce the prompt length or the maximum tokens requested, or try again later."}});
    reply(
        429,
        body.to_string(),
        &[
            ("retry-after", "3600"),
            ("anthropic-ratelimit-input-tokens-limit", "20000"),
            ("anthropic-ratelimit-input-tokens-remaining", "20000"),
        ],
    )
}

#[tokio::test]
async fn a_429_about_one_requests_own_size_does_not_pause_the_backend_for_the_next_request() {
    let client = reqwest::Client::new();
    for (provider, c) in [("OpenAI", Client::Chat), ("Anthropic", Client::Chat), ("Anthropic", Client::Messages)] {
        let make = |f: &Fake| match provider {
            "OpenAI" => backend("big", "OpenAI", &f.base_url(), 0),
            _ => native_backend("big", Native::Anthropic, f, 0),
        };
        // The first request is the oversized one; every later one is served.
        let big = Fake::start(move |s, n| match (n, provider) {
            (1, "OpenAI") => openai_too_large(),
            (1, _) => anthropic_too_large(),
            (_, "OpenAI") => openai_answer(s, n),
            _ => native_answer(Native::Anthropic, "served"),
        })
        .await;
        let other = Fake::start(openai_answer).await;
        let cfg = config(vec![make(&big), backend("other", "OpenAI", &other.base_url(), 1)]);
        let (_gw, url) = start(cfg, opts()).await;
        // The oversized request fails over to the next backend.
        let (code, h, v) = post(&client, format!("{url}{}", path(c)), &request(c)).await;
        assert_eq!(code, 200, "{provider}/{c:?}: {v}");
        assert_eq!(h["x-tollgate-backend"], "other");
        // The next, normal, request still reaches the backend that refused the big one.
        let (code, h, v) = post(&client, format!("{url}{}", path(c)), &request(c)).await;
        assert_eq!(code, 200, "{provider}/{c:?}: {v}");
        assert_eq!(h["x-tollgate-backend"], "big", "{provider}/{c:?}: not paused by a 429 about one request");
        assert_eq!(big.hits(), 2, "{provider}/{c:?}");

        // Alone on its route: the oversized request is answered 429, the next one is served.
        let big = Fake::start(move |s, n| match (n, provider) {
            (1, "OpenAI") => openai_too_large(),
            (1, _) => anthropic_too_large(),
            (_, "OpenAI") => openai_answer(s, n),
            _ => native_answer(Native::Anthropic, "served"),
        })
        .await;
        let (_gw, url) = start(config(vec![make(&big)]), opts()).await;
        let (code, _, v) = post(&client, format!("{url}{}", path(c)), &request(c)).await;
        assert_eq!(code, 429, "{provider}/{c:?}: {v}");
        assert_shape(c, &v, "rate_limit_exceeded", "rate_limit_error");
        let (code, _, v) = post(&client, format!("{url}{}", path(c)), &request(c)).await;
        assert_eq!(code, 200, "{provider}/{c:?}: {v}");
        assert_eq!(big.hits(), 2);
    }
}

#[tokio::test]
async fn an_hour_long_retry_after_pauses_the_backend_only_for_the_ceiling() {
    let client = reqwest::Client::new();
    let ceiling = Duration::from_secs(3);
    let limited = Fake::start(|s, n| {
        if n == 1 {
            let body = json!({"error": {"message": "Rate limit reached for requests", "type": "requests", "code": "rate_limit_exceeded"}});
            reply(429, body.to_string(), &[("retry-after", "3600")])
        } else {
            openai_answer(s, n)
        }
    })
    .await;
    let (_gw, url) = start(
        config(vec![backend("up", "OpenAI", &limited.base_url(), 0)]),
        GatewayOptions { max_rate_limit_pause: ceiling, ..opts() },
    )
    .await;
    let body = request(Client::Chat);
    let (code, h, v) = post(&client, format!("{url}/v1/chat/completions"), &body).await;
    let refused = tokio::time::Instant::now();
    assert_eq!(code, 429, "{v}");
    // The refused client is told what the provider asked for, not the gateway's ceiling.
    let secs: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((3590..=3600).contains(&secs), "{secs}");
    // Within the ceiling the backend is skipped (and its clients told the provider's time).
    let (code, h, v) = post(&client, format!("{url}/v1/chat/completions"), &body).await;
    assert_eq!(code, 429, "{v}");
    assert!(v.to_string().contains("asked to pause"), "{v}");
    let secs: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((3590..=3600).contains(&secs), "{secs}");
    assert_eq!(limited.hits(), 1);
    // After the ceiling it is tried again, although the hour is far from over.
    tokio::time::sleep_until(refused + ceiling + Duration::from_millis(200)).await;
    let (code, _, v) = post(&client, format!("{url}/v1/chat/completions"), &body).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(limited.hits(), 2);
}

// ---------------------------------------------------------------------------------------------
// SSE line endings on the pass-through
// ---------------------------------------------------------------------------------------------

/// An OpenAI stream whose lines end with `end`, sent one byte per body chunk, with `usage: null`
/// on each chunk and the usage-only chunk when asked for usage; and what a client that did not
/// ask for usage must get of it.
fn openai_stream(end: &'static str) -> (Vec<u8>, String) {
    let chunk = |c: &str| json!({"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": c}}], "usage": null});
    let usage = json!({"id": "c1", "object": "chat.completion.chunk", "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}});
    let upstream = format!(
        "data: {}{end}{end}data: {}{end}{end}data: {usage}{end}{end}data: [DONE]{end}{end}",
        chunk("he"),
        chunk("llo")
    );
    let plain = |c: &str| json!({"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": c}}]});
    let client = format!("data: {}{end}{end}data: {}{end}{end}data: [DONE]{end}{end}", plain("he"), plain("llo"));
    (upstream.into_bytes(), client)
}

#[tokio::test]
async fn a_stream_with_bare_cr_or_crlf_line_ends_bills_exact_usage_and_hides_the_usage_chunk() {
    let client = reqwest::Client::new();
    for end in ["\r", "\r\n"] {
        let up = Fake::start(move |s, _| {
            assert_eq!(s.body["stream_options"]["include_usage"], true, "the gateway asks for usage");
            let (bytes, _) = openai_stream(end);
            let chunks =
                futures::stream::iter(bytes.into_iter().map(|b| Ok::<Bytes, std::io::Error>(Bytes::from(vec![b]))));
            let mut r = Response::new(Body::from_stream(chunks));
            r.headers_mut().insert("content-type", "text/event-stream".parse().unwrap());
            r
        })
        .await;
        let (gw, url) = start(config(vec![backend("up", "OpenAI", &up.base_url(), 0)]), opts()).await;
        let mut body = request(Client::Chat);
        body["stream"] = json!(true);
        let r = client.post(format!("{url}/v1/chat/completions")).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        assert_eq!(text, openai_stream(end).1, "{end:?}: the upstream's bytes without the gateway's usage chunk");
        // 11 input + 7 output tokens at $1/1M, read from the stream (not an estimate).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while metric(&gw, "tollgate_cost_nanousd_total", &[("backend", "up")]) != 18_000.0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{end:?}: billed {}",
                metric(&gw, "tollgate_cost_nanousd_total", &[("backend", "up")])
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(metric(&gw, "tollgate_usage_missing_total", &[("backend", "up")]), 0.0, "{end:?}");
    }
}
