//! `--signals prometheus=URL`: read the gateways' counters from a Prometheus server (for large
//! fleets, where scraping every pod from the controller is not wanted).
//!
//! One instant PromQL query per round selects the counters of the signal contract for every
//! gateway pod (identified by the `namespace` and `pod` target labels that Kubernetes service
//! discovery and the Prometheus Operator's ServiceMonitor/PodMonitor attach). The controller
//! then computes deltas exactly as for scraping, with the same counter-reset detection and spend
//! checkpoints: `increase()` over the interval would extrapolate and return fractions, which
//! money cannot take (Prometheus stores samples as float64, so the nano-USD counter is exact up
//! to 2^53 nano-USD ≈ 9 million USD per gateway pod).

use std::collections::BTreeMap;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde::Deserialize;

use super::contract::READ_BY_CONTROLLER;
use super::{GatewayReading, GatewayTarget, ReadingResult, Signals};

/// Reads gateway counters from Prometheus' HTTP API (`/api/v1/query`).
#[derive(Clone, Debug)]
pub struct PrometheusSignals {
    client: reqwest::Client,
    base: String,
    /// Target label holding the pod's namespace.
    pub namespace_label: String,
    /// Target label holding the pod's name.
    pub pod_label: String,
}

#[derive(Deserialize)]
struct ApiResponse {
    status: String,
    #[serde(default)]
    data: Option<ApiData>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiData {
    result_type: String,
    result: Vec<VectorSample>,
}

#[derive(Deserialize)]
struct VectorSample {
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

impl PrometheusSignals {
    /// A client of the Prometheus server at `base` (e.g. `http://prometheus:9090`).
    pub fn new(base: &str, timeout: Duration) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder().timeout(timeout).build()?;
        Ok(Self {
            client,
            base: base.trim_end_matches('/').to_string(),
            namespace_label: "namespace".into(),
            pod_label: "pod".into(),
        })
    }

    /// The PromQL selecting every sample the controller reads ([`READ_BY_CONTROLLER`]): one
    /// instant vector selector on `__name__` (Prometheus anchors the regex at both ends). The
    /// same query serves every budget and route: the controller filters by provider and models
    /// itself, from the `provider` and `model` labels of the answer.
    pub fn query() -> String {
        format!("{{__name__=~\"{}\"}}", READ_BY_CONTROLLER.join("|"))
    }

    async fn fetch(&self) -> Result<Vec<VectorSample>, String> {
        let url = format!("{}/api/v1/query", self.base);
        let resp = self
            .client
            .get(&url)
            .query(&[("query", Self::query())])
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = resp.status();
        let body: ApiResponse = resp.json().await.map_err(|e| format!("GET {url}: HTTP {status}: {e}"))?;
        if body.status != "success" {
            return Err(format!("GET {url}: {}", body.error.unwrap_or(body.status)));
        }
        let data = body.data.ok_or_else(|| format!("GET {url}: no data"))?;
        if data.result_type != "vector" {
            return Err(format!("GET {url}: unexpected result type {}", data.result_type));
        }
        Ok(data.result)
    }

    /// Groups samples by the target they belong to.
    fn readings(&self, samples: Vec<VectorSample>, targets: &[GatewayTarget]) -> BTreeMap<String, ReadingResult> {
        let by_pod: BTreeMap<(&str, &str), &str> =
            targets.iter().map(|t| ((t.namespace.as_str(), t.name.as_str()), t.uid.as_str())).collect();
        let mut out: BTreeMap<String, GatewayReading> = BTreeMap::new();
        for s in samples {
            let (Some(ns), Some(pod)) = (s.metric.get(&self.namespace_label), s.metric.get(&self.pod_label)) else {
                continue;
            };
            let Some(uid) = by_pod.get(&(ns.as_str(), pod.as_str())) else {
                continue;
            };
            let Some(name) = s.metric.get("__name__") else {
                continue;
            };
            out.entry((*uid).to_string()).or_default().add_sample(name, &s.metric, &s.value.1);
        }
        targets
            .iter()
            .map(|t| {
                let r = out
                    .remove(&t.uid)
                    .ok_or_else(|| format!("Prometheus has no series for pod {}/{}", t.namespace, t.name));
                (t.uid.clone(), r)
            })
            .collect()
    }
}

impl Signals for PrometheusSignals {
    fn describe(&self) -> String {
        format!("prometheus={}", self.base)
    }

