//! Latency health: the p95 of a backend's answers over a window, from exact bucket
//! counts, against a budget with hysteresis. The rules that eject and ramp live in `health`,
//! which calls these pure helpers.
//!
//! Rules:
//! - Latency is what the gateway's meter counts for each *successful* attempt: the time to the
//!   first chunk of a streamed answer, the total duration otherwise. Failed attempts count in
//!   the error rate instead (a timeout is an error, not a latency).
//! - Observations are cumulative bucket counts (`le`) over the bounds
//!   [`LATENCY_BOUNDS_MS`] then `+Inf`, as integers; windows add them exactly.
//! - p95, conservatively: rank `r = ceil(0.95 × n)` of the `n` answers in the window; the p95 is
//!   the *upper bound* of the first bucket whose cumulative count reaches `r` (never below the
//!   true 95th percentile). In the `+Inf` bucket it is "above 5m" ([`P95::Above`]).
//! - A p95 is over a budget when it is strictly greater. On a bucket bound `B` this is exact:
//!   "fewer than 95 % of the answers took at most `B`". A budget between two bounds acts as the
//!   lower bound (the p95 only takes bound values): `4s` behaves as `2s500ms`. Budgets are
//!   therefore limited to `5ms..=5m` (the finite bounds' range).
//! - Hysteresis: a healthy backend trips when the window holds at least `minRequests` answers
//!   and its p95 is over `trip`; a ramping one is ejected again when its p95 is over `recover`
//!   (`recover ≤ trip`, default `trip`).

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::health::fmt_ms;
use super::money::parse_duration_ms;
use crate::api::LatencyPolicy;
use crate::signals::contract::{LATENCY_BOUNDS_MS, LATENCY_BUCKETS};

/// Smallest budget: the first bucket bound.
pub const MIN_BUDGET_MS: i64 = LATENCY_BOUNDS_MS[0] as i64;
/// Largest budget: the last finite bucket bound.
pub const MAX_BUDGET_MS: i64 = LATENCY_BOUNDS_MS[LATENCY_BOUNDS_MS.len() - 1] as i64;

/// Adds cumulative bucket counts `more` into `into` (a shorter one counts as zeros).
pub fn add_counts(into: &mut Vec<u64>, more: &[u64]) {
    if into.len() < more.len() {
        into.resize(more.len(), 0);
    }
    for (a, b) in into.iter_mut().zip(more) {
        *a = a.saturating_add(*b);
    }
}

/// A conservative 95th percentile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", content = "ms")]
pub enum P95 {
    /// At most this bucket bound, milliseconds.
    AtMost(u64),
    /// Above the largest finite bound (this many milliseconds).
    Above(u64),
}

impl P95 {
    /// Whether it is strictly over a budget of `budget_ms`.
    pub fn over(self, budget_ms: i64) -> bool {
        match self {
            P95::AtMost(ms) => i64::try_from(ms).unwrap_or(i64::MAX) > budget_ms,
            P95::Above(_) => true,
        }
    }

    /// Reads back what [`P95::display`] wrote (a restarted controller reads status).
    pub fn parse_display(s: &str) -> Option<P95> {
        let (above, d) = match s.strip_prefix('>') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let ms = u64::try_from(parse_duration_ms(d).ok()?).ok()?;
        Some(if above { P95::Above(ms) } else { P95::AtMost(ms) })
    }

    /// As shown in status and events: a Kubernetes duration (`2s500ms`), or `>5m`.
    pub fn display(self) -> String {
        match self {
            P95::AtMost(ms) => fmt_ms(i64::try_from(ms).unwrap_or(i64::MAX)),
            P95::Above(ms) => format!(">{}", fmt_ms(i64::try_from(ms).unwrap_or(i64::MAX))),
        }
    }
}

/// Answers in cumulative counts `le` (the `+Inf` bucket, the last).
pub fn answers(le: &[u64]) -> u64 {
    le.last().copied().unwrap_or(0)
}

