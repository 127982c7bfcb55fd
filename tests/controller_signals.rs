//! The signal contract between a real gateway and the controller: a `tollgate::gateway::Gateway`
//! on loopback serves traffic on mock backends; the controller's scraper and its Prometheus
//! client read its counters, and the tracker turns them into exactly the spend the gateway's
//! meter holds (nano-USD floor of the exact pico-dollar total).
//!
//! The Prometheus mode talks to a fake Prometheus that parses the PromQL it receives (with the
//! `promql-parser` crate) and evaluates it over the series it holds, so a wrong metric name,
//! label or matcher in the controller's query fails here; the exact query text is asserted
//! against a hand-written copy.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::IntoResponse;
use promql_parser::label::Matcher;
use promql_parser::parser::Expr;
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
    // The health latency histogram: exact bucket deltas, two answers.
    assert_eq!(b.latency_le.last().copied(), Some(2));

    // The same counters through a Prometheus server's HTTP API: the fake holds every series of
    // the exposition (with the target labels Prometheus adds) and answers the query it receives.
    let body = reqwest::get(format!("http://127.0.0.1:{metrics}/metrics")).await.unwrap().text().await.unwrap();
    let mut series = exposition_series(&body, "team-a", "gateway-0");
    // Another pod's counters, and a series whose name only *contains* a contract name: neither
    // may reach this pod's reading.
    series.extend(exposition_series(&body, "team-b", "gateway-0"));
    series.push(sample("tollgate_requests_total_created", &[("namespace", "team-a"), ("pod", "gateway-0")], "1"));
    let prom = FakePrometheus::start(series).await;
    let prometheus = PrometheusSignals::new(&prom.url(), Duration::from_secs(5)).unwrap();
    let via_prom: GatewayReading = prometheus.collect(&targets).await["uid-1"].clone().unwrap();
    let via_scrape: GatewayReading = GatewayReading::from_text(&body);
    assert_eq!(via_prom, via_scrape);
    assert_eq!(via_prom.latency_le, via_scrape.latency_le);
    assert!(!via_prom.latency_le.is_empty());
    assert_eq!(via_prom.tokens, via_scrape.tokens);
    // The fake answered from its own evaluation: exactly the seven samples the controller reads
    // (names written out by hand), for both pods, and nothing else.
    let answered = prom.answered_names();
    assert_eq!(
        answered,
        BTreeSet::from([
            "tollgate_config_revision_info".to_string(),
            "tollgate_cost_nanousd_total".to_string(),
            "tollgate_health_latency_seconds_bucket".to_string(),
            "tollgate_request_duration_seconds_count".to_string(),
            "tollgate_request_duration_seconds_sum".to_string(),
            "tollgate_requests_total".to_string(),
            "tollgate_tokens_total".to_string(),
        ])
    );
}

// ---------------------------------------------------------------------------------------------
// A fake Prometheus that checks the PromQL it receives
// ---------------------------------------------------------------------------------------------

/// One stored series: labels (with `__name__`) and the sample value as text.
#[derive(Clone, Debug)]
struct Series {
    labels: BTreeMap<String, String>,
    value: String,
}

fn sample(name: &str, labels: &[(&str, &str)], value: &str) -> Series {
    let mut l: BTreeMap<String, String> = labels.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect();
    l.insert("__name__".into(), name.into());
    Series { labels: l, value: value.into() }
}

/// Every sample of an exposition, as Prometheus stores it after scraping `namespace`/`pod`.
fn exposition_series(body: &str, namespace: &str, pod: &str) -> Vec<Series> {
    tollgate::signals::text::samples(body)
        .into_iter()
        .map(|s| {
            let mut labels = s.labels;
            labels.insert("__name__".into(), s.metric);
            labels.insert("namespace".into(), namespace.into());
            labels.insert("pod".into(), pod.into());
            labels.insert("job".into(), "tollgate-gateway".into());
            Series { labels, value: s.value }
        })
        .collect()
}

