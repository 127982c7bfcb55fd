//! The controller's own Prometheus metrics (`/metrics`), with the `tollgate_controller` prefix.
//!
//! Besides the pass counters, the last pass's decisions are exposed as gauges (what the chart's
//! alerts and dashboard read): per budget its spend and limit in USD (floats for humans; status
//! keeps the exact decimal), burn rate, window end and state (one series per state, 1 for the
//! current one, kube-state-metrics style); per route backend its decided state (for a `DryRun`
//! route: decided and reported, not applied, as in its status); per namespace the
//! config revision written and how many gateways serve it. They are encoded from one snapshot
//! replaced whole at the end of each pass ([`ControllerMetrics::observe_policy`]), so a scrape
//! never sees half a pass and a deleted object's series disappear with it. The `namespace` label
//! is the policy's namespace: the chart's ServiceMonitor scrapes the controller with
//! `honorLabels: true` so that it is not renamed `exported_namespace`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::api::{BackendState, BudgetState, ProviderBudget};
use crate::policy::{Decision, ObjectKey};
use crate::signals::GatewayTarget;

/// Label of the failure counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// Error kind ([`super::Error::metric_label`]).
    pub kind: String,
}

/// Label of the rotation counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Transition reason (`RouteRotated`, `BackendEjected`, `BudgetDeprioritized`, ...).
    pub reason: String,
}

