//! Signals: what the gateways report back (requests by outcome, latency and the exact health
//! latency histogram, tokens by kind, exact spend, the config revision they serve), turned into the policy's [`Observations`] (deltas since the previous
//! evaluation).
//!
//! Two sources implement [`Signals`]: [`scrape::ScrapeSignals`] reads each ready gateway pod's
//! `/metrics` (the default, no extra component) and [`prometheus::PrometheusSignals`] asks a
//! Prometheus server with PromQL (`--signals prometheus=URL`). Both return *cumulative* counters
//! per gateway pod ([`GatewayReading`]); the [`Tracker`] turns successive readings into deltas,
//! detects counter resets (a gateway restarted; a series that is gone, as the gateway drops a
//! removed route's, is not a reset) and keeps the per-gateway cumulative spend the controller
//! checkpoints in `ProviderBudget` status. Spend is read from
//! `tollgate_cost_nanousd_total` (integers), so it stays exact end to end.
//!
//! [`contract`] names every metric and label both sides use (the gateway writes with it, the
//! readers here read with it); [`delta`] is the one definition of observation deltas and merges
//! (also used by the gateway's meter and by `tollgate local`). Both are free of Kubernetes.
//! [`hard`] reads what a gateway reports of its Hard budgets (grant, settled, reserved,
//! refusals, its instance id), kept beside the counters in [`GatewayReading::hard`].

pub mod contract;
pub mod delta;
pub mod hard;
pub mod prometheus;
pub mod scrape;
pub mod text;

use std::collections::{BTreeMap, BTreeSet};

use futures::future::BoxFuture;

pub use contract::SeriesKey;
use delta::SeriesTotals;

use crate::policy::{Money, Observations, Outcome};

/// Pico-dollars per nano-dollar.
const PICOS_PER_NANO: i128 = 1000;

/// One gateway pod to read.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct GatewayTarget {
    /// Pod UID: the identity of its counters (a new pod starts from zero).
    pub uid: String,
    /// Pod namespace: the namespace whose config it serves, and of its spend.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// `ip:port` of its metrics listener (the container port named `metrics`), if known.
    pub address: Option<String>,
}

/// Cumulative latency of one series.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LatencyCounter {
    /// Sum of durations, seconds.
    pub sum_seconds: f64,
    /// Number of durations.
    pub count: u64,
}

/// Cumulative counters of one gateway, as read at one time.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GatewayReading {
    /// Requests by series and outcome.
    pub requests: BTreeMap<(SeriesKey, Outcome), u64>,
    /// Exact spend by series, nano-USD.
    pub cost_nanousd: BTreeMap<SeriesKey, u64>,
    /// Latency by series.
    pub latency: BTreeMap<SeriesKey, LatencyCounter>,
    /// Health latency histogram by series: cumulative bucket counts (`le`) over
    /// [`contract::LATENCY_BOUNDS_MS`] then `+Inf` ([`contract::HEALTH_LATENCY_BUCKET`]).
    pub latency_le: BTreeMap<SeriesKey, Vec<u64>>,
    /// Tokens billed by series ([`contract::TOKENS_TOTAL`], by `kind`).
    pub tokens: BTreeMap<SeriesKey, crate::pricing::TokenCounts>,
    /// Revision of the config document served (`tollgate_config_revision_info{revision}`).
    pub revision: Option<String>,
    /// Its Hard budgets and instance id ([`hard`]).
    pub hard: hard::HardReading,
}

