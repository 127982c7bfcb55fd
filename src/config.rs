//! The gateway config document: the contract between the controller (or `local`, or
//! `render`) and the gateway.
//!
//! One JSON document per namespace (ConfigMap `tollgate-gateway`, key `config.json`). It is
//! deterministic: routes sorted by name, backends in their declared order, every map sorted, so
//! the same decisions always give the same bytes and the same `revision` (a hash of the
//! content). It carries each route's effective backend table, resolved prices, and for each
//! credential only a file name inside the credentials Secret: never key material.
//!
//! In the cluster the document is compact JSON, gzip-compressed in `binaryData` past a
//! threshold, and split across several ConfigMaps when even that does not fit one
//! ([`payload`]: the stored forms, their ceiling, and the readers; [`shard`]: the split form);
//! `render` pretty-prints it for people. Both JSON forms, and the revision's hash, are
//! serialized on every core for large documents ([`json`]: byte for byte one serde
//! serialization of the whole), and routes are built on every core, in route order.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use crate::api::{AffinityKeySource, AffinityPolicy, HintsPolicy, MockPromptCache, Preference};
use crate::api::{BackendState, Mode, ModelRoute, SecretKeyRef};
/// The vocabulary the document shares with the API: plain enums and the mock description, no
/// Kubernetes type. The gateway names them from here (the contract), never from `crate::api`
/// (tests/layering.rs).
pub use crate::api::{MockEndpoint, Protocol, ProviderFamily, RouteState, Strategy, WireApi};
use crate::policy::money::{Ppm, parse_duration_ms};
use crate::policy::{Decision, ObjectKey};
use crate::pricing::Prices;

pub mod allowances;
pub mod json;
pub mod payload;
pub mod shard;
pub use payload::{CONFIG_GZ_KEY, Stored, TooLarge};

/// Schema version of the document.
pub const CONFIG_VERSION: u32 = 1;
/// Name of the ConfigMap the controller writes in each namespace with routes.
pub const CONFIGMAP_NAME: &str = "tollgate-gateway";
/// Key of the document in that ConfigMap.
pub const CONFIG_KEY: &str = "config.json";
/// Name of the Secret holding the API keys, one file per referenced Secret key.
pub const CREDENTIALS_SECRET: &str = "tollgate-credentials";
/// Label a Secret must carry (value `"true"`) before the controller reads it for a backend:
/// the consent of whoever may write Secrets. Unlabelled Secrets are never watched,
/// cached or copied.
pub const PROVIDER_KEY_LABEL: &str = "tollgate.dev/provider-key";
/// The label selector of the controller's Secret watch and list.
pub const PROVIDER_KEY_SELECTOR: &str = "tollgate.dev/provider-key=true";

/// The whole document.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayConfig {
    /// Schema version ([`CONFIG_VERSION`]).
    pub version: u32,
    /// Hash of the content (everything but this field): `sha256:` and 16 hex digits.
    pub revision: String,
    /// Namespace whose routes these are.
    pub namespace: String,
    /// Routes, sorted by name.
    pub routes: Vec<RouteConfig>,
}

/// One route as the gateway serves it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteConfig {
    /// ModelRoute name.
    pub name: String,
    /// Alias clients send as `model`.
    pub model: String,
    /// How the gateway picks inside a tier.
    pub strategy: Strategy,
    /// Enforce or DryRun (informational: the table is already the one to serve).
    pub mode: Mode,
    /// `Rejecting` makes the gateway answer 429 `budget_exhausted` without calling upstream.
    pub state: RouteState,
    /// The effective table, in declared order.
    pub backends: Vec<BackendConfig>,
    /// Requests bounded above this many input tokens are refused (400) before any upstream call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_input_tokens: Option<u32>,
    /// Input tokens counted per media part where a cost bound is needed (`spec.mediaInputTokens`);
    /// omitted when unset, so older documents keep their revision and a gateway that predates
    /// it refuses a document that needs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_input_tokens: Option<u32>,
    /// Cache affinity (`spec.affinity`); omitted when off, so older documents keep their
    /// revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<AffinityPolicy>,
    /// Per-request hints the route accepts (`spec.hints`); omitted when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hints: Option<HintsPolicy>,
}

