//! Budget windows, spend, threshold escalation, burn rate and forecast.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::Money;
use crate::api::ThresholdAction;

/// What a budget remembers between evaluations.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BudgetMemory {
    /// Current window start.
    pub window_start: Timestamp,
    /// Current window end.
    pub window_end: Timestamp,
    /// Spend in the current window.
    pub spent: Money,
    /// Highest action reached in this window.
    pub action: Option<ThresholdAction>,
}
