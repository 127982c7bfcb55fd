//! The apply step: the namespace's gateway ConfigMap and credentials Secret, server-side
//! applied under one field manager, only when their content differs from what the store (or,
//! within the write grace, the last apply) holds. The document is written compact, and
//! gzip-compressed under `binaryData` past a threshold ([`crate::config::payload`]); one too
//! large for a ConfigMap even compressed is split: shard ConfigMaps `<name>-shard-<i>` written
//! first, then the index in `<name>` ([`crate::config::shard`]); the index in the store is
//! taken as proof its shards are written. Shards a previous index named and the new form does
//! not are emptied after the index is written (never deleted: the controller only patches).
//! One too large even split is not written (the engine reports it on the namespace's
//! objects). Transient API errors (409, 429, 5xx) are retried at once with a doubling pause;
//! the rest waits for the next pass. Secret values are never logged: only key names.

use std::collections::BTreeMap;

use base64::Engine as _;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use super::engine::{Engine, Settings, Snapshot};
use super::error::{Error, is_transient};
use crate::config::payload::{self, Stored, TooLarge};
use crate::config::shard::{INDEX_KEY, parse_index};
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

/// Whether `cm` holds exactly the stored form `form` (and not another form beside it). For
/// the split form, the index: its shards are written before it, so an index in place means
/// its shards are too.
fn holds(cm: &ConfigMap, form: &Stored) -> bool {
    let text = cm.data.as_ref().and_then(|d| d.get(CONFIG_KEY));
    let gz = cm.binary_data.as_ref().and_then(|d| d.get(CONFIG_GZ_KEY));
    let index = cm.data.as_ref().and_then(|d| d.get(INDEX_KEY));
    match form {
        Stored::Text(t) => text == Some(t) && gz.is_none() && index.is_none(),
        Stored::Gzip(b) => gz.is_some_and(|g| g.0 == *b) && text.is_none() && index.is_none(),
        Stored::Sharded(s) => index == Some(&s.index) && text.is_none() && gz.is_none(),
    }
}

/// The shard ConfigMaps the index a ConfigMap holds names (none for the single form).
fn named_shards(cm: &ConfigMap) -> Vec<String> {
    cm.data
        .as_ref()
        .and_then(|d| d.get(INDEX_KEY))
        .and_then(|i| parse_index(i.as_bytes()).ok())
        .map(|i| i.shards.into_iter().map(|r| r.config_map).collect())
        .unwrap_or_default()
}

/// The revision of the config a managed ConfigMap holds (what the gateways can be serving).
pub fn stored_revision(cm: &ConfigMap) -> Option<String> {
    cm.metadata.annotations.as_ref().and_then(|a| a.get("tollgate.dev/config-revision")).cloned()
}

/// Calls `call` again after transient API errors (409, 429, 5xx), with a doubling pause, up to
/// `Settings::retry_attempts` attempts.
pub(super) async fn retry_transient<T, F, Fut>(settings: &Settings, mut call: F) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let mut attempt = 1;
    let mut pause = settings.retry_backoff;
    loop {
        match call().await {
            Err(e) if is_transient(&e) && attempt < settings.retry_attempts => {
                debug!(error = %e, attempt, "transient API error, retrying");
                tokio::time::sleep(pause).await;
                pause = pause.saturating_mul(2);
                attempt += 1;
            }
            other => return other,
        }
    }
}

impl Engine {
    pub(super) async fn retrying<T, F, Fut>(&self, call: F) -> Result<T, kube::Error>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, kube::Error>>,
    {
        retry_transient(&self.ctx.settings, call).await
    }

    pub(super) fn labels(&self, component: &str) -> Value {
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
        let form = payload::store(doc, &self.ctx.settings.configmap_name);
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
        let api: Api<ConfigMap> = Api::namespaced(self.ctx.client.clone(), ns);
        let pp = PatchParams::apply(&self.ctx.settings.field_manager).force();
        let apply_error = |name: &str, e: kube::Error| Error::ApplyConfigMap {
            source: Box::new(e),
            namespace: ns.to_string(),
            name: name.to_string(),
        };
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        // The split form: every shard first, the index last (readers start from the index).
        if let Stored::Sharded(sharded) = &form {
            for shard in &sharded.shards {
                let mut body = self.configmap_body(&shard.config_map, ns, &doc.revision);
                body["metadata"]["annotations"]["tollgate.dev/config-shard-of"] = json!(name);
                body["binaryData"] = json!({ shard.key.as_str(): b64(&shard.gz) });
                let patch = Patch::Apply(&body);
                self.retrying(|| api.patch(&shard.config_map, &pp, &patch))
                    .await
                    .map_err(|e| apply_error(&shard.config_map, e))?;
            }
        }
        let mut body = self.configmap_body(&name, ns, &doc.revision);
        // One form only: server-side apply drops the other fields this manager owned before.
        match &form {
            Stored::Text(text) => body["data"] = json!({CONFIG_KEY: text}),
            Stored::Gzip(gz) => body["binaryData"] = json!({CONFIG_GZ_KEY: b64(gz)}),
            Stored::Sharded(sharded) => body["data"] = json!({INDEX_KEY: sharded.index}),
        }
        let patch = Patch::Apply(&body);
        self.retrying(|| api.patch(&name, &pp, &patch)).await.map_err(|e| apply_error(&name, e))?;
        info!(namespace = ns, revision = %doc.revision, routes = doc.routes.len(), key = form.key(), bytes = form.len(), shards = match &form { Stored::Sharded(s) => s.shards.len(), _ => 0 }, "applied gateway config");
        // Shards the previous index named and this form does not: emptied (their data
        // dropped; the objects stay, as the controller may only patch them).
        let keep: Vec<&str> = match &form {
            Stored::Sharded(s) => s.shards.iter().map(|x| x.config_map.as_str()).collect(),
            _ => Vec::new(),
        };
        for retired in current.map(|cm| named_shards(cm)).unwrap_or_default() {
            if keep.contains(&retired.as_str()) {
                continue;
            }
            let body = self.configmap_body(&retired, ns, &doc.revision);
            let patch = Patch::Apply(&body);
            if let Err(e) = self.retrying(|| api.patch(&retired, &pp, &patch)).await {
                // The new index does not name it: a stale shard is harmless, only wasted bytes.
                warn!(namespace = ns, configmap = %retired, error = %e, "cannot empty a retired config shard");
            }
        }
        self.applied_config.insert(ns.to_string(), (form, now));
        Ok(true)
    }

    /// The body of a gateway ConfigMap apply without its data.
    fn configmap_body(&self, name: &str, ns: &str, revision: &str) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": name,
                "namespace": ns,
                "labels": self.labels("gateway-config"),
                "annotations": {"tollgate.dev/config-revision": revision},
            },
        })
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
