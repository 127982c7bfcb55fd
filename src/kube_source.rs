//! The gateway's Kubernetes config source: `tollgate gateway --from-configmap NAMESPACE/NAME`.
//!
//! A mounted ConfigMap volume can take a minute to refresh; watching the ConfigMap and the
//! credentials Secret through the API propagates a rotation in well under a second. This module
//! is the gateway's side of that contract, self-contained: [`updates`] yields every new
//! *validated* config document (a bad or missing one is reported as [`SourceUpdate::Rejected`]
//! and the gateway keeps its last good one — the same validate-then-swap rule as for files) and
//! every new set of credentials; [`write_credentials`] lays credentials out as the files the
//! document names (what a mounted Secret would look like). A ConfigMap holding a shard index
//! (a document split across ConfigMaps, [`crate::config::shard`]) is followed by reading the
//! shard ConfigMaps it names (`get`, by name) and assembling them; one missing, stale or
//! corrupt shard rejects the update (the last good config stays).
//!
//! [`allowance_updates`] follows the Hard budgets' allowances ConfigMap (`tollgate-allowances`,
//! key `allowances.json`, written by the controller) the same way: each distinct valid
//! document, or why one was refused. A missing ConfigMap yields nothing (a gateway that never
//! saw one enforces no Hard budget; one that did keeps its last grants: it spends at most
//! those).
//!
//! ```no_run
//! # async fn demo(gw: tollgate::gateway::Gateway, dir: std::path::PathBuf) -> Result<(), Box<dyn std::error::Error>> {
//! use futures::StreamExt;
//! use tollgate::kube_source::{SourceUpdate, parse_object_ref, updates, write_credentials};
//! let (namespace, name) = parse_object_ref("team-a/tollgate-gateway")?;
//! let client = kube::Client::try_default().await?;
//! let mut stream = std::pin::pin!(updates(client, &namespace, &name, tollgate::config::CREDENTIALS_SECRET));
//! while let Some(update) = stream.next().await {
//!     match update {
//!         SourceUpdate::Credentials(files) => write_credentials(&dir, &files)?,
//!         SourceUpdate::Config(cfg) => { let _ = gw.swap_config(*cfg); }
//!         SourceUpdate::Rejected(why) => tracing::warn!(%why, "keeping the last good config"),
//!     }
//! }
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use kube::{Api, Client};
use tracing::warn;

use crate::config::allowances::{ALLOWANCES_KEY, Allowances};
use crate::config::shard::{INDEX_KEY, assemble, parse_index};
use crate::config::{CONFIG_GZ_KEY, CONFIG_KEY, GatewayConfig};

/// One change seen through the API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceUpdate {
    /// A new document that passed [`GatewayConfig::validate`]: swap it in.
    Config(Box<GatewayConfig>),
    /// The document is missing or invalid: keep the last good one (and count a reload error).
    Rejected(String),
    /// The full set of credentials: file name (as the document's `apiKeyFile`) → API key.
    Credentials(BTreeMap<String, Vec<u8>>),
}

/// Parses `NAMESPACE/NAME`.
pub fn parse_object_ref(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err(format!("{s:?}: expected NAMESPACE/NAME")),
    }
}

/// The shard index a ConfigMap holds (`data` [`INDEX_KEY`]), if it holds the split form.
pub fn shard_index(cm: &ConfigMap) -> Option<&str> {
    cm.data.as_ref().and_then(|d| d.get(INDEX_KEY)).map(String::as_str)
}

/// The stored bytes of a shard as its ConfigMap holds them (`binaryData` under the key the
/// index names).
pub fn shard_bytes(cm: &ConfigMap, key: &str) -> Option<Vec<u8>> {
    cm.binary_data.as_ref().and_then(|d| d.get(key)).map(|b| b.0.clone())
}

/// What an index ConfigMap means for the gateway, given its shard ConfigMaps by name (the
/// ones that exist): the assembled document, or why not (a missing, stale or corrupt shard).
pub fn sharded_update(namespace: &str, name: &str, index: &str, shards: &BTreeMap<String, ConfigMap>) -> SourceUpdate {
    let assembled = parse_index(index.as_bytes())
        .and_then(|i| assemble(&i, |r| shards.get(&r.config_map).and_then(|cm| shard_bytes(cm, &r.key))));
    match assembled {
        Ok(cfg) => SourceUpdate::Config(Box::new(cfg)),
        Err(e) => SourceUpdate::Rejected(format!("ConfigMap {namespace}/{name}: {e}")),
    }
}

