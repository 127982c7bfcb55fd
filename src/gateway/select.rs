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
}

/// Share of `LowestLatency` requests that explore a random row of the best tier.
const EXPLORE_PERCENT: u32 = 10;

/// Indices into `rows`, in the order to try them.
pub(crate) fn plan<R: Rng + ?Sized>(
    rows: &[Candidate],
    strategy: Strategy,
    max_attempts: usize,
    latency_us: impl Fn(usize) -> Option<u64>,
    rng: &mut R,
) -> Vec<usize> {
    let serving: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].serving).collect();
    let best = serving
        .iter()
        .filter(|&&i| rows[i].weight > 0)
        .map(|&i| rows[i].tier)
        .min()
        .or_else(|| serving.iter().map(|&i| rows[i].tier).min());
    let Some(best) = best else {
        return Vec::new();
    };
    let mut tiers: Vec<u32> = serving.iter().map(|&i| rows[i].tier).filter(|&t| t != best).collect();
    tiers.sort_unstable();
    tiers.dedup();
    tiers.insert(0, best);

    let mut out = Vec::with_capacity(serving.len().min(max_attempts.max(1)));
    for (n, tier) in tiers.into_iter().enumerate() {
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
        Candidate { tier, weight, serving }
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
}
