//! `ProviderBudget`: how much may be spent with one provider per window, and what happens as
//! the spend approaches the limit.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::shared::{StatusCondition, StatusTime};

/// A spending limit for one provider in this namespace, with escalating actions.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tollgate.dev",
    version = "v1alpha1",
    kind = "ProviderBudget",
    plural = "providerbudgets",
    shortname = "pb",
    category = "tollgate",
    namespaced,
    status = "ProviderBudgetStatus",
    derive = "PartialEq",
    cel,
    printcolumn = r#"{"name":"Provider","type":"string","jsonPath":".spec.provider"}"#,
    printcolumn = r#"{"name":"Spent","type":"string","jsonPath":".status.spent","description":"USD spent in the current window"}"#,
    printcolumn = r#"{"name":"Limit","type":"string","jsonPath":".spec.limit","description":"USD per window"}"#,
    printcolumn = r#"{"name":"Used","type":"string","jsonPath":".status.percentUsed","description":"Percent of the limit spent"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ProviderBudgetSpec {
    /// Provider whose spend counts; joins `ModelRoute.spec.backends[].provider`.
    #[schemars(length(min = 1, max = 63), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub provider: String,

    /// Upstream model ids whose spend counts; empty means every model of the provider.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub models: Vec<String>,

    /// Limit in USD per window, as a decimal string (e.g. `"5000"`, `"12.50"`).
    #[schemars(pattern(r"^(0|[1-9][0-9]{0,11})(\.[0-9]{1,6})?$"))]
    pub limit: String,

    /// The accounting window; spend resets only at its boundary.
    #[serde(default)]
    pub window: BudgetWindow,

    /// Percent-of-limit thresholds and their actions, strictly increasing. Actions escalate
    /// (Warn → Deprioritize → Drain) and never de-escalate inside a window.
    #[serde(default = "default_thresholds")]
    #[schemars(length(max = 10))]
    #[x_kube(validation = Rule::new("self.map(t, t.percent).isSorted() && self.all(a, self.exists_one(b, b.percent == a.percent))").message("threshold percents must be strictly increasing"))]
    pub thresholds: Vec<Threshold>,

    /// Act on the projected crossing, not only on the crossing.
    #[serde(default)]
    pub forecast: Forecast,

    /// `Soft` (default): the thresholds act when the controller sees the spend, so traffic in
    /// flight and between evaluations can overshoot. `Hard`: every gateway admits a request to a
    /// covered backend only if it can reserve the request's worst-case cost from the allowance
    /// the controller granted it, so the window's spend stays within the limit.
    #[serde(default, skip_serializing_if = "Enforcement::is_soft")]
    pub enforcement: Enforcement,
}

/// How a budget is enforced.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
pub enum Enforcement {
    /// Thresholds act on the observed spend (overshoot possible).
    #[default]
    Soft,
    /// Gateways reserve each request's worst case from granted allowances (no overshoot).
    Hard,
}

impl Enforcement {
    /// Whether this is the default, `Soft`.
    pub fn is_soft(&self) -> bool {
        *self == Enforcement::Soft
    }
}

fn default_thresholds() -> Vec<Threshold> {
    vec![
        Threshold { percent: 80, action: ThresholdAction::Warn },
        Threshold { percent: 95, action: ThresholdAction::Deprioritize },
        Threshold { percent: 100, action: ThresholdAction::Drain },
    ]
}

/// A budget window.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.period != 'Rolling' || has(self.duration)").message("duration is required when period is Rolling"),
    validation = Rule::new("self.period == 'Rolling' || !has(self.duration)").message("duration is only allowed when period is Rolling")
)]
pub struct BudgetWindow {
    /// `Daily`, `Weekly` (starts Monday 00:00), `Monthly` (starts on `anchorDay`) or `Rolling`
    /// (consecutive windows of `duration`, aligned to the Unix epoch).
    #[serde(default)]
    pub period: Period,
    /// IANA time zone in which calendar windows start (e.g. `UTC`, `Europe/Berlin`).
    #[serde(default = "default_time_zone")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: String,
    /// Day of the month a Monthly window starts; clamped to the month's length.
    #[serde(default = "default_anchor_day")]
    #[schemars(range(min = 1, max = 31))]
    pub anchor_day: u8,
    /// Length of a Rolling window (e.g. `24h`), longer than zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^([0-9]{1,9}(ms|s|m|h))+$"))]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("window.duration must be longer than zero"))]
    pub duration: Option<String>,
}

