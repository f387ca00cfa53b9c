//! Serving an axum router on `lambda_http` (API Gateway HTTP APIs, payload format 2.0).
//!
//! Each request gets the API Gateway request id as its `x-request-id` unless the caller sent
//! one, so the id in the logs of `tally_http::trace` (re-exported by ingest) is the one API Gateway's access logs
//! and the caller see. After each response the metrics recorded while serving it are
//! flushed as EMF lines.
//!
//! A function whose router depends on a secret (the API's JWT secret, the Stripe webhook's
//! signing secret) serves a [`Derived`] router with [`serve_derived`]: each request is
//! routed by the router of the secret's current value, so a rotation is followed without
//! a restart, and a secret that cannot be read answers `503` (the detail is logged).

use std::sync::Arc;

use axum::Router;
use axum::http::HeaderValue;
use axum::response::IntoResponse;
use lambda_http::request::RequestContext;
use lambda_http::{Request, RequestExt, Response};
use tally_ingest::trace::REQUEST_ID_HEADER;
use tower::ServiceExt;

use crate::secrets::{Derived, Secret};
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

/// Routes `request` through the router built from the secret's current value; `503
/// Service Unavailable` (the `service_unavailable` error of every Tally API, the detail
/// logged) when the secret cannot be read or is refused.
pub async fn route_current(
    router: &Derived<Router>,
    request: axum::extract::Request,
) -> axum::response::Response {
    match router.current().await {
        Ok(r) => match Router::clone(&r).oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        },
        Err(e) => {
            tracing::error!(error = %e, "no usable secret; answering 503");
            tally_api::ApiError::Unavailable(e.to_string()).into_response()
        }
    }
}

/// Serves the router of a secret's current value ([`route_current`]) until the runtime
/// stops the process.
pub async fn serve_derived(
    router: Arc<Derived<Router>>,
    telemetry: Telemetry,
) -> Result<(), lambda_http::Error> {
    lambda_http::run(lambda_http::service_fn(move |request: Request| {
        let router = router.clone();
        let telemetry = telemetry.clone();
        async move {
            let response = route_current(
                &router,
                with_gateway_request_id(request).map(axum::body::Body::new),
            )
            .await;
            telemetry.flush();
            Ok::<Response<axum::body::Body>, lambda_http::Error>(response)
        }
    }))
    .await
}

/// The management API's router, accepting users' JWTs signed (HS256) with the secret's
/// current value; everything else as `state` says. The rebuilt router shares `state`'s
/// stores and per-user rate buckets.
pub fn api_router(state: tally_api::ApiState, jwt_secret: Secret) -> Derived<Router> {
    api_router_with(state, jwt_secret, |router| router)
}

/// [`api_router`] with `wrap` applied to each router built (the API function layers the
/// catalogue refresh of [`crate::catalogue::refreshing`] on it).
pub fn api_router_with(
    state: tally_api::ApiState,
    jwt_secret: Secret,
    wrap: impl Fn(Router) -> Router + Send + Sync + 'static,
) -> Derived<Router> {
    Derived::new(jwt_secret, move |value| {
        let jwt = tally_api::jwt::JwtConfig::hs256(value.as_bytes()).map_err(|e| e.to_string())?;
        // The dashboard is served by the same function: its routes ride on the API's.
        Ok(wrap(tally_dashboard::with_api(state.clone().with_jwt(jwt))))
    })
}

/// The Stripe webhook receiver's router, checking signatures with the secret's current
/// value (the Stripe secret's `webhook_signing_secret` field).
pub fn stripe_webhook_router(
    ledger: Arc<dyn tally_core::ports::SyncLedger>,
    clock: Arc<dyn tally_core::ports::Clock>,
    signing_secret: Secret,
) -> Derived<Router> {
    Derived::new(signing_secret, move |value| {
        Ok(tally_billing::webhook::router(
            tally_billing::webhook::WebhookState {
                ledger: ledger.clone(),
                secret: Some(Arc::from(value)),
                clock: clock.clone(),
            },
        ))
    })
}