/// The conservative p95 of cumulative counts `le` (see the module rules); `None` without an
/// answer.
pub fn p95(le: &[u64]) -> Option<P95> {
    let n = answers(le);
    if n == 0 {
        return None;
    }
    let rank = (u128::from(n) * 95).div_ceil(100);
    let i = le.iter().position(|c| u128::from(*c) >= rank).unwrap_or(le.len());
    Some(match LATENCY_BOUNDS_MS.get(i) {
        Some(ms) if i + 1 < LATENCY_BUCKETS => P95::AtMost(*ms),
        _ => P95::Above(LATENCY_BOUNDS_MS[LATENCY_BOUNDS_MS.len() - 1]),
    })
}

/// One evaluation's latency histogram delta for a backend.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LatencySample {
    /// Evaluation time.
    pub at: Timestamp,
    /// Cumulative bucket counts of the answers in this delta.
    pub le: Vec<u64>,
}

/// The sum of the samples taken after `after` (all when `None`).
pub fn window(samples: &[LatencySample], after: Option<Timestamp>) -> Vec<u64> {
    let mut out = Vec::new();
    for s in samples.iter().filter(|s| after.is_none_or(|a| s.at > a)) {
        add_counts(&mut out, &s.le);
    }
    out
}

/// Evidence of a latency trip (or of the current window, in status).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LatencyEvidence {
    /// The conservative p95.
    pub p95: P95,
    /// Answers in the window.
    pub requests: u64,
    /// The budget it was compared with, milliseconds (`trip`, or `recover` while ramping).
    pub budget_ms: i64,
}

impl LatencyEvidence {
    /// The cause in an event message.
    pub fn describe(&self, window: &str, from_ramp: bool) -> String {
        let threshold = if from_ramp { "recover" } else { "trip" };
        format!(
            "p95 latency {} over {window} ({} answers) above {threshold} {}",
            self.p95.display(),
            self.requests,
            fmt_ms(self.budget_ms)
        )
    }

    /// The evidence entries of an event.
    pub fn evidence(&self, window: &str, ev: &mut std::collections::BTreeMap<String, String>) {
        ev.insert("latencyP95".into(), self.p95.display());
        ev.insert("requests".into(), self.requests.to_string());
        ev.insert("latencyBudget".into(), fmt_ms(self.budget_ms));
        ev.insert("window".into(), window.to_string());
    }
}

/// Records one latency histogram delta `le` into the window `samples` and prunes them to the
/// budget's window (everything is dropped without a latency budget).
pub fn record(samples: &mut Vec<LatencySample>, le: Option<&[u64]>, now: Timestamp, params: Option<&LatencyParams>) {
    let Some(p) = params else {
        samples.clear();
        return;
    };
    let cutoff = now.as_millisecond().saturating_sub(p.window_ms);
    samples.retain(|s| s.at.as_millisecond() > cutoff);
    if let Some(le) = le.filter(|le| answers(le) > 0) {
        samples.push(LatencySample { at: now, le: le.to_vec() });
    }
}

/// A route's latency budget, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LatencyParams {
    /// Trip budget, ms.
    pub trip_ms: i64,
    /// Recover budget, ms (≤ `trip_ms`).
    pub recover_ms: i64,
    /// Window, ms.
    pub window_ms: i64,
    /// The window as written.
    pub window: String,
    /// The trip budget as written.
    pub trip: String,
    /// Minimum answers in the window for a decision.
    pub min_requests: u64,
}

