//! Observation deltas and merges, defined once: the gateway's exact meter (`tollgate local`),
//! the controller's tracker of scraped or Prometheus readings and `local`'s carried-over
//! observations all go through these functions.
//!
//! Rules:
//! - Input is the *cumulative* totals of each series ([`SeriesTotals`]) at two times; output is
//!   what happened in between, as the policy's [`Observations`] of one namespace.
//! - A counter lower than before counts as zero (never a negative delta). Detecting a restarted
//!   gateway (and then diffing against zero) is the caller's job.
//! - Latency is in whole milliseconds of the cumulative sum, so successive deltas add up to the
//!   total (each source rounds its cumulative sum once, not each delta).
//! - The latency histogram (cumulative bucket counts, `le`) is diffed bucket by bucket, exactly
//!   (integers); a histogram whose `+Inf` count did not grow adds nothing.
//! - Tokens are diffed kind by kind (for the achieved prompt-cache share of `Cheapest`).
//! - A series that did nothing adds no entry: no empty backend rows, no zero spend.
//! - Spend is exact [`Money`] (pico-dollars), never a float.

use std::collections::BTreeMap;

use super::contract::SeriesKey;
use crate::policy::{BackendKey, BackendObservation, Money, Observations, Outcome, SpendKey};
use crate::pricing::{TokenCounts, TokenKind};

/// Cumulative totals of one series, in the units of the policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeriesTotals {
    /// Attempts by outcome.
    pub outcomes: BTreeMap<Outcome, u64>,
    /// Sum of the latency of successful attempts, whole milliseconds.
    pub latency_ms_sum: u64,
    /// Number of successful attempts in `latency_ms_sum`.
    pub latency_count: u64,
    /// Latency histogram of successful attempts: cumulative counts per bucket of
    /// [`super::contract::LATENCY_BOUNDS_MS`] then `+Inf` (empty: none seen).
    pub latency_le: Vec<u64>,
    /// Tokens billed, by kind.
    pub tokens: TokenCounts,
    /// Exact spend.
    pub spend: Money,
}

/// Adds to `obs` what series `key` of `namespace` did between `before` and `now`.
pub fn add_delta(obs: &mut Observations, namespace: &str, key: &SeriesKey, before: &SeriesTotals, now: &SeriesTotals) {
    let mut delta = BackendObservation::default();
    for (o, n) in &now.outcomes {
        let d = n.saturating_sub(before.outcomes.get(o).copied().unwrap_or(0));
        if d > 0 {
            delta.outcomes.insert(*o, d);
        }
    }
    delta.latency_count = now.latency_count.saturating_sub(before.latency_count);
    if delta.latency_count > 0 {
        delta.latency_ms_sum = now.latency_ms_sum.saturating_sub(before.latency_ms_sum);
    }
    delta.latency_le = le_delta(&before.latency_le, &now.latency_le);
    delta.tokens = tokens_delta(&before.tokens, &now.tokens);
    if !delta.outcomes.is_empty()
        || delta.latency_count > 0
        || !delta.latency_le.is_empty()
        || delta.tokens != TokenCounts::default()
    {
        let slot = obs.backends.entry(BackendKey::new(namespace, &key.route, &key.backend)).or_default();
        add_backend(slot, &delta);
    }
    let spent = now.spend.saturating_sub(before.spend);
    if spent > Money::ZERO {
        *obs.spend.entry(SpendKey::new(namespace, &key.provider, &key.model)).or_default() += spent;
    }
}

/// Adds to `obs` what every series in `now` did since `before` (a series missing from `before`
/// counts from zero; one missing from `now` did nothing).
pub fn add_between(
    obs: &mut Observations,
    namespace: &str,
    before: &BTreeMap<SeriesKey, SeriesTotals>,
    now: &BTreeMap<SeriesKey, SeriesTotals>,
) {
    let zero = SeriesTotals::default();
    for (k, n) in now {
        add_delta(obs, namespace, k, before.get(k).unwrap_or(&zero), n);
    }
}

/// [`add_between`] into empty observations.
pub fn observations_between(
    namespace: &str,
    before: &BTreeMap<SeriesKey, SeriesTotals>,
    now: &BTreeMap<SeriesKey, SeriesTotals>,
) -> Observations {
    let mut obs = Observations::default();
    add_between(&mut obs, namespace, before, now);
    obs
}

/// Adds `more` into `into` (outcome counts, latency sums, spend).
pub fn merge_observations(into: &mut Observations, more: Observations) {
    for (k, o) in more.backends {
        add_backend(into.backends.entry(k).or_default(), &o);
    }
    for (k, m) in more.spend {
        *into.spend.entry(k).or_default() += m;
    }
}

/// Bucket-by-bucket growth of a cumulative latency histogram (a missing bucket counts as 0, a
/// bucket that went down as no growth); empty when the `+Inf` bucket (the last) did not grow.
pub fn le_delta(before: &[u64], now: &[u64]) -> Vec<u64> {
    let d: Vec<u64> =
        now.iter().enumerate().map(|(i, n)| n.saturating_sub(before.get(i).copied().unwrap_or(0))).collect();
    if d.last().copied().unwrap_or(0) == 0 { Vec::new() } else { d }
}

/// Growth of each token kind (a kind that went down grew by nothing).
pub fn tokens_delta(before: &TokenCounts, now: &TokenCounts) -> TokenCounts {
    let mut d = TokenCounts::default();
    for kind in TokenKind::ALL {
        *d.get_mut(kind) = now.get(kind).saturating_sub(before.get(kind));
    }
    d
}

