//! Property test of Hard budgets (issue 13): random interleavings of reserve / settle / release
//! / observe / re-grant / deliver / kill / restart across several gateway instances of one
//! budget. Whatever the order, as long as every actual cost is at most its reservation:
//! - the settled spend of all instances together never exceeds the limit, at any step;
//! - each instance's settled + reserved stays within the grant it holds;
//! - the controller's grants never sum above the limit and never decrease;
//! - once every request has ended (settled, failed, cancelled, or cut by a kill), nothing is
//!   left reserved.

use std::collections::BTreeMap;

use proptest::prelude::*;
use tollgate::policy::allowance::{GatewayView, GrantPolicy, Ledger, Reservation, regrant};
use tollgate::policy::money::Money;

#[derive(Clone, Debug)]
enum Op {
    /// Gateway slot `g` admits a request of worst case `amount` picos that will cost `pct`% of it.
    Reserve { g: usize, amount: i128, pct: u8 },
    /// The `i`-th open request of `g` ends with its cost.
    Settle { g: usize, i: usize },
    /// The `i`-th open request of `g` fails or is cancelled before anything is billed.
    Release { g: usize, i: usize },
    /// The controller scrapes `g`'s spend (its view lags between scrapes).
    Observe { g: usize },
    /// The controller re-grants with these burns (picos per interval).
    Regrant { burns: Vec<i128> },
    /// The latest grant reaches `g` (a gateway out of contact never gets it).
    Deliver { g: usize },
    /// `g`'s process dies: its requests in flight are billed in full by the provider, then it
    /// spends nothing more. Its slot restarts as a new instance with no grant.
    Kill { g: usize },
}

const SLOTS: usize = 4;

fn op() -> impl Strategy<Value = Op> {
    let g = 0..SLOTS;
    prop_oneof![
        6 => (g.clone(), 1i128..3_000_000, 0u8..=100).prop_map(|(g, amount, pct)| Op::Reserve { g, amount, pct }),
        4 => (g.clone(), 0usize..8).prop_map(|(g, i)| Op::Settle { g, i }),
        1 => (g.clone(), 0usize..8).prop_map(|(g, i)| Op::Release { g, i }),
        2 => g.clone().prop_map(|g| Op::Observe { g }),
        2 => proptest::collection::vec(0i128..2_000_000, SLOTS).prop_map(|burns| Op::Regrant { burns }),
        3 => g.clone().prop_map(|g| Op::Deliver { g }),
        1 => g.prop_map(|g| Op::Kill { g }),
    ]
}

/// One gateway instance as the test drives it.
struct Instance {
    id: String,
    ledger: Ledger,
    open: Vec<(Reservation, Money)>,
}

struct World {
    limit: Money,
    slots: Vec<Instance>,
    /// Instances that died: their ledgers, frozen.
    dead: Vec<Instance>,
    /// The controller: grants and the last observed spend per instance id.
    grants: BTreeMap<String, Money>,
    observed: BTreeMap<String, Money>,
    alive: BTreeMap<String, bool>,
    next_instance: usize,
}

impl World {
    fn new(limit: Money) -> Self {
        let mut w = World {
            limit,
            slots: Vec::new(),
            dead: Vec::new(),
            grants: BTreeMap::new(),
            observed: BTreeMap::new(),
            alive: BTreeMap::new(),
            next_instance: 0,
        };
        for _ in 0..SLOTS {
            let i = w.spawn();
            w.slots.push(i);
        }
        w
    }

    fn spawn(&mut self) -> Instance {
        self.next_instance += 1;
        let id = format!("gw-{}", self.next_instance);
        self.alive.insert(id.clone(), true);
        Instance { id, ledger: Ledger::new(), open: Vec::new() }
    }

    fn settled_total(&self) -> Money {
        self.slots.iter().chain(&self.dead).map(|i| i.ledger.settled()).sum()
    }

