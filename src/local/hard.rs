//! Hard budgets in `tollgate local`: the same grant logic as a fleet, with one
//! gateway instance.
//!
//! Each evaluation builds the allowances document from the Hard budgets of the namespace and
//! the policy's memory ([`crate::policy::allowance::regrant`]). Spend of earlier processes in
//! the same window (restored from the state file) counts as the grant of a gone instance, so
//! this process may spend at most `limit − earlier spend`: as a single gateway it has no one to
//! share with, so it is topped up to everything left (floor = the limit). A window that starts
//! while this process runs has no earlier spend. The instance id is fresh per process (a
//! restarted `local` is a new instance, like a restarted gateway pod).
//!
//! It also fills `status.hard` of each Hard budget and says, once per episode, when a Hard
//! budget starts refusing requests.

use std::collections::BTreeMap;

use crate::api::{Enforcement, Grant, HardStatus, ProviderBudget, ProviderBudgetStatus};
use crate::config::allowances::{Allowances, HardBudgetGrants};
use crate::gateway::HardUsage;
use crate::policy::allowance::{GatewayView, GrantPolicy, regrant};
use crate::policy::money::Money;
use crate::policy::{DecisionState, ObjectKey};

/// Id of the earlier processes' spend in the grants.
const EARLIER: &str = "earlier-processes";

/// Per Hard budget: the window this process knows and the spend of earlier processes in it.
#[derive(Debug, Default)]
pub(crate) struct LocalHard {
    /// This process's instance id.
    pub(crate) instance: String,
    windows: BTreeMap<String, (i64, Money)>,
    first: bool,
    refusing: BTreeMap<String, u64>,
}

impl LocalHard {
    pub(crate) fn new(instance: String) -> Self {
        Self { instance, windows: BTreeMap::new(), first: true, refusing: BTreeMap::new() }
    }

    /// The allowances of `namespace`'s Hard budgets, given the policy memory after this
    /// evaluation and the gateway's view of its ledgers.
    pub(crate) fn allowances(
        &mut self,
        budgets: &[ProviderBudget],
        namespace: &str,
        memory: &DecisionState,
        usage: &[HardUsage],
    ) -> Allowances {
        let mut out = Vec::new();
        let first = std::mem::replace(&mut self.first, false);
        for b in budgets {
            let key = ObjectKey::of(b);
            if key.namespace != namespace || b.spec.enforcement != Enforcement::Hard {
                continue;
            }
            let Ok(limit) = b.spec.limit.parse::<Money>() else { continue };
            let Some(mem) = memory.budgets.get(&key) else { continue };
            let window = mem.window_start.as_second();
            let mine = usage.iter().find(|u| u.budget == key.name && u.window_start == window);
            let earlier = match self.windows.get(&key.name) {
                Some((w, e)) if *w == window => *e,
                // First sight of this window: at start, what the state file says was spent
                // before; a window that begins while running had no earlier process.
                _ => {
                    let e = if first { mem.spent } else { Money::ZERO };
                    self.windows.insert(key.name.clone(), (window, e));
                    e
                }
            };
            let mut views = BTreeMap::new();
            views.insert(
                EARLIER.to_string(),
                GatewayView { granted: earlier, spent: earlier, burn: Money::ZERO, alive: false },
            );
            views.insert(
                self.instance.clone(),
                GatewayView {
                    granted: mine.map_or(Money::ZERO, |u| u.granted),
                    spent: mine.map_or(Money::ZERO, |u| u.settled),
                    burn: Money::ZERO,
                    alive: true,
                },
            );
            let grants = regrant(limit, &views, GrantPolicy { floor: limit, burn_intervals: 0 });
            out.push(HardBudgetGrants {
                name: key.name.clone(),
                provider: b.spec.provider.clone(),
                models: b.spec.models.clone(),
                limit: limit.to_string(),
                window_start: window,
                grants: grants.into_iter().map(|(k, v)| (k, v.to_decimal(6))).collect(),
            });
        }
        Allowances { namespace: namespace.to_string(), budgets: out }
    }

    /// `status.hard` of a Hard budget from this process's ledger and its grants.
    pub(crate) fn status(&self, doc: &Allowances, name: &str, usage: &[HardUsage]) -> Option<HardStatus> {
        let g = doc.budgets.iter().find(|g| g.name == name)?;
        let u = usage.iter().find(|u| u.budget == name);
        let bound: Money = g.grants.values().filter_map(|v| v.parse::<Money>().ok()).sum();
        Some(HardStatus {
            reserved: u.map_or(Money::ZERO, |u| u.reserved).to_decimal(6),
            settled: u.map_or(Money::ZERO, |u| u.settled).to_decimal(6),
            bound: bound.to_decimal(6),
            refused: u.map_or(0, |u| u.refused),
            grants: g.grants.iter().map(|(k, v)| Grant { gateway: k.clone(), granted: v.clone() }).collect(),
        })
    }

    /// Names of Hard budgets that refused requests since the last call and had not before
    /// (what the controller reports as an Event).
    pub(crate) fn started_refusing(&mut self, usage: &[HardUsage]) -> Vec<String> {
        let mut out = Vec::new();
        for u in usage {
            let before = self.refusing.insert(u.budget.clone(), u.refused).unwrap_or(0);
            if before == 0 && u.refused > 0 {
                out.push(u.budget.clone());
            }
        }
        out
    }
}

/// Adds `hard` to a budget status.
pub(crate) fn with_hard(mut s: ProviderBudgetStatus, hard: Option<HardStatus>) -> ProviderBudgetStatus {
    if hard.is_some() {
        s.hard = hard;
    }
    s
}
