//! Metering: the exact in-process [`Meter`] (what `tollgate local` diffs into
//! [`Observations`]) and its Prometheus exposition (the signal contract the controller scrapes).
//!
//! Counters of the signal contract are rendered at scrape time from the meter's exact state, so
//! `tollgate_cost_nanousd_total` is exactly `floor(total pico-dollars / 1000)` and
//! `tollgate_cost_usd_total` is a float computed from the exact total (no float accumulation).
//! Histograms are ordinary prometheus-client families, but a backend's series are created at
//! its first observation ([`LazyHistogram`]): an idle backend exports none. Idle series of
//! the meter export only what the controller reads (`tollgate_requests_total{outcome="ok"}`
//! and `tollgate_cost_nanousd_total` at 0, so a Prometheus `increase()` sees their first
//! step); their token and float cost series appear with their first non-zero value.
//!
//! The health latency histogram (`tollgate_health_latency_seconds`: time to the first chunk of
//! a streamed answer, total duration otherwise, successful attempts only) is counted exactly in
//! the meter, so `local` and the controller's readers get the same integer bucket counts; a
//! series exports it from its first successful attempt on (a bucket holds values ≤ its bound).
//!
//! A series of a route or backend that a reload removed is retired, not dropped at once: once
//! nothing holds its cell but the meter (no served document, no request in flight) it is still
//! exported for [`Metrics::retention`], so every scraper reads its last values; then it leaves
//! the meter and the histogram families (checked at each scrape and each reload). `/metrics` is bounded by the documents served recently, not by
//! every document ever served. A key served again before that keeps its series and counts on.
//!
//! Every metric and label name comes from [`crate::signals::contract`] (the controller reads
//! with the same names); snapshot deltas go through [`crate::signals::delta`] (the controller's
//! tracker and `tollgate local` use the same functions). The OpenTelemetry gen_ai families
//! beside them are in [`gen_ai`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use crate::policy::money::{Money, PICOS_PER_USD};
use crate::policy::{Observations, Outcome};
use crate::pricing::{TokenCounts, TokenKind};
use crate::signals::contract::{self, SeriesKey};
use crate::signals::delta::{self, SeriesTotals};

pub(crate) mod gen_ai;

use gen_ai::GenAi;
pub(crate) use gen_ai::GenAiBackend;

/// Identity of a metered series: the contract's [`SeriesKey`] (route + backend, with the
/// provider and upstream model the backend had when it served; a reload may change them).
pub type MeterKey = SeriesKey;

/// Totals of one series since the gateway started. Every field only grows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterEntry {
    /// Upstream attempts by outcome (budget refusals included, although they never reached
    /// upstream).
    pub outcomes: BTreeMap<Outcome, u64>,
    /// Sum of the latency of successful attempts (time to the first byte of the answer), µs.
    pub latency_us_sum: u64,
    /// Number of successful attempts in `latency_us_sum`.
    pub latency_count: u64,
    /// The same latencies by bucket of [`contract::LATENCY_BOUNDS_MS`] then `+Inf`, not
    /// cumulative (empty until the first success).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latency_buckets: Vec<u64>,
    /// Tokens billed, by kind.
    pub tokens: TokenCounts,
    /// Exact cost of those tokens.
    pub cost: Money,
    /// Successful responses whose usage could not be read, by reason.
    pub usage_missing: BTreeMap<String, u64>,
    /// Estimated cost of the answers counted in `usage_missing` (kept apart from `cost`, which
    /// is exact).
    #[serde(default)]
    pub estimated_cost: Money,
}

impl MeterEntry {
    /// Whether nothing was ever recorded (no attempt, no token, no cost).
    pub fn is_idle(&self) -> bool {
        self.outcomes.values().all(|n| *n == 0)
            && self.tokens == TokenCounts::default()
            && self.cost == Money::ZERO
            && self.usage_missing.is_empty()
            && self.estimated_cost == Money::ZERO
    }

    /// Attempts with this outcome.
    pub fn count(&self, outcome: Outcome) -> u64 {
        self.outcomes.get(&outcome).copied().unwrap_or(0)
    }

