//! The HTTP surface: the API router (OpenAI endpoints, Anthropic `/v1/messages`, models,
//! health) and the metrics router. Each OpenAI endpoint reads its body (size limit; a body that
//! stalls longer than `body_read_timeout` gets 408 and the connection closes), parses it once
//! ([`ClientRequest`]) and hands it to the shared pipeline ([`pipeline::run`]): route, plan,
//! attempts with failover, answer, metering — the same for every surface and wire format.

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::Gateway;
use super::answer::read_body;
use super::codec::{Inbound, Surface};
use super::errors::ApiError;
use super::metrics::METRICS_CONTENT_TYPE;
use super::pipeline;
use super::request::{ClientRequest, Endpoint};
use super::serve::ShutdownCut;

pub(crate) fn api_router(gw: Gateway) -> Router {
    Router::new()
        .route(
            "/v1/chat/completions",
            post(|State(gw): State<Gateway>, req: Request| proxy(gw, Endpoint::ChatCompletions, req)),
        )
        .route("/v1/completions", post(|State(gw): State<Gateway>, req: Request| proxy(gw, Endpoint::Completions, req)))
        .route("/v1/embeddings", post(|State(gw): State<Gateway>, req: Request| proxy(gw, Endpoint::Embeddings, req)))
        .route("/v1/responses", post(|State(gw): State<Gateway>, req: Request| proxy(gw, Endpoint::Responses, req)))
        .route("/v1/messages", post(|State(gw): State<Gateway>, req: Request| super::messages::handle(gw, req)))
        .route(
            "/v1/messages/count_tokens",
            post(|State(gw): State<Gateway>, req: Request| super::messages::count_tokens(gw, req)),
        )
        .route("/v1/models", get(list_models))
        .route("/v1/models/{*model}", get(get_model))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .fallback(|req: Request| async move { ApiError::unknown_path(req.uri().path()) })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .with_state(gw)
}

pub(crate) fn metrics_router(gw: Gateway) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(gw): State<Gateway>| async move {
                ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], gw.inner.metrics.encode())
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .with_state(gw)
}

async fn readyz(State(gw): State<Gateway>) -> Response {
    match gw.revision() {
        Some(rev) => (StatusCode::OK, format!("ready: serving config {rev}\n")).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "not ready: no valid config loaded yet\n").into_response(),
    }
}

fn model_object(alias: &str) -> Value {
    json!({"id": alias, "object": "model", "created": 0, "owned_by": "tollgate"})
}

async fn list_models(State(gw): State<Gateway>) -> Response {
    let Some(served) = gw.inner.current.load_full() else {
        return ApiError::not_ready().into_response();
    };
    let data: Vec<Value> = served.order.iter().map(|r| model_object(&r.doc.model)).collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

async fn get_model(State(gw): State<Gateway>, Path(model): Path<String>) -> Response {
    let Some(served) = gw.inner.current.load_full() else {
        return ApiError::not_ready().into_response();
    };
    match served.routes.get(&model) {
        Some(r) => axum::Json(model_object(&r.doc.model)).into_response(),
        None => ApiError::model_not_found(&model).into_response(),
    }
}

async fn proxy(gw: Gateway, endpoint: Endpoint, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let surface = Surface::OpenAI(endpoint);
    let opts = &gw.inner.opts;
    let bytes = match read_body(
        body,
        &parts.headers,
        parts.version,
        opts.max_body_bytes,
        opts.body_read_timeout,
        surface,
    )
    .await
    {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let request_bytes = bytes.len();
    let creq = match ClientRequest::parse(Vec::from(bytes)) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let cut = parts.extensions.get::<ShutdownCut>().map(|c| c.0.clone());
    let req =
        pipeline::Request { surface, inbound: Inbound::OpenAI(creq), headers: &parts.headers, request_bytes, cut };
    pipeline::run(&gw, req).await
}
