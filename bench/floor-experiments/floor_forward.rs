//! The floor's request handler: any `POST` path forwarded to the same path of the upstream base
//! URL, the body read whole, the answer streamed back. `examples/floor_proxy.rs` and the
//! compio-hyper experiment include it by `#[path]` (separate Cargo projects), so both run the
//! very same handler; each supplies `super::client()`, its thread's pooled hyper-util client.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Full};

use super::client;

pub async fn forward(State(base): State<&'static str>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(bytes) = body.collect().await.map(|c| c.to_bytes()) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let Ok(uri) = format!("{base}{}", parts.uri.path()).parse::<Uri>() else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let mut up = axum::http::Request::post(uri).body(Full::new(bytes)).unwrap_or_default();
    up.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    match client().request(up).await {
        Ok(resp) => resp.map(Body::new),
        Err(_) => StatusCode::BAD_GATEWAY.into_response(),
    }
}
