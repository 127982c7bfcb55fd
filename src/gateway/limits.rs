//! Bounds the data plane keeps across requests, and the plausibility rules of metering.
//!
//! - **Memory budget of whole answers.** A non-stream upstream answer is read whole (to find its
//!   usage) before the client gets it; the bytes held that way, all requests together, are
//!   bounded by `max_buffered_bytes` (a byte semaphore: a chunk that does not fit is refused at
//!   once, never waited for, and the client gets a 503 `gateway_overloaded`, an outcome of the
//!   gateway, not of the backend). The answer is handed to the client connection in pieces of
//!   at most [`HAND_OVER_BYTES`] as the connection takes them (over HTTP/2, only as the
//!   client's flow-control window allows), and its bytes stay counted until the last piece
//!   has been taken or the answer is dropped: a client that stops taking it keeps at most one
//!   piece beyond the budget in the connection's buffers, until the idle rule of
//!   [`super::serve`] cuts it and the budget is freed.
//! - **Retry-After.** A pause is scoped to what the 429 was about ([`rate_limit_pause`]). A 429
//!   about this request's own size ([`own_size`]: the provider says the request alone is above
//!   a limit) pauses nothing: the request fails over, and other requests still reach the
//!   backend. Any other 429 with `Retry-After` (delta-seconds or an HTTP-date; a past date or
//!   `0` asks nothing) makes this gateway skip the backend for the time asked, but at most
//!   `max_rate_limit_pause` ([`DEFAULT_MAX_RATE_LIMIT_PAUSE`]; `0`: never skipped): one 429
//!   with an hour-long `Retry-After` cannot keep every client off a backend for an hour; after
//!   the ceiling requests reach it again, and a new 429 pauses it again. While it is skipped,
//!   the clients answered 429 for it are told the `Retry-After` the provider asked for (capped
//!   at [`MAX_PAUSE`]). Pauses live per gateway process, keyed by route + backend name, so a
//!   config reload keeps them.
//! - **Plausible usage.** One answer may bill at most [`MAX_TOKENS_PER_ANSWER`] tokens, all
//!   kinds together; more is refused as malformed usage (never saturated into a counter).
//! - **Estimates.** When the usage of an answer the provider bills cannot be read (client gone
//!   before the usage chunk and the drain bound reached, an event over the size limit, a
//!   shutdown cut, an answer over the memory budget, absurd usage), the gateway meters an
//!   *estimate* in a separate series: input = request body bytes / 4 (rounded up; a JSON body
//!   carries at least ~4 bytes per token, so this leans high), output = data events received
//!   (each carries at least one token), both capped like real usage.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use axum::http::{HeaderMap, header};
use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::GatewayOptions;
use crate::pricing::{TokenCounts, TokenKind, UsageError};

/// Default largest server-sent event of an upstream stream, bytes.
pub const DEFAULT_MAX_SSE_EVENT_BYTES: usize = 4 * 1024 * 1024;
/// Default bytes of whole upstream answers held at once, all requests together.
pub const DEFAULT_MAX_BUFFERED_BYTES: usize = 256 * 1024 * 1024;
/// Longest pause a `Retry-After` can ask for.
pub const MAX_PAUSE: Duration = Duration::from_secs(3600);
/// Default longest time one 429 makes the gateway skip a backend, whatever its `Retry-After`.
pub const DEFAULT_MAX_RATE_LIMIT_PAUSE: Duration = Duration::from_secs(60);
/// Most tokens one answer may bill (all kinds together).
pub const MAX_TOKENS_PER_ANSWER: u64 = 1_000_000_000;
/// Largest piece of a whole answer handed to the client connection at once (HTTP/2's default
/// initial window).
pub const HAND_OVER_BYTES: usize = 64 * 1024;

/// What the gateway shares across requests.
pub(crate) struct Shared {
    budget: Arc<Semaphore>,
    pub(crate) budget_bytes: usize,
    pauses: Mutex<HashMap<(String, String), Pause>>,
    /// Longest time one 429 makes the gateway skip a backend.
    max_pause: Duration,
}

/// One backend's pause.
#[derive(Clone, Copy)]
struct Pause {
    /// Until when the backend is skipped.
    skip_until: Instant,
    /// Until when the provider asked to be left alone (what clients are told).
    asked_until: Instant,
}