impl GatewayReading {
    /// Adds one sample of the signal contract; other metrics are ignored. `value` is the text
    /// of the sample value (integers are read exactly).
    pub fn add_sample(&mut self, metric: &str, labels: &BTreeMap<String, String>, value: &str) {
        let series = || SeriesKey::from_labels(labels);
        match metric {
            contract::REQUESTS_TOTAL => {
                let (Some(k), Some(o), Some(n)) = (
                    series(),
                    labels.get(contract::OUTCOME).and_then(|o| Outcome::from_label(o)),
                    text::parse_count(value),
                ) else {
                    return;
                };
                *self.requests.entry((k, o)).or_insert(0) += n;
            }
            contract::COST_NANOUSD_TOTAL => {
                if let (Some(k), Some(n)) = (series(), text::parse_count(value)) {
                    *self.cost_nanousd.entry(k).or_insert(0) += n;
                }
            }
            contract::REQUEST_DURATION_SUM => {
                if let (Some(k), Ok(v)) = (series(), value.parse::<f64>())
                    && v.is_finite()
                {
                    self.latency.entry(k).or_default().sum_seconds += v;
                }
            }
            contract::REQUEST_DURATION_COUNT => {
                if let (Some(k), Some(n)) = (series(), text::parse_count(value)) {
                    self.latency.entry(k).or_default().count += n;
                }
            }
            contract::TOKENS_TOTAL => {
                let (Some(k), Some(kind), Some(n)) = (
                    series(),
                    labels
                        .get(contract::KIND)
                        .and_then(|l| crate::pricing::TokenKind::ALL.into_iter().find(|k| k.label() == l)),
                    text::parse_count(value),
                ) else {
                    return;
                };
                let t = self.tokens.entry(k).or_default();
                let count = t.get_mut(kind);
                *count = count.saturating_add(n);
            }
            contract::HEALTH_LATENCY_BUCKET => {
                if let (Some(k), Some(i), Some(n)) = (
                    series(),
                    labels.get(contract::LE).and_then(|le| contract::latency_bucket_index(le)),
                    text::parse_count(value),
                ) {
                    let le = self.latency_le.entry(k).or_insert_with(|| vec![0; contract::LATENCY_BUCKETS]);
                    le[i] = le[i].saturating_add(n);
                }
            }
            contract::CONFIG_REVISION_INFO => {
                if let Some(r) = labels.get(contract::REVISION)
                    && text::parse_count(value).unwrap_or(0) > 0
                {
                    self.revision = Some(r.clone());
                }
            }
            _ => {
                hard::add_sample(&mut self.hard, metric, labels, value);
            }
        }
    }

    /// Parses a Prometheus text exposition (or OpenMetrics text) of a gateway's `/metrics`.
    pub fn from_text(body: &str) -> Self {
        let mut r = GatewayReading::default();
        for s in text::samples(body) {
            r.add_sample(&s.metric, &s.labels, &s.value);
        }
        r
    }

    /// The cumulative totals of each series, in the units of [`delta`]: latency as the whole
    /// milliseconds of the cumulative sum (rounded once), spend as exact pico-dollars.
    pub fn totals(&self) -> BTreeMap<SeriesKey, SeriesTotals> {
        let mut out: BTreeMap<SeriesKey, SeriesTotals> = BTreeMap::new();
        for ((k, o), n) in &self.requests {
            *out.entry(k.clone()).or_default().outcomes.entry(*o).or_insert(0) += n;
        }
        for (k, l) in &self.latency {
            let t = out.entry(k.clone()).or_default();
            let ms = (l.sum_seconds.max(0.0) * 1000.0).round();
            // Latency is not money: a float-to-integer conversion of milliseconds is fine here.
            t.latency_ms_sum = if ms.is_finite() && ms < u64::MAX as f64 { ms as u64 } else { 0 };
            t.latency_count = l.count;
        }
        for (k, t) in &self.tokens {
            out.entry(k.clone()).or_default().tokens = *t;
        }
        for (k, le) in &self.latency_le {
            out.entry(k.clone()).or_default().latency_le = le.clone();
        }
        for (k, n) in &self.cost_nanousd {
            out.entry(k.clone()).or_default().spend = Money::from_picos(i128::from(*n) * PICOS_PER_NANO);
        }
        out
    }

    /// Whether any counter went down compared with `earlier` (the gateway restarted). A series
    /// that is gone is not one that went down: the gateway drops the series of a route a reload
    /// removed, while a restarted one exports its configured series again, at zero.
    pub fn is_reset_of(&self, earlier: &GatewayReading) -> bool {
        let req = earlier.requests.iter().any(|(k, v)| self.requests.get(k).is_some_and(|n| n < v));
        let cost = earlier.cost_nanousd.iter().any(|(k, v)| self.cost_nanousd.get(k).is_some_and(|n| n < v));
        let lat = earlier.latency.iter().any(|(k, v)| self.latency.get(k).is_some_and(|l| l.count < v.count));
        let inf = |le: &Vec<u64>| le.last().copied().unwrap_or(0);
        let hist = earlier.latency_le.iter().any(|(k, v)| self.latency_le.get(k).is_some_and(|n| inf(n) < inf(v)));
        req || cost || lat || hist
    }

