//! The apply step: the namespace's gateway ConfigMap and credentials Secret, server-side
//! applied under one field manager, only when their content differs from what the store (or,
//! within the write grace, the last apply) holds. The document is written compact, and
//! gzip-compressed under `binaryData` past a threshold ([`crate::config::payload`]); one too
//! large even compressed is not written (the engine reports it on the namespace's objects). Transient API errors (409, 429, 5xx) are
//! retried at once with a doubling pause; the rest waits for the next pass. Secret values
//! are never logged: only key names.

use std::collections::BTreeMap;

use base64::Engine as _;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use tracing::{debug, info};

use super::engine::{Engine, Snapshot};
use super::error::{Error, is_transient};
use crate::config::payload::{self, Stored, TooLarge};
use crate::config::{CONFIG_GZ_KEY, CONFIG_KEY, GatewayConfig};

/// `app.kubernetes.io/managed-by` of the objects the controller writes.
pub const MANAGED_BY: &str = "tollgate-controller";

/// Whether `cm` is a gateway ConfigMap named `name` that the controller manages.
pub fn is_managed(cm: &ConfigMap, name: &str) -> bool {
    cm.metadata.name.as_deref() == Some(name)
        && cm
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("app.kubernetes.io/managed-by"))
            .is_some_and(|v| v == MANAGED_BY)
}

/// Whether `cm` holds exactly the stored form `form` (and not the other form beside it).
fn holds(cm: &ConfigMap, form: &Stored) -> bool {
    let text = cm.data.as_ref().and_then(|d| d.get(CONFIG_KEY));
    let gz = cm.binary_data.as_ref().and_then(|d| d.get(CONFIG_GZ_KEY));
    match form {
        Stored::Text(t) => text == Some(t) && gz.is_none(),
        Stored::Gzip(b) => gz.is_some_and(|g| g.0 == *b) && text.is_none(),
    }
}

/// The revision of the config a managed ConfigMap holds (what the gateways can be serving).
pub fn stored_revision(cm: &ConfigMap) -> Option<String> {
    cm.metadata.annotations.as_ref().and_then(|a| a.get("tollgate.dev/config-revision")).cloned()
}

