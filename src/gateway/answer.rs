//! Reading and passing on bodies: the client's request body (size limit, stall timeout),
//! upstream bodies read whole (size limit, deadline, the shared memory budget), upstream error
//! messages and passed-through headers (scrubbed of API keys), and metering an answer's usage
//! (plausibility check, estimate when it cannot be read).

use std::io;
use std::time::Duration;

use axum::body::Body;
use axum::body::HttpBody as _;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Version, header};
use axum::response::Response;
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::time::Instant;

use super::CompiledBackend;
use super::codec::Surface;
use super::errors::{ApiError, clip};
use super::limits;
use super::redact::Redactor;
use super::request::Endpoint;
use super::stream::BodyStream;
use crate::pricing::{TokenCounts, UsageError};

/// Upstream response headers passed on to the client.
const PASSED_HEADERS: [HeaderName; 3] = [
    HeaderName::from_static("x-request-id"),
    HeaderName::from_static("request-id"),
    HeaderName::from_static("openai-processing-ms"),
];
/// Most bytes of an over-limit HTTP/2 request body read and thrown away before the 413 (a
/// multiple of the limit, at least 1 MiB).
const DISCARD_FACTOR: usize = 4;
/// Longest time spent throwing away an over-limit HTTP/2 request body.
const DISCARD_TIME: Duration = Duration::from_secs(10);

/// The 413 answer. Over HTTP/1.1 the connection is closed (the rest of the body is never
/// read). Over HTTP/2 the rest of the body is first read and thrown away (at most
/// [`DISCARD_FACTOR`] × the limit, for at most [`DISCARD_TIME`]): answering while the client is
/// still uploading ends the stream with a reset, and some clients (curl) then show the reset
/// instead of the 413.
async fn too_large(
    body: &mut Body,
    version: Version,
    limit: usize,
    stall: Duration,
    declared: Option<u64>,
    surface: Surface,
) -> Response {
    if version == Version::HTTP_2 {
        let max = limit.saturating_mul(DISCARD_FACTOR).max(1 << 20);
        if declared.is_none_or(|n| n <= max as u64) {
            let discard = async {
                let mut seen = 0usize;
                while let Ok(Some(Ok(frame))) = tokio::time::timeout(stall, body.frame()).await {
                    seen = seen.saturating_add(frame.data_ref().map_or(0, Bytes::len));
                    if seen > max {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(DISCARD_TIME, discard).await;
        }
        return surface.render(ApiError::payload_too_large(limit));
    }
    let mut resp = surface.render(ApiError::payload_too_large(limit));
    resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Reads the body up to the limit (larger: 413, see [`too_large`]); a silence longer than
/// `stall` between two pieces of it is a 408 (with `Connection: close`, so the rest of the body
/// is never read).
pub(crate) async fn read_body(
    mut body: Body,
    headers: &HeaderMap,
    version: Version,
    limit: usize,
    stall: Duration,
    surface: Surface,
) -> Result<Bytes, Response> {
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large(&mut body, version, limit, stall, declared, surface).await);
    }
    let mut out = Vec::with_capacity(declared.map_or(0, |n| n as usize));
    loop {
        // A piece already received is taken without arming a timer (a small body arrives
        // with its headers); the stall timer only guards an actual wait.
        let next = match body.frame().now_or_never() {
            Some(next) => Ok(next),
            None => tokio::time::timeout(stall, body.frame()).await,
        };
        match next {
            Err(_) => {
                let mut resp = surface.render(ApiError::request_timeout(stall));
                resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                return Err(resp);
            }
            Ok(None) => return Ok(Bytes::from(out)),
            Ok(Some(Err(e))) => {
                return Err(surface.render(ApiError::bad_request(
                    "body_read_error",
                    format!("Could not read the request body: {e}"),
                )));
            }
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if out.len() + data.len() > limit {
                        drop(out);
                        return Err(too_large(&mut body, version, limit, stall, declared, surface).await);
                    }
                    out.extend_from_slice(&data);
                }
                // The declared length is all here: no poll for the end.
                if body.is_end_stream() {
                    return Ok(Bytes::from(out));
                }
            }
        }
    }
}

pub(crate) enum ReadError {
    Timeout,
    TooLarge,
    OverBudget,
    Broken(String),
}

