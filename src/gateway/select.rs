//! Which backends a request tries, in which order.
//!
//! The policy already decided the effective table (tier, weight, serving); the gateway only
//! orders it per request:
//! - only `serving` rows are ever tried;
//! - the best tier is the lowest tier with a serving row of weight > 0 (or, when every serving
//!   row has weight 0, the lowest tier with a serving row);
//! - inside a tier, rows with weight > 0 come first, ordered by the strategy: a weighted random
//!   draw without replacement for `Weighted` and `Cheapest` (the policy already set the
//!   weights), declared order for `Priority`, lowest observed latency for `LowestLatency` (rows
//!   never observed first, and about one request in ten explores a random row); then the
//!   tier's weight-0 rows in declared order;
//! - the best tier first, then the other tiers in ascending order;
//! - at most `max_attempts` rows.
//!
//! Per-request steering ([`Steer`]) applies on top, never beyond what the policy
//! decided: rows the request may not use (over its max cost) are dropped first, so the best
//! tier is the best tier among the rest; a preference (`cheapest` / `fastest`) then sorts the
//! best tier's weighted rows by its order key (stable, so ties keep the strategy's order);
//! otherwise an affinity key moves the rendezvous winner among the best tier's weighted rows
//! ([`super::affinity`]) to the front. Failover order after the first row is unchanged.

use rand::{Rng, RngExt};

use crate::config::Strategy;

/// One row of the effective table, as selection sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Candidate {
    /// Tier (lower preferred).
    pub(crate) tier: u32,
    /// Weight inside the tier.
    pub(crate) weight: u32,
    /// Whether it may be sent anything.
    pub(crate) serving: bool,
    /// Rendezvous id ([`super::affinity::backend_id`] of the backend's name).
    pub(crate) id: u64,
}

/// Per-request steering: affinity key and hints.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Steer {
    /// The request's affinity key.
    pub(crate) key: Option<u64>,
    /// A preference's order key of each row (lower first); overrides affinity.
    pub(crate) prefer: Option<Vec<u64>>,
    /// Rows this request may not use (index → skipped); shorter than the table means allowed.
    pub(crate) skip: Vec<bool>,
}

impl Steer {
    fn skips(&self, i: usize) -> bool {
        self.skip.get(i).copied().unwrap_or(false)
    }
}

/// Share of `LowestLatency` requests that explore a random row of the best tier.
const EXPLORE_PERCENT: u32 = 10;

/// Indices into `rows`, in the order to try them.
#[cfg(test)]
pub(crate) fn plan<R: Rng + ?Sized>(
    rows: &[Candidate],
    strategy: Strategy,
    max_attempts: usize,
    latency_us: impl Fn(usize) -> Option<u64>,
    rng: &mut R,
) -> Vec<usize> {
    plan_steered(rows, strategy, max_attempts, latency_us, &Steer::default(), rng)
}

/// Indices into `rows`, in the order to try them, steered for one request.
pub(crate) fn plan_steered<R: Rng + ?Sized>(
    rows: &[Candidate],
    strategy: Strategy,
    max_attempts: usize,
    latency_us: impl Fn(usize) -> Option<u64>,
    steer: &Steer,
    rng: &mut R,
) -> Vec<usize> {
    let serving: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].serving && !steer.skips(i)).collect();
    let best = serving
        .iter()
        .filter(|&&i| rows[i].weight > 0)
        .map(|&i| rows[i].tier)
        .min()
        .or_else(|| serving.iter().map(|&i| rows[i].tier).min());
    let Some(best) = best else {
        return Vec::new();
    };
    // The best tier first, then the others in order (no vector at all for a one-tier route).
    let mut others: Vec<u32> = serving.iter().map(|&i| rows[i].tier).filter(|&t| t != best).collect();
    others.sort_unstable();
    others.dedup();

    let mut out = Vec::with_capacity(serving.len().min(max_attempts.max(1)));
    for (n, tier) in std::iter::once(best).chain(others).enumerate() {
        let mut weighted: Vec<usize> =
            serving.iter().copied().filter(|&i| rows[i].tier == tier && rows[i].weight > 0).collect();
        let zeros = serving.iter().copied().filter(|&i| rows[i].tier == tier && rows[i].weight == 0);
        match strategy {
            Strategy::Weighted | Strategy::Cheapest => weighted = weighted_order(rows, weighted, rng),
            Strategy::Priority => {}
            Strategy::LowestLatency => {
                weighted.sort_by_key(|&i| latency_us(i).unwrap_or(0));
                if n == 0 && weighted.len() > 1 && rng.random_range(0..100u32) < EXPLORE_PERCENT {
                    let pick = rng.random_range(0..weighted.len());
                    let chosen = weighted.remove(pick);
                    weighted.insert(0, chosen);
                }
            }
        }
        if n == 0 {
            if let Some(keys) = &steer.prefer {
                weighted.sort_by_key(|&i| keys.get(i).copied().unwrap_or(u64::MAX));
            } else if let Some(key) = steer.key {
                let winner = super::affinity::choose(key, weighted.iter().map(|&i| (i, rows[i].id, rows[i].weight)));
                if let Some(pos) = winner.and_then(|w| weighted.iter().position(|&i| i == w)) {
                    let chosen = weighted.remove(pos);
                    weighted.insert(0, chosen);
                }
            }
        }
        out.extend(weighted);
        out.extend(zeros);
        if out.len() >= max_attempts.max(1) {
            break;
        }
    }
    out.truncate(max_attempts.max(1));
    out
}

