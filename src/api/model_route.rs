//! `ModelRoute`: which providers and models serve one model alias, and how traffic rotates.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::shared::{SecretKeyRef, StatusCondition, StatusTime};
use super::steering::{AffinityPolicy, HintsPolicy, MockPromptCache};

/// A model alias clients call, and the backends that may serve it.
///
/// The controller renders the route's effective backend table (after budget and health
/// decisions) into the gateway config, and reports every decision in `status`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tollgate.dev",
    version = "v1alpha1",
    kind = "ModelRoute",
    plural = "modelroutes",
    shortname = "mr",
    category = "tollgate",
    namespaced,
    status = "ModelRouteStatus",
    derive = "PartialEq",
    cel,
    printcolumn = r#"{"name":"Model","type":"string","jsonPath":".spec.model","description":"Alias clients send as model (defaults to the resource name)"}"#,
    printcolumn = r#"{"name":"Strategy","type":"string","jsonPath":".spec.strategy"}"#,
    printcolumn = r#"{"name":"Active","type":"integer","jsonPath":".status.active","description":"Backends serving traffic"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ModelRouteSpec {
    /// The alias clients send as `model`. Defaults to the resource's `metadata.name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub model: Option<String>,

    /// How traffic is spread inside a tier: `Weighted` (by weight), `Priority` (first serving
    /// backend only), `Cheapest` (weights favour the lowest blended price) or `LowestLatency`
    /// (weights favour the lowest observed latency).
    #[serde(default)]
    pub strategy: Strategy,

    /// The backends that may serve this alias. Names are unique; at least one backend needs a
    /// weight above zero.
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(
        merge_strategy = ListMerge::Map(vec!["name".into()]),
        validation = Rule::new("size(self) > 0").message("at least one backend is required"),
        validation = Rule::new("self.all(b, self.exists_one(c, c.name == b.name))").message("backend names must be unique"),
        validation = Rule::new("self.exists(b, b.weight > 0)").message("at least one backend needs a weight above zero")
    )]
    pub backends: Vec<Backend>,

    /// When a backend is taken out of rotation for errors (or, with `latency`, for slowness),
    /// and how it comes back.
    #[serde(default)]
    pub health: HealthPolicy,

    /// What the route does when budgets leave none of its backends serving.
    #[serde(default)]
    pub budget: RouteBudgetPolicy,

    /// `Enforce` applies decisions to the gateway config; `DryRun` decides and reports the same
    /// decisions in status and events but leaves the rendered backend table as configured.
    #[serde(default)]
    pub mode: Mode,

    /// Most output tokens (reasoning included where the provider counts it there) any answer of
    /// this route may produce: the gateway clamps or inserts the request's max-tokens field in
    /// every wire format on the way upstream. A backend's own `maxOutputTokens` wins. Also the
    /// output bound of a request to a Hard budget's backend that names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000000))]
    pub max_output_tokens: Option<u32>,

    /// Largest request accepted, in input tokens as the gateway bounds them from the body
    /// (one token per byte of the request body: conservative); larger requests get 400
    /// `input_too_large` before any upstream call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000000))]
    pub max_input_tokens: Option<u32>,

    /// Most input tokens one media part of a request (an image, audio, video, file or document,
    /// inline or referenced by URL or file id) may bill: what a Hard budget reserves for each
    /// such part, and the max-cost hint counts, on top of the body's bytes (which bound text
    /// only). Unset: each image counts 16384 tokens, and requests with other media parts are
    /// refused on a Hard budget's backends (400 `unbounded_input`), since nothing in the
    /// request bounds what they bill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000000))]
    pub media_input_tokens: Option<u32>,

    /// Cache affinity (opt-in): requests with the same key stay on one backend while it serves,
    /// so the provider's prompt cache stays warm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<AffinityPolicy>,

    /// Per-request hints the route accepts (`x-tollgate-max-cost-usd`, `x-tollgate-prefer`);
    /// none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hints: Option<HintsPolicy>,
}

impl ModelRoute {
    /// The alias clients send as `model`: `spec.model`, else the resource name.
    pub fn alias(&self) -> String {
        match &self.spec.model {
            Some(m) => m.clone(),
            None => self.metadata.name.clone().unwrap_or_default(),
        }
    }
}

