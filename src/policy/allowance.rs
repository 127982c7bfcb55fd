//! Hard budgets: the reservation ledger of one gateway and the grants that split a budget's
//! window between gateways. Pure: amounts and grants are passed in, no clock, no I/O.
//!
//! The model:
//! - The controller grants each gateway instance a **cumulative allowance** for the current
//!   window of a Hard budget: the most that instance may spend in that window, in total. The
//!   grants of every instance (alive or gone) never sum above the limit ([`regrant`]).
//! - The gateway admits a request to a covered backend only if it can **reserve** the request's
//!   worst-case cost: `settled + reserved + worst ≤ granted` ([`Ledger::reserve`]). When the
//!   answer ends it **settles** the reservation with the exact metered cost, releasing the rest
//!   ([`Ledger::settle`]); a request that fails or is cancelled settles with what the provider
//!   bills for it (zero when nothing was billed).
//! - Hence, as long as every actual cost is at most its reservation, each instance's settled
//!   spend stays within its grant, and the sum over instances within the limit: an instance
//!   that loses contact with the controller spends at most what it was granted.
//!
//! Edge cases, each deliberate:
//! - Grants only grow inside a window ([`regrant`] never lowers one): the controller's view of
//!   an instance's spend lags, so taking back unspent allowance could hand the same dollars out
//!   twice. A gone instance keeps its grant counted until the window ends (it may have spent all
//!   of it before it went). A restarted gateway is a new instance with no grant.
//! - A new instance gets nothing until granted; [`Ledger::new`] starts at zero.
//! - [`Ledger::grant`] accepts a lower grant too (a gateway may always be told to spend less);
//!   a grant for a new window resets the settled spend, while reservations still in flight keep
//!   counting (they are billed in the window in which they end, as the meter bills them).
//! - An actual cost above its reservation (a provider that bills beyond the worst case) is
//!   settled in full (spend is spend) and reported as an overrun, so it can be counted.
//! - Money is exact ([`Money`], pico-USD); nothing here rounds except [`regrant`]'s
//!   proportional split, which floors (never hands out more than is left).

use std::collections::BTreeMap;

use super::money::Money;

/// One admitted reservation. Deliberately not `Clone`: it is settled exactly once.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a reservation must be settled or released"]
pub struct Reservation {
    id: u64,
    amount: Money,
}

impl Reservation {
    /// The reserved (worst-case) amount.
    pub fn amount(&self) -> Money {
        self.amount
    }
}

/// The outcome of a settlement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settlement {
    /// What was counted as spent.
    pub spent: Money,
    /// What was given back (reservation − actual, zero on an overrun).
    pub released: Money,
    /// By how much the actual cost exceeded the reservation (zero normally).
    pub overrun: Money,
}

/// One gateway instance's ledger for one Hard budget.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    /// Identifies the window the grant is for (e.g. its start, Unix seconds).
    window: i64,
    granted: Money,
    settled: Money,
    reserved: Money,
    in_flight: u64,
    next_id: u64,
}

impl Ledger {
    /// A ledger with no grant: it admits nothing until [`Ledger::grant`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the allowance of `window`. The same window: the grant replaces the previous one
    /// (lower or higher). Another window: settled spend restarts at zero; reservations in
    /// flight keep counting until they end.
    pub fn grant(&mut self, window: i64, granted: Money) {
        if window != self.window {
            self.window = window;
            self.settled = Money::ZERO;
        }
        self.granted = if granted.is_negative() { Money::ZERO } else { granted };
    }

    /// Reserves `worst` if it fits in what is left of the grant; `None` otherwise (and for a
    /// negative amount).
    pub fn reserve(&mut self, worst: Money) -> Option<Reservation> {
        if worst.is_negative() {
            return None;
        }
        let committed = self.settled + self.reserved;
        if committed + worst > self.granted {
            return None;
        }
        self.reserved += worst;
        self.in_flight += 1;
        self.next_id += 1;
        Some(Reservation { id: self.next_id, amount: worst })
    }

    /// Settles `r` with the exact `actual` cost (negative counts as zero), releasing the rest.
    pub fn settle(&mut self, r: Reservation, actual: Money) -> Settlement {
        let actual = if actual.is_negative() { Money::ZERO } else { actual };
        self.reserved = self.reserved.saturating_sub(r.amount);
        self.in_flight = self.in_flight.saturating_sub(1);
        self.settled += actual;
        Settlement {
            spent: actual,
            released: r.amount.saturating_sub(actual),
            overrun: actual.saturating_sub(r.amount),
        }
    }

    /// Gives a reservation back unused (nothing was billed).
    pub fn release(&mut self, r: Reservation) -> Settlement {
        self.settle(r, Money::ZERO)
    }

    /// The window of the current grant.
    pub fn window(&self) -> i64 {
        self.window
    }
    /// The current grant.
    pub fn granted(&self) -> Money {
        self.granted
    }
    /// Settled spend in the window.
    pub fn settled(&self) -> Money {
        self.settled
    }
    /// Reserved by requests in flight.
    pub fn reserved(&self) -> Money {
        self.reserved
    }
    /// Requests in flight.
    pub fn in_flight(&self) -> u64 {
        self.in_flight
    }
    /// What a new reservation may still take.
    pub fn available(&self) -> Money {
        self.granted.saturating_sub(self.settled + self.reserved)
    }
}

/// What the controller knows of one gateway instance when it re-grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayView {
    /// Its current cumulative grant in this window (zero for a new instance).
    pub granted: Money,
    /// Its spend in this window as last observed (lags the truth; never above `granted` for an
    /// instance that keeps its grant).
    pub spent: Money,
    /// Its recent burn: spend over the last re-grant interval.
    pub burn: Money,
    /// Whether it is alive (a gone instance keeps its grant but gets no more).
    pub alive: bool,
}

