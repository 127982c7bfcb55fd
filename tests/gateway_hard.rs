//! Hard budgets and output caps through the gateway (issue 13), in-process on loopback:
//! - output caps reach the upstream in each wire format (OpenAI chat / completions / responses,
//!   Anthropic Messages, Gemini `generationConfig.maxOutputTokens`, and the inbound
//!   `/v1/messages` surface), clamped or inserted, streamed and not, seen by fake upstreams;
//! - `maxInputTokens` refuses with a 400 naming the field before any upstream call;
//! - admission: a Hard budget's backend is tried only while its worst case fits the grant,
//!   the request falls over to the next backend, then 429 `budget_exhausted`; the settled
//!   spend equals the exact metered cost and stays within the grant; failed attempts release
//!   their reservation; an instance missing from the grants admits nothing.

mod common;

use std::time::Duration;

use common::upstream::{Fake, Seen, reply};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tollgate::config::allowances::{Allowances, HardBudgetGrants};
use tollgate::config::{CONFIG_VERSION, GatewayConfig};
use tollgate::gateway::{Gateway, GatewayOptions, ServeLimits, serve};
use tollgate::policy::money::Money;

fn backend(name: &str, provider: &str, api: &str, endpoint: Value, tier: u32, cap: Option<u32>) -> Value {
    let mut b = json!({
        "name": name, "provider": provider, "family": if api == "Gemini" { "Gemini" } else if api == "AnthropicMessages" { "Anthropic" } else { "OpenAI" },
        "model": format!("{name}-model"), "tier": tier, "weight": 1, "state": "Active", "serving": true,
        "endpoint": endpoint,
        "pricing": {"input": "1.00", "cachedInput": "1.00", "cacheWrite": "1.00", "output": "1.00", "reasoning": "1.00"}
    });
    if api != "OpenAI" {
        b["api"] = json!(api);
    }
    if let Some(c) = cap {
        b["maxOutputTokens"] = json!(c);
    }
    b
}

fn http(base: &str) -> Value {
    json!({"http": {"baseUrl": base, "protocol": "OpenAI"}})
}

fn config(backends: Vec<Value>, max_input: Option<u32>) -> GatewayConfig {
    let mut route = json!({"name": "chat", "model": "chat", "strategy": "Priority", "mode": "Enforce",
        "state": "Serving", "backends": backends});
    if let Some(m) = max_input {
        route["maxInputTokens"] = json!(m);
    }
    let mut c: GatewayConfig = serde_json::from_value(
        json!({"version": CONFIG_VERSION, "revision": "", "namespace": "team-a", "routes": [route]}),
    )
    .unwrap();
    c.revision = c.compute_revision();
    c
}

async fn start(cfg: GatewayConfig) -> (Gateway, String) {
    let opts = GatewayOptions { first_byte_timeout: Duration::from_secs(20), ..GatewayOptions::default() };
    let gw = Gateway::new(Some(cfg), opts).unwrap();
    let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", api.local_addr().unwrap());
    tokio::spawn(serve(api, gw.api(), ServeLimits::default(), std::future::pending()));
    (gw, base)
}