impl LatencyParams {
    /// Parses the policy; the error names the field.
    pub fn parse(l: &LatencyPolicy) -> Result<Self, String> {
        let budget = |field: &str, s: &str| match parse_duration_ms(s) {
            Ok(ms) if (MIN_BUDGET_MS..=MAX_BUDGET_MS).contains(&ms) => Ok(ms),
            Ok(_) => Err(format!("spec.health.latency.{field}: {s:?} must be between 5ms and 5m")),
            Err(e) => Err(format!("spec.health.latency.{field}: {e}")),
        };
        let trip_ms = budget("trip", &l.trip)?;
        let recover_ms = match &l.recover {
            Some(r) => budget("recover", r)?,
            None => trip_ms,
        };
        if recover_ms > trip_ms {
            return Err(format!("spec.health.latency.recover: {:?} must not be above trip {:?}", l.recover, l.trip));
        }
        let window_ms = match parse_duration_ms(&l.window) {
            Ok(ms) if ms > 0 => ms,
            Ok(_) => return Err(format!("spec.health.latency.window: {:?} must be longer than zero", l.window)),
            Err(e) => return Err(format!("spec.health.latency.window: {e}")),
        };
        Ok(Self {
            trip_ms,
            recover_ms,
            window_ms,
            window: l.window.clone(),
            trip: l.trip.clone(),
            min_requests: u64::from(l.min_requests.max(1)),
        })
    }

