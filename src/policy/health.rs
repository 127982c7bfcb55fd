//! Backend health: error-rate trips with hysteresis, exponential ejection, staged ramp-up.
//!
//! Rules, per backend of a route (all pure, `now` is an input):
//! - Samples `(time, requests, errors, latency)` of every evaluation's deltas are kept for
//!   `errorRate.window`. Observations that arrive while a backend is Ejected are dropped (they
//!   belong to the ejection, not to its recovery).
//! - Healthy: when the window holds ≥ `minRequests` requests and errors/requests ≥ `trip`
//!   (integer ppm), the backend trips: Ejected until `now + min(base × 2^(trips−1), max)`,
//!   `trips += 1`, samples cleared.
//! - At most `floor(n × maxEjectedPercent / 100)` backends of a route are Ejected at once; a trip
//!   beyond that is not enforced, the backend stays as it is, `EjectionSuppressed` is emitted
//!   once (deduplicated by `suppressed` until the backend stops wanting out). Candidates are
//!   taken by highest error rate, then list order. If the spec shrinks so that more are ejected
//!   than allowed, the ones whose ejection ends first return early.
//! - Ejected and `now ≥ until`: Ramping stage 0 (or straight back to Healthy when `rampUp` is
//!   empty). Each stage lasts one `errorRate.window`. While Ramping, a window with
//!   ≥ `minRequests` requests and an error rate ≥ `recover` ejects it again (trip + 1, doubled
//!   time). When a stage's time is up it advances if the stage's error rate is below `recover`
//!   or it saw no request; otherwise (too few requests to decide, rate not below `recover`) the
//!   stage starts over. After the last stage: Healthy (`BackendRestored`).
//! - `trips` resets to 0 after `ejection.max` of continuous health.
//! - Latency: the mean over the window of successful attempts; the last known mean is kept when
//!   the window has none (for `LowestLatency`).
//! - Latency budget (`health.latency`, optional): each evaluation's latency histogram delta is
//!   kept for `latency.window` (dropped while Ejected, cleared on every ejection and at its end,
//!   like the error samples). Healthy: ≥ `latency.minRequests` answers in the window and a
//!   conservative p95 over `latency.trip` trip exactly as an error rate does (same backoff,
//!   same `maxEjectedPercent`, candidates after the error-rate ones of equal rate). Ramping:
//!   ≥ `minRequests` answers and a p95 over `latency.recover` eject again; a stage advances
//!   only if also the stage's answers (all of them, kept apart from the window) have a p95 not
//!   over `recover` (or there were none); otherwise it starts over. The p95 and its rounding: `policy::latency`.
//! - The clock stepping back (NTP): before a backend is evaluated, times in its memory later
//!   than `now` are read as `now` (samples, `healthy_since`, the ramp stage's start), and an
//!   ejection has at most its own length (`min(base × 2^(trips−1), max)`) left from `now`. So a
//!   step back neither stretches an ejection, a ramp stage or the `trips` reset by the size of
//!   the step, nor keeps old samples in the window for longer than the window. The same bound
//!   shortens an ejection in progress when the spec lowers `ejection.base` or `ejection.max`.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::common::{add_ms, clip};
use super::latency::{self, LatencyEvidence, LatencyParams, LatencySample};
use super::money::parse_duration_ms;
use super::{BackendKey, ObjectKey, ObjectKind, Observations, Ppm, Transition};
use crate::api::{Backend, HealthPolicy};

/// Where a backend is in the eject/ramp cycle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all_fields = "camelCase")]
pub enum Phase {
    /// In rotation.
    #[default]
    Healthy,
    /// Out of rotation until `until`.
    Ejected {
        /// End of the ejection.
        until: Timestamp,
    },
    /// Returning through `rampUp` stages.
    Ramping {
        /// Index into `rampUp`.
        stage: u32,
        /// When the stage started.
        stage_started: Timestamp,
        /// Requests seen during the stage.
        #[serde(default)]
        requests: u64,
        /// Errors seen during the stage.
        #[serde(default)]
        errors: u64,
    },
}