/// One backend row.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendConfig {
    /// Backend name.
    pub name: String,
    /// Provider name (metrics, budgets).
    pub provider: String,
    /// Usage accounting family.
    pub family: ProviderFamily,
    /// Upstream model id.
    pub model: String,
    /// Tier (lower preferred).
    pub tier: u32,
    /// Weight inside the tier.
    pub weight: u32,
    /// Decided state.
    pub state: BackendState,
    /// Whether the gateway may send it anything.
    pub serving: bool,
    /// Upstream wire format (`endpoint.api`); omitted when `OpenAI`, so documents without
    /// native backends (and their revisions) are unchanged, and a gateway that predates the
    /// field refuses a document that needs it (unknown field) instead of misrouting.
    #[serde(default, skip_serializing_if = "WireApi::is_openai")]
    pub api: WireApi,
    /// Where to send it.
    pub endpoint: EndpointConfig,
    /// Resolved prices (every kind present).
    pub pricing: Prices,
    /// Output-token cap enforced on the way upstream (the backend's, else the route's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u32>,
}

/// Where a backend is answered.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase", deny_unknown_fields)]
pub enum EndpointConfig {
    /// A real HTTP(S) API.
    Http {
        /// Base URL (`/chat/completions` etc. appended).
        base_url: String,
        /// Wire protocol and auth headers.
        protocol: Protocol,
        /// File name of the API key inside the credentials directory, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        api_key_file: Option<String>,
    },
    /// Answered inside the gateway.
    Mock(MockEndpoint),
}

/// Why a document could not be built or was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The JSON does not parse into the document shape.
    #[error("config document does not parse: {0}")]
    Parse(String),
    /// A version this gateway does not understand (named before any parse error: a newer
    /// schema's new fields are not the reason it is refused).
    #[error("{}", version_message(*found))]
    Version {
        /// The version found.
        found: u32,
    },
    /// The revision does not match the content (truncated or edited by hand).
    #[error("config revision {found} does not match its content ({computed})")]
    Revision {
        /// Stated.
        found: String,
        /// Computed.
        computed: String,
    },
    /// Two routes claim the same alias.
    #[error("routes {first} and {second} both serve model {alias:?}")]
    DuplicateAlias {
        /// The alias.
        alias: String,
        /// One route.
        first: String,
        /// The other.
        second: String,
    },
    /// A shard of a split document is missing, stale or corrupt ([`shard`]).
    #[error("config shard {shard}: {message}")]
    Shard {
        /// `ConfigMap/key` of the shard (or the index key).
        shard: String,
        /// What is wrong.
        message: String,
    },
    /// A field is invalid.
    #[error("route {route}: {field}: {message}")]
    Invalid {
        /// Route name.
        route: String,
        /// Field path inside the route.
        field: String,
        /// What is wrong.
        message: String,
    },
}

fn version_message(found: u32) -> String {
    if found > CONFIG_VERSION {
        format!(
            "config version {found} is newer than this gateway reads (version {CONFIG_VERSION}): upgrade the \
             gateway to the controller's release"
        )
    } else {
        format!("config version {found} is not one this gateway reads (version {CONFIG_VERSION})")
    }
}

/// For a document that does not parse: [`ConfigError::Version`] when it states a version other
/// than [`CONFIG_VERSION`] (a newer schema's fields would otherwise be reported as unknown).
/// Read only on the error path, so a valid document is parsed once.
pub(crate) fn version_error(bytes: &[u8]) -> Option<ConfigError> {
    #[derive(Deserialize)]
    struct Versioned {
        version: u32,
    }
    let v: Versioned = serde_json::from_slice(bytes).ok()?;
    (v.version != CONFIG_VERSION).then_some(ConfigError::Version { found: v.version })
}