    /// The evidence when the window `le` is over `budget_ms` with at least `minRequests`.
    pub fn over(&self, le: &[u64], budget_ms: i64) -> Option<LatencyEvidence> {
        let requests = answers(le);
        let p = p95(le)?;
        (requests >= self.min_requests && p.over(budget_ms)).then_some(LatencyEvidence { p95: p, requests, budget_ms })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cumulative counts from per-bucket counts.
    fn le(per_bucket: &[(usize, u64)]) -> Vec<u64> {
        let mut v = [0u64; LATENCY_BUCKETS];
        for (i, n) in per_bucket {
            v[*i] += n;
        }
        let mut c = 0;
        v.iter()
            .map(|n| {
                c += n;
                c
            })
            .collect()
    }

    #[test]
    fn p95_is_the_upper_bound_of_the_bucket_holding_the_rank() {
        // 95 answers ≤ 100ms (bucket 4), 5 in (1s, 2.5s] (bucket 8): rank 95 is in bucket 4.
        assert_eq!(p95(&le(&[(4, 95), (8, 5)])), Some(P95::AtMost(100)));
        // 94 fast, 6 slow: rank 95 lands in the slow bucket.
        assert_eq!(p95(&le(&[(4, 94), (8, 6)])), Some(P95::AtMost(2_500)));
        // rank = ceil(0.95 × 21) = 20: 19 fast + 2 slow puts it in the slow bucket.
        assert_eq!(p95(&le(&[(0, 19), (9, 2)])), Some(P95::AtMost(5_000)));
        assert_eq!(p95(&le(&[(0, 20), (9, 1)])), Some(P95::AtMost(5)));
        // One answer: it is the p95.
        assert_eq!(p95(&le(&[(7, 1)])), Some(P95::AtMost(1_000)));
        // In +Inf: above the largest bound, over any budget.
        let inf = p95(&le(&[(15, 3)])).unwrap();
        assert_eq!(inf, P95::Above(300_000));
        assert!(inf.over(MAX_BUDGET_MS));
        assert_eq!(inf.display(), ">5m");
        assert_eq!(p95(&[]), None);
        assert_eq!(p95(&le(&[])), None);
    }

    #[test]
    fn budgets_on_bounds_are_exact_and_between_bounds_act_as_the_lower_bound() {
        let p = P95::AtMost(2_500);
        assert!(!p.over(2_500));
        assert!(p.over(2_499));
        // 4s is between 2.5s and 5s: a p95 bucket of (2.5s, 5s] is over it, one of
        // (1s, 2.5s] is not, so 4s decides as 2.5s would.
        assert!(P95::AtMost(5_000).over(4_000));
        assert!(!P95::AtMost(2_500).over(4_000));
        assert_eq!(P95::AtMost(2_500).display(), "2s500ms");
        for p in [P95::AtMost(5), P95::AtMost(2_500), P95::AtMost(300_000), P95::Above(300_000)] {
            assert_eq!(P95::parse_display(&p.display()), Some(p));
        }
        assert_eq!(P95::parse_display("fast"), None);
    }

    #[test]
    fn params_parse_with_field_names() {
        let pol = |trip: &str, recover: Option<&str>, window: &str| LatencyPolicy {
            trip: trip.into(),
            recover: recover.map(String::from),
            window: window.into(),
            min_requests: 0,
        };
        let p = LatencyParams::parse(&pol("2s", None, "1m")).unwrap();
        assert_eq!((p.trip_ms, p.recover_ms, p.window_ms, p.min_requests), (2_000, 2_000, 60_000, 1));
        assert!(LatencyParams::parse(&pol("0s", None, "1m")).unwrap_err().contains("spec.health.latency.trip"));
        assert!(LatencyParams::parse(&pol("6m", None, "1m")).unwrap_err().contains("between 5ms and 5m"));
        let e = LatencyParams::parse(&pol("1s", Some("2s"), "1m")).unwrap_err();
        assert!(e.contains("spec.health.latency.recover"), "{e}");
        assert!(LatencyParams::parse(&pol("1s", None, "0s")).unwrap_err().contains("spec.health.latency.window"));
        assert!(LatencyParams::parse(&pol("1 s", None, "1m")).unwrap_err().contains("spec.health.latency.trip"));
    }

    #[test]
    fn over_needs_min_requests() {
        let p = LatencyParams {
            trip_ms: 1_000,
            recover_ms: 500,
            window_ms: 60_000,
            window: "1m".into(),
            trip: "1s".into(),
            min_requests: 10,
        };
        assert_eq!(p.over(&le(&[(9, 9)]), 1_000), None);
        let e = p.over(&le(&[(9, 10)]), 1_000).unwrap();
        assert_eq!((e.p95, e.requests, e.budget_ms), (P95::AtMost(5_000), 10, 1_000));
        assert_eq!(p.over(&le(&[(7, 10)]), 1_000), None);
        assert!(p.over(&le(&[(7, 10)]), 500).is_some());
    }

    proptest::proptest! {
        /// Against raw latencies bucketed as the gateway's meter buckets them: the p95 is the
        /// upper bound of the bucket holding the exact 95th percentile (rank ceil(0.95 n)), so
        /// never below it; and on every bound `B`, "over B" is exactly "fewer than the rank
        /// answered within B".
        #[test]
        fn p95_is_conservative_and_exact_on_bounds(raw in proptest::collection::vec(0u64..400_000, 1..300)) {
            let mut per = [0u64; LATENCY_BUCKETS];
            for ms in &raw {
                let i = LATENCY_BOUNDS_MS.iter().position(|b| ms <= b).unwrap_or(LATENCY_BOUNDS_MS.len());
                per[i] += 1;
            }
            let cum: Vec<u64> = per.iter().scan(0, |c, n| { *c += n; Some(*c) }).collect();
            let mut sorted = raw.clone();
            sorted.sort_unstable();
            let rank = (raw.len() * 95).div_ceil(100);
            let exact = sorted[rank - 1];
            let got = p95(&cum).unwrap();
            match got {
                P95::AtMost(ms) => {
                    proptest::prop_assert!(exact <= ms);
                    let i = LATENCY_BOUNDS_MS.iter().position(|b| *b == ms).unwrap();
                    proptest::prop_assert!(i == 0 || exact > LATENCY_BOUNDS_MS[i - 1]);
                }
                P95::Above(_) => proptest::prop_assert!(exact > MAX_BUDGET_MS as u64),
            }
            for b in LATENCY_BOUNDS_MS {
                let within = raw.iter().filter(|ms| **ms <= b).count();
                proptest::prop_assert_eq!(got.over(b as i64), within < rank, "bound {}", b);
            }
        }
    }

    #[test]
    fn windows_add_samples_after_a_time() {
        let t = |s: i64| Timestamp::from_second(s).unwrap();
        let samples = vec![
            LatencySample { at: t(10), le: vec![1, 2] },
            LatencySample { at: t(20), le: vec![0, 3] },
            LatencySample { at: t(30), le: vec![2, 2, 4] },
        ];
        assert_eq!(window(&samples, None), [3, 7, 4]);
        assert_eq!(window(&samples, Some(t(10))), [2, 5, 4]);
        assert!(window(&samples, Some(t(30))).is_empty());
    }
}