impl Default for BudgetWindow {
    fn default() -> Self {
        Self {
            period: Period::default(),
            time_zone: default_time_zone(),
            anchor_day: default_anchor_day(),
            duration: None,
        }
    }
}

fn default_time_zone() -> String {
    "UTC".into()
}
fn default_anchor_day() -> u8 {
    1
}

/// Window period.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
pub enum Period {
    /// Midnight to midnight.
    Daily,
    /// Monday 00:00 to Monday 00:00.
    Weekly,
    /// From `anchorDay` 00:00 to the same day of the next month.
    #[default]
    Monthly,
    /// Consecutive windows of `duration`, aligned to the Unix epoch.
    Rolling,
}

/// One threshold.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Threshold {
    /// Percent of the limit, 1..1000 (above 100 allows overdraft before acting).
    #[schemars(range(min = 1, max = 1000))]
    pub percent: u32,
    /// What happens when the spend (or, with forecast, the projection) crosses it.
    pub action: ThresholdAction,
}

/// Threshold action, in escalating order.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
pub enum ThresholdAction {
    /// A condition and an event only.
    Warn,
    /// The provider's backends drop to the last tier of every route.
    Deprioritize,
    /// The provider's backends leave rotation.
    Drain,
}

/// Forecasting.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Forecast {
    /// Apply an action as soon as the projected spend at the window's end crosses its threshold.
    #[serde(default)]
    pub enabled: bool,
    /// How far back the burn rate is measured, longer than zero.
    #[serde(default = "default_lookback")]
    #[schemars(pattern(r"^([0-9]{1,9}(ms|s|m|h))+$"))]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("forecast.lookback must be longer than zero"))]
    pub lookback: String,
}

impl Default for Forecast {
    fn default() -> Self {
        Self { enabled: false, lookback: default_lookback() }
    }
}

fn default_lookback() -> String {
    "1h".into()
}

/// Observed state of a `ProviderBudget`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderBudgetStatus {
    /// The `metadata.generation` these figures were computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Warning` and `Exhausted`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<StatusCondition>,
    /// The current window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowStatus>,
    /// USD spent in the current window (exact decimal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spent: Option<String>,
    /// Percent of the limit spent, two decimals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent_used: Option<String>,
    /// `Ok`, `Warning`, `Deprioritized` or `Exhausted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<BudgetState>,
    /// Whether the action in force (`state`) was reached by the forecast before the spend
    /// itself crossed its threshold. Kept so a controller restart remembers why.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forecast_triggered: bool,
    /// USD per hour over the forecast lookback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burn_rate_per_hour: Option<String>,
    /// When the limit is reached at the current burn rate, if inside the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projected_exhaustion: Option<StatusTime>,
    /// Last counter value seen per gateway pod, so restarts neither lose nor double-count spend.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["gateway".into()]))]
    pub checkpoints: Vec<Checkpoint>,
    /// With `enforcement: Hard`: reservations, settled spend, grants and the bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hard: Option<HardStatus>,
}

/// The data-plane side of a Hard budget.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct HardStatus {
    /// USD reserved by requests in flight, all gateways (exact decimal).
    pub reserved: String,
    /// USD settled (exact metered cost of ended requests) in the window, all gateways.
    pub settled: String,
    /// The most the window can cost: the sum of every gateway's grant, never above the limit.
    pub bound: String,
    /// Requests refused for want of allowance in the window, all gateways.
    #[serde(default)]
    pub refused: u64,
    /// Cumulative allowance of each gateway instance in the window.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["gateway".into()]))]
    pub grants: Vec<Grant>,
}

/// One gateway instance's allowance.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Grant {
    /// Gateway instance id.
    pub gateway: String,
    /// Its cumulative allowance in the window, USD exact decimal.
    pub granted: String,
}

/// Window bounds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WindowStatus {
    /// Start (inclusive).
    pub start: StatusTime,
    /// End (exclusive).
    pub end: StatusTime,
}

/// Budget state.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
pub enum BudgetState {
    /// Below every threshold.
    #[default]
    Ok,
    /// A Warn threshold was crossed.
    Warning,
    /// A Deprioritize threshold was crossed.
    Deprioritized,
    /// A Drain threshold was crossed.
    Exhausted,
}

/// A gateway's cost counter as last seen.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    /// Gateway pod UID (or instance id).
    pub gateway: String,
    /// That gateway's cumulative cost counter for this budget, USD exact decimal.
    pub counter: String,
}
