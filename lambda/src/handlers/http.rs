//! Serving an axum router on `lambda_http` (API Gateway HTTP APIs, payload format 2.0).
//!
//! Each request gets the API Gateway request id as its `x-request-id` unless the caller sent
//! one, so the id in the logs of `tally_http::trace` (re-exported by ingest) is the one API Gateway's access logs
//! and the caller see. After each response the metrics recorded while serving it are
//! flushed as EMF lines.

use axum::Router;
use axum::http::HeaderValue;
use lambda_http::request::RequestContext;
use lambda_http::{Request, RequestExt, Response};
use tally_ingest::trace::REQUEST_ID_HEADER;
use tower::ServiceExt;

use crate::telemetry::Telemetry;

/// Sets `x-request-id` from the API Gateway request context when the caller sent none.
pub fn with_gateway_request_id(mut request: Request) -> Request {
    if request.headers().contains_key(REQUEST_ID_HEADER) {
        return request;
    }
    let id = match request.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(ctx)) => ctx.request_id.clone(),
        _ => None,
    };
    if let Some(value) = id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        request.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    request
}

/// Serves `router` until the runtime stops the process.
pub async fn serve(router: Router, telemetry: Telemetry) -> Result<(), lambda_http::Error> {
    lambda_http::run(lambda_http::service_fn(move |request: Request| {
        let router = router.clone();
        let telemetry = telemetry.clone();
        async move {
            let response = router
                .oneshot(with_gateway_request_id(request).map(axum::body::Body::new))
                .await;
            telemetry.flush();
            let response = match response {
                Ok(r) => r,
                Err(never) => match never {},
            };
            Ok::<Response<axum::body::Body>, lambda_http::Error>(response)
        }
    }))
    .await
}