/// Fetches the shards an index names and assembles them. The index is written after its
/// shards, so they are in place; a read racing a newer write (stale shard) is tried again a
/// few times before it is refused.
async fn fetch_sharded(api: &Api<ConfigMap>, namespace: &str, name: &str, index: &str) -> SourceUpdate {
    let refs = match parse_index(index.as_bytes()) {
        Ok(i) => i.shards,
        Err(e) => return SourceUpdate::Rejected(format!("ConfigMap {namespace}/{name}: {e}")),
    };
    let mut update = SourceUpdate::Rejected(String::new());
    for attempt in 0..3 {
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
        let mut shards = BTreeMap::new();
        for r in &refs {
            match api.get_opt(&r.config_map).await {
                Ok(Some(cm)) => {
                    shards.insert(r.config_map.clone(), cm);
                }
                Ok(None) => {}
                Err(e) => warn!(error = %e, shard = %r.config_map, "cannot read a config shard"),
            }
        }
        update = sharded_update(namespace, name, index, &shards);
        if matches!(update, SourceUpdate::Config(_)) {
            break;
        }
    }
    update
}

/// What a ConfigMap (or its absence) means for the gateway: the document under `data`
/// [`CONFIG_KEY`] (compact or pretty JSON), else under `binaryData` [`CONFIG_GZ_KEY`]
/// (gzip-compressed, as the controller writes large documents). The split form (`data`
/// [`INDEX_KEY`]) needs its shards: [`sharded_update`].
pub fn config_update(namespace: &str, name: &str, cm: Option<&ConfigMap>) -> SourceUpdate {
    let Some(cm) = cm else {
        return SourceUpdate::Rejected(format!("ConfigMap {namespace}/{name} not found"));
    };
    let text = cm.data.as_ref().and_then(|d| d.get(CONFIG_KEY)).map(|t| t.as_bytes());
    let gz = cm.binary_data.as_ref().and_then(|d| d.get(CONFIG_GZ_KEY)).map(|b| b.0.as_slice());
    let Some(bytes) = text.or(gz) else {
        if let Some(index) = shard_index(cm) {
            return sharded_update(namespace, name, index, &BTreeMap::new());
        }
        return SourceUpdate::Rejected(format!(
            "ConfigMap {namespace}/{name} has neither data key {CONFIG_KEY}, binaryData key {CONFIG_GZ_KEY} nor data key {INDEX_KEY}"
        ));
    };
    match crate::config::payload::decode(bytes) {
        Ok(cfg) => SourceUpdate::Config(Box::new(cfg)),
        Err(e) => SourceUpdate::Rejected(format!("ConfigMap {namespace}/{name}: {e}")),
    }
}

/// Credentials held by a Secret.
pub fn credentials_of(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    secret.data.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())).collect()
}

/// Watches ConfigMap `namespace/configmap` and Secret `namespace/secret`. Yields only changes:
/// the same document revision or the same credentials are not repeated. A missing Secret
/// yields nothing (the last credentials stay). Watch errors are retried with backoff.
pub fn updates(
    client: Client,
    namespace: &str,
    configmap: &str,
    secret: &str,
) -> impl Stream<Item = SourceUpdate> + Send + use<> {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let secrets: Api<Secret> = Api::namespaced(client, namespace);
    let (ns, cm_name) = (namespace.to_string(), configmap.to_string());
    let shard_api = cms.clone();
    let config_stream = watcher::watch_object(cms, configmap)
        .default_backoff()
        .filter_map(|r| {
            futures::future::ready(match r {
                Ok(cm) => Some(cm),
                Err(e) => {
                    warn!(error = %e, "watch of the gateway ConfigMap failed (retrying)");
                    None
                }
            })
        })
        .then(move |cm| {
            let (api, ns, cm_name) = (shard_api.clone(), ns.clone(), cm_name.clone());
            async move {
                match cm.as_ref().and_then(shard_index) {
                    Some(index) => fetch_sharded(&api, &ns, &cm_name, index).await,
                    None => config_update(&ns, &cm_name, cm.as_ref()),
                }
            }
        });
    let credentials_stream = watcher::watch_object(secrets, secret).default_backoff().filter_map(|r| {
        let u = match r {
            Ok(Some(s)) => Some(SourceUpdate::Credentials(credentials_of(&s))),
            Ok(None) => None,
            Err(e) => {
                warn!(error = %e, "watch of the credentials Secret failed (retrying)");
                None
            }
        };
        futures::future::ready(u)
    });
    let mut last_revision: Option<String> = None;
    let mut last_credentials: Option<BTreeMap<String, Vec<u8>>> = None;
    futures::stream::select(credentials_stream, config_stream).filter_map(move |u| {
        let keep = match &u {
            SourceUpdate::Config(c) => {
                let new = last_revision.as_deref() != Some(c.revision.as_str());
                last_revision = Some(c.revision.clone());
                new
            }
            SourceUpdate::Credentials(c) => {
                let new = last_credentials.as_ref() != Some(c);
                last_credentials = Some(c.clone());
                new
            }
            SourceUpdate::Rejected(_) => true,
        };
        futures::future::ready(keep.then_some(u))
    })
}

