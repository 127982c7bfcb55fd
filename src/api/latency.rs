//! `spec.health.latency` of a `ModelRoute`: a latency budget.
//!
//! Rules (enforced by the schema and CEL rules generated here, and again when the policy parses
//! them, with errors naming the field):
//! - `trip` and `recover` are durations between `5ms` and `5m`, the range of the gateway's
//!   latency buckets; `recover` (default: `trip`) is not above `trip`.
//! - `window` is a positive duration; `minRequests` is at least 1.
//! - The p95 is computed from bucket counts (bounds 5ms, 10ms, 25ms, 50ms, 100ms, 250ms, 500ms,
//!   1s, 2.5s, 5s, 10s, 30s, 1m, 2m, 5m): a budget on a bound is exact; one between two bounds
//!   acts as the lower bound (see `crate::policy::latency`).
//! - Absent (the default), nothing about a route changes: no new status field, same rendered
//!   config.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Latency budget: p95 of the time to first token (streamed answers) or total duration (other
/// answers) of a backend's successful attempts over `window`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.recover) || duration(self.recover) <= duration(self.trip)").message("latency.recover must not be above latency.trip"))]
pub struct LatencyPolicy {
    /// Eject when the p95 over `window` is above this (with at least `minRequests` answers).
    /// Between 5ms and 5m; best on a bucket bound (e.g. `1s`, `2s500ms`, `5s`).
    #[schemars(pattern(r"^([0-9]{1,9}(ms|s|m|h))+$"))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('5ms') && duration(self) <= duration('5m')").message("latency.trip must be between 5ms and 5m"))]
    pub trip: String,
    /// A ramping backend goes back to ejected when its p95 is above this. Defaults to `trip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^([0-9]{1,9}(ms|s|m|h))+$"))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('5ms') && duration(self) <= duration('5m')").message("latency.recover must be between 5ms and 5m"))]
    pub recover: Option<String>,
    /// Window over which the p95 is computed.
    #[serde(default = "default_window")]
    #[schemars(pattern(r"^([0-9]{1,9}(ms|s|m|h))+$"))]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("latency.window must be longer than zero"))]
    pub window: String,
    /// No decision below this many answers in the window.
    #[serde(default = "default_min_requests")]
    #[schemars(range(min = 1, max = 1000000))]
    pub min_requests: u32,
}

fn default_window() -> String {
    "5m".into()
}
fn default_min_requests() -> u32 {
    20
}