impl Engine {
    pub(super) async fn retrying<T, F, Fut>(&self, mut call: F) -> Result<T, kube::Error>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, kube::Error>>,
    {
        let mut attempt = 1;
        let mut pause = self.ctx.settings.retry_backoff;
        loop {
            match call().await {
                Err(e) if is_transient(&e) && attempt < self.ctx.settings.retry_attempts => {
                    debug!(error = %e, attempt, "transient API error, retrying");
                    tokio::time::sleep(pause).await;
                    pause = pause.saturating_mul(2);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn labels(&self, component: &str) -> Value {
        json!({
            "app.kubernetes.io/name": "tollgate",
            "app.kubernetes.io/component": component,
            "app.kubernetes.io/managed-by": MANAGED_BY,
        })
    }

    pub(super) fn recently<T: PartialEq>(&self, cache: Option<&(T, Timestamp)>, desired: &T, now: Timestamp) -> bool {
        let grace = jiff::SignedDuration::try_from(self.ctx.settings.write_grace).unwrap_or_default();
        cache.is_some_and(|(v, at)| v == desired && now.duration_since(*at) < grace)
    }

    /// The stored form of `doc` (compact JSON, or gzip past the threshold), computed once per
    /// revision and namespace: compressing a large document is the costly part.
    fn stored_form(&mut self, ns: &str, doc: &GatewayConfig) -> Result<Stored, TooLarge> {
        if let Some((rev, form)) = self.encoded.get(ns)
            && *rev == doc.revision
        {
            return form.clone();
        }
        let form = payload::encode(doc.to_json());
        self.encoded.insert(ns.to_string(), (doc.revision.clone(), form.clone()));
        form
    }

    /// Applies the namespace's ConfigMap when its document differs; `Ok(true)` when written.
    /// A document too large for a ConfigMap is not written ([`Error::ConfigTooLarge`]).
    pub(super) async fn apply_configmap(
        &mut self,
        snap: &Snapshot,
        ns: &str,
        doc: &GatewayConfig,
        now: Timestamp,
    ) -> Result<bool, Error> {
        let name = self.ctx.settings.configmap_name.clone();
        let form = self.stored_form(ns, doc).map_err(|source| Error::ConfigTooLarge {
            namespace: ns.to_string(),
            name: name.clone(),
            source,
        })?;
        let current = snap.configmaps.iter().find(|cm| {
            cm.metadata.namespace.as_deref() == Some(ns) && cm.metadata.name.as_deref() == Some(name.as_str())
        });
        let in_store = current.is_some_and(|cm| is_managed(cm, &self.ctx.settings.configmap_name) && holds(cm, &form));
        if in_store || self.recently(self.applied_config.get(ns), &form, now) {
            return Ok(false);
        }
        let mut body = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": name,
                "namespace": ns,
                "labels": self.labels("gateway-config"),
                "annotations": {"tollgate.dev/config-revision": doc.revision},
            },
        });
        // One form only: server-side apply drops the other field this manager owned before.
        match &form {
            Stored::Text(text) => body["data"] = json!({CONFIG_KEY: text}),
            Stored::Gzip(gz) => {
                body["binaryData"] = json!({CONFIG_GZ_KEY: base64::engine::general_purpose::STANDARD.encode(gz)})
            }
        }
        let api: Api<ConfigMap> = Api::namespaced(self.ctx.client.clone(), ns);
        let pp = PatchParams::apply(&self.ctx.settings.field_manager).force();
        let patch = Patch::Apply(&body);
        self.retrying(|| api.patch(&name, &pp, &patch)).await.map_err(|e| Error::ApplyConfigMap {
            source: Box::new(e),
            namespace: ns.to_string(),
            name: name.clone(),
        })?;
        info!(namespace = ns, revision = %doc.revision, routes = doc.routes.len(), key = form.key(), bytes = form.len(), "applied gateway config");
        self.applied_config.insert(ns.to_string(), (form, now));
        Ok(true)
    }

    /// Applies the namespace's credentials Secret when its keys differ; `Ok(true)` when written.
    pub(super) async fn apply_secret(
        &mut self,
        snap: &Snapshot,
        ns: &str,
        data: BTreeMap<String, Vec<u8>>,
        now: Timestamp,
    ) -> Result<bool, Error> {
        let name = self.ctx.settings.credentials_secret.clone();
        let current = snap
            .secrets
            .iter()
            .find(|s| s.metadata.namespace.as_deref() == Some(ns) && s.metadata.name.as_deref() == Some(name.as_str()));
        let in_store = current.is_some_and(|s| {
            let have: BTreeMap<String, Vec<u8>> =
                s.data.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())).collect();
            have == data
        });
        if in_store || self.recently(self.applied_secret.get(ns), &data, now) {
            return Ok(false);
        }
        let encoded: serde_json::Map<String, Value> = data
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(base64::engine::general_purpose::STANDARD.encode(v))))
            .collect();
        let body = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": ns, "labels": self.labels("gateway-credentials")},
            "type": "Opaque",
            "data": encoded,
        });
        let api: Api<Secret> = Api::namespaced(self.ctx.client.clone(), ns);
        let pp = PatchParams::apply(&self.ctx.settings.field_manager).force();
        let patch = Patch::Apply(&body);
        self.retrying(|| api.patch(&name, &pp, &patch)).await.map_err(|e| Error::ApplySecret {
            source: Box::new(e),
            namespace: ns.to_string(),
            name: name.clone(),
        })?;
        // Key names only: the values are API keys.
        info!(namespace = ns, keys = ?data.keys().collect::<Vec<_>>(), "applied gateway credentials");
        self.applied_secret.insert(ns.to_string(), (data, now));
        Ok(true)
    }
}