/// One evaluation's deltas for a backend.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthSample {
    /// Evaluation time.
    pub at: Timestamp,
    /// Requests that count for health.
    pub requests: u64,
    /// Health errors.
    pub errors: u64,
    /// Sum of successful latencies, ms.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub latency_ms_sum: u64,
    /// Successful attempts in `latency_ms_sum`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub latency_count: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Evidence of the last trip (shown while Ejected).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TripEvidence {
    /// When.
    pub at: Timestamp,
    /// Error rate that tripped.
    pub error_rate: Ppm,
    /// Requests in the window.
    pub requests: u64,
    /// Errors in the window.
    pub errors: u64,
}

/// What a backend's health remembers between evaluations.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendHealth {
    /// Current phase.
    #[serde(default)]
    pub phase: Phase,
    /// Trips so far (reset after `ejection.max` of continuous health).
    pub trips: u32,
    /// Samples inside the error-rate window, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<HealthSample>,
    /// When it last became Healthy after an ejection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_since: Option<Timestamp>,
    /// Last known mean latency of successful attempts, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// A trip is being suppressed by `maxEjectedPercent` (the event was emitted).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suppressed: bool,
    /// Evidence of the last trip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_trip: Option<TripEvidence>,
    /// Latency histogram deltas inside the latency window, oldest first (`health.latency`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latency_samples: Vec<LatencySample>,
    /// While Ramping with a latency budget: the latency histogram of the current stage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stage_latency_le: Vec<u64>,
    /// Input tokens by minute over the last hour (the achieved prompt-cache share of `Cheapest`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub input_samples: Vec<super::cache_share::InputSample>,
    /// When the last trip was for latency: its evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_trip: Option<LatencyEvidence>,
}

impl BackendHealth {
    /// Requests and errors in the samples (already pruned to the window).
    pub fn window_totals(&self) -> (u64, u64) {
        self.samples.iter().fold((0, 0), |(r, e), s| (r.saturating_add(s.requests), e.saturating_add(s.errors)))
    }

    /// Error rate over the window, if it saw a request.
    pub fn error_rate(&self) -> Option<Ppm> {
        let (r, e) = self.window_totals();
        Ppm::ratio(e, r)
    }

    /// End of the ejection, when Ejected.
    pub fn ejected_until(&self) -> Option<Timestamp> {
        match self.phase {
            Phase::Ejected { until } => Some(until),
            _ => None,
        }
    }

    /// Percent of the configured weight while Ramping.
    pub fn ramp_percent(&self, ramp_up: &[u32]) -> Option<u32> {
        match self.phase {
            Phase::Ramping { stage, .. } => Some(ramp_up.get(stage as usize).copied().unwrap_or(100).clamp(1, 100)),
            _ => None,
        }
    }

    fn windowed_latency(&self) -> Option<u64> {
        let (sum, n) = self
            .samples
            .iter()
            .fold((0u64, 0u64), |(s, n), x| (s.saturating_add(x.latency_ms_sum), n.saturating_add(x.latency_count)));
        (n > 0).then(|| sum / n)
    }
}

/// `configured × percent / 100`, at least 1 when configured > 0.
pub fn ramp_weight(configured: u32, percent: u32) -> u32 {
    if configured == 0 {
        return 0;
    }
    let w = u64::from(configured) * u64::from(percent.min(100)) / 100;
    u32::try_from(w).unwrap_or(u32::MAX).max(1)
}

/// A route's health policy, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthParams {
    /// Trip threshold.
    pub trip: Ppm,
    /// Recover threshold.
    pub recover: Ppm,
    /// Window (and ramp stage length), ms.
    pub window_ms: i64,
    /// The window as written.
    pub window: String,
    /// Minimum requests for a decision.
    pub min_requests: u64,
    /// First ejection, ms.
    pub base_ms: i64,
    /// Longest ejection, ms.
    pub max_ms: i64,
    /// Ramp stages, percent.
    pub ramp_up: Vec<u32>,
    /// Ejection cap, percent of the route's backends.
    pub max_ejected_percent: u32,
    /// The latency budget, if any.
    pub latency: Option<LatencyParams>,
}

