//! Types and patterns shared by both resources.

use super::meta::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Decimal USD amount or price: digits, optionally a point and up to six decimals (`"0.27"`, `"5000"`).
pub const DECIMAL_PATTERN: &str = r"^(0|[1-9][0-9]{0,11})(\.[0-9]{1,6})?$";
/// A ratio between 0 and 1 with up to six decimals (`"0.20"`).
pub const RATIO_PATTERN: &str = r"^(0(\.[0-9]{1,6})?|1(\.0{1,6})?)$";
/// A Kubernetes-style duration: one or more `<integer><unit>` with unit ms, s, m or h (`30s`, `1h30m`).
pub const DURATION_PATTERN: &str = r"^([0-9]{1,9}(ms|s|m|h))+$";
/// A lowercase DNS-label-like name (backend names, provider names).
pub const NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// Reference to one key of a Secret in the resource's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret, in the same namespace as the resource.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret whose value is the API key.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A condition in the standard Kubernetes shape (`type`, `status`, `reason`, `message`,
/// `lastTransitionTime`, `observedGeneration`); tollgate's own type, so the core needs no
/// Kubernetes crate.
pub type StatusCondition = Condition;

/// A point in time, RFC 3339 in UTC.
pub type StatusTime = Time;

/// Condition types used across tollgate statuses.
pub mod condition {
    /// The resource was accepted and its decisions are in effect (kstatus' readiness signal).
    pub const READY: &str = "Ready";
    /// A route serves, but not as configured (fail-open, ejections, budget pressure).
    pub const DEGRADED: &str = "Degraded";
    /// The route's effective backend table differs from its configuration.
    pub const ROTATED: &str = "Rotated";
    /// A budget crossed its Warn threshold.
    pub const WARNING: &str = "Warning";
    /// A budget crossed its Drain threshold: its provider serves nothing more this window.
    pub const EXHAUSTED: &str = "Exhausted";
}