/// Weighted random order without replacement.
fn weighted_order<R: Rng + ?Sized>(rows: &[Candidate], mut left: Vec<usize>, rng: &mut R) -> Vec<usize> {
    if left.len() <= 1 {
        return left;
    }
    let mut out = Vec::with_capacity(left.len());
    while left.len() > 1 {
        let total: u64 = left.iter().map(|&i| u64::from(rows[i].weight)).sum();
        if total == 0 {
            break;
        }
        let mut x = rng.random_range(0..total);
        let mut pos = left.len() - 1;
        for (p, &i) in left.iter().enumerate() {
            let w = u64::from(rows[i].weight);
            if x < w {
                pos = p;
                break;
            }
            x -= w;
        }
        out.push(left.remove(pos));
    }
    out.extend(left);
    out
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    use super::*;

    fn row(tier: u32, weight: u32, serving: bool) -> Candidate {
        Candidate { tier, weight, serving, id: 0 }
    }

    fn no_latency(_: usize) -> Option<u64> {
        None
    }

    #[test]
    fn weighted_spreads_by_weight_inside_the_best_tier() {
        let rows = [row(0, 70, true), row(0, 30, true), row(1, 100, true)];
        let mut rng = SmallRng::seed_from_u64(7);
        let mut first = [0u32; 3];
        for _ in 0..10_000 {
            let p = plan(&rows, Strategy::Weighted, 3, no_latency, &mut rng);
            assert_eq!(p.len(), 3);
            assert_eq!(p[2], 2, "the next tier comes after the whole best tier");
            first[p[0]] += 1;
        }
        assert!((6_700..7_300).contains(&first[0]), "{first:?}");
        assert!((2_700..3_300).contains(&first[1]), "{first:?}");
        assert_eq!(first[2], 0);
    }

    #[test]
    fn never_tries_rows_that_are_not_serving() {
        let rows = [row(0, 100, false), row(1, 5, true), row(1, 0, true), row(2, 1, false)];
        let mut rng = SmallRng::seed_from_u64(1);
        for s in [Strategy::Weighted, Strategy::Priority, Strategy::Cheapest, Strategy::LowestLatency] {
            assert_eq!(plan(&rows, s, 5, no_latency, &mut rng), vec![1, 2]);
        }
        assert!(plan(&[row(0, 1, false)], Strategy::Weighted, 3, no_latency, &mut rng).is_empty());
    }

    #[test]
    fn weight_zero_rows_are_failover_only() {
        // Tier 0 has only a weight-0 serving row: tier 1 is the best tier, tier 0 comes after.
        let rows = [row(0, 0, true), row(1, 10, true), row(2, 0, true)];
        let mut rng = SmallRng::seed_from_u64(1);
        assert_eq!(plan(&rows, Strategy::Priority, 5, no_latency, &mut rng), vec![1, 0, 2]);
        // Every serving row has weight 0: the lowest tier serves.
        let rows = [row(3, 0, true), row(1, 0, true)];
        assert_eq!(plan(&rows, Strategy::Weighted, 5, no_latency, &mut rng), vec![1, 0]);
    }

    #[test]
    fn priority_is_declared_order_and_attempts_are_bounded() {
        let rows = [row(0, 1, true), row(0, 50, true), row(0, 0, true), row(1, 1, true)];
        let mut rng = SmallRng::seed_from_u64(3);
        assert_eq!(plan(&rows, Strategy::Priority, 3, no_latency, &mut rng), vec![0, 1, 2]);
        assert_eq!(plan(&rows, Strategy::Priority, 1, no_latency, &mut rng), vec![0]);
        assert_eq!(plan(&rows, Strategy::Priority, 0, no_latency, &mut rng), vec![0]);
    }

    #[test]
    fn lowest_latency_prefers_fast_and_explores() {
        let rows = [row(0, 1, true), row(0, 1, true), row(0, 1, true)];
        let lat = |i: usize| Some([900u64, 100, 500][i]);
        let mut rng = SmallRng::seed_from_u64(11);
        let mut first = [0u32; 3];
        for _ in 0..2_000 {
            let p = plan(&rows, Strategy::LowestLatency, 3, lat, &mut rng);
            first[p[0]] += 1;
        }
        assert!(first[1] > 1_700, "{first:?}");
        assert!(first[0] > 20 && first[2] > 20, "exploration reaches the slow rows: {first:?}");
        // Never observed rows are tried first.
        let lat = |i: usize| if i == 2 { None } else { Some(10) };
        let mut rng = SmallRng::seed_from_u64(12);
        let firsts: Vec<usize> = (0..50).map(|_| plan(&rows, Strategy::LowestLatency, 1, lat, &mut rng)[0]).collect();
        assert!(firsts.iter().filter(|&&i| i == 2).count() > 40);
    }

    fn named(tier: u32, weight: u32, serving: bool, name: &str) -> Candidate {
        Candidate { tier, weight, serving, id: crate::gateway::affinity::backend_id(name) }
    }

    #[test]
    fn an_affinity_key_sticks_to_its_backend_and_moves_only_when_it_stops_serving() {
        let mut rows =
            [named(0, 50, true, "a"), named(0, 30, true, "b"), named(0, 20, true, "c"), named(1, 9, true, "d")];
        let mut rng = SmallRng::seed_from_u64(5);
        let mut moved = 0;
        for key in 0..300u64 {
            let steer = Steer { key: Some(key), ..Steer::default() };
            let first = plan_steered(&rows, Strategy::Weighted, 4, no_latency, &steer, &mut rng)[0];
            for _ in 0..5 {
                assert_eq!(plan_steered(&rows, Strategy::Weighted, 4, no_latency, &steer, &mut rng)[0], first);
            }
            // Its backend is ejected: the key moves inside the best tier, never to tier 1.
            let was = rows[first];
            rows[first].serving = false;
            let now = plan_steered(&rows, Strategy::Weighted, 4, no_latency, &steer, &mut rng)[0];
            assert!(now != first && now != 3);
            rows[first] = was;
            // Another backend is ejected: the key stays unless it was there.
            let other = (first + 1) % 3;
            rows[other].serving = false;
            let now = plan_steered(&rows, Strategy::Weighted, 4, no_latency, &steer, &mut rng)[0];
            moved += usize::from(now != first);
            rows[other].serving = true;
        }
        assert_eq!(moved, 0);
    }

    #[test]
    fn hints_skip_rows_and_reorder_the_best_tier_only() {
        let rows = [named(0, 50, true, "a"), named(0, 50, true, "b"), named(1, 9, true, "c")];
        let mut rng = SmallRng::seed_from_u64(9);
        // Skipped rows are never tried; the best tier is the best among the rest.
        let steer = Steer { skip: vec![true, true, false], ..Steer::default() };
        assert_eq!(plan_steered(&rows, Strategy::Weighted, 3, no_latency, &steer, &mut rng), vec![2]);
        // A preference sorts the best tier, whatever the key says; tier 1 stays last.
        for key in 0..50u64 {
            let steer = Steer { key: Some(key), prefer: Some(vec![9, 1, 0]), ..Steer::default() };
            assert_eq!(plan_steered(&rows, Strategy::Weighted, 3, no_latency, &steer, &mut rng), vec![1, 0, 2]);
        }
    }
}
