//! `tollgate render -f DIR`: manifests → the gateway config document, offline.

use std::collections::BTreeSet;
use std::path::Path;

use jiff::Timestamp;

use crate::api::validate::{Manifests, load_dir};
use crate::config::GatewayConfig;
use crate::policy::{DecisionState, Inputs, ObjectKey, Observations, evaluate};

/// Why rendering failed.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// One or more manifests are invalid (every error is listed, one per line).
    #[error("invalid manifests:\n{}", .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
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

/// Renders the document of one namespace from validated manifests, with no observations.
pub fn render_manifests(m: &Manifests, namespace: &str, now: Timestamp) -> Result<GatewayConfig, RenderError> {
    let observations = Observations::default();
    let previous = DecisionState::default();
    let decision = evaluate(Inputs {
        routes: &crate::api::convert::route_inputs(&m.routes),
        budgets: &crate::api::convert::budget_inputs(&m.budgets),
        observations: &observations,
        previous: &previous,
        now,
    });
    Ok(GatewayConfig::build(namespace, &m.routes, &decision)?)
}

/// Reads `dir`, validates every manifest, and renders.
pub fn render_dir(dir: &Path, namespace: Option<&str>, now: Timestamp) -> Result<GatewayConfig, RenderError> {
    let m = load_dir(dir).map_err(RenderError::Manifests)?;
    let ns = pick_namespace(&m, namespace)?;
    render_manifests(&m, &ns, now)
}

/// Notes worth a line on stderr: skipped documents, budgets no route uses.
pub fn notes(m: &Manifests) -> Vec<String> {
    let mut out: Vec<String> = m.skipped.iter().map(|s| format!("skipped (not a tollgate kind): {s}")).collect();
    for b in &m.budgets {
        let key = ObjectKey::of(b);
        let used = m.routes.iter().any(|r| {
            ObjectKey::of(r).namespace == key.namespace && r.spec.backends.iter().any(|x| x.provider == b.spec.provider)
        });
        if !used {
            out.push(format!(
                "ProviderBudget {key}: no route in namespace {} uses provider {:?}",
                key.namespace, b.spec.provider
            ));
        }
    }
    out
}