/// Every metric of the controller.
#[derive(Debug)]
pub struct ControllerMetrics {
    registry: Registry,
    /// Duration of one reconcile pass.
    pub reconcile_duration: Histogram,
    /// Passes run.
    pub reconciles: Counter,
    /// Failures by error kind.
    pub failures: Family<KindLabel, Counter>,
    /// Policy transitions (rotations, ejections, budget escalations) by reason.
    pub rotations: Family<ReasonLabel, Counter>,
    /// Gateway reads that failed.
    pub signal_errors: Counter,
    /// Config writes that did not reach the cluster, by reason (`ConfigNotApplied`, `ConfigTooLarge`).
    pub config_not_applied: Family<ReasonLabel, Counter>,
    /// Shard ConfigMaps of a split config found missing or changed and applied again, by
    /// reason (`Missing`, `Changed`).
    pub config_shard_repairs: Family<ReasonLabel, Counter>,
    /// Gateways read in the last round.
    pub gateways: Gauge,
    /// 1 while this replica holds the leader lease.
    pub leader: Gauge,
    /// Unix time of the last successful pass.
    last_success: AtomicU64,
    /// The last pass's decisions, as gauges.
    policy: Arc<Mutex<PolicyGauges>>,
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ControllerMetrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tollgate_controller");
        let reconcile_duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register_with_unit(
            "reconcile_duration",
            "Duration of one reconcile pass (signals, policy, apply, status, events)",
            prometheus_client::registry::Unit::Seconds,
            reconcile_duration.clone(),
        );
        let reconciles = Counter::default();
        registry.register("reconciles", "Reconcile passes run", reconciles.clone());
        let failures = Family::<KindLabel, Counter>::default();
        registry.register("reconcile_failures", "Reconcile failures by error kind", failures.clone());
        let rotations = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "rotations",
            "Policy transitions (route rotations, ejections, restorations, budget actions) by reason",
            rotations.clone(),
        );
        let signal_errors = Counter::default();
        registry.register("signal_errors", "Gateway signal reads that failed", signal_errors.clone());
        let config_not_applied = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "config_not_applied",
            "Gateway config writes that did not reach the cluster (routes Ready=False), by reason",
            config_not_applied.clone(),
        );
        let config_shard_repairs = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "config_shard_repairs",
            "Shard ConfigMaps of a split gateway config found missing or changed (deleted or edited outside the controller) and applied again, by reason",
            config_shard_repairs.clone(),
        );
        let gateways = Gauge::default();
        registry.register("gateways", "Gateway pods found in the last signal round", gateways.clone());
        let leader = Gauge::default();
        registry.register("leader", "1 while this replica holds the leader lease", leader.clone());
        let policy = Arc::new(Mutex::new(PolicyGauges::default()));
        registry.register_collector(Box::new(PolicyCollector(policy.clone())));
        Self {
            registry,
            reconcile_duration,
            reconciles,
            failures,
            rotations,
            signal_errors,
            config_not_applied,
            config_shard_repairs,
            gateways,
            leader,
            last_success: AtomicU64::new(0),
            policy,
        }
    }

    /// Starts timing a pass; the duration is recorded when the guard is dropped.
    pub fn time_pass(self: &Arc<Self>) -> PassTimer {
        self.reconciles.inc();
        PassTimer { metrics: Arc::clone(self), start: Instant::now() }
    }

    /// Counts one failure.
    pub fn failure(&self, kind: &str) {
        self.failures.get_or_create(&KindLabel { kind: kind.to_string() }).inc();
    }

    /// Counts one transition.
    pub fn transition(&self, reason: &str) {
        self.rotations.get_or_create(&ReasonLabel { reason: reason.to_string() }).inc();
    }

    /// Counts one config write that did not reach the cluster.
    pub fn config_not_applied(&self, reason: &str) {
        self.config_not_applied.get_or_create(&ReasonLabel { reason: reason.to_string() }).inc();
    }

    /// Counts one shard ConfigMap applied again (`Missing` or `Changed`).
    pub fn shard_repaired(&self, reason: &str) {
        self.config_shard_repairs.get_or_create(&ReasonLabel { reason: reason.to_string() }).inc();
    }

    /// Records a successful pass at Unix time `secs`.
    pub fn success_at(&self, secs: u64) {
        self.last_success.store(secs, Ordering::Relaxed);
    }

    /// Unix time of the last successful pass (0 before the first).
    pub fn last_success(&self) -> u64 {
        self.last_success.load(Ordering::Relaxed)
    }

    /// Replaces the decision gauges with those of one pass: `decision` and the `budgets` it was
    /// computed from, the config `revisions` written per namespace, the gateway `targets` and the
    /// revision each one served when last read (`served`, by pod UID).
    pub fn observe_policy(
        &self,
        decision: &Decision,
        budgets: &[ProviderBudget],
        revisions: &BTreeMap<String, String>,
        targets: &[GatewayTarget],
        served: &BTreeMap<String, Option<String>>,
    ) {
        let next = PolicyGauges::of(decision, budgets, revisions, targets, served);
        *self.policy.lock().unwrap_or_else(PoisonError::into_inner) = next;
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// One budget's gauges.
#[derive(Clone, Debug, Default, PartialEq)]
struct BudgetGauge {
    provider: String,
    spent_usd: f64,
    limit_usd: Option<f64>,
    burn_usd_per_hour: Option<f64>,
    window_end: Option<f64>,
    state: Option<BudgetState>,
}

/// One namespace's config: the revision written and the gateways serving it.
#[derive(Clone, Debug, Default, PartialEq)]
struct ConfigGauge {
    revision: String,
    gateways: u64,
    in_sync: u64,
}

/// The decision gauges of one pass.
#[derive(Clone, Debug, Default, PartialEq)]
struct PolicyGauges {
    budgets: BTreeMap<ObjectKey, BudgetGauge>,
    /// (route, backend) → state.
    backends: BTreeMap<(ObjectKey, String), BackendState>,
    configs: BTreeMap<String, ConfigGauge>,
}

const BUDGET_STATES: [(BudgetState, &str); 4] = [
    (BudgetState::Ok, "Ok"),
    (BudgetState::Warning, "Warning"),
    (BudgetState::Deprioritized, "Deprioritized"),
    (BudgetState::Exhausted, "Exhausted"),
];

const BACKEND_STATES: [(BackendState, &str); 5] = [
    (BackendState::Active, "Active"),
    (BackendState::Ramping, "Ramping"),
    (BackendState::Ejected, "Ejected"),
    (BackendState::OverBudget, "OverBudget"),
    (BackendState::Standby, "Standby"),
];

fn decimal(s: Option<&String>) -> Option<f64> {
    s.and_then(|v| v.parse::<f64>().ok()).filter(|v| v.is_finite())
}

impl PolicyGauges {
    fn of(
        decision: &Decision,
        budgets: &[ProviderBudget],
        revisions: &BTreeMap<String, String>,
        targets: &[GatewayTarget],
        served: &BTreeMap<String, Option<String>>,
    ) -> Self {
        let mut out = PolicyGauges::default();
        for (key, d) in &decision.budgets {
            let spec = budgets.iter().find(|b| ObjectKey::of(*b) == *key).map(|b| &b.spec);
            let st = &d.status;
            out.budgets.insert(
                key.clone(),
                BudgetGauge {
                    provider: d.provider.clone(),
                    spent_usd: decimal(st.spent.as_ref()).unwrap_or(0.0),
                    limit_usd: spec.and_then(|s| decimal(Some(&s.limit))),
                    burn_usd_per_hour: decimal(st.burn_rate_per_hour.as_ref()),
                    window_end: st.window.as_ref().map(|w| w.end.0.as_millisecond() as f64 / 1000.0),
                    state: st.state,
                },
            );
        }
        for (key, d) in &decision.routes {
            for b in &d.status.backends {
                out.backends.insert((key.clone(), b.name.clone()), b.state);
            }
        }
        for (ns, rev) in revisions {
            let in_ns: Vec<&GatewayTarget> = targets.iter().filter(|t| &t.namespace == ns).collect();
            let in_sync =
                in_ns.iter().filter(|t| served.get(&t.uid).and_then(|r| r.as_deref()) == Some(rev.as_str())).count();
            out.configs.insert(
                ns.clone(),
                ConfigGauge { revision: rev.clone(), gateways: in_ns.len() as u64, in_sync: in_sync as u64 },
            );
        }
        out
    }
}

#[derive(Debug)]
struct PolicyCollector(Arc<Mutex<PolicyGauges>>);

fn gauge_family<'a>(
    encoder: &'a mut DescriptorEncoder,
    name: &'a str,
    help: &str,
) -> Result<MetricEncoder<'a>, std::fmt::Error> {
    encoder.encode_descriptor(name, help, None, MetricType::Gauge)
}