impl Shared {
    pub(crate) fn new(opts: &GatewayOptions) -> Self {
        let budget_bytes = opts.max_buffered_bytes.min(Semaphore::MAX_PERMITS);
        Self {
            budget: Arc::new(Semaphore::new(budget_bytes)),
            budget_bytes,
            pauses: Mutex::new(HashMap::new()),
            max_pause: opts.max_rate_limit_pause.min(MAX_PAUSE),
        }
    }

    /// Takes `n` more bytes of the budget into `held` (`false`: over the budget, nothing taken).
    pub(crate) fn take_bytes(&self, held: &mut Option<OwnedSemaphorePermit>, n: usize) -> bool {
        if n == 0 {
            return true;
        }
        let Ok(n32) = u32::try_from(n) else {
            return false;
        };
        match self.budget.clone().try_acquire_many_owned(n32) {
            Ok(p) => {
                match held {
                    Some(h) => h.merge(p),
                    None => *held = Some(p),
                }
                true
            }
            Err(_) => false,
        }
    }

    /// Bytes of the budget free now.
    #[cfg(test)]
    pub(crate) fn free_bytes(&self) -> usize {
        self.budget.available_permits()
    }

    /// Applies what a 429 of `route`/`backend` asks ([`rate_limit_pause`]); returns it.
    pub(crate) fn after_429(
        &self,
        route: &str,
        backend: &str,
        headers: &HeaderMap,
        body: &[u8],
        output_bound: Option<u64>,
    ) -> RateLimitPause {
        let decision = rate_limit_pause(headers, body, output_bound, SystemTime::now(), self.max_pause);
        if let RateLimitPause::Backend { skip, asked } = decision {
            let now = Instant::now();
            self.pause(route, backend, now + skip, now + asked);
        }
        decision
    }

    /// Skips `route`/`backend` until `skip_until`; clients are told `asked_until`.
    fn pause(&self, route: &str, backend: &str, skip_until: Instant, asked_until: Instant) {
        let mut map = self.pauses.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        map.retain(|_, p| p.skip_until > now);
        let slot = map.entry((route.to_string(), backend.to_string())).or_insert(Pause { skip_until, asked_until });
        slot.skip_until = slot.skip_until.max(skip_until);
        slot.asked_until = slot.asked_until.max(asked_until);
    }

    /// While `route`/`backend` is skipped: until when its provider asked to be left alone (the
    /// `Retry-After` its clients are told, which may be later than the skip ends).
    pub(crate) fn paused_until(&self, route: &str, backend: &str) -> Option<Instant> {
        let map = self.pauses.lock().unwrap_or_else(PoisonError::into_inner);
        if map.is_empty() {
            return None;
        }
        let p = map.get(&(route.to_string(), backend.to_string()))?;
        (p.skip_until > Instant::now()).then_some(p.asked_until)
    }
}

/// What a 429 asks of this gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RateLimitPause {
    /// No usable `Retry-After` (or a ceiling of 0): nothing is paused.
    Nothing,
    /// About this request's own size (why): nothing is paused.
    ThisRequest(String),
    /// The backend is skipped for `skip` (the time asked, at most the ceiling); its clients are
    /// told `asked`.
    Backend { skip: Duration, asked: Duration },
}

/// The rule of the module docs: `headers` and `body` of a 429, the request's own output bound
/// as sent (`max_tokens` and its kin; `None`: unbounded or unknown), the wall clock `now` (for
/// an HTTP-date) and the ceiling of a pause.
pub(crate) fn rate_limit_pause(
    headers: &HeaderMap,
    body: &[u8],
    output_bound: Option<u64>,
    now: SystemTime,
    ceiling: Duration,
) -> RateLimitPause {
    if let Some(why) = own_size(headers, body, output_bound) {
        return RateLimitPause::ThisRequest(why);
    }
    let asked = headers.get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(|v| parse_retry_after(v, now));
    match asked {
        Some(asked) if !ceiling.is_zero() => RateLimitPause::Backend { skip: asked.min(ceiling), asked },
        _ => RateLimitPause::Nothing,
    }
}

/// Token limits a provider reports on its answers, each of which the request's own output
/// bound counts against when it is admitted (OpenAI counts `max_tokens` toward its tokens per
/// minute, Anthropic toward its output tokens per minute): a bound above one can never fit.
const TOKEN_LIMIT_HEADERS: [&str; 3] =
    ["x-ratelimit-limit-tokens", "anthropic-ratelimit-output-tokens-limit", "anthropic-ratelimit-tokens-limit"];

