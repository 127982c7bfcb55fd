//! The signal contract between a real gateway and the controller: a `tollgate::gateway::Gateway`
//! on loopback serves traffic on mock backends; the controller's scraper and its Prometheus
//! client read its counters, and the tracker turns them into exactly the spend the gateway's
//! meter holds (nano-USD floor of the exact pico-dollar total).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tollgate::api::validate::{Manifests, parse_manifests};
use tollgate::gateway::{Gateway, GatewayOptions};
use tollgate::policy::{BackendKey, Money};
use tollgate::signals::prometheus::PrometheusSignals;
use tollgate::signals::scrape::ScrapeSignals;
use tollgate::signals::{GatewayReading, GatewayTarget, Signals, Tracker};

const ROUTES: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: ModelRoute
metadata: {name: chat, namespace: team-a}
spec:
  backends:
    - name: openai-mini
      provider: openai
      model: gpt-5-mini
      endpoint:
        mock: {latency: 1ms, inputTokens: 1234, cachedInputTokens: 200, cacheWriteTokens: 0, outputTokens: 321, reasoningTokens: 7}
      pricing: {input: "2.50", cachedInput: "1.25", output: "10.00"}
"#;

async fn serve(router: axum::Router) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, router).await });
    port
}

async fn chat(port: u16, n: usize) {
    let http = reqwest::Client::new();
    for _ in 0..n {
        let r = http
            .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
            .json(&json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }
}

fn nanos(m: Money) -> u64 {
    u64::try_from(m.picos() / 1000).unwrap()
}

#[tokio::test]
async fn scrape_and_prometheus_read_a_real_gateway_exactly() {
    let mut manifests = Manifests::default();
    parse_manifests("routes", ROUTES, &mut manifests).unwrap();
    let cfg = tollgate::render::render_manifests(&manifests, "team-a", jiff::Timestamp::now()).unwrap();
    let gw = Gateway::new(Some(cfg.clone()), GatewayOptions::default()).unwrap();
    let api = serve(gw.router()).await;
    let metrics = serve(gw.metrics_router()).await;
    let target = GatewayTarget {
        uid: "uid-1".into(),
        namespace: "team-a".into(),
        name: "gateway-0".into(),
        address: Some(format!("127.0.0.1:{metrics}")),
    };
    let targets = [target];
    let scrape = ScrapeSignals::new(Duration::from_secs(5)).unwrap();
    let mut tracker = Tracker::new();

    chat(api, 3).await;
    let readings = scrape.collect(&targets).await;
    let reading = readings["uid-1"].clone().unwrap();
    assert_eq!(reading.revision.as_deref(), Some(cfg.revision.as_str()));
    let snap = gw.meter().snapshot();
    assert_eq!(reading.cost_matching("openai", &[]), nanos(snap.total_cost()));
    let first = tracker.observe(&targets, readings, &BTreeMap::new());
    assert_eq!(first.first_seen, ["uid-1"]);
    // First sight: all spend since the gateway started counts.
    assert_eq!(
        first.observations.spend.values().copied().sum::<Money>(),
        Money::from_picos(i128::from(nanos(snap.total_cost())) * 1000)
    );

    chat(api, 2).await;
    let second = tracker.observe(&targets, scrape.collect(&targets).await, &BTreeMap::new());
    let after = gw.meter().snapshot();
    let spent: Money = second.observations.spend.values().copied().sum();
    assert_eq!(spent, Money::from_picos(i128::from(nanos(after.total_cost()) - nanos(snap.total_cost())) * 1000));
    let b = &second.observations.backends[&BackendKey::new("team-a", "chat", "openai-mini")];
    assert_eq!((b.requests(), b.errors()), (2, 0));
    assert_eq!(b.latency_count, 2);

    // The same counters through a Prometheus server's HTTP API (target labels added).
    let body = reqwest::get(format!("http://127.0.0.1:{metrics}/metrics")).await.unwrap().text().await.unwrap();
    let result: Vec<Value> = tollgate::signals::text::samples(&body)
        .into_iter()
        .map(|s| {
            let mut metric: serde_json::Map<String, Value> =
                s.labels.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
            metric.insert("__name__".into(), json!(s.metric));
            metric.insert("namespace".into(), json!("team-a"));
            metric.insert("pod".into(), json!("gateway-0"));
            json!({"metric": metric, "value": [1.7e9, s.value]})
        })
        .collect();
    let queries: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = queries.clone();
    let prom = axum::Router::new().route(
        "/api/v1/query",
        axum::routing::get(move |q: axum::extract::Query<BTreeMap<String, String>>| {
            seen.lock().unwrap().push(q.0.get("query").cloned().unwrap_or_default());
            let result = result.clone();
            async move { axum::Json(json!({"status": "success", "data": {"resultType": "vector", "result": result}})) }
        }),
    );
    let prom_port = serve(prom).await;
    let prometheus = PrometheusSignals::new(&format!("http://127.0.0.1:{prom_port}"), Duration::from_secs(5)).unwrap();
    let via_prom: GatewayReading = prometheus.collect(&targets).await["uid-1"].clone().unwrap();
    let via_scrape: GatewayReading = GatewayReading::from_text(&body);
    assert_eq!(via_prom, via_scrape);
    assert_eq!(queries.lock().unwrap().as_slice(), [PrometheusSignals::query()]);
}
