//! The apply step: the namespace's gateway ConfigMap and credentials Secret, server-side
//! applied under one field manager, only when their content differs from what the store (or,
//! within the write grace, the last apply) holds. The document is written compact, and
//! gzip-compressed under `binaryData` past a threshold ([`crate::config::payload`]); one too
//! large for a ConfigMap even compressed is split: shard ConfigMaps `<name>-shard-<i>` written
//! first, then the index in `<name>` ([`crate::config::shard`]). Shards a previous index named
//! and the new form does not are emptied after the index is written (never deleted: the
//! controller only patches). One too large even split is not written (the engine reports it on
//! the namespace's objects). Transient API errors (409, 429, 5xx) are retried at once with a
//! doubling pause; the rest waits for the next pass. Secret values are never logged: only key
//! names.
//!
//! Shards are not watched (only the index is), so an index in the store does not prove its
//! shards are intact: someone may have deleted or edited one, and the gateways then refuse the
//! set. On signal passes (`verify`: once per signal interval, never on a watch event; except
//! after a failed repair, below), and only for the split form whose index is in place, each
//! shard the index names is read back:
//! - a shard whose `resourceVersion` is the one it had when this controller last wrote or
//!   checked it (for this revision) is unchanged: a metadata-only GET (`get_metadata`) says so,
//!   so the steady cost is one small request per shard per interval;
//! - otherwise (first check after a start, or the object changed) a full GET compares its
//!   `binaryData` key with the expected bytes and its `tollgate.dev/config-revision`
//!   annotation with the revision (other keys are not checked: an apply cannot remove what
//!   another field manager owns, and readers read only the key the index names);
//! - a missing (404) or different shard is applied again, alone (the index already names the
//!   right hashes), logged at warn with namespace and name and counted in
//!   `tollgate_controller_config_shard_repairs_total{reason="Missing"|"Changed"}`; a failed
//!   re-apply is an apply failure like any other ([`Error::ApplyConfigMap`]: the namespace's
//!   objects say `ConfigNotApplied`), and every following pass checks again until a check
//!   completes (so the retry pass that follows a failure does not report the config applied
//!   without having repaired it).
//! - A 403 on the GET (the RBAC of an older chart, without `get` on the shard names) skips the
//!   namespace's check for this pass, with one warning per process (tried again each interval,
//!   so a chart upgrade takes effect without a restart); other read errors skip that shard
//!   until the next interval, with a warning. Neither fails the pass.

use std::collections::BTreeMap;

use base64::Engine as _;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use super::engine::{Engine, Settings, Snapshot};
use super::error::{Error, is_transient};
use crate::config::payload::{self, Stored, TooLarge};
use crate::config::shard::{INDEX_KEY, ShardBlob, Sharded, parse_index};
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
/// the split form, the index only (its shards are checked on signal passes:
/// [`Engine::check_shards`]).
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

/// Whether shard ConfigMap `cm` holds `shard`'s bytes under its key, for `revision`.
fn shard_holds(cm: &ConfigMap, shard: &ShardBlob, revision: &str) -> bool {
    cm.binary_data.as_ref().and_then(|d| d.get(&shard.key)).is_some_and(|b| b.0 == shard.gz)
        && stored_revision(cm).as_deref() == Some(revision)
}

/// What a check found of one shard.
enum ShardState {
    /// As written, with its `resourceVersion` (when the server gave one).
    Intact(Option<String>),
    /// Not found (404).
    Missing,
    /// Other bytes, or another revision.
    Changed,
}

impl ShardState {
    /// Label of the repair counter and word of the log line.
    fn reason(&self) -> &'static str {
        match self {
            ShardState::Intact(_) => "Intact",
            ShardState::Missing => "Missing",
            ShardState::Changed => "Changed",
        }
    }
}

/// What [`Engine::apply_configmap`] wrote.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ConfigWrite {
    /// Nothing: the cluster holds the document (as far as this pass checked).
    Unchanged,
    /// The document (the single form, or every shard and the index).
    Written,
    /// Only these shard ConfigMaps, found missing or changed; the index was in place.
    Repaired(Vec<String>),
}

