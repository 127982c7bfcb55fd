//! What a gateway reports of its Hard budgets, read from its `/metrics`:
//! `tollgate_hard_budget_{granted,settled,reserved}_usd{budget}` (gauges) and
//! `tollgate_hard_budget_reservations_total{budget,result}` (counters), and the instance id
//! the gateway reads its grants as (`tollgate_hard_budget_instance_info{instance}`), as written
//! by `crate::gateway::admission`.
//!
//! Rules: gauges are USD written as floats; a value is read as an exact decimal when it is
//! one (`0.002`) and otherwise (exponent form, `1e-7`) rounded to the nearest pico-dollar.
//! These figures are the gateway's *view* (what the controller shows in `status.hard` and uses
//! to size top-ups); the safety of the grants never depends on them (the controller's own
//! ledger of what it granted does). Negative, non-finite or unparsable values are skipped, as
//! are samples without a `budget` label.

use std::collections::BTreeMap;

use crate::policy::Money;
use crate::policy::money::PICOS_PER_USD;

/// `tollgate_hard_budget_granted_usd`.
pub const GRANTED_USD: &str = "tollgate_hard_budget_granted_usd";
/// `tollgate_hard_budget_settled_usd`.
pub const SETTLED_USD: &str = "tollgate_hard_budget_settled_usd";
/// `tollgate_hard_budget_reserved_usd`.
pub const RESERVED_USD: &str = "tollgate_hard_budget_reserved_usd";
/// `tollgate_hard_budget_reservations_total`.
pub const RESERVATIONS_TOTAL: &str = "tollgate_hard_budget_reservations_total";
/// `tollgate_hard_budget_instance_info`.
pub const INSTANCE_INFO: &str = "tollgate_hard_budget_instance_info";

/// What one gateway reports of its Hard budgets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HardReading {
    /// The instance id it reads its grants as (`None`: not reported, e.g. an older gateway).
    pub instance: Option<String>,
    /// Its Hard budgets, by name.
    pub budgets: BTreeMap<String, HardGauges>,
}

/// One Hard budget as one gateway reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardGauges {
    /// Its cumulative grant in the window it knows.
    pub granted: Money,
    /// Settled spend in that window.
    pub settled: Money,
    /// Reserved by requests in flight.
    pub reserved: Money,
    /// Reservations admitted since the gateway started.
    pub admitted: u64,
    /// Reservations refused since the gateway started.
    pub refused: u64,
}

/// Folds one sample into `reading` when it is one of the Hard budget metrics; returns whether
/// it was.
pub fn add_sample(reading: &mut HardReading, metric: &str, labels: &BTreeMap<String, String>, value: &str) -> bool {
    if metric == INSTANCE_INFO {
        if let Some(i) = labels.get("instance").filter(|i| !i.is_empty()) {
            reading.instance = Some(i.clone());
        }
        return true;
    }
    let hard = &mut reading.budgets;
    let field: fn(&mut HardGauges) -> &mut Money = match metric {
        GRANTED_USD => |h| &mut h.granted,
        SETTLED_USD => |h| &mut h.settled,
        RESERVED_USD => |h| &mut h.reserved,
        RESERVATIONS_TOTAL => {
            let (Some(budget), Some(n)) = (labels.get("budget"), super::text::parse_count(value)) else {
                return true;
            };
            let h = hard.entry(budget.clone()).or_default();
            match labels.get("result").map(String::as_str) {
                Some("admitted") => h.admitted = n,
                Some("refused") => h.refused = n,
                _ => {}
            }
            return true;
        }
        _ => return false,
    };
    if let (Some(budget), Some(m)) = (labels.get("budget"), usd(value)) {
        *field(hard.entry(budget.clone()).or_default()) = m;
    }
    true
}

/// A gauge's USD value as money: exact for a plain decimal, else rounded to the pico-dollar.
pub fn usd(value: &str) -> Option<Money> {
    if let Ok(m) = value.parse::<Money>() {
        return (!m.is_negative()).then_some(m);
    }
    let f = value.parse::<f64>().ok().filter(|f| f.is_finite() && *f >= 0.0)?;
    let picos = (f * PICOS_PER_USD as f64).round();
    // A gauge reading, not a sum of money: one rounding of a display value is fine here.
    (picos < i128::MAX as f64).then(|| Money::from_picos(picos as i128))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_gateway_exposition() {
        let body = "# TYPE tollgate_hard_budget_reservations counter\n\
            tollgate_hard_budget_reservations_total{budget=\"pb\",result=\"admitted\"} 7\n\
            tollgate_hard_budget_reservations_total{budget=\"pb\",result=\"refused\"} 2\n\
            tollgate_hard_budget_granted_usd{budget=\"pb\"} 0.05\n\
            tollgate_hard_budget_settled_usd{budget=\"pb\"} 0.014\n\
            tollgate_hard_budget_reserved_usd{budget=\"pb\"} 1e-6\n\
            tollgate_hard_budget_reserved_usd 3\n\
            tollgate_hard_budget_instance_info{instance=\"uid-1.0a1b2c3d\"} 1\n\
            tollgate_requests_total{route=\"r\"} 1\n";
        let mut hard = HardReading::default();
        for s in super::super::text::samples(body) {
            add_sample(&mut hard, &s.metric, &s.labels, &s.value);
        }
        assert_eq!(hard.instance.as_deref(), Some("uid-1.0a1b2c3d"));
        assert_eq!(hard.budgets.len(), 1);
        let h = hard.budgets["pb"];
        assert_eq!((h.admitted, h.refused), (7, 2));
        assert_eq!(h.granted, "0.05".parse().unwrap());
        assert_eq!(h.settled, "0.014".parse().unwrap());
        assert_eq!(h.reserved, "0.000001".parse().unwrap());
        assert_eq!(usd("-1"), None);
        assert_eq!(usd("NaN"), None);
    }
}