    /// Cumulative spend of the series of `provider` (and, when `models` is not empty, of those
    /// models), nano-USD.
    pub fn cost_matching(&self, provider: &str, models: &[String]) -> u64 {
        self.cost_nanousd
            .iter()
            .filter(|(k, _)| crate::policy::coverage::covers(provider, models, &k.provider, &k.model))
            .map(|(_, v)| *v)
            .fold(0u64, u64::saturating_add)
    }
}

/// What a [`Signals`] source returns for one target.
pub type ReadingResult = Result<GatewayReading, String>;

/// A source of gateway signals.
pub trait Signals: Send + Sync {
    /// A short description for logs (`scrape`, `prometheus=http://...`).
    fn describe(&self) -> String;

    /// Reads the cumulative counters of every target, by target UID. A target missing from
    /// the answer, or answered with an error, was not read this time.
    fn collect<'a>(&'a self, targets: &'a [GatewayTarget]) -> BoxFuture<'a, BTreeMap<String, ReadingResult>>;
}

/// A spend checkpoint of one budget for one gateway, as found in `ProviderBudget` status after
/// a controller restart: the gateway's cumulative matching spend already counted in
/// `status.spent`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointSeed {
    /// Provider of the budget.
    pub provider: String,
    /// Models of the budget (empty = all).
    pub models: Vec<String>,
    /// The checkpointed cumulative spend, nano-USD.
    pub nanousd: u64,
}

/// A checkpoint value (exact USD decimal) in nano-USD; `None` when it is not a whole number of
/// nano-dollars or negative.
pub fn checkpoint_nanousd(counter: &str) -> Option<u64> {
    let m: Money = counter.parse().ok()?;
    if m.is_negative() || m.picos() % PICOS_PER_NANO != 0 {
        return None;
    }
    u64::try_from(m.picos() / PICOS_PER_NANO).ok()
}

/// A nano-USD amount as the exact USD decimal written in checkpoints.
pub fn nanousd_decimal(n: u64) -> String {
    Money::from_picos(i128::from(n) * PICOS_PER_NANO).to_decimal(0)
}

#[derive(Clone, Debug)]
struct Tracked {
    namespace: String,
    /// The last reading.
    last: GatewayReading,
}

/// The outcome of one [`Tracker::observe`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    /// Deltas for the policy.
    pub observations: Observations,
    /// Gateways read for the first time (no baseline before).
    pub first_seen: Vec<String>,
    /// Gateways whose counters went down (restarted): their counters counted from zero.
    pub resets: Vec<String>,
    /// Gateways that could not be read, with the error.
    pub unreadable: Vec<(String, String)>,
    /// Revision served by each gateway read this time.
    pub revisions: BTreeMap<String, Option<String>>,
}

/// Turns successive cumulative readings into deltas.
///
/// - A gateway read for the first time: requests and latency start from its current counters
///   (old traffic says nothing about current health); spend counts from zero (a new pod's
///   counters are all new spend), except the part covered by a [`CheckpointSeed`] (after a
///   controller restart: already in `status.spent`).
/// - A counter that went down means the gateway restarted: all of its counters count from zero.
/// - A gateway that could not be read keeps its baseline; one that no longer exists (its pod was
///   deleted) is forgotten.
#[derive(Clone, Debug, Default)]
pub struct Tracker {
    gateways: BTreeMap<String, Tracked>,
}