/// Reads a body whole, until `deadline`, at most `limit` bytes; with `budget`, every byte held
/// is taken from the shared memory budget first (into `held`). What has already arrived is
/// taken without a timer (a small answer comes with its headers); one timer then guards the
/// rest of the body, not one per chunk.
pub(crate) async fn read_all(
    body: &mut BodyStream,
    limit: usize,
    deadline: Instant,
    mut budget: Option<(&limits::Shared, &mut Option<tokio::sync::OwnedSemaphorePermit>)>,
) -> Result<Vec<u8>, ReadError> {
    let mut out = Vec::new();
    let mut take = |out: &mut Vec<u8>, chunk: Result<Bytes, io::Error>| -> Result<(), ReadError> {
        let chunk = chunk.map_err(|e| ReadError::Broken(e.to_string()))?;
        if out.len() + chunk.len() > limit {
            return Err(ReadError::TooLarge);
        }
        if let Some((shared, held)) = budget.as_mut()
            && !shared.take_bytes(held, chunk.len())
        {
            return Err(ReadError::OverBudget);
        }
        if out.is_empty() && chunk.len() < limit {
            out.reserve(chunk.len());
        }
        out.extend_from_slice(&chunk);
        Ok(())
    };
    loop {
        match body.next().now_or_never() {
            Some(Some(chunk)) => take(&mut out, chunk)?,
            Some(None) => return Ok(out),
            None => break,
        }
    }
    let rest = async {
        while let Some(chunk) = body.next().await {
            take(&mut out, chunk)?;
        }
        Ok(())
    };
    tokio::time::timeout_at(deadline, rest).await.unwrap_or(Err(ReadError::Timeout))?;
    Ok(out)
}

/// The message of an upstream error body, scrubbed of the API keys.
pub(crate) fn error_message(body: &[u8], redactor: &Redactor) -> String {
    let body = redactor.redact(body);
    let body = &body[..];
    let text = match serde_json::from_slice::<Value>(body) {
        Ok(v) => v
            .pointer("/error/message")
            .or_else(|| v.get("message"))
            .or_else(|| v.get("error"))
            .map(|m| m.as_str().map(str::to_string).unwrap_or_else(|| m.to_string()))
            .unwrap_or_else(|| "(no message)".into()),
        Err(_) => String::from_utf8_lossy(body).trim().to_string(),
    };
    clip(&redactor.redact_str(&text), 300)
}

pub(crate) fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().get(..17).is_some_and(|p| p.eq_ignore_ascii_case("text/event-stream")))
}

/// Copies the passed-through upstream headers (the first value of each, found by
/// [`super::first_values`]), scrubbed of the API keys.
pub(crate) fn pass_headers(from: &HeaderMap, to: &mut HeaderMap, redactor: &Redactor) {
    for (name, v) in PASSED_HEADERS.iter().zip(super::first_values(from, PASSED_HEADERS.each_ref())) {
        let Some(v) = v else { continue };
        if redactor.is_empty() {
            to.insert(name.clone(), v.clone());
            continue;
        }
        let scrubbed = redactor.redact(v.as_bytes());
        if let Ok(v) = HeaderValue::from_bytes(&scrubbed) {
            to.insert(name.clone(), v);
        }
    }
}

/// Meters what a successful answer's usage said. Without usable usage (or with implausible
/// usage), counts `usage_missing{reason}` and meters an estimate (request size, data events).
pub(crate) fn bill(
    b: &CompiledBackend,
    endpoint: Endpoint,
    usage: Result<TokenCounts, UsageError>,
    reason_if_missing: Option<&str>,
    request_bytes: usize,
    data_events: u64,
) {
    let usage = usage.and_then(limits::plausible);
    let (reason, why) = match usage {
        Ok(t) => {
            let cost = t.cost(&b.cfg.pricing);
            match b.cell.record_usage(&t, cost) {
                Ok(()) => {
                    b.gen_ai.usage(endpoint, &t, cost);
                    super::admission::settle_current(Some(cost));
                    return;
                }
                Err(why) => ("counter_overflow", why),
            }
        }
        Err(e) => (reason_if_missing.unwrap_or(e.metric_label()), e.to_string()),
    };
    let est = limits::estimate(request_bytes, data_events);
    tracing::warn!(route = %b.labels.route, backend = %b.cfg.name, reason, error = %why, estimated_input = est.input, estimated_output = est.output, "answer without usable usage: metered as an estimate");
    b.cell.record_usage_missing(reason);
    b.cell.record_estimate(est.cost(&b.cfg.pricing));
    // Hard budgets: the cost is unknown, so the whole reservation counts.
    super::admission::settle_current(None);
}
