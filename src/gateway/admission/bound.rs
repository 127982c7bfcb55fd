//! The most one request can cost: read once from the client's request, used by every rule that
//! must not be exceeded (Hard-budget admission, the output cap written upstream, the
//! `x-tollgate-max-cost-usd` hint). One definition, so the three can never disagree.
//!
//! Rules:
//! - **Output**: the largest bound any of the surface's fields states (`max_completion_tokens`
//!   and `max_tokens` on chat completions, `max_tokens` on completions and messages,
//!   `max_output_tokens` on responses). Upstreams honour different fields (DeepSeek-style
//!   servers read only `max_tokens`, vLLM-style prefer `max_completion_tokens`, the Anthropic
//!   translator sends one as `max_tokens`), so the smaller of two is no bound. On a Hard
//!   budget's backend the bound is also written into every such field of the upstream request
//!   (`super::cap_body`), so what upstream may generate is exactly what was reserved.
//! - **Choices**: `n` and, on completions, `best_of` (generated server-side): each choice may
//!   produce the whole output bound.
//! - These fields must be non-negative integers or `null` wherever the gateway relies on them
//!   (a Hard budget's backend, the max-cost hint): a string `"n": "50"` that a lenient upstream
//!   reads as 50 would otherwise count as one choice. Anything else is [`CostBound::unreadable`],
//!   a 400 naming the field.
//! - **Input**: body bytes + [`INPUT_TOKEN_OVERHEAD`] bound text tokens (no tokenizer in use
//!   encodes a byte of text into more than one token, and the JSON framing of each message
//!   outweighs the template tokens a provider adds). Media parts break that premise: a 60-byte
//!   image URL can bill thousands of tokens, and even an inline image bills a fixed minimum
//!   larger than its bytes. So every media part counts on top of the bytes:
//!   - with the route's `spec.mediaInputTokens` set, every media part (image, audio, video,
//!     file, document; inline or referenced) counts that many tokens;
//!   - without it, every image counts [`DEFAULT_IMAGE_TOKENS`], and any other media part
//!     (audio, video, files, documents: their token count grows with their length, which the
//!     request does not state) makes the request unbounded: 400 `unbounded_input` on a Hard
//!     budget's backend or with the max-cost hint.
//!
//!   Media parts are content objects whose `type` names one ([`IMAGE_TYPES`],
//!   [`OTHER_MEDIA_TYPES`]) or, with no `type`, objects holding Gemini's `inlineData` /
//!   `fileData` (and their snake-case spellings); a classified part is not searched again
//!   inside. Media tokens are priced like the rest of the input, at the dearest input price.

use serde_json::Value;

use super::super::codec::Inbound;
use super::super::errors::clip;
use super::super::request::Endpoint;

/// Input tokens added to the body's byte count in the worst case.
pub const INPUT_TOKEN_OVERHEAD: u64 = 64;

/// Input tokens counted for each image when the route sets no `mediaInputTokens`: the largest
/// per-image count among the rules providers publish (OpenAI's tile and patch rules stay under
/// 3,000 tokens, Anthropic's resized images under 2,000, Gemini's tiles at 258 each for images
/// it downscales to at most 3072×3072; Qwen2-VL on vLLM allows up to 16,384 visual tokens per
/// image by default).
pub const DEFAULT_IMAGE_TOKENS: u64 = 16_384;

/// `type` values of image parts (OpenAI chat and responses, Anthropic messages).
pub const IMAGE_TYPES: &[&str] = &["image_url", "input_image", "image", "image_file"];

/// `type` values of media parts whose size the request does not bound.
pub const OTHER_MEDIA_TYPES: &[&str] = &[
    "input_audio",
    "audio",
    "audio_url",
    "input_video",
    "video",
    "video_url",
    "file",
    "input_file",
    "document",
    "container_upload",
];

/// Keys of Gemini-style media members (objects without a `type`).
const GEMINI_MEDIA_KEYS: &[&str] = &["inlineData", "inline_data", "fileData", "file_data"];

/// Top-level fields of the OpenAI surfaces that carry content parts.
const CONTENT_FIELDS: &[&str] = &["messages", "input", "prompt", "contents", "system"];

/// Media parts of one request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Media {
    /// Image parts.
    pub(crate) images: u64,
    /// Other media parts.
    pub(crate) others: u64,
    /// The `type` (or Gemini key) of the first other part, for the error message.
    pub(crate) first_other: Option<String>,
}