/// Why a 429 is about this request's own size, if the provider says so:
/// - its message says the request is too large (OpenAI's `Request too large for …`), or names
///   a `Limit N, Requested M` with M above N;
/// - a token limit it reports ([`TOKEN_LIMIT_HEADERS`]) is below the request's own output
///   bound;
/// - its message names Anthropic's input or output tokens-per-minute limit, and that bucket's
///   `-remaining` header shows it full (`remaining >= limit`): the request alone did not fit.
pub(crate) fn own_size(headers: &HeaderMap, body: &[u8], output_bound: Option<u64>) -> Option<String> {
    let message = error_text(body).to_ascii_lowercase();
    if message.contains("request too large") {
        return Some("the provider says the request is too large for its rate limit".into());
    }
    if let Some((limit, requested)) = limit_and_requested(&message)
        && requested > limit
    {
        return Some(format!("the request needs {requested} tokens, above the provider's limit of {limit}"));
    }
    let number =
        |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(bound) = output_bound {
        for name in TOKEN_LIMIT_HEADERS {
            if let Some(limit) = number(name)
                && limit < bound
            {
                return Some(format!(
                    "the request's output bound of {bound} tokens is above the provider's `{name}` of {limit}"
                ));
            }
        }
    }
    for kind in ["input", "output"] {
        if message.contains(&format!("{kind} tokens per minute"))
            && let Some(limit) = number(&format!("anthropic-ratelimit-{kind}-tokens-limit"))
            && let Some(remaining) = number(&format!("anthropic-ratelimit-{kind}-tokens-remaining"))
            && remaining >= limit
        {
            return Some(format!(
                "the provider's {kind} tokens-per-minute limit of {limit} refused the request with that bucket full"
            ));
        }
    }
    None
}

/// The message of an error body (`error.message`, `message`, or the text itself).
fn error_text(body: &[u8]) -> String {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => v
            .pointer("/error/message")
            .or_else(|| v.get("message"))
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_string(),
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    }
}

/// OpenAI's `Limit N, Requested M` (lower case; digits may be grouped with commas).
fn limit_and_requested(message: &str) -> Option<(u64, u64)> {
    let number_after = |text: &str, word: &str| -> Option<(u64, usize)> {
        let at = text.find(word)? + word.len();
        let digits: String =
            text[at..].chars().take_while(|c| c.is_ascii_digit() || *c == ',').filter(char::is_ascii_digit).collect();
        Some((digits.parse().ok()?, at))
    };
    let (limit, at) = number_after(message, "limit ")?;
    let (requested, _) = number_after(&message[at..], "requested ")?;
    Some((limit, requested))
}

/// The pause a `Retry-After` value asks for (delta-seconds or an HTTP-date), capped at
/// [`MAX_PAUSE`]; `None` when unparseable or not in the future.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    let wait = if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        Duration::from_secs(v.parse::<u64>().unwrap_or(u64::MAX))
    } else {
        let at = jiff::fmt::rfc2822::parse(v).ok()?.timestamp();
        let at = SystemTime::from(at);
        at.duration_since(now).ok()?
    };
    if wait.is_zero() { None } else { Some(wait.min(MAX_PAUSE)) }
}

/// Whole seconds for a `Retry-After` header (rounded up, at least 1).
pub(crate) fn retry_after_secs(until: Instant) -> u64 {
    let d = until.saturating_duration_since(Instant::now());
    (d.as_millis().div_ceil(1000)).clamp(1, MAX_PAUSE.as_secs().into()) as u64
}

/// Refuses usage no single answer can have.
pub(crate) fn plausible(t: TokenCounts) -> Result<TokenCounts, UsageError> {
    let total: u128 = TokenKind::ALL.iter().map(|k| u128::from(t.get(*k))).sum();
    if total > u128::from(MAX_TOKENS_PER_ANSWER) {
        return Err(UsageError::Malformed {
            field: "usage".into(),
            why: format!("{total} tokens in one answer is above the plausible maximum of {MAX_TOKENS_PER_ANSWER}"),
        });
    }
    Ok(t)
}

/// The estimate metered when an answer's usage cannot be read (see the module docs).
pub(crate) fn estimate(request_bytes: usize, data_events: u64) -> TokenCounts {
    let input = u64::try_from(request_bytes.div_ceil(4)).unwrap_or(u64::MAX).min(MAX_TOKENS_PER_ANSWER);
    TokenCounts { input, output: data_events.min(MAX_TOKENS_PER_ANSWER), ..TokenCounts::default() }
}

