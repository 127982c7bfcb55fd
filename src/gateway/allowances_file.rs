//! `tollgate gateway --allowances FILE`: the Hard budgets' grants (issue 13) from a file (the
//! mounted `tollgate-allowances` ConfigMap), polled; with `--from-configmap` and no
//! `--allowances`, from the allowances ConfigMap through the API instead
//! ([`watch_allowances_configmap`], same rules).
//!
//! Rules: the file is read every poll interval; a changed content is parsed and validated
//! whole ([`Allowances::from_json`]) and applied for this gateway's `--instance` id. A missing,
//! unreadable or invalid file keeps the grants last applied (logged once per distinct error):
//! a gateway that loses its source keeps spending only what it was granted. Until a first
//! valid document arrives the gateway knows no Hard budget and enforces none (a file missing
//! from the start, as in a namespace without Hard budgets, is no error: said once at info).

use std::path::PathBuf;
use std::time::Duration;

use tokio::task::JoinHandle;

use futures::StreamExt;

use super::Gateway;
use crate::config::allowances::Allowances;

/// Polls `path` every `poll` and applies each new valid document as instance `instance`.
pub fn watch_allowances_file(gw: Gateway, path: PathBuf, instance: String, poll: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut last: Option<Vec<u8>> = None;
        let mut last_error: Option<String> = None;
        let mut announced_none = false;
        let mut tick = tokio::time::interval(poll.max(Duration::from_millis(50)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let result = match tokio::fs::read(&path).await {
                Ok(bytes) if last.as_deref() == Some(bytes.as_slice()) => Ok(()),
                Ok(bytes) => match Allowances::from_json(&bytes)
                    .map_err(|e| e.to_string())
                    .and_then(|doc| gw.set_allowances(&instance, &doc).map_err(|e| e.to_string()))
                {
                    Ok(()) => {
                        tracing::info!(path = %path.display(), instance = %instance, "allowances applied");
                        last = Some(bytes);
                        Ok(())
                    }
                    Err(e) => Err(e),
                },
                // No document yet (a namespace without Hard budgets has none): nothing to say.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && last.is_none() => {
                    if !announced_none {
                        tracing::info!(path = %path.display(), "no allowances document yet: no Hard budget enforced");
                        announced_none = true;
                    }
                    Ok(())
                }
                Err(e) => Err(format!("cannot read {}: {e}", path.display())),
            };
            match result {
                Ok(()) => last_error = None,
                Err(e) if last_error.as_deref() != Some(e.as_str()) => {
                    tracing::error!(error = %e, "allowances not updated; the grants last applied stay");
                    last_error = Some(e);
                }
                Err(_) => {}
            }
        }
    })
}

/// Follows the allowances ConfigMap `namespace/name` through the API and applies each new
/// valid document as instance `instance`; a refused one keeps the grants last applied.
pub fn watch_allowances_configmap(
    gw: Gateway,
    client: kube::Client,
    namespace: String,
    name: String,
    instance: String,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(crate::kube_source::allowance_updates(client, &namespace, &name));
        while let Some(update) = stream.next().await {
            match update.and_then(|doc| gw.set_allowances(&instance, &doc).map_err(|e| e.to_string())) {
                Ok(()) => {
                    tracing::info!(configmap = %format!("{namespace}/{name}"), instance = %instance, "allowances applied")
                }
                Err(e) => tracing::error!(error = %e, "allowances not updated; the grants last applied stay"),
            }
        }
    })
}