impl Media {
    /// The input tokens these parts add, or why they cannot be bounded.
    pub(crate) fn tokens(&self, per_part: Option<u32>) -> Result<u64, String> {
        match per_part {
            Some(n) => Ok(self.images.saturating_add(self.others).saturating_mul(u64::from(n))),
            None if self.others > 0 => Err(format!(
                "The request has {} media part(s) such as `{}` whose token count its bytes do not bound; \
                 a budget that must never be exceeded cannot admit it. Set the route's \
                 spec.mediaInputTokens to the most tokens one media part may bill.",
                self.others,
                self.first_other.as_deref().unwrap_or("file"),
            )),
            None => Ok(self.images.saturating_mul(DEFAULT_IMAGE_TOKENS)),
        }
    }
}

/// What bounds one request's cost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CostBound {
    /// Request body bytes.
    pub(crate) body_bytes: usize,
    /// Output tokens per choice (`None`: the request states no bound).
    pub(crate) output: Option<u64>,
    /// Choices generated (at least 1).
    pub(crate) choices: u64,
    /// A cost field that is neither a non-negative integer nor `null`: its message.
    pub(crate) unreadable: Option<String>,
}

/// A count field: absent or `null` is `Ok(None)`.
fn count(inbound: &Inbound, key: &str) -> Result<Option<u64>, String> {
    let bad = |shown: &str| {
        Err(format!(
            "`{key}` must be a non-negative integer or null (got {shown}): the gateway bounds the request's cost by it."
        ))
    };
    match inbound {
        Inbound::OpenAI(c) => match c.raw(key) {
            None | Some("null") => Ok(None),
            Some(raw) => match c.u64_field(key) {
                Some(n) => Ok(Some(n)),
                None => bad(&clip(raw, 40)),
            },
        },
        Inbound::Messages(m) => match m.value.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) => Ok(Some(n)),
                None => bad(&clip(&v.to_string(), 40)),
            },
        },
    }
}

/// The output-bound fields of a surface.
pub(crate) fn output_fields(endpoint: Endpoint) -> &'static [&'static str] {
    match endpoint {
        Endpoint::ChatCompletions => &["max_completion_tokens", "max_tokens"],
        Endpoint::Completions | Endpoint::Messages => &["max_tokens"],
        Endpoint::Responses => &["max_output_tokens"],
        Endpoint::Embeddings => &[],
    }
}

impl CostBound {
    /// Reads the bound of `inbound` on `endpoint` (`body_bytes`: the request body's size).
    pub(crate) fn read(endpoint: Endpoint, inbound: &Inbound, body_bytes: usize) -> CostBound {
        let mut unreadable = None;
        let mut field = |k: &str| match count(inbound, k) {
            Ok(v) => v,
            Err(msg) => {
                unreadable.get_or_insert(msg);
                None
            }
        };
        let output = if endpoint == Endpoint::Embeddings {
            Some(0)
        } else {
            output_fields(endpoint).iter().filter_map(|k| field(k)).max()
        };
        let choices = match inbound {
            Inbound::OpenAI(_) => {
                let n = field("n").unwrap_or(1);
                let best_of = if endpoint == Endpoint::Completions { field("best_of").unwrap_or(1) } else { 1 };
                n.max(best_of).max(1)
            }
            Inbound::Messages(_) => 1,
        };
        CostBound { body_bytes, output, choices, unreadable }
    }

    /// Input tokens bounded by the body's bytes (media not included).
    pub(crate) fn text_input(&self) -> u64 {
        (self.body_bytes as u64).saturating_add(INPUT_TOKEN_OVERHEAD)
    }
}

/// The media parts of `inbound` (read only where a bound is needed).
pub(crate) fn media(inbound: &Inbound) -> Media {
    let mut m = Media::default();
    match inbound {
        Inbound::Messages(r) => walk(&r.value, &mut m),
        Inbound::OpenAI(c) => {
            for k in CONTENT_FIELDS {
                let Some(raw) = c.raw(k) else { continue };
                // Most requests carry no media: skip the parse when no part's name occurs.
                if !might_hold_media(raw.as_bytes()) {
                    continue;
                }
                if let Ok(v) = serde_json::from_str::<Value>(raw) {
                    walk(&v, &mut m);
                }
            }
        }
    }
    m
}

fn might_hold_media(raw: &[u8]) -> bool {
    ["image", "audio", "video", "file", "document", "container_upload", "inlineData", "fileData"]
        .iter()
        .any(|n| memchr::memmem::find(raw, n.as_bytes()).is_some())
}

