//! The HTTP surface: the API router (OpenAI endpoints, Anthropic `/v1/messages`, models,
//! health) and the metrics router. Each OpenAI endpoint reads its body (size limit; a body that
//! stalls longer than `body_read_timeout` gets 408 and the connection closes), parses it once
//! ([`ClientRequest`]) and hands it to the shared pipeline ([`pipeline::run`]): route, plan,
//! attempts with failover, answer, metering — the same for every surface and wire format.
//!
//! [`Api`] is what `tollgate gateway` serves: a `POST` to one of the proxied endpoints
//! ([`Hot`]) goes straight to its handler, everything else through the router. Both ways give
//! the same answer: the router's per-request work skipped (matching the path, the
//! `MatchedPath`, URL-parameter and `OriginalUri` extensions, which no proxied endpoint reads)
//! is replaced by one comparison of the path, and what the router does to every answer (a
//! `Content-Length` when the body's size is known) is left to hyper, which writes it for a body
//! of known size, except an empty one over HTTP/2, which gets it here (bench/instructions.sh).

use axum::Router;
use axum::body::{Body, HttpBody as _};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::future::Either;
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::Gateway;
use super::answer::read_body;
use super::codec::{Inbound, Surface};
use super::errors::ApiError;
use super::metrics::METRICS_CONTENT_TYPE;
use super::pipeline;
use super::request::{ClientRequest, Endpoint};
use super::serve::{App, ShutdownCut};

/// The proxied endpoints (each answers `POST` only), with their paths.
#[derive(Clone, Copy)]
enum Hot {
    OpenAI(Endpoint),
    Messages,
    CountTokens,
}

impl Hot {
    const ALL: [(&'static str, Hot); 6] = [
        ("/v1/chat/completions", Hot::OpenAI(Endpoint::ChatCompletions)),
        ("/v1/completions", Hot::OpenAI(Endpoint::Completions)),
        ("/v1/embeddings", Hot::OpenAI(Endpoint::Embeddings)),
        ("/v1/responses", Hot::OpenAI(Endpoint::Responses)),
        ("/v1/messages", Hot::Messages),
        ("/v1/messages/count_tokens", Hot::CountTokens),
    ];

    /// The endpoint a `method` request to exactly `path` goes to (as the router matches it:
    /// the raw path, no trailing `/`).
    fn of(method: &Method, path: &str) -> Option<Hot> {
        if method != Method::POST {
            return None;
        }
        Hot::ALL.into_iter().find(|(p, _)| *p == path).map(|(_, h)| h)
    }

    async fn serve(self, gw: Gateway, req: Request) -> Response {
        match self {
            Hot::OpenAI(endpoint) => proxy(gw, endpoint, req).await,
            Hot::Messages => super::messages::handle(gw, req).await,
            Hot::CountTokens => super::messages::count_tokens(gw, req).await,
        }
    }
}

/// The API as `tollgate gateway` serves it (see the module's comment): the router, with the
/// proxied endpoints ([`Hot`]) dispatched in front of it.
#[derive(Clone)]
pub struct Api {
    gw: Gateway,
    router: Router,
}

impl Api {
    /// `router` (the gateway's [`api_router`], possibly with routes added) with the proxied
    /// endpoints of `gw` dispatched in front of it.
    pub fn new(gw: Gateway, router: Router) -> Self {
        Api { gw, router }
    }
}

impl App for Api {
    fn answer(
        &self,
        req: axum::http::Request<Incoming>,
    ) -> impl std::future::Future<Output = Response> + Send + 'static {
        let to = match Hot::of(req.method(), req.uri().path()) {
            Some(hot) => Either::Left((hot, self.gw.clone())),
            None => Either::Right(self.router.clone()),
        };
        async move {
            match to {
                Either::Left((hot, gw)) => {
                    // Boxed when first polled (as the router boxes a handler's future): held
                    // inline, the handler's large future would be copied whole each time this
                    // one moves (into the connection's box among others).
                    let mut resp = Box::pin(hot.serve(gw, req.map(Body::new))).await;
                    set_content_length(&mut resp);
                    resp
                }
                Either::Right(router) => router.answer(req).await,
            }
        }
    }
}

/// What axum's router does to every answer of a route: a `Content-Length` when the body's size
/// is known and none was set. hyper writes it itself for a body of known non-zero size (over
/// HTTP/1 from the size, over HTTP/2 when it is missing), so only an empty body gets it here
/// (HTTP/2 sends none for an empty body): formatting the size and inserting it into the map,
/// which hyper then parses again, cost about 1.0k instructions a request (callgrind).
fn set_content_length(resp: &mut Response) {
    if resp.body().size_hint().exact() == Some(0) && !resp.headers().contains_key(header::CONTENT_LENGTH) {
        resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    }
}

pub(crate) fn api_router(gw: Gateway) -> Router {
    let mut router = Router::new();
    for (path, hot) in Hot::ALL {
        router = router.route(path, post(move |State(gw): State<Gateway>, req: Request| hot.serve(gw, req)));
    }
    router
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_post_to_exactly_a_proxied_path_skips_the_router() {
        let of = |m: Method, p: &str| Hot::of(&m, p).map(|h| matches!(h, Hot::OpenAI(Endpoint::ChatCompletions)));
        assert_eq!(of(Method::POST, "/v1/chat/completions"), Some(true));
        assert_eq!(of(Method::POST, "/v1/messages/count_tokens"), Some(false));
        assert_eq!(of(Method::GET, "/v1/chat/completions"), None);
        assert_eq!(of(Method::HEAD, "/v1/chat/completions"), None);
        assert_eq!(of(Method::POST, "/v1/chat/completions/"), None);
        assert_eq!(of(Method::POST, "/v1/chat/completion"), None);
        assert_eq!(of(Method::POST, "/v1/models"), None);
        assert_eq!(of(Method::POST, "/V1/chat/completions"), None);
    }
}