    fn apply(&mut self, op: Op) -> Result<(), TestCaseError> {
        match op {
            Op::Reserve { g, amount, pct } => {
                let inst = &mut self.slots[g];
                let worst = Money::from_picos(amount);
                let actual = Money::from_picos(amount * i128::from(pct) / 100);
                let before = inst.ledger.available();
                match inst.ledger.reserve(worst) {
                    Some(r) => inst.open.push((r, actual)),
                    None => prop_assert!(before < worst, "refused {worst} with {before} available"),
                }
            }
            Op::Settle { g, i } => {
                let inst = &mut self.slots[g];
                if i < inst.open.len() {
                    let (r, actual) = inst.open.remove(i);
                    let s = inst.ledger.settle(r, actual);
                    prop_assert_eq!(s.overrun, Money::ZERO);
                }
            }
            Op::Release { g, i } => {
                let inst = &mut self.slots[g];
                if i < inst.open.len() {
                    let (r, _) = inst.open.remove(i);
                    let _ = inst.ledger.release(r);
                }
            }
            Op::Observe { g } => {
                let inst = &self.slots[g];
                self.observed.insert(inst.id.clone(), inst.ledger.settled());
            }
            Op::Regrant { burns } => {
                let mut views = BTreeMap::new();
                let mut burn_of = BTreeMap::new();
                for (slot, b) in self.slots.iter().zip(burns) {
                    burn_of.insert(slot.id.clone(), Money::from_picos(b));
                }
                for (id, alive) in &self.alive {
                    views.insert(
                        id.clone(),
                        GatewayView {
                            granted: self.grants.get(id).copied().unwrap_or(Money::ZERO),
                            spent: self.observed.get(id).copied().unwrap_or(Money::ZERO),
                            burn: burn_of.get(id).copied().unwrap_or(Money::ZERO),
                            alive: *alive,
                        },
                    );
                }
                let policy = GrantPolicy { floor: Money::from_picos(500_000), burn_intervals: 2 };
                let new = regrant(self.limit, &views, policy);
                for (id, g) in &new {
                    let old = self.grants.get(id).copied().unwrap_or(Money::ZERO);
                    prop_assert!(*g >= old, "grant of {id} decreased: {old} → {g}");
                }
                let sum: Money = new.values().copied().sum();
                prop_assert!(sum <= self.limit, "grants sum {sum} above the limit {}", self.limit);
                self.grants = new;
            }
            Op::Deliver { g } => {
                let inst = &mut self.slots[g];
                let grant = self.grants.get(&inst.id).copied().unwrap_or(Money::ZERO);
                inst.ledger.grant(1, grant);
            }
            Op::Kill { g } => {
                let fresh = self.spawn();
                let mut old = std::mem::replace(&mut self.slots[g], fresh);
                for (r, _) in std::mem::take(&mut old.open) {
                    // The provider bills the cut request in full: the worst case.
                    let amount = r.amount();
                    let _ = old.ledger.settle(r, amount);
                }
                self.alive.insert(old.id.clone(), false);
                self.dead.push(old);
            }
        }
        for inst in self.slots.iter().chain(&self.dead) {
            let l = &inst.ledger;
            prop_assert!(l.settled() + l.reserved() <= l.granted(), "{}: settled + reserved above its grant", inst.id);
        }
        let total = self.settled_total();
        prop_assert!(total <= self.limit, "settled {total} above the limit {}", self.limit);
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn hard_budgets_hold_across_gateways(limit in 1i128..20_000_000, ops in proptest::collection::vec(op(), 1..200)) {
        let mut w = World::new(Money::from_picos(limit));
        for op in ops {
            w.apply(op)?;
        }
        // Every request still open ends: half settle with their cost, half fail unbilled.
        for inst in &mut w.slots {
            for (n, (r, actual)) in std::mem::take(&mut inst.open).into_iter().enumerate() {
                if n % 2 == 0 {
                    let _ = inst.ledger.settle(r, actual);
                } else {
                    let _ = inst.ledger.release(r);
                }
            }
        }
        for inst in w.slots.iter().chain(&w.dead) {
            prop_assert_eq!(inst.ledger.reserved(), Money::ZERO, "{} left reserved", inst.id);
            prop_assert_eq!(inst.ledger.in_flight(), 0);
        }
        let total = w.settled_total();
        prop_assert!(total <= w.limit);
    }
}

/// The test above must be able to fail: without the grant check (a gateway reserving from
/// nothing, i.e. the per-replica limit of other gateways), the spend exceeds the limit.
#[test]
fn per_replica_limits_would_overshoot() {
    let limit = Money::from_picos(1_000);
    let mut ledgers: Vec<Ledger> = (0..3).map(|_| Ledger::new()).collect();
    for l in &mut ledgers {
        l.grant(1, limit); // each replica granted the whole limit: what a per-replica limit does
        let r = l.reserve(Money::from_picos(900)).unwrap();
        let _ = l.settle(r, Money::from_picos(900));
    }
    let total: Money = ledgers.iter().map(Ledger::settled).sum();
    assert!(total > limit, "three replicas with the whole limit each spend {total}");
}