impl HealthParams {
    /// Parses the policy; the error names the field.
    pub fn parse(h: &HealthPolicy) -> Result<Self, String> {
        let ppm = |field: &str, s: &str| s.parse::<Ppm>().map_err(|e| format!("spec.health.errorRate.{field}: {e}"));
        let dur = |field: &str, s: &str| match parse_duration_ms(s) {
            Ok(ms) if ms > 0 => Ok(ms),
            Ok(_) => Err(format!("spec.health.{field}: {s:?} must be longer than zero")),
            Err(e) => Err(format!("spec.health.{field}: {e}")),
        };
        Ok(Self {
            trip: ppm("trip", &h.error_rate.trip)?,
            recover: ppm("recover", &h.error_rate.recover)?,
            window_ms: dur("errorRate.window", &h.error_rate.window)?,
            window: h.error_rate.window.clone(),
            min_requests: u64::from(h.error_rate.min_requests.max(1)),
            base_ms: dur("ejection.base", &h.ejection.base)?,
            max_ms: dur("ejection.max", &h.ejection.max)?,
            ramp_up: h.ramp_up.iter().map(|p| (*p).clamp(1, 100)).collect(),
            max_ejected_percent: h.max_ejected_percent.min(100),
            latency: h.latency.as_ref().map(LatencyParams::parse).transpose()?,
        })
    }

    /// Ejection time for the `trips`-th trip: `min(base × 2^(trips−1), max)`.
    pub fn ejection_ms(&self, trips: u32) -> i64 {
        let shift = trips.saturating_sub(1);
        let d = if shift >= 62 { i64::MAX } else { self.base_ms.saturating_mul(1i64 << shift) };
        d.min(self.max_ms)
    }

    /// Most backends of an `n`-backend route that may be ejected at once.
    pub fn max_ejected(&self, n: usize) -> usize {
        n.saturating_mul(self.max_ejected_percent as usize) / 100
    }
}

/// Formats milliseconds as a Kubernetes-style duration (`1h2m3s`, `250ms`).
pub fn fmt_ms(ms: i64) -> String {
    if ms <= 0 {
        return "0s".into();
    }
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let (s, milli) = (rest / 1000, rest % 1000);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 {
        out.push_str(&format!("{s}s"));
    }
    if milli > 0 {
        out.push_str(&format!("{milli}ms"));
    }
    out
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Candidate {
    index: usize,
    rate: Ppm,
    requests: u64,
    errors: u64,
    from_ramp: bool,
    /// Wants out for latency (the error rate is below its threshold).
    latency: Option<LatencyEvidence>,
}

impl Candidate {
    /// What makes it want out, for messages: the error rate, or the latency.
    fn cause(&self, p: &HealthParams) -> String {
        match (&self.latency, &p.latency) {
            (Some(l), Some(lp)) => l.describe(&lp.window, self.from_ramp),
            _ => format!(
                "error rate {} over {} ({} errors in {} requests)",
                self.rate.to_decimal(),
                p.window,
                self.errors,
                self.requests
            ),
        }
    }

    /// Evidence entries of the cause.
    fn evidence(&self, p: &HealthParams, ev: &mut BTreeMap<String, String>) {
        match (&self.latency, &p.latency) {
            (Some(l), Some(lp)) => {
                l.evidence(&lp.window, ev);
                ev.insert("errorRate".into(), self.rate.to_decimal());
            }
            _ => {
                ev.insert("errorRate".into(), self.rate.to_decimal());
                ev.insert("requests".into(), self.requests.to_string());
                ev.insert("errors".into(), self.errors.to_string());
                ev.insert("window".into(), p.window.clone());
            }
        }
    }
}

struct Ctx<'a> {
    route: &'a ObjectKey,
    params: &'a HealthParams,
    now: Timestamp,
    prefix: &'static str,
    transitions: Vec<Transition>,
}