    /// Responses with missing usage, all reasons.
    pub fn usage_missing_total(&self) -> u64 {
        self.usage_missing.values().sum()
    }

    /// The cumulative totals [`delta`] diffs: latency as whole milliseconds of the cumulative
    /// microsecond sum, spend exact.
    pub fn totals(&self) -> SeriesTotals {
        SeriesTotals {
            outcomes: self.outcomes.clone(),
            latency_ms_sum: self.latency_us_sum / 1000,
            latency_count: self.latency_count,
            latency_le: self
                .latency_buckets
                .iter()
                .scan(0u64, |c, n| {
                    *c = c.saturating_add(*n);
                    Some(*c)
                })
                .collect(),
            tokens: self.tokens,
            spend: self.cost,
        }
    }

    fn observe_bucket(&mut self, us: u64) {
        if self.latency_buckets.is_empty() {
            self.latency_buckets = vec![0; contract::LATENCY_BUCKETS];
        }
        let i = contract::LATENCY_BOUNDS_MS
            .iter()
            .position(|ms| us <= ms.saturating_mul(1000))
            .unwrap_or(contract::LATENCY_BOUNDS_MS.len());
        self.latency_buckets[i] = self.latency_buckets[i].saturating_add(1);
    }
}

fn add_tokens(a: &mut TokenCounts, b: &TokenCounts) {
    a.add(b);
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One series: its totals and the latency estimate used by `LowestLatency`.
#[derive(Debug)]
pub(crate) struct MeterCell {
    pub(crate) key: MeterKey,
    entry: Mutex<MeterEntry>,
    /// Exponentially weighted moving average of the successful latency, µs (0 = never seen).
    ewma_us: AtomicU64,
}

impl MeterCell {
    fn new(key: MeterKey) -> Self {
        Self { key, entry: Mutex::new(MeterEntry::default()), ewma_us: AtomicU64::new(0) }
    }

    /// Counts one attempt.
    pub(crate) fn record_outcome(&self, outcome: Outcome, latency: Option<Duration>) {
        let mut e = lock(&self.entry);
        *e.outcomes.entry(outcome).or_insert(0) += 1;
        if let Some(l) = latency {
            let us = u64::try_from(l.as_micros()).unwrap_or(u64::MAX);
            e.latency_us_sum = e.latency_us_sum.saturating_add(us);
            e.latency_count += 1;
            e.observe_bucket(us);
            drop(e);
            self.observe_latency(us);
        }
    }

    /// Bills the usage of one successful response. Refused (nothing recorded) when a total
    /// would pass what its exported counter can hold (`u64` tokens, `u64` nano-USD): a counter
    /// never saturates silently.
    pub(crate) fn record_usage(&self, tokens: &TokenCounts, cost: Money) -> Result<(), String> {
        let mut e = lock(&self.entry);
        let mut sum = e.tokens;
        for kind in TokenKind::ALL {
            let total = sum.get(kind).checked_add(tokens.get(kind));
            let Some(total) = total else {
                return Err(format!("the {} token total would overflow its counter", kind.label()));
            };
            *sum.get_mut(kind) = total;
        }
        let picos = e.cost.picos().checked_add(cost.picos()).filter(|p| *p >= 0 && *p / 1000 <= i128::from(u64::MAX));
        let Some(picos) = picos else {
            return Err("the cost total would overflow its nano-USD counter".into());
        };
        e.tokens = sum;
        e.cost = Money::from_picos(picos);
        Ok(())
    }

    /// Adds the estimated cost of an answer whose usage could not be read.
    pub(crate) fn record_estimate(&self, cost: Money) {
        let mut e = lock(&self.entry);
        let picos = e.estimated_cost.picos().saturating_add(cost.picos()).min(i128::from(u64::MAX) * 1000);
        e.estimated_cost = Money::from_picos(picos);
    }

    /// Counts a successful response without usable usage.
    pub(crate) fn record_usage_missing(&self, reason: &str) {
        let mut e = lock(&self.entry);
        match e.usage_missing.get_mut(reason) {
            Some(n) => *n += 1,
            None => {
                e.usage_missing.insert(reason.to_string(), 1);
            }
        }
    }

    fn observe_latency(&self, us: u64) {
        let old = self.ewma_us.load(Ordering::Relaxed);
        let new = if old == 0 { us.max(1) } else { (old.saturating_mul(4) / 5).saturating_add(us / 5).max(1) };
        self.ewma_us.store(new, Ordering::Relaxed);
    }

    /// The latency estimate, if any success was seen.
    pub(crate) fn latency_estimate_us(&self) -> Option<u64> {
        match self.ewma_us.load(Ordering::Relaxed) {
            0 => None,
            v => Some(v),
        }
    }

    fn snapshot(&self) -> MeterEntry {
        lock(&self.entry).clone()
    }

    /// Tokens billed so far, by kind.
    pub(crate) fn tokens(&self) -> TokenCounts {
        lock(&self.entry).tokens
    }
}

/// The exact in-process meter: every attempt, token and pico-dollar the gateway counted since
/// it started. Cheap to snapshot; [`MeterSnapshot::to_observations_since`] turns two snapshots
/// into the policy's [`Observations`].
#[derive(Debug, Default)]
pub struct Meter {
    cells: RwLock<BTreeMap<MeterKey, Arc<MeterCell>>>,
    /// Series held by nothing but the meter, since when.
    retired: Mutex<BTreeMap<MeterKey, Instant>>,
    reload_errors: AtomicU64,
    revision: RwLock<Option<String>>,
}

impl Meter {
    /// The cell of a series, created on first use.
    pub(crate) fn cell(&self, key: &MeterKey) -> Arc<MeterCell> {
        if let Some(c) = self.cells.read().unwrap_or_else(PoisonError::into_inner).get(key) {
            return c.clone();
        }
        let mut w = self.cells.write().unwrap_or_else(PoisonError::into_inner);
        w.entry(key.clone()).or_insert_with(|| Arc::new(MeterCell::new(key.clone()))).clone()
    }

    /// Drops the series nothing has held but the meter (no served document, no request in
    /// flight) for at least `retention` as of `now`; returns their keys. A series held again
    /// (a document serves its key anew) counts as held from then on.
    pub(crate) fn drop_retired(&self, now: Instant, retention: Duration) -> Vec<MeterKey> {
        let mut cells = self.cells.write().unwrap_or_else(PoisonError::into_inner);
        let mut retired = lock(&self.retired);
        let mut dropped = Vec::new();
        cells.retain(|k, c| {
            if Arc::strong_count(c) > 1 {
                retired.remove(k);
                return true;
            }
            let since = *retired.entry(k.clone()).or_insert(now);
            if now.saturating_duration_since(since) < retention {
                return true;
            }
            retired.remove(k);
            dropped.push(k.clone());
            false
        });
        dropped
    }

    /// Totals of every series, now.
    pub fn snapshot(&self) -> MeterSnapshot {
        let cells: Vec<Arc<MeterCell>> =
            self.cells.read().unwrap_or_else(PoisonError::into_inner).values().cloned().collect();
        MeterSnapshot { entries: cells.iter().map(|c| (c.key.clone(), c.snapshot())).collect() }
    }

    /// Config reloads refused since start.
    pub fn reload_errors(&self) -> u64 {
        self.reload_errors.load(Ordering::Relaxed)
    }

    pub(crate) fn inc_reload_errors(&self) {
        self.reload_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn set_revision(&self, revision: &str) {
        *self.revision.write().unwrap_or_else(PoisonError::into_inner) = Some(revision.to_string());
    }

    /// Revision of the config being served.
    pub fn revision(&self) -> Option<String> {
        self.revision.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// Totals of every series at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterSnapshot {
    /// Per series.
    pub entries: BTreeMap<MeterKey, MeterEntry>,
}

impl MeterSnapshot {
    /// The series of one route + backend (summed over provider/model, which only differ across
    /// reloads that changed them).
    pub fn backend(&self, route: &str, backend: &str) -> MeterEntry {
        let mut out = MeterEntry::default();
        for (k, e) in &self.entries {
            if k.route == route && k.backend == backend {
                for (o, n) in &e.outcomes {
                    *out.outcomes.entry(*o).or_insert(0) += n;
                }
                out.latency_us_sum += e.latency_us_sum;
                out.latency_count += e.latency_count;
                crate::policy::latency::add_counts(&mut out.latency_buckets, &e.latency_buckets);
                add_tokens(&mut out.tokens, &e.tokens);
                out.cost += e.cost;
                out.estimated_cost += e.estimated_cost;
                for (r, n) in &e.usage_missing {
                    *out.usage_missing.entry(r.clone()).or_insert(0) += n;
                }
            }
        }
        out
    }

    /// Exact spend per (provider, upstream model).
    pub fn cost_by_provider_model(&self) -> BTreeMap<(String, String), Money> {
        let mut out: BTreeMap<(String, String), Money> = BTreeMap::new();
        for (k, e) in &self.entries {
            *out.entry((k.provider.clone(), k.model.clone())).or_default() += e.cost;
        }
        out
    }

    /// Exact spend of everything.
    pub fn total_cost(&self) -> Money {
        self.entries.values().map(|e| e.cost).sum()
    }

    /// What happened between `previous` and `self`, as the policy's [`Observations`] of
    /// `namespace` (the namespace of the config the gateway serves). Pass
    /// `MeterSnapshot::default()` as `previous` for everything since start.
    pub fn to_observations_since(&self, previous: &MeterSnapshot, namespace: &str) -> Observations {
        delta::observations_between(namespace, &previous.totals(), &self.totals())
    }

    /// The cumulative totals of every series.
    pub fn totals(&self) -> BTreeMap<MeterKey, SeriesTotals> {
        self.entries.iter().map(|(k, e)| (k.clone(), e.totals())).collect()
    }
}

/// Labels of the histograms: the contract's [`contract::ROUTE`], [`contract::BACKEND`],
/// [`contract::PROVIDER`] and [`contract::MODEL`] (field names are label names; a test checks
/// the exposition against the contract).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct BackendLabels {
    pub(crate) route: String,
    pub(crate) backend: String,
    pub(crate) provider: String,
    pub(crate) model: String,
}

impl BackendLabels {
    pub(crate) fn of(k: &MeterKey) -> Self {
        Self {
            route: k.route.clone(),
            backend: k.backend.clone(),
            provider: k.provider.clone(),
            model: k.model.clone(),
        }
    }
}

type HistogramFamily = Family<BackendLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(contract::LATENCY_BOUNDS_MS.map(|ms| ms as f64 / 1000.0))
}

/// A histogram series of one backend, created in its family at the first observation: a
/// backend that never served exports no histogram. At fleet scale (50,000 backends) eager
/// 15-bucket series were most of the gateway's memory and made every scrape hundreds of MB.
/// A series, once created, stays while its backend is served, and after a reload removed it
/// until the meter drops its retired cell ([`Metrics::drop_retired`]).
#[derive(Debug)]
pub(crate) struct LazyHistogram {
    family: HistogramFamily,
    labels: Arc<BackendLabels>,
    series: std::sync::OnceLock<Histogram>,
}

impl LazyHistogram {
    fn new(family: &HistogramFamily, labels: &Arc<BackendLabels>) -> Self {
        Self { family: family.clone(), labels: labels.clone(), series: std::sync::OnceLock::new() }
    }

    /// Records one value (creating the series the first time).
    pub(crate) fn observe(&self, v: f64) {
        self.series.get_or_init(|| self.family.get_or_create(&self.labels).clone()).observe(v);
    }
}

/// The Prometheus side: a registry with the meter's collector and the histograms.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) meter: Arc<Meter>,
    duration: HistogramFamily,
    ttft: HistogramFamily,
    gen_ai: Arc<GenAi>,
    /// How long a retired series is still exported.
    pub(crate) retention: Duration,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let meter = Arc::new(Meter::default());
        let mut registry = Registry::default();
        let duration: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let ttft: HistogramFamily = Family::new_with_constructor(latency_histogram);
        registry.register(
            contract::REQUEST_DURATION,
            "Duration of each upstream attempt, from sending it to the end of the answer",
            duration.clone(),
        );
        registry.register(
            contract::TIME_TO_FIRST_TOKEN,
            "Time from sending a streaming request upstream to its first chunk",
            ttft.clone(),
        );
        registry.register_collector(Box::new(MeterCollector(meter.clone())));
        let gen_ai = GenAi::register(&mut registry);
        Self { registry, meter, duration, ttft, gen_ai, retention: Duration::ZERO }
    }

    /// Drops the retired series past their retention, histograms included, and the gen_ai
    /// series of a (provider, model) no series of the meter has any more.
    pub(crate) fn drop_retired(&self, now: Instant) {
        let dropped = self.meter.drop_retired(now, self.retention);
        if dropped.is_empty() {
            return;
        }
        for k in &dropped {
            let labels = BackendLabels::of(k);
            self.duration.remove(&labels);
            self.ttft.remove(&labels);
        }
        let left: std::collections::BTreeSet<(String, String)> =
            self.meter.snapshot().entries.keys().map(|k| (k.provider.clone(), k.model.clone())).collect();
        let gone: std::collections::BTreeSet<(String, String)> =
            dropped.into_iter().map(|k| (k.provider, k.model)).filter(|pm| !left.contains(pm)).collect();
        for (provider, model) in gone {
            self.gen_ai.remove(&provider, &model);
        }
    }

    /// Adds a collector (the Hard budgets' admission).
    pub(crate) fn register_collector(&mut self, c: Box<dyn prometheus_client::collector::Collector>) {
        self.registry.register_collector(c);
    }

    /// The gen_ai instruments of a backend with this provider and upstream model.
    pub(crate) fn gen_ai(&self, provider: &str, model: &str) -> GenAiBackend {
        GenAiBackend::new(self.gen_ai.clone(), provider, model)
    }

    /// The duration and time-to-first-token histograms of one series (handles to keep, so the
    /// request path does not look them up), created at their first observation. Both share
    /// the backend's labels.
    pub(crate) fn histograms(&self, labels: &Arc<BackendLabels>) -> (LazyHistogram, LazyHistogram) {
        (LazyHistogram::new(&self.duration, labels), LazyHistogram::new(&self.ttft, labels))
    }

    /// Prometheus text exposition (format 0.0.4), after dropping the retired series past their
    /// retention.
    pub(crate) fn encode(&self) -> String {
        self.drop_retired(Instant::now());
        let mut out = String::with_capacity(16 * 1024);
        if prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Content type of [`Metrics::encode`].
pub(crate) const METRICS_CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(Debug)]
struct MeterCollector(Arc<Meter>);