fn walk(v: &Value, m: &mut Media) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| walk(i, m)),
        Value::Object(o) => {
            if let Some(Value::String(t)) = o.get("type") {
                if IMAGE_TYPES.contains(&t.as_str()) {
                    m.images = m.images.saturating_add(1);
                    return;
                }
                if OTHER_MEDIA_TYPES.contains(&t.as_str()) {
                    m.others = m.others.saturating_add(1);
                    m.first_other.get_or_insert_with(|| t.clone());
                    return;
                }
            } else if let Some(k) = GEMINI_MEDIA_KEYS.iter().find(|k| o.contains_key(**k)) {
                m.others = m.others.saturating_add(1);
                m.first_other.get_or_insert_with(|| (*k).to_string());
                return;
            }
            o.values().for_each(|x| walk(x, m));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::request::ClientRequest;
    use serde_json::json;

    fn openai(v: Value) -> Inbound {
        Inbound::OpenAI(ClientRequest::parse(serde_json::to_vec(&v).unwrap()).unwrap())
    }

    fn bound(endpoint: Endpoint, v: Value) -> CostBound {
        CostBound::read(endpoint, &openai(v), 100)
    }

    #[test]
    fn the_output_bound_is_the_largest_field_an_upstream_may_honour() {
        let b =
            bound(Endpoint::ChatCompletions, json!({"model": "m", "max_tokens": 10, "max_completion_tokens": 100000}));
        assert_eq!(b.output, Some(100_000));
        let b = bound(Endpoint::ChatCompletions, json!({"model": "m", "max_tokens": 5000, "max_completion_tokens": 7}));
        assert_eq!(b.output, Some(5000));
        assert_eq!(bound(Endpoint::ChatCompletions, json!({"model": "m"})).output, None);
        assert_eq!(
            bound(Endpoint::Responses, json!({"model": "m", "max_output_tokens": 9, "max_tokens": 99})).output,
            Some(9)
        );
        assert_eq!(bound(Endpoint::Embeddings, json!({"model": "m", "max_tokens": 99})).output, Some(0));
    }

    #[test]
    fn choices_count_n_and_best_of_and_refuse_what_is_not_an_integer() {
        assert_eq!(bound(Endpoint::ChatCompletions, json!({"model": "m", "n": 4})).choices, 4);
        assert_eq!(bound(Endpoint::Completions, json!({"model": "m", "n": 2, "best_of": 5})).choices, 5);
        // best_of means nothing on chat completions.
        assert_eq!(bound(Endpoint::ChatCompletions, json!({"model": "m", "best_of": 5})).choices, 1);
        assert_eq!(bound(Endpoint::ChatCompletions, json!({"model": "m", "n": null})).choices, 1);
        assert_eq!(bound(Endpoint::ChatCompletions, json!({"model": "m", "n": 0})).choices, 1);
        for bad in [json!("50"), json!(2.0), json!(-1), json!([3]), json!(true)] {
            let b = bound(Endpoint::ChatCompletions, json!({"model": "m", "n": bad}));
            let msg = b.unreadable.unwrap_or_else(|| panic!("{bad} was read"));
            assert!(msg.starts_with("`n` must be a non-negative integer or null"), "{msg}");
        }
        let b = bound(
            Endpoint::ChatCompletions,
            json!({"model": "m", "max_tokens": "100000", "max_completion_tokens": 10}),
        );
        assert!(b.unreadable.unwrap().starts_with("`max_tokens` must be"));
        assert_eq!(b.output, Some(10));
    }

    #[test]
    fn media_parts_are_counted_wherever_they_are() {
        let req = openai(json!({"model": "m", "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "what is in these?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "file", "file": {"file_id": "file-abc", "file_data": "x"}},
                {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
            ]}
        ]}));
        let m = media(&req);
        assert_eq!((m.images, m.others, m.first_other.as_deref()), (2, 2, Some("file")));
        assert_eq!(m.tokens(Some(1000)), Ok(4000));
        let err = m.tokens(None).unwrap_err();
        assert!(err.contains("2 media part(s) such as `file`") && err.contains("spec.mediaInputTokens"), "{err}");

        let images_only = openai(json!({"model": "m", "input": [{"role": "user", "content": [
            {"type": "input_image", "image_url": "https://example.com/a.png"},
            {"type": "input_text", "text": "an image_url in text is not a part"}
        ]}]}));
        let m = media(&images_only);
        assert_eq!((m.images, m.others), (1, 0));
        assert_eq!(m.tokens(None), Ok(16_384));

        let text = openai(json!({"model": "m", "messages": [{"role": "user", "content": "describe the file"}]}));
        assert_eq!(media(&text), Media::default());

        let gemini_style =
            openai(json!({"model": "m", "contents": [{"parts": [{"fileData": {"fileUri": "gs://b/v.mp4"}}]}]}));
        assert_eq!(media(&gemini_style).first_other.as_deref(), Some("fileData"));
    }
}