/// Strategy inside a tier.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
pub enum Strategy {
    /// Spread by the configured weights.
    #[default]
    Weighted,
    /// Send everything to the first serving backend of the tier (in list order).
    Priority,
    /// Favour the lowest blended price (weights scaled inversely to price).
    Cheapest,
    /// Favour the lowest observed latency.
    LowestLatency,
}

/// Enforce or only report.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
pub enum Mode {
    /// Decisions change the rendered backend table.
    #[default]
    Enforce,
    /// Decisions are computed and reported, the rendered table stays as configured.
    DryRun,
}

/// One upstream provider + model that may serve the alias.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.endpoint) || self.provider in ['openai', 'anthropic', 'deepseek', 'gemini', 'mistral', 'qwen']").message("endpoint is required unless provider is one with a built-in endpoint (openai, anthropic, deepseek, gemini, mistral, qwen)"))]
pub struct Backend {
    /// Unique name of the backend inside the route (lowercase letters, digits, dashes).
    #[schemars(length(min = 1, max = 63), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,

    /// Provider name; joins `ProviderBudget.spec.provider`. Well-known names (openai,
    /// anthropic, deepseek, gemini, mistral, qwen) have built-in endpoints and usage rules.
    #[schemars(length(min = 1, max = 63), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub provider: String,

    /// Upstream model id sent to the provider in place of the alias.
    #[schemars(length(min = 1, max = 256))]
    pub model: String,

    /// Where and how to reach the provider. Optional for well-known providers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<Endpoint>,

    /// Which provider family's usage rules meter this backend. Defaults from `provider` for
    /// well-known providers, otherwise `OpenAI` (the OpenAI-compatible usage shape).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<ProviderFamily>,

    /// Relative share of traffic inside its tier (0 = standby inside the tier).
    #[serde(default = "default_weight")]
    #[schemars(range(min = 0, max = 1000000))]
    pub weight: u32,

    /// Tier: lower is preferred; higher tiers serve only when no lower tier can.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub priority: u32,

    /// Prices in USD per one million tokens, as decimal strings.
    pub pricing: Pricing,

    /// This backend's output-token cap; overrides the route's `maxOutputTokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000000))]
    pub max_output_tokens: Option<u32>,
}

fn default_weight() -> u32 {
    1
}

/// Usage accounting family: which counts include which.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
pub enum ProviderFamily {
    /// OpenAI chat/completions/responses/embeddings usage (cached ⊂ prompt, reasoning ⊂ completion).
    OpenAI,
    /// Anthropic: cache reads and writes counted outside `input_tokens`.
    Anthropic,
    /// DeepSeek: `prompt_cache_hit_tokens` + `prompt_cache_miss_tokens`.
    DeepSeek,
    /// Gemini: `thoughtsTokenCount` outside `candidatesTokenCount`, cached ⊂ prompt.
    Gemini,
    /// Mistral (OpenAI-shaped usage).
    Mistral,
    /// Qwen / DashScope compatible mode (OpenAI-shaped usage).
    Qwen,
}

impl ProviderFamily {
    /// The family of a well-known provider name, if it is one.
    pub fn for_provider(provider: &str) -> Option<Self> {
        Some(match provider {
            "openai" => Self::OpenAI,
            "anthropic" => Self::Anthropic,
            "deepseek" => Self::DeepSeek,
            "gemini" => Self::Gemini,
            "mistral" => Self::Mistral,
            "qwen" => Self::Qwen,
            _ => return None,
        })
    }
}

impl Backend {
    /// The usage family that meters this backend.
    pub fn effective_family(&self) -> ProviderFamily {
        self.family.or_else(|| ProviderFamily::for_provider(&self.provider)).unwrap_or(ProviderFamily::OpenAI)
    }
}

