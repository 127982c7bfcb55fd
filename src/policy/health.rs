//! Backend health: error-rate trips with hysteresis, exponential ejection, staged ramp-up.

use serde::{Deserialize, Serialize};

/// What a backend's health remembers between evaluations.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendHealth {
    /// Trips so far.
    pub trips: u32,
}
