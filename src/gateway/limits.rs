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
//! - **Retry-After.** A backend that answered 429 with `Retry-After` (delta-seconds or an
//!   HTTP-date) is skipped by this gateway until then (capped at [`MAX_PAUSE`]; a past date or
//!   `0` pauses nothing). Pauses live per gateway process, keyed by route + backend name, so a
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
/// Most tokens one answer may bill (all kinds together).
pub const MAX_TOKENS_PER_ANSWER: u64 = 1_000_000_000;
/// Largest piece of a whole answer handed to the client connection at once (HTTP/2's default
/// initial window).
pub const HAND_OVER_BYTES: usize = 64 * 1024;

/// What the gateway shares across requests.
pub(crate) struct Shared {
    budget: Arc<Semaphore>,
    pub(crate) budget_bytes: usize,
    pauses: Mutex<HashMap<(String, String), Instant>>,
}

impl Shared {
    pub(crate) fn new(opts: &GatewayOptions) -> Self {
        let budget_bytes = opts.max_buffered_bytes.min(Semaphore::MAX_PERMITS);
        Self { budget: Arc::new(Semaphore::new(budget_bytes)), budget_bytes, pauses: Mutex::new(HashMap::new()) }
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

    /// Skips `route`/`backend` until `until`.
    pub(crate) fn pause(&self, route: &str, backend: &str, until: Instant) {
        let mut map = self.pauses.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        map.retain(|_, t| *t > now);
        let slot = map.entry((route.to_string(), backend.to_string())).or_insert(until);
        *slot = (*slot).max(until);
    }

    /// Until when `route`/`backend` is to be skipped, if it is now.
    pub(crate) fn paused_until(&self, route: &str, backend: &str) -> Option<Instant> {
        let map = self.pauses.lock().unwrap_or_else(PoisonError::into_inner);
        if map.is_empty() {
            return None;
        }
        map.get(&(route.to_string(), backend.to_string())).copied().filter(|t| *t > Instant::now())
    }
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