/// Endpoint of a backend: a real base URL, or a mock answered inside the gateway.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!(has(self.baseUrl) && has(self.mock))").message("set either baseUrl or mock, not both"),
    validation = Rule::new("!(has(self.mock) && has(self.apiKeySecretRef))").message("apiKeySecretRef: a mock endpoint takes no API key")
)]
pub struct Endpoint {
    /// Base URL of the provider's API (e.g. `https://api.deepseek.com/v1`); paths such as
    /// `/chat/completions` are appended. Defaults to the built-in URL of a well-known provider.
    /// No user or password (`user:pass@host`): the URL is written into the gateway ConfigMap,
    /// so credentials belong in `apiKeySecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048), pattern(r"^https?://[^\s]+$"))]
    #[x_kube(validation = Rule::new("!self.matches('^[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#]*@')").message("baseUrl must not hold a user or password (user:password@host): it is written into the gateway ConfigMap in clear; put the API key in a Secret named by apiKeySecretRef"))]
    pub base_url: Option<String>,

    /// Secret key holding the API key. The Secret must carry the label
    /// `tollgate.dev/provider-key: "true"` (set by whoever may write Secrets: their consent);
    /// the controller neither sees nor reads other Secrets, and a route naming one is not Ready
    /// (reason `SecretNotOptedIn`). The key is copied into the gateway credentials Secret, never
    /// into the ConfigMap, a status, an event or a log line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret_ref: Option<SecretKeyRef>,

    /// Wire protocol and auth headers: `OpenAI` (Bearer token) or `Anthropic`
    /// (`x-api-key` + `anthropic-version`). Used with `api: OpenAI` only; the native APIs
    /// below set their own auth headers.
    #[serde(default)]
    pub protocol: Protocol,

    /// Upstream wire format (default `OpenAI`). `OpenAI`: the OpenAI-compatible API, paths
    /// `/chat/completions` etc. appended to `baseUrl`. `AnthropicMessages`: Anthropic's native
    /// Messages API, `POST {baseUrl}/v1/messages` with `x-api-key` and
    /// `anthropic-version: 2023-06-01` (a trailing `/v1` on `baseUrl` is not doubled; default
    /// `max_tokens` 4096 when the client sets none). `Gemini`: Gemini's native API,
    /// `{baseUrl}/v1beta/models/{model}:generateContent` (`:streamGenerateContent?alt=sse`)
    /// with `x-goog-api-key` (built-in `baseUrl` `https://generativelanguage.googleapis.com`).
    /// Native backends serve `/v1/chat/completions` and `/v1/messages` (translated); the other
    /// OpenAI endpoints skip them. A mock backend answers in this format.
    #[serde(default, skip_serializing_if = "WireApi::is_openai")]
    pub api: WireApi,

    /// Answer inside the gateway instead of calling a provider (demos, load tests, `local`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mock: Option<MockEndpoint>,
}

/// Upstream wire format of a backend (`endpoint.api`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
pub enum WireApi {
    /// The OpenAI-compatible API (chat completions, completions, embeddings, responses).
    #[default]
    OpenAI,
    /// Anthropic's native Messages API (`/v1/messages`).
    AnthropicMessages,
    /// Gemini's native `generateContent` API.
    Gemini,
}

impl WireApi {
    /// Whether this is the default (`OpenAI`), which documents omit.
    pub fn is_openai(&self) -> bool {
        *self == WireApi::OpenAI
    }

    /// The name used in errors and docs.
    pub fn label(self) -> &'static str {
        match self {
            WireApi::OpenAI => "OpenAI",
            WireApi::AnthropicMessages => "AnthropicMessages",
            WireApi::Gemini => "Gemini",
        }
    }
}

/// Upstream wire protocol.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
pub enum Protocol {
    /// OpenAI-compatible API with `Authorization: Bearer`.
    #[default]
    OpenAI,
    /// Anthropic's native API with `x-api-key` and `anthropic-version`.
    Anthropic,
}