/// A whole answer handed to the client in pieces of at most [`HAND_OVER_BYTES`], keeping its
/// share of the memory budget until the connection has taken the last one.
pub(crate) struct HeldBody {
    bytes: Option<Bytes>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl HeldBody {
    pub(crate) fn new(bytes: Bytes, permit: Option<OwnedSemaphorePermit>) -> Self {
        Self { bytes: Some(bytes), _permit: permit }
    }
}

impl hyper::body::Body for HeldBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let piece = match self.bytes.as_mut() {
            Some(b) if b.len() > HAND_OVER_BYTES => Some(b.split_to(HAND_OVER_BYTES)),
            _ => self.bytes.take(),
        };
        Poll::Ready(piece.map(|b| Ok(hyper::body::Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.bytes.is_none()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.bytes.as_ref().map_or(0, |b| b.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 999999 ", now), Some(MAX_PAUSE));
        assert_eq!(parse_retry_after("0", now), None);
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:50:37 GMT", now), Some(Duration::from_secs(60)));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:40:00 GMT", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    const TOO_LARGE: &str = r#"{"error":{"message":"Request too large for gpt-4o in organization org-x on tokens per min (TPM): Limit 30000, Requested 49213. The input or output tokens must be reduced in order to run successfully.","type":"tokens","param":null,"code":"rate_limit_exceeded"}}"#;
    const REACHED: &str = r#"{"error":{"message":"Rate limit reached for gpt-4o in organization org-x on tokens per min (TPM): Limit 30000, Used 29000, Requested 2000. Please try again in 2s.","type":"tokens","code":"rate_limit_exceeded"}}"#;
    const ANTHROPIC_ITPM: &str = r#"{"type":"error","error":{"type":"rate_limit_error","message":"This request would exceed the rate limit for your organization (0dcc) of 20,000 input tokens per minute. Please reduce the prompt length or the maximum tokens requested, or try again later."}}"#;

    #[test]
    fn a_429_about_the_request_itself_is_told_apart() {
        let none = HeaderMap::new();
        assert!(own_size(&none, TOO_LARGE.as_bytes(), None).is_some());
        // The wording alone, or the numbers alone, are each enough.
        assert!(own_size(&none, br#"{"error":{"message":"Request too large."}}"#, None).is_some());
        let numbers = br#"{"error":{"message":"Tokens per min: Limit 1,000, Requested 1,001."}}"#;
        assert!(own_size(&none, numbers, None).unwrap().contains("1001 tokens, above the provider's limit of 1000"));
        assert_eq!(own_size(&none, REACHED.as_bytes(), Some(100)), None, "a shared limit, not this request's");
        assert_eq!(own_size(&none, b"<html>slow down</html>", Some(100)), None);

        // A reported token limit below the request's own output bound.
        let h = headers(&[("x-ratelimit-limit-tokens", "4000")]);
        assert!(own_size(&h, REACHED.as_bytes(), Some(4001)).is_some());
        assert_eq!(own_size(&h, REACHED.as_bytes(), Some(4000)), None);
        assert_eq!(own_size(&h, REACHED.as_bytes(), None), None);
        let h = headers(&[("anthropic-ratelimit-output-tokens-limit", "8000")]);
        assert!(own_size(&h, ANTHROPIC_ITPM.as_bytes(), Some(16_000)).is_some());

        // Anthropic: the bucket its message names was full, and still refused the request.
        let full = headers(&[
            ("anthropic-ratelimit-input-tokens-limit", "20000"),
            ("anthropic-ratelimit-input-tokens-remaining", "20000"),
        ]);
        assert!(own_size(&full, ANTHROPIC_ITPM.as_bytes(), None).is_some());
        let used = headers(&[
            ("anthropic-ratelimit-input-tokens-limit", "20000"),
            ("anthropic-ratelimit-input-tokens-remaining", "3000"),
        ]);
        assert_eq!(own_size(&used, ANTHROPIC_ITPM.as_bytes(), None), None);
        let rpm = br#"{"type":"error","error":{"type":"rate_limit_error","message":"This request would exceed the rate limit for your organization of 50 requests per minute."}}"#;
        assert_eq!(own_size(&full, rpm, None), None, "the full bucket is not the one that refused");
    }

    #[test]
    fn pauses_are_capped_and_skip_nothing_for_the_request_itself() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        let ceiling = Duration::from_secs(60);
        let hour = headers(&[("retry-after", "3600")]);
        assert_eq!(
            rate_limit_pause(&hour, REACHED.as_bytes(), None, now, ceiling),
            RateLimitPause::Backend { skip: ceiling, asked: Duration::from_secs(3600) }
        );
        let short = headers(&[("retry-after", "7")]);
        assert_eq!(
            rate_limit_pause(&short, b"", None, now, ceiling),
            RateLimitPause::Backend { skip: Duration::from_secs(7), asked: Duration::from_secs(7) }
        );
        assert!(matches!(
            rate_limit_pause(&hour, TOO_LARGE.as_bytes(), None, now, ceiling),
            RateLimitPause::ThisRequest(_)
        ));
        assert_eq!(rate_limit_pause(&HeaderMap::new(), b"", None, now, ceiling), RateLimitPause::Nothing);
        assert_eq!(rate_limit_pause(&hour, b"", None, now, Duration::ZERO), RateLimitPause::Nothing);
    }

    #[test]
    fn a_skipped_backend_tells_its_clients_what_the_provider_asked() {
        let s = Shared::new(&GatewayOptions::default());
        let now = Instant::now();
        s.pause("r", "b", now + Duration::from_secs(60), now + Duration::from_secs(3600));
        assert_eq!(s.paused_until("r", "b"), Some(now + Duration::from_secs(3600)));
        assert_eq!(s.paused_until("r", "other"), None);
        // The skip is over (ends now): not paused, whatever the provider asked.
        let s = Shared::new(&GatewayOptions::default());
        s.pause("r", "b", Instant::now(), Instant::now() + Duration::from_secs(3600));
        assert_eq!(s.paused_until("r", "b"), None);
        // The default ceiling applies through `after_429`.
        let s = Shared::new(&GatewayOptions::default());
        let got = s.after_429("r", "b", &headers(&[("retry-after", "3600")]), b"", None);
        assert_eq!(got, RateLimitPause::Backend { skip: DEFAULT_MAX_RATE_LIMIT_PAUSE, asked: MAX_PAUSE });
        assert!(s.paused_until("r", "b").is_some());
        let got = s.after_429("r", "c", &headers(&[("retry-after", "3600")]), TOO_LARGE.as_bytes(), None);
        assert!(matches!(got, RateLimitPause::ThisRequest(_)), "{got:?}");
        assert_eq!(s.paused_until("r", "c"), None);
    }

    #[test]
    fn plausibility_and_estimates() {
        let ok = TokenCounts { input: 500_000_000, output: 500_000_000, ..TokenCounts::default() };
        assert!(plausible(ok).is_ok());
        let absurd = TokenCounts { input: (1 << 53) - 1, ..TokenCounts::default() };
        assert!(matches!(plausible(absurd), Err(UsageError::Malformed { .. })));
        let e = estimate(10, 3);
        assert_eq!((e.input, e.output), (3, 3));
    }

    #[test]
    fn a_held_answer_is_handed_over_in_pieces_and_keeps_its_budget_to_the_last() {
        use http_body_util::BodyExt;
        let opts = GatewayOptions { max_buffered_bytes: 200_000, ..GatewayOptions::default() };
        let s = Shared::new(&opts);
        let mut held = None;
        // 150 000 bytes: two whole pieces of 65 536 and the rest, 18 928.
        assert!(s.take_bytes(&mut held, 150_000));
        let answer: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8).collect();
        let mut body = HeldBody::new(Bytes::from(answer.clone()), held);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut got = Vec::new();
        let mut sizes = Vec::new();
        rt.block_on(async {
            while let Some(frame) = body.frame().await {
                let data = frame.unwrap().into_data().unwrap();
                sizes.push(data.len());
                got.extend_from_slice(&data);
                if !hyper::body::Body::is_end_stream(&body) {
                    assert_eq!(s.free_bytes(), 50_000, "released before the last piece was taken");
                }
            }
        });
        assert_eq!(sizes, [65_536, 65_536, 18_928]);
        assert_eq!(got, answer);
        assert_eq!(s.free_bytes(), 50_000, "released while the body is still held");
        drop(body);
        assert_eq!(s.free_bytes(), 200_000);
    }

    #[test]
    fn the_budget_refuses_instead_of_waiting() {
        let opts = GatewayOptions { max_buffered_bytes: 100, ..GatewayOptions::default() };
        let s = Shared::new(&opts);
        let mut a = None;
        assert!(s.take_bytes(&mut a, 60));
        assert!(s.take_bytes(&mut a, 30));
        let mut b = None;
        assert!(!s.take_bytes(&mut b, 20));
        assert_eq!(s.free_bytes(), 10);
        drop(a);
        assert!(s.take_bytes(&mut b, 20));
    }
}