/// Built-in base URL of a well-known provider (OpenAI-compatible endpoints).
pub fn builtin_base_url(provider: &str) -> Option<&'static str> {
    Some(match provider {
        "openai" => "https://api.openai.com/v1",
        "anthropic" => "https://api.anthropic.com/v1",
        "deepseek" => "https://api.deepseek.com/v1",
        "gemini" => "https://generativelanguage.googleapis.com/v1beta/openai",
        "mistral" => "https://api.mistral.ai/v1",
        "qwen" => "https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
        _ => return None,
    })
}

/// The built-in base URL of a well-known provider for a wire format: Gemini's native API
/// lives at the API root (`https://generativelanguage.googleapis.com`), every other
/// combination uses [`builtin_base_url`].
pub fn builtin_base_url_for(provider: &str, api: WireApi) -> Option<&'static str> {
    match (provider, api) {
        ("gemini", WireApi::Gemini) => Some("https://generativelanguage.googleapis.com"),
        _ => builtin_base_url(provider),
    }
}

/// File name of a referenced Secret key inside the credentials Secret: `<secret>_<key>`.
/// Secret names cannot contain `_`, so the first `_` separates the two unambiguously.
pub fn credential_file_name(r: &SecretKeyRef) -> String {
    format!("{}_{}", r.name, r.key)
}

/// Every Secret key the routes reference, by credential file name.
pub fn credential_refs<'a>(routes: impl IntoIterator<Item = &'a ModelRoute>) -> BTreeMap<String, SecretKeyRef> {
    routes
        .into_iter()
        .flat_map(|r| r.spec.backends.iter())
        .filter_map(|b| b.endpoint.as_ref().and_then(|e| e.api_key_secret_ref.clone()))
        .map(|r| (credential_file_name(&r), r))
        .collect()
}