/// A backend answered inside the gateway, with no network. It keeps its `provider`, so
/// budgets, pricing and metrics treat it exactly like that provider.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MockEndpoint {
    /// Time before the answer (for streams: before the first chunk).
    #[serde(default = "default_mock_latency")]
    #[schemars(pattern(r"^([0-9]{1,9}(ms|s|m|h))+$"))]
    pub latency: String,
    /// Prompt tokens reported, including cached ones.
    #[serde(default = "default_mock_input")]
    pub input_tokens: u32,
    /// Of the prompt tokens, how many were cache reads.
    #[serde(default = "default_mock_cached")]
    pub cached_input_tokens: u32,
    /// Tokens written to the prompt cache.
    #[serde(default = "default_mock_cache_write")]
    pub cache_write_tokens: u32,
    /// Completion tokens reported (visible output).
    #[serde(default = "default_mock_output")]
    pub output_tokens: u32,
    /// Reasoning tokens reported.
    #[serde(default = "default_mock_reasoning")]
    pub reasoning_tokens: u32,
    /// Fraction of requests answered with `errorStatus` (`"0"`..`"1"`).
    #[serde(default = "default_mock_error_rate")]
    #[schemars(pattern(r"^(0(\.[0-9]{1,6})?|1(\.0{1,6})?)$"))]
    pub error_rate: String,
    /// HTTP status of injected errors.
    #[serde(default = "default_mock_error_status")]
    #[schemars(range(min = 400, max = 599))]
    pub error_status: u16,
    /// Model a provider's prompt cache: cache reads only for a prompt prefix seen recently on
    /// this backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_cache: Option<MockPromptCache>,
}

impl Default for MockEndpoint {
    fn default() -> Self {
        Self {
            latency: default_mock_latency(),
            input_tokens: default_mock_input(),
            cached_input_tokens: default_mock_cached(),
            cache_write_tokens: default_mock_cache_write(),
            output_tokens: default_mock_output(),
            reasoning_tokens: default_mock_reasoning(),
            error_rate: default_mock_error_rate(),
            error_status: default_mock_error_status(),
            prompt_cache: None,
        }
    }
}

fn default_mock_latency() -> String {
    "20ms".into()
}
fn default_mock_input() -> u32 {
    1200
}
fn default_mock_cached() -> u32 {
    400
}
fn default_mock_cache_write() -> u32 {
    100
}
fn default_mock_output() -> u32 {
    300
}
fn default_mock_reasoning() -> u32 {
    150
}
fn default_mock_error_rate() -> String {
    "0".into()
}
fn default_mock_error_status() -> u16 {
    503
}

/// Prices in USD per one million tokens, as decimal strings (up to six decimals).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Pricing {
    /// Uncached input (prompt) tokens.
    #[schemars(pattern(r"^(0|[1-9][0-9]{0,11})(\.[0-9]{1,6})?$"))]
    pub input: String,
    /// Input tokens read from the prompt cache. Defaults to `input`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^(0|[1-9][0-9]{0,11})(\.[0-9]{1,6})?$"))]
    pub cached_input: Option<String>,
    /// Input tokens written to the prompt cache with the provider's default lifetime
    /// (Anthropic's 5-minute writes; every other provider's writes). Defaults to `input`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^(0|[1-9][0-9]{0,11})(\.[0-9]{1,6})?$"))]
    pub cache_write: Option<String>,
    /// Input tokens written to Anthropic's 1-hour prompt cache
    /// (`cache_creation.ephemeral_1h_input_tokens`). Defaults to twice `input`, Anthropic's
    /// price rule for 1-hour writes.
    #[serde(default, rename = "cacheWrite1h", skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^(0|[1-9][0-9]{0,11})(\.[0-9]{1,6})?$"))]
    pub cache_write_1h: Option<String>,
    /// Output (completion) tokens.
    #[schemars(pattern(r"^(0|[1-9][0-9]{0,11})(\.[0-9]{1,6})?$"))]
    pub output: String,
    /// Reasoning tokens. Defaults to `output`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^(0|[1-9][0-9]{0,11})(\.[0-9]{1,6})?$"))]
    pub reasoning: Option<String>,
}