/// What an allowances ConfigMap holds: `None` when it is missing (nothing to apply), else its
/// validated document or why it is refused.
pub fn allowances_update(namespace: &str, name: &str, cm: Option<&ConfigMap>) -> Option<Result<Allowances, String>> {
    let cm = cm?;
    let Some(text) = cm.data.as_ref().and_then(|d| d.get(ALLOWANCES_KEY)) else {
        return Some(Err(format!("ConfigMap {namespace}/{name} has no data key {ALLOWANCES_KEY}")));
    };
    Some(Allowances::from_json(text.as_bytes()).map_err(|e| format!("ConfigMap {namespace}/{name}: {e}")))
}

/// Watches the allowances ConfigMap `namespace/name`: yields each distinct valid document
/// (`Ok(Some)`), each refusal (`Err`, the last document stays in force), and, as its first
/// item when the ConfigMap does not exist, `Ok(None)` (so a caller can wait for the first
/// answer: a document, a refusal or none). Watch errors are retried with backoff.
pub fn allowance_updates(
    client: Client,
    namespace: &str,
    name: &str,
) -> impl Stream<Item = Result<Option<Allowances>, String>> + Send + use<> {
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    let (ns, cm_name) = (namespace.to_string(), name.to_string());
    let mut last: Option<Allowances> = None;
    let mut first = true;
    watcher::watch_object(api, name).default_backoff().filter_map(move |r| {
        let u = match r {
            Ok(cm) => match allowances_update(&ns, &cm_name, cm.as_ref()) {
                Some(Ok(doc)) if last.as_ref() == Some(&doc) => None,
                Some(Ok(doc)) => {
                    last = Some(doc.clone());
                    Some(Ok(Some(doc)))
                }
                Some(Err(e)) => Some(Err(e)),
                None => first.then_some(Ok(None)),
            },
            Err(e) => {
                warn!(error = %e, "watch of the allowances ConfigMap failed (retrying)");
                None
            }
        };
        if u.is_some() {
            first = false;
        }
        futures::future::ready(u)
    })
}

