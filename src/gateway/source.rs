//! The gateway's config source through the Kubernetes API (`--from-configmap`): each update
//! of the watched ConfigMap is validated and swapped in (a bad one is refused and counted, the
//! last good one stays); each update of the credentials Secret rewrites the key files. Built
//! on [`crate::kube_source`], the neutral watch code; nothing here knows the operator.

use futures::StreamExt;

use super::{Gateway, GatewayError};
use crate::kube_source::{SourceUpdate, parse_object_ref, updates, write_credentials};

/// Follows a ConfigMap (and the credentials Secret beside it) through the Kubernetes API.
pub(super) async fn watch_configmap(gw: Gateway, object: &str) -> Result<tokio::task::JoinHandle<()>, GatewayError> {
    let (namespace, name) = parse_object_ref(object).map_err(GatewayError::Source)?;
    let client = kube::Client::try_default()
        .await
        .map_err(|e| GatewayError::Source(format!("cannot reach the Kubernetes API: {e}")))?;
    let dir = gw.options().credentials_dir.clone();
    Ok(tokio::spawn(async move {
        let mut stream = std::pin::pin!(updates(client, &namespace, &name, crate::config::CREDENTIALS_SECRET));
        while let Some(update) = stream.next().await {
            match update {
                SourceUpdate::Credentials(files) => {
                    if let Err(e) = write_credentials(&dir, &files) {
                        // The error names the directory or file, never the key material.
                        tracing::error!(error = %e, dir = %dir.display(), "cannot write the credential files");
                    }
                }
                SourceUpdate::Config(cfg) => {
                    // Validated by the source (`SourceUpdate::Config` is only ever a valid document).
                    let revision = cfg.revision.clone();
                    gw.swap_validated(*cfg);
                    tracing::info!(%revision, "config loaded from the API");
                }
                SourceUpdate::Rejected(why) => {
                    gw.record_reload_error();
                    tracing::warn!(%why, "config from the API refused; keeping the last good one");
                }
            }
        }
    }))
}