impl Collector for PolicyCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let g = self.0.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let budget = |k: &ObjectKey, b: &BudgetGauge| -> [(&'static str, String); 3] {
            [("namespace", k.namespace.clone()), ("budget", k.name.clone()), ("provider", b.provider.clone())]
        };
        let mut fam = gauge_family(
            &mut encoder,
            "budget_spent_usd",
            "Spend of each ProviderBudget in its current window, USD (status.spent is exact)",
        )?;
        for (k, b) in &g.budgets {
            ConstGauge::new(b.spent_usd).encode(fam.encode_family(&budget(k, b))?)?;
        }
        let mut fam = gauge_family(&mut encoder, "budget_limit_usd", "Limit of each ProviderBudget per window, USD")?;
        for (k, b) in &g.budgets {
            if let Some(v) = b.limit_usd {
                ConstGauge::new(v).encode(fam.encode_family(&budget(k, b))?)?;
            }
        }
        let mut fam = gauge_family(
            &mut encoder,
            "budget_burn_rate_usd_per_hour",
            "Spend rate of each ProviderBudget over its forecast lookback, USD per hour",
        )?;
        for (k, b) in &g.budgets {
            if let Some(v) = b.burn_usd_per_hour {
                ConstGauge::new(v).encode(fam.encode_family(&budget(k, b))?)?;
            }
        }
        let mut fam = gauge_family(
            &mut encoder,
            "budget_window_end_timestamp_seconds",
            "End of each ProviderBudget's current window, Unix seconds",
        )?;
        for (k, b) in &g.budgets {
            if let Some(v) = b.window_end {
                ConstGauge::new(v).encode(fam.encode_family(&budget(k, b))?)?;
            }
        }
        let mut fam = gauge_family(
            &mut encoder,
            "budget_state",
            "1 for the current state of each ProviderBudget (Ok, Warning, Deprioritized, Exhausted), 0 for the others",
        )?;
        for (k, b) in &g.budgets {
            let Some(current) = b.state else { continue };
            for (s, label) in BUDGET_STATES {
                let [a, c, d] = budget(k, b);
                let labels = [a, c, d, ("state", label.to_string())];
                ConstGauge::new(i64::from(s == current)).encode(fam.encode_family(&labels)?)?;
            }
        }
        let mut fam = gauge_family(
            &mut encoder,
            "backend_state",
            "1 for the current state of each ModelRoute backend (Active, Ramping, Ejected, OverBudget, Standby), 0 for the others",
        )?;
        for ((k, backend), current) in &g.backends {
            for (s, label) in BACKEND_STATES {
                let labels = [
                    ("namespace", k.namespace.as_str()),
                    ("route", k.name.as_str()),
                    ("backend", backend.as_str()),
                    ("state", label),
                ];
                ConstGauge::new(i64::from(s == *current)).encode(fam.encode_family(&labels)?)?;
            }
        }
        let mut fam = encoder.encode_descriptor(
            "config_revision",
            "Revision of the gateway config document last written for each namespace",
            None,
            MetricType::Info,
        )?;
        for (ns, c) in &g.configs {
            fam.encode_info(&[("namespace", ns.as_str()), ("revision", c.revision.as_str())])?;
        }
        let mut fam = gauge_family(
            &mut encoder,
            "config_gateways",
            "Gateway pods found for each namespace's config in the last pass",
        )?;
        for (ns, c) in &g.configs {
            ConstGauge::new(c.gateways).encode(fam.encode_family(&[("namespace", ns.as_str())])?)?;
        }
        let mut fam = gauge_family(
            &mut encoder,
            "config_gateways_in_sync",
            "Gateway pods of each namespace serving the config revision last written (as last read)",
        )?;
        for (ns, c) in &g.configs {
            ConstGauge::new(c.in_sync).encode(fam.encode_family(&[("namespace", ns.as_str())])?)?;
        }
        Ok(())
    }
}

