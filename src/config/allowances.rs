//! The allowances document: the grants of every Hard budget, the second, small
//! contract between the controller (or `local`) and the gateways.
//!
//! It travels apart from the routing document on purpose: grants change every re-grant
//! interval, and putting them in the routing document would churn its `revision` (and every
//! gateway's reload) that often. In a cluster it is ConfigMap [`ALLOWANCES_CONFIGMAP`], key
//! [`ALLOWANCES_KEY`]; `local` hands it to its gateway in-process.
//!
//! Rules: each budget lists, per gateway instance id, the instance's **cumulative** grant for
//! the window starting at `windowStart` (Unix seconds). An instance not listed has a grant of
//! zero: a new gateway admits nothing to a Hard budget's backends until granted. Amounts are
//! exact decimal USD strings; a document with an unparsable amount is refused whole.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::policy::coverage::covers;
use crate::policy::money::Money;

/// ConfigMap holding the document, next to `tollgate-gateway`.
pub const ALLOWANCES_CONFIGMAP: &str = "tollgate-allowances";
/// Key of the document in that ConfigMap.
pub const ALLOWANCES_KEY: &str = "allowances.json";

/// Every Hard budget of a namespace with its grants.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Allowances {
    /// Namespace of the budgets.
    pub namespace: String,
    /// Hard budgets, sorted by name.
    pub budgets: Vec<HardBudgetGrants>,
}

/// One Hard budget.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HardBudgetGrants {
    /// ProviderBudget name.
    pub name: String,
    /// Provider it covers.
    pub provider: String,
    /// Models it covers (empty: every model of the provider).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// The limit, USD exact decimal (informational: the grants already respect it).
    pub limit: String,
    /// Start of the window the grants are for, Unix seconds.
    pub window_start: i64,
    /// Cumulative grant per gateway instance id, USD exact decimal.
    #[serde(default)]
    pub grants: BTreeMap<String, String>,
}

/// A document that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllowancesError {
    /// Not the document's shape.
    #[error("allowances document does not parse: {0}")]
    Parse(String),
    /// An amount is not a decimal USD string, or the grants sum above the limit.
    #[error("allowances: budget {budget}: {field}: {message}")]
    Invalid {
        /// Budget name.
        budget: String,
        /// Field.
        field: String,
        /// What is wrong.
        message: String,
    },
}

impl HardBudgetGrants {
    /// Whether this budget covers a backend of `provider` / `model`.
    pub fn covers(&self, provider: &str, model: &str) -> bool {
        covers(&self.provider, &self.models, provider, model)
    }

    /// The grant of `instance` (zero when not listed or unparsable: validated documents have
    /// none unparsable).
    pub fn grant_of(&self, instance: &str) -> Money {
        self.grants.get(instance).and_then(|g| g.parse::<Money>().ok()).unwrap_or(Money::ZERO)
    }
}

impl Allowances {
    /// Checks every amount, and that no budget's grants sum above its limit.
    pub fn validate(&self) -> Result<(), AllowancesError> {
        for b in &self.budgets {
            let invalid =
                |field: String, message: String| AllowancesError::Invalid { budget: b.name.clone(), field, message };
            let limit = b.limit.parse::<Money>().map_err(|e| invalid("limit".into(), e.to_string()))?;
            let mut sum = Money::ZERO;
            for (gw, g) in &b.grants {
                let m = g.parse::<Money>().map_err(|e| invalid(format!("grants.{gw}"), e.to_string()))?;
                if m.is_negative() {
                    return Err(invalid(format!("grants.{gw}"), "negative grant".into()));
                }
                sum += m;
            }
            if sum > limit {
                return Err(invalid("grants".into(), format!("grants sum to {sum}, above the limit {limit}")));
            }
        }
        Ok(())
    }

    /// Parses and validates.
    pub fn from_json(bytes: &[u8]) -> Result<Self, AllowancesError> {
        let doc: Allowances = serde_json::from_slice(bytes).map_err(|e| AllowancesError::Parse(e.to_string()))?;
        doc.validate()?;
        Ok(doc)
    }

    /// Compact JSON.
    pub fn to_json(&self) -> String {
        // Serializing plain fields and maps cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_above_the_limit_are_refused() {
        let doc = |a: &str, b: &str| {
            format!(
                r#"{{"namespace":"ns","budgets":[{{"name":"pb","provider":"openai","limit":"3","windowStart":0,"grants":{{"a":"{a}","b":"{b}"}}}}]}}"#
            )
        };
        let ok = Allowances::from_json(doc("1.5", "1.5").as_bytes()).unwrap();
        assert_eq!(ok.budgets[0].grant_of("a"), "1.5".parse().unwrap());
        assert_eq!(ok.budgets[0].grant_of("new-pod"), Money::ZERO);
        let e = Allowances::from_json(doc("2", "1.000001").as_bytes()).unwrap_err();
        assert!(e.to_string().contains("budget pb: grants"), "{e}");
        let e = Allowances::from_json(doc("x", "1").as_bytes()).unwrap_err();
        assert!(e.to_string().contains("grants.a"), "{e}");
    }
}
