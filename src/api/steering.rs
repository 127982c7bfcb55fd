//! `ModelRoute` steering options: cache affinity (`spec.affinity`), per-request
//! hints (`spec.hints`) and the mock's prompt cache (`endpoint.mock.promptCache`).
//!
//! Every field is optional and defaults to "off", so manifests written before these existed
//! keep their meaning and their rendered config (the config document omits absent sections).
//! Rules the schema enforces: key sources are unique; `prefixBytes` in 64..=65536. These are
//! plain serde types with no Kubernetes type, so the gateway config document carries them as
//! they are.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Default header carrying an explicit affinity key.
pub const DEFAULT_AFFINITY_HEADER: &str = "x-tollgate-affinity-key";

/// Cache affinity: requests with the same key go to the same backend while it serves.
///
/// The backend is chosen by weighted rendezvous hashing over the serving backends of the best
/// tier, so a key moves only when its backend stops serving (ejected, over budget, weight 0)
/// and new keys spread by weight. Stateless: every gateway replica computes the same choice.
/// A request with no key is routed by the strategy as before.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AffinityPolicy {
    /// Where the key comes from, tried in this order; the first present wins. `Header`: the
    /// request header named by `header`. `PromptCacheKey`: OpenAI's `prompt_cache_key` body
    /// field. `User`: OpenAI's `user` field, or Anthropic's `metadata.user_id` on
    /// `/v1/messages`. `Prefix`: a hash of the first `prefixBytes` bytes of the prompt
    /// (`system` + `messages` / `input` / `prompt`, as sent).
    #[serde(default = "default_sources")]
    #[schemars(length(min = 1, max = 4))]
    #[x_kube(validation = Rule::new("self.all(a, self.exists_one(b, b == a))").message("affinity.keys: each source at most once"))]
    pub keys: Vec<AffinityKeySource>,
    /// Header carrying an explicit key (lowercase).
    #[serde(default = "default_header")]
    #[schemars(length(min = 1, max = 128), pattern(r"^[a-z0-9][-a-z0-9]*$"))]
    pub header: String,
    /// Leading bytes of the prompt hashed by the `Prefix` source. Prompts sharing this many
    /// leading bytes (e.g. one long system prompt) share a key, and so a backend.
    #[serde(default = "default_prefix_bytes")]
    #[schemars(range(min = 64, max = 65536))]
    pub prefix_bytes: u32,
}

impl Default for AffinityPolicy {
    fn default() -> Self {
        Self { keys: default_sources(), header: default_header(), prefix_bytes: default_prefix_bytes() }
    }
}

fn default_sources() -> Vec<AffinityKeySource> {
    vec![
        AffinityKeySource::Header,
        AffinityKeySource::PromptCacheKey,
        AffinityKeySource::User,
        AffinityKeySource::Prefix,
    ]
}
fn default_header() -> String {
    DEFAULT_AFFINITY_HEADER.into()
}
fn default_prefix_bytes() -> u32 {
    1024
}

/// One source of an affinity key.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
pub enum AffinityKeySource {
    /// The request header named by `affinity.header`.
    Header,
    /// OpenAI's `prompt_cache_key` body field.
    PromptCacheKey,
    /// OpenAI's `user` body field; Anthropic's `metadata.user_id` on `/v1/messages`.
    User,
    /// A hash of the leading `prefixBytes` bytes of the prompt.
    Prefix,
}

/// Per-request hints a route accepts (request headers `x-tollgate-max-cost-usd` and
/// `x-tollgate-prefer`). A hint the route does not allow is refused with 400.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HintsPolicy {
    /// Accept `x-tollgate-max-cost-usd: <USD>`: backends whose worst-case cost for the request
    /// exceeds it are skipped; when none fits the request is refused with 400.
    #[serde(default)]
    pub max_cost: bool,
    /// Preferences accepted in `x-tollgate-prefer` (`cheapest`, `fastest`): they reorder the
    /// serving backends of the best tier for that request only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2))]
    pub prefer: Vec<Preference>,
}

/// A per-request preference.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
pub enum Preference {
    /// Lowest blended list price first.
    Cheapest,
    /// Lowest observed latency first.
    Fastest,
}

impl Preference {
    /// The header value naming it.
    pub fn header_value(self) -> &'static str {
        match self {
            Preference::Cheapest => "cheapest",
            Preference::Fastest => "fastest",
        }
    }
}

/// A mock backend's prompt cache (`endpoint.mock.promptCache`): the mock remembers, per
/// backend, the prompts' leading `prefixBytes` bytes for `ttl` after their last use. A request
/// whose prefix it holds reports `cachedInputTokens` as cache reads; any other reports none
/// (its whole prompt billed as uncached input). Without this section a mock reports
/// `cachedInputTokens` on every request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MockPromptCache {
    /// How long a prefix stays cached after its last use (providers: about 5 minutes).
    #[serde(default = "default_mock_cache_ttl")]
    #[schemars(pattern(r"^([0-9]{1,9}(ms|s|m|h))+$"))]
    pub ttl: String,
    /// Leading bytes of the prompt that make up the cached prefix.
    #[serde(default = "default_prefix_bytes")]
    #[schemars(range(min = 64, max = 65536))]
    pub prefix_bytes: u32,
}

impl Default for MockPromptCache {
    fn default() -> Self {
        Self { ttl: default_mock_cache_ttl(), prefix_bytes: default_prefix_bytes() }
    }
}

fn default_mock_cache_ttl() -> String {
    "5m".into()
}