impl Collector for MeterCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snap = self.0.snapshot();

        let mut fam = encoder.encode_descriptor(
            contract::REQUESTS,
            "Upstream attempts by outcome (ok, client_error, rate_limited, upstream_error, timeout, connect_error, budget_rejected, gateway_overloaded)",
            None,
            MetricType::Counter,
        )?;
        for (k, e) in &snap.entries {
            let [a, b, c, d] = k.labels();
            for o in Outcome::ALL {
                let n = e.count(o);
                if n == 0 && o != Outcome::Ok {
                    continue;
                }
                let labels = [a, b, c, d, (contract::OUTCOME, o.label())];
                ConstCounter::new(n).encode(fam.encode_family(&labels)?)?;
            }
        }

        let mut fam = encoder.encode_descriptor(
            contract::TOKENS,
            "Tokens billed, by kind (disjoint kinds)",
            None,
            MetricType::Counter,
        )?;
        for (k, e) in &snap.entries {
            if e.is_idle() {
                continue;
            }
            let [a, b, c, d] = k.labels();
            for kind in TokenKind::ALL {
                let labels = [a, b, c, d, (contract::KIND, kind.label())];
                ConstCounter::new(e.tokens.get(kind)).encode(fam.encode_family(&labels)?)?;
            }
        }

        let mut fam = encoder.encode_descriptor(
            contract::COST_USD,
            "Spend in USD (float for humans; tollgate_cost_nanousd_total is exact)",
            None,
            MetricType::Counter,
        )?;
        for (k, e) in &snap.entries {
            if e.is_idle() {
                continue;
            }
            let usd = e.cost.picos() as f64 / PICOS_PER_USD as f64;
            ConstCounter::new(usd).encode(fam.encode_family(&k.labels())?)?;
        }

        let mut fam = encoder.encode_descriptor(
            contract::COST_NANOUSD,
            "Spend in nano-USD: floor of the exact pico-dollar total / 1000",
            None,
            MetricType::Counter,
        )?;
        for (k, e) in &snap.entries {
            let nanos = u64::try_from((e.cost.picos() / 1000).max(0)).unwrap_or(u64::MAX);
            ConstCounter::new(nanos).encode(fam.encode_family(&k.labels())?)?;
        }

        let mut fam = encoder.encode_descriptor(
            contract::COST_ESTIMATED_NANOUSD,
            "Estimated spend in nano-USD of the answers counted in tollgate_usage_missing_total (request size and streamed events; not exact)",
            None,
            MetricType::Counter,
        )?;
        for (k, e) in &snap.entries {
            if e.estimated_cost == Money::ZERO {
                continue;
            }
            let nanos = u64::try_from((e.estimated_cost.picos() / 1000).max(0)).unwrap_or(u64::MAX);
            ConstCounter::new(nanos).encode(fam.encode_family(&k.labels())?)?;
        }

        let mut fam = encoder.encode_descriptor(
            contract::USAGE_MISSING,
            "Successful upstream answers whose usage could not be read (never billed as zero silently)",
            None,
            MetricType::Counter,
        )?;
        for (k, e) in &snap.entries {
            let [a, b, c, d] = k.labels();
            for (reason, n) in &e.usage_missing {
                let labels = [a, b, c, d, (contract::REASON, reason.as_str())];
                ConstCounter::new(*n).encode(fam.encode_family(&labels)?)?;
            }
        }

        let mut fam = encoder.encode_descriptor(
            contract::HEALTH_LATENCY,
            "Latency of successful upstream attempts as health sees it: time to the first chunk of a streamed answer, total duration otherwise",
            None,
            MetricType::Histogram,
        )?;
        for (k, e) in &snap.entries {
            if e.latency_buckets.is_empty() {
                continue;
            }
            let buckets: Vec<(f64, u64)> = contract::LATENCY_BOUNDS_MS
                .iter()
                .map(|ms| *ms as f64 / 1000.0)
                .chain([f64::INFINITY])
                .zip(e.latency_buckets.iter().copied())
                .collect();
            let sum = e.latency_us_sum as f64 / 1_000_000.0;
            fam.encode_family(&k.labels())?.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                sum,
                e.latency_count,
                &buckets,
                None,
            )?;
        }

        let fam = encoder.encode_descriptor(
            contract::CONFIG_RELOAD_ERRORS,
            "Config documents refused (unreadable, missing or invalid); the last good one keeps serving",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(self.0.reload_errors()).encode(fam)?;

        if let Some(rev) = self.0.revision() {
            let mut fam = encoder.encode_descriptor(
                contract::CONFIG_REVISION,
                "Revision of the config document being served",
                None,
                MetricType::Info,
            )?;
            fam.encode_info(&[(contract::REVISION, rev.as_str())])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{BackendKey, SpendKey};

    fn key(route: &str, backend: &str) -> MeterKey {
        MeterKey::new(route, backend, "openai", "gpt-x")
    }

    #[test]
    fn exposition_is_exact_and_named_per_contract() {
        let m = Metrics::new();
        let cell = m.meter.cell(&key("chat", "a"));
        cell.record_outcome(Outcome::Ok, Some(Duration::from_millis(12)));
        cell.record_outcome(Outcome::RateLimited, None);
        let t = TokenCounts { input: 3, cached_input: 1, cache_write: 0, cache_write_1h: 0, output: 2, reasoning: 0 };
        cell.record_usage(&t, Money::from_picos(1_234_567)).unwrap();
        cell.record_usage(&t, Money::from_picos(1_999)).unwrap();
        cell.record_usage_missing("missing");
        m.meter.set_revision("sha256:abc");
        m.meter.inc_reload_errors();
        let text = m.encode();
        let line = |prefix: &str| text.lines().find(|l| l.starts_with(prefix)).map(str::to_string);
        assert_eq!(
            line("tollgate_requests_total{route=\"chat\",backend=\"a\",provider=\"openai\",model=\"gpt-x\",outcome=\"ok\"}").as_deref(),
            Some("tollgate_requests_total{route=\"chat\",backend=\"a\",provider=\"openai\",model=\"gpt-x\",outcome=\"ok\"} 1")
        );
        assert!(text.contains("outcome=\"rate_limited\"} 1"));
        // 1_236_566 picos → 1236 nano-USD (floored from the exact sum, not per request).
        assert!(
            text.contains(
                "tollgate_cost_nanousd_total{route=\"chat\",backend=\"a\",provider=\"openai\",model=\"gpt-x\"} 1236\n"
            ),
            "{text}"
        );
        assert!(text.contains(
            "tollgate_tokens_total{route=\"chat\",backend=\"a\",provider=\"openai\",model=\"gpt-x\",kind=\"input\"} 6"
        ));
        assert!(text.contains("tollgate_usage_missing_total{route=\"chat\",backend=\"a\",provider=\"openai\",model=\"gpt-x\",reason=\"missing\"} 1"));
        assert!(text.contains("tollgate_config_revision_info{revision=\"sha256:abc\"} 1"));
        assert!(text.contains("tollgate_config_reload_errors_total 1"));
        assert!(text.contains("tollgate_cost_usd_total{"));
    }

    #[test]
    fn what_the_gateway_writes_the_controller_reads() {
        let m = Metrics::new();
        let cell = m.meter.cell(&key("chat", "a"));
        cell.record_outcome(Outcome::Ok, Some(Duration::from_millis(250)));
        cell.record_outcome(Outcome::UpstreamError, None);
        cell.record_usage(&TokenCounts::default(), Money::from_picos(7_000_999)).unwrap();
        m.meter.set_revision("sha256:r1");
        let (duration, _) = m.histograms(&Arc::new(BackendLabels::of(&key("chat", "a"))));
        duration.observe(0.25);
        let r = crate::signals::GatewayReading::from_text(&m.encode());
        assert_eq!(r.revision.as_deref(), Some("sha256:r1"));
        assert_eq!(r.requests[&(key("chat", "a"), Outcome::Ok)], 1);
        assert_eq!(r.requests[&(key("chat", "a"), Outcome::UpstreamError)], 1);
        assert_eq!(r.cost_nanousd[&key("chat", "a")], 7000);
        assert_eq!(r.latency[&key("chat", "a")].count, 1);
        // The health latency histogram: 250ms lands in the (100ms, 250ms] bucket (index 5).
        let le = &r.latency_le[&key("chat", "a")];
        assert_eq!(le.len(), contract::LATENCY_BUCKETS);
        assert_eq!((le[4], le[5], le[15]), (0, 1, 1));
        // The same delta definition on both sides: the reading and the meter agree on spend and
        // outcomes (latency differs by source: scraped histogram vs. the meter's success latency).
        let via_reading = crate::signals::delta::observations_between("ns", &BTreeMap::new(), &r.totals());
        let via_meter = m.meter.snapshot().to_observations_since(&MeterSnapshot::default(), "ns");
        assert_eq!(via_reading.spend[&SpendKey::new("ns", "openai", "gpt-x")], Money::from_picos(7_000_000));
        assert_eq!(via_meter.spend[&SpendKey::new("ns", "openai", "gpt-x")], Money::from_picos(7_000_999));
        let bk = BackendKey::new("ns", "chat", "a");
        assert_eq!(via_reading.backends[&bk].outcomes, via_meter.backends[&bk].outcomes);
        // Bucket counts are integers on both sides: equal.
        assert_eq!(via_reading.backends[&bk].latency_le, via_meter.backends[&bk].latency_le);
    }

    #[test]
    fn retired_series_stay_for_their_retention_and_while_held() {
        let mut m = Metrics::new();
        m.retention = Duration::from_secs(60);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let (a, b) = (key("chat", "a"), key("gone", "b"));
        // a is held as a served backend holds it; b only by a request in flight.
        let served_a = m.meter.cell(&a);
        served_a.record_outcome(Outcome::Ok, None);
        let in_flight = m.meter.cell(&b);
        in_flight.record_outcome(Outcome::Ok, Some(Duration::from_millis(5)));
        let (duration, _) = m.histograms(&Arc::new(BackendLabels::of(&b)));
        duration.observe(0.005);
        let has = |m: &Metrics, k: &MeterKey| m.meter.snapshot().entries.contains_key(k);
        // Held: exported however long.
        m.drop_retired(at(1000));
        assert!(has(&m, &b));
        in_flight.record_outcome(Outcome::Ok, None);
        drop((in_flight, duration));
        // Unheld from 1001 on: exported for its retention, then dropped, histograms too.
        m.drop_retired(at(1001));
        m.drop_retired(at(1060));
        assert!(has(&m, &b), "unheld for less than its retention");
        assert!(m.encode().contains("tollgate_request_duration_seconds_count{route=\"gone\""));
        m.drop_retired(at(1061));
        assert!(!has(&m, &b), "unheld for its retention: dropped");
        assert!(!m.encode().contains("route=\"gone\""), "{}", m.encode());
        assert!(has(&m, &a), "a served series stays");
        // Served again within its retention: it keeps its counts, and its retention starts
        // anew once unheld again.
        let c = key("back", "c");
        m.meter.cell(&c).record_outcome(Outcome::Ok, None);
        m.drop_retired(at(2000));
        let served_c = m.meter.cell(&c);
        m.drop_retired(at(2600));
        assert_eq!(m.meter.snapshot().backend("back", "c").count(Outcome::Ok), 1);
        drop(served_c);
        m.drop_retired(at(2601));
        m.drop_retired(at(2660));
        assert!(has(&m, &c));
        m.drop_retired(at(2661));
        assert!(!has(&m, &c));
        drop(served_a);
    }

    #[test]
    fn snapshots_diff_into_observations() {
        let meter = Meter::default();
        let a = meter.cell(&key("chat", "a"));
        a.record_outcome(Outcome::Ok, Some(Duration::from_micros(1500)));
        a.record_usage(&TokenCounts::default(), Money::from_picos(10)).unwrap();
        let before = meter.snapshot();
        a.record_outcome(Outcome::Ok, Some(Duration::from_micros(1600)));
        a.record_outcome(Outcome::Timeout, None);
        a.record_usage(&TokenCounts::default(), Money::from_picos(32)).unwrap();
        let after = meter.snapshot();
        let obs = after.to_observations_since(&before, "ns");
        let b = &obs.backends[&BackendKey::new("ns", "chat", "a")];
        assert_eq!(b.outcomes[&Outcome::Ok], 1);
        assert_eq!(b.outcomes[&Outcome::Timeout], 1);
        assert_eq!(b.latency_count, 1);
        assert_eq!(b.latency_ms_sum, 2); // floor(3100/1000) - floor(1500/1000)
        assert_eq!(obs.spend[&SpendKey::new("ns", "openai", "gpt-x")], Money::from_picos(32));
        let all = after.to_observations_since(&MeterSnapshot::default(), "ns");
        assert_eq!(all.spend[&SpendKey::new("ns", "openai", "gpt-x")], Money::from_picos(42));
        assert!(after.to_observations_since(&after, "ns").backends.is_empty());
    }
}