impl Ctx<'_> {
    fn push(
        &mut self,
        backend: &str,
        reason: &str,
        warning: bool,
        message: String,
        mut evidence: BTreeMap<String, String>,
    ) {
        evidence.insert("backend".into(), backend.to_string());
        self.transitions.push(Transition {
            kind: ObjectKind::ModelRoute,
            object: self.route.clone(),
            reason: reason.into(),
            message: clip(format!("{}{message}", self.prefix)),
            warning,
            evidence,
            time: self.now,
        });
    }

    /// Leaves an ejection: first ramp stage, or Healthy without stages.
    fn leave_ejection(&mut self, h: &mut BackendHealth, backend: &str, why: &str) {
        h.samples.clear();
        h.latency_samples.clear();
        h.stage_latency_le.clear();
        if self.params.ramp_up.is_empty() {
            self.restore(h, backend, why);
        } else {
            h.phase = Phase::Ramping { stage: 0, stage_started: self.now, requests: 0, errors: 0 };
            self.ramping(backend, 0, why);
        }
    }

    fn ramping(&mut self, backend: &str, stage: u32, why: &str) {
        let p = self.params;
        let percent = p.ramp_up.get(stage as usize).copied().unwrap_or(100);
        let mut ev = BTreeMap::new();
        ev.insert("stage".into(), format!("{}/{}", stage + 1, p.ramp_up.len()));
        ev.insert("percent".into(), percent.to_string());
        ev.insert("window".into(), p.window.clone());
        self.push(
            backend,
            "BackendRamping",
            false,
            format!(
                "backend {backend} ramping: stage {}/{} at {percent}% of its weight for {} ({why})",
                stage + 1,
                p.ramp_up.len(),
                p.window
            ),
            ev,
        );
    }

    fn restore(&mut self, h: &mut BackendHealth, backend: &str, why: &str) {
        h.phase = Phase::Healthy;
        h.stage_latency_le.clear();
        h.healthy_since = Some(self.now);
        let mut ev = BTreeMap::new();
        ev.insert("trips".into(), h.trips.to_string());
        ev.insert("window".into(), self.params.window.clone());
        self.push(
            backend,
            "BackendRestored",
            false,
            format!("backend {backend} restored to its configured weight ({why})"),
            ev,
        );
    }

    fn eject(&mut self, h: &mut BackendHealth, backend: &str, c: Candidate) {
        let p = self.params;
        h.trips = h.trips.saturating_add(1);
        let ms = p.ejection_ms(h.trips);
        let until = add_ms(self.now, ms);
        h.phase = Phase::Ejected { until };
        h.samples.clear();
        h.latency_samples.clear();
        h.stage_latency_le.clear();
        h.healthy_since = None;
        h.suppressed = false;
        h.last_trip = Some(TripEvidence { at: self.now, error_rate: c.rate, requests: c.requests, errors: c.errors });
        h.latency_trip = c.latency.clone();
        let threshold = if c.from_ramp { ("recover", p.recover) } else { ("trip", p.trip) };
        let mut ev = BTreeMap::new();
        c.evidence(p, &mut ev);
        ev.insert("ejectedUntil".into(), until.to_string());
        ev.insert("ejection".into(), fmt_ms(ms));
        ev.insert("trips".into(), h.trips.to_string());
        let cause = c.cause(p);
        let reached = if c.latency.is_some() {
            String::new()
        } else {
            ev.insert(threshold.0.into(), threshold.1.to_decimal());
            format!(" reached {} {}", threshold.0, threshold.1.to_decimal())
        };
        let during = if c.from_ramp { " while ramping" } else { "" };
        self.push(
            backend,
            "BackendEjected",
            true,
            format!(
                "backend {backend} ejected{during}: {cause}{reached}; out for {} until {} (trip {})",
                fmt_ms(ms),
                until,
                h.trips
            ),
            ev,
        );
    }
}