/// Records a pass duration on drop.
#[derive(Debug)]
pub struct PassTimer {
    metrics: Arc<ControllerMetrics>,
    start: Instant,
}

impl Drop for PassTimer {
    fn drop(&mut self) {
        self.metrics.reconcile_duration.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::policy::testing::{Obs, Sim, backend, budget, route, t};

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn decision_gauges_follow_the_last_pass() {
        let routes = vec![route(
            "chat",
            json!({"backends": [backend("a", "openai", 50, 0), backend("b", "deepseek", 50, 0)],
                   "health": {"errorRate": {"trip": "0.20", "recover": "0.05", "window": "5m", "minRequests": 10}}}),
        )];
        let budgets = vec![budget(
            "openai-daily",
            json!({"provider": "openai", "limit": "10", "window": {"period": "Daily", "timeZone": "UTC"},
                   "thresholds": [{"percent": 50, "action": "Warn"}]}),
        )];
        let mut sim = Sim::new(routes, budgets.clone());
        let d = sim.step(t("2026-11-28T10:00:00Z"), &Obs::new().spend("openai", "6.25").req("chat", "b", 5, 20));
        let m = ControllerMetrics::new();
        let targets = [
            GatewayTarget { uid: "u1".into(), namespace: "default".into(), name: "gw-1".into(), address: None },
            GatewayTarget { uid: "u2".into(), namespace: "default".into(), name: "gw-2".into(), address: None },
        ];
        let served = BTreeMap::from([("u1".to_string(), Some("sha256:new".to_string())), ("u2".to_string(), None)]);
        let revisions = BTreeMap::from([("default".to_string(), "sha256:new".to_string())]);
        m.observe_policy(&d, &budgets, &revisions, &targets, &served);
        let text = m.encode();
        let b = "namespace=\"default\",budget=\"openai-daily\",provider=\"openai\"";
        assert_eq!(
            line(&text, &format!("tollgate_controller_budget_spent_usd{{{b}}}")),
            Some(format!("tollgate_controller_budget_spent_usd{{{b}}} 6.25").as_str()),
            "{text}"
        );
        assert!(text.contains(&format!("tollgate_controller_budget_limit_usd{{{b}}} 10.0")), "{text}");
        assert!(text.contains(&format!("tollgate_controller_budget_state{{{b},state=\"Warning\"}} 1")), "{text}");
        assert!(text.contains(&format!("tollgate_controller_budget_state{{{b},state=\"Ok\"}} 0")), "{text}");
        // Window end: the next UTC midnight.
        assert!(
            text.contains(&format!("tollgate_controller_budget_window_end_timestamp_seconds{{{b}}} 1795910400")),
            "{text}"
        );
        let r = "namespace=\"default\",route=\"chat\"";
        assert!(text.contains(&format!("tollgate_controller_backend_state{{{r},backend=\"b\",state=\"Ejected\"}} 1")));
        assert!(text.contains(&format!("tollgate_controller_backend_state{{{r},backend=\"a\",state=\"Active\"}} 1")));
        assert!(text.contains(&format!("tollgate_controller_backend_state{{{r},backend=\"a\",state=\"Ejected\"}} 0")));
        assert!(
            text.contains("tollgate_controller_config_revision_info{namespace=\"default\",revision=\"sha256:new\"} 1")
        );
        assert!(text.contains("tollgate_controller_config_gateways{namespace=\"default\"} 2"));
        assert!(text.contains("tollgate_controller_config_gateways_in_sync{namespace=\"default\"} 1"));

        // The next pass replaces everything: a deleted budget's series disappear.
        let mut sim = Sim::new(vec![], vec![]);
        let d = sim.idle(t("2026-11-28T10:01:00Z"));
        m.observe_policy(&d, &[], &BTreeMap::new(), &[], &BTreeMap::new());
        let text = m.encode();
        assert!(!text.contains("budget=\"openai-daily\""), "{text}");
        assert!(!text.contains("route=\"chat\""), "{text}");
    }
}