/// When a backend leaves rotation for errors and how it returns.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthPolicy {
    /// Error-rate thresholds with hysteresis.
    #[serde(default)]
    pub error_rate: ErrorRatePolicy,
    /// Ejection time: `base` on the first trip, doubled on each repeat trip, at most `max`.
    #[serde(default)]
    pub ejection: EjectionPolicy,
    /// Staged return after an ejection, in percent of the configured weight, strictly
    /// increasing (e.g. `[10, 50, 100]`); each stage lasts one `errorRate.window`.
    #[serde(default = "default_ramp_up")]
    #[schemars(length(max = 10), inner(range(min = 1, max = 100)))]
    #[x_kube(validation = Rule::new("self.all(a, a >= 1 && a <= 100) && self.isSorted() && self.all(a, self.exists_one(b, b == a))").message("stages must be percents in 1..100, strictly increasing"))]
    pub ramp_up: Vec<u32>,
    /// At most this percent of a route's backends may be ejected at once; a trip beyond it is
    /// reported but not enforced.
    #[serde(default = "default_max_ejected")]
    #[schemars(range(min = 0, max = 100))]
    pub max_ejected_percent: u32,
    /// Latency budget (p95 over a window) that ejects a slow backend with the same backoff
    /// and ramp-up as errors. None by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<super::LatencyPolicy>,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        Self {
            error_rate: ErrorRatePolicy::default(),
            ejection: EjectionPolicy::default(),
            ramp_up: default_ramp_up(),
            max_ejected_percent: default_max_ejected(),
            latency: None,
        }
    }
}

fn default_ramp_up() -> Vec<u32> {
    vec![10, 50, 100]
}
fn default_max_ejected() -> u32 {
    50
}

/// Error-rate thresholds of a backend.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("double(self.recover) < double(self.trip)").message("recover must be below trip"))]
pub struct ErrorRatePolicy {
    /// Eject when the error rate over `window` is at least this (ratio, e.g. `"0.20"`).
    #[serde(default = "default_trip")]
    #[schemars(pattern(r"^(0(\.[0-9]{1,6})?|1(\.0{1,6})?)$"))]
    pub trip: String,
    /// A ramping backend goes back to ejected unless its error rate stays below this.
    #[serde(default = "default_recover")]
    #[schemars(pattern(r"^(0(\.[0-9]{1,6})?|1(\.0{1,6})?)$"))]
    pub recover: String,
    /// Window over which the error rate is computed.
    #[serde(default = "default_window")]
    #[schemars(pattern(r"^([0-9]{1,9}(ms|s|m|h))+$"))]
    pub window: String,
    /// No decision below this many requests in the window.
    #[serde(default = "default_min_requests")]
    #[schemars(range(min = 1, max = 1000000))]
    pub min_requests: u32,
}

impl Default for ErrorRatePolicy {
    fn default() -> Self {
        Self {
            trip: default_trip(),
            recover: default_recover(),
            window: default_window(),
            min_requests: default_min_requests(),
        }
    }
}

fn default_trip() -> String {
    "0.20".into()
}
fn default_recover() -> String {
    "0.05".into()
}
fn default_window() -> String {
    "5m".into()
}
fn default_min_requests() -> u32 {
    20
}

/// Exponential ejection backoff.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EjectionPolicy {
    /// Ejection time on the first trip.
    #[serde(default = "default_ejection_base")]
    #[schemars(pattern(r"^([0-9]{1,9}(ms|s|m|h))+$"))]
    pub base: String,
    /// Upper bound of the doubled ejection time.
    #[serde(default = "default_ejection_max")]
    #[schemars(pattern(r"^([0-9]{1,9}(ms|s|m|h))+$"))]
    pub max: String,
}

impl Default for EjectionPolicy {
    fn default() -> Self {
        Self { base: default_ejection_base(), max: default_ejection_max() }
    }
}

fn default_ejection_base() -> String {
    "30s".into()
}
fn default_ejection_max() -> String {
    "30m".into()
}

/// Route-level budget behaviour.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteBudgetPolicy {
    /// `Fallback`: use the next tier, and when nothing remains fail open to the backend least
    /// over its budget (route Degraded). `Reject`: answer 429 `budget_exhausted`.
    #[serde(default)]
    pub on_exhausted: OnExhausted,
}

/// What to do when budgets leave nothing serving.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
pub enum OnExhausted {
    /// Use the next tier; when nothing remains, fail open to the least-over-budget backend.
    #[default]
    Fallback,
    /// Refuse with 429 `budget_exhausted`.
    Reject,
}

