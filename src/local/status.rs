//! What `local` shows: the `/status` JSON (the same fields as the CRD statuses) and the compact
//! table printed each interval and by `tollgate status`.

use std::fmt::Write;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::api::{ModelRouteStatus, ProviderBudgetStatus};

/// `GET /status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    /// Time of the last evaluation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Timestamp>,
    /// Namespace served.
    pub namespace: String,
    /// Revision of the config document served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_revision: Option<String>,
    /// The last manifest edit that was refused, if the current files are invalid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_error: Option<String>,
    /// Routes, by name.
    pub routes: Vec<RouteReport>,
    /// Budgets, by name.
    pub budgets: Vec<BudgetReport>,
}

/// One route.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteReport {
    /// ModelRoute name.
    pub name: String,
    /// Alias.
    pub model: String,
    /// Same as the CRD status.
    pub status: ModelRouteStatus,
}

/// One budget.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BudgetReport {
    /// ProviderBudget name.
    pub name: String,
    /// Provider.
    pub provider: String,
    /// Limit, USD.
    pub limit: String,
    /// Same as the CRD status.
    pub status: ProviderBudgetStatus,
}

fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r.iter().enumerate().map(|(i, s)| format!("{s:<w$}", w = widths[i])).collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

fn short_time(t: &Option<crate::api::Time>) -> String {
    t.as_ref().map(|t| t.0.strftime("%H:%M:%S").to_string()).unwrap_or_else(|| "-".into())
}

fn opt<T: std::fmt::Debug>(v: &Option<T>) -> String {
    v.as_ref().map(|x| format!("{x:?}")).unwrap_or_else(|| "-".into())
}

impl StatusReport {
    /// The compact table.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let time = self.time.map(|t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string()).unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "tollgate · namespace {} · {} · config {}",
            self.namespace,
            time,
            self.config_revision.as_deref().unwrap_or("-")
        );
        if let Some(e) = &self.manifest_error {
            let _ = writeln!(out, "! manifest edit refused, still serving the last good policy: {e}");
        }
        let mut rows = vec![
            ["ROUTE", "MODEL", "STATE", "BACKEND", "BACKEND STATE", "TIER", "WEIGHT", "ERRORS", "REQS"]
                .map(String::from)
                .to_vec(),
        ];
        for r in &self.routes {
            let state = opt(&r.status.state);
            if r.status.backends.is_empty() {
                rows.push(vec![r.name.clone(), r.model.clone(), state.clone()]);
            }
            for (i, b) in r.status.backends.iter().enumerate() {
                let first = i == 0;
                rows.push(vec![
                    if first { r.name.clone() } else { String::new() },
                    if first { r.model.clone() } else { String::new() },
                    if first { state.clone() } else { String::new() },
                    b.name.clone(),
                    format!("{:?}", b.state),
                    b.tier.to_string(),
                    b.effective_weight.to_string(),
                    b.error_rate.clone().unwrap_or_else(|| "-".into()),
                    b.requests.map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
                ]);
            }
        }
        out.push_str(&table(&rows));
        let mut rows = vec![
            ["BUDGET", "PROVIDER", "SPENT", "LIMIT", "USED", "STATE", "BURN/H", "EXHAUSTED AT"]
                .map(String::from)
                .to_vec(),
        ];
        for b in &self.budgets {
            let s = &b.status;
            rows.push(vec![
                b.name.clone(),
                b.provider.clone(),
                s.spent.clone().unwrap_or_else(|| "0".into()),
                b.limit.clone(),
                s.percent_used.as_ref().map(|p| format!("{p}%")).unwrap_or_else(|| "-".into()),
                opt(&s.state),
                s.burn_rate_per_hour.clone().unwrap_or_else(|| "-".into()),
                short_time(&s.projected_exhaustion),
            ]);
        }
        out.push('\n');
        out.push_str(&table(&rows));
        out
    }
}