impl Tracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `uid` has a baseline.
    pub fn knows(&self, uid: &str) -> bool {
        self.gateways.contains_key(uid)
    }

    /// UIDs with a baseline.
    pub fn known(&self) -> impl Iterator<Item = &str> {
        self.gateways.keys().map(String::as_str)
    }

    /// Forgets gateways whose pods no longer exist.
    pub fn retain(&mut self, existing: &BTreeSet<String>) {
        self.gateways.retain(|uid, _| existing.contains(uid));
    }

    /// Cumulative spend of `uid` that a budget of `namespace`/`provider`/`models` covers, as of
    /// its last reading (what its checkpoint says). `None` when the gateway is unknown or in
    /// another namespace.
    pub fn checkpoint(&self, uid: &str, namespace: &str, provider: &str, models: &[String]) -> Option<u64> {
        let t = self.gateways.get(uid).filter(|t| t.namespace == namespace)?;
        Some(t.last.cost_matching(provider, models))
    }

    /// Folds one round of readings into deltas. `seeds` gives, per gateway UID, the checkpoints
    /// of a restored status; they are used (and should then be dropped by the caller) when that
    /// gateway is read for the first time (see `first_seen`).
    pub fn observe(
        &mut self,
        targets: &[GatewayTarget],
        readings: BTreeMap<String, ReadingResult>,
        seeds: &BTreeMap<String, Vec<CheckpointSeed>>,
    ) -> Observed {
        let mut out = Observed::default();
        let mut readings = readings;
        for t in targets {
            let Some(result) = readings.remove(&t.uid) else {
                continue;
            };
            let reading = match result {
                Ok(r) => r,
                Err(e) => {
                    out.unreadable.push((t.uid.clone(), e));
                    continue;
                }
            };
            out.revisions.insert(t.uid.clone(), reading.revision.clone());
            let prev = match self.gateways.get(&t.uid) {
                Some(tr) if reading.is_reset_of(&tr.last) => {
                    out.resets.push(t.uid.clone());
                    GatewayReading::default()
                }
                Some(tr) => tr.last.clone(),
                None => {
                    out.first_seen.push(t.uid.clone());
                    let base = seed_baselines(&reading, seeds.get(&t.uid).map_or(&[], Vec::as_slice));
                    // Requests and latency start from the current counters; spend from the seeds.
                    GatewayReading {
                        requests: reading.requests.clone(),
                        cost_nanousd: base,
                        latency: reading.latency.clone(),
                        latency_le: reading.latency_le.clone(),
                        tokens: reading.tokens.clone(),
                        revision: None,
                        hard: hard::HardReading::default(),
                    }
                }
            };
            delta::add_between(&mut out.observations, &t.namespace, &prev.totals(), &reading.totals());
            self.gateways.insert(t.uid.clone(), Tracked { namespace: t.namespace.clone(), last: reading });
        }
        out
    }
}