    fn collect<'a>(&'a self, targets: &'a [GatewayTarget]) -> BoxFuture<'a, BTreeMap<String, ReadingResult>> {
        async move {
            if targets.is_empty() {
                return BTreeMap::new();
            }
            match self.fetch().await {
                Ok(samples) => self.readings(samples, targets),
                Err(e) => targets.iter().map(|t| (t.uid.clone(), Err(e.clone()))).collect(),
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_health_latency_buckets_exactly() {
        let p = PrometheusSignals::new("http://prom:9090", Duration::from_secs(1)).unwrap();
        let bucket = |le: &str, v: &str| {
            serde_json::json!({"metric": {"__name__": "tollgate_health_latency_seconds_bucket", "namespace": "a",
                "pod": "gw-1", "route": "chat", "backend": "slow", "provider": "openai", "model": "m", "le": le},
                "value": [1.0, v]})
        };
        // Prometheus may write bounds as scraped (`1.0`) or normalized (`1`); values as text.
        let result = serde_json::json!([
            bucket("0.5", "2"),
            bucket("1", "3"),
            bucket("2.5", "3"),
            bucket("5.0", "40"),
            bucket("+Inf", "41"),
            bucket("0.2", "99")
        ]);
        let samples: Vec<VectorSample> = serde_json::from_value(result).unwrap();
        let targets = [GatewayTarget { uid: "u1".into(), namespace: "a".into(), name: "gw-1".into(), address: None }];
        let r = p.readings(samples, &targets);
        let le = &r["u1"].as_ref().unwrap().latency_le[&crate::signals::SeriesKey::new("chat", "slow", "openai", "m")];
        assert_eq!(le.len(), crate::signals::contract::LATENCY_BUCKETS);
        // Indexes: 500ms = 6, 1s = 7, 2.5s = 8, 5s = 9, +Inf = 15; the unknown bound 0.2 is ignored.
        assert_eq!((le[5], le[6], le[7], le[8], le[9], le[15]), (0, 2, 3, 3, 40, 41));
        assert_eq!(crate::policy::latency::p95(&le[..]), Some(crate::policy::latency::P95::AtMost(5_000)));
    }

    #[test]
    fn groups_vector_samples_by_pod() {
        let p = PrometheusSignals::new("http://prom:9090/", Duration::from_secs(1)).unwrap();
        let body = serde_json::json!({
            "status": "success",
            "data": {"resultType": "vector", "result": [
                {"metric": {"__name__": "tollgate_cost_nanousd_total", "namespace": "a", "pod": "gw-1",
                            "route": "chat", "backend": "x", "provider": "openai", "model": "m"},
                 "value": [1.0, "1500"]},
                {"metric": {"__name__": "tollgate_config_revision_info", "namespace": "a", "pod": "gw-1",
                            "revision": "sha256:1"}, "value": [1.0, "1"]},
                {"metric": {"__name__": "tollgate_cost_nanousd_total", "namespace": "b", "pod": "other",
                            "route": "chat", "backend": "x", "provider": "openai", "model": "m"},
                 "value": [1.0, "7"]}
            ]}
        });
        let resp: ApiResponse = serde_json::from_value(body).unwrap();
        let targets = [
            GatewayTarget { uid: "u1".into(), namespace: "a".into(), name: "gw-1".into(), address: None },
            GatewayTarget { uid: "u2".into(), namespace: "a".into(), name: "gw-2".into(), address: None },
        ];
        let r = p.readings(resp.data.unwrap().result, &targets);
        let u1 = r["u1"].as_ref().unwrap();
        assert_eq!(u1.cost_matching("openai", &[]), 1500);
        assert_eq!(u1.revision.as_deref(), Some("sha256:1"));
        assert!(r["u2"].is_err());
        // Written out by hand: a renamed metric in the contract must show up here.
        assert_eq!(
            PrometheusSignals::query(),
            "{__name__=~\"tollgate_requests_total|tollgate_cost_nanousd_total|tollgate_tokens_total|\
             tollgate_request_duration_seconds_sum|tollgate_request_duration_seconds_count|\
             tollgate_health_latency_seconds_bucket|tollgate_config_revision_info\"}"
        );
    }
}
