//! Request tracing shared by the HTTP APIs: one `tracing` span per request carrying a request
//! id, echoed back in `x-request-id`.
//!
//! The id is the caller's `x-request-id` when it is a sane token (1–128 visible ASCII
//! characters), otherwise a fresh `req_` + 16 hex digits. Handlers fill in the span's `org`
//! and `batch_size` fields once they know them (`tracing::Span::current().record(...)`).
//!
//! Its log lines' target is `tally_http::trace` (it was `tally_ingest::trace` before this
//! module moved out of ingest; a `TALLY_LOG` filter naming that target needs the new name).

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

/// The header that carries the request id, in and out.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Longest caller-supplied request id kept as is.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// The caller's request id if it is usable, otherwise a fresh one.
pub fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| {
            !v.is_empty()
                && v.len() <= MAX_REQUEST_ID_LEN
                && v.bytes().all(|b| b.is_ascii_graphic())
        })
        .map_or_else(
            || format!("req_{:016x}", rand::random::<u64>()),
            str::to_owned,
        )
}

/// Middleware (`axum::middleware::from_fn(trace_requests)`): runs the request inside an
/// `http_request` span with `method`, `path`, `request_id`, and empty `org` and
/// `batch_size` fields for handlers to record, logs the status, and sets `x-request-id` on
/// the response. A `5xx` JSON error also carries the id in its error object
/// (`"request_id"`): its message is generic on purpose (the detail is in the log), so the id
/// is what a caller quotes to the operator.
pub async fn trace_requests(request: Request, next: Next) -> Response {
    let id = request_id(request.headers());
    let span = tracing::info_span!(
        "http_request",
        method = %request.method(),
        path = %request.uri().path(),
        request_id = %id,
        org = tracing::field::Empty,
        batch_size = tracing::field::Empty,
    );
    let mut response = next.run(request).instrument(span.clone()).await;
    span.in_scope(|| tracing::info!(status = response.status().as_u16(), "request finished"));
    if response.status().is_server_error() {
        response = with_request_id(response, &id).await;
    }
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

/// Largest error body [`with_request_id`] rewrites; error bodies are a few hundred bytes.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Adds `request_id` to the `error` object of a JSON error body; any other body (or one too
/// large or not of that shape) is passed on as it was.
async fn with_request_id(response: Response, id: &str) -> Response {
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_ERROR_BODY).await else {
        // The body was larger than any error body or failed mid-stream: nothing to keep.
        return Response::from_parts(parts, axum::body::Body::empty());
    };
    let rewritten = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|mut v| {
            v.get_mut("error")?
                .as_object_mut()?
                .insert("request_id".to_owned(), id.into());
            serde_json::to_vec(&v).ok()
        });
    let body = match rewritten {
        Some(b) => {
            parts.headers.remove(axum::http::header::CONTENT_LENGTH);
            axum::body::Body::from(b)
        }
        None => axum::body::Body::from(bytes),
    };
    Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn server_errors_carry_the_request_id_and_others_do_not() {
        use axum::response::IntoResponse;
        let err = crate::error::ApiError::Internal("disk on fire at /var/x".into()).into_response();
        let out = with_request_id(err, "req_42").await;
        let bytes = axum::body::to_bytes(out.into_body(), 1 << 16)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["error"]["request_id"], "req_42");
        assert_eq!(v["error"]["code"], "internal_error");
        assert!(!v.to_string().contains("disk on fire"), "{v}");
        // Through the middleware: only 5xx answers are rewritten.
        let app = axum::Router::new()
            .route(
                "/boom",
                axum::routing::get(|| async {
                    crate::error::ApiError::Unavailable("storage: DynamoDB said no".into())
                }),
            )
            .route(
                "/nope",
                axum::routing::get(|| async {
                    crate::error::ApiError::not_found("x", "no such x")
                }),
            )
            .layer(axum::middleware::from_fn(trace_requests));
        for (path, has_id) in [("/boom", true), ("/nope", false)] {
            let req = Request::builder()
                .uri(path)
                .header(REQUEST_ID_HEADER, "abc-1")
                .body(axum::body::Body::empty())
                .unwrap();
            let res = tower::ServiceExt::oneshot(app.clone(), req).await.unwrap();
            let bytes = axum::body::to_bytes(res.into_body(), 1 << 16)
                .await
                .unwrap();
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(
                v["error"].get("request_id").is_some(),
                has_id,
                "{path}: {v}"
            );
            assert!(!v.to_string().contains("DynamoDB"), "{v}");
        }
    }

    #[test]
    fn request_ids_are_kept_or_generated() {
        let mut h = HeaderMap::new();
        let fresh = request_id(&h);
        assert!(fresh.starts_with("req_") && fresh.len() == 20, "{fresh}");
        h.insert(REQUEST_ID_HEADER, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert(REQUEST_ID_HEADER, HeaderValue::from_static("has space"));
        assert!(request_id(&h).starts_with("req_"));
    }
}