fn add_backend(slot: &mut BackendObservation, more: &BackendObservation) {
    for (outcome, n) in &more.outcomes {
        let c = slot.outcomes.entry(*outcome).or_insert(0);
        *c = c.saturating_add(*n);
    }
    slot.latency_ms_sum = slot.latency_ms_sum.saturating_add(more.latency_ms_sum);
    slot.latency_count = slot.latency_count.saturating_add(more.latency_count);
    crate::policy::latency::add_counts(&mut slot.latency_le, &more.latency_le);
    slot.tokens.add(&more.tokens);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(ok: u64, timeouts: u64, ms: u64, count: u64, picos: i128) -> SeriesTotals {
        SeriesTotals {
            outcomes: BTreeMap::from([(Outcome::Ok, ok), (Outcome::Timeout, timeouts)]),
            latency_ms_sum: ms,
            latency_count: count,
            latency_le: Vec::new(),
            tokens: TokenCounts::default(),
            spend: Money::from_picos(picos),
        }
    }

    #[test]
    fn deltas_count_only_what_grew() {
        let k = SeriesKey::new("chat", "a", "openai", "gpt");
        let before = BTreeMap::from([(k.clone(), totals(3, 1, 30, 3, 100))]);
        let now = BTreeMap::from([(k.clone(), totals(5, 1, 55, 5, 142))]);
        let obs = observations_between("ns", &before, &now);
        let b = &obs.backends[&BackendKey::new("ns", "chat", "a")];
        assert_eq!(b.outcomes, BTreeMap::from([(Outcome::Ok, 2)]));
        assert_eq!((b.latency_ms_sum, b.latency_count), (25, 2));
        assert_eq!(obs.spend[&SpendKey::new("ns", "openai", "gpt")], Money::from_picos(42));
        // Nothing happened: no rows at all.
        assert_eq!(observations_between("ns", &now, &now), Observations::default());
        // Counters that went down never give negative deltas.
        assert_eq!(observations_between("ns", &now, &before), Observations::default());
        // Unknown before: from zero.
        let all = observations_between("ns", &BTreeMap::new(), &now);
        assert_eq!(all.backends[&BackendKey::new("ns", "chat", "a")].requests(), 6);
        assert_eq!(all.spend[&SpendKey::new("ns", "openai", "gpt")], Money::from_picos(142));
    }

    #[test]
    fn merging_adds_everything() {
        let k = SpendKey::new("default", "openai", "gpt-5");
        let bk = BackendKey::new("default", "chat", "a");
        let mut a = Observations::default();
        a.spend.insert(k.clone(), Money::from_picos(5));
        a.backends.insert(
            bk.clone(),
            BackendObservation {
                outcomes: BTreeMap::from([(Outcome::Ok, 1)]),
                latency_ms_sum: 10,
                latency_count: 1,
                latency_le: vec![1, 1],
                tokens: TokenCounts::default(),
            },
        );
        let mut b = Observations::default();
        b.spend.insert(k.clone(), Money::from_picos(7));
        b.backends.insert(
            bk.clone(),
            BackendObservation {
                outcomes: BTreeMap::from([(Outcome::Ok, 2), (Outcome::Timeout, 1)]),
                latency_ms_sum: 25,
                latency_count: 2,
                latency_le: vec![0, 2],
                tokens: TokenCounts { input: 5, cached_input: 7, ..TokenCounts::default() },
            },
        );
        merge_observations(&mut a, b);
        assert_eq!(a.spend[&k], Money::from_picos(12));
        let m = &a.backends[&bk];
        assert_eq!(m.outcomes, BTreeMap::from([(Outcome::Ok, 3), (Outcome::Timeout, 1)]));
        assert_eq!((m.latency_ms_sum, m.latency_count), (35, 3));
        assert_eq!(m.latency_le, [1, 3]);
        assert_eq!((m.tokens.input, m.tokens.cached_input), (5, 7));
    }

    #[test]
    fn latency_histograms_diff_bucket_by_bucket() {
        let k = SeriesKey::new("chat", "a", "openai", "gpt");
        let with = |le: Vec<u64>| SeriesTotals { latency_le: le, ..SeriesTotals::default() };
        let before = BTreeMap::from([(k.clone(), with(vec![1, 4, 4]))]);
        let now = BTreeMap::from([(k.clone(), with(vec![1, 6, 9]))]);
        let obs = observations_between("ns", &before, &now);
        assert_eq!(obs.backends[&BackendKey::new("ns", "chat", "a")].latency_le, [0, 2, 5]);
        // No growth of +Inf: nothing at all.
        assert_eq!(observations_between("ns", &now, &now), Observations::default());
        assert!(le_delta(&[3, 3], &[1, 2]).is_empty());
        // Token kinds diff one by one.
        let tk = |i: u64, c: u64| SeriesTotals {
            tokens: TokenCounts { input: i, cached_input: c, ..TokenCounts::default() },
            ..SeriesTotals::default()
        };
        let obs = observations_between(
            "ns",
            &BTreeMap::from([(k.clone(), tk(10, 5))]),
            &BTreeMap::from([(k.clone(), tk(12, 50))]),
        );
        let t = obs.backends[&BackendKey::new("ns", "chat", "a")].tokens;
        assert_eq!((t.input, t.cached_input), (2, 45));
        // From nothing: the whole histogram.
        assert_eq!(le_delta(&[], &[2, 3]), [2, 3]);
    }
}
