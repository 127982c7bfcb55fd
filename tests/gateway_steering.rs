//! Cache affinity and request hints (issue 15) on every client surface the gateway serves:
//! OpenAI `/v1/chat/completions` and Anthropic `/v1/messages`, in-process with mock backends
//! (one answers in Anthropic's native format, so `/v1/messages` crosses formats too).
//!
//! Rules checked: a key sticks to one backend; keys spread over the tier; a hint the route does
//! not allow, or a malformed one, is a 400 naming the header in the surface's error shape; a max
//! cost skips backends whose worst case exceeds it and refuses (400 `max_cost_exceeded`) when
//! none fits; `x-tollgate-prefer: cheapest` puts the cheapest backend first.

use std::collections::BTreeSet;

use serde_json::{Value, json};
use tokio::net::TcpListener;
use tollgate::api::{BackendState, Mode, RouteState, Strategy};
use tollgate::config::{
    AffinityPolicy, BackendConfig, CONFIG_VERSION, EndpointConfig, GatewayConfig, HintsPolicy, MockEndpoint,
    Preference, ProviderFamily, RouteConfig, WireApi,
};
use tollgate::gateway::{Gateway, GatewayOptions, ServeLimits, serve};
use tollgate::pricing::Prices;

fn backend(name: &str, api: WireApi, input: &str, output: &str) -> BackendConfig {
    let pricing: Prices = serde_json::from_value(json!({
        "input": input, "cachedInput": input, "cacheWrite": input, "output": output, "reasoning": output
    }))
    .unwrap();
    BackendConfig {
        name: name.into(),
        provider: format!("prov-{name}"),
        family: if api == WireApi::AnthropicMessages { ProviderFamily::Anthropic } else { ProviderFamily::OpenAI },
        model: format!("{name}-model"),
        api,
        tier: 0,
        weight: 10,
        state: BackendState::Active,
        serving: true,
        endpoint: EndpointConfig::Mock(MockEndpoint { latency: "0ms".into(), ..MockEndpoint::default() }),
        pricing,
        max_output_tokens: None,
    }
}

/// Route `chat`: `cheap` ($1/$1), `mid` ($2/$2, Anthropic native), `dear` ($50/$50).
fn config(affinity: Option<AffinityPolicy>, hints: Option<HintsPolicy>) -> GatewayConfig {
    let route = RouteConfig {
        name: "chat".into(),
        model: "chat".into(),
        strategy: Strategy::Weighted,
        mode: Mode::Enforce,
        state: RouteState::Serving,
        backends: vec![
            backend("dear", WireApi::OpenAI, "50.00", "50.00"),
            backend("mid", WireApi::AnthropicMessages, "2.00", "2.00"),
            backend("cheap", WireApi::OpenAI, "1.00", "1.00"),
        ],
        max_input_tokens: None,
        media_input_tokens: None,
        affinity,
        hints,
    };
    let mut c =
        GatewayConfig { version: CONFIG_VERSION, revision: String::new(), namespace: "t".into(), routes: vec![route] };
    c.revision = c.compute_revision();
    c
}

struct Harness {
    base: String,
    client: reqwest::Client,
}

async fn start(cfg: GatewayConfig) -> Harness {
    let opts = GatewayOptions { credentials_dir: std::env::temp_dir(), ..GatewayOptions::default() };
    let gw = Gateway::new(Some(cfg), opts).unwrap();
    let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", api.local_addr().unwrap());
    tokio::spawn(serve(api, gw.api(), ServeLimits::default(), std::future::pending()));
    Harness { base, client: reqwest::Client::new() }
}

#[derive(Clone, Copy, Debug)]
enum Surface {
    Chat,
    Messages,
}

const SURFACES: [Surface; 2] = [Surface::Chat, Surface::Messages];