impl GatewayConfig {
    /// Builds the document of one namespace from its routes and the policy's decisions.
    pub fn build<'a>(
        namespace: &str,
        routes: impl IntoIterator<Item = &'a ModelRoute>,
        decision: &Decision,
    ) -> Result<Self, ConfigError> {
        let mut selected: Vec<&ModelRoute> =
            routes.into_iter().filter(|r| ObjectKey::of(*r).namespace == namespace).collect();
        selected.sort_by_key(|r| ObjectKey::of(*r).name);
        // Routes are built on every core (contiguous runs, in order); the first error in route
        // order is the one returned, as a loop over the routes would return it.
        let runs = crate::policy::common::parallel_runs(&selected, |run| {
            run.iter().map(|r| Self::build_route(r, decision)).collect::<Result<Vec<_>, _>>()
        });
        let mut out = Vec::with_capacity(selected.len());
        for run in runs {
            out.extend(run?);
        }
        let mut doc = GatewayConfig {
            version: CONFIG_VERSION,
            revision: String::new(),
            namespace: namespace.to_string(),
            routes: out,
        };
        // The revision was just computed from the content: only the content is checked.
        doc.revision = doc.compute_revision();
        doc.validate_routes()?;
        Ok(doc)
    }

    /// One route's entry, from its spec and its decision.
    fn build_route(r: &ModelRoute, decision: &Decision) -> Result<RouteConfig, ConfigError> {
        let key = ObjectKey::of(r);
        let invalid = |field: String, message: String| ConfigError::Invalid { route: key.name.clone(), field, message };
        let d =
            decision.routes.get(&key).ok_or_else(|| invalid("(route)".into(), "no decision for this route".into()))?;
        let mut backends = Vec::with_capacity(r.spec.backends.len());
        for (i, b) in r.spec.backends.iter().enumerate() {
            let row = d
                .table
                .iter()
                .find(|e| e.name == b.name)
                .ok_or_else(|| invalid(format!("backends[{i}]"), format!("no decision for backend {}", b.name)))?;
            let pricing =
                Prices::from_spec(&b.pricing).map_err(|e| invalid(format!("backends[{i}].pricing"), e.to_string()))?;
            let api = b.endpoint.as_ref().map(|e| e.api).unwrap_or_default();
            let endpoint = match b.endpoint.as_ref() {
                Some(e) if e.mock.is_some() => EndpointConfig::Mock(e.mock.clone().unwrap_or_default()),
                e => {
                    let base_url = e
                        .and_then(|e| e.base_url.clone())
                        .or_else(|| builtin_base_url_for(&b.provider, api).map(str::to_owned))
                        .ok_or_else(|| {
                            invalid(
                                format!("backends[{i}].endpoint.baseUrl"),
                                format!("provider {:?} has no built-in endpoint", b.provider),
                            )
                        })?;
                    EndpointConfig::Http {
                        base_url: base_url.trim_end_matches('/').to_string(),
                        protocol: e.map(|e| e.protocol).unwrap_or_default(),
                        api_key_file: e.and_then(|e| e.api_key_secret_ref.as_ref()).map(credential_file_name),
                    }
                }
            };
            backends.push(BackendConfig {
                name: b.name.clone(),
                provider: b.provider.clone(),
                family: b.effective_family(),
                model: b.model.clone(),
                api,
                tier: row.tier,
                weight: row.weight,
                state: row.state,
                serving: row.serving,
                endpoint,
                pricing,
                max_output_tokens: b.max_output_tokens.or(r.spec.max_output_tokens),
            });
        }
        Ok(RouteConfig {
            name: key.name.clone(),
            model: d.alias.clone(),
            strategy: d.strategy,
            mode: d.mode,
            state: d.state,
            backends,
            max_input_tokens: r.spec.max_input_tokens,
            media_input_tokens: r.spec.media_input_tokens,
            affinity: r.spec.affinity.clone(),
            hints: r.spec.hints.clone(),
        })
    }

    /// Hash of everything but `revision`: of the compact JSON of the document with an empty
    /// revision. The routes are serialized on every core ([`Self::for_each_part`]) and the
    /// parts hashed in order, so the bytes hashed are exactly one serialization of the whole.
    pub fn compute_revision(&self) -> String {
        let mut hasher = Sha256::new();
        // Feeding a hash cannot fail.
        let _ = self.for_each_part("", false, &mut |part| {
            hasher.update(part);
            Ok(())
        });
        format!("sha256:{}", &hex::encode(hasher.finalize())[..16])
    }

    /// Checks the whole document; the gateway swaps a new document in only when this passes.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.version != CONFIG_VERSION {
            return Err(ConfigError::Version { found: self.version });
        }
        let computed = self.compute_revision();
        if self.revision != computed {
            return Err(ConfigError::Revision { found: self.revision.clone(), computed });
        }
        self.validate_routes()
    }

    /// The checks of [`Self::validate`] on the routes (aliases, backends, endpoints).
    fn validate_routes(&self) -> Result<(), ConfigError> {
        let mut aliases: BTreeMap<&str, &str> = BTreeMap::new();
        for r in &self.routes {
            let invalid =
                |field: String, message: String| ConfigError::Invalid { route: r.name.clone(), field, message };
            if let Some(first) = aliases.insert(&r.model, &r.name) {
                return Err(ConfigError::DuplicateAlias {
                    alias: r.model.clone(),
                    first: first.to_string(),
                    second: r.name.clone(),
                });
            }
            if r.model.is_empty() {
                return Err(invalid("model".into(), "empty alias".into()));
            }
            if r.backends.is_empty() {
                return Err(invalid("backends".into(), "no backends".into()));
            }
            let mut names = BTreeSet::new();
            for (i, b) in r.backends.iter().enumerate() {
                if !names.insert(&b.name) {
                    return Err(invalid(format!("backends[{i}].name"), format!("duplicate backend {:?}", b.name)));
                }
                if b.model.is_empty() {
                    return Err(invalid(format!("backends[{i}].model"), "empty upstream model".into()));
                }
                match &b.endpoint {
                    EndpointConfig::Http { base_url, api_key_file, .. } => {
                        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
                            return Err(invalid(
                                format!("backends[{i}].endpoint.baseUrl"),
                                format!("{base_url:?} is not an http(s) URL"),
                            ));
                        }
                        if let Some(f) = api_key_file
                            && (f.is_empty() || f.contains('/') || f.starts_with('.'))
                        {
                            return Err(invalid(
                                format!("backends[{i}].endpoint.apiKeyFile"),
                                format!("{f:?} is not a plain file name"),
                            ));
                        }
                    }
                    EndpointConfig::Mock(m) => {
                        parse_duration_ms(&m.latency)
                            .map_err(|e| invalid(format!("backends[{i}].endpoint.mock.latency"), e))?;
                        m.error_rate
                            .parse::<Ppm>()
                            .map_err(|e| invalid(format!("backends[{i}].endpoint.mock.errorRate"), e.to_string()))?;
                        if let Some(pc) = &m.prompt_cache {
                            parse_duration_ms(&pc.ttl)
                                .map_err(|e| invalid(format!("backends[{i}].endpoint.mock.promptCache.ttl"), e))?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Parses and validates a document (what the gateway does on every reload).
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        let doc: GatewayConfig = serde_json::from_slice(bytes)
            .map_err(|e| version_error(bytes).unwrap_or_else(|| ConfigError::Parse(e.to_string())))?;
        doc.validate()?;
        Ok(doc)
    }

    /// Compact JSON (what the cluster holds; see [`payload`]).
    pub fn to_json(&self) -> String {
        self.joined(false)
    }

    /// Pretty JSON with a trailing newline (what `render` prints).
    pub fn to_json_pretty(&self) -> String {
        let mut s = self.joined(true);
        s.push('\n');
        s
    }

    /// Writes the pretty JSON of [`Self::to_json_pretty`] to `w`, part by part (the whole
    /// text is never held).
    pub fn write_json_pretty(&self, w: &mut impl std::io::Write) -> std::io::Result<()> {
        self.for_each_part(&self.revision, true, &mut |part| w.write_all(part))?;
        w.write_all(b"\n")
    }

    /// The parts of [`Self::for_each_part`] as one string.
    fn joined(&self, pretty: bool) -> String {
        let mut out = Vec::new();
        // Appending to a vector cannot fail.
        let _ = self.for_each_part(&self.revision, pretty, &mut |part| {
            out.extend_from_slice(part);
            Ok(())
        });
        // serde_json writes UTF-8 only.
        String::from_utf8(out).unwrap_or_default()
    }

    /// The route serving `alias`.
    pub fn route(&self, alias: &str) -> Option<&RouteConfig> {
        self.routes.iter().find(|r| r.model == alias)
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::RouteConfig;

    /// A route of five mock backends, as `render` writes it.
    pub(crate) fn route(name: &str) -> RouteConfig {
        let backends: Vec<serde_json::Value> = (0..5)
            .map(|i| {
                serde_json::json!({
                    "name": format!("backend-{i}"), "provider": "openai", "family": "OpenAI",
                    "model": format!("gpt-5-mini-{i}"), "tier": i % 2, "weight": 20, "state": "Active",
                    "serving": true,
                    "endpoint": {"http": {"baseUrl": "https://api.openai.com/v1", "protocol": "OpenAI",
                                          "apiKeyFile": "openai_api-key"}},
                    "pricing": {"input": "0.25", "cachedInput": "0.025", "cacheWrite": "0.25",
                                "output": "2.00", "reasoning": "2.00"}
                })
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "name": name, "model": name, "strategy": "Weighted", "mode": "Enforce", "state": "Serving",
            "backends": backends
        }))
        .unwrap()
    }
}