/// Observed state of a `ModelRoute`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelRouteStatus {
    /// The `metadata.generation` these decisions were made for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Degraded` and `Rotated`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<StatusCondition>,
    /// `Serving`, `Degraded` or `Rejecting`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<RouteState>,
    /// Number of backends serving traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<u32>,
    /// Per-backend decisions with their evidence.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub backends: Vec<BackendStatus>,
    /// The most recent change of the effective backend table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation: Option<Rotation>,
    /// How many gateways serve this route as decided: those serving `configRevision`, the
    /// revision its entry last changed in, or a later one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateways: Option<GatewaySync>,
}

/// Overall state of a route.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
pub enum RouteState {
    /// Serving as configured, or through configured fallbacks.
    Serving,
    /// Serving, but failing open or with backends out of rotation.
    Degraded,
    /// Refusing requests with 429 `budget_exhausted` (`onExhausted: Reject`).
    Rejecting,
}

/// State of one backend.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
pub enum BackendState {
    /// Serving at its configured weight.
    Active,
    /// Returning from an ejection at a fraction of its weight.
    Ramping,
    /// Out of rotation for errors until `ejectedUntil`.
    Ejected,
    /// Out of rotation (or moved to the last tier) because its provider's budget says so.
    OverBudget,
    /// Healthy, but not serving: a lower tier serves, or its weight is zero.
    Standby,
}

/// Decision and evidence for one backend.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackendStatus {
    /// Backend name.
    pub name: String,
    /// Decided state.
    pub state: BackendState,
    /// Weight in the rendered table (0 = serves nothing).
    pub effective_weight: u32,
    /// Tier in the rendered table.
    #[serde(default)]
    pub tier: u32,
    /// Why it is in this state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When it entered this state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<StatusTime>,
    /// Error rate over the health window, as a decimal ratio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<String>,
    /// Requests seen in the health window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    /// With `health.latency`: the conservative p95 latency (upper bound of the bucket holding
    /// it, e.g. `2s500ms`, or `>5m`) over the latency window, or the one that ejected it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p95: Option<String>,
    /// With `health.latency`: successful answers behind `latencyP95`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_requests: Option<u64>,
    /// With `health.latency`: the budget `latencyP95` is compared with (`trip`, or `recover`
    /// for the ejection of a ramping backend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_budget: Option<String>,
    /// End of the current ejection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ejected_until: Option<StatusTime>,
    /// Ejections in a row (each doubles the next ejection time); back to none after
    /// `ejection.max` of continuous health. Kept here so a controller restart keeps the backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trips: Option<u32>,
    /// Back in rotation after ejections (`trips` set): when it last became healthy, from which
    /// `trips` resets after `ejection.max`. Kept so a controller restart resets the backoff at
    /// the same moment as the controller that kept running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_since: Option<StatusTime>,
    /// While returning from an ejection: the `rampUp` stage it is in, 1 for the first. Kept so
    /// a controller restart resumes the ramp where it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ramp_stage: Option<u32>,
    /// When the current `rampUp` stage started (each stage lasts one `errorRate.window`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ramp_stage_since: Option<StatusTime>,
    /// The route fails open to this backend: nothing else can serve, so it serves although
    /// ejected or over budget.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fail_open: bool,
    /// The ProviderBudget (same namespace) whose `Deprioritize` threshold moved this backend to
    /// the last tier, where it still serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deprioritized_by: Option<String>,
}

/// A change of the effective backend table.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rotation {
    /// When it happened.
    pub time: StatusTime,
    /// Serving backends before, with weights (`a=70,b=30`).
    pub from: String,
    /// Serving backends after.
    pub to: String,
    /// Why.
    pub reason: String,
}

/// Gateways serving the route's current entry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySync {
    /// Gateways serving `configRevision` or a later revision of the namespace's config.
    pub in_sync: u32,
    /// Gateways found.
    pub total: u32,
    /// Revision of the namespace's config document in which this route's entry last changed
    /// (another route's change makes a new revision without moving this one).
    pub config_revision: String,
}