/// Spend baselines for a gateway read for the first time: per series, the part of its counter
/// that checkpoints say was already counted. Most specific budgets (with `models`) first; a
/// checkpoint larger than the current matching counters means the gateway restarted since, and
/// nothing of its current counters was counted.
fn seed_baselines(reading: &GatewayReading, seeds: &[CheckpointSeed]) -> BTreeMap<SeriesKey, u64> {
    let mut base: BTreeMap<SeriesKey, u64> = BTreeMap::new();
    let mut ordered: Vec<&CheckpointSeed> = seeds.iter().collect();
    ordered.sort_by_key(|s| (s.models.is_empty(), s.provider.clone(), s.models.clone()));
    for seed in ordered {
        let matching: Vec<(&SeriesKey, u64)> = reading
            .cost_nanousd
            .iter()
            .filter(|(k, _)| crate::policy::coverage::covers(&seed.provider, &seed.models, &k.provider, &k.model))
            .map(|(k, v)| (k, *v))
            .collect();
        let total: u64 = matching.iter().map(|(_, v)| *v).fold(0, u64::saturating_add);
        if total < seed.nanousd {
            continue;
        }
        let already: u64 = matching.iter().filter_map(|(k, _)| base.get(*k)).copied().fold(0, u64::saturating_add);
        let mut remaining = seed.nanousd.saturating_sub(already);
        for (k, v) in matching {
            if remaining == 0 {
                break;
            }
            if base.contains_key(k) {
                continue;
            }
            let b = v.min(remaining);
            base.insert(k.clone(), b);
            remaining -= b;
        }
    }
    base
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::BackendKey;

    fn target(uid: &str) -> GatewayTarget {
        GatewayTarget { uid: uid.into(), namespace: "team-a".into(), name: uid.into(), address: None }
    }

    fn text(ok: u64, err: u64, nanos: u64) -> String {
        format!(
            "# TYPE tollgate_requests counter\n\
             tollgate_requests_total{{route=\"chat\",backend=\"a\",provider=\"openai\",model=\"gpt\",outcome=\"ok\"}} {ok}\n\
             tollgate_requests_total{{route=\"chat\",backend=\"a\",provider=\"openai\",model=\"gpt\",outcome=\"upstream_error\"}} {err}\n\
             # TYPE tollgate_cost_nanousd counter\n\
             tollgate_cost_nanousd_total{{route=\"chat\",backend=\"a\",provider=\"openai\",model=\"gpt\"}} {nanos}\n\
             tollgate_config_revision_info{{revision=\"sha256:abc\"}} 1\n"
        )
    }

    fn read(uid: &str, body: &str) -> BTreeMap<String, ReadingResult> {
        BTreeMap::from([(uid.to_string(), Ok(GatewayReading::from_text(body)))])
    }

    #[test]
    fn parses_the_contract() {
        let r = GatewayReading::from_text(&text(5, 2, 1_234_567));
        assert_eq!(r.revision.as_deref(), Some("sha256:abc"));
        assert_eq!(r.cost_matching("openai", &[]), 1_234_567);
        assert_eq!(r.cost_matching("openai", &["other".into()]), 0);
        assert_eq!(r.requests.len(), 2);
    }

    #[test]
    fn deltas_resets_and_first_sight() {
        let mut t = Tracker::new();
        let targets = [target("p1")];
        let o = t.observe(&targets, read("p1", &text(10, 0, 1000)), &BTreeMap::new());
        assert_eq!(o.first_seen, vec!["p1".to_string()]);
        // First sight: requests from now on, spend from zero.
        assert!(o.observations.backends.is_empty());
        assert_eq!(o.observations.spend.values().copied().sum::<Money>(), Money::from_picos(1_000_000));
        let o = t.observe(&targets, read("p1", &text(15, 5, 3000)), &BTreeMap::new());
        let b = &o.observations.backends[&BackendKey::new("team-a", "chat", "a")];
        assert_eq!((b.requests(), b.errors()), (10, 5));
        assert_eq!(o.observations.spend.values().copied().sum::<Money>(), Money::from_picos(2_000_000));
        // Restarted gateway: counters went down, everything counts from zero.
        let o = t.observe(&targets, read("p1", &text(1, 0, 500)), &BTreeMap::new());
        assert_eq!(o.resets, vec!["p1".to_string()]);
        assert_eq!(o.observations.spend.values().copied().sum::<Money>(), Money::from_picos(500_000));
        assert_eq!(t.checkpoint("p1", "team-a", "openai", &[]), Some(500));
        assert_eq!(t.checkpoint("p1", "team-b", "openai", &[]), None);
    }

    /// The gateway drops the series of a route a reload removed: the others' spend is counted
    /// on, not again from zero as after a restart.
    #[test]
    fn a_dropped_series_is_not_a_restart() {
        let two = |a: u64, b: Option<u64>| {
            let mut t = text(1, 0, a);
            if let Some(b) = b {
                t.push_str(&format!(
                    "tollgate_cost_nanousd_total{{route=\"gone\",backend=\"b\",provider=\"openai\",model=\"gpt\"}} {b}\n"
                ));
            }
            t
        };
        let mut t = Tracker::new();
        let targets = [target("p1")];
        t.observe(&targets, read("p1", &two(1000, Some(400))), &BTreeMap::new());
        let o = t.observe(&targets, read("p1", &two(1500, None)), &BTreeMap::new());
        assert!(o.resets.is_empty(), "{:?}", o.resets);
        assert_eq!(o.observations.spend.values().copied().sum::<Money>(), Money::from_picos(500_000));
        // Served again later: it counts from zero, as a new series.
        let o = t.observe(&targets, read("p1", &two(1500, Some(30))), &BTreeMap::new());
        assert_eq!(o.observations.spend.values().copied().sum::<Money>(), Money::from_picos(30_000));
    }

    #[test]
    fn seeds_subtract_what_status_already_counted() {
        let mut t = Tracker::new();
        let seeds = BTreeMap::from([(
            "p1".to_string(),
            vec![CheckpointSeed { provider: "openai".into(), models: vec![], nanousd: 700 }],
        )]);
        let o = t.observe(&[target("p1")], read("p1", &text(1, 0, 1000)), &seeds);
        assert_eq!(o.observations.spend.values().copied().sum::<Money>(), Money::from_picos(300_000));
        // A checkpoint above the counter: the gateway restarted meanwhile, count it all.
        let mut t = Tracker::new();
        let seeds = BTreeMap::from([(
            "p1".to_string(),
            vec![CheckpointSeed { provider: "openai".into(), models: vec![], nanousd: 5000 }],
        )]);
        let o = t.observe(&[target("p1")], read("p1", &text(1, 0, 1000)), &seeds);
        assert_eq!(o.observations.spend.values().copied().sum::<Money>(), Money::from_picos(1_000_000));
    }

    #[test]
    fn unreadable_keeps_the_baseline() {
        let mut t = Tracker::new();
        let targets = [target("p1")];
        t.observe(&targets, read("p1", &text(1, 0, 100)), &BTreeMap::new());
        let o = t.observe(&targets, BTreeMap::from([("p1".to_string(), Err("timeout".to_string()))]), &BTreeMap::new());
        assert_eq!(o.unreadable.len(), 1);
        let o = t.observe(&targets, read("p1", &text(1, 0, 300)), &BTreeMap::new());
        assert_eq!(o.observations.spend.values().copied().sum::<Money>(), Money::from_picos(200_000));
        t.retain(&BTreeSet::new());
        assert!(!t.knows("p1"));
    }

    #[test]
    fn health_latency_buckets_are_read_and_diffed_exactly() {
        let body = |fast: u64, slow: u64| {
            let l = "route=\"chat\",backend=\"a\",provider=\"openai\",model=\"gpt\"";
            format!(
                "# TYPE tollgate_health_latency_seconds histogram\n\
                 tollgate_health_latency_seconds_sum{{{l}}} 12.5\n\
                 tollgate_health_latency_seconds_count{{{l}}} {n}\n\
                 tollgate_health_latency_seconds_bucket{{{l},le=\"0.005\"}} 0\n\
                 tollgate_health_latency_seconds_bucket{{{l},le=\"0.1\"}} {fast}\n\
                 tollgate_health_latency_seconds_bucket{{{l},le=\"5.0\"}} {n}\n\
                 tollgate_health_latency_seconds_bucket{{{l},le=\"+Inf\"}} {n}\n",
                n = fast + slow
            )
        };
        let r = GatewayReading::from_text(&body(3, 1));
        let le = &r.latency_le[&SeriesKey::new("chat", "a", "openai", "gpt")];
        assert_eq!((le[0], le[4], le[9], le[15]), (0, 3, 4, 4));
        let mut t = Tracker::new();
        let targets = [target("p1")];
        // First sight is the baseline; then exact deltas per bucket.
        let o = t.observe(&targets, read("p1", &body(3, 1)), &BTreeMap::new());
        assert!(o.observations.backends.is_empty());
        let o = t.observe(&targets, read("p1", &body(5, 21)), &BTreeMap::new());
        let b = &o.observations.backends[&BackendKey::new("team-a", "chat", "a")];
        assert_eq!((b.latency_le[4], b.latency_le[9], b.latency_le[15]), (2, 22, 22));
        assert_eq!(crate::policy::latency::p95(&b.latency_le), Some(crate::policy::latency::P95::AtMost(5_000)));
        // A histogram that went down: the gateway restarted.
        let o = t.observe(&targets, read("p1", &body(1, 0)), &BTreeMap::new());
        assert_eq!(o.resets, vec!["p1".to_string()]);
    }

    #[test]
    fn checkpoint_decimals_round_trip() {
        assert_eq!(nanousd_decimal(1_234_567_890), "1.23456789");
        assert_eq!(checkpoint_nanousd("1.23456789"), Some(1_234_567_890));
        assert_eq!(checkpoint_nanousd("0"), Some(0));
        assert_eq!(checkpoint_nanousd("0.0000000001"), None);
        assert_eq!(checkpoint_nanousd("-1"), None);
    }
}