/// Writes credentials as files of `dir` (each atomically: temporary file, then rename) and
/// removes the files of `dir` that are no longer in the set. File names that are not plain
/// names are refused.
pub fn write_credentials(dir: &Path, files: &BTreeMap<String, Vec<u8>>) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, value) in files {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{name:?} is not a plain file name"),
            ));
        }
        let tmp = dir.join(format!(".{name}.tmp"));
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(value)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, dir.join(name))?;
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.starts_with('.') && entry.file_type()?.is_file() && !files.contains_key(&name) {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm(text: &str) -> ConfigMap {
        ConfigMap { data: Some(BTreeMap::from([(CONFIG_KEY.to_string(), text.to_string())])), ..Default::default() }
    }

    #[test]
    fn validates_before_handing_over() {
        assert!(matches!(config_update("n", "c", None), SourceUpdate::Rejected(m) if m.contains("not found")));
        assert!(matches!(config_update("n", "c", Some(&cm("{"))), SourceUpdate::Rejected(_)));
        let mut doc = GatewayConfig { version: 1, revision: String::new(), namespace: "n".into(), routes: vec![] };
        doc.revision = doc.compute_revision();
        assert!(matches!(config_update("n", "c", Some(&cm(&doc.to_json_pretty()))), SourceUpdate::Config(_)));
        let mut tampered = doc.clone();
        tampered.namespace = "other".into();
        assert!(matches!(config_update("n", "c", Some(&cm(&tampered.to_json_pretty()))), SourceUpdate::Rejected(_)));
        assert_eq!(parse_object_ref("a/b"), Ok(("a".into(), "b".into())));
        assert!(parse_object_ref("a").is_err());
        // The compressed form, under binaryData.
        let gz = crate::config::payload::gzip(doc.to_json().as_bytes());
        let binary = ConfigMap {
            binary_data: Some(BTreeMap::from([(CONFIG_GZ_KEY.to_string(), k8s_openapi::ByteString(gz))])),
            ..Default::default()
        };
        assert!(matches!(config_update("n", "c", Some(&binary)), SourceUpdate::Config(c) if *c == doc));
        assert!(
            matches!(config_update("n", "c", Some(&ConfigMap::default())), SourceUpdate::Rejected(m) if m.contains(CONFIG_GZ_KEY))
        );
    }

    #[test]
    fn a_split_document_is_assembled_from_its_shard_configmaps_or_refused() {
        use crate::config::shard::split;
        let route = |n: &str| crate::config::tests_support::route(n);
        let mut old = GatewayConfig {
            version: 1,
            revision: String::new(),
            namespace: "n".into(),
            routes: (0..30).map(|i| route(&format!("r{i:02}"))).collect(),
        };
        old.revision = old.compute_revision();
        let mut new = old.clone();
        new.routes[29].backends[1].weight = 7;
        new.revision = new.compute_revision();
        // 2,000,000 compressed bytes asked for: three shards, whatever the real size.
        let (a, b) = (split(&old, "c", 2_000_000).unwrap(), split(&new, "c", 2_000_000).unwrap());
        assert_eq!(b.shards.len(), 3);
        let cms = |s: &crate::config::shard::Sharded| -> BTreeMap<String, ConfigMap> {
            s.shards
                .iter()
                .map(|x| {
                    let cm = ConfigMap {
                        binary_data: Some(BTreeMap::from([(x.key.clone(), k8s_openapi::ByteString(x.gz.clone()))])),
                        ..Default::default()
                    };
                    (x.config_map.clone(), cm)
                })
                .collect()
        };
        assert!(matches!(sharded_update("n", "c", &b.index, &cms(&b)), SourceUpdate::Config(c) if *c == new));
        // Half-updated: new shards, old index (or the reverse): refused, naming the shard.
        assert!(
            matches!(sharded_update("n", "c", &a.index, &cms(&b)), SourceUpdate::Rejected(m) if m.contains("c-shard-1") && m.contains("stale"))
        );
        let mut mixed = cms(&b);
        mixed.remove("c-shard-2");
        assert!(
            matches!(sharded_update("n", "c", &b.index, &mixed), SourceUpdate::Rejected(m) if m.contains("c-shard-2") && m.contains("missing"))
        );
        // An index ConfigMap seen without its shards is refused, not taken for an empty config.
        let index_cm =
            ConfigMap { data: Some(BTreeMap::from([(INDEX_KEY.to_string(), b.index.clone())])), ..Default::default() };
        assert_eq!(shard_index(&index_cm), Some(b.index.as_str()));
        assert!(matches!(config_update("n", "c", Some(&index_cm)), SourceUpdate::Rejected(m) if m.contains("missing")));
    }

    #[test]
    fn allowances_are_validated_before_handing_over() {
        let cm = |text: &str| ConfigMap {
            data: Some(BTreeMap::from([(ALLOWANCES_KEY.to_string(), text.to_string())])),
            ..Default::default()
        };
        assert_eq!(allowances_update("n", "a", None), None);
        let ok = r#"{"namespace":"n","budgets":[{"name":"pb","provider":"openai","limit":"1","windowStart":0,"grants":{"uid-1":"0.5"}}]}"#;
        let doc = allowances_update("n", "a", Some(&cm(ok))).unwrap().unwrap();
        assert_eq!(doc.budgets[0].grant_of("uid-1"), "0.5".parse().unwrap());
        let over = ok.replace("0.5", "1.5");
        assert!(
            matches!(allowances_update("n", "a", Some(&cm(&over))), Some(Err(m)) if m.contains("n/a") && m.contains("above the limit"))
        );
        assert!(
            matches!(allowances_update("n", "a", Some(&ConfigMap::default())), Some(Err(m)) if m.contains(ALLOWANCES_KEY))
        );
    }

    #[test]
    fn writes_and_prunes_credential_files() {
        let dir = std::env::temp_dir().join(format!("tollgate-creds-source-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        write_credentials(&dir, &BTreeMap::from([("a_key".into(), b"1".to_vec()), ("b_key".into(), b"2".to_vec())]))
            .unwrap();
        write_credentials(&dir, &BTreeMap::from([("a_key".into(), b"3".to_vec())])).unwrap();
        assert_eq!(std::fs::read(dir.join("a_key")).unwrap(), b"3");
        assert!(!dir.join("b_key").exists());
        assert!(write_credentials(&dir, &BTreeMap::from([("../x".into(), vec![])])).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