/// An answer in the wire format the path asks for, with usage of 10 input + 5 output tokens.
fn answer(s: &Seen, _: usize) -> axum::response::Response {
    let body = if s.path.contains(":generateContent") || s.path.contains(":streamGenerateContent") {
        json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "hi"}]}, "finishReason": "MAX_TOKENS"}],
               "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 5, "totalTokenCount": 15}})
    } else if s.path.ends_with("/messages") {
        json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [{"type": "text", "text": "hi"}],
               "stop_reason": "max_tokens", "stop_sequence": null, "usage": {"input_tokens": 10, "output_tokens": 5}})
    } else if s.path.ends_with("/responses") {
        json!({"id": "resp_1", "object": "response", "status": "incomplete", "output": [],
               "usage": {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}})
    } else {
        json!({"id": "c1", "object": "chat.completion", "created": 0, "model": "m",
               "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "length"}],
               "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})
    };
    reply(200, body.to_string(), &[])
}

async fn post(client: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let r = client.post(url).json(&body).send().await.unwrap();
    let code = r.status().as_u16();
    let text = r.text().await.unwrap();
    (code, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[tokio::test]
async fn output_caps_reach_the_upstream_in_every_wire_format() {
    let fake = Fake::start(answer).await;
    let root = format!("http://{}", fake.addr);
    let client = reqwest::Client::new();
    // (api, provider, base, client path, client body extra, where the cap must be in the upstream body)
    type Case = (&'static str, &'static str, String, &'static str, Value, &'static [&'static str]);
    let cases: Vec<Case> = vec![
        ("OpenAI", "openai", fake.base_url(), "/v1/chat/completions", json!({}), &["max_completion_tokens"]),
        ("OpenAI", "deepseek", fake.base_url(), "/v1/chat/completions", json!({}), &["max_tokens"]),
        ("OpenAI", "openai", fake.base_url(), "/v1/chat/completions", json!({"max_tokens": 999}), &["max_tokens"]),
        ("OpenAI", "openai", fake.base_url(), "/v1/completions", json!({"prompt": "x"}), &["max_tokens"]),
        ("OpenAI", "openai", fake.base_url(), "/v1/responses", json!({"input": "x"}), &["max_output_tokens"]),
        ("AnthropicMessages", "anthropic", fake.base_url(), "/v1/chat/completions", json!({}), &["max_tokens"]),
        (
            "AnthropicMessages",
            "anthropic",
            fake.base_url(),
            "/v1/messages",
            json!({"max_tokens": 999}),
            &["max_tokens"],
        ),
        ("OpenAI", "openai", fake.base_url(), "/v1/messages", json!({"max_tokens": 999}), &["max_tokens"]),
        ("Gemini", "gemini", root.clone(), "/v1/chat/completions", json!({}), &["generationConfig", "maxOutputTokens"]),
    ];
    let mut n = 0;
    for (api, provider, base, path, extra, field) in cases {
        for stream in [false, true] {
            let cfg = config(vec![backend("b", provider, api, http(&base), 0, Some(7))], None);
            let (_gw, url) = start(cfg).await;
            let mut body = json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}], "stream": stream});
            if path == "/v1/messages" && extra.get("max_tokens").is_none() {
                body["max_tokens"] = json!(999);
            }
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            let _ = post(&client, format!("{url}{path}"), body).await;
            let seen = fake.seen(n);
            n += 1;
            let mut v = &seen.body;
            for f in field {
                v = &v[*f];
            }
            assert_eq!(v, &json!(7), "{api}/{provider} {path} stream={stream}: cap not applied: {}", seen.body);
        }
    }
    // A request asking for less than the cap keeps its own bound.
    let cfg = config(vec![backend("b", "openai", "OpenAI", http(&fake.base_url()), 0, Some(7))], None);
    let (_gw, url) = start(cfg).await;
    let body = json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 3});
    let (code, _) = post(&client, format!("{url}/v1/chat/completions"), body).await;
    assert_eq!(code, 200);
    assert_eq!(fake.seen(n).body["max_completion_tokens"], json!(3));
    // Without a cap (and no Hard budget) the body passes as sent.
    let cfg = config(vec![backend("b", "openai", "OpenAI", http(&fake.base_url()), 0, None)], None);
    let (_gw, url) = start(cfg).await;
    let body = json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]});
    let _ = post(&client, format!("{url}/v1/chat/completions"), body).await;
    let seen = fake.seen(n + 1).body;
    assert!(seen.get("max_completion_tokens").is_none() && seen.get("max_tokens").is_none(), "{seen}");
}

