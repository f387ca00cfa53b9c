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
/// the response.
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
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

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
