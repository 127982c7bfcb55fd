//! `tollgate render -f DIR`: manifests → the gateway config document, offline.
//!
//! The manifests are validated as the API server would (an invalid one fails the whole
//! render, naming file, document and field); the objects then go through the same plan step
//! as the controller's ([`crate::plan`]), with no observations and no memory, so the document
//! is the one the controller would write for a fresh namespace. Each object is validated once,
//! when read ([`load_dir`] returns only valid objects): the plan step here admits them without
//! validating them again ([`crate::plan::admit_validated`]); the rules across objects
//! (duplicate aliases) still apply. What the controller would
//! report in a status (a route refused for a duplicate alias, a budget no route uses) is
//! printed on stderr as a note; the document is still printed and the exit code is 0, as the
//! cluster would still serve the rest. Credentials are named (file names), never resolved.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use jiff::Timestamp;

use crate::api::validate::{Manifests, load_dir};
use crate::config::GatewayConfig;
use crate::plan::{Plan, PlanInput, admit_validated, kind_name, plan_admitted};
use crate::policy::{DecisionState, ObjectKey, Observations};

/// Why rendering failed.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// One or more manifests are invalid (one error per line, the first
    /// [`crate::plan::MAX_LISTED`], then how many more).
    #[error("invalid manifests:\n  {}", crate::plan::join_bounded(.0.iter().map(ToString::to_string), "\n  "))]
    Manifests(Vec<crate::api::validate::ManifestError>),
    /// The manifests span several namespaces and none was chosen.
    #[error("the manifests span namespaces {0}: choose one with --namespace")]
    Namespaces(String),
    /// The document could not be built.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// The namespaces the manifests use.
pub fn namespaces(m: &Manifests) -> BTreeSet<String> {
    m.routes
        .iter()
        .map(|r| ObjectKey::of(r).namespace)
        .chain(m.budgets.iter().map(|b| ObjectKey::of(b).namespace))
        .collect()
}

/// Picks the namespace to render: the one given, or the only one the manifests use.
pub fn pick_namespace(m: &Manifests, namespace: Option<&str>) -> Result<String, RenderError> {
    if let Some(ns) = namespace {
        return Ok(ns.to_string());
    }
    let all = namespaces(m);
    match all.len() {
        0 => Ok("default".into()),
        1 => Ok(all.into_iter().next().unwrap_or_default()),
        _ => Err(RenderError::Namespaces(all.into_iter().collect::<Vec<_>>().join(", "))),
    }
}

/// The plan of validated manifests (as [`load_dir`] returns them: not validated again):
/// `namespace` is always rendered (empty if no route is in it); credentials are not resolved.
pub fn plan_manifests(
    m: &Manifests,
    namespace: &str,
    observations: &Observations,
    previous: &DecisionState,
    now: Timestamp,
) -> Plan {
    let namespaces = BTreeSet::from([namespace.to_string()]);
    let input = PlanInput {
        routes: &m.routes,
        budgets: &m.budgets,
        unreadable: &[],
        namespaces: &namespaces,
        secrets: None,
        observations,
        previous,
        now,
    };
    plan_admitted(input, admit_validated(&m.routes, &m.budgets, &[]))
}

/// A rendered namespace: its document and the plan it came from.
#[derive(Clone, Debug)]
pub struct Rendered {
    /// The document.
    pub config: GatewayConfig,
    /// The plan (problems, decisions, statuses), without the rendered namespace's entry in
    /// `namespaces`: its document was moved to `config` (at fleet scale a copy costs as much
    /// as building it).
    pub plan: Plan,
}

/// Renders one namespace of validated manifests, with no observations.
pub fn render(m: &Manifests, namespace: &str, now: Timestamp) -> Result<Rendered, RenderError> {
    let mut plan = plan_manifests(m, namespace, &Observations::default(), &DecisionState::default(), now);
    let config = match plan.namespaces.remove(namespace).map(|n| n.config) {
        Some(Ok(doc)) => doc,
        Some(Err(e)) => return Err(e.into()),
        // `plan_manifests` always renders `namespace`.
        None => GatewayConfig::build(namespace, [], &plan.decision)?,
    };
    Ok(Rendered { config, plan })
}

/// Renders the document of one namespace from validated manifests, with no observations.
pub fn render_manifests(m: &Manifests, namespace: &str, now: Timestamp) -> Result<GatewayConfig, RenderError> {
    render(m, namespace, now).map(|r| r.config)
}

/// Reads `dir`, validates every manifest, and renders.
pub fn render_dir(dir: &Path, namespace: Option<&str>, now: Timestamp) -> Result<GatewayConfig, RenderError> {
    let m = load_dir(dir).map_err(RenderError::Manifests)?;
    let ns = pick_namespace(&m, namespace)?;
    render_manifests(&m, &ns, now)
}

/// Notes worth a line on stderr: skipped documents, then every problem the plan found (what
/// the controller would put in the object's `Ready` condition).
pub fn notes(m: &Manifests, plan: Option<&Plan>) -> Vec<String> {
    let skipped = m.skipped.iter().map(|s| format!("skipped (not a tollgate kind): {s}"));
    let problems = plan
        .into_iter()
        .flat_map(Plan::problems)
        .map(|(kind, key, p)| format!("{} {key}: {}: {}", kind_name(kind), p.reason, p.message));
    skipped.chain(problems).collect()
}

/// `tollgate render -f DIR [-n NS] [--stored-dir OUT]`: the document on stdout, notes on
/// stderr; exit 2 on invalid manifests or an ambiguous namespace, 1 when stdout cannot be
/// written. With `stored`, the files the
/// controller's ConfigMaps would hold (compact, compressed or split: [`crate::config::payload`])
/// are also written there, as a projected volume holds them, and their form is noted on stderr.
pub fn run_render(dir: PathBuf, namespace: Option<String>, stored: Option<PathBuf>) -> ExitCode {
    let manifests = match load_dir(&dir) {
        Ok(m) => m,
        Err(errors) => {
            eprintln!("error: {}", RenderError::Manifests(errors));
            return ExitCode::from(2);
        }
    };
    let result =
        pick_namespace(&manifests, namespace.as_deref()).and_then(|ns| render(&manifests, &ns, Timestamp::now()));
    match result {
        Ok(r) => {
            for note in notes(&manifests, Some(&r.plan)) {
                eprintln!("note: {note}");
            }
            if let Some(out) = stored {
                let form = crate::config::payload::store(&r.config, crate::config::CONFIGMAP_NAME);
                let written = form.as_ref().map_err(|e| e.to_string()).and_then(|f| {
                    crate::config::payload::write_volume(f, &out)
                        .map(|()| f)
                        .map_err(|e| format!("cannot write {}: {e}", out.display()))
                });
                match written {
                    Ok(f) => eprintln!("note: stored form in {}: {} ({} bytes)", out.display(), f.describe(), f.len()),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(2);
                    }
                }
            }
            // Written part by part (serialized on every core), through one buffered lock.
            let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
            let written = r.config.write_json_pretty(&mut out).and_then(|()| std::io::Write::flush(&mut out));
            if let Err(e) = written {
                eprintln!("error: cannot write the document to stdout: {e}");
                return ExitCode::from(1);
            }
            // The process ends here: freeing 10,000 routes' objects, plan and document one by
            // one took about 80 ms of the render; the exit returns the memory at once.
            std::mem::forget((r, manifests));
            ExitCode::SUCCESS
        }
        Err(e) => {
            for note in notes(&manifests, None) {
                eprintln!("note: {note}");
            }
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