/// Evaluates the health of every backend of one route. Returns the next health of each backend
/// (in `backends` order) and the transitions (kind ModelRoute, object the route).
pub fn evaluate_route(
    route: &ObjectKey,
    backends: &[Backend],
    params: &HealthParams,
    previous: &BTreeMap<BackendKey, BackendHealth>,
    obs: &Observations,
    now: Timestamp,
    dry_run: bool,
) -> (Vec<BackendHealth>, Vec<Transition>) {
    let mut ctx = Ctx { route, params, now, prefix: if dry_run { "dry run: " } else { "" }, transitions: Vec::new() };
    let keys: Vec<BackendKey> =
        backends.iter().map(|b| BackendKey::new(&route.namespace, &route.name, &b.name)).collect();
    let mut states: Vec<BackendHealth> = keys.iter().map(|k| previous.get(k).cloned().unwrap_or_default()).collect();
    let cutoff = now.as_millisecond().saturating_sub(params.window_ms);
    let mut wants: Vec<Candidate> = Vec::new();

    for (i, b) in backends.iter().enumerate() {
        let h = &mut states[i];
        clamp_to_now(h, now, params);
        let o = obs.backends.get(&keys[i]);
        super::cache_share::record(&mut h.input_samples, &o.map(|o| o.tokens).unwrap_or_default(), now);
        match h.phase {
            Phase::Ejected { until } => {
                // Observations during an ejection are dropped.
                if now >= until {
                    ctx.leave_ejection(h, &b.name, "ejection over");
                }
            }
            Phase::Ramping { stage, stage_started, requests, errors } => {
                let (dr, de) = record(h, o, now, cutoff);
                latency::record(&mut h.latency_samples, o.map(|o| &o.latency_le[..]), now, params.latency.as_ref());
                if params.latency.is_some()
                    && let Some(o) = o
                {
                    latency::add_counts(&mut h.stage_latency_le, &o.latency_le);
                }
                let (sr, se) = (requests.saturating_add(dr), errors.saturating_add(de));
                h.phase = Phase::Ramping { stage, stage_started, requests: sr, errors: se };
                let (wr, we) = h.window_totals();
                let rate = Ppm::ratio(we, wr).unwrap_or_default();
                let slow = params
                    .latency
                    .as_ref()
                    .and_then(|l| l.over(&latency::window(&h.latency_samples, None), l.recover_ms));
                if wr >= params.min_requests && rate >= params.recover {
                    wants.push(Candidate { index: i, rate, requests: wr, errors: we, from_ramp: true, latency: None });
                } else if let Some(l) = slow {
                    wants.push(Candidate {
                        index: i,
                        rate,
                        requests: wr,
                        errors: we,
                        from_ramp: true,
                        latency: Some(l),
                    });
                } else if now.as_millisecond() >= stage_started.as_millisecond().saturating_add(params.window_ms) {
                    let stage_fast = params
                        .latency
                        .as_ref()
                        .is_none_or(|l| latency::p95(&h.stage_latency_le).is_none_or(|p| !p.over(l.recover_ms)));
                    h.stage_latency_le.clear();
                    let stage_ok = stage_fast && Ppm::ratio(se, sr).is_none_or(|r| r < params.recover);
                    if stage_ok {
                        let next = stage + 1;
                        if next as usize >= params.ramp_up.len() {
                            ctx.restore(h, &b.name, "ramp-up complete");
                        } else {
                            h.phase = Phase::Ramping { stage: next, stage_started: now, requests: 0, errors: 0 };
                            ctx.ramping(&b.name, next, "previous stage below recover");
                        }
                    } else {
                        // Not below `recover`, but too few requests to eject again: repeat the stage.
                        h.phase = Phase::Ramping { stage, stage_started: now, requests: 0, errors: 0 };
                    }
                }
            }
            Phase::Healthy => {
                record(h, o, now, cutoff);
                latency::record(&mut h.latency_samples, o.map(|o| &o.latency_le[..]), now, params.latency.as_ref());
                if h.trips > 0
                    && let Some(since) = h.healthy_since
                    && now.as_millisecond().saturating_sub(since.as_millisecond()) >= params.max_ms
                {
                    h.trips = 0;
                }
                let (wr, we) = h.window_totals();
                let rate = Ppm::ratio(we, wr).unwrap_or_default();
                if wr >= params.min_requests && rate >= params.trip {
                    wants.push(Candidate { index: i, rate, requests: wr, errors: we, from_ramp: false, latency: None });
                } else if let Some(l) =
                    params.latency.as_ref().and_then(|l| l.over(&latency::window(&h.latency_samples, None), l.trip_ms))
                {
                    wants.push(Candidate {
                        index: i,
                        rate,
                        requests: wr,
                        errors: we,
                        from_ramp: false,
                        latency: Some(l),
                    });
                }
            }
        }
    }

    // Spec shrank below the current ejections: the ones ending first come back early.
    let cap = params.max_ejected(backends.len());
    let mut ejected: Vec<(Timestamp, usize)> =
        states.iter().enumerate().filter_map(|(i, h)| h.ejected_until().map(|u| (u, i))).collect();
    ejected.sort();
    let over = ejected.len().saturating_sub(cap);
    for &(_, i) in ejected.iter().take(over) {
        ctx.leave_ejection(&mut states[i], &backends[i].name, "maxEjectedPercent lowered");
    }
    let mut count = ejected.len() - over;

    wants.sort_by(|a, b| {
        b.rate.cmp(&a.rate).then(a.latency.is_some().cmp(&b.latency.is_some())).then(a.index.cmp(&b.index))
    });
    let wanted: Vec<usize> = wants.iter().map(|c| c.index).collect();
    for c in wants {
        let name = &backends[c.index].name;
        let h = &mut states[c.index];
        if count < cap {
            count += 1;
            ctx.eject(h, name, c);
        } else if !h.suppressed {
            h.suppressed = true;
            let mut ev = BTreeMap::new();
            c.evidence(params, &mut ev);
            ev.insert("ejected".into(), count.to_string());
            ev.insert("backends".into(), backends.len().to_string());
            ev.insert("maxEjectedPercent".into(), params.max_ejected_percent.to_string());
            ctx.push(
                name,
                "EjectionSuppressed",
                true,
                format!(
                    "would eject: maxEjectedPercent reached: backend {name} has {} but {count} of {} backends are already ejected (max {}%)",
                    c.cause(params),
                    backends.len(),
                    params.max_ejected_percent
                ),
                ev,
            );
        }
    }
    for (i, h) in states.iter_mut().enumerate() {
        if !wanted.contains(&i) {
            h.suppressed = false;
        }
    }
    (states, ctx.transitions)
}