/// Answers `GET /api/v1/query` by parsing the query with a PromQL parser and evaluating it over
/// the series it holds. Only the shape the controller sends is evaluated: one instant vector
/// selector with label matchers (`=`, `!=`, `=~`, `!~`; regexes anchored as Prometheus does),
/// without offset or `@`. Anything else (syntax errors, functions, ranges, operators) gets
/// Prometheus' answer to a bad query: HTTP 400 with `errorType: bad_data`.
struct FakePrometheus {
    port: u16,
    state: Arc<FakeState>,
}

#[derive(Default)]
struct FakeState {
    series: Vec<Series>,
    queries: Mutex<Vec<String>>,
    answered: Mutex<BTreeSet<String>>,
}

fn bad_data(error: String) -> axum::response::Response {
    let body = json!({"status": "error", "errorType": "bad_data", "error": error});
    (axum::http::StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}

fn matches(m: &Matcher, labels: &BTreeMap<String, String>) -> bool {
    // A missing label matches as the empty string, as in Prometheus.
    m.is_match(labels.get(&m.name).map_or("", String::as_str))
}

impl FakeState {
    fn evaluate(&self, query: &str) -> Result<Vec<Value>, String> {
        let expr = promql_parser::parser::parse(query).map_err(|e| format!("invalid parameter \"query\": {e}"))?;
        let Expr::VectorSelector(sel) = expr else {
            return Err(format!("fake Prometheus evaluates only instant vector selectors, not {query:?}"));
        };
        if sel.offset.is_some() || sel.at.is_some() || !sel.matchers.or_matchers.is_empty() {
            return Err(format!("fake Prometheus evaluates no offset, @ or `or` matchers: {query:?}"));
        }
        let mut out = Vec::new();
        for s in &self.series {
            let name_ok = sel.name.as_ref().is_none_or(|n| s.labels.get("__name__") == Some(n));
            if name_ok && sel.matchers.matchers.iter().all(|m| matches(m, &s.labels)) {
                if let Some(n) = s.labels.get("__name__") {
                    self.answered.lock().unwrap().insert(n.clone());
                }
                out.push(json!({"metric": s.labels, "value": [1.7e9, s.value]}));
            }
        }
        Ok(out)
    }
}

impl FakePrometheus {
    async fn start(series: Vec<Series>) -> Self {
        let state = Arc::new(FakeState { series, ..FakeState::default() });
        let st = state.clone();
        let router = axum::Router::new().route(
            "/api/v1/query",
            axum::routing::get(move |q: axum::extract::Query<BTreeMap<String, String>>| {
                let st = st.clone();
                async move {
                    let Some(query) = q.0.get("query").cloned() else {
                        return bad_data("invalid parameter \"query\": no query".into());
                    };
                    st.queries.lock().unwrap().push(query.clone());
                    match st.evaluate(&query) {
                        Ok(result) => {
                            axum::Json(json!({"status": "success", "data": {"resultType": "vector", "result": result}}))
                                .into_response()
                        }
                        Err(e) => bad_data(e),
                    }
                }
            }),
        );
        let port = serve(router).await;
        Self { port, state }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn queries(&self) -> Vec<String> {
        self.state.queries.lock().unwrap().clone()
    }

    fn answered_names(&self) -> BTreeSet<String> {
        self.state.answered.lock().unwrap().clone()
    }
}

/// The PromQL the controller sends, written out by hand.
const CONTROLLER_QUERY: &str = "{__name__=~\"tollgate_requests_total|tollgate_cost_nanousd_total|tollgate_tokens_total|\
tollgate_request_duration_seconds_sum|tollgate_request_duration_seconds_count|\
tollgate_health_latency_seconds_bucket|tollgate_config_revision_info\"}";

/// Two budgets of one pod's spend, one without `models` and one with: the controller sends the
/// same single query for both (it filters by provider and models itself), and the checkpoint of
/// each covers exactly its series.
#[tokio::test]
async fn the_promql_sent_is_exact_for_budgets_with_and_without_models() {
    let pod = [("namespace", "team-a"), ("pod", "gateway-0")];
    let key = |model: &'static str| {
        let mut l = vec![("route", "chat"), ("backend", model), ("provider", "openai"), ("model", model)];
        l.extend(pod);
        l
    };
    let series = vec![
        sample("tollgate_cost_nanousd_total", &key("gpt-5-mini"), "1500"),
        sample("tollgate_cost_nanousd_total", &key("gpt-5"), "4000"),
        sample("tollgate_requests_total", &[key("gpt-5").as_slice(), &[("outcome", "ok")]].concat(), "3"),
        sample("tollgate_config_revision_info", &[pod.as_slice(), &[("revision", "sha256:1")]].concat(), "1"),
    ];
    let prom = FakePrometheus::start(series).await;
    let prometheus = PrometheusSignals::new(&prom.url(), Duration::from_secs(5)).unwrap();
    let targets =
        [GatewayTarget { uid: "uid-1".into(), namespace: "team-a".into(), name: "gateway-0".into(), address: None }];
    let mut tracker = Tracker::new();
    tracker.observe(&targets, prometheus.collect(&targets).await, &BTreeMap::new());
    // Budget without models: every openai series. With models: only those.
    assert_eq!(tracker.checkpoint("uid-1", "team-a", "openai", &[]), Some(5500));
    assert_eq!(tracker.checkpoint("uid-1", "team-a", "openai", &["gpt-5-mini".to_string()]), Some(1500));
    assert_eq!(tracker.checkpoint("uid-1", "team-a", "openai", &["gpt-5".to_string()]), Some(4000));
    tracker.observe(&targets, prometheus.collect(&targets).await, &BTreeMap::new());
    assert_eq!(prom.queries(), [CONTROLLER_QUERY, CONTROLLER_QUERY]);
    assert_eq!(PrometheusSignals::query(), CONTROLLER_QUERY);
}

/// The fake is strict: a wrong metric name finds nothing, a wrong matcher finds nothing, and a
/// query of another shape is refused as Prometheus refuses a bad one.
#[tokio::test]
async fn the_fake_prometheus_checks_names_matchers_and_shape() {
    let pod = [("namespace", "team-a"), ("pod", "gateway-0")];
    let series = vec![
        sample("tollgate_cost_nanousd_total", &[pod.as_slice(), &[("provider", "openai")]].concat(), "7"),
        sample("tollgate_requests_total", &[pod.as_slice(), &[("outcome", "ok")]].concat(), "1"),
    ];
    let prom = FakePrometheus::start(series).await;
    let http = reqwest::Client::new();
    let ask = |q: &'static str| {
        let http = http.clone();
        let url = format!("{}/api/v1/query", prom.url());
        async move {
            let r = http.get(url).query(&[("query", q)]).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    let count = |v: &Value| v["data"]["result"].as_array().map_or(0, Vec::len);
    let (s, v) = ask(r#"{__name__=~"tollgate_cost_nanousd_total|tollgate_requests_total"}"#).await;
    assert_eq!((s, count(&v)), (200, 2));
    // Regexes are anchored: a prefix does not match.
    let (s, v) = ask(r#"{__name__=~"tollgate_cost"}"#).await;
    assert_eq!((s, count(&v)), (200, 0));
    // A misspelt name (singular) finds nothing.
    let (s, v) = ask(r#"{__name__=~"tollgate_request_total"}"#).await;
    assert_eq!((s, count(&v)), (200, 0));
    // Label matchers are applied.
    let (s, v) = ask(r#"tollgate_cost_nanousd_total{provider="anthropic"}"#).await;
    assert_eq!((s, count(&v)), (200, 0));
    let (s, v) = ask(r#"tollgate_cost_nanousd_total{provider!="anthropic",namespace="team-a"}"#).await;
    assert_eq!((s, count(&v)), (200, 1));
    // Other shapes and syntax errors: 400 bad_data, like Prometheus.
    for q in [
        r#"rate(tollgate_requests_total[5m])"#,
        r#"sum(tollgate_requests_total)"#,
        r#"tollgate_requests_total offset 5m"#,
        r#"{__name__=~"tollgate_requests_total""#,
        r#"{__name__=~""}"#,
    ] {
        let (s, v) = ask(q).await;
        assert_eq!((s, v["status"].as_str(), v["errorType"].as_str()), (400, Some("error"), Some("bad_data")), "{q}");
    }
}