/// How re-granting shares out what is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantPolicy {
    /// Headroom each alive instance is topped up to at least (grant − observed spend).
    pub floor: Money,
    /// Headroom target in intervals of the instance's burn (e.g. 2: two intervals of traffic).
    pub burn_intervals: u32,
}

impl Default for GrantPolicy {
    fn default() -> Self {
        Self { floor: Money::from_picos(10_000_000_000), burn_intervals: 2 }
    }
}

/// The new cumulative grants of one Hard budget's window.
///
/// Every alive instance is topped up towards a headroom (grant − observed spend) of
/// `max(floor, burn × burn_intervals)`; when what is left of the limit (limit − all grants) does
/// not cover every top-up, it is split in proportion to them, floored. Grants never decrease,
/// gone instances get nothing more, and the sum of all grants never exceeds `limit` (if the
/// previous grants already exceed it, e.g. after the limit was lowered, nobody gets more).
pub fn regrant(limit: Money, gateways: &BTreeMap<String, GatewayView>, policy: GrantPolicy) -> BTreeMap<String, Money> {
    let total: Money = gateways.values().map(|g| g.granted).sum();
    let left = limit.saturating_sub(total);
    let needs: BTreeMap<&String, Money> = gateways
        .iter()
        .filter(|(_, g)| g.alive)
        .map(|(k, g)| {
            let target = policy.floor.max(g.burn.times(u64::from(policy.burn_intervals)));
            let headroom = g.granted.saturating_sub(g.spent);
            (k, target.saturating_sub(headroom))
        })
        .collect();
    let need: Money = needs.values().copied().sum();
    gateways
        .iter()
        .map(|(k, g)| {
            let n = needs.get(k).copied().unwrap_or(Money::ZERO);
            let extra = if need <= left || need == Money::ZERO {
                n
            } else {
                Money::from_picos(n.picos() * left.picos() / need.picos())
            };
            (k.clone(), g.granted + extra)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(picos: i128) -> Money {
        Money::from_picos(picos)
    }

    #[test]
    fn reserve_settle_release() {
        let mut l = Ledger::new();
        assert_eq!(l.reserve(usd(1)), None, "a new ledger admits nothing");
        l.grant(1, usd(100));
        let a = l.reserve(usd(60)).unwrap();
        assert_eq!(l.reserve(usd(41)), None);
        let b = l.reserve(usd(40)).unwrap();
        assert_eq!(l.available(), Money::ZERO);
        let s = l.settle(a, usd(25));
        assert_eq!(s, Settlement { spent: usd(25), released: usd(35), overrun: Money::ZERO });
        assert_eq!(l.release(b).released, usd(40));
        assert_eq!((l.settled(), l.reserved(), l.in_flight(), l.available()), (usd(25), Money::ZERO, 0, usd(75)));
        let c = l.reserve(usd(10)).unwrap();
        assert_eq!(l.settle(c, usd(12)).overrun, usd(2));
        assert_eq!(l.settled(), usd(37));
    }

    #[test]
    fn a_new_window_restarts_the_spend_but_not_the_reservations() {
        let mut l = Ledger::new();
        l.grant(1, usd(100));
        let a = l.reserve(usd(30)).unwrap();
        let b = l.reserve(usd(50)).unwrap();
        let _ = l.settle(b, usd(50));
        assert_eq!(l.available(), usd(20));
        l.grant(2, usd(100));
        assert_eq!(l.available(), usd(70), "the reservation in flight still counts");
        let _ = l.settle(a, usd(30));
        assert_eq!((l.settled(), l.available()), (usd(30), usd(70)));
        l.grant(2, usd(10));
        assert_eq!(l.reserve(usd(1)), None, "a lower grant stops admission");
    }

    #[test]
    fn regrant_tops_up_within_the_limit_and_never_takes_back() {
        let view = |granted, spent, burn, alive| GatewayView {
            granted: usd(granted),
            spent: usd(spent),
            burn: usd(burn),
            alive,
        };
        let policy = GrantPolicy { floor: usd(10), burn_intervals: 2 };
        let mut gws = BTreeMap::new();
        gws.insert("a".to_string(), view(0, 0, 0, true));
        gws.insert("b".to_string(), view(0, 0, 0, true));
        let g = regrant(usd(100), &gws, policy);
        assert_eq!((g["a"], g["b"]), (usd(10), usd(10)));
        // a burns 30 per interval: target headroom 60; b idle keeps its floor.
        gws.insert("a".to_string(), view(10, 10, 30, true));
        gws.insert("b".to_string(), view(10, 0, 0, true));
        let g = regrant(usd(100), &gws, policy);
        assert_eq!((g["a"], g["b"]), (usd(70), usd(10)));
        // Not enough left: 20 left, a needs 60 and c (new) needs 10: split 60:10, floored.
        gws.insert("a".to_string(), view(70, 70, 30, true));
        gws.insert("c".to_string(), view(0, 0, 0, true));
        let g = regrant(usd(90), &gws, policy);
        assert_eq!((g["a"], g["b"], g["c"]), (usd(70 + 8), usd(10), usd(1)));
        assert!(g.values().copied().sum::<Money>() <= usd(90));
        // A gone instance keeps its grant and gets nothing more; a lowered limit gives nobody more.
        gws.insert("a".to_string(), view(78, 10, 30, false));
        let g = regrant(usd(50), &gws, policy);
        assert_eq!((g["a"], g["b"], g["c"]), (usd(78), usd(10), usd(0)));
    }
}