/// Base64 of `bytes` (a ConfigMap's `binaryData` in JSON).
fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
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

    /// Applies the namespace's ConfigMap when its document differs. With `verify` (signal
    /// passes) and the split form's index in place, checks the shards instead and applies
    /// again those missing or changed ([`Engine::check_shards`]). A document too large for a
    /// ConfigMap is not written ([`Error::ConfigTooLarge`]).
    pub(super) async fn apply_configmap(
        &mut self,
        snap: &Snapshot,
        ns: &str,
        doc: &GatewayConfig,
        now: Timestamp,
        verify: bool,
    ) -> Result<ConfigWrite, Error> {
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
        if in_store {
            return match &form {
                Stored::Sharded(sharded) if verify || self.shard_repair_failed.contains(ns) => {
                    let repaired = self.check_shards(ns, sharded, &doc.revision).await?;
                    Ok(if repaired.is_empty() { ConfigWrite::Unchanged } else { ConfigWrite::Repaired(repaired) })
                }
                _ => Ok(ConfigWrite::Unchanged),
            };
        }
        if self.recently(self.applied_config.get(ns), &form, now) {
            return Ok(ConfigWrite::Unchanged);
        }
        let api: Api<ConfigMap> = Api::namespaced(self.ctx.client.clone(), ns);
        let pp = PatchParams::apply(&self.ctx.settings.field_manager).force();
        let apply_error = |name: &str, e: kube::Error| Error::ApplyConfigMap {
            source: Box::new(e),
            namespace: ns.to_string(),
            name: name.to_string(),
        };
        // The split form: every shard first, the index last (readers start from the index).
        // Each shard's resourceVersion is kept, so that the next check reads its metadata only.
        let mut versions = BTreeMap::new();
        if let Stored::Sharded(sharded) = &form {
            for shard in &sharded.shards {
                let written = self.apply_shard(&api, ns, shard, &doc.revision).await?;
                if let Some(rv) = written.metadata.resource_version {
                    versions.insert(shard.config_map.clone(), rv);
                }
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
        match &form {
            Stored::Sharded(_) => self.shard_versions.insert(ns.to_string(), (doc.revision.clone(), versions)),
            _ => self.shard_versions.remove(ns),
        };
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
        Ok(ConfigWrite::Written)
    }

    /// Server-side applies one shard ConfigMap; the object as the server holds it.
    async fn apply_shard(
        &self,
        api: &Api<ConfigMap>,
        ns: &str,
        shard: &ShardBlob,
        revision: &str,
    ) -> Result<ConfigMap, Error> {
        let mut body = self.configmap_body(&shard.config_map, ns, revision);
        body["metadata"]["annotations"]["tollgate.dev/config-shard-of"] = json!(self.ctx.settings.configmap_name);
        body["binaryData"] = json!({ shard.key.as_str(): b64(&shard.gz) });
        let pp = PatchParams::apply(&self.ctx.settings.field_manager).force();
        let patch = Patch::Apply(&body);
        self.retrying(|| api.patch(&shard.config_map, &pp, &patch)).await.map_err(|e| Error::ApplyConfigMap {
            source: Box::new(e),
            namespace: ns.to_string(),
            name: shard.config_map.clone(),
        })
    }

    /// Reads back every shard `sharded` names and applies again those missing or changed (see
    /// the module rules); the names of those applied. Read errors do not fail the pass.
    pub(super) async fn check_shards(
        &mut self,
        ns: &str,
        sharded: &Sharded,
        revision: &str,
    ) -> Result<Vec<String>, Error> {
        let api: Api<ConfigMap> = Api::namespaced(self.ctx.client.clone(), ns);
        let mut known = match self.shard_versions.remove(ns) {
            Some((rev, versions)) if rev == revision => versions,
            _ => BTreeMap::new(),
        };
        let mut versions = BTreeMap::new();
        let mut repaired = Vec::new();
        let mut result = Ok(());
        for shard in &sharded.shards {
            let name = &shard.config_map;
            let state = match self.shard_state(&api, shard, revision, known.remove(name)).await {
                Ok(state) => state,
                Err(kube::Error::Api(s)) if s.code == 403 => {
                    if self.shard_check_forbidden {
                        debug!(namespace = ns, configmap = %name, "config shards not checked: get is forbidden");
                    } else {
                        self.shard_check_forbidden = true;
                        warn!(namespace = ns, configmap = %name, error = %s.message,
                            "cannot read the config shards back (the controller's RBAC lacks get on the shard ConfigMaps: an older chart?): missing or edited shards are not repaired until it is granted");
                    }
                    // The other shards have the same RBAC: none is checked this pass.
                    break;
                }
                Err(e) => {
                    warn!(namespace = ns, configmap = %name, error = %e, "cannot read a config shard back; checked again next interval");
                    continue;
                }
            };
            let reason = state.reason();
            if let ShardState::Intact(rv) = state {
                if let Some(rv) = rv {
                    versions.insert(name.clone(), rv);
                }
                continue;
            }
            match self.apply_shard(&api, ns, shard, revision).await {
                Ok(written) => {
                    self.ctx.metrics.shard_repaired(reason);
                    warn!(namespace = ns, configmap = %name, reason, revision, "config shard {} (deleted or edited outside the controller): applied again", reason.to_lowercase());
                    if let Some(rv) = written.metadata.resource_version {
                        versions.insert(name.clone(), rv);
                    }
                    repaired.push(name.clone());
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        // Shards not reached this pass (a 403) keep what was known of them.
        versions.extend(known);
        self.shard_versions.insert(ns.to_string(), (revision.to_string(), versions));
        if result.is_err() {
            self.shard_repair_failed.insert(ns.to_string());
        } else {
            self.shard_repair_failed.remove(ns);
        }
        result.map(|()| repaired)
    }

    /// What one shard holds: its metadata only when its last known `resourceVersion` is
    /// given and still current, else the whole object compared with `shard`.
    async fn shard_state(
        &self,
        api: &Api<ConfigMap>,
        shard: &ShardBlob,
        revision: &str,
        known: Option<String>,
    ) -> Result<ShardState, kube::Error> {
        let name = shard.config_map.as_str();
        if let Some(rv) = known {
            let meta: Option<PartialObjectMeta<ConfigMap>> = self.retrying(|| api.get_metadata_opt(name)).await?;
            match meta {
                None => return Ok(ShardState::Missing),
                Some(m) if m.metadata.resource_version.as_deref() == Some(rv.as_str()) => {
                    return Ok(ShardState::Intact(Some(rv)));
                }
                Some(_) => {}
            }
        }
        Ok(match self.retrying(|| api.get_opt(name)).await? {
            None => ShardState::Missing,
            Some(cm) if shard_holds(&cm, shard, revision) => ShardState::Intact(cm.metadata.resource_version),
            Some(_) => ShardState::Changed,
        })
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