impl Harness {
    /// One request on a surface: status, serving backend, body.
    async fn send(&self, surface: Surface, body: Value, headers: &[(&str, &str)]) -> (u16, String, Value) {
        let path = match surface {
            Surface::Chat => "/v1/chat/completions",
            Surface::Messages => "/v1/messages",
        };
        let mut req = self.client.post(format!("{}{path}", self.base)).json(&body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req.send().await.unwrap();
        let code = r.status().as_u16();
        let backend = r.headers().get("x-tollgate-backend").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        (code, backend, r.json().await.unwrap_or(Value::Null))
    }
}

fn body(surface: Surface, user: &str, max_tokens: Option<u64>) -> Value {
    let mut v = json!({"model": "chat", "messages": [{"role": "user", "content": format!("hello from {user}")}]});
    if let Some(m) = max_tokens {
        v["max_tokens"] = json!(m);
    }
    match surface {
        Surface::Chat => v["user"] = json!(user),
        Surface::Messages => v["metadata"] = json!({"user_id": user}),
    }
    v
}

/// The error message in either surface's shape.
fn message(v: &Value) -> String {
    v["error"]["message"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn an_affinity_key_sticks_on_every_surface_and_keys_spread() {
    let h = start(config(Some(AffinityPolicy::default()), None)).await;
    for surface in SURFACES {
        let mut used = BTreeSet::new();
        for user in 0..24 {
            let user = format!("user-{user}");
            let (code, first, v) = h.send(surface, body(surface, &user, Some(64)), &[]).await;
            assert_eq!(code, 200, "{surface:?}: {v}");
            for _ in 0..4 {
                assert_eq!(h.send(surface, body(surface, &user, Some(64)), &[]).await.1, first, "{surface:?} {user}");
            }
            used.insert(first);
        }
        assert_eq!(used.len(), 3, "{surface:?}: 24 keys at equal weights reach every backend: {used:?}");
        // The explicit header wins over `user` (default source order).
        let (_, a, _) =
            h.send(surface, body(surface, "same", Some(64)), &[("x-tollgate-affinity-key", "conv-9")]).await;
        for other in ["x", "y", "z"] {
            let (_, b, _) =
                h.send(surface, body(surface, other, Some(64)), &[("x-tollgate-affinity-key", "conv-9")]).await;
            assert_eq!(a, b, "{surface:?}");
        }
    }
}

#[tokio::test]
async fn hints_the_route_does_not_allow_are_refused_naming_the_header() {
    let h = start(config(None, Some(HintsPolicy { max_cost: false, prefer: vec![Preference::Fastest] }))).await;
    for surface in SURFACES {
        let b = || body(surface, "u", Some(64));
        let (code, _, v) = h.send(surface, b(), &[("x-tollgate-max-cost-usd", "1")]).await;
        assert_eq!(code, 400, "{surface:?}");
        assert!(message(&v).contains("x-tollgate-max-cost-usd") && message(&v).contains("spec.hints.maxCost"), "{v}");
        let (code, _, v) = h.send(surface, b(), &[("x-tollgate-prefer", "cheapest")]).await;
        assert_eq!(code, 400, "{surface:?}");
        assert!(message(&v).contains("x-tollgate-prefer") && message(&v).contains("spec.hints.prefer"), "{v}");
        let (code, _, v) = h.send(surface, b(), &[("x-tollgate-prefer", "slowest")]).await;
        assert_eq!(code, 400, "{surface:?}");
        assert!(message(&v).contains("not a preference"), "{v}");
        assert_eq!(h.send(surface, b(), &[("x-tollgate-prefer", "fastest")]).await.0, 200, "{surface:?}");
        assert_eq!(h.send(surface, b(), &[]).await.0, 200, "{surface:?}: no hint, no refusal");
    }
    let (_, _, v) =
        h.send(Surface::Messages, body(Surface::Messages, "u", Some(1)), &[("x-tollgate-prefer", "x")]).await;
    assert_eq!(v["type"], "error", "Anthropic-shaped error: {v}");
    assert_eq!(v["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn a_max_cost_skips_dear_backends_and_refuses_when_none_fits() {
    let hints = HintsPolicy { max_cost: true, prefer: vec![Preference::Cheapest, Preference::Fastest] };
    let h = start(config(None, Some(hints))).await;
    for surface in SURFACES {
        // The body is ~100 bytes; 1000 output tokens: `cheap` ≈ $0.0011, `mid` ≈ $0.0022, `dear`
        // ≈ $0.055. A ceiling of $0.01 leaves cheap and mid.
        for _ in 0..30 {
            let (code, backend, v) =
                h.send(surface, body(surface, "u", Some(1000)), &[("x-tollgate-max-cost-usd", "0.01")]).await;
            assert_eq!(code, 200, "{surface:?}: {v}");
            assert_ne!(backend, "dear", "{surface:?}");
        }
        // A ceiling under every worst case: 400 naming the header and the cheapest worst case.
        let (code, _, v) =
            h.send(surface, body(surface, "u", Some(1000)), &[("x-tollgate-max-cost-usd", "0.0001")]).await;
        assert_eq!(code, 400, "{surface:?}");
        assert!(message(&v).contains("no backend of route `chat` fits 0.0001 USD"), "{v}");
        // No output bound: the worst case is unbounded, refused.
        if let Surface::Chat = surface {
            let (code, _, v) = h.send(surface, body(surface, "u", None), &[("x-tollgate-max-cost-usd", "1")]).await;
            assert_eq!(code, 400);
            assert!(message(&v).contains("no output bound"), "{v}");
        }
        let (code, _, v) = h.send(surface, body(surface, "u", Some(10)), &[("x-tollgate-max-cost-usd", "-1")]).await;
        assert_eq!(code, 400, "{v}");
        // Cheapest first, for this request only.
        for _ in 0..10 {
            let (code, backend, _) =
                h.send(surface, body(surface, "u", Some(10)), &[("x-tollgate-prefer", "cheapest")]).await;
            assert_eq!((code, backend.as_str()), (200, "cheap"), "{surface:?}");
        }
        let mut seen = BTreeSet::new();
        for _ in 0..60 {
            seen.insert(h.send(surface, body(surface, "u", Some(10)), &[]).await.1);
        }
        assert_eq!(seen.len(), 3, "{surface:?}: without the hint the weights apply: {seen:?}");
    }
}

#[tokio::test]
async fn a_max_cost_counts_every_choice_and_refuses_a_repeated_hint() {
    let hints = HintsPolicy { max_cost: true, prefer: vec![Preference::Cheapest] };
    let h = start(config(None, Some(hints))).await;
    // `cheap` ($1/1M each side), a mock whose default counts make one choice's worst case
    // $0.00175 (the cheapest worst case the refusal below would print); 80 choices of 100
    // output tokens are 8,000 output tokens alone, $0.008: over a $0.005 ceiling.
    let mut req = body(Surface::Chat, "u", Some(100));
    let (code, backend, v) = h.send(Surface::Chat, req.clone(), &[("x-tollgate-max-cost-usd", "0.005")]).await;
    assert_eq!((code, backend.as_str()), (200, "cheap"), "{v}");
    req["n"] = json!(80);
    let (code, _, v) = h.send(Surface::Chat, req.clone(), &[("x-tollgate-max-cost-usd", "0.005")]).await;
    assert_eq!(code, 400, "{v}");
    assert_eq!(v["error"]["code"], "max_cost_exceeded", "{v}");
    req["n"] = json!("80");
    let (code, _, v) = h.send(Surface::Chat, req, &[("x-tollgate-max-cost-usd", "0.005")]).await;
    assert_eq!((code, v["error"]["code"].as_str()), (400, Some("invalid_cost_field")), "{v}");

    // The same hint twice: neither value is used.
    for surface in SURFACES {
        let (code, _, v) = h
            .send(
                surface,
                body(surface, "u", Some(10)),
                &[("x-tollgate-max-cost-usd", "5"), ("x-tollgate-max-cost-usd", "0.0000001")],
            )
            .await;
        assert_eq!(code, 400, "{surface:?}: {v}");
        assert!(message(&v).contains("x-tollgate-max-cost-usd is sent more than once"), "{v}");
        let (code, _, v) = h
            .send(
                surface,
                body(surface, "u", Some(10)),
                &[("x-tollgate-prefer", "cheapest"), ("x-tollgate-prefer", "cheapest")],
            )
            .await;
        assert_eq!(code, 400, "{surface:?}: {v}");
    }
}
