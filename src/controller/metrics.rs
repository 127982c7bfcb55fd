//! The controller's own Prometheus metrics (`/metrics`), with the `tollgate_controller` prefix.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

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
    /// Gateways read in the last round.
    pub gateways: Gauge,
    /// 1 while this replica holds the leader lease.
    pub leader: Gauge,
    /// Unix time of the last successful pass.
    last_success: AtomicU64,
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
        let gateways = Gauge::default();
        registry.register("gateways", "Gateway pods found in the last signal round", gateways.clone());
        let leader = Gauge::default();
        registry.register("leader", "1 while this replica holds the leader lease", leader.clone());
        Self {
            registry,
            reconcile_duration,
            reconciles,
            failures,
            rotations,
            signal_errors,
            gateways,
            leader,
            last_success: AtomicU64::new(0),
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

    /// Records a successful pass at Unix time `secs`.
    pub fn success_at(&self, secs: u64) {
        self.last_success.store(secs, Ordering::Relaxed);
    }

    /// Unix time of the last successful pass (0 before the first).
    pub fn last_success(&self) -> u64 {
        self.last_success.load(Ordering::Relaxed)
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