/// The clock stepped back (see the module rules): times later than `now` read as `now`; an
/// ejection has at most its own length left.
fn clamp_to_now(h: &mut BackendHealth, now: Timestamp, params: &HealthParams) {
    let clamp = |at: &mut Timestamp| {
        if *at > now {
            *at = now;
        }
    };
    h.samples.iter_mut().for_each(|s| clamp(&mut s.at));
    h.latency_samples.iter_mut().for_each(|s| clamp(&mut s.at));
    h.input_samples.iter_mut().for_each(|s| clamp(&mut s.at));
    if let Some(since) = h.healthy_since.as_mut() {
        clamp(since);
    }
    match &mut h.phase {
        Phase::Ejected { until } => {
            let longest = add_ms(now, params.ejection_ms(h.trips.max(1)));
            if *until > longest {
                *until = longest;
            }
        }
        Phase::Ramping { stage_started, .. } => clamp(stage_started),
        Phase::Healthy => {}
    }
}

/// Records one observation into the window (and the latency), prunes the window; returns the
/// requests and errors recorded.
fn record(h: &mut BackendHealth, o: Option<&super::BackendObservation>, now: Timestamp, cutoff: i64) -> (u64, u64) {
    h.samples.retain(|s| s.at.as_millisecond() > cutoff);
    let mut got = (0, 0);
    if let Some(o) = o {
        let (r, e) = (o.requests(), o.errors());
        if r > 0 || e > 0 || o.latency_count > 0 {
            h.samples.push(HealthSample {
                at: now,
                requests: r,
                errors: e,
                latency_ms_sum: o.latency_ms_sum,
                latency_count: o.latency_count,
            });
            got = (r, e);
        }
    }
    if let Some(l) = h.windowed_latency() {
        h.latency_ms = Some(l);
    }
    got
}

#[cfg(test)]
#[path = "health_tests.rs"]
mod tests;
