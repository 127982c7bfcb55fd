//! What `local` shows: the `/status` JSON (the same fields as the CRD statuses) and the compact
//! table printed each interval and by `tollgate status`.
//!
//! `tollgate status --watch` ([`show`]) reads `/status` every interval until Ctrl-C. On a
//! terminal each table is drawn over the previous one ([`Redraw::InPlace`]: the screen is cleared
//! once, then every frame moves the cursor home, erases each line's rest and everything below, so
//! the picture neither scrolls nor flickers). When stdout is not a terminal (a pipe, a file, CI)
//! frames are appended, separated by a blank line, with no escape sequence ([`Redraw::Append`]);
//! with `--json` each frame is one compact JSON document per line. A failed read during a watch
//! is shown in place of the table and the watch goes on (the `local` it reads may be
//! restarting); without `--watch` it is the command's error.

use std::fmt::Write;
use std::io::IsTerminal;
use std::time::Duration;

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
    /// Whether the state file is being saved (absent from a `local` older than this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_save: Option<StateSaveReport>,
    /// Routes, by name.
    pub routes: Vec<RouteReport>,
    /// Budgets, by name.
    pub budgets: Vec<BudgetReport>,
}

/// `stateSave` of `/status`: whether the state file is being saved.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateSaveReport {
    /// False while saves fail: what was observed since `since` is not on disk.
    pub ok: bool,
    /// The state file.
    pub path: String,
    /// The last failed save's error, while failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// First failed save of the current failure episode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Timestamp>,
    /// Last successful save.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_saved: Option<Timestamp>,
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
        if let Some(s) = self.state_save.as_ref().filter(|s| !s.ok) {
            let since = s.since.map(|t| t.strftime("%H:%M:%S UTC").to_string()).unwrap_or_else(|| "-".into());
            let _ = writeln!(
                out,
                "! state NOT saved since {since} (spend since then is lost on restart): {}",
                s.error.as_deref().unwrap_or("unknown error")
            );
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

/// How `--watch` puts a frame on screen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Redraw {
    /// Over the previous frame (a terminal).
    InPlace,
    /// After the previous frame (a pipe or a file).
    Append,
}

impl Redraw {
    /// In place when stdout is a terminal, appended otherwise.
    pub fn for_stdout() -> Self {
        if std::io::stdout().is_terminal() { Redraw::InPlace } else { Redraw::Append }
    }
}

/// Clear the screen (the first in-place frame).
const CLEAR_SCREEN: &str = "\x1b[2J";
/// Cursor to the top left.
const HOME: &str = "\x1b[H";
/// Erase from the cursor to the end of the line.
const ERASE_LINE_REST: &str = "\x1b[K";
/// Erase from the cursor to the end of the screen.
const ERASE_BELOW: &str = "\x1b[J";

/// The text that draws `body` as frame number `index` (0 = the first).
pub fn frame(body: &str, redraw: Redraw, index: u64) -> String {
    match redraw {
        Redraw::Append if index == 0 => body.to_string(),
        Redraw::Append => format!("\n{body}"),
        Redraw::InPlace => {
            let mut out = String::with_capacity(body.len() + 64);
            if index == 0 {
                out.push_str(CLEAR_SCREEN);
            }
            out.push_str(HOME);
            for line in body.lines() {
                out.push_str(line);
                out.push_str(ERASE_LINE_REST);
                out.push('\n');
            }
            out.push_str(ERASE_BELOW);
            out
        }
    }
}

/// Reads `GET {base}/status`.
pub async fn fetch(client: &reqwest::Client, base: &str) -> Result<StatusReport, String> {
    let url = format!("{}/status", base.trim_end_matches('/'));
    let read = async {
        let resp = client.get(&url).timeout(Duration::from_secs(10)).send().await?;
        resp.error_for_status()?.json::<StatusReport>().await
    };
    read.await.map_err(|e| format!("cannot read {url}: {e}"))
}

fn render(report: &StatusReport, json: bool, watching: bool) -> String {
    match (json, watching) {
        (true, true) => format!("{}\n", serde_json::to_string(report).unwrap_or_default()),
        (true, false) => format!("{}\n", serde_json::to_string_pretty(report).unwrap_or_default()),
        (false, _) => report.to_table(),
    }
}

/// `tollgate status`: prints `/status` of the `local` at `base` once, or with `watch` every
/// interval until Ctrl-C (see the module documentation for how frames are drawn).
pub async fn show(base: &str, json: bool, watch: Option<Duration>) -> Result<(), String> {
    let client = reqwest::Client::new();
    let Some(every) = watch else {
        print!("{}", render(&fetch(&client, base).await?, json, false));
        return Ok(());
    };
    let redraw = if json { Redraw::Append } else { Redraw::for_stdout() };
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut index = 0u64;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            _ = ticks.tick() => {}
        }
        let body = match fetch(&client, base).await {
            Ok(r) => render(&r, json, true),
            Err(e) if json => {
                eprintln!("error: {e}");
                continue;
            }
            Err(e) => format!("{e}\n(retrying every {every:?}; Ctrl-C to stop)\n"),
        };
        let text = if json { body } else { frame(&body, redraw, index) };
        {
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            // A closed pipe (`| head`) ends the watch.
            if out.write_all(text.as_bytes()).and_then(|()| out.flush()).is_err() {
                return Ok(());
            }
        }
        index += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appended_frames_are_plain_text() {
        assert_eq!(frame("a\nb\n", Redraw::Append, 0), "a\nb\n");
        assert_eq!(frame("a\nb\n", Redraw::Append, 1), "\na\nb\n");
        assert!(!frame("a\n", Redraw::Append, 3).contains('\x1b'));
    }

    #[test]
    fn in_place_frames_overwrite_the_previous_one() {
        let first = frame("tollgate\nROUTE\n", Redraw::InPlace, 0);
        assert_eq!(first, "\x1b[2J\x1b[Htollgate\x1b[K\nROUTE\x1b[K\n\x1b[J");
        // Later frames do not clear the whole screen (no flicker): home, each line's rest, below.
        let next = frame("tollgate\n", Redraw::InPlace, 1);
        assert_eq!(next, "\x1b[Htollgate\x1b[K\n\x1b[J");
    }

    #[test]
    fn a_failing_state_save_is_shown_in_the_table_and_the_json() {
        let since: Timestamp = "2026-01-02T03:04:05Z".parse().unwrap();
        let mut r = StatusReport {
            namespace: "default".into(),
            state_save: Some(StateSaveReport {
                ok: false,
                path: "s.json".into(),
                error: Some("cannot write state file s.json: No space left on device (os error 28)".into()),
                since: Some(since),
                last_saved: None,
            }),
            ..Default::default()
        };
        let table = r.to_table();
        assert!(
            table.contains(
                "! state NOT saved since 03:04:05 UTC (spend since then is lost on restart): cannot write state file s.json"
            ),
            "{table}"
        );
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["stateSave"]["ok"], false);
        assert_eq!(v["stateSave"]["since"], "2026-01-02T03:04:05Z");
        r.state_save = Some(StateSaveReport { ok: true, path: "s.json".into(), ..Default::default() });
        assert!(!r.to_table().contains("NOT saved"));
    }

    #[test]
    fn watch_json_is_one_document_per_line() {
        let r = StatusReport { namespace: "default".into(), ..Default::default() };
        let text = render(&r, true, true);
        assert_eq!(text.lines().count(), 1);
        assert_eq!(serde_json::from_str::<StatusReport>(text.trim()).unwrap(), r);
        assert!(render(&r, true, false).lines().count() > 1);
    }
}