#[tokio::test]
async fn max_input_tokens_refuses_before_any_upstream_call() {
    let fake = Fake::start(answer).await;
    let cfg = config(vec![backend("b", "openai", "OpenAI", http(&fake.base_url()), 0, None)], Some(200));
    let (_gw, url) = start(cfg).await;
    let client = reqwest::Client::new();
    let big = "x".repeat(400);
    for path in ["/v1/chat/completions", "/v1/messages"] {
        let body = json!({"model": "chat", "max_tokens": 10, "messages": [{"role": "user", "content": big}]});
        let (code, v) = post(&client, format!("{url}{path}"), body).await;
        assert_eq!(code, 400, "{path}: {v}");
        assert!(v.to_string().contains("maxInputTokens"), "{path}: the message names the field: {v}");
    }
    assert_eq!(fake.hits(), 0);
    let (code, _) = post(
        &client,
        format!("{url}/v1/chat/completions"),
        json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(code, 200, "a small request passes");
}

fn grants(instance: &str, grant: &str) -> Allowances {
    let mut g = std::collections::BTreeMap::new();
    g.insert(instance.to_string(), grant.to_string());
    Allowances {
        namespace: "team-a".into(),
        budgets: vec![HardBudgetGrants {
            name: "openai-hard".into(),
            provider: "openai".into(),
            models: vec![],
            limit: "1".into(),
            window_start: 0,
            grants: g,
        }],
    }
}

#[tokio::test]
async fn hard_admission_reroutes_then_refuses_and_settles_exactly() {
    // Every openai answer costs 10 + 5 tokens at $1/1M = $0.000015. The request asks for at most
    // 100 output tokens; its body is under 200 bytes, so the worst case is at most
    // (200 + 64) + 100 tokens = $0.000364, at least (bytes + 64 + 100) tokens.
    let openai = Fake::start(answer).await;
    let other = Fake::start(answer).await;
    let cfg = config(
        vec![
            backend("openai", "openai", "OpenAI", http(&openai.base_url()), 0, None),
            backend("deepseek", "deepseek", "OpenAI", http(&other.base_url()), 1, None),
        ],
        None,
    );
    let (gw, url) = start(cfg).await;
    let client = reqwest::Client::new();
    let req = json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100});

    // An instance the grants do not list admits nothing to openai.
    gw.set_allowances("gw-a", &grants("gw-other", "0.01")).unwrap();
    let r = client.post(format!("{url}/v1/chat/completions")).json(&req).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-tollgate-backend"], "deepseek");
    assert_eq!(openai.hits(), 0);

    // Granted $0.002: room for a few worst cases, then every request goes to deepseek.
    gw.set_allowances("gw-a", &grants("gw-a", "0.002")).unwrap();
    let mut served_by_openai = 0;
    for _ in 0..40 {
        let r = client.post(format!("{url}/v1/chat/completions")).json(&req).send().await.unwrap();
        assert_eq!(r.status(), 200);
        if r.headers()["x-tollgate-backend"] == "openai" {
            served_by_openai += 1;
        }
    }
    let u = &gw.hard_usage()[0];
    assert_eq!(u.reserved, Money::ZERO, "nothing left reserved");
    assert_eq!(u.settled, Money::from_picos(15_000_000 * served_by_openai), "settled is the exact metered cost");
    assert!(u.settled <= u.granted);
    assert!(served_by_openai >= 5, "the grant admitted several requests: {served_by_openai}");
    assert!(u.refused > 0 && u.admitted == served_by_openai as u64, "{u:?}");
    assert_eq!(openai.hits() as i128, served_by_openai);

    // Only openai left in the route: 429 budget_exhausted once the grant is used.
    let cfg = config(vec![backend("openai", "openai", "OpenAI", http(&openai.base_url()), 0, None)], None);
    let (gw2, url2) = start(cfg).await;
    gw2.set_allowances("gw-b", &grants("gw-b", "0.000001")).unwrap();
    let (code, v) = post(&client, format!("{url2}/v1/chat/completions"), req.clone()).await;
    assert_eq!(code, 429, "{v}");
    assert_eq!(v["error"]["code"], "budget_exhausted", "{v}");
    let (code, _) = post(
        &client,
        format!("{url2}/v1/messages"),
        json!({"model": "chat", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(code, 429);
}

#[tokio::test]
async fn failed_and_streamed_attempts_leave_nothing_reserved() {
    let failing = Fake::fixed(503, r#"{"error":{"message":"down"}}"#, &[]).await;
    let ok = Fake::start(|_, _| {
        let events = vec![
            format!("data: {}\n\n", json!({"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": null}]})),
            format!("data: {}\n\n", json!({"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})),
            format!("data: {}\n\n", json!({"id": "c", "object": "chat.completion.chunk", "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})),
            "data: [DONE]\n\n".to_string(),
        ];
        common::upstream::paced_sse(events, Duration::from_millis(5), &[])
    })
    .await;
    let cfg = config(
        vec![
            backend("down", "openai", "OpenAI", http(&failing.base_url()), 0, None),
            backend("up", "openai", "OpenAI", http(&ok.base_url()), 1, None),
        ],
        None,
    );
    let (gw, url) = start(cfg).await;
    gw.set_allowances("gw", &grants("gw", "0.01")).unwrap();
    let client = reqwest::Client::new();
    let req =
        json!({"model": "chat", "stream": true, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50});
    for _ in 0..3 {
        let r = client.post(format!("{url}/v1/chat/completions")).json(&req).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        assert!(text.contains("\"finish_reason\":\"length\""), "{text}");
    }
    // The stream's end callback settles after the body is read; wait with a deadline.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let u = gw.hard_usage()[0].clone();
        if u.reserved == Money::ZERO {
            // 3 streamed answers of 15 tokens at $1/1M; the 503s released theirs.
            assert_eq!(u.settled, Money::from_picos(3 * 15_000_000), "{u:?}");
            assert_eq!(u.admitted, 6, "each request reserved on both attempts: {u:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "reservations left: {u:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn several_choices_reserve_the_bound_once_per_choice() {
    // A worst case of (bytes + 64) + 100 tokens at $1/1M is under $0.0004 for one choice; a grant
    // of $0.0010 admits n=1 but not n=10 (over $0.0010 for the output alone).
    let openai = Fake::start(answer).await;
    let cfg = config(vec![backend("openai", "openai", "OpenAI", http(&openai.base_url()), 0, None)], None);
    let (gw, url) = start(cfg).await;
    gw.set_allowances("gw", &grants("gw", "0.0010")).unwrap();
    let client = reqwest::Client::new();
    let req =
        |n: u32| json!({"model": "chat", "n": n, "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]});
    let (code, v) = post(&client, format!("{url}/v1/chat/completions"), req(10)).await;
    assert_eq!(code, 429, "{v}");
    let (code, v) = post(&client, format!("{url}/v1/chat/completions"), req(1)).await;
    assert_eq!(code, 200, "{v}");
}

/// A Hard budget with one route whose prices are $1/1M input, $10/1M output.
fn priced(name: &str, provider: &str, base: &str) -> Value {
    let mut b = backend(name, provider, "OpenAI", http(base), 0, None);
    b["pricing"] =
        json!({"input": "1.00", "cachedInput": "1.00", "cacheWrite": "1.00", "output": "10.00", "reasoning": "10.00"});
    b
}

/// An upstream that generates exactly as many tokens as the one field it honours allows.
fn honouring(field: &'static str) -> impl Fn(&Seen, usize) -> axum::response::Response + Send + Sync + 'static {
    move |s: &Seen, _| {
        let out = s.body[field].as_u64().unwrap_or(4096);
        let body = json!({"id": "c1", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "…"}, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": out, "total_tokens": 10 + out}});
        reply(200, body.to_string(), &[])
    }
}

#[tokio::test]
async fn two_output_bounds_never_let_one_request_overrun_a_hard_budget() {
    // A request stating both max_tokens and max_completion_tokens, one small and one large, to
    // upstreams that each honour only one of them. Admission must bound what either could
    // generate: 20,000 output tokens at $10/1M is $0.20, twenty times a $0.01 grant.
    let client = reqwest::Client::new();
    for field in ["max_tokens", "max_completion_tokens"] {
        for (small, large) in [("max_tokens", "max_completion_tokens"), ("max_completion_tokens", "max_tokens")] {
            let fake = Fake::start(honouring(field)).await;
            let cfg = config(vec![priced("b", "deepseek", &fake.base_url())], None);
            let (gw, url) = start(cfg).await;
            let mut g = grants("gw", "0.01");
            g.budgets[0].provider = "deepseek".into();
            gw.set_allowances("gw", &g).unwrap();
            let mut req = json!({"model": "chat", "messages": [{"role": "user", "content": "write a novel"}]});
            req[small] = json!(10);
            req[large] = json!(20_000);
            let (code, v) = post(&client, format!("{url}/v1/chat/completions"), req.clone()).await;
            let u = gw.hard_usage()[0].clone();
            assert!(
                u.settled <= Money::from_picos(10_000_000_000),
                "{field} honoured, {small}=10: settled {} over the $0.01 grant",
                u.settled
            );
            // The larger bound is the worst case: refused before any upstream call.
            assert_eq!(code, 429, "{field} honoured, {small}=10: {v}");
            assert_eq!(v["error"]["code"], "budget_exhausted");
            assert_eq!(fake.hits(), 0);

            // With room for the larger bound it is admitted, and the upstream receives no field
            // above the bound reserved: settled = exact cost ≤ the reservation.
            let mut g = grants("gw", "1");
            g.budgets[0].provider = "deepseek".into();
            gw.set_allowances("gw", &g).unwrap();
            let (code, v) = post(&client, format!("{url}/v1/chat/completions"), req).await;
            assert_eq!(code, 200, "{v}");
            let seen = fake.seen(0).body;
            for f in ["max_tokens", "max_completion_tokens"] {
                assert!(seen[f].as_u64().is_some_and(|n| n <= 20_000), "{f} reached upstream above the bound: {seen}");
            }
            let generated = seen[field].as_u64().unwrap();
            let u = gw.hard_usage()[0].clone();
            // 10 input tokens × $1/1M + generated × $10/1M, in pico-dollars.
            let cost = 10 * 1_000_000 + i128::from(generated) * 10_000_000;
            assert_eq!(u.settled, Money::from_picos(cost), "{u:?}");
            assert_eq!(u.reserved, Money::ZERO);
        }
    }
}

#[tokio::test]
async fn a_cost_field_that_is_not_an_integer_is_refused_on_a_hard_budget() {
    // `"n": "50"` read leniently upstream is 50 choices; counted as one it would overrun.
    let fake = Fake::start(answer).await;
    let cfg = config(vec![backend("openai", "openai", "OpenAI", http(&fake.base_url()), 0, None)], None);
    let (gw, url) = start(cfg).await;
    gw.set_allowances("gw", &grants("gw", "1")).unwrap();
    let client = reqwest::Client::new();
    for (field, value) in
        [("n", json!("50")), ("n", json!(2.5)), ("max_tokens", json!("100000")), ("max_completion_tokens", json!(-1))]
    {
        let mut req = json!({"model": "chat", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]});
        req[field] = value.clone();
        let (code, v) = post(&client, format!("{url}/v1/chat/completions"), req).await;
        assert_eq!(code, 400, "{field}={value}: {v}");
        assert_eq!(v["error"]["code"], "invalid_cost_field", "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().starts_with(&format!("`{field}` must be a non-negative integer")),
            "{v}"
        );
    }
    let (code, v) = post(
        &client,
        format!("{url}/v1/messages"),
        json!({"model": "chat", "max_tokens": "10", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(code, 400, "{v}");
    assert_eq!(v["type"], "error", "Anthropic's error shape on /v1/messages: {v}");
    assert_eq!(fake.hits(), 0);
    // Off a Hard budget the gateway does not rely on the field: the upstream judges it.
    let cfg = config(vec![backend("openai", "openai", "OpenAI", http(&fake.base_url()), 0, None)], None);
    let (_free, url) = start(cfg).await;
    let req = json!({"model": "chat", "n": "2", "messages": [{"role": "user", "content": "hi"}]});
    let (code, _) = post(&client, format!("{url}/v1/chat/completions"), req).await;
    assert_eq!(code, 200);
    assert_eq!(fake.hits(), 1);
}

#[tokio::test]
async fn media_parts_count_against_a_hard_budget_or_are_refused() {
    // $1/1M on every kind. A text request's worst case is under (200 + 64) + 100 tokens; an
    // image adds 16,384 tokens ($0.016384), over a $0.01 grant; a file has no bound at all.
    let fake = Fake::start(answer).await;
    let client = reqwest::Client::new();
    let with = |part: Value| {
        json!({"model": "chat", "max_tokens": 100, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "look"}, part]}]})
    };
    let image = json!({"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}});
    let file = json!({"type": "file", "file": {"file_id": "file-abc123"}});

    let cfg = config(vec![backend("openai", "openai", "OpenAI", http(&fake.base_url()), 0, None)], None);
    let (gw, url) = start(cfg).await;
    gw.set_allowances("gw", &grants("gw", "0.01")).unwrap();
    let (code, v) =
        post(&client, format!("{url}/v1/chat/completions"), with(json!({"type": "text", "text": "x"}))).await;
    assert_eq!(code, 200, "text only: {v}");
    let (code, v) = post(&client, format!("{url}/v1/chat/completions"), with(image.clone())).await;
    assert_eq!((code, v["error"]["code"].as_str()), (429, Some("budget_exhausted")), "an image by URL: {v}");
    let (code, v) = post(&client, format!("{url}/v1/chat/completions"), with(file.clone())).await;
    assert_eq!((code, v["error"]["code"].as_str()), (400, Some("unbounded_input")), "a file by id: {v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("spec.mediaInputTokens"), "{v}");
    let doc = json!({"model": "chat", "max_tokens": 100, "messages": [{"role": "user", "content": [
        {"type": "document", "source": {"type": "url", "url": "https://example.com/100-pages.pdf"}}]}]});
    let (code, v) = post(&client, format!("{url}/v1/messages"), doc).await;
    assert_eq!((code, v["error"]["type"].as_str()), (400, Some("invalid_request_error")), "a document by URL: {v}");
    assert_eq!(fake.hits(), 1, "only the text request reached upstream");

    // The route states a bound per media part: 2,000 tokens ($0.002) each fits the grant.
    let mut cfg = config(vec![backend("openai", "openai", "OpenAI", http(&fake.base_url()), 0, None)], None);
    cfg.routes[0].media_input_tokens = Some(2000);
    cfg.revision = cfg.compute_revision();
    let (gw, url) = start(cfg).await;
    gw.set_allowances("gw", &grants("gw", "0.01")).unwrap();
    for part in [image, file] {
        let (code, v) = post(&client, format!("{url}/v1/chat/completions"), with(part)).await;
        assert_eq!(code, 200, "{v}");
    }
    let u = &gw.hard_usage()[0];
    assert_eq!((u.admitted, u.reserved), (2, Money::ZERO), "{u:?}");
}
